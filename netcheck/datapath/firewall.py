"""The host's firewall as data: both backends' chains, their hooks, and a small walker (the diagnosis imports it as netcheck.diagnose.firewall).

Rules come from legacy xtables (python-iptables) and from nf_tables (``nft -j``), where
iptables-nft, Docker, CNI and netavark write them. The kernel applies both, so a packet is
walked through each backend's chains for a hook, and any DROP wins.

The walker models what ``XRule`` carries: addresses, interfaces, protocol and destination
port, the sets of each, and the conntrack state. Matches it cannot see (marks, fib, a source
port) are taken to match; the rule counters read before and after the repeated probe are the
stronger evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from netcheck.kernel import nft
from netcheck.kernel.xtables import XChain, XRule

TERMINAL = ("ACCEPT", "DROP", "REJECT")
XTABLES = nft.XTABLES
NAT_TARGETS = ("DNAT", "SNAT", "MASQUERADE", "REDIRECT")
LEGACY_HOOKS = {
    ("filter", "INPUT"): ("input", "filter"),
    ("filter", "FORWARD"): ("forward", "filter"),
    ("filter", "OUTPUT"): ("output", "filter"),
    ("nat", "PREROUTING"): ("prerouting", "nat"),
    ("nat", "INPUT"): ("input", "nat"),
    ("nat", "OUTPUT"): ("output", "nat"),
    ("nat", "POSTROUTING"): ("postrouting", "nat"),
}


@dataclass(frozen=True)
class Pkt:
    """A packet as the firewall sees it, in kernel interface names."""

    src: str
    dst: str
    proto: str  # icmp, tcp, udp
    dport: int | None = None
    iif: str | None = None
    oif: str | None = None
    ct_state: str = "new"  # its conntrack state: a probe's first packet is new, its reply established


@dataclass(frozen=True)
class Placed:
    """A rule with where it lives: backend, table, chain and position (1-based)."""

    backend: str  # legacy or nft
    rule: XRule
    position: int
    family: str = "ip"  # nf_tables: the table's family

    @property
    def key(self) -> tuple[str, str, str, int, XRule]:
        return (self.backend, self.rule.table, self.rule.chain, self.position, self.rule.key())

    def render(self, op: str = "-A") -> str:
        """As a user would write it: ``iptables-legacy -t nat -A POSTROUTING ...``, or for a rule of
        a native nft table ``nft 'add rule ip T C ...'`` (op -D: the command that deletes it)."""
        return command(self.backend, self.rule, op, self.family)

    def delete(self) -> str:
        """The command that deletes this rule."""
        return self.render("-D")

    def where(self) -> str:
        """``iptables-nft: filter FORWARD rule 1``, or ``nft: ip nc1_filter FORWARD rule 1 (handle 4)``."""
        if is_native(self.backend, self.rule.table):
            return f"nft: {self.family} {self.rule.table} {self.rule.chain} rule {self.position} (handle {self.rule.handle})"
        return f"{binary(self.backend, self.rule.family)}: {self.rule.table} {self.rule.chain} rule {self.position}"


binary, is_native, command = nft.binary, nft.is_native, nft.rule_command  # the one rendering of a rule where it lives (netcheck/kernel/nft.py)


@dataclass(frozen=True)
class Decision:
    """What a walk through one backend's chains decided, and the rules it went through."""

    backend: str
    verdict: str  # ACCEPT, DROP, REJECT, DNAT, MASQUERADE, SNAT, or "" (nothing decided)
    rule: Placed | None  # the deciding rule, None for a policy or for nothing
    policy: str | None = None  # the base chain policy that decided, if one did
    chain: str = ""
    via: tuple[str, ...] = ()  # the chains walked, e.g. ("PREROUTING", "VIP-EXAMPLE")

    def render(self) -> str:
        if self.rule is not None:
            return f"{self.verdict} by {self.rule.render()}"
        if self.policy is not None:
            return f"{self.verdict} by the {self.chain} policy ({binary(self.backend)})"
        return f"no {binary(self.backend)} rule decided"


@dataclass
class Ruleset:
    """Every chain of the host's two backends, and the base chains hooked to each hook."""

    chains: dict[tuple[str, str, str], XChain] = field(default_factory=dict)  # (backend, table, chain)
    hooks: list[tuple[str, str, str, str, str, int]] = field(default_factory=list)  # (backend, hook, type, table, chain, priority)
    l2: dict[tuple[str, str, str], XChain] = field(default_factory=dict)  # nf_tables' bridge and netdev families: (family, table, chain); the ip hooks never meet them

    @classmethod
    def build(cls, legacy: Iterable[XChain], nft: Iterable[XChain], legacy6: Iterable[XChain] = (), l2: Iterable[XChain] = ()) -> Ruleset:
        """``legacy6``: ip6tables' (legacy) chains, under the backend label "legacy6": they see IPv6 packets only."""
        rs = cls(l2={(c.family, c.table, c.name): c for c in l2})
        for backend, chains in (("legacy", legacy), (LEGACY6, legacy6)):
            for c in chains:
                rs.chains[(backend, c.table, c.name)] = c
                hook = LEGACY_HOOKS.get((c.table, c.name))
                if hook is not None:
                    rs.hooks.append((backend, hook[0], hook[1], c.table, c.name, 0))
        for c in nft:
            backend = NFT6 if c.family == "ip6" else "nft"  # ip6 tables may share their names with ip ones (iptables-nft's "filter")
            rs.chains[(backend, c.table, c.name)] = c
            if c.hook is not None:
                rs.hooks.append((backend, c.hook, c.kind, c.table, c.name, c.priority))
        rs.hooks.sort(key=lambda h: h[5])
        return rs

    def backends(self) -> list[str]:
        """The backends that hold at least one rule, or a base chain whose policy is not ACCEPT (IPv4's: ip6tables' own are another family, not a split)."""
        return sorted({b for (b, _t, _c), ch in self.chains.items() if b not in (LEGACY6, NFT6) and (ch.rules or ch.policy not in (None, "ACCEPT"))})

    def rules(self) -> Iterator[Placed]:
        for (backend, _table, _name), ch in self.chains.items():
            for i, r in enumerate(ch.rules, 1):
                yield Placed(backend, r, i, ch.family)

    def is_base(self, backend: str, table: str, chain: str) -> bool:
        """Is the chain a base chain (hooked into the kernel), not a user chain reached by jumps?"""
        return any((b, t, c) == (backend, table, chain) for b, _h, _k, t, c, _p in self.hooks)

    def hooks_of(self, backend: str, table: str, chain: str) -> set[tuple[str, str]]:
        """The (hook, type) of every base chain from which ``chain`` is reached (itself, or by jumps)."""
        out = set()
        for b, hook, kind, t, name, _prio in self.hooks:
            if b == backend and t == table and chain in self.reachable(backend, table, [name]):
                out.add((hook, kind))
        return out

    def native_home(self, role: str, chain: str) -> tuple[str, str] | None:
        """(table, family) of a native nft table with a base chain named and hooked as iptables'
        ``role`` ``chain`` (nat POSTROUTING: a nat chain on postrouting): where a rule for it goes."""
        want = nft.HOOKS.get((role, chain))
        for backend, hook, kind, table, name, _prio in self.hooks:
            if want is not None and is_native(backend, table) and name == chain and (kind, hook) == want[:2]:
                return table, self.chains[(backend, table, name)].family
        return None

    def base_chains(self, hook: str, kind: str) -> list[tuple[str, XChain]]:
        out = []
        for backend, h, t, table, name, _prio in self.hooks:
            if h == hook and t == kind:
                ch = self.chains.get((backend, table, name))
                if ch is not None:
                    out.append((backend, ch))
        return out

    def walk(self, hook: str, kind: str, pkt: Pkt) -> list[Decision]:
        """Walk the packet through every base chain of a hook that sees its family; one decision per base chain."""
        return [self._walk_base(backend, ch, pkt) for backend, ch in self.base_chains(hook, kind) if _sees(backend, ch, pkt)]

    def verdict(self, hook: str, pkt: Pkt) -> Decision | None:
        """The filter verdict of a hook: the first DROP/REJECT of any backend, else None (accepted)."""
        for d in self.walk(hook, "filter", pkt):
            if d.verdict in ("DROP", "REJECT"):
                return d
        return None

    def nat(self, hook: str, pkt: Pkt) -> Decision | None:
        """The first NAT decision of a hook (DNAT in prerouting/output, SNAT/MASQUERADE in postrouting)."""
        for d in self.walk(hook, "nat", pkt):
            if d.verdict in NAT_TARGETS:
                return d
        return None

    def _walk_base(self, backend: str, chain: XChain, pkt: Pkt) -> Decision:
        d = self._walk(backend, chain, pkt, (chain.name,), 0)
        if d is not None:
            return d
        policy = chain.policy or "ACCEPT"
        return Decision(backend, policy, None, policy=policy, chain=chain.name, via=(chain.name,))

    def _walk(self, backend: str, chain: XChain, pkt: Pkt, via: tuple[str, ...], depth: int) -> Decision | None:
        if depth > 16:
            return None
        for i, r in enumerate(chain.rules, 1):
            if not matches(r, pkt):
                continue
            target = r.target
            if target in TERMINAL or target in NAT_TARGETS:
                return Decision(backend, target, Placed(backend, r, i), chain=chain.name, via=via)
            if target == "RETURN":
                return None
            sub = self.chains.get((backend, chain.table, target))
            if sub is not None:
                d = self._walk(backend, sub, pkt, (*via, sub.name), depth + 1)
                if d is not None:
                    return d
        return None

    def reachable(self, backend: str, table: str, hook_chains: Iterable[str]) -> set[str]:
        """The chains of a table reachable by jumps from the named base chains."""
        seen: set[str] = set()
        todo = list(hook_chains)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            ch = self.chains.get((backend, table, name))
            if ch is None:
                continue
            todo.extend(r.target for r in ch.rules if (backend, table, r.target) in self.chains)
        return seen

    def jumps_to(self, backend: str, table: str, chain: str) -> list[Placed]:
        """The rules that jump to a chain."""
        return [p for p in self.rules() if p.backend == backend and p.rule.table == table and p.rule.target == chain]


LEGACY6, NFT6 = nft.LEGACY6, nft.NFT6  # the backend labels of ip6tables' legacy tables and of nf_tables' ip6 family


def family_of(pkt: Pkt) -> int:
    return 6 if ":" in pkt.src or ":" in pkt.dst else 4


def _sees(backend: str, chain: XChain, pkt: Pkt) -> bool:
    return sees(backend, chain, family_of(pkt))


def sees(backend: str, chain: XChain, family: int) -> bool:
    """Does a base chain see packets of ``family``? (ip6tables and nft ip6 tables: IPv6; iptables and nft ip: IPv4; inet: both.)"""
    seen = 6 if backend in (LEGACY6, NFT6) else 4 if backend == "legacy" or chain.family == "ip" else 0
    return seen in (0, family)


def _addr_match(spec: str | None, addr: str) -> bool:
    if not spec:
        return True
    neg = spec.startswith("!")
    text = spec[1:] if neg else spec
    try:
        hit = ip_address(addr) in ip_network(text, strict=False)
    except ValueError:
        return True  # a set or an expression the summary does not model: assume it matches
    return hit != neg


def _iface_match(spec: str | None, iface: str | None) -> bool:
    """``iface`` None: the packet has no such interface at this hook (no input interface in
    OUTPUT, no output interface in PREROUTING), so ``-i X`` fails and ``! -i X`` holds."""
    if not spec:
        return True
    neg = spec.startswith("!")
    text = spec[1:] if neg else spec
    if iface is None:
        return neg
    hit = iface.startswith(text[:-1]) if text.endswith(("+", "*")) else iface == text
    return hit != neg


def matches(r: XRule, pkt: Pkt, *, interfaces: bool = True) -> bool:
    """Does the rule's summary match the packet? (Unmodelled matches count as matching.)
    ``interfaces=False`` ignores the rule's interfaces (to find a rule meant for the packet anywhere).

    >>> matches(XRule("t", "c", "DROP", protocol="tcp", dports=((80, 80), (443, 443))), Pkt("10.0.0.2", "10.0.0.3", "tcp", 22))
    False
    """
    if r.family == 6 and family_of(pkt) == 4:
        return False  # an ip6tables rule never sees an IPv4 packet (nor an iptables one an IPv6 packet: its chain does not see it)
    if not (_addr_match(r.src, pkt.src) and _addr_match(r.dst, pkt.dst)):
        return False
    if (r.src_set and not any(_addr_match(n, pkt.src) for n in r.src_set)) or (r.dst_set and not any(_addr_match(n, pkt.dst) for n in r.dst_set)):
        return False
    if interfaces and not (_iface_match(r.in_interface, pkt.iif) and _iface_match(r.out_interface, pkt.oif)):
        return False
    if interfaces and ((r.in_set and not any(_iface_match(i, pkt.iif) for i in r.in_set)) or (r.out_set and not any(_iface_match(i, pkt.oif) for i in r.out_set))):
        return False
    if r.protocol and r.protocol not in PROTOCOL_NAMES.get(pkt.proto + ("6" if pkt.proto == "icmp" and family_of(pkt) == 6 else ""), (pkt.proto,)):
        return False
    if r.ct_state and pkt.ct_state not in r.ct_state:
        return False
    if r.dports and (pkt.dport is None or not any(lo <= pkt.dport <= hi for lo, hi in r.dports)):
        return False
    return r.dport is None or r.dport == pkt.dport


PROTOCOL_NAMES = {"tcp": ("tcp", "6"), "udp": ("udp", "17"), "sctp": ("sctp", "132"), "icmp": ("icmp", "1"), "icmp6": ("icmpv6", "ipv6-icmp", "58")}  # a probe's protocol as a rule may name it


def counter_deltas(before: Iterable[Placed], after: Iterable[Placed]) -> list[tuple[Placed, int]]:
    """Rules whose packet counter grew between two reads: the rules that matched the probe."""
    old = {p.key: p.rule.packets for p in before}
    out = []
    for p in after:
        grew = p.rule.packets - old.get(p.key, p.rule.packets)
        if grew > 0:
            out.append((p, grew))
    return out


__all__ = ["LEGACY6", "NFT6", "XTABLES", "Decision", "Pkt", "Placed", "Ruleset", "binary", "command", "counter_deltas", "is_native", "matches", "sees"]
