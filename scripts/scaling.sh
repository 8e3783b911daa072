#!/bin/bash
# The kernel tests and the compression and batching benchmarks (tests/bench/compress-vs-ort.sh,
# tests/bench/dsad-bench.sh parts 4 and 4b) on another machine, with binaries built here: one
# with more cores than the 2 of the development VM, and with the AVX-512, VNNI, BF16 and AMX
# this VM lacks (the lent GPU host's Xeon).
#
#   scripts/scaling.sh pack [BUILD_DIR]
#       builds dsactl, dsad, bench-dsad, bench-gemm-q8 and the kernel tests and packs them, with
#       the exact shared libraries and loader they were linked against (so the other machine's
#       libc does not matter), and dbus-daemon and busctl with theirs, into
#       .scaling/scaling.tar.xz (ignored by git)
#   scripts/scaling.sh run [--out DIR] [--parts kernels,compress,dsad (in that order)]
#                          [--threads "2 16"] [--workers "1 16"] [--rounds N] [--quick]
#       on the other machine, from the repository root: unpacks the archive into /tmp/scaling
#       and runs each part there, writing text reports and JSON into DIR (default $OUT, else
#       ./scaling-out; each part's progress and report in PART.txt, its figures in PART.json,
#       8 files in all). ONNX Runtime is the Python package of python3 when it has one (its
#       npm package otherwise); both are built from the same ORT sources.
#       kernels: the kernel tests (every SIMD variant the CPU runs against the scalar
#         reference: AVX-512, VNNI, BF16, AMX), test-gemm-q8 again with the AMX kernel set aside
#         (DSA_Q8_KERNEL=avx512vnni), and bench-gemm-q8 with each int8 kernel;
#       compress: compress-vs-ort.sh at batch 1 and 8, at the thread counts given (default 2 and
#         every core), --rounds rounds (default 2) of 5 runs;
#       dsad: dsad-bench.sh parts 4 and 4b (16 clients, batching on vs off), with each worker
#         count given (default 1: one request at a time over every core, and one worker per
#         core: dsad's default), --rounds rounds.
# The figures are reports, never pass/fail; the machine, its CPU flags and load go with them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The kernel tests whose AVX-512, VNNI, BF16 and AMX variants this VM cannot run: each checks
# every variant the CPU runs against the scalar reference and SKIPs only what the CPU lacks.
kernel_tests="test-kernels test-gemm-packed test-gemm-q8 test-gemm-sparse test-pool test-attention-stream"

die() { echo "scaling: $*" >&2; exit 1; }
say() { echo "scaling: $*" >&2; }

pack() {
        local build=${1:-build} st=.scaling/stage/scaling b
        [ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" >&2
        cmake --build "$build" -j --target dsactl dsad bench-dsad bench-gemm-q8 $kernel_tests >&2
        rm -rf .scaling && mkdir -p "$st/bin" "$st/lib"
        cp "$build/cli/dsactl" "$build/daemon/dsad" "$build/tests/bench-dsad" "$build/tests/bench-gemm-q8" "$st/lib/"
        for b in $kernel_tests; do cp "$build/tests/$b" "$st/lib/"; done
        cp "$(command -v dbus-daemon)" "$(command -v busctl)" "$st/lib/"
        for b in dsactl dsad bench-dsad bench-gemm-q8 dbus-daemon busctl $kernel_tests; do
                # The program runs under the packed loader, with the packed libraries only.
                printf '#!/bin/sh\nd=$(cd "$(dirname "$0")/../lib" && pwd)\nexec "$d/ld-linux-x86-64.so.2" --library-path "$d" "$d/%s" "$@"\n' \
                        "$b" >"$st/bin/$b"
                chmod +x "$st/bin/$b"
                ldd "$st/lib/$b" | awk '/=>/ && $3 ~ /^\// {print $3}'
        done | sort -u | while read -r lib; do cp -L "$lib" "$st/lib/"; done
        cp -L /lib64/ld-linux-x86-64.so.2 "$st/lib/"
        cp /usr/share/dbus-1/session.conf "$st/"
        (cd "$st/lib" && strip --strip-unneeded ./* 2>/dev/null || true)
        tar cJf .scaling/scaling.tar.xz -C .scaling/stage scaling
        rm -rf .scaling/stage
        ls -l .scaling/scaling.tar.xz >&2
}

run() {
        local out=${OUT:-$PWD/scaling-out} parts=kernels,compress,dsad threads= workers= quick=0 ort=node rounds=2 runs=5
        while [ $# -gt 0 ]; do
                case $1 in
                --out) out=$2; shift 2 ;;
                --parts) parts=$2; shift 2 ;;
                --threads) threads=$2; shift 2 ;;
                --workers) workers=$2; shift 2 ;;
                --rounds) rounds=$2; shift 2 ;;
                --quick) quick=1; shift ;;
                *) die "run: unknown option '$1'" ;;
                esac
        done
        [ -s .scaling/scaling.tar.xz ] || die "no .scaling/scaling.tar.xz: run 'scripts/scaling.sh pack' first"
        mkdir -p "$out"
        rm -rf /tmp/scaling && tar xJf .scaling/scaling.tar.xz -C /tmp
        local bin=/tmp/scaling/bin n
        n=$(nproc)
        [ -n "$threads" ] || threads="2 $n"
        [ -n "$workers" ] || workers="1 $n"
        export PATH=$bin:$PATH OPENBLAS_CORETYPE=Haswell
        if [ -z "${DSA_PYTHON:-}" ]; then
                # The first Python with numpy and onnx (the model's writer needs them).
                for DSA_PYTHON in "$(command -v python3)" /usr/bin/python3; do
                        "$DSA_PYTHON" -c 'import numpy, onnx' 2>/dev/null && break
                done
        fi
        export DSA_PYTHON DSA_DBUS_CONFIG=/tmp/scaling/session.conf
        "$DSA_PYTHON" -c 'import onnxruntime' 2>/dev/null && ort=python
        [ "$quick" = 0 ] || rounds=1 runs=2 # after --rounds: --quick wins
        {
                echo "cores: $n"
                grep -m1 '^model name' /proc/cpuinfo || true
                echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx512_bf16|amx_int8|amx_bf16|avx_vnni)$' | tr '\n' ' ')"
                grep -m1 MemTotal /proc/meminfo || true
                echo "loadavg: $(cat /proc/loadavg)"
                echo "python: $DSA_PYTHON; ORT: $ort"
                "$bin/dsactl" --version 2>&1 | head -1 || true
        } | tee "$out/machine.txt" >&2
        local p w
        for p in ${parts//,/ }; do
                case $p in
                kernels)
                        say "kernel tests and bench-gemm-q8"
                        {
                                for t in $kernel_tests; do
                                        echo "== $t"
                                        "$bin/$t" && echo "== $t: passed" || echo "== $t: FAILED ($?)"
                                done
                                echo "== test-gemm-q8 with DSA_Q8_KERNEL=avx512vnni"
                                DSA_Q8_KERNEL=avx512vnni "$bin/test-gemm-q8" && echo "== test-gemm-q8 (vnni): passed" ||
                                        echo "== test-gemm-q8 (vnni): FAILED ($?)"
                                echo "== bench-gemm-q8 (one thread)"
                                "$bin/bench-gemm-q8"
                                echo "== bench-gemm-q8 with DSA_Q8_KERNEL=avx512vnni"
                                DSA_Q8_KERNEL=avx512vnni "$bin/bench-gemm-q8"
                        } >"$out/kernels.txt" 2>&1
                        grep -E '^== |SKIP|kernel|FAIL|x [0-9]+ x' "$out/kernels.txt" >&2 || true ;;
                compress)
                        say "compress-vs-ort, threads $threads"
                        tests/bench/compress-vs-ort.sh "$bin/dsactl" --ort "$ort" --threads "$threads" --rounds "$rounds" \
                                --runs "$runs" --warmup 2 --out "$out/compress.json" >"$out/compress.txt" 2>&1 ||
                                say "compress-vs-ort failed"
                        tail -40 "$out/compress.txt" >&2 ;;
                dsad)
                        for w in $workers; do
                                say "dsad-bench parts 4 and 4b, $w worker(s)"
                                tests/bench/dsad-bench.sh --bin "$bin" --workers "$w" --parts 4,4b --rounds "$rounds" \
                                        $([ "$quick" = 1 ] && echo --quick) --out "$out/dsad-w$w.json" \
                                        >"$out/dsad-w$w.txt" 2>&1 || say "dsad-bench --workers $w failed"
                                tail -32 "$out/dsad-w$w.txt" >&2
                        done ;;
                *) die "run: unknown part '$p' (kernels, compress, dsad)" ;;
                esac
        done
}

case ${1:-} in
pack) shift; pack "$@" ;;
run) shift; run "$@" ;;
*) sed -n '2,29s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
