"""Collects every test's outcome and evidence on the controller, and writes the reports.

With xdist, workers send their reports (with ``report.netcheck`` attached by the plugin) to the
controller, so this one object sees every test of the run and writes one merged report:
``reports/netcheck-<UTC>.html``, the ``.json`` results beside it, and the pcap files.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from netcheck.evidence import MatrixResult, ProbeResult
from netcheck.report.model import Counts, HostFacts, Results, RunFacts, TestRecord, TopologyView, combine
from netcheck.settings import Settings

if TYPE_CHECKING:
    from netcheck.report.hooks import ShippedData

STAMP = "%Y%m%dT%H%M%SZ"


@dataclass
class _Seen:
    """Everything the reports of one node id said so far."""

    phases: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None
    duration: float = 0.0
    message: str = ""
    crash: str = ""
    netcheck: bool = False  # some report of it carried netcheck data
    property: str | None = None
    topology: str | None = None
    probes: list[ProbeResult] = field(default_factory=list)
    matrices: list[MatrixResult] = field(default_factory=list)
    properties: list[list[str]] = field(default_factory=list)
    worker: str | None = None

    def add(self, data: ShippedData) -> None:
        """One report's netcheck data, rebuilt as typed values (an xdist worker sent it as plain data)."""
        self.netcheck = True
        self.property = data.get("property", self.property)
        self.topology = data.get("topology", self.topology)
        entries = list(data.get("probes") or ())
        matrix = data.get("matrix")
        entries += matrix if isinstance(matrix, list) else [matrix] if isinstance(matrix, dict) else []
        for entry in entries:
            if MatrixResult.is_one(entry):
                self.matrices.append(MatrixResult.from_dict(entry))
            else:
                self.probes.append(ProbeResult.from_dict(entry))


@dataclass(frozen=True)
class Outputs:
    html: Path
    json: Path
    pcap_dir: Path


def resolve_outputs(setting: str, rootdir: Path, invocation_dir: Path, now: datetime) -> Outputs | None:
    """Where the report goes: ``auto`` -> <rootdir>/reports/netcheck-<UTC>.html; a directory -> an
    automatic name inside it; a path -> that file (the JSON and pcaps go beside it)."""
    if setting.lower() == "none":
        return None
    name = f"netcheck-{now.strftime(STAMP)}.html"
    if setting == "auto":
        html = rootdir / "reports" / name
    else:
        html = Path(setting).expanduser()
        if not html.is_absolute():
            html = invocation_dir / html
        if html.is_dir() or setting.endswith(("/", os.sep)):
            html = html / name  # a folder, even one that does not exist yet: an automatic name inside it
        elif html.suffix.lower() == ".json":
            html = html.with_suffix(".html")
    if setting == "auto" or html.name == name:
        # Two runs in the same second must not overwrite each other.
        base, n = html, 1
        while html.exists() or html.with_suffix(".json").exists():
            html = base.with_name(f"{base.stem}-{n}{base.suffix}")
            n += 1
    return Outputs(html=html, json=html.with_suffix(".json"), pcap_dir=html.parent / f"{html.stem}-pcap")


class Collector:
    """Registered as a plugin on the controller (never on an xdist worker)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._seen: dict[str, _Seen] = {}
        self.hosts: dict[str, HostFacts] = {}
        self.lab_views: dict[str, TopologyView] = {}  # the topology as the lab had it (discovered, for external setups)
        self.started = datetime.now(UTC)
        self._t0 = time.monotonic()
        self.outputs: Outputs | None = None
        self.pcaps = 0
        self.error: str | None = None
        self.results: Results | None = None

    # ------------------------------------------------------------------ collecting

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data: ShippedData | None = getattr(report, "netcheck", None)
        lab = data.get("lab") if isinstance(data, dict) else None
        if lab is not None and data is not None and data.get("topology"):
            name = str(data["topology"])
            if "view" in lab:
                self.lab_views.setdefault(name, lab["view"])
            self.hosts.setdefault(name, lab["host"])
        seen = self._seen.setdefault(report.nodeid, _Seen())
        wasxfail = hasattr(report, "wasxfail")
        seen.phases[report.when] = report.outcome
        seen.outcome = combine(seen.outcome, report.when, report.outcome, wasxfail)
        seen.duration += float(getattr(report, "duration", 0.0) or 0.0)
        seen.worker = seen.worker or getattr(report, "worker_id", None)
        if report.failed or (report.skipped and not seen.message):
            seen.message = (seen.message + "\n\n" if seen.message else "") + _message(report)
            seen.crash = seen.crash or _crash(report)
        if isinstance(data, dict):
            seen.add(data)
            seen.properties = [[str(k), str(v)] for k, v in report.user_properties]

    @property
    def tests(self) -> list[TestRecord]:
        """The netcheck tests seen so far (tests without netcheck data are not part of the report)."""
        return [
            TestRecord(nodeid=nodeid, property=s.property, topology=s.topology, outcome=s.outcome or "passed", duration_s=round(s.duration, 4), message=s.message,
                       crash=s.crash, phases=dict(s.phases), probes=list(s.probes), matrices=list(s.matrices), properties=s.properties, worker=s.worker)
            for nodeid, s in self._seen.items() if s.netcheck and (s.property or s.topology or s.probes or s.matrices)
        ]

    def counts(self) -> Counts:
        return Counts.of(self.tests)

    # ------------------------------------------------------------------ writing

    def build(self, exitstatus: int | None = None) -> Results:
        from netcheck import spec
        from netcheck.report.facts import machine_facts
        from netcheck.report.model import topology_view

        tests = self.tests
        names = [t.name for t in self.settings.topologies] + [m.name for m in self.settings.multihosts]
        names += sorted({t.topology for t in tests if t.topology and t.topology not in names})
        topologies: dict[str, TopologyView] = {}
        multis = {m.name: m for m in self.settings.multihosts}
        for name in names:
            if name in multis:
                from netcheck.report.diagram import multihost_view

                topologies[name] = multihost_view(multis[name])  # the hosts side by side, the underlay between them
                continue
            if name in self.lab_views:
                topologies[name] = self.lab_views[name]
                continue
            try:
                topologies[name] = topology_view(self.settings.topology(name))
            except (spec.SpecError, LookupError, OSError):
                continue  # a topology named by a marker whose spec cannot be found: no diagram
        workers = sorted({t.worker for t in tests if t.worker})
        run: RunFacts = {
            "started": self.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "started_iso": self.started.isoformat(),
            "duration_s": round(time.monotonic() - self._t0, 2),
            "mode": "host" if self.settings.host_mode else "sandbox",
            "command": shlex.join(["pytest", *self.config.invocation_params.args]),
            "rootdir": str(self.config.rootpath),
            "workers": len(workers),
            "faults": list(self.settings.faults),
            "pcap": self.settings.pcap,
            "topologies": [n for n in names if any(t.topology == n for t in tests)] or names,
            "exitstatus": exitstatus,
            **machine_facts(),
        }
        return Results(run=run, topologies=topologies, hosts=dict(self.hosts), tests=tests)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.tests:
            return
        self.outputs = resolve_outputs(self.settings.report, self.config.rootpath, self.config.invocation_params.dir, self.started)
        if self.outputs is None:
            return
        try:
            self.results = self.build(int(session.exitstatus))
            self.pcaps = write(self.results, self.outputs, self.settings.pcap)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be written must not hide the run's outcome
            self.error = f"{type(exc).__name__}: {exc}"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        tests = self.tests
        if not tests:
            return
        probes = sum(len(t.all_probes()) for t in tests)
        counts = self.counts()
        terminalreporter.write_line(f"netcheck: {counts.line()}; {probes} probes", red=bool(counts.failed or counts.errors or counts.checked_nothing))
        if counts.checked_nothing:
            terminalreporter.write_line(
                f"netcheck: FAILED: nothing was checked: every one of the {counts.total} selected netcheck checks was skipped "
                "(a green run must mean the network was checked; see the skip reasons with -rs)", red=True, bold=True)
        groups = Results(tests=tests).causes()
        if len(groups) < counts.failed + counts.errors:
            for g in groups:
                what = f"[{g.cause}] {g.where}: {g.summary}" if g.cause else "no known cause matched"
                terminalreporter.write_line(f"netcheck: {len(g.tests)} failure(s) share one cause: {what}" + (f"\n  fix: {g.fix}" if g.fix else ""))
        if self.error:
            terminalreporter.write_line(f"netcheck: could not write the report: {self.error}", red=True)
        elif self.outputs is not None and self.results is not None:
            extra = f", {self.pcaps} pcap files in {_shown(self.outputs.pcap_dir)}" if self.pcaps else ""
            terminalreporter.write_line(f"netcheck report: {_shown(self.outputs.html)} (results: {_shown(self.outputs.json)}{extra})", bold=True)


def write(results: Results, out: Outputs, pcap_mode: str) -> int:
    """Write pcaps, then the JSON, then the HTML rendered from that JSON. Returns the pcap count."""
    from netcheck.report import pcap
    from netcheck.report.render import Renderer

    out.html.parent.mkdir(parents=True, exist_ok=True)
    count = pcap.write_all(results, out.pcap_dir, pcap_mode, out.html.parent)
    results.run["json_file"] = out.json.name
    results.run["pcap_dir"] = out.pcap_dir.name if count else ""
    text = results.to_json()
    _atomic_write(out.json, text)
    # One model, several views: the page is rendered from the JSON just written.
    page = Renderer().report(Results.from_dict(json.loads(text), str(out.json)))
    _atomic_write(out.html, page)
    return count


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return report.longreprtext


def _crash(report: pytest.TestReport) -> str:
    """The one-line failure pytest shows in its short summary."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", "") or "")
    if not text and report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        text = str(report.longrepr[2])
    return text.splitlines()[0][:300] if text else ""


def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel
