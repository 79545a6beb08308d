#!/usr/bin/env bash
# test/package/run.sh: builds the Debian package postgresql-15-qes-sign with
# Debian's PostgreSQL tooling (debian/, pg_buildext, dh --with pgxs_loop) from
# a temporary copy of the tree, checks its contents and dependencies,
# installs it with apt-get (dependencies resolved from Debian), runs
# pg_regress as the user postgres against the installed package's files
# and the isolation specs (temporary instances with test/qes_sign.conf, whose
# shared_preload_libraries loads the package's qes_sign.so), validates
# META.json (PGXN Meta Spec 1.0.0, test/package/check_meta.pl), then removes
# the package again.  Run as root.  Ends with "package: N passed, N failed"
# (pg_regress and isolation tests plus the package checks).
#
# The package installs into the same paths as the tree's `make install`: the
# files found there before are kept aside and put back after `dpkg -r` (or,
# if another `make install` replaced the package's files during the run, those
# newer files), so a `make install` works as before.  Nothing is written
# outside a temporary directory, apart from the package's own install.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
start=$SECONDS
pgver=15
pkg=postgresql-$pgver-qes-sign
pg_config=/usr/lib/postgresql/$pgver/bin/pg_config

[ "$(id -u)" -eq 0 ] || { echo "test/package/run.sh: run as root" >&2; exit 2; }

passed=0; failed=0
check() {   # check DESCRIPTION COMMAND...: one package check, counted
    local what=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $what"
    else failed=$((failed + 1)); echo "FAIL $what"; fi
}

echo "== build dependencies"
needed=(dpkg-dev debhelper postgresql-server-dev-all postgresql-server-dev-$pgver
        postgresql-$pgver libcurl4-openssl-dev libssl-dev make gcc git perl)
missing=()
for p in "${needed[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=120 \
        "${missing[@]}" >/dev/null
fi
check "build dependencies installed" bash -c "dpkg -s ${needed[*]} >/dev/null 2>&1"

work=$(mktemp -d /tmp/qes_sign_package.XXXXXX)
chmod 755 "$work"   # apt (user _apt) and postgres read from here
src=$work/src
mkdir "$src"

# restore: removes the package and puts back what was installed before (or
# what another make install put there during the run); runs once, also when
# the script is interrupted
restored=
restore() {
    [ -n "$restored" ] && return 0
    restored=1
    dpkg -s "$pkg" >/dev/null 2>&1 || return 0
    local f
    # files another make install replaced meanwhile are newer than the backup
    while read -r f; do
        mkdir -p "$work/backup$(dirname "$f")" && cp -a "$f" "$work/backup$f"
    done < <(dpkg -V "$pkg" 2>/dev/null | awk '$1 ~ /5/ { print $NF }' | grep -v '^/usr/share/doc/')
    # dpkg -r, through apt-get for its wait on the dpkg lock
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -o DPkg::Lock::Timeout=120 "$pkg" \
        >"$work/remove.log" 2>&1 || cat "$work/remove.log"
    if [ -d "$work/backup" ]; then
        (cd "$work/backup" && find . -type f) | while read -r f; do
            mkdir -p "$(dirname "${f#.}")" && cp -a --remove-destination "$work/backup/$f" "${f#.}"
        done
    fi
}
trap 'restore; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

echo "== META.json (PGXN Meta Spec 1.0.0)"
check "META.json is valid" perl "$repo/test/package/check_meta.pl" "$repo/META.json"

echo "== building the package from a copy of the tree"
# tracked and untracked files, without what .gitignore leaves out (objects,
# the built upgrade script, node_modules, test output)
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -xf - -C "$src"
else
    tar -C "$repo" --exclude=.git --exclude=node_modules --exclude='*.o' --exclude='*.so' \
        --exclude='*.bc' --exclude=tmp_check --exclude=tmp_check_iso --exclude=results \
        -cf - . | tar -xf - -C "$src"
fi
(cd "$src" && dpkg-checkbuilddeps) || true
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1
build_rc=$?
check "dpkg-buildpackage -us -uc -b" test "$build_rc" -eq 0
[ "$build_rc" -eq 0 ] || tail -40 "$work/build.log"
grep -E '^dh_pgxs_test: ' "$work/build.log"   # the suites are not run by the build
version=$(cd "$src" && dpkg-parsechangelog -S Version)
deb=$work/${pkg}_${version}_$(dpkg --print-architecture).deb
if ! [ -f "$deb" ]; then
    check "package file $(basename "$deb") built" false
    echo; echo "package: $passed passed, $failed failed"
    exit 1
fi
size=$(stat -c %s "$deb")
echo "package: $(basename "$deb"), $size bytes ($(( (size + 1023) / 1024 )) KiB)," \
     "installed size $(dpkg-deb -f "$deb" Installed-Size) KiB"

echo "== package contents and dependencies"
dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's#^\./#/#' | grep -v '/$' > "$work/files"
extdir=$($pg_config --sharedir)/extension
libdir=$($pg_config --pkglibdir)
# only the module (and its JIT bitcode), the control file, the install
# scripts and the docs: no test files (sql/<suite>.sql, expected/, test/)
check "the package holds only the module, control file, install scripts and docs" \
    bash -c "! grep -vE '^($libdir/qes_sign\.so|$libdir/bitcode/qes_sign(\.index\.bc|/src/[a-z_0-9]+\.bc)|$extdir/qes_sign(\.control|--[0-9.]+\.sql|--[0-9.]+--[0-9.]+\.sql)|/usr/share/doc/$pkg/.*)\$' '$work/files'"
check "no test files in the package" \
    bash -c "! grep -E '/(test|expected|results|specs)/|regress|isolation|\.spec\$|\.out\$|/extension/(install|actions|audit)\.sql' '$work/files'"
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for d in postgresql-$pgver libcurl4 libssl3; do
    check "depends on $d" bash -c "grep -qE '(^|, )$d( |,|\$)' <<<'$depends'"
done

# what a make install put there before: kept aside, put back by restore
while read -r f; do
    case $f in /usr/share/doc/*) continue ;; esac
    [ -e "$f" ] && mkdir -p "$work/backup$(dirname "$f")" && cp -a "$f" "$work/backup$f"
done < "$work/files"

echo "== apt-get install ./$(basename "$deb")"
(cd "$work" && DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=120 \
    "./$(basename "$deb")") >"$work/install.log" 2>&1
install_rc=$?
check "apt-get install -y ./$(basename "$deb")" test "$install_rc" -eq 0
[ "$install_rc" -eq 0 ] || tail -20 "$work/install.log"
check "$pkg $version is installed" \
    bash -c "[ \"\$(dpkg-query -W -f='\${Status} \${Version}' $pkg 2>/dev/null)\" = 'install ok installed $version' ]"
dpkg -L "$pkg" > "$work/listed" 2>/dev/null
for f in "$libdir/qes_sign.so" "$extdir/qes_sign.control" "$extdir/qes_sign--1.0.sql" \
         "$extdir/qes_sign--1.0--1.1.sql"; do
    check "dpkg -L lists $f" bash -c "grep -qxF '$f' '$work/listed' && [ -s '$f' ]"
done
check "the installed files are the package's (dpkg -V)" bash -c "[ -z \"\$(dpkg -V $pkg)\" ]"

# suite NAME TOOL INPUTDIR DBNAME TESTS...: one pg_regress-style suite, as
# test/run-all.sh runs it, counted the same way
scratch=$work/regress
mkdir -p "$scratch" && chown postgres "$scratch"
pgxs=$(dirname "$($pg_config --pgxs)")/../..
bindir=$($pg_config --bindir)
suite() {
    local name=$1 tool=$2 inputdir=$3 db=$4; shift 4
    echo "== $name against the installed package (user postgres, temporary instance)"
    (cd "$scratch" && runuser -u postgres -- "$pgxs/src/test/$tool" \
        --bindir="$bindir" --inputdir="$inputdir" --outputdir="$scratch/$name" \
        --temp-instance="$scratch/$name/tmp_check" --temp-config="$src/test/qes_sign.conf" \
        --dbname="$db" "$@") 2>&1 | tee "$work/$name.log"
    passed=$((passed + $(grep -cE '^(ok|test|     |permutation).* ok ' "$work/$name.log" || true)))
    failed=$((failed + $(grep -cE 'FAILED|failed \(ignored\)' "$work/$name.log" || true)))
    [ -f "$scratch/$name/regression.diffs" ] && head -200 "$scratch/$name/regression.diffs"
    return 0
}
# the test files come from the copy (sql/, expected/, test/isolation/); the
# server, its library and the extension's files are the installed ones
if [ "$install_rc" -eq 0 ]; then
    suite regress regress/pg_regress "$src" contrib_regression \
        $(make -s -C "$src" PG_CONFIG="$pg_config" print-REGRESS)
    suite isolation isolation/pg_isolation_regress "$src/test/isolation" isolation_regression \
        $(make -s -C "$src" PG_CONFIG="$pg_config" print-ISOLATION)
    # nobody's make install replaced the package's files while the suites ran
    check "the suites ran on the package's files (dpkg -V after the suites)" \
        bash -c "[ -z \"\$(dpkg -V $pkg)\" ]"
else   # the suites would run on whatever else is installed there
    check "suites not run: the package is not installed" false
fi

echo "== dpkg -r $pkg"
restore
check "$pkg removed" bash -c "! dpkg -s $pkg >/dev/null 2>&1"
if [ -d "$work/backup" ]; then
    echo "the files of the earlier make install are back in $libdir and $extdir"
else
    echo "no make install was there before: run 'make install' in the tree to install qes_sign again"
fi
echo "(to install this tree's build again: make -C $repo install)"
echo "time: $((SECONDS - start)) s"
echo
echo "package: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
