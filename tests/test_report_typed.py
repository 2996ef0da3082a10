"""The report's model holds typed values end to end (no root): what a test records comes back from the JSON as the same values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from netcheck.evidence import MatrixResult, ProbeResult
from netcheck.report.model import Results

DATA = Path(__file__).parent / "data"

RECORDING_TEST = '''
import json, pytest
from netcheck.evidence import MatrixResult, ProbeResult

@pytest.mark.netcheck(topologies=["seed1"])
@pytest.mark.netcheck_property("bridge")
def test_records(netcheck_topology, netcheck_evidence):
    netcheck_evidence(ProbeResult.from_dict(json.loads({probe!r})))
    netcheck_evidence(MatrixResult.from_dict(json.loads({matrix!r})))
'''


def test_recorded_values_come_back_typed_from_a_run(pytester: pytest.Pytester) -> None:
    data = json.loads((DATA / "results-fail.json").read_text())
    probe = next(p for t in data["tests"] for p in t["probes"] if p.get("diagnosis"))
    matrix = MatrixResult(topology="seed1", kind="icmp", names=("netns0", "netns1"), expected=((False, True), (True, False)), observed=((None, True), (False, None)))
    pytester.makepyfile(test_recording=RECORDING_TEST.format(probe=json.dumps(probe), matrix=json.dumps(matrix.to_dict())))
    result = pytester.runpytest_inprocess("--netcheck-report=out/r.html", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    (test,) = Results.load(pytester.path / "out" / "r.json").tests
    assert test.probes == [ProbeResult.from_dict(probe)] and test.matrices == [matrix], "the same values, typed, after xdist's plain data and the JSON"
    top = test.top_finding()
    assert top is not None and top.cause == ProbeResult.from_dict(probe).diagnosis.top.cause  # type: ignore[union-attr]
    html = (pytester.path / "out" / "r.html").read_text()
    assert "2 pairs, 1 not as expected" in html and 'title="netns1 → netns0: expected to reach, blocked"' in html


def test_a_damaged_probe_names_the_file_and_the_test(tmp_path: Path) -> None:
    from netcheck.report.model import ResultsError

    data = json.loads((DATA / "results-fail.json").read_text())
    test = next(t for t in data["tests"] if t["probes"])
    del test["probes"][0]["request"]
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=rf"r.json: test {re.escape(test['nodeid'])}: its probes cannot be read \(KeyError: 'request'\).*write it again"):
        Results.load(tmp_path / "r.json")
