"""Every suite check can fail: each fault breaks a lab on purpose and its suite test must fail,
saying what is broken. The faulted lab is private to the inner run and removed with it."""

from __future__ import annotations

import pytest

from netcheck.faults import FAULTS

pytestmark = pytest.mark.root


def run_suite_test(pytester: pytest.Pytester, repo, fault: str) -> pytest.RunResult:
    f = FAULTS[fault]
    return pytester.runpytest_inprocess(
        str(repo / f.suite_test),
        f"--netcheck-topology={f.topology}",
        f"--netcheck-fault={fault}",
        "--netcheck-report=none",
        "-p", "no:cacheprovider",
        "-p", "no:xdist",
        "-W", "ignore::pytest.PytestAssertRewriteWarning",
    )


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_fails_its_suite_test_and_names_it(pytester: pytest.Pytester, repo, fault: str) -> None:
    f = FAULTS[fault]
    result = run_suite_test(pytester, repo, fault)
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 1 and not outcomes.get("error"), f"fault {fault} ({f.summary}) did not fail {f.suite_test}:\n{out[-3000:]}"
    assert f.message in out, f"the failure for {fault} does not mention {f.message!r}:\n{out[-3000:]}"


def test_the_same_suite_tests_pass_without_faults(pytester: pytest.Pytester, repo) -> None:
    """The control: every suite test a fault targets passes on an unbroken lab."""
    by_topology: dict[str, set[str]] = {}
    for f in FAULTS.values():
        by_topology.setdefault(f.topology, set()).add(f.suite_test)
    for topology, tests in by_topology.items():
        result = pytester.runpytest_inprocess(*(str(repo / t) for t in sorted(tests)), f"--netcheck-topology={topology}", "--netcheck-report=none", "-p", "no:cacheprovider", "-p", "no:xdist")
        outcomes = result.parseoutcomes()
        assert not outcomes.get("failed") and not outcomes.get("error") and outcomes.get("passed"), result.stdout.str()[-3000:]
