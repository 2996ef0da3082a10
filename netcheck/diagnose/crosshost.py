"""Diagnosis across hosts: the kernel's state of every host and of the underlay, against the join's plan.

``diagnose(multi, src, dst, recheck)`` runs when a cross-host test fails. ``gather`` reads, once, what
the checks look at on the hosts the flow crosses (routes, the VXLAN device's VNI, port and fdb, MTUs
along the path, rules, rp_filter) into a ``CrossRead``; each check (``judge``) is a pure function of
it and names a cause when it differs from what the spec declares; the findings come ranked, the one
that drops the packet first. A ``CrossRead`` is a recording (netcheck.diagnose.recording's codec): it
replays without root. With ``recheck`` (the failed check repeated: None when it passes, else what
failed), the fixes of the top findings are applied to the lab, re-checked and undone, as for a
single-host lab (``fixes.try_fixes``). The causes are in ``causes.py``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from netcheck.diagnose import fixes as fixing
from netcheck.evidence import AddRoute, DeleteRule, Diagnosis, Finding, Fix, FlushConntrack, SetFdb, SetMtu, Sysctl
from netcheck.kernel.netns import RouteEntry
from netcheck.kernel.xtables import XRule, read_legacy
from netcheck.multihost.plan import HostJoin, JoinPlan
from netcheck.multihost.spec import MultiTopology

if TYPE_CHECKING:
    from netcheck.kernel.netns import Netns
    from netcheck.multihost.lab import MultiLab

AF_BRIDGE = 7


@dataclass(frozen=True)
class Vxlan:
    """A host's VXLAN device, as read."""

    vni: int
    port: int
    mtu: int
    fdb: tuple[tuple[str, str], ...]  # (MAC, remote dst) of each of its fdb entries


@dataclass(frozen=True)
class HostRead:
    """What the checks read of one host's namespace."""

    netns: str  # its kernel name (for the commands to paste)
    uplink: str  # the kernel name of its single-host uplink (a masquerade out of it is the host's own)
    routes: tuple[RouteEntry, ...] = ()
    route_gets: dict[str, RouteEntry | str] = field(default_factory=dict)  # address -> the kernel's lookup
    vxlan: Vxlan | None = None  # None: no such device (or the join is routed)
    mtus: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str | None] = field(default_factory=dict)
    filter: tuple[XRule, ...] = ()  # legacy iptables' filter and nat rules
    nat: tuple[XRule, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)  # check -> why its reads failed


@dataclass(frozen=True)
class CrossRead:
    """A cross-host diagnosis's inputs: the plan, and what was read on the two hosts and the underlay."""

    topology: MultiTopology
    plan: JoinPlan
    src: str
    dst: str
    hosts: dict[str, HostRead]
    underlay: str  # the underlay namespace's kernel name
    underlay_mtus: dict[str, int] = field(default_factory=dict)
    about: dict[str, str] = field(default_factory=dict)  # free labels: the fault it was recorded for


def diagnose(multi: MultiLab, src: str, dst: str, recheck: Callable[[], str | None] | None = None) -> Diagnosis:
    """Why traffic between host ``src``'s containers and host ``dst``'s fails (both ways are read); with ``recheck``, the fixes tried."""
    found = judge(gather(multi, src, dst))
    if recheck is not None and multi.ledger is not None and any(f.fixes for f in found.findings):
        return Diagnosis(findings=tuple(fixing.try_fixes(multi, list(found.findings), recheck)))
    return found


def judge(r: CrossRead) -> Diagnosis:
    """Every check on what was read: a pure function of it."""
    findings: list[Finding] = []
    for check in CHECKS:
        failed = next((e for h in (r.src, r.dst) if (e := r.hosts[h].errors.get(check.__name__))), None)
        try:
            if failed is not None:
                raise RuntimeError(failed)
            findings += check(r)
        except Exception as exc:  # noqa: BLE001 - a check that fails is shown as such, the others still run
            findings.append(Finding("rule_failed", r.src, f"the cross-host check {check.__name__} failed: {exc}", "report this as a netcheck bug", score=1))
    findings.sort(key=lambda f: -f.score)
    return Diagnosis(findings=tuple(findings))


def gather(multi: MultiLab, src: str, dst: str) -> CrossRead:
    """Read, once, what the checks look at on hosts ``src`` and ``dst`` and on the underlay."""
    assert multi.plan is not None and multi.underlay is not None
    hosts = {src: _read_host(multi, src, dst), dst: _read_host(multi, dst, src)}
    return CrossRead(multi.topology, multi.plan, src, dst, hosts, multi.underlay.name or "", {link.name: link.mtu for link in multi.underlay.links()})


def _read_host(multi: MultiLab, name: str, other: str) -> HostRead:
    assert multi.plan is not None
    t, here, ns = multi.topology, multi.plan.host(name), multi.hosts[name].host
    errors: dict[str, str] = {}

    def read(check: str, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the check that needs it says it failed
            errors.setdefault(check, str(exc))
            return default

    def route_get(a: IPv4Address) -> Callable[[], RouteEntry | str]:
        return lambda: ns.route_get(a)

    def sysctl(key: str) -> Callable[[], str | None]:
        return lambda: ns.sysctl(key)

    asked = [want.dst.network_address + 1 for want in here.routes if want.host == other]
    asked += [IPv4Address(int(subnet.network_address) + 1) for subnet in t.host(other).subnets]
    arrive = here.vxlan or here.uplink
    device = here.vxlan
    return HostRead(
        ns.name or "", read("rules", lambda: multi.hosts[name].kname(t.host(name).topology.host.uplink), ""),
        tuple(read("routes", ns.routes, [])),
        {str(a): read("routes", route_get(a), "lookup failed") for a in dict.fromkeys(asked)},
        read("vxlan", lambda: _vxlan_info(ns, device), None) if t.join.kind == "vxlan" and device else None,
        {link.name: link.mtu for link in read("mtu", ns.links, [])},
        {f"net.ipv4.conf.{k}.rp_filter": read("rp_filter", sysctl(f"net.ipv4.conf.{k}.rp_filter"), None) for k in ("all", arrive)},
        tuple(read("rules", lambda: _rules(ns, "filter"), [])), tuple(read("rules", lambda: _rules(ns, "nat"), [])), errors,
    )


def _pair(r: CrossRead) -> Iterator[tuple[HostJoin, HostJoin]]:
    a, b = r.plan.host(r.src), r.plan.host(r.dst)
    yield a, b
    yield b, a


def _fix_ns(r: CrossRead, host: str) -> str:
    return f"ip netns exec {r.hosts[host].netns}"


def _forget_flows(c: CrossRead, host: str) -> tuple[FlushConntrack, ...]:
    """A fix's second half: forget the host's containers' conntrack entries (a flow keeps the NAT of its first packet:
    masqueraded out of the uplink while a route was missing, or between the hosts)."""
    return tuple(FlushConntrack(f"{host}/host", str(x.address.ip)) for x in c.topology.host(host).topology.containers if x.address is not None)


# ----------------------------------------------------------------------------- routes


def routes(c: CrossRead) -> list[Finding]:
    out = []
    for here, there in _pair(c):
        h = c.hosts[here.name]
        table = {r.dst: r for r in h.routes}
        for want in (r for r in here.routes if r.host == there.name):
            got = table.get(want.dst)
            fix = f"{_fix_ns(c, here.name)} ip route replace {want.dst} via {want.via} dev {want.dev}"
            # and forget the flows NATed out of the uplink meanwhile: conntrack keeps a flow's first NAT decision
            value: tuple[Fix, ...] = (AddRoute(f"{here.name}/host", str(want.dst), str(want.via), dev=want.dev, replace=got is not None), *_forget_flows(c, here.name))
            if got is None:
                seen = h.route_gets.get(str(want.dst.network_address + 1), "lookup failed")
                leaves = f"it leaves by {seen.interface} via {seen.gateway}" if not isinstance(seen, str) else f"the lookup fails: {seen}"
                out.append(Finding("cross_route_missing", f"{here.name}/host",
                                   f"{here.name}/host: no route to {there.name}'s {want.dst} (via {want.via} dev {want.dev}): {leaves}", fix,
                                   evidence=(f"{here.name}/host routes: " + ", ".join(sorted(str(d) for d in table)),), score=85, fixes=value))
            elif got.gateway != want.via or got.interface != want.dev:
                out.append(Finding("cross_route_wrong", f"{here.name}/host",
                                   f"{here.name}/host: routes {there.name}'s {want.dst} via {got.gateway} dev {got.interface}, not via {want.via} dev {want.dev} "
                                   f"({there.name}'s {'VTEP' if here.vxlan else 'underlay address'})", fix, score=80, fixes=value))
    return out


# ----------------------------------------------------------------------------- the VXLAN device


def _vxlan_info(ns: Netns, name: str) -> Vxlan | None:
    def do(ipr: Any) -> dict[str, Any] | None:
        found = ipr.link("get", ifname=name)
        if not found:
            return None
        data = found[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        index = found[0]["index"]
        fdb = [(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST")) for m in ipr.get_neighbours(family=AF_BRIDGE) if m["ifindex"] == index]
        return {"vni": data.get_attr("IFLA_VXLAN_ID"), "port": data.get_attr("IFLA_VXLAN_PORT"), "mtu": found[0].get_attr("IFLA_MTU"), "fdb": fdb}

    result: dict[str, Any] | None = ns.netlink(do)
    if result is None:
        return None
    return Vxlan(int(result["vni"]), int(result["port"]), int(result["mtu"]), tuple((str(mac), str(dst)) for mac, dst in result["fdb"]))


def vxlan(c: CrossRead) -> list[Finding]:
    j = c.topology.join
    if j.kind != "vxlan":
        return []
    out = []
    for here, there in _pair(c):
        assert here.vxlan is not None
        info = c.hosts[here.name].vxlan
        where = f"{here.name}/host"
        if info is None:
            out.append(Finding("vxlan_vni_mismatch", where, f"{where}: no VXLAN device {here.vxlan}", "rebuild the lab (netcheck builds the device)", score=90))
            continue
        remake = (f"{_fix_ns(c, here.name)} ip link del {here.vxlan}; then recreate it: ip link add {here.vxlan} type vxlan id {j.vni} dstport {j.port} "
                  f"local {here.underlay.ip} dev {here.uplink}{' nolearning' if j.fdb == 'unicast' else ''}")
        if info.vni != j.vni:
            out.append(Finding("vxlan_vni_mismatch", where, f"{where}: {here.vxlan} has VNI {info.vni}, the spec (and {there.name}) {j.vni}: "
                               f"each side drops the other's datagrams as another network's", remake, score=90))
        if info.port != j.port:
            out.append(Finding("vxlan_port_mismatch", where, f"{where}: {here.vxlan} uses UDP port {info.port}, the spec (and {there.name}) {j.port}: "
                               f"what {there.name} sends to {j.port} finds no VXLAN socket on {here.name}", remake, score=90))
        for want in (f for f in here.fdb if f.host == there.name):
            dsts = [d for mac, d in info.fdb if mac == want.mac]
            fix = f"{_fix_ns(c, here.name)} bridge fdb replace {want.mac} dev {here.vxlan} dst {want.dst}"
            fdb_fix = (SetFdb(where, here.vxlan, want.mac, str(want.dst)),)
            if not dsts:
                out.append(Finding("vxlan_fdb_missing", where, f"{where}: {here.vxlan} has no fdb entry for {there.name}'s VTEP {want.mac} (dst {want.dst}): "
                                   f"it does not know where to send {there.name}'s frames", fix, score=88, fixes=fdb_fix))
            elif str(want.dst) not in dsts:
                out.append(Finding("vxlan_fdb_wrong", where, f"{where}: {here.vxlan} sends {there.name}'s VTEP {want.mac} to {', '.join(dsts)}, "
                                   f"not to {there.name}'s underlay address {want.dst}", fix, score=88, fixes=fdb_fix))
    return out


# ----------------------------------------------------------------------------- MTU along the path


def mtu(c: CrossRead) -> list[Finding]:
    t = c.topology
    need = t.join.mtu + 50 if t.join.kind == "vxlan" else t.path_mtu
    mtus = c.underlay_mtus
    out = []
    for name in (c.src, c.dst):
        hj = c.plan.host(name)
        host_mtus = c.hosts[name].mtus
        for where, link, got in ((f"underlay (port toward {name})", hj.port, mtus.get(hj.port)), (f"{name}/host", hj.uplink, host_mtus.get(hj.uplink))):
            if got is not None and got < need:
                netns = c.underlay if where.startswith("underlay") else c.hosts[name].netns
                out.append(Finding("mtu_black_hole", where,
                                   f"{where}: {link} has MTU {got}, below the {need} bytes the {'overlay (MTU ' + str(t.join.mtu) + ' + 50 of VXLAN)' if t.join.kind == 'vxlan' else 'path MTU'} "
                                   f"needs: larger packets are dropped there and no fragmentation-needed comes back (the MTU black hole: small pings pass, big transfers stall)",
                                   f"ip netns exec {netns} ip link set {link} mtu {need} (or lower the overlay MTU to {got - 50 if t.join.kind == 'vxlan' else got})", score=75,
                                   fixes=(SetMtu("underlay" if where.startswith("underlay") else where, link, need),)))
        if hj.vxlan is not None and host_mtus.get(hj.vxlan, 0) > t.join.mtu:
            out.append(Finding("mtu_black_hole", f"{name}/host", f"{name}/host: {hj.vxlan} has MTU {host_mtus[hj.vxlan]}, above the declared {t.join.mtu}",
                               f"{_fix_ns(c, name)} ip link set {hj.vxlan} mtu {t.join.mtu}", score=75, fixes=(SetMtu(f"{name}/host", hj.vxlan, t.join.mtu),)))
    return out


# ----------------------------------------------------------------------------- rules


def _rules(ns: Netns, table: str) -> list[XRule]:
    return [r for c in read_legacy(ns, (table,)) for r in c.rules]


def _covers(net: str | None, subnet: IPv4Network) -> bool:
    if net is None:
        return True
    if net.startswith("!"):
        return False
    return subnet.subnet_of(IPv4Network(net, strict=False))


def rules(c: CrossRead) -> list[Finding]:
    t = c.topology
    out = []
    for here, there in _pair(c):
        h = c.hosts[here.name]
        where = f"{here.name}/host"
        mine = t.host(here.name)
        uplink = h.uplink
        for r in h.filter:
            if r.target not in ("DROP", "REJECT"):
                continue
            if r.protocol == "icmp" and r.chain in ("OUTPUT", "FORWARD") and any(_covers(r.dst, n) for n in mine.subnets):
                out.append(Finding("frag_needed_dropped", where, f"{where}: a {r.chain} rule drops ICMP to its containers, fragmentation-needed included: "
                                   f"a DF packet too big for the path is dropped and its sender never learns the path MTU (iptables {shlex.join(r.argv())})",
                                   f"{_fix_ns(c, here.name)} {shlex.join(['iptables-legacy', *r.argv('-D')])}  (let ICMP type 3 code 4 through)", score=70,
                                   fixes=(DeleteRule(where, "legacy", r),)))
            if t.join.kind == "vxlan" and r.protocol == "udp" and r.dport == t.join.port and r.chain in ("INPUT", "FORWARD"):
                out.append(Finding("underlay_udp_blocked", where, f"{where}: a {r.chain} rule drops UDP {t.join.port}, the VXLAN datagrams from {there.name} "
                                   f"(iptables {shlex.join(r.argv())})", f"{_fix_ns(c, here.name)} {shlex.join(['iptables-legacy', *r.argv('-D')])}", score=85,
                                   fixes=(DeleteRule(where, "legacy", r),)))
        for r in h.nat:
            if r.chain != "POSTROUTING" or r.target not in ("MASQUERADE", "SNAT"):
                continue
            if not any(_covers(r.src, n) for n in mine.subnets):
                continue
            out_if = r.out_interface
            if out_if == uplink or (out_if is not None and out_if.startswith("!") and out_if[1:] in (here.uplink, here.vxlan)):
                continue
            out.append(Finding("masquerade_between_hosts", where, f"{where}: a {r.target} rule also rewrites its containers' packets to {there.name} "
                               f"(out {out_if or 'any interface'}): {there.name}'s containers see {where}'s address, not the container's",
                               f"{_fix_ns(c, here.name)} {shlex.join(['iptables-legacy', *r.argv('-D')])}  (masquerade only out the uplink: -o {uplink})", score=70,
                               fixes=(DeleteRule(where, "legacy", r), *_forget_flows(c, here.name))))
    return out


# ----------------------------------------------------------------------------- rp_filter


def rp_filter(c: CrossRead) -> list[Finding]:
    out = []
    t = c.topology
    for here, there in _pair(c):
        h = c.hosts[here.name]
        arrive = here.vxlan or here.uplink
        values = {k: int(h.sysctls.get(f"net.ipv4.conf.{k}.rp_filter") or 0) for k in ("all", arrive)}
        if max(values.values()) != 1:
            continue
        for subnet in t.host(there.name).subnets:
            back = h.route_gets.get(str(IPv4Address(int(subnet.network_address) + 1)), "lookup failed")
            via = back.interface if not isinstance(back, str) else None
            if via != arrive:
                where = f"{here.name}/host"
                out.append(Finding("rp_filter_decap", where,
                                   f"{where}: strict rp_filter (all={values['all']}, {arrive}={values[arrive]}) drops the decapsulated packets from {there.name}'s {subnet}: "
                                   f"they arrive on {arrive}, but the route back to {subnet} leaves by {via or back}",
                                   f"{_fix_ns(c, here.name)} sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{arrive}.rp_filter=2 "
                                   f"(or route {subnet} back through {arrive})", score=95,
                                   fixes=(Sysctl(where, "net.ipv4.conf.all.rp_filter", "2"), Sysctl(where, f"net.ipv4.conf.{arrive}.rp_filter", "2"))))
    return out


CHECKS: tuple[Callable[[CrossRead], list[Finding]], ...] = (routes, vxlan, mtu, rules, rp_filter)

__all__ = ["CHECKS", "CrossRead", "HostRead", "Vxlan", "diagnose", "gather", "judge"]
