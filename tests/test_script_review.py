"""Setup scripts run traced: each failed command named with its cause and corrected line, and
``netcheck review`` correcting seed 2's article, mistakes included, one mistake at a time.

The unit tests read recorded traces (no root). The root tests run
examples/script-tutorial2-verbatim.sh: the article's commands with its own mistakes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netcheck import spec
from netcheck.adapters import build_external, shelltrace
from netcheck.adapters.script import ScriptFailed, review

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
VERBATIM = EXAMPLES / "script-tutorial2-verbatim.toml"

# A trace as bash writes it with netcheck's start-up file: a background job's line comes late,
# and a tool's message follows the command it names, not the one traced last.
TRACE = """\
+netcheck-trace:/s.sh:1: HTTP2=nc1-http2
+netcheck-trace:/s.sh:2: ipnetns add nc1-http2
/s.sh: line 2: ipnetns: command not found
netcheck-status:/s.sh:2:127
+netcheck-trace:/s.sh:4: ip link set dev veth_htt3 master br
+netcheck-trace:/s.sh:3: ip netns exec nc1-http2 pythohn3 -m http.server 8080
exec of "pythohn3" failed: No such file or directory
Cannot find device "veth_htt3"
netcheck-status:/s.sh:4:1
+netcheck-trace:/s.sh:5: ip netns nc1-http2 ip route add default via 10.0.0.1
Command "nc1-http2" is unknown, try "ip netns help".
netcheck-status:/s.sh:5:255
+netcheck-trace:/s.sh:6: ip netns exec nc1-http2 ip route add default via 10.0.0.1
RTNETLINK answers: File exists
netcheck-status:/s.sh:6:2
+netcheck-trace:/s.sh:7: echo 'nameserver 203.0.113.53 | tee /etc/netns/nc1-http2/resolv.conf'
nameserver 203.0.113.53 | tee /etc/netns/nc1-http2/resolv.conf
+netcheck-trace:/s.sh:8: true
"""
SCRIPT = [
    'HTTP2=$NETCHECK_NETNS_HTTP2',
    'ipnetns add "$HTTP2"',
    'ip netns exec "$HTTP2" pythohn3 -m http.server 8080 >/dev/null 2>&1 &',
    'ip link set dev veth_htt3 master br',
    'ip netns "$HTTP2" ip route add default via 10.0.0.1',
    'ip netns exec "$HTTP2" ip route add default via 10.0.0.1',
    'echo "nameserver 203.0.113.53 | tee /etc/netns/$HTTP2/resolv.conf"',
    'true',
]
PROGRAMS = ["ip", "python3", "tee", "echo", "true"]


def test_a_trace_is_read_into_steps_each_message_with_the_command_it_names() -> None:
    steps = {s.line: s for s in shelltrace.parse(TRACE)}
    assert steps[2].status == 127 and steps[2].errors == ("/s.sh: line 2: ipnetns: command not found",)
    assert steps[3].status == 127, "a background command whose program could not run counts as failed"
    assert steps[3].errors == ('exec of "pythohn3" failed: No such file or directory',)
    assert steps[4].status == 1 and steps[4].errors == ('Cannot find device "veth_htt3"',), "the message names veth_htt3, so it is line 4's"
    assert steps[5].status == 255 and steps[6].status == 2
    assert not steps[7].failed and not steps[8].failed


def test_each_failed_line_is_one_mistake_with_its_cause_and_the_corrected_line_in_the_scripts_words() -> None:
    found = shelltrace.mistakes(shelltrace.parse(TRACE), {"/s.sh": SCRIPT}, programs=PROGRAMS, links=["veth_http3", "br", "lo"], namespaces=["nc1-http2"])
    got = {m.line: (m.cause, m.corrected) for m in found}
    assert got == {
        2: ("command_not_found", 'ip netns add "$HTTP2"'),
        3: ("command_not_found", 'ip netns exec "$HTTP2" python3 -m http.server 8080 >/dev/null 2>&1 &'),
        4: ("no_such_device", "ip link set dev veth_http3 master br"),
        5: ("netns_without_exec", 'ip netns exec "$HTTP2" ip route add default via 10.0.0.1'),
        6: ("route_exists", 'ip netns exec "$HTTP2" ip route replace default via 10.0.0.1'),
        7: ("quoted_pipe", 'echo "nameserver 203.0.113.53" | tee /etc/netns/$HTTP2/resolv.conf'),
    }
    assert "`ip netns $HTTP2 ...` is not a command" in next(m.why for m in found if m.line == 5), "named in the script's words, not the expanded name"


def test_a_failure_with_no_known_correction_is_named_and_not_guessed() -> None:
    trace = "+netcheck-trace:/s.sh:1: ip link set dev nowhere up\nCannot find device \"nowhere\"\nnetcheck-status:/s.sh:1:1\n"
    (m,) = shelltrace.mistakes(shelltrace.parse(trace), {"/s.sh": ["ip link set dev nowhere up"]}, programs=PROGRAMS, links=["veth_http3"], namespaces=[])
    assert (m.cause, m.corrected) == ("no_such_device", None)
    assert "none with a name like it" in m.why


def test_only_shell_scripts_are_traced(tmp_path: Path) -> None:
    assert shelltrace.traced(["./setup"], tmp_path / "s") is None
    assert shelltrace.traced(["sh", "-c", "ip link"], tmp_path / "s") is None
    argv, env = shelltrace.traced(["sh", "setup.sh", "x"], tmp_path / "s") or ([], {})
    assert argv == ["bash", "setup.sh", "x"] and Path(env["BASH_ENV"]).read_text() == shelltrace.STARTUP


def test_the_startup_file_traces_a_real_bash_run(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text("true\nnosuchprogram-x\nfalse || true\necho done\n")
    argv, env = shelltrace.traced(["sh", str(script)], tmp_path / "startup") or ([], {})
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=30, check=False)
    steps = shelltrace.parse(done.stderr)
    assert [(s.line, s.status) for s in steps] == [(1, 0), (2, 127), (3, 0), (3, 0), (4, 0)], done.stderr
    assert done.stdout == "done\n", "tracing changes nothing the script prints"


# ----------------------------------------------------------------------------- as root

root = pytest.mark.root


@root
def test_the_verbatim_script_fails_its_setup_naming_every_failed_line() -> None:
    with pytest.raises(ScriptFailed) as caught:
        build_external(spec.load(VERBATIM))
    text = str(caught.value)
    assert "script-tutorial2-verbatim.sh:19: `ipnetns add \"$HTTP2\"`" in text and "corrected: ip netns add \"$HTTP2\"" in text
    assert "veth_htt3" in text and "netcheck review" in text


@root
def test_review_corrects_each_of_the_articles_mistakes_and_shows_each_correction_works() -> None:
    done = review(spec.load(VERBATIM), build_external)
    got = [(c.mistake.line, c.mistake.cause, c.verified) for c in done.corrections]
    assert got == [
        (19, "command_not_found", True),   # ipnetns add
        (20, "command_not_found", True),   # pythohn3
        (58, "no_such_device", True),      # veth_htt3
        (59, "netns_without_exec", True),  # ip netns http2 ip route ...
        (59, "route_exists", True),        # ... and the default route via 10.0.0.10 from section 1.1 is there already
        (60, "netns_without_exec", True),  # ip netns http3 ip route ...
        (42, "quoted_pipe", True),         # echo "nameserver ... | tee ..."
    ], [c.mistake.describe() for c in done.corrections]
    assert done.clean
    original = (EXAMPLES / "script-tutorial2-verbatim.sh").read_text().splitlines()
    changed = [n for n, (a, b) in enumerate(zip(original, done.corrected.splitlines(), strict=True), start=1) if a != b]
    assert changed == [19, 20, 42, 58, 59, 60], "only the mistaken lines change"


def _suites(spec_file: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", *(f"suites/{t}" for t in tests), f"--netcheck-topology={spec_file}", "--netcheck-report=none",
            "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@root
def test_the_corrected_script_leaves_one_fault_the_diagnosis_names_and_its_fix_makes_the_suites_pass(tmp_path: Path) -> None:
    """After every command runs, what is left is a fault in no catalog: the article's veth_http2 keeps
    10.0.0.10 from section 1.1 once it is a bridge port. The diagnosis names it with a fix; with the
    fix the suites pass."""
    reviewed = subprocess.run([str(Path(sys.executable).with_name("netcheck")), "review", str(VERBATIM), "--out", str(tmp_path / "fixed.sh"), "--json"],
                              capture_output=True, text=True, timeout=300, check=False)
    assert reviewed.returncode == 0, reviewed.stdout + reviewed.stderr
    assert all(c["verified"] for c in json.loads(reviewed.stdout)["corrections"])
    toml = VERBATIM.read_text().replace('"script-tutorial2-verbatim.sh"', f'"{tmp_path / "fixed.sh"}"')
    (tmp_path / "fixed.toml").write_text(toml)
    broken = _suites(tmp_path / "fixed.toml", "test_forwarding.py")
    assert broken.returncode == 1, broken.stdout[-3000:]
    assert "[address_on_bridge_port]" in broken.stdout and "ip address del 10.0.0.10/24 dev veth_http2" in broken.stdout, broken.stdout[-3000:]
    with (tmp_path / "fixed.sh").open("a") as f:
        f.write("ip address del 10.0.0.10/24 dev veth_http2\n")  # the fix the diagnosis gave, in the host
    fixed = _suites(tmp_path / "fixed.toml", "test_forwarding.py", "test_dns.py", "test_vip.py", "test_bridge.py")
    assert fixed.returncode == 0, fixed.stdout[-3000:]
