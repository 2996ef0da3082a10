"""Render the results model as HTML: the full report, and a snippet per test for pytest-html.

Jinja2 templates with autoescape do all the HTML; this module only turns the model into view
data (plain values: rows, cells, notes) for them. The one piece of markup that is not escaped
is the Graphviz SVG, which ``diagram.sanitize_svg`` checks first.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from netcheck.evidence import verdict_passes
from netcheck.report import diagram
from netcheck.report.model import Results, TestRecord, is_matrix

REPLY_LIMIT = 400
# Every run fact the page shows, with its value when a results file lacks it.
RUN_DEFAULTS: dict[str, Any] = {
    "started": "unknown date", "duration_s": None, "mode": "unknown", "command": "", "workers": 0, "faults": [], "pcap": "failed",
    "pcap_dir": "", "json_file": "", "topologies": [], "kernel": "unknown", "machine": "", "distribution": "unknown",
    "versions": {}, "iptables_command": "unknown",
}
SAFE_LINK = re.compile(r"^(file:///)?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.pcap\Z")
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

    def diagram(self, topo: dict[str, Any] | None, lost: Sequence[diagram.Lost] = ()) -> Markup | str:
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
        return environment().get_template("report.html.j2").render(title=title, script=script, script_hash=digest, **view)

    def snippet(self, test: TestRecord, topo: dict[str, Any] | None) -> str:
        """An HTML fragment for one test (pytest-html extras): evidence, diagnosis, diagram."""
        tv = test_view(test, 0, topo, self)
        return environment().get_template("snippet.html.j2").render(t=tv)


# ---------------------------------------------------------------------- view data


def report_view(results: Results, renderer: Renderer) -> dict[str, Any]:
    tests = [test_view(t, i, results.topologies.get(t.topology or ""), renderer) for i, t in enumerate(results.tests)]
    topologies = []
    summary = results.summary()
    for name in summary["topologies"]:
        topo = results.topologies.get(name)
        lost: list[diagram.Lost] = []
        for tv in tests:
            if tv["topology"] == name:
                for p in tv["probes"]:
                    lost.extend(p["lost"])
        rows = access_paths([t for t in results.tests if t.topology == name], topo)
        matrices = [m for tv in tests if tv["topology"] == name for m in tv["matrices"]]
        failed = sum(1 for t in results.tests if t.topology == name and t.failed)
        topologies.append({
            "name": name,
            "anchor": anchor("topo", name),
            "summary": (topo or {}).get("summary", ""),
            "source": (topo or {}).get("source", ""),
            "setup": (topo or {}).get("setup") or {},
            "diagram": renderer.diagram(topo, lost),
            "lost": sorted({f"{x.point} ({'way out' if x.direction == 'out' else 'reply'})" for x in lost}),
            "host": results.hosts.get(name),
            "access": rows,
            "matrices": matrices,
            "failed": failed,
            "tests": sum(1 for t in results.tests if t.topology == name),
        })
    properties = sorted({t["property"] for t in tests})
    ids = {tv["nodeid"]: tv["id"] for tv in tests}
    failures = []
    for tv in tests:
        if not tv["failed"]:
            continue
        findings = [f for d in tv["diagnoses"] for f in d["diagnosis"]["findings"]]
        failures.append({
            "id": tv["id"], "nodeid": tv["nodeid"], "property": tv["property"], "topology": tv["topology"], "outcome": tv["outcome"], "crash": tv["crash"],
            "finding": findings[0] if findings else None, "more": max(0, len({f["cause"] for f in findings}) - 1),
        })
    return {
        "failures": failures,
        "causes": [dataclasses.asdict(g) | {"entries": [{"nodeid": n, "id": ids.get(n, "")} for n in g.tests]} for g in results.causes()],
        "run": {**RUN_DEFAULTS, **results.run},
        "summary": summary,
        "topologies": topologies,
        "tests": tests,
        "properties": properties,
        "outcomes": ["failed", "error", "passed", "skipped", "xfailed", "xpassed"],
        "backend": backend_line(results),
    }


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


def test_view(t: TestRecord, index: int, topo: dict[str, Any] | None, renderer: Renderer) -> dict[str, Any]:
    pcaps: dict[int, dict[str, str]] = {}
    for pc in t.pcaps:
        link = str(pc.get("file", ""))
        if SAFE_LINK.match(link):  # only the relative paths or file: URLs the pcap writer makes
            pcaps.setdefault(int(pc.get("probe", -1)), {})[str(pc.get("point"))] = link
    probes = [probe_view(p, i, pcaps.get(i, {})) for i, p in enumerate(t.all_probes()) if not is_matrix(p)]
    matrices = [matrix_view(m) for m in t.matrices]
    lost = [x for p in probes for x in p["lost"]]
    failing = [p for p in probes if not p["ok"]]
    return {
        "index": index,
        "id": anchor("t", index),
        "nodeid": t.nodeid,
        "name": t.name,
        "property": t.property or "other",
        "topology": t.topology or "-",
        "outcome": t.outcome,
        "failed": t.failed,
        "duration": t.duration_s,
        "message": _clip(t.message, MESSAGE_LIMIT),
        "crash": t.crash,
        "phases": t.phases,
        "probes": probes,
        "failing": len(failing),
        "diagnoses": [p for p in failing if p["diagnosis"]],
        "matrices": matrices,
        "diagram": renderer.diagram(topo, lost) if (t.failed and topo) else None,
        "access": access_paths([t], topo),
        "worker": t.worker,
    }


def probe_view(p: dict[str, Any], index: int, pcaps: dict[str, str]) -> dict[str, Any]:
    ok = verdict_passes(p.get("expected", "reach"), p.get("verdict", ""))
    sent_src = str(p.get("source_address") or "")
    sent_dst = str(p.get("destination") or "")
    captures = []
    for c in p.get("captures", ()):
        packets = c.get("packets", ())
        captures.append({
            "point": c.get("point", "?"),
            "started": c.get("started", True),
            "interface": c.get("kernel_interface", ""),
            "packets": [packet_view(x, sent_src, sent_dst) for x in packets],
            "nat": nat_notes(packets, sent_src, sent_dst),
            "pcap": pcaps.get(str(c.get("point"))),
        })
    diag = p.get("diagnosis") or None
    trace = list((diag or {}).get("trace", ()))
    lost = diagram.lost_hops(trace) if (diag and not ok) else []
    return {
        "index": index,
        "ok": ok,
        "kind": p.get("kind", "?"),
        "source": p.get("source", "?"),
        "source_address": sent_src,
        "destination": sent_dst,
        "target": p.get("target"),
        "expected": p.get("expected", "?"),
        "verdict": p.get("verdict", "?"),
        "sent": p.get("sent", ""),
        "reply": p.get("reply"),
        "replied_by": p.get("replied_by"),
        "service_saw": p.get("service_saw"),
        "service": p.get("service", "netcheck"),
        "rtt": p.get("rtt_ms"),
        "error": p.get("error"),
        "labels": p.get("labels") or {},
        "captures": captures,
        "diagnosis": diagnosis_view(diag) if diag else None,
        "lost": lost,
    }


def packet_view(x: dict[str, Any], sent_src: str, sent_dst: str) -> dict[str, Any]:
    src = _hostport(x.get("src"), x.get("sport"))
    dst = _hostport(x.get("dst"), x.get("dport"))
    rewritten = []
    if x.get("role") == "request":
        if sent_src and x.get("src") not in (None, sent_src) and x.get("proto") != "arp":
            rewritten.append("src")
        if sent_dst and dst != sent_dst and x.get("dst") != sent_dst and x.get("proto") != "arp":
            rewritten.append("dst")
    return {
        "at": x.get("at_ms"),
        "role": x.get("role") or "",
        "proto": x.get("proto", ""),
        "src": src,
        "dst": dst,
        "ttl": x.get("ttl"),
        "info": x.get("info", ""),
        "macs": f"{x.get('src_mac', '')} > {x.get('dst_mac', '')}",
        "rewritten": rewritten,
    }


def _hostport(addr: object, port: object) -> str:
    return f"{addr}:{port}" if port is not None else str(addr)


def nat_notes(packets: Sequence[dict[str, Any]], sent_src: str, sent_dst: str) -> list[str]:
    """What the first request seen here says about address translation, compared with what was sent."""
    req = next((x for x in packets if x.get("role") == "request"), None)
    if req is None or req.get("proto") == "arp":
        return []
    notes = []
    dst = _hostport(req.get("dst"), req.get("dport"))
    if sent_dst and dst != sent_dst and req.get("dst") != sent_dst:
        notes.append(f"destination rewritten (DNAT): sent to {sent_dst}, seen here as {dst}")
    if sent_src and req.get("src") != sent_src:
        notes.append(f"source rewritten (SNAT/MASQUERADE): sent from {sent_src}, seen here as {req.get('src')}")
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


def diagnosis_view(d: dict[str, Any]) -> dict[str, Any]:
    """Whatever a Diagnosis holds: findings, trace and notes, then every other field as a labelled list."""
    known = {"cause", "where", "summary", "fix", "evidence", "score"}
    findings: list[dict[str, Any]] = []
    for f in d.get("findings", ()):
        if not isinstance(f, dict):
            findings.append({"cause": "", "where": "", "summary": str(f), "fix": "", "evidence": [], "score": None, "extra": {}})
            continue
        findings.append({
            "cause": f.get("cause", ""),
            "where": f.get("where", ""),
            "summary": f.get("summary", ""),
            "fix": f.get("fix", ""),
            "evidence": [str(e) for e in f.get("evidence", ())],
            "score": f.get("score"),
            "extra": {k: v for k, v in f.items() if k not in known},
        })
    hops = [{"point": h.get("point", "?"), "direction": h.get("direction", ""), "seen": bool(h.get("seen")), "addresses": h.get("addresses", "")} for h in d.get("trace", ()) if isinstance(h, dict)]
    sections = []
    kernel = [{"reason": k.get("reason", "?"), "location": k.get("location", "?"), "where": k.get("netns", "?") if k.get("device", "-") == "-" else f"{k.get('netns')}:{k.get('device')}",
               "packet": k.get("packet", ""), "causes": ", ".join(k.get("causes", ()))} for k in d.get("kernel", ()) if isinstance(k, dict)]
    rest = [k for k in d if k not in ("findings", "trace", "notes", "elapsed_ms", "kernel")]
    for key in sorted(rest, key=lambda k: (list(DIAGNOSIS_SECTIONS).index(k) if k in DIAGNOSIS_SECTIONS else 99, k)):
        value = d[key]
        items = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)] if value not in (None, "", {}) else []
        if items:
            sections.append({"label": DIAGNOSIS_SECTIONS.get(key, key.replace("_", " ")), "lines": items})
    elapsed = d.get("elapsed_ms")
    return {
        "findings": findings,
        "trace": hops,
        "kernel": kernel,
        "notes": [str(n) for n in d.get("notes", ())],
        "sections": sections,
        "elapsed": f"{float(elapsed):.0f} ms" if isinstance(elapsed, (int, float)) and elapsed else "",
    }


def matrix_view(m: dict[str, Any]) -> dict[str, Any]:
    names = [str(n) for n in m.get("names", ())]
    expected = m.get("expected") or []
    observed = m.get("observed") or []
    rows = []
    bad = 0
    for i, a in enumerate(names):
        cells = []
        for j, b in enumerate(names):
            if i == j:
                cells.append({"state": "self", "mark": "·", "title": f"{a} itself"})
                continue
            exp = _at(expected, i, j)
            obs = _at(observed, i, j)
            good = obs is not None and obs == exp
            bad += 0 if good else 1
            mark = "✓" if obs else "✗" if obs is False else "?"
            want = "reach" if exp else "be blocked"
            got = "reached" if obs else "blocked" if obs is False else "not probed"
            cells.append({"state": "ok" if good else "bad", "mark": mark, "title": f"{a} → {b}: expected to {want}, {got}"})
        rows.append({"name": a, "cells": cells})
    return {
        "topology": m.get("topology", ""),
        "kind": m.get("kind", ""),
        "names": names,
        "rows": rows,
        "bad": bad,
        "pairs": len(names) * (len(names) - 1),
        "elapsed": m.get("elapsed_s"),
    }


def _at(grid: Any, i: int, j: int) -> bool | None:
    try:
        v = grid[i][j]
    except (IndexError, TypeError, KeyError):
        return None
    return None if v is None else bool(v)


def access_paths(tests: Sequence[TestRecord], topo: dict[str, Any] | None) -> list[dict[str, Any]]:
    """For each probe of a published port or VIP: the access path and the source the service saw."""
    if not topo:
        return []
    host_ip = str((topo.get("host") or {}).get("address", "")).split("/")[0]
    host_ip6 = str((topo.get("host") or {}).get("address6") or "").split("/")[0]
    targets: dict[str, str] = {}
    for p in topo.get("publishes", ()):
        targets[f"{host_ip}:{p['host_port']}"] = f"published port {host_ip}:{p['host_port']} → {p['container']}:{p['port']}"
        if host_ip6:  # dual stack: the same port on the host's IPv6 address
            targets[f"[{host_ip6}]:{p['host_port']}"] = f"published port [{host_ip6}]:{p['host_port']} → {p['container']}:{p['port']}"
    for v in topo.get("vips", ()):
        targets[f"{v['address']}:{v['port']}"] = f"VIP {v['address']}:{v['port']} → {v['container']}:{v['target_port']}"
        if v.get("address6"):
            targets[f"[{v['address6']}]:{v['port']}"] = f"VIP [{v['address6']}]:{v['port']} → {v['container']}:{v['target_port']}"
    rows = []
    for t in tests:
        for p in t.all_probes():
            dest = str(p.get("destination", ""))
            if dest not in targets or p.get("kind") not in ("tcp", "http", "udp"):
                continue
            src = str(p.get("source", ""))
            target = p.get("target")
            if src == "wan":
                path = "from outside (wan)"
            elif src == "host":
                path = "from the host"
            elif target and src == target:
                path = f"{src} to its own published address"
            else:
                path = f"hairpin from {src}"
            saw = p.get("service_saw")
            saw_ip = str(saw).rsplit(":", 1)[0] if saw else ""
            sent = str(p.get("source_address") or "")
            if not saw:
                kept = "no service answered"
            elif sent and saw_ip == sent:
                kept = "client address kept"
            else:
                kept = f"rewritten from {sent or '?'} (SNAT/MASQUERADE)"
            rows.append({
                "test": t.name,
                "path": path,
                "source": f"{src} ({sent})" if sent else src,
                "target": targets[dest],
                "expected": p.get("expected", ""),
                "verdict": p.get("verdict", ""),
                "ok": verdict_passes(p.get("expected", "reach"), p.get("verdict", "")),
                "saw": saw or "",
                "kept": kept,
                "replied_by": (p.get("replied_by") or "") + (" (the user's own service)" if p.get("service") == "user" else ""),
                "family": "IPv6" if dest.startswith("[") else "IPv4",
            })
    if any(r["family"] == "IPv6" for r in rows):  # dual stack: each path's IPv4 and IPv6 rows side by side
        order = {path: i for i, path in reversed(list(enumerate(r["path"] for r in rows)))}
        rows.sort(key=lambda r: (order[r["path"]], r["family"]))
    return rows
