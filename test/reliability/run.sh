#!/usr/bin/env bash
# test/reliability/run.sh [script...]: runs the reliability suites (all
# r*.pl here, or the ones named) with prove as the user postgres, like
# test/run-all.sh runs test/t.  QES_SCALE=full runs the issue's numbers;
# otherwise the reduced scale (about 1/10).  Ends with the COUNTS lines.
# r01, r02 and r04 run for both providers: r0*_yousign.pl are the same
# scripts with QES_PROVIDER=yousign (README.md).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
pgxs=$(dirname "$(pg_config --pgxs)")/../..
bindir=$(pg_config --bindir)
scratch=${QES_RELIABILITY_DIR:-$(mktemp -d /tmp/qes_reliability.XXXXXX)}
mkdir -p "$scratch" && chown postgres "$scratch"
if [ $# -gt 0 ]; then scripts=("$@"); else scripts=("$here"/r*.pl); fi
for i in "${!scripts[@]}"; do
    case ${scripts[$i]} in /*) ;; *) [ -f "$here/${scripts[$i]}" ] && scripts[$i]="$here/${scripts[$i]}" ;; esac
done
echo "== reliability suites, scale ${QES_SCALE:-reduced}, logs in $scratch"
(cd "$scratch" && runuser -u postgres -- env TESTDIR="$scratch" PATH="$bindir:$PATH" \
    PG_REGRESS="$pgxs/src/test/regress/pg_regress" PG_TEST_TIMEOUT_DEFAULT=120 \
    QES_SCALE="${QES_SCALE:-reduced}" ${QES_SEED:+QES_SEED=$QES_SEED} \
    prove -v --timer -I "$pgxs/src/test/perl" -I "$repo/test/perl" -I "$here" "${scripts[@]}") \
    >"$scratch/prove.log" 2>&1
rc=$?
grep -vE "^ +ok |^ *# +'|^ *# (issuing|results) |QUERY_SEPARATOR|# connect output:|^ *#? *$" "$scratch/prove.log" \
    | grep -v '^ *# COUNTS'
echo
echo "== COUNTS"
grep -hE '^ *# COUNTS' "$scratch/prove.log" | sed 's/^ *# //'
echo "prove exit code $rc; logs in $scratch"
exit $rc
