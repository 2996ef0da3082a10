"""Fix verification over the whole fault catalog: per cause, how many fixes were verified, failed, or not applicable.

Each run injects one fault into a fresh sandbox lab, runs the suite test it must fail, and reads from
the failure message what the diagnosis did with the finding of the fault's expected cause (it applies
the top causes' fix values, repeats the probe, and undoes them):

- verified: "fix verified: the probe passes after ...";
- failed: "fix did not help", "fix not applied" or "fix not verified";
- n/a, with the reason: the finding holds no fix value (only a text fix, shown), "fix not applicable"
  (a rule netcheck cannot put back exactly), or no diagnosis (a suite test that asserts on state).

The runs cover:

- every single-host fault of ``netcheck.faults.FAULTS`` on its built-in; a fault that edits rules also on
  the built-in's ``-nft`` build (native nft tables), and a fault with an outside script also as ``NAME:script``
  (its rules written with iptables-nft or nft);
- every cross-host fault of ``CROSS_HOST_FAULTS`` on its multi-host built-in;
- the tools' faults of ``netcheck.adapters.faults.EXTERNAL_FAULTS`` whose setup needs no engine (CNI);
  ``--engines`` adds Docker's and Podman's.

It also counts how often the datapath model and the kernel disagree (the diagnosis's ``disagreement``).

Run as root from the repository (5 to 15 s a run under load)::

    .venv/bin/python bench/fix_verification.py --jobs 2            # everything
    .venv/bin/python bench/fix_verification.py veth-down rp-filter-decap
    .venv/bin/python bench/fix_verification.py --merge first.json again.json   # the table of runs put together
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FINDING = re.compile(r"^E?\s+\d+\. \[(\w+)\]", re.M)
FIX_TEXT = re.compile(r"^E?\s+fix: (.*)$", re.M)
STATUS = re.compile(r"^E?\s+(fix verified|fix did not help|fix not applied|fix not verified|fix not applicable)", re.M)
OUTCOME = {"fix verified": "verified", "fix did not help": "failed", "fix not applied": "failed", "fix not verified": "failed", "fix not applicable": "n/a"}
DISAGREE = re.compile(r"^E?\s*model and kernel disagree: (?P<text>.+)$", re.M)
ENGINES = {"docker29-nft", "docker-dns", "podman-dns"}  # setups that need a container engine running


@dataclass
class Run:
    kind: str  # single, cross, tool
    fault: str  # as injected (NAME, NAME:script)
    topology: str
    cause: str
    status: str = "n/a"
    line: str = ""
    top: str = "-"
    diagnosed: bool = False
    disagreement: str = ""
    seconds: float = 0.0


def outcome(out: str, cause: str) -> tuple[str, str]:
    """(verified | failed | n/a, the line that says so) for ``cause``'s finding in the first diagnosis of ``out``."""
    starts = [(m.start(), m.group(1)) for m in FINDING.finditer(out)]
    for i, (at, found) in enumerate(starts):
        if found != cause:
            continue
        block = out[at:starts[i + 1][0] if i + 1 < len(starts) else len(out)]
        m = STATUS.search(block)
        if m is None:
            text = FIX_TEXT.search(block)
            return "n/a", f"no fix value, only a text fix: {text.group(1).strip() if text else '(none)'}"
        line = block[m.start():].splitlines()[0].lstrip("E ").strip()
        return OUTCOME[m.group(1)], line
    return "n/a", "no diagnosis in the failure (the suite test asserts on state)" if not starts else f"the diagnosis does not name {cause}"


def _pytest(argv: list[str], prelude: str = "") -> str:
    code = f"import sys, pytest\n{prelude}\nsys.exit(pytest.main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *argv, "--netcheck-report=none", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
                          capture_output=True, text=True, cwd=REPO, check=False, timeout=400)
    return done.stdout + done.stderr


def _cross(name: str) -> str:
    """The failure message of a cross-host fault's suite test, run in a child (as tests/test_cross_host.py does)."""
    code = f"""
import sys
sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
from tests.test_cross_host import SUITE, _run
from netcheck.faults import CROSS_HOST_FAULTS
from netcheck.multihost import spec as multi_spec
from netcheck.multihost.lab import MultiLab
f = CROSS_HOST_FAULTS[{name!r}]
with MultiLab(multi_spec.builtin(f.topology)) as lab:
    f.inject(lab)
    print(_run(f.suite_test.split("::")[1], lab))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False, timeout=400)
    return done.stdout + done.stderr


def execute(r: Run, logs: Path | None = None) -> Run:
    from netcheck.adapters.faults import EXTERNAL_FAULTS
    from netcheck.faults import CROSS_HOST_FAULTS, FAULTS

    t0 = time.perf_counter()
    if r.kind == "cross":
        out = _cross(r.fault)
    elif r.kind == "tool":
        f = EXTERNAL_FAULTS[r.fault]
        prelude = "from netcheck.faults import FAULTS\nfrom netcheck.adapters.faults import EXTERNAL_FAULTS\nFAULTS.update(EXTERNAL_FAULTS)"
        out = _pytest([str(REPO / "suites" / f.suite_test), f"--netcheck-topology={REPO / 'examples' / (r.topology + '.toml')}", f"--netcheck-fault={r.fault}"], prelude)
    else:
        f = FAULTS[r.fault.partition(":")[0]]
        out = _pytest([str(REPO / "suites" / f.suite_test), f"--netcheck-topology={r.topology}", f"--netcheck-fault={r.fault}"])
    assert r.kind != "cross" or r.fault in CROSS_HOST_FAULTS
    r.seconds = round(time.perf_counter() - t0, 1)
    if logs is not None:
        (logs / f"{r.fault.replace(':', '_')}@{r.topology}.txt").write_text(out)
    r.status, r.line = outcome(out, r.cause)
    m = FINDING.search(out)
    r.top = m.group(1) if m else "-"
    r.diagnosed = m is not None
    r.disagreement = "; ".join(d.group("text") for d in DISAGREE.finditer(out))
    if r.top not in (r.cause, "-"):
        r.line = f"TOP CAUSE [{r.top}], expected [{r.cause}]; {r.line}"
    return r


def catalog(only: set[str], engines: bool) -> list[Run]:
    from netcheck.adapters.faults import EXTERNAL_FAULTS
    from netcheck.faults import CROSS_HOST_FAULTS, FAULTS, SCRIPTED

    runs = []
    for name, f in sorted(FAULTS.items()):
        runs.append(Run("single", name, f.topology, f.cause))
        if f.edits_rules:
            runs.append(Run("single", name, f"{f.topology}-nft", f.cause))
        if f.script is not None:
            runs.append(Run("single", name + SCRIPTED, f.topology, f.cause))
    runs += [Run("cross", name, c.topology, c.cause) for name, c in sorted(CROSS_HOST_FAULTS.items())]
    runs += [Run("tool", name, t.topology, t.cause) for name, t in sorted(EXTERNAL_FAULTS.items()) if engines or t.topology not in ENGINES]
    return [r for r in runs if not only or r.fault.partition(":")[0] in only]


def table(runs: list[Run]) -> str:
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reasons: dict[str, list[str]] = collections.defaultdict(list)
    for r in runs:
        tally[r.cause][r.status] += 1
        if r.status != "verified":
            reasons[r.cause].append(f"{r.status}: {r.fault}@{r.topology}: {r.line[:220]}")
    lines = [f"{'cause':<38} verified  failed  n/a"]
    for cause in sorted(tally):
        t = tally[cause]
        lines.append(f"{cause:<38} {t['verified']:>8} {t['failed']:>7} {t['n/a']:>4}")
    total = sum(tally.values(), collections.Counter())
    lines.append(f"{'total':<38} {total['verified']:>8} {total['failed']:>7} {total['n/a']:>4}   ({len(runs)} runs)")
    lines.append("\nnot verified, and why:")
    lines += [f"  [{c}] {x}" for c in sorted(reasons) for x in reasons[c]]
    diagnosed = [r for r in runs if r.diagnosed and r.kind != "cross"]
    model = [r for r in diagnosed if "the model" in r.disagreement]
    lines.append(f"\nthe model and the kernel disagree (single-host and tool runs with a diagnosis): {len(model)}/{len(diagnosed)}")
    lines += [f"  {r.fault}@{r.topology}: {r.disagreement[:220]}" for r in model]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("faults", nargs="*", help="only these faults (any catalog)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--engines", action="store_true", help="also the tools' faults whose setup needs dockerd or podman")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--logs", type=Path, help="write each run's output to a file in this folder")
    ap.add_argument("--progress", type=Path, help="append each run here as a JSON line as soon as it is done (a run cut short keeps what it did)")
    ap.add_argument("--after", help="only the runs after this fault in the catalog's order (to go on where a run was cut short)")
    ap.add_argument("--merge", type=Path, nargs="+", help="only print the table of these --json or --progress files (a later run of a fault and topology replaces an earlier one)")
    args = ap.parse_args()
    if args.merge:
        def read(f: Path) -> list[dict[str, object]]:
            text = f.read_text()
            return json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]

        merged = {(d["fault"], d["topology"]): Run(**d) for f in args.merge for d in read(f)}  # type: ignore[arg-type]
        print(table(list(merged.values())))
        return 0
    runs = catalog(set(args.faults), args.engines)
    if args.after:
        runs = runs[next(i for i, r in enumerate(runs) if r.fault.partition(":")[0] == args.after) + 1:]
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    t0, load = time.perf_counter(), os.getloadavg()[0]

    def one(r: Run) -> Run:
        done = execute(r, args.logs)
        if args.progress is not None:
            with args.progress.open("a") as f:
                f.write(json.dumps(asdict(done)) + "\n")
        print(f"{done.fault:<36} {done.topology:<16} {done.cause:<30} {done.status:<9} {done.seconds:>5.1f}s {done.line[:160]}", flush=True)
        return done

    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, runs))
    print(f"\nfix verification over the catalog: {len(done)} runs, {args.jobs} at a time, {time.perf_counter() - t0:.0f} s (load {load:.1f} -> {os.getloadavg()[0]:.1f})\n")
    print(table(done))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in done], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
