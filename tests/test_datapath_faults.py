"""Generality: faults in no catalog, injected by hand into a live lab, are each named by the datapath model.

One seed1 lab for the module; each test breaks it with the tools a user would use (``ip rule``,
``ip route``, ``iptables-nft``, ``iptables-legacy``, ``ip link``), reads the kernel back as the
diagnosis does, traces the flow through the observed state, and undoes its fault. The model must
name the step that decided the packet's fate, or say "unknown" for a match it does not model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from netcheck import spec
from netcheck.datapath import Flow, Trace, record, trace
from netcheck.diagnose import datapath, rules
from netcheck.diagnose import state as kernel_state
from netcheck.diagnose.recording import facts
from netcheck.diagnosing import DiagnosingProber
from netcheck.lab import Lab

pytestmark = pytest.mark.root
RECORDED = Path(__file__).parent / "data" / "datapath"  # NETCHECK_RECORD_STATES=1 writes each fault's observed state there (tests/test_datapath.py reads them)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(spec.builtin("seed1")) as made:
        yield made


def sh(lab: Lab, *argv: str) -> None:
    done = lab.host.run(list(argv))
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.decode()}"


@pytest.fixture
def undo(lab: Lab) -> Iterator[list[Sequence[str]]]:
    """Commands that undo the test's fault, run in reverse after it (even if it failed)."""
    todo: list[Sequence[str]] = []
    yield todo
    for argv in reversed(todo):
        lab.host.run(list(argv))
    assert trace_of(lab, Flow("netns0", "198.51.100.1", "icmp")).delivered, "the lab is not healthy again after the undo"


def trace_of(lab: Lab, flow: Flow, name: str | None = None) -> Trace:
    snap = kernel_state.snapshot(lab.namespaces())
    state = datapath.observed(snap, datapath.peers(rules.Evidence(facts(lab, snap), snap)))
    if name is not None and os.environ.get("NETCHECK_RECORD_STATES"):
        RECORDED.mkdir(exist_ok=True)
        (RECORDED / f"{name}.json").write_text(record.dumps(state) + "\n", "utf-8")
    return trace(state, flow)


def test_the_healthy_lab_delivers_every_kind_of_flow(lab: Lab) -> None:
    for flow in (Flow("netns0", "198.51.100.1", "icmp"), Flow("netns1", "203.0.113.2", "tcp", 5000), Flow("wan", "203.0.113.2", "tcp", 5000),
                 Flow("netns0", "172.18.0.20", "tcp", 7), Flow("host", "203.0.113.2", "tcp", 5000)):
        t = trace_of(lab, flow, "healthy")
        assert t.delivered, "\n".join(t.lines())


def test_a_policy_rule_to_a_blackhole_table(lab: Lab, undo: list[Sequence[str]]) -> None:
    sh(lab, "ip", "route", "add", "blackhole", "default", "table", "100")
    undo.append(["ip", "route", "del", "blackhole", "default", "table", "100"])
    sh(lab, "ip", "rule", "add", "from", "172.18.0.20", "lookup", "100", "priority", "100")
    undo.append(["ip", "rule", "del", "priority", "100"])
    t = trace_of(lab, Flow("netns1", "198.51.100.1", "icmp", src="172.18.0.20"), "policy-blackhole")
    assert t.disposition == "null-routed", "\n".join(t.lines())
    assert t.decided is not None and t.decided.where == "host" and "blackhole default table 100" in t.decided.by and "lookup 100" in t.decided.by, t.decided
    assert trace_of(lab, Flow("netns0", "198.51.100.1", "icmp")).delivered, "the rule selects netns1's source only"


def test_a_prohibit_route(lab: Lab, undo: list[Sequence[str]]) -> None:
    sh(lab, "ip", "route", "add", "prohibit", "198.51.100.1")
    undo.append(["ip", "route", "del", "prohibit", "198.51.100.1"])
    t = trace_of(lab, Flow("netns0", "198.51.100.1", "icmp"), "prohibit-route")
    assert t.disposition == "prohibited" and t.decided is not None and t.decided.by == "prohibit 198.51.100.1/32", "\n".join(t.lines())
    r = DiagnosingProber(lab).icmp("netns0", "198.51.100.1")
    d = r.diagnosis
    assert d is not None and not r.passed, r.explain()
    found = next((f for f in d.findings if f.cause == "model_disposition"), None)
    assert found is not None and "prohibit 198.51.100.1/32" in found.fix and any("model step" in e for e in found.evidence), r.explain()


def test_a_raw_notrack_rule_breaks_the_dnat(lab: Lab, undo: list[Sequence[str]]) -> None:
    rule = ["-t", "raw", "PREROUTING", "-d", "203.0.113.2", "-p", "tcp", "--dport", "5000", "-j", "NOTRACK"]
    sh(lab, "iptables-nft", *rule[:2], "-A", *rule[2:])
    undo.append(["iptables-nft", *rule[:2], "-D", *rule[2:]])
    t = trace_of(lab, Flow("wan", "203.0.113.2", "tcp", 5000), "notrack-dnat")
    assert t.disposition == "no-listener" and t.decided is not None and t.decided.where == "host", "\n".join(t.lines())
    why = [s for s in t.causes() if "DNAT not applied" in s.text]
    assert why and "--to-destination 172.18.0.10:5000" in why[0].by, "\n".join(t.lines())
    assert any(s.stage.startswith("raw PREROUTING") and "NOTRACK" in s.text for s in t.steps), "\n".join(t.lines())


def test_isolated_bridge_ports(lab: Lab, undo: list[Sequence[str]]) -> None:
    v0, v1 = lab.kname("veth0"), lab.kname("veth1")
    for v in (v0, v1):
        sh(lab, "ip", "link", "set", v, "type", "bridge_slave", "isolated", "on")
        undo.append(["ip", "link", "set", v, "type", "bridge_slave", "isolated", "off"])
    t = trace_of(lab, Flow("netns0", "172.18.0.20", "icmp"), "isolated-ports")
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "bridge" and "isolated" in t.decided.text, "\n".join(t.lines())
    assert trace_of(lab, Flow("netns0", "198.51.100.1", "icmp")).delivered, "an isolated port still reaches the host"


def test_an_unmodelled_match_is_unknown_not_a_guess(lab: Lab, undo: list[Sequence[str]]) -> None:
    rule = ["FORWARD", "-m", "mac", "--mac-source", "02:00:00:00:00:01", "-j", "DROP"]
    sh(lab, "iptables-legacy", "-w", "5", "-I", *rule)
    undo.append(["iptables-legacy", "-w", "5", "-D", *rule])
    t = trace_of(lab, Flow("netns0", "198.51.100.1", "icmp"), "mac-match")
    assert t.disposition == "unknown" and "this rule may match" in t.reason and "mac" in t.reason, "\n".join(t.lines())
    assert t.decided is not None and "filter FORWARD rule 1" in t.decided.by, t.decided


def test_established_accepted_but_no_new(lab: Lab, undo: list[Sequence[str]]) -> None:
    rule = ["FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    sh(lab, "iptables-legacy", "-w", "5", "-A", *rule)
    undo.append(["iptables-legacy", "-w", "5", "-D", *rule])
    sh(lab, "iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP")
    undo.append(["iptables-legacy", "-w", "5", "-P", "FORWARD", "ACCEPT"])
    t = trace_of(lab, Flow("netns0", "198.51.100.1", "icmp"), "established-only")
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "filter FORWARD", "\n".join(t.lines())
    assert "[new]" in t.decided.text and "policy DROP" in t.decided.by, t.decided


def test_an_nft_bridge_family_drop(lab: Lab, undo: list[Sequence[str]]) -> None:
    table = f"{lab.tag}_l2"  # in the lab's own host namespace, gone with it; the undo deletes it first
    sh(lab, "nft", f"add table bridge {table}; add chain bridge {table} l2fwd {{ type filter hook forward priority 0; }}; add rule bridge {table} l2fwd ip daddr 172.18.0.20 drop")
    undo.append(["nft", "delete", "table", "bridge", table])
    t = trace_of(lab, Flow("netns0", "172.18.0.20", "icmp"), "bridge-drop")
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == f"nft bridge {table} l2fwd" and "rule 1" in t.decided.by, "\n".join(t.lines())
    assert trace_of(lab, Flow("netns0", "198.51.100.1", "icmp")).delivered, "the bridge's forward hook never sees routed traffic"


# ----------------------------------------------------------------------------- IPv6: one dual-stack lab


@pytest.fixture(scope="module")
def dual() -> Iterator[Lab]:
    with Lab(spec.builtin("seed1-dual")) as made:
        yield made


def test_the_dual_stack_lab_is_traced_over_ipv6(dual: Lab) -> None:
    """The observed state holds IPv6's addresses, routes, policy rules and listening sockets: echoes out and between
    containers are delivered, and so is a TCP flow to a published port, at its container's IPv6 listener."""
    for flow in (Flow("netns0", "2001:db8:2::1", "icmp"), Flow("netns0", "fd00:18::20", "icmp"), Flow("wan", "2001:db8:1::2", "icmp")):
        t = trace_of(dual, flow, "healthy-dual" if flow.source == "netns0" and flow.dst.startswith("2001") else None)
        assert t.delivered, "\n".join(t.lines())
    t = trace_of(dual, Flow("wan", "2001:db8:1::2", "tcp", 5000))
    assert t.delivered and t.target == "netns0", "\n".join(t.lines())
    assert any("DNAT" in s.text and "[fd00:18::10]:5000" in s.text for s in t.steps), "\n".join(t.lines())
    assert any(s.stage == "listener" and "[::]:5000" in s.text for s in t.steps), "\n".join(t.lines())
    t = trace_of(dual, Flow("wan", "2001:db8:1::2", "tcp", 5999))
    assert t.disposition == "no-listener", "an unpublished port: nothing listens on the host's IPv6 address\n" + "\n".join(t.lines())


def test_an_ipv6_policy_rule_decides_the_flow_by_its_text(dual: Lab, undo6: list[Sequence[str]]) -> None:
    """``ip -6 rule add from 2001:db8::/32 prohibit``: the replies to a container's echo are refused where the host
    routes them, by that rule (its text named); the containers' own traffic and IPv4 are untouched."""
    sh(dual, "ip", "-6", "rule", "add", "from", "2001:db8::/32", "prohibit", "priority", "1000")
    undo6.append(["ip", "-6", "rule", "del", "priority", "1000"])
    t = trace_of(dual, Flow("netns0", "2001:db8:2::1", "icmp"), "policy6-prohibit")
    assert t.disposition == "prohibited" and t.decided is not None and t.decided.where == "host" and t.decided.direction == "reply", "\n".join(t.lines())
    assert t.decided.by == "ip -6 rule 1000: from 2001:db8::/32 prohibit", t.decided
    assert trace_of(dual, Flow("netns0", "fd00:18::20", "icmp")).delivered, "the rule selects the outside world's sources only"
    assert trace_of(dual, Flow("netns0", "198.51.100.1", "icmp")).delivered, "an ip -6 rule never routes IPv4"


def test_an_ip6tables_drop_is_named_and_leaves_ipv4_alone(dual: Lab, undo6: list[Sequence[str]]) -> None:
    rule = ["FORWARD", "-o", dual.kname("eth0"), "-j", "DROP"]
    sh(dual, "ip6tables-nft", "-I", *rule)
    undo6.append(["ip6tables-nft", "-D", *rule])
    t = trace_of(dual, Flow("netns0", "2001:db8:2::1", "icmp"), "ip6tables-drop")
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage.startswith("filter FORWARD") and "ip6tables-nft" in t.decided.by, "\n".join(t.lines())
    assert trace_of(dual, Flow("netns0", "198.51.100.1", "icmp")).delivered, "an ip6tables rule never sees IPv4"
    r = DiagnosingProber(dual).icmp("netns0", "2001:db8:2::1")
    d = r.diagnosis
    assert d is not None and not r.passed, r.explain()
    found = next((f for f in d.findings if f.cause == "model_disposition"), None)
    assert found is not None and "ip6tables-nft" in found.fix, r.explain()


@pytest.fixture
def undo6(dual: Lab) -> Iterator[list[Sequence[str]]]:
    todo: list[Sequence[str]] = []
    yield todo
    for argv in reversed(todo):
        dual.host.run(list(argv))
    assert trace_of(dual, Flow("netns0", "2001:db8:2::1", "icmp")).delivered, "the dual-stack lab is not healthy again after the undo"
