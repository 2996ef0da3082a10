"""The kernel as witness, measured: what a diagnosis and a negative cost with and without it.

    sudo .venv/bin/python bench/witness.py [--repeat 9] [--baseline 52c2135]

Both figures are medians, each beside today's (no witness) in the same run, on the same lab; then
where a diagnosis's time goes (each phase's mean, with the witness), and its CPU time (a figure
that a loaded machine inflates less than the wall time). ``--baseline REV`` also runs this bench on
commit REV's netcheck (its tree, exported to a temporary folder), right after, and shows its
figures and phases beside today's:

* diagnosing one failure beyond the probe itself: ``diagnose(lab, result, resend)`` for an ICMP
  probe to the outside that a FORWARD DROP rule kills (seed2, fault forward-drop-rule). With the
  witness, the repeat ends at the kernel's drop; without it, it waits REPEAT_TIMEOUT (0.5 s).
  Target: at most 100 ms.
* a negative proven by a kernel drop: ``Prober.send`` of a probe expected to be blocked (netns0 ->
  netns1 on seed1, fault forward-drop: FORWARD policy DROP), ICMP, TCP and UDP; and over IPv6 (netns0 ->
  2001:db8:2::1 on seed1-dual, fault ip6tables-forward-drop), ICMPv6, TCP and UDP. Without the
  witness it waits its timeout (NEGATIVE_TIMEOUT, 0.3 s). Target: at most 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TREE = "NETCHECK_BENCH_TREE"  # set by --baseline: the netcheck to measure is that commit's tree, not this one
sys.path.insert(0, os.environ.get(TREE) or str(REPO))

TARGETS = {"diagnosis_ms": 100.0, "negative_ms": 10.0}


def _ms(fn: Any, repeat: int, cpu: list[float] | None = None) -> float:
    """The median wall time of ``fn`` in ms; the CPU time of each call (this process's threads and the
    commands it waited for, user and system) is added to ``cpu``."""
    values = []
    for _ in range(repeat):
        c, p, t = os.times(), time.process_time(), time.perf_counter()
        fn()
        values.append((time.perf_counter() - t) * 1000)
        if cpu is not None:  # the process's threads to the microsecond, the commands it waited for in clock ticks
            d = os.times()
            cpu.append((time.process_time() - p + d.children_user + d.children_system - c.children_user - c.children_system) * 1000)
    return round(statistics.median(values), 1)


PHASES = (("netcheck.diagnose", "_counters", "rule and SNMP counters before the repeat"), ("netcheck.diagnose", "_start", "nft trace: listen, make its table"),
          ("resend", "resend", "the repeated probe (ends at the kernel's drop)"), ("netcheck.diagnose", "_stop", "nft trace: read, list the rules, remove its table"),
          ("netcheck.diagnose.state", "observe", "the snapshot of the namespaces (SNMP counters after the repeat with it)"),
          ("netcheck.diagnose", "_snmp", "SNMP counters after the repeat"), ("netcheck.diagnose.state", "snapshot", "the snapshot of the namespaces"),  # before observe (52c2135)
          ("netcheck.diagnose.rules", "evaluate", "the rules (route lookups included)"), ("netcheck.diagnose.witness", "events", "the kernel's drops"),
          ("netcheck.diagnose", "_model_end", "the model's trace (for the ranking)"), ("netcheck.diagnose.fixes", "verify", "fix verification (apply, re-probe, undo)"))


def _timed(phases: dict[str, float]) -> Any:
    """Wrap each phase's function to add its time (ms) to ``phases``; returns the undo."""
    import importlib

    undo = []
    for module, name, label in PHASES:
        if module == "resend":
            continue
        mod = importlib.import_module(module)
        original = getattr(mod, name, None)
        if original is None:
            continue  # a phase of another commit's code (--baseline)

        def timed(*a: Any, _f: Any = original, _label: str = label, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                phases[_label] = phases.get(_label, 0.0) + (time.perf_counter() - t) * 1000

        setattr(mod, name, timed)
        undo.append((mod, name, original))
    return lambda: [setattr(m, n, f) for m, n, f in undo]


def measure(repeat: int) -> dict[str, Any]:
    from netcheck import faults
    from netcheck.diagnose import diagnose
    from netcheck.evidence import ProbeRequest
    from netcheck.factory import LabFactory
    from netcheck.probes import Prober

    out: dict[str, Any] = {"repeat": repeat, "load_before": os.getloadavg()[0], "netcheck": str(Path(faults.__file__).parent)}
    with LabFactory(reap=False) as labs:
        seed2 = labs.fresh("seed2")
        faults.inject(seed2, ["forward-drop-rule"])
        seed1 = labs.fresh("seed1")
        faults.inject(seed1, ["forward-drop"])
        dual = labs.fresh("seed1-dual")
        faults.inject(dual, ["ip6tables-forward-drop"])
        assert seed2.witness is not None and seed1.witness is not None
        why = seed2.witness.absent(wait=30)
        if why:
            raise SystemExit(f"bench/witness.py: no kernel witness here: {why}")
        conclusive = Prober(seed2, first_id=0x9000).conclusive
        phases: dict[str, float] = {}

        def resend(request: ProbeRequest) -> Any:
            t = time.perf_counter()
            try:
                return conclusive(request)
            finally:
                phases["the repeated probe (and fix verification's re-probe)"] = phases.get("the repeated probe (and fix verification's re-probe)", 0.0) + (time.perf_counter() - t) * 1000

        failed = Prober(seed2).send(ProbeRequest("icmp", "http2", ip_address("198.51.100.1")))
        assert not failed.passed, "the fault did not break the probe"
        witness1, witness2 = seed1.witness, seed2.witness
        kernel_seen = []

        def diagnosis() -> None:
            d = diagnose(seed2, failed, resend)
            kernel_seen.append(bool(d.kernel))

        diagnosis()  # the first one loads what later ones reuse (libnftables, the model)
        kernel_seen.clear()
        undo = _timed(phases)
        phases.clear()
        try:
            cpu: list[float] = []
            out["diagnosis_ms"] = _ms(diagnosis, repeat, cpu)
            out["diagnosis_cpu_ms"] = round(statistics.median(cpu), 1)
        finally:
            undo()
        out["diagnosis_kernel_seen"] = sum(kernel_seen)
        out["phases_ms"] = {label: round(ms / repeat, 1) for label, ms in phases.items()}
        seed2.witness = None
        out["diagnosis_today_ms"] = _ms(diagnosis, max(3, repeat // 2))

        witness6 = dual.witness
        for lab, kind, dst, port in ((seed1, "icmp", "172.18.0.20", None), (seed1, "tcp", "172.18.0.20", 5000), (seed1, "udp", "172.18.0.20", 7),
                                     (dual, "icmp6", "2001:db8:2::1", None), (dual, "tcp6", "2001:db8:2::1", 7), (dual, "udp6", "2001:db8:2::1", 7)):
            request = ProbeRequest(kind.rstrip("6"), "netns0", ip_address(dst), port, expect="block")  # type: ignore[arg-type]
            proven: list[bool] = []
            prober = Prober(lab)

            def negative(request: ProbeRequest = request, proven: list[bool] = proven, prober: Prober = prober) -> None:
                proven.append(prober.send(request).kernel_drop is not None)

            negative()  # the first probe of a lab resolves its neighbours (NDP, ARP): not what a negative costs
            proven.clear()
            lab.witness = witness1 if lab is seed1 else witness6
            out[f"negative_{kind}_ms"] = _ms(negative, repeat)
            out[f"negative_{kind}_proven_by_drop"] = sum(proven)
            lab.witness = None
            out[f"negative_{kind}_today_ms"] = _ms(negative, max(3, repeat // 2))
        seed1.witness, seed2.witness, dual.witness = witness1, witness2, witness6
    out["load_after"] = os.getloadavg()[0]
    return out


def render(r: dict[str, Any], base: dict[str, Any] | None = None, rev: str = "") -> str:
    lines = [f"the kernel as witness (median of {r['repeat']}; load {r['load_before']:.1f} -> {r['load_after']:.1f})"
             + (f"; at {rev} (its netcheck from {base['netcheck']}): load {base['load_before']:.1f} -> {base['load_after']:.1f}" if base else ""),
             f"{'what':<48} {'with witness':>13} {'today':>9} {'target':>8}" + (f" {'at ' + rev:>14}" if base else "")]

    def was(key: str) -> str:
        return f" {base[key]:>11.1f} ms" if base and key in base else ""

    lines.append(f"{'diagnosing one failure, beyond the probe':<48} {r['diagnosis_ms']:>10.1f} ms {r['diagnosis_today_ms']:>6.1f} ms {'<= 100':>8}{was('diagnosis_ms')}"
                 f"   (kernel drop seen in {r['diagnosis_kernel_seen']}/{r['repeat']})")
    for kind in ("icmp", "tcp", "udp", "icmp6", "tcp6", "udp6"):
        if f"negative_{kind}_ms" not in r:
            continue
        lines.append(f"{'a negative proven by a kernel drop (' + kind + ')':<48} {r[f'negative_{kind}_ms']:>10.1f} ms {r[f'negative_{kind}_today_ms']:>6.1f} ms {'<= 10':>8}"
                     f"{was(f'negative_{kind}_ms')}   (proven by a drop in {r[f'negative_{kind}_proven_by_drop']}/{r['repeat']})")
    lines.append(f"{'  its CPU time (all threads, and commands run)':<48} {r['diagnosis_cpu_ms']:>10.1f} ms {'':>9} {'':>8}{was('diagnosis_cpu_ms')}")
    lines.append("where a diagnosis's time goes (mean ms a diagnosis, with the witness; fix verification holds its re-probe, which the repeated probe line counts too):")
    lines.extend(f"  {label:<70} {ms:>7.1f}" for label, ms in sorted(r.get("phases_ms", {}).items(), key=lambda x: -x[1]))
    if base:
        lines.append(f"  at {rev}:")
        lines.extend(f"  {label:<70} {ms:>7.1f}" for label, ms in sorted(base.get("phases_ms", {}).items(), key=lambda x: -x[1]))
    return "\n".join(lines)


def baseline(rev: str, repeat: int) -> dict[str, Any]:
    """This bench's figures at commit ``rev``: its tree exported to a temporary folder, run with this Python."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="netcheck-baseline-") as tmp:
        tree = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=False)
        if tree.returncode != 0:
            raise SystemExit(f"bench/witness.py --baseline {rev}: git archive failed: {tree.stderr.decode().strip()} (a commit of this repository?)")
        subprocess.run(["tar", "-x", "-C", tmp], input=tree.stdout, check=True)
        out = Path(tmp) / "figures.json"
        # This bench, with that commit's tree first on sys.path: the same measurement of that commit's netcheck.
        subprocess.run([sys.executable, __file__, "--repeat", str(repeat), "--json", str(out)], check=True, stdout=subprocess.DEVNULL, env={**os.environ, TREE: tmp})
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--baseline", metavar="REV", help="also run this bench at commit REV (e.g. 52c2135) and show its figures beside")
    args = ap.parse_args()
    r = measure(args.repeat)
    base = baseline(args.baseline, args.repeat) if args.baseline else None
    print(render(r, base, args.baseline or ""))
    if args.json:
        args.json.write_text(json.dumps({**r, "baseline": {"rev": args.baseline, **base}} if base else r, indent=2))


if __name__ == "__main__":
    main()
