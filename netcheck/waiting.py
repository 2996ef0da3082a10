"""Bounded waits on a condition: the only way netcheck waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold in time; the message says what and what was seen last."""


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns a truthy value, with a backoff and a deadline.

    Returns that value. On timeout, raises WaitTimeout naming ``what`` and the last
    state seen (``describe()``, or the last falsy value).
    """
    deadline = time.monotonic() + timeout
    pause = 0.0005
    idle = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            seen = describe() if describe else repr(value)
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last seen: {seen}")
        idle.wait(min(pause, left))
        pause = min(pause * 2, 0.05)
