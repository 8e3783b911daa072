#!/bin/sh
# Builds dsa and runs the whole test suite: the normal build (warnings are errors; every label but
# bench, integration included), the unit, parity and integration suites again under ASan + UBSan
# (integration: the real dsad on a private dbus-daemon, tests/integration/), the libFuzzer
# targets for a bounded time each; then, as root, the packages: both built (scripts/package.sh),
# the .debs installed on this machine and dsad run as the system service would, checked as an
# unprivileged user, then purged (tests/packaging/install-test.sh; skipped when not root).
# Benchmarks (ctest label "bench") are not run here: see tests/bench/.
# Tests that need ../shared (reference fixtures) skip when it is absent; set DSA_SHARED to
# point elsewhere.
set -eu
cd "$(dirname "$0")/.."
export OPENBLAS_CORETYPE=Haswell
jobs=$(nproc)

./scripts/install-deps.sh --test

cmake -S . -B build -DDSA_WERROR=ON >/dev/null
cmake --build build -j"$jobs"

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSA_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

CC=clang cmake -S . -B build-fuzz -DDSA_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$jobs"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -j"$jobs" -L 'unit|parity|integration'
ctest --test-dir build-fuzz --output-on-failure -L fuzz
ctest --test-dir build --output-on-failure -j"$jobs" -LE bench

rc=0
./tests/packaging/install-test.sh || rc=$?
[ $rc -eq 0 ] || [ $rc -eq 77 ] || exit $rc
