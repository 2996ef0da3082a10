"""``MultiLab``: several single-host labs (each the existing ``Lab``, its namespaces tagged with a
tag of its own), then netcheck's underlay namespace and the join between them.

Build order: every host lab, the underlay namespace and its bridge, each host's link into it,
then the join (routes, or a VXLAN device with its fdb entries and neighbours). The multi-host
lab's own ledger records each object of the underlay and the join before it exists; teardown
tears the host labs down, newest first (each host's namespace takes the join's links and routes
in it along: deleting them one by one first cost an RCU grace period each), then undoes that
ledger in reverse (the underlay, and whatever a failed host teardown left)::

    with MultiLab(spec.builtin("two-hosts-vxlan")) as lab:
        lab.hosts["a"].container_ns("netns0")
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from netcheck.kernel import rtnl
from netcheck.kernel.netns import Netns, VethSpec
from netcheck.lab import Lab, LabError
from netcheck.lab.attachments import Attachments
from netcheck.lab.build import ns_defaults
from netcheck.ledger import Entry, Ledger, LinkEntry, NetnsEntry, RouteEntry, default_run_dir
from netcheck.multihost.plan import HostJoin, JoinPlan, plan
from netcheck.multihost.spec import Join, MultiTopology
from netcheck.naming import new_tag

T = TypeVar("T")


class MultiLab:
    """A multi-host topology realised in namespaces netcheck creates.

    ``hosts`` maps each host's name to its ``Lab``; ``underlay`` is netcheck's fabric namespace.
    Capture points are ``HOST/POINT`` (``a/netns0:ceth0``, ``b/host:vxlan``) or
    ``underlay:HOST`` (the underlay bridge's port toward that host).
    """

    def __init__(self, topology: MultiTopology, *, tag: str | None = None) -> None:
        self.topology = topology
        self.tag = tag or new_tag()
        self.hosts: dict[str, Lab] = {}
        self.ledger: Ledger | None = None
        self.underlay: Netns | None = None
        self.plan: JoinPlan | None = None
        self._handles: list[Netns] = []
        self.attached = Attachments()

    # ----------------------------------------------------------------- life cycle

    def __enter__(self) -> MultiLab:
        return self.build()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def build(self) -> MultiLab:
        t = self.topology
        try:
            self.ledger = Ledger(self.tag, topology=t.name, mode="sandbox", run_dir=default_run_dir(), source=t.source)
        except FileExistsError:
            raise LabError(f"lab tag {self.tag} is taken (a leftover? try: netcheck clean)") from None
        try:
            for h in t.hosts:
                self.hosts[h.name] = Lab(h.topology).build()
            self.plan = plan(t, self.tag, {name: lab.tag for name, lab in self.hosts.items()})
            self._underlay(self.plan)
            for hj in self.plan.hosts:
                self.make_join(hj)
        except BaseException:
            self.teardown()
            raise
        return self

    def _underlay(self, p: JoinPlan) -> None:
        assert self.ledger is not None
        ul = self.ledger.create(NetnsEntry(p.underlay_ns), lambda: Netns.create(p.underlay_ns, "underlay"))
        self._handles.append(ul)
        self.underlay = ul
        ul.call(ns_defaults, ul)
        ul.set_sysctl("net.ipv4.ip_forward", 0)
        self.ledger.record(LinkEntry(ul.name, p.bridge))
        index = ul.add_bridge(p.bridge)
        ul.configure(up=[p.bridge])
        mtu = self.topology.underlay.mtu
        for hj in p.hosts:
            lab = self.hosts[hj.name]
            self.ledger.record(LinkEntry(ul.name, hj.port))
            self.ledger.record(LinkEntry(lab.host.name, hj.uplink))
            ul.add_veths([VethSpec(hj.port, hj.uplink, lab.host, master=index, mtu=mtu)])
            lab.host.configure(up=[hj.uplink], addresses=[(hj.uplink, hj.underlay)])
            lab.knames["underlay"] = hj.uplink  # capture points such as a/host:underlay
            if hj.vxlan is not None:
                lab.knames["vxlan"] = hj.vxlan
        ul.wait_links_up([hj.port for hj in p.hosts])
        for hj in p.hosts:
            self.hosts[hj.name].host.wait_links_up([hj.uplink])

    def make_join(self, hj: HostJoin, *, vni: int | None = None, port: int | None = None) -> None:
        """One host's side of the join, each object recorded first (a fault may remake it with another VNI or port)."""
        assert self.ledger is not None
        make_join(self.ledger.record, self.hosts[hj.name].host, self.topology.join, hj, vni=vni, port=port)

    def teardown(self) -> None:
        """Release what users attached, tear each host lab down, newest first, then undo the join and the underlay in reverse."""
        errors: list[str] = []
        errors += self.attached.release_all(f"multi-host lab {self.tag}")
        for ns in reversed(self._handles):
            with contextlib.suppress(Exception):
                ns.close()
        self._handles.clear()
        self.underlay = None
        for name in reversed(list(self.hosts)):
            try:
                self.hosts.pop(name).teardown()
            except Exception as exc:  # noqa: BLE001 - every host lab gets its teardown
                errors.append(str(exc))
        if self.ledger is not None:  # entries in a host namespace that is gone are skipped: they went with it
            errors += self.ledger.undo_and_close()
            self.ledger = None
        if errors:
            raise LabError(f"teardown of multi-host lab {self.tag} left: " + "; ".join(errors) + " (try: netcheck clean)")

    # ----------------------------------------------------------------- what users attach (captures)

    def attachment(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T:
        return self.attached.get(key, make, release)

    def resolve_point(self, point: str) -> tuple[Netns, str, str]:
        """``HOST/POINT`` -> the host lab's point; ``underlay:HOST`` -> the underlay's port toward HOST."""
        label, _, rest = point.partition(":")
        if label == "underlay":
            assert self.underlay is not None and self.plan is not None
            if rest not in self.hosts:
                raise LabError(f"capture point {point!r}: no host {rest!r} (hosts: {', '.join(self.hosts)})")
            return self.underlay, self.plan.host(rest).port, rest
        host, slash, inner = point.partition("/")
        if not slash or host not in self.hosts:
            raise LabError(f"capture point {point!r}: write HOST/POINT (hosts: {', '.join(self.hosts)}) or underlay:HOST")
        return self.hosts[host].resolve_point(inner)

    def namespaces(self) -> dict[str, Netns]:
        """Every namespace by the label users see: ``a/host``, ``a/netns0``, ..., ``underlay``."""
        out = {f"{h}/{label}": ns for h, lab in self.hosts.items() for label, ns in lab.namespaces().items()}
        if self.underlay is not None:
            out["underlay"] = self.underlay
        return out


def make_join(record: Callable[[Entry], object], host: Netns, j: Join, hj: HostJoin, *, vni: int | None = None, port: int | None = None) -> None:
    """One host's side of the join in its host namespace ``host``, each object given to ``record`` (a ledger's) before it is made:
    the VXLAN device with its fdb entries and neighbours (vxlan), then the routes to the other hosts."""
    if hj.vxlan is not None and hj.vtep is not None:
        record(LinkEntry(host.name, hj.vxlan))
        send(host, lambda sock: [rtnl.vxlan(hj.vxlan or "", vni=vni or j.vni, port=port or j.port, local=hj.underlay.ip,
                                            link=link_index(sock, hj.uplink), learning=j.fdb == "learning", mtu=j.mtu, mac=hj.mac)])
        host.configure(up=[hj.vxlan], addresses=[(hj.vxlan, hj.vtep)])
        index = host.link_index(hj.vxlan)
        assert index is not None
        send(host, lambda _sock: [rtnl.fdb(index, f.mac, f.dst, where=hj.vxlan or "") for f in hj.fdb])
        if hj.neighbours:
            host.set_neighbours(hj.vxlan, [(n.ip, n.mac) for n in hj.neighbours])
        host.wait_links_up([hj.vxlan])
    for r in hj.routes:
        record(RouteEntry(host.name, str(r.dst)))
    host.configure(routes=[(r.dst, r.via, r.dev) for r in hj.routes])


def link_index(sock: rtnl.Rtnl, name: str) -> int:
    index = sock.link_index(name)
    if index is None:
        raise LabError(f"no link {name}")
    return index


def send(ns: Netns, make: Callable[[rtnl.Rtnl], list[rtnl.Request]]) -> None:
    """Send requests through the namespace's rtnetlink socket; the first failure raised with where it happened."""
    failures = ns.with_rtnl(lambda sock: sock.execute(make(sock)))
    rtnl.raise_first(failures, f"netns {ns.name} ({ns.label})")


__all__ = ["MultiLab", "link_index", "make_join", "send"]
