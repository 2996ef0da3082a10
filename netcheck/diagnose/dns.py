"""Why a name does not resolve: each container's resolv.conf against the spec, the resolver's zone, and
a firewall that drops DNS over UDP but lets TCP through. Rules of netcheck.diagnose.rules, registered
given to ``rules.evaluate`` as ``RULES`` by the diagnosis and the doctor."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

from netcheck import resolvconf
from netcheck.adapters.docker import EMBEDDED_DNS_CHAINS, EMBEDDED_RESOLVER
from netcheck.diagnose.rules import Evidence
from netcheck.evidence import Finding
from netcheck.kernel.xtables import XChain, nft_chains
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


def _seen(ev: Evidence, name: str) -> tuple[Path, str | None, bool]:
    """(the resolv.conf the container reads, its text (None: it has none of its own), the file exists), as gathered
    (netcheck.diagnose.recording.facts: a tool's container reads its own root's, else /etc/netns/NETNS)."""
    path, text, exists = ev.lab.resolv_confs[name]
    return Path(path), None if Path(path) == resolvconf.MACHINE else text, exists


def resolv_conf(ev: Evidence) -> Iterator[Finding]:
    """The file `ip netns exec` mounts over /etc/resolv.conf: missing, a loopback nameserver, other resolvers, or other search domains."""
    for name, netns, text in _declared(ev):
        path, read, exists = _seen(ev, name)
        if read is None and path != resolvconf.MACHINE and exists:
            yield Finding("resolv_conf_missing", name, f"{name}: {path} cannot be read", f"chmod 644 {path}", score=80)
            continue
        if read is None:
            own = resolvconf.path_for(netns) if path == resolvconf.MACHINE else path
            yield Finding("resolv_conf_missing", name, f"{name}: {own} does not exist, so a program in the container reads the machine's /etc/resolv.conf, "
                          "whose resolver the container may not reach", _write_fix(netns, text), (f"the spec declares:\n{text}",), score=92)
            continue
        got = resolvconf.parse(read)
        want = resolvconf.parse(text)
        loop = [n for n in got.nameservers if _loopback(n) and n not in want.nameservers]  # a declared one is a tool's (Docker's 127.0.0.11)
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
    d = ev.t.dns
    zones = ev.lab.dns_zones if d is not None else None
    if d is None or zones is None:
        return
    want = d.zone()
    for address, zone in zones:
        if address != str(d.address):
            continue
        served = dict(zone)
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


def _embedded_dnat(chains: list[XChain], transport: str) -> str | None:
    """The rule that leads a query to 127.0.0.11:53 on to dockerd's port, if the nat OUTPUT hook reaches it (rendered), else None."""
    hooked = {c.name for c in chains if c.hook == "output" and c.kind == "nat"}
    jumped = {r.target for c in chains if c.name in hooked for r in c.rules}
    for c in chains:
        if c.name not in hooked | jumped:
            continue
        for r in c.rules:
            if r.target == "DNAT" and r.protocol == transport and r.dport == 53 and (r.dst or "").split("/")[0] == str(EMBEDDED_RESOLVER):
                return r.render()
    return None


def embedded_dns_rules(ev: Evidence) -> Iterator[Finding]:
    """A query to Docker's embedded resolver went unanswered, and the container's own nat table has no DNAT that leads 127.0.0.11:53 to dockerd."""
    r = ev.result
    if r is None or r.kind != "dns" or r.rcode is not None or r.request.destination != EMBEDDED_RESOLVER or ev.t.setup.mode != "docker":
        return
    name = r.request.source
    ruleset = ev.lab.embedded_nat.get(name, "it was not read")
    if not isinstance(ruleset, dict):
        yield Finding("embedded_dns_rules_missing", name, f"{name}: its nat table cannot be read ({ruleset})", "", score=40)
        return
    chains = nft_chains(ruleset, ("ip",))
    if _embedded_dnat(chains, r.request.transport) is not None:
        return
    left = [f"{c.name}: {len(c.rules)} rule(s)" for c in chains if c.name in EMBEDDED_DNS_CHAINS]
    on = ev.t.network_of(ev.t.container(name))
    host = ev.lab.docker_host
    yield Finding(
        "embedded_dns_rules_missing", name,
        f"{name}: no DNAT in its own nat table leads {r.request.transport} to {EMBEDDED_RESOLVER}:53 on to Docker's embedded resolver, so the query meets a port where "
        "nothing listens (Docker writes these rules, DOCKER_OUTPUT and DOCKER_POSTROUTING, when it sets the container's network up)",
        f"docker -H {host} restart {name}  (Docker writes them again; or docker network disconnect {on.name if on else 'NETWORK'} {name} and connect it again)",
        (f"{name}'s nat chains: " + (", ".join(left) or f"no {' or '.join(EMBEDDED_DNS_CHAINS)}"), f"the query: {r.error or r.verdict}"),
        score=96,
    )


def aardvark_down(ev: Evidence) -> Iterator[Finding]:
    """A query to a Podman network's resolver (aardvark-dns, on its gateway) went unanswered, nothing listens on the gateway's port 53, and aardvark-dns is gone."""
    r = ev.result
    t = ev.t
    if r is None or r.kind != "dns" or r.rcode is not None or t.setup.mode != "podman":
        return
    on = t.network_of(t.container(r.request.source)) if r.request.source in {c.name for c in t.containers} else None
    bridge = next((b for b in t.bridges if on is not None and b.name == on.bridge), None)
    if on is None or not on.dns or bridge is None or bridge.address is None or bridge.address.ip != r.request.destination:
        return
    host = ev.snap.ns("host")
    proto = r.request.transport
    if host is not None and any(s.proto == proto and s.port == 53 and s.accepts(str(bridge.address.ip)) for s in host.listening):
        return  # something answers there: not this
    found = ev.lab.aardvark
    evidence = [f"host: nothing listens on {proto} {bridge.address.ip}:53"]
    if found is not None:
        pid, alive = found
        if alive:
            return  # it runs, but not on the gateway (its config): not this cause
        evidence.append(f"aardvark-dns (pid {pid}, started by netavark for the lab) is gone")
    yield Finding(
        "aardvark_dns_down", "host",
        f"host: aardvark-dns, the resolver of network {on.name} on its gateway {bridge.address.ip}, is not running, so the query meets a port where nothing listens",
        "podman network reload --all  (netavark starts aardvark-dns again for the running containers; or restart one of the network's containers)",
        tuple(evidence), score=96,
    )


__all__ = ["aardvark_down", "dns_udp_blocked", "dns_zone", "embedded_dns_rules", "resolv_conf"]


RULES = (resolv_conf, dns_zone, dns_udp_blocked, embedded_dns_rules, aardvark_down)
