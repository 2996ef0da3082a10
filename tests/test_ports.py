"""Published ports, without root: the spec's protocols, ranges and binds, the rules they render (IPv6 too),
the published-port matrix's cells, and the SCTP decoding. The matrix itself runs in suites/test_dnat.py
(on seed1-ports: ``--netcheck-topology seed1-ports``), and its faults in tests/test_diagnosis.py."""

from __future__ import annotations

import dataclasses
from importlib import resources
from ipaddress import IPv6Address

import pytest

from netcheck import spec
from netcheck.kernel import nft
from netcheck.lab import plan
from netcheck.naming import KernelNames
from netcheck.packet import SCTP, decode_ip, decode_sctp

NAMES = KernelNames("nck7q0")
SEED1_RULES = [
    "-t nat -A POSTROUTING -s 172.18.0.0/16 ! -o nck7q0b0 -j MASQUERADE",
    "-t nat -A PREROUTING -d 203.0.113.2 -p tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000",
    "-t nat -A OUTPUT -d 203.0.113.2 -p tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000",
]


def _rules(t: spec.Topology) -> list[str]:
    return [dataclasses.replace(r, comment=None).render() for r in plan.plan(t, NAMES).rules]


def _seed1_with(publish: str, sysctl: str = "") -> str:
    text = (resources.files("netcheck.topologies") / "seed1.toml").read_text("utf-8")
    head, _, _ = text.partition("[[publish]]")
    if sysctl:
        head = head.replace('"net.ipv4.ip_forward" = 1', f'"net.ipv4.ip_forward" = 1\n{sysctl}')
    return head + publish


def test_existing_specs_build_exactly_as_before() -> None:
    t = spec.builtin("seed1")
    p = t.publishes[0]
    assert (p.protocol, p.size, p.host_address, p.hairpin) == ("tcp", 1, None, False)
    assert _rules(t) == SEED1_RULES


def test_a_range_is_one_dnat_per_port_with_the_same_offset() -> None:
    t = spec.loads(_seed1_with('[[publish]]\ncontainer = "netns0"\nhost_port = "8000-8002"\nport = "5000-5002"\nprotocol = "udp"\n'
                               ).replace('services = [{ kind = "http", port = 5000 }]', 'services = [{ kind = "udp-echo", port = 5000 }, { kind = "udp-echo", port = 5002 }]'))
    p = t.publishes[0]
    assert (p.host_port, p.port, p.size, p.container_port(8002)) == (8000, 5000, 3, 5002)
    dnats = [r for r in _rules(t) if "PREROUTING" in r]
    assert dnats == [f"-t nat -A PREROUTING -d 203.0.113.2 -p udp --dport {8000 + i} -j DNAT --to-destination 172.18.0.10:{5000 + i}" for i in range(3)]


def test_a_range_needs_a_service_on_its_last_port() -> None:
    with pytest.raises(spec.SpecError) as info:
        spec.loads(_seed1_with('[[publish]]\ncontainer = "netns0"\nhost_port = "8000-8002"\nport = "5000-5002"\n'), "my.toml")
    assert "my.toml: publish[0].port = 5002: container netns0 runs no tcp service on port 5002" in str(info.value) and "Fix: add" in str(info.value)


def test_wildcard_binds_every_host_address_and_localhost_gets_its_masquerade() -> None:
    t = spec.loads(_seed1_with('[[publish]]\ncontainer = "netns0"\nhost_port = 8080\nport = 5000\nhost_address = "0.0.0.0"\nhairpin = true\n'
                               '[[publish]]\ncontainer = "netns0"\nhost_port = 8081\nport = 5000\nhost_address = "127.0.0.1"\nfrom_outside = false\n',
                               '"net.ipv4.conf.all.route_localnet" = 1'))
    rules = _rules(t)
    assert [r.split(" -p ")[0] for r in rules if "--dport 8080" in r and "DNAT" in r] == [
        "-t nat -A PREROUTING -d 203.0.113.2", "-t nat -A PREROUTING -d 172.18.0.1", "-t nat -A OUTPUT -d 203.0.113.2", "-t nat -A OUTPUT -d 172.18.0.1"]
    assert "-t nat -A POSTROUTING -s 172.18.0.10 -d 172.18.0.10 -p tcp --dport 5000 -j MASQUERADE" in rules, "Docker's hairpin MASQUERADE"
    assert "-t nat -A OUTPUT -d 127.0.0.1 -p tcp --dport 8081 -j DNAT --to-destination 172.18.0.10:5000" in rules
    assert not any("PREROUTING -d 127.0.0.1" in r for r in rules), "a port bound to 127.0.0.1 is the host's alone"
    assert "-t nat -A POSTROUTING -s 127.0.0.0/8 -o nck7q0b0 -j MASQUERADE" in rules
    assert plan.plan(t, NAMES).containers[0].hairpin and not plan.plan(t, NAMES).containers[1].hairpin


def test_binds_in_other_tools_setups_are_refused_with_the_mode() -> None:
    text = _seed1_with('[[publish]]\ncontainer = "netns0"\nhost_port = 8080\nport = 5000\nhost_address = "203.0.113.2"\n').replace(
        'name = "seed1"', 'name = "x"\n[setup]\nmode = "cni"\nconfig = "cni/bridge.conflist"', 1)
    with pytest.raises(spec.SpecError) as info:
        spec.loads(text, "x.toml")
    assert "publish[0].host_address = '203.0.113.2': is checked on labs netcheck builds only (mode cni" in str(info.value)


def test_ipv6_rules_render_without_splitting_addresses() -> None:
    """IPv6 cells appear when the spec holds IPv6 (issue 15's other half): the DNAT writes [addr]:port, and the rules read back the same."""
    r = plan.dnat_rule("PREROUTING", "2001:db8:1::2", "sctp", 9132, "fd00::10", 9132)
    assert r.to_destination == "[fd00::10]:9132"
    assert r.argv()[-2:] == ["--to-destination", "[fd00::10]:9132"]
    t = spec.builtin("seed1-dual")
    p = dataclasses.replace(t.publishes[0], protocol="udp", host_address=IPv6Address("2001:db8:1::2"), hairpin=True)
    t6 = dataclasses.replace(t, publishes=(p,))
    rename = NAMES.host_interfaces(t6).__getitem__
    rules = plan.publish_rules(t6, p, rename, family=6)
    assert [" ".join(x.argv()) for x in rules] == [
        "-t nat -A PREROUTING -d 2001:db8:1::2 -p udp --dport 5000 -j DNAT --to-destination [fd00:18::10]:5000",
        "-t nat -A OUTPUT -d 2001:db8:1::2 -p udp --dport 5000 -j DNAT --to-destination [fd00:18::10]:5000",
        "-t nat -A POSTROUTING -s fd00:18::10 -d fd00:18::10 -p udp --dport 5000 -j MASQUERADE",
    ]
    assert all(x.family == 6 for x in rules), "IPv6 rules go to ip6tables"
    assert plan.publish_rules(t6, p, rename, family=4) == [], "a port bound to an IPv6 address is not published on IPv4"
    assert {cell.family for cell in plan.port_matrix(t6)} == {6}


def test_sctp_renders_for_nft_and_reads_back() -> None:
    r = plan.dnat_rule("PREROUTING", "203.0.113.2", "sctp", 9132, "172.18.0.10", 9132)
    expr = nft.expressions(r, set())
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "sctp", "field": "dport"}}, "right": 9132}} in expr
    assert nft.text(r) == "ip daddr 203.0.113.2 sctp dport 9132 counter dnat to 172.18.0.10:9132"


def test_the_matrix_of_seed1_ports_has_every_dimension() -> None:
    cells = plan.port_matrix(spec.builtin("seed1-ports"))
    assert len(cells) >= 24
    assert {c.protocol for c in cells} == {"tcp", "udp", "sctp"} and {c.ports for c in cells} == {"single", "range"}
    assert {c.bind for c in cells} == {"203.0.113.2", "wildcard", "127.0.0.1"} and {c.path for c in cells} == {"outside", "host", "hairpin", "itself"}
    assert all(c.saw for c in cells if c.expected) and all(c.why for c in cells)
    by = {(c.protocol, c.bind, c.path): c for c in cells}
    assert by[("tcp", "127.0.0.1", "host")].expected and by[("tcp", "127.0.0.1", "host")].saw == "172.18.0.1"
    assert not by[("udp", "127.0.0.1", "outside")].expected
    assert by[("sctp", "203.0.113.2", "itself")].saw == "172.18.0.1", "the hairpin MASQUERADE: the service sees the bridge"
    seed1 = {c.path: c for c in plan.port_matrix(spec.builtin("seed1"))}
    assert not seed1["itself"].expected and "martian" in seed1["itself"].why, "seed 1 has no hairpin MASQUERADE"


def test_sctp_is_decoded_with_its_first_chunk() -> None:
    init = bytes.fromhex("4500003400004000408400cbcb007101cb007102") + bytes.fromhex("3000238c00000000" "00000000" "01000014" "0000abcd")
    ip = decode_ip(init)
    assert ip is not None and ip.payload == SCTP(12288, 9100, 0, 1) and ip.payload.chunk_name == "INIT"
    assert decode_ip(init[:24]).payload is None, "cut short of the common header"  # type: ignore[union-attr]
    assert decode_sctp(init[20:]) == ip.payload, "a raw IPv6 socket reads the SCTP packet without its IP header"


def test_the_report_shows_the_matrix_as_a_table() -> None:
    from netcheck.evidence import ProbeResult
    from netcheck.report.model import Results, TestRecord
    from netcheck.report.render import Renderer, port_matrix_rows

    def probe(src: str, dst: str, port: int, expected: str, verdict: str, saw: str | None) -> ProbeResult:
        return ProbeResult.from_dict({"request": {"kind": "udp", "source": src, "destination": dst, "port": port, "expect": expected, "target": "netns0"},
                                      "topology": "seed1-ports", "source_interface": "eth0", "source_address": "203.0.113.1", "sent": "udp",
                                      "verdict": verdict, "service_saw": saw})

    record = TestRecord("suites/test_dnat.py::test_published_port_matrix[seed1-ports]", "dnat", "seed1-ports", "failed",
                        probes=[probe("wan", "203.0.113.2", 8053, "reach", "reached", "203.0.113.1:4000"), probe("host", "2001:db8:1::2", 8053, "reach", "unreachable", None),
                                probe("netns0", "203.0.113.2", 8053, "block", "unreachable", None), probe("wan", "2001:db8:1::2", 8053, "reach", "reached", "2001:db8:1::1:4000")])
    rows = port_matrix_rows([record])
    assert [(r.family, r.to, r.path, r.ok) for r in rows] == [  # each cell's IPv4 and IPv6 rows side by side
        ("IPv4", "203.0.113.2:8053", "from outside (wan)", True), ("IPv6", "[2001:db8:1::2]:8053", "from outside (wan)", True),
        ("IPv6", "[2001:db8:1::2]:8053", "from the host", False), ("IPv4", "203.0.113.2:8053", "netns0 to itself", True)]
    html = Renderer().report(Results(tests=[record]))
    assert "Published-port matrix: 4 cells, 1 not as expected" in html and "<code>[2001:db8:1::2]:8053</code>" in html


@pytest.mark.root
def test_every_dnat_test_passes_on_seed1_ports_both_backends(run_suites, repo) -> None:
    """The DNAT suite, matrix included (36 cells each), on seed1-ports built with iptables and with native nft."""
    result = run_suites(str(repo / "suites" / "test_dnat.py"), "--netcheck-topology=seed1-ports", "--netcheck-topology=seed1-ports-nft")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 12 and not outcomes.get("failed") and not outcomes.get("error"), result.stdout.str()[-3000:]


def test_the_dual_stack_matrix_crosses_both_families_and_every_dimension() -> None:
    """seed1-dual's matrix (issue 15): at least 48 cells, both families, tcp/udp/sctp, a port and a range, the uplink's
    address, the wildcard and a given address, every access path; each expected and explained, with the source to see."""
    t = spec.builtin("seed1-dual")
    cells = plan.port_matrix(t)
    assert len(cells) >= 48 and {c.family for c in cells} == {4, 6}
    for family in (4, 6):
        mine = plan.port_matrix(t, family)
        assert mine == tuple(c for c in cells if c.family == family) and all(c.dst.version == family for c in mine)
        assert {c.protocol for c in mine} == {"tcp", "udp", "sctp"} and {c.ports for c in mine} == {"single", "range"}
        assert {c.bind for c in mine} >= {"uplink", "wildcard"} and {c.path for c in mine} == {"outside", "host", "hairpin", "itself"}
        assert all(c.why and c.expected is not None and (c.saw if c.expected else c.saw is None) for c in mine)
    by = {(c.family, c.protocol, c.ports, c.path): c for c in cells}
    assert by[(6, "udp", "single", "itself")].saw == "fd00:18::1", "the IPv6 hairpin MASQUERADE: the service sees the bridge's IPv6 address"
    assert by[(6, "tcp", "single", "hairpin")].saw == "fd00:18::20", "seed1's ! -o br0 keeps a bridge-local IPv6 source"
    assert by[(6, "sctp", "range", "outside")].target_addr == "fd00:18::10" and by[(6, "sctp", "range", "outside")].target_port == 9302
    assert not by[(6, "tcp", "single", "itself")].expected and "martian" in by[(6, "tcp", "single", "itself")].why


@pytest.mark.root
def test_every_dnat_test_passes_on_seed1_dual_both_backends(run_suites, repo) -> None:
    """The DNAT suite on seed1-dual with iptables/ip6tables and with native nft: each test once per family (48 matrix cells each),
    the UDP replies proven the flow's own through the host's conntrack entry on both families."""
    result = run_suites(str(repo / "suites" / "test_dnat.py"), "--netcheck-topology=seed1-dual", "--netcheck-topology=seed1-dual-nft")
    outcomes = result.parseoutcomes()
    out = result.stdout.str()
    assert outcomes.get("passed") == 24 and not outcomes.get("failed") and not outcomes.get("error"), out[-3000:]



def test_the_source_address_table_pairs_each_ports_families() -> None:
    """Dual stack: each access path's IPv4 and IPv6 rows side by side, port by port."""
    from netcheck.evidence import ProbeResult
    from netcheck.report.model import TestRecord
    from netcheck.report.render import access_paths

    def probe(dst: str, port: int, saw: str) -> ProbeResult:
        return ProbeResult.from_dict({"request": {"kind": "udp", "source": "wan", "destination": dst, "port": port, "expect": "reach", "target": "netns0"},
                                      "topology": "seed1-dual", "source_interface": "uplink", "source_address": saw.rsplit(":", 1)[0], "sent": "udp",
                                      "verdict": "reached", "service_saw": saw})

    probes = [probe("203.0.113.2", 5000, "203.0.113.1:1"), probe("203.0.113.2", 8053, "203.0.113.1:2"),
              probe("2001:db8:1::2", 5000, "2001:db8:1::1:3"), probe("2001:db8:1::2", 8053, "2001:db8:1::1:4")]
    record = TestRecord("suites/test_dnat.py::test_source_address_seen_on_each_access_path[seed1-dual]", "dnat", "seed1-dual", "passed", probes=probes)
    topo = {"host": {"address": "203.0.113.2/24", "address6": "2001:db8:1::2/64"},
            "publishes": [{"host_port": 5000, "container": "netns0", "port": 5000}, {"host_port": 8053, "container": "netns0", "port": 5353}]}
    rows = access_paths([record], topo)  # type: ignore[arg-type]
    assert [(r.family, r.target.split(" → ")[0]) for r in rows] == [
        ("IPv4", "published port 203.0.113.2:5000"), ("IPv6", "published port [2001:db8:1::2]:5000"),
        ("IPv4", "published port 203.0.113.2:8053"), ("IPv6", "published port [2001:db8:1::2]:8053")]
