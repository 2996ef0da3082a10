"""The results model: one run as plain data. The JSON file, the HTML page, the pcap files,
the pytest-html extras and ``netcheck diff`` are all views of it.

A ``Results`` round-trips through JSON (``to_dict``/``from_dict``); the HTML report is
rendered from the parsed JSON, so the two can never disagree.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netcheck.evidence import PROPERTIES, place_once

if TYPE_CHECKING:
    from netcheck import spec

SCHEMA = "netcheck-results/1"
FAILED_OUTCOMES = ("failed", "error", "xpassed")


class ResultsError(ValueError):
    """A results file cannot be read; the message names the file and the fix."""


@dataclass
class TestRecord:
    """One test (one node id), merged from its setup, call and teardown reports."""

    __test__ = False  # not a pytest test class

    nodeid: str
    property: str | None = None
    topology: str | None = None
    outcome: str = "passed"  # passed, failed, error, skipped, xfailed, xpassed
    duration_s: float = 0.0
    message: str = ""  # the failure (or skip) text pytest printed
    crash: str = ""  # its one-line form (pytest's reprcrash message)
    phases: dict[str, str] = field(default_factory=dict)  # when -> outcome
    probes: list[dict[str, Any]] = field(default_factory=list)  # ProbeResult.to_dict()
    matrices: list[dict[str, Any]] = field(default_factory=list)  # MatrixResult.to_dict()
    properties: list[list[str]] = field(default_factory=list)  # pytest user_properties
    pcaps: list[dict[str, Any]] = field(default_factory=list)  # {"probe", "point", "file", "packets"}
    worker: str | None = None

    @builtins.property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    @builtins.property
    def name(self) -> str:
        return self.nodeid.rpartition("::")[2]

    def top_finding(self) -> dict[str, Any] | None:
        """The first cause the diagnosis of the test's first failing probe ranks first."""
        for p in self.all_probes():
            findings = (p.get("diagnosis") or {}).get("findings") or []
            if findings and isinstance(findings[0], dict):
                return findings[0]
        return None

    def all_probes(self) -> list[dict[str, Any]]:
        """The test's probes, then the failing probes its matrices carry (each has captures)."""
        out = list(self.probes)
        for m in self.matrices:
            out.extend(f for f in m.get("failures", ()) if isinstance(f, dict))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Results:
    """A whole run: facts, the topologies in play (as data), each host's iptables backend, the tests."""

    run: dict[str, Any] = field(default_factory=dict)
    topologies: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> topology_view()
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # topology -> facts.backend_facts()
    tests: list[TestRecord] = field(default_factory=list)

    # ------------------------------------------------------------------ views of the data

    def summary(self) -> dict[str, Any]:
        """The properties x topologies table: counts per cell, and a state (pass, fail, skip, none)."""
        topologies = list(self.topologies) or []
        for t in self.tests:
            if t.topology and t.topology not in topologies:
                topologies.append(t.topology)
        present = {t.property for t in self.tests}
        props = [p for p in PROPERTIES if p != "scale" or "scale" in present]
        props += sorted(p for p in present if p and p not in props)
        if any(t.property is None for t in self.tests):
            props.append("other")
        cells: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in props}
        for p in props:
            for topo in topologies:
                cells[p][topo] = {"passed": 0, "failed": 0, "skipped": 0}
        for t in self.tests:
            p = t.property or "other"
            topo = t.topology or "-"
            if topo not in topologies:
                topologies.append(topo)
                for pp in props:
                    cells[pp][topo] = {"passed": 0, "failed": 0, "skipped": 0}
            bucket = "failed" if t.failed else "skipped" if t.outcome in ("skipped", "xfailed") else "passed"
            cells[p][topo][bucket] += 1
        for row in cells.values():
            for cell in row.values():
                cell["state"] = "fail" if cell["failed"] else "pass" if cell["passed"] else "skip" if cell["skipped"] else "none"
        counts = Counts.of(self.tests)
        totals = {"passed": counts.passed, "failed": counts.failed, "skipped": counts.skipped}
        return {"properties": props, "topologies": topologies, "cells": cells, "totals": totals, "counts": counts}

    def causes(self) -> list[CauseGroup]:
        """The failed tests grouped by their top cause (most tests first): one cause, its fix, the tests it explains."""
        groups: dict[tuple[str, str, str], CauseGroup] = {}
        for t in self.tests:
            if not t.failed:
                continue
            top = t.top_finding()
            key = (str(top.get("cause", "")), str(top.get("where", "")), str(top.get("fix", ""))) if top else ("", "", "")
            group = groups.get(key)
            if group is None:
                group = groups[key] = CauseGroup(cause=key[0], where=key[1], fix=key[2], summary=str(top.get("summary", "")) if top else "")
            group.tests.append(t.nodeid)
        return sorted(groups.values(), key=lambda g: (not g.cause, -len(g.tests), g.cause))

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "run": self.run,
            "topologies": self.topologies,
            "hosts": self.hosts,
            "tests": [t.to_dict() for t in self.tests],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<results>") -> Results:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ResultsError(f"{source}: not a netcheck results file (schema {got!r}, expected {SCHEMA!r}); give the .json file written beside a netcheck HTML report")
        tests = data.get("tests", [])
        if not isinstance(tests, list) or not all(isinstance(t, dict) and isinstance(t.get("nodeid"), str) for t in tests):
            raise ResultsError(f"{source}: 'tests' must be a list of objects with a 'nodeid'; the file is damaged, write it again with a new run")
        return cls(
            run=dict(data.get("run") or {}),
            topologies=dict(data.get("topologies") or {}),
            hosts=dict(data.get("hosts") or {}),
            tests=[TestRecord.from_dict(t) for t in tests],
        )

    @classmethod
    def load(cls, path: str | Path) -> Results:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ResultsError(f"{p}: cannot read it ({exc.strerror or exc}); give the path of a reports/netcheck-*.json file") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); give the .json file written beside a netcheck HTML report") from None
        return cls.from_dict(data, str(p))


def is_matrix(entry: dict[str, Any]) -> bool:
    """A ``MatrixResult.to_dict()`` (or an entry marked kind "matrix") among a test's evidence."""
    return entry.get("kind") == "matrix" or ("names" in entry and "observed" in entry and "expected" in entry)


def finding_line(finding: dict[str, Any]) -> str:
    """A finding as one line, ``where: summary`` (a summary that already starts with its place keeps it once)."""
    return place_once(str(finding.get("where", "?")), str(finding.get("summary", "")))


@dataclass
class CauseGroup:
    """Failed tests that share a top cause (``cause`` empty: no known cause matched)."""

    cause: str
    where: str
    fix: str
    summary: str
    tests: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Counts:
    """What a run checked, counted one way for the terminal summary and the HTML report alike.

    ``failed`` counts failed checks and ``errors`` those whose setup or teardown broke (as pytest
    counts them); ``failed_or_error`` in the summary table merges them.
    """

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, tests: list[TestRecord]) -> Counts:
        outcomes = [t.outcome for t in tests]
        return cls(
            passed=sum(1 for o in outcomes if o == "passed"),
            failed=sum(1 for o in outcomes if o in ("failed", "xpassed")),
            errors=sum(1 for o in outcomes if o == "error"),
            skipped=sum(1 for o in outcomes if o in ("skipped", "xfailed")),
        )

    @builtins.property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    @builtins.property
    def checked_nothing(self) -> bool:
        """Netcheck checks were selected, and not one of them ran to a verdict."""
        return self.total > 0 and self.passed == self.failed == self.errors == 0

    def line(self) -> str:
        return f"{self.total} checks: {self.passed} passed, {self.failed} failed, {self.errors} errors, {self.skipped} skipped"

    def headline(self) -> str:
        if self.failed or self.errors:
            errors = f"{self.errors} error{'s' if self.errors > 1 else ''}"
            if not self.failed:
                return f"{errors} in {self.total} checks"
            return f"{self.failed} of {self.total} checks failed" + (f", {errors}" if self.errors else "")
        if self.checked_nothing:
            return f"Nothing was checked: all {self.total} checks were skipped"
        return f"All {self.passed} checks passed" + (f" ({self.skipped} skipped)" if self.skipped else "")


def _bucket(t: TestRecord) -> str:
    return "failed" if t.failed else "skipped" if t.outcome in ("skipped", "xfailed") else "passed"


def combine(previous: str | None, when: str, outcome: str, wasxfail: bool) -> str:
    """The outcome of a test so far, given one more phase report (as pytest's summary counts it)."""
    if when == "call":
        if wasxfail:
            return "xfailed" if outcome == "skipped" else "xpassed" if outcome == "passed" else outcome
        return outcome
    if outcome == "failed":  # an error in setup or teardown
        return "error" if previous in (None, "passed", "skipped") or when == "setup" else previous
    if outcome == "skipped" and when == "setup":
        return "xfailed" if wasxfail else "skipped"
    return previous or outcome


def topology_view(t: spec.Topology) -> dict[str, Any]:
    """A topology spec as plain JSON data (addresses as strings)."""
    return {k: _plain(v) for k, v in dataclasses.asdict(t).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
