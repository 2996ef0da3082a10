"""The datapath model without root: on planned states, on planned states changed by hand, and on
recorded kernel states (tests/data/datapath, written by tests/test_datapath_faults.py with
NETCHECK_RECORD_STATES=1 from faults injected by hand into a live lab)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from netcheck import spec
from netcheck.datapath import Flow, State, Trace, record, trace
from netcheck.datapath.values import Namespace
from netcheck.kernel.xtables import XRule
from netcheck.lab.plan import planned, planned_plan, planned_ruleset

RECORDED = Path(__file__).parent / "data" / "datapath"


def recorded(name: str) -> State:
    return record.loads((RECORDED / f"{name}.json").read_text("utf-8"))


def shown(t: Trace) -> str:
    return "\n".join(t.lines())


def with_host(state: State, **changes: object) -> State:
    return replace(state, namespaces=tuple(replace(n, **changes) if n.label == "host" else n for n in state.namespaces))  # type: ignore[arg-type]


def host(state: State) -> Namespace:
    ns = state.ns("host")
    assert ns is not None
    return ns


# ----------------------------------------------------------------------------- recorded kernel states


def test_the_recorded_healthy_lab_delivers_every_kind_of_flow() -> None:
    s = recorded("healthy")
    assert s.source == "kernel"
    for flow in (Flow("netns0", "198.51.100.1", "icmp"), Flow("netns1", "203.0.113.2", "tcp", 5000), Flow("wan", "203.0.113.2", "tcp", 5000),
                 Flow("netns0", "172.18.0.20", "tcp", 7), Flow("host", "203.0.113.2", "tcp", 5000)):
        t = trace(s, flow)
        assert t.delivered, shown(t)


@pytest.mark.parametrize(("name", "flow", "disposition", "stage", "says"), [
    ("policy-blackhole", Flow("netns1", "198.51.100.1", "icmp", src="172.18.0.20"), "null-routed", "routing decision", "lookup 100"),
    ("prohibit-route", Flow("netns0", "198.51.100.1", "icmp"), "prohibited", "routing decision", "prohibit 198.51.100.1/32"),
    ("notrack-dnat", Flow("wan", "203.0.113.2", "tcp", 5000), "no-listener", "listener", "listening"),
    ("isolated-ports", Flow("netns0", "172.18.0.20", "icmp"), "dropped", "bridge", "isolated on"),
    ("mac-match", Flow("netns0", "198.51.100.1", "icmp"), "unknown", "filter FORWARD", "filter FORWARD rule 1"),
    ("established-only", Flow("netns0", "198.51.100.1", "icmp"), "dropped", "filter FORWARD", "policy DROP"),
    ("bridge-drop", Flow("netns0", "172.18.0.20", "icmp"), "dropped", "_l2 l2fwd", "rule 1"),
])
def test_a_recorded_fault_is_named_by_its_step(name: str, flow: Flow, disposition: str, stage: str, says: str) -> None:
    t = trace(recorded(name), flow)
    assert t.disposition == disposition, shown(t)
    assert t.decided is not None and t.decided.stage.endswith(stage) and says in t.decided.by, shown(t)


def test_the_recorded_notrack_names_the_dnat_it_skipped() -> None:
    t = trace(recorded("notrack-dnat"), Flow("wan", "203.0.113.2", "tcp", 5000))
    skipped = [s for s in t.causes() if "DNAT not applied" in s.text]
    assert skipped and "--to-destination 172.18.0.10:5000" in skipped[0].by, shown(t)


def test_the_recorded_unmodelled_match_is_unknown_whatever_the_packet() -> None:
    """`-m mac ... -j DROP` may match any frame: each flow through FORWARD is unknown, bridged ones included (br_netfilter)."""
    s = recorded("mac-match")
    for flow in (Flow("netns0", "198.51.100.1", "icmp"), Flow("netns0", "172.18.0.20", "icmp")):
        t = trace(s, flow)
        assert t.disposition == "unknown" and "this rule may match: it uses mac" in t.reason, shown(t)
    assert trace(s, Flow("host", "203.0.113.2", "tcp", 5000)).delivered, "the host's own traffic never meets FORWARD... except the DNATed one, routed out br0"


def test_established_only_lets_replies_through_but_nothing_new() -> None:
    s = recorded("established-only")
    t = trace(s, Flow("netns0", "198.51.100.1", "icmp"))
    assert "[new]" in (t.decided.text if t.decided else ""), shown(t)
    assert trace(s, Flow("host", "203.0.113.2", "tcp", 5000)).delivered, "the host's own DNATed flow is not forwarded"


# ----------------------------------------------------------------------------- planned states


def test_the_planned_seeds_deliver_what_their_suites_expect() -> None:
    s1, s2 = planned(spec.builtin("seed1")), planned(spec.builtin("seed2"))
    assert s1.source == "plan"
    for s, flow in ((s1, Flow("netns1", "203.0.113.2", "tcp", 5000)), (s1, Flow("host", "203.0.113.2", "tcp", 5000)), (s2, Flow("http3", "10.100.100.100", "tcp", 8080)),
                    (s2, Flow("wan", "10.100.100.100", "tcp", 8080)), (s2, Flow("http2", "198.51.100.1", "icmp"))):
        t = trace(s, flow)
        assert t.delivered, shown(t)
    t = trace(s1, Flow("netns1", "203.0.113.2", "tcp", 5000))
    assert any(x.stage == "nat PREROUTING" and "DNAT" in x.text and "nat PREROUTING rule 1" in x.by for x in t.steps), shown(t)
    assert any("un-DNAT" in x.text for x in t.steps if x.direction == "reply"), shown(t)


def test_without_br_netfilter_the_hairpin_reply_is_not_unnatted() -> None:
    s = planned(spec.builtin("seed1"))
    off = with_host(s, sysctls=tuple((k, 0 if k == "net.bridge.bridge-nf-call-iptables" else v) for k, v in host(s).sysctls))
    t = trace(off, Flow("netns1", "203.0.113.2", "tcp", 5000))
    assert t.disposition == "reply-not-unnatted" and "from 172.18.0.10:5000" in t.reason, shown(t)
    assert any(x.stage == "br_netfilter" and "skips" in x.text for x in t.steps), shown(t)


def test_ip_forward_off_is_named_by_its_sysctl() -> None:
    s = planned(spec.builtin("seed1"))
    off = with_host(s, sysctls=tuple((k, 0 if k == "net.ipv4.ip_forward" else v) for k, v in host(s).sysctls))
    t = trace(off, Flow("netns0", "198.51.100.1", "icmp"))
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "forwarding" and t.decided.by == "net.ipv4.ip_forward = 0", shown(t)


def test_a_forward_reject_and_a_dnat_to_loopback() -> None:
    t1 = spec.builtin("seed1")
    p = planned_plan(t1)
    s = planned(t1)
    reject = XRule("filter", "FORWARD", "REJECT", out_interface=p.kname("eth0"))
    t = trace(with_host(s, ruleset=planned_ruleset(p, [reject])), Flow("netns0", "198.51.100.1", "icmp"))
    assert t.disposition == "rejected" and t.decided is not None and "-j REJECT" in t.decided.by, shown(t)
    loop = XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", protocol="tcp", dport=5000, to_destination="127.0.0.1:5000")
    t = trace(with_host(s, ruleset=planned_ruleset(p, [loop])), Flow("wan", "203.0.113.2", "tcp", 5000))
    assert t.disposition == "dropped" and t.decided is not None and "route_localnet = 0" in t.decided.by, shown(t)


def test_strict_rp_filter_drops_what_arrives_by_the_wrong_way() -> None:
    t1 = spec.builtin("seed2")
    s = planned(t1)
    up = planned_plan(t1).kname("enp0s3")
    strict = with_host(s, sysctls=(*host(s).sysctls, ("net.ipv4.conf.all.rp_filter", 1)))
    assert trace(strict, Flow("http2", "198.51.100.1", "icmp")).delivered, "symmetric traffic passes strict rp_filter"
    t = trace(strict, Flow("wan", "10.100.100.100", "tcp", 8080, src="10.0.0.99"))  # a source that lives behind bridge_local, arriving by the uplink
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "rp_filter" and up in t.decided.text, shown(t)


def test_a_bad_recording_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match="record it again"):
        record.loads('{"format": 0, "namespaces": []}')


def test_a_fwmark_rule_does_not_select_an_unmarked_packet_but_a_mark_makes_it_unknown() -> None:
    from ipaddress import IPv4Network

    from netcheck.datapath.values import DEFAULT_RULES, Route
    from netcheck.kernel.netns import IpRule

    t1 = spec.builtin("seed1")
    s, p = planned(t1), planned_plan(t1)
    h = host(s)
    rules = (*DEFAULT_RULES, IpRule(100, "lookup", 100, unmodelled=("fwmark", "fwmask")))
    routes = (*h.routes, Route(IPv4Network("0.0.0.0/0"), kind="blackhole", table=100))
    marked = with_host(s, rules=rules, routes=routes)
    assert trace(marked, Flow("netns0", "198.51.100.1", "icmp")).delivered, "no MARK touched the packet: its mark is 0"
    mark = XRule("nat", "PREROUTING", "MARK", in_interface=p.kname("br0"))
    t = trace(with_host(marked, ruleset=planned_ruleset(p, [mark])), Flow("netns0", "198.51.100.1", "icmp"))
    assert t.disposition == "unknown" and "fwmark" in t.reason and t.decided is not None and t.decided.stage == "routing decision", shown(t)


def _build_specs() -> list[spec.Topology]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = [spec.builtin(n) for n in spec.BUILTIN]
    for path in sorted([*(root / "examples").glob("*.toml"), *(root / "tests" / "specs" / "valid").glob("*.toml")]):
        try:
            t = spec.load(path)
        except spec.SpecError:
            continue
        if t.setup.mode == "build" and not any(p.loopback or p.wildcard or p.hairpin or p.host_address is not None or len(p.host_ports) > 1 for p in t.publishes):
            found.append(t)
    return found


def test_the_model_and_the_specs_expectations_agree_on_every_ipv4_question() -> None:
    """netcheck.expect answers the suites from the spec's rules; the model, traced on the planned state,
    must give the same answer to every IPv4 question of every built-in and example it models."""
    from netcheck import expect
    from netcheck.lab import plan

    asked, differ = 0, []
    for t in _build_specs():
        names = [c.name for c in t.containers if c.address is not None]
        questions = [(f"{a} reaches {b}", expect.reaches(t, a, b), plan.delivered(t, a, t.container(b).address.ip))  # type: ignore[union-attr]
                     for a in names for b in names if a != b]
        questions += [(f"{a} reaches the outside", expect.reaches_outside(t, a), plan.delivered(t, a, t.wan.remote[0].ip)) for a in names if t.wan.remote]
        questions += [(f"the outside reaches {p.host_port}/{p.protocol}", expect.published_from_outside(t, p),
                       plan.delivered(t, "wan", t.host.address.ip, p.protocol, p.host_port)) for p in t.publishes if p.protocol == "tcp"]
        for what, said, traced in questions:
            asked += 1
            if said != traced:
                differ.append(f"{t.name}: {what}: the spec says {said}, the model {traced}")
    assert asked >= 30 and not differ, "\n".join(differ)
