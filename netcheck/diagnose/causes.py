"""The registry of causes: one declaration per cause the diagnosis can name.

Each ``Cause`` holds its id, what it means, how it is recognised, its severity, how its fix is
built as values (``netcheck.evidence``: ``Sysctl``, ``SetLink``, ``AddRoute``, ``DeleteRule``,
``AddRule``, ``SetPolicy``; none: a command for people only), and its row in docs/diagnosis.md.
The faults that inject a cause are those of the catalogs (``netcheck.faults.FAULTS`` and
``CROSS_HOST_FAULTS``, and the tools' ``netcheck.adapters.faults.EXTERNAL_FAULTS``) that name it as their expected cause.

Everything else follows from it: ``netcheck causes`` (``--markdown`` prints the docs table,
which tests/test_causes.py diffs against docs/diagnosis.md), the check that every id a rule
names is declared here (tests/test_cli.py), and the expected causes of the fault tests (each
fault's ``cause`` must be declared, with its fix kinds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["breaks", "exposes", "hygiene", "bug"]
SEVERITIES: dict[str, str] = {
    "breaks": "a flow the spec promises fails",
    "exposes": "a flow that must be blocked gets through",
    "hygiene": "the state differs from the spec without breaking a probe",
    "bug": "netcheck itself failed",
}
FIX_VALUES = ("Sysctl", "SetLink", "SetMtu", "SetMaster", "SetHairpin", "AddRoute", "DeleteRoute", "AddAddress", "DeleteAddress", "SetFdb",
              "DeleteRule", "AddRule", "SetPolicy", "DeleteNeighbour", "FlushConntrack")


@dataclass(frozen=True)
class Cause:
    id: str
    means: str  # markdown: `code` for sysctls and commands
    recognised: str  # the evidence the rules read to name it
    severity: Severity = "breaks"
    fix: str = ""  # how the fix is built; "" when it is a command for people only
    fixes: tuple[str, ...] = ()  # the fix values its findings carry (names in FIX_VALUES)

    def row(self, faults: Iterable[str] = ()) -> str:
        """Its row in docs/diagnosis.md's table of causes."""
        cells = [f"`{self.id}`", self.means, self.recognised, self.severity, self.fix or "a command to paste (not applied)", ", ".join(f"`{f}`" for f in faults) or "-"]
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


CAUSES: dict[str, Cause] = {c.id: c for c in [
    Cause("link_down", "a link on the path is admin down (or has no carrier)", "netlink link state, for the links of the path first",
          fix="`SetLink` up (and `AddRoute` of the default route that went down with the uplink)", fixes=("SetLink", "AddRoute")),
    Cause("lo_down", "a namespace's `lo` is down", "netlink; ranked first for traffic to 127.0.0.1", fix="`SetLink` lo up", fixes=("SetLink",)),
    Cause("address_on_bridge_port", "a bridge port still holds an address in the bridge's subnet (seed 2's veth_http2 keeps 10.0.0.10): the host routes the subnet out of that one port",
          "an address on a link whose master is a bridge, and the connected route it adds", fix="`DeleteAddress` of the port's address", fixes=("DeleteAddress",)),
    Cause("not_in_bridge", "a container's host veth is not a port of its bridge", "the veth's master against the spec's bridge",
          fix="`SetMaster` of the veth to its bridge, and `DeleteNeighbour` of the sender's FAILED entry so that ARP starts again at once",
          fixes=("SetMaster", "DeleteNeighbour")),
    Cause("no_default_route", "the sender has no default route", "the sender's route lookup fails, and the spec declares a gateway",
          fix="`AddRoute` default via the host's address on the container's network", fixes=("AddRoute",)),
    Cause("no_route", "the sender has no route for the destination", "the sender's route lookup fails"),
    Cause("wrong_gateway", "the route goes via an address the host does not hold", "route lookup, host addresses, the neighbour entry (FAILED)",
          fix="`AddRoute` replacing the default route with one via the host's address", fixes=("AddRoute",)),
    Cause("wrong_prefix", "a container's address has the wrong prefix length", "its address against the spec and the host's address on that network"),
    Cause("address_conflict", "one address held by two namespaces", "addresses of every namespace",
          fix="`DeleteAddress` of the address where the spec does not declare it", fixes=("DeleteAddress",)),
    Cause("ip_forward_off", "the host does not route (`net.ipv4.ip_forward = 0`)", "the flow is routed by the host, and the sysctl",
          fix="`Sysctl` `net.ipv4.ip_forward=1`", fixes=("Sysctl",)),
    Cause("forward_drop", "FORWARD drops the flow, by policy or by a rule (the rule is shown), in any chain a forward hook reaches (another daemon's too)",
          "counter deltas of DROP/REJECT rules; a walk of both backends' forward chains",
          fix="`DeleteRule` of the rule that drops; for a policy, `AddRule` (inserted) accepting each way, in the chain that drops", fixes=("DeleteRule", "AddRule")),
    Cause("masquerade_missing", "no MASQUERADE covers the container", "the outside world's capture saw the private source; POSTROUTING walk",
          fix="`AddRule` of the spec's MASQUERADE, with the backend that holds the host's rules, and `FlushConntrack` of the container's flows (NAT is decided at a flow's first packet)",
          fixes=("AddRule", "FlushConntrack")),
    Cause("masquerade_wrong", "a MASQUERADE exists that does not match the container (shown)", "the outside world's capture saw the private source; POSTROUTING walk",
          fix="`DeleteRule` of each MASQUERADE that misses, `AddRule` of the spec's, `FlushConntrack` of the container's flows", fixes=("DeleteRule", "AddRule", "FlushConntrack")),
    Cause("dnat_missing", "no DNAT for the published port or VIP", "nat PREROUTING/OUTPUT walk against the spec's `[[publish]]` / `[[vip]]`",
          fix="`AddRule` of the spec's DNAT (PREROUTING; and OUTPUT for the host's own traffic)", fixes=("AddRule",)),
    Cause("dnat_wrong", "a DNAT to another address or port than the spec says", "nat PREROUTING/OUTPUT walk against the spec's `[[publish]]` / `[[vip]]`; the container that answered",
          fix="`DeleteRule` of the DNAT, `AddRule` of it to the spec's target", fixes=("DeleteRule", "AddRule")),
    Cause("output_dnat_missing", "DNAT in PREROUTING only: the host's own traffic is not translated", "the same DNAT exists in PREROUTING, none in OUTPUT",
          fix="`AddRule` of the PREROUTING DNAT in OUTPUT", fixes=("AddRule",)),
    Cause("vip_not_jumped", "the VIP chain holds the DNAT but the hook does not jump to it", "the chain is not reachable from nat OUTPUT/PREROUTING",
          fix="`AddRule` of the jump from the hook's chain", fixes=("AddRule",)),
    Cause("br_netfilter_off", "the same-bridge DNAT/VIP reply skips the un-NAT (the hairpin / `br_netfilter` trap)",
          "both ends on one bridge, `bridge-nf-call-iptables = 0` (and the bridge's own `nf_call_iptables` off), no MASQUERADE of bridge-local traffic; "
          "the reply seen from the real address", fix="`Sysctl` `net.bridge.bridge-nf-call-iptables=1`", fixes=("Sysctl",)),
    Cause("ip_six_forwarding_off", "the host does not route IPv6 (net.ipv6.conf.all.forwarding = 0), whatever net.ipv4.ip_forward says",
          "an IPv6 flow routed by the host, and the IPv6 sysctl"),
    Cause("ip_six_disabled", "disable_ipv6 = 1 on the sender's interface: its IPv6 addresses and routes are gone", "the sender's disable_ipv6 sysctls, for an IPv6 flow",
          fix="`Sysctl` `disable_ipv6=0`, `AddAddress` of the static address and `AddRoute` of its default route again", fixes=("Sysctl", "AddAddress", "AddRoute")),
    Cause("dad_failed", "duplicate address detection failed: the address is held elsewhere, and the kernel never uses it", "the addresses' dadfailed flag (netlink)"),
    Cause("dnat_to_loopback_six", "an IPv6 DNAT to ::1, which the kernel never routes (IPv6 has no route_localnet; tools use a userland proxy)", "an ip6tables DNAT whose target is ::1",
          fix="`DeleteRule` of the DNAT, `AddRule` of it to the container's IPv6 address", fixes=("DeleteRule", "AddRule")),
    Cause("ra_ignored_when_forwarding", "the host has no IPv6 default route: with forwarding = 1, accept_ra = 1 ignores router advertisements (2 accepts them)",
          "an IPv6 flow the host cannot route, IPv6 forwarding on, and the uplink's accept_ra",
          fix="`AddRoute` of a static IPv6 default route via the spec's gateway (the other fix, `accept_ra=2`, waits for the next advertisement)", fixes=("AddRoute",)),
    Cause("rp_filter_strict", "strict reverse-path filtering drops asymmetric traffic",
          "`TcpExt.IPReversePathFilter` grew during the repeat; or the outside world routes replies to an interface the host's route back does not use",
          fix="`Sysctl` `rp_filter=2` (loose) on all and the arrival interface", fixes=("Sysctl",)),
    Cause("route_localnet_off", "DNAT to 127.0.0.1 without `route_localnet`", "the DNAT's target and the in-interface's `route_localnet`",
          fix="`DeleteRule` of the DNAT, `AddRule` of it to the spec's container", fixes=("DeleteRule", "AddRule", "Sysctl")),
    Cause("stray_dnat", "a DNAT the spec neither publishes nor declares as a VIP redirects a flow that must be blocked",
          "a probe expected to be blocked was answered, and a DNAT rule's counter grew during the repeat", severity="exposes", fix="`DeleteRule` of the DNAT", fixes=("DeleteRule",)),
    Cause("route_localnet_exposed", "`route_localnet = 1` plus a DNAT to 127.0.0.1 expose the host's loopback", "a probe that must be blocked reached a loopback service",
          severity="exposes", fix="`Sysctl` `route_localnet=0` and `DeleteRule` of the DNAT", fixes=("Sysctl", "DeleteRule")),
    Cause("dnat_wrong_match", "a DNAT meant for the published port or VIP (its target or its port) matches another destination, interface or port than the flow's (shown)",
          "the nat walk finds no DNAT for the flow, and one in the same chains whose single matches, tried one by one, show which misses",
          fix="`DeleteRule` of the DNAT, `AddRule` of it with the matches that missed corrected, in the same chain", fixes=("DeleteRule", "AddRule")),
    Cause("neigh_wrong", "a static (PERMANENT) neighbour entry gives an address of the lab a MAC its holder does not have",
          "neighbour entries of every namespace against the MAC of the interface that holds the address",
          fix="`DeleteNeighbour` of the static entry (ARP then finds the real MAC)", fixes=("DeleteNeighbour",)),
    Cause("arp_ignore", "the host answers no ARP on the containers' network (`arp_ignore = 8`), so their gateway never resolves",
          "`net.ipv4.conf.{all,IFACE}.arp_ignore` of the host interface that is the containers' gateway; the container's neighbour entry (FAILED)",
          fix="`Sysctl` `arp_ignore=0` where it is 8, and `DeleteNeighbour` of the container's FAILED entry so that ARP starts again at once", fixes=("Sysctl", "DeleteNeighbour")),
    Cause("blackhole_route", "the most specific route to the destination is a `blackhole`, `unreachable` or `prohibit` route (in the sender or the host), "
          "or a policy rule (`ip rule`, `ip -6 rule`) with that action selects the flow or its reply",
          "the routes of the sender and of the routing host against the flow's destination; for a policy rule, the datapath model's walk on the state read back (either family)",
          fix="`DeleteRoute` of the discarding route", fixes=("DeleteRoute",)),
    Cause("no_listener", "nothing listens on the port in the container", "the container's listening sockets (sock_diag); a RST in the trace"),
    Cause("mtu_mismatch", "the two ends of a veth (a container's, or the host's uplink) have different MTUs: big packets vanish where they arrive, and no fragmentation-needed comes back",
          "netlink: both ends' MTUs against the spec's (a container's `mtu`, else 1500); ranked first for a don't-fragment probe that was lost on that link",
          fix="`SetMtu` of the end that differs from the spec's MTU", fixes=("SetMtu",)),
    Cause("path_mtu_low", "a link of the path carries less than the sender's MTU (a cloud VM's smaller uplink MTU): full-size packets get fragmentation-needed, or vanish where that ICMP is dropped",
          "the don't-fragment probe's size against the MTU of each link of its path", fix="`SetMtu` of the link (both ends) to the sender's MTU; or lower the containers' MTU",
          fixes=("SetMtu",)),
    Cause("subnet_overlap", "a host network's subnet takes in an outside address (a tool's bridge on a range the outside world uses): the host routes it into that network",
          "the host's route lookup for the outside destination: a connected route on a link other than the uplink, whose address's subnet holds the destination"),
    Cause("extra_link", "a container holds a link that is not its own", "netlink (shown by `netcheck doctor`: its suite test asserts on state, not on a probe)", severity="exposes"),
    Cause("bridge_flooding", "a bridge forgets MACs at once (`ageing_time 0`) and floods every frame", "netlink bridge options (shown by `netcheck doctor`)", severity="exposes"),
    Cause("host_no_route", "the host has no route for the forwarded packet", "the host's route lookup",
          fix="`AddRoute` default via the spec's gateway, when the host has no default route (IPv6: of the bridge's prefix on the bridge)", fixes=("AddRoute",)),
    Cause("forwarding_off", "an interface the routed flow crosses has `net.ipv4.conf.IFACE.forwarding = 0` while `ip_forward = 1`",
          "the per-interface forwarding sysctl of the flow's in and out interfaces", fix="`Sysctl` `forwarding=1` on those interfaces", fixes=("Sysctl",)),
    Cause("rules_split", "the host's rules are split across legacy and nf_tables",
          "both backends hold rules (or a non-ACCEPT policy); the kernel applies both, each tool shows half", severity="hygiene"),
    Cause("resolv_conf_missing", "a container has no `/etc/netns/NAME/resolv.conf` (seed 2's `echo \"... | tee\"` typo): it reads the machine's",
          "the file against the spec's `dns = [...]`"),
    Cause("nameserver_loopback", "a container's resolver is a loopback address (the host's stub, 127.0.0.53): its own `lo`, where nothing answers",
          "the nameservers of the resolv.conf the container reads"),
    Cause("resolv_conf_wrong", "a container's resolv.conf names other resolvers than the spec", "the nameservers of the resolv.conf against the spec"),
    Cause("search_wrong", "a container's search domains send a short name to the wrong place", "the search line of the resolv.conf against the spec"),
    Cause("dns_wrong_answer", "the resolver answers a name with another address than the spec's zone", "the zone netcheck's DNS server serves against `[dns]` records"),
    Cause("dns_udp_blocked", "a filter rule drops DNS over UDP while TCP/53 passes", "a UDP query unanswered, and a DROP/REJECT rule for udp port 53 (its counter delta)",
          fix="`DeleteRule` of the rule", fixes=("DeleteRule",)),
    Cause("embedded_dns_rules_missing", "Docker's DNAT rules for its embedded resolver are gone from a container's nat table (DOCKER_OUTPUT, DOCKER_POSTROUTING): "
          "queries to 127.0.0.11:53 meet a port where nothing listens", "a query to 127.0.0.11 unanswered, and the container's own nat table without a DNAT for it"),
    Cause("aardvark_dns_down", "the aardvark-dns of a Podman network with DNS is not running: nothing answers on the gateway's port 53",
          "a query to the network's gateway unanswered, nothing listening on its port 53 in the host, and the aardvark-dns netavark started (its PID) gone"),
    Cause("cross_route_missing", "a host has no route to another host's container subnet", "the host's routes against the join's plan (multi-host labs)",
          fix="`AddRoute` of the planned route (via, dev), `FlushConntrack` of the host's containers (flows masqueraded out of the uplink meanwhile)",
          fixes=("AddRoute", "FlushConntrack")),
    Cause("cross_route_wrong", "a host routes another host's container subnet via the wrong next hop", "the route's gateway and device against the join's plan",
          fix="`AddRoute` replacing it with the planned one, `FlushConntrack` of the host's containers", fixes=("AddRoute", "FlushConntrack")),
    Cause("vxlan_fdb_missing", "a VXLAN device has no fdb entry for a remote VTEP", "the device's fdb (bridge fdb show dev ...) against the join's plan",
          fix="`SetFdb` of the remote VTEP's MAC to its underlay address", fixes=("SetFdb",)),
    Cause("vxlan_fdb_wrong", "a VXLAN fdb entry sends a remote VTEP's frames to the wrong underlay address", "the entry's dst against the remote host's underlay address",
          fix="`SetFdb` of the remote VTEP's MAC to its underlay address", fixes=("SetFdb",)),
    Cause("vxlan_vni_mismatch", "the VNI differs between the two ends of the overlay", "each VXLAN device's id against the spec's join.vni"),
    Cause("vxlan_port_mismatch", "the UDP port differs between the two ends of the overlay", "each VXLAN device's dstport against the spec's join.port"),
    Cause("mtu_black_hole", "a link of the path carries less than the overlay was sized for: big packets vanish, no fragmentation-needed",
          "the MTU of the hosts' underlay links and of the underlay's ports against join.mtu + 50 (vxlan) or underlay.mtu",
          fix="`SetMtu` of the link to what the overlay needs", fixes=("SetMtu",)),
    Cause("frag_needed_dropped", "a rule drops ICMP back to the containers, fragmentation-needed included", "filter OUTPUT/FORWARD DROP or REJECT rules for icmp to the host's container subnet",
          fix="`DeleteRule` of the rule", fixes=("DeleteRule",)),
    Cause("masquerade_between_hosts", "a MASQUERADE also rewrites traffic between the hosts", "nat POSTROUTING rules covering the container subnet that are not limited to the uplink",
          fix="`DeleteRule` of the rule, `FlushConntrack` of the host's containers", fixes=("DeleteRule", "FlushConntrack")),
    Cause("rp_filter_decap", "strict rp_filter drops decapsulated packets whose route back leaves by another interface",
          "rp_filter = 1 (all or the overlay device) and the route back to the source subnet",
          fix="`Sysctl` `rp_filter=2` (loose) on all and the overlay device", fixes=("Sysctl",)),
    Cause("underlay_udp_blocked", "a host's firewall drops the overlay's UDP port (4789)", "filter INPUT/FORWARD DROP or REJECT rules for udp to join.port",
          fix="`DeleteRule` of the rule", fixes=("DeleteRule",)),
    Cause("localhost_publish_route_localnet_off", "a port published on 127.0.0.1: nat OUTPUT DNATs it, but without route_localnet the loopback source never leaves lo",
          "the flow from the host to 127.0.0.1, its OUTPUT DNAT matched, and route_localnet of all and of the container's side",
          fix="`Sysctl` `net.ipv4.conf.all.route_localnet=1`", fixes=("Sysctl",)),
    Cause("hairpin_masquerade_missing", "a container reaching its own published port: no hairpin MASQUERADE (-s C -d C), so the DNATed request comes back with its own "
          "address as the source and it drops it as a martian", "the flow from a container to its own published port, its DNAT matched, and a POSTROUTING walk of C -> C",
          fix="`AddRule` of the hairpin MASQUERADE (-s C -d C, the container port)", fixes=("AddRule",)),
    Cause("hairpin_mode_off", "a container reaching its own published port: its bridge port's hairpin mode is off, so the DNATed request never goes back out by it",
          "the flow from a container to its own published port, its DNAT and hairpin MASQUERADE present, and the bridge port's hairpin flag (netlink)",
          fix="`SetHairpin` on the container's bridge port", fixes=("SetHairpin",)),
    Cause("tool_rules_gone", "the tool's own rules are gone since its setup (a lifecycle event: a flush, a restore, a firewall reload); its reload command writes them again",
          "the host's nf_tables tables, chain rule counts and policies against those read after the tool's setup (netcheck.lifecycle)"),
    Cause("stale_conntrack", "a conntrack entry from before a change keeps a flow on the old NAT decision: no SNAT although a MASQUERADE covers it now, "
          "or a DNAT to the address a published container had before it came back with a new one (the DNAT followed it, the entry did not)",
          "the failed flow's own entry in the host's conntrack table (ctnetlink) against the rules' MASQUERADE and DNAT now and the container's address",
          fix="`FlushConntrack` of the flow's entry (`conntrack -D`; the next packet makes a new one)", fixes=("FlushConntrack",)),
    Cause("model_disposition", "the datapath model, on the state read back, names the step that decided the probe's fate (a route, a rule, a sysctl, a bridge port)",
          "a trace of the probe's flow through the observed state (netcheck.datapath), ranked below every specific cause; an unmodelled match gives \"unknown\""),
    Cause("rule_failed", "a diagnosis rule itself failed (a netcheck bug: please report it)", "the rule raised an exception while reading the evidence", severity="bug"),
]}
DOCUMENTED = [c for c in CAUSES.values() if c.severity != "bug"]  # rule_failed is a bug report, not a cause of the network's


def faults_of(cause: str) -> list[str]:
    """The catalog faults (netcheck's and the tools') whose expected top cause is ``cause``."""
    from netcheck.adapters.faults import EXTERNAL_FAULTS
    from netcheck.faults import CROSS_HOST_FAULTS, FAULTS

    names = [f.name for f in (*FAULTS.values(), *EXTERNAL_FAULTS.values()) if f.cause == cause]
    return sorted(names + [f.name for f in CROSS_HOST_FAULTS.values() if f.cause == cause])


TABLE_HEAD = ("| Cause id | What it means | How it is recognised | Severity | Fix (applied to a sandbox lab, re-probed, undone) | Faults that inject it |\n"
              "|---|---|---|---|---|---|")


def markdown() -> str:
    """The table of causes in docs/diagnosis.md (``netcheck causes --markdown``)."""
    return "\n".join([TABLE_HEAD, *(c.row(faults_of(c.id)) for c in DOCUMENTED)]) + "\n"


__all__ = ["CAUSES", "DOCUMENTED", "FIX_VALUES", "SEVERITIES", "Cause", "faults_of", "markdown"]
