"""Faults: named, deliberate breakages of a built lab, each with the suite test it must fail.

The fault tests, the diagnosis corpus and ``--netcheck-fault NAME`` share this catalog, so a
user can see exactly what a failure and its diagnosis look like.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import resolvconf
from netcheck.kernel import nft
from netcheck.kernel.netns import Netns, VethSpec
from netcheck.kernel.xtables import BUILTIN_CHAINS, XRule, apply_rules, delete_rules, nft_chains, read_nft, set_policy
from netcheck.ledger import LinkEntry, NftTableEntry, SysctlEntry

if TYPE_CHECKING:
    from netcheck.lab import Lab
    from netcheck.multihost.lab import MultiLab

DEFAULT = IPv4Network("0.0.0.0/0")
DEFAULT6 = IPv6Network("::/0")


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    topology: str  # the built-in it is demonstrated on
    suite_test: str  # the suite test it must make fail (a node id inside netcheck.suites)
    message: str  # a phrase the failure message must contain
    cause: str  # the diagnosis's expected top cause
    inject: Callable[[Lab], None]
    kernel: str | None = None  # the drop reason the kernel gives for the probe, when it drops it (the diagnosis shows it)
    script: Callable[[Lab], str] | None = None  # the same fault as an outside shell script writes it (iptables-nft, nft, ip, sysctl), run in the host
    not_blamed: tuple[str, ...] = ()  # causes the diagnosis must not name at all (a decoy beside the real fault)
    edits_rules: bool = True  # False: it breaks a link, an address, a route, a file or a service, never a firewall rule


def _first(lab: Lab) -> str:
    return lab.topology.containers[0].name


def _second(lab: Lab) -> str:
    return lab.topology.containers[1].name


def _rule(lab: Lab, chain: str, target: str | None = None) -> XRule:
    for r in lab.rules:
        if r.chain == chain and (target is None or r.target == target) and r.family != 6:
            return r
    raise LookupError(f"{lab.topology.name} has no {target or ''} rule in {chain}")


# The rule faults edit the lab's rules where its builder wrote them: legacy iptables, or
# (firewall = "nft") the lab's own nft tables, natively: by handle, in its tables, its chain policy.


def _native(lab: Lab) -> bool:
    return lab.topology.host.firewall == "nft"


def _record(lab: Lab) -> Callable[[list[nft.NftTable]], None]:
    """Record, before they exist, the lab's nft tables a fault is about to bring into being."""

    def record(tables: list[nft.NftTable]) -> None:
        held = {(e.family, e.table) for e in (lab.ledger.entries if lab.ledger else []) if isinstance(e, NftTableEntry)}
        for table in tables:
            if lab.ledger is not None and (table.family, table.name) not in held:
                lab.ledger.record(NftTableEntry(lab.host.name, table.name, table.family, owned=True))

    return record


def _add(lab: Lab, rules: list[XRule], *, insert: bool = False) -> None:
    if _native(lab):
        nft.add_rules(lab.host, lab.names.tag, rules, insert=insert, before=_record(lab))
    else:
        apply_rules(lab.host, rules, insert=insert)


def _delete(lab: Lab, rule: XRule) -> None:
    if not _native(lab):
        delete_rules(lab.host, [rule])
        return
    for c in nft_chains(read_nft(lab.host)):
        held = next((r for r in c.rules if (c.table, c.name) == (rule.table, rule.chain) and r.key() == rule.key()), None)
        if held is not None and held.handle is not None:
            nft.delete_rule(lab.host, c.family, c.table, c.name, held.handle)
            return
    raise LookupError(f"no rule {rule.render()} in the nft tables of lab {lab.tag}")


def rewrite_rule(lab: Lab, old: XRule, new: XRule) -> None:
    """Replace one of the lab's rules where its builder wrote it (a legacy rule recorded in the ledger first), and in ``lab.rules``."""
    from netcheck.ledger import RuleEntry

    _delete(lab, old)
    if not _native(lab) and lab.ledger is not None:
        lab.ledger.record(RuleEntry(lab.host.name, new))
    _add(lab, [new])
    lab.rules[lab.rules.index(old)] = new


def _policy(lab: Lab, chain: str, policy: str) -> None:
    if _native(lab):
        nft.set_policy(lab.host, lab.names.tag, "filter", chain, policy, before=_record(lab))
    else:
        set_policy(lab.host, "filter", chain, policy)


def _drop(lab: Lab, chain: str, target: str | None = None) -> XRule:
    r = _rule(lab, chain, target)
    _delete(lab, r)
    return r


def _swap(lab: Lab, chain: str, target: str, **changes: object) -> None:
    old = _drop(lab, chain, target)
    _add(lab, [replace(old, **changes)])  # type: ignore[arg-type]


def veth_down(lab: Lab) -> None:
    c = lab.topology.container(_first(lab))
    lab.host.set_link(lab.kname(c.host_veth), up=False)


def address_on_bridge_port(lab: Lab) -> None:
    """Seed 2's order: the port got an address before the bridge did (veth_http2's 10.0.0.10), so
    the port's connected route comes first and the host sends the subnet out of that one port."""
    c = lab.topology.container(_first(lab))
    assert c.bridge is not None and c.host_veth
    b = lab.topology.bridge(c.bridge)
    assert b.address is not None
    stale = IPv4Interface(f"{b.address.network.broadcast_address - 2}/{b.address.network.prefixlen}")
    bridge_k = lab.kname(b.name)
    lab.host.deconfigure(addresses=[(bridge_k, b.address)])
    lab.host.configure(addresses=[(lab.kname(c.host_veth), stale)])
    lab.host.configure(addresses=[(bridge_k, b.address)], routes=[])


def iface_down(lab: Lab) -> None:
    c = lab.topology.container(_first(lab))
    lab.container_ns(c.name).set_link(c.interface, up=False)


def lo_down(lab: Lab) -> None:
    lab.container_ns(_first(lab)).set_link("lo", up=False)


def detach(lab: Lab) -> None:
    c = lab.topology.container(_second(lab))
    lab.host.set_link(lab.kname(c.host_veth), master=None)


def ip_forward_off(lab: Lab) -> None:
    lab.host.set_sysctl("net.ipv4.ip_forward", 0)


def no_default_route(lab: Lab) -> None:
    lab.container_ns(_first(lab)).deconfigure(routes=[DEFAULT])


def wrong_gateway(lab: Lab) -> None:
    c = lab.topology.container(_first(lab))
    assert c.address is not None
    ns = lab.container_ns(c.name)
    ns.deconfigure(routes=[DEFAULT])
    ns.configure(routes=[(DEFAULT, c.address.network.broadcast_address - 1, None)])


def masquerade_removed(lab: Lab) -> None:
    _drop(lab, "POSTROUTING", "MASQUERADE")


def masquerade_wrong_source(lab: Lab) -> None:
    _swap(lab, "POSTROUTING", "MASQUERADE", src="10.99.0.0/16")


def dnat_removed(lab: Lab) -> None:
    _drop(lab, "PREROUTING", "DNAT")


def dnat_wrong_port(lab: Lab) -> None:
    r = _rule(lab, "PREROUTING", "DNAT")
    assert r.to_destination is not None
    addr, port = r.to_destination.rsplit(":", 1)
    _swap(lab, "PREROUTING", "DNAT", to_destination=f"{addr}:{int(port) + 1}")


def output_dnat_missing(lab: Lab) -> None:
    _drop(lab, "OUTPUT", "DNAT")


def vip_not_jumped_from_output(lab: Lab) -> None:
    v = lab.topology.vips[0]
    _drop(lab, "OUTPUT", v.chain)


def forward_drop(lab: Lab) -> None:
    _policy(lab, "FORWARD", "DROP")


def forward_drop_rule(lab: Lab) -> None:
    c = lab.topology.container(_first(lab))
    side = lab.kname(c.bridge or c.host_veth)
    _add(lab, [XRule("filter", "FORWARD", "DROP", in_interface=side, out_interface=lab.kname(lab.topology.host.uplink), comment=lab.names.comment)], insert=True)


def second_container_answers(lab: Lab) -> None:
    p = lab.topology.publishes[0]
    other = next(c for c in lab.topology.containers if c.name != p.container)
    assert lab.services is not None and other.address is not None
    lab.services.listen(lab.container_ns(other.name), other.name, "http", p.port)
    _swap(lab, "PREROUTING", "DNAT", to_destination=f"{other.address.ip}:{p.port}")


def host_link_in_container(lab: Lab) -> None:
    """A second veth from the host plugged into the container: the host's network leaks in."""
    lab.host.add_veths([VethSpec(f"{lab.tag}hl", "hostlink0", lab.container_ns(_first(lab)), up=False)])


def bridge_floods(lab: Lab) -> None:
    b = lab.topology.bridges[0]
    lab.host.set_bridge(lab.kname(b.name), ageing_time=0)


def route_localnet_exposed(lab: Lab) -> None:
    b = lab.topology.bridges[0]
    assert b.address is not None
    lab.host.set_sysctl(f"net.ipv4.conf.{lab.kname(b.name)}.route_localnet", 1)
    _add(lab, [XRule("nat", "PREROUTING", "DNAT", dst=str(b.address.ip), protocol="tcp", to_destination="127.0.0.1", comment=lab.names.comment)])


def br_netfilter_off(lab: Lab) -> None:
    lab.host.set_sysctl("net.bridge.bridge-nf-call-iptables", 0)


def no_service(lab: Lab) -> None:
    assert lab.services is not None
    lab.services.stop(lab.topology.publishes[0].container, "http")


def wrong_prefix(lab: Lab) -> None:
    c = lab.topology.container(_second(lab))
    assert c.address is not None
    ns = lab.container_ns(c.name)
    ns.deconfigure(addresses=[(c.interface, c.address)])
    ns.configure(addresses=[(c.interface, IPv4Interface(f"{c.address.ip}/30"))])


def address_conflict(lab: Lab) -> None:
    first, second = lab.topology.container(_first(lab)), lab.topology.container(_second(lab))
    assert first.address is not None
    lab.container_ns(second.name).configure(addresses=[(second.interface, IPv4Interface(f"{first.address.ip}/32"))])


def uplink_down(lab: Lab) -> None:
    lab.host.set_link(lab.kname(lab.topology.host.uplink), up=False)


def mtu_mismatch(lab: Lab) -> None:
    c = lab.topology.container(_first(lab))
    lab.host.set_link(lab.kname(c.host_veth), mtu=1400)


def _uplink_ends(lab: Lab) -> tuple[str, Netns, str]:
    """The uplink's kernel name in the host, the outside world's namespace and its end of the uplink."""
    wan = lab.namespaces()["wan"]
    return lab.kname(lab.topology.host.uplink), wan, next(link.name for link in wan.links() if link.kind == "veth")


def uplink_mtu_low(lab: Lab) -> None:
    """A cloud VM's uplink (an overlay of the provider's: 1450, 1400) under containers that send 1500."""
    up, wan, far = _uplink_ends(lab)
    lab.host.set_link(up, mtu=1400)
    wan.set_link(far, mtu=1400)


def uplink_mtu_mismatch(lab: Lab) -> None:
    """The outside world's end of the uplink takes 1400 bytes, the host's end sends 1500: big packets vanish on arrival."""
    _up, wan, far = _uplink_ends(lab)
    wan.set_link(far, mtu=1400)


def subnet_overlap(lab: Lab) -> None:
    """Another network on the host (a tool's bridge) picked a subnet that holds the outside world's address."""
    subnet = IPv4Network(f"{lab.topology.wan.remote_at(4)[0].ip}/24", strict=False)  # the remote's own /24: its address is a /32 on the wan's lo
    name = f"{lab.tag}ov"
    group = lab.link(lab.host, name)
    lab.host.add_bridge(name, group=group)
    lab.host.configure(up=[name], addresses=[(name, IPv4Interface(f"{subnet.broadcast_address - 1}/24"))])


def dnat_to_localhost(lab: Lab) -> None:
    p = lab.topology.publishes[0]
    assert lab.services is not None
    lab.services.listen(lab.host, "host", "http", p.port, "127.0.0.1")
    _swap(lab, "PREROUTING", "DNAT", to_destination=f"127.0.0.1:{p.port}")


def stray_publish(lab: Lab) -> None:
    """A DNAT publishing a container's service port that the spec does not publish."""
    t = lab.topology
    published = {p.host_port for p in t.publishes}
    c, port = next((c, s.port) for c in t.containers for s in c.services if s.protocol == "tcp" and s.port not in published)
    assert c.address is not None
    _add(lab, [XRule("nat", "PREROUTING", "DNAT", dst=str(t.host.address.ip), protocol="tcp", dport=port, to_destination=f"{c.address.ip}:{port}", comment=lab.names.comment)])


def stray_vip_port(lab: Lab) -> None:
    """The VIP chain redirects one more port than the spec declares."""
    v = lab.topology.vips[0]
    c = lab.topology.container(v.container)
    assert c.address is not None
    rule = XRule("nat", v.chain, "DNAT", dst=str(v.address), protocol="tcp", dport=v.port + 1, to_destination=f"{c.address.ip}:{v.target_port}", comment=lab.names.comment)
    _add(lab, [rule])


def _rule_with(lab: Lab, chain: str, target: str, **fields: object) -> XRule:
    """The lab's first rule in ``chain`` to ``target`` whose fields are as given (a UDP DNAT, a hairpin MASQUERADE)."""
    for r in lab.rules:
        if r.chain == chain and r.target == target and all(getattr(r, k) == v for k, v in fields.items()):
            return r
    raise LookupError(f"{lab.topology.name} has no {target} rule in {chain} with {fields}")


def udp_dnat_removed(lab: Lab) -> None:
    """The PREROUTING DNAT of the first UDP publish, for the host's uplink address, is gone."""
    _delete(lab, _rule_with(lab, "PREROUTING", "DNAT", protocol="udp", dst=str(lab.topology.host.address.ip)))


def ipv6_udp_dnat_removed(lab: Lab) -> None:
    """The ip6tables PREROUTING DNAT of the first UDP publish, for the host's IPv6 uplink address, is gone (IPv4's stays)."""
    _v6(lab)
    six = lab.topology.host.address6
    assert six is not None
    _delete(lab, _rule_with(lab, "PREROUTING", "DNAT", protocol="udp", dst=str(six.ip), family=6))


def localhost_route_localnet_off(lab: Lab) -> None:
    """route_localnet = 0 where a port is published on 127.0.0.1."""
    if not any(p.loopback for p in lab.topology.publishes):
        raise LookupError(f"{lab.topology.name} publishes nothing on 127.0.0.1")
    lab.host.set_sysctl("net.ipv4.conf.all.route_localnet", 0)


def publish_output_dnat_removed(lab: Lab) -> None:
    """The OUTPUT DNAT of the first UDP publish is gone: the host cannot reach it, the outside still can."""
    _delete(lab, _rule_with(lab, "OUTPUT", "DNAT", protocol="udp", dst=str(lab.topology.host.address.ip)))


def hairpin_masquerade_removed(lab: Lab) -> None:
    """Docker's hairpin MASQUERADE (-s C -d C) of the first hairpin publish is gone."""
    first = next((r for r in lab.rules if r.chain == "POSTROUTING" and r.target == "MASQUERADE" and r.src is not None and r.src == r.dst), None)
    if first is None:
        raise LookupError(f"{lab.topology.name} has no hairpin MASQUERADE")
    _delete(lab, first)


def hairpin_mode_off(lab: Lab) -> None:
    """The bridge port of the first container with a hairpin publish has hairpin mode off."""
    p = next((p for p in lab.topology.publishes if p.hairpin), None)
    if p is None:
        raise LookupError(f"{lab.topology.name} has no hairpin publish")
    lab.host.set_hairpin(lab.kname(lab.topology.container(p.container).host_veth), False)


def rp_filter_strict(lab: Lab) -> None:
    """A second link to the outside world carries the replies back (asymmetric routing), and
    the host filters reverse paths strictly: the replies arrive where the route back does not go."""
    host_if, wan_if = f"{lab.tag}u2", f"{lab.tag}w2"
    if lab.ledger is not None:
        lab.ledger.record(LinkEntry(lab.host.name, host_if))
    lab.host.add_veths([VethSpec(host_if, wan_if, lab.wan, up=False)])
    lab.host.configure(addresses=[(host_if, IPv4Interface("198.51.100.201/30"))])
    lab.wan.configure(addresses=[(wan_if, IPv4Interface("198.51.100.202/30"))])
    lab.wan.set_sysctl(f"net.ipv4.conf.{wan_if}.arp_announce", 2)  # the router asks ARP from its link address
    lab.host.set_link(host_if, up=True)
    lab.wan.set_link(wan_if, up=True)
    lab.host.wait_links_up([host_if])
    lab.wan.wait_links_up([wan_if])
    lab.wan.configure(routes=[(IPv4Network(f"{lab.topology.host.address.ip}/32"), IPv4Address("198.51.100.201"), None)])
    for key in ("net.ipv4.conf.all.rp_filter", f"net.ipv4.conf.{host_if}.rp_filter"):
        old = lab.host.set_sysctl(key, 1)
        if lab.ledger is not None:
            lab.ledger.record(SysctlEntry(lab.host.name, key, old))


# ----------------------------------------------------------------------------- IPv6 (dual-stack labs)


def _v6(lab: Lab) -> None:
    if 6 not in lab.topology.families:
        raise LookupError(f"{lab.topology.name} declares no IPv6")


def ipv6_forwarding_off(lab: Lab) -> None:
    """IPv6 forwarding off while IPv4's stays on: net.ipv6.conf.all.forwarding = 0."""
    _v6(lab)
    lab.host.set_sysctl("net.ipv6.conf.all.forwarding", 0)


def ip6tables_forward_drop(lab: Lab) -> None:
    """A DROP in ip6tables' FORWARD chain, ahead of everything, while iptables' FORWARD accepts."""
    _v6(lab)
    c = lab.topology.container(_first(lab))
    side = lab.kname(c.bridge or c.host_veth)
    _add(lab, [XRule("filter", "FORWARD", "DROP", in_interface=side, out_interface=lab.kname(lab.topology.host.uplink), comment=lab.names.comment, family=6)], insert=True)


def ipv6_disabled(lab: Lab) -> None:
    """IPv6 disabled on a container's interface: its IPv6 addresses are gone at once."""
    _v6(lab)
    c = lab.topology.container(_first(lab))
    lab.container_ns(c.name).set_sysctl(f"net.ipv6.conf.{c.interface}.disable_ipv6", 1)


def ipv6_no_default_route(lab: Lab) -> None:
    """A container's IPv6 default route is missing (IPv4's is there)."""
    _v6(lab)
    lab.container_ns(_first(lab)).deconfigure(routes=[DEFAULT6])


def ipv6_dad_duplicate(lab: Lab) -> None:
    """Duplicate address detection fails: another container claims the first one's IPv6 address while the first re-adds it (as after a restart)."""
    _v6(lab)
    first, second = lab.topology.container(_first(lab)), lab.topology.container(_second(lab))
    assert first.address6 is not None
    taken = IPv6Interface(f"{first.address6.ip}/128")
    lab.container_ns(second.name).configure(addresses=[(second.interface, taken)])
    ns = lab.container_ns(first.name)
    ns.deconfigure(addresses=[(first.interface, first.address6)])
    for key in (f"net.ipv6.conf.{first.interface}.accept_dad", f"net.ipv6.conf.{first.interface}.dad_transmits"):
        ns.set_sysctl(key, 1)
    ns.configure(addresses=[(first.interface, first.address6)], dad=True)
    ns.wait_dad_done(first.interface, first.address6)


def ipv6_subnet_unrouted(lab: Lab) -> None:
    """The host's route to the bridge's IPv6 prefix is gone (the bridge keeps its address, as after `ip -6 route flush dev br0`)."""
    _v6(lab)
    b = next(b for b in lab.topology.bridges if b.address6 is not None)
    assert b.address6 is not None
    lab.host.deconfigure(routes=[b.address6.network])


def ipv6_ra_ignored(lab: Lab) -> None:
    """The host's IPv6 default route came from router advertisements, and is gone: forwarding = 1 with accept_ra = 1 ignores every RA since.

    The kernel's rule (Documentation/networking/ip-sysctl.rst): accept_ra = 1 accepts RAs only when forwarding is off; a router needs
    accept_ra = 2. accept_ra never turns forwarding off; turning forwarding on turns RAs off. Here the route is removed as an expired RA's would be.
    """
    _v6(lab)
    uplink = lab.kname(lab.topology.host.uplink)
    lab.host.set_sysctl(f"net.ipv6.conf.{uplink}.accept_ra", 1)
    lab.host.deconfigure(routes=[DEFAULT6])


def ipv6_dnat_to_localhost(lab: Lab) -> None:
    """The published port's IPv6 DNAT sends it to [::1]: the kernel never routes a forwarded packet to ::1 (IPv6 has no route_localnet)."""
    _v6(lab)
    p = lab.topology.publishes[0]
    assert lab.services is not None
    lab.services.listen(lab.host, "host", "http", p.port, "::1")
    old = next(r for r in lab.rules if r.chain == "PREROUTING" and r.target == "DNAT" and r.family == 6)
    _delete(lab, old)
    _add(lab, [replace(old, to_destination=f"[::1]:{p.port}")])


def _resolver_user(lab: Lab) -> str:
    return next(c.name for c in lab.topology.containers if c.dns is not None and not isinstance(c.dns, str))


def _resolv_conf(lab: Lab) -> Path:
    return resolvconf.path_for(lab.container_ns(_resolver_user(lab)).name or "")


def _rewrite_resolv_conf(lab: Lab, nameservers: tuple[str, ...] | None = None, search: tuple[str, ...] | None = None) -> None:
    """The container's resolv.conf, rewritten in place (the ledger's FileEntry still removes it)."""
    path = _resolv_conf(lab)
    conf = resolvconf.parse(path.read_text())
    path.write_text(resolvconf.render(nameservers if nameservers is not None else conf.nameservers, search if search is not None else conf.search))


def resolv_conf_missing(lab: Lab) -> None:
    """As with seed 2's `echo "nameserver 8.8.8.8 | sudo tee ..."`: the file is never written."""
    _resolv_conf(lab).unlink()


def nameserver_loopback(lab: Lab) -> None:
    _rewrite_resolv_conf(lab, nameservers=("127.0.0.53",))


def search_wrong(lab: Lab) -> None:
    _rewrite_resolv_conf(lab, search=("elsewhere.test",))


def dns_no_route(lab: Lab) -> None:
    """The container that asks has no default route: its resolver, outside, is unreachable."""
    lab.container_ns(_resolver_user(lab)).deconfigure(routes=[DEFAULT])


def dns_udp_dropped(lab: Lab) -> None:
    _add(lab, [XRule("filter", "FORWARD", "DROP", protocol="udp", dport=53, comment=lab.names.comment)], insert=True)


def dns_wrong_answer(lab: Lab) -> None:
    """The resolver serves a zone whose first record points elsewhere."""
    d = lab.topology.dns
    assert lab.services is not None and d is not None and d.records
    zone = d.zone()
    first = d.records[0].name
    zone[first] = "198.51.100.254"
    lab.services.stop("wan", "dns")
    lab.services.listen_dns(lab.wan, "wan", str(d.address), zone)


# ----------------------------------------------------------------------------- faults real hosts have
# Each is injected by netcheck (through its kernel layer) and, as ``NAME:script``, by an outside
# shell script that writes what real tools write: iptables-nft and nft (and ip, sysctl), run in
# the lab's host namespace. A script that must remove one of the lab's own rules does it where the
# builder wrote them (iptables-legacy, or the lab's nft tables by handle), as a firewall reload would.

NFT_DEL = """nft_del() {  # family table chain text: delete the rules of a chain whose listing contains text
  for h in $(nft -a list chain "$1" "$2" "$3" | awk -v t="$4" 'index($0, t) { print $NF }'); do nft delete rule "$1" "$2" "$3" handle "$h"; done
}
"""
DECOY_MAC = "02:00:5e:00:53:01"  # a locally administered MAC no interface of a lab has


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _subnet(lab: Lab) -> str:
    c = lab.topology.container(_first(lab))
    assert c.address is not None
    return str(c.address.network)


def _uplink(lab: Lab) -> str:
    return lab.kname(lab.topology.host.uplink)


def _side(lab: Lab) -> str:
    """The host interface the first container's traffic arrives on (its bridge, or its veth)."""
    c = lab.topology.container(_first(lab))
    return lab.kname(c.bridge or c.host_veth)


def _gateway(lab: Lab) -> IPv4Address:
    c = lab.topology.container(_first(lab))
    if c.gateway is not None:
        return c.gateway
    b = next(b for b in lab.topology.bridges if b.name == c.bridge)
    assert b.address is not None
    return b.address.ip


def _nat_table(lab: Lab) -> str:
    return nft.tables_for(lab.names.tag)["nat"].name


def _own_table(lab: Lab, suffix: str, family: str = "inet") -> nft.NftTable:
    table = nft.NftTable(family, f"{lab.names.tag}_{suffix}")
    _record(lab)([table])
    return table


def _sh_delete(lab: Lab, rule: XRule, text: str) -> str:
    """The shell line that deletes one of the lab's rules where the builder wrote it."""
    if _native(lab):  # the rule as the lab holds it names its own nft table (TAG_nat), or the iptables table it stands for
        table = nft.tables_for(lab.names.tag)[rule.table].name if rule.table in BUILTIN_CHAINS else rule.table
        return f"nft_del ip {_q(table)} {_q(rule.chain)} {_q(text)}\n"
    return "iptables-legacy -w " + " ".join(a if a == "!" else _q(a) for a in rule.argv("-D")) + "\n"


def daemon_chain_drop(lab: Lab) -> None:
    """Another daemon's chain (Docker's DOCKER-USER, ufw's ufw-user-forward), jumped from FORWARD, drops the containers' traffic."""
    _add(lab, [XRule("filter", "DOCKER-USER", "DROP", src=_subnet(lab), out_interface=_uplink(lab), comment=lab.names.comment)])
    _add(lab, [XRule("filter", "FORWARD", "DOCKER-USER", comment=lab.names.comment)], insert=True)


def daemon_chain_drop_sh(lab: Lab) -> str:
    return (f"iptables-nft -N DOCKER-USER\niptables-nft -A DOCKER-USER -s {_q(_subnet(lab))} -o {_q(_uplink(lab))} -j DROP\n"
            "iptables-nft -I FORWARD -j DOCKER-USER\n")


def forward_reject_first(lab: Lab) -> None:
    _add(lab, [XRule("filter", "FORWARD", "REJECT", src=_subnet(lab), comment=lab.names.comment)], insert=True)


def forward_reject_first_sh(lab: Lab) -> str:
    return f"iptables-nft -I FORWARD -s {_q(_subnet(lab))} -j REJECT\n"


def firewall_reload_wipes_nat(lab: Lab) -> None:
    """A firewall reload (firewalld, ufw, an iptables-restore of a file without the tool's rules) empties the nat table."""
    wiped = [r for r in lab.rules if r.table in ("nat", _nat_table(lab))]
    if not wiped:
        raise LookupError(f"{lab.topology.name} has no nat rules")
    for r in wiped:
        _delete(lab, r)


def firewall_reload_wipes_nat_sh(lab: Lab) -> str:
    return f"nft flush table ip {_q(_nat_table(lab))}\n" if _native(lab) else "iptables-legacy -w -t nat -F\n"


def masquerade_wrong_oif(lab: Lab) -> None:
    """``-o br0`` where ``! -o br0`` was meant: the MASQUERADE covers bridge-local traffic only."""
    _swap(lab, "POSTROUTING", "MASQUERADE", out_interface=_side(lab))


def masquerade_wrong_oif_sh(lab: Lab) -> str:
    old = _rule(lab, "POSTROUTING", "MASQUERADE")
    if _native(lab):
        return NFT_DEL + _sh_delete(lab, old, "masquerade") + f"nft add rule ip {_q(_nat_table(lab))} POSTROUTING ip saddr {_q(_subnet(lab))} oifname {_q(_side(lab))} masquerade\n"
    return _sh_delete(lab, old, "") + f"iptables-legacy -w -t nat -A POSTROUTING -s {_q(_subnet(lab))} -o {_q(_side(lab))} -j MASQUERADE\n"


WRONG_DST = "203.0.113.99"  # an address of the outside world's network that the host does not hold


def dnat_wrong_dst(lab: Lab) -> None:
    _swap(lab, "PREROUTING", "DNAT", dst=WRONG_DST)


def _sh_swap_dnat(lab: Lab, **changes: object) -> str:
    """The shell lines that replace the published port's DNAT by one with ``changes``, where the builder wrote it."""
    old = _rule(lab, "PREROUTING", "DNAT")
    new = replace(old, comment=None, **changes)  # type: ignore[arg-type]
    if _native(lab):
        return NFT_DEL + _sh_delete(lab, old, "dnat to") + f"nft add rule ip {_q(_nat_table(lab))} PREROUTING {_q(nft.text(new))}\n"
    return _sh_delete(lab, old, "") + "iptables-legacy -w " + " ".join(a if a == "!" else _q(a) for a in new.argv("-A")) + "\n"


def dnat_wrong_dst_sh(lab: Lab) -> str:
    return _sh_swap_dnat(lab, dst=WRONG_DST)


def dnat_wrong_iif(lab: Lab) -> None:
    """The DNAT is bound to the bridge (-i br0, as for hairpin traffic only): traffic from outside passes it untranslated."""
    _swap(lab, "PREROUTING", "DNAT", in_interface=_side(lab))


def dnat_wrong_iif_sh(lab: Lab) -> str:
    return _sh_swap_dnat(lab, in_interface=_side(lab))


def iface_forwarding_off(lab: Lab) -> None:
    """net.ipv4.conf.BRIDGE.forwarding = 0 while ip_forward = 1: the host routes nothing that arrives from the bridge."""
    lab.host.set_sysctl(f"net.ipv4.conf.{_side(lab)}.forwarding", 0)


def iface_forwarding_off_sh(lab: Lab) -> str:
    return f"sysctl -qw net.ipv4.conf.{_side(lab)}.forwarding=0\n"


def docker_icc_off(lab: Lab) -> None:
    """Docker's icc=false: a FORWARD DROP for traffic from the bridge to itself, so containers on one bridge cannot talk (bridge-nf-call-iptables=1)."""
    _add(lab, [XRule("filter", "FORWARD", "DROP", in_interface=_side(lab), out_interface=_side(lab), comment=lab.names.comment)], insert=True)


def docker_icc_off_sh(lab: Lab) -> str:
    return f"iptables-nft -I FORWARD -i {_q(_side(lab))} -o {_q(_side(lab))} -j DROP\n"


def host_default_route_missing(lab: Lab) -> None:
    lab.host.deconfigure(routes=[DEFAULT])


def host_default_route_missing_sh(lab: Lab) -> str:
    return "ip route del default\n"


def static_neigh_wrong(lab: Lab) -> None:
    """A static neighbour entry (a leftover of a recreated bridge, a script's ``ip neigh replace``) gives the gateway a MAC nobody has."""
    c = lab.topology.container(_first(lab))
    lab.container_ns(c.name).set_neighbours(c.interface, [(_gateway(lab), DECOY_MAC)])


def static_neigh_wrong_sh(lab: Lab) -> str:
    c = lab.topology.container(_first(lab))
    return f"ip -n {_q(lab.container_ns(c.name).name)} neigh replace {_gateway(lab)} lladdr {DECOY_MAC} dev {_q(c.interface)} nud permanent\n"


def arp_ignore_host(lab: Lab) -> None:
    """arp_ignore = 8 on the host's side of the containers' network: the host answers no ARP there, so the gateway never resolves."""
    c = lab.topology.container(_first(lab))
    lab.host.set_sysctl(f"net.ipv4.conf.{_side(lab)}.arp_ignore", 8)
    lab.container_ns(c.name).delete_neighbours(c.interface, [_gateway(lab)])


def arp_ignore_host_sh(lab: Lab) -> str:
    c = lab.topology.container(_first(lab))
    return (f"sysctl -qw net.ipv4.conf.{_side(lab)}.arp_ignore=8\n"
            f"ip -n {_q(lab.container_ns(c.name).name)} neigh del {_gateway(lab)} dev {_q(c.interface)} || true\n")


def _remote_net(lab: Lab) -> IPv4Network:
    return IPv4Network(f"{lab.topology.wan.remote[0].ip}/24", strict=False)


def host_blackhole_route(lab: Lab) -> None:
    """A blackhole route in the host (a VPN client's, a leftover of a route filter) swallows the forwarded traffic."""
    done = lab.host.run(["ip", "route", "add", "blackhole", str(_remote_net(lab))], timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip route add blackhole {_remote_net(lab)}: {done.stderr.decode(errors='replace').strip()}")


def host_blackhole_route_sh(lab: Lab) -> str:
    return f"ip route add blackhole {_remote_net(lab)}\n"


def container_prohibit_route(lab: Lab) -> None:
    c = lab.topology.container(_first(lab))
    done = lab.container_ns(c.name).run(["ip", "route", "add", "prohibit", str(lab.topology.wan.remote[0])], timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip route add prohibit: {done.stderr.decode(errors='replace').strip()}")


def container_prohibit_route_sh(lab: Lab) -> str:
    return f"ip -n {_q(lab.container_ns(_first(lab)).name)} route add prohibit {lab.topology.wan.remote[0]}\n"


OUTSIDE6 = "2001:db8::/32"  # the outside world's IPv6 range (the documentation prefix)
POLICY6_PRIORITY = 1000


def ipv6_policy_prohibit(lab: Lab) -> None:
    """An ``ip -6 rule`` meant for another network (a VPN's, a multi-homing script's) prohibits routing what comes
    from the outside world's 2001:db8::/32: the host's own address stays reachable (the local table comes first),
    but the replies to the containers are refused (ICMPv6 administratively prohibited)."""
    _v6(lab)
    done = lab.host.run(["ip", "-6", "rule", "add", "from", OUTSIDE6, "prohibit", "priority", str(POLICY6_PRIORITY)], timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip -6 rule add from {OUTSIDE6} prohibit: {done.stderr.decode(errors='replace').strip()}")


def ipv6_policy_prohibit_sh(lab: Lab) -> str:
    _v6(lab)
    return f"ip -6 rule add from {OUTSIDE6} prohibit priority {POLICY6_PRIORITY}\n"


def split_backend_drop(lab: Lab) -> None:
    """A DROP written with iptables-nft beside the lab's own rules: the kernel applies both, each tool shows half."""
    apply_rules(lab.host, [XRule("filter", "FORWARD", "DROP", src=_subnet(lab), out_interface=_uplink(lab))], insert=True, backend="nft")


def split_backend_drop_sh(lab: Lab) -> str:
    return f"iptables-nft -I FORWARD -s {_q(_subnet(lab))} -o {_q(_uplink(lab))} -j DROP\n"


def ufw_forward_policy_drop(lab: Lab) -> None:
    """A firewall daemon's own inet table (ufw, firewalld's) hooks forward with policy drop and accepts nothing for the containers."""
    table = _own_table(lab, "ufw")
    nft.run(lab.host, [{"add": {"table": table.ref()}},
                       {"add": {"chain": {"family": table.family, "table": table.name, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}}],
            what="adding a daemon's forward chain")


def ufw_forward_policy_drop_sh(lab: Lab) -> str:
    t = f"{lab.names.tag}_ufw"
    return f"nft add table inet {t}\nnft add chain inet {t} forward '{{ type filter hook forward priority 0; policy drop; }}'\n"


def forward_no_return_accept(lab: Lab) -> None:
    """FORWARD policy DROP with an ACCEPT for the way out only: the replies (no ``ct state established`` accept) are dropped."""
    _add(lab, [XRule("filter", "FORWARD", "ACCEPT", in_interface=_side(lab), out_interface=_uplink(lab), comment=lab.names.comment)])
    _policy(lab, "FORWARD", "DROP")


def forward_no_return_accept_sh(lab: Lab) -> str:
    return f"iptables-nft -P FORWARD DROP\niptables-nft -A FORWARD -i {_q(_side(lab))} -o {_q(_uplink(lab))} -j ACCEPT\n"


def ipv6_drop_decoy(lab: Lab) -> None:
    """ip6tables and an inet table drop forwarded IPv6, and the MASQUERADE is gone: only the MASQUERADE explains an IPv4 failure."""
    table = _own_table(lab, "v6")
    nft.run(lab.host, [{"add": {"table": table.ref()}},
                       {"add": {"chain": {"family": table.family, "table": table.name, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
                       {"add": {"rule": {"family": table.family, "table": table.name, "chain": "forward",
                                         "expr": [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}, {"counter": None}, {"drop": None}]}}}],
            what="adding an IPv6 drop")
    done = lab.host.run(["ip6tables-nft", "-A", "FORWARD", "-j", "DROP"], timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip6tables-nft -A FORWARD -j DROP: {done.stderr.decode(errors='replace').strip()}")
    masquerade_removed(lab)


def ipv6_drop_decoy_sh(lab: Lab) -> str:
    t = f"{lab.names.tag}_v6"
    old = _rule(lab, "POSTROUTING", "MASQUERADE")
    return ((NFT_DEL if _native(lab) else "") + f"nft add table inet {t}\nnft add chain inet {t} forward '{{ type filter hook forward priority 0; policy accept; }}'\n"
            f"nft add rule inet {t} forward meta nfproto ipv6 counter drop\nip6tables-nft -A FORWARD -j DROP\n" + _sh_delete(lab, old, "masquerade"))


def run_script(lab: Lab, fault: Fault) -> None:
    """Inject a fault as an outside shell script would (``--netcheck-fault NAME:script``), in the lab's host namespace."""
    assert fault.script is not None
    text = fault.script(lab)
    done = lab.host.run(["sh", "-euc", text], timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"the script of fault {fault.name} failed (exit {done.returncode}): {done.stderr.decode(errors='replace').strip()}\n{text}")


# The suite test each fault must make fail, as a node id inside the suites package (netcheck.suites,
# which is the repository's suites/): a clone runs suites/NODE, an install the path that
# netcheck.cli.suite_node() gives.
BRIDGE_ARP = "test_bridge.py::test_arp_resolves_to_the_right_mac"
BRIDGE_MATRIX = "test_bridge.py::test_full_matrix_on_each_bridge"
DNAT_HOST = "test_dnat.py::test_published_port_reached_from_the_host"
DNAT_OUTSIDE = "test_dnat.py::test_published_port_reached_from_outside"
DNAT_PATHS = "test_dnat.py::test_source_address_seen_on_each_access_path"
DNAT_UNPUBLISHED = "test_dnat.py::test_unpublished_port_is_not_reachable"
FORWARD_OUT = "test_forwarding.py::test_container_reaches_the_outside_through_the_host"
FORWARD_FULL_SIZE = "test_forwarding.py::test_a_full_size_packet_gets_out_unfragmented"
ISO_FRAMES = "test_isolation.py::test_unicast_frames_stay_off_other_containers"
ISO_LINKS = "test_isolation.py::test_container_sees_none_of_the_hosts_links_routes_or_rules"
ISO_LOOPBACK = "test_isolation.py::test_host_loopback_services_are_not_reachable_from_containers"
MASQ_OUT = "test_masquerade.py::test_outside_sees_the_host_uplink_address"
VETH_ENDS = "test_veth.py::test_both_ends_up_addressed_and_same_mtu"
VETH_LO = "test_veth.py::test_container_loopback_carries_traffic"
VIP_HOST = "test_vip.py::test_vip_from_the_host"
VIP_ONLY = "test_vip.py::test_only_the_declared_vip_port_is_redirected"
DNS_CONF = "test_dns.py::test_resolv_conf_is_the_declared_one"
DNS_ANSWERS = "test_dns.py::test_resolver_answers_over_udp_and_tcp"
DNS_NAMES = "test_dns.py::test_declared_names_resolve"
DNS_MASQ = "test_dns.py::test_queries_leave_masqueraded"
DNAT_MATRIX = "test_dnat.py::test_published_port_matrix"

MASQ_LONG_LIVED = "test_masquerade.py::test_a_long_lived_udp_flow_is_masqueraded"
# A long-lived UDP client's fixed port (a syslog or DNS forwarder's): the masquerade suite probes from it, and the
# stale-conntrack fault leaves an entry for it from before the MASQUERADE rule (netcheck.lifecycle exports it too).
LONG_LIVED_UDP_PORT = 40007


def stale_conntrack(lab: Lab) -> None:
    """A long-lived UDP flow began while the MASQUERADE rule was missing (a firewall reload), then the rule came
    back: the flow's conntrack entry keeps its first, un-NATed decision (conntrack NATs a flow at its first packet)."""
    import socket

    from netcheck.kernel.inspect import conntrack
    from netcheck.waiting import wait_until

    rule = _drop(lab, "POSTROUTING", "MASQUERADE")
    name = _first(lab)
    addr = lab.topology.container(name).address
    assert addr is not None
    remote = str(lab.topology.host.gateway)  # the outside world's uplink address, as the masquerade suite's long-lived flow
    sock = lab.container_ns(name).socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", LONG_LIVED_UDP_PORT))
        sock.sendto(b"netcheck stale-conntrack", (remote, 7))
    finally:
        sock.close()
    wait_until(lambda: any(e.proto == "udp" and e.sport == LONG_LIVED_UDP_PORT for e in conntrack(lab.host, {str(addr.ip)})), timeout=5,
               what=f"the host's conntrack entry of {name}'s UDP flow from port {LONG_LIVED_UDP_PORT}")
    _add(lab, [rule])



def container_routes_removed(lab: Lab) -> None:
    """The first container's routes are all gone, the connected route of its own network too (a script's `ip route flush`)."""
    c = lab.topology.containers[0]
    assert c.address is not None
    lab.container_ns(c.name).deconfigure(routes=[IPv4Network("0.0.0.0/0"), c.address.network])


def resolvers_wrong(lab: Lab) -> None:
    """The container's resolv.conf names another resolver than the spec declares (a copy of the host's, say)."""
    _rewrite_resolv_conf(lab, nameservers=("198.51.100.53",))


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("veth-down", "the host side of a container's veth is down", "seed1", VETH_ENDS, "veth0", "link_down", veth_down, edits_rules=False),
    Fault("address-on-bridge-port", "a container's host veth keeps an address in the bridge's subnet from before it joined the bridge (seed 2's veth_http2)",
          "seed1", FORWARD_OUT, "198.51.100.1", "address_on_bridge_port", address_on_bridge_port, edits_rules=False),
    Fault("container-iface-down", "a container's own interface is down", "seed1", BRIDGE_MATRIX, "bridge matrix", "link_down", iface_down, edits_rules=False),
    Fault("lo-down", "a container's lo is down", "seed1", VETH_LO, "127.0.0.1", "lo_down", lo_down, kernel="QDISC_DROP", edits_rules=False),
    Fault("detached-from-bridge", "a container's veth is not attached to the bridge", "seed1", BRIDGE_MATRIX, "bridge matrix", "not_in_bridge", detach, edits_rules=False),
    Fault("ip-forward-off", "net.ipv4.ip_forward = 0 in the host", "seed1", FORWARD_OUT, "198.51.100.1", "ip_forward_off", ip_forward_off, kernel="IP_INADDRERRORS"),
    Fault("no-default-route", "a container has no default route", "seed1", FORWARD_OUT, "198.51.100.1", "no_default_route", no_default_route, edits_rules=False),
    Fault("wrong-gateway", "a container's default route points at an address nobody has", "seed1", FORWARD_OUT, "198.51.100.1", "wrong_gateway", wrong_gateway, edits_rules=False),
    Fault("masquerade-removed", "the MASQUERADE rule is gone", "seed1", MASQ_OUT, "198.51.100.1", "masquerade_missing", masquerade_removed),
    Fault("masquerade-wrong-source", "MASQUERADE matches the wrong source subnet", "seed1", MASQ_OUT, "198.51.100.1", "masquerade_wrong", masquerade_wrong_source),
    Fault("dnat-removed", "the PREROUTING DNAT of the published port is gone", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000", "dnat_missing", dnat_removed),
    Fault("dnat-wrong-port", "the DNAT sends the published port to the wrong container port", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000", "dnat_wrong", dnat_wrong_port),
    Fault("output-dnat-missing", "the OUTPUT DNAT is gone: reachable from outside, not from the host", "seed1", DNAT_HOST, "203.0.113.2:5000", "output_dnat_missing", output_dnat_missing),
    Fault("vip-not-jumped-from-output", "OUTPUT does not jump to the VIP chain", "seed2", VIP_HOST, "10.100.100.100:8080", "vip_not_jumped", vip_not_jumped_from_output, kernel="IP_INADDRERRORS"),
    Fault("forward-drop", "FORWARD policy DROP with bridge-nf-call-iptables=1", "seed1", BRIDGE_MATRIX, "bridge matrix", "forward_drop", forward_drop, kernel="NETFILTER_DROP"),
    Fault("forward-drop-rule", "a FORWARD DROP rule ahead of the accepts", "seed2", FORWARD_OUT, "198.51.100.1", "forward_drop", forward_drop_rule, kernel="NETFILTER_DROP"),
    Fault("second-container-answers", "the published port is answered by another container", "seed1", DNAT_OUTSIDE, "wrong-target", "dnat_wrong", second_container_answers),
    Fault("host-link-in-container", "a container sees a link that is not its own", "seed1", ISO_LINKS, "hostlink0", "extra_link", host_link_in_container, edits_rules=False),
    Fault("bridge-floods", "the bridge forgets MACs at once (ageing 0) and floods every frame", "seed1", ISO_FRAMES, "must never appear", "bridge_flooding", bridge_floods, edits_rules=False),
    Fault("route-localnet-exposed", "route_localnet=1 and a DNAT to 127.0.0.1 expose the host's loopback", "seed1", ISO_LOOPBACK, "loopback service", "route_localnet_exposed", route_localnet_exposed),
    Fault("br-netfilter-off", "bridge-nf-call-iptables=0: a same-bridge DNAT reply skips the un-NAT", "seed1", DNAT_PATHS, "203.0.113.2:5000", "br_netfilter_off", br_netfilter_off,
          kernel="NO_SOCKET"),
    Fault("no-service", "nothing listens on the published port in the container", "seed1", DNAT_OUTSIDE, "connection refused", "no_listener", no_service, kernel="NO_SOCKET", edits_rules=False),
    Fault("wrong-prefix", "a container's address has the wrong prefix length", "seed1", BRIDGE_MATRIX, "bridge matrix", "wrong_prefix", wrong_prefix, edits_rules=False),
    Fault("address-conflict", "two containers hold the same address", "seed1", BRIDGE_ARP, "ARP", "address_conflict", address_conflict, edits_rules=False),
    Fault("resolv-conf-missing", "a container's /etc/netns/NAME/resolv.conf is never written (seed 2's echo | tee typo)", "seed2", DNS_CONF, "is missing",
          "resolv_conf_missing", resolv_conf_missing, edits_rules=False),
    Fault("resolvers-wrong", "a container's resolv.conf names another resolver than the spec declares", "seed2", DNS_CONF, "198.51.100.53",
          "resolv_conf_wrong", resolvers_wrong, edits_rules=False),
    Fault("nameserver-loopback", "a container's resolv.conf names the host's stub resolver 127.0.0.53", "seed2", DNS_CONF, "resolv.conf says",
          "nameserver_loopback", nameserver_loopback, edits_rules=False),
    Fault("dns-search-wrong", "a container's search domain sends a short name to the wrong zone", "seed2", DNS_NAMES, "the spec says", "search_wrong", search_wrong, edits_rules=False),
    Fault("dns-no-route", "the container that asks has no route to its resolver (its default route is gone)", "seed2", DNS_ANSWERS, "203.0.113.53",
          "no_default_route", dns_no_route, edits_rules=False),
    Fault("dns-udp-dropped", "FORWARD drops UDP/53; TCP/53 passes", "seed2", DNS_ANSWERS, "dns/udp", "dns_udp_blocked", dns_udp_dropped),
    Fault("dns-wrong-answer", "the resolver answers a declared name with another address", "seed2", DNS_NAMES, "the spec says", "dns_wrong_answer", dns_wrong_answer, edits_rules=False),
    Fault("dns-masquerade-removed", "no MASQUERADE: DNS queries leave with the container's private source", "seed2", DNS_MASQ, "203.0.113.53",
          "masquerade_missing", masquerade_removed),
    Fault("uplink-down", "the host's uplink is down", "seed1", FORWARD_OUT, "198.51.100.1", "link_down", uplink_down, kernel="IP_INNOROUTES"),
    Fault("routes-removed", "a container's routes are all gone, its connected route too", "seed1", "test_bridge.py::test_full_matrix_on_each_bridge",
          "Network is unreachable", "no_route", container_routes_removed, edits_rules=False),
    Fault("mtu-mismatch", "the two ends of a veth have different MTUs", "seed1", VETH_ENDS, "MTU", "mtu_mismatch", mtu_mismatch, edits_rules=False),
    Fault("subnet-overlap", "a second bridge on the host (another tool's network) has a subnet that holds the outside world's address",
          "seed1", FORWARD_OUT, "198.51.100.1", "subnet_overlap", subnet_overlap, edits_rules=False),
    Fault("uplink-mtu-low", "the host's uplink carries 1400 bytes (a cloud VM's), the containers send 1500: a full-size DF packet gets fragmentation-needed",
          "seed1", FORWARD_FULL_SIZE, "fragmentation needed (mtu 1400)", "path_mtu_low", uplink_mtu_low, edits_rules=False),
    Fault("uplink-mtu-mismatch", "the outside world's end of the uplink takes 1400 bytes, the host's end 1500: big packets vanish, small pings pass",
          "seed1", FORWARD_FULL_SIZE, "icmp of 1500 bytes, don't fragment, netns0", "mtu_mismatch", uplink_mtu_mismatch, edits_rules=False),
    Fault("stray-publish", "a DNAT publishes a container's service port that the spec does not publish",
          "seed2", DNAT_UNPUBLISHED, "expected to be blocked", "stray_dnat", stray_publish),
    Fault("stray-vip-port", "the VIP chain redirects a port the spec does not declare",
          "seed2", VIP_ONLY, "expected to be blocked", "stray_dnat", stray_vip_port),
    Fault("rp-filter-strict", "replies come back by a second link (asymmetric routing) and the host's rp_filter is strict", "seed1", FORWARD_OUT, "198.51.100.1", "rp_filter_strict", rp_filter_strict,
          kernel="IP_RPFILTER"),
    Fault("dnat-to-localhost", "DNAT to 127.0.0.1 without route_localnet", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000", "route_localnet_off", dnat_to_localhost, kernel="IP_LOCALNET"),
    Fault("udp-dnat-removed", "the PREROUTING DNAT of a published UDP port is gone", "seed1-ports", DNAT_MATRIX, "udp single bind=wildcard from outside", "dnat_missing",
          udp_dnat_removed),
    Fault("localhost-route-localnet-off", "route_localnet = 0 with a port published on 127.0.0.1", "seed1-ports", DNAT_MATRIX, "bind=127.0.0.1 from the host",
          "localhost_publish_route_localnet_off", localhost_route_localnet_off),
    Fault("publish-output-dnat-removed", "the OUTPUT DNAT of a published UDP port is gone: the host cannot reach it, the outside still can", "seed1-ports", DNAT_MATRIX,
          "udp single bind=wildcard from the host", "output_dnat_missing", publish_output_dnat_removed),
    Fault("hairpin-masquerade-removed", "the hairpin MASQUERADE is gone: a container cannot reach its own published port", "seed1-ports", DNAT_MATRIX,
          "netns0 to its own published port", "hairpin_masquerade_missing", hairpin_masquerade_removed),
    Fault("hairpin-mode-off", "the container's bridge port has hairpin mode off: it cannot reach its own published port", "seed1-ports", DNAT_MATRIX,
          "netns0 to its own published port", "hairpin_mode_off", hairpin_mode_off),
    # IPv6 (dual-stack labs): the suite test runs once per family, and only its IPv6 run must fail.
    Fault("ipv6-forwarding-off", "net.ipv6.conf.all.forwarding = 0 while net.ipv4.ip_forward = 1", "seed1-dual", FORWARD_OUT, "2001:db8:2::1", "ip_six_forwarding_off",
          ipv6_forwarding_off),
    Fault("ip6tables-forward-drop", "an ip6tables FORWARD DROP ahead of everything while iptables accepts", "seed1-dual", FORWARD_OUT, "2001:db8:2::1", "forward_drop",
          ip6tables_forward_drop),
    Fault("ipv6-disabled", "disable_ipv6 = 1 on a container's interface", "seed1-dual", FORWARD_OUT, "2001:db8:2::1", "ip_six_disabled", ipv6_disabled, edits_rules=False),
    Fault("ipv6-no-default-route", "a container has no IPv6 default route", "seed1-dual", FORWARD_OUT, "2001:db8:2::1", "no_default_route", ipv6_no_default_route, edits_rules=False),
    Fault("ipv6-dad-duplicate", "duplicate address detection failed: another container holds the address", "seed1-dual", FORWARD_OUT, "2001:db8:2::1", "dad_failed",
          ipv6_dad_duplicate, edits_rules=False),
    Fault("ipv6-subnet-unrouted", "the host has no route to the bridge's IPv6 prefix", "seed1-dual", FORWARD_OUT, "2001:db8:2::1", "host_no_route", ipv6_subnet_unrouted),
    Fault("ipv6-ra-ignored", "forwarding = 1 with accept_ra = 1: the host ignores router advertisements, its RA default route expired", "seed1-dual", FORWARD_OUT,
          "2001:db8:2::1", "ra_ignored_when_forwarding", ipv6_ra_ignored, edits_rules=False),
    Fault("ipv6-udp-dnat-removed", "the ip6tables PREROUTING DNAT of a published UDP port is gone, iptables' stays", "seed1-dual", DNAT_MATRIX,
          "udp single bind=uplink from outside: [2001:db8:1::2]:8053", "dnat_missing", ipv6_udp_dnat_removed),
    Fault("ipv6-dnat-to-localhost", "the IPv6 DNAT of a published port goes to [::1]", "seed1-dual", DNAT_OUTSIDE, "2001:db8:1::2", "dnat_to_loopback_six",
          ipv6_dnat_to_localhost),
    Fault("ipv6-policy-prohibit", "an ip -6 rule prohibits routing from 2001:db8::/32: the replies to the containers are refused", "seed1-dual", FORWARD_OUT,
          "2001:db8:2::1", "blackhole_route", ipv6_policy_prohibit, kernel="IP_INNOROUTES", script=ipv6_policy_prohibit_sh, edits_rules=False),
    # Faults real hosts have (each also as NAME:script, written by an outside script with iptables-nft, nft, ip and sysctl)
    Fault("daemon-chain-drop", "another daemon's chain (a DOCKER-USER), jumped from FORWARD, drops the containers' way out", "seed1", FORWARD_OUT, "198.51.100.1",
          "forward_drop", daemon_chain_drop, kernel="NETFILTER_DROP", script=daemon_chain_drop_sh),
    Fault("forward-reject-first", "a FORWARD REJECT for the containers' subnet stands ahead of the accepts (rule order)", "seed2", FORWARD_OUT, "198.51.100.1",
          "forward_drop", forward_reject_first, script=forward_reject_first_sh),
    Fault("firewall-reload-wipes-nat", "a firewall reload empties the nat table: the MASQUERADE and the DNATs are gone", "seed1", MASQ_OUT, "198.51.100.1",
          "masquerade_missing", firewall_reload_wipes_nat, script=firewall_reload_wipes_nat_sh),
    Fault("masquerade-wrong-oif", "the MASQUERADE says -o br0 where ! -o br0 was meant", "seed1", MASQ_OUT, "198.51.100.1", "masquerade_wrong", masquerade_wrong_oif,
          script=masquerade_wrong_oif_sh),
    Fault("dnat-wrong-dst", "the published port's DNAT matches another destination address (-d) than the host's", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000",
          "dnat_wrong_match", dnat_wrong_dst, script=dnat_wrong_dst_sh),
    Fault("static-neigh-wrong", "a container's static neighbour entry gives its gateway a MAC nobody has", "seed1", FORWARD_OUT, "198.51.100.1", "neigh_wrong",
          static_neigh_wrong, script=static_neigh_wrong_sh),
    Fault("arp-ignore-host", "arp_ignore = 8 on the host's bridge: the host answers no ARP, the gateway never resolves", "seed1", FORWARD_OUT, "198.51.100.1", "arp_ignore",
          arp_ignore_host, script=arp_ignore_host_sh),  # NEIGH_FAILED comes only after ARP gives up (3 s), past the repeat
    Fault("host-blackhole-route", "a blackhole route in the host swallows the forwarded traffic", "seed1", FORWARD_OUT, "198.51.100.1", "blackhole_route",
          host_blackhole_route, script=host_blackhole_route_sh),
    Fault("container-prohibit-route", "a prohibit route in a container refuses its traffic to the outside", "seed1", FORWARD_OUT, "198.51.100.1", "blackhole_route",
          container_prohibit_route, script=container_prohibit_route_sh),
    Fault("split-backend-drop", "a DROP written with iptables-nft beside the lab's rules (the backends split)", "seed1", FORWARD_OUT, "198.51.100.1", "forward_drop",
          split_backend_drop, kernel="NETFILTER_DROP", script=split_backend_drop_sh),
    Fault("ufw-forward-policy-drop", "a firewall daemon's inet table hooks forward with policy drop", "seed1", FORWARD_OUT, "198.51.100.1", "forward_drop",
          ufw_forward_policy_drop, kernel="NETFILTER_DROP", script=ufw_forward_policy_drop_sh),
    Fault("forward-no-return-accept", "FORWARD policy DROP with an accept for the way out only: the replies are dropped", "seed1", FORWARD_OUT, "198.51.100.1",
          "forward_drop", forward_no_return_accept, kernel="NETFILTER_DROP", script=forward_no_return_accept_sh),
    Fault("ipv6-drop-decoy", "IPv6 forwarding dropped (ip6tables, an inet table) beside a removed MASQUERADE: the IPv6 rules must not be blamed", "seed1", MASQ_OUT,
          "198.51.100.1", "masquerade_missing", ipv6_drop_decoy, script=ipv6_drop_decoy_sh, not_blamed=("forward_drop",)),
    Fault("dnat-wrong-iif", "the published port's DNAT is bound to the bridge (-i br0): traffic from outside passes it untranslated", "seed1", DNAT_OUTSIDE,
          "203.0.113.2:5000", "dnat_wrong_match", dnat_wrong_iif, script=dnat_wrong_iif_sh),
    Fault("iface-forwarding-off", "net.ipv4.conf.br0.forwarding = 0 while ip_forward = 1", "seed1", FORWARD_OUT, "198.51.100.1", "forwarding_off", iface_forwarding_off,
          script=iface_forwarding_off_sh),
    Fault("host-default-route-missing", "the host has no default route (a DHCP client or a VPN took it away)", "seed1", FORWARD_OUT, "198.51.100.1", "host_no_route",
          host_default_route_missing, script=host_default_route_missing_sh),
    Fault("docker-icc-off", "a FORWARD DROP from the bridge to itself (Docker's icc=false): containers on one bridge cannot talk", "seed1", BRIDGE_MATRIX, "bridge matrix",
          "forward_drop", docker_icc_off, kernel="NETFILTER_DROP", script=docker_icc_off_sh),
    Fault("stale-conntrack", "a long-lived UDP flow's conntrack entry predates the MASQUERADE rule: the flow stays un-NATed",
          "seed1", MASQ_LONG_LIVED, "203.0.113.1", "stale_conntrack", stale_conntrack),
]}


SCRIPTED = ":script"  # --netcheck-fault NAME:script injects the fault with its outside script


def known(name: str) -> bool:
    """Is ``name`` a fault of the catalog, or NAME:script for one that has a script?"""
    base, scripted, rest = name.partition(SCRIPTED)
    f = FAULTS.get(base)
    return f is not None and not rest and (not scripted or f.script is not None)


def inject(lab: Lab, names: Iterable[str]) -> list[str]:
    """Apply the named faults that make sense for this lab's topology; returns those applied."""
    applied = []
    for name in names:
        base, scripted, _ = name.partition(SCRIPTED)
        try:
            if scripted:
                run_script(lab, FAULTS[base])
            else:
                FAULTS[base].inject(lab)
        except (LookupError, IndexError, StopIteration):
            continue  # the topology lacks what this fault breaks (e.g. no VIP)
        applied.append(name)
    return applied


# ----------------------------------------------------------------------------- cross-host faults
# Each breaks a multi-host lab (netcheck.multihost.lab.MultiLab) between its hosts: the first
# host ("a") is where traffic starts, the second ("b") where it goes. A rule a fault adds is
# recorded in the multi-host lab's ledger first.

NOBODY = IPv4Address("198.51.100.140")  # an underlay address no host holds
CROSS_TTL = "test_cross_host.py::test_ttl_is_as_the_path_implies"
CROSS_MATRIX = "test_cross_host.py::test_every_container_reaches_every_container_on_the_other_host_with_its_source_kept"
CROSS_PMTU = "test_cross_host.py::test_path_mtu_df_probe_at_the_mtu_passes_one_byte_more_gets_frag_needed"


@dataclass(frozen=True)
class CrossHostFault:
    name: str
    summary: str
    topology: str  # the multi-host built-in it is demonstrated on
    suite_test: str
    message: str
    cause: str
    inject: Callable[[MultiLab], None]


def _remote_route(multi: MultiLab) -> tuple[Lab, IPv4Network, str]:
    assert multi.plan is not None
    a = multi.plan.hosts[0]
    r = next(r for r in a.routes if r.host == multi.plan.hosts[1].name)
    return multi.hosts[a.name], r.dst, r.dev


def cross_route_missing(multi: MultiLab) -> None:
    lab, dst, _dev = _remote_route(multi)
    lab.host.deconfigure(routes=[dst])


def cross_route_wrong(multi: MultiLab) -> None:
    lab, dst, dev = _remote_route(multi)
    lab.host.deconfigure(routes=[dst])
    lab.host.configure(routes=[(dst, NOBODY, dev)])


def _fdb(multi: MultiLab, wrong: bool) -> None:
    from netcheck.kernel import rtnl
    from netcheck.multihost.lab import send

    assert multi.plan is not None
    a = multi.plan.hosts[0]
    host = multi.hosts[a.name].host
    index = host.link_index(a.vxlan or "")
    assert index is not None
    entry = a.fdb[0]
    send(host, lambda _sock: [rtnl.fdb(index, entry.mac, entry.dst, delete=True), *([rtnl.fdb(index, entry.mac, NOBODY)] if wrong else [])])


def vxlan_fdb_missing(multi: MultiLab) -> None:
    _fdb(multi, wrong=False)


def vxlan_fdb_wrong(multi: MultiLab) -> None:
    _fdb(multi, wrong=True)


def _remake_b(multi: MultiLab, **change: int) -> None:
    assert multi.plan is not None
    b = multi.plan.hosts[1]
    multi.hosts[b.name].host.delete_link(b.vxlan or "")  # its routes go with it; make_join adds them again
    multi.make_join(b, **change)


def vxlan_vni_mismatch(multi: MultiLab) -> None:
    _remake_b(multi, vni=multi.topology.join.vni + 1)


def vxlan_port_mismatch(multi: MultiLab) -> None:
    _remake_b(multi, port=multi.topology.join.port + 1)


def overlay_mtu_black_hole(multi: MultiLab) -> None:
    """The underlay toward host b carries less than the overlay was sized for (1400 < 1450 + 50), and says nothing."""
    assert multi.plan is not None and multi.underlay is not None
    multi.underlay.set_link(multi.plan.hosts[1].port, mtu=1400)


def _cross_rule(multi: MultiLab, index: int, rule: XRule) -> None:
    from netcheck.ledger import RuleEntry

    assert multi.plan is not None and multi.ledger is not None
    host = multi.hosts[multi.plan.hosts[index].name].host
    multi.ledger.record(RuleEntry(host.name, rule, "legacy"))
    apply_rules(host, [rule], insert=True)


def frag_needed_dropped(multi: MultiLab) -> None:
    subnet = multi.topology.hosts[0].subnets[0]
    _cross_rule(multi, 0, XRule("filter", "OUTPUT", "DROP", protocol="icmp", dst=str(subnet), comment=f"netcheck {multi.tag}"))


def masquerade_between_hosts(multi: MultiLab) -> None:
    subnet = multi.topology.hosts[0].subnets[0]
    _cross_rule(multi, 0, XRule("nat", "POSTROUTING", "MASQUERADE", src=str(subnet), comment=f"netcheck {multi.tag}"))


def rp_filter_decap(multi: MultiLab) -> None:
    """Host b checks sources strictly, and its route back to a's containers is a stale host-gw one (via the underlay)."""
    assert multi.plan is not None
    a, b = multi.plan.hosts
    host = multi.hosts[b.name].host
    for key in ("all", b.vxlan or b.uplink):
        host.set_sysctl(f"net.ipv4.conf.{key}.rp_filter", 1)
    for r in (r for r in b.routes if r.host == a.name):
        host.deconfigure(routes=[r.dst])
        host.configure(routes=[(r.dst, a.underlay.ip, b.uplink)])


def underlay_udp_blocked(multi: MultiLab) -> None:
    _cross_rule(multi, 1, XRule("filter", "INPUT", "DROP", protocol="udp", dport=multi.topology.join.port, comment=f"netcheck {multi.tag}"))


CROSS_HOST_FAULTS: dict[str, CrossHostFault] = {f.name: f for f in [
    CrossHostFault("cross-route-missing", "host a has no route to host b's container subnet", "two-hosts-routed", CROSS_TTL, "unreachable", "cross_route_missing", cross_route_missing),
    CrossHostFault("cross-route-wrong", "host a routes b's subnet via an underlay address nobody holds", "two-hosts-routed", CROSS_TTL, "unreachable", "cross_route_wrong", cross_route_wrong),
    CrossHostFault("vxlan-fdb-missing", "host a's vxlan device has no fdb entry for b's VTEP", "two-hosts-vxlan", CROSS_TTL, "unreachable", "vxlan_fdb_missing", vxlan_fdb_missing),
    CrossHostFault("vxlan-fdb-wrong", "host a's fdb entry for b's VTEP points at another underlay address", "two-hosts-vxlan", CROSS_TTL, "unreachable", "vxlan_fdb_wrong", vxlan_fdb_wrong),
    CrossHostFault("vxlan-vni-mismatch", "host b's vxlan device has another VNI", "two-hosts-vxlan", CROSS_TTL, "unreachable", "vxlan_vni_mismatch", vxlan_vni_mismatch),
    CrossHostFault("vxlan-port-mismatch", "host b's vxlan device listens on another UDP port", "two-hosts-vxlan", CROSS_TTL, "unreachable", "vxlan_port_mismatch", vxlan_port_mismatch),
    CrossHostFault("overlay-mtu-black-hole", "the underlay toward b carries 1400 bytes, less than the overlay's 1450 + 50: big packets vanish", "two-hosts-vxlan", CROSS_PMTU,
                   "no answer (no reply, no fragmentation-needed)", "mtu_black_hole", overlay_mtu_black_hole),
    CrossHostFault("frag-needed-dropped", "host a's OUTPUT drops ICMP to its containers, fragmentation-needed included", "two-hosts-routed", CROSS_PMTU,
                   "no answer (no reply, no fragmentation-needed)", "frag_needed_dropped", frag_needed_dropped),
    CrossHostFault("masquerade-between-hosts", "host a masquerades its containers' traffic to host b too", "two-hosts-vxlan", CROSS_MATRIX,
                   "masqueraded between the hosts", "masquerade_between_hosts", masquerade_between_hosts),
    CrossHostFault("rp-filter-decap", "host b's strict rp_filter drops decapsulated packets (its route back leaves by the underlay)", "two-hosts-vxlan", CROSS_TTL,
                   "unreachable", "rp_filter_decap", rp_filter_decap),
    CrossHostFault("underlay-udp-blocked", "host b's INPUT drops UDP 4789, the VXLAN datagrams", "two-hosts-vxlan", CROSS_TTL, "unreachable", "underlay_udp_blocked", underlay_udp_blocked),
]}


__all__ = ["CROSS_HOST_FAULTS", "FAULTS", "LONG_LIVED_UDP_PORT", "SCRIPTED", "CrossHostFault", "Fault", "IPv4Address", "inject", "known", "rewrite_rule", "run_script"]
