"""Probes and their results are values: what was asked, what was sent, where it was seen, the verdict.

A ``ProbeRequest`` says what to send; every ``ProbeResult`` carries its request, so a probe
is repeated (or rendered) from the request itself, never from text. Tests assert on them, the
report renders them, xdist ships them (``to_dict``/``from_dict`` round-trip through JSON), and
the diagnosis attaches to them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ClassVar, Literal, get_args

from netcheck.kernel.dropwatch import KernelDrop
from netcheck.kernel.jsontypes import JSON, JSONObject
from netcheck.kernel.xtables import XRule

Verdict = Literal["reached", "unreachable", "inconclusive", "wrong-target"]
Expectation = Literal["reach", "block", "observe"]
ProbeKind = Literal["icmp", "tcp", "http", "udp", "arp", "dns", "sctp", "ndp"]  # ndp: ARP's IPv6 counterpart
Protocol = Literal["icmp", "tcp", "udp", "arp", "sctp"]
Role = Literal["request", "reply", "error"]
IPAddress = IPv4Address | IPv6Address
PORTED: tuple[ProbeKind, ...] = ("tcp", "http", "udp", "dns", "sctp")
TOKEN_SIZE = 13  # "netcheck-" and four hex digits: the token that starts every probe's payload
MIN_SIZE = {4: 20 + 8 + TOKEN_SIZE, 6: 40 + 8 + TOKEN_SIZE}  # the smallest sized ICMP echo: IP and ICMP headers, the token
PROPERTIES = ("topology", "isolation", "veth", "bridge", "forwarding", "masquerade", "dnat", "vip", "dns", "scale")


def verdict_passes(expected: Expectation, verdict: Verdict) -> bool:
    """Whether a probe went as expected: the one rule, for typed results and their JSON form alike."""
    if expected == "observe":
        return verdict != "inconclusive"
    if expected == "reach":
        return verdict == "reached"
    return verdict == "unreachable"


class RequestError(ValueError):
    """A probe request that cannot be sent as given; the message names the field and the fix."""


@dataclass(frozen=True)
class ProbeRequest:
    """What to send, from where, to what, and what to expect: a probe before it is sent.

    ``timeout`` None means the default for the expectation (short for ``block``); ``payload``
    is carried after netcheck's own token (the token names the probe in captures and in the
    services' replies); ``capture`` names the capture points to open before sending.
    """

    kind: ProbeKind
    source: str  # namespace label: a container, "host" or "wan"
    destination: IPAddress
    port: int | None = None  # tcp, http, udp only
    expect: Expectation = "reach"
    target: str | None = None  # the container expected to answer
    capture: tuple[str, ...] = ()
    timeout: float | None = None
    ttl: int | None = None  # icmp only
    payload: bytes = b""
    end_on_drop: bool | None = None  # conclude at the kernel's drop of the probe, when the lab has a witness (None: for expect="block")

    @property
    def ends_on_drop(self) -> bool:
        return self.expect == "block" if self.end_on_drop is None else self.end_on_drop
    query: str = ""  # dns only: the name asked for, as a program in the source would (through its resolv.conf's search list)
    transport: Literal["udp", "tcp"] = "udp"  # dns only
    source_port: int | None = None  # udp only: a fixed client port (a long-lived flow, whose conntrack entry outlives a rule change); None: ephemeral
    size: int | None = None  # icmp only: the packet's size in bytes, IP header included, sent with don't-fragment set (a path MTU probe); None: small

    def __post_init__(self) -> None:
        if self.kind not in get_args(ProbeKind):
            raise RequestError(f"probe kind {self.kind!r}: not one of {', '.join(get_args(ProbeKind))}")
        if self.expect not in get_args(Expectation):
            raise RequestError(f"{self.kind} probe to {self.destination}: expect={self.expect!r}; use one of {', '.join(get_args(Expectation))}")
        if not isinstance(self.destination, (IPv4Address, IPv6Address)):
            raise RequestError(f"{self.kind} probe: destination {self.destination!r} is not an address object. Fix: pass ipaddress.ip_address({self.destination!r})")
        if (self.port is not None) != (self.kind in PORTED):
            raise RequestError(f"{self.kind} probe to {self.destination}: port={self.port}; " + ("give the port" if self.kind in PORTED else "only tcp, http and udp probes take a port"))
        if self.port is not None and not 0 < self.port < 65536:
            raise RequestError(f"{self.kind} probe to {self.destination}: port {self.port} is out of range. Fix: use 1 to 65535")
        if self.source_port is not None and (self.kind != "udp" or not 0 < self.source_port < 65536):
            raise RequestError(f"{self.kind} probe to {self.destination}: source_port={self.source_port}; only udp probes take one, from 1 to 65535")
        if self.ttl is not None and (self.kind != "icmp" or not 0 < self.ttl < 256):
            raise RequestError(f"{self.kind} probe to {self.destination}: ttl={self.ttl}; only icmp probes take a ttl, from 1 to 255")
        least = MIN_SIZE[self.destination.version] + len(self.payload)
        if self.size is not None and (self.kind != "icmp" or not least <= self.size <= 65535):
            raise RequestError(f"{self.kind} probe to {self.destination}: size={self.size}; only icmp probes take a size, "
                               f"from {least} (the headers, netcheck's token and the payload) to 65535")
        if self.kind == "arp" and (self.payload or self.destination.version != 4):
            raise RequestError(f"arp probe for {self.destination}: ARP asks for an IPv4 address and carries no payload")
        if self.kind == "ndp" and (self.payload or self.destination.version != 6):
            raise RequestError(f"ndp probe for {self.destination}: NDP asks for an IPv6 address and carries no payload (ARP asks for an IPv4 one)")
        if (self.kind == "dns") != bool(self.query):
            raise RequestError(f"{self.kind} probe to {self.destination}: query={self.query!r}; " + ("give the name to ask for" if self.kind == "dns" else "only dns probes take a query"))
        if self.transport not in ("udp", "tcp") or (self.transport == "tcp" and self.kind != "dns"):
            raise RequestError(f"{self.kind} probe to {self.destination}: transport={self.transport!r}; only dns probes choose one, udp or tcp")
        if self.kind in PORTED and (b"\n" in self.payload or b"\r" in self.payload):
            raise RequestError(f"{self.kind} probe to {self.destination}: the payload holds a line break, which ends the services' one-line protocol early. Fix: leave line breaks out")

    @property
    def protocol(self) -> Protocol:
        if self.kind == "dns":
            return self.transport
        if self.kind == "ndp":
            return "arp"  # neighbour resolution, whichever the family
        return "tcp" if self.kind == "http" else self.kind

    @property
    def address(self) -> str:
        """Where it goes, as the evidence shows it: the address, with its port if it has one."""
        if self.port is None:
            return str(self.destination)
        return f"[{self.destination}]:{self.port}" if self.destination.version == 6 else f"{self.destination}:{self.port}"

    def to_dict(self) -> JSONObject:
        d: JSONObject = {"kind": self.kind, "source": self.source, "destination": str(self.destination), "port": self.port, "expect": self.expect, "target": self.target,
             "capture": list(self.capture), "timeout": self.timeout, "ttl": self.ttl, "payload": base64.b64encode(self.payload).decode(),
             "end_on_drop": self.end_on_drop}
        d |= {k: v for k, v in (("source_port", self.source_port), ("size", self.size)) if v is not None}
        return {**d, "query": self.query, "transport": self.transport} if self.kind == "dns" else d

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> ProbeRequest:
        return cls(kind=d["kind"], source=d["source"], destination=ip_address(d["destination"]), port=d.get("port"), expect=d.get("expect", "reach"),
                   target=d.get("target"), capture=tuple(d.get("capture", ())), timeout=d.get("timeout"), ttl=d.get("ttl"),
                   payload=base64.b64decode(d.get("payload", "")), end_on_drop=d.get("end_on_drop"), query=d.get("query", ""), transport=d.get("transport", "udp"),
                   source_port=d.get("source_port"), size=d.get("size"))


@dataclass(frozen=True)
class Packet:
    """One packet seen at a capture point, dissected by scapy."""

    at_ms: float  # since the probe was sent
    proto: str  # icmp, icmp6, tcp, udp, arp, other
    src: str
    dst: str
    src_mac: str
    dst_mac: str
    sport: int | None = None
    dport: int | None = None
    ttl: int | None = None
    info: str = ""  # ICMP type, TCP flags, ARP op
    role: Role | Literal[""] = ""  # request, reply or error (an ICMP error quoting the probe)
    raw: bytes = b""

    @property
    def flow(self) -> str:
        s = f"{self.src}:{self.sport}" if self.sport is not None else self.src
        d = f"{self.dst}:{self.dport}" if self.dport is not None else self.dst
        return f"{s} > {d}"

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> Packet:
        return cls(**{**_known(cls, d), "raw": base64.b64decode(d.get("raw") or "")})


@dataclass(frozen=True)
class Capture:
    """What one capture point saw of one probe."""

    point: str  # "netns0:ceth0", in the names users see
    netns: str  # namespace label: host, wan, or a container name
    interface: str  # spec name of the interface
    kernel_interface: str
    started: bool
    packets: tuple[Packet, ...] = ()

    @property
    def seen(self) -> bool:
        return bool(self.packets)

    def first(self, role: str = "request") -> Packet | None:
        """The first packet of a role (request, reply, error) seen here."""
        return next((p for p in self.packets if p.role == role), None)

    def roles(self) -> set[str]:
        return {p.role for p in self.packets}

    def hop_packet(self, direction: Literal["out", "back"]) -> Packet | None:
        """The packet that makes this point a hop of the trace one way: the request out, the reply (or an ICMP error) back."""
        return self.first("request") if direction == "out" else self.first("reply") or self.first("error")

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> Capture:
        return cls(**{**_known(cls, d), "packets": tuple(Packet.from_dict(p) for p in d.get("packets", ()))})


class _Templated:
    """A fix whose command is its class's ``TEMPLATE``, filled in from its fields (the one rendering of it)."""

    TEMPLATE: ClassVar[str]

    def command(self) -> str:
        """The command that applies this fix, without the namespace prefix."""
        return self.TEMPLATE.format(self=self)


@dataclass(frozen=True)
class Sysctl(_Templated):
    """A fix: set a sysctl in one of the lab's namespaces (by its label)."""

    netns: str
    key: str
    value: str
    kind: Literal["sysctl"] = "sysctl"
    TEMPLATE: ClassVar[str] = "sysctl -w {self.key}={self.value}"


@dataclass(frozen=True)
class SetLink(_Templated):
    """A fix: bring a link up (or down) in one of the lab's namespaces; ``link`` is its kernel name."""

    netns: str
    link: str
    up: bool = True
    kind: Literal["link"] = "link"
    TEMPLATE: ClassVar[str] = "ip link set {self.link} {self.state}"

    @property
    def state(self) -> str:
        return "up" if self.up else "down"


@dataclass(frozen=True)
class AddRoute:
    """A fix: add a route (``dst`` a prefix, or "default") via a gateway (``via`` "": on the link ``dev``) in one of the
    lab's namespaces (``replace``: in place of the route to ``dst`` there is, which its undo puts back)."""

    netns: str
    dst: str
    via: str
    kind: Literal["route"] = "route"
    dev: str | None = None
    replace: bool = False

    def command(self) -> str:
        return f"ip route {'replace' if self.replace else 'add'} {self.dst}" + (f" via {self.via}" if self.via else "") + (f" dev {self.dev}" if self.dev else "")


@dataclass(frozen=True)
class DeleteRoute(_Templated):
    """A fix: delete a route that discards traffic (``type`` blackhole, unreachable or prohibit); its undo adds it again."""

    netns: str
    dst: str
    type: str
    kind: Literal["delete-route"] = "delete-route"
    TEMPLATE: ClassVar[str] = "ip route del {self.type} {self.dst}"


@dataclass(frozen=True)
class AddAddress:
    """A fix: add an address (with its prefix) to a link, an IPv6 one without duplicate address detection; its undo deletes it."""

    netns: str
    link: str
    address: str
    kind: Literal["add-address"] = "add-address"

    def command(self) -> str:
        return f"ip address add {self.address} dev {self.link}" + (" nodad" if ":" in self.address else "")


@dataclass(frozen=True)
class DeleteAddress(_Templated):
    """A fix: delete an address from a link (``address`` with its prefix); its undo adds it again."""

    netns: str
    link: str
    address: str
    kind: Literal["delete-address"] = "delete-address"
    TEMPLATE: ClassVar[str] = "ip address del {self.address} dev {self.link}"


@dataclass(frozen=True)
class SetMaster(_Templated):
    """A fix: make a link a port of a bridge; its undo gives the link back its master before (or none)."""

    netns: str
    link: str
    master: str
    kind: Literal["master"] = "master"
    TEMPLATE: ClassVar[str] = "ip link set {self.link} master {self.master}"


@dataclass(frozen=True)
class SetHairpin:
    """A fix: turn a bridge port's hairpin mode on (frames may leave by the port they came in by); its undo sets it back."""

    netns: str
    link: str
    on: bool = True
    kind: Literal["hairpin"] = "hairpin"

    def command(self) -> str:
        return f"bridge link set dev {self.link} hairpin {'on' if self.on else 'off'}"


@dataclass(frozen=True)
class SetFdb(_Templated):
    """A fix: make a VXLAN device's fdb send ``mac`` to the underlay address ``dst`` alone (its undo puts the old entries back)."""

    netns: str
    link: str
    mac: str
    dst: str
    kind: Literal["fdb"] = "fdb"
    TEMPLATE: ClassVar[str] = "bridge fdb replace {self.mac} dev {self.link} dst {self.dst}"


def _rule_command(backend: str, rule: XRule, op: str, family: str) -> str:
    from netcheck.kernel.nft import rule_command  # the one rendering of a rule where it lives (iptables argv, or nft)

    return rule_command(backend, rule, op, family)


@dataclass(frozen=True)
class DeleteRule:
    """A fix: delete a firewall rule where it lives (``backend`` legacy or nft; a native nft table's rule by its handle)."""

    netns: str
    backend: str
    rule: XRule
    family: str = "ip"
    kind: Literal["delete-rule"] = "delete-rule"

    def command(self) -> str:
        return _rule_command(self.backend, self.rule, "-D", self.family)


@dataclass(frozen=True)
class AddRule:
    """A fix: add a firewall rule (``insert``: at the top of its chain) with ``backend``, or to a native nft table."""

    netns: str
    backend: str
    rule: XRule
    family: str = "ip"
    insert: bool = False
    kind: Literal["add-rule"] = "add-rule"

    def command(self) -> str:
        return _rule_command(self.backend, self.rule, "-I" if self.insert else "-A", self.family)


@dataclass(frozen=True)
class SetPolicy:
    """A fix: set a base chain's policy (``ACCEPT``/``DROP``) where the chain lives."""

    netns: str
    backend: str
    table: str
    chain: str
    policy: str
    family: str = "ip"
    kind: Literal["policy"] = "policy"

    def command(self) -> str:
        from netcheck.kernel.nft import binary, is_native

        if is_native(self.backend, self.table):
            return f"nft chain {self.family} {self.table} {self.chain} '{{ policy {self.policy.lower()}; }}'"
        return f"{binary(self.backend)} -t {self.table} -P {self.chain} {self.policy.upper()}"


@dataclass(frozen=True)
class DeleteNeighbour(_Templated):
    """A fix: delete a neighbour entry (a wrong static one, or a FAILED one, so that ARP starts again at once)."""

    netns: str
    link: str
    address: str
    kind: Literal["delete-neighbour"] = "delete-neighbour"
    TEMPLATE: ClassVar[str] = "ip neigh del {self.address} dev {self.link}"


@dataclass(frozen=True)
class FlushConntrack:
    """A fix's second half: forget the conntrack entries of a source, whose NAT was decided at their first packet
    (a MASQUERADE added now does not apply to a UDP flow already tracked). Nothing to undo: flows are tracked again."""

    netns: str
    source: str
    kind: Literal["flush-conntrack"] = "flush-conntrack"
    proto: str | None = None  # with dst, sport, dport: one flow's entry only (a stale DNAT's)
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None

    def command(self) -> str:
        parts = ["conntrack", "-D", *(["-p", self.proto] if self.proto else []), "-s", self.source, *(["-d", self.dst] if self.dst else []),
                 *(["--sport", str(self.sport)] if self.sport is not None else []), *(["--dport", str(self.dport)] if self.dport is not None else [])]
        return " ".join(parts)


@dataclass(frozen=True)
class SetMtu(_Templated):
    """A fix: set a link's MTU in one of the lab's namespaces; ``link`` is its kernel name."""

    netns: str
    link: str
    mtu: int
    kind: Literal["mtu"] = "mtu"
    TEMPLATE: ClassVar[str] = "ip link set {self.link} mtu {self.mtu}"


Fix = Sysctl | SetLink | SetMtu | SetMaster | SetHairpin | AddRoute | DeleteRoute | AddAddress | DeleteAddress | SetFdb | DeleteRule | AddRule | SetPolicy | DeleteNeighbour | FlushConntrack
FIX_KINDS: dict[str, type[Fix]] = {"sysctl": Sysctl, "link": SetLink, "mtu": SetMtu, "master": SetMaster, "hairpin": SetHairpin, "route": AddRoute, "delete-route": DeleteRoute,
                                   "add-address": AddAddress, "delete-address": DeleteAddress, "fdb": SetFdb, "delete-rule": DeleteRule, "add-rule": AddRule, "policy": SetPolicy,
                                   "delete-neighbour": DeleteNeighbour, "flush-conntrack": FlushConntrack}
RULE_TUPLES = {f.name for f in fields(XRule) if f.name in ("unmodelled", "dports", "src_set", "dst_set", "in_set", "out_set", "ct_state")}


def fix_from_dict(d: Mapping[str, JSON]) -> Fix:
    """A fix value from its JSON form (a rule's tuples come back as lists)."""
    data: dict[str, object] = dict(d)
    raw = data.get("rule")
    if isinstance(raw, dict):
        rule = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if k in RULE_TUPLES and isinstance(v, list) else v) for k, v in raw.items()}
        data["rule"] = XRule(**rule)  # type: ignore[arg-type]
    return FIX_KINDS[str(data["kind"])](**data)  # type: ignore[arg-type]


def place_once(where: str, summary: str) -> str:
    """``where: summary``, with the place said once (a summary that starts with its place keeps it)."""
    return summary if summary.startswith(f"{where}:") else f"{where}: {summary}"


@dataclass(frozen=True)
class Finding:
    """One cause, in configuration terms, with the fix (as a command, and as values where they are known)."""

    cause: str  # short identifier, e.g. "ip_forward_off"
    where: str  # namespace label
    summary: str  # "host: net.ipv4.ip_forward = 0, so packets from br0 are not routed to the uplink"
    fix: str  # "ip netns exec nck7q0-host sysctl -w net.ipv4.ip_forward=1"
    evidence: tuple[str, ...] = ()
    score: int = 50
    fixes: tuple[Fix, ...] = ()  # the fix as values, which a sandbox lab can apply, re-probe and undo
    verified: str = ""  # "fix verified: ...", "fix did not help: ...", or "" (not tried)

    def line(self) -> str:
        return f"{self.summary}. Fix: {self.fix}"

    def headline(self) -> str:
        """``where: summary``, the place once (summaries often start with it)."""
        return place_once(self.where, self.summary)

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> Finding:
        return cls(**{**_known(cls, d), "evidence": tuple(d.get("evidence", ())), "fixes": tuple(fix_from_dict(x) for x in d.get("fixes", ()))})


@dataclass(frozen=True)
class Hop:
    """One hop of the expected path, and whether the probe was seen there, each way."""

    point: str
    direction: Literal["out", "back"]
    seen: bool
    addresses: str = ""


@dataclass(frozen=True)
class KernelEvent:
    """The kernel's own account of one of the probe's packets: it dropped it, why, and where
    (from ``skb:kfree_skb``), in the lab's names, with the causes its reason points to."""

    reason: str  # NETFILTER_DROP, IP_RPFILTER, IP_INNOROUTES, NEIGH_FAILED, PKT_TOO_BIG, ...
    location: str  # the kernel function: nft_do_chain, nf_hook_slow, ip_forward, ...
    netns: str  # the namespace's label: host, wan or a container
    device: str  # the interface's spec name ("-": the packet had none yet)
    packet: str  # "172.18.0.10 > 198.51.100.1"
    causes: tuple[str, ...] = ()  # the cause ids this reason points to (none: it names no cause by itself)

    @property
    def where(self) -> str:
        return self.netns if self.device == "-" else f"{self.netns}:{self.device}"

    @classmethod
    def of(cls, drop: KernelDrop, netns: str, device: str, causes: tuple[str, ...] = ()) -> KernelEvent:
        return cls(drop.reason, drop.location, netns, device, f"{drop.src_at} > {drop.dst_at}", causes)

    def line(self) -> str:
        """``NETFILTER_DROP at nft_do_chain on host:br0``."""
        return f"{self.reason} at {self.location} on {self.where}"

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> KernelEvent:
        return cls(**{**_known(cls, d), "causes": tuple(d.get("causes", ()))})


@dataclass(frozen=True)
class Diagnosis:
    """Why a probe failed: ranked findings, the trace of the repeated probe, and the facts behind them."""

    findings: tuple[Finding, ...] = ()
    trace: tuple[Hop, ...] = ()
    notes: tuple[str, ...] = ()
    breaks: tuple[str, ...] = ()  # per direction: last hop seen, first hop missing
    rewrites: tuple[str, ...] = ()  # address changes between hops (NAT at work)
    matched: tuple[str, ...] = ()  # rules whose packet counters grew during the repeated probe
    conntrack: tuple[str, ...] = ()  # conntrack entries of the probe's flow
    repeated: str = ""  # how the repeated probe went
    elapsed_ms: float = 0.0  # what the diagnosis cost
    kernel: tuple[KernelEvent, ...] = ()  # the kernel's drops of the probe's packets during the repeat
    kernel_note: str = ""  # why there are none, or why the kernel could not be asked
    disagreement: str = ""  # where the rules' top cause or the datapath model and the kernel's witness part ways (both shown)
    nft_trace: tuple[str, ...] = ()  # the nf_tables rules and verdicts the repeated probe's packets met (nftables tracing; a chain policy marked as such)
    captures: tuple[Capture, ...] = ()  # the repeated probe's captures at every hop of the trace (its packets, for the pcaps)
    started_at: float = 0.0  # epoch seconds when the repeated probe was sent (its packets' at_ms count from here)

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def render(self) -> str:
        lines = []
        if self.findings:
            lines.append("diagnosis:")
            for i, f in enumerate(self.findings, 1):
                lines.append(f"  {i}. [{f.cause}] {f.summary}")
                lines.append(f"     fix: {f.fix}")
                if f.verified:
                    lines.append(f"     {f.verified}")
                lines.extend(f"     evidence: {e}" for e in f.evidence)
        else:
            lines.append("diagnosis: no known cause matched; the trace below shows where the packet was last seen")
        if self.trace:
            lines.append("trace" + (f" ({self.repeated})" if self.repeated else "") + ":")
            for h in self.trace:
                mark = "seen    " if h.seen else "MISSING "
                lines.append(f"  {h.direction:<4} {mark} {h.point:<24} {h.addresses}".rstrip())
            lines.extend(f"  {b}" for b in self.breaks)
            lines.extend(f"  rewritten: {r}" for r in self.rewrites)
        if self.kernel:
            lines.append("kernel (its drops of the probe's packets during the repeat, from skb:kfree_skb):")
            lines.extend(f"  {k.line()} ({k.packet})" + (f" -> {', '.join(k.causes)}" if k.causes else "") for k in self.kernel)
        if self.kernel_note:
            lines.append(f"kernel: {self.kernel_note}")
        if self.nft_trace:
            lines.append("nft trace (the rules and verdicts the repeated probe's packets met in nf_tables):")
            lines.extend(f"  {t}" for t in self.nft_trace)
        if self.disagreement:
            lines.append(f"model and kernel disagree: {self.disagreement}")
        if self.matched:
            lines.append("rules the repeated probe matched (packet counter deltas):")
            lines.extend(f"  {m}" for m in self.matched)
        if self.conntrack:
            lines.append("conntrack (host):")
            lines.extend(f"  {c}" for c in self.conntrack)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> JSONObject:
        """Plain data; a diagnosis whose probe was not repeated with captures reads as it always did (no hop packets)."""
        d = asdict(self)
        if not self.captures:
            del d["captures"], d["started_at"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> Diagnosis:
        data: JSONObject = {k: (tuple(v) if isinstance(v, list) else v) for k, v in _known(cls, d).items()}
        return cls(**{**data,
                      "findings": tuple(Finding.from_dict(f) for f in d.get("findings", ())),
                      "trace": tuple(Hop(**h) for h in d.get("trace", ())),
                      "kernel": tuple(KernelEvent.from_dict(k) for k in d.get("kernel", ())),
                      "captures": tuple(Capture.from_dict(c) for c in d.get("captures", ()))})


@dataclass(frozen=True)
class ProbeResult:
    """One probe, as evidence: its request, what was sent, what came back, where it was seen."""

    request: ProbeRequest
    topology: str
    source_interface: str
    source_address: str
    sent: str  # what was sent, for people: "ICMP echo id=0x1a2b seq=1 'netcheck-1a2b'"
    verdict: Verdict
    captures: tuple[Capture, ...] = ()
    reply: str | None = None
    replied_by: str | None = None  # the container whose service answered
    service_saw: str | None = None  # source address:port the service saw
    rtt_ms: float | None = None
    error: str | None = None
    diagnosis: Diagnosis | None = None
    started_at: float = 0.0  # epoch seconds when the probe was sent (pcap timestamps)
    labels: dict[str, str] = field(default_factory=dict)
    service: Literal["netcheck", "user"] = "netcheck"  # whose service answered: netcheck's, or one the user's setup runs
    flow_id: int | None = None  # the probe's own end: its TCP/UDP client port or ICMP identifier (names it in captures and kernel drops)
    kernel_drop: KernelEvent | None = None  # the kernel's drop that ended the probe before its timeout
    answers: tuple[str, ...] = ()  # dns: the A records of the answer
    rcode: str | None = None  # dns: NOERROR, NXDOMAIN, SERVFAIL, ...

    def blocked_by(self) -> str | None:
        """How a probe that did not get through was stopped, as the evidence proves it (None if it got through)."""
        if self.verdict != "unreachable":
            return None
        if self.kernel_drop is not None:
            return f"blocked: kernel drop {self.kernel_drop.line()}"
        if self.error:
            return f"blocked: {self.error}"
        return f"blocked: no answer within {self.request.timeout:g}s" if self.request.timeout is not None else "blocked: no answer (within the default timeout)"

    @property
    def kind(self) -> ProbeKind:
        return self.request.kind

    @property
    def source(self) -> str:
        return self.request.source

    @property
    def destination(self) -> str:
        """The address, or address:port, as the evidence shows it (``request`` holds the values)."""
        return self.request.address

    @property
    def expected(self) -> Expectation:
        return self.request.expect

    @property
    def target(self) -> str | None:
        return self.request.target

    @property
    def passed(self) -> bool:
        return verdict_passes(self.expected, self.verdict)

    def capture(self, point: str) -> Capture:
        for c in self.captures:
            if c.point == point:
                return c
        raise KeyError(f"no capture point {point!r} in this probe (points: {', '.join(c.point for c in self.captures) or 'none'})")

    def headline(self) -> str:
        exp = {"reach": "expected to reach", "block": "expected to be blocked", "observe": "observed"}[self.expected]
        who = f" ({self.target})" if self.target else ""
        got = self.verdict + (f", answered by {self.replied_by}" if self.replied_by and self.replied_by != self.target else "")
        kind = f"dns/{self.request.transport} {self.request.query!r}" if self.kind == "dns" else self.kind
        kind += f" of {self.request.size} bytes, don't fragment," if self.request.size is not None else ""
        got += f" ({self.rcode}{': ' + ', '.join(self.answers) if self.answers else ''})" if self.rcode else ""
        return f"[{self.topology}] {kind} {self.source} ({self.source_address}) -> {self.destination}{who}: {exp}, {got}"

    def explain(self) -> str:
        """The failure message: headline, diagnosis first, then the evidence."""
        lines = [self.headline()]
        if self.error:
            lines.append(f"error: {self.error}")
        if self.diagnosis is not None:
            lines.append(self.diagnosis.render())
        lines.append("evidence:")
        for c in self.captures:
            if not c.started:
                lines.append(f"  {c.point:<24} capture did not start")
                continue
            if not c.packets:
                lines.append(f"  {c.point:<24} nothing seen")
            for p in c.packets[:6]:
                lines.append(f"  {c.point:<24} {p.proto} {p.flow} ttl={p.ttl} {p.info} ({p.src_mac} > {p.dst_mac})")
        if self.service_saw:
            whose = "the user's own service in" if self.service == "user" else "service"
            how = " (read from the capture inside the container: that service does not report it)" if self.service == "user" else ""
            lines.append(f"  {whose} {self.replied_by} saw the client as {self.service_saw}{how}")
        return "\n".join(lines)

    def with_diagnosis(self, diagnosis: Diagnosis) -> ProbeResult:
        return replace(self, diagnosis=diagnosis)

    def to_dict(self) -> JSONObject:
        """Plain data: the request as data, and beside it the fields the report reads (kind, source, destination, expected, target)."""
        dns_only = () if self.kind == "dns" else ("answers", "rcode")  # other kinds' records read as they always did
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("request", "captures", "diagnosis", "kernel_drop", *dns_only)}
        d["captures"] = [asdict(c) for c in self.captures]
        d["kernel_drop"] = asdict(self.kernel_drop) if self.kernel_drop is not None else None
        d["diagnosis"] = self.diagnosis.to_dict() if self.diagnosis is not None else None
        flat = {"kind": self.kind, "source": self.source, "destination": self.destination, "expected": self.expected, "target": self.target}
        out: JSONObject = _encode({"request": self.request.to_dict(), **flat, **d})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, JSON]) -> ProbeResult:
        """The typed result of ``to_dict``'s data (what xdist ships to the controller)."""
        return cls(**{
            **_known(cls, data),
            "request": ProbeRequest.from_dict(data["request"]),
            "captures": tuple(Capture.from_dict(c) for c in data.get("captures", ())),
            "diagnosis": Diagnosis.from_dict(data["diagnosis"]) if data.get("diagnosis") else None,
            "kernel_drop": KernelEvent.from_dict(data["kernel_drop"]) if data.get("kernel_drop") else None,
            "answers": tuple(data.get("answers", ())),
        })


def _known(cls: type, d: Mapping[str, JSON]) -> JSONObject:
    """The entries of ``d`` that name a field of the dataclass ``cls`` (records from other versions carry more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _encode(value: object) -> JSON:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


@dataclass(frozen=True)
class MatrixResult:
    """Expected versus observed reachability between every pair of a set of endpoints."""

    topology: str
    kind: ProbeKind
    names: tuple[str, ...]
    expected: tuple[tuple[bool, ...], ...]  # expected[i][j]: i reaches j
    observed: tuple[tuple[bool | None, ...], ...]  # None on the diagonal
    failures: tuple[ProbeResult, ...] = ()
    elapsed_s: float = 0.0

    @property
    def pairs(self) -> int:
        n = len(self.names)
        return n * (n - 1)

    def failing_pairs(self) -> list[tuple[str, str]]:
        out = []
        for i, a in enumerate(self.names):
            for j, b in enumerate(self.names):
                if i != j and self.observed[i][j] != self.expected[i][j]:
                    out.append((a, b))
        return out

    def to_dict(self) -> JSONObject:
        d: JSONObject = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "failures"}
        d["failures"] = [f.to_dict() for f in self.failures]
        out: JSONObject = _encode(d)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, JSON]) -> MatrixResult:
        """The typed matrix of ``to_dict``'s data (a suite may record it with ``kind`` "matrix": that kind is the probes')."""
        def grid(rows: JSON) -> tuple[tuple[bool | None, ...], ...]:
            return tuple(tuple(None if v is None else bool(v) for v in row) for row in rows or ())

        kind = d.get("kind", "icmp")
        return cls(topology=str(d.get("topology", "")), kind=kind if kind in get_args(ProbeKind) else "icmp", names=tuple(str(n) for n in d.get("names", ())),
                   expected=tuple(tuple(bool(v) for v in row) for row in grid(d.get("expected"))), observed=grid(d.get("observed")),
                   failures=tuple(ProbeResult.from_dict(f) for f in d.get("failures", ())), elapsed_s=float(d.get("elapsed_s") or 0.0))

    @staticmethod
    def is_one(d: Mapping[str, JSON]) -> bool:
        """Whether plain data is a matrix (``to_dict``'s, or an entry marked kind "matrix") rather than a probe."""
        return d.get("kind") == "matrix" or ("names" in d and "observed" in d and "expected" in d)
