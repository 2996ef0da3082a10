"""The fault corpus: every fault of the catalog, injected into a fresh lab, must fail its
suite test, name what is broken, AND be diagnosed with the right cause at the top.

The cause is read from the failure message the user sees (``1. [cause] ...``). A few suite
tests assert on kernel state without sending a probe (a veth's MTU, the links a container
sees); their message carries no diagnosis, so ``netcheck doctor``'s inspection of a lab with
the same fault must rank the cause first instead.

Cost: one inner pytest run per fault, about 2-4 s each (a lab build, the failing probe, its
diagnosis, which repeats the probe once); the doctor fallback adds a lab build (~1 s).
"""

from __future__ import annotations

import json
import re

import pytest

from netcheck import faults, spec
from netcheck.diagnose import Resend, diagnose
from netcheck.diagnose.doctor import inspect, open_tag, run_doctor
from netcheck.diagnosing import DiagnosingProber
from netcheck.evidence import Diagnosis, ProbeResult
from netcheck.faults import FAULTS
from netcheck.lab import Lab
from netcheck.probes import Prober

pytestmark = pytest.mark.root

TOP = re.compile(r"^(?:E)?\s+1\. \[(\w+)\]", re.M)


def run_suite_test(run_suites, repo, fault: str, topology: str) -> pytest.RunResult:
    f = FAULTS[fault]
    return run_suites(str(repo / "suites" / f.suite_test), f"--netcheck-topology={topology}", f"--netcheck-fault={fault}")


def doctor_top(fault: str, topology: str) -> list[str]:
    with Lab(spec.builtin(topology)) as lab:
        assert faults.inject(lab, [fault]) == [fault]
        return [x.cause for x in inspect(lab)]


# Each fault on the built-in it is demonstrated on, built both ways: its rules in legacy iptables
# (seed1) and as native nftables (seed1-nft), where rule faults edit the lab's own nft tables.
# The two builds differ only in their rules, so a fault that breaks a link, an address, a route,
# a file or a service (Fault.edits_rules False) runs on the first build only (which halves its cost in CI).
CATALOG = [pytest.param(name, topology, id=name + suffix) for name in sorted(FAULTS) for suffix, topology in (("", FAULTS[name].topology), ("-nft", f"{FAULTS[name].topology}-nft"))
           if not (suffix and not FAULTS[name].edits_rules)]


def test_faults_kept_off_the_nft_build_touch_no_rule() -> None:
    """The faults that run on one build only break no rule: none names a cause whose fix is a rule."""
    from netcheck.diagnose.causes import CAUSES

    rules = {"DeleteRule", "AddRule", "SetPolicy"}
    kept_off = [n for n, f in FAULTS.items() if not f.edits_rules]
    assert kept_off, "no fault is kept off the nft build: Fault.edits_rules is not read"
    assert not [n for n in kept_off if rules & set(CAUSES[FAULTS[n].cause].fixes)]


@pytest.mark.parametrize(("fault", "topology"), CATALOG)
def test_fault_fails_its_suite_test_with_the_right_top_cause(run_suites, repo, fault: str, topology: str) -> None:
    f = FAULTS[fault]
    result = run_suite_test(run_suites, repo, fault, topology)
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 1 and not outcomes.get("error"), f"fault {fault} ({f.summary}) did not fail {f.suite_test}:\n{out[-3000:]}"
    assert f.message in out, f"the failure for {fault} does not mention {f.message!r}:\n{out[-3000:]}"
    m = TOP.search(out)
    if m is not None:
        assert m.group(1) == f.cause, f"fault {fault}: the failure message ranks [{m.group(1)}] first, expected [{f.cause}]:\n{out[-4000:]}"
        assert "fix: " in out and "trace (" in out, f"fault {fault}: the diagnosis shows no fix or no trace:\n{out[-4000:]}"
        return
    assert "diagnosis:" not in out, f"fault {fault}: a diagnosis without a ranked cause:\n{out[-4000:]}"
    causes = doctor_top(fault, topology)
    assert causes and causes[0] == f.cause, f"fault {fault} on {topology}: {f.suite_test} asserts on state (no probe, no diagnosis); netcheck doctor ranks {causes[:3]}, expected {f.cause} first"


# ----------------------------------------------------------------------------- the pieces, directly


@pytest.fixture
def seed1():
    with Lab(spec.builtin("seed1")) as lab:
        yield lab


def test_passing_probes_are_never_diagnosed(seed1: Lab) -> None:
    calls: list[ProbeResult] = []

    def spy(lab: Lab, r: ProbeResult, resend: Resend | None) -> Diagnosis:
        calls.append(r)
        return Diagnosis()

    p = DiagnosingProber(seed1, diagnoser=spy)
    r = p.icmp("netns0", "198.51.100.1", capture=["wan:uplink"])
    assert r.passed and r.diagnosis is None and not calls, r.explain()
    r = p.icmp("netns0", "198.51.100.1", expect="block", capture=["wan:uplink"])
    assert not r.passed and len(calls) == 1, "a failed probe must be diagnosed"


def test_a_healthy_lab_has_no_findings() -> None:
    """No false alarms: the doctor finds nothing wrong in each built-in lab as built."""
    for name in spec.BUILTIN:
        with Lab(spec.builtin(name)) as lab:
            found = inspect(lab)
            assert not found, f"{name}: findings on a healthy lab: {[(x.cause, x.summary) for x in found]}"


def test_trace_gives_last_seen_first_missing_and_the_nat_rewrite(seed1: Lab) -> None:
    faults.inject(seed1, ["masquerade-removed"])
    r = DiagnosingProber(seed1).tcp("netns0", "198.51.100.1", 7, target="wan", capture=["wan:uplink"])
    d = r.diagnosis
    assert d is not None and d.top is not None and d.top.cause == "masquerade_missing", r.explain()
    out = [h for h in d.trace if h.direction == "out"]
    assert [h.point for h in out] == ["netns0:ceth0", "host:veth0", "host:br0", "host:eth0", "wan:uplink"], d.trace
    assert all(h.seen for h in out), "the SYN crosses every hop"
    assert out[-1].addresses.startswith("172.18.0.10:"), f"the outside saw the private source: {out[-1]}"
    assert any("back: the reply was not seen at any hop" in b for b in d.breaks), d.breaks
    assert "the outside world (wan:uplink) saw the private source 172.18.0.10" in d.top.evidence
    assert d.top.fix == f"ip netns exec {seed1.host.name} iptables-legacy -t nat -A POSTROUTING -s 172.18.0.0/16 ! -o {seed1.kname('br0')} -j MASQUERADE"


def test_counter_deltas_name_the_rules_that_matched(seed1: Lab) -> None:
    faults.inject(seed1, ["br-netfilter-off"])
    r = DiagnosingProber(seed1).http("netns1", "203.0.113.2", 5000, target="netns0")
    d = r.diagnosis
    assert d is not None and d.top is not None and d.top.cause == "br_netfilter_off", r.explain()
    assert "netns1 got the reply from 172.18.0.10 instead of 203.0.113.2: it crossed the bridge without being un-NATed" in d.top.evidence, r.explain()
    assert any("-j DNAT --to-destination 172.18.0.10:5000" in m and m.startswith("+") for m in d.matched), d.matched
    assert any("DNAT to 172.18.0.10:5000" in c for c in d.conntrack), d.conntrack


def test_rules_written_with_iptables_nft_are_read_and_a_split_is_flagged(seed1: Lab) -> None:
    """netcheck's builder writes legacy rules; a DROP added with iptables-nft is still found, by its counter."""
    up = seed1.kname("eth0")
    done = seed1.host.run(["iptables-nft", "-I", "FORWARD", "-o", up, "-p", "icmp", "-j", "DROP"])
    assert done.returncode == 0, done.stderr
    r = DiagnosingProber(seed1).icmp("netns0", "198.51.100.1")
    d = r.diagnosis
    assert d is not None and d.top is not None, r.explain()
    assert d.top.cause == "forward_drop" and "iptables-nft -t filter -A FORWARD -o" in d.top.summary and "-j DROP" in d.top.summary, r.explain()
    assert d.top.fix.startswith(f"ip netns exec {seed1.host.name} iptables-nft -t filter -D FORWARD"), d.top.fix
    assert "rules_split" in [f.cause for f in d.findings], r.explain()


def test_no_known_cause_is_said_honestly_with_the_trace(seed1: Lab) -> None:
    """A drop netcheck has no rule for (the outside world's own firewall) is not guessed at."""
    done = seed1.wan.run(["iptables-nft", "-A", "INPUT", "-p", "icmp", "-j", "DROP"])
    assert done.returncode == 0, done.stderr
    r = DiagnosingProber(seed1).icmp("netns0", "198.51.100.1")
    d = r.diagnosis
    assert d is not None and not d.findings, r.explain()
    text = r.explain()
    assert "no known cause matched" in text
    assert "out: the probe was seen at every hop" in text and "back: the reply was not seen at any hop" in text, text


def test_diagnosis_round_trips_through_json(seed1: Lab) -> None:
    faults.inject(seed1, ["ip-forward-off"])
    r = DiagnosingProber(seed1).icmp("netns0", "198.51.100.1")
    again = ProbeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.diagnosis == r.diagnosis
    assert again.explain() == r.explain()


def test_diagnosing_a_failure_names_the_cause_directly(seed1: Lab) -> None:
    """The diagnosis on its own (its cost is measured in bench/, not asserted here)."""
    faults.inject(seed1, ["ip-forward-off"])
    r = Prober(seed1).icmp("netns0", "198.51.100.1")
    assert r.diagnosis is None, "a plain prober never diagnoses"
    d = diagnose(seed1, r, Prober(seed1).conclusive)
    assert d.top is not None and d.top.cause == "ip_forward_off", d.render()


def test_doctor_inspects_a_live_lab_by_tag_without_traffic(seed1: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    faults.inject(seed1, ["ip-forward-off"])
    with open_tag(seed1.tag) as view:
        assert set(view.namespaces()) == {"host", "wan", "netns0", "netns1"}
        assert [x.cause for x in inspect(view)][:1] == ["ip_forward_off"]
    status = run_doctor(argparse.Namespace(targets=[seed1.tag], host_netns=None, probe=False))
    out = capsys.readouterr().out
    assert status == 1, out
    assert "[ip_forward_off]" in out and f"ip netns exec {seed1.host.name} sysctl -w net.ipv4.ip_forward=1" in out, out
    assert "no traffic was sent" in out


def test_doctor_probe_traces_the_failures(seed1: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    faults.inject(seed1, ["ip-forward-off"])
    status = run_doctor(argparse.Namespace(targets=[seed1.tag], host_netns=None, probe=True))
    out = capsys.readouterr().out
    assert status == 1
    assert "probes: " in out and "198.51.100.1: expected to reach, unreachable" in out, out
    assert "first missing at host:eth0" in out, out


def test_doctor_refuses_what_it_cannot_inspect(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    assert run_doctor(argparse.Namespace(targets=["nozzzz"], host_netns=None, probe=False)) == 2
    err = capsys.readouterr().err
    assert "no run record for lab 'nozzzz'" in err and "--netcheck-keep" in err, err
