"""Read-only helpers for the diagnosis: listening sockets, conntrack, SNMP counters, bridge options.

Each reads one namespace through its worker thread: netlink (pyroute2) or the kernel's own
tables under /proc/thread-self/net (never the output of ``ip``, ``ss`` or ``conntrack``).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netcheck.kernel.netns import Netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


@dataclass(frozen=True)
class Listening:
    """A socket waiting for connections (TCP) or datagrams (UDP)."""

    proto: str  # tcp or udp
    address: str  # 0.0.0.0 for any IPv4 address, :: for any IPv6 address
    port: int

    def accepts(self, address: str) -> bool:
        """Does it take packets to ``address``? An IPv6 socket is taken as IPv6's only: /proc does not say whether it is V6ONLY."""
        return self.address in ("::" if ":" in address else "0.0.0.0", address)


@dataclass(frozen=True)
class CtEntry:
    """One conntrack entry: the original tuple and the reply tuple (which shows any NAT)."""

    proto: str
    src: str
    dst: str
    sport: int | None
    dport: int | None
    reply_src: str
    reply_dst: str
    reply_sport: int | None
    reply_dport: int | None
    state: str
    status: str

    @property
    def dnat(self) -> bool:
        return self.reply_src != self.dst or self.reply_sport != self.dport

    @property
    def snat(self) -> bool:
        return self.reply_dst != self.src or self.reply_dport != self.sport

    def render(self) -> str:
        def hp(a: str, p: int | None) -> str:
            return f"{a}:{p}" if p is not None else a

        nat = []
        if self.dnat:
            nat.append(f"DNAT to {hp(self.reply_src, self.reply_sport)}")
        if self.snat:
            nat.append(f"SNAT to {hp(self.reply_dst, self.reply_dport)}")
        state = f" {self.state}" if self.state else ""
        unreplied = " [UNREPLIED]" if "SEEN_REPLY" not in self.status else ""
        return f"{self.proto}{state} {hp(self.src, self.sport)} > {hp(self.dst, self.dport)}{unreplied}" + (f" ({', '.join(nat)})" if nat else "")


@dataclass(frozen=True)
class BridgeOptions:
    name: str
    ageing_time: int  # in centiseconds, as the kernel reports it (30000 = 300 s)
    stp: bool
    nf_call_iptables: bool  # the per-bridge option, OR-ed with the bridge-nf-call-iptables sysctl


def _hex_addr(text: str) -> tuple[str, int]:
    """An address and port of /proc/net/tcp (IPv4) or tcp6 (IPv6: four 32-bit words, each in host order)."""
    addr, port = text.split(":")
    if len(addr) == 8:
        return socket.inet_ntoa(struct.pack("<I", int(addr, 16))), int(port, 16)
    raw = b"".join(struct.pack("<I", int(addr[i : i + 8], 16)) for i in range(0, 32, 8))
    return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)


def listening(ns: Netns, family: int = socket.AF_INET) -> list[Listening]:
    """The namespace's listening TCP sockets and bound UDP sockets of a family (from /proc/thread-self/net: tcp and udp, tcp6 and udp6)."""
    suffix = "6" if family == socket.AF_INET6 else ""

    def do() -> list[Listening]:
        out = []
        for proto, state in (("tcp", _TCP_LISTEN), ("udp", _UDP_UNCONNECTED)):
            try:
                with open(f"/proc/thread-self/net/{proto}{suffix}") as f:
                    lines = f.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if len(parts) > 3 and parts[3] == state:
                    addr, port = _hex_addr(parts[1])
                    out.append(Listening(proto, addr, port))
        return out

    return ns.call(do)


def snmp_counters(ns: Netns) -> dict[str, int]:
    """The namespace's IP/TCP SNMP counters, e.g. ``Ip.ForwDatagrams``, ``TcpExt.IPReversePathFilter``."""

    def do() -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("snmp", "netstat"):
            try:
                with open(f"/proc/thread-self/net/{name}") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for head, values in zip(lines[::2], lines[1::2], strict=False):
                group, _, keys = head.partition(":")
                _, _, vals = values.partition(":")
                for k, v in zip(keys.split(), vals.split(), strict=False):
                    try:
                        out[f"{group}.{k}"] = int(v)
                    except ValueError:
                        continue
        return out

    return ns.call(do)


def conntrack(ns: Netns, addresses: set[str] | None = None, limit: int = 4096, family: int = 4) -> list[CtEntry]:
    """Conntrack entries of the namespace (of one address family) through netlink; only those touching ``addresses`` if given."""

    try:
        return ns.call(_conntrack_here, addresses, limit, family)
    except Exception:  # noqa: BLE001 - conntrack may be unavailable (module not loaded): no entries
        return []


def _conntrack_here(addresses: set[str] | None, limit: int, family: int) -> list[CtEntry]:
    """``conntrack`` in the calling thread's namespace (module-level: a node's agent runs it by name)."""
    from pyroute2 import Conntrack

    ct = Conntrack(nfgen_family=socket.AF_INET6) if family == 6 else Conntrack()
    out: list[CtEntry] = []
    try:
        for n, e in enumerate(ct.dump_entries()):
            if n >= limit:
                break
            entry = _ct_entry(e)
            if entry is None:
                continue
            if addresses and not addresses & {entry.src, entry.dst, entry.reply_src, entry.reply_dst}:
                continue
            out.append(entry)
    finally:
        ct.close()
    return out


def _ct_entry(e: Any) -> CtEntry | None:
    o, r = e.tuple_orig, e.tuple_reply
    if o is None or r is None or not o.saddr:
        return None
    names = {1: "icmp", 6: "tcp", 17: "udp"}
    info = e.protoinfo
    return CtEntry(
        proto=names.get(o.proto, str(o.proto)), src=str(o.saddr), dst=str(o.daddr), sport=o.sport, dport=o.dport,
        reply_src=str(r.saddr), reply_dst=str(r.daddr), reply_sport=r.sport, reply_dport=r.dport,
        state=str(info.state_name()) if info is not None else "", status=str(e.status_name()),
    )


def bridges(ns: Netns) -> list[BridgeOptions]:
    """The bridges of a namespace and the options the diagnosis cares about."""

    def do(ipr: IPRoute) -> list[BridgeOptions]:
        out = []
        for m in ipr.get_links():
            info = m.get_attr("IFLA_LINKINFO")
            if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
                continue
            data = info.get_attr("IFLA_INFO_DATA")
            if data is None:
                continue
            out.append(BridgeOptions(
                name=m.get_attr("IFLA_IFNAME"),
                ageing_time=int(data.get_attr("IFLA_BR_AGEING_TIME") or 0),
                stp=bool(data.get_attr("IFLA_BR_STP_STATE")),
                nf_call_iptables=bool(data.get_attr("IFLA_BR_NF_CALL_IPTABLES")),
            ))
        return out

    return ns.netlink(do)





def legacy6_tables(ns: Netns) -> list[str]:
    """The ip6tables (legacy) tables that exist in the namespace (listing them creates none)."""

    def do() -> list[str]:
        try:
            with open("/proc/thread-self/net/ip6_tables_names") as f:
                return [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    return ns.call(do)


def legacy_tables(ns: Netns) -> list[str]:
    """The legacy xtables tables that exist in the namespace.

    Opening a table through libiptc instantiates it in the namespace, so the diagnosis reads
    only the tables listed here, and never creates one as a side effect.
    """

    return ns.call(_legacy_tables_here)


def _legacy_tables_here() -> list[str]:
    """``legacy_tables`` in the calling thread's namespace (module-level: a node's agent runs it by name)."""
    try:
        with open("/proc/thread-self/net/ip_tables_names") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []
__all__ = ["BridgeOptions", "CtEntry", "Listening", "bridges", "conntrack", "legacy_tables", "listening", "snmp_counters"]
