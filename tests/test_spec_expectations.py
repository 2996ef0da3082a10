"""Expectations follow the spec: the suites pass on valid specs that once gave false failures.

- FORWARD DROP accepting only the uplink: the bridge matrix expects the containers kept apart, so
  the DNAT access paths must not expect a hairpin between them (``expect.hairpin`` ignored FORWARD).
- ``[[publish]] protocol = "udp"`` (and a UDP ``[[vip]]``): probed with the UDP echo, not HTTP.
- The minimal spec (a bridge and two containers, the rest defaults).

The pure part (what each spec promises) runs anywhere; the suite runs need root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from netcheck import expect, spec

REPO = Path(__file__).resolve().parents[1]
FORWARD_DROP = REPO / "tests" / "specs" / "valid" / "forward-drop-uplink-only.toml"
UDP_PUBLISH = REPO / "tests" / "specs" / "valid" / "udp-publish.toml"
MINIMAL = REPO / "examples" / "minimal.toml"


def test_forward_drop_keeps_the_containers_apart_both_ways() -> None:
    t = spec.load(FORWARD_DROP)
    assert not expect.reaches(t, "netns1", "netns0") and not expect.reaches(t, "netns0", "netns1")
    assert not expect.hairpin(t, "netns1", "netns0"), "the DNATed request would be forwarded br0 -> br0, which no accept covers"
    (publish,) = t.publishes
    assert not expect.published_from_container(t, publish, "netns1")
    assert expect.published_from_outside(t, publish), "eth0 -> br0 and back are accepted"
    assert expect.reaches_outside(t, "netns0") and expect.reaches_outside(t, "netns1")


def test_the_seeds_keep_their_expectations() -> None:
    seed1, seed2 = spec.builtin("seed1"), spec.builtin("seed2")
    assert expect.hairpin(seed1, "netns1", "netns0") and expect.reaches(seed1, "netns1", "netns0")
    assert expect.published_from_container(seed1, seed1.publishes[0], "netns1") and expect.published_from_outside(seed1, seed1.publishes[0])
    assert expect.hairpin(seed2, "http3", "http2")


def test_a_publish_only_from_the_host_is_no_hairpin() -> None:
    text = (REPO / "netcheck/topologies/seed1.toml").read_text("utf-8").replace("host_port = 5000\n", "host_port = 5000\nfrom_outside = false\n")
    t = spec.loads(text, "<seed1, OUTPUT only>")
    (publish,) = t.publishes
    assert not publish.from_outside
    assert not expect.published_from_container(t, publish, "netns1"), "without the PREROUTING DNAT a container's request is not rewritten"
    assert not expect.published_from_outside(t, publish)


def test_the_udp_publish_and_vip_have_a_udp_service_behind_them() -> None:
    t = spec.load(UDP_PUBLISH)
    udp = [(p.container, p.port) for p in t.publishes if p.protocol == "udp"] + [(v.container, v.target_port) for v in t.vips if v.protocol == "udp"]
    assert len(udp) == 2 and all(any(s.kind == "udp-echo" and s.port == port for s in t.container(name).services) for name, port in udp)
    (vip,) = t.vips
    assert expect.vip_from_container(t, vip, "netns1")


def test_a_vip_only_from_the_host_is_no_hairpin() -> None:
    text = (REPO / "netcheck/topologies/seed2.toml").read_text("utf-8").replace('chain = "VIP-EXAMPLE"', 'chain = "VIP-EXAMPLE"\nfrom_outside = false')
    t = spec.loads(text, "<seed2, OUTPUT only>")
    (vip,) = t.vips
    assert not vip.from_outside and expect.hairpin(t, "http3", "http2")
    assert not expect.vip_from_container(t, vip, "http3"), "without the PREROUTING jump a container's request is not redirected"


def test_the_model_names_what_keeps_each_false_failure_away() -> None:
    """The expectations come from the datapath model on the planned state: it names the FORWARD policy that stops the hairpin, and
    it delivers the UDP publish to a UDP probe only (an HTTP probe of it, as once sent, finds nothing on TCP)."""
    from netcheck.datapath import Flow

    t = spec.load(FORWARD_DROP)
    (publish,) = t.publishes
    tr = expect.trace_of(t, Flow("netns1", str(t.host.address.ip), publish.protocol, publish.host_port))
    assert tr.disposition == "dropped" and tr.decided is not None and tr.decided.stage == "filter FORWARD" and "-P FORWARD policy DROP" in tr.decided.by, "\n".join(tr.lines())
    assert expect.trace_of(t, Flow("wan", str(t.host.address.ip), publish.protocol, publish.host_port)).delivered
    u = spec.load(UDP_PUBLISH)
    (udp,) = [p for p in u.publishes if p.protocol == "udp"]
    assert expect.published_from_outside(u, udp) and expect.trace_of(u, Flow("wan", str(u.host.address.ip), "udp", udp.host_port)).target == udp.container
    tcp = expect.trace_of(u, Flow("wan", str(u.host.address.ip), "tcp", udp.host_port))
    assert not tcp.delivered and tcp.target != udp.container, "\n".join(tcp.lines())


@pytest.mark.root
@pytest.mark.parametrize("path", [FORWARD_DROP, UDP_PUBLISH, MINIMAL], ids=["forward-drop", "udp-publish", "minimal"])
def test_suites_pass(run_suites: Callable[..., pytest.RunResult], path: Path) -> None:
    result = run_suites(str(REPO / "suites"), f"--netcheck-topology={path}", "-rs")
    outcomes = result.parseoutcomes()
    out = result.stdout.str()
    assert not outcomes.get("failed") and not outcomes.get("error"), f"{path.name}: the suites failed:\n{out[-6000:]}"
    assert outcomes.get("passed", 0) >= 18, f"{path.name}: too few checks ran ({outcomes}):\n{out[-2000:]}"
