"""Render the results model as HTML: the full report, and a snippet per test for pytest-html.

Jinja2 templates with autoescape do all the HTML; this module only turns the model into view
data (plain values: rows, cells, notes) for them. The one piece of markup that is not escaped
is the Graphviz SVG, which ``diagram.sanitize_svg`` checks first.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from ipaddress import ip_address

import jinja2
from markupsafe import Markup

from netcheck.evidence import Capture, Diagnosis, Expectation, Finding, Hop, KernelEvent, MatrixResult, Packet, ProbeResult
from netcheck.report import diagram
from netcheck.report.model import CauseGroup, HostFacts, PcapLink, Results, RunFacts, Summary, TestRecord, TopologyView

REPLY_LIMIT = 400
# Every run fact the page shows, with its value when a results file lacks it.
RUN_DEFAULTS: RunFacts = {
    "started": "unknown date", "duration_s": None, "mode": "unknown", "command": "", "workers": 0, "faults": [], "pcap": "failed",
    "pcap_dir": "", "json_file": "", "topologies": [], "kernel": "unknown", "machine": "", "distribution": "unknown",
    "versions": {}, "iptables_command": "unknown",
}
SAFE_LINK = re.compile(r"^(file:///)?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.pcap(ng)?\Z")
MESSAGE_LIMIT = 20000


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("netcheck.report", "templates"),
        autoescape=True,  # every template, whatever its name: names and payloads come from users and the network
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = lambda v: "" if v is None else f"{float(v):.1f} ms"
    env.filters["clip"] = _clip
    return env


def _clip(text: object, limit: int = REPLY_LIMIT) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[:limit] + f" … ({len(s) - limit} more characters)"


@lru_cache(maxsize=1)
def page_script() -> tuple[Markup, str]:
    """The report's own script (a static file) and its CSP hash: the only script the page may run."""
    text = resources.files("netcheck.report").joinpath("templates/report.js").read_text(encoding="utf-8")
    if "</" in text:
        raise RuntimeError("report.js must not contain '</' (it is inlined in a <script> element)")
    digest = "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return Markup(text), digest  # our own static file, never data


class Renderer:
    """Renders reports; caches one diagram per (topology, lost hops), since dot costs ~30 ms a call."""

    def __init__(self) -> None:
        self._diagrams: dict[tuple[str, tuple[diagram.Lost, ...]], Markup | str] = {}

    # ------------------------------------------------------------------ diagrams

    def diagram(self, topo: TopologyView | None, lost: Sequence[diagram.Lost] = ()) -> Markup | str:
        """Inline SVG markup, or a plain string saying why there is no diagram."""
        if not topo:
            return "no topology spec is known for this test, so there is no diagram"
        key = (str(topo.get("name")), tuple(sorted(set(lost), key=lambda x: (x.point, x.direction, x.after or ""))))
        if key not in self._diagrams:
            try:
                self._diagrams[key] = Markup(diagram.render_svg(diagram.to_dot(topo, key[1])))  # checked by sanitize_svg
            except diagram.DiagramError as exc:
                self._diagrams[key] = f"diagram unavailable: {exc}"
        return self._diagrams[key]

    # ------------------------------------------------------------------ pages

    def report(self, results: Results, title: str = "netcheck report") -> str:
        view = report_view(results, self)
        script, digest = page_script()
        return environment().get_template("report.html.j2").render(title=title, script=script, script_hash=digest, **{f.name: getattr(view, f.name) for f in fields(view)})

    def snippet(self, test: TestRecord, topo: TopologyView | None) -> str:
        """An HTML fragment for one test (pytest-html extras): evidence, diagnosis, diagram."""
        tv = test_view(test, 0, topo, self)
        return environment().get_template("snippet.html.j2").render(t=tv)


# ---------------------------------------------------------------------- view data
# Each view holds the typed values it shows (a ProbeResult, a Finding, a Hop) and only what the
# page works out from them (marks, links, notes); the templates read attributes of both.


@dataclass(frozen=True)
class PacketView:
    packet: Packet
    src: str  # address:port
    dst: str
    rewritten: tuple[str, ...]  # "src", "dst": changed from what was sent

    @property
    def macs(self) -> str:
        return f"{self.packet.src_mac} > {self.packet.dst_mac}"


@dataclass(frozen=True)
class CaptureView:
    capture: Capture
    packets: list[PacketView]
    nat: list[str]
    pcap: str | None


@dataclass(frozen=True)
class Section:
    label: str
    lines: list[str]


@dataclass(frozen=True)
class HopView:
    hop: Hop
    at_ms: float | None  # when the repeated probe's packet was seen here (the trace as a timeline)
    pcap: str | None  # this hop's capture, as a pcap file


@dataclass(frozen=True)
class DiagnosisView:
    findings: tuple[Finding, ...]
    trace: list[HopView]
    kernel: tuple[KernelEvent, ...]
    notes: tuple[str, ...]
    sections: list[Section]
    elapsed: str
    timeline: str | None  # the merged pcapng of every hop


@dataclass(frozen=True)
class ProbeView:
    result: ProbeResult
    index: int
    ok: bool
    captures: list[CaptureView]
    diagnosis: DiagnosisView | None
    lost: list[diagram.Lost]


@dataclass(frozen=True)
class MatrixCell:
    state: str  # self, ok, bad
    mark: str
    title: str


@dataclass(frozen=True)
class MatrixRow:
    name: str
    cells: list[MatrixCell]


@dataclass(frozen=True)
class MatrixView:
    matrix: MatrixResult
    rows: list[MatrixRow]
    bad: int


@dataclass(frozen=True)
class AccessRow:
    test: str
    path: str
    source: str
    target: str
    expected: Expectation
    verdict: str
    ok: bool
    saw: str
    kept: str
    replied_by: str
    family: str = "IPv4"


@dataclass(frozen=True)
class TestView:
    __test__ = False  # not a pytest test class

    index: int
    id: str
    nodeid: str
    name: str
    property: str
    topology: str
    outcome: str
    failed: bool
    duration: float
    message: str
    crash: str
    phases: dict[str, str]
    probes: list[ProbeView]
    failing: int
    diagnoses: list[ProbeView]
    matrices: list[MatrixView]
    diagram: Markup | str | None
    access: list[AccessRow]
    worker: str | None


@dataclass(frozen=True)
class TopologySection:
    name: str
    anchor: str
    summary: str
    source: str
    setup: TopologyView
    diagram: Markup | str
    lost: list[str]
    host: HostFacts | None
    access: list[AccessRow]
    ports: list[PortRow]
    matrices: list[MatrixView]
    failed: int
    tests: int


@dataclass(frozen=True)
class FailureRow:
    id: str
    nodeid: str
    property: str
    topology: str
    outcome: str
    crash: str
    finding: Finding | None
    more: int


@dataclass(frozen=True)
class CauseView:
    group: CauseGroup
    entries: list[TestView]  # the tests it explains


@dataclass(frozen=True)
class ReportView:
    failures: list[FailureRow]
    causes: list[CauseView]
    run: RunFacts
    summary: Summary
    topologies: list[TopologySection]
    tests: list[TestView]
    properties: list[str]
    outcomes: list[str] = field(default_factory=lambda: ["failed", "error", "passed", "skipped", "xfailed", "xpassed"])
    backend: str = ""


def report_view(results: Results, renderer: Renderer) -> ReportView:
    tests = [test_view(t, i, results.topologies.get(t.topology or ""), renderer) for i, t in enumerate(results.tests)]
    summary = results.summary()
    topologies = []
    for name in summary["topologies"]:
        topo = results.topologies.get(name)
        mine = [tv for tv in tests if tv.topology == name]
        lost = [x for tv in mine for p in tv.probes for x in p.lost]
        topologies.append(TopologySection(
            name=name,
            anchor=anchor("topo", name),
            summary=str((topo or {}).get("summary", "")),
            source=str((topo or {}).get("source", "")),
            setup=(topo or {}).get("setup") or {},
            diagram=renderer.diagram(topo, lost),
            lost=sorted({f"{x.point} ({'way out' if x.direction == 'out' else 'reply'})" for x in lost}),
            host=results.hosts.get(name),
            access=access_paths([t for t in results.tests if t.topology == name], topo),
            ports=port_matrix_rows([t for t in results.tests if t.topology == name]),
            matrices=[m for tv in mine for m in tv.matrices],
            failed=sum(1 for t in results.tests if t.topology == name and t.failed),
            tests=sum(1 for t in results.tests if t.topology == name),
        ))
    by_nodeid = {tv.nodeid: tv for tv in tests}
    failures = []
    for tv in tests:
        if not tv.failed:
            continue
        findings = [f for p in tv.diagnoses if p.diagnosis for f in p.diagnosis.findings]
        failures.append(FailureRow(id=tv.id, nodeid=tv.nodeid, property=tv.property, topology=tv.topology, outcome=tv.outcome, crash=tv.crash,
                                   finding=findings[0] if findings else None, more=max(0, len({f.cause for f in findings}) - 1)))
    return ReportView(
        failures=failures,
        causes=[CauseView(g, [by_nodeid[n] for n in g.tests]) for g in results.causes()],
        run={**RUN_DEFAULTS, **results.run},
        summary=summary,
        topologies=topologies,
        tests=tests,
        properties=sorted({tv.property for tv in tests}),
        backend=backend_line(results),
    )


def backend_line(results: Results) -> str:
    """One line for the run facts: the backend per lab host, or why it is unknown."""
    if not results.hosts:
        return "unknown (no lab host was available to read)"
    parts = []
    for name, h in sorted(results.hosts.items()):
        counts = f"legacy {_n(h.get('legacy_rules'))} rules, nft {_n(h.get('nft_rules'))} rules"
        parts.append(f"{name}: {h.get('backend', 'unknown')} ({counts})")
    return "; ".join(parts)


def _n(v: object) -> str:
    return "?" if v is None else str(v)


def anchor(*parts: object) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_-]+", "_", str(p)) for p in parts)


def _links(pcaps: Sequence[PcapLink]) -> dict[tuple[int, str, str], str]:
    """(probe, of, point) -> the link, for the pcaps the writer made (only relative paths or file: URLs)."""
    out: dict[tuple[int, str, str], str] = {}
    for pc in pcaps:
        if SAFE_LINK.match(str(pc.get("file", ""))):
            out.setdefault((int(pc.get("probe", -1)), pc.get("of", "capture"), str(pc.get("point"))), pc["file"])
    return out


def test_view(t: TestRecord, index: int, topo: TopologyView | None, renderer: Renderer) -> TestView:
    links = _links(t.pcaps)
    probes = [probe_view(p, i, links) for i, p in enumerate(t.all_probes())]
    failing = [p for p in probes if not p.ok]
    return TestView(
        index=index,
        id=anchor("t", index),
        nodeid=t.nodeid,
        name=t.name,
        property=t.property or "other",
        topology=t.topology or "-",
        outcome=t.outcome,
        failed=t.failed,
        duration=t.duration_s,
        message=_clip(t.message, MESSAGE_LIMIT),
        crash=t.crash,
        phases=t.phases,
        probes=probes,
        failing=len(failing),
        diagnoses=[p for p in failing if p.diagnosis],
        matrices=[matrix_view(m) for m in t.matrices],
        diagram=renderer.diagram(topo, [x for p in probes for x in p.lost]) if (t.failed and topo) else None,
        access=access_paths([t], topo),
        worker=t.worker,
    )


def probe_view(p: ProbeResult, index: int, links: dict[tuple[int, str, str], str]) -> ProbeView:
    sent_src, sent_dst = p.source_address, p.destination
    captures = [CaptureView(c, [packet_view(x, sent_src, sent_dst) for x in c.packets], nat_notes(c.packets, sent_src, sent_dst), links.get((index, "capture", c.point)))
                for c in p.captures]
    d = p.diagnosis
    return ProbeView(result=p, index=index, ok=p.passed, captures=captures, diagnosis=diagnosis_view(d, index, links) if d else None,
                     lost=diagram.lost_hops(d.trace) if (d and not p.passed) else [])


def _hostport(addr: str, port: int | None) -> str:
    return f"{addr}:{port}" if port is not None else addr


def packet_view(x: Packet, sent_src: str, sent_dst: str) -> PacketView:
    src, dst = _hostport(x.src, x.sport), _hostport(x.dst, x.dport)
    rewritten: list[str] = []
    if x.role == "request" and x.proto != "arp":
        if sent_src and x.src != sent_src:
            rewritten.append("src")
        if sent_dst and dst != sent_dst and x.dst != sent_dst:
            rewritten.append("dst")
    return PacketView(x, src, dst, tuple(rewritten))


def nat_notes(packets: Sequence[Packet], sent_src: str, sent_dst: str) -> list[str]:
    """What the first request seen here says about address translation, compared with what was sent."""
    req = next((x for x in packets if x.role == "request"), None)
    if req is None or req.proto == "arp":
        return []
    notes = []
    dst = _hostport(req.dst, req.dport)
    if sent_dst and dst != sent_dst and req.dst != sent_dst:
        notes.append(f"destination rewritten (DNAT): sent to {sent_dst}, seen here as {dst}")
    if sent_src and req.src != sent_src:
        notes.append(f"source rewritten (SNAT/MASQUERADE): sent from {sent_src}, seen here as {req.src}")
    return notes


DIAGNOSIS_SECTIONS = {
    "repeated": "repeated probe",
    "breaks": "where it broke",
    "rewrites": "address rewrites (NAT at work)",
    "matched": "rules the repeated probe matched (packet counter deltas)",
    "conntrack": "conntrack entries of the flow (host)",
    "kernel_note": "the kernel's witness",
    "disagreement": "model and kernel disagree",
}
SHOWN_APART = ("findings", "trace", "notes", "elapsed_ms", "kernel", "captures", "started_at")  # the diagnosis's fields with a view of their own


def diagnosis_view(d: Diagnosis, probe: int = 0, links: dict[tuple[int, str, str], str] | None = None) -> DiagnosisView:
    """Whatever a Diagnosis holds: findings, trace (a timeline, with each hop's pcap), kernel drops and notes, then every other field as a labelled list."""
    links = links or {}
    caps = {c.point: c for c in d.captures}
    trace = []
    for h in d.trace:
        c = caps.get(h.point)
        pkt = c.hop_packet(h.direction) if c is not None else None
        trace.append(HopView(h, pkt.at_ms if pkt is not None else None, links.get((probe, "hop", h.point))))
    rest = [f.name for f in fields(d) if f.name not in SHOWN_APART]
    sections = []
    for key in sorted(rest, key=lambda k: (list(DIAGNOSIS_SECTIONS).index(k) if k in DIAGNOSIS_SECTIONS else 99, k)):
        value = getattr(d, key)
        items = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)] if value not in (None, "", {}) else []
        if items:
            sections.append(Section(DIAGNOSIS_SECTIONS.get(key, key.replace("_", " ")), items))
    return DiagnosisView(findings=d.findings, trace=trace, kernel=d.kernel, notes=d.notes, sections=sections,
                         elapsed=f"{d.elapsed_ms:.0f} ms" if d.elapsed_ms else "", timeline=links.get((probe, "timeline", "timeline")))


def matrix_view(m: MatrixResult) -> MatrixView:
    rows = []
    bad = 0
    for i, a in enumerate(m.names):
        cells = []
        for j, b in enumerate(m.names):
            if i == j:
                cells.append(MatrixCell("self", "·", f"{a} itself"))
                continue
            exp, obs = _at(m.expected, i, j), _at(m.observed, i, j)
            good = obs is not None and obs == exp
            bad += 0 if good else 1
            mark = "✓" if obs else "✗" if obs is False else "?"
            want = "reach" if exp else "be blocked"
            got = "reached" if obs else "blocked" if obs is False else "not probed"
            cells.append(MatrixCell("ok" if good else "bad", mark, f"{a} → {b}: expected to {want}, {got}"))
        rows.append(MatrixRow(a, cells))
    return MatrixView(m, rows, bad)


def _at(grid: Sequence[Sequence[bool | None]], i: int, j: int) -> bool | None:
    try:
        return grid[i][j]
    except IndexError:
        return None


PORT_MATRIX_TEST = "test_published_port_matrix"
_PROTOCOL_OF = {"http": "tcp", "tcp": "tcp", "udp": "udp", "sctp": "sctp"}


@dataclass(frozen=True)
class PortRow:
    """One cell of the published-port matrix (suites/test_dnat.py)."""

    family: str
    protocol: str
    to: str  # as the probe shows it: [addr]:port for IPv6
    path: str
    expected: Expectation
    verdict: str
    ok: bool
    saw: str


def port_matrix_rows(tests: Sequence[TestRecord]) -> list[PortRow]:
    """The published-port matrix, one row a cell: family, protocol, address:port, access path, expected, observed, the source the service saw."""
    rows = []
    for t in tests:
        if not t.name.startswith(PORT_MATRIX_TEST):
            continue
        for p in t.all_probes():
            src, target = p.source, p.target
            path = "from outside (wan)" if src == "wan" else "from the host" if src == "host" else f"{src} to itself" if src == target else f"hairpin from {src}"
            rows.append(PortRow(f"IPv{ip_address(p.request.destination).version}", _PROTOCOL_OF.get(p.kind, p.kind), p.destination, path,
                                p.expected, p.verdict, p.passed, p.service_saw or ""))
    # Dual stack: each cell's IPv4 and IPv6 rows side by side (the same protocol, host port and access path).
    return sorted(rows, key=lambda r: (r.protocol, _port_of(r.to), r.path, r.family))


def _port_of(to: str) -> int:
    """The port of an "address:port" ("[address]:port" for IPv6) as the probe shows it."""
    tail = to.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def access_paths(tests: Sequence[TestRecord], topo: TopologyView | None) -> list[AccessRow]:
    """For each probe of a published port or VIP: the access path and the source the service saw."""
    if not topo:
        return []
    host_ip = str((topo.get("host") or {}).get("address", "")).split("/")[0]
    host_ip6 = str((topo.get("host") or {}).get("address6") or "").split("/")[0]
    targets: dict[str, str] = {}
    for pub in topo.get("publishes", ()):
        targets[f"{host_ip}:{pub['host_port']}"] = f"published port {host_ip}:{pub['host_port']} → {pub['container']}:{pub['port']}"
        if host_ip6:  # dual stack: the same port on the host's IPv6 address
            targets[f"[{host_ip6}]:{pub['host_port']}"] = f"published port [{host_ip6}]:{pub['host_port']} → {pub['container']}:{pub['port']}"
    for v in topo.get("vips", ()):
        targets[f"{v['address']}:{v['port']}"] = f"VIP {v['address']}:{v['port']} → {v['container']}:{v['target_port']}"
        if v.get("address6"):
            targets[f"[{v['address6']}]:{v['port']}"] = f"VIP [{v['address6']}]:{v['port']} → {v['container']}:{v['target_port']}"
    rows = []
    for t in tests:
        for p in t.all_probes():
            if p.destination not in targets or p.kind not in ("tcp", "http", "udp"):
                continue
            src, target = p.source, p.target
            if src == "wan":
                path = "from outside (wan)"
            elif src == "host":
                path = "from the host"
            elif target and src == target:
                path = f"{src} to its own published address"
            else:
                path = f"hairpin from {src}"
            saw, sent = p.service_saw, p.source_address
            if not saw:
                kept = "no service answered"
            elif sent and saw.rsplit(":", 1)[0] == sent:
                kept = "client address kept"
            else:
                kept = f"rewritten from {sent or '?'} (SNAT/MASQUERADE)"
            rows.append(AccessRow(
                test=t.name, path=path, source=f"{src} ({sent})" if sent else src, target=targets[p.destination], expected=p.expected,
                verdict=p.verdict, ok=p.passed, saw=saw or "", kept=kept,
                replied_by=(p.replied_by or "") + (" (the user's own service)" if p.service == "user" else ""),
                family="IPv6" if p.destination.startswith("[") else "IPv4",
            ))
    if any(r.family == "IPv6" for r in rows):  # dual stack: each path's IPv4 and IPv6 rows side by side, port by port
        order = {path: i for i, path in reversed(list(enumerate(r.path for r in rows)))}
        rows.sort(key=lambda r: (order[r.path], _port_of(r.target.split(" → ")[0].rsplit(" ", 1)[-1]), r.family))
    return rows


__all__ = ["Renderer", "ReportView", "TestView", "backend_line", "report_view", "test_view"]
