"""A node reached over ssh on this machine: Debian's ``sshd`` in a namespace of netcheck's own, on a
documentation address, with a throwaway key and config in the run's own folder.

It proves the ssh path of ``netcheck.multihost.nodes`` without a second machine: the gateway is a
real ``ssh=root@198.51.100.126`` one, whose client reaches the namespace through a ``ProxyCommand``
(``nsenter --net`` into it, then a relay of stdin and stdout to the sshd's port). Everything is
recorded in its own ledger before it exists, the sshd by PID before it starts::

    with SandboxSshd() as sshd:
        NodesLab(topology, gateways={"b": sshd.gateway}).build()

``python -m netcheck.multihost.sshnode relay HOST PORT`` is the relay.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
from ipaddress import IPv4Interface
from pathlib import Path
from types import TracebackType

from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import netns_path
from netcheck.lab import LabError
from netcheck.lab.build import ns_defaults
from netcheck.ledger import DirEntry, EmptyDirEntry, Ledger, NetnsEntry, ProcessEntry, default_run_dir, default_work_root, process_starttime
from netcheck.naming import new_tag
from netcheck.waiting import wait_until

ADDRESS = IPv4Interface("198.51.100.126/32")  # documentation space, on the namespace's lo
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"  # sshd refuses to start without it


class SandboxSshd:
    """An sshd serving as a node, in namespace ``TAG-ssh`` (see the module's docstring)."""

    def __init__(self, *, run_dir: Path | None = None, python: str = sys.executable, tag: str | None = None) -> None:
        self.tag = tag or new_tag()
        self.run_dir = run_dir or default_run_dir()
        self.python = python
        self.netns = f"{self.tag}-ssh"
        self.folder = default_work_root() / f"netcheck-{self.tag}-ssh"
        self.ledger: Ledger | None = None
        self.ns: Netns | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def gateway(self) -> str:
        """The execnet spec of this node."""
        return f"ssh=root@{ADDRESS.ip}//ssh_config={self.folder / 'ssh_config'}//python={self.python}"

    def __enter__(self) -> SandboxSshd:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> SandboxSshd:
        if not os.path.exists(SSHD):
            raise LabError(f"{SSHD} is missing: install Debian's openssh-server (sudo bash bootstrap.sh tests installs it)")
        self.ledger = Ledger(self.tag, topology="sshd", mode="sandbox", run_dir=self.run_dir)
        try:
            self._start(self.ledger)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, ledger: Ledger) -> None:
        ledger.create(DirEntry(str(self.folder)), lambda: self.folder.mkdir(mode=0o700))
        if not os.path.isdir(PRIVSEP_DIR):
            ledger.create(EmptyDirEntry(PRIVSEP_DIR, shared=True), lambda: os.mkdir(PRIVSEP_DIR, 0o755))
        self.ns = ledger.create(NetnsEntry(self.netns), lambda: Netns.create(self.netns, "ssh node"))
        self.ns.call(ns_defaults, self.ns)
        self.ns.configure(up=["lo"], addresses=[("lo", ADDRESS)])
        f = self.folder
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"netcheck {self.tag}", "-f", str(f / key)], check=True, capture_output=True)
        shutil.copy(f / "client_key.pub", f / "authorized_keys")
        host_key = (f / "host_key.pub").read_text().split()
        (f / "known_hosts").write_text(f"{ADDRESS.ip} {host_key[0]} {host_key[1]}\n")
        (f / "sshd_config").write_text("\n".join([
            f"ListenAddress {ADDRESS.ip}:22", f"HostKey {f / 'host_key'}", f"AuthorizedKeysFile {f / 'authorized_keys'}", "PidFile none",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no", "X11Forwarding no", "AllowTcpForwarding no", "PrintMotd no", "LogLevel ERROR", ""]))
        relay = f"nsenter --net={netns_path(self.netns)} {self.python} -m netcheck.multihost.sshnode relay %h %p"
        (f / "ssh_config").write_text("\n".join([
            f"Host {ADDRESS.ip}", "  User root", f"  IdentityFile {f / 'client_key'}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {f / 'known_hosts'}",
            "  StrictHostKeyChecking yes", "  BatchMode yes", f"  ProxyCommand {relay}", ""]))
        # Recorded by PID before sshd starts: a shell waits for a line, then execs sshd (same PID, same start time).
        argv = ("sh", "-c", f'read _ && exec {SSHD} -D -e -f "$0"', str(f / "sshd_config"))
        self.process = self.ns.spawn(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ledger.record(ProcessEntry(self.process.pid, process_starttime(self.process.pid), argv))
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()
        wait_until(self._listening, timeout=10, what=f"sshd listening on {ADDRESS.ip}:22 in netns {self.netns}",
                   describe=lambda: "exited" if self.process is not None and self.process.poll() is not None else "not yet")

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise LabError(f"sshd in netns {self.netns} exited ({self.process.returncode}): {err.strip()}")
        assert self.ns is not None
        s = self.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            return s.connect_ex((str(ADDRESS.ip), 22)) == 0
        finally:
            s.close()

    def stop(self) -> None:
        """End sshd (by its PID, from the ledger), remove the namespace and the folder."""
        if self.ns is not None:
            self.ns.close()
            self.ns = None
        if self.ledger is None:
            return
        errors = self.ledger.undo_and_close()  # ends sshd by its recorded PID
        self.ledger = None
        if self.process is not None:
            self.process.wait(10)
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None
        if errors:
            raise LabError(f"sshd node {self.tag} left: " + "; ".join(errors) + " (try: netcheck clean)")


def relay(host: str, port: int) -> int:
    """Shuttle stdin to a TCP connection and the connection to stdout (ssh's ProxyCommand)."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(None)
    fds = [0, sock.fileno()]
    while True:
        ready, _, _ = select.select(fds, [], [])
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                sock.shutdown(socket.SHUT_WR)
                fds.remove(0)
            else:
                sock.sendall(data)
        if sock.fileno() in ready:
            data = sock.recv(65536)
            if not data:
                return 0
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "relay":
        sys.exit(relay(sys.argv[2], int(sys.argv[3])))
    sys.exit("usage: python -m netcheck.multihost.sshnode relay HOST PORT")


__all__ = ["ADDRESS", "SandboxSshd", "relay"]
