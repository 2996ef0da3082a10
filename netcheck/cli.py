"""The ``netcheck`` command: faults, causes, validate, review, doctor, diff, clean."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netcheck.ledger import RunRecord

SUITES_PACKAGE = "netcheck.suites"


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def suite_node(node: str) -> str:
    """A fault's suite test (a node id inside netcheck.suites) as a path pytest can run: inside a
    clone's suites/ (an editable install maps the package there) or the installed package."""
    found = importlib.util.find_spec(SUITES_PACKAGE)
    where = list(found.submodule_search_locations or []) if found is not None else []
    if not where:
        return node
    return str(Path(where[0]) / node)


# ----------------------------------------------------------------------------- faults, causes


def _faults(args: argparse.Namespace) -> int:
    from netcheck.faults import FAULTS

    rows: list[dict[str, Any]] = [
        {
            "name": f.name, "breaks": f.summary, "topology": f.topology, "caught_by": f.suite_test, "message": f.message, "cause": f.cause,
            "try": f"pytest {suite_node(f.suite_test)} --netcheck-topology {f.topology} --netcheck-fault {f.name} --netcheck-report none",
            "script": f.script is not None,  # also injectable as NAME:script, by an outside script (iptables-nft, nft, ip, sysctl)
        }
        for f in sorted(FAULTS.values(), key=lambda f: f.name)
    ]
    if args.json:
        _print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  breaks: {r['breaks']}")
        print(f"{'':<{width}}  caught by: {r['caught_by']} (on {r['topology']}), diagnosed as [{r['cause']}]" + (f"; also as {r['name']}:script" if r["script"] else ""))
    print(f"\n{len(rows)} faults. Try one (it breaks a sandbox lab on purpose, after it is built):\n"
          f"  pytest {suite_node(rows[0]['caught_by'])} --netcheck-topology {rows[0]['topology']} --netcheck-fault {rows[0]['name']}")
    return 0


def _causes(args: argparse.Namespace) -> int:
    from netcheck.diagnose.causes import CAUSES, faults_of, markdown

    if args.markdown:
        print(markdown(), end="")
        return 0
    rows = [
        {"cause": c.id, "means": c.means, "recognised_by": c.recognised, "severity": c.severity, "fix": c.fix, "fix_values": list(c.fixes), "faults": faults_of(c.id)}
        for c in CAUSES.values()
    ]
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(f"[{r['cause']}] {r['means']}")
        print(f"    recognised by: {r['recognised_by']}")
        print(f"    severity: {r['severity']}; fix: {r['fix'] or 'a command to paste (not applied)'}")
        if r["faults"]:
            print(f"    shown by the fault(s): {', '.join(r['faults'])} (see netcheck faults)")
    return 0


# ----------------------------------------------------------------------------- validate, doctor, diff


def _validate(args: argparse.Namespace) -> int:
    from netcheck.multihost import spec as multihost
    from netcheck.spec import SpecError, resolve

    status = 0
    rows: list[dict[str, Any]] = []
    for ref in args.files:
        try:
            if multihost.is_multi_ref(ref):
                m = multihost.resolve(ref)
                n = sum(len(h.topology.containers) for h in m.hosts)
                rows.append({"file": ref, "ok": True, "topology": m.name, "containers": n, "hosts": len(m.hosts)})
                if not args.json:
                    print(f"ok: {ref} (topology {m.name}: {len(m.hosts)} hosts joined by {m.join.kind}, {n} containers, path MTU {m.path_mtu})")
                continue
            t = resolve(ref)
        except SpecError as exc:
            status = 2
            rows.append({"file": ref, "ok": False, "error": str(exc), "problems": [p.as_dict() for p in exc.problems]})
            if not args.json:
                for problem in exc.problems or [exc]:
                    print(f"error: {problem}", file=sys.stderr)
            continue
        rows.append({"file": ref, "ok": True, "topology": t.name, "containers": len(t.containers)})
        if not args.json:
            print(f"ok: {ref} (topology {t.name}: {len(t.containers)} containers)")
    if args.json:
        _print_json(rows)
    return status


def _review(args: argparse.Namespace) -> int:
    from netcheck.adapters import build_external
    from netcheck.adapters.lab import ToolMissing
    from netcheck.adapters.script import review
    from netcheck.lab import LabError, has_net_admin
    from netcheck.spec import SpecError, resolve

    try:
        topology = resolve(args.file)
    except SpecError as exc:
        for problem in exc.problems or [exc]:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if topology.setup.mode != "script":
        print(f"error: {args.file}: setup.mode is {topology.setup.mode!r}; review runs a setup script (setup.mode = \"script\")", file=sys.stderr)
        return 2
    if not has_net_admin():
        print("error: review runs the script in sandbox labs: run as root (sudo .venv/bin/netcheck review ...)", file=sys.stderr)
        return 2
    try:
        done = review(topology, build_external)
    except (LabError, ToolMissing, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(done.corrected, encoding="utf-8")
    if args.json:
        _print_json({
            "script": str(done.script), "clean": done.clean, "out": args.out,
            "corrections": [{"line": c.mistake.line, "cause": c.mistake.cause, "why": c.mistake.why, "was": c.mistake.text, "corrected": c.mistake.corrected,
                             "verified": c.verified} for c in done.corrections],
            "left": [{"line": m.line, "cause": m.cause, "why": m.why, "was": m.text} for m in done.left],
        })
        return 0 if done.clean else 1
    for c in done.corrections:
        m = c.mistake
        verdict = "verified: the next run got past it" if c.verified else "NOT verified: the line still fails after the correction"
        print(f"{done.script.name}:{m.line}: {m.why}\n    was:       {m.text.strip()}\n    corrected: {(m.corrected or '').strip()}\n    {verdict}")
    for m in done.left:
        print(f"{done.script.name}:{m.line}: {m.why} (no correction known)\n    {m.text.strip()}")
    verified = sum(c.verified for c in done.corrections)
    print(f"\n{len(done.corrections)} mistake(s) corrected, {verified} shown to work by running the script again in a fresh lab; {len(done.left)} left"
          + (f"; corrected script: {args.out}" if args.out else "; --out FILE writes the corrected script"))
    return 0 if done.clean and verified == len(done.corrections) else 1


def _doctor(args: argparse.Namespace) -> int:
    from netcheck.diagnose.doctor import run_doctor

    return int(run_doctor(args))


def _diff(args: argparse.Namespace) -> int:
    from netcheck.report.diff import compare, fact_changes, run_diff

    if not args.json:
        return int(run_diff(args.old, args.new))
    from netcheck.report.model import Results, ResultsError

    try:
        old, new = Results.load(args.old), Results.load(args.new)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    changes = compare(old, new)
    _print_json({
        "old": {"file": args.old, "started": old.run.get("started"), "tests": len(old.tests)},
        "new": {"file": args.new, "started": new.run.get("started"), "tests": len(new.tests)},
        "facts": fact_changes(old, new),
        "changes": [{"kind": c.kind, "nodeid": c.nodeid, "detail": c.detail} for c in changes],
    })
    return 1 if changes else 0


# ----------------------------------------------------------------------------- clean


def _is_kept(r: RunRecord) -> bool:
    return r.kept


def _describe_run(r: RunRecord) -> str:
    h = r.header
    started = h.get("started")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"{r.tag} (topology {h.get('topology', '?')}, started {when} by pid {h.get('pid', '?')})"


def _clean(args: argparse.Namespace) -> int:
    from netcheck.ledger import clean, list_records

    records = list_records()
    tags: set[str] | None = None
    if args.tags:
        known = {r.tag: r for r in records}
        unknown = [t for t in args.tags if t not in known]
        if unknown:
            print(f"error: no run record for {', '.join(unknown)} in {os.environ.get('NETCHECK_RUN_DIR', '/run/netcheck')} "
                  f"(runs: {', '.join(sorted(known)) or 'none'})", file=sys.stderr)
            return 2
        live = [known[t] for t in args.tags if known[t].alive]
        if live and not args.all:
            print(f"error: {', '.join(_describe_run(r) for r in live)} is still running: end that run first (Ctrl-C), "
                  "or add --all to remove a live run's objects under it", file=sys.stderr)
            return 2
        tags = set(args.tags)
        records = [r for r in records if r.tag in tags]
    live = [r for r in records if r.alive]
    if args.all and live and not args.dry_run:
        names = ", ".join(f"{r.tag} (pid {r.header.get('pid', '?')})" for r in live)
        print(f"warning: --all also removes the labs of runs that are still alive: {names}", file=sys.stderr)
    # A named run is removed whatever it is; otherwise kept labs stay unless --kept (or --all).
    include_kept = tags is not None or args.kept or args.all
    count, errors = clean(include_live=args.all, include_kept=include_kept, dry_run=args.dry_run, tags=tags)
    kept_left = [] if include_kept else [r for r in records if not r.alive and _is_kept(r)]
    for r in kept_left:
        print(f"kept lab {_describe_run(r)}: left up (remove it with: netcheck clean {r.tag}; every kept lab: netcheck clean --kept)")
    if count == 0 and not kept_left:
        note = f" ({len(live)} live run(s) left alone; --all includes them)" if live and not args.all else ""
        print(f"nothing to clean{note}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def _diagnose(args: argparse.Namespace) -> int:
    """Print the diagnosis of a recording (NETCHECK_RECORD=DIR saves one per failed probe): no root, no namespace."""
    from netcheck.diagnose import conclude, crosshost, recording

    try:
        rec = recording.load_any(args.replay)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(rec, recording.Recording):
        d = conclude(rec)
        r = rec.result
        what = f"{r.kind} {r.source} -> {r.destination}: {r.verdict}" if r is not None else "no probe (the doctor's view)"
    else:
        d = crosshost.judge(rec)
        what = f"between hosts {rec.src} and {rec.dst} of {rec.topology.name}"
    if args.json:
        _print_json(d.to_dict())
    else:
        print(f"replayed {args.replay}: {what}")
        print(d.render())
    return 1 if d.findings else 0


# ----------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    from netcheck import __version__

    p = argparse.ArgumentParser(prog="netcheck", description="Test and diagnose single-host container networking.")
    p.add_argument("--version", action="version", version=f"netcheck {__version__} (distribution pytest-netcheck)")
    sub = p.add_subparsers(dest="command", required=True)

    fa = sub.add_parser("faults", help="list the faults --netcheck-fault can inject: what each breaks and which suite test catches it")
    fa.add_argument("--json", action="store_true", help="print JSON")
    fa.set_defaults(func=_faults)

    ca = sub.add_parser("causes", help="list every cause the diagnosis can name, and how it is recognised")
    ca.add_argument("--json", action="store_true", help="print JSON")
    ca.add_argument("--markdown", action="store_true", help="print the table of causes of docs/diagnosis.md")
    ca.set_defaults(func=_causes)

    c = sub.add_parser("clean", help="remove what ended runs left behind (by their run records, never by name pattern); kept labs are listed and left up")
    c.add_argument("tags", nargs="*", metavar="TAG", help="remove these runs' objects only (a kept lab, or a crashed run; see netcheck clean --dry-run --all)")
    c.add_argument("--kept", action="store_true", help="also remove the labs kept with --netcheck-keep")
    c.add_argument("--all", action="store_true", help="remove everything: kept labs and the labs of runs that are still alive too (after a warning)")
    c.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    c.set_defaults(func=_clean)

    v = sub.add_parser("validate", help="check topology spec files without touching the kernel")
    v.add_argument("files", nargs="+", metavar="FILE|NAME")
    v.add_argument("--json", action="store_true", help="print JSON: one object per file, with ok and the error")
    v.set_defaults(func=_validate)

    r = sub.add_parser("review", help="run a setup script in sandbox labs, name each command that fails with its cause, correct it, and show the correction works")
    r.add_argument("file", metavar="FILE", help="a spec with setup.mode = \"script\" and command = [\"sh\", \"SCRIPT\"]")
    r.add_argument("--out", metavar="FILE", help="write the corrected script here")
    r.add_argument("--json", action="store_true", help="print JSON: each correction, whether it was verified, and what is left")
    r.set_defaults(func=_review)

    d = sub.add_parser("doctor", help="inspect a live lab or named namespaces and print what is wrong, without sending traffic")
    d.add_argument("targets", nargs="*", metavar="TAG|NETNS", help="a lab tag (see netcheck clean --dry-run --all), or namespace names under /run/netns (CONTAINER=NETNS with --topology)")
    d.add_argument("--host-netns", metavar="NETNS", help="the namespace that plays the container host (default: the lab's host, or this namespace)")
    d.add_argument("--probe", action="store_true", help="also send probes (traffic stays inside the named namespaces)")
    d.add_argument("--topology", metavar="FILE|NAME", help="check against this spec's intent (its sysctls, forwarding, NAT, published ports); "
                   "named namespaces are matched to its containers by name (or by their netns)")
    d.add_argument("--json", action="store_true", help="print JSON: the facts, the findings and the probes")
    d.set_defaults(func=_doctor)

    g = sub.add_parser("diagnose", help="print the diagnosis of a recorded failure (NETCHECK_RECORD=DIR saves one per failed probe), without root")
    g.add_argument("--replay", metavar="FILE", required=True, help="a recording (DIR/*.json.gz): what the diagnosis read of the lab and the kernel")
    g.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    g.set_defaults(func=_diagnose)

    f = sub.add_parser("diff", help="list the checks that changed between two results files (reports/*.json)")
    f.add_argument("old")
    f.add_argument("new")
    f.add_argument("--json", action="store_true", help="print JSON: the run facts that differ and each changed check")
    f.set_defaults(func=_diff)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        try:
            status = int(args.func(args))
        except PermissionError as exc:
            print(f"error: {exc} (run as root, e.g. sudo .venv/bin/netcheck ...)", file=sys.stderr)
            status = 2
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (netcheck faults | head -1). As the Python docs advise (signal,
        # "Note on SIGPIPE"): point stdout at devnull, so the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
