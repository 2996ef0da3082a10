"""The one packet decoder: an Ethernet frame, or an IP packet from a raw socket, as typed values.

The captures, the prober and the matrix read every packet through it. It is hand-packed
with ``struct`` (a few microseconds a packet, where scapy's dissection takes a few hundred),
because the matrix reads one reply per pair and a capture reads every frame of its link;
scapy stays for the report's full dissections.

>>> frame = bytes.fromhex("0200000000010200000000020800" "4500001c00000000400100000a0000010a000002" "0800f7fe00010000")
>>> eth = decode(frame)
>>> eth.src, type(eth.payload).__name__, eth.payload.src, eth.payload.payload.name
('02:00:00:00:00:02', 'IPv4', '10.0.0.1', 'echo-request')
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

ETH_IPV4, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132
SCTP_INIT, SCTP_INIT_ACK, SCTP_ABORT = 1, 2, 6
_SCTP_CHUNKS = {0: "DATA", 1: "INIT", 2: "INIT-ACK", 3: "SACK", 4: "HEARTBEAT", 5: "HEARTBEAT-ACK", 6: "ABORT", 7: "SHUTDOWN", 10: "COOKIE-ECHO", 11: "COOKIE-ACK"}
ICMP_ECHOREPLY, ICMP_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
FRAG_NEEDED = 4  # the dest-unreach code of fragmentation needed (its header carries the next hop's MTU)
ICMPV6_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, ICMPV6_ECHO, ICMPV6_ECHOREPLY = 1, 2, 3, 128, 129
NDP_SOLICIT, NDP_ADVERT = 135, 136
# IPv6 extension headers the decoder steps over to reach the upper layer: hop-by-hop, routing, destination options
# (each a next header, a length in 8-octet units beyond the first 8), and a fragment header (8 octets; only a first fragment has the upper layer).
EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_DEST_OPTS = 0, 43, 44, 60
_EXTENSIONS = (EXT_HOP_BY_HOP, EXT_ROUTING, EXT_DEST_OPTS)

_ICMP_NAMES = {0: "echo-reply", 3: "dest-unreach", 5: "redirect", 8: "echo-request", 11: "time-exceeded"}
_ICMPV6_NAMES = {1: "dest-unreach", 2: "packet-too-big", 3: "time-exceeded", 128: "echo-request", 129: "echo-reply", 135: "neighbor-solicit", 136: "neighbor-advert"}
_UNREACH = {0: "net", 1: "host", 2: "protocol", 3: "port", 4: "frag-needed", 9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
_TCP_FLAGS = "FSRPAUEC"
_IPV4 = struct.Struct("!B7xBB2x4s4s")
_ICMP = struct.Struct("!BBxxHH")
_PORTS = struct.Struct("!HH")
_ARP = struct.Struct("!6xH6s4s6s4s")
_IPV6 = struct.Struct("!6xBB16s16s")
_SCTP = struct.Struct("!HHI")


class TCP(NamedTuple):
    sport: int
    dport: int
    flags: int  # 0 where the header was cut short (an ICMP error quotes only 8 bytes)

    @property
    def flag_text(self) -> str:
        """The flags as tcpdump's letters: S, SA, R, FA ..."""
        return "".join(f for i, f in enumerate(_TCP_FLAGS) if self.flags & (1 << i))


class UDP(NamedTuple):
    sport: int
    dport: int


class SCTP(NamedTuple):
    """An SCTP common header and its first chunk's type (None where the packet was cut short: an ICMP error quotes 8 bytes)."""

    sport: int
    dport: int
    vtag: int
    chunk: int | None

    @property
    def chunk_name(self) -> str:
        return "" if self.chunk is None else _SCTP_CHUNKS.get(self.chunk, f"chunk{self.chunk}")


class ICMP(NamedTuple):
    """ICMP (IPv4): an echo (``ident``, ``seq``, ``data``) or an error quoting the packet it is about."""

    type: int
    code: int
    ident: int | None = None
    seq: int | None = None
    data: bytes = b""
    quoted: IPv4 | None = None
    mtu: int | None = None  # fragmentation-needed only: the next hop's MTU the router gave

    @property
    def is_echo(self) -> bool:
        return self.type in (ICMP_ECHO, ICMP_ECHOREPLY)

    @property
    def is_error(self) -> bool:
        return self.type in (ICMP_UNREACH, ICMP_TIME_EXCEEDED)

    @property
    def name(self) -> str:
        return _ICMP_NAMES.get(self.type, f"type{self.type}")

    def describe(self) -> str:
        """As the evidence shows it: 'echo-request id=0x1a2b seq=1', 'dest-unreach port'."""
        if self.is_echo:
            return f"{self.name} id={self.ident:#06x} seq={self.seq}"
        return f"{self.name} {_UNREACH.get(self.code, self.code)}" if self.type == ICMP_UNREACH else self.name

    def error_text(self, sender: str) -> str:
        """An error as the prober reports it: 'ICMP destination unreachable (code 1) from 10.0.0.1'."""
        if self.type == ICMP_UNREACH and self.code == FRAG_NEEDED:
            return f"ICMP fragmentation needed (mtu {self.mtu}) from {sender}"
        kind = "destination unreachable" if self.type == ICMP_UNREACH else "time exceeded"
        return f"ICMP {kind} (code {self.code}) from {sender}"


class ICMPv6(NamedTuple):
    """ICMPv6: an echo (``ident``, ``seq``, ``data``) or an error quoting the packet it is about."""

    type: int
    code: int
    ident: int | None = None
    seq: int | None = None
    data: bytes = b""
    quoted: IPv6 | None = None
    mtu: int | None = None  # packet-too-big only: the MTU of the link it did not fit

    @property
    def is_echo(self) -> bool:
        return self.type in (ICMPV6_ECHO, ICMPV6_ECHOREPLY)

    @property
    def is_error(self) -> bool:
        return self.type in (ICMPV6_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED)

    @property
    def name(self) -> str:
        return _ICMPV6_NAMES.get(self.type, f"type{self.type}")

    @property
    def ndp_target(self) -> str | None:
        """A neighbour solicitation's or advertisement's target address."""
        if self.type not in (NDP_SOLICIT, NDP_ADVERT) or len(self.data) < 20:
            return None
        return socket.inet_ntop(socket.AF_INET6, self.data[4:20])

    @property
    def ndp_mac(self) -> str | None:
        """The link-layer address option of an NDP message (source option in a solicitation, target option in an advertisement)."""
        opts = self.data[20:]
        while len(opts) >= 8 and opts[1]:
            if opts[0] in (1, 2):
                return opts[2:8].hex(":")
            opts = opts[opts[1] * 8 :]
        return None

    def describe(self) -> str:
        if self.is_echo:
            return f"{self.name} id={self.ident:#06x} seq={self.seq}"
        target = self.ndp_target
        if target is not None:
            return f"{self.name} {target}" + (f" is-at {self.ndp_mac}" if self.type == NDP_ADVERT and self.ndp_mac else "")
        return self.name


class IPv4(NamedTuple):
    src: str
    dst: str
    ttl: int
    proto: int
    payload: ICMP | TCP | UDP | SCTP | None  # None: another protocol, or cut short


class IPv6(NamedTuple):
    src: str
    dst: str
    hop_limit: int
    next_header: int
    payload: ICMPv6 | TCP | UDP | SCTP | None  # None: an extension header, another protocol, or cut short


class ARP(NamedTuple):
    op: int  # 1 who-has, 2 is-at
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str

    def describe(self) -> str:
        return "who-has" if self.op == 1 else f"is-at {self.sender_mac}" if self.op == 2 else f"op{self.op}"


class Ethernet(NamedTuple):
    dst: str
    src: str
    ethertype: int
    payload: ARP | IPv4 | IPv6 | None  # None: another ethertype, or cut short


def mac(b: bytes) -> str:
    return b.hex(":")


# The decoders build their values with tuple.__new__, which skips the NamedTuple constructor's
# argument handling: a third of the cost of a matrix reply. Every field is given, in order.
_new = tuple.__new__
_ntoa = socket.inet_ntoa


def decode(frame: bytes) -> Ethernet | None:
    """An Ethernet frame (as an AF_PACKET socket reads it); None if it is shorter than a header."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    payload: ARP | IPv4 | IPv6 | None = None
    if ethertype == ETH_IPV4:
        payload = decode_ipv4(frame, 14)
    elif ethertype == ETH_ARP:
        payload = decode_arp(frame, 14)
    elif ethertype == ETH_IPV6:
        payload = decode_ipv6(frame, 14)
    return _new(Ethernet, (frame[0:6].hex(":"), frame[6:12].hex(":"), ethertype, payload))


def decode_ip(packet: bytes) -> IPv4 | IPv6 | None:
    """An IP packet, header included (as a raw IP socket reads it), by its version."""
    if not packet:
        return None
    version = packet[0] >> 4
    return decode_ipv4(packet) if version == 4 else decode_ipv6(packet) if version == 6 else None


def decode_arp(data: bytes, off: int = 0) -> ARP | None:
    if len(data) < off + 28:
        return None
    op, sha, spa, tha, tpa = _ARP.unpack_from(data, off)
    return _new(ARP, (op, sha.hex(":"), _ntoa(spa), tha.hex(":"), _ntoa(tpa)))


def decode_ipv4(data: bytes, off: int = 0, *, quoted: bool = False) -> IPv4 | None:
    if len(data) < off + 20:
        return None
    vhl, ttl, proto, src, dst = _IPV4.unpack_from(data, off)
    l4 = off + (vhl & 0x0F) * 4
    payload: ICMP | TCP | UDP | SCTP | None = None
    if proto == PROTO_ICMP:
        if len(data) >= l4 + 8:
            itype, code, ident, seq = _ICMP.unpack_from(data, l4)
            if itype in (ICMP_ECHO, ICMP_ECHOREPLY):
                payload = _new(ICMP, (itype, code, ident, seq, data[l4 + 8 :], None, None))
            else:
                inner = None if quoted or itype not in (ICMP_UNREACH, ICMP_TIME_EXCEEDED) else decode_ipv4(data, l4 + 8, quoted=True)
                payload = _new(ICMP, (itype, code, None, None, b"", inner, seq if itype == ICMP_UNREACH and code == FRAG_NEEDED else None))
    elif proto in (PROTO_TCP, PROTO_UDP):
        payload = _ports(data, l4, proto == PROTO_TCP)
    elif proto == PROTO_SCTP:
        payload = _sctp(data, l4)
    return _new(IPv4, (_ntoa(src), _ntoa(dst), ttl, proto, payload))


def decode_ipv6(data: bytes, off: int = 0, *, quoted: bool = False) -> IPv6 | None:
    if len(data) < off + 40:
        return None
    nh, hops, src, dst = _IPV6.unpack_from(data, off)
    l4 = off + 40
    nh, l4 = _skip_extensions(data, nh, l4)
    payload: ICMPv6 | TCP | UDP | SCTP | None = None
    if nh == PROTO_ICMPV6 and len(data) >= l4 + 8:
        itype, code, ident, seq = _ICMP.unpack_from(data, l4)
        if itype in (ICMPV6_ECHO, ICMPV6_ECHOREPLY):
            payload = _new(ICMPv6, (itype, code, ident, seq, data[l4 + 8 :], None, None))
        elif itype in (NDP_SOLICIT, NDP_ADVERT):
            payload = _new(ICMPv6, (itype, code, None, None, data[l4 + 4 :], None, None))
        else:
            inner = None if quoted or itype not in (ICMPV6_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED) else decode_ipv6(data, l4 + 8, quoted=True)
            payload = _new(ICMPv6, (itype, code, None, None, b"", inner, (ident << 16 | seq) if itype == ICMPV6_PACKET_TOO_BIG else None))
    elif nh in (PROTO_TCP, PROTO_UDP):
        payload = _ports(data, l4, nh == PROTO_TCP)
    elif nh == PROTO_SCTP:
        payload = _sctp(data, l4)
    return _new(IPv6, (socket.inet_ntop(socket.AF_INET6, src), socket.inet_ntop(socket.AF_INET6, dst), hops, nh, payload))


def _skip_extensions(data: bytes, nh: int, off: int) -> tuple[int, int]:
    """The upper layer's protocol and offset past any extension headers; a later fragment has none (its
    protocol is then EXT_FRAGMENT, and the decoder leaves the payload undecoded).

    >>> _skip_extensions(bytes([58, 0]) + bytes(6), EXT_HOP_BY_HOP, 0)
    (58, 8)
    """
    for _ in range(8):  # a real packet has a few at most; a loop of them is cut short
        if nh in _EXTENSIONS and len(data) >= off + 8:
            nh, off = data[off], off + (data[off + 1] + 1) * 8
        elif nh == EXT_FRAGMENT and len(data) >= off + 8:
            if int.from_bytes(data[off + 2 : off + 4], "big") >> 3:  # a fragment offset: not the first fragment
                return EXT_FRAGMENT, off
            nh, off = data[off], off + 8
        else:
            break
    return nh, off


def _ports(data: bytes, l4: int, tcp: bool) -> TCP | UDP | None:
    if len(data) < l4 + 8:
        return None
    sport, dport = _PORTS.unpack_from(data, l4)
    if tcp:
        return _new(TCP, (sport, dport, data[l4 + 13] if len(data) >= l4 + 14 else 0))
    return _new(UDP, (sport, dport))


def decode_sctp(data: bytes) -> SCTP | None:
    """An SCTP common header and its first chunk, from its first byte (as a raw IPv6 socket reads it: no IP header)."""
    return _sctp(data, 0)


def _sctp(data: bytes, l4: int) -> SCTP | None:
    if len(data) < l4 + 8:
        return None
    sport, dport, vtag = _SCTP.unpack_from(data, l4)
    return _new(SCTP, (sport, dport, vtag, data[l4 + 12] if len(data) > l4 + 12 else None))


# ----------------------------------------------------------------------------- encoding


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request (header and payload) with its checksum, ready for a raw ICMP socket."""
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(head + payload), ident, seq) + payload


def echo_request6(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMPv6 echo request for a raw ICMPv6 socket: the kernel fills in its checksum (RFC 3542)."""
    return struct.pack("!BBHHH", ICMPV6_ECHO, 0, 0, ident, seq) + payload


def neighbour_solicitation(target: str, mac: str) -> bytes:
    """An NDP neighbour solicitation for ``target`` with the sender's MAC as its source link-layer option (raw ICMPv6 socket: the kernel sums it)."""
    return struct.pack("!BBHI", NDP_SOLICIT, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, target) + bytes([1, 1]) + bytes.fromhex(mac.replace(":", ""))


def solicited_node(target: str) -> str:
    """The solicited-node multicast address of ``target`` (ff02::1:ffXX:XXXX), where a solicitation for it goes."""
    low = socket.inet_pton(socket.AF_INET6, target)[13:]
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff02" + "00" * 9 + "01ff") + low)


# ----------------------------------------------------------------------------- VXLAN (RFC 7348)

_VXLAN = struct.Struct("!B3x3sx")  # flags (0x08: the VNI is valid), reserved, VNI, reserved


class VXLAN(NamedTuple):
    """A VXLAN datagram seen on the underlay: the outer addresses and port, the VNI and the inner frame."""

    outer: IPv4
    dport: int
    vni: int
    inner: Ethernet | None


def decode_vxlan(frame: bytes, port: int) -> VXLAN | None:
    """The VXLAN datagram an Ethernet frame carries to UDP ``port``; None if it carries none.

    >>> inner = bytes.fromhex("0200000000010200000000020800" "4500001c00000000400100000a0000010a000002" "0800f7fe00010000")
    >>> outer = bytes.fromhex("0200000000030200000000040800" "450000520000000040110000c6336481c6336482") + struct.pack("!HHHH", 40000, 4789, 58, 0)
    >>> v = decode_vxlan(outer + bytes.fromhex("08000000" "00002a00") + inner, 4789)
    >>> v.vni, v.outer.src, v.inner.payload.dst
    (42, '198.51.100.129', '10.0.0.2')
    """
    eth = decode(frame)
    ip = eth.payload if eth is not None else None
    if not isinstance(ip, IPv4) or not isinstance(ip.payload, UDP) or ip.payload.dport != port:
        return None
    udp = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < udp + 16:
        return None
    flags, vni = _VXLAN.unpack_from(frame, udp + 8)
    if not flags & 0x08:
        return None
    return _new(VXLAN, (ip, port, int.from_bytes(vni, "big"), decode(frame[udp + 16 :])))


__all__ = [
    "ARP", "ICMP", "IPv4", "IPv6", "SCTP", "TCP", "UDP", "VXLAN", "Ethernet", "ICMPv6", "decode", "decode_arp", "decode_ip", "decode_ipv4", "decode_ipv6", "decode_sctp", "decode_vxlan",
    "echo_request", "echo_request6", "checksum", "mac", "neighbour_solicitation", "solicited_node",
]
