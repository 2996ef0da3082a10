"""Discovery: read back what a tool made, and resolve the spec's 'auto' values from it.

For each container: its interface (by the spec's name), the address on it, its default route,
the veth peer in the host namespace (matched by ifindex both ways and by the peer's netnsid),
the bridge that peer is a port of, and the bridge's address. Every mismatch with what the spec
declares by name (a bridge, a host-side veth) is an error that names both; declared addresses
are left to the suites, which report them as failed checks.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, Any

from netcheck import spec
from netcheck.kernel.netns import Link
from netcheck.kernel.worker import netns_path
from netcheck.kernel.xtables import XChain, read_nft_chains
from netcheck.lab import LabError

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab


@dataclass(frozen=True)
class Found:
    """One container as the kernel has it."""

    container: str
    netns: str
    interface: str
    address: IPv4Interface
    gateway: IPv4Address | None
    host_veth: str  # kernel name in the host namespace
    bridge: str | None  # kernel name of the bridge the host veth is a port of


@dataclass(frozen=True)
class Discovery:
    topology: spec.Topology  # the spec with every 'auto' resolved
    knames: dict[str, str]  # spec interface name -> kernel name, for bridges and host-side veths
    containers: tuple[Found, ...]
    bridges: dict[str, IPv4Interface | None] = field(default_factory=dict)
    rules: tuple[XChain, ...] = ()  # the host's nf_tables chains after the tool ran (iptables-nft, nft)

    def as_dict(self) -> dict[str, Any]:
        return {
            "containers": [
                {"name": f.container, "netns": f.netns, "interface": f.interface, "address": str(f.address),
                 "gateway": str(f.gateway) if f.gateway else None, "host_veth": f.host_veth, "bridge": f.bridge}
                for f in self.containers
            ],
            "bridges": {k: (str(v) if v else None) for k, v in self.bridges.items()},
            "rules": [r.render() for c in self.rules for r in c.rules],
        }


def _one_address(name: str, iface: str, addrs: list[IPv4Interface]) -> IPv4Interface:
    if len(addrs) != 1:
        shown = ", ".join(map(str, addrs)) or "none"
        raise LabError(f"container {name}: address = \"auto\" needs exactly one IPv4 address on {iface}; it has {shown} (write the address in the spec)")
    return addrs[0]


def find_container(lab: ExternalLab, c: spec.Container, host_links: dict[int, Link], nsids: dict[int, int]) -> Found:
    """Locate one container's interface, address, route and host-side veth."""
    ns = lab.container_ns(c.name)
    links = ns.links()
    inner = next((link for link in links if link.name == c.interface), None)
    if inner is None:
        names = ", ".join(sorted(link.name for link in links))
        raise LabError(f"container {c.name}: no interface {c.interface!r} in its namespace {ns.path} (it has: {names}); set interface = \"...\" in the spec")
    if inner.kind != "veth" or inner.peer_index is None:
        raise LabError(f"container {c.name}: {c.interface} is a {inner.kind}, not a veth; netcheck validates containers attached by a veth pair")
    outer = host_links.get(inner.peer_index)
    if outer is None or outer.kind != "veth" or outer.peer_index != inner.index:
        raise LabError(f"container {c.name}: the peer of {c.interface} (ifindex {inner.peer_index}) is not a veth of the host namespace; is the container attached to another host?")
    peer_inode = nsids.get(outer.peer_netnsid) if outer.peer_netnsid is not None else None
    if peer_inode is not None and peer_inode != os.stat(ns.path).st_ino:
        raise LabError(f"container {c.name}: host veth {outer.name} leads to another namespace (nsid {outer.peer_netnsid}) than {ns.path}")
    addrs = [a.address for a in ns.addresses() if a.interface == c.interface and isinstance(a.address, IPv4Interface)]
    address = c.address if c.address is not None else _one_address(c.name, c.interface, addrs)
    gateway = c.gateway
    if "gateway" in c.auto:
        default = [r.gateway for r in ns.routes() if r.dst.prefixlen == 0 and isinstance(r.gateway, IPv4Address)]
        gateway = default[0] if default else None
    master = host_links.get(outer.master) if outer.master else None
    bridge = master.name if master is not None and master.kind == "bridge" else None
    return Found(c.name, ns.name or ns.path, c.interface, address, gateway, outer.name, bridge)


def _netns_ids(lab: ExternalLab) -> dict[int, int]:
    """nsid -> namespace inode, as the host namespace numbers the namespaces its veths lead to
    (only those iproute2 can name through /run/netns; the ifindex match covers the rest)."""
    proc = lab.host.run(["ip", "-j", "netns", "list-id"], timeout=20)
    if proc.returncode != 0:
        return {}
    try:
        rows = json.loads(proc.stdout.decode() or "[]")
    except ValueError:
        return {}
    out = {}
    for r in rows:
        with contextlib.suppress(KeyError, OSError, ValueError):
            out[int(r["nsid"])] = os.stat(netns_path(str(r["name"]))).st_ino
    return out


def discover(lab: ExternalLab) -> Discovery:
    """Read back every container and bridge, and return the spec with its 'auto' values resolved."""
    t = lab.declared
    host_links = {link.index: link for link in lab.host.links()}
    found = [find_container(lab, c, host_links, _netns_ids(lab)) for c in t.containers]
    knames: dict[str, str] = {}
    containers = []
    for c, f in zip(t.containers, found, strict=True):
        if c.host_veth and c.host_veth != f.host_veth:
            raise LabError(f"container {c.name}: its host-side veth is {f.host_veth}, the spec says host_veth = {c.host_veth!r} (fix the spec, or leave host_veth out to read it back)")
        if c.bridge is not None and f.bridge != c.bridge:
            seen = f"a port of bridge {f.bridge}" if f.bridge else "on no bridge"
            raise LabError(f"container {c.name}: its host-side veth {f.host_veth} is {seen}, the spec says bridge = {c.bridge!r}")
        if c.bridge is None and f.bridge is not None:
            raise LabError(f"container {c.name}: its host-side veth {f.host_veth} is a port of bridge {f.bridge}; declare [[bridge]] name = \"{f.bridge}\" and bridge = \"{f.bridge}\"")
        spec_veth = c.host_veth or f.host_veth
        knames[spec_veth] = f.host_veth
        containers.append(replace(c, address=f.address, gateway=f.gateway, host_veth=spec_veth))
    bridges = []
    addresses: dict[str, IPv4Interface | None] = {}
    by_name = {link.name: link for link in host_links.values()}
    host_addrs = lab.host.addresses()
    for b in t.bridges:
        link = by_name.get(b.name)
        if link is None or link.kind != "bridge":
            bridge_names = ", ".join(sorted(x.name for x in host_links.values() if x.kind == "bridge")) or "none"
            raise LabError(f"bridge {b.name}: the host namespace has no bridge of that name after the {t.setup.mode} setup (its bridges: {bridge_names})")
        knames[b.name] = link.name
        address = b.address
        if "address" in b.auto:
            have = [a.address for a in host_addrs if a.interface == b.name and isinstance(a.address, IPv4Interface)]
            if len(have) != 1:
                raise LabError(f"bridge {b.name}: address = \"auto\" needs exactly one IPv4 address on it; it has {', '.join(map(str, have)) or 'none'}")
            address = have[0]
        addresses[b.name] = address
        bridges.append(replace(b, address=address))
    rules: tuple[XChain, ...] = ()
    try:
        rules = tuple(read_nft_chains(lab.host))
    except Exception:  # noqa: BLE001 - the rules are context for the report, not a requirement
        rules = ()
    resolved = replace(t, containers=tuple(containers), bridges=tuple(bridges))
    return Discovery(resolved, knames, tuple(found), addresses, rules)


__all__ = ["Discovery", "Found", "discover", "find_container"]
