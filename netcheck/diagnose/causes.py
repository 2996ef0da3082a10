"""Every cause the diagnosis can name: what it means and how it is recognised.

The rules (netcheck/diagnose/rules.py) name a cause by its id in each ``Finding``; this is the
one list of those ids, read by ``netcheck causes``. tests/test_cli.py checks that every id the
rules use is here, and that docs/diagnosis.md's table of causes names the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    id: str
    means: str
    recognised: str  # the evidence the rules read to name it


CAUSES: dict[str, Cause] = {c.id: c for c in [
    Cause("link_down", "a link on the path is admin down (or has no carrier)", "netlink link state, for the links of the path first"),
    Cause("lo_down", "a namespace's lo is down", "netlink; ranked first for traffic to 127.0.0.1"),
    Cause("not_in_bridge", "a container's host veth is not a port of its bridge", "the veth's master against the spec's bridge"),
    Cause("no_default_route", "the sender has no default route", "the sender's route lookup fails, and the spec declares a gateway"),
    Cause("no_route", "the sender has no route for the destination", "the sender's route lookup fails"),
    Cause("wrong_gateway", "the route goes via an address the host does not hold", "route lookup, host addresses, the neighbour entry (FAILED)"),
    Cause("wrong_prefix", "a container's address has the wrong prefix length", "its address against the spec and the host's address on that network"),
    Cause("address_conflict", "one address held by two namespaces", "addresses of every namespace"),
    Cause("ip_forward_off", "the host does not route (net.ipv4.ip_forward = 0)", "the flow is routed by the host, and the sysctl"),
    Cause("forward_drop", "FORWARD drops the flow, by policy or by a rule (the rule is shown)", "counter deltas of DROP/REJECT rules; a walk of both backends' forward chains"),
    Cause("masquerade_missing", "no MASQUERADE covers the container", "the outside world's capture saw the private source; POSTROUTING walk"),
    Cause("masquerade_wrong", "a MASQUERADE exists that does not match the container (shown)", "the outside world's capture saw the private source; POSTROUTING walk"),
    Cause("dnat_missing", "no DNAT for the published port or VIP", "nat PREROUTING/OUTPUT walk against the spec's [[publish]] / [[vip]]"),
    Cause("dnat_wrong", "a DNAT to another address or port than the spec says", "nat PREROUTING/OUTPUT walk against the spec's [[publish]] / [[vip]]; the container that answered"),
    Cause("output_dnat_missing", "DNAT in PREROUTING only: the host's own traffic is not translated", "the same DNAT exists in PREROUTING, none in OUTPUT"),
    Cause("vip_not_jumped", "the VIP chain holds the DNAT but the hook does not jump to it", "the chain is not reachable from nat OUTPUT/PREROUTING"),
    Cause("br_netfilter_off", "the same-bridge DNAT/VIP reply skips the un-NAT (the hairpin / br_netfilter trap)",
          "both ends on one bridge, bridge-nf-call-iptables = 0 (and the bridge's own nf_call_iptables off), no MASQUERADE of bridge-local traffic; "
          "the reply seen from the real address"),
    Cause("rp_filter_strict", "strict reverse-path filtering drops asymmetric traffic",
          "TcpExt.IPReversePathFilter grew during the repeat; or the outside world routes replies to an interface the host's route back does not use"),
    Cause("route_localnet_off", "DNAT to 127.0.0.1 without route_localnet", "the DNAT's target and the in-interface's route_localnet"),
    Cause("stray_dnat", "a DNAT the spec neither publishes nor declares as a VIP redirects a flow that must be blocked",
          "a probe expected to be blocked was answered, and a DNAT rule's counter grew during the repeat"),
    Cause("route_localnet_exposed", "route_localnet = 1 plus a DNAT to 127.0.0.1 expose the host's loopback", "a probe that must be blocked reached a loopback service"),
    Cause("no_listener", "nothing listens on the port in the container", "the container's listening sockets (/proc/thread-self/net/tcp); a RST in the trace"),
    Cause("mtu_mismatch", "the two ends of a veth have different MTUs", "netlink (shown by netcheck doctor: its suite test asserts on state, not on a probe)"),
    Cause("extra_link", "a container holds a link that is not its own", "netlink (shown by netcheck doctor: its suite test asserts on state, not on a probe)"),
    Cause("bridge_flooding", "a bridge forgets MACs at once (ageing_time 0) and floods every frame", "netlink bridge options (shown by netcheck doctor)"),
    Cause("host_no_route", "the host has no route for the forwarded packet", "the host's route lookup"),
    Cause("rules_split", "the host's rules are split across legacy and nf_tables",
          "both backends hold rules (or a non-ACCEPT policy); the kernel applies both, each tool shows half"),
    Cause("resolv_conf_missing", "a container has no /etc/netns/NAME/resolv.conf (seed 2's `echo \"... | tee\"` typo): it reads the machine's",
          "the file against the spec's dns = [...]"),
    Cause("nameserver_loopback", "a container's resolver is a loopback address (the host's stub, 127.0.0.53): its own lo, where nothing answers",
          "the nameservers of the resolv.conf the container reads"),
    Cause("resolv_conf_wrong", "a container's resolv.conf names other resolvers than the spec", "the nameservers of the resolv.conf against the spec"),
    Cause("search_wrong", "a container's search domains send a short name to the wrong place", "the search line of the resolv.conf against the spec"),
    Cause("dns_wrong_answer", "the resolver answers a name with another address than the spec's zone", "the zone netcheck's DNS server serves against [dns] records"),
    Cause("dns_udp_blocked", "a filter rule drops DNS over UDP while TCP/53 passes", "a UDP query unanswered, and a DROP/REJECT rule for udp port 53 (its counter delta)"),
    Cause("tool_rules_gone", "the tool's own rules are gone since its setup (a lifecycle event: a flush, a restore, a firewall reload); its reload command writes them again",
          "the host's nf_tables tables, chain rule counts and policies against those read after the tool's setup (netcheck.lifecycle)"),
    Cause("stale_conntrack", "a conntrack entry from before a rule change keeps a flow on the old NAT decision (no SNAT although a MASQUERADE covers it now)",
          "the failed flow's own entry in the host's conntrack table (pyroute2, netlink) against the rules' MASQUERADE and DNAT now; the fix deletes that entry (conntrack -D)"),
    Cause("rule_failed", "a diagnosis rule itself failed (a netcheck bug: please report it)", "the rule raised an exception while reading the evidence"),
]}


__all__ = ["CAUSES", "Cause"]
