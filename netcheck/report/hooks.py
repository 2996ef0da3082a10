"""Report hooks that run in every process (the controller and each xdist worker).

* ``LabFacts`` reads, once per topology, which iptables backend holds rules in the lab's host
  namespace, while the lab is up, and ships it to the controller on the test's report.
* ``HtmlExtras`` (only when pytest-html is active) adds each test's netcheck evidence, diagnosis
  and diagram to pytest-html's report as an HTML extra.

Both are thin: the work is in ``facts`` and ``render``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from netcheck.report.model import is_matrix
from netcheck.settings import Settings


def register(config: pytest.Config, settings: Settings) -> None:
    """Called from the plugin's ``pytest_configure`` in every process."""
    config.pluginmanager.register(LabFacts(), "netcheck-lab-facts")
    if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None):
        config.pluginmanager.register(HtmlExtras(settings), "netcheck-html-extras")


def _topology_name(item: pytest.Item) -> str | None:
    from netcheck.settings import item_topology

    topo = item_topology(item)
    return topo.name if topo is not None else None


class LabFacts:
    def __init__(self) -> None:
        self._done: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when != "call":
            return report
        lab = getattr(item, "funcargs", {}).get("netcheck_lab")
        name = _topology_name(item)
        host = getattr(lab, "host", None)
        if name and host is not None and name not in self._done:
            from netcheck.report.facts import backend_facts
            from netcheck.report.model import topology_view

            self._done.add(name)
            facts: dict[str, Any] = {"topology": name, **backend_facts(host)}
            real = getattr(lab, "topology", None)
            if real is not None:
                # The lab's topology: for a setup made by another tool, what was discovered (addresses, veths),
                # with what its host holds now (the diagram draws what was measured).
                from netcheck.report.facts import observed_host

                facts["view"] = {**topology_view(real), "observed": observed_host(lab)}
            report.netcheck_host = facts  # type: ignore[attr-defined]
        return report


class HtmlExtras:
    def __init__(self, settings: Settings) -> None:
        from netcheck.report.render import Renderer

        self.settings = settings
        self.renderer = Renderer()
        self._views: dict[str, dict[str, Any] | None] = {}

    def _view(self, name: str | None, lab: object) -> dict[str, Any] | None:
        if not name:
            return None
        if name not in self._views:
            from netcheck import spec
            from netcheck.report.facts import observed_host
            from netcheck.report.model import topology_view

            real = getattr(lab, "topology", None)
            try:
                view = topology_view(real if real is not None else self.settings.topology(name))
            except (spec.SpecError, LookupError, OSError):
                self._views[name] = None
            else:
                self._views[name] = {**view, "observed": observed_host(lab)} if real is not None else view
        return self._views[name]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        data = getattr(report, "netcheck", None)
        if not isinstance(data, dict):
            return report
        probes = [p for p in data.get("probes", []) if isinstance(p, dict)]
        matrix = data.get("matrix")
        matrices = [p for p in probes if is_matrix(p)] + [m for m in (matrix if isinstance(matrix, list) else [matrix]) if isinstance(m, dict)]
        if not (probes or matrices or report.failed):
            return report
        from pytest_html import extras  # type: ignore[import-untyped]

        from netcheck.report.model import TestRecord

        record = TestRecord(
            nodeid=report.nodeid,
            property=data.get("property"),
            topology=data.get("topology"),
            outcome="failed" if report.failed else report.outcome,
            probes=[p for p in probes if not is_matrix(p)],
            matrices=matrices,
        )
        snippet = self.renderer.snippet(record, self._view(record.topology, getattr(item, "funcargs", {}).get("netcheck_lab")))
        report.extras = [*getattr(report, "extras", []), extras.html(snippet)]  # type: ignore[attr-defined]
        return report
