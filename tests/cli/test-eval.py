#!/usr/bin/env python3
"""dsactl eval through the real binary: SST-2 dev accuracy of the teacher (HF folder and the
bundled GGUF) against train_info.json, example by example agreement with dsactl classify, every
row of MRPC and RTE parsed (counted against Python's csv reader with QUOTE_NONE, as the GLUE
loaders read them) and run through the sentence-pair path, and damaged files and bad usage
refused with one line on stderr.

Usage: test-eval.py DSACTL SOURCE_DIR SHARED
Exit 77 when SHARED (../shared) is missing.
"""
import csv, json, os, subprocess, sys, tempfile

dsactl, src, shared = sys.argv[1:4]
teacher = os.path.join(shared, "fixtures/trained/sst2-bert-4l256")
bundled = os.path.join(src, "models/sst2-bert-4l256.gguf")
data = {t: os.path.join(shared, f"data/glue_{t}/dev.tsv") for t in ("sst2", "mrpc", "rte")}
if not os.path.isdir(teacher) or not all(os.path.isfile(p) for p in data.values()):
    print(f"SKIP: dsactl eval: {shared} not found (set DSA_SHARED)")
    sys.exit(77)
failures = 0


def run(*args, stdin=None):
    p = subprocess.run([dsactl, *args], input=stdin, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


def expect_fail(code, args, what, want=()):
    rc, out, err = run(*args)
    lines = err.strip().splitlines()
    check(rc == code and len(lines) == 1 and lines[0].startswith("dsactl") and all(w in err for w in want)
          and out == "", f"{what}: exit {rc} (want {code}), stderr {err.strip()!r}")


def glue_rows(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def eval_json(model, task, *extra):
    rc, out, err = run("eval", "-m", model, "--task", task, "--data", data[task], "--json", *extra)
    check(rc == 0 and len(out.splitlines()) == 1, f"eval {task} on {os.path.basename(model)}: exit {rc} {err.strip()}")
    return json.loads(out) if rc == 0 else {}


want = json.load(open(os.path.join(teacher, "train_info.json")))["dev_accuracy"]
keys = {"task", "model", "examples", "accuracy", "macro_f1", "seconds", "examples_per_second"}

with tempfile.TemporaryDirectory() as tmp:
    # (1) SST-2: the reference accuracy, and the predictions of dsactl classify.
    pred = os.path.join(tmp, "pred.jsonl")
    o = eval_json(teacher, "sst2", "--predictions", pred)
    header, rows = glue_rows(data["sst2"])
    check(set(o) == keys and o.get("task") == "sst2" and o.get("examples") == len(rows),
          f"sst2 --json keys and {o.get('examples')} examples (want {len(rows)})")
    check(abs(o.get("accuracy", -1) - want) <= 0.001, f"teacher sst2 accuracy {o.get('accuracy')} (want {want:.4f} +- 0.001)")
    print(f"sst2: {o.get('examples_per_second')} examples/s, {o.get('seconds')} s")
    preds = [json.loads(l) for l in open(pred)]
    labels = [int(r[header.index("label")]) for r in rows]
    check([p["index"] for p in preds] == list(range(len(rows))) and [p["label"] for p in preds] == labels
          and all(set(p) == {"index", "label", "predicted", "logits"} for p in preds),
          "--predictions: one line per example, in order, with the file's labels")
    acc = sum(p["label"] == p["predicted"] for p in preds) / len(preds)
    check(abs(acc - o.get("accuracy", -1)) < 1e-6, "--predictions agree with the reported accuracy")
    texts = [r[header.index("sentence")] for r in rows]
    rc, out, _ = run("classify", "-m", teacher, "--json", stdin="\n".join(texts) + "\n")
    cls = [json.loads(l) for l in out.splitlines()]
    check(rc == 0 and len(cls) == len(preds) and all(c["label_id"] == p["predicted"] for c, p in zip(cls, preds)),
          "eval predicts what dsactl classify predicts, example by example")
    check(all(c["logits"] == p["logits"] for c, p in zip(cls, preds)), "... with the same logits")

    o = eval_json(bundled, "sst2")
    check(abs(o.get("accuracy", -1) - want) <= 0.002, f"bundled GGUF sst2 accuracy {o.get('accuracy')} (want {want:.4f} +- 0.002)")

    rc, out, err = run("eval", "-m", bundled, "--task", "sst2", "--data", data["sst2"], "--limit", "10",
                       "--threads", "1", "--predictions", pred)
    check(rc == 0 and "accuracy:" in out and "examples/s" in out and "10 examples" in out
          and len(open(pred).readlines()) == 10, f"plain output, --limit 10: {out!r} {err.strip()}")

    # (2) MRPC and RTE: every row, through the pair path (the SST-2 model is only a 2-class
    # model here: accuracy means nothing, parsing does).
    for task, label_col in (("mrpc", "Quality"), ("rte", "label")):
        header, rows = glue_rows(data[task])
        o = eval_json(bundled, task, "--predictions", pred)
        check(o.get("examples") == len(rows) and 0 <= o.get("accuracy", -1) <= 1
              and ("f1" in o) == (task == "mrpc") and 0 <= o.get("f1", 0) <= 1,
              f"{task}: {o.get('examples')} examples (csv QUOTE_NONE: {len(rows)}), accuracy {o.get('accuracy')}")
        labels = [int(r[header.index(label_col)]) for r in rows]
        check([json.loads(l)["label"] for l in open(pred)] == labels, f"{task}: labels as the csv reader reads them")

    # Pairs matter: the same first sentences alone classify differently somewhere.
    header, rows = glue_rows(data["rte"])
    single = os.path.join(tmp, "single.tsv")
    with open(single, "w") as f:
        f.write("sentence\tlabel\n" + "".join(f"{r[0]}\t{r[2]}\n" for r in rows[:20]))
    a = run("eval", "-m", bundled, "--task", "rte", "--data", data["rte"], "--limit", "20", "--predictions", pred)
    pa = [json.loads(l)["logits"] for l in open(pred)]
    b = run("eval", "-m", bundled, "--task", "sst2", "--data", single, "--predictions", pred)
    pb = [json.loads(l)["logits"] for l in open(pred)]
    check(a[0] == 0 and b[0] == 0 and len(pa) == len(pb) == 20 and pa != pb, "rte runs sentence pairs, not sentence1 alone")

    # Label names: RTE's original GLUE layout has entailment/not_entailment; a BOM and CRLF.
    names = os.path.join(tmp, "rte-names.tsv")
    with open(names, "w", newline="") as f:
        f.write("\ufeffindex\tsentence1\tsentence2\tlabel\r\n")
        for i, r in enumerate(rows[:30]):
            f.write(f"{i}\t{r[0]}\t{r[1]}\t{['entailment', 'not_entailment'][int(r[2])]}\r\n")
    rc, out, err = run("eval", "-m", bundled, "--task", "rte", "--data", names, "--json", "--predictions", pred)
    check(rc == 0 and json.loads(out)["examples"] == 30 and [json.loads(l)["label"] for l in open(pred)]
          == [int(r[2]) for r in rows[:30]],
          f"rte with label names, BOM and CRLF: {err.strip()}")

    # (3) damaged files: exit 1, one line naming the file (and the line).
    def tsv(name, text):
        p = os.path.join(tmp, name)
        open(p, "w").write(text)
        return p
    m = ["eval", "-m", bundled, "--task", "sst2", "--data"]
    p = tsv("nocol.tsv", "text\tlabel\ngood\t1\n")
    expect_fail(1, m + [p], "missing column", [p, "sentence"])
    p = tsv("short.tsv", "sentence\tlabel\ngood\t1\nbad row\n")
    expect_fail(1, m + [p], "short row", [f"{p}:3"])
    p = tsv("long.tsv", "sentence\tlabel\ngood\t1\t2\n")
    expect_fail(1, m + [p], "row with an extra field", [f"{p}:2"])
    p = tsv("badlabel.tsv", "sentence\tlabel\ngood\t1\nfine\tmaybe\n")
    expect_fail(1, m + [p], "bad label", [f"{p}:3", "maybe"])
    p = tsv("range.tsv", "sentence\tlabel\ngood\t2\n")
    expect_fail(1, m + [p], "label out of the model's range", [f"{p}:2", "range"])
    p = tsv("empty.tsv", "")
    expect_fail(1, m + [p], "empty file", [p])
    p = tsv("header.tsv", "sentence\tlabel\n")
    expect_fail(1, m + [p], "header only", [p])
    expect_fail(1, m + [os.path.join(tmp, "missing.tsv")], "nonexistent file", ["missing.tsv"])
    expect_fail(1, ["eval", "-m", os.path.join(tmp, "missing.gguf"), "--task", "sst2", "--data", data["sst2"]],
                "nonexistent model")
    expect_fail(1, ["eval", "-m", bundled, "--task", "mrpc", "--data", data["sst2"]], "sst2 file for mrpc", ["#1 String"])
    expect_fail(1, ["eval", "-m", bundled, "--task", "ppl", "--data", data["sst2"]], "--task ppl on a BERT",
                ["needs a decoder"])
    expect_fail(1, ["eval", "-m", bundled, "--task", "lambada", "--data", data["sst2"]], "--task lambada",
                ["not implemented yet"])
    expect_fail(1, m + [data["sst2"], "--predictions", os.path.join(tmp, "no/such/dir.jsonl")],
                "--predictions into a missing folder")

# usage
d = data["sst2"]
expect_fail(2, ["eval", "--task", "sst2", "--data", d], "no -m")
expect_fail(2, ["eval", "-m", bundled, "--data", d], "no --task")
expect_fail(2, ["eval", "-m", bundled, "--task", "cola", "--data", d], "unknown --task")
expect_fail(2, ["eval", "-m", bundled, "--task", "sst2"], "no --data")
expect_fail(2, ["eval", "-m", bundled, "--task", "sst2", "--data", d, "--limit", "0"], "--limit 0")
expect_fail(2, ["eval", "-m", bundled, "--task", "sst2", "--data", d, "--threads", "x"], "--threads x")
expect_fail(2, ["eval", "-m", bundled, "--task", "sst2", "--data", d, "extra"], "extra argument")
expect_fail(2, ["eval", "-m", bundled, "--task", "sst2", "--data", d, "--bogus"], "unknown option")
expect_fail(2, ["eval", "-m", bundled, "--task", "sst2", "--data"], "--data without a value")
check(run("eval", "--help")[0] == 0 and "eval -m MODEL" in run("--help")[1], "eval in --help")

print(f"{failures} failed")
sys.exit(1 if failures else 0)
