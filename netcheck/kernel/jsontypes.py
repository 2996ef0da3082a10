"""The one type for parsed JSON (``json.loads``, ``nft -j``, a run record's lines, xdist's plain data).

Its shape is checked where it is read, and turned into typed values there; nothing past a
reader passes JSON on.
"""

from __future__ import annotations

from typing import Any, TypeAlias

JSON: TypeAlias = Any  # the single JSON alias: a value json.loads may return
JSONObject: TypeAlias = dict[str, JSON]

__all__ = ["JSON", "JSONObject"]
