#!/bin/sh
# Issue 7's benchmark: a bursty request trace replayed against dsad with four policies, in one
# run on one dsad: always-fp32 (fixed:base), always-smallest (fixed:distilled), adaptive, and
# adaptive under a power budget; then a steady load under the same budget ("steady"), where the
# budget binds throughout, to see how close the average power stays to it. Writes
# docs/policy.{json,md,png} (or --out-dir).
#
# The ladder (a temporary store): sst2.gguf, the SST-2 teacher imported as fp32; sst2@int8
# (dsactl optimize --quant int8); sst2@int8-pruned (50% heads + 50% FFN + int8, calibrated on
# SST-2 train); sst2@distilled (the bundled distilled int8 student). Each is measured with
# dsactl eval --record on SST-2 dev, which is where dsad's "accuracy kept" comes from.
# Requests are SST-2 dev sentences; accuracy in the report is their real accuracy.
# Power is dsad's CPU-time model (core_watts = 10 W per busy core; RAPL calibrates it where it
# is readable, which it is not on this VM), sampled through GetPolicy.
#
# Usage: tests/bench/policy-bench.sh [--trace SPEC] [--steady SPEC] [--target MS] [--budget W]
#        [--out-dir DIR]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$root/build
shared=${DSA_SHARED:-$root/../shared}
out=$root/docs
trace="8:40,4:450,8:40,3:900,8:60,4:500,8:30,3:800,6:60"
target=25
budget=2.5
steady="30:350"
while [ $# -gt 0 ]; do
        case $1 in
        --trace) trace=$2; shift 2 ;;
        --target) target=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --steady) steady=$2; shift 2 ;;
        --out-dir) out=$2; shift 2 ;;
        *) echo "usage: $0 [--trace SPEC] [--steady SPEC] [--target MS] [--budget W] [--out-dir DIR]" >&2; exit 2 ;;
        esac
done
export OPENBLAS_CORETYPE=Haswell
dsactl=$build/cli/dsactl
sst=$shared/data/glue_sst2
teacher=$shared/fixtures/trained/sst2-bert-4l256
[ -d "$teacher" ] || { echo "policy-bench: $teacher not found (set DSA_SHARED)" >&2; exit 77; }
cmake --build "$build" --target dsad dsactl bench-policy >/dev/null
command -v gnuplot >/dev/null || { "$root/scripts/install-deps.sh" >/dev/null;
        apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null; }

tmp=$(mktemp -d)
bus_pid=
dsad_pid=
cleanup() {
        [ -z "$dsad_pid" ] || kill "$dsad_pid" 2>/dev/null || true
        [ -z "$bus_pid" ] || kill "$bus_pid" 2>/dev/null || true
        rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
store=$tmp/store
mkdir -p "$store" "$out"

echo "policy-bench: building the ladder in $store" >&2
$dsactl import "$teacher" -o "$store/sst2.gguf" >/dev/null
$dsactl optimize -m "$store/sst2.gguf" --quant int8 -o "$store/sst2@int8.gguf" >/dev/null
$dsactl optimize -m "$store/sst2.gguf" --quant int8 --prune-heads 0.5 --prune-ffn 0.5 \
        --calib "$sst/train.tsv" -o "$store/sst2@int8-pruned.gguf" >/dev/null
cp "$root/models/sst2-distilled-int8.gguf" "$store/sst2@distilled.gguf"
for v in sst2 sst2@int8 sst2@int8-pruned sst2@distilled; do
        $dsactl eval -m "$store/$v.gguf" --task sst2 --data "$sst/dev.tsv" --record >/dev/null
done

cat > "$tmp/dsad.conf" <<EOF
[policy]
latency_target_ms = $target
[power]
bus = none
EOF
dbus-daemon --session --nofork --print-address=3 --print-pid=4 3>"$tmp/address" 4>"$tmp/pid" &
for _ in $(seq 50); do [ -s "$tmp/address" ] && break; sleep 0.1; done
bus_pid=$(cat "$tmp/pid")
DSA_BUS_ADDRESS=$(head -1 "$tmp/address")
export DSA_BUS_ADDRESS
"$build/daemon/dsad" --bus "$DSA_BUS_ADDRESS" --store "$store" --config "$tmp/dsad.conf" --foreground \
        2>"$tmp/dsad.log" &
dsad_pid=$!
for _ in $(seq 100); do $dsactl load sst2 >/dev/null 2>&1 && break; sleep 0.1; done

runs="fixed:base:0 fixed:distilled:0 adaptive:0 adaptive:$budget"
: > "$tmp/windows.jsonl"
for r in $runs; do
        policy=${r%:*}
        b=${r##*:}
        echo "policy-bench: $policy, budget $b W, trace $trace" >&2
        "$build/tests/bench-policy" --data "$sst/dev.tsv" --trace "$trace" --policy "$policy" --target "$target" \
                --budget "$b" >> "$tmp/windows.jsonl"
done
echo "policy-bench: steady $steady, adaptive, budget $budget W" >&2
"$build/tests/bench-policy" --data "$sst/dev.tsv" --trace "$steady" --policy adaptive --target "$target" \
        --budget "$budget" --label steady >> "$tmp/windows.jsonl"
kill "$dsad_pid"
wait "$dsad_pid" || { echo "policy-bench: dsad did not exit cleanly" >&2; tail "$tmp/dsad.log" >&2; exit 1; }
dsad_pid=
grep -h "now runs" "$tmp/dsad.log" | tail -40 > "$tmp/changes.txt" || true

python3 "$root/tests/bench/policy-report.py" "$tmp/windows.jsonl" "$tmp/changes.txt" "$out" "$trace" "$target" \
        "$budget" "$steady"
(cd "$out" && gnuplot policy.gp)
rm -f "$out/policy.gp" "$out"/policy-*.dat
echo "policy-bench: wrote $out/policy.md, policy.json, policy.png" >&2
