"""DNAT publishing: a published port reaches its container from outside and from the host."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from netcheck import expect as promise
from netcheck.checks import expect, not_seen, seen
from netcheck.evidence import ProbeRequest
from netcheck.kernel.inspect import conntrack
from netcheck.lab.plan import bound_addresses, port_matrix

pytestmark = pytest.mark.netcheck_property("dnat")


def _publishes(lab, family=4):
    published = [p for p in lab.topology.publishes if promise.published(lab.topology, p, family) and bound_addresses(lab.topology, p, family)]
    if not published:
        pytest.skip(f"{lab.topology.name} publishes no port{promise.over(family)}")
    return published


def _published(probe, p, src, dst, **kw):
    """Probe a published port with its own protocol: HTTP for tcp, the UDP echo for udp, an INIT for sctp."""
    send = probe.udp if p.protocol == "udp" else probe.sctp if p.protocol == "sctp" else probe.http
    return send(src, dst, p.host_port, **kw)


def _host_dst(lab, p, family=4):
    """Where the host reaches a published port: the address it is bound to (127.0.0.1 too), else the uplink's."""
    return p.host_address if p.loopback else bound_addresses(lab.topology, p, family)[0]


def test_published_port_reached_from_outside(lab, probe, family):
    """PREROUTING: the outside world reaches host_address:host_port, and the container's service answers."""
    t = lab.topology
    host_ip = t.host.at(family).ip
    for p in _publishes(lab, family):
        if not promise.published_from_outside(t, p, family):
            continue
        c = t.container(p.container)
        r = expect(_published(probe, p, "wan", host_ip, target=c.name, capture=["wan:uplink", lab.point(c.name)]))
        seen(r, "wan:uplink", dst=str(host_ip), dport=p.host_port)
        seen(r, lab.point(c.name), dst=str(c.at(family).ip), dport=p.port)
        assert r.reply and r.replied_by == c.name, f"the reply did not come from {c.name} ({r.service}'s service): {r.reply!r}"


def test_published_port_reached_from_the_host(lab, probe, family):
    """OUTPUT: a process on the host reaches its own address:host_port."""
    t = lab.topology
    for p in _publishes(lab, family):
        if not promise.published_from_host(t, p, family):
            continue
        c = t.container(p.container)
        r = expect(_published(probe, p, "host", _host_dst(lab, p, family), target=c.name, capture=[lab.point(c.name)]))
        seen(r, lab.point(c.name), dst=str(c.at(family).ip), dport=p.port)


def test_unpublished_port_is_not_reachable(lab, probe, family):
    """A container's service port is not reachable through the host's address unless published.

    Runs on every topology (one that publishes nothing too): the probe is seen arriving at the
    host, and never inside any container.
    """
    t = lab.topology
    published = {p.host_port for p in t.publishes}
    service_ports = [s.port for c in t.containers for s in c.services if s.protocol == "tcp"]
    port = next((x for x in service_ports if x not in published), None) or next(x for x in range(8000, 9000) if x not in published)
    points = ["wan:uplink", *(lab.point(c.name) for c in t.containers)]
    host_ip = t.host.at(family).ip
    r = expect(probe.tcp("wan", host_ip, port, expect="block", capture=points))
    seen(r, "wan:uplink", dst=str(host_ip), dport=port)
    for c in t.containers:
        not_seen(r, lab.point(c.name))


def test_source_address_seen_on_each_access_path(lab, probe, family):
    """Record, for every access path, the source the service saw. Paths the seeds do not
    support (hairpin, a container to its own published port) are observed, not required."""
    t = lab.topology
    rows = []
    for p in _publishes(lab, family):
        c = t.container(p.container)
        paths = [("outside", "wan", "reach" if promise.published_from_outside(t, p, family) else "observe"),
                 ("host", "host", "reach" if promise.published_from_host(t, p, family) else "observe")]
        # Hairpin (another container through the host address): expected only where the spec makes it work.
        paths += [(f"hairpin from {o.name}", o.name, "reach" if promise.published_from_container(t, p, o.name, family) else "observe")
                  for o in t.containers if o.name != c.name and o.at(family) is not None]
        paths.append((f"{c.name} to its own published port", c.name, "observe"))
        for label, src, exp in paths:
            r = _published(probe, p, src, _host_dst(lab, p, family) if src == "host" else t.host.at(family).ip, target=c.name, expect=exp, capture=[lab.point(c.name)])
            rows.append((label, r))
    for label, r in rows:
        if r.expected == "reach":
            expect(r)
            assert r.service_saw, f"{label}: the service reported no source"
    assert rows, "no access path was probed"


def test_udp_reply_comes_back_through_its_flows_conntrack_entry(lab, probe, family):
    """A UDP reply is the flow's own, un-NATed by the host's conntrack entry of that flow: the echo leaves the container to the
    client's address and port, reaches the client from the published address and port (its connected socket takes nothing else),
    and the host's entry of the flow (by the client's port) shows the DNAT with its reply seen."""
    t = lab.topology
    udp = [p for p in _publishes(lab, family) if p.protocol == "udp" and promise.published_from_outside(t, p, family)]
    if not udp:
        pytest.skip(f"{t.name} publishes no UDP port to the outside{promise.over(family)}")
    for p in udp:
        c = t.container(p.container)
        own, dst = str(c.at(family).ip), bound_addresses(t, p, family)[0]
        r = expect(probe.udp("wan", dst, p.host_port, target=c.name, capture=["wan:uplink", lab.point(c.name)]))
        client, eport = r.source_address, r.flow_id
        arrived = seen(r, lab.point(c.name), dst=own, dport=p.port, sport=eport)
        seen(r, lab.point(c.name), role="reply", src=own, sport=p.port, dst=arrived.src, dport=eport)
        seen(r, "wan:uplink", role="reply", src=str(dst), sport=p.host_port, dst=client, dport=eport)
        entries = [e for e in conntrack(lab.host, {client}, family=family) if e.proto == "udp" and e.sport == eport and e.src == client]
        assert entries, f"the host holds no conntrack entry of the flow {client}:{eport} > {dst}:{p.host_port}{promise.over(family)}\n{r.explain()}"
        e = entries[0]
        assert (e.dst, e.dport, e.reply_src, e.reply_sport) == (str(dst), p.host_port, own, p.port) and "SEEN_REPLY" in e.status, (
            f"the flow's conntrack entry is not the DNAT to {own}:{p.port} with its reply seen: {e.render()} ({e.status})\n{r.explain()}")


def _address_of(saw):
    """The address part of what a service saw ("addr:port"; an SCTP INIT's is the address alone; IPv6 ones hold colons)."""
    try:
        return str(ip_address(saw))
    except ValueError:
        return saw.rsplit(":", 1)[0]


def test_published_port_matrix(lab, probe, family):
    """Every published port x {its port, the last of its range} x {from outside, from the host, hairpin from each other
    container, the container to its own published port}, on each family: each cell expected (netcheck.expect), observed, and
    explained, with the source address the service saw. Generic over what the topology publishes (protocols, ranges, binds, families)."""
    t = lab.topology
    _publishes(lab, family)
    cells = port_matrix(t, family)
    kinds = {"tcp": "http", "udp": "udp", "sctp": "sctp"}
    expects = {True: "reach", False: "block", None: "observe"}
    requests = [ProbeRequest(kinds[c.protocol], c.source, c.dst, c.port, expect=expects[c.expected], target=c.target, capture=(lab.point(c.target),)) for c in cells]
    results = probe.many(requests)
    wrong = []
    for cell, r in zip(cells, results, strict=True):
        if not r.passed:
            wrong.append(f"{cell.label}: {r.request.address} expected {'to reach' if cell.expected else 'to be blocked' if cell.expected is False else 'an answer'} ({cell.why}), "
                         f"{r.verdict}: {r.error or r.reply}")
        elif cell.expected and cell.saw is not None and r.service_saw is not None and _address_of(r.service_saw) != cell.saw:
            wrong.append(f"{cell.label}: {r.request.address} reached, but the service saw {r.service_saw}, not {cell.saw} ({cell.why})")
        elif cell.expected and not r.service_saw:
            wrong.append(f"{cell.label}: {r.request.address} reached, but the service reported no source")
    if wrong:
        first = next((r for r in results if not r.passed), None)
        pytest.fail(f"{len(wrong)} of {len(cells)} published-port cells{promise.over(family)} went wrong:\n  " + "\n  ".join(wrong)
                    + ("\n\nfirst failure:\n" + first.explain() if first else ""), pytrace=False)
