"""The one nft reader (xtables.nft_chains) against a corpus of rule sets, round trip.

Each rule set is loaded in a throwaway network namespace (``unshare --net``) and read back with
``nft -j list ruleset``. Every rule the reader models fully (nothing in ``unmodelled``) is written
again by netcheck's own nft writer (netcheck.kernel.nft) into a second throwaway namespace and read
back: it must read into the same values. A statement or match the reader does not model is listed in
``unmodelled`` ("limit", "fib", "mark"...), never dropped. One namespace per step; about 3 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from netcheck import spec
from netcheck.activation import skip_for_missing_tool
from netcheck.kernel import nft
from netcheck.kernel.xtables import XChain, XRule, nft_chains
from netcheck.lab.plan import plan
from netcheck.naming import KernelNames

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[1]
NFT = REPO / "examples" / "nft"

# Sets, maps, verdict maps, concatenations, ct state, jumps, gotos, priorities across tables, and statements and
# matches the reader does not model (each must be said in ``unmodelled``).
CRAFTED = """
table inet corpus {
    set allowed { type ipv4_addr; flags interval; elements = { 10.0.0.0/24, 10.1.0.5, 10.2.0.1-10.2.0.3 } }
    map ports { type inet_service : verdict; elements = { 22 : jump SSH, 80 : accept } }
    map dnat4 { type ipv4_addr . inet_service : ipv4_addr . inet_service; elements = { 203.0.113.2 . 8080 : 172.17.0.2 . 80 } }
    chain FWD { type filter hook forward priority -5; policy drop;
        ct state established,related accept
        ct state invalid drop
        ip saddr @allowed iifname { "br0", "veth*" } accept
        tcp dport vmap @ports
        tcp dport { 443, 1000-2000 } counter drop
        ip daddr != 10.9.0.0/16 oifname "eth0" goto TAIL
        meta mark 0x2000 accept
        limit rate 10/second accept
        tcp sport 53 drop
        fib daddr type local drop
        meta nftrace set 1
        log prefix "corpus " drop
    }
    chain TAIL { ip protocol icmp return; counter accept; }
    chain SSH { ip saddr 10.0.0.7 accept; reject; }
}
table ip corpus_nat {
    map dnat4 { type ipv4_addr . inet_service : ipv4_addr . inet_service; elements = { 203.0.113.2 . 8080 : 172.17.0.2 . 80, 203.0.113.2 . 9090 : 172.17.0.3 . 90 } }
    chain PRE { type nat hook prerouting priority dstnat; policy accept;
        dnat ip addr . port to ip daddr . tcp dport map @dnat4
        ip daddr 203.0.113.3 dnat to 172.17.0.9
        meta mark set 0x1 accept
    }
    chain POST { type nat hook postrouting priority srcnat + 10; policy accept;
        ip saddr 172.17.0.0/16 oifname != "docker0" masquerade
        ip saddr 10.88.0.0/16 snat to 203.0.113.2
    }
}
"""

# What the reader must say it does not model, per crafted chain.
UNMODELLED = {
    ("corpus", "FWD"): {"mark", "limit", "sport", "fib", "unknown mangle"},
    ("corpus_nat", "PRE"): {"unknown mangle"},
}

LOAD = r"""
import json, subprocess, sys
out = {}
for name, kind, payload in json.load(sys.stdin):
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    argv = {"nft": ["nft", "-f", "-"], "json": ["nft", "-j", "-f", "-"], "iptables": ["iptables-nft-restore"]}[kind]
    done = subprocess.run(argv, input=payload, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: {' '.join(argv)}: {done.stderr}")
    out[name] = json.loads(subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True).stdout)
print(json.dumps(out))
"""


def load(items: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Load each (name, kind, text) in a throwaway namespace of its own (flushed between) and list it as nft JSON."""
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", LOAD], input=json.dumps(items), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def labs_own() -> str:
    """The nft JSON that netcheck writes for seed1-nft and seed2-nft (their MASQUERADE, DNAT, VIP and FORWARD rules)."""
    commands: list[dict[str, Any]] = []
    for i, name in enumerate(("seed1-nft", "seed2-nft")):
        p = plan(spec.builtin(name), KernelNames(f"ncrt{i}a"))
        commands += nft.ruleset(f"lab{i}", p.rules, [("filter", "FORWARD", spec.builtin(name).host.forward_policy)])[1]
    return json.dumps({"nftables": commands})


def corpus() -> list[tuple[str, str, str]]:
    return [
        ("docker29", "nft", (NFT / "docker29.nft").read_text()),
        ("netavark", "nft", (NFT / "netavark.nft").read_text()),
        ("firewalld", "nft", (NFT / "firewalld.nft").read_text()),
        ("ufw", "iptables", (NFT / "ufw.rules").read_text()),
        ("labs-own", "json", labs_own()),
        ("crafted", "nft", CRAFTED),
    ]


def shown(r: XRule) -> dict[str, object]:
    """What a rule says, without where it is and its bookkeeping."""
    return {k: v for k, v in r.key().__dict__.items() if v not in (None, ()) and k not in ("table", "chain", "packets", "bytes")}


WRITABLE = ("ACCEPT", "DROP", "RETURN", "MASQUERADE", "DNAT")  # the targets netcheck's nft writer renders (and jumps)


def rewrite(chains: list[XChain]) -> tuple[list[XRule], list[XRule], int]:
    """The fully modelled rules, placed in netcheck's tables by what they do; the placeholder rules of the
    chains they jump to; how many rules were left out because netcheck's writer cannot write their target."""
    user = {c.name for c in chains if c.hook is None}
    placed: list[XRule] = []
    skipped = 0
    for c in chains:
        for r in c.rules:
            if r.unmodelled:
                continue
            if (r.target not in WRITABLE and r.target not in user) or (r.target == "DNAT" and r.to_destination is None):
                # REJECT, SNAT, no verdict, or an iptables-nft DNAT whose destination only iptables-nft-save prints
                # (read_nft_chains pairs it): the reader read them; the writer has no form for them
                skipped += 1
                continue
            table, chain = ("nat", "PREROUTING") if r.target == "DNAT" else ("nat", "POSTROUTING") if r.target == "MASQUERADE" else ("filter", "FORWARD")
            placed.append(replace(r, table=table, chain=chain))
    jumps = sorted({(r.table, r.target) for r in placed if r.target in user})
    return placed, [XRule(t, name, "RETURN") for t, name in jumps], skipped


def test_every_rule_set_of_the_corpus_reads_into_the_values_netcheck_writes_back() -> None:
    why = nft.available()
    if why:
        skip_for_missing_tool(why)
    listed = load(corpus())
    rewritten: list[tuple[str, str, str]] = []
    expected: dict[str, list[XRule]] = {}
    for name, ruleset in listed.items():
        chains = nft_chains(ruleset)
        rules = [r for c in chains for r in c.rules]
        assert rules, f"{name}: the reader read no rule"
        placed, placeholders, skipped = rewrite(chains)
        modelled = [r for r in rules if not r.unmodelled]
        assert len(placed) + skipped == len(modelled), name
        assert len(placed) >= len(rules) // 2, f"{name}: only {len(placed)} of {len(rules)} rules could be written back"
        expected[name] = placed + placeholders
        rewritten.append((name, "json", json.dumps({"nftables": nft.ruleset("rt", placed + placeholders)[1]})))
    back = load(rewritten)
    for name, want in expected.items():
        got = [r for c in nft_chains(back[name]) for r in c.rules]
        assert sorted(map(repr, map(shown, got))) == sorted(map(repr, map(shown, want))), f"{name}: read back differently:\n{got}\nwanted\n{want}"


def test_what_the_reader_does_not_model_is_said_never_guessed() -> None:
    why = nft.available()
    if why:
        skip_for_missing_tool(why)
    listed = load([("crafted", "nft", CRAFTED)])["crafted"]
    chains = {(c.table, c.name): c for c in nft_chains(listed)}
    for where, names in UNMODELLED.items():
        said = {u for r in chains[where].rules for u in r.unmodelled}
        assert names <= said, f"{where}: the reader did not say it leaves {sorted(names - said)} unmodelled (it said {sorted(said)})"
    fwd = chains[("corpus", "FWD")]
    assert (fwd.family, fwd.hook, fwd.priority, fwd.policy) == ("inet", "forward", -5, "DROP")
    assert chains[("corpus_nat", "POST")].priority == 110  # srcnat + 10
    limited = next(r for r in fwd.rules if "limit" in r.unmodelled)
    assert limited.target == "ACCEPT"  # the verdict is read; the limit that gates it is said, not taken as "always"
    # No statement of any rule is dropped silently: each is read, or said in unmodelled.
    known = {"match", "counter", "accept", "drop", "reject", "return", "jump", "goto", "dnat", "snat", "masquerade", "vmap", "xt", "log"}
    for item in listed["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        kinds = {k for e in rule["expr"] for k in e} - known
        read = [r for c in nft_chains({"nftables": [i for i in listed["nftables"] if "rule" not in i] + [item]}) for r in c.rules]
        said = {u for r in read for u in r.unmodelled}
        assert all(f"unknown {k}" in said or k in said for k in kinds), (rule, said)  # said by its name (the model knows it) or as "unknown KIND"
    pre = chains[("corpus_nat", "PRE")]
    assert sorted(map(repr, map(shown, pre.rules[:3]))) == sorted(map(repr, [
        {"target": "DNAT", "dst": "203.0.113.2", "protocol": "tcp", "dport": 8080, "to_destination": "172.17.0.2:80"},
        {"target": "DNAT", "dst": "203.0.113.2", "protocol": "tcp", "dport": 9090, "to_destination": "172.17.0.3:90"},
        {"target": "DNAT", "dst": "203.0.113.3", "to_destination": "172.17.0.9"},
    ]))  # a map keyed by a concatenation (ip daddr . tcp dport): one rule per element
