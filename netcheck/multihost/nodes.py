"""Hosts served by nodes: each host of a multi-host lab built and probed on its own node, reached
through an **execnet** gateway (the transport pytest-xdist uses), never a protocol of netcheck's own.

A node is ``popen`` (a simulated node: a namespace of netcheck's own on this machine, the
gateway's Python started inside it with ``nsenter --net``, which enters that namespace alone) or
``ssh=user@address`` (a real machine, or an sshd in a sandbox namespace). The node runs
``netcheck.multihost.agent``: it builds its host's lab, recorded in its own ledger on the node,
makes its side of the join, and sends probes and reads captures there; what comes back is plain
values, rebuilt with the evidence's ``from_dict``. The controller records each node's run
(``NodeEntry``) before the node builds, so ``netcheck clean`` can end the node's agent and undo the
node's record there after the controller is killed::

    with NodesLab(spec.builtin("two-hosts-vxlan")) as lab:      # every host on a popen node
        probes.prober(lab, "a").icmp("netns0", "10.244.2.10").verdict   # netcheck.multihost.probes

The underlay is still netcheck's namespace on this machine, with a veth into each node's host
namespace: a sandbox-only step (real nodes need their own underlay, see docs/multihost.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from netcheck.kernel.jsontypes import JSONObject
from netcheck.kernel.netns import Netns, VethSpec
from netcheck.kernel.worker import NETNS_RUN_DIR, netns_path
from netcheck.lab import LabError
from netcheck.lab.attachments import Attachments
from netcheck.lab.build import ns_defaults
from netcheck.ledger import Ledger, LinkEntry, NetnsEntry, NodeEntry, ProcessEntry, default_run_dir, process_starttime
from netcheck.multihost.nodehost import NodeHost
from netcheck.multihost.plan import JoinPlan, plan
from netcheck.multihost.spec import MultiTopology
from netcheck.naming import new_tag

T = TypeVar("T")
SERVE = "from netcheck.multihost.agent import serve; serve(channel)"
BUILD_TIMEOUT = 300.0  # a host lab's build on a loaded node
CALL_TIMEOUT = 60.0


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class ProbeChannel(Protocol):
    """The part of an execnet channel that carries probes to a node: a request sent, its answer ``(status, value)`` received."""

    def send(self, item: object) -> None: ...
    def receive(self, timeout: float | None = None) -> tuple[str, object]: ...
    def close(self) -> None: ...


class NodeError(RuntimeError):
    """A node could not be reached, or its agent reported an error (the message names the node and the request)."""


def transport_of(gateway: str) -> str:
    """``popen`` or ``ssh``: the part of an execnet spec before its first ``=`` or ``//``."""
    return gateway.split("//", 1)[0].split("=", 1)[0]


def popen_in(netns: str, python: str = sys.executable) -> str:
    """The execnet spec of a simulated node: this Python, started inside namespace ``netns`` alone."""
    return f"popen//python=nsenter --net={netns_path(netns)} {python}"


class Node:
    """One node's gateway and the agent it runs; ``call`` sends one request and returns its plain value."""

    def __init__(self, name: str, gateway: str) -> None:
        import execnet  # lazily: only runs with nodes need it

        self.name, self.gateway = name, gateway
        self._lock = threading.Lock()
        self._probe_channels: list[ProbeChannel] = []  # idle channels for probes (``probe``), taken and given back under their own lock
        self._pool = threading.Lock()
        try:
            self.gw = execnet.makegateway(gateway)
        except Exception as exc:
            raise NodeError(f"node {name}: cannot open the execnet gateway {gateway!r}: {exc} "
                            "(is the node reachable, and netcheck installed for the Python it names?)") from exc
        try:
            self.channel = self.gw.remote_exec(SERVE)
            self.info = self.call("hello")
        except BaseException:
            self.gw.exit()  # never leave the node's process behind
            raise

    def call(self, op: str, wait: float = CALL_TIMEOUT, **args: Any) -> Any:
        with self._lock:
            try:
                self.channel.send((op, args))
                status, value = self.channel.receive(wait)
            except Exception as exc:
                raise NodeError(f"node {self.name} ({self.gateway}): {op}: {exc}") from exc
        if status == "error":
            raise NodeError(f"node {self.name} ({self.gateway}): {op}: {value}")
        return value

    @property
    def probe_channels(self) -> int:
        """How many channels for probes this node has open and idle: as many as probes were once in flight at once."""
        with self._pool:
            return len(self._probe_channels)

    def probe(self, request: JSONObject, diagnose: bool, wait: float) -> JSONObject:
        """A probe on a channel of its own (opened on first need, kept for the next), so that probes sent at once
        (``Prober.many``) are sent at once on the node; its answer, as ``call``'s."""
        with self._pool:
            side = self._probe_channels.pop() if self._probe_channels else None
        if side is None:
            side = cast(ProbeChannel, self.call("probe_channel"))
        try:
            side.send(("probe", {"request": request, "diagnose": diagnose}))
            status, value = side.receive(wait)
        except Exception as exc:  # the channel is left out of the pool: a late answer must not be read as the next probe's
            raise NodeError(f"node {self.name} ({self.gateway}): probe: {exc}") from exc
        with self._pool:
            self._probe_channels.append(side)
        if status == "error":
            raise NodeError(f"node {self.name} ({self.gateway}): probe: {value}")
        return cast(JSONObject, value)

    def close(self) -> None:
        for side in self._probe_channels:
            with contextlib.suppress(Exception):
                side.close()
        with contextlib.suppress(Exception):
            self.channel.send(("bye", {}))
            self.channel.waitclose(10)
        with contextlib.suppress(Exception):
            self.gw.exit()


class NodesLab:
    """A multi-host topology whose hosts are built on nodes (see the module's docstring).

    ``gateways`` maps a host's name to its node (an execnet spec: ``popen``, ``ssh=user@addr``,
    with options such as ``//python=...//ssh_config=...//env:NETCHECK_RUN_DIR=...``); left out, the host's
    ``node`` in the spec, else ``popen``. ``run_dir``: where the controller's record goes, and the popen nodes'.
    """

    def __init__(self, topology: MultiTopology, *, gateways: Mapping[str, str] | None = None, tag: str | None = None,
                 run_dir: Path | None = None, python: str = sys.executable) -> None:
        self.topology = topology
        self.tag = tag or new_tag()
        self.gateways = dict(gateways or {})
        self.run_dir = run_dir
        self.python = python
        self.hosts: dict[str, NodeHost] = {}
        self.ledger: Ledger | None = None
        self.underlay: Netns | None = None
        self.plan: JoinPlan | None = None
        self._handles: list[Netns] = []
        self.attached = Attachments()
        self._nics: dict[str, str] = {}  # the link netcheck gave each node on this machine
        self._marks: dict[str, float] = {}  # underlay points read on a node: the node's clock when each opened

    def __enter__(self) -> NodesLab:
        return self.build()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    @property
    def marks(self) -> dict[str, float]:
        """Underlay points read on a node: the node's clock when each opened (``netcheck.multihost.probes``)."""
        return self._marks

    def gateway_of(self, host: str) -> str:
        spec = self.topology.host(host)
        return self.gateways.get(host) or spec.node or "popen"

    def build(self) -> NodesLab:
        t = self.topology
        run_dir = self.run_dir or default_run_dir()
        try:
            self.ledger = Ledger(self.tag, topology=t.name, mode="nodes", run_dir=run_dir, source=t.source)
        except FileExistsError:
            raise LabError(f"lab tag {self.tag} is taken (a leftover? try: netcheck clean)") from None
        try:
            for h in t.hosts:
                self._start(h.name, run_dir)
            with ThreadPoolExecutor(len(self.hosts)) as pool:  # the nodes build at once, each on its own channel
                built = {name: pool.submit(nh.node.call, "build", BUILD_TIMEOUT, text=t.text, source=t.source, host=name, tag=nh.tag, run_dir=nh.run_dir)
                         for name, nh in self.hosts.items()}
            for name, future in built.items():
                self.hosts[name].state = future.result()
            self.plan = plan(t, self.tag, {name: nh.tag for name, nh in self.hosts.items()})
            self._underlay(self.plan)
            tags = {name: nh.tag for name, nh in self.hosts.items()}
            for name, nh in self.hosts.items():
                nic = t.host(name).nic or self._nics[name]
                nh.state = nh.node.call("join", text=t.text, source=t.source, multi_tag=self.tag, host_tags=tags, nic=nic)
            if self.underlay is not None:  # up once each node brought its end up
                self.underlay.wait_links_up([hj.port for hj in self.plan.hosts if t.host(hj.name).nic is None])
        except BaseException:
            self.teardown()
            raise
        return self

    def _start(self, host: str, run_dir: Path) -> None:
        """Open the host's node, its run recorded here first (``build`` then builds the lab there)."""
        assert self.ledger is not None
        gateway = self.gateway_of(host)
        node_run_dir: str | None = None  # another machine's: its own default (an //env:NETCHECK_RUN_DIR=... option sets it)
        if gateway == "popen":  # a simulated node: a namespace of netcheck's own on this machine, its record beside this one's
            name = f"{self.tag}-n{host}"
            self._handles.append(self.ledger.create(NetnsEntry(name), lambda: Netns.create(name, f"node {host}")))
            gateway = popen_in(name, self.python)
            node_run_dir = str(run_dir)
        tag = new_tag()
        self.ledger.record(NodeEntry(transport_of(gateway), gateway, tag, node_run_dir))
        node = Node(host, gateway)
        if transport_of(gateway) == "popen":  # a process of this machine: clean also waits, by its PID, until it is gone
            self.ledger.record(ProcessEntry(int(node.info["pid"]), node.info["starttime"], ("netcheck node agent", host)))
        self.hosts[host] = NodeHost(host, node, self.topology.host(host).topology, tag, node_run_dir)

    def _underlay(self, p: JoinPlan) -> None:
        """netcheck's underlay namespace and bridge, with a link into each node on this machine (a simulated node's
        network between the nodes); a real node brings its own, its ``nic``."""
        assert self.ledger is not None
        if all(h.nic is not None for h in self.topology.hosts):
            return  # real nodes: their network is the underlay
        ul = self.ledger.create(NetnsEntry(p.underlay_ns), lambda: Netns.create(p.underlay_ns, "underlay"))
        self._handles.append(ul)
        self.underlay = ul
        ul.call(ns_defaults, ul)
        ul.set_sysctl("net.ipv4.ip_forward", 0)
        self.ledger.record(LinkEntry(ul.name, p.bridge))
        index = ul.add_bridge(p.bridge)
        ul.configure(up=[p.bridge])
        for i, hj in enumerate(p.hosts):
            if self.topology.host(hj.name).nic is not None:
                continue
            node = self._node_netns(hj.name)
            assert node.name is not None  # the peer is born by the path of a named namespace, never by the process's own
            cable = f"{self.tag}n{i}"
            try:
                self.ledger.record(LinkEntry(ul.name, hj.port))  # its peer, the node's end, goes with it
                ul.add_veths([VethSpec(hj.port, cable, node, master=index, mtu=self.topology.underlay.mtu)])
                node.configure(up=[cable])
            finally:
                node.close()  # a handle here would keep the node's namespace alive
            self._nics[hj.name] = cable

    def _node_netns(self, host: str) -> Netns:
        """A handle on the namespace of ``host``'s node, which must be a named namespace of this machine (a simulated
        node's, or the sandbox sshd's): its agent is a process here, in the namespace /run/netns/NAME."""
        info = self.hosts[host].node.info
        try:
            here = process_starttime(int(info["pid"])) == info["starttime"] and os.stat(f"/proc/{info['pid']}/ns/net").st_ino == info["netns_inode"]
        except OSError:
            here = False
        names = [n for n in (os.listdir(NETNS_RUN_DIR) if here and os.path.isdir(NETNS_RUN_DIR) else []) if _inode(netns_path(n)) == info["netns_inode"]]
        if not names:
            raise LabError(f"{self.topology.source}: host {host}'s node ({self.gateway_of(host)}) is not a named namespace of this machine: netcheck cannot "
                           f'give it a link into the underlay. Fix: give its [[host]] nic = "eth1" (its interface on the network between the nodes)')
        return Netns.attach(netns_path(names[0]), f"node {host}")

    def teardown(self) -> None:
        """Release captures, tear each node's lab down on its node, then undo this run's record in reverse."""
        errors: list[str] = []
        errors += self.attached.release_all(f"multi-host lab {self.tag}")
        down: set[str] = set()
        for name in reversed(list(self.hosts)):
            nh = self.hosts.pop(name)
            try:
                nh.node.call("teardown", wait=BUILD_TIMEOUT)
                down.add(nh.tag)
            except NodeError as exc:
                errors.append(str(exc))  # its NodeEntry below cleans the node's record instead
            finally:
                nh.node.close()
        for ns in reversed(self._handles):
            with contextlib.suppress(Exception):
                ns.close()
        self._handles.clear()
        self.underlay = None
        if self.ledger is not None:
            errors += self.ledger.undo_and_close([e for e in self.ledger.entries if not (isinstance(e, NodeEntry) and e.tag in down)])
            self.ledger = None
        if errors:
            raise LabError(f"teardown of multi-host lab {self.tag} (nodes) left: " + "; ".join(errors) + " (try: netcheck clean)")

    # ----------------------------------------------------------------- captures on the underlay (this machine)

    def attachment(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T:
        return self.attached.get(key, make, release)

    def resolve_point(self, point: str) -> tuple[Netns, str, str]:
        """``underlay:HOST``, the underlay's port toward HOST; a host's points are on its node."""
        label, _, rest = point.partition(":")
        if label != "underlay" or self.underlay is None or self.plan is None or rest not in self.hosts:
            raise LabError(f"capture point {point!r}: only underlay:HOST is captured here (hosts: {', '.join(self.hosts)}); a host's points are read on its node")
        return self.underlay, self.plan.host(rest).port, rest

    def on_node(self, point: str) -> tuple[str, str] | None:
        """(host, its point) for ``underlay:HOST`` of a host on a real node: its link into the underlay, read there; else None."""
        label, _, rest = point.partition(":")
        if label == "underlay" and rest in self.hosts and self.topology.host(rest).nic is not None:
            return rest, "host:underlay"
        return None

    def namespaces(self) -> dict[str, str]:
        """Every namespace by label (``a/host``, ..., ``underlay``) -> its name, as the nodes report them."""
        out = {f"{h}/{label}": name for h, nh in self.hosts.items() for label, name in nh.state["namespaces"].items()}
        if self.underlay is not None and self.underlay.name:
            out["underlay"] = self.underlay.name
        return out


__all__ = ["Node", "NodeError", "NodeHost", "NodesLab", "popen_in", "transport_of"]
