#!/usr/bin/env bash
# demo/run.sh [--provider skribble|yousign]: the article's scenario, end to
# end, through the real worker.
# Installs and builds what is missing (test/setup.sh), then starts, in a
# temporary directory: the trust service's test double with its clock at
# Thursday, 19 March 2026, 09:15 (Berlin): Skribble's (the default) or, with
# --provider yousign, Yousign's (API v3, rate limits off, its webhooks signed
# with a fresh secret); the callback relay (the portal's endpoint for
# Skribble's callbacks and Yousign's webhooks); the local S3 server
# (test/s3/server.js, s3rver checking SigV4) with the archive bucket; a
# PostgreSQL cluster with qes_sign preloaded and its worker pointed at all
# three.  demo/demo.js plays the portal and the three signers,
# prints what the portal sees up to the archived, downloaded contract, and
# exits 0 only at archiviert with an intact audit chain and a verified
# download.  Every process and the directory are removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

provider=skribble
while [ $# -gt 0 ]; do
    case $1 in
        --provider) [ $# -ge 2 ] || { echo "usage: $0 [--provider skribble|yousign]" >&2; exit 2; }
                    provider=$2; shift 2 ;;
        --provider=*) provider=${1#--provider=}; shift ;;
        *) echo "usage: $0 [--provider skribble|yousign]" >&2; exit 2 ;;
    esac
done
case $provider in
    skribble|yousign) ;;
    *) echo "demo: unknown provider $provider (skribble or yousign)" >&2; exit 2 ;;
esac

# packages, npm ci in test/ (the relay's pg), build and install; under a
# lock, so a demo and a build never race
flock /tmp/qes_build.lock bash "$repo/test/setup.sh"
export PATH="$(pg_config --bindir):$PATH"      # initdb, pg_ctl (Debian keeps them off the PATH)

work=$(mktemp -d /tmp/qes_sign_demo.XXXXXX)
chown postgres "$work"
pg() { runuser -u postgres -- "$@"; }
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -f "$work/data/postmaster.pid" ]; then
        pg pg_ctl -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# logs prints the tail of every log, for a run that failed
logs() {
    for f in server.log double.log relay.log s3.log; do
        [ -s "$work/$f" ] || continue
        echo "--- $f (last 30 lines)" >&2
        tail -n 30 "$work/$f" >&2
    done
}

. "$here/../test/services.sh"    # start NAME CMD...
start_failed() { logs; }

# the double's clock replays the article's morning, the database runs on
# today's
if [ "$provider" = skribble ]; then
    # Skribble's deletion date, 5 days after creation, is counted from today
    # so that it lies ahead of the database's clock, as it would
    deletion_days=$(( ($(date +%s) - $(date -d 2026-03-19 +%s)) / 86400 + 5 ))
    start double node "$repo/test/skribble_double/server.js" --port 0 --verbose \
        --clock 2026-03-19T08:15:00Z --callback-retry-interval 500 --deletion-days "$deletion_days"
    provider_conf="qes_sign.skribble_url = 'http://127.0.0.1:$port/v2'
qes_sign.skribble_username = 'api_demo_qes_sign'
qes_sign.skribble_api_key = 'test-key'"
    double_name=Skribble-Double
else
    # Yousign: an API key, no login; webhooks signed with the subscription's
    # secret (demo.js points the subscription at the relay); no rate limits
    # for the demo (Yousign allows 60 calls a minute)
    webhook_secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    start double node "$repo/test/yousign_double/server.js" --port 0 --verbose \
        --clock 2026-03-19T08:15:00Z --rate-per-minute 0 --rate-per-hour 0 --webhook-secret "$webhook_secret"
    provider_conf="qes_sign.yousign_url = 'http://127.0.0.1:$port/v3'
qes_sign.yousign_api_key = 'test-key'
qes_sign.yousign_webhook_secrets = '$webhook_secret'"
    double_name=Yousign-Double
fi
double_port=$port
pg_port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
start relay node "$repo/test/relay/relay.js" --port 0 --verbose \
    --db "host=127.0.0.1 port=$pg_port dbname=postgres user=hv_portal"
relay_port=$port
s3_access_key=qes-demo-access
s3_secret_key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir "$work/s3"
start s3 node "$repo/test/s3/server.js" --port 0 --dir "$work/s3" --bucket archive \
    --access-key "$s3_access_key" --secret-key "$s3_secret_key" --verbose
s3_port=$port

pg initdb -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$work'
shared_preload_libraries = 'qes_sign'
qes_sign.database = 'postgres'
$provider_conf
qes_sign.callback_base_url = 'http://127.0.0.1:$relay_port/qes/callback'
qes_sign.callback_secret = '$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')'
qes_sign.s3_endpoint = 'http://127.0.0.1:$s3_port'
qes_sign.s3_bucket = 'archive'
qes_sign.s3_access_key = '$s3_access_key'
qes_sign.s3_secret_key = '$s3_secret_key'
CONF
pg pg_ctl -D "$work/data" -l "$work/server.log" -w start >/dev/null
node "$here/make_lease_pdf.js" --provider "$provider" > "$work/lease.pdf"

export PGHOST=$work PGPORT=$pg_port PGDATABASE=postgres
psql -X -q -v ON_ERROR_STOP=1 -U postgres \
     -c "CREATE EXTENSION qes_sign" \
     -c "CREATE ROLE hv_portal LOGIN IN ROLE qes_sign_app" \
     -c "SELECT qes_sign.grant_tenant('hv_portal', 'hv-eppendorf')"
echo "demo: PostgreSQL on port $pg_port, $double_name on $double_port (Uhr 2026-03-19 09:15 MEZ), Relay on $relay_port, S3 on $s3_port (Bucket archive)"

if ! DEMO_PROVIDER=$provider DEMO_RELAY="http://127.0.0.1:$relay_port" DEMO_DOUBLE="http://127.0.0.1:$double_port" DEMO_S3="http://127.0.0.1:$s3_port" DEMO_PDF="$work/lease.pdf" node "$here/demo.js"; then
    logs
    exit 1
fi
