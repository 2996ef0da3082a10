"""DiagnosingProber: the one place where a probe meets its diagnosis (no root: the sends are scripted).

The prober never diagnoses; the diagnosing one hands every failure, and only failures, to its
diagnoser with a way to send the same request again, which records nothing.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from netcheck import spec
from netcheck.diagnose import Resend
from netcheck.diagnosing import DiagnosingProber
from netcheck.evidence import Diagnosis, ProbeRequest, ProbeResult
from netcheck.probes import Prober


class FakeLab:
    topology = spec.builtin("seed1")


def answer(request: ProbeRequest) -> ProbeResult:
    """A probe that reaches exactly when it has a capture point named 'ok'."""
    verdict = "reached" if "ok" in request.capture else "unreachable"
    return ProbeResult(request=request, topology="seed1", source_interface="ceth0", source_address="172.18.0.10", sent="ICMP echo", verdict=verdict)


def scripted(monkeypatch, sent: list[ProbeRequest]) -> None:
    def once(self: Prober, request: ProbeRequest) -> ProbeResult:
        sent.append(request)
        return answer(request)

    monkeypatch.setattr(Prober, "_once", once)


def test_failures_and_only_failures_are_diagnosed_with_a_way_to_resend(monkeypatch) -> None:
    sent: list[ProbeRequest] = []
    scripted(monkeypatch, sent)
    recorded: list[ProbeResult] = []
    resent: list[ProbeResult] = []

    def diagnoser(lab: object, result: ProbeResult, resend: Resend | None) -> Diagnosis:
        assert resend is not None
        resent.append(resend(replace(result.request, capture=("ok",))))
        return Diagnosis(notes=("diagnosed",))

    p = DiagnosingProber(FakeLab(), record=recorded.append, diagnoser=diagnoser)  # type: ignore[arg-type]
    good = p.icmp("netns0", "172.18.0.20", capture=["ok"])
    bad = p.icmp("netns0", "172.18.0.20", ttl=2)
    assert good.diagnosis is None and bad.diagnosis is not None and bad.diagnosis.notes == ("diagnosed",)
    assert recorded == [good, bad], "the diagnosed result is recorded, once; the resent one is not"
    assert [r.request for r in resent] == [replace(bad.request, capture=("ok",))] and resent[0].passed
    assert sent[-1].ttl == 2, "the request is resent as it was, TTL included"


def test_a_broken_diagnosis_does_not_hide_the_failure(monkeypatch) -> None:
    scripted(monkeypatch, [])

    def broken(lab: object, result: ProbeResult, resend: Resend | None) -> Diagnosis:
        raise RuntimeError("boom")

    r = DiagnosingProber(FakeLab(), diagnoser=broken).send(ProbeRequest("icmp", "netns0", IPv4Address("172.18.0.20")))  # type: ignore[arg-type]
    assert not r.passed and r.diagnosis is not None and "the diagnosis itself failed: RuntimeError('boom')" in r.diagnosis.notes[0]


def test_a_plain_prober_never_diagnoses(monkeypatch) -> None:
    scripted(monkeypatch, [])
    r = Prober(FakeLab()).icmp("netns0", "172.18.0.20")  # type: ignore[arg-type]
    assert not r.passed and r.diagnosis is None
