"""The published-port matrix's cost per address family, next to a baseline measured in the same run.

    sudo .venv/bin/python bench/ports.py                          # seed1-dual, N=100 runs of each family's matrix
    sudo .venv/bin/python bench/ports.py --repeat 20 --topology seed1-ports

On the built-in dual-stack seed1-dual (24 cells a family: tcp, udp, sctp; a port and a range; the uplink's
address, the wildcard, a given address; four access paths) it times, per family, as medians over ``--repeat``
runs, the IPv4 and IPv6 runs interleaved so that the machine's noise falls on both alike:

* the whole matrix as the suite sends it (``Prober.many`` of one evidence-carrying probe per cell, a capture
  inside the container, the expected-blocked cells costing their short timeout);
* per reachable cell, the netcheck probe one after another;
* the baseline: the same reachable TCP and UDP cells as a bare socket exchange with the service (connect, one
  line, its answer) from the same namespace, no capture, no evidence.

Prints a table (the IPv6 / IPv4 ratios beside) and the JSON line it is made of.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _bare(ns, kind: int, dst: str, port: int, http: bool) -> float:  # type: ignore[no-untyped-def]
    """One bare exchange with a netcheck service: connect, a line, the answer; milliseconds."""
    start = time.perf_counter()
    sock = ns.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, kind)
    try:
        sock.settimeout(1.0)
        sock.connect((dst, port))
        sock.send(b"GET / HTTP/1.0\r\n\r\n" if http else b"netcheck-probe token=bench\n")
        sock.recv(4096)
    finally:
        sock.close()
    return (time.perf_counter() - start) * 1000


def measure(topology: str, repeat: int) -> dict[str, Any]:
    from netcheck import spec
    from netcheck.evidence import ProbeRequest
    from netcheck.lab import Lab
    from netcheck.lab.plan import port_matrix
    from netcheck.probes import Prober

    t = spec.builtin(topology)
    kinds = {"tcp": "http", "udp": "udp", "sctp": "sctp"}
    expects = {True: "reach", False: "block", None: "observe"}
    out: dict[str, Any] = {"topology": topology, "repeat": repeat}
    with Lab(t) as lab:
        probe = Prober(lab)
        cells = {f: port_matrix(t, f) for f in t.families}
        requests = {f: [ProbeRequest(kinds[c.protocol], c.source, c.dst, c.port, expect=expects[c.expected], target=c.target, capture=(lab.point(c.target),))
                        for c in cs] for f, cs in cells.items()}
        whole: dict[int, list[float]] = {f: [] for f in t.families}
        per_cell: dict[int, list[float]] = {f: [] for f in t.families}
        bare: dict[int, list[float]] = {f: [] for f in t.families}
        for f in t.families:
            probe.many(requests[f])  # warm: capture points, scapy's import, the services' first accept, NDP
        for _ in range(repeat):
            for f in t.families:
                start = time.perf_counter()
                results = probe.many(requests[f])
                whole[f].append(time.perf_counter() - start)
                assert all(r.passed for r in results), [r.headline() for r in results if not r.passed]
                for c, r in zip(cells[f], requests[f], strict=True):
                    if not c.expected:
                        continue
                    start = time.perf_counter()
                    probe.send(r)
                    per_cell[f].append((time.perf_counter() - start) * 1000)
                    if c.protocol in ("tcp", "udp") and c.path != "itself":
                        ns = lab.host if c.source == "host" else lab.wan if c.source == "wan" else lab.container_ns(c.source)
                        kind = socket.SOCK_STREAM if c.protocol == "tcp" else socket.SOCK_DGRAM
                        http = c.protocol == "tcp" and c.target_port == 5000
                        bare[f].append(ns.call(lambda ns=ns, kind=kind, r=r, http=http: _bare(ns, kind, str(r.destination), r.port or 0, http)))
    for f in t.families:
        out[f"v{f}"] = {"cells": len(cells[f]), "reachable": sum(1 for c in cells[f] if c.expected), "matrix_s": statistics.median(whole[f]),
                        "probe_ms": statistics.median(per_cell[f]), "bare_ms": statistics.median(bare[f])}
    out["load_avg"] = os.getloadavg()
    return out


def render(r: dict[str, Any]) -> str:
    fams = [k for k in ("v4", "v6") if k in r]
    head = f"**The published-port matrix, per family** ({r['topology']}; median of {r['repeat']} runs of each, interleaved; load {r['load_avg'][0]:.1f})"
    lines = [head, "", "| | " + " | ".join(f"IPv{k[1]}" for k in fams) + (" | IPv6 / IPv4 |" if len(fams) == 2 else " |"), "|---" * (len(fams) + 1 + (len(fams) == 2)) + "|"]

    def row(label: str, key: str, fmt: str) -> str:
        vals = [r[k][key] for k in fams]
        ratio = f" | {vals[1] / vals[0]:.2f}x" if len(vals) == 2 else ""
        return f"| {label} | " + " | ".join(format(v, fmt) for v in vals) + ratio + " |"

    lines += [
        "| cells (reachable) | " + " | ".join(f"{r[k]['cells']} ({r[k]['reachable']})" for k in fams) + (" | |" if len(fams) == 2 else " |"),
        row("the whole matrix, Prober.many (s)", "matrix_s", ".3f"),
        row("one reachable cell, evidence and capture (ms)", "probe_ms", ".2f"),
        row("bare socket exchange, tcp/udp cells (ms)", "bare_ms", ".3f"),
        "| probe / bare exchange | " + " | ".join(f"{r[k]['probe_ms'] / r[k]['bare_ms']:.0f}x" for k in fams) + (" | |" if len(fams) == 2 else " |"),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--topology", default="seed1-dual")
    args = parser.parse_args()
    result = measure(args.topology, args.repeat)
    print(render(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
