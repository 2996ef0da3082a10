"""The services a lab's containers run: HTTP (as in the seeds), TCP echo and UDP echo.

Sockets never change namespace, so listening sockets are opened by each container's
namespace worker and all served by one selector thread. Every reply names the container
and the source address and port that the service saw, which is the evidence the NAT
checks need.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from netcheck.kernel.netns import Netns
from netcheck.resolvconf import DNS_PORT

MAX_REQUEST = 4096


SAW_NAME = "saw.netcheck."  # the TXT record, in every DNS answer's additional section, naming the client the server saw


@dataclass(frozen=True)
class Listener:
    container: str
    kind: str  # http, tcp-echo, udp-echo, dns (one UDP and one TCP listener)
    address: str
    port: int
    owner: str = "netcheck"  # "user": the user's setup already serves this port (netcheck probes that service)
    zone: tuple[tuple[str, str], ...] = ()  # dns: (absolute name, IPv4 address) of each A record


def dns_answer(container: str, zone: dict[str, str], peer: tuple[str, int], query: bytes) -> bytes | None:
    """A DNS server's reply to one query: A records from ``zone``, NXDOMAIN for any other name
    (NOERROR and no answer for another type of an existing name); it never recurses. Every reply
    carries a TXT record naming the client it saw, as the echo services do. None: not a query."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    try:
        msg = dns.message.from_wire(query)
    except dns.exception.DNSException:
        return None
    if msg.flags & dns.flags.QR or not msg.question:
        return None
    reply = dns.message.make_response(msg, recursion_available=False)
    reply.flags |= dns.flags.AA
    q = msg.question[0]
    name = q.name.to_text(omit_final_dot=True).lower()
    if name not in zone:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        reply.answer.append(dns.rrset.from_text(q.name, 60, dns.rdataclass.IN, dns.rdatatype.A, zone[name]))
    saw = f"netcheck dns container={container} saw={peer[0]}:{peer[1]}"
    reply.additional.append(dns.rrset.from_text(SAW_NAME, 0, dns.rdataclass.IN, dns.rdatatype.TXT, f'"{saw}"'))
    return reply.to_wire()


def reply_text(container: str, kind: str, peer: tuple[str, int], request: bytes) -> bytes:
    """What a service answers: the container, the service and the peer it saw."""
    token = b""
    for word in request.split():
        if word.startswith(b"token="):
            token = word[6:64]
    body = f"netcheck {kind} container={container} saw={peer[0]}:{peer[1]} token={token.decode(errors='replace')}\n".encode()
    if kind == "http":
        head = f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return head.encode() + body
    return body


class ServiceHost:
    """Serves every listener of a lab from one thread; ``close()`` closes every socket."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None, None))
        self._running = True
        self.listeners: list[Listener] = []
        self._held: list[tuple[socket.socket, Listener]] = []  # the listening sockets, for hand_over
        self._thread = threading.Thread(target=self._loop, name="netcheck-services", daemon=True)
        self._thread.start()

    def listen(self, ns: Netns, container: str, kind: str, port: int, address: str = "0.0.0.0", *, users_may_serve: bool = False) -> Listener:
        """Open a listening socket inside ``ns`` and serve it (port 0: any free port).

        With ``users_may_serve``, a port that something in the container serves already (the seeds'
        own ``python3 -m http.server``) is the user's: it is recorded as such, and probes take that
        service's answer.
        """
        udp = kind == "udp-echo"

        def make() -> socket.socket:
            v6 = ":" in address
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if v6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 peers keep their own listener (and their plain addresses)
                    if udp:  # answer from the address asked (a remote address on lo), not the one the route to the peer would pick
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                s.bind((address, port))
                if not udp:
                    s.listen(128)
                s.setblocking(False)
            except BaseException:
                s.close()  # a socket left open would keep the namespace alive after its teardown
                raise
            return s

        try:
            sock = ns.call(make)
        except OSError as exc:
            proto = "udp" if udp else "tcp"
            if users_may_serve and exc.errno == errno.EADDRINUSE:
                listener = Listener(container, kind, address, port, owner="user")
                with self._lock:
                    self.listeners.append(listener)
                return listener
            raise OSError(exc.errno, f"{container}: cannot listen for {kind} on {address}:{port}/{proto} in netns {ns.name}: {exc.strerror} "
                          f"(is port {port}/{proto} taken by another service of {container}, or by netcheck's echo responders on port 7?)") from None
        return self.adopt(sock, Listener(container, kind, address, sock.getsockname()[1]))

    def user_service(self, container: str, port: int, protocol: str) -> Listener | None:
        """The user's own service at a container's port, if the user's setup serves it (not netcheck)."""
        udp = protocol == "udp"
        with self._lock:
            return next((x for x in self.listeners if x.owner == "user" and x.container == container and x.port == port
                         and (x.kind == "udp-echo") == udp), None)

    def listen_dns(self, ns: Netns, container: str, address: str, zone: dict[str, str]) -> tuple[Listener, Listener]:
        """A DNS server inside ``ns`` on address:53, UDP and TCP, answering ``zone`` (netcheck's own: it never forwards)."""
        records = tuple(sorted(zone.items()))

        def make(kind: int) -> socket.socket:
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, DNS_PORT))
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            return s

        out = []
        for kind, proto in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
            try:
                sock = ns.call(lambda k=kind: make(k))
            except OSError as exc:
                raise OSError(exc.errno, f"{container}: cannot serve DNS on {address}:{DNS_PORT}/{proto} in netns {ns.name}: {exc.strerror}") from None
            out.append(self.adopt(sock, Listener(container, "dns", address, DNS_PORT, zone=records), udp=proto == "udp"))
        return out[0], out[1]

    def adopt(self, sock: socket.socket, listener: Listener, udp: bool | None = None) -> Listener:
        """Serve a listening socket opened elsewhere (in its namespace) for ``listener``."""
        if udp is None:
            udp = sock.type == socket.SOCK_DGRAM
        role = ("dns-udp" if udp else "accept") if listener.kind == "dns" else ("udp" if udp else "accept")
        with self._lock:
            self._sel.register(sock, selectors.EVENT_READ, (role, listener.container, (listener.kind, dict(listener.zone)) if listener.kind == "dns" else listener.kind))
            self.listeners.append(listener)
            self._held.append((sock, listener))
        self._wake()
        return listener

    def hand_over(self, record: Callable[[int], object]) -> int | None:
        """Go on serving every listener from a process of its own, which outlives this one (a kept
        lab keeps its services). ``record(pid)`` must put the process in the lab's ledger: it
        starts serving only after that, and exits if this process dies first. Returns its PID."""
        with self._lock:
            items = [{"fd": s.fileno(), **asdict(x)} for s, x in self._held]
        if not items:
            return None
        argv = [sys.executable, "-m", "netcheck.services", json.dumps(items)]
        proc = subprocess.Popen(argv, pass_fds=[int(it["fd"]) for it in items], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert proc.stdin is not None
        try:
            record(proc.pid)
            proc.stdin.write(b"go\n")
        finally:
            proc.stdin.close()
        return proc.pid

    def stop(self, container: str, kind: str | None = None) -> int:
        """Close a container's listeners (all, or of one kind); returns how many."""
        closed = 0
        with self._lock:
            for key in list(self._sel.get_map().values()):
                role, owner, k = key.data
                k = k[0] if isinstance(k, tuple) else k  # a DNS listener's data: (kind, zone)
                if role in ("accept", "udp", "dns-udp") and owner == container and (kind is None or k == kind):
                    self._sel.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                    closed += 1
            self.listeners = [x for x in self.listeners if not (x.container == container and (kind is None or x.kind == kind))]
            self._held = [(s, x) for s, x in self._held if x in self.listeners]
        self._wake()
        return closed

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        while self._running:
            for key, _ in self._sel.select(timeout=1.0):
                role, container, kind = key.data
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if role == "wake":
                        sock.recv(512)
                    elif role == "udp" and sock.family == socket.AF_INET6:
                        data, anc, _flags, peer = sock.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(20))
                        asked = [(level, kind_, d[:16] + bytes(4)) for level, kind_, d in anc if level == socket.IPPROTO_IPV6 and kind_ == socket.IPV6_PKTINFO]
                        sock.sendmsg([reply_text(container, kind, peer, data)], asked, 0, peer)
                    elif role == "udp":
                        data, peer = sock.recvfrom(MAX_REQUEST)
                        with contextlib.suppress(OSError):  # a reply with no route (to an un-NATed private source) is lost; the listener stays
                            sock.sendto(reply_text(container, kind, peer, data), peer)
                    elif role == "dns-udp":
                        data, peer = sock.recvfrom(MAX_REQUEST)
                        answer = dns_answer(container, kind[1], peer, data)
                        if answer is not None:
                            with contextlib.suppress(OSError):  # as for the UDP echo: the listener outlives an unroutable reply
                                sock.sendto(answer, peer)
                    elif role == "accept":
                        conn, peer = sock.accept()
                        conn.setblocking(False)
                        with self._lock:
                            self._sel.register(conn, selectors.EVENT_READ, ("conn", container, (kind, peer, bytearray())))
                    elif role == "conn":
                        self._on_conn(sock, container, kind)
                except OSError:
                    self._drop(sock)

    def _on_conn(self, conn: socket.socket, container: str, state: tuple[Any, tuple[str, int], bytearray]) -> None:
        kind, peer, buf = state
        chunk = conn.recv(MAX_REQUEST)
        buf += chunk
        if isinstance(kind, tuple):  # dns over TCP: length-prefixed messages, answered while the client keeps the connection
            self._on_dns_stream(conn, container, kind[1], peer, buf, bool(chunk))
            return
        # Every service answers netcheck's probe line; HTTP also answers a whole HTTP request.
        complete = b"\n" in buf if kind != "http" or buf.startswith(b"netcheck-probe") else b"\r\n\r\n" in buf
        if chunk and not complete and len(buf) < MAX_REQUEST:
            return
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(reply_text(container, kind, peer, bytes(buf)))
        self._drop(conn)

    def _on_dns_stream(self, conn: socket.socket, container: str, zone: dict[str, str], peer: tuple[str, int], buf: bytearray, more: bool) -> None:
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            size = int.from_bytes(buf[:2], "big")
            query = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            answer = dns_answer(container, zone, peer, query)
            if answer is None:
                self._drop(conn)
                return
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.settimeout(1.0)
                conn.sendall(len(answer).to_bytes(2, "big") + answer)
                conn.setblocking(False)
        if not more or len(buf) > MAX_REQUEST:
            self._drop(conn)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        sock.close()

    def close(self) -> None:
        self._running = False
        self._wake()
        self._thread.join(5)
        with self._lock:
            for key in list(self._sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._sel.close()
        self._wake_w.close()


def serve_handed_over(items: list[dict[str, Any]]) -> None:
    """The process of ``ServiceHost.hand_over``: wait for the go (EOF: the lab's run died before
    recording this process, so exit), then serve the inherited sockets until SIGTERM."""
    if sys.stdin.readline().strip() != "go":
        return
    host = ServiceHost()
    for it in items:
        host.adopt(socket.socket(fileno=int(it.pop("fd"))), Listener(**it))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        signal.pause()


Factory = Callable[[], ServiceHost]


if __name__ == "__main__":
    serve_handed_over(json.loads(sys.argv[1]))
