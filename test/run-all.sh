#!/usr/bin/env bash
# test/run-all.sh: runs every qes_sign test suite from a clean checkout:
# setup (packages, build, install), then pg_regress and the isolation specs
# against temporary clusters, run as the unprivileged user postgres
# (PostgreSQL refuses root), the self-tests of the Skribble and Yousign
# doubles, the TAP tests of the background worker (test/t, prove), the
# reliability suites at reduced scale and the libFuzzer harness
# (test/reliability), and the benchmarks at a tiny size.  Ends with one line "N passed, N failed".
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

# suite NAME TOOL INPUTDIR DBNAME TESTS...: one pg_regress-style suite
suite() {
    local name=$1 tool=$2 inputdir=$3 db=$4; shift 4
    echo "== $name"
    as_pg "$pgxs/src/test/$tool" --bindir="$bindir" \
        --inputdir="$inputdir" --outputdir="$scratch/$name" \
        --temp-instance="$scratch/$name/tmp_check" \
        --temp-config="$repo/test/qes_sign.conf" --dbname="$db" \
        "$@" 2>&1 | tee "$scratch/$name.log"
    count "$scratch/$name.log"
    [ -f "$scratch/$name/regression.diffs" ] && cat "$scratch/$name/regression.diffs"
    return 0
}

suite regress regress/pg_regress "$repo" contrib_regression $(make -s -C "$repo" print-REGRESS)
suite isolation isolation/pg_isolation_regress "$repo/test/isolation" isolation_regression \
    $(make -s -C "$repo" print-ISOLATION)

echo "== Skribble double self-test"
(cd "$repo" && node --test test/skribble_double/selftest.js) 2>&1 | tee "$scratch/double.log" | grep -E '^# (tests|pass|fail)|^not ok'
passed=$((passed + $(sed -n 's/^# pass //p' "$scratch/double.log" | tail -1)))
failed=$((failed + $(sed -n 's/^# fail //p' "$scratch/double.log" | tail -1)))

echo "== Yousign double self-test (API v3, the second provider)"
(cd "$repo" && node --test test/yousign_double/selftest.js) 2>&1 | tee "$scratch/ydouble.log" | grep -E '^# (tests|pass|fail)|^not ok'
passed=$((passed + $(sed -n 's/^# pass //p' "$scratch/ydouble.log" | tail -1)))
failed=$((failed + $(sed -n 's/^# fail //p' "$scratch/ydouble.log" | tail -1)))

echo "== TAP: the background worker against the Skribble and Yousign doubles (test/t)"
tap=$scratch/tap
mkdir -p "$tap" && chown postgres "$tap"
(cd "$tap" && runuser -u postgres -- env TESTDIR="$tap" PATH="$bindir:$PATH" \
    PG_REGRESS="$pgxs/src/test/regress/pg_regress" PG_TEST_TIMEOUT_DEFAULT=60 \
    prove -v --timer -I "$pgxs/src/test/perl" -I "$repo/test/perl" "$repo"/test/t/*.pl) \
    >"$scratch/tap.log" 2>&1
tap_rc=$?

# tap_results LOG RC LOGDIR: prints the results of a prove log (without
# passing subtests and psql chatter) and the logs of failed scripts, and
# adds to the totals; a script that died without a failed test counts once
tap_results() {
    local log=$1 rc=$2 logdir=$3 ok bad f l
    grep -vE "^ +ok |^ *# +'|^ *# (issuing|results) |QUERY_SEPARATOR|Asynchronous notification|# connect output:|^ *# [{}]|^ *#? *$|^ +1\.\.[0-9]+$" "$log"
    ok=$(grep -cE '^ok [0-9]+' "$log" || true)
    bad=$(grep -cE '^not ok [0-9]+' "$log" || true)
    bad=$((bad + $(grep -cE '\(Wstat: [1-9].* Failed: 0\)' "$log" || true)))
    [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
    if [ "$bad" -gt 0 ]; then   # the server and helper logs of the failed scripts
        for f in $(sed -nE 's#^.*/([0-9a-z_]+)\.pl +\(Wstat.*#\1#p' "$log"); do
            echo "---- tail of the logs of $f"
            for l in "$logdir"/tmp_check/log/"${f}"_*.log; do   # servers, double, relays
                echo "-- $(basename "$l")"
                grep -E 'ERROR|FATAL|PANIC|WARNING|terminated|rror|-> [45][0-9][0-9]' "$l" | tail -n 20
            done
        done
    fi
    passed=$((passed + ok)); failed=$((failed + bad))
}
tap_results "$scratch/tap.log" "$tap_rc" "$tap"

echo "== reliability suites at reduced scale (test/reliability; full scale: make reliability)"
rel=$scratch/reliability
QES_RELIABILITY_DIR=$rel bash "$repo/test/reliability/run.sh" > "$scratch/reliability.out" 2>&1
rel_rc=$?
tap_results "$rel/prove.log" "$rel_rc" "$rel"
grep -E '^COUNTS' "$scratch/reliability.out"
if bash "$repo/test/reliability/fuzz/run.sh" > "$scratch/fuzz.log" 2>&1; then
    passed=$((passed + 1)); echo "ok libFuzzer harness: $(grep '^COUNTS' "$scratch/fuzz.log")"
else
    failed=$((failed + 1)); echo "FAILED libFuzzer harness"; tail -30 "$scratch/fuzz.log"
fi

echo "== Debian package (test/package/run.sh: build, apt-get install, the suites on its files)"
if bash "$repo/test/package/run.sh" > "$scratch/package.log" 2>&1; then :; fi
grep -E '^(ok|FAILED|not ok)|^package:' "$scratch/package.log" | tail -5
pkg=$(sed -n 's/^package: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$scratch/package.log" | tail -1)
if [ -n "$pkg" ]; then
    passed=$((passed + ${pkg% *})); failed=$((failed + ${pkg#* }))
else
    failed=$((failed + 1)); echo "FAILED test/package/run.sh"; tail -30 "$scratch/package.log"
fi
# the package was removed again: this tree's build goes back in place
make -s -C "$repo" install >/dev/null

echo "== bench/ at a tiny size (the scripts still run; figures mean nothing here)"
if bash "$repo/bench/run-all.sh" --tiny > "$scratch/bench.log" 2>&1; then
    passed=$((passed + 1)); echo "ok bench/run-all.sh --tiny"
else
    failed=$((failed + 1)); echo "FAILED bench/run-all.sh --tiny"; tail -30 "$scratch/bench.log"
fi

echo
echo "qes_sign: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
