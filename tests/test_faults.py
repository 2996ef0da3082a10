"""Every suite check can fail, and passes when nothing is broken.

The failing half is the fault corpus in tests/test_diagnosis.py: each fault of
netcheck/faults.py breaks a fresh lab and its suite test must fail, name what is broken and
rank the right cause first. This file holds the control: on unbroken labs the very same
suite tests pass, so those failures come from the faults and from nothing else.
"""

from __future__ import annotations

import pytest

from netcheck.faults import FAULTS

pytestmark = pytest.mark.root


def test_the_suite_tests_that_faults_target_pass_without_faults(run_suites, repo) -> None:
    by_topology: dict[str, set[str]] = {}
    for f in FAULTS.values():
        by_topology.setdefault(f.topology, set()).add(f.suite_test)
    for topology, tests in by_topology.items():
        result = run_suites(*(str(repo / "suites" / t) for t in sorted(tests)), f"--netcheck-topology={topology}")
        outcomes = result.parseoutcomes()
        assert not outcomes.get("failed") and not outcomes.get("error") and outcomes.get("passed"), result.stdout.str()[-3000:]
