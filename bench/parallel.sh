#!/usr/bin/env bash
# Soak test of parallel runs: `pytest -n 2 suites/` N times in a row (default 50), counting
# failures, name collisions and leftovers. Not part of CI (about 10 s a run); run it by hand:
#
#   sudo bench/parallel.sh [N] [extra pytest args...]
#
# Each run gets its own run directory (NETCHECK_RUN_DIR), so a leftover is attributable to
# it: after a run, its directory must be empty (every lab removed its record after its objects).
# A collision would show as a failed build ("File exists" / "already exists"); it is counted
# apart. The logs of failed runs are kept; the summary line is the result to note.
set -uo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

n=${1:-50}
shift || true
work=$(mktemp -d /tmp/netcheck-parallel.XXXXXX)
failed=0 collisions=0 leftovers=0 total=0
for i in $(seq 1 "$n"); do
    run_dir="$work/run-$i"
    log="$work/run-$i.log"
    start=$(date +%s%N)
    NETCHECK_RUN_DIR="$run_dir" .venv/bin/pytest -n 2 suites/ -q -p no:cacheprovider --netcheck-report none "$@" >"$log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    total=$((total + ms))
    status=ok
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        status="FAILED (exit $rc, log $log)"
        if grep -qE "^E .*(File exists|already exists|is taken)" "$log"; then
            collisions=$((collisions + 1))
            status="$status, name collision"
        fi
    fi
    left=$(find "$run_dir" -name '*.jsonl' 2>/dev/null | wc -l)
    if [ "$left" -ne 0 ]; then
        leftovers=$((leftovers + 1))
        status="$status, $left run record(s) left in $run_dir"
        NETCHECK_RUN_DIR="$run_dir" .venv/bin/netcheck clean --all >>"$log" 2>&1
    fi
    summary=$(grep -E "(passed|failed|error).* in [0-9.]+s" "$log" | tail -n 1)
    [ "$rc" -eq 0 ] && [ "$left" -eq 0 ] && rm -f "$log"
    printf 'run %3d/%d  %6d ms  %s  (%s)\n' "$i" "$n" "$ms" "$summary" "$status"
done
echo "parallel soak: $n x 'pytest -n 2 suites/': $failed failed, $collisions name collisions, $leftovers with leftovers; mean $((total / n)) ms a run"
[ "$failed" -eq 0 ] && [ "$leftovers" -eq 0 ] && rm -rf "$work"
[ "$failed" -eq 0 ] && [ "$leftovers" -eq 0 ]
