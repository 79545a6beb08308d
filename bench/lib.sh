# bench/lib.sh: what the benchmarks share, sourced by them.
#   bench_init NAME   a temporary directory owned by postgres, cleaned up
#                     (children, cluster, files) on exit; pg(); start()
#   bench_cluster [CONF...]   initdb + start a cluster in it (q() runs SQL)
#   bench_stack [CONF...]     the Skribble double, the callback relay and the
#                     S3 server, then a cluster whose worker uses them
# CONF lines are appended to postgresql.conf (a later line wins).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench_init() {
    bench_name=$1
    flock /tmp/qes_build.lock bash "$repo/test/setup.sh" >/dev/null
    bindir=$(pg_config --bindir)
    work=$(mktemp -d "/tmp/qes_bench_$bench_name.XXXXXX")
    chown postgres "$work"
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

pg() { runuser -u postgres -- "$@"; }
q() { psql -X -At -h "$work" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pg "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$rc"
}

. "$repo/test/services.sh"    # start NAME CMD...

bench_cluster() {
    pg "$bindir/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    {
        echo "listen_addresses = ''"
        echo "port = 5432"
        echo "unix_socket_directories = '$work'"
        echo "fsync = off"
        echo "shared_preload_libraries = 'qes_sign'"
        printf '%s\n' "$@"
    } >> "$work/data/postgresql.conf"
    pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null
    q "CREATE EXTENSION qes_sign" >/dev/null
}

bench_stack() {
    start double node "$repo/test/skribble_double/server.js" --port 0 --callback-retry-interval 200
    double_port=$port
    start relay node "$repo/test/relay/relay.js" --port 0 \
        --db "host=$work port=5432 dbname=postgres user=postgres"
    relay_port=$port
    mkdir "$work/s3"
    start s3 node "$repo/test/s3/server.js" --port 0 --dir "$work/s3" --bucket archive
    s3_port=$port
    bench_cluster \
        "qes_sign.database = 'postgres'" \
        "qes_sign.skribble_url = 'http://127.0.0.1:$double_port/v2'" \
        "qes_sign.skribble_username = 'api_demo_qes_sign'" \
        "qes_sign.skribble_api_key = 'test-key'" \
        "qes_sign.callback_base_url = 'http://127.0.0.1:$relay_port/qes/callback'" \
        "qes_sign.callback_secret = 'bench-$bench_name-callback-secret-0123456789abcdef'" \
        "qes_sign.s3_endpoint = 'http://127.0.0.1:$s3_port'" \
        "qes_sign.s3_bucket = 'archive'" \
        "qes_sign.s3_access_key = 'qes-test-access'" \
        "qes_sign.s3_secret_key = 'qes-test-secret'" \
        "qes_sign.reconcile_interval = '1h'" \
        "$@"
}

# server CPU (user + system) of the cluster's backends that have exited, in
# clock ticks: the postmaster reaps them, so their time adds up in its
# cutime + cstime (robust against other load on the machine, unlike tps)
reaped() { awk '{print $16 + $17}' "/proc/$(head -1 "$work/data/postmaster.pid")/stat"; }

# pgbench_run SCRIPT CLIENTS [PGBENCH OPTIONS...]: runs $work/SCRIPT.sql for
# $secs seconds; prints tps (without the initial connection time) and the
# server CPU per transaction in microseconds
pgbench_run() {
    local script=$1 c=$2 t0 t1
    shift 2
    t0=$(reaped)
    pg "$bindir/pgbench" -n "$@" -h "$work" -U postgres -c "$c" -j "$c" -T "$secs" \
        -f "$work/$script.sql" postgres 2>"$work/pgbench.err" > "$work/pgbench.out" || {
        cat "$work/pgbench.err" >&2; exit 1; }
    if grep -q 'failed: [1-9]' "$work/pgbench.out"; then cat "$work/pgbench.out" >&2; exit 1; fi
    sleep 0.5; t1=$(reaped)
    awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '/^tps = / {tps = $3} /actually processed/ {n = $NF}
        END {print tps, t / hz * 1e6 / n}' "$work/pgbench.out"
}
