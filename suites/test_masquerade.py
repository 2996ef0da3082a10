"""Masquerade: the outside world sees the host's address, replies come back, local traffic keeps its source."""

from __future__ import annotations

import pytest

from netcheck import expect as promise
from netcheck import spec
from netcheck.checks import expect, seen
from netcheck.lifecycle import LONG_LIVED_UDP_PORT

pytestmark = pytest.mark.netcheck_property("masquerade")


def _masqueraded(lab, family):
    t = lab.topology
    names = [c.name for c in t.containers if promise.masqueraded(t, c.name, family=family) and c.gateway_at(family)]
    if not names:
        pytest.skip(f"{t.name}: no container is masqueraded on the way out{promise.over(family)}")
    return names


def _host_address(t, family):
    """What the outside world should see: the source the host itself would use towards it (its uplink address)."""
    return str(t.host.at(family).ip)


def _saw(r):
    """The address a service reported seeing (IPv6 ones hold colons: the port is after the last)."""
    return r.service_saw.rsplit(":", 1)[0] if r.service_saw else None


def test_outside_sees_the_host_uplink_address(lab, probe, family):
    t = lab.topology
    host_ip = _host_address(t, family)
    remote = str(promise.remote(t, family))
    for name in _masqueraded(lab, family):
        own = str(t.container(name).at(family).ip)
        r = expect(probe.tcp(name, remote, 7, target="wan", capture=[lab.point(name), "wan:uplink"]))
        seen(r, lab.point(name), src=own)
        seen(r, "wan:uplink", src=host_ip)
        assert _saw(r) == host_ip, f"{name}: the outside service saw {r.service_saw}, expected {host_ip}\n{r.explain()}"
        seen(r, lab.point(name), role="reply", dst=own)


def test_icmp_is_masqueraded_too(lab, probe, family):
    t = lab.topology
    for name in _masqueraded(lab, family):
        r = expect(probe.icmp(name, promise.remote(t, family), capture=["wan:uplink"]))
        seen(r, "wan:uplink", src=_host_address(t, family))


def test_a_long_lived_udp_flow_is_masqueraded(lab, probe):
    """A UDP flow from a fixed port (a forwarder's) leaves masqueraded too. Conntrack decides a flow's NAT at its
    first packet: an entry made while the MASQUERADE rule was missing keeps the flow private afterwards. (To the
    outside world's uplink address, the gateway: its UDP echo answers from the address it was asked on only there.)"""
    t = lab.topology
    for name in _masqueraded(lab, 4)[:1]:  # IPv4 (the fault it catches is conntrack's, family-blind); one client: a second flow from the same port would have its port remapped by the NAT
        r = expect(probe.udp(name, t.host.gateway, 7, target="wan", capture=["wan:uplink"], source_port=LONG_LIVED_UDP_PORT))
        seen(r, "wan:uplink", src=str(t.host.address.ip))


def test_bridge_local_source_is_as_the_rules_say(lab, probe, family):
    """Seed 1's `! -o br0` keeps bridge-local sources; a bare `-s SUBNET` rule (seed 2) also
    rewrites them to the bridge address, since br_netfilter runs nat POSTROUTING on bridged frames."""
    t = lab.topology
    pairs = [(a.name, b.name) for a in t.containers for b in t.containers
             if a.name != b.name and a.at(family) and b.at(family) and promise.same_l2(t, a.name, b.name) and promise.reaches(t, a.name, b.name, family)]
    if not pairs:
        pytest.skip(f"{t.name}: no two containers share a bridge and may reach each other{promise.over(family)}")
    for a, b in pairs:
        ca = t.container(a)
        own = str(ca.at(family).ip)
        rewritten = t.host.sysctl(spec.BRIDGE_NF_SYSCTL[family]) != 0 and promise.masqueraded(t, a, out=ca.bridge, family=family)
        want = str(t.bridge(ca.bridge).at(family).ip) if rewritten else own
        why = f"rewritten to the bridge address by a MASQUERADE rule that does not exclude {ca.bridge}" if rewritten else "kept"
        r = expect(probe.tcp(a, t.container(b).at(family).ip, 7, target=b, capture=[lab.point(a), lab.point(b)]))
        seen(r, lab.point(a), src=own)
        seen(r, lab.point(b), src=want)
        assert _saw(r) == want, f"{b} saw {a} as {r.service_saw}; the rules say its source is {why}: {want}\n{r.explain()}"
