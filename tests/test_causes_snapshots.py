"""The new causes on recorded snapshots, without root: each rule reads a frozen ``Snapshot`` (links,
addresses, routes, neighbours, sysctls and rules as netcheck read them from a seed1 lab with the
fault injected) and must name its cause, with the fix as values; the same snapshot without the
fault must name nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Interface, IPv4Network, IPv6Network, ip_address

import pytest

from netcheck import spec
from netcheck.diagnose import rules as cause_rules
from netcheck.diagnose.firewall import Pkt, Ruleset
from netcheck.diagnose.path import Flow, Route, Side
from netcheck.diagnose.recording import LabFacts
from netcheck.diagnose.state import HostState, NsState, Snapshot
from netcheck.evidence import AddRule, DeleteNeighbour, DeleteRule, Finding, ProbeRequest, ProbeResult, Sysctl
from netcheck.kernel.netns import Address, Link, Neighbour, RouteEntry
from netcheck.kernel.xtables import XChain, XRule, nft_chains

BR, UP, VETH = "nc1b0", "nc1up", "nc1v0"  # the kernel names of seed1's br0, eth0 and netns0's veth in the recorded lab
BR_MAC, CETH_MAC = "3a:ab:ee:a9:90:f8", "a2:5e:30:cd:2e:cd"
NAMES = {BR: "br0", UP: "eth0", VETH: "veth0"}


def RecordedLab() -> LabFacts:
    """The lab a snapshot was recorded from, as far as the rules ask: its spec and its names (route lookups come from the snapshot)."""
    return LabFacts(spec.builtin("seed1"), {v: k for k, v in NAMES.items()})


def host_state(**sysctls: str) -> NsState:
    links = (Link(1, "lo", "loopback", True, "UNKNOWN", 65536, "00:00:00:00:00:00", None), Link(2, BR, "bridge", True, "UP", 1500, BR_MAC, None),
             Link(3, UP, "veth", True, "UP", 1500, "56:11:22:33:44:55", None), Link(4, VETH, "veth", True, "UP", 1500, "6e:11:22:33:44:66", 2))
    addresses = (Address(BR, IPv4Interface("172.18.0.1/16")), Address(UP, IPv4Interface("203.0.113.2/24")))
    routes = (RouteEntry(IPv4Network("0.0.0.0/0"), IPv4Network("203.0.113.1/32").network_address, UP), RouteEntry(IPv4Network("172.18.0.0/16"), None, BR),
              RouteEntry(IPv4Network("203.0.113.0/24"), None, UP))
    base = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.arp_ignore": "0", f"net.ipv4.conf.{BR}.arp_ignore": "0"}
    return NsState("host", "nc1-host", links, addresses, routes, sysctls=base | sysctls)


def netns0(neighbours: tuple[Neighbour, ...] = (), routes: tuple[RouteEntry, ...] = ()) -> NsState:
    links = (Link(1, "lo", "loopback", True, "UNKNOWN", 65536, "00:00:00:00:00:00", None), Link(2, "ceth0", "veth", True, "UP", 1500, CETH_MAC, None))
    default = (RouteEntry(IPv4Network("0.0.0.0/0"), IPv4Network("172.18.0.1/32").network_address, "ceth0"), RouteEntry(IPv4Network("172.18.0.0/16"), None, "ceth0"))
    return NsState("netns0", "nc1-netns0", links, (Address("ceth0", IPv4Interface("172.18.0.10/16")),), default + routes, neighbours)


OUT = Flow("icmp", "icmp", "netns0", "172.18.0.10", "198.51.100.1", None, "reach", "wan", "198.51.100.1", None, "outside")
ROUTED = Route(("netns0:ceth0", "host:veth0", "host:br0", "host:eth0", "wan:uplink"), True, False, BR, UP)


def evidence(host: NsState, container: NsState, flow: Flow | None = OUT, ruleset: Ruleset | None = None) -> cause_rules.Evidence:
    snap = Snapshot({"host": host, "netns0": container}, HostState(ruleset=ruleset or Ruleset()))
    ev = cause_rules.Evidence(RecordedLab(), snap, flow, ROUTED if flow is not None else None)  # type: ignore[arg-type]
    ev._sides.update({"netns0": Side("netns0", "ceth0", "172.18.0.10", "veth0", VETH, "br0", BR), "netns1": None})
    return ev


def causes(ev: cause_rules.Evidence) -> list[str]:
    return [f.cause for f in cause_rules.evaluate(ev)]


def test_neigh_wrong_names_the_static_entry_and_deletes_it() -> None:
    wrong = Neighbour("ceth0", "172.18.0.1", "02:00:5e:00:53:01", "PERMANENT")
    found = cause_rules.evaluate(evidence(host_state(), netns0((wrong,))))
    assert found and found[0].cause == "neigh_wrong", [(f.cause, f.summary) for f in found]
    assert "02:00:5e:00:53:01" in found[0].summary and BR_MAC in found[0].summary
    assert found[0].fixes == (DeleteNeighbour("netns0", "ceth0", "172.18.0.1"),)
    right = replace(wrong, mac=BR_MAC)
    assert "neigh_wrong" not in causes(evidence(host_state(), netns0((right,)))), "a static entry with the right MAC is no fault"


def test_arp_ignore_8_on_the_gateway_interface() -> None:
    failed = Neighbour("ceth0", "172.18.0.1", None, "FAILED")
    found = cause_rules.evaluate(evidence(host_state(**{f"net.ipv4.conf.{BR}.arp_ignore": "8"}), netns0((failed,))))
    assert found and found[0].cause == "arp_ignore", [(f.cause, f.summary) for f in found]
    assert found[0].fixes == (Sysctl("host", f"net.ipv4.conf.{BR}.arp_ignore", "0"), DeleteNeighbour("netns0", "ceth0", "172.18.0.1"))
    assert "arp_ignore" not in causes(evidence(host_state(**{f"net.ipv4.conf.{BR}.arp_ignore": "1"}), netns0((failed,)))), "arp_ignore 1 still answers for the bridge's own address"


def test_blackhole_route_in_the_host_or_the_sender() -> None:
    hole = RouteEntry(IPv4Network("198.51.100.0/24"), None, None, kind="blackhole")
    host = host_state()
    found = cause_rules.evaluate(evidence(replace(host, routes=(*host.routes, hole)), netns0()))
    assert found and found[0].cause == "blackhole_route" and found[0].where == "host", [(f.cause, f.summary) for f in found]
    prohibit = RouteEntry(IPv4Network("198.51.100.1/32"), None, None, kind="prohibit")
    found = cause_rules.evaluate(evidence(host, netns0(routes=(prohibit,))))
    assert found and found[0].cause == "blackhole_route" and found[0].where == "netns0", [(f.cause, f.summary) for f in found]
    wider = RouteEntry(IPv4Network("198.0.0.0/8"), None, None, kind="unreachable")  # a less specific hole under a unicast route decides nothing
    assert "blackhole_route" not in causes(evidence(host, netns0(routes=(wider, RouteEntry(IPv4Network("198.51.100.0/24"), None, "ceth0")))))


def test_a_policy_rule_that_prohibits_the_flow_is_named_by_its_text() -> None:
    """``ip rule add from 172.18.0.0/16 to 198.51.100.0/24 prohibit`` in the host: its routes are fine, the rule decides (the datapath model's walk)."""
    from netcheck.datapath.values import DEFAULT_RULES
    from netcheck.kernel.netns import IpRule

    host = host_state()
    rule = IpRule(100, "prohibit", src=IPv4Network("172.18.0.0/16"), dst=IPv4Network("198.51.100.0/24"))
    found = [f for f in cause_rules.evaluate(evidence(replace(host, ip_rules=(*DEFAULT_RULES, rule)), netns0())) if f.cause == "blackhole_route"]
    assert found and found[0].where == "host" and "`ip rule 100: from 172.18.0.0/16 to 198.51.100.0/24 prohibit`" in found[0].summary, [(f.cause, f.summary) for f in found]
    assert found[0].fix.endswith("ip rule del priority 100"), found[0].fix
    other = replace(rule, src=IPv4Network("10.0.0.0/8"))
    assert "blackhole_route" not in causes(evidence(replace(host, ip_rules=(*DEFAULT_RULES, other)), netns0())), "a rule for other sources decides nothing"
    six = replace(rule, src=None, dst=IPv6Network("2001:db8::/32"), family=6)
    assert "blackhole_route" not in causes(evidence(replace(host, ip_rules=(*DEFAULT_RULES, six)), netns0())), "an ip -6 rule never routes IPv4"


def test_forwarding_off_on_the_interface_the_flow_enters_by() -> None:
    found = cause_rules.evaluate(evidence(host_state(**{f"net.ipv4.conf.{BR}.forwarding": "0", f"net.ipv4.conf.{UP}.forwarding": "1"}), netns0()))
    assert found and found[0].cause == "forwarding_off", [(f.cause, f.summary) for f in found]
    assert found[0].fixes == (Sysctl("host", f"net.ipv4.conf.{BR}.forwarding", "1"),)
    assert "forwarding_off" not in causes(evidence(host_state(**{f"net.ipv4.conf.{BR}.forwarding": "1"}), netns0()))


PUBLISHED = Flow("tcp", "tcp", "wan", "198.51.100.1", "203.0.113.2", 5000, "reach", "netns0", "172.18.0.10", 5000, "publish")


def nat(prerouting: XRule) -> Ruleset:
    return Ruleset.build([XChain("nat", "PREROUTING", "ACCEPT", (prerouting,)), XChain("nat", "POSTROUTING", "ACCEPT", ()), XChain("nat", "OUTPUT", "ACCEPT", ())], [])


def test_dnat_wrong_match_shows_the_match_that_misses_and_corrects_it() -> None:
    wrong = XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.99", protocol="tcp", dport=5000, to_destination="172.18.0.10:5000")
    ev = evidence(host_state(), netns0(), PUBLISHED, nat(wrong))
    found = [f for f in cause_rules.evaluate(ev) if f.cause.startswith("dnat")]
    assert found and found[0].cause == "dnat_wrong_match", [(f.cause, f.summary) for f in found]
    assert "-d 203.0.113.99 (the packet's: 203.0.113.2)" in found[0].summary, found[0].summary
    delete, add = found[0].fixes
    assert isinstance(delete, DeleteRule) and delete.rule == wrong
    assert isinstance(add, AddRule) and add.rule == replace(wrong, dst="203.0.113.2"), add
    right = replace(wrong, dst="203.0.113.2")
    assert not [f for f in cause_rules.evaluate(evidence(host_state(), netns0(), PUBLISHED, nat(right))) if f.cause.startswith("dnat")]


def test_an_ipv6_only_rule_of_an_inet_table_is_not_read_as_dropping_ipv4() -> None:
    """``meta nfproto ipv6 drop`` in an inet forward chain (the ipv6-drop-decoy fault) decides no IPv4 packet."""
    listed = {"nftables": [
        {"table": {"family": "inet", "name": "nc1_v6", "handle": 1}},
        {"chain": {"family": "inet", "table": "nc1_v6", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "nc1_v6", "chain": "forward", "handle": 2,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "nc1_v6", "chain": "forward", "handle": 3,
                  "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "2001:db8::1"}}, {"drop": None}]}},
    ]}
    chains = nft_chains(listed)
    assert [c.rules for c in chains] == [()], chains
    fw = Ruleset.build([], chains)
    assert fw.verdict("forward", Pkt("172.18.0.10", "198.51.100.1", "icmp", None, BR, UP)) is None


# ----------------------------------------------------------------------------- one case per cause, and the check that every cause has one


def _evidence_with(host: NsState | None = None, container: NsState | None = None, flow: Flow | None = OUT, ruleset: Ruleset | None = None,
                   lookups: dict[str, RouteEntry | str] | None = None, snmp: dict[str, dict[str, int]] | None = None) -> cause_rules.Evidence:
    ev = evidence(host or host_state(), container or netns0(), flow, ruleset or _forward())
    ev.snap.route_lookups.update(lookups or {})
    ev.snmp.update(snmp or {})
    return ev


def _link_state(ns: NsState, name: str, **changes: object) -> NsState:
    return replace(ns, links=tuple(replace(link, **changes) if link.name == name else link for link in ns.links))  # type: ignore[arg-type]


MASQUERADE = XRule("nat", "POSTROUTING", "MASQUERADE", src="172.18.0.0/16", out_interface=f"!{BR}")


def _forward(*rules: XRule, policy: str = "ACCEPT") -> Ruleset:
    """seed1's rules as built: its MASQUERADE, and FORWARD with ``rules``."""
    return Ruleset.build([XChain("nat", "PREROUTING", "ACCEPT", ()), XChain("nat", "POSTROUTING", "ACCEPT", (MASQUERADE,)), XChain("nat", "OUTPUT", "ACCEPT", ()),
                          XChain("filter", "FORWARD", policy, rules), XChain("filter", "INPUT", "ACCEPT", ()), XChain("filter", "OUTPUT", "ACCEPT", ())], [])


ROUTED_OUT: dict[str, RouteEntry | str] = {"netns0: 198.51.100.1": RouteEntry(IPv4Network("0.0.0.0/0"), IPv4Network("172.18.0.1/32").network_address, "ceth0"),
                                           "host: 198.51.100.1": RouteEntry(IPv4Network("0.0.0.0/0"), IPv4Network("203.0.113.1/32").network_address, UP)}


def _raises(ev: cause_rules.Evidence) -> Iterator[Finding]:
    raise RuntimeError("a broken rule")
    yield  # pragma: no cover


CASES: dict[str, Callable[[], list[Finding]]] = {
    "link_down": lambda: cause_rules.evaluate(_evidence_with(_link_state(host_state(), VETH, admin_up=False, operstate="DOWN"), lookups=ROUTED_OUT)),
    "lo_down": lambda: cause_rules.evaluate(_evidence_with(container=_link_state(netns0(), "lo", admin_up=False, operstate="DOWN"), lookups=ROUTED_OUT)),
    "not_in_bridge": lambda: cause_rules.evaluate(_evidence_with(_link_state(host_state(), VETH, master=None), lookups=ROUTED_OUT)),
    "ip_forward_off": lambda: cause_rules.evaluate(_evidence_with(host_state(**{"net.ipv4.ip_forward": "0"}), lookups=ROUTED_OUT)),
    "no_default_route": lambda: cause_rules.evaluate(_evidence_with(container=replace(netns0(), routes=netns0().routes[1:]), lookups={"netns0: 198.51.100.1": "Network is unreachable"})),
    "wrong_gateway": lambda: cause_rules.evaluate(_evidence_with(container=netns0((Neighbour("ceth0", "172.18.0.254", None, "FAILED"),)), lookups={
        "netns0: 198.51.100.1": RouteEntry(IPv4Network("0.0.0.0/0"), IPv4Network("172.18.0.254/32").network_address, "ceth0")})),
    "wrong_prefix": lambda: cause_rules.evaluate(_evidence_with(container=replace(netns0(), addresses=(Address("ceth0", IPv4Interface("172.18.0.10/24")),)), lookups=ROUTED_OUT)),
    "forward_drop": lambda: cause_rules.evaluate(_evidence_with(ruleset=_forward(XRule("filter", "FORWARD", "DROP", protocol="icmp")), lookups=ROUTED_OUT)),
    "rp_filter_strict": lambda: cause_rules.evaluate(_evidence_with(host_state(**{"net.ipv4.conf.all.rp_filter": "1", f"net.ipv4.conf.{UP}.rp_filter": "1"}), lookups=ROUTED_OUT,
                                                          snmp={"host": {"TcpExt.IPReversePathFilter": 1}})),
    "host_no_route": lambda: cause_rules.evaluate(_evidence_with(replace(host_state(), routes=host_state().routes[1:]),
                                                       lookups={**ROUTED_OUT, "host: 198.51.100.1": "Network is unreachable"})),
    "rule_failed": lambda: cause_rules.evaluate(_evidence_with(lookups=ROUTED_OUT), (_raises,)),
    "extra_link": lambda: cause_rules.evaluate(_evidence_with(container=replace(netns0(), links=(*netns0().links, Link(3, "hostlink0", "dummy", True, "UNKNOWN", 1500, "02:00:00:00:00:09", None))),
                                                    lookups=ROUTED_OUT), ),
    "address_conflict": lambda: cause_rules.evaluate(_with_namespace(_evidence_with(lookups=ROUTED_OUT), NsState("netns1", "nc1-netns1", netns0().links, netns0().addresses))),
    "address_on_bridge_port": lambda: cause_rules.evaluate(_evidence_with(replace(host_state(), addresses=(*host_state().addresses, Address(VETH, IPv4Interface("172.18.255.253/16")))),
                                                                lookups=ROUTED_OUT)),
    "mtu_mismatch": lambda: cause_rules.evaluate(_evidence_with(_link_state(host_state(), VETH, mtu=1400), lookups=ROUTED_OUT)),
    "rules_split": lambda: cause_rules.evaluate(_evidence_with(ruleset=Ruleset.build(
        [XChain("nat", "POSTROUTING", "ACCEPT", (MASQUERADE,)), XChain("filter", "FORWARD", "ACCEPT", ())],
        [XChain("filter", "FORWARD", "ACCEPT", (XRule("filter", "FORWARD", "ACCEPT", protocol="tcp"),))]), lookups=ROUTED_OUT)),
    "model_disposition": lambda: list(cause_rules.model_disposition(_failed(_evidence_with(host_state(**{"net.ipv4.ip_forward": "0"}), lookups=ROUTED_OUT)))),
}


def _failed(ev: cause_rules.Evidence) -> cause_rules.Evidence:
    """The evidence of a probe that failed: netns0's ping to the outside went unanswered."""
    ev.result = ProbeResult(ProbeRequest("icmp", "netns0", ip_address("198.51.100.1")), "seed1", "ceth0", "172.18.0.10", "ICMP echo", "unreachable", error="no answer")
    return ev


def _with_namespace(ev: cause_rules.Evidence, ns: NsState) -> cause_rules.Evidence:
    ev.snap.namespaces[ns.label] = ns
    return ev


@pytest.mark.parametrize("cause", sorted(CASES))
def test_a_cause_is_named_on_its_recorded_snapshot(cause: str) -> None:
    found = CASES[cause]()
    named = found[:1] if cause != "rule_failed" else found  # a rule that failed ranks last, below what the others found
    assert cause in [f.cause for f in named], [(f.cause, f.summary) for f in found]


def test_a_healthy_recorded_snapshot_names_nothing() -> None:
    assert cause_rules.evaluate(_evidence_with(lookups=ROUTED_OUT)) == [], "the recorded lab without a fault is healthy"


# Causes without a recorded-snapshot test yet (each has its injected-fault test as root): the list may only shrink.
WITHOUT_SNAPSHOT_TEST: frozenset[str] = frozenset()  # every cause has a test on a recorded snapshot: here, or a recording replayed (tests/test_causes_recorded.py)
TESTED_ABOVE = frozenset({"neigh_wrong", "arp_ignore", "blackhole_route", "forwarding_off", "dnat_wrong_match"})  # the tests at the top of this module


def test_every_cause_of_the_registry_has_a_recorded_snapshot_test() -> None:
    """A cause added to the registry fails this test until it has a case here (or, stating why, joins WITHOUT_SNAPSHOT_TEST)."""
    from test_causes_paths import COVERS as TESTED_ON_PATHS
    from test_causes_recorded import covered as recorded

    from netcheck.diagnose.causes import CAUSES

    covered = set(CASES) | TESTED_ABOVE | TESTED_ON_PATHS | recorded()
    assert covered <= set(CAUSES), sorted(covered - set(CAUSES))
    missing = set(CAUSES) - covered - WITHOUT_SNAPSHOT_TEST
    assert not missing, f"causes without a recorded-snapshot test: {sorted(missing)}"
    assert not covered & WITHOUT_SNAPSHOT_TEST, f"tested now, so take them off WITHOUT_SNAPSHOT_TEST: {sorted(covered & WITHOUT_SNAPSHOT_TEST)}"
