"""The lab: a topology realised in the kernel, inside namespaces netcheck creates.

``Lab`` is a context manager, usable from pytest fixtures, scripts and the CLI alike::

    with Lab(spec.builtin("seed1")) as lab:
        lab.container_ns("netns0").links()

Building records every object in the ledger before it exists; teardown closes every
socket and thread held in the namespaces, removes them in reverse order, and waits
(bounded) until their links are gone.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType

from netcheck import spec as S
from netcheck.kernel.netns import Netns, VethSpec
from netcheck.kernel.xtables import BUILTIN_CHAINS, XRule, apply_rules, choose_backend, nft_missing, read_legacy, read_nft_chains
from netcheck.ledger import RUN_DIR, Ledger, Undoer, process_starttime, undo_all
from netcheck.naming import KernelNames, new_tag
from netcheck.probes.capture import CaptureHub, CapturePoints
from netcheck.services import ServiceHost
from netcheck.waiting import WaitTimeout, wait_until

DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")
ECHO_PORT = 7
# The host-side links of a sandbox lab (uplink, bridges, the containers' veths) share a link
# group, so teardown deletes them in one request: the kernel unregisters them in one batch
# and waits for one RCU grace period, where one link at a time costs 15-45 ms each.
LINK_GROUP = 0x6E63
# The wan end of the uplink gets an ifindex of its own: a veth whose ifindex equals its
# peer's (2 and 2 in two new namespaces) has its operstate updated up to a second late.
WAN_UPLINK_INDEX = 0x6E63


class LabError(RuntimeError):
    """Building or tearing down a lab failed; the message names the object and the fix."""


@dataclass(frozen=True)
class Endpoint:
    """Where a container lives in the kernel."""

    container: str
    netns: str  # kernel name under /run/netns
    interface: str  # the container's interface (its own namespace)
    address: IPv4Interface
    host_veth: str  # kernel name of the host-side veth
    bridge: str | None  # kernel name of the bridge, if any


class Lab:
    """One topology, built in sandbox namespaces (host, wan, one per container)."""

    #: True for subclasses that run another tool instead of building the network (netcheck.adapters).
    external = False

    def __init__(self, topology: S.Topology, *, keep: bool = False, tag: str | None = None, run_dir: Path = RUN_DIR, host_mode: bool = False) -> None:
        self.topology = topology
        self.keep = keep
        self.host_mode = host_mode
        self.names = KernelNames(tag or new_tag())
        self._tag_given = tag is not None
        self.run_dir = run_dir
        self.ledger: Ledger | None = None
        self.host: Netns
        self.wan: Netns
        self._containers: dict[str, Netns] = {}
        self._ns: list[Netns] = []
        self.services: ServiceHost | None = None
        self.rules: list[XRule] = []
        self.built = False
        self._kname: dict[str, str] = {}
        self._captures = CapturePoints(self.resolve_point)
        self._grouped: dict[str, int] = {}  # host-side links created in a link group (sandbox only)

    # ----------------------------------------------------------------- names

    @property
    def tag(self) -> str:
        return self.names.tag

    def kname(self, spec_iface: str) -> str:
        """The kernel name of a host-side interface given by its spec name (br0 -> nck7q0b0)."""
        return self._kname[spec_iface]

    def spec_name(self, kernel_iface: str) -> str:
        """The spec name of a host-side kernel interface name (nck7q0b0 -> br0)."""
        for k, v in self._kname.items():
            if v == kernel_iface:
                return k
        return kernel_iface

    def container_ns(self, name: str) -> Netns:
        return self._containers[name]

    def endpoint(self, name: str) -> Endpoint:
        c = self.topology.container(name)
        assert c.address is not None
        return Endpoint(
            container=name,
            netns=self.names.container_ns(name),
            interface=c.interface,
            address=c.address,
            host_veth=self.kname(c.host_veth),
            bridge=self.kname(c.bridge) if c.bridge else None,
        )

    def resolve_point(self, point: str) -> tuple[Netns, str, str]:
        """A capture point such as 'netns0:ceth0', 'host:br0' or 'wan:uplink'
        -> (namespace, kernel interface name, spec interface name)."""
        label, _, iface = point.partition(":")
        if label == "host":
            if iface == "lo":
                return self.host, "lo", "lo"
            if iface not in self._kname:
                raise LabError(f"capture point {point!r}: the host has no interface {iface!r} (it has: {', '.join(self._kname)})")
            return self.host, self._kname[iface], iface
        if label == "wan":
            return self.wan, self.names.wan_uplink if iface in ("uplink", "") else iface, iface or "uplink"
        if label not in self._containers:
            raise LabError(f"capture point {point!r}: no namespace {label!r} (known: host, wan, {', '.join(self._containers)})")
        return self._containers[label], iface or self.topology.container(label).interface, iface

    def capture(self, point: str) -> CaptureHub:
        """The lab's persistent capture socket at ``point``, opened on first use."""
        return self._captures.get(point)

    def release_held(self) -> None:
        """Close what netcheck holds inside the namespaces (captures, services): they would keep them alive."""
        self._captures.close()
        if self.services is not None:
            self.services.close()
            self.services = None

    def point(self, container: str) -> str:
        """The capture point of a container's own interface."""
        return f"{container}:{self.topology.container(container).interface}"

    def namespaces(self) -> dict[str, Netns]:
        """Every namespace of the lab by the label users see: host, wan and the containers."""
        return {"host": self.host, "wan": self.wan, **self._containers}

    def _keep_services(self) -> None:
        """A kept lab keeps its services: a process of their own serves them after this run ends,
        recorded in the ledger by PID, so ``netcheck clean TAG`` ends it before removing the lab."""
        ledger, services = self.ledger, self.services
        if ledger is None or services is None:
            return
        try:
            services.hand_over(lambda pid: ledger.record("process", pid=pid, starttime=process_starttime(pid), argv=[sys.executable, "-m", "netcheck.services"]))
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

    # ----------------------------------------------------------------- build

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def build(self) -> Lab:
        if self.topology.setup.mode != "build" and not self.external:
            raise LabError(f"{self.topology.source}: setup.mode = {self.topology.setup.mode!r} is made by another tool; use netcheck.adapters to run it")
        for attempt in range(5):
            try:
                self.ledger = Ledger(self.tag, topology=self.topology.name, mode="host" if self.host_mode else "sandbox", run_dir=self.run_dir, source=self.topology.source)
                break
            except FileExistsError:
                if self._tag_given or attempt == 4:
                    raise LabError(f"lab tag {self.tag} is taken: {self.run_dir / (self.tag + '.jsonl')} exists (a leftover? try: netcheck clean)") from None
                self.names = KernelNames(new_tag())  # another live lab drew the same tag
        try:
            self._build()
        except BaseException:
            self.teardown(force=True)
            raise
        self.built = True
        return self

    def _new_ns(self, name: str, label: str) -> Netns:
        assert self.ledger is not None
        self.ledger.record("netns", name=name)
        ns = Netns.create(name, label)
        self._ns.append(ns)
        ns.call(_ns_defaults, ns)
        return ns

    def _new_namespaces(self, names: Sequence[tuple[str, str]]) -> list[Netns]:
        """Many namespaces (name, label): all recorded first, then made a few at a time."""
        assert self.ledger is not None
        for name, _label in names:
            self.ledger.record("netns", name=name)
        return Netns.create_many(names, init=_ns_defaults, created=self._ns.append)

    def _link(self, ns: Netns, name: str) -> None:
        assert self.ledger is not None
        self.ledger.record("link", netns=ns.name, name=name)

    def _group(self, host_link: str) -> int | None:
        """The link group a host-side link is created in; None in host mode (a real host's links are never deleted by group)."""
        if self.host_mode:
            return None
        self._grouped[host_link] = LINK_GROUP
        return LINK_GROUP

    def _build(self) -> None:
        """Build in three stages; setups made by other tools replace ``build_network``."""
        self.map_names()
        self.build_base()
        self.build_network()
        self.start_all_services()

    def map_names(self) -> None:
        self._kname.update(self.names.host_interfaces(self.topology))

    def build_base(self) -> None:
        """The host and the outside world: namespaces, uplink, sysctls, the host's default route."""
        t, n = self.topology, self.names
        if self.host_mode:
            # The current namespace is the host under test: its sysctls and FORWARD policy are
            # what is being validated, so they are read, never set.
            self.host = Netns.current("host")
            self._ns.append(self.host)
        else:
            self.host = self._new_ns(n.host_ns, "host")
            for key, value in self.base_sysctls().items():
                self.host.set_sysctl(key, value)
        self.wan = self._new_ns(n.wan_ns, "wan")
        self.wan.set_sysctl("net.ipv4.ip_forward", 0)

        # uplink: host <-> wan, documentation addresses; "remote" addresses live on wan's lo.
        self._link(self.host, n.uplink)
        group = self._group(n.uplink)
        self.wan.add_veths([VethSpec(n.wan_uplink, n.uplink, self.host, up=False, index=WAN_UPLINK_INDEX, peer_group=group)])
        self.host.add_address(n.uplink, t.host.address)
        self.host.set_link(n.uplink, up=True)
        self.wan.add_address(n.wan_uplink, t.wan.address)
        self.wan.set_link(n.wan_uplink, up=True)
        for remote in t.wan.remote:
            self.wan.add_address("lo", IPv4Interface(f"{remote.ip}/32"))
        self.host.wait_links_up([n.uplink])
        self.wan.wait_links_up([n.wan_uplink])
        if self.host_mode:
            # Never take over a real host's default route: route only netcheck's own remote
            # addresses, and the VIPs (a VIP packet that no rule redirects then lands in the
            # outside-world namespace instead of leaving the machine).
            for dst in self.owned_routes():
                assert self.ledger is not None
                self.ledger.record("route", netns=None, dst=str(dst))
                self.host.add_route(dst, t.host.gateway)
        else:
            self.host.add_route(DEFAULT_ROUTE, t.host.gateway)
        for r in t.wan.routes:
            self.wan.add_route(r.to, r.via)

    def base_sysctls(self) -> dict[str, int]:
        """The sandbox host's sysctls before the network is built: ip_forward off, then the spec's."""
        return {"net.ipv4.ip_forward": 0, **dict(self.topology.host.sysctls)}

    def owned_routes(self) -> list[IPv4Network]:
        """In host mode, the destinations the host routes into netcheck's outside world."""
        t = self.topology
        return sorted({r.network for r in t.wan.remote} | {IPv4Network(f"{v.address}/32") for v in t.vips})

    def holds(self, address: IPv4Address) -> bool:
        """Is ``address`` inside the namespaces of this lab (so a probe to it cannot leave the machine)?"""
        t = self.topology
        nets = [t.host.address.network, *self.owned_routes(), IPv4Network("127.0.0.0/8")]
        nets += [b.address.network for b in t.bridges if b.address is not None]
        nets += [c.address.network for c in t.containers if c.address is not None]
        nets += [c.host_address.network for c in t.containers if c.host_address is not None]
        return any(address in n for n in nets)

    def build_network(self) -> None:
        """Bridges, containers, their routes, and the host's iptables rules, as the spec says."""
        t = self.topology
        for b in t.bridges:
            name = self.kname(b.name)
            self._link(self.host, name)
            self.host.add_bridge(name, group=self._group(name))
            if b.address is not None:
                self.host.add_address(name, b.address)
            self.host.set_link(name, up=True)

        self._build_containers(t.containers)

        self.rules = self.expected_rules()
        assert self.ledger is not None
        # The custom chains the rules need (a VIP's), recorded so teardown removes them too; in
        # host mode only those the host does not have already.
        # A real host keeps its own firewall backend: nft unless it already has legacy tables.
        backend = choose_backend(self.host) if self.host_mode else "legacy"
        chains = sorted({(r.table, r.chain) for r in self.rules if r.chain not in BUILTIN_CHAINS.get(r.table, ())})
        existing: set[tuple[str, str]] = set()
        if chains and self.host_mode:
            tables = sorted({c[0] for c in chains})
            held = read_legacy(self.host, tables) if backend == "legacy" else read_nft_chains(self.host)
            existing = {(c.table, c.name) for c in held}
        if backend == "nft":
            # iptables-nft brings base chains (and tables) into being; record those it will add.
            base = sorted({(r.table, r.chain) for r in self.rules if r.chain in BUILTIN_CHAINS.get(r.table, ())})
            new_tables, new_chains = nft_missing(self.host, base)
            for table in new_tables:
                self.ledger.record("nft-table", netns=self.host.name, table=table)
            for table, name in new_chains:
                self.ledger.record("nft-chain", netns=self.host.name, table=table, name=name)
        for table, name in chains:
            if (table, name) not in existing:
                self.ledger.record("chain", netns=self.host.name, table=table, name=name, backend=backend)
        for rule in self.rules:
            self.ledger.record("rule", netns=self.host.name, rule=_asdict(rule), backend=backend)
        policies = [("filter", "FORWARD", t.host.forward_policy)] if t.host.forward_policy != "ACCEPT" and not self.host_mode else []
        if self.rules or policies:
            apply_rules(self.host, self.rules, policies, backend=backend)

    def start_all_services(self) -> None:
        """Every container's services, and echo responders in the outside world."""
        t = self.topology
        self.services = ServiceHost()
        for c in t.containers:
            self.start_services(c.name)
        # The outside world answers too, so a probe can learn the source it saw (masquerade).
        for kind in ("tcp-echo", "udp-echo"):
            self.services.listen(self.wan, "wan", kind, ECHO_PORT)

    def _build_container(self, c: S.Container) -> None:
        self._build_containers([c])

    def _build_containers(self, containers: Sequence[S.Container]) -> None:
        """Containers in batches, not one netlink round trip after another.

        1. their namespaces, made a few at a time (each sets its defaults in its own thread);
        2. every veth pair in one netlink batch from the host, each born up and enslaved to its
           bridge, its peer born in the container;
        3. each container's link up, address and routes, by its own thread, all containers at once;
        4. one bounded wait until every host-side veth is up.
        Every object is recorded before the step that makes it.
        """
        if not containers:
            return
        n = self.names
        spaces = self._new_namespaces([(n.container_ns(c.name), c.name) for c in containers])
        for c, ns in zip(containers, spaces, strict=True):
            self._containers[c.name] = ns

        bridges: dict[str, int | None] = {b: self.host.link_index(self.kname(b)) for b in {c.bridge for c in containers if c.bridge}}
        pairs = []
        for c in containers:
            veth = self.kname(c.host_veth)
            self._link(self.host, veth)
            group = self._group(veth)
            pairs.append(VethSpec(veth, c.interface, self._containers[c.name], master=bridges[c.bridge] if c.bridge else None, group=group, mtu=c.mtu))
        self.host.add_veths(pairs)
        routed = [(self.kname(c.host_veth), c.host_address) for c in containers if c.host_address is not None]
        if routed:
            self.host.configure(addresses=routed)

        jobs = [self._containers[c.name].submit(_configure_container, self._containers[c.name], c) for c in containers]
        errors = [e for e in (job.exception(timeout=60) for job in jobs) if e is not None]
        if errors:
            raise errors[0]
        self.host.wait_links_up([v.name for v in pairs])

    def start_services(self, container: str) -> None:
        """Start the container's declared services plus netcheck's echo responders on port 7."""
        assert self.services is not None
        ns = self._containers[container]
        c = self.topology.container(container)
        for s in (*c.services, S.Service("tcp-echo", ECHO_PORT), S.Service("udp-echo", ECHO_PORT)):
            self.services.listen(ns, container, s.kind, s.port)

    def expected_rules(self) -> list[XRule]:
        """The spec's iptables rules, in kernel names, as the builder installs them."""
        t = self.topology
        k = self.kname
        note = self.names.comment
        rules: list[XRule] = []
        for f in t.forward_accepts:
            rules.append(XRule("filter", "FORWARD", "ACCEPT", in_interface=k(f.in_interface) if f.in_interface else None, out_interface=k(f.out_interface) if f.out_interface else None, comment=note))
        for m in t.masquerades:
            out = k(m.out_interface) if m.out_interface else ("!" + k(m.not_out_interface) if m.not_out_interface else None)
            rules.append(XRule("nat", "POSTROUTING", "MASQUERADE", src=str(m.source) if m.source else None, out_interface=out, comment=note))
        for p in t.publishes:
            c = t.container(p.container)
            assert c.address is not None
            to = f"{c.address.ip}:{p.port}"
            for chain, on in (("PREROUTING", p.from_outside), ("OUTPUT", p.from_host)):
                if on:
                    rules.append(XRule("nat", chain, "DNAT", dst=str(t.host.address.ip), protocol=p.protocol, dport=p.host_port, to_destination=to, comment=note))
        for v in t.vips:
            c = t.container(v.container)
            assert c.address is not None
            rules.append(XRule("nat", v.chain, "DNAT", dst=str(v.address), protocol=v.protocol, dport=v.port, to_destination=f"{c.address.ip}:{v.target_port}", comment=note))
            for chain, on in (("PREROUTING", v.from_outside), ("OUTPUT", v.from_host)):
                if on:
                    rules.append(XRule("nat", chain, v.chain, comment=note))
        return rules

    # ----------------------------------------------------------------- teardown

    def teardown(self, *, force: bool = False) -> None:
        """Close what lives in the namespaces, remove them in reverse order, wait for their links."""
        if self.ledger is None:
            return
        if self.keep and not force:
            self._keep_services()
            print("\n" + self.enter_hint(), file=sys.stderr)
            self.ledger.keep()
            self.ledger.close(remove=False)
            self.ledger = None
            return
        errors: list[str] = []
        self.release_held()
        host = next((ns for ns in self._ns if ns.label == "host"), None)
        # Close every worker but the host's, which watches the host-side links go.
        for ns in reversed(self._ns):
            if ns is not host:
                with contextlib.suppress(Exception):
                    ns.close()
        entries = self.ledger.entries
        undoer = Undoer(handles={host.name: host} if host is not None else {}, host_inode=self.ledger.netns_inode)
        inner = [e for e in entries if not (e["kind"] == "netns" and host is not None and e["name"] == host.name)]
        errors += self._undo_bulk(inner, undoer, host)
        if host is not None:
            gone = {e["name"] for e in entries if e["kind"] == "link" and e.get("netns") == host.name}
            try:
                wait_until(
                    lambda: not gone & {link.name for link in host.links()},
                    timeout=10,
                    what=f"the host-side links of lab {self.tag} to go",
                    describe=lambda: ", ".join(sorted(gone & {link.name for link in host.links()})) + " still present (something still holds their namespace: a socket, a thread or a process)",
                )
            except WaitTimeout as exc:
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"reading the host's links: {exc}")
            with contextlib.suppress(Exception):
                host.close()
            errors += undo_all([e for e in entries if e["kind"] == "netns" and e["name"] == host.name], Undoer())
        undoer.close()
        self.ledger.close(remove=not errors)
        self.ledger = None
        self._ns.clear()
        self._containers.clear()
        if errors:
            raise LabError(f"teardown of lab {self.tag} left: " + "; ".join(errors) + " (try: netcheck clean)")

    def _undo_bulk(self, entries: list[dict[str, object]], undoer: Undoer, host: Netns | None) -> list[str]:
        """``undo_all``, in reverse order, with the lab's link group in the host deleted in one request.

        The entries split into runs: plain runs go to ``undo_all``; the group is deleted when
        its last-recorded run (the containers' veths) comes up, in one RTM_DELLINK, and its
        earlier runs (the uplink and the bridges) are then already gone: they go before the
        container namespaces instead of after, which nothing depends on. If the request
        fails, the group's links are deleted one by one, in order.
        """
        if host is None or not self._grouped:
            return undo_all(entries, undoer)
        owned = {e["name"] for e in entries if e["kind"] == "netns"}
        runs: list[tuple[int | None, list[dict[str, object]]]] = []
        for e in entries:
            group = self._grouped.get(str(e.get("name"))) if e["kind"] == "link" and e.get("netns") == host.name else None
            if runs and runs[-1][0] == group:
                runs[-1][1].append(e)
            else:
                runs.append((group, [e]))
        errors: list[str] = []
        deleted: dict[int, bool] = {}
        for group, run in reversed(runs):
            if group is None:
                # Entries inside a container namespace go with it, as undo_all skips them.
                errors += undo_all([e for e in run if e["kind"] == "netns" or e.get("netns") not in owned], undoer)
                continue
            if group not in deleted:
                try:
                    host.delete_link_group(group)
                    deleted[group] = True
                except Exception as exc:  # noqa: BLE001 - fall back to one link at a time
                    errors.append(f"deleting link group {group} of lab {self.tag}: {exc}")
                    deleted[group] = False
            if not deleted[group]:
                errors += undo_all(run, undoer)
        return errors

def _ns_defaults(ns: Netns) -> None:
    """Explicit defaults for a new namespace (it copies some settings from the root one); in its thread."""
    ns.set_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
    ns.set_sysctl("net.ipv6.conf.default.disable_ipv6", 1)
    ns.configure(up=["lo"])


def _configure_container(ns: Netns, c: S.Container) -> None:
    """A container's address and routes, then a bounded wait for its links; in its namespace's thread."""
    assert c.address is not None
    routes = [(DEFAULT_ROUTE, c.gateway, None)] if c.gateway is not None else []
    routes += [(r.to, r.via, None) for r in c.routes]
    ns.configure(up=[c.interface], addresses=[(c.interface, c.address)], routes=routes)
    ns.wait_links_up([c.interface, "lo"])


def _asdict(rule: XRule) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(rule)


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


__all__ = ["Endpoint", "Lab", "LabError", "has_net_admin", "IPv4Address"]
