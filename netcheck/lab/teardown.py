"""Tear a lab down: release what its users attached, close its namespace threads, undo its
ledger in reverse (the host-side link group in one request), then wait (bounded) until the
host-side links are gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from netcheck.kernel.netns import Netns
from netcheck.lab.errors import LabError
from netcheck.ledger import Entry, LinkEntry, NetnsEntry, Undoer, undo_all
from netcheck.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from netcheck.lab.lab import Lab


def teardown(lab: Lab) -> None:
    """Remove everything the lab's ledger names; LabError naming what is left, if anything is."""
    assert lab.ledger is not None
    errors = lab.release_held()
    host = next((ns for ns in lab.handles if ns.label == "host"), None)
    # Close every worker but the host's, which watches the host-side links go.
    for ns in reversed(lab.handles):
        if ns is not host:
            with contextlib.suppress(Exception):
                ns.close()
    entries = lab.ledger.entries
    undoer = Undoer(handles={host.name: host} if host is not None else {}, host_inode=lab.ledger.netns_inode)
    mine = [e for e in entries if host is not None and e == NetnsEntry(str(host.name))]  # the host's own, removed last
    inner = [e for e in entries if e not in mine]
    errors += undo_grouped(lab, inner, undoer, host)
    if host is not None:
        errors += _wait_links_gone(lab, host, {e.name for e in entries if isinstance(e, LinkEntry) and e.netns == host.name})
        with contextlib.suppress(Exception):
            host.close()
        errors += undo_all(mine, Undoer())
    undoer.close()
    lab.ledger.close(remove=not errors)
    lab.ledger = None
    lab.handles.clear()
    lab.containers.clear()
    if errors:
        raise LabError(f"teardown of lab {lab.tag} left: " + "; ".join(errors) + " (try: netcheck clean)")


def _wait_links_gone(lab: Lab, host: Netns, gone: set[str]) -> list[str]:
    def left() -> set[str]:
        return gone & {link.name for link in host.link_states()}

    try:
        wait_until(lambda: not left(), timeout=10, what=f"the host-side links of lab {lab.tag} to go",
                   describe=lambda: ", ".join(sorted(left())) + " still present (something still holds their namespace: a socket, a thread or a process)")
    except WaitTimeout as exc:
        return [str(exc)]
    except Exception as exc:  # noqa: BLE001 - reported with the other errors of the teardown
        return [f"reading the host's links: {exc}"]
    return []


def undo_grouped(lab: Lab, entries: Sequence[Entry], undoer: Undoer, host: Netns | None) -> list[str]:
    """``undo_all``, in reverse order, with the lab's link group in the host deleted in one request.

    The entries split into runs: plain runs go to ``undo_all``; the group is deleted when
    its last-recorded run (the containers' veths) comes up, in one RTM_DELLINK, and its
    earlier runs (the uplink and the bridges) are then already gone: they go before the
    container namespaces instead of after, which nothing depends on. If the request
    fails, the group's links are deleted one by one, in order.
    """
    if host is None or not lab.link_groups:
        return undo_all(entries, undoer)
    owned = {e.name for e in entries if isinstance(e, NetnsEntry)}
    runs: list[tuple[int | None, list[Entry]]] = []
    for e in entries:
        group = lab.link_groups.get(e.name) if isinstance(e, LinkEntry) and e.netns == host.name else None
        if runs and runs[-1][0] == group:
            runs[-1][1].append(e)
        else:
            runs.append((group, [e]))
    errors: list[str] = []
    deleted: dict[int, bool] = {}
    for group, run in reversed(runs):
        if group is None:
            # Entries inside a container namespace go with it, as undo_all skips them.
            errors += undo_all([e for e in run if isinstance(e, NetnsEntry) or e.netns not in owned], undoer)
            continue
        if group not in deleted:
            try:
                host.delete_link_group(group)
                deleted[group] = True
            except Exception as exc:  # noqa: BLE001 - fall back to one link at a time
                errors.append(f"deleting link group {group} of lab {lab.tag}: {exc}")
                deleted[group] = False
        if not deleted[group]:
            errors += undo_all(run, undoer)
    return errors


__all__ = ["teardown", "undo_grouped"]
