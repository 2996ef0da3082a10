"""Fixes verified by re-probing (netcheck.diagnose.fixes): every fix kind renders once, round-trips as data, is
applied and undone exactly; a representative fault of each kind has its top finding's fix verified on the lab;
a wrong fix is reported as "did not help" (demoted, and undone), one that cannot be applied as "not applied".

The whole catalog is measured by bench/fix_verification.py (per cause: verified, failed, not applicable).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address
from types import SimpleNamespace

import pytest

from netcheck.evidence import (
    FIX_KINDS,
    AddAddress,
    AddRoute,
    AddRule,
    DeleteAddress,
    DeleteNeighbour,
    DeleteRoute,
    DeleteRule,
    Diagnosis,
    Finding,
    FlushConntrack,
    ProbeRequest,
    SetFdb,
    SetHairpin,
    SetLink,
    SetMaster,
    SetMtu,
    SetPolicy,
    Sysctl,
)
from netcheck.kernel.xtables import XRule

ONE_OF_EACH = (
    Sysctl("host", "net.ipv4.ip_forward", "1"),
    SetLink("host", "nc1up"),
    SetMtu("host", "nc1up", 1500),
    SetMaster("host", "nc1v0", "nc1b0"),
    SetHairpin("host", "nc1v0"),
    AddRoute("netns0", "default", "172.18.0.1"),
    AddRoute("a/host", "10.244.1.0/24", "198.51.100.130", dev="nc1vx", replace=True),
    DeleteRoute("netns0", "198.51.100.1/32", "prohibit"),
    DeleteAddress("host", "nc1v0", "172.18.255.253/16"),
    AddAddress("netns0", "ceth0", "fd00:18::10/64"),
    SetFdb("a/host", "nc1vx", "02:6e:63:00:00:02", "198.51.100.130"),
    DeleteRule("host", "legacy", XRule("filter", "FORWARD", "DROP", in_interface="nc1b0")),
    AddRule("host", "nft", XRule("nat", "POSTROUTING", "MASQUERADE", src="172.18.0.0/16"), insert=True),
    SetPolicy("host", "legacy", "filter", "FORWARD", "ACCEPT"),
    DeleteNeighbour("netns0", "ceth0", "172.18.0.1"),
    FlushConntrack("host", "172.18.0.10"),
)


def test_every_fix_kind_renders_once_and_round_trips_as_data() -> None:
    assert {type(x) for x in ONE_OF_EACH} == set(FIX_KINDS.values()), "a fix kind without an example here"
    d = Diagnosis(findings=(Finding("link_down", "host", "s", "fix", fixes=ONE_OF_EACH),))
    assert Diagnosis.from_dict(json.loads(json.dumps(asdict(d)))) == d
    commands = {type(x).__name__: x.command() for x in ONE_OF_EACH}
    assert commands["SetMaster"] == "ip link set nc1v0 master nc1b0"
    assert commands["SetHairpin"] == "bridge link set dev nc1v0 hairpin on"
    assert commands["DeleteRoute"] == "ip route del prohibit 198.51.100.1/32"
    assert commands["DeleteAddress"] == "ip address del 172.18.255.253/16 dev nc1v0"
    assert commands["AddAddress"] == "ip address add fd00:18::10/64 dev ceth0 nodad"
    assert commands["SetFdb"] == "bridge fdb replace 02:6e:63:00:00:02 dev nc1vx dst 198.51.100.130"
    assert AddRoute("a/host", "10.244.1.0/24", "198.51.100.130", dev="nc1vx", replace=True).command() == "ip route replace 10.244.1.0/24 via 198.51.100.130 dev nc1vx"


def test_a_fix_is_shown_in_the_spec_names_of_its_host_single_or_multi_host() -> None:
    from netcheck.diagnose import fixes

    names = {"nc1v0": "veth0", "nc1b0": "br0", "nc1vx": "vxlan"}
    host = SimpleNamespace(spec_name=lambda k: names.get(k, k), ledger=None, namespaces=dict)
    multi = SimpleNamespace(hosts={"a": host}, ledger=None, namespaces=dict)
    assert fixes.shown(host, SetMaster("host", "nc1v0", "nc1b0")) == "host: ip link set veth0 master br0"  # type: ignore[arg-type]
    assert fixes.shown(multi, SetFdb("a/host", "nc1vx", "02:6e:63:00:00:02", "198.51.100.130")) == \
        "a/host: bridge fdb replace 02:6e:63:00:00:02 dev vxlan dst 198.51.100.130"  # type: ignore[arg-type]
    assert fixes.shown(host, DeleteNeighbour("netns0", "ceth0", "172.18.0.1")) == "netns0: ip neigh del 172.18.0.1 dev ceth0"  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- as root: apply and undo


@pytest.fixture(scope="module")
def healthy() -> Iterator[object]:
    from netcheck.factory import LabFactory

    with LabFactory(reap=False) as labs:
        yield labs.fresh("seed1")


def _state(lab: object) -> tuple[object, ...]:
    ns, host = lab.container_ns("netns0"), lab.host  # type: ignore[attr-defined]
    return (sorted(map(str, ns.routes())), sorted(map(str, ns.addresses())), sorted(map(str, host.bridge_ports())), sorted(map(str, host.addresses())))


@pytest.mark.root
def test_each_new_fix_kind_is_applied_then_undone_exactly(healthy: object) -> None:
    from netcheck.diagnose import fixes

    lab = healthy
    ns, host = lab.container_ns("netns0"), lab.host  # type: ignore[attr-defined]
    veth, bridge = lab.kname("veth0"), lab.kname("br0")  # type: ignore[attr-defined]
    ns.run(["ip", "route", "add", "prohibit", "198.51.100.77/32"], timeout=20)
    ns.configure(addresses=[("ceth0", IPv4Interface("172.18.99.9/32"))], routes=[(IPv4Network("10.99.0.0/24"), IPv4Address("172.18.0.1"), None)])
    host.set_link(veth, master=None)
    before = _state(lab)
    cases = [
        (DeleteRoute("netns0", "198.51.100.77/32", "prohibit"), lambda: all(r.kind != "prohibit" for r in ns.routes())),
        (DeleteAddress("netns0", "ceth0", "172.18.99.9/32"), lambda: all(str(a.address) != "172.18.99.9/32" for a in ns.addresses())),
        (AddRoute("netns0", "10.99.0.0/24", "172.18.0.20", replace=True), lambda: any(str(r.gateway) == "172.18.0.20" for r in ns.routes())),
        (SetMaster("host", veth, bridge), lambda: any(p.port == veth and p.bridge == bridge for p in host.bridge_ports())),
    ]
    try:
        for fix, done in cases:
            undo = fixes.apply(lab, (fix,))  # type: ignore[arg-type]
            assert done(), f"{fix.command()} was not applied"
            undo()
            assert _state(lab) == before, f"{fix.command()} was not undone exactly"
    finally:
        host.set_link(veth, master=bridge)
        ns.deconfigure(routes=[IPv4Network("10.99.0.0/24")], addresses=[("ceth0", IPv4Interface("172.18.99.9/32"))])
        ns.run(["ip", "route", "del", "prohibit", "198.51.100.77/32"], timeout=20)
    undo = fixes.apply(lab, (SetHairpin("host", veth),))  # type: ignore[arg-type]
    assert next(p.hairpin for p in host.bridge_ports() if p.port == veth)
    undo()
    assert not next(p.hairpin for p in host.bridge_ports() if p.port == veth), "hairpin mode was not set back"


# ----------------------------------------------------------------------------- as root: representative faults

OUT = ip_address("198.51.100.1")
# (fault, probe, the top cause, the fix kinds its verified fix holds): together every kind a cause builds
REPRESENTATIVE = [
    ("uplink-down", ProbeRequest("icmp", "netns0", OUT), "link_down", {"SetLink", "AddRoute"}),
    ("detached-from-bridge", ProbeRequest("icmp", "netns0", ip_address("172.18.0.20"), target="netns1"), "not_in_bridge", {"SetMaster", "DeleteNeighbour"}),
    ("arp-ignore-host", ProbeRequest("icmp", "netns0", OUT), "arp_ignore", {"Sysctl", "DeleteNeighbour"}),
    ("masquerade-removed", ProbeRequest("icmp", "netns0", OUT), "masquerade_missing", {"AddRule", "FlushConntrack"}),
    ("container-prohibit-route", ProbeRequest("icmp", "netns0", OUT), "blackhole_route", {"DeleteRoute"}),
    ("address-on-bridge-port", ProbeRequest("icmp", "netns0", OUT), "address_on_bridge_port", {"DeleteAddress"}),
    ("daemon-chain-drop", ProbeRequest("icmp", "netns0", OUT), "forward_drop", {"DeleteRule"}),
    ("uplink-mtu-low", ProbeRequest("icmp", "netns0", OUT, size=1500), "path_mtu_low", {"SetMtu"}),
]


@pytest.mark.root
@pytest.mark.parametrize(("fault", "request_", "cause", "kinds"), REPRESENTATIVE, ids=[r[0] for r in REPRESENTATIVE])
def test_the_top_findings_fix_is_verified_on_the_lab(fault: str, request_: ProbeRequest, cause: str, kinds: set[str]) -> None:
    from netcheck import faults
    from netcheck.diagnosing import DiagnosingProber
    from netcheck.factory import LabFactory

    with LabFactory(reap=False) as labs:
        lab = labs.fresh("seed1")
        faults.inject(lab, [fault])
        r = DiagnosingProber(lab).send(request_)
        assert r.diagnosis is not None and r.diagnosis.top is not None, f"{fault}: no diagnosis ({r.verdict})"
        top = r.diagnosis.top
        assert top.cause == cause and top.verified.startswith("fix verified: the probe passes after"), f"{fault}:\n{r.diagnosis.render()}"
        assert {type(x).__name__ for x in top.fixes} >= kinds, f"{fault}: the verified fix holds {[type(x).__name__ for x in top.fixes]}"
        assert not DiagnosingProber(lab).send(request_).passed, f"{fault}: the fix was not undone (the lab is not as the fault left it)"


@pytest.mark.root
def test_a_cross_host_fix_is_verified_by_repeating_the_failed_check() -> None:
    from netcheck.diagnose import crosshost
    from netcheck.faults import CROSS_HOST_FAULTS
    from netcheck.multihost import probes as cross_probes
    from netcheck.multihost import spec as multi_spec
    from netcheck.multihost.lab import MultiLab

    with MultiLab(multi_spec.builtin("two-hosts-vxlan")) as multi:
        CROSS_HOST_FAULTS["vxlan-fdb-wrong"].inject(multi)
        dst = str(multi.topology.host("b").topology.containers[0].address.ip)  # type: ignore[union-attr]

        def again() -> str | None:
            r = cross_probes.prober(multi, "a").icmp("netns0", dst)
            return None if r.verdict == "reached" else r.verdict

        assert again() is not None, "the fault did not break the overlay"
        top = crosshost.diagnose(multi, "a", "b", again).findings[0]
        assert top.cause == "vxlan_fdb_wrong" and top.verified.startswith("fix verified"), top
        assert [type(x).__name__ for x in top.fixes] == ["SetFdb"]
        assert again() is not None, "the fdb fix was not undone"


@pytest.mark.root
def test_a_wrong_fix_is_reported_as_not_helping_and_one_that_cannot_be_applied_as_not_applied() -> None:
    """A deliberately wrong fix value (a sysctl that does not matter here) must never pass as verified."""
    from netcheck import faults
    from netcheck.diagnose import fixes
    from netcheck.factory import LabFactory
    from netcheck.probes import Prober

    with LabFactory(reap=False) as labs:
        lab = labs.fresh("seed1")
        faults.inject(lab, ["ip-forward-off"])
        request = ProbeRequest("icmp", "netns0", OUT)
        rp = lab.host.sysctl("net.ipv4.conf.all.rp_filter")
        wrong = Finding("ip_forward_off", "host", "wrong", "fix", score=90, fixes=(Sysctl("host", "net.ipv4.conf.all.rp_filter", "2" if rp != "2" else "0"),))
        missing = Finding("link_down", "host", "missing", "fix", score=80, fixes=(SetLink("host", "nc-no-such"),))
        right = Finding("ip_forward_off", "host", "right", "fix", score=70, fixes=(Sysctl("host", "net.ipv4.ip_forward", "1"),))
        out = fixes.verify(lab, request, Prober(lab).conclusive, [wrong, missing, right], 0.5)
        by = {f.summary: f for f in out}
        assert by["wrong"].verified.startswith("fix did not help: the probe still failed after host: sysctl -w net.ipv4.conf.all.rp_filter="), by["wrong"].verified
        assert by["missing"].verified.startswith("fix not applied"), by["missing"].verified
        assert by["right"].verified.startswith("fix verified"), by["right"].verified
        assert (out[0].summary, out[-1].summary) == ("right", "wrong"), "the verified fix ranks first, the one that did not help last"
        assert lab.host.sysctl("net.ipv4.conf.all.rp_filter") == rp and lab.host.sysctl("net.ipv4.ip_forward") == "0", "a fix was not undone"


def test_every_kind_of_fix_has_its_one_applier() -> None:
    from netcheck.diagnose import fixes

    assert set(FIX_KINDS.values()) <= set(fixes._apply.registry), f"fix kinds with no applier: {sorted(t.__name__ for t in set(FIX_KINDS.values()) - set(fixes._apply.registry))}"
    with pytest.raises(fixes.NotApplicable, match="no way to apply a str"):
        fixes._apply("not a fix", None, None)  # type: ignore[arg-type]
