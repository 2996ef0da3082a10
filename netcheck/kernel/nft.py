"""Native nftables rules through libnftables' JSON API (Debian's ``python3-nftables``).

A lab built with ``firewall = "nft"`` gets tables of its own, one per iptables table it would have
used (``ip <prefix>_nat``, ``ip <prefix>_filter``), with base chains named and hooked like
iptables' (``PREROUTING``, ``FORWARD``, ...) and user chains (a VIP chain) beside them. The same
``XRule`` values the iptables path builds are rendered here as nft JSON expressions: one spec,
two backends. Every rule carries a counter (the diagnosis reads counter deltas) and the lab's comment.

Commands run through ``libnftables.run`` (in the namespace's own worker thread); its loading of the
binding, ``available`` and ``run`` are re-exported here for the callers that use them by this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_interface
from typing import Any

from netcheck.kernel.libnftables import DEBIAN_MODULE as DEBIAN_MODULE
from netcheck.kernel.libnftables import INSTALL_HINT as INSTALL_HINT
from netcheck.kernel.libnftables import NftUnavailable as NftUnavailable
from netcheck.kernel.libnftables import available as available
from netcheck.kernel.libnftables import run as run
from netcheck.kernel.netns import KernelError, Netns
from netcheck.kernel.xtables import BUILTIN_CHAINS, XRule

FAMILY = "ip"
FAMILY6 = "ip6"  # a dual-stack lab's IPv6 rules: tables of the same names in family ip6
VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return", "MASQUERADE": "masquerade"}
# Hook and priority of each iptables base chain, as iptables-nft registers them.
HOOKS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("nat", "PREROUTING"): ("nat", "prerouting", -100),
    ("nat", "INPUT"): ("nat", "input", 100),
    ("nat", "OUTPUT"): ("nat", "output", -100),
    ("nat", "POSTROUTING"): ("nat", "postrouting", 100),
    ("filter", "INPUT"): ("filter", "input", 0),
    ("filter", "FORWARD"): ("filter", "forward", 0),
    ("filter", "OUTPUT"): ("filter", "output", 0),
}


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str

    def ref(self) -> dict[str, str]:
        return {"family": self.family, "name": self.name}


def tables_for(prefix: str, family: str = FAMILY) -> dict[str, NftTable]:
    """The lab's own tables (of family ip, or ip6 for IPv6 rules), by the iptables table they stand for."""
    return {t: NftTable(family, f"{prefix}_{t}") for t in BUILTIN_CHAINS}


def family_of(rule: XRule) -> str:
    """The nft family a rule's table is of: ip6 for an IPv6 (ip6tables) rule, else ip."""
    return FAMILY6 if rule.family == 6 else FAMILY


def split_destination(to: str) -> tuple[str, int | None]:
    """A DNAT destination as (address, port): ``10.0.0.2:80``, ``[fd00::2]:80``, ``fd00::2``.

    >>> split_destination("[fd00:18::10]:5000"), split_destination("10.0.0.2")
    (('fd00:18::10', 5000), ('10.0.0.2', None))
    """
    if to.startswith("["):
        addr, _, rest = to[1:].partition("]")
        return addr, int(rest[1:]) if rest[1:].isdigit() else None
    if to.count(":") > 1:
        return to, None
    addr, _, port = to.partition(":")
    return addr, int(port) if port.isdigit() else None


def native(prefix: str, rule: XRule) -> XRule:
    """``rule`` (in an iptables table) as it reads back from the lab's own nft table."""
    return replace(rule, table=tables_for(prefix)[rule.table].name)


def _addr(value: str) -> Any:
    """An address or prefix as nft JSON (``10.0.0.0/24`` becomes a prefix)."""
    iface = ip_interface(value)
    if iface.network.prefixlen == iface.max_prefixlen:
        return str(iface.ip)
    return {"prefix": {"addr": str(iface.network.network_address), "len": iface.network.prefixlen}}


def _match(left: dict[str, Any], value: str, right: Any = None) -> dict[str, Any]:
    negated = value.startswith("!")
    raw = value[1:] if negated else value
    return {"match": {"op": "!=" if negated else "==", "left": left, "right": raw if right is None else right(raw)}}


def expressions(rule: XRule, chains: set[str]) -> list[dict[str, Any]]:
    """An XRule as the nft JSON expressions of one rule (matches, a counter, the verdict or NAT)."""
    out: list[dict[str, Any]] = []
    ip = family_of(rule)
    if rule.src:
        out.append(_match({"payload": {"protocol": ip, "field": "saddr"}}, rule.src, _addr))
    if rule.dst:
        out.append(_match({"payload": {"protocol": ip, "field": "daddr"}}, rule.dst, _addr))
    if rule.in_interface:
        out.append(_match({"meta": {"key": "iifname"}}, rule.in_interface))
    if rule.out_interface:
        out.append(_match({"meta": {"key": "oifname"}}, rule.out_interface))
    for field, values in (("saddr", rule.src_set), ("daddr", rule.dst_set)):
        if values:
            out.append({"match": {"op": "==", "left": {"payload": {"protocol": ip, "field": field}}, "right": {"set": [_addr(v) for v in values]}}})
    for key, names in (("iifname", rule.in_set), ("oifname", rule.out_set)):
        if names:
            out.append({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": {"set": [n[:-1] + "*" if n.endswith("+") else n for n in names]}}})
    if rule.ct_state:
        out.append({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": list(rule.ct_state)}})
    if rule.protocol and rule.dport is not None:
        out.append({"match": {"op": "==", "left": {"payload": {"protocol": rule.protocol, "field": "dport"}}, "right": rule.dport}})
    elif rule.protocol and rule.dports:
        ports = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in rule.dports]
        out.append({"match": {"op": "==", "left": {"payload": {"protocol": rule.protocol, "field": "dport"}}, "right": {"set": ports}}})
    elif rule.protocol:
        out.append({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": rule.protocol}})
    out.append({"counter": None})
    target = rule.target
    if target in VERDICTS:
        out.append({VERDICTS[target]: None})
    elif target == "DNAT":
        if not rule.to_destination:
            raise KernelError(f"DNAT rule without a destination: {rule.render()}")
        addr, port = split_destination(rule.to_destination)
        out.append({"dnat": {"addr": addr, **({"port": port} if port else {})}})
    elif target in chains:
        out.append({"jump": {"target": target}})
    else:
        raise KernelError(f"the nft backend cannot render target {target} of: {rule.render()}")
    return out


def _text_match(keyword: str, value: str, quote: bool = False) -> str:
    neg = value.startswith("!")
    raw = value[1:] if neg else value
    if quote:
        raw = f'"{raw[:-1]}*"' if raw.endswith("+") else f'"{raw}"'
    return f"{keyword} {'!= ' if neg else ''}{raw}"


def text(rule: XRule) -> str:
    """An XRule as nft rule text (what ``nft list`` prints), for messages and fixes.

    >>> text(XRule("nat", "POSTROUTING", "MASQUERADE", src="172.18.0.0/16", out_interface="!br0"))
    'ip saddr 172.18.0.0/16 oifname != "br0" counter masquerade'
    >>> text(XRule("filter", "FORWARD", "DROP", protocol="tcp", dports=((80, 80), (1000, 2000)), in_set=("br0", "veth+")))
    'iifname { "br0", "veth*" } tcp dport { 80, 1000-2000 } counter drop'
    """
    words = []
    ip = family_of(rule)
    for keyword, value, quote in ((f"{ip} saddr", rule.src, False), (f"{ip} daddr", rule.dst, False), ("iifname", rule.in_interface, True), ("oifname", rule.out_interface, True)):
        if value:
            words.append(_text_match(keyword, value, quote))
    for keyword, values, quote in ((f"{ip} saddr", rule.src_set, False), (f"{ip} daddr", rule.dst_set, False), ("iifname", rule.in_set, True), ("oifname", rule.out_set, True)):
        if values:
            words.append(f"{keyword} {{ {', '.join(_text_match('', v, quote).strip() for v in values)} }}")
    if rule.ct_state:
        words.append(f"ct state {{ {', '.join(rule.ct_state)} }}")
    if rule.protocol and rule.dport is not None:
        words.append(f"{rule.protocol} dport {rule.dport}")
    elif rule.protocol and rule.dports:
        words.append(f"{rule.protocol} dport {{ {', '.join(str(lo) if lo == hi else f'{lo}-{hi}' for lo, hi in rule.dports)} }}")
    elif rule.protocol:
        words.append(f"meta l4proto {rule.protocol}")
    words.append("counter")
    if rule.target in VERDICTS:
        words.append(VERDICTS[rule.target])
    elif rule.target == "DNAT":
        words.append(f"dnat to {rule.to_destination}")
    elif rule.target:
        words.append(f"jump {rule.target}")
    if rule.comment:
        words.append(f'comment "{rule.comment}"')
    return " ".join(words)


def command(rule: XRule, op: str = "-A", family: str = FAMILY) -> str:
    """The nft command that adds (-A), inserts (-I) or deletes (-D, by handle) a rule of a native table, one shell word after ``nft``.

    >>> command(XRule("nc1_filter", "FORWARD", "DROP", in_interface="nc1b0", handle=4), "-D")
    'nft delete rule ip nc1_filter FORWARD handle 4'
    """
    where = f"{family} {rule.table} {rule.chain}"
    if op == "-D":
        if rule.handle is None:
            return f"nft -a list chain {where}  (then: nft delete rule {where} handle N, N the handle of: {text(rule)})"
        return f"nft delete rule {where} handle {rule.handle}"
    verb = "insert" if op == "-I" else "add"
    return f"nft '{verb} rule {where} {text(rule)}'"


XTABLES = ("filter", "nat", "mangle", "raw", "security")  # iptables' tables (in nf_tables: iptables-nft's)


LEGACY6 = "legacy6"  # the backend label of ip6tables' legacy tables
NFT6 = "nft6"  # ... and of nf_tables' ip6 family


def binary(backend: str, family: int | None = None) -> str:
    tool = "ip6tables" if family == 6 or backend in (LEGACY6, NFT6) else "iptables"
    return f"{tool}-legacy" if backend in ("legacy", LEGACY6) else f"{tool}-nft"


def is_native(backend: str, table: str) -> bool:
    """Is ``table`` a native nf_tables table (a tool's own, such as a firewall = "nft" lab's), not one of iptables'?"""
    return backend in ("nft", NFT6) and table not in XTABLES


def rule_command(backend: str, rule: XRule, op: str = "-A", family: str = FAMILY) -> str:
    """The command that adds (op -A), inserts (-I) or deletes (-D) ``rule`` where it lives: iptables-legacy,
    iptables-nft (both with ``XRule.argv``), or nft for a native table (``command``).

    >>> rule_command("legacy", XRule("filter", "FORWARD", "DROP", in_interface="br0"), "-D")
    'iptables-legacy -t filter -D FORWARD -i br0 -j DROP'
    """
    if is_native(backend, rule.table):
        return command(rule, op, family)
    return f"{binary(backend, rule.family)} {rule.render(op)}"


def ruleset(prefix: str, rules: Sequence[XRule], policies: Sequence[tuple[str, str, str]] = ()) -> tuple[list[NftTable], list[dict[str, Any]]]:
    """The tables and the nft JSON commands that lay down ``rules`` (and base chain policies) natively."""
    wanted_policy = {(t, c): p.lower() for t, c, p in policies}
    commands: list[dict[str, Any]] = []
    made: list[NftTable] = []
    # IPv4's tables, then (a dual-stack lab) IPv6's: the same tables and chains in family ip6, holding the IPv6 rules;
    # a base chain's policy holds for both families.
    for family in (FAMILY, FAMILY6) if any(r.family == 6 for r in rules) else (FAMILY,):
        mine = [r for r in rules if family_of(r) == family]
        made += _family_ruleset(tables_for(prefix, family), mine, policies, wanted_policy, commands)
    return made, commands


def _family_ruleset(tables: dict[str, NftTable], rules: Sequence[XRule], policies: Sequence[tuple[str, str, str]], wanted_policy: dict[tuple[str, str], str],
                    commands: list[dict[str, Any]]) -> list[NftTable]:
    used = [t for t in BUILTIN_CHAINS if any(r.table == t for r in rules) or any(p[0] == t for p in policies)]
    for t in used:
        table = tables[t]
        commands.append({"add": {"table": table.ref()}})
        # The base chains that hold a rule or a policy, and the user chains (a VIP chain).
        chains = {r.chain for r in rules if r.table == t} | {c for (pt, c) in wanted_policy if pt == t}
        for chain in sorted(chains, key=lambda c: (c not in BUILTIN_CHAINS[t], c)):
            base = HOOKS.get((t, chain))
            body: dict[str, Any] = {"family": table.family, "table": table.name, "name": chain}
            if base is not None:
                kind, hook, prio = base
                body |= {"type": kind, "hook": hook, "prio": prio, "policy": wanted_policy.get((t, chain), "accept")}
            commands.append({"add": {"chain": body}})
        user_chains = chains - set(BUILTIN_CHAINS[t])
        for r in rules:
            if r.table != t:
                continue
            rule: dict[str, Any] = {"family": table.family, "table": table.name, "chain": r.chain, "expr": expressions(r, user_chains)}
            if r.comment:
                rule["comment"] = r.comment
            commands.append({"add": {"rule": rule}})
    return [tables[t] for t in used]


def apply(ns: Netns, prefix: str, rules: Sequence[XRule], policies: Sequence[tuple[str, str, str]] = (),
          *, before: Callable[[list[NftTable]], None] | None = None) -> list[NftTable]:
    """Write the rules as the lab's own nft tables in one transaction; returns the tables made.
    ``before(tables)`` runs first (to record them in a ledger before they exist)."""
    tables, commands = ruleset(prefix, rules, policies)
    if before is not None:
        before(tables)
    if commands:
        run(ns, commands, what=f"adding {len(rules)} rules in tables {', '.join(t.name for t in tables)}")
    return tables


def table_of(prefix: str, name: str, family: str = FAMILY) -> tuple[str, NftTable]:
    """(iptables table, the lab's nft table) of a rule's table, named either way (``nat`` or ``<prefix>_nat``)."""
    for role, table in tables_for(prefix, family).items():
        if name in (role, table.name):
            return role, table
    raise KernelError(f"{name} is neither an iptables table nor one of the lab's nft tables ({prefix}_nat, {prefix}_filter)")


def _chain_body(table: NftTable, role: str, chain: str, policy: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"family": table.family, "table": table.name, "name": chain}
    base = HOOKS.get((role, chain))
    if base is not None:
        kind, hook, prio = base
        body |= {"type": kind, "hook": hook, "prio": prio} | ({"policy": policy.lower()} if policy else {})
    return body


def add_rules(ns: Netns, prefix: str, rules: Sequence[XRule], *, insert: bool = False, before: Callable[[list[NftTable]], None] | None = None) -> list[NftTable]:
    """Add (or insert, at the top of their chains) rules to the lab's own tables, making a table or
    chain they need (an existing one is left as it is); returns the tables they went to."""
    commands: list[dict[str, Any]] = []
    used: list[NftTable] = []
    for r in rules:
        role, table = table_of(prefix, r.table, family_of(r))
        if table not in used:
            used.append(table)
            commands.append({"add": {"table": table.ref()}})
        user = {c for c in (r.chain, r.target) if c not in BUILTIN_CHAINS[role] and c not in VERDICTS and c != "DNAT"}
        for chain in (r.chain, *sorted(user - {r.chain})):
            commands.append({"add": {"chain": _chain_body(table, role, chain)}})
        body: dict[str, Any] = {"family": table.family, "table": table.name, "chain": r.chain, "expr": expressions(r, user)}
        if r.comment:
            body["comment"] = r.comment
        commands.append({"insert" if insert else "add": {"rule": body}})
    if before is not None:
        before(used)
    if commands:
        run(ns, commands, what=f"adding {len(rules)} rules")
    return used


def delete_rule(ns: Netns, family: str, table: str, chain: str, handle: int) -> None:
    """Delete one rule by its handle (``nft delete rule FAMILY TABLE CHAIN handle N``)."""
    run(ns, [{"delete": {"rule": {"family": family, "table": table, "chain": chain, "handle": handle}}}], what=f"deleting rule {handle} of {family} {table} {chain}")


def set_policy(ns: Netns, prefix: str, role: str, chain: str, policy: str, *, before: Callable[[list[NftTable]], None] | None = None) -> NftTable:
    """Set the policy of one of the lab's base chains (made, with its table, if missing)."""
    _, table = table_of(prefix, role)
    if before is not None:
        before([table])
    run(ns, [{"add": {"table": table.ref()}}, {"add": {"chain": _chain_body(table, role, chain, policy)}}], what=f"setting the {chain} policy to {policy}")
    return table


def table_names(ns: Netns) -> set[tuple[str, str]]:
    """(family, name) of every nft table in ``ns``."""
    listed = run(ns, [{"list": {"tables": None}}], what="listing tables") or {}
    return {(i["table"]["family"], i["table"]["name"]) for i in listed.get("nftables", []) if "table" in i}


def delete_table(ns: Netns, table: NftTable) -> bool:
    """Remove one of the lab's tables (and everything in it); False if it was already gone.

    libnftables reports errors as text only, so "already gone" is read from the table list, not
    matched in a message.
    """
    if (table.family, table.name) not in table_names(ns):
        return False
    run(ns, [{"delete": {"table": table.ref()}}], what=f"deleting table {table.family} {table.name}")
    return True
