"""Matrix probing: can every container of a set reach every other one, as the spec says?

The members may come from several labs (``MatrixEngine`` probes ``Member``s; ``Matrix``
makes them from one lab, netcheck.multihost.matrix from every host of a multi-host lab).

Not N² sequential probes. One raw ICMP socket per source namespace (opened by that
namespace's worker, kept for the whole matrix), every echo request sent back to back in
windows, replies matched by ICMP identifier (one per matrix run) and sequence number (the
destination's position), short bounded waits, and one retry round for the cells that
should have answered. Only the failing cells are probed again, by the ordinary ``Prober``
with a capture point at each end, so that each of them carries its evidence (and, through
the ``prober`` given, e.g. a ``DiagnosingProber``, its diagnosis).

The kernel's limit at this size is the IPv4 neighbour (ARP) table: it is shared by every
namespace of the machine, and learned entries beyond ``gc_thresh3`` (1024 by default, a
root-namespace setting netcheck never changes) are refused for five seconds. A full mesh
of N containers on one bridge needs N(N-1) entries at once: 9,900 for 100 containers. So
when a matrix would need more than a small share of the free entries, its same-bridge
pairs get permanent neighbour entries (exempt from that limit) for the duration of the
matrix, and lose them afterwards (pairs across segments: each member's gateway in it, and it on its
bridge in its host); ARP itself is then not part of the matrix (the bridge
suite checks it pair by pair). ``neighbours="arp"`` or ``"static"`` forces either way.

>>> with Matrix(lab) as m:                          # doctest: +SKIP
...     result = m.bridge("br0")
>>> result.failing_pairs()                         # doctest: +SKIP
[]
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Literal, ParamSpec, TypedDict, TypeVar, Unpack

from netcheck import expect as promise
from netcheck.evidence import Diagnosis, MatrixResult, ProbeRequest, ProbeResult
from netcheck.kernel.netns import Netns
from netcheck.packet import ICMP, ICMP_ECHOREPLY, ICMP_TIME_EXCEEDED, ICMP_UNREACH, decode_ipv4, echo_request
from netcheck.probes.engine import Prober

if TYPE_CHECKING:
    from netcheck.lab import Lab

SOL_RAW, ICMP_FILTER = 255, 1
PROTO_ICMP = 1
_IDENT_SEQ = struct.Struct("!HH")
WINDOW = 512  # echo requests sent between two reads of the replies
RCVBUF = 1 << 20  # per source socket: a burst of replies must not overflow it
ARP_SHARE = 4  # learn by ARP only if the matrix needs at most a quarter of the free entries
ARP_MAX = 256  # ... and at most this many
NEIGHBOUR_BATCHES = 4  # namespaces changing their neighbours at once
GC_THRESH3 = "/proc/sys/net/ipv4/neigh/default/gc_thresh3"
ARP_CACHE_STAT = "/proc/net/stat/arp_cache"

Neighbours = Literal["auto", "arp", "static"]
_P = ParamSpec("_P")
_T = TypeVar("_T")
_E = TypeVar("_E", bound="MatrixEngine")


class EngineOptions(TypedDict, total=False):
    """``MatrixEngine``'s options, as ``Matrix`` and ``CrossHostMatrix`` pass them on."""

    record: Callable[[ProbeResult], None] | None
    timeout: float
    neighbours: Neighbours
    max_evidence: int
    max_diagnoses: int
    evidence_timeout: float


class MatrixError(RuntimeError):
    """A matrix cannot be probed as asked (unknown container, no address); the message says why."""


@dataclass(frozen=True)
class Segment:
    """One L2 segment: a bridge (kernel name) in a host namespace. A pair across two segments
    is routed through its members' gateways, the bridges' own addresses."""

    key: str  # unique in the matrix, e.g. "br0" or "h3/br0"
    host: Netns | None  # None: the host is not netcheck's (host mode), so the matrix leaves its neighbours alone
    bridge: str


@dataclass(frozen=True, eq=False)
class Member:
    """One container of a matrix: where it is, how it is reached, and who probes from it."""

    name: str  # as the result names it
    source: str  # its name in its own lab (a prober's source and target)
    ns: Netns
    interface: str
    ip: IPv4Address
    segment: Segment | None
    gateway: IPv4Address | None
    point: str  # its capture point, as ``prober`` resolves it
    prober: Prober  # sends the evidence probes from it
    heads: Prober  # sends the probes to be diagnosed from it

    def same_l2(self, other: Member) -> bool:
        return self.segment is not None and other.segment is not None and self.segment.key == other.segment.key


def _icmp_socket() -> socket.socket:
    """A raw ICMP socket that hears only echo replies and the errors that quote a probe."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        wanted = (1 << ICMP_ECHOREPLY) | (1 << ICMP_UNREACH) | (1 << ICMP_TIME_EXCEEDED)
        s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~wanted & 0xFFFFFFFF))
        s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: past net.core.rmem_max, as root
    except BaseException:
        s.close()
        raise
    return s


def neighbour_budget() -> tuple[int, int]:
    """(learned neighbour entries of the whole machine, gc_thresh3): the room ARP has left."""
    try:
        with open(GC_THRESH3) as f:
            limit = int(f.read())
        with open(ARP_CACHE_STAT) as f:
            f.readline()
            entries = int(f.readline().split()[0], 16)
    except (OSError, ValueError, IndexError):
        return 0, 1024
    return entries, limit


class MatrixEngine:
    """Probes reachability matrices of ``Member``s; keeps one raw ICMP socket per source namespace.

    ``timeout``: how long a round waits for the last replies (and how long a blocked cell
    must stay silent). Failing cells are probed again with a capture point at each end,
    ``max_evidence`` of them at most, all at once; then the failing cells are grouped by
    the container they share (a container whose every pair fails is one cause) and one cell
    of each group is sent through its source's ``heads`` prober, ``max_diagnoses`` groups at
    most: a ``netcheck.diagnosing.DiagnosingProber`` (that records nothing) has them diagnosed;
    a diagnosis repeats its probe and reads counters, one at a time. The other cells of a
    group carry the group's findings, with a note naming the cell they were diagnosed on.
    ``record`` hears every failing cell's evidence (the plugin's ``evidence`` fixture).
    """

    def __init__(
        self, *, record: Callable[[ProbeResult], None] | None = None, timeout: float = 0.3, neighbours: Neighbours = "auto",
        max_evidence: int = 64, max_diagnoses: int = 4, evidence_timeout: float = 0.5,
    ) -> None:
        self.record = record or (lambda _r: None)
        self.timeout = timeout
        self.neighbours = neighbours
        self.max_evidence = max_evidence
        self.max_diagnoses = max_diagnoses
        self.evidence_timeout = evidence_timeout
        self._socks: dict[int, socket.socket] = {}  # by id() of the member's namespace handle
        self.static_neighbours = False  # how the last matrix resolved its neighbours
        self.timings: dict[str, float] = {}  # the last matrix's phases, in seconds

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket (a socket keeps its namespace alive)."""
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    # ----------------------------------------------------------------- the engine

    def _socket(self, m: Member) -> socket.socket:
        s = self._socks.get(id(m.ns))
        if s is None:
            s = self._socks[id(m.ns)] = m.ns.call(_icmp_socket)
        return s

    def run_members(self, topology: str, members: Sequence[Member], expected: Callable[[Member, Member], bool]) -> MatrixResult:
        """Probe every ordered pair of ``members``; ``expected(a, b)``: should a reach b?"""
        start = time.perf_counter()
        members = list(members)
        if len({id(m.ns) for m in members}) != len(members):
            raise MatrixError(f"a container appears twice in {[m.name for m in members]}")
        n = len(members)
        want = [[i != j and expected(a, b) for j, b in enumerate(members)] for i, a in enumerate(members)]
        seen = [[False] * n for _ in range(n)]
        self.timings = {}
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            clock.append(time.perf_counter())
            self.timings[name] = self.timings.get(name, 0.0) + clock[-1] - clock[-2]

        static = self._use_static(members)
        self.static_neighbours = static
        socks = [self._socket(m) for m in members]
        lap("sockets_s")
        try:
            if static:
                self._set_neighbours(members)
                lap("neighbours_s")
            errors = self._probe(members, socks, want, seen)
            lap("probe_s")
        finally:
            self.close()
            if static:
                self._clear_neighbours(members)
                lap("neighbours_s")
        observed = [[None if i == j else seen[i][j] for j in range(n)] for i in range(n)]
        failures = self._evidence(members, want, observed, errors)
        lap("evidence_s")
        return MatrixResult(
            topology=topology, kind="icmp", names=tuple(m.name for m in members),
            expected=tuple(tuple(row) for row in want), observed=tuple(tuple(row) for row in observed),
            failures=tuple(failures), elapsed_s=round(time.perf_counter() - start, 3),
        )

    def _use_static(self, members: list[Member]) -> bool:
        if self.neighbours != "auto":
            return self.neighbours == "static"
        plan = _neighbour_plan(members)
        need = sum(1 for a in members for b in members if a is not b and a.same_l2(b)) + 2 * len(plan.via_gateway)
        entries, limit = neighbour_budget()
        return need > min(ARP_MAX, max(0, limit - entries) // ARP_SHARE)

    def _set_neighbours(self, members: list[Member]) -> None:
        """Permanent neighbour entries, each namespace in its own thread, a few at a time: in each
        container for every same-segment member and for its gateway (when it has partners on
        other segments), and in each host, on the bridge, for its members with such partners.

        Each namespace's entries are made as they are sent (generators, not lists): the
        matrix is the only thing in memory that grows with the number of pairs.
        """
        plan = _neighbour_plan(members)
        macs = _all_at_once([m.ns.submit(_mac, m.ns, m.interface) for m in members])
        mac = {id(m): found for m, found in zip(members, macs, strict=True)}
        bridge_macs = _all_at_once([host.submit(_mac, host, bridge) for host, bridge, _ in plan.hosted.values()])
        gateway_mac = dict(zip(plan.hosted, bridge_macs, strict=True))
        on_segment = plan.on_segment

        def entries(a: Member) -> Iterator[tuple[IPv4Address, str]]:
            if a.segment is not None:
                yield from ((b.ip, mac[id(b)]) for b in on_segment.get(a.segment.key, ()) if b is not a)
            if id(a) in plan.via_gateway and a.gateway is not None and a.segment is not None:
                yield a.gateway, gateway_mac[a.segment.key]

        def hosted(routed: list[Member]) -> Iterator[tuple[IPv4Address, str]]:
            return ((m.ip, mac[id(m)]) for m in routed)

        turns = threading.BoundedSemaphore(NEIGHBOUR_BATCHES)
        jobs = [m.ns.submit(_in_turn, turns, m.ns.set_neighbours, m.interface, entries(m)) for m in members]
        jobs += [host.submit(_in_turn, turns, host.set_neighbours, bridge, hosted(routed)) for host, bridge, routed in plan.hosted.values()]
        _all_at_once(jobs)

    def _clear_neighbours(self, members: list[Member]) -> None:
        plan = _neighbour_plan(members)
        on_segment = plan.on_segment

        def ips(a: Member) -> Iterator[IPv4Address]:
            if a.segment is not None:
                yield from (b.ip for b in on_segment.get(a.segment.key, ()) if b is not a)
            if id(a) in plan.via_gateway and a.gateway is not None:
                yield a.gateway

        turns = threading.BoundedSemaphore(NEIGHBOUR_BATCHES)
        jobs = [m.ns.submit(_in_turn, turns, m.ns.delete_neighbours, m.interface, ips(m)) for m in members]
        jobs += [host.submit(_in_turn, turns, host.delete_neighbours, bridge, (m.ip for m in routed)) for host, bridge, routed in plan.hosted.values()]
        _all_at_once(jobs)

    def _probe(self, members: list[Member], socks: list[socket.socket], want: list[list[bool]], seen: list[list[bool]]) -> dict[tuple[int, int], str]:
        """Two rounds: every pair, then the pairs that should have answered and did not."""
        n = len(members)
        ident = int.from_bytes(os.urandom(2), "big") or 1
        token = os.urandom(8)
        packets = [echo_request(ident, j, token) for j in range(n)]
        addresses = [(str(m.ip), 0) for m in members]
        sources = [str(m.ip) for m in members]
        by_fd = {s.fileno(): i for i, s in enumerate(socks)}
        errors: dict[tuple[int, int], str] = {}
        poller = select.epoll()
        try:
            for fd in by_fd:
                poller.register(fd, select.EPOLLIN)

            def drain(wait: float) -> int:
                """Read every reply there is (waiting up to ``wait`` for the first); how many expected cells they answered."""
                answered = 0
                for fd, _ in poller.poll(wait):
                    i = by_fd[fd]
                    s = socks[i]
                    while True:
                        try:
                            data = s.recv(2048, socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            break
                        j = _match(data, i, ident, token, sources, seen, errors)
                        if j is not None and want[i][j]:
                            answered += 1
                return answered

            # Round one goes through every pair as it is generated; round two through a list of the few left.
            cells: Sequence[tuple[int, int]] | None = None
            for attempt in range(2):
                if cells is not None and not cells:
                    break
                if cells is None:
                    outstanding = sum(sum(row) for row in want)
                    blocked_too = outstanding < n * (n - 1)  # a blocked cell must stay silent for the whole timeout
                else:
                    outstanding, blocked_too = len(cells), False
                todo = _every_pair(n) if cells is None else iter(cells)
                for k, (i, j) in enumerate(todo):
                    try:
                        socks[i].sendto(packets[j], addresses[j])
                    except OSError as exc:
                        if exc.errno not in (errno.ENOBUFS, errno.EAGAIN) or attempt:
                            errors[(i, j)] = f"sending failed: {exc.strerror or exc}"
                            outstanding -= want[i][j]
                    if k % WINDOW == WINDOW - 1:
                        outstanding -= drain(0)
                deadline = time.perf_counter() + self.timeout
                while (left := deadline - time.perf_counter()) > 0 and (outstanding > 0 or blocked_too):
                    outstanding -= drain(min(left, 0.02))
                cells = [(i, j) for i in range(n) for j in range(n) if want[i][j] and not seen[i][j] and (i, j) not in errors]
        finally:
            poller.close()
        return errors

    def _evidence(self, members: list[Member], want: list[list[bool]], observed: list[list[bool | None]], errors: dict[tuple[int, int], str]) -> list[ProbeResult]:
        """Probe the failing cells again with captures at both ends; diagnose one cell per group.

        A cell whose evidence probe goes as the spec says after all is counted as observed
        that way (the evidence is the better witness); the others are the failures.
        """
        n = len(members)
        failing = [(i, j) for i in range(n) for j in range(n) if i != j and observed[i][j] != want[i][j]]
        if not failing:
            return []
        groups = _groups(failing, self.max_diagnoses)
        heads = [g[0] for g in groups]
        chosen = heads + [c for c in _spread(failing, n) if c not in set(heads)][: max(0, self.max_evidence - len(heads))]

        def again(i: int, j: int) -> ProbeRequest:
            a, b = members[i], members[j]
            expect: Literal["reach", "block"] = "reach" if want[i][j] else "block"
            timeout = self.evidence_timeout if expect == "reach" else min(self.evidence_timeout, self.timeout)
            return ProbeRequest("icmp", a.source, b.ip, expect=expect, target=b.source, capture=(a.point, b.point), timeout=timeout)

        rest = chosen[len(heads):]
        plain = dict(zip(rest, _many([(members[i].prober, again(i, j)) for i, j in rest]), strict=True))
        # Diagnoses run one at a time (they repeat the probe and read rule counters), after the plain probes.
        diagnosed = {c: members[c[0]].heads.send(again(*c)) for c in heads}
        results = {**plain, **diagnosed}
        shared: dict[tuple[int, int], Diagnosis] = {}
        for head, cells in groups:
            d = results[head].diagnosis
            if d is None or results[head].passed:
                continue
            a, b = members[head[0]].name, members[head[1]].name
            common = _common(cells, members)
            why = f"every one of its {len(cells)} failing pairs involves {common}" if common else "it fails the same way"
            note = f"diagnosed on {a} -> {b}: {why}"
            for c in cells:
                shared[c] = Diagnosis(findings=d.findings, notes=(note,))
        failures = []
        for cell in chosen:
            r = results[cell]
            i, j = cell
            if r.passed:
                observed[i][j] = want[i][j]
                continue
            if r.diagnosis is None and cell in shared:
                r = r.with_diagnosis(shared[cell])
            if (i, j) in errors and r.error is None:
                r = replace(r, error=errors[(i, j)])
            self.record(r)
            failures.append(r)
        return failures


class Matrix(MatrixEngine):
    """The matrices of one lab: a bridge's containers (``bridge``), or any containers as the
    spec's policy says (``policy``). ``prober`` sends the probes to be diagnosed (e.g. a
    ``netcheck.diagnosing.DiagnosingProber``); the other options are ``MatrixEngine``'s."""

    def __init__(self, lab: Lab, *, prober: Prober | None = None, **options: Unpack[EngineOptions]) -> None:
        super().__init__(**options)
        self.lab = lab
        self._plain = Prober(lab)
        self._heads = prober or self._plain

    # ----------------------------------------------------------------- what to probe

    def bridge(self, bridge: str) -> MatrixResult:
        """All pairs of the containers on ``bridge`` (spec name), each expected to reach the other."""
        t = self.lab.topology
        if bridge not in {b.name for b in t.bridges}:
            raise MatrixError(f"{t.name} has no bridge {bridge!r} (its bridges: {', '.join(b.name for b in t.bridges) or 'none'})")
        members = [c.name for c in t.members(bridge)]
        if len(members) < 2:
            raise MatrixError(f"bridge {bridge!r} of {t.name} has {len(members)} container(s); a matrix needs two")
        return self.run(members, lambda _a, _b: True)

    def policy(self, names: Sequence[str] | None = None) -> MatrixResult:
        """All pairs of ``names`` (default: every container), expected as the spec allows (expect.reaches).

        ``expect.reaches`` sees a container only through the host interface its traffic
        enters by (its bridge, or its routed veth), so it is asked once per pair of those.
        """
        t = self.lab.topology
        chosen = list(names) if names is not None else [c.name for c in t.containers]
        side = {c.name: promise.host_side(t, c.name) for c in t.containers}
        memo: dict[tuple[str, str], bool] = {}

        def expected(a: str, b: str) -> bool:
            key = (side[a], side[b])
            if key not in memo:
                memo[key] = promise.reaches(t, a, b)
            return memo[key]

        return self.run(chosen, expected)

    def run(self, names: Sequence[str], expected: Callable[[str, str], bool]) -> MatrixResult:
        """Probe every ordered pair of ``names``; ``expected(a, b)``: should a reach b?"""
        return self.run_members(self.lab.topology.name, self._members(names), lambda a, b: expected(a.name, b.name))

    def _members(self, names: Sequence[str]) -> list[Member]:
        t = self.lab.topology
        known = {c.name for c in t.containers}
        if len(set(names)) != len(names):
            raise MatrixError(f"a container appears twice in {list(names)}")
        # A real host's neighbours are not netcheck's to change (host mode), nor those on a bridge another tool made.
        host = self.lab.host if self.lab.mode.name != "host" else None
        segments = {b.name: Segment(b.name, host if b.name in self.lab.knames else None, self.lab.knames.get(b.name, b.name)) for b in t.bridges}
        out = []
        for name in names:
            if name not in known:
                raise MatrixError(f"{t.name} has no container {name!r} (it has: {', '.join(sorted(known)[:20])})")
            c = t.container(name)
            if c.address is None:
                raise MatrixError(f"container {name} has no address in the spec, so the matrix cannot address it")
            segment = segments.get(c.bridge) if c.bridge is not None else None
            out.append(Member(name, name, self.lab.container_ns(name), c.interface, c.address.ip, segment, c.gateway if segment is not None else None,
                              self.lab.point(name), self._plain, self._heads))
        return out


@dataclass(frozen=True)
class _NeighbourPlan:
    """Which neighbour entries a matrix of these members needs (see ``MatrixEngine._set_neighbours``)."""

    on_segment: dict[str, list[Member]]  # segment key -> its members
    via_gateway: set[int]  # id() of each member with a partner on another segment, routed by netcheck's host
    hosted: dict[str, tuple[Netns, str, list[Member]]]  # segment key -> (its host, its bridge, those of its members)


def _neighbour_plan(members: Sequence[Member]) -> _NeighbourPlan:
    on_segment: dict[str, list[Member]] = {}
    for m in members:
        if m.segment is not None:
            on_segment.setdefault(m.segment.key, []).append(m)
    hosted: dict[str, tuple[Netns, str, list[Member]]] = {}
    via: set[int] = set()
    for m in members:
        seg = m.segment
        if seg is None or seg.host is None or m.gateway is None or len(on_segment[seg.key]) == len(members):
            continue
        via.add(id(m))
        hosted.setdefault(seg.key, (seg.host, seg.bridge, []))[2].append(m)
    return _NeighbourPlan(on_segment, via, hosted)


def _many(requests: Sequence[tuple[Prober, ProbeRequest]], workers: int = 32) -> list[ProbeResult]:
    """Send each request through its prober, concurrently (negative probes cost their timeout)."""
    if not requests:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(requests))) as pool:
        return list(pool.map(lambda pr: pr[0].send(pr[1]), requests))


def _every_pair(n: int) -> Iterator[tuple[int, int]]:
    """Every ordered pair, the first member's column first. Its bridge learns a member's MAC from the
    member's first frame; with permanent neighbours nothing else has taught it, so a request to a
    member that has not yet sent is flooded to every port of the bridge (at 400 containers on one
    bridge, the first source's 399 requests would make 159,201 copies). Sending to member 0 first
    has every member send once, and only the very first request is flooded."""
    yield from ((i, 0) for i in range(1, n))
    yield from ((i, j) for i in range(n) for j in range(1, n) if i != j)


def _groups(failing: list[tuple[int, int]], limit: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Failing cells grouped by cause, greedily: a container in three or more failing cells
    is one group (head: one of its own probes out), any other cell is a group of its own."""
    left = set(failing)
    groups: list[tuple[tuple[int, int], list[tuple[int, int]]]] = []
    while left and len(groups) < limit:
        count: dict[int, int] = {}
        for i, j in left:
            count[i] = count.get(i, 0) + 1
            count[j] = count.get(j, 0) + 1
        k = max(sorted(count), key=lambda x: count[x])
        if count[k] >= 3:
            cells = sorted(c for c in left if k in c)
            head = next((c for c in cells if c[0] == k), cells[0])
        else:
            head = min(left)
            cells = [head]
        groups.append((head, cells))
        left -= set(cells)
    return groups


def _spread(failing: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """Failing cells ordered so that the first few cover as many sources as possible."""
    rows: dict[int, list[tuple[int, int]]] = {}
    for c in failing:
        rows.setdefault(c[0], []).append(c)
    out: list[tuple[int, int]] = []
    for k in range(n):
        out.extend(row[k] for row in rows.values() if k < len(row))
    return out


def _common(cells: list[tuple[int, int]], members: list[Member]) -> str | None:
    shared = set(cells[0])
    for c in cells[1:]:
        shared &= set(c)
    return members[min(shared)].name if shared and len(cells) > 1 else None

def _match(data: bytes, i: int, ident: int, token: bytes, sources: list[str], seen: list[list[bool]], errors: dict[tuple[int, int], str]) -> int | None:
    """Mark the cell a packet answers: an echo reply from the right address, or an ICMP error
    quoting a probe. Returns the destination of a cell answered for the first time."""
    ihl = (data[0] & 0x0F) * 4 if data else 0
    if len(data) >= ihl + 16 >= 36 and data[9] == PROTO_ICMP and data[ihl] == ICMP_ECHOREPLY:
        # The fast path, for the replies that make up nearly all of a matrix's traffic: no decoding.
        their_ident, seq = _IDENT_SEQ.unpack_from(data, ihl + 4)
        seq = int(seq)
        if their_ident != ident or seq >= len(sources) or data[ihl + 8 : ihl + 16] != token or socket.inet_ntoa(data[12:16]) != sources[seq]:
            return None
        if seen[i][seq] or (i, seq) in errors:
            return None
        seen[i][seq] = True
        return seq
    ip = decode_ipv4(data)
    icmp = ip.payload if ip is not None else None
    if ip is None or not isinstance(icmp, ICMP):
        return None
    if icmp.type == ICMP_ECHOREPLY:
        seq = icmp.seq
        if icmp.ident == ident and seq is not None and seq < len(sources) and ip.src == sources[seq] and icmp.data[:8] == token:
            if seen[i][seq] or (i, seq) in errors:
                return None
            seen[i][seq] = True
            return seq
        return None
    if icmp.type not in (ICMP_UNREACH, ICMP_TIME_EXCEEDED) or icmp.quoted is None or not isinstance(icmp.quoted.payload, ICMP):
        return None
    quoted = icmp.quoted.payload
    seq = quoted.seq
    if quoted.ident != ident or seq is None or seq >= len(sources) or seen[i][seq] or (i, seq) in errors:
        return None
    errors[(i, seq)] = icmp.error_text(ip.src)
    return seq


def _in_turn(turns: threading.BoundedSemaphore, fn: Callable[_P, None], *args: _P.args, **kwargs: _P.kwargs) -> None:
    """Run ``fn`` when a turn is free: the kernel applies neighbour changes one at a time anyway,
    and a few batches in flight hold a few hundred requests, where all of them would hold N²."""
    with turns:
        fn(*args, **kwargs)


def _mac(ns: Netns, interface: str) -> str:
    for link in ns.link_states():
        if link.name == interface:
            return link.mac
    raise MatrixError(f"netns {ns.label} has no interface {interface}")


def _all_at_once(futures: Sequence[Future[_T]]) -> list[_T]:
    """Wait for every future, then raise the first error (so no namespace is left mid-batch)."""
    errors = [e for e in (f.exception(timeout=60) for f in futures) if e is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def probe_matrix(lab: Lab, names: Sequence[str] | None = None, *, bridge: str | None = None, **options: object) -> MatrixResult:
    """One matrix: the containers of ``bridge`` (all must reach), or ``names`` as the spec's policy says."""
    with Matrix(lab, **options) as m:  # type: ignore[arg-type]
        return m.bridge(bridge) if bridge is not None else m.policy(names)


def describe(result: MatrixResult, limit: int = 20) -> str:
    """A failure message: which cells differ from the spec, then the first failure's diagnosis and evidence."""
    bad = result.failing_pairs()
    n = len(result.names)
    if not bad:
        return f"[{result.topology}] matrix of {n} containers: all {result.pairs} pairs as the spec says ({result.elapsed_s:g} s)"
    index = {name: k for k, name in enumerate(result.names)}
    lines = [f"[{result.topology}] matrix of {n} containers: {len(bad)} of {result.pairs} pairs differ from the spec:"]
    for a, b in bad[:limit]:
        exp = "reach" if result.expected[index[a]][index[b]] else "be blocked"
        lines.append(f"  {a} -> {b}: expected to {exp}, {'reached' if result.observed[index[a]][index[b]] else 'no reply'}")
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    without = len(bad) - len(result.failures)
    if without > 0:
        lines.append(f"({without} failing pairs were not probed again for evidence: raise max_evidence to see them all)")
    if result.failures:
        lines.append("")
        lines.append("first failure:")
        lines.append(result.failures[0].explain())
    return "\n".join(lines)

__all__ = ["EngineOptions", "Matrix", "MatrixEngine", "MatrixError", "Member", "Segment", "describe", "neighbour_budget", "probe_matrix"]
