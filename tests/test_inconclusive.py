"""An inconclusive probe (e.g. a capture that did not start) is retried once, then reported
as inconclusive: never as passed, whatever it expected.

Cost: about 1.5 s (one seed1 lab for the kernel cases).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from netcheck import spec
from netcheck.evidence import Expectation, ProbeRequest, ProbeResult, Verdict
from netcheck.lab import Lab
from netcheck.probes import Prober
from netcheck.probes.capture import CaptureHub


class FakeLab:
    topology = spec.builtin("seed1")


class ScriptedProber(Prober):
    """A prober whose sends come back with the given verdicts, one per send, and are counted."""

    def __init__(self, *verdicts: Verdict, record: object = None) -> None:
        super().__init__(FakeLab(), record=record)  # type: ignore[arg-type]
        self.verdicts, self.calls = list(verdicts), 0

    def _once(self, request: ProbeRequest) -> ProbeResult:
        self.calls += 1
        return ProbeResult(request=request, topology="seed1", source_interface="ceth0", source_address="172.18.0.10",
                           sent="ICMP echo", verdict=self.verdicts[self.calls - 1])


def request(expected: Expectation) -> ProbeRequest:
    return ProbeRequest("icmp", "netns0", IPv4Address("172.18.0.20"), expect=expected)


@pytest.mark.parametrize("expected", ["reach", "block", "observe"])
def test_inconclusive_twice_is_reported_inconclusive_never_passed(expected):
    recorded: list[ProbeResult] = []
    prober = ScriptedProber("inconclusive", "inconclusive", "reached", record=recorded.append)
    r = prober.send(request(expected))
    assert prober.calls == 2, f"tried {prober.calls} times; an inconclusive probe is retried exactly once"
    assert r.verdict == "inconclusive" and not r.passed
    assert recorded == [r], "the test's evidence holds the reported result, once"


def test_inconclusive_then_conclusive_reports_the_retry():
    prober = ScriptedProber("inconclusive", "unreachable")
    r = prober.send(request("block"))
    assert prober.calls == 2 and r.verdict == "unreachable" and r.passed


def test_a_conclusive_probe_is_not_retried():
    prober = ScriptedProber("unreachable", "reached")
    r = prober.send(request("reach"))
    assert prober.calls == 1 and r.verdict == "unreachable" and not r.passed


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
    prober = Prober(seed1_lab)
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
    r = Prober(seed1_lab).icmp("netns0", "172.18.0.20", capture=[point])
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
