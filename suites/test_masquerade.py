"""Masquerade: the outside world sees the host's address, replies come back, local traffic keeps its source."""

from __future__ import annotations

import pytest

from netcheck import expect as promise
from netcheck.checks import expect, seen
from netcheck.lifecycle import LONG_LIVED_UDP_PORT

pytestmark = pytest.mark.netcheck_property("masquerade")


def _masqueraded(lab):
    t = lab.topology
    names = [c.name for c in t.containers if promise.masqueraded(t, c.name) and c.gateway]
    if not names:
        pytest.skip(f"{t.name}: no container is masqueraded on the way out")
    return names


def test_outside_sees_the_host_uplink_address(lab, probe):
    t = lab.topology
    host_ip = str(t.host.address.ip)
    remote = str(t.wan.remote[0].ip)
    for name in _masqueraded(lab):
        r = expect(probe.tcp(name, remote, 7, target="wan", capture=[lab.point(name), "wan:uplink"]))
        seen(r, lab.point(name), src=str(t.container(name).address.ip))
        seen(r, "wan:uplink", src=host_ip)
        assert r.service_saw and r.service_saw.split(":")[0] == host_ip, f"{name}: the outside service saw {r.service_saw}, expected {host_ip}\n{r.explain()}"
        seen(r, lab.point(name), role="reply", dst=str(t.container(name).address.ip))


def test_icmp_is_masqueraded_too(lab, probe):
    t = lab.topology
    for name in _masqueraded(lab):
        r = expect(probe.icmp(name, t.wan.remote[0].ip, capture=["wan:uplink"]))
        seen(r, "wan:uplink", src=str(t.host.address.ip))


def test_a_long_lived_udp_flow_is_masqueraded(lab, probe):
    """A UDP flow from a fixed port (a forwarder's) leaves masqueraded too. Conntrack decides a flow's NAT at its
    first packet: an entry made while the MASQUERADE rule was missing keeps the flow private afterwards. (To the
    outside world's uplink address, the gateway: its UDP echo answers from the address it was asked on only there.)"""
    t = lab.topology
    for name in _masqueraded(lab)[:1]:  # one client: a second flow from the same port would have its port remapped by the NAT
        r = expect(probe.udp(name, t.host.gateway, 7, target="wan", capture=["wan:uplink"], source_port=LONG_LIVED_UDP_PORT))
        seen(r, "wan:uplink", src=str(t.host.address.ip))


def test_bridge_local_source_is_as_the_rules_say(lab, probe):
    """Seed 1's `! -o br0` keeps bridge-local sources; a bare `-s SUBNET` rule (seed 2) also
    rewrites them to the bridge address, since br_netfilter runs nat POSTROUTING on bridged frames."""
    t = lab.topology
    pairs = [(a.name, b.name) for a in t.containers for b in t.containers if a.name != b.name and promise.same_l2(t, a.name, b.name) and promise.reaches(t, a.name, b.name)]
    if not pairs:
        pytest.skip(f"{t.name}: no two containers share a bridge and may reach each other")
    for a, b in pairs:
        ca = t.container(a)
        rewritten = t.host.sysctl("net.bridge.bridge-nf-call-iptables") != 0 and promise.masqueraded(t, a, out=ca.bridge)
        want = str(t.bridge(ca.bridge).address.ip) if rewritten else str(ca.address.ip)
        why = f"rewritten to the bridge address by a MASQUERADE rule that does not exclude {ca.bridge}" if rewritten else "kept"
        r = expect(probe.tcp(a, t.container(b).address.ip, 7, target=b, capture=[lab.point(a), lab.point(b)]))
        seen(r, lab.point(a), src=str(ca.address.ip))
        seen(r, lab.point(b), src=want)
        assert r.service_saw.split(":")[0] == want, f"{b} saw {a} as {r.service_saw}; the rules say its source is {why}: {want}\n{r.explain()}"
