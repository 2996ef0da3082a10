"""Your own network tests with netcheck: a worked example that runs from any folder.

Copy this file into a project of your own, then, as root (namespaces need CAP_NET_ADMIN):

    pip install pytest-netcheck
    sudo pytest test_my_network.py --netcheck-report none

From a clone of netcheck: ``sudo .venv/bin/pytest examples/test_my_network.py``. Every fixture
and helper used here is described in docs/api.md. Nothing leaves the machine: each lab is a set
of network namespaces that netcheck builds and removes, with documentation addresses outside.
"""

from __future__ import annotations

import pytest

from netcheck import spec
from netcheck.checks import expect, expect_all, not_seen, seen

# A network of your own, as data (the spec format of netcheck/topologies/*.toml): two containers
# on one bridge, masqueraded to the outside world, with api's port 8080 published on the host.
MY_NET = spec.loads(
    """
name = "mynet"
summary = "api and db on br-app; api's port 8080 published on the host"

[host]
uplink = "eth0"
address = "203.0.113.2/24"
gateway = "203.0.113.1"
forward_policy = "ACCEPT"

[host.sysctl]
"net.ipv4.ip_forward" = 1
"net.bridge.bridge-nf-call-iptables" = 1

[wan]
address = "203.0.113.1/24"
remote = ["198.51.100.1/32"]

[[bridge]]
name = "br-app"
address = "10.10.0.1/24"

[[container]]
name = "api"
interface = "eth0"
address = "10.10.0.10/24"
host_veth = "veth-api"
bridge = "br-app"
gateway = "10.10.0.1"
services = [{ kind = "http", port = 8080 }]

[[container]]
name = "db"
interface = "eth0"
address = "10.10.0.20/24"
host_veth = "veth-db"
bridge = "br-app"
gateway = "10.10.0.1"
services = [{ kind = "tcp-echo", port = 5432 }]

[[masquerade]]
source = "10.10.0.0/24"
not_out_interface = "br-app"

[[publish]]
container = "api"
host_port = 8080
port = 8080
""",
    source=f"{__file__}: MY_NET",
)


# ----------------------------------------------------------------------------- on a shared lab
# netcheck_lab is built once per topology and session and shared by every test that uses it:
# look, probe, but do not break it. The marker picks the topologies (names or spec files);
# without it a test runs on every topology of the run (--netcheck-topology, default: the built-ins).


@pytest.mark.netcheck(topologies=["seed1"])
def test_published_port_answers_from_the_outside(netcheck_lab, netcheck_probe):
    t = netcheck_lab.topology
    pub = t.publishes[0]
    web = t.container(pub.container)
    inside = netcheck_lab.point(web.name)  # "netns0:ceth0": the container's own interface
    r = expect(netcheck_probe.http("wan", t.host.address.ip, pub.host_port, target=web.name, capture=["wan:uplink", inside]))
    seen(r, "wan:uplink", dst=str(t.host.address.ip), dport=pub.host_port)  # as sent, to the host's address
    seen(r, inside, dst=str(web.address.ip), dport=pub.port)  # as rewritten by the DNAT
    assert r.replied_by == web.name


@pytest.mark.netcheck(topologies=["seed1"])
def test_an_unpublished_port_stays_closed(netcheck_lab, netcheck_probe):
    t = netcheck_lab.topology
    points = [netcheck_lab.point(c.name) for c in t.containers]
    r = expect(netcheck_probe.tcp("wan", t.host.address.ip, 6543, expect="block", capture=["wan:uplink", *points]))
    seen(r, "wan:uplink", dport=6543)  # the probe was sent: its silence inside proves something
    for point in points:
        not_seen(r, point)


# ----------------------------------------------------------------------------- on labs of your own
# netcheck_fresh_lab builds a private lab (from a Topology, a built-in's name or a spec file),
# torn down after the test: break it as you like. netcheck_prober_for probes it, recording the
# results as this test's evidence (the report shows them).


def test_my_containers_reach_each_other_and_the_outside(netcheck_fresh_lab, netcheck_prober_for):
    lab = netcheck_fresh_lab(MY_NET)
    probe = netcheck_prober_for(lab)
    t = lab.topology
    db = t.container("db")
    pairs = [
        lambda: probe.tcp("api", db.address.ip, 5432, target="db", capture=[lab.point("db")]),
        lambda: probe.icmp("db", t.wan.remote[0].ip, capture=["wan:uplink"]),
        lambda: probe.icmp("api", t.wan.remote[0].ip, capture=["wan:uplink"]),
    ]
    to_db, *outside = expect_all(probe.many(pairs), "mynet: api to db, and both to the outside")
    seen(to_db, lab.point("db"), src=str(t.container("api").address.ip))  # bridge-local: the source is kept
    for r in outside:
        seen(r, "wan:uplink", src=str(t.host.address.ip))  # masqueraded to the host's address


def test_without_forwarding_nothing_gets_out(netcheck_fresh_lab, netcheck_prober_for):
    lab = netcheck_fresh_lab(MY_NET)
    lab.host.set_sysctl("net.ipv4.ip_forward", 0)  # break it on purpose: this lab is ours alone
    probe = netcheck_prober_for(lab)
    r = expect(probe.icmp("api", lab.topology.wan.remote[0].ip, expect="block", capture=["host:br-app", "wan:uplink"]))
    seen(r, "host:br-app")  # it reached the host...
    not_seen(r, "wan:uplink")  # ...and went no further
