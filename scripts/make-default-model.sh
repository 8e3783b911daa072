#!/bin/sh
# Re-creates the two bundled models from ../shared (the SST-2 teacher sst2-bert-4l256 and GLUE
# SST-2) with dsa's own tools:
#   - models/sst2-bert-4l256.gguf, the teacher as fp16 (dsactl import --type f16) with its SST-2
#     dev accuracy recorded (dsactl eval --record), which the tests and the variant ladder use
#     (dsad ranks a model's variants by accuracy kept against it);
#   - models/sst2-distilled-int8.gguf, the default model README's first command serves, made by
#     dsa's trainer:
#   1. dsactl distill: a student layers=2,hidden=128,heads=4,ffn=512 from the teacher (started
#      from its most important parts), response + feature + relation losses, one epoch of SST-2 train;
#   2. dsactl distill --student ... --qat int8: quantization-aware distillation of that student,
#      which writes the real int8 variant (int8 matrices with trained static input ranges, int8
#      token embeddings);
#   3. dsactl eval on SST-2 dev, recorded in the file (dsa.variant.eval.sst2.accuracy).
# Takes about 15 minutes on 2 cores. Usage: scripts/make-default-model.sh [--teacher-only]
set -eu
cd "$(dirname "$0")/.."
export OPENBLAS_CORETYPE=Haswell
out=models/sst2-distilled-int8.gguf
shared=${DSA_SHARED:-../shared}
teacher=$shared/fixtures/trained/sst2-bert-4l256
sst=$shared/data/glue_sst2
dsactl=./build/cli/dsactl
[ -d "$teacher" ] || { echo "make-default-model: $teacher not found (set DSA_SHARED)" >&2; exit 1; }
[ -x "$dsactl" ] || { echo "make-default-model: build first (cmake --build build)" >&2; exit 1; }
$dsactl import "$teacher" -o models/sst2-bert-4l256.gguf --type f16
$dsactl eval -m models/sst2-bert-4l256.gguf --task sst2 --data "$sst/dev.tsv" --record
ls -l models/sst2-bert-4l256.gguf
[ "${1:-}" != --teacher-only ] || exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

$dsactl distill --teacher "$teacher" --student-config layers=2,hidden=128,heads=4,ffn=512 --task sst2 \
        --data "$sst/train.tsv" --eval "$sst/dev.tsv" --epochs 1 --loss response,feature,relation -o "$tmp/student.gguf"
$dsactl distill --teacher "$teacher" --student "$tmp/student.gguf" --task sst2 --data "$sst/train.tsv" \
        --eval "$sst/dev.tsv" --qat int8 --epochs 1 --max-steps 1000 --lr 5e-5 --warmup 0.05 --loss response \
        -o "$tmp/student-int8.gguf"
$dsactl eval -m "$tmp/student-int8.gguf" --task sst2 --data "$sst/dev.tsv" --record
mv "$tmp/student-int8.gguf" "$out"
ls -l "$out"
