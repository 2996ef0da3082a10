"""The plan: a pure function from a spec and the lab's kernel names to what the lab is made of.

Nothing here touches the kernel. The builder realises a plan; the diagnosis, the doctor and
the diagram read the same functions, so the rules and the flows a spec implies are worked out
in one place::

    >>> from netcheck import spec
    >>> from netcheck.naming import KernelNames
    >>> p = plan(spec.builtin("seed1"), KernelNames("nck7q0"))
    >>> p.bridges[0].kname, p.containers[0].netns
    ('nck7q0b0', 'nck7q0-netns0')
    >>> p.rules[0].render()
    "-t nat -A POSTROUTING -s 172.18.0.0/16 ! -o nck7q0b0 -m comment --comment 'netcheck nck7q0' -j MASQUERADE"
    >>> plan(spec.builtin("seed1-nft"), KernelNames("nck7q0")).installed[0].table
    'nck7q0_nat'
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from netcheck import resolvconf, spec
from netcheck.datapath import model
from netcheck.datapath.firewall import Ruleset
from netcheck.datapath.values import DEFAULT_RULES, Flow, Iface, Listener, Namespace, Port, Route, State
from netcheck.kernel.xtables import BUILTIN_CHAINS, XChain, XRule
from netcheck.naming import KernelNames

DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")
ECHO_PORT = 7  # netcheck's own TCP and UDP echo responders, in every container and the outside world
LOOPBACK_ADDRESS = IPv4Interface("127.0.0.1/8")
DEFAULT_SYSCTLS = {"net.ipv4.ip_forward": 0, "net.bridge.bridge-nf-call-iptables": 1}  # a sandbox host's, before the spec's
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
    wan_addresses: tuple[tuple[str, IPv4Interface], ...]  # (interface, address): the uplink's, then the remote ones on lo
    wan_routes: tuple[tuple[IPv4Network, IPv4Address], ...]


@dataclass(frozen=True)
class BridgePlan:
    name: str  # spec name
    kname: str  # kernel name
    address: IPv4Interface | None


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
    routes: tuple[tuple[IPv4Network, IPv4Address], ...]  # (dst, via), the default route first
    resolv_conf: str | None = None  # the text of its /etc/netns/NETNS/resolv.conf; None: it has none of its own


@dataclass(frozen=True)
class Access:
    """One way in to a published port or a VIP that the spec promises: who sends, to what, and
    which container should answer on which port after the DNAT."""

    source: Literal["wan", "host"]
    src_addr: str
    dst_addr: str
    dport: int
    proto: str
    target: str
    target_addr: str | None
    target_port: int
    via: Literal["publish", "vip"]
    chain: str | None = None  # the VIP's chain


@dataclass(frozen=True)
class Reach:
    """An ICMP flow the spec promises: a container to its gateway, the outside, or a neighbour."""

    source: str
    src_addr: str
    dst_addr: str
    via: Literal["host", "outside", "direct"]
    target: str | None = None
    target_addr: str | None = None


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
    bridges = tuple(BridgePlan(b.name, knames[b.name], b.address) for b in t.bridges)
    containers = []
    for c in t.containers:
        if c.address is None:
            raise ValueError(f"{t.source}: container {c.name} has no address: only setups made by other tools may leave it 'auto'")
        routes = ((DEFAULT_ROUTE, c.gateway),) if c.gateway is not None else ()
        containers.append(ContainerPlan(
            c.name, names.container_ns(c.name), c.interface, c.address, knames[c.host_veth], knames[c.bridge] if c.bridge else None,
            c.host_address, c.mtu, routes + tuple((r.to, r.via) for r in c.routes), resolv_conf_text(c),
        ))
    return Plan(t, names, base(t, names), knames, bridges, tuple(containers), spec_rules(t, knames.__getitem__, names.comment))


def base(t: spec.Topology, names: KernelNames) -> BasePlan:
    """The plan of a lab's base (the sandbox's, or a real host's with netcheck's outside world)."""
    remote = tuple(("lo", IPv4Interface(f"{r.ip}/32")) for r in t.wan.remote)
    held = {str(r.ip) for r in t.wan.remote} | {str(t.wan.address.ip)}
    if t.dns is not None and str(t.dns.address) not in held:
        remote = (*remote, ("lo", IPv4Interface(f"{t.dns.address}/32")))  # netcheck's DNS server in the outside world
    return BasePlan(names.host_ns, names.wan_ns, names.uplink, names.wan_uplink, t.host.address, ((names.wan_uplink, t.wan.address), *remote),
                    tuple((r.to, r.via) for r in t.wan.routes))


def owned_routes(t: spec.Topology) -> list[IPv4Network]:
    """On a real host, the destinations routed into netcheck's outside world: its remote addresses, the VIPs and the DNS server."""
    dns = {IPv4Network(f"{t.dns.address}/32")} if t.dns is not None else set()
    return sorted({r.network for r in t.wan.remote} | {IPv4Network(f"{v.address}/32") for v in t.vips} | dns)


def resolv_conf_text(c: spec.Container) -> str | None:
    """The resolv.conf a container's spec declares (``dns = [...]``); None for none or "inherit"."""
    if c.dns is None or isinstance(c.dns, str):
        return None
    return resolvconf.render([str(a) for a in c.dns], c.search)


# ----------------------------------------------------------------------------- rules


def masquerade_rule(source: str | None, out: str | None = None, not_out: str | None = None, comment: str | None = None) -> XRule:
    """``-t nat -A POSTROUTING [-s SOURCE] [-o OUT | ! -o NOT_OUT] -j MASQUERADE``; interfaces as given."""
    return XRule("nat", "POSTROUTING", "MASQUERADE", src=source, out_interface=out or (f"!{not_out}" if not_out else None), comment=comment)


def dnat_rule(chain: str, dst: str, proto: str, dport: int | None, to_addr: str | None, to_port: int | None, comment: str | None = None) -> XRule:
    """``-t nat -A CHAIN -d DST -p PROTO --dport DPORT -j DNAT --to-destination TO[:PORT]``."""
    to = f"{to_addr}:{to_port}" if to_port else str(to_addr)
    return XRule("nat", chain, "DNAT", dst=dst, protocol=proto, dport=dport, to_destination=to, comment=comment)


def spec_masquerade(m: spec.Masquerade, rename: Rename, comment: str | None = None) -> XRule:
    out = rename(m.out_interface) if m.out_interface else None
    not_out = rename(m.not_out_interface) if m.not_out_interface else None
    return masquerade_rule(str(m.source) if m.source else None, out, not_out, comment)


def spec_rules(t: spec.Topology, rename: Rename, comment: str | None = None) -> tuple[XRule, ...]:
    """The spec's iptables rules, interfaces renamed by ``rename``, in the order the builder installs them."""
    rules: list[XRule] = []
    for f in t.forward_accepts:
        rules.append(XRule("filter", "FORWARD", "ACCEPT", in_interface=rename(f.in_interface) if f.in_interface else None,
                           out_interface=rename(f.out_interface) if f.out_interface else None, comment=comment))
    rules += [spec_masquerade(m, rename, comment) for m in t.masquerades]
    host_ip = str(t.host.address.ip)
    for p in t.publishes:
        to = _address(t, p.container)
        rules += [dnat_rule(chain, host_ip, p.protocol, p.host_port, to, p.port, comment) for chain, on in (("PREROUTING", p.from_outside), ("OUTPUT", p.from_host)) if on]
    for v in t.vips:
        rules.append(dnat_rule(v.chain, str(v.address), v.protocol, v.port, _address(t, v.container), v.target_port, comment))
        rules += [XRule("nat", chain, v.chain, comment=comment) for chain, on in (("PREROUTING", v.from_outside), ("OUTPUT", v.from_host)) if on]
    return tuple(rules)


def masquerade_for(t: spec.Topology, container: str, rename: Rename) -> XRule:
    """The MASQUERADE rule the spec declares for a container's traffic, or (none declared) the
    usual one: its network, out by the uplink."""
    c = t.container(container)
    for m in t.masquerades:
        if c.address is not None and m.source is not None and c.address.ip not in m.source:
            continue
        return spec_masquerade(m, rename)
    return masquerade_rule(str(c.address.network) if c.address is not None else None, rename(t.host.uplink))


def _address(t: spec.Topology, container: str) -> str | None:
    c = t.container(container)
    return str(c.address.ip) if c.address is not None else None


# ----------------------------------------------------------------------------- flows


def accesses(t: spec.Topology) -> tuple[Access, ...]:
    """Every way in to a published port or a VIP: from the outside world and from the host."""
    senders = {"wan": str(t.wan.address.ip), "host": str(t.host.address.ip)}
    out: list[Access] = []
    for p in t.publishes:
        for src in _ways(p.from_outside, p.from_host):
            out.append(Access(src, senders[src], str(t.host.address.ip), p.host_port, p.protocol, p.container, _address(t, p.container), p.port, "publish"))
    for v in t.vips:
        for src in _ways(v.from_outside, v.from_host):
            out.append(Access(src, senders[src], str(v.address), v.port, v.protocol, v.container, _address(t, v.container), v.target_port, "vip", v.chain))
    return tuple(out)


def _ways(from_outside: bool, from_host: bool) -> list[Literal["wan", "host"]]:
    ways: list[Literal["wan", "host"]] = []
    if from_outside:
        ways.append("wan")
    if from_host:
        ways.append("host")
    return ways


def reaches(t: spec.Topology) -> tuple[Reach, ...]:
    """The ICMP flows the spec promises, as the suites would probe them: each container to its
    gateway and to the outside world, and to one neighbour per network it should reach (not
    every pair: a fault between two networks shows on any pair of them), as the datapath model traces them on the planned state."""
    out: list[Reach] = []
    for i, c in enumerate(t.containers):
        if c.address is None:
            continue
        a = str(c.address.ip)
        if c.gateway is not None:
            out.append(Reach(c.name, a, str(c.gateway), "host"))
        if t.wan.remote and delivered(t, c.name, t.wan.remote[0].ip):
            out.append(Reach(c.name, a, str(t.wan.remote[0].ip), "outside"))
        networks: set[str] = set()
        for o in t.containers[i + 1 :] + t.containers[:i]:
            net = o.bridge or f"veth:{o.name}"
            if net in networks or o.address is None or not delivered(t, c.name, o.address.ip):
                continue
            networks.add(net)
            out.append(Reach(c.name, a, str(o.address.ip), "direct", o.name, str(o.address.ip)))
    return tuple(out)


# ----------------------------------------------------------------------------- the planned state (what the datapath model traces)


def planned(t: spec.Topology) -> State:
    """The state a sandbox build of ``t`` will have (a pure function of the frozen spec, memoised while ``t`` lives)."""
    return _memo(t)[1]


def planned_plan(t: spec.Topology) -> Plan:
    """The plan of ``t`` in the planned state's kernel names (memoised; expectations ask in spec names, through ``knames``)."""
    return _memo(t)[0]


_MEMO: dict[int, tuple[weakref.ref[spec.Topology], Plan, State]] = {}  # id(topology) -> its plan and state; by identity (hashing a big spec costs more than a trace)


def _memo(t: spec.Topology) -> tuple[Plan, State]:
    held = _MEMO.get(id(t))
    if held is None or held[0]() is not t:
        p = plan(t, KernelNames(PLAN_TAG))
        held = (weakref.ref(t), p, state(p))
        _MEMO[id(t)] = held
        weakref.finalize(t, _MEMO.pop, id(t), None)
    return held[1], held[2]


def delivered(t: spec.Topology, source: str, dst: object, proto: str = "icmp", port: int | None = None) -> bool:
    """Does the datapath model deliver a flow (and its reply) on the planned state of ``t``?"""
    return model.trace(planned(t), Flow(source, str(dst), proto, port)).delivered


def state(p: Plan) -> State:
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
    wan_listen = [Listener("tcp", "0.0.0.0", ECHO_PORT), Listener("udp", "0.0.0.0", ECHO_PORT)]
    if t.dns is not None:
        wan_listen += [Listener("udp", str(t.dns.address), 53), Listener("tcp", str(t.dns.address), 53)]
    wan = Namespace("wan", (wan_lo, wan_up), tuple(wan_routes), sysctls=(("net.ipv4.ip_forward", 0),), listeners=tuple(wan_listen))

    containers = []
    for c in p.containers:
        own = Iface(c.interface, addresses=(c.address,), peer=("host", c.host_veth))
        routes = [*_connected([own]), *(_via(dst, via, [own]) for dst, via in c.routes)]
        services = t.container(c.name).services
        listen = [Listener(s.protocol, "0.0.0.0", s.port) for s in services] + [Listener("tcp", "0.0.0.0", ECHO_PORT), Listener("udp", "0.0.0.0", ECHO_PORT)]
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


__all__ = [
    "DEFAULT_ROUTE", "ECHO_PORT", "Access", "BasePlan", "BridgePlan", "base", "owned_routes", "ContainerPlan", "Plan", "Reach", "accesses", "dnat_rule", "masquerade_for", "masquerade_rule",
    "plan", "reaches", "resolv_conf_text", "spec_masquerade", "spec_rules", "PLAN_TAG", "delivered", "planned", "planned_plan", "planned_ruleset", "ruleset_of", "state",
]
