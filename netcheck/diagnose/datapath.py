"""The datapath model on the observed state: the kernel snapshot as a model state, and the model's account of a failed probe as a finding.

``observed(snap)`` turns what the diagnosis read (netlink, sysctls, sockets, both backends'
rules) into a ``netcheck.datapath`` state; ``model_disposition`` traces the probe's flow through
it and names the step that decided its fate. Where the model says delivered but the packet
died, that disagreement is itself a finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from netcheck.datapath.values import DEFAULT_RULES, Iface, Listener, Namespace, Port, Route, State

if TYPE_CHECKING:
    from netcheck.diagnose.state import NsState, Snapshot


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
        entries = ns.all_routes or ns.routes
        routes = tuple(Route(r.dst, r.interface, r.gateway, r.kind, r.table, r.metric, r.prefsrc) for r in entries)
        listeners: tuple[Listener, ...] | None = tuple(Listener(s.proto, s.address, s.port) for s in ns.listening) if ns.routes or ns.listening else None
        namespaces.append(Namespace(
            label, tuple(ifaces), routes, ns.ip_rules or DEFAULT_RULES, _sysctls(ns), listeners,
            snap.host.ruleset if host else None, _unread(snap.host.legacy_tables) if host else (),
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


__all__ = ["observed"]
