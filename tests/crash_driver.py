"""A lab run that a test can hold at an exact step and kill there (used by test_crash.py).

    python tests/crash_driver.py TOPOLOGY [--host-mode] [--hold-at N] [--fail-at N]

Builds the lab, sends a few probes, tears it down. Before each step it prints one line,
``STEP <n> <phase> <what>``:

- build: before each object is recorded in the ledger (so the previous one exists);
- probe: with a probe in flight (its socket is open in a namespace, its captures are open);
- teardown: before each ledger entry is undone, and before the run record is removed.

``--hold-at N`` stops at step N, prints ``HELD N``, and waits for a line on stdin: the
test kills the process there (SIGKILL is the point) or sends a line to let it go on.
``--hold-in PHASE`` holds at the first step of a phase instead.
``--fail-at N`` raises an error at step N instead (a build that fails half-way).
It prints ``BUILT <tag>`` after the build and ``DONE`` at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from netcheck import ledger as ledger_mod
from netcheck import spec
from netcheck.kernel import netns as netns_mod
from netcheck.lab import Lab


class InjectedFailure(RuntimeError):
    """The error --fail-at raises."""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("topology")
    ap.add_argument("--host-mode", action="store_true")
    ap.add_argument("--hold-at", type=int, default=0)
    ap.add_argument("--hold-in", choices=("build", "probe", "teardown"), help="hold at the first step of this phase")
    ap.add_argument("--fail-at", type=int, default=0)
    ap.add_argument("--probes", type=int, default=3)
    args = ap.parse_args()
    steps = 0
    phase = "build"

    def step(what: str) -> None:
        nonlocal steps
        steps += 1
        print(f"STEP {steps} {phase} {what}", flush=True)
        if steps == args.fail_at:
            raise InjectedFailure(f"injected failure at step {steps} ({phase} {what})")
        if steps == args.hold_at or phase == args.hold_in:
            args.hold_in = None
            print(f"HELD {steps}", flush=True)
            sys.stdin.readline()

    record = ledger_mod.Ledger.record
    undo = ledger_mod.Undoer.undo
    close = ledger_mod.Ledger.close
    make_socket = netns_mod.Netns.socket

    def held_record(self: ledger_mod.Ledger, entry: ledger_mod.Entry) -> ledger_mod.Entry:
        step(f"record {entry.describe()}")
        return record(self, entry)

    def held_undo(self: ledger_mod.Undoer, e: ledger_mod.Entry, owned: set[str]) -> None:
        step(f"undo {e.describe()}")
        undo(self, e, owned)

    def held_close(self: ledger_mod.Ledger, *, remove: bool) -> None:
        step("close run record")
        close(self, remove=remove)

    def held_socket(self: netns_mod.Netns, family: int, type_: int, proto: int = 0) -> Any:
        sock = make_socket(self, family, type_, proto)
        if phase == "probe":
            step(f"socket open in {self.label}")
        return sock

    ledger_mod.Ledger.record = held_record  # type: ignore[method-assign]
    ledger_mod.Undoer.undo = held_undo  # type: ignore[method-assign]
    ledger_mod.Ledger.close = held_close  # type: ignore[method-assign]
    netns_mod.Netns.socket = held_socket  # type: ignore[method-assign]

    t = spec.resolve(args.topology)
    lab = Lab(t, host_mode=args.host_mode)
    lab.build()
    print(f"BUILT {lab.tag} pid={os.getpid()}", flush=True)
    try:
        phase = "probe"
        from netcheck.probes import Prober

        prober = Prober(lab)
        first = t.containers[0]
        for i in range(args.probes):
            target = t.containers[(i + 1) % len(t.containers)]
            assert target.address is not None
            point = lab.point(first.name)
            r = prober.icmp(first.name, target.address.ip, capture=[point], target=target.name)
            print(f"PROBE {i + 1} {r.verdict}", flush=True)
    finally:
        phase = "teardown"
        lab.teardown()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
