#!/bin/sh
# Builds the Debian packages (debian/) and the RPMs (packaging/rpm/dsa.spec) of this tree, runs
# lintian and rpmlint on them and says where they are: build-pkg/deb/ and build-pkg/rpm/.
# Installs the build tools that are missing (apt-get, as scripts/install-deps.sh does). The
# packages are built from a copy of the tree's files (tracked and untracked-but-not-ignored:
# no build folders, node_modules or other ignored leftovers) in build-pkg/src/, so nothing is
# written next to or into the tree itself. Run it again and it does the same again.
#   --no-rpm   only the .debs        --no-lint   skip lintian and rpmlint
# Exit status: 0 packages built and lint-clean (lintian: no error or warning), 1 otherwise.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build-pkg
rpm=1
lint=1
for a in "$@"; do
        case $a in
        --no-rpm) rpm=0 ;;
        --no-lint) lint=0 ;;
        -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "package.sh: unknown option '$a'" >&2; exit 2 ;;
        esac
done

say() { echo "package: $*"; }
die() { echo "package: $*" >&2; exit 1; }
# run LOG CMD...: runs CMD quietly into LOG; on failure shows the end of LOG.
run() {
        log=$1
        shift
        if ! "$@" >"$log" 2>&1; then
                tail -n 40 "$log" >&2
                die "failed: $* (whole log: $log)"
        fi
}

# --- tools
"$root/scripts/install-deps.sh"
tools="debhelper dpkg-dev fakeroot lintian"
[ $rpm -eq 0 ] || tools="$tools rpm rpmlint"
missing=""
for p in $tools; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
        say "installing$missing"
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

version=$(cd "$root" && dpkg-parsechangelog -S Version)
upstream=${version%-*}
src=$out/src
tree=$src/dsa-$upstream

# --- the source: this tree's files, nothing ignored
rm -rf "$src" "$out/deb" "$out/rpm" "$out/rpm-build"
mkdir -p "$tree" "$out/deb" "$out/rpm"
if [ -d "$root/.git" ] && command -v git >/dev/null 2>&1; then
        (cd "$root" && git ls-files -z -c -o --exclude-standard) |
                (cd "$root" && tar --null --no-recursion --ignore-failed-read -T - -cf - 2>/dev/null) |
                tar -xf - -C "$tree"
else
        (cd "$root" && tar --exclude='./build*' --exclude=./obj-* --exclude=node_modules \
                --exclude=./.git --exclude=__pycache__ -cf - .) | tar -xf - -C "$tree"
fi
[ -f "$tree/debian/control" ] || die "no debian/ in $root"

# --- .deb: dpkg-buildpackage writes next to the tree, in build-pkg/src/
jobs=""
case ${DEB_BUILD_OPTIONS:-} in *parallel=*) ;; *) jobs="-J$(nproc)" ;; esac
say "building .debs (log: $out/deb/build.log)"
start=$(date +%s)
(cd "$tree" && run "$out/deb/build.log" dpkg-buildpackage -b -us -uc $jobs)
mv "$src"/*.deb "$src"/*.changes "$src"/*.buildinfo "$out/deb/"
say ".debs built in $(($(date +%s) - start)) s"

# --- RPMs
if [ $rpm -eq 1 ]; then
        rb=$out/rpm-build
        mkdir -p "$rb/SOURCES"
        (cd "$src" && tar --exclude="dsa-$upstream/debian" -czf "$rb/SOURCES/dsa-$upstream.tar.gz" "dsa-$upstream")
        cp "$root/packaging/dsad.sysusers" "$root/packaging/rpm/dsa.spec" \
                "$root/packaging/rpm/dsa.rpmlintrc" "$rb/SOURCES/"
        say "building RPMs (log: $out/rpm/build.log)"
        start=$(date +%s)
        run "$out/rpm/build.log" rpmbuild -bb --nodeps --define "_topdir $rb" "$root/packaging/rpm/dsa.spec"
        find "$rb/RPMS" -name '*.rpm' -exec mv {} "$out/rpm/" \;
        say "RPMs built in $(($(date +%s) - start)) s"
fi

# --- lint
status=0
if [ $lint -eq 1 ]; then
        changes=$(ls "$out"/deb/*.changes)
        lintian --fail-on error,warning --info --display-info --pedantic "$changes" >"$out/deb/lintian.log" 2>&1 ||
                status=1
        grep -E '^(E|W): ' "$out/deb/lintian.log" || true
        say "lintian: $(grep -c '^E: ' "$out/deb/lintian.log") errors, $(grep -c '^W: ' "$out/deb/lintian.log") warnings," \
                "$(grep -c '^[IP]: ' "$out/deb/lintian.log") info/pedantic ($out/deb/lintian.log)"
        if [ $rpm -eq 1 ]; then
                # The spec beside its sources, as rpmlint reads them (%(cat SOURCE1) in %pre).
                rpmlint -r "$rb/SOURCES/dsa.rpmlintrc" "$out"/rpm/*.rpm "$rb/SOURCES/dsa.spec" \
                        >"$out/rpm/rpmlint.log" 2>&1 || true
                grep -E ': (E|W): ' "$out/rpm/rpmlint.log" || true
                say "rpmlint: $(tail -n 1 "$out/rpm/rpmlint.log") ($out/rpm/rpmlint.log)"
        fi
fi

say "packages:"
ls -1 "$out"/deb/*.deb "$out"/rpm/*.rpm 2>/dev/null | sed 's/^/  /'
[ $status -eq 0 ] || die "lintian reported errors or warnings"
