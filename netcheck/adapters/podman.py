"""podman: real containers (Debian podman 4.3 with runc), run in the sandbox host.

Podman gets a configuration of the lab's own through CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF (storage, runtime state, locks and networks under the lab's work
folder; runc; cgroupfs; ulimits the sandbox allows) and runs in a private mount namespace
(netcheck.adapters.mounts), where the lab's folder also stands in for /run/containers.
Each spec container becomes ``podman run -d --name NAME --network bridge -p HOST:PORT
--rootfs ROOTFS`` with a busybox root filesystem made locally; or the spec's ``command``
runs instead, with the same environment, and creates containers named like the spec's.
netcheck finds each container's PID with ``podman inspect``, names its namespace, and serves
its HTTP and echo services inside it.

A spec's ``[[network]]`` becomes ``podman network create [--subnet S] [--disable-dns] NAME``
(Podman 4.3 names its bridge itself: podman1, podman2, ... in order, which the spec's bridge must
say), and a container with ``network = NAME`` joins it. With DNS, netavark starts aardvark-dns on
the network's gateway (in the host namespace, in the lab's mount namespace); its PID, from the
pidfile in the lab's /run/containers, is recorded, and it is ended by that PID at teardown.
aardvark-dns forwards other names to the resolvers of /etc/resolv.conf, which in the lab's mount
namespace is a file of the lab's own naming netcheck's [dns] server (never a real resolver).
A container's resolv.conf is read where its processes read it, through /proc/PID/root.

In host mode with ``[setup] socket``, nothing is run: ``podman --remote`` finds the existing
containers by name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import spec
from netcheck.adapters.docker import upstream_resolv_conf
from netcheck.adapters.lab import ToolFailed, missing_of
from netcheck.adapters.mounts import PrivateMounts
from netcheck.adapters.rootfs import IDLE_COMMAND, make_rootfs, static_busybox
from netcheck.adapters.rootfs import INSTALL_HINT as BUSYBOX_HINT
from netcheck.adapters.script import adopt_by_path
from netcheck.lab.mode import HostMode
from netcheck.ledger import kill_process, process_starttime
from netcheck.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab

INSTALL_HINT = "apt-get install -y --no-install-recommends podman runc"
RUNC = "/usr/sbin/runc"
AARDVARK_PATHS = ("/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns")
AARDVARK_HINT = "apt-get install -y --no-install-recommends aardvark-dns"
AARDVARK_PIDFILE = "aardvark.pid"  # netavark's, in its config folder's aardvark-dns/ (under the lab's /run/containers)
DNS_DOMAIN = "dns.podman"  # the search domain Podman gives a container on a network with DNS
ULIMITS = ("nofile=4096:4096", "nproc=1024:1024")


def podman_path() -> str | None:
    return shutil.which("podman")


class PodmanAdapter:
    mode = "podman"

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        dns = any(n.dns for n in topology.networks)
        return missing_of(mode, [("podman", podman_path() is not None, INSTALL_HINT)], [
            ("runc", shutil.which("runc") is not None, INSTALL_HINT), ("a static busybox", static_busybox() is not None, BUSYBOX_HINT),
            ("aardvark-dns, for a network with dns", not dns or any(Path(p).is_file() for p in AARDVARK_PATHS), AARDVARK_HINT)])

    def _configure(self, lab: ExternalLab) -> dict[str, str]:
        d = lab.workdir
        assert d is not None
        for sub in ("tmp", "volumes", "networks", "run-containers", "root", "runroot"):
            (d / sub).mkdir()
        runc = shutil.which("runc") or RUNC
        (d / "containers.conf").write_text(
            "[containers]\n"
            f"default_ulimits = {json.dumps(list(ULIMITS))}\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "none"\n'
            'lock_type = "file"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{d / "tmp"}"\n'
            f'volume_path = "{d / "volumes"}"\n'
            "[engine.runtimes]\n"
            f'runc = ["{runc}"]\n'
            "[network]\n"
            'network_backend = "netavark"\n'
            f'network_config_dir = "{d / "networks"}"\n'
        )
        network = ipv6_default_network(lab.declared)
        if network is not None:
            (d / "networks" / "podman.json").write_text(json.dumps(network, indent=2) + "\n")
        (d / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{d / "root"}"\nrunroot = "{d / "runroot"}"\n')
        return {"CONTAINERS_CONF": str(d / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(d / "storage.conf")}

    def _podman(self, lab: ExternalLab, what: str, args: list[str], *, check: bool = True) -> str:
        mounts: PrivateMounts = lab.state["podman_mounts"]
        proc = lab.run_tool(what, mounts.argv([podman_path() or "podman", *args]), env=lab.state["podman_env"], check=check)
        return proc.stdout.decode(errors="replace")

    def setup(self, lab: ExternalLab) -> None:
        t = lab.declared
        assert lab.workdir is not None
        conf = self._configure(lab)
        rootfs = make_rootfs(lab.workdir / "rootfs")
        env = lab.tool_env({**conf, "NETCHECK_ROOTFS": str(rootfs)})
        lab.state["podman_env"] = env
        upstream = lab.workdir / "resolv.conf"
        upstream.write_text(upstream_resolv_conf(t))
        lab.state["podman_mounts"] = PrivateMounts(lab, {"/run/containers": lab.workdir / "run-containers", "/etc/resolv.conf": upstream})
        if t.setup.command:
            mounts: PrivateMounts = lab.state["podman_mounts"]
            lab.run_tool("setup command", mounts.argv(t.setup.command, lab.spec_dir), env=env)
        else:
            for i, n in enumerate(t.networks):
                args = ["network", "create", *(["--subnet", str(n.subnet)] if n.subnet is not None else []), *([] if n.dns else ["--disable-dns"]), n.name]
                self._podman(lab, f"podman network create {n.name}", args)
                made = self._podman(lab, f"podman network inspect {n.name}", ["network", "inspect", "--format", "{{.NetworkInterface}}", n.name]).strip()
                if made != n.bridge:
                    raise spec.SpecError(t.source, f"network[{i}].bridge", n.bridge, f"Podman named the network's bridge {made} (it picks podman1, podman2, ... in order)",
                                      f'write bridge = "{made}" (and [[bridge]] name = "{made}")')
            for c in t.containers:
                if c.interface != "eth0":
                    raise spec.SpecError(t.source, f"container[{t.containers.index(c)}].interface", c.interface, "podman names the container's interface eth0",
                                      'write interface = "eth0", or run your own podman commands with [setup] command')
                ports = [a for p in t.publishes if p.container == c.name for a in ("-p", f"{p.host_port}:{p.port}/{p.protocol}")]
                limits = [a for u in ULIMITS for a in ("--ulimit", u)]
                search = [a for domain in c.search if domain != DNS_DOMAIN for a in ("--dns-search", domain)]
                self._podman(lab, f"podman run {c.name}", ["run", "-d", "--name", c.name, "--network", c.network or "bridge", *search, *limits, *ports,
                                                         "--rootfs", str(rootfs), *IDLE_COMMAND])
        self._adopt(lab, owned=True)
        self._find_aardvark(lab)

    def _find_aardvark(self, lab: ExternalLab) -> None:
        """Record the aardvark-dns netavark started for a network with DNS (its pidfile is in the lab's /run/containers)."""
        if not any(n.dns for n in lab.declared.networks) or lab.declared.setup.command:
            return
        assert lab.workdir is not None
        run = lab.workdir / "run-containers"

        def started() -> Path | None:
            return next((p for p in run.rglob(AARDVARK_PIDFILE) if p.read_text().strip().isdigit()), None)

        try:
            pidfile = wait_until(started, timeout=10, what=f"aardvark-dns's pidfile under {run}")
        except WaitTimeout as exc:
            raise ToolFailed(f"netavark started no aardvark-dns for the network with dns: {exc}") from None
        assert pidfile is not None
        pid = int(pidfile.read_text().strip())
        lab.record_process(pid)
        lab.state["aardvark"] = (pid, process_starttime(pid))

    def network_reload(self, lab: ExternalLab) -> None:
        """``podman network reload --all``: netavark writes the running containers' firewall rules again (the lifecycle event)."""
        self._podman(lab, "podman network reload", ["network", "reload", "--all"])

    def restart_container(self, lab: ExternalLab, name: str) -> str:
        """``podman restart NAME`` (the lifecycle event container-new-address): Podman's IPAM hands out the address
        after the last one it gave (10.88.0.2 comes back as 10.88.0.4), netavark writes its rules for it, and the
        container gets a new namespace (netns-UUID, recorded), which is adopted. Returns what was done, as a line."""
        fmt = "{{.State.Pid}} {{.NetworkSettings.SandboxKey}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        old = self._podman(lab, f"podman inspect {name}", ["inspect", "--format", fmt, name]).split()[2:]
        spec_bridge = lab.topology.container(name).bridge
        bridge = lab.kname(spec_bridge) if spec_bridge else None
        mac_before = _mac(lab, bridge)
        self._podman(lab, f"podman restart {name}", ["restart", name])
        pid, sandbox, *new = self._podman(lab, f"podman inspect {name}", ["inspect", "--format", fmt, name]).split()
        if not pid.isdigit() or pid == "0":
            raise ToolFailed(f"container {name}: podman reports no running process after its restart (pid {pid}); is it running?")
        lab.record_foreign_netns(sandbox)
        if new == old:
            raise ToolFailed(f"container {name}: podman restart handed back its address {' '.join(old)}; the event needs a new one")
        lab.readopt_container_ns(name, int(pid))
        return f"podman restart {name} (now {' '.join(new)}, it had {' '.join(old)}){_mac_moved(lab, bridge, mac_before)}"

    def _adopt(self, lab: ExternalLab, *, owned: bool, remote: list[str] | None = None) -> None:
        for c in lab.declared.containers:
            if not owned and c.netns is not None:
                lab.adopt_container_ns(c.name, c.netns, owned=False)
                continue
            args = [*(remote or []), "inspect", "--format", "{{.State.Pid}} {{.NetworkSettings.SandboxKey}}", c.name]
            out = self._podman(lab, f"podman inspect {c.name}", args) if owned else self._remote(lab, c.name, args)
            pid_text, _, sandbox = out.strip().partition(" ")
            if not pid_text.isdigit() or pid_text == "0":
                raise ToolFailed(f"container {c.name}: podman reports no running process (pid {pid_text or '?'}); is it running?")
            if owned:
                lab.record_foreign_netns(sandbox.strip())
            lab.adopt_container_ns(c.name, f"/proc/{pid_text}/ns/net", owned=owned)
            lab.roots[c.name] = Path(f"/proc/{pid_text}/root")

    def _remote(self, lab: ExternalLab, name: str, args: list[str]) -> str:
        """The user's own podman, through its service (host mode)."""
        return lab.run_tool(f"podman inspect {name}", [podman_path() or "podman", *args], env=lab.tool_env()).stdout.decode(errors="replace")

    def discover_existing(self, lab: ExternalLab) -> None:
        sock = lab.declared.setup.socket
        if sock is None:
            adopt_by_path(lab)
            return
        url = sock if sock.startswith("unix://") else f"unix://{sock}"
        self._adopt(lab, owned=False, remote=["--remote", "--url", url])

    def teardown(self, lab: ExternalLab) -> list[str]:
        errors = []
        mounts: PrivateMounts | None = lab.state.get("podman_mounts")
        if mounts is None:
            return []
        t = lab.declared
        if t.setup.teardown:
            try:
                lab.run_tool("teardown command", mounts.argv(t.setup.teardown, lab.spec_dir), env=lab.state["podman_env"])
            except ToolFailed as exc:
                errors.append(str(exc))
        try:
            ids = self._podman(lab, "podman ps", ["ps", "-aq"]).split()
            if ids:
                self._podman(lab, "podman rm", ["rm", "-f", "-t", "0", *ids])
        except ToolFailed as exc:
            errors.append(str(exc))
        aardvark = aardvark_of(lab)
        if aardvark is not None:  # netavark ends it with the network's last container; by its PID if it did not
            kill_process(*aardvark)
        mounts.close()
        return errors


def _mac(lab: ExternalLab, link: str | None) -> str | None:
    return next((x.mac for x in lab.host.links() if x.name == link), None) if link else None


def _mac_moved(lab: ExternalLab, bridge: str | None, before: str | None) -> str:
    """What a restart did to the bridge's MAC, as the end of the event's line. netavark 1.4 gives its bridge no MAC of
    its own (netavark#833 does, in 1.9), so the kernel gives it its lowest port's and moves it as ports come and go.
    A MAC that was a port's still reaches the host (a port's own MAC is a local entry of the bridge); one whose port
    is gone reaches nothing, and the other containers' neighbour entries for the gateway still name it."""
    if bridge is None:
        return ""
    links = lab.host.links()
    after = next((x.mac for x in links if x.name == bridge), None)
    if after == before:
        return f"; bridge {bridge} kept its MAC {after}"
    gone = ", which no link has now" if before not in {x.mac for x in links} else ", still a port's"
    return f"; bridge {bridge}'s MAC moved from {before}{gone}, to {after} (a bridge without a MAC of its own takes its lowest port's)"


def aardvark_of(lab: object) -> tuple[int, int | None] | None:
    """(PID, start time) of the aardvark-dns netavark started for the lab (an ExternalLab of podman), or None."""
    found: tuple[int, int | None] | None = getattr(lab, "state", {}).get("aardvark")
    return found



def ipv6_default_network(t: spec.Topology) -> dict[str, object] | None:
    """Dual stack: Podman's default network ("podman", on podman0) as a network config file with the spec's IPv4 and IPv6
    subnets, as ``podman network create --ipv6`` writes one (netavark then masquerades and publishes on both families);
    None for a spec without an IPv6 podman0 (Podman's built-in default, 10.88.0.0/16, stays)."""
    b = next((b for b in t.bridges if b.name == "podman0" and b.address6 is not None), None)
    if b is None or b.address6 is None:
        return None
    v4 = b.address.network if b.address is not None else "10.88.0.0/16"
    gw4 = b.address.ip if b.address is not None else "10.88.0.1"
    subnets = [{"subnet": str(v4), "gateway": str(gw4)}, {"subnet": str(b.address6.network), "gateway": str(b.address6.ip)}]
    return {"name": "podman", "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9", "driver": "bridge", "network_interface": "podman0",
            "created": "2026-01-01T00:00:00Z", "subnets": subnets, "ipv6_enabled": True, "internal": False, "dns_enabled": False, "ipam_options": {"driver": "host-local"}}



__all__ = ["AARDVARK_PATHS", "PodmanAdapter", "aardvark_of", "ipv6_default_network"]
