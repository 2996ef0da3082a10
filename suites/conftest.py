"""The suites run against every topology in play (--netcheck-topology; default: the built-ins).

The suites use short names for netcheck's fixtures; they are aliases defined here alone, so a
project of one's own keeps its ``lab`` or ``topology`` fixtures to itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netcheck import spec
from netcheck.evidence import ProbeResult
from netcheck.lab import Lab
from netcheck.probes import Prober


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scale: the opt-in scale suite (-m scale)")
    config.addinivalue_line("markers", "netcheck_multihost: a cross-host test, collected only for multi-host topologies")


@pytest.fixture
def topology(netcheck_topology: spec.Topology) -> spec.Topology:
    """The topology under test (``netcheck_topology``)."""
    return netcheck_topology


@pytest.fixture
def family(netcheck_family: int) -> int:
    """The address family under test (``netcheck_family``): 4, or 6 on a dual-stack topology's second run."""
    return netcheck_family


@pytest.fixture
def lab(netcheck_lab: Lab) -> Lab:
    """The shared lab of the topology under test (``netcheck_lab``)."""
    return netcheck_lab


@pytest.fixture
def probe(netcheck_probe: Prober) -> Prober:
    """A prober recording evidence (``netcheck_probe``)."""
    return netcheck_probe


@pytest.fixture
def fresh_lab(netcheck_fresh_lab: Callable[[spec.Topology | str], Lab]) -> Callable[[spec.Topology | str], Lab]:
    """Build a private lab, torn down after the test (``netcheck_fresh_lab``)."""
    return netcheck_fresh_lab


@pytest.fixture
def evidence(netcheck_evidence: Callable[[ProbeResult], None]) -> Callable[[ProbeResult], None]:
    """Record a probe result as evidence (``netcheck_evidence``)."""
    return netcheck_evidence


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The scale suite is opt-in: its tests run only when ``-m`` names ``scale``. The cross-host
    tests are not collected when no multi-host topology is in play."""
    from netcheck.plugin import SETTINGS

    if not config.stash[SETTINGS].multihosts:
        items[:] = [item for item in items if not item.get_closest_marker("netcheck_multihost")]
    if "scale" in (config.getoption("markexpr", "") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("scale")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("scale")]
