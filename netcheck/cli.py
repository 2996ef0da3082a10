"""The ``netcheck`` command: clean, validate, doctor, diff."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _clean(args: argparse.Namespace) -> int:
    from netcheck.ledger import clean, list_records

    live = [r for r in list_records() if r.alive]
    if args.all and live and not args.dry_run:
        tags = ", ".join(f"{r.tag} (pid {r.header.get('pid', '?')})" for r in live)
        print(f"warning: --all also removes the labs of runs that are still alive: {tags}", file=sys.stderr)
    count, errors = clean(include_live=args.all, dry_run=args.dry_run)
    if count == 0:
        note = f" ({len(live)} live run(s) left alone; --all includes them)" if live else ""
        print(f"nothing to clean{note}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def _validate(args: argparse.Namespace) -> int:
    from netcheck.spec import SpecError, resolve

    status = 0
    for ref in args.files:
        try:
            t = resolve(ref)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"ok: {ref} (topology {t.name}: {len(t.containers)} containers)")
    return status


def _doctor(args: argparse.Namespace) -> int:
    from netcheck.diagnose.doctor import run_doctor

    return int(run_doctor(args))


def _diff(args: argparse.Namespace) -> int:
    from netcheck.report.diff import run_diff

    return int(run_diff(args.old, args.new))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netcheck", description="Test and diagnose single-host container networking.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("clean", help="remove what crashed or killed runs left behind (by their run records, never by name pattern)")
    c.add_argument("--all", action="store_true", help="also remove the labs of runs that are still alive (after a warning)")
    c.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    c.set_defaults(func=_clean)

    v = sub.add_parser("validate", help="check topology spec files without touching the kernel")
    v.add_argument("files", nargs="+", metavar="FILE|NAME")
    v.set_defaults(func=_validate)

    d = sub.add_parser("doctor", help="inspect a live lab or named namespaces and print what is wrong, without sending traffic")
    d.add_argument("targets", nargs="*", metavar="TAG|NETNS", help="a lab tag (see netcheck clean --dry-run --all), or namespace names under /run/netns")
    d.add_argument("--host-netns", metavar="NETNS", help="the namespace that plays the container host (default: the lab's host, or this namespace)")
    d.add_argument("--probe", action="store_true", help="also send probes (traffic stays inside the named namespaces)")
    d.set_defaults(func=_doctor)

    f = sub.add_parser("diff", help="list the checks that changed between two results files (reports/*.json)")
    f.add_argument("old")
    f.add_argument("new")
    f.set_defaults(func=_diff)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except PermissionError as exc:
        print(f"error: {exc} (run as root, e.g. sudo .venv/bin/netcheck ...)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
