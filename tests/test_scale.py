"""The generated scale topologies: one host of N containers, and H hosts of N joined by VXLAN
(netcheck.scale), read and validated as a spec file would be. Nothing here builds a lab: the
8 x 50 bench itself is bench/scale.py (``--quick`` for 4 x 10).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from netcheck.multihost import spec as multi_spec
from netcheck.multihost.plan import plan
from netcheck.scale import MAX_HOSTS, MAX_PER_HOST, bridge_topology, vxlan_hosts, vxlan_hosts_toml


def test_the_quick_multi_host_topology_is_valid_and_has_every_container_once():
    t = vxlan_hosts(4, 10)
    assert [h.name for h in t.hosts] == ["h0", "h1", "h2", "h3"]
    assert t.join.kind == "vxlan" and t.join.fdb == "unicast" and t.join.mtu + multi_spec.VXLAN_OVERHEAD <= t.underlay.mtu
    addresses = [c.address.ip for _h, c in multi_spec.containers(t) if c.address is not None]
    assert len(addresses) == len(set(addresses)) == 40
    for i, h in enumerate(t.hosts):
        assert h.subnets == (IPv4Network(f"10.244.{i + 1}.0/24"),)
        assert all(c.address is not None and c.address.ip in h.subnets[0] and c.gateway == IPv4Address(f"10.244.{i + 1}.1") for c in h.topology.containers)


def test_the_full_size_topology_has_the_pairs_the_acceptance_counts():
    t = vxlan_hosts(8, 50)
    n = sum(len(h.topology.containers) for h in t.hosts)
    cross = sum(1 for a, _ in multi_spec.containers(t) for b, _ in multi_spec.containers(t) if a.name != b.name)
    assert (n, n * (n - 1), cross) == (400, 159_600, 140_000)


def test_generated_addresses_stay_in_documentation_and_private_space():
    t = vxlan_hosts(8, 50)
    underlay = IPv4Network("198.51.100.0/24")
    assert t.underlay.network.subnet_of(underlay) and all(h.underlay.ip in underlay for h in t.hosts)
    assert all(h.topology.host.address.ip in IPv4Network("203.0.113.0/24") for h in t.hosts)
    assert "192.0.2." not in vxlan_hosts_toml(8, 50)


def test_the_join_plan_reaches_every_other_host():
    t = vxlan_hosts(3, 2)
    p = plan(t, "ncul00", {h.name: f"nch{i}00" for i, h in enumerate(t.hosts)})
    for hj, h in zip(p.hosts, t.hosts, strict=True):
        others = {o.subnets[0] for o in t.hosts if o is not h}
        assert {r.dst for r in hj.routes} >= others
        assert {f.host for f in hj.fdb} == {o.name for o in t.hosts if o is not h}


def test_the_single_host_counterpart_has_the_same_host_settings():
    one, multi = bridge_topology(40), vxlan_hosts(4, 10)
    assert all(dict(h.topology.host.sysctls) == dict(one.host.sysctls) for h in multi.hosts)
    assert all(h.topology.host.forward_policy == one.host.forward_policy for h in multi.hosts)
    assert all(not h.topology.masquerades and not h.topology.publishes for h in multi.hosts)


@pytest.mark.parametrize(("hosts", "per_host"), [(1, 10), (MAX_HOSTS + 1, 1), (2, 0), (2, MAX_PER_HOST + 1)])
def test_sizes_out_of_range_are_refused_with_the_range(hosts, per_host):
    with pytest.raises(ValueError, match=r"use from \d+ to \d+"):
        vxlan_hosts(hosts, per_host)


# ----------------------------------------------------------------------------- in the kernel (small)


@pytest.mark.root
def test_the_cross_host_matrix_passes_then_fails_exactly_the_cells_a_missing_fdb_entry_breaks():
    """3 hosts x 2 containers: 30 pairs, 24 across hosts. Host h0 loses its fdb entry toward h1:
    h0's requests to h1 and h1's replies to h0 are no longer encapsulated toward the right VTEP,
    so exactly the 8 cells between h0 and h1 fail, each with a capture at both ends."""
    from netcheck import faults
    from netcheck.multihost.lab import MultiLab
    from netcheck.multihost.matrix import CrossHostMatrix
    from netcheck.probes.matrix import describe

    with MultiLab(vxlan_hosts(3, 2)) as multi:
        with CrossHostMatrix(multi) as m:
            healthy = m.all()
        assert healthy.pairs == 30 and not healthy.failing_pairs(), describe(healthy)
        assert m.static_neighbours is False  # 30 pairs fit the ARP budget: the routed path is learned as usual
        faults.vxlan_fdb_missing(multi)
        with CrossHostMatrix(multi, neighbours="static") as m:
            broken = m.all()
        between = {(f"{a}/c{i}", f"{b}/c{j}") for a, b in (("h0", "h1"), ("h1", "h0")) for i in range(2) for j in range(2)}
        assert set(broken.failing_pairs()) == between, describe(broken)
        assert {(r.source, r.target) for r in broken.failures} == {(a.partition("/")[2], b.partition("/")[2]) for a, b in between}
        for r in broken.failures:
            assert len(r.captures) == 2 and all("/" in c.point for c in r.captures), r.explain()
        for h in multi.hosts.values():  # the static entries are gone with the matrix, in the hosts and the containers
            assert not [n for n in h.host.neighbours() if n.state == "PERMANENT" and n.interface == h.kname("br0")]  # the VTEPs' are the join's
            for c in h.topology.containers:
                assert not [n for n in h.container_ns(c.name).neighbours() if n.state == "PERMANENT"], f"{h.tag} {c.name}"
