"""``netcheck doctor``: inspect a live lab, or namespaces named on the command line, and say what is wrong.

By default nothing is sent: the doctor reads the kernel state of every namespace and runs the
rule set against the flows the topology promises (each container to the outside world, to its
neighbours, the published ports and VIPs). ``--probe`` also sends ICMP probes inside those
namespaces and diagnoses each one that fails, with the trace.

    netcheck doctor nck7q0                      # a lab by its tag (see: netcheck clean --dry-run --all)
    netcheck doctor --host-netns H c1 c2        # namespaces another tool made: H plays the host
    netcheck doctor --topology my.toml H...     # ... checked against what a spec says they should be
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, TypeVar, cast

from netcheck import spec as host_spec
from netcheck.diagnose import dns as dns_rules
from netcheck.diagnose import recording, rules, state
from netcheck.diagnose.path import Flow, LabView, expected_route
from netcheck.evidence import Finding, ProbeResult
from netcheck.kernel.dropwatch import Witness
from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import NamespaceError, netns_path
from netcheck.lab import plan
from netcheck.lab.attachments import Attachments

if TYPE_CHECKING:
    from netcheck.lab import Lab
    from netcheck.services import ServiceHost

NO_ADDRESS = IPv4Interface("0.0.0.0/32")

T = TypeVar("T")


class DoctorError(RuntimeError):
    """The doctor cannot inspect what it was pointed at; the message says why and what to do."""


@dataclass(eq=False)
class LiveLab:
    """A view of namespaces that exist already (a kept or running lab, or another tool's), for the diagnosis.

    It offers what ``diagnose`` and the prober need of a ``Lab``, and closes the threads it
    parked in the namespaces when done, so it never keeps them alive.
    """

    topology: host_spec.Topology
    host: Netns
    wan: Netns | None
    containers: dict[str, Netns]
    knames: dict[str, str] = field(default_factory=dict)  # spec name -> kernel name (host side)
    title: str = ""
    services: ServiceHost | None = None  # netcheck serves nothing in namespaces it only looks at
    witness: Witness | None = None  # the kernel's drops in these namespaces, when a watch runs
    attached: Attachments = field(default_factory=Attachments, init=False)

    def attachment(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T:
        """What a user opens in these namespaces (the prober's capture points), released at ``close``."""
        return self.attached.get(key, make, release)

    def namespaces(self) -> dict[str, Netns]:
        out = {"host": self.host}
        if self.wan is not None:
            out["wan"] = self.wan
        out.update(self.containers)
        return out

    def container_ns(self, name: str) -> Netns:
        return self.containers[name]

    def kname(self, spec_iface: str) -> str:
        return self.knames[spec_iface]

    def spec_name(self, kernel_iface: str) -> str:
        return next((k for k, v in self.knames.items() if v == kernel_iface), kernel_iface)

    def resolve_point(self, point: str) -> tuple[Netns, str, str]:
        label, _, iface = point.partition(":")
        if label == "host":
            if iface == "lo":
                return self.host, "lo", "lo"
            return self.host, self.knames[iface], iface
        if label == "wan":
            if self.wan is None:
                raise KeyError("no outside world namespace")
            veth = next((link.name for link in self.wan.links() if link.kind == "veth"), None)
            if veth is None:
                raise KeyError("the outside world has no uplink")
            return self.wan, veth, "uplink"
        ns = self.containers[label]
        return ns, iface or self.topology.container(label).interface, iface

    def point(self, container: str) -> str:
        return f"{container}:{self.topology.container(container).interface}"

    def close(self) -> None:
        errors = self.attached.release_all(self.title or "the namespaces looked at")
        for ns in self.namespaces().values():
            with contextlib.suppress(Exception):
                ns.close()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> LiveLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- opening


def _attach(name: str, label: str) -> Netns:
    path = netns_path(name)
    if not os.path.exists(path):
        raise DoctorError(f"no namespace {name!r} at {path} (list them with: ip netns list)")
    try:
        return Netns.attach(path, label)
    except NamespaceError as exc:
        raise DoctorError(f"cannot enter namespace {name}: {exc}") from None


@contextlib.contextmanager
def _closed_on_error() -> Iterator[list[Netns]]:
    """Collects the namespaces a function opens; if it fails, their threads are closed again."""
    opened: list[Netns] = []
    try:
        yield opened
    except BaseException:
        for ns in opened:
            with contextlib.suppress(Exception):
                ns.close()
        raise


def open_tag(tag: str, intent: host_spec.Topology | None = None) -> LiveLab:
    """The lab of a run record (/run/netcheck/TAG.jsonl), live or kept; ``intent`` replaces its spec."""
    from netcheck.ledger import NetnsEntry, default_run_dir, list_records
    from netcheck.naming import KernelNames

    record = next((r for r in list_records() if r.tag == tag), None)
    if record is None:
        raise DoctorError(f"no run record for lab {tag!r} in {default_run_dir()} (labs: {', '.join(r.tag for r in list_records()) or 'none'}; keep one up with --netcheck-keep)")
    names = [e.name for e in record.entries if isinstance(e, NetnsEntry)]
    names = [n for n in names if os.path.exists(netns_path(n))]
    kn = KernelNames(tag)
    topo = intent or _spec_for(record.header)
    with _closed_on_error() as opened:
        host = Netns.current("host") if record.header.get("mode") == "host" else _attach(kn.host_ns, "host")
        opened.append(host)
        wan = _attach(kn.wan_ns, "wan") if kn.wan_ns in names else None
        if wan is not None:
            opened.append(wan)
        prefix = f"{tag}-"
        containers = {}
        for n in names:
            label = n[len(prefix):] if n.startswith(prefix) else n
            if n in (kn.host_ns, kn.wan_ns) or (topo is not None and label not in {c.name for c in topo.containers}):
                continue
            containers[label] = _attach(n, label)
            opened.append(containers[label])
        if topo is not None:
            knames = kn.host_interfaces(topo)
            return LiveLab(topo, host, wan, containers, knames, title=f"lab {tag} (topology {topo.name}, {'live' if record.alive else 'kept, its run has ended'})")
        topo, knames = discover(host, containers, wan)
        return LiveLab(topo, host, wan, containers, knames, title=f"lab {tag} (topology {record.header.get('topology', '?')}: spec not found, discovered from the kernel)")


def _spec_for(header: dict[str, object]) -> host_spec.Topology | None:
    for key in ("spec", "source"):
        ref = header.get(key)
        if isinstance(ref, str) and os.path.exists(ref):
            with contextlib.suppress(host_spec.SpecError):
                return host_spec.load(ref)
    name = header.get("topology")
    if isinstance(name, str) and (name in host_spec.BUILTIN or name in host_spec.BUILTIN_DUAL):
        return host_spec.builtin(name)
    return None


def open_namespaces(names: list[str], host_netns: str | None, intent: host_spec.Topology | None = None) -> LiveLab:
    """Namespaces named on the command line; ``host_netns`` plays the host (default: this namespace).

    Without ``intent`` the topology is discovered, so only faults that need no intent show.
    With it, the lab is checked against what the spec says (sysctls, forwarding, NAT, published
    ports): ``CONTAINER=NETNS`` names a spec container's namespace; a bare NETNS is the container
    of that name, or the one whose ``netns`` is that namespace.
    """
    pairs = [(n.partition("=")[0], n.partition("=")[2]) if "=" in n else (n, n) for n in names]
    with _closed_on_error() as opened:
        host = _attach(host_netns, "host") if host_netns else Netns.current("host")
        opened.append(host)
        containers = {}
        for label, n in pairs:
            containers[label] = _attach(n, label)
            opened.append(containers[label])
        topo, knames = discover(host, containers, None)
        where = f"host netns {host_netns}" if host_netns else "this namespace as the host"
        shown = ", ".join(n for _label, n in pairs)
        if intent is not None:
            topo, containers, knames = _as_intended(intent, topo, containers, knames, dict(pairs))
            return LiveLab(topo, host, None, containers, knames, title=f"namespaces {shown} ({where}; checked against {intent.source})")
        return LiveLab(topo, host, None, containers, knames, title=f"namespaces {shown} ({where}; topology discovered from the kernel)")


def _as_intended(intent: host_spec.Topology, found: host_spec.Topology, opened: dict[str, Netns], knames: dict[str, str],
                 netns_of: dict[str, str]) -> tuple[host_spec.Topology, dict[str, Netns], dict[str, str]]:
    """The intent's containers matched to the opened namespaces (by label, or by the spec's netns
    path), and its host-side interface names mapped to what the kernel has."""
    by_path = {netns_path(n): label for label, n in netns_of.items()}
    label_of = {c.name: c.name if c.name in opened else by_path.get(c.netns or "") for c in intent.containers}
    spare = sorted(set(opened) - {x for x in label_of.values() if x})
    if spare:
        raise DoctorError(f"{intent.source}: namespace(s) {', '.join(netns_of[s] for s in spare)} match no container of the spec "
                          f"(containers: {', '.join(label_of)}); name them as CONTAINER=NETNS")
    seen = {c.name: c for c in found.containers}
    names = {intent.host.uplink: found.host.uplink} if found.host.uplink else {}
    containers: list[host_spec.Container] = []
    ns: dict[str, Netns] = {}
    for c in intent.containers:
        label = label_of[c.name]
        if label is None or label not in seen:
            continue  # a container of the spec whose namespace was not named: not inspected
        d = seen[label]
        names[c.host_veth] = d.host_veth
        if c.bridge and d.bridge:
            names[c.bridge] = d.bridge
        containers.append(c if c.address is not None else dataclasses.replace(c, address=d.address))
        ns[c.name] = opened[label]
    return dataclasses.replace(intent, containers=tuple(containers)), ns, {**knames, **names}


def discover(host: Netns, containers: dict[str, Netns], wan: Netns | None) -> tuple[host_spec.Topology, dict[str, str]]:
    """A topology read from the kernel: each container's veth, address, gateway and bridge.

    Nothing is expected of it beyond what exists (no masquerade, no published port), so the
    doctor checks it for faults that need no intent: links down, conflicts, drops, routes.
    """
    links = host.links()
    by_index = {link.index: link for link in links}
    host_addrs = host.addresses()
    default = next((r for r in host.routes() if r.dst.prefixlen == 0), None)
    uplink = default.interface if default is not None and default.interface else ""
    up_addr = next((a.address for a in host_addrs if a.interface == uplink and isinstance(a.address, IPv4Interface)), NO_ADDRESS)
    bridges: dict[str, host_spec.Bridge] = {}
    made: list[host_spec.Container] = []
    for label, ns in containers.items():
        inner = next((link for link in ns.links() if link.kind == "veth"), None)
        if inner is None:
            continue
        outer = next((link for link in links if link.kind == "veth" and link.index == inner.peer_index and link.peer_index == inner.index), None)
        addr = next((a.address for a in ns.addresses() if a.interface == inner.name and isinstance(a.address, IPv4Interface)), None)
        gw = next((r.gateway for r in ns.routes() if r.dst.prefixlen == 0 and isinstance(r.gateway, IPv4Address)), None)
        master = by_index.get(outer.master) if outer is not None and outer.master else None
        bridge = master.name if master is not None and master.kind == "bridge" else None
        if bridge is not None and bridge not in bridges:
            bridges[bridge] = host_spec.Bridge(bridge, next((a.address for a in host_addrs if a.interface == bridge and isinstance(a.address, IPv4Interface)), None))
        made.append(host_spec.Container(label, inner.name, addr, outer.name if outer is not None else "", bridge=bridge, gateway=gw))
    remote: tuple[IPv4Interface, ...] = ()
    if wan is not None:
        remote = tuple(IPv4Interface(f"{a.address.ip}/32") for a in wan.addresses() if a.interface == "lo" and not a.address.ip.is_loopback)
    topo = host_spec.Topology(
        name="discovered", summary="read from the kernel", source="<discovered>",
        host=host_spec.Host(uplink, up_addr, default.gateway if default is not None and isinstance(default.gateway, IPv4Address) else IPv4Address("0.0.0.0"), ()),
        wan=host_spec.Wan(NO_ADDRESS, remote), bridges=tuple(bridges.values()), containers=tuple(made),
    )
    knames = {name: name for name in [uplink, *bridges, *(c.host_veth for c in made)] if name}
    return topo, knames


# ----------------------------------------------------------------------------- inspecting


def expected_flows(view: LabView) -> Iterator[Flow]:
    """The ICMP flows the topology promises (netcheck.lab.plan.reaches), as the suites would probe them."""
    for r in plan.reaches(view.topology):
        yield Flow(kind="icmp", proto="icmp", source=r.source, src_addr=r.src_addr, dst_addr=r.dst_addr, dport=None, expected="reach",
                   target=r.target, target_addr=r.target_addr, target_port=None, via=r.via)


def inspect(view: LabView, *, flows: bool = True) -> list[Finding]:
    """Every finding about a live lab, without sending anything: static rules, then each promised flow."""
    namespaces = view.namespaces()
    snap = state.snapshot(namespaces)
    routed = []
    for f in expected_flows(view) if flows else ():
        with contextlib.suppress(Exception):
            routed.append((f, expected_route(view, f)))
    known = recording.facts(view, snap, [r for _f, r in routed])  # what the rules ask of the lab, asked once
    found = rules.evaluate(recording.evidence(known, snap, namespaces), dns_rules.RULES)
    for f, r in routed:
        with contextlib.suppress(Exception):
            found += rules.evaluate(recording.evidence(known, snap, namespaces, f, r), dns_rules.RULES)
    best: dict[tuple[str, str], Finding] = {}
    for x in found:
        key = (x.cause, x.fix)  # one fix, one finding: the same cause seen from several flows
        if key not in best or best[key].score < x.score:
            best[key] = x
    return sorted(best.values(), key=lambda x: -x.score)


def probe_all(view: LiveLab) -> list[ProbeResult]:
    """ICMP probes of the promised flows (inside the lab's namespaces), each failure diagnosed."""
    from netcheck.diagnosing import DiagnosingProber

    lab = cast("Lab", view)
    prober = DiagnosingProber(lab)
    results = []
    for f in expected_flows(view):
        results.append(prober.icmp(f.source, f.dst_addr, target=f.target))
    return results


def _facts(view: LabView) -> list[str]:
    out = ["namespaces: " + ", ".join(f"{label}={ns.name or '(this one)'}" for label, ns in view.namespaces().items())]
    rs, tables, errors = state.read_rules(view.host)
    counts = []
    for backend in ("legacy", "nft"):
        n = sum(len(ch.rules) for (b, _t, _c), ch in rs.chains.items() if b == backend)
        counts.append(f"{'legacy (iptables-legacy)' if backend == 'legacy' else 'nf_tables'}: {n} rule(s)")
    out.append("host firewall: " + "; ".join(counts) + (f" (legacy tables: {', '.join(tables)})" if tables else ""))
    out += [f"could not read: {e}" for e in errors]
    return out


def run_doctor(args: argparse.Namespace) -> int:
    """The ``netcheck doctor`` subcommand. Exit status: 0 nothing found, 1 findings, 2 cannot inspect."""
    targets: list[str] = list(args.targets or [])
    host_netns: str | None = getattr(args, "host_netns", None)
    as_json: bool = getattr(args, "json", False)
    try:
        intent = _load_intent(getattr(args, "topology", None))
        if len(targets) == 1 and not host_netns and not os.path.exists(netns_path(targets[0])):
            view = open_tag(targets[0], intent)
        elif targets or host_netns:
            view = open_namespaces(targets, host_netns, intent)
        else:
            from netcheck.ledger import list_records

            tags = [r.tag for r in list_records()]
            raise DoctorError("name a lab tag or namespaces: netcheck doctor TAG, or netcheck doctor --host-netns HOST NETNS... " + (f"(labs: {', '.join(tags)})" if tags else "(no lab is up; "
                "keep one with --netcheck-keep)"))
    except DoctorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        with view:
            return _doctor_json(view, probe=args.probe)
    with view:
        print(f"netcheck doctor: {view.title}")
        for line in _facts(view):
            print(f"  {line}")
        findings = inspect(view)
        if findings:
            print("findings (most likely cause first):")
            for i, f in enumerate(findings, 1):
                print(f"  {i}. [{f.cause}] {f.summary}")
                print(f"     fix: {f.fix}")
                for e in f.evidence:
                    print(f"     evidence: {e}")
        else:
            print("no problem found in the kernel state")
        failed = 0
        if args.probe:
            results = probe_all(view)
            failed = sum(1 for r in results if not r.passed)
            print(f"probes: {len(results) - failed} of {len(results)} went as expected")
            for r in results:
                if not r.passed:
                    print()
                    print(r.explain())
        else:
            print("no traffic was sent (add --probe to send ICMP probes inside these namespaces and trace each failure)")
    return 1 if findings or failed else 0


def _load_intent(ref: str | None) -> host_spec.Topology | None:
    if ref is None:
        return None
    try:
        return host_spec.resolve(ref)
    except host_spec.SpecError as exc:
        raise DoctorError(f"--topology: {exc}") from None


def _doctor_json(view: LiveLab, *, probe: bool) -> int:
    """``netcheck doctor --json``: the same findings (and probes), as one JSON object on stdout."""
    findings = inspect(view)
    results = probe_all(view) if probe else []
    data = {
        "title": view.title, "facts": _facts(view), "findings": [dataclasses.asdict(f) for f in findings],
        "traffic_sent": probe, "probes": [r.to_dict() for r in results],
    }
    print(json.dumps(data, indent=2, default=str))
    return 1 if findings or any(not r.passed for r in results) else 0


__all__ = ["DoctorError", "LiveLab", "discover", "expected_flows", "inspect", "open_namespaces", "open_tag", "probe_all", "run_doctor"]
