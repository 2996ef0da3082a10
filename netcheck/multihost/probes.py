"""Cross-host probes: a prober whose captures reach every host and the underlay, the path-MTU
probe (a DF echo of an exact size) and a bulk TCP transfer. Results are plain values."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

from netcheck.evidence import Capture, ProbeKind, ProbeRequest, ProbeResult
from netcheck.kernel.netns import Netns
from netcheck.lab import Lab, LabError
from netcheck.multihost.lab import MultiLab
from netcheck.multihost.nodehost import NodeHost
from netcheck.multihost.nodes import NodesLab
from netcheck.packet import FRAG_NEEDED, ICMP, ICMP_ECHOREPLY, ICMP_UNREACH, VXLAN, decode_ipv4, decode_vxlan, echo_request
from netcheck.probes import Prober
from netcheck.probes.capture import capture_at, icmp_flow, port_flow
from netcheck.probes.engine import IP_MTU_DISCOVER, IP_PMTUDISC_PROBE
from netcheck.services import ServiceHost

T = TypeVar("T")

AnyMulti: TypeAlias = "MultiLab | NodesLab"  # a multi-host lab held in this process, or one whose hosts are served by nodes


class HostView:
    """One host's lab as a prober sees it, with capture points anywhere in the multi-host lab
    (``b/netns0:ceth0``, ``underlay:b``; a bare point is the source host's)."""

    def __init__(self, multi: MultiLab, host: str) -> None:
        self.multi = multi
        self.lab: Lab = multi.hosts[host]
        self.name = host
        self.topology = self.lab.topology
        self.host = self.lab.host
        self.wan = self.lab.wan
        self.host_mode = False
        self.witness = None

    @property
    def services(self) -> ServiceHost | None:
        return self.lab.services

    def container_ns(self, name: str) -> Netns:
        return self.lab.container_ns(name)

    def spec_name(self, kernel_iface: str) -> str:
        return self.lab.spec_name(kernel_iface)

    def holds(self, address: IPv4Address) -> bool:
        return True  # sandbox only: every address is inside netcheck's namespaces

    def resolve_point(self, point: str) -> tuple[Netns, str, str]:
        if "/" in point.partition(":")[0] or point.startswith("underlay:"):
            return self.multi.resolve_point(point)
        return self.lab.resolve_point(point)

    def attachment(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T:
        return self.multi.attachment(key, make, release)


def prober(multi: AnyMulti, host: str, record: Callable[[ProbeResult], None] | None = None) -> Prober | NodeProber:
    """A prober sending from ``host``'s namespaces, capturing anywhere in the multi-host lab (on a
    ``NodesLab``: a prober that asks the host's node to send, see ``netcheck.multihost.nodes``).

    The prober takes a ``Lab``; ``HostView`` has the part of it a prober uses (a structural fit)."""
    if not isinstance(multi, MultiLab):
        return NodeProber(multi, host, record)
    return Prober(HostView(multi, host), record=record)  # type: ignore[arg-type]


def vxlan_seen(multi: AnyMulti, point: str, port: int, t0: float) -> tuple[VXLAN, ...]:
    """The VXLAN datagrams to UDP ``port`` seen at an underlay point since ``t0``, decoded."""
    cap: Capture = capture_at(multi, point).collect(port_flow("udp", port), t0, limit=256) if isinstance(multi, MultiLab) else _underlay_seen(multi, point, port, t0)
    out = []
    for p in cap.packets:
        v = decode_vxlan(p.raw, port)
        if v is not None:
            out.append(v)
    return tuple(out)


def open_capture(multi: AnyMulti, point: str) -> None:
    """Start a capture point before a probe (it sees only what comes after it opened)."""
    if isinstance(multi, MultiLab):
        capture_at(multi, point)
    else:
        _open_on_nodes(multi, point)


@dataclass(frozen=True)
class DfResult:
    """A DF echo of ``size`` bytes (IPv4 header included): answered, told to fragment (with the MTU the router gave), or lost."""

    size: int
    outcome: Literal["reply", "frag-needed", "lost", "error"]
    mtu: int | None = None
    sender: str = ""  # who sent the reply or the ICMP error
    error: str = ""

    def describe(self) -> str:
        what = {"reply": f"echo-reply from {self.sender}", "frag-needed": f"fragmentation-needed from {self.sender} (mtu {self.mtu})",
                "lost": "no answer (no reply, no fragmentation-needed)", "error": self.error}[self.outcome]
        return f"DF echo of {self.size} bytes: {what}"


def df_ping(ns: Netns, dst: str, size: int, *, timeout: float = 1.0) -> DfResult:
    """An ICMP echo of exactly ``size`` bytes with DF set, from ``ns`` to ``dst``."""
    ident = (os.getpid() + int(time.monotonic() * 1000)) & 0xFFFF
    body = echo_request(ident, 1, b"n" * max(0, size - 28))
    sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        try:
            sock.sendto(body, (dst, 0))
        except OSError as exc:
            return DfResult(size, "error", error=f"send failed: {exc.strerror or exc}")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data, peer = sock.recvfrom(65535)
            ip = decode_ipv4(data)
            icmp = ip.payload if ip is not None else None
            if not isinstance(icmp, ICMP):
                continue
            if icmp.type == ICMP_ECHOREPLY and icmp.ident == ident:
                return DfResult(size, "reply", sender=peer[0])
            quoted = icmp.quoted
            if icmp.type == ICMP_UNREACH and icmp.code == FRAG_NEEDED and quoted is not None and isinstance(quoted.payload, ICMP) and quoted.payload.ident == ident:
                return DfResult(size, "frag-needed", mtu=icmp.mtu, sender=peer[0])
        return DfResult(size, "lost")
    finally:
        sock.close()


@dataclass(frozen=True)
class Transfer:
    """A TCP transfer of ``size`` bytes: how much the far end read, and how it ended."""

    size: int
    received: int
    error: str = ""

    @property
    def completed(self) -> bool:
        return self.received == self.size and not self.error

    def describe(self) -> str:
        return f"TCP transfer of {self.size} bytes: {self.received} received" + (f" ({self.error})" if self.error else "")


class Sink:
    """A TCP sink netcheck opens in ``ns`` on ``port`` for one transfer of ``size`` bytes; ``result()`` waits for it: (bytes read, errors)."""

    def __init__(self, ns: Netns, port: int, size: int, *, timeout: float = 3.0) -> None:
        self.size, self.timeout = size, timeout
        self.got = 0
        self.errors: list[str] = []
        self.server = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.server.bind(("0.0.0.0", port))
            self.server.listen(1)
        except BaseException:
            self.server.close()
            raise
        self.thread = threading.Thread(target=self._drain, name="netcheck-sink", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        self.server.settimeout(self.timeout)
        try:
            conn, _ = self.server.accept()
        except OSError as exc:
            self.errors.append(f"no connection: {exc}")
            return
        with conn:
            conn.settimeout(self.timeout)
            try:
                while self.got < self.size and (chunk := conn.recv(65536)):
                    self.got += len(chunk)
            except OSError as exc:
                self.errors.append(f"stalled after {self.got} bytes: {exc}")

    def result(self) -> tuple[int, str]:
        self.thread.join(self.timeout + 1)
        self.server.close()
        return self.got, "; ".join(self.errors)


def send_bytes(src: Netns, dst_addr: str, port: int, size: int, *, timeout: float = 3.0) -> str:
    """Connect from ``src`` and send ``size`` bytes; returns the sender's error ("" if none)."""
    client = src.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.settimeout(timeout)
        client.connect((dst_addr, port))
        client.sendall(b"x" * size)
    except OSError as exc:
        return f"sender: {exc.strerror or exc}"
    finally:
        client.close()
    return ""


def transfer(src: Netns, dst: Netns, dst_addr: str, size: int, *, port: int = 5999, timeout: float = 3.0) -> Transfer:
    """Send ``size`` bytes over TCP from ``src`` to a sink netcheck opens in ``dst`` for this transfer alone."""
    sink = Sink(dst, port, size, timeout=timeout)
    sent = ""
    try:
        sent = send_bytes(src, dst_addr, port, size, timeout=timeout)
    finally:
        got, errors = sink.result()
    return Transfer(size, got, "; ".join(e for e in (errors, sent) if e))


# --------------------------------------------------------------------------- hosts served by nodes (netcheck.multihost.nodes)


class NodeProber:
    """Probes sent by ``host``'s node; capture points on another host are read on that host's node,
    ``underlay:HOST`` here. Points are written as for ``netcheck.multihost.probes.prober``."""

    def __init__(self, multi: NodesLab, host: str, record: Callable[[ProbeResult], None] | None = None) -> None:
        self.multi, self.host, self.record = multi, host, record

    def icmp(self, src: str, dst: str, *, target: str | None = None, capture: Sequence[str] = ()) -> ProbeResult:
        return self._send("icmp", src, dst, 0, capture, target)

    def tcp(self, src: str, dst: str, port: int, *, http: bool = False, target: str | None = None, capture: Sequence[str] = ()) -> ProbeResult:
        return self._send("http" if http else "tcp", src, dst, port, capture, target)

    def _where(self, point: str) -> tuple[str, str]:
        """(host whose node reads it, or "" for this machine's underlay; the point in that host lab's names)."""
        label = point.partition(":")[0]
        if label == "underlay":
            return self.multi.on_node(point) or ("", point)
        host, slash, inner = point.partition("/")
        if slash and "/" not in host and ":" not in host:
            if host not in self.multi.hosts:
                raise LabError(f"capture point {point!r}: no host {host!r} (hosts: {', '.join(self.multi.hosts)})")
            return host, inner
        return self.host, point

    def _send(self, kind: ProbeKind, src: str, dst: str, port: int, capture: Sequence[str], target: str | None) -> ProbeResult:
        where = {p: self._where(p) for p in capture}
        marks: dict[str, float] = {}
        for p, (host, inner) in where.items():
            if host == "":
                capture_at(self.multi, p)
            elif host != self.host:
                marks[p] = self.multi.hosts[host].node.call("capture_open", point=inner)
        t0 = time.time()
        local = [inner for p, (host, inner) in where.items() if host == self.host]
        request = ProbeRequest(kind, src, ip_address(dst), port or None, target=target, capture=tuple(local))
        r = ProbeResult.from_dict(self.multi.hosts[self.host].probe(request.to_dict(), diagnose=False))  # across hosts, the diagnosis needs every host's state: not on one node
        own = iter(r.captures)
        proto, flow = ("icmp" if kind == "icmp" else "tcp"), r.flow_id or 0
        captures: list[Capture] = []
        for p, (host, inner) in where.items():
            if host == self.host:
                c = next(own)
            elif host == "":
                c = capture_at(self.multi, p).collect(icmp_flow(flow) if proto == "icmp" else port_flow("tcp", flow), t0)
            else:
                c = Capture.from_dict(self.multi.hosts[host].node.call("capture_collect", point=inner, proto=proto, flow=flow, since=marks[p]))
            captures.append(replace(c, point=p, netns=p.split(":", 1)[0]))
        r = replace(r, request=replace(r.request, capture=tuple(capture)), captures=tuple(captures))
        if self.record is not None:
            self.record(r)
        return r


class NodeHostProber(Prober):
    """The single-host suites' prober of a host served by its node (``netcheck.multihost.nodehost.NodeHost``): every
    request goes to the node as ``ProbeRequest.to_dict()``, and comes back a ``ProbeResult``, a failed one diagnosed there."""

    def __init__(self, lab: NodeHost, *, record: Callable[[ProbeResult], None] | None = None) -> None:
        super().__init__(lab, record=record)  # type: ignore[arg-type]  # only these two overrides read the lab
        self.node_host = lab

    def conclusive(self, request: ProbeRequest) -> ProbeResult:
        return ProbeResult.from_dict(self.node_host.probe(request.to_dict()))

    def _resolv_conf_seen(self, src: str) -> tuple[Path, str | None]:
        return self.node_host.resolv_conf(src)


def _open_on_nodes(multi: NodesLab, point: str) -> None:
    """Open an underlay capture point (here, or on a real node), to read with ``_underlay_seen``."""
    where = multi.on_node(point)
    if where is None:
        capture_at(multi, point)
    else:
        multi.marks[point] = multi.hosts[where[0]].node.call("capture_open", point=where[1])

def _underlay_seen(multi: NodesLab, point: str, port: int, t0: float) -> Capture:
    """The UDP datagrams to or from ``port`` seen at an underlay point since it opened (here: since ``t0``)."""
    where = multi.on_node(point)
    if where is None:
        return capture_at(multi, point).collect(port_flow("udp", port), t0, limit=256)
    d = multi.hosts[where[0]].node.call("capture_collect", point=where[1], proto="udp", flow=port, since=multi.marks[point], limit=256)
    return replace(Capture.from_dict(d), point=point, netns="underlay")


# --------------------------------------------------------------------------- either kind of multi-host lab


def df_ping_from(multi: AnyMulti, host: str, container: str, dst: str, size: int) -> DfResult:
    """``df_ping`` from a container of ``host``, in-process or on the host's node."""
    if isinstance(multi, MultiLab):
        return df_ping(multi.hosts[host].container_ns(container), dst, size)
    d = multi.hosts[host].node.call("df_ping", src=container, dst=dst, size=size)
    return DfResult(**d)


def transfer_between(multi: AnyMulti, src: tuple[str, str], dst: tuple[str, str], dst_addr: str, size: int) -> Transfer:
    """``transfer`` from container ``src`` (host, container) to ``dst``, in-process or between the hosts' nodes."""
    if isinstance(multi, MultiLab):
        return transfer(multi.hosts[src[0]].container_ns(src[1]), multi.hosts[dst[0]].container_ns(dst[1]), dst_addr, size)
    port, timeout = 5999, 3.0
    sink = multi.hosts[dst[0]].node  # the sink on the target's node, the sender on the source's
    sink.call("sink_open", container=dst[1], port=port, size=size, timeout=timeout)
    sent = ""
    try:
        sent = multi.hosts[src[0]].node.call("send_bytes", container=src[1], addr=dst_addr, port=port, size=size, timeout=timeout)
    finally:
        got = sink.call("sink_result", port=port)
    return Transfer(size, int(got["received"]), "; ".join(e for e in (got["error"], sent) if e))


__all__ = ["DfResult", "HostView", "NodeHostProber", "NodeProber", "Sink", "Transfer", "df_ping", "df_ping_from", "open_capture", "prober", "send_bytes", "transfer", "transfer_between", "vxlan_seen"]
