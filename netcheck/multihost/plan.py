"""The join's plan: a pure function from a multi-host spec and the labs' tags to what joins them.

Nothing here touches the kernel; the builder realises it, the diagnosis compares the kernel to it::

    >>> from netcheck.multihost import spec as multi_spec
    >>> p = plan(multi_spec.builtin("two-hosts-vxlan"), "nculx0", {"a": "ncaaa0", "b": "ncbbb0"})
    >>> a = p.hosts[0]
    >>> a.uplink, a.vxlan, [(str(r.dst), str(r.via), r.dev) for r in a.routes]
    ('ncaaa0ul', 'ncaaa0vx', [('10.244.2.0/24', '10.244.0.2', 'ncaaa0vx'), ('203.0.113.3/32', '10.244.0.2', 'ncaaa0vx')])
    >>> [(f.mac, str(f.dst)) for f in a.fdb], [(str(n.ip), n.mac) for n in a.neighbours]
    ([('02:6e:63:00:00:02', '198.51.100.130')], [('10.244.0.2', '02:6e:63:00:00:02')])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from netcheck.multihost.spec import MultiTopology

ALL_ZEROS = "00:00:00:00:00:00"  # the fdb entry that floods (head-end replication) to a remote VTEP


@dataclass(frozen=True)
class RoutePlan:
    dst: IPv4Network
    via: IPv4Address
    dev: str  # kernel name
    host: str  # the remote host it leads to


@dataclass(frozen=True)
class FdbPlan:
    mac: str
    dst: IPv4Address
    host: str


@dataclass(frozen=True)
class NeighbourPlan:
    ip: IPv4Address
    mac: str


@dataclass(frozen=True)
class HostJoin:
    """One host's side of the join, in kernel names."""

    name: str
    host_ns: str
    uplink: str  # the host's link into the underlay
    port: str  # the underlay's end of it (a port of the underlay bridge)
    underlay: IPv4Interface
    vxlan: str | None
    vtep: IPv4Interface | None
    mac: str | None
    routes: tuple[RoutePlan, ...]
    fdb: tuple[FdbPlan, ...]
    neighbours: tuple[NeighbourPlan, ...]


@dataclass(frozen=True)
class JoinPlan:
    topology: MultiTopology
    tag: str
    underlay_ns: str
    bridge: str
    hosts: tuple[HostJoin, ...]

    def host(self, name: str) -> HostJoin:
        return next(h for h in self.hosts if h.name == name)


def vtep_mac(index: int) -> str:
    """Host ``index``'s VXLAN device MAC (locally administered, as flannel sets one per node)."""
    return f"02:6e:63:00:{index >> 8 & 0xFF:02x}:{(index + 1) & 0xFF:02x}"


def plan(t: MultiTopology, tag: str, host_tags: Mapping[str, str]) -> JoinPlan:
    """The join of ``t`` with the multi-host lab's ``tag`` and each host lab's tag."""
    vx = t.join.kind == "vxlan"
    hosts = []
    for i, h in enumerate(t.hosts):
        ht = host_tags[h.name]
        uplink, vxlan = f"{ht}ul", f"{ht}vx" if vx else None
        routes: list[RoutePlan] = []
        fdb: list[FdbPlan] = []
        neighbours: list[NeighbourPlan] = []
        for j, o in enumerate(t.hosts):
            if j == i:
                continue
            via = t.vtep(j).ip if vx else o.underlay.ip
            dev = vxlan or uplink
            for dst in (*o.subnets, IPv4Network(f"{o.public}/32")):
                routes.append(RoutePlan(dst, via, dev, o.name))
            if vx and t.join.fdb == "unicast":
                fdb.append(FdbPlan(vtep_mac(j), o.underlay.ip, o.name))
                neighbours.append(NeighbourPlan(t.vtep(j).ip, vtep_mac(j)))
            elif vx:
                fdb.append(FdbPlan(ALL_ZEROS, o.underlay.ip, o.name))
        hosts.append(HostJoin(h.name, f"{ht}-host", uplink, f"{tag}p{i}", h.underlay, vxlan, t.vtep(i) if vx else None, vtep_mac(i) if vx else None,
                              tuple(routes), tuple(fdb), tuple(neighbours)))
    return JoinPlan(t, tag, f"{tag}-ul", f"{tag}ul", tuple(hosts))


__all__ = ["ALL_ZEROS", "FdbPlan", "HostJoin", "JoinPlan", "NeighbourPlan", "RoutePlan", "plan", "vtep_mac"]
