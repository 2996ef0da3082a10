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
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from netcheck.diagnose import datapath as model
from netcheck.diagnose import dns as dns_rules
from netcheck.diagnose import fixes as F
from netcheck.diagnose import lifecycle
from netcheck.diagnose import path as P
from netcheck.diagnose import ranking as Rk
from netcheck.diagnose import rules as R
from netcheck.diagnose import state as St
from netcheck.diagnose import witness as W
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
    notes: list[str] = []
    flow = P.flow_of(lab, result)
    route = P.expected_route(lab, flow)
    namespaces = lab.namespaces()
    involved = {"host", "wan", flow.source, *([flow.target] if flow.target else [])}
    watched = {k: v for k, v in namespaces.items() if k in involved}

    repeated: ProbeResult | None = None
    matched = []
    snmp_grew: dict[str, dict[str, int]] = {}
    witness = getattr(lab, "witness", None)
    no_witness = witness.absent(wait=W.READY_WAIT) if witness is not None else "this lab has no drop watch (it was not built by a LabFactory)"
    trace = W.nft_trace(lab, flow, result) if resend is not None else "no nft trace: the probe was not repeated"
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
    snap, snmp_after = St.observe(namespaces, full=involved, addresses=addresses, counted=watched if resend is not None else ())
    if resend is not None:
        snmp_grew = St.snmp_deltas(snmp_before, snmp_after, SNMP_KEYS)
        matched = counter_deltas(before, list(snap.host.ruleset.rules()))  # the snapshot read the counters after the repeat
    evidence_of = repeated if repeated is not None else result
    hops = P.trace(route, evidence_of)
    breaks = P.breaks(hops)
    ev = R.Evidence(lab, snap, flow, route, result, repeated, hops, breaks, matched, snmp_grew)
    findings = R.evaluate(ev, (*dns_rules.RULES, *lifecycle.RULES))
    model_note = model.disagreement(ev)
    if model_note:
        notes.append(model_note)
    kernel: tuple[KernelEvent, ...] = ()
    nft_lines: tuple[str, ...] = ()
    nft_drop = ""
    if repeated is None:
        kernel_note = "" if resend is None else "the probe was not repeated, so the kernel was not asked"
    elif no_witness is not None:
        kernel_note = f"no kernel witness: {no_witness}; the diagnosis goes on without it"
    else:
        assert witness is not None
        kernel = W.events(lab, witness, repeated, flow, since_ns, ended)
        lost = "the kernel dropped none of the probe's packets during the repeat (lost elsewhere: a queue, a route to nowhere, or never sent)"
        kernel_note = "" if kernel or repeated.verdict != "unreachable" else lost
    if repeated is not None and isinstance(trace, NftTrace) and traced:
        steps = W.nft_steps(traced, repeated, flow, trace)
        names = {link.index: lab.spec_name(link.name) for link in (snap.namespaces["host"].links if "host" in snap.namespaces else ())}
        nft_lines = W.nft_lines(steps, trace, names)
        dropped = W.nft_dropped(steps)
        nft_drop = nftrace.render(dropped, trace.listing, lambda i: names.get(i or 0, str(i))) if dropped is not None else ""
    model_end = _model_end(ev)
    witnessed = Rk.Witnessed(frozenset(involved), model_end, kernel, nft_drop, {p.rule.key(): n for p, n in matched}, snmp_grew)
    first = findings[0] if findings else None
    findings = Rk.rank(findings, witnessed)
    disagreement = "; ".join(x for x in (W.rules_vs_kernel(first, findings, kernel),
                                         W.model_vs_kernel(model_end, witnessed.model_causes(), kernel, nft_drop, no_witness is None, repeated)) if x)
    if resend is not None and repeated is not None and not repeated.passed and any(f.fixes for f in findings):
        why_not = F.applicable(lab)
        if why_not is None:
            findings = F.verify(lab, result.request, resend, findings, REPEAT_TIMEOUT)
        else:
            notes.append(f"fixes not tried: {why_not}")

    findings = [*findings, *_model_findings(ev)]  # after the fixes were tried: the model's account ranks last and holds no fix to try

    if repeated is not None and repeated.passed:
        notes.append("the repeated probe went as expected: the failure did not recur (a transient loss, or something changed meanwhile)")
    for label, ns in snap.namespaces.items():
        notes.extend(f"reading {label}: {e}" for e in ns.errors)
    notes.extend(f"reading host: {e}" for e in snap.host.errors)
    for label, grew in snmp_grew.items():
        shown = ", ".join(f"{k} +{v}" for k, v in grew.items() if k != "Ip.ForwDatagrams")
        if shown:
            notes.append(f"{label} kernel counters during the repeated probe: {shown}")
    return Diagnosis(
        findings=tuple(findings),
        trace=hops,
        notes=tuple(notes),
        breaks=tuple(b.render() for b in breaks) if route.points else (),
        rewrites=tuple(P.rewrites(hops)),
        matched=tuple(f"+{n} {p.render()}" for p, n in matched),
        conntrack=tuple(e.render() for e in snap.host.conntrack[:8]),
        repeated=_repeat_line(repeated) if resend is not None else "the probe was not repeated; the captures are the original probe's",
        elapsed_ms=round((time.perf_counter() - t0) * 1000, 1),
        kernel=kernel,
        kernel_note=kernel_note,
        nft_trace=nft_lines,
        disagreement=disagreement,
        captures=repeated.captures if repeated is not None else (),
        started_at=repeated.started_at if repeated is not None else 0.0,
    )


def _counters(lab: Lab, watched: dict[str, Netns]) -> tuple[list[Placed], dict[str, dict[str, int]]]:
    """The host's rule counters and every watched namespace's SNMP counters before the repeat, side by side (one hand-over each)."""
    return St.counters({**watched, "host": lab.host}, watched)


def _start(trace: NftTrace | str, result: ProbeResult, flow: P.Flow, notes: list[str]) -> NftTrace | None:
    """Start the nft trace of the repeat (None, with a note why, where it cannot run)."""
    if isinstance(trace, str):
        notes.append(trace)
        return None
    try:
        return trace.start(W.trace_addresses(result, flow), W.trace_protocols(flow))
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


def _model_end(ev: R.Evidence) -> tuple[str, str, str] | None:
    """The model's (disposition, deciding stage, its text) for the probe; None where it has no account of it."""
    if ev.flow is None or ":" in ev.flow.dst_addr:
        return None
    try:
        t = model.probe_trace(ev)
    except Exception:  # noqa: BLE001 - _model_findings reports the model's failure
        return None
    if t is None:
        return None
    step = t.decided
    return (t.disposition, step.stage if step is not None else "", step.text if step is not None else "")


def _model_findings(ev: R.Evidence) -> list[Finding]:
    try:
        return list(R.model_disposition(ev))
    except Exception as exc:  # noqa: BLE001 - the model must not hide the other findings
        return [Finding("rule_failed", "netcheck", f"the datapath model failed: {exc!r}", "report this as a netcheck bug", score=1)]


def _repeat_line(r: ProbeResult | None) -> str:
    if r is None:
        return "the probe could not be repeated"
    how = r.verdict + (f": {r.error}" if r.error else "")
    return f"the probe repeated with a capture at every hop: {how}"


__all__ = ["Resend", "diagnose"]
