"""Capture points: an AF_PACKET socket bound to one interface in one namespace.

The socket is opened (bound) before the probe is sent, so the capture has started by
construction: there is no race to lose. After the probe, the socket is drained and the
packets of the probe's flow are kept, parsed into ``evidence.Packet`` values.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from netcheck.evidence import Capture, Packet
from netcheck.kernel.netns import Netns

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
MAX_FRAME = 65535
_CMSG_SPACE = socket.CMSG_SPACE(16)


@dataclass(frozen=True)
class Header:
    """The fields of a frame that flow matching needs, parsed with struct (microseconds)."""

    proto: str
    src: str
    dst: str
    src_mac: str
    dst_mac: str
    sport: int | None
    dport: int | None
    ttl: int | None
    info: str
    icmp_id: int | None = None
    inner: tuple[str, int | None, int | None, int | None] | None = None  # quoted (proto, id, sport, dport) in an ICMP error


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip(b: bytes) -> str:
    return socket.inet_ntoa(b)


_ICMP_TYPES = {0: "echo-reply", 3: "dest-unreach", 5: "redirect", 8: "echo-request", 11: "time-exceeded"}
_UNREACH = {0: "net", 1: "host", 2: "protocol", 3: "port", 9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
_TCP_FLAGS = "FSRPAUEC"


def parse(frame: bytes) -> Header | None:
    """Parse an Ethernet frame carrying IPv4 (ICMP, TCP, UDP) or ARP; None for anything else."""
    if len(frame) < 14:
        return None
    dst_mac, src_mac = _mac(frame[0:6]), _mac(frame[6:12])
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0806 and len(frame) >= 42:
        op = struct.unpack_from("!H", frame, 20)[0]
        info = "who-has" if op == 1 else "is-at" if op == 2 else f"op{op}"
        return Header("arp", _ip(frame[28:32]), _ip(frame[38:42]), src_mac, dst_mac, None, None, None, f"{info} {_mac(frame[22:28])}" if op == 2 else info)
    if ethertype != 0x0800 or len(frame) < 34:
        return None
    ihl = (frame[14] & 0x0F) * 4
    ttl, proto = frame[22], frame[23]
    src, dst = _ip(frame[26:30]), _ip(frame[30:34])
    l4 = 14 + ihl
    if proto == 1 and len(frame) >= l4 + 8:
        itype, code = frame[l4], frame[l4 + 1]
        name = _ICMP_TYPES.get(itype, f"type{itype}")
        if itype in (0, 8):
            ident, seq = struct.unpack_from("!HH", frame, l4 + 4)
            return Header("icmp", src, dst, src_mac, dst_mac, None, None, ttl, f"{name} id={ident:#06x} seq={seq}", icmp_id=ident)
        inner = _quoted(frame, l4 + 8)
        detail = f" {_UNREACH.get(code, code)}" if itype == 3 else ""
        return Header("icmp", src, dst, src_mac, dst_mac, None, None, ttl, f"{name}{detail}", inner=inner)
    if proto in (6, 17) and len(frame) >= l4 + 8:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        if proto == 6 and len(frame) >= l4 + 14:
            flags = frame[l4 + 13]
            info = "".join(f for i, f in enumerate(_TCP_FLAGS) if flags & (1 << i))
            return Header("tcp", src, dst, src_mac, dst_mac, sport, dport, ttl, info)
        return Header("udp", src, dst, src_mac, dst_mac, sport, dport, ttl, "")
    return Header("other", src, dst, src_mac, dst_mac, None, None, ttl, f"proto {proto}")


def _quoted(frame: bytes, off: int) -> tuple[str, int | None, int | None, int | None] | None:
    if len(frame) < off + 28:
        return None
    ihl = (frame[off] & 0x0F) * 4
    proto = frame[off + 9]
    l4 = off + ihl
    if len(frame) < l4 + 8:
        return None
    if proto == 1:
        return ("icmp", struct.unpack_from("!H", frame, l4 + 4)[0], None, None)
    if proto in (6, 17):
        sport, dport = struct.unpack_from("!HH", frame, l4)
        return ("tcp" if proto == 6 else "udp", None, sport, dport)
    return None


# A matcher tells whether a packet belongs to the probe: "request", "reply", "error" or None.
Matcher = Callable[[Header], str | None]


def icmp_flow(ident: int) -> Matcher:
    def match(h: Header) -> str | None:
        if h.proto != "icmp":
            return None
        if h.icmp_id == ident:
            return "reply" if h.info.startswith("echo-reply") else "request"
        if h.inner is not None and h.inner[0] == "icmp" and h.inner[1] == ident:
            return "error"
        return None

    return match


def port_flow(proto: str, port: int) -> Matcher:
    """Packets of a TCP/UDP flow identified by the client's ephemeral port (kept by NAT)."""

    def match(h: Header) -> str | None:
        if h.proto == proto:
            return "request" if h.sport == port else "reply" if h.dport == port else None
        if h.proto == "icmp" and h.inner is not None and h.inner[0] == proto and h.inner[2] == port:
            return "error"
        return None

    return match


def arp_flow(ip: str) -> Matcher:
    def match(h: Header) -> str | None:
        if h.proto != "arp" or ip not in (h.src, h.dst):
            return None
        return "reply" if h.info.startswith("is-at") else "request"

    return match


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
        self._buffer: deque[tuple[float, Header, bytes, int]] = deque(maxlen=keep)
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
            h = parse(data)
            if h is not None:
                self._buffer.append((_stamp(anc) or time.time(), h, data, addr[2]))

    def collect(self, match: Matcher, t0: float, limit: int = 64) -> Capture:
        """The packets of one flow seen here since ``t0``."""
        packets: list[Packet] = []
        with self._lock:
            self._pump()
            for at, h, data, _kind in self._buffer:
                if at < t0 - 0.001:
                    continue
                role = match(h)
                if role is None:
                    continue
                packets.append(
                    Packet(
                        at_ms=round((at - t0) * 1000, 3),
                        proto=h.proto,
                        src=h.src,
                        dst=h.dst,
                        src_mac=h.src_mac,
                        dst_mac=h.dst_mac,
                        sport=h.sport,
                        dport=h.dport,
                        ttl=h.ttl,
                        info=h.info,
                        role=role,
                        raw=data,
                    )
                )
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
