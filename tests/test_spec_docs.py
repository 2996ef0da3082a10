"""docs/spec.md, the JSON Schema and the loader agree: the same keys, and every shipped spec fits the schema.

The schema is checked with the ``jsonschema`` package (a dev dependency: the schema is for editors
and other tools, so it is checked the way they read it, not by netcheck's own loader).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from netcheck import spec, spec_docs

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "spec.md"
SPECS = sorted([*REPO.glob("examples/*.toml"), *REPO.glob("netcheck/topologies/*.toml"), *REPO.glob("tests/specs/valid/*.toml")])


def schema() -> dict[str, Any]:
    text = resources.files("netcheck.topologies").joinpath(spec_docs.SCHEMA_NAME).read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def schema_keys(node: dict[str, Any], path: str = "") -> Iterator[str]:
    """Every key path the schema describes, written as spec_docs.declared_keys() writes them."""
    if "propertyNames" in node:
        yield f"{path}.*"
    for name, child in node.get("properties", {}).items():
        here = f"{path}.{name}".lstrip(".")
        yield here
        if child.get("type") == "array" and child["items"].get("type") == "object":
            yield from schema_keys(child["items"], here + "[]")
        elif child.get("type") == "object":
            yield from schema_keys(child, here)


def docs_keys(text: str) -> set[str]:
    """Every key path the reference in docs/spec.md lists, by the heading of its table."""
    headings = {f"### {spec_docs._heading(path, table)}": path for path, table in spec_docs.walk()}
    out, path = set(), None
    for line in text.split(spec_docs.BEGIN, 1)[1].splitlines():
        if line.startswith("### "):
            assert line in headings, f"docs/spec.md has a table the loader does not declare: {line}"
            path = headings[line]
        elif (m := re.match(r"\| `([A-Za-z0-9_]+)` \|", line)) and path is not None:
            out.add(f"{path}.{m.group(1)}".lstrip("."))
        elif line.startswith("| any name under `net.`") and path is not None:
            out.add(f"{path}.*")
    return out


def test_schema_and_reference_are_current() -> None:
    assert spec_docs.main(["--check"]) == 0, "run: python -m netcheck.spec_docs"
    assert resources.files("netcheck.topologies").joinpath(spec_docs.SCHEMA_NAME).read_text("utf-8") == spec_docs.schema_text()
    assert spec_docs.reference() in DOCS.read_text("utf-8")


def test_docs_schema_and_loader_list_the_same_keys() -> None:
    declared = spec_docs.declared_keys()
    assert len(declared) > 50, sorted(declared)
    in_schema = set(schema_keys(schema()))
    in_docs = docs_keys(DOCS.read_text("utf-8"))
    assert in_schema == declared, f"schema only: {sorted(in_schema - declared)}; loader only: {sorted(declared - in_schema)}"
    assert in_docs == declared, f"docs only: {sorted(in_docs - declared)}; loader only: {sorted(declared - in_docs)}"
    for key in ("container[].services[].kind", "publish[].protocol", "publish[].from_host", "container[].mtu", "container[].routes[].via"):
        assert key in declared  # the keys the issue found only in spec.py


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())


def inline(value: object) -> str:
    """A value as inline TOML."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def every_key(table: spec.Table) -> dict[str, Any]:
    """A table with every declared key set to its documented example (the values need not fit together)."""
    out: dict[str, Any] = {}
    for k in table.keys:
        if isinstance(k, spec.Sub):
            inner = every_key(k.table) if k.table.names is None else {"net.ipv4.ip_forward": 1}
            out[k.name] = [inner] if k.many else inner
        else:
            out[k.name] = tomllib.loads(f"x = {k.example}")["x"]
    return out


def test_loader_accepts_every_declared_key_and_no_other() -> None:
    doc = every_key(spec.TOP)
    text = "".join(f"{json.dumps(k)} = {inline(v)}\n" for k, v in doc.items())
    with pytest.raises(spec.SpecError) as info:  # the examples conflict (a routed veth and a bridge, ...), but no key is unknown
        spec.loads(text, "<every key>")
    assert not [p for p in info.value.problems if p.problem == "unknown key"], str(info.value)
    for path, table in spec_docs.walk():
        if table.names is not None:
            continue
        node: Any = doc
        for part in filter(None, path.split(".")):
            node = node[part.removesuffix("[]")]
            node = node[0] if isinstance(node, list) else node
        node["not_a_key"] = 1
        with pytest.raises(spec.SpecError) as info:
            spec.loads("".join(f"{json.dumps(k)} = {inline(v)}\n" for k, v in doc.items()), "<every key>")
        del node["not_a_key"]
        want = f"{path.replace('[]', '[0]')}.not_a_key".lstrip(".")
        assert any(p.key == want and p.problem == "unknown key" for p in info.value.problems), f"{want} was not refused:\n{info.value}"


def test_every_example_is_valid_for_its_key() -> None:
    for _path, table in spec_docs.walk():
        props = spec_docs._table_schema(table).get("properties", {})
        for k in table.keys:
            if isinstance(k, spec.Key):
                value = tomllib.loads(f"x = {k.example}")["x"]
                k.kind.read(value, k.name)  # raises on an example the loader would refuse
                jsonschema.validate(value, props[k.name])


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(REPO)) for p in SPECS])
def test_shipped_spec_fits_the_schema_and_loads(path: Path) -> None:
    data = tomllib.loads(path.read_text("utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema()).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{path}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    spec.load(path)


def test_schema_refuses_what_the_loader_refuses_for_a_single_value() -> None:
    bad = tomllib.loads((REPO / "netcheck/topologies/seed1.toml").read_text("utf-8"))
    bad["container"][0]["interface"] = "x" * 16
    bad["publish"][0]["protocol"] = "icmp"
    bad["host"]["adress"] = "203.0.113.2/24"
    errors = list(jsonschema.Draft7Validator(schema()).iter_errors(bad))
    assert len(errors) == 3, [e.message for e in errors]
