"""No-touch proof: a full sandbox run of the suites leaves the namespace it runs in as it found it.

The run happens inside a throwaway namespace made to look like a real host (loopback up, an
uplink with an address and a default route, forwarding on, iptables-legacy and nf_tables
rules of "another tool"), and is observed from outside, before and after: links, addresses,
routes, neighbours, net.ipv4 and net.bridge sysctls, iptables-legacy-save,
iptables-nft-save, nft list ruleset, and /run/netns (shared with the root mount namespace,
so compared minus the throwaway itself and minus other runs' labs that come and go; a
namespace named like a lab's but named in no run record must survive the run).

Cost: one full ``pytest suites/`` run, about 8 s.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hoststate import NETNS_DIR, PYTEST, REPO, Child, child_env, diff, read_records, snapshot, throwaway_netns

from netcheck.waiting import WaitTimeout, wait_until

pytestmark = pytest.mark.root

# A host with state of its own, all inside the throwaway (documentation/test-net addresses only).
HOST_SETUP = [
    # No IPv6: its address autoconfiguration would still be settling when the first snapshot is taken.
    ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
    ["ip", "link", "set", "lo", "up"],
    ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "gw0"],
    ["ip", "addr", "add", "10.99.0.2/24", "dev", "eth0"],
    ["ip", "link", "set", "gw0", "up"],
    ["ip", "link", "set", "eth0", "up"],
    ["ip", "route", "add", "default", "via", "10.99.0.1"],
    ["ip", "neigh", "add", "10.99.0.1", "lladdr", "02:00:00:00:00:01", "dev", "eth0", "nud", "permanent"],
    ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ["iptables-legacy", "-w", "-P", "FORWARD", "DROP"],
    ["iptables-legacy", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.98.0.0/16", "!", "-o", "eth0", "-j", "MASQUERADE"],
    ["iptables-nft", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    ["nft", "add", "table", "inet", "other_tool"],
    ["nft", "add", "chain", "inet", "other_tool", "input", "{ type filter hook input priority 0; policy accept; }"],
]
NETCHECK_NAME = re.compile(r"^(nc[a-z0-9]{4})-")


def recorded_netns(run_dir: Path) -> set[str]:
    return {str(e["name"]) for _, entries in read_records(run_dir) for e in entries if e["kind"] == "netns"}


def tags_in(run_dir: Path) -> set[str]:
    return {p.stem for p in run_dir.glob("*.jsonl")}


def test_a_full_suite_run_leaves_its_namespace_as_it_found_it(tmp_path):
    run_dir = tmp_path / "run"  # private: its records are this run's alone
    shared_run_dir = Path(os.environ.get("NETCHECK_RUN_DIR", "/run/netcheck"))
    # A namespace named like a netcheck lab's but named in no record: a run must never take it.
    with throwaway_netns(prefix="ntouch") as name, throwaway_netns(prefix="nc" + os.urandom(2).hex()) as canary:
        ns = f"/run/netns/{name}"
        for argv in HOST_SETUP:
            subprocess.run(["nsenter", f"--net={ns}", *argv], check=True, capture_output=True, timeout=30)
        before = snapshot(ns)
        listing_before = set(os.listdir(NETNS_DIR)) - {name, canary}
        others_before = recorded_netns(shared_run_dir)

        child = Child(["nsenter", f"--net={ns}", *PYTEST, "suites/", "-p", "no:cacheprovider", "--netcheck-report", "none", "-q"],
                      env={**child_env(), "NETCHECK_RUN_DIR": str(run_dir)}, cwd=REPO)
        ours: set[str] = set()  # the tags of the labs this run made, seen while it runs

        def ended() -> bool:
            ours.update(tags_in(run_dir))
            return child.proc.poll() is not None

        try:
            wait_until(ended, timeout=600, what="the suite run in the throwaway namespace to end")
            rc = child.finish(60)
        finally:
            child.close()
        assert rc == 0, child.output()[-3000:]
        assert ours, "no lab was seen being built: the test proves nothing"
        after = snapshot(ns)
        assert after == before, f"the run changed the namespace it ran in ({name}):\n" + diff(before, after)

        # /run/netns: nothing of ours is left, and nothing else appeared or went because of us.
        listing_after = set(os.listdir(NETNS_DIR)) - {name, canary}
        leaked = sorted(n for n in listing_after if (m := NETCHECK_NAME.match(n)) and m.group(1) in ours)
        assert not leaked, f"the run left namespaces: {leaked}"
        others = others_before | recorded_netns(shared_run_dir)
        new = listing_after - listing_before - others

        def settled() -> bool:
            new.intersection_update(os.listdir(NETNS_DIR))  # other runs' labs that come and go
            return not new

        try:
            wait_until(settled, timeout=15, what="namespaces that appeared during the run to go")
        except WaitTimeout:
            pytest.fail(f"namespaces appeared in /run/netns during the run and stayed, named in no run record: {sorted(new)}")
        assert os.path.exists(NETNS_DIR / canary), f"the run removed {canary}, a namespace no record of it names"
        assert not list(run_dir.glob("*.jsonl")), "the run left run records"


def test_faults_are_refused_in_host_mode():
    """--netcheck-fault breaks the host on purpose: with --netcheck-host it is a usage error, before anything is built.

    Run inside a throwaway namespace all the same, so that a regression breaks only that.
    """
    with throwaway_netns(prefix="nfault") as name:
        ns = f"/run/netns/{name}"
        before = snapshot(ns)
        proc = subprocess.run(["nsenter", f"--net={ns}", *PYTEST, "suites/", "-p", "no:cacheprovider", "--netcheck-report", "none",
                               "--netcheck-host", "--netcheck-fault", "ip-forward-off"],
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
        assert "cannot be used with --netcheck-host" in proc.stderr
        assert snapshot(ns) == before, diff(before, snapshot(ns))
