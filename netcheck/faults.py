"""Faults: named, deliberate breakages of a built lab, each with the suite test it must fail.

The fault tests, the diagnosis corpus and ``--netcheck-fault NAME`` share this catalog, so a
user can see exactly what a failure and its diagnosis look like.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import resolvconf
from netcheck.kernel import nft
from netcheck.kernel.netns import VethSpec
from netcheck.kernel.xtables import XRule, apply_rules, delete_rules, nft_chains, read_nft, set_policy
from netcheck.ledger import LinkEntry, NftTableEntry, SysctlEntry

if TYPE_CHECKING:
    from netcheck.lab import Lab

DEFAULT = IPv4Network("0.0.0.0/0")


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


def _first(lab: Lab) -> str:
    return lab.topology.containers[0].name


def _second(lab: Lab) -> str:
    return lab.topology.containers[1].name


def _rule(lab: Lab, chain: str, target: str | None = None) -> XRule:
    for r in lab.rules:
        if r.chain == chain and (target is None or r.target == target):
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

MASQ_LONG_LIVED = "test_masquerade.py::test_a_long_lived_udp_flow_is_masqueraded"


def stale_conntrack(lab: Lab) -> None:
    """A long-lived UDP flow began while the MASQUERADE rule was missing (a firewall reload), then the rule came
    back: the flow's conntrack entry keeps its first, un-NATed decision (conntrack NATs a flow at its first packet)."""
    import socket

    from netcheck.kernel.inspect import conntrack
    from netcheck.lifecycle import LONG_LIVED_UDP_PORT
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



FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("veth-down", "the host side of a container's veth is down", "seed1", VETH_ENDS, "veth0", "link_down", veth_down),
    Fault("container-iface-down", "a container's own interface is down", "seed1", BRIDGE_MATRIX, "bridge matrix", "link_down", iface_down),
    Fault("lo-down", "a container's lo is down", "seed1", VETH_LO, "127.0.0.1", "lo_down", lo_down, kernel="QDISC_DROP"),
    Fault("detached-from-bridge", "a container's veth is not attached to the bridge", "seed1", BRIDGE_MATRIX, "bridge matrix", "not_in_bridge", detach),
    Fault("ip-forward-off", "net.ipv4.ip_forward = 0 in the host", "seed1", FORWARD_OUT, "198.51.100.1", "ip_forward_off", ip_forward_off, kernel="IP_INADDRERRORS"),
    Fault("no-default-route", "a container has no default route", "seed1", FORWARD_OUT, "198.51.100.1", "no_default_route", no_default_route),
    Fault("wrong-gateway", "a container's default route points at an address nobody has", "seed1", FORWARD_OUT, "198.51.100.1", "wrong_gateway", wrong_gateway),
    Fault("masquerade-removed", "the MASQUERADE rule is gone", "seed1", MASQ_OUT, "198.51.100.1", "masquerade_missing", masquerade_removed),
    Fault("masquerade-wrong-source", "MASQUERADE matches the wrong source subnet", "seed1", MASQ_OUT, "198.51.100.1", "masquerade_wrong", masquerade_wrong_source),
    Fault("dnat-removed", "the PREROUTING DNAT of the published port is gone", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000", "dnat_missing", dnat_removed),
    Fault("dnat-wrong-port", "the DNAT sends the published port to the wrong container port", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000", "dnat_wrong", dnat_wrong_port),
    Fault("output-dnat-missing", "the OUTPUT DNAT is gone: reachable from outside, not from the host", "seed1", DNAT_HOST, "203.0.113.2:5000", "output_dnat_missing", output_dnat_missing),
    Fault("vip-not-jumped-from-output", "OUTPUT does not jump to the VIP chain", "seed2", VIP_HOST, "10.100.100.100:8080", "vip_not_jumped", vip_not_jumped_from_output, kernel="IP_INADDRERRORS"),
    Fault("forward-drop", "FORWARD policy DROP with bridge-nf-call-iptables=1", "seed1", BRIDGE_MATRIX, "bridge matrix", "forward_drop", forward_drop, kernel="NETFILTER_DROP"),
    Fault("forward-drop-rule", "a FORWARD DROP rule ahead of the accepts", "seed2", FORWARD_OUT, "198.51.100.1", "forward_drop", forward_drop_rule, kernel="NETFILTER_DROP"),
    Fault("second-container-answers", "the published port is answered by another container", "seed1", DNAT_OUTSIDE, "wrong-target", "dnat_wrong", second_container_answers),
    Fault("host-link-in-container", "a container sees a link that is not its own", "seed1", ISO_LINKS, "hostlink0", "extra_link", host_link_in_container),
    Fault("bridge-floods", "the bridge forgets MACs at once (ageing 0) and floods every frame", "seed1", ISO_FRAMES, "must never appear", "bridge_flooding", bridge_floods),
    Fault("route-localnet-exposed", "route_localnet=1 and a DNAT to 127.0.0.1 expose the host's loopback", "seed1", ISO_LOOPBACK, "loopback service", "route_localnet_exposed", route_localnet_exposed),
    Fault("br-netfilter-off", "bridge-nf-call-iptables=0: a same-bridge DNAT reply skips the un-NAT", "seed1", DNAT_PATHS, "203.0.113.2:5000", "br_netfilter_off", br_netfilter_off,
          kernel="NO_SOCKET"),
    Fault("no-service", "nothing listens on the published port in the container", "seed1", DNAT_OUTSIDE, "connection refused", "no_listener", no_service, kernel="NO_SOCKET"),
    Fault("wrong-prefix", "a container's address has the wrong prefix length", "seed1", BRIDGE_MATRIX, "bridge matrix", "wrong_prefix", wrong_prefix),
    Fault("address-conflict", "two containers hold the same address", "seed1", BRIDGE_ARP, "ARP", "address_conflict", address_conflict),
    Fault("resolv-conf-missing", "a container's /etc/netns/NAME/resolv.conf is never written (seed 2's echo | tee typo)", "seed2", DNS_CONF, "is missing",
          "resolv_conf_missing", resolv_conf_missing),
    Fault("nameserver-loopback", "a container's resolv.conf names the host's stub resolver 127.0.0.53", "seed2", DNS_CONF, "resolv.conf says",
          "nameserver_loopback", nameserver_loopback),
    Fault("dns-search-wrong", "a container's search domain sends a short name to the wrong zone", "seed2", DNS_NAMES, "the spec says", "search_wrong", search_wrong),
    Fault("dns-udp-dropped", "FORWARD drops UDP/53; TCP/53 passes", "seed2", DNS_ANSWERS, "dns/udp", "dns_udp_blocked", dns_udp_dropped),
    Fault("dns-wrong-answer", "the resolver answers a declared name with another address", "seed2", DNS_NAMES, "the spec says", "dns_wrong_answer", dns_wrong_answer),
    Fault("dns-masquerade-removed", "no MASQUERADE: DNS queries leave with the container's private source", "seed2", DNS_MASQ, "203.0.113.53",
          "masquerade_missing", masquerade_removed),
    Fault("uplink-down", "the host's uplink is down", "seed1", FORWARD_OUT, "198.51.100.1", "link_down", uplink_down, kernel="IP_INNOROUTES"),
    Fault("mtu-mismatch", "the two ends of a veth have different MTUs", "seed1", VETH_ENDS, "MTU", "mtu_mismatch", mtu_mismatch),
    Fault("stray-publish", "a DNAT publishes a container's service port that the spec does not publish",
          "seed2", DNAT_UNPUBLISHED, "expected to be blocked", "stray_dnat", stray_publish),
    Fault("stray-vip-port", "the VIP chain redirects a port the spec does not declare",
          "seed2", VIP_ONLY, "expected to be blocked", "stray_dnat", stray_vip_port),
    Fault("rp-filter-strict", "replies come back by a second link (asymmetric routing) and the host's rp_filter is strict", "seed1", FORWARD_OUT, "198.51.100.1", "rp_filter_strict", rp_filter_strict,
          kernel="IP_RPFILTER"),
    Fault("dnat-to-localhost", "DNAT to 127.0.0.1 without route_localnet", "seed1", DNAT_OUTSIDE, "203.0.113.2:5000", "route_localnet_off", dnat_to_localhost, kernel="IP_LOCALNET"),
    Fault("stale-conntrack", "a long-lived UDP flow's conntrack entry predates the MASQUERADE rule: the flow stays un-NATed",
          "seed1", MASQ_LONG_LIVED, "203.0.113.1", "stale_conntrack", stale_conntrack),
]}


def inject(lab: Lab, names: Iterable[str]) -> list[str]:
    """Apply the named faults that make sense for this lab's topology; returns those applied."""
    applied = []
    for name in names:
        try:
            FAULTS[name].inject(lab)
        except (LookupError, IndexError, StopIteration):
            continue  # the topology lacks what this fault breaks (e.g. no VIP)
        applied.append(name)
    return applied


__all__ = ["FAULTS", "Fault", "IPv4Address", "inject"]
