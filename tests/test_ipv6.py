"""IPv6 and dual stack: a fault of one family never explains a failure of the other. (The IPv6 faults
themselves run in tests/test_diagnosis.py's catalog, on seed1-dual and seed1-dual-nft.)"""

from __future__ import annotations

import pytest

from netcheck import spec
from netcheck.diagnosing import DiagnosingProber
from netcheck.faults import inject
from netcheck.lab import Lab

pytestmark = pytest.mark.root


def test_a_fault_of_one_family_never_explains_the_other() -> None:
    """With ip6tables dropping FORWARD and IPv6 forwarding off, IPv4 still passes; with ip_forward off
    too, the IPv4 failure is ip_forward_off (not an ip6tables rule), the IPv6 one ipv6_forwarding_off."""
    with Lab(spec.builtin("seed1-dual")) as lab:
        assert inject(lab, ["ip6tables-forward-drop"]) == ["ip6tables-forward-drop"]
        p = DiagnosingProber(lab)
        v4 = p.icmp("netns0", "198.51.100.1", capture=["wan:uplink"])
        assert v4.passed, f"an ip6tables FORWARD DROP stopped IPv4:\n{v4.explain()}"
        v6 = p.icmp("netns0", "2001:db8:2::1", capture=["wan:uplink"])
        assert not v6.passed and v6.diagnosis is not None and v6.diagnosis.top is not None and v6.diagnosis.top.cause == "forward_drop", v6.explain()
        assert "ip6tables-legacy" in v6.diagnosis.top.summary, v6.explain()
        assert inject(lab, ["ip-forward-off", "ipv6-forwarding-off"]) == ["ip-forward-off", "ipv6-forwarding-off"]
        v4 = p.icmp("netns0", "198.51.100.1", capture=["wan:uplink"])
        d4 = v4.diagnosis
        assert d4 is not None and d4.top is not None and d4.top.cause == "ip_forward_off", v4.explain()
        assert not any("ip6tables" in x.summary or x.cause == "ip_six_forwarding_off" for x in d4.findings), f"an IPv6 cause was named for an IPv4 failure:\n{v4.explain()}"
        v6 = p.icmp("netns0", "2001:db8:2::1", capture=["wan:uplink"])
        d6 = v6.diagnosis
        assert d6 is not None and d6.top is not None and d6.top.cause in ("ip_six_forwarding_off", "forward_drop"), v6.explain()
        assert not any(x.cause == "ip_forward_off" for x in d6.findings), f"net.ipv4.ip_forward was named for an IPv6 failure:\n{v6.explain()}"
