"""Where a lab's host is: a sandbox namespace netcheck makes (``Sandbox``), or the namespace
netcheck runs in (``RealHost``, ``--netcheck-host``). Each is a ``HostMode``; the builder, the
factory and the adapters ask the mode, and never test a flag.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from netcheck import spec
from netcheck.kernel.netns import Netns
from netcheck.kernel.xtables import Backend, choose_backend, read_legacy, read_nft_chains
from netcheck.lab.plan import DEFAULT_ROUTE, DEFAULT_ROUTE6, owned_routes
from netcheck.ledger import RouteEntry

if TYPE_CHECKING:
    from netcheck.lab.lab import Lab

# The host-side links of a sandbox lab (uplink, bridges, the containers' veths) share a link
# group, so teardown deletes them in one request: the kernel unregisters them in one batch
# and waits for one RCU grace period, where one link at a time costs 15-45 ms each.
LINK_GROUP = 0x6E63


class ToolSetup(Protocol):
    """A network another tool makes (netcheck.adapters): run the tool, or find what it made."""

    def start(self) -> None: ...
    def find_existing(self) -> None: ...


class HostMode(Protocol):
    """What differs between a sandbox host and a real one."""

    @property
    def name(self) -> Literal["sandbox", "host"]:
        """What run records and the report call it."""

    @property
    def exclusive(self) -> bool:
        """One lab at a time: two labs' addresses would collide on one real host."""

    def open_host(self, lab: Lab, sysctls: dict[str, int]) -> Netns:
        """The host namespace, with ``sysctls`` set (a sandbox) or left as they are (a real host)."""

    def link_group(self) -> int | None:
        """The link group host-side links are made in (deleted in one request), or None."""

    def route_host(self, lab: Lab) -> None:
        """The host's routes into the outside world."""

    def firewall(self, host: Netns) -> Backend:
        """The backend the lab's rules go to."""

    def chains_held(self, host: Netns, chains: Sequence[tuple[str, str]], backend: Backend) -> set[tuple[str, str]]:
        """Of the custom chains the rules need, those the host has already (never removed)."""

    def forward_policies(self, t: spec.Topology) -> list[tuple[str, str, str]]:
        """The (table, chain, policy) the builder sets."""

    def may_send_to(self, lab: Lab, address: str) -> bool:
        """May a probe be sent to ``address``? (On a real host, only to what the lab holds.)"""

    def make_external(self, tool: ToolSetup) -> None:
        """Have another tool's network: run the tool, or find what it made already."""


@dataclass(frozen=True)
class Sandbox:
    """The host is a namespace of netcheck's own; everything in it is netcheck's to set."""

    name: Literal["sandbox", "host"] = "sandbox"
    exclusive: bool = False

    def open_host(self, lab: Lab, sysctls: dict[str, int]) -> Netns:
        host = lab.new_namespace(lab.names.host_ns, "host")
        for key, value in sysctls.items():
            host.set_sysctl(key, value)
        return host

    def link_group(self) -> int | None:
        return LINK_GROUP

    def route_host(self, lab: Lab) -> None:
        lab.host.configure(routes=[(DEFAULT_ROUTE, lab.topology.host.gateway, None)])
        if lab.topology.host.gateway6 is not None:
            lab.host.configure(routes=[(DEFAULT_ROUTE6, lab.topology.host.gateway6, None)])

    def firewall(self, host: Netns) -> Backend:
        return "legacy"

    def chains_held(self, host: Netns, chains: Sequence[tuple[str, str]], backend: Backend) -> set[tuple[str, str]]:
        return set()

    def forward_policies(self, t: spec.Topology) -> list[tuple[str, str, str]]:
        return [("filter", "FORWARD", t.host.forward_policy)] if t.host.forward_policy != "ACCEPT" else []

    def may_send_to(self, lab: Lab, address: str) -> bool:
        return True

    def make_external(self, tool: ToolSetup) -> None:
        tool.start()


@dataclass(frozen=True)
class RealHost:
    """The host is the namespace netcheck runs in: its sysctls, FORWARD policy, default route
    and links are what is validated, so they are read, never changed or deleted."""

    name: Literal["sandbox", "host"] = "host"
    exclusive: bool = True

    def open_host(self, lab: Lab, sysctls: dict[str, int]) -> Netns:
        return lab.hold(Netns.current("host"))

    def link_group(self) -> int | None:
        return None  # a real host's links are never deleted by group

    def route_host(self, lab: Lab) -> None:
        # Never take over a real host's default route: route only netcheck's own remote
        # addresses, and the VIPs (a VIP packet that no rule redirects then lands in the
        # outside-world namespace instead of leaving the machine).
        assert lab.ledger is not None
        for dst in owned_routes(lab.topology):
            lab.ledger.create(RouteEntry(None, str(dst)), functools.partial(lab.host.configure, routes=[(dst, lab.topology.host.gateway, None)]))

    def firewall(self, host: Netns) -> Backend:
        return choose_backend(host)  # a real host keeps its backend: nft unless it has legacy tables

    def chains_held(self, host: Netns, chains: Sequence[tuple[str, str]], backend: Backend) -> set[tuple[str, str]]:
        if not chains:
            return set()
        held = read_legacy(host, sorted({table for table, _ in chains})) if backend == "legacy" else read_nft_chains(host)
        return {(c.table, c.name) for c in held}

    def forward_policies(self, t: spec.Topology) -> list[tuple[str, str, str]]:
        return []

    def may_send_to(self, lab: Lab, address: str) -> bool:
        from ipaddress import IPv4Address

        return lab.holds(IPv4Address(address))

    def make_external(self, tool: ToolSetup) -> None:
        tool.find_existing()


def mode_of(host_mode: bool) -> HostMode:
    return RealHost() if host_mode else Sandbox()


__all__ = ["LINK_GROUP", "HostMode", "RealHost", "Sandbox", "ToolSetup", "mode_of", "owned_routes"]
