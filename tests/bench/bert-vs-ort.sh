#!/bin/bash
# dsa against ONNX Runtime on a BERT-base-shaped model (12 layers, C 768, 12 heads, FF 3072,
# vocab 30522, seeded random weights), batch 1, sequence 128, fp32, in one run: same weights
# (tests/bench/make-bert-base.py writes them both as a HF folder and as ONNX), same token ids,
# same thread counts (1 and nproc), alternating dsactl bench and tests/bench/ort-bench.mjs
# ROUNDS times and taking the median of the per-round medians. Checks first that both produce
# the same last hidden state. Adds bench-gemm's measured peak and GEMM GFLOP/s when built.
# Reports; never passes or fails on time (exit 1 only when the outputs differ or a step fails).
#
# Usage: tests/bench/bert-vs-ort.sh [DSACTL] [--out FILE.json] [--rounds N] [--runs R]
#                                   [--warmup W] [--threads "1 2"] [--model-dir DIR] [--gemm BIN]
#   DSACTL     the dsactl binary; without it, ./build is configured and built when needed
#   --gemm     bench-gemm (default: next to DSACTL's build, tests/bench-gemm)
#   --model-dir  where the generated model is cached (default tests/bench/out/bert-base)
set -euo pipefail

export OPENBLAS_CORETYPE=Haswell # policy: same kernels on every x86 machine we measure
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=/usr/bin/python3 # Debian's, where python3-onnx and python3-numpy live
dsactl= out= rounds=3 runs=10 warmup=2 threads= model_dir="$here/out/bert-base"
seq=128 batch=1 tolerance=1e-3 gemm=

die() { echo "bert-vs-ort: $*" >&2; exit 1; }
usage() { sed -n '10,14s/^# \{0,1\}//p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
        case $1 in
        --out) out=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --model-dir) model_dir=$2; shift 2 ;;
        --gemm) gemm=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "bert-vs-ort: unknown option '$1'" >&2; usage ;;
        *) [ -z "$dsactl" ] || usage; dsactl=$1; shift ;;
        esac
done
ncpu=$(nproc)
[ -n "$threads" ] || threads=$( [ "$ncpu" -gt 1 ] && echo "1 $ncpu" || echo 1 )

# --- what is missing gets installed (Debian packages, and the npm package inside tests/bench)
. "$here/ort-deps.sh"
ort_deps bert-vs-ort

# --- dsactl
if [ -z "$dsactl" ]; then
        dsactl=$root/build/cli/dsactl
        if [ ! -x "$dsactl" ]; then
                cmake -S "$root" -B "$root/build" >&2
                make -C "$root/build" -j"$ncpu" dsactl >&2
                make -C "$root/build" -j"$ncpu" bench-gemm >&2 || true
        fi
fi
[ -x "$dsactl" ] || die "$dsactl: not an executable"

# --- the model, cached; remade when the script that makes it changes
stamp=$(sha256sum "$here/make-bert-base.py" | cut -c1-16)
if [ "$(cat "$model_dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "bert-vs-ort: writing the model into $model_dir" >&2
        rm -rf "$model_dir"
        "$py" "$here/make-bert-base.py" "$model_dir" >&2
        echo "$stamp" >"$model_dir/.stamp"
fi
hf=$model_dir/hf onnx=$model_dir/bert.onnx

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ours() { "$dsactl" bench -m "$hf" --seq $seq --batch $batch --json "$@"; }
theirs() { node "$here/ort-bench.mjs" --model "$onnx" --seq $seq --batch $batch "$@"; }

load_before=$(cut -d' ' -f1 /proc/loadavg)

# --- same model? compare the last hidden state of the benchmark's own input
echo "bert-vs-ort: checking that both runtimes compute the same output" >&2
ours --threads "$ncpu" --runs 1 --warmup 0 --dump "$tmp/dsa.bin" >/dev/null
theirs --threads "$ncpu" --runs 1 --warmup 0 --dump "$tmp/ort.bin" >/dev/null
"$py" - "$tmp/dsa.bin" "$tmp/ort.bin" "$tolerance" >"$tmp/check.json" <<'EOF'
import json, sys
import numpy as np
a, b = np.fromfile(sys.argv[1], "<f4"), np.fromfile(sys.argv[2], "<f4")
tol = float(sys.argv[3])
if a.shape != b.shape:
    print(json.dumps({"ok": False, "reason": f"sizes differ: {a.size} vs {b.size} floats"}))
    sys.exit(0)
d = np.abs(a.astype(np.float64) - b)
i = int(d.argmax())
print(json.dumps({"ok": bool(np.isfinite(d).all() and d.max() <= tol), "max_abs_diff": float(d.max()),
                  "mean_abs_diff": float(d.mean()), "worst_index": i, "dsa": float(a[i]),
                  "ort": float(b[i]), "tolerance": tol}))
EOF

# --- latency, interleaved: ours, theirs, ours, theirs... per thread count
for t in $threads; do
        for r in $(seq 1 "$rounds"); do
                echo "bert-vs-ort: threads $t, round $r/$rounds" >&2
                ours --threads "$t" --runs "$runs" --warmup "$warmup" >>"$tmp/dsa-$t.jsonl"
                theirs --threads "$t" --runs "$runs" --warmup "$warmup" >>"$tmp/ort-$t.jsonl"
        done
done

# --- GEMM throughput against the machine's fp32 peak, when bench-gemm is built
if [ -z "$gemm" ]; then
        for g in "$(dirname "$dsactl")/../tests/bench-gemm" "$root/build/tests/bench-gemm"; do
                [ -x "$g" ] && { gemm=$g; break; }
        done
fi
if [ -n "$gemm" ]; then
        echo "bert-vs-ort: running $gemm" >&2
        "$gemm" --json >"$tmp/gemm.out" || { echo "bert-vs-ort: bench-gemm failed, ignoring." >&2; rm -f "$tmp/gemm.out"; }
else
        echo "bert-vs-ort: bench-gemm is not built, leaving GEMM figures out." >&2
fi

"$py" - "$tmp" "$threads" "$out" "$hf" "$onnx" "$seq" "$batch" "$runs" "$rounds" "$load_before" <<'EOF'
import json, os, platform, statistics, sys
tmp, threads, out, hf, onnx, seq, batch, runs, rounds, load_before = sys.argv[1:]
def lines(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]
check = json.load(open(os.path.join(tmp, "check.json")))
res = {"model": {"hf": hf, "onnx": onnx, "shape": "BERT-base: 12 layers, C 768, 12 heads, FF 3072, vocab 30522"},
       "seq": int(seq), "batch": int(batch), "runs": int(runs), "rounds": int(rounds),
       "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "cpu": None, "check": check,
       "results": [], "gemm": None,
       "loadavg_1min": {"before": float(load_before), "after": os.getloadavg()[0]}, "cores": os.cpu_count()}
try:
    with open("/proc/cpuinfo") as f:
        res["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
except (OSError, StopIteration):
    res["cpu"] = platform.processor()
for t in threads.split():
    d, o = lines(os.path.join(tmp, f"dsa-{t}.jsonl")), lines(os.path.join(tmp, f"ort-{t}.jsonl"))
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    row = {"threads": int(t),
           "dsa": {k: med(d, k) for k in ("latency_ms_median", "latency_ms_p90", "latency_ms_min", "tokens_per_s", "gflops")},
           "ort": {k: med(o, k) for k in ("latency_ms_median", "latency_ms_p90", "latency_ms_min", "tokens_per_s")},
           "dsa_rounds_ms": [r["latency_ms_median"] for r in d],
           "ort_rounds_ms": [r["latency_ms_median"] for r in o]}
    row["ort"]["gflops"] = row["dsa"]["gflops"] * row["dsa"]["latency_ms_median"] / row["ort"]["latency_ms_median"]
    row["ort"]["runtime"] = o[0].get("runtime")
    row["ratio"] = row["dsa"]["latency_ms_median"] / row["ort"]["latency_ms_median"]
    row["ratio_of_min"] = min(r["latency_ms_min"] for r in d) / min(r["latency_ms_min"] for r in o)
    res["results"].append(row)
gp = os.path.join(tmp, "gemm.out")
if os.path.exists(gp):
    text = open(gp).read().strip()
    try:
        res["gemm"] = json.loads(text)
    except ValueError:
        try:
            res["gemm"] = [json.loads(l) for l in text.splitlines() if l.strip()]
        except ValueError:
            res["gemm"] = {"text": text}

print(f"\nBERT-base fp32, batch {batch} x seq {seq}, {res['cpu']}, OPENBLAS_CORETYPE={res['openblas_coretype']}")
print(f"median of {rounds} rounds x {runs} runs each; {res['results'][0]['ort']['runtime']}, graphOptimizationLevel all\n")
print(f"{'threads':>7}  {'dsa ms':>9}  {'ORT ms':>9}  {'dsa/ORT':>7}  {'min/min':>7}  {'dsa GFLOP/s':>11}  {'ORT GFLOP/s':>11}  {'dsa tok/s':>9}  {'ORT tok/s':>9}")
for r in res["results"]:
    print(f"{r['threads']:>7}  {r['dsa']['latency_ms_median']:>9.1f}  {r['ort']['latency_ms_median']:>9.1f}  "
          f"{r['ratio']:>7.3f}  {r['ratio_of_min']:>7.3f}  {r['dsa']['gflops']:>11.1f}  {r['ort']['gflops']:>11.1f}  "
          f"{r['dsa']['tokens_per_s']:>9.0f}  {r['ort']['tokens_per_s']:>9.0f}")
    print(f"{'':>7}  per-round medians: dsa {', '.join(f'{x:.1f}' for x in r['dsa_rounds_ms'])}; "
          f"ORT {', '.join(f'{x:.1f}' for x in r['ort_rounds_ms'])}")
lb, la = res["loadavg_1min"]["before"], res["loadavg_1min"]["after"]
if lb > 0.5:
    print(f"WARNING: the machine was busy before the run (1-min load {lb:.2f} on {res['cores']} cores): "
          "figures, above all those on every core, are not to be trusted")
c = check
if "max_abs_diff" in c:
    print(f"\noutputs: max |dsa - ORT| = {c['max_abs_diff']:.3g} (mean {c['mean_abs_diff']:.3g}, "
          f"tolerance {c['tolerance']:g}): {'match' if c['ok'] else 'MISMATCH'}")
else:
    print(f"\noutputs: MISMATCH: {c['reason']}")
g = res["gemm"]
if isinstance(g, dict) and "peak_gflops_per_core" in g:
    pk, nc = g["peak_gflops_per_core"], g.get("cores", 1)
    print(f"\nfp32 peak ({g.get('peak_isa')} FMA loop): {pk:.1f} GFLOP/s per core, {pk * nc:.1f} on {nc} cores")
    print(f"{'GEMM (dsa_linear_f32 = cblas_sgemm)':<36} {'threads':>7} {'GFLOP/s':>8} {'% peak':>7}")
    for e in g.get("gemm", []):
        print(f"{e['shape']:<36} {e['threads']:>7} {e['gflops']:>8.1f} {e['pct_of_peak']:>6.1f}%")
    for r in res["results"]:
        r["dsa"]["pct_of_peak"] = 100 * r["dsa"]["gflops"] / (pk * r["threads"])
        r["ort"]["pct_of_peak"] = 100 * r["ort"]["gflops"] / (pk * r["threads"])
        print(f"whole forward at {r['threads']} thread(s): dsa {r['dsa']['pct_of_peak']:.1f}% of peak, "
              f"ORT {r['ort']['pct_of_peak']:.1f}%")
elif g is not None:
    print("\nbench-gemm:\n" + (g["text"] if isinstance(g, dict) and "text" in g else json.dumps(g)))
last = res["results"][-1]
print(f"\ndsa/ORT latency ratio: {last['ratio']:.3f} at {last['threads']} threads "
      f"(lower is better; goal <= 1.0)")
if out:
    tmpout = out + ".tmp"
    with open(tmpout, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    os.replace(tmpout, out)
    print(f"results written to {out}")
EOF

"$py" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["ok"] else 1)' "$tmp/check.json" ||
        die "dsa and ORT outputs differ (see above): the two runtimes do not run the same model"
