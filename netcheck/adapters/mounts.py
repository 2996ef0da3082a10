"""A mount namespace of the lab's own, so a tool's mounts and machine-wide state stay in the lab.

Podman 4.3 keeps its IPAM database at the fixed path /run/containers/networks, and both
Podman and Docker mount things (namespace files, shm, their roots). Run inside a private
mount namespace (propagation 'slave': the machine's mounts reach it, its own never leave it),
those live only as long as the namespace's processes do, which the ledger records; so even
after a crash ``netcheck clean`` ending the processes removes every mount with them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck.ledger import kill_process, process_starttime
from netcheck.waiting import wait_until

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab

HOLD = ("sleep", "2147483647")


def unshare_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` started in a new mount namespace that receives the machine's mounts but keeps its own."""
    return ["unshare", "--mount", "--propagation", "slave", "--", *argv]


def wait_unshared(pid: int, comm: str) -> None:
    """Wait until ``pid`` has left this process's mount namespace and exec'd ``comm``."""
    mine = os.stat("/proc/self/ns/mnt").st_ino

    def ready() -> bool:
        try:
            return os.stat(f"/proc/{pid}/ns/mnt").st_ino != mine and Path(f"/proc/{pid}/comm").read_text().strip() == comm
        except OSError:
            return False

    wait_until(ready, timeout=10, what=f"process {pid} to enter its own mount namespace and run {comm}")


class PrivateMounts:
    """A process holding a private mount namespace, with bind mounts applied inside it."""

    def __init__(self, lab: ExternalLab, binds: dict[str, Path]) -> None:
        proc = lab.host.spawn(unshare_argv(HOLD), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.proc = proc
        self.pid = proc.pid
        lab.record_process(self.pid, unshare_argv(HOLD))
        self.starttime = process_starttime(self.pid)
        wait_unshared(self.pid, HOLD[0])
        for target, source in binds.items():
            # The mount point must exist on the shared filesystem (the tool would create it there itself); a file binds over a file.
            if source.is_dir():
                os.makedirs(target, exist_ok=True)
            done = subprocess.run(self.argv(["mount", "--bind", str(source), target]), capture_output=True, timeout=30, check=False)
            if done.returncode != 0:
                raise OSError(f"bind {source} on {target} in the lab's mount namespace: {done.stderr.decode(errors='replace').strip()}")

    def argv(self, argv: Sequence[str], cwd: Path | None = None) -> list[str]:
        """``argv`` run inside this mount namespace (the network namespace is the caller's), in ``cwd``
        (entering a mount namespace otherwise moves to its root)."""
        return ["nsenter", f"--mount=/proc/{self.pid}/ns/mnt", f"--wd={cwd or os.getcwd()}", "--", *argv]

    def close(self) -> None:
        """End the holder: the namespace and every mount in it go once no process is left inside."""
        kill_process(self.pid, self.starttime)
        self.proc.wait(10)


__all__ = ["PrivateMounts", "unshare_argv", "wait_unshared"]
