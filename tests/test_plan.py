"""The plan: what a spec implies (names, addresses, routes, rules, flows), worked out once and
without the kernel; the builder, the diagnosis, the doctor and the diagram read it."""

from __future__ import annotations

from netcheck import spec
from netcheck.diagnose.doctor import expected_flows
from netcheck.diagnose.rules import access_flow
from netcheck.kernel.xtables import XRule, parse_save
from netcheck.lab import plan
from netcheck.naming import KernelNames
from netcheck.report.diagram import to_dot
from netcheck.report.model import topology_view

NAMES = KernelNames("nct000")


def test_seed1_plan_names_every_object_in_kernel_names() -> None:
    p = plan.plan(spec.builtin("seed1"), NAMES)
    assert [(b.name, b.kname) for b in p.bridges] == [("br0", "nct000b0")]
    c = p.containers[0]
    assert (c.netns, c.host_veth, c.bridge, str(c.address)) == ("nct000-netns0", "nct000v0", "nct000b0", "172.18.0.10/16")
    assert [str(dst) for dst, _via in c.routes] == ["0.0.0.0/0"]
    assert all(r.comment == NAMES.comment for r in p.rules)


def test_seed1_rules_as_the_tutorial_writes_them() -> None:
    rules = [r.render() for r in plan.spec_rules(spec.builtin("seed1"), lambda name: name)]
    assert rules == [
        "-t nat -A POSTROUTING -s 172.18.0.0/16 ! -o br0 -j MASQUERADE",
        "-t nat -A PREROUTING -d 203.0.113.2 -p tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000",
        "-t nat -A OUTPUT -d 203.0.113.2 -p tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000",
    ]


def test_seed2_vip_chain_and_its_jumps() -> None:
    rules = plan.spec_rules(spec.builtin("seed2"), lambda name: name)
    vip = [r for r in rules if r.chain == "VIP-EXAMPLE"]
    assert [r.to_destination for r in vip] and all(r.target == "DNAT" for r in vip)
    assert {r.chain for r in rules if r.target == "VIP-EXAMPLE"} == {"PREROUTING", "OUTPUT"}


def test_accesses_are_the_dnat_flows_of_the_diagnosis() -> None:
    t = spec.builtin("seed1")
    flows = [access_flow(a) for a in plan.accesses(t)]
    assert [(f.source, f.dst_addr, f.dport, f.target, f.target_addr, f.target_port, f.via) for f in flows] == [
        ("wan", "203.0.113.2", 5000, "netns0", "172.18.0.10", 5000, "publish"),
        ("host", "203.0.113.2", 5000, "netns0", "172.18.0.10", 5000, "publish"),
    ]
    assert all(f.dnat and f.expected == "reach" for f in flows)


def test_doctor_flows_come_from_the_plan() -> None:
    t = spec.builtin("seed1")

    class View:
        topology = t

    flows = list(expected_flows(View()))  # type: ignore[arg-type]
    assert [(f.source, f.dst_addr, f.via) for f in flows] == [(r.source, r.dst_addr, r.via) for r in plan.reaches(t)]
    assert ("netns0", "198.51.100.1", "outside") in [(f.source, f.dst_addr, f.via) for f in flows]


def test_masquerade_for_a_container_is_the_declared_rule_or_the_usual_one() -> None:
    t = spec.builtin("seed1")
    assert plan.masquerade_for(t, "netns0", lambda n: n).render() == "-t nat -A POSTROUTING -s 172.18.0.0/16 ! -o br0 -j MASQUERADE"
    bare = spec.builtin("seed2-veth")
    if not bare.masquerades:
        assert plan.masquerade_for(bare, bare.containers[0].name, lambda n: n).out_interface == bare.host.uplink


def test_the_diagram_shows_the_planned_masquerade() -> None:
    dot = to_dot(topology_view(spec.builtin("seed1")))
    assert "iptables -t nat -A POSTROUTING -s 172.18.0.0/16 ! -o br0 -j MASQUERADE" in dot


def test_one_rendering_serves_building_undoing_and_reading_back() -> None:
    rule = XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", in_interface="!br0", protocol="tcp", dport=80, to_destination="10.0.0.2:8080", comment="netcheck nct000")
    assert rule.argv("-D")[:4] == ["-t", "nat", "-D", "PREROUTING"]
    saved = parse_save("*nat\n" + " ".join(rule.argv("-A")[2:]).replace("netcheck nct000", '"netcheck nct000"') + "\nCOMMIT\n")
    assert saved[("nat", "PREROUTING")] == [rule]
