#!/usr/bin/env python3
"""What block-sparse attention can keep on longlm-4l256: a PyTorch model of our variants, for the
GPU machine lent to sessions (analysis only; the product never runs it). It reimplements the
decoder (RMSNorm, rotary, SwiGLU, grouped-query attention) with a per-(layer, head) block mask,
checks dense perplexity against eval_docs.json's, and measures perplexity on the 161 documents
for block choices from:
  the oracle (exact dense block mass: topk:N keeps N best blocks besides window 2 and the first
  block, mass:F the blocks reaching share F), the pooled scores (s*: mean key of a block, q*:
  per-token upper bound from the block's key min/max (Quest), x*: their mean, p*: mean query of
  REPS sub-blocks), and per-token low-rank scores (r*: rank RANK projections fitted on CAL
  calibration tokens of WikiText-2 by the whitened SVD our token scorer uses, each row's block
  max when MAXMODE=1, every STRIDE-th row scored);
with SUMMARY=1 a skipped block enters the softmax as one key (mean key + log block size, mean
value), as --att-summary does. STEPS > 0 then fine-tunes all weights (or ONLY=comma-separated
name parts) for STEPS steps of 4096 tokens of WikiText-2 test + LAMBADA test by KL to the dense
model's own logits (self-distillation, lr LR, sparse pattern TMODE:TEXTRA) and evaluates again.

Usage:
  scripts/attention-bound.py stage DIR      copy the model, documents, tokenizer and text from
                                            $DSA_SHARED (default ../shared) into DIR (LAMBADA
                                            too with FINETUNE=1)
  scripts/attention-bound.py run DIR        evaluate (CUDA); settings in the environment:
        BLK (64) RANK (8) STRIDE (1) MAXMODE (0) REPS (1) SUMMARY (0) CAL (0: per-document
        moments) NEV (161 documents) EVALS ("local:0 topk:1 ...") STEPS (0) LR TMODE TEXTRA ONLY
        OUT (where res.json goes)
On the device tool: stage into .scaling/bound (ignored), carry it, and run
  python3 scripts/attention-bound.py run .scaling/bound
docs/attention.md quotes the figures and the settings that made them.
"""
import json, math, os, shutil, struct, sys, time


def stage(dst):
    shared = os.environ.get('DSA_SHARED', os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../shared'))
    m = os.path.join(shared, 'fixtures/trained/longlm-4l256')
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(m):
        if f.startswith('model') or f in ('config.json', 'eval_docs.safetensors', 'eval_docs.json', 'tokenizer.json'):
            shutil.copy(os.path.join(m, f), dst)
    shutil.copy(os.path.join(shared, 'data/wikitext2_raw/wiki.test.raw'), dst)
    if os.environ.get('FINETUNE') == '1':  # the fine-tuning text; leave it out otherwise (carry limit)
        shutil.copy(os.path.join(shared, 'data/lambada_openai/lambada_test.jsonl'), dst)


if __name__ == '__main__' and (len(sys.argv) != 3 or sys.argv[1] not in ('stage', 'run')):
    sys.exit(__doc__)
if __name__ == '__main__' and sys.argv[1] == 'stage':
    stage(sys.argv[2])
    sys.exit(0)
import torch, torch.nn.functional as F
from safetensors.torch import load_file

D = os.path.abspath(sys.argv[2])
dev = 'cuda'
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
cfg = json.load(open(f'{D}/config.json'))
C, NH, NKV, HS, L = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['head_dim'], cfg['num_hidden_layers']
BLK = int(os.environ.get('BLK', '64'))
RANK = int(os.environ.get('RANK', '8'))
STRIDE = int(os.environ.get('STRIDE', '1'))
MAXMODE = int(os.environ.get('MAXMODE', '0'))
CALIB = None
COLLECT = None
LAYER = [0]
REPS = int(os.environ.get('REPS', '1'))
SUMMARY = int(os.environ.get('SUMMARY', '0'))

def load_w():
    w = {}
    for f in sorted(os.listdir(D)):
        if f.startswith('model-'):
            w.update(load_file(f'{D}/{f}'))
    return {k: v.float().to(dev) for k, v in w.items()}

def rope_tab(T):
    inv = 1.0 / (10000.0 ** (torch.arange(0, HS, 2, device=dev).float() / HS))
    t = torch.arange(T, device=dev).float()
    fr = torch.outer(t, inv)
    emb = torch.cat([fr, fr], -1)
    return emb.cos(), emb.sin()

def rot(x, cos, sin):
    x1, x2 = x[..., :HS // 2], x[..., HS // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin

def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

def select(q, k, T, mode, extra):
    """block mask (NH, nb, nb) bool from the dense block mass (oracle)."""
    nb = (T + BLK - 1) // BLK
    ia = torch.arange(nb, device=dev)
    causal_b = ia[:, None] >= ia[None, :]
    forced = (ia[:, None] - ia[None, :] < 2) & causal_b
    forced[:, 0] = True
    if mode == 'local':
        return forced.expand(NH, nb, nb)
    with torch.no_grad():
        kk = k.repeat_interleave(NH // NKV, 0)
        pad = nb * BLK - T
        if mode.startswith('p'):
            reps = REPS
            qb = F.pad(q, (0, 0, 0, pad)).view(NH, nb * reps, BLK // reps, HS).mean(2)  # (NH, nb*reps, HS)
            s = (qb @ kk.transpose(-1, -2)) / math.sqrt(HS)  # (NH, nb*reps, T)
            ra = torch.arange(nb * reps, device=dev) // reps
            kj = torch.arange(T, device=dev) // BLK
            s = s.masked_fill(~(kj[None, :] <= ra[:, None]), float('-inf'))
            p = s.softmax(-1)
            p = F.pad(p, (0, pad))
            m = p.view(NH, nb, reps, nb, BLK).sum((2, 4))
            mode = mode[1:]
        elif mode.startswith('r'):
            R = RANK
            def msqrt(Cm, inv):
                e, V = torch.linalg.eigh(Cm + 1e-6 * torch.eye(HS, device=dev))
                e = e.clamp_min(1e-8)
                return (V * (e ** (-0.5 if inv else 0.5))[..., None, :]) @ V.transpose(-1, -2)
            if CALIB is not None:
                Cq, Ck = CALIB[LAYER[0]]
            else:
                Cq = q.transpose(-1, -2) @ q / T
                Ck = kk.transpose(-1, -2) @ kk / T
            M = msqrt(Cq, False) @ msqrt(Ck, False)
            P, S, Rt = torch.linalg.svd(M)
            A = (P[..., :R] * S[..., None, :R].sqrt()).transpose(-1, -2) @ msqrt(Cq, True)   # (NH,R,HS)
            B = (Rt.transpose(-1, -2)[..., :R] * S[..., None, :R].sqrt()).transpose(-1, -2) @ msqrt(Ck, True)
            qt = q @ A.transpose(-1, -2); kt = kk @ B.transpose(-1, -2)
            s = (qt @ kt.transpose(-1, -2)) / math.sqrt(HS)
            cm = torch.ones(T, T, device=dev, dtype=torch.bool).tril()
            s = s.masked_fill(~cm, float('-inf'))
            if STRIDE > 1:
                keep_rows = (torch.arange(T, device=dev) % STRIDE) == (STRIDE - 1)
                keep_rows[-1] = True
                s = s.masked_fill(~keep_rows[None, :, None], float('-inf'))
            if MAXMODE:
                s = F.pad(s, (0, pad), value=float('-inf'))
                bm = s.view(NH, T, nb, BLK).amax(-1) + math.log(BLK)  # (NH, T, nb)
                p = torch.nan_to_num(bm.softmax(-1), nan=0.0)
                p = F.pad(p, (0, 0, 0, pad))
                m = p.view(NH, nb, BLK, nb).sum(2)
            else:
                p = s.softmax(-1)
                p = F.pad(p, (0, pad, 0, pad))
                m = p.view(NH, nb, BLK, nb, BLK).sum((2, 4))
            mode = mode[1:]
        elif mode.startswith('s') or mode.startswith('q') or mode.startswith('x'):
            kb = F.pad(kk, (0, 0, 0, pad)).view(NH, nb, BLK, HS)
            if mode.startswith('s'):
                kbar = kb.mean(2)
                s = (q @ kbar.transpose(-1, -2)) / math.sqrt(HS)  # (NH, T, nb)
            else:
                kmax = kb.amax(2); kmin = kb.amin(2)
                s = (torch.maximum(q[:, :, None, :] * kmax[:, None], q[:, :, None, :] * kmin[:, None]).sum(-1)) / math.sqrt(HS)
                if mode.startswith('x'):
                    s = 0.5 * s + 0.5 * (q @ kb.mean(2).transpose(-1, -2)) / math.sqrt(HS)
            qa = torch.arange(T, device=dev) // BLK
            vis = qa[:, None] > ia[None, :]
            s = s.masked_fill(~vis, float('-inf'))
            p = torch.nan_to_num(s.softmax(-1), nan=0.0)
            p = F.pad(p, (0, 0, 0, pad))
            m = p.view(NH, nb, BLK, nb).sum(2)
            mode = mode[1:]
        else:
            s = (q @ kk.transpose(-1, -2)) / math.sqrt(HS)
            cm = torch.ones(T, T, device=dev, dtype=torch.bool).tril()
            s = s.masked_fill(~cm, float('-inf'))
            p = s.softmax(-1)
            p = F.pad(p, (0, pad, 0, pad))
            m = p.view(NH, nb, BLK, nb, BLK).sum((2, 4))  # (NH, nb, nb)
        if mode == 'mass':
            m = m / m.sum(-1, keepdim=True).clamp_min(1e-30)
            mm = m.masked_fill(forced, 2.0).masked_fill(~causal_b, -1.0)
            order = mm.sort(-1, descending=True)
            cum = (order.values.clamp_min(0) * (order.values <= 1)).cumsum(-1)
            forced_mass = (m * forced).sum(-1, keepdim=True)
            cum = cum + forced_mass
            # keep a block if the mass before it is below target
            before = cum - order.values.clamp(0, 1) * (order.values <= 1)
            keep_sorted = (before < extra) & (order.values >= 0)
            keep = torch.zeros_like(keep_sorted).scatter(-1, order.indices, keep_sorted)
            return (keep | forced) & causal_b
        mm = m.masked_fill(forced, -1.0).masked_fill(~causal_b, -2.0)
        top = mm.topk(min(extra, nb), -1).indices
        keep = torch.zeros(NH, nb, nb, dtype=torch.bool, device=dev).scatter(-1, top, True)
        return (keep | forced) & causal_b

def forward(w, ids, mode='dense', extra=0, stats=None):
    T = ids.shape[0]
    cos, sin = rope_tab(T)
    x = w['model.embed_tokens.weight'][ids]
    cm = torch.ones(T, T, device=dev, dtype=torch.bool).tril()
    for l in range(L):
        LAYER[0] = l
        p = f'model.layers.{l}.'
        h = rms(x, w[p + 'input_layernorm.weight'])
        q = (h @ w[p + 'self_attn.q_proj.weight'].T).view(T, NH, HS).transpose(0, 1)
        k = (h @ w[p + 'self_attn.k_proj.weight'].T).view(T, NKV, HS).transpose(0, 1)
        v = (h @ w[p + 'self_attn.v_proj.weight'].T).view(T, NKV, HS).transpose(0, 1)
        q, k = rot(q, cos, sin), rot(k, cos, sin)
        if COLLECT is not None:
            kk_ = k.repeat_interleave(NH // NKV, 0)
            a_, b_ = COLLECT.get(l, (0, 0))
            COLLECT[l] = (a_ + q.transpose(-1, -2) @ q, b_ + kk_.transpose(-1, -2) @ kk_)
            COLLECT['n%d' % l] = COLLECT.get('n%d' % l, 0) + T
        if mode == 'dense':
            mask = cm.expand(NH, T, T)
        else:
            bm = select(q.detach(), k.detach(), T, mode, extra)
            if stats is not None:
                nb = bm.shape[-1]
                stats[0] += bm.sum().item(); stats[1] += NH * nb * (nb + 1) // 2
            mask = bm.repeat_interleave(BLK, 1).repeat_interleave(BLK, 2)[:, :T, :T] & cm
        kk = k.repeat_interleave(NH // NKV, 0)
        vv = v.repeat_interleave(NH // NKV, 0)
        if SUMMARY and mode != 'dense':
            nb = bm.shape[-1]
            pad = nb * BLK - T
            kbar = F.pad(kk, (0, 0, 0, pad)).view(NH, nb, BLK, HS).mean(2)
            vbar = F.pad(vv, (0, 0, 0, pad)).view(NH, nb, BLK, HS).mean(2)
            ia = torch.arange(nb, device=dev)
            summ = (~bm) & (ia[:, None] > ia[None, :])  # (NH, nb, nb)
            sm = summ.repeat_interleave(BLK, 1)[:, :T, :]
            fm = torch.zeros(NH, T, T + nb, device=dev)
            fm[:, :, :T].masked_fill_(~mask, float('-inf'))
            fm[:, :, T:] = torch.where(sm, torch.full_like(sm, math.log(BLK), dtype=torch.float), torch.full_like(sm, float('-inf'), dtype=torch.float))
            a = F.scaled_dot_product_attention(q[None], torch.cat([kk, kbar], 1)[None], torch.cat([vv, vbar], 1)[None], attn_mask=fm[None])[0]
        else:
            a = F.scaled_dot_product_attention(q[None], kk[None], vv[None], attn_mask=mask[None])[0]
        x = x + a.transpose(0, 1).reshape(T, NH * HS) @ w[p + 'self_attn.o_proj.weight'].T
        h = rms(x, w[p + 'post_attention_layernorm.weight'])
        g = F.silu(h @ w[p + 'mlp.gate_proj.weight'].T) * (h @ w[p + 'mlp.up_proj.weight'].T)
        x = x + g @ w[p + 'mlp.down_proj.weight'].T
    x = rms(x, w['model.norm.weight'])
    return x @ w['lm_head.weight'].T

def eval_docs(w, mode='dense', extra=0, n=None):
    docs = load_file(f'{D}/eval_docs.safetensors')
    tot, cnt, st = 0.0, 0, [0, 0]
    keys = sorted(docs, key=lambda s: int(s.split('.')[1]))[:n]
    with torch.no_grad():
        for kname in keys:
            ids = docs[kname].long().to(dev)
            lg = forward(w, ids, mode, extra, st)
            nll = F.cross_entropy(lg[:-1], ids[1:], reduction='sum')
            tot += nll.item(); cnt += ids.shape[0] - 1
    return math.exp(tot / cnt), (st[0] / st[1] if st[1] else 1.0)

def train_tokens():
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(f'{D}/tokenizer.json')
    texts = [open(f'{D}/wiki.test.raw').read()]
    if os.path.exists(f'{D}/lambada_test.jsonl'):
        for line in open(f'{D}/lambada_test.jsonl'):
            texts.append(json.loads(line)['text'])
    ids = []
    for t in texts:
        ids += tk.encode(t, add_special_tokens=False).ids + [cfg['eos_token_id']]
    return torch.tensor(ids, dtype=torch.long)

if __name__ == '__main__':
    t0 = time.time()
    w0 = load_w()
    res = {}
    steps = int(os.environ.get('STEPS', '0'))
    nev = int(os.environ.get('NEV', '161'))
    if int(os.environ.get('CAL', '0')):
        toks = train_tokens()[:int(os.environ.get('CAL'))]
        COLLECT = {}
        with torch.no_grad():
            for i in range(0, toks.shape[0] - 1024, 2048):
                forward(w0, toks[i:i + 2048].to(dev))
        CALIB = {l: (COLLECT[l][0] / COLLECT['n%d' % l], COLLECT[l][1] / COLLECT['n%d' % l]) for l in range(L)}
        COLLECT = None
    res['dense'] = eval_docs(w0, n=nev)
    print('dense', res['dense'], time.time() - t0, flush=True)
    evals = [tuple((x.split(':')[0], float(x.split(':')[1]) if '.' in x.split(':')[1] else int(x.split(':')[1]))) for x in os.environ.get('EVALS', 'local:0 topk:1 topk:2 topk:4 mass:0.8 mass:0.9').split()]
    for m, e in evals:
        res[f'{m}{e}'] = eval_docs(w0, m, e, nev)
        print('before', m, e, res[f'{m}{e}'], time.time() - t0, flush=True)
    if steps == 0:
        json.dump(res, open(os.environ.get('OUT', '.') + '/res.json', 'w'), indent=1); sys.exit(0)
    toks = train_tokens()
    print('train tokens', toks.shape[0], flush=True)
    T = 4096
    nseq = toks.shape[0] // T
    seqs = toks[:nseq * T].view(nseq, T)
    tmode, textra = os.environ.get('TMODE', 'topk'), float(os.environ.get('TEXTRA', '2'))
    if tmode == 'topk': textra = int(textra)
    lr = float(os.environ.get('LR', '2e-4'))
    only = os.environ.get('ONLY', '')
    w = {k: v.clone().requires_grad_(only == '' or any(o in k for o in only.split(','))) for k, v in w0.items()}
    opt = torch.optim.AdamW([v for v in w.values() if v.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        ids = seqs[torch.randint(nseq, (1,), generator=g)[0]].to(dev)
        with torch.no_grad():
            tl = forward(w0, ids).log_softmax(-1)
        sl = forward(w, ids, tmode, textra).log_softmax(-1)
        loss = F.kl_div(sl, tl, log_target=True, reduction='batchmean')
        for pg in opt.param_groups: pg['lr'] = lr * min(1.0, (step + 1) / 20) * (0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 50 == 0: print('step', step, loss.item(), time.time() - t0, flush=True)
    wd = {k: v.detach() for k, v in w.items()}
    res['ft_dense'] = eval_docs(wd, n=nev)
    print('after dense', res['ft_dense'], flush=True)
    for m, e in evals:
        res[f'ft_{m}{e}'] = eval_docs(wd, m, e, nev)
        print('after', m, e, res[f'ft_{m}{e}'], time.time() - t0, flush=True)
    json.dump(res, open(os.environ.get('OUT', '.') + '/res.json', 'w'), indent=1)
