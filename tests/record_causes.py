"""Record every catalog fault's diagnosis (root): the recordings tests/test_causes_recorded.py replays without root.

    sudo .venv/bin/python tests/record_causes.py tests/data/causes [--only FAULT ...] [--jobs 2] [--again]
        [--what faults events cross tools healthy]

- faults: each fault of ``netcheck.faults.FAULTS``, on each build the catalog test runs it on
  (tests/test_diagnosis.py CATALOG: its topology, and the -nft build for a fault that edits rules; every
  fault's first build before the -nft ones), in a pytest of its own running the fault's suite test with
  ``NETCHECK_RECORD`` set: the recording of the failure its message shows is kept as ``FAULT[-nft].json.gz``.
  A suite test that asserts on kernel state sends no probe: the recording is then the doctor's (no flow).
  Faults already recorded in OUT are skipped (``--again`` records them again).
- events: causes no catalog fault declares, each from a lifecycle event (``EVENTS``).
- cross: each cross-host fault, what ``crosshost.gather`` reads (``cross-FAULT.json.gz``).
- tools: the external tools' faults (netcheck.adapters.faults; CNI, Docker and Podman must be installed).
- healthy: one passing probe per built-in topology, diagnosed anyway, and each multi-host built-in.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netcheck.diagnose.recording import Recording

REPO = Path(__file__).resolve().parents[1]
INNER = ("-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore::pytest.PytestAssertRewriteWarning", "--netcheck-report=none")


def builds() -> list[tuple[str, str]]:
    """(fault, topology) as the catalog test runs them."""
    from netcheck.faults import FAULTS

    return [(name, topology) for name in sorted(FAULTS) for suffix, topology in (("", FAULTS[name].topology), ("-nft", f"{FAULTS[name].topology}-nft"))
            if not (suffix and not FAULTS[name].edits_rules)]


def file_name(fault: str, topology: str) -> str:
    from netcheck.faults import FAULTS

    return f"{fault}{'-nft' if topology != FAULTS[fault].topology else ''}.json.gz"


def record_one(fault: str, topology: str, out: Path) -> str:
    """Record one fault on one build; a line saying what was kept."""
    from netcheck.diagnose import recording
    from netcheck.faults import FAULTS

    f = FAULTS[fault]
    about = {"fault": fault, "topology": topology, "suite_test": f.suite_test}
    with tempfile.TemporaryDirectory(prefix="netcheck-record-") as tmp:
        env = {**os.environ, recording.RECORD_ENV: tmp}
        cmd = [sys.executable, "-m", "pytest", str(REPO / "suites" / f.suite_test), f"--netcheck-topology={topology}", f"--netcheck-fault={fault}", *INNER]
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=600, check=False)
        made = sorted(Path(tmp).iterdir(), key=lambda p: p.name.split("-")[1])
        if made:
            rec, how = _shown(made, f.cause)
            how += f" of {f.suite_test} (exit {done.returncode})"
        else:
            rec = doctor_recording(fault, topology)
            how = f"the doctor's: {f.suite_test} sent no diagnosed probe (exit {done.returncode})"
    recording.save(replace(rec, about=about), out / file_name(fault, topology))
    return f"{fault} on {topology}: {how}"


def _shown(made: list[Path], cause: str) -> tuple[Recording, str]:
    """The recording of the failure the suite test's message shows: probes sent together (``Prober.many``) are
    diagnosed in the order they end, and the message shows the first failure in the order they were listed,
    whose diagnosis names the fault's cause: the first recording that does, else the first."""
    from netcheck.diagnose import conclude, recording

    recs = [recording.load(p) for p in made]
    for i, rec in enumerate(recs):
        d = conclude(rec)
        if d.findings and d.findings[0].cause == cause:
            return rec, f"diagnosis {i + 1} of {len(recs)}"
    return recs[0], f"the first of {len(recs)} diagnosis(es), none naming {cause}"


def doctor_recording(fault: str, topology: str) -> Recording:
    """A lab with the fault, read as the doctor reads it (no flow)."""
    from netcheck import faults, spec
    from netcheck.diagnose import recording
    from netcheck.diagnose import state as kernel_state
    from netcheck.lab import Lab

    with Lab(spec.builtin(topology)) as lab:
        faults.inject(lab, [fault])
        snap = kernel_state.snapshot(lab.namespaces())
        return recording.Recording(recording.facts(lab, snap), snap, involved=tuple(sorted(lab.namespaces())))


def record_healthy(topology: str, out: Path) -> str:
    """A passing probe of the topology's first promised flow, diagnosed anyway: it must name nothing."""
    from netcheck import spec
    from netcheck.diagnose import diagnose, recording
    from netcheck.lab import Lab, plan
    from netcheck.probes import Prober

    t = spec.builtin(topology)
    with tempfile.TemporaryDirectory(prefix="netcheck-record-") as tmp:
        os.environ[recording.RECORD_ENV] = tmp
        try:
            with Lab(t) as lab:
                reach = next((x for x in plan.reaches(t) if x.via == "outside"), plan.reaches(t)[0])
                prober = Prober(lab)
                r = prober.icmp(reach.source, reach.dst_addr, target=reach.target)
                assert r.passed, r.explain()
                diagnose(lab, r, prober.conclusive)
        finally:
            del os.environ[recording.RECORD_ENV]
        rec = recording.load(next(Path(tmp).iterdir()))
    recording.save(replace(rec, about={"healthy": topology, "topology": topology}), out / f"healthy-{topology}.json.gz")
    return f"healthy {topology}: {reach.source} -> {reach.dst_addr}"


# Causes no catalog fault declares: a lifecycle event's (--netcheck-event) after the lab's setup.
EVENTS = {"nft-flush": ("seed1-nft", "test_masquerade.py::test_outside_sees_the_host_uplink_address", "tool_rules_gone")}  # event: (topology, suite test, cause)

def record_event(event: str, out: Path) -> str:
    """A lifecycle event (--netcheck-event) after the lab's setup: the first check that fails after it."""
    from netcheck.diagnose import recording

    topology, suite_test, cause = EVENTS[event]
    with tempfile.TemporaryDirectory(prefix="netcheck-record-") as tmp:
        cmd = [sys.executable, "-m", "pytest", str(REPO / "suites" / suite_test), f"--netcheck-topology={topology}", f"--netcheck-event={event}", *INNER]
        done = subprocess.run(cmd, env={**os.environ, recording.RECORD_ENV: tmp}, cwd=REPO, capture_output=True, timeout=600, check=False)
        made = sorted(Path(tmp).iterdir(), key=lambda p: p.name.split("-")[1])
        if not made:
            return f"event {event}: no diagnosis recorded (exit {done.returncode}): {done.stdout.decode(errors='replace')[-600:]}"
        rec = recording.load(made[0])
    recording.save(replace(rec, about={"event": event, "cause": cause, "topology": topology, "suite_test": suite_test}), out / f"event-{event}.json.gz")
    return f"event {event} on {topology}: the first of {len(made)} diagnosis(es) (exit {done.returncode})"


def record_cross(fault: str, out: Path) -> str:
    """A cross-host fault in a multi-host lab: what the cross-host diagnosis reads, between its hosts a and b."""
    from netcheck.diagnose import crosshost, recording
    from netcheck.faults import CROSS_HOST_FAULTS
    from netcheck.multihost import spec as multi_spec
    from netcheck.multihost.lab import MultiLab

    f = CROSS_HOST_FAULTS[fault]
    with MultiLab(multi_spec.builtin(f.topology)) as multi:
        f.inject(multi)
        a, b = (h.name for h in multi.topology.hosts)
        read = crosshost.gather(multi, a, b)
    recording.save(replace(read, about={"fault": fault, "topology": f.topology}), out / f"cross-{fault}.json.gz")
    return f"{fault} on {f.topology}: the cross-host diagnosis's reads of hosts {a} and {b}"


def record_cross_healthy(topology: str, out: Path) -> str:
    from netcheck.diagnose import crosshost, recording
    from netcheck.multihost import spec as multi_spec
    from netcheck.multihost.lab import MultiLab

    with MultiLab(multi_spec.builtin(topology)) as multi:
        a, b = (h.name for h in multi.topology.hosts)
        read = crosshost.gather(multi, a, b)
    recording.save(replace(read, about={"healthy": topology, "topology": topology}), out / f"healthy-cross-{topology}.json.gz")
    return f"healthy {topology}: hosts {a} and {b}"


def record_tool(fault: str, example: str, out: Path) -> str:
    """An external tool's fault (netcheck.adapters.faults), in a pytest of its own with the tool's faults known to --netcheck-fault."""
    from netcheck.adapters.faults import EXTERNAL_FAULTS
    from netcheck.diagnose import recording

    f = EXTERNAL_FAULTS[fault]
    spec_path = REPO / "examples" / f"{example}.toml"
    code = ("import sys, pytest; from netcheck import faults; from netcheck.adapters.faults import EXTERNAL_FAULTS; "
            "faults.FAULTS.update(EXTERNAL_FAULTS); sys.exit(pytest.main(sys.argv[1:]))")
    with tempfile.TemporaryDirectory(prefix="netcheck-record-") as tmp:
        cmd = [sys.executable, "-c", code, str(REPO / "suites" / f.suite_test), f"--netcheck-topology={spec_path}", f"--netcheck-fault={fault}", *INNER]
        done = subprocess.run(cmd, env={**os.environ, recording.RECORD_ENV: tmp}, cwd=REPO, capture_output=True, timeout=900, check=False)
        made = sorted(Path(tmp).iterdir(), key=lambda p: p.name.split("-")[1])
        if not made:
            return f"{fault} on {example}: no diagnosis recorded (exit {done.returncode}): {done.stdout.decode(errors='replace')[-600:]}"
        rec = recording.load(made[0])
    recording.save(replace(rec, about={"fault": fault, "topology": example, "suite_test": f.suite_test}), out / f"tool-{fault}.json.gz")
    return f"{fault} on {example}: the first of {len(made)} diagnosis(es) (exit {done.returncode})"


TOOL_FAULTS = (("tool-masquerade-removed", "cni"), ("tool-ip6-masquerade-removed", "cni-dual"), ("nft-flush-ruleset", "docker29-nft"), ("tool-dnat-removed", "docker29-nft"),
               ("embedded-dns-rules-removed", "docker-dns"), ("aardvark-dns-stopped", "podman-dns"))  # (fault, example) as tests/test_adapters.py and test_dns_tools.py run them


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="*", default=None, help="these faults only")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--again", action="store_true", help="record again the faults already recorded in OUT")
    parser.add_argument("--what", nargs="*", default=["faults", "events", "cross", "tools", "healthy"], choices=["faults", "events", "cross", "tools", "healthy"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if "faults" in args.what:
        todo = [(f, t) for f, t in builds() if (args.only is None or f in args.only) and (args.again or not (args.out / file_name(f, t)).exists())]
        todo.sort(key=lambda ft: ft[1].endswith("-nft"))  # every fault once before the -nft builds
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda ft: record_one(ft[0], ft[1], args.out), todo):
                print(line, flush=True)
    if "events" in args.what:
        for event in EVENTS:
            print(record_event(event, args.out), flush=True)
    if "cross" in args.what:
        from netcheck.faults import CROSS_HOST_FAULTS

        for name in sorted(CROSS_HOST_FAULTS):
            if args.only is None or name in args.only:
                print(record_cross(name, args.out), flush=True)
        from netcheck.multihost import spec as multi_spec

        for name in multi_spec.BUILTIN if args.only is None else ():
            print(record_cross_healthy(name, args.out), flush=True)
    if "tools" in args.what:
        for name, example in TOOL_FAULTS:
            if args.only is None or name in args.only:
                print(record_tool(name, example, args.out), flush=True)
    if "healthy" in args.what:
        from netcheck import spec

        for name in sorted(spec.BUILTIN):
            print(record_healthy(name, args.out), flush=True)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{len(list(args.out.iterdir()))} recordings in {args.out} ({size / 1024:.0f} KiB), {time.monotonic() - t0:.0f} s")
