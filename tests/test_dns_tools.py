"""DNS on the tools' own networks: Docker's embedded resolver (127.0.0.11) on a user-defined network,
and Podman's aardvark-dns on a network with dns_enabled. The DNS suite passes on each example, and
breaking the tool's resolver (Docker's DNAT rules gone, aardvark-dns stopped) fails it with the right
top cause. A tool that is not installed skips with the command that installs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_adapters import example  # the example spec, skipped with the install command when a tool is missing

from netcheck import adapters, spec
from netcheck.adapters.faults import EXTERNAL_FAULTS
from netcheck.faults import FAULTS

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["docker-dns", "podman-dns"])
def test_the_dns_suite_passes_on_the_tools_network(run_suites, repo: Path, name: str) -> None:
    """The DNS suite, and the suites that read what a tool's network leaves in the container (Docker's rules
    for 127.0.0.11 in its nat table) and in the host (no idle docker0 when every container is on a network)."""
    suites = [str(repo / "suites" / f) for f in ("test_dns.py", "test_isolation.py", "test_topology.py")]
    result = run_suites(*suites, f"--netcheck-topology={example(name)}", "-rA")
    outcomes, out = result.parseoutcomes(), result.stdout.str()
    assert not outcomes.get("failed") and not outcomes.get("error"), out[-4000:]
    dns = [line for line in out.splitlines() if line.startswith("PASSED") and "test_dns.py::" in line]
    assert len(dns) == 5, f"every DNS check must run and pass on {name}:\n{out[-4000:]}"


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


@pytest.mark.parametrize("name", ["docker-dns", "podman-dns"])
def test_the_tools_resolvers_ask_nothing_outside_the_lab_and_leave_nothing(name: str) -> None:
    """The tool's resolver answers its names, forwards the rest to netcheck's [dns] server only (watched on
    the wan's uplink), and everything it started is recorded and gone after teardown (aardvark-dns by its PID)."""
    from test_dns_lab import _dns_packets

    from netcheck.ledger import ProcessEntry, process_starttime
    from netcheck.probes import Prober
    from netcheck.probes.capture import capture_at
    from netcheck.resolvconf import MACHINE

    t = spec.load(example(name))
    assert t.dns is not None
    machine = MACHINE.read_text() if MACHINE.exists() else None
    lab = adapters.build_external(t)
    try:
        assert lab.ledger is not None and lab.workdir is not None
        probe, uplink = Prober(lab), capture_at(lab, "wan:uplink")
        on, web = t.network_of(t.container("client")), lab.topology.container("web").address
        assert on is not None and web is not None
        first = probe.dns("client", "web")
        asked = [first] + [probe.dns("client", q, tcp=tcp) for q in ("www.corp.test", "nonexistent.corp.test", "netcheck-check.invalid.")
                           for tcp in ((False, True) if on.dns_tcp else (False,))]
        assert all(r.rcode in ("NOERROR", "NXDOMAIN") for r in asked), "\n".join(r.explain() for r in asked)
        assert first.answers == (str(web.ip),) and asked[1].answers == ("198.51.100.10",), first.explain()
        seen = uplink.collect(_dns_packets, first.started_at, limit=256)
        processes = [e for e in lab.ledger.entries if isinstance(e, ProcessEntry)]
        workdir = lab.workdir
        if name == "podman-dns":
            aardvark = lab.state["aardvark"][0]
            assert aardvark in {e.pid for e in processes}, f"aardvark-dns (pid {aardvark}) is not in the run record"
    finally:
        lab.teardown()
    assert seen.started and seen.packets, "no DNS was captured on the wan's uplink: the check proves nothing"
    strays = [p.flow for p in seen.packets if str(t.dns.address) not in (p.src, p.dst)]
    assert not strays, f"DNS for an address outside the lab crossed the wan's uplink: {strays}"
    alive = [e for e in processes if process_starttime(e.pid) is not None and process_starttime(e.pid) == e.starttime]
    assert not alive, f"left running: {alive}"
    assert not workdir.exists(), workdir
    assert (MACHINE.read_text() if MACHINE.exists() else None) == machine, "the machine's /etc/resolv.conf changed"
    assert str(workdir) not in Path("/proc/self/mountinfo").read_text()


HOLD_LAB = """
import sys
from netcheck import adapters, spec
lab = adapters.build_external(spec.load(sys.argv[1]))
print("BUILT", lab.state["aardvark"][0], flush=True)
sys.stdin.readline()
"""


def test_sigkill_then_clean_ends_aardvark_dns_and_removes_the_run(tmp_path: Path) -> None:
    """A run killed with its Podman network up: ``netcheck clean`` ends aardvark-dns (recorded by its PID) with the rest."""
    from hoststate import PYTHON, Child, Leftovers, read_records, run_clean

    path = example("podman-dns")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    child = Child([PYTHON, "-c", HOLD_LAB, str(path)], env={"NETCHECK_RUN_DIR": str(run_dir)}, stdin=True)
    try:
        aardvark = int(child.wait_line(r"^BUILT \d+$", timeout=120).split()[1])
        left = Leftovers.of(run_dir)
        child.kill()
    finally:
        child.close()
    assert aardvark in left.pids and Path(f"/proc/{aardvark}").exists(), f"aardvark-dns {aardvark} is not recorded, or did not outlive the run: {left}"
    proc = run_clean(run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not left.remaining(run_dir), left.remaining(run_dir)
    assert not read_records(run_dir)
