"""The architecture, checked: netcheck's modules import only downward, and never in a cycle.

Every import counts, wherever it is written: at the top, inside a function (a lazy import),
or under ``TYPE_CHECKING`` (for the layers: a type is a dependency too; not for cycles, since
such an import never runs). A module's layer is that of the longest prefix in ``LAYERS`` that
names it, so ``netcheck.lab`` and everything under it (the lab as a package) are one layer.
Pure ``ast``: nothing of netcheck is imported, and no root is needed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "netcheck"
ORDER = ("base", "kernel", "spec", "lab", "probes", "diagnose", "report", "plugin")

# Where each module sits, lowest first. A module imports only from its own layer or below.
LAYERS: dict[str, str] = {
    "netcheck": "base",  # the package itself: a docstring
    "netcheck.waiting": "base",  # wait_until: the kernel layer waits on it too
    "netcheck.kernel": "kernel",  # netlink, iptc, nft, namespaces: the only importers of pyroute2 and iptc
    "netcheck.spec": "spec",  # a topology as data, validated
    "netcheck.topologies": "spec",  # the built-in specs (TOML)
    "netcheck.resolvconf": "spec",  # resolv.conf as text: where a container's lives, what a lookup tries
    "netcheck.naming": "spec",  # run tags and kernel names, from a spec
    "netcheck.datapath": "spec",  # the datapath model: a flow through a state, step by step (pure)
    "netcheck.expect": "lab",  # what a spec promises (who reaches whom): the model on the planned state
    "netcheck.scale": "spec",  # generated topologies for the scale suite and bench
    "netcheck.multihost": "spec",  # several hosts: the multi-host spec (its lab and probes sit higher, below)
    "netcheck.lab": "lab",  # build and teardown
    "netcheck.ledger": "lab",  # the run record: what a lab made, for teardown and clean
    "netcheck.services": "lab",  # the echo and HTTP services a lab runs in its containers
    "netcheck.faults": "lab",  # breaking a built lab on purpose
    "netcheck.lifecycle": "lab",  # lifecycle events done to a built lab (a flush, a restart), and the phases of a run
    "netcheck.adapters": "lab",  # labs that other tools make
    "netcheck.factory": "lab",  # the session's labs
    "netcheck.settings": "lab",  # which labs to build and how (it names faults)
    "netcheck.multihost.plan": "lab",  # the join between hosts, pure
    "netcheck.multihost.lab": "lab",  # the host labs, the underlay and the join
    "netcheck.multihost.nodes": "lab",  # hosts built on nodes, through execnet gateways
    "netcheck.multihost.sshnode": "lab",  # an sshd in a sandbox namespace, serving as a node
    "netcheck.packet": "probes",  # the one packet decoder
    "netcheck.evidence": "probes",  # probe requests and results, as values
    "netcheck.probes": "probes",  # sending, capturing, the matrix
    "netcheck.multihost.probes": "probes",  # cross-host probing: captures anywhere, DF echoes, bulk TCP (on nodes too)
    "netcheck.multihost.matrix": "probes",  # the reachability matrix across hosts (the shared engine, netcheck.probes.matrix)
    "netcheck.multihost.nodehost": "lab",  # a host served by a node, as a lab: its reads, services and faults asked of the node
    "netcheck.multihost.values": "lab",  # the kernel's answers as plain values across a gateway
    "netcheck.multihost.agent": "diagnose",  # the node's side of a gateway: its host lab, built, probed and diagnosed there
    "netcheck.diagnose": "diagnose",  # why a probe failed
    "netcheck.diagnosing": "diagnose",  # DiagnosingProber: where probes and diagnose meet, above both packages
    "netcheck.report": "report",  # the results model, HTML, pcap, diff
    "netcheck.spec_docs": "spec",  # docs/spec.md and the JSON Schema, written from the spec's declarations
    "netcheck.checks": "plugin",  # the suites' assertion helpers
    "netcheck.activation": "plugin",  # when netcheck is in play, and runs that cannot check anything
    "netcheck.plugin": "plugin",
    "netcheck.cli": "plugin",
}

# Edges that break the layering today, each with its reason. The lead empties this set after
# merging the lab package, where the prober and the services own their sockets.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # none: the capture points are the prober's, held by the lab as an attachment

# The probes and the diagnosis never import each other; only these join them (besides the layers above both).
JOINERS = {"netcheck.diagnosing", "netcheck.diagnose.doctor", "netcheck.multihost.agent"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def _module_of(name: str) -> str:
    """The netcheck module an imported name lives in (``netcheck.a.b.Thing`` -> ``netcheck.a.b``)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _type_only(tree: ast.Module) -> set[int]:
    """The import statements under ``if TYPE_CHECKING:`` (by id)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports(module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported netcheck module, line, type-only) for every import statement anywhere in ``module``.

    Importing ``netcheck.a.b`` runs ``netcheck/a/__init__.py`` first, so the packages on the
    way count too, except those that hold the importer (their ``__init__`` is already running)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = _type_only(tree)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            if name != "netcheck" and not name.startswith("netcheck."):
                continue
            target = _module_of(name)
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                step = ".".join(parts[:k])
                if step != module and not module.startswith(step + ".") and step in MODULES:
                    yield step, node.lineno, id(node) in typing_only


def layer(module: str) -> str:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} has no layer: add it (or a package above it) to LAYERS in tests/test_layers.py")
    return LAYERS[best]


def edges(*, at_run_time: bool = False) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, without the known violations (and, ``at_run_time``, without type-only imports)."""
    out: dict[str, dict[str, int]] = {}
    for module in MODULES:
        found: dict[str, int] = {}
        for target, line, type_only in imports(module):
            if not _known(module, target) and not (at_run_time and type_only):
                found.setdefault(target, line)
        out[module] = found
    return out


def _known(module: str, target: str) -> bool:
    return any(_under(module, a) and _under(target, b) for a, b in KNOWN_VIOLATIONS)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if not any(_under(m, p) for p in LAYERS)]
    assert not missing, f"modules without a layer: {missing}; add them to LAYERS in tests/test_layers.py"


def test_no_import_goes_up_a_layer() -> None:
    bad = []
    for module, targets in edges().items():
        for target, line in targets.items():
            if ORDER.index(layer(target)) > ORDER.index(layer(module)):
                bad.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} ({layer(module)}) imports {target} ({layer(target)})")
    assert not bad, "imports from a lower layer to a higher one (order: " + " < ".join(ORDER) + "):\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = edges(at_run_time=True)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, {})):
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_probes_and_diagnose_do_not_import_each_other() -> None:
    graph = edges()
    bad = [f"{m} imports {t}" for m, targets in graph.items() for t in targets
           if m not in JOINERS and ((_under(m, "netcheck.probes") and layer(t) == "diagnose") or (_under(m, "netcheck.diagnose") and (_under(t, "netcheck.probes") or t in JOINERS)))]
    assert not bad, "the prober and the diagnosis meet only in netcheck.diagnosing (and the doctor):\n" + "\n".join(bad)


def test_known_violations_are_still_real() -> None:
    """An entry that no longer matches any import goes: the set lists only what is still to fix."""
    stale = [(a, b) for a, b in KNOWN_VIOLATIONS if not any(_under(m, a) and _under(t, b) for m in MODULES for t, _, _ in imports(m))]
    assert not stale, f"KNOWN_VIOLATIONS lists edges that no longer exist, remove them: {stale}"


@pytest.mark.parametrize(("source", "want"), [
    ("import netcheck.kernel.netns", {"netcheck.kernel.netns"}),  # netcheck/kernel has no __init__.py
    ("from netcheck.probes import Prober", {"netcheck.probes"}),
    ("def f():\n    from netcheck.diagnose.path import Flow", {"netcheck.diagnose", "netcheck.diagnose.path"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from netcheck.lab import Lab", {"netcheck.lab"}),
    ("from ..probes import capture", {"netcheck.probes", "netcheck.probes.capture"}),
])
def test_every_kind_of_import_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, want: set[str]) -> None:
    """The checker itself can fail: lazy, TYPE_CHECKING and relative imports are all found."""
    probe = tmp_path / "probe.py"
    probe.write_text(source + "\n")
    monkeypatch.setitem(MODULES, "netcheck.report.probe", probe)
    assert {t for t, _, _ in imports("netcheck.report.probe")} == want


def _short_aliases(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, module, alias) of every netcheck module imported under an alias of one to three letters."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("netcheck"):
            out += [(node.lineno, f"{node.module}.{a.name}", a.asname) for a in node.names if a.asname and a.asname != a.name and len(a.asname) <= 3]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, a.asname) for a in node.names if a.name.startswith("netcheck") and a.asname and a.asname != a.name and len(a.asname) <= 3]
    return out


def test_no_netcheck_module_goes_by_a_one_to_three_letter_alias() -> None:
    """``R`` was ``rtnl`` in one file and ``rules`` in another: a module is called by its name (or a name that says what it is)."""
    roots = [PACKAGE, PACKAGE.parent / "suites", PACKAGE.parent / "bench", PACKAGE.parent / "tests", PACKAGE.parent / "tools"]
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {module} as {alias}" for root in roots for path in sorted(root.rglob("*.py"))
             for line, module, alias in _short_aliases(ast.parse(path.read_text()))]
    assert not found, "\n".join(found)


def test_a_short_alias_is_seen() -> None:
    assert _short_aliases(ast.parse("from netcheck.diagnose import rules as R\nimport netcheck.multihost.spec as M\nimport xml.etree.ElementTree as ET")) == [
        (1, "netcheck.diagnose.rules", "R"), (2, "netcheck.multihost.spec", "M")]
