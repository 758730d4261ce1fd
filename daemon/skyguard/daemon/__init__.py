"""skyguardd: lifecycle, the event loop, the command table, the control socket, config, sd_notify."""
