"""The kernel as witness in the diagnosis: drops of the repeated probe, mapped to causes, ranked,
rendered; negatives proven by the kernel's drop; one watch per run, scoped to its labs.

The first tests need no root (recorded events and values); those marked root build labs and
run bpftrace (skipped where ``dropwatch.unavailable()`` says it cannot run).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from netcheck.diagnose import ranking
from netcheck.diagnose import witness as witnessing
from netcheck.diagnose.path import Flow
from netcheck.evidence import DeleteRule, Diagnosis, Finding, KernelEvent, ProbeRequest, ProbeResult
from netcheck.faults import FAULTS
from netcheck.kernel import nftrace
from netcheck.kernel.dropwatch import KernelDrop, PacketKey, Witness, decisive, parse_event, reason_names
from netcheck.kernel.xtables import XRule

DATA = Path(__file__).parent / "data"
NAMES = reason_names((DATA / "kfree_skb.format").read_text())
FLOW = Flow("icmp", "icmp", "netns0", "172.18.0.10", "198.51.100.1", None, "reach", None, None, None, "outside")


def drop(reason: str, location: str = "nft_do_chain", src: str = "172.18.0.10", dst: str = "198.51.100.1", sport: int | None = 0x1234, ns: int = 7) -> KernelDrop:
    return KernelDrop(1, ns, reason, "ncab12b0", location, 1, src, dst, sport, None, 8)


def test_an_event_line_with_ports_becomes_a_value() -> None:
    tcp = parse_event("D 5 4026532530 3 lo tcp_v4_rcv 6 127.0.0.1 127.0.0.2 49532 5077 6125", NAMES)
    assert tcp is not None and (tcp.sport, tcp.dport, tcp.icmp_type) == (49532, 5077, None)
    assert tcp.describe() == "kernel drop: NO_SOCKET at tcp_v4_rcv on lo (127.0.0.1:49532 > 127.0.0.2:5077)"
    icmp = parse_event("D 5 4026532530 12 - nft_do_chain+0x4a/0x5c 1 127.0.0.1 127.0.0.1 2048 59921 4920", NAMES)
    assert icmp is not None and (icmp.sport, icmp.dport, icmp.icmp_type, icmp.device) == (4920, None, 8, "-")


def test_an_ipv6_event_line_with_ports_or_an_echo_id_becomes_a_value() -> None:
    tcp = parse_event("D 5 4026532530 12 ncab12b0 nf_hook_slow+0x4a/0x5c 6 fd00:18::10 2001:db8:2::1 40411 7 6125", NAMES)
    assert tcp is not None and (tcp.sport, tcp.dport, tcp.icmp_type) == (40411, 7, None)
    assert tcp.describe() == "kernel drop: NETFILTER_DROP at nf_hook_slow on ncab12b0 ([fd00:18::10]:40411 > [2001:db8:2::1]:7)"
    echo = parse_event("D 5 4026532530 12 ncab12b0 nf_hook_slow 58 fd00:18::10 2001:db8:2::1 32768 59921 4920", NAMES)
    assert echo is not None and (echo.sport, echo.dport, echo.icmp_type) == (4920, None, 128), "an ICMPv6 echo request (type 128), its id"
    assert echo.describe() == "kernel drop: NETFILTER_DROP at nf_hook_slow on ncab12b0 (fd00:18::10 > 2001:db8:2::1)"
    assert PacketKey(58, frozenset({"fd00:18::10"}), 4920).matches(echo) and not PacketKey(58, frozenset({"fd00:18::10"}), 4921).matches(echo)
    assert not PacketKey(1, frozenset({"fd00:18::10"}), 4920).matches(echo), "ICMPv6 is not ICMP"
    assert not decisive(replace(echo, reason="NO_SOCKET", location="icmpv6_rcv")), "an echo reply no ping socket took"


def test_a_packet_key_matches_its_probe_both_ways_and_through_nat_only() -> None:
    key = PacketKey(6, frozenset({"172.18.0.20", "203.0.113.2"}), 40000)
    request = KernelDrop(1, 7, "NETFILTER_DROP", "-", "nft_do_chain", 6, "172.18.0.20", "172.18.0.10", 40000, 5000)  # DNATed: the source still names it
    reply = KernelDrop(1, 7, "NO_SOCKET", "ceth1", "tcp_v4_rcv", 6, "172.18.0.10", "172.18.0.20", 5000, 40000)
    other_port = KernelDrop(1, 7, "NETFILTER_DROP", "-", "nft_do_chain", 6, "172.18.0.20", "203.0.113.2", 40001, 5000)
    other_proto = KernelDrop(1, 7, "NETFILTER_DROP", "-", "nft_do_chain", 17, "172.18.0.20", "203.0.113.2", 40000, 5000)
    assert key.matches(request) and key.matches(reply)
    assert not key.matches(other_port) and not key.matches(other_proto)
    assert PacketKey(1, frozenset({"172.18.0.10"}), 0x1234).matches(drop("NETFILTER_DROP"))
    assert not PacketKey(1, frozenset({"172.18.0.10"}), 0x1235).matches(drop("NETFILTER_DROP"))


def test_incidental_drops_decide_nothing() -> None:
    assert decisive(drop("NETFILTER_DROP")) and decisive(drop("IP_RPFILTER"))
    assert not decisive(drop("OTHERHOST")) and not decisive(drop("NO_SOCKET", "ping_rcv")) and not decisive(drop("TCP_INVALID_SEQUENCE"))


def test_a_witness_sees_only_its_labs_namespaces() -> None:
    class Watch:
        ready, ended = True, None

        def drops(self, inodes: set[int], *, since_ns: int, until_ns: int | None = None) -> list[KernelDrop]:
            return [d for d in (drop("NETFILTER_DROP", ns=7), drop("IP_RPFILTER", ns=8)) if d.netns_inode in inodes]

    mine = Witness(Watch(), {7: "host"})  # type: ignore[arg-type]
    key = PacketKey(1, frozenset({"172.18.0.10"}))
    assert [d.reason for d in mine.drops(key, since_ns=0)] == ["NETFILTER_DROP"]
    assert Witness(None, {}, unavailable="bpftrace is not installed").absent() == "bpftrace is not installed"


@pytest.mark.parametrize(("reason", "location", "netns", "causes"), [
    ("NETFILTER_DROP", "nft_do_chain", "host", ("forward_drop", "dns_udp_blocked", "rules_split")),
    ("IP_RPFILTER", "ip_rcv_finish_core", "host", ("rp_filter_strict",)),
    ("IP_INNOROUTES", "ip_route_input_slow", "host", ("no_route", "no_default_route", "host_no_route", "link_down", "blackhole_route")),
    ("IP_OUTNOROUTES", "ip_route_output", "netns0", ("no_route", "no_default_route", "host_no_route", "link_down", "blackhole_route")),
    ("NEIGH_FAILED", "neigh_invalidate", "netns0", ("wrong_gateway", "wrong_prefix", "not_in_bridge", "address_on_bridge_port", "link_down", "arp_ignore", "subnet_overlap")),
    ("PKT_TOO_BIG", "ip_forward", "host", ("mtu_mismatch", "path_mtu_low")),
    ("NO_SOCKET", "tcp_v4_rcv", "netns1", ("no_listener", "embedded_dns_rules_missing")),  # in the container meant to answer
    ("NO_SOCKET", "tcp_v4_rcv", "netns0", ()),  # elsewhere: an un-NATed reply, no missing listener
    ("TC_INGRESS", "tcf_classify", "host", ()),  # names no cause of the registry
])
def test_drop_reasons_map_to_causes_where_it_is_sound(reason: str, location: str, netns: str, causes: tuple[str, ...]) -> None:
    flow = Flow("tcp", "tcp", "netns0", "172.18.0.10", "172.18.0.20", 5000, "reach", "netns1", "172.18.0.20", 5000, "direct")
    assert witnessing.causes_of(drop(reason, location), netns, flow) == causes


def _finding(cause: str, score: int) -> Finding:
    return Finding(cause, "host", f"{cause} here", f"fix {cause}", ("seen",), score)


def test_a_cause_the_kernel_confirms_ranks_first_and_says_so() -> None:
    event = KernelEvent("IP_RPFILTER", "ip_rcv_finish_core", "host", "eth0", "198.51.100.1 > 172.18.0.10", ("rp_filter_strict",))
    found = [_finding("ip_forward_off", 95), _finding("rp_filter_strict", 80)]
    ranked = ranking.rank(found, ranking.Witnessed(frozenset({"host"}), kernel=(event,)))
    assert [f.cause for f in ranked] == ["rp_filter_strict", "ip_forward_off"]
    assert ranked[0].evidence[0] == "the kernel confirms it: IP_RPFILTER at ip_rcv_finish_core on host:eth0 (198.51.100.1 > 172.18.0.10)"
    disagreement = witnessing.rules_vs_kernel(found[0], ranked, (event,))
    assert "[ip_forward_off] first" in disagreement and "IP_RPFILTER at ip_rcv_finish_core on host:eth0" in disagreement and "[rp_filter_strict]" in disagreement
    assert witnessing.rules_vs_kernel(_finding("rp_filter_strict", 95), ranked, (event,)) == ""
    assert ranking.rank([_finding("ip_forward_off", 95)], ranking.Witnessed()) == [_finding("ip_forward_off", 95)]
    assert witnessing.rules_vs_kernel(None, [], (event,)).startswith("the rules name no cause, but the kernel dropped the probe: IP_RPFILTER")


def test_causes_rank_by_their_support_then_the_path_then_the_score() -> None:
    """Model, kernel and counter each add one kind of support; the score only orders causes of equal support."""
    rule = XRule("filter", "FORWARD", "DROP", protocol="icmp")
    dropping = replace(_finding("forward_drop", 60), fixes=(DeleteRule("host", "legacy", rule),))
    found = [_finding("ip_forward_off", 95), dropping, replace(_finding("link_down", 90), where="netns1")]
    bare = ranking.rank(found, ranking.Witnessed(frozenset({"host", "netns0"})))
    assert [f.cause for f in bare] == ["ip_forward_off", "forward_drop", "link_down"], "on the path first, then the score"
    counted = ranking.rank(found, ranking.Witnessed(frozenset({"host"}), rule_counters={rule.key(): 2}))
    assert counted[0].cause == "forward_drop" and counted[0].evidence[0] == "a counter confirms it: the rule's counter grew by 2"
    modelled = ranking.rank(found, ranking.Witnessed(frozenset({"host"}), model=("dropped", "filter FORWARD", "dropped by the FORWARD policy")))
    assert modelled[0].cause == "forward_drop" and modelled[0].evidence[0] == "the model confirms it: dropped at filter FORWARD"
    nft = ranking.rank(found, ranking.Witnessed(frozenset({"host"}), nft_drop="ip filter FORWARD: chain policy drop (no rule decided)"))
    assert nft[0].cause == "forward_drop" and nft[0].evidence[0].startswith("the nft trace confirms it: ip filter FORWARD: chain policy drop")
    routed = ranking.Witnessed(frozenset({"host"}), model=("no-route", "route", "no route to 198.51.100.1"), snmp={"host": {"Ip.InNoRoutes": 1}},
                          rule_counters={rule.key(): 1})
    both = ranking.rank([dropping, _finding("host_no_route", 60)], routed)
    assert both[0].cause == "host_no_route", "model and counter (two kinds) outrank a counter alone"
    assert "a counter confirms it: host: Ip.InNoRoutes +1" in both[0].evidence
    kernel_and_nft = ranking.Witnessed(kernel=(KernelEvent("NETFILTER_DROP", "nft_do_chain", "host", "br0", "p", ("forward_drop",)),), nft_drop="x")
    assert ranking._kinds(ranking.confirmations(dropping, kernel_and_nft)) == 1, "the kernel's drop and the nft trace are one witness"


def test_model_and_kernel_disagreement_shows_both() -> None:
    drop = KernelEvent("NETFILTER_DROP", "nft_do_chain", "host", "br0", "172.18.0.10 > 198.51.100.1", ("forward_drop",))
    delivered = witnessing.model_vs_kernel(("delivered", "", ""), set(), (drop,), "", True, None)
    assert delivered == "the model delivers the flow on the state read back; the kernel dropped it: NETFILTER_DROP at nft_do_chain on host:br0 (172.18.0.10 > 198.51.100.1)"
    routed = ("no-route", "route", "no route to 198.51.100.1")
    elsewhere = witnessing.model_vs_kernel(routed, {"no_route"}, (drop,), "", True, None)
    assert elsewhere.startswith("the model ends the probe at route: no-route: no route to 198.51.100.1; the kernel dropped it elsewhere: NETFILTER_DROP"), elsewhere
    assert witnessing.model_vs_kernel(("dropped", "filter FORWARD", "policy"), {"forward_drop"}, (drop,), "", True, None) == "", "they agree"
    req = ProbeRequest("icmp", "netns0", ip_address("198.51.100.1"))
    lost = ProbeResult(req, "seed1", "ceth0", "172.18.0.10", "ICMP echo", "unreachable", error="no answer")
    assert witnessing.model_vs_kernel(("dropped", "filter FORWARD", "policy"), {"forward_drop"}, (), "", True, lost).endswith("the kernel, watching, dropped none of the probe's packets")
    assert witnessing.model_vs_kernel(("dropped", "filter FORWARD", "policy"), {"forward_drop"}, (), "", False, lost) == "", "no witness, no disagreement"
    assert witnessing.model_vs_kernel(None, set(), (drop,), "", True, None) == "", "the model has no account of the flow (IPv6)"


def test_nft_trace_events_are_read_from_recorded_netlink_messages() -> None:
    """Two pings recorded in a throwaway namespace: one dropped by a rule in a chain jumped to, one by another table's chain policy."""
    every = nftrace.parse((DATA / "nftrace.bin").read_bytes())
    events = [e for e in every if e.kind != "end"]
    assert every[1].kind == "end" and every[1].verdict == "continue", "a chain's end (its policy follows) is a step of its own"
    listing = nftrace.Listing.parse((DATA / "nftrace.ruleset").read_text())
    assert [(e.table, e.chain, e.kind, e.handle, e.verdict, e.target) for e in events[:4]] == [
        ("nc_trace", "out", "rule", 3, "continue", ""), ("nc_trace", "out", "policy", None, "accept", ""), ("f", "o", "rule", 3, "jump", "j"), ("f", "j", "rule", 4, "drop", "")]
    first = events[0]
    assert (first.family, first.protocol, first.src, first.dst, first.icmp_type, first.oif) == ("inet", 1, "127.0.0.1", "127.0.0.5", 8, 1)
    assert listing.rules[("ip", "f", "j", 4)] == "ip daddr 127.0.0.5 counter drop", "counters are left out of the rule's text"
    assert listing.policies[("ip", "g", "o")] == "drop"
    rule_drop = next(e for e in events if e.verdict == "drop" and e.kind == "rule")
    assert nftrace.render(rule_drop, listing) == "ip f j rule 4: `ip daddr 127.0.0.5 counter drop` -> drop"
    policy_drop = next(e for e in events if e.kind == "policy" and e.verdict == "drop")
    assert nftrace.render(policy_drop, listing) == "ip g o: chain policy drop (no rule decided)"
    assert nftrace.parse(b"\x10\x00\x00\x00\x03\x00\x00\x00" + bytes(8)) == [], "other messages are skipped"


def test_a_nat_chain_whose_rules_did_not_match_says_so() -> None:
    """A DNAT that does not match (bound to another address or interface) gives no verdict: the trace shows the nat chain's policy, named as such."""
    listing = nftrace.Listing.parse("table ip nc1_nat { # handle 1\n\tchain PREROUTING { # handle 3\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                                    "\t\tip daddr 203.0.113.99 tcp dport 5000 counter packets 0 bytes 0 dnat to 172.18.0.10:5000 # handle 7\n\t}\n"
                                    "\tchain FORWARD { # handle 4\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n")
    assert listing.types == {("ip", "nc1_nat", "PREROUTING"): "nat", ("ip", "nc1_nat", "FORWARD"): "filter"}
    nat = nftrace.TraceEvent(1, "ip", "nc1_nat", "PREROUTING", "policy", None, "accept", protocol=6, src="203.0.113.1", dst="203.0.113.2")
    assert nftrace.render(nat, listing) == "ip nc1_nat PREROUTING: no nat rule matched; chain policy accept (no rule decided) (203.0.113.1 > 203.0.113.2)"
    assert nftrace.render(replace(nat, chain="FORWARD", verdict="drop"), listing).startswith("ip nc1_nat FORWARD: chain policy drop (no rule decided)")


def test_nft_steps_are_the_probes_own_packets_each_once() -> None:
    events = nftrace.parse((DATA / "nftrace.bin").read_bytes())
    trace = nftrace.NftTrace(None, "nc_trace")  # type: ignore[arg-type]
    second = next(e for e in events if e.dst == "127.0.0.6")
    flow = Flow("icmp", "icmp", "host", "127.0.0.1", "127.0.0.6", None, "reach", None, None, None, "loopback")
    req = ProbeRequest("icmp", "host", ip_address("127.0.0.6"))
    result = ProbeResult(req, "t", "lo", "127.0.0.1", "ICMP echo", "unreachable", flow_id=second.sport)
    steps = witnessing.nft_steps(events, result, flow, trace)
    assert [(e.table, e.chain, e.kind, e.verdict) for e in steps] == [("f", "o", "rule", "jump"), ("f", "o", "policy", "accept"), ("g", "o", "policy", "drop")]
    assert witnessing.nft_dropped(steps) == steps[-1]
    other = ProbeResult(req, "t", "lo", "127.0.0.1", "ICMP echo", "unreachable", flow_id=(second.sport or 0) + 1)
    assert witnessing.nft_steps(events, other, flow, trace) == (), "another flow id's packets are not the probe's"
    lines = witnessing.nft_lines(steps, trace, {})
    assert lines[-1] == "host: ip g o: chain policy drop (no rule decided)"


def test_an_icmp_probe_over_ipv6_is_keyed_as_icmpv6() -> None:
    six = Flow("icmp", "icmp", "netns0", "2001:db8:1::10", "2001:db8:2::1", None, "reach", None, None, None, "outside")
    result = ProbeResult(ProbeRequest("icmp", "netns0", ip_address("2001:db8:2::1")), "seed1-dual", "ceth0", "2001:db8:1::10", "ICMPv6 echo", "unreachable", flow_id=7)
    key = witnessing.key_of(result, six)
    assert key.protocol == 58 and key.matches(KernelDrop(1, 7, "NETFILTER_DROP", "-", "nft_do_chain", 58, "2001:db8:1::10", "2001:db8:2::1"))
    assert witnessing.key_of(replace(result, request=ProbeRequest("icmp", "netns0", ip_address("198.51.100.1"))), FLOW).protocol == 1


def test_the_trace_table_marks_only_the_probes_packets() -> None:
    text = nftrace.marking_rules("nc1_trace", {"172.18.0.10", "198.51.100.1", "2001:db8::1"}, ("tcp", "icmp"))
    assert "add table inet nc1_trace" in text
    assert "add chain inet nc1_trace pre { type filter hook prerouting priority -400; policy accept; }" in text
    assert "add rule inet nc1_trace out ip saddr { 172.18.0.10, 198.51.100.1 } meta l4proto { tcp, icmp } meta nftrace set 1" in text
    assert "add rule inet nc1_trace pre ip6 daddr { 2001:db8::1 } meta l4proto { tcp, icmp } meta nftrace set 1" in text
    assert witnessing.trace_protocols(FLOW) == ("icmp",)
    assert witnessing.trace_protocols(Flow("tcp", "tcp", "wan", "2001:db8::1", "2001:db8:1::2", 80, "reach", None, None, None, "publish")) == ("tcp", "ipv6-icmp")


def test_the_diagnosis_shows_the_kernels_reason_and_location_and_round_trips() -> None:
    event = KernelEvent("NETFILTER_DROP", "nft_do_chain", "host", "br0", "172.18.0.10 > 198.51.100.1", ("forward_drop",))
    d = Diagnosis(findings=(_finding("forward_drop", 90),), kernel=(event,), disagreement="x vs y",
                  nft_trace=("host: ip nc1_filter FORWARD rule 4: `oifname \"nc1up\" counter drop` -> drop (172.18.0.10 > 198.51.100.1)",))
    text = d.render()
    assert "  NETFILTER_DROP at nft_do_chain on host:br0 (172.18.0.10 > 198.51.100.1) -> forward_drop" in text
    assert "nft trace (the rules and verdicts the repeated probe's packets met in nf_tables):\n  host: ip nc1_filter FORWARD rule 4: `oifname" in text
    assert "model and kernel disagree: x vs y" in text
    from dataclasses import asdict

    assert Diagnosis.from_dict(json.loads(json.dumps(asdict(d)))) == d
    assert "kernel: no kernel witness: bpftrace is not installed" in Diagnosis(kernel_note="no kernel witness: bpftrace is not installed").render()


def test_a_negative_says_how_it_was_proven() -> None:
    req = ProbeRequest("icmp", "netns0", ip_address("172.18.0.20"), expect="block")
    assert req.ends_on_drop and not ProbeRequest("icmp", "netns0", ip_address("172.18.0.20")).ends_on_drop
    assert ProbeRequest.from_dict(json.loads(json.dumps(ProbeRequest("icmp", "h", ip_address("10.0.0.1"), end_on_drop=True).to_dict()))).end_on_drop is True
    event = KernelEvent("NETFILTER_DROP", "nft_do_chain", "host", "br0", "172.18.0.10 > 172.18.0.20")
    dropped = ProbeResult(req, "seed1", "ceth0", "172.18.0.10", "ICMP echo", "unreachable", error="the kernel dropped it", kernel_drop=event, flow_id=7)
    timed = ProbeResult(req, "seed1", "ceth0", "172.18.0.10", "ICMP echo", "unreachable", error="no answer within 0.3s")
    assert dropped.blocked_by() == "blocked: kernel drop NETFILTER_DROP at nft_do_chain on host:br0"
    assert timed.blocked_by() == "blocked: no answer within 0.3s"
    assert ProbeResult.from_dict(json.loads(json.dumps(dropped.to_dict()))) == dropped


def test_the_report_shows_the_kernels_drops() -> None:
    from netcheck.report.model import Results
    from netcheck.report.render import Renderer

    data = json.loads((DATA / "results-fail.json").read_text())
    probe = next(p for t in data["tests"] for p in t["probes"] if p.get("diagnosis"))
    probe["diagnosis"]["kernel"] = [{"reason": "NETFILTER_DROP", "location": "nft_do_chain", "netns": "host", "device": "br0",
                                     "packet": "172.18.0.10 > 198.51.100.1", "causes": ["forward_drop"]}]
    probe["diagnosis"]["disagreement"] = "the rules rank [ip_forward_off] first"
    probe["diagnosis"]["nft_trace"] = ["host: ip nc1_filter FORWARD: chain policy drop (no rule decided)"]
    html = Renderer().report(Results.from_dict(copy.deepcopy(data)))
    assert "<code>NETFILTER_DROP</code></td><td><code>nft_do_chain</code></td><td><code>host:br0</code>" in html
    assert "model and kernel disagree" in html and "the rules rank [ip_forward_off] first" in html
    assert "nft trace" in html and "host: ip nc1_filter FORWARD: chain policy drop (no rule decided)" in html, "the nft trace is shown beside the kernel's drops"


_ = threading  # the root tests below run two runs at once


# ----------------------------------------------------------------------------- as root: real labs, real bpftrace


@pytest.fixture
def watched() -> None:
    from netcheck.activation import skip_for_missing_tool
    from netcheck.kernel import dropwatch

    why = dropwatch.unavailable()
    if why:
        skip_for_missing_tool(why)


def _lab_with(labs: object, topology: str, fault: str):  # type: ignore[no-untyped-def]
    from netcheck import faults
    from netcheck.factory import LabFactory

    assert isinstance(labs, LabFactory)
    lab = labs.fresh(topology)
    assert faults.inject(lab, [fault]) == [fault]
    assert lab.witness is not None and lab.witness.absent(wait=30) is None, lab.witness and lab.witness.absent()
    return lab


@pytest.mark.root
@pytest.mark.usefixtures("watched")
def test_the_factory_runs_one_watch_per_run_recorded_and_ended() -> None:
    from netcheck.factory import LabFactory
    from netcheck.ledger import ProcessEntry, default_run_dir, read_record

    with LabFactory(reap=False) as labs:
        a, b = labs.fresh("seed1"), labs.fresh("seed2")
        assert a.witness is not None and b.witness is not None and a.witness.watch is b.witness.watch is not None
        assert not a.witness.inodes & b.witness.inodes, "each lab's witness is scoped to its own namespaces"
        proc = a.witness.watch._proc
        assert proc is not None
        pid = proc.pid
        mine = []
        for path in default_run_dir().glob("*.jsonl"):  # other runs' records come and go meanwhile: read each on its own
            with contextlib.suppress(OSError):
                header, entries, _kept = read_record(path)
                if any(isinstance(e, ProcessEntry) and e.pid == pid for e in entries):
                    mine.append((path, header))
        assert len(mine) == 1 and mine[0][1]["topology"] == "(kernel drop watch)", f"the watch's PID is in one run record of its own: {mine}"
        record = mine[0][0]
    assert proc.poll() is not None, "bpftrace outlived its run"
    assert not record.exists(), "the watch's run record stayed after the run"


@pytest.mark.root
@pytest.mark.usefixtures("watched")
@pytest.mark.parametrize("kind", ["icmp", "tcp", "udp"])
def test_a_negative_is_proven_by_the_kernels_drop(kind: str) -> None:
    from netcheck.factory import LabFactory
    from netcheck.probes import Prober

    with LabFactory(reap=False) as labs:
        lab = _lab_with(labs, "seed1", "forward-drop")  # FORWARD policy DROP, bridge-nf-call-iptables=1: netns0 cannot reach netns1
        port = {"icmp": None, "tcp": 5000, "udp": 7}[kind]
        r = Prober(lab).send(ProbeRequest(kind, "netns0", ip_address("172.18.0.20"), port, expect="block", timeout=5.0))  # type: ignore[arg-type]
        assert r.passed and r.kernel_drop is not None, r.error
        assert r.kernel_drop.reason == "NETFILTER_DROP" and r.kernel_drop.netns == "host", r.kernel_drop
        assert (r.blocked_by() or "").startswith("blocked: kernel drop NETFILTER_DROP at "), r.blocked_by()
        assert r.error is not None and "no answer within" not in r.error
        lab.witness = None  # without a witness, the same negative is proven by its timeout alone
        r = Prober(lab).send(ProbeRequest(kind, "netns0", ip_address("172.18.0.20"), port, expect="block", timeout=0.2))  # type: ignore[arg-type]
        assert r.passed and r.kernel_drop is None and (r.blocked_by() or "").startswith("blocked: no answer within 0.2s"), r.blocked_by()


@pytest.mark.root
@pytest.mark.usefixtures("watched")
def test_an_ipv6_negative_is_proven_by_the_kernels_drop() -> None:
    """ICMPv6, TCP and UDP over IPv6, blocked by an ip6tables FORWARD DROP: each ends at the kernel's drop of its own packet."""
    from netcheck.factory import LabFactory
    from netcheck.probes import Prober

    with LabFactory(reap=False) as labs:
        lab = _lab_with(labs, "seed1-dual", "ip6tables-forward-drop")
        for kind, port in (("icmp", None), ("tcp", 7), ("udp", 7)):
            r = Prober(lab).send(ProbeRequest(kind, "netns0", ip_address("2001:db8:2::1"), port, expect="block", timeout=5.0))  # type: ignore[arg-type]
            assert r.passed and r.kernel_drop is not None, f"{kind}: {r.error}"
            assert r.kernel_drop.reason == "NETFILTER_DROP" and r.kernel_drop.netns == "host" and "2001:db8:2::1" in r.kernel_drop.packet, r.kernel_drop
            assert r.error is not None and r.error.startswith("the kernel dropped it: NETFILTER_DROP at ") and "no answer within" not in r.error, r.error
            assert (r.blocked_by() or "").startswith("blocked: kernel drop NETFILTER_DROP at "), r.blocked_by()


def _diagnosed_at_once(a: object, b: object, dst: str) -> tuple[Diagnosis, Diagnosis]:
    """The same ICMP probe from netns0 to ``dst`` in two labs at once, each diagnosed by its own run."""
    from netcheck.diagnosing import DiagnosingProber

    results: dict[str, ProbeResult] = {}

    def probe(name: str, lab: object) -> None:
        results[name] = DiagnosingProber(lab).send(ProbeRequest("icmp", "netns0", ip_address(dst)))  # type: ignore[arg-type]

    threads = [threading.Thread(target=probe, args=(n, lab)) for n, lab in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    da, db = results["a"].diagnosis, results["b"].diagnosis
    assert da is not None and db is not None
    return da, db


@pytest.mark.root
@pytest.mark.usefixtures("watched")
def test_two_runs_at_once_each_report_only_their_own_ipv6_kernel_events() -> None:
    """The IPv6 twin of the test below: two runs, the same dual-stack topology, the same ICMPv6 probe (the same addresses
    and, both starting afresh, maybe the same echo id), two faults: each sees only its own drop."""
    from netcheck.factory import LabFactory

    with LabFactory(reap=False) as run_a, LabFactory(reap=False) as run_b:
        a = _lab_with(run_a, "seed1-dual", "ip6tables-forward-drop")  # NETFILTER_DROP in the host, on the way out
        b = _lab_with(run_b, "seed1-dual", "ipv6-policy-prohibit")  # IP_INNOROUTES in the host, on the way back
        start = time_ns()
        da, db = _diagnosed_at_once(a, b, "2001:db8:2::1")
        assert {k.reason for k in da.kernel} == {"NETFILTER_DROP"}, da.render()
        assert {k.reason for k in db.kernel} == {"IP_INNOROUTES"}, db.render()
        assert da.findings[0].cause == "forward_drop" and db.findings[0].cause == "blackhole_route", (da.render(), db.render())
        assert a.witness is not None and b.witness is not None
        both = Witness(a.witness.watch, {**a.witness.labels, **b.witness.labels})
        seen = {d.reason for d in both.drops(PacketKey(58, frozenset({"fd00:18::10", "2001:db8:2::1"})), since_ns=start)}
        assert {"NETFILTER_DROP", "IP_INNOROUTES"} <= seen, "the test could not fail: one watch did not see both runs' drops"


@pytest.mark.root
@pytest.mark.usefixtures("watched")
def test_two_runs_at_once_each_report_only_their_own_kernel_events() -> None:
    """Two runs (two factories, two watches), the same topology and the same probe, different faults:
    each diagnosis shows only its own run's drop and its own nft trace; a witness scoped to both labs would see both drops."""
    from netcheck.factory import LabFactory

    with LabFactory(reap=False) as run_a, LabFactory(reap=False) as run_b:
        a = _lab_with(run_a, "seed1-nft", "forward-drop")  # NETFILTER_DROP in the host: the FORWARD policy
        b = _lab_with(run_b, "seed1-nft", "rp-filter-strict")  # IP_RPFILTER in the host
        start = time_ns()
        da, db = _diagnosed_at_once(a, b, "198.51.100.1")
        assert {k.reason for k in da.kernel} == {"NETFILTER_DROP"}, da.render()
        assert {k.reason for k in db.kernel} == {"IP_RPFILTER"}, db.render()
        assert da.findings[0].cause == "forward_drop" and db.findings[0].cause == "rp_filter_strict"
        assert any(f"{a.tag}_filter FORWARD: chain policy drop (no rule decided)" in line for line in da.nft_trace), da.render()
        assert not any("policy drop" in line for line in db.nft_trace), db.render()
        for d, other in ((da, b), (db, a)):
            assert d.nft_trace and not [line for line in d.nft_trace if other.tag in line], f"a run's nft trace shows the other run's tables:\n{d.render()}"
        for lab in (a, b):
            assert (lab.tag + "_trace") not in lab.host.run(["nft", "list", "tables"]).stdout.decode(), "the trace table outlived its diagnosis"
        assert a.witness is not None and b.witness is not None
        both = Witness(a.witness.watch, {**a.witness.labels, **b.witness.labels})
        seen = {d.reason for d in both.drops(PacketKey(1, frozenset({"172.18.0.10", "198.51.100.1"})), since_ns=start)}
        assert {"NETFILTER_DROP", "IP_RPFILTER"} <= seen, "the test could not fail: one watch did not see both runs' drops"


def time_ns() -> int:
    import time

    return time.monotonic_ns()


KERNEL_LINE = r"^E?\s+(?P<reason>[A-Z0-9_]+) at (?P<location>[a-z0-9_.]+) on (?P<where>\S+) \("


@pytest.mark.root
@pytest.mark.usefixtures("watched")
@pytest.mark.parametrize("fault", sorted(n for n, f in FAULTS.items() if f.kernel))
def test_every_fault_the_kernel_drops_shows_its_reason_and_location(run_suites, repo, fault: str) -> None:  # type: ignore[no-untyped-def]
    """Each fault of the catalog where the kernel drops the probe (``Fault.kernel``): its suite test's
    diagnosis shows the kernel's reason and the function that dropped it, under the kernel's heading."""
    f = FAULTS[fault]
    out = run_suites(str(repo / "suites" / f.suite_test), f"--netcheck-topology={f.topology}", f"--netcheck-fault={fault}").stdout.str()
    section = out.split("kernel (its drops of the probe's packets during the repeat, from skb:kfree_skb):", 1)
    assert len(section) == 2, f"fault {fault}: the diagnosis shows no kernel drop:\n{out[-3000:]}"
    shown = {(m.group("reason"), m.group("location")) for m in re.finditer(KERNEL_LINE, section[1].split("\n\n", 1)[0], re.M)}
    assert any(reason == f.kernel and location for reason, location in shown), f"fault {fault}: expected {f.kernel} with its location, shown: {shown}:\n{section[1][:1500]}"


# ----------------------------------------------------------------------------- fixes verified by re-probing


def test_fix_values_round_trip_and_render_in_one_place() -> None:
    from dataclasses import asdict

    from netcheck.evidence import AddRoute, SetLink, Sysctl

    f = Finding("link_down", "host", "s", "fix", (), 90, (SetLink("host", "ncab12up"), AddRoute("host", "default", "203.0.113.1"), Sysctl("host", "net.ipv4.ip_forward", "1")),
                "fix verified: ...")
    d = Diagnosis(findings=(f,))
    assert Diagnosis.from_dict(json.loads(json.dumps(asdict(d)))) == d
    assert [x.command() for x in f.fixes] == ["ip link set ncab12up up", "ip route add default via 203.0.113.1", "sysctl -w net.ipv4.ip_forward=1"]
    assert "     fix verified: ..." in d.render()


def test_fixes_are_never_applied_in_host_mode_or_to_labs_netcheck_did_not_build() -> None:
    from types import SimpleNamespace

    from netcheck.diagnose import fixes as fixing

    assert "host mode" in (fixing.applicable(SimpleNamespace(mode=SimpleNamespace(name="host"), ledger=object())) or "")
    assert "not a lab netcheck built" in (fixing.applicable(SimpleNamespace(title="doctor")) or "")
    assert fixing.applicable(SimpleNamespace(mode=SimpleNamespace(name="sandbox"), ledger=object())) is None


@pytest.mark.root
def test_a_fix_is_verified_on_the_lab_then_undone() -> None:
    from netcheck import faults
    from netcheck.diagnosing import DiagnosingProber
    from netcheck.factory import LabFactory

    with LabFactory(reap=False) as labs:
        lab = labs.fresh("seed1")
        faults.inject(lab, ["ip-forward-off"])
        r = DiagnosingProber(lab).send(ProbeRequest("icmp", "netns0", ip_address("198.51.100.1")))
        assert r.diagnosis is not None and r.diagnosis.top is not None
        top = r.diagnosis.top
        assert top.cause == "ip_forward_off" and top.verified.startswith("fix verified: the probe passes after host: sysctl -w net.ipv4.ip_forward=1"), r.diagnosis.render()
        assert "--netcheck-keep" in top.verified
        assert lab.host.sysctl("net.ipv4.ip_forward") == "0", "the fix was not undone"
        assert not DiagnosingProber(lab).send(ProbeRequest("icmp", "netns0", ip_address("198.51.100.1"))).passed, "the lab is not as it was built"


@pytest.mark.root
@pytest.mark.usefixtures("watched")
def test_in_host_mode_the_nft_trace_shows_the_hosts_rule_and_leaves_the_host_as_it_was() -> None:
    """A stand-in host (a throwaway namespace, as tests/test_host_mode.py makes) whose own nft table drops one
    container's traffic to another: the host-mode run's diagnosis shows that rule and its verdict from the trace,
    and the trace table (recorded in the run's ledger before it existed) is gone: the host is left exactly as it was."""
    import subprocess

    from test_host_mode import PYTEST, REPO, difference, fake_host, snapshot

    from netcheck.ledger import Ledger
    from netcheck.naming import new_tag

    ledger = Ledger(new_tag(), topology="(host-mode test's stand-in host)", mode="sandbox")
    try:
        with fake_host(ledger, legacy_firewall=False) as host:
            for argv in (["nft", "add", "chain", "inet", "hostfw", "forward", "{ type filter hook forward priority 0; policy accept; }"],
                         ["nft", "add", "rule", "inet", "hostfw", "forward", "ip", "saddr", "172.18.0.10", "ip", "daddr", "172.18.0.20", "counter", "drop"]):
                done = subprocess.run(["nsenter", f"--net={host}", *argv], capture_output=True, text=True, timeout=60, check=False)
                assert done.returncode == 0, done.stderr
            before = snapshot(host)
            argv = ["nsenter", f"--net={host}", PYTEST, "suites/test_bridge.py::test_full_matrix_on_each_bridge", "--netcheck-host", "--netcheck-topology=seed1",
                    "--netcheck-report=none", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
            run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
            after = snapshot(host)
    finally:
        left = ledger.undo_and_close()
    assert not left, f"the stand-in host's objects were not all removed: {left}"
    out = run.stdout
    assert run.returncode == 1 and "nft trace (the rules and verdicts" in out, out[-6000:]
    assert re.search(r"host: inet hostfw forward rule \d+: `ip saddr 172\.18\.0\.10 ip daddr 172\.18\.0\.20 counter drop` -> drop", out), out[-6000:]
    assert difference(before, after) == "", "host mode changed the host (the trace table stayed?):\n" + difference(before, after)
