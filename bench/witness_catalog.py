"""The kernel as witness over the fault catalog: what each fault's diagnosis shows, counted.

    sudo .venv/bin/python bench/witness_catalog.py [--jobs 2] [--only NAME,...] [--json out.json]

Each fault of ``netcheck.faults.FAULTS`` runs its suite test in a pytest of its own (as
tests/test_diagnosis.py does), on its built-in and, for a fault that touches rules, on the built-in's
``-nft`` build; a fault with an outside script also runs as ``NAME:script``, on both builds where it
touches rules (a script writes with iptables-nft or nft, or edits the lab's rules where the builder wrote
them: iptables-legacy on the first build, the lab's nft tables on the ``-nft`` one). From the failure message it counts:

* faults where the kernel drops the probe (``Fault.kernel``): the diagnosis shows the kernel's reason and location;
* faults on an nft or iptables-nft rule set (a ``-nft`` build, or a script): the diagnosis shows the exact
  rule and verdict from the nftables trace (and, where the kernel's drop is NETFILTER_DROP, the drop itself).
  A run whose trace met no nf_tables chain but netcheck's own (the diagnosis says "iptables-legacy rules leave
  no trace") was on a legacy rule set after all: it is counted apart, not as a miss. A nat chain whose rules
  did not match shows its policy only ("no nat rule matched; chain policy accept"): a verdict, counted as shown;
* how often the datapath model and the kernel disagree (the report shows both), and the rules and the kernel;
* faults whose top cause is not the catalog's (tests/test_diagnosis.py asserts it; a suite test that asserts on state has no diagnosis).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOP = re.compile(r"^(?:E)?\s+1\. \[(\w+)\]", re.M)
KERNEL_HEAD = "kernel (its drops of the probe's packets during the repeat, from skb:kfree_skb):"
KERNEL_LINE = re.compile(r"^E?\s+(?P<reason>[A-Z0-9_]+) at (?P<location>[a-z0-9_.]+) on (?P<where>\S+) \(", re.M)
NFT_HEAD = "nft trace (the rules and verdicts the repeated probe's packets met in nf_tables):"
NFT_LINE = re.compile(r"^E?\s+host: (?P<step>.+?(?: -> (?P<verdict>\w+)|chain policy (?P<policy>\w+) \(no rule decided\)).*)$", re.M)
DISAGREE = re.compile(r"^E?\s*model and kernel disagree: (?P<text>.+)$", re.M)
NFT_NOTE = re.compile(r"^E?\s*note: (?P<text>(?:no )?nft trace[^\n]*)$", re.M)
LEGACY_ONLY = "iptables-legacy rules leave no trace"  # the diagnosis' note when no nf_tables chain but the trace table saw the packets
NAT_MISS = "no nat rule matched"


@dataclass
class Outcome:
    fault: str
    topology: str
    nft: bool  # on an nft or iptables-nft rule set
    kernel_expected: str | None
    expected: str
    top: str | None = None
    kernel: list[tuple[str, str]] = field(default_factory=list)  # (reason, location) shown
    nft_steps: list[str] = field(default_factory=list)
    nft_drop: bool = False  # a step with a drop verdict (a rule's or a policy's)
    disagreements: list[str] = field(default_factory=list)
    nft_notes: list[str] = field(default_factory=list)  # why there is no trace (the packets never reached the host's hooks, legacy rules only, ...)
    legacy_path: bool = False  # the trace met no nf_tables chain but netcheck's own: the rules on the probe's path are iptables-legacy
    failed_as_expected: bool = False
    seconds: float = 0.0


def section(out: str, head: str) -> str:
    parts = out.split(head, 1)
    return parts[1].split("\n\n", 1)[0] if len(parts) == 2 else ""


def run(fault: str, topology: str, nft: bool, kernel: str | None, expected: str, suite_test: str) -> Outcome:
    t = time.perf_counter()
    argv = [sys.executable, "-m", "pytest", str(REPO / "suites" / suite_test), f"--netcheck-topology={topology}", f"--netcheck-fault={fault}",
            "--netcheck-report=none", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rN"]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    out = p.stdout
    o = Outcome(fault, topology, nft, kernel, expected, failed_as_expected=p.returncode == 1, seconds=round(time.perf_counter() - t, 1))
    m = TOP.search(out)
    o.top = m.group(1) if m else None
    o.kernel = [(k.group("reason"), k.group("location")) for k in KERNEL_LINE.finditer(section(out, KERNEL_HEAD))]
    steps = list(NFT_LINE.finditer(section(out, NFT_HEAD)))
    o.nft_steps = [s.group("step") for s in steps]
    o.nft_drop = any("drop" in (s.group("verdict") or "", s.group("policy") or "") for s in steps)
    o.disagreements = [d.group("text") for d in DISAGREE.finditer(out)]
    o.nft_notes = [n.group("text") for n in NFT_NOTE.finditer(out)]
    o.legacy_path = any(LEGACY_ONLY in n for n in o.nft_notes)
    return o


def catalog(only: set[str] | None) -> list[tuple[str, str, bool, str | None, str, str]]:
    from netcheck.faults import FAULTS, SCRIPTED

    runs = []
    for name, f in sorted(FAULTS.items()):
        if only and name not in only:
            continue
        runs.append((name, f.topology, False, f.kernel, f.cause, f.suite_test))
        if f.edits_rules:
            runs.append((name, f"{f.topology}-nft", True, f.kernel, f.cause, f.suite_test))
        if f.script is not None:
            runs.append((name + SCRIPTED, f.topology, f.edits_rules, f.kernel, f.cause, f.suite_test))  # a script that writes no rule (ip, sysctl) is on no rule set
            if f.edits_rules:
                runs.append((name + SCRIPTED, f"{f.topology}-nft", True, f.kernel, f.cause, f.suite_test))
    return runs


def summary(outcomes: list[Outcome]) -> str:
    kernel = [o for o in outcomes if o.kernel_expected]
    kernel_shown = [o for o in kernel if any(r == o.kernel_expected and loc for r, loc in o.kernel)]
    legacy = [o for o in outcomes if o.nft and o.top is not None and not o.nft_steps and o.legacy_path]
    nft = [o for o in outcomes if o.nft and o.top is not None and o not in legacy]
    nft_shown = [o for o in nft if o.nft_steps]
    nat_miss = [o for o in nft_shown if all(NAT_MISS in st for st in o.nft_steps)]
    unreached = [o for o in nft if not o.nft_steps and any("reached the host" in n for n in o.nft_notes)]
    unexplained = [o for o in nft if not o.nft_steps and o not in unreached]
    nft_dropping = [o for o in nft if o.kernel_expected == "NETFILTER_DROP"]
    nft_drop_shown = [o for o in nft_dropping if o.nft_drop]
    diagnosed = [o for o in outcomes if o.top is not None]
    model = [o for o in diagnosed if any("the model" in d for d in o.disagreements)]
    rules = [o for o in diagnosed if any(d.startswith("the rules") for d in o.disagreements)]
    wrong = [o for o in diagnosed if o.top != o.expected]
    lines = [
        f"fault runs: {len(outcomes)} ({len(diagnosed)} with a diagnosis; the others' suite tests assert on state), {sum(o.seconds for o in outcomes):.0f} s in all",
        f"kernel-drop faults whose diagnosis shows the kernel's reason and location: {len(kernel_shown)}/{len(kernel)}"
        + (f"  (missing: {', '.join(f'{o.fault}@{o.topology}' for o in kernel if o not in kernel_shown)})" if len(kernel_shown) < len(kernel) else ""),
        f"faults on an nft or iptables-nft rule set whose diagnosis shows the exact rule and verdict (nft trace): {len(nft_shown)}/{len(nft)}"
        + (f"  (missing: {', '.join(f'{o.fault}@{o.topology}' for o in nft if o not in nft_shown)})" if len(nft_shown) < len(nft) else ""),
        f"  of which the only verdicts are nat chains' policies (\"{NAT_MISS}; chain policy accept\": a DNAT or MASQUERADE the fault made miss, "
        f"or a packet that met no other chain): {len(nat_miss)}"
        + (f" ({', '.join(f'{o.fault}@{o.topology}' for o in nat_miss)})" if nat_miss else ""),
        f"  without a trace because none of the probe's packets reached the host's hooks (the diagnosis says so): {len(unreached)}"
        + (f" ({', '.join(f'{o.fault}@{o.topology}' for o in unreached)})" if unreached else ""),
        f"  without a trace and unexplained: {len(unexplained)}" + (f" ({', '.join(f'{o.fault}@{o.topology}' for o in unexplained)})" if unexplained else ""),
        f"  of which NETFILTER_DROP faults whose trace shows the dropping rule or policy: {len(nft_drop_shown)}/{len(nft_dropping)}"
        + (f"  (missing: {', '.join(f'{o.fault}@{o.topology}' for o in nft_dropping if o not in nft_drop_shown)})" if len(nft_drop_shown) < len(nft_dropping) else ""),
        f"runs counted apart, no nf_tables chain on their probe's path (its rules are iptables-legacy: a script that edits a legacy build's rules where the builder wrote them; "
        f"or the fault wiped the nft build's only chains on it; the diagnosis says so): {len(legacy)}"
        + (f" ({', '.join(f'{o.fault}@{o.topology}' for o in legacy)})" if legacy else ""),
        f"the model and the kernel disagree (both shown): {len(model)}/{len(diagnosed)}" + "".join(f"\n    {o.fault}@{o.topology}: {d}" for o in model for d in o.disagreements if "the model" in d),
        f"the rules' first cause and the kernel disagree: {len(rules)}/{len(diagnosed)}",
        f"top cause other than the catalog's: {len(wrong)}/{len(diagnosed)}" + "".join(f"\n    {o.fault}@{o.topology}: [{o.top}], expected [{o.expected}]" for o in wrong),
        f"did not fail their suite test: {', '.join(f'{o.fault}@{o.topology}' for o in outcomes if not o.failed_as_expected) or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="comma-separated fault names")
    ap.add_argument("--json", type=Path, help="also write every outcome here")
    ap.add_argument("--progress", type=Path, help="append each outcome here as a JSON line as soon as it is known")
    ap.add_argument("--summarize", type=Path, help="only print the summary of a --progress file (a partial run too)")
    args = ap.parse_args()
    if args.summarize:
        done = [Outcome(**{**d, "kernel": [tuple(k) for k in d["kernel"]]}) for d in map(json.loads, args.summarize.read_text().splitlines()) if d]
        print(summary(done))
        return
    runs = catalog(set(args.only.split(",")) if args.only else None)
    if args.progress and args.progress.exists():  # go on where a run left off
        done = {(d["fault"], d["topology"]) for d in map(json.loads, args.progress.read_text().splitlines()) if d}
        runs = [r for r in runs if (r[0], r[1]) not in done]
    runs.sort(key=lambda r: (r[3] is None, not r[2]))  # the kernel-drop faults first, then those on an nft rule set: a partial run counts them first
    load = os.getloadavg()[0]

    def one(r: tuple[str, str, bool, str | None, str, str]) -> Outcome:
        o = run(*r)
        if args.progress:
            with args.progress.open("a") as f:
                f.write(json.dumps(asdict(o)) + "\n")
        return o

    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(one, runs))
    print(f"the kernel as witness over the catalog ({len(runs)} runs, {args.jobs} at a time; load {load:.1f} -> {os.getloadavg()[0]:.1f})")
    print(summary(outcomes))
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))


if __name__ == "__main__":
    main()
