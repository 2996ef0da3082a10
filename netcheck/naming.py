"""Kernel names for one lab: unique per run and per xdist worker, tagged, at most 15 characters."""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netcheck.spec import Topology

IFNAMSIZ = 15
TAG_PREFIX = "nc"
_ALPHABET = string.ascii_lowercase + string.digits


def new_tag() -> str:
    """A fresh lab tag such as ``nck7q0``: 'nc' plus four random base-36 characters.

    The xdist worker number is folded into the first character so that two workers of one
    run can never draw the same tag.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    rand = "".join(secrets.choice(_ALPHABET) for _ in range(4))
    if worker.startswith("gw") and worker[2:].isdigit():
        rand = _ALPHABET[int(worker[2:]) % len(_ALPHABET)] + rand[1:]
    return TAG_PREFIX + rand


@dataclass(frozen=True)
class KernelNames:
    """Maps a lab's spec names to the names its objects carry in the kernel."""

    tag: str

    @property
    def host_ns(self) -> str:
        return f"{self.tag}-host"

    @property
    def wan_ns(self) -> str:
        return f"{self.tag}-wan"

    def container_ns(self, container: str) -> str:
        return f"{self.tag}-{container}"

    def bridge(self, index: int) -> str:
        return self._fit(f"{self.tag}b{index}")

    def host_veth(self, index: int) -> str:
        return self._fit(f"{self.tag}v{index}")

    @property
    def uplink(self) -> str:
        return f"{self.tag}up"

    @property
    def wan_uplink(self) -> str:
        return f"{self.tag}wn"

    def host_interfaces(self, topology: Topology) -> dict[str, str]:
        """Spec name -> kernel name of a topology's host-side interfaces: uplink, bridges, veths."""
        out = {topology.host.uplink: self.uplink}
        for i, b in enumerate(topology.bridges):
            out[b.name] = self.bridge(i)
        for i, c in enumerate(topology.containers):
            if c.host_veth:
                out[c.host_veth] = self.host_veth(i)
        return out

    @property
    def comment(self) -> str:
        """The comment every iptables rule of this lab carries."""
        return f"netcheck {self.tag}"

    @staticmethod
    def _fit(name: str) -> str:
        if len(name) > IFNAMSIZ:
            raise ValueError(f"kernel name {name!r} is longer than {IFNAMSIZ} characters")
        return name
