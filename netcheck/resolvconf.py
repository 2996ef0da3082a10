"""resolv.conf as data: where a container's lives, its text, and the names a lookup tries.

``ip netns exec NAME`` bind-mounts ``/etc/netns/NAME/resolv.conf`` over ``/etc/resolv.conf``
when that file exists (seed 2's ``/etc/netns/http2``), so a process "in the container" reads
that file, and the machine's own one otherwise. netcheck writes the first for a built lab and
its probes read it the same way: no mount namespace is needed to see what a container sees.
Pure text: nothing here touches the kernel.

    >>> text = render(("203.0.113.53",), ("corp.test",))
    >>> parse(text)
    ResolvConf(nameservers=('203.0.113.53',), search=('corp.test',), ndots=1)
    >>> candidates("web", parse(text))
    ('web.corp.test', 'web')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ETC_NETNS = Path("/etc/netns")  # as iproute2 names it (NETNS_ETC_DIR)
MACHINE = Path("/etc/resolv.conf")
HEADER = "# written by netcheck"
DNS_PORT = 53


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1


def netns_dir(netns: str, root: Path = ETC_NETNS) -> Path:
    """The folder ``ip netns exec`` reads a namespace's files from: /etc/netns/NAME."""
    return root / netns


def path_for(netns: str, root: Path = ETC_NETNS) -> Path:
    """The resolv.conf a process in namespace ``netns`` reads, as ``ip netns exec`` shows it."""
    return netns_dir(netns, root) / "resolv.conf"


def seen_from(netns: str | None, root: Path = ETC_NETNS, machine: Path = MACHINE) -> tuple[Path, str | None]:
    """(the file a process in ``netns`` reads, its text or None if unreadable): the namespace's own, else the machine's
    (``netns`` None: a namespace without a name, which only sees the machine's)."""
    for p in ((path_for(netns, root),) if netns else ()) + (machine,):
        try:
            return p, p.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError:
            return p, None
    return machine, None


def render(nameservers: Sequence[str], search: Sequence[str] = ()) -> str:
    """The text of a resolv.conf (nameserver lines, then search)."""
    lines = [HEADER, *(f"nameserver {n}" for n in nameservers)]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def parse(text: str) -> ResolvConf:
    """What a resolver reads from a resolv.conf (the last search/domain line wins, as in glibc)."""
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    ndots = 1
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            nameservers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = tuple(w.rstrip(".").lower() for w in words[1:])
        elif words[0] == "options":
            for w in words[1:]:
                if w.startswith("ndots:") and w[6:].isdigit():
                    ndots = min(int(w[6:]), 15)
    return ResolvConf(tuple(nameservers), search, ndots)


def candidates(name: str, conf: ResolvConf) -> tuple[str, ...]:
    """The absolute names a stub resolver asks for ``name``, in order (glibc's rule): a name with
    a trailing dot as it is; one with at least ``ndots`` dots first as it is, then with each
    search domain; a shorter one with each search domain first."""
    if name.endswith("."):
        return (name.rstrip(".").lower(),)
    bare = name.lower()
    searched = tuple(f"{bare}.{s}" for s in conf.search)
    return (bare, *searched) if bare.count(".") >= conf.ndots else (*searched, bare)


def lookup(zone: Mapping[str, str], name: str, conf: ResolvConf) -> tuple[str | None, str | None]:
    """(the name that answers, its address) through the search list, or (None, None): NXDOMAIN."""
    for candidate in candidates(name, conf):
        if candidate in zone:
            return candidate, zone[candidate]
    return None, None


__all__ = ["DNS_PORT", "ETC_NETNS", "HEADER", "MACHINE", "ResolvConf", "candidates", "lookup", "netns_dir", "parse", "path_for", "render", "seen_from"]
