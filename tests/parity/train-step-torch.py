#!/usr/bin/env python3
"""One BERT training step in plain PyTorch, compared with what dsa's trainer wrote.

    train-step-torch.py MODEL_DIR [STEP.safetensors]

MODEL_DIR is a Hugging Face BertForSequenceClassification folder (config.json,
model.safetensors). The model is written out here in plain torch (no transformers): embeddings
(word + position + token type, LayerNorm), per layer self-attention with the padding mask added
on keys as (1 - mask) * finfo(float32).min, output dense + residual + LayerNorm, FFN with exact
(erf) GELU + residual + LayerNorm, pooler tanh(dense([CLS])), classifier, mean cross-entropy;
no dropout, fp32 on the CPU.

First it checks itself: when MODEL_DIR has reference.safetensors (transformers' own outputs), the
hidden states and logits of that batch must match to ATOL_SELF, or nothing else is worth trusting.

With STEP.safetensors (written by tests/parity/test-train-torch.c): input_ids, attention_mask,
token_type_ids, labels (I32), and the engine's loss, logits, "step0.<p>" (its parameters before
the step), "<p>" (the gradient of every parameter p, Hugging Face names), "gnorm", "lr" and
"step1.<p>" (the parameters after one AdamW step). Compared:

  - step0: bitwise equal to model.safetensors (the name mapping and the fp32 copy);
  - loss, logits and every gradient: rel = max|ours - torch| / max|torch| over the tensor
    <= RTOL_GRAD. One max over the whole tensor, not per element, so entries that are zero or
    tiny on both sides (rows of unused embeddings) cannot fail on rounding alone. The key bias
    is the exception: its gradient is zero in exact arithmetic (softmax does not change when one
    constant is added to a query's scores) so both sides are rounding noise; its error is
    divided by the scale of the same layer's key weight gradient instead;
  - gnorm (the global norm before clipping) against torch's clip_grad_norm_, rel RTOL_GRAD;
  - step1: torch.optim.AdamW (decay on everything but biases and LayerNorm weights, HF's
    convention) after clip_grad_norm_, applied to the ENGINE's gradients: Adam's first step
    is about lr * sign(g), so feeding each side its own gradients would turn rounding noise in
    near-zero gradients (the key bias above) into differences of lr. The gradients are checked
    above; this checks the optimizer. Every element within ATOL_STEP and within ULPS_STEP
    float32 ulps of its value plus 1e-5 lr, which is tight enough to see a weight decay applied
    to the wrong tensors (1e-5 * |p| per step).

Prints one line per tensor, the worst element of each; exits 1 when anything is out of
tolerance, 77 when torch or numpy is missing (ctest's skip).
"""
import json
import math
import os
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"SKIP: train-step parity needs python3-torch and python3-numpy: {e}")
    sys.exit(77)

ATOL_SELF = 1e-5
RTOL_GRAD = 1e-4
ATOL_STEP = 1e-5
ULPS_STEP = 32

LR = 1e-3
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
CLIP = 1.0

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """name -> numpy array, without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8:
        raise ValueError(f"{path}: header length {n} past the end")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        a, b = info["data_offsets"]
        shape = tuple(info["shape"])
        count = math.prod(shape)
        if not 0 <= a <= b <= len(data) - base or b - a != count * dt.itemsize:
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {a},{b}")
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=base + a).reshape(shape).copy()
    return out


class Bert:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.C = cfg["hidden_size"]
        self.H = cfg["num_attention_heads"]
        self.L = cfg["num_hidden_layers"]
        self.eps = cfg.get("layer_norm_eps", 1e-12)
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"hidden_act {act} is not modelled here")
        raw = {}
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):  # sharded: every file the index names
            with open(index) as f:
                for shard in sorted(set(json.load(f)["weight_map"].values())):
                    raw.update(read_safetensors(os.path.join(model_dir, shard)))
        else:
            raw = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.p = {}
        for k, v in raw.items():
            name = k if k.startswith(("bert.", "classifier.")) else "bert." + k
            if name.startswith("bert.embeddings.position_ids") or not v.dtype == np.float32:
                continue
            self.p[name] = torch.tensor(v, requires_grad=True)
        self.initial = {k: v.detach().clone() for k, v in self.p.items()}

    def forward(self, ids, mask, types, trace=None, dropout=0.0):
        """Logits (B, labels). dropout > 0: HF's training-mode dropout (embeddings, attention
        probabilities, both dense outputs, the pooled vector), as tests/bench/train-vs-torch.py
        trains it."""
        def drop(t):
            return F.dropout(t, dropout) if dropout > 0 else t

        P, C, eps = self.p, self.C, self.eps
        B, T = ids.shape
        e = "bert.embeddings."
        x = (P[e + "word_embeddings.weight"][ids] + P[e + "position_embeddings.weight"][:T][None]
             + P[e + "token_type_embeddings.weight"][types])
        x = drop(F.layer_norm(x, (C,), P[e + "LayerNorm.weight"], P[e + "LayerNorm.bias"], eps))
        if trace is not None:
            trace.append(x)
        ext = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        for l in range(self.L):
            k = f"bert.encoder.layer.{l}."
            A = P[k + "attention.self.query.weight"].shape[0]
            D = self.C // self.H
            NH = A // D

            def heads(t):
                return t.view(B, T, NH, D).transpose(1, 2)

            q = heads(F.linear(x, P[k + "attention.self.query.weight"], P[k + "attention.self.query.bias"]))
            kk = heads(F.linear(x, P[k + "attention.self.key.weight"], P[k + "attention.self.key.bias"]))
            v = heads(F.linear(x, P[k + "attention.self.value.weight"], P[k + "attention.self.value.bias"]))
            s = q @ kk.transpose(-1, -2) / math.sqrt(D) + ext
            ctx = (drop(torch.softmax(s, dim=-1)) @ v).transpose(1, 2).reshape(B, T, A)
            a = drop(F.linear(ctx, P[k + "attention.output.dense.weight"], P[k + "attention.output.dense.bias"]))
            x = F.layer_norm(a + x, (C,), P[k + "attention.output.LayerNorm.weight"],
                             P[k + "attention.output.LayerNorm.bias"], eps)
            h = F.gelu(F.linear(x, P[k + "intermediate.dense.weight"], P[k + "intermediate.dense.bias"]))
            o = drop(F.linear(h, P[k + "output.dense.weight"], P[k + "output.dense.bias"]))
            x = F.layer_norm(o + x, (C,), P[k + "output.LayerNorm.weight"], P[k + "output.LayerNorm.bias"], eps)
            if trace is not None:
                trace.append(x)
        pooled = x[:, 0]
        if "bert.pooler.dense.weight" in P:
            pooled = torch.tanh(F.linear(pooled, P["bert.pooler.dense.weight"], P["bert.pooler.dense.bias"]))
        return F.linear(drop(pooled), P["classifier.weight"], P["classifier.bias"])


class Report:
    def __init__(self):
        self.failed = 0

    def line(self, ok, name, n, err, what):
        if not ok:
            self.failed += 1
        print(f"{'ok  ' if ok else 'FAIL'} {name:<58} n={n:<7} {what}")

    def rel(self, name, got, want, tol, scale=None):
        """max|got - want| / max(max|want|, scale): one ratio for the whole tensor."""
        got = np.asarray(got, dtype=np.float64).ravel()
        want = np.asarray(want, dtype=np.float64).ravel()
        if got.shape != want.shape:
            self.line(False, name, want.size, math.inf, f"shape {got.shape} != {want.shape}")
            return
        diff = np.abs(got - want)
        diff[np.isnan(got) != np.isnan(want)] = math.inf
        i = int(np.argmax(diff)) if diff.size else 0
        den = max(float(np.max(np.abs(want))) if want.size else 0.0, scale or 0.0, 1e-30)
        err = float(diff[i]) if diff.size else 0.0
        r = err / den
        self.line(r <= tol, name, want.size, r,
                  f"rel={r:.3g} maxerr={err:.3g} at {i} (ours {got[i]:.7g} torch {want[i]:.7g}) scale {den:.3g}")

    def step(self, name, got, want, p0):
        got = np.asarray(got, dtype=np.float32).ravel()
        want = np.asarray(want, dtype=np.float32).ravel()
        p0 = np.asarray(p0, dtype=np.float32).ravel()
        if got.shape != want.shape:
            self.line(False, name, want.size, math.inf, f"shape {got.shape} != {want.shape}")
            return
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        diff[np.isnan(got) != np.isnan(want)] = math.inf
        ulp = np.spacing(np.maximum(np.abs(p0), np.abs(want))).astype(np.float64)
        tol = np.minimum(ATOL_STEP, ULPS_STEP * ulp + 1e-5 * LR)
        i = int(np.argmax(diff / tol))
        ok = bool(np.all(diff <= tol))
        self.line(ok, name, want.size, float(diff[i]),
                  f"maxerr={float(diff.max()):.3g}; worst vs tol at {i}: ours {got[i]:.9g} torch {want[i]:.9g} "
                  f"({diff[i] / ulp[i]:.1f} ulp)")


def self_check(model, model_dir, rep):
    path = os.path.join(model_dir, "reference.safetensors")
    if not os.path.exists(path):
        print(f"note: no {path}; the torch model is not checked against transformers")
        return
    ref = read_safetensors(path)
    ids = torch.tensor(ref["input_ids"], dtype=torch.long)
    mask = torch.tensor(ref["attention_mask"], dtype=torch.long)
    types = torch.tensor(ref["token_type_ids"], dtype=torch.long)
    trace = []
    with torch.no_grad():
        logits = model.forward(ids, mask, types, trace)
    print(f"== torch model against transformers ({path}), atol {ATOL_SELF}")
    for l, h in enumerate(trace):
        key = f"hidden_states.{l}"
        if key in ref:
            check_abs(rep, f"self {key}", h.numpy(), ref[key], ATOL_SELF)
    check_abs(rep, "self logits", logits.numpy(), ref["logits"], ATOL_SELF)


def check_abs(rep, name, got, want, atol):
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).ravel()
    i = int(np.argmax(diff))
    rep.line(diff[i] <= atol, name, diff.size, float(diff[i]),
             f"maxerr={diff[i]:.3g} at {i} (torch {got.ravel()[i]:.7g} transformers {want.ravel()[i]:.7g})")


def adamw_groups(model):
    decay, no_decay = [], []
    for name, p in model.p.items():
        (no_decay if "bias" in name or "LayerNorm.weight" in name else decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def shaped(a, p):
    """The engine's tensor in the shape of torch's parameter p when their sizes agree (a head of
    one label is a vector to the engine); left as it is, to fail the comparison, when not."""
    return a.reshape(p.shape) if a.size == p.numel() else a


def compare_step(model, path, rep):
    st = read_safetensors(path)
    ids = torch.tensor(st["input_ids"], dtype=torch.long)
    mask = torch.tensor(st["attention_mask"], dtype=torch.long)
    types = torch.tensor(st["token_type_ids"], dtype=torch.long)
    labels = torch.tensor(st["labels"], dtype=torch.long)
    print(f"== one training step: dsa ({path}) against torch; B={ids.shape[0]} T={ids.shape[1]} "
          f"labels={labels.tolist()}")

    names = sorted(model.p)
    missing = [n for n in names if n not in st or "step0." + n not in st or "step1." + n not in st]
    extra = [n for n in st if n.startswith("bert.") or n.startswith("classifier.")]
    extra = [n for n in extra if n not in model.p]
    for n in missing:
        rep.line(False, n, 0, math.inf, "missing from the engine's file (gradient, step0. or step1.)")
    for n in extra:
        rep.line(False, n, 0, math.inf, "gradient of a parameter the model does not have")

    print("-- parameters before the step: bitwise equal to model.safetensors")
    for n in names:
        if "step0." + n in st:
            ours, ref = shaped(st["step0." + n], model.p[n]), model.initial[n].numpy()
            same = ours.shape == ref.shape and np.array_equal(ours, ref)
            if not same:
                rep.line(False, "step0." + n, ref.size, math.inf, f"differs (shape {ours.shape} vs {ref.shape})")
    if not rep.failed:
        print(f"ok   all {len(names)} parameters")

    for p in model.p.values():
        p.grad = None
    logits = model.forward(ids, mask, types)
    loss = F.cross_entropy(logits, labels)
    loss.backward()

    print(f"-- loss, logits, gradients: max|ours - torch| / max|torch| <= {RTOL_GRAD}")
    rep.rel("loss", st["loss"], loss.detach().numpy().reshape(1), RTOL_GRAD)
    rep.rel("logits", st["logits"], logits.detach().numpy(), RTOL_GRAD)
    for n in names:
        if n not in st:
            continue
        scale = None
        if n.endswith("attention.self.key.bias"):
            scale = float(model.p[n[:-len("bias")] + "weight"].grad.abs().max())
        rep.rel("grad " + n, shaped(st[n], model.p[n]), model.p[n].grad.numpy(), RTOL_GRAD, scale)

    torch_grads = {n: p.grad.clone() for n, p in model.p.items()}
    torch_norm = float(torch.norm(torch.stack([g.norm() for g in torch_grads.values()])))
    rep.rel("gnorm (torch's gradients)", st["gnorm"], np.array([torch_norm]), RTOL_GRAD)
    if "lr" in st:
        rep.rel("lr", st["lr"], np.array([LR]), 1e-6)

    print(f"-- after one AdamW step (lr {LR}, decay {WEIGHT_DECAY} not on biases and LayerNorm weights, "
          f"clip {CLIP}) from the engine's gradients: |ours - torch| <= min({ATOL_STEP}, "
          f"{ULPS_STEP} ulp + 1e-5 lr)")
    with torch.no_grad():
        for n, p in model.p.items():
            p.copy_(model.initial[n])
            if n in st and st[n].size == p.numel():
                p.grad = torch.tensor(shaped(st[n], p))
    norm = float(torch.nn.utils.clip_grad_norm_(list(model.p.values()), CLIP))
    rep.rel("gnorm (the engine's gradients)", st["gnorm"], np.array([norm]), 1e-5)
    opt = torch.optim.AdamW(adamw_groups(model), lr=LR, betas=BETAS, eps=ADAM_EPS)
    opt.step()
    for n in names:
        if "step1." + n in st:
            rep.step("step1." + n, shaped(st["step1." + n], model.p[n]), model.p[n].detach().numpy(),
                     model.initial[n].numpy())


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model_dir = sys.argv[1]
    model = Bert(model_dir)
    rep = Report()
    self_check(model, model_dir, rep)
    if len(sys.argv) == 3:
        compare_step(model, sys.argv[2], rep)
    if rep.failed:
        print(f"FAILED: {rep.failed} tensor(s) out of tolerance")
        return 1
    print("all within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
