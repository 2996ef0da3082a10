"""The published-port matrix's cost, next to a baseline measured in the same run.

    sudo .venv/bin/python bench/ports.py [--repeat 5]

On the opt-in built-in seed1-ports (36 IPv4 cells: tcp, udp, sctp; a port and a range; three binds;
four access paths) it times, as medians over ``--repeat`` runs:

* the whole matrix as the suite sends it (``Prober.many`` of one evidence-carrying probe per cell,
  a capture inside the container, the expected-blocked cells costing their short timeout);
* per reachable cell, the netcheck probe one after another;
* the baseline: the same reachable TCP and UDP cells as a bare socket exchange with the service
  (connect, one line, its answer) from the same namespace, no capture, no evidence.

Prints a table and the JSON line it is made of.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _bare(ns, kind: int, dst: str, port: int) -> float:  # type: ignore[no-untyped-def]
    """One bare exchange with a netcheck service: connect, a line, the answer; milliseconds."""
    start = time.perf_counter()
    sock = ns.socket(socket.AF_INET, kind)
    try:
        sock.settimeout(1.0)
        sock.connect((dst, port))
        sock.send(b"GET / HTTP/1.0\r\n\r\n" if kind == socket.SOCK_STREAM and port in (8080, 8300) else b"netcheck-probe token=bench\n")
        sock.recv(4096)
    finally:
        sock.close()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from netcheck import spec
    from netcheck.evidence import ProbeRequest
    from netcheck.lab import Lab
    from netcheck.lab.plan import port_matrix
    from netcheck.probes import Prober

    t = spec.builtin("seed1-ports")
    cells = port_matrix(t)
    kinds = {"tcp": "http", "udp": "udp", "sctp": "sctp"}
    with Lab(t) as lab:
        probe = Prober(lab)
        expects = {True: "reach", False: "block", None: "observe"}
        requests = [ProbeRequest(kinds[c.protocol], c.source, c.dst, c.port, expect=expects[c.expected], target=c.target, capture=(lab.point(c.target),)) for c in cells]
        probe.many(requests)  # warm: capture points, scapy's import, the services' first accept
        whole, per_cell, bare = [], [], []
        reachable = [r for r, c in zip(requests, cells, strict=True) if c.expected]
        plain = [(c, r) for c, r in zip(cells, requests, strict=True) if c.expected and c.protocol in ("tcp", "udp") and c.path != "itself"]
        for _ in range(args.repeat):
            start = time.perf_counter()
            results = probe.many(requests)
            whole.append(time.perf_counter() - start)
            assert all(r.passed for r in results), [r.headline() for r in results if not r.passed]
            for r in reachable:
                start = time.perf_counter()
                probe.send(r)
                per_cell.append((time.perf_counter() - start) * 1000)
            for c, r in plain:
                ns = lab.host if c.source == "host" else lab.wan if c.source == "wan" else lab.container_ns(c.source)
                kind = socket.SOCK_STREAM if c.protocol == "tcp" else socket.SOCK_DGRAM
                bare.append(ns.call(lambda ns=ns, kind=kind, r=r: _bare(ns, kind, str(r.destination), r.port or 0)))
    report = {
        "cells": len(cells), "reachable": len(reachable), "blocked": len(cells) - len(reachable), "repeat": args.repeat,
        "matrix_s": round(statistics.median(whole), 3), "probe_ms": round(statistics.median(per_cell), 3), "bare_ms": round(statistics.median(bare), 3),
    }
    print(f"| what | netcheck | baseline in the same run |\n|---|---|---|\n"
          f"| the published-port matrix of seed1-ports ({report['cells']} cells, {report['blocked']} expected blocked), Prober.many | {report['matrix_s']} s | |\n"
          f"| one reachable cell, evidence and capture | {report['probe_ms']} ms | bare socket exchange (tcp/udp cells) {report['bare_ms']} ms |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
