#!/bin/sh
# Runs the training measurements of docs/training.md with dsactl, from ../shared's GLUE sets and
# SST-2 teacher, and writes docs/training.json (one JSON object per measured model) and
# docs/training.md (the tables):
#   - distillation into layers=2,hidden=128,heads=4,ffn=512 with response only, + feature,
#     + relation and all three (each from the same start, the same steps);
#   - SST-2 int8: post-training (dynamic, static min/max) against quantization-aware training;
#   - MRPC and RTE fine-tuning of the teacher's shape from a fresh start (no pretraining) and
#     from the SST-2 teacher's encoder;
#   - structured pruning of half and three quarters of the heads: gradient against output-norm
#     importance, with and without recovery fine-tuning;
#   - training throughput against PyTorch (tests/bench/train-vs-torch.py).
# Accuracy comes from dsactl eval on the dev sets; speed from dsactl eval's examples/s over the
# SST-2 dev set and dsactl bench, teacher and student measured in this same run, one thread.
# Usage: scripts/train-report.sh [--epochs E] [--work DIR] [--only distill|qat|glue|prune|torch] [--reuse]
#                                [--seeds "42 7"]   (distillation runs, one student per seed and loss set)
#   --reuse keeps models already in the work folder (re-measures them only).
set -eu
cd "$(dirname "$0")/.."
export OPENBLAS_CORETYPE=Haswell
epochs=1
work=build/train-report
only=""
reuse=0
seeds=42
while [ $# -gt 0 ]; do
        case "$1" in
        --epochs) epochs=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --reuse) reuse=1; shift ;;
        --seeds) seeds=$2; shift 2 ;;
        *) echo "usage: $0 [--epochs E] [--work DIR] [--only distill|qat|glue|prune|torch] [--reuse] [--seeds LIST]" >&2
           exit 2 ;;
        esac
done
shared=${DSA_SHARED:-../shared}
teacher=$shared/fixtures/trained/sst2-bert-4l256
glue=$shared/data
[ -d "$teacher" ] || { echo "train-report: $teacher not found (set DSA_SHARED)" >&2; exit 1; }
dsactl=./build/cli/dsactl
[ -x "$dsactl" ] || { echo "train-report: build first (cmake --build build)" >&2; exit 1; }
mkdir -p "$work" docs
json=$work/results.jsonl
# --only appends to the results of earlier runs; a full run starts them afresh.
[ -n "$only" ] || : > "$json"
student="layers=2,hidden=128,heads=4,ffn=512"

# measure NAME MODEL TASK: dev accuracy (and F1), dev examples/s and bench latency, as one line.
measure() {
        name=$1 model=$2 task=$3
        ev=$($dsactl eval -m "$model" --task "$task" --data "$glue/glue_$task/dev.tsv" --threads 1 --json)
        be=$($dsactl bench -m "$model" --seq 64 --runs 50 --threads 1 --json 2>/dev/null)
        size=$(stat -c %s "$model")
        python3 - "$name" "$task" "$model" "$size" "$ev" "$be" >> "$json" <<'EOF'
import json, sys
name, task, model, size, ev, be = sys.argv[1:7]
e, b = json.loads(ev), json.loads(be)
print(json.dumps({"name": name, "task": task, "model": model, "file_bytes": int(size),
                  "accuracy": e["accuracy"], "f1": e.get("f1"), "eval_examples_per_s": e["examples_per_second"],
                  "latency_ms_seq64": b["latency_ms_median"]}))
EOF
        tail -n 1 "$json" >&2
}

run() { # run OUT ARGS...: skips when --reuse and OUT exists
        out=$1
        shift
        if [ "$reuse" = 1 ] && [ -f "$out" ]; then return 0; fi
        "$dsactl" "$@" -o "$out"
}

sst=$glue/glue_sst2
if [ -z "$only" ] || [ "$only" = distill ]; then
        run "$work/teacher-f32.gguf" import "$teacher"
        measure teacher "$work/teacher-f32.gguf" sst2
        for seed in $seeds; do
                for losses in response response,feature response,relation response,feature,relation; do
                        tag=$(echo "$losses" | tr ',' '+')
                        v=student-$tag name="distill $tag"
                        [ "$seed" = 42 ] || v=$v-s$seed name="$name (seed $seed)"
                        run "$work/$v.gguf" distill --teacher "$teacher" --student-config "$student" --task sst2 \
                                --data "$sst/train.tsv" --eval "$sst/dev.tsv" --epochs "$epochs" --loss "$losses" \
                                --seed "$seed"
                        measure "$name" "$work/$v.gguf" sst2
                done
        done
        measure "default model (distilled, QAT int8)" models/sst2-distilled-int8.gguf sst2
        run "$work/student-scratch.gguf" distill --teacher "$teacher" --student-config "$student" --task sst2 \
                --data "$sst/train.tsv" --eval "$sst/dev.tsv" --epochs "$epochs" --loss response --fresh
        measure "distill response, fresh student" "$work/student-scratch.gguf" sst2
fi
if [ -z "$only" ] || [ "$only" = qat ]; then
        run "$work/teacher-f32.gguf" import "$teacher"
        run "$work/ptq-dynamic.gguf" optimize -m "$teacher" --quant int8
        measure "int8 post-training, dynamic" "$work/ptq-dynamic.gguf" sst2
        run "$work/ptq-minmax.gguf" optimize -m "$teacher" --quant int8 --act minmax --calib "$sst/train.tsv" \
                --calib-max 512
        measure "int8 post-training, static min/max" "$work/ptq-minmax.gguf" sst2
        run "$work/qat.gguf" train -m "$teacher" --task sst2 --data "$sst/train.tsv" --eval "$sst/dev.tsv" \
                --qat int8 --epochs 1 --max-steps 1000 --lr 1e-5 --warmup 0.05
        measure "int8 QAT" "$work/qat.gguf" sst2
        # QAT by self-distillation: the int8 model learns the fp32 model's logits and hidden
        # states (identity projections) instead of the labels, so it does not drift from it.
        run "$work/qat-self.gguf" distill --teacher "$teacher" --student "$teacher" --task sst2 \
                --data "$sst/train.tsv" --eval "$sst/dev.tsv" --qat int8 --loss response,feature --w-hard 0 \
                --dropout 0 --lr 1e-5 --max-steps 300
        measure "int8 QAT, self-distilled" "$work/qat-self.gguf" sst2
fi
if [ -z "$only" ] || [ "$only" = glue ]; then
        for task in mrpc rte; do
                d=$glue/glue_$task
                run "$work/$task-fresh.gguf" train -m "$teacher" --fresh --task $task --data "$d/train.tsv" \
                        --eval "$d/dev.tsv" --epochs 3 --lr 1e-4
                measure "$task fresh start" "$work/$task-fresh.gguf" $task
                run "$work/$task-from-sst2.gguf" train -m "$teacher" --reinit-head --task $task --data "$d/train.tsv" \
                        --eval "$d/dev.tsv" --epochs 3 --lr 3e-5
                measure "$task from the SST-2 teacher's encoder" "$work/$task-from-sst2.gguf" $task
                # The compression report's main variants of that model, calibrated on the task's
                # train set (512 pairs).
                for v in "int8 dynamic|--quant int8 --act dynamic" \
                        "int8 static min/max|--quant int8 --act minmax" \
                        "30% of heads and FFN removed|--prune-heads 0.3 --prune-ffn 0.3" \
                        "50% unstructured (Wanda)|--sparsity 0.5 --sparsity-method wanda" \
                        "half the tokens after layer 0 (learned score)|--token-keep 0.5,1,1 --token-score learned"; do
                        name=${v%%|*} flags=${v#*|}
                        file=$work/$task-$(printf '%s' "$name" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-').gguf
                        # shellcheck disable=SC2086 # flags: words without spaces, split on purpose
                        run "$file" optimize -m "$work/$task-from-sst2.gguf" $flags --calib "$d/train.tsv" \
                                --calib-max 512 --quiet
                        measure "$task compressed: $name" "$file" $task
                done
        done
fi
if [ -z "$only" ] || [ "$only" = prune ]; then
        # Half and three quarters of the heads removed: the gradient importance against the
        # output-norm one, and a recovery fine-tuning of 300 steps after each.
        for frac in 50 75; do
                for imp in output grad; do
                        v=heads$frac-$imp
                        run "$work/$v.gguf" optimize -m "$teacher" --prune-heads 0.$frac --head-importance $imp \
                                --calib "$sst/train.tsv" --calib-max 512 --quiet
                        measure "heads $frac%, $imp importance" "$work/$v.gguf" sst2
                        run "$work/$v-recovered.gguf" optimize -m "$teacher" --prune-heads 0.$frac \
                                --head-importance $imp --calib "$sst/train.tsv" --calib-max 512 \
                                --recover "$sst/train.tsv" --recover-task sst2 --recover-steps 300 --recover-lr 3e-5 \
                                --quiet
                        measure "heads $frac%, $imp importance, recovered" "$work/$v-recovered.gguf" sst2
                done
        done
fi
if [ -z "$only" ] || [ "$only" = torch ]; then
        # Debian's torch is under /usr/bin/python3 (a pyenv python3 on PATH may lack it).
        py=${DSA_PYTHON:-/usr/bin/python3}
        "$py" tests/bench/train-vs-torch.py "$dsactl" "$teacher" "$sst/train.tsv" --steps 60 --threads 2 |
                tail -n 1 | python3 -c 'import json,sys; d=json.load(sys.stdin); d["name"]="torch throughput"; d["task"]="sst2"; print(json.dumps(d))' >> "$json"
fi
python3 scripts/train-report.py "$json" docs/training.json docs/training.md
