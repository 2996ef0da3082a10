"""Diagnosis across hosts: the kernel's state of every host and of the underlay, against the join's plan.

``diagnose(multi, src, dst, recheck)`` runs when a cross-host test fails. Each check reads one thing
(routes, the VXLAN device's VNI, port and fdb, MTUs along the path, rules, rp_filter) on the
hosts the flow crosses and names a cause when it differs from what the spec declares; the
findings come ranked, the one that drops the packet first. The causes are in ``causes.py``.
With ``recheck`` (the failed check repeated: None when it passes, else what failed), the fixes of
the top findings are applied to the lab, re-checked and undone, as for a single-host lab
(``fixes.try_fixes``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from netcheck.diagnose import fixes as F
from netcheck.evidence import AddRoute, DeleteRule, Diagnosis, Finding, Fix, FlushConntrack, SetFdb, SetMtu, Sysctl
from netcheck.kernel.xtables import XRule, read_legacy

if TYPE_CHECKING:
    from netcheck.kernel.netns import Netns
    from netcheck.multihost.lab import MultiLab
    from netcheck.multihost.plan import HostJoin

AF_BRIDGE = 7


def diagnose(multi: MultiLab, src: str, dst: str, recheck: Callable[[], str | None] | None = None) -> Diagnosis:
    """Why traffic between host ``src``'s containers and host ``dst``'s fails (both ways are read); with ``recheck``, the fixes tried."""
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings += check(multi, src, dst)
        except Exception as exc:  # noqa: BLE001 - a check that fails is shown as such, the others still run
            findings.append(Finding("rule_failed", src, f"the cross-host check {check.__name__} failed: {exc}", "report this as a netcheck bug", score=1))
    findings.sort(key=lambda f: -f.score)
    if recheck is not None and multi.ledger is not None and any(f.fixes for f in findings):
        findings = F.try_fixes(multi, findings, recheck)
    return Diagnosis(findings=tuple(findings))


def _pair(multi: MultiLab, src: str, dst: str) -> Iterator[tuple[HostJoin, HostJoin]]:
    assert multi.plan is not None
    a, b = multi.plan.host(src), multi.plan.host(dst)
    yield a, b
    yield b, a


def _ns(multi: MultiLab, host: str) -> Netns:
    return multi.hosts[host].host


def _fix_ns(multi: MultiLab, host: str) -> str:
    return f"ip netns exec {_ns(multi, host).name}"


def _forget_flows(multi: MultiLab, host: str) -> tuple[FlushConntrack, ...]:
    """A fix's second half: forget the host's containers' conntrack entries (a flow keeps the NAT of its first packet:
    masqueraded out of the uplink while a route was missing, or between the hosts)."""
    return tuple(FlushConntrack(f"{host}/host", str(c.address.ip)) for c in multi.topology.host(host).topology.containers if c.address is not None)


# ----------------------------------------------------------------------------- routes


def routes(multi: MultiLab, src: str, dst: str) -> list[Finding]:
    out = []
    for here, there in _pair(multi, src, dst):
        ns = _ns(multi, here.name)
        table = {r.dst: r for r in ns.routes()}
        for want in (r for r in here.routes if r.host == there.name):
            got = table.get(want.dst)
            fix = f"{_fix_ns(multi, here.name)} ip route replace {want.dst} via {want.via} dev {want.dev}"
            # and forget the flows NATed out of the uplink meanwhile: conntrack keeps a flow's first NAT decision
            value: tuple[Fix, ...] = (AddRoute(f"{here.name}/host", str(want.dst), str(want.via), dev=want.dev, replace=got is not None), *_forget_flows(multi, here.name))
            if got is None:
                seen = ns.route_get(want.dst.network_address + 1)
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


def _vxlan_info(ns: Netns, name: str) -> dict[str, Any] | None:
    def do(ipr: Any) -> dict[str, Any] | None:
        found = ipr.link("get", ifname=name)
        if not found:
            return None
        data = found[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        index = found[0]["index"]
        fdb = [(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST")) for m in ipr.get_neighbours(family=AF_BRIDGE) if m["ifindex"] == index]
        return {"vni": data.get_attr("IFLA_VXLAN_ID"), "port": data.get_attr("IFLA_VXLAN_PORT"), "mtu": found[0].get_attr("IFLA_MTU"), "fdb": fdb}

    result: dict[str, Any] | None = ns.netlink(do)
    return result


def vxlan(multi: MultiLab, src: str, dst: str) -> list[Finding]:
    j = multi.topology.join
    if j.kind != "vxlan":
        return []
    out = []
    for here, there in _pair(multi, src, dst):
        assert here.vxlan is not None
        info = _vxlan_info(_ns(multi, here.name), here.vxlan)
        where = f"{here.name}/host"
        if info is None:
            out.append(Finding("vxlan_vni_mismatch", where, f"{where}: no VXLAN device {here.vxlan}", "rebuild the lab (netcheck builds the device)", score=90))
            continue
        remake = (f"{_fix_ns(multi, here.name)} ip link del {here.vxlan}; then recreate it: ip link add {here.vxlan} type vxlan id {j.vni} dstport {j.port} "
                  f"local {here.underlay.ip} dev {here.uplink}{' nolearning' if j.fdb == 'unicast' else ''}")
        if info["vni"] != j.vni:
            out.append(Finding("vxlan_vni_mismatch", where, f"{where}: {here.vxlan} has VNI {info['vni']}, the spec (and {there.name}) {j.vni}: "
                               f"each side drops the other's datagrams as another network's", remake, score=90))
        if info["port"] != j.port:
            out.append(Finding("vxlan_port_mismatch", where, f"{where}: {here.vxlan} uses UDP port {info['port']}, the spec (and {there.name}) {j.port}: "
                               f"what {there.name} sends to {j.port} finds no VXLAN socket on {here.name}", remake, score=90))
        fdb: list[tuple[str, str]] = info["fdb"]
        for want in (f for f in here.fdb if f.host == there.name):
            dsts = [d for mac, d in fdb if mac == want.mac]
            fix = f"{_fix_ns(multi, here.name)} bridge fdb replace {want.mac} dev {here.vxlan} dst {want.dst}"
            fdb_fix = (SetFdb(where, here.vxlan, want.mac, str(want.dst)),)
            if not dsts:
                out.append(Finding("vxlan_fdb_missing", where, f"{where}: {here.vxlan} has no fdb entry for {there.name}'s VTEP {want.mac} (dst {want.dst}): "
                                   f"it does not know where to send {there.name}'s frames", fix, score=88, fixes=fdb_fix))
            elif str(want.dst) not in dsts:
                out.append(Finding("vxlan_fdb_wrong", where, f"{where}: {here.vxlan} sends {there.name}'s VTEP {want.mac} to {', '.join(dsts)}, "
                                   f"not to {there.name}'s underlay address {want.dst}", fix, score=88, fixes=fdb_fix))
    return out


# ----------------------------------------------------------------------------- MTU along the path


def mtu(multi: MultiLab, src: str, dst: str) -> list[Finding]:
    t = multi.topology
    assert multi.plan is not None and multi.underlay is not None
    need = t.join.mtu + 50 if t.join.kind == "vxlan" else t.path_mtu
    mtus = {link.name: link.mtu for link in multi.underlay.links()}
    out = []
    for name in (src, dst):
        hj = multi.plan.host(name)
        host_mtus = {link.name: link.mtu for link in _ns(multi, name).links()}
        for where, link, got in ((f"underlay (port toward {name})", hj.port, mtus.get(hj.port)), (f"{name}/host", hj.uplink, host_mtus.get(hj.uplink))):
            if got is not None and got < need:
                ns = multi.underlay if where.startswith("underlay") else _ns(multi, name)
                out.append(Finding("mtu_black_hole", where,
                                   f"{where}: {link} has MTU {got}, below the {need} bytes the {'overlay (MTU ' + str(t.join.mtu) + ' + 50 of VXLAN)' if t.join.kind == 'vxlan' else 'path MTU'} "
                                   f"needs: larger packets are dropped there and no fragmentation-needed comes back (the MTU black hole: small pings pass, big transfers stall)",
                                   f"ip netns exec {ns.name} ip link set {link} mtu {need} (or lower the overlay MTU to {got - 50 if t.join.kind == 'vxlan' else got})", score=75,
                                   fixes=(SetMtu("underlay" if where.startswith("underlay") else where, link, need),)))
        if hj.vxlan is not None and host_mtus.get(hj.vxlan, 0) > t.join.mtu:
            out.append(Finding("mtu_black_hole", f"{name}/host", f"{name}/host: {hj.vxlan} has MTU {host_mtus[hj.vxlan]}, above the declared {t.join.mtu}",
                               f"{_fix_ns(multi, name)} ip link set {hj.vxlan} mtu {t.join.mtu}", score=75, fixes=(SetMtu(f"{name}/host", hj.vxlan, t.join.mtu),)))
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


def rules(multi: MultiLab, src: str, dst: str) -> list[Finding]:
    t = multi.topology
    out = []
    for here, there in _pair(multi, src, dst):
        ns = _ns(multi, here.name)
        where = f"{here.name}/host"
        mine = t.host(here.name)
        uplink = multi.hosts[here.name].kname(mine.topology.host.uplink)
        filt = _rules(ns, "filter")
        for r in filt:
            if r.target not in ("DROP", "REJECT"):
                continue
            if r.protocol == "icmp" and r.chain in ("OUTPUT", "FORWARD") and any(_covers(r.dst, n) for n in mine.subnets):
                out.append(Finding("frag_needed_dropped", where, f"{where}: a {r.chain} rule drops ICMP to its containers, fragmentation-needed included: "
                                   f"a DF packet too big for the path is dropped and its sender never learns the path MTU (iptables {shlex.join(r.argv())})",
                                   f"{_fix_ns(multi, here.name)} {shlex.join(['iptables-legacy', *r.argv('-D')])}  (let ICMP type 3 code 4 through)", score=70,
                                   fixes=(DeleteRule(where, "legacy", r),)))
            if t.join.kind == "vxlan" and r.protocol == "udp" and r.dport == t.join.port and r.chain in ("INPUT", "FORWARD"):
                out.append(Finding("underlay_udp_blocked", where, f"{where}: a {r.chain} rule drops UDP {t.join.port}, the VXLAN datagrams from {there.name} "
                                   f"(iptables {shlex.join(r.argv())})", f"{_fix_ns(multi, here.name)} {shlex.join(['iptables-legacy', *r.argv('-D')])}", score=85,
                                   fixes=(DeleteRule(where, "legacy", r),)))
        for r in _rules(ns, "nat"):
            if r.chain != "POSTROUTING" or r.target not in ("MASQUERADE", "SNAT"):
                continue
            if not any(_covers(r.src, n) for n in mine.subnets):
                continue
            out_if = r.out_interface
            if out_if == uplink or (out_if is not None and out_if.startswith("!") and out_if[1:] in (here.uplink, here.vxlan)):
                continue
            out.append(Finding("masquerade_between_hosts", where, f"{where}: a {r.target} rule also rewrites its containers' packets to {there.name} "
                               f"(out {out_if or 'any interface'}): {there.name}'s containers see {where}'s address, not the container's",
                               f"{_fix_ns(multi, here.name)} {shlex.join(['iptables-legacy', *r.argv('-D')])}  (masquerade only out the uplink: -o {uplink})", score=70,
                               fixes=(DeleteRule(where, "legacy", r), *_forget_flows(multi, here.name))))
    return out


# ----------------------------------------------------------------------------- rp_filter


def rp_filter(multi: MultiLab, src: str, dst: str) -> list[Finding]:
    out = []
    t = multi.topology
    for here, there in _pair(multi, src, dst):
        ns = _ns(multi, here.name)
        arrive = here.vxlan or here.uplink
        values = {k: int(ns.sysctl(f"net.ipv4.conf.{k}.rp_filter") or 0) for k in ("all", arrive)}
        if max(values.values()) != 1:
            continue
        for subnet in t.host(there.name).subnets:
            back = ns.route_get(IPv4Address(int(subnet.network_address) + 1))
            via = back.interface if not isinstance(back, str) else None
            if via != arrive:
                where = f"{here.name}/host"
                out.append(Finding("rp_filter_decap", where,
                                   f"{where}: strict rp_filter (all={values['all']}, {arrive}={values[arrive]}) drops the decapsulated packets from {there.name}'s {subnet}: "
                                   f"they arrive on {arrive}, but the route back to {subnet} leaves by {via or back}",
                                   f"{_fix_ns(multi, here.name)} sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{arrive}.rp_filter=2 "
                                   f"(or route {subnet} back through {arrive})", score=95,
                                   fixes=(Sysctl(where, "net.ipv4.conf.all.rp_filter", "2"), Sysctl(where, f"net.ipv4.conf.{arrive}.rp_filter", "2"))))
    return out


CHECKS: tuple[Callable[[MultiLab, str, str], list[Finding]], ...] = (routes, vxlan, mtu, rules, rp_filter)

__all__ = ["CHECKS", "diagnose"]
