"""Probes that diagnose their failures: where the prober and the diagnosis meet.

``netcheck.probes`` sends and ``netcheck.diagnose`` explains; neither imports the other. The
pytest fixtures, the doctor and the CLI use a ``DiagnosingProber``: it sends like a
``Prober`` and hands each failed result to the diagnosis, with a prober of its own (that
records nothing, and whose ICMP identifiers start elsewhere) for the diagnosis to resend on.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from netcheck.diagnose import Resend, diagnose
from netcheck.evidence import Diagnosis, ProbeRequest, ProbeResult
from netcheck.probes import Prober

if TYPE_CHECKING:
    from netcheck.lab import Lab
    from netcheck.multihost.nodehost import NodeHost


class Diagnoser(Protocol):
    """Explains a failed probe, given a way to send it again (``netcheck.diagnose.diagnose`` is one)."""

    def __call__(self, lab: Lab, result: ProbeResult, resend: Resend | None) -> Diagnosis: ...


class DiagnosingProber(Prober):
    """A ``Prober`` whose failed results carry their diagnosis before they are recorded."""

    def __init__(self, lab: Lab, *, record: Callable[[ProbeResult], None] | None = None, diagnoser: Diagnoser = diagnose) -> None:
        super().__init__(lab, record=record)
        self.diagnoser = diagnoser
        self._resender = Prober(lab, first_id=secrets.randbelow(0x7FFF) + 0x8000)

    def send(self, request: ProbeRequest) -> ProbeResult:
        result = self.conclusive(request)
        if not result.passed:
            result = self.explain(result)
        self.record(result)
        return result

    def explain(self, result: ProbeResult) -> ProbeResult:
        """The result with its diagnosis (a note, if the diagnosis itself failed)."""
        try:
            return result.with_diagnosis(self.diagnoser(self.lab, result, self._resender.conclusive))
        except Exception as exc:  # noqa: BLE001 - a broken diagnosis must not hide the failure it was asked about
            return result.with_diagnosis(Diagnosis(notes=(f"the diagnosis itself failed: {exc!r}",)))


def prober_for(lab: Lab | NodeHost, record: Callable[[ProbeResult], None] | None = None) -> Prober:
    """The diagnosing prober of a lab: a ``DiagnosingProber``, or for a host served by a node, a prober that sends and diagnoses there."""
    from netcheck.multihost.nodehost import NodeHost
    from netcheck.multihost.probes import NodeHostProber

    if isinstance(lab, NodeHost):
        return NodeHostProber(lab, record=record)
    return DiagnosingProber(lab, record=record)


__all__ = ["DiagnosingProber", "Diagnoser", "prober_for"]
