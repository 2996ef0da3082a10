"""The JSON Schema and the key reference of docs/spec.md, written from the loader's own declarations.

``python -m netcheck.spec_docs`` rewrites both; ``--check`` only says whether they are current.
Nothing here runs when a spec is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from netcheck import spec
from netcheck.kernel.jsontypes import JSON, JSONObject

SCHEMA_NAME = "netcheck-spec.schema.json"
SCHEMA_PATH = Path(__file__).parent / "topologies" / SCHEMA_NAME
DOCS_PATH = Path(__file__).parent.parent / "docs" / "spec.md"  # in a clone of the repository
BEGIN = "<!-- BEGIN KEYS: written by `python -m netcheck.spec_docs` from netcheck/spec.py; do not edit by hand -->"
END = "<!-- END KEYS -->"
# Multi-host specs ([[host]], [underlay], [join]): their own schema, and their reference in docs/multihost.md.
MULTI_SCHEMA_NAME = "netcheck-multihost.schema.json"
MULTI_SCHEMA_PATH = Path(__file__).parent / "topologies" / MULTI_SCHEMA_NAME
MULTI_DOCS_PATH = Path(__file__).parent.parent / "docs" / "multihost.md"
MULTI_BEGIN = "<!-- BEGIN MULTIHOST KEYS: written by `python -m netcheck.spec_docs` from netcheck/multihost/spec.py; do not edit by hand -->"
MULTI_END = "<!-- END MULTIHOST KEYS -->"


def walk(table: spec.Table = spec.TOP, path: str = "", *, leaves: frozenset[str] = frozenset()) -> Iterator[tuple[str, spec.Table]]:
    """Every table with its path as the reference writes it: "", "host", "container[]", "container[].routes[]"
    (but not the tables at the paths in ``leaves``, described elsewhere)."""
    if path in leaves:
        return
    yield path, table
    for k in table.keys:
        if isinstance(k, spec.Sub):
            yield from walk(k.table, f"{path}.{k.name}".lstrip(".") + ("[]" if k.many else ""), leaves=leaves)


def multi_walk(*, whole: bool = False) -> Iterator[tuple[str, spec.Table]]:
    """The tables of a multi-host spec; a [[host]]'s single-host tables only with ``whole`` (docs/spec.md describes them)."""
    from netcheck.multihost.spec import MULTI_TOP, SINGLE_HOST_SUBS

    leaves = frozenset() if whole else frozenset(f"host[].{name}" for name in SINGLE_HOST_SUBS) | {f"host[].{name}[]" for name in SINGLE_HOST_SUBS}
    return walk(MULTI_TOP, leaves=leaves)


def declared_keys(tables: Iterator[tuple[str, spec.Table]] | None = None) -> set[str]:
    """Every key path the loader accepts, e.g. "container[].services[].port"; a free-named table as "host.sysctl.*"."""
    out = set()
    for path, table in tables if tables is not None else walk():
        if table.names is not None:
            out.add(f"{path}.*")
        out |= {f"{path}.{k.name}".lstrip(".") for k in table.keys}
    return out


def _json_value(value: object) -> JSON:
    if isinstance(value, (IPv4Address, IPv4Interface, IPv4Network)):
        return str(value)
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _example(key: spec.Key[object]) -> JSON:
    return tomllib.loads(f"x = {key.example}")["x"]


def _table_schema(table: spec.Table) -> JSONObject:
    if table.names is not None and table.values is not None:
        return {"type": "object", "description": table.doc, "propertyNames": {"pattern": spec.schema_pattern(table.names)},
                "additionalProperties": dict(table.values.schema)}
    properties: JSONObject = {}
    required = []
    for k in table.keys:
        if isinstance(k, spec.Sub):
            inner = _table_schema(k.table)
            properties[k.name] = {"type": "array", "description": k.doc, "items": inner} if k.many else {**inner, "description": k.doc}
            continue
        schema: JSONObject = {**k.kind.schema, "description": k.doc + (f" Default: {k.default_doc}." if k.default_doc else "")}
        if k.default is spec.Absent.REQUIRED:
            required.append(k.name)
        elif not isinstance(k.default, spec.Absent):
            schema["default"] = _json_value(k.default)
        schema["examples"] = [_example(k)]
        properties[k.name] = schema
    out: JSONObject = {"type": "object", "description": table.doc, "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def json_schema() -> JSONObject:
    """The JSON Schema (draft-07) of a spec file, for editors (taplo, Even Better TOML) and tools."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "netcheck topology spec",
        **_table_schema(spec.TOP),
        "description": "A netcheck topology (TOML). Reference: docs/spec.md. The loader checks more than this schema can say "
                       "(references between tables, subnets, duplicates); run `netcheck validate FILE`.",
    }


def multi_json_schema() -> JSONObject:
    """The JSON Schema (draft-07) of a multi-host spec file ([[host]] tables): each host's single-host tables inlined."""
    from netcheck.multihost.spec import MULTI_TOP

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "netcheck multi-host topology spec",
        **_table_schema(MULTI_TOP),
        "description": "A netcheck multi-host topology (TOML): [[host]] tables, [underlay] and [join]. Reference: docs/multihost.md "
                       "(each host's tables: docs/spec.md). The loader checks more; run `netcheck validate FILE`.",
    }


def _default_text(key: spec.Key[object]) -> str:
    if key.default is spec.Absent.REQUIRED:
        return "**required**"
    if key.default_doc:
        return key.default_doc
    if key.default is spec.Absent.NONE:
        return "none"
    return f"`{_toml_value(key.default)}`"


def _heading(path: str, table: spec.Table) -> str:
    if not path:
        return "Top level"
    if path.endswith("[]") and "." not in path:
        return f"`[[{path[:-2]}]]`"
    if not path.endswith("[]"):
        return f"`[{path}]`"
    return f"`{path}` (an array of inline tables)"


def reference() -> str:
    """The key reference: one table of keys for each TOML table, with type, default, example and meaning."""
    return _reference(walk(), BEGIN, END, frozenset())


def multi_reference() -> str:
    """The key reference of a multi-host spec's own tables (a host's single-host tables link to docs/spec.md)."""
    from netcheck.multihost.spec import SINGLE_HOST_SUBS

    return _reference(multi_walk(), MULTI_BEGIN, MULTI_END, SINGLE_HOST_SUBS)


def _reference(tables: Iterator[tuple[str, spec.Table]], begin: str, end: str, elsewhere: frozenset[str]) -> str:
    lines = [begin, ""]
    for path, table in tables:
        lines += [f"### {_heading(path, table)}", "", table.doc, ""]
        if table.names is not None and table.values is not None:
            lines += ["| key | type | default | example | meaning |", "|---|---|---|---|---|",
                      f'| any name under `net.` (quoted) | {table.values.title} | none | `"net.ipv4.ip_forward" = 1` | the sysctl and its value |', ""]
            continue
        lines += ["| key | type | default | example | meaning |", "|---|---|---|---|---|"]
        for k in table.keys:
            if isinstance(k, spec.Sub):
                inner = f"{path}.{k.name}".lstrip(".") + ("[]" if k.many else "")
                kind = "array of tables" if k.many else "table"
                if path == "host[]" and k.name in elsewhere:
                    title = f"[[{k.name}]]" if k.many else f"[{k.name}]"
                    lines.append(f"| `{k.name}` | {kind}, as a single-host spec's `{title}` ([spec.md](spec.md#reference)) | none | | {k.doc} |")
                    continue
                example = f"`{k.name} = {k.example}`" if k.example else ""
                lines.append(f"| `{k.name}` | {kind}, see {_heading(inner, k.table)} | none | {example} | {k.doc} |")
            else:
                lines.append(f"| `{k.name}` | {k.kind.title} | {_default_text(k)} | `{k.name} = {k.example}` | {k.doc} |")
        lines.append("")
    lines.append(end)
    return "\n".join(lines).replace("|  |", "| |")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def multi_schema_text() -> str:
    return json.dumps(multi_json_schema(), indent=2, ensure_ascii=False) + "\n"


def with_reference(docs: str, begin: str = BEGIN, end: str = END, text: str | None = None) -> str:
    """The text of docs/spec.md (or docs/multihost.md) with its key reference replaced by the current one."""
    if begin not in docs or end not in docs:
        raise ValueError(f"no reference block ({begin} ... {end})")
    before, rest = docs.split(begin, 1)
    after = rest.split(end, 1)[1]
    return before + (text if text is not None else reference()) + after


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netcheck.spec_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the schema or the reference is stale")
    args = parser.parse_args(argv)
    stale = []
    targets = [(SCHEMA_PATH, schema_text), (MULTI_SCHEMA_PATH, multi_schema_text)]
    if DOCS_PATH.exists():
        targets.append((DOCS_PATH, lambda: with_reference(DOCS_PATH.read_text("utf-8"))))
    if MULTI_DOCS_PATH.exists():
        targets.append((MULTI_DOCS_PATH, lambda: with_reference(MULTI_DOCS_PATH.read_text("utf-8"), MULTI_BEGIN, MULTI_END, multi_reference())))
    for path, text in targets:
        new = text()
        if path.exists() and path.read_text("utf-8") == new:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(new, "utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print("stale: " + ", ".join(map(str, stale)) + " (run: python -m netcheck.spec_docs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
