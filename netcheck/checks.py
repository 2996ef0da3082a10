"""Assertion helpers for suites: they hide their own frames and say what was expected and seen.

A check never passes vacuously: a capture point that saw nothing, or an empty set of
probes, fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from netcheck.evidence import Packet, ProbeResult, Role


def expect(result: ProbeResult) -> ProbeResult:
    """Fail with the probe's explanation (diagnosis first, then evidence) unless it went as expected."""
    __tracebackhide__ = True
    if not result.passed:
        pytest.fail(result.explain(), pytrace=False)
    return result


def expect_all(results: Sequence[ProbeResult], what: str) -> Sequence[ProbeResult]:
    """Every probe went as expected, and there was at least one."""
    __tracebackhide__ = True
    if not results:
        pytest.fail(f"{what}: no probe was sent, so nothing was proven (an empty check is a failure)", pytrace=False)
    bad = [r for r in results if not r.passed]
    if bad:
        head = f"{what}: {len(bad)} of {len(results)} probes failed:\n" + "\n".join("  " + r.headline() for r in bad)
        pytest.fail(head + "\n\nfirst failure:\n" + bad[0].explain(), pytrace=False)
    return results


def seen(result: ProbeResult, point: str, role: Role = "request", **fields: object) -> Packet:
    """The first packet of ``role`` captured at ``point``; fail if none, or if a field differs."""
    __tracebackhide__ = True
    cap = result.capture(point)
    if not cap.started:
        pytest.fail(f"capture at {point} did not start; the probe proves nothing\n" + result.explain(), pytrace=False)
    pkt = cap.first(role)
    if pkt is None:
        pytest.fail(f"no {role} of this probe was captured at {point}\n" + result.explain(), pytrace=False)
    for name, want in fields.items():
        got = getattr(pkt, name)
        if got != want:
            pytest.fail(f"at {point} the {role} had {name}={got}, expected {want}\n" + result.explain(), pytrace=False)
    return pkt


def not_seen(result: ProbeResult, point: str) -> None:
    """Nothing of the probe was captured at ``point`` (and the capture was running)."""
    __tracebackhide__ = True
    cap = result.capture(point)
    if not cap.started:
        pytest.fail(f"capture at {point} did not start; its silence proves nothing\n" + result.explain(), pytrace=False)
    if cap.packets:
        pytest.fail(f"the probe was captured at {point}, where it must never appear\n" + result.explain(), pytrace=False)
