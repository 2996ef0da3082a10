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
from typing import Protocol

from netcheck import resolvconf
from netcheck.diagnosing import DiagnosingProber
from netcheck.evidence import Capture, ProbeRequest, _encode
from netcheck.kernel import rtnl
from netcheck.kernel.jsontypes import JSON, JSONObject
from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import netns_path
from netcheck.lab import Lab
from netcheck.ledger import LinkEntry, process_starttime
from netcheck.multihost import probes as cross_probes
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.plan import plan
from netcheck.multihost.values import decode, encode, function_of
from netcheck.probes import Prober
from netcheck.probes.capture import Matcher, capture_at, icmp_flow, port_flow
from netcheck.services import ServiceHost

READS = frozenset({"links", "link", "addresses", "routes", "all_routes", "ip_rules", "route_get", "neighbours", "fdb", "bridge_ports", "sysctl"})


class Gateway(Protocol):
    """The part of an execnet gateway the agent uses."""

    def newchannel(self) -> Channel: ...


class Channel(Protocol):
    """The part of an execnet channel the agent uses: it receives requests, ``(op, {args})``, and sends answers."""

    @property
    def gateway(self) -> Gateway: ...
    def receive(self) -> tuple[str, dict[str, object]]: ...
    def send(self, item: object) -> None: ...


class Agent:
    """One node's state: its host lab, the sinks of transfers under way."""

    def __init__(self) -> None:
        self.lab: Lab | None = None
        self.host = ""
        self.sinks: dict[int, cross_probes.Sink] = {}
        self.prober: Prober | None = None
        self.diagnosing: DiagnosingProber | None = None
        self._probers = threading.Lock()

    def _lab(self) -> Lab:
        if self.lab is None:
            raise RuntimeError("no lab on this node yet: send build first")
        return self.lab

    def hello(self) -> JSONObject:
        pid = os.getpid()
        return {"pid": pid, "starttime": process_starttime(pid), "netns_inode": os.stat("/proc/self/ns/net").st_ino}

    def build(self, text: str, source: str, host: str, tag: str, run_dir: str | None) -> JSONObject:
        """Build host ``host`` of the multi-host spec ``text`` as a lab tagged ``tag``, its ledger in ``run_dir`` (the node's default if None)."""
        topology = multi_spec.loads(text, source).host(host).topology
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
        t = multi_spec.loads(text, source)
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

    def probe(self, request: JSONObject, diagnose: bool = False) -> JSONObject:
        """A probe of ``ProbeRequest.to_dict()``, sent here (once more if inconclusive); with ``diagnose``, a failed one
        carries the Diagnosis this node makes of it (``netcheck.diagnose.diagnose`` on its lab, with its own resend)."""
        lab = self._lab()
        with self._probers:  # made once for the lab's life (their ICMP ids follow on), whichever channel asks first
            if diagnose:
                self.diagnosing = diagnosing = self.diagnosing or DiagnosingProber(lab)
            else:
                self.prober = prober = self.prober or Prober(lab)
        if diagnose:
            return diagnosing.send(ProbeRequest.from_dict(request)).to_dict()
        return prober.conclusive(ProbeRequest.from_dict(request)).to_dict()

    def ns_read(self, label: str, method: str, args: list[object]) -> object:
        """One of the reads of ``Netns`` (``READS``) in the lab's namespace ``label``, as values."""
        if method not in READS:
            raise ValueError(f"{method!r} is not a read a node answers (one of {', '.join(sorted(READS))})")
        return encode(getattr(self._ns(label), method)(*_listed(args)))

    def ns_call(self, label: str, function: str, args: list[object], timeout: float) -> object:
        """``module:qualname`` (a module-level netcheck function) called in the namespace ``label``, as values."""
        return encode(self._ns(label).call(function_of(function), *_listed(args), timeout=timeout))

    def ns_run(self, label: str, argv: list[str], timeout: float, input: bytes | None, env: dict[str, str] | None) -> object:
        return encode(self._ns(label).run(argv, timeout=timeout, input=input, env=env))

    def _ns(self, label: str) -> Netns:
        spaces = self._lab().namespaces()
        if label not in spaces:
            raise ValueError(f"no namespace {label!r} in host {self.host}'s lab (known: {', '.join(spaces)})")
        return spaces[label]

    def resolv_conf(self, where: str) -> list[str | None]:
        """(the resolv.conf a program in ``where`` reads here, its text)."""
        lab = self._lab()
        path, text = resolvconf.seen_from(self._ns(where).name) if where in ("host", "wan") else lab.resolv_conf(where)
        return [str(path), text]

    def expected_rules(self) -> object:
        return encode(self._lab().expected_rules())

    def listen(self, label: str, container: str, kind: str, port: int, address: str, users_may_serve: bool) -> object:
        return encode(self._services().listen(self._ns(label), container, kind, port, address, users_may_serve=users_may_serve))

    def stop(self, container: str, kind: str | None) -> int:
        return self._services().stop(container, kind)

    def _services(self) -> ServiceHost:
        services = self._lab().services
        if services is None:
            raise RuntimeError(f"host {self.host}'s lab serves no services of netcheck's own")
        return services

    def inject(self, faults: list[str]) -> list[str]:
        """``netcheck.faults.inject`` on this node's lab: each undo recorded in its ledger; returns the faults applied."""
        from netcheck.faults import inject

        return inject(self._lab(), faults)

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
        out: JSONObject = asdict(cross_probes.df_ping(self._lab().container_ns(src), dst, size))
        return out

    def sink_open(self, container: str, port: int, size: int, timeout: float) -> None:
        self.sinks[port] = cross_probes.Sink(self._lab().container_ns(container), port, size, timeout=timeout)

    def sink_result(self, port: int) -> JSONObject:
        received, error = self.sinks.pop(port).result()
        return {"received": received, "error": error}

    def send_bytes(self, container: str, addr: str, port: int, size: int, timeout: float) -> str:
        return cross_probes.send_bytes(self._lab().container_ns(container), addr, port, size, timeout=timeout)

    def teardown(self) -> None:
        if self.lab is not None:
            for sink in self.sinks.values():
                sink.result()
            self.sinks.clear()
            lab, self.lab = self.lab, None
            self.prober = self.diagnosing = None
            lab.teardown()


def serve(channel: Channel) -> None:
    """Answer the controller's requests until it closes the channel (or sends ``("bye", {})``), one at a time;
    ``probe_channel`` opens a channel of its own for probes, answered at once with the others (``_serve_probes``)."""
    agent = Agent()
    ops: dict[str, Callable[..., JSON | None]] = {
        name: getattr(agent, name) for name in ("hello", "build", "state", "join", "probe", "capture_open", "capture_collect", "df_ping",
                                                "sink_open", "sink_result", "send_bytes", "ns_read", "ns_call", "ns_run", "resolv_conf",
                                                "expected_rules", "listen", "stop", "inject", "teardown")
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
        if op == "probe_channel":
            side = channel.gateway.newchannel()
            threading.Thread(target=_serve_probes, args=(side, agent), name="netcheck-node-probes", daemon=True).start()
            channel.send(("ok", side))
            continue
        with lock:
            channel.send(_answer(ops, op, args))


def _serve_probes(channel: Channel, agent: Agent) -> None:
    """Probes on a channel of their own, each answered as soon as it is done, beside the other channels' (the controller's
    ``Prober.many`` sends its probes at once: a negative one costs its timeout, so they wait together, as in one process)."""
    ops: dict[str, Callable[..., JSON | None]] = {"probe": agent.probe}
    while True:
        try:
            op, args = channel.receive()
        except (EOFError, KeyboardInterrupt):
            return  # the main channel's end decides what this process does
        channel.send(_answer(ops, op, args))


def _listed(args: list[object]) -> list[object]:
    """A request's arguments, their values rebuilt (``values.decode``)."""
    return [decode(a) for a in args]


def _answer(ops: dict[str, Callable[..., object]], op: str, args: dict[str, object]) -> tuple[str, object]:
    try:
        return "ok", ops[op](**args)
    except Exception as exc:  # noqa: BLE001 - handed to the controller, which raises it with the node's name
        return "error", f"{type(exc).__name__}: {exc}"


__all__ = ["Agent", "serve"]
