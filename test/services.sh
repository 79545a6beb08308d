# test/services.sh: sourced by demo/run.sh and bench/lib.sh.
# start NAME CMD...: runs a Node service (double, relay, S3 server) in the
# background with its output in $work/NAME.out and .log, adds its pid to
# pids[], and sets $port from the "LISTENING <port>" line it prints.  If it
# does not start, prints why (and calls start_failed, if defined) and exits.
start() {
    local name=$1; shift
    : >"$work/$name.out"
    "$@" >"$work/$name.out" 2>"$work/$name.log" &
    local pid=$!
    pids+=("$pid")
    port=
    for _ in $(seq 100); do
        port=$(sed -n 's/^LISTENING \([0-9][0-9]*\)$/\1/p' "$work/$name.out")
        [ -n "$port" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name did not start" >&2
    tail -n 20 "$work/$name.log" >&2
    if declare -F start_failed >/dev/null; then start_failed; fi
    exit 1
}
