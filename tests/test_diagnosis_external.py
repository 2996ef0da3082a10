"""The diagnosis on a lab netcheck did not build: a tutorial-style shell script makes it with
``ip`` and ``iptables-nft`` inside a sandbox host namespace (setup mode "script"), and each
fault is injected with the plain command a user would type. The diagnosis must name the right
cause from the kernel alone: netcheck's builder never ran, so it remembers nothing (no rule
list, no interface names of its own), and every rule lives in nf_tables.

Cost: one lab per fault, about 2 s each (the script, the services, one failing probe and its
diagnosis).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from netcheck import spec
from netcheck.adapters import build_external
from netcheck.adapters.lab import ExternalLab
from netcheck.diagnose.doctor import inspect, run_doctor
from netcheck.diagnosing import DiagnosingProber

pytestmark = pytest.mark.root

SCRIPT = """#!/bin/sh
# Two containers on a bridge, masquerade out, port 5000 published: the tutorial's commands,
# with the namespace names and the uplink netcheck hands over in NETCHECK_* variables.
set -eu
for n in 0 1; do
    eval NS=\\$NETCHECK_NETNS_NETNS$n
    ip netns add "$NS"
    ip link add veth$n type veth peer name ceth$n
    ip link set veth$n up
    ip link set ceth$n netns "$NS"
    ip -n "$NS" link set lo up
    ip -n "$NS" link set ceth$n up
    ip -n "$NS" addr add 172.18.0.$(( n * 10 + 10 ))/16 dev ceth$n
done
ip link add br0 type bridge
ip link set br0 up
ip link set veth0 master br0
ip link set veth1 master br0
ip addr add 172.18.0.1/16 dev br0
ip -n "$NETCHECK_NETNS_NETNS0" route add default via 172.18.0.1
ip -n "$NETCHECK_NETNS_NETNS1" route add default via 172.18.0.1
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1
iptables-nft -t nat -A POSTROUTING -s 172.18.0.0/16 ! -o br0 -j MASQUERADE
iptables-nft -t nat -A PREROUTING -d "$NETCHECK_UPLINK_IP" -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000
iptables-nft -t nat -A OUTPUT -d "$NETCHECK_UPLINK_IP" -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000
"""

SPEC = """
name = "tutorial-script"
summary = "seed1 made by a shell script with ip and iptables-nft"

[setup]
mode = "script"
command = ["sh", "tutorial.sh"]

[host]
uplink = "eth0"
address = "203.0.113.2/24"
gateway = "203.0.113.1"

[host.sysctl]
"net.ipv4.ip_forward" = 1
"net.bridge.bridge-nf-call-iptables" = 1

[wan]
address = "203.0.113.1/24"
remote = ["198.51.100.1/32"]

[[bridge]]
name = "br0"
address = "172.18.0.1/16"

[[container]]
name = "netns0"
interface = "ceth0"
address = "172.18.0.10/16"
bridge = "br0"
gateway = "172.18.0.1"
services = [{ kind = "http", port = 5000 }]

[[container]]
name = "netns1"
interface = "ceth1"
address = "172.18.0.20/16"
bridge = "br0"
gateway = "172.18.0.1"

[[masquerade]]
source = "172.18.0.0/16"
not_out_interface = "br0"

[[publish]]
container = "netns0"
host_port = 5000
port = 5000
"""

UP_IP = "203.0.113.2"
DNAT = ["-p", "tcp", "-m", "tcp", "--dport", "5000", "-j", "DNAT", "--to-destination", "172.18.0.10:5000"]

# fault -> (the commands that break the lab, in the host unless they start with "ip -n"), the probe, the expected top cause
CASES = {
    "ip-forward-off": ([["sysctl", "-w", "net.ipv4.ip_forward=0"]], ("icmp", "netns0", "198.51.100.1", None, None), "ip_forward_off"),
    "masquerade-deleted": ([["iptables-nft", "-t", "nat", "-D", "POSTROUTING", "-s", "172.18.0.0/16", "!", "-o", "br0", "-j", "MASQUERADE"]],
                           ("tcp", "netns0", "198.51.100.1", 7, "wan"), "masquerade_missing"),
    "forward-policy-drop": ([["iptables-nft", "-P", "FORWARD", "DROP"]], ("icmp", "netns0", "172.18.0.20", None, "netns1"), "forward_drop"),
    "forward-drop-rule": ([["iptables-nft", "-I", "FORWARD", "-i", "br0", "-o", "{uplink}", "-j", "DROP"]], ("icmp", "netns0", "198.51.100.1", None, None), "forward_drop"),
    "veth-down": ([["ip", "link", "set", "veth1", "down"]], ("icmp", "netns1", "172.18.0.1", None, None), "link_down"),
    "veth-detached": ([["ip", "link", "set", "veth1", "nomaster"]], ("icmp", "netns0", "172.18.0.20", None, "netns1"), "not_in_bridge"),
    # seed 2's order: the port had an address before the bridge had its own
    "address-on-bridge-port": ([["ip", "addr", "del", "172.18.0.1/16", "dev", "br0"], ["ip", "addr", "add", "172.18.0.5/16", "dev", "veth1"],
                                ["ip", "addr", "add", "172.18.0.1/16", "dev", "br0"]], ("icmp", "netns0", "198.51.100.1", None, None), "address_on_bridge_port"),
    "no-default-route": ([["ip", "-n", "{netns0}", "route", "del", "default"]], ("icmp", "netns0", "198.51.100.1", None, None), "no_default_route"),
    "dnat-deleted": ([["iptables-nft", "-t", "nat", "-D", "PREROUTING", "-d", UP_IP, *DNAT]], ("http", "wan", UP_IP, 5000, "netns0"), "dnat_missing"),
    "output-dnat-deleted": ([["iptables-nft", "-t", "nat", "-D", "OUTPUT", "-d", UP_IP, *DNAT]], ("http", "host", UP_IP, 5000, "netns0"), "output_dnat_missing"),
    "br-netfilter-off": ([["sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0"]], ("http", "netns1", UP_IP, 5000, "netns0"), "br_netfilter_off"),
}


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[ExternalLab]:
    (tmp_path / "tutorial.sh").write_text(SCRIPT)
    (tmp_path / "tutorial.toml").write_text(SPEC)
    lab = build_external(spec.load(tmp_path / "tutorial.toml"))
    try:
        yield lab
    finally:
        lab.teardown()


def _break(lab: ExternalLab, commands: list[list[str]]) -> None:
    subs = {"{uplink}": lab.kname("eth0"), "{netns0}": lab.container_ns("netns0").name or ""}
    for argv in commands:
        argv = [subs.get(a, a) for a in argv]
        done = lab.host.run(argv)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.decode(errors='replace')}"


@pytest.mark.parametrize("fault", sorted(CASES))
def test_fault_in_a_scripted_lab_is_diagnosed(scripted: ExternalLab, fault: str) -> None:
    commands, (kind, src, dst, port, target), cause = CASES[fault]
    lab = scripted
    assert not lab.rules, "the builder made no rules here: the diagnosis must read the kernel's"
    p = DiagnosingProber(lab)
    ok = p.icmp("netns0", "198.51.100.1")
    assert ok.passed and ok.diagnosis is None, f"the scripted lab works before the fault:\n{ok.explain()}"
    _break(lab, commands)
    if kind == "icmp":
        r = p.icmp(src, dst, target=target)
    elif kind == "tcp":
        r = p.tcp(src, dst, port, target=target)
    else:
        r = p.http(src, dst, port, target=target)
    assert not r.passed, f"{fault} did not break the probe:\n{r.explain()}"
    d = r.diagnosis
    assert d is not None and d.top is not None, f"{fault}: no cause found\n{r.explain()}"
    assert d.top.cause == cause, f"{fault}: top cause [{d.top.cause}], expected [{cause}]\n{r.explain()}"
    if "iptables-nft" in commands[0][0] and cause not in ("masquerade_missing", "dnat_missing"):
        assert "iptables-nft" in d.top.summary + d.top.fix, f"{fault}: the finding should name the nf_tables rule or fix:\n{r.explain()}"


def test_doctor_on_namespaces_another_tool_made(scripted: ExternalLab, capsys: pytest.CaptureFixture[str]) -> None:
    """``netcheck doctor --host-netns HOST NS...``: no spec, no run record, only the kernel."""
    lab = scripted
    assert not inspect(lab), f"false alarms on the healthy scripted lab: {[(f.cause, f.summary) for f in inspect(lab)]}"
    _break(lab, [["ip", "link", "set", "veth1", "down"]])
    names = [lab.container_ns(c).name or "" for c in ("netns0", "netns1")]
    status = run_doctor(argparse.Namespace(targets=names, host_netns=lab.host.name, probe=False))
    out = capsys.readouterr().out
    assert status == 1, out
    assert "1. [link_down] host: veth1, the host end of" in out and "ip link set veth1 up" in out, out
