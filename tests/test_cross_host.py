"""Several hosts: the multi-host spec and its errors, the lab's build and teardown, and each
cross-host fault failing its cross-host suite test with the right top cause."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_spec_docs import schema_keys  # the schema's key paths, as spec_docs writes them

from netcheck import spec
from netcheck.diagnose import crosshost
from netcheck.diagnose.causes import CAUSES
from netcheck.evidence import ProbeResult
from netcheck.faults import CROSS_HOST_FAULTS
from netcheck.kernel.worker import netns_path
from netcheck.lab import has_net_admin
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.lab import MultiLab

ROOT = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(not has_net_admin(), reason="builds labs: needs root")


def _text(name: str) -> str:
    return (ROOT / "netcheck" / "topologies" / "multihost" / f"{name}.toml").read_text()


# ----------------------------------------------------------------------------- the spec


def test_the_builtins_load_with_their_hosts_subnets_and_join() -> None:
    r, v = multi_spec.builtin("two-hosts-routed"), multi_spec.builtin("two-hosts-vxlan")
    assert (r.join.kind, r.path_mtu, v.join.kind, v.join.vni, v.join.port, v.path_mtu) == ("routed", 1460, "vxlan", 42, 4789, 1450)
    assert [str(h.subnets[0]) for h in v.hosts] == ["10.244.1.0/24", "10.244.2.0/24"]
    assert [h.topology.name for h in v.hosts] == ["two-hosts-vxlan.a", "two-hosts-vxlan.b"]


def test_a_single_host_spec_is_unchanged() -> None:
    assert not multi_spec.is_multi_ref("seed1") and multi_spec.is_multi_ref("two-hosts-vxlan")
    assert spec.builtin("seed1").name == "seed1"
    with pytest.raises(spec.SpecError, match="is not an array of"):
        multi_spec.loads(_text("two-hosts-vxlan").split("[[host]]")[0] + "[host]\nuplink = 'eth0'\n", "one.toml")


def test_an_overlay_mtu_without_room_for_vxlan_says_how_much_room_there_is() -> None:
    with pytest.raises(spec.SpecError) as exc:
        multi_spec.loads(_text("two-hosts-vxlan").replace("mtu = 1450", "mtu = 1480"), "mine.toml")
    e = exc.value
    assert (e.source, e.key, e.value) == ("mine.toml", "join.mtu", 1480)
    assert "adds 50 bytes" in e.problem and "at most 1450" in e.problem and "30 bytes too many" in e.problem
    assert e.fix == "set join.mtu = 1450 (or raise underlay.mtu to 1530)"


def test_a_host_level_mistake_names_the_host_and_the_field() -> None:
    bad = _text("two-hosts-routed").replace('address = "10.244.2.1/24"', 'address = "10.244.1.1/24"')
    with pytest.raises(spec.SpecError) as exc:
        multi_spec.loads(bad, "mine.toml")
    first = exc.value.problems[0]
    assert (first.source, first.key, first.value) == ("mine.toml", "host[1].container[0].address", "10.244.2.10/24"), str(exc.value)
    assert first.fix == "use an address inside 10.244.1.0/24"


def test_two_hosts_with_one_container_subnet_are_refused() -> None:
    with pytest.raises(spec.SpecError, match=r"host\[1\]\.bridge = '10.244.1.0/24': overlaps host a's container subnet"):
        multi_spec.loads(_text("two-hosts-routed").replace("10.244.2.", "10.244.1."), "mine.toml")


def test_the_underlay_must_keep_clear_of_the_outside_world() -> None:
    bad = _text("two-hosts-routed").replace('network = "198.51.100.128/25"', 'network = "198.51.100.0/24"')
    bad = bad.replace("198.51.100.129/25", "198.51.100.129/24").replace("198.51.100.130/25", "198.51.100.130/24")
    with pytest.raises(spec.SpecError, match=r"underlay.network = .*holds 198.51.100.1"):
        multi_spec.loads(bad, "mine.toml")


def test_every_cross_host_cause_is_registered() -> None:
    missing = {f.cause for f in CROSS_HOST_FAULTS.values()} - set(CAUSES)
    assert not missing, f"causes the cross-host faults expect but causes.py lacks: {missing}"


# ----------------------------------------------------------------------------- labs


def _suite() -> ModuleType:
    path = ROOT / "suites" / "test_cross_host.py"
    found = importlib.util.spec_from_file_location("netcheck_cross_host_suite", path)
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


SUITE = _suite()


@pytest.fixture(scope="module", params=multi_spec.BUILTIN)
def healthy(request: pytest.FixtureRequest) -> Iterator[MultiLab]:
    if not has_net_admin():
        pytest.skip("builds labs: needs root")
    with MultiLab(multi_spec.builtin(request.param)) as lab:
        yield lab


@needs_root
def test_a_healthy_multi_host_lab_has_no_cross_host_findings(healthy: MultiLab) -> None:
    a, b = (h.name for h in healthy.topology.hosts)
    assert crosshost.diagnose(healthy, a, b).findings == ()


@needs_root
def test_teardown_leaves_nothing_behind() -> None:
    lab = MultiLab(multi_spec.builtin("two-hosts-vxlan")).build()
    assert lab.ledger is not None
    record = lab.ledger.path
    names = [ns.name for ns in lab.namespaces().values()]
    lab.teardown()
    assert not record.exists(), f"run record {record} left"
    assert not [n for n in names if n and os.path.exists(netns_path(n))], "namespaces left"


def _run(test_name: str, lab: MultiLab) -> str:
    test: Callable[..., None] = getattr(SUITE, test_name)
    results: list[ProbeResult] = []
    args = (lab, results.append) if "netcheck_evidence" in test.__code__.co_varnames[: test.__code__.co_argcount] else (lab,)
    with pytest.raises(AssertionError) as exc:
        test(*args)
    return str(exc.value)


@needs_root
@pytest.mark.parametrize("fault", sorted(CROSS_HOST_FAULTS))
def test_cross_host_fault_fails_its_suite_test_with_the_right_top_cause(fault: str) -> None:
    f = CROSS_HOST_FAULTS[fault]
    with MultiLab(multi_spec.builtin(f.topology)) as lab:
        f.inject(lab)
        message = _run(f.suite_test.split("::")[1], lab)
    assert f.message in message, f"fault {fault}: {f.suite_test} failed without saying {f.message!r}:\n{message}"
    assert f"1. [{f.cause}]" in message, f"fault {fault}: expected {f.cause} first:\n{message}"


@pytest.mark.root
def test_both_multi_host_builtins_pass_every_suite(run_suites: Callable[..., pytest.RunResult]) -> None:
    """The acceptance run: every suite, per host and across hosts, on two-hosts-routed and two-hosts-vxlan."""
    result = run_suites(str(ROOT / "suites"), "-v", "--netcheck-topology=two-hosts-routed", "--netcheck-topology=two-hosts-vxlan")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]
    out = result.stdout.str()
    for name in ("two-hosts-routed", "two-hosts-vxlan"):
        assert f"test_underlay_carries_the_packets_as_the_join_declares[{name}] PASSED" in out, out[-2000:]
        for host in ("a", "b"):
            assert f"test_forwarding.py::test_ttl_drops_by_exactly_one_at_the_host[{name}.{host}] PASSED" in out, out[-2000:]


def test_single_host_runs_collect_no_cross_host_test(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(str(ROOT / "suites" / "test_cross_host.py"), "--collect-only", "-q", "--netcheck-topology=seed1", "--netcheck-report=none", "-p", "no:cacheprovider")
    assert "test_cross_host.py::" not in result.stdout.str(), result.stdout.str()


HOLD = """
import sys
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.lab import MultiLab
lab = MultiLab(multi_spec.builtin("two-hosts-vxlan")).build()
print(" ".join(ns.name for ns in lab.namespaces().values()), flush=True)
sys.stdin.readline()
"""


@needs_root
def test_a_killed_multi_host_run_is_cleaned_by_its_records(tmp_path: Path) -> None:
    """SIGKILL after the build: the host labs' records and the join's record name everything; ``netcheck clean`` removes it all."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}, "NETCHECK_RUN_DIR": str(run_dir)}
    child = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert child.stdout is not None
        names = child.stdout.readline().split()
        assert len(names) == 9, names  # two hosts of (host, wan, two containers), and the underlay
        assert len(list(run_dir.glob("*.jsonl"))) == 3, "a record per host lab, and one for the underlay and the join"
    finally:
        child.kill()
        child.wait(timeout=10)
    from hoststate import NETCHECK

    done = subprocess.run([*NETCHECK, "clean"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [n for n in names if os.path.exists(netns_path(n))], f"left after clean: {names}\n{done.stdout}"
    assert not list(run_dir.glob("*.jsonl")), "run records left"


def test_netcheck_validate_reads_a_multi_host_spec_and_names_the_mtu_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from netcheck.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(_text("two-hosts-vxlan").replace("mtu = 1450", "mtu = 1480"))
    assert main(["validate", "two-hosts-vxlan"]) == 0
    assert "2 hosts joined by vxlan, 4 containers, path MTU 1450" in capsys.readouterr().out
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}: join.mtu = 1480: leaves no room for the encapsulation" in capsys.readouterr().err


def test_the_diagram_draws_the_hosts_side_by_side_with_the_underlay_between_them() -> None:
    from netcheck.report.diagram import multihost_view, to_dot

    dot = to_dot(multihost_view(multi_spec.builtin("two-hosts-vxlan")))
    assert "cluster_underlay" in dot and "cluster_host_0" in dot and "cluster_host_1" in dot
    assert "vxlan VNI 42, UDP 4789, MTU 1450" in dot and "198.51.100.129/25" in dot and "10.244.2.20/24" in dot
    assert dot.count('label="veth"];') >= 6  # the underlay to each host, each bridge to its containers


@needs_root
def test_a_learning_overlay_floods_to_the_remote_vtep_and_learns_its_mac() -> None:
    """fdb = "learning": all-zero entries toward every remote VTEP, no neighbours given; the first exchange teaches the fdb."""
    t = multi_spec.loads(_text("two-hosts-vxlan").replace('fdb = "unicast"', 'fdb = "learning"'), "learning.toml")
    with MultiLab(t) as lab:
        SUITE.test_every_container_reaches_every_container_on_the_other_host_with_its_source_kept(lab, lambda _r: None)
        SUITE.test_underlay_carries_the_packets_as_the_join_declares(lab, lambda _r: None)
        assert lab.plan is not None
        a = lab.plan.hosts[0]
        fdb = lab.hosts["a"].host.run(["bridge", "fdb", "show", "dev", a.vxlan or ""]).stdout.decode()
        assert "00:00:00:00:00:00 dst 198.51.100.130" in fdb and "02:6e:63:00:00:02 dst 198.51.100.130" in fdb, fdb
        assert crosshost.diagnose(lab, "a", "b").findings == ()


# ----------------------------------------------------------------------------- the multi-host spec's declarations, docs and schema


def _multi_schema() -> dict[str, object]:
    import json

    schema: dict[str, object] = json.loads((ROOT / "netcheck" / "topologies" / "netcheck-multihost.schema.json").read_text())
    return schema


def test_the_multi_host_keys_are_declared_once_and_docs_schema_and_loader_agree() -> None:
    import re

    from netcheck import spec_docs

    assert spec_docs.main(["--check"]) == 0, "run: python -m netcheck.spec_docs"
    declared = spec_docs.declared_keys(spec_docs.multi_walk())
    assert {"name", "underlay.network", "join.kind", "join.vni", "host[].name", "host[].underlay", "host[].node", "host[].nic", "host[].container"} <= declared
    headings = {f"### {spec_docs._heading(path, table)}": path for path, table in spec_docs.multi_walk()}
    docs, path = set(), None
    block = (ROOT / "docs" / "multihost.md").read_text().split(spec_docs.MULTI_BEGIN, 1)[1].split(spec_docs.MULTI_END, 1)[0]
    for line in block.splitlines():
        if line.startswith("### "):
            assert line in headings, f"docs/multihost.md has a table the loader does not declare: {line}"
            path = headings[line]
        elif (m := re.match(r"\| `([A-Za-z0-9_]+)` \|", line)) and path is not None:
            docs.add(f"{path}.{m.group(1)}".lstrip("."))
    assert docs == declared, f"docs only: {sorted(docs - declared)}; loader only: {sorted(declared - docs)}"
    assert set(schema_keys(_multi_schema())) == spec_docs.declared_keys(spec_docs.multi_walk(whole=True))


@pytest.mark.parametrize("path", sorted([*(ROOT / "netcheck" / "topologies" / "multihost").glob("*.toml"), *(ROOT / "examples" / "multihost").glob("*.toml")]),
                         ids=lambda p: p.name)
def test_a_shipped_multi_host_spec_fits_the_schema_and_loads(path: Path) -> None:
    import tomllib

    import jsonschema

    errors = list(jsonschema.Draft7Validator(_multi_schema()).iter_errors(tomllib.loads(path.read_text())))
    assert not errors, "\n".join(f"{path}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    multi_spec.load(path)


@pytest.mark.parametrize("table", ["", "underlay", "join", "host[0]"])
def test_an_unknown_key_in_a_multi_host_table_is_refused_by_name(table: str) -> None:
    import tomllib

    data = tomllib.loads(_text("two-hosts-vxlan"))
    node: Any = data if not table else data["host"][0] if table == "host[0]" else data[table]
    node["not_a_key"] = 1
    with pytest.raises(spec.SpecError) as exc:
        multi_spec._parse(data, "mine.toml")
    want = f"{table}.not_a_key".lstrip(".")
    assert any(p.key == want and p.problem == "unknown key" and "known here" in p.fix for p in exc.value.problems), str(exc.value)


def test_a_nic_needs_a_node() -> None:
    text = _text("two-hosts-routed").replace('name = "b"', 'name = "b"\nnic = "eth1"')
    with pytest.raises(spec.SpecError) as exc:
        multi_spec.loads(text, "mine.toml")
    assert (exc.value.key, exc.value.value) == ("host[1].nic", "eth1") and "add node" in exc.value.fix, str(exc.value)
    t = multi_spec.loads(text.replace('nic = "eth1"', 'nic = "eth1"\nnode = "ssh=root@198.51.100.12"'), "mine.toml")
    assert (t.hosts[1].node, t.hosts[1].nic) == ("ssh=root@198.51.100.12", "eth1")
