"""netavark: Podman's network stack (Debian netavark), driven as Podman drives it.

The spec's ``config`` is a network in Podman's JSON format (what ``podman network inspect``
prints, or a file of /etc/containers/networks). For each container netcheck creates its
namespace, gives it an address (the spec's, or the next free one of the first subnet for
``auto``: netavark does no IPAM of its own, Podman does), and runs
``netavark --config DIR --file FILE setup /run/netns/NAME`` with ``NETAVARK_FW=iptables``; the
spec's ``[[publish]]`` entries become the container's ``port_mappings``. Teardown runs
``netavark ... teardown`` for each container.
"""

from __future__ import annotations

import hashlib
import json
import os
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from netcheck import spec
from netcheck.adapters.lab import ToolFailed
from netcheck.adapters.script import adopt_by_path
from netcheck.kernel.jsontypes import JSONObject
from netcheck.lab.mode import HostMode
from netcheck.lifecycle import events_of

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab

NETAVARK_PATHS = ("/usr/lib/podman/netavark", "/usr/libexec/podman/netavark")
INSTALL_HINT = "apt-get install -y --no-install-recommends netavark"


def netavark_path() -> str | None:
    return next((p for p in NETAVARK_PATHS if os.path.isfile(p)), None)


def load_network(lab: ExternalLab) -> JSONObject:
    t = lab.declared
    assert t.setup.config is not None
    path = lab.spec_path(t.setup.config, "setup.config")
    try:
        net = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise spec.SpecError(t.source, "setup.config", str(path), f"not a readable JSON network ({exc})", "check the file") from None
    if isinstance(net, list) and len(net) == 1:
        net = net[0]  # podman network inspect prints a list
    subnets = net.get("subnets") if isinstance(net, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get("name"), str) or not subnets:
        raise spec.SpecError(t.source, "setup.config", str(path), "a netavark network needs \"name\" and \"subnets\"",
                          'write it as podman network inspect prints it: {"name": ..., "subnets": [{"subnet": ..., "gateway": ...}], ...}')
    net.setdefault("id", hashlib.sha256(net["name"].encode()).hexdigest())
    net.setdefault("driver", "bridge")
    net.setdefault("ipv6_enabled", False)
    net.setdefault("internal", False)
    net.setdefault("dns_enabled", False)
    net.setdefault("ipam_options", {"driver": "host-local"})
    return net


def allocate(lab: ExternalLab, net: JSONObject) -> dict[str, IPv4Address]:
    """Each container's address: the spec's, or the next free host of the first subnet (Podman's IPAM)."""
    first = net["subnets"][0]
    subnet = IPv4Network(first["subnet"])
    taken = {IPv4Address(first["gateway"])} if first.get("gateway") else set()
    taken |= {c.address.ip for c in lab.declared.containers if c.address is not None}
    free = (ip for ip in subnet.hosts() if ip not in taken)
    out = {}
    for c in lab.declared.containers:
        out[c.name] = c.address.ip if c.address is not None else next(free)
    return out


class NetavarkAdapter:
    mode = "netavark"

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        if mode.name == "host":  # nothing is run: what exists is found
            return []
        return [] if netavark_path() else [f"netavark in {' or '.join(NETAVARK_PATHS)} (install it: {INSTALL_HINT})"]

    def _file(self, lab: ExternalLab, net: JSONObject, c: spec.Container, ip: IPv4Address) -> str:
        assert lab.workdir is not None
        ports = [{"host_ip": "", "container_port": p.port, "host_port": p.host_port, "range": 1, "protocol": p.protocol}
                 for p in lab.declared.publishes if p.container == c.name]
        body = {
            "container_id": hashlib.sha256(lab.netns_name(c.name).encode()).hexdigest(),
            "container_name": c.name,
            "port_mappings": ports,
            # Dual stack: the spec's IPv6 address too (netavark has no IPAM of its own for either family).
            "networks": {net["name"]: {"static_ips": [str(ip), *([str(c.address6.ip)] if c.address6 is not None else [])], "interface_name": c.interface, "aliases": []}},
            "network_info": {net["name"]: net},
        }
        path = lab.workdir / f"netavark-{c.name}.json"
        path.write_text(json.dumps(body, indent=1))
        return str(path)

    def _run(self, lab: ExternalLab, verb: str, c: spec.Container, file: str) -> None:
        binary = netavark_path()
        assert binary is not None and lab.workdir is not None
        env = {**os.environ, "NETAVARK_FW": "iptables"}
        argv = [binary, "--config", str(lab.workdir / "netavark"), "--file", file, verb, f"/run/netns/{lab.netns_name(c.name)}"]
        lab.run_tool(f"netavark {verb} for {c.name}", argv, env=env)

    def setup(self, lab: ExternalLab) -> None:
        net = load_network(lab)
        assert lab.workdir is not None
        (lab.workdir / "netavark").mkdir()
        addresses = allocate(lab, net)
        files: dict[str, str] = {}
        lab.state["netavark_files"] = files
        for c in lab.declared.containers:
            lab.new_container_ns(c.name)
            files[c.name] = self._file(lab, net, c, addresses[c.name])
            self._run(lab, "setup", c, files[c.name])

    def discover_existing(self, lab: ExternalLab) -> None:
        adopt_by_path(lab)

    def teardown(self, lab: ExternalLab) -> list[str]:
        errors = []
        files: dict[str, str] = lab.state.get("netavark_files", {})
        for c in reversed(lab.declared.containers):
            if c.name in files:
                try:
                    self._run(lab, "teardown", c, files[c.name])
                except ToolFailed as exc:
                    if events_of(lab) is None or "No chain/target/match" not in str(exc):
                        errors.append(str(exc))
                    # else: a lifecycle event removed the chains netavark's teardown deletes; the sandbox goes anyway
        return errors


__all__ = ["NetavarkAdapter", "allocate", "load_network", "netavark_path"]
