"""The datapath model on the observed state: the kernel snapshot as a model state, and the model's account of a failed probe as a finding.

``observed(snap)`` turns what the diagnosis read (netlink, sysctls, sockets, both backends'
rules) into a ``netcheck.datapath`` state; ``probe_trace`` traces the probe's flow through it, and
the rule ``model_disposition`` (rules.py) names the step that decided its fate. Where the model
says delivered but the packet died, ``disagreement`` says so in the diagnosis' notes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from netcheck.datapath import model
from netcheck.datapath.values import DEFAULT_RULES, Flow, Iface, Listener, Namespace, Port, Route, State, Trace

if TYPE_CHECKING:
    from netcheck.diagnose.rules import Evidence
    from netcheck.diagnose.state import NsState, Snapshot

MAX_STEPS_SHOWN = 12


def observed(snap: Snapshot, peers: Mapping[tuple[str, str], tuple[str, str]] | None = None) -> State:
    """The state a kernel snapshot shows. ``peers`` pairs veth ends across namespaces ((label, link)
    both ways); without it, ends are paired by their peer indexes."""
    pairs = dict(peers) if peers is not None else _pair_by_index(snap)
    ports = {p.port: p for p in snap.host.bridge_ports}
    namespaces = []
    for label, ns in snap.namespaces.items():
        host = label == "host"
        ifaces = []
        for link in ns.links:
            kind = "loopback" if link.name == "lo" else link.kind
            port = None
            if host and link.name in ports:
                bp = ports[link.name]
                port = Port(bp.bridge, bp.state, bp.isolated, bp.learning)
            opts = snap.host.bridge(link.name) if host and link.kind == "bridge" else None
            ifaces.append(Iface(link.name, kind, link.up, tuple(a.address for a in ns.addrs(link.name)), port, pairs.get((label, link.name)),
                                bool(opts and opts.nf_call_iptables)))
        entries = (*(ns.all_routes or ns.routes), *ns.routes6)
        routes = tuple(Route(r.dst, r.interface, r.gateway, r.kind, r.table, r.metric, r.prefsrc) for r in entries
                       if all(x is None or x.version == r.dst.version for x in (r.gateway, r.prefsrc)))
        listeners: tuple[Listener, ...] | None = tuple(Listener(s.proto, s.address, s.port, ":" in s.address) for s in ns.listening) if ns.routes or ns.listening else None
        namespaces.append(Namespace(
            label, tuple(ifaces), routes, ns.ip_rules or DEFAULT_RULES, _sysctls(ns), listeners,
            snap.host.ruleset if host else None, _unread(snap.host.legacy_tables) if host else (),
            (4, 6) if ns.listening6 else (4,),  # IPv6's sockets are read where the namespace has IPv6 addresses (elsewhere an IPv6 flow's listener is "unknown")
        ))
    return State(tuple(namespaces), source="kernel")


def _sysctls(ns: NsState) -> tuple[tuple[str, int], ...]:
    out = []
    for k, v in ns.sysctls.items():
        if v not in (None, "") and str(v).lstrip("-").isdigit():
            out.append((k, int(str(v))))
    return tuple(sorted(out))


def _unread(legacy: Iterable[str]) -> tuple[str, ...]:
    """Legacy tables the diagnosis does not read (it reads filter and nat): the model says "unknown" at their hooks."""
    return tuple(f"legacy {t}" for t in legacy if t in ("raw", "mangle", "security"))


def _pair_by_index(snap: Snapshot) -> dict[tuple[str, str], tuple[str, str]]:
    """Veth ends paired by peer indexes (each names the other's index), preferring a pair with the host."""
    ends = [(label, link) for label, ns in snap.namespaces.items() for link in ns.links if link.kind == "veth" and link.peer_index is not None]
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for label, link in sorted(ends, key=lambda e: e[0] != "host"):
        if (label, link.name) in out:
            continue
        for other_label, other in ends:
            if other_label != label and other.index == link.peer_index and other.peer_index == link.index and (other_label, other.name) not in out:
                out[(label, link.name)] = (other_label, other.name)
                out[(other_label, other.name)] = (label, link.name)
                break
    return out


def peers(ev: Evidence) -> dict[tuple[str, str], tuple[str, str]]:
    """The lab's veth pairs, from its sides (each container's host veth) and its uplink; the rest by peer indexes."""
    out = _pair_by_index(ev.snap)
    pairs: list[tuple[tuple[str, str], tuple[str, str]]] = []
    for c in ev.t.containers:
        s = ev.side(c.name)
        if s is not None and s.veth_k:
            pairs.append(((c.name, c.interface), ("host", s.veth_k)))
    wan = ev.snap.ns("wan")
    up = ev.lab.kname(ev.t.host.uplink) if _has(ev, ev.t.host.uplink) else None
    wan_end = next((link.name for link in wan.links if link.kind == "veth"), None) if wan is not None else None
    if up and wan_end:
        pairs.append((("host", up), ("wan", wan_end)))
    for a, b in pairs:
        out[a], out[b] = b, a
    return out


def _has(ev: Evidence, spec_iface: str) -> bool:
    try:
        ev.lab.kname(spec_iface)
    except KeyError:
        return False
    return True


def probe_trace(ev: Evidence) -> Trace | None:
    """The model's trace of the failed probe's flow (either family) on the state read back; None for a probe it does not trace (ARP and NDP, or none).
    An SCTP INIT is traced to its arrival (the probe proves it by its capture)."""
    f = ev.flow
    if f is None or f.proto not in ("icmp", "tcp", "udp", "sctp") or ev.snap.ns(f.source) is None:
        return None
    state = observed(ev.snap, peers(ev))
    return model.trace(state, Flow(f.source, f.dst_addr, f.proto, f.dport if f.proto != "icmp" else None, f.src_addr or None, reply=f.proto != "sctp"))


def shown(trace: Trace) -> tuple[str, ...]:
    """The trace as evidence lines: the disposition, then each step (the last ones if it is long)."""
    steps = [s.render().strip() for s in trace.steps]
    if len(steps) > MAX_STEPS_SHOWN:
        steps = [f"... {len(steps) - MAX_STEPS_SHOWN} earlier steps", *steps[-MAX_STEPS_SHOWN:]]
    return (f"model: {trace.disposition}: {trace.reason}", *(f"model step {s}" for s in steps))


def disagreement(ev: Evidence) -> str:
    """A note when the model delivers a flow whose probe died: the lab holds something the state read back does not show."""
    r = ev.repeated or ev.result
    if r is None or ev.flow is None or ev.flow.expected != "reach" or r.passed:
        return ""
    t = probe_trace(ev)
    if t is None or not t.delivered:
        return ""
    return ("the datapath model delivers this flow on the state read back, yet the probe died: the model and the lab disagree "
            "(something the snapshot does not hold decided it, such as another namespace's firewall)")


__all__ = ["disagreement", "observed", "peers", "probe_trace", "shown"]
