"""What a topology promises: which flows should pass, computed from the spec alone.

One function answers each question, from the spec's rules (sysctls, the FORWARD policy and
accepts, MASQUERADE, DNAT), so that the suites, the matrix and the diagnosis all expect the same.
Each takes the address family (4 or 6; IPv4 unless given): IPv6 has its own forwarding sysctl,
its own bridge-nf sysctl, and its own MASQUERADE rules (ip6tables).
"""

from __future__ import annotations

from netcheck import spec as S


def host_side(t: S.Topology, container: str) -> str:
    """The host interface (spec name) a container's traffic enters the host by."""
    c = t.container(container)
    return c.bridge or c.host_veth


def forward_allowed(t: S.Topology, in_iface: str, out_iface: str) -> bool:
    """Does the host's filter FORWARD chain, as declared, accept in_iface -> out_iface? (The same in ip6tables.)"""
    for f in t.forward_accepts:
        if (f.in_interface in (None, in_iface)) and (f.out_interface in (None, out_iface)):
            return True
    return t.host.forward_policy == "ACCEPT"


def routed(t: S.Topology, in_iface: str, out_iface: str, family: S.Family = 4) -> bool:
    """Does the host route packets from in_iface to out_iface and their replies back (ip_forward or IPv6 forwarding, FORWARD both ways)?"""
    return t.host.forwarding(family) and forward_allowed(t, in_iface, out_iface) and forward_allowed(t, out_iface, in_iface)


def same_l2(t: S.Topology, a: str, b: str) -> bool:
    ca, cb = t.container(a), t.container(b)
    return ca.bridge is not None and ca.bridge == cb.bridge


def reaches(t: S.Topology, a: str, b: str, family: S.Family = 4) -> bool:
    """Should container ``a`` reach container ``b`` by its address (of ``family``)?"""
    if same_l2(t, a, b):
        # Bridged traffic passes the FORWARD chain when bridge-nf-call-iptables (ip6tables) is 1.
        if t.host.sysctl(S.BRIDGE_NF_SYSCTL[family]) == 0:
            return True
        br = t.container(a).bridge
        assert br is not None
        return forward_allowed(t, br, br)
    return routed(t, host_side(t, a), host_side(t, b), family)


def reaches_outside(t: S.Topology, a: str, family: S.Family = 4) -> bool:
    """Should container ``a`` reach the outside world (with a reply coming back)?"""
    c = t.container(a)
    if c.gateway_at(family) is None or not t.wan.remote_at(family) or not routed(t, host_side(t, a), t.host.uplink, family):
        return False
    return masqueraded(t, a, family=family)


def masqueraded(t: S.Topology, a: str, out: str | None = None, family: S.Family = 4) -> bool:
    """Does a MASQUERADE rule (of ``family``) rewrite ``a``'s packets leaving by ``out`` (default: the uplink)?"""
    c = t.container(a)
    address = c.at(family)
    out = out or t.host.uplink
    for m in t.masquerades:
        if m.family != family:
            continue
        if m.source is not None and (address is None or address.ip not in m.source):
            continue
        if m.out_interface is not None and m.out_interface != out:
            continue
        if m.not_out_interface is not None and m.not_out_interface == out:
            continue
        return True
    return False


def hairpin(t: S.Topology, src: str, dst: str, family: S.Family = 4) -> bool:
    """Does ``src`` reach ``dst`` through a DNAT on the host (a published port, a VIP), reply included?

    The DNATed request is routed from ``src``'s side of the host to ``dst``'s, so it needs
    ip_forward and the FORWARD chain's accept (on one bridge: in and out by that bridge). On one
    bridge, the reply goes straight across it unless br_netfilter hands bridged frames to iptables
    (bridge-nf-call-iptables=1), or a MASQUERADE rewrote the request so the reply returns through
    the host.
    """
    if not routed(t, host_side(t, src), host_side(t, dst), family):
        return False
    if not same_l2(t, src, dst):
        return True
    bridge = t.container(src).bridge
    return t.host.sysctl(S.BRIDGE_NF_SYSCTL[family]) != 0 or masqueraded(t, src, out=bridge, family=family)


def published_from_outside(t: S.Topology, p: S.Publish, family: S.Family = 4) -> bool:
    """Does the outside world reach a published port (PREROUTING DNAT, then routed from the uplink)? Not one bound to 127.0.0.1."""
    return p.from_outside and not p.loopback and published(t, p, family) and routed(t, t.host.uplink, host_side(t, p.container), family)


def published_from_host(t: S.Topology, p: S.Publish, family: S.Family = 4) -> bool:
    """Does the host reach a published port (OUTPUT DNAT)? Bound to 127.0.0.1, only with route_localnet (the loopback source leaves lo)."""
    return p.from_host and published(t, p, family) and (not p.loopback or t.host.sysctl("net.ipv4.conf.all.route_localnet") == 1)


def published_from_container(t: S.Topology, p: S.Publish, src: str, family: S.Family = 4) -> bool:
    """Does container ``src`` reach a published port through the host's address (PREROUTING DNAT, then a hairpin)?"""
    return p.from_outside and not p.loopback and published(t, p, family) and hairpin(t, src, p.container, family)


def published_to_itself(t: S.Topology, p: S.Publish, family: S.Family = 4) -> bool:
    """Does a container reach its own published port? The DNATed request goes back out by its own side of the host, so it needs the
    hairpin MASQUERADE (Docker's -s C -d C): without it, the container sees its own address as the source and drops it as a martian."""
    side = host_side(t, p.container)
    return p.from_outside and not p.loopback and p.hairpin and published(t, p, family) and routed(t, side, side, family)


def published(t: S.Topology, p: S.Publish, family: S.Family = 4) -> bool:
    """Is the port published on this family? (On every family its container and the host's uplink have an address of.)"""
    return t.container(p.container).at(family) is not None and t.host.at(family) is not None


def vip_from_container(t: S.Topology, v: S.Vip, src: str, family: S.Family = 4) -> bool:
    """Does container ``src`` reach a VIP (PREROUTING jumps to its chain, then a hairpin to the container behind it)?"""
    return v.from_outside and v.at(family) is not None and hairpin(t, src, v.container, family)


DEFAULT_MTU = 1500  # the kernel's for a veth and a bridge; a container's ``mtu`` overrides it


def path_mtu(t: S.Topology, a: str) -> int:
    """The largest packet container ``a`` sends to the outside without fragmenting: its veth's MTU (the spec's, else the
    kernel's). The spec gives no other link of the path a smaller one, so no link may carry less."""
    return t.container(a).mtu or DEFAULT_MTU


def remote(t: S.Topology, family: S.Family = 4) -> S.IPAddr:
    """The outside world's address the suites probe (its first remote one of ``family``)."""
    return t.wan.remote_at(family)[0].ip


def over(family: S.Family) -> str:
    """" over IPv6" for messages about the IPv6 run of a test; nothing for IPv4 (its messages stay as they were)."""
    return " over IPv6" if family == 6 else ""
