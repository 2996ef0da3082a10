"""What a topology promises: which flows should pass, worked out by the datapath model on the planned state.

Each question is a flow traced by ``netcheck.datapath`` through the state the spec plans (its
links, routes, sysctls, services, FORWARD policy and rules, MASQUERADE, DNAT), so that the
suites, the matrix and the diagnosis all expect what the one model says.
"""

from __future__ import annotations

from dataclasses import replace

from netcheck import spec as S
from netcheck.datapath import Flow, chain_verdict, trace
from netcheck.lab import plan as P

HAIRPIN_PORT = 49999  # the port of the DNAT a hairpin question adds to the planned rules (no spec publishes it)


def host_side(t: S.Topology, container: str) -> str:
    """The host interface (spec name) a container's traffic enters the host by."""
    c = t.container(container)
    return c.bridge or c.host_veth


def _verdict(t: S.Topology, hook: str, in_iface: str | None, out_iface: str | None, src: str = "0.0.0.0", ct: str = "new") -> str:
    p = P.planned_plan(t)
    iif = p.kname(in_iface) if in_iface else None
    oif = p.kname(out_iface) if out_iface else None
    dst = str(t.wan.remote[0].ip) if t.wan.remote else str(t.wan.address.ip)
    return chain_verdict(P.planned(t), "host", hook, src, dst, iif, oif, ct)


def forward_allowed(t: S.Topology, in_iface: str, out_iface: str) -> bool:
    """Does the host's filter FORWARD chain, as planned, accept a new packet in_iface -> out_iface?"""
    return _verdict(t, "forward", in_iface, out_iface) == "ACCEPT"


def routed(t: S.Topology, in_iface: str, out_iface: str) -> bool:
    """Does the host route packets from in_iface to out_iface and their replies back (ip_forward, FORWARD both ways)?"""
    host = P.planned(t).ns("host")
    assert host is not None
    return host.sysctl("net.ipv4.ip_forward") == 1 and forward_allowed(t, in_iface, out_iface) and _verdict(t, "forward", out_iface, in_iface, ct="established") == "ACCEPT"


def same_l2(t: S.Topology, a: str, b: str) -> bool:
    ca, cb = t.container(a), t.container(b)
    return ca.bridge is not None and ca.bridge == cb.bridge


def reaches(t: S.Topology, a: str, b: str) -> bool:
    """Should container ``a`` reach container ``b`` by its address (an echo request, and its reply)?"""
    cb = t.container(b)
    return cb.address is not None and t.container(a).address is not None and P.delivered(t, a, cb.address.ip)


def reaches_outside(t: S.Topology, a: str) -> bool:
    """Should container ``a`` reach the outside world (with a reply coming back)?"""
    far = t.wan.remote[0].ip if t.wan.remote else t.wan.address.ip
    return t.container(a).address is not None and P.delivered(t, a, far)


def masqueraded(t: S.Topology, a: str, out: str | None = None) -> bool:
    """Does nat POSTROUTING, as planned, MASQUERADE ``a``'s packets leaving by ``out`` (default: the uplink)?"""
    c = t.container(a)
    if c.address is None:
        return False
    return _verdict(t, "postrouting", None, out or t.host.uplink, src=str(c.address.ip)) == "MASQUERADE"


def hairpin(t: S.Topology, src: str, dst: str) -> bool:
    """Does ``src`` reach ``dst`` through a DNAT on the host (a published port, a VIP), reply included?

    The model traces ``src`` to the host's address through a DNAT to ``dst`` added to the planned
    rules: the DNATed request must be routed (ip_forward, FORWARD), and on one bridge the reply
    must pass the host's conntrack to be un-NATed (br_netfilter, or a MASQUERADE that sends it
    back through the host).
    """
    target = t.container(dst).address
    if target is None or t.container(src).address is None:
        return False
    p = P.planned_plan(t)
    base = P.planned(t)
    host_ip = str(t.host.address.ip)
    extra = P.dnat_rule("PREROUTING", host_ip, "tcp", HAIRPIN_PORT, str(target.ip), P.ECHO_PORT)
    ns = tuple(replace(n, ruleset=P.planned_ruleset(p, [extra])) if n.label == "host" else n for n in base.namespaces)
    return trace(replace(base, namespaces=ns), Flow(src, host_ip, "tcp", HAIRPIN_PORT)).delivered


def published_from_outside(t: S.Topology, p: S.Publish) -> bool:
    """Does the outside world reach a published port (PREROUTING DNAT, then routed from the uplink), reply included?"""
    return P.delivered(t, "wan", t.host.address.ip, p.protocol, p.host_port)


def published_from_container(t: S.Topology, p: S.Publish, src: str) -> bool:
    """Does container ``src`` reach a published port through the host's address (PREROUTING DNAT, then a hairpin)?"""
    return t.container(src).address is not None and P.delivered(t, src, t.host.address.ip, p.protocol, p.host_port)


def vip_from_container(t: S.Topology, v: S.Vip, src: str) -> bool:
    """Does container ``src`` reach a VIP (PREROUTING jumps to its chain, then a hairpin to the container behind it)?"""
    return t.container(src).address is not None and P.delivered(t, src, v.address, v.protocol, v.port)
