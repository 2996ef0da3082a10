"""Cross-host probes: a prober whose captures reach every host and the underlay, the path-MTU
probe (a DF echo of an exact size) and a bulk TCP transfer. Results are plain values."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar

from netcheck.evidence import Capture, ProbeResult
from netcheck.kernel.netns import Netns
from netcheck.lab import Lab
from netcheck.multihost.lab import MultiLab
from netcheck.packet import ICMP, ICMP_ECHOREPLY, ICMP_UNREACH, VXLAN, decode_ipv4, decode_vxlan, echo_request
from netcheck.probes import Prober
from netcheck.probes.capture import capture_at, port_flow
from netcheck.services import ServiceHost

IP_MTU_DISCOVER, IP_PMTUDISC_PROBE = 10, 3  # linux/in.h: DF set, the route's cached PMTU ignored
FRAG_NEEDED = 4  # ICMP dest-unreach code
T = TypeVar("T")

if TYPE_CHECKING:
    from netcheck.multihost.nodes import NodeProber, NodesLab

    AnyMulti: TypeAlias = MultiLab | NodesLab  # a multi-host lab held in this process, or one whose hosts are served by nodes


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
        return multi.prober(host, record)
    return Prober(HostView(multi, host), record=record)  # type: ignore[arg-type]


def vxlan_seen(multi: AnyMulti, point: str, port: int, t0: float) -> tuple[VXLAN, ...]:
    """The VXLAN datagrams to UDP ``port`` seen at an underlay point since ``t0``, decoded."""
    cap: Capture = capture_at(multi, point).collect(port_flow("udp", port), t0, limit=256) if isinstance(multi, MultiLab) else multi.underlay_seen(point, port, t0)
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
        multi.open_capture(point)


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
                ihl = (data[0] & 0x0F) * 4
                return DfResult(size, "frag-needed", mtu=struct.unpack_from("!H", data, ihl + 6)[0], sender=peer[0])
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


# --------------------------------------------------------------------------- either kind of multi-host lab


def df_ping_from(multi: AnyMulti, host: str, container: str, dst: str, size: int) -> DfResult:
    """``df_ping`` from a container of ``host``, in-process or on the host's node."""
    if isinstance(multi, MultiLab):
        return df_ping(multi.hosts[host].container_ns(container), dst, size)
    return multi.df_ping(host, container, dst, size)


def transfer_between(multi: AnyMulti, src: tuple[str, str], dst: tuple[str, str], dst_addr: str, size: int) -> Transfer:
    """``transfer`` from container ``src`` (host, container) to ``dst``, in-process or between the hosts' nodes."""
    if isinstance(multi, MultiLab):
        return transfer(multi.hosts[src[0]].container_ns(src[1]), multi.hosts[dst[0]].container_ns(dst[1]), dst_addr, size)
    return multi.transfer(src, dst, dst_addr, size)


__all__ = ["DfResult", "HostView", "Sink", "Transfer", "df_ping", "df_ping_from", "open_capture", "prober", "send_bytes", "transfer", "transfer_between", "vxlan_seen"]
