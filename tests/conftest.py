"""netcheck's own tests. Tests marked ``root`` build namespaces; the rest run anywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo() -> Path:
    return REPO


# An inner session of suite tests, run in this process: no cache, no xdist, and no warning that
# netcheck (already imported by this session) cannot be assertion-rewritten again.
INNER_FLAGS = ("-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore::pytest.PytestAssertRewriteWarning")


@pytest.fixture
def run_suites(pytester: pytest.Pytester) -> Callable[..., pytest.RunResult]:
    """Run suite tests in an inner pytest session: ``run_suites(path, *options, report="none")``."""

    def run(*args: str, report: str = "none") -> pytest.RunResult:
        return pytester.runpytest_inprocess(*args, f"--netcheck-report={report}", *INNER_FLAGS)

    return run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root to build namespaces (skipped without it)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from netcheck.lab import has_net_admin

    if has_net_admin():
        return
    skip = pytest.mark.skip(reason="needs root to build network namespaces (run as root, or in the Vagrant box)")
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)
