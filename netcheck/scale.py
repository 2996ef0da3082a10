"""Generated topologies for scale: N containers on one bridge, made in code, not TOML.

>>> t = bridge_topology(3)
>>> [str(c.address) for c in t.containers]
['10.200.0.10/16', '10.200.0.11/16', '10.200.0.12/16']
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from netcheck import spec as S

SUBNET = IPv4Network("10.200.0.0/16")
FIRST_HOST = 10  # container i gets 10.200.0.0 + FIRST_HOST + i
MAX_CONTAINERS = 1000


def bridge_topology(n: int, *, name: str | None = None, forward_policy: Literal["ACCEPT", "DROP"] = "ACCEPT") -> S.Topology:
    """``n`` containers (c0, c1, ...) on br0 (10.200.0.1/16), with bridge-nf-call-iptables=1.

    The host's FORWARD chain therefore sees bridged traffic: a DROP policy or rule there
    isolates containers of the same bridge, which is what the isolation matrix checks.
    """
    if not 2 <= n <= MAX_CONTAINERS:
        raise ValueError(f"bridge_topology({n}): use from 2 to {MAX_CONTAINERS} containers")
    gateway = SUBNET.network_address + 1
    containers = tuple(
        S.Container(
            name=f"c{i}", interface="eth0", address=IPv4Interface(f"{SUBNET.network_address + FIRST_HOST + i}/{SUBNET.prefixlen}"),
            host_veth=f"veth{i}", bridge="br0", gateway=gateway,
        )
        for i in range(n)
    )
    return S.Topology(
        name=name or f"scale{n}",
        summary=f"{n} containers on one bridge (generated)",
        source=f"<netcheck.scale.bridge_topology({n})>",
        host=S.Host(
            uplink="eth0", address=IPv4Interface("203.0.113.2/24"), gateway=IPv4Address("203.0.113.1"),
            sysctls=(("net.ipv4.ip_forward", 1), ("net.bridge.bridge-nf-call-iptables", 1)), forward_policy=forward_policy,
        ),
        wan=S.Wan(address=IPv4Interface("203.0.113.1/24"), remote=(IPv4Interface("198.51.100.1/32"),)),
        bridges=(S.Bridge("br0", IPv4Interface(f"{gateway}/{SUBNET.prefixlen}")),),
        containers=containers,
    )


__all__ = ["bridge_topology"]
