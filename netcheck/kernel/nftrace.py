"""nftables tracing: the exact rule and verdict each of a probe's packets met in nf_tables.

A trace is one namespace's: a table of netcheck's own (``inet <tag>_trace``) whose chains, hooked
at prerouting and output ahead of every other (priority -400), set ``meta nftrace 1`` on the
probe's packets only (their addresses and protocol), and a netlink socket in the same namespace
subscribed to the nftables trace group (what ``nft monitor trace`` reads). The first step of each packet in each hook carries its headers
and a trace id (the id may change from one hook to the next), so the probe's steps are found by its
headers. The kernel sends the
trace events while it handles the packet, so once the probe has ended its events are all queued:
reading them needs no wait. Trace events are per namespace: two runs never see each other's.

The table is recorded (by the caller's ``record``) before it exists and is deleted when the trace
stops. iptables-legacy rules are not nf_tables: they leave no trace (their counters tell instead).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netcheck.kernel.netns import KernelError, Netns

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTRACE = 9
NFT_MSG_TRACE = (10 << 8) | 17  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE
PRIORITY = -400  # ahead of raw (-300), conntrack (-200) and DNAT (-100): the packets as they arrive
TABLE_FAMILY = "inet"
RCVBUF = 4 << 20

# enum nft_trace_attributes, enum nft_trace_types (linux/netfilter/nf_tables.h)
A_TABLE, A_CHAIN, A_HANDLE, A_TYPE, A_VERDICT, A_ID, A_NETWORK, A_TRANSPORT, A_IIF, A_OIF, A_NFPROTO, A_POLICY = 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 15, 16
KINDS = {1: "policy", 2: "return", 3: "rule"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


@dataclass(frozen=True)
class TraceEvent:
    """One step of a traced packet in nf_tables: a rule that matched (and its verdict), a chain's
    policy (no rule decided), or a return from a chain."""

    trace_id: int  # the same for every step of one packet
    family: str  # ip, ip6, inet, bridge, ...
    table: str
    chain: str
    kind: str  # rule, policy, return, or end (a chain's end: the step that carries the headers when no rule matched)
    handle: int | None  # the rule's handle (kind "rule")
    verdict: str  # accept, drop, jump, goto, return, continue, ...
    target: str = ""  # the chain of a jump or goto
    iif: int | None = None  # interface indexes in the traced namespace
    oif: int | None = None
    protocol: int = -1  # the packet's IP protocol (-1: not read)
    src: str = ""
    dst: str = ""
    sport: int | None = None  # TCP/UDP ports; for ICMP, sport is the echo identifier
    dport: int | None = None
    icmp_type: int | None = None

    @property
    def decides(self) -> bool:
        """Does this step end the packet's way through its hook (accept, drop, a policy)?"""
        return self.kind == "policy" or self.verdict in ("accept", "drop", "stolen", "queue")


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    p = start
    while p + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, p)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[p + 4 : p + length]
        p += (length + 3) & ~3
    return out


def _string(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode(errors="replace") if b else ""


def _u32(b: bytes | None) -> int | None:
    return struct.unpack(">I", b[:4])[0] if b and len(b) >= 4 else None


def _headers(network: bytes | None, transport: bytes | None) -> dict[str, Any]:
    """The addresses, protocol and ports of a traced packet's headers."""
    if not network:
        return {}
    out: dict[str, Any] = {}
    version = network[0] >> 4
    if version == 4 and len(network) >= 20:
        out = {"protocol": network[9], "src": str(ipaddress.IPv4Address(network[12:16])), "dst": str(ipaddress.IPv4Address(network[16:20]))}
    elif version == 6 and len(network) >= 40:
        out = {"protocol": network[6], "src": str(ipaddress.IPv6Address(network[8:24])), "dst": str(ipaddress.IPv6Address(network[24:40]))}
    else:
        return {}
    t = transport or b""
    if out["protocol"] in (6, 17, 132) and len(t) >= 4:
        out["sport"], out["dport"] = struct.unpack(">HH", t[:4])
    elif out["protocol"] in (1, 58) and len(t) >= 6:
        out["icmp_type"] = t[0]
        out["sport"] = struct.unpack(">H", t[4:6])[0]
    return out


def parse(data: bytes) -> list[TraceEvent]:
    """The trace events in one read from the netlink socket (other messages are skipped)."""
    events = []
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == NFT_MSG_TRACE and length >= 20:
            a = _attrs(data, off + 20, off + length)
            trace_kind = KINDS.get(_u32(a.get(A_TYPE)) or 0)
            handle = struct.unpack(">Q", a[A_HANDLE][:8])[0] if len(a.get(A_HANDLE, b"")) >= 8 else None
            if trace_kind == "rule" and handle is None:
                trace_kind = "end"  # the end of a chain no rule decided (its policy, or a return, follows); it may carry the packet's headers
            if trace_kind is not None:
                verdict, target = "", ""
                if A_VERDICT in a:
                    v = _attrs(a[A_VERDICT], 0, len(a[A_VERDICT]))
                    code = struct.unpack(">i", v[1][:4])[0] if len(v.get(1, b"")) >= 4 else None
                    verdict, target = VERDICTS.get(code, f"verdict {code}") if code is not None else "", _string(v.get(2))
                if trace_kind == "policy":
                    code = _u32(a.get(A_POLICY))
                    verdict = VERDICTS.get(code, f"verdict {code}") if code is not None else verdict
                family = FAMILIES.get(data[off + 16], str(data[off + 16]))  # nfgenmsg: the base chain's family (NFTA_TRACE_NFPROTO is the packet's)
                events.append(TraceEvent(_u32(a.get(A_ID)) or 0, family, _string(a.get(A_TABLE)), _string(a.get(A_CHAIN)), trace_kind, handle, verdict, target,
                                         _u32(a.get(A_IIF)), _u32(a.get(A_OIF)), **_headers(a.get(A_NETWORK), a.get(A_TRANSPORT))))
        off += (length + 3) & ~3
    return events


# ----------------------------------------------------------------------------- rule texts

_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_HANDLE = re.compile(r"^\s*(.*?) # handle (\d+)$")
_POLICY = re.compile(r"policy (\w+);")
_TYPE = re.compile(r"\btype (\w+) hook ")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")


@dataclass(frozen=True)
class Listing:
    """Rule texts and chain policies of a ruleset, as ``nft -a list ruleset`` prints them."""

    rules: dict[tuple[str, str, str, int], str]  # (family, table, chain, handle) -> the rule's text (counters left out)
    policies: dict[tuple[str, str, str], str]  # (family, table, chain) -> policy, for base chains
    types: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (family, table, chain) -> filter, nat or route, for base chains

    @classmethod
    def parse(cls, text: str) -> Listing:
        rules: dict[tuple[str, str, str, int], str] = {}
        policies: dict[tuple[str, str, str], str] = {}
        types: dict[tuple[str, str, str], str] = {}
        family = table = chain = ""
        for line in text.splitlines():
            if m := _TABLE.match(line):
                family, table, chain = m.group(1), m.group(2), ""
            elif m := _CHAIN.match(line):
                chain = m.group(1)
            elif chain and (m := _HANDLE.match(line)):
                rules[(family, table, chain, int(m.group(2)))] = _COUNTER.sub("counter", m.group(1)).strip()
            elif chain and "hook " in line and (m := _POLICY.search(line)):
                policies[(family, table, chain)] = m.group(1)
                if t := _TYPE.search(line):
                    types[(family, table, chain)] = t.group(1)
        return cls(rules, policies, types)


def render(e: TraceEvent, listing: Listing, names: Callable[[int | None], str] = lambda i: str(i)) -> str:
    """One step, as the report shows it: ``ip filter FORWARD rule 7: `oifname "eth0" drop` -> drop``;
    a chain's policy is marked as such."""
    where = f"{e.family} {e.table} {e.chain}"
    if e.kind == "policy" and listing.types.get((e.family, e.table, e.chain)) == "nat":
        # A nat rule that matches rewrites the packet and gives no verdict of its own: the policy is all a
        # nat chain shows when its rules did not match (a DNAT bound to another address or interface).
        step = f"{where}: no nat rule matched; chain policy {e.verdict} (no rule decided)"
    elif e.kind == "policy":
        step = f"{where}: chain policy {e.verdict} (no rule decided)"
    elif e.kind in ("return", "end"):
        step = f"{where}: end of chain, return to the caller"
    else:
        text = listing.rules.get((e.family, e.table, e.chain, e.handle or -1), "(rule gone since)")
        step = f"{where} rule {e.handle}: `{text}` -> {e.verdict}" + (f" {e.target}" if e.target else "")
    ifs = " ".join(x for x in (f"in {names(e.iif)}" if e.iif else "", f"out {names(e.oif)}" if e.oif else "") if x)
    packet = f"{e.src} > {e.dst}" if e.src else ""
    return step + (f" ({', '.join(x for x in (packet, ifs) if x)})" if packet or ifs else "")


# ----------------------------------------------------------------------------- the trace


def _nft(ns: Netns, text: str, *, what: str) -> str:
    """Run nft commands (text) in ``ns`` through libnftables; their output."""
    from netcheck.kernel.libnftables import binding as _binding

    def do() -> str:
        ctx = _binding().Nftables()
        ctx.set_handle_output(True)
        rc, out, err = ctx.cmd(text)
        if rc != 0:
            raise KernelError(f"nft {what} in netns {ns.label}: {str(err).strip() or f'exit {rc}'}")
        return str(out)

    return ns.call(do)


def unavailable() -> str | None:
    """Why nft tracing cannot run here (None: it can)."""
    from netcheck.kernel.nft import available

    return available()


def marking_rules(table: str, addresses: Iterable[str], protocols: Sequence[str]) -> str:
    """The nft commands that make the trace table: each of the packets to or from ``addresses`` of
    these protocols (names nft knows: icmp, tcp, ...) gets ``meta nftrace set 1``."""
    v4 = sorted(a for a in addresses if ipaddress.ip_address(a).version == 4)
    v6 = sorted(a for a in addresses if ipaddress.ip_address(a).version == 6)
    lines = [f"add table {TABLE_FAMILY} {table}"]
    protos = "{ " + ", ".join(protocols) + " }"
    for chain, hook in (("pre", "prerouting"), ("out", "output")):
        lines.append(f"add chain {TABLE_FAMILY} {table} {chain} {{ type filter hook {hook} priority {PRIORITY}; policy accept; }}")
        for keyword, group in (("ip", v4), ("ip6", v6)):
            if group:
                for end in ("saddr", "daddr"):
                    lines.append(f"add rule {TABLE_FAMILY} {table} {chain} {keyword} {end} {{ {', '.join(group)} }} meta l4proto {protos} meta nftrace set 1")
    return "\n".join(lines) + "\n"


class NftTrace:
    """The nftables trace of one namespace around one repeated probe.

        trace = NftTrace(host, "nc1_trace", record=...)
        trace.start({"172.18.0.10", "198.51.100.1"}, ("icmp",))
        ...  # the probe
        events = trace.stop()   # its steps; the table is gone
    """

    def __init__(self, ns: Netns, table: str, *, record: Callable[[str, str], None] = lambda _family, _table: None) -> None:
        self.ns, self.table, self._record = ns, table, record
        self._sock: socket.socket | None = None
        self._made = False
        self.listing = Listing({}, {})

    def start(self, addresses: Iterable[str], protocols: Sequence[str]) -> NftTrace:
        """Listen first (no event is missed), then record and make the table that marks the packets."""
        wanted = sorted(set(addresses))
        if not wanted:
            raise ValueError("an nft trace needs the probe's addresses")

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)  # in the namespace: the calling thread is in it
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                s.bind((0, 0))
                s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
                s.setblocking(False)
            except OSError:
                s.close()
                raise
            return s

        self._sock = self.ns.call(listen)
        try:
            self._record(TABLE_FAMILY, self.table)
            self._made = True
            _nft(self.ns, marking_rules(self.table, wanted, protocols), what=f"making the trace table {self.table}")
        except Exception:
            self.stop()
            raise
        return self

    def own(self, e: TraceEvent) -> bool:
        """Is this a step in the trace table itself (the one that carries the packet's headers)?"""
        return e.family == TABLE_FAMILY and e.table == self.table

    def read(self) -> list[TraceEvent]:
        """The events queued so far (the kernel queued each while it handled the packet); the first of
        each packet is our own table's, the one that carries its headers."""
        out: list[TraceEvent] = []
        if self._sock is None:
            return out
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOBUFS: the buffer overflowed, events were lost
                raise KernelError(f"reading the nft trace in netns {self.ns.label}: {exc}") from None
            out.extend(parse(data))
        return out

    def stop(self, *, list_rules: bool = True) -> list[TraceEvent]:
        """Read the events; list the rules they name (their text, before anything changes) and remove
        the table, in one libnftables call; close the socket."""
        events: list[TraceEvent] = []
        try:
            events = self.read()
        finally:
            listed = list_rules and any(not self.own(e) for e in events)
            commands = [*(["list ruleset"] if listed else []), *([f"delete table {TABLE_FAMILY} {self.table}"] if self._made else [])]
            self._made = False
            try:
                if commands:
                    out = _nft(self.ns, "\n".join(commands), what=f"listing the rules the trace names and deleting the trace table {self.table}")
                    self.listing = Listing.parse(out) if listed else self.listing
            finally:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
        return events


__all__ = ["Listing", "NftTrace", "TraceEvent", "marking_rules", "parse", "render", "unavailable"]
