"""Realise a lab: the base (host, outside world, uplink), then the network, then the services.

Every kernel object is recorded in the lab's ledger before the step that makes it. The
network between the host and its containers is a ``Network``: ``SpecNetwork`` builds the one
the spec declares; netcheck.adapters has another tool make it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from netcheck import resolvconf, spec
from netcheck.kernel.netns import Netns, VethSpec
from netcheck.kernel.xtables import BUILTIN_CHAINS, XRule, apply_rules, nft_missing
from netcheck.lab.errors import LabError
from netcheck.lab.plan import DEFAULT_ROUTE, ECHO_PORT, ContainerPlan, Plan, plan
from netcheck.lab.plan import base as plan_base
from netcheck.ledger import ChainEntry, EmptyDirEntry, FileEntry, NftChainEntry, NftTableEntry, RuleEntry
from netcheck.services import ServiceHost

if TYPE_CHECKING:
    from netcheck.lab.lab import Lab

# The wan end of the uplink gets an ifindex of its own: a veth whose ifindex equals its
# peer's (2 and 2 in two new namespaces) has its operstate updated up to a second late.
WAN_UPLINK_INDEX = 0x6E63


class Network(Protocol):
    """What makes the network between a lab's host and its containers."""

    def host_names(self, lab: Lab) -> dict[str, str]:
        """Spec name -> kernel name of the host-side interfaces known before the network is made."""

    def host_sysctls(self, lab: Lab) -> dict[str, int]:
        """The sandbox host's sysctls before the network is made."""

    def make(self, lab: Lab) -> None:
        """Make the network (recording every object first); set ``lab.rules``."""


class SpecNetwork:
    """The network the spec declares: bridges, containers, their routes and the host's rules."""

    def __init__(self, topology: spec.Topology) -> None:
        self.topology = topology

    def host_names(self, lab: Lab) -> dict[str, str]:
        return lab.names.host_interfaces(self.topology)

    def host_sysctls(self, lab: Lab) -> dict[str, int]:
        return {"net.ipv4.ip_forward": 0, **dict(self.topology.host.sysctls)}

    def make(self, lab: Lab) -> None:
        p = plan(self.topology, lab.names)
        bridges(lab, p)
        containers(lab, p.containers)
        hairpins(lab, p.containers)
        resolv_confs(lab, p.containers)
        lab.rules = list(p.installed)
        if self.topology.host.firewall == "nft":
            native_rules(lab, p.rules)
        else:
            rules(lab, p.rules)


def base(lab: Lab, network: Network) -> None:
    """The host and the outside world: namespaces, uplink, sysctls, the host's routes."""
    p = plan_base(lab.topology, lab.names)
    lab.host = lab.mode.open_host(lab, network.host_sysctls(lab))
    lab.wan = lab.new_namespace(p.wan_ns, "wan")
    lab.wan.set_sysctl("net.ipv4.ip_forward", 0)

    # uplink: host <-> wan, documentation addresses; "remote" addresses live on wan's lo.
    group = lab.link(lab.host, p.uplink)
    lab.wan.add_veths([VethSpec(p.wan_uplink, p.uplink, lab.host, up=False, index=WAN_UPLINK_INDEX, peer_group=group)])
    lab.host.configure(up=[p.uplink], addresses=[(p.uplink, p.host_address), *p.host_addresses6])
    lab.wan.configure(up=[p.wan_uplink], addresses=p.wan_addresses)
    lab.host.wait_links_up([p.uplink])
    lab.wan.wait_links_up([p.wan_uplink])
    lab.mode.route_host(lab)
    if p.wan_routes:
        lab.wan.configure(routes=[(dst, via, None) for dst, via in p.wan_routes])


def bridges(lab: Lab, p: Plan) -> None:
    for b in p.bridges:
        lab.host.add_bridge(b.kname, group=lab.link(lab.host, b.kname))
        addresses = [(b.kname, a) for a in (b.address, b.address6) if a is not None]
        lab.host.configure(up=[b.kname], addresses=addresses)


def containers(lab: Lab, planned: Sequence[ContainerPlan]) -> None:
    """Containers in batches, not one netlink round trip after another.

    1. their namespaces, made a few at a time (each sets its defaults in its own thread);
    2. every veth pair in one netlink batch from the host, each born up and enslaved to its
       bridge, its peer born in the container;
    3. each container's link up, address and routes, by its own thread, all containers at once;
    4. one bounded wait until every host-side veth is up.
    Every object is recorded before the step that makes it.
    """
    if not planned:
        return
    spaces = lab.new_namespaces([(c.netns, c.name) for c in planned])
    for c, ns in zip(planned, spaces, strict=True):
        lab.containers[c.name] = ns
    index = {b: lab.host.link_index(b) for b in {c.bridge for c in planned if c.bridge}}
    pairs = [VethSpec(c.host_veth, c.interface, lab.containers[c.name], master=index[c.bridge] if c.bridge else None, group=lab.link(lab.host, c.host_veth), mtu=c.mtu)
             for c in planned]
    lab.host.add_veths(pairs)
    routed = [(c.host_veth, c.host_address) for c in planned if c.host_address is not None]
    if routed:
        lab.host.configure(addresses=routed)
    jobs = [lab.containers[c.name].submit(_configure_container, lab.containers[c.name], c) for c in planned]
    errors = [e for e in (job.exception(timeout=60) for job in jobs) if e is not None]
    if errors:
        raise errors[0]
    lab.host.wait_links_up([v.name for v in pairs])


def hairpins(lab: Lab, planned: Sequence[ContainerPlan]) -> None:
    """Hairpin mode on the bridge port of each container that reaches its own published port (a ``hairpin = true`` publish):
    the DNATed request goes back out by the port it came in by. The port goes with its veth at teardown."""
    for c in planned:
        if c.hairpin and c.bridge is not None:
            lab.host.set_hairpin(c.host_veth)


def resolv_confs(lab: Lab, planned: Sequence[ContainerPlan], root: Path = resolvconf.ETC_NETNS) -> None:
    """Each container's /etc/netns/NETNS/resolv.conf, as seed 2 writes it: ``ip netns exec`` bind-mounts
    it over /etc/resolv.conf, and netcheck's probes read it (netcheck.resolvconf). Every folder and
    file is recorded before it exists; undo removes exactly those paths."""
    assert lab.ledger is not None
    wanted = [c for c in planned if c.resolv_conf is not None]
    if not wanted:
        return
    if not root.is_dir():
        lab.ledger.record(EmptyDirEntry(str(root), shared=True))
        root.mkdir(mode=0o755, exist_ok=True)
    for c in wanted:
        folder, path = resolvconf.netns_dir(c.netns, root), resolvconf.path_for(c.netns, root)
        lab.ledger.record(EmptyDirEntry(str(folder)))
        try:
            folder.mkdir(mode=0o755)
        except FileExistsError:
            raise LabError(f"{folder} exists already (a leftover of a crashed run? try: netcheck clean); netcheck writes its own there for {c.name}") from None
        lab.ledger.record(FileEntry(str(path)))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(c.resolv_conf or "")


def rules(lab: Lab, wanted: Sequence[XRule]) -> None:
    """The rules and the custom chains they need (a VIP's), recorded first, so teardown removes
    them too; chains the host has already are left alone."""
    assert lab.ledger is not None
    t, host = lab.topology, lab.host
    backend = lab.mode.firewall(host)
    chains = sorted({(r.table, r.chain) for r in wanted if r.chain not in BUILTIN_CHAINS.get(r.table, ())})
    existing = lab.mode.chains_held(host, chains, backend)
    if backend == "nft":
        # iptables-nft brings base chains (and tables) into being; record those it will add.
        new_tables, new_chains = nft_missing(host, sorted({(r.table, r.chain) for r in wanted if r.chain in BUILTIN_CHAINS.get(r.table, ())}))
        for table in new_tables:
            lab.ledger.record(NftTableEntry(host.name, table))
        for table, name in new_chains:
            lab.ledger.record(NftChainEntry(host.name, table, name))
    for table, name in chains:
        if (table, name) not in existing:
            lab.ledger.record(ChainEntry(host.name, table, name, backend))
    for rule in wanted:
        lab.ledger.record(RuleEntry(host.name, rule, backend))
    policies = lab.mode.forward_policies(t)
    if wanted or policies:
        apply_rules(host, wanted, policies, backend=backend)


def native_rules(lab: Lab, wanted: Sequence[XRule]) -> None:
    """``firewall = "nft"``: the rules (and the FORWARD policy) as native nft tables of the lab's
    own, each recorded before the one transaction that makes them; teardown deletes them."""
    from netcheck.kernel import nft

    ledger = lab.ledger
    assert ledger is not None
    host = lab.host

    def record(tables: list[nft.NftTable]) -> None:
        for table in tables:
            ledger.record(NftTableEntry(host.name, table.name, table.family, owned=True))

    nft.apply(host, lab.names.tag, wanted, lab.mode.forward_policies(lab.topology), before=record)


def services(lab: Lab) -> ServiceHost:
    """Every container's declared services and echo responders, and echo responders in the
    outside world (so a probe can learn the source it saw: masquerade). Closed at teardown."""
    held = ServiceHost()
    lab.on_teardown(held.close)
    for c in lab.topology.containers:
        serve_container(held, lab, c)
    for address in _wildcards(lab):
        for kind in ("tcp-echo", "udp-echo"):
            held.listen(lab.wan, "wan", kind, ECHO_PORT, address)
    if lab.topology.dns is not None:
        held.listen_dns(lab.wan, "wan", str(lab.topology.dns.address), lab.topology.dns.zone())
    return held


def serve_container(held: ServiceHost, lab: Lab, c: spec.Container) -> None:
    """One container's declared services and echo responders, in its namespace (again, after it got a new one)."""
    ns = lab.containers[c.name]
    wildcards = _wildcards(lab)
    for address in wildcards if c.address6 is not None else wildcards[:1]:
        for s in c.services:
            # Where the user's own setup already serves the port (a script's http.server), probe that service.
            held.listen(ns, c.name, s.kind, s.port, address, users_may_serve=True)
        for kind in ("tcp-echo", "udp-echo"):
            held.listen(ns, c.name, kind, ECHO_PORT, address)


def _wildcards(lab: Lab) -> tuple[str, ...]:
    # A dual-stack lab serves every service on "::" too (IPv6 only: IPv4 peers keep their listener).
    return ("0.0.0.0", "::") if 6 in lab.topology.families else ("0.0.0.0",)


def ns_defaults(ns: Netns, ipv6: bool = False) -> None:
    """Explicit defaults for a new namespace (it copies some settings from the root one); in its thread.

    IPv6 stays off unless the topology declares it. When it does, duplicate address detection is
    off before any link exists (``accept_dad = 0``; netcheck's own addresses are added NODAD too):
    every address of the sandbox is netcheck's own, so none is ever "tentative" and nothing waits on DAD.
    """
    for scope in ("all", "default"):
        if ipv6:
            ns.set_sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)
        ns.set_sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", 0 if ipv6 else 1)
    ns.configure(up=["lo"])


def _configure_container(ns: Netns, c: ContainerPlan) -> None:
    """A container's address and routes, then a bounded wait for its links; in its namespace's thread."""
    addresses = [(c.interface, a) for a in (c.address, c.address6) if a is not None]
    ns.configure(up=[c.interface], addresses=addresses, routes=[(dst, via, None) for dst, via in c.routes])
    ns.wait_links_up([c.interface, "lo"])


__all__ = ["DEFAULT_ROUTE", "WAN_UPLINK_INDEX", "Network", "SpecNetwork", "base", "bridges", "containers", "native_rules", "ns_defaults", "resolv_confs", "rules", "services"]
