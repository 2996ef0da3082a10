"""Read-only helpers for the diagnosis: listening sockets, conntrack, SNMP counters, bridge options.

Each reads one namespace through its worker thread: netlink (rtnetlink, sock_diag, ctnetlink, as
raw dumps: see rtnl.dump) or the kernel's own tables under /proc/thread-self/net (never the output
of ``ip``, ``ss`` or ``conntrack``).
"""

from __future__ import annotations

import socket
import struct
from concurrent.futures import Future
from dataclasses import dataclass
from ipaddress import ip_address

from netcheck.kernel import rtnl
from netcheck.kernel.netns import Netns


@dataclass(frozen=True)
class Listening:
    """A socket waiting for connections (TCP) or datagrams (UDP)."""

    proto: str  # tcp or udp
    address: str  # 0.0.0.0 for any IPv4 address, :: for any IPv6 address
    port: int

    def accepts(self, address: str) -> bool:
        """Does it take packets to ``address``? An IPv6 socket is taken as IPv6's only (V6ONLY is not read)."""
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


NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
_DIAG_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, extensions, states; a zero socket id
_TCP_LISTEN_STATE, _UDP_UNCONNECTED_STATE = 10, 7  # TCP_LISTEN; an unconnected UDP socket is TCP_CLOSE


def listening(ns: Netns, family: int = socket.AF_INET) -> list[Listening]:
    """The namespace's listening TCP sockets and unconnected UDP sockets of a family, from sock_diag.

    The kernel's own filter by state: ``/proc/net/tcp`` walks every socket of the machine's
    hash tables (the listening and the established) and formats each as text, which costs
    milliseconds on a busy machine; sock_diag asked for listeners walks the listening hash only.
    """
    size = 16 if family == socket.AF_INET6 else 4

    def do() -> list[Listening]:
        out = []
        for proto, name, state in ((socket.IPPROTO_TCP, "tcp", _TCP_LISTEN_STATE), (socket.IPPROTO_UDP, "udp", _UDP_UNCONNECTED_STATE)):
            request = _DIAG_REQ.pack(family, proto, 0, 1 << state)
            for p in rtnl.dump(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, SOCK_DIAG_BY_FAMILY, request, f"{name} sockets"):
                # inet_diag_msg: family, state, timer, retrans, then the socket id: sport, dport (big-endian), src[16], dst[16]...
                out.append(Listening(name, str(ip_address(bytes(p[8 : 8 + size]))), struct.unpack_from("!H", p, 4)[0]))
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


NETLINK_NETFILTER, IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 12, 0, 1
NFNL_SUBSYS_CTNETLINK = 1
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id
CT_STATUS = ("EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT", "SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE",
             "DYING", "FIXED_TIMEOUT", "TEMPLATE", "UNTRACKED", "HELPER", "OFFLOAD")  # IPS_* bits, lowest first
TCP_CT_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "LISTEN",
                 "MAX", "IGNORE", "RETRANS", "UNACK", "TIMEOUT_MAX")  # TCP_CONNTRACK_*
_CT_PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}


def conntrack_socket(ns: Netns) -> Future[socket.socket]:
    """A ctnetlink socket made in the namespace's thread (queued there now), for ``conntrack(sock=...)``."""
    return ns.submit(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)


def conntrack(ns: Netns, addresses: set[str] | None = None, limit: int = 4096, family: int = 4, sock: socket.socket | None = None) -> list[CtEntry]:
    """Conntrack entries of the namespace (of one address family) through ctnetlink; only those touching ``addresses`` if given.

    Without ``sock`` the dump runs in the namespace's thread. With ``sock`` (from ``conntrack_socket``;
    closed after) it runs in the calling thread: the kernel walks the machine's whole conntrack hash
    for it (262144 buckets here, milliseconds), and a caller may wait for it while the namespace's
    thread reads the rest."""
    if sock is None:
        return ns.call(_conntrack_here, addresses, limit, family)
    return _conntrack_dump(sock, addresses, limit, family)


def _conntrack_here(addresses: set[str] | None, limit: int, family: int) -> list[CtEntry]:
    """``conntrack`` in the calling thread's namespace (module-level: a node's agent runs it by name)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return []
    return _conntrack_dump(sock, addresses, limit, family)


def _conntrack_dump(sock: socket.socket, addresses: set[str] | None, limit: int, family: int) -> list[CtEntry]:
    try:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        payloads = rtnl.dump(NETLINK_NETFILTER, NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET, NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW,
                             _NFGEN.pack(af, 0, 0), "conntrack", sock=sock)
    except Exception:  # noqa: BLE001 - conntrack may be unavailable (module not loaded): no entries
        return []
    out: list[CtEntry] = []
    for p in payloads[:limit]:
        entry = _ct_entry(p)
        if entry is None:
            continue
        if addresses and not addresses & {entry.src, entry.dst, entry.reply_src, entry.reply_dst}:
            continue
        out.append(entry)
    return out


def _ct_tuple(value: memoryview | None) -> tuple[str, str, int, int | None, int | None] | None:
    """(source, destination, protocol number, source port, destination port) of a CTA_TUPLE_* nest; ports for TCP and UDP only."""
    if value is None:
        return None
    t = rtnl.attributes(value, 0)
    ip = rtnl.attributes(t[CTA_TUPLE_IP], 0) if CTA_TUPLE_IP in t else {}
    proto = rtnl.attributes(t[CTA_TUPLE_PROTO], 0) if CTA_TUPLE_PROTO in t else {}
    src, dst = ip.get(1) or ip.get(3), ip.get(2) or ip.get(4)  # CTA_IP_V4_SRC, _DST, CTA_IP_V6_SRC, _DST
    if src is None or dst is None:
        return None
    num = proto[CTA_PROTO_NUM][0] if CTA_PROTO_NUM in proto else 0

    def port(attr: int) -> int | None:
        return struct.unpack_from("!H", proto[attr])[0] if num in (6, 17) and attr in proto else None

    return str(ip_address(bytes(src))), str(ip_address(bytes(dst))), num, port(CTA_PROTO_SRC_PORT), port(CTA_PROTO_DST_PORT)


def _ct_entry(p: bytes) -> CtEntry | None:
    a = rtnl.attributes(p, _NFGEN.size)
    o, r = _ct_tuple(a.get(CTA_TUPLE_ORIG)), _ct_tuple(a.get(CTA_TUPLE_REPLY))
    if o is None or r is None:
        return None
    status = struct.unpack_from("!I", a[CTA_STATUS])[0] if CTA_STATUS in a else 0
    state = ""
    if o[2] == 6:
        info = rtnl.attributes(a[CTA_PROTOINFO], 0) if CTA_PROTOINFO in a else {}
        tcp = rtnl.attributes(info[CTA_PROTOINFO_TCP], 0) if CTA_PROTOINFO_TCP in info else {}
        number = tcp[CTA_PROTOINFO_TCP_STATE][0] if CTA_PROTOINFO_TCP_STATE in tcp else -1
        state = TCP_CT_STATES[number] if 0 < number < len(TCP_CT_STATES) else "UNKNOWN"
    return CtEntry(
        proto=_CT_PROTOS.get(o[2], str(o[2])), src=o[0], dst=o[1], sport=o[3], dport=o[4],
        reply_src=r[0], reply_dst=r[1], reply_sport=r[3], reply_dport=r[4],
        state=state, status=",".join(name for bit, name in enumerate(CT_STATUS) if status & 1 << bit),
    )


def bridges(ns: Netns) -> list[BridgeOptions]:
    """The bridges of a namespace and the options the diagnosis cares about."""
    return [BridgeOptions(name=r.name, ageing_time=r.bridge.get(rtnl.IFLA_BR_AGEING_TIME, 0), stp=bool(r.bridge.get(rtnl.IFLA_BR_STP_STATE)),
                          nf_call_iptables=bool(r.bridge.get(rtnl.IFLA_BR_NF_CALL_IPTABLES)))
            for r in ns.link_records() if r.kind == "bridge" and r.bridge is not None]


def legacy6_tables(ns: Netns) -> list[str]:
    """The ip6tables (legacy) tables that exist in the namespace (listing them creates none)."""
    return ns.call(_tables_here, "ip6_tables_names")


def legacy_tables(ns: Netns) -> list[str]:
    """The legacy xtables tables that exist in the namespace.

    Opening a table through libiptc instantiates it in the namespace, so the diagnosis reads
    only the tables listed here, and never creates one as a side effect.
    """
    return ns.call(_tables_here, "ip_tables_names")


def _tables_here(names: str) -> list[str]:
    """The tables /proc/thread-self/net/``names`` lists, in the calling thread's namespace (module-level: a node's agent runs it by name)."""
    try:
        with open(f"/proc/thread-self/net/{names}") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []


__all__ = ["BridgeOptions", "CtEntry", "Listening", "bridges", "conntrack", "conntrack_socket", "legacy_tables", "listening", "snmp_counters"]
