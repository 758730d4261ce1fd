"""Network-namespace topologies for the lab and the end-to-end tests (pyroute2).

    [lan ns]  client ── veth ── [router ns: skyguardd, XDP] ── veth ── [inet ns] peer, PSTN gateway, relay

Everything lives in namespaces this module creates with unique names and removes on close, also after errors.
Addresses come from the benchmarking and documentation ranges (RFC 2544 198.18.0.0/15, RFC 5737 TEST-NETs): the lab
never sends to an address outside its own namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

LAN_NET = "198.18.0.0/24"
CLIENT = "198.18.0.2"
CLIENT2 = "198.18.0.3"
ROUTER_LAN = "198.18.0.1"
ROUTER_WAN = "198.19.0.1"
INET_GW = "198.19.0.2"
PEER = "203.0.113.20"  # the far end of a PC-to-PC call
PSTN_GW = "203.0.113.50"  # where phone calls leave the Internet (the lab policy lists it)
RELAY = "203.0.113.80"  # a "Microsoft" media relay (the lab policy lists 203.0.113.64/27 as microsoft_media)
SBC = "192.0.2.60"  # an operator SBC learned from DNS (not in the policy)
INET_HOSTS = (PEER, PSTN_GW, RELAY, SBC, "192.0.2.10", "192.0.2.11")


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block inside network namespace `name` (sockets created here stay bound to it)."""
    self_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    ns_fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
        yield
    finally:
        _libc.setns(self_fd, CLONE_NEWNET)
        os.close(ns_fd)
        os.close(self_fd)


@contextlib.contextmanager
def ns_iproute(name: str):
    """An IPRoute whose netlink socket lives in namespace `name` (setns, no helper process: pyroute2's NetNS forks a
    child that would inherit the caller's signal handlers)."""
    with in_netns(name):
        ip = IPRoute()
    try:
        yield ip
    finally:
        ip.close()


def make_veth(a: str, ns_a: str, b: str, ns_b: str) -> None:
    """A veth pair with end `a` in namespace `ns_a` and end `b` in `ns_b` (both down, no addresses)."""
    with IPRoute() as ip:
        ip.link("add", ifname=a, kind="veth", peer={"ifname": b, "net_ns_fd": ns_b})
        ip.link("set", index=ip.link_lookup(ifname=a)[0], net_ns_fd=ns_a)


def ns_run(ns_name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command inside a network namespace, without remounting /sys (so bpffs stays visible)."""
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{ns_name}", *cmd], check=check,
                          capture_output=True, text=True)


def remove_namespaces(created: list[str]) -> None:
    """Remove the namespaces in `created` (newest first, ignoring ones already gone) and empty the list."""
    for ns in reversed(created):
        with contextlib.suppress(Exception):
            netns.remove(ns)
    created.clear()


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)

    @property
    def lan_ns(self) -> str:
        return f"sg-lan-{self.tag}"

    @property
    def router_ns(self) -> str:
        return f"sg-rtr-{self.tag}"

    @property
    def inet_ns(self) -> str:
        return f"sg-net-{self.tag}"

    # interface names (<= 15 chars)
    @property
    def client_if(self) -> str:
        return f"sgc{self.tag}"

    @property
    def router_lan_if(self) -> str:
        return f"sgl{self.tag}"

    @property
    def router_wan_if(self) -> str:
        return f"sgw{self.tag}"

    @property
    def inet_if(self) -> str:
        return f"sgi{self.tag}"

    def up(self) -> Topology:
        try:
            for ns in (self.lan_ns, self.router_ns, self.inet_ns):
                netns.create(ns)
                self.created.append(ns)
            self._lan_link()
            self._veth(self.router_wan_if, self.router_ns, self.inet_if, self.inet_ns)
            with ns_iproute(self.router_ns) as ns:
                self._addr(ns, self.router_wan_if, [(ROUTER_WAN, 24)])
                ns.route("add", dst="0.0.0.0/0", gateway=INET_GW)
            with ns_iproute(self.inet_ns) as ns:
                self._addr(ns, self.inet_if, [(INET_GW, 24)] + [(h, 32) for h in INET_HOSTS])
                ns.route("add", dst=LAN_NET, gateway=ROUTER_WAN)
            self.sh(self.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for ns in (self.lan_ns, self.router_ns, self.inet_ns):
                self.sh(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        except BaseException:
            self.down()
            raise
        return self

    def _lan_link(self) -> None:
        """The client <-> router veth pair, addressed, with the client's default route through the router."""
        self._veth(self.client_if, self.lan_ns, self.router_lan_if, self.router_ns)
        with ns_iproute(self.lan_ns) as ns:
            self._addr(ns, self.client_if, [(CLIENT, 24), (CLIENT2, 24)])
            ns.route("add", dst="0.0.0.0/0", gateway=ROUTER_LAN)
        with ns_iproute(self.router_ns) as ns:
            self._addr(ns, self.router_lan_if, [(ROUTER_LAN, 24)])

    def recreate_lan_link(self) -> None:
        """Delete the router's LAN interface (its veth peer goes with it) and make it again under the same names, as
        when a link is re-created by the operator or a driver reload."""
        with ns_iproute(self.router_ns) as ns:
            ns.link("del", index=ns.link_lookup(ifname=self.router_lan_if)[0])
        self._lan_link()

    def _veth(self, a: str, ns_a: str, b: str, ns_b: str) -> None:
        make_veth(a, ns_a, b, ns_b)

    @staticmethod
    def _addr(ns: IPRoute, ifname: str, addrs: list[tuple[str, int]]) -> None:
        idx = ns.link_lookup(ifname=ifname)[0]
        for a, plen in addrs:
            ns.addr("add", index=idx, address=a, prefixlen=plen)
        ns.link("set", index=idx, state="up")
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")

    def mac(self, ns_name: str, ifname: str) -> bytes:
        with ns_iproute(ns_name) as ns:
            link = ns.get_links(ns.link_lookup(ifname=ifname)[0])[0]
        return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))

    def sh(self, ns_name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return ns_run(ns_name, *cmd, check=check)

    def packet_socket(self, ns_name: str, ifname: str) -> socket.socket:
        """An AF_PACKET socket bound to an interface inside a namespace (send and receive raw frames)."""
        with in_netns(ns_name):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            s.bind((ifname, 0))
        return s

    def down(self) -> None:
        remove_namespaces(self.created)

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def leftover_namespaces() -> list[str]:
    return [n for n in netns.listnetns() if n.startswith("sg-")]
