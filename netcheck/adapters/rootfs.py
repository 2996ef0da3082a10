"""A container root filesystem made locally from a static busybox (no registry is reachable).

Podman runs it directly (``--rootfs DIR``); Docker imports it as an image (``docker import``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = ("sh", "sleep", "httpd", "nc", "ip", "ping", "wget", "cat", "ls", "echo", "ps", "kill")
# The container's own process: a shell that waits, and exits at once on SIGTERM (as PID 1 it has
# no default handler), so a tool's stop never waits out its grace period. netcheck's services
# answer inside the container's namespace.
IDLE_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait")
INSTALL_HINT = "apt-get install -y --no-install-recommends busybox-static"


def static_busybox() -> Path | None:
    """A statically linked busybox on this machine, or None."""
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        if path.is_file() and not _dynamic(path):
            return path
    return None


def _dynamic(path: Path) -> bool:
    """True if the ELF file asks for a dynamic loader (its PT_INTERP string sits in the first page)."""
    with path.open("rb") as f:
        head = f.read(4096)
    return b"ld-linux" in head or b"ld-musl" in head


def make_rootfs(target: Path) -> Path:
    """Write a minimal busybox root filesystem at ``target`` (a new folder); returns it."""
    busybox = static_busybox()
    if busybox is None:
        raise FileNotFoundError(f"no static busybox at {' or '.join(BUSYBOX_PATHS)} (install it: {INSTALL_HINT})")
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, target / "bin" / "busybox")
    for applet in APPLETS:
        (target / "bin" / applet).symlink_to("busybox")
    (target / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (target / "etc" / "group").write_text("root:x:0:\n")
    return target


__all__ = ["IDLE_COMMAND", "INSTALL_HINT", "make_rootfs", "static_busybox"]
