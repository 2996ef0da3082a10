"""``ExternalLab``: a lab whose network another tool makes, discovered and then tested like any other.

The build stages are the sandbox's (the host, the outside world and the uplink, then the
services); ``ExternalLab`` is its own ``Network`` (netcheck.lab.build): it runs the tool in the
sandbox host namespace (or, on a real host, finds what it made), registers the container
namespaces, records every process living in netcheck's namespaces, and discovers what the tool
built (interfaces, addresses, host-side veths, bridges) into a resolved copy of the topology
that the unchanged suites read. Teardown runs the tool's own teardown first, then removes the
sandbox.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from netcheck import spec
from netcheck.adapters.discover import Discovery, discover
from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import netns_path, remove_netns
from netcheck.lab import Lab, LabError
from netcheck.lab.mode import HostMode
from netcheck.ledger import DirEntry, NetnsEntry, ProcessEntry, default_work_root, process_starttime
from netcheck.lifecycle import Signature, signature
from netcheck.spec import env_name  # the spec's knowledge: its validation refuses two names that give one variable

TAIL = 1500  # characters of a tool's output quoted in an error


class ToolMissing(LabError):
    """The tool an external setup needs is not installed; the message says how to install it."""


class ToolFailed(LabError):
    """The tool ran and failed; the message quotes its command, exit status and output."""


@dataclass(frozen=True)
class ToolRun:
    """One command netcheck ran for a tool, kept for the report and for error messages."""

    what: str
    argv: tuple[str, ...]
    returncode: int
    output: str


Need = tuple[str, bool, str]  # what a tool's adapter needs, whether it is there, how to install it


def missing_of(mode: HostMode, always: Sequence[Need], to_run: Sequence[Need] = ()) -> list[str]:
    """What is missing, each with its install hint: ``always`` (a tool's client), and ``to_run`` only where
    netcheck runs the tool (in host mode nothing is run: what exists is found)."""
    needs = [*always, *([] if mode.name == "host" else to_run)]
    return [f"{what} (install it: {hint})" for what, present, hint in needs if not present]


class Adapter(Protocol):
    """Drives one tool. ``setup`` runs it and registers each container's namespace with the lab."""

    mode: str

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        """What is not installed, each with the command that installs it (empty: ready)."""

    def setup(self, lab: ExternalLab) -> None:
        """Run the tool in the sandbox host; call ``lab.register_*`` for every container."""

    def discover_existing(self, lab: ExternalLab) -> None:
        """Host mode: find the containers that already exist, without running the tool."""

    def teardown(self, lab: ExternalLab) -> list[str]:
        """Run the tool's own teardown; return the errors (each step is tried)."""


class ExternalLab(Lab):
    """A topology made by another tool (script, CNI, netavark, Podman, Docker) and discovered."""

    def __init__(self, topology: spec.Topology, adapter: Adapter, *, keep: bool = False, mode: HostMode | None = None, tag: str | None = None, run_dir: Path | None = None) -> None:
        super().__init__(topology, keep=keep, mode=mode, tag=tag, run_dir=run_dir, network=self)
        self.declared = topology  # the spec as written; self.topology becomes the resolved copy
        self.adapter = adapter
        self.workdir: Path | None = None
        self.tool_runs: list[ToolRun] = []
        self.discovery: Discovery | None = None
        self.state: dict[str, Any] = {}  # the adapter's own notes (results, PIDs, sockets)
        self._owned_inodes: set[int] = set()  # namespaces whose processes the tool started for us
        self.tool_rules: Signature | None = None  # the host's nf_tables as the tool left them (netcheck.lifecycle)
        self.roots: dict[str, Path] = {}  # container -> the root its processes see (/proc/PID/root), for containers a tool runs

    # ----------------------------------------------------------------- paths and environment

    @property
    def spec_dir(self) -> Path:
        """The folder of the spec file: commands run there and config paths are relative to it."""
        src = Path(self.declared.source)
        return src.parent.resolve() if src.is_file() else Path.cwd()

    def spec_path(self, value: str, key: str) -> Path:
        """A path from the spec, relative to its folder; a SpecError if it does not exist."""
        path = (self.spec_dir / value).resolve()
        if not path.exists():
            raise spec.SpecError(self.declared.source, key, value, f"no such file ({path})", "fix the path; it is relative to the spec file's folder")
        return path

    def resolv_conf(self, container: str) -> tuple[Path, str | None]:
        """A container a tool runs reads the resolv.conf of its own root (Docker's and Podman's, mounted in the container), not /etc/netns."""
        root = self.roots.get(container)
        if root is None:
            return super().resolv_conf(container)
        path = root / "etc" / "resolv.conf"
        try:
            return path, path.read_text("utf-8", errors="replace")
        except OSError:
            return path, None

    def netns_name(self, container: str) -> str:
        return self.names.container_ns(container)

    def tool_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The documented variables a command gets (docs/tools.md), on top of netcheck's own environment."""
        t = self.declared
        env = {
            "NETCHECK_TAG": self.tag,
            "NETCHECK_HOST_NETNS": self.host.name or "",
            "NETCHECK_WAN_NETNS": self.wan.name or "",
            "NETCHECK_UPLINK": self.kname(t.host.uplink),
            "NETCHECK_UPLINK_ADDRESS": str(t.host.address),
            "NETCHECK_UPLINK_IP": str(t.host.address.ip),
            "NETCHECK_GATEWAY": str(t.host.gateway),
            "NETCHECK_REMOTE": str(t.wan.remote[0].ip),
            "NETCHECK_CONTAINERS": " ".join(c.name for c in t.containers),
            "NETCHECK_WORKDIR": str(self.workdir or ""),
        }
        for c in t.containers:
            env[env_name(c.name)] = self.netns_name(c.name)
        return {**os.environ, **env, **(extra or {})}

    # ----------------------------------------------------------------- running the tool

    def run_tool(self, what: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, input: bytes | None = None,
                 cwd: Path | None = None, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run a command in the host namespace (a list, never a shell string); ToolFailed if it fails."""
        args = [str(a) for a in argv]
        where = str(cwd or self.spec_dir)
        full_env = dict(env) if env is not None else self.tool_env()

        def do() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(args, cwd=where, env=full_env, input=input, capture_output=True, timeout=timeout, check=False)

        try:
            proc = self.host.call(do, timeout=timeout + 5)
        except FileNotFoundError as exc:
            raise ToolFailed(f"{what}: cannot run {args[0]!r} ({exc.strerror}); is it installed, and is the path right? (it runs in {where})") from None
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"{what}: {' '.join(args)} did not finish within {timeout:g}s") from None
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        self.tool_runs.append(ToolRun(what, tuple(args), proc.returncode, out[-TAIL:]))
        if check and proc.returncode != 0:
            raise ToolFailed(
                f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n{out[-TAIL:].rstrip()}\n"
                f"(it ran from {where} in the host namespace, as `nsenter --net={self.host.path} {' '.join(args[:3])}...` would; the NETCHECK_* variables it got are in docs/tools.md)"
            )
        return proc

    # ----------------------------------------------------------------- registering containers

    def make_workdir(self) -> Path:
        """A scratch folder for the tool (its state, config copies, root filesystems), removed at teardown."""
        assert self.ledger is not None
        path = default_work_root() / f"netcheck-{self.tag}"
        self.ledger.create(DirEntry(str(path)), lambda: path.mkdir(mode=0o700))
        self.workdir = path
        return path

    def expect_container_ns(self, name: str) -> str:
        """Record the namespace a command will create for a container (before it exists); returns its name."""
        assert self.ledger is not None
        return self.ledger.record(NetnsEntry(self.netns_name(name))).name

    def new_container_ns(self, name: str) -> Netns:
        """Create a container's namespace, as a container runtime does before calling CNI or netavark."""
        ns = self.new_namespace(self.netns_name(name), name)
        self.containers[name] = ns
        self._own(ns)
        return ns

    def open_container_ns(self, name: str, hint: str) -> Netns:
        """Open the namespace a command created under the name it was given (see ``expect_container_ns``)."""
        path = netns_path(self.netns_name(name))
        if not os.path.exists(path):
            raise ToolFailed(f"container {name}: the setup made no namespace {path} ({hint})")
        ns = self.hold(Netns.attach(path, name))
        self.containers[name] = ns
        self._own(ns)
        return ns

    def adopt_container_ns(self, name: str, source: str, *, owned: bool) -> Netns:
        """Give an existing namespace (/proc/PID/ns/net, a tool's own netns file) the lab's name for it.

        A bind mount at /run/netns/TAG-NAME, recorded first, so ``ip netns exec`` and the report
        name it like any container of a lab; removing it never touches the namespace itself.
        ``owned``: the tool started its processes for this lab (sandbox), so they are recorded and ended.
        """
        assert self.ledger is not None
        target = self.netns_name(name)
        path = netns_path(target)
        self.ledger.record(NetnsEntry(target))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        except FileExistsError:
            raise LabError(f"container {name}: {path} already exists (a leftover? try: netcheck clean)") from None
        os.close(fd)
        done = subprocess.run(["mount", "--bind", source, path], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            raise LabError(f"container {name}: cannot bind {source} to {path}: {done.stderr.decode(errors='replace').strip()} (is the container still running?)")
        ns = self.hold(Netns.attach(path, name))
        self.containers[name] = ns
        if owned:
            self._own(ns)
        return ns

    def readopt_container_ns(self, name: str, pid: int) -> Netns:
        """A container the tool restarted lives in a new namespace (its new PID's): adopt that one under the lab's name.

        What netcheck held in the old one goes first (its services' sockets, the namespace handle, the bind
        at /run/netns/TAG-NAME), so nothing keeps the dead namespace alive; then the new one is bound as at the
        first adoption, the container's services listen again inside it, its processes are recorded, and the
        drop witness follows the new namespace."""
        from netcheck.lab.build import serve_container

        old = self.containers.pop(name)
        old_inode = _inode(old.path)
        if self.services is not None:
            self.services.stop(name)
        old.close()
        self.handles.remove(old)
        remove_netns(self.netns_name(name))
        ns = self.adopt_container_ns(name, f"/proc/{pid}/ns/net", owned=True)
        self.roots[name] = Path(f"/proc/{pid}/root")
        if self.services is not None:
            serve_container(self.services, self, self.topology.container(name))
        self.record_processes()
        if self.witness is not None:
            self.witness.labels.pop(old_inode, None)
            self.witness.labels[_inode(ns.path)] = name
            self.witness.inodes = frozenset(self.witness.labels)
        return ns

    def record_foreign_netns(self, path: str) -> None:
        """Record a namespace file the tool made under /run/netns (e.g. Podman's netns-UUID) for cleanup."""
        assert self.ledger is not None
        if os.path.dirname(path) in ("/run/netns", "/var/run/netns"):
            self.ledger.record(NetnsEntry(os.path.basename(path)))

    def record_process(self, pid: int, argv: Sequence[str] = ()) -> None:
        assert self.ledger is not None
        start = process_starttime(pid)
        if start is not None:
            self.ledger.record(ProcessEntry(pid, start, tuple(argv) or tuple(_cmdline(pid))))

    def _own(self, ns: Netns) -> None:
        with contextlib.suppress(OSError):
            self._owned_inodes.add(os.stat(ns.path).st_ino)

    def record_processes(self) -> int:
        """Record every process living in a namespace netcheck made for this lab (daemons, shims, containers).

        Only the sandbox's namespaces are looked at, never a real host's, so ``netcheck clean``
        can end exactly these after a crash. Returns how many were recorded.
        """
        assert self.ledger is not None
        known = {e.pid for e in self.ledger.entries if isinstance(e, ProcessEntry)}
        count = 0
        me = os.getpid()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in known or int(entry.name) == me:
                continue
            pid = int(entry.name)
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ino in self._owned_inodes and _state(pid) not in ("Z", "X", None):
                self.record_process(pid)
                count += 1
        return count

    # ----------------------------------------------------------------- the network (netcheck.lab.build.Network)

    def host_names(self, lab: Lab) -> dict[str, str]:
        # Only the uplink is netcheck's; bridges and veths get the names the tool gave them (discover).
        return {self.topology.host.uplink: self.names.uplink}

    def host_sysctls(self, lab: Lab) -> dict[str, int]:
        # A fresh host: the tool must set what it needs (ip_forward...); the spec's values are expectations.
        return {"net.ipv4.ip_forward": 0}

    def make(self, lab: Lab) -> None:
        """Have the tool's network (run it, or on a real host find it), then discover it. No rules
        of netcheck's: the tool writes its own, and the suites test what they do, not their text."""
        self.make_workdir()
        self.mode.make_external(self)
        missing = [c.name for c in self.declared.containers if c.name not in self.containers]
        if missing:
            raise LabError(f"{self.declared.source}: the {self.declared.setup.mode} setup registered no namespace for {', '.join(missing)}")
        self.discovery = discover(self)
        self.topology = self.discovery.topology
        self.knames.update(self.discovery.knames)
        self.tool_rules = signature(self.host)

    def rediscover(self) -> None:
        """After a lifecycle event (a tool's reload re-creates its veths): discover the network again, and
        close what users attached to the old links (the prober's capture points, which reopen on next use)."""
        self.close_attachments()
        self.discovery = discover(self)
        self.topology = self.discovery.topology
        self.knames.update(self.discovery.knames)

    # ----------------------------------------------------------------- the tool (netcheck.lab.mode.ToolSetup)

    def start(self) -> None:
        """Run the tool in the sandbox host; its own teardown runs first at the lab's teardown."""
        self._own(self.host)
        self.on_teardown(self._tool_teardown)
        self.adapter.setup(self)
        self.record_processes()

    def find_existing(self) -> None:
        self.adapter.discover_existing(self)

    def _tool_teardown(self) -> None:
        for ns in self.containers.values():
            with contextlib.suppress(Exception):
                ns.close()
        try:
            errors = self.adapter.teardown(self)
        except Exception as exc:  # noqa: BLE001 - the sandbox is removed whatever the tool did
            errors = [str(exc)]
        if errors:
            raise LabError(f"{self.declared.setup.mode} teardown: " + "; ".join(errors))

    def describe(self) -> dict[str, Any]:
        """What the tool made, as plain data for the report."""
        out: dict[str, Any] = {"mode": self.declared.setup.mode, "host_mode": self.mode.name == "host", "tool_runs": [
            {"what": r.what, "argv": list(r.argv), "returncode": r.returncode} for r in self.tool_runs
        ]}
        if self.discovery is not None:
            out.update(self.discovery.as_dict())
        return out


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a][:12]


__all__ = ["Adapter", "ExternalLab", "ToolFailed", "ToolMissing", "ToolRun", "env_name"]
