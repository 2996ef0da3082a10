"""pcap files: every capture of a failing probe (or of every probe) as a classic pcap file, and,
for a diagnosed probe, each hop of its trace as a pcap plus all hops merged into one pcapng.

Classic pcaps are written by scapy's ``PcapWriter`` (microsecond timestamps, link type 1 =
Ethernet), which Wireshark, tshark and tcpdump all read. Timestamps are the probe's send time
(``ProbeResult.started_at``, or the repeated probe's ``Diagnosis.started_at`` for the hops) plus
each packet's offset (``Packet.at_ms``).

The merged timeline is written by scapy's ``PcapNgWriter``: each hop's capture point is an
interface of its own (an Interface Description Block named like ``host:br0``), every packet
keeps its own timestamp, and the packets are in time order, each with a comment naming its hop
and direction, so the trace reads as a timeline in Wireshark.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from netcheck.evidence import Capture, Diagnosis, ProbeResult
from netcheck.report.model import PcapLink, Results

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
TIMELINE = "timeline"  # the merged pcapng's ``PcapLink.point``
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def write_pcap(path: Path, frames: Iterable[tuple[float, bytes]]) -> int:
    """Write (epoch seconds, Ethernet frame) records to ``path``; returns how many were written."""
    from scapy.utils import PcapWriter

    count = 0
    with PcapWriter(str(path), linktype=LINKTYPE_ETHERNET, snaplen=SNAPLEN) as writer:
        writer.write_header(None)  # an empty capture is still a valid file
        for ts, frame in frames:
            sec = int(ts)
            usec = round((ts - sec) * 1_000_000)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            writer.write_packet(frame, sec=sec, usec=usec)
            count += 1
    return count


def frames(started_at: float, capture: Capture) -> list[tuple[float, bytes]]:
    """The frames of one capture, with absolute timestamps (``started_at``: when its probe was sent)."""
    return [(started_at + p.at_ms / 1000.0, p.raw) for p in capture.packets if p.raw]


def capture_frames(probe: ProbeResult, capture: Capture) -> list[tuple[float, bytes]]:
    """The frames of one capture of a probe, with absolute timestamps."""
    return frames(probe.started_at, capture)


def write_timeline(path: Path, diagnosis: Diagnosis) -> int:
    """Every hop's packets of the repeated probe in one pcapng, in time order (ties in the trace's
    order): one interface per hop, a comment per packet naming its hop. Returns the packet count."""
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter

    order = {(h.point, h.direction): i for i, h in enumerate(diagnosis.trace)}
    records = []
    for c in diagnosis.captures:
        for p in c.packets:
            direction: Literal["out", "back"] = "out" if p.role == "request" else "back"
            if p.raw:
                records.append((diagnosis.started_at + p.at_ms / 1000.0, order.get((c.point, direction), len(order)), c.point, direction, p, p.raw))
    records.sort(key=lambda r: (r[0], r[1]))
    writer = PcapNgWriter(str(path))
    try:
        writer.linktype = LINKTYPE_ETHERNET
        writer.write_header(None)  # an empty timeline is still a valid file
        for ts, hop, point, direction, p, frame in records:
            pkt = Ether(frame)
            pkt.time = ts
            pkt.sniffed_on = point  # the hop's interface in the pcapng
            pkt.comments = [f"hop {hop + 1} {direction} at {point}: {p.proto} {p.flow} {p.info}".rstrip().encode()]
            writer.write_packet(pkt)
    finally:
        writer.close()
    return len(records)


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name-safe rendering of a node id or capture point (names come from users)."""
    cleaned = _SAFE.sub("_", text).strip("._") or "x"
    return cleaned[:limit]


def write_all(results: Results, directory: Path, mode: str, link_base: Path) -> int:
    """Write the pcaps ``mode`` asks for (failed, all, none) into ``directory``; record each in
    ``test.pcaps`` with its path relative to ``link_base`` (the report's folder). Returns the count."""
    if mode == "none":
        return 0
    written = 0

    def wrote(test_pcaps: list[PcapLink], link: PcapLink) -> None:
        nonlocal written
        test_pcaps.append(link)
        written += 1

    for ti, test in enumerate(results.tests):
        test.pcaps = []
        for pi, probe in enumerate(test.all_probes()):
            if mode != "all" and probe.passed:
                continue
            stem = f"{ti:03d}-{safe_name(test.name)}-p{pi}"
            hops: Sequence[Capture] = probe.diagnosis.captures if probe.diagnosis is not None else ()
            if any(c.started for c in probe.captures) or hops:
                directory.mkdir(parents=True, exist_ok=True)
            for capture in probe.captures:
                if capture.started:
                    path = directory / f"{stem}-{safe_name(capture.point)}.pcap"
                    count = write_pcap(path, capture_frames(probe, capture))
                    wrote(test.pcaps, {"probe": pi, "point": capture.point, "file": _relative(path, link_base), "packets": count, "of": "capture"})
            if probe.diagnosis is None or not hops:
                continue
            for capture in hops:
                if capture.started:
                    path = directory / f"{stem}-hop-{safe_name(capture.point)}.pcap"
                    count = write_pcap(path, frames(probe.diagnosis.started_at, capture))
                    wrote(test.pcaps, {"probe": pi, "point": capture.point, "file": _relative(path, link_base), "packets": count, "of": "hop"})
            path = directory / f"{stem}-{TIMELINE}.pcapng"
            count = write_timeline(path, probe.diagnosis)
            wrote(test.pcaps, {"probe": pi, "point": TIMELINE, "file": _relative(path, link_base), "packets": count, "of": "timeline"})
    return written


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()
