"""The host's firewall as data, for the diagnosis: the one model lives in netcheck.datapath.firewall (the datapath model walks it too)."""

from __future__ import annotations

from netcheck.datapath.firewall import (
    LEGACY6,
    LEGACY_HOOKS,
    NAT_TARGETS,
    NFT6,
    TERMINAL,
    XTABLES,
    Decision,
    Pkt,
    Placed,
    Ruleset,
    binary,
    command,
    counter_deltas,
    family_of,
    is_native,
    matches,
)

__all__ = ["LEGACY6", "NFT6", "LEGACY_HOOKS", "NAT_TARGETS", "TERMINAL", "XTABLES", "Decision", "Pkt", "Placed", "Ruleset", "binary", "command", "counter_deltas", "family_of", "is_native", "matches"]
