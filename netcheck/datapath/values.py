"""The values the datapath model reads and writes: a state (namespaces, interfaces, routes,
policy rules, sysctls, listeners, the host's firewall), a flow, and a trace of steps.

All are frozen and pure: a state is made from a plan (netcheck.datapath.planned.planned) or from
a kernel snapshot (netcheck.diagnose.datapath.observed), never by reading the kernel here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address
from typing import TYPE_CHECKING, Literal

from netcheck.kernel.netns import IpRule

if TYPE_CHECKING:
    from netcheck.datapath.firewall import Ruleset

LOOPBACK = IPv4Network("127.0.0.0/8")
LOOPBACK6 = IPv6Network("::1/128")
Address = IPv4Address | IPv6Address
Interface = IPv4Interface | IPv6Interface
Network = IPv4Network | IPv6Network
FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
BRIDGE_NF = {4: "net.bridge.bridge-nf-call-iptables", 6: "net.bridge.bridge-nf-call-ip6tables"}
ANY_ADDRESS = {4: "0.0.0.0", 6: "::"}
LOCAL_TABLE, MAIN_TABLE, DEFAULT_TABLE = 255, 254, 253
DEFAULT_RULES = (IpRule(0, "lookup", LOCAL_TABLE), IpRule(32766, "lookup", MAIN_TABLE), IpRule(32767, "lookup", DEFAULT_TABLE))

Disposition = Literal[
    "delivered", "dropped", "rejected", "no-route", "null-routed", "prohibited", "unreachable", "neighbour-unreachable", "no-listener",
    "reply-not-unnatted", "unknown",
]
DISPOSITIONS: tuple[str, ...] = (
    "delivered", "dropped", "rejected", "no-route", "null-routed", "prohibited", "unreachable", "neighbour-unreachable", "no-listener",
    "reply-not-unnatted", "unknown",
)


@dataclass(frozen=True)
class Port:
    """A bridge port's state and flags."""

    bridge: str
    state: str = "forwarding"
    isolated: bool = False
    learning: bool = True
    hairpin: bool = False  # hairpin mode: a bridged frame may leave by the port it came in by


@dataclass(frozen=True)
class Iface:
    name: str
    kind: str = "veth"  # veth, bridge, loopback, or another kind (treated as a plain L3 link)
    up: bool = True
    addresses: tuple[Interface, ...] = ()
    port: Port | None = None  # set if the interface is a bridge port
    peer: tuple[str, str] | None = None  # a veth's other end: (namespace label, interface)
    nf_call_iptables: bool = False  # a bridge's own option (OR-ed with the sysctl)


@dataclass(frozen=True)
class Route:
    dst: Network
    dev: str | None = None
    via: Address | None = None
    kind: str = "unicast"  # unicast, local, blackhole, prohibit, unreachable, throw
    table: int = MAIN_TABLE
    metric: int = 0
    src: Address | None = None

    def render(self) -> str:
        head = "default" if self.dst.prefixlen == 0 else str(self.dst)
        text = f"{self.kind} {head}" if self.kind != "unicast" else head
        text += f" via {self.via}" if self.via else ""
        text += f" dev {self.dev}" if self.dev else ""
        return text + (f" table {self.table}" if self.table != MAIN_TABLE else "")


@dataclass(frozen=True)
class Listener:
    proto: str  # tcp, udp, sctp
    address: str  # 0.0.0.0: any IPv4 address; "::": any address (a dual-stack socket), IPv6's only if ``v6only``
    port: int
    v6only: bool = False  # an IPv6 socket that takes no IPv4 (IPV6_V6ONLY; the kernel's /proc does not say, so a socket read there is taken as such)

    def takes(self, proto: str, dst: str, port: int | None) -> bool:
        """Does this socket accept a packet to dst:port of ``proto``?"""
        wildcards = ("::",) if ":" in dst else ("0.0.0.0", *(() if self.v6only else ("::",)))
        return self.proto == proto and self.port == port and self.address in (dst, *wildcards)


@dataclass(frozen=True)
class Namespace:
    """One namespace as the model sees it. ``ruleset`` None: no netfilter rules there (all accept)."""

    label: str
    ifaces: tuple[Iface, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[IpRule, ...] = DEFAULT_RULES
    sysctls: tuple[tuple[str, int], ...] = ()
    listeners: tuple[Listener, ...] | None = ()  # None: not known
    ruleset: Ruleset | None = field(default=None, compare=False, hash=False)
    unread: tuple[str, ...] = ()  # netfilter tables that exist but were not read (e.g. "legacy raw")
    listening_known: tuple[int, ...] = (4, 6)  # the families whose listening sockets ``listeners`` holds

    @cached_property
    def _by_name(self) -> dict[str, Iface]:
        return {i.name: i for i in self.ifaces}

    def iface(self, name: str | None) -> Iface | None:
        return self._by_name.get(name) if name is not None else None

    def sysctl(self, key: str, default: int = 0) -> int:
        return next((v for k, v in self.sysctls if k == key), default)

    def conf(self, iface: str, key: str) -> int:
        """A per-interface conf value as the kernel applies it (rp_filter, route_localnet: the maximum of all and the interface's)."""
        return max(self.sysctl(f"net.ipv4.conf.all.{key}"), self.sysctl(f"net.ipv4.conf.{iface}.{key}"))

    def forwarding(self, iface: str, family: int = 4) -> tuple[bool, str]:
        """Does the interface forward packets of ``family``, and the sysctl that says so (IPv6: the
        namespace's ``net.ipv6.conf.all.forwarding``, which the kernel's ip6_forward reads)."""
        key = f"net.ipv4.conf.{iface}.forwarding"
        if family == 4 and any(k == key for k, _v in self.sysctls):
            return self.sysctl(key) == 1, f"{key} = {self.sysctl(key)}"
        return self.sysctl(FORWARDING[family]) == 1, f"{FORWARDING[family]} = {self.sysctl(FORWARDING[family])}"

    @cached_property
    def _locals(self) -> dict[str, Iface]:
        out: dict[str, Iface] = {}
        for i in self.ifaces:
            if i.up:
                for a in i.addresses:
                    out.setdefault(str(a.ip), i)
        return out

    def local(self, address: str) -> Iface | None:
        """The up interface that holds ``address`` (127/8 on an up lo), or None."""
        held = self._locals.get(address)
        if held is not None or not (address.startswith("127.") or address == "::1"):
            return held
        return next((i for i in self.ifaces if i.up and i.kind == "loopback" and ip_address(address) in (LOOPBACK if "." in address else LOOPBACK6)), None)

    def primary(self, iface: str, near: str | None = None, family: int | None = None) -> str | None:
        """The address a packet leaving by ``iface`` takes as its source (MASQUERADE, source selection):
        one of ``family`` (default: ``near``'s; IPv6: a global one, not link-local)."""
        i = self.iface(iface)
        version = family or (ip_address(near).version if near is not None else 4)
        held = [a for a in (i.addresses if i is not None else ()) if a.version == version and not a.ip.is_link_local]
        if not held:
            return None
        if near is not None:
            hit = next((a for a in held if ip_address(near) in a.network), None)
            if hit is not None:
                return str(hit.ip)
        return str(held[0].ip)


@dataclass(frozen=True)
class State:
    namespaces: tuple[Namespace, ...]
    host: str = "host"
    source: str = ""  # "plan" or "kernel", for messages

    @cached_property
    def _by_label(self) -> dict[str, Namespace]:
        return {n.label: n for n in self.namespaces}

    @cached_property
    def _holders(self) -> dict[tuple[str, str], dict[str, Iface]]:
        """(namespace, bridge) -> {address: the port whose far end holds it}."""
        out: dict[tuple[str, str], dict[str, Iface]] = {}
        for n in self.namespaces:
            for port in n.ifaces:
                if port.port is None or port.peer is None:
                    continue
                far = self._by_label.get(port.peer[0])
                if far is None:
                    continue
                held = out.setdefault((n.label, port.port.bridge), {})
                for address in far._locals:
                    held.setdefault(address, port)
        return out

    def port_towards(self, label: str, bridge: str, address: str) -> Iface | None:
        """The port of ``bridge`` (in ``label``) whose far end holds ``address`` on an up interface."""
        return self._holders.get((label, bridge), {}).get(address)

    def ns(self, label: str) -> Namespace | None:
        return self._by_label.get(label)


@dataclass(frozen=True)
class Flow:
    """What the model traces: from a namespace, to an address, by protocol and port."""

    source: str
    dst: str
    proto: str  # icmp (ICMPv6 for an IPv6 destination), tcp, udp, sctp
    dport: int | None = None
    src: str | None = None  # the source address; None: the one the route gives
    sport: int = 40000
    reply: bool = True  # False: the request's arrival is the answer (an SCTP INIT, proven by its capture), no listener or reply traced

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst else 4

    def render(self) -> str:
        dst = f"[{self.dst}]" if ":" in self.dst and self.dport is not None and self.proto != "icmp" else self.dst
        port = f":{self.dport}" if self.dport is not None and self.proto != "icmp" else ""
        return f"{self.proto} {self.source}{f' ({self.src})' if self.src else ''} -> {dst}{port}"


@dataclass(frozen=True)
class Step:
    """One step of a trace: where, which stage of the datapath, what happened and what decided it."""

    where: str  # namespace label
    stage: str  # route, bridge, raw PREROUTING, conntrack, nat PREROUTING, routing decision, filter FORWARD, ...
    text: str
    by: str = ""  # the route, the rule (its command and place), or the sysctl that decided
    direction: Literal["request", "reply"] = "request"
    decisive: bool = False  # the step changed the packet's fate (a drop, a NAT not done, an unknown)

    def render(self) -> str:
        by = f"  [{self.by}]" if self.by else ""
        mark = "!" if self.decisive else " "
        return f"{mark} {self.direction[:3]} {self.where}: {self.stage}: {self.text}{by}"


@dataclass(frozen=True)
class Trace:
    flow: Flow
    steps: tuple[Step, ...]
    disposition: str  # one of DISPOSITIONS
    reason: str
    target: str = ""  # the namespace where the request arrived (its listener's): a DNAT may send it elsewhere than the flow's destination
    seen_src: str = ""  # the source address the request arrived with (what the service sees)

    @property
    def delivered(self) -> bool:
        return self.disposition == "delivered"

    @property
    def decided(self) -> Step | None:
        """The step that decided the fate: the last decisive one (the drop), else the last step."""
        return next((s for s in reversed(self.steps) if s.decisive), self.steps[-1] if self.steps else None)

    def causes(self) -> tuple[Step, ...]:
        """Every decisive step, first to last (a NOTRACK that skipped a DNAT, then the missing listener)."""
        return tuple(s for s in self.steps if s.decisive)

    def lines(self) -> list[str]:
        return [f"model ({self.flow.render()}): {self.disposition}: {self.reason}", *(s.render() for s in self.steps)]


__all__ = [
    "ANY_ADDRESS", "BRIDGE_NF", "DEFAULT_RULES", "DISPOSITIONS", "FORWARDING", "LOOPBACK", "LOOPBACK6", "Address", "Interface", "Network",
    "Disposition", "Flow", "Iface", "Listener", "Namespace", "Port", "Route", "State", "Step", "Trace",
]
