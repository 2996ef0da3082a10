"""The one packet decoder against scapy's own packets, and the probe values it feeds.

No root: frames are built with scapy and decoded by netcheck.packet; the captures' flow
matchers and the evidence packets are checked on them too.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet import ICMP as ScapyICMP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether

from netcheck import packet
from netcheck.evidence import Capture, ProbeRequest, ProbeResult, RequestError
from netcheck.probes.capture import arp_flow, evidence_packet, icmp_flow, port_flow

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def frame(layers: object) -> bytes:
    return bytes(Ether(src=A, dst=B) / layers)  # type: ignore[operator]


def test_icmp_echo_and_the_error_that_quotes_it() -> None:
    echo = frame(IP(src="10.0.0.1", dst="10.0.0.2", ttl=63) / ScapyICMP(type=8, id=0x1A2B, seq=1) / b"netcheck-1a2b")
    eth = packet.decode(echo)
    assert eth is not None and (eth.src, eth.dst, eth.ethertype) == (A, B, 0x0800)
    ip = eth.payload
    assert isinstance(ip, packet.IPv4) and (ip.src, ip.dst, ip.ttl, ip.proto) == ("10.0.0.1", "10.0.0.2", 63, 1)
    assert isinstance(ip.payload, packet.ICMP) and (ip.payload.ident, ip.payload.seq, ip.payload.data) == (0x1A2B, 1, b"netcheck-1a2b")
    assert ip.payload.describe() == "echo-request id=0x1a2b seq=1"
    quoting = frame(IP(src="10.0.0.254", dst="10.0.0.1") / ScapyICMP(type=3, code=1) / echo[14:42])
    err = packet.decode(quoting)
    assert err is not None and isinstance(err.payload, packet.IPv4)
    icmp = err.payload.payload
    assert isinstance(icmp, packet.ICMP) and icmp.is_error and icmp.describe() == "dest-unreach host"
    assert icmp.quoted is not None and icmp.quoted.dst == "10.0.0.2" and isinstance(icmp.quoted.payload, packet.ICMP)
    assert icmp.quoted.payload.ident == 0x1A2B
    match = icmp_flow(0x1A2B)
    assert (match(eth), match(err), icmp_flow(0x1A2C)(eth)) == ("request", "error", None)


def test_tcp_udp_and_arp() -> None:
    syn_ack = packet.decode(frame(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=5000, dport=40000, flags="SA")))
    assert syn_ack is not None and isinstance(syn_ack.payload, packet.IPv4)
    tcp = syn_ack.payload.payload
    assert isinstance(tcp, packet.TCP) and (tcp.sport, tcp.dport, tcp.flag_text) == (5000, 40000, "SA")
    assert port_flow("tcp", 40000)(syn_ack) == "reply" and port_flow("udp", 40000)(syn_ack) is None
    dgram = packet.decode(frame(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40001, dport=7) / b"x"))
    assert dgram is not None and isinstance(dgram.payload, packet.IPv4) and dgram.payload.payload == packet.UDP(40001, 7)
    assert port_flow("udp", 40001)(dgram) == "request"
    is_at = packet.decode(frame(ARP(op=2, hwsrc=B, psrc="10.0.0.2", hwdst=A, pdst="10.0.0.1")))
    assert is_at is not None and is_at.payload == packet.ARP(2, B, "10.0.0.2", A, "10.0.0.1")
    assert arp_flow("10.0.0.2")(is_at) == "reply"
    shown = evidence_packet(is_at, b"raw", 0.5, "reply")
    assert (shown.proto, shown.src, shown.dst, shown.info) == ("arp", "10.0.0.2", "10.0.0.1", f"is-at {B}")


def test_ipv6_headers_and_icmpv6_echo() -> None:
    request = frame(IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=64) / ICMPv6EchoRequest(id=7, seq=2, data=b"hi"))
    eth = packet.decode(request)
    assert eth is not None and isinstance(eth.payload, packet.IPv6)
    ip6 = eth.payload
    assert (ip6.src, ip6.dst, ip6.hop_limit, ip6.next_header) == ("2001:db8::1", "2001:db8::2", 64, 58)
    assert ip6.payload == packet.ICMPv6(128, 0, 7, 2, b"hi", None)
    reply = packet.decode_ip(bytes(IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoReply(id=7, seq=2)))
    assert isinstance(reply, packet.IPv6) and isinstance(reply.payload, packet.ICMPv6) and reply.payload.describe() == "echo-reply id=0x0007 seq=2"
    unreach = packet.decode(frame(IPv6(src="2001:db8::fe", dst="2001:db8::1") / ICMPv6DestUnreach() / bytes(request[14:])))
    assert unreach is not None and isinstance(unreach.payload, packet.IPv6) and isinstance(unreach.payload.payload, packet.ICMPv6)
    quoted = unreach.payload.payload.quoted
    assert quoted is not None and isinstance(quoted.payload, packet.ICMPv6) and quoted.payload.ident == 7
    assert (icmp_flow(7)(eth), icmp_flow(7)(unreach)) == ("request", "error")
    assert packet.decode_ip(b"\x45\x00") is None and packet.decode(b"short") is None


def test_echo_request_is_what_scapy_would_send() -> None:
    ours = packet.echo_request(0x1234, 7, b"netcheck")
    assert ours == bytes(ScapyICMP(type=8, id=0x1234, seq=7) / b"netcheck")
    assert packet.checksum(ours) == 0


# ----------------------------------------------------------------------------- probe values


def result_of(request: ProbeRequest) -> ProbeResult:
    cap = Capture("netns0:ceth0", "netns0", "ceth0", "nc1ceth0", started=True,
                  packets=(evidence_packet(packet.decode(frame(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=5000, flags="S"))), b"\x00\x01", 0.1, "request"),))  # type: ignore[arg-type]
    return ProbeResult(request=request, topology="seed1", source_interface="ceth0", source_address="10.0.0.1", sent="TCP echo", verdict="unreachable", captures=(cap,))


@pytest.mark.parametrize("request_", [
    ProbeRequest("icmp", "netns0", IPv4Address("198.51.100.1"), ttl=1, capture=("host:eth0", "wan:uplink"), payload=b"\x00\xffpad"),
    ProbeRequest("tcp", "host", IPv4Address("203.0.113.2"), 5000, expect="block", target="netns0", timeout=0.2),
    ProbeRequest("http", "wan", IPv4Address("203.0.113.2"), 8080),
    ProbeRequest("udp", "netns1", IPv4Address("172.18.0.10"), 7, expect="observe"),
    ProbeRequest("arp", "netns0", IPv4Address("172.18.0.20"), target="netns1"),
    ProbeRequest("icmp", "netns0", IPv6Address("2001:db8::1")),
], ids=lambda r: r.kind)
def test_a_result_round_trips_with_its_request(request_: ProbeRequest) -> None:
    r = result_of(request_)
    again = ProbeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r and again.request == request_
    assert r.to_dict()["destination"] == request_.address and r.destination == request_.address


def test_a_request_that_cannot_be_sent_says_which_field_and_the_fix() -> None:
    v4 = IPv4Address("10.0.0.1")
    for bad, words in (
        (lambda: ProbeRequest("tcp", "netns0", v4), "give the port"),
        (lambda: ProbeRequest("icmp", "netns0", v4, 80), "only tcp, http and udp probes take a port"),
        (lambda: ProbeRequest("udp", "netns0", v4, 70000), "Fix: use 1 to 65535"),
        (lambda: ProbeRequest("tcp", "netns0", v4, 7, ttl=3), "only icmp probes take a ttl"),
        (lambda: ProbeRequest("udp", "netns0", v4, 7, payload=b"a\nb"), "Fix: leave line breaks out"),
        (lambda: ProbeRequest("icmp", "netns0", v4, expect="unreachable"), "use one of reach, block, observe"),  # type: ignore[arg-type]
        (lambda: ProbeRequest("icmp", "netns0", "10.0.0.1"), "Fix: pass ipaddress.ip_address"),  # type: ignore[arg-type]
        (lambda: ProbeRequest("arp", "netns0", IPv6Address("2001:db8::1")), "ARP asks for an IPv4 address"),
    ):
        with pytest.raises(RequestError, match=words):
            bad()


@pytest.mark.parametrize("name", ["pass", "fail"])
def test_recorded_probes_rebuild_as_typed_results(name: str) -> None:
    """What a run records (and xdist ships) rebuilds with ProbeResult.from_dict, and writes back the same."""
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / f"results-{name}.json").read_text())
    probes = [p for t in data["tests"] for p in [*t["probes"], *(f for m in t["matrices"] for f in m["failures"])]]
    assert probes
    for p in probes:
        r = ProbeResult.from_dict(p)
        assert r.to_dict() == p, f"{r.headline()}: does not write back as it was recorded"
        assert r.passed == (p["verdict"] == "reached" if p["expected"] == "reach" else p["verdict"] == "unreachable" if p["expected"] == "block" else p["verdict"] != "inconclusive")
