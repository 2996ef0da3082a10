"""The datapath model's cost: one trace, next to one probe measured in the same run.

    sudo .venv/bin/python bench/datapath.py          # about 15 s

Measured (medians):

* one trace on the planned state of seed1 and seed2, per kind of flow (ICMP out and back,
  a hairpin DNAT, a VIP), of seed1-dual over IPv6 (ip6tables), and of seed1-ports (a port
  range over UDP, an SCTP INIT, a port bound to 127.0.0.1 from the host), and the planned
  state built from scratch (plan + state);
* the expectations, which trace the planned state: one question (``expect.reaches``,
  ``expect.published_from_container``), every question the suites ask of seed1-ports, and
  its published-port matrix (every cell's expectation), cold (a new topology object: plan,
  state and traces built) and memoised (the traces are memoised per topology object);
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
from dataclasses import replace
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


def _every_question(t: object) -> int:
    """Every expectation the suites ask of a topology, on each family: pairs, the outside, each publish's access paths, each VIP."""
    from netcheck import expect
    from netcheck import spec as host_spec

    assert isinstance(t, host_spec.Topology)
    n = 0
    for f in t.families:
        names = [c.name for c in t.containers if c.at(f) is not None]
        n += sum(expect.reaches(t, a, b, f) for a in names for b in names if a != b) + sum(expect.reaches_outside(t, a, f) for a in names)
        for p in t.publishes:
            n += expect.published_from_outside(t, p, f) + expect.published_from_host(t, p, f) + expect.published_to_itself(t, p, f)
            n += sum(expect.published_from_container(t, p, o, f) for o in names if o != p.container)
        n += sum(expect.vip_from_container(t, v, o, f) for v in t.vips for o in names if o != v.container)
    return n


def main() -> int:
    from netcheck import expect, spec
    from netcheck.datapath import Flow, trace
    from netcheck.diagnose import datapath, rules
    from netcheck.diagnose import state as kernel_state
    from netcheck.diagnose.recording import facts
    from netcheck.lab import Lab
    from netcheck.lab.plan import plan, planned, port_matrix, state
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
    dual, ports = spec.builtin("seed1-dual"), spec.builtin("seed1-ports")
    s6, sp = planned(dual), planned(ports)
    flows |= {
        "trace icmp to the outside over IPv6 (seed1-dual, planned)": (s6, Flow("netns0", "2001:db8:2::1", "icmp")),
        "trace hairpin DNAT over IPv6 (seed1-dual, planned)": (s6, Flow("netns1", "2001:db8:1::2", "tcp", 5000)),
        "trace udp range port from outside (seed1-ports, planned)": (sp, Flow("wan", "203.0.113.2", "udp", 8202)),
        "trace sctp INIT from outside (seed1-ports, planned)": (sp, Flow("wan", "203.0.113.2", "sctp", 9202, reply=False)),
        "trace 127.0.0.1 bind from the host (seed1-ports, planned)": (sp, Flow("host", "127.0.0.1", "tcp", 8102)),
    }
    for name, (s, f) in flows.items():
        rows[name] = timed(lambda s=s, f=f: trace(s, f), 2000)
    rows["planned state from scratch (seed2: plan + state)"] = timed(lambda: state(plan(seed2, KernelNames("ncbench"))), 500)
    rows["planned state from scratch (seed1-ports: plan + state)"] = timed(lambda: state(plan(ports, KernelNames("ncbench"))), 200)
    rows["expect.reaches (seed1, one question, memoised)"] = timed(lambda: expect.reaches(seed1, "netns0", "netns1"), 2000)
    rows["expect.published_from_container (seed1-ports, one question, memoised)"] = timed(lambda: expect.published_from_container(ports, ports.publishes[3], "netns1"), 1000)
    # Cold: a new topology object each time (the planned state and its traces are memoised per object), so the plan and state are built too.
    rows["expect: every suite question of seed1-ports (cold)"] = timed(lambda: _every_question(replace(ports)), 20)
    rows["expect: every suite question of seed1-ports (memoised)"] = timed(lambda: _every_question(ports), 20)
    rows["port_matrix (seed1-ports: every cell's expectation, cold)"] = timed(lambda: port_matrix(replace(ports)), 20)
    rows["port_matrix (seed1-ports: every cell's expectation, memoised)"] = timed(lambda: port_matrix(ports), 20)

    with Lab(seed1) as lab:
        probe = Prober(lab)
        probe.icmp("netns0", "198.51.100.1")  # warm: ARP, sockets
        rows["baseline: one probe with two captures (Prober.icmp)"] = timed(lambda: probe.icmp("netns0", "198.51.100.1", capture=["wan:uplink", "host:br0"]), 20)
        rows["baseline: one probe without captures"] = timed(lambda: probe.icmp("netns0", "198.51.100.1"), 50)
        rows["snapshot of the lab (read by the diagnosis anyway)"] = timed(lambda: kernel_state.snapshot(lab.namespaces()), 10)
        snap = kernel_state.snapshot(lab.namespaces())
        pairs = datapath.peers(rules.Evidence(facts(lab, snap), snap))
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
