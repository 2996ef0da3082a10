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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    printf("D %llu %u %d %s %s %d %s %s\n", nsecs, $ns, args->reason, $dev, ksym(args->location), $ip->protocol, ntop(2, $ip->saddr), ntop(2, $ip->daddr));
  } else if (args->protocol == 0x86DD) {
    $ip6 = (struct ipv6hdr *)($s->head + $s->network_header);
    printf("D %llu %u %d %s %s %d %s %s\n", nsecs, $ns, args->reason, $dev, ksym(args->location), $ip6->nexthdr,
           ntop(10, $ip6->saddr.in6_u.u6_addr8), ntop(10, $ip6->daddr.in6_u.u6_addr8));
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
_EVENT = re.compile(r"^D (\d+) (\d+) (\d+) (\S+) (\S+) (-?\d+) (\S+) (\S+)$")


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

    def describe(self) -> str:
        on = f" on {self.device}" if self.device != "-" else ""
        return f"kernel drop: {self.reason} at {self.location}{on} ({self.src} > {self.dst})"


def reason_names(format_text: str) -> dict[int, str]:
    """Drop reason numbers -> names, from the tracepoint's format (its ``__print_symbolic`` table)."""
    return {int(n): name for n, name in _SYMBOLIC.findall(format_text)}


def parse_event(line: str, reasons: dict[int, str]) -> KernelDrop | None:
    m = _EVENT.match(line.strip())
    if m is None:
        return None
    at, ns, reason, dev, loc, proto, src, dst = m.groups()
    location = loc.split("+", 1)[0]
    return KernelDrop(int(at), int(ns), reasons.get(int(reason), f"reason {reason}"), dev, location, int(proto), src, dst)


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

    def __enter__(self) -> DropWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> DropWatch:
        why = unavailable()
        if why:
            raise DropWatchError(f"cannot watch the kernel's drops: {why}")
        # Line-buffered output (each drop reaches us at once), and a ring buffer big enough that a busy
        # machine's drops are not lost before bpftrace reads them (bpftrace says "Lost N events" if they are).
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", LAUNCH, "bpftrace", "-B", "line", "-e", PROGRAM]
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


def netns_inode(path: str) -> int:
    """The inode that identifies a network namespace (``/run/netns/NAME`` or ``/proc/PID/ns/net``)."""
    return os.stat(path).st_ino
