#!/bin/sh
# The README's first command: serve the bundled model with dsad on a private D-Bus bus and
# classify each argument through dsactl (dsad runs the model, not dsactl). Nothing is installed
# and nothing outlives the script: the bus, dsad and the temporary store go on exit.
#
# Usage: scripts/demo.sh [TEXT...]   (BUILD=DIR picks the build folder, default ./build)
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$here/build}
dsad=$build/daemon/dsad
dsactl=$build/cli/dsactl
model=$here/models/sst2-distilled-int8.gguf
[ $# -gt 0 ] || set -- "a gorgeous, witty, seductive movie." "the worst film i have ever seen."

for f in "$dsad" "$dsactl"; do
        [ -x "$f" ] || { echo "demo: $f is missing: build first (cmake -S . -B build && cmake --build build -j)" >&2; exit 1; }
done
[ -f "$model" ] || { echo "demo: $model is missing" >&2; exit 1; }
command -v dbus-daemon >/dev/null || { echo "demo: dbus-daemon is missing (apt-get install dbus)" >&2; exit 1; }

tmp=$(mktemp -d)
bus_pid=
dsad_pid=
cleanup() {
        [ -z "$dsad_pid" ] || kill "$dsad_pid" 2>/dev/null || true
        [ -z "$dsad_pid" ] || wait "$dsad_pid" 2>/dev/null || true
        [ -z "$bus_pid" ] || kill "$bus_pid" 2>/dev/null || true
        [ -z "$bus_pid" ] || wait "$bus_pid" 2>/dev/null || true
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private bus: dbus-daemon in the background, its address read back from a file.
dbus-daemon --session --nofork --nopidfile --print-address=1 >"$tmp/address" 2>"$tmp/bus.log" &
bus_pid=$!
for _ in $(seq 100); do
        [ -s "$tmp/address" ] && break
        sleep 0.05
done
address=$(head -n1 "$tmp/address")
[ -n "$address" ] || { echo "demo: dbus-daemon did not start" >&2; exit 1; }

# A store holding the bundled model as "sst2".
mkdir "$tmp/store"
ln -s "$model" "$tmp/store/sst2.gguf"
"$dsad" --bus "$address" --store "$tmp/store" --foreground 2>"$tmp/dsad.log" &
dsad_pid=$!

# Wait until org.dsa.Daemon1 answers (10 s at most).
for _ in $(seq 200); do
        "$dsactl" --bus "$address" status >/dev/null 2>&1 && break
        kill -0 "$dsad_pid" 2>/dev/null || { cat "$tmp/dsad.log" >&2; echo "demo: dsad exited" >&2; exit 1; }
        sleep 0.05
done
"$dsactl" --bus "$address" status >/dev/null || { cat "$tmp/dsad.log" >&2; exit 1; }

"$dsactl" --bus "$address" classify -m sst2 "$@"
