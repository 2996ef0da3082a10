"""script: a plain shell script (or any command), run as the user wrote it, in the sandbox host.

The command runs in the sandbox host namespace with the spec file's folder as working
directory, and gets the namespace names and addresses to use through NETCHECK_* variables
(docs/tools.md). It must create each container's namespace under the name it is given
(``ip netns add "$NETCHECK_NETNS_NETNS0"``); netcheck records those names before the command
runs, so a crash never leaves them behind.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from netcheck import spec
from netcheck.adapters.lab import env_name
from netcheck.lab import LabError
from netcheck.lab.mode import HostMode

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab


class ScriptAdapter:
    mode = "script"

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        prog = topology.setup.command[0] if topology.setup.command else ""
        if prog and "/" not in prog and shutil.which(prog) is None:
            return [f"{prog} (the command's program is not on PATH)"]
        return []

    def setup(self, lab: ExternalLab) -> None:
        t = lab.declared
        names = [env_name(c.name) for c in t.containers]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise LabError(f"{t.source}: containers map to the same variable {', '.join(clash)}; rename them so that they differ in more than - . _ or case")
        for c in t.containers:
            lab.expect_container_ns(c.name)
        lab.run_tool("setup command", t.setup.command)
        for c in t.containers:
            lab.open_container_ns(c.name, f'create it with: ip netns add "${env_name(c.name)}"')

    def discover_existing(self, lab: ExternalLab) -> None:
        adopt_by_path(lab)

    def teardown(self, lab: ExternalLab) -> list[str]:
        t = lab.declared
        if not t.setup.teardown:
            return []
        try:
            lab.run_tool("teardown command", t.setup.teardown)
        except LabError as exc:
            return [str(exc)]
        return []


def adopt_by_path(lab: ExternalLab, skip: frozenset[str] = frozenset()) -> None:
    """Host mode: every container names its existing namespace (``netns = "/run/netns/X"``)."""
    t = lab.declared
    for i, c in enumerate(t.containers):
        if c.name in skip:
            continue
        if c.netns is None:
            raise spec.SpecError(t.source, f"container[{i}].netns", None,
                              f"in host mode netcheck does not run {t.setup.mode}; it discovers containers that already exist",
                              'add netns = "/run/netns/NAME" (or "/proc/PID/ns/net") for each container')
        lab.adopt_container_ns(c.name, c.netns, owned=False)


__all__ = ["ScriptAdapter", "adopt_by_path"]
