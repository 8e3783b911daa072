#!/usr/bin/python3
"""Makes the model of dsa's speed benchmark: a BERT-base-shaped BertModel with seeded random
weights, written twice with the same numbers, as a Hugging Face folder (what `dsactl -m DIR`
opens) and as an ONNX graph (what ONNX Runtime runs in tests/bench/ort-bench.mjs).

The ONNX graph is what a plain PyTorch export of BertModel looks like: standard opset-17 ops
(Gather, LayerNormalization, MatMul on pre-transposed weights, Reshape/Transpose for the heads,
Softmax, Erf-based GELU), no contrib ops; ONNX Runtime's own graph optimizer fuses them.

--int8 qdq writes instead what ONNX Runtime's quantize_dynamic(per_channel=True,
reduce_range=False, weight_type=QInt8) makes of that graph (the tool itself is Python-only and
not packaged here): every MatMul with a weight initializer becomes DynamicQuantizeLinear on the
activation (uint8, per tensor, one per input shared by Q, K and V), MatMulInteger with the int8
weight (symmetric, one scale per output column, zero point 0), Cast to float and Mul by activation
scale x column scale, before the bias Add. --int8 fused writes the com.microsoft
DynamicQuantizeMatMul contrib op for each instead: one of the two fusions
ORT's CPU optimizer makes of the first (the other, where Q, K and V share a quantized input, is
MatMulIntegerToFloat).

Needs only python3-numpy and python3-onnx (Debian). Usage:
  make-bert-base.py OUTDIR                    OUTDIR/hf/{config.json,model.safetensors,vocab.txt}
                                              and OUTDIR/bert.onnx
  make-bert-base.py --onnx-from HFDIR OUT.onnx   exports an existing HF BERT folder's weights
                                              (used to check the exporter against the reference
                                              outputs in ../shared/fixtures/hf/bert-base-model)
  make-bert-base.py --onnx-from HFDIR --int8 qdq|fused OUT.onnx
                                              the same, dynamically quantized to int8 as above
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    sys.exit("make-bert-base.py: python3-onnx is missing: apt-get install python3-onnx")

OPSET = 17
MASK_MIN = -10000.0


def config_dict(a):
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.ff,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": a.ctx,
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": a.vocab,
        "torch_dtype": "float32",
    }


def random_weights(cfg, seed):
    """BertModel's tensors in HF names: 2-D weights and embeddings N(0, 0.02), biases N(0, 0.02)
    too (so a bias that is dropped or misplaced shows up in the comparison), LayerNorm 1 / 0."""
    rng = np.random.default_rng(seed)
    C, FF, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float32)

    w = {}
    w["embeddings.word_embeddings.weight"] = normal(V, C)
    w["embeddings.position_embeddings.weight"] = normal(cfg["max_position_embeddings"], C)
    w["embeddings.token_type_embeddings.weight"] = normal(cfg["type_vocab_size"], C)
    w["embeddings.LayerNorm.weight"] = np.ones(C, np.float32)
    w["embeddings.LayerNorm.bias"] = np.zeros(C, np.float32)
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"] = normal(C, C)
            w[p + f"attention.self.{n}.bias"] = normal(C)
        w[p + "attention.output.dense.weight"] = normal(C, C)
        w[p + "attention.output.dense.bias"] = normal(C)
        w[p + "attention.output.LayerNorm.weight"] = np.ones(C, np.float32)
        w[p + "attention.output.LayerNorm.bias"] = np.zeros(C, np.float32)
        w[p + "intermediate.dense.weight"] = normal(FF, C)
        w[p + "intermediate.dense.bias"] = normal(FF)
        w[p + "output.dense.weight"] = normal(C, FF)
        w[p + "output.dense.bias"] = normal(C)
        w[p + "output.LayerNorm.weight"] = np.ones(C, np.float32)
        w[p + "output.LayerNorm.bias"] = np.zeros(C, np.float32)
    w["pooler.dense.weight"] = normal(C, C)
    w["pooler.dense.bias"] = normal(C)
    return w


def write_safetensors(path, tensors):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % 8)  # tensor data 8-byte aligned, as safetensors writes it
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for t in tensors.values():
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())
    os.replace(tmp, path)


def read_safetensors(path):
    """F32 tensors of one file or of a sharded folder's index."""
    files = [path]
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(idx):
            with open(idx) as f:
                files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
        else:
            files = [os.path.join(path, "model.safetensors")]
    out = {}
    for fn in files:
        with open(fn, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] != "F32":
                    sys.exit(f"make-bert-base.py: {fn}: {name}: only F32 is supported")
                a, b = info["data_offsets"]
                f.seek(base + a)
                out[name] = np.frombuffer(f.read(b - a), "<f4").reshape(info["shape"])
    # BertFor* checkpoints prefix the encoder with "bert."
    return {k[5:] if k.startswith("bert.") else k: v for k, v in out.items()}


def synthetic_vocab(n):
    """bert-base-uncased's layout of specials ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103), then characters, continuations and made-up words, all distinct."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [f"[unused{i}]" for i in range(99, 994)]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    toks += chars + ["##" + c for c in chars]
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 26  # words of two letters and more: single letters are among the characters above
    while len(toks) < n:
        s, k = "", i
        while True:  # bijective base 26: a..z, aa..zz, aaa..
            s = letters[k % 26] + s
            k = k // 26 - 1
            if k < 0:
                break
        toks.append(s if i % 3 else "##" + s)
        i += 1
    return toks[:n]


def quantize_columns(wt):
    """wt (K, N) -> int8 (K, N) and one scale per column: symmetric, max |w| / 127 (ORT's QInt8
    range for symmetric weights is [-127, 127]), round half to even as numpy and ORT do."""
    scale = np.abs(wt).max(axis=0).astype(np.float32) / np.float32(127)
    scale[scale == 0] = np.float32(1)
    q = np.clip(np.rint(wt / scale), -127, 127).astype(np.int8)
    return q, scale


def export_onnx(w, cfg, path, int8=None):
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    HS, eps = C // NH, float(cfg["layer_norm_eps"])
    nodes, inits = [], []
    counter = [0]
    quantized = {}  # activation -> its DynamicQuantizeLinear outputs

    def init(name, arr):
        # np.require, not np.ascontiguousarray: the latter turns scalars into shape (1,)
        inits.append(numpy_helper.from_array(np.require(arr, requirements="C"), name))
        return name

    def node(op, ins, **attrs):
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{counter[0]}", **attrs))
        return out

    def linear(x, prefix):
        if not int8:
            wt = init(prefix + ".weight_t", w[prefix + ".weight"].T)  # (C, OC): y = x W^T + b
            b = init(prefix + ".bias", w[prefix + ".bias"])
            return node("Add", [node("MatMul", [x, wt]), b])
        q, scale = quantize_columns(np.ascontiguousarray(w[prefix + ".weight"].T))
        wq = init(prefix + ".weight_t_quantized", q)
        ws = init(prefix + ".weight_t_scale", scale)
        wz = init(prefix + ".weight_t_zero_point", np.zeros(q.shape[1], np.int8))
        b = init(prefix + ".bias", w[prefix + ".bias"])
        if int8 == "fused":
            return node("DynamicQuantizeMatMul", [x, wq, ws, wz, b], domain="com.microsoft")
        if x not in quantized:  # one per input, shared by Q, K and V, as quantize_dynamic does
            quantized[x] = tuple(f"{x}_{n}" for n in ("quantized", "scale", "zero_point"))
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(quantized[x]),
                                          name=f"DynamicQuantizeLinear_{x}"))
        xq, xs, xz = quantized[x]
        y = node("Cast", [node("MatMulInteger", [xq, wq, xz, wz])], to=TensorProto.FLOAT)
        return node("Add", [node("Mul", [y, node("Mul", [xs, ws])]), b])

    def layernorm(x, prefix):
        g = init(prefix + ".weight", w[prefix + ".weight"])
        b = init(prefix + ".bias", w[prefix + ".bias"])
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    i64 = lambda name, vals: init(name, np.array(vals, np.int64))
    f32 = lambda name, val: init(name, np.array(val, np.float32))
    heads_shape = i64("shape_heads", [0, 0, NH, HS])
    merge_shape = i64("shape_merge", [0, 0, C])

    # Embeddings: word + position (a slice of arange, as BERT's position_ids buffer) + type.
    word = node("Gather", [init("embeddings.word_embeddings.weight",
                                w["embeddings.word_embeddings.weight"]), "input_ids"])
    typ = node("Gather", [init("embeddings.token_type_embeddings.weight",
                               w["embeddings.token_type_embeddings.weight"]), "token_type_ids"])
    seq = node("Gather", [node("Shape", ["input_ids"]), i64("one", 1)], axis=0)
    pos_ids = node("Slice", [i64("position_ids", np.arange(cfg["max_position_embeddings"])[None, :]),
                             i64("zero_1d", [0]), node("Unsqueeze", [seq, i64("axes_0", [0])]),
                             i64("one_1d", [1])])
    pos = node("Gather", [init("embeddings.position_embeddings.weight",
                               w["embeddings.position_embeddings.weight"]), pos_ids])
    x = layernorm(node("Add", [node("Add", [word, typ]), pos]), "embeddings.LayerNorm")

    # Extended attention mask (B,1,1,T): 0 for tokens, float32 min for padding (HF's form).
    m = node("Cast", [node("Unsqueeze", ["attention_mask", i64("axes_12", [1, 2])])],
             to=TensorProto.FLOAT)
    mask = node("Mul", [node("Sub", [f32("one_f", 1.0), m]),
                        f32("mask_min", MASK_MIN)])

    sqrt_hs = f32("sqrt_head_size", np.sqrt(HS))
    sqrt2 = f32("sqrt_2", np.sqrt(2.0))
    half, one = f32("half_f", 0.5), "one_f"
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."

        def heads(t, perm):
            return node("Transpose", [node("Reshape", [t, heads_shape])], perm=perm)

        q = heads(linear(x, p + "attention.self.query"), [0, 2, 1, 3])
        k = heads(linear(x, p + "attention.self.key"), [0, 2, 3, 1])
        v = heads(linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        s = node("Add", [node("Div", [node("MatMul", [q, k]), sqrt_hs]), mask])
        ctx = node("MatMul", [node("Softmax", [s], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        a = node("Add", [linear(ctx, p + "attention.output.dense"), x])
        x1 = layernorm(a, p + "attention.output.LayerNorm")
        h = linear(x1, p + "intermediate.dense")
        g = node("Mul", [node("Mul", [h, node("Add", [node("Erf", [node("Div", [h, sqrt2])]),
                                                     one])]), half])
        o = node("Add", [linear(g, p + "output.dense"), x1])
        x = layernorm(o, p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "bert",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
         for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [C])],
        inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if int8 == "fused":
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets,
                              producer_name="dsa tests/bench/make-bert-base.py")
    model.ir_version = 8  # opset 17's IR; older runtimes refuse newer IR versions
    onnx.checker.check_model(model)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (or OUT.onnx with --onnx-from)")
    ap.add_argument("--onnx-from", metavar="HFDIR", help="export this HF folder's weights only")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ff", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--int8", choices=("qdq", "fused"),
                    help="with --onnx-from: ORT's dynamic int8 quantization of the graph")
    a = ap.parse_args()

    if a.onnx_from:
        with open(os.path.join(a.onnx_from, "config.json")) as f:
            cfg = json.load(f)
        export_onnx(read_safetensors(a.onnx_from), cfg, a.out, a.int8)
        return
    if a.int8:
        sys.exit("make-bert-base.py: --int8 goes with --onnx-from")

    cfg = config_dict(a)
    if a.hidden % a.heads:
        sys.exit("make-bert-base.py: --hidden must be a multiple of --heads")
    hf = os.path.join(a.out, "hf")
    os.makedirs(hf, exist_ok=True)
    w = random_weights(cfg, a.seed)
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(hf, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                   "model_max_length": a.ctx}, f, indent=2)
    with open(os.path.join(hf, "vocab.txt"), "w") as f:
        f.write("\n".join(synthetic_vocab(a.vocab)) + "\n")
    write_safetensors(os.path.join(hf, "model.safetensors"), w)
    export_onnx(w, cfg, os.path.join(a.out, "bert.onnx"))


if __name__ == "__main__":
    main()
