"""Fixes verified by re-probing: apply the top causes' fixes to a sandbox lab, repeat the probe, undo.

A finding's fix is a command for people (``Finding.fix``) and, where known, values
(``Finding.fixes``: ``Sysctl``, ``SetLink``) that this module applies to the lab's own
namespaces. For a sandbox lab, up to three findings are tried in rank order: a fix after which
the probe passes is "verified" and ranks first; one that does not help is demoted. Every fix is
undone at once, so the rest of the run sees the lab as it was built. A lab in host mode, or one
that netcheck did not build (the doctor's), is never changed: its fixes are only proposed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from netcheck.evidence import AddRoute, Finding, Fix, ProbeRequest, ProbeResult, SetLink, Sysctl
from netcheck.ledger import SysctlEntry

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


def shown(lab: Lab, fix: Fix) -> str:
    """A fix in the spec's names (br0, not nck7q0b0)."""
    if isinstance(fix, SetLink) and fix.netns == "host":
        return f"{fix.netns}: " + replace(fix, link=lab.spec_name(fix.link)).command()
    if isinstance(fix, Sysctl) and fix.netns == "host":
        parts = fix.key.split(".")
        if len(parts) == 5 and parts[2] == "conf":
            parts[3] = lab.spec_name(parts[3])
        return f"{fix.netns}: " + replace(fix, key=".".join(parts)).command()
    return f"{fix.netns}: {fix.command()}"


def apply(lab: Lab, fixes: tuple[Fix, ...]) -> Callable[[], None]:
    """Apply fixes to the lab's namespaces; returns the undo (newest first)."""
    undo: list[Callable[[], None]] = []
    namespaces = lab.namespaces()
    try:
        for fix in fixes:
            ns = namespaces[fix.netns]
            if isinstance(fix, Sysctl):
                old = ns.sysctl(fix.key)
                if lab.ledger is not None:
                    lab.ledger.record(SysctlEntry(ns.name, fix.key, old))
                ns.set_sysctl(fix.key, fix.value)
                undo.append(lambda ns=ns, key=fix.key, old=old: ns.set_sysctl(key, old) if old is not None else None)  # type: ignore[misc]
            elif isinstance(fix, AddRoute):
                net = IPv4Network("0.0.0.0/0" if fix.dst == "default" else fix.dst)
                ns.configure(routes=[(net, IPv4Address(fix.via), None)])
                undo.append(lambda ns=ns, net=net: ns.deconfigure(routes=[net]))  # type: ignore[misc]
            else:
                ns.set_link(fix.link, up=fix.up)
                undo.append(lambda ns=ns, link=fix.link, up=fix.up: ns.set_link(link, up=not up))  # type: ignore[misc]
    except BaseException:
        _run(undo)
        raise
    return lambda: _run(undo)


def _run(undo: list[Callable[[], None]]) -> None:
    for u in reversed(undo):
        with contextlib.suppress(Exception):
            u()


def verify(lab: Lab, request: ProbeRequest, resend: Callable[[ProbeRequest], ProbeResult], findings: list[Finding], timeout: float) -> list[Finding]:
    """Try the fixes of the top findings (up to three) on the lab; the verified one first, those that did not help last."""
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
        except Exception as exc:  # noqa: BLE001 - a fix that cannot be applied is reported, the next one tried
            out[i] = replace(f, verified=f"fix not applied: {what}: {exc}")
            continue
        try:
            r = resend(replace(request, capture=(), timeout=timeout, end_on_drop=True))
        except Exception as exc:  # noqa: BLE001 - reported as not verified
            r = None
            out[i] = replace(f, verified=f"fix not verified: the probe could not be repeated ({exc})")
        finally:
            undo()
        if r is None:
            continue
        tried[i] = r.passed
        if r.passed:
            out[i] = replace(f, verified=f"fix verified: the probe passes after {what} (applied to the lab, then undone; {KEEP_HINT})")
            break
        out[i] = replace(f, verified=f"fix did not help: the probe still failed after {what} ({r.verdict}{': ' + r.error if r.error else ''})")
    good = [f for i, f in enumerate(out) if tried.get(i) is True]
    bad = [f for i, f in enumerate(out) if tried.get(i) is False]
    rest = [f for i, f in enumerate(out) if i not in tried]
    return good + rest + bad
