#!/usr/bin/env python3
"""SST-2 dev accuracy through `dsactl classify --json`, against the reference.

Usage: sst2-accuracy.py DSACTL MODEL SHARED ACC_TOL LOGIT_TOL [WANT]
Pipes every sentence of SHARED/data/glue_sst2/dev.tsv through dsactl, checks the accuracy is
within ACC_TOL of train_info.json's dev_accuracy (or of WANT, for a model of our own such as
the distilled default model, whose accuracy scripts/make-default-model.sh measured) and
(LOGIT_TOL > 0) that every logit is within LOGIT_TOL of dev_logits.safetensors. Prints the
figures; exit 1 on a miss, 77 without SHARED.
"""
import json, os, struct, subprocess, sys

dsactl, model, shared, acc_tol, logit_tol = sys.argv[1:6]
acc_tol, logit_tol = float(acc_tol), float(logit_tol)
teacher = os.path.join(shared, "fixtures/trained/sst2-bert-4l256")
dev = os.path.join(shared, "data/glue_sst2/dev.tsv")
if not os.path.isdir(teacher) or not os.path.isfile(dev):
    print(f"SKIP: SST-2 accuracy: {shared} not found (set DSA_SHARED)")
    sys.exit(77)

rows = [l.rstrip("\n").split("\t") for l in open(dev, encoding="utf-8")][1:]
texts, labels = [r[0] for r in rows], [int(r[1]) for r in rows]
out = subprocess.run([dsactl, "classify", "-m", model, "--json"], input="\n".join(texts) + "\n",
                     capture_output=True, text=True, check=True).stdout.splitlines()
res = [json.loads(l) for l in out]
assert len(res) == len(texts), f"{len(res)} results for {len(texts)} texts"
for r, t in zip(res, texts):
    assert r["text"] == t, f"text mismatch: {r['text']!r} vs {t!r}"
    assert set(r) == {"text", "label", "label_id", "logits", "probs"}, r.keys()
acc = sum(r["label_id"] == y for r, y in zip(res, labels)) / len(labels)
want = json.load(open(os.path.join(teacher, "train_info.json")))["dev_accuracy"]
if len(sys.argv) > 6:
    want = float(sys.argv[6])
ok = abs(acc - want) <= acc_tol
print(f"sst2 dev accuracy {acc:.4f} (reference {want:.4f}, tolerance {acc_tol})")

if logit_tol > 0:
    with open(os.path.join(teacher, "dev_logits.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    (name, info), = [(k, v) for k, v in hdr.items() if k != "__metadata__"]
    assert info["dtype"] == "F32" and info["shape"] == [len(texts), 2], info
    b, e = info["data_offsets"]
    ref = struct.unpack(f"<{(e - b) // 4}f", data[b:e])
    err = max(abs(x - y) for r, i in zip(res, range(len(res))) for x, y in zip(r["logits"], ref[2 * i:2 * i + 2]))
    print(f"max |logit - reference| = {err:.3g} (tolerance {logit_tol})")
    ok = ok and err <= logit_tol
sys.exit(0 if ok else 1)
