"""Fuzzing the spec loader: every input loads to a Topology or raises SpecError, nothing else.

Inputs are random TOML documents, the built-in seeds with a few things changed (wrong types,
huge and negative numbers, unicode, overlong names, shell metacharacters, path tricks, NUL bytes,
deep nesting, values moved between fields), the seeds' text with bytes changed, and raw text.
A spec that does load must still be one the lab can build safely (see ``check_invariants``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Network
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from netcheck import spec

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOURCE = "<fuzz>"
SEED_TEXT = {name: resources.files("netcheck.topologies").joinpath(f"{name}.toml").read_text("utf-8") for name in spec.BUILTIN}
SEEDS = {name: tomllib.loads(text) for name, text in SEED_TEXT.items()}
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


# --------------------------------------------------------------------------- writing TOML


@dataclass(frozen=True, repr=False)
class Raw:
    """TOML text put into the document as it is (deep nesting, numbers Python cannot print)."""

    text: str

    def __repr__(self) -> str:
        return f"Raw({self.text[:12]!r}... {len(self.text)} chars)"


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: object) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**100 else hex(abs(v))
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump(doc: dict[str, Any]) -> str:
    """A document with every value inline; tomllib reads [[x]] and x = [{...}] alike."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


def test_writer_round_trips_the_seeds() -> None:
    for name, doc in SEEDS.items():
        assert tomllib.loads(dump(doc)) == doc
        assert spec.loads(dump(doc), name) == spec.loads(SEED_TEXT[name], name)


# --------------------------------------------------------------------------- strategies

TRICKY = [
    "", " ", "eth0\n", "veth0 ", " veth0", "eth0\x00", "\x00", "a" * 15, "a" * 16, "x" * 5000, "veth/0", "..", ".", "-",
    "$(reboot)", "`id`", "; rm -rf /", "a|b", "a&&b", "'", '"', "\\", "../../etc/passwd", "a\x00b", "net/../../etc/shadow",
    "net.ipv4.ip_forward\n", "net.ipv4.conf.all.forwarding/../../..", "net.ipv4..x", "net.ipv4.ip_forward", "kernel.panic",
    "\uff45\uff54\uff48\uff10", "éth0", "eth\u200b0", "\u202eeth0", "😀", "net.ipv4.\u0131p_forward",
    "172.18.0.10/16", "172.18.0.10/16\n", "172.18.0.10", "172.18.0.0/16", "172.18.0.1/16", "172.18.0.255/24", "172.18.255.255/16",
    "10.0.0.11/24", "10.0.0.12/24", "10.0.0.10/24", "10.0.0.1", "10.0.0.0/24", "10.100.100.100",
    "203.0.113.1/24", "203.0.113.2/24", "203.0.113.2/32", "203.0.113.2", "198.51.100.1/32", "198.51.100.0/24",
    "192.0.2.1", "192.0.2.1/24", "192.0.2.0/24", "0.0.0.0/0", "0.0.0.0", "255.255.255.255/32", "224.0.0.1/4", "127.0.0.1/8",
    "::1/128", "1.2.3.4/-1", "1.2.3.4/33", "01.02.03.04/16", "1.2.3.4/255.255.0.0", "1.2.3.4/0.0.255.255", "\u0661\u0667\u0662.\u0661\u0668.\u0660.\u0661\u0660/16",
    "auto", "br0", "bridge_local", "veth0", "veth1", "eth0", "enp0s3", "netns0", "netns1", "http2", "http3", "host", "wan",
    "tcp", "udp", "http", "tcp-echo", "udp-echo", "ACCEPT", "DROP", "build", "script", "cni", "podman",
    "VIP-EXAMPLE", "PREROUTING", "OUTPUT", "A" * 28, "A" * 29,
]
KEYS = [
    "name", "summary", "setup", "mode", "command", "teardown", "config", "host", "uplink", "address", "gateway", "sysctl",
    "forward_policy", "wan", "remote", "routes", "to", "via", "bridge", "container", "interface", "host_veth", "host_address",
    "services", "kind", "port", "mtu", "masquerade", "source", "out_interface", "not_out_interface", "publish", "host_port",
    "protocol", "from_outside", "from_host", "vip", "chain", "target_port", "forward_accept", "in_interface", "adress",
    "net.ipv4.ip_forward", "net/../../etc",
]


def deep(n: int, kind: str) -> Raw:
    if kind == "array":
        return Raw("[" * n + "1" + "]" * n)
    return Raw("{a = " * n + "1" + "}" * n)


huge_ints = st.sampled_from([2**31, 2**31 + 1, 2**63 - 1, -(2**63), 2**64, 10**99]) | st.integers(min_value=-(2**70), max_value=2**70)
raw_numbers = st.sampled_from([Raw("9" * 5000), Raw("0x" + "f" * 5000), Raw("0b" + "1" * 20000), Raw("1e400"), Raw("-0"), Raw("+65535")])
deeply = st.builds(deep, st.sampled_from([2, 50, 500, 3000]), st.sampled_from(["array", "table"]))
keys = st.sampled_from(KEYS) | st.text(max_size=20)
atoms = st.one_of(
    st.booleans(),
    st.integers(min_value=-2, max_value=70000),
    huge_ints,
    raw_numbers,
    st.floats(),
    st.sampled_from(TRICKY),
    st.text(max_size=30),
    st.from_regex(IFNAME),  # without fullmatch: may end in a newline, which '$' lets through
    st.dates(),
    st.datetimes(),
    st.times(),
)
values = st.recursive(atoms, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12) | deeply


def ipv4_text(draw: Callable[..., Any]) -> str:
    """An address/prefix that is often plausible: inside a seed subnet, or anywhere."""
    net = draw(st.sampled_from(["172.18.0.0/16", "10.0.0.0/24", "203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24", "0.0.0.0/0"]))
    n = IPv4Network(net)
    ip = n.network_address + draw(st.integers(min_value=0, max_value=n.num_addresses - 1))
    prefix = draw(st.sampled_from([n.prefixlen, n.prefixlen, 32, 24, 16, 8, 0, 31]))
    return f"{ip}/{prefix}" if draw(st.booleans()) else str(ip)


def positions(node: object, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a document, parents before children."""
    items = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
    for k, child in items:
        out.append((node, k))
        positions(child, out)
    return out


def mutate(draw: Callable[..., Any], doc: dict[str, Any]) -> None:
    spots = positions(doc, [])
    parent, k = draw(st.sampled_from(spots))
    action = draw(st.sampled_from(["value", "tricky", "ipv4", "ipv4", "ifname", "ifname", "delete", "unknown", "move", "move", "wrap", "nudge", "nudge"]))
    old = parent[k]
    if action == "value":
        parent[k] = draw(values)
    elif action == "tricky":
        parent[k] = draw(st.sampled_from(TRICKY))
    elif action == "ipv4":
        parent[k] = ipv4_text(draw)
    elif action == "ifname":
        parent[k] = draw(st.from_regex(IFNAME, fullmatch=True) | st.from_regex(IFNAME) | st.text(st.characters(codec="ascii"), min_size=1, max_size=17))
    elif action == "delete":
        del parent[k]
    elif action == "unknown":
        target = old if isinstance(old, dict) else parent if isinstance(parent, dict) else doc
        target[draw(keys)] = draw(values)
    elif action == "move":  # a value from elsewhere in the spec: duplicates, wrong types, wrong references
        p2, k2 = draw(st.sampled_from(spots))
        if (k2 in p2) if isinstance(p2, dict) else (k2 < len(p2)):
            parent[k] = copy.deepcopy(p2[k2])
    elif action == "wrap":
        parent[k] = draw(st.sampled_from([[old], {"value": old}, [[old]], deep(3000, "array")]))
    elif isinstance(old, int) and not isinstance(old, bool):
        parent[k] = draw(st.sampled_from([old - 1, old + 1, -old, old + 65536, 0]))
    elif isinstance(old, str):
        cut = draw(st.integers(min_value=0, max_value=len(old)))
        parent[k] = old[:cut] + draw(st.text(max_size=3) | st.sampled_from(["\n", "\x00", "/", "..", " ", "$"])) + old[cut + draw(st.integers(0, 1)) :]


@st.composite
def mutated_seed(draw: Callable[..., Any]) -> str:
    doc = copy.deepcopy(SEEDS[draw(st.sampled_from(spec.BUILTIN))])
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        if doc:
            mutate(draw, doc)
    return dump(doc)


@st.composite
def mutated_text(draw: Callable[..., Any]) -> str:
    text = SEED_TEXT[draw(st.sampled_from(spec.BUILTIN))]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        gone = draw(st.integers(min_value=0, max_value=3))
        text = text[:at] + draw(st.text(max_size=4) | st.sampled_from(TRICKY) | st.sampled_from(["[", "]", "=", '"', "\n", "[[", "{"])) + text[at + gone :]
    return text


random_docs = st.dictionaries(keys, values, max_size=6).map(dump)


# --------------------------------------------------------------------------- the property


def check_invariants(t: spec.Topology) -> None:
    """A loaded spec is one the lab can build without surprises."""
    __tracebackhide__ = True
    ifnames = [("host.uplink", t.host.uplink)]
    ifnames += [(f"bridge[{i}].name", b.name) for i, b in enumerate(t.bridges)]
    for i, c in enumerate(t.containers):
        ifnames.append((f"container[{i}].interface", c.interface))
        if c.host_veth or t.setup.mode == "build":
            ifnames.append((f"container[{i}].host_veth", c.host_veth))
        if c.bridge is not None:
            ifnames.append((f"container[{i}].bridge", c.bridge))
    for i, m in enumerate(t.masquerades):
        ifnames += [(f"masquerade[{i}]", n) for n in (m.out_interface, m.not_out_interface) if n is not None]
    for i, f in enumerate(t.forward_accepts):
        ifnames += [(f"forward_accept[{i}]", n) for n in (f.in_interface, f.out_interface) if n is not None]
    for key, name in ifnames:
        assert IFNAME.fullmatch(name) and name not in (".", ".."), f"{key} = {name!r} loaded but is not a safe interface name"
    names = [c.name for c in t.containers]
    assert all(NAME.fullmatch(n) for n in [t.name, *names]), f"unsafe names loaded: {[t.name, *names]!r}"
    assert len(set(names)) == len(names), f"duplicate container names loaded: {names}"
    bridges = {b.name: b for b in t.bridges}
    for i, c in enumerate(t.containers):
        if c.bridge is not None:
            assert c.bridge in bridges, f"container[{i}].bridge = {c.bridge!r} names no bridge"
            b = bridges[c.bridge]
            if b.address is not None and c.address is not None:
                assert c.address.network == b.address.network, f"container[{i}].address = {c.address} is not on {b.address.network}"
                assert c.address.ip != b.address.ip
    addresses = [t.host.address.ip, t.wan.address.ip, *(r.ip for r in t.wan.remote), *(b.address.ip for b in t.bridges if b.address is not None)]
    addresses += [a.ip for c in t.containers for a in (c.address, c.host_address) if a is not None]
    assert len(set(addresses)) == len(addresses), f"an address is used twice: {sorted(map(str, addresses))}"
    assert not any(a in spec.FORBIDDEN for a in addresses), "an address in 192.0.2.0/24 loaded"
    for key, _ in t.host.sysctls:
        assert re.fullmatch(r"net(\.[A-Za-z0-9_-]+)+", key), f"unsafe sysctl name loaded: {key!r}"
    ports = [s.port for c in t.containers for s in c.services] + [p for x in t.publishes for p in (x.host_port, x.port)]
    ports += [p for v in t.vips for p in (v.port, v.target_port)]
    assert all(1 <= p <= 65535 for p in ports), f"a port out of range loaded: {ports}"
    assert not any("\x00" in a for a in (*t.setup.command, *t.setup.teardown, t.summary, t.setup.config or "")), "a NUL byte loaded"
    json.dumps(spec.as_mapping(t))


def load_or_refuse(text: str) -> spec.Topology | spec.SpecError:
    """Load, or get a SpecError that names the source, a key, a problem and a fix. Anything else escapes."""
    try:
        t = spec.loads(text, SOURCE)
    except spec.SpecError as exc:
        msg = str(exc)
        assert msg.startswith(f"{SOURCE}: {exc.key} = "), msg
        assert exc.key and exc.problem and exc.fix and ". Fix: " in msg, msg
        # Every problem is reported, each on its own line, each complete, at most one per key.
        assert msg.splitlines() == [str(p) for p in exc.problems], msg
        for p in exc.problems:
            assert str(p).startswith(f"{SOURCE}: {p.key} = ") and p.key and p.problem and p.fix, p
        keys = [p.key for p in exc.problems]
        assert len(set(keys)) == len(keys), f"a key reported twice: {keys}"
        return exc
    assert isinstance(t, spec.Topology)
    check_invariants(t)
    return t


def fuzz_one(text: str) -> None:
    got = load_or_refuse(text)
    event("loaded" if isinstance(got, spec.Topology) else f"refused: {got.problem.split(' (')[0][:40]}")


@FUZZ
@given(mutated_seed())
def test_mutated_seed(text: str) -> None:
    fuzz_one(text)


@FUZZ
@given(mutated_text())
def test_mutated_seed_text(text: str) -> None:
    fuzz_one(text)


@FUZZ
@given(random_docs)
def test_random_document(text: str) -> None:
    fuzz_one(text)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")))
def test_raw_text(text: str) -> None:
    fuzz_one(text)


# --------------------------------------------------------------------------- found by fuzzing, kept as examples


def test_deep_nesting_is_a_spec_error() -> None:
    for raw in (deep(5000, "array"), deep(3000, "table")):
        assert isinstance(load_or_refuse(f"name = {raw.text}\n"), spec.SpecError)


def test_numbers_python_cannot_print_are_spec_errors() -> None:
    assert isinstance(load_or_refuse("name = " + "9" * 5000 + "\n"), spec.SpecError)
    text = SEED_TEXT["seed1"].replace("host_port = 5000", "host_port = 0x" + "f" * 5000)
    assert isinstance(load_or_refuse(text), spec.SpecError)


def test_trailing_newline_is_not_part_of_a_valid_name() -> None:
    text = SEED_TEXT["seed1"].replace('host_veth = "veth0"', 'host_veth = "veth0\\n"')
    assert isinstance(load_or_refuse(text), spec.SpecError)
    text = SEED_TEXT["seed1"].replace('"net.ipv4.ip_forward" = 1', '"net.ipv4.ip_forward\\n" = 1')
    assert isinstance(load_or_refuse(text), spec.SpecError)
