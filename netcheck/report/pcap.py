"""pcap files: every capture of a failing probe (or of every probe) as a classic pcap file.

Written by scapy's ``PcapWriter`` (libpcap's classic format, microsecond timestamps, link
type 1 = Ethernet), which Wireshark, tshark and tcpdump all read. Timestamps are the probe's
send time (``ProbeResult.started_at``) plus each packet's offset (``Packet.at_ms``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netcheck.evidence import verdict_passes
from netcheck.report.model import Results

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
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


def capture_frames(probe: dict[str, Any], capture: dict[str, Any]) -> list[tuple[float, bytes]]:
    """The frames of one capture of a probe (from its JSON form), with absolute timestamps."""
    t0 = float(probe.get("started_at") or 0.0)
    out = []
    for p in capture.get("packets", ()):
        raw = p.get("raw") or ""
        try:
            frame = base64.b64decode(raw, validate=True) if isinstance(raw, str) else bytes(raw)
        except (binascii.Error, ValueError, TypeError):
            continue
        if frame:
            out.append((t0 + float(p.get("at_ms") or 0.0) / 1000.0, frame))
    return out


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
    for ti, test in enumerate(results.tests):
        test.pcaps = []
        for pi, probe in enumerate(test.all_probes()):
            if mode != "all" and verdict_passes(probe["expected"], probe["verdict"]):
                continue
            for capture in probe.get("captures", ()):
                if not capture.get("started", True):
                    continue
                if written == 0:
                    directory.mkdir(parents=True, exist_ok=True)
                name = f"{ti:03d}-{safe_name(test.name)}-p{pi}-{safe_name(str(capture.get('point', '')))}.pcap"
                path = directory / name
                count = write_pcap(path, capture_frames(probe, capture))
                test.pcaps.append({"probe": pi, "point": capture.get("point"), "file": _relative(path, link_base), "packets": count})
                written += 1
    return written


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()
