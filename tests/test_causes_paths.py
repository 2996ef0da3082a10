"""The path causes on recorded snapshots, without root: MTUs along the path (``mtu_mismatch`` on the
uplink, ``path_mtu_low``) and a host network that takes in an outside address (``subnet_overlap``).
Each must be named with its fix, and the same snapshot without the fault must name nothing."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Interface, IPv4Network, ip_address
from types import SimpleNamespace

from test_causes_snapshots import BR, OUT, UP, RecordedLab, host_state, netns0

from netcheck.diagnose import rules as cause_rules
from netcheck.diagnose.path import Route, Side
from netcheck.diagnose.recording import LabFacts
from netcheck.diagnose.state import HostState, NsState, Snapshot
from netcheck.evidence import ProbeRequest, SetMtu
from netcheck.kernel.netns import Address, Link, RouteEntry

COVERS = frozenset({"path_mtu_low", "subnet_overlap"})  # the causes this module tests (mtu_mismatch on the uplink too; its veth case is in test_causes_snapshots)
WAN_END = "nc1wn"
POINTS = ("netns0:ceth0", "host:veth0", "host:br0", "host:eth0", "wan:uplink")


def PathLab() -> LabFacts:
    """The recorded lab, with its capture points resolved to the kernel's links (so that the rules see the probe's path)."""
    lab = RecordedLab()
    points = {p: (p.split(":")[0], {"uplink": WAN_END}.get(p.split(":")[1], lab.knames.get(p.split(":")[1], p.split(":")[1]) if p.startswith("host:") else p.split(":")[1]),
                  p.split(":")[1]) for p in POINTS}
    return replace(lab, points=points)


def wan(mtu: int = 1500) -> NsState:
    links = (Link(1, "lo", "loopback", True, "UNKNOWN", 65536, "00:00:00:00:00:00", None), Link(2, WAN_END, "veth", True, "UP", mtu, "56:11:22:33:44:77", None))
    return NsState("wan", "nc1-wan", links, (Address(WAN_END, IPv4Interface("203.0.113.1/24")),))


def evidence(host: NsState, far: NsState, size: int | None, lookups: dict[str, RouteEntry | str] | None = None) -> cause_rules.Evidence:
    snap = Snapshot({"host": host, "netns0": netns0(), "wan": far}, HostState(), dict(lookups or {}))
    result = SimpleNamespace(request=ProbeRequest("icmp", "netns0", ip_address("198.51.100.1"), size=size))
    ev = cause_rules.Evidence(PathLab(), snap, OUT, Route(POINTS, True, False, BR, UP), result=result)  # type: ignore[arg-type]
    ev._sides.update({"netns0": Side("netns0", "ceth0", "172.18.0.10", "veth0", "nc1v0", "br0", BR), "netns1": None})
    return ev


def with_mtu(state: NsState, link: str, mtu: int) -> NsState:
    return replace(state, links=tuple(replace(x, mtu=mtu) if x.name == link else x for x in state.links))


def test_path_mtu_low_names_the_link_that_carries_less_than_the_probe_and_raises_both_ends() -> None:
    found = cause_rules.evaluate(evidence(with_mtu(host_state(), UP, 1400), wan(1400), 1500))
    assert found and found[0].cause == "path_mtu_low", [(f.cause, f.summary) for f in found]
    assert "1400" in found[0].summary and "1500" in found[0].summary, found[0].summary
    assert set(found[0].fixes) == {SetMtu("host", UP, 1500), SetMtu("wan", WAN_END, 1500)}, found[0].fixes
    assert [f.cause for f in found].count("path_mtu_low") == 1, "the two ends of one veth are one link: one finding"
    assert "path_mtu_low" not in [f.cause for f in cause_rules.evaluate(evidence(with_mtu(host_state(), UP, 1400), wan(1400), None))], "a small probe says nothing of the MTU"
    assert "path_mtu_low" not in [f.cause for f in cause_rules.evaluate(evidence(host_state(), wan(), 1500))]


def test_mtu_mismatch_on_the_uplink_ranks_first_for_a_lost_full_size_probe() -> None:
    found = cause_rules.evaluate(evidence(host_state(), wan(1400), 1500))
    assert found and found[0].cause == "mtu_mismatch", [(f.cause, f.summary) for f in found]
    assert "uplink" in found[0].summary and found[0].fixes == (SetMtu("wan", WAN_END, 1500),), (found[0].summary, found[0].fixes)
    assert "path_mtu_low" not in [f.cause for f in found], "a mismatch is mtu_mismatch's, not a low path MTU"
    assert not [f for f in cause_rules.evaluate(evidence(host_state(), wan(), 1500)) if f.cause == "mtu_mismatch"]


def test_subnet_overlap_names_the_network_that_takes_in_the_outside_address() -> None:
    host = host_state()
    overlap = replace(host, links=(*host.links, Link(9, "nc1ov", "bridge", True, "UP", 1500, "56:11:22:33:44:88", None)),
                      addresses=(*host.addresses, Address("nc1ov", IPv4Interface("198.51.100.254/24"))))
    into = {"host: 198.51.100.1": RouteEntry(IPv4Network("198.51.100.1/32"), None, "nc1ov")}
    found = cause_rules.evaluate(evidence(overlap, wan(), None, into))
    assert found and found[0].cause == "subnet_overlap", [(f.cause, f.summary) for f in found]
    assert "198.51.100.254/24" in found[0].summary and "ip address del 198.51.100.254/24 dev nc1ov" in found[0].fix, found[0]
    out = {"host: 198.51.100.1": RouteEntry(IPv4Network("198.51.100.1/32"), ip_address("203.0.113.1"), UP)}
    assert "subnet_overlap" not in [f.cause for f in cause_rules.evaluate(evidence(overlap, wan(), None, out))], "routed out of the uplink: no overlap decided it"
