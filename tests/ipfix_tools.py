"""IPFIX test tools: a tiny UDP receiver (pcap writer + sequence-gap check) and the two independent decoders the tests
trust, tshark's cflow dissector and pmacct's nfacctd. Nothing here decodes records itself: the point is that decoders
nobody here wrote read every record."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from skyguard.export.ipfix import Encoder, Record
from skyguard.lab import packet

PCAP_HDR = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # pcap, Ethernet


def write_pcap(path: Path, messages: list[bytes], port: int, src: str = "192.0.2.1", dst: str = "192.0.2.2") -> None:
    """Each IPFIX message as one UDP datagram src:4739 -> dst:port in an Ethernet frame."""
    with open(path, "wb") as f:
        f.write(PCAP_HDR)
        t = time.time()
        for i, m in enumerate(messages):
            frame = packet.udp(src, 4739, dst, port, m)
            ts = t + i * 1e-6
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)) + frame)


def tshark_records(pcap: Path, port: int) -> list[dict]:
    """Every flow record tshark's IPFIX dissector decodes, as {field: value} (fields named as tshark names them)."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-T", "json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records: list[dict] = []
    for pkt in json.loads(out or "[]"):
        cflow = pkt["_source"]["layers"].get("cflow")
        if cflow is None:
            continue
        for k, v in cflow.items():
            if not k.startswith("Set ") or not isinstance(v, dict):
                continue
            for sk, sv in v.items():
                if sk.startswith("Flow ") and isinstance(sv, dict):
                    records.append(sv)
    return records


def tshark_headers(pcap: Path, port: int) -> list[tuple[int, int, int]]:
    """(sequence, observation domain, record count as the dissector counts data records) per message."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-T", "fields",
                          "-e", "cflow.sequence", "-e", "cflow.od_id", "-e", "cflow.len"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = []
    for line in out.splitlines():
        seq, od, ln = line.split("\t")
        rows.append((int(seq), int(od), int(ln)))
    return rows


# ---- a UDP receiver --------------------------------------------------------------------------------------------------

@dataclass
class Received:
    messages: list[bytes] = field(default_factory=list)
    gaps: int = 0  # records missing by the sequence numbers
    records: int = 0


def count_records(msg: bytes, templates: dict[int, list[tuple[int, int]]]) -> int:
    """Data records in a message, learning templates from it (only to check sequence numbers: the decoders that
    count for the tests are tshark and nfacctd)."""
    n, pos = 0, 16
    while pos + 4 <= len(msg):
        sid, slen = struct.unpack_from("!HH", msg, pos)
        body = msg[pos + 4:pos + slen]
        if sid == 2:
            p = 0
            while p + 4 <= len(body):
                tid, cnt = struct.unpack_from("!HH", body, p)
                p += 4
                fields = []
                for _ in range(cnt):
                    eid, ln = struct.unpack_from("!HH", body, p)
                    p += 4
                    fields.append((eid, ln))
                templates[tid] = fields
        elif sid >= 256 and sid in templates:
            p = 0
            while p < len(body):
                for _eid, ln in templates[sid]:
                    if ln == 0xFFFF:
                        ln = body[p]
                        p += 1
                        if ln == 255:
                            ln = struct.unpack_from("!H", body, p)[0]
                            p += 2
                    p += ln
                n += 1
        pos += slen
    return n


class Receiver:
    """Binds a UDP port, keeps every datagram and checks the sequence numbers as it goes (a thread)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.keep = keep
        self.got = Received()
        self._templates: dict[int, list[tuple[int, int]]] = {}
        self._next_seq: int | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(msg) < 16:
                continue
            seq = struct.unpack_from("!I", msg, 8)[0]
            if self._next_seq is not None and seq != self._next_seq:
                self.got.gaps += (seq - self._next_seq) & 0xFFFFFFFF
            n = count_records(msg, self._templates)
            self._next_seq = (seq + n) & 0xFFFFFFFF
            self.got.records += n
            if self.keep:
                self.got.messages.append(msg)

    def wait_quiet(self, quiet_s: float = 0.5, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            now = len(self.got.messages) + self.got.records
            if now == last:
                return
            last = now
            time.sleep(quiet_s)

    def close(self) -> Received:
        self._stop.set()
        self._t.join(2)
        self.sock.close()
        return self.got


# ---- nfacctd ------------------------------------------------------------------------------------------------------

NFACCTD_CONF = """\
daemonize: false
nfacctd_ip: {ip}
nfacctd_port: {port}
plugins: print[flows]
aggregate[flows]: src_host, dst_host, src_port, dst_port, proto, vlan
print_output[flows]: csv
print_output_file[flows]: {out}
print_refresh_time[flows]: 1
print_output_file_append[flows]: true
"""


class Nfacctd:
    """pmacct's NetFlow/IPFIX collector with a print plugin writing CSV (aggregates summed per tuple)."""

    def __init__(self, workdir: Path, ip: str = "127.0.0.1", port: int = 0, netns: str | None = None) -> None:
        self.port = port or _free_udp_port(ip)
        self.ip = ip
        self._probe: tuple | None = None
        self.out = workdir / "nfacctd.csv"
        self.conf = workdir / "nfacctd.conf"
        self.log = workdir / "nfacctd.log"
        self.conf.write_text(NFACCTD_CONF.format(ip=ip, port=self.port, out=self.out))
        cmd = ["nfacctd", "-f", str(self.conf)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        self._wait_bound(ip, netns)

    def _wait_bound(self, ip: str, netns: str | None, timeout: float = 15.0) -> None:
        """nfacctd binds after reading its config and says nothing: wait until its UDP socket is listed."""
        ss = ["ss", "-Hnlu", f"src {ip}:{self.port}"]
        if netns:
            ss = ["ip", "netns", "exec", netns, *ss]
        deadline = time.monotonic() + timeout
        while not subprocess.run(ss, capture_output=True, text=True).stdout.strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nfacctd is not bound to {ip}:{self.port}: see {self.log}")
            time.sleep(0.05)

    @staticmethod
    def available() -> bool:
        return shutil.which("nfacctd") is not None

    def prime(self, probe: Record, timeout: float = 30.0) -> None:
        """Send `probe` until the print plugin has written it: a bound socket does not say that nfacctd's plugin
        pipeline runs yet, its own output does. `totals()` leaves the probe's flow out from then on."""
        key = _flow_key(probe)
        enc = Encoder(max_len=1400)
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while key not in self._totals():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nfacctd wrote no record of a probe within {timeout:g} s: see {self.log}")
                for m in enc.encode([probe]):
                    s.sendto(m, (self.ip, self.port))
                time.sleep(0.2)
        self._probe = key

    def stop(self) -> None:
        """SIGTERM: the print plugin writes what it holds before it exits."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def totals(self) -> dict[tuple, tuple[int, int]]:
        """(src, dst, sport, dport, proto, vlan) -> (packets, bytes), summed over every refresh's lines; without the
        probe's flow."""
        return {k: v for k, v in self._totals().items() if k != self._probe}

    def _totals(self) -> dict[tuple, tuple[int, int]]:
        tot: Counter = Counter()
        pk: Counter = Counter()
        if not self.out.exists():
            return {}
        header: list[str] | None = None
        for line in self.out.read_text().splitlines():
            cols = line.split(",")
            if cols and cols[0] == "VLAN" or "SRC_IP" in cols:
                header = cols
                continue
            if header is None or len(cols) != len(header):
                continue
            row = dict(zip(header, cols, strict=True))
            k = (row["SRC_IP"], row["DST_IP"], int(row["SRC_PORT"]), int(row["DST_PORT"]),
                 row["PROTOCOL"].lower(), int(row.get("VLAN", 0) or 0))
            pk[k] += int(row["PACKETS"])
            tot[k] += int(row["BYTES"])
        return {k: (pk[k], tot[k]) for k in pk}


def _free_udp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _flow_key(r: Record) -> tuple:
    """A record's flow as nfacctd's print plugin aggregates it (see NFACCTD_CONF)."""
    return (str(ipaddress.ip_address(r.src)), str(ipaddress.ip_address(r.dst)), r.sport, r.dport,
            {6: "tcp", 17: "udp"}[r.proto], r.vlan)
