"""The prober: sends one probe request from a namespace of a lab and returns its evidence as a value.

Captures are opened before sending; the probe itself uses a real kernel socket in the
source namespace (so the OUTPUT chain and the local routing apply as they would to an
application). Where the kernel does not build the packet for us, ``netcheck.packet`` packs
it (an ICMP echo) or scapy builds it (an ARP request); replies are read by ``netcheck.packet``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import resolvconf
from netcheck.evidence import Capture, Expectation, IPAddress, KernelEvent, ProbeKind, ProbeRequest, ProbeResult, RequestError, Verdict
from netcheck.kernel.dropwatch import ICMP as IP_ICMP
from netcheck.kernel.dropwatch import ICMP6 as IP_ICMP6
from netcheck.kernel.dropwatch import TCP as IP_TCP
from netcheck.kernel.dropwatch import UDP as IP_UDP
from netcheck.kernel.dropwatch import DropWaiter, PacketKey, Witness
from netcheck.kernel.netns import Netns
from netcheck.packet import (
    ARP,
    ICMP,
    ICMP_ECHOREPLY,
    ICMPV6_ECHOREPLY,
    ICMPV6_PACKET_TOO_BIG,
    ICMPV6_TIME_EXCEEDED,
    ICMPV6_UNREACH,
    NDP_ADVERT,
    SCTP,
    SCTP_INIT_ACK,
    ICMPv6,
    decode,
    decode_ip,
    decode_ipv4,
    decode_ipv6,
    decode_sctp,
    echo_request,
    echo_request6,
    neighbour_solicitation,
    solicited_node,
)
from netcheck.probes.capture import CaptureHub, Matcher, arp_flow, capture_at, echo_token, icmp_flow, ndp_flow, port_flow

IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, IP_PMTUDISC_PROBE, IPV6_DONTFRAG = 10, 23, 3, 62  # linux/in.h, in6.h: DF set, the route's cached PMTU ignored

if TYPE_CHECKING:
    from netcheck.lab import Lab

POSITIVE_TIMEOUT = 1.0


def _sctp_sockets() -> bool:
    """Does this kernel have SCTP sockets (so a target can answer an INIT)? Asked once, of the kernel, not of a lab."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


SCTP_SOCKETS = _sctp_sockets()
NEGATIVE_TIMEOUT = 0.3


class ProbeRefused(RuntimeError):
    """A probe that could send a packet off the machine (host mode) is never sent."""


class Prober:
    """Sends probes in a lab and returns each one's evidence; every result goes to ``record``.

    ``send(request)`` is the one entry point; ``icmp``, ``tcp``, ``http``, ``udp`` and ``arp``
    make the request. A prober never diagnoses: ``netcheck.diagnosing.DiagnosingProber`` does
    that on top. ``first_id`` starts the ICMP identifiers elsewhere than the process's own
    base (a diagnosis's repeats must not follow another prober's sequence).
    """

    def __init__(self, lab: Lab, *, record: Callable[[ProbeResult], None] | None = None, first_id: int | None = None) -> None:
        self.lab = lab
        self.record = record or (lambda _r: None)
        self._ids = _Counter(os.getpid() & 0x7FFF if first_id is None else first_id)

    # ----------------------------------------------------------------- the entry point

    def send(self, request: ProbeRequest) -> ProbeResult:
        """Send one probe (once more if it was inconclusive) and record its result."""
        result = self.conclusive(request)
        self.record(result)
        return result

    def conclusive(self, request: ProbeRequest) -> ProbeResult:
        """Send one probe, and once more if it was inconclusive; record nothing."""
        result = self._once(request)
        return self._once(request) if result.verdict == "inconclusive" else result

    def _once(self, request: ProbeRequest) -> ProbeResult:
        if request.kind == "icmp":
            return self._icmp(request)
        if request.kind == "arp":
            return self._arp(request)
        if request.kind == "ndp":
            return self._ndp(request)
        if request.kind == "udp":
            return self._datagram(request)
        if request.kind == "dns":
            return self._dns(request)
        if request.kind == "sctp":
            return self._sctp(request)
        return self._stream(request)

    # ----------------------------------------------------------------- the requests

    def icmp(
        self, src: str, dst: str | IPAddress, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None, ttl: int | None = None, size: int | None = None,
    ) -> ProbeResult:
        """An ICMP echo from ``src`` (a container, 'host' or 'wan') to ``dst``; ``size``: that many bytes, with don't-fragment set."""
        return self.send(ProbeRequest("icmp", src, ip_address(dst), expect=expect, target=target, capture=tuple(capture), timeout=timeout, ttl=ttl, size=size))

    def tcp(
        self, src: str, dst: str | IPAddress, port: int, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None, http: bool = False,
    ) -> ProbeResult:
        """A TCP handshake plus an exchange with the service at dst:port (echo, or HTTP GET)."""
        kind: ProbeKind = "http" if http else "tcp"
        return self.send(ProbeRequest(kind, src, ip_address(dst), port, expect=expect, target=target, capture=tuple(capture), timeout=timeout))

    def http(
        self, src: str, dst: str | IPAddress, port: int, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None,
    ) -> ProbeResult:
        """An HTTP GET to the service at dst:port."""
        return self.tcp(src, dst, port, expect=expect, target=target, capture=capture, timeout=timeout, http=True)

    def udp(
        self, src: str, dst: str | IPAddress, port: int = 7, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None, source_port: int | None = None,
    ) -> ProbeResult:
        """A datagram to the UDP echo service at dst:port (from ``source_port``, if given: a long-lived flow's fixed port)."""
        return self.send(ProbeRequest("udp", src, ip_address(dst), port, expect=expect, target=target, capture=tuple(capture), timeout=timeout, source_port=source_port))

    def sctp(
        self, src: str, dst: str | IPAddress, port: int, *, expect: Expectation = "reach", target: str | None = None,
        capture: Sequence[str] = (), timeout: float | None = None,
    ) -> ProbeResult:
        """An SCTP INIT to dst:port, proven by its capture inside ``target`` (rewritten, where a DNAT publishes it); INIT-ACK where the kernel has SCTP."""
        return self.send(ProbeRequest("sctp", src, ip_address(dst), port, expect=expect, target=target, capture=tuple(capture), timeout=timeout))

    def arp(self, src: str, ip: str | IPAddress, *, capture: Sequence[str] = (), timeout: float = POSITIVE_TIMEOUT, target: str | None = None, expect: Expectation = "reach") -> ProbeResult:
        """An ARP who-has for ``ip`` sent from a container's interface; the reply names the MAC."""
        return self.send(ProbeRequest("arp", src, ip_address(ip), expect=expect, target=target, capture=tuple(capture), timeout=timeout))

    def ndp(self, src: str, ip: str | IPAddress, *, capture: Sequence[str] = (), timeout: float = POSITIVE_TIMEOUT, target: str | None = None, expect: Expectation = "reach") -> ProbeResult:
        """An NDP neighbour solicitation for ``ip`` from a container's interface (ARP for IPv6); the advertisement names the MAC."""
        return self.send(ProbeRequest("ndp", src, ip_address(ip), expect=expect, target=target, capture=tuple(capture), timeout=timeout))

    def neighbour(self, src: str, ip: str | IPAddress, **kw: object) -> ProbeResult:
        """ARP for an IPv4 address, NDP for an IPv6 one."""
        return (self.ndp if ip_address(ip).version == 6 else self.arp)(src, ip, **kw)  # type: ignore[arg-type]

    def dns(
        self, src: str, name: str, *, tcp: bool = False, resolver: str | IPAddress | None = None, expect: Expectation = "reach",
        capture: Sequence[str] = (), timeout: float | None = None,
    ) -> ProbeResult:
        """A DNS query for ``name`` (type A) from ``src`` to its resolver: the first nameserver of the resolv.conf
        a program in ``src`` reads (``resolver`` overrides it), through its search list, over UDP or TCP."""
        if resolver is None:
            conf = self.resolv_conf(src)
            resolver = conf.nameservers[0] if conf.nameservers else "127.0.0.1"  # glibc's resolver with no nameserver line
        request = ProbeRequest("dns", src, ip_address(resolver), resolvconf.DNS_PORT, expect=expect, capture=tuple(capture), timeout=timeout,
                               query=name, transport="tcp" if tcp else "udp")
        return self.send(request)

    def resolv_conf(self, src: str) -> resolvconf.ResolvConf:
        """What a program in ``src`` reads as its resolv.conf: /etc/netns/NETNS/resolv.conf, else the machine's (as ``ip netns exec`` shows it)."""
        _path, text = self._resolv_conf_seen(src)
        return resolvconf.parse(text or "")

    def _resolv_conf_seen(self, src: str) -> tuple[Path, str | None]:
        """(the resolv.conf a program in ``src`` reads, its text): a container's as the lab knows it (netcheck.lab.Lab.resolv_conf)."""
        if src in ("host", "wan"):
            return resolvconf.seen_from(self._source(src)[0].name)
        return self.lab.resolv_conf(src)

    # ----------------------------------------------------------------- endpoints

    def _guard(self, dst: IPv4Address | IPv6Address) -> None:
        """In host mode the host's own routes lead off the machine: send only to what the lab holds."""
        if getattr(self.lab, "host_mode", False) and not self.lab.holds(dst):
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
        return [capture_at(self.lab, point) for point in points]

    def _token(self) -> str:
        """A token the services echo back: names a TCP or UDP probe in their replies."""
        return f"{self._ids.next():04x}{os.urandom(3).hex()}"

    def _result(self, request: ProbeRequest, iface: str, src_addr: str, sent: str, verdict: Verdict, captures: tuple[Capture, ...], t0: float,
                rtt: float | None, error: str | None, reply: str | None = None, replied_by: str | None = None, saw: str | None = None,
                flow_id: int | None = None, drop: KernelEvent | None = None) -> ProbeResult:
        return ProbeResult(
            request=request, topology=self.lab.topology.name, source_interface=iface, source_address=src_addr, sent=sent, verdict=verdict,
            captures=captures, reply=reply, replied_by=replied_by, service_saw=saw, rtt_ms=_r(rtt), error=error, started_at=t0,
            flow_id=flow_id, kernel_drop=drop,
        )

    # ----------------------------------------------------------------- the kernel's witness

    def _drop_waiter(self, request: ProbeRequest, protocol: int, flow_id: int, ns: Netns) -> DropWaiter | None:
        """For a request that ends on the kernel's drop: a waiter for the drop of its packets (None
        when the lab has no witness ready). The witness is the lab's, given by its factory."""
        witness: Witness | None = getattr(self.lab, "witness", None)
        if witness is None or not request.ends_on_drop or witness.absent() is not None:
            return None
        dst = _ipv4(request)
        addresses = {str(dst), self._source_address(request.source, ns, dst)}
        if request.target is not None and request.target in {c.name for c in self.lab.topology.containers}:
            target = self.lab.topology.container(request.target).at(dst.version)
            if target is not None:
                addresses.add(str(target.ip))
        return witness.waiter(PacketKey(protocol, frozenset(a for a in addresses if a), flow_id), since_ns=time.monotonic_ns())

    def _drop_event(self, waiter: DropWaiter | None) -> KernelEvent | None:
        """The kernel's drop that ended a probe, in the lab's names (None if none did)."""
        drop = waiter.drop if waiter is not None else None
        witness: Witness | None = getattr(self.lab, "witness", None)
        if drop is None or witness is None:
            return None
        label = witness.labels.get(drop.netns_inode, "?")
        device = self.lab.spec_name(drop.device) if label == "host" and drop.device != "-" else drop.device
        return KernelEvent.of(drop, label, device)

    def _echo_end(self, waiter: DropWaiter | None, caps: Sequence[CaptureHub], ident: int, t0: float, verdict: Verdict,
                  error: str | None) -> tuple[KernelEvent | None, tuple[Capture, ...], Verdict, str | None]:
        """An echo's end: the kernel's drop of an unanswered one names its fate, then its captures are collected."""
        drop = self._drop_event(waiter) if verdict == "unreachable" and error is None else None
        if drop is not None:
            error = f"the kernel dropped it: {drop.line()} ({drop.packet})"
        captures, verdict, error = _collect(caps, icmp_flow(ident), t0, verdict, error)
        return drop, captures, verdict, error

    # ----------------------------------------------------------------- ICMP

    def _icmp(self, request: ProbeRequest) -> ProbeResult:
        if request.destination.version == 6:
            return self._icmp6(request)
        dst, timeout = _ipv4(request), _timeout(request)
        self._guard(dst)
        ns, iface = self._source(request.source)
        ident = self._ids.next()
        token = echo_token(ident)
        payload = echo_request(ident, 1, _padded(token + request.payload, request, 20))
        caps = self._captures(request.capture)
        verdict: Verdict = "unreachable"
        reply = error = None
        rtt = None
        src_addr = ""
        sock = None
        waiter = self._drop_waiter(request, IP_ICMP, ident, ns)
        t0 = time.time()
        try:
            sock = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            if request.ttl is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, request.ttl)
            if request.size is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            t0 = time.time()
            start = time.perf_counter()
            sock.sendto(payload, (str(dst), 0))
            deadline = start + timeout
            while True:
                left = deadline - time.perf_counter()
                ready = select.select([sock.fileno(), *([waiter.fileno()] if waiter else [])], [], [], left)[0] if left > 0 else []
                if sock.fileno() not in ready:
                    break
                data, peer = sock.recvfrom(65535)
                ip = decode_ipv4(data)
                icmp = ip.payload if ip is not None else None
                if ip is None or not isinstance(icmp, ICMP):
                    continue
                if icmp.type == ICMP_ECHOREPLY and icmp.ident == ident:
                    rtt = (time.perf_counter() - start) * 1000
                    src_addr = ip.dst
                    reply = f"echo-reply from {peer[0]} ttl={ip.ttl}"
                    verdict = "reached"
                    break
                quoted = icmp.quoted
                if quoted is not None and isinstance(quoted.payload, ICMP) and quoted.payload.ident == ident:
                    error = icmp.error_text(peer[0])
                    src_addr = quoted.src
                    break
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            _close(sock, waiter)
        drop, captures, verdict, error = self._echo_end(waiter, caps, ident, t0, verdict, error)
        if not src_addr:
            src_addr = self._source_address(request.source, ns, dst)
        sent = f"ICMP echo id={ident:#06x} seq=1 '{token.decode()}'" + (f" ttl={request.ttl}" if request.ttl else "") + _sized(request)
        return self._result(request, iface, src_addr, sent, verdict, captures, t0, rtt, error, reply, target_if(request, verdict), flow_id=ident, drop=drop)

    def _icmp6(self, request: ProbeRequest) -> ProbeResult:
        """An ICMPv6 echo from a raw ICMPv6 socket (the kernel sums it); the reply's hop limit read from its ancillary data."""
        dst, timeout = request.destination, _timeout(request)
        self._guard(dst)
        ns, iface = self._source(request.source)
        ident = self._ids.next()
        token = echo_token(ident)
        payload = echo_request6(ident, 1, _padded(token + request.payload, request, 40))
        caps = self._captures(request.capture)
        verdict: Verdict = "unreachable"
        reply = error = None
        rtt = None
        sock = None
        waiter = self._drop_waiter(request, IP_ICMP6, ident, ns)
        t0 = time.time()
        try:
            sock = ns.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            if request.ttl is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, request.ttl)
            if request.size is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_PROBE)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
            t0 = time.time()
            start = time.perf_counter()
            sock.sendto(payload, _sockaddr6(ns, iface, dst))
            deadline = start + timeout
            while (left := deadline - time.perf_counter()) > 0 and sock.fileno() in select.select([sock.fileno(), *([waiter.fileno()] if waiter else [])], [], [], left)[0]:
                data, anc, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(4))
                if len(data) < 8:
                    continue
                itype, ident_seen = data[0], int.from_bytes(data[4:6], "big")
                if itype == ICMPV6_ECHOREPLY and ident_seen == ident:
                    rtt = (time.perf_counter() - start) * 1000
                    hops = next((int.from_bytes(d[:4], "little") for level, kind, d in anc if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT), None)
                    reply = f"echo-reply from {peer[0]} hlim={hops}"
                    verdict = "reached"
                    break
                if itype in (ICMPV6_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED):
                    quoted = decode_ipv6(data, 8, quoted=True)
                    if quoted is not None and isinstance(quoted.payload, ICMPv6) and quoted.payload.ident == ident:
                        error = _icmp6_error(itype, data[1], peer[0], int.from_bytes(data[4:8], "big"))
                        break
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            _close(sock, waiter)
        drop, captures, verdict, error = self._echo_end(waiter, caps, ident, t0, verdict, error)
        src_addr = self._source_address(request.source, ns, dst)
        sent = f"ICMPv6 echo id={ident:#06x} seq=1 '{token.decode()}'" + (f" hlim={request.ttl}" if request.ttl else "") + _sized(request)
        return self._result(request, iface, src_addr, sent, verdict, captures, t0, rtt, error, reply, target_if(request, verdict), flow_id=ident, drop=drop)

    # ----------------------------------------------------------------- TCP / HTTP / UDP

    def _stream(self, request: ProbeRequest) -> ProbeResult:
        dst, port, timeout, http = _ipv4(request), request.port, _timeout(request), request.kind == "http"
        assert port is not None  # a ported kind: ProbeRequest checks it
        self._guard(dst)
        ns, iface = self._source(request.source)
        token = self._token()
        message = f"GET /?token={token} HTTP/1.0\r\nHost: {dst if dst.version == 4 else f'[{dst}]'}\r\nX-Netcheck: token={token}\r\n\r\n".encode() if http else _echo_line(token, request)
        sock, eport = _client(ns, socket.SOCK_STREAM, dst.version)
        users = self._users_service_point(request)
        caps = self._captures(request.capture if users is None or users in request.capture else (*request.capture, users))
        verdict: Verdict = "unreachable"
        reply = error = replied_by = saw = None
        rtt = None
        src_addr = ""
        waiter = self._drop_waiter(request, IP_TCP, eport, ns)
        t0 = time.time()
        start = time.perf_counter()
        connected = False
        try:
            _connect(sock, (str(dst), port), timeout, waiter)
            connected = True
            src_addr = sock.getsockname()[0]
            sock.sendall(message)
            data = _read_all(sock, timeout)
            rtt = (time.perf_counter() - start) * 1000
            reply, replied_by, saw = _parse_reply(data)
            if replied_by is None:
                # The port is open, but whatever answered is not the service netcheck expects there.
                verdict, error = "wrong-target", f"connected, but the reply was not a netcheck service's: {data[:80]!r}"
            elif request.target is not None and replied_by != request.target:
                verdict = "wrong-target"
            else:
                verdict = "reached"
        except KernelDropped:
            drop = self._drop_event(waiter)
            error = f"the kernel dropped it: {drop.line()} ({drop.packet})" if drop else "the kernel dropped it"
        except TimeoutError:
            if connected:
                verdict = "wrong-target"
                error = f"connected (the handshake completed), but no netcheck service answered within {timeout:g}s: something else holds {request.address}"
            else:
                error = f"no answer within {timeout:g}s (the SYN or its reply was lost)"
        except ConnectionRefusedError:
            error = "connection refused: a RST came back (nothing listening, or a REJECT rule)"
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            sock.close()
            if waiter is not None:
                waiter.close()
        drop = self._drop_event(waiter) if not connected else None
        captures, verdict, error = _collect(caps, port_flow("tcp", eport), t0, verdict, error)
        if not src_addr:
            src_addr = self._source_address(request.source, ns, dst)
        sent = ("HTTP GET /" if http else "TCP echo") + f" token={token} from port {eport}"
        if users is not None and connected and replied_by is None and verdict == "wrong-target":
            # The user's own service answered (it does not speak netcheck's line): the request seen
            # arriving inside the target container is the evidence of who answered and what it saw.
            arrived = next((c.first("request") for c in captures if c.point == users), None)
            if arrived is not None:
                result = self._result(request, iface, src_addr, sent, "reached", captures, t0, rtt, None, reply, request.target, f"{arrived.src}:{arrived.sport}",
                                      flow_id=eport)
                return replace(result, service="user")
            error = f"{error}; the user's own service holds port {port} in {request.target}, but the request was not seen arriving there"
        return self._result(request, iface, src_addr, sent, verdict, captures, t0, rtt, error, reply, replied_by, saw, flow_id=eport,
                            drop=drop if error and error.startswith("the kernel dropped") else None)

    def _users_service_point(self, request: ProbeRequest) -> str | None:
        """The capture point inside the target container when the user's own service holds the port there."""
        services = self.lab.services
        if request.target is None or request.port is None or services is None:
            return None
        if services.user_service(request.target, request.port, request.protocol) is None:
            return None
        return self.lab.point(request.target)

    def _datagram(self, request: ProbeRequest) -> ProbeResult:
        dst, port, timeout = _ipv4(request), request.port, _timeout(request)
        assert port is not None  # a ported kind: ProbeRequest checks it
        self._guard(dst)
        ns, iface = self._source(request.source)
        token = self._token()
        sock, eport = _client(ns, socket.SOCK_DGRAM, dst.version, request.source_port or 0)
        caps = self._captures(request.capture)
        verdict: Verdict = "unreachable"
        reply = error = replied_by = saw = None
        rtt = None
        waiter = self._drop_waiter(request, IP_UDP, eport, ns)
        t0 = time.time()
        start = time.perf_counter()
        try:
            sock.settimeout(timeout)
            sock.connect((str(dst), port))
            sock.send(_echo_line(token, request))
            if waiter is not None and sock.fileno() not in select.select([sock.fileno(), waiter.fileno()], [], [], timeout)[0]:
                raise KernelDropped if waiter.drop is not None else TimeoutError
            data = sock.recv(4096)
            rtt = (time.perf_counter() - start) * 1000
            reply, replied_by, saw = _parse_reply(data)
            verdict = "wrong-target" if request.target is not None and replied_by != request.target else "reached"
        except KernelDropped:
            drop = self._drop_event(waiter)
            error = f"the kernel dropped it: {drop.line()} ({drop.packet})" if drop else "the kernel dropped it"
        except TimeoutError:
            error = f"no answer within {timeout:g}s"
        except ConnectionRefusedError:
            error = "ICMP port unreachable came back (nothing listening on that UDP port)"
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            src_addr = _sockname(sock)
            sock.close()
            if waiter is not None:
                waiter.close()
        drop = self._drop_event(waiter) if error and error.startswith("the kernel dropped") else None
        captures, verdict, error = _collect(caps, port_flow("udp", eport), t0, verdict, error)
        sent = f"UDP echo token={token} from port {eport}"
        return self._result(request, iface, src_addr or self._source_address(request.source, ns, dst), sent, verdict, captures, t0, rtt, error, reply, replied_by, saw,
                            flow_id=eport, drop=drop)

    # ----------------------------------------------------------------- SCTP

    def _sctp(self, request: ProbeRequest) -> ProbeResult:
        """A raw SCTP INIT (built by scapy, sent through a raw socket of the source, so the OUTPUT chain applies). Where the
        kernel has no SCTP sockets (this one has SCTP conntrack and NAT only), the INIT seen arriving inside the target, with
        the target's address and port, is the proof: its source is what a service there would see. Where it has them, the
        target's INIT-ACK coming back completes the exchange."""
        from scapy.layers.sctp import SCTP as ScapySCTP
        from scapy.layers.sctp import SCTPChunkInit

        dst, port, timeout = _ipv4(request), request.port, _timeout(request)
        assert port is not None
        self._guard(dst)
        ns, iface = self._source(request.source)
        family = {4: socket.AF_INET, 6: socket.AF_INET6}[dst.version]
        sport = 1024 + (self._ids.next() % 60000)
        tag = int.from_bytes(os.urandom(4), "big") or 1
        init = bytes(ScapySCTP(sport=sport, dport=port, tag=0) / SCTPChunkInit(init_tag=tag, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=tag))
        inside = self.lab.point(request.target) if request.target is not None and request.target in {c.name for c in self.lab.topology.containers} else None
        points = request.capture if inside is None or inside in request.capture else (*request.capture, inside)
        caps = self._captures(points)
        hub = next((c for c in caps if c.point == inside), None)
        want = self._target_endpoint(request)
        verdict: Verdict = "unreachable"
        reply = error = replied_by = saw = None
        rtt = None
        src_addr = ""
        t0 = time.time()
        start = time.perf_counter()
        sock = ns.socket(family, socket.SOCK_RAW, socket.IPPROTO_SCTP)
        try:
            sock.connect((str(dst), 0))
            src_addr = _sockname(sock)
            sock.send(init)
            deadline = start + timeout
            waits = [sock.fileno(), *([hub.sock.fileno()] if hub is not None and hub.sock is not None else [])]
            while (left := deadline - time.perf_counter()) > 0:
                ready = select.select(waits, [], [], left)[0]
                if sock.fileno() in ready:
                    try:
                        data = sock.recv(65535)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOPROTOOPT, errno.EPROTO):
                            raise
                        # ICMP protocol unreachable (ICMPv6 parameter problem: unrecognised next header) came back through the flow's
                        # conntrack entry: the target's kernel got the INIT and has no SCTP.
                        waits = waits[1:]
                        reply = ("ICMPv6 parameter problem (unrecognised next header)" if dst.version == 6 else "ICMP protocol unreachable") + \
                            " came back (the target's kernel has no SCTP)"
                        data = b""
                    # A raw IPv4 socket reads the IP header too; a raw IPv6 one the SCTP packet alone.
                    ip = decode_ip(data) if dst.version == 4 else None
                    l4 = ip.payload if ip is not None else decode_sctp(data) if data and dst.version == 6 else None
                    if isinstance(l4, SCTP) and l4.dport == sport and l4.vtag == tag and l4.chunk == SCTP_INIT_ACK:
                        rtt = (time.perf_counter() - start) * 1000
                        reply, verdict = f"INIT-ACK from {ip.src if ip else dst}", "reached"
                        replied_by = request.target
                        break
                if hub is not None and saw is None and want is not None:
                    seen = hub.collect(port_flow("sctp", sport), t0).packets
                    arrived = next((p for p in seen if p.role == "request" and (p.dst, p.dport) == want), None)
                    if arrived is not None and arrived.src == want[0]:
                        error = (f"the INIT came back into {request.target} as {arrived.flow}, with {request.target}'s own address as its source: "
                                 "the kernel drops it as a martian (no hairpin MASQUERADE rewrote it)")
                        break
                    if arrived is not None:
                        rtt = (time.perf_counter() - start) * 1000
                        saw, replied_by = arrived.src, request.target
                        verdict = "reached"
                        reply = f"INIT seen in {request.target} as {arrived.flow}" + (f"; {reply}" if reply else "")
                        if not SCTP_SOCKETS or reply.endswith("has no SCTP)"):
                            break
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        finally:
            sock.close()
        if verdict != "reached" and error is None:
            where = f"inside {request.target} as {want[0]}:{want[1]}" if want is not None else "at its target"
            error = f"the INIT was not seen {where} within {timeout:g}s"
        captures, verdict, error = _collect(caps, port_flow("sctp", sport), t0, verdict, error)
        sent = f"SCTP INIT vtag=0 init_tag={tag:#010x} from port {sport}"
        return self._result(request, iface, src_addr or self._source_address(request.source, ns, dst), sent, verdict, captures, t0, rtt, error, reply, replied_by, saw,
                            flow_id=sport)

    def _target_endpoint(self, request: ProbeRequest) -> tuple[str, int] | None:
        """Where a probe should arrive inside its target: the target's address, and the port a published port DNATs to (else the port sent to)."""
        if request.target is None or request.target not in {c.name for c in self.lab.topology.containers}:
            return None
        c = self.lab.topology.container(request.target)
        own = c.at(6 if request.destination.version == 6 else 4)
        if own is None or request.port is None:
            return None
        from netcheck.lab.plan import published_at

        hit = published_at(self.lab.topology, str(request.destination), request.port, request.protocol)
        return str(own.ip), hit[1] if hit is not None else request.port

    # ----------------------------------------------------------------- DNS

    def _dns(self, request: ProbeRequest) -> ProbeResult:
        """The query through the source's search list, one name after another, until one answers with
        an address (or every one is NXDOMAIN); over TCP, all on one connection (length-prefixed)."""
        import dns.exception
        import dns.message
        import dns.rcode
        import dns.rdatatype

        dst, port, timeout = _ipv4(request), request.port, _timeout(request)
        assert port is not None
        ns, iface = self._source(request.source)
        path, text = self._resolv_conf_seen(request.source)
        conf = resolvconf.parse(text or "")
        names = resolvconf.candidates(request.query, conf)
        verdict: Verdict = "unreachable"
        error = reply = saw = rcode = None
        answers: tuple[str, ...] = ()
        rtt = None
        t0 = time.time()
        ours = self.lab.topology.dns.address if self.lab.topology.dns is not None else None
        if not (dst.is_loopback or self.lab.holds(dst)) or (getattr(self.lab, "host_mode", False) and dst != ours):
            # A resolver outside the lab (the machine's own, say) is never asked: nothing may leave the machine. On a real
            # host a tool's resolver (Docker's 127.0.0.11, aardvark-dns) forwards what it does not know to the host's own.
            where = "is not in the lab" if not (dst.is_loopback or self.lab.holds(dst)) else "may forward to this host's own resolvers (host mode asks netcheck's [dns] server only)"
            error = f"not sent: {dst} (from {path}) {where}, and netcheck never asks a resolver outside the lab"
            return self._result(request, iface, self._source_address(request.source, ns, dst), f"DNS {request.transport} A? {request.query} (not sent)",
                                verdict, (), t0, rtt, error)
        tcp = request.transport == "tcp"
        sock, eport = _client(ns, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        caps = self._captures(request.capture)
        asked: list[str] = []
        start = time.perf_counter()
        t0 = time.time()
        try:
            sock.settimeout(timeout)
            sock.connect((str(dst), port))
            for qname in names:
                asked.append(qname)
                query = dns.message.make_query(qname + ".", dns.rdatatype.A)
                wire = query.to_wire()
                if tcp:
                    sock.sendall(len(wire).to_bytes(2, "big") + wire)
                    data = _read_exact(sock, int.from_bytes(_read_exact(sock, 2, timeout), "big"), timeout)
                else:
                    sock.send(wire)
                    data = sock.recv(65535)
                rtt = (time.perf_counter() - start) * 1000
                answer = dns.message.from_wire(data)
                verdict = "reached"
                rcode = dns.rcode.to_text(answer.rcode())
                answers = tuple(r.to_text() for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for r in rrset)
                saw = next((txt.split("saw=", 1)[1].split()[0] for rrset in answer.additional for r in rrset
                            for txt in [r.to_text().strip('"')] if "saw=" in txt), None)
                reply = f"{rcode} {qname}" + (f" A {', '.join(answers)}" if answers else "")
                if answers or answer.rcode() != dns.rcode.NXDOMAIN:
                    break
        except TimeoutError:
            error = f"no answer within {timeout:g}s to the query for {asked[-1] if asked else request.query}"
            verdict = "reached" if reply else "unreachable"
        except ConnectionRefusedError:
            error = "connection refused: a RST came back (nothing serves DNS over TCP there)" if tcp else "ICMP port unreachable came back (nothing serves DNS over UDP there)"
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            error = f"{getattr(exc, 'strerror', None) or exc}"
        finally:
            src_addr = _sockname(sock)
            sock.close()
        captures, verdict, error = _collect(caps, port_flow(request.transport, eport), t0, verdict, error)
        sent = f"DNS {request.transport} A? {' then '.join(asked) or request.query} from port {eport} (resolv.conf: {path})"
        result = self._result(request, iface, src_addr or self._source_address(request.source, ns, dst), sent, verdict, captures, t0, rtt, error, reply,
                              "wan" if saw else None, saw)
        return replace(result, answers=answers, rcode=rcode)

    # ----------------------------------------------------------------- ARP

    def _arp(self, request: ProbeRequest) -> ProbeResult:
        from scapy.layers.l2 import ARP as ScapyARP
        from scapy.layers.l2 import Ether

        ip, src = str(request.destination), request.source
        timeout = request.timeout if request.timeout is not None else POSITIVE_TIMEOUT
        ns, iface = self._source(src)
        link = ns.link(iface)
        c = self.lab.topology.container(src)
        assert c.address is not None and link is not None
        frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=link.mac) / ScapyARP(op=1, hwsrc=link.mac, psrc=str(c.address.ip), pdst=ip))
        caps = self._captures(request.capture)
        sock = ns.call(lambda: _arp_socket(iface))
        t0 = time.time()

        def mac_of(data: bytes) -> str | None:
            answer = decode(data)
            arp = answer.payload if answer is not None else None
            return arp.sender_mac if isinstance(arp, ARP) and arp.op == 2 and arp.sender_ip == ip else None

        rtt, reply, error = _first_answer(sock, lambda: sock.send(frame), mac_of, timeout)
        verdict: Verdict = "reached" if reply is not None else "unreachable"
        captures = tuple(cap.collect(arp_flow(ip), t0) for cap in caps)
        if verdict != "reached" and error is None:
            error = f"no ARP reply for {ip} within {timeout:g}s"
        sent = f"ARP who-has {ip} tell {c.address.ip} ({link.mac})"
        return self._result(request, iface, str(c.address.ip), sent, verdict, captures, t0, rtt, error, reply, target_if(request, verdict))

    def _ndp(self, request: ProbeRequest) -> ProbeResult:
        """NDP in place of ARP: a neighbour solicitation for the address, sent to its solicited-node
        multicast group from the container's interface; the advertisement names the MAC."""
        ip, src = str(request.destination), request.source
        timeout = request.timeout if request.timeout is not None else POSITIVE_TIMEOUT
        ns, iface = self._source(src)
        link = ns.link(iface)
        c = self.lab.topology.container(src)
        assert c.address6 is not None and link is not None
        caps = self._captures(request.capture)
        t0 = time.time()
        sock = ns.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)

        def solicit() -> None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # NDP demands a hop limit of 255 (RFC 4861)
            sock.bind((str(c.address6.ip), 0))  # type: ignore[union-attr]
            sock.sendto(neighbour_solicitation(ip, link.mac), (solicited_node(ip), 0, 0, link.index))

        def mac_of(data: bytes) -> str | None:
            if len(data) >= 24 and data[0] == NDP_ADVERT and socket.inet_ntop(socket.AF_INET6, data[8:24]) == ip:
                return ICMPv6(NDP_ADVERT, data[1], None, None, data[4:], None).ndp_mac
            return None

        rtt, reply, error = _first_answer(sock, solicit, mac_of, timeout)
        verdict: Verdict = "reached" if reply is not None else "unreachable"
        captures = tuple(cap.collect(ndp_flow(ip), t0) for cap in caps)
        if verdict != "reached" and error is None:
            error = f"no neighbour advertisement for {ip} within {timeout:g}s"
        sent = f"NDP neighbor-solicit {ip} from {c.address6.ip} ({link.mac})"
        return self._result(request, iface, str(c.address6.ip), sent, verdict, captures, t0, rtt, error, reply, target_if(request, verdict))

    # ----------------------------------------------------------------- many at once

    def many(self, probes: Sequence[ProbeRequest | Callable[[], ProbeResult]], workers: int = 16) -> list[ProbeResult]:
        """Send requests (or run probe calls) concurrently: negative probes cost their timeout, so run them together."""
        if not probes:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(probes))) as pool:
            return list(pool.map(lambda p: self.send(p) if isinstance(p, ProbeRequest) else p(), probes))

    # ----------------------------------------------------------------- helpers

    def _source_address(self, src: str, ns: Netns, dst: IPv4Address | IPv6Address) -> str:
        if src not in ("host", "wan"):
            own = self.lab.topology.container(src).at(6 if dst.version == 6 else 4)
            if own is not None and not dst.is_loopback:
                return str(own.ip)
        route = ns.route_get(dst)
        return str(route.prefsrc) if not isinstance(route, str) and route.prefsrc else ""


class KernelDropped(Exception):
    """The kernel dropped the probe's packet (its witness said so) before the timeout."""


def _connect(sock: socket.socket, address: tuple[str, int], timeout: float, waiter: DropWaiter | None) -> None:
    """``sock.connect`` with a timeout, ended early by the kernel's drop of the SYN (or its answer)."""
    sock.settimeout(timeout)
    if waiter is None:
        sock.connect(address)
        return
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))
    if code == errno.EINPROGRESS:
        readable, writable, _ = select.select([waiter], [sock], [], timeout)
        if sock not in writable:
            raise KernelDropped if waiter in readable else TimeoutError
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ECONNREFUSED:
            raise ConnectionRefusedError(code, os.strerror(code))
        if code:
            raise OSError(code, os.strerror(code))
    sock.settimeout(timeout)


class _Counter:
    """Probe identifiers, unique within the process (thread-safe)."""

    def __init__(self, seed: int) -> None:
        self._value = seed
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._value = (self._value + 1) & 0xFFFF or 1
            return self._value


def _client(ns: Netns, kind: int, family: int = 4, port: int = 0) -> tuple[socket.socket, int]:
    """A client socket in ``ns`` (IPv6 with ``family`` 6), bound first (to ``port``, 0: an ephemeral one): its port names the probe's flow in captures."""
    sock = ns.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, kind)
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close: no TIME_WAIT pile-up
    sock.bind(("::" if family == 6 else "0.0.0.0", port))
    return sock, sock.getsockname()[1]


def _first_answer(sock: socket.socket, send: Callable[[], object], answer: Callable[[bytes], str | None], timeout: float) -> tuple[float | None, str | None, str | None]:
    """Send once, then read ``sock`` until ``answer(data)`` names the reply or ``timeout`` ends: (rtt in ms, the reply, an error). Closes ``sock``."""
    start = time.perf_counter()
    try:
        send()
        deadline = start + timeout
        while (left := deadline - time.perf_counter()) > 0 and select.select([sock], [], [], left)[0]:
            got = answer(sock.recv(2048))
            if got is not None:
                return (time.perf_counter() - start) * 1000, got, None
    except OSError as exc:
        return None, None, f"{exc.strerror or exc}"
    finally:
        sock.close()
    return None, None, None


def _close(*held: socket.socket | DropWaiter | None) -> None:
    """Close what a probe held (a socket, a drop waiter), whichever it got to."""
    for h in held:
        if h is not None:
            h.close()


def _collect(caps: Sequence[CaptureHub], match: Matcher, t0: float, verdict: Verdict, error: str | None) -> tuple[tuple[Capture, ...], Verdict, str | None]:
    """Each capture point's packets of the probe; a point that did not start makes it inconclusive."""
    captures = tuple(c.collect(match, t0) for c in caps)
    idle = [c.point for c in captures if not c.started]
    if idle:
        verdict = "inconclusive"
        error = (error + "; " if error else "") + "a capture did not start: " + ", ".join(idle)
    return captures, verdict, error


def _timeout(request: ProbeRequest) -> float:
    if request.timeout is not None:
        return request.timeout
    return NEGATIVE_TIMEOUT if request.expect == "block" else POSITIVE_TIMEOUT


def _ipv4(request: ProbeRequest) -> IPv4Address | IPv6Address:
    """The request's destination; IPv6 for ICMP(v6), TCP, HTTP, UDP and NDP probes (DNS asks IPv4 resolvers only)."""
    dst = request.destination
    if not isinstance(dst, IPv4Address) and request.kind == "dns":
        raise RequestError(f"{request.kind} probe to {dst}: DNS probes ask IPv4 resolvers only so far. Fix: give the resolver's IPv4 address")
    return dst


def _sockaddr6(ns: Netns, iface: str, dst: IPv4Address | IPv6Address) -> tuple[str, int, int, int] | tuple[str, int]:
    """Where an IPv6 probe goes: a link-local address is scoped to the source's interface (its index in the
    source's namespace: the calling thread may be in another, where the name means nothing)."""
    if not (isinstance(dst, IPv6Address) and dst.is_link_local):
        return (str(dst), 0)
    link = ns.link(iface) if iface else None
    return (str(dst).split("%")[0], 0, 0, link.index if link is not None else 0)


def _icmp6_error(itype: int, code: int, sender: str, mtu: int) -> str:
    """An ICMPv6 error as the result names it."""
    if itype == ICMPV6_TIME_EXCEEDED:
        return f"ICMPv6 time exceeded from {sender}"
    if itype == ICMPV6_PACKET_TOO_BIG:
        return f"ICMPv6 packet too big (mtu {mtu}) from {sender}"
    reasons = {0: "no route", 1: "administratively prohibited", 3: "address unreachable", 4: "port unreachable", 5: "source address failed policy", 6: "reject route"}
    return f"ICMPv6 destination unreachable ({reasons.get(code, f'code {code}')}) from {sender}"


def _padded(data: bytes, request: ProbeRequest, ip_header: int) -> bytes:
    """The echo's data, filled up so that the packet is ``request.size`` bytes (ProbeRequest checked that it fits)."""
    return data if request.size is None else data + b"n" * (request.size - ip_header - 8 - len(data))


def _sized(request: ProbeRequest) -> str:
    return f" size={request.size} DF" if request.size is not None else ""


def target_if(request: ProbeRequest, verdict: Verdict) -> str | None:
    """Who answered an echo (ICMP, ARP): the expected target, if it was reached."""
    return request.target if verdict == "reached" else None


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _sockname(sock: socket.socket) -> str:
    with contextlib.suppress(OSError):
        return str(sock.getsockname()[0])
    return ""


def _echo_line(token: str, request: ProbeRequest) -> bytes:
    """The echo services' one-line request: the token, then the request's payload."""
    return f"netcheck-probe token={token}".encode() + (b" " + request.payload if request.payload else b"") + b"\n"


def _read_exact(sock: socket.socket, size: int, timeout: float) -> bytes:
    """Exactly ``size`` bytes (a DNS-over-TCP length prefix, then its message); EOFError if the peer closes first."""
    buf = b""
    deadline = time.perf_counter() + timeout
    while len(buf) < size:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise EOFError(f"the resolver closed the connection after {len(buf)} of {size} bytes")
        buf += chunk
    return buf


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
