#!/usr/bin/env bash
# test/reliability/fuzz/run.sh: builds the libFuzzer harness over the real
# src/callbacks.c, src/webhook.c and src/crypto.c (callbacks_fuzz.c) with
# clang-14 -fsanitize=fuzzer,address,undefined and runs it for a fixed
# time: 60 s with QES_SCALE=full, else 10 s (or FUZZ_SECONDS).  Crashing
# inputs are kept in test/reliability/fuzz/corpus/ (crash-*, leak-*,
# timeout-*); the growing corpus in a scratch dir.  Ends with a line
# "COUNTS fuzz: ..."; exit status 0 only if nothing crashed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
secs=${FUZZ_SECONDS:-$([ "${QES_SCALE:-}" = full ] && echo 60 || echo 10)}
work=$(mktemp -d /tmp/qes_fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
inc=$(pg_config --includedir-server)
libdir=$(pg_config --libdir)
pkglib=$(pg_config --pkglibdir)
cc=${CC:-clang-14}

"$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I "$inc" -I "$repo/src" -Wno-unused-function -Wno-ignored-attributes \
    "$here/callbacks_fuzz.c" "$here/never.c" -o "$work/callbacks_fuzz" \
    -L "$pkglib" -L "$libdir" -lpgcommon -lpgport -lcrypto -lm 2>"$work/build.log" \
  || { grep -E "error|undefined" "$work/build.log" | head -40; echo "COUNTS fuzz: build failed"; exit 2; }

# seeds: real callback URLs and webhook headers (and the corpus kept so far)
mkdir -p "$work/corpus" "$here/corpus"
cp "$here"/seeds/* "$work/corpus/" 2>/dev/null || true
cp "$here"/corpus/* "$work/corpus/" 2>/dev/null || true

start=$(date +%s)
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$work/callbacks_fuzz" -max_total_time="$secs" -max_len=4096 \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$here/corpus/" -print_final_stats=1 \
    "$work/corpus" >"$work/fuzz.log" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
grep -E '^#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|==[0-9]+==|abort|called|SQLSTATE|uuid_in' "$work/fuzz.log" | head -30
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log")
cov=$(grep -oE 'cov: [0-9]+' "$work/fuzz.log" | tail -1 | grep -oE '[0-9]+')
crashes=$(ls "$here/corpus" 2>/dev/null | grep -cE '^(crash|leak|timeout|oom)-' || true)
echo "COUNTS fuzz: seconds=$elapsed executions=${execs:-0} coverage_edges=${cov:-0} crash_inputs_kept=$crashes exit=$rc"
[ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ]
