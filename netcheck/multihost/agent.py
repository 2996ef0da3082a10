"""The node's side of an execnet gateway: one host's lab, built and probed on the node.

The controller (``netcheck.multihost.nodes``) starts it with ``remote_exec`` on a gateway opened
to the node (``popen`` inside a sandbox namespace of this machine, or ``ssh=user@node``) and sends
requests, ``(op, {args})``; each answer is ``("ok", value)`` or ``("error", message)``, plain
JSON-able values only. The lab's objects are recorded in the node's own ledger (its run record
on the node), so ``netcheck clean`` can undo them on the node after the controller dies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from netcheck.evidence import Capture, _encode
from netcheck.kernel import rtnl
from netcheck.kernel.jsontypes import JSON, JSONObject
from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import netns_path
from netcheck.lab import Lab
from netcheck.ledger import LinkEntry, process_starttime
from netcheck.multihost import probes as X
from netcheck.multihost import spec as M
from netcheck.multihost.plan import plan
from netcheck.probes import Prober
from netcheck.probes.capture import Matcher, capture_at, icmp_flow, port_flow


class Channel(Protocol):
    """The part of an execnet channel the agent uses."""

    def receive(self) -> Any: ...
    def send(self, item: Any) -> None: ...


class Agent:
    """One node's state: its host lab, the sinks of transfers under way."""

    def __init__(self) -> None:
        self.lab: Lab | None = None
        self.host = ""
        self.sinks: dict[int, X.Sink] = {}
        self.prober: Prober | None = None

    def _lab(self) -> Lab:
        if self.lab is None:
            raise RuntimeError("no lab on this node yet: send build first")
        return self.lab

    def hello(self) -> JSONObject:
        pid = os.getpid()
        return {"pid": pid, "starttime": process_starttime(pid), "netns_inode": os.stat("/proc/self/ns/net").st_ino}

    def build(self, text: str, source: str, host: str, tag: str, run_dir: str | None) -> JSONObject:
        """Build host ``host`` of the multi-host spec ``text`` as a lab tagged ``tag``, its ledger in ``run_dir`` (the node's default if None)."""
        topology = M.loads(text, source).host(host).topology
        self.host = host
        self.lab = Lab(topology, tag=tag, run_dir=Path(run_dir) if run_dir else None).build()
        return self.state()

    def state(self) -> JSONObject:
        lab = self._lab()
        return {"tag": lab.tag, "namespaces": {label: ns.name for label, ns in lab.namespaces().items() if ns.name},
                "knames": dict(lab.knames), "record": str(lab.ledger.path) if lab.ledger else None}

    def join(self, text: str, source: str, multi_tag: str, host_tags: dict[str, str], nic: str) -> JSONObject:
        """The host's link into the underlay, a macvlan of the node's interface ``nic`` born in the host namespace, then the
        host's side of the join; each recorded in the node's ledger first."""
        from netcheck.multihost.lab import link_index, make_join, send

        lab = self._lab()
        assert lab.ledger is not None
        t = M.loads(text, source)
        hj = plan(t, multi_tag, host_tags).host(self.host)
        assert lab.host.name is not None  # a sandbox lab's host namespace is named
        lab.ledger.record(LinkEntry(lab.host.name, hj.uplink))
        node = Netns.current("node")  # this process's namespace: the node's own, where its interface is
        try:
            fd = os.open(netns_path(lab.host.name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                send(node, lambda sock: [rtnl.macvlan(hj.uplink, link=link_index(sock, nic), netns_fd=fd, mtu=t.underlay.mtu)])
            finally:
                os.close(fd)
        finally:
            node.close()
        lab.host.configure(up=[hj.uplink], addresses=[(hj.uplink, hj.underlay)])
        lab.host.wait_links_up([hj.uplink])
        lab.knames["underlay"] = hj.uplink
        if hj.vxlan is not None:
            lab.knames["vxlan"] = hj.vxlan
        make_join(lab.ledger.record, lab.host, t.join, hj)
        return self.state()

    def probe(self, kind: str, src: str, dst: str, port: int, capture: list[str], target: str | None) -> JSONObject:
        prober = self.prober or Prober(self._lab())
        self.prober = prober  # one for the lab's life: its ICMP ids follow on
        if kind == "icmp":
            return prober.icmp(src, dst, capture=capture, target=target).to_dict()
        return prober.tcp(src, dst, port, http=kind == "http", capture=capture, target=target).to_dict()

    def capture_open(self, point: str) -> float:
        """Open a capture point; returns the node's clock, from which ``capture_collect`` reads."""
        capture_at(self._lab(), point)
        return time.time()

    def capture_collect(self, point: str, proto: str, flow: int, since: float, limit: int = 64) -> JSONObject:
        match: Matcher = icmp_flow(flow) if proto == "icmp" else port_flow("udp" if proto == "udp" else "tcp", flow)
        cap: Capture = capture_at(self._lab(), point).collect(match, since, limit=limit)
        out: JSONObject = _encode(asdict(cap))
        return out

    def df_ping(self, src: str, dst: str, size: int) -> JSONObject:
        out: JSONObject = asdict(X.df_ping(self._lab().container_ns(src), dst, size))
        return out

    def sink_open(self, container: str, port: int, size: int, timeout: float) -> None:
        self.sinks[port] = X.Sink(self._lab().container_ns(container), port, size, timeout=timeout)

    def sink_result(self, port: int) -> JSONObject:
        received, error = self.sinks.pop(port).result()
        return {"received": received, "error": error}

    def send_bytes(self, container: str, addr: str, port: int, size: int, timeout: float) -> str:
        return X.send_bytes(self._lab().container_ns(container), addr, port, size, timeout=timeout)

    def run(self, where: str, argv: list[str]) -> JSONObject:
        """A command in one of the lab's namespaces (by label), for checks of kernel state: its exit code and output."""
        lab = self._lab()
        done = lab.namespaces()[where].run(argv)
        return {"returncode": done.returncode, "stdout": done.stdout.decode(errors="replace"), "stderr": done.stderr.decode(errors="replace")}

    def teardown(self) -> None:
        if self.lab is not None:
            for sink in self.sinks.values():
                sink.result()
            self.sinks.clear()
            lab, self.lab = self.lab, None
            self.prober = None
            lab.teardown()


def serve(channel: Channel) -> None:
    """Answer the controller's requests until it closes the channel (or sends ``("bye", {})``)."""
    agent = Agent()
    ops: dict[str, Callable[..., JSON | None]] = {
        name: getattr(agent, name) for name in ("hello", "build", "state", "join", "probe", "capture_open", "capture_collect", "df_ping",
                                                "sink_open", "sink_result", "send_bytes", "run", "teardown")
    }
    lock = threading.Lock()
    while True:
        try:
            request = channel.receive()
        except (EOFError, KeyboardInterrupt):
            # The controller is gone without a goodbye (killed): end now, holding the run record's lock
            # to the last, so that no cleaner sees it free while this process still runs; the lab is
            # left to ``netcheck clean`` (here, or the controller's through its NodeEntry).
            os._exit(1)
        op, args = request
        if op == "bye":
            return
        try:
            with lock:
                value = ops[op](**args)
        except Exception as exc:  # noqa: BLE001 - handed to the controller, which raises it with the node's name
            channel.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        channel.send(("ok", value))


__all__ = ["Agent", "serve"]
