"""Topology specs: frozen dataclasses, loaded from TOML and validated before any kernel call.

A spec names things as the user does (netns0, br0, veth0); the lab maps them to tagged
kernel names. Every key of every table is declared once (the ``*Keys`` classes, rooted at ``TOP``): the loader reads
through those declarations, and ``netcheck.spec_docs`` writes the JSON Schema and the key
reference of docs/spec.md from them. Every mistake in a file is reported at once, each
naming the file, the key path, the bad value and the fix.
"""

from __future__ import annotations

import difflib
import enum
import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from netcheck import resolvconf

# \Z: "$" would let a trailing newline through. No leading "-" or ".": a name is passed to tools
# (podman, docker, ip) as an argument, where "-x" would read as an option.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
CHAIN_RE = re.compile(r"^[A-Za-z0-9_-]{1,28}\Z")
NETNS_PATH_RE = re.compile(r"^(/run/netns/|/var/run/netns/)[A-Za-z0-9_][A-Za-z0-9_.-]*\Z|^/proc/[0-9]+/ns/net\Z")
BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\[[0-9]+\])?\Z")  # a bare TOML key, or remote[0]
# A DNS name: dot-separated labels of letters, digits, - (not at either end) and _; a trailing dot allowed.
DNS_NAME_RE = re.compile(r"^(?=.{1,253}\.?\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?\Z")
INHERIT = "inherit"  # a container's dns: the machine's own resolv.conf, as a namespace without /etc/netns/NAME sees it
NXDOMAIN = "nxdomain"  # a name a container must not resolve
SYSCTL_RE = re.compile(r"^net\.(ipv4|ipv6|bridge|core|netfilter)(\.[A-Za-z0-9_-]+)+\Z")
DOC_RANGES = (IPv4Network("203.0.113.0/24"), IPv4Network("198.51.100.0/24"))
FORBIDDEN = IPv4Network("192.0.2.0/24")  # this machine's own network
DOC_RANGE6 = IPv6Network("2001:db8::/32")  # the outside world's IPv6 addresses: documentation ones only
ULA = IPv6Network("fc00::/7")  # unique local addresses: a bridge's own IPv6 prefix (or a documentation one)
LINK_LOCAL6 = IPv6Network("fe80::/10")
Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
IPAddr = IPv4Address | IPv6Address
IPIface = IPv4Interface | IPv6Interface
IPNet = IPv4Network | IPv6Network
ServiceKind = Literal["http", "tcp-echo", "udp-echo"]
Transport = Literal["tcp", "udp"]
PublishProtocol = Literal["tcp", "udp", "sctp"]  # a published port's; SCTP is proven by its INIT, captured rewritten (no SCTP service runs)
Mode = Literal["build", "script", "cni", "netavark", "podman", "docker"]
Policy = Literal["ACCEPT", "DROP"]
Firewall = Literal["iptables", "nft"]
SERVICE_KINDS: tuple[ServiceKind, ...] = ("http", "tcp-echo", "udp-echo")
PROTOCOLS: tuple[Transport, ...] = ("tcp", "udp")
PUBLISH_PROTOCOLS: tuple[PublishProtocol, ...] = ("tcp", "udp", "sctp")
POLICIES: tuple[Policy, ...] = ("ACCEPT", "DROP")
FIREWALLS: tuple[Firewall, ...] = ("iptables", "nft")
ECHO_PORT = 7
BUILTIN = ("seed1", "seed2", "seed2-veth", "seed1-nft", "seed2-nft")  # the topologies a plain `pytest suites/` runs
BUILTIN_DUAL = ("seed1-dual", "seed1-dual-nft")  # built in too, dual stack: run with --netcheck-topology seed1-dual
OPT_IN = ("seed1-ports", "seed1-ports-nft", *BUILTIN_DUAL)  # built-ins that run only when named (--netcheck-topology seed1-ports)
MODES: tuple[Mode, ...] = ("build", "script", "cni", "netavark", "podman", "docker")
EXTERNAL = MODES[1:]  # setups another tool makes; the spec states only what to expect
AUTO = "auto"  # a value read back from what the tool made
NO_ROUTE = "none"  # a container gateway: no default route
FORWARDING_SYSCTL: dict[Family, str] = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
BRIDGE_NF_SYSCTL: dict[Family, str] = {4: "net.bridge.bridge-nf-call-iptables", 6: "net.bridge.bridge-nf-call-ip6tables"}
MAX_BYTES = 1 << 20  # a spec is a small text file; anything larger is a wrong path
# The documentation addresses a spec gets when it leaves [host] or [wan] out.
DEFAULT_HOST_ADDRESS = IPv4Interface("203.0.113.2/24")
DEFAULT_WAN_ADDRESS = IPv4Interface("203.0.113.1/24")
DEFAULT_REMOTE: tuple[IPv4Interface, ...] = (IPv4Interface("198.51.100.1/32"),)
DEFAULT_HOST_ADDRESS6 = IPv6Interface("2001:db8:1::2/64")
DEFAULT_WAN_ADDRESS6 = IPv6Interface("2001:db8:1::1/64")
DEFAULT_REMOTE6: tuple[IPv6Interface, ...] = (IPv6Interface("2001:db8:2::1/128"),)
T = TypeVar("T")
L = TypeVar("L", bound=str)
U = TypeVar("U")


@dataclass(frozen=True)
class Problem:
    """One mistake in a spec: where, what was written, what is wrong, and what to write instead."""

    source: str
    key: str
    value: object
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key} = {_show(self.value)}: {self.problem}. Fix: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        """A JSON-ready view (``value`` as the message shows it), e.g. for ``netcheck validate --json``."""
        return {"source": self.source, "key": self.key, "value": _show(self.value), "problem": self.problem, "fix": self.fix}


class SpecError(ValueError):
    """A spec is invalid. ``problems`` holds every mistake found, each on a line of ``str()``.

    ``source``, ``key``, ``value``, ``problem`` and ``fix`` are the first problem's.
    """

    def __init__(self, source: str, key: str, value: object, problem: str, fix: str, *, more: Sequence[Problem] = ()) -> None:
        self.problems: tuple[Problem, ...] = (Problem(source, key, value, problem, fix), *more)
        self.source, self.key, self.value, self.problem, self.fix = source, key, value, problem, fix
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> SpecError:
        first, *more = problems
        return cls(first.source, first.key, first.value, first.problem, first.fix, more=more)


def env_name(container: str) -> str:
    """The environment variable holding a container's namespace name: web-1 -> NETCHECK_NETNS_WEB_1."""
    return "NETCHECK_NETNS_" + re.sub(r"[^A-Z0-9]", "_", container.upper())


def _show(value: object) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int too long for Python to print, or nesting too deep
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Service:
    kind: ServiceKind
    port: int

    @property
    def protocol(self) -> Transport:
        return "udp" if self.kind == "udp-echo" else "tcp"


@dataclass(frozen=True)
class Route:
    to: IPNet
    via: IPAddr

    @property
    def family(self) -> Family:
        return 6 if self.to.version == 6 else 4


@dataclass(frozen=True)
class Bridge:
    name: str
    address: IPv4Interface | None
    auto: tuple[str, ...] = ()  # fields declared "auto" (external setups): read back from the kernel
    address6: IPv6Interface | None = None

    def at(self, family: Family) -> IPIface | None:
        """Its address of one family."""
        return self.address6 if family == 6 else self.address


@dataclass(frozen=True)
class Resolve:
    """A name a container must resolve through its resolv.conf: to ``address``, to the address of
    ``container`` (one the tool assigns, read back), or (both None) to NXDOMAIN."""

    name: str  # as the container asks for it (lower case): a short name goes through the search list
    address: IPv4Address | None
    container: str | None = None  # the name must resolve to this container's address


@dataclass(frozen=True)
class Network:
    """A network another tool creates by name (``docker network create``, ``podman network create``),
    with a bridge of its own and, with ``dns``, the tool's resolver naming its containers (Docker's
    embedded resolver at 127.0.0.11, Podman's aardvark-dns on the gateway)."""

    name: str  # as the tool knows it
    bridge: str  # the [[bridge]] it makes (netcheck gives the tool this name)
    subnet: IPv4Network | None = None  # None: the tool picks one
    subnet6: IPv6Network | None = None  # dual stack, beside ``subnet`` (the adapters do not create IPv6 networks yet)
    dns: bool = True
    dns_tcp: bool = True  # its resolver answers over TCP too (aardvark-dns before 1.12 answers over UDP only)


@dataclass(frozen=True)
class Record:
    name: str  # absolute, lower case, no trailing dot
    address: IPv4Address


@dataclass(frozen=True)
class Dns:
    """A DNS server in the outside world, served by netcheck itself: it answers its zone, NXDOMAIN otherwise."""

    address: IPv4Address
    records: tuple[Record, ...] = ()

    def zone(self) -> dict[str, str]:
        return {r.name: str(r.address) for r in self.records}


@dataclass(frozen=True)
class Container:
    name: str
    interface: str
    address: IPv4Interface | None  # None: 'auto', read back from what another tool made
    host_veth: str
    bridge: str | None = None
    host_address: IPv4Interface | None = None  # routed single-veth mode (no bridge)
    gateway: IPv4Address | None = None
    routes: tuple[Route, ...] = ()
    services: tuple[Service, ...] = ()
    mtu: int | None = None
    netns: str | None = None  # an existing namespace to discover (host mode), e.g. /run/netns/web
    auto: tuple[str, ...] = ()  # fields declared "auto" or left out (external setups): read back from the kernel
    dns: tuple[IPv4Address, ...] | Literal["inherit"] | None = None  # its resolv.conf's nameservers; None: not declared
    search: tuple[str, ...] = ()  # its resolv.conf's search domains (lower case, no trailing dot)
    resolve: tuple[Resolve, ...] = ()  # names it must resolve (or not)
    address6: IPv6Interface | None = None  # dual stack: its IPv6 address beside the IPv4 one
    network: str | None = None  # the [[network]] the tool puts it on; None: the tool's default network
    gateway6: IPv6Address | None = None

    def at(self, family: Family) -> IPIface | None:
        """Its address of one family (None: it has none)."""
        return self.address6 if family == 6 else self.address

    def gateway_at(self, family: Family) -> IPAddr | None:
        return self.gateway6 if family == 6 else self.gateway

    def service(self, kind: str) -> Service | None:
        return next((s for s in self.services if s.kind == kind), None)


@dataclass(frozen=True)
class Host:
    uplink: str
    address: IPv4Interface
    gateway: IPv4Address
    sysctls: tuple[tuple[str, int], ...]
    forward_policy: Policy = "ACCEPT"
    firewall: Firewall = "iptables"
    address6: IPv6Interface | None = None
    gateway6: IPv6Address | None = None

    def sysctl(self, key: str) -> int | None:
        return dict(self.sysctls).get(key)

    def at(self, family: Family) -> IPIface | None:
        return self.address6 if family == 6 else self.address

    def forwarding(self, family: Family) -> bool:
        """Does the host route this family (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding)?"""
        return self.sysctl(FORWARDING_SYSCTL[family]) == 1


@dataclass(frozen=True)
class Wan:
    address: IPv4Interface
    remote: tuple[IPv4Interface, ...]
    routes: tuple[Route, ...] = ()
    address6: IPv6Interface | None = None
    remote6: tuple[IPv6Interface, ...] = ()

    def at(self, family: Family) -> IPIface | None:
        return self.address6 if family == 6 else self.address

    def remote_at(self, family: Family) -> tuple[IPIface, ...]:
        return self.remote6 if family == 6 else self.remote


@dataclass(frozen=True)
class Masquerade:
    source: IPNet | None
    out_interface: str | None = None
    not_out_interface: str | None = None

    @property
    def family(self) -> Family:
        """ip6tables for an IPv6 source; iptables otherwise (a rule without a source is IPv4's, as before)."""
        return 6 if self.source is not None and self.source.version == 6 else 4


@dataclass(frozen=True)
class Publish:
    """A published port: host_port (and the ``size - 1`` ports after it) DNATed to port (and the ports after it).

    ``host_address`` None is the host's uplink address, as specs wrote it before binds existed; an
    unspecified address (0.0.0.0, ::) is the wildcard: every address the host holds of that family.
    """

    container: str
    host_port: int
    port: int
    protocol: PublishProtocol = "tcp"
    from_outside: bool = True  # nat PREROUTING DNAT
    from_host: bool = True  # nat OUTPUT DNAT
    size: int = 1  # ports in the range (Docker's -p 8000-8002:5000-5002 has 3)
    host_address: IPv4Address | IPv6Address | None = None  # the host address it is bound to
    hairpin: bool = False  # Docker's hairpin MASQUERADE (-s C -d C): the container reaches its own published port

    @property
    def host_ports(self) -> range:
        return range(self.host_port, self.host_port + self.size)

    def container_port(self, host_port: int) -> int:
        """The container port a host port of the range maps to (the same offset, as Docker maps ranges)."""
        return self.port + host_port - self.host_port

    @property
    def wildcard(self) -> bool:
        return self.host_address is not None and self.host_address.is_unspecified

    @property
    def loopback(self) -> bool:
        return self.host_address is not None and self.host_address.is_loopback


@dataclass(frozen=True)
class Vip:
    chain: str
    address: IPv4Address
    port: int
    container: str
    target_port: int
    protocol: Transport = "tcp"
    from_outside: bool = True  # PREROUTING jumps to the chain
    from_host: bool = True  # OUTPUT jumps to the chain
    address6: IPv6Address | None = None  # dual stack: the same chain in ip6tables, to the container's IPv6 address

    def at(self, family: Family) -> IPAddr | None:
        return self.address6 if family == 6 else self.address


@dataclass(frozen=True)
class ForwardAccept:
    in_interface: str | None = None
    out_interface: str | None = None


@dataclass(frozen=True)
class Setup:
    """How the lab is made: by netcheck ('build') or by another tool, run as the user wrote it.

    ``command`` and ``teardown`` are argv lists run in the sandbox host namespace with the
    spec file's folder as working directory; ``config`` is a CNI conflist or a netavark
    network file, relative to that folder; ``socket`` names an existing Docker daemon (or
    Podman service) whose containers host mode discovers instead of starting its own.
    """

    mode: Mode = "build"
    command: tuple[str, ...] = ()
    teardown: tuple[str, ...] = ()
    config: str | None = None
    socket: str | None = None

    @property
    def external(self) -> bool:
        return self.mode != "build"


@dataclass(frozen=True)
class Topology:
    name: str
    summary: str
    source: str
    host: Host
    wan: Wan
    bridges: tuple[Bridge, ...] = ()
    containers: tuple[Container, ...] = ()
    masquerades: tuple[Masquerade, ...] = ()
    publishes: tuple[Publish, ...] = ()
    vips: tuple[Vip, ...] = ()
    forward_accepts: tuple[ForwardAccept, ...] = ()
    setup: Setup = field(default_factory=Setup)
    dns: Dns | None = None
    networks: tuple[Network, ...] = ()

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)

    def network_of(self, container: Container) -> Network | None:
        """The [[network]] a container is on (None: the tool's default network, or a built lab)."""
        return next((n for n in self.networks if n.name == container.network), None)

    def answer(self, r: Resolve) -> IPv4Address | None:
        """The address a resolve entry must get: its own, or its container's (read back, for addresses the tool assigns); None: NXDOMAIN."""
        if r.container is None:
            return r.address
        c = self.container(r.container)
        return c.address.ip if c.address is not None else None

    def bridge(self, name: str) -> Bridge:
        return next(b for b in self.bridges if b.name == name)

    def members(self, bridge: str) -> tuple[Container, ...]:
        return tuple(c for c in self.containers if c.bridge == bridge)

    @property
    def families(self) -> tuple[Family, ...]:
        """The address families the topology declares: (4,), or (4, 6) with IPv6 addresses on its containers."""
        return (4, 6) if any(c.address6 is not None for c in self.containers) else (4,)

    def host_interfaces(self) -> tuple[str, ...]:
        """Spec names of the host's interfaces: uplink, bridges, host-side veths."""
        return (self.host.uplink, *(b.name for b in self.bridges), *(c.host_veth for c in self.containers if c.host_veth))


# --------------------------------------------------------------------------- value kinds


class _Invalid(Exception):
    """A value's problem and its fix, raised by a kind's reader (``at``: an item inside it, e.g. "[0]")."""

    def __init__(self, problem: str, fix: str, at: str = "", value: object = None) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.at, self.value = problem, fix, at, value


@dataclass(frozen=True)
class Kind(Generic[T]):
    """A type of TOML value: how to read it, its JSON Schema, and a stand-in for an invalid one.

    The stand-in never leaves the loader: a file with any problem raises ``SpecError``.
    """

    title: str  # as docs/spec.md names the type
    read: Callable[[object, str], T]  # (value, key name) -> the typed value; raises _Invalid
    schema: Mapping[str, object]
    placeholder: T


def schema_pattern(pattern: re.Pattern[str]) -> str:
    return pattern.pattern.replace(r"\Z", "$")  # JSON Schema patterns are ECMA-262: no \Z


def _name_fix(pattern: re.Pattern[str]) -> str:
    if pattern is IFNAME_RE:
        return "use 1 to 15 characters from A-Z a-z 0-9 _ . -, not starting with - or ."
    if pattern is CHAIN_RE:
        return "use 1 to 28 characters from A-Z a-z 0-9 _ -"
    return "use 1 to 32 characters from A-Z a-z 0-9 _ . -, not starting with - or ."


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string", f'quote it: {name} = "..."')
    if "\x00" in value:
        raise _Invalid("contains a NUL byte", "remove it")
    return value


def string(pattern: re.Pattern[str] | None = None, what: str = "name", title: str = "string") -> Kind[str]:
    def read(value: object, name: str) -> str:
        text = _text(value, name)
        if pattern is not None and not pattern.match(text):
            raise _Invalid(f"not a valid {what}", _name_fix(pattern))
        return text

    schema: dict[str, object] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = schema_pattern(pattern)
    return Kind(title, read, schema, "")


def integer(low: int, high: int, title: str = "") -> Kind[int]:
    def read(value: object, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("expected a whole number", f"write {name} = <number from {low} to {high}>")
        if not low <= value <= high:
            raise _Invalid(f"out of range {low}..{high}", f"use a value from {low} to {high}")
        return value

    return Kind(title or f"integer, {low} to {high}", read, {"type": "integer", "minimum": low, "maximum": high}, low)


def _boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false", f"write {name} = true or {name} = false")
    return value


def choice(choices: tuple[L, ...]) -> Kind[L]:
    def read(value: object, name: str) -> L:
        for c in choices:
            if value == c:
                return c
        raise _Invalid("not one of " + ", ".join(choices), f"use one of: {', '.join(choices)}")

    return Kind("one of " + ", ".join(f'"{c}"' for c in choices), read, {"type": "string", "enum": list(choices)}, choices[0])


def _interface(value: object, name: str) -> str:
    text = _text(value, name)
    if not IFNAME_RE.match(text):
        raise _Invalid("longer than 15 characters" if len(text) > 15 else "not a valid interface name", _name_fix(IFNAME_RE))
    if text in (".", ".."):
        raise _Invalid("the kernel refuses '.' and '..' as interface names", "use a name such as veth0")
    return text


def _check_usable(ip: IPv4Address, net: IPv4Network | None) -> None:
    if ip in FORBIDDEN:
        raise _Invalid("is in 192.0.2.0/24, which this machine's own network uses", "pick another range")
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or str(ip) == "255.255.255.255":
        raise _Invalid("not a unicast host address", "use a unicast address")
    if net is not None and net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
        raise _Invalid(f"is the network or broadcast address of {net}", "use a host address inside the subnet")


def _iface_address(value: object, name: str) -> IPv4Interface:
    if not isinstance(value, str) or "/" not in value:
        raise _Invalid("expected an address with a prefix length", 'write it as "172.18.0.10/16"')
    try:
        iface = IPv4Interface(value)
    except ValueError as exc:
        raise _Invalid(f"not a valid IPv4 address/prefix ({exc})", 'write it as "172.18.0.10/16"') from None
    _check_usable(iface.ip, iface.network)
    return iface


def _iface_address_or_auto(value: object, name: str) -> IPv4Interface | None:
    return None if value == AUTO else _iface_address(value, name)


_A = TypeVar("_A", IPv4Address, IPv6Address)


def _plain_address(value: object, kind: type[_A], example: str) -> _A:
    """An address of one family, without a prefix length; _Invalid with an example of the right form."""
    try:
        addr = kind(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None:
        raise _Invalid(f"not a valid IPv{kind(0).version} address", f'write it as "{example}" (no prefix length)')
    return addr


def _address(value: object, name: str) -> IPv4Address:
    addr = _plain_address(value, IPv4Address, "172.18.0.1")
    _check_usable(addr, None)
    return addr


def _gateway(value: object, name: str) -> IPv4Address | None:
    return None if value in (AUTO, NO_ROUTE) else _address(value, name)


def _network(value: object, name: str) -> IPv4Network:
    try:
        net = IPv4Network(value) if isinstance(value, str) else None
    except ValueError as exc:
        raise _Invalid(f"not a valid IPv4 network ({exc})", 'write it as "172.18.0.0/16", with host bits zero') from None
    if net is None:
        raise _Invalid("expected a network string", 'write it as "172.18.0.0/16"')
    if net.overlaps(FORBIDDEN):
        raise _Invalid("overlaps 192.0.2.0/24, which this machine's own network uses", "pick another range")
    return net


def _argv(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid("expected a list of strings (an argv, run without a shell)", f'write {name} = ["sh", "setup.sh"]')
    if any("\x00" in v for v in value):
        raise _Invalid("contains a NUL byte", "remove it")
    return tuple(value)


def _netns_path(value: object, name: str) -> str:
    text = _text(value, name)
    if not NETNS_PATH_RE.match(text) or "/../" in text + "/":
        raise _Invalid("not an absolute path to a network namespace (/run/netns/NAME or /proc/PID/ns/net)", 'write it as "/run/netns/NAME" or "/proc/PID/ns/net"')
    return text


def _remote(value: object, name: str) -> tuple[IPv4Interface, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("expected a non-empty list of addresses", 'write remote = ["198.51.100.1/32"]')
    out = []
    for i, item in enumerate(value):
        try:
            out.append(_iface_address(item, f"{name}[{i}]"))
        except _Invalid as exc:
            raise _Invalid(exc.problem, exc.fix, f"[{i}]", item) from None
    return tuple(out)


def _dns_name(value: object, name: str) -> str:
    text = _text(value, name)
    if not DNS_NAME_RE.match(text):
        raise _Invalid("not a valid DNS name", "use dot-separated labels of A-Z a-z 0-9 - _ (each 1 to 63 characters, not starting or ending with -), e.g. \"web.corp.test\"")
    return text.rstrip(".").lower()


def _search(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid("expected a list of domains", 'write search = ["corp.test"]')
    out = []
    for i, item in enumerate(value):
        try:
            out.append(_dns_name(item, f"{name}[{i}]"))
        except _Invalid as exc:
            raise _Invalid(exc.problem, exc.fix, f"[{i}]", item) from None
    if len(out) > 6:
        raise _Invalid(f"{len(out)} search domains: a stub resolver reads at most 6", "keep the first 6")
    return tuple(out)


def _nameserver(value: object, name: str) -> IPv4Address:
    try:
        addr = IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None:
        raise _Invalid("not a valid IPv4 address", 'write it as "203.0.113.53" (no prefix length, no port)')
    if not addr.is_loopback:  # a loopback resolver (Docker's 127.0.0.11) is checked against the mode later
        _check_usable(addr, None)
    return addr


def _nameservers(value: object, name: str) -> tuple[IPv4Address, ...] | Literal["inherit"]:
    if value == INHERIT:
        return "inherit"
    if not isinstance(value, list) or not value:
        raise _Invalid(f'expected a non-empty list of resolver addresses, or "{INHERIT}"', f'write {name} = ["203.0.113.53"] (the [dns] address), or {name} = "{INHERIT}"')
    out = []
    for i, item in enumerate(value):
        try:
            out.append(_nameserver(item, f"{name}[{i}]"))
        except _Invalid as exc:
            raise _Invalid(exc.problem, exc.fix, f"[{i}]", item) from None
    if len(out) > 3:
        raise _Invalid(f"{len(out)} nameservers: a stub resolver reads at most 3", "keep the first 3")
    return tuple(out)


def _answer(value: object, name: str) -> IPv4Address | None:
    if isinstance(value, str) and value.lower() == NXDOMAIN:
        return None
    try:
        return IPv4Address(value) if isinstance(value, str) else IPv4Address("x")
    except ValueError:
        raise _Invalid(f'not an IPv4 address or "{NXDOMAIN}"', f'write it as "198.51.100.10", or "{NXDOMAIN}" for a name that must not resolve') from None


def _port_range(value: object, name: str) -> tuple[int, int]:
    if not isinstance(value, str):
        port = integer(1, 65535).read(value, name)  # a single port, refused as any port is
        return port, port
    m = re.match(r"^([0-9]{1,5})-([0-9]{1,5})\Z", value)
    if m is None:
        raise _Invalid('expected a whole number, or a range "LOW-HIGH"', f'write {name} = <number from 1 to 65535>, or a range: {name} = "8000-8009"')
    lo, hi = int(m.group(1)), int(m.group(2))
    if not 1 <= lo <= hi <= 65535:
        raise _Invalid("not a range of ports from low to high, within 1..65535", f'write it low to high, e.g. {name} = "8000-8009"')
    return lo, hi


def _bind(value: object, name: str) -> IPv4Address | IPv6Address:
    try:
        addr = ip_address(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None:
        raise _Invalid("not an IP address", 'write it as "203.0.113.2", "0.0.0.0" (every host address) or "127.0.0.1"')
    if addr.version == 4 and addr in FORBIDDEN:
        raise _Invalid("is in 192.0.2.0/24, which this machine's own network uses", "pick another address")
    return addr


def _check_usable6(ip: IPv6Address, net: IPv6Network | None) -> None:
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        raise _Invalid("not a unicast host address", "use a unicast address")
    if ip in LINK_LOCAL6:
        raise _Invalid("is a link-local address (fe80::/10): the kernel gives every interface one of its own", "use a ULA (fd00::/8) or a 2001:db8::/32 address")
    if ip.ipv4_mapped is not None:
        raise _Invalid("is an IPv4-mapped address", "write the IPv4 address in the IPv4 key, and a real IPv6 address here")
    if net is not None and net.prefixlen < 127 and ip == net.network_address:
        raise _Invalid(f"is the subnet-router anycast address of {net}", "use a host address inside the prefix, e.g. ::1 in it")


def _iface_address6(value: object, name: str) -> IPv6Interface:
    if not isinstance(value, str) or "/" not in value:
        raise _Invalid("expected an IPv6 address with a prefix length", 'write it as "fd00:18::10/64"')
    try:
        iface = IPv6Interface(value)
    except ValueError as exc:
        raise _Invalid(f"not a valid IPv6 address/prefix ({exc})", 'write it as "fd00:18::10/64"' + ('; an IPv4 address goes in the IPv4 key (without the 6)' if "." in value else "")) from None
    _check_usable6(iface.ip, iface.network)
    return iface


def _address6(value: object, name: str) -> IPv6Address:
    addr = _plain_address(value, IPv6Address, "fd00:18::1")
    _check_usable6(addr, None)
    return addr


def _gateway6(value: object, name: str) -> IPv6Address | None:
    return None if value == NO_ROUTE else _address6(value, name)


def _network6(value: object, name: str) -> IPv6Network:
    try:
        return IPv6Network(value) if isinstance(value, str) and ":" in value else IPv6Network("x")
    except ValueError as exc:
        raise _Invalid(f"not a valid IPv6 network ({exc})", 'write it as "fd00:30::/64", with host bits zero') from None


def _network_any(value: object, name: str) -> IPNet:
    if isinstance(value, str) and ":" in value:
        try:
            return IPv6Network(value)
        except ValueError as exc:
            raise _Invalid(f"not a valid IPv6 network ({exc})", 'write it as "fd00:18::/64", with host bits zero') from None
    return _network(value, name)


def _address_any(value: object, name: str) -> IPAddr:
    return _address6(value, name) if isinstance(value, str) and ":" in value else _address(value, name)


def _dual(read4: Callable[[object, str], T], read6: Callable[[object, str], U], example: str) -> Callable[[object, str], tuple[T, U | None]]:
    """A value of one family, or (dual stack) a list of two: the IPv4 one, then the IPv6 one."""

    def read(value: object, name: str) -> tuple[T, U | None]:
        if not isinstance(value, list):
            if isinstance(value, str) and ":" in value:
                raise _Invalid("an IPv6 value alone: IPv6 comes beside IPv4 (dual stack), never instead of it", f"write {name} = {example}")
            return read4(value, name), None
        if len(value) != 2:
            raise _Invalid(f"a list of {len(value)}: dual stack takes exactly two values, the IPv4 one then the IPv6 one", f"write {name} = {example}")
        try:
            first = read4(value[0], name)
        except _Invalid as exc:
            raise _Invalid(exc.problem + (" (the first value is the IPv4 one)" if isinstance(value[0], str) and ":" in value[0] else ""), exc.fix, "[0]", value[0]) from None
        try:
            second = read6(value[1], name)
        except _Invalid as exc:
            raise _Invalid(exc.problem, exc.fix, "[1]", value[1]) from None
        return first, second

    return read


def _remote_dual(value: object, name: str) -> tuple[tuple[IPv4Interface, ...], tuple[IPv6Interface, ...]]:
    """The outside world's remote addresses, IPv4 and (dual stack) IPv6 ones in one list; at least one IPv4 one."""
    if not isinstance(value, list) or not value:
        raise _Invalid("expected a non-empty list of addresses", 'write remote = ["198.51.100.1/32"] (dual stack: ["198.51.100.1/32", "2001:db8:2::1/128"])')
    v4: list[IPv4Interface] = []
    v6: list[IPv6Interface] = []
    for i, item in enumerate(value):
        try:
            if isinstance(item, str) and ":" in item:
                v6.append(_iface_address6(item, f"{name}[{i}]"))
            else:
                v4.append(_iface_address(item, f"{name}[{i}]"))
        except _Invalid as exc:
            raise _Invalid(exc.problem, exc.fix, f"[{i}]", item) from None
    if not v4:
        raise _Invalid("holds no IPv4 address: IPv6 comes beside IPv4 (dual stack)", 'add an IPv4 one first, e.g. "198.51.100.1/32"')
    return tuple(v4), tuple(v6)


_IPV6 = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"
_IFACE6_SCHEMA = {"type": "string", "pattern": f"^{_IPV6}/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$"}
_IPV4 = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
_IFACE_SCHEMA = {"type": "string", "pattern": f"^{_IPV4}/([0-9]|[12][0-9]|3[0-2])$"}
_AUTO_SCHEMA = {"type": "string", "const": AUTO}
NAME = string(NAME_RE, title="name (1-32 of A-Z a-z 0-9 _ . -)")
TEXT = string()
CHAIN = string(CHAIN_RE, what="chain name (1-28 of A-Z a-z 0-9 _ -)", title="chain name (1-28 of A-Z a-z 0-9 _ -)")
PORT = integer(1, 65535, "port, 1 to 65535")
BOOLEAN = Kind("boolean", _boolean, {"type": "boolean"}, False)
INTERFACE = Kind("interface name (1-15 of A-Z a-z 0-9 _ . -)", _interface, {"type": "string", "pattern": schema_pattern(IFNAME_RE), "not": {"enum": [".", ".."]}}, "")
IFACE_ADDRESS = Kind("IPv4 address/prefix", _iface_address, _IFACE_SCHEMA, IPv4Interface("0.0.0.0/32"))
IFACE_ADDRESS_OR_AUTO = Kind('IPv4 address/prefix, or "auto"', _iface_address_or_auto, {"anyOf": [_IFACE_SCHEMA, _AUTO_SCHEMA]}, None)
ADDRESS = Kind("IPv4 address", _address, {"type": "string", "pattern": f"^{_IPV4}$"}, IPv4Address(0))
GATEWAY = Kind('IPv4 address, "auto" or "none"', _gateway, {"anyOf": [{"type": "string", "pattern": f"^{_IPV4}$"}, _AUTO_SCHEMA, {"type": "string", "const": "none"}]}, None)
NETWORK = Kind("IPv4 network", _network, {"type": "string", "pattern": f"^{_IPV4}/([0-9]|[12][0-9]|3[0-2])$"}, IPv4Network("0.0.0.0/32"))
PORT_RANGE: Kind[tuple[int, int]] = Kind('port, or a range "LOW-HIGH"', _port_range,
                                     {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": "^[0-9]{1,5}-[0-9]{1,5}$"}]}, (1, 1))
BIND: Kind[IPv4Address | IPv6Address] = Kind("IP address to bind", _bind, {"type": "string"}, IPv4Address(0))
_NETWORK_ANY_SCHEMA = {"anyOf": [{"type": "string", "pattern": f"^{_IPV4}/([0-9]|[12][0-9]|3[0-2])$"}, {"type": "string", "pattern": f"^{_IPV6}/[0-9]+$"}]}
NETWORK_ANY: Kind[IPNet] = Kind("IPv4 or IPv6 network", _network_any, _NETWORK_ANY_SCHEMA, IPv4Network("0.0.0.0/32"))
ADDRESS_ANY: Kind[IPAddr] = Kind("IPv4 or IPv6 address", _address_any, {"anyOf": [{"type": "string", "pattern": f"^{_IPV4}$"}, {"type": "string", "pattern": f"^{_IPV6}$"}]}, IPv4Address(0))

def _pair(one: Mapping[str, object], six: Mapping[str, object]) -> dict[str, object]:
    return {"anyOf": [one, {"type": "array", "prefixItems": [one, six], "minItems": 2, "maxItems": 2}]}


_GW4 = {"type": "string", "pattern": f"^{_IPV4}$"}
_GW6 = {"anyOf": [{"type": "string", "pattern": f"^{_IPV6}$"}, {"type": "string", "const": "none"}]}
DUAL_IFACE: Kind[tuple[IPv4Interface, IPv6Interface | None]] = Kind(
    "IPv4 address/prefix, or [IPv4, IPv6]", _dual(_iface_address, _iface_address6, '["172.18.0.10/16", "fd00:18::10/64"]'), _pair(_IFACE_SCHEMA, _IFACE6_SCHEMA),
    (IPv4Interface("0.0.0.0/32"), None))
DUAL_IFACE_OR_AUTO: Kind[tuple[IPv4Interface | None, IPv6Interface | None]] = Kind(
    'IPv4 address/prefix or "auto", or [IPv4, IPv6]', _dual(_iface_address_or_auto, _iface_address6, '["172.18.0.1/16", "fd00:18::1/64"]'),
    _pair({"anyOf": [_IFACE_SCHEMA, _AUTO_SCHEMA]}, _IFACE6_SCHEMA), (None, None))
DUAL_ADDRESS: Kind[tuple[IPv4Address, IPv6Address | None]] = Kind(
    "IPv4 address, or [IPv4, IPv6]", _dual(_address, _address6, '["203.0.113.1", "2001:db8:1::1"]'), _pair(_GW4, {"type": "string", "pattern": f"^{_IPV6}$"}),
    (IPv4Address(0), None))
DUAL_GATEWAY: Kind[tuple[IPv4Address | None, IPv6Address | None]] = Kind(
    'IPv4 address, "auto" or "none", or [IPv4, IPv6 or "none"]', _dual(_gateway, _gateway6, '["172.18.0.1", "fd00:18::1"]'),
    _pair({"anyOf": [_GW4, _AUTO_SCHEMA, {"type": "string", "const": "none"}]}, _GW6), (None, None))
DUAL_REMOTE: Kind[tuple[tuple[IPv4Interface, ...], tuple[IPv6Interface, ...]]] = Kind(
    "list of IPv4 (and IPv6) address/prefix", _remote_dual, {"type": "array", "items": {"anyOf": [_IFACE_SCHEMA, _IFACE6_SCHEMA]}, "minItems": 1}, ((), ()))
_NET4_SCHEMA = {"type": "string", "pattern": f"^{_IPV4}/([0-9]|[12][0-9]|3[0-2])$"}
DUAL_NETWORK: Kind[tuple[IPv4Network, IPv6Network | None]] = Kind(
    "IPv4 network, or [IPv4, IPv6]", _dual(_network, _network6, '["172.30.0.0/24", "fd00:30::/64"]'), _pair(_NET4_SCHEMA, {"type": "string", "pattern": f"^{_IPV6}/[0-9]+$"}),
    (IPv4Network("0.0.0.0/32"), None))
ARGV: Kind[tuple[str, ...]] = Kind("list of strings (an argv)", _argv, {"type": "array", "items": {"type": "string"}}, ())
NETNS_PATH = Kind("namespace path", _netns_path, {"type": "string", "pattern": schema_pattern(NETNS_PATH_RE)}, "")
REMOTE: Kind[tuple[IPv4Interface, ...]] = Kind("list of IPv4 address/prefix", _remote, {"type": "array", "items": _IFACE_SCHEMA, "minItems": 1}, ())
SYSCTL_VALUE = integer(0, 2**31)
DNS_NAME = Kind("DNS name", _dns_name, {"type": "string", "pattern": schema_pattern(DNS_NAME_RE)}, "")
SEARCH: Kind[tuple[str, ...]] = Kind("list of DNS names (at most 6)", _search, {"type": "array", "items": {"type": "string", "pattern": schema_pattern(DNS_NAME_RE)}, "maxItems": 6}, ())
NAMESERVERS: Kind[tuple[IPv4Address, ...] | Literal["inherit"]] = Kind(
    f'list of IPv4 addresses (at most 3), or "{INHERIT}"', _nameservers,
    {"anyOf": [{"type": "array", "items": {"type": "string", "pattern": f"^{_IPV4}$"}, "minItems": 1, "maxItems": 3}, {"type": "string", "const": INHERIT}]}, ())
ANSWER = Kind(f'IPv4 address, or "{NXDOMAIN}"', _answer, {"anyOf": [{"type": "string", "pattern": f"^{_IPV4}$"}, {"type": "string", "const": NXDOMAIN}]}, None)


# --------------------------------------------------------------------------- declarations


class Absent(enum.Enum):
    """What a key left out of a table means, when it has no default value."""

    REQUIRED = "required"  # the key must be written
    NONE = "none"  # the value is then None (or, for a few keys, worked out from others)


@dataclass(frozen=True)
class Key(Generic[T]):
    """One key of a table: its type, its default, and what the reference says about it."""

    name: str
    kind: Kind[T]
    doc: str
    example: str  # the value as TOML writes it
    default: T | Absent = Absent.NONE
    default_doc: str = ""  # the default in words, where it is worked out from other keys


@dataclass(frozen=True)
class Table:
    """A TOML table (or each entry of an array of tables) and the keys it takes."""

    title: str  # as the reference heads it: "[host]", "[[container]]", "routes entry"
    doc: str
    keys: tuple[Key[Any] | Sub, ...] = ()
    values: Kind[int] | None = None  # a table of free-named keys ([host.sysctl]): their value's kind
    names: re.Pattern[str] | None = None  # ... and the pattern of their names

    def key(self, name: str) -> Key[Any] | Sub | None:
        return next((k for k in self.keys if k.name == name), None)


@dataclass(frozen=True)
class Sub:
    """A key whose value is a table (``many``: an array of tables)."""

    name: str
    table: Table
    many: bool
    doc: str
    example: str = ""  # the value as TOML writes it, for the reference


def _table(title: str, doc: str, keys: type) -> Table:
    """A table whose keys are the Key and Sub attributes of ``keys``, in the order written."""
    return Table(title, doc, tuple(v for v in vars(keys).values() if isinstance(v, (Key, Sub))))


class ServiceKeys:
    kind = Key("kind", choice(SERVICE_KINDS), "What answers: an HTTP server, or a TCP or UDP echo; each reply names the container and the source it saw.", '"http"', Absent.REQUIRED)
    port = Key("port", PORT, "The port it listens on, on every address of the container.", "5000", Absent.REQUIRED)


SERVICE = _table("services entry", "A service netcheck starts inside the container; the suites probe it.", ServiceKeys)


class RouteKeys:
    to = Key("to", NETWORK_ANY, "The destination network, IPv4 or IPv6.", '"10.100.100.100/32"', Absent.REQUIRED)
    via = Key("via", ADDRESS_ANY, "The next hop, of the same family; it must be on the subnet of the namespace the route is in.", '"203.0.113.2"', Absent.REQUIRED)


ROUTE = _table("routes entry", "A static route.", RouteKeys)


class SetupKeys:
    mode = Key("mode", choice(MODES), "netcheck builds the lab itself (build), or another tool makes it and netcheck discovers and checks it.", '"script"', "build")
    command = Key("command", ARGV, "The setup command (script, podman, docker), run without a shell in the sandbox host namespace, from the spec file's folder.", '["sh", "setup.sh"]', ())
    teardown = Key("teardown", ARGV, "The command that undoes `command`, run before netcheck removes the sandbox.", '["sh", "teardown.sh"]', ())
    config = Key("config", TEXT, "The CNI conflist (cni) or netavark network file (netavark), relative to the spec file's folder.", '"cni/bridge.conflist"')
    socket = Key("socket", TEXT, "An existing Docker daemon's or Podman service's socket, whose containers host mode discovers.", '"/run/docker.sock"')


SETUP = _table("[setup]", "Who makes the network. Left out: netcheck builds it (mode \"build\").", SetupKeys)


SYSCTL = Table("[host.sysctl]", "Network sysctls of the host namespace, set when the lab is built (and expected, for other tools' setups). "
               "net.ipv4.ip_forward is 0 unless set here.",
               values=SYSCTL_VALUE, names=SYSCTL_RE)


class HostKeys:
    uplink = Key("uplink", INTERFACE, "The host's interface towards the outside world.", '"enp0s3"', "eth0")
    address = Key("address", DUAL_IFACE, "The uplink's address. The outside world uses documentation ranges only (203.0.113.0/24, 198.51.100.0/24; IPv6: 2001:db8::/32). "
                  "Dual stack: [IPv4, IPv6].", '"203.0.113.2/24"', (DEFAULT_HOST_ADDRESS, None),
                  default_doc='"203.0.113.2/24"; ["203.0.113.2/24", "2001:db8:1::2/64"] when a container has an IPv6 address')
    gateway = Key("gateway", DUAL_ADDRESS, "The host's default route: the outside world's address (dual stack: [IPv4, IPv6]).", '"203.0.113.1"',
                  default_doc="the address of wan.address (203.0.113.1, and its IPv6 one)")
    forward_policy = Key("forward_policy", choice(POLICIES), "The policy of the host's filter FORWARD chain.", '"DROP"', "ACCEPT")
    firewall = Key("firewall", choice(FIREWALLS), "How netcheck writes the host's rules (build): \"iptables\" (legacy xtables, through python-iptables), or \"nft\" "
                   "(native nf_tables tables of the lab's own, through libnftables; never a legacy table).", '"nft"', "iptables")
    sysctl = Sub("sysctl", SYSCTL, False, "Network sysctls.")


HOST = _table("[host]", "The container host: a namespace netcheck creates (or this one, with --netcheck-host), and its uplink to the outside world.", HostKeys)


class WanKeys:
    address = Key("address", DUAL_IFACE, "Its address on the host's uplink subnet (dual stack: [IPv4, IPv6]).", '"203.0.113.1/24"', (DEFAULT_WAN_ADDRESS, None),
                  default_doc='"203.0.113.1/24"; ["203.0.113.1/24", "2001:db8:1::1/64"] when a container has an IPv6 address')
    remote = Key("remote", DUAL_REMOTE, "Addresses it also holds, standing for the internet (the suites probe the first of each family); IPv6 ones in 2001:db8::/32.",
                 '["198.51.100.1/32"]', (DEFAULT_REMOTE, ()), default_doc='["198.51.100.1/32"]; with "2001:db8:2::1/128" too when a container has an IPv6 address')
    routes = Sub("routes", ROUTE, True, "Routes in the outside world, e.g. to a VIP through the host.", '[{ to = "10.100.100.100/32", via = "203.0.113.2" }]')


WAN = _table("[wan]", "The outside world: netcheck's own namespace on documentation addresses. Left out entirely, it takes the defaults.", WanKeys)


class BridgeKeys:
    name = Key("name", INTERFACE, "The bridge's name, as the spec's other keys refer to it.", '"br0"', Absent.REQUIRED)
    address = Key("address", DUAL_IFACE_OR_AUTO, 'The bridge\'s address, usually the containers\' gateway; "auto" (other tools\' setups): read back. '
                  "Dual stack: [IPv4, IPv6], the IPv6 prefix a ULA (fc00::/7) or in 2001:db8::/32.", '"172.18.0.1/16"')


BRIDGE = _table("[[bridge]]", "A Linux bridge on the host.", BridgeKeys)


class NetworkKeys:
    name = Key("name", NAME, "The network's name as the tool knows it (`docker network create NAME`, `podman network create NAME`); a container's `network` names it.",
               '"appnet"', Absent.REQUIRED)
    bridge = Key("bridge", INTERFACE, "The [[bridge]] the tool makes for it. Docker gives its bridge this name (`com.docker.network.bridge.name`); "
                 "Podman 4.3 names it itself (podman1, podman2, ... in order), and a wrong name is refused with the one Podman chose.", '"appbr0"', Absent.REQUIRED)
    subnet = Key("subnet", DUAL_NETWORK, "Its subnet (`--subnet`); the gateway is its first address. An IPv6 subnet beside it ([IPv4, IPv6]) is not created yet.",
                 '"172.30.0.0/24"', default_doc="the tool's choice")
    dns = Key("dns", BOOLEAN, "The tool's resolver names the network's containers: Docker's embedded resolver at 127.0.0.11, Podman's aardvark-dns "
              "on the gateway (`dns_enabled`; Docker's user-defined networks always have it). Either forwards other names to the resolver of the tool's host: "
              "netcheck's [dns] server, never a real one.", "false", True)
    dns_tcp = Key("dns_tcp", BOOLEAN, "Its resolver answers over TCP too. false: over UDP only, as aardvark-dns before 1.12 (Debian 12 has 1.4); "
                  "the DNS suite then expects a query over TCP refused.", "false", True)


NETWORK_TABLE = _table("[[network]]", "A network a tool creates by name (docker, podman setups), with a bridge of its own and its own DNS for its containers' names.", NetworkKeys)


class ResolveKeys:
    name = Key("name", DNS_NAME, "The name the container asks for; a short name goes through its search domains, as its resolver would.", '"web"', Absent.REQUIRED)
    address = Key("address", ANSWER, f'The address it must resolve to, or "{NXDOMAIN}": the name must not exist.', '"198.51.100.10"',
                  default_doc="required unless container is given")
    container = Key("container", NAME, "Instead of address: the name must resolve to this container's address, as the tool assigned it (read back).", '"web"')


RESOLVE = _table("resolve entry", "A name the container must resolve through its resolv.conf, and what to.", ResolveKeys)

class ContainerKeys:
    name = Key("name", NAME, "The container's name, as the spec's other keys and the reports refer to it.", '"netns0"', Absent.REQUIRED)
    interface = Key("interface", INTERFACE, "The container's end of the veth.", '"ceth0"', "eth0")
    address = Key("address", DUAL_IFACE_OR_AUTO, 'The container\'s address, with the prefix of its network; "auto" (other tools\' setups): read back. '
                  "Dual stack: [IPv4, IPv6], the IPv6 one inside its bridge's IPv6 prefix.", '"172.18.0.10/16"', Absent.REQUIRED)
    host_veth = Key("host_veth", INTERFACE, "The host's end of the veth.", '"veth0"', default_doc="veth0, veth1, ... by the container's position (build); read back (other tools' setups)")
    bridge = Key("bridge", INTERFACE, "The bridge the host end joins. Left out: a routed veth (give host_address).", '"br0"')
    host_address = Key("host_address", IFACE_ADDRESS, "The host end's address, for a routed veth without a bridge.", '"10.0.0.10/24"')
    gateway = Key("gateway", DUAL_GATEWAY, 'The container\'s default route: an address the host holds (the bridge\'s, or host_address); "none": no default route; '
                  '"auto": read back. Dual stack: [IPv4, IPv6].', '"172.18.0.1"', default_doc="the bridge's address(es), or host_address (build); none (other tools' setups)")
    routes = Sub("routes", ROUTE, True, "Static routes inside the container.", '[{ to = "10.1.0.0/16", via = "172.18.0.1" }]')
    services = Sub("services", SERVICE, True, "Services netcheck runs inside the container.", '[{ kind = "http", port = 5000 }]')
    mtu = Key("mtu", integer(68, 65535), "The MTU of both ends of the veth.", "1400", default_doc="the kernel's (1500)")
    netns = Key("netns", NETNS_PATH, "An existing namespace to discover (host mode, other tools' setups).", '"/run/netns/web"')
    dns = Key("dns", NAMESERVERS, "The container's resolvers, written to /etc/netns/NAME/resolv.conf as `ip netns exec` shows it (build; the [dns] address); "
              f'"{INHERIT}": no file of its own, it sees the machine\'s /etc/resolv.conf.', '["203.0.113.53"]', default_doc="none: netcheck writes and checks no resolv.conf")
    search = Key("search", SEARCH, "Search domains of its resolv.conf: a short name is tried with each.", '["corp.test"]', ())
    resolve = Sub("resolve", RESOLVE, True, "Names it must resolve, and to what (the DNS suite asks them).", '[{ name = "web", address = "198.51.100.10" }]')
    network = Key("network", NAME, "The [[network]] the tool puts it on (`docker run --network`, `podman run --network`); its bridge is the network's.", '"appnet"',
                  default_doc="the tool's default network (docker0, podman0)")


CONTAINER = _table("[[container]]", "A container: a network namespace joined to the host by a veth pair.", ContainerKeys)


class RecordKeys:
    name = Key("name", DNS_NAME, "An absolute name in the zone.", '"web.corp.test"', Absent.REQUIRED)
    address = Key("address", ADDRESS, "Its A record.", '"198.51.100.10"', Absent.REQUIRED)


RECORD = _table("records entry", "An A record of the zone.", RecordKeys)


class DnsKeys:
    address = Key("address", ADDRESS, "Where netcheck's DNS server listens (UDP and TCP port 53), in the outside world; documentation ranges only.", '"203.0.113.53"', Absent.REQUIRED)
    records = Sub("records", RECORD, True, "The zone it answers; any other name gets NXDOMAIN. It never forwards: nothing leaves the machine.",
                  '[{ name = "web.corp.test", address = "198.51.100.10" }]')


DNS = _table("[dns]", "A DNS server in the outside world, served by netcheck itself from the zone declared here. Left out: no DNS (the DNS suite skips).", DnsKeys)


class MasqueradeKeys:
    source = Key("source", NETWORK_ANY, "Match this source network (-s); an IPv6 network makes it an ip6tables (nft ip6) rule.", '"172.18.0.0/16"', default_doc="any IPv4 source")
    out_interface = Key("out_interface", INTERFACE, "Match packets leaving by this host interface (-o).", '"eth0"', default_doc="any interface")
    not_out_interface = Key("not_out_interface", INTERFACE, "Match packets not leaving by this host interface (! -o).", '"br0"', default_doc="none")


MASQUERADE = _table("[[masquerade]]", "A nat POSTROUTING MASQUERADE rule.", MasqueradeKeys)


class PublishKeys:
    container = Key("container", NAME, "The container that serves it.", '"netns0"', Absent.REQUIRED)
    host_port = Key("host_port", PORT_RANGE, 'The port on the host\'s address, or a range "LOW-HIGH" (one DNAT per port, as Docker writes them).', "8080", Absent.REQUIRED)
    port = Key("port", PORT_RANGE, "The container's port, or a range of the host range's size; the container must run a service of the same protocol there "
               "(for a range: on its first and last port).", "5000", Absent.REQUIRED)
    protocol = Key("protocol", choice(PUBLISH_PROTOCOLS), 'tcp (served by an "http" or "tcp-echo" service), udp (a "udp-echo" service) or sctp (no service: '
                   "netcheck sends an SCTP INIT and captures it, rewritten, inside the container).", '"udp"', "tcp")
    from_outside = Key("from_outside", BOOLEAN, "A nat PREROUTING DNAT: reachable from outside.", "false", True)
    from_host = Key("from_host", BOOLEAN, "A nat OUTPUT DNAT: reachable from the host itself.", "false", True)
    host_address = Key("host_address", BIND, 'The host address it is bound to: one the host holds, "0.0.0.0" (every address the host holds), or "127.0.0.1" '
                       '(the host alone; needs net.ipv4.conf.all.route_localnet = 1). "::1" is refused: the kernel cannot DNAT from it.', '"127.0.0.1"',
                       default_doc="the host's uplink address (host.address)")
    hairpin = Key("hairpin", BOOLEAN, "Docker's hairpin MASQUERADE (-s C -d C): the container reaches its own published port, and sees the bridge's address as the source.",
                  "true", False)


PUBLISH = _table("[[publish]]", "A published port: DNAT from the host's uplink address to a container's service.", PublishKeys)


class VipKeys:
    chain = Key("chain", CHAIN, "The custom chain's name.", '"VIP-EXAMPLE"', Absent.REQUIRED)
    address = Key("address", DUAL_ADDRESS, "The virtual address; no interface holds it. Dual stack: [IPv4, IPv6], the same chain in ip6tables DNATing to the container's IPv6 address.",
                  '"10.100.100.100"', Absent.REQUIRED)
    port = Key("port", PORT, "The virtual port.", "8080", Absent.REQUIRED)
    container = Key("container", NAME, "The container behind it.", '"http2"', Absent.REQUIRED)
    target_port = Key("target_port", PORT, "The container's port; the container must run a service of the same protocol there.", "8080", Absent.REQUIRED)
    protocol = Key("protocol", choice(PROTOCOLS), "tcp or udp.", '"tcp"', "tcp")
    from_outside = Key("from_outside", BOOLEAN, "PREROUTING jumps to the chain.", "false", True)
    from_host = Key("from_host", BOOLEAN, "OUTPUT jumps to the chain.", "false", True)


VIP = _table("[[vip]]", "A virtual IP: a custom nat chain that DNATs address:port to a container.", VipKeys)


class ForwardAcceptKeys:
    in_interface = Key("in_interface", INTERFACE, "Match packets arriving by this host interface (-i).", '"br0"', default_doc="any interface")
    out_interface = Key("out_interface", INTERFACE, "Match packets leaving by this host interface (-o).", '"eth0"', default_doc="any interface")


FORWARD_ACCEPT = _table("[[forward_accept]]", "A filter FORWARD ACCEPT rule between host interfaces (with forward_policy = \"DROP\", the only ways through).", ForwardAcceptKeys)


class TopKeys:
    name = Key("name", NAME, "The topology's name; test ids and reports carry it.", '"my-net"', Absent.REQUIRED)
    summary = Key("summary", TEXT, "One line saying what the topology is.", '"two containers on br0"', "")
    setup = Sub("setup", SETUP, False, SETUP.doc)
    host = Sub("host", HOST, False, HOST.doc)
    wan = Sub("wan", WAN, False, WAN.doc)
    bridge = Sub("bridge", BRIDGE, True, BRIDGE.doc)
    network = Sub("network", NETWORK_TABLE, True, NETWORK_TABLE.doc)
    container = Sub("container", CONTAINER, True, CONTAINER.doc)
    masquerade = Sub("masquerade", MASQUERADE, True, MASQUERADE.doc)
    publish = Sub("publish", PUBLISH, True, PUBLISH.doc)
    vip = Sub("vip", VIP, True, VIP.doc)
    forward_accept = Sub("forward_accept", FORWARD_ACCEPT, True, FORWARD_ACCEPT.doc)
    dns = Sub("dns", DNS, False, DNS.doc)


TOP = _table("top level", "The spec file itself.", TopKeys)


# --------------------------------------------------------------------------- reading


class _Problems:
    """Every problem found in one file: at most one per key, and none under a key already wrong.

    A wrong value is replaced by a stand-in so that reading goes on; a check that involves a
    wrong key is skipped, so one mistake gives one error, not a cascade.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[Problem] = []
        self.bad: set[str] = set()

    def wrong(self, *keys: str) -> bool:
        """Is one of these keys, or a table holding one, already wrong?"""
        return any(k == b or k.startswith((b + ".", b + "[")) for k in keys for b in self.bad)

    def add(self, key: str, value: object, problem: str, fix: str, involves: Iterable[str] = ()) -> None:
        if self.wrong(key, *involves):
            return
        self.bad.add(key)
        self.found.append(Problem(self.source, key, value, problem, fix))


class _Reader:
    """Reads one declared table: typed values, each under its key path; refuses undeclared keys."""

    def __init__(self, problems: _Problems, table: Table, path: str, data: object) -> None:
        self.problems, self.table, self.path = problems, table, path
        if not isinstance(data, dict):
            problems.add(path or "(top level)", data, "expected a table", f"write [{path}] as a TOML table")
            data = {}
        self.data: dict[str, object] = data
        for close in self._misspelt().values():
            problems.bad.add(self.key(close))  # its own checks (missing required key, ...) would only repeat the unknown key's error

    def key(self, name: str) -> str:
        shown = name if BARE_KEY_RE.match(name) else json.dumps(name)  # as TOML writes it: "" or "net.ipv4.x"
        return f"{self.path}.{shown}" if self.path else shown

    def fail(self, name: str, value: object, problem: str, fix: str, involves: Iterable[str] = ()) -> None:
        self.problems.add(self.key(name), value, problem, fix, involves)

    def ok(self, name: str) -> bool:
        """Was this key read without a problem (or left out)?"""
        return not self.problems.wrong(self.key(name))

    def _read(self, key: Key[T]) -> T | Absent:
        assert self.table.key(key.name) is key, f"{key.name} is not declared in {self.table.title}"
        if key.name not in self.data:
            if key.default is Absent.REQUIRED:
                self.fail(key.name, None, "missing required key", f"add {self.key(key.name)}")
            return key.default
        value = self.data[key.name]
        try:
            return key.kind.read(value, key.name)
        except _Invalid as exc:
            shown = exc.value if exc.at else value
            self.problems.add(self.key(key.name) + exc.at, shown, exc.problem, exc.fix)
            self.problems.bad.add(self.key(key.name))
            return Absent.REQUIRED

    def get(self, key: Key[T]) -> T:
        """A key that is required or has a default."""
        assert key.default is not Absent.NONE, f"{key.name} may be left out: read it with opt()"
        value = self._read(key)
        if isinstance(value, Absent):
            return key.kind.placeholder if isinstance(key.default, Absent) else key.default
        return value

    def opt(self, key: Key[T]) -> T | None:
        """A key that may be left out (None then)."""
        value = self._read(key)
        return None if isinstance(value, Absent) else value

    def sub(self, sub: Sub) -> _Reader:
        assert self.table.key(sub.name) is sub and not sub.many
        return _Reader(self.problems, sub.table, self.key(sub.name), self.data.get(sub.name, {}))

    def tables(self, sub: Sub) -> Iterator[_Reader]:
        assert self.table.key(sub.name) is sub and sub.many
        value = self.data.get(sub.name, [])
        if not isinstance(value, list):
            self.fail(sub.name, value, "expected an array of tables", f"write each entry as [[{self.key(sub.name)}]]")
            return
        for i, item in enumerate(value):
            yield _Reader(self.problems, sub.table, f"{self.key(sub.name)}[{i}]", item)

    def free(self) -> Iterator[tuple[str, int]]:
        """A table of free-named keys ([host.sysctl]): each valid name and its value."""
        assert self.table.names is not None and self.table.values is not None
        for name, value in self.data.items():
            if not self.table.names.match(name) or ".." in name:
                self.fail(name, value, "not a network sysctl name", 'use a dotted name under net., e.g. "net.ipv4.ip_forward"')
                continue
            try:
                yield name, self.table.values.read(value, json.dumps(name))
            except _Invalid as exc:
                self.fail(name, value, exc.problem, exc.fix)

    def _misspelt(self) -> dict[str, str]:
        """Undeclared keys that look like a declared key left out: {written: meant}."""
        if self.table.names is not None:
            return {}
        known = [k.name for k in self.table.keys]
        out = {}
        for unknown in set(self.data) - set(known):
            close = difflib.get_close_matches(unknown, known, n=1)
            if close and close[0] not in self.data:
                out[unknown] = close[0]
        return out

    def done(self) -> None:
        """Every undeclared key is a problem."""
        if self.table.names is not None:
            return
        known = sorted(k.name for k in self.table.keys)
        meant = self._misspelt()
        for unknown in sorted(set(self.data) - set(known)):
            hint = f"; did you mean {meant[unknown]}?" if unknown in meant else ""
            self.fail(unknown, self.data[unknown], "unknown key", f"remove it or correct the spelling (known here: {', '.join(known)}){hint}")


def _routes(r: _Reader, sub: Sub) -> tuple[Route, ...]:
    out = []
    for rr in r.tables(sub):
        out.append(Route(to=rr.get(RouteKeys.to), via=rr.get(RouteKeys.via)))
        rr.done()
    return tuple(out)


def _parse(data: dict[str, Any], source: str) -> Topology:
    problems = _Problems(source)
    top = _Reader(problems, TOP, "", data)
    name = top.get(TopKeys.name)
    summary = top.get(TopKeys.summary)

    sr = top.sub(TopKeys.setup)
    setup = Setup(
        mode=sr.get(SetupKeys.mode),
        command=sr.get(SetupKeys.command),
        teardown=sr.get(SetupKeys.teardown),
        config=sr.opt(SetupKeys.config),
        socket=sr.opt(SetupKeys.socket),
    )
    sr.done()
    _check_setup(sr, setup)

    wr = top.sub(TopKeys.wan)
    wan_address, wan_address6 = wr.get(WanKeys.address)
    remote, remote6 = wr.get(WanKeys.remote)
    wan = Wan(address=wan_address, remote=remote, routes=_routes(wr, WanKeys.routes), address6=wan_address6, remote6=remote6)
    wr.done()

    hr = top.sub(TopKeys.host)
    sysr = hr.sub(HostKeys.sysctl)
    sysctls = tuple(sysr.free())
    sysr.done()
    host_address, host_address6 = hr.get(HostKeys.address)
    gateway, gateway6 = hr.opt(HostKeys.gateway) or (None, None)
    host = Host(
        uplink=hr.get(HostKeys.uplink),
        address=host_address,
        gateway=gateway or wan.address.ip,
        sysctls=sysctls,
        forward_policy=hr.get(HostKeys.forward_policy),
        firewall=hr.get(HostKeys.firewall),
        address6=host_address6,
        gateway6=gateway6,
    )
    hr.done()

    bridges = []
    for br in top.tables(TopKeys.bridge):
        address, address6 = br.opt(BridgeKeys.address) or (None, None)
        bridges.append(Bridge(name=br.get(BridgeKeys.name), address=address, auto=("address",) if br.data.get("address") == AUTO else (), address6=address6))
        br.done()

    networks = []
    for nr in top.tables(TopKeys.network):
        subnet, subnet6 = nr.opt(NetworkKeys.subnet) or (None, None)
        networks.append(Network(name=nr.get(NetworkKeys.name), bridge=nr.get(NetworkKeys.bridge), subnet=subnet, subnet6=subnet6, dns=nr.get(NetworkKeys.dns),
                                dns_tcp=nr.get(NetworkKeys.dns_tcp)))
        nr.done()

    containers = []
    for i, cr in enumerate(top.tables(TopKeys.container)):
        host_veth = cr.opt(ContainerKeys.host_veth)
        if host_veth is None and "host_veth" not in cr.data and setup.mode == "build":
            host_veth = f"veth{i}"
        address, address6 = cr.get(ContainerKeys.address)
        gateway, gateway6 = cr.opt(ContainerKeys.gateway) or (None, None)
        c = Container(
            name=cr.get(ContainerKeys.name),
            interface=cr.get(ContainerKeys.interface),
            address=address,
            host_veth=host_veth or "",
            bridge=cr.opt(ContainerKeys.bridge),
            host_address=cr.opt(ContainerKeys.host_address),
            gateway=gateway,
            routes=_routes(cr, ContainerKeys.routes),
            services=tuple(Service(kind=s.get(ServiceKeys.kind), port=s.get(ServiceKeys.port)) for s in _done_each(cr.tables(ContainerKeys.services))),
            mtu=cr.opt(ContainerKeys.mtu),
            netns=cr.opt(ContainerKeys.netns),
            dns=cr.opt(ContainerKeys.dns),
            search=cr.get(ContainerKeys.search),
            resolve=tuple(_resolve_entry(r) for r in _done_each(cr.tables(ContainerKeys.resolve))),
            address6=address6,
            gateway6=gateway6,
            network=cr.opt(ContainerKeys.network),
        )
        on = next((n for n in networks if n.name == c.network), None)
        if on is not None and "bridge" not in cr.data:
            c = replace(c, bridge=on.bridge)
        given = {k: cr.data.get(k) for k in ("address", "gateway")}
        given = {k: v[0] if isinstance(v, list) and v else v for k, v in given.items()}  # dual stack: "auto" goes first
        auto = tuple(k for k, on in (("address", given["address"] == AUTO), ("gateway", given["gateway"] == AUTO), ("host_veth", not c.host_veth)) if on)
        if "gateway" not in cr.data and setup.mode == "build":
            c = replace(c, gateway=_host_side_address(c, bridges))
        if c.address6 is not None and not isinstance(cr.data.get("gateway"), list) and c.bridge is not None:
            b6 = next((b.address6 for b in bridges if b.name == c.bridge), None)
            c = replace(c, gateway6=b6.ip if b6 is not None else None)
        containers.append(replace(c, auto=auto))
        cr.done()

    masquerades = []
    for mr in top.tables(TopKeys.masquerade):
        masquerades.append(Masquerade(
            source=mr.opt(MasqueradeKeys.source),
            out_interface=mr.opt(MasqueradeKeys.out_interface),
            not_out_interface=mr.opt(MasqueradeKeys.not_out_interface),
        ))
        mr.done()

    publishes = []
    for pr in top.tables(TopKeys.publish):
        (host_lo, host_hi), (lo, hi) = pr.get(PublishKeys.host_port), pr.get(PublishKeys.port)
        if pr.ok("host_port") and pr.ok("port") and hi - lo != host_hi - host_lo:
            pr.fail("port", pr.data.get("port"), f"holds {hi - lo + 1} port(s), but host_port holds {host_hi - host_lo + 1}: a range maps port to port",
                    f'give port a range of the same size, e.g. port = "{lo}-{lo + host_hi - host_lo}" (as docker -p {host_lo}-{host_hi}:{lo}-{lo + host_hi - host_lo})')
        publishes.append(Publish(
            container=pr.get(PublishKeys.container),
            host_port=host_lo,
            port=lo,
            protocol=pr.get(PublishKeys.protocol),
            from_outside=pr.get(PublishKeys.from_outside),
            from_host=pr.get(PublishKeys.from_host),
            size=host_hi - host_lo + 1,
            host_address=pr.opt(PublishKeys.host_address),
            hairpin=pr.get(PublishKeys.hairpin),
        ))
        pr.done()

    vips = []
    for vr in top.tables(TopKeys.vip):
        vip_address, vip_address6 = vr.get(VipKeys.address)
        vips.append(Vip(
            chain=vr.get(VipKeys.chain),
            address=vip_address,
            port=vr.get(VipKeys.port),
            container=vr.get(VipKeys.container),
            target_port=vr.get(VipKeys.target_port),
            protocol=vr.get(VipKeys.protocol),
            from_outside=vr.get(VipKeys.from_outside),
            from_host=vr.get(VipKeys.from_host),
            address6=vip_address6,
        ))
        vr.done()

    forwards = []
    for fr in top.tables(TopKeys.forward_accept):
        forwards.append(ForwardAccept(in_interface=fr.opt(ForwardAcceptKeys.in_interface), out_interface=fr.opt(ForwardAcceptKeys.out_interface)))
        fr.done()
    dns = None
    if "dns" in data:
        dr = top.sub(TopKeys.dns)
        dns = Dns(dr.get(DnsKeys.address), tuple(Record(r.get(RecordKeys.name), r.get(RecordKeys.address)) for r in _done_each(dr.tables(DnsKeys.records))))
        dr.done()
    top.done()

    if any(c.address6 is not None for c in containers):
        # Dual stack: the outside world and the uplink get their IPv6 documentation addresses unless written.
        wan = replace(wan, address6=wan.address6 or DEFAULT_WAN_ADDRESS6, remote6=wan.remote6 or DEFAULT_REMOTE6)
        host = replace(host, address6=host.address6 or DEFAULT_HOST_ADDRESS6)
    if host.address6 is not None and host.gateway6 is None and wan.address6 is not None:
        host = replace(host, gateway6=wan.address6.ip)
    topo = Topology(
        name=name, summary=summary, source=source, host=host, wan=wan, bridges=tuple(bridges), containers=tuple(containers),
        masquerades=tuple(masquerades), publishes=tuple(publishes), vips=tuple(vips), forward_accepts=tuple(forwards), setup=setup, dns=dns,
        networks=tuple(networks),
    )
    _validate(topo, problems)
    if problems.found:
        raise SpecError.of(problems.found)
    return topo


def _resolve_entry(r: _Reader) -> Resolve:
    """A resolve entry: a name and either the address it must get or the container whose address it must get."""
    name, container = r.get(ResolveKeys.name), r.opt(ResolveKeys.container)
    if "address" in r.data and container is not None:
        r.fail("container", container, "a resolve entry takes address or container, not both", "remove one of them")
    elif "address" not in r.data and container is None:
        r.fail("address", None, "missing: what the name must resolve to", f'add address = "198.51.100.10" (or "{NXDOMAIN}"), or container = "<a container of this spec>"')
    return Resolve(name, r.opt(ResolveKeys.address), container)


def _host_side_address(c: Container, bridges: Sequence[Bridge]) -> IPv4Address | None:
    """A built container's gateway when the spec gives none: the address the host holds on its side."""
    address = next((b.address for b in bridges if b.name == c.bridge), None) if c.bridge is not None else c.host_address
    return address.ip if address is not None else None


def _done_each(readers: Iterator[_Reader]) -> Iterator[_Reader]:
    """Each reader of an array of tables, checked for undeclared keys once it has been read."""
    for r in readers:
        yield r
        r.done()


def _check_setup(r: _Reader, s: Setup) -> None:
    """Which [setup] keys each mode takes; each refusal says what to write instead."""
    if not r.ok("mode"):
        return
    given = {k for k in ("command", "teardown", "config", "socket") if getattr(s, k)}
    if s.mode == "build":
        for k in sorted(given):
            r.fail(k, getattr(s, k), "is only for setups made by another tool", f'set mode = "script", "cni", "netavark", "podman" or "docker" in [setup], or remove {k}')
        return
    allowed = {
        "script": {"command", "teardown"},
        "cni": {"config"},
        "netavark": {"config"},
        "podman": {"command", "teardown", "socket"},
        "docker": {"command", "teardown", "socket"},
    }[s.mode]
    for k in sorted(given - allowed):
        why = {
            "command": f"netcheck runs {s.mode} itself, as a container runtime would",
            "teardown": f"netcheck tears {s.mode} down itself",
            "config": f"mode {s.mode} reads no config file",
            "socket": f"mode {s.mode} has no daemon socket",
        }[k]
        r.fail(k, getattr(s, k), why, f"remove {k} (mode {s.mode} takes: {', '.join(sorted(allowed))})")
    if s.mode == "script" and not s.command:
        r.fail("command", None, "a script setup needs a command", 'add command = ["sh", "setup.sh"] (run from the spec file\'s folder)')
    if s.mode in ("cni", "netavark") and not s.config:
        example = "cni/bridge.conflist" if s.mode == "cni" else "netavark/network.json"
        r.fail("config", None, f"a {s.mode} setup needs its network configuration", f'add config = "{example}" (relative to the spec file\'s folder)')
    if s.teardown and not s.command:
        r.fail("teardown", list(s.teardown), "a teardown needs a command that it undoes", "add command, or remove teardown")
    if s.socket is not None and not (s.socket.startswith("/") or s.socket.startswith("unix:///")):
        r.fail("socket", s.socket, "not a unix socket path", 'write it as "/run/docker.sock" or "unix:///run/docker.sock"')


# --------------------------------------------------------------------------- cross-field checks


def _validate(t: Topology, problems: _Problems) -> None:
    """Cross-field checks: references, subnets, duplicates, documentation ranges, and what would fail at run time."""
    fail, wrong = problems.add, problems.wrong
    doc = "the outside world uses documentation ranges only (203.0.113.0/24, 198.51.100.0/24)"
    for key, iface in [("host.address", t.host.address), ("wan.address", t.wan.address)] + [(f"wan.remote[{i}]", r) for i, r in enumerate(t.wan.remote)]:
        if not any(iface.ip in d for d in DOC_RANGES):
            fail(key, str(iface), "is outside the documentation ranges", f"use an address in 203.0.113.0/24 or 198.51.100.0/24: {doc}")
    if t.host.address.network != t.wan.address.network:
        fail("wan.address", str(t.wan.address), f"is not in the host uplink's subnet {t.host.address.network}", "put host.address and wan.address in one subnet", ["host.address"])
    if t.host.gateway != t.wan.address.ip:
        fail("host.gateway", str(t.host.gateway), f"is not the wan address {t.wan.address.ip}", f'set host.gateway = "{t.wan.address.ip}"', ["wan.address"])

    # names: host-side interfaces share one namespace; containers need distinct names.
    seen: dict[str, str] = {}
    for key, name in [("host.uplink", t.host.uplink)] + [(f"bridge[{i}].name", b.name) for i, b in enumerate(t.bridges)]:
        if wrong(key):
            continue
        if name in seen:
            fail(key, name, f"duplicate interface name (also {seen[name]})", "give each host interface its own name")
        seen[name] = key
    names: dict[str, int] = {}
    for i, c in enumerate(t.containers):
        key = f"container[{i}].name"
        if wrong(key):
            continue
        if c.name in names:
            fail(key, c.name, f"duplicate container name (also container[{names[c.name]}])", "give each container its own name")
        names[c.name] = i
        if c.name in ("host", "wan"):
            fail(key, c.name, "is reserved for netcheck's own namespaces", "rename the container")
    all_names = [f"container[{i}].name" for i in range(len(t.containers))]
    external = "set mode in [setup] to the tool that makes this setup (script, cni, netavark, podman, docker)"
    build = t.setup.mode == "build" and not wrong("setup.mode")
    for i, c in enumerate(t.containers):
        key = f"container[{i}]"
        if c.host_veth and not wrong(f"{key}.host_veth"):
            if c.host_veth in seen:
                fail(f"{key}.host_veth", c.host_veth, f"duplicate interface name (also {seen[c.host_veth]})", "give each host-side veth its own name")
            seen[c.host_veth] = f"{key}.host_veth"
        if build:
            if "address" in c.auto:
                fail(f"{key}.address", AUTO, "'auto' is only for setups made by another tool", f"write the address, or {external}")
            if "gateway" in c.auto:
                fail(f"{key}.gateway", AUTO, "'auto' is only for setups made by another tool", f"write the gateway, or {external}")
            if c.netns is not None:
                fail(f"{key}.netns", c.netns, "netcheck builds this container's namespace itself", f"remove netns, or {external}")
    for i, b in enumerate(t.bridges):
        if b.auto and build:
            fail(f"bridge[{i}].address", AUTO, "'auto' is only for setups made by another tool", f"write the address, or {external}")
    iface_keys = ["host.uplink", *(f"bridge[{i}].name" for i in range(len(t.bridges))), *(f"container[{i}].host_veth" for i in range(len(t.containers)))]

    # subnets: bridges, routed veths and the uplink must not overlap.
    subnets: list[tuple[str, IPv4Network]] = [("host.address", t.host.address.network)]
    subnets += [(f"bridge[{i}].address", b.address.network) for i, b in enumerate(t.bridges) if b.address is not None]
    subnets += [(f"container[{i}].host_address", c.host_address.network) for i, c in enumerate(t.containers) if c.host_address is not None]
    subnets = [(where, net) for where, net in subnets if not wrong(where)]
    for n, (where, subnet) in enumerate(subnets):
        for other_where, other in subnets[:n]:
            if subnet.overlaps(other):
                fail(where, str(subnet), f"overlaps {other} ({other_where})", "give each network its own, non-overlapping subnet", [other_where])

    # addresses: unique, and inside the subnet they belong to.
    used: dict[IPv4Address, str] = {}

    def claim(ip: IPv4Address, key: str) -> None:
        if wrong(key):
            return
        if ip in used:
            fail(key, str(ip), f"duplicate address (also {used[ip]})", "give each interface its own address")
        else:
            used[ip] = key

    claim(t.host.address.ip, "host.address")
    claim(t.wan.address.ip, "wan.address")
    for i, r in enumerate(t.wan.remote):
        claim(r.ip, f"wan.remote[{i}]")
    for i, b in enumerate(t.bridges):
        if b.address is not None:
            claim(b.address.ip, f"bridge[{i}].address")
    bridge_at = {b.name: i for i, b in enumerate(t.bridges)}
    all_bridges = [f"bridge[{i}].name" for i in range(len(t.bridges))]
    for i, c in enumerate(t.containers):
        key = f"container[{i}]"
        if c.bridge is not None and c.bridge not in bridge_at:
            fail(f"{key}.bridge", c.bridge, "names no bridge in this spec", f"declare [[bridge]] name = \"{c.bridge}\", or use one of: {', '.join(bridge_at) or 'none'}", all_bridges)
            continue
        if c.bridge is not None and c.host_address is not None:
            fail(f"{key}.host_address", str(c.host_address), "a bridged container's veth takes no host address", "remove host_address, or remove bridge for a routed veth", [f"{key}.bridge"])
        if c.address is None or wrong(f"{key}.address", f"{key}.bridge"):
            continue
        claim(c.address.ip, f"{key}.address")
        if c.host_address is not None:
            claim(c.host_address.ip, f"{key}.host_address")
        net, net_key = _own_network(t, i, bridge_at)
        if net is not None and c.address.ip not in net:
            fail(f"{key}.address", str(c.address), f"is outside its network {net}", f"use an address inside {net}", [net_key])
        if net is not None and c.address.network != net:
            fail(f"{key}.address", str(c.address), f"has prefix /{c.address.network.prefixlen} but its network is {net}", f"write it with /{net.prefixlen}", [net_key])
        if c.gateway is not None and c.gateway not in c.address.network:
            fail(f"{key}.gateway", str(c.gateway), f"is not on the container's subnet {c.address.network}", "use the bridge's or the host veth's address", [f"{key}.address"])
        _check_gateway_owner(t, c, key, problems, bridge_at, net_key, build)

    for i, m in enumerate(t.masquerades):
        for attr in ("out_interface", "not_out_interface"):
            ref = getattr(m, attr)
            if ref is not None and ref not in seen:
                fail(f"masquerade[{i}].{attr}", ref, "names no host interface in this spec", f"use one of: {', '.join(sorted(seen))}", iface_keys)
    for i, f in enumerate(t.forward_accepts):
        for attr in ("in_interface", "out_interface"):
            ref = getattr(f, attr)
            if ref is not None and ref not in seen:
                fail(f"forward_accept[{i}].{attr}", ref, "names no host interface in this spec", f"use one of: {', '.join(sorted(seen))}", iface_keys)
    ports: dict[tuple[str, str, int], str] = {}
    for i, p in enumerate(t.publishes):
        if p.container not in names:
            fail(f"publish[{i}].container", p.container, "names no container in this spec", f"use one of: {', '.join(names) or 'none'}", all_names)
        elif not wrong(f"publish[{i}].port", f"publish[{i}].protocol") and p.protocol != "sctp":
            for port in sorted({p.port, p.container_port(p.host_ports[-1])}):
                _check_served(t, names[p.container], port, p.protocol, f"publish[{i}].port", problems)
        _check_bind(t, i, p, problems, build)
        if wrong(f"publish[{i}].host_port"):
            continue
        for port in p.host_ports:
            k = (p.protocol, str(p.host_address or ""), port)
            if k in ports:
                fail(f"publish[{i}].host_port", p.host_port, f"is already published by {ports[k]}" + (f" (port {port} of the range)" if p.size > 1 else ""),
                     "publish each host port once")
                break
            ports[k] = f"publish[{i}]"
    chains: set[str] = set()
    for i, v in enumerate(t.vips):
        if v.container not in names:
            fail(f"vip[{i}].container", v.container, "names no container in this spec", f"use one of: {', '.join(names) or 'none'}", all_names)
        elif not wrong(f"vip[{i}].target_port", f"vip[{i}].protocol"):
            _check_served(t, names[v.container], v.target_port, v.protocol, f"vip[{i}].target_port", problems)
        if not wrong(f"vip[{i}].chain"):
            if v.chain in chains or v.chain in ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT"):
                fail(f"vip[{i}].chain", v.chain, "duplicate or built-in chain name", "give each VIP its own custom chain")
            chains.add(v.chain)
        if v.address in used:
            fail(f"vip[{i}].address", str(v.address), f"is already the address of {used[v.address]}", "a VIP must not be an interface address")
    for i, c in enumerate(t.containers):
        for j, route in enumerate(c.routes):
            if c.address is not None and route.family == 4 and route.via not in c.address.network:
                fail(f"container[{i}].routes[{j}].via", str(route.via), f"is not on the container's subnet {c.address.network}", "route via an address on the container's subnet",
                     [f"container[{i}].address"])
    for j, route in enumerate(t.wan.routes):
        if route.family == 4 and route.via not in t.wan.address.network:
            fail(f"wan.routes[{j}].via", str(route.via), f"is not on the uplink subnet {t.wan.address.network}", f'route via the host, "{t.host.address.ip}"', ["wan.address"])
    for i, c in enumerate(t.containers):
        served: dict[tuple[Transport, int], int] = {}
        for j, svc in enumerate(c.services):
            key = f"container[{i}].services[{j}]"
            if problems.wrong(key):
                continue
            if (svc.protocol, svc.port) in served:
                first = served[(svc.protocol, svc.port)]
                problems.add(f"{key}.port", svc.port, f"services[{first}] already listens on {svc.protocol} port {svc.port} in {c.name}, so this one could not start",
                             "give each service of a container its own port (an http and a udp-echo may share one)", [f"container[{i}].services[{first}]"])
            served.setdefault((svc.protocol, svc.port), j)
    if t.setup.mode == "script":
        _check_env_names(t, problems)
    _check_networks(t, problems, bridge_at)
    _check_dns(t, problems, used, build)
    _check_ipv6(t, problems, bridge_at)


def _check_networks(t: Topology, problems: _Problems, bridge_at: Mapping[str, int]) -> None:
    """[[network]] only where a tool creates networks by name, each on a bridge of the spec's own, and every container's network one of them."""
    fail, wrong = problems.add, problems.wrong
    by_name: dict[str, int] = {}
    on_bridge: dict[str, int] = {}
    for i, n in enumerate(t.networks):
        key = f"network[{i}]"
        if t.setup.mode not in ("docker", "podman") and not wrong("setup.mode"):
            fail(f"{key}.name", n.name, f"mode {t.setup.mode} creates no networks by name (docker network create, podman network create)",
                 'set mode = "docker" or "podman" in [setup], or remove [[network]]' + (" (netavark: its network file is setup.config)" if t.setup.mode == "netavark" else ""))
            continue
        if not wrong(f"{key}.name"):
            if n.name in by_name:
                fail(f"{key}.name", n.name, f"duplicate network name (also network[{by_name[n.name]}])", "give each network its own name")
            elif n.name in ("bridge", "host", "none", "podman"):
                fail(f"{key}.name", n.name, "is the name of one of the tool's own networks", 'name it something of your own, e.g. "appnet"')
            by_name.setdefault(n.name, i)
        if not wrong(f"{key}.bridge"):
            if n.bridge not in bridge_at:
                fail(f"{key}.bridge", n.bridge, "names no bridge in this spec", f'declare [[bridge]] name = "{n.bridge}" (address = "auto"), the bridge the tool makes for it')
            elif n.bridge in on_bridge:
                fail(f"{key}.bridge", n.bridge, f"is already the bridge of network[{on_bridge[n.bridge]}]", "give each network its own bridge")
            on_bridge.setdefault(n.bridge, i)
        if n.subnet6 is not None and not wrong(f"{key}.subnet"):
            fail(f"{key}.subnet", [str(n.subnet), str(n.subnet6)], "the docker and podman adapters do not create IPv6 networks yet", f'write subnet = "{n.subnet}"')
    for i, c in enumerate(t.containers):
        key = f"container[{i}]"
        if c.network is None or wrong(f"{key}.network"):
            continue
        on = t.network_of(c)
        if on is None:
            fail(f"{key}.network", c.network, "names no network in this spec", f'declare [[network]] name = "{c.network}", or use one of: {", ".join(by_name) or "none"}',
                 [f"network[{j}].name" for j in range(len(t.networks))])
        elif c.bridge != on.bridge and not wrong(f"{key}.bridge"):
            fail(f"{key}.bridge", c.bridge, f"network {on.name} is on bridge {on.bridge}", f'write bridge = "{on.bridge}", or leave bridge out', [f"{key}.network"])
        elif on.subnet is not None and c.address is not None and c.address.network != on.subnet and not wrong(f"{key}.address"):
            fail(f"{key}.address", str(c.address), f"is not an address of network {on.name} ({on.subnet})", f"use an address inside {on.subnet} with /{on.subnet.prefixlen}, or \"auto\"")


def _check_dns(t: Topology, problems: _Problems, used: Mapping[IPv4Address, str], build: bool) -> None:
    """The [dns] server on documentation addresses only, every container's resolver one that something serves,
    and every name a container must resolve answered so by the zone, through its search domains."""
    fail, wrong = problems.add, problems.wrong
    d = t.dns
    if d is not None and not wrong("dns.address"):
        owner = used.get(d.address)
        if not any(d.address in r for r in DOC_RANGES):
            fail("dns.address", str(d.address), "is outside the documentation ranges: netcheck's DNS server lives in the outside world, and no real resolver is ever asked",
                 'use an address in 203.0.113.0/24 or 198.51.100.0/24, e.g. "203.0.113.53"')
        elif owner is not None and not owner.startswith("wan."):
            fail("dns.address", str(d.address), f"is already the address of {owner}, not of the outside world", 'give the DNS server an address of its own, e.g. "203.0.113.53"')
    if d is not None:
        names: dict[str, int] = {}
        for j, rec in enumerate(d.records):
            key = f"dns.records[{j}].name"
            if not wrong(key) and rec.name in names:
                fail(key, rec.name, f"is already dns.records[{names[rec.name]}]", "give each name one A record")
            names.setdefault(rec.name, j)
    for i, c in enumerate(t.containers):
        key = f"container[{i}]"
        if wrong(f"{key}.dns"):
            continue
        if c.dns is None or isinstance(c.dns, str):
            if c.search:
                fail(f"{key}.search", list(c.search), "search domains go into the container's own resolv.conf, which it has only with dns = [...]",
                     'add dns = ["<the [dns] address>"], or remove search', [f"{key}.dns"])
            if c.resolve:
                why = "inherits the machine's resolv.conf, whose resolver netcheck never asks (nothing may leave the machine)" if c.dns == INHERIT else "declares no resolver"
                fail(f"{key}.resolve", f"{len(c.resolve)} entries", f"container {c.name} {why}", 'give it dns = ["<the [dns] address>"], or remove resolve', [f"{key}.dns"])
            continue
        for j, ns in enumerate(c.dns):
            where = f"{key}.dns[{j}]"
            if ns.is_loopback:
                if build:
                    fail(where, str(ns), "is a loopback address: inside a container that is its own loopback, where nothing serves DNS "
                         "(the host's stub resolver, such as 127.0.0.53, is out of the container's reach)",
                         f'use the [dns] server\'s address{f" ({d.address})" if d else ""}, which the container reaches through the host')
                continue
            if build and (d is None or ns != d.address):
                served = f"the only resolver in this spec is [dns] address = \"{d.address}\"" if d else "this spec declares no DNS server"
                fix = f'write dns = ["{d.address}"]' if d else 'declare [dns] address = "203.0.113.53" (with its records) and write dns = ["203.0.113.53"]'
                fail(where, str(ns), f"nothing serves DNS there: {served}, and netcheck never asks a real resolver", fix, ["dns.address"])
        for j, r in enumerate(c.resolve):
            if r.container is not None and r.container not in {o.name for o in t.containers}:
                fail(f"{key}.resolve[{j}].container", r.container, "names no container in this spec", f"use one of: {', '.join(o.name for o in t.containers)}")
        on = t.network_of(c)
        if d is None or not c.resolve or wrong("dns", f"{key}.search") or (on is not None and on.dns):
            continue  # a network's own resolver answers its containers' names: the suite asks it, the zone has no say
        conf = resolvconf.ResolvConf(tuple(map(str, c.dns)), c.search)
        for j, r in enumerate(c.resolve):
            where = f"{key}.resolve[{j}]"
            if wrong(f"{where}.name", f"{where}.address", f"{where}.container") or (r.container is not None and r.container not in {o.name for o in t.containers}):
                continue
            expected = t.answer(r)
            if r.container is not None and expected is None:
                continue  # the container's address is read back at run time
            hit, got = resolvconf.lookup(d.zone(), r.name, conf)
            tried = ", ".join(resolvconf.candidates(r.name, conf))
            want = str(expected) if expected is not None else NXDOMAIN
            if got != (str(expected) if expected is not None else None):
                answer = f"{hit} -> {got}" if hit else "NXDOMAIN"
                fix = (f'add {{ name = "{resolvconf.candidates(r.name, conf)[0]}", address = "{expected}" }} to [dns] records, or correct the address'
                       if hit is None else f'write address = "{got}", or change the record {hit} in [dns]')
                fail(f"{where}.address", want, f"the zone in [dns] answers {answer} for {r.name!r} (asked as: {tried})", fix, ["dns.records"])


def _check_ipv6(t: Topology, problems: _Problems, bridge_at: Mapping[str, int]) -> None:
    """Dual stack: documentation addresses outside, each container's IPv6 address inside its bridge's prefix, routes of one family."""
    fail, wrong = problems.add, problems.wrong
    doc = "the outside world's IPv6 addresses are documentation ones only (2001:db8::/32)"
    outside = [("host.address[1]", t.host.address6), ("wan.address[1]", t.wan.address6)] + [(f"wan.remote[{len(t.wan.remote) + i}]", r) for i, r in enumerate(t.wan.remote6)]
    for key, iface in outside:
        if iface is not None and not wrong(key) and iface.ip not in DOC_RANGE6:
            fail(key, str(iface), "is outside 2001:db8::/32", f"use an address in 2001:db8::/32: {doc}")
    if t.host.address6 is not None and t.wan.address6 is not None and t.host.address6.network != t.wan.address6.network:
        fail("wan.address[1]", str(t.wan.address6), f"is not in the host uplink's IPv6 subnet {t.host.address6.network}", "put the IPv6 ones of host.address and wan.address in one prefix",
             ["host.address"])
    if t.host.gateway6 is not None and t.wan.address6 is not None and t.host.gateway6 != t.wan.address6.ip:
        fail("host.gateway[1]", str(t.host.gateway6), f"is not the wan's IPv6 address {t.wan.address6.ip}", f'write host.gateway = ["{t.host.gateway}", "{t.wan.address6.ip}"]', ["wan.address"])
    held: dict[IPv6Address, str] = {}
    for key, iface in outside:
        if iface is not None:
            held.setdefault(iface.ip, key)
    prefixes: list[tuple[str, IPv6Network]] = [("host.address[1]", t.host.address6.network)] if t.host.address6 is not None else []
    for i, b in enumerate(t.bridges):
        key = f"bridge[{i}].address[1]"
        if b.address6 is None or wrong(key):
            continue
        if b.address6.ip not in ULA and b.address6.ip not in DOC_RANGE6:
            fail(key, str(b.address6), "is a routable (global) IPv6 prefix", "use a ULA prefix (fd00::/8, e.g. fd00:18::1/64) or one in 2001:db8::/32: netcheck never uses a real prefix")
            continue
        for other_key, other in prefixes:
            if b.address6.network.overlaps(other):
                fail(key, str(b.address6), f"overlaps {other} ({other_key})", "give each network its own IPv6 prefix", [other_key])
        prefixes.append((key, b.address6.network))
        if b.address6.ip in held:
            fail(key, str(b.address6), f"duplicate address (also {held[b.address6.ip]})", "give each interface its own address")
        held.setdefault(b.address6.ip, key)
    for i, c in enumerate(t.containers):
        key = f"container[{i}]"
        if c.address6 is None or wrong(f"{key}.address", f"{key}.bridge"):
            continue
        if c.bridge is None or c.bridge not in bridge_at:
            fail(f"{key}.address[1]", str(c.address6), "IPv6 is built on bridged containers only", "put the container on a bridge with an IPv6 prefix, or give it its IPv4 address alone")
            continue
        j = bridge_at[c.bridge]
        b6 = t.bridges[j].address6
        if wrong(f"bridge[{j}].address"):
            continue  # its own error says what is wrong there
        if b6 is None:
            fail(f"{key}.address[1]", str(c.address6), f"its bridge {c.bridge} has no IPv6 prefix, so nothing routes it",
                 f'give bridge[{j}] an IPv6 prefix that holds {c.address6.ip}: address = ["{t.bridges[j].address}", "{next(c.address6.network.hosts())}/{c.address6.network.prefixlen}"]')
            continue
        if c.address6.ip not in b6.network:
            fail(f"{key}.address[1]", str(c.address6), f"is outside its bridge {c.bridge}'s prefix {b6.network}", f"use an address inside {b6.network}", [f"bridge[{j}].address"])
            continue
        if c.address6.network != b6.network:
            fail(f"{key}.address[1]", str(c.address6), f"has prefix /{c.address6.network.prefixlen} but its bridge's is {b6.network}", f"write it with /{b6.network.prefixlen}",
                 [f"bridge[{j}].address"])
        if c.address6.ip in held:
            fail(f"{key}.address[1]", str(c.address6), f"duplicate address (also {held[c.address6.ip]})", "give each interface its own address")
        held.setdefault(c.address6.ip, f"{key}.address[1]")
        if c.gateway6 is not None and not wrong(f"{key}.gateway[1]") and c.gateway6 != b6.ip:
            fail(f"{key}.gateway[1]", str(c.gateway6), "is an address no interface in this spec holds, so the container's IPv6 default route leads nowhere",
                 f'write gateway = ["{c.gateway}", "{b6.ip}"]: the IPv6 one is bridge {c.bridge}\'s', [f"bridge[{j}].address"])
        for r, route in enumerate(c.routes):
            if route.family == 6 and route.via not in c.address6.network:
                fail(f"{key}.routes[{r}].via", str(route.via), f"is not on the container's IPv6 subnet {c.address6.network}", "route via an address on that subnet")
    for i, c in enumerate(t.containers):
        for r, route in enumerate(c.routes):
            if route.via.version != route.to.version:
                fail(f"container[{i}].routes[{r}].via", str(route.via), f"is an IPv{route.via.version} next hop for an IPv{route.to.version} destination",
                     "give a next hop of the destination's family")
            elif route.family == 6 and c.address6 is None:
                fail(f"container[{i}].routes[{r}].to", str(route.to), "an IPv6 route in a container without an IPv6 address", "give the container an IPv6 address ([IPv4, IPv6]), or remove the route")
    for r, route in enumerate(t.wan.routes):
        if route.via.version != route.to.version:
            fail(f"wan.routes[{r}].via", str(route.via), f"is an IPv{route.via.version} next hop for an IPv{route.to.version} destination", "give a next hop of the destination's family")
        elif route.family == 6 and (t.wan.address6 is None or route.via not in t.wan.address6.network):
            fail(f"wan.routes[{r}].via", str(route.via), "is not on the uplink's IPv6 subnet", f'route via the host\'s IPv6 address, "{t.host.address6.ip if t.host.address6 else "2001:db8:1::2"}"')
    for i, m in enumerate(t.masquerades):
        if m.family == 6 and not any(c.address6 is not None and c.address6.ip in m.source for c in t.containers if m.source is not None):
            fail(f"masquerade[{i}].source", str(m.source), "covers no container's IPv6 address, so it rewrites nothing",
                 "use the IPv6 prefix of a bridge whose containers have IPv6 addresses")
    for i, v in enumerate(t.vips):
        if v.address6 is None or wrong(f"vip[{i}].address[1]"):
            continue
        c6 = next((c for c in t.containers if c.name == v.container), None)
        if c6 is not None and c6.address6 is None:
            fail(f"vip[{i}].address[1]", str(v.address6),
                 f"container {v.container} has no IPv6 address to DNAT to", f"give container {v.container} an IPv6 address, or give vip[{i}].address its IPv4 one alone")
        elif v.address6 in held:
            fail(f"vip[{i}].address[1]", str(v.address6), f"is already the address of {held[v.address6]}", "a VIP must not be an interface address")
    if 6 in t.families and t.setup.mode == "build" and t.host.sysctl("net.ipv6.conf.all.disable_ipv6") == 1:
        fail('host.sysctl."net.ipv6.conf.all.disable_ipv6"', 1, "disables IPv6 on the host, but containers have IPv6 addresses", "set it to 0, or give the containers their IPv4 addresses alone")


def _own_network(t: Topology, i: int, bridge_at: Mapping[str, int]) -> tuple[IPv4Network | None, str]:
    """The network container ``i``'s address belongs to (its bridge's, or its routed veth's), and the key that says so."""
    c = t.containers[i]
    if c.bridge is not None:
        j = bridge_at[c.bridge]
        address = t.bridges[j].address
        return (address.network if address is not None else None), f"bridge[{j}].address"
    if c.host_address is not None:
        return c.host_address.network, f"container[{i}].host_address"
    return None, f"container[{i}].address"


def _check_gateway_owner(t: Topology, c: Container, key: str, problems: _Problems, bridge_at: Mapping[str, int], net_key: str, build: bool) -> None:
    """A container's gateway must be an address the host holds on the container's side, or its default route leads nowhere."""
    if c.gateway is None:
        return
    if c.bridge is not None:
        address = t.bridges[bridge_at[c.bridge]].address
        owner, what = (address.ip if address is not None else None), f"bridge {c.bridge}"
        if address is None and not build:
            return  # another tool's bridge, its address not stated: nothing to compare with
    else:
        owner, what = (c.host_address.ip if c.host_address is not None else None), "the host end of the veth (host_address)"
    if c.gateway == owner:
        return
    if owner is None:
        subnet = c.address.network if c.address is not None else "the container's subnet"
        fix = f"give {what} an address on {subnet}, and use it as the gateway" if c.bridge else f"add host_address on {subnet}, and use it as the gateway"
    else:
        fix = f'set gateway = "{owner}", the address of {what}'
    problems.add(f"{key}.gateway", str(c.gateway), "is an address no interface in this spec holds, so the container's default route leads nowhere", fix,
                 [f"{key}.address", f"{key}.bridge", f"{key}.host_address", net_key])


def _check_bind(t: Topology, i: int, p: Publish, problems: _Problems, build: bool) -> None:
    """A published port's host address: one the host holds, the wildcard, or 127.0.0.1 with route_localnet; never ::1; ranges and binds on labs netcheck builds."""
    key = f"publish[{i}]"
    a = p.host_address
    if not build:
        for name, given in (("host_address", a is not None), ("hairpin", p.hairpin), ("host_port", p.size > 1)):
            if given:
                problems.add(f"{key}.{name}", str(a) if name == "host_address" else p.hairpin if name == "hairpin" else f"{p.host_port}-{p.host_ports[-1]}",
                             f"is checked on labs netcheck builds only (mode {t.setup.mode} maps a single port on the host's address)",
                             f'remove {name} here, or check it on a spec with mode = "build"')
        return
    if a is None or problems.wrong(f"{key}.host_address"):
        return
    if a.version == 6 and a.is_loopback:
        problems.add(f"{key}.host_address", str(a), "the kernel cannot DNAT to or from ::1: IPv6 has no route_localnet, so a packet from ::1 never leaves lo "
                     "(only a userland proxy, such as docker-proxy, publishes there)",
                     'bind "127.0.0.1" (with net.ipv4.conf.all.route_localnet = 1), the host\'s address, or "::"; or run the tool\'s userland proxy')
        return
    if a.is_loopback:
        if t.host.sysctl("net.ipv4.conf.all.route_localnet") != 1:
            problems.add(f"{key}.host_address", str(a), "the host's nat OUTPUT DNAT sends the loopback source on to the container, which the kernel allows only with "
                         "route_localnet = 1 (and the reply to 127.0.0.1 back in)",
                         'add "net.ipv4.conf.all.route_localnet" = 1 to [host.sysctl] (netcheck adds the MASQUERADE of 127.0.0.0/8 out the bridge, as CNI portmap does)',
                         ["host.sysctl"])
        elif p.from_outside:
            problems.add(f"{key}.from_outside", True, f"a port bound to {a} is the host's alone: nothing outside can address it", "write from_outside = false")
        return
    held = [str(x) for x in host_addresses(t, a.version)]
    if a.is_unspecified:
        if not held:
            problems.add(f"{key}.host_address", str(a), f"the host holds no IPv{a.version} address, so the wildcard binds nothing", 'use "0.0.0.0", or give the host an address of that family')
        return
    if str(a) not in held:
        problems.add(f"{key}.host_address", str(a), "is no address the host holds, so nothing would be DNATed",
                     f"use one of: {', '.join(held)}, \"0.0.0.0\" (all of them) or \"127.0.0.1\"", ["host.address"])


def host_addresses(t: Topology, version: int = 4) -> tuple[IPv4Address | IPv6Address, ...]:
    """The addresses the host holds (its uplink's, its bridges', its routed veths'), of one IP version: what a wildcard bind stands for."""
    held: list[IPv4Address | IPv6Address] = [t.host.address.ip] + ([t.host.address6.ip] if t.host.address6 is not None else [])
    held += [a.ip for b in t.bridges for a in (b.address, b.address6) if a is not None]
    held += [c.host_address.ip for c in t.containers if c.host_address is not None]
    return tuple(dict.fromkeys(a for a in held if a.version == version))


def _check_served(t: Topology, index: int, port: int, protocol: Transport, key: str, problems: _Problems) -> None:
    """A port netcheck DNATs to must have a service of the same protocol behind it, or every probe of it fails."""
    c = t.containers[index]
    kinds: tuple[ServiceKind, ...] = ("udp-echo",) if protocol == "udp" else ("http", "tcp-echo")
    if any(s.port == port and s.kind in kinds for s in c.services):
        return
    kind = kinds[0]
    problems.add(key, port, f"container {c.name} runs no {protocol} service on port {port}, so nothing would answer",
                 f'add {{ kind = "{kind}", port = {port} }} to container[{index}].services', [f"container[{index}].services", f"container[{index}].name"])


def _check_env_names(t: Topology, problems: _Problems) -> None:
    """A script finds each container's namespace in a variable; two names must not give the same one."""
    first: dict[str, int] = {}
    for i, c in enumerate(t.containers):
        key = f"container[{i}].name"
        if problems.wrong(key):
            continue
        var = env_name(c.name)
        if var in first and t.containers[first[var]].name != c.name:
            j = first[var]
            problems.add(key, c.name, f"gives the script the same variable ${var} as container[{j}].name = {t.containers[j].name!r}",
                         "rename one of them so that the names differ in more than - . _ or letter case")
        first.setdefault(var, i)


# --------------------------------------------------------------------------- entry points


def loads(text: str, source: str = "<string>") -> Topology:
    """Parse and validate a spec from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(source, "(syntax)", None, f"not valid TOML: {exc}", "fix the TOML syntax at the position shown") from None
    except RecursionError:
        raise SpecError(source, "(syntax)", None, "arrays or tables nested too deeply to read", "flatten the nesting") from None
    except ValueError as exc:  # tomllib reads a decimal of over 4300 digits with int(), which refuses it
        raise SpecError(source, "(syntax)", None, f"a value Python cannot read ({str(exc).split(';')[0]})", "write numbers with fewer digits") from None
    return _parse(data, source)


def read_text(path: str | Path) -> str:
    """A spec file's text: a regular file of at most MAX_BYTES of UTF-8. Never blocks on a FIFO or a device."""
    p = Path(path)

    def refuse(problem: str, fix: str) -> SpecError:
        return SpecError(str(p), "(file)", str(p), problem, fix)

    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer. fstat on the open file, not
        # stat before opening: what is checked is what is read.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket
            raise refuse("is not a regular file (a socket)", "give the path of a .toml spec file") from None
        raise refuse(f"cannot read the file ({exc.strerror})", "check the path") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
            raise refuse(f"is not a regular file ({what})", "give the path of a .toml spec file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise refuse(f"cannot read the file ({exc.strerror})", "check the path") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        raise refuse(f"is larger than {MAX_BYTES >> 20} MiB, too large for a spec", "give the path of a .toml spec file (a spec is a few KiB)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 text", "save the spec as UTF-8 TOML") from None


def load(path: str | Path) -> Topology:
    """Load a spec from a TOML file."""
    return loads(read_text(path), str(Path(path)))


def builtin(name: str) -> Topology:
    """One of the built-in topologies (``BUILTIN``)."""
    text = resources.files("netcheck.topologies").joinpath(f"{name}.toml").read_text("utf-8")
    return loads(text, f"<built-in {name}>")


def resolve(ref: str) -> Topology:
    """A built-in name or a path to a TOML file."""
    if ref in BUILTIN + OPT_IN:
        return builtin(ref)
    if not ref.endswith(".toml") and not Path(ref).exists():
        raise SpecError(ref, "(topology)", ref, "is neither a built-in topology nor a file", f"use one of {', '.join(BUILTIN + OPT_IN)} or a path to a .toml file")
    return load(ref)


def as_mapping(t: Topology) -> Mapping[str, Any]:
    """A JSON-ready view of a topology, for reports."""
    from dataclasses import asdict

    def conv(v: Any) -> Any:
        if isinstance(v, (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network)):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(asdict(t))  # type: ignore[no-any-return]


__all__ = [
    "Bridge", "Container", "Dns", "ForwardAccept", "Host", "Masquerade", "Problem", "Publish", "Record", "Resolve", "Route", "Service",
    "Network", "Setup", "SpecError", "Topology", "Vip", "Wan", "builtin", "env_name", "host_addresses", "load", "loads", "read_text", "resolve",
]
