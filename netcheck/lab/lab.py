"""``Lab``: one topology realised in namespaces netcheck creates (see the package's docstring)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from netcheck import resolvconf, spec
from netcheck.kernel.dropwatch import Witness
from netcheck.kernel.netns import Netns
from netcheck.kernel.xtables import XRule
from netcheck.lab import build, teardown
from netcheck.lab.attachments import Attachments
from netcheck.lab.errors import LabError
from netcheck.lab.mode import HostMode, mode_of, owned_routes
from netcheck.ledger import Ledger, LinkEntry, NetnsEntry, ProcessEntry, default_run_dir, process_starttime
from netcheck.naming import KernelNames, new_tag
from netcheck.services import ServiceHost

T = TypeVar("T")


class Lab:
    """One topology, built in sandbox namespaces (host, wan, one per container).

    What the lab's users open inside its namespaces (capture sockets, servers) they register
    with ``attachment`` or ``on_teardown``: teardown releases it first, newest first, because
    it would keep the namespaces alive.
    """

    def __init__(self, topology: spec.Topology, *, keep: bool = False, tag: str | None = None, run_dir: Path | None = None,
                 host_mode: bool = False, mode: HostMode | None = None, network: build.Network | None = None) -> None:
        self.topology = topology
        self.keep = keep
        self.mode: HostMode = mode or mode_of(host_mode)
        self.network: build.Network = network or build.SpecNetwork(topology)
        self.names = KernelNames(tag or new_tag())
        self._tag_given = tag is not None
        self.run_dir = run_dir or default_run_dir()
        self.ledger: Ledger | None = None
        self.host: Netns
        self.wan: Netns
        self.containers: dict[str, Netns] = {}
        self.handles: list[Netns] = []  # every namespace handle the lab holds, in the order opened
        self.services: ServiceHost | None = None
        self.rules: list[XRule] = []  # the rules the builder installed
        self.built = False
        self.knames: dict[str, str] = {}  # spec name -> kernel name of the host-side interfaces
        self.link_groups: dict[str, int] = {}  # host-side links made in a link group
        self.attached = Attachments()
        self.witness: Witness | None = None  # the kernel's drops in this lab's namespaces (the factory gives it)

    # ----------------------------------------------------------------- names

    @property
    def tag(self) -> str:
        return self.names.tag

    @property
    def host_mode(self) -> bool:
        """Is the host the namespace netcheck runs in? For callers that have not moved to ``mode`` yet."""
        return self.mode.name == "host"

    def kname(self, spec_iface: str) -> str:
        """The kernel name of a host-side interface given by its spec name (br0 -> nck7q0b0)."""
        return self.knames[spec_iface]

    def spec_name(self, kernel_iface: str) -> str:
        """The spec name of a host-side kernel interface name (nck7q0b0 -> br0)."""
        return next((k for k, v in self.knames.items() if v == kernel_iface), kernel_iface)

    def container_ns(self, name: str) -> Netns:
        return self.containers[name]

    def resolv_conf(self, container: str) -> tuple[Path, str | None]:
        """(the resolv.conf a program in the container reads, its text): /etc/netns/NETNS/resolv.conf, else the machine's, as ``ip netns exec`` shows it."""
        return resolvconf.seen_from(self.container_ns(container).name)

    def namespaces(self) -> dict[str, Netns]:
        """Every namespace of the lab by the label users see: host, wan and the containers."""
        return {"host": self.host, "wan": self.wan, **self.containers}

    def resolve_point(self, point: str) -> tuple[Netns, str, str]:
        """A capture point such as 'netns0:ceth0', 'host:br0' or 'wan:uplink'
        -> (namespace, kernel interface name, spec interface name)."""
        label, _, iface = point.partition(":")
        if label == "host":
            if iface == "lo":
                return self.host, "lo", "lo"
            if iface not in self.knames:
                raise LabError(f"capture point {point!r}: the host has no interface {iface!r} (it has: {', '.join(self.knames)})")
            return self.host, self.knames[iface], iface
        if label == "wan":
            return self.wan, self.names.wan_uplink if iface in ("uplink", "") else iface, iface or "uplink"
        if label not in self.containers:
            raise LabError(f"capture point {point!r}: no namespace {label!r} (known: host, wan, {', '.join(self.containers)})")
        return self.containers[label], iface or self.topology.container(label).interface, iface

    def point(self, container: str) -> str:
        """The capture point of a container's own interface."""
        return f"{container}:{self.topology.container(container).interface}"

    def holds(self, address: IPv4Address | IPv6Address) -> bool:
        """Is ``address`` inside the namespaces of this lab (so a probe to it cannot leave the machine)?"""
        t = self.topology
        if address.version == 6:
            held6 = [a.network for a in (t.host.address6, t.wan.address6, *t.wan.remote6, *(b.address6 for b in t.bridges), *(c.address6 for c in t.containers)) if a is not None]
            return address.is_loopback or any(address in n for n in held6)
        nets = [t.host.address.network, *owned_routes(t), IPv4Network("127.0.0.0/8")]
        nets += [b.address.network for b in t.bridges if b.address is not None]
        nets += [c.address.network for c in t.containers if c.address is not None]
        nets += [c.host_address.network for c in t.containers if c.host_address is not None]
        return any(address in n for n in nets)

    def expected_rules(self) -> list[XRule]:
        """The rules the builder installed (none where another tool writes its own)."""
        return list(self.rules)

    def _keep_services(self) -> None:
        """A kept lab keeps its services: a process of their own serves them after this run ends,
        recorded in the ledger by PID, so ``netcheck clean TAG`` ends it before removing the lab."""
        ledger, services = self.ledger, self.services
        if ledger is None or services is None:
            return
        argv = (sys.executable, "-m", "netcheck.services")
        try:
            services.hand_over(lambda pid: ledger.record(ProcessEntry(pid, process_starttime(pid), argv)))
        except OSError as exc:
            print(f"netcheck: lab {self.tag}: its services could not be handed to a process of their own ({exc}); they stop when this run ends", file=sys.stderr)
            return
        services.close()  # the new process serves them now
        self.services = None

    def enter_hint(self) -> str:
        lines = [f"lab {self.topology.name} (tag {self.tag}) is kept up for inspection:"]
        for label, ns in self.namespaces().items():
            lines.append(f"  {label:<12} ip netns exec {ns.name} bash")
        lines.append(f"remove it afterwards with: netcheck clean {self.tag}   (run record {self.ledger.path if self.ledger else '?'})")
        return "\n".join(lines)

    # ----------------------------------------------------------------- what users attach

    def on_teardown(self, release: Callable[[], None]) -> None:
        """Run ``release`` at teardown, before the namespaces go (newest first)."""
        self.attached.on_teardown(release)

    def attachment(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T:
        """The lab's one attachment under ``key`` (e.g. a prober's capture points), made on first
        use; ``release(it)`` runs at teardown. The lab never needs to know its type."""
        return self.attached.get(key, make, release)

    def close_attachments(self) -> None:
        """Close what users attached (a prober's capture points, which reopen on next use): after links were re-created."""
        self.attached.close_all()

    def release_held(self) -> list[str]:
        """Run every release registered with ``on_teardown``, newest first; returns their errors (each is tried)."""
        errors = self.attached.release_all(f"lab {self.tag}")
        self.services = None
        return errors

    # ----------------------------------------------------------------- building blocks (for build and the adapters)

    def hold(self, ns: Netns) -> Netns:
        """Hold a namespace handle: teardown closes it."""
        self.handles.append(ns)
        return ns

    def new_namespace(self, name: str, label: str) -> Netns:
        """A namespace of the lab's own, recorded before it exists."""
        assert self.ledger is not None
        ns = self.hold(self.ledger.create(NetnsEntry(name), lambda: Netns.create(name, label)))
        ns.call(build.ns_defaults, ns, 6 in self.topology.families)
        return ns

    def new_namespaces(self, names: Sequence[tuple[str, str]]) -> list[Netns]:
        """Many namespaces (name, label): all recorded first, then made a few at a time."""
        assert self.ledger is not None
        for name, _label in names:
            self.ledger.record(NetnsEntry(name))
        return Netns.create_many(names, init=functools.partial(build.ns_defaults, ipv6=6 in self.topology.families), created=self.handles.append)

    def link(self, ns: Netns, name: str) -> int | None:
        """Record a link about to be made in ``ns``; returns the link group to make it in (host side only)."""
        assert self.ledger is not None
        self.ledger.record(LinkEntry(ns.name, name))
        group = self.mode.link_group() if ns is self.host else None
        if group is not None:
            self.link_groups[name] = group
        return group

    # ----------------------------------------------------------------- life cycle

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def build(self) -> Lab:
        if self.topology.setup.mode != "build" and isinstance(self.network, build.SpecNetwork):
            raise LabError(f"{self.topology.source}: setup.mode = {self.topology.setup.mode!r} is made by another tool; use netcheck.adapters to run it")
        for attempt in range(5):
            try:
                self.ledger = Ledger(self.tag, topology=self.topology.name, mode=self.mode.name, run_dir=self.run_dir, source=self.topology.source)
                break
            except FileExistsError:
                if self._tag_given or attempt == 4:
                    raise LabError(f"lab tag {self.tag} is taken: {self.run_dir / (self.tag + '.jsonl')} exists (a leftover? try: netcheck clean)") from None
                self.names = KernelNames(new_tag())  # another live lab drew the same tag
        try:
            self.knames.update(self.network.host_names(self))
            build.base(self, self.network)
            self.network.make(self)
            self.services = build.services(self)
        except BaseException:
            self.teardown(force=True)
            raise
        self.built = True
        return self

    def teardown(self, *, force: bool = False) -> None:
        """Release what users attached, remove the namespaces in reverse order, wait for their links."""
        if self.ledger is None:
            return
        if self.keep and not force:
            self._keep_services()
            print("\n" + self.enter_hint(), file=sys.stderr)
            self.ledger.keep()
            self.ledger.close(remove=False)
            self.ledger = None
            return
        teardown.teardown(self)


def has_net_admin() -> bool:
    """True if this process may create namespaces and links (root or CAP_NET_ADMIN + CAP_SYS_ADMIN)."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps & (1 << 12)) and bool(caps & (1 << 21))
    except OSError:
        pass
    return False


__all__ = ["Lab", "LabError", "has_net_admin"]
