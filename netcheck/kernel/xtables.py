"""iptables rules through python-iptables (legacy xtables), and nf_tables read through ``nft -j``.

libiptc and python-iptables keep process-wide state (``iptc.Table`` objects are cached by
name, and a handle belongs to the namespace it was opened in). So every use takes one lock,
opens fresh handles inside the target namespace's thread, never auto-commits, and frees the
handles before the lock is released.
"""

from __future__ import annotations

import itertools
import json
import shlex
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network, summarize_address_range
from typing import TYPE_CHECKING, Any, Literal

from netcheck.kernel import libnftables
from netcheck.kernel.netns import KernelError, Netns

if TYPE_CHECKING:
    import iptc as iptc_t

# One lock for the process: libiptc's table cache and libxtables are not thread-safe.
_IPTC_LOCK = threading.Lock()
USED_TABLES = ("filter", "nat")
Backend = Literal["legacy", "nft"]
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


@dataclass(frozen=True)
class XRule:
    """One iptables rule, in kernel names. A leading '!' negates src, dst or an interface."""

    table: str
    chain: str
    target: str
    src: str | None = None
    dst: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    protocol: str | None = None
    dport: int | None = None
    to_destination: str | None = None
    comment: str | None = None
    packets: int = 0
    bytes: int = 0
    handle: int | None = None  # nf_tables: the rule's handle (``nft delete rule ... handle N``)
    unmodelled: tuple[str, ...] = ()  # nf_tables: the matches this summary does not model (a mark, a source port...)
    # nf_tables sets (anonymous or named, resolved to their elements), where one value is not enough:
    dports: tuple[tuple[int, int], ...] = ()  # destination ports and ranges, inclusive (``dport`` holds a single port)
    src_set: tuple[str, ...] = ()  # source addresses or networks
    dst_set: tuple[str, ...] = ()
    in_set: tuple[str, ...] = ()  # interface names (a trailing + is a wildcard)
    out_set: tuple[str, ...] = ()
    ct_state: tuple[str, ...] = ()  # conntrack states (new, established, related, invalid, untracked)
    family: int | None = None  # None: IPv4, iptables (nft ip); 6: IPv6, ip6tables (nft ip6). The arguments are the same

    @property
    def tool(self) -> str:
        """The command of its family: iptables or ip6tables."""
        return "ip6tables" if self.family == 6 else "iptables"

    def key(self) -> XRule:
        """The rule without counters, comment and nft bookkeeping, for comparisons."""
        return replace(self, packets=0, bytes=0, comment=None, handle=None, unmodelled=())

    def argv(self, op: str = "-A", position: int | None = None) -> list[str]:
        """The rule as ``iptables`` arguments (op: -A, -I or -D; -I at ``position``, 1-based): the one
        rendering of a rule, for building with iptables-nft, undoing, fixes and messages; an argv list,
        never a shell string.

        >>> XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", protocol="tcp", dport=80, to_destination="10.0.0.2:8080").argv("-D")
        ['-t', 'nat', '-D', 'PREROUTING', '-d', '203.0.113.2', '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', '10.0.0.2:8080']
        >>> XRule("filter", "FORWARD", "DROP", in_interface="br0").argv("-I", 2)
        ['-t', 'filter', '-I', 'FORWARD', '2', '-i', 'br0', '-j', 'DROP']
        """
        argv = ["-t", self.table, op, self.chain, *([str(position)] if op == "-I" and position is not None else [])]
        for flag, value in (("-s", self.src), ("-d", self.dst), ("-i", self.in_interface), ("-o", self.out_interface)):
            if value:
                argv += ["!", flag, value[1:]] if value.startswith("!") else [flag, value]
        for flag, values in (("-s", self.src_set), ("-d", self.dst_set), ("-i", self.in_set), ("-o", self.out_set)):
            if values:
                argv += [flag, ",".join(values)]  # iptables takes an address list; an interface list is nft's only
        if self.protocol:
            argv += ["-p", self.protocol]
            if self.dport is not None:
                argv += ["--dport", str(self.dport)]
            elif self.dports:
                argv += ["-m", "multiport", "--dports", ",".join(str(a) if a == b else f"{a}:{b}" for a, b in self.dports)]
        if self.ct_state:
            argv += ["-m", "conntrack", "--ctstate", ",".join(x.upper() for x in self.ct_state)]
        if self.comment:
            argv += ["-m", "comment", "--comment", self.comment]
        argv += ["-j", self.target]
        if self.to_destination:
            argv += ["--to-destination", self.to_destination]
        return argv

    def render(self, op: str = "-A") -> str:
        """``argv(op)`` as one line a user can paste after ``iptables`` (a lone ``!`` needs no quotes)."""
        return " ".join(a if a == "!" else shlex.quote(a) for a in self.argv(op))


@dataclass(frozen=True)
class XChain:
    table: str
    name: str
    policy: str | None  # None for a user chain
    rules: tuple[XRule, ...]
    backend: str = "legacy"
    family: str = "ip"
    hook: str | None = None  # nf_tables base chains: the hook (prerouting...), with its type and priority
    kind: str = "filter"
    priority: int = 0


def _iptc() -> Any:
    import iptc

    return iptc


@contextmanager
def _tables(names: Sequence[str], family: int = 4) -> Iterator[dict[str, iptc_t.Table]]:
    """Fresh handles of the named tables (ip6tables' with ``family`` 6), opened in the calling thread's namespace."""
    iptc = _iptc()
    kind = iptc.Table6 if family == 6 else iptc.Table
    # A rule that jumps to a user chain makes python-iptables ask every table it knows
    # (Rule.tables): it opens and caches a handle of each other table, whose socket then keeps
    # this namespace alive after its teardown, and it reads closed ones (a segfault). Let it
    # know filter and nat only, both opened here.
    kind.existing_table_names.update({name: name in USED_TABLES for name in kind.ALL})
    tables = {}
    try:
        for name in sorted(set(names) | set(USED_TABLES)):
            t = kind(name, autocommit=False)
            t.refresh()  # frees any stale handle without committing it, then opens one here
            tables[name] = t
        yield {name: tables[name] for name in names}
    finally:
        for t in tables.values():
            t.autocommit = False
            t.close()


def _netmask_cidr(value: str | None) -> str | None:
    if not value:
        return None
    neg = value.startswith("!")
    text = value[1:] if neg else value
    net = IPv4Network(text, strict=False)
    if str(net) == "0.0.0.0/0":
        return None
    shown = str(net.network_address) if net.prefixlen == 32 else str(net)
    return ("!" if neg else "") + shown


def _netmask_cidr6(value: str | None) -> str | None:
    if not value:
        return None
    neg = value.startswith("!")
    net = IPv6Network(value[1:] if neg else value, strict=False)
    if net.prefixlen == 0:
        return None
    return ("!" if neg else "") + (str(net.network_address) if net.prefixlen == 128 else str(net))


def _to_iptc(rule: XRule) -> Any:
    iptc = _iptc()
    r = iptc.Rule6() if rule.family == 6 else iptc.Rule()
    if rule.src:
        r.src = rule.src
    if rule.dst:
        r.dst = rule.dst
    if rule.in_interface:
        r.in_interface = rule.in_interface
    if rule.out_interface:
        r.out_interface = rule.out_interface
    if rule.protocol:
        r.protocol = rule.protocol
        if rule.dport is not None:
            m = r.create_match(rule.protocol)
            m.dport = str(rule.dport)
    if rule.comment:
        m = r.create_match("comment")
        m.comment = rule.comment
    t = r.create_target(rule.target)
    if rule.to_destination:
        t.to_destination = rule.to_destination
    return r


def _from_iptc(table: str, chain: str, r: Any, family: int = 4) -> XRule:
    dport = None
    comment = None
    ct_state: tuple[str, ...] = ()
    unmodelled: list[str] = []
    for m in r.matches:
        params = {k: v for k, v in m.get_all_parameters().items() if k != "dport"}
        if m.name in ("tcp", "udp", "sctp"):
            if m.dport:
                dport = int(str(m.dport).split(":")[0])
                if ":" in str(m.dport) or str(m.dport).startswith("!"):
                    unmodelled.append(f"{m.name} dport {m.dport}")
            unmodelled += [f"{m.name} {k}" for k in params]
        elif m.name == "comment":
            comment = m.comment
        elif m.name in ("conntrack", "state") and set(params) == {"ctstate" if m.name == "conntrack" else "state"}:
            ct_state = tuple(x.lower() for v in params.values() for x in ",".join(v).split(","))
        else:
            unmodelled.append(m.name)  # -m mac, -m mark, -m physdev...: a match this summary does not model
    target = r.target.name if r.target is not None else ""
    to_dest = None
    if target == "DNAT":
        params = r.target.get_all_parameters()
        values = params.get("to-destination") or []
        to_dest = values[0] if values else None
    packets, nbytes = r.get_counters()
    proto = r.protocol if r.protocol not in (None, "ip", "all", "0") else None
    if family == 6:
        return XRule(table=table, chain=chain, target=target, src=_netmask_cidr6(r.src), dst=_netmask_cidr6(r.dst), in_interface=r.in_interface or None,
                     out_interface=r.out_interface or None, protocol="icmpv6" if proto in ("ipv6-icmp", "icmpv6", "58") else proto, dport=dport,
                     to_destination=to_dest, comment=comment, packets=int(packets), bytes=int(nbytes), family=6)
    return XRule(
        table=table,
        chain=chain,
        target=target,
        src=_netmask_cidr(r.src),
        dst=_netmask_cidr(r.dst),
        in_interface=r.in_interface or None,
        out_interface=r.out_interface or None,
        protocol=proto,
        dport=dport,
        to_destination=to_dest,
        comment=comment,
        packets=int(packets),
        bytes=int(nbytes),
        unmodelled=tuple(unmodelled),
        ct_state=ct_state,
    )


def apply_rules(ns: Netns, rules: Sequence[XRule], policies: Sequence[tuple[str, str, str]] = (), *, insert: bool = False, backend: Backend = "legacy") -> None:
    """Create the custom chains the rules jump to and append (or insert) the rules, one commit per table."""
    if backend == "nft":
        _apply_nft(ns, rules, policies, insert)
        return

    v6 = [r for r in rules if r.family == 6]
    if v6:
        # A built-in chain's policy holds for every family the rules are written in (a dual-stack lab's FORWARD DROP, in ip6tables too).
        _apply_tool(ns, "ip6tables-legacy", v6, policies, insert)
        rules = [r for r in rules if r.family != 6]

    def do() -> None:
        iptc = _iptc()
        names = sorted({r.table for r in rules} | {p[0] for p in policies})
        with _IPTC_LOCK, _tables(names) as tables:
            for r in rules:
                t = tables[r.table]
                if r.chain not in BUILTIN_CHAINS.get(r.table, ()) and not t.is_chain(r.chain):
                    t.create_chain(r.chain)
                if r.target not in ("ACCEPT", "DROP", "REJECT", "RETURN", "MASQUERADE", "DNAT", "SNAT") and not t.is_chain(r.target):
                    t.create_chain(r.target)
                chain = iptc.Chain(t, r.chain)
                if insert:
                    chain.insert_rule(_to_iptc(r))
                else:
                    chain.append_rule(_to_iptc(r))
            for table, chain, policy in policies:
                iptc.Chain(tables[table], chain).set_policy(iptc.Policy(policy))
            for t in tables.values():
                t.commit()

    try:
        ns.call(do)
    except KernelError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise KernelError(f"iptables (legacy) in netns {ns.name or 'self'} ({ns.label}): {exc}") from None


def delete_rules(ns: Netns, rules: Sequence[XRule], chains: Sequence[tuple[str, str]] = (), *, backend: Backend = "legacy") -> int:
    """Delete rules that match exactly (counters ignored), then the named empty user chains."""
    if backend == "nft":
        return _delete_nft(ns, rules, chains)

    gone6 = 0
    if any(r.family == 6 for r in rules):
        gone6 = _delete_tool(ns, "ip6tables-legacy", [r for r in rules if r.family == 6], chains)
        rules = [r for r in rules if r.family != 6]

    def do() -> int:
        iptc = _iptc()
        gone = gone6
        names = sorted({r.table for r in rules} | {c[0] for c in chains})
        with _IPTC_LOCK, _tables(names) as tables:
            for r in rules:
                t = tables[r.table]
                if not t.is_chain(r.chain):
                    continue
                chain = iptc.Chain(t, r.chain)
                for existing in chain.rules:
                    if _from_iptc(r.table, r.chain, existing).key() == r.key() and existing_comment(existing) == r.comment:
                        chain.delete_rule(existing)
                        gone += 1
                        break
            for table, name in chains:
                t = tables[table]
                if t.is_chain(name):
                    chain = iptc.Chain(t, name)
                    if not chain.rules:
                        t.delete_chain(name)
            for t in tables.values():
                t.commit()
        return gone

    return ns.call(do)


def existing_comment(r: Any) -> str | None:
    for m in r.matches:
        if m.name == "comment":
            return str(m.comment)
    return None


def set_policy(ns: Netns, table: str, chain: str, policy: str) -> str:
    """Set a built-in chain's policy; returns the old one."""

    def do() -> str:
        iptc = _iptc()
        with _IPTC_LOCK, _tables([table]) as tables:
            c = iptc.Chain(tables[table], chain)
            old = c.get_policy().name
            c.set_policy(iptc.Policy(policy))
            tables[table].commit()
            return str(old)

    return ns.call(do)


def read_legacy(ns: Netns, tables: Sequence[str] = ("filter", "nat")) -> list[XChain]:
    """Every chain of the named legacy tables, with rules and counters (none named: none read)."""
    if not tables:
        return []  # _tables opens filter and nat whatever it is asked, and opening a table creates it

    return ns.call(_read_legacy_here, tuple(tables))


def _read_legacy_here(tables: tuple[str, ...]) -> list[XChain]:
    """``read_legacy`` in the calling thread's namespace (module-level: a node's agent runs it by name)."""
    out = []
    with _IPTC_LOCK, _tables(list(tables)) as handles:
        for name, t in handles.items():
            for chain in t.chains:
                policy = chain.get_policy().name if t.builtin_chain(chain.name) else None
                out.append(XChain(name, chain.name, policy, tuple(_from_iptc(name, chain.name, r) for r in chain.rules)))
    return out


# ----------------------------------------------------------------------------- the nft backend
# python-iptables drives legacy xtables only, and no library on PyPI drives nf_tables. On a host
# whose firewall is nf_tables (the Debian default), host mode writes its rules with the host's
# own `iptables-nft`, so that it never instantiates legacy tables there.


def choose_backend(ns: Netns) -> Backend:
    """The backend a host already uses: legacy if it has legacy tables or no iptables-nft, else nft."""
    from netcheck.kernel.inspect import legacy_tables

    if legacy_tables(ns) or shutil.which("iptables-nft") is None:
        return "legacy"
    return "nft"


def nft_missing(ns: Netns, wanted: Sequence[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Of the (table, base chain) pairs iptables-nft would create in family ip, those absent now:
    (missing tables, missing chains of existing tables)."""
    ruleset = read_nft(ns)
    have_tables = nft_tables(ruleset)
    have_chains = {(c.table, c.name) for c in nft_chains(ruleset) if c.family == "ip"}
    tables = sorted({t for t, _ in wanted if t not in have_tables})
    chains = sorted({(t, c) for t, c in wanted if t in have_tables and (t, c) not in have_chains})
    return tables, chains


def nft_remove_if_empty(ns: Netns, table: str, chain: str | None = None) -> bool:
    """Remove an ip-family base chain (or a whole table) that netcheck brought into being, only if
    it holds no rule; False if it is gone already or something else now uses it."""
    held = [c for c in nft_chains(read_nft(ns)) if c.family == "ip" and c.table == table and c.rules]
    if chain is not None:
        if any(c.name == chain for c in held):
            return False
        return _nft_run(ns, ["nft", "delete", "chain", "ip", table, chain], ok_errors=("No such file", "does not exist"))
    if held:
        return False
    return _nft_run(ns, ["nft", "delete", "table", "ip", table], ok_errors=("No such file", "does not exist"))


def _nft_run(ns: Netns, argv: list[str], *, ok_errors: tuple[str, ...] = ()) -> bool:
    proc = ns.run(argv, timeout=30)
    if proc.returncode == 0:
        return True
    err = proc.stderr.decode(errors="replace").strip()
    if any(e in err for e in ok_errors):
        return False
    raise KernelError(f"{' '.join(argv)} in netns {ns.name or 'self'} ({ns.label}): {err}")


def _apply_nft(ns: Netns, rules: Sequence[XRule], policies: Sequence[tuple[str, str, str]], insert: bool) -> None:
    v6 = [r for r in rules if r.family == 6]
    if v6:
        _apply_tool(ns, "ip6tables-nft", v6, policies, insert)
    _apply_tool(ns, "iptables-nft", [r for r in rules if r.family != 6], policies, insert)


def _apply_tool(ns: Netns, tool: str, rules: Sequence[XRule], policies: Sequence[tuple[str, str, str]], insert: bool) -> None:
    """Rules through an iptables command (iptables-nft; ip6tables-legacy, since python-iptables cannot hold
    both families' multi-family targets, MASQUERADE and DNAT among them, in one process)."""
    for r in rules:
        for chain in (r.chain, r.target):
            if chain not in BUILTIN_CHAINS.get(r.table, ()) and chain not in ("ACCEPT", "DROP", "REJECT", "RETURN", "MASQUERADE", "DNAT", "SNAT"):
                _nft_run(ns, [tool, "-w", "-t", r.table, "-N", chain], ok_errors=("already exists",))
        _nft_run(ns, [tool, "-w", *r.argv("-I" if insert else "-A")])
    for table, chain, policy in policies:
        _nft_run(ns, [tool, "-w", "-t", table, "-P", chain, policy])


def _delete_nft(ns: Netns, rules: Sequence[XRule], chains: Sequence[tuple[str, str]]) -> int:
    gone = 0
    if any(r.family == 6 for r in rules):
        gone += _delete_tool(ns, "ip6tables-nft", [r for r in rules if r.family == 6], chains)
    return gone + _delete_tool(ns, "iptables-nft", [r for r in rules if r.family != 6], chains)


def _delete_tool(ns: Netns, tool: str, rules: Sequence[XRule], chains: Sequence[tuple[str, str]]) -> int:
    gone = 0
    missing = ("does a matching rule exist", "No chain/target/match", "doesn't exist", "Bad rule")
    for r in rules:
        gone += _nft_run(ns, [tool, "-w", *r.argv("-D")], ok_errors=missing)
    for table, name in chains:
        _nft_run(ns, [tool, "-w", "-t", table, "-X", name], ok_errors=(*missing, "not empty", "Directory not empty", "Device or resource busy"))
    return gone


def read_legacy6(ns: Netns) -> list[XChain]:
    """The host's ip6tables (legacy) filter and nat chains, read through ``ip6tables-legacy-save`` (with counters)."""
    proc = ns.run(["ip6tables-legacy-save", "-c"], timeout=20)
    if proc.returncode != 0:
        return []
    text = proc.stdout.decode(errors="replace")
    saved = parse_save(text, family=6)
    chains: list[XChain] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":") and table in USED_TABLES:
            name, policy = line[1:].split()[:2]
            chains.append(XChain(table, name, None if policy == "-" else policy, tuple(saved.get((table, name), [])), family="ip6"))
    return chains


# ----------------------------------------------------------------------------- nf_tables
# ``read_nft`` fetches the ruleset as JSON; ``nft_chains`` and ``nft_tables`` are the only
# readers of that JSON: everything else (the firewall walker, the faults, the builder's
# bookkeeping) works on the XChain and XRule values they return.

_PROTOCOLS = {"6": "tcp", "17": "udp", "1": "icmp", "132": "sctp"}


def nft_available() -> bool:
    return shutil.which("nft") is not None


def read_nft(ns: Netns) -> dict[str, Any]:
    """The namespace's nf_tables ruleset as ``nft -j list ruleset`` JSON ({} if nft is missing): through
    libnftables in the namespace's thread where its binding is installed (a quarter of the command's cost), else the command."""
    if libnftables.available() is None:
        listed = libnftables.run(ns, [{"list": {"ruleset": None}}], what="list ruleset")
        return listed if isinstance(listed, dict) else {}
    if not nft_available():
        return {}
    proc = ns.run(["nft", "-j", "list", "ruleset"], timeout=20)
    if proc.returncode != 0:
        raise KernelError(f"nft -j list ruleset in netns {ns.name or 'self'}: {proc.stderr.decode(errors='replace').strip()}")
    text = proc.stdout.decode() or "{}"
    return json.loads(text)  # type: ignore[no-any-return]


def _items(ruleset: dict[str, Any], kind: str, families: tuple[str, ...] = ("ip", "inet", "ip6")) -> Iterator[dict[str, Any]]:
    for item in ruleset.get("nftables", []):
        if isinstance(item, dict) and kind in item and item[kind].get("family") in families:
            yield item[kind]


def nft_tables(ruleset: dict[str, Any], family: str = "ip") -> set[str]:
    """The names of the tables of one family in an nft JSON ruleset."""
    return {t["name"] for t in _items(ruleset, "table", (family,))}


def nft_chains(ruleset: dict[str, Any], families: tuple[str, ...] = ("ip", "inet", "ip6")) -> list[XChain]:
    """Chains of the ip, inet and ip6 families of an nft JSON ruleset, with their hooks, priorities and
    policies, rules summarised as XRules: counters and handles, jumps and gotos, ``ct state``,
    anonymous and named sets resolved to their elements. A rule with a verdict map or a DNAT map
    reads as one XRule per element (the element's key as its match, its verdict or destination
    as its target), all with the rule's handle and counter."""
    sets: Sets = {(x["family"], x["table"], x["name"]): list(x.get("elem", [])) for kind in ("set", "map") for x in _items(ruleset, kind, families)}
    rules: dict[tuple[str, str, str], list[XRule]] = {}
    for r in _items(ruleset, "rule", families):
        rules.setdefault((r["family"], r["table"], r["chain"]), []).extend(replace(x, family=6) if r["family"] == "ip6" else x for x in _nft_rules(r, sets))
    out = []
    for c in _items(ruleset, "chain", families):
        hooked = "hook" in c
        out.append(XChain(
            c["table"], c["name"], c.get("policy", "accept").upper() if hooked else None, tuple(rules.get((c["family"], c["table"], c["name"]), [])),
            backend="nft", family=c["family"], hook=str(c["hook"]) if hooked else None, kind=str(c.get("type", "filter")), priority=_prio(c.get("prio", 0)),
        ))
    return out


def read_nft_chains(ns: Netns, ruleset: dict[str, Any] | None = None) -> list[XChain]:
    """The namespace's nf_tables chains as XChains, with every DNAT target's destination.

    iptables-nft (Docker's, CNI's, netavark's and host mode's rules) stores some targets in
    xtables form (an ``xt`` expression), whose arguments ``nft -j`` does not show;
    ``iptables-nft-save`` prints them. Pairing its rules with nft's is exact, not positional:
    each side is read into XRule values per (table, chain), both list a chain's rules in the
    kernel's order, and a chain's two lists are paired only if they have the same length and
    every pair agrees on everything both describe (addresses, interfaces, protocol, port,
    target). A chain that disagrees (a rule changed between the two reads, or rules
    iptables-nft-save cannot print) keeps its destinations unknown rather than borrowing
    another rule's.
    """
    chains = nft_chains(read_nft(ns) if ruleset is None else ruleset)
    if not any((r.target == "DNAT" and r.to_destination is None) or r.target == "CT" for c in chains for r in c.rules):
        return chains
    proc = ns.run(["iptables-nft-save"], timeout=20)  # every table: nat's DNATs, raw's CT --notrack
    if proc.returncode != 0:
        return chains
    saved = parse_save(proc.stdout.decode(errors="replace"))
    return [_with_destinations(c, saved.get((c.table, c.name), [])) if c.family == "ip" else c for c in chains]


def _with_destinations(chain: XChain, saved: Sequence[XRule]) -> XChain:
    if len(saved) != len(chain.rules) or any(_described(a) != _described(b) for a, b in zip(chain.rules, saved, strict=True)):
        return chain
    rules = tuple(replace(r, to_destination=s.to_destination) if r.target == "DNAT" and r.to_destination is None else
                  replace(r, target=s.target) if r.target == "CT" else r for r, s in zip(chain.rules, saved, strict=True))
    return replace(chain, rules=rules)


def _described(r: XRule) -> tuple[str | int | None, ...]:
    """What both an nft summary and an iptables-save line say of a rule (not its target's arguments)."""
    return (_netmask_cidr(r.src), _netmask_cidr(r.dst), r.in_interface, r.out_interface, r.protocol, r.dport, "CT" if r.target == "NOTRACK" else r.target)


def parse_save(text: str, family: int = 4) -> dict[tuple[str, str], list[XRule]]:
    r"""``iptables-save`` output as XRule values per (table, chain), in order; matches it does not
    model (``-m addrtype``, ``-m multiport``...) are left out, as the nft summary leaves them out.

    >>> saved = parse_save("*nat\n-A PREROUTING -d 203.0.113.2/32 ! -i br0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080\n")
    >>> saved[("nat", "PREROUTING")][0].render()
    '-t nat -A PREROUTING -d 203.0.113.2 ! -i br0 -p tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080'
    """
    out: dict[tuple[str, str], list[XRule]] = {}
    table = ""
    flags = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol", "--dport": "dport", "--to-destination": "to_destination",
             "--comment": "comment", "-j": "target"}
    cidr = _netmask_cidr6 if family == 6 else _netmask_cidr
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        counters = (0, 0)
        if line.startswith("[") and "] -A " in line:  # iptables-save -c: "[packets:bytes] -A CHAIN ..."
            head, line = line[1:].split("] ", 1)
            counters = (int(head.split(":")[0]), int(head.split(":")[1]))
        if not line.startswith("-A "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:  # an unbalanced quote in a comment: the words still name the matches
            words = line.split()
        fields: dict[str, Any] = {}
        neg = False
        for flag, value in itertools.pairwise(words[2:]):
            if flag == "!":
                neg = True
                continue
            key = flags.get(flag)
            if key == "dport":
                fields[key] = int(value.split(":")[0]) if value.split(":")[0].isdigit() else None
            elif key is not None and not value.startswith("-"):
                fields[key] = ("!" if neg else "") + value
            neg = False
        if family == 6 and fields.get("protocol") in ("ipv6-icmp", "58"):
            fields["protocol"] = "icmpv6"
        target = fields.pop("target", "")
        if target == "CT" and "--notrack" in words:
            target = "NOTRACK"  # -j CT --notrack (iptables-nft's -j NOTRACK); another CT target stays CT, which the model does not model
        out.setdefault((table, words[1]), []).append(XRule(
            table, words[1], target, src=cidr(fields.pop("src", None)), dst=cidr(fields.pop("dst", None)), packets=counters[0], bytes=counters[1],
            family=6 if family == 6 else None, **fields))
    return out


Sets = dict[tuple[str, str, str], list[Any]]  # (family, table, name) -> a named set's or map's elements
_NO_SET = "no set"


def _elements(right: Any, where: tuple[str, str], sets: Sets) -> list[Any] | None:
    """The values a match's right side stands for: one value, an anonymous set's or a named set's
    elements (``@name``), each unwrapped; None for a set this ruleset does not hold."""
    if isinstance(right, str) and right.startswith("@"):
        held = sets.get((*where, right[1:]))
        if held is None:
            return None
        right = {"set": held}
    items = right["set"] if isinstance(right, dict) and "set" in right else right if isinstance(right, list) else [right]
    return [i["elem"]["val"] if isinstance(i, dict) and "elem" in i else i for i in items]


def _network(value: Any) -> list[str] | None:
    """An address, prefix or range as networks (``10.0.0.0/24``, ``10.0.0.5``); None if it is none of those."""
    try:
        if isinstance(value, dict) and "prefix" in value:
            return [str(ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}", strict=False))]
        if isinstance(value, dict) and "range" in value:
            lo, hi = (IPv4Address(str(v)) for v in value["range"])
            return [str(n) if n.prefixlen < 32 else str(n.network_address) for n in summarize_address_range(lo, hi)]
        if isinstance(value, str):
            return [str(ip_address(value))]
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _port(value: Any) -> tuple[int, int] | None:
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        return (int(lo), int(hi)) if str(lo).isdigit() and str(hi).isdigit() else None
    return (int(value), int(value)) if str(value).isdigit() else None


def _nft_rules(r: dict[str, Any], sets: Sets) -> list[XRule]:
    """One nft JSON rule as XRules (one per element of a verdict or DNAT map, else one)."""
    where = (str(r["family"]), str(r["table"]))
    fields: dict[str, Any] = {}
    unmodelled: list[str] = []
    target = ""
    packets = nbytes = 0
    expand: list[tuple[dict[str, Any], Any]] = []  # (map key expression, [(key, verdict or destination)...])
    if r.get("family") == "inet" and any("match" in e and _ipv6_only(e["match"]) for e in r.get("expr", [])):
        return []  # an IPv6-only rule of an inet table never decides an IPv4 packet (an ip6 table's are read as IPv6 rules)
    for e in r.get("expr", []):
        if "match" in e:
            _nft_match(e["match"], fields, unmodelled, where, sets)
        elif "counter" in e and isinstance(e["counter"], dict):
            packets, nbytes = int(e["counter"].get("packets", 0)), int(e["counter"].get("bytes", 0))
        elif "xt" in e:
            if e["xt"].get("type") == "target":  # an xt *match* (e.g. comment) is not the verdict
                target = str(e["xt"].get("name", "xt"))
            else:
                unmodelled.append(f"xt {e['xt'].get('name', '?')}")
        elif "vmap" in e or ("dnat" in e and isinstance(e["dnat"].get("addr"), dict) and "map" in e["dnat"]["addr"]):
            m = e["vmap"] if "vmap" in e else e["dnat"]["addr"]["map"]
            pairs = _elements(m.get("data"), where, sets)
            if pairs is None:
                unmodelled.append("map")
            else:
                expand.append((m.get("key", {}), [(p[0], p[1] if "vmap" in e else _destination(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2]))
            target = "DNAT" if "dnat" in e else target
        elif "dnat" in e:
            target = "DNAT"
            fields["to_destination"] = _destination(e["dnat"].get("addr"), e["dnat"].get("port"))
        elif "masquerade" in e:
            target = "MASQUERADE"
        elif "snat" in e:
            target = "SNAT"
        elif "jump" in e or "goto" in e:
            target = (e.get("jump") or e.get("goto"))["target"]
        elif "notrack" in e:
            target = "NOTRACK"
        elif "redirect" in e:
            target = "REDIRECT"
        elif "queue" in e:
            target = "QUEUE"
        elif "limit" in e or "quota" in e:
            unmodelled.append(next(iter(e)))  # a rate or quota decides whether the rule goes on
        else:
            verdict = _verdict(e)
            if verdict is not None:
                target = verdict
            elif "log" not in e and "counter" not in e:  # a statement the summary does not know (limit, mangle, notrack...): said, never guessed
                unmodelled.append(f"unknown {next(iter(e), '?')}")
    base = XRule(table=r["table"], chain=r["chain"], target=target, comment=r.get("comment"), packets=packets, bytes=nbytes, handle=r.get("handle"),
                 unmodelled=tuple(unmodelled), **fields)
    if not expand:
        return [base]
    key, pairs = expand[0]
    out = []
    for k, value in pairs:
        more: dict[str, Any] = {}
        left_out: list[str] = []
        _nft_match({"op": "==", "left": key, "right": k}, more, left_out, where, sets)
        if base.target == "DNAT":
            out.append(replace(base, to_destination=value, unmodelled=base.unmodelled + tuple(left_out), **more))
        else:
            out.append(replace(base, target=_verdict(value) or "", unmodelled=base.unmodelled + tuple(left_out), **more))
    return out


def _ipv6_only(m: dict[str, Any]) -> bool:
    """Does this match hold for IPv6 packets only (``meta nfproto ipv6``, ``ip6 saddr ...``, ``meta l4proto icmpv6``)?"""
    left, right, op = m.get("left", {}), m.get("right"), m.get("op", "==")
    if isinstance(left, dict) and "meta" in left and left["meta"].get("key") == "nfproto":
        return bool((right == "ipv6" and op == "==") or (right == "ipv4" and op == "!="))
    if isinstance(left, dict) and "payload" in left and left["payload"].get("protocol") in ("ip6", "icmpv6"):
        return bool(op == "==")
    return bool(isinstance(left, dict) and "meta" in left and left["meta"].get("key") == "l4proto" and right in ("icmpv6", "ipv6-icmp", 58) and op == "==")


def _verdict(e: Any) -> str | None:
    """The verdict of an nft JSON statement: ACCEPT, DROP, REJECT, RETURN, or the chain a jump or goto names."""
    if not isinstance(e, dict):
        return None
    jump = e.get("jump") or e.get("goto")
    if isinstance(jump, dict):
        return str(jump["target"])
    return next((verdict.upper() for verdict in ("accept", "drop", "reject", "return") if verdict in e), None)


def _destination(addr: Any, port: Any = None) -> str:
    """A DNAT's destination as iptables writes it: ``172.17.0.2:80`` (a map's ``addr . port`` too)."""
    if isinstance(addr, dict) and "concat" in addr:
        addr, port = addr["concat"][0], addr["concat"][1] if len(addr["concat"]) > 1 else None
    if port and ":" in str(addr):
        return f"[{addr}]:{port}"  # IPv6, as ip6tables writes it
    return f"{addr}:{port}" if port else str(addr)


def _nft_match(m: dict[str, Any], fields: dict[str, Any], unmodelled: list[str], where: tuple[str, str] = ("ip", ""), sets: Sets | None = None) -> None:
    left, right, op = m.get("left", {}), m.get("right"), m.get("op", "==")
    neg = "!" if op == "!=" else ""
    values = _elements(right, where, sets or {})
    if "&" in left:  # e.g. meta mark & 0x2000 == 0x2000
        inner = next((x for x in left["&"] if isinstance(x, dict)), {})
        unmodelled.append(str(inner.get("meta", {}).get("key") or next(iter(inner), "&")))
        return
    if values is None:
        unmodelled.append(f"{_left_name(left)} in {right} (a set this ruleset does not hold)")
        return
    if "concat" in left:  # e.g. ip daddr . tcp dport, a DNAT map's key: each part against its part of the value
        parts = values[0].get("concat") if len(values) == 1 and isinstance(values[0], dict) else None
        if not isinstance(parts, list) or len(parts) != len(left["concat"]) or neg:
            unmodelled.append("concat")
            return
        for part, value in zip(left["concat"], parts, strict=True):
            _nft_match({"op": op, "left": part, "right": value}, fields, unmodelled, where, sets)
        return
    many = len(values) > 1 or (isinstance(right, dict) and "set" in right) or (isinstance(right, (list, str)) and str(right).startswith("@"))
    if "ct" in left and left["ct"].get("key") == "state" and not neg:
        fields["ct_state"] = tuple(str(v) for v in values)
    elif "payload" in left and left["payload"].get("field") in ("saddr", "daddr"):
        fld = left["payload"]["field"]
        nets = [n for v in values for n in (_network(v) or [])]
        if not nets or (many and neg):
            unmodelled.append(f"{fld} {op} set")
        elif many or len(nets) > 1:
            fields["src_set" if fld == "saddr" else "dst_set"] = tuple(nets)
        else:
            fields["src" if fld == "saddr" else "dst"] = neg + nets[0]
    elif "payload" in left and left["payload"].get("field") == "dport" and not neg:
        ports = [p for p in (_port(v) for v in values) if p is not None]
        if len(ports) != len(values):
            unmodelled.append("dport")
            return
        fields["protocol"] = left["payload"].get("protocol")
        if len(ports) == 1 and ports[0][0] == ports[0][1]:
            fields["dport"] = ports[0][0]
        else:
            fields["dports"] = tuple(ports)
    elif "meta" in left and left["meta"].get("key") in ("iifname", "oifname") and not (many and neg):
        names = [str(v)[:-1] + "+" if str(v).endswith("*") else str(v) for v in values]  # a wildcard is docker* in nft, docker+ in iptables (and in an XRule)
        inbound = left["meta"]["key"] == "iifname"
        if len(names) == 1:
            fields["in_interface" if inbound else "out_interface"] = neg + names[0]
        else:
            fields["in_set" if inbound else "out_set"] = tuple(names)
    elif (("meta" in left and left["meta"].get("key") == "l4proto") or ("payload" in left and left["payload"].get("field") == "protocol")) and len(values) == 1 and not neg:
        fields.setdefault("protocol", _PROTOCOLS.get(str(values[0]), str(values[0])))
    else:
        unmodelled.append(_left_name(left))


def _left_name(left: dict[str, Any]) -> str:
    """What a match looks at, in a word (``mark``, ``sport``, ``fib``...)."""
    for kind in ("meta", "ct"):
        if kind in left:
            return str(left[kind].get("key") or kind)
    if "payload" in left:
        return str(left["payload"].get("field") or "payload")
    return str(next(iter(left), "?"))


def _prio(value: Any) -> int:
    if isinstance(value, int):
        return value
    named = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
    return named.get(str(value), 0)


__all__ = [
    "XChain", "XRule", "apply_rules", "choose_backend", "delete_rules", "nft_chains", "nft_tables", "parse_save", "read_legacy", "read_nft", "read_nft_chains", "set_policy",
]
