"""The datapath model without root: on planned states, on planned states changed by hand, and on
recorded kernel states (tests/data/datapath, written by tests/test_datapath_faults.py with
NETCHECK_RECORD_STATES=1 from faults injected by hand into a live lab)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from netcheck import expect, spec
from netcheck.datapath import Flow, State, Trace, record, trace
from netcheck.datapath.values import Namespace
from netcheck.kernel.xtables import XRule
from netcheck.lab import plan
from netcheck.lab.plan import planned, planned_plan, planned_ruleset

RECORDED = Path(__file__).parent / "data" / "datapath"


def recorded(name: str) -> State:
    return record.loads((RECORDED / f"{name}.json").read_text("utf-8"))


def shown(t: Trace) -> str:
    return "\n".join(t.lines())


def with_host(state: State, **changes: object) -> State:
    return replace(state, namespaces=tuple(replace(n, **changes) if n.label == "host" else n for n in state.namespaces))  # type: ignore[arg-type]


def host(state: State) -> Namespace:
    ns = state.ns("host")
    assert ns is not None
    return ns


# ----------------------------------------------------------------------------- recorded kernel states


def test_the_recorded_healthy_lab_delivers_every_kind_of_flow() -> None:
    s = recorded("healthy")
    assert s.source == "kernel"
    for flow in (Flow("netns0", "198.51.100.1", "icmp"), Flow("netns1", "203.0.113.2", "tcp", 5000), Flow("wan", "203.0.113.2", "tcp", 5000),
                 Flow("netns0", "172.18.0.20", "tcp", 7), Flow("host", "203.0.113.2", "tcp", 5000)):
        t = trace(s, flow)
        assert t.delivered, shown(t)


@pytest.mark.parametrize(("name", "flow", "disposition", "stage", "says"), [
    ("policy-blackhole", Flow("netns1", "198.51.100.1", "icmp", src="172.18.0.20"), "null-routed", "routing decision", "lookup 100"),
    ("prohibit-route", Flow("netns0", "198.51.100.1", "icmp"), "prohibited", "routing decision", "prohibit 198.51.100.1/32"),
    ("notrack-dnat", Flow("wan", "203.0.113.2", "tcp", 5000), "no-listener", "listener", "listening"),
    ("isolated-ports", Flow("netns0", "172.18.0.20", "icmp"), "dropped", "bridge", "isolated on"),
    ("mac-match", Flow("netns0", "198.51.100.1", "icmp"), "unknown", "filter FORWARD", "filter FORWARD rule 1"),
    ("established-only", Flow("netns0", "198.51.100.1", "icmp"), "dropped", "filter FORWARD", "policy DROP"),
    ("bridge-drop", Flow("netns0", "172.18.0.20", "icmp"), "dropped", "_l2 l2fwd", "rule 1"),
])
def test_a_recorded_fault_is_named_by_its_step(name: str, flow: Flow, disposition: str, stage: str, says: str) -> None:
    t = trace(recorded(name), flow)
    assert t.disposition == disposition, shown(t)
    assert t.decided is not None and t.decided.stage.endswith(stage) and says in t.decided.by, shown(t)


def test_the_recorded_dual_stack_lab_is_traced_over_ipv6() -> None:
    s = recorded("healthy-dual")
    assert trace(s, Flow("netns0", "2001:db8:2::1", "icmp")).delivered and trace(s, Flow("netns0", "198.51.100.1", "icmp")).delivered
    t = trace(recorded("ip6tables-drop"), Flow("netns0", "2001:db8:2::1", "icmp"))
    assert t.disposition == "dropped" and t.decided is not None and "ip6tables-nft" in t.decided.by and "-j DROP" in t.decided.by, shown(t)
    assert trace(recorded("ip6tables-drop"), Flow("netns0", "198.51.100.1", "icmp")).delivered, "an ip6tables rule does not explain an IPv4 failure"


def test_the_recorded_dual_stack_lab_reads_ipv6_listeners_and_policy_rules() -> None:
    """IPv6's listening sockets and ``ip -6 rule`` are in the observed state: a published port is delivered over IPv6 to
    its listener, and a prohibit rule for the outside world's sources decides the reply, its text named."""
    t = trace(recorded("healthy-dual"), Flow("wan", "2001:db8:1::2", "tcp", 5000))
    assert t.delivered and t.target == "netns0" and any(s.stage == "listener" and "[::]:5000" in s.text for s in t.steps), shown(t)
    netns0 = recorded("healthy-dual").ns("netns0")
    assert netns0 is not None and 6 in netns0.listening_known and any(r.family == 6 for r in netns0.rules)
    t = trace(recorded("policy6-prohibit"), Flow("netns0", "2001:db8:2::1", "icmp"))
    assert t.disposition == "prohibited" and t.decided is not None and t.decided.direction == "reply", shown(t)
    assert t.decided.by == "ip -6 rule 1000: from 2001:db8::/32 prohibit" and "prohibit policy rule" in t.decided.text, shown(t)
    assert trace(recorded("policy6-prohibit"), Flow("netns0", "198.51.100.1", "icmp")).delivered, "an ip -6 rule never routes IPv4"


def test_an_ipv6_wildcard_socket_read_from_proc_takes_no_ipv4() -> None:
    from netcheck.datapath.values import Listener

    assert Listener("tcp", "::", 80).takes("tcp", "10.0.0.1", 80), "a dual-stack socket (the model's plan) takes IPv4 too"
    assert not Listener("tcp", "::", 80, v6only=True).takes("tcp", "10.0.0.1", 80) and Listener("tcp", "::", 80, v6only=True).takes("tcp", "fd00::1", 80)
    assert not Listener("tcp", "0.0.0.0", 80).takes("tcp", "fd00::1", 80)


def test_the_recorded_notrack_names_the_dnat_it_skipped() -> None:
    t = trace(recorded("notrack-dnat"), Flow("wan", "203.0.113.2", "tcp", 5000))
    skipped = [s for s in t.causes() if "DNAT not applied" in s.text]
    assert skipped and "--to-destination 172.18.0.10:5000" in skipped[0].by, shown(t)


def test_the_recorded_unmodelled_match_is_unknown_whatever_the_packet() -> None:
    """`-m mac ... -j DROP` may match any frame: each flow through FORWARD is unknown, bridged ones included (br_netfilter)."""
    s = recorded("mac-match")
    for flow in (Flow("netns0", "198.51.100.1", "icmp"), Flow("netns0", "172.18.0.20", "icmp")):
        t = trace(s, flow)
        assert t.disposition == "unknown" and "this rule may match: it uses mac" in t.reason, shown(t)
    assert trace(s, Flow("host", "203.0.113.2", "tcp", 5000)).delivered, "the host's own traffic never meets FORWARD... except the DNATed one, routed out br0"


def test_established_only_lets_replies_through_but_nothing_new() -> None:
    s = recorded("established-only")
    t = trace(s, Flow("netns0", "198.51.100.1", "icmp"))
    assert "[new]" in (t.decided.text if t.decided else ""), shown(t)
    assert trace(s, Flow("host", "203.0.113.2", "tcp", 5000)).delivered, "the host's own DNATed flow is not forwarded"


# ----------------------------------------------------------------------------- planned states


def test_the_planned_seeds_deliver_what_their_suites_expect() -> None:
    s1, s2 = planned(spec.builtin("seed1")), planned(spec.builtin("seed2"))
    assert s1.source == "plan"
    for s, flow in ((s1, Flow("netns1", "203.0.113.2", "tcp", 5000)), (s1, Flow("host", "203.0.113.2", "tcp", 5000)), (s2, Flow("http3", "10.100.100.100", "tcp", 8080)),
                    (s2, Flow("wan", "10.100.100.100", "tcp", 8080)), (s2, Flow("http2", "198.51.100.1", "icmp"))):
        t = trace(s, flow)
        assert t.delivered, shown(t)
    t = trace(s1, Flow("netns1", "203.0.113.2", "tcp", 5000))
    assert any(x.stage == "nat PREROUTING" and "DNAT" in x.text and "nat PREROUTING rule 1" in x.by for x in t.steps), shown(t)
    assert any("un-DNAT" in x.text for x in t.steps if x.direction == "reply"), shown(t)


def test_without_br_netfilter_the_hairpin_reply_is_not_unnatted() -> None:
    s = planned(spec.builtin("seed1"))
    off = with_host(s, sysctls=tuple((k, 0 if k == "net.bridge.bridge-nf-call-iptables" else v) for k, v in host(s).sysctls))
    t = trace(off, Flow("netns1", "203.0.113.2", "tcp", 5000))
    assert t.disposition == "reply-not-unnatted" and "from 172.18.0.10:5000" in t.reason, shown(t)
    assert any(x.stage == "br_netfilter" and "skips" in x.text for x in t.steps), shown(t)


def test_ip_forward_off_is_named_by_its_sysctl() -> None:
    s = planned(spec.builtin("seed1"))
    off = with_host(s, sysctls=tuple((k, 0 if k == "net.ipv4.ip_forward" else v) for k, v in host(s).sysctls))
    t = trace(off, Flow("netns0", "198.51.100.1", "icmp"))
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "forwarding" and t.decided.by == "net.ipv4.ip_forward = 0", shown(t)


def test_a_forward_reject_and_a_dnat_to_loopback() -> None:
    t1 = spec.builtin("seed1")
    p = planned_plan(t1)
    s = planned(t1)
    reject = XRule("filter", "FORWARD", "REJECT", out_interface=p.kname("eth0"))
    t = trace(with_host(s, ruleset=planned_ruleset(p, [reject])), Flow("netns0", "198.51.100.1", "icmp"))
    assert t.disposition == "rejected" and t.decided is not None and "-j REJECT" in t.decided.by, shown(t)
    loop = XRule("nat", "PREROUTING", "DNAT", dst="203.0.113.2", protocol="tcp", dport=5000, to_destination="127.0.0.1:5000")
    t = trace(with_host(s, ruleset=planned_ruleset(p, [loop])), Flow("wan", "203.0.113.2", "tcp", 5000))
    assert t.disposition == "dropped" and t.decided is not None and "route_localnet = 0" in t.decided.by, shown(t)


def test_strict_rp_filter_drops_what_arrives_by_the_wrong_way() -> None:
    t1 = spec.builtin("seed2")
    s = planned(t1)
    up = planned_plan(t1).kname("enp0s3")
    strict = with_host(s, sysctls=(*host(s).sysctls, ("net.ipv4.conf.all.rp_filter", 1)))
    assert trace(strict, Flow("http2", "198.51.100.1", "icmp")).delivered, "symmetric traffic passes strict rp_filter"
    t = trace(strict, Flow("wan", "10.100.100.100", "tcp", 8080, src="10.0.0.99"))  # a source that lives behind bridge_local, arriving by the uplink
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "rp_filter" and up in t.decided.text, shown(t)


def test_a_bad_recording_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match="record it again"):
        record.loads('{"format": 0, "namespaces": []}')


def test_a_fwmark_rule_does_not_select_an_unmarked_packet_but_a_mark_makes_it_unknown() -> None:
    from ipaddress import IPv4Network

    from netcheck.datapath.values import DEFAULT_RULES, Route
    from netcheck.kernel.netns import IpRule

    t1 = spec.builtin("seed1")
    s, p = planned(t1), planned_plan(t1)
    h = host(s)
    rules = (*DEFAULT_RULES, IpRule(100, "lookup", 100, unmodelled=("fwmark", "fwmask")))
    routes = (*h.routes, Route(IPv4Network("0.0.0.0/0"), kind="blackhole", table=100))
    marked = with_host(s, rules=rules, routes=routes)
    assert trace(marked, Flow("netns0", "198.51.100.1", "icmp")).delivered, "no MARK touched the packet: its mark is 0"
    mark = XRule("nat", "PREROUTING", "MARK", in_interface=p.kname("br0"))
    t = trace(with_host(marked, ruleset=planned_ruleset(p, [mark])), Flow("netns0", "198.51.100.1", "icmp"))
    assert t.disposition == "unknown" and "fwmark" in t.reason and t.decided is not None and t.decided.stage == "routing decision", shown(t)


# ----------------------------------------------------------------------------- IPv6 and the publish features


def _set(state: State, key: str, value: int) -> State:
    return with_host(state, sysctls=tuple(sorted({**dict(host(state).sysctls), key: value}.items())))


def test_the_planned_dual_stack_lab_delivers_ipv6_through_ip6tables() -> None:
    s = planned(spec.builtin("seed1-dual"))
    for flow in (Flow("netns0", "2001:db8:2::1", "icmp"), Flow("netns1", "fd00:18::10", "tcp", 5000), Flow("wan", "2001:db8:1::2", "tcp", 5000),
                 Flow("host", "2001:db8:1::2", "tcp", 5000), Flow("netns1", "2001:db8:1::2", "tcp", 5000)):
        t = trace(s, flow)
        assert t.delivered and t.target in ("wan", "netns0"), shown(t)
    t = trace(s, Flow("netns0", "2001:db8:2::1", "tcp", 7))
    masq = [x for x in t.steps if "MASQUERADE" in x.text]
    assert masq and "ip6tables-legacy -t nat -A POSTROUTING -s fd00:18::/64" in masq[0].by and "2001:db8:1::2" in masq[0].text, shown(t)
    assert t.seen_src == "2001:db8:1::2", "the outside sees the host's IPv6 address"
    t = trace(s, Flow("wan", "2001:db8:1::2", "tcp", 5000))
    assert any("DNAT" in x.text and "[fd00:18::10]:5000" in x.text for x in t.steps), shown(t)


def test_ipv6_forwarding_and_bridge_nf_are_ipv6s_own_sysctls() -> None:
    s = planned(spec.builtin("seed1-dual"))
    off = _set(s, "net.ipv6.conf.all.forwarding", 0)
    t = trace(off, Flow("netns0", "2001:db8:2::1", "icmp"))
    assert t.disposition == "dropped" and t.decided is not None and t.decided.by == "net.ipv6.conf.all.forwarding = 0", shown(t)
    assert trace(off, Flow("netns0", "198.51.100.1", "icmp")).delivered, "IPv4 still forwards"
    t = trace(_set(s, "net.bridge.bridge-nf-call-ip6tables", 0), Flow("netns1", "2001:db8:1::2", "tcp", 5000))
    assert t.disposition == "reply-not-unnatted", shown(t)
    assert trace(_set(s, "net.bridge.bridge-nf-call-ip6tables", 0), Flow("netns1", "203.0.113.2", "tcp", 5000)).delivered, "IPv4's hairpin keeps br_netfilter"


def test_an_ip6tables_rule_never_decides_an_ipv4_packet_nor_an_iptables_rule_an_ipv6_one() -> None:
    t1 = spec.builtin("seed1-dual")
    p, s = planned_plan(t1), planned(t1)
    up = p.kname("eth0")
    drop6 = XRule("filter", "FORWARD", "DROP", out_interface=up, family=6)
    drop4 = XRule("filter", "FORWARD", "DROP", out_interface=up)
    six = with_host(s, ruleset=planned_ruleset(p, [drop6]))
    t = trace(six, Flow("netns0", "2001:db8:2::1", "icmp"))
    assert t.disposition == "dropped" and t.decided is not None and "ip6tables-legacy -t filter -A FORWARD" in t.decided.by, shown(t)
    assert trace(six, Flow("netns0", "198.51.100.1", "icmp")).delivered
    four = with_host(s, ruleset=planned_ruleset(p, [drop4]))
    assert trace(four, Flow("netns0", "2001:db8:2::1", "icmp")).delivered
    assert trace(four, Flow("netns0", "198.51.100.1", "icmp")).disposition == "dropped"


def test_a_port_bound_to_127_0_0_1_needs_route_localnet_and_its_masquerade() -> None:
    s = planned(spec.builtin("seed1-ports"))
    t = trace(s, Flow("host", "127.0.0.1", "tcp", 8102))
    assert t.delivered and t.target == "netns0" and t.seen_src == "172.18.0.1", shown(t)
    off = _set(s, "net.ipv4.conf.all.route_localnet", 0)
    t = trace(off, Flow("host", "127.0.0.1", "tcp", 8100))
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "reroute" and "route_localnet = 0" in t.decided.by, shown(t)
    t = trace(s, Flow("wan", "203.0.113.2", "tcp", 8100))
    assert t.disposition == "no-listener" and t.target == "host", "the outside addresses the uplink, where a port bound to 127.0.0.1 is not published"


def test_a_container_reaches_its_own_published_port_only_through_hairpin_mode_and_the_hairpin_masquerade() -> None:
    t1 = spec.builtin("seed1-ports")
    s, p = planned(t1), planned_plan(t1)
    t = trace(s, Flow("netns0", "203.0.113.2", "tcp", 8080))
    assert t.delivered and t.target == "netns0" and t.seen_src == "172.18.0.1", shown(t)
    veth0 = p.containers[0].host_veth
    no_mode = with_host(s, ifaces=tuple(replace(i, port=replace(i.port, hairpin=False)) if i.name == veth0 and i.port else i for i in host(s).ifaces))
    t = trace(no_mode, Flow("netns0", "203.0.113.2", "tcp", 8080))
    assert t.disposition == "dropped" and t.decided is not None and t.decided.stage == "bridge" and "hairpin off" in t.decided.by, shown(t)
    assert trace(_set(no_mode, "net.bridge.bridge-nf-call-iptables", 0), Flow("netns0", "203.0.113.2", "tcp", 8080)).delivered, "routed, not bridged: no hairpin mode needed"
    plain = [r for r in p.rules if not (r.target == "MASQUERADE" and r.dst is not None)]
    no_masq = with_host(s, ruleset=plan.ruleset_of(plain, {("filter", "FORWARD"): "ACCEPT"}))
    t = trace(no_masq, Flow("netns0", "203.0.113.2", "tcp", 8080))
    assert t.disposition == "dropped" and "martian" in t.reason, shown(t)


def test_every_port_of_a_range_and_every_protocol_is_published() -> None:
    s = planned(spec.builtin("seed1-ports"))
    for port, to in ((8200, 5200), (8202, 5202)):
        t = trace(s, Flow("wan", "203.0.113.2", "udp", port))
        assert t.delivered and t.target == "netns0" and any(f"to 172.18.0.10:{to}" in x.text for x in t.steps), shown(t)
    assert trace(s, Flow("wan", "203.0.113.2", "udp", 8203)).target == "host", "one past the range is not published"
    t = trace(s, Flow("wan", "203.0.113.2", "sctp", 9201, reply=False))
    assert t.delivered and t.target == "netns0" and any("172.18.0.10:9301" in x.text for x in t.steps), shown(t)
    t = trace(s, Flow("wan", "203.0.113.2", "sctp", 9201))
    assert t.disposition == "no-listener" and "SCTP ABORT" in t.reason, "no SCTP service runs: only the INIT's arrival is promised"
    t = trace(s, Flow("wan", "203.0.113.2", "tcp", 8053))
    assert t.target == "host", "8053 is published for udp only"


# ----------------------------------------------------------------------------- the guard: the model and the spec's rules agree


def _specs() -> list[spec.Topology]:
    """Every built-in (the opt-in ones too: dual stack, every kind of publish), every example and valid spec; another tool's
    setup with its addresses "auto" resolved as the discovery would read them back."""
    root = Path(__file__).resolve().parents[1]
    found = [spec.builtin(n) for n in spec.BUILTIN + spec.OPT_IN]
    for path in sorted([*(root / "examples").glob("*.toml"), *(root / "tests" / "specs" / "valid").glob("*.toml")]):
        found.append(_resolved(spec.load(path)))
    return found


def _resolved(t: spec.Topology) -> spec.Topology:
    """``t`` with its "auto" bridge and container addresses (and host veths) filled in, as netcheck.adapters.discover does from the kernel."""
    from ipaddress import IPv4Interface

    def address(i: int, b: spec.Bridge) -> IPv4Interface:
        known = next((c for c in t.members(b.name) if c.address is not None), None)  # a member's declared address: the bridge is on its network
        if known is None or known.address is None:
            return IPv4Interface(f"10.{200 + i}.0.1/24")
        return IPv4Interface(f"{known.gateway or known.address.network.network_address + 1}/{known.address.network.prefixlen}")

    bridges = tuple(replace(b, address=address(i, b)) if b.address is None else b for i, b in enumerate(t.bridges))
    at = {b.name: b.address for b in bridges}
    containers = []
    for j, c in enumerate(t.containers):
        if c.address is None:
            gw = at.get(c.bridge or "")
            assert gw is not None, f"{t.source}: {c.name} has no address and no bridge to take one from"
            c = replace(c, address=IPv4Interface(f"{gw.network.network_address + 10 + j}/{gw.network.prefixlen}"), gateway=c.gateway or gw.ip)
        containers.append(replace(c, host_veth=c.host_veth or f"veth{j}"))
    return replace(t, bridges=bridges, containers=tuple(containers))


class _Rules:
    """The spec's rules, as netcheck.expect answered before the model did (session 3): an independent account the model must agree with."""

    @staticmethod
    def forward_allowed(t: spec.Topology, i: str, o: str) -> bool:
        return any(f.in_interface in (None, i) and f.out_interface in (None, o) for f in t.forward_accepts) or t.host.forward_policy == "ACCEPT"

    @classmethod
    def routed(cls, t: spec.Topology, i: str, o: str, family: spec.Family) -> bool:
        return t.host.forwarding(family) and cls.forward_allowed(t, i, o) and cls.forward_allowed(t, o, i)

    @classmethod
    def reaches(cls, t: spec.Topology, a: str, b: str, family: spec.Family) -> bool:
        if expect.same_l2(t, a, b):
            br = t.container(a).bridge
            assert br is not None
            return t.host.sysctl(spec.BRIDGE_NF_SYSCTL[family]) == 0 or cls.forward_allowed(t, br, br)
        return cls.routed(t, expect.host_side(t, a), expect.host_side(t, b), family)

    @classmethod
    def reaches_outside(cls, t: spec.Topology, a: str, family: spec.Family) -> bool:
        c = t.container(a)
        if c.gateway_at(family) is None or not t.wan.remote_at(family) or not cls.routed(t, expect.host_side(t, a), t.host.uplink, family):
            return False
        return cls.masqueraded(t, a, None, family)

    @staticmethod
    def masqueraded(t: spec.Topology, a: str, out: str | None, family: spec.Family) -> bool:
        address, out = t.container(a).at(family), out or t.host.uplink
        for m in t.masquerades:
            if m.family != family or (m.source is not None and (address is None or address.ip not in m.source)):
                continue
            if (m.out_interface is not None and m.out_interface != out) or (m.not_out_interface is not None and m.not_out_interface == out):
                continue
            return True
        return False

    @classmethod
    def hairpin(cls, t: spec.Topology, src: str, dst: str, family: spec.Family) -> bool:
        if not cls.routed(t, expect.host_side(t, src), expect.host_side(t, dst), family):
            return False
        if not expect.same_l2(t, src, dst):
            return True
        return t.host.sysctl(spec.BRIDGE_NF_SYSCTL[family]) != 0 or cls.masqueraded(t, src, t.container(src).bridge, family)

    @classmethod
    def from_outside(cls, t: spec.Topology, p: spec.Publish, family: spec.Family) -> bool:
        return p.from_outside and not p.loopback and expect.published(t, p, family) and cls.routed(t, t.host.uplink, expect.host_side(t, p.container), family)

    @staticmethod
    def from_host(t: spec.Topology, p: spec.Publish, family: spec.Family) -> bool:
        return p.from_host and expect.published(t, p, family) and (not p.loopback or t.host.sysctl("net.ipv4.conf.all.route_localnet") == 1)

    @classmethod
    def from_container(cls, t: spec.Topology, p: spec.Publish, src: str, family: spec.Family) -> bool:
        return p.from_outside and not p.loopback and expect.published(t, p, family) and cls.hairpin(t, src, p.container, family)

    @classmethod
    def to_itself(cls, t: spec.Topology, p: spec.Publish, family: spec.Family) -> bool:
        side = expect.host_side(t, p.container)
        return p.from_outside and not p.loopback and p.hairpin and expect.published(t, p, family) and cls.routed(t, side, side, family)

    @classmethod
    def vip(cls, t: spec.Topology, v: spec.Vip, src: str, family: spec.Family) -> bool:
        return v.from_outside and v.at(family) is not None and cls.hairpin(t, src, v.container, family)


def _questions(t: spec.Topology) -> list[tuple[str, Callable[[], bool], Callable[[], bool]]]:
    """(question, the model's answer, the rules' answer) for every question the suites ask of ``t``, on each of its families."""
    from netcheck import expect as expectations

    out: list[tuple[str, Callable[[], bool], Callable[[], bool]]] = []
    for f in t.families:
        names = [c.name for c in t.containers if c.at(f) is not None]
        pairs = [(a, b) for a in names for b in names if a != b]
        out += [(f"v{f} {a} reaches {b}", partial(expectations.reaches, t, a, b, f), partial(_Rules.reaches, t, a, b, f)) for a, b in pairs]
        out += [(f"v{f} {a} hairpins to {b}", partial(expectations.hairpin, t, a, b, f), partial(_Rules.hairpin, t, a, b, f)) for a, b in pairs]
        out += [(f"v{f} {a} reaches the outside", partial(expectations.reaches_outside, t, a, f), partial(_Rules.reaches_outside, t, a, f)) for a in names]
        out += [(f"v{f} {a} is masqueraded", partial(expectations.masqueraded, t, a, None, f), partial(_Rules.masqueraded, t, a, None, f)) for a in names]
        for i, p in enumerate(t.publishes):
            what = f"v{f} publish[{i}] {p.protocol} {p.host_port}{f'-{p.host_ports[-1]}' if p.size > 1 else ''} bound to {p.host_address or 'the uplink'}"
            out += [(f"{what} from outside", partial(expectations.published_from_outside, t, p, f), partial(_Rules.from_outside, t, p, f)),
                    (f"{what} from the host", partial(expectations.published_from_host, t, p, f), partial(_Rules.from_host, t, p, f)),
                    (f"{what} from {p.container} itself", partial(expectations.published_to_itself, t, p, f), partial(_Rules.to_itself, t, p, f))]
            out += [(f"{what} from {o}", partial(expectations.published_from_container, t, p, o, f), partial(_Rules.from_container, t, p, o, f)) for o in names if o != p.container]
        for v in t.vips:
            out += [(f"v{f} VIP {v.chain} from {o}", partial(expectations.vip_from_container, t, v, o, f), partial(_Rules.vip, t, v, o, f)) for o in names if o != v.container]
    return out


def test_the_model_and_the_specs_rules_agree_on_every_question() -> None:
    """netcheck.expect answers the suites by tracing the planned state; on every question of every built-in (dual stack and every
    kind of publish included), example and valid spec, on each family, it gives what the spec's rules say."""
    asked, differ, families, protocols = 0, [], set(), set()
    for t in _specs():
        for what, traced, ruled in _questions(t):
            asked += 1
            families.add(what[:2])
            protocols.update(x for x in ("tcp", "udp", "sctp") if f" {x} " in what)
            said, says = traced(), ruled()
            if said != says:
                differ.append(f"{t.name}: {what}: the model says {said}, the spec's rules {says}")
    assert asked >= 300 and families == {"v4", "v6"} and protocols == {"tcp", "udp", "sctp"}, (asked, families, protocols)
    assert not differ, "\n".join(differ)


def test_no_planned_question_is_unknown_to_the_model() -> None:
    """The planned state holds only netcheck's own rules, which the model models: no trace of a suite's question ends "unknown"
    (netcheck.expect would answer it False: not promised)."""
    from netcheck import expect as expectations

    unknown = []
    for t in _specs():
        for f in t.families:
            for c in t.containers:
                for o in t.containers:
                    address = o.at(f)
                    if o.name != c.name and address is not None and c.at(f) is not None:
                        tr = expectations.trace_of(t, Flow(c.name, str(address.ip), "icmp"))
                        if tr.disposition == "unknown":
                            unknown.append(f"{t.name}: {tr.reason}")
            for p in t.publishes:
                for dst in plan.bound_addresses(t, p, f):
                    tr = expectations.trace_of(t, Flow("wan", str(dst), p.protocol, p.host_port, reply=p.protocol != "sctp"))
                    if tr.disposition == "unknown":
                        unknown.append(f"{t.name}: {tr.reason}")
    assert not unknown, "\n".join(unknown)
