"""Today's tools' nftables rule sets, where the release itself cannot run here: Docker 29's
nftables backend (``table ip docker-bridges``), netavark 1.12+ (``table inet netavark``), a
firewalld-style ``table inet firewalld`` and a ufw-style rule set. Each example script
(examples/nft/) makes the containers and loads the tool's rule set with ``nft -f``; the unchanged
suites pass on it, and a break injected into the tool's own nft rules (its MASQUERADE or DNAT
removed by handle, or `nft flush ruleset` as an nftables.conf reload does) is diagnosed.

Cost on 2 cores: about 4-6 s per suite run and 3-4 s per fault run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_adapters import MASQ_CAUSES, RULE_SETS, example  # test_adapters runs the suites on each rule set; here, the breaks

from netcheck.adapters.faults import EXTERNAL_FAULTS
from netcheck.faults import DNAT_OUTSIDE, FAULTS, MASQ_OUT

pytestmark = pytest.mark.root


FAULT_CASES = [(name, fault, test, phrase, causes) for name in RULE_SETS for fault, test, phrase, causes in (
    ("tool-masquerade-removed", MASQ_OUT, "198.51.100.1", MASQ_CAUSES),
    ("tool-dnat-removed", DNAT_OUTSIDE, "203.0.113.2", ("dnat_missing",)),
    ("nft-flush-ruleset", MASQ_OUT, "198.51.100.1", MASQ_CAUSES),  # every table gone, as after a reload of an nftables.conf that flushes
)]


@pytest.mark.parametrize(("name", "fault", "suite_test", "phrase", "causes"), FAULT_CASES, ids=[f"{c[0]}-{c[1]}" for c in FAULT_CASES])
def test_a_break_in_the_tools_rule_set_is_diagnosed(run_suites, repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                   name: str, fault: str, suite_test: str, phrase: str, causes: tuple[str, ...]) -> None:
    path = example(name)
    for key, f in EXTERNAL_FAULTS.items():
        monkeypatch.setitem(FAULTS, key, f)
    result = run_suites(str(repo / "suites" / suite_test), f"--netcheck-topology={path}", f"--netcheck-fault={fault}")
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 1 and not outcomes.get("error"), f"{name}: fault {fault} did not fail {suite_test}:\n{out[-4000:]}"
    assert phrase in out, f"{name}: the failure for {fault} does not mention {phrase!r}:\n{out[-4000:]}"
    assert any(f"1. [{c}]" in out for c in causes), f"{name}: the diagnosis of {fault} does not name {' or '.join(causes)} first:\n{out[-4000:]}"
