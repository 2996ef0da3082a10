"""An inconclusive probe (e.g. a capture that did not start) is retried once, then reported
as inconclusive: never as passed, whatever it expected.

Cost: about 1.5 s (one seed1 lab for the kernel cases).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from netcheck import spec
from netcheck.evidence import ProbeResult, Verdict
from netcheck.lab import Lab
from netcheck.probes import Prober
from netcheck.probes.capture import CaptureHub


class FakeLab:
    topology = spec.builtin("seed1")


def result(verdict: Verdict, expected: str = "reach") -> ProbeResult:
    return ProbeResult(kind="icmp", topology="seed1", source="netns0", source_interface="ceth0", source_address="172.18.0.10",
                       destination="172.18.0.20", sent="ICMP echo", expected=expected, verdict=verdict)  # type: ignore[arg-type]


def run_of(*verdicts: Verdict, expected: str = "reach") -> tuple[list[int], object]:
    calls: list[int] = []

    def run() -> ProbeResult:
        calls.append(1)
        return result(verdicts[len(calls) - 1], expected)

    return calls, run


@pytest.mark.parametrize("expected", ["reach", "unreachable", "observe"])
def test_inconclusive_twice_is_reported_inconclusive_never_passed(expected):
    recorded: list[ProbeResult] = []
    prober = Prober(FakeLab(), record=recorded.append, diagnose=False)  # type: ignore[arg-type]
    calls, run = run_of("inconclusive", "inconclusive", "reached", expected=expected)
    r = prober._retry_inconclusive(run)  # type: ignore[arg-type]
    assert len(calls) == 2, f"tried {len(calls)} times; an inconclusive probe is retried exactly once"
    assert r.verdict == "inconclusive" and not r.passed
    assert recorded == [r], "the test's evidence holds the reported result, once"


def test_inconclusive_then_conclusive_reports_the_retry():
    prober = Prober(FakeLab(), diagnose=False)  # type: ignore[arg-type]
    calls, run = run_of("inconclusive", "unreachable", expected="unreachable")
    r = prober._retry_inconclusive(run)  # type: ignore[arg-type]
    assert len(calls) == 2 and r.verdict == "unreachable" and r.passed


def test_a_conclusive_probe_is_not_retried():
    prober = Prober(FakeLab(), diagnose=False)  # type: ignore[arg-type]
    calls, run = run_of("unreachable", "reached")
    r = prober._retry_inconclusive(run)  # type: ignore[arg-type]
    assert len(calls) == 1 and r.verdict == "unreachable" and not r.passed


# ----------------------------------------------------------------------------- in a real lab


@pytest.fixture(scope="module")
def seed1_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from netcheck.lab import has_net_admin

    if not has_net_admin():
        pytest.skip("needs root to build namespaces")
    with Lab(spec.builtin("seed1"), run_dir=tmp_path_factory.mktemp("run")) as lab:
        yield lab


def count_hubs(monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> list[str]:
    """Count capture points opened; the first ``fail_first`` opens fail as if the link were down."""
    opened: list[str] = []
    original = CaptureHub._open

    def open_(self: CaptureHub) -> object:
        opened.append(self.point)
        if len(opened) <= fail_first:
            raise OSError(errno.ENETDOWN, "Network is down (injected)")
        return original(self)

    monkeypatch.setattr(CaptureHub, "_open", open_)
    return opened


@pytest.mark.root
@pytest.mark.parametrize("kind", ["icmp", "tcp", "udp"])
def test_capture_that_never_starts_is_retried_once_then_inconclusive(kind, seed1_lab, monkeypatch):
    opened = count_hubs(monkeypatch)
    prober = Prober(seed1_lab, diagnose=False)
    point = "wan:nosuch0"  # no such interface: the capture cannot start
    send = {"icmp": lambda: prober.icmp("netns0", "172.18.0.20", capture=[point]),
            "tcp": lambda: prober.tcp("netns0", "172.18.0.20", 7, capture=[point]),
            "udp": lambda: prober.udp("netns0", "172.18.0.20", 7, capture=[point])}
    r = send[kind]()
    assert opened == [point, point], f"capture opened {len(opened)} times; expected one try and one retry"
    assert r.verdict == "inconclusive" and not r.passed, r
    assert "a capture did not start: wan:nosuch0" in (r.error or ""), r.error


@pytest.mark.root
def test_capture_that_starts_on_the_retry_gives_a_conclusive_result(seed1_lab, monkeypatch):
    opened = count_hubs(monkeypatch, fail_first=1)
    point = "netns1:ceth1"  # opened by no other test here: this probe opens it
    r = Prober(seed1_lab, diagnose=False).icmp("netns0", "172.18.0.20", capture=[point])
    assert opened == [point, point]
    assert r.verdict == "reached" and r.passed, r
    assert r.capture(point).started and r.capture(point).packets


def test_host_mode_probes_never_leave_for_addresses_the_lab_does_not_hold() -> None:
    """In host mode the host's own routes lead off the machine: such a probe is refused, unsent."""
    from types import SimpleNamespace

    from netcheck.probes.engine import Prober, ProbeRefused

    lab = SimpleNamespace(host_mode=True, holds=lambda _address: False)
    prober = Prober(lab)  # type: ignore[arg-type]
    for send in (lambda: prober.icmp("host", "198.18.0.9"), lambda: prober.tcp("host", "198.18.0.9", 80), lambda: prober.udp("host", "198.18.0.9")):
        with pytest.raises(ProbeRefused, match="could leave this machine"):
            send()
