"""The daemon's side of the Prometheus metrics: one tick per housekeeping round, the HTTP endpoint when configured.

The sample is computed whether or not metrics_listen is set, so `skyguard stats --format prometheus` (the `metrics`
command: node_exporter's textfile collector) works on routers where no port may be opened.
"""

from __future__ import annotations

import time
from typing import Any

from skyguard import __version__, wire
from skyguard.export.prometheus import Metrics, MetricsServer, parse_listen


class DaemonMetrics:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        cfg = daemon.cfg
        # both flow tables (`flows`, `flows4`), flows_max each
        self.metrics = Metrics(version=__version__, capacity=wire.FLOW_TABLES * cfg.flows_max,
                               xdp_requested=cfg.xdp_mode)
        self.server: MetricsServer | None = None
        self.listening: str | None = None

    def start(self) -> None:
        """First sample, then the endpoint. A bind failure is logged as an error and the daemon goes on enforcing:
        a metrics socket is not worth a router's policy (the SkyguardDown alert sees the missing endpoint)."""
        self.tick()
        listen = self.d.cfg.metrics_listen
        if not listen:
            return
        host, port = parse_listen(listen)
        try:
            self.server = MetricsServer(self.metrics, host, port).start()
        except OSError as e:
            self.d.log.error("metrics endpoint not started: the daemon runs without it", listen=listen,
                             error=str(e), hint="under systemd, IP sockets need the skyguard-metrics.conf drop-in")
            return
        h, p = self.server.address
        self.listening = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        self.d.log.info("metrics endpoint", listen=self.listening)

    def tick(self) -> None:
        d = self.d
        eng = d.engine
        attached = {ifname: None for ifname in d.cfg.interfaces}
        attached.update({a.ifname: a.mode for a in d.attached.values()})
        ipfix = getattr(d, "ipfix", None)
        self.metrics.tick(stats=eng.kernel_stats(), policy=eng.policy, classified=eng.counters.classified,
                          snapshot=d.table.snapshot, attached=attached, policy_loaded=d.policy_loaded_at,
                          now=time.time(), ipfix=ipfix.status() if ipfix is not None else None)

    def note_reload(self, ok: bool) -> None:
        self.metrics.note_reload(ok)
        self.tick()  # the reload shows in the next scrape, not a second later

    def text(self) -> str:
        return self.metrics.render().decode()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
