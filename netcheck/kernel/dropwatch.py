"""The kernel as witness: every packet the kernel drops, with its reason, place and namespace.

One ``bpftrace`` per run attaches to the ``skb:kfree_skb`` tracepoint (this kernel has no kprobes,
so pwru-style tools cannot run; the tracepoint can). The tracepoint is machine-wide and has no
namespace field, so the program reads the namespace from the skb itself (its device's, else its
socket's) with the kernel's BTF, and prints each drop with the packet's addresses. A run keeps only
the drops in its own namespaces: two runs at once never see each other's events.

bpftrace wants tracefs at ``/sys/kernel/tracing``, which is not mounted here. It runs in a mount
namespace of its own (``unshare --mount --propagation private``) where tracefs is mounted, so the
mount exists only while that process lives and the machine's mounts are never changed. The process
is the one object a watch creates: its PID is handed to ``record`` as soon as it exists, and
``close()`` ends it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from netcheck.waiting import WaitTimeout, wait_until

TRACEFS = "/sys/kernel/tracing"
FORMAT = f"{TRACEFS}/events/skb/kfree_skb/format"
INSTALL_HINT = "apt-get install -y --no-install-recommends bpftrace"
READY_TIMEOUT = 30.0  # bpftrace parses the kernel's BTF before it attaches: seconds, once per run
KEPT = 20000  # drops kept in memory (a busy machine drops a few hundred packets a second)

# Reasons 0-2 are "not dropped yet", "consumed" and "not specified": no witness to anything.
PROGRAM = r"""
tracepoint:skb:kfree_skb /args->reason > 2/ {
  $s = (struct sk_buff *)args->skbaddr;
  $ns = (uint32)0; $dev = "-";
  if ($s->dev != 0) { $ns = $s->dev->nd_net.net->ns.inum; $dev = $s->dev->name; }
  else if ($s->sk != 0) { $ns = $s->sk->__sk_common.skc_net.net->ns.inum; }
  if (args->protocol == 0x0800) {
    $ip = (struct iphdr *)($s->head + $s->network_header);
    $l4 = (uint8 *)($s->head + $s->network_header + ((*(uint8 *)($s->head + $s->network_header)) & 15) * 4);
    $w0 = (uint32)(*$l4) * 256 + (uint32)(*($l4 + 1)); $w1 = (uint32)(*($l4 + 2)) * 256 + (uint32)(*($l4 + 3));
    $w2 = (uint32)(*($l4 + 4)) * 256 + (uint32)(*($l4 + 5));
    printf("D %llu %u %d %s %s %d %s %s %u %u %u\n", nsecs, $ns, args->reason, $dev, ksym(args->location), $ip->protocol, ntop(2, $ip->saddr), ntop(2, $ip->daddr),
           $w0, $w1, $w2);
  } else if (args->protocol == 0x86DD) {
    $ip6 = (struct ipv6hdr *)($s->head + $s->network_header);
    $m = (uint8 *)($s->head + $s->network_header + 40);
    $v0 = (uint32)(*$m) * 256 + (uint32)(*($m + 1)); $v1 = (uint32)(*($m + 2)) * 256 + (uint32)(*($m + 3));
    $v2 = (uint32)(*($m + 4)) * 256 + (uint32)(*($m + 5));
    printf("D %llu %u %d %s %s %d %s %s %u %u %u\n", nsecs, $ns, args->reason, $dev, ksym(args->location), $ip6->nexthdr,
           ntop(10, $ip6->saddr.in6_u.u6_addr8), ntop(10, $ip6->daddr.in6_u.u6_addr8), $v0, $v1, $v2);
  } else {
    printf("D %llu %u %d %s %s -1 - -\n", nsecs, $ns, args->reason, $dev, ksym(args->location));
  }
}
BEGIN { printf("READY\n"); }
"""
# A constant script (no user input reaches it): mount tracefs in the private mount namespace, print the
# tracepoint's format (it names the drop reasons), then become bpftrace. Arguments are passed as argv.
LAUNCH = f'mount -t tracefs nodev {TRACEFS} && cat {FORMAT} && echo FORMAT-END && exec "$0" "$@"'
_SYMBOLIC = re.compile(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}')
_EVENT = re.compile(r"^D (\d+) (\d+) (\d+) (\S+) (\S+) (-?\d+) (\S+) (\S+)(?: (\d+) (\d+) (\d+))?$")


class DropWatchError(RuntimeError):
    """The watch cannot run here; the message says why and what would make it work."""


@dataclass(frozen=True)
class KernelDrop:
    """One packet the kernel freed as dropped: when (CLOCK_MONOTONIC ns), where, and why."""

    at_ns: int
    netns_inode: int
    reason: str  # e.g. NETFILTER_DROP, IP_RPFILTER, IP_INNOROUTES, NEIGH_FAILED
    device: str  # "-" when the skb had no device (e.g. locally generated, dropped before routing)
    location: str  # the kernel function that dropped it, e.g. nft_do_chain, ip_forward
    protocol: int  # IP protocol (1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6, 132 SCTP); -1 when not IP
    src: str
    dst: str
    sport: int | None = None  # TCP/UDP ports; for ICMP and ICMPv6, sport is the echo identifier
    dport: int | None = None
    icmp_type: int | None = None

    @property
    def src_at(self) -> str:
        return _at(self.src, None if self.protocol in ECHO else self.sport)

    @property
    def dst_at(self) -> str:
        return _at(self.dst, None if self.protocol in ECHO else self.dport)

    def describe(self) -> str:
        on = f" on {self.device}" if self.device != "-" else ""
        return f"kernel drop: {self.reason} at {self.location}{on} ({self.src_at} > {self.dst_at})"


ICMP, TCP, UDP, ICMP6 = 1, 6, 17, 58
ECHO = (ICMP, ICMP6)  # the protocols whose packets a probe names by its echo identifier (the drop's sport)


def _at(address: str, port: int | None) -> str:
    """``10.0.0.1:80``, ``[fd00::1]:80``, or the address alone."""
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def reason_names(format_text: str) -> dict[int, str]:
    """Drop reason numbers -> names, from the tracepoint's format (its ``__print_symbolic`` table)."""
    return {int(n): name for n, name in _SYMBOLIC.findall(format_text)}


def parse_event(line: str, reasons: dict[int, str]) -> KernelDrop | None:
    m = _EVENT.match(line.strip())
    if m is None:
        return None
    at, ns, reason, dev, loc, proto, src, dst, w0, w1, w2 = m.groups()
    location = loc.split("+", 1)[0]
    sport = dport = icmp_type = None
    if w0 is not None and int(proto) in (TCP, UDP):
        sport, dport = int(w0), int(w1)
    elif w0 is not None and int(proto) in ECHO:
        sport, icmp_type = int(w2), int(w0) >> 8
    return KernelDrop(int(at), int(ns), reasons.get(int(reason), f"reason {reason}"), dev, location, int(proto), src, dst, sport, dport, icmp_type)


class Packet(Protocol):
    """What a packet key reads of a packet: a ``KernelDrop``, or a step of the nft trace."""

    @property
    def protocol(self) -> int: ...
    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def sport(self) -> int | None: ...
    @property
    def dport(self) -> int | None: ...


@dataclass(frozen=True)
class PacketKey:
    """What names one probe's packets in the kernel's drops, both ways and through NAT.

    ``addresses`` are every address the probe may carry (its source, its destination, the
    DNAT target), of either family; ``port`` is the probe's own end: its TCP/UDP client port,
    or its ICMP or ICMPv6 echo identifier. A drop matches if it is of the protocol, carries that port on either
    end, and one of its addresses is the probe's. Without a port, addresses alone decide.
    """

    protocol: int
    addresses: frozenset[str]
    port: int | None = None

    def matches(self, d: Packet) -> bool:
        if d.protocol != self.protocol or not ({d.src, d.dst} & self.addresses):
            return False
        if self.port is None or d.sport is None:
            return True
        if self.protocol in ECHO:
            return d.sport == self.port
        return self.port in (d.sport, d.dport)


def unavailable() -> str | None:
    """Why no watch can run on this machine (None: it can)."""
    if shutil.which("bpftrace") is None:
        return f"bpftrace is not installed ({INSTALL_HINT})"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux), which bpftrace needs to read the skb"
    if os.geteuid() != 0:
        return "attaching to a tracepoint needs root"
    return None


class DropWatch:
    """Watches the kernel's drops from ``start()`` to ``close()``; ``drops()`` and ``wait_for()`` read them.

        with DropWatch() as watch:
            watch.wait_ready()
            ...
            watch.drops({inode}, since_ns=t0)
    """

    def __init__(self, *, record: Callable[[int], None] = lambda _pid: None) -> None:
        self._record = record
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._events: deque[KernelDrop] = deque(maxlen=KEPT)
        self._cv = threading.Condition()
        self._ready = False
        self._ended: str | None = None
        self._lines: deque[str] = deque(maxlen=20)  # the last lines bpftrace printed, for error messages
        self.reasons: dict[int, str] = {}
        self._waiters: list[DropWaiter] = []

    def __enter__(self) -> DropWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> DropWatch:
        why = unavailable()
        if why:
            raise DropWatchError(f"cannot watch the kernel's drops: {why}")
        # Unbuffered output (each drop reaches us at once), and a ring buffer big enough that a busy
        # machine's drops are not lost before bpftrace reads them (bpftrace says "Lost N events" if they are).
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", LAUNCH, "bpftrace", "-B", "none", "-e", PROGRAM]
        env = {**os.environ, "BPFTRACE_PERF_RB_PAGES": "1024"}
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self._record(self._proc.pid)
        self._reader = threading.Thread(target=self._read, name="netcheck-dropwatch", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        proc = self._proc  # close() may clear the attribute while this thread still reads
        assert proc is not None and proc.stdout is not None
        format_lines: list[str] | None = []
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if format_lines is not None:
                if line == "FORMAT-END":
                    self.reasons = reason_names("\n".join(format_lines))
                    format_lines = None
                else:
                    format_lines.append(line)
                continue
            event = parse_event(line, self.reasons) if line.startswith("D ") else None
            with self._cv:
                if event is not None:
                    self._events.append(event)
                    for w in self._waiters:
                        w.offer(event)
                elif line == "READY":
                    self._ready = True
                else:
                    self._lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._ended = f"bpftrace ended (exit {proc.wait()}): " + " | ".join(self._lines)
            self._cv.notify_all()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until bpftrace has attached: drops before that are not seen."""
        try:
            wait_until(lambda: self._ready or self._ended is not None, timeout=timeout, what="bpftrace to attach to skb:kfree_skb",
                       describe=lambda: " | ".join(self._lines) or "nothing printed yet")
        except WaitTimeout as exc:
            raise DropWatchError(str(exc)) from None
        if not self._ready:
            raise DropWatchError(f"cannot watch the kernel's drops: {self._ended}")

    def recent_output(self) -> str:
        """What bpftrace printed besides drops (warnings, "Lost N events"), for messages."""
        with self._cv:
            return " | ".join(self._lines)

    @property
    def ready(self) -> bool:
        return self._ready and self._ended is None

    @property
    def ended(self) -> str | None:
        """Why bpftrace ended (None while it runs)."""
        return self._ended

    def drops(self, inodes: Iterable[int], *, since_ns: int = 0, until_ns: int | None = None) -> list[KernelDrop]:
        """The drops seen in these namespaces (by inode) between two CLOCK_MONOTONIC times, oldest first."""
        wanted = set(inodes)
        with self._cv:
            return [e for e in self._events if e.netns_inode in wanted and e.at_ns >= since_ns and (until_ns is None or e.at_ns <= until_ns)]

    def wait_for(self, match: Callable[[KernelDrop], bool], inodes: Iterable[int], *, since_ns: int, timeout: float) -> KernelDrop | None:
        """The first drop in these namespaces since ``since_ns`` that ``match`` accepts, waiting up to ``timeout``."""
        wanted = set(inodes)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                # Newest first, back to a second before ``since_ns`` (CPUs report slightly out of order).
                found = None
                for e in reversed(self._events):
                    if e.at_ns < since_ns - 1_000_000_000:
                        break
                    if e.at_ns >= since_ns and e.netns_inode in wanted and match(e):
                        found = e
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._ended is not None:
                    return None
                self._cv.wait(left)

    def waiter(self, match: Callable[[KernelDrop], bool], inodes: Iterable[int], *, since_ns: int) -> DropWaiter:
        """A ``DropWaiter`` that becomes readable (for ``select``) at the first matching drop from now on."""
        w = DropWaiter(match, frozenset(inodes), since_ns, lambda w: self._forget(w))
        with self._cv:
            self._waiters.append(w)
        return w

    def _forget(self, w: DropWaiter) -> None:
        with self._cv:
            if w in self._waiters:
                self._waiters.remove(w)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        with contextlib.suppress(OSError):
            if proc.stdout is not None:
                proc.stdout.close()


class DropWaiter:
    """Waits for one drop: ``select`` on it beside a socket; ``drop`` is the drop once readable."""

    def __init__(self, match: Callable[[KernelDrop], bool], inodes: frozenset[int], since_ns: int, forget: Callable[[DropWaiter], None]) -> None:
        self._match, self._inodes, self._since = match, inodes, since_ns
        self._forget = forget
        self._r, self._w = os.pipe()
        self.drop: KernelDrop | None = None

    def offer(self, d: KernelDrop) -> None:
        """Called by the watch's reader (under its lock) for every new drop."""
        if self.drop is None and d.netns_inode in self._inodes and d.at_ns >= self._since and self._match(d):
            self.drop = d
            with contextlib.suppress(OSError):
                os.write(self._w, b"!")

    def fileno(self) -> int:
        return self._r

    def close(self) -> None:
        self._forget(self)
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> DropWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Drops that do not decide a probe's fate: a flooded copy for another host, the ICMP (ICMPv6) stack
# freeing an echo reply that a raw socket already read, a socket's own bookkeeping.
INCIDENTAL = frozenset({"OTHERHOST", "UNICAST_IN_L2_MULTICAST"})


def decisive(d: KernelDrop) -> bool:
    """Is this drop the end of the packet's path (not a copy, not a socket's own business)?"""
    if d.reason in INCIDENTAL or d.reason.startswith(("TCP_", "SOCKET_")):
        return False
    return not (d.reason == "NO_SOCKET" and d.location in ("ping_rcv", "icmpv6_rcv"))  # an echo reply no ping socket took (IPv6 frees it in icmpv6_rcv)


class Witness:
    """One lab's view of the run's drop watch: only the drops in the lab's namespaces.

    ``absent()`` says why it cannot witness (no bpftrace, not attached yet, ended); the
    diagnosis then says so and goes on without it. The factory gives one to every lab it builds.
    """

    def __init__(self, watch: DropWatch | None, labels: Mapping[int, str], *, unavailable: str | None = None) -> None:
        self.watch = watch
        self.labels = dict(labels)  # namespace inode -> the label users see (host, wan, a container)
        self.inodes = frozenset(labels)
        self._unavailable = unavailable if watch is not None or unavailable else "no drop watch was started"

    def absent(self, *, wait: float = 0.0) -> str | None:
        """Why this witness cannot see drops now (None: it can); waits up to ``wait`` s for bpftrace to attach."""
        if self.watch is None:
            return self._unavailable
        if not self.watch.ready and wait > 0:
            with contextlib.suppress(DropWatchError):
                self.watch.wait_ready(timeout=wait)
        if self.watch.ready:
            return None
        return self.watch.ended or "bpftrace has not attached to skb:kfree_skb yet"

    def drops(self, key: PacketKey, *, since_ns: int, until_ns: int | None = None) -> list[KernelDrop]:
        """The drops of these packets in the lab's namespaces, oldest first."""
        if self.watch is None:
            return []
        return [d for d in self.watch.drops(self.inodes, since_ns=since_ns, until_ns=until_ns) if key.matches(d)]

    def settle(self, key: PacketKey, *, since_ns: int, timeout: float) -> None:
        """Wait up to ``timeout`` for a first drop of these packets (bpftrace reports a few ms late)."""
        if self.watch is not None and self.watch.ready:
            self.watch.wait_for(key.matches, self.inodes, since_ns=since_ns, timeout=timeout)

    def waiter(self, key: PacketKey, *, since_ns: int) -> DropWaiter | None:
        """A waiter for the first decisive drop of these packets (None when the watch is not attached)."""
        if self.watch is None or not self.watch.ready:
            return None
        return self.watch.waiter(lambda d: key.matches(d) and decisive(d), self.inodes, since_ns=since_ns)


def netns_inode(path: str) -> int:
    """The inode that identifies a network namespace (``/run/netns/NAME`` or ``/proc/PID/ns/net``)."""
    return os.stat(path).st_ino
