"""Collects every test's outcome and evidence on the controller, and writes the reports."""

from __future__ import annotations

from typing import Any

import pytest

from netcheck.settings import Settings


class Collector:
    """Registered as a plugin on the controller (never on an xdist worker)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.tests: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "netcheck", None)
        if data is None:
            return
        self.tests.append({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, **data})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        probes = sum(len(t["probes"]) for t in self.tests)
        if self.tests:
            terminalreporter.write_line(f"netcheck: {len(self.tests)} checks, {probes} probes")
