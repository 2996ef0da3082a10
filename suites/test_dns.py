"""Names: each container's resolv.conf is the one the spec declares, its resolver answers over UDP and
TCP, declared names resolve through its search list, unknown ones get NXDOMAIN, and the queries leave
masqueraded. The resolver is netcheck's own DNS server in the outside world, or a tool's resolver on a
[[network]] (Docker's embedded one at 127.0.0.11, Podman's aardvark-dns), which names the network's
containers and forwards other names to netcheck's: no query leaves the machine."""

from __future__ import annotations

import pytest

from netcheck import expect as promise
from netcheck import resolvconf
from netcheck.checks import expect, seen
from netcheck.lab.plan import resolv_conf_text

pytestmark = pytest.mark.netcheck_property("dns")


def _declared(lab):
    t = lab.topology
    names = [c.name for c in t.containers if c.dns is not None]
    if not names:
        pytest.skip(f"{t.name}: no container declares its resolvers (dns = [...])")
    return names


def _resolving(lab):
    """Containers with resolvers of their own that netcheck may ask (not "inherit": the machine's are never asked)."""
    t = lab.topology
    names = [c.name for c in t.containers if c.dns is not None and not isinstance(c.dns, str)]
    if lab.host_mode:  # a tool's resolver on a real host forwards unknown names to the host's own: only netcheck's server is asked
        names = [n for n in names if t.dns is not None and t.container(n).dns[0] == t.dns.address]
    if not names or t.dns is None:
        pytest.skip(f"{t.name}: no container has a resolver of the spec's own [dns] server" + (" (host mode asks no tool's resolver)" if lab.host_mode else ""))
    return names


def _tool_resolver(lab, name):
    """Does a tool's resolver on the container's [[network]] answer it (it forwards what it does not know)?"""
    on = lab.topology.network_of(lab.topology.container(name))
    return on is not None and on.dns


def _udp_only(lab, name, resolver):
    """Is ``resolver`` the container's network's own, declared to answer over UDP only (dns_tcp = false)?"""
    on = lab.topology.network_of(lab.topology.container(name))
    return on is not None and on.dns and not on.dns_tcp and lab.topology.container(name).dns[0] == resolver


def _hears(lab, name, resolver):
    """Where the container's query to ``resolver`` is seen: its lo for a loopback resolver (Docker's 127.0.0.11), else its interface."""
    return f"{name}:lo" if resolver.is_loopback else lab.point(name)


def test_resolv_conf_is_the_declared_one(lab):
    t = lab.topology
    for name in _declared(lab):
        c, ns = t.container(name), lab.container_ns(name)
        path = resolvconf.path_for(ns.name or "")
        if isinstance(c.dns, str):  # "inherit": no file of its own, so `ip netns exec` shows the machine's
            assert not path.exists(), f"{name}: dns = \"inherit\", but {path} exists, which ip netns exec mounts over /etc/resolv.conf"
            continue
        path, text = lab.resolv_conf(name)
        assert text is not None and path.is_file(), (f"{name}: {path} is missing, so a program in the container reads the machine's /etc/resolv.conf instead "
                                                     f"(seed 2's `echo \"nameserver ... | tee\"` typo writes nothing). Fix: write it:\n{resolv_conf_text(c)}")
        got = resolvconf.parse(text)
        want = resolvconf.parse(resolv_conf_text(c) or "")
        assert (got.nameservers, got.search) == (want.nameservers, want.search), f"{name}: {path} says {got}, the spec declares {want}"


def test_resolver_answers_over_udp_and_tcp(lab, probe):
    """UDP first, as a stub resolver asks; then TCP, which it falls back to for large answers (a firewall may treat the two apart).
    A network's resolver declared to answer over UDP only (dns_tcp = false) must refuse TCP: the spec says what this one does."""
    t = lab.topology
    for name in _resolving(lab):
        c = t.container(name)
        query = c.resolve[0].name if c.resolve else t.dns.records[0].name if t.dns.records else "netcheck-check.invalid."
        for tcp in (False, True):
            if tcp and _udp_only(lab, name, c.dns[0]):
                r = probe.dns(name, query, tcp=True, expect="block", capture=[lab.point(name)])
                assert r.rcode is None and r.error and "refused" in r.error, (f"{name}: the spec says its network's resolver answers over UDP only (dns_tcp = false), "
                                                                              f"but over TCP it got {r.rcode or r.error}: write dns_tcp = true\n{r.explain()}")
                continue
            r = expect(probe.dns(name, query, tcp=tcp, capture=[lab.point(name), f"{name}:lo"]))
            at = _hears(lab, name, r.request.destination)
            seen(r, at, dst=str(r.request.destination))
            seen(r, at, role="reply", src=str(r.request.destination))
            assert r.rcode is not None, f"{name}: no DNS answer\n{r.explain()}"


def test_declared_names_resolve(lab, probe):
    t = lab.topology
    checked = 0
    for name in _resolving(lab):
        for want in t.container(name).resolve:
            r = expect(probe.dns(name, want.name))
            address = t.answer(want)
            said = f"{address} (the address of container {want.container})" if want.container else str(address)
            if address is None:
                assert r.rcode == "NXDOMAIN", f"{name}: {want.name!r} must not exist, got {r.rcode} {r.answers}\n{r.explain()}"
            else:
                assert r.answers == (str(address),), f"{name}: {want.name!r} resolved to {r.answers or r.rcode}, the spec says {said}\n{r.explain()}"
            checked += 1
    if not checked:
        pytest.skip(f"{t.name}: no container declares names to resolve ([[container.resolve]])")


def test_unknown_name_gets_nxdomain(lab, probe):
    for name in _resolving(lab):
        r = expect(probe.dns(name, "netcheck-no-such-name.invalid."))
        assert r.rcode == "NXDOMAIN" and not r.answers, f"{name}: a name in no zone got {r.rcode} {r.answers}\n{r.explain()}"


def test_queries_leave_masqueraded(lab, probe):
    """A query for a name no one knows reaches netcheck's server from the host's uplink address. A tool's
    resolver asks it again with a query (and port) of its own, so only the server's view proves that one."""
    t = lab.topology
    names = [n for n in _resolving(lab) if (promise.masqueraded(t, n) and t.container(n).gateway) or _tool_resolver(lab, n)]
    if not names:
        pytest.skip(f"{t.name}: no container with a resolver is masqueraded on the way out")
    host_ip = str(t.host.address.ip)
    for name in names:
        # A tool's resolver forwards what it does not know; a name of the zone comes back with the server's view of the query.
        query = t.dns.records[0].name + "." if _tool_resolver(lab, name) and t.dns.records else "netcheck-masquerade-check.invalid."
        r = expect(probe.dns(name, query, capture=[lab.point(name), "wan:uplink"]))
        if not _tool_resolver(lab, name):
            seen(r, lab.point(name), src=str(t.container(name).address.ip))
            seen(r, "wan:uplink", src=host_ip)
        assert r.service_saw and r.service_saw.split(":")[0] == host_ip, f"{name}: the DNS server saw {r.service_saw}, expected {host_ip}\n{r.explain()}"
