"""veth pairs: both ends up, addressed, same MTU, and carrying traffic both ways."""

from __future__ import annotations

import socket

import pytest

from netcheck import expect as promise
from netcheck.checks import expect, seen

pytestmark = pytest.mark.netcheck_property("veth")


def test_both_ends_up_addressed_and_same_mtu(lab):
    for c in lab.topology.containers:
        inner = lab.container_ns(c.name).link(c.interface)
        outer = lab.host.link(lab.kname(c.host_veth))
        assert inner is not None, f"{c.name}: interface {c.interface} is missing"
        assert outer is not None, f"host: veth {c.host_veth} of {c.name} is missing"
        assert inner.kind == outer.kind == "veth", f"{c.name}: {c.interface} is a {inner.kind}, {c.host_veth} a {outer.kind}; both must be veth"
        assert outer.up, f"host: {c.host_veth} ({outer.name}), the host end of {c.name}'s veth, is {'admin down' if not outer.admin_up else outer.operstate}"
        assert inner.up, f"{c.name}: {c.interface}, the container end of veth {c.host_veth}, is {'admin down' if not inner.admin_up else inner.operstate}"
        assert inner.mtu == outer.mtu, f"{c.name}: MTU {inner.mtu} inside but {outer.mtu} on {c.host_veth}"
        assert inner.peer_index == outer.index, f"{c.name}: {c.interface} is not the peer of {c.host_veth}"
        addrs = [a.address for a in lab.container_ns(c.name).addresses() if a.interface == c.interface]
        assert addrs == [c.address], f"{c.name}: {c.interface} has {addrs}, declared {c.address}"
        if c.address6 is not None:  # dual stack: its IPv6 address, beside the link-local one every interface has
            addrs6 = [a.address for a in lab.container_ns(c.name).addresses(socket.AF_INET6) if a.interface == c.interface and not a.address.ip.is_link_local]
            assert addrs6 == [c.address6], f"{c.name}: {c.interface} has IPv6 {addrs6}, declared {c.address6}"


def test_icmp_crosses_the_pair_both_ways(lab, probe, family):
    for c in lab.topology.containers:
        own = c.at(family)
        if family == 6:
            near_iface = lab.topology.bridge(c.bridge).address6 if c.bridge and own is not None else None
        else:
            near_iface = c.host_address or (lab.topology.bridge(c.bridge).address if c.bridge else None)
        if near_iface is None or own is None:
            pytest.skip(f"{c.name}: its host side has no address{promise.over(family)} to ping")
        near = near_iface.ip
        outer = f"host:{c.host_veth}"
        r = expect(probe.icmp(c.name, near, capture=[lab.point(c.name), outer]))
        seen(r, lab.point(c.name), src=str(own.ip), dst=str(near))
        seen(r, outer, src=str(own.ip), dst=str(near))
        seen(r, outer, role="reply", src=str(near), dst=str(own.ip))
        back = expect(probe.icmp("host", own.ip, target=c.name, capture=[outer, lab.point(c.name)]))
        seen(back, lab.point(c.name), dst=str(own.ip))


def test_container_loopback_carries_traffic(lab, probe, family):
    """lo must be up inside each container: local services talk over it (127.0.0.1, and ::1 on a dual-stack one)."""
    loopback = "::1" if family == 6 else "127.0.0.1"
    for c in lab.topology.containers:
        r = expect(probe.tcp(c.name, loopback, 7, target=c.name, capture=[f"{c.name}:lo"]))
        seen(r, f"{c.name}:lo", dst=loopback, dport=7)


def test_routed_veth_reaches_host_and_outside(lab, probe):
    """Seed 2's first section: a single veth, no bridge, a route and FORWARD rules."""
    routed = [c for c in lab.topology.containers if c.bridge is None]
    if not routed:
        pytest.skip(f"{lab.topology.name} has no routed (bridge-less) container")
    remote = lab.topology.wan.remote[0].ip
    for c in routed:
        expect(probe.icmp(c.name, c.host_address.ip, capture=[f"host:{c.host_veth}"]))
        r = expect(probe.icmp(c.name, remote, capture=[f"host:{c.host_veth}", "wan:uplink"]))
        seen(r, "wan:uplink", dst=str(remote))
