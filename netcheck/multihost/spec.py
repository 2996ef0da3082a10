"""Multi-host specs: several single-host specs joined by an underlay, plus how their container
networks are joined (``routed`` or ``vxlan``). Validated before anything touches the kernel.

A file with ``[[host]]`` (an array of tables, each with a ``name``) is a multi-host spec; a file
with a single ``[host]`` table is the single-host spec it always was (``netcheck.spec``). Each
``[[host]]`` holds the tables of a single-host spec one level down (``[host.host]``,
``[[host.bridge]]``, ``[[host.container]]``, ...), plus its ``name`` and its ``underlay`` address::

    >>> t = builtin("two-hosts-vxlan")
    >>> [h.name for h in t.hosts], t.join.kind, t.join.mtu, t.path_mtu
    (['a', 'b'], 'vxlan', 1450, 1450)
    >>> str(t.hosts[1].underlay), [str(n) for n in t.hosts[1].subnets]
    ('198.51.100.130/25', ['10.244.2.0/24'])
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_interface, ip_network
from pathlib import Path
from typing import Any, Literal

from netcheck import spec as S

JoinKind = Literal["routed", "vxlan"]
FdbMode = Literal["unicast", "learning"]
JOIN_KINDS: tuple[JoinKind, ...] = ("routed", "vxlan")
FDB_MODES: tuple[FdbMode, ...] = ("unicast", "learning")
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_PORT = 4789  # IANA's; Linux's own default is 8472 (flannel's too)
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,5}\Z")  # short: a host's name goes into capture points and labels
BUILTIN = ("two-hosts-routed", "two-hosts-vxlan")
DEFAULT_UNDERLAY = IPv4Network("198.51.100.128/25")
DEFAULT_OVERLAY = IPv4Network("10.244.0.0/24")  # documentation space, clear of the outside world's 198.51.100.1
_HOST_KEYS = ("name", "underlay", "node")
NODE_RE = re.compile(r"^(popen|ssh=[^\s/]+)(//[a-z_]+(:[A-Za-z_][A-Za-z0-9_]*)?(=(?:(?!//)\S)+)?)*\Z")  # an execnet spec: popen or ssh=[user@]host, then //key=value options
_TOP_KEYS = ("name", "summary", "underlay", "join", "host")


@dataclass(frozen=True)
class Underlay:
    """The fabric that joins the hosts: a bridge in a namespace of netcheck's own."""

    network: IPv4Network
    mtu: int = 1500


@dataclass(frozen=True)
class Join:
    """How the hosts' container networks are joined."""

    kind: JoinKind
    vni: int = 1
    port: int = VXLAN_PORT
    mtu: int = 1450
    fdb: FdbMode = "unicast"
    overlay: IPv4Network = DEFAULT_OVERLAY  # vxlan: the VTEPs' addresses, host i gets host address i+1


@dataclass(frozen=True)
class HostSpec:
    """One container host: its name, its underlay address, and its single-host spec."""

    name: str
    underlay: IPv4Interface
    topology: S.Topology
    node: str | None = None  # the execnet gateway that serves it (netcheck.multihost.nodes): "popen", "ssh=user@addr"; None: in this process

    @property
    def subnets(self) -> tuple[IPv4Network, ...]:
        """The container networks other hosts route here: its bridges' networks."""
        return tuple(b.address.network for b in self.topology.bridges if b.address is not None)

    @property
    def public(self) -> IPv4Address:
        """The host's own address (its uplink's), where its published ports are."""
        return self.topology.host.address.ip


@dataclass(frozen=True)
class MultiTopology:
    name: str
    summary: str
    source: str
    underlay: Underlay
    join: Join
    hosts: tuple[HostSpec, ...]
    text: str = field(default="", repr=False, compare=False)  # the TOML it was read from, for nodes that read it again

    @property
    def path_mtu(self) -> int:
        """The largest IPv4 packet a container can send to another host: the overlay's MTU, or the underlay's."""
        return self.join.mtu if self.join.kind == "vxlan" else self.underlay.mtu

    def host(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)

    def vtep(self, index: int) -> IPv4Interface:
        """The overlay address of host ``index`` (vxlan)."""
        net = self.join.overlay
        return IPv4Interface(f"{net.network_address + index + 1}/{net.prefixlen}")


# --------------------------------------------------------------------------- reading


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[S.Problem] = []

    def add(self, key: str, value: object, problem: str, fix: str) -> None:
        self.found.append(S.Problem(self.source, key, value, problem, fix))

    def raise_any(self) -> None:
        if self.found:
            raise S.SpecError.of(self.found)


def is_multi(data: dict[str, Any]) -> bool:
    """A parsed TOML document is a multi-host spec when ``host`` is an array of tables."""
    return isinstance(data.get("host"), list)


def _int(p: _Problems, table: dict[str, Any], key: str, path: str, default: int, low: int, high: int, fix: str) -> int:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        p.add(path, v, f"must be a whole number from {low} to {high}", fix)
        return default
    return v


def _net(p: _Problems, value: object, path: str, default: IPv4Network, fix: str) -> IPv4Network:
    try:
        net = ip_network(str(value), strict=True)
    except ValueError:
        p.add(path, value, "is not an IPv4 network in CIDR form", fix)
        return default
    if not isinstance(net, IPv4Network):
        p.add(path, value, "is not an IPv4 network", fix)
        return default
    return net


def _parse(data: dict[str, Any], source: str) -> MultiTopology:
    p = _Problems(source)
    for key in data:
        if key not in _TOP_KEYS:
            p.add(key, data[key], "is not a key of a multi-host spec", f"use only {', '.join(_TOP_KEYS)} at the top (a host's own tables go inside its [[host]])")
    name = data.get("name")
    if not isinstance(name, str) or not S.NAME_RE.match(name):
        p.add("name", name, "must be a name of letters, digits, '.', '_' or '-'", 'write name = "my-hosts"')
        name = "multi"
    summary = str(data.get("summary", ""))

    u = data.get("underlay", {})
    if not isinstance(u, dict):
        p.add("underlay", u, "must be a table", 'write [underlay] with network = "198.51.100.128/25"')
        u = {}
    network = _net(p, u.get("network", str(DEFAULT_UNDERLAY)), "underlay.network", DEFAULT_UNDERLAY, 'use documentation space, e.g. network = "198.51.100.128/25"')
    if not any(network.subnet_of(r) for r in S.DOC_RANGES):
        p.add("underlay.network", str(network), "is outside the documentation ranges netcheck keeps its traffic in", 'use e.g. network = "198.51.100.128/25"')
    underlay = Underlay(network, _int(p, u, "mtu", "underlay.mtu", 1500, 576, 9000, "use an MTU from 576 to 9000, e.g. mtu = 1500"))

    j = data.get("join", {})
    if not isinstance(j, dict):
        p.add("join", j, "must be a table", 'write [join] with kind = "routed" or kind = "vxlan"')
        j = {}
    kind: JoinKind = "routed"
    given = j.get("kind")
    if given == "vxlan":
        kind = "vxlan"
    elif given != "routed":
        p.add("join.kind", given, "must say how the hosts' container networks are joined", 'write kind = "routed" (a route per remote subnet) or kind = "vxlan"')
    fdb: FdbMode = "unicast"
    if j.get("fdb") == "learning":
        fdb = "learning"
    elif j.get("fdb", "unicast") != "unicast":
        p.add("join.fdb", j.get("fdb"), "must be unicast (an fdb entry per remote VTEP, no learning) or learning", 'write fdb = "unicast" or fdb = "learning"')
    overlay = _net(p, j.get("overlay", str(DEFAULT_OVERLAY)), "join.overlay", DEFAULT_OVERLAY, 'write e.g. overlay = "10.244.0.0/24" (the VTEPs\' addresses)')
    known = {"kind", "vni", "port", "mtu", "fdb", "overlay"}
    for key in j:
        if key not in known:
            p.add(f"join.{key}", j[key], "is not a key of [join]", f"use only {', '.join(sorted(known))}")
    join = Join(
        kind, vni=_int(p, j, "vni", "join.vni", 1, 1, (1 << 24) - 1, "use a VNI from 1 to 16777215"),
        port=_int(p, j, "port", "join.port", VXLAN_PORT, 1, 65535, f"use a UDP port, e.g. port = {VXLAN_PORT}"),
        mtu=_int(p, j, "mtu", "join.mtu", underlay.mtu - VXLAN_OVERHEAD, 576, 9000, f"use an MTU, e.g. mtu = {underlay.mtu - VXLAN_OVERHEAD}"),
        fdb=fdb, overlay=overlay,
    )
    if join.kind == "vxlan" and join.mtu + VXLAN_OVERHEAD > underlay.mtu:
        room = underlay.mtu - VXLAN_OVERHEAD
        p.add("join.mtu", join.mtu,
              f"leaves no room for the encapsulation: VXLAN over IPv4 adds {VXLAN_OVERHEAD} bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14), "
              f"so over an underlay MTU of {underlay.mtu} the overlay MTU can be at most {room}; {join.mtu} is {join.mtu - room} bytes too many "
              "(large packets would be dropped in the underlay with no fragmentation-needed: the MTU black hole)",
              f"set join.mtu = {room} (or raise underlay.mtu to {join.mtu + VXLAN_OVERHEAD})")

    raw_hosts = data.get("host", [])
    hosts: list[HostSpec] = []
    for i, h in enumerate(raw_hosts if isinstance(raw_hosts, list) else []):
        host = _host(p, h, i, name, source)
        if host is not None:
            hosts.append(host)
    if isinstance(raw_hosts, list) and len(raw_hosts) < 2:
        p.add("host", len(raw_hosts), "a multi-host spec needs at least two [[host]] tables", "add a second [[host]] (or write one [host] table for a single host)")
    t = MultiTopology(name, summary, source, underlay, join, tuple(hosts))
    _validate(t, p)
    p.raise_any()
    return t


def _host(p: _Problems, h: object, i: int, top: str, source: str) -> HostSpec | None:
    at = f"host[{i}]"
    if not isinstance(h, dict):
        p.add(at, h, "must be a table", 'write [[host]] with name = "a"')
        return None
    name = h.get("name")
    if not isinstance(name, str) or not HOST_NAME_RE.match(name):
        p.add(f"{at}.name", name, "must be a short host name (a lowercase letter, then up to 5 letters or digits)", 'write name = "a"')
        return None
    try:
        underlay = ip_interface(str(h.get("underlay")))
    except ValueError:
        p.add(f"{at}.underlay", h.get("underlay"), "is not an IPv4 address with its prefix", 'write e.g. underlay = "198.51.100.129/25"')
        return None
    if not isinstance(underlay, IPv4Interface):
        p.add(f"{at}.underlay", str(underlay), "is not an IPv4 address", 'write e.g. underlay = "198.51.100.129/25"')
        return None
    node = h.get("node")
    if node is not None and not (isinstance(node, str) and NODE_RE.match(node)):
        p.add(f"{at}.node", node, "is not an execnet gateway to a node (popen, or ssh=user@address)",
              'write node = "popen" (a namespace on this machine) or node = "ssh=root@198.51.100.7" (options follow as //python=/usr/bin/python3)')
        return None
    single = {k: v for k, v in h.items() if k not in _HOST_KEYS}
    single["name"] = f"{top}.{name}"
    single.setdefault("summary", f"host {name} of {top}")
    try:
        topology = S._parse(single, f"{source} [host {name}]")
    except S.SpecError as exc:
        for prob in exc.problems:
            p.add(f"{at}.{prob.key}", prob.value, prob.problem, prob.fix)
        return None
    return HostSpec(name, underlay, topology, node)


def _validate(t: MultiTopology, p: _Problems) -> None:
    seen: dict[str, int] = {}
    held: dict[IPv4Address, str] = {}
    u = t.underlay.network
    for i, h in enumerate(t.hosts):
        at = f"host[{i}]"
        if h.name in seen:
            p.add(f"{at}.name", h.name, f"is the name of host[{seen[h.name]}] too", "give every host a name of its own")
        seen[h.name] = i
        if h.underlay.network != u or h.underlay.ip in (u.network_address, u.broadcast_address):
            p.add(f"{at}.underlay", str(h.underlay), f"is not a host address of the underlay {u}", f"use an address of {u} with its prefix, e.g. {u.network_address + i + 1}/{u.prefixlen}")
        elif h.underlay.ip in held:
            p.add(f"{at}.underlay", str(h.underlay), f"is {held[h.underlay.ip]}'s underlay address too", "give every host an underlay address of its own")
        held[h.underlay.ip] = f"host[{i}]"
        single = h.topology
        for r in single.wan.remote:
            if r.ip in u:
                p.add("underlay.network", str(u), f"holds {r.ip}, which host {h.name}'s outside world holds", "keep the underlay clear of the outside world's addresses, e.g. 198.51.100.128/25")
        if single.host.address.network.overlaps(u):
            p.add("underlay.network", str(u), f"overlaps host {h.name}'s uplink network {single.host.address.network}", "use another documentation range for the underlay")
        if not h.subnets:
            p.add(f"{at}.bridge", [], "this host has no bridge with an address, so there is no container subnet for the other hosts to reach", "give its [[host.bridge]] an address")
        if t.join.kind == "vxlan" and t.join.overlay.num_addresses < len(t.hosts) + 2:
            p.add("join.overlay", str(t.join.overlay), f"has no room for {len(t.hosts)} VTEPs", "use a /24")
    publics: dict[IPv4Address, str] = {}
    nets: list[tuple[IPv4Network, str]] = []
    for i, h in enumerate(t.hosts):
        if h.public in publics:
            p.add(f"host[{i}].host.address", str(h.topology.host.address), f"is {publics[h.public]}'s uplink address too: a container on one host could not reach the other's published ports",
                  f"give each host an uplink address of its own, e.g. 203.0.113.{2 + i}/24")
        publics[h.public] = h.name
        for n in h.subnets:
            for other, owner in nets:
                if n.overlaps(other):
                    p.add(f"host[{i}].bridge", str(n), f"overlaps host {owner}'s container subnet {other}", "give every host a container subnet of its own, e.g. 10.244.1.0/24 and 10.244.2.0/24")
            if t.join.kind == "vxlan" and n.overlaps(t.join.overlay):
                p.add("join.overlay", str(t.join.overlay), f"overlaps host {h.name}'s container subnet {n}", 'use a network of its own, e.g. overlay = "10.244.0.0/24"')
            nets.append((n, h.name))


def loads(text: str, source: str = "<string>") -> MultiTopology:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise S.SpecError(source, "(syntax)", None, f"not valid TOML: {exc}", "fix the TOML syntax at the position shown") from None
    if not is_multi(data):
        raise S.SpecError(source, "host", data.get("host"), "is not an array of [[host]] tables", "write [[host]] tables for a multi-host spec (or load it with netcheck.spec)")
    return replace(_parse(data, source), text=text)


def load(path: str | Path) -> MultiTopology:
    return loads(S.read_text(path), str(Path(path)))


def builtin(name: str) -> MultiTopology:
    text = resources.files("netcheck.topologies").joinpath("multihost", f"{name}.toml").read_text("utf-8")
    return loads(text, f"<built-in {name}>")


def is_multi_ref(ref: str) -> bool:
    """Does a topology reference (a built-in name or a .toml path) name a multi-host spec?"""
    if ref in BUILTIN:
        return True
    path = Path(ref)
    if ref in S.BUILTIN or not path.is_file():
        return False
    try:
        return is_multi(tomllib.loads(S.read_text(path)))
    except (tomllib.TOMLDecodeError, S.SpecError):
        return False  # the single-host loader reports what is wrong with it


def resolve(ref: str) -> MultiTopology:
    return builtin(ref) if ref in BUILTIN else load(ref)


def containers(t: MultiTopology) -> Iterator[tuple[HostSpec, S.Container]]:
    """Every container of every host, with its host."""
    for h in t.hosts:
        for c in h.topology.containers:
            yield h, c


__all__ = [
    "BUILTIN", "FDB_MODES", "JOIN_KINDS", "VXLAN_OVERHEAD", "VXLAN_PORT", "HostSpec", "Join", "MultiTopology", "Underlay",
    "builtin", "containers", "is_multi", "is_multi_ref", "load", "loads", "resolve",
]
