"""The faults real hosts have, injected by an outside shell script (``--netcheck-fault NAME:script``):
iptables-nft, nft, ip and sysctl commands run in the lab's host namespace, as Docker, ufw,
firewalld, a VPN client or a hand-written script would leave them. netcheck's builder wrote the
lab, the script broke it; each must fail its suite test with the right top cause, and a decoy
(``Fault.not_blamed``) must not be named at all, neither when netcheck injects it.

Cost: one inner pytest run per fault, about 4-6 s each (a lab build, the failing probe, its
diagnosis and the fix verification).
"""

from __future__ import annotations

import re

import pytest

from netcheck.faults import FAULTS, SCRIPTED

pytestmark = pytest.mark.root

NAMED = re.compile(r"^E?\s+\d+\. \[(\w+)\]", re.M)
TOP = re.compile(r"^(?:E)?\s+1\. \[(\w+)\]", re.M)
SCRIPTS = sorted(name for name, f in FAULTS.items() if f.script is not None)
DECOYS = sorted(name for name, f in FAULTS.items() if f.not_blamed)
# The scripts that edit the lab's own rules where its builder wrote them: on the -nft build, its nft tables
# (a script that could not be written there was once skipped silently, as if the topology lacked the rule).
NATIVE = ("dnat-wrong-dst", "dnat-wrong-iif", "firewall-reload-wipes-nat", "ipv6-drop-decoy", "masquerade-wrong-oif")
CASES = ([pytest.param(name + SCRIPTED, "", id=name + SCRIPTED) for name in SCRIPTS] + [pytest.param(name, "", id=name) for name in DECOYS]
         + [pytest.param(name + SCRIPTED, "-nft", id=name + SCRIPTED + "-nft") for name in NATIVE])


@pytest.mark.parametrize(("given", "build"), CASES)
def test_a_scripted_fault_fails_its_suite_test_with_the_right_top_cause(run_suites, repo, given: str, build: str) -> None:
    f = FAULTS[given.partition(SCRIPTED)[0]]
    result = run_suites(str(repo / "suites" / f.suite_test), f"--netcheck-topology={f.topology}{build}", f"--netcheck-fault={given}")
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 1 and not outcomes.get("error"), f"{given} ({f.summary}) did not fail {f.suite_test}:\n{out[-3000:]}"
    assert f.message in out, f"the failure for {given} does not mention {f.message!r}:\n{out[-3000:]}"
    m = TOP.search(out)
    assert m is not None and m.group(1) == f.cause, f"{given}: the failure ranks [{m.group(1) if m else None}] first, expected [{f.cause}]:\n{out[-4000:]}"
    blamed = set(NAMED.findall(out)) & set(f.not_blamed)
    assert not blamed, f"{given}: the diagnosis names {sorted(blamed)}, which must not be blamed:\n{out[-4000:]}"

