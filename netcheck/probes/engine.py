"""The prober: sends one probe from a namespace of a lab and returns the evidence as a value.

Captures are opened before sending; the probe itself uses a real kernel socket in the
source namespace (so the OUTPUT chain and the local routing apply as they would to an
application), crafted with scapy where the kernel does not build the packet for us.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Protocol

from netcheck.evidence import Capture, Diagnosis, Expectation, ProbeResult, Verdict
from netcheck.kernel.netns import Netns
from netcheck.probes.capture import CaptureHub, Matcher, arp_flow, icmp_flow, port_flow

if TYPE_CHECKING:
    from netcheck.lab import Lab

POSITIVE_TIMEOUT = 1.0
NEGATIVE_TIMEOUT = 0.3


class ProbeRefused(RuntimeError):
    """A probe that could send a packet off the machine (host mode) is never sent."""


class Diagnoser(Protocol):
    def __call__(self, lab: Lab, result: ProbeResult) -> Diagnosis: ...


def _default_diagnoser(lab: Lab, result: ProbeResult) -> Diagnosis:
    from netcheck.diagnose import diagnose

    return diagnose(lab, result)


class Prober:
    """Sends probes in a lab. Every result goes to ``record`` (the test's evidence log).

    A failed probe is diagnosed (``diagnose=False`` turns that off); a passing one costs
    no inspection at all.
    """

    def __init__(self, lab: Lab, *, record: Callable[[ProbeResult], None] | None = None, diagnose: bool = True, diagnoser: Diagnoser | None = None) -> None:
        self.lab = lab
        self.record = record or (lambda _r: None)
        self.diagnose = diagnose
        self.diagnoser: Diagnoser = diagnoser or _default_diagnoser
        self._ids = _Counter(os.getpid() & 0x7FFF)

    # ----------------------------------------------------------------- endpoints

    def _guard(self, dst: str) -> None:
        """In host mode the host's own routes lead off the machine: send only to what the lab holds."""
        if getattr(self.lab, "host_mode", False) and not self.lab.holds(IPv4Address(dst)):
            raise ProbeRefused(f"refusing to probe {dst} in host mode: the lab does not hold that address, so the packet could leave this machine")

    def _source(self, src: str) -> tuple[Netns, str]:
        """The namespace and the interface a probe leaves from."""
        if src == "host":
            return self.lab.host, ""
        if src == "wan":
            return self.lab.wan, "uplink"
        return self.lab.container_ns(src), self.lab.topology.container(src).interface

    def _captures(self, points: Iterable[str]) -> list[CaptureHub]:
        """The lab's persistent capture points, open (started) before anything is sent."""
        return [self.lab.capture(point) for point in points]

    def _finish(self, result: ProbeResult) -> ProbeResult:
        if self.diagnose and not result.passed:
            try:
                result = result.with_diagnosis(self.diagnoser(self.lab, result))
            except Exception as exc:  # noqa: BLE001 - a broken diagnosis must not hide the failure
                result = result.with_diagnosis(Diagnosis(notes=(f"the diagnosis itself failed: {exc!r}",)))
        self.record(result)
        return result

    def _retry_inconclusive(self, run: Callable[[], ProbeResult]) -> ProbeResult:
        result = run()
        if result.verdict == "inconclusive":
            result = run()
        return self._finish(result)

    # ----------------------------------------------------------------- ICMP

    def icmp(
        self, src: str, dst: str | IPv4Address, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None, ttl: int | None = None,
    ) -> ProbeResult:
        """An ICMP echo from ``src`` (a container, 'host' or 'wan') to ``dst``."""
        return self._retry_inconclusive(lambda: self._icmp(src, str(dst), expect, target, capture, _timeout(timeout, expect), ttl))

    def _icmp(self, src: str, dst: str, expect: Expectation, target: str | None, points: Sequence[str], timeout: float, ttl: int | None) -> ProbeResult:
        self._guard(dst)
        ns, iface = self._source(src)
        ident = self._ids.next()
        token = f"netcheck-{ident:04x}".encode()
        from scapy.layers.inet import ICMP

        payload = bytes(ICMP(type=8, id=ident, seq=1) / token)
        caps = self._captures(points)
        verdict: Verdict = "unreachable"
        reply = error = None
        rtt = None
        src_addr = ""
        sock = None
        t0 = time.time()
        try:
            sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            if ttl is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            t0 = time.time()
            start = time.perf_counter()
            sock.sendto(payload, (dst, 0))
            deadline = start + timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                data, peer = sock.recvfrom(65535)
                ihl = (data[0] & 0x0F) * 4
                itype = data[ihl]
                if itype == 0 and int.from_bytes(data[ihl + 4 : ihl + 6], "big") == ident:
                    rtt = (time.perf_counter() - start) * 1000
                    src_addr = socket.inet_ntoa(data[16:20])
                    reply = f"echo-reply from {peer[0]} ttl={data[8]}"
                    verdict = "reached"
                    break
                if itype in (3, 11) and len(data) >= ihl + 8 + 28:
                    inner = ihl + 8
                    iihl = (data[inner] & 0x0F) * 4
                    if data[inner + 9] == 1 and int.from_bytes(data[inner + iihl + 4 : inner + iihl + 6], "big") == ident:
                        kind = "destination unreachable" if itype == 3 else "time exceeded"
                        error = f"ICMP {kind} (code {data[ihl + 1]}) from {peer[0]}"
                        src_addr = socket.inet_ntoa(data[inner + 12 : inner + 16])
                        break
        except OSError as exc:
            error = f"{exc.strerror or exc}"
            if exc.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH: the source has no route
                verdict = "unreachable"
        finally:
            if sock is not None:
                sock.close()
        captures, verdict, error = _collect(caps, icmp_flow(ident), t0, verdict, error)
        if not src_addr:
            src_addr = self._source_address(src, ns, dst, captures)
        return ProbeResult(
            kind="icmp", topology=self.lab.topology.name, source=src, source_interface=iface, source_address=src_addr,
            destination=dst, sent=f"ICMP echo id={ident:#06x} seq=1 '{token.decode()}'" + (f" ttl={ttl}" if ttl else ""),
            expected=expect, verdict=verdict, captures=captures, target=target, reply=reply,
            replied_by=target if verdict == "reached" else None, rtt_ms=_r(rtt), error=error, started_at=t0,
        )

    # ----------------------------------------------------------------- TCP / HTTP / UDP

    def tcp(
        self, src: str, dst: str | IPv4Address, port: int, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None, http: bool = False,
    ) -> ProbeResult:
        """A TCP handshake plus an exchange with the service at dst:port (echo, or HTTP GET)."""
        return self._retry_inconclusive(lambda: self._stream(src, str(dst), port, expect, target, capture, _timeout(timeout, expect), http))

    def http(self, src: str, dst: str | IPv4Address, port: int, **kw: object) -> ProbeResult:
        return self.tcp(src, dst, port, http=True, **kw)  # type: ignore[arg-type]

    def udp(
        self, src: str, dst: str | IPv4Address, port: int = 7, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None,
    ) -> ProbeResult:
        return self._retry_inconclusive(lambda: self._datagram(src, str(dst), port, expect, target, capture, _timeout(timeout, expect)))

    def _stream(self, src: str, dst: str, port: int, expect: Expectation, target: str | None, points: Sequence[str], timeout: float, http: bool) -> ProbeResult:
        self._guard(dst)
        ns, iface = self._source(src)
        token = f"{self._ids.next():04x}{os.urandom(3).hex()}"
        request = (f"GET /?token={token} HTTP/1.0\r\nHost: {dst}\r\nX-Netcheck: token={token}\r\n\r\n" if http else f"netcheck-probe token={token}\n").encode()
        sock, eport = _client(ns, socket.SOCK_STREAM)
        caps = self._captures(points)
        verdict: Verdict = "unreachable"
        reply = error = replied_by = saw = None
        rtt = None
        src_addr = ""
        t0 = time.time()
        start = time.perf_counter()
        connected = False
        try:
            sock.settimeout(timeout)
            sock.connect((dst, port))
            connected = True
            src_addr = sock.getsockname()[0]
            sock.sendall(request)
            data = _read_all(sock, timeout)
            rtt = (time.perf_counter() - start) * 1000
            reply, replied_by, saw = _parse_reply(data)
            if replied_by is None:
                # The port is open, but whatever answered is not the service netcheck expects there.
                verdict, error = "wrong-target", f"connected, but the reply was not a netcheck service's: {data[:80]!r}"
            elif target is not None and replied_by != target:
                verdict = "wrong-target"
            else:
                verdict = "reached"
        except TimeoutError:
            if connected:
                verdict = "wrong-target"
                error = f"connected (the handshake completed), but no netcheck service answered within {timeout:g}s: something else holds {dst}:{port}"
            else:
                error = f"no answer within {timeout:g}s (the SYN or its reply was lost)"
        except ConnectionRefusedError:
            error = "connection refused: a RST came back (nothing listening, or a REJECT rule)"
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            sock.close()
        proto = "http" if http else "tcp"
        captures, verdict, error = _collect(caps, port_flow("tcp", eport), t0, verdict, error)
        if not src_addr:
            src_addr = self._source_address(src, ns, dst, captures)
        return ProbeResult(
            kind=proto, topology=self.lab.topology.name, source=src, source_interface=iface, source_address=src_addr,
            destination=f"{dst}:{port}", sent=("HTTP GET /" if http else "TCP echo") + f" token={token} from port {eport}",
            expected=expect, verdict=verdict, captures=captures, target=target, reply=reply, replied_by=replied_by,
            service_saw=saw, rtt_ms=_r(rtt), error=error, started_at=t0,
        )

    def _datagram(self, src: str, dst: str, port: int, expect: Expectation, target: str | None, points: Sequence[str], timeout: float) -> ProbeResult:
        self._guard(dst)
        ns, iface = self._source(src)
        token = f"{self._ids.next():04x}{os.urandom(3).hex()}"
        sock, eport = _client(ns, socket.SOCK_DGRAM)
        caps = self._captures(points)
        verdict: Verdict = "unreachable"
        reply = error = replied_by = saw = None
        rtt = None
        t0 = time.time()
        start = time.perf_counter()
        try:
            sock.settimeout(timeout)
            sock.connect((dst, port))
            sock.send(f"netcheck-probe token={token}\n".encode())
            data = sock.recv(4096)
            rtt = (time.perf_counter() - start) * 1000
            reply, replied_by, saw = _parse_reply(data)
            verdict = "wrong-target" if target is not None and replied_by != target else "reached"
        except TimeoutError:
            error = f"no answer within {timeout:g}s"
        except ConnectionRefusedError:
            error = "ICMP port unreachable came back (nothing listening on that UDP port)"
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            src_addr = _sockname(sock)
            sock.close()
        captures, verdict, error = _collect(caps, port_flow("udp", eport), t0, verdict, error)
        return ProbeResult(
            kind="udp", topology=self.lab.topology.name, source=src, source_interface=iface, source_address=src_addr or self._source_address(src, ns, dst, captures),
            destination=f"{dst}:{port}", sent=f"UDP echo token={token} from port {eport}", expected=expect, verdict=verdict,
            captures=captures, target=target, reply=reply, replied_by=replied_by, service_saw=saw, rtt_ms=_r(rtt), error=error, started_at=t0,
        )

    # ----------------------------------------------------------------- ARP

    def arp(self, src: str, ip: str | IPv4Address, *, capture: Sequence[str] = (), timeout: float = POSITIVE_TIMEOUT, target: str | None = None, expect: Expectation = "reach") -> ProbeResult:
        """An ARP who-has for ``ip`` sent from a container's interface; the reply names the MAC."""
        return self._retry_inconclusive(lambda: self._arp(src, str(ip), capture, timeout, target, expect))

    def _arp(self, src: str, ip: str, points: Sequence[str], timeout: float, target: str | None, expect: Expectation) -> ProbeResult:
        from scapy.layers.l2 import ARP, Ether

        ns, iface = self._source(src)
        link = ns.link(iface)
        c = self.lab.topology.container(src)
        assert c.address is not None and link is not None
        frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=link.mac) / ARP(op=1, hwsrc=link.mac, psrc=str(c.address.ip), pdst=ip))
        caps = self._captures(points)
        sock = ns.call(lambda: _arp_socket(iface))
        verdict: Verdict = "unreachable"
        reply = error = None
        rtt = None
        t0 = time.time()
        start = time.perf_counter()
        try:
            sock.send(frame)
            deadline = start + timeout
            while (left := deadline - time.perf_counter()) > 0 and select.select([sock], [], [], left)[0]:
                data = sock.recv(2048)
                if len(data) >= 42 and data[12:14] == b"\x08\x06" and data[20:22] == b"\x00\x02" and socket.inet_ntoa(data[28:32]) == ip:
                    rtt = (time.perf_counter() - start) * 1000
                    reply = ":".join(f"{x:02x}" for x in data[22:28])
                    verdict = "reached"
                    break
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            sock.close()
        captures = tuple(cap.collect(arp_flow(ip), t0) for cap in caps)
        if verdict != "reached" and error is None:
            error = f"no ARP reply for {ip} within {timeout:g}s"
        return ProbeResult(
            kind="arp", topology=self.lab.topology.name, source=src, source_interface=iface, source_address=str(c.address.ip),
            destination=ip, sent=f"ARP who-has {ip} tell {c.address.ip} ({link.mac})", expected=expect, verdict=verdict,
            captures=captures, target=target, reply=reply, replied_by=target if verdict == "reached" else None, rtt_ms=_r(rtt), error=error, started_at=t0,
        )

    # ----------------------------------------------------------------- again, for the diagnosis

    def repeat(self, result: ProbeResult, capture: Sequence[str] = (), *, timeout: float | None = None) -> ProbeResult:
        """Send the same probe again (kind, source, destination, port, expectation, target)
        with other capture points. The repeat is neither diagnosed nor recorded: it is the
        diagnosis's own evidence. Its ICMP identifiers start from a fresh random base, so they
        cannot follow the sequence of probes still in flight from another prober."""
        self._ids = _Counter(secrets.randbelow(0x7FFF) + 0x8000)
        dst, port = result.destination, None
        if result.kind in ("tcp", "http", "udp"):
            dst, _, p = result.destination.rpartition(":")
            port = int(p)
        t = _timeout(timeout, result.expected)
        points = list(capture)
        src, exp, target = result.source, result.expected, result.target

        def once() -> ProbeResult:
            if result.kind == "icmp":
                ttl = re.search(r" ttl=(\d+)$", result.sent)
                return self._icmp(src, dst, exp, target, points, t, int(ttl.group(1)) if ttl else None)
            if result.kind in ("tcp", "http"):
                assert port is not None
                return self._stream(src, dst, port, exp, target, points, t, result.kind == "http")
            if result.kind == "udp":
                assert port is not None
                return self._datagram(src, dst, port, exp, target, points, t)
            if result.kind == "arp":
                return self._arp(src, dst, points, t, target, exp)
            raise ValueError(f"cannot repeat a probe of kind {result.kind!r}")

        again = once()
        return once() if again.verdict == "inconclusive" else again

    # ----------------------------------------------------------------- many at once

    def many(self, probes: Sequence[Callable[[], ProbeResult]], workers: int = 16) -> list[ProbeResult]:
        """Run probes concurrently (negative probes cost their timeout; run them together)."""
        if not probes:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(probes))) as pool:
            return list(pool.map(lambda p: p(), probes))

    # ----------------------------------------------------------------- helpers

    def _source_address(self, src: str, ns: Netns, dst: str, captures: tuple[Capture, ...]) -> str:
        if src not in ("host", "wan"):
            c = self.lab.topology.container(src)
            if c.address is not None:
                return str(c.address.ip)
        route = ns.route_get(IPv4Address(dst))
        return str(route.prefsrc) if not isinstance(route, str) and route.prefsrc else ""


class _Counter:
    """Probe identifiers, unique within the process (thread-safe)."""

    def __init__(self, seed: int) -> None:
        self._value = seed
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._value = (self._value + 1) & 0xFFFF or 1
            return self._value


def _client(ns: Netns, kind: int) -> tuple[socket.socket, int]:
    """A client socket in ``ns``, bound first: its ephemeral port names the probe's flow in captures."""
    sock = ns.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close: no TIME_WAIT pile-up
    sock.bind(("0.0.0.0", 0))
    return sock, sock.getsockname()[1]


def _collect(caps: Sequence[CaptureHub], match: Matcher, t0: float, verdict: Verdict, error: str | None) -> tuple[tuple[Capture, ...], Verdict, str | None]:
    """Each capture point's packets of the probe; a point that did not start makes it inconclusive."""
    captures = tuple(c.collect(match, t0) for c in caps)
    idle = [c.point for c in captures if not c.started]
    if idle:
        verdict = "inconclusive"
        error = (error + "; " if error else "") + "a capture did not start: " + ", ".join(idle)
    return captures, verdict, error


def _timeout(timeout: float | None, expect: Expectation) -> float:
    if timeout is not None:
        return timeout
    return NEGATIVE_TIMEOUT if expect == "block" else POSITIVE_TIMEOUT


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _sockname(sock: socket.socket) -> str:
    with contextlib.suppress(OSError):
        return str(sock.getsockname()[0])
    return ""


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    chunks = []
    deadline = time.perf_counter() + timeout
    while True:
        sock.settimeout(max(0.001, deadline - time.perf_counter()))
        data = sock.recv(4096)
        if not data:
            break
        chunks.append(data)
        if b"\n" in data and not data.startswith(b"HTTP/") and b"HTTP/" not in b"".join(chunks)[:5]:
            break
    return b"".join(chunks)


def _parse_reply(data: bytes) -> tuple[str | None, str | None, str | None]:
    """(reply text, the container that answered, the peer the service saw)."""
    text = data.decode(errors="replace")
    body = text.split("\r\n\r\n", 1)[-1].strip()
    if not body.startswith("netcheck "):
        return (body[:120] or None), None, None
    fields = dict(w.split("=", 1) for w in body.split() if "=" in w)
    return body, fields.get("container"), fields.get("saw")


def _arp_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    s.bind((iface, 0))
    return s
