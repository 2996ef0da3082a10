"""The reachability matrix of a multi-host lab: every container of every host against every
other, the cross-host pairs through the join, probed by the shared engine (netcheck.probes.matrix).

Cells are named ``HOST/CONTAINER``; a failing cell's evidence probe captures at both ends
(``a/c0:eth0``, ``b/c3:eth0``), sent by a prober of the source's host::

    with CrossHostMatrix(multi) as m:                # doctest: +SKIP
        result = m.all()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Unpack

from netcheck import expect as promise
from netcheck.evidence import MatrixResult
from netcheck.multihost import probes as cross_probes
from netcheck.multihost.lab import MultiLab
from netcheck.probes import Prober
from netcheck.probes.matrix import EngineOptions, MatrixEngine, MatrixError, Member, Segment


class CrossHostMatrix(MatrixEngine):
    """Matrices across the hosts of ``multi``. ``probers`` (host name -> prober, e.g. one that
    diagnoses) sends the probes to be diagnosed; the other options are ``MatrixEngine``'s."""

    def __init__(self, multi: MultiLab, *, probers: Mapping[str, Prober] | None = None, **options: Unpack[EngineOptions]) -> None:
        super().__init__(**options)
        self.multi = multi
        self._plain = {h: _in_process(cross_probes.prober(multi, h)) for h in multi.hosts}
        self._heads = dict(probers or {})

    def all(self, hosts: Sequence[str] | None = None) -> MatrixResult:
        """Every container of ``hosts`` (default: every host) against every other: across hosts each
        must reach each (the join routes every container subnet), on one host as its spec says."""
        chosen = list(hosts) if hosts is not None else list(self.multi.hosts)
        unknown = [h for h in chosen if h not in self.multi.hosts]
        if unknown:
            raise MatrixError(f"{self.multi.topology.name} has no host {', '.join(unknown)} (its hosts: {', '.join(self.multi.hosts)})")
        members = [m for h in chosen for m in self._members(h)]
        if len(members) < 2:
            raise MatrixError(f"hosts {', '.join(chosen)} of {self.multi.topology.name} have {len(members)} container(s); a matrix needs two")
        host_of = {id(m): m.name.partition("/")[0] for m in members}
        memo: dict[tuple[str, str, str], bool] = {}

        def expected(a: Member, b: Member) -> bool:
            h = host_of[id(a)]
            if h != host_of[id(b)]:
                return True
            t = self.multi.hosts[h].topology
            key = (h, promise.host_side(t, a.source), promise.host_side(t, b.source))
            if key not in memo:
                memo[key] = promise.reaches(t, a.source, b.source)
            return memo[key]

        return self.run_members(self.multi.topology.name, members, expected)

    def _members(self, host: str) -> list[Member]:
        lab = self.multi.hosts[host]
        t = lab.topology
        plain = self._plain[host]
        heads = self._heads.get(host, plain)
        segments = {b.name: Segment(f"{host}/{b.name}", lab.host, lab.kname(b.name)) for b in t.bridges}
        out = []
        for c in t.containers:
            if c.address is None:
                raise MatrixError(f"container {host}/{c.name} has no address in the spec, so the matrix cannot address it")
            segment = segments.get(c.bridge) if c.bridge is not None else None
            out.append(Member(f"{host}/{c.name}", c.name, lab.container_ns(c.name), c.interface, c.address.ip, segment,
                              c.gateway if segment is not None else None, f"{host}/{lab.point(c.name)}", plain, heads))
        return out


def _in_process(prober: object) -> Prober:
    """A MultiLab's prober sends from this process (a NodesLab's asks its node, which the matrix engine cannot drive)."""
    assert isinstance(prober, Prober), f"a cross-host matrix needs an in-process MultiLab, not {type(prober).__name__}"
    return prober


__all__ = ["CrossHostMatrix"]
