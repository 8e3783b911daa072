// ONNX Runtime side of dsa's BERT benchmark: times one ONNX model at batch B, sequence T with the
// same inputs dsactl bench builds (see make_ids in cli/bench.c), and prints one JSON object.
// Usage: node ort-bench.mjs --model bert.onnx [--seq 128] [--batch 1] [--threads N] [--runs R]
//        [--warmup W] [--dump FILE] [--inputs FILE.json] [--optimized FILE.onnx]
// --dump writes last_hidden_state as raw little-endian float32 (B,T,C), for the numeric check;
// --inputs takes {"input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]]}
// instead of the generated batch; --optimized saves the graph after ORT's fusions.
import { writeFileSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import ort from 'onnxruntime-node';

function usage(msg) {
  process.stderr.write(`ort-bench: ${msg}\n`);
  process.exit(2);
}

const opt = { seq: 128, batch: 1, threads: availableParallelism(), runs: 10, warmup: 2 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const key = argv[i].replace(/^--/, '');
  if (!argv[i].startsWith('--') || i + 1 >= argv.length) usage(`bad argument '${argv[i]}'`);
  const val = argv[++i];
  if (['seq', 'batch', 'threads', 'runs', 'warmup'].includes(key)) {
    opt[key] = Number.parseInt(val, 10);
    if (!(opt[key] >= (key === 'warmup' ? 0 : 1))) usage(`--${key}: bad value '${val}'`);
  } else if (['model', 'dump', 'inputs', 'optimized'].includes(key)) {
    opt[key] = val;
  } else {
    usage(`unknown option '--${key}'`);
  }
}
if (!opt.model) usage('--model is required');

// Same generator as cli/bench.c: [CLS] + LCG ids in [1000, V) + [SEP], every row its own seed.
function makeIds(B, T, V, cls, sep) {
  const ids = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) {
    let x = (0x9e3779b9 + b) >>> 0;
    for (let t = 0; t < T; t++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      let id = 1000 + ((x >>> 8) % (V - 1000));
      if (t === 0) id = cls;
      else if (t === T - 1) id = sep;
      ids[b * T + t] = BigInt(id);
    }
  }
  return ids;
}

function tensor2d(rows) {
  const B = rows.length, T = rows[0].length;
  return new ort.Tensor('int64', BigInt64Array.from(rows.flat(), (v) => BigInt(v)), [B, T]);
}

let feeds;
if (opt.inputs) {
  const j = JSON.parse(readFileSync(opt.inputs, 'utf8'));
  feeds = {
    input_ids: tensor2d(j.input_ids),
    attention_mask: tensor2d(j.attention_mask),
    token_type_ids: tensor2d(j.token_type_ids ?? j.input_ids.map((r) => r.map(() => 0))),
  };
  opt.batch = j.input_ids.length;
  opt.seq = j.input_ids[0].length;
} else {
  const { batch: B, seq: T } = opt;
  // The benchmark model's vocabulary: bert-base-uncased's size and special ids.
  feeds = {
    input_ids: new ort.Tensor('int64', makeIds(B, T, 30522, 101, 102), [B, T]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(B * T).fill(1n), [B, T]),
    token_type_ids: new ort.Tensor('int64', new BigInt64Array(B * T), [B, T]),
  };
}

const so = {
  executionProviders: ['cpu'],
  graphOptimizationLevel: 'all',
  executionMode: 'sequential',
  intraOpNumThreads: opt.threads,
  interOpNumThreads: 1, // sequential mode runs one node at a time; no inter-op pool needed
};
if (opt.optimized) so.optimizedModelFilePath = opt.optimized;

const session = await ort.InferenceSession.create(opt.model, so);
let out;
for (let i = 0; i < opt.warmup; i++) out = await session.run(feeds);
const times = [];
for (let i = 0; i < opt.runs; i++) {
  const t0 = process.hrtime.bigint();
  out = await session.run(feeds);
  times.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
if (opt.dump) {
  const h = out.last_hidden_state.data;
  writeFileSync(opt.dump, Buffer.from(h.buffer, h.byteOffset, h.byteLength));
}

const sorted = [...times].sort((a, b) => a - b);
// Same rule as dsactl bench: nearest rank, the smallest time with at least p*n at or below it.
const q = (p) => sorted[Math.max(Math.ceil(p * sorted.length) - 1, 0)];
const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2]
  : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
process.stdout.write(JSON.stringify({
  runtime: `onnxruntime-node ${ort.env.versions?.node ?? '?'}`,
  model: opt.model,
  seq: opt.seq,
  batch: opt.batch,
  threads: opt.threads,
  runs: opt.runs,
  latency_ms_median: median,
  latency_ms_p90: q(0.9),
  latency_ms_min: sorted[0],
  tokens_per_s: (opt.batch * opt.seq) / (median / 1e3),
}) + '\n');
