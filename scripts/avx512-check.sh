#!/bin/sh
# This development machine has AVX2 but not AVX-512, so the AVX-512 kernel variants are checked
# on a machine that has it: this packs the kernel test binaries with the exact shared libraries
# and loader they were linked against (so the other machine's libc does not matter) into
# .avx512/avx512.tar.xz. On the AVX-512 machine:
#   tar xJf .avx512/avx512.tar.xz -C /tmp && cd /tmp/.avx512 &&
#   for t in test-kernels test-gemm-packed test-gemm-q8 test-gemm-sparse test-pool test-attention-stream; do
#     OPENBLAS_CORETYPE=Haswell ./ld-linux-x86-64.so.2 --library-path . ./$t; done
# Each test prints the worst error per kernel and ISA, and SKIPs only what the CPU lacks.
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}
cmake --build "$build" -j --target test-kernels test-gemm-packed test-gemm-q8 test-gemm-sparse test-pool test-attention-stream
rm -rf .avx512 && mkdir -p .avx512/stage/.avx512
for t in test-kernels test-gemm-packed test-gemm-q8 test-gemm-sparse test-pool test-attention-stream; do cp "$build/tests/$t" .avx512/stage/.avx512/; done
for lib in $(ldd "$build/tests/test-kernels" "$build/tests/test-gemm-packed" "$build/tests/test-gemm-q8" "$build/tests/test-attention-stream" | awk '/=>/ {print $3}' | sort -u); do
        cp -L "$lib" .avx512/stage/.avx512/
done
cp -L /lib64/ld-linux-x86-64.so.2 .avx512/stage/.avx512/
(cd .avx512/stage/.avx512 && strip --strip-unneeded test-* libopenblas.so.0 libgfortran.so.5)
tar cJf .avx512/avx512.tar.xz -C .avx512/stage .avx512
rm -rf .avx512/stage
ls -l .avx512/avx512.tar.xz
