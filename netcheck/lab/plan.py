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
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Literal

from netcheck import expect as promise
from netcheck import resolvconf, spec
from netcheck.datapath import model
from netcheck.datapath.firewall import Ruleset
from netcheck.datapath.values import DEFAULT_RULES, Flow, Iface, Listener, Namespace, Port, Route, State
from netcheck.kernel.xtables import BUILTIN_CHAINS, XChain, XRule
from netcheck.naming import KernelNames

DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")
DEFAULT_ROUTE6 = IPv6Network("::/0")
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
        rules.append(masquerade_rule("127.0.0.0/8", rename(promise.host_side(t, p.container)), comment=comment))
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


# ----------------------------------------------------------------------------- flows


def accesses(t: spec.Topology) -> tuple[Access, ...]:
    """Every way in to a published port or a VIP: from the outside world and from the host."""
    senders = {"wan": str(t.wan.address.ip), "host": str(t.host.address.ip)}
    out: list[Access] = []
    for p in t.publishes:
        for src in _ways(p.from_outside and not p.loopback, p.from_host):
            out.append(Access(src, senders[src], str(bound_addresses(t, p)[0]), p.host_port, p.protocol, p.container, _address(t, p.container), p.port, "publish"))
    for v in t.vips:
        for src in _ways(v.from_outside, v.from_host):
            out.append(Access(src, senders[src], str(v.address), v.port, v.protocol, v.container, _address(t, v.container), v.target_port, "vip", v.chain))
    return tuple(out)


# ----------------------------------------------------------------------------- the published-port matrix

PortPath = Literal["outside", "host", "hairpin", "itself"]


@dataclass(frozen=True)
class PortCell:
    """One cell of the published-port matrix: a published port (its protocol, a port or the last of its range, its bind) reached by one access path.

    ``expected`` comes from netcheck.expect; ``saw`` is the source the service should see, and ``why`` says both in words."""

    publish: int  # its index in the spec's [[publish]]
    protocol: str
    ports: Literal["single", "range"]
    bind: str  # "uplink" (none given), "wildcard", or the address
    family: int
    path: PortPath
    source: str  # who sends: wan, host, or a container
    dst: IPv4Address | IPv6Address
    port: int
    target: str
    target_addr: str | None
    target_port: int
    expected: bool | None  # None: observed, not promised (another tool's setup: its userland proxy or hairpin settings are its own)
    saw: str | None  # the source address the service should see (None: it should see nothing)
    why: str

    @property
    def label(self) -> str:
        via = {"outside": "from outside", "host": "from the host", "hairpin": f"hairpin from {self.source}", "itself": f"{self.target} to its own published port"}[self.path]
        return f"{self.protocol} {self.ports} bind={self.bind} {via}"


def port_matrix(t: spec.Topology, family: spec.Family | None = None) -> tuple[PortCell, ...]:
    """Every published port of ``t`` x {its first port, the last of its range} x every access path: outside (wan), the host,
    each other container (hairpin), the container itself; on every family the topology declares (or on ``family`` alone).
    Generic over what the spec declares: a family's cells appear where the spec publishes on it."""
    out: list[PortCell] = []
    for fam in t.families if family is None else (family,):
        for i, p in enumerate(t.publishes):
            out += _port_cells(t, i, p, fam)
    return tuple(out)


def _port_cells(t: spec.Topology, i: int, p: spec.Publish, family: spec.Family) -> list[PortCell]:
    """One published port's cells on one family (none where it is not published on that family)."""
    c = t.container(p.container)
    own, up, wan = c.at(family), t.host.at(family), t.wan.at(family)
    if own is None or up is None or wan is None or not bound_addresses(t, p, family) or not promise.published(t, p, family):
        return []
    bind = "uplink" if p.host_address is None else "wildcard" if p.wildcard else str(p.host_address)
    # Outside and the containers address the host's uplink address of the family (a port bound to 127.0.0.1: there, where it must not answer).
    outside_dst = up.ip if p.host_address is None or p.wildcard or p.loopback else p.host_address
    host_dst = p.host_address if p.host_address is not None and p.loopback else outside_dst
    side = t.bridge(c.bridge).at(family) if c.bridge else c.host_address if family == 4 else None
    gateway = side.ip if side is not None else None
    port = p.host_ports[-1]
    kind: Literal["single", "range"] = "range" if p.size > 1 else "single"
    to = f"[{own.ip}]" if family == 6 else str(own.ip)
    rule = f"DNAT {'per port of the range, ' if p.size > 1 else ''}{port} -> {to}:{p.container_port(port)}"
    nat = "ip6tables nat" if family == 6 else "nat"
    paths: list[tuple[PortPath, str, IPv4Address | IPv6Address, bool, str | None, str]] = []
    ok = promise.published_from_outside(t, p, family)
    paths.append(("outside", "wan", outside_dst, ok, str(wan.ip),
                  f"{nat} PREROUTING {rule}, routed from the uplink" if ok else _refused(p, "the outside world", "PREROUTING")))
    ok = promise.published_from_host(t, p, family)
    saw_host = str(gateway) if p.loopback else str(up.ip)
    paths.append(("host", "host", host_dst, ok, saw_host,
                  (f"{nat} OUTPUT {rule}" + (f"; route_localnet and MASQUERADE 127.0.0.0/8: the service sees {gateway}" if p.loopback else ""))
                  if ok else _refused(p, "the host", "OUTPUT")))
    for o in t.containers:
        theirs_addr = o.at(family)
        if o.name == c.name or theirs_addr is None:
            continue
        ok = promise.published_from_container(t, p, o.name, family)
        saw = str(gateway) if promise.masqueraded(t, o.name, out=c.bridge or c.host_veth, family=family) else str(theirs_addr.ip)
        paths.append(("hairpin", o.name, outside_dst, ok, saw, f"{nat} PREROUTING {rule}, back out by {c.bridge or c.host_veth}" if ok else _refused(p, o.name, "PREROUTING")))
    ok = promise.published_to_itself(t, p, family)
    paths.append(("itself", c.name, outside_dst, ok, str(gateway), f"{nat} PREROUTING {rule}, then the hairpin MASQUERADE -s {own.ip} -d {own.ip}: "
                  f"the service sees {gateway}" if ok else _refused(p, c.name, "PREROUTING")))
    out: list[PortCell] = []
    for path, src, dst, ok, seen, why in paths:
        # Where another tool made the setup, a container's way in that the spec does not promise is observed only: a
        # userland proxy (docker-proxy) may carry it where netcheck's own rules would not.
        # So is the source a container's way in shows the service: the tool's own hairpin MASQUERADE (CNI portmap's, netavark's) is not the spec's.
        theirs = t.setup.external and path in ("hairpin", "itself")
        promised: bool | None = None if theirs and not ok else ok
        shown = why if promised is not None else f"observed: {why}, unless the tool's userland proxy carries it"
        out.append(PortCell(i, p.protocol, kind, bind, family, path, src, dst, port, c.name, str(own.ip), p.container_port(port), promised,
                            seen if ok and not theirs else None, shown))
    return out


def _refused(p: spec.Publish, who: str, chain: str) -> str:
    """Why a cell is expected blocked, in words."""
    if p.loopback and chain == "PREROUTING":
        return f"bound to {p.host_address}: the host's alone, {who} cannot address it"
    if chain == "PREROUTING" and not p.from_outside:
        return "from_outside = false: no PREROUTING DNAT"
    if chain == "OUTPUT" and not p.from_host:
        return "from_host = false: no OUTPUT DNAT"
    if chain == "OUTPUT":
        return "bound to 127.0.0.1 without route_localnet = 1: the kernel keeps the loopback source on lo"
    if who == p.container and not p.hairpin:
        return "no hairpin MASQUERADE: the request comes back with the container's own address as its source, which it drops as a martian"
    return "the spec's routing (ip_forward, FORWARD, br_netfilter) does not carry the DNATed request and its reply"


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

    # The model is IPv4's: IPv6 addresses and routes stay out of its state.
    wan_v4 = [(i, a) for i, a in p.base.wan_addresses if isinstance(a, IPv4Interface)]
    wan_lo = Iface("lo", "loopback", addresses=(LOOPBACK_ADDRESS, *(a for i, a in wan_v4 if i == "lo")))
    wan_up = Iface(p.base.wan_uplink, addresses=tuple(a for i, a in wan_v4 if i != "lo"), peer=("host", p.base.uplink))
    wan_routes = [*_connected([wan_up]), *(_via(dst, via, [wan_up]) for dst, via in p.base.wan_routes if isinstance(dst, IPv4Network) and isinstance(via, IPv4Address))]
    wan_listen = [Listener("tcp", "0.0.0.0", ECHO_PORT), Listener("udp", "0.0.0.0", ECHO_PORT)]
    if t.dns is not None:
        wan_listen += [Listener("udp", str(t.dns.address), 53), Listener("tcp", str(t.dns.address), 53)]
    wan = Namespace("wan", (wan_lo, wan_up), tuple(wan_routes), sysctls=(("net.ipv4.ip_forward", 0),), listeners=tuple(wan_listen))

    containers = []
    for c in p.containers:
        own = Iface(c.interface, addresses=(c.address,), peer=("host", c.host_veth))
        routes = [*_connected([own]), *(_via(dst, via, [own]) for dst, via in c.routes if isinstance(dst, IPv4Network) and isinstance(via, IPv4Address))]
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
    "plan", "reaches", "resolv_conf_text", "spec_masquerade", "spec_rules", "bound_addresses", "publish_rules", "published_at", "PortCell", "PortPath", "port_matrix",
    "PLAN_TAG", "delivered", "planned", "planned_plan", "planned_ruleset", "ruleset_of", "state",
]
