"""The walk: a flow through a state, hop by hop in the kernel's order, to a disposition.

In each namespace a packet meets, in order: the route lookup (policy rules first, then the
tables; blackhole, prohibit and unreachable routes end it), the netfilter hooks of every table
and family with base chains there (raw and NOTRACK before conntrack, conntrack, mangle, nat, the
routing decision, filter, nat POSTROUTING), rp_filter and per-interface forwarding, the veth to
the next namespace, the bridge (port state, ``isolated``, ``learning``; br_netfilter's hooks for
bridged frames), and at the end a listener. The reply then walks back and must come out
un-NATed. Each step records what decided it; a match or target the model does not model ends the
trace in "unknown: this rule may match", never in a guess.

Both families: an IPv6 packet meets only the chains that see IPv6 (ip6tables', nft ip6 and inet),
its own forwarding sysctl (``net.ipv6.conf.all.forwarding``) and br_netfilter's
(``bridge-nf-call-ip6tables``), NDP where IPv4 has ARP, no rp_filter and no route_localnet (::1
never leaves lo). Published ports: tcp, udp and sctp (an SCTP INIT traced to its arrival), each
port of a range by its own DNAT, a loopback source leaving lo only with route_localnet, a frame
bridged back out the port it came in by only in hairpin mode, and an IPv4 packet arriving with
the receiver's own address as its source dropped as a martian.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Literal

from netcheck.datapath.firewall import LEGACY6, Pkt, Placed, binary, is_native, matches, sees
from netcheck.datapath.values import BRIDGE_NF, DEFAULT_RULES, LOCAL_TABLE, LOOPBACK, Flow, Iface, Namespace, Route, State, Step, Trace
from netcheck.kernel.netns import IpRule
from netcheck.kernel.xtables import XChain

Direction = Literal["request", "reply"]
MAX_HOPS = 16
CONNTRACK_PRIORITY = -200
LEGACY_PRIORITY = {("raw", ""): -300, ("mangle", ""): -150, ("nat", "prerouting"): -100, ("nat", "output"): -100, ("nat", "postrouting"): 100,
                   ("nat", "input"): 100, ("filter", ""): 0, ("security", ""): 50}
NAT_TARGETS = ("DNAT", "SNAT", "MASQUERADE", "REDIRECT")
CONTINUE_TARGETS = ("", "LOG", "NFLOG", "MARK", "CONNMARK", "TRACE", "COUNTER", "CLASSIFY", "TCPMSS", "CHECKSUM", "TOS", "DSCP", "TTL", "AUDIT", "SET")
UNREAD_HOOKS = {"raw": ("prerouting", "output"), "mangle": ("prerouting", "input", "forward", "output", "postrouting"), "security": ("input", "forward", "output")}
L2_FAMILIES = ("bridge", "netdev")
HOOK_CHAIN = {"prerouting": "PREROUTING", "input": "INPUT", "forward": "FORWARD", "output": "OUTPUT", "postrouting": "POSTROUTING"}


class _End(Exception):
    def __init__(self, disposition: str, reason: str) -> None:
        super().__init__(reason)
        self.disposition, self.reason = disposition, reason


@dataclass(frozen=True)
class _Pkt:
    src: str | None
    dst: str
    proto: str
    sport: int | None
    dport: int | None
    ct: str = ""  # this namespace's conntrack state: "" (not yet tracked here), new, established, invalid, untracked
    conn: int | None = None  # the conntrack entry (index in the namespace's list)
    reply: bool = False  # the entry's reply direction

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst else 4

    def render(self) -> str:
        if self.proto == "icmp":
            return f"{self.src} > {self.dst} icmp" + ("v6" if self.family == 6 else "")
        if self.family == 6:
            return f"[{self.src}]:{self.sport} > [{self.dst}]:{self.dport} {self.proto}"
        return f"{self.src}:{self.sport} > {self.dst}:{self.dport} {self.proto}"


@dataclass
class _Conn:
    orig: tuple[str | None, int | None, str, int | None]  # src, sport, dst, dport
    dnat: tuple[str, int | None] | None = None
    snat: tuple[str, int | None] | None = None

    def reply_tuple(self) -> tuple[str | None, int | None, str | None, int | None]:
        src, sport, dst, dport = self.orig
        rsrc, rsport = self.dnat if self.dnat else (dst, dport)
        rdst, rdport = self.snat if self.snat else (src, sport)
        return (rsrc, rsport if rsport is not None else dport, rdst, rdport if rdport is not None else sport)


@dataclass(frozen=True)
class _Arrival:
    ns: str
    iface: str
    pkt: _Pkt


@dataclass(frozen=True)
class _Verdict:
    kind: str  # ACCEPT, DROP, REJECT, DNAT, SNAT, MASQUERADE, REDIRECT, UNKNOWN
    rule: Placed | None
    note: str = ""


@dataclass
class _Walk:
    state: State
    steps: list[Step] = field(default_factory=list)
    conns: dict[str, list[_Conn]] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)  # namespaces where a MARK or CONNMARK target matched the packet
    hops: int = 0
    direction: Direction = "request"
    physin: tuple[str, str, str] | None = None  # (namespace, bridge, port): the bridge port a frame handed to br_netfilter came in by

    # ------------------------------------------------------------------ recording

    def step(self, where: str, stage: str, text: str, by: str = "", decisive: bool = False) -> None:
        self.steps.append(Step(where, stage, text, by, self.direction, decisive))

    def end(self, where: str, stage: str, disposition: str, text: str, by: str = "") -> _End:
        self.step(where, stage, text, by, decisive=True)
        return _End(disposition, f"{where}: {stage}: {text}" + (f" [{by}]" if by else ""))

    def ns(self, label: str) -> Namespace:
        n = self.state.ns(label)
        if n is None:
            raise self.end(label, "namespace", "unknown", f"the state holds no namespace {label}")
        return n

    # ------------------------------------------------------------------ routing

    def lookup(self, ns: Namespace, dst: str, src: str | None, iif: str | None, stage: str = "route") -> tuple[Route, IpRule]:
        """The route for dst (policy rules, then the tables); ends the walk where there is none."""
        ip = ip_address(dst)
        rules = [r for r in ns.rules if r.family == ip.version] or DEFAULT_RULES  # the family's policy rules (ip rule, ip -6 rule); none read: the defaults
        for rule in sorted(rules, key=lambda r: r.priority):
            hit = _rule_matches(rule, src, dst, iif, marked=ns.label in self.marked)
            if hit is None:
                raise self.end(ns.label, stage, "unknown", f"this policy rule may match: it uses {', '.join(rule.unmodelled)}, which the model does not model", _render_rule(rule))
            if not hit:
                continue
            if rule.action in ("blackhole", "prohibit", "unreachable"):
                return Route(_ANY if ip.version == 4 else _ANY6, kind=rule.action, table=-1), rule
            if rule.action != "lookup" or rule.table is None:
                if rule.action == "nop":
                    continue
                raise self.end(ns.label, stage, "unknown", f"the policy rule's action {rule.action} is not modelled", _render_rule(rule))
            if rule.table == LOCAL_TABLE:
                held = ns.local(dst)
                if held is not None:
                    return Route(_host(dst), dev=held.name, kind="local", table=LOCAL_TABLE), rule
                continue
            best: Route | None = None
            for r in ns.routes:
                if r.table != rule.table or ip not in r.dst:
                    continue
                dev = ns.iface(r.dev) if r.dev else None
                if r.dev and (dev is None or not dev.up):
                    continue  # a route over a down link is gone
                if best is None or r.dst.prefixlen > best.dst.prefixlen or (r.dst.prefixlen == best.dst.prefixlen and r.metric < best.metric):
                    best = r
            if best is None or best.kind == "throw":
                continue
            return best, rule
        shown = [r.render() for r in ns.routes if r.dst.version == ip.version]
        raise self.end(ns.label, stage, "no-route", f"no route to {dst}", f"{'IPv6 ' if ip.version == 6 else ''}routes of {ns.label}: " + ("; ".join(shown) or "none"))

    def routed(self, ns: Namespace, pkt: _Pkt, iif: str | None, stage: str = "route") -> tuple[Route, str]:
        """The route a packet takes and its next hop; a blackhole, prohibit or unreachable route ends the walk."""
        route, rule = self.lookup(ns, pkt.dst, pkt.src, iif, stage)
        default_rule = rule.priority in (0, 32766, 32767) and not (rule.src or rule.dst or rule.iif)
        by = route.render() + ("" if default_rule else f" (policy rule: {_render_rule(rule)})")
        if route.kind in ("blackhole", "prohibit", "unreachable"):
            disposition = {"blackhole": "null-routed", "prohibit": "prohibited", "unreachable": "unreachable"}[route.kind]
            what = {"blackhole": "dropped silently by a blackhole {}", "prohibit": "refused by a prohibit {} (ICMP administratively prohibited)",
                    "unreachable": "refused by an unreachable {} (ICMP host unreachable)"}[route.kind].format("policy rule" if route.table == -1 else "route")
            raise self.end(ns.label, stage, disposition, f"{pkt.dst}: {what}", by if route.table != -1 else _render_rule(rule))
        nexthop = str(route.via) if route.via else pkt.dst
        self.step(ns.label, stage, f"{pkt.dst} " + ("is local" if route.kind == "local" else f"via {nexthop} dev {route.dev}" if route.via else f"dev {route.dev}"), by)
        return route, nexthop

    # ------------------------------------------------------------------ sending and receiving

    def send(self, label: str, pkt: _Pkt) -> _Arrival:
        """A packet a process in ``label`` sends: route, OUTPUT hooks, POSTROUTING, out of its device."""
        ns = self.ns(label)
        route, nexthop = self.routed(ns, pkt, None)
        if pkt.src is None:
            src = str(route.src) if route.src else (pkt.dst if route.kind == "local" else ns.primary(route.dev or "", nexthop, pkt.family))
            if src is None:
                raise self.end(label, "route", "unknown", f"no source address for {pkt.dst} on {route.dev}")
            pkt = replace(pkt, src=src)
        oif = "lo" if route.kind == "local" else route.dev
        before = pkt.dst
        pkt = self.hook(ns, "output", pkt, None, oif)
        if pkt.dst != before:
            route, nexthop = self.routed(ns, pkt, None, "reroute")
            oif = "lo" if route.kind == "local" else route.dev
            source = ip_address(pkt.src or "0.0.0.0")
            if route.kind != "local" and source.is_loopback:
                if source.version == 6:
                    raise self.end(label, "reroute", "dropped", f"the DNATed packet keeps its source {source} and would leave by {oif}: IPv6 never routes ::1 off lo", "the kernel")
                if ns.conf(oif or "", "route_localnet") != 1:
                    raise self.end(label, "reroute", "dropped", f"the DNATed packet keeps its loopback source {source} and would leave by {oif}: the kernel refuses it",
                                   f"net.ipv4.conf.{oif}.route_localnet = {ns.conf(oif or '', 'route_localnet')}")
                self.step(label, "reroute", f"its loopback source {source} may leave by {oif}", f"net.ipv4.conf.{oif}.route_localnet = 1")
        pkt = self.hook(ns, "postrouting", pkt, None, oif)
        if route.kind == "local":
            pkt = self.hook(ns, "input", pkt, "lo", None)
            return _Arrival(label, "lo", pkt)
        return self.transmit(ns, route.dev, nexthop, pkt)

    def transmit(self, ns: Namespace, oif: str | None, nexthop: str, pkt: _Pkt) -> _Arrival:
        self.hops += 1
        if self.hops > MAX_HOPS:
            raise self.end(ns.label, "hops", "unknown", f"more than {MAX_HOPS} hops: a routing loop?")
        dev = ns.iface(oif)
        if dev is None:
            raise self.end(ns.label, "link", "unknown", f"the route's device {oif} is not in the state")
        if not dev.up:
            raise self.end(ns.label, "link", "dropped", f"{dev.name} is down", f"link {dev.name}")
        if dev.kind == "bridge":
            found = self.port_towards(ns, dev, nexthop)
            if found is None:
                raise self.end(ns.label, "neighbour", "neighbour-unreachable", f"no port of {dev.name} leads to {nexthop} (nobody answers {_nd(nexthop)} for it)", f"bridge {dev.name}")
            port, peer_ns, peer_if = found
            assert port.port is not None
            if port.port.state != "forwarding" or not port.up:
                raise self.end(ns.label, "bridge", "dropped", f"{dev.name} -> {port.name}: the port is {port.port.state if port.up else 'down'}", f"bridge port {port.name}")
            if self.physin == (ns.label, dev.name, port.name) and not port.port.hairpin:
                raise self.end(ns.label, "bridge", "dropped", f"{dev.name}: br_netfilter bridges the DNATed frame back out {port.name}, the port it came in by, and "
                               f"{port.name} is not in hairpin mode", f"bridge_slave {port.name} hairpin off; {BRIDGE_NF[pkt.family]} = 1")
            self.physin = None
            self.step(ns.label, "bridge", f"{dev.name} -> {port.name} (towards {nexthop})", f"bridge {dev.name}")
            self.l2_hook(ns, "output", pkt, None, port.name)
            self.l2_hook(ns, "postrouting", pkt, None, port.name)
            return self.receive(self.ns(peer_ns), peer_if, pkt)
        if dev.peer is None:
            raise self.end(ns.label, "link", "unknown", f"the model does not know what is at the other end of {dev.name} ({dev.kind})")
        far = self.ns(dev.peer[0])
        peer = far.iface(dev.peer[1])
        if peer is None or not peer.up:
            raise self.end(ns.label, "link", "dropped", f"{dev.name}'s peer {dev.peer[1]} in {dev.peer[0]} is {'down' if peer else 'missing'}: no carrier", f"link {dev.name}")
        pkt = replace(pkt, ct="", conn=None, reply=False)  # crossing namespaces scrubs the conntrack reference
        self.physin = None
        if peer.port is not None:
            return self.bridge_in(far, peer, nexthop, pkt)
        if far.local(nexthop) is None:
            raise self.end(far.label, "neighbour", "neighbour-unreachable", f"{dev.name} -> {peer.name}: nobody in {far.label} holds {nexthop} ({_nd(nexthop)} unanswered)", f"link {dev.name}")
        return self.receive(far, peer.name, pkt)

    def port_towards(self, ns: Namespace, bridge: Iface, nexthop: str) -> tuple[Iface, str, str] | None:
        """The port of ``bridge`` whose far end holds ``nexthop``: (port, its peer's namespace, its peer's interface)."""
        port = self.state.port_towards(ns.label, bridge.name, nexthop)
        if port is None or port.peer is None:
            return None
        return port, port.peer[0], port.peer[1]

    def bridge_in(self, ns: Namespace, port: Iface, nexthop: str, pkt: _Pkt) -> _Arrival:
        """A frame entering a bridge port: to the host itself, or bridged to another port."""
        assert port.port is not None
        br = ns.iface(port.port.bridge)
        if br is None or not br.up:
            raise self.end(ns.label, "bridge", "dropped", f"{port.name}'s bridge {port.port.bridge} is {'down' if br else 'missing'}", f"bridge {port.port.bridge}")
        if port.port.state != "forwarding":
            raise self.end(ns.label, "bridge", "dropped", f"{port.name} -> {br.name}: the ingress port is {port.port.state}", f"bridge port {port.name} state {port.port.state}")
        found = self.port_towards(ns, br, nexthop)
        self.l2_hook(ns, "prerouting", pkt, port.name, None)
        if found is None or found[0].name == port.name:
            if ns.local(nexthop) is None:
                raise self.end(ns.label, "neighbour", "neighbour-unreachable", f"nobody on {br.name} holds {nexthop}", f"bridge {br.name}")
            self.step(ns.label, "bridge", f"{port.name} -> {br.name} (to the host)", f"bridge {br.name}")
            self.l2_hook(ns, "input", pkt, port.name, None)
            if _brnf(ns, br, pkt.family):
                self.physin = (ns.label, br.name, port.name)
            return self.receive(ns, br.name, pkt)
        out, peer_ns, peer_if = found
        assert out.port is not None
        if out.port.state != "forwarding" or not out.up:
            raise self.end(ns.label, "bridge", "dropped", f"{port.name} -> {out.name}: the egress port is {out.port.state if out.up else 'down'}", f"bridge port {out.name}")
        if port.port.isolated and out.port.isolated:
            raise self.end(ns.label, "bridge", "dropped", f"{port.name} -> {out.name}: both ports are isolated, and the bridge forwards nothing between isolated ports",
                           f"bridge_slave isolated on: {port.name}, {out.name}")
        self.step(ns.label, "bridge", f"{port.name} -> {out.name} (bridged on {br.name})" + ("" if out.port.learning else f"; {out.name} does not learn: its frames are flooded"),
                  f"bridge {br.name}" + (f", learning off on {out.name}" if not out.port.learning else ""))
        self.l2_hook(ns, "forward", pkt, port.name, out.name)
        brnf = _brnf(ns, br, pkt.family)
        key = BRIDGE_NF[pkt.family]
        if ns.ruleset is not None:
            if brnf:
                self.step(ns.label, "br_netfilter", f"the bridged frame passes the host's {'ip6tables' if pkt.family == 6 else 'iptables'} hooks",
                          f"{key} = 1" if ns.sysctl(key, 1) == 1 else f"bridge {br.name} nf_call_{'ip6tables' if pkt.family == 6 else 'iptables'} on")
                before = pkt.dst
                pkt = self.hook(ns, "prerouting", pkt, br.name, None)
                if pkt.dst != before:
                    return self.route_input(ns, br.name, pkt)  # a DNATed bridged frame is routed
                pkt = self.hook(ns, "forward", pkt, br.name, br.name)
                pkt = self.hook(ns, "postrouting", pkt, None, br.name)
            else:
                self.step(ns.label, "br_netfilter", "the bridged frame skips the host's iptables hooks (no conntrack, no un-NAT)", f"{key} = 0")
        self.l2_hook(ns, "postrouting", pkt, None, out.name)
        pkt = replace(pkt, ct="", conn=None, reply=False)
        far = self.ns(peer_ns)
        return self.receive(far, peer_if, pkt)

    def receive(self, ns: Namespace, iface: str, pkt: _Pkt) -> _Arrival:
        """A packet arriving at layer 3 on ``iface``: PREROUTING, then the routing decision."""
        pkt = self.hook(ns, "prerouting", pkt, iface, None)
        return self.route_input(ns, iface, pkt)

    def route_input(self, ns: Namespace, iface: str, pkt: _Pkt) -> _Arrival:
        dst = ip_address(pkt.dst)
        if dst.version == 6 and dst.is_loopback and iface != "lo":
            raise self.end(ns.label, "routing decision", "dropped", f"{pkt.dst} arrived on {iface}: IPv6 drops a loopback destination from outside (no route_localnet)", "the kernel")
        if dst in LOOPBACK and iface != "lo" and ns.conf(iface, "route_localnet") != 1:
            raise self.end(ns.label, "routing decision", "dropped", f"{pkt.dst} arrived on {iface}: a loopback destination from outside is a martian",
                           f"net.ipv4.conf.{iface}.route_localnet = {ns.conf(iface, 'route_localnet')}")
        if dst.version == 4 and iface != "lo" and pkt.src is not None and ns.local(pkt.src) is not None and ns.conf(iface, "accept_local") != 1:
            raise self.end(ns.label, "routing decision", "dropped", f"{pkt.src} > {pkt.dst} arrived on {iface} with one of {ns.label}'s own addresses as its source: a martian",
                           f"net.ipv4.conf.{iface}.accept_local = 0")
        rp = ns.conf(iface, "rp_filter") if dst.version == 4 else 0  # IPv6 has no rp_filter sysctl (nft's fib rules do that job)
        if rp and pkt.src is not None and iface != "lo":
            try:
                back, _rule = self.lookup(ns, pkt.src, None, None, "rp_filter")
            except _End:
                self.steps.pop()
                raise self.end(ns.label, "rp_filter", "dropped", f"no route back to {pkt.src}", f"net.ipv4.conf.{iface}.rp_filter = {rp}") from None
            if (back.kind != "unicast" and back.kind != "local") or (rp == 1 and back.dev != iface):
                raise self.end(ns.label, "rp_filter", "dropped", f"the route back to {pkt.src} leaves by {back.dev}, not {iface} (strict reverse-path filter)",
                               f"net.ipv4.conf.{iface}.rp_filter = {rp}; {back.render()}")
        route, nexthop = self.routed(ns, pkt, iface, "routing decision")
        if route.kind == "local":
            pkt = self.hook(ns, "input", pkt, iface, None)
            return _Arrival(ns.label, iface, pkt)
        on, by = ns.forwarding(iface, dst.version)
        if not on:
            raise self.end(ns.label, "forwarding", "dropped", f"{ns.label} does not forward packets that arrive on {iface}", by)
        pkt = self.hook(ns, "forward", pkt, iface, route.dev)
        pkt = self.hook(ns, "postrouting", pkt, None, route.dev)
        return self.transmit(ns, route.dev, nexthop, pkt)

    # ------------------------------------------------------------------ netfilter

    def l2_hook(self, ns: Namespace, hook: str, pkt: _Pkt, iif: str | None, oif: str | None) -> None:
        """nf_tables' bridge-family base chains of a hook (a frame on the bridge), and netdev ingress chains."""
        if ns.ruleset is None or not ns.ruleset.l2:
            return
        chains = sorted((c for c in ns.ruleset.l2.values() if c.hook == hook and c.family == "bridge"), key=lambda c: c.priority)
        if hook == "prerouting":
            ingress = [c for c in ns.ruleset.l2.values() if c.family == "netdev" and c.hook == "ingress" and (c.rules or c.policy not in (None, "ACCEPT"))]
            if ingress:
                c = ingress[0]
                raise self.end(ns.label, f"nft netdev {c.table} {c.name}", "unknown", "a netdev ingress chain holds rules, and the model does not know which device it is bound to")
        for chain in chains:
            v = self.walk(ns, "nft", chain, _fpkt(pkt, iif, oif, "new"))
            stage = f"nft bridge {chain.table} {chain.name}"
            by = _by_l2(chain, v.rule) if v.rule else f"nft bridge {chain.table} {chain.name} policy {chain.policy or 'ACCEPT'}"
            if v.kind in ("DROP", "REJECT"):
                raise self.end(ns.label, stage, "dropped" if v.kind == "DROP" else "rejected", f"the frame {pkt.render()} is {'dropped' if v.kind == 'DROP' else 'rejected'} on the bridge", by)
            if v.kind == "UNKNOWN" or v.kind not in ("ACCEPT", "NOTRACK"):
                raise self.end(ns.label, stage, "unknown", v.note or f"the verdict {v.kind} is not modelled in the bridge family", by)
            if chain.rules or v.rule is not None:
                self.step(ns.label, stage, f"{pkt.render()}: {v.kind.lower()}", by)

    def hook(self, ns: Namespace, hook: str, pkt: _Pkt, iif: str | None, oif: str | None) -> _Pkt:
        """Every base chain of a hook, in priority order, with conntrack between raw and the rest."""
        if ns.ruleset is None:
            return pkt
        for table in ns.unread:
            if (table.split()[0] == LEGACY6) == (pkt.family == 6) and hook in UNREAD_HOOKS.get(table.split()[-1], ()):
                raise self.end(ns.label, f"{table} {HOOK_CHAIN[hook]}", "unknown", f"the {table} table exists but was not read: its rules may decide this packet")
        chains = _base_chains(ns, hook, pkt.family)
        tracks = hook in ("prerouting", "output")
        natted = False
        for prio, backend, chain in chains:
            if tracks and prio > CONNTRACK_PRIORITY and pkt.ct == "":
                pkt = self.conntrack(ns, pkt)
            if chain.kind == "nat":
                if pkt.ct != "new" or natted:
                    if pkt.ct == "untracked":
                        would = self.walk(ns, backend, chain, _fpkt(pkt, iif, oif, "new"))
                        if would.kind in NAT_TARGETS and would.rule is not None:
                            self.step(ns.label, _stage(backend, chain), f"{would.kind} not applied: the packet is untracked, and NAT needs conntrack", _by(would.rule), decisive=True)
                    continue
                v = self.walk(ns, backend, chain, _fpkt(pkt, iif, oif, pkt.ct))
                if v.kind == "UNKNOWN":
                    raise self.end(ns.label, _stage(backend, chain), "unknown", v.note, _by(v.rule) if v.rule else "")
                if v.kind in NAT_TARGETS:
                    pkt = self.nat(ns, backend, chain, v, pkt, iif, oif)
                    natted = True
                elif v.kind in ("DROP", "REJECT"):
                    self.filter_end(ns, backend, chain, v, pkt)
                continue
            v = self.walk(ns, backend, chain, _fpkt(pkt, iif, oif, pkt.ct or "new"))
            if v.kind == "NOTRACK":
                pkt = replace(pkt, ct="untracked")
                assert v.rule is not None
                self.step(ns.label, _stage(backend, chain), "NOTRACK: conntrack will not track the packet", _by(v.rule))
                continue
            if v.kind in ("DROP", "REJECT", "UNKNOWN"):
                self.filter_end(ns, backend, chain, v, pkt)
            if chain.rules or chain.policy not in (None, "ACCEPT") or v.rule is not None:
                self.step(ns.label, _stage(backend, chain), f"{pkt.render()} [{pkt.ct or 'new'}]: {v.kind.lower()}", _by(v.rule) if v.rule else _policy(backend, chain))
        if tracks and pkt.ct == "":
            pkt = self.conntrack(ns, pkt)
        if hook in ("postrouting", "input") and pkt.reply and pkt.conn is not None:
            conn = self.conns[ns.label][pkt.conn]
            if conn.dnat is not None:
                src, sport = conn.orig[2], conn.orig[3]
                self.step(ns.label, "conntrack", f"un-DNAT: the reply's source {pkt.src} becomes {src}", "conntrack")
                pkt = replace(pkt, src=src, sport=sport if sport is not None else pkt.sport)
        return pkt

    def filter_end(self, ns: Namespace, backend: str, chain: XChain, v: _Verdict, pkt: _Pkt) -> None:
        stage = _stage(backend, chain)
        if v.kind == "UNKNOWN":
            raise self.end(ns.label, stage, "unknown", v.note, _by(v.rule) if v.rule else "")
        disposition = "dropped" if v.kind == "DROP" else "rejected"
        what = f"{pkt.render()} [{pkt.ct or 'new'}]: {'dropped' if v.kind == 'DROP' else 'rejected'} by " + ("a rule" if v.rule else f"the {chain.name} policy")
        raise self.end(ns.label, stage, disposition, what, _by(v.rule) if v.rule else _policy(backend, chain))

    def conntrack(self, ns: Namespace, pkt: _Pkt) -> _Pkt:
        if pkt.ct == "untracked":
            return pkt
        conns = self.conns.setdefault(ns.label, [])
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        for i, c in enumerate(conns):
            if c.reply_tuple() == key:
                pkt = replace(pkt, ct="established", conn=i, reply=True)
                if c.snat is not None:
                    dst, dport = c.orig[0] or pkt.dst, c.orig[1]
                    self.step(ns.label, "conntrack", f"a reply (established); un-SNAT: its destination {pkt.dst} becomes {dst}", "conntrack")
                    pkt = replace(pkt, dst=dst, dport=dport if dport is not None else pkt.dport)
                else:
                    self.step(ns.label, "conntrack", "a reply (established)", "conntrack")
                return pkt
            if c.orig == key:
                return replace(pkt, ct="established", conn=i)
        if self.direction == "reply" and pkt.proto in ("tcp", "icmp"):
            self.step(ns.label, "conntrack", "a reply with no connection on record: invalid", "conntrack", decisive=True)
            return replace(pkt, ct="invalid")
        conns.append(_Conn(key))
        return replace(pkt, ct="new", conn=len(conns) - 1)

    def nat(self, ns: Namespace, backend: str, chain: XChain, v: _Verdict, pkt: _Pkt, iif: str | None, oif: str | None) -> _Pkt:
        assert v.rule is not None
        r = v.rule.rule
        conn = self.conns[ns.label][pkt.conn] if pkt.conn is not None else None
        if v.kind in ("DNAT", "REDIRECT"):
            if v.kind == "REDIRECT":
                addr = ("::1" if pkt.family == 6 else "127.0.0.1") if iif is None else ns.primary(iif, family=pkt.family)
                to = _join(str(addr), r.to_destination) if r.to_destination else str(addr)
            else:
                to = r.to_destination or ""
            if not to:
                raise self.end(ns.label, _stage(backend, chain), "unknown", "a DNAT whose destination was not read", _by(v.rule))
            addr, port = _split(to)
            dport = int(port.split("-")[0]) if port else pkt.dport
            self.step(ns.label, _stage(backend, chain), f"{v.kind} {pkt.dst}{f':{pkt.dport}' if pkt.dport else ''} to {to}", _by(v.rule))
            if conn is not None:
                conn.dnat = (addr, dport)
            return replace(pkt, dst=addr, dport=dport)
        if v.kind == "SNAT":
            raise self.end(ns.label, _stage(backend, chain), "unknown", "an SNAT whose --to-source the model does not read", _by(v.rule))
        src = ns.primary(oif or "", pkt.dst, pkt.family)
        if src is None:
            raise self.end(ns.label, _stage(backend, chain), "dropped", f"MASQUERADE out of {oif}, which has no address", _by(v.rule))
        self.step(ns.label, _stage(backend, chain), f"MASQUERADE {pkt.src} to {src} out of {oif}", _by(v.rule))
        if conn is not None:
            conn.snat = (src, pkt.sport)
        return replace(pkt, src=src)

    def walk(self, ns: Namespace, backend: str, chain: XChain, p: Pkt, start: int = 0, depth: int = 0) -> _Verdict:
        """A base chain's verdict for the packet (its policy if no rule decides)."""
        v = self.rules(ns, backend, chain, p, start, depth)
        if v is not None:
            return v
        policy = chain.policy or "ACCEPT"
        return _Verdict(policy, None)

    def rules(self, ns: Namespace, backend: str, chain: XChain, p: Pkt, start: int = 0, depth: int = 0) -> _Verdict | None:
        """The verdict of a chain's rules from ``start`` on; None: they fall through (or RETURN)."""
        assert ns.ruleset is not None
        if depth > 16:
            return _Verdict("UNKNOWN", None, f"jumps nested deeper than 16 from {chain.name}")
        for i, r in enumerate(chain.rules[start:], start + 1):
            if not matches(r, p):
                continue
            placed = Placed(backend, r, i, chain.family)
            v = self.target(ns, backend, chain, placed, p, depth)
            if r.unmodelled:
                rest = self.rules(ns, backend, chain, p, i, depth)
                if _same(v, rest):
                    continue  # the same verdict whether or not it matches
                return _Verdict("UNKNOWN", placed, f"unknown: this rule may match: it uses {', '.join(r.unmodelled)}, which the model does not model")
            if v is _RETURN:
                return None
            if v is not None:
                return v
        return None

    def target(self, ns: Namespace, backend: str, chain: XChain, placed: Placed, p: Pkt, depth: int) -> _Verdict | None:
        """What a matching rule does: a verdict, None to go on, or _RETURN."""
        assert ns.ruleset is not None
        t = placed.rule.target
        if t in ("ACCEPT", "DROP", "REJECT", *NAT_TARGETS, "NOTRACK"):
            return _Verdict(t, placed)
        if t == "RETURN":
            return _RETURN
        if t in CONTINUE_TARGETS:
            if t in ("MARK", "CONNMARK"):
                self.marked.add(ns.label)
            return None
        sub = ns.ruleset.l2.get((chain.family, chain.table, t)) if chain.family in L2_FAMILIES else ns.ruleset.chains.get((backend, chain.table, t))
        if sub is not None:
            return self.rules(ns, backend, sub, p, 0, depth + 1)
        return _Verdict("UNKNOWN", placed, f"unknown: the target {t} is not modelled")


_RETURN = _Verdict("RETURN", None)
_ANY = IPv4Network("0.0.0.0/0")
_ANY6 = IPv6Network("::/0")


def _nd(address: str) -> str:
    """The neighbour protocol that resolves an address: ARP, or NDP for IPv6."""
    return "NDP" if ":" in address else "ARP"


def _brnf(ns: Namespace, bridge: Iface, family: int) -> bool:
    """Does br_netfilter hand the bridge's frames of ``family`` to the host's hooks (the sysctl, or the bridge's own option)?"""
    return ns.sysctl(BRIDGE_NF[family], 1) == 1 or bridge.nf_call_iptables


def _split(to: str) -> tuple[str, str]:
    """A DNAT's ``--to-destination`` as (address, port): ``10.0.0.2:80``, ``[fd00::2]:80``, ``fd00::2``."""
    if to.startswith("["):
        addr, _, rest = to[1:].partition("]")
        return addr, rest.lstrip(":")
    if to.count(":") > 1:
        return to, ""
    addr, _, port = to.partition(":")
    return addr, port


def _join(addr: str, port: str) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _same(a: _Verdict | None, b: _Verdict | None) -> bool:
    def kind(v: _Verdict | None) -> str:
        return "" if v is None or v is _RETURN else v.kind

    return kind(a) == kind(b) and kind(a) not in NAT_TARGETS and kind(a) != "UNKNOWN"


def _host(dst: str) -> IPv4Network | IPv6Network:
    return IPv6Network(f"{dst}/128") if ":" in dst else IPv4Network(f"{dst}/32")


MARK_SELECTORS = {"fwmark", "fwmask"}


def _rule_matches(rule: IpRule, src: str | None, dst: str, iif: str | None, *, marked: bool = False) -> bool | None:
    """Does a policy rule select the packet? None: it may (a selector the model does not model).
    A packet no MARK target touched has mark 0, which a ``fwmark`` rule (of a nonzero mark) does not select."""
    hit = True
    if rule.unmodelled:
        if marked or not set(rule.unmodelled) <= MARK_SELECTORS:
            return None
        hit = False
    if rule.src is not None and (src is None or ip_address(src) not in rule.src):
        hit = False
    if rule.dst is not None and ip_address(dst) not in rule.dst:
        hit = False
    if rule.iif is not None and rule.iif != (iif or "lo"):
        hit = False
    if rule.oif is not None:
        hit = False  # oif matches only sockets bound to a device; the model's senders are not
    return hit != rule.invert


def _render_rule(rule: IpRule) -> str:
    parts = [f"{rule.priority}:", *(["not"] if rule.invert else [])]
    parts += [f"from {rule.src or 'all'}"] + ([f"to {rule.dst}"] if rule.dst else []) + ([f"iif {rule.iif}"] if rule.iif else []) + ([f"oif {rule.oif}"] if rule.oif else [])
    parts += list(rule.unmodelled)
    parts.append(f"lookup {rule.table}" if rule.action == "lookup" else rule.action)
    return ("ip -6 rule " if rule.family == 6 else "ip rule ") + " ".join(parts)


def _base_chains(ns: Namespace, hook: str, family: int = 4) -> list[tuple[int, str, XChain]]:
    """The base chains of a hook that see packets of ``family`` (ip and ip6tables, nft ip, ip6 and inet), in priority order."""
    assert ns.ruleset is not None
    out = []
    for backend, h, _kind, table, name, prio in ns.ruleset.hooks:
        if h != hook:
            continue
        ch = ns.ruleset.chains.get((backend, table, name))
        if ch is None or not sees(backend, ch, family):
            continue
        if backend in ("legacy", LEGACY6):
            prio = LEGACY_PRIORITY.get((table, hook), LEGACY_PRIORITY.get((table, ""), 0))
            ch = replace(ch, kind="nat" if table == "nat" else "filter")
        out.append((prio, backend, ch))
    out.sort(key=lambda x: x[0])
    return out


def _fpkt(pkt: _Pkt, iif: str | None, oif: str | None, ct: str) -> Pkt:
    return Pkt(pkt.src or ("::" if pkt.family == 6 else "0.0.0.0"), pkt.dst, pkt.proto, pkt.dport, iif, oif, ct or "new")


def _stage(backend: str, chain: XChain) -> str:
    if is_native(backend, chain.table):
        return f"nft {chain.family} {chain.table} {chain.name}"
    return f"{chain.table} {chain.name}" + (" (nft)" if backend == "nft" else "")


def _by(rule: Placed | None) -> str:
    if rule is None:
        return ""
    return f"{rule.render()} ({rule.where()})"


def _by_l2(chain: XChain, rule: Placed) -> str:
    return f"nft: {chain.family} {chain.table} {chain.name} rule {rule.position} (handle {rule.rule.handle})"


def _policy(backend: str, chain: XChain) -> str:
    where = f"nft {chain.family} {chain.table} {chain.name}" if is_native(backend, chain.table) else f"{binary(backend)} -t {chain.table} -P {chain.name}"
    return f"{where} policy {chain.policy or 'ACCEPT'}"


def trace(state: State, flow: Flow) -> Trace:
    """Trace ``flow`` through ``state``: the request to its listener, then the reply back to the sender.

    >>> from netcheck import spec
    >>> from netcheck.lab.plan import planned
    >>> t = trace(planned(spec.builtin("seed1")), Flow("netns1", "203.0.113.2", "tcp", 5000))
    >>> t.disposition, t.steps[-1].text
    ('delivered', 'the reply reached netns1 from 203.0.113.2:5000')
    """
    w = _Walk(state)
    icmp = flow.proto == "icmp"
    pkt = _Pkt(flow.src, flow.dst, flow.proto, None if icmp else flow.sport, None if icmp else flow.dport)
    target, seen = "", ""
    try:
        arrival = w.send(flow.source, pkt)
        ns = w.ns(arrival.ns)
        p = arrival.pkt
        target, seen = ns.label, p.src or ""
        if not flow.reply:
            w.step(ns.label, "arrival", f"the request arrives at {ns.label} as {p.render()}; the model traces no reply")
            return Trace(flow, tuple(w.steps), "delivered", f"{flow.render()} arrives at {ns.label}", target, seen)
        if icmp:
            w.step(ns.label, "listener", f"{p.dst} answers the echo request", "the kernel")
        else:
            if ns.listeners is None or p.family not in ns.listening_known:
                raise w.end(ns.label, "listener", "unknown", f"the state does not say what listens there{' on IPv6' if ns.listeners is not None else ''}")
            hit = next((x for x in ns.listeners if x.takes(flow.proto, p.dst, p.dport)), None)
            if hit is None:
                refusal = {"tcp": "a TCP reset", "sctp": "an SCTP ABORT"}.get(flow.proto, "ICMP port unreachable")
                raise w.end(ns.label, "listener", "no-listener", f"nothing listens on {flow.proto} {_join(p.dst, str(p.dport))}: {refusal}",
                            f"listening: {', '.join(sorted({f'{x.proto}/{_join(x.address, str(x.port))}' for x in ns.listeners})) or 'nothing'}")
            w.step(ns.label, "listener", f"{flow.proto} {_join(hit.address, str(hit.port))} accepts it", "a listening socket")
        w.direction = "reply"
        back = w.send(arrival.ns, _Pkt(p.dst, p.src or "", flow.proto, p.dport, p.sport))
        if back.ns != flow.source:
            raise w.end(back.ns, "reply", "unknown", f"the reply reached {back.ns}, not {flow.source}")
        want_port = None if icmp else flow.dport
        if back.pkt.src != flow.dst or back.pkt.sport != want_port:
            shown = str(back.pkt.src) if back.pkt.sport is None else _join(str(back.pkt.src), str(back.pkt.sport))
            raise w.end(back.ns, "reply", "reply-not-unnatted", f"the reply comes from {shown}, not {flow.dst}: it was never un-NATed, and {flow.source} drops it",
                        "the reply did not pass the conntrack entry that holds the NAT")
        w.step(back.ns, "reply", f"the reply reached {flow.source} from {flow.dst if icmp else _join(flow.dst, str(flow.dport))}")
        return Trace(flow, tuple(w.steps), "delivered", f"{flow.render()} delivered, and its reply came back", target, seen)
    except _End as e:
        return Trace(flow, tuple(w.steps), e.disposition, e.reason, target, seen)


def chain_verdict(state: State, label: str, hook: str, src: str, dst: str, iif: str | None, oif: str | None, ct: str = "new", proto: str = "icmp",
                  dport: int | None = None) -> str:
    """The verdict of a hook's base chains of one kind (filter for input/forward/output, nat for
    postrouting) for one packet (the chains of its family): ACCEPT, DROP, REJECT, a NAT target, or UNKNOWN."""
    w = _Walk(state)
    ns = state.ns(label)
    if ns is None or ns.ruleset is None:
        return "ACCEPT"
    kind = "nat" if hook == "postrouting" else "filter"
    p = Pkt(src, dst, proto, dport, iif, oif, ct)
    for _prio, backend, chain in _base_chains(ns, hook, 6 if ":" in dst else 4):
        if chain.kind != kind:
            continue
        v = w.walk(ns, backend, chain, p)
        if v.kind != "ACCEPT":
            return v.kind
    return "ACCEPT"


__all__ = ["chain_verdict", "trace"]
