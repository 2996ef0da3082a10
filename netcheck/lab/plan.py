"""The plan: a pure function from a spec and the lab's kernel names to what the lab is made of.

Nothing here touches the kernel. The builder realises a plan; the diagnosis, the doctor and
the diagram read the same functions, so the rules and the flows a spec implies are worked out
in one place::

    >>> from netcheck import spec
    >>> from netcheck.naming import KernelNames
    >>> p = plan(spec.builtin("seed1"), KernelNames("nck7q0"))
    >>> p.bridges[0].kname, p.containers[0].netns
    ('nck7q0b0', 'nck7q0-netns0')
    >>> p.rules[0].render()
    "-t nat -A POSTROUTING -s 172.18.0.0/16 ! -o nck7q0b0 -m comment --comment 'netcheck nck7q0' -j MASQUERADE"
    >>> plan(spec.builtin("seed1-nft"), KernelNames("nck7q0")).installed[0].table
    'nck7q0_nat'
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from netcheck import expect as promise
from netcheck import spec
from netcheck.datapath.planned import (
    DEFAULT_ROUTE,
    DEFAULT_ROUTE6,
    DEFAULT_SYSCTLS,
    ECHO_PORT,
    LOOPBACK_ADDRESS,
    PLAN_TAG,
    BasePlan,
    BridgePlan,
    ContainerPlan,
    Plan,
    Rename,
    _address,
    base,
    bound_addresses,
    delivered,
    dnat_rule,
    masquerade_for,
    masquerade_rule,
    owned_routes,
    plan,
    planned,
    planned_plan,
    planned_ruleset,
    publish_rules,
    published_at,
    resolv_conf_text,
    ruleset_of,
    spec_masquerade,
    spec_rules,
    state,
)


@dataclass(frozen=True)
class Access:
    """One way in to a published port or a VIP that the spec promises: who sends, to what, and
    which container should answer on which port after the DNAT."""

    source: Literal["wan", "host"]
    src_addr: str
    dst_addr: str
    dport: int
    proto: str
    target: str
    target_addr: str | None
    target_port: int
    via: Literal["publish", "vip"]
    chain: str | None = None  # the VIP's chain


@dataclass(frozen=True)
class Reach:
    """An ICMP flow the spec promises: a container to its gateway, the outside, or a neighbour."""

    source: str
    src_addr: str
    dst_addr: str
    via: Literal["host", "outside", "direct"]
    target: str | None = None
    target_addr: str | None = None


# ----------------------------------------------------------------------------- flows


def accesses(t: spec.Topology) -> tuple[Access, ...]:
    """Every way in to a published port or a VIP: from the outside world and from the host."""
    senders = {"wan": str(t.wan.address.ip), "host": str(t.host.address.ip)}
    out: list[Access] = []
    for p in t.publishes:
        for src in _ways(p.from_outside and not p.loopback, p.from_host):
            out.append(Access(src, senders[src], str(bound_addresses(t, p)[0]), p.host_port, p.protocol, p.container, _address(t, p.container), p.port, "publish"))
    for v in t.vips:
        for src in _ways(v.from_outside, v.from_host):
            out.append(Access(src, senders[src], str(v.address), v.port, v.protocol, v.container, _address(t, v.container), v.target_port, "vip", v.chain))
    return tuple(out)


# ----------------------------------------------------------------------------- the published-port matrix

PortPath = Literal["outside", "host", "hairpin", "itself"]


@dataclass(frozen=True)
class PortCell:
    """One cell of the published-port matrix: a published port (its protocol, a port or the last of its range, its bind) reached by one access path.

    ``expected`` comes from netcheck.expect; ``saw`` is the source the service should see, and ``why`` says both in words."""

    publish: int  # its index in the spec's [[publish]]
    protocol: str
    ports: Literal["single", "range"]
    bind: str  # "uplink" (none given), "wildcard", or the address
    family: int
    path: PortPath
    source: str  # who sends: wan, host, or a container
    dst: IPv4Address | IPv6Address
    port: int
    target: str
    target_addr: str | None
    target_port: int
    expected: bool | None  # None: observed, not promised (another tool's setup: its userland proxy or hairpin settings are its own)
    saw: str | None  # the source address the service should see (None: it should see nothing)
    why: str

    @property
    def label(self) -> str:
        via = {"outside": "from outside", "host": "from the host", "hairpin": f"hairpin from {self.source}", "itself": f"{self.target} to its own published port"}[self.path]
        return f"{self.protocol} {self.ports} bind={self.bind} {via}"


def port_matrix(t: spec.Topology, family: spec.Family | None = None) -> tuple[PortCell, ...]:
    """Every published port of ``t`` x {its first port, the last of its range} x every access path: outside (wan), the host,
    each other container (hairpin), the container itself; on every family the topology declares (or on ``family`` alone).
    Generic over what the spec declares: a family's cells appear where the spec publishes on it."""
    out: list[PortCell] = []
    for fam in t.families if family is None else (family,):
        for i, p in enumerate(t.publishes):
            out += _port_cells(t, i, p, fam)
    return tuple(out)


def _port_cells(t: spec.Topology, i: int, p: spec.Publish, family: spec.Family) -> list[PortCell]:
    """One published port's cells on one family (none where it is not published on that family)."""
    c = t.container(p.container)
    own, up, wan = c.at(family), t.host.at(family), t.wan.at(family)
    if own is None or up is None or wan is None or not bound_addresses(t, p, family) or not promise.published(t, p, family):
        return []
    bind = "uplink" if p.host_address is None else "wildcard" if p.wildcard else str(p.host_address)
    # Outside and the containers address the host's uplink address of the family (a port bound to 127.0.0.1: there, where it must not answer).
    outside_dst = up.ip if p.host_address is None or p.wildcard or p.loopback else p.host_address
    host_dst = p.host_address if p.host_address is not None and p.loopback else outside_dst
    side = t.bridge(c.bridge).at(family) if c.bridge else c.host_address if family == 4 else None
    gateway = side.ip if side is not None else None
    port = p.host_ports[-1]
    kind: Literal["single", "range"] = "range" if p.size > 1 else "single"
    to = f"[{own.ip}]" if family == 6 else str(own.ip)
    rule = f"DNAT {'per port of the range, ' if p.size > 1 else ''}{port} -> {to}:{p.container_port(port)}"
    nat = "ip6tables nat" if family == 6 else "nat"
    paths: list[tuple[PortPath, str, IPv4Address | IPv6Address, bool, str | None, str]] = []
    ok = promise.published_from_outside(t, p, family)
    paths.append(("outside", "wan", outside_dst, ok, str(wan.ip),
                  f"{nat} PREROUTING {rule}, routed from the uplink" if ok else _refused(p, "the outside world", "PREROUTING")))
    ok = promise.published_from_host(t, p, family)
    saw_host = str(gateway) if p.loopback else str(up.ip)
    paths.append(("host", "host", host_dst, ok, saw_host,
                  (f"{nat} OUTPUT {rule}" + (f"; route_localnet and MASQUERADE 127.0.0.0/8: the service sees {gateway}" if p.loopback else ""))
                  if ok else _refused(p, "the host", "OUTPUT")))
    for o in t.containers:
        theirs_addr = o.at(family)
        if o.name == c.name or theirs_addr is None:
            continue
        ok = promise.published_from_container(t, p, o.name, family)
        saw = str(gateway) if promise.masqueraded(t, o.name, out=c.bridge or c.host_veth, family=family) else str(theirs_addr.ip)
        paths.append(("hairpin", o.name, outside_dst, ok, saw, f"{nat} PREROUTING {rule}, back out by {c.bridge or c.host_veth}" if ok else _refused(p, o.name, "PREROUTING")))
    ok = promise.published_to_itself(t, p, family)
    paths.append(("itself", c.name, outside_dst, ok, str(gateway), f"{nat} PREROUTING {rule}, then the hairpin MASQUERADE -s {own.ip} -d {own.ip}: "
                  f"the service sees {gateway}" if ok else _refused(p, c.name, "PREROUTING")))
    out: list[PortCell] = []
    for path, src, dst, ok, seen, why in paths:
        # Where another tool made the setup, a container's way in that the spec does not promise is observed only: a
        # userland proxy (docker-proxy) may carry it where netcheck's own rules would not.
        # So is the source a container's way in shows the service: the tool's own hairpin MASQUERADE (CNI portmap's, netavark's) is not the spec's.
        theirs = t.setup.external and path in ("hairpin", "itself")
        promised: bool | None = None if theirs and not ok else ok
        shown = why if promised is not None else f"observed: {why}, unless the tool's userland proxy carries it"
        out.append(PortCell(i, p.protocol, kind, bind, family, path, src, dst, port, c.name, str(own.ip), p.container_port(port), promised,
                            seen if ok and not theirs else None, shown))
    return out


def _refused(p: spec.Publish, who: str, chain: str) -> str:
    """Why a cell is expected blocked, in words."""
    if p.loopback and chain == "PREROUTING":
        return f"bound to {p.host_address}: the host's alone, {who} cannot address it"
    if chain == "PREROUTING" and not p.from_outside:
        return "from_outside = false: no PREROUTING DNAT"
    if chain == "OUTPUT" and not p.from_host:
        return "from_host = false: no OUTPUT DNAT"
    if chain == "OUTPUT":
        return "bound to 127.0.0.1 without route_localnet = 1: the kernel keeps the loopback source on lo"
    if who == p.container and not p.hairpin:
        return "no hairpin MASQUERADE: the request comes back with the container's own address as its source, which it drops as a martian"
    return "the spec's routing (ip_forward, FORWARD, br_netfilter) does not carry the DNATed request and its reply"


def _ways(from_outside: bool, from_host: bool) -> list[Literal["wan", "host"]]:
    ways: list[Literal["wan", "host"]] = []
    if from_outside:
        ways.append("wan")
    if from_host:
        ways.append("host")
    return ways


def reaches(t: spec.Topology) -> tuple[Reach, ...]:
    """The ICMP flows the spec promises, as the suites would probe them: each container to its
    gateway and to the outside world, and to one neighbour per network it should reach (not
    every pair: a fault between two networks shows on any pair of them), as the datapath model traces them on the planned state."""
    out: list[Reach] = []
    for i, c in enumerate(t.containers):
        if c.address is None:
            continue
        a = str(c.address.ip)
        if c.gateway is not None:
            out.append(Reach(c.name, a, str(c.gateway), "host"))
        if t.wan.remote and delivered(t, c.name, t.wan.remote[0].ip):
            out.append(Reach(c.name, a, str(t.wan.remote[0].ip), "outside"))
        networks: set[str] = set()
        for o in t.containers[i + 1 :] + t.containers[:i]:
            net = o.bridge or f"veth:{o.name}"
            if net in networks or o.address is None or not delivered(t, c.name, o.address.ip):
                continue
            networks.add(net)
            out.append(Reach(c.name, a, str(o.address.ip), "direct", o.name, str(o.address.ip)))
    return tuple(out)


__all__ = [
    "DEFAULT_ROUTE", "ECHO_PORT", "Access", "BasePlan", "BridgePlan", "base", "owned_routes", "ContainerPlan", "Plan", "Reach", "accesses", "dnat_rule", "masquerade_for", "masquerade_rule",
    "plan", "reaches", "resolv_conf_text", "spec_masquerade", "spec_rules", "bound_addresses", "publish_rules", "published_at", "PortCell", "PortPath", "port_matrix",
    "PLAN_TAG", "delivered", "planned", "planned_plan", "planned_ruleset", "ruleset_of", "state", "DEFAULT_ROUTE6", "DEFAULT_SYSCTLS", "LOOPBACK_ADDRESS", "Rename",
]
