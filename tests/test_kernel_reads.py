"""The diagnosis's raw kernel reads (netcheck.kernel: rtnetlink, sock_diag and ctnetlink dumps decoded
with struct) say what pyroute2 and /proc say, on a live dual-stack lab with bridge ports, policy-free
routes of several kinds, neighbours, listeners and conntrack entries.

pyroute2 and /proc/net are the oracle here: the diagnosis read them until the dumps replaced them
(about ten times cheaper), and nothing a rule reads may differ.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest

from netcheck import faults, spec
from netcheck.evidence import ProbeRequest
from netcheck.kernel import inspect
from netcheck.kernel.netns import BRIDGE_PORT_STATES, Address, BridgePort, Link, Neighbour, Netns, RouteEntry
from netcheck.lab import Lab
from netcheck.probes import Prober

pytestmark = pytest.mark.root

NUD = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
RT_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """seed1-dual with a blackhole route, a hairpin port and a wrong static neighbour, after traffic of
    every protocol (so that conntrack and the neighbour tables hold entries)."""
    with Lab(spec.builtin("seed1-dual")) as made:
        assert faults.inject(made, ["host-blackhole-route", "hairpin-mode-off", "static-neigh-wrong"])
        prober = Prober(made)
        for kind, port in (("icmp", None), ("tcp", 7), ("udp", 7)):
            for target in ("203.0.113.1", "2001:db8::1"):
                prober.send(ProbeRequest(kind, "netns0", ip_address(target), port))  # type: ignore[arg-type]
        yield made


def _pyroute2(ns: Netns, fn: Any) -> Any:
    def do() -> Any:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return fn(ipr)

    return ns.call(do)


def _kind(m: Any) -> str:
    info = m.get_attr("IFLA_LINKINFO")
    if info is None:
        return "loopback" if m.get_attr("IFLA_IFNAME") == "lo" else "device"
    return str(info.get_attr("IFLA_INFO_KIND") or "device")


def _links(ipr: Any) -> list[Link]:
    return [Link(int(m["index"]), m.get_attr("IFLA_IFNAME"), _kind(m), bool(m["flags"] & 1), str(m.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
                 int(m.get_attr("IFLA_MTU") or 0), str(m.get_attr("IFLA_ADDRESS") or ""), m.get_attr("IFLA_MASTER"), m.get_attr("IFLA_LINK"),
                 m.get_attr("IFLA_LINK_NETNSID")) for m in ipr.get_links()]


def _names(ipr: Any) -> dict[int, str]:
    return {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}


def _route(m: Any, names: dict[int, str]) -> RouteEntry:
    dst = m.get_attr("RTA_DST") or ("::" if m["family"] == socket.AF_INET6 else "0.0.0.0")
    gw, oif, src = m.get_attr("RTA_GATEWAY"), m.get_attr("RTA_OIF"), m.get_attr("RTA_PREFSRC")
    return RouteEntry(ip_network(f"{dst}/{m['dst_len']}", strict=False), ip_address(gw) if gw else None, names.get(oif) if oif else None,
                      ip_address(src) if src else None, RT_TYPES.get(m["type"], str(m["type"])), int(m.get_attr("RTA_TABLE") or m["table"]),
                      int(m.get_attr("RTA_PRIORITY") or 0))


def _ports(ipr: Any) -> list[BridgePort]:
    links = {m["index"]: m for m in ipr.get_links()}
    out = []
    for m in links.values():
        master = links.get(m.get_attr("IFLA_MASTER") or 0)
        if master is None or _kind(master) != "bridge":
            continue
        slave = m.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_SLAVE_DATA")
        learning = slave.get_attr("IFLA_BRPORT_LEARNING")
        out.append(BridgePort(m.get_attr("IFLA_IFNAME"), master.get_attr("IFLA_IFNAME"), BRIDGE_PORT_STATES.get(slave.get_attr("IFLA_BRPORT_STATE"), "unknown"),
                              bool(slave.get_attr("IFLA_BRPORT_MODE")), bool(slave.get_attr("IFLA_BRPORT_ISOLATED")), learning is None or bool(learning)))
    return out


def _bridges(ipr: Any) -> list[inspect.BridgeOptions]:
    out = []
    for m in ipr.get_links():
        if _kind(m) == "bridge":
            data = m.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
            out.append(inspect.BridgeOptions(m.get_attr("IFLA_IFNAME"), int(data.get_attr("IFLA_BR_AGEING_TIME") or 0), bool(data.get_attr("IFLA_BR_STP_STATE")),
                                       bool(data.get_attr("IFLA_BR_NF_CALL_IPTABLES"))))
    return out


def _listening(ns: Netns) -> list[inspect.Listening]:
    def do() -> list[inspect.Listening]:
        out = []
        for proto, state in (("tcp", "0A"), ("udp", "07")):
            with open(f"/proc/thread-self/net/{proto}") as f:
                for line in f.read().splitlines()[1:]:
                    parts = line.split()
                    if parts[3] == state:
                        addr, port = parts[1].split(":")
                        out.append(inspect.Listening(proto, socket.inet_ntoa(struct.pack("<I", int(addr, 16))), int(port, 16)))
        return out

    return ns.call(do)


def _conntrack(ns: Netns, family: int) -> list[inspect.CtEntry]:
    def do() -> list[inspect.CtEntry]:
        from pyroute2 import Conntrack

        out = []
        with Conntrack(nfgen_family=socket.AF_INET6 if family == 6 else socket.AF_INET) as ct:
            for e in ct.dump_entries():
                o, r = e.tuple_orig, e.tuple_reply
                out.append(inspect.CtEntry({1: "icmp", 6: "tcp", 17: "udp"}.get(o.proto, str(o.proto)), str(o.saddr), str(o.daddr), o.sport, o.dport, str(r.saddr),
                                     str(r.daddr), r.sport, r.dport, e.protoinfo.state_name() if e.protoinfo is not None else "", e.status_name()))
        return out

    return ns.call(do)


@pytest.mark.parametrize("label", ["host", "wan", "netns0", "netns1"])
def test_the_raw_dumps_read_what_pyroute2_reads(lab: Lab, label: str) -> None:
    ns = lab.namespaces()[label]
    assert ns.links() == _pyroute2(ns, _links)
    assert all(ns.link(x.name) == x for x in ns.links()) and ns.link("nosuchlink0") is None
    for family in (socket.AF_INET, socket.AF_INET6):
        want_addresses = _pyroute2(ns, lambda ipr, f=family: [Address(_names(ipr)[m["index"]], ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"))
                                                               for m in ipr.get_addr(family=f)])
        assert ns.addresses(family) == want_addresses
        assert ns.routes(family) == _pyroute2(ns, lambda ipr, f=family: [_route(m, _names(ipr)) for m in ipr.get_routes(family=f, table=254)])
        assert ns.neighbours(family) == _pyroute2(ns, lambda ipr, f=family: [Neighbour(_names(ipr).get(m["ifindex"], "?"), m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR"),
                                                                                      NUD.get(m["state"], str(m["state"]))) for m in ipr.get_neighbours(family=f)])
    assert ns.all_routes() == [r for r in _pyroute2(ns, lambda ipr: [_route(m, _names(ipr)) for m in ipr.get_routes(family=socket.AF_INET, table=None)]) if r.table != 255]
    assert ns.bridge_ports() == _pyroute2(ns, _ports)
    assert inspect.bridges(ns) == _pyroute2(ns, _bridges)
    assert sorted(inspect.listening(ns), key=repr) == sorted(_listening(ns), key=repr)
    for family in (4, 6):
        assert sorted(inspect.conntrack(ns, family=family), key=repr) == sorted(_conntrack(ns, family), key=repr)


def _route_get(ipr: Any, dst: str, src: str | None, iif: str | None) -> RouteEntry | str:
    kw: dict[str, Any] = {"dst": dst, **({"src": src} if src else {})}
    if iif is not None:
        kw["iif"] = ipr.link("get", ifname=iif)[0]["index"]
    try:
        return _route(ipr.route("get", **kw)[0], _names(ipr))
    except Exception as exc:  # noqa: BLE001 - the error's text, as Netns.route_get gives it
        return os.strerror(exc.code if isinstance(getattr(exc, "code", None), int) else errno.ENETUNREACH)  # type: ignore[attr-defined]


@pytest.mark.parametrize("label", ["host", "netns0"])
def test_the_raw_route_lookup_answers_as_pyroute2_does(lab: Lab, label: str) -> None:
    """Delivered, forwarded, blackholed, local, unroutable and IPv6 lookups, with and without a source and an input interface."""
    ns = lab.namespaces()[label]
    ifaces = [x.name for x in ns.links() if x.name != "lo"][:2]
    asked = 0
    for dst in ("203.0.113.1", "198.51.100.1", "172.18.0.10", "172.18.0.20", "10.99.0.1", "127.0.0.1", "224.0.0.1", "2001:db8::1", "fd00:99::1"):
        for src, iif in ((None, None), ("172.18.0.10", None), ("203.0.113.1", ifaces[0]), ("172.18.0.10", ifaces[-1])):
            if src and ip_address(src).version != ip_address(dst).version:
                continue
            want = _pyroute2(ns, lambda ipr, d=dst, s=src, i=iif: _route_get(ipr, d, s, i))
            assert ns.route_get(ip_address(dst), ip_address(src) if src else None, iif) == want, (dst, src, iif)
            asked += 1
    assert asked >= 20


def test_the_lab_holds_what_the_comparison_needs(lab: Lab) -> None:
    """The comparison above is not vacuous: the lab holds every kind of thing it compares."""
    host = lab.host
    assert {r.kind for r in host.all_routes()} >= {"unicast", "blackhole"}
    assert isinstance(host.route_get(ip_address("198.51.100.1")), str)  # the blackhole route: the lookup comparison meets an error too
    assert any(not p.hairpin for p in host.bridge_ports()) and inspect.bridges(host)
    assert any(n.state == "PERMANENT" for n in lab.namespaces()["netns0"].neighbours())
    assert lab.namespaces()["netns0"].addresses(socket.AF_INET6) and lab.wan.routes(socket.AF_INET6)
    assert inspect.listening(lab.wan)
    assert {e.proto for e in inspect.conntrack(host)} >= {"icmp", "tcp", "udp"} and inspect.conntrack(host, family=6)


def test_the_snapshot_hands_each_namespace_its_reads_once(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """``observe`` reads a namespace, its SNMP counters and (for the host) its extras in one job on the
    namespace's thread (plus the host's conntrack socket, made first), and ``counters`` in one job too:
    a hand-over costs a thread wake-up, which is milliseconds on a loaded machine."""
    from netcheck.diagnose import state as kernel_state
    from netcheck.kernel.worker import NamespaceWorker

    handed: Counter[str] = Counter()
    submit = NamespaceWorker.submit

    def counting(self: NamespaceWorker, fn: Any, *args: Any) -> Any:
        handed[self.label] += 1
        return submit(self, fn, *args)

    monkeypatch.setattr(NamespaceWorker, "submit", counting)
    namespaces = lab.namespaces()
    snap, snmp = kernel_state.observe(namespaces, full=set(namespaces), addresses={"172.18.0.10"}, counted={"host", "netns0"})
    assert handed == {"host": 2, "wan": 1, "netns0": 1, "netns1": 1}
    assert set(snap.namespaces) == set(namespaces) and snap.host.ruleset.rules() and snap.host.bridge_ports and snap.host.conntrack
    assert snap.namespaces["netns0"].listening and snap.namespaces["host"].routes
    assert set(snmp) == {"host", "netns0"} and "TcpExt.IPReversePathFilter" in snmp["host"] and snmp["host"]["Ip.Forwarding"] == 1
    handed.clear()
    rules, before = kernel_state.counters(namespaces, {"host", "wan"})
    assert handed == {"host": 1, "wan": 1}
    assert rules and set(before) == {"host", "wan"}
