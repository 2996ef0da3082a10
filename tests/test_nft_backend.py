"""Native nftables rules: the lab's XRule values rendered as nft JSON, written through libnftables."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from netcheck.activation import skip_for_missing_tool
from netcheck.kernel import nft
from netcheck.kernel.xtables import XRule

SEED_RULES = [
    XRule("nat", "POSTROUTING", "MASQUERADE", src="172.18.0.0/16", out_interface="!br0", comment="netcheck t1"),
    XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", protocol="tcp", dport=5000, to_destination="172.18.0.10:5000"),
    XRule("nat", "PREROUTING", "VIP-EXAMPLE"),
    XRule("nat", "VIP-EXAMPLE", "DNAT", dst="10.100.100.100", protocol="tcp", dport=8080, to_destination="10.0.0.11:80"),
    XRule("filter", "FORWARD", "ACCEPT", in_interface="br0", out_interface="eth0"),
    XRule("filter", "FORWARD", "DROP", protocol="udp"),
]


def test_rules_render_as_native_nft_json() -> None:
    tables, commands = nft.ruleset("nct1", SEED_RULES, [("filter", "FORWARD", "DROP")])
    assert [(t.family, t.name) for t in tables] == [("ip", "nct1_filter"), ("ip", "nct1_nat")]
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in commands if "chain" in c.get("add", {})}
    assert chains["FORWARD"] | {} == {"family": "ip", "table": "nct1_filter", "name": "FORWARD", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}
    assert chains["PREROUTING"]["hook"] == "prerouting" and chains["PREROUTING"]["prio"] == -100
    assert "hook" not in chains["VIP-EXAMPLE"], "a user chain is a regular chain"
    assert "OUTPUT" not in chains, "only chains that hold a rule or a policy"
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    masq = rules[next(i for i, r in enumerate(rules) if r["chain"] == "POSTROUTING")]
    assert masq["expr"] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "172.18.0.0", "len": 16}}}},
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br0"}},
        {"counter": None},
        {"masquerade": None},
    ] and masq["comment"] == "netcheck t1"
    jump = next(r for r in rules if r["chain"] == "PREROUTING" and {"jump": {"target": "VIP-EXAMPLE"}} in r["expr"])
    assert jump["expr"] == [{"counter": None}, {"jump": {"target": "VIP-EXAMPLE"}}]
    dnat = next(r for r in rules if r["chain"] == "VIP-EXAMPLE")
    assert dnat["expr"][-1] == {"dnat": {"addr": "10.0.0.11", "port": 80}} and dnat["expr"][0]["match"]["right"] == "10.100.100.100"
    udp = next(r for r in rules if r["chain"] == "FORWARD" and {"drop": None} in r["expr"])
    assert udp["expr"] == [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"counter": None}, {"drop": None}]


def test_a_target_nft_cannot_render_is_an_error_naming_the_rule() -> None:
    with pytest.raises(nft.KernelError, match="cannot render target LOG of: -t filter -A FORWARD -j LOG"):
        nft.ruleset("nct1", [XRule("filter", "FORWARD", "LOG")])


WRITE_AND_READ = textwrap.dedent("""
    import json, subprocess, sys
    from netcheck.kernel.netns import Netns
    from netcheck.kernel import nft
    sys.path.insert(0, "tests")
    from test_nft_backend import SEED_RULES
    ns = Netns.current("host")
    try:
        tables = nft.apply(ns, "nct1", SEED_RULES, [("filter", "FORWARD", "DROP")])
        listed = json.loads(subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True).stdout)
        gone = [nft.delete_table(ns, t) for t in tables]
        again = [nft.delete_table(ns, t) for t in tables]
        left = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
        print(json.dumps({"listed": listed, "gone": gone, "again": again, "left": left}))
    finally:
        ns.close()
""")


@pytest.mark.root
def test_the_rules_are_written_natively_and_removed(repo) -> None:
    """In a throwaway namespace: what nft lists back is what was rendered, and deleting the tables leaves nothing."""
    why = nft.available()
    if why:
        skip_for_missing_tool(why)
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", WRITE_AND_READ], capture_output=True, text=True, timeout=60, cwd=repo, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    listed = [i["rule"] for i in out["listed"]["nftables"] if "rule" in i]
    _, commands = nft.ruleset("nct1", SEED_RULES, [("filter", "FORWARD", "DROP")])
    rendered = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    assert len(listed) == len(rendered)
    for want in rendered:
        got = next(r for r in listed if r["chain"] == want["chain"] and r.get("comment") == want.get("comment") and r["expr"][-1].keys() == want["expr"][-1].keys()
                   and [e for e in r["expr"] if "counter" not in e] == [e for e in want["expr"] if "counter" not in e])
        assert got["table"] == want["table"] and got["family"] == "ip"
    chains = {i["chain"]["name"]: i["chain"] for i in out["listed"]["nftables"] if "chain" in i}
    assert chains["FORWARD"]["policy"] == "drop" and chains["FORWARD"]["hook"] == "forward"
    assert out["gone"] == [True, True] and out["again"] == [False, False] and out["left"].strip() == ""
