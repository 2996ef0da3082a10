"""Setups other tools make: run the tool in the sandbox host, discover what it made, test that.

A spec whose ``[setup] mode`` is script, cni, netavark, podman or docker states only what to
expect; ``build_external`` makes the sandbox, runs the tool, and returns a lab that the
unchanged suites test::

    lab = build_external(spec.load("examples/cni.toml"), keep=False)
    try:
        lab.container_ns("web").addresses()
    finally:
        lab.teardown()

In host mode the tool is not run: the containers that already exist are discovered (by
their namespace paths, or by name through a Docker or Podman socket).
"""

from __future__ import annotations

from netcheck import spec
from netcheck.adapters.cni import CniAdapter
from netcheck.adapters.docker import DockerAdapter
from netcheck.adapters.lab import Adapter, ExternalLab, ToolFailed, ToolMissing, env_name
from netcheck.adapters.netavark import NetavarkAdapter
from netcheck.adapters.podman import PodmanAdapter
from netcheck.adapters.script import ScriptAdapter
from netcheck.lab.mode import HostMode, Sandbox

SANDBOX = Sandbox()

ADAPTERS: dict[str, type[Adapter]] = {
    "script": ScriptAdapter,
    "cni": CniAdapter,
    "netavark": NetavarkAdapter,
    "podman": PodmanAdapter,
    "docker": DockerAdapter,
}


def adapter_for(topology: spec.Topology) -> Adapter:
    return ADAPTERS[topology.setup.mode]()


def missing(topology: spec.Topology, *, mode: HostMode = SANDBOX) -> list[str]:
    """What this machine lacks to run the topology's tool, each with how to install it (empty: ready)."""
    return adapter_for(topology).missing(topology, mode)


def build_external(topology: spec.Topology, *, keep: bool = False, mode: HostMode = SANDBOX) -> ExternalLab:
    """Build the sandbox, run (or, on a real host, find) what the tool made, and discover it."""
    lacking = missing(topology, mode=mode)
    if lacking:
        raise ToolMissing(f"{topology.source}: setup mode {topology.setup.mode} needs " + "; ".join(lacking))
    lab = ExternalLab(topology, adapter_for(topology), keep=keep, mode=mode)
    lab.build()
    return lab


__all__ = ["ADAPTERS", "ExternalLab", "ToolFailed", "ToolMissing", "adapter_for", "build_external", "env_name", "missing"]
