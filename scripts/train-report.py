#!/usr/bin/env python3
"""Turns scripts/train-report.sh's measurements (JSON Lines) into docs/training.json and the
tables of docs/training.md. Usage: train-report.py RESULTS.jsonl OUT.json OUT.md"""
import json
import sys

TEACHER_ACC = None


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def fmt_pct(x):
    return f"{100 * x:.1f}%"


def main():
    src, out_json, out_md = sys.argv[1:4]
    # A name measured again (scripts/train-report.sh --only ... --reuse) keeps its first place
    # and its last figures.
    by = {}
    for r in load(src):
        by[r["name"]] = r
    rows = list(by.values())
    with open(out_json, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    t = by.get("teacher")
    md = ["# Training: distillation, quantization-aware training, GLUE fine-tuning", "",
          "Made by `scripts/train-report.sh` (which ran every command below and measured each model with",
          "`dsactl eval` on the GLUE dev set and `dsactl bench --seq 64`, one thread, teacher and students",
          "in the same run); the raw figures are in `docs/training.json`. Teacher: `../shared`'s",
          "sst2-bert-4l256 (4 layers, hidden 256, 8 heads, FFN 1024, fp32).", ""]
    if t:
        md += ["## Distillation (SST-2)", "",
               "Student `layers=2,hidden=128,heads=4,ffn=512`, started from the teacher's most important",
               "channels, heads and neurons of layers 1 and 3 (`--fresh`: HF's random start instead), one",
               "epoch over SST-2 train (2,105 steps of 32), lr 3e-4, temperature 2.", "",
               "| losses | dev accuracy | kept | file size | smaller | dev examples/s | faster | latency (seq 64) |",
               "|---|---|---|---|---|---|---|---|",
               f"| teacher (fp32) | {t['accuracy']:.4f} | 100% | {t['file_bytes'] / 1e6:.1f} MB | 1.0x | "
               f"{t['eval_examples_per_s']:.0f} | 1.0x | {t['latency_ms_seq64']:.2f} ms |"]
        for name, label in [("distill response", "response"), ("distill response+feature", "response + feature"),
                            ("distill response+relation", "response + relation"),
                            ("distill response+feature+relation", "response + feature + relation"),
                            ("distill response, fresh student", "response, fresh student"),
                            ("default model (distilled, QAT int8)",
                             "bundled default: all three, then QAT int8 (`scripts/make-default-model.sh`)")]:
            r = by.get(name)
            if not r:
                continue
            md.append(f"| {label} | {r['accuracy']:.4f} | {fmt_pct(r['accuracy'] / t['accuracy'])} | "
                      f"{r['file_bytes'] / 1e6:.1f} MB | {t['file_bytes'] / r['file_bytes']:.2f}x | "
                      f"{r['eval_examples_per_s']:.0f} | {r['eval_examples_per_s'] / t['eval_examples_per_s']:.2f}x | "
                      f"{r['latency_ms_seq64']:.2f} ms |")
        md.append("")
        # The same runs with other seeds (scripts/train-report.sh --seeds "42 7"): the spread
        # says how much of the differences above is noise.
        seeded = {}
        for r in rows:
            for tag in ["response", "response+feature", "response+relation", "response+feature+relation"]:
                if r["name"] == f"distill {tag}" or r["name"].startswith(f"distill {tag} (seed "):
                    seed = r["name"].split("(seed ")[1].rstrip(")") if "(seed " in r["name"] else "42"
                    seeded.setdefault(tag, {})[seed] = r["accuracy"]
        seeds = sorted({sd for v in seeded.values() for sd in v}, key=int)
        if len(seeds) > 1:
            md += ["Across seeds (`--seed`: dropout masks, data order and the importance batches' order):", "",
                   "| losses | " + " | ".join(f"seed {sd}" for sd in seeds) + " | mean | kept |",
                   "|---|" + "---|" * (len(seeds) + 2)]
            for tag, v in seeded.items():
                vals = [v.get(sd) for sd in seeds]
                got = [x for x in vals if x is not None]
                mean = sum(got) / len(got)
                md.append(f"| {tag.replace('+', ' + ')} | " + " | ".join(f"{x:.4f}" if x is not None else "-" for x in vals)
                          + f" | {mean:.4f} | {fmt_pct(mean / t['accuracy'])} |")
            md.append("")
    q = by.get("int8 QAT")
    if q:
        base = t or by.get("teacher")
        md += ["## INT8: quantization-aware training against post-training quantization (SST-2)", "",
               "Post-training: `dsactl optimize --quant int8` (dynamic activation scales) and",
               "`--act minmax --calib train.tsv` (static). QAT on the labels: `dsactl train --qat int8`,",
               "1,000 steps of 32 at lr 1e-5 from the fp32 teacher. QAT by self-distillation: `dsactl distill",
               "--teacher T --student T --qat int8 --loss response,feature --w-hard 0 --dropout 0`, 300 steps",
               "at lr 1e-5: the int8 model learns the fp32 model's logits and hidden states. Every int8",
               "model here also stores its token embeddings as int8.", "",
               "| model | dev accuracy | kept | file size | latency (seq 64) |", "|---|---|---|---|---|"]
        for name in ["teacher", "int8 post-training, dynamic", "int8 post-training, static min/max", "int8 QAT",
                     "int8 QAT, self-distilled"]:
            r = by.get(name)
            if r:
                kept = fmt_pct(r["accuracy"] / base["accuracy"]) if base else "-"
                md.append(f"| {name} | {r['accuracy']:.4f} | {kept} | {r['file_bytes'] / 1e6:.1f} MB | "
                          f"{r['latency_ms_seq64']:.2f} ms |")
        md.append("")
    glue = [r for r in rows if r["task"] in ("mrpc", "rte") and " compressed: " not in r["name"]]
    if glue:
        md += ["## MRPC and RTE fine-tuning (teacher's shape)", "",
               "Three epochs; fresh start (`--fresh`, no pretraining, lr 1e-4) and from the SST-2 teacher's",
               "encoder (`--reinit-head`: its classifier re-initialised, lr 3e-5). For scale: always",
               "predicting the majority class scores 0.684 accuracy / 0.812 F1 on MRPC dev and 0.527 on RTE dev.", "",
               "| run | dev accuracy | F1 |", "|---|---|---|"]
        for r in glue:
            f1 = f"{r['f1']:.4f}" if r.get("f1") is not None else "-"
            md.append(f"| {r['name']} | {r['accuracy']:.4f} | {f1} |")
        md.append("")
    comp = [r for r in rows if " compressed: " in r["name"]]
    if comp:
        md += ["## Compression variants on MRPC and RTE", "",
               "The compression report's main variants (`docs/compression.md`) of each task's model fine-tuned",
               "from the SST-2 teacher's encoder, calibrated on the first 512 pairs of the task's train set.",
               "Kept is against that model's own dev accuracy. **These two models are at the level of the",
               "majority class** (above), so what they keep says little about the methods: a model that",
               "has learnt nothing loses nothing. The table is here because the compression issue asks for",
               "it; a pretrained encoder of this shape is what would make it informative.", "",
               "| task | variant | dev accuracy | kept | F1 |", "|---|---|---|---|---|"]
        for r in comp:
            task, name = r["name"].split(" compressed: ", 1)
            ref = by.get(f"{task} from the SST-2 teacher's encoder")
            kept = fmt_pct(r["accuracy"] / ref["accuracy"]) if ref else "-"
            f1 = f"{r['f1']:.4f}" if r.get("f1") is not None else "-"
            md.append(f"| {task.upper()} | {name} | {r['accuracy']:.4f} | {kept} | {f1} |")
        md.append("")
    pr = [r for r in rows if r["name"].startswith("heads ")]
    if pr and t:
        md += ["## Structured pruning: gradient head importance and recovery fine-tuning (SST-2)", "",
               "Half or three quarters of the teacher's 32 heads removed (`dsactl optimize --prune-heads 0.5`",
               "or `0.75`), scored on the",
               "first 512 SST-2 train sentences by the mean norm of each head's output (`output`) or by",
               "|dL/d mask_h| per example (`grad`, Michel et al., the model's own predictions as labels); then,",
               "where marked, 300 recovery steps distilling the pruned model from the unpruned one on SST-2",
               "train (`--recover train.tsv --recover-task sst2 --recover-steps 300 --recover-lr 3e-5`).", "",
               "Speed of pruned heads: `docs/compression.md`.", "",
               "| variant | dev accuracy | kept |", "|---|---|---|"]
        for r in pr:
            md.append(f"| {r['name']} | {r['accuracy']:.4f} | {fmt_pct(r['accuracy'] / t['accuracy'])} |")
        md.append("")
    tt = by.get("torch throughput")
    if tt:
        md += ["## Training throughput against PyTorch", "",
               f"`tests/bench/train-vs-torch.py`: the teacher's shape, batch {tt['batch']}, {tt['threads']} threads,",
               f"{tt['steps']} steps on SST-2 train, both in one run: dsa {tt['dsa_examples_per_s']:.1f} examples/s,",
               f"PyTorch {tt['torch_examples_per_s']:.1f} examples/s: **{tt['ratio']:.2f}x**.", ""]
    with open(out_md, "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
