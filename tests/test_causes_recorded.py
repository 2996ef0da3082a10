"""Every catalog fault's diagnosis, replayed from its recording without root (tests/data/causes, made by
tests/record_causes.py): the replay names the fault's declared cause first, with the fix values its
cause declares, and blames none of the fault's decoys; a healthy recording names nothing. A replay
can fail: the same recording judged without the fault's rule names something else.

The recordings carry the random names of the labs they were made in: nothing here reads them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from record_causes import EVENTS

from netcheck.adapters.faults import EXTERNAL_FAULTS
from netcheck.diagnose import conclude, crosshost, recording, rules
from netcheck.diagnose.causes import CAUSES
from netcheck.evidence import Diagnosis
from netcheck.faults import CROSS_HOST_FAULTS, FAULTS, Fault

DATA = Path(__file__).parent / "data" / "causes"
RECORDINGS = sorted(DATA.glob("*.json.gz"))
CROSS_RECORDINGS = [p for p in RECORDINGS if p.name.startswith("cross-")]
TOOL_RECORDINGS = [p for p in RECORDINGS if p.name.startswith("tool-")]
FAULT_RECORDINGS = [p for p in RECORDINGS if not p.name.startswith(("healthy-", "cross-"))]
KNOWN = {**FAULTS, **EXTERNAL_FAULTS}


def declared(about: dict[str, str]) -> Fault | None:
    """The fault a recording was made for (a lifecycle event's: None)."""
    return KNOWN[about["fault"]] if "fault" in about else None


def cause_of(about: dict[str, str]) -> str:
    f = declared(about)
    return f.cause if f is not None else EVENTS[about["event"]][2]


def covered() -> set[str]:
    """The causes a recording here is replayed for (the declared cause of each recorded fault or event)."""
    single = {cause_of(recording.load(p).about) for p in FAULT_RECORDINGS}
    cross = {recording.load_any(p).about.get("fault") for p in CROSS_RECORDINGS}
    return single | {CROSS_HOST_FAULTS[f].cause for f in cross if f in CROSS_HOST_FAULTS}


def top_cause(d: Diagnosis) -> str | None:
    return d.findings[0].cause if d.findings else None


@pytest.mark.parametrize("path", FAULT_RECORDINGS, ids=lambda p: p.name.removesuffix(".json.gz"))
def test_a_recorded_fault_replays_to_its_declared_cause(path: Path) -> None:
    rec = recording.load(path)
    cause, fault = cause_of(rec.about), declared(rec.about)
    d = conclude(rec)
    found = [(f.cause, f.where, f.summary[:90]) for f in d.findings]
    assert top_cause(d) == cause, f"{path.name}: the replay ranks {found[:3]}, expected [{cause}] first"
    top = d.findings[0]
    values = set(CAUSES[cause].fixes)
    if values:  # the fix values its cause declares (a cause that declares none may still carry some: the registry lags, not the fix)
        assert {type(x).__name__ for x in top.fixes} <= values, f"{path.name}: fix values {top.fixes} outside what {cause} declares ({values})"
    decoys = fault.not_blamed if fault is not None else ()
    assert not [f.cause for f in d.findings if f.cause in decoys], f"{path.name}: blames a decoy {decoys}: {found}"
    if rec.result is not None:
        assert top.fix and d.trace, f"{path.name}: the replay shows no fix or no trace"


@pytest.mark.parametrize("path", CROSS_RECORDINGS, ids=lambda p: p.name.removesuffix(".json.gz"))
def test_a_recorded_cross_host_fault_replays_to_its_declared_cause(path: Path) -> None:
    read = recording.load_any(path)
    assert isinstance(read, crosshost.CrossRead)
    fault = CROSS_HOST_FAULTS[read.about["fault"]]
    d = crosshost.judge(read)
    assert top_cause(d) == fault.cause, f"{path.name}: the replay ranks {[(f.cause, f.summary[:90]) for f in d.findings][:3]}, expected [{fault.cause}] first"
    assert d.findings[0].fix, f"{path.name}: no fix"


@pytest.mark.parametrize("path", [p for p in RECORDINGS if p.name.startswith("healthy-")], ids=lambda p: p.name.removesuffix(".json.gz"))
def test_a_healthy_recording_names_nothing(path: Path) -> None:
    rec = recording.load_any(path)
    d = conclude(rec) if isinstance(rec, recording.Recording) else crosshost.judge(rec)
    assert not d.findings, f"{path.name}: findings on a healthy lab: {[(f.cause, f.summary) for f in d.findings]}"


def test_every_builtin_topology_has_a_healthy_recording() -> None:
    from netcheck import spec

    assert {f"healthy-{n}.json.gz" for n in spec.BUILTIN} <= {p.name for p in RECORDINGS}


def test_every_catalog_fault_has_a_recording() -> None:
    """A fault added to the catalog fails this until it is recorded (python tests/record_causes.py tests/data/causes --only FAULT)."""
    recorded = {recording.load(p).about.get("fault") for p in FAULT_RECORDINGS}
    assert not set(FAULTS) - recorded, f"faults without a recording: {sorted(set(FAULTS) - recorded)}"
    cross = {recording.load_any(p).about.get("fault") for p in CROSS_RECORDINGS}
    assert not set(CROSS_HOST_FAULTS) - cross, f"cross-host faults without a recording: {sorted(set(CROSS_HOST_FAULTS) - cross)}"


def test_a_cross_host_replay_can_fail_without_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    read = recording.load_any(DATA / "cross-vxlan-vni-mismatch.json.gz")
    assert isinstance(read, crosshost.CrossRead) and top_cause(crosshost.judge(read)) == "vxlan_vni_mismatch"
    monkeypatch.setattr(crosshost, "CHECKS", tuple(c for c in crosshost.CHECKS if c is not crosshost.vxlan))
    assert top_cause(crosshost.judge(read)) != "vxlan_vni_mismatch"


def test_a_replay_can_fail_without_the_faults_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recording of ip-forward-off, judged by a rule set without the rule that names ip_forward_off, names something else."""
    rec = recording.load(DATA / "ip-forward-off.json.gz")
    assert top_cause(conclude(rec)) == "ip_forward_off"
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r is not rules.ip_forward_off))
    assert top_cause(conclude(rec)) != "ip_forward_off"


def test_a_replay_reads_what_was_recorded_not_the_machine() -> None:
    """Edit the recording (the host's ip_forward back to 1): the replay follows the recording."""
    rec = recording.load(DATA / "ip-forward-off.json.gz")
    host = rec.snap.namespaces["host"]
    fixed = replace(host, sysctls={**host.sysctls, "net.ipv4.ip_forward": "1"})
    again = replace(rec, snap=replace(rec.snap, namespaces={**rec.snap.namespaces, "host": fixed}))
    assert "ip_forward_off" not in [f.cause for f in conclude(again).findings]


def test_a_recording_round_trips_through_json(tmp_path: Path) -> None:
    for path in RECORDINGS:
        rec = recording.load_any(path)
        again = tmp_path / path.name
        assert recording.load_any(recording.save(rec, again)) == rec, path.name
        assert again.read_bytes() == path.read_bytes(), f"{path.name}: saved again, the bytes differ (the encoding is not canonical)"


def test_a_recording_of_another_format_is_refused_with_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"format": 0}))
    with pytest.raises(ValueError, match=r"old\.json: a diagnosis recording of format 0.*record it again"):
        recording.load(bad)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError, match=r"junk\.json: not a diagnosis recording"):
        recording.load(tmp_path / "junk.json")


def test_netcheck_diagnose_replay_prints_the_diagnosis(capsys: pytest.CaptureFixture[str]) -> None:
    from netcheck.cli import main

    status = main(["diagnose", "--replay", str(DATA / "ip-forward-off.json.gz")])
    out = capsys.readouterr().out
    assert status == 1 and "[ip_forward_off]" in out and "net.ipv4.ip_forward" in out, out


@pytest.mark.root
def test_a_recording_replays_to_the_live_diagnosis_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round trip: a live diagnosis (its fixes tried on the lab) and the replay of its recording agree on every finding and line."""
    from netcheck import faults, spec
    from netcheck.diagnosing import DiagnosingProber
    from netcheck.factory import LabFactory

    monkeypatch.setenv(recording.RECORD_ENV, str(tmp_path))
    with LabFactory() as factory:  # its labs have a kernel witness: the recording holds the kernel's drops too
        lab = factory.fresh(spec.builtin("seed1"))
        faults.inject(lab, ["masquerade-removed"])
        r = DiagnosingProber(lab).tcp("netns0", "198.51.100.1", 7, target="wan", capture=["wan:uplink"])
    live = r.diagnosis
    assert live is not None and top_cause(live) == "masquerade_missing", r.explain()
    assert live.findings[0].verified.startswith("fix verified"), "the live diagnosis tried its fix"
    (made,) = tmp_path.iterdir()
    again = conclude(recording.load(made))
    unverified = tuple(replace(f, verified="") for f in live.findings)
    assert again.findings == unverified
    assert replace(again, elapsed_ms=0.0) == replace(live, findings=unverified, elapsed_ms=0.0)


@pytest.mark.root
def test_a_cross_host_recording_replays_to_the_live_diagnosis(tmp_path: Path) -> None:
    """Round trip across hosts: the live cross-host diagnosis and the replay of what it read agree."""
    from netcheck.multihost import spec as multi_spec
    from netcheck.multihost.lab import MultiLab

    f = CROSS_HOST_FAULTS["vxlan-fdb-wrong"]
    with MultiLab(multi_spec.builtin(f.topology)) as multi:
        f.inject(multi)
        live = crosshost.diagnose(multi, "a", "b")
        saved = recording.save(crosshost.gather(multi, "a", "b"), tmp_path / "cross.json.gz")
    again = recording.load_any(saved)
    assert isinstance(again, crosshost.CrossRead)
    assert top_cause(live) == f.cause and crosshost.judge(again) == live
