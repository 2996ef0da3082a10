"""The reports: rendered from recorded results (no root), checked in a real browser, read back by tshark.

The recorded results in tests/data/ come from real runs (as root, in this repository):

    .venv/bin/pytest suites/ --netcheck-report /tmp/x/pass.html                  -> results-pass.json
    .venv/bin/pytest suites/ --netcheck-report /tmp/x/fail.html \\
        --netcheck-fault ip-forward-off --netcheck-fault dnat-removed             -> results-fail.json

Costs (2 cores): the recorded-results tests take about 2 s together, the browser tests about
5 s (one Chromium for the module), the root tests about 15 s (a faulted suite test, and
``pytest -n 2 suites/``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netcheck.activation import skip_for_missing_tool
from netcheck.evidence import MatrixResult, ProbeResult
from netcheck.report import diagram
from netcheck.report.collector import Outputs, resolve_outputs, write
from netcheck.report.diff import run_diff
from netcheck.report.model import Results, ResultsError
from netcheck.report.pcap import capture_frames
from netcheck.report.render import Renderer, backend_line

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
HOSTILE = {
    "script": "<script>window.__pwned=1</script>",
    "img": '"><img src=x onerror="window.__pwned=2">',
    "svg": "'><svg onload=window.__pwned=3>",
    "shell": "$(touch /tmp/netcheck-pwned) `id` && echo 'quoted' \"double\"",
    "breakout": "</pre></code></details></table><script>window.__pwned=5</script>",
    "attr": "x\" onmouseover=\"window.__pwned=6",
}


def load(name: str) -> Results:
    return Results.load(DATA / f"results-{name}.json")


def write_report(results: Results, where: Path, pcap: str = "failed") -> Outputs:
    out = Outputs(html=where / "report.html", json=where / "report.json", pcap_dir=where / "report-pcap")
    write(results, out, pcap)
    return out


@pytest.fixture(scope="module")
def fail_results() -> Results:
    return load("fail")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Results, Outputs]]:
    """The recorded runs, written once for the module: name -> (results with pcap links, outputs)."""
    out = {}
    for name in ("pass", "fail"):
        results = load(name)
        out[name] = (results, write_report(results, tmp_path_factory.mktemp(f"report-{name}")))
    return out


# ----------------------------------------------------------------------------- from recorded results (no root)


def test_renders_passing_and_failing_reports_from_recorded_results(written: dict[str, tuple[Results, Outputs]]) -> None:
    for name in ("pass", "fail"):
        results, out = written[name]
        html = out.html.read_text()
        again = Results.load(out.json)
        assert [t.nodeid for t in again.tests] == [t.nodeid for t in results.tests], "the JSON holds every test"
        assert len(results.tests) == 96
        assert '<table class="summary">' in html and html.count('<details class="test ') == len(results.tests)
        assert html.count('<svg class="nc-diagram"') >= 3, "one diagram per topology"
        failed = sum(1 for t in results.tests if t.failed)
        if name == "pass":
            assert failed == 0 and "All 71 checks passed" in html and not out.pcap_dir.exists()
        else:
            assert failed == 23 and f"{failed} of 96 checks failed" in html
            assert 'id="failures"' in html and "ip_forward_off" in html and "sysctl -w net.ipv4.ip_forward=1" in html
            assert "ip-forward-off" in html, "the injected faults are named"
            assert "lost here (way out)" in html, "a failed hop is drawn"
        assert "http://" not in html.replace("http://www.w3.org/2000/svg", "").replace("http://www.w3.org/1999/xlink", ""), "no external reference"


def test_summary_counts_per_property_and_topology(fail_results: Results) -> None:
    s = fail_results.summary()
    assert s["properties"][:8] == ["topology", "isolation", "veth", "bridge", "forwarding", "masquerade", "dnat", "vip"]
    assert s["topologies"] == ["seed1", "seed2", "seed2-veth"]
    assert s["cells"]["dnat"]["seed1"] == {"passed": 2, "failed": 2, "skipped": 0, "state": "fail"}
    assert s["cells"]["isolation"]["seed1"]["state"] == "pass"
    assert s["cells"]["dnat"]["seed2"]["state"] == "skip"
    assert s["totals"] == {"passed": 48, "failed": 23, "skipped": 25}


def test_run_facts_and_backend_are_recorded(fail_results: Results) -> None:
    run = fail_results.run
    for key in ("started", "kernel", "distribution", "mode", "versions", "iptables_command"):
        assert run.get(key), f"run fact {key} is missing"
    for tool in ("netcheck", "pyroute2", "scapy", "python-iptables", "iptables", "nft"):
        assert run["versions"].get(tool), f"version of {tool} is missing"
    assert run["mode"] == "sandbox"
    assert {h["backend"] for h in fail_results.hosts.values()} == {"legacy"}, "netcheck's sandbox hosts hold legacy (iptc) rules only"
    assert "seed1: legacy (legacy 2 rules, nft 0 rules)" in backend_line(fail_results)


def test_source_address_table_lists_each_access_path(written: dict[str, tuple[Results, Outputs]]) -> None:
    html = written["pass"][1].html.read_text()
    for path in ("from outside (wan)", "from the host", "hairpin from netns1", "netns0 to its own published address"):
        assert path in html, f"access path {path!r} missing from the source-address table"
    assert "client address kept" in html


def test_nat_rewrite_is_visible_before_and_after(written: dict[str, tuple[Results, Outputs]]) -> None:
    """The DNAT'd probe: addressed to the host at wan:uplink, to the container at netns0:ceth0."""
    html = written["pass"][1].html.read_text()
    assert "destination rewritten (DNAT): sent to 203.0.113.2:5000, seen here as 172.18.0.10:5000" in html
    assert "source rewritten (SNAT/MASQUERADE): sent from 172.18.0.10, seen here as 203.0.113.2" in html


def _logreport(collector: Any, nodeid: str, outcome: str, data: dict[str, Any]) -> None:
    report = pytest.TestReport(nodeid, ("x.py", 1, "x"), {}, outcome, None if outcome == "passed" else "boom", "call")
    report.netcheck = data  # type: ignore[attr-defined]
    collector.pytest_runtest_logreport(report)


def test_matrix_grid_renders_from_matrix_result_to_dict(pytestconfig: pytest.Config) -> None:
    from netcheck.evidence import MatrixResult
    from netcheck.report.collector import Collector
    from netcheck.settings import Settings

    m = MatrixResult(topology="seed1", kind="icmp", names=("netns0", "netns1", "x"), expected=((False, True, True), (True, False, False), (True, False, False)),
                     observed=((None, True, False), (True, None, False), (True, False, None))).to_dict()
    collector = Collector(pytestconfig, Settings(topologies=(), keep=False, report="none", pcap="failed", host_mode=False, scale_n=2))
    # Both ways a suite may hand a matrix over: a separate "matrix" entry, or a probes entry of kind "matrix".
    _logreport(collector, "suites/t.py::test_a[seed1]", "failed", {"property": "bridge", "topology": "seed1", "probes": [], "matrix": m})
    _logreport(collector, "suites/t.py::test_b[seed1]", "failed", {"property": "bridge", "topology": "seed1", "probes": [{**m, "kind": "matrix"}]})
    _logreport(collector, "suites/t.py::test_c[seed1]", "failed", {"property": "bridge", "topology": "seed1", "probes": [m]})  # recorded as evidence as is
    tests = collector.tests
    assert [len(t.matrices) for t in tests] == [1, 1, 1] and all(not t.probes for t in tests)
    html = Renderer().report(Results(tests=tests))
    assert html.count("6 pairs, 1 not as expected") == 6, "each grid in its test and under its topology"
    assert 'class="cell bad" title="netns0 → x: expected to reach, blocked"' in html


def test_pcap_of_a_failing_probe_reads_back_in_tshark(written: dict[str, tuple[Results, Outputs]]) -> None:
    if shutil.which("tshark") is None:
        skip_for_missing_tool("tshark is not installed (Debian: apt-get install tshark)")
    fail_results, out = written["fail"]
    test = next(t for t in fail_results.tests if t.nodeid == "suites/test_dnat.py::test_published_port_reached_from_outside[seed1]")
    pcap = next(p for p in test.pcaps if p["point"] == "wan:uplink")
    probe = test.all_probes()[pcap["probe"]]
    assert not probe.passed
    capture = next(c for c in probe.captures if c.point == "wan:uplink")
    want = [(p.src, p.dst, p.sport, p.dport) for p in capture.packets]
    assert len(want) == 2, "the SYN and the RST that came back"
    path = out.html.parent / pcap["file"]
    proc = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "frame.time_epoch"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]
    assert [(r[0], r[1], int(r[2]), int(r[3])) for r in rows] == want
    assert want[0][:2] == ("203.0.113.1", "203.0.113.2")
    t0 = capture_frames(probe, capture)[0][0]
    assert abs(float(rows[0][4]) - t0) < 1e-3, "timestamps are the probe's send time plus the packet's offset"
    assert f'href="{pcap["file"]}"' in out.html.read_text(), "the report links the pcap"
    # A capture where nothing was seen is still a valid, empty pcap.
    empty = next(p for p in test.pcaps if p["point"] == "netns0:ceth0")
    assert empty["packets"] == 0
    assert subprocess.run(["tshark", "-r", str(out.html.parent / empty["file"])], capture_output=True, timeout=60, check=False).returncode == 0


def test_pcap_modes(tmp_path: Path, fail_results: Results) -> None:
    from netcheck.report.pcap import write_all

    failing = sum(len([c for c in p.captures if c.started]) for t in fail_results.tests for p in t.all_probes() if not p.passed)
    every = sum(len([c for c in p.captures if c.started]) for t in fail_results.tests for p in t.all_probes())
    for mode, want in (("failed", failing), ("all", every), ("none", 0)):
        assert write_all(copy.deepcopy(fail_results), tmp_path / mode, mode, tmp_path) == want
        assert len(list((tmp_path / mode).glob("*.pcap"))) == want
    assert every > failing > 0


def test_report_paths(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    auto = resolve_outputs("auto", tmp_path, tmp_path / "cwd", now)
    assert auto is not None and auto.html == tmp_path / "reports" / "netcheck-20300102T030405Z.html"
    assert auto.json == tmp_path / "reports" / "netcheck-20300102T030405Z.json"
    auto.html.parent.mkdir()
    auto.html.write_text("taken")
    second = resolve_outputs("auto", tmp_path, tmp_path, now)
    assert second is not None and second.html.name == "netcheck-20300102T030405Z-1.html", "a run in the same second does not overwrite"
    given = resolve_outputs("out/r.html", tmp_path, tmp_path / "cwd", now)
    assert given is not None and given.html == tmp_path / "cwd" / "out" / "r.html" and given.pcap_dir == tmp_path / "cwd" / "out" / "r-pcap"
    assert resolve_outputs("none", tmp_path, tmp_path, now) is None
    folder = resolve_outputs("runs/today/", tmp_path, tmp_path / "cwd", now)
    assert folder is not None and not (tmp_path / "cwd" / "runs").exists()
    assert folder.html == tmp_path / "cwd" / "runs" / "today" / "netcheck-20300102T030405Z.html", "a folder that does not exist yet gets an automatic name inside"


def test_diff_lists_changed_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_diff(str(DATA / "results-pass.json"), str(DATA / "results-fail.json")) == 1
    out = capsys.readouterr().out
    assert "BROKE    suites/test_dnat.py::test_published_port_reached_from_outside[seed1]" in out
    assert "passed -> failed: host: net.ipv4.ip_forward = 0" in out and "host: host:" not in out
    assert "injected faults: none -> ip-forward-off, dnat-removed" in out
    assert out.rstrip().endswith("23 broke; 73 unchanged")
    assert run_diff(str(DATA / "results-fail.json"), str(DATA / "results-pass.json")) == 1
    assert "23 fixed" in capsys.readouterr().out
    assert run_diff(str(DATA / "results-pass.json"), str(DATA / "results-pass.json")) == 0
    assert "no check changed; 96 unchanged" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"schema": "something-else"}')
    assert run_diff(str(tmp_path / "bad.json"), str(DATA / "results-pass.json")) == 2
    assert "not a netcheck results file" in capsys.readouterr().err
    assert run_diff(str(tmp_path / "missing.json"), str(DATA / "results-pass.json")) == 2
    with pytest.raises(ResultsError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        Results.load(tmp_path / "broken.json")


def test_svg_sanitizer_refuses_active_content() -> None:
    base = '<svg width="1pt" height="1pt" viewBox="0 0 1 1" xmlns="http://www.w3.org/2000/svg">{}</svg>'
    assert "nc-diagram" in diagram.sanitize_svg(base.format("<g><text>ok &lt;script&gt;</text></g>"))
    for bad in ("<script>alert(1)</script>", '<g onload="alert(1)"/>', '<a href="javascript:alert(1)"><text>x</text></a>', "<foreignObject><div/></foreignObject>", '<image href="http://x/y.png"/>'):
        with pytest.raises(diagram.DiagramError):
            diagram.sanitize_svg(base.format(bad))


def test_dot_labels_cannot_break_out(tmp_path: Path) -> None:
    topo = copy.deepcopy(load("pass").topologies["seed1"])
    topo["containers"][0]["name"] = 'x"]; evil [label="<script>'
    svg = diagram.render_svg(diagram.to_dot(topo))
    assert "<script" not in svg and "&lt;script&gt;" in svg


# ----------------------------------------------------------------------------- hostile content


def hostile_results() -> Results:
    """The recorded failing run, with hostile text wherever users or the network put text."""
    r = load("fail")
    h = HOSTILE
    r.run["command"] = f"pytest suites/ {h['shell']} {h['script']}"
    r.run["faults"] = [h["script"], h["attr"]]
    r.topologies["seed1"]["summary"] = h["svg"] + h["breakout"]
    r.topologies["seed1"]["containers"][1]["name"] = 'x"]; evil [label="<script>'
    r.hosts["seed1"]["errors"] = [h["img"]]
    r.hosts["seed1"]["backend"] = h["attr"]
    t = next(t for t in r.tests if t.nodeid == "suites/test_dnat.py::test_published_port_reached_from_outside[seed1]")
    t.nodeid = f"suites/test_dnat.py::test_published_port_reached_from_outside[{h['script']}]"
    t.message = h["breakout"] + h["shell"]
    t.crash = h["script"]
    p = t.probes[0].to_dict()
    p.update(reply=h["img"] + h["breakout"], error=h["breakout"], sent=h["shell"], service_saw=h["svg"], labels={h["script"]: h["attr"]})
    p["captures"][0]["packets"][0]["info"] = h["svg"]
    d = p["diagnosis"]
    d["findings"][0].update(summary=h["script"], fix=h["shell"], evidence=[h["breakout"]], where=h["attr"])
    d["notes"] = [h["img"]]
    d["repeated"] = h["svg"]
    d["trace"][0]["addresses"] = h["script"]
    t.probes[0] = ProbeResult.from_dict(p)
    t.matrices = [MatrixResult.from_dict({"topology": "seed1", "kind": h["script"], "names": [h["img"], "b"], "expected": [[False, True], [True, False]], "observed": [[None, False], [True, None]]})]
    t.pcaps = [{"probe": 0, "point": t.probes[0].captures[0].point, "file": "javascript:window.__pwned=7", "packets": 1}]
    return r


def test_hostile_text_is_escaped_in_the_source() -> None:
    results = hostile_results()
    html = Renderer().report(results)
    assert "javascript:window.__pwned=7" not in html, "a pcap link that is not a relative .pcap path is dropped"
    for text in HOSTILE.values():
        assert text not in html, f"{text!r} appears unescaped"
    assert html.count("<script") == 1, "only the report's own script"
    assert "javascript:" not in html.replace("javascript:window.__pwned", "") and 'href="javascript:' not in html
    snippet = Renderer().snippet(next(t for t in results.tests if "__pwned" in t.nodeid), results.topologies["seed1"])
    assert "<script" not in snippet and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in snippet


# ----------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("selenium", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    from browser import CHROMEDRIVER, CHROMIUM, INSTALL_HINT, Chromium

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        skip_for_missing_tool(f"Chromium and its driver are not installed (Debian: {INSTALL_HINT})")
    with Chromium(tmp_path_factory.mktemp("chromium-profile")) as b:
        yield b


def _opened(browser: Any, html: Path) -> Any:
    page = browser.open(html)
    assert page.evaluate("document.body.classList.contains('js')"), "the report's script did not run"
    return page


def test_filters_are_kept_in_the_url(browser: Any, written: dict[str, tuple[Results, Outputs]]) -> None:
    _, out = written["fail"]
    page = _opened(browser, out.html)
    page.evaluate("document.querySelector('button.outcome-filter[data-outcome=failed]').click();"
                  "const t = document.getElementById('f-topology'); t.value = 'seed1'; t.dispatchEvent(new Event('change'))")
    assert page.evaluate("location.hash") == "#filter:outcome=failed&topology=seed1"
    shown = page.evaluate("[...document.querySelectorAll('details.test')].filter(t => !t.hidden).map(t => t.dataset.outcome + ' ' + t.dataset.topology)")
    assert shown and set(shown) == {"failed seed1"}
    # The same URL, opened afresh, shows the same filtered view.
    again = browser.open(out.html, fragment="filter:outcome=failed&topology=seed1")
    assert again.evaluate("document.querySelector('button.outcome-filter.active').dataset.outcome + ' ' + document.getElementById('f-topology').value") == "failed seed1"
    assert again.evaluate("[...document.querySelectorAll('details.test')].filter(t => !t.hidden).length") == len(shown)
    assert again.console_errors == []


def test_failing_report_in_the_browser(browser: Any, tmp_path: Path, written: dict[str, tuple[Results, Outputs]]) -> None:
    _, out = written["fail"]
    page = _opened(browser, out.html)
    assert page.console_errors == []
    assert page.requests == [], "the report fetched something"
    # The rendered page (after the script ran), not the source:
    facts = page.evaluate("""(() => {
        const vis = (el) => !!el && el.getBoundingClientRect().width > 0 && el.getBoundingClientRect().height > 0;
        const summary = document.querySelector('table.summary');
        const svg = document.querySelector('#topologies svg.nc-diagram');
        const failed = document.querySelector('details.test.o-failed');
        const diag = failed && failed.querySelector('.diagnosis');
        return {
          summaryRows: summary ? summary.tBodies[0].rows.length : 0,
          summaryVisible: vis(summary),
          redCells: document.querySelectorAll('table.summary td.s-fail').length,
          svgVisible: vis(svg),
          svgNodes: svg ? svg.querySelectorAll('g.node').length : 0,
          redInSvg: svg ? [...svg.querySelectorAll('path, polygon')].some(e => (e.getAttribute('stroke') || '').toLowerCase() === '#c62828') : false,
          failedOpen: !!failed && failed.open,
          diagVisible: vis(diag),
          diagText: diag ? diag.innerText : '',
          shown: document.getElementById('shown').textContent,
        };
    })()""")
    assert facts["summaryRows"] >= 8 and facts["summaryVisible"] and facts["redCells"] == 13
    assert facts["svgVisible"] and facts["svgNodes"] >= 8 and facts["redInSvg"], "the diagram, with a failed hop in red"
    assert facts["failedOpen"] and facts["diagVisible"]
    assert "net.ipv4.ip_forward = 0" in facts["diagText"] and "sysctl -w net.ipv4.ip_forward=1" in facts["diagText"]
    assert facts["shown"] == "96 of 96 tests shown"
    # The filters work: "failed" leaves the 23 failures.
    shown = page.evaluate("document.querySelector('button.outcome-filter[data-outcome=failed]').click(); [...document.querySelectorAll('details.test')].filter(t => !t.hidden).length")
    assert shown == 23
    page.evaluate("document.querySelector('button.outcome-filter[data-outcome=all]').click()")
    shot = tmp_path / "failing-report.png"
    page.screenshot(shot, height=2200)
    assert shot.stat().st_size > 50_000
    if os.environ.get("NETCHECK_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "reports" / "example-failure.png")


def test_passing_report_in_the_browser(browser: Any, written: dict[str, tuple[Results, Outputs]]) -> None:
    _, out = written["pass"]
    page = _opened(browser, out.html)
    assert page.console_errors == [] and page.requests == []
    assert page.evaluate("document.querySelectorAll('table.summary td.s-fail').length") == 0
    assert page.evaluate("document.querySelectorAll('#topologies svg.nc-diagram').length") == 3
    assert page.evaluate("document.querySelector('header.top h1').innerText") == "All 71 checks passed (25 skipped)"


def test_hostile_report_runs_nothing_in_the_browser(browser: Any, tmp_path: Path) -> None:
    out = write_report(hostile_results(), tmp_path)
    page = _opened(browser, out.html)
    state = page.evaluate("""(() => ({
        pwned: window.__pwned === undefined ? null : window.__pwned,
        scripts: document.scripts.length,
        handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.toLowerCase().startsWith('on'))).length,
        embedded: document.querySelectorAll('img, iframe, object, embed, foreignObject').length,
        svgs: document.querySelectorAll('svg').length,
        diagrams: document.querySelectorAll('svg.nc-diagram').length,
        text: document.body.innerText,
    }))()""")
    assert state["pwned"] is None, f"hostile text ran: window.__pwned = {state['pwned']}"
    assert state["scripts"] == 1 and state["handlers"] == 0 and state["embedded"] == 0
    assert state["svgs"] == state["diagrams"], "the only SVG elements are netcheck's diagrams"
    for key in ("script", "shell"):
        assert HOSTILE[key] in state["text"], f"the hostile text {key} is not shown as text"
    # Hovering and opening everything runs nothing either.
    page.evaluate("document.getElementById('expand-all').click(); document.querySelectorAll('*').forEach(e => e.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})))")
    assert page.evaluate("window.__pwned === undefined")
    assert page.console_errors == [], "a CSP violation would mean markup got through"
    assert page.requests == []
    # The search filter treats the text as text.
    page.evaluate(f"const s = document.getElementById('f-text'); s.value = {json.dumps(HOSTILE['script'])}; s.dispatchEvent(new Event('input'))")
    assert page.evaluate("[...document.querySelectorAll('details.test')].filter(t => !t.hidden).length") >= 1


# ----------------------------------------------------------------------------- pytest integration (no root)

FAKE_TEST = '''
import json, pytest
from netcheck.evidence import ProbeResult

PROBE = json.loads({probe!r})

@pytest.mark.netcheck(topologies=["seed1"])
@pytest.mark.netcheck_property("dnat")
def test_recorded(netcheck_topology, netcheck_evidence):
    r = ProbeResult.from_dict(PROBE)
    netcheck_evidence(r)
    if not r.passed:
        pytest.fail(r.explain(), pytrace=False)

@pytest.mark.netcheck(topologies=["seed1"])
@pytest.mark.netcheck_property("isolation")
def test_plain(netcheck_topology):
    pass
'''


INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")  # hypothesis costs 1.4 s to import, per in-process run


def _fake_suite(pytester: pytest.Pytester, fail_results: Results) -> None:
    test = next(t for t in fail_results.tests if t.nodeid == "suites/test_dnat.py::test_published_port_reached_from_outside[seed1]")
    pytester.makepyfile(test_recorded=FAKE_TEST.format(probe=json.dumps(test.probes[0].to_dict())))


def test_report_junit_and_pytest_html_from_a_pytest_run(pytester: pytest.Pytester, fail_results: Results) -> None:
    """A real pytest run (no lab needed): the report, --junitxml properties and pytest-html extras."""
    pytest.importorskip("pytest_html")
    _fake_suite(pytester, fail_results)
    result = pytester.runpytest_inprocess("--netcheck-report=out/r.html", "--junitxml=junit.xml", "--html=ph.html", "--self-contained-html", *INNER)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["netcheck report: out/r.html (results: out/r.json, 2 pcap files in out/r-pcap)"])
    results = Results.load(pytester.path / "out" / "r.json")
    assert [(t.property, t.topology, t.outcome) for t in results.tests] == [("dnat", "seed1", "failed"), ("isolation", "seed1", "passed")]
    # --junitxml: netcheck's properties on the test case.
    case = next(c for c in ET.parse(pytester.path / "junit.xml").iter("testcase") if c.get("name") == "test_recorded[seed1]")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["netcheck.property"] == "dnat" and props["netcheck.topology"] == "seed1" and props["netcheck.probes"] == "1"
    assert "net.ipv4.ip_forward = 0" in props["netcheck.diagnosis"] and "host: host:" not in props["netcheck.diagnosis"]
    # pytest-html: the evidence, the diagnosis and the diagram as an extra of the failing test.
    page = (pytester.path / "ph.html").read_text()
    assert "nc-extra" in page and "nc-diagram" in page and "ip_forward_off" in page


def test_no_report_without_netcheck_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess(*INNER)
    result.assert_outcomes(passed=1)
    assert "netcheck report" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_report_none_turns_it_off(pytester: pytest.Pytester, fail_results: Results) -> None:
    _fake_suite(pytester, fail_results)
    result = pytester.runpytest_inprocess("--netcheck-report=none", *INNER)
    result.assert_outcomes(passed=1, failed=1)
    assert "netcheck report" not in result.stdout.str() and not (pytester.path / "reports").exists()


def test_default_report_path_is_under_the_rootdir(pytester: pytest.Pytester, fail_results: Results) -> None:
    _fake_suite(pytester, fail_results)
    result = pytester.runpytest_inprocess(*INNER)
    result.stdout.fnmatch_lines(["netcheck report: reports/netcheck-*Z.html (results: reports/netcheck-*Z.json, 2 pcap files in reports/netcheck-*Z-pcap)"])
    assert len(list((pytester.path / "reports").glob("netcheck-*.html"))) == 1


# ----------------------------------------------------------------------------- real runs (root)


@pytest.mark.root
def test_real_faulted_run_writes_a_pcap_tshark_reads(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        skip_for_missing_tool("tshark is not installed (Debian: apt-get install tshark)")
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/test_dnat.py::test_published_port_reached_from_outside", "--netcheck-topology=seed1",
                           "--netcheck-fault=dnat-removed", f"--netcheck-report={tmp_path / 'r.html'}", "-p", "no:cacheprovider", "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = Results.load(tmp_path / "r.json")
    (test,) = results.tests
    assert test.failed and test.pcaps
    pc = next(p for p in test.pcaps if p["point"] == "wan:uplink")
    rows = subprocess.run(["tshark", "-r", str(tmp_path / pc["file"]), "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.dstport"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    rows = [r.split("\t") for r in rows if r]
    assert len(rows) == pc["packets"] >= 1
    assert rows[0] == ["203.0.113.1", "203.0.113.2", "5000"], "the request to the published port, as the outside world sent it"


@pytest.mark.root
def test_xdist_run_writes_one_merged_report(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "suites/", f"--netcheck-report={tmp_path / 'r.html'}", "-p", "no:cacheprovider", "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "suites/", "-p", "no:cacheprovider", "--netcheck-report=none"],
                               cwd=REPO, capture_output=True, text=True, timeout=120, check=False).stdout
    nodeids = {line.strip() for line in collected.splitlines() if "::" in line}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json"], "one report (no pcap: nothing failed)"
    results = Results.load(tmp_path / "r.json")
    assert {t.nodeid for t in results.tests} == nodeids and len(results.tests) == len(nodeids)
    assert {t.worker for t in results.tests} == {"gw0", "gw1"} and results.run["workers"] == 2
    assert set(results.hosts) == {"seed1", "seed2", "seed2-veth", "seed1-nft", "seed2-nft"}, "the workers sent each lab's backend facts"
    html = (tmp_path / "r.html").read_text()
    assert html.count('<details class="test ') == len(nodeids)
    assert "netcheck report: " in proc.stdout



@pytest.mark.root
def test_a_tools_setup_commands_are_marked_as_run_as_written(run_suites, tmp_path: Path) -> None:
    """Commands from a spec are the user's: the report says they ran as written, argv, no shell."""
    out = tmp_path / "script.html"
    result = run_suites(str(REPO / "suites/test_topology.py"), f"--netcheck-topology={REPO / 'examples/script-tutorial1.toml'}", report=str(out))
    assert result.ret == 0, result.stdout.str()[-2000:]
    html = out.read_text()
    assert "as the user wrote them" in html and "script-tutorial1.sh" in html


@pytest.mark.root
def test_the_diagram_draws_the_measured_host_not_the_spec(run_suites, repo: Path, tmp_path: Path) -> None:
    """With ip_forward off, the host box says ip_forward=0 (and that the spec says 1), never the spec's 1 alone."""
    from netcheck.report.diagram import to_dot

    out = tmp_path / "r.html"
    result = run_suites(str(repo / "suites/test_forwarding.py"), "--netcheck-topology=seed1", "--netcheck-fault=ip-forward-off", "-k", "reaches_the_outside", report=str(out))
    result.assert_outcomes(failed=1)
    results = Results.load(out.with_suffix(".json"))
    view = results.topologies["seed1"]
    assert view["observed"]["sysctls"]["net.ipv4.ip_forward"] == "0"
    dot = to_dot(view)
    assert "ip_forward=0 (spec: 1)" in dot and "ip_forward=1" not in dot, dot
    assert "ip_forward=0 (spec: 1)" in out.read_text()
