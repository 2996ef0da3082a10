"""What users attach to a lab (a prober's capture points, servers): one per key, made on first use,
released at teardown, newest first, because it would keep the lab's namespaces alive.

One value serves the single-host lab, the multi-host labs and the doctor's view of namespaces
netcheck did not build."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar, cast

T = TypeVar("T")


class Attachments:
    """The attachments of one lab and the releases registered with it."""

    def __init__(self) -> None:
        self._releases: list[Callable[[], None]] = []
        self._made: dict[object, object] = {}
        self._lock = threading.RLock()  # probes sent together (Prober.many) may ask at once; make() may ask for another

    def on_teardown(self, release: Callable[[], None]) -> None:
        """Run ``release`` at teardown (newest first)."""
        self._releases.append(release)

    def get(self, key: object, make: Callable[[], T], release: Callable[[T], None]) -> T:
        """The attachment under ``key``, made on first use; ``release(it)`` runs at teardown."""
        with self._lock:
            if key not in self._made:
                made = make()
                self._made[key] = made
                self.on_teardown(lambda: release(made))
            return cast(T, self._made[key])

    def close_all(self) -> None:
        """Close each attachment that can be closed (a prober's capture points reopen on next use): after links were re-created."""
        for made in list(self._made.values()):
            close = getattr(made, "close", None)
            if callable(close):
                close()

    def release_all(self, what: str) -> list[str]:
        """Run every release, newest first; returns their errors, each naming ``what`` held it (every release is tried)."""
        errors = []
        while self._releases:
            release = self._releases.pop()
            try:
                release()
            except Exception as exc:  # noqa: BLE001 - every release is tried; the errors are reported
                errors.append(f"releasing what {what} held: {exc}")
        self._made.clear()
        return errors


__all__ = ["Attachments"]
