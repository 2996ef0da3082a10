"""Topology diagrams: a topology (as data) -> Graphviz DOT -> inline SVG.

Namespaces are boxes (clusters); interfaces, bridges, published ports and VIPs are nodes;
veths, bridge ports and DNATs are edges. Where a failing probe's trace shows the packet was
lost, the hop is drawn red: the capture point where it went missing, and the edge from the
last point that saw it.

Graphviz lays the graph out; ``dot -Tsvg`` runs as an argv list with the DOT on stdin. The SVG
is checked before it is inlined: no scripts, no event handlers, no external references.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netcheck.evidence import Hop
from netcheck.kernel.jsontypes import JSONObject
from netcheck.lab.plan import masquerade_rule
from netcheck.multihost.spec import MultiTopology

RED = "#c62828"
RED_FILL = "#fde0e0"
FONT = "Helvetica"
DOT_TIMEOUT = 30.0
_SVG_NS = "{http://www.w3.org/2000/svg}"
_ALLOWED = {"svg", "g", "title", "polygon", "path", "ellipse", "polyline", "text", "a", "defs", "line", "rect", "circle"}


class DiagramError(RuntimeError):
    """Graphviz is missing or failed; the message says how to fix it."""


@dataclass(frozen=True)
class Lost:
    """A hop where a probe went missing: the point not reached, from the last point that saw it."""

    point: str
    direction: str  # out or back
    after: str | None = None  # the last capture point that saw the probe in that direction


def lost_hops(trace: Sequence[Hop]) -> list[Lost]:
    """The first missing hop of a diagnosis trace: outbound first; the reply's only if the way out was seen."""
    for direction in ("out", "back"):
        last_seen: str | None = None
        for h in trace:
            if h.direction != direction:
                continue
            if h.seen:
                last_seen = h.point
                continue
            return [Lost(h.point, direction, last_seen)]
    return []


def _q(text: object) -> str:
    """A DOT double-quoted string (names come from users; the spec allows no quotes, but be sure)."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "")
    return f'"{s}"'


@dataclass
class _Graph:
    lines: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # capture point -> node id
    edges: dict[frozenset[str], int] = field(default_factory=dict)  # node pair -> index in lines
    wires: dict[str, set[str]] = field(default_factory=dict)  # node -> nodes joined to it by a drawn edge

    def node_id(self, key: str) -> str:
        if key not in self.ids:
            self.ids[key] = f"n{len(self.ids)}"
        return self.ids[key]


SHORT = {"net.ipv4.ip_forward": "ip_forward", "net.bridge.bridge-nf-call-iptables": "br-nf-call-iptables"}


def host_facts(topo: JSONObject) -> list[str]:
    """The host box's facts as measured (``topo["observed"]``, read back from the lab), each marked
    where it differs from the spec; as declared, and said so, when nothing was read back."""
    host = topo.get("host") or {}
    declared = {k: str(v) for k, v in host.get("sysctls", ())}
    declared_policy = str(host.get("forward_policy", "ACCEPT"))
    observed = topo.get("observed")
    if not isinstance(observed, dict):
        facts = [f"ip_forward={declared.get('net.ipv4.ip_forward', '?')}", f"FORWARD {declared_policy}"]
        if "net.bridge.bridge-nf-call-iptables" in declared:
            facts.append(f"br-nf-call-iptables={declared['net.bridge.bridge-nf-call-iptables']}")
        return [*facts, "(as declared: not read back)"]
    seen = observed.get("sysctls") or {}
    facts = []
    for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
        if key not in seen and key not in declared:
            continue
        value = seen.get(key, "?")
        mark = f" (spec: {declared[key]})" if key in declared and declared[key] != value else ""
        facts.append(f"{SHORT[key]}={value}{mark}")
    policy = str(observed.get("forward_policy", declared_policy))
    facts.append(f"FORWARD {policy}" + (f" (spec: {declared_policy})" if policy != declared_policy else ""))
    return facts


def _link_note(topo: JSONObject, name: str) -> str:
    """A host-side link's measured state, when it is not up."""
    observed = topo.get("observed")
    link = (observed.get("links") or {}).get(name) if isinstance(observed, dict) else None
    if not isinstance(link, dict) or link.get("state") == "UP":
        return ""
    return f"\n{link.get('state', '?')} (measured)"


def to_dot(topo: JSONObject, lost: Iterable[Lost] = ()) -> str:
    """DOT source for a topology view (``model.topology_view``), with lost hops drawn red."""
    if topo.get("kind") == "multihost":
        return multihost_dot(topo)
    g = _Graph()
    lost = list(lost)
    red_points = {x.point for x in lost}
    host = topo.get("host") or {}
    wan = topo.get("wan") or {}
    out = [
        f"digraph {_q(topo.get('name', 'topology'))} {{",
        f"  graph [rankdir=LR, nodesep=0.3, ranksep=0.7, fontname={_q(FONT)}, fontsize=11, bgcolor=transparent, pad=0.1];",
        f'  node [fontname={_q(FONT)}, fontsize=10, shape=box, style="rounded,filled", fillcolor="#ffffff", color="#5f6b7a"];',
        f'  edge [fontname={_q(FONT)}, fontsize=9, color="#5f6b7a", arrowsize=0.6];',
    ]

    def node(point: str, label: str, extra: str = "") -> str:
        nid = g.node_id(point)
        style = f', color="{RED}", fillcolor="{RED_FILL}", fontcolor="{RED}", penwidth=2.2' if point in red_points else ""
        g.lines.append(f"    {nid} [label={_q(label)}{extra}{style}];")
        return nid

    # The outside world.
    g.lines.append("  subgraph cluster_wan {")
    g.lines.append(f'    label={_q("outside world (netns wan)")}; style="rounded,filled"; fillcolor="#f3f6fa"; color="#9aa7b6";')
    wan_up = node("wan:uplink", f"uplink\n{wan.get('address', '')}")
    remotes = []
    for r in wan.get("remote", ()):
        remotes.append(node(f"wan:remote:{r}", f"remote\n{r}", ', shape=ellipse, fillcolor="#eef2f7"'))
    g.lines.append("  }")
    out.extend(g.lines)
    g.lines = []

    # The host.
    facts = host_facts(topo)
    masq = [f"iptables {masquerade_rule(m.get('source'), m.get('out_interface'), m.get('not_out_interface')).render()}" for m in topo.get("masquerades", ())]
    g.lines.append("  subgraph cluster_host {")
    host_label = "\n".join(["host (netns host)", ", ".join(facts), *masq])
    g.lines.append(f'    label={_q(host_label)}; style="rounded,filled"; fillcolor="#f7f9fc"; color="#5f6b7a";')
    uplink = str(host.get("uplink", "eth0"))
    host_up = node(f"host:{uplink}", f"{uplink}\n{host.get('address', '')}" + _link_note(topo, uplink))
    bridge_ids: dict[str, str] = {}
    for b in topo.get("bridges", ()):
        label = f"{b['name']} (bridge)" + (f"\n{b['address']}" if b.get("address") else "") + _link_note(topo, b["name"])
        bridge_ids[b["name"]] = node(f"host:{b['name']}", label, ', fillcolor="#e3f0fd", color="#2f6fb0", penwidth=1.5')
    veth_ids: dict[str, str] = {}
    for c in topo.get("containers", ()):
        if c.get("host_veth"):
            label = str(c["host_veth"]) + (f"\n{c['host_address']}" if c.get("host_address") else "") + _link_note(topo, c["host_veth"])
            veth_ids[c["name"]] = node(f"host:{c['host_veth']}", label)
    nat_nodes = []
    addr = str(host.get("address", "")).split("/")[0]
    for i, p in enumerate(topo.get("publishes", ())):
        paths = [w for w, on in (("outside", p.get("from_outside", True)), ("host", p.get("from_host", True))) if on]
        size = int(p.get("size") or 1)
        bound = str(p.get("host_address") or addr)  # as written: an address, 0.0.0.0 or 127.0.0.1
        ports = f"{p['host_port']}-{int(p['host_port']) + size - 1}" if size > 1 else str(p["host_port"])
        to = f"{p['port']}-{int(p['port']) + size - 1}" if size > 1 else str(p["port"])
        label = f"published {p.get('protocol', 'tcp')} {bound}:{ports}\nDNAT to {p['container']}:{to}\nfrom {' and '.join(paths) or 'nowhere'}"
        nat_nodes.append((node(f"nat:publish:{i}", label, ', shape=note, fillcolor="#fff8e1", color="#b28704"'), p["container"]))
    for i, v in enumerate(topo.get("vips", ())):
        label = f"VIP {v.get('protocol', 'tcp')} {v['address']}:{v['port']}\nchain {v['chain']}: DNAT to {v['container']}:{v['target_port']}"
        nat_nodes.append((node(f"nat:vip:{i}", label, ', shape=note, fillcolor="#f3e5f5", color="#7b3f98"'), v["container"]))
    g.lines.append("  }")
    out.extend(g.lines)
    g.lines = []

    # The containers.
    iface_ids: dict[str, str] = {}
    for c in topo.get("containers", ()):
        name = str(c["name"])
        services = ", ".join(f"{s['kind']} :{s['port']}" for s in c.get("services", ()))
        label = f"{name} (netns)" + (f"\ngw {c['gateway']}" if c.get("gateway") else "") + (f"\n{services}" if services else "")
        g.lines.append(f"  subgraph cluster_c_{len(iface_ids)} {{")
        g.lines.append(f'    label={_q(label)}; style="rounded,filled"; fillcolor="#f1f8f1"; color="#4a7c4e";')
        address = c.get("address") or "address: auto"
        iface_ids[name] = node(f"{name}:{c['interface']}", f"{c['interface']}\n{address}")
        g.lines.append("  }")
        out.extend(g.lines)
        g.lines = []

    # Edges: left (outside) to right (containers).
    def edge(a: str, b: str, attrs: str) -> None:
        g.edges[frozenset((a, b))] = len(out)
        if "invis" not in attrs:
            g.wires.setdefault(a, set()).add(b)
            g.wires.setdefault(b, set()).add(a)
        out.append(f"  {a} -> {b} [{attrs}];")

    edge(wan_up, host_up, 'dir=none, penwidth=1.4, label="veth"')
    for r in remotes:
        edge(r, wan_up, 'dir=none, style=dotted, label="lo"')
    for c in topo.get("containers", ()):
        name = str(c["name"])
        if name in veth_ids:
            if c.get("bridge") and c["bridge"] in bridge_ids:
                edge(bridge_ids[c["bridge"]], veth_ids[name], 'dir=none, penwidth=2, color="#2f6fb0", label="port"')
            elif not c.get("bridge"):
                edge(host_up, veth_ids[name], 'style=dashed, dir=none, color="#9aa7b6", label="routed"')
            edge(veth_ids[name], iface_ids[name], 'dir=none, penwidth=1.4, label="veth"')
        elif c.get("bridge") in bridge_ids:  # the host side's name is not known (made by another tool)
            edge(bridge_ids[c["bridge"]], iface_ids[name], 'dir=none, penwidth=1.4, label="veth"')
    for b_name, bid in bridge_ids.items():
        if not any(c.get("bridge") == b_name for c in topo.get("containers", ())):
            edge(host_up, bid, "style=invis")
        else:
            edge(host_up, bid, 'style=dashed, dir=none, color="#9aa7b6", label="routed"')
    for nid, container in nat_nodes:
        edge(host_up, nid, 'style=invis')
        if container in iface_ids:
            out.append(f'  {nid} -> {iface_ids[container]} [style=dashed, color="#b28704", label="DNAT", constraint=false];')

    # Lost hops: redden the path between the last point that saw the probe and the one that did
    # not (the wires it should have crossed), or draw the hop when no wire joins them.
    for x in lost:
        if x.after is None or x.after not in g.ids or x.point not in g.ids:
            continue
        a, b = g.ids[x.after], g.ids[x.point]
        label = f"lost here ({'way out' if x.direction == 'out' else 'reply'})"
        path = _path(g.wires, a, b)
        if path:
            for i, pair in enumerate(path):
                idx = g.edges[pair]
                text = f", label={_q(label)}" if i == len(path) - 1 else ""
                base = re.sub(r', label="[^"]*"', "", out[idx].rstrip("];"))
                out[idx] = base + f', color="{RED}", fontcolor="{RED}", penwidth=3{text}];'
        else:
            out.append(f'  {a} -> {b} [color="{RED}", fontcolor="{RED}", penwidth=2.5, style=bold, label={_q(label)}, constraint=false];')
    out.append("}")
    return "\n".join(out) + "\n"


def multihost_view(t: MultiTopology) -> dict[str, Any]:
    """A multi-host topology as plain data for the report: each host's view, the underlay, the join."""
    from netcheck.report.model import topology_view

    j = t.join
    join = f"vxlan VNI {j.vni}, UDP {j.port}, MTU {j.mtu}, fdb {j.fdb}" if j.kind == "vxlan" else f"routed (path MTU {t.path_mtu})"
    return {
        "kind": "multihost", "join_kind": j.kind, "name": t.name, "summary": t.summary, "source": t.source, "join": join,
        "underlay": {"network": str(t.underlay.network), "mtu": t.underlay.mtu},
        "hosts": [{"name": h.name, "underlay": str(h.underlay), "subnets": [str(n) for n in h.subnets], "view": topology_view(h.topology)} for h in t.hosts],
    }


def multihost_dot(topo: dict[str, Any]) -> str:
    """DOT source for a multi-host view: the hosts side by side, each with its bridges and
    containers, and the underlay between them (its bridge, each host's link, the join)."""
    g = _Graph()
    nl = "\n"
    under = topo.get("underlay") or {}
    out = [
        f"digraph {_q(topo.get('name', 'topology'))} {{",
        f"  graph [rankdir=TB, nodesep=0.3, ranksep=0.5, fontname={_q(FONT)}, fontsize=11, bgcolor=transparent, pad=0.1];",
        f'  node [fontname={_q(FONT)}, fontsize=10, shape=box, style="rounded,filled", fillcolor="#ffffff", color="#5f6b7a"];',
        f'  edge [fontname={_q(FONT)}, fontsize=9, color="#5f6b7a", arrowsize=0.6, dir=none];',
        "  subgraph cluster_underlay {",
        "    label=" + _q(f"underlay (netns underlay): {under.get('network', '')}, MTU {under.get('mtu', '')}") + '; style="rounded,filled"; fillcolor="#f3f6fa"; color="#9aa7b6";',
    ]
    hub = g.node_id("underlay")
    out.append(f"    {hub} [label={_q('bridge' + nl + str(topo.get('join', '')))}, fillcolor=\"#e3f0fd\", color=\"#2f6fb0\"];")
    out.append("  }")
    edges: list[str] = []
    for i, h in enumerate(topo.get("hosts", ())):
        view = h.get("view") or {}
        host = view.get("host") or {}
        name = str(h["name"])
        out.append(f"  subgraph cluster_host_{i} {{")
        out.append("    label=" + _q(f"host {name}: " + ", ".join(host_facts(view))) + '; style="rounded,filled"; fillcolor="#f7f9fc"; color="#5f6b7a";')
        up = g.node_id(f"{name}/host:underlay")
        out.append(f"    {up} [label={_q('underlay link' + nl + str(h.get('underlay', '')))}];")
        uplink = g.node_id(f"{name}/host:uplink")
        out.append(f"    {uplink} [label={_q(str(host.get('uplink', 'eth0')) + nl + str(host.get('address', '')) + nl + 'to its outside world')}];")
        for b in view.get("bridges", ()):
            bid = g.node_id(f"{name}/host:{b['name']}")
            out.append(f"    {bid} [label={_q(str(b['name']) + ' (bridge)' + nl + str(b.get('address') or ''))}, fillcolor=\"#e3f0fd\", color=\"#2f6fb0\"];")
            edges.append(f"  {up} -> {bid} [style=dashed, label={_q('vxlan (VTEP)' if topo.get('join_kind') == 'vxlan' else 'routed')}];")
            for c in view.get("containers", ()):
                if c.get("bridge") == b["name"]:
                    cid = g.node_id(f"{name}/{c['name']}")
                    out.append(f"    {cid} [label={_q(str(c['name']) + nl + str(c.get('address') or ''))}, fillcolor=\"#f1f8f1\", color=\"#4a7c4e\"];")
                    edges.append(f'  {bid} -> {cid} [label="veth"];')
        out.append("  }")
        edges.append(f'  {hub} -> {up} [penwidth=1.6, label="veth"];')
    out += edges
    out.append("}")
    return "\n".join(out) + "\n"


def _path(wires: dict[str, set[str]], a: str, b: str) -> list[frozenset[str]]:
    """The shortest chain of drawn edges from a to b (breadth first), as node pairs; [] if none."""
    prev: dict[str, str] = {a: a}
    queue = [a]
    while queue:
        here = queue.pop(0)
        if here == b:
            break
        for nxt in sorted(wires.get(here, ())):
            if nxt not in prev:
                prev[nxt] = here
                queue.append(nxt)
    if b not in prev or a == b:
        return []
    chain = []
    node = b
    while node != a:
        chain.append(frozenset((prev[node], node)))
        node = prev[node]
    return chain[::-1]


def points(topo: JSONObject) -> list[str]:
    """Every capture point the diagram shows, in the names users see."""
    host = topo.get("host") or {}
    found = ["wan:uplink", f"host:{host.get('uplink', 'eth0')}"]
    found += [f"host:{b['name']}" for b in topo.get("bridges", ())]
    for c in topo.get("containers", ()):
        if c.get("host_veth"):
            found.append(f"host:{c['host_veth']}")
        found.append(f"{c['name']}:{c['interface']}")
    return found


def render_svg(dot_source: str) -> str:
    """Lay out with Graphviz and return checked, inlinable SVG (no prolog, no comments)."""
    dot = shutil.which("dot")
    if dot is None:
        raise DiagramError("Graphviz's dot is not installed (Debian: apt-get install graphviz)")
    try:
        proc = subprocess.run([dot, "-Tsvg"], input=dot_source.encode(), capture_output=True, timeout=DOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise DiagramError(f"dot -Tsvg took more than {DOT_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise DiagramError(f"dot -Tsvg failed: {proc.stderr.decode(errors='replace').strip()[:300]}")
    return sanitize_svg(proc.stdout.decode("utf-8", errors="replace"))


def sanitize_svg(svg: str) -> str:
    """Strip the XML prolog, doctype and comments; refuse anything that could run or fetch."""
    start = svg.find("<svg")
    if start < 0:
        raise DiagramError("dot produced no <svg> element")
    body = re.sub(r"<!--.*?-->", "", svg[start:], flags=re.S).strip()
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise DiagramError(f"dot produced SVG that does not parse: {exc}") from None
    for el in root.iter():
        tag = el.tag.removeprefix(_SVG_NS)
        if tag not in _ALLOWED:
            raise DiagramError(f"the diagram holds a <{tag}> element, which is not allowed inline")
        for attr, value in el.attrib.items():
            local = attr.rpartition("}")[2].lower()
            if local.startswith("on") or (local == "href" and not value.startswith("#")):
                raise DiagramError(f"the diagram holds a {local}= attribute, which is not allowed inline")
    # Scale to the page: keep the viewBox, drop the fixed size in points.
    return re.sub(r'<svg width="[^"]*" height="[^"]*"', '<svg class="nc-diagram" role="img"', body, count=1)


__all__ = ["DiagramError", "Lost", "lost_hops", "points", "render_svg", "sanitize_svg", "to_dot"]
