"""The lab factory: builds labs on demand, shares them within a session, tears them all down."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from netcheck import spec
from netcheck.kernel import dropwatch
from netcheck.kernel.dropwatch import DropWatch, DropWatchError, Witness
from netcheck.kernel.netns import Netns
from netcheck.lab import HostMode, Lab, LabError, has_net_admin
from netcheck.lab.mode import mode_of
from netcheck.ledger import Ledger, ProcessEntry, clean, process_starttime
from netcheck.multihost.lab import MultiLab
from netcheck.multihost.nodehost import NodeHost
from netcheck.multihost.nodes import NodesLab
from netcheck.multihost.spec import MultiTopology
from netcheck.naming import new_tag

NEED_ROOT = (
    "netcheck needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces: "
    "run it as root (sudo .venv/bin/pytest suites/) or in the Vagrant box "
    "(vagrant up && vagrant ssh -c 'cd /vagrant && sudo bash bootstrap.sh suites')"
)


class LabFactory:
    """Like pytest's tmp_path_factory, for labs: ``shared(t)`` once per session, ``fresh(t)`` per use.

    Also usable outside pytest::

        with LabFactory() as labs:
            lab = labs.shared(spec.builtin("seed1"))
    """

    def __init__(self, *, keep: bool = False, reap: bool = True, host_mode: bool = False, faults: tuple[str, ...] = (), log: Callable[[str], None] = lambda _m: None,
                 multihosts: tuple[MultiTopology, ...] = ()) -> None:
        self.keep = keep
        # A host of a multi-host topology is served from its multi-host lab (the suites run on each host, joined).
        self._host_of: dict[str, tuple[MultiTopology, str]] = {h.topology.name: (m, h.name) for m in multihosts for h in m.hosts}
        self._multi: dict[str, MultiLab | NodesLab] = {}
        self.mode: HostMode = mode_of(host_mode)
        self.faults = faults
        self._shared: dict[str, Lab] = {}
        self._fresh: list[Lab] = []
        self._failed: dict[str, BaseException] = {}
        self.kept: list[str] = []
        self.reaped = 0
        self.log = log
        self._watch: DropWatch | None = None  # one per run, started with the first lab
        self._watch_ledger: Ledger | None = None
        self._no_watch: str | None = None  # why there is none
        if reap and has_net_admin():
            with contextlib.suppress(OSError):
                self.reaped, _errors = clean(include_kept=False, log=lambda _m: None)

    def __enter__(self) -> LabFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shared(self, topology: spec.Topology) -> Lab | NodeHost:
        """The session's lab for a topology, built on first use (a host served by a node: its ``NodeHost``, the lab as the node serves it)."""
        if topology.name in self._failed:
            raise LabError(f"the lab for {topology.name} failed to build earlier in this session: {self._failed[topology.name]}")
        lab = self._shared.get(topology.name)
        if lab is None and topology.name in self._host_of:
            multi, host = self._host_of[topology.name]
            return self.multi(multi).hosts[host]
        if lab is None:
            if self.mode.exclusive:
                for name in list(self._shared):
                    self._shared.pop(name).teardown()
            try:
                lab = self._build(topology, keep=self.keep, mode=self.mode)
                if self.faults:
                    from netcheck.faults import inject

                    try:
                        inject(lab, self.faults)
                    except BaseException:
                        lab.teardown(force=True)  # a fault that fails half-way must not leak the lab it was breaking
                        raise
            except Exception as exc:  # any build failure is remembered (later tests get it at once), then re-raised
                self._failed[topology.name] = exc
                raise
            self._shared[topology.name] = lab
        return lab

    def in_process(self, lab: Lab | NodeHost) -> Lab:
        """``lab`` where this process holds it; a host served by its node is refused, with why."""
        if isinstance(lab, NodeHost):
            raise LabError(f"host {lab.name} ({lab.topology.name}) is served by its node: lifecycle events (--netcheck-event) change labs held in this process only")
        return lab

    def multi(self, topology: MultiTopology) -> MultiLab | NodesLab:
        """The session's multi-host lab for a multi-host topology, built on first use: its hosts served by nodes
        (execnet gateways, ``netcheck.multihost.nodes``) when its [[host]] tables name them, else held in this process."""
        if topology.name in self._failed:
            raise LabError(f"the lab for {topology.name} failed to build earlier in this session: {self._failed[topology.name]}")
        lab = self._multi.get(topology.name)
        if lab is None:
            if not has_net_admin():
                raise PermissionError(NEED_ROOT)
            try:
                lab = NodesLab(topology).build() if any(h.node for h in topology.hosts) else MultiLab(topology).build()
            except Exception as exc:  # remembered, as a single lab's failure is, then re-raised
                self._failed[topology.name] = exc
                raise
            self._multi[topology.name] = lab  # torn down by close, whatever a fault below does
            if isinstance(lab, MultiLab):
                for host in lab.hosts.values():
                    host.witness = self.witness(host.namespaces())
            if self.faults:
                self._inject_hosts(lab)
        return lab

    def _inject_hosts(self, multi: MultiLab | NodesLab) -> None:
        """Break each host of a multi-host lab as --netcheck-fault asks: in this process, or on the host's node (its undo in the node's ledger)."""
        from netcheck.faults import inject

        for name in multi.hosts:
            try:
                if isinstance(multi, NodesLab):
                    multi.hosts[name].inject(self.faults)
                else:
                    inject(multi.hosts[name], self.faults)
            except Exception as exc:  # every later test of this lab gets it at once
                self._failed[multi.topology.name] = exc
                raise

    def fresh(self, topology: spec.Topology | str) -> Lab:
        """A new lab of its own (for tests that break things); call ``release`` or let ``close`` remove it."""
        t = spec.resolve(topology) if isinstance(topology, str) else topology
        lab = self._build(t, keep=False, mode=mode_of(False))
        self._fresh.append(lab)
        return lab

    def release(self, lab: Lab) -> None:
        if lab in self._fresh:
            self._fresh.remove(lab)
        lab.teardown()

    def _build(self, topology: spec.Topology, *, keep: bool, mode: HostMode) -> Lab:
        if not has_net_admin():
            raise PermissionError(NEED_ROOT)
        if topology.setup.mode != "build":
            from netcheck.adapters import build_external

            lab: Lab = build_external(topology, keep=keep, mode=mode)
        else:
            lab = Lab(topology, keep=keep, mode=mode).build()
        lab.witness = self.witness(lab.namespaces())
        return lab

    def witness(self, namespaces: Mapping[str, Netns]) -> Witness:
        """The kernel's drops in these namespaces, from the run's one watch (started on first use,
        in the background: bpftrace attaches while the lab is probed). Its PID goes in a run
        record of its own, so ``netcheck clean`` ends it if this run dies."""
        if self._watch is None and self._no_watch is None:
            self._no_watch = dropwatch.unavailable()
            if self._no_watch is None:
                self._start_watch()
        labels = {}
        for label, ns in namespaces.items():
            with contextlib.suppress(OSError):
                labels[dropwatch.netns_inode(ns.path)] = label
        return Witness(self._watch, labels, unavailable=self._no_watch)

    def _start_watch(self) -> None:
        ledger = Ledger(new_tag(), topology="(kernel drop watch)", mode=self.mode.name)
        argv = ("bpftrace", "-e", "tracepoint:skb:kfree_skb")

        def record(pid: int) -> None:
            ledger.record(ProcessEntry(pid, process_starttime(pid), argv))

        try:
            self._watch = DropWatch(record=record).start()
        except (DropWatchError, OSError) as exc:
            self._no_watch = f"the kernel's drop watch did not start: {exc}"
            ledger.close(remove=True)
            return
        self._watch_ledger = ledger

    def close(self) -> None:
        """Tear down every lab, newest first; raise the first error after trying all."""
        errors: list[BaseException] = []
        for lab in reversed([*self._shared.values(), *self._fresh]):
            try:
                if lab.keep:
                    self.kept.append(lab.enter_hint())
                lab.teardown()
            except Exception as exc:  # noqa: BLE001 - every lab gets its teardown
                errors.append(exc)
        for multi in reversed(list(self._multi.values())):
            try:
                multi.teardown()
            except Exception as exc:  # noqa: BLE001 - every lab gets its teardown
                errors.append(exc)
        self._shared.clear()
        self._fresh.clear()
        self._multi.clear()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        if self._watch_ledger is not None:
            self._watch_ledger.close(remove=True)
            self._watch_ledger = None
        if errors:
            raise errors[0]
