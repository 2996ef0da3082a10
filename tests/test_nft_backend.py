"""Native nftables rules: the lab's XRule values rendered as nft JSON, written through libnftables."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

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


def diagnosing_prober(lab: Any) -> Any:
    """A prober whose failed probes carry their diagnosis (DiagnosingProber once the probes
    package has it; before, Prober diagnosed by default)."""
    try:
        from netcheck.diagnosing import DiagnosingProber  # type: ignore[import-not-found]
    except ImportError:
        from netcheck.probes import Prober

        return Prober(lab)
    return DiagnosingProber(lab)


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


@pytest.mark.root
def test_an_nft_lab_never_creates_a_legacy_table() -> None:
    """seed1-nft built, probed, broken (its FORWARD policy set natively), diagnosed (rules read back,
    counters compared) and inspected by the doctor: no namespace of the lab holds an ip_tables
    table, read from each namespace's own thread and by iptables-legacy-save there. The control:
    the same reads find seed1's legacy nat table."""
    from netcheck import faults, spec
    from netcheck.diagnose.doctor import inspect
    from netcheck.kernel.inspect import legacy_tables
    from netcheck.lab import Lab

    why = nft.available()
    if why:
        skip_for_missing_tool(why)
    with Lab(spec.builtin("seed1-nft")) as lab:
        prober = diagnosing_prober(lab)
        r = prober.http("wan", "203.0.113.2", 5000, target="netns0")
        assert r.passed, r.explain()
        assert faults.inject(lab, ["forward-drop"]) == ["forward-drop"]
        r = prober.icmp("netns0", "198.51.100.1")
        assert r.diagnosis is not None and r.diagnosis.top is not None and r.diagnosis.top.cause == "forward_drop", r.explain()
        assert f"nft 'insert rule ip {lab.tag}_filter FORWARD" in r.diagnosis.top.fix, r.diagnosis.top.fix
        inspect(lab)
        for label, ns in lab.namespaces().items():
            assert legacy_tables(ns) == [], f"{label}: legacy tables {legacy_tables(ns)} in a firewall = \"nft\" lab"
            saved = ns.run(["iptables-legacy-save"])
            assert saved.returncode == 0 and saved.stdout.decode().strip() == "", f"{label}: iptables-legacy-save printed {saved.stdout.decode()!r} {saved.stderr.decode()!r}"
    with Lab(spec.builtin("seed1")) as lab:
        assert "nat" in legacy_tables(lab.host), "the control: seed1's rules are legacy, and the read must see them"
        assert "*nat" in lab.host.run(["iptables-legacy-save"]).stdout.decode()


@pytest.mark.root
@pytest.mark.parametrize(("fault", "topology", "probe"), [
    ("masquerade-removed", "seed1-nft", ("tcp", "netns0", "198.51.100.1", 7, "wan")),
    ("forward-drop-rule", "seed2-nft", ("icmp", "http2", "198.51.100.1", None, None)),
    ("forward-drop", "seed1-nft", ("icmp", "netns0", "198.51.100.1", None, None)),
    ("dnat-wrong-port", "seed1-nft", ("http", "wan", "203.0.113.2", 5000, "netns0")),
    ("vip-not-jumped-from-output", "seed2-nft", ("http", "host", "10.100.100.100", 8080, "http2")),
])
def test_the_fix_for_a_native_rule_fault_is_an_nft_command_that_works(fault: str, topology: str, probe: tuple[str, str, str, int | None, str | None]) -> None:
    """The diagnosis of a fault in a firewall = "nft" lab's own tables names an nft command; pasted, it repairs the lab."""
    from netcheck import faults, spec
    from netcheck.evidence import ProbeResult
    from netcheck.lab import Lab

    why = nft.available()
    if why:
        skip_for_missing_tool(why)
    kind, src, dst, port, target = probe

    def send(prober: Any) -> ProbeResult:
        if kind == "icmp":
            return prober.icmp(src, dst)
        if kind == "tcp":
            return prober.tcp(src, dst, port, target=target)
        return prober.http(src, dst, port, target=target)

    with Lab(spec.builtin(topology)) as lab:
        prober = diagnosing_prober(lab)
        assert faults.inject(lab, [fault]) == [fault]
        r = send(prober)
        d = r.diagnosis
        assert d is not None and d.top is not None and d.top.cause == faults.FAULTS[fault].cause, r.explain()
        assert f"{lab.host.name} nft " in d.top.fix and "iptables" not in d.top.fix, d.top.fix
        done = subprocess.run(["sh", "-c", d.top.fix], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{d.top.fix}: {done.stderr}"
        again = send(prober)
        assert again.passed, f"after {d.top.fix}:\n{again.explain()}"


# ----------------------------------------------------------------------------- reading nft back
# The one nft JSON reader (xtables.nft_chains) on what tools write: sets (anonymous and named,
# intervals), verdict maps, DNAT maps with concatenated destinations, ct state, jumps and gotos,
# priorities and policies. Written in a throwaway namespace, listed with nft -j, read back.
CORPUS = """
table inet t {
  set web { type ipv4_addr; flags interval; elements = { 10.0.0.0/24, 10.1.0.5 } }
  map pub { type inet_service : ipv4_addr . inet_service; elements = { 8080 : 172.17.0.2 . 80 } }
  chain FWD {
    type filter hook forward priority filter - 5; policy drop;
    ct state established,related accept
    tcp dport { 80, 443, 1000-2000 } counter drop
    ip saddr @web iifname { "a", "b*" } accept
    iifname vmap { "br0" : jump SUB, "eth0" : accept }
    meta mark 0x2 goto SUB
    ip daddr != 10.9.0.0/16 drop
  }
  chain SUB {
    ip protocol icmp return
    counter accept
  }
  chain PRE {
    type nat hook prerouting priority dstnat;
    dnat ip to tcp dport map @pub
    dnat ip to tcp dport map { 9090 : 172.17.0.3 . 90 }
    ip daddr 203.0.113.2 dnat ip to 172.17.0.9
  }
}
"""

ROUND_TRIP = [
    XRule("filter", "FORWARD", "DROP", protocol="tcp", dports=((80, 80), (443, 443), (1000, 2000))),
    XRule("filter", "FORWARD", "ACCEPT", ct_state=("established", "related")),
    XRule("filter", "FORWARD", "ACCEPT", src_set=("10.0.0.0/24", "10.1.0.5"), out_interface="!br0"),
    XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", protocol="udp", dport=53, to_destination="10.0.0.2"),
]

LIST_CORPUS = textwrap.dedent("""
    import subprocess, sys
    from netcheck.kernel.netns import Netns
    from netcheck.kernel import nft
    sys.path.insert(0, "tests")
    from test_nft_backend import CORPUS, ROUND_TRIP
    subprocess.run(["nft", "-f", "-"], input=CORPUS, text=True, check=True)
    ns = Netns.current("host")
    try:
        nft.apply(ns, "nct2", ROUND_TRIP)
    finally:
        ns.close()
    print(subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True).stdout)
""")


def shown(r: XRule) -> dict[str, object]:
    """What a rule says, without where it is and its bookkeeping."""
    return {k: v for k, v in r.key().__dict__.items() if v not in (None, ()) and k not in ("table", "chain", "packets", "bytes")}


@pytest.mark.root
def test_the_reader_reads_sets_maps_ct_state_jumps_policies_and_priorities(repo) -> None:
    from netcheck.diagnose.firewall import Pkt, Ruleset
    from netcheck.kernel.xtables import nft_chains

    why = nft.available()
    if why:
        skip_for_missing_tool(why)
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", LIST_CORPUS], capture_output=True, text=True, timeout=60, cwd=repo, check=False)
    assert proc.returncode == 0, proc.stderr
    chains = {(c.table, c.name): c for c in nft_chains(json.loads(proc.stdout))}
    fwd, sub, pre = chains[("t", "FWD")], chains[("t", "SUB")], chains[("t", "PRE")]
    assert (fwd.family, fwd.hook, fwd.kind, fwd.priority, fwd.policy) == ("inet", "forward", "filter", -5, "DROP")
    assert (sub.hook, sub.policy) == (None, None) and (pre.hook, pre.kind, pre.priority) == ("prerouting", "nat", -100)
    assert [shown(r) for r in fwd.rules] == [
        {"target": "ACCEPT", "ct_state": ("established", "related")},
        {"target": "DROP", "protocol": "tcp", "dports": ((80, 80), (443, 443), (1000, 2000))},
        {"target": "ACCEPT", "src_set": ("10.0.0.0/24", "10.1.0.5"), "in_set": ("a", "b+")},  # a named set, resolved
        {"target": "SUB", "in_interface": "br0"},  # a verdict map: one rule per element
        {"target": "ACCEPT", "in_interface": "eth0"},
        {"target": "SUB"},  # a goto, on a mark the summary does not model
        {"target": "DROP", "dst": "!10.9.0.0/16"},
    ]
    assert fwd.rules[3].handle == fwd.rules[4].handle and fwd.rules[5].unmodelled == ("mark",)
    assert [shown(r) for r in sub.rules] == [{"target": "RETURN", "protocol": "icmp"}, {"target": "ACCEPT"}]
    assert [shown(r) for r in pre.rules] == [
        {"target": "DNAT", "protocol": "tcp", "dport": 8080, "to_destination": "172.17.0.2:80"},  # a named DNAT map of addr . port
        {"target": "DNAT", "protocol": "tcp", "dport": 9090, "to_destination": "172.17.0.3:90"},
        {"target": "DNAT", "dst": "203.0.113.2", "to_destination": "172.17.0.9"},
    ]
    # What netcheck writes with sets reads back as the same rule.
    mine = [r for c in chains.values() if c.table.startswith("nct2_") for r in c.rules]
    assert sorted(map(repr, map(shown, mine))) == sorted(map(repr, map(shown, ROUND_TRIP))), mine
    # The walker: a port set drops only its ports, ct state established accepts only replies.
    rs = Ruleset.build([], chains.values())
    # port 22 passes the port set; the goto's mark is not modelled (taken to match), so SUB accepts it
    assert rs.verdict("forward", Pkt("10.0.0.7", "10.5.0.1", "tcp", 22, "x", "y")) is None
    d = rs.verdict("forward", Pkt("10.0.0.7", "10.5.0.1", "tcp", 443, "x", "y"))
    assert d is not None and d.rule is not None and d.rule.rule.dports, d
    assert rs.verdict("forward", Pkt("10.5.0.1", "10.0.0.7", "tcp", None, "y", "x", "established")) is None
