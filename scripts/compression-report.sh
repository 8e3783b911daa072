#!/bin/bash
# Makes every variant of the SST-2 teacher (shared/fixtures/trained/sst2-bert-4l256) with
# dsactl optimize, measures each against the fp32 baseline in one run and writes
# docs/compression.md (a table, with the issue's goals marked met / not met),
# docs/compression.json (the raw numbers) and docs/compression.png (accuracy kept against
# speedup, gnuplot). Accuracy is dsactl eval on the full SST-2 dev set; speed is that eval's
# examples/s (dev's own lengths, padding-free batches) and dsactl bench --seq 128 --batch 1.
# Timings alternate fp32 and each variant ROUNDS times; speedups are ratios of medians. Each
# variant file gets its accuracy and latency --record'ed, so dsactl show lists them.
# A variant that fails to build or run gets a "failed: <reason>" row; the script goes on.
# Reports; never passes or fails on the goals. Exit 77 when the shared data is missing.
#
# Usage: scripts/compression-report.sh [--rounds N] [--calib-max N] [--out-dir DIR]
#                                      [--work-dir DIR] [--dsactl PATH] [--threads N] [--reuse]
#   --rounds     timing rounds, fp32 and every variant alternating (default 3)
#   --reuse      keep variant files already in the work dir (made by a run with the same flags)
#                and measure them again; only missing ones are made
#   --calib-max  calibration texts from train.tsv (default 512)
#   --out-dir    where compression.{md,json,png} go (default docs/)
#   --work-dir   where the variant GGUF files are kept (default build/compression-variants)
#   --dsactl     the dsactl binary (default build/cli/dsactl, building ./build when missing)
#   --threads    threads for optimize, eval and bench (default: every online core)
#   $DSA_SHARED  the shared folder with fixtures/ and data/ (default ../shared next to the repo)
set -euo pipefail

export OPENBLAS_CORETYPE=Haswell # policy: same kernels on every x86 machine we measure
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3 # Debian's; only the standard library is used
rounds=3 calib_max=512 out_dir=$root/docs work_dir=$root/build/compression-variants dsactl='' threads='' reuse=0
command_line=$(printf '%q ' "scripts/compression-report.sh" "$@")
command_line=${command_line% }

die() { echo "compression-report: $*" >&2; exit 1; }
say() { echo "compression-report: $*" >&2; }
usage() { sed -n '13,23s/^# \{0,1\}//p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
        case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --calib-max) calib_max=$2; shift 2 ;;
        --out-dir) out_dir=$2; shift 2 ;;
        --work-dir) work_dir=$2; shift 2 ;;
        --dsactl) dsactl=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --reuse) reuse=1; shift ;;
        -h|--help) usage ;;
        *) echo "compression-report: unknown argument '$1'" >&2; usage ;;
        esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number"
[[ $calib_max =~ ^[1-9][0-9]*$ ]] || die "--calib-max takes a positive number"
[ -z "$threads" ] || [[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads takes a positive number"

# --- the shared model and data
shared=${DSA_SHARED:-$root/../shared}
[ ! -d "$shared" ] || shared=$(cd "$shared" && pwd)
model=$shared/fixtures/trained/sst2-bert-4l256
train=$shared/data/glue_sst2/train.tsv dev=$shared/data/glue_sst2/dev.tsv
for f in "$model/config.json" "$train" "$dev"; do
        if [ ! -e "$f" ]; then
                echo "compression-report: $f is missing (set DSA_SHARED to the shared folder), skipping" >&2
                exit 77
        fi
done

# --- what is missing gets installed (Debian packages, as tests/bench/bert-vs-ort.sh does)
apt_install() {
        say "installing $*"
        if [ "$(id -u)" -eq 0 ]; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
        else
                sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
        fi
}
command -v gnuplot >/dev/null || apt_install gnuplot-nox
[ -x "$py" ] || apt_install python3

# --- dsactl
if [ -z "$dsactl" ]; then
        dsactl=$root/build/cli/dsactl
        if [ ! -x "$dsactl" ]; then
                cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >&2
                cmake --build "$root/build" -j"$(nproc)" --target dsactl >&2
        fi
fi
[ -x "$dsactl" ] || die "$dsactl: not an executable"
dsactl=$(cd "$(dirname "$dsactl")" && pwd)/$(basename "$dsactl")
topt=()
[ -z "$threads" ] || topt=(--threads "$threads")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$work_dir" "$out_dir" "$tmp/runs"
work_dir=$(cd "$work_dir" && pwd) out_dir=$(cd "$out_dir" && pwd)

# --- calibration texts: the first calib_max rows of train.tsv whose sentence is longer than
# 80 characters, header kept. SST-2's train set is mostly short phrases (parse-tree fragments)
# while dev holds whole sentences, so the long rows are the ones that look like what the
# variants are measured on. Never dev itself: that would tune the variants on the test set.
calib=$tmp/calib.tsv
awk -F'\t' -v max="$calib_max" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == "sentence") c = i; if (!c) exit 1; print; next }
        length($c) > 80 { print; if (++n == max) exit }' "$train" >"$calib" ||
        die "$train: no 'sentence' column"
n_calib=$(($(wc -l <"$calib") - 1))
[ "$n_calib" -gt 0 ] || die "$train: no sentence longer than 80 characters"
say "$n_calib calibration texts from $train"

# --- the variants: name, then dsactl optimize's flags (@CALIB@ stands for the calibration file,
# @TRAIN@ for SST-2's train.tsv, what recovery fine-tuning distils on). The -recovered ones
# distil the pruned model from the unpruned one for 2,000 or 4,000 steps of 32 (about one or two
# epochs). from=NAME: the variant is made from variant NAME's file instead of the model (NAME
# comes first in the list).
recover="--recover @TRAIN@ --recover-task sst2 --recover-lr 1e-4 --recover-steps"
# int8, a token schedule, then a second recovery trained with it (from a recovered variant)
retune="--quant int8 --act dynamic --token-keep auto --token-target 0.995 --calib @CALIB@ --recover @TRAIN@ --recover-task sst2 --recover-lr 5e-5 --recover-steps 2000"
variants=(
        "fp32|--quant f32"
        "f16|--quant f16"
        "bf16|--quant bf16"
        "int8-dynamic|--quant int8 --act dynamic"
        "int8-static-minmax|--quant int8 --act minmax --calib @CALIB@"
        "int8-static-p99.99|--quant int8 --act percentile --percentile 99.99 --calib @CALIB@"
        "mixed-0.995|--quant mixed --mixed-target 0.995 --calib @CALIB@"
        "heads-30|--prune-heads 0.3 --calib @CALIB@"
        "heads-30+ffn-30|--prune-heads 0.3 --prune-ffn 0.3 --calib @CALIB@"
        "ffn-50|--prune-ffn 0.5 --calib @CALIB@"
        "magnitude-50-unstructured|--sparsity 0.5 --sparsity-method magnitude --sparsity-pattern unstructured"
        "wanda-50-unstructured|--sparsity 0.5 --sparsity-method wanda --sparsity-pattern unstructured --calib @CALIB@"
        "sparsegpt-50-unstructured|--sparsity 0.5 --sparsity-method sparsegpt --sparsity-pattern unstructured --calib @CALIB@"
        "wanda-2:4|--sparsity 0.5 --sparsity-method wanda --sparsity-pattern 2:4 --calib @CALIB@"
        "magnitude-50-block16|--sparsity 0.5 --sparsity-method magnitude --sparsity-pattern block16"
        "wanda-50-block16|--sparsity 0.5 --sparsity-method wanda --sparsity-pattern block16 --calib @CALIB@"
        "tokens-auto|--token-keep auto --token-target 0.995 --calib @CALIB@"
        "combined|--quant int8 --prune-heads 0.3 --prune-ffn 0.3 --token-keep auto --token-target 0.995 --calib @CALIB@"
        "tokens-0.5-recovered|--token-keep 0.5 $recover 2000"
        "tokens-once-0.5-recovered|--token-keep 0.5,1,1 $recover 2000"
        "heads-88+ffn-88-recovered|--prune-heads 0.875 --prune-ffn 0.875 --calib @CALIB@ $recover 4000"
        "int8+heads-88+ffn-88-recovered|from=heads-88+ffn-88-recovered --quant int8 --act dynamic"
        "combined-recovered|from=heads-88+ffn-88-recovered $retune"
        "heads-75+ffn-75-recovered|--prune-heads 0.75 --prune-ffn 0.75 --calib @CALIB@ $recover 4000"
        "combined-75-recovered|from=heads-75+ffn-75-recovered $retune"
        "tokens-learned-0.5|--token-keep 0.5,1,1 --token-score learned --calib @CALIB@"
        "tokens-learned-recovered|--token-keep 0.35,0.7,0.7 --token-score learned --calib @CALIB@ $recover 2000"
        "combined-75-learned|from=heads-75+ffn-75-recovered --quant int8 --act dynamic --token-keep 0.5,1,1 --token-score learned --calib @CALIB@"
)
file_of() { echo "$work_dir/sst2-4l256-${1//:/-}.gguf"; }
flags_of() { local f=${1#*|}; f=${f//@TRAIN@/$train}; echo "${f//@CALIB@/$2}"; }

# A reason in one line from a failed step's stderr ($1) and exit status ($2): the error line
# (dsactl: WHAT: WHY), else the first line (a usage error), with the status when it is a signal.
reason_of() {
        local l
        l=$(grep '^dsactl: ' "$1" | tail -n 1 || true)
        [ -n "$l" ] || l=$(head -n 1 "$1")
        [ -n "$l" ] || l="no message"
        [ "${2:-1}" -le 128 ] || l="$l (killed by signal $(($2 - 128)))"
        echo "${l:0:240}"
}

[ "$reuse" = 1 ] || rm -f "$work_dir"/*.gguf
made=0
ok=()
for v in "${variants[@]}"; do
        name=${v%%|*} file=$(file_of "$name")
        read -r -a flags <<<"$(flags_of "$v" "$calib")"
        src=$model
        if [[ ${flags[0]} == from=* ]]; then
                src=$(file_of "${flags[0]#from=}")
                flags=("${flags[@]:1}")
                if [ ! -e "$src" ]; then
                        echo "its input variant ${src##*/} was not made" >"$tmp/runs/$name.failed"
                        say "$name: skipping: $(cat "$tmp/runs/$name.failed")"
                        continue
                fi
        fi
        args=(optimize -m "$src" -o "$file" "${flags[@]}" --calib-max "$calib_max" "${topt[@]}")
        echo "dsactl ${args[*]}" | sed "s|$calib|calib.tsv|; s|$train|train.tsv|; s|$model|\$MODEL|; s|$work_dir/||g" \
                >"$tmp/runs/$name.cmd"
        if [ "$reuse" = 1 ] && [ -s "$file" ]; then
                say "reusing $name"
                "$dsactl" show -m "$file" --json >"$tmp/runs/$name.show.json"
                ok+=("$name")
                continue
        fi
        say "making $name"
        made=1
        t0=$(date +%s%N) rc=0
        "$dsactl" "${args[@]}" 2>"$tmp/runs/$name.optimize.log" || rc=$?
        if [ "$rc" -ne 0 ]; then
                reason_of "$tmp/runs/$name.optimize.log" "$rc" >"$tmp/runs/$name.failed"
                say "$name: optimize failed, skipping: $(cat "$tmp/runs/$name.failed")"
                [ "$name" != fp32 ] || die "the fp32 baseline failed; nothing to compare with"
                continue
        fi
        echo "$(($(date +%s%N) - t0))" | awk '{ printf "%.2f\n", $1 / 1e9 }' >"$tmp/runs/$name.optimize_s"
        "$dsactl" show -m "$file" --json >"$tmp/runs/$name.show.json"
        ok+=("$name")
done
# The original itself, imported as is: dsactl show computes accuracy kept against the
# family's model that is no variant (no dsa.variant.method), which --quant f32 is not.
"$dsactl" import "$model" -o "$work_dir/sst2-4l256-original.gguf" >/dev/null 2>"$tmp/import.log" ||
        say "importing the original failed, ignoring: $(reason_of "$tmp/import.log" 1)"

ev() { "$dsactl" eval -m "$1" --task sst2 --data "$dev" --json "${topt[@]}" "${@:2}"; }
be() { "$dsactl" bench -m "$1" --seq 128 --batch 1 --json "${topt[@]}" "${@:2}"; }

# One timed eval and bench of name, appended to its files; the first of each is --record'ed
# into the variant file.
measure() {
        local name=$1 file rec=() rc=0
        file=$(file_of "$name")
        [ ! -e "$tmp/runs/$name.failed" ] || return 0
        [ -s "$tmp/runs/$name.eval.jsonl" ] || rec=(--record)
        ev "$file" "${rec[@]}" >>"$tmp/runs/$name.eval.jsonl" 2>"$tmp/runs/$name.eval.log" || rc=$?
        if [ "$rc" -ne 0 ]; then
                echo "eval: $(reason_of "$tmp/runs/$name.eval.log" "$rc")" >"$tmp/runs/$name.failed"
                say "$name: eval failed, skipping: $(cat "$tmp/runs/$name.failed")"
                return 0
        fi
        rec=()
        [ -s "$tmp/runs/$name.bench.jsonl" ] || rec=(--record)
        be "$file" "${rec[@]}" >>"$tmp/runs/$name.bench.jsonl" 2>"$tmp/runs/$name.bench.log" || rc=$?
        if [ "$rc" -ne 0 ]; then
                echo "bench: $(reason_of "$tmp/runs/$name.bench.log" "$rc")" >"$tmp/runs/$name.failed"
                say "$name: bench failed, skipping: $(cat "$tmp/runs/$name.failed")"
        fi
}

# --- timings: fp32 before every variant, every round, so drift on a shared machine hits both.
# The load before them is other work's: a minute's pause first when variants were just made
# (the 1-minute average of the optimize runs decays to a third of itself).
[ "$made" = 0 ] || sleep 60
load_before=$(cut -d' ' -f1 /proc/loadavg)
for r in $(seq 1 "$rounds"); do
        for name in "${ok[@]}"; do
                if [ "$name" = fp32 ] || [ -e "$tmp/runs/$name.failed" ]; then continue; fi
                say "round $r/$rounds: fp32, $name"
                measure fp32
                [ ! -e "$tmp/runs/fp32.failed" ] || die "the fp32 baseline failed: $(cat "$tmp/runs/fp32.failed")"
                measure "$name"
        done
        [ "${#ok[@]}" -gt 1 ] || measure fp32
done
if [ -f "$work_dir/sst2-4l256-original.gguf" ]; then
        ev "$work_dir/sst2-4l256-original.gguf" --record >"$tmp/original.eval.json" 2>"$tmp/import.log" ||
                say "eval of the imported original failed, ignoring: $(reason_of "$tmp/import.log" 1)"
fi
load_after=$(cut -d' ' -f1 /proc/loadavg)

# --- does dsactl show list every variant with its accuracy kept?
"$dsactl" show -m "$(file_of fp32)" >"$tmp/show.txt"
"$dsactl" show -m "$(file_of fp32)" --json >"$tmp/show.json"

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
[ -n "$cpu" ] || cpu=$(uname -m)
for v in "${variants[@]}"; do echo "${v%%|*}|$(basename "$(file_of "${v%%|*}")")"; done >"$tmp/variants.txt"

"$py" - "$tmp" "$out_dir" "$model" "$dev" "$rounds" "$cpu" "$(nproc)" "${threads:-0}" "$command_line" \
        "$load_before" "$load_after" "$n_calib" <<'EOF'
import datetime, json, os, statistics, sys
tmp, out_dir, model, dev, rounds, cpu, ncpu, threads, cmdline, lb, la, n_calib = sys.argv[1:]
runs = os.path.join(tmp, "runs")

def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default

def jsonl(path):
    return [json.loads(l) for l in (read(path, "") or "").splitlines() if l.strip()]

rows = []
for line in read(os.path.join(tmp, "variants.txt")).splitlines():
    name, file = line.split("|", 1)
    r = {"variant": name, "file": file, "command": read(os.path.join(runs, name + ".cmd"))}
    failed = read(os.path.join(runs, name + ".failed"))
    ev, be = jsonl(os.path.join(runs, name + ".eval.jsonl")), jsonl(os.path.join(runs, name + ".bench.jsonl"))
    if ev:
        accs = sorted({e["accuracy"] for e in ev})
        r["accuracy"] = ev[0]["accuracy"]
        if len(accs) > 1:
            r["accuracy_varies"] = accs
        r["eval_examples"] = ev[0]["examples"]
        r["eval_eps_rounds"] = [e["examples_per_second"] for e in ev]
        r["eval_eps"] = statistics.median(r["eval_eps_rounds"])
    if be:
        r["bench_ms_rounds"] = [b["latency_ms_median"] for b in be]
        r["bench_ms"] = statistics.median(r["bench_ms_rounds"])
        r["threads"] = be[0]["threads"]
    show = read(os.path.join(runs, name + ".show.json"))
    if show:
        s = json.loads(show)
        r["weight_bytes"] = s["weight_bytes"]
        r["method"] = s["recorded"].get("method")
        r["layers"] = s["layers"]
    t = read(os.path.join(runs, name + ".optimize_s"))
    if t:
        r["optimize_seconds"] = float(t)
    if failed:
        r["failed"] = failed
    rows.append(r)

base = rows[0]
assert base["variant"] == "fp32"
for r in rows:
    if "failed" in r and "accuracy" not in r:
        continue
    if "accuracy" in r:
        r["accuracy_kept"] = r["accuracy"] / base["accuracy"]
    if "eval_eps" in r:
        r["speedup_eval"] = r["eval_eps"] / base["eval_eps"]
    if "bench_ms" in r:
        r["speedup_bench"] = base["bench_ms"] / r["bench_ms"]
    if "weight_bytes" in r:
        r["weight_ratio"] = r["weight_bytes"] / base["weight_bytes"]

# dsactl show on the fp32 file: every variant listed, each with accuracy kept?
show = json.loads(read(os.path.join(tmp, "show.json")))
listed = {v["file"]: v for v in show["variants"]}
missing = [r["file"] for r in rows if "failed" not in r and r["file"] not in listed]
no_kept = [r["file"] for r in rows if "failed" not in r and r["file"] in listed and "accuracy_kept" not in listed[r["file"]]]
orig = read(os.path.join(tmp, "original.eval.json"))
show_check = {"listed": len(listed), "missing": missing, "without_accuracy_kept": no_kept,
              "original_accuracy": json.loads(orig)["accuracy"] if orig else None,
              "text": read(os.path.join(tmp, "show.txt"))}

def g(name):
    return next((r for r in rows if r["variant"] == name), None)

# The issue's goals; speed is the eval speedup (SST-2 dev lengths).
goal_defs = [
    ("INT8: >= 99.5% accuracy kept and >= 2.5x", ["int8-dynamic", "int8-static-minmax", "int8-static-p99.99"], 0.995, 2.5),
    ("Heads 30% (+ FFN as needed): >= 99% and >= 1.25x", ["heads-30", "heads-30+ffn-30"], 0.99, 1.25),
    ("50% unstructured: >= 98%", ["magnitude-50-unstructured", "wanda-50-unstructured", "sparsegpt-50-unstructured"], 0.98, None),
    ("Token pruning: >= 99% at >= 1.5x", ["tokens-auto", "tokens-0.5-recovered", "tokens-once-0.5-recovered",
                                          "tokens-learned-0.5", "tokens-learned-recovered"], 0.99, 1.5),
    ("Combined: >= 97% at >= 4x", ["combined", "combined-recovered", "combined-75-recovered", "combined-75-learned"],
     0.97, 4.0),
    ("(int8 + heads/FFN, no token pruning: >= 97% at >= 4x)", ["int8+heads-88+ffn-88-recovered"], 0.97, 4.0),
]
goals = []
for text, names, acc, speed in goal_defs:
    for n in names:
        r = g(n)
        k, s = (r or {}).get("accuracy_kept"), (r or {}).get("speedup_eval")
        if k is None or (speed and s is None):
            met = None
        else:
            met = k >= acc and (speed is None or s >= speed)
        goals.append({"goal": text, "variant": n, "accuracy_kept": k, "speedup_eval": s,
                      "speedup_bench": (r or {}).get("speedup_bench"), "min_kept": acc, "min_speedup": speed, "met": met})

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
thr = base.get("threads", int(threads) or int(ncpu))
res = {"command": cmdline, "date": now, "cpu": cpu, "cores": int(ncpu), "threads": thr, "rounds": int(rounds),
       "model": model, "dev": dev, "calibration_texts": int(n_calib),
       "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
       "loadavg_1min": {"before": float(lb), "after": float(la)},
       "variants": rows, "goals": goals, "show_check": {k: v for k, v in show_check.items() if k != "text"}}
with open(os.path.join(out_dir, "compression.json.tmp"), "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
os.replace(os.path.join(out_dir, "compression.json.tmp"), os.path.join(out_dir, "compression.json"))

# gnuplot's data: speedup, kept %, label
with open(os.path.join(tmp, "plot.dat"), "w") as f:
    for r in rows:
        if "accuracy_kept" in r and "speedup_eval" in r:
            f.write(f'{r["speedup_eval"]:.4f} {100 * r["accuracy_kept"]:.3f} "{r["variant"]}"\n')

def fmt(v, spec, suffix=""):
    return "–" if v is None else format(v, spec) + suffix

md = []
md.append("# Compression of the SST-2 teacher: accuracy kept against speed\n")
md.append(f"Made by `{cmdline}` on {now}.\n")
md.append(f"- Model: `fixtures/trained/sst2-bert-4l256` of the shared folder "
          f"(BERT, 4 layers, hidden 256, 8 heads, FFN 1024), fp32 dev accuracy {base['accuracy']:.4f}.")
md.append(f"- Machine: {cpu}, {ncpu} online cores; {thr} threads for optimize, eval and bench; "
          f"OPENBLAS_CORETYPE={res['openblas_coretype']}.")
md.append(f"- Accuracy: `dsactl eval --task sst2` on all {base.get('eval_examples', '?')} rows of SST-2 dev. "
          f"Calibration: the first {n_calib} rows of SST-2 train longer than 80 characters (never dev).")
md.append(f"- Speed: examples/s of that eval (SST-2 dev lengths, padding-free batches) and the median "
          f"latency of `dsactl bench --seq 128 --batch 1` (10 runs after 2 warmups). Timings are medians of "
          f"{rounds} alternating round{'s' if int(rounds) != 1 else ''} (fp32, variant, fp32, next variant, ...) "
          f"on a shared machine; speedups are ratios of those medians. 1-minute load {float(lb):.2f} before the "
          f"timings (other work), {float(la):.2f} after (their own {thr} threads included).")
if float(lb) > 0.5 * int(ncpu):
    md.append(f"- **The machine was busy** (1-minute load {float(lb):.2f} on {ncpu} cores before the timings): "
              "the speed columns are not to be trusted; the accuracy columns are.")
md.append("- The `-recovered` variants are fine-tuned after pruning (`--recover`): 2,000 (tokens) or 4,000 "
          "(heads and FFN) steps of 32 SST-2 train examples, distilled from the unpruned model (its softened "
          "logits and hidden states; the labels are not used), a token schedule trained as it runs. "
          "`int8+heads-88+ffn-88-recovered` and `combined-recovered` are made from `heads-88+ffn-88-recovered` "
          "(87.5% of the heads, one per layer, and of the FFN neurons removed); `combined-recovered` then gets "
          "its token schedule and a second recovery with it (2,000 steps, lr 5e-5, distilled from "
          "`heads-88+ffn-88-recovered`); `combined-75-recovered` is made the same way from "
          "`heads-75+ffn-75-recovered` (75% of the heads, two per layer, and of the FFN neurons removed). "
          "`tokens-once-0.5-recovered` prunes half the tokens once, after the first layer "
          "(`--token-keep 0.5,1,1`). The `-learned` variants rank tokens by the learned score "
          "(`--token-score learned`: a linear read of each token's state, fitted on the calibration texts to "
          "its saliency) instead of the attention it received: `tokens-learned-0.5` keeps half after the first "
          "layer with no retraining, `tokens-learned-recovered` keeps 35%, then 70% and 70% and is recovered "
          "with that schedule, `combined-75-learned` is `heads-75+ffn-75-recovered` made int8 with half the "
          "tokens kept after the first layer (no second recovery).")
md.append(f"- Weights: resident bytes from `dsactl show --json`. Raw numbers: `compression.json`; "
          f"plot: `compression.png`.\n")
md.append("| Variant | Accuracy | Kept | Dev examples/s | Speedup (dev) | Latency s128 b1 | Speedup (s128) | Weights | vs fp32 |")
md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if "failed" in r and "accuracy" not in r:
        md.append(f"| {r['variant']} | failed: {r['failed'].replace('|', '/')} | | | | | | | |")
        continue
    note = f" (failed: {r['failed'].replace('|', '/')})" if "failed" in r else ""
    md.append(f"| {r['variant']}{note} | {fmt(r.get('accuracy'), '.4f')} | {fmt(100 * r['accuracy_kept'] if 'accuracy_kept' in r else None, '.1f', '%')} "
              f"| {fmt(r.get('eval_eps'), '.1f')} | {fmt(r.get('speedup_eval'), '.2f', 'x')} "
              f"| {fmt(r.get('bench_ms'), '.2f', ' ms')} | {fmt(r.get('speedup_bench'), '.2f', 'x')} "
              f"| {fmt(r['weight_bytes'] / 1e6 if 'weight_bytes' in r else None, '.1f', ' MB')} "
              f"| {fmt(r.get('weight_ratio'), '.2f', 'x')} |")
md.append("\nThe `dsactl optimize` flags of each variant (`$MODEL` is the model above, `calib.tsv` the "
          "calibration rows, `train.tsv` SST-2's training set):\n")
for r in rows:
    md.append(f"- {r['variant']}: `{r['command']}`" + (f" — method `{r['method']}`" if r.get("method") else ""))
md.append("\n## Goals of the issue\n")
md.append("Speed is the speedup on SST-2 dev (eval examples/s); the s128 latency speedup is shown beside it.\n")
md.append("| Goal | Variant | Kept | Speedup (dev) | Speedup (s128) | |")
md.append("|---|---|---:|---:|---:|---|")
for x in goals:
    verdict = "not measured" if x["met"] is None else ("**met**" if x["met"] else "not met")
    md.append(f"| {x['goal']} | {x['variant']} | {fmt(100 * x['accuracy_kept'] if x['accuracy_kept'] is not None else None, '.1f', '%')} "
              f"| {fmt(x['speedup_eval'], '.2f', 'x')} | {fmt(x['speedup_bench'], '.2f', 'x')} | {verdict} |")
sc = show_check
md.append("\n## `dsactl show` on the fp32 file\n")
md.append(f"{sc['listed']} GGUF files of this model listed (the variants and the imported original, whose recorded "
          f"accuracy {fmt(sc['original_accuracy'], '.4f')} is the reference for accuracy kept); "
          + ("every variant is listed" if not sc["missing"] else f"missing: {', '.join(sc['missing'])}") + "; "
          + ("every one with accuracy kept." if not sc["without_accuracy_kept"]
             else f"without accuracy kept: {', '.join(sc['without_accuracy_kept'])}.") + "\n")
md.append("```\n" + sc["text"].split("\nvariants of", 1)[-1].strip() + "\n```")
with open(os.path.join(out_dir, "compression.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md[md.index("| Variant | Accuracy | Kept | Dev examples/s | Speedup (dev) | Latency s128 b1 | Speedup (s128) | Weights | vs fp32 |"):]))
EOF

title="sst2-bert-4l256 compression: accuracy kept vs speedup ($cpu, ${threads:-$(nproc)} threads)"
gnuplot <<EOF
set terminal pngcairo size 1200,800 font ",10"
set output "$out_dir/compression.png"
set title "${title//\"/}"
set xlabel "speedup vs fp32 (dsactl eval examples/s on SST-2 dev)"
set ylabel "accuracy kept (%)"
set grid
set key bottom left
set offsets graph 0.05, graph 0.25, graph 0.05, graph 0.05
plot "$tmp/plot.dat" using 1:2 with points pt 7 ps 1.2 title "variant", \
     "" using 1:2:3 with labels left offset 0.8,0.3 font ",8" notitle, \
     99 with lines dashtype 2 lw 1.5 title "99% kept"
EOF
say "wrote $out_dir/compression.md, compression.json and compression.png; variants in $work_dir"
