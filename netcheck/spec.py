"""Topology specs: frozen dataclasses, loaded from TOML and validated before any kernel call.

A spec names things as the user does (netns0, br0, veth0); the lab maps them to tagged
kernel names. Every error names the file, the key path, the bad value and the fix.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal

# \Z: "$" would let a trailing newline through. No leading "-" or ".": a name is passed to tools
# (podman, docker, ip) as an argument, where "-x" would read as an option.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
NETNS_PATH_RE = re.compile(r"^(/run/netns/|/var/run/netns/)[A-Za-z0-9_][A-Za-z0-9_.-]*\Z|^/proc/[0-9]+/ns/net\Z")
BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+(\[[0-9]+\])?\Z")  # a bare TOML key, or remote[0]
SYSCTL_RE = re.compile(r"^net\.(ipv4|ipv6|bridge|core|netfilter)(\.[A-Za-z0-9_-]+)+\Z")
DOC_RANGES = (IPv4Network("203.0.113.0/24"), IPv4Network("198.51.100.0/24"))
FORBIDDEN = IPv4Network("192.0.2.0/24")  # this machine's own network
SERVICE_KINDS = ("http", "tcp-echo", "udp-echo")
ECHO_PORT = 7
BUILTIN = ("seed1", "seed2", "seed2-veth")
MODES = ("build", "script", "cni", "netavark", "podman", "docker")
EXTERNAL = MODES[1:]  # setups another tool makes; the spec states only what to expect
AUTO = "auto"  # a value read back from what the tool made


class SpecError(ValueError):
    """A spec is invalid. The message names the file, the key, the value and the fix."""

    def __init__(self, source: str, key: str, value: object, problem: str, fix: str) -> None:
        self.source, self.key, self.value, self.problem, self.fix = source, key, value, problem, fix
        shown = _show(value)
        super().__init__(f"{source}: {key} = {shown}: {problem}. Fix: {fix}")


def _show(value: object) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int too long for Python to print, or nesting too deep
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Service:
    kind: Literal["http", "tcp-echo", "udp-echo"]
    port: int

    @property
    def protocol(self) -> Literal["tcp", "udp"]:
        return "udp" if self.kind == "udp-echo" else "tcp"


@dataclass(frozen=True)
class Route:
    to: IPv4Network
    via: IPv4Address


@dataclass(frozen=True)
class Bridge:
    name: str
    address: IPv4Interface | None
    auto: tuple[str, ...] = ()  # fields declared "auto" (external setups): read back from the kernel


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

    def service(self, kind: str) -> Service | None:
        return next((s for s in self.services if s.kind == kind), None)


@dataclass(frozen=True)
class Host:
    uplink: str
    address: IPv4Interface
    gateway: IPv4Address
    sysctls: tuple[tuple[str, int], ...]
    forward_policy: Literal["ACCEPT", "DROP"] = "ACCEPT"

    def sysctl(self, key: str) -> int | None:
        return dict(self.sysctls).get(key)


@dataclass(frozen=True)
class Wan:
    address: IPv4Interface
    remote: tuple[IPv4Interface, ...]
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Masquerade:
    source: IPv4Network | None
    out_interface: str | None = None
    not_out_interface: str | None = None


@dataclass(frozen=True)
class Publish:
    container: str
    host_port: int
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    from_outside: bool = True  # nat PREROUTING DNAT
    from_host: bool = True  # nat OUTPUT DNAT


@dataclass(frozen=True)
class Vip:
    chain: str
    address: IPv4Address
    port: int
    container: str
    target_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    from_outside: bool = True  # PREROUTING jumps to the chain
    from_host: bool = True  # OUTPUT jumps to the chain


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

    mode: Literal["build", "script", "cni", "netavark", "podman", "docker"] = "build"
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

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)

    def bridge(self, name: str) -> Bridge:
        return next(b for b in self.bridges if b.name == name)

    def members(self, bridge: str) -> tuple[Container, ...]:
        return tuple(c for c in self.containers if c.bridge == bridge)

    def host_interfaces(self) -> tuple[str, ...]:
        """Spec names of the host's interfaces: uplink, bridges, host-side veths."""
        return (self.host.uplink, *(b.name for b in self.bridges), *(c.host_veth for c in self.containers if c.host_veth))


# --------------------------------------------------------------------------- reading


class _Reader:
    """Reads one TOML table, tracking the key path and refusing unknown keys."""

    def __init__(self, source: str, path: str, data: object) -> None:
        self.source, self.path = source, path
        if not isinstance(data, dict):
            raise SpecError(source, path or "(top level)", data, "expected a table", f"write [{path}] as a TOML table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        shown = name if BARE_KEY_RE.match(name) else json.dumps(name)  # as TOML writes it: "" or "net.ipv4.x"
        return f"{self.path}.{shown}" if self.path else shown

    def fail(self, name: str, value: object, problem: str, fix: str) -> SpecError:
        return SpecError(self.source, self.key(name), value, problem, fix)

    def raw(self, name: str, default: object = ...) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is ...:
                raise SpecError(self.source, self.key(name), None, "missing required key", f"add {self.key(name)}")
            return default
        return self.data[name]

    def string(self, name: str, default: object = ..., pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        value = self.raw(name, default)
        if value is None or (value is default and default is not ...):
            return value
        if not isinstance(value, str):
            raise self.fail(name, value, "expected a string", f'quote it: {name} = "..."')
        if "\x00" in value:
            raise self.fail(name, value, "contains a NUL byte", "remove it")
        if pattern is not None and not pattern.match(value):
            raise self.fail(name, value, f"not a valid {what or 'name'}", _name_fix(pattern))
        return value

    def integer(self, name: str, default: object = ..., low: int = 0, high: int = 2**31) -> Any:
        value = self.raw(name, default)
        if value is default and default is not ...:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, value, "expected a whole number", f"write {name} = <number from {low} to {high}>")
        if not low <= value <= high:
            raise self.fail(name, value, f"out of range {low}..{high}", f"use a value from {low} to {high}")
        return value

    def port(self, name: str, default: object = ...) -> Any:
        return self.integer(name, default, 1, 65535)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, value, "expected true or false", f"write {name} = true or {name} = false")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: object = ...) -> Any:
        value = self.raw(name, default)
        if value not in choices:
            raise self.fail(name, value, "not one of " + ", ".join(choices), f"use one of: {', '.join(choices)}")
        return value

    def interface(self, name: str, default: object = ...) -> Any:
        value = self.raw(name, default)
        if value is None or (value is default and default is not ...):
            return value
        if not isinstance(value, str):
            raise self.fail(name, value, "expected a string", f'quote it: {name} = "..."')
        if not IFNAME_RE.match(value):
            problem = "longer than 15 characters" if len(value) > 15 else "not a valid interface name"
            raise self.fail(name, value, problem, _name_fix(IFNAME_RE))
        if value in (".", ".."):
            raise self.fail(name, value, "the kernel refuses '.' and '..' as interface names", "use a name such as veth0")
        return value

    def iface_address(self, name: str, default: object = ..., allow_auto: bool = False) -> Any:
        value = self.raw(name, default)
        if value is None or (value is default and default is not ...):
            return value
        if allow_auto and value == "auto":
            return None
        if not isinstance(value, str) or "/" not in value:
            raise self.fail(name, value, "expected an address with a prefix length", 'write it as "172.18.0.10/16"')
        try:
            iface = IPv4Interface(value)
        except ValueError as exc:
            raise self.fail(name, value, f"not a valid IPv4 address/prefix ({exc})", 'write it as "172.18.0.10/16"') from None
        _check_usable(self, name, value, iface.ip, iface.network)
        return iface

    def address(self, name: str, default: object = ...) -> Any:
        value = self.raw(name, default)
        if value is None or (value is default and default is not ...):
            return value
        try:
            addr = IPv4Address(value) if isinstance(value, str) else None
        except ValueError:
            addr = None
        if addr is None:
            raise self.fail(name, value, "not a valid IPv4 address", 'write it as "172.18.0.1" (no prefix length)')
        _check_usable(self, name, value, addr, None)
        return addr

    def network(self, name: str, default: object = ...) -> Any:
        value = self.raw(name, default)
        if value is None or (value is default and default is not ...):
            return value
        try:
            net = IPv4Network(value) if isinstance(value, str) else None
        except ValueError as exc:
            raise self.fail(name, value, f"not a valid IPv4 network ({exc})", 'write it as "172.18.0.0/16", with host bits zero') from None
        if net is None:
            raise self.fail(name, value, "expected a network string", 'write it as "172.18.0.0/16"')
        if net.overlaps(FORBIDDEN):
            raise self.fail(name, value, "overlaps 192.0.2.0/24, which this machine's own network uses", "pick another range")
        return net

    def tables(self, name: str) -> Iterator[_Reader]:
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise self.fail(name, value, "expected an array of tables", f"write each entry as [[{self.key(name)}]]")
        for i, item in enumerate(value):
            yield _Reader(self.source, f"{self.key(name)}[{i}]", item)

    def sub(self, name: str, default: object = ...) -> _Reader:
        return _Reader(self.source, self.key(name), self.raw(name, default))

    def done(self) -> None:
        for unknown in sorted(set(self.data) - self.used):
            known = ", ".join(sorted(self.used)) or "none"
            raise self.fail(unknown, self.data[unknown], "unknown key", f"remove it or correct the spelling (known here: {known})")


def _name_fix(pattern: re.Pattern[str]) -> str:
    if pattern is IFNAME_RE:
        return "use 1 to 15 characters from A-Z a-z 0-9 _ . -, not starting with - or ."
    return "use 1 to 32 characters from A-Z a-z 0-9 _ . -, not starting with - or ."


def _check_usable(r: _Reader, name: str, value: object, ip: IPv4Address, net: IPv4Network | None) -> None:
    if ip in FORBIDDEN:
        raise r.fail(name, value, "is in 192.0.2.0/24, which this machine's own network uses", "pick another range")
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or str(ip) == "255.255.255.255":
        raise r.fail(name, value, "not a unicast host address", "use a unicast address")
    if net is not None and net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
        raise r.fail(name, value, f"is the network or broadcast address of {net}", "use a host address inside the subnet")


def _routes(r: _Reader, name: str) -> tuple[Route, ...]:
    out = []
    for rr in r.tables(name):
        out.append(Route(to=rr.network("to"), via=rr.address("via")))
        rr.done()
    return tuple(out)


def _services(r: _Reader) -> tuple[Service, ...]:
    out = []
    for sr in r.tables("services"):
        out.append(Service(kind=sr.choice("kind", SERVICE_KINDS), port=sr.port("port")))
        sr.done()
    return tuple(out)


def _parse(data: dict[str, Any], source: str) -> Topology:
    top = _Reader(source, "", data)
    name = top.string("name", pattern=NAME_RE)
    summary = top.string("summary", "")

    sr = top.sub("setup", {})
    setup = Setup(
        mode=sr.choice("mode", MODES, "build"),
        command=_argv(sr, "command"),
        teardown=_argv(sr, "teardown"),
        config=sr.string("config", None),
        socket=sr.string("socket", None),
    )
    sr.done()
    _check_setup(sr, setup)

    hr = top.sub("host")
    sysr = hr.sub("sysctl", {})
    sysctls = []
    for key in sysr.data:
        if not SYSCTL_RE.match(key) or ".." in key:
            raise sysr.fail(key, sysr.data[key], "not a network sysctl name", 'use a dotted name under net., e.g. "net.ipv4.ip_forward"')
        sysctls.append((key, sysr.integer(key, low=0, high=2**31)))
    sysr.done()
    host = Host(
        uplink=hr.interface("uplink", "eth0"),
        address=hr.iface_address("address"),
        gateway=hr.address("gateway"),
        sysctls=tuple(sysctls),
        forward_policy=hr.choice("forward_policy", ("ACCEPT", "DROP"), "ACCEPT"),
    )
    hr.done()

    wr = top.sub("wan")
    wan = Wan(
        address=wr.iface_address("address"),
        remote=tuple(_remote(wr)),
        routes=_routes(wr, "routes"),
    )
    wr.done()

    bridges = []
    for br in top.tables("bridge"):
        baddr = br.iface_address("address", None, allow_auto=True)
        bridges.append(Bridge(name=br.interface("name"), address=baddr, auto=("address",) if br.data.get("address") == AUTO else ()))
        br.done()

    containers = []
    for cr in top.tables("container"):
        gw_auto = cr.data.get("gateway") == AUTO
        if gw_auto:
            cr.used.add("gateway")
        c = Container(
            name=cr.string("name", pattern=NAME_RE),
            interface=cr.interface("interface", "eth0"),
            address=cr.iface_address("address", allow_auto=True),
            host_veth=cr.interface("host_veth", None) or "",
            bridge=cr.interface("bridge", None),
            host_address=cr.iface_address("host_address", None),
            gateway=None if gw_auto else cr.address("gateway", None),
            routes=_routes(cr, "routes"),
            services=_services(cr),
            mtu=cr.integer("mtu", None, 68, 65535),
            netns=_netns_path(cr, "netns"),
        )
        auto = tuple(k for k, on in (("address", c.address is None), ("gateway", gw_auto), ("host_veth", not c.host_veth)) if on)
        containers.append(replace(c, auto=auto))
        cr.done()

    masquerades = []
    for mr in top.tables("masquerade"):
        masquerades.append(
            Masquerade(
                source=mr.network("source", None),
                out_interface=mr.interface("out_interface", None),
                not_out_interface=mr.interface("not_out_interface", None),
            )
        )
        mr.done()

    publishes = []
    for pr in top.tables("publish"):
        publishes.append(
            Publish(
                container=pr.string("container", pattern=NAME_RE),
                host_port=pr.port("host_port"),
                port=pr.port("port"),
                protocol=pr.choice("protocol", ("tcp", "udp"), "tcp"),
                from_outside=pr.boolean("from_outside", True),
                from_host=pr.boolean("from_host", True),
            )
        )
        pr.done()

    vips = []
    for vr in top.tables("vip"):
        vips.append(
            Vip(
                chain=vr.string("chain", pattern=re.compile(r"^[A-Za-z0-9_-]{1,28}\Z"), what="chain name (1-28 of A-Z a-z 0-9 _ -)"),
                address=vr.address("address"),
                port=vr.port("port"),
                container=vr.string("container", pattern=NAME_RE),
                target_port=vr.port("target_port"),
                protocol=vr.choice("protocol", ("tcp", "udp"), "tcp"),
                from_outside=vr.boolean("from_outside", True),
                from_host=vr.boolean("from_host", True),
            )
        )
        vr.done()

    forwards = []
    for fr in top.tables("forward_accept"):
        forwards.append(ForwardAccept(in_interface=fr.interface("in_interface", None), out_interface=fr.interface("out_interface", None)))
        fr.done()
    top.done()

    topo = Topology(
        name=name,
        summary=summary,
        source=source,
        host=host,
        wan=wan,
        bridges=tuple(bridges),
        containers=tuple(containers),
        masquerades=tuple(masquerades),
        publishes=tuple(publishes),
        vips=tuple(vips),
        forward_accepts=tuple(forwards),
        setup=setup,
    )
    _validate(topo)
    return topo


def _check_setup(r: _Reader, s: Setup) -> None:
    """Which [setup] keys each mode takes; each refusal says what to write instead."""
    given = {k for k in ("command", "teardown", "config", "socket") if getattr(s, k)}
    if s.mode == "build":
        for k in sorted(given):
            raise r.fail(k, getattr(s, k), "is only for setups made by another tool", f'set mode = "script", "cni", "netavark", "podman" or "docker" in [setup], or remove {k}')
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
        raise r.fail(k, getattr(s, k), why, f"remove {k} (mode {s.mode} takes: {', '.join(sorted(allowed))})")
    if s.mode == "script" and not s.command:
        raise r.fail("command", None, "a script setup needs a command", 'add command = ["sh", "setup.sh"] (run from the spec file\'s folder)')
    if s.mode in ("cni", "netavark") and not s.config:
        example = "cni/bridge.conflist" if s.mode == "cni" else "netavark/network.json"
        raise r.fail("config", None, f"a {s.mode} setup needs its network configuration", f'add config = "{example}" (relative to the spec file\'s folder)')
    if s.teardown and not s.command:
        raise r.fail("teardown", list(s.teardown), "a teardown needs a command that it undoes", "add command, or remove teardown")
    if s.socket is not None and not (s.socket.startswith("/") or s.socket.startswith("unix:///")):
        raise r.fail("socket", s.socket, "not a unix socket path", 'write it as "/run/docker.sock" or "unix:///run/docker.sock"')


def _netns_path(r: _Reader, name: str) -> str | None:
    value = r.string(name, None)
    if value is None:
        return None
    if not NETNS_PATH_RE.match(value) or "/../" in value + "/":
        raise r.fail(name, value, "not an absolute path to a network namespace (/run/netns/NAME or /proc/PID/ns/net)", 'write it as "/run/netns/NAME" or "/proc/PID/ns/net"')
    return str(value)


def _argv(r: _Reader, name: str) -> tuple[str, ...]:
    value = r.raw(name, [])
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise r.fail(name, value, "expected a list of strings (an argv, run without a shell)", f'write {name} = ["sh", "setup.sh"]')
    if any("\x00" in v for v in value):
        raise r.fail(name, value, "contains a NUL byte", "remove it")
    return tuple(value)


def _remote(r: _Reader) -> Iterator[IPv4Interface]:
    value = r.raw("remote", ["198.51.100.1/32"])
    if not isinstance(value, list) or not value:
        raise r.fail("remote", value, "expected a non-empty list of addresses", 'write remote = ["198.51.100.1/32"]')
    for i, item in enumerate(value):
        holder = _Reader(r.source, r.path, {f"remote[{i}]": item})
        yield holder.iface_address(f"remote[{i}]")


def _validate(t: Topology) -> None:
    """Cross-field checks: references, subnets, duplicates, documentation ranges."""
    src = t.source

    def fail(key: str, value: object, problem: str, fix: str) -> SpecError:
        return SpecError(src, key, value, problem, fix)

    doc = "the outside world uses documentation ranges only (203.0.113.0/24, 198.51.100.0/24)"
    for key, iface in [("host.address", t.host.address), ("wan.address", t.wan.address)] + [
        (f"wan.remote[{i}]", r) for i, r in enumerate(t.wan.remote)
    ]:
        if not any(iface.ip in d for d in DOC_RANGES):
            raise fail(key, str(iface), "is outside the documentation ranges", f"use an address in 203.0.113.0/24 or 198.51.100.0/24: {doc}")
    if t.host.address.network != t.wan.address.network:
        raise fail("wan.address", str(t.wan.address), f"is not in the host uplink's subnet {t.host.address.network}", "put host.address and wan.address in one subnet")
    if t.host.gateway != t.wan.address.ip:
        raise fail("host.gateway", str(t.host.gateway), f"is not the wan address {t.wan.address.ip}", f'set host.gateway = "{t.wan.address.ip}"')

    # names: host-side interfaces share one namespace; containers need distinct names.
    seen: dict[str, str] = {}
    for key, name in [("host.uplink", t.host.uplink)] + [(f"bridge[{i}].name", b.name) for i, b in enumerate(t.bridges)]:
        if name in seen:
            raise fail(key, name, f"duplicate interface name (also {seen[name]})", "give each host interface its own name")
        seen[name] = key
    names: dict[str, int] = {}
    for i, c in enumerate(t.containers):
        if c.name in names:
            raise fail(f"container[{i}].name", c.name, f"duplicate container name (also container[{names[c.name]}])", "give each container its own name")
        names[c.name] = i
        if c.name in ("host", "wan"):
            raise fail(f"container[{i}].name", c.name, "is reserved for netcheck's own namespaces", "rename the container")
    external = "set mode in [setup] to the tool that makes this setup (script, cni, netavark, podman, docker)"
    for i, c in enumerate(t.containers):
        if not c.host_veth and t.setup.mode == "build":
            raise fail(f"container[{i}].host_veth", None, "missing required key", f'add host_veth = "veth{i}"')
        if c.host_veth:
            if c.host_veth in seen:
                raise fail(f"container[{i}].host_veth", c.host_veth, f"duplicate interface name (also {seen[c.host_veth]})", "give each host-side veth its own name")
            seen[c.host_veth] = f"container[{i}].host_veth"
        if t.setup.mode == "build":
            if c.address is None:
                raise fail(f"container[{i}].address", AUTO, "'auto' is only for setups made by another tool", f"write the address, or {external}")
            if "gateway" in c.auto:
                raise fail(f"container[{i}].gateway", AUTO, "'auto' is only for setups made by another tool", f"write the gateway, or {external}")
            if c.netns is not None:
                raise fail(f"container[{i}].netns", c.netns, "netcheck builds this container's namespace itself", f"remove netns, or {external}")
    for i, b in enumerate(t.bridges):
        if b.auto and t.setup.mode == "build":
            raise fail(f"bridge[{i}].address", AUTO, "'auto' is only for setups made by another tool", f"write the address, or {external}")

    # subnets: bridges, routed veths and the uplink must not overlap.
    subnets: list[tuple[str, IPv4Network]] = [("host.address", t.host.address.network)]
    for i, b in enumerate(t.bridges):
        if b.address is not None:
            subnets.append((f"bridge[{i}].address", b.address.network))
    for i, c in enumerate(t.containers):
        if c.host_address is not None:
            subnets.append((f"container[{i}].host_address", c.host_address.network))
    for n, (where, subnet) in enumerate(subnets):
        for other_where, other in subnets[:n]:
            if subnet.overlaps(other):
                raise fail(where, str(subnet), f"overlaps {other} ({other_where})", "give each network its own, non-overlapping subnet")

    # addresses: unique, and inside the subnet they belong to.
    used: dict[IPv4Address, str] = {}
    _claim(used, t.host.address.ip, "host.address", src)
    _claim(used, t.wan.address.ip, "wan.address", src)
    for i, r in enumerate(t.wan.remote):
        _claim(used, r.ip, f"wan.remote[{i}]", src)
    for i, b in enumerate(t.bridges):
        if b.address is not None:
            _claim(used, b.address.ip, f"bridge[{i}].address", src)
    bridge_names = {b.name: b for b in t.bridges}
    for i, c in enumerate(t.containers):
        key = f"container[{i}]"
        if c.bridge is not None and c.bridge not in bridge_names:
            raise fail(f"{key}.bridge", c.bridge, "names no bridge in this spec", f"declare [[bridge]] name = \"{c.bridge}\", or use one of: {', '.join(bridge_names) or 'none'}")
        if c.bridge is not None and c.host_address is not None:
            raise fail(f"{key}.host_address", str(c.host_address), "a bridged container's veth takes no host address", "remove host_address, or remove bridge for a routed veth")
        if c.address is None:
            continue
        _claim(used, c.address.ip, f"{key}.address", src)
        if c.host_address is not None:
            _claim(used, c.host_address.ip, f"{key}.host_address", src)
        net = None
        if c.bridge is not None and bridge_names[c.bridge].address is not None:
            net = bridge_names[c.bridge].address.network  # type: ignore[union-attr]
        elif c.host_address is not None:
            net = c.host_address.network
        if net is not None and c.address.ip not in net:
            raise fail(f"{key}.address", str(c.address), f"is outside its network {net}", f"use an address inside {net}")
        if net is not None and c.address.network != net:
            raise fail(f"{key}.address", str(c.address), f"has prefix /{c.address.network.prefixlen} but its network is {net}", f"write it with /{net.prefixlen}")
        if c.gateway is not None and not c.address.network.supernet_of(IPv4Network(f"{c.gateway}/32")):
            raise fail(f"{key}.gateway", str(c.gateway), f"is not on the container's subnet {c.address.network}", "use the bridge's or the host veth's address")

    host_ifaces = set(seen)
    for i, m in enumerate(t.masquerades):
        for attr in ("out_interface", "not_out_interface"):
            ref = getattr(m, attr)
            if ref is not None and ref not in host_ifaces:
                raise fail(f"masquerade[{i}].{attr}", ref, "names no host interface in this spec", f"use one of: {', '.join(sorted(host_ifaces))}")
    for i, f in enumerate(t.forward_accepts):
        for attr in ("in_interface", "out_interface"):
            ref = getattr(f, attr)
            if ref is not None and ref not in host_ifaces:
                raise fail(f"forward_accept[{i}].{attr}", ref, "names no host interface in this spec", f"use one of: {', '.join(sorted(host_ifaces))}")
    ports: dict[tuple[str, int], str] = {}
    for i, p in enumerate(t.publishes):
        if p.container not in names:
            raise fail(f"publish[{i}].container", p.container, "names no container in this spec", f"use one of: {', '.join(names) or 'none'}")
        k = (p.protocol, p.host_port)
        if k in ports:
            raise fail(f"publish[{i}].host_port", p.host_port, f"is already published by {ports[k]}", "publish each host port once")
        ports[k] = f"publish[{i}]"
    chains: set[str] = set()
    for i, v in enumerate(t.vips):
        if v.container not in names:
            raise fail(f"vip[{i}].container", v.container, "names no container in this spec", f"use one of: {', '.join(names) or 'none'}")
        if v.chain in chains or v.chain in ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT"):
            raise fail(f"vip[{i}].chain", v.chain, "duplicate or built-in chain name", "give each VIP its own custom chain")
        chains.add(v.chain)
        if v.address in used:
            raise fail(f"vip[{i}].address", str(v.address), f"is already the address of {used[v.address]}", "a VIP must not be an interface address")
    for i, c in enumerate(t.containers):
        for j, route in enumerate(c.routes):
            if c.address is not None and route.via not in c.address.network:
                raise fail(f"container[{i}].routes[{j}].via", str(route.via), f"is not on the container's subnet {c.address.network}", "route via an address on the container's subnet")
    for j, route in enumerate(t.wan.routes):
        if route.via not in t.wan.address.network:
            raise fail(f"wan.routes[{j}].via", str(route.via), f"is not on the uplink subnet {t.wan.address.network}", f'route via the host, "{t.host.address.ip}"')


def _claim(used: dict[IPv4Address, str], ip: IPv4Address, key: str, src: str) -> None:
    if ip in used:
        raise SpecError(src, key, str(ip), f"duplicate address (also {used[ip]})", "give each interface its own address")
    used[ip] = key


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


def load(path: str | Path) -> Topology:
    """Load a spec from a TOML file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError(str(p), "(file)", str(p), f"cannot read the file ({exc.strerror})", "check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(str(p), "(file)", str(p), "is not UTF-8 text", "save the spec as UTF-8 TOML") from None
    return loads(text, str(p))


def builtin(name: str) -> Topology:
    """One of the built-in topologies (seed1, seed2, seed2-veth)."""
    text = resources.files("netcheck.topologies").joinpath(f"{name}.toml").read_text("utf-8")
    return loads(text, f"<built-in {name}>")


def resolve(ref: str) -> Topology:
    """A built-in name or a path to a TOML file."""
    if ref in BUILTIN:
        return builtin(ref)
    if not ref.endswith(".toml") and not Path(ref).exists():
        raise SpecError(ref, "(topology)", ref, "is neither a built-in topology nor a file", f"use one of {', '.join(BUILTIN)} or a path to a .toml file")
    return load(ref)


def as_mapping(t: Topology) -> Mapping[str, Any]:
    """A JSON-ready view of a topology, for reports."""
    from dataclasses import asdict

    def conv(v: Any) -> Any:
        if isinstance(v, (IPv4Address, IPv4Interface, IPv4Network)):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(asdict(t))  # type: ignore[no-any-return]


__all__ = [
    "Bridge", "Container", "ForwardAccept", "Host", "Masquerade", "Publish", "Route", "Service",
    "Setup", "SpecError", "Topology", "Vip", "Wan", "builtin", "load", "loads", "resolve",
]
