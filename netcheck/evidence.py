"""Probe results are values: what was sent, where it was seen, with which addresses, the verdict.

Tests assert on them, the report renders them, xdist ships them (``to_dict``/``from_dict``
round-trip through JSON), and the diagnosis attaches to them.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Verdict = Literal["reached", "unreachable", "inconclusive", "wrong-target"]
Expectation = Literal["reach", "block", "observe"]
PROPERTIES = ("topology", "isolation", "veth", "bridge", "forwarding", "masquerade", "dnat", "vip", "scale")


@dataclass(frozen=True)
class Packet:
    """One packet seen at a capture point, dissected by scapy."""

    at_ms: float  # since the probe was sent
    proto: str  # icmp, tcp, udp, arp, other
    src: str
    dst: str
    src_mac: str
    dst_mac: str
    sport: int | None = None
    dport: int | None = None
    ttl: int | None = None
    info: str = ""  # ICMP type, TCP flags, ARP op
    role: str = ""  # request, reply or error (an ICMP error quoting the probe)
    raw: bytes = b""

    @property
    def flow(self) -> str:
        s = f"{self.src}:{self.sport}" if self.sport is not None else self.src
        d = f"{self.dst}:{self.dport}" if self.dport is not None else self.dst
        return f"{s} > {d}"


@dataclass(frozen=True)
class Capture:
    """What one capture point saw of one probe."""

    point: str  # "netns0:ceth0", in the names users see
    netns: str  # namespace label: host, wan, or a container name
    interface: str  # spec name of the interface
    kernel_interface: str
    started: bool
    packets: tuple[Packet, ...] = ()

    @property
    def seen(self) -> bool:
        return bool(self.packets)

    def first(self, role: str = "request") -> Packet | None:
        """The first packet of a role (request, reply, error) seen here."""
        return next((p for p in self.packets if p.role == role), None)

    def roles(self) -> set[str]:
        return {p.role for p in self.packets}


@dataclass(frozen=True)
class Finding:
    """One cause, in configuration terms, with the fix."""

    cause: str  # short identifier, e.g. "ip_forward_off"
    where: str  # namespace label
    summary: str  # "host: net.ipv4.ip_forward = 0, so packets from br0 are not routed to the uplink"
    fix: str  # "ip netns exec nck7q0-host sysctl -w net.ipv4.ip_forward=1"
    evidence: tuple[str, ...] = ()
    score: int = 50

    def line(self) -> str:
        return f"{self.summary}. Fix: {self.fix}"


@dataclass(frozen=True)
class Hop:
    """One hop of the expected path, and whether the probe was seen there, each way."""

    point: str
    direction: Literal["out", "back"]
    seen: bool
    addresses: str = ""


@dataclass(frozen=True)
class Diagnosis:
    """Why a probe failed: ranked findings, the trace of the repeated probe, and the facts behind them."""

    findings: tuple[Finding, ...] = ()
    trace: tuple[Hop, ...] = ()
    notes: tuple[str, ...] = ()
    breaks: tuple[str, ...] = ()  # per direction: last hop seen, first hop missing
    rewrites: tuple[str, ...] = ()  # address changes between hops (NAT at work)
    matched: tuple[str, ...] = ()  # rules whose packet counters grew during the repeated probe
    conntrack: tuple[str, ...] = ()  # conntrack entries of the probe's flow
    repeated: str = ""  # how the repeated probe went
    elapsed_ms: float = 0.0  # what the diagnosis cost

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def render(self) -> str:
        lines = []
        if self.findings:
            lines.append("diagnosis:")
            for i, f in enumerate(self.findings, 1):
                lines.append(f"  {i}. [{f.cause}] {f.summary}")
                lines.append(f"     fix: {f.fix}")
                lines.extend(f"     evidence: {e}" for e in f.evidence)
        else:
            lines.append("diagnosis: no known cause matched; the trace below shows where the packet was last seen")
        if self.trace:
            lines.append("trace" + (f" ({self.repeated})" if self.repeated else "") + ":")
            for h in self.trace:
                mark = "seen    " if h.seen else "MISSING "
                lines.append(f"  {h.direction:<4} {mark} {h.point:<24} {h.addresses}".rstrip())
            lines.extend(f"  {b}" for b in self.breaks)
            lines.extend(f"  rewritten: {r}" for r in self.rewrites)
        if self.matched:
            lines.append("rules the repeated probe matched (packet counter deltas):")
            lines.extend(f"  {m}" for m in self.matched)
        if self.conntrack:
            lines.append("conntrack (host):")
            lines.extend(f"  {c}" for c in self.conntrack)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Diagnosis:
        known = {f.name for f in fields(cls)}
        data: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        data["findings"] = tuple(Finding(**{**f, "evidence": tuple(f.get("evidence", ()))}) for f in d.get("findings", ()))
        data["trace"] = tuple(Hop(**h) for h in d.get("trace", ()))
        return cls(**data)


@dataclass(frozen=True)
class ProbeResult:
    """One probe, as evidence."""

    kind: str  # icmp, tcp, udp, http, arp
    topology: str
    source: str  # namespace label
    source_interface: str
    source_address: str
    destination: str  # address or address:port as sent
    sent: str  # what was sent, e.g. "ICMP echo id=0x1a2b seq=1"
    expected: Expectation
    verdict: Verdict
    captures: tuple[Capture, ...] = ()
    target: str | None = None  # the container expected to answer
    reply: str | None = None
    replied_by: str | None = None  # the container whose service answered
    service_saw: str | None = None  # source address:port the service saw
    rtt_ms: float | None = None
    error: str | None = None
    diagnosis: Diagnosis | None = None
    started_at: float = 0.0  # epoch seconds when the probe was sent (pcap timestamps)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        if self.expected == "observe":
            return self.verdict != "inconclusive"
        if self.expected == "reach":
            return self.verdict == "reached"
        return self.verdict == "unreachable"

    def capture(self, point: str) -> Capture:
        for c in self.captures:
            if c.point == point:
                return c
        raise KeyError(f"no capture point {point!r} in this probe (points: {', '.join(c.point for c in self.captures) or 'none'})")

    def headline(self) -> str:
        exp = {"reach": "expected to reach", "block": "expected to be blocked", "observe": "observed"}[self.expected]
        who = f" ({self.target})" if self.target else ""
        got = self.verdict + (f", answered by {self.replied_by}" if self.replied_by and self.replied_by != self.target else "")
        return f"[{self.topology}] {self.kind} {self.source} ({self.source_address}) -> {self.destination}{who}: {exp}, {got}"

    def explain(self) -> str:
        """The failure message: headline, diagnosis first, then the evidence."""
        lines = [self.headline()]
        if self.error:
            lines.append(f"error: {self.error}")
        if self.diagnosis is not None:
            lines.append(self.diagnosis.render())
        lines.append("evidence:")
        for c in self.captures:
            if not c.started:
                lines.append(f"  {c.point:<24} capture did not start")
                continue
            if not c.packets:
                lines.append(f"  {c.point:<24} nothing seen")
            for p in c.packets[:6]:
                lines.append(f"  {c.point:<24} {p.proto} {p.flow} ttl={p.ttl} {p.info} ({p.src_mac} > {p.dst_mac})")
        if self.service_saw:
            lines.append(f"  service {self.replied_by} saw the client as {self.service_saw}")
        return "\n".join(lines)

    def with_diagnosis(self, diagnosis: Diagnosis) -> ProbeResult:
        return replace(self, diagnosis=diagnosis)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _encode(asdict(self))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        d = dict(data)
        d["captures"] = tuple(
            Capture(**{**c, "packets": tuple(Packet(**{**p, "raw": base64.b64decode(p.get("raw", ""))}) for p in c["packets"])}) for c in d.get("captures", ())
        )
        if d.get("diagnosis"):
            d["diagnosis"] = Diagnosis.from_dict(d["diagnosis"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


@dataclass(frozen=True)
class MatrixResult:
    """Expected versus observed reachability between every pair of a set of endpoints."""

    topology: str
    kind: str
    names: tuple[str, ...]
    expected: tuple[tuple[bool, ...], ...]  # expected[i][j]: i reaches j
    observed: tuple[tuple[bool | None, ...], ...]  # None on the diagonal
    failures: tuple[ProbeResult, ...] = ()
    elapsed_s: float = 0.0

    @property
    def pairs(self) -> int:
        n = len(self.names)
        return n * (n - 1)

    def failing_pairs(self) -> list[tuple[str, str]]:
        out = []
        for i, a in enumerate(self.names):
            for j, b in enumerate(self.names):
                if i != j and self.observed[i][j] != self.expected[i][j]:
                    out.append((a, b))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [f.to_dict() for f in self.failures]
        out: dict[str, Any] = _encode(d)
        return out
