"""What a host's life did to a working setup: the tool's rules gone (its nf_tables tables, chains and policies
against those it left after its setup, or before the first lifecycle event, netcheck.lifecycle), and a stale
conntrack entry that keeps a flow on a NAT decision the rules no longer make. Rules of netcheck.diagnose.rules,
given to ``rules.evaluate`` as ``RULES`` by the diagnosis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from netcheck.diagnose.firewall import Pkt
from netcheck.evidence import Finding, FlushConntrack
from netcheck.kernel.inspect import CtEntry
from netcheck.lifecycle import lost

if TYPE_CHECKING:
    from netcheck import spec
    from netcheck.diagnose.rules import Evidence

# What writes a tool's rules again (the fix when they are gone), by setup mode.
RELOAD = {
    "podman": "podman network reload --all  (netavark writes every running container's rules again)",
    "docker": "systemctl restart docker  (dockerd writes its chains and its running containers' port rules again at start; "
              "with \"live-restore\": true the containers keep running)",
    "netavark": "run `netavark --config DIR --file NETWORK.json setup NETNS` again for each container (Podman does it with `podman network reload --all`)",
    "cni": "CNI has no reload: run each plugin's ADD again (the runtime does it when the container is restarted)",
    "script": "run the setup script again",
    "netcheck": "rebuild the lab (these are netcheck's own rules: the builder writes them, nothing reloads them)",
}
TOOL_NAMES = {"podman": "Podman's (netavark)", "docker": "Docker's", "netavark": "netavark's", "cni": "the CNI plugins'", "script": "the setup script's", "netcheck": "the lab's own"}


def reload_hint(mode: str, t: spec.Topology) -> str:
    """What writes the rules of the tool ``mode`` (netcheck.lifecycle.tool_of) again."""
    if mode == "script":
        cmd = t.setup.command if t.setup is not None else ()
        return f"run the setup script again: {' '.join(cmd)}" if cmd else RELOAD["script"]
    return RELOAD[mode]


def tool_rules_gone(ev: Evidence) -> Iterator[Finding]:
    """The tool's tables, chains or policies are not what they were after its setup (or before the first event)."""
    base, now = ev.lab.tool_rules, ev.lab.tool_rules_now
    if not base or now is None:
        return
    gone = lost(base, now)
    if not gone:
        return
    whose = TOOL_NAMES[ev.lab.tool]
    after = ev.lab.lost_since
    since = f", since the event {after[0]} (`{after[1]}`)" if after else ""
    # With an event recorded, it is known to be the cause; without, the packet-level cause ranks first.
    yield Finding("tool_rules_gone", "host", f"host: {whose} rules are gone{since}: {gone[0]}" + (f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""),
                  reload_hint(ev.lab.tool, ev.t), tuple(gone[:12]), score=97 if after else 70)


def _masqueraded_now(ev: Evidence, src: str, dst: str, proto: str, dport: int | None) -> bool:
    """Do the host's rules now masquerade this flow, by a rule whose every condition the walk models?"""
    r = ev.route
    d = ev.fw.nat("postrouting", Pkt(src, dst, proto, dport, r.in_iface if r else None, r.out_iface if r else None))
    return d is not None and d.verdict in ("MASQUERADE", "SNAT") and (d.rule is None or not d.rule.rule.unmodelled)


def _dnat_now(ev: Evidence, e: CtEntry) -> str | None:
    """The address the host's rules DNAT this flow's first packet to now (None: no DNAT the walk models)."""
    r = ev.route
    d = ev.fw.nat("prerouting", Pkt(e.src, e.dst, e.proto, e.dport, r.in_iface if r else None, None))
    if d is None or d.verdict != "DNAT" or d.rule is None or d.rule.rule.unmodelled or not d.rule.rule.to_destination:
        return None
    return d.rule.rule.to_destination.rsplit(":", 1)[0] if d.rule.rule.to_destination.count(":") == 1 else d.rule.rule.to_destination


def stale_conntrack(ev: Evidence) -> Iterator[Finding]:
    """The failed flow's own conntrack entry holds a NAT decision the rules no longer make: no SNAT although a
    MASQUERADE now covers the container (the entry predates the rule), or a DNAT to an address the published
    container no longer has (it came back with a new one, and the rules followed it; the entry did not)."""
    flow, result = ev.flow, ev.result
    if flow is None or result is None or flow.proto not in ("udp", "tcp"):
        return
    sport = result.request.source_port
    for e in ev.snap.host.conntrack:
        if (e.proto, e.src, e.dst, e.dport) != (flow.proto, flow.src_addr, flow.dst_addr, flow.dport) or (sport is not None and e.sport != sport):
            continue
        stale = ""
        fix = FlushConntrack("host", e.src)
        if flow.via == "outside" and not e.snat and _masqueraded_now(ev, e.src, e.dst, e.proto, e.dport):
            stale = f"it has no source NAT, although a MASQUERADE rule covers {flow.source} now: the entry was made before the rule, and conntrack NATs a flow at its first packet only"
        elif flow.dnat and flow.target_addr and e.dnat and e.reply_src != flow.target_addr and _dnat_now(ev, e) == flow.target_addr:
            stale = (f"it sends the flow to {e.reply_src}:{e.reply_sport}, but {flow.target} is {flow.target_addr} now and the DNAT says so: the entry was made "
                     f"before {flow.target} changed address, and conntrack NATs a flow at its first packet only (a UDP flow that keeps sending never expires)")
            fix = FlushConntrack("host", e.src, proto=e.proto, dst=e.dst, sport=e.sport, dport=e.dport)  # this entry only
        if not stale:
            continue
        delete = f"conntrack -D -p {e.proto} --orig-src {e.src} --orig-dst {e.dst} --sport {e.sport} --dport {e.dport}"
        yield Finding("stale_conntrack", "host", f"host: a stale conntrack entry steers {flow.source}'s {e.proto} flow {e.src}:{e.sport} > {e.dst}:{e.dport}: {stale}",
                      ev.run("host", delete) + "  (delete the entry: the next packet makes a new one, with today's rules)", (f"conntrack (host): {e.render()}",), score=96,
                      fixes=(fix,))  # verified by re-probing, before a cause whose fix flushes it too
        return


RULES = (tool_rules_gone, stale_conntrack)

__all__ = ["RELOAD", "RULES", "reload_hint", "stale_conntrack", "tool_rules_gone"]
