"""Scale across hosts: H hosts of N containers on a VXLAN overlay against H x N containers on
one host, in the same run: build, the full reachability matrix, teardown, and where the time goes.

    sudo .venv/bin/python bench/scale.py            # 8 hosts x 50 against 400 on one host; 3 rounds, 2 to 6 minutes (load)
    sudo .venv/bin/python bench/scale.py --quick    # 4 hosts x 10 against 40 on one host; 15 to 30 seconds

The two labs (netcheck.scale.vxlan_hosts and netcheck.scale.bridge_topology) have the same
hosts (bridge-nf-call-iptables=1, FORWARD ACCEPT, no rules) and the same number of
containers; the multi-host one adds a host and an outside world per host, the underlay, and
the VXLAN join. Each lab is built, probed (every ordered pair: 159,600 at 400 containers,
140,000 of them across hosts for 8 x 50) and torn down in a process of its own, the two kinds
taking turns round after round, so that both see the same load and each peak memory is its
own. After each, the bench checks that nothing of it is left: no namespace of its tags, and
none of its tags in ``netcheck clean --dry-run``'s list. Every figure is a median over the
rounds; the ratio is the multi-host lab's against the one-host lab's (target: at most 2x).
Results go to bench/results/scale-<UTC time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
TARGET_RATIO = 2.0
KINDS = ("one", "multi")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- where the time goes


class Phases:
    """Cumulative wall time of named functions while active: each (owner, attribute) is wrapped
    for the measured run only, and put back after. Nested phases are each timed in full."""

    def __init__(self, targets: dict[str, tuple[Any, str]]) -> None:
        self.targets = targets
        self.seconds: dict[str, float] = dict.fromkeys(targets, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(targets, 0)

    @contextlib.contextmanager
    def active(self) -> Iterator[Phases]:
        saved = []
        for name, (owner, attr) in self.targets.items():
            original = getattr(owner, attr)
            saved.append((owner, attr, original))
            setattr(owner, attr, self._timed(name, original))
        try:
            yield self
        finally:
            for owner, attr, original in reversed(saved):
                setattr(owner, attr, original)

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


def _phases() -> Phases:
    from netcheck.lab import build, lab, teardown
    from netcheck.multihost import lab as multihost

    return Phases({
        "host labs: build": (lab.Lab, "build"),
        "host labs: base (host, wan, uplink)": (build, "base"),
        "host labs: bridges": (build, "bridges"),
        "host labs: containers": (build, "containers"),
        "host labs: services (2 echo listeners a container)": (build, "services"),
        "underlay": (multihost.MultiLab, "_underlay"),
        "join (vxlan, fdb, neighbours, routes)": (multihost.MultiLab, "make_join"),
        "host labs: teardown": (lab.Lab, "teardown"),
        "host labs: release (services)": (lab.Lab, "release_held"),
        "host labs: undo (links by group, namespaces)": (teardown, "undo_grouped"),
        "host labs: wait until links gone": (teardown, "_wait_links_gone"),
    })


# ----------------------------------------------------------------------------- child: one lab


def child(kind: str, hosts: int, per_host: int) -> dict[str, Any]:
    import iptc  # noqa: F401 - imported once per process, before any timing (0.4 s)

    from netcheck.lab import Lab
    from netcheck.multihost.lab import MultiLab
    from netcheck.multihost.matrix import CrossHostMatrix
    from netcheck.probes.matrix import Matrix, describe
    from netcheck.scale import bridge_topology, vxlan_hosts

    with Lab(bridge_topology(2)):  # warm-up: first use of pyroute2, iptc, threads
        pass
    n = hosts * per_host
    out: dict[str, Any] = {"kind": kind, "containers": n, "pairs": n * (n - 1)}
    phases = _phases()
    t0 = time.perf_counter()
    topology = vxlan_hosts(hosts, per_host) if kind == "multi" else bridge_topology(n)
    t1 = time.perf_counter()
    out["generate_s"] = t1 - t0
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    with phases.active():
        lab: Lab | MultiLab = MultiLab(topology).build() if kind == "multi" else Lab(topology).build()  # type: ignore[arg-type]
        t2 = time.perf_counter()
        tags = [lab.tag] + ([h.tag for h in lab.hosts.values()] if isinstance(lab, MultiLab) else [])
        out["namespaces"] = len(lab.namespaces())
        out["fds_built"] = len(os.listdir("/proc/self/fd"))  # a worker thread per namespace, its sockets, the listeners
        out["threads_built"] = threading.active_count()
        try:
            engine: Matrix | CrossHostMatrix = CrossHostMatrix(lab) if isinstance(lab, MultiLab) else Matrix(lab)
            with engine:
                result = engine.all() if isinstance(engine, CrossHostMatrix) else engine.bridge("br0")
            t3 = time.perf_counter()
            names = result.names
            host_of = [name.partition("/")[0] if "/" in name else "" for name in names]
            out["cross_host_pairs"] = sum(1 for a in host_of for b in host_of if a != b)
            out["failing_pairs"] = len(result.failing_pairs())
            out["failing_sample"] = describe(result, limit=5) if result.failing_pairs() else ""
            out["matrix_phases_s"] = dict(engine.timings)
            out["static_neighbours"] = engine.static_neighbours
        finally:
            t4 = time.perf_counter()
            lab.teardown()
            t5 = time.perf_counter()
    used = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime  # packets the kernel handles in ksoftirqd are not in it
    out.update(build_s=t2 - t1, matrix_s=t3 - t2, teardown_s=t5 - t4, tags=tags)
    out["total_s"] = out["build_s"] + out["matrix_s"] + out["teardown_s"]
    out["phases_s"] = {k: v for k, v in phases.seconds.items() if phases.calls[k]}
    out["phase_calls"] = {k: v for k, v in phases.calls.items() if v}
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["open_fds_after"] = len(os.listdir("/proc/self/fd"))
    return out


# ----------------------------------------------------------------------------- the orchestrator


def _leftovers(tags: list[str]) -> list[str]:
    """What is left of these tags: namespaces whose names carry them, and run records that ``netcheck clean --dry-run`` lists."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split()
    left = [f"namespace {name}" for name in listed if any(name.startswith(tag + "-") for tag in tags)]
    dry = subprocess.run([str(REPO / ".venv/bin/netcheck"), "clean", "--dry-run"], capture_output=True, text=True, check=False)
    text = (dry.stdout + dry.stderr).strip()
    left += [f"netcheck clean --dry-run: {line}" for line in text.splitlines() if any(tag in line for tag in tags)]
    from netcheck.ledger import default_run_dir

    left += [f"run record {path}" for tag in tags if (path := default_run_dir() / f"{tag}.jsonl").exists()]
    return left


def _run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", kind, "--hosts", str(args.hosts), "--per-host", str(args.per_host)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench child {kind} failed ({done.returncode}):\n{done.stderr.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    result["leftovers"] = _leftovers(result["tags"])
    if result["leftovers"]:
        raise SystemExit(f"bench child {kind} left: {'; '.join(result['leftovers'])} (remove it with: netcheck clean {' '.join(result['tags'])})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 hosts x 10 containers, against 40 on one host (15 to 30 seconds)")
    parser.add_argument("--hosts", type=int, help="hosts of the multi-host lab (default 8; --quick 4)")
    parser.add_argument("--per-host", type=int, help="containers per host (default 50; --quick 10)")
    parser.add_argument("--repeat", type=int, help="rounds, each building, probing and tearing down both labs (default 3)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.hosts = args.hosts or (4 if args.quick else 8)
    args.per_host = args.per_host or (10 if args.quick else 50)
    args.repeat = args.repeat or 3
    from netcheck.scale import MAX_CONTAINERS, MAX_HOSTS, MAX_PER_HOST

    if not 2 <= args.hosts <= MAX_HOSTS or not 1 <= args.per_host <= MAX_PER_HOST or args.hosts * args.per_host > MAX_CONTAINERS:
        parser.error(f"--hosts {args.hosts} --per-host {args.per_host}: use 2 to {MAX_HOSTS} hosts, 1 to {MAX_PER_HOST} containers per host, "
                     f"and at most {MAX_CONTAINERS} containers in all (the one-host lab holds them all)")
    if args.child:
        print(json.dumps(child(args.child, args.hosts, args.per_host)))
        return
    if os.geteuid() != 0:
        raise SystemExit("bench/scale.py builds network namespaces: run it as root (sudo .venv/bin/python bench/scale.py)")
    started = datetime.now(UTC)
    n = args.hosts * args.per_host
    report: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "hosts": args.hosts, "per_host": args.per_host, "containers": n,
                              "repeat": args.repeat, "nproc": os.cpu_count(), "load_before": os.getloadavg(), "runs": {k: [] for k in KINDS}}
    print(f"netcheck scale bench, {started:%Y-%m-%d %H:%M} UTC: {args.hosts} hosts x {args.per_host} containers (VXLAN) against {n} on one host, "
          f"{args.repeat} rounds; load average {report['load_before'][0]:.2f}", flush=True)
    for r in range(args.repeat):
        for kind in KINDS if r % 2 == 0 else tuple(reversed(KINDS)):
            print(f"  round {r + 1}: {kind} ...", end="", flush=True)
            run = _run_child(kind, args)
            report["runs"][kind].append(run)
            print(f" build {run['build_s']:.2f} s, matrix {run['matrix_s']:.2f} s, teardown {run['teardown_s']:.2f} s"
                  + (f", {run['failing_pairs']} FAILING PAIRS" if run["failing_pairs"] else ""), flush=True)
    report["load_after"] = os.getloadavg()
    print()
    print(render(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {path.relative_to(REPO)}")
    if any(run["failing_pairs"] for runs in report["runs"].values() for run in runs):
        print("\n" + next(run["failing_sample"] for runs in report["runs"].values() for run in runs if run["failing_pairs"]))
        raise SystemExit(1)


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(report: dict[str, Any]) -> str:
    """The tables (Markdown): the two labs side by side with their ratio, then where the time goes."""
    one, multi = report["runs"]["one"], report["runs"]["multi"]
    h, k, n = report["hosts"], report["per_host"], report["containers"]
    out = [f"Date {report['date']}; {report['nproc']} cores; load average {report['load_before'][0]:.2f} before, {report['load_after'][0]:.2f} after "
           f"(a shared machine). Medians of {report['repeat']} rounds; each lab in a process of its own, the two taking turns.", "",
           f"| | {h} hosts x {k} containers, VXLAN | {n} containers on one host | ratio (target ≤ {TARGET_RATIO:g}x) |", "|---|---|---|---|"]

    def row(label: str, get: Callable[[dict[str, Any]], float], fmt: Callable[[float], str] = _s, ratio: bool = True) -> None:
        a, b = median([get(x) for x in multi]), median([get(x) for x in one])
        out.append(f"| {label} | {fmt(a)} | {fmt(b)} | {a / b:.2f}x |" if ratio and b else f"| {label} | {fmt(a)} | {fmt(b)} | |")

    def count(v: float) -> str:
        return f"{v:,.0f}"

    row("namespaces", lambda x: x["namespaces"], count, ratio=False)
    out.append(f"| pairs (of which across hosts) | {multi[0]['pairs']:,} ({multi[0]['cross_host_pairs']:,}) | {one[0]['pairs']:,} ({one[0]['cross_host_pairs']:,}) | |")
    row("**build**", lambda x: x["build_s"])
    row("**matrix** (every ordered pair)", lambda x: x["matrix_s"])
    row("**teardown**", lambda x: x["teardown_s"])
    row("**build + matrix + teardown**", lambda x: x["total_s"])
    row("CPU of the process (user + sys) over the three", lambda x: x["cpu_s"])
    row("matrix pairs/s", lambda x: x["pairs"] / x["matrix_s"], count)
    row("peak RSS (MB)", lambda x: x["maxrss_mb"], count)
    fds = [f"{median([x['fds_built'] for x in runs]):,.0f} / {median([x['threads_built'] for x in runs]):,.0f}" for runs in (multi, one)]
    out.append(f"| open fds / threads, once built | {fds[0]} | {fds[1]} | |")
    out += ["", "**Where the time goes** (medians; nested phases are each timed in full: \"host labs: build\" holds its base, bridges, containers and services)", "",
            f"| phase | {h} x {k}, VXLAN | {n} on one host |", "|---|---|---|"]
    names = list(dict.fromkeys([*(p for x in multi for p in x["phases_s"]), *(p for x in one for p in x["phases_s"])]))
    matrix = list(dict.fromkeys([*(p for x in multi for p in x["matrix_phases_s"]), *(p for x in one for p in x["matrix_phases_s"])]))
    for name in names:
        a = median([x["phases_s"].get(name, 0.0) for x in multi])
        b = median([x["phases_s"].get(name, 0.0) for x in one])
        calls = multi[0]["phase_calls"].get(name, 0), one[0]["phase_calls"].get(name, 0)
        out.append(f"| {name} | {_s(a)} ({calls[0]} calls) | {_s(b) if b else '-'} ({calls[1]} calls) |")
    labels = {"sockets_s": "matrix: one raw ICMP socket per container", "neighbours_s": "matrix: permanent neighbour entries, set and cleared",
              "probe_s": "matrix: sending and matching", "evidence_s": "matrix: evidence of failing cells"}
    for name in matrix:
        a = median([x["matrix_phases_s"].get(name, 0.0) for x in multi])
        b = median([x["matrix_phases_s"].get(name, 0.0) for x in one])
        out.append(f"| {labels.get(name, name)} | {_s(a)} | {_s(b)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
