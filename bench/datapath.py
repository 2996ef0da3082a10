"""The datapath model's cost: one trace, next to one probe measured in the same run.

    sudo .venv/bin/python bench/datapath.py          # about 15 s

Measured (medians):

* one trace on the planned state of seed1 and seed2, per kind of flow (ICMP out and back,
  a hairpin DNAT, a VIP), and the planned state built from scratch (plan + state);
* on a live seed1 lab: the snapshot the diagnosis reads anyway, the observed state built from
  it, and one trace on it;
* the baseline from the same run: one evidence-carrying probe (``Prober.icmp``, two captures)
  and one plain probe without captures, on the same lab.

Results go to bench/results/datapath-<UTC time>.json (git-ignored).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    from netcheck import spec
    from netcheck.datapath import Flow, trace
    from netcheck.diagnose import datapath, rules
    from netcheck.diagnose import state as st
    from netcheck.lab import Lab
    from netcheck.lab.plan import plan, planned, state
    from netcheck.naming import KernelNames
    from netcheck.probes import Prober

    rows: dict[str, float] = {}
    seed1, seed2 = spec.builtin("seed1"), spec.builtin("seed2")
    s1, s2 = planned(seed1), planned(seed2)
    flows = {
        "trace icmp to the outside (seed1, planned)": (s1, Flow("netns0", "198.51.100.1", "icmp")),
        "trace hairpin DNAT (seed1, planned)": (s1, Flow("netns1", "203.0.113.2", "tcp", 5000)),
        "trace VIP from a container (seed2, planned)": (s2, Flow("http3", "10.100.100.100", "tcp", 8080)),
    }
    for name, (s, f) in flows.items():
        rows[name] = timed(lambda s=s, f=f: trace(s, f), 2000)
    rows["planned state from scratch (seed2: plan + state)"] = timed(lambda: state(plan(seed2, KernelNames("ncbench"))), 500)

    with Lab(seed1) as lab:
        probe = Prober(lab)
        probe.icmp("netns0", "198.51.100.1")  # warm: ARP, sockets
        rows["baseline: one probe with two captures (Prober.icmp)"] = timed(lambda: probe.icmp("netns0", "198.51.100.1", capture=["wan:uplink", "host:br0"]), 20)
        rows["baseline: one probe without captures"] = timed(lambda: probe.icmp("netns0", "198.51.100.1"), 50)
        rows["snapshot of the lab (read by the diagnosis anyway)"] = timed(lambda: st.snapshot(lab.namespaces()), 10)
        snap = st.snapshot(lab.namespaces())
        pairs = datapath.peers(rules.Evidence(lab, snap))
        rows["observed state from the snapshot"] = timed(lambda: datapath.observed(snap, pairs), 200)
        observed = datapath.observed(snap, pairs)
        rows["trace hairpin DNAT (seed1, observed)"] = timed(lambda: trace(observed, Flow("netns1", "203.0.113.2", "tcp", 5000)), 2000)

    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:8.3f} ms")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"datapath-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"median_ms": rows}, indent=1), "utf-8")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
