"""Faults for setups other tools made: they break the tool's own rules, which live in nf_tables.

The catalog's rule faults (netcheck.faults) edit the legacy rules netcheck writes; Docker, CNI,
netavark and iptables-nft scripts write theirs through nf_tables, so these find them among the
host's nf_tables rules (netcheck.kernel.xtables.nft_chains) and delete them by handle. Link and policy faults (veth-down,
forward-drop) need nothing special: the catalog's work on any lab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netcheck.adapters.docker import EMBEDDED_DNS_CHAINS
from netcheck.adapters.podman import aardvark_of
from netcheck.faults import DNAT_OUTSIDE, DNS_ANSWERS, MASQ_OUT, Fault
from netcheck.kernel.xtables import XChain, XRule, nft_chains, read_nft
from netcheck.ledger import kill_process

if TYPE_CHECKING:
    from netcheck.lab import Lab


# Matches on a port or a packet mark: what the hairpin masquerades of port publishing carry.
HAIRPIN_MATCHES = frozenset({"mark", "sport", "dport", "xt mark", "xt tcp", "xt udp", "xt multiport"})


def masquerade_rules(lab: Lab) -> list[tuple[XChain, XRule]]:
    """The nf_tables rules of the host that masquerade containers' outgoing traffic; not the
    port-publishing ones (a DNAT's mark, or a container's own port), which only serve hairpins."""
    return [(c, r) for c in nft_chains(read_nft(lab.host)) for r in c.rules
            if r.target == "MASQUERADE" and r.dport is None and not r.dports and not HAIRPIN_MATCHES & set(r.unmodelled)]


def delete_masquerade(lab: Lab, only_ipv6: bool = False) -> None:
    """Delete the tool's MASQUERADE rules (nft, by handle), or its IPv6 ones alone (ip6tables-nft's, nft ip6); LookupError if it wrote none."""
    rules = [(c, r) for c, r in masquerade_rules(lab) if not only_ipv6 or c.family == "ip6" or r.family == 6]
    if not rules:
        raise LookupError(f"{lab.topology.name}: the host has no {'IPv6 ' if only_ipv6 else ''}MASQUERADE rule in nf_tables")
    for c, r in rules:
        argv = ["nft", "delete", "rule", c.family, c.table, c.name, "handle", str(r.handle)]
        proc = lab.host.run(argv, timeout=20)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace').strip()}")


def delete_masquerade6(lab: Lab) -> None:
    """Delete the tool's IPv6 MASQUERADE rules alone: its IPv4 ones stay."""
    if 6 not in lab.topology.families:
        raise LookupError(f"{lab.topology.name} declares no IPv6")
    delete_masquerade(lab, only_ipv6=True)


def delete_dnat(lab: Lab) -> None:
    """Delete the tool's DNAT rules of the first published port (nft, by handle; one rule for every element of a map)."""
    port = lab.topology.publishes[0].host_port
    rules = {(c.family, c.table, c.name, r.handle) for c in nft_chains(read_nft(lab.host)) for r in c.rules
             if r.target == "DNAT" and (r.dport == port or any(lo <= port <= hi for lo, hi in r.dports))}
    if not rules:
        raise LookupError(f"{lab.topology.name}: the host has no DNAT rule for port {port} in nf_tables")
    for family, table, chain, handle in sorted(rules, key=str):
        argv = ["nft", "delete", "rule", family, table, chain, "handle", str(handle)]
        proc = lab.host.run(argv, timeout=20)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace').strip()}")


def tool_resolver_user(lab: Lab) -> str:
    """The first container whose resolver is its [[network]]'s own (Docker's embedded one, aardvark-dns)."""
    t = lab.topology
    for c in t.containers:
        on = t.network_of(c)
        if on is not None and on.dns and c.dns is not None and not isinstance(c.dns, str):
            return c.name
    raise LookupError(f"{t.name}: no container with a resolver is on a [[network]] with dns")


def delete_embedded_dns_rules(lab: Lab) -> None:
    """Flush Docker's DNAT and SNAT rules for 127.0.0.11 in the container's own nat table: its queries meet a port where nothing listens."""
    ns = lab.container_ns(tool_resolver_user(lab))
    chains = [c for c in nft_chains(read_nft(ns)) if c.name in EMBEDDED_DNS_CHAINS and c.rules]
    if not chains:
        raise LookupError(f"{lab.topology.name}: the container's namespace has no rules in {' or '.join(EMBEDDED_DNS_CHAINS)}")
    for c in chains:
        argv = ["nft", "flush", "chain", c.family, c.table, c.name]
        proc = ns.run(argv, timeout=20)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace').strip()}")


def stop_aardvark(lab: Lab) -> None:
    """End the aardvark-dns netavark started (by its recorded PID): the network's resolver on the gateway is gone."""
    found = aardvark_of(lab)
    if found is None or not kill_process(*found):
        raise LookupError(f"{lab.topology.name}: no aardvark-dns of the lab's is running")


def flush_ruleset(lab: Lab) -> None:
    """``nft flush ruleset`` in the host, as an nftables.conf that begins with it does on a reload: every tool's tables are gone."""
    proc = lab.host.run(["nft", "flush", "ruleset"], timeout=20)
    if proc.returncode != 0:
        raise RuntimeError(f"nft flush ruleset: {proc.stderr.decode(errors='replace').strip()}")


EXTERNAL_FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("tool-masquerade-removed", "the MASQUERADE rule the tool wrote (nf_tables) is gone", "cni", MASQ_OUT, "198.51.100.1", "masquerade_missing", delete_masquerade),
    Fault("tool-ip6-masquerade-removed", "the IPv6 MASQUERADE rules the tool wrote (ip6tables-nft, nft ip6) are gone, its IPv4 ones stay", "cni-dual", MASQ_OUT,
          "2001:db8:2::1", "masquerade_missing", delete_masquerade6),
    Fault("nft-flush-ruleset", "nft flush ruleset (an nftables.conf reload) wiped the tool's tables", "docker29-nft", MASQ_OUT, "198.51.100.1", "masquerade_missing", flush_ruleset),
    Fault("tool-dnat-removed", "the DNAT of the published port the tool wrote (nf_tables) is gone", "docker29-nft", DNAT_OUTSIDE, "203.0.113.2", "dnat_missing", delete_dnat),
    Fault("embedded-dns-rules-removed", "Docker's DNAT rules for the embedded resolver (DOCKER_OUTPUT, DOCKER_POSTROUTING in the container's nat table) are gone",
          "docker-dns", DNS_ANSWERS, "127.0.0.11", "embedded_dns_rules_missing", delete_embedded_dns_rules),
    Fault("aardvark-dns-stopped", "the aardvark-dns netavark started for a network with DNS has stopped (ended by its PID)", "podman-dns", DNS_ANSWERS, "10.90.0.1",
          "aardvark_dns_down", stop_aardvark),
]}


__all__ = ["EXTERNAL_FAULTS", "delete_dnat", "delete_embedded_dns_rules", "delete_masquerade", "delete_masquerade6", "flush_ruleset", "masquerade_rules", "stop_aardvark",
           "tool_resolver_user"]
