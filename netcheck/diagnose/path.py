"""The expected path of a probe, worked out from the topology, and what a capture at each hop saw.

A flow from a container to the outside world should cross::

    netns0:ceth0 -> host:veth0 -> host:br0 -> host:eth0 -> wan:uplink

and its reply the same hops in reverse. Repeating the probe with a capture at every hop
shows, each way, the last hop where the packet was seen and the first where it was not,
with its addresses at each hop, so that a missing or unexpected NAT rewrite shows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Protocol

from netcheck.evidence import Capture, Hop, Packet, ProbeResult
from netcheck.lab import plan

if TYPE_CHECKING:
    from netcheck import spec as host_spec
    from netcheck.kernel.netns import Netns

LOOPBACK = IPv4Network("127.0.0.0/8")


class LabView(Protocol):
    """What the diagnosis needs of a lab: its spec, its namespaces and its names.

    ``netcheck.lab.Lab`` is one; ``netcheck doctor`` builds another over a live lab's namespaces.
    """

    topology: host_spec.Topology
    host: Netns

    def namespaces(self) -> dict[str, Netns]: ...
    def container_ns(self, name: str) -> Netns: ...
    def kname(self, spec_iface: str) -> str: ...
    def spec_name(self, kernel_iface: str) -> str: ...
    def resolve_point(self, point: str) -> tuple[Netns, str, str]: ...


@dataclass(frozen=True)
class Side:
    """Where a container plugs into the host, in spec and kernel names."""

    container: str
    interface: str  # the container's own interface
    address: str | None
    veth: str | None  # spec name of the host-side veth
    veth_k: str | None  # its kernel name
    bridge: str | None  # spec name of the bridge, if bridged
    bridge_k: str | None

    @property
    def l3(self) -> str | None:
        """The host interface that routes for this container (kernel name): the bridge, or the routed veth."""
        return self.bridge_k or self.veth_k

    @property
    def l3_spec(self) -> str | None:
        return self.bridge or self.veth


@dataclass(frozen=True)
class Flow:
    """A probe, understood: who sends what to whom, and who should answer after any NAT."""

    kind: str  # icmp, tcp, http, udp, arp
    proto: str  # icmp, tcp, udp, arp
    source: str  # namespace label: a container, host or wan
    src_addr: str
    dst_addr: str
    dport: int | None
    expected: str  # reach, block, observe
    target: str | None  # the container expected to answer
    target_addr: str | None  # where the host should send it (after DNAT)
    target_port: int | None
    via: str  # direct, publish, vip, loopback, outside, host, arp
    nat_chain: str | None = None  # the spec's VIP chain, if via == "vip"

    @property
    def dnat(self) -> bool:
        return self.via in ("publish", "vip")


@dataclass(frozen=True)
class Route:
    """The expected hops, in order, from the sender to the receiver."""

    points: tuple[str, ...]
    routed: bool  # the host routes the packet (ip_forward and FORWARD apply)
    bridged: bool  # container to container across one bridge, no routing
    in_iface: str | None  # kernel name of the host interface the request enters by
    out_iface: str | None  # and leaves by
    notes: tuple[str, ...] = ()


def side(lab: LabView, container: str) -> Side:
    """A container's host side: spec names from the topology, kernel names from the lab."""
    c = lab.topology.container(container)
    veth = c.host_veth or None
    veth_k = kname_or_none(lab, veth) if veth else discover_veth(lab, container)
    if veth is None and veth_k is not None:
        veth = lab.spec_name(veth_k)
    bridge_k = kname_or_none(lab, c.bridge) if c.bridge else None
    return Side(container, c.interface, str(c.address.ip) if c.address else None, veth, veth_k, c.bridge, bridge_k)


class KernelNames(Protocol):
    """A lab's host interfaces by their spec names (a ``LabView``, or the facts a diagnosis gathered of one)."""

    def kname(self, spec_iface: str) -> str: ...


def kname_or_none(lab: KernelNames, name: str) -> str | None:
    """The kernel name of a host interface given by its spec name, or None if the lab has none."""
    try:
        return lab.kname(name)
    except KeyError:
        return None


def discover_veth(lab: LabView, container: str) -> str | None:
    """The host end of a container's veth, found through the peer indexes (for setups netcheck did not make)."""
    c = lab.topology.container(container)
    inner = lab.container_ns(container).link(c.interface)
    if inner is None or inner.peer_index is None:
        return None
    for link in lab.host.links():
        if link.kind == "veth" and link.index == inner.peer_index and link.peer_index == inner.index:
            return link.name
    return None


def _containers_by_address(t: host_spec.Topology) -> dict[str, str]:
    return {str(c.address.ip): c.name for c in t.containers if c.address is not None}


def host_addresses(t: host_spec.Topology) -> set[str]:
    out = {str(t.host.address.ip)}
    out |= {str(b.address.ip) for b in t.bridges if b.address is not None}
    out |= {str(c.host_address.ip) for c in t.containers if c.host_address is not None}
    return out


def flow_of(lab: LabView, result: ProbeResult) -> Flow:
    """What the probe was, and who should have answered it according to the spec."""
    t = lab.topology
    request = result.request
    ip, port, proto = request.destination, request.port, request.protocol
    dst = str(ip)
    by_addr = _containers_by_address(t)
    target, taddr, tport, via, chain = result.target, None, port, "direct", None
    if result.kind == "arp":
        via = "arp"
        target = target or by_addr.get(dst)
        taddr = dst
    elif (hit := plan.published_at(t, dst, port, proto)) is not None:
        via, target, tport = "publish", hit[0].container, hit[1]
        taddr = _addr(t, hit[0].container)
    elif ip in LOOPBACK:
        via = "loopback"
        target = target or result.source
        taddr = dst
    elif dst in by_addr:
        target = by_addr[dst]
        taddr = dst
    elif (v := next((v for v in t.vips if dst == str(v.address) and port == v.port and v.protocol == proto), None)) is not None:
        via, target, tport, chain = "vip", v.container, v.target_port, v.chain
        taddr = _addr(t, v.container)
    elif dst in host_addresses(t):
        via = "host"
        target = None
    elif dst in {str(a.ip) for family in t.families for a in (t.wan.at(family), *t.wan.remote_at(family)) if a is not None}:
        via = "outside"
        target = None
    elif target is None and not any(ip in net for net in _lab_networks(t)):
        via = "outside"  # an address the lab does not hold follows the default route: out of the uplink
    if target in ("host", "wan", "host-loopback"):
        target = None
    if target is not None and taddr is None and target in by_addr.values():
        taddr = _addr(t, target)
    return Flow(
        kind=result.kind, proto=proto, source=result.source, src_addr=result.source_address, dst_addr=dst, dport=port,
        expected=result.expected, target=target, target_addr=taddr, target_port=tport, via=via, nat_chain=chain,
    )


def _lab_networks(t: host_spec.Topology) -> list[IPv4Network]:
    """The subnets of the lab's bridges and routed veths."""
    nets = [b.address.network for b in t.bridges if b.address is not None]
    nets += [c.host_address.network for c in t.containers if c.host_address is not None]
    return nets


def _addr(t: host_spec.Topology, container: str) -> str | None:
    c = t.container(container)
    return str(c.address.ip) if c.address is not None else None


def expected_route(lab: LabView, flow: Flow) -> Route:
    """The capture points the probe should cross, in order, and how the host handles it."""
    t = lab.topology
    names = {c.name for c in t.containers}
    up, up_k = t.host.uplink, kname_or_none(lab, t.host.uplink)
    pts: list[str] = []
    routed = bridged = False
    in_iface = out_iface = None
    src_side = side(lab, flow.source) if flow.source in names else None
    dst_side = side(lab, flow.target) if flow.target in names else None

    def enter_from(s: Side) -> None:
        pts.append(f"{s.container}:{s.interface}")
        if s.veth:
            pts.append(f"host:{s.veth}")

    def l3(s: Side) -> None:
        if s.bridge:
            pts.append(f"host:{s.bridge}")

    def exit_to(s: Side) -> None:
        if s.veth:
            pts.append(f"host:{s.veth}")
        pts.append(f"{s.container}:{s.interface}")

    if flow.via == "loopback":
        pts.append(f"{flow.source}:lo")
    elif flow.via == "arp":
        assert src_side is not None
        enter_from(src_side)
        if dst_side is not None:
            exit_to(dst_side)
        else:
            l3(src_side)
    elif src_side is not None:
        enter_from(src_side)
        in_iface = src_side.l3
        if dst_side is not None and not flow.dnat and src_side.bridge and src_side.bridge == dst_side.bridge:
            bridged = True
            in_iface = out_iface = src_side.bridge_k
            exit_to(dst_side)
        elif dst_side is not None:
            routed = True
            l3(src_side)
            if dst_side.bridge != src_side.bridge or not dst_side.bridge:
                l3(dst_side)
            out_iface = dst_side.l3
            exit_to(dst_side)
        elif flow.via == "outside":
            routed = True
            l3(src_side)
            pts += [f"host:{up}", "wan:uplink"]
            out_iface = up_k
        else:  # to the host itself
            l3(src_side)
    elif flow.source == "wan":
        pts += ["wan:uplink", f"host:{up}"]
        in_iface = up_k
        if dst_side is not None:
            routed = True
            l3(dst_side)
            out_iface = dst_side.l3
            exit_to(dst_side)
    elif flow.source == "host":
        if dst_side is not None:
            l3(dst_side)
            out_iface = dst_side.l3
            exit_to(dst_side)
        elif flow.via == "outside":
            pts += [f"host:{up}", "wan:uplink"]
            out_iface = up_k
    seen: list[str] = []
    for p in pts:
        if p not in seen and _resolvable(lab, p):
            seen.append(p)
    return Route(tuple(seen), routed, bridged, in_iface, out_iface)


def _resolvable(lab: LabView, point: str) -> bool:
    try:
        lab.resolve_point(point)
    except Exception:  # noqa: BLE001 - a point this lab cannot name is left out of the path
        return False
    return True


# ----------------------------------------------------------------------------- the trace


def _describe(p: Packet) -> str:
    info = f" {p.info}" if p.info else ""
    return f"{p.flow}{info}"


def trace(route: Route, result: ProbeResult) -> tuple[Hop, ...]:
    """Each hop of the route, each way: seen or not, and the addresses there."""
    caps = {c.point: c for c in result.captures}
    hops: list[Hop] = []
    for point in route.points:
        c = caps.get(point)
        pkt = c.first("request") if c else None
        hops.append(Hop(point, "out", pkt is not None, _describe(pkt) if pkt else ("" if c and c.started else "no capture")))
    for point in reversed(route.points):
        c = caps.get(point)
        pkt = _reply(c) if c else None
        hops.append(Hop(point, "back", pkt is not None, _describe(pkt) if pkt else ("" if c and c.started else "no capture")))
    return tuple(hops)


def _reply(c: Capture) -> Packet | None:
    return c.first("reply") or c.first("error")


@dataclass(frozen=True)
class Break:
    """Where the packet stopped in one direction."""

    direction: str
    last_seen: Hop | None
    first_missing: Hop | None
    seen_again: Hop | None = None  # a later hop that saw it anyway: the packet went around the missing one

    def render(self) -> str:
        what = "the probe" if self.direction == "out" else "the reply"
        if self.first_missing is None and self.last_seen is not None:
            return f"{self.direction}: {what} was seen at every hop"
        if self.last_seen is None and self.first_missing is not None:
            return f"{self.direction}: {what} was not seen at any hop (first expected at {self.first_missing.point})"
        if self.last_seen is None or self.first_missing is None:
            return f"{self.direction}: no hop to watch"
        text = f"{self.direction}: {what} was last seen at {self.last_seen.point} ({self.last_seen.addresses}), first missing at {self.first_missing.point}"
        if self.seen_again is not None:
            text += f", yet seen again at {self.seen_again.point} ({self.seen_again.addresses}): it went around {self.first_missing.point}"
        return text


def breaks(hops: tuple[Hop, ...]) -> tuple[Break, Break]:
    def one(direction: str) -> Break:
        mine = [h for h in hops if h.direction == direction]
        last = None
        for h in mine:
            if h.seen:
                last = h
        if last is None:
            return Break(direction, None, mine[0] if mine else None)
        after = mine[mine.index(last) + 1 :]
        missing = next((h for h in after if not h.seen), None)
        # a hop seen after a missing one (the capture point is off the real path) does not move the break
        first_gap = next((h for h in mine if not h.seen), None)
        if first_gap is not None and mine.index(first_gap) < mine.index(last):
            prev = [h for h in mine[: mine.index(first_gap)] if h.seen]
            again = next((h for h in mine[mine.index(first_gap) :] if h.seen), None)
            return Break(direction, prev[-1] if prev else None, first_gap, again if prev else None)
        return Break(direction, last, missing)

    return one("out"), one("back")


def rewrites(hops: tuple[Hop, ...]) -> list[str]:
    """Address changes between consecutive hops where the packet was seen: NAT at work."""
    out = []
    for direction in ("out", "back"):
        seen = [h for h in hops if h.direction == direction and h.seen]
        for a, b in itertools.pairwise(seen):
            fa, fb = a.addresses.split(" ", 3)[:3], b.addresses.split(" ", 3)[:3]
            if fa != fb:
                out.append(f"{direction}: {' '.join(fa)} at {a.point} became {' '.join(fb)} at {b.point}")
    return out


__all__ = ["Break", "Flow", "LabView", "Route", "Side", "breaks", "discover_veth", "expected_route", "flow_of", "host_addresses", "rewrites", "side", "trace"]
