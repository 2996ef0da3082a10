"""Virtual IPs: a custom nat chain sends VIP:port to a container, from the host, outside and other containers."""

from __future__ import annotations

import pytest

from netcheck import expect as promise
from netcheck.checks import expect, not_seen, seen

pytestmark = pytest.mark.netcheck_property("vip")


def _vips(lab, family=4):
    vips = [v for v in lab.topology.vips if v.at(family) is not None]
    if not vips:
        pytest.skip(f"{lab.topology.name} declares no VIP{promise.over(family)}")
    return vips


def _to_vip(probe, v, src, family=4, **kw):
    """Probe a VIP (its address of ``family``) with its own protocol: HTTP for tcp, the UDP echo for udp."""
    send = probe.udp if v.protocol == "udp" else probe.http
    return send(src, v.at(family), v.port, **kw)


def test_vip_from_the_host(lab, probe, family):
    t = lab.topology
    for v in _vips(lab, family):
        if not v.from_host:
            continue
        c = t.container(v.container)
        r = expect(_to_vip(probe, v, "host", family, target=c.name, capture=[lab.point(c.name)]))
        seen(r, lab.point(c.name), dst=str(c.at(family).ip), dport=v.target_port)


def test_vip_from_the_outside(lab, probe, family):
    t = lab.topology
    for v in _vips(lab, family):
        if not v.from_outside:
            continue
        if not any(v.at(family) in r.to for r in t.wan.routes):
            pytest.skip(f"{t.name}: the outside world has no route to the VIP {v.at(family)}")
        c = t.container(v.container)
        r = expect(_to_vip(probe, v, "wan", family, target=c.name, capture=["wan:uplink", lab.point(c.name)]))
        seen(r, "wan:uplink", dst=str(v.at(family)), dport=v.port)
        seen(r, lab.point(c.name), dst=str(c.at(family).ip), dport=v.target_port)


def test_vip_from_another_container(lab, probe, family):
    t = lab.topology
    for v in _vips(lab, family):
        c = t.container(v.container)
        others = [o for o in t.containers if o.name != c.name and o.gateway_at(family)]
        if not others:
            pytest.skip(f"{t.name}: no other container to use the VIP from")
        for o in others:
            exp = "reach" if promise.vip_from_container(t, v, o.name, family) else "observe"
            r = expect(_to_vip(probe, v, o.name, family, target=c.name, expect=exp, capture=[lab.point(o.name), lab.point(c.name)]))
            if exp == "reach":
                seen(r, lab.point(o.name), dst=str(v.at(family)))
                seen(r, lab.point(c.name), dst=str(c.at(family).ip), dport=v.target_port)
                seen(r, lab.point(o.name), role="reply", src=str(v.at(family)))


def test_only_the_declared_vip_port_is_redirected(lab, probe):
    """No stray redirect: the VIP's other ports (or, without a VIP, a VIP-like address) reach no container.

    Runs on every topology: the probe is seen leaving the host, and never inside a container.
    """
    t = lab.topology
    if not t.vips and lab.host_mode:
        pytest.skip("host mode: an address that is no VIP follows the host's own routes, off this machine")
    targets = [(v.address, v.port + 1) for v in t.vips] or [("10.100.100.100", 8080)]
    points = [f"host:{t.host.uplink}", *(lab.point(c.name) for c in t.containers)]
    for address, port in targets:
        r = expect(probe.tcp("host", address, port, expect="block", capture=points))
        for c in t.containers:
            not_seen(r, lab.point(c.name))
        # Not redirected, so it follows the host's route: out of the uplink, to nobody.
        seen(r, f"host:{t.host.uplink}", dst=str(address), dport=port)
