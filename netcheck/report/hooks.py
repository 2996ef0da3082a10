"""What a test's report carries for netcheck, made in one place (the plugin's one ``makereport`` wrapper calls ``ReportHooks.on_report``).

It runs in every process (the controller and each xdist worker) and attaches to the report:

* ``report.netcheck``: the test's property, topology and evidence as plain data (it travels
  through xdist; the controller's ``Collector`` rebuilds typed values from it), plus, once per
  topology, which iptables backend holds rules in the lab's host namespace and the topology as
  the lab had it (read while the lab is up);
* the JUnit properties (``netcheck.property``, ``.topology``, ``.probes``, ``.diagnosis``);
* with pytest-html active, the evidence, diagnosis and diagram as an HTML extra.

The work is in ``facts`` and ``render``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NotRequired, TypedDict

import pytest

from netcheck.evidence import MatrixResult, ProbeResult
from netcheck.kernel.jsontypes import JSONObject
from netcheck.report.model import HostFacts, TestRecord, TopologyView
from netcheck.settings import Settings, item_multihost, item_topology

if TYPE_CHECKING:
    from netcheck.lab import Lab
    from netcheck.report.render import Renderer

Evidence = ProbeResult | MatrixResult  # what a test records (``netcheck_evidence``)


class LabData(TypedDict):
    """A lab's facts, read once per topology while it is up."""

    host: HostFacts
    view: NotRequired[TopologyView]  # the topology as the lab had it (discovered, for a setup another tool made), with what its host holds now


class ShippedData(TypedDict, total=False):
    """``report.netcheck``: one test's netcheck data, as plain data (xdist ships it)."""

    property: str | None
    topology: str | None
    probes: list[JSONObject]  # ProbeResult.to_dict(), or MatrixResult.to_dict() (a matrix recorded as evidence)
    matrix: JSONObject | list[JSONObject]  # a matrix handed over beside the probes
    lab: LabData
    phase: int  # --netcheck-event: 0 before any event, i after the first i


class ReportHooks:
    """The state the one ``makereport`` wrapper keeps in a process: which labs' facts were read, and the pytest-html snippets' renderer."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.settings = settings
        self.html = bool(config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None))
        self._facts_read: set[str] = set()
        self._views: dict[str, TopologyView | None] = {}
        self._renderer: Renderer | None = None

    def on_report(self, item: pytest.Item, report: pytest.TestReport, evidence: Sequence[Evidence]) -> None:
        """Attach the test's netcheck data to its call report (or to a setup report that did not pass)."""
        if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
            return
        prop = item.get_closest_marker("netcheck_property")
        topo = item_topology(item)
        multi = item_multihost(item) if topo is None else None
        probes = [e for e in evidence if isinstance(e, ProbeResult)]
        data: ShippedData = {
            "property": str(prop.args[0]) if prop else None,
            "topology": topo.name if topo is not None else multi.name if multi is not None else None,
            "probes": [e.to_dict() for e in evidence],
        }
        lab: Lab | None = getattr(item, "funcargs", {}).get("netcheck_lab")
        if report.when == "call" and lab is not None and data["topology"] and data["topology"] not in self._facts_read:
            self._facts_read.add(data["topology"])
            data["lab"] = self._lab_data(data["topology"], lab)
        report.netcheck = data  # type: ignore[attr-defined]
        self._junit(item, report, data, probes)
        if self.html and (evidence or report.failed):
            self._html_extra(report, data, probes, [e for e in evidence if isinstance(e, MatrixResult)], lab)

    def _lab_data(self, name: str, lab: Lab) -> LabData:
        from netcheck.report.facts import backend_facts

        out: LabData = {"host": {**backend_facts(lab.host), "topology": name}}
        view = self._view(name, lab)
        if view is not None:
            out["view"] = view
        return out

    @staticmethod
    def _junit(item: pytest.Item, report: pytest.TestReport, data: ShippedData, probes: Sequence[ProbeResult]) -> None:
        if data["property"]:
            report.user_properties.append(("netcheck.property", data["property"]))
        if data["topology"]:
            report.user_properties.append(("netcheck.topology", data["topology"]))
        if probes:
            report.user_properties.append(("netcheck.probes", str(len(probes))))
            top = next((p.diagnosis.top for p in probes if p.diagnosis is not None and p.diagnosis.top is not None), None)
            if top is not None:
                report.user_properties.append(("netcheck.diagnosis", f"{top.headline()}. Fix: {top.fix}"))
        # --junitxml writes the teardown report's properties, which pytest copies from the item's.
        item.user_properties.extend(p for p in report.user_properties if str(p[0]).startswith("netcheck.") and p not in item.user_properties)

    def _html_extra(self, report: pytest.TestReport, data: ShippedData, probes: list[ProbeResult], matrices: list[MatrixResult], lab: Lab | None) -> None:
        from pytest_html import extras  # type: ignore[import-untyped]

        from netcheck.report.render import Renderer

        record = TestRecord(nodeid=report.nodeid, property=data["property"], topology=data["topology"],
                            outcome="failed" if report.failed else report.outcome, probes=probes, matrices=matrices)
        self._renderer = self._renderer or Renderer()
        snippet = self._renderer.snippet(record, self._view(record.topology, lab))
        report.extras = [*getattr(report, "extras", []), extras.html(snippet)]  # type: ignore[attr-defined]

    def _view(self, name: str | None, lab: Lab | None) -> TopologyView | None:
        """The topology the snippet's diagram draws: the lab's, with its observed host; else the spec's."""
        if not name:
            return None
        if name not in self._views:
            from netcheck import spec
            from netcheck.report.facts import observed_host
            from netcheck.report.model import topology_view

            try:
                self._views[name] = {**topology_view(lab.topology), "observed": observed_host(lab)} if lab is not None else topology_view(self.settings.topology(name))
            except (spec.SpecError, LookupError, OSError):
                self._views[name] = None
        return self._views[name]


__all__ = ["Evidence", "LabData", "ReportHooks", "ShippedData"]
