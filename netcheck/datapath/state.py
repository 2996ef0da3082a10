"""The two states the model traces: the one planned from a spec, and the one read back from the kernel.

``from_plan`` turns a ``netcheck.lab.plan.Plan`` (pure) into a state: every namespace, link,
address, route, sysctl, service and rule the builder will make. ``observed`` turns a
``netcheck.diagnose.state.Snapshot`` (what the kernel holds, read by the diagnosis) into one:
the same values, from netlink, sysctls, sockets and both backends' rules (one ``Ruleset``). No
second parser: rules stay the ``XRule``/``XChain`` values netcheck.kernel.xtables reads.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TYPE_CHECKING

from netcheck.datapath.values import DEFAULT_RULES, Iface, Listener, Namespace, Port, Route, State
from netcheck.diagnose.firewall import Ruleset
from netcheck.kernel.xtables import BUILTIN_CHAINS, XChain, XRule

if TYPE_CHECKING:
    from netcheck import spec
    from netcheck.diagnose.state import NsState, Snapshot
    from netcheck.lab.plan import Plan

ECHO = 7
LOOPBACK_ADDRESS = IPv4Interface("127.0.0.1/8")
DEFAULT_SYSCTLS = {"net.ipv4.ip_forward": 0, "net.bridge.bridge-nf-call-iptables": 1}  # a sandbox host's, before the spec's
PLAN_TAG = "ncplan"  # the kernel names of a planned state (expectations ask in spec names, through Plan.knames)


# ----------------------------------------------------------------------------- from the plan


@functools.lru_cache(maxsize=16)
def planned(t: spec.Topology) -> State:
    """The state a sandbox build of ``t`` will have (a pure function of the frozen spec, memoised)."""
    from netcheck.lab.plan import plan
    from netcheck.naming import KernelNames

    return from_plan(plan(t, KernelNames(PLAN_TAG)))


def planned_plan(t: spec.Topology) -> Plan:
    from netcheck.lab.plan import plan
    from netcheck.naming import KernelNames

    return plan(t, KernelNames(PLAN_TAG))


def from_plan(p: Plan) -> State:
    """The state a plan describes: host, outside world and containers, their links and routes, the rules."""
    t = p.topology
    lo = Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS,))
    host_ifaces = [lo, Iface(p.base.uplink, addresses=(p.base.host_address,), peer=("wan", p.base.wan_uplink))]
    host_ifaces += [Iface(b.kname, "bridge", addresses=(b.address,) if b.address else ()) for b in p.bridges]
    for c in p.containers:
        host_ifaces.append(Iface(c.host_veth, addresses=(c.host_address,) if c.host_address else (), port=Port(c.bridge) if c.bridge else None, peer=(c.name, c.interface)))
    host_routes = [*_connected(host_ifaces), Route(IPv4Network("0.0.0.0/0"), p.base.uplink, t.host.gateway)]
    sysctls = {**DEFAULT_SYSCTLS, **dict(t.host.sysctls)}
    host = Namespace("host", tuple(host_ifaces), tuple(host_routes), DEFAULT_RULES, tuple(sorted(sysctls.items())), (), planned_ruleset(p))

    wan_lo = Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS, *(a for i, a in p.base.wan_addresses if i == "lo")))
    wan_up = Iface(p.base.wan_uplink, addresses=tuple(a for i, a in p.base.wan_addresses if i != "lo"), peer=("host", p.base.uplink))
    wan_routes = [*_connected([wan_up]), *(_via(dst, via, [wan_up]) for dst, via in p.base.wan_routes)]
    wan_listen = [Listener("tcp", "0.0.0.0", ECHO), Listener("udp", "0.0.0.0", ECHO)]
    if t.dns is not None:
        wan_listen += [Listener("udp", str(t.dns.address), 53), Listener("tcp", str(t.dns.address), 53)]
    wan = Namespace("wan", (wan_lo, wan_up), tuple(wan_routes), sysctls=(("net.ipv4.ip_forward", 0),), listeners=tuple(wan_listen))

    containers = []
    for c in p.containers:
        own = Iface(c.interface, addresses=(c.address,), peer=("host", c.host_veth))
        routes = [*_connected([own]), *(_via(dst, via, [own]) for dst, via in c.routes)]
        services = t.container(c.name).services
        listen = [Listener(s.protocol, "0.0.0.0", s.port) for s in services] + [Listener("tcp", "0.0.0.0", ECHO), Listener("udp", "0.0.0.0", ECHO)]
        containers.append(Namespace(c.name, (Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS,)), own), tuple(routes), listeners=tuple(listen)))
    return State((host, wan, *containers), source="plan")


def planned_ruleset(p: Plan, extra: Iterable[XRule] = ()) -> Ruleset:
    """The host's rules as the builder writes them (in iptables' tables: a firewall = "nft" lab's native
    tables hold the same rules), the FORWARD policy included; ``extra`` rules go first in their chains."""
    return ruleset_of([*extra, *p.rules], {("filter", "FORWARD"): p.topology.host.forward_policy})


def ruleset_of(rules: Iterable[XRule], policies: Mapping[tuple[str, str], str] | None = None) -> Ruleset:
    """iptables rules (legacy) as a Ruleset: every built-in chain of their tables, and the user chains they name."""
    by_chain: dict[tuple[str, str], list[XRule]] = {}
    for table, names in BUILTIN_CHAINS.items():
        for name in names:
            by_chain[(table, name)] = []
    for r in rules:
        by_chain.setdefault((r.table, r.chain), []).append(r)
        if r.target not in ("ACCEPT", "DROP", "REJECT", "RETURN", "MASQUERADE", "DNAT", "SNAT") and r.target:
            by_chain.setdefault((r.table, r.target), [])
    chains = []
    for (table, name), held in by_chain.items():
        builtin = name in BUILTIN_CHAINS.get(table, ())
        chains.append(XChain(table, name, (policies or {}).get((table, name), "ACCEPT") if builtin else None, tuple(held)))
    return Ruleset.build(chains, [])


def _connected(ifaces: Iterable[Iface]) -> list[Route]:
    return [Route(a.network, i.name, src=a.ip, metric=0) for i in ifaces for a in i.addresses if i.kind != "loopback"]


def _via(dst: IPv4Network, via: IPv4Address, ifaces: Iterable[Iface]) -> Route:
    dev = next((i.name for i in ifaces for a in i.addresses if via in a.network), None)
    return Route(dst, dev, via)


# ----------------------------------------------------------------------------- from the kernel


def observed(snap: Snapshot, peers: Mapping[tuple[str, str], tuple[str, str]] | None = None) -> State:
    """The state a kernel snapshot shows. ``peers`` pairs veth ends across namespaces ((label, link)
    both ways); without it, ends are paired by their peer indexes."""
    pairs = dict(peers) if peers is not None else _pair_by_index(snap)
    ports = {p.port: p for p in snap.host.bridge_ports}
    namespaces = []
    for label, ns in snap.namespaces.items():
        host = label == "host"
        ifaces = []
        for link in ns.links:
            kind = "loopback" if link.name == "lo" else link.kind if link.kind in ("veth", "bridge") else link.kind
            port = None
            if host and link.name in ports:
                bp = ports[link.name]
                port = Port(bp.bridge, bp.state, bp.isolated, bp.learning)
            opts = snap.host.bridge(link.name) if host and link.kind == "bridge" else None
            ifaces.append(Iface(link.name, kind, link.up, tuple(a.address for a in ns.addrs(link.name)), port, pairs.get((label, link.name)),
                                bool(opts and opts.nf_call_iptables)))
        entries = ns.all_routes or ns.routes
        routes = tuple(Route(r.dst, r.interface, r.gateway, r.kind, r.table, r.metric, r.prefsrc) for r in entries)
        listeners: tuple[Listener, ...] | None = tuple(Listener(s.proto, s.address, s.port) for s in ns.listening) if ns.routes or ns.listening else None
        namespaces.append(Namespace(
            label, tuple(ifaces), routes, ns.ip_rules or DEFAULT_RULES, _sysctls(ns), listeners,
            snap.host.ruleset if host else None, _unread(snap.host.legacy_tables) if host else (),
        ))
    return State(tuple(namespaces), source="kernel")


def _sysctls(ns: NsState) -> tuple[tuple[str, int], ...]:
    out = []
    for k, v in ns.sysctls.items():
        if v not in (None, "") and str(v).lstrip("-").isdigit():
            out.append((k, int(str(v))))
    return tuple(sorted(out))


def _unread(legacy: Iterable[str]) -> tuple[str, ...]:
    """Legacy tables the diagnosis does not read (it reads filter and nat): the model says "unknown" at their hooks."""
    return tuple(f"legacy {t}" for t in legacy if t in ("raw", "mangle", "security"))


def _pair_by_index(snap: Snapshot) -> dict[tuple[str, str], tuple[str, str]]:
    """Veth ends paired by peer indexes (each names the other's index), preferring a pair with the host."""
    ends = [(label, link) for label, ns in snap.namespaces.items() for link in ns.links if link.kind == "veth" and link.peer_index is not None]
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for label, link in sorted(ends, key=lambda e: e[0] != "host"):
        if (label, link.name) in out:
            continue
        for other_label, other in ends:
            if other_label != label and other.index == link.peer_index and other.peer_index == link.index and (other_label, other.name) not in out:
                out[(label, link.name)] = (other_label, other.name)
                out[(other_label, other.name)] = (label, link.name)
                break
    return out


__all__ = ["from_plan", "observed", "planned", "planned_plan", "planned_ruleset", "ruleset_of"]
