"""Generated topologies for scale, made in code: N containers on one bridge, and H hosts of N
containers each joined by a VXLAN overlay (flannel's vxlan backend).

>>> t = bridge_topology(3)
>>> [str(c.address) for c in t.containers]
['10.200.0.10/16', '10.200.0.11/16', '10.200.0.12/16']
>>> m = vxlan_hosts(3, 2)
>>> [(h.name, str(h.underlay), [str(n) for n in h.subnets]) for h in m.hosts]
[('h0', '198.51.100.129/25', ['10.244.1.0/24']), ('h1', '198.51.100.130/25', ['10.244.2.0/24']), ('h2', '198.51.100.131/25', ['10.244.3.0/24'])]
>>> [str(c.address) for c in m.hosts[2].topology.containers]
['10.244.3.10/24', '10.244.3.11/24']
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from netcheck import spec as host_spec
from netcheck.multihost import spec as multi_spec

SUBNET = IPv4Network("10.200.0.0/16")
FIRST_HOST = 10  # container i gets 10.200.0.0 + FIRST_HOST + i
MAX_CONTAINERS = 1000


def bridge_topology(n: int, *, name: str | None = None, forward_policy: Literal["ACCEPT", "DROP"] = "ACCEPT") -> host_spec.Topology:
    """``n`` containers (c0, c1, ...) on br0 (10.200.0.1/16), with bridge-nf-call-iptables=1.

    The host's FORWARD chain therefore sees bridged traffic: a DROP policy or rule there
    isolates containers of the same bridge, which is what the isolation matrix checks.
    """
    if not 2 <= n <= MAX_CONTAINERS:
        raise ValueError(f"bridge_topology({n}): use from 2 to {MAX_CONTAINERS} containers")
    gateway = SUBNET.network_address + 1
    containers = tuple(
        host_spec.Container(
            name=f"c{i}", interface="eth0", address=IPv4Interface(f"{SUBNET.network_address + FIRST_HOST + i}/{SUBNET.prefixlen}"),
            host_veth=f"veth{i}", bridge="br0", gateway=gateway,
        )
        for i in range(n)
    )
    return host_spec.Topology(
        name=name or f"scale{n}",
        summary=f"{n} containers on one bridge (generated)",
        source=f"<netcheck.scale.bridge_topology({n})>",
        host=host_spec.Host(
            uplink="eth0", address=IPv4Interface("203.0.113.2/24"), gateway=IPv4Address("203.0.113.1"),
            sysctls=(("net.ipv4.ip_forward", 1), ("net.bridge.bridge-nf-call-iptables", 1)), forward_policy=forward_policy,
        ),
        wan=host_spec.Wan(address=IPv4Interface("203.0.113.1/24"), remote=(IPv4Interface("198.51.100.1/32"),)),
        bridges=(host_spec.Bridge("br0", IPv4Interface(f"{gateway}/{SUBNET.prefixlen}")),),
        containers=containers,
    )


MAX_HOSTS = 100  # the underlay is a /25 (198.51.100.128/25) and host i holds 10.244.(i+1).0/24
MAX_PER_HOST = 240  # container k of a host gets .10 + k of its /24
VXLAN_VNI, VXLAN_MTU = 42, 1450


def vxlan_hosts_toml(hosts: int, per_host: int, *, name: str | None = None) -> str:
    """The spec (TOML, as a user would write it) of ``vxlan_hosts(hosts, per_host)``.

    Each host is ``bridge_topology``'s host (bridge-nf-call-iptables=1, FORWARD ACCEPT, no rules),
    so that a lab of H hosts and one of H x N containers on one host differ only in the hosts
    and the overlay: host i (h0, h1, ...) has br0 10.244.(i+1).1/24 and containers c0, c1, ...
    at 10.244.(i+1).10, .11, ...; its uplink is 203.0.113.(2+i)/24 and its underlay address
    198.51.100.(129+i)/25. The join is VXLAN (VNI 42, UDP 4789, MTU 1450, unicast fdb entries).
    """
    if not 2 <= hosts <= MAX_HOSTS:
        raise ValueError(f"vxlan_hosts({hosts}, {per_host}): use from 2 to {MAX_HOSTS} hosts")
    if not 1 <= per_host <= MAX_PER_HOST:
        raise ValueError(f"vxlan_hosts({hosts}, {per_host}): use from 1 to {MAX_PER_HOST} containers per host")
    title = name or f"vxlan{hosts}x{per_host}"
    out = [
        f'name = "{title}"',
        f'summary = "{hosts} hosts of {per_host} containers each on one bridge, joined by VXLAN (generated)"',
        "", "[underlay]", f'network = "{multi_spec.DEFAULT_UNDERLAY}"', "mtu = 1500",
        "", "[join]", 'kind = "vxlan"', f"vni = {VXLAN_VNI}", f"port = {multi_spec.VXLAN_PORT}", f"mtu = {VXLAN_MTU}", 'fdb = "unicast"', f'overlay = "{multi_spec.DEFAULT_OVERLAY}"',
    ]
    for i in range(hosts):
        net = f"10.244.{i + 1}"
        out += [
            "", "[[host]]", f'name = "h{i}"', f'underlay = "{multi_spec.DEFAULT_UNDERLAY.network_address + 1 + i}/{multi_spec.DEFAULT_UNDERLAY.prefixlen}"',
            "[host.host]", 'uplink = "eth0"', f'address = "203.0.113.{2 + i}/24"', 'gateway = "203.0.113.1"', 'forward_policy = "ACCEPT"',
            "[host.host.sysctl]", '"net.ipv4.ip_forward" = 1', '"net.bridge.bridge-nf-call-iptables" = 1',
            "[host.wan]", 'address = "203.0.113.1/24"', 'remote = ["198.51.100.1/32"]',
            "[[host.bridge]]", 'name = "br0"', f'address = "{net}.1/24"',
        ]
        for k in range(per_host):
            out += ["[[host.container]]", f'name = "c{k}"', 'interface = "eth0"', f'address = "{net}.{FIRST_HOST + k}/24"',
                    f'host_veth = "veth{k}"', 'bridge = "br0"', f'gateway = "{net}.1"']
    return "\n".join(out) + "\n"


def vxlan_hosts(hosts: int, per_host: int, *, name: str | None = None) -> multi_spec.MultiTopology:
    """``hosts`` hosts of ``per_host`` containers each, joined by VXLAN: ``vxlan_hosts_toml``'s spec,
    read and validated by the multi-host loader, as a spec file would be."""
    return multi_spec.loads(vxlan_hosts_toml(hosts, per_host, name=name), f"<netcheck.scale.vxlan_hosts({hosts}, {per_host})>")


__all__ = ["bridge_topology", "vxlan_hosts", "vxlan_hosts_toml"]
