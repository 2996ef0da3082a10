"""Cross-host: containers on different hosts reach each other with their source kept, the
underlay carries their packets as the join declares (VXLAN or plainly routed), TTLs are as
the path implies, a published port of one host is reached from another host's container, and
the path MTU holds: a DF probe at the declared MTU passes, one byte more gets
fragmentation-needed back, and a TCP transfer bigger than one MTU completes.

Collected only for the multi-host topologies in play (``two-hosts-routed``, ``two-hosts-vxlan``,
or a spec file with ``[[host]]`` tables); single-host topologies get none of these tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from netcheck.evidence import MatrixResult, ProbeResult
from netcheck.factory import LabFactory
from netcheck.multihost import probes as cross_probes
from netcheck.multihost.lab import MultiLab
from netcheck.multihost.spec import MultiTopology, containers
from netcheck.packet import VXLAN, IPv4
from netcheck.plugin import SETTINGS

pytestmark = [pytest.mark.netcheck_property("cross-host"), pytest.mark.netcheck_multihost]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "multi_topology" in metafunc.fixturenames:
        multis = metafunc.config.stash[SETTINGS].multihosts
        metafunc.parametrize("multi_topology", multis, ids=[t.name for t in multis], scope="session")


@pytest.fixture(scope="session")
def multi_lab(multi_topology: MultiTopology, netcheck_lab_factory: LabFactory) -> MultiLab:
    """The session's multi-host lab of the topology under test (shared with the per-host suites: do not break it)."""
    return netcheck_lab_factory.multi(multi_topology)


def _why(multi: MultiLab, src: str, dst: str, recheck: Callable[[], str | None] | None = None) -> str:
    """The cross-host diagnosis, for a failure message; ``recheck`` repeats the failed check (None: it passes now), to verify fixes."""
    from netcheck.diagnose import crosshost

    if not isinstance(multi, MultiLab):
        return "\ndiagnosis: none (the hosts are served by nodes; the cross-host diagnosis reads the hosts' state in this process)"
    d = crosshost.diagnose(multi, src, dst, recheck)
    if not d.findings:
        return "\ndiagnosis: nothing in the hosts' or the underlay's state differs from the spec"
    return "\ndiagnosis:\n" + "\n".join(f"  {i}. [{f.cause}] {f.headline()}\n     fix: {f.fix}" + (f"\n     {f.verified}" if f.verified else "")
                                         for i, f in enumerate(d.findings, 1))


def _reaches(multi: MultiLab, sh: str, sc: str, th: str, tc: str) -> str | None:
    """None when ``sh/sc`` reaches ``th/tc`` with its source kept, else what failed (the check of a fix)."""
    t = multi.topology
    point = f"{th}/{tc}:{_iface(t, th, tc)}"
    r = cross_probes.prober(multi, sh).icmp(sc, _addr(t, th, tc), capture=[point], target=tc)
    seen = [p for c in r.captures for p in c.packets if p.role == "request"]
    if r.verdict != "reached":
        return f"{r.verdict} {r.error or ''}".strip()
    return None if seen and seen[0].src == _addr(t, sh, sc) else f"{th}/{tc} saw the request from {seen[0].src if seen else 'nothing'}"


def _pairs(t: MultiTopology) -> list[tuple[str, str, str, str]]:
    """Every (source host, source container, target host, target container) across hosts."""
    return [(h.name, c.name, o.name, d.name) for h, c in containers(t) for o, d in containers(t) if o.name != h.name]


def _addr(t: MultiTopology, host: str, container: str) -> str:
    a = t.host(host).topology.container(container).address
    assert a is not None
    return str(a.ip)


def _iface(t: MultiTopology, host: str, container: str) -> str:
    return t.host(host).topology.container(container).interface


def test_every_container_reaches_every_container_on_the_other_host_with_its_source_kept(
        multi_lab: MultiLab, netcheck_evidence: Callable[[ProbeResult], None]) -> None:
    t = multi_lab.topology
    failures = []
    probers = {h.name: cross_probes.prober(multi_lab, h.name, netcheck_evidence) for h in t.hosts}  # one each: their ICMP ids follow on
    names = [f"{h.name}/{c.name}" for h, c in containers(t)]
    observed = {(a, a): None for a in names} | {(f"{sh}/{sc}", f"{th}/{tc}"): True for sh, sc, th, tc in _pairs(t)}
    for h, c in containers(t):  # the same-host pairs too, for the report's cross-host matrix
        for d in h.topology.containers:
            if d.name != c.name:
                observed[(f"{h.name}/{c.name}", f"{h.name}/{d.name}")] = probers[h.name].icmp(c.name, _addr(t, h.name, d.name), target=d.name).verdict == "reached"
    for sh, sc, th, tc in _pairs(t):
        point = f"{th}/{tc}:{_iface(t, th, tc)}"
        r = probers[sh].icmp(sc, _addr(t, th, tc), capture=[point], target=tc)
        seen = [p for c in r.captures for p in c.packets if p.role == "request"]
        if r.verdict != "reached":
            observed[(f"{sh}/{sc}", f"{th}/{tc}")] = False
            failures.append(f"{sh}/{sc} -> {th}/{tc} ({_addr(t, th, tc)}): {r.verdict} {r.error or ''}")
        elif not seen or seen[0].src != _addr(t, sh, sc):
            failures.append(f"{sh}/{sc} -> {th}/{tc}: {th}/{tc} saw the request from {seen[0].src if seen else 'nothing'}, "
                            f"not from {_addr(t, sh, sc)} (masqueraded between the hosts?)")
    netcheck_evidence(MatrixResult(t.name, "icmp", tuple(names), tuple(tuple(a != b for b in names) for a in names),  # type: ignore[arg-type]
                                   tuple(tuple(observed[(a, b)] for b in names) for a in names)))
    failed = [p for p in _pairs(t) if any(f.startswith(f"{p[0]}/{p[1]} -> {p[2]}/{p[3]}") for f in failures)]
    assert not failures, "\n".join(failures) + _why(multi_lab, t.hosts[0].name, t.hosts[1].name,
                                                   lambda: next((x for p in failed if (x := _reaches(multi_lab, *p))), None))


def test_underlay_carries_the_packets_as_the_join_declares(multi_lab: MultiLab, netcheck_evidence: Callable[[ProbeResult], None]) -> None:
    t = multi_lab.topology
    (sh, sc, th, tc) = _pairs(t)[0]
    src, dst = t.host(sh), t.host(th)
    point = f"underlay:{th}"
    cross_probes.open_capture(multi_lab, point)
    t0 = time.time()
    r = cross_probes.prober(multi_lab, sh, netcheck_evidence).icmp(sc, _addr(t, th, tc), capture=[point])
    assert r.verdict == "reached", f"{sh}/{sc} -> {th}/{tc}: {r.verdict} {r.error or ''}" + _why(multi_lab, sh, th, lambda: _reaches(multi_lab, sh, sc, th, tc))
    plain = [p for c in r.captures for p in c.packets if p.role == "request"]
    if t.join.kind == "routed":
        assert plain, f"routed: the echo request was not seen in the clear on the underlay at {point}"
        assert (plain[0].src, plain[0].dst) == (_addr(t, sh, sc), _addr(t, th, tc)), f"routed: the underlay saw {plain[0].src} > {plain[0].dst}"
        return
    assert not plain, f"vxlan: the echo request crossed the underlay at {point} unencapsulated"
    frames = cross_probes.vxlan_seen(multi_lab, point, t.join.port, t0)
    mine = [v for v in frames if getattr(getattr(_inner(v), "payload", None), "ident", None) == r.flow_id]
    assert mine, f"vxlan: no VXLAN datagram to UDP {t.join.port} carrying the echo (id {r.flow_id:#06x}) was seen at {point} ({len(frames)} VXLAN datagrams seen)"
    v = mine[0]
    inner = _inner(v)
    assert v.vni == t.join.vni, f"vxlan: VNI {v.vni} on the wire, the spec declares {t.join.vni}"
    assert (v.outer.src, v.outer.dst) == (str(src.underlay.ip), str(dst.underlay.ip)), f"vxlan: outer {v.outer.src} > {v.outer.dst}"
    assert inner is not None and (getattr(inner, "src", None), getattr(inner, "dst", None)) == (_addr(t, sh, sc), _addr(t, th, tc)), \
        f"vxlan: the inner packet is {inner}"


def _inner(v: VXLAN) -> IPv4 | None:
    p = v.inner.payload if v.inner is not None else None
    return p if isinstance(p, IPv4) else None


def test_ttl_is_as_the_path_implies(multi_lab: MultiLab, netcheck_evidence: Callable[[ProbeResult], None]) -> None:
    """Two routers between containers on different hosts (each host), whatever the join: the overlay is one hop."""
    t = multi_lab.topology
    (sh, sc, th, tc) = _pairs(t)[0]
    point = f"{th}/{tc}:{_iface(t, th, tc)}"
    r = cross_probes.prober(multi_lab, sh, netcheck_evidence).icmp(sc, _addr(t, th, tc), capture=[point])
    assert r.verdict == "reached", f"{sh}/{sc} -> {th}/{tc}: {r.verdict} {r.error or ''}" + _why(multi_lab, sh, th, lambda: _reaches(multi_lab, sh, sc, th, tc))
    seen = [p for c in r.captures for p in c.packets if p.role == "request"]
    assert seen and seen[0].ttl == 62, f"{th}/{tc} saw the request with ttl {seen[0].ttl if seen else '(not seen)'}, expected 64 - 2 = 62"
    assert r.reply is not None and r.reply.endswith("ttl=62"), f"the reply: {r.reply} (expected ttl=62)"


def test_published_port_on_another_host_is_reached_from_a_container(multi_lab: MultiLab, netcheck_evidence: Callable[[ProbeResult], None]) -> None:
    t = multi_lab.topology
    failures = []
    probers = {h.name: cross_probes.prober(multi_lab, h.name, netcheck_evidence) for h in t.hosts}
    for h in t.hosts:
        for p in h.topology.publishes:
            for o in t.hosts:
                if o.name == h.name:
                    continue
                sc = o.topology.containers[0].name
                r = probers[o.name].tcp(sc, str(h.public), p.host_port, http=p.protocol == "tcp", target=p.container)
                if r.verdict != "reached":
                    failures.append(f"{o.name}/{sc} -> {h.name}'s {h.public}:{p.host_port}: {r.verdict} {r.error or ''}")
                elif r.service_saw is not None and r.service_saw.split(":")[0] != _addr(t, o.name, sc):
                    failures.append(f"{o.name}/{sc} -> {h.name}'s {h.public}:{p.host_port}: the service saw {r.service_saw}, not {_addr(t, o.name, sc)}")
    assert not failures, "\n".join(failures) + _why(multi_lab, t.hosts[0].name, t.hosts[1].name)


def test_path_mtu_df_probe_at_the_mtu_passes_one_byte_more_gets_frag_needed(multi_lab: MultiLab) -> None:
    t = multi_lab.topology
    (sh, sc, th, tc) = _pairs(t)[0]
    dst = _addr(t, th, tc)
    at = cross_probes.df_ping_from(multi_lab, sh, sc, dst, t.path_mtu)

    def df(size: int, outcome: str) -> Callable[[], str | None]:
        def again() -> str | None:
            x = cross_probes.df_ping_from(multi_lab, sh, sc, dst, size)
            return None if x.outcome == outcome else x.describe()
        return again

    assert at.outcome == "reply", f"{sh}/{sc} -> {th}/{tc}: {at.describe()}; the declared path MTU is {t.path_mtu}" + _why(multi_lab, sh, th, df(t.path_mtu, "reply"))
    over = cross_probes.df_ping_from(multi_lab, sh, sc, dst, t.path_mtu + 1)
    assert over.outcome == "frag-needed", f"{sh}/{sc} -> {th}/{tc}: {over.describe()}; expected fragmentation-needed (mtu {t.path_mtu})" + \
        _why(multi_lab, sh, th, df(t.path_mtu + 1, "frag-needed"))
    assert over.mtu == t.path_mtu, f"fragmentation-needed gave mtu {over.mtu}, the declared path MTU is {t.path_mtu}"


def test_tcp_transfer_bigger_than_one_mtu_completes(multi_lab: MultiLab) -> None:
    t = multi_lab.topology
    failures = []
    for sh, sc, th, tc in _pairs(t)[:2]:
        x = cross_probes.transfer_between(multi_lab, (sh, sc), (th, tc), _addr(t, th, tc), 256 * 1024)
        if not x.completed:
            failures.append(f"{sh}/{sc} -> {th}/{tc}: {x.describe()}")
    assert not failures, "\n".join(failures) + _why(multi_lab, t.hosts[0].name, t.hosts[1].name)
