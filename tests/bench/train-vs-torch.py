#!/usr/bin/env python3
"""Training throughput of dsa's trainer against PyTorch on the CPU, same model, data and threads.

    train-vs-torch.py DSACTL MODEL_DIR TRAIN.tsv [--steps N] [--batch B] [--threads T]

MODEL_DIR: a Hugging Face BertForSequenceClassification folder (../shared's SST-2 teacher).
Both sides train the same model on the first 20 x B x N examples of TRAIN.tsv (SST-2), batches of
B examples of similar length (runs of 50 batches sorted by length, as dsa's trainer batches),
dropout 0.1, AdamW with clipping, for N steps after 5 untimed ones, T threads each:
  - ours: dsactl train --max-steps N --threads T --json (its examples/s of the training loop);
  - PyTorch (Debian python3-torch): the plain-torch BERT of tests/parity/train-step-torch.py
    (checked there against transformers' outputs), tokenized by dsactl tokenize so both see the
    same ids, torch.set_num_threads(T).
Prints both and the ratio ours / PyTorch (the goal is >= 1). Exits 77 without torch.
"""
import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"SKIP: needs python3-torch: {e}")
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tstep", os.path.join(here, "..", "parity", "train-step-torch.py"))
tstep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tstep)


def batches(examples, B, seed):
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    run = 50 * B
    for a in range(0, len(order), run):
        order[a:a + run] = sorted(order[a:a + run], key=lambda i: len(examples[i][0]))
    out = [order[i:i + B] for i in range(0, len(order), B)]
    rng.shuffle(out)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dsactl")
    ap.add_argument("model")
    ap.add_argument("train")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    n = a.batch * (a.steps + 5)
    tmp = os.path.join("/tmp", f"dsa-bench-train-{os.getpid()}.gguf")

    # The examples, tokenized by dsactl (so both sides see the same ids).
    with open(a.train, encoding="utf-8-sig") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:n + 1]
    texts = [r[0] for r in rows]
    labels = [int(r[1]) for r in rows]
    tok = subprocess.run([a.dsactl, "tokenize", "-m", a.model, "--json"], input="\n".join(texts) + "\n",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    examples = [(json.loads(line)["ids"], y) for line, y in zip(tok, labels)]

    # Ours.
    env = dict(os.environ, OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE", "Haswell"))
    out = subprocess.run([a.dsactl, "train", "-m", a.model, "--task", "sst2", "--data", a.train, "--limit", str(n),
                          "--max-steps", str(a.steps), "--batch", str(a.batch), "--threads", str(a.threads),
                          "-o", tmp, "--json"], capture_output=True, text=True, env=env, check=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])["examples_per_second"]
    os.unlink(tmp)

    # PyTorch.
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    m = tstep.Bert(a.model)
    params = list(m.p.values())
    decay = [v for k, v in m.p.items() if not (k.endswith("bias") or "LayerNorm.weight" in k)]
    nodecay = [v for k, v in m.p.items() if k.endswith("bias") or "LayerNorm.weight" in k]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=5e-5)
    seen, t0 = 0, None
    for step, idx in enumerate(batches(examples, a.batch, 42)[:a.steps + 5]):
        if step == 5:
            t0, seen = time.perf_counter(), 0
        T = max(len(examples[i][0]) for i in idx)
        ids = torch.zeros(len(idx), T, dtype=torch.long)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        for r, i in enumerate(idx):
            e = examples[i][0]
            ids[r, :len(e)] = torch.tensor(e)
            mask[r, :len(e)] = 1
        y = torch.tensor([examples[i][1] for i in idx])
        loss = F.cross_entropy(m.forward(ids, mask, torch.zeros_like(ids), dropout=0.1), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        seen += len(idx)
    theirs = seen / (time.perf_counter() - t0)
    print(f"training examples/s, batch {a.batch}, {a.threads} threads, {a.steps} steps:")
    print(f"  dsa      {ours:8.1f}")
    print(f"  PyTorch  {theirs:8.1f}  (torch {torch.__version__})")
    print(f"  ratio    {ours / theirs:8.2f}x")
    print(json.dumps({"dsa_examples_per_s": ours, "torch_examples_per_s": theirs, "ratio": ours / theirs,
                      "batch": a.batch, "threads": a.threads, "steps": a.steps}))


if __name__ == "__main__":
    main()
