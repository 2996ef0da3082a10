"""Fixes verified by re-probing: apply the top causes' fixes to a sandbox lab, repeat the probe, undo.

A finding's fix is a command for people (``Finding.fix``) and, where known, values
(``Finding.fixes``: the kinds of ``evidence.FIX_KINDS``) that this module applies to the lab's own
namespaces, each kind by its one applier (``_apply``, registered per kind), which returns its undo. A rule fix goes where the
rule lives: ``iptables-legacy``/``iptables-nft`` with the rule's one rendering
(``XRule.argv``), or a native nft table by handle; its undo puts the rule back at its position. For a sandbox lab, up to three findings are tried in rank order: a fix after which
the probe passes is "verified" and ranks first; one that does not help is demoted. Every fix is
undone at once, so the rest of the run sees the lab as it was built. A lab in host mode, or one
that netcheck did not build (the doctor's), is never changed: its fixes are only proposed.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, ip_address, ip_interface, ip_network
from typing import TYPE_CHECKING, Protocol

from netcheck.diagnose.firewall import LEGACY6, binary, is_native
from netcheck.diagnose.rules import BLACKHOLES
from netcheck.evidence import (
    AddAddress,
    AddRoute,
    AddRule,
    DeleteAddress,
    DeleteNeighbour,
    DeleteRoute,
    DeleteRule,
    Finding,
    Fix,
    FlushConntrack,
    ProbeRequest,
    ProbeResult,
    SetFdb,
    SetHairpin,
    SetLink,
    SetMaster,
    SetMtu,
    SetPolicy,
    Sysctl,
)
from netcheck.kernel import nft, rtnl
from netcheck.kernel.netns import KernelError, Netns
from netcheck.kernel.xtables import XRule, nft_chains, read_legacy, read_legacy6, read_nft
from netcheck.ledger import Ledger, SysctlEntry

if TYPE_CHECKING:
    from netcheck.lab import Lab

TRIES = 3
KEEP_HINT = "to apply it yourself, keep the lab (--netcheck-keep) and run the fix above in it"


def applicable(lab: object) -> str | None:
    """Why fixes are not applied to this lab (None: they may be)."""
    mode = getattr(lab, "mode", None)
    if mode is None or getattr(lab, "ledger", None) is None:
        return "not a lab netcheck built: fixes are proposed, never applied"
    if mode.name == "host":
        return "host mode: fixes are proposed, never applied"
    return None


class NotApplicable(Exception):
    """A fix that cannot be applied and undone exactly (a rule with matches netcheck does not model)."""


class Fixable(Protocol):
    """What fixes are applied to: a single-host ``Lab`` or a ``MultiLab`` (namespaces by label, the ledger)."""

    @property
    def ledger(self) -> Ledger | None: ...

    def namespaces(self) -> dict[str, Netns]: ...


def _namer(lab: Fixable, netns: str) -> Callable[[str], str] | None:
    """The spec's names of a host namespace's links (``host``, or a multi-host lab's ``HOST/host``); None elsewhere."""
    host, slash, label = netns.rpartition("/")
    if label != "host":
        return None
    owner = getattr(lab, "hosts", {}).get(host) if slash else lab
    name: Callable[[str], str] | None = getattr(owner, "spec_name", None)
    return name


def _spec_iface(name_of: Callable[[str], str], name: str | None) -> str | None:
    if not name:
        return name
    neg = name.startswith("!")
    return ("!" if neg else "") + name_of(name.lstrip("!"))


def shown(lab: Fixable, fix: Fix) -> str:
    """A fix in the spec's names (br0, not nck7q0b0); in host mode the names are the host's own."""
    name_of = _namer(lab, fix.netns)
    if name_of is None:
        return f"{fix.netns}: {fix.command()}"
    if isinstance(fix, (AddRule, DeleteRule)):
        r = fix.rule
        named = replace(r, in_interface=_spec_iface(name_of, r.in_interface), out_interface=_spec_iface(name_of, r.out_interface),
                        in_set=tuple(_spec_iface(name_of, x) or x for x in r.in_set), out_set=tuple(_spec_iface(name_of, x) or x for x in r.out_set))
        return f"{fix.netns}: " + replace(fix, rule=named).command()
    if isinstance(fix, SetMaster):
        return f"{fix.netns}: " + replace(fix, link=name_of(fix.link), master=name_of(fix.master)).command()
    if isinstance(fix, (SetLink, SetMtu, SetFdb, SetHairpin, AddAddress, DeleteAddress)):
        return f"{fix.netns}: " + replace(fix, link=name_of(fix.link)).command()
    if isinstance(fix, AddRoute) and fix.dev:
        return f"{fix.netns}: " + replace(fix, dev=name_of(fix.dev)).command()
    if isinstance(fix, Sysctl):
        parts = fix.key.split(".")
        if len(parts) == 5 and parts[2] == "conf":
            parts[3] = name_of(parts[3])
        return f"{fix.netns}: " + replace(fix, key=".".join(parts)).command()
    return f"{fix.netns}: {fix.command()}"


def apply(lab: Fixable, fixes: tuple[Fix, ...]) -> Callable[[], None]:
    """Apply fixes to the lab's namespaces; returns the undo (newest first)."""
    undo: list[Undo] = []
    namespaces = lab.namespaces()
    try:
        for fix in fixes:
            undo.append(_apply(fix, namespaces[fix.netns], lab.ledger))
    except BaseException:
        _run(undo)
        raise
    return lambda: _run(undo)


Undo = Callable[[], None]


@functools.singledispatch
def _apply(fix: object, ns: Netns, ledger: Ledger | None) -> Undo:
    """Apply one fix in its namespace; returns its undo. One registered function per kind of fix."""
    raise NotApplicable(f"netcheck has no way to apply a {type(fix).__name__}")


@_apply.register
def _sysctl(fix: Sysctl, ns: Netns, ledger: Ledger | None) -> Undo:
    old = ns.sysctl(fix.key)
    if ledger is not None:
        ledger.record(SysctlEntry(ns.name, fix.key, old))
    ns.set_sysctl(fix.key, fix.value)

    def back() -> None:
        if old is not None:
            ns.set_sysctl(fix.key, old)

    return back


@_apply.register
def _add_address(fix: AddAddress, ns: Netns, ledger: Ledger | None) -> Undo:
    added = ip_interface(fix.address)
    ns.configure(addresses=[(fix.link, added)])

    def back() -> None:
        ns.deconfigure(addresses=[(fix.link, added)])

    return back


@_apply.register
def _set_hairpin(fix: SetHairpin, ns: Netns, ledger: Ledger | None) -> Undo:
    hairpin = next(p.hairpin for p in ns.bridge_ports() if p.port == fix.link)
    ns.set_hairpin(fix.link, fix.on)
    return lambda: ns.set_hairpin(fix.link, hairpin)


@_apply.register
def _set_link(fix: SetLink, ns: Netns, ledger: Ledger | None) -> Undo:
    ns.set_link(fix.link, up=fix.up)
    if fix.up:
        ns.wait_links_up([fix.link])  # bounded: the re-probe must not race the carrier (uplink-down's fix was judged "did not help")
    return lambda: ns.set_link(fix.link, up=not fix.up)


@_apply.register
def _set_mtu(fix: SetMtu, ns: Netns, ledger: Ledger | None) -> Undo:
    was = next(link.mtu for link in ns.links() if link.name == fix.link)
    ns.set_link(fix.link, mtu=fix.mtu)
    return lambda: ns.set_link(fix.link, mtu=was)


@_apply.register
def _flush_conntrack(fix: FlushConntrack, ns: Netns, ledger: Ledger | None) -> Undo:
    ns.run(fix.command().split(), timeout=20)  # exit 1 when there was nothing to forget
    return lambda: None  # nothing to undo: the flows are tracked again


def _exact(rule: XRule) -> None:
    if rule.unmodelled:
        raise NotApplicable(f"the rule has matches netcheck does not model ({', '.join(rule.unmodelled)}), so it could not be put back exactly")


def _iptables(ns: Netns, backend: str, argv: list[str], family: int | None = None) -> None:
    cmd = [binary(backend, family), *(["-w"] if backend in ("legacy", LEGACY6) else []), *argv]
    done = ns.run(cmd, timeout=20)
    if done.returncode != 0:
        raise KernelError(f"{' '.join(cmd)} in netns {ns.label}: {done.stderr.decode(errors='replace').strip()}")


def _chain_rules(ns: Netns, backend: str, family: str, table: str, chain: str) -> list[XRule]:
    """The rules of one chain as the kernel holds them now, in order."""
    legacy = backend in ("legacy", LEGACY6)
    chains = (read_legacy6(ns) if backend == LEGACY6 else read_legacy(ns, (table,))) if legacy else nft_chains(read_nft(ns))
    return next((list(c.rules) for c in chains if (c.table, c.name) == (table, chain) and (legacy or c.family == family)), [])


def _position(ns: Netns, fix: DeleteRule) -> tuple[int, XRule]:
    """The rule's 1-based position in its chain, and the rule as held (with its handle)."""
    for i, held in enumerate(_chain_rules(ns, fix.backend, fix.family, fix.rule.table, fix.rule.chain), 1):
        if held.key() == fix.rule.key() and (fix.rule.handle is None or held.handle in (None, fix.rule.handle)):
            return i, held
    raise LookupError(f"no such rule in {fix.rule.table} {fix.rule.chain}: {fix.command()}")


def _nft_rule(family: str, rule: XRule, **where: int) -> dict[str, object]:
    body: dict[str, object] = {"family": family, "table": rule.table, "chain": rule.chain, "expr": nft.expressions(rule, {rule.target}), **where}
    if rule.comment:
        body["comment"] = rule.comment
    return body


@_apply.register
def _delete_rule(fix: DeleteRule, ns: Netns, ledger: Ledger | None) -> Undo:
    _exact(fix.rule)
    position, held = _position(ns, fix)
    if is_native(fix.backend, fix.rule.table):
        assert held.handle is not None
        nft.delete_rule(ns, fix.family, held.table, held.chain, held.handle)

        def put_back() -> None:
            # nft inserts before the rule at an index, so a rule that was last (or alone) is added again at the end
            now = len(_chain_rules(ns, fix.backend, fix.family, held.table, held.chain))
            op = {"insert": {"rule": _nft_rule(fix.family, held, index=position - 1)}} if position - 1 < now else {"add": {"rule": _nft_rule(fix.family, held)}}
            nft.run(ns, [op], what="putting a rule back")

        return put_back
    _iptables(ns, fix.backend, fix.rule.argv("-D"), fix.rule.family)
    return lambda: _iptables(ns, fix.backend, held.argv("-I", position), fix.rule.family)


@_apply.register
def _add_rule(fix: AddRule, ns: Netns, ledger: Ledger | None) -> Undo:
    _exact(fix.rule)
    if not is_native(fix.backend, fix.rule.table):
        _iptables(ns, fix.backend, fix.rule.argv("-I" if fix.insert else "-A"), fix.rule.family)
        return lambda: _iptables(ns, fix.backend, fix.rule.argv("-D"), fix.rule.family)
    before = {r.handle for r in _chain_rules(ns, fix.backend, fix.family, fix.rule.table, fix.rule.chain)}
    nft.run(ns, [{"insert" if fix.insert else "add": {"rule": _nft_rule(fix.family, fix.rule)}}], what="adding a rule")
    added = [r.handle for r in _chain_rules(ns, fix.backend, fix.family, fix.rule.table, fix.rule.chain) if r.handle not in before and r.handle is not None]

    def remove() -> None:
        for h in added:
            nft.delete_rule(ns, fix.family, fix.rule.table, fix.rule.chain, h)

    return remove


@_apply.register
def _add_route(fix: AddRoute, ns: Netns, ledger: Ledger | None) -> Undo:
    """Add the route (``replace``: in place of the one to ``dst``); the undo removes it and puts the old one back."""
    via = ip_address(fix.via) if fix.via else None  # none: a route on the link (dev)
    net = ip_network(("::/0" if via is not None and via.version == 6 else "0.0.0.0/0") if fix.dst == "default" else fix.dst)
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    held = next((r for r in ns.routes(family) if r.dst == net and r.table == 254 and r.kind == "unicast"), None) if fix.replace else None
    if held is not None:
        ns.deconfigure(routes=[net])
    try:
        ns.configure(routes=[(net, via, fix.dev)])
    except BaseException:
        if held is not None:
            ns.configure(routes=[(net, held.gateway, held.interface)])
        raise

    def back() -> None:
        ns.deconfigure(routes=[net])
        if held is not None:
            ns.configure(routes=[(net, held.gateway, held.interface)])

    return back


def _ip(ns: Netns, argv: list[str]) -> None:
    done = ns.run(argv, timeout=20)
    if done.returncode != 0:
        raise KernelError(f"{' '.join(argv)} in netns {ns.label}: {done.stderr.decode(errors='replace').strip()}")


@_apply.register
def _delete_route(fix: DeleteRoute, ns: Netns, ledger: Ledger | None) -> Undo:
    if fix.type not in BLACKHOLES:  # no gateway, no device: what its undo adds again is exactly what was there
        raise NotApplicable(f"a {fix.type} route is not one netcheck puts back exactly (only {', '.join(BLACKHOLES)})")
    _ip(ns, ["ip", "route", "del", fix.type, fix.dst])
    return lambda: _ip(ns, ["ip", "route", "add", fix.type, fix.dst])


@_apply.register
def _delete_address(fix: DeleteAddress, ns: Netns, ledger: Ledger | None) -> Undo:
    """Delete the address; the undo adds it again, and where its connected route came first among those of its
    subnet (an address on a bridge port, added before the bridge's), re-adds the others so that it comes first again."""
    address = ip_interface(fix.address)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    first = next((r.interface for r in ns.routes(family) if r.dst == address.network and r.gateway is None), None)
    ns.deconfigure(addresses=[(fix.link, address)])

    def back() -> None:
        ns.configure(addresses=[(fix.link, address)])
        if first != fix.link:
            return
        others = [(a.interface, a.address) for a in ns.addresses(family) if a.interface != fix.link and a.address.network == address.network]
        ns.deconfigure(addresses=others)
        ns.configure(addresses=others)

    return back


@_apply.register
def _set_master(fix: SetMaster, ns: Netns, ledger: Ledger | None) -> Undo:
    """Attach the link to the bridge; the undo gives it back its master before (or none)."""
    links = {link.index: link for link in ns.links()}
    held = next(link for link in links.values() if link.name == fix.link)
    was = links[held.master].name if held.master in links else None
    ns.set_link(fix.link, master=fix.master)
    return lambda: ns.set_link(fix.link, master=was)


def _fdb_dsts(ns: Netns, link: str, mac: str) -> tuple[int, list[str]]:
    """The VXLAN device's index and the underlay addresses its fdb sends ``mac`` to."""

    def do(ipr: object) -> tuple[int, list[str]]:
        found = ipr.link("get", ifname=link)  # type: ignore[attr-defined]
        index = int(found[0]["index"])
        return index, [m.get_attr("NDA_DST") for m in ipr.get_neighbours(family=rtnl.AF_BRIDGE)  # type: ignore[attr-defined]
                       if m["ifindex"] == index and m.get_attr("NDA_LLADDR") == mac and m.get_attr("NDA_DST")]

    out: tuple[int, list[str]] = ns.netlink(do)
    return out


def _fdb(ns: Netns, requests: list[rtnl.Request]) -> None:
    rtnl.raise_first(ns.with_rtnl(lambda sock: sock.execute(requests)), f"netns {ns.name} ({ns.label})")


@_apply.register
def _set_fdb(fix: SetFdb, ns: Netns, ledger: Ledger | None) -> Undo:
    """Send ``mac`` to ``dst`` alone; the undo deletes that entry and appends the old ones again."""
    index, old = _fdb_dsts(ns, fix.link, fix.mac)
    _fdb(ns, [*(rtnl.fdb(index, fix.mac, IPv4Address(d), delete=True, where=fix.link) for d in old), rtnl.fdb(index, fix.mac, IPv4Address(fix.dst), where=fix.link)])

    def back() -> None:
        _fdb(ns, [rtnl.fdb(index, fix.mac, IPv4Address(fix.dst), delete=True, where=fix.link), *(rtnl.fdb(index, fix.mac, IPv4Address(d), where=fix.link) for d in old)])

    return back


@_apply.register
def _delete_neighbour(fix: DeleteNeighbour, ns: Netns, ledger: Ledger | None) -> Undo:
    """Delete the entry; the undo deletes what was learned meanwhile (resolved while the fix was on, it would outlive
    the fix's undo) and puts a static entry back (a learned one is learned again)."""
    address = IPv4Address(fix.address)
    held = next((n for n in ns.neighbours() if n.interface == fix.link and n.address == fix.address), None)
    ns.delete_neighbours(fix.link, [address])
    mac = held.mac if held is not None and held.state == "PERMANENT" else None

    def back() -> None:
        ns.delete_neighbours(fix.link, [address])
        if mac:
            ns.set_neighbours(fix.link, [(address, mac)])

    return back


@_apply.register
def _set_policy(fix: SetPolicy, ns: Netns, ledger: Ledger | None) -> Undo:
    if fix.backend == "legacy":
        from netcheck.kernel.xtables import set_policy

        old = set_policy(ns, fix.table, fix.chain, fix.policy)

        def back() -> None:
            set_policy(ns, fix.table, fix.chain, old)

        return back
    chain = next((c for c in nft_chains(read_nft(ns)) if (c.family, c.table, c.name) == (fix.family, fix.table, fix.chain)), None)
    if chain is None or chain.hook is None or chain.policy is None:
        raise LookupError(f"no base chain {fix.family} {fix.table} {fix.chain}")
    body = {"family": fix.family, "table": fix.table, "name": fix.chain, "type": chain.kind, "hook": chain.hook, "prio": chain.priority}

    def policy(p: str) -> None:
        nft.run(ns, [{"add": {"chain": {**body, "policy": p.lower()}}}], what=f"setting the {fix.chain} policy to {p}")

    policy(fix.policy)
    return lambda: policy(chain.policy or "accept")


def _run(undo: list[Callable[[], None]]) -> None:
    for u in reversed(undo):
        with contextlib.suppress(Exception):
            u()


def _renumbered(lab: Fixable, findings: list[Finding]) -> list[Finding]:
    """A native rule deleted and put back to try a fix has a new handle: the fixes shown say the new one."""
    namespaces = lab.namespaces()
    out = []
    for f in findings:
        for x in f.fixes:
            if not isinstance(x, DeleteRule) or x.rule.handle is None or not is_native(x.backend, x.rule.table) or x.netns not in namespaces:
                continue
            try:
                _i, held = _position(namespaces[x.netns], replace(x, rule=replace(x.rule, handle=None)))
            except LookupError:
                continue
            if held.handle is not None and held.handle != x.rule.handle:
                old, new = f"handle {x.rule.handle}", f"handle {held.handle}"
                f = replace(f, fix=f.fix.replace(old, new), fixes=tuple(replace(y, rule=replace(y.rule, handle=held.handle)) if y is x else y for y in f.fixes))
        out.append(f)
    return out


def verify(lab: Lab, request: ProbeRequest, resend: Callable[[ProbeRequest], ProbeResult], findings: list[Finding], timeout: float) -> list[Finding]:
    """Try the fixes of the top findings (up to three) on the lab; the verified one first, those that did not help last."""

    def probe() -> str | None:
        r = resend(replace(request, capture=(), timeout=timeout, end_on_drop=True))
        return None if r.passed else r.verdict + (f": {r.error}" if r.error else "")

    return try_fixes(lab, findings, probe)


def try_fixes(lab: Fixable, findings: list[Finding], probe: Callable[[], str | None]) -> list[Finding]:
    """Try the fixes of the top findings (up to three), each applied, re-probed (``probe``: None when it passes, else
    what failed) and undone; the verified one first, those that did not help last."""
    tried: dict[int, bool] = {}
    out = list(findings)
    for i, f in enumerate(out):
        if len(tried) == TRIES:
            break
        if not f.fixes:
            continue
        what = " && ".join(shown(lab, x) for x in f.fixes)
        try:
            undo = apply(lab, f.fixes)
        except NotApplicable as exc:
            out[i] = replace(f, verified=f"fix not applicable: {what}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a fix that cannot be applied is reported, the next one tried
            out[i] = replace(f, verified=f"fix not applied: {what}: {exc}")
            continue
        failed: str | None = ""
        try:
            failed = probe()
        except Exception as exc:  # noqa: BLE001 - reported as not verified
            out[i] = replace(f, verified=f"fix not verified: the probe could not be repeated ({exc})")
            continue
        finally:
            undo()
        tried[i] = failed is None
        if failed is None:
            out[i] = replace(f, verified=f"fix verified: the probe passes after {what} (applied to the lab, then undone; {KEEP_HINT})")
            break
        out[i] = replace(f, verified=f"fix did not help: the probe still failed after {what} ({failed})")
    # A fix that did not help demotes its cause; a verified one moves up past those, and past causes
    # ranked above it only if they hold no fix to try (a cause without one keeps its place: the
    # re-probe cannot speak for or against it, e.g. a tool whose rules an event removed).
    if tried:
        out = _renumbered(lab, out)
    bad = [f for i, f in enumerate(out) if tried.get(i) is False]
    kept = [(i, f) for i, f in enumerate(out) if tried.get(i) is not False]
    good = next((i for i, _f in kept if tried.get(i) is True), None)
    if good is not None:
        ahead = [(i, f) for i, f in kept if i < good]
        stays = [x for x in ahead if not x[1].fixes and x[1].score > out[good].score]
        kept = [*stays, (good, out[good]), *[x for x in kept if x not in stays and x[0] != good]]
    return [f for _i, f in kept] + bad
