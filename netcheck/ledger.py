"""The ledger: every object a lab creates, recorded before it is created, undone in reverse.

Each lab writes its ledger as JSON lines to a run record, /run/netcheck/TAG.jsonl, and holds
an exclusive flock on it for its whole life. A record whose lock can be taken belongs to a
dead run (the kernel drops the lock with the process, whatever reuses its PID), so
``netcheck clean`` reaps exactly those, by the objects they name, never by a name pattern.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import NamespaceError, netns_path, remove_netns
from netcheck.kernel.xtables import XRule, delete_rules, nft_remove_if_empty, set_policy

Entry = dict[str, Any]


def default_run_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where run records live: $NETCHECK_RUN_DIR, else /run/netcheck (read when asked, not at import)."""
    return Path(environ.get("NETCHECK_RUN_DIR") or "/run/netcheck")


def default_work_root(environ: Mapping[str, str] = os.environ) -> Path:
    """Where a lab's scratch folders go (another tool's state, root filesystems): $NETCHECK_WORK_DIR, else /tmp."""
    return Path(environ.get("NETCHECK_WORK_DIR") or "/tmp")


def process_starttime(pid: int) -> int | None:
    """The start time of a process (field 22 of /proc/PID/stat), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Ledger:
    """The append-only record of one lab's objects, persisted as it grows."""

    def __init__(self, tag: str, *, topology: str, mode: str, run_dir: Path, source: str | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.path = run_dir / f"{tag}.jsonl"
        self.entries: list[Entry] = []
        pid = os.getpid()
        self.netns_inode = os.stat("/proc/self/ns/net").st_ino
        header = {
            "kind": "run", "tag": tag, "pid": pid, "starttime": process_starttime(pid), "started": time.time(),
            "topology": topology, "mode": mode, "netns_inode": self.netns_inode, "source": source,
        }
        fd = _create_locked(self.path, (json.dumps(header, sort_keys=True) + "\n").encode())
        self._file = os.fdopen(fd, "a", buffering=1)

    def _write(self, entry: Entry) -> None:
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()

    def record(self, kind: str, **data: Any) -> Entry:
        """Record an object before creating it (undo tolerates 'already gone')."""
        entry = {"kind": kind, **data}
        self.entries.append(entry)
        self._write(entry)
        return entry

    def keep(self) -> None:
        """Mark the lab as kept for inspection: new runs leave it alone; ``netcheck clean`` removes it."""
        self._write({"kind": "kept", "at": time.time()})

    def close(self, *, remove: bool) -> None:
        """Release the lock; remove the record once everything it names is gone."""
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._file.close()


def _create_locked(path: Path, header: bytes) -> int:
    """Create a run record that is locked and holds its header the moment it is visible.

    The record is born unnamed (O_TMPFILE) and linked into place only then, so a concurrent
    ``clean`` never sees an empty, unlocked record and takes it for a dead run's. Linking
    fails with FileExistsError if the tag is taken.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path.parent, flags | os.O_TMPFILE, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
        fd = -1  # no O_TMPFILE on this filesystem: create in place (a tiny window remains)
    if fd < 0:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, header)
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, header)
        # With a dir fd, os.link calls linkat(AT_SYMLINK_FOLLOW), which links the open file.
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Undoer:
    """Undoes ledger entries, opening a namespace handle where an entry needs one."""

    handles: dict[str | None, Netns] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _msg: None
    dry_run: bool = False
    host_inode: int | None = None  # the namespace a host-mode run changed
    _opened: list[Netns] = field(default_factory=list)

    def ns(self, name: str | None) -> Netns | None:
        if name in self.handles:
            return self.handles[name]
        if name is not None and not os.path.exists(netns_path(name)):
            return None
        if name is None and self.host_inode is not None and os.stat("/proc/self/ns/net").st_ino != self.host_inode:
            raise NamespaceError(errno.EXDEV, "this run changed another network namespace (host mode); run netcheck clean from inside that namespace")
        handle = Netns.current() if name is None else Netns.attach(netns_path(name), name)
        self.handles[name] = handle
        self._opened.append(handle)
        return handle

    def forget(self, name: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        for h in self._opened:
            with contextlib.suppress(Exception):
                h.close()
        self._opened.clear()

    def undo(self, e: Entry, owned: set[str]) -> None:
        kind = e["kind"]
        where = e.get("netns")
        if where is not None and where in owned and kind != "netns":
            return  # removed with its namespace
        self.log(f"remove {describe(e)}")
        if self.dry_run:
            return
        if kind == "process":
            kill_process(int(e["pid"]), e.get("starttime"))
        elif kind == "netns":
            self.forget(e["name"])
            remove_netns(e["name"])
        elif kind == "dir":
            shutil.rmtree(e["path"], ignore_errors=True)
        else:
            ns = self.ns(where)
            if ns is None:
                return
            if kind == "link":
                ns.delete_link(e["name"])
            elif kind == "route":
                from ipaddress import IPv4Network

                ns.delete_route(IPv4Network(e["dst"]))
            elif kind == "rule":
                delete_rules(ns, [XRule(**e["rule"])], backend=e.get("backend", "legacy"))
            elif kind == "chain":
                delete_rules(ns, [], [(e["table"], e["name"])], backend=e.get("backend", "legacy"))
            elif kind == "nft-chain":
                nft_remove_if_empty(ns, e["table"], e["name"])
            elif kind == "nft-table":
                nft_remove_if_empty(ns, e["table"])
            elif kind == "policy":
                set_policy(ns, e["table"], e["chain"], e["old"])
            elif kind == "sysctl" and e.get("old") is not None:
                ns.set_sysctl(e["key"], e["old"])


def describe(e: Entry) -> str:
    kind = e["kind"]
    where = f" in netns {e['netns']}" if e.get("netns") else ""
    if kind == "netns":
        return f"netns {e['name']}"
    if kind == "process":
        return f"process {e['pid']} ({' '.join(e.get('argv', []))[:60]})"
    if kind == "rule":
        return f"rule {XRule(**e['rule']).render()}{where}"
    if kind == "sysctl":
        return f"sysctl {e['key']} (restore {e.get('old')}){where}"
    if kind == "policy":
        return f"policy {e['table']} {e['chain']} (restore {e['old']}){where}"
    if kind in ("link", "chain"):
        return f"{kind} {e['name']}{where}"
    if kind == "nft-chain":
        return f"nf_tables base chain ip {e['table']} {e['name']}{where} (if empty)"
    if kind == "nft-table":
        return f"nf_tables table ip {e['table']}{where} (if empty)"
    if kind == "route":
        return f"route {e['dst']}{where}"
    if kind == "dir":
        return f"directory {e['path']}"
    return f"{kind}{where}"


def kill_process(pid: int, starttime: int | None, timeout: float = 10.0) -> bool:
    """End a process we started, by PID, only if it is still the same process."""
    if process_starttime(pid) is None or (starttime is not None and process_starttime(pid) != starttime):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    from netcheck.waiting import WaitTimeout, wait_until

    try:
        wait_until(lambda: process_starttime(pid) != starttime or _reap(pid), timeout=timeout, what=f"process {pid} to exit after SIGTERM")
    except WaitTimeout:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def _reap(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False


def undo_all(entries: list[Entry], undoer: Undoer) -> list[str]:
    """Undo entries in reverse order; returns the errors (each entry is tried)."""
    owned = {e["name"] for e in entries if e["kind"] == "netns"}
    errors = []
    for e in reversed(entries):
        if e["kind"] == "run":
            continue
        try:
            undoer.undo(e, owned)
        except Exception as exc:  # noqa: BLE001 - every entry is tried; errors are reported, not swallowed
            if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENODEV):
                continue
            errors.append(f"{describe(e)}: {exc}")
    return errors


# ----------------------------------------------------------------------------- run records


@dataclass(frozen=True)
class RunRecord:
    path: Path
    header: Entry
    entries: list[Entry]
    alive: bool

    @property
    def tag(self) -> str:
        return str(self.header.get("tag", self.path.stem))


def read_record(path: Path) -> tuple[Entry, list[Entry]]:
    header: Entry = {}
    entries = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if e.get("kind") == "run":
            header = e
        else:
            entries.append(e)
    return header, entries


@contextlib.contextmanager
def _probe_lock(path: Path) -> Iterator[bool]:
    """True (and held) if the record's owner is dead; False if a live run holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def list_records(run_dir: Path | None = None) -> list[RunRecord]:
    """Every run record in ``run_dir`` (default: ``default_run_dir()``), each with whether its run is alive."""
    directory = run_dir or default_run_dir()
    out: list[RunRecord] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.jsonl")):
        with _probe_lock(path) as dead:
            header, entries = read_record(path)
            out.append(RunRecord(path, header, entries, alive=not dead))
    return out


def clean(
    *, include_live: bool = False, include_kept: bool = True, dry_run: bool = False, log: Callable[[str], None] = print, run_dir: Path | None = None,
) -> tuple[int, list[str]]:
    """Remove the objects of dead runs (and of live ones with ``include_live``).

    Labs kept with --netcheck-keep are removed too, unless ``include_kept`` is False (as when a
    new run reaps the leftovers of crashed ones at start).

    Returns (runs cleaned, errors). Each run is cleaned while its lock is held, so two
    cleaners never undo the same run at once.
    """
    directory = run_dir or default_run_dir()
    cleaned = 0
    errors: list[str] = []
    if not directory.is_dir():
        return 0, []
    for path in sorted(directory.glob("*.jsonl")):
        with _probe_lock(path) as dead:
            if not dead and not include_live:
                continue
            header, entries = read_record(path)
            kept = any(e["kind"] == "kept" for e in entries)
            if kept and not include_kept:
                continue
            entries = [e for e in entries if e["kind"] != "kept"]
            state = ("kept" if kept else "dead") if dead else "LIVE"
            log(f"run {header.get('tag', path.stem)} (pid {header.get('pid', '?')}, {state}, topology {header.get('topology', '?')}):")
            undoer = Undoer(log=lambda m: log("  " + m), dry_run=dry_run, host_inode=header.get("netns_inode"))
            try:
                errs = undo_all(entries, undoer)
            finally:
                undoer.close()
            errors.extend(errs)
            if not dry_run and not errs:
                path.unlink(missing_ok=True)
            cleaned += 1
    return cleaned, errors
