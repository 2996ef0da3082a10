"""A failing probe's trace as pcaps: one per hop, and every hop merged into one pcapng timeline.

The first tests need no root: a diagnosed probe is made of scapy frames, written by the report,
and read back by scapy's pcapng reader and by tshark. The last one is a real faulted run (root,
about 10 s): the hops the diagnosis saw are the pcapng's interfaces, in the order they saw the probe.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from netcheck.activation import skip_for_missing_tool
from netcheck.evidence import Capture, Diagnosis, Finding, Hop, Packet, ProbeRequest, ProbeResult, Role
from netcheck.report.collector import Outputs, write
from netcheck.report.model import Results, TestRecord

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.25  # when the repeated probe was sent (epoch seconds)
SRC, DST = "172.18.0.10", "198.51.100.1"
ROUTE = ("netns0:ceth0", "host:veth0", "host:br0", "host:eth0", "wan:uplink")


def _packet(at_ms: float, role: Role, request: bool) -> Packet:
    src, dst = (SRC, DST) if request else (DST, SRC)
    frame = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / IP(src=src, dst=dst, ttl=64) / ICMP(type=8 if request else 0, id=0x77, seq=1) / b"netcheck-0077")
    return Packet(at_ms=at_ms, proto="icmp", src=src, dst=dst, src_mac="02:00:00:00:00:0a", dst_mac="02:00:00:00:00:0b", ttl=64,
                  info="echo-request" if request else "echo-reply", role=role, raw=frame)


def diagnosed_probe() -> ProbeResult:
    """A probe that went out through every hop and whose reply came back to the uplink only, as a diagnosis saw it when it repeated the probe."""
    out = {point: 0.010 + 0.020 * i for i, point in enumerate(ROUTE)}
    back = {"wan:uplink": 0.200, "host:eth0": 0.230}  # the reply is lost after host:eth0
    captures = tuple(Capture(point, point.split(":")[0], point.split(":")[1], f"k{i}", True,
                             tuple([_packet(out[point], "request", True), *([_packet(back[point], "reply", False)] if point in back else [])]))
                     for i, point in enumerate(ROUTE))
    trace = tuple([*(Hop(p, "out", True, f"{SRC} > {DST}") for p in ROUTE), *(Hop(p, "back", p in back, "") for p in reversed(ROUTE))])
    diagnosis = Diagnosis(findings=(Finding("forward_drop", "host", "host: FORWARD drops the reply", "iptables -P FORWARD ACCEPT"),), trace=trace,
                          captures=tuple(reversed(captures)),  # in no particular order: the timeline sorts by time
                          started_at=T0)
    request = ProbeRequest("icmp", "netns0", ip_address(DST), capture=("netns0:ceth0",))
    return ProbeResult(request, "seed1", "ceth0", SRC, "ICMP echo", "unreachable", captures=(captures[0],), diagnosis=diagnosis, started_at=T0 - 1.0)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Results, Outputs]:
    where = tmp_path_factory.mktemp("pcaps")
    results = Results(tests=[TestRecord("suites/test_forwarding.py::test_x[seed1]", property="forwarding", topology="seed1", outcome="failed", probes=[diagnosed_probe()])])
    out = Outputs(html=where / "r.html", json=where / "r.json", pcap_dir=where / "r-pcap")
    write(results, out, "failed")
    return results, out


def test_each_hop_gets_a_pcap_and_the_probe_a_timeline(written: tuple[Results, Outputs]) -> None:
    results, out = written
    (test,) = results.tests
    kinds = [(p.get("of"), p["point"], p["packets"]) for p in test.pcaps]
    hops = [("hop", p, 2 if p in ("wan:uplink", "host:eth0") else 1) for p in reversed(ROUTE)]  # in the diagnosis's order of captures
    assert kinds == [("capture", "netns0:ceth0", 1), *hops, ("timeline", "timeline", len(ROUTE) + 2)]
    for p in test.pcaps:
        assert (out.html.parent / p["file"]).is_file(), p
    html = out.html.read_text()
    timeline = next(p for p in test.pcaps if p.get("of") == "timeline")
    assert f'href="{timeline["file"]}"' in html, "the report links the merged pcapng"
    for hop in (p for p in test.pcaps if p.get("of") == "hop"):
        assert f'href="{hop["file"]}"' in html, f"the trace row of {hop['point']} links its pcap"
    assert "0.230 ms" in html, "each hop of the trace shows when the repeated probe was seen there"
    again = Results.load(out.json)
    diagnosis = again.tests[0].probes[0].diagnosis
    assert diagnosis is not None and diagnosis.captures == diagnosed_probe().diagnosis.captures, "the hops' packets survive the JSON"  # type: ignore[union-attr]


def test_the_timeline_reads_back_in_hop_order_with_one_interface_per_hop(written: tuple[Results, Outputs]) -> None:
    from scapy.utils import PcapNgReader

    results, out = written
    timeline = next(p for p in results.tests[0].pcaps if p.get("of") == "timeline")
    with PcapNgReader(str(out.html.parent / timeline["file"])) as reader:
        packets = list(reader)
    want = [*((p, "out") for p in ROUTE), ("wan:uplink", "back"), ("host:eth0", "back")]
    assert [(p.sniffed_on, p.comments[0].decode().split()[2]) for p in packets] == want, "every hop's packet, in the order the probe met them"
    assert [p.comments[0].decode().split()[:2] for p in packets] == [["hop", str(n)] for n in (1, 2, 3, 4, 5, 6, 7)]
    probe = diagnosed_probe()
    assert probe.diagnosis is not None
    stamps = [float(p.time) for p in packets]
    assert stamps == sorted(stamps) and abs(stamps[0] - (T0 + 0.010 / 1000)) < 1e-6 and abs(stamps[-1] - (T0 + 0.230 / 1000)) < 1e-6
    frames = {(c.point, q.role): q.raw for c in probe.diagnosis.captures for q in c.packets}
    assert bytes(packets[0]) == frames[("netns0:ceth0", "request")], "the frames are written as captured"


def test_tshark_reads_the_timeline(written: tuple[Results, Outputs]) -> None:
    if shutil.which("tshark") is None:
        skip_for_missing_tool("tshark is not installed (Debian: apt-get install tshark)")
    results, out = written
    timeline = next(p for p in results.tests[0].pcaps if p.get("of") == "timeline")
    proc = subprocess.run(["tshark", "-r", str(out.html.parent / timeline["file"]), "-T", "fields", "-e", "frame.interface_name", "-e", "ip.src", "-e", "icmp.type"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]
    assert rows == [*([p, SRC, "8"] for p in ROUTE), ["wan:uplink", DST, "0"], ["host:eth0", DST, "0"]]


@pytest.mark.root
def test_a_real_failure_writes_its_hops_as_a_timeline(run_suites: Callable[..., pytest.RunResult], tmp_path: Path) -> None:
    """ip_forward off on seed1: the repeated probe is seen up to host:br0, so those are the timeline's hops, in that order."""
    from scapy.utils import PcapNgReader

    result = run_suites(str(REPO / "suites/test_forwarding.py"), "--netcheck-topology=seed1", "--netcheck-fault=ip-forward-off", "-k", "reaches_the_outside",
                        report=str(tmp_path / "r.html"))
    result.assert_outcomes(failed=1)
    (test,) = Results.load(tmp_path / "r.json").tests
    probe = test.probes[0]
    assert probe.diagnosis is not None and probe.diagnosis.captures, "the diagnosis keeps the repeated probe's packets"
    seen = [h.point for h in probe.diagnosis.trace if h.direction == "out" and h.seen]
    assert seen == ["netns0:ceth0", "host:veth0", "host:br0"]
    timeline = next(p for p in test.pcaps if p.get("of") == "timeline")
    with PcapNgReader(str(tmp_path / timeline["file"])) as reader:
        packets = list(reader)
    assert [p.sniffed_on for p in packets] == seen and timeline["packets"] == len(seen)
    stamps = [float(p.time) for p in packets]
    assert stamps == sorted(stamps) and abs(stamps[0] - probe.diagnosis.started_at) < 1.0
    hops = {p["point"] for p in test.pcaps if p.get("of") == "hop"}
    assert hops == {c.point for c in probe.diagnosis.captures if c.started}, "one pcap per hop of the trace"
