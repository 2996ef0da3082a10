"""libnftables through its Python binding (Debian's ``python3-nftables``): loading it, and running JSON
commands in a namespace. ``nft.py`` (native rules) and ``xtables.py`` (reading a ruleset) both use it.

libnftables talks netlink from the calling thread, so every command runs in the namespace's
own worker thread, and a fresh context is made for each call.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any

from netcheck.kernel.netns import KernelError, Netns

INSTALL_HINT = "apt-get install -y --no-install-recommends python3-nftables"
DEBIAN_MODULE = "/usr/lib/python3/dist-packages/nftables/nftables.py"  # Debian's package, outside a venv's sys.path


class NftUnavailable(KernelError):
    """libnftables' Python binding is not installed; the message says how to install it."""


def binding() -> Any:
    """The ``nftables`` module: importable in the venv, or Debian's file loaded by path."""
    if "nftables" in sys.modules:
        return sys.modules["nftables"]
    try:
        import nftables  # type: ignore[import-not-found]
    except ImportError:
        spec = importlib.util.spec_from_file_location("nftables", DEBIAN_MODULE)
        if spec is None or spec.loader is None:
            raise NftUnavailable(f"a lab with firewall = \"nft\" needs libnftables' Python binding ({INSTALL_HINT})") from None
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (OSError, ImportError) as exc:
            raise NftUnavailable(f"cannot load {DEBIAN_MODULE}: {exc} ({INSTALL_HINT})") from None
        sys.modules["nftables"] = module
        return module
    return nftables


def available() -> str | None:
    """Why native nft rules cannot be written here (None: they can)."""
    try:
        binding()
    except NftUnavailable as exc:
        return str(exc)
    return None


def run(ns: Netns, commands: Sequence[dict[str, Any]], *, what: str) -> Any:
    """Run nft JSON commands in ``ns``; the parsed JSON output (for list commands) or None."""
    return ns.call(_run_here, list(commands), what, ns.label)


def _run_here(commands: list[dict[str, Any]], what: str, label: str) -> Any:
    """``run`` in the calling thread's namespace (module-level: a node's agent runs it by name)."""
    ctx = binding().Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(True)
    rc, out, err = ctx.json_cmd({"nftables": commands})
    if rc != 0:
        raise KernelError(f"nft {what} in netns {label}: {str(err).strip() or f'exit {rc}'}")
    if isinstance(out, str):
        return json.loads(out) if out.strip() else None
    return out  # the binding parses JSON output itself


__all__ = ["DEBIAN_MODULE", "INSTALL_HINT", "NftUnavailable", "available", "binding", "run"]
