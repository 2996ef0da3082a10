"""Why a tool's rules are gone: its nf_tables tables, chains and policies against those it left after its
setup (or before the first lifecycle event, netcheck.lifecycle). Rules of netcheck.diagnose.rules, given
to ``rules.evaluate`` as ``RULES`` by the diagnosis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from netcheck.evidence import Finding
from netcheck.lifecycle import events_of, lost, signature, tool_of

if TYPE_CHECKING:
    from netcheck.diagnose.path import LabView
    from netcheck.diagnose.rules import Evidence

# What writes a tool's rules again (the fix when they are gone), by setup mode.
RELOAD = {
    "podman": "podman network reload --all  (netavark writes every running container's rules again)",
    "docker": "systemctl restart docker  (dockerd writes its chains and its running containers' port rules again at start; "
              "with \"live-restore\": true the containers keep running)",
    "netavark": "run `netavark --config DIR --file NETWORK.json setup NETNS` again for each container (Podman does it with `podman network reload --all`)",
    "cni": "CNI has no reload: run each plugin's ADD again (the runtime does it when the container is restarted)",
    "script": "run the setup script again",
    "netcheck": "rebuild the lab (these are netcheck's own rules: the builder writes them, nothing reloads them)",
}
TOOL_NAMES = {"podman": "Podman's (netavark)", "docker": "Docker's", "netavark": "netavark's", "cni": "the CNI plugins'", "script": "the setup script's", "netcheck": "the lab's own"}


def reload_hint(lab: LabView) -> str:
    mode = tool_of(lab)
    if mode == "script":
        cmd = lab.topology.setup.command if lab.topology.setup is not None else ()
        return f"run the setup script again: {' '.join(cmd)}" if cmd else RELOAD["script"]
    return RELOAD[mode]


def tool_rules_gone(ev: Evidence) -> Iterator[Finding]:
    """The tool's tables, chains or policies are not what they were after its setup (or before the first event)."""
    record = events_of(ev.lab)
    base = record.baseline if record is not None else getattr(ev.lab, "tool_rules", None)
    if not isinstance(base, dict) or not base:
        return
    gone = lost(base, signature(ev.lab.host))
    if not gone:
        return
    whose = TOOL_NAMES[tool_of(ev.lab)]
    after = [r for r in (record.runs if record else []) if r.lost]
    since = f", since the event {after[0].event} (`{after[0].did}`)" if after else ""
    # With an event recorded, it is known to be the cause; without, the packet-level cause ranks first.
    yield Finding("tool_rules_gone", "host", f"host: {whose} rules are gone{since}: {gone[0]}" + (f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""),
                  reload_hint(ev.lab), tuple(gone[:12]), score=97 if after else 70)


RULES = (tool_rules_gone,)

__all__ = ["RELOAD", "RULES", "reload_hint", "tool_rules_gone"]
