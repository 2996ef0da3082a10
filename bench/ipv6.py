"""The cost of an ICMPv6 probe next to an ICMPv4 one, measured in the same run on one seed1-dual lab.

    sudo .venv/bin/python bench/ipv6.py              # 200 probes of each family, interleaved
    sudo .venv/bin/python bench/ipv6.py --samples 50

Both families probe the same pair (netns0 -> netns1, across br0) with the same two capture points,
one probe of each family after the other, so that the machine's noise falls on both alike. Beside
each: a bare echo on a persistent raw socket of that family (no captures, no evidence), so the
ratio of netcheck's probe to the kernel's round trip is visible per family. Medians, in ms; the
result goes to bench/results/ipv6-<UTC time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netcheck import spec
from netcheck.lab import Lab
from netcheck.packet import ICMPV6_ECHOREPLY, echo_request, echo_request6
from netcheck.probes import Prober


def _raw_echo(sock: socket.socket, dst: str, packet: bytes, reply_type: int, v6: bool) -> float:
    """One echo on a raw socket: seconds until its reply (ICMPv4 replies carry the IP header, ICMPv6 ones do not)."""
    ident = struct.unpack_from("!H", packet, 4)[0]
    t = time.perf_counter()
    sock.sendto(packet, (dst, 0))
    while select.select([sock], [], [], 1.0)[0]:
        data = sock.recv(2048)
        icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
        if icmp[0] == reply_type and struct.unpack_from("!H", icmp, 4)[0] == ident:
            return time.perf_counter() - t
    raise TimeoutError(f"no echo reply from {dst}")


def measure(samples: int) -> dict[str, Any]:
    with Lab(spec.builtin("seed1-dual")) as lab:
        t = lab.topology
        a, b = t.container("netns0"), t.container("netns1")
        assert b.address is not None and b.address6 is not None
        dst = {4: str(b.address.ip), 6: str(b.address6.ip)}
        prober = Prober(lab)
        points = [lab.point(a.name), lab.point(b.name)]
        for family in (4, 6):  # warm-up: opens the capture points, resolves ARP and NDP
            prober.icmp(a.name, dst[family], target=b.name, capture=points)
        probe: dict[int, list[float]] = {4: [], 6: []}
        for _ in range(samples):
            for family in (4, 6):
                t0 = time.perf_counter()
                r = prober.icmp(a.name, dst[family], target=b.name, capture=points)
                probe[family].append(time.perf_counter() - t0)
                assert r.passed and all(c.seen for c in r.captures), r.explain()
        ns = lab.container_ns(a.name)
        socks = {4: ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), 6: ns.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)}
        raw: dict[int, list[float]] = {4: [], 6: []}
        try:
            for seq in range(samples):
                raw[4].append(_raw_echo(socks[4], dst[4], echo_request(0x4E36, seq, b"netcheck-bench"), 0, False))
                raw[6].append(_raw_echo(socks[6], dst[6], echo_request6(0x4E36, seq, b"netcheck-bench"), ICMPV6_ECHOREPLY, True))
        finally:
            for s in socks.values():
                s.close()
    med = {f"{kind}_ms_v{f}": statistics.median(v) * 1000 for kind, d in (("probe", probe), ("raw", raw)) for f, v in d.items()}
    return {"samples": samples, "load_avg": os.getloadavg(), **med, "probe_ratio_v6_v4": med["probe_ms_v6"] / med["probe_ms_v4"],
            "raw_ratio_v6_v4": med["raw_ms_v6"] / med["raw_ms_v4"]}


def render(r: dict[str, Any]) -> str:
    return "\n".join([
        f"**ICMPv6 vs ICMPv4 probe** (seed1-dual, netns0 -> netns1 across br0, two capture points; median of {r['samples']} each, interleaved; "
        f"load {r['load_avg'][0]:.1f})", "",
        "| | IPv4 | IPv6 | IPv6 / IPv4 |", "|---|---|---|---|",
        f"| Prober.icmp (evidence, 2 captures) | {r['probe_ms_v4']:.2f} ms | {r['probe_ms_v6']:.2f} ms | {r['probe_ratio_v6_v4']:.2f}x |",
        f"| raw-socket echo (no evidence) | {r['raw_ms_v4']:.3f} ms | {r['raw_ms_v6']:.3f} ms | {r['raw_ratio_v6_v4']:.2f}x |",
        f"| probe / raw echo | {r['probe_ms_v4'] / r['raw_ms_v4']:.0f}x | {r['probe_ms_v6'] / r['raw_ms_v6']:.0f}x | |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    result = measure(args.samples)
    print(render(result))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"ipv6-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{path}")


if __name__ == "__main__":
    main()
