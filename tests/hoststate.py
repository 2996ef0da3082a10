"""Snapshots of a network namespace's state, and helpers for tests that attack netcheck itself.

Used by test_crash.py, test_notouch.py and test_parallel_runs.py. Every observation is made
from outside the run under test: by ``nsenter --net=PATH`` into a throwaway namespace, or
in this process's own namespace (read only).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netcheck.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Through this interpreter, so that children import the same netcheck as the tests.
PYTEST = [PYTHON, "-m", "pytest"]
NETCHECK = [PYTHON, "-m", "netcheck.cli"]
NETNS_DIR = Path("/run/netns")

# Lines that differ between two runs of a save command without any change of state.
_COMMENT = re.compile(r"^#.*$", re.M)
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NFT_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")
_TIMERS = re.compile(r"\b(\w+_timer)\s+[\d.]+")  # a bridge's running timers in ip -d link
_LIFETIMES = re.compile(r"\s*(valid_lft|preferred_lft) \S+")


def _run(argv: list[str], netns: str | None) -> str:
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return f"rc={proc.returncode}\n{proc.stdout}"


def snapshot(netns: str | None = None, *, neighbours: bool = True) -> dict[str, str]:
    """The state of a network namespace (a path such as /run/netns/X; None: this one).

    Counters, comments with timestamps, running timers and address lifetimes are left out:
    they change without anyone changing the namespace. ``neighbours=False`` leaves out the ARP table
    (the root namespace's changes with the machine's own traffic).
    """
    snap = {
        "links": _TIMERS.sub(r"\1 *", _run(["ip", "-d", "link", "show"], netns)),
        "addresses": _TIMERS.sub(r"\1 *", _LIFETIMES.sub("", _run(["ip", "-d", "addr", "show"], netns))),
        "routes": _run(["ip", "route", "show", "table", "all"], netns),
        "rules": _run(["ip", "rule", "show"], netns),
        "sysctls": _run(["sysctl", "-a", "--pattern", r"^net\.(ipv4|bridge)\."], netns),
        "iptables-legacy-save": _COUNTERS.sub("", _COMMENT.sub("", _run(["iptables-legacy-save"], netns))),
        "iptables-nft-save": _COUNTERS.sub("", _COMMENT.sub("", _run(["iptables-nft-save"], netns))),
        "nft list ruleset": _NFT_COUNTERS.sub("counter", _run(["nft", "list", "ruleset"], netns)),
    }
    if neighbours:
        snap["neighbours"] = _run(["ip", "neigh", "show"], netns)
    return snap


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    """A readable difference of two snapshots ('' if identical)."""
    import difflib

    out = []
    for key in before:
        if before[key] != after.get(key):
            lines = difflib.unified_diff(before[key].splitlines(), after.get(key, "").splitlines(), "before", "after", lineterm="", n=1)
            out.append(f"--- {key} changed:\n" + "\n".join(lines))
    return "\n".join(out)


@contextlib.contextmanager
def throwaway_netns(prefix: str = "ntest") -> Iterator[str]:
    """A namespace of our own (not netcheck's), removed afterwards by its exact name."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


# ----------------------------------------------------------------------------- run records


def read_records(run_dir: Path) -> list[tuple[dict[str, object], list[dict[str, object]]]]:
    """(header, entries) of every run record in ``run_dir`` (read without locking)."""
    out = []
    for path in sorted(run_dir.glob("*.jsonl")):
        header: dict[str, object] = {}
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    e = json.loads(line)
                    if e.get("kind") == "run":
                        header = e
                    else:
                        entries.append(e)
        out.append((header, entries))
    return out


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def ticks_now() -> int:
    """Now, in the clock ticks since boot that /proc/PID/stat's start times use."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _starttime(stat: Path) -> int:
    return int(stat.read_text().rsplit(")", 1)[1].split()[19])


@dataclass
class Leftovers:
    """What a killed run left: its run records, namespaces (and their inodes), processes."""

    tags: set[str] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    inodes: set[int] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)  # files and folders it wrote (/etc/netns/NAME/resolv.conf)
    taken_at: int = field(default_factory=ticks_now)  # before the kill: later tasks are not the run's

    @classmethod
    def of(cls, run_dir: Path, pid: int | None = None) -> Leftovers:
        """What the records in ``run_dir`` (of process ``pid`` only, if given) name now."""
        left = cls()
        for header, entries in read_records(run_dir):
            if pid is not None and header.get("pid") != pid:
                continue
            left.tags.add(str(header.get("tag")))
            for e in entries:
                if e["kind"] == "netns":
                    left.netns.add(str(e["name"]))
                    ino = netns_inode(str(e["name"]))
                    if ino is not None:
                        left.inodes.add(ino)
                elif e["kind"] == "process":
                    left.pids.add(int(str(e["pid"])))
                elif e["kind"] == "file" or (e["kind"] == "empty-dir" and not e.get("shared")):
                    left.paths.add(str(e["path"]))
        return left

    def remaining(self, run_dir: Path) -> list[str]:
        """Everything of these runs still on the machine (empty when clean did its job)."""
        found = [f"run record {tag}.jsonl" for tag in sorted(self.tags) if (run_dir / f"{tag}.jsonl").exists()]
        found += [f"netns {n}" for n in sorted(self.netns) if os.path.lexists(NETNS_DIR / n)]
        mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
        found += [f"mount {NETNS_DIR / n}" for n in sorted(self.netns) if str(NETNS_DIR / n) in mounts]
        found += [f"process {pid}" for pid in sorted(self.pids) if Path(f"/proc/{pid}").exists()]
        found += [f"path {p}" for p in sorted(self.paths) if os.path.lexists(p)]
        found += [f"{what} holds namespace inode {ino}" for what, ino in namespace_holders(self.taken_at) if ino in self.inodes]
        return found


def namespace_holders(started_before: int | None = None, pid: int | None = None) -> Iterator[tuple[str, int]]:
    """(who, net namespace inode) for every task and every open namespace fd on the machine.

    Namespace inode numbers are reused as soon as a namespace is freed, so a task started after
    ``started_before`` (clock ticks) is left out: it cannot hold a namespace of a run that
    was killed before it. ``pid`` limits the search to one process.
    """
    procs = [Path(f"/proc/{pid}")] if pid is not None else [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    for proc in procs:
        with contextlib.suppress(OSError):
            if started_before is not None and _starttime(proc / "stat") > started_before:
                continue
            for task in (proc / "task").iterdir():
                with contextlib.suppress(OSError):
                    if started_before is not None and _starttime(task / "stat") > started_before:
                        continue
                    comm = (task / "comm").read_text().strip()
                    yield f"task {proc.name}/{task.name} ({comm})", os.stat(task / "ns" / "net").st_ino
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("net:["):
                        yield f"fd {fd}", int(target[5:-1])


# ----------------------------------------------------------------------------- child processes


def child_env() -> dict[str, str]:
    """This process's environment without what would make a child pytest think it is our worker."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST") and k not in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}


def _as_from_a_shell() -> None:
    """In the child, before exec: SIGINT and SIGTERM as a shell leaves them for a command it starts (default
    action, not blocked), whatever this test process inherited (a test runner's worker may block or ignore them)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


class Child:
    """A child process whose output lines a test waits on (bounded), then signals or kills."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, stdin: bool = False, cwd: Path = REPO) -> None:
        full_env = {**child_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_from_a_shell)
        self.lines: list[str] = []
        self._buf = b""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> bool:
        """Read what is available; False at end of output."""
        assert self.proc.stdout is not None
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        self.lines += [d.decode(errors="replace") for d in done]
        return True

    def wait_line(self, pattern: str, *, count: int = 1, timeout: float = 60.0) -> str:
        """Wait for the ``count``-th output line matching ``pattern`` (a regex); return it."""
        rx = re.compile(pattern)

        def seen() -> str | None:
            alive = self._pump()
            hits = [line for line in self.lines if rx.search(line)]
            if len(hits) >= count:
                return hits[count - 1]
            if not alive:
                raise AssertionError(f"{' '.join(self.argv[:5])} ended before {count}x {pattern!r}:\n{self.output()[-3000:]}")
            return None

        return wait_until(seen, timeout=timeout, what=f"{count}x {pattern!r} in the output", describe=lambda: self.output()[-2000:])

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the end (bounded), collecting output; returns the exit status."""
        deadline = time.monotonic() + timeout
        wait_until(lambda: not self._pump(), timeout=timeout, what=f"{' '.join(self.argv[:5])} to end", describe=lambda: self.output()[-2000:])
        return self.proc.wait(max(1.0, deadline - time.monotonic()))

    def output(self) -> str:
        return "\n".join(self.lines) + ("\n" + self._buf.decode(errors="replace") if self._buf else "")

    def close(self) -> None:
        """Make sure the child is gone (a failed test must not leave it running)."""
        if self.proc.poll() is None:
            self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def run_clean(run_dir: Path, *args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """``netcheck clean`` on a private run directory (optionally from inside a namespace)."""
    argv = [*NETCHECK, "clean", *args]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**child_env(), "NETCHECK_RUN_DIR": str(run_dir)})
