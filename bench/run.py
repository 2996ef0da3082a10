"""netcheck's benchmark: one command, a table, and JSON, with every baseline measured in the same run.

    sudo .venv/bin/python bench/run.py            # full: N = 10, 100, 250; about 8 minutes
    sudo .venv/bin/python bench/run.py --quick    # N = 10, 100, fewer repeats; about 2 minutes

Every figure is a median over repeated runs. What is measured, against what:

* build + teardown per container of N containers on one bridge (netcheck.scale), against
  ``ip -batch`` and against one ``ip`` command per operation (bench/baselines.py);
* the cost of one evidence-carrying probe (``Prober.icmp`` with two capture points), against
  a ping on a persistent raw ICMP socket and against scapy's ``sr1()``;
* a full reachability matrix of N containers (``Matrix.bridge``), against a raw-socket ping
  and an ``sr1()`` per pair, one after another (measured on a sample of pairs, extrapolated);
* build + matrix + teardown end to end;
* the wall time of ``pytest suites/`` with ``-n 0`` and ``-n 2``;
* the peak memory (ru_maxrss) of a process that builds N containers and probes their matrix.

Each N runs in a process of its own (``--child N``), so that its peak memory is its own.
The machine is shared and noisy: the load average before and after is in the table. Results
go to bench/results/bench-<UTC time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

RESULTS = REPO / "bench" / "results"
TARGETS = {"build_ratio": 1.5, "probe_ms": 2.0, "matrix100_s": 5.0, "e2e250_s": 60.0, "suites_s": 30.0}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- child: one N


def _raw_ping(sock: socket.socket, dst: str, ident: int, seq: int) -> float:
    from netcheck.packet import echo_request

    start = time.perf_counter()
    sock.sendto(echo_request(ident, seq, b"netcheck"), (dst, 0))
    deadline = start + 1.0
    while (left := deadline - time.perf_counter()) > 0 and select.select([sock], [], [], left)[0]:
        data = sock.recv(2048)
        ihl = (data[0] & 0x0F) * 4
        if data[ihl] == 0 and data[ihl + 4 : ihl + 8] == ident.to_bytes(2, "big") + seq.to_bytes(2, "big"):
            return time.perf_counter() - start
    raise RuntimeError(f"raw ping to {dst}: no reply")


def _sr1(dst: str) -> float:
    """One scapy sr1() from the calling thread's namespace, as a script would send it."""
    from scapy.layers.inet import ICMP, IP
    from scapy.sendrecv import sr1

    start = time.perf_counter()
    reply = sr1(IP(dst=dst) / ICMP(), timeout=2, verbose=0)
    if reply is None:
        raise RuntimeError(f"sr1 to {dst}: no reply")
    return time.perf_counter() - start


def _scapy_here() -> None:
    """Point scapy at the calling thread's namespace: it caches interfaces, routes and ARP at import."""
    import scapy.layers.inet  # noqa: F401
    from scapy.config import conf

    conf.ifaces.reload()
    conf.route.resync()
    conf.netcache.flush()


def child(n: int, repeat: int, ping_samples: int, sr1_samples: int, probe_samples: int) -> dict[str, Any]:
    import iptc  # noqa: F401 - imported once per process, before any timing (0.4 s)

    from netcheck.lab import Lab
    from netcheck.probes.matrix import Matrix
    from netcheck.scale import bridge_topology

    with Lab(bridge_topology(2)):  # warm-up: first use of pyroute2, iptc, threads
        pass
    topology = bridge_topology(n)
    out: dict[str, Any] = {"n": n, "pairs": n * (n - 1), "build_s": [], "teardown_s": [], "matrix_s": [], "e2e_s": [], "static_neighbours": None,
                           "neighbours_s": [], "probe_s": []}
    for k in range(repeat):
        t0 = time.perf_counter()
        lab = Lab(topology).build()
        t1 = time.perf_counter()
        try:
            with Matrix(lab) as m:
                result = m.bridge("br0")
            out["static_neighbours"] = m.static_neighbours
            out["neighbours_s"].append(m.timings.get("neighbours_s", 0.0))
            out["probe_s"].append(m.timings["probe_s"])
            t2 = time.perf_counter()
            if result.failing_pairs():
                raise RuntimeError(f"matrix of {n}: {len(result.failing_pairs())} failing pairs")
            if k == repeat - 1:
                out.update(_per_pair_baselines(lab, n, ping_samples, sr1_samples, probe_samples))
        finally:
            t3 = time.perf_counter()
            lab.teardown()
            t4 = time.perf_counter()
        out["build_s"].append(t1 - t0)
        out["teardown_s"].append(t4 - t3)
        out["matrix_s"].append(t2 - t1)
        out["e2e_s"].append((t2 - t0) + (t4 - t3))
    if probe_samples:  # the smallest N also times the built-in seed labs, as the suites build them
        from netcheck import spec

        for name in ("seed1", "seed2"):
            builds, teardowns = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                lab = Lab(spec.builtin(name)).build()
                t1 = time.perf_counter()
                lab.teardown()
                builds.append(t1 - t0)
                teardowns.append(time.perf_counter() - t1)
            out[f"{name}_build_s"], out[f"{name}_teardown_s"] = builds, teardowns
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _per_pair_baselines(lab: Any, n: int, ping_samples: int, sr1_samples: int, probe_samples: int) -> dict[str, Any]:
    """Per-pair costs, on neighbours: c_i -> c_(i+1) (a warm-up ping resolves ARP first)."""
    from netcheck.probes import Prober

    names = [c.name for c in lab.topology.containers]
    ips = [str(c.address.ip) for c in lab.topology.containers]
    pairs = [(i, (i + 1) % n) for i in range(min(n, 50))]  # at most 100 learned ARP entries (the table is the machine's)
    socks = {i: lab.container_ns(names[i]).socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) for i, _ in pairs}
    out: dict[str, Any] = {}
    try:
        for i, j in pairs:
            _raw_ping(socks[i], ips[j], 0x4E43, 0)  # resolve ARP
        times = []
        for rep in range(max(1, ping_samples // len(pairs))):
            for i, j in pairs:
                times.append(_raw_ping(socks[i], ips[j], 0x4E43, rep + 1))
        out["raw_ping_ms"] = median(times) * 1000
    finally:
        for s in socks.values():
            s.close()
    sr1_times = []
    for i, j in pairs[:sr1_samples]:
        ns = lab.container_ns(names[i])
        ns.call(_scapy_here)  # not timed: once per source namespace
        ns.call(_sr1, ips[j])  # not timed: scapy resolves the MAC (its own ARP cache)
        sr1_times.append(ns.call(_sr1, ips[j]))
    out["sr1_ms"] = median(sr1_times) * 1000
    if probe_samples:
        prober = Prober(lab)
        a, b = names[0], names[1]
        points = [lab.point(a), lab.point(b)]
        prober.icmp(a, ips[1], target=b, capture=points)  # warm-up: opens the capture points, imports scapy
        probe_times = []
        for _ in range(probe_samples):
            t = time.perf_counter()
            r = prober.icmp(a, ips[1], target=b, capture=points)
            probe_times.append(time.perf_counter() - t)
            assert r.passed and all(c.seen for c in r.captures), r.explain()
        out["probe_ms"] = median(probe_times) * 1000
        out["probe_samples"] = probe_samples
    out["ping_samples"], out["sr1_samples"] = len(pairs) * max(1, ping_samples // len(pairs)), len(sr1_times)
    return out


# ----------------------------------------------------------------------------- the orchestrator


def _run_child(n: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", str(n), "--repeat", str(args.repeat), "--ping-samples", str(args.ping_samples),
            "--sr1-samples", str(args.sr1_samples), "--probe-samples", str(args.probe_samples if n == min(args.sizes) else 0)]
    done = subprocess.run(argv, capture_output=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench child N={n} failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def _suites(workers: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        done = subprocess.run([str(REPO / ".venv/bin/pytest"), "suites/", "-q", "-n", workers, "-p", "no:cacheprovider", "--netcheck-report", "none"],
                              capture_output=True, check=False, cwd=REPO)
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            tail = done.stdout.decode(errors="replace")[-2000:]
            raise SystemExit(f"pytest suites/ -n {workers} failed ({done.returncode}):\n{tail}")
    return times


def _machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu, "python": platform.python_version(), "load_before": os.getloadavg()}


def _timed(fn: Callable[[int], tuple[float, float]], n: int, repeat: int) -> dict[str, list[float]]:
    builds, teardowns = [], []
    for _ in range(repeat):
        b, t = fn(n)
        builds.append(b)
        teardowns.append(t)
    return {"build_s": builds, "teardown_s": teardowns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10 and 100 only, fewer repeats (about 2 minutes)")
    parser.add_argument("--sizes", help="comma-separated N (default 10,100,250; --quick 10,100)")
    parser.add_argument("--repeat", type=int, help="repeats of each measured build (default 5; --quick 3)")
    parser.add_argument("--no-suites", action="store_true", help="skip the pytest suites/ timings")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ping-samples", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--sr1-samples", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--probe-samples", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeat = args.repeat or (3 if args.quick else 5)
    if args.child:
        print(json.dumps(child(args.child, args.repeat, args.ping_samples, args.sr1_samples, args.probe_samples)))
        return
    if os.geteuid() != 0:
        raise SystemExit("bench/run.py builds network namespaces: run it as root (sudo .venv/bin/python bench/run.py)")
    try:
        args.sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else ([10, 100] if args.quick else [10, 100, 250])
    except ValueError:
        parser.error(f"--sizes {args.sizes}: give numbers of containers separated by commas, e.g. --sizes 10,100")
    if any(not 2 <= n <= 1000 for n in args.sizes):
        parser.error(f"--sizes {','.join(map(str, args.sizes))}: each size must be from 2 to 1000 containers")
    per_op_repeat = {n: (1 if n >= 250 or args.quick else min(args.repeat, 3)) for n in args.sizes}
    started = datetime.now(UTC)
    report: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "machine": _machine(), "repeat": args.repeat, "sizes": args.sizes, "build": {}, "matrix": {}}
    print(f"netcheck bench, {started:%Y-%m-%d %H:%M} UTC: {report['machine']['nproc']} cores ({report['machine']['cpu']}), "
          f"kernel {report['machine']['kernel']}, load average {report['machine']['load_before'][0]:.2f}", flush=True)
    import iptc  # noqa: F401 - the baselines' run records import the kernel layer

    for n in args.sizes:
        print(f"  N={n}: netcheck ...", end="", flush=True)
        mine = _run_child(n, args)
        print(" ip -batch ...", end="", flush=True)
        batch = _timed(__import__("baselines").ip_batch, n, args.repeat)
        print(" ip per operation ...", flush=True)
        per_op = _timed(__import__("baselines").ip_per_operation, n, per_op_repeat[n])
        report["build"][n] = {"netcheck": {"build_s": mine["build_s"], "teardown_s": mine["teardown_s"]}, "ip_batch": batch, "ip_per_op": per_op}
        report["matrix"][n] = {k: v for k, v in mine.items() if k not in ("build_s", "teardown_s")}
    if not args.no_suites:
        suite_repeat = 1 if args.quick else 3
        print("  pytest suites/ -n 0 and -n 2 ...", flush=True)
        report["suites"] = {"n0_s": _suites("0", suite_repeat), "n2_s": _suites("2", suite_repeat)}
    report["machine"]["load_after"] = os.getloadavg()
    print()
    print(render(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nJSON: {path.relative_to(REPO)}")


def _memory(report: dict[str, Any]) -> str:
    """Peak RSS as base + per container + per pair: three sizes fit it exactly, two give one slope."""
    rows = [report["matrix"][k] for k in sorted(report["matrix"], key=int)]
    if len(rows) < 2:
        return ""
    if len(rows) == 2:
        lo, hi = rows
        slope = (hi["maxrss_mb"] - lo["maxrss_mb"]) * 2**20 / (hi["pairs"] - lo["pairs"])
        return f"Peak memory (ru_maxrss of the process that builds N containers and probes their matrix) grows by {slope:.0f} bytes per added pair from N={lo['n']} to N={hi['n']}."
    (n1, r1), (n2, r2), (n3, r3) = [(row["n"], row["maxrss_mb"] * 2**20) for row in rows[-3:]]
    # r = a + b*n + c*n*(n-1): two differences eliminate a, then b.
    p1, p2, p3 = n1 * (n1 - 1), n2 * (n2 - 1), n3 * (n3 - 1)
    c = ((r3 - r2) / (n3 - n2) - (r2 - r1) / (n2 - n1)) / ((p3 - p2) / (n3 - n2) - (p2 - p1) / (n2 - n1))
    b = (r2 - r1 - c * (p2 - p1)) / (n2 - n1)
    return (f"Peak memory (ru_maxrss of the process that builds N containers and probes their matrix): {rows[-3]['maxrss_mb']:.0f}, "
            f"{rows[-2]['maxrss_mb']:.0f} and {rows[-1]['maxrss_mb']:.0f} MB at N={n1}, {n2}, {n3}; that is {b / 1024:.0f} KiB per container "
            f"and {c:.0f} bytes per pair, where the matrix's own tables (expected, seen, observed and the result's two copies) take 40 bytes per pair.")


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


def render(report: dict[str, Any]) -> str:
    """The table (Markdown), with ratios against the baselines and the targets."""
    m = report["machine"]
    out = [f"Date {report['date']}; {m['nproc']} cores, {m['cpu']}, kernel {m['kernel']}, Python {m['python']}; "
           f"load average {m['load_before'][0]:.2f} before, {m.get('load_after', [float('nan')])[0]:.2f} after "
           f"(a shared machine: other test runs ran at the same time). Medians of {report['repeat']} runs unless noted.", ""]
    out += ["**Build + teardown, per container** (N containers on one bridge)", "",
            "| N | netcheck | ip -batch | ip per operation | netcheck / ip -batch | netcheck / ip per op |", "|---|---|---|---|---|---|"]
    for n, b in report["build"].items():
        per = {k: median([x + y for x, y in zip(v["build_s"], v["teardown_s"], strict=True)]) / int(n) * 1000 for k, v in b.items()}
        target = f" (target ≤ {TARGETS['build_ratio']}x)" if int(n) == 100 else ""
        out.append(f"| {n} | {per['netcheck']:.2f} ms | {per['ip_batch']:.2f} ms | {per['ip_per_op']:.2f} ms | "
                   f"{per['netcheck'] / per['ip_batch']:.2f}x{target} | {per['netcheck'] / per['ip_per_op']:.2f}x |")
    first = report["matrix"][min(report["matrix"], key=int)]
    seeds = [f"{name} {median(first[f'{name}_build_s']) * 1000:.0f} ms + {median(first[f'{name}_teardown_s']) * 1000:.0f} ms" for name in ("seed1", "seed2") if f"{name}_build_s" in first]
    if seeds:
        out += ["", "Built-in labs (host, wan, containers, rules, services), build + teardown: " + "; ".join(seeds) + "."]
    if "probe_ms" in first:
        out += ["", f"**One probe** (N={first['n']} lab, median of {first['probe_samples']} probes; ping and sr1 medians of {first['ping_samples']} and {first['sr1_samples']})", "",
                "| probe | median | vs raw socket |", "|---|---|---|",
                f"| netcheck Prober.icmp, evidence with 2 capture points | {first['probe_ms']:.2f} ms (target ≤ {TARGETS['probe_ms']:g} ms) | {first['probe_ms'] / first['raw_ping_ms']:.0f}x slower |",
                f"| raw ICMP socket ping (persistent socket, no evidence) | {first['raw_ping_ms']:.3f} ms | 1x |",
                f"| scapy sr1() (no evidence) | {first['sr1_ms']:.2f} ms | {first['sr1_ms'] / first['raw_ping_ms']:.0f}x slower |"]
    out += ["", "**Full matrix** (every ordered pair). Baselines: one probe per pair, one after another, extrapolated from a sample "
                "of pairs whose neighbours are already resolved: a lower bound, since past about 30 containers the machine-wide ARP "
                "table (gc_thresh3 = 1024) refuses the rest. \"neighbours\" is the matrix installing and removing its permanent "
                "neighbour entries (see docs/performance.md); \"probing\" is the sending and matching.", "",
            "| N | pairs | netcheck matrix | of which neighbours | of which probing | pairs/s | raw ping per pair | sr1 per pair "
            "| speed-up vs raw | speed-up vs sr1 | build + matrix + teardown | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in report["matrix"].items():
        mx = median(r["matrix_s"])
        raw = r["raw_ping_ms"] * r["pairs"] / 1000
        sr1 = r["sr1_ms"] * r["pairs"] / 1000
        tgt = f" (target ≤ {TARGETS['matrix100_s']:g} s)" if int(n) == 100 else ""
        e2e_t = f" (target ≤ {TARGETS['e2e250_s']:g} s)" if int(n) == 250 else ""
        nb = _s(median(r["neighbours_s"])) if r.get("static_neighbours") else "none (ARP)"
        out.append(f"| {n} | {r['pairs']:,} | {_s(mx)}{tgt} | {nb} | {_s(median(r['probe_s']))} | {r['pairs'] / mx:,.0f} | {_s(raw)} | {_s(sr1)} | "
                   f"{raw / mx:.2f}x | {sr1 / mx:.0f}x | {median(r['e2e_s']):.2f} s{e2e_t} | {r['maxrss_mb']:.0f} MB |")
    out += ["", _memory(report)]
    if "suites" in report:
        s = report["suites"]
        out += ["", f"**pytest suites/** (both built-in seeds; wall time, median of {len(s['n0_s'])}): "
                    f"-n 0: {median(s['n0_s']):.1f} s, -n 2: {median(s['n2_s']):.1f} s (target ≤ {TARGETS['suites_s']:g} s on 2 cores)"]
    return "\n".join(out)


if __name__ == "__main__":
    main()
