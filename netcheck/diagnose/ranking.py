"""Ranking by evidence: a cause ranks by what confirms it, not by a number picked for it.

Each finding is weighed by four kinds of support, read from the diagnosis' own evidence:

* **on the path**: it is in a namespace the probe crosses (its sender, the host, its target, the outside);
* **the model**: the datapath model's trace of the probe, on the state read back, ends where this
  cause would end it (``MODEL_CAUSES``: its disposition and the stage that decided it);
* **the kernel**: a drop of the probe's packets whose reason points to it (``witness.REASON_CAUSES``),
  or the nftables trace's drop (a rule's, or a chain policy's) for a firewall cause;
* **a counter**: the counter of a rule its fix deletes grew during the repeat, or a kernel SNMP
  counter that names it (``SNMP_CAUSES``) grew.

Findings are ordered by how many of model, kernel and counter confirm them, then by being on the
path, then by the rule's own score, which is only the prior among causes of equal support (a cause
recognised from configuration alone). Each confirmation is added to the finding's evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from netcheck.diagnose.witness import FIREWALL, NO_ROUTE, REASON_CAUSES
from netcheck.evidence import DeleteRule, Finding, KernelEvent

# The SNMP counters (SNMP_KEYS of the diagnosis) that name causes when they grow during the repeat.
SNMP_CAUSES: dict[str, tuple[str, ...]] = {
    "TcpExt.IPReversePathFilter": ("rp_filter_strict",),
    "Ip.InNoRoutes": NO_ROUTE, "IpExt.InNoRoutes": NO_ROUTE, "Ip.OutNoRoutes": NO_ROUTE,
    "Ip.InAddrErrors": REASON_CAUSES["IP_INADDRERRORS"],
}
NAT_BACK = ("br_netfilter_off", "masquerade_missing", "masquerade_wrong", "hairpin_masquerade_missing", "hairpin_mode_off", "stale_conntrack")
# The model's disposition -> the causes it confirms; "dropped"/"rejected" by the stage that decided (a word of it).
MODEL_CAUSES: dict[str, tuple[str, ...]] = {
    "no-route": (*NO_ROUTE, "ip_forward_off", "forwarding_off", "ip_six_forwarding_off", "ip_six_disabled", "ra_ignored_when_forwarding"),
    "unreachable": (*NO_ROUTE, "ip_forward_off", "forwarding_off"),
    "null-routed": ("blackhole_route",), "prohibited": ("blackhole_route",),
    "neighbour-unreachable": ("wrong_gateway", "wrong_prefix", "not_in_bridge", "address_on_bridge_port", "link_down", "arp_ignore", "neigh_wrong", "subnet_overlap"),
    "no-listener": ("no_listener", "embedded_dns_rules_missing"),
    "reply-not-unnatted": NAT_BACK,
}
MODEL_STAGES: dict[str, tuple[str, ...]] = {  # for dropped/rejected: a word of the deciding stage ("filter FORWARD", "nft inet ufw forward") -> causes
    "filter": FIREWALL, "nft": FIREWALL, "bridge": ("link_down", "not_in_bridge", *FIREWALL), "rp_filter": ("rp_filter_strict",),
    "forwarding": ("ip_forward_off", "forwarding_off", "ip_six_forwarding_off"), "route": (*NO_ROUTE, "ip_forward_off", "forwarding_off"), "(nft)": FIREWALL,
    "nat": ("dnat_missing", "dnat_wrong", "dnat_wrong_match", "vip_not_jumped", "output_dnat_missing", "route_localnet_off", *NAT_BACK),
    "link": ("link_down", "lo_down"), "routing": ("route_localnet_off", "localhost_publish_route_localnet_off"),
}


@dataclass(frozen=True)
class Witnessed:
    """What the diagnosis saw that may confirm causes: the model's end, the kernel's drops, the nft trace's drop, counters."""

    on_path: frozenset[str] = frozenset()  # namespace labels the probe crosses
    model: tuple[str, str, str] | None = None  # the model's (disposition, deciding stage, its text); None: no account of the flow
    kernel: tuple[KernelEvent, ...] = ()
    nft_drop: str = ""  # the nft trace's drop step, rendered ("" none)
    rule_counters: Mapping[object, int] | None = None  # rule key (XRule.key()) -> packets it matched during the repeat
    snmp: Mapping[str, Mapping[str, int]] | None = None  # namespace -> SNMP counter -> growth during the repeat

    def model_causes(self) -> set[str]:
        if self.model is None or self.model[0] == "delivered":
            return set()
        disposition, stage, _text = self.model
        if disposition in ("dropped", "rejected"):
            words = stage.lower().split()
            return {c for word, causes in MODEL_STAGES.items() if word in words for c in causes}
        return set(MODEL_CAUSES.get(disposition, ()))


def confirmations(f: Finding, w: Witnessed) -> list[str]:
    """The evidence lines that confirm ``f`` (empty: it is inferred from configuration alone)."""
    out = []
    event = next((e for e in w.kernel if f.cause in e.causes), None)
    if event is not None:
        out.append(f"the kernel confirms it: {event.line()} ({event.packet})")
    if w.nft_drop and f.cause in FIREWALL:
        out.append(f"the nft trace confirms it: {w.nft_drop}")
    if w.model is not None and f.cause in w.model_causes():
        out.append(f"the model confirms it: {w.model[0]} at {w.model[1]}")
    counted = [n for x in f.fixes if isinstance(x, DeleteRule) for n in [(w.rule_counters or {}).get(x.rule.key(), 0)] if n > 0]
    snmp = sorted(f"{label}: {k} +{n}" for label, grew in (w.snmp or {}).items() for k, n in grew.items() if f.cause in SNMP_CAUSES.get(k, ()))
    if counted or snmp:
        out.append("a counter confirms it: " + "; ".join([*(f"the rule's counter grew by {n}" for n in counted), *snmp]))
    return out


def _kinds(lines: Iterable[str]) -> int:
    """How many kinds of support (model, kernel, counter) the lines hold; the kernel's drop and the nft trace are one witness."""
    kinds = {line.split(" confirms it", 1)[0] for line in lines}
    return len({"the kernel" if k == "the nft trace" else k for k in kinds})


def rank(findings: list[Finding], w: Witnessed) -> list[Finding]:
    """Findings by support (model, kernel, counter), then on the path, then score; each confirmation added to its evidence."""
    weighed = []
    for i, f in enumerate(findings):
        lines = confirmations(f, w)
        fresh = [x for x in lines if x not in f.evidence]
        weighed.append(((-_kinds(lines), f.where not in w.on_path, -f.score, i), replace(f, evidence=(*fresh, *f.evidence)) if fresh else f))
    return [f for _key, f in sorted(weighed, key=lambda x: x[0])]


__all__ = ["MODEL_CAUSES", "SNMP_CAUSES", "Witnessed", "confirmations", "rank"]
