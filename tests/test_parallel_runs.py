"""Two separate ``pytest suites/`` runs at once: neither disturbs the other.

Both share one run directory, as two runs on one machine share /run/netcheck, and the second
starts while the first has a lab up, so its start-up reaping (LabFactory -> ledger.clean)
meets a live run. Both must pass, their labs must have been up at the same time, their
kernel names must never collide, and nothing may be left afterwards.

Cost: about 12 s (two suite runs on two cores). The 50x ``pytest -n 2 suites/`` soak is
bench/parallel.sh, run by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hoststate import NETNS_DIR, PYTEST, Child, child_env, read_records

from netcheck.waiting import wait_until

pytestmark = pytest.mark.root

ARGS = ["suites/", "-q", "-p", "no:cacheprovider", "--netcheck-report", "none"]


def labs_by_pid(run_dir: Path) -> dict[int, dict[str, set[str]]]:
    """pid -> tag -> the namespace names its run record holds now."""
    out: dict[int, dict[str, set[str]]] = {}
    for header, entries in read_records(run_dir):
        pid = header.get("pid")
        if isinstance(pid, int):
            names = {str(e["name"]) for e in entries if e["kind"] == "netns"}
            out.setdefault(pid, {})[str(header.get("tag"))] = names
    return out


def test_two_suite_runs_at_once_do_not_disturb_each_other(tmp_path):
    run_dir = tmp_path / "run"
    env = {**child_env(), "NETCHECK_RUN_DIR": str(run_dir)}
    seen: dict[int, dict[str, set[str]]] = {}
    overlap = False

    def watch() -> None:
        nonlocal overlap
        now = labs_by_pid(run_dir)
        overlap = overlap or len(now) >= 2
        for pid, labs in now.items():
            for tag, names in labs.items():
                seen.setdefault(pid, {}).setdefault(tag, set()).update(names)

    first = Child([*PYTEST, *ARGS], env=env)
    second = None
    try:
        wait_until(lambda: (watch(), first.pid in seen)[1] or first.proc.poll() is not None, timeout=60, what="the first run's first lab")
        second = Child([*PYTEST, *ARGS], env=env)
        runs = (first, second)
        wait_until(lambda: (watch(), all(c.proc.poll() is not None for c in runs))[1], timeout=600, what="both runs to end")
        codes = [c.finish(60) for c in runs]
    finally:
        first.close()
        if second is not None:
            second.close()
    for child, code in zip(runs, codes, strict=True):
        assert code == 0, f"run {child.pid} failed (exit {code}):\n{child.output()[-3000:]}"
    assert overlap, "the two runs never had labs up at the same time: the test proves nothing"
    assert set(seen) == {first.pid, second.pid}, f"run records came from {sorted(seen)}"
    names = [set().union(*seen[c.pid].values()) for c in runs]
    assert names[0] and names[1]
    assert not names[0] & names[1], f"the runs used the same namespace names: {sorted(names[0] & names[1])}"
    assert not set(seen[first.pid]) & set(seen[second.pid])
    left = sorted(n for n in names[0] | names[1] if os.path.lexists(NETNS_DIR / n))
    assert not left, f"left behind: {left}"
    assert not list(run_dir.glob("*.jsonl")), "run records left behind"
