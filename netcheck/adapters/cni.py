"""cni: a CNI plugin chain (Debian containernetworking-plugins), driven as a container runtime would.

For each container netcheck creates its namespace, then calls every plugin of the
configuration in order with ``CNI_COMMAND=ADD`` (``CNI_NETNS``, ``CNI_IFNAME`` = the spec's
interface, ``CNI_CONTAINERID`` = the lab's namespace name), passing each plugin the previous
one's result. Plugins that declare ``capabilities.portMappings`` (portmap) get the spec's
``[[publish]]`` entries as ``runtimeConfig.portMappings``. host-local IPAM gets a ``dataDir``
of the lab's own, so the sandbox never reads or writes the machine's allocations.
Teardown calls ``DEL`` in reverse order.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import spec
from netcheck.adapters.lab import ToolFailed
from netcheck.adapters.script import adopt_by_path
from netcheck.kernel.jsontypes import JSONObject
from netcheck.lab.mode import HostMode

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab

CNI_PATHS = ("/usr/lib/cni", "/opt/cni/bin")
INSTALL_HINT = "apt-get install -y --no-install-recommends containernetworking-plugins"


PLUGIN_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def cni_path() -> str | None:
    for d in CNI_PATHS:
        if os.path.isfile(os.path.join(d, "bridge")):
            return d
    return None


def load_config(path: Path, source: str) -> JSONObject:
    """A .conflist ({"plugins": [...]}) or a single-plugin .conf, as a conflist."""
    try:
        conf = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise spec.SpecError(source, "setup.config", str(path), f"not a readable JSON CNI configuration ({exc})", "check the file") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("name"), str):
        raise spec.SpecError(source, "setup.config", str(path), "a CNI configuration needs a \"name\"", 'add "name": "mynet"')
    if "plugins" not in conf:
        plugin = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
        conf = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": conf["name"], "plugins": [plugin]}
    plugins = conf["plugins"]
    if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise spec.SpecError(source, "setup.config", str(path), "\"plugins\" must be a non-empty list of objects with a \"type\"", 'write "plugins": [{"type": "bridge", ...}]')
    for i, p in enumerate(plugins):
        if not PLUGIN_TYPE_RE.match(p["type"]):
            # The type names a binary in the CNI path: no path of its own, so nothing else can run.
            raise spec.SpecError(source, f"setup.config: plugins[{i}].type", p["type"], "not a CNI plugin name", 'name a plugin of the CNI path, e.g. "bridge"')
    return conf


class CniAdapter:
    mode = "cni"

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        if mode.name == "host":  # nothing is run: what exists is found
            return []
        return [] if cni_path() is not None else [f"CNI plugins in {' or '.join(CNI_PATHS)} (install them: {INSTALL_HINT})"]

    def _plugin_config(self, lab: ExternalLab, conf: JSONObject, plugin: JSONObject, container: str) -> JSONObject:
        cfg = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": conf["name"], **plugin}
        ipam = cfg.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            assert lab.workdir is not None
            cfg["ipam"] = {**ipam, "dataDir": str(lab.workdir / "cni-ipam")}
        caps = plugin.get("capabilities") or {}
        if caps.get("portMappings"):
            maps = [{"hostPort": p.host_port, "containerPort": p.port, "protocol": p.protocol} for p in lab.declared.publishes if p.container == container]
            cfg["runtimeConfig"] = {**cfg.get("runtimeConfig", {}), "portMappings": maps}
        return cfg

    def _call(self, lab: ExternalLab, command: str, cfg: JSONObject, container: str, interface: str, prev: JSONObject | None) -> JSONObject:
        path = cni_path()
        assert path is not None
        if prev is not None:
            cfg = {**cfg, "prevResult": prev}
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": lab.netns_name(container),
            "CNI_NETNS": f"/run/netns/{lab.netns_name(container)}",
            "CNI_IFNAME": interface,
            "CNI_PATH": path,
        }
        binary = os.path.join(path, cfg["type"])
        if not os.path.isfile(binary):
            raise ToolFailed(f"CNI plugin {cfg['type']!r} is not in {path} (the plugins there: {', '.join(sorted(os.listdir(path)))})")
        proc = lab.run_tool(f"CNI {command} {cfg['type']} for {container}", [binary], env=env, input=json.dumps(cfg).encode(), check=False)
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            try:
                err = json.loads(out)
                msg = f"{err.get('msg')} {err.get('details', '')}".strip()
            except ValueError:
                msg = (out + proc.stderr.decode(errors="replace")).strip()
            raise ToolFailed(f"CNI {command} of plugin {cfg['type']} for container {container} failed (exit {proc.returncode}): {msg}")
        if command == "DEL" or not out.strip():
            return prev or {}
        result: JSONObject = json.loads(out)
        return result

    def setup(self, lab: ExternalLab) -> None:
        t = lab.declared
        assert t.setup.config is not None
        conf = load_config(lab.spec_path(t.setup.config, "setup.config"), t.source)
        lab.state["cni"] = conf
        results: dict[str, JSONObject] = {}
        lab.state["cni_results"] = results
        for c in t.containers:
            lab.new_container_ns(c.name)
            prev: JSONObject | None = None
            for plugin in conf["plugins"]:
                prev = self._call(lab, "ADD", self._plugin_config(lab, conf, plugin, c.name), c.name, c.interface, prev)
                results[c.name] = prev

    def restart_container(self, lab: ExternalLab, name: str) -> None:
        """A runtime's restart of one container (the lifecycle event container-new-address): DEL of its plugins in
        reverse, then ADD in order, in the same namespace; host-local hands out its next free address."""
        conf = lab.state["cni"]
        results: dict[str, JSONObject] = lab.state["cni_results"]
        c = lab.declared.container(name)
        for plugin in reversed(conf["plugins"]):
            self._call(lab, "DEL", self._plugin_config(lab, conf, plugin, name), name, c.interface, results[name])
        prev: JSONObject | None = None
        for plugin in conf["plugins"]:
            prev = self._call(lab, "ADD", self._plugin_config(lab, conf, plugin, name), name, c.interface, prev)
            results[name] = prev

    def discover_existing(self, lab: ExternalLab) -> None:
        adopt_by_path(lab)

    def teardown(self, lab: ExternalLab) -> list[str]:
        conf = lab.state.get("cni")
        results: dict[str, JSONObject] = lab.state.get("cni_results", {})
        if conf is None:
            return []
        errors = []
        for c in reversed(lab.declared.containers):
            if c.name not in results:
                continue
            for plugin in reversed(conf["plugins"]):
                try:
                    self._call(lab, "DEL", self._plugin_config(lab, conf, plugin, c.name), c.name, c.interface, results[c.name])
                except ToolFailed as exc:
                    errors.append(str(exc))
        return errors


__all__ = ["CniAdapter", "cni_path", "load_config"]
