"""Typed access to one network namespace: netlink (pyroute2), sysctls, sockets and processes.

Every method runs inside the namespace's worker thread. Nothing outside netcheck.kernel
imports pyroute2 or iptc.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any, TypeVar

from netcheck.kernel import rtnl
from netcheck.kernel.worker import NamespaceError, NamespaceWorker, netns_path, settle
from netcheck.waiting import wait_until

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")
IFF_UP = 0x1
LOOPBACK_INDEX = 1  # lo is the first link of every namespace
AF_BRIDGE = 7
GONE = (errno.ENODEV, errno.ENOENT)  # "already gone", for a link (ENODEV) or what it held (ENOENT)
ROUTE_FIX = "is the gateway on a connected subnet, and its link up?"
BRIDGE_PORT_STATES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}


class KernelError(RuntimeError):
    """A kernel operation failed; the message names the object, the namespace and a fix."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    admin_up: bool
    operstate: str
    mtu: int
    mac: str
    master: int | None
    peer_index: int | None = None
    peer_netnsid: int | None = None

    @property
    def up(self) -> bool:
        return self.admin_up and self.operstate in ("UP", "UNKNOWN")


@dataclass(frozen=True)
class Address:
    interface: str
    address: IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class RouteEntry:
    dst: IPv4Network | IPv6Network
    gateway: IPv4Address | IPv6Address | None
    interface: str | None
    prefsrc: IPv4Address | IPv6Address | None = None
    kind: str = "unicast"
    table: int = 254  # main
    metric: int = 0


@dataclass(frozen=True)
class IpRule:
    """One policy-routing rule (``ip rule``): its selectors and its action (a table lookup, or
    blackhole, prohibit, unreachable); selectors it does not name are in ``unmodelled``."""

    priority: int
    action: str  # lookup, blackhole, prohibit, unreachable, goto, nop
    table: int | None = None
    src: IPv4Network | IPv6Network | None = None
    dst: IPv4Network | IPv6Network | None = None
    iif: str | None = None
    oif: str | None = None
    invert: bool = False
    unmodelled: tuple[str, ...] = ()  # fwmark, tos, ipproto, ports, uid range...
    family: int = 4  # 4: ``ip rule``; 6: ``ip -6 rule``


@dataclass(frozen=True)
class Neighbour:
    interface: str
    address: str
    mac: str | None
    state: str


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    port: str
    master: str | None
    local: bool


@dataclass(frozen=True)
class BridgePort:
    port: str
    bridge: str
    state: str
    hairpin: bool = False  # frames may leave by the port they came in by
    isolated: bool = False
    learning: bool = True


_NUD = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
_RT_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


@dataclass(frozen=True)
class VethSpec:
    """One veth pair of a batch (``Netns.add_veths``): ``name`` here, ``peer`` born in ``peer_ns``."""

    name: str
    peer: str
    peer_ns: Netns | None = None
    master: int | None = None  # ifindex of the bridge to enslave ``name`` to
    group: int | None = None  # link group of ``name``, for deleting a lab's links in one request
    mtu: int | None = None
    up: bool = True  # the peer comes up later, from its own namespace (the kernel refuses it at birth)
    index: int = 0  # 0: the kernel picks; see rtnl.veth on why a pair's indexes must differ
    peer_index: int = 0
    peer_group: int | None = None


def _ipr(state: dict[str, Any]) -> IPRoute:
    ipr = state.get("ipr")
    if ipr is None:
        from pyroute2 import IPRoute

        ipr = IPRoute()
        state["ipr"] = ipr
    return ipr


class Netns:
    """One network namespace, reached through a thread parked in it.

    >>> ns = Netns.create("nck7q0-host")       # doctest: +SKIP
    >>> ns.add_bridge("nck7q0b0")              # doctest: +SKIP
    """

    def __init__(self, label: str, name: str | None, worker: NamespaceWorker) -> None:
        self.label = label  # the name users see (host, wan, netns0)
        self.name = name  # the name under /run/netns, or None for the process's own namespace
        self._worker = worker
        worker.on_close(self._close_in_thread)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, name: str, label: str | None = None) -> Netns:
        """Create /run/netns/NAME; fails if it exists."""
        return cls(label or name, name, NamespaceWorker(label or name, netns_path(name), create=True))

    @classmethod
    def attach(cls, path: str, label: str) -> Netns:
        """Enter an existing namespace by path (/run/netns/X or /proc/PID/ns/net); never creates one."""
        name = os.path.basename(path) if path.startswith("/run/netns/") or path.startswith("/var/run/netns/") else None
        return cls(label, name, NamespaceWorker(label, path))

    @classmethod
    def current(cls, label: str = "host") -> Netns:
        """The process's own namespace (host mode)."""
        return cls(label, None, NamespaceWorker(label, None))

    @property
    def path(self) -> str:
        return netns_path(self.name) if self.name else "/proc/self/ns/net"

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
        return self._worker.call(fn, *args, timeout=timeout)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` in the namespace without waiting: many namespaces work at once."""
        return self._worker.submit(fn, *args)

    def netlink(self, fn: Callable[[IPRoute], T]) -> T:
        """Run ``fn(ipr)`` with this namespace's netlink socket."""
        return self._worker.call(lambda: fn(_ipr(self._worker.state)))

    def with_rtnl(self, fn: Callable[[rtnl.Rtnl], T]) -> T:
        """Run ``fn(sock)`` with this namespace's raw rtnetlink socket (batched requests, see rtnl.py)."""

        def do() -> T:
            sock = self._worker.state.get("rtnl")
            if sock is None:
                sock = self._worker.state["rtnl"] = rtnl.Rtnl()
            return fn(sock)

        return self._worker.call(do)

    def _run(self, do: Callable[[rtnl.Rtnl], list[rtnl.NetlinkError]], *, fix: str | Callable[[list[rtnl.NetlinkError]], str] = "", gone: tuple[int, ...] = ()) -> bool:
        """Run ``do(sock)``, which sends requests and returns their failures, in the namespace's thread.

        A failure whose errno is in ``gone`` ("already gone") is no error, and makes the result
        False; the first other one is raised as a KernelError naming the request, the namespace
        and ``fix``.
        """
        where = f"netns {self.name or 'self'} ({self.label})"
        try:
            failures = self.with_rtnl(do)
            errors = [f for f in failures if f.errno not in gone]
            rtnl.raise_first(errors, where, fix(errors) if callable(fix) else fix)
        except (rtnl.NetlinkError, OSError) as exc:
            raise KernelError(str(exc) if where in str(exc) else f"{exc} in {where}") from None
        return len(errors) == len(failures)

    def _send(self, make: Callable[[rtnl.Rtnl], Iterable[rtnl.Request]], *, fix: str = "", gone: tuple[int, ...] = ()) -> bool:
        """Send the requests ``make(sock)`` builds (it may look up indexes) in one batch; see ``_run``."""
        return self._run(lambda sock: sock.execute(make(sock)), fix=fix, gone=gone)

    def _close_in_thread(self) -> None:
        for key in ("ipr", "rtnl"):
            handle = self._worker.state.pop(key, None)
            if handle is not None:
                handle.close()

    def close(self) -> None:
        """Close the netlink socket and stop the thread, so nothing holds the namespace."""
        self._worker.close()

    @classmethod
    def create_many(cls, names: Sequence[tuple[str, str]], *, init: Callable[[Netns], None] | None = None,
                    created: Callable[[Netns], None] = lambda _ns: None, parallel: int = 4) -> list[Netns]:
        """Create namespaces (name, label) a few at a time; ``init(ns)`` runs in each one's thread.

        ``created`` hears of each namespace as soon as it exists (to register it for teardown),
        also when another one fails; the first error is raised once every creation has ended.
        """

        def make(name: str, label: str) -> Netns:
            ns = cls.create(name, label)
            created(ns)
            if init is not None:
                ns.call(init, ns)
            return ns

        if len(names) <= 1 or parallel <= 1:
            return [make(name, label) for name, label in names]
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="netcheck-create") as pool:
            futures = [pool.submit(make, name, label) for name, label in names]
            try:
                wait(futures)
            except BaseException:
                # Interrupted: the creations under way end (the rest are cancelled) before teardown looks.
                for f in futures:
                    f.cancel()
                settle(futures)
                raise
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        return [f.result() for f in futures]

    # ----------------------------------------------------------------- netlink: writes

    def add_veths(self, pairs: Sequence[VethSpec]) -> None:
        """Create veth pairs in one netlink batch, each peer born in its namespace."""

        def do(sock: rtnl.Rtnl) -> list[rtnl.NetlinkError]:
            with contextlib.ExitStack() as fds:
                opened: dict[str, int] = {}
                requests = []
                for p in pairs:
                    fd = None
                    if p.peer_ns is not None:
                        fd = opened.get(p.peer_ns.path)
                        if fd is None:
                            fd = opened[p.peer_ns.path] = os.open(p.peer_ns.path, os.O_RDONLY | os.O_CLOEXEC)
                            fds.callback(os.close, fd)
                    requests.append(rtnl.veth(p.name, p.peer, peer_netns_fd=fd, master=p.master, group=p.group, mtu=p.mtu,
                                           up=p.up, index=p.index, peer_index=p.peer_index, peer_group=p.peer_group))
                return sock.execute(requests)

        self._run(do)

    def configure(
        self, *, up: Sequence[str] = (), addresses: Sequence[tuple[str, IPv4Interface | IPv6Interface]] = (),
        routes: Sequence[tuple[IPv4Network | IPv6Network, IPv4Address | IPv6Address | None, str | None]] = (), dad: bool = False,
    ) -> None:
        """Bring links up, add addresses, then routes (dst, via, dev): one netlink batch, in that order."""

        def make(sock: rtnl.Rtnl) -> list[rtnl.Request]:
            index: dict[str, int] = {"lo": LOOPBACK_INDEX}

            def idx(name: str) -> int:
                if name not in index:
                    index[name] = _index(sock, name)
                return index[name]

            requests = [rtnl.set_link(idx(n), up=True, what=f"set link {n} up") for n in up]
            requests += [rtnl.add_address(idx(n), a, what=f"add address {a} to {n}", dad=dad) for n, a in addresses]
            requests += [rtnl.add_route(dst, via=via, oif=idx(dev) if dev else None, what=f"add route {dst} via {via or dev}") for dst, via, dev in routes]
            return requests

        def fix(failures: list[rtnl.NetlinkError]) -> str:
            return ROUTE_FIX if len(failures) == 1 and failures[0].what.startswith("add route") else ""

        self._run(lambda sock: sock.execute(make(sock)), fix=fix)

    def set_neighbours(self, name: str, entries: Iterable[tuple[IPv4Address, str]]) -> None:
        """Permanent neighbour entries (ip, mac) on link ``name``, in one batch (see rtnl.add_neighbour)."""
        self._send(lambda sock: rtnl.neighbours(_index(sock, name), entries, where=name))

    def delete_neighbours(self, name: str, ips: Iterable[IPv4Address]) -> None:
        """Delete neighbour entries on link ``name`` in one batch; entries already gone are fine."""

        def make(sock: rtnl.Rtnl) -> Iterable[rtnl.Request]:
            index = sock.link_index(name)
            if index is None:
                return []  # the link, and its neighbours, are gone
            return rtnl.neighbours(index, ((ip, "") for ip in ips), delete=True, where=name)

        self._send(make, gone=(errno.ENOENT, errno.ESRCH))

    def link_states(self) -> list[rtnl.LinkState]:
        """Every link's name, index, admin state and operstate, from one raw dump (cheap at scale)."""
        return self.with_rtnl(lambda sock: sock.links())

    def link_index(self, name: str) -> int | None:
        return self.with_rtnl(lambda sock: sock.link_index(name))

    def delete_link_group(self, group: int) -> bool:
        """Delete every link of ``group`` in this namespace in one request (one kernel unregister batch);
        False if the group had no link left."""
        return self._send(lambda _sock: [rtnl.delete_group(group)], gone=GONE)

    def add_bridge(self, name: str, *, group: int | None = None) -> int:
        """A bridge (no STP, no forward delay); returns its ifindex."""
        self._send(lambda _sock: [rtnl.bridge(name, group=group)])
        return self.with_rtnl(lambda sock: _index(sock, name))

    def set_link(self, name: str, *, up: bool | None = None, master: str | bool | None = False, mtu: int | None = None) -> None:
        """Change a link: ``up``, ``master`` (a bridge name, or None to detach), ``mtu``."""

        def make(sock: rtnl.Rtnl) -> list[rtnl.Request]:
            bridge = 0 if master is None else _index(sock, master) if isinstance(master, str) else None
            return [rtnl.set_link(_index(sock, name), up=up, master=bridge, mtu=mtu, what=f"set link {name}")]

        self._send(make)

    def set_hairpin(self, name: str, on: bool = True) -> None:
        """Set a bridge port's hairpin mode."""
        self._send(lambda sock: [rtnl.set_hairpin(_index(sock, name), on, what=f"set hairpin {'on' if on else 'off'} on {name}")])

    def set_bridge(self, name: str, *, ageing_time: int) -> None:
        """Set a bridge's MAC ageing time, in centiseconds (0: it forgets every MAC and floods)."""
        self._send(lambda sock: [rtnl.set_bridge(_index(sock, name), ageing_time=ageing_time, what=f"set bridge {name} ageing_time {ageing_time}")])

    def delete_link(self, name: str) -> bool:
        """Delete a link; False if it was already gone."""
        return self._send(lambda _sock: [rtnl.delete_link(name)], gone=GONE)

    def deconfigure(self, *, routes: Sequence[IPv4Network | IPv6Network] = (), addresses: Sequence[tuple[str, IPv4Interface | IPv6Interface]] = ()) -> bool:
        """Delete routes (by destination), then addresses, in one batch: the reverse of ``configure``;
        False if some were gone already."""

        def make(sock: rtnl.Rtnl) -> list[rtnl.Request]:
            requests = [rtnl.delete_route(dst) for dst in routes]
            return requests + [rtnl.delete_address(_index(sock, n), a, what=f"delete address {a} from {n}") for n, a in addresses]

        return self._send(make, gone=(errno.ESRCH, errno.EADDRNOTAVAIL))

    # ----------------------------------------------------------------- netlink: reads

    def links(self) -> list[Link]:
        return [_link_of(r) for r in self.link_records()]

    def link_records(self) -> list[rtnl.LinkRecord]:
        """Every link as one raw dump gives it (kind, bridge port and bridge options included)."""
        return self.with_rtnl(lambda sock: sock.link_records())

    def _names(self, sock: rtnl.Rtnl) -> dict[int, str]:
        return sock.link_names()

    def link(self, name: str) -> Link | None:
        record = self.with_rtnl(lambda sock: sock.get_link(name))
        return _link_of(record) if record is not None else None

    def addresses(self, family: int = socket.AF_INET) -> list[Address]:
        """The addresses of one family (AF_INET6: link-local ones included)."""

        def do(sock: rtnl.Rtnl) -> list[Address]:
            names = self._names(sock)
            return [Address(names.get(index, str(index)), _interface(bytes(a[rtnl.IFA_ADDRESS]), prefixlen))
                    for index, prefixlen, _flags, a in _addr_dump(sock, family) if rtnl.IFA_ADDRESS in a]

        return self.with_rtnl(do)

    def address_flags(self, name: str, address: IPv6Interface) -> int | None:
        """An IPv6 address's flags (IFA_F_*: tentative, dadfailed...), None if the interface lacks it."""

        def do(ipr: IPRoute) -> int | None:
            index = ipr.link_lookup(ifname=name)
            for m in ipr.get_addr(family=socket.AF_INET6, index=index[0]) if index else []:
                if m.get_attr("IFA_ADDRESS") == str(address.ip):
                    return int(m.get_attr("IFA_FLAGS") or m["flags"])
            return None

        return self.netlink(do)

    def dad_failed(self) -> list[tuple[str, str]]:
        """(interface, address) of every IPv6 address whose duplicate address detection failed (one dump)."""

        def do(sock: rtnl.Rtnl) -> list[tuple[str, str]]:
            names = self._names(sock)
            return [(names.get(index, "?"), str(ip_address(bytes(a[rtnl.IFA_ADDRESS])) if rtnl.IFA_ADDRESS in a else None))
                    for index, _prefixlen, flags, a in _addr_dump(sock, socket.AF_INET6) if flags & rtnl.IFA_F_DADFAILED]

        return self.with_rtnl(do)

    def wait_dad_done(self, name: str, address: IPv6Interface, timeout: float = 5.0) -> bool:
        """Wait (bounded) until duplicate address detection of ``address`` on ``name`` has ended; True if it failed."""
        def ended() -> tuple[int] | None:
            f = self.address_flags(name, address)
            # A failed address stays tentative, flagged dadfailed; a good one stops being tentative.
            return (f,) if f is not None and (not f & rtnl.IFA_F_TENTATIVE or f & rtnl.IFA_F_DADFAILED) else None

        done = wait_until(ended, timeout=timeout, what=f"duplicate address detection of {address} on {name} in {self.label} to end",
                          describe=lambda: f"flags {self.address_flags(name, address)}")
        return done is not None and bool(done[0] & rtnl.IFA_F_DADFAILED)

    def routes(self, family: int = socket.AF_INET) -> list[RouteEntry]:
        """The main table's routes of one family."""
        return [r for r in self._route_dump(family) if r.table == rtnl.RT_TABLE_MAIN]

    def all_routes(self) -> list[RouteEntry]:
        """The routes of every table but local (255), each with its table: policy routing reads them."""
        return [r for r in self._route_dump(socket.AF_INET) if r.table != 255]

    def _route_dump(self, family: int) -> list[RouteEntry]:
        def do(sock: rtnl.Rtnl) -> list[RouteEntry]:
            names = self._names(sock)
            body = rtnl._RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            return [_route_of(p, names) for p in sock.dump(rtnl.RTM_GETROUTE, body, "routes")]

        return self.with_rtnl(do)

    def ip_rules(self, family: int = socket.AF_INET) -> list[IpRule]:
        """The policy-routing rules of a family (``ip rule``, ``ip -6 rule`` for AF_INET6), in priority order."""
        return self.netlink(lambda ipr: sorted((_ip_rule(m, family) for m in ipr.get_rules(family=family)), key=lambda r: r.priority))

    def route_get(self, dst: IPv4Address | IPv6Address, src: IPv4Address | IPv6Address | None = None, iif: str | None = None) -> RouteEntry | str:
        """The kernel's route lookup for a flow (``ip route get``); a string names the error."""

        def do(sock: rtnl.Rtnl) -> RouteEntry | str:
            names = self._names(sock)
            index = _index(sock, iif) if iif is not None else None  # no such link: an error, not a lookup's answer
            try:
                family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
                return _route_of(sock.route_get(family, dst.packed, src.packed if src is not None else None, index), names)
            except Exception as exc:  # noqa: BLE001
                return os.strerror(_errno(exc) or errno.ENETUNREACH)

        return self.with_rtnl(do)

    def neighbours(self, family: int = socket.AF_INET) -> list[Neighbour]:
        def do(sock: rtnl.Rtnl) -> list[Neighbour]:
            names = self._names(sock)
            out = []
            for p in sock.dump(rtnl.RTM_GETNEIGH, rtnl._NDMSG.pack(family, 0, 0, 0, 0), "neighbours"):
                _family, index, state, _flags, _type = rtnl._NDMSG.unpack_from(p)
                a = rtnl.attributes(p, rtnl._NDMSG.size)
                dst = str(ip_address(bytes(a[rtnl.NDA_DST]))) if rtnl.NDA_DST in a else None
                mac = rtnl.lladdr(a[rtnl.NDA_LLADDR]) if rtnl.NDA_LLADDR in a else None
                out.append(Neighbour(names.get(index, "?"), dst, mac, _NUD.get(state, str(state))))  # type: ignore[arg-type]
            return out

        return self.with_rtnl(do)

    def fdb(self) -> list[FdbEntry]:
        def do(ipr: IPRoute) -> list[FdbEntry]:
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
            out = []
            for m in ipr.get_neighbours(family=AF_BRIDGE):
                master = m.get_attr("NDA_MASTER")
                local = bool(m["state"] & 0x80)
                out.append(FdbEntry(m.get_attr("NDA_LLADDR"), names.get(m["ifindex"], "?"), names.get(master) if master else None, local))
            return out

        return self.netlink(do)

    def bridge_ports(self) -> list[BridgePort]:
        links = {r.index: r for r in self.link_records()}
        out = []
        for r in links.values():
            bridge = links.get(r.master) if r.master else None
            if bridge is None or bridge.kind != "bridge":
                continue
            port = r.port or {}
            learning = port.get(rtnl.IFLA_BRPORT_LEARNING)
            out.append(BridgePort(r.name, bridge.name, BRIDGE_PORT_STATES.get(port.get(rtnl.IFLA_BRPORT_STATE, -1), "unknown"), bool(port.get(rtnl.IFLA_BRPORT_MODE)),
                                  bool(port.get(rtnl.IFLA_BRPORT_ISOLATED)), learning is None or bool(learning)))
        return out

    def wait_links_up(self, names: Iterable[str], timeout: float = 5.0) -> None:
        """Wait until every named link is admin-up with carrier, then return."""
        wanted = set(names)
        last: dict[str, str] = {}

        def check() -> bool:
            ok = True
            for link in self.link_states():  # a raw dump: a host with 250 veths parses in a millisecond
                if link.name in wanted:
                    last[link.name] = f"{'up' if link.admin_up else 'down'}/{link.operstate}"
                    ok = ok and link.up
            return ok and len(last) == len(wanted)

        def describe() -> str:
            down = {k: v for k, v in last.items() if v != "up/UP"}
            missing = sorted(wanted - set(last))
            return repr(down) + (f"; missing: {', '.join(missing[:10])}" if missing else "")

        shown = ", ".join(sorted(wanted)[:6]) + (f" and {len(wanted) - 6} more" if len(wanted) > 6 else "")
        wait_until(check, timeout=timeout, what=f"links {shown} up in {self.label}", describe=describe)

    # ----------------------------------------------------------------- sysctls

    def sysctl(self, key: str) -> str | None:
        """Read a sysctl of this namespace; None if it does not exist."""

        def do() -> str | None:
            try:
                with open(_sysctl_path(key)) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return None

        return self.call(do)

    def set_sysctl(self, key: str, value: int | str) -> str | None:
        """Write a sysctl of this namespace; returns the old value."""

        def do() -> str | None:
            path = _sysctl_path(key)
            try:
                with open(path) as f:
                    old = f.read().strip()
                with open(path, "w") as f:
                    f.write(str(value))
            except FileNotFoundError:
                fix = "load br_netfilter: modprobe br_netfilter" if key.startswith("net.bridge.") else "check the name"
                raise KernelError(f"sysctl {key} does not exist in netns {self.name or 'self'} ({fix})") from None
            return old

        return self.call(do)

    # ----------------------------------------------------------------- sockets and processes

    def socket(self, family: int, type_: int, proto: int = 0) -> socket.socket:
        """A socket that lives in this namespace (sockets never change namespace)."""
        return self.call(lambda: socket.socket(family, type_, proto))

    def run(self, argv: Sequence[str], *, timeout: float = 60.0, input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run a command in this namespace (a list, never a shell string)."""
        args = list(argv)
        return self.call(lambda: subprocess.run(args, capture_output=True, timeout=timeout, input=input, env=env, check=False), timeout=timeout + 5)

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running process in this namespace; the caller records its PID."""
        args = list(argv)
        return self.call(lambda: subprocess.Popen(args, **kw))


def _sysctl_path(key: str) -> str:
    if "/" in key or ".." in key or not key.startswith("net."):
        raise KernelError(f"refusing sysctl {key!r}: only net.* names are allowed")
    return "/proc/sys/" + key.replace(".", "/")


def _errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    return getattr(exc, "errno", None)


def _index(sock: rtnl.Rtnl, name: str) -> int:
    """The ifindex of link ``name``, or a NetlinkError (ENODEV) naming it."""
    index = sock.link_index(name)
    if index is None:
        raise rtnl.NetlinkError(errno.ENODEV, f"link {name}", "no such link")
    return index


def _link_of(r: rtnl.LinkRecord) -> Link:
    """A link from its raw dump record."""
    kind = r.kind or ("loopback" if r.name == "lo" else "device")
    return Link(index=r.index, name=r.name, kind=kind, admin_up=bool(r.flags & IFF_UP), operstate=r.operstate, mtu=r.mtu, mac=r.mac,
                master=r.master, peer_index=r.peer_index, peer_netnsid=r.peer_netnsid)


def _interface(packed: bytes, prefixlen: int) -> IPv4Interface | IPv6Interface:
    return IPv4Interface((packed, prefixlen)) if len(packed) == 4 else IPv6Interface((packed, prefixlen))


def _addr_dump(sock: rtnl.Rtnl, family: int) -> list[tuple[int, int, int, dict[int, memoryview]]]:
    """(ifindex, prefix length, flags, attributes) of every address of one family; the flags are IFA_FLAGS's (32 bits) where given."""
    out = []
    for p in sock.dump(rtnl.RTM_GETADDR, rtnl._IFADDR.pack(family, 0, 0, 0, 0), "addresses"):
        _family, prefixlen, flags, _scope, index = rtnl._IFADDR.unpack_from(p)
        a = rtnl.attributes(p, rtnl._IFADDR.size)
        out.append((index, prefixlen, rtnl.u32(a.get(rtnl.IFA_FLAGS)) or flags, a))
    return out


def _route_of(p: bytes, names: dict[int, str]) -> RouteEntry:
    """A route from its raw RTM_NEWROUTE payload (the same values ``_route`` reads from pyroute2's message)."""
    family, dst_len, _src_len, _tos, table, _proto, _scope, kind, _flags = rtnl._RTMSG.unpack_from(p)
    a = rtnl.attributes(p, rtnl._RTMSG.size)

    def ip(attr: int) -> IPv4Address | IPv6Address | None:
        return ip_address(bytes(a[attr])) if attr in a else None

    dst = ip(rtnl.RTA_DST) or (IPv6Address(0) if family == socket.AF_INET6 else IPv4Address(0))
    oif = rtnl.u32(a.get(rtnl.RTA_OIF))
    return RouteEntry(dst=ip_network((dst, dst_len), strict=False), gateway=ip(rtnl.RTA_GATEWAY), interface=names.get(oif) if oif else None,
                      prefsrc=ip(rtnl.RTA_PREFSRC), kind=_RT_TYPES.get(kind, str(kind)), table=rtnl.u32(a.get(rtnl.RTA_TABLE)) or table,
                      metric=rtnl.u32(a.get(rtnl.RTA_PRIORITY)) or 0)


def _route(m: Any, names: dict[int, str]) -> RouteEntry:
    dst = m.get_attr("RTA_DST") or ("::" if m["family"] == socket.AF_INET6 else "0.0.0.0")
    gw = m.get_attr("RTA_GATEWAY")
    oif = m.get_attr("RTA_OIF")
    src = m.get_attr("RTA_PREFSRC")
    return RouteEntry(
        dst=ip_network(f"{dst}/{m['dst_len']}", strict=False),
        gateway=ip_address(gw) if gw else None,
        interface=names.get(oif) if oif else None,
        prefsrc=ip_address(src) if src else None,
        kind=_RT_TYPES.get(m["type"], str(m["type"])),
        table=int(m.get_attr("RTA_TABLE") or m["table"]),
        metric=int(m.get_attr("RTA_PRIORITY") or 0),
    )


_RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_RULE_MODELLED = {"FRA_PRIORITY", "FRA_TABLE", "FRA_SRC", "FRA_DST", "FRA_IIFNAME", "FRA_OIFNAME", "FRA_PROTOCOL", "FRA_UNSPEC", "FRA_SUPPRESS_PREFIXLEN", "FRA_L3MDEV"}


def _ip_rule(m: Any, family: int = socket.AF_INET) -> IpRule:
    def net(attr: str, length: int) -> IPv4Network | IPv6Network | None:
        value = m.get_attr(attr)
        return ip_network(f"{value}/{length}", strict=False) if value else None

    attrs = {name: value for name, value in m["attrs"]}
    unmodelled = [k[4:].lower() for k, v in attrs.items() if k not in _RULE_MODELLED and v not in (None, 0)]
    if attrs.get("FRA_SUPPRESS_PREFIXLEN") not in (None, 0xFFFFFFFF, -1):
        unmodelled.append("suppress_prefixlength")
    if m["tos"]:
        unmodelled.append("tos")
    return IpRule(
        priority=int(m.get_attr("FRA_PRIORITY") or 0), action=_RULE_ACTIONS.get(m["action"], str(m["action"])),
        table=int(m.get_attr("FRA_TABLE") or m["table"]) or None, src=net("FRA_SRC", m["src_len"]), dst=net("FRA_DST", m["dst_len"]),
        iif=m.get_attr("FRA_IIFNAME"), oif=m.get_attr("FRA_OIFNAME"), invert=bool(m["flags"] & 0x2), unmodelled=tuple(unmodelled),
        family=6 if family == socket.AF_INET6 else 4,
    )


__all__ = ["Address", "BridgePort", "FdbEntry", "IpRule", "KernelError", "Link", "NamespaceError", "Neighbour", "Netns", "RouteEntry", "VethSpec"]
