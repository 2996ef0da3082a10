"""The registry of causes (netcheck/diagnose/causes.py) and the fix values: what derives from it agrees with it.

No root: these read the registry, the catalogs and the docs, and render fix values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from netcheck.adapters.faults import EXTERNAL_FAULTS
from netcheck.diagnose.causes import CAUSES, DOCUMENTED, FIX_VALUES, SEVERITIES, markdown
from netcheck.evidence import FIX_KINDS, AddRule, DeleteRule, Diagnosis, Finding, SetPolicy, fix_from_dict
from netcheck.faults import CROSS_HOST_FAULTS, FAULTS
from netcheck.kernel.xtables import XRule

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_table_is_the_registrys() -> None:
    docs = (REPO / "docs" / "diagnosis.md").read_text()
    table = markdown()
    assert table in docs, "docs/diagnosis.md's table of causes is not `netcheck causes --markdown`; paste its output under ## Causes"
    printed = subprocess.run([sys.executable, "-m", "netcheck.cli", "causes", "--markdown"], capture_output=True, text=True, check=False)
    assert printed.returncode == 0 and printed.stdout == table, printed.stderr


def test_every_fault_names_a_declared_cause_and_every_probed_cause_has_a_fault() -> None:
    for f in (*FAULTS.values(), *EXTERNAL_FAULTS.values(), *CROSS_HOST_FAULTS.values()):
        assert f.cause in CAUSES, f"fault {f.name}: its cause {f.cause} is not declared in netcheck/diagnose/causes.py"
    injected = {f.cause for f in (*FAULTS.values(), *EXTERNAL_FAULTS.values(), *CROSS_HOST_FAULTS.values())}
    lacking = [c.id for c in DOCUMENTED if c.id not in injected and c.id not in ("no_route", "resolv_conf_wrong", "rules_split", "model_disposition", "tool_rules_gone")]  # see test_lifecycle
    assert not lacking, f"causes no fault injects (add one to netcheck/faults.py): {lacking}"


def test_declarations_are_well_formed() -> None:
    for c in CAUSES.values():
        assert c.severity in SEVERITIES, c
        assert set(c.fixes) <= set(FIX_VALUES), f"{c.id}: unknown fix values {set(c.fixes) - set(FIX_VALUES)}"
        assert bool(c.fix) == bool(c.fixes), f"{c.id}: says how its fix is built ({c.fix!r}) but names no fix value, or the other way round"
    assert set(FIX_VALUES) == {k.__name__ for k in FIX_KINDS.values()}


def test_rule_fixes_render_where_the_rule_lives() -> None:
    drop = XRule("filter", "FORWARD", "DROP", in_interface="nc1b0", out_interface="!nc1up")
    assert DeleteRule("host", "legacy", drop).command() == "iptables-legacy -t filter -D FORWARD -i nc1b0 ! -o nc1up -j DROP"
    assert AddRule("host", "nft", drop, insert=True).command() == "iptables-nft -t filter -I FORWARD -i nc1b0 ! -o nc1up -j DROP"
    native = XRule("nc1_filter", "FORWARD", "DROP", in_interface="nc1b0", handle=7)
    assert DeleteRule("host", "nft", native).command() == "nft delete rule ip nc1_filter FORWARD handle 7"
    assert AddRule("host", "nft", native, "inet").command() == "nft 'add rule inet nc1_filter FORWARD iifname \"nc1b0\" counter drop'"
    assert SetPolicy("host", "legacy", "filter", "FORWARD", "ACCEPT").command() == "iptables-legacy -t filter -P FORWARD ACCEPT"
    assert SetPolicy("host", "nft", "ufw", "forward", "ACCEPT", "inet").command() == "nft chain inet ufw forward '{ policy accept; }'"


def test_rule_fixes_round_trip_through_json() -> None:
    rule = XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", protocol="tcp", dports=((80, 80), (1000, 2000)), in_set=("br0",), to_destination="10.0.0.2:80")
    fixes = (DeleteRule("host", "nft", rule), AddRule("host", "legacy", rule, insert=True), SetPolicy("host", "legacy", "filter", "FORWARD", "ACCEPT"))
    d = Diagnosis(findings=(Finding("dnat_wrong", "host", "s", "f", fixes=fixes),))
    from dataclasses import asdict

    again = Diagnosis.from_dict(json.loads(json.dumps(asdict(d))))
    assert again == d
    assert fix_from_dict(json.loads(json.dumps(asdict(fixes[0])))) == fixes[0]
