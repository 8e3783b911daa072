#!/usr/bin/env python3
"""dsactl train, dsactl distill and dsactl optimize's training options through the real binary,
on bert-tiny and SST-2 in ../shared, a few steps each: a fine-tuned model that dsactl eval scores
as train did; a checkpoint that records its step, loads as a model and resumes to the end; a
plain model and a QAT mismatch refused as checkpoints; usage errors (exit 2) and a bad label in
the data named by file and line (exit 1); distillation into a smaller student with every loss;
QAT giving an int8 model; gradient head pruning with recovery fine-tuning. What each run wrote
is read back with the small GGUF reader below (keys, tensor types), not only taken from the
JSON. The unit test tests/unit/test-train.c checks the numbers (learning, exact resume,
gradients); this one checks the verbs around them.

Usage: test-train.py DSACTL SOURCE_DIR SHARED
Exit 77 when SHARED (../shared) is missing.
"""
import json, os, struct, subprocess, sys, tempfile

import clitest
from clitest import check, run

dsactl, src, shared = clitest.args('dsactl train', 'fixtures/hf/bert-tiny', 'data/glue_sst2/train.tsv', 'data/glue_sst2/dev.tsv')
model = os.path.join(shared, "fixtures/hf/bert-tiny")
train = os.path.join(shared, "data/glue_sst2/train.tsv")
dev = os.path.join(shared, "data/glue_sst2/dev.tsv")

# Every run: 512 training examples, one thread (the same numbers on every machine), a few steps.
COMMON = ["--task", "sst2", "--data", train, "--limit", "512", "--threads", "1"]
STEPS = 30


def run_json(what, *args):
    """A run with --json that must succeed with one JSON line on stdout; returns it ({} if not)."""
    rc, out, err = run(*args, "--json")
    lines = out.splitlines()
    check(rc == 0 and len(lines) == 1, f"{what}: exit {rc}, {len(lines)} lines on stdout {err.strip()[-300:]!r}")
    if rc != 0 or len(lines) != 1:
        return {}
    return json.loads(lines[0])


def expect_fail(code, what, args, want=()):
    """Exit code, stderr's first line from dsactl naming each of want, nothing on stdout."""
    rc, out, err = run(*args)
    lines = err.strip().splitlines()
    head = lines[0] if lines else ""
    check(rc == code and head.startswith("dsactl") and all(w in head for w in want) and out == "",
          f"{what}: exit {rc} (want {code}), stderr {head!r}")


# ---- a small GGUF v3 reader: keys and tensor infos (little-endian, as dsa writes it)

GGUF_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
T_I8 = 24


def gguf(path):
    """(keys, {tensor name: (ne, type)})."""
    b = open(path, "rb").read()
    pos = 8

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def string():
        nonlocal pos
        n = take("Q")
        s = b[pos:pos + n].decode()
        pos += n
        return s

    def value(t):
        if t == GGUF_STRING:
            return string()
        if t == GGUF_ARRAY:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(GGUF_FMT[t])

    assert b[:4] == b"GGUF" and struct.unpack_from("<I", b, 4)[0] == 3, path
    n_tensors, n_kv = take("Q"), take("Q")
    keys = {}
    for _ in range(n_kv):
        k = string()
        keys[k] = value(take("I"))
    tensors = {}
    for _ in range(n_tensors):
        name = string()
        ne = [take("Q") for _ in range(take("I"))]
        tensors[name] = (ne, take("I"))
        take("Q")
    return keys, tensors


with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "finetuned.gguf")
    ckpt = os.path.join(tmp, "ckpt.gguf")

    # (1) Fine-tuning: JSON, the file, and dsactl eval of it giving train's own dev accuracy.
    o = run_json("train", "train", "-m", model, *COMMON, "--eval", dev, "-o", out, "--max-steps", str(STEPS))
    acc = o.get("accuracy", -1)
    check(o.get("steps") == STEPS and 0 <= acc <= 1 and o.get("output") == out and os.path.isfile(out),
          f"train: steps {o.get('steps')} (want {STEPS}), accuracy {acc}")
    if os.path.isfile(out):
        keys, _ = gguf(out)
        check(keys.get("dsa.variant.method") == "finetune" and keys.get("dsa.variant.train.steps") == str(STEPS),
              f"train: the file records method {keys.get('dsa.variant.method')!r}, "
              f"steps {keys.get('dsa.variant.train.steps')!r}")
    e = run_json("eval of the trained model", "eval", "-m", out, "--task", "sst2", "--data", dev)
    check(abs(e.get("accuracy", -2) - acc) < 1e-6, f"eval: accuracy {e.get('accuracy')} (train said {acc})")

    # (2) Checkpoints: every 10 steps to 20, then resumed to STEPS.
    o = run_json("train with checkpoints", "train", "-m", model, *COMMON, "-o", os.path.join(tmp, "to20.gguf"),
                 "--max-steps", "20", "--checkpoint", ckpt, "--checkpoint-every", "10")
    check(o.get("steps") == 20 and os.path.isfile(ckpt), f"checkpointed run: steps {o.get('steps')}")
    if os.path.isfile(ckpt):
        keys, tensors = gguf(ckpt)
        check(keys.get("dsa.train.step") == 20 and keys.get("dsa.train.qat") is False
              and any(n.startswith("train.adam_m.") for n in tensors),
              f"checkpoint: step {keys.get('dsa.train.step')}, qat {keys.get('dsa.train.qat')}, AdamW moments")
    rc, _, err = run("show", "-m", ckpt)
    check(rc == 0, f"a checkpoint loads as a model (dsactl show): exit {rc} {err.strip()!r}")
    resumed = os.path.join(tmp, "resumed.gguf")
    o = run_json("resume", "train", "-m", model, *COMMON, "--eval", dev, "-o", resumed, "--max-steps", str(STEPS),
                 "--resume", ckpt)
    check(o.get("steps") == STEPS and 0 <= o.get("accuracy", -1) <= 1 and os.path.isfile(resumed),
          f"resumed run: steps {o.get('steps')} (want {STEPS})")
    expect_fail(1, "resume from a model that is no checkpoint",
                ["train", "-m", model, *COMMON, "-o", os.path.join(tmp, "x.gguf"), "--max-steps", "5",
                 "--resume", out], want=("training checkpoint",))
    expect_fail(1, "resume a checkpoint without QAT with --qat",
                ["train", "-m", model, *COMMON, "-o", os.path.join(tmp, "x.gguf"), "--max-steps", "5",
                 "--qat", "int8", "--resume", ckpt], want=("QAT",))
    check(not os.path.exists(os.path.join(tmp, "x.gguf")), "a failed resume writes no output")

    # (3) Usage errors exit 2; a bad label exits 1 naming the file and line.
    base = ["train", "-m", model, "--data", train, "-o", os.path.join(tmp, "x.gguf")]
    expect_fail(2, "train without --task", base, want=("--task",))
    expect_fail(2, "train --qat int4", base + ["--task", "sst2", "--qat", "int4"], want=("--qat",))
    for lr in ("abc", "0", "2", "-1e-3"):
        expect_fail(2, f"train --lr {lr}", base + ["--task", "sst2", "--lr", lr], want=("--lr",))
    expect_fail(2, "train without -o", ["train", "-m", model, "--task", "sst2", "--data", train])
    expect_fail(2, "distill without a student",
                ["distill", "--teacher", model, "--task", "sst2", "--data", train, "-o", os.path.join(tmp, "x.gguf")],
                want=("--student",))
    expect_fail(2, "distill --loss bogus",
                ["distill", "--teacher", model, "--student-config", "layers=1", "--task", "sst2", "--data", train,
                 "-o", os.path.join(tmp, "x.gguf"), "--loss", "response,bogus"], want=("--loss",))
    bad = os.path.join(tmp, "bad.tsv")
    with open(bad, "w") as f:
        f.write("sentence\tlabel\na fine film\t1\na dull film\t0\nan odd one\t7\nthe end\t1\n")
    expect_fail(1, "a label out of range", ["train", "-m", model, "--task", "sst2", "--data", bad,
                                            "-o", os.path.join(tmp, "x.gguf")], want=(f"{bad}:4",))
    with open(bad, "w") as f:
        f.write("sentence\tlabel\na fine film\t1\na dull film\tmaybe\n")
    expect_fail(1, "a label that is no class", ["train", "-m", model, "--task", "sst2", "--data", bad,
                                                "-o", os.path.join(tmp, "x.gguf")], want=(f"{bad}:3",))

    # (4) Distillation into a smaller student, every loss on.
    student = os.path.join(tmp, "student.gguf")
    o = run_json("distill", "distill", "--teacher", model, "--student-config", "layers=1,hidden=32,heads=2,ffn=64",
                 *COMMON, "--eval", dev, "-o", student, "--max-steps", "20", "--loss", "response,feature,relation")
    check(o.get("steps") == 20 and 0 <= o.get("accuracy", -1) <= 1, f"distill: steps {o.get('steps')}, "
          f"accuracy {o.get('accuracy')}")
    if os.path.isfile(student):
        keys, tensors = gguf(student)
        shape = (keys.get("bert.block_count"), keys.get("bert.embedding_length"), keys.get("bert.attention.head_count"),
                 keys.get("bert.feed_forward_length"))
        check(shape == (1, 32, 2, 64) and keys.get("dsa.variant.method") == "distill"
              and not any(n.startswith("distill.") for n in tensors),
              f"distill: the student is layers, hidden, heads, ffn {shape} (want (1, 32, 2, 64)), "
              f"without the projections")

    # A distillation checkpoint carries the feature projections; it resumes into a new student.
    dckpt = os.path.join(tmp, "distill-ckpt.gguf")
    args = ["distill", "--teacher", model, "--student-config", "layers=1,hidden=32,heads=2,ffn=64", *COMMON,
            "--loss", "response,feature,relation", "--checkpoint", dckpt, "--checkpoint-every", "10"]
    o = run_json("distill with checkpoints", *args, "-o", os.path.join(tmp, "d20.gguf"), "--max-steps", "20")
    if os.path.isfile(dckpt):
        keys, tensors = gguf(dckpt)
        check(keys.get("dsa.train.step") == 20 and "train.extra.distill.proj.0" in tensors,
              f"distill checkpoint: step {keys.get('dsa.train.step')}, with the projections")
    o = run_json("distill resumed", *args, "-o", os.path.join(tmp, "d30.gguf"), "--max-steps", "30", "--resume", dckpt)
    check(o.get("steps") == 30, f"distill resumed: steps {o.get('steps')} (want 30)")

    # (5) QAT: an int8 model.
    qat = os.path.join(tmp, "qat.gguf")
    o = run_json("train --qat int8", "train", "-m", model, *COMMON, "-o", qat, "--max-steps", "10", "--qat", "int8")
    check(o.get("steps") == 10, f"qat: steps {o.get('steps')}")
    rc, text, _ = run("show", "-m", qat)
    check(rc == 0 and "int8" in text, "qat: dsactl show says int8")
    if os.path.isfile(qat):
        keys, tensors = gguf(qat)
        i8 = [n for n, (_, t) in tensors.items() if t == T_I8]
        check(keys.get("dsa.variant.quant") == "int8" and "blk.0.attn_q.weight" in i8 and "blk.1.ffn_down.weight" in i8,
              f"qat: {len(i8)} I8 tensors, quant {keys.get('dsa.variant.quant')!r}")

    # (6) Structured pruning by gradient head importance, then recovery fine-tuning.
    pruned = os.path.join(tmp, "pruned.gguf")
    rc, _, err = run("optimize", "-m", model, "-o", pruned, "--prune-heads", "0.25", "--head-importance", "grad",
                     "--calib", dev, "--calib-max", "64", "--recover", train, "--recover-task", "sst2",
                     "--recover-steps", "10", "--threads", "1")
    check(rc == 0, f"optimize --head-importance grad --recover: exit {rc} {err.strip()[-300:]!r}")
    if rc == 0:
        keys, _ = gguf(pruned)
        heads = keys.get("dsa.bert.head_count_per_layer", [])
        check(sum(heads) == 6 and keys.get("dsa.variant.head_importance") == "gradient"
              and keys.get("dsa.variant.recover_steps") == "10",
              f"optimize: heads per layer {heads} (want 6 of 8 kept), importance "
              f"{keys.get('dsa.variant.head_importance')!r}, recovery {keys.get('dsa.variant.recover_steps')!r}")
        e = run_json("eval of the pruned model", "eval", "-m", pruned, "--task", "sst2", "--data", dev)
        check(0 <= e.get("accuracy", -1) <= 1, f"eval of the pruned model: accuracy {e.get('accuracy')}")

clitest.done()
