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
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal

from netcheck import spec as host_spec

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
NODE_RE = re.compile(r"^(popen|ssh=[^\s/]+)(//[a-z_]+(:[A-Za-z_][A-Za-z0-9_]*)?(=(?:(?!//)\S)+)?)*\Z")  # an execnet spec: popen or ssh=[user@]host, then //key=value options


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
    topology: host_spec.Topology
    node: str | None = None  # the execnet gateway that serves it (netcheck.multihost.nodes): "popen", "ssh=user@addr"; None: in this process
    nic: str | None = None  # on a real node: its interface on the network between the nodes (the host's underlay link is a macvlan of it)

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


# --------------------------------------------------------------------------- declarations
# The keys of a multi-host file, declared as netcheck.spec declares a single host's (Key, Sub, Table):
# the loader reads them, and netcheck.spec_docs writes docs/multihost.md's reference and the JSON Schema
# netcheck-multihost.schema.json from them.


def _host_name(value: object, name: str) -> str:
    if not isinstance(value, str) or not HOST_NAME_RE.match(value):
        raise host_spec._Invalid("must be a short host name (a lowercase letter, then up to 5 letters or digits)", f'write {name} = "a"')
    return value


def _node(value: object, name: str) -> str:
    if not isinstance(value, str) or not NODE_RE.match(value):
        raise host_spec._Invalid("is not an execnet gateway to a node (popen, or ssh=user@address)",
                         f'write {name} = "popen" (a namespace on this machine) or {name} = "ssh=root@198.51.100.7" (options follow as //python=/usr/bin/python3)')
    return value


HOST_NAME = host_spec.Kind("host name (a lowercase letter, then up to 5 letters or digits)", _host_name, {"type": "string", "pattern": host_spec.schema_pattern(HOST_NAME_RE)}, "")
NODE = host_spec.Kind('execnet gateway: "popen", or "ssh=[user@]host" with //key=value options', _node, {"type": "string", "pattern": host_spec.schema_pattern(NODE_RE)}, "")


class UnderlayKeys:
    network = host_spec.Key("network", host_spec.NETWORK, "The fabric's network, in netcheck's underlay namespace: documentation space, clear of each host's outside world.",
                    '"198.51.100.128/25"', DEFAULT_UNDERLAY)
    mtu = host_spec.Key("mtu", host_spec.integer(576, 9000), "The fabric's MTU: each host's link into it.", "1500", 1500)


UNDERLAY = host_spec._table("[underlay]", "The fabric that joins the hosts: a bridge in a namespace of netcheck's own.", UnderlayKeys)


class JoinKeys:
    kind = host_spec.Key("kind", host_spec.choice(JOIN_KINDS), "How the hosts' container networks are joined: a route per remote subnet via the other host's underlay address (routed, "
                 "flannel's host-gw), or a VXLAN overlay (vxlan, flannel's VXLAN, Docker's overlay).", '"vxlan"', host_spec.Absent.REQUIRED)
    vni = host_spec.Key("vni", host_spec.integer(1, (1 << 24) - 1), "vxlan: the VXLAN network identifier.", "42", 1)
    port = host_spec.Key("port", host_spec.PORT, "vxlan: the UDP port (IANA's 4789; Linux's and flannel's default is 8472).", "4789", VXLAN_PORT)
    mtu = host_spec.Key("mtu", host_spec.integer(576, 9000), f"vxlan: the overlay devices' MTU; it must leave {VXLAN_OVERHEAD} bytes of the underlay's for the encapsulation.", "1450",
                default_doc=f"underlay.mtu - {VXLAN_OVERHEAD}")
    fdb = host_spec.Key("fdb", host_spec.choice(FDB_MODES), "vxlan: an fdb entry and a neighbour per remote VTEP (unicast), or all-zero entries and learning.", '"learning"', "unicast")
    overlay = host_spec.Key("overlay", host_spec.NETWORK, "vxlan: the VTEPs' addresses; host i gets the network's address i + 1.", '"10.244.0.0/24"', DEFAULT_OVERLAY)


JOIN = host_spec._table("[join]", "How the hosts' container networks are joined.", JoinKeys)


class HostEntryKeys:
    name = host_spec.Key("name", HOST_NAME, "The host's name: capture points (a/netns0:ceth0), labels and test ids carry it.", '"a"', host_spec.Absent.REQUIRED)
    underlay = host_spec.Key("underlay", host_spec.IFACE_ADDRESS, "The host's address on the underlay, with the underlay's prefix.", '"198.51.100.129/25"', host_spec.Absent.REQUIRED)
    node = host_spec.Key("node", NODE, "The node that serves this host, reached through execnet (netcheck.multihost.nodes): a namespace on this machine (popen), "
                 "or a real machine (ssh=user@address).", '"ssh=root@198.51.100.7"', default_doc="none: the host is built in the controller's process")
    nic = host_spec.Key("nic", host_spec.INTERFACE, "On a real node: its interface on the network between the nodes; the host's link into the underlay is a bridge-mode "
                "macvlan of it, made inside the host's namespace.", '"eth1"', default_doc="none: on this machine, netcheck gives the node a link into its underlay namespace")
    summary = host_spec.Key("summary", host_spec.TEXT, "One line saying what the host is.", '"the first node"', default_doc='"host NAME of TOPOLOGY"')
    setup = host_spec.Sub("setup", host_spec.SETUP, False, "The host's [setup], as a single-host spec's, one level down: [host.setup].")
    host = host_spec.Sub("host", host_spec.HOST, False, "The host's [host], one level down: [host.host].")
    wan = host_spec.Sub("wan", host_spec.WAN, False, "The host's outside world, one level down: [host.wan].")
    bridge = host_spec.Sub("bridge", host_spec.BRIDGE, True, "The host's bridges: [[host.bridge]].")
    container = host_spec.Sub("container", host_spec.CONTAINER, True, "The host's containers: [[host.container]].")
    masquerade = host_spec.Sub("masquerade", host_spec.MASQUERADE, True, "The host's masquerade rules: [[host.masquerade]].")
    publish = host_spec.Sub("publish", host_spec.PUBLISH, True, "The host's published ports: [[host.publish]].")
    vip = host_spec.Sub("vip", host_spec.VIP, True, "The host's virtual IPs: [[host.vip]].")
    forward_accept = host_spec.Sub("forward_accept", host_spec.FORWARD_ACCEPT, True, "The host's FORWARD accept rules: [[host.forward_accept]].")
    dns = host_spec.Sub("dns", host_spec.DNS, False, "The host's DNS server: [host.dns].")


HOST_ENTRY = host_spec._table("[[host]]", "One container host: its name, its underlay address, the node that serves it, and the tables of a single-host spec one level down.",
                      HostEntryKeys)
SINGLE_HOST_SUBS = frozenset(k.name for k in HOST_ENTRY.keys if isinstance(k, host_spec.Sub))  # described by docs/spec.md's reference


class MultiTopKeys:
    name = host_spec.Key("name", host_spec.NAME, "The topology's name; test ids and reports carry it, and each host's (NAME.HOST).", '"my-hosts"', host_spec.Absent.REQUIRED)
    summary = host_spec.Key("summary", host_spec.TEXT, "One line saying what the topology is.", '"two hosts on a VXLAN overlay"', "")
    underlay = host_spec.Sub("underlay", UNDERLAY, False, UNDERLAY.doc)
    join = host_spec.Sub("join", JOIN, False, JOIN.doc)
    host = host_spec.Sub("host", HOST_ENTRY, True, "The hosts, at least two.")


MULTI_TOP = host_spec._table("top level", "A multi-host spec file: several container hosts, the underlay that joins them, and how their container networks are joined.", MultiTopKeys)


# --------------------------------------------------------------------------- reading


def is_multi(data: dict[str, Any]) -> bool:
    """A parsed TOML document is a multi-host spec when ``host`` is an array of tables."""
    return isinstance(data.get("host"), list)


def _parse(data: dict[str, Any], source: str) -> MultiTopology:
    p = host_spec._Problems(source)
    top = host_spec._Reader(p, MULTI_TOP, "", data)
    name = top.get(MultiTopKeys.name) or "multi"
    summary = top.get(MultiTopKeys.summary)

    ur = top.sub(MultiTopKeys.underlay)
    network = ur.get(UnderlayKeys.network)
    if ur.ok("network") and not any(network.subnet_of(r) for r in host_spec.DOC_RANGES):
        ur.fail("network", str(network), "is outside the documentation ranges netcheck keeps its traffic in", 'use e.g. network = "198.51.100.128/25"')
    underlay = Underlay(network, ur.get(UnderlayKeys.mtu))
    ur.done()

    jr = top.sub(MultiTopKeys.join)
    join = Join(jr.get(JoinKeys.kind), vni=jr.get(JoinKeys.vni), port=jr.get(JoinKeys.port), mtu=jr.opt(JoinKeys.mtu) or underlay.mtu - VXLAN_OVERHEAD,
                fdb=jr.get(JoinKeys.fdb), overlay=jr.get(JoinKeys.overlay))
    if join.kind == "vxlan" and jr.ok("mtu") and ur.ok("mtu") and join.mtu + VXLAN_OVERHEAD > underlay.mtu:
        room = underlay.mtu - VXLAN_OVERHEAD
        jr.fail("mtu", join.mtu,
                f"leaves no room for the encapsulation: VXLAN over IPv4 adds {VXLAN_OVERHEAD} bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14), "
                f"so over an underlay MTU of {underlay.mtu} the overlay MTU can be at most {room}; {join.mtu} is {join.mtu - room} bytes too many "
                "(large packets would be dropped in the underlay with no fragmentation-needed: the MTU black hole)",
                f"set join.mtu = {room} (or raise underlay.mtu to {join.mtu + VXLAN_OVERHEAD})")
    jr.done()

    hosts: list[HostSpec] = []
    count = 0
    for hr in top.tables(MultiTopKeys.host):
        count += 1
        host = _host(hr, name, source)
        if host is not None:
            hosts.append(host)
    if is_multi(data) and count < 2:
        top.fail("host", count, "a multi-host spec needs at least two [[host]] tables", "add a second [[host]] (or write one [host] table for a single host)")
    top.done()
    t = MultiTopology(name, summary, source, underlay, join, tuple(hosts))
    _validate(t, p)
    if p.found:
        raise host_spec.SpecError.of(p.found)
    return t


def _host(hr: host_spec._Reader, top: str, source: str) -> HostSpec | None:
    """One [[host]]: its own keys, then its single-host tables read by netcheck.spec (their problems under host[i])."""
    name = hr.get(HostEntryKeys.name)
    underlay = hr.get(HostEntryKeys.underlay)
    node = hr.opt(HostEntryKeys.node)
    nic = hr.opt(HostEntryKeys.nic)
    summary = hr.opt(HostEntryKeys.summary)
    if nic is not None and node is None and hr.ok("nic"):
        hr.fail("nic", nic, "is a real node's interface, and this host has no node", 'add node = "ssh=root@ADDRESS" (or remove nic)')
    hr.done()
    if not (hr.ok("name") and hr.ok("underlay") and hr.ok("node") and hr.ok("nic")):
        return None
    single: dict[str, Any] = {k: v for k, v in hr.data.items() if k in SINGLE_HOST_SUBS}
    single["name"] = f"{top}.{name}"
    single["summary"] = summary if summary is not None else f"host {name} of {top}"
    try:
        topology = host_spec._parse(single, f"{source} [host {name}]")
    except host_spec.SpecError as exc:
        for prob in exc.problems:
            hr.problems.add(f"{hr.path}.{prob.key}", prob.value, prob.problem, prob.fix)
        return None
    return HostSpec(name, underlay, topology, node, nic)


def _validate(t: MultiTopology, p: host_spec._Problems) -> None:
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
        raise host_spec.SpecError(source, "(syntax)", None, f"not valid TOML: {exc}", "fix the TOML syntax at the position shown") from None
    if not is_multi(data):
        raise host_spec.SpecError(source, "host", data.get("host"), "is not an array of [[host]] tables", "write [[host]] tables for a multi-host spec (or load it with netcheck.spec)")
    return replace(_parse(data, source), text=text)


def load(path: str | Path) -> MultiTopology:
    return loads(host_spec.read_text(path), str(Path(path)))


def builtin(name: str) -> MultiTopology:
    text = resources.files("netcheck.topologies").joinpath("multihost", f"{name}.toml").read_text("utf-8")
    return loads(text, f"<built-in {name}>")


def is_multi_ref(ref: str) -> bool:
    """Does a topology reference (a built-in name or a .toml path) name a multi-host spec?"""
    if ref in BUILTIN:
        return True
    path = Path(ref)
    if ref in host_spec.BUILTIN or not path.is_file():
        return False
    try:
        return is_multi(tomllib.loads(host_spec.read_text(path)))
    except (tomllib.TOMLDecodeError, host_spec.SpecError):
        return False  # the single-host loader reports what is wrong with it


def resolve(ref: str) -> MultiTopology:
    return builtin(ref) if ref in BUILTIN else load(ref)


def containers(t: MultiTopology) -> Iterator[tuple[HostSpec, host_spec.Container]]:
    """Every container of every host, with its host."""
    for h in t.hosts:
        for c in h.topology.containers:
            yield h, c


__all__ = [
    "BUILTIN", "FDB_MODES", "JOIN_KINDS", "VXLAN_OVERHEAD", "VXLAN_PORT", "HostSpec", "Join", "MultiTopology", "Underlay",
    "builtin", "containers", "is_multi", "is_multi_ref", "load", "loads", "resolve",
]
