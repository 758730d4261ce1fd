"""Offline analysis: captures (pcap, pcapng) read and written, and replay through the same XDP program and slow path
as the daemon, with the capture's clock."""
