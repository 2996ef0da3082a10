"""What a topology promises: which flows should pass, computed from the spec alone."""

from __future__ import annotations

from netcheck import spec as S


def host_side(t: S.Topology, container: str) -> str:
    """The host interface (spec name) a container's traffic enters the host by."""
    c = t.container(container)
    return c.bridge or c.host_veth


def forward_allowed(t: S.Topology, in_iface: str, out_iface: str) -> bool:
    """Does the host's filter FORWARD chain, as declared, accept in_iface -> out_iface?"""
    for f in t.forward_accepts:
        if (f.in_interface in (None, in_iface)) and (f.out_interface in (None, out_iface)):
            return True
    return t.host.forward_policy == "ACCEPT"


def same_l2(t: S.Topology, a: str, b: str) -> bool:
    ca, cb = t.container(a), t.container(b)
    return ca.bridge is not None and ca.bridge == cb.bridge


def reaches(t: S.Topology, a: str, b: str) -> bool:
    """Should container ``a`` reach container ``b`` by its address?"""
    if same_l2(t, a, b):
        # Bridged traffic passes the FORWARD chain when bridge-nf-call-iptables is 1.
        if t.host.sysctl("net.bridge.bridge-nf-call-iptables") == 0:
            return True
        br = t.container(a).bridge
        assert br is not None
        return forward_allowed(t, br, br)
    if t.host.sysctl("net.ipv4.ip_forward") != 1:
        return False
    return forward_allowed(t, host_side(t, a), host_side(t, b)) and forward_allowed(t, host_side(t, b), host_side(t, a))


def reaches_outside(t: S.Topology, a: str) -> bool:
    """Should container ``a`` reach the outside world (with a reply coming back)?"""
    c = t.container(a)
    if c.gateway is None or t.host.sysctl("net.ipv4.ip_forward") != 1:
        return False
    side = host_side(t, a)
    if not (forward_allowed(t, side, t.host.uplink) and forward_allowed(t, t.host.uplink, side)):
        return False
    return masqueraded(t, a)


def masqueraded(t: S.Topology, a: str, out: str | None = None) -> bool:
    """Does a MASQUERADE rule rewrite ``a``'s packets leaving by ``out`` (default: the uplink)?"""
    c = t.container(a)
    out = out or t.host.uplink
    for m in t.masquerades:
        if m.source is not None and (c.address is None or c.address.ip not in m.source):
            continue
        if m.out_interface is not None and m.out_interface != out:
            continue
        if m.not_out_interface is not None and m.not_out_interface == out:
            continue
        return True
    return False


def hairpin(t: S.Topology, src: str, dst: str) -> bool:
    """Does a DNAT from ``src`` to ``dst`` on the same bridge get its reply un-NATed?

    The reply goes straight across the bridge unless br_netfilter hands bridged frames to
    iptables (bridge-nf-call-iptables=1), or a MASQUERADE rewrote the request so the reply
    returns through the host.
    """
    if not same_l2(t, src, dst):
        return True
    bridge = t.container(src).bridge
    return t.host.sysctl("net.bridge.bridge-nf-call-iptables") != 0 or masqueraded(t, src, out=bridge)
