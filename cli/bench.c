/* dsactl bench: times the encoder forward of a model on a synthetic batch, in-process. It builds
 * B rows of T deterministic token ids ([CLS], pseudo-random ids, [SEP]; every token attended),
 * runs W untimed warmups and R timed dsa_model_forward() calls, and reports the median, p90 and
 * minimum latency, tokens per second and the GFLOP/s the matmuls of one forward amount to.
 * tests/bench/ort-bench.mjs builds the very same ids, so its output can be compared with ours
 * (--dump). Never judges the figures: a benchmark reports, it does not pass or fail. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "basic/macro.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "engine/tokenizer.h"
#include "util.h"
#include "verbs.h"


static void bench_usage(FILE *f) {
        fputs("Usage: dsactl bench -m MODEL [--seq N] [--batch B] [--threads N] [--runs R]\n"
              "                    [--warmup W] [--json] [--dump FILE] [--record]\n"
              "Times the encoder forward on B synthetic rows of N tokens (default 128 x 1,\n"
              "threads = usable cores, 10 runs after 2 warmups). --dump writes the last hidden\n"
              "state (B,N,C) as raw little-endian float32, to compare with another runtime.\n",
              f);
}

/* Parses a decimal integer in [lo, hi]; false on anything else. */
static bool parse_int(const char *s, long lo, long hi, long *ret) {
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
                return false;
        *ret = v;
        return true;
}

/* [CLS] + ids from a 32-bit LCG in [1000, V) + [SEP], row b seeded with 0x9e3779b9 + b.
 * tests/bench/ort-bench.mjs has the same generator; keep them in step. */
static void make_ids(int32_t *ids, size_t B, size_t T, uint32_t V, int32_t cls, int32_t sep) {
        uint32_t lo = V > 1000 ? 1000 : 0;

        for (size_t b = 0; b < B; b++) {
                uint32_t x = 0x9e3779b9u + (uint32_t) b;

                for (size_t t = 0; t < T; t++) {
                        int32_t id;

                        x = x * 1664525u + 1013904223u;
                        id = (int32_t) (lo + (x >> 8) % (V - lo));
                        if (t == 0)
                                id = cls;
                        else if (t == T - 1)
                                id = sep;
                        ids[b * T + t] = id;
                }
        }
}

/* Nearest-rank quantile of sorted v (n >= 1): the smallest element with at least q*n at or
 * below it. */
static double quantile(const double *v, size_t n, double q) {
        size_t k = (size_t) ceil(q * (double) n);

        return v[k > 0 ? k - 1 : 0];
}

static double median(const double *v, size_t n) {
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Matmul FLOPs of one forward (multiply and add counted as 2), per layer and batch row:
 *   QKV projections      2*T*C*3C
 *   attention output     2*T*C*C
 *   FFN up and down      2*2*T*C*FF
 *   scores and weighted values: 2*2*T*T*C (QK^T and PV, T*T*HS each for NH heads, NH*HS = C)
 * times n_layer and B. Embeddings, norms, softmax and GELU are O(T*C) and left out. */
static double forward_flops(const struct dsa_bert_config *cfg, size_t B, size_t T) {
        double t = (double) T, c = (double) cfg->n_embd, ff = (double) cfg->n_ff;
        double layer = 2 * t * c * 3 * c + 2 * t * c * c + 2 * 2 * t * c * ff + 2 * 2 * t * t * c;

        return layer * cfg->n_layer * (double) B;
}

static int dump_hidden(const char *path, const float *h, size_t n) {
        _cleanup_fclose_ FILE *f = fopen(path, "we");

        if (!f)
                return -errno;
        if (fwrite(h, sizeof(float), n, f) != n)
                return -EIO;
        if (fflush(f) != 0)
                return -errno;
        return 0;
}

int verb_bench(int argc, char **argv) {
        for (int i = 1; i < argc; i++)
                if (!strcmp(argv[i], "--attention") || !strncmp(argv[i], "--attention=", 12))
                        return bench_attention(argc, argv);
        enum { OPT_SEQ = 0x100, OPT_BATCH, OPT_THREADS, OPT_RUNS, OPT_WARMUP, OPT_JSON, OPT_DUMP, OPT_RECORD };
        static const struct option options[] = {
                { "model", required_argument, NULL, 'm' },
                { "seq", required_argument, NULL, OPT_SEQ },
                { "batch", required_argument, NULL, OPT_BATCH },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "runs", required_argument, NULL, OPT_RUNS },
                { "warmup", required_argument, NULL, OPT_WARMUP },
                { "json", no_argument, NULL, OPT_JSON },
                { "dump", required_argument, NULL, OPT_DUMP },
                { "record", no_argument, NULL, OPT_RECORD },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        _cleanup_free_ int32_t *ids = NULL;
        _cleanup_free_ uint8_t *mask = NULL;
        _cleanup_free_ float *hidden = NULL;
        _cleanup_free_ double *ms = NULL;
        const char *model = NULL, *dump = NULL;
        long seq = 128, batch = 1, runs = 10, warmup = 2, threads = 0; /* 0: every usable core */
        bool json = false, record = false;
        const struct dsa_bert_config *cfg;
        const struct dsa_tokenizer *tok;
        size_t B, T, n_tok, n_hidden;
        int32_t cls = 101, sep = 102;
        double flops, med, p90, min, tps, gflops;
        int r, c;

        optind = 0; /* glibc: a full reset, the dispatcher may have run getopt already */
        opterr = 0; /* our own messages, in dsactl's "dsactl: <what>: <reason>" form */
        while ((c = getopt_long(argc, argv, ":m:h", options, NULL)) >= 0) {
                long *dst = NULL, lo = 1, hi = INT_MAX;

                switch (c) {
                case 'm':
                        model = optarg;
                        continue;
                case OPT_SEQ:
                        dst = &seq, lo = 2, hi = 1 << 20;
                        break;
                case OPT_BATCH:
                        dst = &batch, hi = 1 << 20;
                        break;
                case OPT_THREADS:
                        dst = &threads, hi = 4096;
                        break;
                case OPT_RUNS:
                        dst = &runs, hi = 1 << 20;
                        break;
                case OPT_WARMUP:
                        dst = &warmup, lo = 0, hi = 1 << 20;
                        break;
                case OPT_JSON:
                        json = true;
                        continue;
                case OPT_DUMP:
                        dump = optarg;
                        continue;
                case OPT_RECORD:
                        record = true;
                        continue;
                case 'h':
                        bench_usage(stdout);
                        return 0;
                case ':':
                        fprintf(stderr, "dsactl: bench: option '%s' needs a value\n", argv[optind - 1]);
                        return 2;
                default:
                        if (optopt > 0 && optopt < 0x100) /* a short option, maybe inside "-mx" */
                                fprintf(stderr, "dsactl: bench: unknown option '-%c'\n", optopt);
                        else
                                fprintf(stderr, "dsactl: bench: unknown option '%s'\n", argv[optind - 1]);
                        bench_usage(stderr);
                        return 2;
                }
                if (!parse_int(optarg, lo, hi, dst)) {
                        fprintf(stderr, "dsactl: bench: invalid value '%s' for --%s, expected %ld..%ld\n",
                                optarg, options[c - OPT_SEQ + 1].name, lo, hi);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "dsactl: bench: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }
        if (!model) {
                fprintf(stderr, "dsactl: bench: -m MODEL is required\n");
                bench_usage(stderr);
                return 2;
        }

        dsa_error_clear();
        r = dsa_model_open(model, &m);
        if (r < 0) {
                fprintf(stderr, "dsactl: %s: %s\n", model, dsa_error_message(r));
                return 1;
        }
        if (dsa_model_arch(m) != DSA_ARCH_BERT) {
                fprintf(stderr, "dsactl: %s: bench supports BERT encoders only\n", model);
                return 1;
        }
        cfg = dsa_model_bert_config(m);
        if ((unsigned long) seq > cfg->n_ctx) {
                fprintf(stderr, "dsactl: bench: --seq %ld is longer than the model's context (%" PRIu32 ")\n",
                        seq, cfg->n_ctx);
                return 2;
        }
        tok = dsa_model_tokenizer(m);
        if (tok) {
                if (dsa_tokenizer_cls_id(tok) >= 0)
                        cls = dsa_tokenizer_cls_id(tok);
                if (dsa_tokenizer_sep_id(tok) >= 0)
                        sep = dsa_tokenizer_sep_id(tok);
        }
        if (cfg->n_vocab == 0 || (uint32_t) cls >= cfg->n_vocab || (uint32_t) sep >= cfg->n_vocab)
                cls = sep = 0;

        B = (size_t) batch, T = (size_t) seq;
        if (!size_mul_ok(B, T, &n_tok) || !size_mul_ok(n_tok, cfg->n_embd, &n_hidden)) {
                fprintf(stderr, "dsactl: bench: batch %zu x seq %zu is too large\n", B, T);
                return 2;
        }
        ids = malloc(n_tok * sizeof(*ids));
        mask = malloc(n_tok);
        hidden = malloc(n_hidden * sizeof(*hidden));
        ms = malloc((size_t) runs * sizeof(*ms));
        if (!ids || !mask || !hidden || !ms) {
                fprintf(stderr, "dsactl: bench: %s\n", strerror(ENOMEM));
                return 1;
        }
        make_ids(ids, B, T, cfg->n_vocab, cls, sep);
        memset(mask, 1, n_tok);

        /* The model's pool does all the parallel work; OpenBLAS stays on one thread. */
        r = dsa_model_set_threads(m, (unsigned) threads);
        if (r < 0) {
                fprintf(stderr, "dsactl: bench: --threads: %s\n", dsa_error_message(r));
                return 1;
        }
        threads = r;

        struct dsa_batch b = { .B = B, .T = T, .ids = ids, .type_ids = NULL, .mask = mask };
        for (long i = 0; i < warmup + runs; i++) {
                double t0 = 1e3 * now_sec();

                dsa_error_clear();
                r = dsa_model_forward(m, &b, hidden, NULL);
                if (r < 0) {
                        fprintf(stderr, "dsactl: %s: forward: %s\n", model, dsa_error_message(r));
                        return 1;
                }
                if (i >= warmup)
                        ms[i - warmup] = 1e3 * now_sec() - t0;
        }
        if (dump) {
                r = dump_hidden(dump, hidden, n_hidden);
                if (r < 0) {
                        fprintf(stderr, "dsactl: %s: %s\n", dump, strerror(-r));
                        return 1;
                }
        }

        qsort(ms, (size_t) runs, sizeof(*ms), cli_cmp_double);
        med = median(ms, (size_t) runs);
        p90 = quantile(ms, (size_t) runs, 0.9);
        min = ms[0];
        tps = (double) n_tok / (med / 1e3);
        flops = forward_flops(cfg, B, T);
        gflops = flops / (med / 1e3) / 1e9;

        if (json) {
                json_object *o = json_object_new_object();

                json_object_object_add(o, "model", json_object_new_string(model));
                json_object_object_add(o, "seq", json_object_new_int64(seq));
                json_object_object_add(o, "batch", json_object_new_int64(batch));
                json_object_object_add(o, "threads", json_object_new_int64(threads));
                json_object_object_add(o, "runs", json_object_new_int64(runs));
                json_object_object_add(o, "latency_ms_median", json_object_new_double(med));
                json_object_object_add(o, "latency_ms_p90", json_object_new_double(p90));
                json_object_object_add(o, "latency_ms_min", json_object_new_double(min));
                json_object_object_add(o, "tokens_per_s", json_object_new_double(tps));
                json_object_object_add(o, "gflops", json_object_new_double(gflops));
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        } else {
                printf("model:     %s (%" PRIu32 " layers, C %" PRIu32 ", FF %" PRIu32 ", %" PRIu32 " heads)\n",
                       model, cfg->n_layer, cfg->n_embd, cfg->n_ff, cfg->n_head);
                printf("shape:     batch %ld x seq %ld, %ld threads, %ld runs after %ld warmups\n",
                       batch, seq, threads, runs, warmup);
                printf("latency:   median %.2f ms, p90 %.2f ms, min %.2f ms\n", med, p90, min);
                printf("tokens/s:  %.0f\n", tps);
                printf("GFLOP/s:   %.1f (%.2f GFLOP of matmuls per forward)\n", gflops, flops / 1e9);
        }
        if (fflush(stdout) != 0) {
                fprintf(stderr, "dsactl: bench: writing output: %s\n", strerror(errno));
                return 1;
        }
        if (record) {
                /* dsa.variant.bench.s<N>.b<B>.t<threads>.ms: the median, in the model file itself. */
                char key[96], val[32];

                snprintf(key, sizeof(key), "bench.s%ld.b%ld.t%ld.ms", seq, batch, threads);
                snprintf(val, sizeof(val), "%.3f", med);
                r = dsa_model_set_info(m, key, val);
                if (r < 0) {
                        fprintf(stderr, "dsactl: %s: %s\n", model, strerror(-r));
                        return 1;
                }
                if (cli_record(m, model) < 0)
                        return 1;
        }
        return 0;
}
