"""A model state as JSON and back: recorded states let the model be tested without root.

>>> from netcheck import spec
>>> from netcheck.lab.plan import planned
>>> s = planned(spec.builtin("seed2"))
>>> again = loads(dumps(s))
>>> [n.label for n in again.namespaces] == [n.label for n in s.namespaces] and again.ns("host").ruleset.hooks == s.ns("host").ruleset.hooks
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from ipaddress import ip_address, ip_interface, ip_network

from netcheck.datapath.firewall import Ruleset
from netcheck.datapath.values import Iface, Listener, Namespace, Port, Route, State
from netcheck.kernel.jsontypes import JSON, JSONObject
from netcheck.kernel.netns import IpRule
from netcheck.kernel.xtables import XChain, XRule

FORMAT = 1


def to_dict(state: State) -> JSONObject:
    return {"format": FORMAT, "source": state.source, "host": state.host, "namespaces": [_ns(n) for n in state.namespaces]}


def dumps(state: State) -> str:
    return json.dumps(to_dict(state), indent=1, sort_keys=True)


def _ns(n: Namespace) -> JSONObject:
    return {
        "label": n.label,
        "ifaces": [{"name": i.name, "kind": i.kind, "up": i.up, "addresses": [str(a) for a in i.addresses], "port": asdict(i.port) if i.port else None,
                    "peer": list(i.peer) if i.peer else None, "nf_call_iptables": i.nf_call_iptables} for i in n.ifaces],
        "routes": [{"dst": str(r.dst), "dev": r.dev, "via": str(r.via) if r.via else None, "kind": r.kind, "table": r.table, "metric": r.metric,
                    "src": str(r.src) if r.src else None} for r in n.routes],
        "rules": [{**asdict(r), "src": str(r.src) if r.src else None, "dst": str(r.dst) if r.dst else None} for r in n.rules],
        "sysctls": [list(kv) for kv in n.sysctls],
        "listeners": [asdict(x) for x in n.listeners] if n.listeners is not None else None,
        "ruleset": _ruleset(n.ruleset) if n.ruleset is not None else None,
        "unread": list(n.unread),
        "listening_known": list(n.listening_known),
    }


def _ruleset(rs: Ruleset) -> JSONObject:
    return {"chains": [{**{f.name: getattr(c, f.name) for f in fields(c) if f.name != "rules"}, "key_backend": backend, "rules": [asdict(r) for r in c.rules]}
                       for (backend, _t, _n), c in rs.chains.items()],
            "hooks": [list(h) for h in rs.hooks],
            "l2": [{**{f.name: getattr(c, f.name) for f in fields(c) if f.name != "rules"}, "rules": [asdict(r) for r in c.rules]} for c in rs.l2.values()]}


def loads(text: str) -> State:
    return from_dict(json.loads(text))


def from_dict(d: JSONObject) -> State:
    if d.get("format") != FORMAT:
        raise ValueError(f"a recorded datapath state of format {d.get('format')!r}; this netcheck reads format {FORMAT} (record it again)")
    return State(tuple(_from_ns(n) for n in d["namespaces"]), d.get("host", "host"), d.get("source", ""))


def _from_ns(n: JSONObject) -> Namespace:
    ifaces = tuple(Iface(i["name"], i["kind"], i["up"], tuple(ip_interface(a) for a in i["addresses"]), Port(**i["port"]) if i["port"] else None,
                         (i["peer"][0], i["peer"][1]) if i["peer"] else None, i["nf_call_iptables"]) for i in n["ifaces"])
    routes = tuple(Route(ip_network(r["dst"]), r["dev"], ip_address(r["via"]) if r["via"] else None, r["kind"], r["table"], r["metric"],
                         ip_address(r["src"]) if r["src"] else None) for r in n["routes"])
    rules = tuple(IpRule(**{**r, "src": ip_network(r["src"]) if r["src"] else None, "dst": ip_network(r["dst"]) if r["dst"] else None,
                            "unmodelled": tuple(r["unmodelled"])}) for r in n["rules"])
    listeners = tuple(Listener(**x) for x in n["listeners"]) if n["listeners"] is not None else None
    ruleset = _from_ruleset(n["ruleset"]) if n["ruleset"] is not None else None
    return Namespace(n["label"], ifaces, routes, rules, tuple((k, v) for k, v in n["sysctls"]), listeners, ruleset, tuple(n["unread"]),
                     tuple(n.get("listening_known", (4, 6))))


def _from_ruleset(d: JSONObject) -> Ruleset:
    rs = Ruleset()
    for c in d["chains"]:
        chain = _chain(c)
        rs.chains[(c["key_backend"], chain.table, chain.name)] = chain
    rs.hooks = [(h[0], h[1], h[2], h[3], h[4], int(h[5])) for h in d["hooks"]]
    for c in d.get("l2", []):
        chain = _chain(c)
        rs.l2[(chain.family, chain.table, chain.name)] = chain
    return rs


def _chain(c: JSONObject) -> XChain:
    rules = tuple(XRule(**{k: _tupled(v) for k, v in r.items()}) for r in c["rules"])
    return XChain(c["table"], c["name"], c["policy"], rules, c["backend"], c["family"], c["hook"], c["kind"], c["priority"])


def _tupled(value: JSON) -> JSON:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


__all__ = ["dumps", "from_dict", "loads", "to_dict"]
