"""docker: a dockerd of the lab's own, started inside the sandbox host namespace.

``dockerd`` runs with its own data root, exec root, socket, pidfile and an empty config
file, in a private mount namespace (its mounts die with it), inside the sandbox host. No
registry is reachable, so the image is imported from a busybox root filesystem made locally
(``docker import``). Each spec container becomes ``docker run -d --name NAME -p HOST:PORT
IMAGE`` (or the spec's ``command`` runs, with DOCKER_HOST set, and creates containers named
like the spec's). The daemon runs with ``"live-restore": true``, so that a daemon restart (the lifecycle event
docker-restart) keeps its containers running, as a host set up for restarts does. Docker sets the FORWARD policy to DROP and accepts traffic to and from
docker0 by its own rules: a spec for it says so (forward_policy = "DROP" and two
forward_accept entries). netcheck finds each container's PID with ``docker inspect``, names its
namespace, and serves its HTTP and echo services inside it.

A spec's ``[[network]]`` becomes ``docker network create -o com.docker.network.bridge.name=BRIDGE
[--subnet S] NAME``, and a container with ``network = NAME`` joins it (``docker run --network``).
There Docker's embedded resolver answers at 127.0.0.11: dockerd serves it inside the container's
namespace, reached through DNAT rules Docker writes in the container's own nat table
(DOCKER_OUTPUT, DOCKER_POSTROUTING), and it forwards other names to the resolvers of the host's
/etc/resolv.conf. dockerd sees a resolv.conf of the lab's own there (bind-mounted in its private
mount namespace) that names netcheck's [dns] server, or the outside world's address, where
nothing answers: never a real resolver. A container's resolv.conf is read where its processes
read it, through /proc/PID/root.

In host mode with ``[setup] socket`` nothing is started: the existing daemon's containers are
found by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import resolvconf, spec
from netcheck.adapters.lab import ToolFailed, ToolMissing, missing_of
from netcheck.adapters.mounts import unshare_argv, wait_unshared
from netcheck.adapters.rootfs import IDLE_COMMAND, make_rootfs, static_busybox
from netcheck.adapters.rootfs import INSTALL_HINT as BUSYBOX_HINT
from netcheck.adapters.script import adopt_by_path
from netcheck.kernel.xtables import XRule
from netcheck.lab.mode import HostMode
from netcheck.ledger import ContainerEntry, kill_process, process_starttime
from netcheck.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab

INSTALL_HINT = "apt-get install -y --no-install-recommends docker.io"
DOCKER_CLIS = ("/usr/bin/docker",)  # docker.io's client, the daemon's own version, before any other on PATH
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
EMBEDDED_RESOLVER = IPv4Address("127.0.0.11")  # on a user-defined network
EMBEDDED_DNS_CHAINS = ("DOCKER_OUTPUT", "DOCKER_POSTROUTING")  # its DNAT and SNAT, in each container's own nat table


def docker_cli() -> str | None:
    return next((p for p in DOCKER_CLIS if os.path.isfile(p)), None) or shutil.which("docker")


class DockerAdapter:
    mode = "docker"

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        return missing_of(mode, [("the docker client", docker_cli() is not None, INSTALL_HINT)],
                          [("dockerd", shutil.which("dockerd") is not None, INSTALL_HINT), ("a static busybox", static_busybox() is not None, BUSYBOX_HINT)])

    def _docker(self, lab: ExternalLab, what: str, args: list[str], *, input: bytes | None = None, check: bool = True, timeout: float = 120.0) -> str:
        cli = docker_cli()
        if cli is None:
            raise ToolMissing(f"the docker client is not installed (install it: {INSTALL_HINT})")
        proc = lab.run_tool(what, [cli, "-H", lab.state["docker_host"], *args], env=lab.state["docker_env"], input=input, check=check, timeout=timeout)
        return proc.stdout.decode(errors="replace")

    def _start_daemon(self, lab: ExternalLab) -> None:
        d = lab.workdir
        assert d is not None
        root = d / "docker"
        if not root.exists():
            root.mkdir()
            t = lab.declared
            # No docker0 when every container is on a [[network]]: an idle bridge without ports would be a link that is down.
            none = {"bridge": "none"} if t.containers and all(c.network for c in t.containers) and not t.setup.command else {}
            (root / "daemon.json").write_text(json.dumps({"live-restore": True, **none, **ipv6_daemon_config(t)}) + "\n")
        sock = root / "docker.sock"
        host_resolv = root / "resolv.conf"
        host_resolv.write_text(upstream_resolv_conf(lab.declared))
        argv = ["dockerd", "--config-file", str(root / "daemon.json"), "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                "-H", f"unix://{sock}", "--pidfile", str(root / "docker.pid"), "--storage-driver", "vfs"]
        # dockerd's /etc/resolv.conf is the lab's (its mount namespace is its own): what it copies into containers and forwards to.
        bound = ["sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(host_resolv), *argv]
        log = (root / "dockerd.log").open("wb")
        try:
            proc = lab.host.spawn(unshare_argv(bound), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        lab.record_process(proc.pid, argv)
        lab.state["dockerd"] = (proc, process_starttime(proc.pid))
        lab.state["docker_host"] = f"unix://{sock}"
        image = lab.state.get("docker_image")  # a restarted daemon's commands still get the lab's image
        lab.state["docker_env"] = lab.tool_env({"DOCKER_HOST": f"unix://{sock}", **({"NETCHECK_IMAGE": image} if image else {})})
        wait_unshared(proc.pid, "dockerd")
        cli = docker_cli()
        assert cli is not None

        def up() -> bool:
            if proc.poll() is not None:
                raise ToolFailed(f"dockerd exited with status {proc.returncode} while starting:\n{_tail(root / 'dockerd.log')}")
            if not sock.exists():
                return False
            return subprocess.run([cli, "-H", f"unix://{sock}", "version"], capture_output=True, timeout=30, check=False).returncode == 0

        try:
            wait_until(up, timeout=START_TIMEOUT, what=f"dockerd to answer on {sock}", describe=lambda: _tail(root / "dockerd.log", 600))
        except WaitTimeout as exc:
            raise ToolFailed(str(exc)) from None

    def restart_daemon(self, lab: ExternalLab) -> None:
        """Stop the lab's dockerd (SIGTERM, by its PID) and start it again on the same state (the lifecycle event docker-restart)."""
        proc, start = lab.state["dockerd"]
        if not kill_process(proc.pid, start, timeout=STOP_TIMEOUT):
            raise ToolFailed(f"dockerd (pid {proc.pid}) did not stop within {STOP_TIMEOUT:g}s")
        proc.wait(10)
        self._start_daemon(lab)

    def restart_container(self, lab: ExternalLab, name: str) -> str:
        """The container stopped and started again with a new address (the lifecycle event container-new-address).

        Docker's IPAM hands a restarted container the first free address, its old one; on a busy host another
        container started meanwhile takes it. So: ``docker stop NAME``, ``docker run`` of an address taker
        (TAG-taker, on the container's network; recorded before it runs, its process by PID), ``docker start NAME`` (the next
        free address; Docker writes its DNAT for it), the taker removed; then the container's new namespace
        adopted. Returns what was done, as a line."""
        c = lab.declared.container(name)
        old = self._address(lab, name)
        taker = f"{lab.tag}-taker"
        image = lab.state.get("docker_image")
        if image is None:
            raise ToolFailed(f"container {name}: the lab's image is unknown (a [setup] command made the containers), so no address taker can run")
        self._docker(lab, f"docker stop {name}", ["stop", name])
        try:
            network = ["--network", c.network] if c.network else []
            assert lab.ledger is not None
            lab.ledger.record(ContainerEntry(lab.state["docker_host"], taker))  # before it exists: a crash leaves no taker behind
            self._docker(lab, "docker run (address taker)", ["run", "-d", "--name", taker, *network, image, *IDLE_COMMAND])
            lab.record_process(self._pid(lab, taker))  # live-restore: it would outlive a crashed run's dockerd
            self._docker(lab, f"docker start {name}", ["start", name])
        finally:
            self._docker(lab, "docker rm (address taker)", ["rm", "-f", taker], check=False)
        new = self._address(lab, name)
        lab.readopt_container_ns(name, self._pid(lab, name))
        return f"docker stop {name}; docker run {taker} (takes {old}); docker start {name} (now {new}, it had {old}); docker rm -f {taker}"

    def _pid(self, lab: ExternalLab, name: str) -> int:
        pid = self._docker(lab, f"docker inspect {name}", ["inspect", "--format", "{{.State.Pid}}", name]).strip()
        if not pid.isdigit() or pid == "0":
            raise ToolFailed(f"container {name}: docker reports no running process (pid {pid or '?'}); is it running?")
        return int(pid)

    def _address(self, lab: ExternalLab, name: str) -> str:
        return self._docker(lab, f"docker inspect {name}", ["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name]).strip()

    def _image(self, lab: ExternalLab) -> str:
        assert lab.workdir is not None
        rootfs = make_rootfs(lab.workdir / "rootfs")
        tar = lab.workdir / "rootfs.tar"
        with tarfile.open(tar, "w") as archive:
            archive.add(rootfs, arcname=".")
        image = f"netcheck-busybox:{lab.tag}"
        self._docker(lab, "docker import", ["import", "-", image], input=tar.read_bytes())
        return image

    def setup(self, lab: ExternalLab) -> None:
        t = lab.declared
        self._start_daemon(lab)
        image = self._image(lab)
        lab.state["docker_image"] = image
        lab.state["docker_env"]["NETCHECK_IMAGE"] = image
        if t.setup.command:
            lab.run_tool("setup command", t.setup.command, env=lab.state["docker_env"])
        else:
            for i, n in enumerate(t.networks):
                if not n.dns:
                    raise spec.SpecError(t.source, f"network[{i}].dns", False, "Docker's user-defined networks always have the embedded resolver (127.0.0.11)",
                                      "remove dns = false")
                subnet = ["--subnet", str(n.subnet)] if n.subnet is not None else []
                self._docker(lab, f"docker network create {n.name}", ["network", "create", "--driver", "bridge", "-o", f"com.docker.network.bridge.name={n.bridge}",
                                                                      *subnet, n.name])
            for i, c in enumerate(t.containers):
                if c.interface != "eth0":
                    raise spec.SpecError(t.source, f"container[{i}].interface", c.interface, "docker names the container's interface eth0",
                                      'write interface = "eth0", or run your own docker commands with [setup] command')
                ports = [a for p in t.publishes if p.container == c.name for a in ("-p", f"{p.host_port}:{p.port}/{p.protocol}")]
                network = ["--network", c.network] if c.network else []
                search = [a for domain in c.search for a in ("--dns-search", domain)]
                self._docker(lab, f"docker run {c.name}", ["run", "-d", "--name", c.name, *network, *search, *ports, image, *IDLE_COMMAND])
        self._adopt(lab, owned=True)

    def _adopt(self, lab: ExternalLab, *, owned: bool) -> None:
        for c in lab.declared.containers:
            if not owned and c.netns is not None:
                lab.adopt_container_ns(c.name, c.netns, owned=False)
                continue
            pid = self._pid(lab, c.name)
            lab.adopt_container_ns(c.name, f"/proc/{pid}/ns/net", owned=owned)
            lab.roots[c.name] = Path(f"/proc/{pid}/root")

    def discover_existing(self, lab: ExternalLab) -> None:
        sock = lab.declared.setup.socket
        if sock is None:
            adopt_by_path(lab)
            return
        host = sock if sock.startswith("unix://") else f"unix://{sock}"
        lab.state["docker_host"] = host
        lab.state["docker_env"] = lab.tool_env({"DOCKER_HOST": host})
        self._adopt(lab, owned=False)

    def teardown(self, lab: ExternalLab) -> list[str]:
        errors: list[str] = []
        daemon = lab.state.get("dockerd")
        if daemon is None:
            return errors
        t = lab.declared
        if t.setup.teardown:
            try:
                lab.run_tool("teardown command", t.setup.teardown, env=lab.state["docker_env"])
            except ToolFailed as exc:
                errors.append(str(exc))
        proc, start = daemon
        if proc.poll() is None:
            try:
                ids = self._docker(lab, "docker ps", ["ps", "-aq"], timeout=30).split()
                if ids:
                    self._docker(lab, "docker rm", ["rm", "-f", *ids], timeout=60)
            except (ToolFailed, ToolMissing) as exc:
                errors.append(str(exc))
            kill_process(proc.pid, start, timeout=STOP_TIMEOUT)
        proc.wait(10)
        return errors


def embedded_resolver_rule(t: spec.Topology, c: spec.Container, rule: XRule) -> bool:
    """Is ``rule``, in container ``c``'s own tables, one Docker writes for the embedded resolver (nat, to or from 127.0.0.11)?"""
    on = t.network_of(c)
    if t.setup.mode != "docker" or on is None or rule.table != "nat" or rule.chain not in ("OUTPUT", "POSTROUTING", *EMBEDDED_DNS_CHAINS):
        return False
    return str(EMBEDDED_RESOLVER) in ((rule.dst or "").split("/")[0], (rule.src or "").split("/")[0])


def upstream_resolv_conf(t: spec.Topology) -> str:
    """The /etc/resolv.conf a tool's resolver forwards to in the lab: netcheck's [dns] server, or the outside
    world's own address, where nothing serves DNS (a query is refused there and never goes further)."""
    return resolvconf.render((str(t.dns.address if t.dns is not None else t.wan.address.ip),))


def ipv6_daemon_config(t: spec.Topology) -> dict[str, object]:
    """Dual stack: the daemon.json keys that give docker0 the spec's IPv6 prefix (``dockerd --ipv6 --fixed-cidr-v6``), with Docker's
    ip6tables rules (MASQUERADE, DNAT; experimental in Docker 20.10); nothing for a spec without an IPv6 docker0."""
    six = next((b.address6 for b in t.bridges if b.name == "docker0" and b.address6 is not None), None)
    if six is None:
        return {}
    return {"ipv6": True, "fixed-cidr-v6": str(six.network), "experimental": True, "ip6tables": True}


def _tail(path: Path, size: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


__all__ = ["EMBEDDED_DNS_CHAINS", "EMBEDDED_RESOLVER", "DockerAdapter", "docker_cli", "embedded_resolver_rule", "ipv6_daemon_config", "upstream_resolv_conf"]
