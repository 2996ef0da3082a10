"""Batched rtnetlink: the few requests a build sends by the hundred, encoded with struct.

pyroute2 costs about 0.45 ms of Python per request (its sync API runs an event loop, and
its message classes are generic); a lab of 250 containers sends over a thousand requests.
The requests here are built by hand (a few microseconds each), written to one raw
NETLINK_ROUTE socket in one ``send`` per batch, and their acknowledgements matched back by
sequence number, so one bad request is reported by name and the others still apply.

Every netlink write of netcheck goes through here (``Netns`` sends these requests, batched or
one at a time), and so do the dumps a diagnosis reads (links, addresses, routes, neighbours:
``Rtnl.dump``, decoded by ``link_record`` and ``attributes``), which pyroute2 parses some ten
times slower; the rarer reads (route lookups, policy rules, the fdb) stay with pyroute2 in ``netns.py``.

>>> r = veth("nc1av0", "eth0", peer_netns_fd=5, master=3, up=True)
>>> r.what
'add veth nc1av0 <-> eth0'
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

# message types and flags (linux/rtnetlink.h, linux/netlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended-ack attributes follow
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SOL_NETLINK = 270
NLMSGERR_ATTR_MSG = 1

# attributes (linux/if_link.h, linux/if_addr.h, linux/rtnetlink.h, linux/veth.h)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_GROUP, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 16, 18, 27, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_STATE, IFLA_BRPORT_LEARNING, IFLA_BRPORT_ISOLATED = 1, 8, 33  # IFLA_BRPORT_MODE (hairpin) is 4, below
IFLA_BR_NF_CALL_IPTABLES = 36
IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE = 1, 4
IFLA_BR_FORWARD_DELAY, IFLA_BR_AGEING_TIME, IFLA_BR_STP_STATE = 1, 4, 5
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40
IFA_F_NODAD = 0x02  # an IPv6 address usable at once: no duplicate address detection (the sandbox owns every address)
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 2, 3, 4, 5, 6, 7, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
_ATTR = struct.Struct("=HH")
MAX_BATCH_BYTES = 32768  # well under the socket's send buffer
MAX_BATCH_REQUESTS = 128  # each acknowledgement takes a buffer of its own: 128 fit RCVBUF easily
RCVBUF = 1 << 20


class NetlinkError(OSError):
    """One request of a batch failed; ``what`` names it, ``errno`` says why."""

    def __init__(self, code: int, what: str, detail: str = "") -> None:
        self.what = what
        self.detail = detail
        super().__init__(code, f"{what}: {os.strerror(code)}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Request:
    """One rtnetlink request without its header: ``what`` names it in errors (a callable: named lazily)."""

    what: str | Callable[[], str]
    type: int
    flags: int
    body: bytes

    def describe(self) -> str:
        return self.what if isinstance(self.what, str) else self.what()


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ifinfo(index: int = 0, up: bool | None = None) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


# ----------------------------------------------------------------------------- requests


def veth(
    name: str, peer: str, *, peer_netns_fd: int | None = None, master: int | None = None, group: int | None = None,
    mtu: int | None = None, up: bool = False, index: int = 0, peer_index: int = 0, peer_group: int | None = None,
) -> Request:
    """A veth pair in one request: the peer is born in ``peer_netns_fd``; ``name`` may be born up.

    The peer cannot be: the kernel opens it before the pair is joined (ENOTCONN).

    An explicit ``index`` (with ``peer_index``) keeps a pair's ifindexes apart: the kernel
    handles the carrier event of a veth whose ifindex equals its peer's as non-urgent, and
    its operstate then lags by up to a second.
    """
    peer_attrs = _str(IFLA_IFNAME, peer)
    if peer_netns_fd is not None:
        peer_attrs += _u32(IFLA_NET_NS_FD, peer_netns_fd)
    if mtu:
        peer_attrs += _u32(IFLA_MTU, mtu)
    if peer_group is not None:
        peer_attrs += _u32(IFLA_GROUP, peer_group)
    info = _str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _ifinfo(peer_index) + peer_attrs))
    attrs = _str(IFLA_IFNAME, name) + _attr(IFLA_LINKINFO, info)
    if mtu:
        attrs += _u32(IFLA_MTU, mtu)
    if master is not None:
        attrs += _u32(IFLA_MASTER, master)
    if group is not None:
        attrs += _u32(IFLA_GROUP, group)
    return Request(f"add veth {name} <-> {peer}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo(index, up or None) + attrs)


def bridge(name: str, *, group: int | None = None) -> Request:
    """A bridge without STP and with no forward delay, so its ports forward at once."""
    info = _str(IFLA_INFO_KIND, "bridge") + _attr(IFLA_INFO_DATA, _u32(IFLA_BR_STP_STATE, 0) + _u32(IFLA_BR_FORWARD_DELAY, 0))
    attrs = _str(IFLA_IFNAME, name) + _attr(IFLA_LINKINFO, info) + (_u32(IFLA_GROUP, group) if group is not None else b"")
    return Request(f"add bridge {name}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo() + attrs)


def set_bridge(index: int, *, ageing_time: int, what: str = "") -> Request:
    """Change a bridge's MAC ageing time (in centiseconds; 0: forget every MAC at once)."""
    info = _str(IFLA_INFO_KIND, "bridge") + _attr(IFLA_INFO_DATA, _u32(IFLA_BR_AGEING_TIME, ageing_time))
    return Request(what or f"set bridge #{index}", RTM_NEWLINK, 0, _ifinfo(index) + _attr(IFLA_LINKINFO, info))


def set_link(index: int, *, up: bool | None = None, master: int | None = None, mtu: int | None = None, what: str = "") -> Request:
    """Change a link: admin state, master (0 detaches it from its bridge), MTU."""
    attrs = _u32(IFLA_MASTER, master) if master is not None else b""
    if mtu is not None:
        attrs += _u32(IFLA_MTU, mtu)
    return Request(what or f"set link #{index}", RTM_SETLINK, 0, _ifinfo(index, up) + attrs)


IFLA_PROTINFO, IFLA_BRPORT_MODE, NLA_F_NESTED = 12, 4, 0x8000


def set_hairpin(index: int, on: bool, *, what: str = "") -> Request:
    """A bridge port's hairpin mode (``bridge link set dev X hairpin on``): frames may leave by the port they came in by,
    as a container reaching its own published port needs (Docker sets it without its userland proxy)."""
    info = _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0)
    mode = _attr(IFLA_BRPORT_MODE, bytes([1 if on else 0]))
    return Request(what or f"set hairpin on #{index}", RTM_SETLINK, 0, info + _attr(IFLA_PROTINFO | NLA_F_NESTED, mode))


def delete_link(name: str) -> Request:
    return Request(f"delete link {name}", RTM_DELLINK, 0, _ifinfo() + _str(IFLA_IFNAME, name))


def delete_group(group: int) -> Request:
    """Delete every link of a group in one request (one unregister batch in the kernel)."""
    return Request(f"delete link group {group}", RTM_DELLINK, 0, _ifinfo() + _u32(IFLA_GROUP, group))


def add_address(index: int, address: IPv4Interface | IPv6Interface, *, what: str = "", dad: bool = False) -> Request:
    """Add an address; an IPv6 one without duplicate address detection unless ``dad``."""
    return Request(what or f"add address {address} to #{index}", RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, _address(index, address, 0 if dad else IFA_F_NODAD))


def delete_address(index: int, address: IPv4Interface | IPv6Interface, *, what: str = "") -> Request:
    return Request(what or f"delete address {address} from #{index}", RTM_DELADDR, 0, _address(index, address))


def _address(index: int, address: IPv4Interface | IPv6Interface, flags: int = IFA_F_NODAD) -> bytes:
    ip = address.ip.packed
    if address.version == 6:
        # IPv6 takes IFA_ADDRESS alone; NODAD: the address is not "tentative" for a second, so nothing waits on DAD.
        return _IFADDR.pack(socket.AF_INET6, address.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index) + _attr(IFA_ADDRESS, ip) + _u32(IFA_FLAGS, flags)
    return _IFADDR.pack(socket.AF_INET, address.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index) + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip)


def add_route(dst: IPv4Network | IPv6Network, *, via: IPv4Address | IPv6Address | None = None, oif: int | None = None, what: str = "") -> Request:
    scope = RT_SCOPE_UNIVERSE if via is not None or dst.version == 6 else RT_SCOPE_LINK
    body = _RTMSG.pack(socket.AF_INET6 if dst.version == 6 else socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    if dst.prefixlen:
        body += _attr(RTA_DST, dst.network_address.packed)
    if via is not None:
        body += _attr(RTA_GATEWAY, via.packed)
    if oif is not None:
        body += _u32(RTA_OIF, oif)
    return Request(what or f"add route {dst} via {via or f'#{oif}'}", RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def delete_route(dst: IPv4Network | IPv6Network) -> Request:
    """Delete the main table's route to ``dst``, whatever its gateway (as ``ip route del DST``)."""
    body = _RTMSG.pack(socket.AF_INET6 if dst.version == 6 else socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
    if dst.prefixlen:
        body += _attr(RTA_DST, dst.network_address.packed)
    return Request(f"delete route {dst}", RTM_DELROUTE, 0, body)


def neighbours(index: int, entries: Iterable[tuple[IPv4Address, str]], *, delete: bool = False, where: str = "") -> Iterator[Request]:
    """Permanent neighbour (static ARP) entries (ip, mac) on link ``index``, or their deletion.

    A permanent entry replaces a learned one, and is exempt from the neighbour table's
    gc_thresh3, which counts the learned entries of every namespace of the machine together
    (1024 by default). Made lazily, a few microseconds each, so that a batch of thousands
    holds only the requests awaiting their acknowledgement.
    """
    where = where or f"#{index}"
    head = _NDMSG.pack(socket.AF_INET, index, 0 if delete else NUD_PERMANENT, 0, 0)
    for ip, mac in entries:
        body = head + _ATTR.pack(8, NDA_DST) + ip.packed
        if delete:
            yield Request(_named("delete neighbour", ip, "", where), RTM_DELNEIGH, 0, body)
        else:
            body += _ATTR.pack(10, NDA_LLADDR) + bytes.fromhex(mac.replace(":", "")) + b"\0\0"
            yield Request(_named("add neighbour", ip, mac, where), RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)


def _named(verb: str, ip: IPv4Address, mac: str, where: str) -> Callable[[], str]:
    """The name of a neighbour request, made only if it fails (formatting costs more than encoding)."""
    return lambda: f"{verb} {ip}" + (f" lladdr {mac}" if mac else "") + f" on {where}"


# ----------------------------------------------------------------------------- VXLAN (multi-host overlays)

IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
AF_BRIDGE, NTF_SELF, NLM_F_APPEND = 7, 0x02, 0x800


def vxlan(name: str, *, vni: int, port: int, local: IPv4Address, link: int, learning: bool, mtu: int | None = None, mac: str | None = None) -> Request:
    """A VXLAN device (``ip link add NAME type vxlan id VNI dstport PORT local LOCAL dev LINK [nolearning]``)."""
    data = _u32(IFLA_VXLAN_ID, vni) + _u32(IFLA_VXLAN_LINK, link) + _attr(IFLA_VXLAN_LOCAL, local.packed)
    data += _attr(IFLA_VXLAN_LEARNING, bytes([1 if learning else 0])) + _attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
    attrs = _str(IFLA_IFNAME, name) + _attr(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "vxlan") + _attr(IFLA_INFO_DATA, data))
    if mtu:
        attrs += _u32(IFLA_MTU, mtu)
    if mac:
        attrs += _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
    return Request(f"add vxlan {name} id {vni} dstport {port} local {local}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo() + attrs)


def macvlan(name: str, *, link: int, netns_fd: int, mtu: int | None = None) -> Request:
    """A bridge-mode macvlan of ``link``, born in the namespace of ``netns_fd``
    (``ip link add link LINK name NAME netns NS type macvlan mode bridge``): the link never exists beside its parent."""
    info = _str(IFLA_INFO_KIND, "macvlan") + _attr(IFLA_INFO_DATA, _u32(IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE))
    attrs = _str(IFLA_IFNAME, name) + _u32(IFLA_LINK, link) + _u32(IFLA_NET_NS_FD, netns_fd) + _attr(IFLA_LINKINFO, info)
    if mtu:
        attrs += _u32(IFLA_MTU, mtu)
    return Request(f"add macvlan {name} of link #{link}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo() + attrs)


def fdb(index: int, mac: str, dst: IPv4Address, *, delete: bool = False, where: str = "") -> Request:
    """A permanent fdb entry of a VXLAN device (``bridge fdb append MAC dev DEV dst DST``), or its deletion.

    Appended, so several all-zero entries (head-end replication to every remote VTEP) coexist.
    """
    body = _NDMSG.pack(AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF, 0)
    body += _ATTR.pack(10, NDA_LLADDR) + bytes.fromhex(mac.replace(":", "")) + b"\0\0" + _ATTR.pack(8, NDA_DST) + dst.packed
    what = f"{'delete' if delete else 'append'} fdb {mac} dst {dst} on {where or f'#{index}'}"
    if delete:
        return Request(what, RTM_DELNEIGH, 0, body)
    return Request(what, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_APPEND, body)


# ----------------------------------------------------------------------------- socket


@dataclass(frozen=True)
class LinkState:
    """What a link dump says about one link (the fields a build waits on)."""

    index: int
    name: str
    admin_up: bool
    operstate: str
    master: int | None
    peer_index: int | None
    mac: str = ""

    @property
    def up(self) -> bool:
        """Admin up with carrier. A veth (it has a peer) reads UNKNOWN between its birth and the
        kernel's first link event, so UNKNOWN counts only for links without a peer, like lo."""
        return self.admin_up and (self.operstate == "UP" or (self.operstate == "UNKNOWN" and self.peer_index is None))



@dataclass(frozen=True)
class LinkRecord:
    """Everything a link dump says of one link that netcheck reads: the link, its kind, and what
    its bridge (as a port) or it (as a bridge) holds; integers as the kernel gives them."""

    index: int
    flags: int
    name: str
    operstate: str
    mtu: int
    mac: str
    master: int | None
    peer_index: int | None
    peer_netnsid: int | None
    kind: str | None  # IFLA_INFO_KIND; None: the link has no link info (lo, a physical device)
    port: dict[int, int] | None = None  # IFLA_INFO_SLAVE_DATA of a bridge port: IFLA_BRPORT_* -> value
    bridge: dict[int, int] | None = None  # IFLA_INFO_DATA of a bridge: IFLA_BR_* -> value

    @property
    def state(self) -> LinkState:
        return LinkState(self.index, self.name, bool(self.flags & IFF_UP), self.operstate, self.master, self.peer_index, self.mac)

class Rtnl:
    """A raw NETLINK_ROUTE socket; it lives in the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):  # no echo of the request; the kernel's message text
            self.sock.setsockopt(SOL_NETLINK, opt, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root): a dump of 250 links needs room
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def execute(self, requests: Iterable[Request]) -> list[NetlinkError]:
        """Send every request (in order; the kernel applies each in turn) and return the failures."""
        failures: list[NetlinkError] = []
        chunk: dict[int, Request] = {}
        buf = bytearray()
        for r in requests:
            seq = self._next()
            buf += _HDR.pack(_HDR.size + len(r.body), r.type, NLM_F_REQUEST | NLM_F_ACK | r.flags, seq, 0) + r.body
            chunk[seq] = r
            if len(buf) >= MAX_BATCH_BYTES or len(chunk) >= MAX_BATCH_REQUESTS:
                failures += self._flush(buf, chunk)
                buf, chunk = bytearray(), {}
        if chunk:
            failures += self._flush(buf, chunk)
        return failures

    def _flush(self, buf: bytearray, pending: dict[int, Request]) -> list[NetlinkError]:
        self.sock.sendall(buf)
        failures = []
        while pending:
            data = self.sock.recv(65536)
            for mtype, flags, seq, payload in _messages(data):
                if mtype != NLMSG_ERROR or seq not in pending:
                    continue
                request = pending.pop(seq)
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    failures.append(NetlinkError(code, request.describe(), _ext_ack(payload, flags)))
        return failures

    def link_index(self, name: str) -> int | None:
        """The ifindex of a link by name (None if there is none)."""
        record = self.get_link(name)
        return record.index if record is not None else None

    def get_link(self, name: str) -> LinkRecord | None:
        """One link by name (None if there is none)."""
        body = _ifinfo() + _str(IFLA_IFNAME, name)
        seq = self._next()
        self.sock.sendall(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body)
        while True:
            for mtype, _flags, mseq, payload in _messages(self.sock.recv(65536)):
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code in (errno.ENODEV, errno.ENOENT):
                        return None
                    raise NetlinkError(code, f"get link {name}", _ext_ack(payload, _flags))
                if mtype == RTM_NEWLINK:
                    return link_record(payload)

    def links(self) -> list[LinkState]:
        """Dump every link of the namespace (names, admin state, operstate, master, peer)."""
        return [link_record(p).state for p in self.dump(RTM_GETLINK, _ifinfo(), "links")]

    def link_names(self) -> dict[int, str]:
        """Every link's name by its index, from a dump (only the names decoded)."""
        out = {}
        for p in self.dump(RTM_GETLINK, _ifinfo(), "links"):
            name = next((v for kind, v in _attrs(memoryview(p), _IFINFO.size) if kind == IFLA_IFNAME), None)
            out[_IFINFO.unpack_from(p)[2]] = text(name) if name is not None else ""
        return out

    def link_records(self) -> list[LinkRecord]:
        """Dump every link of the namespace, with its kind and its bridge port or bridge options."""
        return [link_record(p) for p in self.dump(RTM_GETLINK, _ifinfo(), "links")]

    def route_get(self, family: int, dst: bytes, src: bytes | None = None, iif: int | None = None) -> bytes:
        """The kernel's route lookup (``ip route get``): the RTM_NEWROUTE payload, or a NetlinkError."""
        body = _RTMSG.pack(family, len(dst) * 8, len(src) * 8 if src else 0, 0, 0, 0, 0, 0, 0) + _attr(RTA_DST, dst)
        if src:
            body += _attr(RTA_SRC, src)
        if iif is not None:
            body += _u32(RTA_IIF, iif)
        seq = self._next()
        self.sock.sendall(_HDR.pack(_HDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body)
        while True:
            for mtype, flags, mseq, payload in _messages(self.sock.recv(65536)):
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    raise NetlinkError(-struct.unpack_from("=i", payload)[0], "get route", _ext_ack(payload, flags))
                if mtype == RTM_NEWROUTE:
                    return bytes(payload)

    def dump(self, request: int, body: bytes, what: str) -> list[bytes]:
        """The payloads of a dump request (RTM_GET* with its family header in ``body``), in the kernel's order."""
        return _dump(self.sock, self._next(), request, request - 2, body, what)  # RTM_GETX answers with RTM_NEWX


def dump(protocol: int, request: int, reply: int, body: bytes, what: str, sock: socket.socket | None = None) -> list[bytes]:
    """One dump on a netlink socket of ``protocol`` (NETLINK_SOCK_DIAG, NETLINK_NETFILTER...): the payloads
    of its ``reply`` messages. The socket is ``sock`` (closed after; made in the namespace to read) or a
    fresh one in the calling thread's namespace."""
    with sock if sock is not None else socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol) as s:
        s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
        return _dump(s, 1, request, reply, body, what)


def _dump(sock: socket.socket, seq: int, request: int, reply: int, body: bytes, what: str) -> list[bytes]:
    sock.sendall(_HDR.pack(_HDR.size + len(body), request, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    out: list[bytes] = []
    while True:
        data = sock.recv(1 << 20)
        for mtype, flags, mseq, payload in _messages(data):
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                raise NetlinkError(-struct.unpack_from("=i", payload)[0], f"dump {what}", _ext_ack(payload, flags))
            if mtype == reply:
                out.append(bytes(payload))


def _messages(data: bytes) -> Iterable[tuple[int, int, int, memoryview]]:
    view = memoryview(data)
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            break
        yield mtype, flags, seq, view[off + _HDR.size : off + length]
        off += (length + 3) & ~3


def _attrs(payload: memoryview, off: int) -> Iterable[tuple[int, memoryview]]:
    while off + 4 <= len(payload):
        length, kind = _ATTR.unpack_from(payload, off)
        if length < 4:
            break
        yield kind & 0x3FFF, payload[off + 4 : off + length]
        off += (length + 3) & ~3


def _ext_ack(payload: memoryview, flags: int) -> str:
    """The kernel's own message for a failed request, if it sent one."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    for kind, value in _attrs(payload, 4 + _HDR.size):  # error code, then the request's header
        if kind == NLMSGERR_ATTR_MSG:
            return bytes(value).rstrip(b"\0").decode(errors="replace")
    return ""


def attributes(payload: bytes | memoryview, off: int) -> dict[int, memoryview]:
    """A message's attributes from ``off`` (past its family header), by type (the nested flag cleared)."""
    return dict(_attrs(memoryview(payload), off))


def u32(value: memoryview | None) -> int | None:
    return struct.unpack_from("=I", value)[0] if value is not None else None


def text(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def lladdr(value: memoryview) -> str:
    return bytes(value).hex(":")


def _integers(value: memoryview | None) -> dict[int, int] | None:
    """A nest of integer attributes (u8, u16, u32, u64) by type; others are left out."""
    if value is None:
        return None
    sizes = {1: "=B", 2: "=H", 4: "=I", 8: "=Q"}
    return {kind: struct.unpack_from(sizes[len(v)], v)[0] for kind, v in _attrs(value, 0) if len(v) in sizes}


def link_record(payload: bytes | memoryview) -> LinkRecord:
    """Decode one RTM_NEWLINK payload."""
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    a = attributes(payload, _IFINFO.size)
    operstate = a[IFLA_OPERSTATE][0] if IFLA_OPERSTATE in a else 0
    netnsid = a.get(IFLA_LINK_NETNSID)
    info = attributes(a[IFLA_LINKINFO], 0) if IFLA_LINKINFO in a else None
    kind = text(info[IFLA_INFO_KIND]) if info is not None and IFLA_INFO_KIND in info else None
    port = _integers(info.get(IFLA_INFO_SLAVE_DATA)) if info is not None and IFLA_INFO_SLAVE_KIND in info and text(info[IFLA_INFO_SLAVE_KIND]) == "bridge" else None
    bridge = _integers(info.get(IFLA_INFO_DATA)) if info is not None and kind == "bridge" else None
    return LinkRecord(
        index=index, flags=flags, name=text(a[IFLA_IFNAME]) if IFLA_IFNAME in a else "",
        operstate=OPERSTATES[operstate] if operstate < len(OPERSTATES) else str(operstate),
        mtu=u32(a.get(IFLA_MTU)) or 0, mac=lladdr(a[IFLA_ADDRESS]) if IFLA_ADDRESS in a else "",
        master=u32(a.get(IFLA_MASTER)), peer_index=u32(a.get(IFLA_LINK)),
        peer_netnsid=struct.unpack_from("=i", netnsid)[0] if netnsid is not None else None, kind=kind, port=port, bridge=bridge,
    )


def raise_first(failures: Sequence[NetlinkError], where: str, fix: str = "") -> None:
    """Raise the first failure of a batch, naming how many failed in all."""
    if not failures:
        return
    first = failures[0]
    more = f" (and {len(failures) - 1} more requests of the batch)" if len(failures) > 1 else ""
    hint = fix or ("a leftover from a crashed run? try: netcheck clean" if first.errno == errno.EEXIST else "")
    raise NetlinkError(first.errno or 0, f"{first.what} in {where}{more}", first.detail + (f"; {hint}" if hint and first.detail else hint))


__all__ = [
    "LinkRecord", "LinkState", "NetlinkError", "Request", "Rtnl", "add_address", "add_route", "attributes", "bridge", "dump", "delete_address", "delete_group", "delete_link", "delete_route",
    "fdb", "link_record", "lladdr", "neighbours", "raise_first", "set_bridge", "set_link", "text", "u32", "veth", "vxlan",
]
