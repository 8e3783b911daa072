#!/usr/bin/env python3
"""ONNX Runtime side of dsa's BERT benchmark through ORT's Python package, for machines where
the npm package cannot be installed (no npm registry) but `pip` onnxruntime is there: the same
inputs, options and JSON line as ort-bench.mjs, so compress-vs-ort.sh --ort python reads both
alike. Usage: ort-bench.py --model bert.onnx [--seq 128] [--batch 1] [--threads N] [--runs R]
              [--warmup W] [--dump FILE]
--dump writes last_hidden_state as raw little-endian float32 (B,T,C), for the numeric check."""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def make_ids(B, T, V, cls, sep):
    """The generator of cli/bench.c and ort-bench.mjs: [CLS] + LCG ids in [1000, V) + [SEP],
    every row its own seed."""
    ids = np.empty((B, T), dtype=np.int64)
    for b in range(B):
        x = (0x9E3779B9 + b) & 0xFFFFFFFF
        for t in range(T):
            x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
            ids[b, t] = cls if t == 0 else sep if t == T - 1 else 1000 + (x >> 8) % (V - 1000)
    return ids


def main():
    ap = argparse.ArgumentParser(prog="ort-bench.py")
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dump")
    a = ap.parse_args()
    if a.seq < 1 or a.batch < 1 or a.threads < 1 or a.runs < 1 or a.warmup < 0:
        ap.error("--seq, --batch, --threads and --runs want >= 1, --warmup >= 0")

    B, T = a.batch, a.seq
    # The benchmark model's vocabulary: bert-base-uncased's size and special ids.
    feeds = {"input_ids": make_ids(B, T, 30522, 101, 102),
             "attention_mask": np.ones((B, T), dtype=np.int64),
             "token_type_ids": np.zeros((B, T), dtype=np.int64)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    want = ["last_hidden_state"]
    out = None
    for _ in range(a.warmup):
        out = sess.run(want, feeds)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter_ns()
        out = sess.run(want, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    if a.dump:
        np.ascontiguousarray(out[0], dtype="<f4").tofile(a.dump)

    s = sorted(times)
    n = len(s)
    # Same rule as dsactl bench: nearest rank, the smallest time with at least p*n at or below it.
    q = lambda p: s[max(math.ceil(p * n) - 1, 0)]
    median = s[(n - 1) // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    sys.stdout.write(json.dumps({
        "runtime": f"onnxruntime (Python) {ort.__version__}", "model": a.model, "seq": T, "batch": B,
        "threads": a.threads, "runs": a.runs, "latency_ms_median": median, "latency_ms_p90": q(0.9),
        "latency_ms_min": s[0], "tokens_per_s": B * T / (median / 1e3)}) + "\n")


if __name__ == "__main__":
    main()
