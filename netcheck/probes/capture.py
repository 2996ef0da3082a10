"""Capture points: an AF_PACKET socket bound to one interface in one namespace.

The socket is opened (bound) before the probe is sent, so the capture has started by
construction: there is no race to lose. After the probe, the socket is drained and the
packets of the probe's flow are kept: decoded by ``netcheck.packet``, shown as ``evidence.Packet``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

from netcheck.evidence import Capture, Packet, Role
from netcheck.kernel.netns import Netns
from netcheck.packet import ARP, ICMP, ICMP_ECHOREPLY, ICMPV6_ECHOREPLY, NDP_ADVERT, SCTP, TCP, UDP, Ethernet, ICMPv6, IPv4, IPv6, decode

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
MAX_FRAME = 65535
_CMSG_SPACE = socket.CMSG_SPACE(16)

T = TypeVar("T")


# A matcher tells whether a decoded frame belongs to the probe: its role, or None.
Matcher = Callable[[Ethernet], Role | None]


def _ip_of(frame: Ethernet) -> IPv4 | IPv6 | None:
    p = frame.payload
    return p if isinstance(p, (IPv4, IPv6)) else None


def echo_token(ident: int) -> bytes:
    """The start of an echo probe's data (evidence.TOKEN_SIZE bytes): it names the probe where a NAT changed its identifier."""
    return f"netcheck-{ident:04x}".encode()


def icmp_flow(ident: int) -> Matcher:
    """An ICMP echo's packets by identifier, or by the probe's token in its data (a NAT remaps the identifier when
    another flow's conntrack entry holds it: a container that came back with a new address), and the errors that quote it."""
    token = echo_token(ident)

    def match(frame: Ethernet) -> Role | None:
        ip = _ip_of(frame)
        if ip is None or not isinstance(ip.payload, (ICMP, ICMPv6)):
            return None
        icmp = ip.payload
        if icmp.is_echo:
            ours = icmp.ident == ident or icmp.data.startswith(token)
            return None if not ours else "reply" if icmp.type in (ICMP_ECHOREPLY, ICMPV6_ECHOREPLY) else "request"
        quoted = icmp.quoted
        if quoted is not None and isinstance(quoted.payload, (ICMP, ICMPv6)) and quoted.payload.ident == ident:
            return "error"
        return None

    return match


def port_flow(proto: Literal["tcp", "udp", "sctp"], port: int) -> Matcher:
    """Packets of a TCP/UDP/SCTP flow identified by the client's ephemeral port (kept by NAT), and the errors that quote it."""
    kind = TCP if proto == "tcp" else UDP if proto == "udp" else SCTP

    def match(frame: Ethernet) -> Role | None:
        ip = _ip_of(frame)
        if ip is None:
            return None
        l4 = ip.payload
        if isinstance(l4, kind):
            return "request" if l4.sport == port else "reply" if l4.dport == port else None
        if isinstance(l4, (ICMP, ICMPv6)) and l4.quoted is not None and isinstance(l4.quoted.payload, kind) and l4.quoted.payload.sport == port:
            return "error"
        return None

    return match


def ndp_flow(ip: str) -> Matcher:
    """NDP's neighbour solicitations and advertisements for ``ip`` (ARP's IPv6 counterpart)."""

    def match(frame: Ethernet) -> Role | None:
        ip6 = frame.payload
        if not isinstance(ip6, IPv6) or not isinstance(ip6.payload, ICMPv6) or ip6.payload.ndp_target != ip:
            return None
        return "reply" if ip6.payload.type == NDP_ADVERT else "request"

    return match


def arp_flow(ip: str) -> Matcher:
    def match(frame: Ethernet) -> Role | None:
        arp = frame.payload
        if not isinstance(arp, ARP) or ip not in (arp.sender_ip, arp.target_ip):
            return None
        return "reply" if arp.op == 2 else "request"

    return match


def evidence_packet(frame: Ethernet, raw: bytes, at_ms: float, role: Role) -> Packet:
    """A decoded frame as the evidence shows it."""
    p = frame.payload
    if isinstance(p, ARP):
        return Packet(at_ms, "arp", p.sender_ip, p.target_ip, frame.src, frame.dst, info=p.describe(), role=role, raw=raw)
    if p is None:
        return Packet(at_ms, "other", "", "", frame.src, frame.dst, info=f"ethertype {frame.ethertype:#06x}", role=role, raw=raw)
    ttl = p.ttl if isinstance(p, IPv4) else p.hop_limit
    l4 = p.payload
    if isinstance(l4, TCP):
        return Packet(at_ms, "tcp", p.src, p.dst, frame.src, frame.dst, l4.sport, l4.dport, ttl, l4.flag_text, role, raw)
    if isinstance(l4, SCTP):
        return Packet(at_ms, "sctp", p.src, p.dst, frame.src, frame.dst, l4.sport, l4.dport, ttl, l4.chunk_name, role, raw)
    if isinstance(l4, UDP):
        return Packet(at_ms, "udp", p.src, p.dst, frame.src, frame.dst, l4.sport, l4.dport, ttl, "", role, raw)
    if isinstance(l4, ICMP):
        return Packet(at_ms, "icmp", p.src, p.dst, frame.src, frame.dst, None, None, ttl, l4.describe(), role, raw)
    if isinstance(l4, ICMPv6):
        return Packet(at_ms, "icmp6", p.src, p.dst, frame.src, frame.dst, None, None, ttl, l4.describe(), role, raw)
    proto = p.proto if isinstance(p, IPv4) else p.next_header
    return Packet(at_ms, "other", p.src, p.dst, frame.src, frame.dst, None, None, ttl, f"proto {proto}", role, raw)


class CaptureHub:
    """One persistent capture point: an AF_PACKET socket bound to an interface in a namespace.

    Opening and closing a packet socket costs milliseconds (the kernel waits for an RCU grace
    period), so a lab keeps one per point and closes it at teardown, before its namespace
    goes. Probes share it: ``collect`` reads what is pending into a short buffer and returns
    the packets of one flow sent since ``t0``, so concurrent probes each get their own.
    """

    def __init__(self, point: str, ns: Netns, interface: str, kernel_interface: str, keep: int = 4096) -> None:
        self.point, self.ns, self.interface, self.kernel_interface = point, ns, interface, kernel_interface
        self.error: str | None = None
        self.sock: socket.socket | None = None
        self._buffer: deque[tuple[float, Ethernet, bytes]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        try:
            self.sock = ns.call(self._open)
        except OSError as exc:
            self.error = f"{exc.strerror or exc}"

    @property
    def started(self) -> bool:
        return self.sock is not None

    def _open(self) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.bind((self.kernel_interface, 0))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def _pump(self) -> None:
        """Move what the socket holds into the buffer (call with the lock held)."""
        if self.sock is None:
            return
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(MAX_FRAME, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING and self.kernel_interface == "lo":
                continue  # lo shows each packet twice
            frame = decode(data)
            if frame is not None:
                self._buffer.append((_stamp(anc) or time.time(), frame, data))

    def collect(self, match: Matcher, t0: float, limit: int = 64) -> Capture:
        """The packets of one flow seen here since ``t0``."""
        packets: list[Packet] = []
        with self._lock:
            self._pump()
            for at, frame, data in self._buffer:
                if at < t0 - 0.001:
                    continue
                role = match(frame)
                if role is None:
                    continue
                packets.append(evidence_packet(frame, data, round((at - t0) * 1000, 3), role))
                if len(packets) >= limit:
                    break
        return Capture(self.point, self.point.split(":", 1)[0], self.interface, self.kernel_interface, started=self.started, packets=tuple(packets))

    def close(self) -> None:
        with self._lock:
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.close()
                self.sock = None
            self._buffer.clear()


class CapturePoints:
    """A lab's persistent capture points by name, opened on first use and closed together."""

    def __init__(self, resolve: Callable[[str], tuple[Netns, str, str]]) -> None:
        self._resolve = resolve  # point -> (namespace, kernel interface, spec interface)
        self._hubs: dict[str, CaptureHub] = {}
        self._lock = threading.Lock()

    def get(self, point: str) -> CaptureHub:
        with self._lock:
            hub = self._hubs.get(point)
            if hub is None or not hub.started:
                ns, kernel, spec_iface = self._resolve(point)
                hub = CaptureHub(point, ns, spec_iface, kernel)
                self._hubs[point] = hub
            return hub

    def close(self) -> None:
        with self._lock:
            for hub in self._hubs.values():
                hub.close()
            self._hubs.clear()


class HoldsAttachments(Protocol):
    """A lab (or the doctor's view of live namespaces) that keeps what its users open in it, and releases it."""

    def resolve_point(self, point: str) -> tuple[Netns, str, str]: ...

    def attachment(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T: ...


def capture_at(lab: HoldsAttachments, point: str) -> CaptureHub:
    """The lab's persistent capture socket at ``point``, opened on first use and closed at its teardown.

    The capture points are the prober's, held by the lab as an attachment: the lab never knows their type.
    """
    points = lab.attachment(CapturePoints, lambda: CapturePoints(lab.resolve_point), CapturePoints.close)
    return points.get(point)


def _stamp(anc: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return float(sec + nsec / 1e9)
    return None


def dissect(raw: bytes) -> str:
    """A full scapy dissection of one captured frame, for reports and debugging."""
    from scapy.layers.l2 import Ether

    return str(Ether(raw).show(dump=True))


def summary(raw: bytes) -> str:
    from scapy.layers.l2 import Ether

    return str(Ether(raw).summary())
