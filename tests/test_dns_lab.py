"""DNS in a built lab: each container's resolv.conf is written, recorded and removed (also by
``netcheck clean`` after a SIGKILL), and no DNS query ever leaves for an address outside the lab."""

from __future__ import annotations

from pathlib import Path

import pytest
from hoststate import PYTHON, REPO, Child, Leftovers, read_records, run_clean

from netcheck import resolvconf, spec
from netcheck.lab import Lab
from netcheck.lab.plan import resolv_conf_text
from netcheck.ledger import EmptyDirEntry, FileEntry
from netcheck.packet import TCP, UDP, Ethernet, IPv4
from netcheck.probes import Prober
from netcheck.probes.capture import capture_at

pytestmark = pytest.mark.root


def test_resolv_conf_is_written_recorded_and_removed() -> None:
    t = spec.builtin("seed2")
    with Lab(t) as lab:
        assert lab.ledger is not None
        ns = lab.container_ns("http2").name or ""
        path = resolvconf.path_for(ns)
        assert path.read_text() == resolv_conf_text(t.container("http2"))
        assert not resolvconf.path_for(lab.container_ns("http3").name or "").parent.exists()  # no dns declared: nothing written
        recorded = lab.ledger.entries
        assert FileEntry(str(path)) in recorded and EmptyDirEntry(str(path.parent)) in recorded
        assert recorded.index(EmptyDirEntry(str(path.parent))) < recorded.index(FileEntry(str(path)))
    assert not path.exists() and not path.parent.exists()
    assert str(path.parent) not in Path("/proc/self/mountinfo").read_text()


def _dns_packets(frame: Ethernet) -> str | None:
    ip = frame.payload
    if isinstance(ip, IPv4) and isinstance(ip.payload, (UDP, TCP)) and 53 in (ip.payload.sport, ip.payload.dport):
        return "request" if ip.payload.dport == 53 else "reply"
    return None


def test_no_dns_query_leaves_for_an_address_outside_the_lab() -> None:
    """Every query of the DNS suite, and one through a resolv.conf naming a real resolver, watched on the
    wan's uplink: the only DNS seen there is to and from netcheck's own server."""
    t = spec.builtin("seed2")
    assert t.dns is not None
    with Lab(t) as lab:
        probe = Prober(lab)
        uplink = capture_at(lab, "wan:uplink")
        first = probe.dns("http2", "web")
        t0 = first.started_at
        results = [first, probe.dns("http2", "web", tcp=True), probe.dns("http2", "nonexistent.corp.test")]
        assert all(r.verdict == "reached" for r in results), "\n".join(r.explain() for r in results)
        path = resolvconf.path_for(lab.container_ns("http2").name or "")
        path.write_text(resolvconf.render(("8.8.8.8",)))  # as seed 2 writes it: a real resolver
        refused = probe.dns("http2", "web")
        assert refused.verdict == "unreachable" and refused.error and "not sent" in refused.error, refused.explain()
        seen = uplink.collect(_dns_packets, t0, limit=256)
    assert seen.started and seen.packets, "no DNS was captured on the wan's uplink: the check proves nothing"
    ours = str(t.dns.address)
    strays = [p.flow for p in seen.packets if ours not in (p.src, p.dst)]
    assert not strays, f"DNS for an address outside the lab crossed the wan's uplink: {strays}"


def test_sigkill_then_clean_removes_the_runs_etc_netns_entries(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    child = Child([PYTHON, str(REPO / "tests" / "crash_driver.py"), "seed2", "--hold-in", "probe"], env={"NETCHECK_RUN_DIR": str(run_dir)}, stdin=True)
    try:
        child.wait_line(r"^HELD \d+$", timeout=60)
        left = Leftovers.of(run_dir)
        child.kill()
    finally:
        child.close()
    paths = [str(e["path"]) for _, entries in read_records(run_dir) for e in entries if e["kind"] == "file"]
    assert paths and all(Path(p).exists() for p in paths), f"the killed run wrote no resolv.conf: {paths}"
    proc = run_clean(run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not left.remaining(run_dir), left.remaining(run_dir)
    assert not any(Path(p).exists() or Path(p).parent.exists() for p in paths), f"left behind: {paths}"


def test_a_fault_that_fails_half_way_leaks_no_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found with the DNS faults: a fault raising after the build left the lab (namespaces, resolv.conf) behind."""
    from netcheck import faults
    from netcheck.factory import LabFactory

    made: list[str] = []

    def boom(lab: Lab) -> None:
        made.append(lab.container_ns("http2").name or "")
        raise OSError(98, "injected half-way")

    monkeypatch.setitem(faults.FAULTS, "boom", faults.Fault("boom", "raises", "seed2", "x", "x", "x", boom))
    with LabFactory(faults=("boom",)) as factory, pytest.raises(OSError, match="half-way"):
        factory.shared(spec.builtin("seed2"))
    assert made and not resolvconf.netns_dir(made[0]).exists() and not Path(f"/run/netns/{made[0]}").exists()
