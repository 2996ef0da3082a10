"""Matrix probing: exactly the broken cells fail, each with its evidence and diagnosis.

Cost: about 9 s as root (five labs of 4 to 6 containers, each under 0.2 s to build; most
of the time is the evidence of the failing cells: a failing probe waits out its timeout,
and each diagnosis repeats its probe). The pure tests at the top need no root.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from netcheck import faults
from netcheck.diagnosing import DiagnosingProber
from netcheck.kernel.xtables import XRule, apply_rules
from netcheck.lab import Lab
from netcheck.packet import checksum, echo_request
from netcheck.probes.matrix import Matrix, _groups, _match, describe
from netcheck.scale import bridge_topology


def test_echo_request_carries_a_valid_checksum():
    pkt = echo_request(0x1234, 7, b"netcheck")
    assert pkt[0] == 8 and struct.unpack("!HH", pkt[4:8]) == (0x1234, 7)
    assert checksum(pkt) == 0  # a correct ones'-complement checksum sums to zero


def test_a_reply_counts_only_from_the_address_it_was_sent_to():
    sources = ["10.0.0.1", "10.0.0.2"]
    token = b"12345678"

    def reply(src: str, seq: int, tok: bytes = token) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 0, 0, 64, 1, 0, socket.inet_aton(src), socket.inet_aton("10.0.0.9"))
        return ip + struct.pack("!BBHHH", 0, 0, 0, 0x4242, seq) + tok

    seen = [[False, False], [False, False]]
    errors: dict[tuple[int, int], str] = {}
    _match(reply("10.0.0.1", 1), 0, 0x4242, token, sources, seen, errors)  # answered by the wrong address
    _match(reply("10.0.0.2", 1, b"otherrun"), 0, 0x4242, token, sources, seen, errors)  # another run's token
    assert seen == [[False, False], [False, False]]
    _match(reply("10.0.0.2", 1), 0, 0x4242, token, sources, seen, errors)
    assert seen == [[False, True], [False, False]] and not errors


def test_failing_cells_are_grouped_by_the_container_they_share():
    veth_down = [(0, j) for j in range(1, 5)] + [(j, 0) for j in range(1, 5)]
    assert [(head, len(cells)) for head, cells in _groups(veth_down, 4)] == [((0, 1), 8)]
    pair = [(1, 3), (3, 1)]
    assert [head for head, _ in _groups(pair, 4)] == [(1, 3), (3, 1)]


# ----------------------------------------------------------------------------- in the kernel


@pytest.fixture
def six() -> Iterator[Lab]:
    with Lab(bridge_topology(6)) as lab:
        yield lab


def _ip(lab: Lab, name: str) -> str:
    address = lab.topology.container(name).address
    assert address is not None
    return str(address.ip)


@pytest.mark.root
def test_a_healthy_bridge_passes_with_no_evidence(six):
    result = Matrix(six).bridge("br0")
    assert result.pairs == 30 and not result.failing_pairs(), describe(result)
    assert all(result.observed[i][j] for i in range(6) for j in range(6) if i != j)
    assert result.failures == ()


@pytest.mark.root
def test_one_dropped_pair_fails_that_pair_and_its_mirror_with_a_diagnosis(six):
    """A FORWARD DROP from c1 to c3 (bridged traffic meets iptables): c1 -> c3 loses its
    request, c3 -> c1 its reply. No other cell fails."""
    apply_rules(six.host, [XRule("filter", "FORWARD", "DROP", src=_ip(six, "c1"), dst=_ip(six, "c3"), comment=six.names.comment)])
    recorded = []
    result = Matrix(six, record=recorded.append, prober=DiagnosingProber(six)).bridge("br0")
    assert result.failing_pairs() == [("c1", "c3"), ("c3", "c1")], describe(result)
    assert [(r.source, r.target) for r in result.failures] == [("c1", "c3"), ("c3", "c1")]
    for r in result.failures:
        assert r.diagnosis is not None and r.diagnosis.top is not None, r.explain()
        assert r.diagnosis.top.cause == "forward_drop", r.explain()
        assert {c.point for c in r.captures} == {f"{r.source}:eth0", f"{r.target}:eth0"}
        assert r.capture(f"{r.source}:eth0").seen  # the evidence: it left its source
    assert recorded == list(result.failures)
    assert "c1 -> c3: expected to reach, no reply" in describe(result)


@pytest.mark.root
def test_a_veth_down_fails_every_pair_of_that_container_diagnosed_once(six):
    faults.veth_down(six)  # the host end of c0's veth
    result = Matrix(six, prober=DiagnosingProber(six)).bridge("br0")
    others = [f"c{k}" for k in range(1, 6)]
    assert sorted(result.failing_pairs()) == sorted([("c0", o) for o in others] + [(o, "c0") for o in others]), describe(result)
    assert len(result.failures) == 10  # every failing cell has its own evidence
    for r in result.failures:
        assert r.diagnosis is not None and r.diagnosis.top is not None and r.diagnosis.top.cause == "link_down", r.explain()
    shared = [r for r in result.failures if r.diagnosis is not None and r.diagnosis.notes and r.diagnosis.notes[0].startswith("diagnosed on c0 -> c1")]
    assert len(shared) == 9, "one cell is diagnosed, the nine others carry its findings with a note"


@pytest.mark.root
def test_policy_matrix_expects_isolation_and_flags_a_pair_that_gets_through():
    """FORWARD policy DROP with bridge-nf-call-iptables=1: the spec promises isolation on the bridge."""
    with Lab(bridge_topology(4, forward_policy="DROP")) as lab:
        isolated = Matrix(lab, timeout=0.2).policy()
        assert not isolated.failing_pairs() and not any(any(row) for row in isolated.expected), describe(isolated)
        a, b = _ip(lab, "c0"), _ip(lab, "c2")
        apply_rules(lab.host, [XRule("filter", "FORWARD", "ACCEPT", src=s, dst=d, comment=lab.names.comment) for s, d in ((a, b), (b, a))])
        leaky = Matrix(lab, timeout=0.2).policy()
        assert leaky.failing_pairs() == [("c0", "c2"), ("c2", "c0")], describe(leaky)
        assert all(r.expected == "block" and r.verdict == "reached" for r in leaky.failures)
        assert "c0 -> c2: expected to be blocked, reached" in describe(leaky)


@pytest.mark.root
def test_static_neighbours_are_removed_after_the_matrix():
    """Past the neighbour table's budget the matrix installs permanent entries; none outlive it."""
    with Lab(bridge_topology(4)) as lab:
        m = Matrix(lab, neighbours="static")
        result = m.bridge("br0")
        assert m.static_neighbours and not result.failing_pairs(), describe(result)
        for c in lab.topology.containers:
            permanent = [n for n in lab.container_ns(c.name).neighbours() if n.state == "PERMANENT"]
            assert not permanent, f"{c.name} kept static neighbours: {permanent}"
