"""The rule set: evidence in, ranked causes out.

Each rule is a small function that reads the evidence of one failed probe (its flow, the
expected path, what the capture at each hop saw when the probe was repeated, the rules whose
counters moved, the state of every namespace) and yields ``Finding`` values: a cause id,
where it is, a summary in configuration terms, a fix a user can paste, the evidence, and a
score that ranks it. Rules that need no probe also serve ``netcheck doctor``.

A cause on the probe's own path scores higher than the same fault elsewhere; a cause the
trace or a counter confirms scores higher than one inferred from configuration alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING

from netcheck import expect as promise
from netcheck.diagnose.firewall import Decision, Pkt, Placed, binary, is_native, matches
from netcheck.diagnose.path import LOOPBACK, Break, Flow, Route, Side, kname_or_none
from netcheck.diagnose.state import NsState, Snapshot, lookup
from netcheck.evidence import (
    AddAddress,
    AddRoute,
    AddRule,
    DeleteAddress,
    DeleteNeighbour,
    DeleteRoute,
    DeleteRule,
    Finding,
    Fix,
    FlushConntrack,
    Hop,
    Packet,
    ProbeResult,
    SetHairpin,
    SetLink,
    SetMaster,
    SetMtu,
    Sysctl,
)
from netcheck.kernel import nft
from netcheck.kernel.xtables import BUILTIN_CHAINS, XRule
from netcheck.lab import plan

if TYPE_CHECKING:
    from netcheck import spec
    from netcheck.diagnose.firewall import Ruleset
    from netcheck.diagnose.recording import LabFacts


@dataclass
class Evidence:
    """Everything the rules may look at. ``flow`` is None when nothing was probed (doctor)."""

    lab: LabFacts  # what the rules ask of the lab, gathered up front (netcheck.diagnose.recording.facts)
    snap: Snapshot
    flow: Flow | None = None
    route: Route | None = None
    result: ProbeResult | None = None  # the failed probe
    repeated: ProbeResult | None = None  # the same probe, sent again with a capture at every hop
    hops: tuple[Hop, ...] = ()
    breaks: tuple[Break, ...] = ()
    matched: list[tuple[Placed, int]] = field(default_factory=list)  # rules whose counters grew
    snmp: dict[str, dict[str, int]] = field(default_factory=dict)  # SNMP counters that grew, per namespace
    _sides: dict[str, Side | None] = field(default_factory=dict)

    # ------------------------------------------------------------- names and commands

    @property
    def t(self) -> spec.Topology:
        """The topology: what the lab promises."""
        return self.lab.topology

    def show(self, kernel: str | None) -> str:
        """A host interface as users know it and as the kernel names it: ``br0 (nck7q0b0)``."""
        if kernel is None:
            return "?"
        known = self.lab.spec_name(kernel)
        return f"{known} ({kernel})" if known != kernel else kernel

    def run(self, label: str, command: str) -> str:
        """A command to paste, entering the namespace of ``label``."""
        ns = self.snap.ns(label)
        name = ns.netns if ns is not None else None
        return f"ip netns exec {name} {command}" if name else command

    def sysctl_fix(self, label: str, key: str, value: object) -> str:
        return self.run(label, Sysctl(label, key, str(value)).command())

    def add(self, rule: XRule, backend: str | None = None, op: str = "-A", family: str = "ip") -> str:
        """The command, in the host, that adds ``rule`` (op -I: inserts it): ``add_fix``'s value, rendered."""
        return self.run("host", self.add_fix(rule, backend, op, family).command())

    def add_fix(self, rule: XRule, backend: str | None = None, op: str = "-A", family: str = "ip") -> AddRule:
        """The fix that adds ``rule`` in the host (op -I: inserts it) with ``backend`` (default: where the
        host's rules are). A rule in one of iptables' tables goes, for a lab built with firewall = "nft",
        to the lab's own nft table that has that chain."""
        if self.t.host.firewall == "nft" and rule.table in BUILTIN_CHAINS:
            home = self.fw.native_home(rule.table, rule.chain) if rule.family != 6 else self._native_home6(rule.table, rule.chain)
            if home is not None:
                return AddRule("host", "nft", replace(rule, table=home[0]), home[1], insert=op == "-I")
        return AddRule("host", backend or self.backend(), rule, family, insert=op == "-I")

    def _native_home6(self, role: str, chain: str) -> tuple[str, str] | None:
        """(table, family) of the lab's own nft table for an IPv6 rule of iptables' ``role`` ``chain`` (an ip6 or inet table's base chain)."""
        want = nft.HOOKS.get((role, chain))
        for backend, hook, kind, table, name, _prio in self.fw.hooks:
            family = self.fw.chains[(backend, table, name)].family
            if want is not None and is_native(backend, table) and name == chain and (kind, hook) == want[:2] and family in ("ip6", "inet"):
                return table, family
        return None

    @staticmethod
    def delete_fix(placed: Placed) -> DeleteRule:
        """The fix that deletes a rule where it lives (its command is ``placed.delete()``)."""
        return DeleteRule("host", placed.backend, placed.rule, placed.family)

    def backend(self) -> str:
        """Where new rules should go: the backend that already holds the host's rules."""
        held = self.fw.backends()
        if held == ["nft"]:
            return "nft"
        return "legacy" if held or self.snap.host.legacy_tables else "nft"

    # ------------------------------------------------------------- state

    @property
    def host(self) -> NsState:
        ns = self.snap.ns("host")
        assert ns is not None
        return ns

    @property
    def fw(self) -> Ruleset:
        return self.snap.host.ruleset

    def side(self, container: str | None) -> Side | None:
        if container is None or container not in {c.name for c in self.t.containers}:
            return None
        if container not in self._sides:
            self._sides[container] = self.lab.sides.get(container)  # gathered up front: None, a container whose namespace is gone
        return self._sides[container]

    def on_path(self) -> set[str]:
        """The containers the probe involves (sender and intended receiver)."""
        if self.flow is None:
            return set()
        names = {c.name for c in self.t.containers}
        return {n for n in (self.flow.source, self.flow.target) if n is not None and n in names}

    def seen(self, point: str, role: str = "request") -> Packet | None:
        r = self.repeated or self.result
        if r is None:
            return None
        c = next((c for c in r.captures if c.point == point), None)
        return c.first(role) if c is not None else None

    def break_note(self, direction: str = "out") -> list[str]:
        b = next((b for b in self.breaks if b.direction == direction), None)
        return [b.render()] if b is not None else []

    def counted(self, rule: Placed) -> int:
        return next((n for p, n in self.matched if p.key == rule.key), 0)

    def bridge_netfilter(self, bridge_k: str | None) -> bool:
        """Does bridged traffic on this bridge pass through iptables (br_netfilter)?"""
        if self.host.sysctl("net.bridge.bridge-nf-call-iptables") == "1":
            return True
        opts = self.snap.host.bridge(bridge_k) if bridge_k else None
        return bool(opts and opts.nf_call_iptables)


Rule = Callable[[Evidence], Iterator[Finding]]


def evaluate(ev: Evidence, more: Sequence[Rule] = ()) -> list[Finding]:
    """Run every rule (and ``more``: other modules' rules, such as DNS's); return the findings ranked, best first, without duplicates."""
    best: dict[tuple[str, str, str], Finding] = {}
    for r in (*RULES, *more):  # RULES is defined at the end of the module, once every rule exists
        try:
            found = list(r(ev))
        except Exception as exc:  # noqa: BLE001 - one broken rule must not hide the others
            found = [Finding("rule_failed", "netcheck", f"the diagnosis rule {r.__name__} failed: {exc!r}", "report this as a netcheck bug", score=1)]
        for f in found:
            key = (f.cause, f.where, f.summary)
            if key not in best or best[key].score < f.score:
                best[key] = f
    return sorted(best.values(), key=lambda f: -f.score)


def route_questions(ev: Evidence) -> list[tuple[str, str]]:
    """The kernel route lookups (namespace label, destination) the rules read from ``ev.snap.route_lookups``,
    asked up front (``state.ask_routes``) so that the rules reach no namespace."""
    f, out = ev.flow, []
    if f is None:
        return []
    if f.source in {c.name for c in ev.t.containers}:
        out.append((f.source, f.dst_addr))  # source_route
    pkt = _pkt_request(ev)
    if pkt is not None:
        out.append(("host", pkt.dst))  # host_no_route
    out += [("host", f.target_addr or f.dst_addr), ("host", f.src_addr)]  # subnet_overlap, the IPv6 route back
    out += [(label, f.dst_addr) for label, grew in ev.snmp.items() if grew.get("TcpExt.IPReversePathFilter")]  # rp_filter_strict
    out.append(("wan", str(ev.t.host.address.ip)))  # where the outside world sends the host's replies (_arrival)
    return [(label, dst) for label, dst in dict.fromkeys(out) if dst and ev.snap.ns(label) is not None]


def _spec_links(ev: Evidence) -> list[tuple[str, str, str, str | None]]:
    """(namespace label, kernel name, role, container) of every link the spec implies."""
    t = ev.t
    out: list[tuple[str, str, str, str | None]] = []
    for c in t.containers:
        out.append((c.name, c.interface, f"{c.name}'s own interface", c.name))
        s = ev.side(c.name)
        if s is not None and s.veth_k:
            out.append(("host", s.veth_k, f"the host end of {c.name}'s veth", c.name))
    for b in t.bridges:
        k = kname_or_none(ev.lab, b.name)
        if k:
            out.append(("host", k, "the bridge", None))
    up = kname_or_none(ev.lab, t.host.uplink)
    if up:
        out.append(("host", up, "the host's uplink", None))
    wan = ev.snap.ns("wan")
    if wan is not None:
        for link in wan.links:
            if link.kind == "veth":
                out.append(("wan", link.name, "the outside world's end of the uplink", None))
    return out


def _path_links(ev: Evidence) -> set[tuple[str, str]]:
    """(label, kernel link) pairs on the probe's path."""
    if ev.flow is None or ev.route is None:
        return set()
    out = set()
    for point in ev.route.points:
        try:
            ns, kernel, _spec = ev.lab.resolve_point(point)
        except Exception:  # noqa: BLE001
            continue
        out.add((ns.label, kernel))
    return out


# ============================================================================ links


def link_down(ev: Evidence) -> Iterator[Finding]:
    path = _path_links(ev)
    for label, name, role, _container in _spec_links(ev):
        ns = ev.snap.ns(label)
        link = ns.link(name) if ns else None
        if link is None or link.up:
            continue
        on = (label, name) in path
        where = label
        shown = ev.show(name) if label == "host" else name
        if not link.admin_up:
            fixes: tuple[SetLink | AddRoute, ...] = (SetLink(label, name),)
            if label == "host" and role == "the host's uplink" and ns is not None and not any(r.dst.prefixlen == 0 for r in ns.routes):
                fixes += (AddRoute("host", "default", str(ev.t.host.gateway)),)  # the default route went down with the link
            yield Finding(
                "link_down", where, f"{where}: {shown}, {role}, is down (admin down), so nothing crosses it",
                " && ".join(ev.run(label, x.command()) for x in fixes),
                (f"operstate {link.operstate}", *(["it is on the probe's path"] if on else []), *ev.break_note()),
                score=90 if on else 62, fixes=fixes,
            )
        else:
            yield Finding(
                "link_down", where, f"{where}: {shown}, {role}, is up but has no carrier (operstate {link.operstate}); its other end is down or detached",
                f"bring up its peer; then check: {ev.run(label, f'ip link show {name}')}",
                (), score=50 if on else 30,
            )


def lo_down(ev: Evidence) -> Iterator[Finding]:
    for label, ns in ev.snap.namespaces.items():
        lo = ns.link("lo")
        if lo is None or lo.admin_up:
            continue
        on = ev.flow is not None and ev.flow.via == "loopback" and ev.flow.source == label
        yield Finding(
            "lo_down", label, f"{label}: the loopback interface lo is down, so 127.0.0.1 and the namespace's own addresses are unreachable from inside it",
            ev.run(label, SetLink(label, "lo").command()), ("lo is admin down",), score=92 if on else 45, fixes=(SetLink(label, "lo"),),
        )


def not_in_bridge(ev: Evidence) -> Iterator[Finding]:
    on = ev.on_path()
    for c in ev.t.containers:
        s = ev.side(c.name)
        if s is None or not s.bridge_k or not s.veth_k:
            continue
        veth = ev.host.link(s.veth_k)
        if veth is None:
            continue
        master = ev.host.link_by_index(veth.master)
        if master is not None and master.name == s.bridge_k:
            continue
        ports = sorted(ev.show(p.port) for p in ev.snap.host.bridge_ports if p.bridge == s.bridge_k)
        now = f"is attached to {ev.show(master.name)}" if master is not None else "is attached to no bridge"
        values: tuple[Fix, ...] = (SetMaster("host", s.veth_k, s.bridge_k), *_unresolved(ev))
        yield Finding(
            "not_in_bridge", "host", f"host: {ev.show(s.veth_k)}, the host end of {c.name}'s veth, {now}; it should be a port of {ev.show(s.bridge_k)}, so {c.name} is cut off from the bridge",
            " && ".join(ev.run(v.netns, v.command()) for v in values),
            (f"ports of {ev.show(s.bridge_k)}: {', '.join(ports) or 'none'}",), score=88 if c.name in on else 58, fixes=values,
        )


def _unresolved(ev: Evidence) -> tuple[DeleteNeighbour, ...]:
    """The probe's sender's FAILED or INCOMPLETE neighbour entries for its destination or gateway: deleted with a fix
    that lets ARP through again, so that ARP starts again at once, not at its next retry (1 s later)."""
    f = ev.flow
    ns = ev.snap.ns(f.source) if f is not None else None
    if f is None or ns is None:
        return ()
    hops = {f.dst_addr, _host_gateway(ev, f.source) if f.source in {c.name for c in ev.t.containers} else None}
    return tuple(DeleteNeighbour(f.source, n.interface, n.address) for n in ns.neighbours if n.address in hops and n.state in ("FAILED", "INCOMPLETE"))


def _veth_pairs(ev: Evidence) -> Iterator[tuple[tuple[str, str], tuple[str, str], str, int]]:
    """Each veth whose two ends netcheck sees: (label, kernel link) of each end, what it is, and the MTU the spec gives it
    (a container's ``mtu``, else the kernel's default)."""
    for c in ev.t.containers:
        s = ev.side(c.name)
        if s is not None and s.veth_k:
            yield (c.name, c.interface), ("host", s.veth_k), f"{c.name}'s veth", promise.path_mtu(ev.t, c.name)
    up, wan = kname_or_none(ev.lab, ev.t.host.uplink), ev.snap.ns("wan")
    peers = [link.name for link in wan.links if link.kind == "veth"] if wan is not None else []
    if up and len(peers) == 1:
        yield ("host", up), ("wan", peers[0]), "the host's uplink", promise.DEFAULT_MTU


def _mtu(ev: Evidence, end: tuple[str, str]) -> int | None:
    ns = ev.snap.ns(end[0])
    link = ns.link(end[1]) if ns is not None else None
    return link.mtu if link is not None else None


def _sized(ev: Evidence) -> int | None:
    """The size of the failed probe, when it was a don't-fragment one (a path MTU probe)."""
    return ev.result.request.size if ev.result is not None else None


def mtu_mismatch(ev: Evidence) -> Iterator[Finding]:
    path = _path_links(ev)
    for a, b, what, want in _veth_pairs(ev):
        mtu_a, mtu_b = _mtu(ev, a), _mtu(ev, b)
        if mtu_a is None or mtu_b is None or mtu_a == mtu_b:
            continue
        fixes = tuple(SetMtu(label, link, want) for (label, link), got in ((a, mtu_a), (b, mtu_b)) if got != want)
        on = a in path or b in path
        shown = [f"{link if label != 'host' else ev.show(link)} ({label}) has {got}" for (label, link), got in ((a, mtu_a), (b, mtu_b))]
        yield Finding(
            "mtu_mismatch", "host", f"host: the two ends of {what} disagree on the MTU: {shown[0]}, {shown[1]}; a packet larger than the smaller "
            f"one is dropped where it arrives, and no fragmentation-needed tells its sender (small pings pass, big packets vanish)",
            " && ".join(ev.run(x.netns, x.command()) for x in fixes), (f"the spec's MTU for {what}: {want}", *(["it is on the probe's path"] if on else [])),
            score=86 if on and _sized(ev) else 64 if on or a[0] in ev.on_path() else 55, fixes=fixes,
        )


def path_mtu_low(ev: Evidence) -> Iterator[Finding]:
    """A don't-fragment probe larger than a link of its path (both ends of it agreeing: a mismatch is ``mtu_mismatch``)."""
    size = _sized(ev)
    if size is None:
        return
    pairs = {end: (a, b, want) for a, b, _what, want in _veth_pairs(ev) for end in (a, b)}
    named: set[tuple[str, str]] = set()
    for end in sorted(_path_links(ev)):
        got = _mtu(ev, end)
        if got is None or got >= size or end in named:
            continue
        a, b, want = pairs.get(end, (end, None, promise.DEFAULT_MTU))
        named |= {a, *([b] if b is not None else [])}  # one finding per veth: its two ends are one link
        if b is not None and _mtu(ev, a) != _mtu(ev, b):
            continue
        ends = [x for x in (a, b) if x is not None]
        fixes = tuple(SetMtu(label, link, max(size, want)) for label, link in ends)
        label, link = end
        name = ev.show(link) if label == "host" else link
        yield Finding(
            "path_mtu_low", label, f"{label}: {name} carries at most {got} bytes, less than the {size} its sender sends unfragmented "
            f"(the MTU the spec gives it): full-size packets get fragmentation-needed back, or vanish where that ICMP is dropped",
            " && ".join(ev.run(x.netns, x.command()) for x in fixes) + f" (or give the containers mtu = {got}: Docker's daemon.json \"mtu\", the CNI bridge's \"mtu\")",
            (f"the failed probe: {size} bytes with don't-fragment set", f"{name}: MTU {got}"), score=87, fixes=fixes,
        )


def extra_link(ev: Evidence) -> Iterator[Finding]:
    for c in ev.t.containers:
        ns = ev.snap.ns(c.name)
        if ns is None:
            continue
        extra = [link for link in ns.links if link.name not in ("lo", c.interface)]
        for link in extra:
            yield Finding(
                "extra_link", c.name, f"{c.name}: the namespace holds a link that is not its own: {link.name} ({link.kind}); a container should see only lo and {c.interface}",
                ev.run(c.name, f"ip link del {link.name}"), (f"links in {c.name}: {', '.join(x.name for x in ns.links)}",), score=56,
            )


def bridge_flooding(ev: Evidence) -> Iterator[Finding]:
    for b in ev.snap.host.bridges:
        if b.ageing_time == 0:
            yield Finding(
                "bridge_flooding", "host", f"host: bridge {ev.show(b.name)} has ageing_time 0: it forgets every MAC at once and floods each frame to every port, so containers see each other's "
                    f"unicast traffic",
                ev.run("host", f"ip link set {b.name} type bridge ageing_time 30000"), ("ageing_time 0 (the default is 30000, i.e. 300 s)",), score=54,
            )


# ============================================================================ addresses and routes


def address_conflict(ev: Evidence) -> Iterator[Finding]:
    holders: dict[str, list[tuple[str, str, IPv4Interface]]] = {}
    for label, ns in ev.snap.namespaces.items():
        for a in ns.addresses:
            if a.address.ip in LOOPBACK:
                continue
            holders.setdefault(str(a.address.ip), []).append((label, a.interface, a.address))  # type: ignore[arg-type]  # IPv4: addresses() reads AF_INET
    declared = {str(c.address.ip): c.name for c in ev.t.containers if c.address is not None}
    flow_addrs = {ev.flow.src_addr, ev.flow.dst_addr, ev.flow.target_addr} if ev.flow else set()
    for ip, where in holders.items():
        if len(where) < 2:
            continue
        owner = declared.get(ip)
        intruders = [w for w in where if w[0] != owner] if owner else where[1:]
        for label, iface, addr in intruders:
            yield Finding(
                "address_conflict", label, f"{label}: {ip} is also held by {', '.join(f'{lbl} ({i})' for lbl, i, _ in where if (lbl, i) != (label, iface))}: with one address "
                    "held twice, ARP and replies for it go to either holder, and each drops packets that seem to come from itself",
                ev.run(label, f"ip addr del {addr} dev {iface}"),
                (f"{ip} is declared for {owner}" if owner else f"holders: {', '.join(w[0] for w in where)}",), score=94 if ip in flow_addrs else 60,
                fixes=(DeleteAddress(label, iface, str(addr)),),
            )


def address_on_bridge_port(ev: Evidence) -> Iterator[Finding]:
    """A bridge port that still holds an address (seed 2's veth_http2 keeps 10.0.0.10 from before the
    bridge): the kernel keeps a connected route out of that one port, so the host sends traffic for
    the subnet there instead of to the bridge, and only the one container behind it gets it."""
    flow_addrs = {ev.flow.src_addr, ev.flow.dst_addr, ev.flow.target_addr} if ev.flow else set()
    for label, ns in ev.snap.namespaces.items():
        for a in ns.addresses:
            link = ns.link(a.interface)
            bridge = ns.link_by_index(link.master) if link is not None and link.master is not None else None
            if bridge is None or bridge.kind != "bridge" or a.address.ip in LOOPBACK:
                continue
            net = a.address.network
            routes = [r for r in ns.routes if r.dst == net and r.gateway is None]
            shadowed = [r for r in routes if r.interface == a.interface]
            hit = any(x and _in(x, net) for x in flow_addrs)
            yield Finding(
                "address_on_bridge_port", label,
                f"{label}: {ev.show(a.interface)} is a port of bridge {ev.show(bridge.name)} but still holds {a.address}: the kernel routes {net} out of that one port "
                    f"as well as the bridge, so traffic from {label} to {net} can leave by {ev.show(a.interface)} and reach only what is behind it",
                ev.run(label, f"ip address del {a.address} dev {a.interface}"),
                (*(f"route {r.dst} dev {ev.show(r.interface)}" for r in routes), "a bridge port carries frames; addresses belong on the bridge"),
                score=(93 if hit else 62) if shadowed else 50, fixes=(DeleteAddress(label, a.interface, str(a.address)),),
            )


def _in(address: str, net: IPv4Network | IPv6Network) -> bool:
    try:
        return ip_address(address) in net
    except ValueError:
        return False


def wrong_prefix(ev: Evidence) -> Iterator[Finding]:
    on = ev.on_path()
    for c in ev.t.containers:
        ns = ev.snap.ns(c.name)
        if ns is None or c.address is None:
            continue
        want = c.address
        s = ev.side(c.name)
        host_net = None
        if s is not None and s.l3:
            host_net = next((a.address.network for a in ev.host.addrs(s.l3) if want.ip in a.address.network), None)
        for a in ns.addrs(c.interface):
            if a.address.ip != want.ip or a.address.network.prefixlen == want.network.prefixlen:
                continue
            gw = f" && {ev.run(c.name, f'ip route replace default via {c.gateway}')}" if c.gateway else ""
            yield Finding(
                "wrong_prefix", c.name, f"{c.name}: {c.interface} has {a.address}, but its network is {want.network}" + (f" (the host's {ev.show(s.l3 if s else None)} has "
                    f"{host_net})" if host_net else "")
                + f"; with /{a.address.network.prefixlen} the container thinks its neighbours are off-link" + (" and its gateway "
                    "unreachable" if c.gateway and c.gateway not in a.address.network else ""),
                ev.run(c.name, f"ip addr del {a.address} dev {c.interface}") + " && " + ev.run(c.name, f"ip addr add {want} dev {c.interface}") + gw,
                (), score=93 if c.name in on else 60,
            )


def _dst_in_own_subnet(ev: Evidence, container: str, dst: str) -> bool:
    c = ev.t.container(container)
    try:
        return c.address is not None and IPv4Address(dst) in c.address.network
    except ValueError:
        return False


def source_route(ev: Evidence) -> Iterator[Finding]:
    """The sending container's own route lookup: no route, or a gateway nobody holds."""
    f = ev.flow
    containers = {c.name for c in ev.t.containers}
    if f is None or f.source not in containers or f.via in ("loopback", "arp"):
        return
    ns_state = ev.snap.ns(f.source)
    if ns_state is None:
        return
    c = ev.t.container(f.source)
    got = lookup(ev.snap, f.source, f.dst_addr)
    gw = (c.gateway6 if _v6(f.dst_addr) else c.gateway) or _host_gateway(ev, f.source)
    if isinstance(got, str):
        if _dst_in_own_subnet(ev, f.source, f.dst_addr):
            yield Finding(
                "no_route", f.source, f"{f.source}: no route to {f.dst_addr}, although it is in {f.source}'s declared network ({got})",
                ev.run(f.source, f"ip addr add {c.address} dev {c.interface}"), (f"routes: {_routes(ns_state)}",), score=70,
            )
            return
        yield Finding(
            "no_default_route", f.source, f"{f.source}: no route to {f.dst_addr} ({got}): the container has no default route, so it cannot reach anything beyond its own subnet",
            ev.run(f.source, f"ip route add default via {gw}") if gw else ev.run(f.source, "ip route add default via <the host's address on this network>"),
            (f"routes: {_routes(ns_state)}", *([f"the probe failed with: {ev.result.error}"] if ev.result and ev.result.error else [])), score=85,
            fixes=(AddRoute(f.source, "default", str(gw)),) if gw else (),
        )
        return
    if got.gateway is None:
        return
    g = str(got.gateway)
    if ev.host.holds(g):
        return
    neigh = next((n for n in ns_state.neighbours if n.address == g), None)
    yield Finding(
        "wrong_gateway", f.source, f"{f.source}: the route to {f.dst_addr} goes via {g}, which no interface of the host holds" + (f"; the host's address on this network is "
            f"{gw}" if gw else "") + ", so the packets never leave the container's network",
        ev.run(f.source, f"ip route replace default via {gw}") if gw else ev.run(f.source, "ip route replace default via <the host's address on this network>"),
        (f"neighbour {g}: {neigh.state if neigh else 'no entry'} (nobody answers ARP for it)", f"route: {f.dst_addr} via {g} dev {got.interface}"), score=86,
        fixes=(AddRoute(f.source, "default", str(gw), replace=True),) if gw else (),
    )


def _routes(ns: NsState) -> str:
    parts = []
    for r in ns.routes:
        via = f" via {r.gateway}" if r.gateway else ""
        parts.append(f"{'default' if r.dst.prefixlen == 0 else r.dst}{via} dev {r.interface}")
    return "; ".join(parts) or "none"


def _v6(address: str | None) -> bool:
    return address is not None and ":" in address


def ipv6_forwarding_off(ev: Evidence) -> Iterator[Finding]:
    """IPv6 has a forwarding switch of its own: net.ipv4.ip_forward = 1 routes no IPv6 packet."""
    f, r = ev.flow, ev.route
    if f is None or r is None or not r.routed or not _v6(f.dst_addr):
        return
    fwd = ev.host.sysctl("net.ipv6.conf.all.forwarding")
    if fwd is None or fwd == "1":
        return
    yield Finding(
        "ip_six_forwarding_off", "host", f"host: net.ipv6.conf.all.forwarding = {fwd} (net.ipv4.ip_forward is {ev.host.sysctl('net.ipv4.ip_forward')}), "
        f"so IPv6 packets from {ev.show(r.in_iface)} are not routed to {ev.show(r.out_iface)}",
        ev.sysctl_fix("host", "net.ipv6.conf.all.forwarding", 1), tuple(ev.break_note()), score=96, fixes=(Sysctl("host", "net.ipv6.conf.all.forwarding", "1"),),
    )


def ipv6_disabled(ev: Evidence) -> Iterator[Finding]:
    """disable_ipv6 = 1 on the sender's interface (or all of them): its IPv6 addresses are gone, and with them every IPv6 route."""
    f = ev.flow
    if f is None or not _v6(f.dst_addr) or f.source not in {c.name for c in ev.t.containers}:
        return
    c = ev.t.container(f.source)
    ns = ev.snap.ns(f.source)
    if ns is None:
        return
    # The interface's own value is the one in force: writing "all" sets every interface there is at that moment, and Docker leaves
    # all = 1 with its container's eth0 set back to 0 (--ipv6). "all" speaks only where the interface's value cannot be read.
    own = f"net.ipv6.conf.{c.interface}.disable_ipv6"
    for key in (own,) if ns.sysctl(own) is not None else ("net.ipv6.conf.all.disable_ipv6",):
        if ns.sysctl(key) == "1":
            values: tuple[Fix, ...] = (Sysctl(f.source, key, "0"), *((AddAddress(f.source, c.interface, str(c.address6)),) if c.address6 else ()),
                                       *((AddRoute(f.source, "default", str(c.gateway6)),) if c.address6 and c.gateway6 else ()))
            yield Finding("ip_six_disabled", f.source, f"{f.source}: {key} = 1, so {c.interface} holds no IPv6 address ({c.address6} is gone) and no IPv6 route",
                          " && ".join(ev.run(v.netns, v.command()) for v in values),
                          (f"{key} = 1", "turning it back to 0 does not bring the static address (nor its default route) back: they are added again"), score=97,
                          fixes=values)
            return


def dad_failed(ev: Evidence) -> Iterator[Finding]:
    """Duplicate address detection failed for an address of the flow: the kernel never uses it (it stays "tentative dadfailed")."""
    f = ev.flow
    if f is None or not _v6(f.dst_addr):
        return
    for label, ns in ev.snap.namespaces.items():
        for iface, addr in ns.dad_failed:
            if addr not in (f.src_addr, f.dst_addr, f.target_addr):
                continue
            other = next((f"{o} ({a.interface})" for o, s in ev.snap.namespaces.items() if o != label for a in s.addresses if str(a.address.ip) == addr), "another node")
            yield Finding(
                "dad_failed", label, f"{label}: duplicate address detection failed for {addr} on {iface} ({other} answered for it), so the kernel never uses it",
                ev.run(label, f"ip addr del {addr} dev {iface}") + f", give the other holder its own address, then re-add {addr}",
                (f"{label}: {addr} is 'tentative dadfailed' on {iface}", f"also held by {other}"), score=97,
            )
            return


def _dnat_to_the_container(ev: Evidence, placed: Placed) -> tuple[Fix, ...]:
    """Delete a DNAT to ::1 and add it again to the flow's container (its IPv6 address, the container's port); none without a target."""
    f = ev.flow
    to_addr = _target_at(ev, f) if f is not None else None
    if f is None or not to_addr or ":" not in to_addr or f.target_port is None:
        return ()
    to = replace(placed.rule, to_destination=f"[{to_addr}]:{f.target_port}", handle=None)
    return ev.delete_fix(placed), AddRule("host", placed.backend, to, placed.family)


def dnat_to_loopback6(ev: Evidence) -> Iterator[Finding]:
    """An IPv6 DNAT to ::1: IPv6 has no route_localnet; a forwarded packet is never delivered to ::1."""
    for placed in ev.fw.rules():
        r = placed.rule
        if r.family == 6 and r.target == "DNAT" and r.to_destination and _split_to(r.to_destination)[0] == "::1":
            yield Finding(
                "dnat_to_loopback_six", "host", f"host: `{placed.render()}` DNATs to [::1], which the kernel never does for a packet from outside (IPv6 has no route_localnet): "
                "it is dropped as a martian. Docker and Podman publish ::1 through a userland proxy instead",
                ev.run("host", placed.delete()) + " (then DNAT to the container's own IPv6 address, or run a proxy on ::1)", (placed.where(),), score=90,
                fixes=_dnat_to_the_container(ev, placed),
            )
            return


def _host_gateway(ev: Evidence, container: str) -> str | None:
    """The host's address on the container's network (kernel state), for fixes."""
    s = ev.side(container)
    c = ev.t.container(container)
    if s is None or s.l3 is None or c.address is None:
        return None
    return next((str(a.address.ip) for a in ev.host.addrs(s.l3) if c.address.ip in a.address.network), None)


def default_route_static(ev: Evidence) -> Iterator[Finding]:
    """Doctor: each container's default route against the spec, without a probe."""
    if ev.flow is not None:
        return
    for c in ev.t.containers:
        ns = ev.snap.ns(c.name)
        if ns is None or c.gateway is None:
            continue
        d = ns.default_route()
        gw = str(c.gateway)
        if d is None:
            yield Finding("no_default_route", c.name, f"{c.name}: no default route (the spec declares one via {gw})", ev.run(c.name, f"ip route add default via {gw}"), (f"routes: "
                f"{_routes(ns)}",), score=70)
        elif d.gateway is not None and not ev.host.holds(str(d.gateway)):
            yield Finding("wrong_gateway", c.name, f"{c.name}: the default route goes via {d.gateway}, which no interface of the host holds (the spec says {gw})", ev.run(c.name, f"ip route "
                f"replace default via {gw}"), (), score=70)


# ============================================================================ the host: forwarding and filtering


def _pkt_request(ev: Evidence) -> Pkt | None:
    f, r = ev.flow, ev.route
    if f is None or r is None or f.proto == "arp":
        return None
    dst = f.target_addr if f.dnat and f.target_addr else f.dst_addr
    port = f.target_port if f.dnat else f.dport
    return Pkt(f.src_addr, dst, f.proto, port, r.in_iface, r.out_iface)


def ip_forward_off(ev: Evidence) -> Iterator[Finding]:
    f, r = ev.flow, ev.route
    fwd = ev.host.sysctl("net.ipv4.ip_forward")
    if fwd is None or fwd == "1" or (f is not None and _v6(f.dst_addr)):
        return  # (IPv6 is routed by its own switch: ipv6_forwarding_off)
    if f is not None and r is not None:
        if not r.routed:
            return
        what = f"packets from {ev.show(r.in_iface)} are not routed to {ev.show(r.out_iface)}"
        yield Finding(
            "ip_forward_off", "host", f"host: net.ipv4.ip_forward = {fwd}, so {what}",
            ev.sysctl_fix("host", "net.ipv4.ip_forward", 1), tuple(ev.break_note()), score=95, fixes=(Sysctl("host", "net.ipv4.ip_forward", "1"),),
        )
        return
    if any(promise.reaches_outside(ev.t, c.name) for c in ev.t.containers) or ev.t.publishes or ev.t.vips:
        yield Finding(
            "ip_forward_off", "host", f"host: net.ipv4.ip_forward = {fwd}, so the host routes nothing between its containers and the outside world",
            ev.sysctl_fix("host", "net.ipv4.ip_forward", 1), ("the spec expects forwarding (a container reaches the outside, or a port is published)",), score=80,
        )


def forward_drop(ev: Evidence) -> Iterator[Finding]:
    r = ev.route
    pkt = _pkt_request(ev)
    counted = False
    # Every DROP/REJECT in a filter chain whose counter grew while the probe was repeated.
    for placed, n in ev.matched:
        if placed.rule.target in ("DROP", "REJECT") and ("forward", "filter") in ev.fw.hooks_of(placed.backend, placed.rule.table, placed.rule.chain):
            yield Finding(
                "forward_drop", "host", f"host: the rule `{placed.render()}` dropped the probe{_ifaces(ev, placed.rule)}: its counter grew by {n} during the repeated probe",
                ev.run("host", placed.delete()),
                (placed.where(), *ev.break_note()), score=93, fixes=(ev.delete_fix(placed),),
            )
            counted = True
    if pkt is None or r is None or counted:
        return
    if not (r.routed or (r.bridged and ev.bridge_netfilter(r.in_iface))):
        return
    if r.routed and ev.host.sysctl("net.ipv4.ip_forward") != "1":
        return  # never reaches FORWARD
    for label, p in (("request", pkt), ("reply", Pkt(pkt.dst, pkt.src, pkt.proto, None, pkt.oif, pkt.iif, "established"))):
        d = ev.fw.verdict("forward", p)
        if d is None:
            continue
        yield _forward_finding(ev, d, p, label, r.bridged)
        return


def _ifaces(ev: Evidence, r: XRule) -> str:
    """The interfaces a rule names, as users know them: ' from bridge_local (nc1b0) to enp0s3 (nc1up)'."""
    parts = []
    for word, name in (("from", r.in_interface), ("to", r.out_interface)):
        if name:
            neg = name.startswith("!")
            parts.append(f"{word} {'anything but ' if neg else ''}{ev.show(name.lstrip('!'))}")
    return f" going {' '.join(parts)}" if parts else ""


def _forward_finding(ev: Evidence, d: Decision, p: Pkt, label: str, bridged: bool) -> Finding:
    way = f"{ev.show(p.iif)} -> {ev.show(p.oif)}"
    why = " (bridged frames pass FORWARD because bridge-nf-call-iptables=1)" if bridged else ""
    counted = ev.counted(d.rule) if d.rule is not None else 0
    evidence = [f"the {label} {p.src} > {p.dst} walks {' -> '.join(d.via)}", *ev.break_note()]
    if d.rule is not None:
        if counted:
            evidence.append(f"its counter grew by {counted} during the repeated probe")
        return Finding(
            "forward_drop", "host", f"host: FORWARD drops the {label} {way}{why}: `{d.rule.render()}`",
            ev.run("host", d.rule.delete()), tuple(evidence), score=92 if counted else 86, fixes=(ev.delete_fix(d.rule),),
        )
    # The accepts go into the chain whose policy drops: iptables' FORWARD, or a native nft chain (a firewall daemon's own table).
    chain = next((ch for b, ch in ev.fw.base_chains("forward", "filter") if b == d.backend and ch.name == d.chain and (ch.policy or "ACCEPT") == d.policy), None)
    native = chain is not None and is_native(d.backend, chain.table)
    where = XRule(chain.table, chain.name, "ACCEPT") if native and chain is not None else XRule("filter", "FORWARD", "ACCEPT")
    accept = replace(where, in_interface=p.iif, out_interface=p.oif)
    back = replace(where, in_interface=p.oif, out_interface=p.iif)
    family = chain.family if native and chain is not None else "ip"

    def value(rule: XRule) -> AddRule:
        return AddRule("host", d.backend, rule, family, insert=True) if native else ev.add_fix(rule, d.backend, "-I")

    values = (value(accept), *(() if p.iif == p.oif else (value(back),)))
    policy_of = f"the policy of nft chain {family} {chain.table} {chain.name}" if native and chain is not None else f"the FORWARD policy ({binary(d.backend)})"
    return Finding(
        "forward_drop", "host", f"host: {policy_of} is {d.verdict} and no rule accepts {way}{why}, so the {label} is dropped" if native else
        f"host: the FORWARD policy is {d.verdict} ({binary(d.backend)}) and no rule accepts {way}{why}, so the {label} is dropped",
        " && ".join(ev.run("host", v.command()) for v in values), tuple(evidence), score=90, fixes=values,
    )


def host_no_route(ev: Evidence) -> Iterator[Finding]:
    r, pkt = ev.route, _pkt_request(ev)
    v6 = pkt is not None and _v6(pkt.dst)
    if r is None or pkt is None or not r.routed or ev.host.sysctl("net.ipv6.conf.all.forwarding" if v6 else "net.ipv4.ip_forward") != "1":
        return
    got = lookup(ev.snap, "host", pkt.dst)
    if isinstance(got, str):
        d = ev.host.default_route()
        if v6:
            uplink = kname_or_none(ev.lab, ev.t.host.uplink) or ev.t.host.uplink
            ra = ev.host.sysctl(f"net.ipv6.conf.{uplink}.accept_ra")
            if ra == "1":
                # forwarding = 1 makes accept_ra = 1 ignore router advertisements: a default route learned from them is never renewed.
                yield Finding(
                    "ra_ignored_when_forwarding", "host", f"host: no IPv6 route to {pkt.dst} ({got}): with net.ipv6.conf.all.forwarding = 1, {ev.show(uplink)}'s accept_ra = 1 "
                    "ignores router advertisements (a router accepts them only with accept_ra = 2), so a default route learned from them is gone and never renewed",
                    ev.sysctl_fix("host", f"net.ipv6.conf.{uplink}.accept_ra", 2) + (f" (or a static one: {ev.run('host', f'ip -6 route add default via {ev.t.host.gateway6}')})"
                                                                                    if ev.t.host.gateway6 else ""),
                    (f"net.ipv6.conf.{uplink}.accept_ra = 1", "net.ipv6.conf.all.forwarding = 1", "the host has no IPv6 default route"), score=88,
                    fixes=(AddRoute("host", "default", str(ev.t.host.gateway6)),) if ev.t.host.gateway6 else (),  # the static one: an RA may be minutes away
                )
                return
        gw = ev.t.host.gateway6 if v6 else ev.t.host.gateway
        yield Finding(
            "host_no_route", "host", f"host: no route to {pkt.dst} ({got})" + ("; the host has no default route" if d is None else ""),
            ev.run("host", f"ip {'-6 ' if v6 else ''}route add default via {gw}"), (f"host routes: {_routes(ev.host)}",), score=60,
            fixes=(AddRoute("host", "default", str(gw)),) if d is None and gw else (),
        )
        return
    if v6:
        yield from _no_route_back6(ev, r, pkt)


def subnet_overlap(ev: Evidence) -> Iterator[Finding]:
    """A host network whose subnet takes in an outside address (a tool's bridge on a range the outside world uses):
    the host's connected route sends the packets into that network instead of out of the uplink."""
    f, r = ev.flow, ev.route
    up = kname_or_none(ev.lab, ev.t.host.uplink)
    if f is None or r is None or f.via != "outside" or not r.routed or up is None:
        return
    dst = f.target_addr or f.dst_addr
    got = lookup(ev.snap, "host", dst)
    if isinstance(got, str) or got.gateway is not None or got.interface in (None, up):
        return
    held = [a.address for a in ev.host.addrs(got.interface) if ip_address(dst) in a.address.network]
    if not held:
        return
    iface = ev.show(got.interface)
    yield Finding(
        "subnet_overlap", "host", f"host: {iface} holds {held[0]}, whose subnet {held[0].network} takes in the outside address {dst}: the host sends "
        f"packets for {dst} into {iface} instead of out of the uplink {ev.show(up)}",
        f"give {iface} a subnet that holds no outside address (Docker: \"default-address-pools\" or `docker network create --subnet`; Podman: "
        f"`podman network create --subnet`), or {ev.run('host', f'ip address del {held[0]} dev {got.interface}')}",
        (f"host: route get {dst}: dev {iface} (connected, no gateway)", f"{iface}: {held[0]}"), score=85,
    )


def _no_route_back6(ev: Evidence, r: Route, pkt: Pkt) -> Iterator[Finding]:
    """IPv6: the reply's way back, to the container's address, must leave by the container's side of the host (its bridge)."""
    f = ev.flow
    if f is None or f.source not in {c.name for c in ev.t.containers}:
        return
    c = ev.t.container(f.source)
    back = lookup(ev.snap, "host", f.src_addr)
    if isinstance(back, str) or back.interface == r.in_iface or c.address6 is None:
        return
    yield Finding(
        "host_no_route", "host", f"host: the route back to {f.src_addr} leaves by {ev.show(back.interface)}, not {ev.show(r.in_iface)}: the host has no route to "
        f"{c.address6.network}, so the replies go out again instead of reaching {f.source}",
        ev.run("host", f"ip -6 route add {c.address6.network} dev {r.in_iface}"), (f"route back: {f.src_addr} via {back.gateway or '-'} dev {back.interface}",), score=75,
        fixes=(AddRoute("host", str(c.address6.network), "", dev=r.in_iface),) if r.in_iface else (),
    )


def forwarding_off(ev: Evidence) -> Iterator[Finding]:
    """ip_forward = 1, but an interface the routed flow enters by (either way) has forwarding = 0: the host routes nothing that arrives there."""
    r = ev.route
    if r is None or not r.routed or ev.host.sysctl("net.ipv4.ip_forward") != "1":
        return
    off = [i for i in (r.in_iface, r.out_iface) if i and ev.host.sysctl(f"net.ipv4.conf.{i}.forwarding") == "0"]
    if not off:
        return
    values = tuple(Sysctl("host", f"net.ipv4.conf.{i}.forwarding", "1") for i in off)
    yield Finding(
        "forwarding_off", "host",
        f"host: net.ipv4.conf.{'/'.join(ev.lab.spec_name(i) for i in off)}.forwarding = 0 (while ip_forward = 1): the host routes nothing that arrives on "
        f"{' or '.join(ev.show(i) for i in off)}, so the {'request' if r.in_iface in off else 'reply'} is not forwarded",
        " && ".join(ev.run("host", v.command()) for v in values), tuple(ev.break_note()), score=94, fixes=values,
    )


def rp_filter_strict(ev: Evidence) -> Iterator[Finding]:
    for label, grew in ev.snmp.items():
        n = grew.get("TcpExt.IPReversePathFilter", 0)
        if not n:
            continue
        ns = ev.snap.ns(label)
        if ns is None:
            continue
        strict = [link.name for link in ns.links if link.name != "lo" and ns.conf(link.name, "rp_filter") == 1]
        far = ev.flow.dst_addr if ev.flow else None
        back = lookup(ev.snap, label, far) if far else None
        out = back.interface if back is not None and not isinstance(back, str) else None
        routed = {a.interface for a in ns.addresses}
        suspects = [i for i in strict if i != out and i in routed] or strict
        arrival = _arrival(ev, label)
        if arrival in suspects:
            suspects = [arrival]
        shown = ", ".join(ev.show(i) if label == "host" else i for i in suspects)
        values = (Sysctl(label, "net.ipv4.conf.all.rp_filter", "2"), *(Sysctl(label, f"net.ipv4.conf.{i}.rp_filter", "2") for i in suspects))
        fixes = [ev.run(label, v.command()) for v in values]
        yield Finding(
            "rp_filter_strict", label,
            f"{label}: strict reverse-path filtering (rp_filter=1) dropped {n} packet(s) during the repeated probe: they arrived on {shown or 'an interface'}"
            + (f", but the route back to {far} leaves by {ev.show(out) if label == 'host' else out}" if out else "") + " (asymmetric routing); loose mode (2) accepts them",
            " && ".join(fixes), (f"{label}: TcpExt.IPReversePathFilter +{n}", "interfaces with rp_filter=1: " + (", ".join(ev.show(i) if label == "host" else i for i in strict) or "none")), score=93,
            fixes=values,
        )


def asymmetric_rp_filter(ev: Evidence) -> Iterator[Finding]:
    """Without a counter: the outside world routes the host's replies to an interface that the
    host's route back does not use, and that interface filters reverse paths strictly."""
    f, r = ev.flow, ev.route
    if f is None or r is None or f.via != "outside" or any("TcpExt.IPReversePathFilter" in g for g in ev.snmp.values()):
        return
    arrival = _arrival(ev, "host")
    if arrival is None or arrival == r.out_iface or ev.host.conf(arrival, "rp_filter") != 1:
        return
    yield Finding(
        "rp_filter_strict", "host",
        f"host: the outside world sends the replies back by {ev.show(arrival)}, but the host's route to {f.dst_addr} leaves by {ev.show(r.out_iface)}, "
        f"and rp_filter=1 (strict) on {ev.show(arrival)} drops what arrives where the route back does not go (even the ARP for its address)",
        ev.sysctl_fix("host", "net.ipv4.conf.all.rp_filter", 2) + " && " + ev.sysctl_fix("host", f"net.ipv4.conf.{arrival}.rp_filter", 2),
        (f"rp_filter: all={ev.host.sysctl('net.ipv4.conf.all.rp_filter')}, {arrival}={ev.host.sysctl(f'net.ipv4.conf.{arrival}.rp_filter')}",), score=85,
    )


def _arrival(ev: Evidence, label: str) -> str | None:
    """Where the outside world sends the host's replies: its route back to the host's address,
    whose gateway is an address of one host interface (asymmetric if that is not the uplink)."""
    if label != "host" or ev.snap.ns("wan") is None:
        return None
    back = lookup(ev.snap, "wan", str(ev.t.host.address.ip))
    if isinstance(back, str) or back.gateway is None:
        return None
    return next((a.interface for a in ev.host.addresses if a.address.ip == back.gateway), None)


# ============================================================================ NAT


def _masq_decision(ev: Evidence, src: str, dst: str, proto: str, iif: str | None, oif: str | None, dport: int | None = None) -> Decision | None:
    d = ev.fw.nat("postrouting", Pkt(src, dst, proto, dport, iif, oif))
    return d if d is not None and d.verdict in ("MASQUERADE", "SNAT") else None


def _masq_rules(ev: Evidence) -> list[Placed]:
    out = []
    for backend, base in ev.fw.base_chains("postrouting", "nat"):
        names = ev.fw.reachable(backend, base.table, [base.name])
        out += [p for p in ev.fw.rules() if p.backend == backend and p.rule.table == base.table and p.rule.chain in names and p.rule.target in ("MASQUERADE", "SNAT")]
    return out


def _rename(ev: Evidence) -> plan.Rename:
    """Spec interface name -> the lab's kernel name, or the spec name where the lab has none."""
    return lambda name: kname_or_none(ev.lab, name) or name


def masquerade(ev: Evidence) -> Iterator[Finding]:
    f, r = ev.flow, ev.route
    containers = {c.name for c in ev.t.containers}
    flows: list[tuple[str, str, str | None, str | None, bool]] = []  # (container, address, in, out, confirmed)
    up = kname_or_none(ev.lab, ev.t.host.uplink)
    if f is not None and r is not None:
        if f.source in containers and f.via == "outside" and f.proto != "arp":
            at_wan = ev.seen("wan:uplink")
            private = at_wan is not None and at_wan.src == f.src_addr
            flows.append((f.source, f.src_addr, r.in_iface, r.out_iface, private))
    else:
        for c in ev.t.containers:
            s = ev.side(c.name)
            if c.address is not None and promise.masqueraded(ev.t, c.name) and s is not None:
                flows.append((c.name, str(c.address.ip), s.l3, up, False))
    for name, addr, iif, oif, private in flows:
        family: spec.Family = 6 if ":" in addr else 4  # each family's flow is walked through its own MASQUERADE rules (iptables or ip6tables)
        if not ev.t.wan.remote_at(family):
            continue
        remote = str(ev.t.wan.remote_at(family)[0].ip)
        covered = _masq_decision(ev, addr, remote, "tcp", iif, oif)
        if covered is not None and not private:
            continue
        # Rules the walk finds matching but that did not act (the outside saw the private source)
        # hold conditions the summary does not model (a mark, a conntrack state): not this flow's.
        pkt = Pkt(addr, remote, "tcp", None, iif, oif)
        rules = [p for p in _masq_rules(ev) if (p.rule.family == 6) == (family == 6) and not matches(p.rule, pkt)]  # the other family's rules never explain it
        want = plan.masquerade_for(ev.t, name, _rename(ev), family)
        seen_note = [f"the outside world (wan:uplink) saw the private source {addr}"] if private else []
        if rules:
            shown = "; ".join(f"`{p.render()}`" for p in rules)
            values: tuple[Fix, ...] = (*(ev.delete_fix(p) for p in rules), ev.add_fix(want, rules[0].backend), *_forget(ev, addr))
            fix = " && ".join(ev.run("host", v.command()) for v in values)
            yield Finding(
                "masquerade_wrong", "host", f"host: no MASQUERADE rule matches {name}'s packets ({addr} leaving by {ev.show(oif)}): {shown} does not cover them, so they leave with the private "
                    f"source {addr} and no reply finds its way back",
                fix, (*seen_note, *ev.break_note("back")), score=90 if private else 72, fixes=values,
            )
        else:
            yield Finding(
                "masquerade_missing", "host", f"host: no MASQUERADE (or SNAT) rule covers {name}'s packets leaving by {ev.show(oif)}, so they leave with the private source {addr} and no reply "
                    f"finds its way back",
                ev.add(want), (*seen_note, *ev.break_note("back")), score=90 if private else 72, fixes=(ev.add_fix(want), *_forget(ev, addr)),
            )


def _forget(ev: Evidence, addr: str) -> tuple[FlushConntrack, ...]:
    """For a probed flow: the conntrack entries of its source go too, since NAT is decided at a flow's first packet."""
    return (FlushConntrack("host", addr),) if ev.flow is not None else ()


def _split_to(to: str | None) -> tuple[str, int | None]:
    if not to:
        return "", None
    if to.startswith("["):  # IPv6: [addr]:port
        addr, _, rest = to[1:].partition("]")
        port = rest[1:]
    elif to.count(":") > 1:  # IPv6, no port
        addr, port = to, ""
    else:
        addr, _, port = to.partition(":")
    return addr, int(port.split("-")[0]) if port else None


def _dnat_flows(ev: Evidence) -> list[Flow]:
    """The flow of the failed probe, or (doctor) one per way in to each published port and VIP of the spec."""
    if ev.flow is not None:
        return [ev.flow] if ev.flow.dnat else []
    return [access_flow(a) for a in plan.accesses(ev.t)]


def access_flow(a: plan.Access) -> Flow:
    """The flow of a way in to a published port or VIP (netcheck.lab.plan), as a TCP probe would take it."""
    return Flow(kind="tcp", proto=a.proto, source=a.source, src_addr=a.src_addr, dst_addr=a.dst_addr, dport=a.dport, expected="reach",
                target=a.target, target_addr=a.target_addr, target_port=a.target_port, via=a.via, nat_chain=a.chain)


def _in_iface(ev: Evidence, f: Flow) -> str | None:
    if f.source == "wan":
        return kname_or_none(ev.lab, ev.t.host.uplink)
    s = ev.side(f.source)
    return s.l3 if s is not None else None


def _target_at(ev: Evidence, f: Flow) -> str | None:
    """The flow's target's address of the flow's family (an IPv6 publish goes to the container's IPv6 address)."""
    c = ev.t.container(f.target) if f.target and ":" in f.dst_addr else None
    return str(c.address6.ip) if c is not None and c.address6 is not None else f.target_addr


def _spec_dnat(ev: Evidence, f: Flow, chain: str) -> XRule:
    """The spec's DNAT of the flow, to its target's address of the flow's family."""
    return plan.dnat_rule(chain, f.dst_addr, f.proto, f.dport, _target_at(ev, f), f.target_port)


def _reached(ev: Evidence, hook: str) -> set[tuple[str, str, str]]:
    """(backend, table, chain) of every chain a packet at ``hook`` walks through in a nat base chain (or by its jumps)."""
    return {(b, ch.table, name) for b, ch in ev.fw.base_chains(hook, "nat") for name in ev.fw.reachable(b, ch.table, [ch.name])}


def dnat(ev: Evidence) -> Iterator[Finding]:
    for f in _dnat_flows(ev):
        yield from _dnat_one(ev, f)


def _dnat_one(ev: Evidence, f: Flow) -> Iterator[Finding]:
    hook = "output" if f.source == "host" else "prerouting"
    iif = None if f.source == "host" else _in_iface(ev, f)
    pkt = Pkt(f.src_addr, f.dst_addr, f.proto, f.dport, iif, None)
    d = ev.fw.nat(hook, pkt)
    static = ev.result is None
    what = f"{f.dst_addr}:{f.dport}"
    chain_name = "OUTPUT" if hook == "output" else "PREROUTING"
    who = {"host": "the host's own", "wan": "the outside world's"}.get(f.source, f"{f.source}'s")
    if d is None or d.verdict != "DNAT" or d.rule is None:
        yield from _dnat_absent(ev, f, hook, pkt, what, chain_name, who, static)
        return
    if d.rule.rule.to_destination is None:
        return  # a target the rule summary cannot read: nothing to compare
    to_addr, to_port = _split_to(d.rule.rule.to_destination)
    counted = ev.counted(d.rule)
    rule_ev = [f"matched: `{d.rule.render()}`" + (f" (+{counted} packet(s) during the repeated probe)" if counted else "")]
    if to_addr and ip_address(to_addr) in LOOPBACK and hook == "prerouting":
        rl = ev.host.conf(iif, "route_localnet") if iif else 0
        if rl == 0 and f.expected != "block":
            yield Finding(
                "route_localnet_off", "host",
                f"host: {what} is DNATed to {d.rule.rule.to_destination}, but net.ipv4.conf.{ev.lab.spec_name(iif) if iif else 'all'}.route_localnet = 0, so the kernel drops the "
                    f"rewritten packet as a martian (loopback addresses may not arrive from outside)",
                ev.sysctl_fix("host", f"net.ipv4.conf.{iif or 'all'}.route_localnet", 1) + f"  (and MASQUERADE the replies, as CNI portmap does; or DNAT to {f.target_addr}:{f.target_port} instead)",
                (*rule_ev, f"route_localnet: all={ev.host.sysctl('net.ipv4.conf.all.route_localnet')}, {iif}={ev.host.sysctl(f'net.ipv4.conf.{iif}.route_localnet')}"), score=95,
                fixes=(ev.delete_fix(d.rule), ev.add_fix(replace(d.rule.rule, to_destination=f"{f.target_addr}:{f.target_port}", handle=None), d.backend, family=d.rule.family))
                if f.target_addr else (Sysctl("host", f"net.ipv4.conf.{iif or 'all'}.route_localnet", "1"),),
            )
            return
    if hook == "output" and IPv4Address(f.dst_addr) in LOOPBACK and f.expected != "block":
        s = ev.side(f.target) if f.target is not None else None
        out = s.l3 if s is not None else None
        if out is not None and ev.host.conf(out, "route_localnet") == 0:
            yield Finding(
                "localhost_publish_route_localnet_off", "host",
                f"host: {what} is DNATed by nat OUTPUT to {d.rule.rule.to_destination}, but route_localnet = 0 (all and {ev.show(out)}), so the kernel will not send "
                    f"the loopback source {f.src_addr or '127.0.0.1'} out by {ev.show(out)}, nor take the reply to 127.0.0.1 back in: a port bound to 127.0.0.1 needs it",
                ev.sysctl_fix("host", "net.ipv4.conf.all.route_localnet", 1) + "  (with the MASQUERADE of 127.0.0.0/8 out the container's side, as CNI portmap and Docker add)",
                (*rule_ev, f"route_localnet: all={ev.host.sysctl('net.ipv4.conf.all.route_localnet')}, {ev.show(out)}={ev.host.conf(out, 'route_localnet')}"), score=95,
                fixes=(Sysctl("host", "net.ipv4.conf.all.route_localnet", "1"),),
            )
            return
    if f.source == f.target and f.via == "publish" and f.target_addr and f.expected != "block":
        s = ev.side(f.source)
        side_k = s.l3 if s is not None else None
        if _masq_decision(ev, f.target_addr, f.target_addr, f.proto, side_k, side_k, f.target_port) is None:
            hairpin_rule = XRule("nat", "POSTROUTING", "MASQUERADE", src=f.target_addr, dst=f.target_addr, protocol=f.proto, dport=f.target_port)
            yield Finding(
                "hairpin_masquerade_missing", "host",
                f"host: {f.source} reaches its own published port {what}: the DNAT sends it back to {f.target_addr}:{f.target_port}, but no MASQUERADE rewrites "
                    f"{f.target_addr} -> {f.target_addr}, so it arrives with {f.source}'s own address as its source and {f.source} drops it as a martian (Docker's hairpin NAT)",
                ev.add(hairpin_rule, d.backend),
                (*rule_ev, f"no MASQUERADE in nat POSTROUTING matches {f.target_addr} -> {f.target_addr}:{f.target_port} out {ev.show(side_k)}"), score=93,
                fixes=(ev.add_fix(hairpin_rule, d.backend),),
            )
            return
        port = next((bp for bp in ev.snap.host.bridge_ports if s is not None and bp.port == s.veth_k), None)
        if port is not None and not port.hairpin:
            yield Finding(
                "hairpin_mode_off", "host",
                f"host: {f.source} reaches its own published port {what}: the DNAT sends it back to {f.target_addr}:{f.target_port} by the bridge port it came in by, "
                    f"{ev.show(port.port)}, whose hairpin mode is off, so the bridge never sends it back out there (Docker turns it on without its userland proxy)",
                ev.run("host", SetHairpin("host", port.port).command()),
                (*rule_ev, f"bridge port {ev.show(port.port)} of {ev.show(port.bridge)}: hairpin off"), score=92, fixes=(SetHairpin("host", port.port),),
            )
            return
    if f.target_addr and (to_addr != f.target_addr or (to_port is not None and f.target_port is not None and to_port != f.target_port)):
        want = f"{f.target_addr}:{f.target_port}"
        owner = next((c.name for c in ev.t.containers if c.address is not None and str(c.address.ip) == to_addr), None)
        yield Finding(
            "dnat_wrong", "host",
            f"host: {what} is DNATed to {d.rule.rule.to_destination}" + (f" ({owner})" if owner else "") + f", but the spec sends it to {f.target} at {want}",
            ev.run("host", d.rule.delete()) + " && " + ev.add(replace(d.rule.rule, to_destination=want, handle=None), d.backend, family=d.rule.family),
            tuple(rule_ev), score=72 if static else 90,
            fixes=(ev.delete_fix(d.rule), ev.add_fix(replace(d.rule.rule, to_destination=want, handle=None), d.backend, family=d.rule.family)),
        )


def _dnat_absent(ev: Evidence, f: Flow, hook: str, pkt: Pkt, what: str, chain_name: str, who: str, static: bool) -> Iterator[Finding]:
    hook_chains = _reached(ev, hook)
    pre_chains = _reached(ev, "prerouting")
    orphans = [p for p in ev.fw.rules() if p.rule.target == "DNAT" and matches(p.rule, pkt, interfaces=False)]
    orphans = [p for p in orphans if (p.backend, p.rule.table, p.rule.chain) not in hook_chains]
    for p in orphans:
        if not ev.fw.is_base(p.backend, p.rule.table, p.rule.chain):
            jumpers = ev.fw.jumps_to(p.backend, p.rule.table, p.rule.chain)
            from_where = ", ".join(sorted({j.rule.chain for j in jumpers})) or "no chain"
            yield Finding(
                "vip_not_jumped", "host",
                f"host: the chain {p.rule.chain} holds the DNAT for {what}, but nat {chain_name} does not jump to it (only {from_where} does), so {who} packets are never translated",
                ev.add(XRule(p.rule.table, chain_name, p.rule.chain), p.backend, family=p.family),
                (f"the DNAT: `{p.render()}`",), score=72 if static else 92, fixes=(ev.add_fix(XRule(p.rule.table, chain_name, p.rule.chain), p.backend, family=p.family),),
            )
            return
        if hook == "output" and (p.backend, p.rule.table, p.rule.chain) in pre_chains:
            yield Finding(
                "output_dnat_missing", "host",
                f"host: {what} is DNATed in nat PREROUTING only; traffic the host itself sends goes through nat OUTPUT, which has no DNAT for it, so the host talks to itself instead of {f.target}",
                ev.add(replace(p.rule, chain="OUTPUT", handle=None), p.backend, family=p.family),
                (f"PREROUTING has: `{p.render()}`",), score=72 if static else 92, fixes=(ev.add_fix(replace(p.rule, chain="OUTPUT", handle=None), p.backend, family=p.family),),
            )
            return
    near = _near_dnat(ev, f, pkt, hook_chains)
    if near is not None:
        p, misses, corrected = near
        values_near: tuple[Fix, ...] = (ev.delete_fix(p), AddRule("host", p.backend, corrected, p.family))
        yield Finding(
            "dnat_wrong_match", "host",
            f"host: `{p.render()}` would send {what} to {f.target}, but it matches {'; '.join(misses)}, so {who} packets pass it by untranslated",
            " && ".join(ev.run("host", v.command()) for v in values_near), (p.where(), *ev.break_note()), score=74 if static else 91, fixes=values_near,
        )
        return
    chains = " and ".join(["PREROUTING", "OUTPUT"] if f.source == "host" else ["PREROUTING"])
    values = ((ev.add_fix(_spec_dnat(ev, f, "OUTPUT")),) if f.source == "host" else ()) + (ev.add_fix(_spec_dnat(ev, f, "PREROUTING")),)
    fix = " && ".join(ev.run("host", v.command()) for v in values)
    yield Finding(
        "dnat_missing", "host",
        f"host: no DNAT rule in nat {chains} translates {what} to {f.target} ({f.target_addr}:{f.target_port}), so {who} packets stay addressed to the host" + (", where nothing "
            "answers" if f.via == "publish" else ""),
        fix, tuple(ev.break_note()), score=70 if static else 88, fixes=values,
    )


def _near_dnat(ev: Evidence, f: Flow, pkt: Pkt, hook_chains: set[tuple[str, str, str]]) -> tuple[Placed, list[str], XRule] | None:
    """A DNAT in the hook's chains meant for this flow (to the spec's target, or for its port) that misses it, the matches that miss,
    and the rule corrected to match it (in the same table and chain)."""
    want = f"{f.target_addr}:{f.target_port}"
    def what(x: XRule) -> tuple[object, ...]:  # a DNAT as the spec declares it, wherever it lives (iptables' nat, or a lab's own nft table)
        return (x.chain, x.src, x.dst, x.in_interface, x.protocol, x.dport, x.dports, x.to_destination, x.family)

    declared = {what(x) for x in plan.spec_rules(ev.t, _rename(ev)) if x.target == "DNAT"}  # another publish's own DNAT is not this flow's, mistyped
    for p in ev.fw.rules():
        r = p.rule
        if r.target != "DNAT" or (p.backend, r.table, r.chain) not in hook_chains or r.unmodelled or what(r) in declared:
            continue
        meant = r.to_destination in (want, f.target_addr) or (r.protocol == pkt.proto and r.dport == pkt.dport)
        if not meant or matches(r, pkt):
            continue
        misses = []
        corrected = replace(r, handle=None, packets=0, bytes=0)
        fixed = {"-s": {"src": None}, "-d": {"dst": pkt.dst}, "-i": {"in_interface": None}, "-p/--dport": {"protocol": pkt.proto, "dport": pkt.dport, "dports": ()}}
        for label, one, seen in (("-s", XRule(r.table, r.chain, "DNAT", src=r.src), pkt.src), ("-d", XRule(r.table, r.chain, "DNAT", dst=r.dst), pkt.dst),
                                 ("-i", XRule(r.table, r.chain, "DNAT", in_interface=r.in_interface), ev.show(pkt.iif)),
                                 ("-p/--dport", XRule(r.table, r.chain, "DNAT", protocol=r.protocol, dport=r.dport, dports=r.dports), f"{pkt.proto}/{pkt.dport}")):
            if not matches(one, pkt):
                value = {"-s": r.src, "-d": r.dst, "-i": ev.show(r.in_interface.lstrip("!")) if r.in_interface else None}.get(label) or f"{r.protocol}/{r.dport or r.dports}"
                misses.append(f"{label} {value} (the packet's: {seen})")
                corrected = replace(corrected, **fixed[label])  # type: ignore[arg-type]
        if misses:
            return p, misses, corrected
    return None


def stray_dnat(ev: Evidence) -> Iterator[Finding]:
    """A flow that must be blocked was redirected into the lab by a DNAT the spec does not declare."""
    f, r = ev.flow, ev.result
    if f is None or r is None or f.expected != "block" or r.verdict in ("unreachable", "inconclusive"):
        return
    for placed, n in ev.matched:
        if placed.rule.target != "DNAT":
            continue
        to = placed.rule.to_destination or "?"
        addr, _port = _split_to(placed.rule.to_destination)
        if addr and IPv4Address(addr) in LOOPBACK:
            continue  # the loopback case is route_localnet_exposed's
        who = r.replied_by or "a container"
        yield Finding(
            "stray_dnat", "host",
            f"host: `{placed.render()}` redirects {f.dst_addr}:{f.dport} to {to}, which the spec neither publishes nor declares as a VIP: "
            f"a flow that must be blocked reached {who}",
            ev.run("host", placed.delete()),
            (f"its counter grew by {n} during the repeated probe",), score=90, fixes=(ev.delete_fix(placed),),
        )


def route_localnet_exposed(ev: Evidence) -> Iterator[Finding]:
    f = ev.flow
    containers = {c.name for c in ev.t.containers}
    candidates: list[tuple[str | None, Placed]] = []
    for backend, base in ev.fw.base_chains("prerouting", "nat"):
        names = ev.fw.reachable(backend, base.table, [base.name])
        for p in ev.fw.rules():
            if p.backend == backend and p.rule.table == base.table and p.rule.chain in names and p.rule.target == "DNAT":
                addr, _port = _split_to(p.rule.to_destination)
                if addr and ":" not in addr and IPv4Address(addr) in LOOPBACK:
                    candidates.append((p.rule.in_interface, p))
    if not candidates:
        return
    exposed = [link.name for link in ev.host.links if link.name != "lo" and ev.host.conf(link.name, "route_localnet") == 1]
    if not exposed:
        return
    live = f is not None and f.expected == "block" and ev.result is not None and ev.result.verdict == "reached" and f.source in containers
    for _iif, p in candidates:
        yield Finding(
            "route_localnet_exposed", "host",
            f"host: route_localnet = 1 on {', '.join(ev.show(i) for i in exposed)} and `{p.render()}` send container traffic to the host's loopback: services bound to 127.0.0.1 on the host are "
                f"reachable from the containers",
            " && ".join([ev.sysctl_fix("host", f"net.ipv4.conf.{i}.route_localnet", 0) for i in exposed] + [ev.run("host", p.delete())]),
            ("a probe that must be blocked reached a loopback service",) if live else (), score=92 if live else 58,
            fixes=(*(Sysctl("host", f"net.ipv4.conf.{i}.route_localnet", "0") for i in exposed), ev.delete_fix(p)),
        )


def br_netfilter_off(ev: Evidence) -> Iterator[Finding]:
    flows: list[Flow] = []
    if ev.flow is not None:
        flows = [ev.flow] if ev.flow.dnat else []
    else:
        for fl in _dnat_flows(ev):
            if fl.source != "wan":
                continue
            for o in ev.t.containers:
                if o.name != fl.target and o.address is not None and promise.same_l2(ev.t, o.name, fl.target or ""):
                    flows.append(replace(fl, source=o.name, src_addr=str(o.address.ip)))
    for f in flows:
        s, d = ev.side(f.source), ev.side(f.target)
        if s is None or d is None or not s.bridge_k or s.bridge_k != d.bridge_k or f.target_addr is None:
            continue
        if ev.bridge_netfilter(s.bridge_k):
            continue
        if _masq_decision(ev, f.src_addr, f.target_addr, f.proto, s.bridge_k, s.bridge_k, f.target_port) is not None:
            continue
        back = ev.seen(f"{f.source}:{s.interface}", "reply")
        evidence = [f"net.bridge.bridge-nf-call-iptables = {ev.host.sysctl('net.bridge.bridge-nf-call-iptables')}", f"no MASQUERADE covers {f.src_addr} -> {f.target_addr} out {ev.show(s.bridge_k)}"]
        if back is not None:
            evidence.append(f"{f.source} got the reply from {back.src} instead of {f.dst_addr}: it crossed the bridge without being un-NATed")
        subnet = ev.t.container(f.source).address
        masq = plan.masquerade_rule(str(subnet.network) if subnet else None, s.bridge_k)
        yield Finding(
            "br_netfilter_off", "host",
            f"host: net.bridge.bridge-nf-call-iptables = 0 and {f.source} and {f.target} share {ev.show(s.bridge_k)}: the DNATed request reaches {f.target}, but the reply goes straight across "
                f"the bridge, is never un-NATed, and {f.source} drops it (the hairpin / br_netfilter trap)",
            ev.sysctl_fix("host", "net.bridge.bridge-nf-call-iptables", 1) + f"  (or MASQUERADE bridge-local traffic: {ev.add(masq)})",
            tuple(evidence), score=60 if ev.flow is None else 93, fixes=(Sysctl("host", "net.bridge.bridge-nf-call-iptables", "1"),),
        )


# ============================================================================ neighbours and special routes


BLACKHOLES = ("blackhole", "unreachable", "prohibit")


def neigh_wrong(ev: Evidence) -> Iterator[Finding]:
    """A static neighbour entry that gives an address of the lab another MAC than its holder's interface has."""
    holders = {str(a.address.ip): (label, a.interface) for label, ns in ev.snap.namespaces.items() for a in ns.addresses if a.address.ip not in LOOPBACK}
    on = ev.on_path()
    for label, ns in ev.snap.namespaces.items():
        for n in ns.neighbours:
            held = holders.get(n.address)
            if n.state != "PERMANENT" or not n.mac or held is None or held[0] == label:
                continue
            holder = ev.snap.ns(held[0])
            link = holder.link(held[1]) if holder is not None else None
            if link is None or not link.mac or link.mac.lower() == n.mac.lower():
                continue
            iface = ev.show(held[1]) if held[0] == "host" else held[1]
            yield Finding(
                "neigh_wrong", label,
                f"{label}: a static (PERMANENT) neighbour entry on {n.interface} gives {n.address} the MAC {n.mac}, but {n.address} is {held[0]}'s, on {iface} at {link.mac}: "
                "frames meant for it go to a MAC nobody has, and no ARP corrects a static entry",
                ev.run(label, DeleteNeighbour(label, n.interface, n.address).command()), (f"{label} neighbour {n.address} lladdr {n.mac} {n.state}",),
                score=91 if label in on else 60, fixes=(DeleteNeighbour(label, n.interface, n.address),),
            )


def arp_ignore(ev: Evidence) -> Iterator[Finding]:
    """The host answers no ARP (arp_ignore = 8) on an interface its containers use as their gateway."""
    on = ev.on_path()
    done: set[str] = set()
    for c in ev.t.containers:
        s = ev.side(c.name)
        if s is None or not s.l3 or s.l3 in done or ev.host.conf(s.l3, "arp_ignore") != 8:
            continue
        done.add(s.l3)
        users = [x.name for x in ev.t.containers if (ev.side(x.name) or s).l3 == s.l3]
        gw = _host_gateway(ev, c.name)
        ns = ev.snap.ns(c.name)
        neigh = next((n for n in ns.neighbours if n.address == gw), None) if ns is not None and gw else None
        values: tuple[Fix, ...] = tuple(Sysctl("host", f"net.ipv4.conf.{i}.arp_ignore", "0") for i in ("all", s.l3) if ev.host.sysctl(f"net.ipv4.conf.{i}.arp_ignore") == "8")
        if neigh is not None and neigh.state in ("FAILED", "INCOMPLETE"):
            values += (DeleteNeighbour(c.name, neigh.interface, neigh.address),)  # so that ARP starts again at once, not at its next retry
        yield Finding(
            "arp_ignore", "host",
            f"host: net.ipv4.conf.{ev.lab.spec_name(s.l3)}.arp_ignore = 8: the host answers no ARP request on {ev.show(s.l3)}, so {', '.join(users)} never resolve their gateway {gw or ''}".rstrip(),
            " && ".join(ev.run(v.netns, v.command()) for v in values), (f"{c.name} neighbour {gw}: {neigh.state if neigh else 'no entry'}",),
            score=91 if on & set(users) else 62, fixes=values,
        )


def blackhole_route(ev: Evidence) -> Iterator[Finding]:
    """The most specific route for the flow's destination, in the sender or in the routing host, is a blackhole, unreachable or prohibit route."""
    f, r = ev.flow, ev.route
    if f is None or f.proto == "arp":
        return
    target = f.target_addr if f.dnat and f.target_addr else f.dst_addr
    if ":" in target:
        return  # IPv6: its routes are read by the IPv6 rules (host_no_route and its kin)
    dst = IPv4Address(target)
    places = [f.source] if f.source in {c.name for c in ev.t.containers} else []
    if r is not None and r.routed:
        places.append("host")
    for label in places:
        ns = ev.snap.ns(label)
        covering = [x for x in (ns.routes if ns is not None else ()) if dst in x.dst]
        if not covering:
            continue
        best = max(covering, key=lambda x: x.dst.prefixlen)
        if best.kind not in BLACKHOLES:
            continue
        yield Finding(
            "blackhole_route", label, f"{label}: a {best.kind} route for {best.dst} is the most specific route to {dst}, so the kernel discards the traffic"
            + (" it forwards" if label == "host" else " it sends") + (" (and refuses it with an ICMP error)" if best.kind != "blackhole" else " silently"),
            ev.run(label, f"ip route del {best.kind} {best.dst}"), (f"{label} routes: {_routes(ns)}" if ns is not None else "",), score=94,
            fixes=(DeleteRoute(label, str(best.dst), best.kind),),
        )


_POLICY_RULE = re.compile(r"^(ip(?: -6)? rule) (\d+): ")


def blocking_policy_rule(ev: Evidence) -> Iterator[Finding]:
    """A policy rule (``ip rule``, ``ip -6 rule``) whose action is blackhole, prohibit or unreachable
    selects the probe's request or its reply where it is routed: the datapath model's walk on the state
    read back (either family) names the rule, the routes being no part of it."""
    from netcheck.diagnose import datapath

    t = datapath.probe_trace(ev)
    step = t.decided if t is not None and t.disposition in ("null-routed", "prohibited", "unreachable") else None
    m = _POLICY_RULE.match(step.by) if step is not None else None
    if t is None or step is None or m is None:
        return
    yield Finding(
        "blackhole_route", step.where, f"{step.where}: the policy rule `{step.by}` selects the probe's {'reply' if step.direction == 'reply' else 'packets'} "
        f"({step.text}), so the kernel discards what it routes, whatever its routes say",
        ev.run(step.where, f"{m.group(1)} del priority {m.group(2)}"), datapath.shown(t)[:1], score=94,
    )


# ============================================================================ services


def no_listener(ev: Evidence) -> Iterator[Finding]:
    flows = [ev.flow] if ev.flow is not None else _dnat_flows(ev)
    seen: set[tuple[str, int]] = set()
    for f in flows:
        if f is None or f.target is None or f.target_port is None or f.proto not in ("tcp", "udp") or f.expected == "block":
            continue
        if (f.target, f.target_port) in seen:
            continue
        seen.add((f.target, f.target_port))
        ns = ev.snap.ns(f.target)
        if ns is None or (not ns.routes and not ns.links):
            continue
        addr = f.target_addr or ""
        socks = [s for s in ns.listening if s.proto == f.proto and s.port == f.target_port]
        if any(s.accepts(addr) for s in socks):
            continue
        bound = ", ".join(f"{s.address}:{s.port}" for s in socks)
        rst = ev.seen(f"{f.target}:{ev.t.container(f.target).interface}", "reply")
        evidence = [f"{f.target} listens on: {', '.join(sorted({f'{s.proto}/{s.port}' for s in ns.listening})) or 'nothing'}"]
        if rst is not None and "R" in rst.info:
            evidence.append(f"{f.target} answered with a TCP reset ({rst.flow} {rst.info})")
        summary = f"{f.target}: nothing listens on {f.proto} port {f.target_port}" + (f" on {addr}; a socket is bound to {bound} only" if bound else "") + ", so the connection is refused"
        yield Finding(
            "no_listener", f.target, summary,
            f"start the service in {f.target} listening on 0.0.0.0:{f.target_port}, e.g. " + ev.run(f.target, f"python3 -m http.server {f.target_port}"),
            tuple(evidence), score=84 if ev.flow is not None else 65,
        )


# ============================================================================ the firewall as a whole


def rules_split(ev: Evidence) -> Iterator[Finding]:
    held = ev.fw.backends()
    if len(held) < 2:
        return
    parts = []
    for backend in held:
        chains = sorted({f"{t} {c}" + ("" if ch.rules else f" (policy {ch.policy})") for (b, t, c), ch in ev.fw.chains.items() if b == backend and (ch.rules or ch.policy not in (None, "ACCEPT"))})
        parts.append(f"{binary(backend)} holds {', '.join(chains)}")
    yield Finding(
        "rules_split", "host",
        "host: the firewall rules are split across both backends (" + "; ".join(parts) + "); the kernel applies both, but each tool shows only its half",
        ev.run("host", "iptables-legacy-save") + " > rules.v4, then load them into one backend: " + ev.run("host", "iptables-nft-restore") + " < rules.v4, and flush the legacy tables",
        (), score=25,
    )


# ============================================================================ the datapath model


def model_disposition(ev: Evidence) -> Iterator[Finding]:
    """The datapath model's account of the probe on the state read back: the step that decided its fate.

    Ranked below every specific cause (and so below what the kernel witness confirms): it speaks for
    faults no specific rule knows. A match the model does not model gives "unknown", never a guess.
    The diagnosis adds it after the fixes were tried (it holds none), so it is not in RULES."""
    from netcheck.diagnose import datapath

    t = datapath.probe_trace(ev)
    r = ev.repeated or ev.result
    if t is None or t.delivered or r is None or r.passed or (ev.flow is not None and ev.flow.expected != "reach"):
        return
    step = t.decided
    assert step is not None
    causes = [s for s in t.causes() if s is not step]
    why = "".join(f"; before that, {s.where}: {s.stage}: {s.text}" for s in causes)
    yield Finding(
        "model_disposition", step.where, f"{step.where}: the datapath model ends the probe at {step.stage}: {t.disposition}: {step.text}{why}",
        f"change what decided it: {step.by}" if step.by else "see the model's trace", datapath.shown(t), score=20,
    )


# Every rule, in the order they are tried (the ranking is by score, not by this order).
RULES: tuple[Rule, ...] = (
    link_down, lo_down, not_in_bridge, mtu_mismatch, path_mtu_low, extra_link, bridge_flooding,
    address_conflict, address_on_bridge_port, wrong_prefix, source_route, default_route_static, ip_forward_off, forward_drop,
    ipv6_forwarding_off, ipv6_disabled, dad_failed, dnat_to_loopback6,
    host_no_route, subnet_overlap, forwarding_off, rp_filter_strict, asymmetric_rp_filter, masquerade, dnat, stray_dnat, neigh_wrong, arp_ignore, blackhole_route,
    blocking_policy_rule, route_localnet_exposed, br_netfilter_off, no_listener, rules_split,
)


__all__ = ["RULES", "Evidence", "evaluate"]
