"""Isolation: each container has a network stack of its own, and frames stay where they belong."""

from __future__ import annotations

import socket

import pytest

from netcheck import expect as promise
from netcheck.adapters.docker import embedded_resolver_rule
from netcheck.checks import expect, expect_all, not_seen, seen
from netcheck.kernel.inspect import legacy_tables
from netcheck.kernel.xtables import nft_chains, read_legacy, read_nft

pytestmark = pytest.mark.netcheck_property("isolation")


def test_container_sees_none_of_the_hosts_links_routes_or_rules(lab):
    # A link is known by its name and MAC: a real host's own eth0 is not a container's eth0.
    host_links = {(link.name, link.mac) for link in lab.host.links() if link.name != "lo"}
    for c in lab.topology.containers:
        ns = lab.container_ns(c.name)
        links = {link.name for link in ns.links()}
        assert links == {"lo", c.interface}, f"{c.name} sees links {sorted(links)}; a container must see only lo and {c.interface}"
        shared = {(link.name, link.mac) for link in ns.links()} & host_links
        assert not shared, f"{c.name} sees host links {sorted(shared)}"
        foreign = [r for r in ns.routes() if r.interface not in (c.interface, "lo")]
        assert not foreign, f"{c.name} has routes through interfaces that are not its own: {foreign}"
        # Only the legacy tables that exist: opening one creates it (a real container's, in host mode).
        legacy = read_legacy(ns, tuple(legacy_tables(ns)))
        rules = [r for ch in legacy for r in ch.rules] + [r for ch in nft_chains(read_nft(ns)) for r in ch.rules]
        rules = [r for r in rules if not embedded_resolver_rule(lab.topology, c, r)]  # Docker's own, for 127.0.0.11 on a user-defined network
        assert not rules, f"{c.name} holds firewall rules, which belong to the host: {[r.render() for r in rules]}"


def test_unicast_frames_stay_off_other_containers(lab, probe, family):
    """A frame from one container to the gateway is never delivered into another container."""
    t = lab.topology
    pairs = [(a.name, b.name) for a in t.containers for b in t.containers if a.name != b.name and a.gateway_at(family)]
    if not pairs:
        pytest.skip(f"{t.name} has fewer than two containers")
    results = []
    for a, b in pairs:
        gw = t.container(a).gateway_at(family)
        expect(probe.icmp(a, gw))  # the bridge learns a's MAC, so later frames are not flooded
        r = probe.icmp(a, gw, capture=[lab.point(a), lab.point(b)])
        expect(r)
        not_seen(r, lab.point(b))
        results.append(r)
    expect_all(results, "unicast confinement")


def test_containers_on_different_networks_only_reach_each_other_if_allowed(lab, probe, family):
    """Over IPv6, a pair kept apart must not reach each other by link-local address either (fe80::, which is never routed)."""
    t = lab.topology
    pairs = [(a.name, b.name) for a in t.containers for b in t.containers
             if a.name != b.name and a.at(family) and b.at(family) and not promise.same_l2(t, a.name, b.name)]
    if family == 6:  # on one bridge too: a pair the FORWARD chain keeps apart must not talk by link-local address
        pairs += [(a.name, b.name) for a in t.containers for b in t.containers
                  if a.name != b.name and a.at(6) and b.at(6) and promise.same_l2(t, a.name, b.name) and not promise.reaches(t, a.name, b.name, 6)]
    if not pairs:
        pytest.skip(f"{t.name}: every container shares one network")
    calls = [(lambda a=a, b=b: probe.icmp(a, t.container(b).at(family).ip, target=b, expect="reach" if promise.reaches(t, a, b, family) else "block", capture=[lab.point(b)]))
             for a, b in pairs]
    if family == 6:
        calls += [(lambda a=a, b=b: probe.icmp(a, link_local(lab, b), target=b, expect="block", capture=[lab.point(b)]))
                  for a, b in pairs if not promise.reaches(t, a, b, 6)]
    results = probe.many(calls)
    expect_all(results, "reachability between networks, as the spec allows it")


def link_local(lab, name):
    """A container's IPv6 link-local address (fe80::/64, the kernel's own)."""
    c = lab.topology.container(name)
    return next(a.address.ip for a in lab.container_ns(name).addresses(socket.AF_INET6) if a.interface == c.interface and a.address.ip.is_link_local)


def test_host_loopback_services_are_not_reachable_from_containers(lab, probe, family):
    """A service bound to the host's 127.0.0.1 (IPv6: ::1) stays private to the host."""
    loopback = "::1" if family == 6 else "127.0.0.1"
    listener = lab.services.listen(lab.host, "host-loopback", "tcp-echo", 0, loopback)
    try:
        expect(probe.tcp("host", loopback, listener.port, target="host-loopback"))  # it is up
        results = []
        for c in lab.topology.containers:
            if c.at(family) is None:
                continue
            for dst in {str(c.gateway_at(family)), str(lab.topology.host.at(family).ip)} - {"None"}:
                results.append(probe.tcp(c.name, dst, listener.port, expect="block", capture=[f"host:{c.bridge or c.host_veth}"]))
        expect_all(results, f"host loopback service on 127.0.0.1:{listener.port}")
        for r in results:  # each attempt really reached the host: its silence is not a lost packet
            seen(r, r.captures[0].point, dport=listener.port)
    finally:
        lab.services.stop("host-loopback")
