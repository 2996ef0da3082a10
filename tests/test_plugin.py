"""The plugin's surface: options, fixtures, markers, and clear errors for bad settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netcheck import factory, lab


def test_help_lists_the_options_fast_and_without_importing_scapy(repo) -> None:
    code = "import sys, pytest; rc = pytest.main(['--help']); sys.exit(1 if 'scapy' in sys.modules or 'iptc' in sys.modules else rc)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--netcheck-topology", "--netcheck-keep", "--netcheck-report", "--netcheck-host", "--netcheck-fault"):
        assert option in proc.stdout


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--fixtures", "-p", "no:cacheprovider")
    out = result.stdout.str()
    for name in ("lab_factory", "lab ", "fresh_lab", "probe ", "evidence", "netcheck_settings"):
        assert name in out, out


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    out = pytester.runpytest_inprocess("--markers").stdout.str()
    for marker in ("netcheck(", "netcheck_property(", "root:", "scale:"):
        assert marker in out


def test_without_root_suites_skip_and_say_how_to_run(pytester: pytest.Pytester, repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "has_net_admin", lambda: False)
    monkeypatch.setattr(factory, "has_net_admin", lambda: False)
    result = pytester.runpytest_inprocess(str(repo / "suites/test_bridge.py"), "--netcheck-topology=seed1", "--netcheck-report=none", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*netcheck needs root*run it as root*Vagrant*"])


def test_bad_spec_is_a_usage_error_without_traceback(pytester: pytest.Pytester, repo) -> None:
    bad = repo / "tests/specs/invalid"
    spec = sorted(bad.glob("*.toml"))[0]
    result = pytester.runpytest_subprocess(str(repo / "suites/test_topology.py"), f"--netcheck-topology={spec}", "--netcheck-report=none", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert str(spec) in err and "Fix:" in err and "Traceback" not in err, err


def test_unknown_fault_and_bad_pcap_mode_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--netcheck-fault=no-such-fault", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown fault" in result.stderr.str() and "ip-forward-off" in result.stderr.str()
    result = pytester.runpytest_subprocess("--netcheck-pcap=sometimes", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "use failed, all or none" in result.stderr.str()


def test_unknown_topology_name_says_what_exists(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--netcheck-topology=seed9", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "seed1, seed2, seed2-veth" in result.stderr.str()
