"""The ``netcheck`` command: faults, causes, --version, --json, clean TAG / --kept, a closed pipe.

Each test runs the installed command (``.venv/bin/netcheck``) in a subprocess, as a user would.
The clean tests use a private run directory (NETCHECK_RUN_DIR) holding hand-made run records
whose only objects are folders, so they need no root; the tests marked ``root`` keep a real lab.
"""

from __future__ import annotations

import ast
import fcntl
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import netcheck
from netcheck.diagnose.causes import CAUSES
from netcheck.faults import FAULTS

REPO = Path(__file__).resolve().parents[1]
NETCHECK = Path(sys.executable).with_name("netcheck")
DATA = REPO / "tests" / "data"


def netcheck_cmd(*args: str, run_dir: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if not NETCHECK.exists():
        pytest.skip(f"{NETCHECK} is not installed (pip install -e .)")
    env = {**os.environ, **({"NETCHECK_RUN_DIR": str(run_dir)} if run_dir is not None else {})}
    return subprocess.run([str(NETCHECK), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env, stdin=subprocess.DEVNULL)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    __tracebackhide__ = True
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


# ----------------------------------------------------------------------------- --version, faults, causes


def test_version_is_the_package_version() -> None:
    done = netcheck_cmd("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["netcheck", netcheck.__version__]
    assert importlib.metadata.version("pytest-netcheck") == netcheck.__version__


def test_faults_lists_each_fault_what_it_breaks_and_the_test_that_catches_it() -> None:
    done = netcheck_cmd("faults")
    assert done.returncode == 0, done.stderr
    for f in FAULTS.values():
        assert re.search(rf"^{re.escape(f.name)}\s+breaks: {re.escape(f.summary)}$", done.stdout, re.M), f"{f.name} is not listed:\n{done.stdout}"
        assert f"caught by: {f.suite_test} (on {f.topology}), diagnosed as [{f.cause}]" in done.stdout

    rows = json.loads(netcheck_cmd("faults", "--json").stdout)
    assert [r["name"] for r in rows] == sorted(FAULTS)
    for r in rows:
        # The command to try it names a suite test that exists, in the suites the install serves.
        path, _, test = r["try"].split()[1].partition("::")
        assert Path(path).is_file() and Path(path).parent == REPO / "suites", r["try"]
        assert re.search(rf"^def {re.escape(test)}\(", Path(path).read_text(), re.M), f"{r['name']}: {path} has no test {test}"


def _rule_causes() -> set[str]:
    """The cause ids the diagnosis rules put in their findings (the first argument of Finding)."""
    ids = set()
    nodes = [n for f in ("rules.py", "dns.py", "crosshost.py", "lifecycle.py") for n in ast.walk(ast.parse((REPO / "netcheck" / "diagnose" / f).read_text()))]
    for node in nodes:
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding":
            first = node.args[0] if node.args else next(k.value for k in node.keywords if k.arg == "cause")
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), f"rules.py:{node.lineno}: a Finding whose cause is not a literal id"
            ids.add(first.value)
    return ids


def test_causes_registry_holds_every_cause_the_rules_name_and_the_docs_table_agrees() -> None:
    used = _rule_causes()
    assert used, "no Finding found in rules.py"
    assert not used - set(CAUSES), f"causes the rules name but netcheck/diagnose/causes.py lacks: {sorted(used - set(CAUSES))}"
    assert not set(CAUSES) - used, f"causes listed that no rule names any more: {sorted(set(CAUSES) - used)}"
    assert {f.cause for f in FAULTS.values()} <= set(CAUSES)
    docs = (REPO / "docs" / "diagnosis.md").read_text()
    table = docs.split("## Causes", 1)[1].split("\n## ", 1)[0]
    documented = {m for row in table.splitlines() if row.startswith("| `") for m in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert documented == set(CAUSES) - {"rule_failed"}, f"docs/diagnosis.md lacks {sorted(set(CAUSES) - documented - {'rule_failed'})}, has extra {sorted(documented - set(CAUSES))}"


def test_causes_command_lists_every_cause_with_how_it_is_recognised() -> None:
    done = netcheck_cmd("causes")
    assert done.returncode == 0, done.stderr
    for c in CAUSES.values():
        assert f"[{c.id}] {c.means}\n    recognised by: {c.recognised}" in done.stdout
    rows = json.loads(netcheck_cmd("causes", "--json").stdout)
    assert [r["cause"] for r in rows] == list(CAUSES)
    assert next(r for r in rows if r["cause"] == "ip_forward_off")["faults"] == ["ip-forward-off"]


# ----------------------------------------------------------------------------- --json


def test_validate_json_gives_one_object_per_file() -> None:
    bad = REPO / "tests" / "specs" / "invalid" / "publish_unknown_container.toml"
    done = netcheck_cmd("validate", "--json", "seed1", str(bad))
    assert done.returncode == 2, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    assert rows[0] == {"file": "seed1", "ok": True, "topology": "seed1", "containers": 2}
    assert rows[1]["file"] == str(bad) and rows[1]["ok"] is False and str(bad) in rows[1]["error"] and "Fix:" in rows[1]["error"]
    assert done.stderr == ""


def test_diff_json_lists_each_changed_check() -> None:
    old, new = DATA / "results-pass.json", DATA / "results-fail.json"
    text = netcheck_cmd("diff", str(old), str(new))
    done = netcheck_cmd("diff", "--json", str(old), str(new))
    assert done.returncode == text.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["old"]["file"] == str(old) and data["new"]["file"] == str(new)
    broke = [c for c in data["changes"] if c["kind"] == "broke"]
    assert broke, data
    for c in data["changes"]:
        assert f"{c['kind'].upper():<8} {c['nodeid']}" in text.stdout  # the same changes as the text
    missing = netcheck_cmd("diff", "--json", str(old), "/nonexistent.json")
    assert missing.returncode == 2 and "error:" in missing.stderr and missing.stdout == ""
    no_traceback(missing)


# ----------------------------------------------------------------------------- a closed pipe


@pytest.mark.parametrize("args", [["faults"], ["causes"], ["validate", "seed1", "seed2"], ["--help"]], ids=" ".join)
def test_a_closed_pipe_gives_no_traceback(args: list[str]) -> None:
    """``netcheck faults | head -1``: the reader is gone before netcheck writes."""
    if not NETCHECK.exists():
        pytest.skip(f"{NETCHECK} is not installed (pip install -e .)")
    proc = subprocess.Popen([str(NETCHECK), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the first write fails with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 1


# ----------------------------------------------------------------------------- clean


def _record(run_dir: Path, tag: str, *, kept: bool, objects: Path) -> Path:
    """A hand-made run record whose one object is a folder (``clean`` removes it by the record)."""
    obj = objects / tag
    obj.mkdir()
    lines = [{"kind": "run", "tag": tag, "pid": 1, "started": 0.0, "topology": "seed1", "mode": "sandbox"}, {"kind": "dir", "path": str(obj)}]
    if kept:
        lines.append({"kind": "kept", "at": 0.0})
    (run_dir / f"{tag}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return obj


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Path]]]:
    """A run directory with a crashed run, two kept labs and a live run (its record locked)."""
    run_dir, objects = tmp_path / "run", tmp_path / "objects"
    run_dir.mkdir()
    objects.mkdir()
    made = {
        "nccrsh": _record(run_dir, "nccrsh", kept=False, objects=objects),
        "nckep1": _record(run_dir, "nckep1", kept=True, objects=objects),
        "nckep2": _record(run_dir, "nckep2", kept=True, objects=objects),
        "nclive": _record(run_dir, "nclive", kept=False, objects=objects),
    }
    fd = os.open(run_dir / "nclive.jsonl", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live run holds its record's lock
    try:
        yield run_dir, made
    finally:
        os.close(fd)


def _left(made: dict[str, Path]) -> set[str]:
    return {tag for tag, obj in made.items() if obj.exists()}


def test_plain_clean_removes_crashed_runs_and_lists_kept_labs_without_removing_them(runs: tuple[Path, dict[str, Path]]) -> None:
    run_dir, made = runs
    done = netcheck_cmd("clean", run_dir=run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _left(made) == {"nckep1", "nckep2", "nclive"}
    for tag in ("nckep1", "nckep2"):
        assert f"kept lab {tag} (topology seed1" in done.stdout and f"remove it with: netcheck clean {tag}" in done.stdout, done.stdout
    assert "nclive" not in done.stdout
    assert sorted(p.stem for p in run_dir.glob("*.jsonl")) == ["nckep1", "nckep2", "nclive"]


def test_clean_tag_removes_that_run_only(runs: tuple[Path, dict[str, Path]]) -> None:
    run_dir, made = runs
    done = netcheck_cmd("clean", "nckep2", run_dir=run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _left(made) == {"nccrsh", "nckep1", "nclive"}
    assert not (run_dir / "nckep2.jsonl").exists()


def test_clean_kept_removes_the_kept_labs_too_but_not_live_runs(runs: tuple[Path, dict[str, Path]]) -> None:
    run_dir, made = runs
    dry = netcheck_cmd("clean", "--kept", "--dry-run", run_dir=run_dir)
    assert dry.returncode == 0 and _left(made) == set(made), dry.stdout + dry.stderr
    assert "nckep1" in dry.stdout and "nckep2" in dry.stdout
    done = netcheck_cmd("clean", "--kept", run_dir=run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _left(made) == {"nclive"}


def test_clean_refuses_a_live_or_unknown_tag_unless_all(runs: tuple[Path, dict[str, Path]]) -> None:
    run_dir, made = runs
    live = netcheck_cmd("clean", "nclive", run_dir=run_dir)
    assert live.returncode == 2 and "nclive" in live.stderr and "still running" in live.stderr and "--all" in live.stderr, live.stderr
    unknown = netcheck_cmd("clean", "ncnope", run_dir=run_dir)
    assert unknown.returncode == 2 and "no run record for ncnope" in unknown.stderr and "nckep1" in unknown.stderr, unknown.stderr
    for done in (live, unknown):
        no_traceback(done)
    assert _left(made) == set(made)
    forced = netcheck_cmd("clean", "--all", "nclive", run_dir=run_dir)
    assert forced.returncode == 0 and "warning" in forced.stderr and "nclive" in forced.stderr, forced.stdout + forced.stderr
    assert _left(made) == {"nccrsh", "nckep1", "nckep2"}


def test_clean_all_removes_everything(runs: tuple[Path, dict[str, Path]]) -> None:
    run_dir, made = runs
    done = netcheck_cmd("clean", "--all", run_dir=run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _left(made) == set() and not list(run_dir.glob("*.jsonl"))


# ----------------------------------------------------------------------------- doctor, on real labs (root)


@pytest.fixture
def seed1_lab() -> Iterator[object]:
    from netcheck import spec
    from netcheck.lab import Lab, has_net_admin

    if not has_net_admin():
        pytest.skip("needs root to build network namespaces")
    with Lab(spec.builtin("seed1")) as lab:
        yield lab


@pytest.mark.root
def test_doctor_topology_checks_namespaces_against_the_intent(seed1_lab) -> None:
    """Namespaces with ip_forward=0 (as another tool might leave them): the spec says 1."""
    lab = seed1_lab
    lab.host.set_sysctl("net.ipv4.ip_forward", 0)
    targets = [f"{c.name}={lab.container_ns(c.name).name}" for c in lab.topology.containers]
    done = netcheck_cmd("doctor", "--json", "--topology", "seed1", "--host-netns", lab.host.name, *targets)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["findings"] and data["findings"][0]["cause"] == "ip_forward_off", data["findings"]
    assert "checked against" in data["title"] and data["traffic_sent"] is False and data["probes"] == []
    text = netcheck_cmd("doctor", "--topology", "seed1", "--host-netns", lab.host.name, *targets)
    assert text.returncode == 1 and "1. [ip_forward_off] host: net.ipv4.ip_forward = 0" in text.stdout, text.stdout + text.stderr
    stray = netcheck_cmd("doctor", "--topology", "seed1", "--host-netns", lab.host.name, f"nosuch={lab.container_ns('netns0').name}")
    assert stray.returncode == 2 and "match no container of the spec" in stray.stderr and "CONTAINER=NETNS" in stray.stderr, stray.stderr
    bad = netcheck_cmd("doctor", "--topology", "/nonexistent.toml", "--host-netns", lab.host.name, *targets)
    assert bad.returncode == 2 and "--topology: /nonexistent.toml" in bad.stderr, bad.stderr
    for d in (stray, bad):
        no_traceback(d)


@pytest.mark.root
def test_a_kept_lab_keeps_its_services_and_clean_tag_removes_it(tmp_path: Path) -> None:
    """``pytest --netcheck-keep``, and the run ends: plain clean lists the lab and leaves it, the
    doctor finds it healthy (its services still answer), ``clean TAG`` removes it, services too."""
    from netcheck.lab import has_net_admin
    from netcheck.ledger import NetnsEntry, ProcessEntry, process_starttime, read_record

    if not has_net_admin():
        pytest.skip("needs root to build network namespaces")
    env = {**os.environ, "NETCHECK_RUN_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "suites" / "test_veth.py"), "--netcheck-topology", "seed1", "--netcheck-keep",
                          "--netcheck-report", "none", "-q", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300, env=env, check=False)
    try:
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        (record,) = tmp_path.glob("*.jsonl")
        tag = record.stem
        assert f"remove it afterwards with: netcheck clean {tag}" in run.stderr + run.stdout
        _header, entries, kept = read_record(record)
        assert kept
        names = [e.name for e in entries if isinstance(e, NetnsEntry)]
        (server,) = [e for e in entries if isinstance(e, ProcessEntry)]
        assert process_starttime(server.pid) == server.starttime, "the kept lab's service process is not running"

        listed = netcheck_cmd("clean", run_dir=tmp_path)
        assert listed.returncode == 0 and f"kept lab {tag}" in listed.stdout, listed.stdout + listed.stderr
        assert all(os.path.exists(f"/run/netns/{n}") for n in names), "plain clean removed a kept lab"

        doctor = netcheck_cmd("doctor", "--json", tag, run_dir=tmp_path)
        data = json.loads(doctor.stdout)
        assert tag in data["title"] and "kept" in data["title"]
        assert doctor.returncode == 0 and not data["findings"], f"a healthy kept lab has findings (no_listener: its services were lost): {data['findings']}"

        proc = subprocess.Popen([str(NETCHECK), "doctor", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # netcheck doctor TAG | head, with head gone at once
        err = proc.stderr.read().decode()
        proc.wait(60)
        assert "Traceback" not in err, err

        removed = netcheck_cmd("clean", tag, run_dir=tmp_path)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert f"remove process {server.pid}" in removed.stdout
        assert not any(os.path.exists(f"/run/netns/{n}") for n in names)
        assert process_starttime(server.pid) != server.starttime, "clean left the service process running"
        assert not list(tmp_path.glob("*.jsonl"))
    finally:
        netcheck_cmd("clean", "--kept", run_dir=tmp_path)
