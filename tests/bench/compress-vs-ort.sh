#!/bin/bash
# The compression issue's speed table in one run: dsa's variants of a BERT-base-shaped model
# (12 layers, C 768, 12 heads, FF 3072, seeded random weights; tests/bench/make-bert-base.py) --
# fp32, f16, bf16, dynamic int8, 30% heads + 30% FFN pruned and 50% block16 sparse, all made by
# `dsactl optimize` -- against ONNX Runtime on the same weights, fp32 and dynamic int8 (the graph
# ORT's quantize_dynamic makes, built by make-bert-base.py --int8). Sequence 128, batch 1 and 8,
# threads 1 and nproc, every configuration once per round, ROUNDS rounds, median of the per-round
# medians. Checks first that int8 stays close to fp32 in both runtimes (relative L2 error of the
# last hidden state below --tolerance) and that dsa's fp32 matches ORT's (max abs diff 1e-3).
# Reports; never passes or fails on time (exit 1 only when an output check or a needed step fails;
# a variant that optimize cannot make is left out with a message).
#
# Usage: tests/bench/compress-vs-ort.sh [DSACTL] [--out FILE.json] [--rounds N] [--runs R]
#                [--warmup W] [--threads "1 2"] [--batches "1 8"] [--seq T] [--model-dir DIR]
#                [--ort-int8 qdq|fused] [--tolerance F] [--ort node|python]
#   DSACTL      the dsactl binary; without it, ./build is configured and built when needed
#   --ort-int8  qdq: quantize_dynamic's graph, left to ORT's optimizer to fuse (default);
#               fused: com.microsoft DynamicQuantizeMatMul written directly
#   --model-dir where the generated model is cached (default tests/bench/out/bert-base)
#   --ort       node: onnxruntime-node, installed here from npm (default); python: the Python
#               package onnxruntime of $DSA_PYTHON (ort-bench.py; same runtime, same inputs), for
#               a machine with no npm registry (scripts/scaling-run.sh)
# DSA_PYTHON names the Python with numpy and onnx (default Debian's /usr/bin/python3).
set -euo pipefail

export OPENBLAS_CORETYPE=Haswell # policy: same kernels on every x86 machine we measure
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${DSA_PYTHON:-/usr/bin/python3} # Debian's, where python3-onnx and python3-numpy live
dsactl= out= rounds=3 runs=10 warmup=2 threads= batches="1 8" seq=128 model_dir="$here/out/bert-base"
ort_int8=qdq tolerance=0.05 fp32_tolerance=1e-3 ort=node

die() { echo "compress-vs-ort: $*" >&2; exit 1; }
say() { echo "compress-vs-ort: $*" >&2; }
usage() { sed -n '13,23s/^# \{0,1\}//p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
        case $1 in
        --out) out=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --batches) batches=$2; shift 2 ;;
        --seq) seq=$2; shift 2 ;;
        --model-dir) model_dir=$2; shift 2 ;;
        --ort-int8) ort_int8=$2; shift 2 ;;
        --tolerance) tolerance=$2; shift 2 ;;
        --ort) ort=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "compress-vs-ort: unknown option '$1'" >&2; usage ;;
        *) [ -z "$dsactl" ] || usage; dsactl=$1; shift ;;
        esac
done
case $ort_int8 in qdq|fused) ;; *) echo "compress-vs-ort: --ort-int8 is qdq or fused" >&2; usage ;; esac
case $ort in node|python) ;; *) echo "compress-vs-ort: --ort is node or python" >&2; usage ;; esac
ncpu=$(nproc)
[ -n "$threads" ] || threads=$( [ "$ncpu" -gt 1 ] && echo "1 $ncpu" || echo 1 )

# --- what is missing gets installed (Debian packages, and the npm package inside tests/bench)
if [ "$ort" = node ]; then
        . "$here/ort-deps.sh"
        ort_deps compress-vs-ort
else
        "$py" -c 'import numpy, onnx, onnxruntime' || die "--ort python: $py lacks numpy, onnx or onnxruntime"
fi

# --- dsactl
if [ -z "$dsactl" ]; then
        dsactl=$root/build/cli/dsactl
        if [ ! -x "$dsactl" ]; then
                cmake -S "$root" -B "$root/build" >&2
                make -C "$root/build" -j"$ncpu" dsactl >&2
        fi
fi
[ -x "$dsactl" ] || die "$dsactl: not an executable"

# --- the model, cached as bert-vs-ort.sh caches it; remade when the script that makes it changes
stamp=$(sha256sum "$here/make-bert-base.py" | cut -c1-16)
if [ "$(cat "$model_dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "writing the model into $model_dir"
        rm -rf "$model_dir"
        "$py" "$here/make-bert-base.py" "$model_dir" >&2
        echo "$stamp" >"$model_dir/.stamp"
fi
hf=$model_dir/hf onnx=$model_dir/bert.onnx onnx_int8=$model_dir/bert-int8-$ort_int8.onnx
if [ ! -s "$onnx_int8" ]; then
        say "writing ORT's dynamic int8 graph ($ort_int8) into $onnx_int8"
        "$py" "$here/make-bert-base.py" --onnx-from "$hf" --int8 "$ort_int8" "$onnx_int8" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
load_before=$(cut -d' ' -f1 /proc/loadavg)

# --- calibration texts: 64 seeded lines of English-ish words. The benchmark model's vocabulary
# is synthetic (tests/bench/make-bert-base.py), so WordPiece splits these into pieces; what the
# pruning needs is activations, not meaning.
"$py" - "$tmp/calib.txt" <<'EOF'
import random, sys
words = ("the of and to in is was for on that with as by at from it his an were are which this be "
         "has or had first one their its new after but who not they have her she two been other when "
         "there all during into school time may years more most only over city some world would where "
         "later up such used many can state about national out known university united then made "
         "team american between game season film series south north river music album church war "
         "house small people water light market river green quiet morning evening paper model "
         "engine reading garden window station letter number history system little great").split()
rng = random.Random(20240611)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        n = rng.randint(8, 40)
        s = " ".join(rng.choice(words) for _ in range(n))
        f.write(s[0].upper() + s[1:] + rng.choice(".!?") + "\n")
EOF

# --- our variants; one that optimize cannot make is left out, with optimize's own message
names=() files=()
make_variant() { # NAME OPTIMIZE-ARGS...
        local name=$1 file=$tmp/$1.gguf
        shift
        say "making $name: dsactl optimize -m $hf -o $file $*"
        if "$dsactl" optimize -m "$hf" -o "$file" --quiet "$@" 2>"$tmp/$name.err"; then
                names+=("$name") files+=("$file")
                return 0
        fi
        say "optimize failed for $name, leaving it out: $(tr '\n' ' ' <"$tmp/$name.err")"
        echo "$name	dsactl optimize -m $hf -o $file $*	$(tr '\n' ' ' <"$tmp/$name.err")" >>"$tmp/failed.tsv"
        rm -f "$file"
        return 1
}
if ! make_variant fp32 --quant f32; then
        # The reference every row is compared to: fall back to a plain import, then to the folder.
        if "$dsactl" import "$hf" -o "$tmp/fp32.gguf" 2>"$tmp/fp32-import.err"; then
                names+=(fp32) files+=("$tmp/fp32.gguf")
        else
                say "dsactl import failed too, timing the HF folder itself as fp32"
                names+=(fp32) files+=("$hf")
        fi
fi
make_variant f16 --quant f16 || true
make_variant bf16 --quant bf16 || true
make_variant int8 --quant int8 || true
make_variant pruned-h30-f30 --quant f32 --prune-heads 0.3 --prune-ffn 0.3 --calib "$tmp/calib.txt" || true
make_variant sparse-block16-50 --quant f32 --sparsity 0.5 --sparsity-method magnitude \
        --sparsity-pattern block16 || true

for i in "${!names[@]}"; do
        "$dsactl" show -m "${files[$i]}" --json >"$tmp/${names[$i]}.show.json" 2>/dev/null ||
                say "dsactl show failed for ${names[$i]}, ignoring."
done

ours() { "$dsactl" bench -m "$1" --seq "$seq" --json "${@:2}"; }
theirs() {
        if [ "$ort" = node ]; then
                node "$here/ort-bench.mjs" --model "$1" --seq "$seq" "${@:2}"
        else
                "$py" "$here/ort-bench.py" --model "$1" --seq "$seq" "${@:2}"
        fi
}

# --- outputs: int8 against fp32 in each runtime, and our fp32 against ORT's, on bench's own batch
say "checking the outputs"
for i in "${!names[@]}"; do
        ours "${files[$i]}" --batch 1 --threads "$ncpu" --runs 1 --warmup 0 \
                --dump "$tmp/${names[$i]}.bin" >/dev/null ||
                say "dsactl bench --dump failed for ${names[$i]}"
done
theirs "$onnx" --batch 1 --threads "$ncpu" --runs 1 --warmup 0 --dump "$tmp/ort-fp32.bin" >/dev/null 2>&1 ||
        die "ORT failed on $onnx"
theirs "$onnx_int8" --batch 1 --threads "$ncpu" --runs 1 --warmup 0 --dump "$tmp/ort-int8.bin" >/dev/null 2>&1 ||
        die "ORT failed on $onnx_int8"
"$py" - "$tmp" "$tolerance" "$fp32_tolerance" "${names[@]}" >"$tmp/check.json" <<'EOF'
import json, os, sys
import numpy as np
tmp, tol, tol32, names = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
def load(n):
    p = os.path.join(tmp, n + ".bin")
    return np.fromfile(p, "<f4").astype(np.float64) if os.path.exists(p) else None
def compare(a, b, gate, tolerance, kind):
    """kind rel: ||a - b|| / ||b|| (quantization moves every element a little); abs: max |a - b|."""
    if a is None or b is None:
        return {"ok": not gate, "gate": gate, "reason": "no output"}
    if a.shape != b.shape:
        return {"ok": not gate, "gate": gate, "reason": f"sizes differ: {a.size} vs {b.size} floats"}
    d = np.abs(a - b)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    i = int(d.argmax())
    err = rel if kind == "rel" else float(d.max())
    ok = bool(np.isfinite(d).all() and err < tolerance) if tolerance is not None else True
    return {"ok": ok or not gate, "gate": gate, "within": ok, "rel_l2": rel, "max_abs_diff": float(d.max()),
            "worst_index": i, "value": float(a[i]), "reference": float(b[i]),
            "tolerance": tolerance, "measure": kind}
ref = load("fp32")
res = {"ort int8 vs ORT fp32": compare(load("ort-int8"), load("ort-fp32"), True, tol, "rel"),
       "fp32 vs ORT fp32": compare(ref, load("ort-fp32"), True, tol32, "abs")}
for n in names:
    if n == "fp32":
        continue
    # int8 is gated; the float formats should pass the same bound; pruned and sparse models of
    # random weights are not expected to stay close, so they are only reported.
    gate = n == "int8"
    res[f"{n} vs fp32"] = compare(load(n), ref, gate, tol if n in ("int8", "f16", "bf16") else None, "rel")
print(json.dumps(res))
EOF

# --- latency: per thread count and batch, every configuration in turn, ROUNDS times
configs=("${names[@]}" ort-fp32 ort-int8)
for t in $threads; do
        for b in $batches; do
                for r in $(seq 1 "$rounds"); do
                        say "threads $t, batch $b, round $r/$rounds"
                        for i in "${!configs[@]}"; do
                                c=${configs[$i]} f=$tmp/$c-t$t-b$b.jsonl
                                case $c in
                                ort-fp32) theirs "$onnx" --batch "$b" --threads "$t" --runs "$runs" --warmup "$warmup" >>"$f" 2>/dev/null ;;
                                ort-int8) theirs "$onnx_int8" --batch "$b" --threads "$t" --runs "$runs" --warmup "$warmup" >>"$f" 2>/dev/null ;;
                                *) ours "${files[$i]}" --batch "$b" --threads "$t" --runs "$runs" --warmup "$warmup" >>"$f" ;;
                                esac || say "$c failed at threads $t, batch $b, ignoring."
                        done
                done
        done
done

"$py" - "$tmp" "$threads" "$batches" "$out" "$seq" "$runs" "$rounds" "$load_before" "$ort_int8" \
        "$onnx" "$onnx_int8" "${configs[@]}" <<'EOF'
import json, os, platform, statistics, sys
tmp, threads, batches, out, seq, runs, rounds, load_before, ort_int8, onnx, onnx_int8 = sys.argv[1:12]
configs = sys.argv[12:]
def lines(p):
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]
check = json.load(open(os.path.join(tmp, "check.json")))
failed = []
fp = os.path.join(tmp, "failed.tsv")
if os.path.exists(fp):
    for l in open(fp):
        name, cmd, msg = l.rstrip("\n").split("\t", 2)
        failed.append({"variant": name, "command": cmd, "message": msg.strip()})
sizes = {}
for c in configs:
    p = os.path.join(tmp, c + ".show.json")
    if os.path.exists(p) and os.path.getsize(p):
        sizes[c] = json.load(open(p)).get("weight_bytes")
res = {"model": {"shape": "BERT-base: 12 layers, C 768, 12 heads, FF 3072, vocab 30522, seeded random weights",
                 "onnx": onnx, "onnx_int8": onnx_int8, "onnx_int8_form": ort_int8,
                 "onnx_bytes": os.path.getsize(onnx), "onnx_int8_bytes": os.path.getsize(onnx_int8)},
       "seq": int(seq), "runs": int(runs), "rounds": int(rounds),
       "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "cpu": None, "cores": os.cpu_count(),
       "loadavg_1min": {"before": float(load_before), "after": os.getloadavg()[0]},
       "check": check, "failed_variants": failed, "weight_bytes": sizes, "results": []}
try:
    with open("/proc/cpuinfo") as f:
        res["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
except (OSError, StopIteration):
    res["cpu"] = platform.processor()
runtime = None
for t in threads.split():
    for b in batches.split():
        med = {}
        for c in configs:
            rs = lines(os.path.join(tmp, f"{c}-t{t}-b{b}.jsonl"))
            if rs:
                med[c] = statistics.median(r["latency_ms_median"] for r in rs)
                runtime = runtime or (rs[0].get("runtime") if c.startswith("ort") else None)
                res["results"].append({"variant": c, "threads": int(t), "batch": int(b),
                                       "latency_ms_median": med[c],
                                       "latency_ms_min": min(r["latency_ms_min"] for r in rs),
                                       "rounds_ms": [r["latency_ms_median"] for r in rs]})
        for row in res["results"]:
            if row["threads"] == int(t) and row["batch"] == int(b):
                for ref, key in (("fp32", "vs_fp32"), ("ort-fp32", "vs_ort_fp32"), ("ort-int8", "vs_ort_int8")):
                    row[key] = med[ref] / row["latency_ms_median"] if ref in med else None
fp32 = sizes.get("fp32")
for row in res["results"]:
    wb = sizes.get(row["variant"])
    row["weight_bytes"] = wb
    row["weight_fraction"] = wb / fp32 if wb and fp32 else None

print(f"\nBERT-base, seq {seq}, {res['cpu']}, {res['cores']} cores, OPENBLAS_CORETYPE={res['openblas_coretype']}")
print(f"median of {rounds} round(s) x {runs} runs; {runtime}, graphOptimizationLevel all; "
      f"ORT int8 = quantize_dynamic graph ({ort_int8}); speedup = reference ms / row ms\n")
print("| variant | threads | batch | median ms | vs our fp32 | vs ORT fp32 | vs ORT int8 | weights / fp32 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
x = lambda v: f"{v:.2f}x" if v else "-"
for r in res["results"]:
    wf = f"{r['weight_fraction']:.3f}" if r["weight_fraction"] else "-"
    print(f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['latency_ms_median']:.1f} | {x(r['vs_fp32'])} | "
          f"{x(r['vs_ort_fp32'])} | {x(r['vs_ort_int8'])} | {wf} |")
if fp32:
    print(f"\nour fp32 weights: {fp32 / 1e6:.1f} MB resident; ORT files: fp32 {res['model']['onnx_bytes'] / 1e6:.1f} MB, "
          f"int8 {res['model']['onnx_int8_bytes'] / 1e6:.1f} MB")
lb, la = res["loadavg_1min"]["before"], res["loadavg_1min"]["after"]
# The load after counts the run's own threads; only the load before says other work was there
# (as bert-vs-ort.sh judges it).
if lb > 0.5:
    print(f"WARNING: the machine was busy before the run (1-min load {lb:.2f}, {la:.2f} after, on {res['cores']} "
          "cores): the times are not to be trusted")
print("\noutput checks (last hidden state, bench's batch 1):")
for k, c in check.items():
    if "reason" in c:
        print(f"  {k}: {'FAILED' if c['gate'] else 'not compared'}: {c['reason']}")
        continue
    m = c["rel_l2"] if c["measure"] == "rel" else c["max_abs_diff"]
    what = "relative L2 error" if c["measure"] == "rel" else "max abs diff"
    bound = f" (bound {c['tolerance']:g})" if c["tolerance"] is not None else " (reported only)"
    verdict = "" if c["tolerance"] is None else (": ok" if c["within"] else (": FAILED" if c["gate"] else ": over the bound"))
    extra = f", max abs diff {c['max_abs_diff']:.3g}" if c["measure"] == "rel" else ""
    print(f"  {k}: {what} {m:.3g}{bound}{extra}{verdict}")
for f in failed:
    print(f"\nleft out: {f['variant']}: `{f['command']}`: {f['message']}")
if out:
    tmpout = out + ".tmp"
    with open(tmpout, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    os.replace(tmpout, out)
    print(f"\nresults written to {out}")
EOF

"$py" -c 'import json,sys; sys.exit(0 if all(c["ok"] for c in json.load(open(sys.argv[1])).values()) else 1)' \
        "$tmp/check.json" || die "an output check failed (see above)"
