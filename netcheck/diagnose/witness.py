"""The kernel as witness in the diagnosis: the drops of the repeated probe, mapped to causes.

The lab's ``Witness`` (given by its factory) holds the kernel's drops in the lab's namespaces;
the drops of the probe's own packets during its repeat become ``KernelEvent`` values. Where a
drop reason names a cause soundly, the event carries that cause: a finding the kernel confirms
ranks above one it does not, and when the rules' first cause and the kernel part ways, the
diagnosis shows both.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from netcheck.evidence import Finding, KernelEvent, ProbeResult
from netcheck.kernel.dropwatch import ICMP, TCP, UDP, KernelDrop, PacketKey, Witness, decisive

if TYPE_CHECKING:
    from netcheck.diagnose.path import Flow, LabView

SETTLE = 0.6  # how long after a failed repeat its drop may still be reported (bpftrace is ms behind, and up to ~400 ms when two test processes share 2 cores); a wait on the drop, not a sleep
READY_WAIT = 20.0  # the first diagnosis of a run may wait this long for bpftrace to attach (it starts with the first lab)
FIREWALL = ("forward_drop", "dns_udp_blocked", "rules_split")  # a rule or a policy dropped it (a DNS-only drop is one too)
NO_ROUTE = ("no_route", "no_default_route", "host_no_route", "link_down", "blackhole_route")  # a link that goes down takes its routes with it

# Drop reasons that name a cause by themselves (the kernel's reason, not a guess from configuration).
REASON_CAUSES: dict[str, tuple[str, ...]] = {
    "NETFILTER_DROP": FIREWALL,
    "IP_RPFILTER": ("rp_filter_strict",),
    "IP_INNOROUTES": NO_ROUTE,
    "IP_OUTNOROUTES": NO_ROUTE,
    "IP_INADDRERRORS": ("ip_forward_off", "forwarding_off", *NO_ROUTE, "dnat_missing", "vip_not_jumped", "dnat_wrong_match"),  # ip_error: the route lookup ended unreachable
    "NEIGH_FAILED": ("wrong_gateway", "wrong_prefix", "not_in_bridge", "address_on_bridge_port", "link_down", "arp_ignore", "subnet_overlap"),
    "NEIGH_DEAD": ("wrong_gateway", "link_down"),
    "PKT_TOO_BIG": ("mtu_mismatch", "path_mtu_low"),
    "QDISC_DROP": ("lo_down", "link_down"),  # __dev_queue_xmit on a device that is down
    "IP_LOCALNET": ("route_localnet_off",),
    "IP_LOCAL_SOURCE": ("address_conflict",),
}


def causes_of(drop: KernelDrop, netns: str, flow: Flow) -> tuple[str, ...]:
    """The causes a drop points to, where that is sound. NO_SOCKET names a missing listener
    only for the request, in the container meant to answer (elsewhere it is an un-NATed reply),
    or the missing DNAT that leads to one (Docker's embedded resolver: 127.0.0.11:53 to dockerd's port)."""
    if drop.reason == "NO_SOCKET":
        return ("no_listener", "embedded_dns_rules_missing") if flow.target is not None and netns == flow.target else ()
    return REASON_CAUSES.get(drop.reason, ())


def key_of(result: ProbeResult, flow: Flow) -> PacketKey:
    proto = {"icmp": ICMP, "tcp": TCP, "udp": UDP}.get(result.request.protocol, -1)
    addresses = frozenset(a for a in (flow.src_addr, flow.dst_addr, flow.target_addr, result.source_address) if a)
    return PacketKey(proto, addresses, result.flow_id)


def events(lab: LabView, witness: Witness, result: ProbeResult, flow: Flow, since_ns: int, ended: float) -> tuple[KernelEvent, ...]:
    """The decisive drops of the probe's packets since ``since_ns``, in the lab's names, each with its causes
    (waiting for a first one until SETTLE after the repeat ``ended``, a time.monotonic())."""
    out: list[KernelEvent] = []
    key = key_of(result, flow)
    if result.kernel_drop is None and not result.passed:
        witness.settle(key, since_ns=since_ns, timeout=max(0.0, ended + SETTLE - time.monotonic()))
    for d in witness.drops(key, since_ns=since_ns):
        if not decisive(d) and d.reason != "NO_SOCKET":
            continue
        label = witness.labels.get(d.netns_inode, "?")
        device = lab.spec_name(d.device) if label == "host" and d.device != "-" else d.device
        e = KernelEvent.of(d, label, device, causes_of(d, label, flow))
        if e not in out:
            out.append(e)
    return tuple(out)


def rank(findings: list[Finding], kernel: tuple[KernelEvent, ...]) -> tuple[list[Finding], str]:
    """Findings the kernel confirms first (each says so), then the rest, by score; and the
    disagreement between the rules' first cause and the kernel, if any ("" if none)."""
    named = {c: e for e in reversed(kernel) for c in e.causes}
    if not kernel:
        return findings, ""
    confirmed = [replace(f, evidence=(f"the kernel confirms it: {named[f.cause].line()} ({named[f.cause].packet})", *f.evidence)) for f in findings if f.cause in named]
    rest = [f for f in findings if f.cause not in named]
    ranked = confirmed + rest
    first = findings[0] if findings else None
    drops = "; ".join(e.line() for e in kernel)
    pointed = sorted({c for e in kernel for c in e.causes})
    if first is None:
        return ranked, f"the rules name no cause, but the kernel dropped the probe: {drops}"
    if pointed and first.cause not in named:
        now = f"; ranked first now: [{ranked[0].cause}]" if ranked[0] is not first else ""
        return ranked, f"the rules rank [{first.cause}] first; the kernel dropped the probe with {drops}, which points to {', '.join(pointed)}{now}"
    return ranked, ""
