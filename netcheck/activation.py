"""When netcheck is in play, and when a run that selected netcheck checks cannot check anything.

netcheck is opt-in: it acts only on tests that use its fixtures (``netcheck_*``) or its markers, and
on runs given a ``--netcheck-*`` option. A project that does not use it runs as if it were not installed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from netcheck import spec
    from netcheck.settings import Settings

FIXTURES = frozenset({
    "netcheck_settings", "netcheck_lab_factory", "netcheck_topology", "netcheck_lab", "netcheck_fresh_lab",
    "netcheck_evidence", "netcheck_probe", "netcheck_prober_for",
})
MARKERS = ("netcheck", "netcheck_property")
BUILDS_LABS = "netcheck_lab_factory"  # every fixture that builds a lab depends on it


def is_netcheck_item(item: pytest.Item) -> bool:
    """A test that uses a netcheck fixture or carries a netcheck marker."""
    names = getattr(item, "fixturenames", ())
    return bool(FIXTURES.intersection(names)) or any(item.get_closest_marker(m) for m in MARKERS)


def builds_labs(item: pytest.Item) -> bool:
    return BUILDS_LABS in getattr(item, "fixturenames", ())


def asked_for(config: pytest.Config) -> bool:
    """The run names netcheck explicitly: a ``--netcheck-*`` option, the ini key or the environment."""
    from netcheck import settings

    given = any(value not in (None, False, []) for name, value in vars(config.option).items() if name.startswith("netcheck_"))
    ini = config.getini("netcheck_topology")
    return given or bool(ini) or settings.topology_from_env() is not None


def unrunnable(config: pytest.Config, items: Sequence[pytest.Item], settings: Settings) -> str | None:
    """Why the selected netcheck checks cannot run on this machine (None: they can), with the fix.

    Skipping them instead would give a green run that checked nothing.
    """
    if config.option.collectonly:
        return None
    labs = [i for i in items if builds_labs(i)]
    if not labs:
        return None
    from netcheck import settings as settings_mod
    from netcheck.factory import NEED_ROOT
    from netcheck.lab import has_net_admin

    if not has_net_admin():
        return f"{len(labs)} selected netcheck check(s) need to build network namespaces, and this process cannot: {NEED_ROOT}"
    topologies: dict[str, spec.Topology] = {}
    native: set[str] = set()  # built with firewall = "nft"
    for item in labs:
        t = settings_mod.item_topology(item)
        if t is not None and t.setup.mode != "build":
            topologies.setdefault(t.name, t)
        elif t is not None and t.host.firewall == "nft":
            native.add(t.name)
    if native:
        from netcheck.kernel import nft

        why = nft.available()
        if why:
            return f"the topologies {', '.join(sorted(native))} (firewall = \"nft\") write native nftables rules: {why}"
    if not topologies:
        return None
    from netcheck import adapters
    from netcheck.lab.mode import mode_of

    lacking = []
    for t in topologies.values():
        needs = adapters.missing(t, mode=mode_of(settings.host_mode))
        if needs:
            lacking.append(f"  {t.name} ({t.source}, setup mode {t.setup.mode}) needs " + "; ".join(needs))
    if not lacking:
        return None
    return "the topologies of the selected netcheck checks need tools this machine lacks:\n" + "\n".join(lacking) + (
        "\n(or install every tool netcheck's adapters use: sudo bash bootstrap.sh --install-only --with-tools)"
    )


@contextlib.contextmanager
def sigterm_tears_down() -> Iterator[None]:
    """While labs exist, SIGTERM tears them down like Ctrl-C does, instead of killing the run mid-way.

    Installed only when netcheck builds a lab, and only over the default handler; restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def skip_for_missing_tool(reason: str) -> NoReturn:
    """Skip a check because this machine lacks a tool; under CI (``CI=true``) that is a failure instead.

    A CI job must not go green on a machine that quietly lacks what the checks need.
    """
    from netcheck.settings import in_ci

    __tracebackhide__ = True
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a check skipped for a missing tool fails the run; install the tool)", pytrace=False)
    pytest.skip(reason)
