#!/bin/bash
# dsad's figures (issue 3), each against a baseline measured in the same run, through the real
# dsad on a private dbus-daemon with a temporary model store:
#   1. ring round trip of an empty request (dsa_nop) vs a D-Bus method call to dsad
#   2. BERT-base (12 layers, C 768), 128 tokens, batch 1: dsa_embed through dsad vs the engine in
#      process on the same GGUF file, same thread count (dsad --workers W: the model gets
#      cores / W threads, daemon/registry.c; in process gets as many)
#   3. dsad's memory with 64 sessions on one model vs the model file (BERT-base, bundled model)
#   4. 16 concurrent clients on the bundled model: requests/s with batching on vs off
#  4b. the same on BERT-base, where one short request streams every weight from memory
#      (dsa_embed of [CLS]: the model has no classifier head). 4 and 4b also measure their
#      ceiling in process: the engine given all 16 clients' texts in one call vs one text per
#      call (bench-dsad inproc), and dsactl on a file of the same sentences (32 per forward)
#   5. 64 clients x 1,000 requests: none lost, duplicated, failed or different from in process
# Prints a table and, with --out, writes JSON. Never passes or fails on time: exit 1 only when
# test 5 finds a bad request, dsad and the engine disagree, or a step does not work.
#
# Usage: tests/bench/dsad-bench.sh [BUILD_DIR] [--out FILE.json] [--workers W] [--rounds N]
#                                  [--quick] [--nobatch-dsad BIN] [--model-dir DIR] [--parts LIST]
#                                  [--bin DIR]
#   BUILD_DIR      a configured build (default ./build); dsad, dsactl and bench-dsad are built
#   --bin          take dsad, dsactl and bench-dsad from DIR as they are, build nothing
#                  (scripts/scaling-run.sh, on a machine with no compiler set up)
#   --workers      dsad's worker threads (default 1: one request at a time on every core)
#   --rounds       batching on/off rounds of 4 and 4b, each on a fresh dsad (default 3)
#   --quick        fewer samples everywhere (a smoke run, not figures to quote)
#   --nobatch-dsad another dsad binary for 4's and 4b's one-request-at-a-time baseline (default:
#                  the same dsad with batch_max = 1 in its config)
#   --model-dir    where the BERT-base model is cached (default tests/bench/out/bert-base)
#   --parts        comma-separated parts to run, of 1,2,3,4,4b,5 (default all)
# DSA_PYTHON names the Python with numpy and onnx (default Debian's /usr/bin/python3);
# DSA_DBUS_CONFIG a dbus-daemon configuration file to use instead of --session's.
set -euo pipefail

export OPENBLAS_CORETYPE=Haswell # policy: same kernels on every x86 machine we measure
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${DSA_PYTHON:-/usr/bin/python3}
build= bindir= out= workers=1 rounds=3 quick=0 nobatch_dsad= model_dir="$here/out/bert-base" parts=1,2,3,4,4b,5

die() { echo "dsad-bench: $*" >&2; exit 1; }
say() { echo "dsad-bench: $*" >&2; }
usage() { sed -n '18,32s/^# \{0,1\}//p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
        case $1 in
        --out) out=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --nobatch-dsad) nobatch_dsad=$2; shift 2 ;;
        --model-dir) model_dir=$2; shift 2 ;;
        --parts) parts=$2; shift 2 ;;
        --bin) bindir=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "dsad-bench: unknown option '$1'" >&2; usage ;;
        *) [ -z "$build" ] || usage; build=$1; shift ;;
        esac
done
[ -n "$build" ] || build=$root/build
part() { case ",$parts," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
cores=$(nproc)
threads=$(( cores / workers )); [ "$threads" -ge 1 ] || threads=1 # daemon/registry.c model_threads()

# --- binaries
if [ -n "$bindir" ]; then
        dsad=$bindir/dsad dsactl=$bindir/dsactl bench=$bindir/bench-dsad
else
        if [ ! -f "$build/CMakeCache.txt" ]; then
                cmake -S "$root" -B "$build" >&2
        fi
        make -C "$build" -j"$cores" dsad dsactl bench-dsad >&2 || die "build failed"
        dsad=$build/daemon/dsad dsactl=$build/cli/dsactl bench=$build/tests/bench-dsad
fi
for b in "$dsad" "$dsactl" "$bench"; do [ -x "$b" ] || die "$b: not built"; done
command -v dbus-daemon >/dev/null || die "dbus-daemon is not installed"

# --- BERT-base: the HF folder made by make-bert-base.py (as bert-vs-ort.sh caches it), imported
# once into GGUF next to it.
stamp=$(sha256sum "$here/make-bert-base.py" | cut -c1-16)
if [ "$(cat "$model_dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "writing the BERT-base model into $model_dir"
        "$py" -c 'import numpy, onnx' 2>/dev/null ||
                die "make-bert-base.py needs python3-numpy and python3-onnx (or run bert-vs-ort.sh once)"
        rm -rf "$model_dir"
        "$py" "$here/make-bert-base.py" "$model_dir" >&2
        echo "$stamp" >"$model_dir/.stamp"
fi
bert_gguf=$model_dir/bertbase.gguf
if [ ! -s "$bert_gguf" ] || [ "$bert_gguf" -ot "$model_dir/.stamp" ]; then
        say "importing $model_dir/hf into $bert_gguf"
        "$dsactl" import "$model_dir/hf" -o "$bert_gguf" >&2
fi

# --- a private bus and a temporary store; everything we start is killed by its PID
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsad-bench.XXXXXX")
bus_pid= dsad_pid=
stop_dsad() {
        [ -n "$dsad_pid" ] || return 0
        kill -TERM "$dsad_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$dsad_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$dsad_pid" 2>/dev/null || true
        wait "$dsad_pid" 2>/dev/null || true
        dsad_pid=
}
cleanup() {
        stop_dsad
        if [ -n "$bus_pid" ]; then
                kill -TERM "$bus_pid" 2>/dev/null || true
                wait "$bus_pid" 2>/dev/null || true
        fi
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

store=$tmp/store
mkdir -p "$store"
# Same file system: a hard link; else a copy (the file is read-only to both).
ln "$bert_gguf" "$store/bertbase.gguf" 2>/dev/null || cp "$bert_gguf" "$store/bertbase.gguf"
cp "$root/models/sst2-bert-4l256.gguf" "$store/sst2.gguf"
printf '[daemon]\n' >"$tmp/dsad.conf"
printf '[daemon]\nbatch_max = 1\n' >"$tmp/dsad-nobatch.conf"

addr=unix:path=$tmp/bus
bus_config=--session
[ -z "${DSA_DBUS_CONFIG:-}" ] || bus_config=--config-file=$DSA_DBUS_CONFIG
dbus-daemon "$bus_config" --nofork --nopidfile --address="$addr" >"$tmp/dbus.log" 2>&1 &
bus_pid=$!
for _ in $(seq 1 100); do [ -S "$tmp/bus" ] && break; sleep 0.05; done
[ -S "$tmp/bus" ] || die "dbus-daemon did not start: $(cat "$tmp/dbus.log")"
export DSA_BUS_ADDRESS=$addr

# start_dsad LABEL [dsad binary] [config file]: a fresh dsad, ready when it answers GetStatus.
n_dsad=0
start_dsad() {
        local label=$1 bin=${2:-$dsad} conf=${3:-$tmp/dsad.conf}
        stop_dsad
        n_dsad=$((n_dsad + 1))
        "$bin" --bus "$addr" --store "$store" --config "$conf" --foreground \
                --workers "$workers" --idle-unload 0 >"$tmp/dsad-$n_dsad-$label.log" 2>&1 &
        dsad_pid=$!
        for _ in $(seq 1 200); do
                kill -0 "$dsad_pid" 2>/dev/null || die "dsad exited: $(tail -5 "$tmp/dsad-$n_dsad-$label.log")"
                busctl --address="$addr" call org.dsa.Daemon1 /org/dsa/Daemon1 org.dsa.Daemon1 GetStatus \
                        >/dev/null 2>&1 && return 0
                sleep 0.05
        done
        die "dsad did not come up: $(tail -5 "$tmp/dsad-$n_dsad-$label.log")"
}

results=$tmp/results.jsonl
: >"$results"
loads=$tmp/loads
: >"$loads"
load() { echo "$1 $(cut -d' ' -f1-3 /proc/loadavg)" >>"$loads"; }
run_bench() { # LABEL TEST ARGS...: one JSON line into results, tagged with LABEL
        local label=$1 line
        shift
        load "$label"
        if ! line=$("$bench" --bus "$addr" "$@"); then
                [ -n "$line" ] && echo "{\"label\":\"$label\",\"result\":$line}" >>"$results"
                say "bench-dsad $* failed"
                return 1
        fi
        echo "{\"label\":\"$label\",\"result\":$line}" >>"$results"
}

if [ "$quick" = 1 ]; then
        nop_n=5000 nop_warm=500 dbus_n=1000 emb_runs=3 emb_warm=1 batch_s=1 bb_batch_s=2 stress_req=200 rounds=1
        dsactl_n_sst2=256 dsactl_n_bertbase=64
else
        nop_n=20000 nop_warm=2000 dbus_n=5000 emb_runs=12 emb_warm=2 batch_s=3 bb_batch_s=6 stress_req=1000
        dsactl_n_sst2=2048 dsactl_n_bertbase=256
fi
status=0

# in_process MODEL SECONDS [--embed]: the ceiling of a batching test, with no dsad running.
# bench-dsad inproc: 16 texts per call vs one per call, rounds alternating. dsactl on files of
# the same sentences (32 of them, then dsactl_n_MODEL, a multiple of 32): the larger file's
# extra texts over its extra time, so the model's load and the first forward drop out.
in_process() {
        local m=$1 secs=$2 verb=classify pool= n_var=dsactl_n_$1 t0 t1 t2
        shift 2
        stop_dsad
        run_bench "inproc-$m" --file "$store/$m.gguf" --threads "$threads" --clients 16 \
                --seconds "$secs" --rounds "$rounds" "$@" inproc || status=1
        [ "${1:-}" = --embed ] && verb=embed pool="--pool cls"
        "$bench" sentences >"$tmp/sentences" || { status=1; return 0; }
        for f in 32 "${!n_var}"; do
                : >"$tmp/sentences-$f"
                for _ in $(seq 1 $((f / 32))); do cat "$tmp/sentences" >>"$tmp/sentences-$f"; done
        done
        load "dsactl-$m"
        t0=$(date +%s.%N)
        "$dsactl" "$verb" -m "$store/$m.gguf" $pool --threads "$threads" <"$tmp/sentences-32" >/dev/null || status=1
        t1=$(date +%s.%N)
        "$dsactl" "$verb" -m "$store/$m.gguf" $pool --threads "$threads" <"$tmp/sentences-${!n_var}" >/dev/null ||
                status=1
        t2=$(date +%s.%N)
        echo "{\"label\":\"dsactl-$m\",\"result\":{\"test\":\"dsactl\",\"verb\":\"$verb\",\"small\":32,\
\"big\":${!n_var},\"small_s\":$(awk "BEGIN{print $t1 - $t0}"),\"big_s\":$(awk "BEGIN{print $t2 - $t1}")}}" >>"$results"
}

# 1 + 2: one dsad, the ring's latency and BERT-base latency
if part 1 || part 2; then
        start_dsad latency
fi
if part 1; then
        say "1/5 ring vs D-Bus round trips (dsad --workers $workers)"
        load part1-before
        run_bench nop --model sst2 nop --runs "$nop_n" --warmup "$nop_warm" --dbus-n "$dbus_n" --rounds 3 || status=1
        load part1-after
fi
if part 2; then
        say "2/5 BERT-base, 128 tokens, batch 1: dsad vs in process ($threads threads each)"
        load part2-before
        run_bench embed --model bertbase --file "$store/bertbase.gguf" --threads "$threads" --tokens 128 \
                --runs "$emb_runs" --warmup "$emb_warm" embed || status=1
        load part2-after
fi

# 3: memory, a fresh dsad per model so its RSS is that model's
if part 3; then
        say "3/5 memory with 64 sessions"
        load part3-before
        for m in bertbase sst2; do
                start_dsad "memory-$m"
                run_bench "memory-$m" --model "$m" --file "$store/$m.gguf" --dsad-pid "$dsad_pid" \
                        --clients 64 --requests 3 memory || status=1
        done
        load part3-after
fi

# 4, 4b: batching on vs off (batch_max = 1 in dsad.conf), alternating, a fresh dsad each
nobatch_dsad=${nobatch_dsad:-$dsad}
nobatch_how="batch_max = 1"
if part 4; then
        say "4/5 batching: 16 clients on the bundled model, on vs off ($nobatch_how)"
        load part4-before
        for r in $(seq 1 "$rounds"); do
                start_dsad batch-on
                run_bench batch-on --model sst2 --dsad-pid "$dsad_pid" --clients 16 --seconds "$batch_s" batch || status=1
                start_dsad batch-off "$nobatch_dsad" "$tmp/dsad-nobatch.conf"
                run_bench batch-off --model sst2 --dsad-pid "$dsad_pid" --clients 16 --seconds "$batch_s" batch || status=1
        done
        say "4/5 in process on the bundled model: 16 texts per call vs 1"
        in_process sst2 "$batch_s"
        load part4-after
fi
if part 4b; then
        say "4b/5 batching: 16 clients on BERT-base (embed [CLS]), on vs off ($nobatch_how)"
        load part4b-before
        for r in $(seq 1 "$rounds"); do
                start_dsad batchbb-on
                run_bench batchbb-on --model bertbase --dsad-pid "$dsad_pid" --clients 16 --seconds "$bb_batch_s" --embed batch || status=1
                start_dsad batchbb-off "$nobatch_dsad" "$tmp/dsad-nobatch.conf"
                run_bench batchbb-off --model bertbase --dsad-pid "$dsad_pid" --clients 16 --seconds "$bb_batch_s" --embed batch || status=1
        done
        say "4b/5 in process on BERT-base: 16 texts per call vs 1"
        in_process bertbase "$bb_batch_s" --embed
        load part4b-after
fi

# 5: correctness under load
if part 5; then
        say "5/5 64 clients x $stress_req requests: lost, duplicated, mismatched"
        load part5-before
        start_dsad stress
        run_bench stress --model sst2 --file "$store/sst2.gguf" --threads "$threads" --clients 64 \
                --requests "$stress_req" --depth 4 --classify-every 4 stress || status=1
        load part5-after
fi
stop_dsad
load end

"$py" - "$results" "$loads" "$out" "$workers" "$threads" "$cores" "${nobatch_how:-}" <<'EOF'
import json, os, statistics, sys
results, loads, out, workers, threads, cores, nobatch_how = sys.argv[1:]
rows = [json.loads(l) for l in open(results) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r["result"])
load = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(loads) if l.strip()}
res = {"workers": int(workers), "model_threads": int(threads), "cores": int(cores),
       "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "loadavg": load, "tests": by,
       "figures": []}
try:
    res["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    res["cpu"] = None
F = res["figures"]
def fig(what, value, unit, goal=None, ok=None, base=None, ratio=None):
    F.append({"what": what, "value": value, "unit": unit, "baseline": base, "ratio": ratio,
              "goal": goal, "meets_goal": ok})

if "nop" in by:
    n = by["nop"][0]
    ring, ping, gs = n["ring"], n["dbus_ping"], n["dbus_getstatus"]
    for q, goal in (("p50", 15), ("p99", 100), ("p999", None)):
        fig(f"ring NOP round trip {q} ({ring['n']} trips)", ring[f"{q}_us"], "us",
            f"<= {goal} us" if goal else None, ring[f"{q}_us"] <= goal if goal else None,
            ping[f"{q}_us"], ring[f"{q}_us"] / ping[f"{q}_us"])
    fig(f"D-Bus Peer.Ping to dsad p50 / p99 ({ping['n']} calls)", f"{ping['p50_us']:.1f} / {ping['p99_us']:.1f}", "us")
    fig(f"D-Bus GetStatus p50 / p99 ({gs['n']} calls)", f"{gs['p50_us']:.1f} / {gs['p99_us']:.1f}", "us")
    fig("ring p50 per round", ", ".join(f"{x:.1f}" for x in n["ring_round_p50_us"]), "us")
if "embed" in by:
    e = by["embed"][0]
    fig(f"BERT-base 128 tok batch 1 via dsad (median of {e['runs']})", e["dsad_ms"]["median"], "ms",
        "within 3% of in process", abs(e["median_paired_ratio"] - 1) <= 0.03, e["inproc_ms"]["median"],
        e["median_paired_ratio"])
    fig("  same, ratio of medians / of minima", f"{e['ratio_of_medians']:.3f} / {e['ratio_of_mins']:.3f}", "")
    fig("  max |dsad - in process| of the embedding", e["max_abs_diff"], "")
for m in ("bertbase", "sst2"):
    for x in by.get(f"memory-{m}", []):
        mb = lambda k: x[k] / 1024
        fig(f"dsad VmRSS, {x['sessions_open']} sessions on {m} ({x['op']})", mb("vmrss_kb"), "MiB",
            "<= 1.1x model file", x["vmrss_ratio"] <= 1.1, mb("model_file_kb"), x["vmrss_ratio"])
        fig(f"  Pss (anon / file / shmem)", f"{mb('pss_kb'):.1f} ({mb('pss_anon_kb'):.1f} / {mb('pss_file_kb'):.1f} / "
            f"{mb('pss_shmem_kb'):.1f})", "MiB", None, None, mb("model_file_kb"), x["pss_ratio"])
        fig(f"  Rss anon / file / shmem; VmHWM; before sessions", f"{mb('rss_anon_kb'):.1f} / {mb('rss_file_kb'):.1f} / "
            f"{mb('rss_shmem_kb'):.1f}; {mb('vmhwm_kb'):.1f}; {mb('rss_before_kb'):.1f}", "MiB")
def batching(part, model, op, lab):
    on = [x["requests_per_s"] for x in by.get(f"{lab}-on", [])]
    off = [x["requests_per_s"] for x in by.get(f"{lab}-off", [])]
    ip = by.get(f"inproc-{model}", [None])[0]
    if not on and not off and not ip:
        return
    mon = statistics.median(on) if on else None
    moff = statistics.median(off) if off else None
    what = f"{part}. 16 clients on {model} ({op})"
    if on and off:
        fig(f"{what}, dsad batching on (median of {len(on)})", mon, "req/s", ">= 1.5x off", mon / moff >= 1.5,
            moff, mon / moff)
        fig(f"  dsad batching off ({nobatch_how}, median of {len(off)})", moff, "req/s")
        fig("  per round on / off", ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(on, off)), "req/s")
    elif on:
        fig(f"{what}, dsad batching on (median of {len(on)})", mon, "req/s", ">= 1.5x off", None)
    con = [x.get("dsad_cpu_ms_per_request") for x in by.get(f"{lab}-on", [])]
    coff = [x.get("dsad_cpu_ms_per_request") for x in by.get(f"{lab}-off", [])]
    if con and coff and None not in con + coff:
        mcon, mcoff = statistics.median(con), statistics.median(coff)
        fig("  dsad CPU per request, on (off / on: the gain in CPU time)", mcon, "ms", None, None, mcoff, mcoff / mcon)
        fig("  dsad CPU ms per request per round on / off", ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(con, coff)), "ms")
    for side in ("on", "off"):
        lat = by.get(f"{lab}-{side}", [{}])[-1].get("latency")
        if lat:
            fig(f"  batching {side}, request latency p50 / p99", f"{lat['p50_us']/1e3:.2f} / {lat['p99_us']/1e3:.2f}", "ms")
    if ip:
        b, one = ip["batched_texts_per_s"], ip["single_texts_per_s"]
        fig(f"  in process, 16 texts per call (the ceiling) / 1 per call", b, "txt/s", None, None, one, b / one)
        fig("  in process per round, 16 per call / 1 per call", ", ".join(
            f"{a:.1f}/{c:.1f}" for a, c in zip(ip["batched_round_texts_per_s"], ip["single_round_texts_per_s"])), "txt/s")
        cb, c1 = ip["batched_cpu_ms_per_text"], ip["single_cpu_ms_per_text"]
        fig("  in process CPU per text, 16 per call (1 per call / 16)", cb, "ms", None, None, c1, c1 / cb)
        if on:
            fig("  dsad batching on / in-process ceiling", mon, "req/s", None, None, b, mon / b)
        if off:
            fig("  dsad batching off / in process 1 per call", moff, "req/s", None, None, one, moff / one)
    d = by.get(f"dsactl-{model}", [None])[0]
    if d and d["big_s"] > d["small_s"]:
        tps = (d["big"] - d["small"]) / (d["big_s"] - d["small_s"])
        fig(f"  dsactl {d['verb']}, 32 per forward ({d['big']} - {d['small']} texts)", tps, "txt/s", None, None,
            ip["batched_texts_per_s"] if ip else None, tps / ip["batched_texts_per_s"] if ip else None)

batching("4", "sst2", "classify", "batch")
batching("4b", "bertbase", "embed cls", "batchbb")
for s in by.get("stress", []):
    fig(f"{s['clients']} clients x {s['requests_each']} requests ({s['classified']} classify): lost / dup / "
        f"failed / mismatched", f"{s['lost']} / {s['duplicated']} / {s['failed']} / {s['mismatched']}", "",
        "0 / 0 / 0 / 0", s["ok"])
    fig("  dsad's completed-request delta / requests; queue-full (EBUSY); seconds",
        f"{s['dsad_completed_delta']} / {s['requests']}; {s['busy']}; {s['seconds']:.1f}", "")
    fig(f"  classify results not bit-identical to the text alone in process", s["inexact"], "",
        None, None, s["classified"], s["inexact"] / max(1, s["classified"]))
    fig(f"  max logit error (tolerance; min distance between sentences)",
        f"{s['max_abs_logit_diff']:.2g} ({s['max_logit_error']:g}; {s['min_sentence_distance']:.2g})", "")

def fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)
print(f"\ndsad benchmark: {res['cpu']}, {cores} cores, dsad --workers {workers} ({threads} model threads), "
      f"OPENBLAS_CORETYPE={res['openblas_coretype']}")
print(f"{'what':<66} {'value':>22} {'unit':<5} {'baseline':>9} {'ratio':>7}  goal")
for f in F:
    goal = "" if f["goal"] is None else f"{f['goal']} ({'met' if f['meets_goal'] else 'NOT met' if f['meets_goal'] is False else '?'})"
    ratio = "" if f["ratio"] is None else f"{f['ratio']:.3f}"
    print(f"{f['what']:<66} {fmt(f['value']):>22} {f['unit']:<5} {fmt(f['baseline']):>9} {ratio:>7}  {goal}")
print("1-min/5-min/15-min load average: " + "; ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}/{v[2]:.2f}"
                                                       for k, v in load.items() if k.startswith("part") or k == "end"))
busy = max(v[0] for v in load.values()) if load else 0
if busy > 0.5:
    print(f"WARNING: the machine was busy (1-min load up to {busy:.2f} on {cores} cores): compare ratios, not absolute figures")
if out:
    with open(out + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    os.replace(out + ".tmp", out)
    print(f"results written to {out}")
EOF
exit $status
