"""Forwarding: containers reach the outside world through the host, one routed hop (per address family)."""

from __future__ import annotations

import socket

import pytest

from netcheck import expect as promise
from netcheck.checks import expect, seen

pytestmark = pytest.mark.netcheck_property("forwarding")


def _outbound(lab, family):
    t = lab.topology
    names = [c.name for c in t.containers if promise.reaches_outside(t, c.name, family)]
    if not names:
        pytest.skip(f"{t.name}: no container is declared to reach the outside{promise.over(family)}")
    return names


def test_container_reaches_the_outside_through_the_host(lab, probe, family):
    remote = promise.remote(lab.topology, family)
    for name in _outbound(lab, family):
        r = expect(probe.icmp(name, remote, capture=[lab.point(name), "wan:uplink"]))
        seen(r, "wan:uplink", dst=str(remote))
        seen(r, lab.point(name), role="reply", src=str(remote))


def test_ttl_drops_by_exactly_one_at_the_host(lab, probe, family):
    """The TTL (IPv6: the hop limit) drops by exactly one: one routed hop."""
    remote = promise.remote(lab.topology, family)
    what = "hop limit" if family == 6 else "TTL"
    for name in _outbound(lab, family):
        r = expect(probe.icmp(name, remote, capture=[lab.point(name), "wan:uplink"]))
        before = seen(r, lab.point(name)).ttl
        after = seen(r, "wan:uplink").ttl
        assert before - after == 1, f"{name}: {what} {before} leaving the container, {after} arriving outside: {before - after} hops, expected exactly 1\n{r.explain()}"


def test_a_full_size_packet_gets_out_unfragmented(lab, probe, family):
    """A don't-fragment echo as big as the container's MTU reaches the outside world and comes back: no link of the
    path carries less (a link that does either answers fragmentation-needed, or drops big packets silently: the PMTU black hole)."""
    remote = promise.remote(lab.topology, family)
    for name in _outbound(lab, family):
        size = promise.path_mtu(lab.topology, name)
        r = expect(probe.icmp(name, remote, size=size, capture=[lab.point(name), "wan:uplink"]))
        seen(r, "wan:uplink", dst=str(remote))


def test_default_route_points_at_the_host(lab, family):
    t = lab.topology
    for name in _outbound(lab, family):
        c = t.container(name)
        host_side = (c.host_address if family == 4 and c.host_address else t.bridge(c.bridge).at(family)).ip
        route = lab.container_ns(name).route_get(promise.remote(t, family))
        assert not isinstance(route, str), f"{name}: no route to the outside: {route}"
        assert route.gateway == host_side, f"{name}: the outside is routed via {route.gateway}, expected the host's {host_side}"
        assert route.interface == c.interface, f"{name}: the outside is routed out of {route.interface}, expected {c.interface}"
        if family == 6:
            default = [r for r in lab.container_ns(name).routes(socket.AF_INET6) if r.dst.prefixlen == 0]
            assert [r.gateway for r in default] == [host_side], f"{name}: IPv6 default routes {default}, expected one via {host_side}"
