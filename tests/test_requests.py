"""Probe requests in a real lab: what the request says is what is sent (payload, TTL, port),
and the result carries the request. Cost: one seed1 lab (about 1 s as root)."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from netcheck import spec
from netcheck.evidence import ProbeRequest
from netcheck.lab import Lab
from netcheck.probes import Prober

pytestmark = pytest.mark.root

OUTSIDE = IPv4Address("198.51.100.1")


@pytest.fixture(scope="module")
def seed1() -> Iterator[Lab]:
    from netcheck.lab import has_net_admin

    if not has_net_admin():
        pytest.skip("needs root to build namespaces")
    with Lab(spec.builtin("seed1")) as lab:
        yield lab


def test_payload_and_port_are_sent_as_requested(seed1: Lab) -> None:
    p = Prober(seed1)
    point = seed1.point("netns0")
    for request in (
        ProbeRequest("icmp", "netns0", OUTSIDE, capture=(point,), payload=b"\x00" * 600),
        ProbeRequest("udp", "netns0", IPv4Address("172.18.0.20"), 7, target="netns1", capture=(point,), payload=b"pad=" + b"x" * 300),
        ProbeRequest("tcp", "netns0", IPv4Address("172.18.0.20"), 7, target="netns1", capture=(point,), payload=b"pad=" + b"y" * 300),
    ):
        r = p.send(request)
        assert r.passed and r.request == request, r.explain()
        sent = [pkt.raw for pkt in r.capture(point).packets if pkt.role == "request"]
        assert any(request.payload in raw for raw in sent), f"{request.kind}: the payload is in no packet sent\n{r.explain()}"


def test_ttl_one_dies_at_the_first_router_with_time_exceeded(seed1: Lab) -> None:
    r = Prober(seed1).icmp("netns0", OUTSIDE, ttl=1, expect="block", capture=[seed1.point("netns0")])
    assert r.verdict == "unreachable" and r.request.ttl == 1, r.explain()
    assert r.error is not None and r.error.startswith("ICMP time exceeded (code 0) from "), r.error
    assert "error" in r.capture(seed1.point("netns0")).roles(), "the time-exceeded that quotes the probe is captured as its error"
