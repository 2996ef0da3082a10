"""Fix verification over the fault catalog: per cause, how many fixes were verified, failed, or not applicable.

Each fault of ``netcheck.faults.FAULTS`` is injected into a fresh sandbox lab (its topology, and
the ``-nft`` variant built with native nft rules), its suite test runs and fails, and the
diagnosis applies the top causes' fixes, repeats the probe, and undoes them. This reads, from the
failure message, what happened to the finding of the fault's expected cause:

- verified: "fix verified: the probe passes after ...";
- failed: "fix did not help", "fix not applied" or "fix not verified";
- n/a: no fix values (a command for people only), "fix not applicable", or no diagnosis (a
  suite test that asserts on state and sends no probe).

Run as root from the repository (about 4 s a fault, one at a time)::

    sudo .venv/bin/python bench/fix_verification.py            # the whole catalog, both builds
    sudo .venv/bin/python bench/fix_verification.py veth-down   # some faults
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

from netcheck.faults import FAULTS

REPO = Path(__file__).resolve().parents[1]
FINDING = re.compile(r"^E?\s+\d+\. \[(\w+)\]", re.M)
STATUS = re.compile(r"^E?\s+(fix verified|fix did not help|fix not applied|fix not verified|fix not applicable)", re.M)
OUTCOME = {"fix verified": "verified", "fix did not help": "failed", "fix not applied": "failed", "fix not verified": "failed", "fix not applicable": "n/a"}


def outcome(out: str, cause: str) -> tuple[str, str]:
    """(verified | failed | n/a, the line that says so) for ``cause``'s finding in the first diagnosis of ``out``."""
    starts = [(m.start(), m.group(1)) for m in FINDING.finditer(out)]
    for i, (at, found) in enumerate(starts):
        if found != cause:
            continue
        block = out[at:starts[i + 1][0] if i + 1 < len(starts) else len(out)]
        m = STATUS.search(block)
        if m is None:
            return "n/a", "no fix values (a command to paste), or not tried"
        line = block[m.start():].splitlines()[0].lstrip("E ").strip()
        return OUTCOME[m.group(1)], line
    return "n/a", "no diagnosis in the failure (the suite test asserts on state)" if not starts else f"the diagnosis does not name {cause}"


def top(out: str) -> str:
    m = FINDING.search(out)
    return m.group(1) if m else "-"


def run(name: str, topology: str) -> tuple[str, str]:
    f = FAULTS[name.partition(":")[0]]
    argv = [sys.executable, "-m", "pytest", str(REPO / "suites" / f.suite_test), f"--netcheck-topology={topology}", f"--netcheck-fault={name}",
            "--netcheck-report=none", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False, timeout=300)
    status, line = outcome(done.stdout, f.cause)
    first = top(done.stdout)
    return status, (line if first in (f.cause, "-") else f"TOP CAUSE [{first}], expected [{f.cause}]; {line}")


def main(names: list[str]) -> int:
    tally: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for given in names or sorted(FAULTS):
        name = given.partition(":")[0]
        f = FAULTS[name]
        for topology in (f.topology, f"{f.topology}-nft"):
            status, line = run(given, topology)
            tally[f.cause][status] += 1
            print(f"{given:<34} {topology:<10} {f.cause:<22} {status:<9} {line[:150]}", flush=True)
    print(f"\n{'cause':<24} verified  failed  n/a")
    for cause in sorted(tally):
        t = tally[cause]
        print(f"{cause:<24} {t['verified']:>8} {t['failed']:>7} {t['n/a']:>4}")
    total = sum(tally.values(), collections.Counter())
    print(f"{'total':<24} {total['verified']:>8} {total['failed']:>7} {total['n/a']:>4}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
