"""tools/two_vms.py, without booting anything: it runs the Vagrantfile's two-machine variant (same spec,
same addresses, same /vagrant layout), and its VMs are wired to taps of the run's namespace only."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import netcheck.multihost.spec as multi_spec

ROOT = Path(__file__).resolve().parent.parent


def two_vms() -> ModuleType:
    spec = importlib.util.spec_from_file_location("two_vms", ROOT / "tools" / "two_vms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["two_vms"] = module
    spec.loader.exec_module(module)
    return module


def test_it_runs_the_vagrantfiles_spec_on_the_vagrantfiles_addresses() -> None:
    tv = two_vms()
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    assert tv.SPEC in vagrantfile
    nodes = dict(re.findall(r'"([ab])" => "(198\.51\.100\.\d+)"', vagrantfile))
    assert {vm.name: vm.private for vm in tv.VMS} == nodes
    topology = multi_spec.load(ROOT / tv.SPEC)
    assert [h.node for h in topology.hosts] == [f"ssh=root@{vm.private}//python=/vagrant/.venv/bin/python" for vm in tv.VMS]
    assert {h.nic for h in topology.hosts} == {"eth1"}  # the seed setup puts the private address on eth1
    assert 'dev eth1' in tv.SETUP and "python3 -m venv /vagrant/.venv" in (ROOT / "tools" / "two_vms.py").read_text()


def test_qemu_runs_in_the_runs_namespace_on_its_taps_only(tmp_path: Path) -> None:
    tv = two_vms()
    vms = tv.TwoVms(tmp_path, ledger=None, tag="nctest", memory_mb=1024, accel="kvm")
    vm = tv.VMS[0]
    qemu = vms.qemu_argv(vm, tmp_path / "a.qcow2", {"mg": "tma", "pv": "tpa"})
    argv = vms.launch_argv(qemu)
    assert argv[:2] == ("nsenter", "--net=/run/netns/nctest-vms")
    netdevs = [qemu[i + 1] for i, a in enumerate(qemu) if a == "-netdev"]
    assert netdevs == ["tap,id=mg,ifname=tma,script=no,downscript=no", "tap,id=pv,ifname=tpa,script=no,downscript=no"]
    assert not [a for a in qemu if "hostfwd" in a or a.startswith("user")], qemu  # no user-mode network, no port forward
    assert "-nodefaults" in qemu and qemu[qemu.index("-smp") + 1] == "1"
