"""Forwarding: containers reach the outside world through the host, one routed hop."""

from __future__ import annotations

import pytest

from netcheck import expect as promise
from netcheck.checks import expect, seen

pytestmark = pytest.mark.netcheck_property("forwarding")


def _outbound(lab):
    t = lab.topology
    names = [c.name for c in t.containers if promise.reaches_outside(t, c.name)]
    if not names:
        pytest.skip(f"{t.name}: no container is declared to reach the outside")
    return names


def test_container_reaches_the_outside_through_the_host(lab, probe):
    remote = lab.topology.wan.remote[0].ip
    for name in _outbound(lab):
        r = expect(probe.icmp(name, remote, capture=[lab.point(name), "wan:uplink"]))
        seen(r, "wan:uplink", dst=str(remote))
        seen(r, lab.point(name), role="reply", src=str(remote))


def test_ttl_drops_by_exactly_one_at_the_host(lab, probe):
    remote = lab.topology.wan.remote[0].ip
    for name in _outbound(lab):
        r = expect(probe.icmp(name, remote, capture=[lab.point(name), "wan:uplink"]))
        before = seen(r, lab.point(name)).ttl
        after = seen(r, "wan:uplink").ttl
        assert before - after == 1, f"{name}: TTL {before} leaving the container, {after} arriving outside: {before - after} hops, expected exactly 1\n{r.explain()}"


def test_default_route_points_at_the_host(lab):
    t = lab.topology
    for name in _outbound(lab):
        c = t.container(name)
        host_side = c.host_address.ip if c.host_address else t.bridge(c.bridge).address.ip
        route = lab.container_ns(name).route_get(t.wan.remote[0].ip)
        assert not isinstance(route, str), f"{name}: no route to the outside: {route}"
        assert route.gateway == host_side, f"{name}: the outside is routed via {route.gateway}, expected the host's {host_side}"
        assert route.interface == c.interface, f"{name}: the outside is routed out of {route.interface}, expected {c.interface}"
