"""The bridge: every container reaches every other one and the bridge, ARP (IPv6: NDP) and the fdb are right, per address family."""

from __future__ import annotations

import pytest

from netcheck import expect as promise
from netcheck.checks import expect_all, not_seen, seen

pytestmark = pytest.mark.netcheck_property("bridge")


def _bridges(lab):
    t = lab.topology
    bridges = [b for b in t.bridges if t.members(b.name)]
    if not bridges:
        pytest.skip(f"{t.name} has no bridge with containers")
    return bridges


def _members(t, bridge, family):
    return [c for c in t.members(bridge) if c.at(family) is not None]


def test_full_matrix_on_each_bridge(lab, probe, family):
    """Every member pings every other member and the bridge address (the full matrix).

    A pair the spec's FORWARD rules keep apart (bridged frames pass FORWARD when
    bridge-nf-call-iptables is 1) must be blocked: its ping is seen leaving, and never arriving.
    """
    t = lab.topology
    calls = []
    for b in _bridges(lab):
        members = _members(t, b.name, family)
        for a in members:
            if b.at(family) is not None:
                calls.append(lambda a=a, b=b: probe.icmp(a.name, b.at(family).ip, capture=[f"host:{a.host_veth}"]))
            for z in members:
                if z.name == a.name:
                    continue
                if promise.reaches(t, a.name, z.name, family):
                    calls.append(lambda a=a, z=z: probe.icmp(a.name, z.at(family).ip, target=z.name, capture=[lab.point(z.name)]))
                else:
                    calls.append(lambda a=a, z=z: probe.icmp(a.name, z.at(family).ip, target=z.name, expect="block", capture=[f"host:{a.host_veth}", lab.point(z.name)]))
    if not calls:
        pytest.skip(f"{t.name}: no bridge member has an IPv{family} address")
    results = probe.many(calls)
    expect_all(results, "bridge matrix, as the spec's FORWARD rules allow it")
    for r in results:
        point = r.captures[0].point
        seen(r, point, dst=r.destination)
        if r.expected == "block":
            not_seen(r, r.captures[1].point)


def test_arp_resolves_to_the_right_mac(lab, probe, family):
    """ARP for IPv4, NDP (a neighbour solicitation, answered by an advertisement) for IPv6."""
    t = lab.topology
    what = "NDP" if family == 6 else "ARP"
    results = []
    for b in _bridges(lab):
        members = _members(t, b.name, family)
        for a in members:
            for z in members:
                if z.name == a.name:
                    continue
                mac = lab.container_ns(z.name).link(z.interface).mac
                r = probe.neighbour(a.name, z.at(family).ip, target=z.name, capture=[f"host:{z.host_veth}"])
                results.append(r)
                assert r.reply == mac, f"{what} from {a.name} for {z.at(family).ip} answered {r.reply}; {z.name}'s {z.interface} has {mac}\n{r.explain()}"
                seen(r, f"host:{z.host_veth}", role="request")
    if not results and not any(len(_members(t, b.name, family)) > 1 for b in t.bridges):
        pytest.skip(f"{t.name}: no two containers share a bridge{promise.over(family)}")
    expect_all(results, what)


def test_fdb_learns_each_mac_on_its_port(lab, probe, family):
    t = lab.topology
    for b in _bridges(lab):
        members = _members(t, b.name, family)
        if not members:
            pytest.skip(f"{t.name}: no member of {b.name} has an IPv{family} address")
        for c in members:
            near = b.at(family) or c.at(family)
            probe.icmp(c.name, near.ip)
        fdb = lab.host.fdb()
        for c in members:
            mac = lab.container_ns(c.name).link(c.interface).mac
            ports = sorted({e.port for e in fdb if e.mac == mac and not e.local})
            want = lab.kname(c.host_veth)
            assert ports == [want], f"bridge {b.name}: {c.name}'s MAC {mac} learned on {[lab.spec_name(p) for p in ports] or 'no port'}, expected {c.host_veth}"
