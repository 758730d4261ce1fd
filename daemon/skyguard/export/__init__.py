"""Exporters: what the daemon already knows, served to fleet systems (Prometheus metrics; IPFIX) without slowing the
event loop."""
