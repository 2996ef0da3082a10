"""DNS on the tools' own networks: Docker's embedded resolver (127.0.0.11) on a user-defined network,
and Podman's aardvark-dns on a network with dns_enabled. The DNS suite passes on each example, and
breaking the tool's resolver (Docker's DNAT rules gone, aardvark-dns stopped) fails it with the right
top cause. A tool that is not installed skips with the command that installs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netcheck import adapters, spec
from netcheck.activation import skip_for_missing_tool
from netcheck.adapters.faults import EXTERNAL_FAULTS
from netcheck.faults import FAULTS

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DNS_SUITE = "suites/test_dns.py"


def example(name: str) -> Path:
    path = EXAMPLES / f"{name}.toml"
    lacking = adapters.missing(spec.load(path))
    if lacking:
        skip_for_missing_tool(f"{name}: this machine lacks " + "; ".join(lacking))
    return path


@pytest.mark.parametrize("name", ["docker-dns", "podman-dns"])
def test_the_dns_suite_passes_on_the_tools_network(run_suites, repo: Path, name: str) -> None:
    result = run_suites(str(repo / DNS_SUITE), f"--netcheck-topology={example(name)}")
    outcomes, out = result.parseoutcomes(), result.stdout.str()
    assert outcomes.get("passed") == 5 and not outcomes.get("failed") and not outcomes.get("error") and not outcomes.get("skipped"), out[-4000:]


@pytest.mark.parametrize(("name", "fault"), [("docker-dns", "embedded-dns-rules-removed"), ("podman-dns", "aardvark-dns-stopped")])
def test_breaking_the_tools_resolver_is_diagnosed(run_suites, repo: Path, monkeypatch: pytest.MonkeyPatch, name: str, fault: str) -> None:
    path = example(name)
    for key, f in EXTERNAL_FAULTS.items():
        monkeypatch.setitem(FAULTS, key, f)
    f = EXTERNAL_FAULTS[fault]
    result = run_suites(str(repo / "suites" / f.suite_test), f"--netcheck-topology={path}", f"--netcheck-fault={fault}")
    out = result.stdout.str()
    assert result.parseoutcomes().get("failed") == 1, f"{fault} did not fail {f.suite_test}:\n{out[-4000:]}"
    assert f.message in out, out[-4000:]
    assert f"1. [{f.cause}]" in out, f"the diagnosis of {fault} does not name {f.cause} first:\n{out[-4000:]}"
