"""Why a name does not resolve: each container's resolv.conf against the spec, the resolver's zone, and
a firewall that drops DNS over UDP but lets TCP through. Rules of netcheck.diagnose.rules, registered
given to ``rules.evaluate`` as ``RULES`` by the diagnosis and the doctor."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

from netcheck import resolvconf
from netcheck.diagnose.rules import Evidence
from netcheck.evidence import Finding
from netcheck.lab.plan import resolv_conf_text


def _declared(ev: Evidence) -> Iterator[tuple[str, str, str]]:
    """(container, its kernel namespace name, the resolv.conf text the spec declares) of each container with resolvers of its own."""
    for c in ev.t.containers:
        text = resolv_conf_text(c)
        ns = ev.snap.ns(c.name)
        if text is not None and ns is not None and ns.netns:
            yield c.name, ns.netns, text


def _write_fix(netns: str, text: str) -> str:
    body = "\\n".join(text.rstrip("\n").splitlines()[1:])
    return f"mkdir -p /etc/netns/{netns} && printf '{body}\\n' > {resolvconf.path_for(netns)}  (not `echo \"... | tee\"`: quoted, the pipe is text)"


def resolv_conf(ev: Evidence) -> Iterator[Finding]:
    """The file `ip netns exec` mounts over /etc/resolv.conf: missing, a loopback nameserver, other resolvers, or other search domains."""
    for name, netns, text in _declared(ev):
        path = resolvconf.path_for(netns)
        try:
            got = resolvconf.parse(path.read_text("utf-8", errors="replace"))
        except FileNotFoundError:
            yield Finding("resolv_conf_missing", name, f"{name}: {path} does not exist, so a program in the container reads the machine's /etc/resolv.conf, "
                          "whose resolver the container may not reach", _write_fix(netns, text), (f"the spec declares:\n{text}",), score=92)
            continue
        except OSError as exc:
            yield Finding("resolv_conf_missing", name, f"{name}: {path} cannot be read ({exc.strerror})", f"chmod 644 {path}", score=80)
            continue
        want = resolvconf.parse(text)
        loop = [n for n in got.nameservers if _loopback(n)]
        if loop:
            yield Finding("nameserver_loopback", name, f"{name}: {path} names {', '.join(loop)}, a loopback address: inside the container that is its own lo, where nothing "
                          "serves DNS (the host's stub resolver 127.0.0.53 is not reachable from a container)", _write_fix(netns, text),
                          (f"nameservers: {', '.join(got.nameservers)}", f"the spec declares: {', '.join(want.nameservers)}"), score=94)
        elif got.nameservers != want.nameservers:
            yield Finding("resolv_conf_wrong", name, f"{name}: {path} names the resolvers {', '.join(got.nameservers) or 'none'}, the spec declares {', '.join(want.nameservers)}",
                          _write_fix(netns, text), score=90)
        if got.search != want.search:
            yield Finding("search_wrong", name, f"{name}: {path} searches {' '.join(got.search) or 'nothing'}, the spec declares {' '.join(want.search) or 'nothing'}: "
                          "a short name is completed with the wrong domain", _write_fix(netns, text),
                          tuple(f"{r.name!r} is asked as: {', '.join(resolvconf.candidates(r.name, got))}" for c in ev.t.containers if c.name == name for r in c.resolve),
                          score=88)


def _loopback(address: str) -> bool:
    try:
        return IPv4Address(address).is_loopback
    except ValueError:
        return False


def dns_zone(ev: Evidence) -> Iterator[Finding]:
    """netcheck's DNS server answers the zone the spec declares."""
    d, services = ev.t.dns, getattr(ev.lab, "services", None)
    if d is None or services is None:
        return
    want = d.zone()
    for listener in services.listeners:
        if listener.kind != "dns" or listener.address != str(d.address):
            continue
        served = dict(listener.zone)
        wrong = sorted(n for n in want if served.get(n) != want[n])
        if wrong:
            shown = "; ".join(f"{n} -> {served.get(n, 'NXDOMAIN')} (the spec says {want[n]})" for n in wrong)
            yield Finding("dns_wrong_answer", "wan", f"the resolver {d.address} answers {shown}", f"correct the A record{'s' if len(wrong) > 1 else ''} of the zone the resolver at {d.address} serves",
                          score=90)
        return


def dns_udp_blocked(ev: Evidence) -> Iterator[Finding]:
    """A DNS query over UDP got no answer, and a DROP or REJECT rule for UDP port 53 stands in the host's filter table."""
    r = ev.result
    if r is None or r.kind != "dns" or r.request.transport != "udp" or r.rcode is not None:
        return
    for placed in ev.fw.rules():
        x = placed.rule
        filters = {kind for _hook, kind in ev.fw.hooks_of(placed.backend, x.table, x.chain)}
        if "filter" in filters and x.target in ("DROP", "REJECT") and x.protocol == "udp" and x.dport == 53:
            grew = ev.counted(placed)
            # Above a firewall finding on the same rule: the rule's own words say it is DNS over UDP alone.
            yield Finding("dns_udp_blocked", "host", f"host: the rule `{placed.render()}` drops DNS over UDP ({x.chain}); DNS over TCP is not matched and passes, "
                          "so only resolvers that fall back to TCP work", ev.run("host", placed.delete()),
                          (placed.where() + (f", its counter grew by {grew} during the repeated query" if grew else ""),),
                          score=97 if grew else 85, fixes=(ev.delete_fix(placed),))


__all__ = ["dns_udp_blocked", "dns_zone", "resolv_conf"]


RULES = (resolv_conf, dns_zone, dns_udp_blocked)
