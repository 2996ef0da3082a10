"""Crash safety: runs killed at any point leave nothing that ``netcheck clean`` does not remove.

Each test uses a private run directory (NETCHECK_RUN_DIR), so other runs on the machine and
their cleaners never see its records, and it sees none of theirs. After each kill it checks:
no run record, no namespace or mount of the run, no process of the run, no task or fd still
holding one of its namespaces, and the root namespace exactly as before.

Kill points are chosen by observable conditions, never by sleeping:
- ``crash_driver.py`` holds a lab run at an exact step (before a ledger record, with a probe
  in flight, before an undo) and the test kills it there;
- real ``pytest suites/`` runs are killed when their run record holds N entries, after the
  N-th passed test, or once the last test has reported (session teardown).

Cost: about 40 s. By hand, with more kills:
    NETCHECK_CRASH_KILLS=24 NETCHECK_CRASH_PYTEST_KILLS=9 .venv/bin/pytest tests/test_crash.py
(NETCHECK_CRASH_SEED=N replays a run; failures print the seed.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hoststate import PYTEST, PYTHON, REPO, Child, Leftovers, child_env, diff, read_records, run_clean, snapshot, throwaway_netns

from netcheck.waiting import wait_until

pytestmark = pytest.mark.root

KILLS = int(os.environ.get("NETCHECK_CRASH_KILLS", "3"))
PYTEST_KILLS = int(os.environ.get("NETCHECK_CRASH_PYTEST_KILLS", "3"))
SEED = int(os.environ.get("NETCHECK_CRASH_SEED", str(random.SystemRandom().randrange(1 << 30))))
DRIVER = str(REPO / "tests" / "crash_driver.py")
SUITE_ARGS = ["suites/", "-v", "-p", "no:cacheprovider", "--netcheck-report", "none"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    yield d
    # Whatever a failed test left: remove it by its records (never by name).
    run_clean(d, "--all")


@pytest.fixture
def root_unchanged():
    """Asserts the root namespace is the same after the test as before it."""
    before = snapshot(neighbours=False)
    yield
    after = snapshot(neighbours=False)
    assert after == before, "the root namespace changed:\n" + diff(before, after)


def session_members(sid: int) -> list[str]:
    """Processes still in a killed child's session (its own children, orphaned)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            out.append(f"process {stat.parent.name} of the killed run's session")
    return out


def assert_cleaned(run_dir: Path, left: Leftovers, sid: int, what: str) -> None:
    """``netcheck clean`` succeeds and leaves nothing of the killed run."""
    __tracebackhide__ = True
    proc = run_clean(run_dir)
    assert proc.returncode == 0, f"{what}: netcheck clean failed:\n{proc.stdout}{proc.stderr}"
    # Orphaned children of the killed run (e.g. an nft it was running) end on their own.
    wait_until(lambda: not session_members(sid), timeout=10, what="the killed run's orphaned processes to end", describe=lambda: str(session_members(sid)))
    remaining = left.remaining(run_dir)
    assert not remaining, f"{what}: after netcheck clean these are left:\n  " + "\n  ".join(remaining) + f"\nclean said:\n{proc.stdout}"


def driver(run_dir: Path, *args: str, netns: str | None = None) -> Child:
    argv = [PYTHON, DRIVER, *args]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    return Child(argv, env={"NETCHECK_RUN_DIR": str(run_dir)}, stdin=True)


def killed_at(run_dir: Path, topology: str, step: int) -> tuple[Child, Leftovers]:
    """A driver run held at ``step`` and killed there with SIGKILL; what it had made by then."""
    child = driver(run_dir, topology, "--hold-at", str(step))
    try:
        child.wait_line(rf"^HELD {step}$", timeout=60)
        left = Leftovers.of(run_dir)
        child.kill()
    finally:
        child.close()
    return child, left


def suites(run_dir: Path, *args: str) -> Child:
    return Child([*PYTEST, *SUITE_ARGS, *args], env={"NETCHECK_RUN_DIR": str(run_dir)})


# ----------------------------------------------------------------------------- steps of a run


_STEPS: dict[str, list[tuple[int, str, str]]] = {}


def steps_of(topology: str, run_dir: Path) -> list[tuple[int, str, str]]:
    """(step, phase, what) of a whole driver run, learnt once by running it to the end."""
    if topology not in _STEPS:
        child = driver(run_dir, topology)
        try:
            child.send("")  # never held: it runs to the end
            assert child.finish(60) == 0, child.output()
        finally:
            child.close()
        steps = []
        for line in child.lines:
            if line.startswith("STEP "):
                n, phase, what = line.split(" ", 3)[1:]
                steps.append((int(n), phase, what))
        assert {p for _, p, _ in steps} == {"build", "probe", "teardown"}, child.output()
        assert not list(run_dir.glob("*.jsonl")), "a run that ended normally left its record"
        _STEPS[topology] = steps
    return _STEPS[topology]


@pytest.mark.parametrize("case", range(KILLS))
def test_sigkill_at_a_random_step_then_clean(case, run_dir, root_unchanged):
    """SIGKILL a lab run held at a random step of its build, a probe, or its teardown."""
    rng = random.Random(SEED * 1000 + case)
    topology = rng.choice(["seed1", "seed2"])
    steps = steps_of(topology, run_dir)
    phase = ("build", "probe", "teardown")[case % 3]
    n, _, what = rng.choice([s for s in steps if s[1] == phase])
    where = f"seed {SEED} case {case}: {topology} killed at step {n} ({phase} {what})"
    child, left = killed_at(run_dir, topology, n)
    print(where)
    assert_cleaned(run_dir, left, child.pid, where)


def teardown_watch(run_dir: Path) -> Callable[[], bool]:
    """A condition: some lab is being torn down (a namespace seen before is gone, its record is not)."""
    seen: set[str] = set()

    def tearing_down() -> bool:
        for _, entries in read_records(run_dir):
            for name in (str(e["name"]) for e in entries if e["kind"] == "netns"):
                if os.path.exists(f"/run/netns/{name}"):
                    seen.add(name)
                elif name in seen:
                    return True
        return False

    return tearing_down


@pytest.mark.parametrize("case", range(PYTEST_KILLS))
def test_sigkill_pytest_suites_then_clean(case, run_dir, root_unchanged):
    """SIGKILL a real ``pytest suites/`` while it builds, probes, or tears down."""
    rng = random.Random(SEED * 1000 + 500 + case)
    phase = ("build", "probe", "teardown")[case % 3]
    child = suites(run_dir)
    try:
        if phase == "build":
            entries = rng.randint(1, 10)
            where = f"when its run record held {entries} entries"
            wait_until(lambda: any(len(e) >= entries for _, e in read_records(run_dir)) or child.proc.poll() is not None,
                       timeout=60, what=f"a run record with {entries} entries")
        elif phase == "probe":
            passed = rng.randint(1, 40)
            where = f"after {passed} passed tests"
            child.wait_line(r" PASSED", count=passed, timeout=120)
        else:
            where = "in a lab's teardown (some of its namespaces gone, its record not yet)"
            tearing_down = teardown_watch(run_dir)
            wait_until(lambda: tearing_down() or child.proc.poll() is not None, timeout=120, what="a lab's teardown to begin")
            if child.proc.poll() is not None:
                pytest.skip("the run ended before a teardown was seen in progress (the poll missed it)")
        left = Leftovers.of(run_dir)
        child.kill()
    finally:
        child.close()
    what = f"seed {SEED}: pytest suites/ killed {where}"
    print(what, f"({len(left.netns)} namespaces recorded)")
    assert_cleaned(run_dir, left, child.pid, what)


# ----------------------------------------------------------------------------- clean's promises


def test_clean_leaves_live_runs_and_foreign_objects_alone(run_dir, root_unchanged):
    """clean removes dead runs only; --dry-run removes nothing; --all takes live runs too, after a warning."""
    hold = next(n for n, phase, _ in steps_of("seed2", run_dir) if phase == "probe")
    # Looks like netcheck's (an "nc" tag, a netcheck comment), but no run record names it.
    with throwaway_netns(prefix="nc" + os.urandom(2).hex()) as foreign:
        ns = f"/run/netns/{foreign}"
        for argv in (["ip", "link", "add", "ncfake0", "type", "veth", "peer", "name", "ncfake1"],
                     ["iptables-legacy", "-w", "-A", "FORWARD", "-j", "ACCEPT", "-m", "comment", "--comment", "netcheck ncfake"],
                     ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
            subprocess.run(["nsenter", f"--net={ns}", *argv], check=True, capture_output=True, timeout=30)
        foreign_before = snapshot(ns)

        live = driver(run_dir, "seed2", "--hold-at", str(hold))
        dead = driver(run_dir, "seed1", "--hold-at", "6")
        try:
            live.wait_line(rf"^HELD {hold}$")
            dead.wait_line(r"^HELD 6$")
            live_left = Leftovers.of(run_dir, pid=live.pid)
            dead_left = Leftovers.of(run_dir, pid=dead.pid)
            dead.kill()
            assert live_left.netns and dead_left.netns

            def present(left: Leftovers) -> set[str]:
                return {n for n in left.netns if os.path.exists(f"/run/netns/{n}")} | {t for t in left.tags if (run_dir / f"{t}.jsonl").exists()}

            everything_live, everything_dead = present(live_left), present(dead_left)

            proc = run_clean(run_dir, "--dry-run")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            for n in dead_left.netns & everything_dead:
                assert f"remove netns {n}" in proc.stdout, proc.stdout
            assert not any(t in proc.stdout for t in live_left.tags), f"--dry-run listed the live run:\n{proc.stdout}"
            assert present(dead_left) == everything_dead and present(live_left) == everything_live, "--dry-run removed something"

            proc = run_clean(run_dir)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert not dead_left.remaining(run_dir), dead_left.remaining(run_dir)
            assert present(live_left) == everything_live, f"clean touched the live run:\n{proc.stdout}"
            assert snapshot(ns) == foreign_before, "clean touched a namespace that is not netcheck's:\n" + diff(foreign_before, snapshot(ns))

            proc = run_clean(run_dir, "--all", "--dry-run")
            assert proc.returncode == 0 and all(t in proc.stdout for t in live_left.tags), proc.stdout + proc.stderr
            assert "LIVE" in proc.stdout and present(live_left) == everything_live

            proc = run_clean(run_dir, "--all")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "warning" in proc.stderr and all(t in proc.stderr for t in live_left.tags), proc.stderr
            assert not present(live_left), f"--all left {present(live_left)}"
            # The run itself survives that: it goes on, and its teardown finds its objects gone.
            live.send("go")
            assert live.finish(60) == 0, live.output()[-3000:]
            assert "DONE" in live.lines
        finally:
            dead.close()
            live.close()
        assert not live_left.remaining(run_dir), live_left.remaining(run_dir)
        assert snapshot(ns) == foreign_before, diff(foreign_before, snapshot(ns))
        assert os.path.exists(ns)


def test_new_run_reaps_dead_runs_at_start(run_dir, root_unchanged):
    """A LabFactory (what every pytest run and xdist worker makes first) reaps dead runs' leftovers."""
    _child, left = killed_at(run_dir, "seed2", 9)
    assert left.remaining(run_dir), "the killed run left nothing: the test proves nothing"
    code = "from netcheck.factory import LabFactory; f = LabFactory(); print('reaped', f.reaped); f.close()"
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env={**child_env(), "NETCHECK_RUN_DIR": str(run_dir)})
    assert proc.stdout.strip() == "reaped 1", proc.stdout + proc.stderr
    assert not left.remaining(run_dir), left.remaining(run_dir)


def test_a_session_reaps_dead_runs_at_its_end(run_dir, root_unchanged):
    """Even a session that builds no lab (a replacement xdist worker may not) reaps at its end, on the controller."""
    _child, left = killed_at(run_dir, "seed1", 7)
    assert left.remaining(run_dir)
    proc = subprocess.run([*PYTEST, "suites/test_topology.py", "--collect-only", "-q", "-p", "no:cacheprovider", "--netcheck-report", "none"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False, env={**child_env(), "NETCHECK_RUN_DIR": str(run_dir)})
    assert "netcheck: removed the leftovers of 1 dead run(s)" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not left.remaining(run_dir), left.remaining(run_dir)


def test_killed_xdist_worker_is_reaped(run_dir, root_unchanged):
    """SIGKILL one worker of ``pytest -n 2 suites/`` mid-build: the same run reaps what it left
    (its replacement when it builds a lab, else the controller at the end)."""
    child = Child([*PYTEST, *SUITE_ARGS, "-n", "2", "--netcheck-topology", "seed1"],
                  env={"NETCHECK_RUN_DIR": str(run_dir)})
    try:
        def worker_record() -> int | None:
            for header, entries in read_records(run_dir):
                pid = header.get("pid")
                if isinstance(pid, int) and pid != child.pid and len(entries) >= 3:
                    return pid
            return None

        worker = wait_until(worker_record, timeout=60, what="an xdist worker's run record with 3 entries")
        left = Leftovers.of(run_dir, pid=worker)
        os.kill(worker, signal.SIGKILL)
        rc = child.finish(180)
    finally:
        child.close()
    out = child.output()
    assert "replacing crashed worker" in out, out[-3000:]
    assert rc == 1, f"exit {rc}; only the test the worker was running should fail:\n{out[-3000:]}"
    assert not left.remaining(run_dir), f"the killed worker's leftovers were not reaped: {left.remaining(run_dir)}"
    assert not list(run_dir.glob("*.jsonl")), list(run_dir.glob("*.jsonl"))


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "phase"), [(signal.SIGINT, "probe"), (signal.SIGTERM, "build")], ids=["SIGINT-probe", "SIGTERM-build"])
def test_sigint_and_sigterm_tear_down_normally(sig, phase, run_dir, root_unchanged):
    """Ctrl-C or SIGTERM to ``pytest suites/``: a normal teardown, nothing left, no clean needed."""
    child = suites(run_dir)
    try:
        if phase == "build":
            wait_until(lambda: any(len(e) >= 2 for _, e in read_records(run_dir)), timeout=60, what="a run record with 2 entries")
        else:
            child.wait_line(r" PASSED", count=5)
        left = Leftovers.of(run_dir)
        child.signal(sig)
        rc = child.finish(60)
    finally:
        child.close()
    assert rc == pytest.ExitCode.INTERRUPTED, f"exit {rc}:\n{child.output()[-3000:]}"
    assert "KeyboardInterrupt" in child.output()
    assert left.netns, "nothing was built when the signal came: the test proves nothing"
    assert not left.remaining(run_dir), f"left after {signal.Signals(sig).name}: {left.remaining(run_dir)}"


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_host_mode_run_killed_then_cleaned_from_its_namespace(backend, run_dir, root_unchanged):
    """A host-mode run changes the namespace it runs in; killed, clean restores it from inside it.

    legacy: the host has legacy tables, so netcheck uses python-iptables (the kernel keeps the
    tables it loads, empty: they are loaded beforehand); nft: the host has none, so netcheck
    writes its rules with iptables-nft.
    """
    with throwaway_netns() as name:
        ns = f"/run/netns/{name}"
        if backend == "legacy":
            for table in ("filter", "nat"):
                subprocess.run(["nsenter", f"--net={ns}", "iptables-legacy", "-w", "-t", table, "-S"], check=True, capture_output=True, timeout=30)
        before = snapshot(ns)
        child = driver(run_dir, "seed1", "--host-mode", "--hold-in", "probe", netns=ns)
        try:
            child.wait_line(r"^HELD ")
            left = Leftovers.of(run_dir)
            child.kill()
        finally:
            child.close()
        during = snapshot(ns)
        assert during != before, "the host-mode run changed nothing: the test proves nothing"
        # From another namespace, clean refuses to touch what the run changed in its own.
        proc = run_clean(run_dir)
        assert proc.returncode == 1 and "from inside that namespace" in proc.stderr, proc.stdout + proc.stderr
        assert list(run_dir.glob("*.jsonl")), "clean dropped the record of a run it could not undo"
        proc = run_clean(run_dir, netns=ns)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert snapshot(ns) == before, "host mode left changes:\n" + diff(before, snapshot(ns))
        assert not left.remaining(run_dir), left.remaining(run_dir)


def test_a_kept_lab_survives_new_runs_and_clean_removes_it(tmp_path) -> None:
    """--netcheck-keep: the next run's reaping leaves the kept lab up; netcheck clean removes it."""
    import os

    from netcheck import spec
    from netcheck.lab import Lab
    from netcheck.ledger import clean

    lab = Lab(spec.builtin("seed2-veth"), keep=True, run_dir=tmp_path).build()
    names = [ns.name for ns in lab.namespaces().values()]
    lab.teardown()  # kept: the record stays, marked
    assert all(os.path.exists(f"/run/netns/{n}") for n in names)
    reaped, errors = clean(include_kept=False, log=lambda _m: None, run_dir=tmp_path)  # what a new run does
    assert (reaped, errors) == (0, []) and all(os.path.exists(f"/run/netns/{n}") for n in names)
    removed, errors = clean(log=lambda _m: None, run_dir=tmp_path)  # netcheck clean
    assert (removed, errors) == (1, [])
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)
    assert not list(tmp_path.glob("*.jsonl"))


def test_an_interrupted_namespace_creation_ends_before_the_caller_cleans_up(tmp_path: Path) -> None:
    """The SIGTERM that lands while a namespace is being created (seen in CI: a build interrupted at
    its second namespace left it behind). The interrupt reaches the caller first; the creation goes
    on in its thread. The caller must not re-raise before that creation has ended, or the teardown
    that follows finds nothing to remove and the namespace appears after it."""
    import threading

    from netcheck.kernel import worker
    from netcheck.ledger import Ledger, NetnsEntry, Undoer, undo_all
    from netcheck.naming import new_tag

    ledger = Ledger(new_tag(), topology="(interrupted creation)", mode="sandbox", run_dir=tmp_path)
    name = ledger.record(NetnsEntry(f"{ledger.tag}-int")).name
    interrupted = threading.Event()
    real_enter = worker.NamespaceWorker._enter

    def enter_after_the_interrupt(self: worker.NamespaceWorker, create: bool) -> None:
        assert interrupted.wait(10), "the interrupt never came"
        real_enter(self, create)

    def interrupt(_sig: int, _frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    worker.NamespaceWorker._enter = enter_after_the_interrupt  # type: ignore[method-assign]
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            worker.NamespaceWorker(name, worker.netns_path(name), create=True)
        made = os.path.exists(worker.netns_path(name))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        worker.NamespaceWorker._enter = real_enter  # type: ignore[method-assign]
        undoer = Undoer()
        errors = undo_all(ledger.entries, undoer)
        undoer.close()
        ledger.close(remove=not errors)
    assert made, "the interrupt was re-raised while the namespace was still being made: a teardown then would have missed it"
    assert not os.path.exists(worker.netns_path(name)) and not errors, errors
