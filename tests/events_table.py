"""Measure which tool's setup survives which lifecycle event, and write the table into docs/tools.md.

    sudo .venv/bin/python tests/events_table.py            # print the table
    sudo .venv/bin/python tests/events_table.py --write    # and replace it in docs/tools.md
    sudo .venv/bin/python tests/events_table.py --write --columns ip-forward-reset ip-forward-reset+docker-restart
                                                           # measure only these columns (events joined by +), keep the others' cells

One pytest run of a few suites per column, on every row's example at once, with --netcheck-event:
a cell says which checks that passed before the event(s) fail after them. A row whose tool is not
installed, or an event that is not its tool's, shows "n/a".
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ROWS = {  # example -> the row's name
    "script-tutorial1": "script (tutorial 1, iptables-nft)",
    "cni": "CNI (bridge + portmap)",
    "netavark": "netavark",
    "podman": "Podman (netavark)",
    "docker": "Docker 20.10",
    "docker29-nft": "Docker 29 nft rule set",
    "netavark-nft": "netavark 1.12+ nft rule set",
    "firewalld-nft": "firewalld-style rule set",
    "ufw-nft": "ufw-style rule set",
}
COLUMNS: tuple[tuple[str, ...], ...] = (("nft-flush",), ("firewall-reload",), ("iptables-restore",), ("link-flap",),
           ("nft-flush", "podman-network-reload"), ("nft-flush", "docker-restart"),
           ("iptables-flush",), ("forward-policy-drop",), ("iptables-alternative-switch",), ("ip-forward-reset",), ("bridge-recreate",),
           ("ip-forward-reset", "podman-network-reload"), ("ip-forward-reset", "docker-restart"),
           ("bridge-recreate", "podman-network-reload"), ("bridge-recreate", "docker-restart"), ("container-new-address",))
SUITES = ("test_topology.py", "test_forwarding.py", "test_masquerade.py", "test_dnat.py")
BEGIN, END = "<!-- events table: begin (tests/events_table.py --write) -->", "<!-- events table: end -->"


class Collect:
    """A pytest plugin that keeps the test reports of the run."""

    def __init__(self) -> None:
        self.reports: list[Any] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.reports.append(report)


def cell_run(events: list[str], out: Path) -> None:
    """One column: the suites on every row, before and after ``events``; writes {example: {check: outcomes}}."""
    import pytest

    from netcheck.lifecycle import Phases, before_after

    plugin = Collect()
    args = [str(REPO / "suites" / s) for s in SUITES] + [f"--netcheck-topology={REPO / 'examples' / f'{e}.toml'}" for e in ROWS]
    args += [f"--netcheck-event={e}" for e in events] + ["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--netcheck-report=none"]
    pytest.main(args, plugins=[plugin])
    table: dict[str, dict[str, list[str]]] = {}
    for row in before_after(Phases(tuple(events)), plugin.reports):
        head, _, topo = row.check.rpartition("[")
        table.setdefault(topo.rstrip("]"), {})[head] = list(row.outcomes)
    out.write_text(json.dumps(table))


def cell(checks: dict[str, list[str]] | None) -> str:
    """What the events broke among the checks that passed before (the suites' names), or survives."""
    if not checks:
        return "n/a"
    ran = {k: v for k, v in checks.items() if v[0] == "passed"}
    if ran and all(v[-1] == "skipped" for v in ran.values()):
        return "n/a"
    broken = sorted({k.split("::")[0].split("/")[-1].removeprefix("test_").removesuffix(".py") for k, v in ran.items() if v[-1] != "passed"})
    failed = [k.split("::")[-1] for k, v in ran.items() if v[-1] != "passed"]
    if not failed:
        return "survives"
    shown = ", ".join(f"`{f}`" for f in failed) if len(failed) <= 2 else ", ".join(broken)
    return f"breaks {len(failed)}/{len(ran)}: {shown}"


def head(events: tuple[str, ...]) -> str:
    return " then ".join(f"`{e}`" for e in events)


def old_cells(text: str) -> dict[tuple[str, str], str]:
    """The cells of the table in docs/tools.md, by (example, column head): kept for the columns not measured now."""
    _, _, rest = text.partition(BEGIN)
    lines = [line for line in rest.partition(END)[0].splitlines() if line.startswith("| ")]
    if not lines:
        return {}
    heads = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    out = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        example = cells[0].rpartition("(`")[2].rstrip("`)")
        out.update({(example, h): c for h, c in zip(heads, cells[1:], strict=False)})
    return out


def measure(columns: tuple[tuple[str, ...], ...], kept: dict[tuple[str, str], str]) -> str:
    results: dict[tuple[str, ...], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as d:
        for i, events in enumerate(columns):
            out = Path(d) / f"{i}.json"
            subprocess.run([sys.executable, __file__, "--cell", *events, "--out", str(out)], cwd=REPO, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[events] = json.loads(out.read_text()) if out.exists() else {}
    lines = ["| setup | " + " | ".join(head(e) for e in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for example, name in ROWS.items():
        cells = [cell(results[e].get(example)) if e in results else kept.get((example, head(e)), "not measured") for e in COLUMNS]
        lines.append(f"| {name} (`{example}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--cell"]:
        cut = argv.index("--out")
        cell_run(argv[1:cut], Path(argv[cut + 1]))
        return
    doc = REPO / "docs" / "tools.md"
    text = doc.read_text()
    columns = COLUMNS
    if "--columns" in argv:
        asked = [tuple(a.split("+")) for a in argv[argv.index("--columns") + 1:] if not a.startswith("--")]
        unknown = [a for a in asked if a not in COLUMNS]
        if unknown:
            sys.exit(f"--columns: {', '.join('+'.join(u) for u in unknown)} not among COLUMNS ({', '.join('+'.join(c) for c in COLUMNS)})")
        columns = tuple(asked)
    table = measure(columns, old_cells(text))
    print(table)
    if "--write" in argv:
        before, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        doc.write_text(f"{before}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main(sys.argv[1:])
