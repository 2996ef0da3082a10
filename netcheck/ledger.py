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
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from ipaddress import IPv4Network
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from netcheck.kernel import nft
from netcheck.kernel.jsontypes import JSONObject
from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import NamespaceError, netns_path, remove_netns
from netcheck.kernel.xtables import Backend, XRule, delete_rules, nft_remove_if_empty, set_policy

T = TypeVar("T")
E = TypeVar("E", bound="Entry")


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
    """The append-only record of one lab's objects, persisted as it grows.

    ``create(entry, do)`` records an object, then makes it; ``record(entry)`` only records (for
    a batch made in one step afterwards). Undo tolerates "already gone", so an object recorded
    but never made is harmless.
    """

    def __init__(self, tag: str, *, topology: str, mode: str, run_dir: Path | None = None, source: str | None = None) -> None:
        run_dir = run_dir or default_run_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.path = run_dir / f"{tag}.jsonl"
        self.entries: list[Entry] = []
        pid = os.getpid()
        self.netns_inode = os.stat("/proc/self/ns/net").st_ino
        header = {
            "kind": "run", "version": LEDGER_VERSION, "tag": tag, "pid": pid, "starttime": process_starttime(pid), "started": time.time(),
            "topology": topology, "mode": mode, "netns_inode": self.netns_inode, "source": source,
        }
        fd = _create_locked(self.path, (json.dumps(header, sort_keys=True) + "\n").encode())
        self._file = os.fdopen(fd, "a", buffering=1)

    def _write(self, line: JSONObject) -> None:
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()

    def record(self, entry: E) -> E:
        """Record an object before it is made (undo tolerates 'already gone')."""
        self.entries.append(entry)
        self._write(to_json(entry))
        return entry

    def create(self, entry: Entry, do: Callable[[], T]) -> T:
        """Record ``entry``, then make it with ``do()``: the one way an object comes into being."""
        self.record(entry)
        return do()

    def keep(self) -> None:
        """Mark the lab as kept for inspection: new runs leave it alone; ``netcheck clean`` removes it."""
        self._write({"kind": "kept", "at": time.time()})

    def undo_and_close(self, entries: Sequence[Entry] | None = None) -> list[str]:
        """Undo ``entries`` (default: every entry), newest first, then close: the record is removed if
        nothing failed, kept for ``netcheck clean`` otherwise. Returns the errors."""
        undoer = Undoer()
        try:
            errors = undo_all(self.entries if entries is None else entries, undoer)
        finally:
            undoer.close()
        self.close(remove=not errors)
        return errors

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

    def in_ns(self, name: str | None, do: Callable[[Netns], object]) -> None:
        """``do(ns)`` in namespace ``name``; nothing if the namespace is gone (and with it the object)."""
        ns = self.ns(name)
        if ns is not None:
            do(ns)

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
        if e.netns is not None and e.netns in owned and not isinstance(e, NetnsEntry):
            return  # removed with its namespace
        self.log(f"remove {e.describe()}")
        if not self.dry_run:
            e.undo(self)


# ----------------------------------------------------------------------------- entries
# Each kind of object a lab makes is a frozen entry that knows how to undo itself and how to
# say what it is. On disk each is one JSON line of its fields plus "kind", as before typed
# entries existed, so a record written by an older netcheck (no "version" in its header)
# reads and cleans up the same way.

LEDGER_VERSION = 2


class Entry(Protocol):
    """One recorded object. ``netns`` names the namespace it lives in (None: the run's own)."""

    kind: ClassVar[str]

    @property
    def netns(self) -> str | None: ...
    def undo(self, undoer: Undoer) -> None: ...
    def describe(self) -> str: ...


def _where(netns: str | None) -> str:
    return f" in netns {netns}" if netns else ""


class OfTheMachine:
    """An entry undone from the machine, entering no namespace (a namespace itself, a process, a folder, a file)."""

    @property
    def netns(self) -> str | None:
        return None


@dataclass(frozen=True)
class NetnsEntry(OfTheMachine):
    kind: ClassVar[str] = "netns"
    name: str

    def undo(self, undoer: Undoer) -> None:
        undoer.forget(self.name)
        remove_netns(self.name)

    def describe(self) -> str:
        return f"netns {self.name}"


@dataclass(frozen=True)
class LinkEntry:
    kind: ClassVar[str] = "link"
    netns: str | None
    name: str

    def undo(self, undoer: Undoer) -> None:
        undoer.in_ns(self.netns, lambda ns: ns.delete_link(self.name))

    def describe(self) -> str:
        return f"link {self.name}{_where(self.netns)}"


@dataclass(frozen=True)
class RouteEntry:
    kind: ClassVar[str] = "route"
    netns: str | None
    dst: str

    def undo(self, undoer: Undoer) -> None:
        undoer.in_ns(self.netns, lambda ns: ns.deconfigure(routes=[IPv4Network(self.dst)]))

    def describe(self) -> str:
        return f"route {self.dst}{_where(self.netns)}"


@dataclass(frozen=True)
class RuleEntry:
    kind: ClassVar[str] = "rule"
    netns: str | None
    rule: XRule
    backend: Backend = "legacy"

    def undo(self, undoer: Undoer) -> None:
        undoer.in_ns(self.netns, lambda ns: delete_rules(ns, [self.rule], backend=self.backend))

    def describe(self) -> str:
        return f"rule {self.rule.render()}{_where(self.netns)}"

    def fields(self) -> JSONObject:
        return {"netns": self.netns, "rule": asdict(self.rule), "backend": self.backend}


@dataclass(frozen=True)
class ChainEntry:
    kind: ClassVar[str] = "chain"
    netns: str | None
    table: str
    name: str
    backend: Backend = "legacy"

    def undo(self, undoer: Undoer) -> None:
        undoer.in_ns(self.netns, lambda ns: delete_rules(ns, [], [(self.table, self.name)], backend=self.backend))

    def describe(self) -> str:
        return f"chain {self.name}{_where(self.netns)}"


@dataclass(frozen=True)
class NftChainEntry:
    """A base chain iptables-nft brings into being; removed only if empty."""

    kind: ClassVar[str] = "nft-chain"
    netns: str | None
    table: str
    name: str

    def undo(self, undoer: Undoer) -> None:
        undoer.in_ns(self.netns, lambda ns: nft_remove_if_empty(ns, self.table, self.name))

    def describe(self) -> str:
        return f"nf_tables base chain ip {self.table} {self.name}{_where(self.netns)} (if empty)"


@dataclass(frozen=True)
class NftTableEntry:
    """An nf_tables table: one iptables-nft brings into being (removed only if empty), or, ``owned``,
    a native table of the lab's own (``firewall = "nft"``), removed with everything in it."""

    kind: ClassVar[str] = "nft-table"
    netns: str | None
    table: str
    family: str = "ip"
    owned: bool = False

    def undo(self, undoer: Undoer) -> None:
        if self.owned:
            undoer.in_ns(self.netns, lambda ns: nft.delete_table(ns, nft.NftTable(self.family, self.table)))
        else:
            undoer.in_ns(self.netns, lambda ns: nft_remove_if_empty(ns, self.table))

    def describe(self) -> str:
        return f"nf_tables table {self.family} {self.table}{_where(self.netns)}{'' if self.owned else ' (if empty)'}"


@dataclass(frozen=True)
class PolicyEntry:
    kind: ClassVar[str] = "policy"
    netns: str | None
    table: str
    chain: str
    old: str

    def undo(self, undoer: Undoer) -> None:
        undoer.in_ns(self.netns, lambda ns: set_policy(ns, self.table, self.chain, self.old))

    def describe(self) -> str:
        return f"policy {self.table} {self.chain} (restore {self.old}){_where(self.netns)}"


@dataclass(frozen=True)
class SysctlEntry:
    kind: ClassVar[str] = "sysctl"
    netns: str | None
    key: str
    old: str | None = None

    def undo(self, undoer: Undoer) -> None:
        old = self.old
        if old is not None:
            undoer.in_ns(self.netns, lambda ns: ns.set_sysctl(self.key, old))

    def describe(self) -> str:
        return f"sysctl {self.key} (restore {self.old}){_where(self.netns)}"


@dataclass(frozen=True)
class ProcessEntry(OfTheMachine):
    kind: ClassVar[str] = "process"
    pid: int
    starttime: int | None = None
    argv: tuple[str, ...] = ()

    def undo(self, undoer: Undoer) -> None:
        kill_process(self.pid, self.starttime)

    def describe(self) -> str:
        return f"process {self.pid} ({' '.join(self.argv)[:60]})"


@dataclass(frozen=True)
class DirEntry(OfTheMachine):
    kind: ClassVar[str] = "dir"
    path: str

    def undo(self, undoer: Undoer) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def describe(self) -> str:
        return f"directory {self.path}"


@dataclass(frozen=True)
class FileEntry(OfTheMachine):
    """One file netcheck writes (a container's /etc/netns/NAME/resolv.conf): undo unlinks exactly that path."""

    kind: ClassVar[str] = "file"
    path: str

    def undo(self, undoer: Undoer) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def describe(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class EmptyDirEntry(OfTheMachine):
    """A folder netcheck makes (/etc/netns/NAME): undo removes it only if empty, never what is inside.
    ``shared`` (/etc/netns itself, which other runs and tools use too): left alone if not empty."""

    kind: ClassVar[str] = "empty-dir"
    path: str
    shared: bool = False

    def undo(self, undoer: Undoer) -> None:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not (self.shared and exc.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                raise

    def describe(self) -> str:
        return f"directory {self.path} (if empty)"


@dataclass(frozen=True)
class ContainerEntry(OfTheMachine):
    """A container netcheck itself runs on a daemon of the lab's own (Docker's address taker of the
    container-new-address event): undo removes it by name, while that daemon still answers."""

    kind: ClassVar[str] = "container"
    docker_host: str  # the daemon's -H: unix:///…/docker.sock
    name: str

    def undo(self, undoer: Undoer) -> None:
        cli = shutil.which("docker")
        if cli is None or not os.path.exists(self.docker_host.removeprefix("unix://")):
            return  # the daemon is gone, and its containers with it (its data dir is an entry of its own)
        subprocess.run([cli, "-H", self.docker_host, "rm", "-f", self.name], capture_output=True, timeout=60, check=False)

    def describe(self) -> str:
        return f"container {self.name} (docker -H {self.docker_host})"


@dataclass(frozen=True)
class NodeEntry(OfTheMachine):
    """A host's lab on a node, reached through an execnet gateway (``netcheck.multihost.nodes``): undo ends
    the node's agent and undoes the node's own run record ``tag`` there (in ``run_dir``; None: the node's default)."""

    kind: ClassVar[str] = "node"
    transport: str  # popen (this machine) or ssh
    gateway: str  # the execnet spec
    tag: str
    run_dir: str | None = None

    def undo(self, undoer: Undoer) -> None:
        errors = clean_node_runs([self.tag], Path(self.run_dir) if self.run_dir else None) if self.transport == "popen" else self._clean_over_gateway()
        if errors:
            raise RuntimeError("; ".join(errors))

    def _clean_over_gateway(self) -> list[str]:
        """``clean_node_runs`` on the node, through a new execnet gateway to it."""
        import execnet  # lazily: only runs with nodes need it

        try:
            gw = execnet.makegateway(self.gateway)
        except Exception as exc:
            raise RuntimeError(f"cannot reach node {self.gateway!r} to clean its run {self.tag}: {exc} (is it up? then: netcheck clean on it)") from exc
        try:
            channel = gw.remote_exec(NODE_CLEAN)
            channel.send(([self.tag], self.run_dir))
            errors: list[str] = channel.receive(600)
            return errors
        finally:
            gw.exit()

    def describe(self) -> str:
        return f"node run {self.tag} ({self.gateway})"


NODE_CLEAN = "from pathlib import Path; from netcheck.ledger import clean_node_runs; tags, run_dir = channel.receive(); " \
    "channel.send(clean_node_runs(tags, Path(run_dir) if run_dir else None))"


def clean_node_runs(tags: Collection[str], run_dir: Path | None) -> list[str]:
    """On a node: end the agents that own these runs (by the PID each run record names, if still the same process),
    then undo the runs; returns the errors."""
    directory = run_dir or default_run_dir()
    for tag in tags:
        path = directory / f"{tag}.jsonl"
        if not path.exists():
            continue
        header, _entries, _kept = read_record(path)
        pid, starttime = header.get("pid"), header.get("starttime")
        if isinstance(pid, int) and pid != os.getpid():
            kill_process(pid, starttime if isinstance(starttime, int) else None)
    _n, errors = clean(run_dir=directory, tags=set(tags), log=lambda _m: None)
    return errors


ENTRY_KINDS: dict[str, type[Entry]] = {cls.kind: cls for cls in (
    NetnsEntry, LinkEntry, RouteEntry, RuleEntry, ChainEntry, NftChainEntry, NftTableEntry, PolicyEntry, SysctlEntry, ProcessEntry, DirEntry,
    FileEntry, EmptyDirEntry, ContainerEntry, NodeEntry,
)}


def to_json(entry: Entry) -> JSONObject:
    """An entry as its JSON line: "kind" and its fields."""
    fields = entry.fields() if isinstance(entry, RuleEntry) else asdict(entry)  # type: ignore[call-overload]
    return {"kind": entry.kind, **fields}


def from_json(line: JSONObject) -> Entry | None:
    """The entry of a JSON line (any version); None for a kind this netcheck does not know."""
    data = {k: v for k, v in line.items() if k != "kind"}
    cls = ENTRY_KINDS.get(str(line.get("kind")))
    if cls is None:
        return None
    if cls is RuleEntry:
        rule: JSONObject = {k: tuple(v) if isinstance(v, list) else v for k, v in data["rule"].items()}
        if set(rule) - {f.name for f in fields(XRule)}:
            # A rule with matches this netcheck does not know (a newer version wrote the record): undoing it
            # without them could delete another rule, so it is not read (its namespace goes with the lab).
            return None
        data["rule"] = XRule(**rule)
    if cls is ProcessEntry:
        data["argv"] = tuple(data.get("argv", ()))
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


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


def undo_all(entries: Sequence[Entry], undoer: Undoer) -> list[str]:
    """Undo entries in reverse order; returns the errors (each entry is tried; "already gone" is none)."""
    owned = {e.name for e in entries if isinstance(e, NetnsEntry)}
    errors = []
    for e in reversed(entries):
        try:
            undoer.undo(e, owned)
        except Exception as exc:  # noqa: BLE001 - every entry is tried; errors are reported, not swallowed
            if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENODEV):
                continue
            errors.append(f"{e.describe()}: {exc}")
    return errors


# ----------------------------------------------------------------------------- run records


@dataclass(frozen=True)
class RunRecord:
    path: Path
    header: JSONObject
    entries: list[Entry]
    alive: bool
    kept: bool = False

    @property
    def tag(self) -> str:
        return str(self.header.get("tag", self.path.stem))


def read_record(path: Path) -> tuple[JSONObject, list[Entry], bool]:
    """(header, entries, kept) of a run record, of this version or an older one (no "version")."""
    header: JSONObject = {}
    entries = []
    kept = False
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        kind = e.get("kind")
        if kind == "run":
            header = e
        elif kind == "kept":
            kept = True
        else:
            entry = from_json(e)
            if entry is not None:
                entries.append(entry)
    return header, entries, kept


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
            header, entries, kept = read_record(path)
            out.append(RunRecord(path, header, entries, alive=not dead, kept=kept))
    return out


def clean(
    *, include_live: bool = False, include_kept: bool = True, dry_run: bool = False, log: Callable[[str], None] = print, run_dir: Path | None = None,
    tags: Collection[str] | None = None,
) -> tuple[int, list[str]]:
    """Remove the objects of dead runs (and of live ones with ``include_live``).

    Labs kept with --netcheck-keep are removed too, unless ``include_kept`` is False (as when a
    new run reaps the leftovers of crashed ones at start). ``tags`` limits it to those runs.

    Returns (runs cleaned, errors). Each run is cleaned while its lock is held, so two
    cleaners never undo the same run at once.
    """
    directory = run_dir or default_run_dir()
    cleaned = 0
    errors: list[str] = []
    if not directory.is_dir():
        return 0, []
    for path in sorted(directory.glob("*.jsonl")):
        if tags is not None and path.stem not in tags:
            continue
        with _probe_lock(path) as dead:
            if not dead and not include_live:
                continue
            header, entries, kept = read_record(path)
            if kept and not include_kept:
                continue
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
