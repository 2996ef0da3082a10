"""The set-up files: bootstrap.sh, .ci/run, tox.ini, the Vagrantfile and pyproject.toml.

None of these tests needs root, installs anything or touches the network.
"""

from __future__ import annotations

import configparser
import os
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
