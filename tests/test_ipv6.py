"""IPv6 and dual stack: a fault of one family never explains a failure of the other. (The IPv6 faults
themselves run in tests/test_diagnosis.py's catalog, on seed1-dual and seed1-dual-nft.)"""

from __future__ import annotations

import json
from pathlib import Path

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


DUAL_VIP = """
name = "dual-vip"
[host]
address = ["203.0.113.2/24", "2001:db8:1::2/64"]
[host.sysctl]
"net.ipv4.ip_forward" = 1
"net.ipv6.conf.all.forwarding" = 1
[wan]
address = ["203.0.113.1/24", "2001:db8:1::1/64"]
remote = ["198.51.100.1/32", "2001:db8:2::1/128"]
routes = [{ to = "fd00:100::100/128", via = "2001:db8:1::2" }]
[[bridge]]
name = "br0"
address = ["10.0.0.1/24", "fd00:18::1/64"]
[[container]]
name = "web"
address = ["10.0.0.11/24", "fd00:18::11/64"]
bridge = "br0"
services = [{ kind = "http", port = 8080 }]
[[container]]
name = "client"
address = ["10.0.0.12/24", "fd00:18::12/64"]
bridge = "br0"
[[masquerade]]
source = "fd00:18::/64"
[[vip]]
chain = "VIP-DUAL"
address = ["10.100.100.100", "fd00:100::100"]
port = 80
container = "web"
target_port = 8080
"""


def test_an_ipv6_vip_redirects_from_the_host_the_outside_and_a_container() -> None:
    """The VIP chain in ip6tables DNATs [fd00:100::100]:80 to the container's IPv6 address, seen rewritten inside it."""
    t = spec.loads(DUAL_VIP, "dual-vip.toml")
    with Lab(t) as lab:
        p = DiagnosingProber(lab)
        for src in ("host", "wan", "client"):
            r = p.http(src, "fd00:100::100", 80, target="web", capture=[lab.point("web")])
            assert r.passed, r.explain()
            assert any(x.dst == "fd00:18::11" and x.dport == 8080 for c in r.captures for x in c.packets), f"the DNAT to [fd00:18::11]:8080 was not seen inside web:\n{r.explain()}"
        assert p.http("host", "10.100.100.100", 80, target="web").passed, "the IPv4 VIP beside it"


@pytest.mark.parametrize(("change", "key", "problem"), [
    (('address = ["10.0.0.11/24", "fd00:18::11/64"]', 'address = ["10.0.0.11/24", "fd00:19::11/64"]'), "container[0].address[1]", "outside its bridge br0's prefix fd00:18::/64"),
    (('address = ["10.0.0.1/24", "fd00:18::1/64"]', 'address = ["10.0.0.1/24", "2a00:1450::1/64"]'), "bridge[0].address[1]", "routable (global) IPv6 prefix"),
    (('remote = ["198.51.100.1/32", "2001:db8:2::1/128"]', 'remote = ["198.51.100.1/32", "fd00:99::1/128"]'), "wan.remote[1]", "outside 2001:db8::/32"),
    (('address = ["10.0.0.12/24", "fd00:18::12/64"]', 'address = "fd00:18::12/64"'), "container[1].address", "IPv6 comes beside IPv4"),
    (('source = "fd00:18::/64"', 'source = "fd00:77::/64"'), "masquerade[0].source", "covers no container's IPv6 address"),
    (('address = ["10.100.100.100", "fd00:100::100"]', 'address = ["10.100.100.100", "fd00:18::11"]'), "vip[0].address[1]", "already the address of container[0].address[1]"),
])
def test_ipv6_mistakes_are_named_with_the_key_and_the_fix(change: tuple[str, str], key: str, problem: str) -> None:
    with pytest.raises(spec.SpecError) as info:
        spec.loads(DUAL_VIP.replace(*change), "dual-vip.toml")
    text = str(info.value)
    assert f"dual-vip.toml: {key} = " in text and problem in text and "Fix:" in text, text


def test_ipv4_only_specs_get_no_ipv6() -> None:
    """An IPv4-only spec declares one family, writes no ip6tables rule, and keeps IPv6 off in its namespaces."""
    from netcheck.lab.plan import plan
    from netcheck.naming import KernelNames

    t = spec.builtin("seed1")
    assert t.families == (4,) and t.host.address6 is None and t.wan.remote6 == ()
    assert all(r.family is None for r in plan(t, KernelNames("nck7q0")).rules)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_dual_stack_examples_ask_their_tools_for_ipv6() -> None:
    """Docker gets --ipv6 --fixed-cidr-v6 (daemon.json) from docker0's IPv6 prefix, Podman a default network file with both
    subnets, CNI two host-local ranges; a spec without an IPv6 bridge changes nothing of the tool's configuration."""
    from netcheck.adapters.docker import ipv6_daemon_config
    from netcheck.adapters.podman import ipv6_default_network

    assert ipv6_daemon_config(spec.load(EXAMPLES / "docker-dual.toml")) == {"ipv6": True, "fixed-cidr-v6": "fd00:17::/64", "experimental": True, "ip6tables": True}
    assert ipv6_daemon_config(spec.load(EXAMPLES / "docker.toml")) == {}
    network = ipv6_default_network(spec.load(EXAMPLES / "podman-dual.toml"))
    assert network is not None and network["ipv6_enabled"] is True and network["name"] == "podman"
    assert network["subnets"] == [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}, {"subnet": "fd00:88::/64", "gateway": "fd00:88::1"}]
    assert ipv6_default_network(spec.load(EXAMPLES / "podman.toml")) is None
    ranges = json.loads((EXAMPLES / "cni" / "bridge-dual.conflist").read_text())["plugins"][0]["ipam"]["ranges"]
    assert [r[0]["subnet"] for r in ranges] == ["10.22.0.0/16", "fd00:22::/64"]
    for name in ("cni-dual", "docker-dual", "podman-dual", "netavark-dual"):
        assert spec.load(EXAMPLES / f"{name}.toml").families == (4, 6), name
