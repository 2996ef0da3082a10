"""Faults for setups other tools made: they break the tool's own rules, which live in nf_tables.

The catalog's rule faults (netcheck.faults) edit the legacy rules netcheck writes; Docker, CNI,
netavark and iptables-nft scripts write theirs through nf_tables, so these find them in
``nft -j list ruleset`` and delete them by handle. Link and policy faults (veth-down,
forward-drop) need nothing special: the catalog's work on any lab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netcheck.faults import MASQ_OUT, Fault
from netcheck.kernel.xtables import read_nft

if TYPE_CHECKING:
    from netcheck.lab import Lab


def _is_masquerade(e: dict[str, Any]) -> bool:
    return "masquerade" in e or ("xt" in e and str(e["xt"].get("name", "")).upper() == "MASQUERADE")


def _port_or_mark(e: dict[str, Any]) -> bool:
    """A match on a port or a packet mark: the hairpin masquerades of port publishing."""
    if "xt" in e:
        return str(e["xt"].get("name", "")) in ("mark", "tcp", "udp", "multiport")
    if "match" not in e:
        return False
    left = e["match"].get("left", {})
    if "&" in left:  # meta mark & 0x2000 == 0x2000
        left = next((x for x in left["&"] if isinstance(x, dict)), {})
    return bool(left.get("meta", {}).get("key") == "mark" or left.get("payload", {}).get("field") in ("dport", "sport"))


def masquerade_rules(lab: Lab) -> list[dict[str, Any]]:
    """The nf_tables rules of the host that masquerade containers' outgoing traffic; not the
    port-publishing ones (a DNAT's mark, or a container's own port), which only serve hairpins."""
    out = []
    for item in read_nft(lab.host).get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("table") != "nat":
            continue
        exprs = rule.get("expr", [])
        if any(_is_masquerade(e) for e in exprs) and not any(_port_or_mark(e) for e in exprs):
            out.append(rule)
    return out


def delete_masquerade(lab: Lab) -> None:
    """Delete the tool's MASQUERADE rules (nft, by handle); LookupError if it wrote none."""
    rules = masquerade_rules(lab)
    if not rules:
        raise LookupError(f"{lab.topology.name}: the host has no MASQUERADE rule in nf_tables")
    for r in rules:
        proc = lab.host.run(["nft", "delete", "rule", r["family"], r["table"], r["chain"], "handle", str(r["handle"])], timeout=20)
        if proc.returncode != 0:
            raise RuntimeError(f"nft delete rule {r['family']} {r['table']} {r['chain']} handle {r['handle']}: {proc.stderr.decode(errors='replace').strip()}")


EXTERNAL_FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("tool-masquerade-removed", "the MASQUERADE rule the tool wrote (nf_tables) is gone", "cni", MASQ_OUT, "198.51.100.1", "masquerade_missing", delete_masquerade),
]}


__all__ = ["EXTERNAL_FAULTS", "delete_masquerade", "masquerade_rules"]
