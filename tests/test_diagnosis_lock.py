"""Diagnoses of one lab run one at a time: the lock is the lab's own attachment (no module-level map). No root: the lab is not built."""

from __future__ import annotations

import threading

from netcheck import spec
from netcheck.diagnose import _lock
from netcheck.lab import Lab
from netcheck.waiting import wait_until


def test_one_lock_per_lab_even_when_asked_for_at_once() -> None:
    lab, other = Lab(spec.builtin("seed1")), Lab(spec.builtin("seed1"))
    start = threading.Barrier(16)
    got: list[threading.Lock] = []

    def ask() -> None:
        start.wait(timeout=10)
        got.append(_lock(lab))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(got) == 16 and len({id(lock) for lock in got}) == 1, "probes failing together (Prober.many) share their lab's one lock"
    assert _lock(other) is not got[0], "another lab diagnoses on its own"
    lab.release_held()
    assert _lock(lab) is not got[0], "the lock goes with what the lab held at teardown"


def test_an_attachment_asked_for_at_once_is_made_once() -> None:
    lab = Lab(spec.builtin("seed1"))
    asked: list[int] = []
    made: list[int] = []

    def make() -> object:
        made.append(1)
        wait_until(lambda: len(asked) == 8, timeout=10, what="every thread to ask for the attachment")  # the others ask while it is being made
        return object()

    def ask() -> None:
        asked.append(1)
        got.append(lab.attachment("k", make, lambda _x: None))

    got: list[object] = []
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(made) == 1 and len(got) == 8 and len({id(x) for x in got}) == 1
