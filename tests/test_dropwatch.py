"""The kernel as witness: drop reasons read from skb:kfree_skb, scoped to one run's namespaces."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netcheck.activation import skip_for_missing_tool
from netcheck.kernel import dropwatch
from netcheck.kernel.dropwatch import DropWatch, KernelDrop, parse_event, reason_names

DATA = Path(__file__).parent / "data"


def test_reason_names_come_from_the_tracepoint_format() -> None:
    names = reason_names((DATA / "kfree_skb.format").read_text())
    assert names[2] == "NOT_SPECIFIED" and names[3] == "NO_SOCKET"
    assert {"NETFILTER_DROP", "IP_RPFILTER", "IP_INNOROUTES", "NEIGH_FAILED", "PKT_TOO_BIG"} <= set(names.values())
    assert len(names) > 100


def test_an_event_line_becomes_a_value() -> None:
    names = reason_names((DATA / "kfree_skb.format").read_text())
    drop = parse_event("D 1047441099647 4026532674 12 lo nft_do_chain+0x4a1/0x5c0 1 127.0.0.1 127.0.0.2", names)
    assert drop == KernelDrop(1047441099647, 4026532674, names[12], "lo", "nft_do_chain", 1, "127.0.0.1", "127.0.0.2")
    assert drop.describe() == f"kernel drop: {names[12]} at nft_do_chain on lo (127.0.0.1 > 127.0.0.2)"
    assert parse_event("Attaching 2 probes...", names) is None
    assert parse_event("D 1 2 999 - f -1 - -", names).reason == "reason 999"  # type: ignore[union-attr]


class Netns:
    """A throwaway network namespace held by an ``unshare --net`` process of this test (ended by PID)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "cat"], stdin=subprocess.PIPE)
        self.path = f"/proc/{self.proc.pid}/ns/net"
        # unshare execs cat once the namespace exists: wait for the namespace to differ from ours.
        from netcheck.waiting import wait_until

        wait_until(lambda: Path(self.path).exists() and dropwatch.netns_inode(self.path) != dropwatch.netns_inode("/proc/self/ns/net"),
                   timeout=10, what=f"unshare --net (pid {self.proc.pid}) to make its namespace")
        self.inode = dropwatch.netns_inode(self.path)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.path}", *argv], capture_output=True, text=True, timeout=30, check=False)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def namespaces() -> Iterator[list[Netns]]:
    made = [Netns(), Netns()]
    yield made
    for ns in made:
        ns.close()


def _drop_pings(ns: Netns, proto: str) -> None:
    for argv in (["ip", "link", "set", "lo", "up"], ["nft", "add", "table", "inet", "t"],
                 ["nft", "add", "chain", "inet", "t", "in", "{ type filter hook input priority 0; }"],
                 ["nft", "add", "rule", "inet", "t", "in", "meta", "l4proto", proto, "drop"]):
        r = ns.run(*argv)
        assert r.returncode == 0, r.stderr


@pytest.mark.root
def test_two_watches_each_see_only_their_own_namespaces_drops(namespaces: list[Netns]) -> None:
    """Two runs at once (two watches, two namespaces, two different drops): each reports only its own."""
    why = dropwatch.unavailable()
    if why:
        skip_for_missing_tool(why)
    a, b = namespaces
    _drop_pings(a, "icmp")
    _drop_pings(b, "udp")
    with DropWatch() as wa, DropWatch() as wb:
        wa.wait_ready()
        wb.wait_ready()
        t0 = time.monotonic_ns()
        # Send until each drop is witnessed (a loaded machine may be slow to report it), at most ten times.
        seen_a = seen_b = None
        for _ in range(10):
            if seen_a is None:
                a.run("ping", "-c1", "-W1", "127.0.0.1")
                seen_a = wa.wait_for(lambda d: d.protocol == 1, [a.inode], since_ns=t0, timeout=1)
            if seen_b is None:
                b.run("python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', 9))")
                seen_b = wb.wait_for(lambda d: d.protocol == 17, [b.inode], since_ns=t0, timeout=1)
            if seen_a is not None and seen_b is not None:
                break
        assert seen_a is not None, f"no ICMP drop witnessed in namespace A; bpftrace said: {wa.recent_output()}"
        assert seen_b is not None, f"no UDP drop witnessed in namespace B; bpftrace said: {wb.recent_output()}"
        assert seen_a is not None and seen_a.reason == "NETFILTER_DROP" and seen_a.location == "nft_do_chain" and seen_a.dst == "127.0.0.1"
        assert seen_b is not None and seen_b.reason == "NETFILTER_DROP" and seen_b.protocol == 17
        assert all(d.netns_inode == a.inode for d in wa.drops([a.inode], since_ns=t0))
        assert not [d for d in wa.drops([a.inode], since_ns=t0) if d.protocol == 17], "run A saw run B's UDP drop"
        assert not [d for d in wb.drops([b.inode], since_ns=t0) if d.protocol == 1], "run B saw run A's ICMP drop"
        pids = [w._proc.pid for w in (wa, wb) if w._proc is not None]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "bpftrace" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"), "bpftrace outlived its watch"
    assert not Path(dropwatch.FORMAT).exists(), "tracefs stayed mounted outside the watch's own mount namespace"
