#!/usr/bin/env bash
# bench/run-all.sh [--tiny]: runs every benchmark of bench/ and prints one
# table of their result lines (each figure beside its baseline from the
# same run, and its bar).  --tiny runs each at a smoke-test size: the test
# suite does that, to keep the scripts working; the figures then mean
# nothing.  Exits non-zero only if a script fails to run.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scripts=(intake.sh create.sh worker_calls.sh latency.sh archive.sh memory.sh)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=0
# the worker's throughput at three queue depths (one, at a tiny size)
runs=()
for s in "${scripts[@]}"; do
    if [ "$s" = worker_calls.sh ] && [ "${1:-}" != --tiny ]; then
        runs+=("worker_calls.sh 1000" "worker_calls.sh 10000" "worker_calls.sh 100000")
    elif [ "$s" = memory.sh ] && [ "${1:-}" != --tiny ]; then
        runs+=("memory.sh 10000 100000")
    else
        runs+=("$s")
    fi
done
for r in "${runs[@]}"; do
    s=${r%% *}; args=${r#"$s"}
    [ -f "$here/$s" ] || continue
    echo "== bench/$r $*" >&2
    # shellcheck disable=SC2086
    if ! bash "$here/$s" "$@" $args > "$out.$s" 2>&1; then
        echo "bench/$s failed:" >&2
        tail -20 "$out.$s" >&2
        failed=$((failed + 1))
    fi
    # result lines are "<name>: <figure>"
    grep -E 'bar|baseline|ceiling|of which|^after +[0-9]+ lifecycles' "$out.$s" | sed "s|^|$s: |" >> "$out" || true
    rm -f "$out.$s"
done
echo
echo "qes_sign benchmarks on $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GB, $(date -u +%Y-%m-%d)"
cat "$out"
exit $((failed > 0))
