"""A host served by a node, seen as a lab: what the single-host suites, their fixtures and
``netcheck.checks`` use of a ``Lab``, each answer asked of the node's agent.

The controller touches nothing of the node's kernel: a namespace here (``NodeNetns``) is a label
whose reads (links, addresses, routes, fdb, sysctls, a command, a module-level reader such as
``netcheck.kernel.xtables.read_legacy``) are requests to the agent, whose answers come back as
values (``netcheck.multihost.values``). A probe goes as ``ProbeRequest.to_dict()`` and comes back
as a ``ProbeResult``'s, a failed one with the Diagnosis the node made of it, with its own resend
(``netcheck.multihost.agent``; ``netcheck.multihost.probes.NodeProber`` is its prober). Faults are
injected on the node, their undo in its ledger::

    lab = nodes_lab.hosts["a"]                                  # a NodesLab's host
    [link.name for link in lab.container_ns("netns0").links()]   # read on node a
    netcheck.diagnosing.prober_for(lab).icmp("netns0", "203.0.113.1")
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from netcheck.kernel.jsontypes import JSONObject
from netcheck.kernel.worker import netns_path
from netcheck.multihost.values import decode, encode, function_name
from netcheck.services import Listener

T = TypeVar("T")

if TYPE_CHECKING:
    import subprocess

    from netcheck import spec
    from netcheck.kernel.netns import Address, BridgePort, FdbEntry, IpRule, Link, Neighbour, RouteEntry
    from netcheck.kernel.xtables import XRule
    from netcheck.multihost.nodes import Node

PROBE_WAIT = 120.0  # a probe and, when it failed, its diagnosis on a loaded node


class NodeNetns:
    """One namespace of a node-served host, by its label (``host``, ``wan``, a container): each read is asked of the node."""

    def __init__(self, lab: NodeHost, label: str) -> None:
        self.lab, self.label = lab, label

    def __repr__(self) -> str:
        return f"NodeNetns({self.label!r} of host {self.lab.name}, {self.name})"

    @property
    def name(self) -> str:
        return str(self.lab.state["namespaces"][self.label])

    @property
    def path(self) -> str:
        """Where the namespace is on its node (on this machine too, for a popen node)."""
        return netns_path(self.name)

    def _read(self, method: str, *args: object) -> Any:
        return decode(self.lab.node.call("ns_read", label=self.label, method=method, args=encode(args)))

    def links(self) -> list[Link]:
        return cast("list[Link]", self._read("links"))

    def link(self, name: str) -> Link | None:
        return cast("Link | None", self._read("link", name))

    def addresses(self, family: int = socket.AF_INET) -> list[Address]:
        return cast("list[Address]", self._read("addresses", int(family)))

    def routes(self, family: int = socket.AF_INET) -> list[RouteEntry]:
        return cast("list[RouteEntry]", self._read("routes", int(family)))

    def all_routes(self) -> list[RouteEntry]:
        return cast("list[RouteEntry]", self._read("all_routes"))

    def ip_rules(self) -> list[IpRule]:
        return cast("list[IpRule]", self._read("ip_rules"))

    def route_get(self, dst: IPv4Address | IPv6Address, src: IPv4Address | IPv6Address | None = None, iif: str | None = None) -> RouteEntry | str:
        return cast("RouteEntry | str", self._read("route_get", dst, src, iif))

    def neighbours(self, family: int = socket.AF_INET) -> list[Neighbour]:
        return cast("list[Neighbour]", self._read("neighbours", int(family)))

    def fdb(self) -> list[FdbEntry]:
        return cast("list[FdbEntry]", self._read("fdb"))

    def bridge_ports(self) -> list[BridgePort]:
        return cast("list[BridgePort]", self._read("bridge_ports"))

    def sysctl(self, key: str) -> str | None:
        return cast("str | None", self._read("sysctl", key))

    def run(self, argv: Sequence[str], *, timeout: float = 60.0, input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """A command in this namespace, run on the node."""
        done = self.lab.node.call("ns_run", wait=timeout + 10, label=self.label, argv=list(argv), timeout=timeout, input=input, env=env)
        return cast("subprocess.CompletedProcess[bytes]", decode(done))

    def call(self, fn: Callable[..., T], *args: object, timeout: float = 60.0) -> T:
        """``fn(*args)`` in this namespace on the node: ``fn`` a module-level function of netcheck (the agent imports it
        by name), its arguments and result values (netcheck.multihost.values)."""
        done = self.lab.node.call("ns_call", wait=timeout + 10, label=self.label, function=function_name(fn), args=encode(args), timeout=timeout)
        return cast("T", decode(done))


class NodeServices:
    """The services of a node-served host's lab: opened and closed on its node."""

    def __init__(self, lab: NodeHost) -> None:
        self.lab = lab

    def listen(self, ns: NodeNetns, container: str, kind: str, port: int, address: str = "0.0.0.0", *, users_may_serve: bool = False) -> Listener:
        got = decode(self.lab.node.call("listen", label=ns.label, container=container, kind=kind, port=port, address=address, users_may_serve=users_may_serve))
        assert isinstance(got, Listener)
        return got

    def stop(self, container: str, kind: str | None = None) -> int:
        return int(self.lab.node.call("stop", container=container, kind=kind))


class NodeHost:
    """A host of a ``NodesLab``, served by its node (``node``), as the single-host suites see a lab: its topology,
    names and expected values read from the node's lab (``state``, as the node reported it), its namespaces
    ``NodeNetns``, its probes sent and diagnosed there."""

    host_mode = False
    witness = None  # the kernel's drop watch is the node's to run (none yet)
    keep = False

    def __init__(self, name: str, node: Node, topology: spec.Topology, tag: str, run_dir: str | None = None) -> None:
        self.name, self.node, self.topology = name, node, topology
        self.state: dict[str, Any] = {"tag": tag}
        self.run_dir = run_dir  # where its run record goes on the node (None: the node's default)
        self.services = NodeServices(self)
        self.faults: tuple[str, ...] = ()  # those injected on the node

    @property
    def tag(self) -> str:
        return str(self.state["tag"])

    def kname(self, spec_iface: str) -> str:
        return str(self.state["knames"][spec_iface])

    def spec_name(self, kernel_iface: str) -> str:
        return next((k for k, v in self.state["knames"].items() if v == kernel_iface), kernel_iface)

    def point(self, container: str) -> str:
        return f"{container}:{self.topology.container(container).interface}"

    @property
    def host(self) -> NodeNetns:
        return NodeNetns(self, "host")

    @property
    def wan(self) -> NodeNetns:
        return NodeNetns(self, "wan")

    def container_ns(self, name: str) -> NodeNetns:
        self.topology.container(name)  # a name the topology does not declare fails here, as a Lab's does
        return NodeNetns(self, name)

    def namespaces(self) -> dict[str, NodeNetns]:
        return {label: NodeNetns(self, label) for label in self.state["namespaces"]}

    def resolv_conf(self, where: str) -> tuple[Path, str | None]:
        """(the resolv.conf a program in ``where`` reads on the node, its text)."""
        path, text = self.node.call("resolv_conf", where=where)
        return Path(path), text

    def expected_rules(self) -> list[XRule]:
        return cast("list[XRule]", decode(self.node.call("expected_rules")))

    def inject(self, faults: Iterable[str]) -> list[str]:
        """Break the node's lab with these faults (``netcheck.faults.inject`` on the node, each undo in its ledger)."""
        applied = [str(f) for f in self.node.call("inject", faults=list(faults))]
        self.faults += tuple(applied)
        return applied

    def probe(self, request: JSONObject, *, diagnose: bool = True) -> JSONObject:
        """One probe, ``ProbeRequest.to_dict()``, sent on the node (once more if inconclusive): its ``ProbeResult.to_dict()``,
        a failed one with the diagnosis made there (``netcheck.multihost.probes.NodeProber`` makes and reads these values)."""
        return self.node.probe(request, diagnose, PROBE_WAIT)


__all__ = ["NodeHost", "NodeNetns", "NodeServices"]
