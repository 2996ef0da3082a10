"""The host's firewall as data, for the diagnosis: the one model lives in netcheck.datapath.firewall (the datapath model walks it too)."""

from __future__ import annotations

from netcheck.datapath.firewall import LEGACY_HOOKS, NAT_TARGETS, TERMINAL, XTABLES, Decision, Pkt, Placed, Ruleset, binary, command, counter_deltas, is_native, matches

__all__ = ["LEGACY_HOOKS", "NAT_TARGETS", "TERMINAL", "XTABLES", "Decision", "Pkt", "Placed", "Ruleset", "binary", "command", "counter_deltas", "is_native", "matches"]
