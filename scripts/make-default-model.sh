#!/bin/sh
# Remakes models/sst2-bert-4l256.gguf, the bundled default model, from the SST-2 teacher
# checkpoint in ../shared/fixtures/trained with our own converter (weights stored as fp16).
# Usage: scripts/make-default-model.sh [path/to/dsactl]
set -eu
cd "$(dirname "$0")/.."
dsactl=${1:-./build/cli/dsactl}
shared=${DSA_SHARED:-../shared}
"$dsactl" import "$shared/fixtures/trained/sst2-bert-4l256" -o models/sst2-bert-4l256.gguf --type f16
ls -l models/sst2-bert-4l256.gguf
