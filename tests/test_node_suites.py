"""A host served by a node is a lab to the single-host suites (netcheck.multihost.nodehost): its
reads, commands, services and probes go to the node's agent and come back as values; a failed probe
is diagnosed on the node; a fault is injected there, its undo in the node's ledger.

Cost: one NodesLab (two popen nodes) for the module's direct tests, an inner run of every suite on
tests/data/two-hosts-routed-nodes.toml and one of a suite test with a fault on
examples/multihost/two-hosts-vxlan-nodes.toml (each builds its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from hoststate import read_records

from netcheck.diagnosing import prober_for
from netcheck.evidence import ProbeRequest, ProbeResult
from netcheck.faults import FAULTS
from netcheck.kernel.inspect import conntrack, legacy_tables
from netcheck.kernel.netns import Netns, RouteEntry
from netcheck.kernel.worker import NamespaceWorker
from netcheck.kernel.xtables import read_legacy, read_nft_chains
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.nodehost import NodeHost
from netcheck.multihost.nodes import NodesLab
from netcheck.multihost.values import decode, encode, function_name, function_of

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
NODES_SPEC = ROOT / "examples" / "multihost" / "two-hosts-vxlan-nodes.toml"
ROUTED_NODES_SPEC = ROOT / "tests" / "data" / "two-hosts-routed-nodes.toml"  # host b is seed 2's: DNS and a VIP
SINGLE_HOST_SUITES = ("test_isolation.py", "test_bridge.py", "test_veth.py", "test_forwarding.py", "test_masquerade.py", "test_dnat.py",
                      "test_vip.py", "test_topology.py", "test_dns.py")
TOP = re.compile(r"^(?:E)?\s+1\. \[(\w+)\]", re.M)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodesLab, Path]]:
    run_dir = tmp_path_factory.mktemp("node-suites-run")
    with NodesLab(multi_spec.builtin("two-hosts-vxlan"), run_dir=run_dir) as lab:
        yield lab, run_dir


def _no_namespace_here(*_a: object, **_k: object) -> Any:
    raise AssertionError("the controller entered a namespace: a node-served host's kernel is the node's to touch")


def test_a_node_served_host_is_read_probed_and_served_on_its_node_alone(nodes: tuple[NodesLab, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    lab = nodes[0].hosts["b"]
    assert isinstance(lab, NodeHost)
    for where in (Netns, NamespaceWorker):  # nothing below runs in this process from here on
        monkeypatch.setattr(where, "call" if where is Netns else "submit", _no_namespace_here)
    monkeypatch.setattr(Netns, "netlink", _no_namespace_here)
    c = lab.topology.containers[0]
    ns = lab.container_ns(c.name)
    assert {link.name for link in ns.links()} == {"lo", c.interface}
    assert c.address is not None and any(a.address == c.address for a in ns.addresses())
    assert ns.route_get(ip_address("203.0.113.1")).interface == c.interface  # type: ignore[union-attr]
    assert lab.host.sysctl("net.ipv4.ip_forward") == "1"
    assert lab.kname(c.host_veth) in {p.port for p in lab.host.bridge_ports()}
    chains = read_legacy(lab.host, tuple(legacy_tables(lab.host))) + read_nft_chains(lab.host)  # readers named on the node, and a command there
    have = {r.key() for ch in chains for r in ch.rules}
    assert lab.expected_rules() and all(r.key() in have for r in lab.expected_rules())
    assert isinstance(conntrack(lab.host), list)
    listener = lab.services.listen(lab.host, "host-loopback", "tcp-echo", 0, "127.0.0.1")
    try:
        got: list[ProbeResult] = []
        r = prober_for(lab, record=got.append).tcp("host", "127.0.0.1", listener.port, target="host-loopback")
        assert r.passed and got == [r], r.explain()
    finally:
        assert lab.services.stop("host-loopback") == 1
    far = prober_for(lab).icmp(c.name, "198.51.100.1", capture=[lab.point(c.name), "wan:uplink"])
    assert far.passed and far.capture("wan:uplink").packets, far.explain()
    nobody = [ProbeRequest("icmp", c.name, ip_address(f"10.244.2.{200 + i}"), expect="block", timeout=1.0) for i in range(4)]  # no neighbour answers
    assert all(r.passed for r in prober_for(lab).many(nobody))
    assert lab.node.probe_channels >= 2, "probes sent at once waited for each other on the node"  # each waits out its timeout, beside the others


def test_a_fault_on_one_node_served_host_is_diagnosed_on_its_node_and_undone_from_its_ledger(nodes: tuple[NodesLab, Path]) -> None:
    multi, run_dir = nodes
    a, b = multi.hosts["a"], multi.hosts["b"]
    fault = FAULTS["rp-filter-strict"]
    assert a.inject([fault.name]) == [fault.name]
    record = next(entries for header, entries in read_records(run_dir) if header.get("tag") == a.tag)  # node a's own run record
    assert {"link", "sysctl"} <= {str(e["kind"]) for e in record}, record
    probes = {name: prober_for(multi.hosts[name]).icmp("netns0", "198.51.100.1") for name in ("a", "b")}
    assert probes["b"].passed, probes["b"].explain()
    broken = probes["a"]
    assert not broken.passed and broken.diagnosis is not None and broken.diagnosis.top is not None, broken.explain()
    assert broken.diagnosis.top.cause == fault.cause, broken.explain()
    assert b.faults == () and a.faults == (fault.name,)


def test_only_values_and_named_functions_cross_to_a_node() -> None:
    route = RouteEntry(ip_network("10.0.0.0/24"), ip_address("10.0.0.1"), "eth0")
    assert decode(encode([route, (1, "x"), {"k": None}])) == [route, (1, "x"), {"k": None}]
    with pytest.raises(ValueError, match="unknown type"):
        decode({"__value__": "Popen", "args": []})
    assert function_name(read_legacy) == "netcheck.kernel.xtables:read_legacy" and function_of(function_name(read_legacy)) is read_legacy
    with pytest.raises(TypeError, match="module-level function"):
        function_name(lambda: None)


# ----------------------------------------------------------------------------- the suites, through the plugin


def test_the_single_host_suites_pass_on_each_node_served_host(run_suites: Callable[..., pytest.RunResult]) -> None:
    """Host a is seed 1's, host b seed 2's (a VIP, a [dns] server): every single-host suite runs on a node-served host."""
    result = run_suites(str(ROOT / "suites"), "-v", f"--netcheck-topology={ROUTED_NODES_SPEC}")
    out = result.stdout.str()
    assert result.ret == 0 and not result.parseoutcomes().get("failed"), out[-3000:]
    for host, suites in (("a", set(SINGLE_HOST_SUITES) - {"test_dns.py", "test_vip.py"}), ("b", set(SINGLE_HOST_SUITES))):
        for suite in sorted(suites):
            assert re.search(rf"suites/{suite}::\S+\[two-hosts-routed-nodes\.{host}\] PASSED", out), f"{suite} did not pass on host {host}:\n{out[-3000:]}"
    assert "test_cross_host.py::test_every_container_reaches_every_container_on_the_other_host_with_its_source_kept[two-hosts-routed-nodes] PASSED" in out


def test_a_fault_on_node_served_hosts_fails_the_single_host_check_with_the_right_top_cause(run_suites: Callable[..., pytest.RunResult], tmp_path: Path) -> None:
    fault = FAULTS["masquerade-removed"]
    report = tmp_path / "report.html"
    result = run_suites(str(ROOT / "suites" / fault.suite_test), f"--netcheck-topology={NODES_SPEC}", f"--netcheck-fault={fault.name}", report=str(report))
    out = result.stdout.str()
    assert result.parseoutcomes().get("failed") == 2, out[-3000:]  # on each host, as on a lab held here (tests/test_diagnosis.py)
    failures = out.split("short test summary info", 1)[0]  # under CI (the CI variable set) pytest's summary repeats each message in full
    assert fault.message in out and TOP.findall(failures) == [fault.cause, fault.cause], out[-3000:]
    assert fault.cause in report.read_text(), "the node's diagnosis is not in the report"
