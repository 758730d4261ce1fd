"""skyguard, the operator's command line: the commands, the control-socket client, and output formatting."""
