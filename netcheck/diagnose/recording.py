"""A diagnosis's inputs as one value, to JSON and back: record a failed probe's diagnosis, replay it without root.

Everything the diagnosis gathers before it judges (the snapshot with its route lookups, the flow,
the expected route, the failed and the repeated result, the hops, the counters that moved, the
kernel's drops, the nft trace's drop, and what the rules ask of the lab: its spec, its names, its
capture points, its resolv.conf files, its DNS zones, its tool's rules) is a ``Recording``. The
judgement (``judge``: the rules, the model, the ranking) is a pure function of it, so a recording
replays to the same findings on any machine, without root and without a namespace::

    NETCHECK_RECORD=reports/recordings pytest suites/   # each failed probe's diagnosis saves its recording
    netcheck diagnose --replay reports/recordings/0001-icmp-netns0.json.gz

``python -m netcheck.diagnose.recording --record-catalog DIR`` (root) records every catalog fault's
failing probe, as tests/test_causes_recorded.py replays them.
"""

from __future__ import annotations

import base64
import functools
import gzip
import itertools
import json
import os
import types
import typing
from collections import abc
from dataclasses import dataclass, field, fields, is_dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from netcheck import spec as host_spec
from netcheck.diagnose.firewall import Placed
from netcheck.diagnose.path import Break, Flow, Route, Side, side
from netcheck.diagnose.state import Snapshot
from netcheck.evidence import Finding, Hop, KernelEvent, ProbeResult
from netcheck.kernel.jsontypes import JSON, JSONObject
from netcheck.lifecycle import Signature

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from netcheck.diagnose import rules as cause_rules
    from netcheck.diagnose.crosshost import CrossRead
    from netcheck.diagnose.path import LabView
    from netcheck.kernel.netns import Netns

FORMAT = 1
RECORD_ENV = "NETCHECK_RECORD"  # a folder: each diagnosis saves its recording there
Lookup = tuple[str, str]  # (namespace label, destination): a route lookup the rules ask for


# ----------------------------------------------------------------------------- values to JSON and back


def encode(value: object) -> JSON:
    """A value made of frozen dataclasses, addresses, tuples and dicts, as plain JSON data (``decode`` reads it back)."""
    if isinstance(value, ProbeResult):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in fields(value) if f.init}
    if isinstance(value, (IPv4Address, IPv6Address, IPv4Network, IPv6Network, IPv4Interface, IPv6Interface, Path)):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__pairs__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a recording cannot hold a {type(value).__name__}: {value!r}")


_ADDRESSES: dict[object, Callable[[str], object]] = {IPv4Address: IPv4Address, IPv6Address: IPv6Address, IPv4Network: IPv4Network, IPv6Network: IPv6Network,
                                                  IPv4Interface: IPv4Interface, IPv6Interface: IPv6Interface, Path: Path}


def decode(tp: Any, data: Any) -> Any:
    """``data`` (``encode``'s) as a value of the type ``tp``, read from the type hints."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or tp is object:
        return data
    if origin in (Union, types.UnionType):
        return _union(args, data)
    if origin is typing.Literal:
        return data
    if tp is ProbeResult:
        return ProbeResult.from_dict(data)
    if tp in _ADDRESSES:
        return _ADDRESSES[tp](data)
    if isinstance(tp, type) and is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: decode(hints[f.name], data[f.name]) for f in fields(tp) if f.init and f.name in data})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], x) for x in data)
        return tuple(decode(a, x) for a, x in zip(args, data, strict=True))
    if origin in (list, set, frozenset):
        return origin(decode(args[0], x) for x in data)
    if origin in (dict, abc.Mapping):
        k, v = args or (Any, Any)
        items = data["__pairs__"] if isinstance(data, dict) and "__pairs__" in data else (data.items() if isinstance(data, dict) else data)
        return {decode(k, a): decode(v, b) for a, b in items}
    if tp is float:
        return float(data)
    if tp is bytes:
        return base64.b64decode(data)
    return data


@functools.cache
def _hints(tp: type) -> dict[str, object]:
    """A dataclass's field types (resolved once: ``get_type_hints`` is slow)."""
    return get_type_hints(tp)


def _union(args: tuple[Any, ...], data: Any) -> Any:
    if data is None and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        if (a is str and isinstance(data, str)) or (a in (int, float) and isinstance(data, (int, float)) and not isinstance(data, bool)) or (a is bool and isinstance(data, bool)):
            return data
        if isinstance(a, type) and is_dataclass(a) and not isinstance(data, dict):
            continue
        if a in (str, int, float, bool):
            continue
        try:
            return decode(a, data)
        except (TypeError, ValueError, KeyError):
            continue
    raise ValueError(f"{data!r} is none of {args}")


# ----------------------------------------------------------------------------- what the rules ask of the lab


@dataclass(frozen=True)
class Where:
    """A capture point's namespace, as far as the rules ask: its label."""

    label: str


@dataclass(frozen=True)
class LabFacts:
    """What the rules ask of a lab, gathered up front (``facts``): its spec, its names, and the files and
    processes some rules read. A ``LabView`` for the rules; it reaches no namespace."""

    topology: host_spec.Topology
    knames: dict[str, str] = field(default_factory=dict)  # spec name of a host interface -> its kernel name
    points: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # capture point -> (namespace label, kernel name, spec name)
    sides: dict[str, Side | None] = field(default_factory=dict)  # container -> where it plugs into the host
    resolv_confs: dict[str, tuple[str, str | None, bool]] = field(default_factory=dict)  # container -> (the resolv.conf it reads, its text, the file exists)
    dns_zones: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] | None = None  # (address, zone) of each DNS server netcheck runs; None: no services
    embedded_nat: dict[str, JSON] = field(default_factory=dict)  # container -> its `nft -j list ruleset`, or why it could not be read (a Docker DNS probe's)
    docker_host: str = "unix:///run/docker.sock"
    aardvark: tuple[int, bool] | None = None  # (PID, alive) of the aardvark-dns netavark started for the lab
    tool: str = "netcheck"  # who set the lab up (netcheck.lifecycle.tool_of)
    tool_rules: Signature | None = None  # the tool's rules as it left them (the lifecycle baseline)
    tool_rules_now: Signature | None = None  # and as they are now (read only where there is a baseline)
    lost_since: tuple[str, str] | None = None  # (event, what it did) of the first lifecycle event after which rules were lost

    def kname(self, spec_iface: str) -> str:
        return self.knames[spec_iface]

    def spec_name(self, kernel_iface: str) -> str:
        return next((k for k, v in self.knames.items() if v == kernel_iface), kernel_iface)

    def resolve_point(self, point: str) -> tuple[Where, str, str]:
        label, kernel, spec = self.points[point]
        return Where(label), kernel, spec


def facts(lab: LabView, snap: Snapshot, routes: Iterable[Route] = (), result: ProbeResult | None = None) -> LabFacts:
    """Ask the lab, once and up front, everything the rules may ask of it (of the capture points: those of ``routes``)."""
    from netcheck.adapters.docker import EMBEDDED_RESOLVER
    from netcheck.adapters.podman import aardvark_of
    from netcheck.kernel.xtables import read_nft
    from netcheck.lab.plan import resolv_conf_text
    from netcheck.ledger import process_starttime
    from netcheck.lifecycle import events_of, signature, tool_of
    from netcheck.resolvconf import seen_from

    t = lab.topology
    points = {}
    for point in dict.fromkeys(p for r in routes for p in r.points):
        try:
            ns, kernel, spec_name = lab.resolve_point(point)
        except Exception:  # noqa: BLE001 - a point the lab cannot name is not on the path
            continue
        points[point] = (getattr(ns, "label", point.partition(":")[0]), kernel, spec_name)
    sides: dict[str, Side | None] = {}
    for c in t.containers:
        try:
            sides[c.name] = side(lab, c.name)
        except Exception:  # noqa: BLE001 - a container whose namespace is gone has no side
            sides[c.name] = None
    confs = {}
    seen = getattr(lab, "resolv_conf", None)
    for c in t.containers:
        read = snap.ns(c.name)
        if resolv_conf_text(c) is None or read is None or not read.netns:
            continue
        path, text = seen(c.name) if callable(seen) else seen_from(read.netns)
        confs[c.name] = (str(path), text, Path(path).exists())
    services = getattr(lab, "services", None)
    zones = tuple((x.address, tuple(x.zone)) for x in services.listeners if x.kind == "dns") if services is not None else None
    nat: dict[str, JSON] = {}
    if result is not None and result.kind == "dns" and result.request.destination == EMBEDDED_RESOLVER and t.setup.mode == "docker":
        try:
            nat[result.request.source] = read_nft(lab.container_ns(result.request.source))
        except (KeyError, OSError, ValueError) as exc:
            nat[result.request.source] = str(exc)
    found = aardvark_of(lab)
    aardvark = None
    if found is not None:
        pid, start = found
        aardvark = (pid, process_starttime(pid) is not None and (start is None or process_starttime(pid) == start))
    record = events_of(lab)
    base = record.baseline if record is not None else getattr(lab, "tool_rules", None)
    now = signature(lab.host) if isinstance(base, dict) and base else None
    after = [r for r in (record.runs if record else []) if r.lost]
    return LabFacts(t, dict(getattr(lab, "knames", {})), points, sides, confs, zones, nat, getattr(lab, "state", {}).get("docker_host", "unix:///run/docker.sock"),
                    aardvark, tool_of(lab), base if isinstance(base, dict) else None, now, (after[0].event, after[0].did) if after else None)


def evidence(facts: LabFacts, snap: Snapshot, namespaces: dict[str, Netns], flow: Flow | None = None, route: Route | None = None) -> cause_rules.Evidence:
    """The evidence of a flow that was not probed (the doctor's): the facts, and the route lookups its rules ask, taken now."""
    from netcheck.diagnose import rules as cause_rules
    from netcheck.diagnose.state import ask_routes

    ev = cause_rules.Evidence(facts, snap, flow, route)
    ask_routes(snap, namespaces, cause_rules.route_questions(ev))
    return ev


# ----------------------------------------------------------------------------- the recording


@dataclass(frozen=True)
class Recording:
    """A diagnosis's inputs, gathered (``netcheck.diagnose._gather``); ``judge`` and ``replay`` read nothing else."""

    lab: LabFacts
    snap: Snapshot
    flow: Flow | None = None
    route: Route | None = None
    result: ProbeResult | None = None
    repeated: ProbeResult | None = None
    hops: tuple[Hop, ...] = ()
    breaks: tuple[Break, ...] = ()
    matched: tuple[tuple[Placed, int], ...] = ()
    snmp: dict[str, dict[str, int]] = field(default_factory=dict)
    involved: tuple[str, ...] = ()  # the namespace labels the probe crosses
    kernel: tuple[KernelEvent, ...] = ()
    kernel_note: str = ""
    witnessed: bool = False  # a kernel witness watched the repeat
    nft_lines: tuple[str, ...] = ()
    nft_drop: str = ""
    resent: bool = False  # the probe was repeated (a way to resend was given)
    notes: tuple[str, ...] = ()  # what the gathering noted
    about: dict[str, str] = field(default_factory=dict)  # free labels: the fault it was recorded for, the topology

    def evidence(self) -> cause_rules.Evidence:
        from netcheck.diagnose import rules as cause_rules

        ev = cause_rules.Evidence(self.lab, self.snap, self.flow, self.route, self.result, self.repeated, self.hops, self.breaks, list(self.matched), self.snmp)
        return ev

    def to_dict(self) -> JSONObject:
        out: JSONObject = {"format": FORMAT, **{f.name: encode(getattr(self, f.name)) for f in fields(self)}}
        return out

    @classmethod
    def from_dict(cls, d: JSONObject) -> Recording:
        if d.get("format") != FORMAT:
            raise ValueError(f"a diagnosis recording of format {d.get('format')!r}; this netcheck reads format {FORMAT} (record it again with this version)")
        hints = get_type_hints(cls)
        return cls(**{f.name: decode(hints[f.name], d[f.name]) for f in fields(cls) if f.name in d})


CROSS = "cross-host"  # the kind of a cross-host diagnosis's recording (netcheck.diagnose.crosshost.CrossRead)


def dumps(rec: Recording | CrossRead) -> bytes:
    data = rec.to_dict() if isinstance(rec, Recording) else {"format": FORMAT, "kind": CROSS, **{f.name: encode(getattr(rec, f.name)) for f in fields(rec)}}
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def save(rec: Recording | CrossRead, path: Path) -> Path:
    """Write a recording (gzipped when the name ends in .gz)."""
    data = dumps(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def load(path: str | Path) -> Recording:
    """A probe's recording from a file, with an error that names the file and the fix."""
    rec = load_any(path)
    if not isinstance(rec, Recording):
        raise ValueError(f"{path}: a cross-host recording, not a probe's (replay it with netcheck diagnose --replay)")
    return rec


def load_any(path: str | Path) -> Recording | CrossRead:
    """A probe's or a cross-host diagnosis's recording from a file."""
    from netcheck.diagnose.crosshost import CrossRead

    p = Path(path)
    try:
        raw = p.read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: not a diagnosis recording ({exc}); record one with {RECORD_ENV}=DIR") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: not a diagnosis recording (a JSON object is expected)")
    try:
        if data.get("kind") == CROSS:
            if data.get("format") != FORMAT:
                raise ValueError(f"a diagnosis recording of format {data.get('format')!r}; this netcheck reads format {FORMAT} (record it again with this version)")
            hints = _hints(CrossRead)
            return CrossRead(**{f.name: decode(hints[f.name], data[f.name]) for f in fields(CrossRead) if f.name in data})
        return Recording.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{p}: {exc}") from None


_numbers = itertools.count(1)


def save_if_asked(rec: Recording) -> Path | None:
    """Save the recording in the folder ``NETCHECK_RECORD`` names, if it names one."""
    folder = os.environ.get(RECORD_ENV)
    if not folder:
        return None
    r = rec.result
    what = f"{r.kind}-{r.source}-{r.destination}".replace("/", "_").replace(":", "_") if r is not None else "doctor"
    name = f"{os.getpid()}-{next(_numbers):04d}-{what}.json.gz"
    return save(rec, Path(folder) / name)


# ----------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Judgement:
    """What a recording says: the findings ranked by the evidence (the model's own last), and the notes on it."""

    findings: tuple[Finding, ...]
    model_findings: tuple[Finding, ...]
    model_note: str
    disagreement: str


def judge(rec: Recording) -> Judgement:
    """The rules, the datapath model and the ranking on a recording: a pure function of it."""
    from netcheck.diagnose import datapath as model
    from netcheck.diagnose import dns as dns_rules
    from netcheck.diagnose import lifecycle
    from netcheck.diagnose import ranking as ranks
    from netcheck.diagnose import rules as cause_rules
    from netcheck.diagnose import witness as witnessing

    ev = rec.evidence()
    findings = cause_rules.evaluate(ev, (*dns_rules.RULES, *lifecycle.RULES))
    model_end = _model_end(ev)
    witnessed = ranks.Witnessed(frozenset(rec.involved), model_end, rec.kernel, rec.nft_drop, {p.rule.key(): n for p, n in rec.matched}, rec.snmp)
    first = findings[0] if findings else None
    ranked = ranks.rank(findings, witnessed)
    disagreement = "; ".join(x for x in (witnessing.rules_vs_kernel(first, ranked, rec.kernel),
                                         witnessing.model_vs_kernel(model_end, witnessed.model_causes(), rec.kernel, rec.nft_drop, rec.witnessed, rec.repeated)) if x)
    return Judgement(tuple(ranked), tuple(_model_findings(ev)), model.disagreement(ev), disagreement)


def _model_end(ev: cause_rules.Evidence) -> tuple[str, str, str] | None:
    """The model's (disposition, deciding stage, its text) for the probe; None where it has no account of it."""
    from netcheck.diagnose import datapath as model

    if ev.flow is None:
        return None
    try:
        t = model.probe_trace(ev)
    except Exception:  # noqa: BLE001 - _model_findings reports the model's failure
        return None
    if t is None:
        return None
    step = t.decided
    return (t.disposition, step.stage if step is not None else "", step.text if step is not None else "")


def _model_findings(ev: cause_rules.Evidence) -> list[Finding]:
    from netcheck.diagnose import rules as cause_rules

    try:
        return list(cause_rules.model_disposition(ev))
    except Exception as exc:  # noqa: BLE001 - the model must not hide the other findings
        return [Finding("rule_failed", "netcheck", f"the datapath model failed: {exc!r}", "report this as a netcheck bug", score=1)]


__all__ = ["FORMAT", "RECORD_ENV", "Judgement", "LabFacts", "Recording", "decode", "encode", "facts", "judge", "load", "load_any", "save", "save_if_asked"]
