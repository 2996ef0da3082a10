"""A build that fails half-way raises a clear error and leaves no kernel object behind.

Three ways to fail: a spec valid on paper that the kernel refuses; an error (or Ctrl-C)
injected at a build step (every ledger record, every namespace made, every job handed to a
namespace's thread: netlink, sysctls, rules, sockets); and fuzzed specs (from test_spec_fuzz) that load
and are then built. After each: no namespace of the lab, no run record, no thread, socket or
fd of it, and nothing holding one of its namespaces alive.

Cost: about 15 s. By hand, every step of both seeds and more fuzzed specs:
    NETCHECK_INJECT_ALL=1 NETCHECK_BUILD_FUZZ=100 .venv/bin/pytest tests/test_build_failure.py
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hoststate import namespace_holders
from hypothesis import HealthCheck, assume, event, given, settings
from test_spec_fuzz import mutated_seed

from netcheck import spec
from netcheck.kernel.netns import KernelError, Netns
from netcheck.kernel.worker import NamespaceError, NamespaceWorker
from netcheck.lab import Lab, LabError
from netcheck.ledger import Ledger
from netcheck.waiting import WaitTimeout, wait_until

pytestmark = pytest.mark.root

INJECT_ALL = bool(os.environ.get("NETCHECK_INJECT_ALL"))
INJECT_SAMPLE = 5  # steps per seed in CI, besides the first and the last
FUZZ_BUILDS = int(os.environ.get("NETCHECK_BUILD_FUZZ", "8"))
CLEAR_ERRORS = (LabError, KernelError, NamespaceError, WaitTimeout, OSError)

# Every call by which a build reaches the kernel or the ledger: each ledger record, each
# namespace made, and each job handed to a namespace's thread (netlink, sysctls, rules,
# sockets: the kernel layer does everything in those threads).
STEPS: list[tuple[type, str]] = [(Ledger, "record"), (Netns, "create"), (NamespaceWorker, "submit")]


class Injected(RuntimeError):
    """The error injected into a build step."""


class Injector:
    """Counts build steps and raises at the ``fail_at``-th (0: never); records the namespaces made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int = 0, exc: Callable[[str], BaseException] = Injected) -> None:
        self.fail_at, self.exc, self.count = fail_at, exc, 0
        self.active = True
        self.calls: list[str] = []
        self.inodes: set[int] = set()
        self._lock = threading.Lock()
        for owner, name in STEPS:
            self._wrap(monkeypatch, owner, name)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        original = getattr(owner, name)
        static = isinstance(inspect.getattr_static(owner, name), classmethod)

        def step(*args: Any, **kw: Any) -> Any:
            if not self.active:
                return original(*args, **kw)
            with self._lock:  # namespaces may be made from several threads
                self.count += 1
                n = self.count
                self.calls.append(f"{owner.__name__}.{name}")
            if n == self.fail_at:
                raise self.exc(f"injected failure at build step {n} ({owner.__name__}.{name})")
            result = original(*args, **kw)
            if name == "create":
                self.inodes.add(os.stat(result.path).st_ino)
            return result

        monkeypatch.setattr(owner, name, staticmethod(step) if static else step)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path


def process_state() -> tuple[set[str], int]:
    """Names of the live netns worker threads, and how many sockets this process holds."""
    threads = {t.name for t in threading.enumerate() if t.name.startswith(("netns:", "netcheck-"))}
    sockets = sum(1 for fd in os.listdir("/proc/self/fd") if _readlink(f"/proc/self/fd/{fd}").startswith("socket:"))
    return threads, sockets


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def leftovers(lab: Lab, run_dir: Path, inodes: set[int], before: tuple[set[str], int]) -> list[str]:
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(lab.tag + "-")]
    left += [f"run record {p.name}" for p in run_dir.glob("*.jsonl")]
    left += [f"{who} holds one of its namespaces" for who, ino in namespace_holders(pid=os.getpid()) if ino in inodes]
    threads, sockets = process_state()
    left += [f"thread {t}" for t in sorted(threads - before[0])]
    if sockets > before[1]:
        left.append(f"{sockets - before[1]} socket(s) still open")
    return left


def assert_nothing_left(lab: Lab, run_dir: Path, inodes: set[int], before: tuple[set[str], int]) -> None:
    __tracebackhide__ = True
    # A joined thread's task lingers for a moment in /proc while it exits.
    try:
        wait_until(lambda: not leftovers(lab, run_dir, inodes, before), timeout=5, what=f"lab {lab.tag} to be gone")
    except WaitTimeout:
        pytest.fail(f"lab {lab.tag} left: {leftovers(lab, run_dir, inodes, before)}")


def build_failing_at(topology: spec.Topology, run_dir: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int,
                     exc: Callable[[str], BaseException] = Injected) -> tuple[Lab, BaseException | None, Injector]:
    before = process_state()
    with monkeypatch.context() as m:
        injector = Injector(m, fail_at, exc)
        lab = Lab(topology, run_dir=run_dir)
        raised: BaseException | None = None
        try:
            lab.build()
        except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt is one of the injected errors
            raised = e
        else:
            injector.active = False  # the build's steps only
            lab.teardown()
    assert_nothing_left(lab, run_dir, injector.inodes, before)
    return lab, raised, injector


_COUNTS: dict[str, int] = {}


def step_count(name: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    if name not in _COUNTS:
        _, raised, injector = build_failing_at(spec.builtin(name), run_dir, monkeypatch, 0)
        assert raised is None, raised
        _COUNTS[name] = injector.count
    return _COUNTS[name]


def chosen_steps(total: int, seed: int) -> list[int]:
    if INJECT_ALL:
        return list(range(1, total + 1))
    rng = random.Random(seed)
    return sorted({1, total * 3 // 4, *rng.sample(range(2, total), INJECT_SAMPLE)})


@pytest.mark.parametrize("seed", ["seed1", "seed2"])
def test_error_injected_at_build_steps(seed, run_dir, monkeypatch):
    """An error at any build step: that error reaches the caller, and nothing is left."""
    total = step_count(seed, run_dir, monkeypatch)
    assert total > 20, f"only {total} build steps seen: the injector misses some"
    for n in chosen_steps(total, random.SystemRandom().randrange(1 << 30)):
        lab, raised, injector = build_failing_at(spec.builtin(seed), run_dir, monkeypatch, n)
        if injector.count < n:  # waits poll the kernel a varying number of times
            assert raised is None, raised
            continue
        # The injected error itself, or the kernel layer's error naming the object and carrying it.
        clear = isinstance(raised, Injected) or (isinstance(raised, CLEAR_ERRORS) and f"injected failure at build step {n}" in str(raised))
        assert clear, f"step {n} ({injector.calls[n - 1]}): expected the injected error, got {raised!r}"
        assert not lab.built


def test_ctrl_c_during_build_leaves_nothing(run_dir, monkeypatch):
    """KeyboardInterrupt (Ctrl-C, or SIGTERM in pytest) at build steps tears down and re-raises."""
    total = step_count("seed1", run_dir, monkeypatch)
    for n in (2, total // 2, total * 3 // 4):
        _, raised, injector = build_failing_at(spec.builtin("seed1"), run_dir, monkeypatch, n, KeyboardInterrupt)
        assert isinstance(raised, KeyboardInterrupt), f"step {n} ({injector.calls[n - 1]}): got {raised!r}"


def test_ctrl_c_while_a_namespace_thread_enters_leaves_no_thread(monkeypatch):
    """Ctrl-C while a namespace's thread is being set up: the thread stops, it does not stay parked
    in the namespace (which would keep it, and its links, alive after its removal)."""
    import signal

    from netcheck.kernel.worker import netns_path, remove_netns

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's KeyboardInterrupt in this process")
    name = f"ntest-{os.urandom(3).hex()}"
    enter = NamespaceWorker._enter

    def enter_then_interrupt(self: NamespaceWorker, create: bool) -> None:
        enter(self, create)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        # Go on once the creator has reacted (it asks the thread to stop), or after a while.
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: not self._jobs.empty(), timeout=2, what="the creator to react to Ctrl-C")

    monkeypatch.setattr(NamespaceWorker, "_enter", enter_then_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            NamespaceWorker("interrupted", netns_path(name), create=True)
        ino = os.stat(netns_path(name)).st_ino
        try:
            wait_until(lambda: not [h for h in namespace_holders(pid=os.getpid()) if h[1] == ino], timeout=5,
                       what="the interrupted thread to leave the namespace")
        except WaitTimeout:
            pytest.fail("the thread of an interrupted namespace creation stays parked in the namespace")
    finally:
        remove_netns(name)


class NotAnOSError(Exception):
    """An error of no particular kind, as libraries raise (python-iptables' IPTCError)."""


def test_error_during_teardown_is_reported_and_clean_finishes_the_job(run_dir, monkeypatch):
    """An error while undoing one entry: the others are still undone, the error names what is
    left, the record stays, and clean (as after a crash) removes the rest."""
    from netcheck.ledger import Undoer, clean

    before = process_state()
    lab = Lab(spec.builtin("seed2"), run_dir=run_dir).build()
    undo = Undoer.undo
    failed: list[str] = []

    def undo_failing_once(self: Undoer, e: dict[str, Any], owned: set[str]) -> None:
        if not failed and e["kind"] == "rule" and e["rule"]["target"] == "DNAT":
            failed.append(e["rule"]["chain"])
            raise NotAnOSError("injected failure while undoing a rule")  # as python-iptables' IPTCError
        undo(self, e, owned)

    with monkeypatch.context() as m:
        m.setattr(Undoer, "undo", undo_failing_once)
        with pytest.raises(LabError) as info:
            lab.teardown()
    assert failed and "injected failure while undoing a rule" in str(info.value) and "netcheck clean" in str(info.value)
    assert list(run_dir.glob("*.jsonl")), "the record went, so clean could not finish the job"
    cleaned, errors = clean(run_dir=run_dir, log=lambda _m: None)
    assert (cleaned, errors) == (1, [])
    assert_nothing_left(lab, run_dir, set(), before)


SEED1 = (Path(__file__).resolve().parents[1] / "netcheck" / "topologies" / "seed1.toml").read_text()
KERNEL_REFUSES = {
    # (change to seed1, phrase the error must contain)
    "unknown sysctl": (('"net.ipv4.ip_forward" = 1', '"net.ipv4.ip_forward" = 1\n"net.ipv4.no_such_knob" = 1'),
                       "sysctl net.ipv4.no_such_knob does not exist"),
    "service on netcheck's echo port": (('services = [{ kind = "http", port = 5000 }]', 'services = [{ kind = "http", port = 5000 }, { kind = "http", port = 7 }]'),
                                        "netns0: cannot listen for tcp-echo on 0.0.0.0:7/tcp"),
}


@pytest.mark.parametrize("case", sorted(KERNEL_REFUSES))
def test_spec_valid_on_paper_that_the_kernel_refuses(case, run_dir):
    (old, new), phrase = KERNEL_REFUSES[case]
    assert old in SEED1
    topology = spec.loads(SEED1.replace(old, new), f"<{case}>")  # valid on paper
    before = process_state()
    lab = Lab(topology, run_dir=run_dir)
    with pytest.raises(CLEAR_ERRORS) as info:
        lab.build()
    assert phrase in str(info.value), str(info.value)
    assert_nothing_left(lab, run_dir, set(), before)


# ----------------------------------------------------------------------------- fuzzed specs, built


@pytest.fixture(scope="module")
def fuzz_run_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="netcheck-fuzz-") as d:
        yield Path(d)


@settings(max_examples=FUZZ_BUILDS, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                          HealthCheck.function_scoped_fixture])
@given(text=mutated_seed())
def test_fuzzed_spec_that_loads_builds_or_fails_clearly(text, fuzz_run_dir):
    """Every fuzzed spec that loads builds, or fails with a clear error; either way nothing is left."""
    try:
        topology = spec.loads(text, "<fuzz>")
    except spec.SpecError:
        assume(False)
        return
    assume(topology.setup.mode == "build")
    before = process_state()
    lab = Lab(topology, run_dir=fuzz_run_dir)
    try:
        lab.build()
    except CLEAR_ERRORS as exc:
        event(f"refused by the kernel: {type(exc).__name__}")
        assert lab.tag in str(exc) or any(c.name in str(exc) for c in topology.containers) or "netns" in str(exc), f"unclear error: {exc!r}"
    else:
        event("built")
        lab.teardown()
    assert_nothing_left(lab, fuzz_run_dir, set(), before)
