"""What a topology promises: which flows should pass, answered by the datapath model on the planned state.

Each question is a flow traced by ``netcheck.datapath`` through the state a sandbox build of the
spec will have (``netcheck.lab.plan.planned``: its addresses and routes of both families, sysctls,
bridge ports, and the rules the builder writes, in iptables and ip6tables), so that the suites, the
port matrix and the diagnosis all expect what the one model of the datapath says, and a spec's
FORWARD policy, accepts, br_netfilter, MASQUERADE, DNAT, binds, ranges, protocols and hairpin
settings all count without a special case here. Each takes the address family (4 or 6; IPv4 unless
given).

The planned state holds only netcheck's own rules, all of which the model models, so its traces end
delivered or in a named drop. Should one end "unknown", the question's answer is False: the flow is
not promised, so the suites skip it or probe it as "observe" (a published port's access paths, a VIP
from a container) or "block" (the bridge and isolation matrices, the port matrix);
tests/test_datapath.py asserts that no planned question of a built-in or example ends unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from netcheck import spec as host_spec
from netcheck.datapath import model
from netcheck.datapath.planned import ECHO_PORT, bound_addresses, dnat_rule, host_side, planned, planned_plan, planned_ruleset, planned_trace
from netcheck.datapath.values import Flow, State, Trace

PROBE_PORT = 65000  # the port of the DNAT that ``hairpin`` adds to the planned state (a question about any published port)


def forward_allowed(t: host_spec.Topology, in_iface: str, out_iface: str, family: host_spec.Family = 4) -> bool:
    """Does the host's filter FORWARD chain (of ``family``) accept a new packet in by in_iface and out by out_iface?"""
    state, knames = _planned(t)
    src, dst = ("::", "::") if family == 6 else ("0.0.0.0", "0.0.0.0")
    return model.chain_verdict(state, "host", "forward", src, dst, knames[in_iface], knames[out_iface]) == "ACCEPT"


def routed(t: host_spec.Topology, in_iface: str, out_iface: str, family: host_spec.Family = 4) -> bool:
    """Does the host route packets from in_iface to out_iface and their replies back (the family's forwarding sysctl, FORWARD both ways)?"""
    state, knames = _planned(t)
    host = state.ns("host")
    assert host is not None
    on, _by = host.forwarding(knames[in_iface], family)
    return on and forward_allowed(t, in_iface, out_iface, family) and forward_allowed(t, out_iface, in_iface, family)


def same_l2(t: host_spec.Topology, a: str, b: str) -> bool:
    ca, cb = t.container(a), t.container(b)
    return ca.bridge is not None and ca.bridge == cb.bridge


def reaches(t: host_spec.Topology, a: str, b: str, family: host_spec.Family = 4) -> bool:
    """Should container ``a`` reach container ``b`` by its address (of ``family``)? An echo request, and its reply."""
    address = t.container(b).at(family)
    return address is not None and _answers(t, Flow(a, str(address.ip), "icmp"), b)


def reaches_outside(t: host_spec.Topology, a: str, family: host_spec.Family = 4) -> bool:
    """Should container ``a`` reach the outside world (with a reply coming back)?"""
    remotes = t.wan.remote_at(family)
    return bool(remotes) and _answers(t, Flow(a, str(remotes[0].ip), "icmp"), "wan")


def masqueraded(t: host_spec.Topology, a: str, out: str | None = None, family: host_spec.Family = 4) -> bool:
    """Does a MASQUERADE rule (of ``family``) rewrite ``a``'s packets leaving the host by ``out`` (default: the uplink)?"""
    address = t.container(a).at(family)
    if address is None:
        return False
    state, knames = _planned(t)
    remotes = t.wan.remote_at(family)
    dst = str(remotes[0].ip) if remotes else ("2001:db8::1" if family == 6 else "198.51.100.1")
    return model.chain_verdict(state, "host", "postrouting", str(address.ip), dst, None, knames[out or t.host.uplink]) == "MASQUERADE"


def hairpin(t: host_spec.Topology, src: str, dst: str, family: host_spec.Family = 4) -> bool:
    """Does ``src`` reach ``dst`` through a DNAT on the host (a published port, a VIP), reply included?

    Traced with a DNAT of the host's uplink address (a TCP port no publish uses) to ``dst``'s echo
    responder added to the planned rules: the DNATed request is routed (or, on one bridge with
    br_netfilter, bridged) to ``dst``'s side, and its reply must come back through the host to be
    un-NATed (br_netfilter, or a MASQUERADE of the request)."""
    to, up = t.container(dst).at(family), t.host.at(family)
    if to is None or up is None:
        return False
    p, state = planned_plan(t), planned(t)
    rule = dnat_rule("PREROUTING", str(up.ip), "tcp", PROBE_PORT, str(to.ip), ECHO_PORT)
    with_dnat = replace(state, namespaces=tuple(replace(n, ruleset=planned_ruleset(p, [rule])) if n.label == "host" else n for n in state.namespaces))
    return _delivered(model.trace(with_dnat, Flow(src, str(up.ip), "tcp", PROBE_PORT)), dst)


def published_from_outside(t: host_spec.Topology, p: host_spec.Publish, family: host_spec.Family = 4) -> bool:
    """Does the outside world reach a published port (PREROUTING DNAT, then routed from the uplink), at the address it is bound to?
    One bound to 127.0.0.1 is asked at the uplink's address, where it must not answer."""
    return published(t, p, family) and _reach_publish(t, p, "wan", _outside_dst(t, p, family))


def published_from_host(t: host_spec.Topology, p: host_spec.Publish, family: host_spec.Family = 4) -> bool:
    """Does the host reach a published port (OUTPUT DNAT)? Bound to 127.0.0.1, only with route_localnet (the loopback source leaves lo)
    and the MASQUERADE of 127.0.0.0/8 (the reply comes back to the host)."""
    return published(t, p, family) and _reach_publish(t, p, "host", _host_dst(t, p, family))


def published_from_container(t: host_spec.Topology, p: host_spec.Publish, src: str, family: host_spec.Family = 4) -> bool:
    """Does container ``src`` reach a published port through the host's address (PREROUTING DNAT, then a hairpin)?"""
    return published(t, p, family) and t.container(src).at(family) is not None and _reach_publish(t, p, src, _outside_dst(t, p, family))


def published_to_itself(t: host_spec.Topology, p: host_spec.Publish, family: host_spec.Family = 4) -> bool:
    """Does a container reach its own published port? The DNATed request goes back out by its own side of the host, so it needs the
    hairpin MASQUERADE (Docker's -s C -d C), and with br_netfilter its bridge port in hairpin mode: without them, it sees its own
    address as the source (a martian), or the bridge does not send the frame back out the port it came in by."""
    return published(t, p, family) and _reach_publish(t, p, p.container, _outside_dst(t, p, family))


def published(t: host_spec.Topology, p: host_spec.Publish, family: host_spec.Family = 4) -> bool:
    """Is the port published on this family? (On every family its container has an address of and the host one to bind it to:
    none given, the uplink's; the wildcard, every one it holds; else the one given, of that family alone.)"""
    return t.container(p.container).at(family) is not None and bool(bound_addresses(t, p, family))


def vip_from_container(t: host_spec.Topology, v: host_spec.Vip, src: str, family: host_spec.Family = 4) -> bool:
    """Does container ``src`` reach a VIP (PREROUTING jumps to its chain, then a hairpin to the container behind it)?"""
    address = v.at(family)
    return address is not None and t.container(src).at(family) is not None and _answers(t, Flow(src, str(address), v.protocol, v.port), v.container)


DEFAULT_MTU = 1500  # the kernel's for a veth and a bridge; a container's ``mtu`` overrides it


def path_mtu(t: host_spec.Topology, a: str) -> int:
    """The largest packet container ``a`` sends to the outside without fragmenting: its veth's MTU (the spec's, else the
    kernel's). The spec gives no other link of the path a smaller one, so no link may carry less."""
    return t.container(a).mtu or DEFAULT_MTU


def remote(t: host_spec.Topology, family: host_spec.Family = 4) -> host_spec.IPAddr:
    """The outside world's address the suites probe (its first remote one of ``family``)."""
    return t.wan.remote_at(family)[0].ip


def over(family: host_spec.Family) -> str:
    """" over IPv6" for messages about the IPv6 run of a test; nothing for IPv4 (its messages stay as they were)."""
    return " over IPv6" if family == 6 else ""


# ----------------------------------------------------------------------------- the model's answers


def trace_of(t: host_spec.Topology, flow: Flow) -> Trace:
    """The model's trace of ``flow`` on the planned state of ``t`` (what every answer here reads)."""
    return planned_trace(t, flow)


def _answers(t: host_spec.Topology, flow: Flow, target: str) -> bool:
    return _delivered(trace_of(t, flow), target)


def _delivered(tr: Trace, target: str) -> bool:
    """Delivered to ``target`` (its listener answered, or for a request-only flow, the request arrived there). Unknown: not promised."""
    return tr.delivered and tr.target == target


def _reach_publish(t: host_spec.Topology, p: host_spec.Publish, src: str, dst: host_spec.IPAddr | None) -> bool:
    """Does ``src`` reach the published port at ``dst``, on its first and its last port (a range's every port has its own DNAT)?
    SCTP is proven by its INIT's arrival (no SCTP service runs), the others by the service's answer."""
    if dst is None:
        return False
    ports = sorted({p.host_ports[0], p.host_ports[-1]})
    return all(_answers(t, Flow(src, str(dst), p.protocol, port, reply=p.protocol != "sctp"), p.container) for port in ports)


def _outside_dst(t: host_spec.Topology, p: host_spec.Publish, family: host_spec.Family) -> host_spec.IPAddr | None:
    """Where the outside and the containers address a published port: the address it is bound to, else (none given, the wildcard,
    127.0.0.1) the uplink's."""
    up = t.host.at(family)
    if p.host_address is not None and not p.wildcard and not p.loopback:
        return p.host_address if p.host_address.version == family else None
    return up.ip if up is not None else None


def _host_dst(t: host_spec.Topology, p: host_spec.Publish, family: host_spec.Family) -> host_spec.IPAddr | None:
    """Where the host addresses a published port: the address it is bound to (127.0.0.1 too), else the uplink's."""
    if p.loopback:
        return p.host_address if p.host_address is not None and p.host_address.version == family else None
    return _outside_dst(t, p, family)


def _planned(t: host_spec.Topology) -> tuple[State, Mapping[str, str]]:
    """The planned state of ``t`` and its host interfaces' kernel names (spec name -> planned name)."""
    return planned(t), planned_plan(t).knames


__all__ = [
    "forward_allowed", "hairpin", "host_side", "masqueraded", "over", "published", "published_from_container", "published_from_host", "published_from_outside",
    "published_to_itself", "reaches", "reaches_outside", "remote", "routed", "same_l2", "trace_of", "vip_from_container",
]
