"""Hosts served by nodes through execnet gateways (netcheck.multihost.nodes): the cross-host suite
on popen nodes (each inside a sandbox namespace of its own) and with one host reached over ssh
(an sshd in a sandbox namespace, netcheck.multihost.sshnode) gives the same results; a controller
killed with SIGKILL leaves nothing that ``netcheck clean`` does not remove, on the nodes too."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import pytest
from hoststate import PYTHON, Child, Leftovers, read_records, run_clean

from netcheck import spec
from netcheck.diagnosing import prober_for
from netcheck.evidence import MatrixResult, ProbeResult
from netcheck.faults import FAULTS
from netcheck.lab import has_net_admin
from netcheck.ledger import NodeEntry, from_json, to_json
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.nodehost import NodeHost
from netcheck.multihost.nodes import NodesLab, transport_of
from netcheck.multihost.sshnode import SSHD, SandboxSshd

ROOT = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(not has_net_admin(), reason="builds labs: needs root")
needs_sshd = pytest.mark.skipif(not os.path.exists(SSHD), reason="needs Debian's openssh-server (bootstrap.sh tests installs it)")


def _text(name: str) -> str:
    return (ROOT / "netcheck" / "topologies" / "multihost" / f"{name}.toml").read_text()


# ----------------------------------------------------------------------------- the spec and the ledger (no root)


def test_a_host_names_its_node_and_a_bad_gateway_names_file_field_and_fix() -> None:
    text = _text("two-hosts-routed").replace('name = "b"', 'name = "b"\nnode = "ssh=root@198.51.100.7//python=/usr/bin/python3"')
    t = multi_spec.loads(text, "mine.toml")
    assert [h.node for h in t.hosts] == [None, "ssh=root@198.51.100.7//python=/usr/bin/python3"]
    assert t.text == text
    with pytest.raises(spec.SpecError) as exc:
        multi_spec.loads(text.replace("ssh=root@198.51.100.7", "telnet=198.51.100.7"), "mine.toml")
    e = exc.value
    assert (e.source, e.key, e.value) == ("mine.toml", "host[1].node", "telnet=198.51.100.7//python=/usr/bin/python3"), str(e)
    assert 'node = "ssh=root@198.51.100.7"' in e.fix


def test_a_node_run_is_recorded_as_plain_data_and_read_back() -> None:
    entry = NodeEntry("ssh", "ssh=root@198.51.100.7", "ncab12", None)
    assert from_json(json.loads(json.dumps(to_json(entry)))) == entry
    assert (transport_of("popen//python=nsenter --net=/run/netns/x python3"), transport_of(entry.gateway)) == ("popen", "ssh")


# ----------------------------------------------------------------------------- the suite on nodes


def _suite() -> ModuleType:
    found = importlib.util.spec_from_file_location("netcheck_cross_host_suite_nodes", ROOT / "suites" / "test_cross_host.py")
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


SUITE = _suite()
TESTS = sorted(name for name in vars(SUITE) if name.startswith("test_"))


def _shape(r: ProbeResult | MatrixResult) -> object:
    """What a result says, without what differs between two runs (tags, times, ids, ports)."""
    if isinstance(r, MatrixResult):
        return ("matrix", r.names, r.expected, r.observed)
    return (r.kind, r.source, r.destination, r.verdict, tuple((c.point, c.started, tuple((p.role, p.src, p.dst, p.ttl) for p in c.packets)) for c in r.captures))


def _run_suite(lab: NodesLab) -> dict[str, tuple[str, list[object]]]:
    """Every cross-host suite test on ``lab``: passed or its message, and what its evidence says."""
    out: dict[str, tuple[str, list[object]]] = {}
    for name in TESTS:
        test: Callable[..., None] = getattr(SUITE, name)
        results: list[ProbeResult | MatrixResult] = []
        args = (lab, results.append) if "netcheck_evidence" in test.__code__.co_varnames[: test.__code__.co_argcount] else (lab,)
        try:
            test(*args)
            outcome = "passed"
        except AssertionError as exc:
            outcome = str(exc)
        out[name] = (outcome, [_shape(r) for r in results])
    return out


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxSshd]:
    """One sshd node for the module, its record in a run folder of its own (so a test's ``netcheck clean`` sees it live)."""
    if not has_net_admin() or not os.path.exists(SSHD):
        pytest.skip("needs root and Debian's openssh-server")
    with SandboxSshd(run_dir=tmp_path_factory.mktemp("sshd-run")) as node:
        yield node


@needs_root
@needs_sshd
def test_the_cross_host_suite_over_ssh_gives_the_same_results_as_over_popen(sshd: SandboxSshd, tmp_path: Path) -> None:
    t = multi_spec.builtin("two-hosts-vxlan")
    with NodesLab(t, run_dir=tmp_path) as lab:
        assert [lab.gateway_of(h.name) for h in t.hosts] == ["popen", "popen"]
        popen = _run_suite(lab)
    with NodesLab(t, run_dir=tmp_path, gateways={"b": sshd.gateway}) as lab:
        assert lab.gateway_of("b").startswith("ssh=root@198.51.100.126")
        agents = {name: nh.node.info["pid"] for name, nh in lab.hosts.items()}
        assert agents["a"] != agents["b"] and os.getpid() not in agents.values()
        ssh = _run_suite(lab)
        _single_host_over_ssh(lab.hosts["b"])
    assert all(outcome == "passed" for outcome, _ in popen.values()), {k: v[0] for k, v in popen.items() if v[0] != "passed"}
    assert ssh == popen
    assert sum(len(shapes) for _, shapes in popen.values()) >= 8  # the matrix, probes with captures on the other node and the underlay
    assert not list(tmp_path.glob("*.jsonl")), "run records left"


def _single_host_over_ssh(host: NodeHost) -> None:
    """The single-host view of a host over ssh: a read, a probe, then a fault injected there and the failure diagnosed there."""
    assert {link.name for link in host.container_ns("netns0").links()} == {"lo", "ceth0"}
    assert prober_for(host).icmp("netns0", "198.51.100.1").passed
    fault = FAULTS["masquerade-removed"]
    assert host.inject([fault.name]) == [fault.name]
    r = prober_for(host).icmp("netns0", "198.51.100.1")
    assert not r.passed and r.diagnosis is not None and r.diagnosis.top is not None and r.diagnosis.top.cause == fault.cause, r.explain()


# ----------------------------------------------------------------------------- SIGKILL of the controller

CONTROLLER = """
import json, sys
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.nodes import NodesLab
lab = NodesLab(multi_spec.builtin("two-hosts-vxlan"), gateways=json.loads(sys.argv[1])).build()
assert lab.hosts["a"].inject(json.loads(sys.argv[2])) == json.loads(sys.argv[2])  # on node a, its undo in a's ledger
print("BUILT " + json.dumps({name: nh.node.info for name, nh in lab.hosts.items()}), flush=True)
sys.stdin.readline()
"""


def _kill_then_clean(run_dir: Path, gateways: dict[str, str], node_dir: Path | None = None, faults: tuple[str, ...] = ()) -> None:
    """SIGKILL a controller after its build (and ``faults`` injected on node a); then ``netcheck clean`` on the controller's
    run folder alone (an ssh node keeps its record in ``node_dir``, as a real node keeps its own)."""
    child = Child([PYTHON, "-c", CONTROLLER, json.dumps(gateways), json.dumps(list(faults))], env={"NETCHECK_RUN_DIR": str(run_dir)}, stdin=True)
    try:
        agents = json.loads(child.wait_line("^BUILT ", timeout=180).split(" ", 1)[1])
        if faults:  # what the faults made is in node a's record (a link of its own: rp-filter-strict's second uplink)
            assert any(e["kind"] == "link" and str(e["name"]).endswith("u2") for _h, entries in read_records(run_dir) for e in entries), read_records(run_dir)
        left = Leftovers.of(run_dir)
        on_node = Leftovers.of(node_dir) if node_dir is not None else Leftovers()
        left.pids |= {int(a["pid"]) for a in agents.values()}
        assert len(left.tags | on_node.tags) == 3, (left.tags, on_node.tags)  # the controller's record, and each node's
        assert len(left.netns | on_node.netns) == 9 + 2 - len(gateways), asdict(left)  # the underlay, 2 x 4, the popen nodes
        child.signal(signal.SIGKILL)
        child.proc.wait(30)
    finally:
        child.close()
    done = run_clean(run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not left.remaining(run_dir), f"left after clean: {left.remaining(run_dir)}\n{done.stdout}"
    if node_dir is not None:
        assert "remove node run" in done.stdout, done.stdout
        assert not on_node.remaining(node_dir), f"left on the node after clean: {on_node.remaining(node_dir)}\n{done.stdout}"


@needs_root
def test_a_killed_controller_with_popen_nodes_is_cleaned_on_the_nodes(tmp_path: Path) -> None:
    """Node a's lab also carries a fault (a link, sysctls and routes recorded in its ledger): clean removes it there too."""
    _kill_then_clean(tmp_path, {}, faults=("rp-filter-strict",))


@needs_root
@needs_sshd
def test_a_killed_controller_with_an_ssh_node_is_cleaned_on_the_node(sshd: SandboxSshd, tmp_path: Path) -> None:
    """The node's record is in a folder the controller's clean does not read: clean reaches it over ssh."""
    node_dir = tmp_path / "node"
    _kill_then_clean(tmp_path / "controller", {"b": f"{sshd.gateway}//env:NETCHECK_RUN_DIR={node_dir}"}, node_dir)


# ----------------------------------------------------------------------------- the plugin, and the two-machine Vagrantfile


@pytest.mark.root
def test_a_spec_whose_hosts_name_nodes_runs_the_cross_host_suite_on_them(run_suites: Callable[..., pytest.RunResult]) -> None:
    result = run_suites(str(ROOT / "suites" / "test_cross_host.py"), "-v", f"--netcheck-topology={ROOT / 'examples' / 'multihost' / 'two-hosts-vxlan-nodes.toml'}")
    out = result.stdout.str()
    assert result.ret == 0 and result.parseoutcomes().get("passed") == 6, out[-3000:]
    assert "test_underlay_carries_the_packets_as_the_join_declares[two-hosts-vxlan-nodes] PASSED" in out, out[-2000:]


def test_the_two_machine_vagrantfile_validates(tmp_path: Path) -> None:
    """``NETCHECK_VMS=2``: machines a and b, each with the nodes' key (made once, beside .vagrant)."""
    import shutil
    import subprocess

    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (Debian: apt-get install vagrant)")
    shutil.copy(ROOT / "Vagrantfile", tmp_path / "Vagrantfile")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1", "VAGRANT_NO_COLOR": "1", "NETCHECK_VMS": "2"}
    done = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "validated successfully" in done.stdout, done.stdout + done.stderr
    assert "==> a:" in done.stdout or "==> b:" in done.stdout, done.stdout
    assert (tmp_path / ".vagrant" / "netcheck-nodes" / "id_ed25519.pub").is_file()
    text = (ROOT / "Vagrantfile").read_text()
    assert "examples/multihost/two-vms-vxlan.toml" in text
    t = multi_spec.load(ROOT / "examples" / "multihost" / "two-vms-vxlan.toml")
    assert [(h.node or "").split("//")[0] for h in t.hosts] == ["ssh=root@198.51.100.11", "ssh=root@198.51.100.12"] and {h.nic for h in t.hosts} == {"eth1"}


@needs_root
def test_a_controller_killed_while_a_node_builds_is_cleaned(tmp_path: Path) -> None:
    """SIGKILL while node a is building its lab (its record growing, its agent busy): the agent finishes its step
    and ends, or clean ends it by its PID; nothing of any of the runs is left."""
    from hoststate import read_records

    from netcheck.waiting import wait_until

    child = Child([PYTHON, "-c", CONTROLLER, "{}"], env={"NETCHECK_RUN_DIR": str(tmp_path)}, stdin=True)
    try:
        def building() -> bool:
            return any(h.get("topology") == "two-hosts-vxlan.a" and len(entries) >= 3 for h, entries in read_records(tmp_path))

        wait_until(building, timeout=120, what="node a's record to hold 3 entries", describe=lambda: str([(h.get("tag"), len(e)) for h, e in read_records(tmp_path)]))
        child.signal(signal.SIGKILL)
        child.proc.wait(30)
    finally:
        child.close()
    records = read_records(tmp_path)
    tags = {str(h.get("tag")) for h, _ in records}
    agents = {int(str(e["pid"])) for _, entries in records for e in entries if e["kind"] == "process"}
    assert len(tags) >= 2 and agents, records
    done = run_clean(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    left = [n for n in os.listdir("/run/netns") if any(n.startswith(f"{tag}-") for tag in tags)]
    assert not left and not list(tmp_path.glob("*.jsonl")), f"left: {left}, {list(tmp_path.glob('*.jsonl'))}\n{done.stdout}"
    assert not [pid for pid in agents if Path(f"/proc/{pid}").exists()], done.stdout
