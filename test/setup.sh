#!/usr/bin/env bash
# test/setup.sh: makes a fresh Debian 12 machine ready for qes_sign: installs
# the Debian packages it needs (only those missing), then builds and installs
# the extension.  Run as root; used by the demo and by the test runner.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

packages=(postgresql-15 postgresql-contrib postgresql-server-dev-15 libcurl4-openssl-dev
          libssl-dev perl libipc-run-perl make gcc nodejs npm
          python3-boto3 wrk clang-14 libclang-rt-14-dev pgbouncer prometheus-postgres-exporter
          patroni etcd-server)
# boto3: the archive tests' independent S3 client; wrk: bench/; clang: the
# libFuzzer harness (test/reliability/fuzz); pgbouncer and the exporter: test/t/012,
# 013; patroni and etcd: test/reliability/r08_patroni.pl
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Node comes with the machine; take Debian's only if there is none at all
if command -v node >/dev/null 2>&1; then
    missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]}"
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node packages of the tests (the callback relay's PostgreSQL client, the S3
# server s3rver), once per lock file
if [ ! "$repo/test/node_modules/.package-lock.json" -nt "$repo/test/package-lock.json" ]; then
    (cd "$repo/test" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "setup: npm packages of test/ installed"
fi

make -s -C "$repo" >/dev/null
make -s -C "$repo" install >/dev/null
echo "setup: qes_sign built and installed into $(pg_config --pkglibdir)"
