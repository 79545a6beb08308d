#!/usr/bin/env bash
# test/run-all.sh: runs every qes_sign test suite from a clean checkout:
# setup (packages, build, install), then pg_regress and the isolation specs
# against temporary clusters, run as the unprivileged user postgres
# (PostgreSQL refuses root), and the Skribble double's self-test.  Ends with one line "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/test/setup.sh" || exit 1

scratch=$(mktemp -d /tmp/qes_sign_tests.XXXXXX)
chown postgres "$scratch"
trap 'rm -rf "$scratch"' EXIT
pgxs=$(dirname "$(pg_config --pgxs)")/../..
bindir=$(pg_config --bindir)
as_pg() { (cd "$scratch" && runuser -u postgres -- "$@"); }

passed=0; failed=0
count() {   # count pg_regress result lines in the log of one suite
    local log=$1
    passed=$((passed + $(grep -cE '^(ok|test|     |permutation).* ok ' "$log" || true)))
    failed=$((failed + $(grep -cE 'FAILED|failed \(ignored\)' "$log" || true)))
}

echo "== pg_regress"
as_pg "$pgxs/src/test/regress/pg_regress" --bindir="$bindir" \
    --inputdir="$repo" --outputdir="$scratch/regress" \
    --temp-instance="$scratch/regress/tmp_check" \
    --temp-config="$repo/test/qes_sign.conf" \
    --dbname=contrib_regression \
    $(make -s -C "$repo" print-REGRESS) 2>&1 | tee "$scratch/regress.log"
count "$scratch/regress.log"
[ -f "$scratch/regress/regression.diffs" ] && cat "$scratch/regress/regression.diffs"

echo "== isolation"
as_pg "$pgxs/src/test/isolation/pg_isolation_regress" --bindir="$bindir" \
    --inputdir="$repo/test/isolation" --outputdir="$scratch/isolation" \
    --temp-instance="$scratch/isolation/tmp_check" \
    --temp-config="$repo/test/qes_sign.conf" \
    --dbname=isolation_regression \
    $(make -s -C "$repo" print-ISOLATION) 2>&1 | tee "$scratch/isolation.log"
count "$scratch/isolation.log"
[ -f "$scratch/isolation/regression.diffs" ] && cat "$scratch/isolation/regression.diffs"

echo "== Skribble double self-test"
(cd "$repo" && node --test test/skribble_double/selftest.js) 2>&1 | tee "$scratch/double.log" | grep -E '^# (tests|pass|fail)|^not ok'
passed=$((passed + $(sed -n 's/^# pass //p' "$scratch/double.log" | tail -1)))
failed=$((failed + $(sed -n 's/^# fail //p' "$scratch/double.log" | tail -1)))

echo
echo "qes_sign: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
