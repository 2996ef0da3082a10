"""The kernel's answers as plain values across an execnet channel, and back.

An execnet channel carries only builtin types (str, int, bytes, tuples, lists, dicts...). What a
node reads of its namespaces (links, addresses, routes, rules, conntrack entries...) is frozen
dataclasses and ``ipaddress`` objects: ``encode`` turns each into a dict that names its type,
``decode`` rebuilds it, and only from the types listed here (a node never makes the controller
build anything else)::

    >>> from ipaddress import ip_interface
    >>> from netcheck.kernel.netns import Address
    >>> decode(encode([Address("eth0", ip_interface("10.0.0.2/24"))]))
    [Address(interface='eth0', address=IPv4Interface('10.0.0.2/24'))]
"""

from __future__ import annotations

import importlib
import ipaddress
import subprocess
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import cast

from netcheck.kernel.inspect import BridgeOptions, CtEntry, Listening
from netcheck.kernel.netns import Address, BridgePort, FdbEntry, IpRule, Link, Neighbour, RouteEntry
from netcheck.kernel.xtables import XChain, XRule
from netcheck.services import Listener

TYPE = "__value__"
VALUES: dict[str, type] = {cls.__name__: cls for cls in (
    Address, BridgePort, FdbEntry, IpRule, Link, Neighbour, RouteEntry, XChain, XRule, CtEntry, Listening, BridgeOptions, Listener,
)}
ADDRESSES: dict[str, type] = {cls.__name__: cls for cls in (
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface,
)}
DONE = "CompletedProcess"


def encode(value: object) -> object:
    """``value`` with every known dataclass and address made a tagged dict (a command's result too)."""
    if isinstance(value, (list, tuple)):
        return type(value)(encode(v) for v in value)
    if isinstance(value, set):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if TYPE in value:
            raise ValueError(f"a dict with a {TYPE!r} key cannot be sent as a plain value")
        return {k: encode(v) for k, v in value.items()}
    if type(value).__name__ in ADDRESSES and isinstance(value, ADDRESSES[type(value).__name__]):
        return {TYPE: type(value).__name__, "text": str(value)}
    if isinstance(value, subprocess.CompletedProcess):
        return {TYPE: DONE, "args": list(value.args), "returncode": value.returncode, "stdout": value.stdout, "stderr": value.stderr}
    if is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if VALUES.get(name) is not type(value):
            raise ValueError(f"{type(value).__qualname__} is not a value a node sends (netcheck.multihost.values.VALUES)")
        return {TYPE: name, **{f.name: encode(getattr(value, f.name)) for f in fields(value)}}
    return value


def decode(data: object) -> object:
    """The values ``encode`` made, rebuilt; a tag this module does not know is an error."""
    if isinstance(data, (list, tuple)):
        return type(data)(decode(v) for v in data)
    if not isinstance(data, dict):
        return data
    name = data.get(TYPE)
    if name is None:
        return {k: decode(v) for k, v in data.items()}
    if name in ADDRESSES:
        return ADDRESSES[name](data["text"])
    if name == DONE:
        return subprocess.CompletedProcess(data["args"], data["returncode"], data["stdout"], data["stderr"])
    if name not in VALUES:
        raise ValueError(f"a node sent a value of unknown type {name!r}")
    return VALUES[name](**{k: decode(v) for k, v in data.items() if k != TYPE})


def function_name(fn: Callable[..., object]) -> str:
    """``module:qualname`` of a module-level netcheck function, by which a node's agent imports it; anything else
    (a closure, a lambda, another package's) cannot be named there."""
    name = f"{getattr(fn, '__module__', '') or ''}:{getattr(fn, '__qualname__', '')}"
    _parts(name)
    return name


def function_of(name: str) -> Callable[..., object]:
    """The module-level netcheck function ``module:qualname`` names (``function_name``'s inverse)."""
    module, qualname = _parts(name)
    fn: object = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"{name!r} is not a function")
    return cast("Callable[..., object]", fn)


def _parts(name: str) -> tuple[str, str]:
    module, _, qualname = name.partition(":")
    if not module.startswith("netcheck.") or not qualname or "<" in qualname:
        raise TypeError(f"{name!r} cannot run on a node: only module-level netcheck functions are named there "
                        "(make the closure a module-level function whose arguments are values)")
    return module, qualname


__all__ = ["decode", "encode", "function_name", "function_of"]
