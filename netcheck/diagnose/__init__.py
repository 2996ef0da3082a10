"""Diagnosis: where the packet died, why, and what to change.

``diagnose(lab, result, resend)`` runs only for a probe that did not go as expected (passing
probes cost nothing). It works out the probe's expected path from the topology, reads the
rule counters, sends the probe's request again through ``resend`` with a capture at every
hop, reads the counters again and the state of every namespace, and hands the evidence to a
small rule set (``rules.py``) that names the cause, where it is, and the command that fixes it.

The diagnosis does not know the prober: it is given a way to send again (``Resend``, which
``Prober.conclusive`` is). ``netcheck.diagnosing`` joins the two.

Diagnoses of one lab run one at a time (probes sent together, ``Prober.many``, fail together),
so that the counter deltas of one repeated probe are not mixed with another's: the lock is
the lab's own, one of its attachments.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from netcheck.diagnose import fixes as fixing
from netcheck.diagnose import path as paths
from netcheck.diagnose import recording as recordings
from netcheck.diagnose import rules as cause_rules
from netcheck.diagnose import state as kernel_state
from netcheck.diagnose import witness as witnessing
from netcheck.diagnose.firewall import counter_deltas
from netcheck.evidence import Diagnosis, Finding, KernelEvent, ProbeRequest, ProbeResult
from netcheck.kernel import nftrace
from netcheck.kernel.nftrace import NftTrace, TraceEvent

if TYPE_CHECKING:
    from netcheck.diagnose.firewall import Placed
    from netcheck.kernel.netns import Netns
    from netcheck.lab import Lab

REPEAT_TIMEOUT = 0.5  # the repeated probe's wait for an answer; a lab's round trip is well under 1 ms
SNMP_KEYS = ("TcpExt.IPReversePathFilter", "Ip.InAddrErrors", "Ip.InNoRoutes", "Ip.OutNoRoutes", "IpExt.InNoRoutes", "Ip.ForwDatagrams")
ONE_AT_A_TIME = "netcheck.diagnose: one diagnosis at a time"  # the key of the lab's lock among its attachments


def _lock(lab: Lab) -> threading.Lock:
    """The lab's diagnosis lock: made on first use, it lives and goes with the lab."""
    return lab.attachment(ONE_AT_A_TIME, threading.Lock, lambda _lock: None)


class Resend(Protocol):
    """Sends a probe request again and returns its result, recording nothing (``Prober.conclusive``)."""

    def __call__(self, request: ProbeRequest) -> ProbeResult: ...


def diagnose(lab: Lab, result: ProbeResult, resend: Resend | None = None) -> Diagnosis:
    """Diagnose one failed probe: the path trace, the state, the causes ranked, the fixes.

    Without ``resend`` the probe is not repeated, and the trace is the original probe's captures."""
    with _lock(lab):
        return _diagnose(lab, result, resend)


def _diagnose(lab: Lab, result: ProbeResult, resend: Resend | None) -> Diagnosis:
    t0 = time.perf_counter()
    rec = _gather(lab, result, resend)

    def verify(findings: list[Finding], notes: list[str]) -> list[Finding]:
        """Try the fixes on the lab (a sandbox's), repeating the probe: verified, or demoted."""
        why_not = fixing.applicable(lab)
        if why_not is None:
            assert resend is not None
            return fixing.verify(lab, result.request, resend, findings, REPEAT_TIMEOUT)
        notes.append(f"fixes not tried: {why_not}")
        return findings

    d = conclude(rec, verify if resend is not None else None)
    d = replace(d, elapsed_ms=round((time.perf_counter() - t0) * 1000, 1))
    recordings.save_if_asked(rec)
    return d


def _gather(lab: Lab, result: ProbeResult, resend: Resend | None) -> recordings.Recording:
    """Everything the diagnosis judges, read from the lab and the kernel (the repeat, the counters, the snapshot, the witness)."""
    notes: list[str] = []
    flow = paths.flow_of(lab, result)
    route = paths.expected_route(lab, flow)
    namespaces = lab.namespaces()
    involved = {"host", "wan", flow.source, *([flow.target] if flow.target else [])}
    watched = {k: v for k, v in namespaces.items() if k in involved}

    repeated: ProbeResult | None = None
    matched = []
    snmp_grew: dict[str, dict[str, int]] = {}
    witness = getattr(lab, "witness", None)
    no_witness = witness.absent(wait=witnessing.READY_WAIT) if witness is not None else "this lab has no drop watch (it was not built by a LabFactory)"
    trace = witnessing.nft_trace(lab, flow, result) if resend is not None else "no nft trace: the probe was not repeated"
    traced: list[TraceEvent] = []
    since_ns = time.monotonic_ns()
    if resend is not None:
        before, snmp_before = _counters(lab, watched)
        tracing = _start(trace, result, flow, notes)
        try:
            # With a witness, the repeat ends at the kernel's drop of the probe instead of its timeout.
            repeated = resend(replace(result.request, capture=route.points, timeout=REPEAT_TIMEOUT, end_on_drop=no_witness is None))
        except Exception as exc:  # noqa: BLE001 - without a repeat, the diagnosis still reads the state
            notes.append(f"the probe could not be repeated: {exc}")
        finally:
            traced = _stop(tracing, notes)  # before the snapshot: the trace table is gone when the rules are read
    ended = time.monotonic()

    addresses = {a for a in (flow.src_addr, flow.dst_addr, flow.target_addr) if a}
    # The others' links and addresses only: the probe does not cross them. The SNMP counters after the repeat in the same hand-over.
    snap, snmp_after = kernel_state.observe(namespaces, full=involved, addresses=addresses, counted=watched if resend is not None else ())
    if resend is not None:
        snmp_grew = kernel_state.snmp_deltas(snmp_before, snmp_after, SNMP_KEYS)
        matched = counter_deltas(before, list(snap.host.ruleset.rules()))  # the snapshot read the counters after the repeat
    evidence_of = repeated if repeated is not None else result
    hops = paths.trace(route, evidence_of)
    breaks = paths.breaks(hops)
    facts = recordings.facts(lab, snap, (route,), result)
    ev = cause_rules.Evidence(facts, snap, flow, route, result, repeated, hops, breaks, matched, snmp_grew)
    kernel_state.ask_routes(snap, namespaces, cause_rules.route_questions(ev))
    kernel: tuple[KernelEvent, ...] = ()
    nft_lines: tuple[str, ...] = ()
    nft_drop = ""
    if repeated is None:
        kernel_note = "" if resend is None else "the probe was not repeated, so the kernel was not asked"
    elif no_witness is not None:
        kernel_note = f"no kernel witness: {no_witness}; the diagnosis goes on without it"
    else:
        assert witness is not None
        kernel = witnessing.events(lab, witness, repeated, flow, since_ns, ended)
        lost = "the kernel dropped none of the probe's packets during the repeat (lost elsewhere: a queue, a route to nowhere, or never sent)"
        kernel_note = "" if kernel or repeated.verdict != "unreachable" else lost
    if repeated is not None and isinstance(trace, NftTrace) and traced:
        steps = witnessing.nft_steps(traced, repeated, flow, trace)
        names = {link.index: lab.spec_name(link.name) for link in (snap.namespaces["host"].links if "host" in snap.namespaces else ())}
        nft_lines = witnessing.nft_lines(steps, trace, names)
        dropped = witnessing.nft_dropped(steps)
        nft_drop = nftrace.render(dropped, trace.listing, lambda i: names.get(i or 0, str(i))) if dropped is not None else ""
    return recordings.Recording(facts, snap, flow, route, result, repeated, hops, tuple(breaks), tuple(matched), snmp_grew, tuple(sorted(involved)), kernel, kernel_note,
                         no_witness is None, nft_lines, nft_drop, resend is not None, tuple(notes))


Verify = Callable[[list[Finding], list[str]], list[Finding]]


def conclude(rec: recordings.Recording, verify: Verify | None = None) -> Diagnosis:
    """The diagnosis of a recording: judged (``recording.judge``), its fixes tried by ``verify`` where given (the live lab's),
    and shown. ``conclude(recording.load(path))`` replays a recorded diagnosis."""
    notes = list(rec.notes)
    j = recordings.judge(rec)
    if j.model_note:
        notes.append(j.model_note)
    findings = list(j.findings)
    repeated, snap = rec.repeated, rec.snap
    if verify is not None and repeated is not None and not repeated.passed and any(f.fixes for f in findings):
        findings = verify(findings, notes)
    findings = [*findings, *j.model_findings]  # after the fixes were tried: the model's account ranks last and holds no fix to try

    if repeated is not None and repeated.passed:
        notes.append("the repeated probe went as expected: the failure did not recur (a transient loss, or something changed meanwhile)")
    for label, ns in snap.namespaces.items():
        notes.extend(f"reading {label}: {e}" for e in ns.errors)
    notes.extend(f"reading host: {e}" for e in snap.host.errors)
    for label, grew in rec.snmp.items():
        shown = ", ".join(f"{k} +{v}" for k, v in grew.items() if k != "Ip.ForwDatagrams")
        if shown:
            notes.append(f"{label} kernel counters during the repeated probe: {shown}")
    route = rec.route
    return Diagnosis(
        findings=tuple(findings),
        trace=rec.hops,
        notes=tuple(notes),
        breaks=tuple(b.render() for b in rec.breaks) if route is not None and route.points else (),
        rewrites=tuple(paths.rewrites(rec.hops)),
        matched=tuple(f"+{n} {p.render()}" for p, n in rec.matched),
        conntrack=tuple(e.render() for e in snap.host.conntrack[:8]),
        repeated=_repeat_line(repeated) if rec.resent else "the probe was not repeated; the captures are the original probe's",
        kernel=rec.kernel,
        kernel_note=rec.kernel_note,
        nft_trace=rec.nft_lines,
        disagreement=j.disagreement,
        captures=repeated.captures if repeated is not None else (),
        started_at=repeated.started_at if repeated is not None else 0.0,
    )


def _counters(lab: Lab, watched: dict[str, Netns]) -> tuple[list[Placed], dict[str, dict[str, int]]]:
    """The host's rule counters and every watched namespace's SNMP counters before the repeat, side by side (one hand-over each)."""
    return kernel_state.counters({**watched, "host": lab.host}, watched)


def _start(trace: NftTrace | str, result: ProbeResult, flow: paths.Flow, notes: list[str]) -> NftTrace | None:
    """Start the nft trace of the repeat (None, with a note why, where it cannot run)."""
    if isinstance(trace, str):
        notes.append(trace)
        return None
    try:
        return trace.start(witnessing.trace_addresses(result, flow), witnessing.trace_protocols(flow))
    except Exception as exc:  # noqa: BLE001 - without a trace, the diagnosis goes on
        notes.append(f"no nft trace: {exc}")
        return None


def _stop(tracing: NftTrace | None, notes: list[str]) -> list[TraceEvent]:
    if tracing is None:
        return []
    try:
        events = tracing.stop()
    except Exception as exc:  # noqa: BLE001 - the table is in the ledger: teardown removes what stop() could not
        notes.append(f"the nft trace failed: {exc}")
        return []
    if not events:
        notes.append("nft trace: none of the probe's packets reached the host's netfilter hooks")
    elif all(tracing.own(e) for e in events):
        notes.append("nft trace: no nf_tables chain but netcheck's own saw the probe's packets "
                     "(no nf_tables rule is on their path; iptables-legacy rules leave no trace; their counters are read instead)")
    return events


def _repeat_line(r: ProbeResult | None) -> str:
    if r is None:
        return "the probe could not be repeated"
    how = r.verdict + (f": {r.error}" if r.error else "")
    return f"the probe repeated with a capture at every hop: {how}"


__all__ = ["Resend", "conclude", "diagnose"]
