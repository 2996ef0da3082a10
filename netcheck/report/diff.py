"""``netcheck diff OLD.json NEW.json``: which checks changed between two runs, and how.

Exit status, like diff(1): 0 when no check changed, 1 when some did, 2 when a file cannot be read.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from netcheck.report.model import Results, ResultsError, TestRecord

FACTS = ("kernel", "distribution", "mode", "iptables_command")


@dataclass(frozen=True)
class Change:
    kind: str  # broke, fixed, changed, new, gone
    nodeid: str
    detail: str


def _top_finding(t: TestRecord) -> str:
    return next((f.headline() for p in t.all_probes() if p.diagnosis is not None for f in p.diagnosis.findings if f.summary), "")


def _failing_probes(t: TestRecord) -> list[str]:
    return sorted(f"{p.kind} {p.source} -> {p.destination}: {p.verdict}" for p in t.all_probes() if not p.passed)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:160]
    return ""


def compare(old: Results, new: Results) -> list[Change]:
    """The changes from ``old`` to ``new``, test by test (matched by node id)."""
    before = {t.nodeid: t for t in old.tests}
    after = {t.nodeid: t for t in new.tests}
    changes: list[Change] = []
    for nodeid, n in after.items():
        o = before.get(nodeid)
        if o is None:
            changes.append(Change("new", nodeid, n.outcome))
            continue
        if o.outcome != n.outcome:
            kind = "broke" if n.failed and not o.failed else "fixed" if o.failed and not n.failed else "changed"
            why = (_top_finding(n) or _first_line(n.crash) or _first_line(n.message)) if n.failed else ""
            changes.append(Change(kind, nodeid, f"{o.outcome} -> {n.outcome}" + (f": {why}" if why else "")))
            continue
        if n.failed:
            of, nf = _top_finding(o), _top_finding(n)
            if of != nf:
                changes.append(Change("changed", nodeid, f"still {n.outcome}; diagnosis was {of or 'none'!r}, now {nf or 'none'!r}"))
            elif _failing_probes(o) != _failing_probes(n):
                gone = sorted(set(_failing_probes(o)) - set(_failing_probes(n)))
                came = sorted(set(_failing_probes(n)) - set(_failing_probes(o)))
                changes.append(Change("changed", nodeid, f"still {n.outcome}; failing probes now: {'; '.join(came) or 'fewer'}" + (f" (no longer: {'; '.join(gone)})" if gone else "")))
    for nodeid, o in before.items():
        if nodeid not in after:
            changes.append(Change("gone", nodeid, f"was {o.outcome}"))
    order = {"broke": 0, "fixed": 1, "changed": 2, "new": 3, "gone": 4}
    return sorted(changes, key=lambda c: (order[c.kind], c.nodeid))


def fact_changes(old: Results, new: Results) -> list[str]:
    out = []
    for key in FACTS:
        a, b = old.run.get(key), new.run.get(key)
        if a != b:
            out.append(f"{key}: {a} -> {b}")
    ov = old.run.get("versions") or {}
    nv = new.run.get("versions") or {}
    for tool in sorted(set(ov) | set(nv)):
        if ov.get(tool) != nv.get(tool):
            out.append(f"{tool}: {ov.get(tool, 'absent')} -> {nv.get(tool, 'absent')}")
    for topo in sorted(set(old.hosts) | set(new.hosts)):
        a = (old.hosts.get(topo) or {}).get("backend")
        b = (new.hosts.get(topo) or {}).get("backend")
        if a != b:
            out.append(f"iptables backend on {topo}: {a or 'unknown'} -> {b or 'unknown'}")
    if list(old.run.get("faults") or []) != list(new.run.get("faults") or []):
        out.append(f"injected faults: {', '.join(old.run.get('faults') or []) or 'none'} -> {', '.join(new.run.get('faults') or []) or 'none'}")
    return out


def run_diff(old_path: str, new_path: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        old = Results.load(old_path)
        new = Results.load(new_path)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"netcheck diff: {old_path} ({old.run.get('started', '?')}) -> {new_path} ({new.run.get('started', '?')})", file=out)
    facts = fact_changes(old, new)
    if facts:
        print("run facts that differ:", file=out)
        for f in facts:
            print(f"  {f}", file=out)
    changes = compare(old, new)
    width = max((len(c.nodeid) for c in changes), default=0)
    for c in changes:
        print(f"  {c.kind.upper():<8} {c.nodeid:<{width}}  {c.detail}", file=out)
    counts = {k: sum(1 for c in changes if c.kind == k) for k in ("broke", "fixed", "changed", "new", "gone")}
    same = sum(1 for t in new.tests if t.nodeid in {o.nodeid for o in old.tests}) - counts["broke"] - counts["fixed"] - counts["changed"]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no check changed"
    print(f"{summary}; {same} unchanged", file=out)
    return 1 if changes else 0
