"""Lifecycle events: do something to a working host, then check again.

``--netcheck-event NAME`` (repeatable) runs every check that uses ``netcheck_lab`` once per phase:
``before``, then after each event in turn (the events add up: ``nft-flush`` then
``podman-network-reload`` checks whether Podman's reload repairs the flush). Each event acts in the
lab's host namespace only, never the machine's own. The terminal shows each check's outcome per
phase, and each test report carries its phase (``netcheck.phase``) for the report.

The tool's rules are read (a signature: tables, each chain's rule count and policy) when its setup
is discovered and before the first event; netcheck.diagnose.lifecycle names what an event removed,
which tool's rules they were, and the tool's command that writes them again.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netcheck.faults import LONG_LIVED_UDP_PORT  # the suites' long-lived UDP client port (its stale entries are this module's matter)
from netcheck.kernel.jsontypes import JSON, JSONObject
from netcheck.kernel.xtables import nft_chains, read_nft

if TYPE_CHECKING:
    import pytest

    from netcheck.kernel.netns import Netns
    from netcheck.lab import Lab

FIREWALLD_TABLE = ("inet", "firewalld")  # the table a firewalld (nftables backend) reload rewrites; it keeps no other
# A saved ruleset of an administrator's, without any tool's rules: what `iptables-restore < /etc/iptables/rules.v4` loads.
SAVED_RULESET = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""
# The saved ruleset an iptables service loads after the `iptables` alternative was switched (netfilter-persistent's
# rules.v4 of a host hardened by hand): FORWARD DROP, the tool's accepts being in the other backend.
HARDENED_RULESET = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""
LINK_WAIT = 10.0


class EventFailed(RuntimeError):
    """An event could not be applied (its command failed); the message quotes it."""


class NotApplicable(EventFailed):
    """The event belongs to a tool this lab was not made with (e.g. docker-restart on a CNI lab)."""


# ----------------------------------------------------------------------------- what the tool wrote


@dataclass(frozen=True)
class ChainMark:
    rules: int
    policy: str | None


Signature = dict[tuple[str, str], dict[str, ChainMark]]  # (family, table) -> chain -> its rule count and policy


def signature(ns: Netns) -> Signature:
    """The namespace's nf_tables tables, and each chain's rule count and policy (every family)."""
    ruleset = read_nft(ns)
    out: Signature = {}
    for item in ruleset.get("nftables", []):
        if isinstance(item, dict) and "table" in item:
            out.setdefault((item["table"]["family"], item["table"]["name"]), {})
    for c in nft_chains(ruleset):
        out.setdefault((c.family, c.table), {})[c.name] = ChainMark(len(c.rules), c.policy)
    for item in ruleset.get("nftables", []):  # chains of families nft_chains does not summarise (bridge, ip6, arp)
        ch = item.get("chain") if isinstance(item, dict) else None
        if ch and ch["family"] not in ("ip", "inet"):
            out.setdefault((ch["family"], ch["table"]), {}).setdefault(ch["name"], ChainMark(0, ch.get("policy")))
    return out


def lost(before: Signature, after: Signature) -> list[str]:
    """What ``after`` lacks of ``before``: tables gone, chains gone or emptied, policies changed."""
    out: list[str] = []
    for (family, table), chains in sorted(before.items()):
        now = after.get((family, table))
        if now is None:
            out.append(f"table {family} {table} is gone ({_count(len(chains), 'chain')}, {_count(sum(m.rules for m in chains.values()), 'rule')})")
            continue
        for name, mark in sorted(chains.items()):
            got = now.get(name)
            if got is None:
                out.append(f"chain {family} {table} {name} is gone ({_count(mark.rules, 'rule')})")
            elif mark.rules and not got.rules:
                out.append(f"chain {family} {table} {name} is empty (it had {_count(mark.rules, 'rule')})")
            elif mark.policy != got.policy:
                out.append(f"chain {family} {table} {name}: policy {mark.policy} became {got.policy}")
    return out


def tool_of(lab: object) -> str:
    declared = getattr(lab, "declared", None)
    return declared.setup.mode if declared is not None else "netcheck"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- the events


@dataclass(frozen=True)
class Event:
    name: str
    summary: str
    apply: Callable[[Lab], str]  # does it in the lab's host namespace; returns what it did, as a line
    tools: tuple[str, ...] = ()  # the setup modes it applies to (empty: every lab)
    rediscover: bool = True  # another tool's lab is discovered again afterwards (not when the event leaves it undiscoverable: ports detached)
    relinks: bool = False  # it deletes and re-creates links: what was attached to the old ones is closed


def _run(ns: Netns, argv: Sequence[str], *, input: bytes | None = None) -> str:
    proc = ns.run(list(argv), timeout=60, input=input)
    if proc.returncode != 0:
        raise EventFailed(f"{' '.join(argv)} (in netns {ns.name}) failed: {(proc.stdout + proc.stderr).decode(errors='replace').strip()[-800:]}")
    return " ".join(argv)


def nft_flush(lab: Lab) -> str:
    return _run(lab.host, ["nft", "flush", "ruleset"])


def firewall_reload(lab: Lab) -> str:
    """firewalld's reload (nftables backend, FlushAllOnReload): every table but its own is deleted, its own written again."""
    ruleset = read_nft(lab.host)
    own = [i for i in ruleset.get("nftables", []) if isinstance(i, dict) and _table_of(i) == FIREWALLD_TABLE]
    _run(lab.host, ["nft", "flush", "ruleset"])
    if own:
        _run(lab.host, ["nft", "-j", "-f", "-"], input=json.dumps({"nftables": [_without_handles(i) for i in own]}).encode())
        return "nft flush ruleset; table inet firewalld written again (firewall-cmd --reload)"
    return "nft flush ruleset (firewall-cmd --reload; no firewalld table to write again)"


def iptables_restore(lab: Lab) -> str:
    """``iptables-restore`` (Debian's: iptables-nft) of a saved ruleset that lacks the tool's rules: ip filter and ip nat replaced."""
    _run(lab.host, ["iptables-nft-restore"], input=SAVED_RULESET.encode())
    return "iptables-nft-restore < a saved ruleset with no tool's rules (filter and nat, policies ACCEPT)"


def podman_network_reload(lab: Lab) -> str:
    adapter = getattr(lab, "adapter", None)
    assert adapter is not None
    adapter.network_reload(lab)
    return "podman network reload --all"


def docker_restart(lab: Lab) -> str:
    adapter = getattr(lab, "adapter", None)
    assert adapter is not None
    adapter.restart_daemon(lab)
    return "dockerd stopped (SIGTERM) and started again, with live-restore (its containers keep running)"


def link_flap(lab: Lab) -> str:
    """The uplink set down and up again (``ip link set dev UPLINK down; ... up``): the kernel drops the routes through it."""
    up = lab.names.uplink
    lab.host.set_link(up, up=False)
    lab.host.set_link(up, up=True)
    lab.host.wait_links_up([up], timeout=LINK_WAIT)
    return f"ip link set {up} down; ip link set {up} up"


def rules_backend(ns: Netns) -> str:
    """The iptables backend the host's tools write with: nft when iptables-nft's ``ip filter`` or ``ip nat`` exists, else
    legacy when the namespace has legacy tables, else nft (Debian's `iptables`). (xtables.choose_backend picks legacy as
    soon as any legacy table exists, for netcheck's own rules; an event acts where the tools' rules are.)"""
    from netcheck.kernel.inspect import legacy_tables

    if {("ip", "filter"), ("ip", "nat")} & _tables(ns):
        return "nft"
    return "legacy" if legacy_tables(ns) else "nft"


def _tables(ns: Netns) -> set[tuple[str, str]]:
    return {(str(i["table"]["family"]), str(i["table"]["name"])) for i in read_nft(ns).get("nftables", []) if isinstance(i, dict) and "table" in i}


def _iptables(lab: Lab, backend: str, args: Sequence[str], *, restore: bool = False, input: bytes | None = None) -> str:
    """Run iptables (or iptables-restore) of ``backend`` in the host; an nf_tables table it brings into being is recorded first."""
    from netcheck.ledger import NftTableEntry

    binary = f"iptables-{backend}{'-restore' if restore else ''}"
    argv = [binary, *(["-w"] if backend == "legacy" else []), *args]
    if backend == "nft" and lab.ledger is not None:
        have = _tables(lab.host)
        for table in ("filter", "nat") if restore else ("filter",):
            if ("ip", table) not in have:
                lab.ledger.record(NftTableEntry(lab.host.name, table))  # removed at teardown only if empty
    return _run(lab.host, argv, input=input)


def iptables_flush(lab: Lab) -> str:
    """``iptables -F``: every chain of the filter table emptied, through the backend the host's rules are in (policies stay)."""
    return _iptables(lab, rules_backend(lab.host), ["-F"]) + "  (iptables -F)"


def forward_policy_drop(lab: Lab) -> str:
    """``iptables -P FORWARD DROP`` by another daemon (a Docker started later, a firewall script), through the host's backend."""
    return _iptables(lab, rules_backend(lab.host), ["-P", "FORWARD", "DROP"]) + "  (iptables -P FORWARD DROP, by another daemon)"


def iptables_alternative_switch(lab: Lab) -> str:
    """The `iptables` alternative switched to the other backend, and the iptables service loads the saved rules.v4
    (FORWARD DROP) through it: the tool's rules stay in one backend, the administrator's land in the other (split brain)."""
    now = rules_backend(lab.host)
    other = "legacy" if now == "nft" else "nft"
    did = _iptables(lab, other, [], restore=True, input=HARDENED_RULESET.encode())
    return f"(as after update-alternatives --set iptables /usr/sbin/iptables-{other}) {did} < rules.v4 (FORWARD DROP): the tool's rules are in {now}, these in {other}"


def ip_forward_reset(lab: Lab) -> str:
    """A network manager (re)applies its sysctl defaults: ``net.ipv4.ip_forward = 0`` in the host."""
    lab.host.set_sysctl("net.ipv4.ip_forward", 0)
    return "sysctl -w net.ipv4.ip_forward=0  (a network manager's defaults, applied again)"


def bridge_recreate(lab: Lab) -> str:
    """The containers' bridge deleted and made again with its addresses (a network manager's profile), its ports left
    detached: the kernel detaches every port when a bridge goes, and nothing attaches them again."""
    from netcheck.ledger import LinkEntry

    spec_bridge = next((b.name for b in lab.topology.bridges), None)
    if spec_bridge is None:
        raise NotApplicable(f"{lab.topology.name} has no bridge")
    name = lab.kname(spec_bridge)
    held = [a.address for a in (*lab.host.addresses(), *lab.host.addresses(socket.AF_INET6)) if a.interface == name and not (a.address.version == 6 and a.address.is_link_local)]
    if not lab.host.delete_link(name):
        raise EventFailed(f"{lab.topology.name}: the host has no bridge {name}")
    if lab.ledger is not None:
        lab.ledger.record(LinkEntry(lab.host.name, name))
    lab.host.add_bridge(name, group=lab.link_groups.get(name))  # in the lab's link group, if it was: teardown deletes the group at once
    lab.host.configure(up=[name], addresses=[(name, a) for a in held])  # no port: it stays without carrier
    return f"ip link del {name}; ip link add {name} type bridge; " + "; ".join(f"ip addr add {a} dev {name}" for a in held) + f"; ip link set {name} up (its ports not attached again)"


def container_new_address(lab: Lab) -> str:
    """The published container restarted with a new address, as its tool hands one out.

    Real tools write the container's rules again for the new address (Docker and netavark write a container's
    port rules at its start, CNI's portmap at each ADD), so the DNAT follows it; what they may leave is conntrack's
    entries for the old address. CNI: netcheck plays the runtime, DEL then ADD of the container's plugins (host-local
    hands out the next address). Docker and Podman: the tool restarts it (Docker's old address taken meanwhile by
    another container, Podman's IPAM moves on by itself) and its new namespace is adopted (netcheck.adapters).
    netcheck's own lab: its address moved to the next free one of its network, and the lab's rules that name it
    written again for the new one (as a tool would); the lab's topology follows."""
    mode = tool_of(lab)
    name = next((p.container for p in lab.topology.publishes), lab.topology.containers[0].name)
    if mode == "cni":
        adapter = getattr(lab, "adapter", None)
        assert adapter is not None
        old = lab.topology.container(name).address
        adapter.restart_container(lab, name)
        return f"CNI DEL then ADD of {name} (its runtime restarted it; it had {old})"
    if mode in ("docker", "podman"):
        adapter = getattr(lab, "adapter", None)
        assert adapter is not None
        if lab.mode.name == "host":
            raise NotApplicable(f"container-new-address restarts a container; on a real host netcheck leaves the {mode} containers alone")
        did: str = adapter.restart_container(lab, name)
        return did
    if mode != "netcheck":
        raise NotApplicable(f"container-new-address is built for netcheck's own labs, CNI, Docker and Podman; not for a {mode} setup")
    return _move_container(lab, name)


def _move_container(lab: Lab, name: str) -> str:
    from dataclasses import replace
    from ipaddress import IPv4Interface

    from netcheck.faults import rewrite_rule  # the lab's rules edited where its builder wrote them, as the faults do

    t = lab.topology
    c = t.container(name)
    if c.address is None or c.gateway is None:
        raise NotApplicable(f"{t.name}: container {name} has no IPv4 address and gateway of its own")
    taken = {x.address.ip for x in t.containers if x.address} | {b.address.ip for b in t.bridges if b.address}
    new_ip = next(ip for ip in c.address.network.hosts() if ip > c.address.ip and ip not in taken)
    new = IPv4Interface(f"{new_ip}/{c.address.network.prefixlen}")
    old_ip = str(c.address.ip)
    ns = lab.container_ns(name)
    ns.deconfigure(addresses=[(c.interface, c.address)])
    ns.configure(addresses=[(c.interface, new)])
    _run(ns, ["ip", "route", "replace", "default", "via", str(c.gateway), "dev", c.interface])

    def moved(value: str | None) -> str | None:
        if value is None:
            return None
        head, sep, tail = value.partition("/") if "/" in value else value.partition(":")
        return f"{new_ip}{sep}{tail}" if head == old_ip else value

    rewritten = []
    for r in list(lab.rules):
        again = replace(r, src=moved(r.src), dst=moved(r.dst), to_destination=moved(r.to_destination))
        if again == r:
            continue
        rewrite_rule(lab, r, again)
        rewritten.append(again)
    lab.topology = replace(t, containers=tuple(replace(x, address=new) if x.name == name else x for x in t.containers))
    return f"{name} restarted with {new} (it had {c.address}); the lab's {len(rewritten)} rule(s) naming it written again for {new_ip}"


def _table_of(item: Mapping[str, JSON]) -> tuple[str, str] | None:
    for kind, body in item.items():
        if kind in ("table", "chain", "rule", "set", "map", "flowtable", "counter", "quota", "ct helper", "limit") and isinstance(body, dict):
            return str(body.get("family")), str(body.get("table") if kind != "table" else body.get("name"))
    return None


def _without_handles(item: Mapping[str, JSON]) -> JSONObject:
    kind, body = next(iter(item.items()))
    return {"add": {kind: {k: v for k, v in body.items() if k != "handle"} if isinstance(body, dict) else body}}


EVENTS: dict[str, Event] = {e.name: e for e in [
    Event("nft-flush", "`nft flush ruleset` (an nftables.conf that begins with it, reloaded): every table of every tool is gone", nft_flush),
    Event("firewall-reload", "a firewalld reload (nftables backend): every table but `inet firewalld` is deleted and firewalld's own written again", firewall_reload),
    Event("iptables-restore", "`iptables-restore` of a saved ruleset that lacks the tool's rules: iptables-nft's ip filter and ip nat are replaced", iptables_restore),
    Event("iptables-flush", "`iptables -F` through the host's backend: the filter table's chains emptied, policies kept", iptables_flush),
    Event("forward-policy-drop", "`iptables -P FORWARD DROP` by another daemon, through the host's backend", forward_policy_drop),
    Event("iptables-alternative-switch", "the `iptables` alternative switched (nft <-> legacy) and the saved rules.v4 (FORWARD DROP) loaded through it: rules in both backends",
          iptables_alternative_switch),
    Event("ip-forward-reset", "a network manager sets `net.ipv4.ip_forward = 0` again in the host", ip_forward_reset),
    Event("bridge-recreate", "the containers' bridge deleted and made again with its addresses, its ports left detached", bridge_recreate, rediscover=False, relinks=True),
    Event("container-new-address", "the published container restarted with a new address; its tool writes its rules again (conntrack keeps the old entries)",
          container_new_address),
    Event("podman-network-reload", "`podman network reload --all`: netavark writes the running containers' rules again", podman_network_reload, ("podman",)),
    Event("docker-restart", "the Docker daemon restarted (live-restore: the containers keep running)", docker_restart, ("docker",)),
    Event("link-flap", "the host's uplink set down and up (a network manager's restart): the routes through it are dropped", link_flap),
]}


# ----------------------------------------------------------------------------- what happened to one lab


@dataclass(frozen=True)
class EventRun:
    """One event applied to a lab: what was done, and the tool's rules it took away."""

    event: str
    did: str
    lost: tuple[str, ...]


@dataclass
class LabEvents:
    """The events applied to one lab so far, and the rules before the first."""

    baseline: Signature
    runs: list[EventRun] = field(default_factory=list)


def apply(lab: Lab, name: str) -> EventRun:
    """Apply one event to the lab (its host namespace only) and record it on the lab."""
    event = EVENTS[name]
    mode = tool_of(lab)
    if event.tools and mode not in event.tools:
        raise NotApplicable(f"the event {name} acts on {', '.join(event.tools)} setups; {lab.topology.name} is a {mode} setup")
    record = events_of(lab)
    if record is None:
        record = LabEvents(baseline(lab))
        lab.lifecycle = record  # type: ignore[attr-defined]
    before = signature(lab.host)
    did = event.apply(lab)
    rediscover = getattr(lab, "rediscover", None)  # another tool's lab: its reload may have re-created its links
    if event.rediscover and callable(rediscover):
        rediscover()
    elif event.relinks:
        lab.close_attachments()  # capture sockets on a deleted link would hold the namespace (and miss the new link)
    run = EventRun(name, did, tuple(lost(before, signature(lab.host))))
    record.runs.append(run)
    return run


def events_of(lab: object) -> LabEvents | None:
    got = getattr(lab, "lifecycle", None)
    return got if isinstance(got, LabEvents) else None


def baseline(lab: Lab) -> Signature:
    """The rules as the tool left them: read at discovery for another tool's setup, else now."""
    got = getattr(lab, "tool_rules", None)
    return got if isinstance(got, dict) else signature(lab.host)


# ----------------------------------------------------------------------------- phases of a pytest run


@dataclass(frozen=True)
class Phases:
    """The phases of a run with events: 0 is before; phase i comes after the first i events."""

    events: tuple[str, ...]

    @property
    def ids(self) -> list[str]:
        """Each phase's test id: ``after-EVENT``; an event given again gets ``after-EVENT-2``, ``-3`` (unique, so pytest keeps them)."""
        out = ["before"]
        for i, e in enumerate(self.events):
            n = self.events[: i + 1].count(e)
            out.append(f"after-{e}" + (f"-{n}" if n > 1 else ""))
        return out

    def label(self, index: int) -> str:
        return "before" if index == 0 else "after " + " + ".join(self.events[:index])

    def reach(self, lab: Lab, index: int) -> list[EventRun]:
        """Apply the events phase ``index`` comes after and the lab has not had yet; return them."""
        record = events_of(lab)
        done = len(record.runs) if record is not None else 0
        if done > index:
            raise EventFailed(f"{lab.topology.name}: a check of phase {self.label(index)!r} ran after the lab had {done} event(s) (the checks were reordered?)")
        return [apply(lab, name) for name in self.events[done:index]]

    def check_of(self, nodeid: str) -> str:
        """The check a phased test item stands for: its node id without the phase's id."""
        head, sep, inner = nodeid.partition("[")
        if not sep:
            return nodeid
        inner = inner[:-1]
        for pid in sorted(self.ids, key=len, reverse=True):
            if inner == pid:
                return head
            if inner.endswith("-" + pid):
                return f"{head}[{inner[: -len(pid) - 1]}]"
            if inner.startswith(pid + "-"):
                return f"{head}[{inner[len(pid) + 1:]}]"
        return nodeid


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """The events named on the command line, each known; ValueError naming the unknown and the known ones."""
    out = tuple(names)
    unknown = [n for n in out if n not in EVENTS]
    if unknown:
        raise ValueError(f"--netcheck-event {', '.join(unknown)}: unknown event; known: {', '.join(EVENTS)} (see docs/tools.md)")
    return out


def phase_of(item: pytest.Item) -> int:
    callspec = getattr(item, "callspec", None)
    return int(callspec.params.get(PHASE_FIXTURE, 0)) if callspec is not None else 0


PHASE_FIXTURE = "netcheck_phase"


@dataclass(frozen=True)
class BeforeAfter:
    """One check's outcome in each phase (``outcomes[i]`` is phase i's; "" where it did not run)."""

    check: str
    outcomes: tuple[str, ...]

    def to_dict(self) -> JSONObject:
        return {"check": self.check, "outcomes": list(self.outcomes)}


def before_after(phases: Phases, reports: Iterable[pytest.TestReport]) -> list[BeforeAfter]:
    """Each check's outcome per phase, from test reports (or their plain ``netcheck`` data: nodeid, phase, outcome)."""
    table: dict[str, list[str]] = {}
    for r in reports:
        data = getattr(r, "netcheck", None) or {}
        if "phase" not in data:
            continue
        row = table.setdefault(phases.check_of(r.nodeid), [""] * (len(phases.events) + 1))
        if r.when == "call" or r.outcome != "passed":
            row[int(data["phase"])] = r.outcome
    return [BeforeAfter(k, tuple(v)) for k, v in table.items()]


def summary_lines(phases: Phases, rows: Sequence[BeforeAfter], runs: Mapping[str, Sequence[EventRun]]) -> list[str]:
    """The terminal's section: what each event did to each lab, each check's outcome per phase (* where it changed), the counts."""
    out = [f"netcheck events: {' then '.join(phases.events)}"]
    for lab, done in runs.items():
        for run in done:
            out.append(f"  {lab}: {run.event}: {run.did}" + (f"; removed: {'; '.join(run.lost[:4])}" + (" ..." if len(run.lost) > 4 else "") if run.lost else "; removed no table or chain"))
    width = max((len(r.check) for r in rows), default=0)
    out.append(f"  {'check'.ljust(width)}  " + "  ".join(phases.ids))
    for r in rows:
        changed = len({o for o in r.outcomes if o}) > 1
        out.append(f"{'*' if changed else ' '} {r.check.ljust(width)}  " + "  ".join((o or "-").ljust(len(pid)) for o, pid in zip(r.outcomes, phases.ids, strict=True)))
    for i, pid in enumerate(phases.ids):
        counts: dict[str, int] = {}
        for r in rows:
            if r.outcomes[i]:
                counts[r.outcomes[i]] = counts.get(r.outcomes[i], 0) + 1
        out.append(f"  {pid}: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing ran"))
    return out


def configure(config: pytest.Config) -> Phases:
    """The run's phases from ``--netcheck-event``; pytest.UsageError for an unknown event or a run that cannot order its phases."""
    import pytest

    try:
        names = check_names(config.getoption("netcheck_event") or ())
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("numprocesses", None) or config.getoption("dist", "no") != "no":
        raise pytest.UsageError("--netcheck-event runs every check before an event and again after it, in one process; drop -n (pytest-xdist) for it")
    if config.getoption("netcheck_host", False):
        raise pytest.UsageError("--netcheck-event breaks the host on purpose, so it cannot be used with --netcheck-host; drop --netcheck-host to run it in the sandbox")
    return Phases(names)


def reach(phases: Phases, lab: Lab, index: int, log: dict[str, list[EventRun]]) -> None:
    """The fixture's part: bring the lab to phase ``index``; skip the check when an event does not apply to this lab's tool."""
    import pytest

    try:
        log.setdefault(lab.topology.name, []).extend(phases.reach(lab, index))
    except NotApplicable as exc:
        pytest.skip(str(exc))


def terminal_lines(phases: Phases, stats: Mapping[str, Sequence[object]], log: dict[str, list[EventRun]]) -> list[str]:
    import pytest

    reports = [r for group in stats.values() for r in group if isinstance(r, pytest.TestReport)]
    return summary_lines(phases, before_after(phases, reports), log)


__all__ = ["EVENTS", "LONG_LIVED_UDP_PORT", "PHASE_FIXTURE", "BeforeAfter", "Event", "EventFailed", "EventRun", "LabEvents", "NotApplicable", "Phases",
           "apply", "before_after", "check_names", "configure", "reach", "terminal_lines", "lost", "signature", "summary_lines", "tool_of"]
