"""Settings, resolved in one place: marker, then command line, then environment, then ini."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import pytest

from netcheck import spec
from netcheck.multihost import spec as multihost

ENV_TOPOLOGY = "NETCHECK_TOPOLOGY"  # comma-separated names or files
ENV_CI = "CI"  # set by CI services; "true" turns a check skipped for a missing tool into a failure


def topology_from_env() -> list[str] | None:
    """The topologies named by NETCHECK_TOPOLOGY, or None when it is unset or empty."""
    env = os.environ.get(ENV_TOPOLOGY, "").strip()
    refs = [x.strip() for x in env.split(",") if x.strip()]
    return refs or None


def in_ci() -> bool:
    """Running under CI (``CI=true``, as GitHub Actions, GitLab CI and this project's .ci/run set it)."""
    return os.environ.get(ENV_CI, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    topologies: tuple[spec.Topology, ...]
    keep: bool
    report: str  # "auto", "none" or a path
    pcap: Literal["failed", "all", "none"]
    host_mode: bool
    scale_n: int
    faults: tuple[str, ...] = ()
    multihosts: tuple[multihost.MultiTopology, ...] = ()  # the multi-host topologies in play (suites/test_cross_host.py)

    def topology(self, name: str) -> spec.Topology:
        for t in self.topologies:
            if t.name == name:
                return t
        return spec.resolve(name)


def _refs(config: pytest.Config) -> list[str]:
    cli = config.getoption("netcheck_topology") or []
    if cli:
        return list(cli)
    env = topology_from_env()
    if env:
        return env
    ini: list[str] = config.getini("netcheck_topology")
    return list(ini) if ini else list(spec.BUILTIN)  # the multi-host built-ins run when named (--netcheck-topology two-hosts-vxlan)


def resolve(config: pytest.Config) -> Settings:
    """Read and validate every setting; a bad one raises pytest.UsageError with the fix."""
    topologies: list[spec.Topology] = []
    multis: list[multihost.MultiTopology] = []
    for ref in _refs(config):
        try:
            if multihost.is_multi_ref(ref):
                multis.append(multihost.resolve(ref))
                continue
            topologies.append(spec.resolve(ref))
        except spec.SpecError as exc:
            raise pytest.UsageError(f"--netcheck-topology {ref}: {exc}") from None
    # The single-host suites run on each host of a multi-host lab: held in this process, or served by its node.
    topologies += [h.topology for m in multis for h in m.hosts]
    names = [t.name for t in topologies] + [m.name for m in multis]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise pytest.UsageError(f"--netcheck-topology: the topology name(s) {', '.join(sorted(dupes))} appear twice; give each spec its own name = \"...\"")
    pcap: Literal["failed", "all", "none"]
    given = config.getoption("netcheck_pcap") or "failed"
    if given == "all":
        pcap = "all"
    elif given == "none":
        pcap = "none"
    elif given == "failed":
        pcap = "failed"
    else:
        raise pytest.UsageError(f"--netcheck-pcap={given}: use failed, all or none")
    scale_n = int(config.getoption("netcheck_scale_n") or 100)
    if not 2 <= scale_n <= 1000:
        raise pytest.UsageError(f"--netcheck-scale-n={scale_n}: use a number of containers from 2 to 1000")
    faults = tuple(config.getoption("netcheck_fault") or ())
    if faults:
        from netcheck.faults import FAULTS, known

        unknown = [f for f in faults if not known(f)]
        if unknown:
            raise pytest.UsageError(f"--netcheck-fault {', '.join(unknown)}: unknown fault; known: {', '.join(sorted(FAULTS))}")
        if config.getoption("netcheck_host"):
            # A fault changes the host on purpose, and nothing would restore a real host's settings.
            raise pytest.UsageError("--netcheck-fault breaks the host on purpose, so it cannot be used with --netcheck-host; drop --netcheck-host to see it in the sandbox")
    return Settings(
        faults=faults,
        topologies=tuple(topologies),
        multihosts=tuple(multis),
        keep=bool(config.getoption("netcheck_keep")),
        report=config.getoption("netcheck_report") or "auto",
        pcap=pcap,
        host_mode=bool(config.getoption("netcheck_host")),
        scale_n=scale_n,
    )


def marker_topologies(node: pytest.Item, default: tuple[spec.Topology, ...]) -> tuple[spec.Topology, ...]:
    """A test's ``@pytest.mark.netcheck(topologies=[...])`` overrides the run's topologies."""
    marker = node.get_closest_marker("netcheck")
    if marker is None or "topologies" not in marker.kwargs:
        return default
    wanted = marker.kwargs["topologies"]
    where = f"{getattr(node, 'nodeid', node)}: @pytest.mark.netcheck(topologies=...)"
    if isinstance(wanted, str) or not isinstance(wanted, (list, tuple)) or not all(isinstance(w, str) for w in wanted):
        pytest.fail(f"{where}: topologies = {wanted!r}: give a list of built-in names or spec files, e.g. topologies=[\"seed1\"]", pytrace=False)
    by_name = {t.name: t for t in default}
    out = []
    for w in wanted:
        try:
            out.append(by_name.get(w) or spec.resolve(w))
        except spec.SpecError as exc:
            # A collection error of this test alone, one line, no traceback.
            pytest.fail(f"{where}: {exc}", pytrace=False)
    return tuple(out)


FAMILY_FIXTURE = "netcheck_family"  # parametrized beside the topology, once per family it declares (4, 6)
TOPOLOGY_FIXTURE = "netcheck_topology"  # the fixture pytest_generate_tests parametrizes with the topologies in play


def item_topology(item: pytest.Item) -> spec.Topology | None:
    """The topology a collected test runs on (its ``netcheck_topology`` parameter), if any."""
    callspec = getattr(item, "callspec", None)
    topo = callspec.params.get(TOPOLOGY_FIXTURE) if callspec is not None else None
    return topo if isinstance(topo, spec.Topology) else None


MULTIHOST_FIXTURE = "multi_topology"  # the fixture suites/test_cross_host.py parametrizes with the multi-host topologies in play


def item_multihost(item: pytest.Item) -> multihost.MultiTopology | None:
    """The multi-host topology a collected cross-host test runs on, if any."""
    callspec = getattr(item, "callspec", None)
    topo = callspec.params.get(MULTIHOST_FIXTURE) if callspec is not None else None
    return topo if isinstance(topo, multihost.MultiTopology) else None
