"""Diagnosis: where the packet died, why, and what to change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netcheck.evidence import Diagnosis, Hop, ProbeResult

if TYPE_CHECKING:
    from netcheck.lab import Lab


def diagnose(lab: Lab, result: ProbeResult) -> Diagnosis:
    """A first, trace-only diagnosis: which capture points saw the probe, each way."""
    hops = []
    for c in result.captures:
        req = c.first("request")
        rep = c.first("reply")
        hops.append(Hop(c.point, "out", req is not None, req.flow if req else ""))
        hops.append(Hop(c.point, "back", rep is not None, rep.flow if rep else ""))
    return Diagnosis(trace=tuple(hops))
