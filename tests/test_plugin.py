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
    for name in ("netcheck_lab_factory", "netcheck_lab ", "netcheck_fresh_lab", "netcheck_probe ", "netcheck_evidence", "netcheck_settings", "netcheck_topology"):
        assert name in out, out


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    out = pytester.runpytest_inprocess("--markers").stdout.str()
    for marker in ("netcheck(", "netcheck_property("):
        assert marker in out
    # The suites' own marker is registered by the suites, not for every project.
    assert "scale:" not in out and "root:" not in out


def test_without_root_the_run_fails_once_and_says_how_to_run(pytester: pytest.Pytester, repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Green must mean checked: without root the selected checks cannot run, so the run fails (it used to skip them all and exit 0)."""
    monkeypatch.setattr(lab, "has_net_admin", lambda: False)
    monkeypatch.setattr(factory, "has_net_admin", lambda: False)
    result = pytester.runpytest_inprocess(str(repo / "suites/test_bridge.py"), "--netcheck-topology=seed1", "--netcheck-report=none", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count("need to build network namespaces") == 1, err
    assert "3 selected netcheck check(s)" in err and "run it as root" in err and "Vagrant" in err and "Traceback" not in err, err
    # Looking without building still works without root.
    listed = pytester.runpytest_inprocess(str(repo / "suites/test_bridge.py"), "--netcheck-topology=seed1", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert listed.ret == pytest.ExitCode.OK and "3 tests collected" in listed.stdout.str()


def test_a_run_whose_checks_all_skipped_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_skips="""
import pytest

@pytest.mark.netcheck_property("dnat")
@pytest.mark.netcheck(topologies=["seed1"])
def test_nothing_applies(netcheck_topology):
    pytest.skip("seed1 declares nothing to check here")
""")
    result = pytester.runpytest_inprocess("--netcheck-report=none", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["netcheck: 1 checks: 0 passed, 0 failed, 0 errors, 1 skipped; 0 probes", "netcheck: FAILED: nothing was checked*"])


def test_one_passing_check_beside_skips_is_green(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mixed="""
import pytest

@pytest.mark.netcheck(topologies=["seed1"])
def test_applies(netcheck_topology):
    assert netcheck_topology.name == "seed1"

@pytest.mark.netcheck(topologies=["seed1"])
def test_does_not_apply(netcheck_topology):
    pytest.skip("not declared")
""")
    result = pytester.runpytest_inprocess("--netcheck-report=none", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK


def test_a_missing_tool_fails_the_run_once_with_the_install_line(pytester: pytest.Pytester, repo, monkeypatch: pytest.MonkeyPatch) -> None:
    from netcheck import adapters

    monkeypatch.setattr(lab, "has_net_admin", lambda: True)
    monkeypatch.setattr(adapters, "missing", lambda t, mode=None: ["netavark (apt-get install -y --no-install-recommends netavark)"])
    result = pytester.runpytest_inprocess(str(repo / "suites"), f"--netcheck-topology={repo / 'examples/netavark.toml'}", "--netcheck-report=none", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count("apt-get install -y --no-install-recommends netavark") == 1 and "Traceback" not in err, err


UNRELATED_CONFTEST = """
import pytest

@pytest.fixture(params=["mine"])
def topology(request):
    return request.param

@pytest.fixture
def lab():
    return "my own lab"
"""
UNRELATED_TEST = """
import signal

def test_my_topology(topology, lab):
    assert topology == "mine" and lab == "my own lab"

def test_no_sigterm_handler():
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)

def test_plain():
    pass
"""


def test_an_unrelated_project_runs_untouched(pytester: pytest.Pytester) -> None:
    """Its own ``topology`` and ``lab`` fixtures stay its own; no report, header, handler or file appears."""
    pytester.makeconftest(UNRELATED_CONFTEST)
    pytester.makepyfile(test_mine=UNRELATED_TEST)
    def files() -> list[str]:
        return sorted(str(p.relative_to(pytester.path)) for p in pytester.path.rglob("*") if not p.relative_to(pytester.path).parts[0].startswith(("runpytest-", "__pycache__", "stdout", "stderr")))

    before = files()
    runs = {}
    for label, flags in (("with", ()), ("without", ("-p", "no:netcheck"))):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *flags)
        runs[label] = result
        assert files() == before, f"{label} netcheck: files appeared"
    for label, result in runs.items():
        assert result.ret == pytest.ExitCode.OK, (label, result.stdout.str())
        result.assert_outcomes(passed=3)
        # pytest's own lines list the installed plugins; nothing else may mention netcheck.
        said = [line for line in result.stdout.lines if not line.startswith(("plugins:", "metadata:"))]
        assert not [line for line in said if "netcheck" in line], (label, result.stdout.str())
    assert [line for line in runs["with"].stdout.lines if "::" in line] == [line for line in runs["without"].stdout.lines if "::" in line]


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


MISSING_TOOL_TEST = """
from netcheck.activation import skip_for_missing_tool

def test_needs_a_tool():
    skip_for_missing_tool("frobnicate is not installed (apt-get install frobnicate)")
"""


@pytest.mark.parametrize(("ci", "outcome"), [("", "skipped"), ("true", "failed")])
def test_a_check_skipped_for_a_missing_tool_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_tool=MISSING_TOOL_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(**{outcome: 1})
    assert "apt-get install frobnicate" in result.stdout.str()


@pytest.mark.parametrize("value", ['["seed9"]', '"seed1"', '["/no/such/spec.toml"]'])
def test_a_bad_topology_in_a_marker_is_one_clear_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile(test_marked=f"""
import pytest

@pytest.mark.netcheck(topologies={value})
def test_x(netcheck_topology):
    pass
""")
    result = pytester.runpytest_subprocess("--netcheck-report=none", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error: that test is not run, and the run fails
    out = result.stdout.str()
    assert "test_marked.py::test_x: @pytest.mark.netcheck(topologies=...)" in out and "Traceback" not in out and "raise " not in out, out
