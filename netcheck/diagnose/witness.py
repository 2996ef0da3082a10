"""The kernel as witness in the diagnosis: the drops of the repeated probe, mapped to causes,
and the nf_tables rules and verdicts its packets met.

The lab's ``Witness`` (given by its factory) holds the kernel's drops in the lab's namespaces;
the drops of the probe's own packets during its repeat become ``KernelEvent`` values. Where a
drop reason names a cause soundly, the event carries that cause. The nftables trace of the
repeat (``netcheck.kernel.nftrace``, in the lab's host namespace) gives the exact rule and
verdict, a chain's policy marked as such. ``netcheck.diagnose.ranking`` ranks the findings by
this evidence; when the rules' first cause and the kernel part ways, the diagnosis shows both.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from netcheck.evidence import Finding, KernelEvent, ProbeResult
from netcheck.kernel import nftrace
from netcheck.kernel.dropwatch import ICMP, ICMP6, TCP, UDP, KernelDrop, PacketKey, Witness, decisive
from netcheck.kernel.nftrace import NftTrace, TraceEvent

if TYPE_CHECKING:
    from netcheck.diagnose.path import Flow, LabView
    from netcheck.lab import Lab

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
    """What names the probe's packets; an ICMP probe over IPv6 is ICMPv6 (protocol 58)."""
    proto = {"icmp": ICMP6 if ":" in flow.dst_addr else ICMP, "tcp": TCP, "udp": UDP}.get(result.request.protocol, -1)
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


NFT_STEPS_SHOWN = 16  # a TCP probe's retries repeat the same steps: each is shown once


def nft_trace(lab: Lab, flow: Flow, result: ProbeResult) -> NftTrace | str:
    """A trace of the repeat's packets in the lab's host namespace (not started), or why there is none.
    Its table is recorded in the lab's ledger before it exists (host mode too) and gone after ``stop()``."""
    from netcheck.ledger import NftTableEntry

    why = nftrace.unavailable()
    if why:
        return f"no nft trace: {why}"
    ledger = getattr(lab, "ledger", None)
    if ledger is None:
        return "no nft trace: the lab keeps no ledger, so a table of netcheck's own cannot be recorded"
    table = f"{lab.names.tag}_trace"
    host = lab.host

    def record(family: str, name: str) -> None:
        if not any(isinstance(e, NftTableEntry) and (e.family, e.table, e.netns) == (family, name, host.name) for e in ledger.entries):
            ledger.record(NftTableEntry(host.name, name, family, owned=True))

    return NftTrace(host, table, record=record)


def trace_addresses(result: ProbeResult, flow: Flow) -> set[str]:
    return set(key_of(result, flow).addresses)


def trace_protocols(flow: Flow) -> tuple[str, ...]:
    """nft's names of the probe's protocol, and ICMP's (a reject, an unreachable, a fragmentation-needed)."""
    six = ":" in flow.dst_addr
    icmp = "ipv6-icmp" if six else "icmp"
    return tuple(dict.fromkeys(p for p in ((icmp if flow.proto == "icmp" else flow.proto), icmp) if p in ("icmp", "ipv6-icmp", "tcp", "udp", "sctp")))


def nft_steps(events: list[TraceEvent], result: ProbeResult, flow: Flow, trace: NftTrace) -> tuple[TraceEvent, ...]:
    """The steps of the repeated probe's own packets (its flow id: a step without headers belongs to
    the packet whose trace id it shares), each once, in order, without the trace table's own and the
    chains' ends (a policy or a return follows each)."""
    key = key_of(result, flow)
    ours = {e.trace_id for e in events if e.src and key.matches(e)}
    out: list[TraceEvent] = []
    seen: set[tuple[object, ...]] = set()
    for e in events:
        k = (e.family, e.table, e.chain, e.kind, e.handle, e.verdict, e.target)
        if e.trace_id in ours and not trace.own(e) and e.kind != "end" and k not in seen:
            seen.add(k)
            out.append(e)
    return tuple(out)


def nft_lines(steps: tuple[TraceEvent, ...], trace: NftTrace, names: dict[int, str]) -> tuple[str, ...]:
    shown = tuple(f"host: {nftrace.render(e, trace.listing, lambda i: names.get(i or 0, str(i)))}" for e in steps if e.verdict != "continue")
    return shown[:NFT_STEPS_SHOWN] + ((f"... and {len(shown) - NFT_STEPS_SHOWN} more steps",) if len(shown) > NFT_STEPS_SHOWN else ())


def nft_dropped(steps: tuple[TraceEvent, ...]) -> TraceEvent | None:
    """The step where nf_tables dropped the probe (a rule's drop, or a chain's drop policy), if it did."""
    return next((e for e in steps if e.verdict == "drop"), None)


def rules_vs_kernel(first: Finding | None, ranked: list[Finding], kernel: tuple[KernelEvent, ...]) -> str:
    """Where the rules' first cause and the kernel's drops part ways ("" if they do not): the rules
    name no cause though the kernel dropped the probe, or their first cause is not one it points to."""
    if not kernel:
        return ""
    drops = "; ".join(e.line() for e in kernel)
    named = {c for e in kernel for c in e.causes}
    if first is None:
        return f"the rules name no cause, but the kernel dropped the probe: {drops}"
    if named and first.cause not in named:
        now = f"; ranked first now: [{ranked[0].cause}]" if ranked and ranked[0].cause != first.cause else ""
        return f"the rules rank [{first.cause}] first; the kernel dropped the probe with {drops}, which points to {', '.join(sorted(named))}{now}"
    return ""


def model_vs_kernel(model_end: tuple[str, str, str] | None, model_causes: set[str], kernel: tuple[KernelEvent, ...], nft_drop: str, witnessed: bool,
                    repeated: ProbeResult | None) -> str:
    """Where the datapath model (its (disposition, stage, text); None: no account of the flow) and the kernel
    part ways ("" if they do not), both shown: the model
    delivers the flow but the kernel dropped it; the model ends it elsewhere than the kernel's drop
    points; or the model drops it but the kernel, watching, dropped none of its packets."""
    kernel_says = "; ".join([*(f"{e.line()} ({e.packet})" for e in kernel), *([f"nft trace: {nft_drop}"] if nft_drop else [])])
    if model_end is None:  # the model has no account of this flow (IPv6, ARP)
        return ""
    disposition, stage, text = model_end
    if disposition == "delivered":
        return f"the model delivers the flow on the state read back; the kernel dropped it: {kernel_says}" if kernel_says else ""
    model_says = f"the model ends the probe at {stage}: {disposition}: {text}"
    pointed = {c for e in kernel for c in e.causes} | (set(FIREWALL) if nft_drop else set())
    if kernel_says and pointed and not pointed & model_causes:
        return f"{model_says}; the kernel dropped it elsewhere: {kernel_says}"
    if not kernel_says and witnessed and disposition in ("dropped", "rejected") and repeated is not None and repeated.verdict == "unreachable" and repeated.kernel_drop is None:
        return f"{model_says}; the kernel, watching, dropped none of the probe's packets"
    return ""
