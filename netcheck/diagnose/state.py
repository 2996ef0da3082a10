"""State inspection: what the kernel holds in each namespace of a lab, read without changing it.

Netlink (links, addresses, routes, the route lookup of the probe's flow, neighbours, bridge
ports), sysctls, listening sockets, SNMP counters, conntrack, and the host's rules from
both backends (legacy through python-iptables, nf_tables through ``nft -j``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, ip_address
from typing import TYPE_CHECKING, Any

from netcheck.diagnose.firewall import Placed, Ruleset
from netcheck.kernel.inspect import BridgeOptions, CtEntry, Listening, bridges, conntrack, conntrack_socket, legacy6_tables, legacy_tables, listening, snmp_counters
from netcheck.kernel.jsontypes import JSONObject
from netcheck.kernel.netns import Address, BridgePort, IpRule, Link, Neighbour, RouteEntry
from netcheck.kernel.xtables import nft_available, nft_chains, read_legacy, read_legacy6, read_nft, read_nft_chains

MAIN_TABLE = 254  # the main routing table

if TYPE_CHECKING:
    from netcheck.kernel.netns import Netns

HOST_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables", "net.ipv4.conf.all.arp_ignore")
IPV6_SYSCTLS = ("net.ipv6.conf.all.forwarding", "net.ipv6.conf.all.disable_ipv6", "net.bridge.bridge-nf-call-ip6tables")  # read where IPv6 is on
IFACE_SYSCTLS = ("rp_filter", "route_localnet", "forwarding", "arp_ignore")


@dataclass(frozen=True)
class NsState:
    """One namespace, as read."""

    label: str
    netns: str | None  # the kernel name under /run/netns, None for this process's own
    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    listening: tuple[Listening, ...] = ()
    sysctls: dict[str, str | None] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    dad_failed: tuple[tuple[str, str], ...] = ()  # (interface, IPv6 address) whose duplicate address detection failed
    ip_rules: tuple[IpRule, ...] = ()  # policy routing (each of its family); empty: not read
    all_routes: tuple[RouteEntry, ...] = ()  # every table's routes but local's; empty: not read (``routes`` is main's)
    routes6: tuple[RouteEntry, ...] = ()  # IPv6's main table, read where the namespace has IPv6 addresses (for the datapath model)
    listening6: bool = False  # ``listening`` holds IPv6's sockets too (and ``ip_rules`` IPv6's, family 6): read with routes6

    def link(self, name: str | None) -> Link | None:
        return next((x for x in self.links if x.name == name), None)

    def link_by_index(self, index: int | None) -> Link | None:
        return next((x for x in self.links if x.index == index), None)

    def addrs(self, iface: str | None = None) -> list[Address]:
        return [a for a in self.addresses if iface is None or a.interface == iface]

    def holds(self, address: str) -> bool:
        return any(str(a.address.ip) == address for a in self.addresses)

    def default_route(self) -> RouteEntry | None:
        return next((r for r in self.routes if r.dst.prefixlen == 0 and r.kind == "unicast"), None)

    def sysctl(self, key: str) -> str | None:
        return self.sysctls.get(key)

    def conf(self, iface: str, key: str) -> int:
        """The effective value of a per-interface conf key: the maximum of 'all' and the interface's."""
        values = [self.sysctls.get(f"net.ipv4.conf.{n}.{key}") for n in ("all", iface)]
        return max((int(v) for v in values if v not in (None, "")), default=0)


@dataclass(frozen=True)
class HostState:
    """What only the host holds: bridges, their ports, the firewall, conntrack."""

    bridge_ports: tuple[BridgePort, ...] = ()
    bridges: tuple[BridgeOptions, ...] = ()
    ruleset: Ruleset = field(default_factory=Ruleset)
    legacy_tables: tuple[str, ...] = ()
    conntrack: tuple[CtEntry, ...] = ()
    errors: tuple[str, ...] = ()

    def bridge(self, name: str | None) -> BridgeOptions | None:
        return next((b for b in self.bridges if b.name == name), None)


@dataclass(frozen=True)
class Snapshot:
    namespaces: dict[str, NsState]
    host: HostState
    route_lookups: dict[str, RouteEntry | str] = field(default_factory=dict)  # "label: dst [from src iif X]" -> result

    def ns(self, label: str) -> NsState | None:
        return self.namespaces.get(label)


def _safe(errors: list[str], what: str, fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a read that fails is reported, the rest goes on
        errors.append(f"{what}: {exc}")
        return default


def read_ns(label: str, ns: Netns, *, full: bool, host: bool = False) -> NsState:
    """Read one namespace. ``full=False`` reads links and addresses only (for big labs).

    Every read runs inside the namespace's own thread in one go (its nested calls run inline),
    instead of one hand-over per read.
    """
    return ns.call(lambda: _with_routes6(_read_ns(label, ns, full=full, host=host), ns, full=full))


def _with_routes6(state: NsState, ns: Netns, *, full: bool) -> NsState:
    """A full read of a namespace with IPv6 addresses gets IPv6's routes, policy rules and listening sockets too (the datapath model traces IPv6 flows)."""
    if not full or not any(a.address.version == 6 for a in state.addresses):
        return state
    errors: list[str] = list(state.errors)
    routes6 = tuple(_safe(errors, "IPv6 routes", lambda: ns.routes(socket.AF_INET6), []))
    rules6 = tuple(_safe(errors, "ip -6 rules", lambda: ns.ip_rules(socket.AF_INET6), []))
    socks6 = tuple(_safe(errors, "IPv6 listening sockets", lambda: listening(ns, socket.AF_INET6), []))
    return replace(state, routes6=routes6, ip_rules=state.ip_rules + rules6, listening=state.listening + socks6, errors=tuple(errors), listening6=True)


def _read_ns(label: str, ns: Netns, *, full: bool, host: bool) -> NsState:
    errors: list[str] = []
    links = tuple(_safe(errors, "links", ns.links, []))
    addresses = tuple(_safe(errors, "addresses", ns.addresses, []))
    # IPv6's global addresses too, where it is on (netcheck's IPv4-only labs turn it off, so they read none).
    addresses += tuple(a for a in _safe(errors, "IPv6 addresses", lambda: ns.addresses(socket.AF_INET6), []) if not a.address.ip.is_link_local and not a.address.ip.is_loopback)
    if not full:
        return NsState(label, ns.name, links, addresses, errors=tuple(errors))
    all_routes = tuple(_safe(errors, "routes of every table", ns.all_routes, []))
    routes = tuple(r for r in all_routes if r.table == MAIN_TABLE and isinstance(r.dst, IPv4Network))  # main's, from the same dump (one dump fewer)
    neighbours = tuple(_safe(errors, "neighbours", ns.neighbours, []))
    socks = tuple(_safe(errors, "listening sockets", lambda: listening(ns), []))
    keys = list(HOST_SYSCTLS if host else HOST_SYSCTLS[:3])
    if host:
        keys += [f"net.ipv4.conf.{link.name}.{k}" for link in links for k in IFACE_SYSCTLS]
    if any(a.address.version == 6 for a in addresses) or not host:  # a container's disable_ipv6 matters most once its addresses are gone
        keys += list(IPV6_SYSCTLS if host else IPV6_SYSCTLS[1:2]) + [f"net.ipv6.conf.{link.name}.disable_ipv6" for link in links if not host]
        keys += [f"net.ipv6.conf.{link.name}.accept_ra" for link in links if host and link.name != "lo"]
    sysctls = {}
    for k in keys:
        sysctls[k] = _safe(errors, k, lambda k=k: ns.sysctl(k), None)
    failed = tuple(_safe(errors, "IPv6 DAD", ns.dad_failed, [])) if any(a.address.version == 6 for a in addresses) else ()
    ip_rules = tuple(_safe(errors, "ip rules", ns.ip_rules, []))
    return NsState(label, ns.name, links, addresses, routes, neighbours, socks, sysctls, tuple(errors), failed, ip_rules, all_routes)


def read_rules(ns: Netns) -> tuple[Ruleset, tuple[str, ...], list[str]]:
    """Both backends' rules of a namespace, with counters; legacy tables are read only if they exist."""
    errors: list[str] = []
    tables = [t for t in _safe(errors, "legacy tables", lambda: legacy_tables(ns), []) if t in ("filter", "nat")]
    legacy = _safe(errors, "iptables (legacy)", lambda: read_legacy(ns, tuple(tables)), []) if tables else []
    raw: JSONObject = _safe(errors, "nft -j list ruleset", lambda: read_nft(ns), {}) if nft_available() else {}
    chains = _safe(errors, "nf_tables rules", lambda: read_nft_chains(ns, raw), []) if raw else []
    has6 = any(t in ("filter", "nat") for t in _safe(errors, "ip6tables legacy tables", lambda: legacy6_tables(ns), []))
    legacy6 = _safe(errors, "ip6tables (legacy)", lambda: read_legacy6(ns), []) if has6 else []
    l2 = _safe(errors, "nf_tables bridge/netdev rules", lambda: nft_chains(raw, ("bridge", "netdev")), []) if raw else []
    return Ruleset.build(legacy, chains, legacy6, l2), tuple(tables), errors


def rule_counters(ns: Netns) -> list[Placed]:
    """Every rule of both backends with its counters (read before and after the repeated probe)."""
    rs, _tables, _errors = read_rules(ns)
    return list(rs.rules())


def read_host(ns: Netns, addresses: set[str]) -> HostState:
    return ns.call(lambda: _read_host(ns, addresses))


def _read_host(ns: Netns, addresses: set[str], ct: tuple[CtEntry, ...] | None = None) -> HostState:
    """The host's extras; conntrack is read here unless given (``observe`` reads it beside, in its own thread)."""
    errors: list[str] = []
    ports = tuple(_safe(errors, "bridge ports", ns.bridge_ports, []))
    brs = tuple(_safe(errors, "bridges", lambda: bridges(ns), []))
    rs, tables, rule_errors = read_rules(ns)
    if ct is None:
        ct = tuple(_safe(errors, "conntrack", lambda: conntrack(ns, addresses), []))
    return HostState(ports, brs, rs, tables, ct, tuple(errors + rule_errors))


def snapshot(namespaces: dict[str, Netns], *, host: str = "host", full: set[str] | None = None, addresses: set[str] | None = None) -> Snapshot:
    """Read every namespace (in full those in ``full``, or all when None) and the host's extras."""
    return observe(namespaces, host=host, full=full, addresses=addresses)[0]


def observe(namespaces: dict[str, Netns], *, host: str = "host", full: set[str] | None = None, addresses: set[str] | None = None,
            counted: Iterable[str] = ()) -> tuple[Snapshot, dict[str, dict[str, int]]]:
    """``snapshot``, and the SNMP counters of the namespaces in ``counted``, in one hand-over to each
    namespace's thread: every thread reads its namespace side by side with the others, the host's
    thread its extras too, while this thread waits on the kernel's conntrack dump (it makes its socket
    in the host namespace)."""
    counted = set(counted)
    host_ns = namespaces.get(host)

    def reader(label: str, ns: Netns) -> Callable[[], tuple[NsState, HostState | None, dict[str, int] | None]]:
        whole = full is None or label in full or label == host

        def read() -> tuple[NsState, HostState | None, dict[str, int] | None]:
            state = _with_routes6(_read_ns(label, ns, full=whole, host=label == host), ns, full=whole)
            extras = _read_host(ns, addresses or set(), ct=()) if label == host else None
            snmp = _safe([], "SNMP counters", lambda: snmp_counters(ns), None) if label in counted else None
            return state, extras, snmp

        return read

    ct_sock = conntrack_socket(host_ns) if host_ns is not None else None  # first in the host thread's queue, before its reads
    try:
        futures = {label: ns.submit(reader(label, ns)) for label, ns in namespaces.items()}
    except BaseException:
        if ct_sock is not None and ct_sock.exception(timeout=60) is None:
            ct_sock.result().close()  # a socket left open would keep the namespace alive
        raise
    ct_errors: list[str] = []
    ct: tuple[CtEntry, ...] = ()
    if host_ns is not None and ct_sock is not None:
        sock = ct_sock.result(timeout=60) if ct_sock.exception(timeout=60) is None else None  # None: conntrack tries again, or reads none
        ct = tuple(_safe(ct_errors, "conntrack", lambda: conntrack(host_ns, addresses or set(), sock=sock), []))
    read = {label: f.result(timeout=60) for label, f in futures.items()}
    extras = (read[host][1] if host in read else None) or HostState()
    extras = replace(extras, conntrack=ct, errors=extras.errors + tuple(ct_errors))
    snmp = {label: values for label, (_state, _extras, values) in read.items() if values is not None}
    return Snapshot({label: state for label, (state, _extras, _snmp) in read.items()}, extras), snmp


def counters(namespaces: dict[str, Netns], counted: Iterable[str], *, host: str = "host") -> tuple[list[Placed], dict[str, dict[str, int]]]:
    """The host's rule counters and the SNMP counters of the namespaces in ``counted``, in one hand-over to each namespace's thread."""
    counted = set(counted)

    def reader(label: str, ns: Netns) -> Callable[[], tuple[list[Placed] | None, dict[str, int] | None]]:
        def read() -> tuple[list[Placed] | None, dict[str, int] | None]:
            rules = rule_counters(ns) if label == host else None
            return rules, _safe([], "SNMP counters", lambda: snmp_counters(ns), None) if label in counted else None

        return read

    futures = {label: ns.submit(reader(label, ns)) for label, ns in namespaces.items() if label in counted or label == host}
    read = {label: f.result(timeout=60) for label, f in futures.items()}
    rules = read[host][0] if host in read else None
    return rules or [], {label: values for label, (_rules, values) in read.items() if values is not None}


def _lookup_key(label: str, dst: str, src: str | None = None, iif: str | None = None) -> str:
    return f"{label}: {dst}" + (f" from {src}" if src else "") + (f" iif {iif}" if iif else "")


def lookup(snap: Snapshot, label: str, dst: str, src: str | None = None, iif: str | None = None) -> RouteEntry | str:
    """The kernel's route lookup for a flow (``ip route get``), as ``ask_routes`` took it up front."""
    return snap.route_lookups.get(_lookup_key(label, dst, src, iif), "lookup failed")


def ask_routes(snap: Snapshot, namespaces: dict[str, Netns], questions: list[tuple[str, str]]) -> None:
    """Take the kernel's route lookups (namespace label, destination) into the snapshot, each namespace's side by side."""
    def ask(ns: Netns, dst: str) -> RouteEntry | str:
        try:
            return ns.route_get(ip_address(dst), None, None)
        except Exception:  # noqa: BLE001 - no route, or no such namespace: the rules read why not
            return "lookup failed"

    asked = {(label, dst): namespaces[label].submit(lambda ns=namespaces[label], dst=dst: ask(ns, dst))
             for label, dst in questions if label in namespaces and _lookup_key(label, dst) not in snap.route_lookups}
    for (label, dst), f in asked.items():
        result: RouteEntry | str = "lookup failed"
        with contextlib.suppress(Exception):
            result = f.result(timeout=30)
        snap.route_lookups[_lookup_key(label, dst)] = result


def snmp(namespaces: dict[str, Netns]) -> dict[str, dict[str, int]]:
    out = {}
    for label, ns in namespaces.items():
        with contextlib.suppress(Exception):
            out[label] = snmp_counters(ns)
    return out


def snmp_deltas(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], keys: tuple[str, ...]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for label, values in after.items():
        old = before.get(label, {})
        for k in keys:
            grew = values.get(k, 0) - old.get(k, values.get(k, 0))
            if grew > 0:
                out.setdefault(label, {})[k] = grew
    return out


__all__ = ["HostState", "NsState", "Snapshot", "ask_routes", "lookup", "read_host", "read_ns", "read_rules", "rule_counters", "snapshot", "snmp", "snmp_deltas"]
