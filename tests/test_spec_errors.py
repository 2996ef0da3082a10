"""Invalid specs fail with a message that names the file, the key, the problem and the fix.

Each file in ``tests/specs/invalid/`` is a built-in seed with one thing wrong. Its first line says
what the error must say::

    # expect: <key path> | <substring of the problem> | <substring of the fix>

Every problem is reported at once, so a file with more than one mistake names each further one
on a line of its own, and the loader must report exactly those::

    # also: <key path> | <substring of the problem>

Loading a spec is pure: it must never create a kernel object, so each test also compares
``/run/netns`` and netcheck's run directory before and after.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netcheck import spec
from netcheck.activation import skip_for_missing_tool
from netcheck.naming import TAG_PREFIX

INVALID = Path(__file__).parent / "specs" / "invalid"
CORPUS = sorted(INVALID.glob("*.toml"))
KERNEL_DIRS = ("/run/netns", os.environ.get("NETCHECK_RUN_DIR", "/run/netcheck"))


@dataclass(frozen=True)
class Expect:
    key: str
    problem: str
    fix: str
    also: tuple[tuple[str, str], ...] = ()  # (key, problem) of each further mistake in the file


def expectation(path: Path) -> Expect:
    lines = path.read_text("utf-8").splitlines()
    first = lines[0]
    assert first.startswith("# expect: "), f"{path}: the first line must be '# expect: KEY | PROBLEM | FIX', not {first!r}"
    key, problem, fix = (part.strip() for part in first.removeprefix("# expect: ").split(" | "))
    also = []
    for line in lines[1:]:
        if not line.startswith("# also: "):
            break
        other_key, other_problem = (part.strip() for part in line.removeprefix("# also: ").split(" | "))
        also.append((other_key, other_problem))
    return Expect(key, problem, fix, tuple(also))


def kernel_state() -> dict[str, list[str]]:
    """Names under the directories where kernel objects and run records appear."""
    return {d: sorted(os.listdir(d)) for d in KERNEL_DIRS if os.path.isdir(d)}


def another_process_run(name: str) -> bool:
    """Does this namespace or run record belong to a run of another process (another session's lab on this machine)?"""
    tag = name.removesuffix(".jsonl").split("-", 1)[0]
    record = Path(KERNEL_DIRS[1]) / f"{tag}.jsonl"
    try:
        with record.open("rb") as f:
            pid = json.loads(f.readline()).get("pid")
    except (OSError, ValueError):
        return False
    return isinstance(pid, int) and pid != os.getpid()


def netchecks(name: str) -> bool:
    """Is this a name netcheck gives (TAG-label, TAG.jsonl; every object it makes carries its tag)? A tool's own
    (Podman's netns-UUID, made by a lab of another test worker) never comes from loading a spec."""
    tag = name.removesuffix(".jsonl").split("-", 1)[0]
    return tag.startswith(TAG_PREFIX) and tag.isalnum()


def appeared(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """What netcheck made in between, less what other processes' runs made meanwhile."""
    new = [f"{d}/{n}" for d, names in after.items() for n in sorted(set(names) - set(before.get(d, [])))]
    return [path for path in new if netchecks(Path(path).name) and not another_process_run(Path(path).name)]


def test_appeared_ignores_only_other_processes_runs() -> None:
    mine = f"nc{os.getpid():x}"  # no such record: as if this process had made a namespace without one
    assert appeared({"/run/netns": []}, {"/run/netns": [f"{mine}-host"]}) == [f"/run/netns/{mine}-host"]
    assert appeared({"/run/netns": ["a"]}, {"/run/netns": []}) == []
    assert appeared({"/run/netns": []}, {"/run/netns": ["netns-502d082d-2318-066c-7c1a-a9dbade1a181"]}) == [], "a tool's namespace (Podman's) is not netcheck's"


@pytest.fixture
def untouched_kernel() -> Iterator[None]:
    """Fails the test if this process made anything in /run/netns or the run directory while it ran.

    Other sessions' labs come and go on this machine meanwhile: a name whose run record names
    another process is theirs.
    """
    before = kernel_state()
    yield
    assert not appeared(before, kernel_state()), "loading a spec must never touch the kernel"


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 16, f"expected at least 16 invalid specs in {INVALID}, found {len(CORPUS)}"


@pytest.mark.usefixtures("untouched_kernel")
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_invalid_spec_is_refused(path: Path) -> None:
    want = expectation(path)
    with pytest.raises(spec.SpecError) as info:
        spec.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), f"the message must start with the file: {message}"
    assert f": {want.key} = " in message, f"expected key {want.key!r} in: {message}"
    assert "Fix:" in message, f"no 'Fix:' in: {message}"
    problem, fix = message.split(". Fix: ", 1)
    assert want.problem in problem, f"expected problem {want.problem!r} in: {message}"
    assert want.fix in fix, f"expected fix {want.fix!r} in: {message}"
    err = info.value
    assert (err.source, err.key) == (str(path), want.key)
    assert err.problem and err.fix
    # Every mistake is reported, and nothing else: one mistake is one error, not a cascade.
    got = [(p.key, p.problem) for p in err.problems]
    assert len(got) == 1 + len(want.also), f"expected {1 + len(want.also)} problem(s), got {len(got)}:\n{message}"
    for (key, problem), (want_key, want_problem) in zip(got[1:], want.also, strict=True):
        assert key == want_key and want_problem in problem, f"expected {want_key} ({want_problem}), got {key} ({problem})"
    assert message.splitlines() == [str(p) for p in err.problems], "str() must give one line per problem"
    for p in err.problems:
        assert p.source == str(path) and p.fix, p


def test_corpus_files_differ() -> None:
    bodies = ["\n".join(line for line in p.read_text("utf-8").splitlines() if not line.startswith("#")) for p in CORPUS]
    assert len(set(bodies)) == len(bodies), "two corpus files hold the same spec"


@pytest.mark.usefixtures("untouched_kernel")
def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(spec.SpecError, match=r"nope\.toml: \(file\) = .*cannot read the file.*Fix: check the path"):
        spec.load(missing)


@pytest.mark.usefixtures("untouched_kernel")
def test_non_utf8_file_is_a_spec_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(spec.SpecError, match=r"is not UTF-8 text\. Fix: save the spec as UTF-8"):
        spec.load(bad)


@pytest.mark.usefixtures("untouched_kernel")
@pytest.mark.parametrize("name", spec.BUILTIN)
def test_builtin_loads(name: str) -> None:
    t = spec.builtin(name)
    assert isinstance(t, spec.Topology)
    assert t.name == name
    assert t.containers, f"built-in {name} has no containers"
    assert spec.resolve(name) == t


@pytest.mark.parametrize("name", spec.BUILTIN)
def test_builtin_round_trips(name: str) -> None:
    """Loading the built-in twice, or its packaged file by path, gives the same topology."""
    from importlib import resources

    t = spec.builtin(name)
    assert spec.builtin(name) == t
    text = resources.files("netcheck.topologies").joinpath(f"{name}.toml").read_text("utf-8")
    again = spec.loads(text, t.source)
    assert again == t
    assert spec.as_mapping(again) == spec.as_mapping(t)


def _cli_has_validate() -> bool:
    try:
        cli = importlib.import_module("netcheck.cli")
    except Exception:  # noqa: BLE001 - a half-written cli.py is "not there yet"
        return False
    if hasattr(cli, "validate") or hasattr(cli, "_validate"):
        return True
    build = getattr(cli, "build_parser", None)
    return build is not None and "validate" in build().format_help()


def test_cli_validate_reports_invalid_spec() -> None:
    if not _cli_has_validate():
        pytest.skip("netcheck/cli.py has no validate command yet")
    exe = Path(sys.executable).with_name("netcheck")
    if not exe.exists():
        skip_for_missing_tool(f"{exe} is not installed (pip install -e .)")
    path = INVALID / "publish_unknown_container.toml"
    want = expectation(path)
    before = kernel_state()
    done = subprocess.run([str(exe), "validate", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert "Traceback" not in done.stderr + done.stdout
    assert str(path) in done.stderr
    assert f"{want.key} = " in done.stderr and want.problem in done.stderr and "Fix:" in done.stderr
    assert not appeared(before, kernel_state())
