"""What was built matches the spec, read back from the kernel (netlink, sysctls, iptc)."""

from __future__ import annotations

import os
import socket

import pytest

from netcheck.kernel.inspect import legacy_tables
from netcheck.kernel.xtables import read_legacy, read_legacy6, read_nft_chains

pytestmark = pytest.mark.netcheck_property("topology")


def test_every_namespace_exists(lab):
    for label, ns in lab.namespaces().items():
        own = label == "host" and lab.host_mode  # host mode: the host is the namespace netcheck runs in
        assert (ns.name is not None or own) and os.path.exists(ns.path), f"namespace of {label} is missing at {ns.path}"
        assert ns.links(), f"namespace {ns.name} ({label}) answers no netlink dump"


def test_containers_see_only_lo_and_their_interface(lab):
    for c in lab.topology.containers:
        names = sorted(link.name for link in lab.container_ns(c.name).links())
        assert names == sorted(["lo", c.interface]), f"{c.name} sees links {names}; expected only lo and {c.interface}"


def test_addresses_as_declared(lab):
    t = lab.topology
    for c in t.containers:
        got = {(a.interface, a.address) for a in lab.container_ns(c.name).addresses()}
        assert (c.interface, c.address) in got, f"{c.name}: {c.interface} should have {c.address}; it has {sorted(map(str, got))}"
    host = {(a.interface, a.address) for a in lab.host.addresses()}
    wanted = [(lab.kname(t.host.uplink), t.host.address)]
    wanted += [(lab.kname(b.name), b.address) for b in t.bridges if b.address]
    wanted += [(lab.kname(c.host_veth), c.host_address) for c in t.containers if c.host_address]
    for iface, addr in wanted:
        assert (iface, addr) in host, f"host: {lab.spec_name(iface)} ({iface}) should have {addr}"
    if 6 in t.families:  # dual stack: the IPv6 ones too
        for c in t.containers:
            got6 = {(a.interface, a.address) for a in lab.container_ns(c.name).addresses(socket.AF_INET6)}
            assert c.address6 is None or (c.interface, c.address6) in got6, f"{c.name}: {c.interface} should have {c.address6}; it has {sorted(map(str, got6))}"
        host6 = {(a.interface, a.address) for a in lab.host.addresses(socket.AF_INET6)}
        wanted6 = [(lab.kname(t.host.uplink), t.host.address6), *((lab.kname(b.name), b.address6) for b in t.bridges)]
        for iface, addr in wanted6:
            assert addr is None or (iface, addr) in host6, f"host: {lab.spec_name(iface)} ({iface}) should have {addr}"


def test_routes_as_declared(lab):
    t = lab.topology
    for c in t.containers:
        routes = lab.container_ns(c.name).routes()
        default = [r for r in routes if r.dst.prefixlen == 0]
        if c.gateway is None:
            assert not default, f"{c.name} has a default route the spec does not declare: {default}"
        else:
            assert [r.gateway for r in default] == [c.gateway], f"{c.name}: default route should be via {c.gateway}; routes: {routes}"
        if c.address6 is not None:
            default6 = [r.gateway for r in lab.container_ns(c.name).routes(socket.AF_INET6) if r.dst.prefixlen == 0]
            assert default6 == ([c.gateway6] if c.gateway6 else []), f"{c.name}: IPv6 default route should be via {c.gateway6}; found {default6}"
            routes = routes + lab.container_ns(c.name).routes(socket.AF_INET6)
        for r in c.routes:
            assert any(x.dst == r.to and x.gateway == r.via for x in routes), f"{c.name}: missing route {r.to} via {r.via}"
    if lab.host_mode:
        # A real host keeps its own default route; netcheck routes only its outside addresses via the wan.
        for remote in t.wan.remote:
            got = lab.host.route_get(remote.ip)
            via = got if isinstance(got, str) else got.gateway
            assert via == t.host.gateway, f"host: {remote.ip} should be routed via {t.host.gateway}; found {via}"
        return
    default = [r.gateway for r in lab.host.routes() if r.dst.prefixlen == 0]
    assert default == [t.host.gateway], f"host: default route should be via {t.host.gateway}; found {default}"


def test_bridge_ports_as_declared(lab):
    t = lab.topology
    if not t.bridges:
        pytest.skip(f"{t.name} declares no bridge")
    ports = {(p.port, p.bridge) for p in lab.host.bridge_ports()}
    for b in t.bridges:
        want = {(lab.kname(c.host_veth), lab.kname(b.name)) for c in t.members(b.name)}
        have = {p for p in ports if p[1] == lab.kname(b.name)}
        assert have == want, f"bridge {b.name}: ports {sorted(have)}, expected {sorted(want)}"


def test_sysctls_as_declared(lab):
    for key, value in lab.topology.host.sysctls:
        assert lab.host.sysctl(key) == str(value), f"host: {key} = {lab.host.sysctl(key)}, declared {value}"


def test_rules_as_declared(lab):
    # Both backends: netcheck writes legacy rules (or, firewall = "nft", native tables of its own); Docker, CNI, netavark and iptables-nft write nf_tables.
    # Only the legacy tables that exist are read: opening one creates it (in a real host, in host mode).
    legacy = [t for t in legacy_tables(lab.host) if t in ("filter", "nat")]
    chains = read_legacy(lab.host, tuple(legacy)) + read_nft_chains(lab.host)
    have = [r.key() for c in chains for r in c.rules]
    if any(r.family == 6 for r in lab.expected_rules()):
        have += [r.key() for c in read_legacy6(lab.host) for r in c.rules]
    for rule in lab.expected_rules():
        assert rule.key() in have, f"host: rule missing: {rule.tool} {rule.render()}"
    # The kernel applies every FORWARD chain in turn (iptables' and any nft filter chain on the
    # forward hook, such as a firewall = "nft" lab's own): one DROP policy is the host's policy.
    policies = {f"{c.backend} {c.policy}" for c in chains if (c.table, c.name) == ("filter", "FORWARD") or (c.hook, c.kind) == ("forward", "filter")}
    effective = "DROP" if any(p.endswith(" DROP") for p in policies) else "ACCEPT"
    assert effective == lab.topology.host.forward_policy, f"host: FORWARD policy {effective} ({', '.join(sorted(policies))}), declared {lab.topology.host.forward_policy}"


def test_every_link_is_up(lab):
    for label, ns in lab.namespaces().items():
        down = [f"{link.name} ({'admin down' if not link.admin_up else link.operstate})" for link in ns.links() if not link.up]
        assert not down, f"{label}: links not up: {', '.join(down)}"
