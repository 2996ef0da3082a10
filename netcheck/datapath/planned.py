"""The plan's pure half: what a sandbox lab of a spec is made of (kernel names, links, addresses, routes,
the rules the builder writes), and the state the datapath model traces on it (``planned``).

It sits below netcheck.expect, which answers every expectation with the model on ``planned``, and
below netcheck.lab.plan, whose port matrix and flows read those answers (plan.py re-exports every
name here, so ``from netcheck.lab.plan import planned`` still works).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address

from netcheck import resolvconf, spec
from netcheck.datapath import model
from netcheck.datapath.firewall import Ruleset
from netcheck.datapath.values import DEFAULT_RULES, Flow, Iface, Listener, Namespace, Port, Route, State, Trace
from netcheck.kernel.xtables import BUILTIN_CHAINS, XChain, XRule
from netcheck.naming import KernelNames

DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")
DEFAULT_ROUTE6 = IPv6Network("::/0")
ECHO_PORT = 7  # netcheck's own TCP and UDP echo responders, in every container and the outside world
LOOPBACK_ADDRESS = IPv4Interface("127.0.0.1/8")
LOOPBACK_ADDRESS6 = IPv6Interface("::1/128")
DEFAULT_SYSCTLS = {"net.ipv4.ip_forward": 0, "net.bridge.bridge-nf-call-iptables": 1, "net.ipv6.conf.all.forwarding": 0,
                   "net.bridge.bridge-nf-call-ip6tables": 1}  # a sandbox host's, before the spec's
PLAN_TAG = "ncplan"  # the kernel names of a planned state
Rename = Callable[[str], str]  # a spec interface name -> the kernel's


@dataclass(frozen=True)
class BasePlan:
    """The host, the outside world and the uplink between them: every lab has them, whoever makes its network."""

    host_ns: str
    wan_ns: str
    uplink: str  # the host's end, kernel name
    wan_uplink: str  # the outside world's end
    host_address: IPv4Interface
    wan_addresses: tuple[tuple[str, spec.IPIface], ...]  # (interface, address): the uplink's, then the remote ones on lo (IPv6 ones after)
    wan_routes: tuple[tuple[spec.IPNet, spec.IPAddr], ...]
    host_addresses6: tuple[tuple[str, spec.IPIface], ...] = ()  # dual stack: the uplink's IPv6 address


@dataclass(frozen=True)
class BridgePlan:
    name: str  # spec name
    kname: str  # kernel name
    address: IPv4Interface | None
    address6: spec.IPIface | None = None


@dataclass(frozen=True)
class ContainerPlan:
    """One container: its namespace, its veth (host end in kernel names), address and routes."""

    name: str
    netns: str
    interface: str
    address: IPv4Interface
    host_veth: str  # kernel name
    bridge: str | None  # kernel name of the bridge its veth is a port of
    host_address: IPv4Interface | None  # routed single veth: the host end's address
    mtu: int | None
    routes: tuple[tuple[spec.IPNet, spec.IPAddr], ...]  # (dst, via), the default routes first (IPv4's, then IPv6's)
    resolv_conf: str | None = None  # the text of its /etc/netns/NETNS/resolv.conf; None: it has none of its own
    hairpin: bool = False  # its bridge port in hairpin mode: it reaches its own published port (a hairpin = true publish)
    address6: spec.IPIface | None = None  # dual stack


@dataclass(frozen=True)
class Plan:
    """Everything a sandbox lab of one topology is made of, in kernel names."""

    topology: spec.Topology
    names: KernelNames
    base: BasePlan
    knames: Mapping[str, str]  # spec name -> kernel name of every host-side interface
    bridges: tuple[BridgePlan, ...]
    containers: tuple[ContainerPlan, ...]
    rules: tuple[XRule, ...]  # what the builder writes, in iptables' tables (nat, filter)

    @property
    def installed(self) -> tuple[XRule, ...]:
        """The rules as they read back from the kernel: with ``firewall = "nft"``, in the lab's own nft tables."""
        if self.topology.host.firewall != "nft":
            return self.rules
        from netcheck.kernel import nft

        return tuple(nft.native(self.names.tag, r) for r in self.rules)

    def kname(self, spec_iface: str) -> str:
        return self.knames[spec_iface]


def plan(t: spec.Topology, names: KernelNames) -> Plan:
    """The plan of a sandbox build of ``t`` with ``names``."""
    knames = names.host_interfaces(t)
    bridges = tuple(BridgePlan(b.name, knames[b.name], b.address, b.address6) for b in t.bridges)
    containers = []
    for c in t.containers:
        if c.address is None:
            raise ValueError(f"{t.source}: container {c.name} has no address: only setups made by other tools may leave it 'auto'")
        routes: tuple[tuple[spec.IPNet, spec.IPAddr], ...] = ((DEFAULT_ROUTE, c.gateway),) if c.gateway is not None else ()
        if c.address6 is not None and c.gateway6 is not None:
            routes += ((DEFAULT_ROUTE6, c.gateway6),)
        containers.append(ContainerPlan(
            c.name, names.container_ns(c.name), c.interface, c.address, knames[c.host_veth], knames[c.bridge] if c.bridge else None,
            c.host_address, c.mtu, routes + tuple((r.to, r.via) for r in c.routes), resolv_conf_text(c),
            any(p.hairpin and p.container == c.name for p in t.publishes), c.address6,
        ))
    return Plan(t, names, base(t, names), knames, bridges, tuple(containers), spec_rules(t, knames.__getitem__, names.comment))


def base(t: spec.Topology, names: KernelNames) -> BasePlan:
    """The plan of a lab's base (the sandbox's, or a real host's with netcheck's outside world)."""
    remote: tuple[tuple[str, spec.IPIface], ...] = tuple(("lo", IPv4Interface(f"{r.ip}/32")) for r in t.wan.remote)
    held = {str(r.ip) for r in t.wan.remote} | {str(t.wan.address.ip)}
    if t.dns is not None and str(t.dns.address) not in held:
        remote = (*remote, ("lo", IPv4Interface(f"{t.dns.address}/32")))  # netcheck's DNS server in the outside world
    if t.wan.address6 is not None:
        remote = (*remote, (names.wan_uplink, t.wan.address6), *(("lo", r) for r in t.wan.remote6))
    host6: tuple[tuple[str, spec.IPIface], ...] = ((names.uplink, t.host.address6),) if t.host.address6 is not None else ()
    return BasePlan(names.host_ns, names.wan_ns, names.uplink, names.wan_uplink, t.host.address, ((names.wan_uplink, t.wan.address), *remote),
                    tuple((r.to, r.via) for r in t.wan.routes), host6)


def owned_routes(t: spec.Topology) -> list[IPv4Network]:
    """On a real host, the destinations routed into netcheck's outside world: its remote addresses, the VIPs and the DNS server."""
    dns = {IPv4Network(f"{t.dns.address}/32")} if t.dns is not None else set()
    return sorted({r.network for r in t.wan.remote} | {IPv4Network(f"{v.address}/32") for v in t.vips} | dns)


def host_side(t: spec.Topology, container: str) -> str:
    """The host interface (spec name) a container's traffic enters the host by."""
    c = t.container(container)
    return c.bridge or c.host_veth


def resolv_conf_text(c: spec.Container) -> str | None:
    """The resolv.conf a container's spec declares (``dns = [...]``); None for none or "inherit"."""
    if c.dns is None or isinstance(c.dns, str):
        return None
    return resolvconf.render([str(a) for a in c.dns], c.search)


# ----------------------------------------------------------------------------- rules


def masquerade_rule(source: str | None, out: str | None = None, not_out: str | None = None, comment: str | None = None) -> XRule:
    """``-t nat -A POSTROUTING [-s SOURCE] [-o OUT | ! -o NOT_OUT] -j MASQUERADE``; interfaces as given."""
    return XRule("nat", "POSTROUTING", "MASQUERADE", src=source, out_interface=out or (f"!{not_out}" if not_out else None), comment=comment)


def dnat_rule(chain: str, dst: str, proto: str, dport: int | None, to_addr: str | None, to_port: int | None, comment: str | None = None,
              family: int | None = None) -> XRule:
    """``-t nat -A CHAIN -d DST -p PROTO --dport DPORT -j DNAT --to-destination TO[:PORT]`` (IPv6: ``[TO]:PORT``, in ip6tables).
    ``family`` None: the family of ``dst``."""
    if family is None:
        family = ip_address(dst).version
    shown = f"[{to_addr}]" if family == 6 and to_port else str(to_addr)
    to = f"{shown}:{to_port}" if to_port else str(to_addr)
    return XRule("nat", chain, "DNAT", dst=dst, protocol=proto, dport=dport, to_destination=to, comment=comment, family=6 if family == 6 else None)


def spec_masquerade(m: spec.Masquerade, rename: Rename, comment: str | None = None) -> XRule:
    out = rename(m.out_interface) if m.out_interface else None
    not_out = rename(m.not_out_interface) if m.not_out_interface else None
    rule = masquerade_rule(str(m.source) if m.source else None, out, not_out, comment)
    return replace(rule, family=m.family) if m.family == 6 else rule


def spec_rules(t: spec.Topology, rename: Rename, comment: str | None = None) -> tuple[XRule, ...]:
    """The spec's iptables rules, interfaces renamed by ``rename``, in the order the builder installs them."""
    rules: list[XRule] = []
    for family in t.families:  # a FORWARD accept between interfaces holds for every family (ip6tables too, on a dual-stack host)
        for f in t.forward_accepts:
            rules.append(XRule("filter", "FORWARD", "ACCEPT", in_interface=rename(f.in_interface) if f.in_interface else None,
                               out_interface=rename(f.out_interface) if f.out_interface else None, comment=comment, family=6 if family == 6 else None))
    rules += [spec_masquerade(m, rename, comment) for m in t.masquerades]
    for family in t.families:  # a port is published on every family its container and the host have an address of
        for p in t.publishes:
            rules += [r for r in publish_rules(t, p, rename, comment, family) if r not in rules]  # one localhost MASQUERADE for every 127.0.0.1 publish of a bridge
    for v in t.vips:
        rules.append(dnat_rule(v.chain, str(v.address), v.protocol, v.port, _address(t, v.container), v.target_port, comment))
        rules += [XRule("nat", chain, v.chain, comment=comment) for chain, on in (("PREROUTING", v.from_outside), ("OUTPUT", v.from_host)) if on]
    for v in t.vips:
        if v.address6 is not None and _address(t, v.container, 6) is not None:
            rules.append(dnat_rule(v.chain, str(v.address6), v.protocol, v.port, _address(t, v.container, 6), v.target_port, comment, 6))
            rules += [XRule("nat", chain, v.chain, comment=comment, family=6) for chain, on in (("PREROUTING", v.from_outside), ("OUTPUT", v.from_host)) if on]
    return tuple(rules)


def bound_addresses(t: spec.Topology, p: spec.Publish, family: spec.Family = 4) -> tuple[IPv4Address | IPv6Address, ...]:
    """The host addresses of ``family`` a published port is DNATed from: the uplink's (none given), every one the host holds of the
    family (the wildcard), or the one given."""
    if p.host_address is None:
        up = t.host.at(family)
        return (up.ip,) if up is not None else ()
    if p.host_address.version != family:
        return ()
    if p.wildcard:
        return spec.host_addresses(t, family)
    return (p.host_address,)


def publish_rules(t: spec.Topology, p: spec.Publish, rename: Rename, comment: str | None = None, family: spec.Family = 4) -> list[XRule]:
    """A published port's rules for one family, as Docker (without its userland proxy) writes them: a DNAT per bound address and per
    port of the range, in nat PREROUTING (from outside) and OUTPUT (from the host); the hairpin MASQUERADE (-s C -d C) that lets the
    container reach its own published port; and for a port bound to 127.0.0.1, the MASQUERADE of 127.0.0.0/8 out the container's side
    (CNI portmap's), so its replies come back to the host."""
    to = _address(t, p.container, family)
    bound = bound_addresses(t, p, family)
    if (to is None and family == 6) or not bound:
        return []  # not published on this family
    six = 6 if family == 6 else None
    rules = [dnat_rule(chain, str(dst), p.protocol, port, to, p.container_port(port), comment, family)
             for chain, on in (("PREROUTING", p.from_outside), ("OUTPUT", p.from_host)) if on for dst in bound for port in p.host_ports]
    if p.hairpin and to is not None:
        rules += [XRule("nat", "POSTROUTING", "MASQUERADE", src=to, dst=to, protocol=p.protocol, dport=p.container_port(port), comment=comment, family=six)
                  for port in p.host_ports]
    if p.loopback and p.host_address is not None and p.host_address.version == 4 and family == 4:
        rules.append(masquerade_rule("127.0.0.0/8", rename(host_side(t, p.container)), comment=comment))
    return rules


def published_at(t: spec.Topology, dst: str, port: int | None, proto: str) -> tuple[spec.Publish, int] | None:
    """The published port a packet to dst:port of ``proto`` hits, and the container port it goes to (None: none)."""
    for p in t.publishes:
        bound = {str(a) for family in t.families for a in bound_addresses(t, p, family)}
        if p.protocol == proto and port is not None and port in p.host_ports and dst in bound:
            return p, p.container_port(port)
    return None


def masquerade_for(t: spec.Topology, container: str, rename: Rename, family: spec.Family = 4) -> XRule:
    """The MASQUERADE rule the spec declares for a container's traffic (of one family), or (none
    declared) the usual one: its network, out by the uplink."""
    c = t.container(container)
    address = c.at(family)
    for m in t.masquerades:
        if m.family != family:
            continue
        if address is not None and m.source is not None and address.ip not in m.source:
            continue
        return spec_masquerade(m, rename)
    rule = masquerade_rule(str(address.network) if address is not None else None, rename(t.host.uplink))
    return replace(rule, family=family) if family == 6 else rule


def _address(t: spec.Topology, container: str, family: spec.Family = 4) -> str | None:
    address = t.container(container).at(family)
    return str(address.ip) if address is not None else None


# ----------------------------------------------------------------------------- the planned state (what the datapath model traces)


def planned(t: spec.Topology) -> State:
    """The state a sandbox build of ``t`` will have (a pure function of the frozen spec, memoised while ``t`` lives)."""
    return _memo(t)[1]


def planned_plan(t: spec.Topology) -> Plan:
    """The plan of ``t`` in the planned state's kernel names (memoised; expectations ask in spec names, through ``knames``)."""
    return _memo(t)[0]


def planned_trace(t: spec.Topology, flow: Flow) -> Trace:
    """The model's trace of ``flow`` on the planned state of ``t`` (memoised with it: the suites, the port matrix and the report
    ask the same questions)."""
    traces = _memo_of(t)[3]
    held = traces.get(flow)
    if held is None:
        held = traces[flow] = model.trace(planned(t), flow)
    return held


_MEMO: dict[int, tuple[weakref.ref[spec.Topology], Plan, State, dict[Flow, Trace]]] = {}  # id(topology) -> its plan, state and traces; by identity (hashing a big spec costs more than a trace)


def _memo(t: spec.Topology) -> tuple[Plan, State]:
    held = _memo_of(t)
    return held[1], held[2]


def _memo_of(t: spec.Topology) -> tuple[weakref.ref[spec.Topology], Plan, State, dict[Flow, Trace]]:
    held = _MEMO.get(id(t))
    if held is None or held[0]() is not t:
        p = plan(t, KernelNames(PLAN_TAG))
        held = (weakref.ref(t), p, state(p), {})
        _MEMO[id(t)] = held
        weakref.finalize(t, _MEMO.pop, id(t), None)
    return held


def delivered(t: spec.Topology, source: str, dst: object, proto: str = "icmp", port: int | None = None) -> bool:
    """Does the datapath model deliver a flow (and its reply) on the planned state of ``t``?"""
    return planned_trace(t, Flow(source, str(dst), proto, port)).delivered


def state(p: Plan) -> State:
    """The state a plan describes: host, outside world and containers, their links, addresses and routes of both families, the rules."""
    t = p.topology
    lo = Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS, LOOPBACK_ADDRESS6))
    uplink = (p.base.host_address, *(a for _i, a in p.base.host_addresses6))
    host_ifaces = [lo, Iface(p.base.uplink, addresses=uplink, peer=("wan", p.base.wan_uplink))]
    host_ifaces += [Iface(b.kname, "bridge", addresses=tuple(a for a in (b.address, b.address6) if a is not None)) for b in p.bridges]
    for c in p.containers:
        host_ifaces.append(Iface(c.host_veth, addresses=(c.host_address,) if c.host_address else (), port=Port(c.bridge, hairpin=c.hairpin) if c.bridge else None,
                                 peer=(c.name, c.interface)))
    host_routes = [*_connected(host_ifaces), Route(DEFAULT_ROUTE, p.base.uplink, t.host.gateway)]
    if t.host.address6 is not None and t.host.gateway6 is not None:
        host_routes.append(Route(DEFAULT_ROUTE6, p.base.uplink, t.host.gateway6))
    sysctls = {**DEFAULT_SYSCTLS, **dict(t.host.sysctls)}
    host = Namespace("host", tuple(host_ifaces), tuple(host_routes), DEFAULT_RULES, tuple(sorted(sysctls.items())), (), planned_ruleset(p))

    wan_lo = Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS, LOOPBACK_ADDRESS6, *(a for i, a in p.base.wan_addresses if i == "lo")))
    wan_up = Iface(p.base.wan_uplink, addresses=tuple(a for i, a in p.base.wan_addresses if i != "lo"), peer=("host", p.base.uplink))
    wan_routes = [*_connected([wan_up]), *(_via(dst, via, [wan_up]) for dst, via in p.base.wan_routes)]
    wan_listen = [Listener("tcp", "::", ECHO_PORT), Listener("udp", "::", ECHO_PORT)]
    if t.dns is not None:
        wan_listen += [Listener("udp", str(t.dns.address), 53), Listener("tcp", str(t.dns.address), 53)]
    wan = Namespace("wan", (wan_lo, wan_up), tuple(wan_routes), sysctls=(("net.ipv4.ip_forward", 0), ("net.ipv6.conf.all.forwarding", 0)), listeners=tuple(wan_listen))

    containers = []
    for c in p.containers:
        own = Iface(c.interface, addresses=tuple(a for a in (c.address, c.address6) if a is not None), peer=("host", c.host_veth))
        routes = [*_connected([own]), *(_via(dst, via, [own]) for dst, via in c.routes)]
        services = t.container(c.name).services
        listen = [Listener(s.protocol, "::", s.port) for s in services] + [Listener("tcp", "::", ECHO_PORT), Listener("udp", "::", ECHO_PORT)]
        containers.append(Namespace(c.name, (Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS, LOOPBACK_ADDRESS6)), own), tuple(routes), listeners=tuple(listen)))
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
    chains: list[XChain] = []
    six: list[XChain] = []  # ip6tables': the family-6 rules; the policies too where it holds rules (as the builder writes them, netcheck.kernel.xtables.apply_rules)
    any_six = any(r.family == 6 for held in by_chain.values() for r in held)
    for (table, name), held in by_chain.items():
        builtin = name in BUILTIN_CHAINS.get(table, ())
        policy = (policies or {}).get((table, name), "ACCEPT") if builtin else None
        chains.append(XChain(table, name, policy, tuple(r for r in held if r.family != 6)))
        six.append(XChain(table, name, policy if any_six else "ACCEPT" if builtin else None, tuple(r for r in held if r.family == 6)))
    return Ruleset.build(chains, [], six)


def _connected(ifaces: Iterable[Iface]) -> list[Route]:
    return [Route(a.network, i.name, src=a.ip, metric=0) for i in ifaces for a in i.addresses if i.kind != "loopback"]


def _via(dst: spec.IPNet, via: spec.IPAddr, ifaces: Iterable[Iface]) -> Route:
    dev = next((i.name for i in ifaces for a in i.addresses if via in a.network), None)
    return Route(dst, dev, via)



__all__ = [
    "DEFAULT_ROUTE",
    "DEFAULT_ROUTE6",
    "ECHO_PORT",
    "LOOPBACK_ADDRESS",
    "LOOPBACK_ADDRESS6",
    "DEFAULT_SYSCTLS",
    "PLAN_TAG",
    "Rename",
    "BasePlan",
    "BridgePlan",
    "ContainerPlan",
    "Plan",
    "plan",
    "base",
    "owned_routes",
    "host_side",
    "resolv_conf_text",
    "masquerade_rule",
    "dnat_rule",
    "spec_masquerade",
    "spec_rules",
    "bound_addresses",
    "publish_rules",
    "published_at",
    "masquerade_for",
    "planned",
    "planned_trace",
    "planned_plan",
    "delivered",
    "state",
    "planned_ruleset",
    "ruleset_of",
]
