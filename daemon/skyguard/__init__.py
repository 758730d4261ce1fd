"""skyguard: an eBPF/XDP classifier that finds and polices Skype calls on Linux edge routers."""

__version__ = "0.1.0"
