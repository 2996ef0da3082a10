"""Run facts: when, on which kernel and distribution, with which tools, and which iptables backend
holds the rules in a lab's host namespace.

Everything here is read, never changed. A fact that cannot be read is reported as "unknown"
with the reason, never as an exception.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from netcheck.report.model import HostFacts, RunFacts

if TYPE_CHECKING:
    from netcheck.kernel.netns import Netns
    from netcheck.lab import Lab


class ObservedLink(TypedDict):
    kernel: str
    state: str  # UP, DOWN or missing
    addresses: list[str]


class ObservedHost(TypedDict):
    """What a lab's host namespace holds now, in the spec's names (the diagram draws it)."""

    sysctls: dict[str, str]
    links: dict[str, ObservedLink]
    errors: list[str]
    forward_policy: NotRequired[str]

UNKNOWN = "unknown"
PACKAGES = ("netcheck", "pyroute2", "scapy", "python-iptables", "pytest", "pytest-xdist", "jinja2")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _tool_version(argv: Sequence[str], pattern: str = r"v?(\d+(?:\.\d+)+)") -> str:
    """The version a command prints (``iptables --version``), or why it could not be read."""
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{UNKNOWN} ({exc})"
    text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    m = re.search(pattern, text)
    return text.splitlines()[0] if text and not m else (m.group(0) if m else UNKNOWN)


def distribution(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    except OSError:
        return UNKNOWN
    return fields.get("PRETTY_NAME", fields.get("NAME", UNKNOWN)).strip().strip('"')


def machine_facts() -> RunFacts:
    """Facts about this machine and its tools (cheap: a few ``--version`` calls)."""
    versions = {name: _package_version(name) for name in PACKAGES}
    versions["python"] = platform.python_version()
    versions["iptables"] = _tool_version(["iptables", "--version"], r"v\d+(?:\.\d+)+(?: \((?:nf_tables|legacy)\))?")
    versions["nft"] = _tool_version(["nft", "--version"])
    versions["graphviz"] = _tool_version(["dot", "-V"], r"\d+(?:\.\d+)+")
    iptables = versions["iptables"]
    variant = "nft" if "nf_tables" in iptables else "legacy" if "legacy" in iptables else UNKNOWN
    return {
        "kernel": platform.release(),
        "distribution": distribution(),
        "machine": platform.machine(),
        "versions": versions,
        # What the plain `iptables` command on this machine writes to (Debian: iptables-nft).
        "iptables_command": variant,
    }


def backend_facts(host: Netns) -> HostFacts:
    """Which iptables backend holds rules in ``host`` (a lab's host namespace): legacy, nft, both or none.

    Legacy rules are read through libiptc, nf_tables through ``nft -j list ruleset``; the kernel
    applies both, which is why a rule made by one tool can be invisible to the other.
    """
    from netcheck.kernel.inspect import legacy_tables
    from netcheck.kernel.xtables import nft_available, nft_chains, read_legacy, read_nft

    errors: list[str] = []
    out: HostFacts = {"netns": host.name or "(this namespace)", "legacy_rules": None, "nft_rules": None, "errors": errors}
    try:
        # Only the tables that exist: opening one through libiptc creates it (in host mode, in the real host).
        chains = read_legacy(host, tuple(t for t in legacy_tables(host) if t in ("filter", "nat")))
        out["legacy_rules"] = sum(len(c.rules) for c in chains)
        out["legacy_policies"] = {f"{c.table}/{c.name}": c.policy for c in chains if c.policy is not None and c.policy != "ACCEPT"}
    except Exception as exc:  # noqa: BLE001 - a fact we cannot read is "unknown", with the reason
        errors.append(f"reading legacy xtables: {exc}")
    if nft_available():
        try:
            out["nft_rules"] = sum(len(c.rules) for c in nft_chains(read_nft(host)))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"reading nf_tables: {exc}")
    else:
        errors.append("nft is not installed, so nf_tables rules could not be read")
    out["backend"] = backend_in_use(out.get("legacy_rules"), out.get("nft_rules"))
    return out


def backend_in_use(legacy: int | None, nft: int | None) -> str:
    """legacy, nft, both (each holds rules: the kernel applies both sets), none, or unknown."""
    if legacy is None and nft is None:
        return UNKNOWN
    has_legacy, has_nft = bool(legacy), bool(nft)
    if has_legacy and has_nft:
        return "both"
    if has_legacy:
        return "legacy" if nft is not None else "legacy (nf_tables unknown)"
    if has_nft:
        return "nft" if legacy is not None else "nft (legacy unknown)"
    return "none" if legacy is not None and nft is not None else UNKNOWN


OBSERVED_SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables")


def observed_host(lab: Lab) -> ObservedHost:
    """What the lab's host namespace holds now, in the spec's names: sysctls, the FORWARD policy,
    and each host-side link's state and addresses. The diagram draws this, not the spec.

    A fact that cannot be read is left out, with the reason under ``errors``.
    """
    from netcheck.kernel.inspect import legacy_tables
    from netcheck.kernel.xtables import nft_available, nft_chains, read_legacy, read_nft

    host = lab.host
    t = lab.topology
    out: ObservedHost = {"sysctls": {}, "links": {}, "errors": []}
    try:
        for key in sorted({k for k, _ in t.host.sysctls} | set(OBSERVED_SYSCTLS)):
            value = host.sysctl(key)
            if value is not None:
                out["sysctls"][key] = value
        links = {link.name: link for link in host.links()}
        addresses: dict[str, list[str]] = {}
        for a in host.addresses():
            addresses.setdefault(a.interface, []).append(str(a.address))
        spec_names = [t.host.uplink, *(b.name for b in t.bridges), *(c.host_veth for c in t.containers if c.host_veth)]
        for name in spec_names:
            kernel = lab.kname(name)
            link = links.get(kernel)
            out["links"][name] = {
                "kernel": kernel,
                "state": "missing" if link is None else ("UP" if link.up else "DOWN"),
                "addresses": addresses.get(kernel, []),
            }
    except Exception as exc:  # noqa: BLE001 - a fact we cannot read is left out, with the reason
        out["errors"].append(f"reading the host namespace: {exc}")
    policies: list[str] = []
    try:
        if "filter" in legacy_tables(host):
            policies += [c.policy for c in read_legacy(host, ("filter",)) if c.name == "FORWARD" and c.policy]
        if nft_available():
            policies += [c.policy for c in nft_chains(read_nft(host)) if c.name.upper() == "FORWARD" and c.policy]
    except Exception as exc:  # noqa: BLE001
        out["errors"].append(f"reading the FORWARD policy: {exc}")
    if policies:
        # A drop in any base chain wins: one DROP policy is the policy packets meet.
        out["forward_policy"] = "DROP" if "DROP" in (p.upper() for p in policies) else policies[0].upper()
    return out
