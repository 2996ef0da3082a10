"""Baselines for the build benchmark: the same topology as ``netcheck.scale.bridge_topology(n)``,
built with iproute2, in sandbox namespaces that the benchmark creates and removes.

* ``ip -batch``: one ``ip -batch`` for the namespaces, one for the host side (uplink,
  bridge, every veth), one for the wan side, and one ``ip -n C -batch -`` per container
  (addresses and routes are per namespace: a batch cannot cross namespaces). Teardown: one
  ``ip -batch`` of ``netns del``, then a wait until the host-side veths are gone.
* one ``ip`` per operation, as the tutorials do: ``ip netns add``, ``ip link add`` in the
  host, ``ip link set ... netns``, ``master``, ``up``, and ``ip netns exec C ip ...`` for
  the container side. Teardown: one ``ip netns del`` per namespace, then the same wait.

Neither writes sysctls or starts services (netcheck writes two sysctls per namespace and
starts two echo listeners per container, and records every object in its ledger first).
Every namespace is recorded in a netcheck run record before it exists, so ``netcheck clean``
removes the leftovers of a benchmark that was killed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

from netcheck.ledger import Ledger, NetnsEntry, Undoer, undo_all
from netcheck.naming import new_tag
from netcheck.scale import FIRST_HOST, SUBNET

BRIDGE_IP = f"{SUBNET.network_address + 1}/{SUBNET.prefixlen}"
GATEWAY = str(SUBNET.network_address + 1)


def _ip(args: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(["ip", *args], input=stdin.encode() if stdin is not None else None, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")


def _container_ip(i: int) -> str:
    return f"{SUBNET.network_address + FIRST_HOST + i}/{SUBNET.prefixlen}"


def _host_links(host: str) -> set[str]:
    out = subprocess.run(["ip", "-n", host, "-o", "link", "show"], capture_output=True, check=False).stdout.decode()
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _wait_gone(host: str, names: set[str], timeout: float = 30.0) -> None:
    """Poll (bounded) until the host-side veths are gone: the kernel removes them after the namespaces."""
    deadline = time.monotonic() + timeout
    while names & _host_links(host):
        if time.monotonic() > deadline:
            raise RuntimeError(f"host-side veths still present after {timeout} s in {host}")


class Sandbox:
    """The namespaces of one baseline run: recorded in a run record first, removed at the end."""

    def __init__(self, n: int) -> None:
        self.tag = new_tag()
        self.host, self.wan = f"{self.tag}-host", f"{self.tag}-wan"
        self.containers = [f"{self.tag}-c{i}" for i in range(n)]
        self.ledger = Ledger(self.tag, topology=f"bench-baseline-{n}", mode="sandbox")
        for name in (self.host, self.wan, *self.containers):
            self.ledger.record(NetnsEntry(name))

    def close(self) -> None:
        """Remove whatever is left (after a failure), then the run record."""
        errors = undo_all(self.ledger.entries, Undoer())
        self.ledger.close(remove=not errors)
        if errors:
            raise RuntimeError("; ".join(errors))


def ip_batch(n: int) -> tuple[float, float]:
    """(build seconds, teardown seconds) with ``ip -batch``."""
    box = Sandbox(n)
    try:
        t0 = time.perf_counter()
        _ip(["-batch", "-"], "".join(f"netns add {ns}\n" for ns in (box.host, box.wan, *box.containers)))
        host = [
            f"link add upl type veth peer name wn netns {box.wan}", "addr add 203.0.113.2/24 dev upl", "link set lo up", "link set upl up",
            "link add br0 type bridge", f"addr add {BRIDGE_IP} dev br0", "link set br0 up",
        ]
        for i, ns in enumerate(box.containers):
            host += [f"link add v{i} type veth peer name eth0 netns {ns}", f"link set v{i} master br0 up"]
        host.append("route add default via 203.0.113.1")
        _ip(["-n", box.host, "-batch", "-"], "\n".join(host) + "\n")
        _ip(["-n", box.wan, "-batch", "-"], "addr add 203.0.113.1/24 dev wn\nlink set lo up\nlink set wn up\n")
        for i, ns in enumerate(box.containers):
            _ip(["-n", ns, "-batch", "-"], f"link set lo up\naddr add {_container_ip(i)} dev eth0\nlink set eth0 up\nroute add default via {GATEWAY}\n")
        t1 = time.perf_counter()
        _ip(["-batch", "-"], "".join(f"netns del {ns}\n" for ns in box.containers))
        _wait_gone(box.host, {f"v{i}" for i in range(n)})
        _ip(["-batch", "-"], f"netns del {box.wan}\nnetns del {box.host}\n")
        t2 = time.perf_counter()
    finally:
        box.close()
    return t1 - t0, t2 - t1


def ip_per_operation(n: int) -> tuple[float, float]:
    """(build seconds, teardown seconds) with one ``ip`` command per operation, as the tutorials do."""
    box = Sandbox(n)
    h = ["-n", box.host]
    try:
        t0 = time.perf_counter()
        for ns in (box.host, box.wan):
            _ip(["netns", "add", ns])
        _ip([*h, "link", "add", "upl", "type", "veth", "peer", "name", "wn"])
        _ip([*h, "link", "set", "wn", "netns", box.wan])
        _ip([*h, "addr", "add", "203.0.113.2/24", "dev", "upl"])
        _ip([*h, "link", "set", "upl", "up"])
        _ip(["netns", "exec", box.wan, "ip", "addr", "add", "203.0.113.1/24", "dev", "wn"])
        _ip(["netns", "exec", box.wan, "ip", "link", "set", "wn", "up"])
        _ip([*h, "route", "add", "default", "via", "203.0.113.1"])
        _ip([*h, "link", "add", "br0", "type", "bridge"])
        _ip([*h, "addr", "add", BRIDGE_IP, "dev", "br0"])
        _ip([*h, "link", "set", "br0", "up"])
        for i, ns in enumerate(box.containers):
            _ip(["netns", "add", ns])
            _ip([*h, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0"])
            _ip([*h, "link", "set", "eth0", "netns", ns])
            _ip([*h, "link", "set", f"v{i}", "master", "br0"])
            _ip([*h, "link", "set", f"v{i}", "up"])
            _ip(["netns", "exec", ns, "ip", "addr", "add", _container_ip(i), "dev", "eth0"])
            _ip(["netns", "exec", ns, "ip", "link", "set", "eth0", "up"])
            _ip(["netns", "exec", ns, "ip", "link", "set", "lo", "up"])
            _ip(["netns", "exec", ns, "ip", "route", "add", "default", "via", GATEWAY])
        t1 = time.perf_counter()
        for ns in box.containers:
            _ip(["netns", "del", ns])
        _wait_gone(box.host, {f"v{i}" for i in range(n)})
        _ip(["netns", "del", box.wan])
        _ip(["netns", "del", box.host])
        t2 = time.perf_counter()
    finally:
        box.close()
    return t1 - t0, t2 - t1


__all__ = ["ip_batch", "ip_per_operation"]
