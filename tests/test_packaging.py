"""The set-up files: bootstrap.sh, .ci/run, tox.ini, the Vagrantfile and pyproject.toml, and the wheel.

None of these tests needs root, installs anything or touches the network, except the one
marked root and slow: it builds a wheel of the repository, installs it into a fresh
virtualenv (dependencies from the package index, through pip's cache) and runs the shipped
suites there, as a user who never cloned the repository would (about 1 to 2 minutes).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from netcheck.activation import skip_for_missing_tool

REPO = Path(__file__).resolve().parent.parent
BOOTSTRAP = REPO / "bootstrap.sh"
CI_RUN = REPO / ".ci" / "run"
NOBODY = 65534


def _run(cmd: list[str], cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


# ---------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("script", [BOOTSTRAP, CI_RUN], ids=["bootstrap.sh", ".ci/run"])
def test_script_parses_and_is_executable(script: Path) -> None:
    assert script.is_file(), f"{script} is missing"
    result = _run(["bash", "-n", str(script)])
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable (chmod +x, and commit the mode)"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


def test_ci_run_is_strict_and_runs_the_whole_test_suite() -> None:
    text = CI_RUN.read_text()
    assert "set -euo pipefail" in text
    assert "exec bash bootstrap.sh tests" in text


def test_bootstrap_usage_needs_no_root() -> None:
    helped = _run(["bash", str(BOOTSTRAP), "--help"])
    assert helped.returncode == 0, helped.stderr
    for mode in ("suites", "tests", "--install-only"):
        assert mode in helped.stdout

    for args in ([], ["no-such-mode"]):
        bad = _run(["bash", str(BOOTSTRAP), *args])
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert "usage: sudo bash bootstrap.sh" in bad.stderr


def _as_nobody(cmd: list[str]) -> list[str]:
    """``cmd`` run as an unprivileged user: directly when we are not root, else through setpriv."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_for_missing_tool("running as root and setpriv (util-linux) is not installed, so no unprivileged user can be had")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


@pytest.mark.parametrize("mode", ["tests", "suites", "--install-only"])
def test_bootstrap_refuses_non_root(mode: str) -> None:
    probe = _run(_as_nobody(["test", "-r", str(BOOTSTRAP)]))
    if probe.returncode != 0:
        pytest.skip(f"an unprivileged user cannot read {BOOTSTRAP} here: {probe.stderr.strip()}")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    result = _run(_as_nobody(["bash", str(BOOTSTRAP), mode]), cwd=Path("/"), env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"run as root, e.g. sudo bash bootstrap.sh {mode}" in result.stderr
    assert "apt-get" not in result.stdout, "bootstrap.sh went on to install before refusing"


# ---------------------------------------------------------------- tox.ini


def test_tox_ini_envs() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    base = tox["testenv"]
    assert base.get("skip_install", "").strip() == "false"
    assert base.get("extras", "").strip() == "dev"
    commands = {env: tox[f"testenv:{env}"]["commands"] for env in ("lint", "type", "unit", "suites")}
    assert "ruff check" in commands["lint"]
    assert "mypy" in commands["type"]
    assert 'pytest tests -m "not root"' in commands["unit"]
    assert "pytest suites" in commands["suites"]


# ---------------------------------------------------------------- Vagrantfile


def test_vagrantfile_settings() -> None:
    text = (REPO / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    assert "cpus = 2" in text
    assert "memory = 4096" in text
    assert "cd /vagrant && bash bootstrap.sh --install-only" in text


def test_vagrant_validate(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        skip_for_missing_tool("vagrant is not installed (Debian: apt-get install vagrant)")
    # Validate a copy, so that vagrant's .vagrant/ lands in tmp_path; a private
    # VAGRANT_HOME and no version or box checks keep it off the network.
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
    }
    result = _run([vagrant, "validate", "--ignore-provider"], cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


# ---------------------------------------------------------------- pyproject.toml


def test_pyproject_entry_points() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"]["netcheck"] == "netcheck.plugin"
    assert "netcheck" in project["scripts"]
    assert project["scripts"]["netcheck"].startswith("netcheck.cli:")
    assert "dev" in project["optional-dependencies"]
    dev = " ".join(project["optional-dependencies"]["dev"])
    for tool in ("ruff", "mypy", "hypothesis", "pytest-html"):
        assert tool in dev


def test_distribution_metadata() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pytest-netcheck", "on PyPI, netcheck is another project: the distribution is pytest-netcheck"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert "Framework :: Pytest" in project["classifiers"] and "Typing :: Typed" in project["classifiers"]
    assert project["dynamic"] == ["version"], "the version is written once, as netcheck.__version__"
    for url in project.get("urls", {}).values():
        assert url.startswith("https://"), url


def test_dev_tools_are_pinned_to_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for req in project["optional-dependencies"]["dev"]:
        assert ">=" in req and "<" in req.replace("<=", ""), f"{req}: pin the dev tool to a range known to work (>=tested,<next breaking)"


def _package_dirs() -> dict[str, Path]:
    """Every package under netcheck/ by its import name: folders holding Python files."""
    out = {}
    for d in [REPO / "netcheck", *sorted(p for p in (REPO / "netcheck").rglob("*") if p.is_dir())]:
        if d.name == "__pycache__" or not any(d.glob("*.py")):
            continue
        out[".".join(d.relative_to(REPO).parts)] = d
    return out


def test_package_list_names_every_package_and_maps_the_suites() -> None:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set(_package_dirs())
    assert not found - listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}: add them, or they are left out of the wheel"
    assert listed - found == {"netcheck.suites"}, f"pyproject.toml lists packages that do not exist: {sorted(listed - found - {'netcheck.suites'})}"
    assert tool["package-dir"] == {"netcheck.suites": "suites"}
    assert (REPO / "suites" / "__init__.py").is_file()
    assert "py.typed" in tool["package-data"]["netcheck"] and (REPO / "netcheck" / "py.typed").is_file()


def test_editable_install_serves_the_clones_suites_by_pyargs(tmp_path: Path) -> None:
    """``pip install -e .`` maps netcheck.suites to suites/: ``pytest --pyargs netcheck.suites`` works from anywhere."""
    import sys

    where = _run([sys.executable, "-c", "import netcheck.suites; print(netcheck.suites.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    if not where.stdout.startswith(str(REPO)):
        pytest.skip(f"this virtualenv holds a non-editable install of netcheck ({where.stdout.strip()}); pip install -e . to test the clone's mapping")
    assert Path(where.stdout.strip()) == REPO / "suites" / "__init__.py"
    collected = _run([sys.executable, "-m", "pytest", "--pyargs", "netcheck.suites", "--collect-only", "-q", "-p", "no:cacheprovider", "--netcheck-report", "none"], cwd=tmp_path)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert re.search(r"^\d+(/\d+)? tests collected", collected.stdout, re.M) and "test_dnat.py::test_published_port_reached_from_outside" in collected.stdout, collected.stdout[-2000:]


# ---------------------------------------------------------------- bootstrap.sh: what each mode installs

TOOLS = ("containernetworking-plugins", "netavark", "podman", "runc", "aardvark-dns", "docker.io", "busybox-static", "chromium")


def _listed(*args: str, path: str | None = None) -> dict[str, str]:
    env = {"PATH": path or os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    done = _run(["bash", str(BOOTSTRAP), *args, "--list-packages"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def test_bootstrap_suites_installs_only_what_the_suites_need() -> None:
    suites = _listed("suites")
    assert {"python3-venv", "iproute2", "iptables", "nftables", "graphviz"} <= set(suites)
    assert not set(TOOLS) & set(suites), f"bootstrap.sh suites would install the other tools: {sorted(set(TOOLS) & set(suites))}"
    for args in (["tests"], ["suites", "--with-tools"], ["--with-tools", "--install-only"]):
        listed = _listed(*args)
        assert set(TOOLS) <= set(listed) and set(suites) <= set(listed), (args, listed)


def test_bootstrap_takes_docker_for_present_only_with_its_engine(tmp_path: Path) -> None:
    """A fresh machine has a Docker client in /usr/local/bin and no engine: docker.io is still missing."""
    client = tmp_path / "client"
    client.mkdir()
    (client / "docker").write_text("#!/bin/sh\necho 'Docker version 0 (client only)'\n")
    (client / "docker").chmod(0o755)
    assert _listed("tests", path=f"{client}:/usr/bin:/bin")["docker.io"] == "missing"
    engine = tmp_path / "engine"
    engine.mkdir()
    for name in ("dockerd", "containerd"):
        (engine / name).write_text("#!/bin/sh\nexit 0\n")
        (engine / name).chmod(0o755)
    assert _listed("tests", path=f"{engine}:{client}:/usr/bin:/bin")["docker.io"] == "present"


# ---------------------------------------------------------------- the wheel, installed


def _copy_sources(dest: Path) -> Path:
    """The repository's sources, without the virtualenv, caches, reports and build output."""
    skip = shutil.ignore_patterns(".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "reports", ".vagrant")
    shutil.copytree(REPO, dest, ignore=skip)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (no system site-packages) with the wheel built from this repository."""
    import sys

    base = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(base / "src")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)], timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((base / "dist").glob("pytest_netcheck-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert made.returncode == 0, made.stderr
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    done = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])], timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


@pytest.mark.root
@pytest.mark.slow
def test_wheel_ships_the_suites_and_they_pass_from_a_fresh_virtualenv(installed: Path, tmp_path: Path) -> None:
    from netcheck.lab import has_net_admin

    if not has_net_admin():
        pytest.skip("needs root to build network namespaces")
    py = str(installed / "bin" / "python")
    where = _run([py, "-c", "import netcheck, netcheck.suites; print(netcheck.__file__); print(netcheck.suites.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed)) for line in where.stdout.splitlines()[:2]), f"not imported from the wheel:\n{where.stdout}"
    files = _run([py, "-c", "from importlib import resources as r; print(r.files('netcheck').joinpath('py.typed').is_file())"], cwd=tmp_path)
    assert files.stdout.strip() == "True", files.stdout + files.stderr
    # Run where no repository is: the suites come from the installed package alone.
    argv = [str(installed / "bin" / "pytest"), "--pyargs", "netcheck.suites", "-p", "no:cacheprovider", "--netcheck-report", "none", "-q"]
    run = _run(argv, cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 50, f"too few suite tests ran from the wheel:\n{out[-2000:]}"
    version = _run([str(installed / "bin" / "netcheck"), "--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("netcheck "), version.stdout + version.stderr


@pytest.mark.root
@pytest.mark.slow
def test_the_worked_example_runs_outside_the_repository_and_can_fail(installed: Path, tmp_path: Path) -> None:
    """docs/api.md's example, copied into a folder of its own, against the installed package."""
    from netcheck.lab import has_net_admin

    if not has_net_admin():
        pytest.skip("needs root to build network namespaces")
    pytest_bin = str(installed / "bin" / "pytest")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    fixtures = _run([pytest_bin, "--fixtures", "-p", "no:cacheprovider"], cwd=tmp_path, env=env)
    assert "netcheck_lab" in fixtures.stdout, "the installed plugin does not offer the netcheck_* fixtures the example is written against"
    shutil.copy(REPO / "examples" / "test_my_network.py", tmp_path / "test_my_network.py")
    argv = [pytest_bin, "test_my_network.py", "-p", "no:cacheprovider", "--netcheck-report", "none", "-q"]
    run = _run(argv, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0 and "4 passed" in run.stdout, (run.stdout + run.stderr)[-4000:]
    broken = _run([*argv, "--netcheck-fault", "ip-forward-off"], cwd=tmp_path, env=env, timeout=600)
    out = broken.stdout + broken.stderr
    assert broken.returncode == 1 and "1 failed, 3 passed" in out and "[ip_forward_off]" in out, out[-4000:]
