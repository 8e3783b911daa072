#!/usr/bin/env python3
"""dsactl on the long-context decoder (../shared/fixtures/trained/longlm-4l256) through the real
binary: eval --task ppl matches transformers' per-document NLL (eval_docs.json) for the first
documents, as token ids and (for a Hugging Face folder and our GGUF alike) in --json; optimize
--attention makes local, fixed, linear and DSA variants (the DSA scorer fitted on WikiText-2)
that load, record what was done and keep fewer blocks; eval of a DSA variant reports blocks kept
per document; the token scorer with block summaries (--att-scorer token --att-summary) is
fitted, recorded and keeps perplexity with few blocks; --quant int8 makes an int8 decoder
within 1% of its fp32 perplexity, and what decoders cannot do yet is refused; bench --attention prints one row per length and variant; bad options exit 2 and
a BERT model refuses --task ppl with exit 1.

Usage: test-attention.py DSACTL SOURCE_DIR SHARED
Exit 77 when SHARED is missing.
"""
import json, os, subprocess, sys, tempfile

import clitest
from clitest import check, run

dsactl, src, shared = clitest.args('dsactl attention', 'fixtures/trained/longlm-4l256', 'data/wikitext2_raw/wiki.test.raw')
model = os.path.join(shared, "fixtures/trained/longlm-4l256")
docs = os.path.join(model, "eval_docs.safetensors")
calib = os.path.join(shared, "data/wikitext2_raw/wiki.test.raw")
bert = os.path.join(shared, "fixtures/trained/sst2-bert-4l256")

# Per-document mean NLL against transformers' (fp32 sums in another order).
RTOL_NLL = 2e-5
N_DOCS = 2


want = json.load(open(os.path.join(model, "eval_docs.json")))
rc, out, err = run("eval", "-m", model, "--task", "ppl", "--data", docs, "--limit", str(N_DOCS), "--json")
check(rc == 0, f"eval --task ppl exits 0 ({err.strip()})")
dense = json.loads(out) if rc == 0 else {"docs": []}
for i, d in enumerate(dense["docs"]):
    ref = want[i]["nll"]
    check(abs(d["nll"] - ref) <= RTOL_NLL * ref and d["tokens"] == want[i]["tokens"],
          f"doc {i}: NLL {d['nll']:.7f} vs transformers {ref:.7f}, {d['tokens']} tokens")
check(dense.get("blocks_kept") == 1.0, "dense computes every causal block")

with tempfile.TemporaryDirectory() as tmp:
    files = {}
    for name, args in [("local", ["--attention", "local", "--att-window", "4"]),
                       ("fixed", ["--attention", "fixed", "--att-random", "2"]),
                       ("linear", ["--attention", "linear"]),
                       ("dsa", ["--attention", "dsa", "--att-mass", "0.9", "--calib", calib, "--calib-max", "300"])]:
        out_path = os.path.join(tmp, name + ".gguf")
        rc, out, err = run("optimize", "-m", model, "-o", out_path, *args)
        check(rc == 0 and os.path.isfile(out_path), f"optimize --attention {name} ({err.strip()[-200:]})")
        files[name] = out_path
    rc, out, err = run("show", "-m", files["dsa"])
    check(rc == 0 and "attention = dsa" in out and "scorer_kl" in out, "show lists the DSA variant's facts")
    # A DSA ablation reuses the fitted scorer without --calib.
    abl = os.path.join(tmp, "dsa-count.gguf")
    rc, out, err = run("optimize", "-m", files["dsa"], "-o", abl, "--attention", "dsa", "--att-blocks", "6")
    check(rc == 0, f"an ablation reuses the scorer ({err.strip()[-200:]})")
    rc, out, err = run("optimize", "-m", model, "-o", abl, "--attention", "dsa")
    check(rc == 1 and "calib" in err, "DSA without a scorer or --calib is refused")

    # The token scorer with block summaries: fitted in closed form, recorded, and it keeps the
    # perplexity within 3% of dense with under a third of the blocks on these documents (all
    # 161: +0.3% at 15.5%, docs/attention.md).
    tok = os.path.join(tmp, "dsa-token.gguf")
    rc, out, err = run("optimize", "-m", model, "-o", tok, "--attention", "dsa", "--att-scorer", "token",
                       "--att-block", "32", "--att-mass", "0.7", "--att-cap", "12", "--att-summary",
                       "--calib", calib, "--calib-max", "300")
    check(rc == 0 and "token scorer: rank 16" in err, f"optimize --att-scorer token ({err.strip()[-200:]})")
    rc, out, err = run("show", "-m", tok)
    check(rc == 0 and "scorer=token,rank=16,stride=4,summary" in out, "show names the token scorer and summaries")
    rc, out, err = run("eval", "-m", tok, "--task", "ppl", "--data", docs, "--limit", str(N_DOCS), "--json")
    r = json.loads(out) if rc == 0 else {}
    check(rc == 0 and 0 < r["blocks_kept"] < 0.33 and r["ppl"] < dense["ppl"] * 1.03,
          f"token scorer: blocks kept {r.get('blocks_kept')}, ppl {r.get('ppl')} (dense {dense.get('ppl')})")
    # A kept token scorer keeps its stride unless one is given; a pooled one is not a token one.
    tok2, tok3 = os.path.join(tmp, "dsa-token2.gguf"), os.path.join(tmp, "dsa-token3.gguf")
    rc2, _, err2 = run("optimize", "-m", tok, "-o", tok2, "--attention", "dsa", "--att-block", "32", "--att-stride", "8",
                       "--att-blocks", "9")
    rc3, _, err3 = run("optimize", "-m", tok2, "-o", tok3, "--attention", "dsa", "--att-block", "32", "--att-mass", "0.7")
    rc, out, err = run("show", "-m", tok3)
    check(rc2 == 0 and rc3 == 0 and rc == 0 and "scorer=token,rank=16,stride=8" in out,
          f"a kept token scorer keeps its stride ({(err2 + err3).strip()[-200:]})")
    rc, out, err = run("optimize", "-m", files["dsa"], "-o", abl, "--attention", "dsa", "--att-scorer", "token")
    check(rc == 1 and "--calib" in err, "a pooled scorer is not kept as a token one")
    # Query blocks over the kernels' 64 rows: a scorer fitted and an oracle run at block 128.
    b128 = os.path.join(tmp, "dsa-128.gguf")
    rc, out, err = run("optimize", "-m", model, "-o", b128, "--attention", "dsa", "--att-block", "128",
                       "--calib", calib, "--calib-max", "50")
    check(rc == 0, f"a DSA scorer fitted at block 128 ({err.strip()[-200:]})")
    rc, out, err = run("optimize", "-m", model, "-o", b128, "--attention", "dsa", "--att-oracle", "--att-block", "128")
    rc2, out2, err2 = run("eval", "-m", b128, "--task", "ppl", "--data", docs, "--limit", "1", "--json")
    check(rc == 0 and rc2 == 0 and json.loads(out2)["ppl"] > 0, f"the oracle at block 128 ({err2.strip()[-200:]})")
    rc, out, err = run("optimize", "-m", model, "-o", abl, "--attention", "dense", "--att-summary")
    check(rc == 1 and "summar" in err, "summaries with dense attention are refused")
    rc, out, err = run("optimize", "-m", model, "-o", abl, "--attention", "dsa", "--att-scorer", "tokens")
    check(rc == 2, "an unknown --att-scorer exits 2")
    rc, out, err = run("optimize", "-m", model, "-o", abl, "--attention", "local", "--att-summary-window", "3")
    rc2, out2, err2 = run("eval", "-m", abl, "--task", "ppl", "--data", docs, "--limit", "1", "--json")
    ok = rc == 0 and rc2 == 0 and "summary=3" in json.loads(out2)["attention"] and json.loads(out2)["ppl"] > 0
    check(ok, f"a summary window is stored and runs ({(err + err2).strip()[-200:]})")
    rc, out, err = run("optimize", "-m", model, "-o", abl, "--attention", "local", "--att-summary-window", "0")
    check(rc == 2, "--att-summary-window 0 exits 2")
    if os.path.isdir(bert):
        rc, out, err = run("optimize", "-m", bert, "-o", abl, "--attention", "dsa", "--att-scorer", "token",
                           "--calib", calib, "--calib-max", "10")
        check(rc == 1 and "decoder" in err, "a BERT model refuses the token scorer")

    for name in ("dsa", "local"):
        rc, out, err = run("eval", "-m", files[name], "--task", "ppl", "--data", docs, "--limit", str(N_DOCS), "--json")
        r = json.loads(out) if rc == 0 else {}
        ok = rc == 0 and 0 < r["blocks_kept"] < 1 and all(0 < d["blocks_kept"] < 1 for d in r["docs"])
        check(ok, f"eval of {name}: blocks kept {r.get('blocks_kept')}, ppl {r.get('ppl')} (dense {dense.get('ppl')})")
        if name == "dsa" and rc == 0:
            check(r["ppl"] < dense["ppl"] * 1.05, "DSA at mass 0.9 keeps perplexity within 5% on these documents")

    # int8 weights for a decoder, on top of an attention variant: recorded, a quarter of the
    # bytes, perplexity within 1% of the fp32 variant's (measured +0.2% on 40 documents)
    q8 = os.path.join(tmp, "dsa-int8.gguf")
    rc, out, err = run("optimize", "-m", files["dsa"], "-o", q8, "--quant", "int8")
    check(rc == 0 and "+int8" in err, f"optimize --quant int8 of a decoder ({err.strip()[-200:]})")
    if rc == 0:
        rc, out, err = run("show", "-m", q8)
        check(rc == 0 and "qkv int8" in out and "quant = int8" in out and "attention dsa" in out,
              "the int8 decoder keeps its attention variant and says int8")
        check(os.path.getsize(q8) < os.path.getsize(files["dsa"]) * 0.3, "int8 weights take under 30% of the bytes")
        ev = {}
        for name, path in (("fp32", files["dsa"]), ("int8", q8)):
            rc, out, err = run("eval", "-m", path, "--task", "ppl", "--data", docs, "--limit", str(N_DOCS), "--json")
            ev[name] = json.loads(out)["ppl"] if rc == 0 else float("nan")
        check(abs(ev["int8"] / ev["fp32"] - 1) < 0.01, f"int8 perplexity {ev['int8']:.4f} within 1% of fp32's {ev['fp32']:.4f}")
    for args, why in ((["--quant", "int8", "--act", "minmax"], "dynamic activation scales"),
                      (["--quant", "mixed"], "BERT-only"), (["--prune-ffn", "0.3"], "BERT-only")):
        rc, out, err = run("optimize", "-m", files["dsa"], "-o", abl, *args)
        check(rc == 1 and why in err, f"a decoder refuses {' '.join(args)} ({err.strip()[-200:]})")

    rc, out, err = run("bench", "--attention", ",".join([files["local"], files["dsa"], files["linear"]]),
                       "--lengths", "256,1024", "--data", docs, "--runs", "2", "--json")
    r = json.loads(out) if rc == 0 else {"variants": []}
    check(rc == 0 and len(r["variants"]) == 3 and all(len(v["results"]) == 2 for v in r["variants"]),
          f"bench --attention: 3 variants x 2 lengths ({err.strip()[-200:]})")
    for i, v in enumerate(r["variants"]):
        for x in v["results"]:
            # the medians of the rounds' ratios: exactly 1 for the baseline against itself
            med = (x.get("attention_x_median", -1), x.get("forward_x_median", -1))
            check(med == (1.0, 1.0) if i == 0 else all(0 < m < 1e6 for m in med),
                  f"bench --attention paired medians of {v['attention']} at {x['tokens']}: {med}")
            parts = (x.get("rows_ms", -1), x.get("select_ms", -1), x.get("attend_ms", -1))
            linear = v["attention"].startswith("linear")
            # each phase lies inside the attention time: rows is wall time, select and attend a
            # thread's share of theirs (no phase for linear attention but the rows)
            ok = all(p >= 0 for p in parts) and parts[0] > 0 and sum(parts) <= x["attention_ms"] * 1.02 + 0.5
            ok = ok and ((parts[1] == 0 and parts[2] == 0) if linear else (parts[1] > 0 and parts[2] > 0))
            check(ok, f"bench --attention phases of {v['attention']} at {x['tokens']}: {parts}, "
                      f"attention {x['attention_ms']} ms")

rc, out, err = run("bench", "--attention", model, "--lengths", "abc")
check(rc == 2, "bench --attention with a bad length exits 2")
rc, out, err = run("optimize", "-m", model, "-o", "/tmp/x.gguf", "--att-mass", "0.5")
check(rc == 2, "--att-* without --attention exits 2")
rc, out, err = run("optimize", "-m", model, "-o", "/tmp/x.gguf", "--attention", "sparse")
check(rc == 2, "an unknown --attention kind exits 2")
if os.path.isdir(bert):
    rc, out, err = run("eval", "-m", bert, "--task", "ppl", "--data", docs)
    check(rc == 1 and "decoder" in err, "a BERT model refuses --task ppl")

clitest.done()
