"""The Vagrantfile's two-machine variant, run on two VMs made on this machine (no Vagrant, no box).

An opt-in manual run, not part of CI::

    sudo .venv/bin/python tools/two_vms.py            # build the image once (cached), boot a and b, run, clean
    sudo .venv/bin/python tools/two_vms.py --keep-vms # ... and leave them up for a look (netcheck clean removes them)

1. **Image** (cached in ``/var/cache/netcheck/vm``, rebuilt when this script's package list or
   pyproject.toml changes): Debian 12 by ``debootstrap`` from Debian's mirror, its kernel, openssh-server,
   python3, iproute2, iptables, nftables; the repository at ``/vagrant`` and its pip dependencies in
   ``/vagrant/.venv``, installed from a wheelhouse built on this machine (the VMs have no route out).
   debootstrap's own mounts are made in a mount namespace of its own (``unshare --mount``), so they
   end with it, whatever happens.
2. **Network**: one namespace of netcheck's own, ``TAG-vms``, holds everything the VMs are wired to:
   bridge ``pv`` (their private network, eth1: 198.51.100.11 and .12, as the Vagrantfile has them) and
   bridge ``mg`` (management, eth0: 2001:db8:17::11 and ::12, the namespace's end 2001:db8:17::1), each
   VM's taps on them. qemu runs under ``nsenter --net`` of that namespace, so its taps are made there.
   The namespace has no other link: no NAT, no default route, no packet from the VMs leaves it, and the
   root namespace is not touched (``ip -br link`` is compared before and after).
3. **Per VM**: a copy-on-write overlay of the image and a small seed disk (its name and addresses,
   ssh host keys and the root key made for this run: a reaches b over ssh as the Vagrantfile sets up).
4. **Run**: the current tree is copied to /vagrant on both; on a, ``pytest suites/ --netcheck-topology
   examples/multihost/two-vms-vxlan.toml`` (the Vagrantfile's command), then the single-host suites on
   each VM; junit xml, the HTML report and the serial logs come back to ``reports/two-vms-TAG/``.
5. Everything is recorded in run record TAG (netcheck.ledger) before it exists: the folder, the
   namespace, each qemu by PID. The VMs are powered off, then the record is undone; if this script
   dies, ``netcheck clean`` removes the same.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import netns_path
from netcheck.ledger import DirEntry, FileEntry, Ledger, NetnsEntry, ProcessEntry, kill_process, process_starttime
from netcheck.naming import new_tag
from netcheck.waiting import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/netcheck/vm")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv", "udev", "kmod", "linux-image-amd64", "openssh-server", "openssh-client", "python3", "python3-venv",
    "iproute2", "iptables", "nftables", "conntrack", "procps", "util-linux", "e2fsprogs", "graphviz", "python3-nftables", "ca-certificates",
)
IMAGE_VERSION = "1"  # bump when the image's own configuration below changes
IMAGE_SIZE = "4G"
SPEC = "examples/multihost/two-vms-vxlan.toml"  # the Vagrantfile's
MGMT_NS = "2001:db8:17::1"
KVM_CPU = "host,-arch-capabilities"  # qemu 7.2 aborts setting MSR 0x10a under a nested KVM that lacks it


@dataclass(frozen=True)
class Vm:
    name: str
    private: str  # eth1, as the Vagrantfile's private_network
    mgmt: str  # eth0, management from the namespace

    def mac(self, nic: int) -> str:
        return f"52:54:00:17:{nic:02x}:{ord(self.name):02x}"


VMS = (Vm("a", "198.51.100.11", "2001:db8:17::11"), Vm("b", "198.51.100.12", "2001:db8:17::12"))

# On each VM's seed disk (vdb), run at boot by the image's unit: name, addresses, keys. No DHCP, no
# default route, nothing else. The NICs are found by MAC and named eth0 (management) and eth1 (private).
SETUP = r"""#!/bin/sh
set -e
. /run/netcheck-seed/node.env
nic() { for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$1" ] && basename "$d"; done; true; }
until [ -n "$(nic "$MGMT_MAC")" ] && [ -n "$(nic "$PRIVATE_MAC")" ]; do sleep 1; done
mg=$(nic "$MGMT_MAC"); pv=$(nic "$PRIVATE_MAC")
[ "$mg" = eth0 ] && [ "$pv" = eth1 ] || { ip link set "$mg" name ncmg; ip link set "$pv" name ncpv; ip link set ncmg name eth0; ip link set ncpv name eth1; }
hostname "netcheck-$NAME"
ip link set lo up
ip link set eth0 up
ip -6 addr add "$MGMT/64" dev eth0 nodad
ip link set eth1 up
ip addr add "$PRIVATE/24" dev eth1
install -d -m 700 /root/.ssh
install -m 600 /run/netcheck-seed/id_ed25519 /root/.ssh/id_ed25519
install -m 644 /run/netcheck-seed/id_ed25519.pub /root/.ssh/id_ed25519.pub
install -m 600 /run/netcheck-seed/id_ed25519.pub /root/.ssh/authorized_keys
install -m 644 /run/netcheck-seed/known_hosts /root/.ssh/known_hosts
printf 'Host 198.51.100.11 198.51.100.12\n  StrictHostKeyChecking yes\n  BatchMode yes\n' > /root/.ssh/config
install -m 600 /run/netcheck-seed/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 /run/netcheck-seed/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
"""
# In the image: mount the seed disk, run its setup.sh (a copy, so the disk can be unmounted), unmount. It
# waits on the kernel's /dev and /sys itself, not on udev's device units: under tcg, udev's coldplug
# overran systemd's 90 s wait for them (seen), and ssh failed for want of its host key.
SEED_UNIT = """[Unit]
Description=netcheck VM: name, addresses and keys from the seed disk (vdb)
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=900
ExecStartPre=/bin/sh -c 'until [ -b /dev/vdb ]; do sleep 1; done'
ExecStartPre=/bin/mkdir -p /run/netcheck-seed
ExecStartPre=/bin/mount -o ro /dev/vdb /run/netcheck-seed
ExecStartPre=/bin/cp /run/netcheck-seed/setup.sh /run/netcheck-setup.sh
ExecStart=/bin/sh -e /run/netcheck-setup.sh
ExecStartPost=/bin/umount /run/netcheck-seed

[Install]
WantedBy=multi-user.target
"""
# Modules the labs need that nothing loads on demand (the bridge's netfilter hook, the legacy xtables core).
MODULES = ("br_netfilter", "ip_tables", "ip6_tables", "iptable_filter", "iptable_nat", "iptable_mangle", "iptable_raw")


def log(msg: str) -> None:
    print(f"[two-vms {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure, stop with its output."""
    r = subprocess.run(list(argv), capture_output=True, check=False, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({r.returncode}):\n{r.stdout.decode(errors='replace')[-3000:]}{r.stderr.decode(errors='replace')[-3000:]}")
    return r  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- the image


def image_key() -> str:
    h = hashlib.sha256()
    h.update(f"{IMAGE_VERSION} {SUITE} {' '.join(PACKAGES)}\n".encode())
    h.update((REPO / "pyproject.toml").read_bytes())
    h.update(" ".join(MODULES).encode())  # the seed unit is brought up to date in place: update_seed_unit
    return h.hexdigest()[:12]


def debs_key() -> str:
    return hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]


def image_dir(cache: Path) -> Path:
    return cache / f"debian12-{image_key()}"


def build_image(cache: Path, ledger: Ledger, tag: str) -> Path:
    """The cached image folder (base.img, vmlinuz, initrd.img); built first if missing."""
    final = image_dir(cache)
    if (final / "base.img").exists():
        log(f"image: cached {final}")
        return final
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f".build-{tag}"
    ledger.create(DirEntry(str(work)), lambda: work.mkdir())
    root = work / "root"
    t0 = time.monotonic()
    wheels = work / "wheels"
    log("image: wheelhouse of netcheck and its dependencies, built on this machine")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--use-pep517", "--wheel-dir", str(wheels), str(REPO)])
    run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), "setuptools>=77", "wheel"])
    debs = cache / f"debs-{debs_key()}.tgz"  # the .debs debootstrap fetched, kept: a rebuild installs without downloading
    if not debs.exists():
        log(f"image: debootstrap --make-tarball {debs.name} (downloads from Debian's mirror)")
        part = cache / f".{debs.name}.{tag}"
        ledger.record(FileEntry(str(part)))
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", f"--make-tarball={part}", SUITE, str(work / "fetch"), MIRROR])
        os.rename(part, debs)
    log(f"image: debootstrap {SUITE} into {root} (a mount namespace of its own)")
    run(["unshare", "--mount", "--propagation", "private", "--", "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
         f"--unpack-tarball={debs}", SUITE, str(root), MIRROR])
    log(f"image: debootstrap done after {time.monotonic() - t0:.0f} s")
    copy_tree(REPO, root / "vagrant")
    shutil.copytree(wheels, root / "tmp" / "wheels")
    # pip in the chroot reads only the wheelhouse (--no-index): nothing is fetched from inside.
    in_root = f"mount -t proc proc {shlex.quote(str(root / 'proc'))} && exec chroot {shlex.quote(str(root))} sh -c " + shlex.quote(
        "python3 -m venv /vagrant/.venv && /vagrant/.venv/bin/pip install -q --no-index --find-links /tmp/wheels -e /vagrant")
    run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", in_root])
    shutil.rmtree(root / "tmp" / "wheels")
    configure_root(root)
    kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
    shutil.copy(kernel, work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")
    log("image: mkfs.ext4 -d (no loop mount)")
    run(["mkfs.ext4", "-q", "-F", "-L", "netcheck", "-d", str(root), str(work / "base.img"), IMAGE_SIZE])
    shutil.rmtree(root)
    shutil.rmtree(wheels)
    os.rename(work, final)  # the recorded folder is gone (undo tolerates that); the cache is kept on purpose
    log(f"image: built {final} in {time.monotonic() - t0:.0f} s")
    return final


UNIT_PATH = "/etc/systemd/system/netcheck-vm-seed.service"


def update_seed_unit(image: Path) -> None:
    """Make the image's seed unit this script's (debugfs, no mount), so a change to it needs no rebuild."""
    base = str(image / "base.img")
    now = subprocess.run(["debugfs", "-R", f"cat {UNIT_PATH}", base], capture_output=True, check=False).stdout.decode(errors="replace")
    if now == SEED_UNIT:
        return
    unit = image / "seed.service"
    unit.write_text(SEED_UNIT)
    run(["debugfs", "-w", "-f", "-", base], input=f"rm {UNIT_PATH}\ncd /etc/systemd/system\nwrite {unit} netcheck-vm-seed.service\n".encode())
    unit.unlink()
    log(f"image: seed unit updated in {base}")


def configure_root(root: Path) -> None:
    """The image's own files: fstab, the seed-disk setup, sshd for root by key only, no network of its own."""
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / "etc/hostname").write_text("netcheck\n")
    (root / "etc/systemd/system/netcheck-vm-seed.service").write_text(SEED_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "netcheck-vm-seed.service").symlink_to("/etc/systemd/system/netcheck-vm-seed.service")
    (root / "etc/modules-load.d/netcheck.conf").write_text("".join(f"{m}\n" for m in MODULES))
    (root / "etc/ssh/sshd_config.d/netcheck.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each run's come from its seed disk
    # Serial login for a person's look (root, no password, on the console only).
    run(["chroot", str(root), "passwd", "-d", "root"])


# The repository as the VMs see it at /vagrant, as the Vagrantfile's rsync__exclude has it: without .git, .venv, caches and reports.
TREE_SKIP = frozenset({".git", ".venv", ".tox", ".vagrant", ".mypy_cache", ".ruff_cache", ".pytest_cache", "reports", "__pycache__"})


def copy_tree(src: Path, dest: Path) -> None:
    """The repository into the image's /vagrant."""
    shutil.copytree(src, dest, ignore=lambda _d, names: [n for n in names if n in TREE_SKIP], dirs_exist_ok=True)


def tree_tar(dest: Path) -> Path:
    """The repository as a tar, copied to each VM's /vagrant at each run."""
    with tarfile.open(dest, "w") as tar:
        for child in sorted(REPO.iterdir()):
            if child.name not in TREE_SKIP:
                tar.add(child, arcname=child.name, filter=lambda ti: None if Path(ti.name).name in TREE_SKIP else ti)
    return dest


# ----------------------------------------------------------------------------- the VMs


class TwoVms:
    """The namespace, the two VMs and the run's folder, all in run record ``tag``."""

    def __init__(self, image: Path, ledger: Ledger, tag: str, *, memory_mb: int, accel: str) -> None:
        self.image = image
        self.ledger = ledger
        self.tag = tag
        self.memory_mb = memory_mb
        self.accel = accel
        self.folder = Path("/tmp") / f"netcheck-{tag}-vms"
        self.netns = f"{tag}-vms"
        self.ns: Netns | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def ssh_argv(self, vm: Vm, command: str) -> list[str]:
        return ["ssh", "-F", str(self.folder / "ssh_config"), f"root@{vm.mgmt}", command]

    def ssh(self, vm: Vm, command: str, *, timeout: float = 600, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        assert self.ns is not None
        return self.ns.run(self.ssh_argv(vm, command), timeout=timeout, input=input)

    def start(self) -> None:
        ledger, f = self.ledger, self.folder
        ledger.create(DirEntry(str(f)), lambda: f.mkdir(mode=0o700))
        self.ns = ns = ledger.create(NetnsEntry(self.netns), lambda: Netns.create(self.netns, "two VMs"))
        for scope in ("all", "default"):
            ns.set_sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)
            ns.set_sysctl(f"net.ipv4.conf.{scope}.forwarding", 0)
            ns.set_sysctl(f"net.ipv6.conf.{scope}.forwarding", 0)
        self._ip("link", "set", "lo", "up")
        for bridge in ("pv", "mg"):
            self._ip("link", "add", bridge, "type", "bridge")
            self._ip("link", "set", bridge, "up")
        self._ip("-6", "addr", "add", f"{MGMT_NS}/64", "dev", "mg", "nodad")
        self._keys()
        for vm in VMS:
            self._boot(vm)
        for vm in VMS:
            self._wait_ssh(vm)

    def _ip(self, *args: str) -> None:
        assert self.ns is not None
        r = self.ns.run(["ip", *args])
        if r.returncode != 0:
            raise SystemExit(f"ip {' '.join(args)} in netns {self.netns}: {r.stderr.decode().strip()}")

    def _keys(self) -> None:
        f = self.folder
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"netcheck {self.tag} nodes", "-f", str(f / "id_ed25519")])
        known = []
        for vm in VMS:
            seed = f / f"seed-{vm.name}"
            seed.mkdir()
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"netcheck {self.tag} {vm.name}", "-f", str(seed / "ssh_host_ed25519_key")])
            host_key = " ".join((seed / "ssh_host_ed25519_key.pub").read_text().split()[:2])
            known.append(f"{vm.private},{vm.mgmt} {host_key}\n")
            (seed / "node.env").write_text(f"NAME={vm.name}\nPRIVATE={vm.private}\nMGMT={vm.mgmt}\nMGMT_MAC={vm.mac(0)}\nPRIVATE_MAC={vm.mac(1)}\n")
            (seed / "setup.sh").write_text(SETUP)
        for vm in VMS:
            seed = f / f"seed-{vm.name}"
            shutil.copy(f / "id_ed25519", seed / "id_ed25519")
            shutil.copy(f / "id_ed25519.pub", seed / "id_ed25519.pub")
            (seed / "known_hosts").write_text("".join(known))
            run(["mkfs.ext4", "-q", "-F", "-d", str(seed), str(f / f"seed-{vm.name}.img"), "8M"])
        (f / "known_hosts").write_text("".join(known))
        (f / "ssh_config").write_text("\n".join([
            "Host *", "  User root", f"  IdentityFile {f / 'id_ed25519'}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {f / 'known_hosts'}",
            "  StrictHostKeyChecking yes", "  BatchMode yes", "  ConnectTimeout 5", "  LogLevel ERROR", ""]))

    def qemu_argv(self, vm: Vm, disk: Path, taps: dict[str, str]) -> list[str]:
        """qemu for ``vm``: its overlay and seed disk, its two NICs on taps of the run's namespace (no user-mode network, no port forward)."""
        f = self.folder
        return [
            "qemu-system-x86_64", "-name", f"netcheck-{self.tag}-{vm.name}", "-machine", f"q35,accel={self.accel}",
            "-cpu", "max" if self.accel == "tcg" else KVM_CPU, "-smp", "1", "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", f"file:{f / f'serial-{vm.name}.log'}",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet",
            "-drive", f"file={disk},if=virtio,format=qcow2", "-drive", f"file={f / f'seed-{vm.name}.img'},if=virtio,format=raw,readonly=on",
            "-netdev", f"tap,id=mg,ifname={taps['mg']},script=no,downscript=no", "-device", f"virtio-net-pci,netdev=mg,mac={vm.mac(0)},addr=0x3",
            "-netdev", f"tap,id=pv,ifname={taps['pv']},script=no,downscript=no", "-device", f"virtio-net-pci,netdev=pv,mac={vm.mac(1)},addr=0x4",
        ]

    def launch_argv(self, qemu: Sequence[str]) -> tuple[str, ...]:
        """qemu inside the run's namespace (its taps are there), recorded by PID before it starts: nsenter
        execs a shell, which waits for a line, then execs qemu (one PID throughout)."""
        return ("nsenter", f"--net={netns_path(self.netns)}", "sh", "-c", 'read _ && exec "$@"', "sh", *qemu)

    def _boot(self, vm: Vm) -> None:
        assert self.ns is not None
        f = self.folder
        disk = f / f"{vm.name}.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image / "base.img"), str(disk)])
        taps = {"mg": f"tm{vm.name}", "pv": f"tp{vm.name}"}
        for bridge, tap in taps.items():
            self._ip("tuntap", "add", tap, "mode", "tap")
            self._ip("link", "set", tap, "master", bridge, "up")
        qemu = self.qemu_argv(vm, disk, taps)
        argv = self.launch_argv(qemu)
        with open(f / f"qemu-{vm.name}.err", "wb") as err:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        self.ledger.record(ProcessEntry(p.pid, process_starttime(p.pid), tuple(qemu[:3])))
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
        self.procs[vm.name] = p
        log(f"vm {vm.name}: qemu pid {p.pid} ({self.accel}, {self.memory_mb} MiB, 1 vCPU)")

    def _wait_ssh(self, vm: Vm) -> None:
        assert self.ns is not None
        p = self.procs[vm.name]

        def up() -> bool:
            if p.poll() is not None:
                err = (self.folder / f"qemu-{vm.name}.err").read_text(errors="replace")
                raise SystemExit(f"qemu of vm {vm.name} exited ({p.returncode}): {err.strip()}")
            assert self.ns is not None
            s = self.ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                s.settimeout(1)
                if s.connect_ex((vm.mgmt, 22)) != 0:
                    return False
            finally:
                s.close()
            return self.ssh(vm, "true", timeout=30).returncode == 0

        def tail() -> str:
            lines = (self.folder / f"serial-{vm.name}.log").read_text(errors="replace").splitlines()
            return " | ".join(lines[-3:])

        try:
            wait_until(up, timeout=1200 if self.accel == "tcg" else 240, what=f"ssh to vm {vm.name} at {vm.mgmt}", describe=tail)
        except WaitTimeout as exc:
            raise SystemExit(f"{exc} (its console: {self.folder / f'serial-{vm.name}.log'}, copied to the results)") from None

    def stop(self) -> list[str]:
        """Power the VMs off (bounded), then undo the record: qemu by PID if still there, the namespace, the folder."""
        for vm in VMS:
            if vm.name in self.procs and self.procs[vm.name].poll() is None:
                self.ssh(vm, "systemctl poweroff", timeout=30)
        for name, p in self.procs.items():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                log(f"vm {name}: not off after 60 s; the record's undo ends it by PID")
        if self.ns is not None:
            self.ns.close()
            self.ns = None
        errors = self.ledger.undo_and_close()
        for p in self.procs.values():
            p.wait(30)
        return errors


# ----------------------------------------------------------------------------- the run


def root_links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout


def accel(image: Path, ledger: Ledger) -> str:
    """kvm if a KVM guest boots the image's kernel to its first line within 30 s, else tcg. /dev/kvm opening
    is not enough: in a nested VM it may open and run no guest (seen: a Firecracker guest's /dev/kvm)."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return "tcg"
    # No NIC at all (-nodefaults, no -netdev), so it may run in this namespace; recorded by PID like the VMs.
    qemu = ["qemu-system-x86_64", "-machine", "q35,accel=kvm", "-cpu", KVM_CPU, "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-kernel", str(image / "vmlinuz"), "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"]
    p = subprocess.Popen(["sh", "-c", 'read _ && exec "$@"', "sh", *qemu], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    entry = ledger.record(ProcessEntry(p.pid, process_starttime(p.pid), tuple(qemu[:3])))
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"go\n")
    p.stdin.close()
    os.set_blocking(p.stdout.fileno(), False)
    seen = bytearray()

    def booting() -> bool:
        chunk = p.stdout.read() if p.stdout else None
        if chunk:
            seen.extend(chunk)
        return b"Linux version" in seen or p.poll() is not None

    try:
        wait_until(booting, timeout=30, what="a KVM guest's first kernel line")
        ok = b"Linux version" in seen
    except WaitTimeout:
        ok = False
    finally:
        kill_process(entry.pid, entry.starttime)
        p.wait(10)
        p.stdout.close()
    log("kvm: " + ("boots a guest" if ok else f"/dev/kvm opens but no guest ran in 30 s ({bytes(seen[-200:]).decode(errors='replace').strip() or 'no output'}): tcg"))
    return "kvm" if ok else "tcg"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"where the image is cached (default {CACHE})")
    parser.add_argument("--memory", type=int, default=1536, help="MiB per VM (default 1536)")
    parser.add_argument("--accel", choices=("kvm", "tcg"), default=None, help="default: kvm if /dev/kvm opens, else tcg")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the image and stop")
    parser.add_argument("--no-single", action="store_true", help="skip the single-host suites on each VM")
    parser.add_argument("--keep-vms", action="store_true", help="leave the VMs up (netcheck clean removes them)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("two_vms.py needs root (debootstrap, a namespace, taps): run it with sudo")
    for tool in ("debootstrap", "qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ssh", "ssh-keygen", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install debootstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client util-linux")
    links_before = root_links()
    tag = new_tag()
    ledger = Ledger(tag, topology="two-vms", mode="vm")
    log(f"run {tag}: record {ledger.path}")
    times: dict[str, float] = {}
    t = time.monotonic()
    try:
        image = build_image(args.cache, ledger, tag)
    except BaseException:
        ledger.undo_and_close()
        raise
    update_seed_unit(image)
    times["image"] = time.monotonic() - t
    if args.build_only:
        ledger.undo_and_close()
        return 0
    vms = TwoVms(image, ledger, tag, memory_mb=args.memory, accel=args.accel or accel(image, ledger))
    results = REPO / "reports" / f"two-vms-{tag}"
    results.mkdir(parents=True)
    codes: dict[str, int] = {}
    try:
        t = time.monotonic()
        vms.start()
        times["boot"] = time.monotonic() - t
        log(f"both VMs answer ssh after {times['boot']:.0f} s")
        tar = tree_tar(vms.folder / "tree.tar")
        for vm in VMS:
            r = vms.ssh(vm, "cd /vagrant && find . -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + && tar -xf - && mkdir -p reports", input=tar.read_bytes())
            if r.returncode != 0:
                raise SystemExit(f"copying the tree to vm {vm.name}: {r.stderr.decode().strip()}")
        a = VMS[0]
        cross = f"cd /vagrant && .venv/bin/pytest suites/ -p no:cacheprovider --netcheck-topology {SPEC} --junitxml=reports/cross-host.xml"
        log(f"vm a: {cross}")
        t = time.monotonic()
        r = vms.ssh(a, cross, timeout=1800)
        times["cross-host suite"] = time.monotonic() - t
        codes["cross-host"] = r.returncode
        (results / "cross-host.out").write_bytes(r.stdout + r.stderr)
        log(f"cross-host suite: exit {r.returncode} in {times['cross-host suite']:.0f} s: {last_line(r.stdout)}")
        if not args.no_single:
            for vm in VMS:
                single = "cd /vagrant && .venv/bin/pytest suites/ -p no:cacheprovider --junitxml=reports/single-host.xml"
                t = time.monotonic()
                r = vms.ssh(vm, single, timeout=1800)
                times[f"single-host suites on {vm.name}"] = time.monotonic() - t
                codes[f"single-host {vm.name}"] = r.returncode
                (results / f"single-host-{vm.name}.out").write_bytes(r.stdout + r.stderr)
                log(f"single-host suites on {vm.name}: exit {r.returncode} in {times[f'single-host suites on {vm.name}']:.0f} s: {last_line(r.stdout)}")
        for vm in VMS:
            r = vms.ssh(vm, "cd /vagrant/reports && tar -cf - .", timeout=120)
            out = results / vm.name
            out.mkdir()
            subprocess.run(["tar", "-C", str(out), "-xf", "-"], input=r.stdout, check=False)
    finally:
        for vm in VMS:
            for name in (f"serial-{vm.name}.log", f"qemu-{vm.name}.err"):
                if (vms.folder / name).exists():
                    shutil.copy(vms.folder / name, results / name)
        if args.keep_vms:
            ledger.keep()
            log(f"VMs left up: ssh -F {vms.folder}/ssh_config root@{VMS[0].mgmt} under nsenter --net={netns_path(vms.netns)}; netcheck clean removes them")
        else:
            errors = vms.stop()
            if errors:
                log("left behind: " + "; ".join(errors) + " (try: netcheck clean)")
    links_after = root_links()
    same = links_before == links_after
    log("root namespace links: " + ("unchanged (ip -br link)" if same else f"CHANGED:\nbefore:\n{links_before}\nafter:\n{links_after}"))
    for what, seconds in times.items():
        log(f"time: {what}: {seconds:.0f} s")
    log(f"results in {results}")
    return 0 if same and all(c == 0 for c in codes.values()) else 1


def last_line(out: bytes) -> str:
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


if __name__ == "__main__":
    sys.exit(main())
