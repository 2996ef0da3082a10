"""The netcheck pytest plugin: options, markers, fixtures and hooks. The work lives elsewhere."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from netcheck import settings as settings_mod

if TYPE_CHECKING:
    from netcheck import spec
    from netcheck.evidence import ProbeResult
    from netcheck.factory import LabFactory
    from netcheck.lab import Lab
    from netcheck.lifecycle import EventRun, Phases
    from netcheck.multihost.nodehost import NodeHost
    from netcheck.probes import Prober
    from netcheck.report.collector import Collector
    from netcheck.report.hooks import Evidence, ReportHooks

SETTINGS: pytest.StashKey[settings_mod.Settings] = pytest.StashKey()
EVIDENCE: pytest.StashKey[list[Evidence]] = pytest.StashKey()  # typed values; plain data only on the report
REPORT_HOOKS: pytest.StashKey[ReportHooks] = pytest.StashKey()
COLLECTOR: pytest.StashKey[Collector] = pytest.StashKey()
FACTORY: pytest.StashKey[LabFactory] = pytest.StashKey()
REAPED_AT_END: pytest.StashKey[int] = pytest.StashKey()
PHASES: pytest.StashKey[Phases] = pytest.StashKey()  # netcheck.lifecycle.Phases, when --netcheck-event is given
EVENT_RUNS: pytest.StashKey[dict[str, list[EventRun]]] = pytest.StashKey()  # lab name -> its netcheck.lifecycle.EventRun values


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("netcheck", "container networking checks")
    g.addoption("--netcheck-topology", action="append", dest="netcheck_topology", metavar="FILE|NAME",
                help="topology to test: a built-in (seed1, seed2, seed2-veth) or a TOML spec file; repeatable (default: every built-in)")
    g.addoption("--netcheck-keep", action="store_true", dest="netcheck_keep",
                help="leave the labs up after the run for inspection, and print how to enter them")
    g.addoption("--netcheck-report", dest="netcheck_report", metavar="PATH|none",
                help="where to write the HTML report (default: reports/netcheck-<UTC time>.html; 'none' turns it off)")
    g.addoption("--netcheck-pcap", dest="netcheck_pcap", metavar="failed|all|none",
                help="which probes' captures to save as .pcap beside the report (default: failed)")
    g.addoption("--netcheck-host", action="store_true", dest="netcheck_host",
                help="use this network namespace as the container host (validates a real host; restores everything it touches)")
    g.addoption("--netcheck-scale-n", dest="netcheck_scale_n", type=int, metavar="N",
                help="containers in the scale suite (-m scale; default 100)")
    g.addoption("--netcheck-fault", action="append", dest="netcheck_fault", metavar="NAME",
                help="break every lab on purpose after building it (see `netcheck faults`), to see a failure and its diagnosis")
    g.addoption("--netcheck-event", action="append", dest="netcheck_event", metavar="NAME",
                help="run the checks, apply this lifecycle event to each lab (e.g. nft-flush, docker-restart; repeatable, in order), and run them again (docs/tools.md)")
    parser.addini("netcheck_topology", "topologies to test (names or files), one per line", type="linelist")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netcheck(topologies=[...]): run this test on these topologies only")
    config.addinivalue_line("markers", "netcheck_property(name): the property a suite test checks (isolation, veth, bridge, forwarding, masquerade, dnat, vip)")
    config.stash[SETTINGS] = settings_mod.resolve(config)
    if config.getoption("netcheck_event", None):
        from netcheck import lifecycle

        config.stash[PHASES] = lifecycle.configure(config)
        config.stash[EVENT_RUNS] = {}
    from netcheck.report.hooks import ReportHooks

    # Every process: what each test's report carries (evidence, lab facts, pytest-html extras).
    config.stash[REPORT_HOOKS] = ReportHooks(config, config.stash[SETTINGS])
    if not hasattr(config, "workerinput"):
        from netcheck.report.collector import Collector

        # The controller alone collects every worker's results and writes the report (only when a
        # netcheck check ran: a project that does not use netcheck gets no report).
        collector = Collector(config, config.stash[SETTINGS])
        config.stash[COLLECTOR] = collector
        config.pluginmanager.register(collector, "netcheck-collector")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``netcheck_lab`` (or ``netcheck_topology``) once per topology in play."""
    if settings_mod.TOPOLOGY_FIXTURE in metafunc.fixturenames:
        topologies = settings_mod.marker_topologies(metafunc.definition, metafunc.config.stash[SETTINGS].topologies)
        if settings_mod.FAMILY_FIXTURE not in metafunc.fixturenames:
            metafunc.parametrize(settings_mod.TOPOLOGY_FIXTURE, topologies, ids=[t.name for t in topologies], scope="session")
        else:
            # Once per address family the topology declares: an IPv4-only topology keeps its one id, a dual-stack one adds NAME-ipv6.
            pairs = [(t, family) for t in topologies for family in t.families]
            ids = [t.name if family == 4 else f"{t.name}-ipv6" for t, family in pairs]
            metafunc.parametrize([settings_mod.TOPOLOGY_FIXTURE, settings_mod.FAMILY_FIXTURE], pairs, ids=ids, scope="session")
    phases = metafunc.config.stash.get(PHASES, None)
    if phases is not None and "netcheck_phase" in metafunc.fixturenames:
        metafunc.parametrize("netcheck_phase", range(len(phases.ids)), ids=phases.ids, scope="session")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With lifecycle events, every check runs before the first event, then after each (a stable sort by phase)."""
    if PHASES in config.stash:
        from netcheck.lifecycle import phase_of

        items.sort(key=phase_of)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that selects netcheck checks it cannot run fails here, once, with the fix (never green by skipping)."""
    from netcheck import activation

    problem = activation.unrunnable(session.config, session.items, session.config.stash[SETTINGS])
    if problem:
        raise pytest.UsageError(problem)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def netcheck_settings(pytestconfig: pytest.Config) -> settings_mod.Settings:
    """The resolved netcheck settings of this run."""
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def netcheck_lab_factory(pytestconfig: pytest.Config, netcheck_settings: settings_mod.Settings) -> Iterator[LabFactory]:
    """Session-wide lab factory: ``shared(topology)`` builds once per session, ``fresh(topology)`` a private lab."""
    from netcheck import activation
    from netcheck.factory import LabFactory

    factory = LabFactory(keep=netcheck_settings.keep, host_mode=netcheck_settings.host_mode, faults=netcheck_settings.faults,
                         multihosts=netcheck_settings.multihosts)
    pytestconfig.stash[FACTORY] = factory
    with activation.sigterm_tears_down():
        yield factory
        factory.close()


@pytest.fixture(scope="session")
def netcheck_topology(request: pytest.FixtureRequest) -> spec.Topology:
    """The topology under test (parametrized over --netcheck-topology)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def netcheck_family(request: pytest.FixtureRequest) -> int:
    """The address family under test, 4 or 6: a test that asks for it runs once per family its topology declares."""
    return getattr(request, "param", 4)


@pytest.fixture(scope="session")
def netcheck_phase(request: pytest.FixtureRequest) -> int:
    """Which lifecycle phase the check runs in: 0 before any event, i after the first i (--netcheck-event)."""
    return getattr(request, "param", 0)


@pytest.fixture
def netcheck_lab(pytestconfig: pytest.Config, netcheck_lab_factory: LabFactory, netcheck_topology: spec.Topology, netcheck_phase: int) -> Lab | NodeHost:
    """The session's built lab for the topology under test (shared: do not break it), after this phase's events."""
    lab = netcheck_lab_factory.shared(netcheck_topology)
    if netcheck_phase:
        from netcheck import lifecycle

        lifecycle.reach(pytestconfig.stash[PHASES], netcheck_lab_factory.in_process(lab), netcheck_phase, pytestconfig.stash[EVENT_RUNS])
    return lab


@pytest.fixture
def netcheck_fresh_lab(netcheck_lab_factory: LabFactory) -> Iterator[Callable[[spec.Topology | str], Lab]]:
    """Build a private lab (torn down after the test), for tests that break things on purpose."""
    made: list[Lab] = []

    def make(t: spec.Topology | str) -> Lab:
        lab = netcheck_lab_factory.fresh(t)
        made.append(lab)
        return lab

    yield make
    for lab in reversed(made):
        netcheck_lab_factory.release(lab)


@pytest.fixture
def netcheck_evidence(request: pytest.FixtureRequest) -> Callable[[Evidence], None]:
    """Record a probe result (or a matrix) as this test's evidence (the report shows it)."""
    log = request.node.stash.setdefault(EVIDENCE, [])

    def record(result: Evidence) -> None:
        log.append(result)

    return record


@pytest.fixture
def netcheck_probe(netcheck_lab: Lab | NodeHost, netcheck_evidence: Callable[[ProbeResult], None]) -> Prober:
    """A prober for the lab under test; every probe it sends is recorded as evidence, failures diagnosed."""
    from netcheck.diagnosing import prober_for

    return prober_for(netcheck_lab, record=netcheck_evidence)


@pytest.fixture
def netcheck_prober_for(netcheck_evidence: Callable[[ProbeResult], None]) -> Callable[[Lab], Prober]:
    """Make a prober for any lab (e.g. one from ``netcheck_fresh_lab``), recording into this test's evidence, failures diagnosed."""
    from netcheck.diagnosing import DiagnosingProber

    return lambda lab: DiagnosingProber(lab, record=netcheck_evidence)


# ----------------------------------------------------------------------------- hooks


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The one wrapper: a netcheck test's report gets its evidence, lab facts and extras (``report.hooks``)."""
    report = yield
    from netcheck import activation

    if activation.is_netcheck_item(item):
        evidence: list[Evidence] = item.stash.get(EVIDENCE, [])
        item.config.stash[REPORT_HOOKS].on_report(item, report, evidence)
        if PHASES in item.config.stash and "netcheck_phase" in getattr(item, "fixturenames", ()) and hasattr(report, "netcheck"):
            from netcheck.lifecycle import phase_of

            phase = phase_of(item)
            report.netcheck["phase"] = phase
            prop = ("netcheck.phase", item.config.stash[PHASES].label(phase))
            report.user_properties.append(prop)
            if prop not in item.user_properties:
                item.user_properties.append(prop)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The controller reaps what dead runs left, such as the labs of an xdist worker that crashed
    (its replacement may never build a lab, so it may never reap them)."""
    config = session.config
    if hasattr(config, "workerinput"):
        return
    collector = config.stash.get(COLLECTOR, None)
    if collector is not None and session.exitstatus == pytest.ExitCode.OK and collector.counts().checked_nothing:
        # Never green when nothing was checked: the terminal summary says why.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    from netcheck import activation

    in_play = FACTORY in config.stash or any(activation.is_netcheck_item(i) for i in session.items)
    # An xdist controller collects no items: the netcheck results its workers sent say netcheck was in play.
    if not in_play and not (collector is not None and collector.tests):
        return  # an unrelated run is left alone
    from netcheck.lab import has_net_admin

    if not has_net_admin():
        return
    from netcheck.ledger import clean

    with contextlib.suppress(OSError):
        config.stash[REAPED_AT_END], _errors = clean(include_kept=False, log=lambda _m: None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    factory = config.stash.get(FACTORY, None)
    if factory is not None:
        if factory.reaped:
            terminalreporter.write_line(f"netcheck: removed the leftovers of {factory.reaped} dead run(s) before starting")
        for hint in factory.kept:
            terminalreporter.write_line(hint)
    if PHASES in config.stash:
        from netcheck import lifecycle

        for line in lifecycle.terminal_lines(config.stash[PHASES], terminalreporter.stats, config.stash[EVENT_RUNS]):
            terminalreporter.write_line(line)
    if config.stash.get(REAPED_AT_END, 0):
        terminalreporter.write_line(f"netcheck: removed the leftovers of {config.stash[REAPED_AT_END]} dead run(s) (e.g. a crashed xdist worker's)")


def pytest_report_header(config: pytest.Config) -> str | None:
    """Only for runs that ask for netcheck: an unrelated project's header stays its own."""
    from netcheck import activation

    if not activation.asked_for(config):
        return None
    s = config.stash[SETTINGS]
    mode = "host" if s.host_mode else "sandbox"
    return f"netcheck: topologies {', '.join(t.name for t in s.topologies)}; mode {mode}"

