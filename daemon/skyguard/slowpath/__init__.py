"""The slow path: what the kernel cannot decide. Classifies flows from ring-buffer events (DNS learning, TLS names,
E2O statistics, ICE behaviour) and applies the decisions through the engine, which the daemon and replay share.
Pure Python: no bcc, testable without privileges."""
