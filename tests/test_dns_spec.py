"""The DNS keys of a spec: resolvers something serves, a server on documentation addresses, names the zone answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from netcheck import resolvconf, spec

SEED2 = (Path(spec.__file__).parent / "topologies" / "seed2.toml").read_text()


def _problem(text: str) -> spec.Problem:
    with pytest.raises(spec.SpecError) as info:
        spec.loads(text, "t.toml")
    assert len(info.value.problems) == 1, str(info.value)
    return info.value.problems[0]


def test_seed2_declares_its_resolver() -> None:
    t = spec.builtin("seed2")
    assert t.dns is not None and str(t.dns.address) == "203.0.113.53"
    http2 = t.container("http2")
    assert http2.dns == (t.dns.address,) and http2.search == ("corp.test",)
    assert t.container("http3").dns is None


@pytest.mark.parametrize(("old", "new", "key", "words"), [
    ('dns = ["203.0.113.53"]', 'dns = ["127.0.0.53"]', "container[0].dns[0]", "loopback"),
    ('dns = ["203.0.113.53"]', 'dns = ["203.0.113.99"]', "container[0].dns[0]", "nothing serves DNS there"),
    ('address = "203.0.113.53"\n', 'address = "8.8.8.8"\n', "dns.address", "documentation ranges"),
    ('address = "203.0.113.53"\n', 'address = "203.0.113.2"\n', "dns.address", "already the address of host.address"),
    ('{ name = "web", address = "198.51.100.1" }', '{ name = "web", address = "198.51.100.7" }', "container[0].resolve[0].address", "answers web.corp.test -> 198.51.100.1"),
    ('{ name = "web", address = "198.51.100.1" }', '{ name = "webx", address = "198.51.100.1" }', "container[0].resolve[0].address", "answers NXDOMAIN"),
    ('{ name = "web", address', '{ name = "-web", address', "container[0].resolve[0].name", "not a valid DNS name"),
    ('search = ["corp.test"]', 'search = "corp.test"', "container[0].search", "list of domains"),
    ('dns = ["203.0.113.53"]', 'dns = []', "container[0].dns", "non-empty list"),
])
def test_dns_mistakes_name_key_and_fix(old: str, new: str, key: str, words: str) -> None:
    assert old in SEED2
    p = _problem(SEED2.replace(old, new, 1))
    assert p.key == key and words in p.problem, str(p)
    assert p.fix


def test_inherit_takes_no_search_and_no_names() -> None:
    with pytest.raises(spec.SpecError) as info:
        spec.loads(SEED2.replace('dns = ["203.0.113.53"]', 'dns = "inherit"'), "t.toml")
    assert {p.key for p in info.value.problems} == {"container[0].search", "container[0].resolve"}


def test_a_resolver_needs_a_dns_server() -> None:
    p = _problem(SEED2.split("[dns]")[0])
    assert p.key == "container[0].dns[0]" and "declares no DNS server" in p.problem, str(p)
    assert "[dns]" in p.fix


def test_search_order_is_glibc_s() -> None:
    conf = resolvconf.ResolvConf(("203.0.113.53",), ("a.test", "b.test"), ndots=1)
    assert resolvconf.candidates("web", conf) == ("web.a.test", "web.b.test", "web")
    assert resolvconf.candidates("web.b.test", conf) == ("web.b.test", "web.b.test.a.test", "web.b.test.b.test")
    assert resolvconf.candidates("Web.", conf) == ("web",)
    assert resolvconf.lookup({"web.b.test": "198.51.100.2"}, "web", conf) == ("web.b.test", "198.51.100.2")
    assert resolvconf.parse("nameserver 1.2.3.4 # x\nsearch a. b\noptions ndots:3\n") == resolvconf.ResolvConf(("1.2.3.4",), ("a", "b"), 3)


def test_a_dns_request_and_result_round_trip() -> None:
    from ipaddress import ip_address

    from netcheck.evidence import ProbeRequest, ProbeResult, RequestError

    req = ProbeRequest("dns", "http2", ip_address("203.0.113.53"), 53, query="web", transport="tcp")
    assert req.protocol == "tcp" and ProbeRequest.from_dict(req.to_dict()) == req
    res = ProbeResult(req, "seed2", "veth_ns_http2", "10.0.0.11", "DNS tcp A? web.corp.test", "reached", answers=("198.51.100.1",), rcode="NOERROR")
    assert ProbeResult.from_dict(res.to_dict()) == res and "NOERROR: 198.51.100.1" in res.headline()
    with pytest.raises(RequestError, match="give the name"):
        ProbeRequest("dns", "http2", ip_address("203.0.113.53"), 53)
    with pytest.raises(RequestError, match="only dns probes"):
        ProbeRequest("udp", "http2", ip_address("203.0.113.53"), 53, transport="tcp")


def test_the_dns_server_answers_its_zone_and_nxdomain_otherwise() -> None:
    import dns.message
    import dns.rcode

    from netcheck.services import dns_answer

    zone = {"web.corp.test": "198.51.100.1"}
    peer = ("203.0.113.2", 40000)
    hit = dns.message.from_wire(dns_answer("wan", zone, peer, dns.message.make_query("Web.Corp.Test.", "A").to_wire()) or b"")
    assert hit.rcode() == dns.rcode.NOERROR and [r.to_text() for rr in hit.answer for r in rr] == ["198.51.100.1"]
    assert any("saw=203.0.113.2:40000" in r.to_text() for rr in hit.additional for r in rr)
    miss = dns.message.from_wire(dns_answer("wan", zone, peer, dns.message.make_query("www.example.com.", "A").to_wire()) or b"")
    assert miss.rcode() == dns.rcode.NXDOMAIN and not miss.answer
    assert dns_answer("wan", zone, peer, b"not dns") is None


DOCKER_DNS = (Path(__file__).resolve().parents[1] / "examples" / "docker-dns.toml").read_text()


def test_a_container_is_on_a_tools_network_and_names_resolve_to_assigned_addresses() -> None:
    from dataclasses import replace
    from ipaddress import IPv4Interface

    t = spec.loads(DOCKER_DNS, "docker-dns.toml")
    client = t.container("client")
    on = t.network_of(client)
    assert on is not None and (on.name, on.bridge, str(on.subnet), on.dns) == ("appnet", "appbr0", "172.30.0.0/24", True)
    assert client.bridge == "appbr0" and client.dns == (spec.IPv4Address("127.0.0.11"),)  # the bridge is the network's
    web = client.resolve[0]
    assert (web.name, web.address, web.container) == ("web", None, "web") and t.answer(web) is None  # read back at run time
    resolved = replace(t, containers=tuple(replace(c, address=IPv4Interface("172.30.0.2/24")) if c.name == "web" else c for c in t.containers))
    assert str(resolved.answer(web)) == "172.30.0.2" and resolved.answer(client.resolve[2]) is None  # nxdomain


@pytest.mark.parametrize(("old", "new", "key", "words"), [
    ('network = "appnet"\ngateway = "auto"\nservices', 'network = "othernet"\ngateway = "auto"\nservices', "container[0].network", "names no network"),
    ('network = "appnet"\ngateway = "auto"\nservices', 'network = "appnet"\nbridge = "docker0"\ngateway = "auto"\nservices', "container[0].bridge", "is on bridge appbr0"),
    ('bridge = "appbr0"\nsubnet', 'bridge = "appbr9"\nsubnet', "network[0].bridge", "names no bridge"),
    ('subnet = "172.30.0.0/24"', 'subnet = ["172.30.0.0/24", "fd00:30::/64"]', "network[0].subnet", "do not create IPv6 networks yet"),
    ('name = "appnet"', 'name = "bridge"', "network[0].name", "the tool's own networks"),
    ('{ name = "client", container = "client" }', '{ name = "client", container = "nosuch" }', "container[0].resolve[0].container", "names no container"),
    ('{ name = "client", container = "client" }', '{ name = "client", container = "client", address = "172.30.0.3" }', "container[0].resolve[0].container", "not both"),
    ('{ name = "client", container = "client" }', '{ name = "client" }', "container[0].resolve[0].address", "what the name must resolve to"),
    ('mode = "docker"', 'mode = "netavark"\nconfig = "netavark/network.json"', "network[0].name", "creates no networks by name"),
])
def test_network_mistakes_name_key_and_fix(old: str, new: str, key: str, words: str) -> None:
    assert old in DOCKER_DNS
    with pytest.raises(spec.SpecError) as info:
        spec.loads(DOCKER_DNS.replace(old, new, 1) + '[[bridge]]\nname = "docker0"\naddress = "auto"\n', str(Path(__file__).resolve().parents[1] / "examples" / "x.toml"))
    found = [p for p in info.value.problems if p.key == key]
    assert found and words in found[0].problem and found[0].fix, str(info.value)


def test_host_mode_asks_no_tools_resolver() -> None:
    """On a real host, Docker's 127.0.0.11 and aardvark-dns forward names they do not know to the host's own
    resolvers, outside the lab: a DNS probe there is refused before anything is sent."""
    from dataclasses import replace
    from ipaddress import IPv4Interface

    from netcheck.probes import Prober

    class RealHost:
        host_mode = True

        def __init__(self, t: spec.Topology, nameserver: str) -> None:
            self.topology, self.nameserver = t, nameserver

        def holds(self, address: object) -> bool:
            return True

        def container_ns(self, name: str) -> object:
            return object()  # a refused probe opens nothing in it

        def resolv_conf(self, name: str) -> tuple[Path, str]:
            return Path("/proc/1/root/etc/resolv.conf"), resolvconf.render((self.nameserver,))

    t = spec.load(Path(__file__).resolve().parents[1] / "examples" / "podman-dns.toml")
    t = replace(t, containers=tuple(replace(c, address=IPv4Interface("10.90.0.2/24")) for c in t.containers))
    refused = Prober(RealHost(t, "10.90.0.1")).dns("client", "web")  # type: ignore[arg-type]
    assert refused.verdict == "unreachable" and refused.error and "not sent" in refused.error and "host mode" in refused.error, refused.explain()
