/* dsactl optimize: makes a variant of a model (pruned, quantized, token-pruned) with
 * dsa_model_optimize() and writes it as GGUF with what was done recorded under dsa.variant.*.
 * Calibration texts come from --calib (a TSV with a text column, a plain text file, or a folder
 * of them; tsv.h), the first --calib-max of them, hashed so the file says which data it saw. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "basic/sha256.h"
#include "engine/attention-variant.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "glue.h"
#include "tsv.h"
#include "util.h"
#include "verbs.h"

static void optimize_usage(FILE *f) {
        fputs("Usage: dsactl optimize -m MODEL -o OUT.gguf [--quant f32|f16|bf16|int8|mixed]\n"
              "                       [--act dynamic|minmax|percentile] [--percentile P]\n"
              "                       [--mixed-target F] [--prune-heads F] [--prune-ffn F]\n"
              "                       [--sparsity F] [--sparsity-method magnitude|wanda|sparsegpt]\n"
              "                       [--sparsity-pattern unstructured|2:4|block16]\n"
              "                       [--token-keep F[,F...]|auto] [--token-target F]\n"
              "                       [--token-score attention|learned]\n"
              "                       [--attention dense|local|fixed|linear|dsa] [--att-block N]\n"
              "                       [--att-window N] [--att-global N] [--att-random N]\n"
              "                       [--att-mass F] [--att-cap N] [--att-blocks N]\n"
              "                       [--att-sparsity F] [--att-heuristic]\n"
              "                       [--att-oracle] [--att-scorer pooled|token]\n"
              "                       [--att-stride N] [--att-summary]\n"
              "                       [--att-summary-window N] [--scorer-rank N]\n"
              "                       [--head-importance output|grad] [--recover TRAIN.tsv\n"
              "                       --recover-task sst2|mrpc|rte --recover-steps N\n"
              "                       [--recover-lr F]]\n"
              "                       [--calib PATH] [--calib-max N] [--threads N] [--quiet]\n"
              "Writes a variant of MODEL. --calib: a TSV with a text column, a text file (one\n"
              "text per line) or a folder of them; needed by everything but f32/f16/bf16,\n"
              "dynamic int8, magnitude pruning, a fixed --token-keep (attention score) and\n"
              "attention variants other than a newly fitted dsa. See dsactl(1).\n",
              f);
}

static int usage_error(const char *why) {
        fprintf(stderr, "dsactl optimize: %s (see dsactl optimize --help)\n", why);
        return 2;
}

/* The number in [lo, hi] that s starts with; returns where it ends, or NULL. */
static const char *number_at(const char *s, double lo, double hi, double *ret) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || !(v >= lo && v <= hi))
                return NULL;
        *ret = v;
        return end;
}

static bool parse_fraction(const char *s, double lo, double hi, double *ret) {
        double v;
        const char *end = number_at(s, lo, hi, &v);

        if (!end || *end)
                return false;
        *ret = v;
        return true;
}

/* "F" or "F,F,...": fractions in [0.01, 1], at most max of them. */
static bool parse_keep_list(const char *s, float *ret, size_t max, size_t *ret_n) {
        size_t n = 0;

        for (;;) {
                double v;
                const char *end = number_at(s, 0.01, 1, &v);

                if (!end || n == max || (*end && *end != ','))
                        return false;
                ret[n++] = (float) v;
                if (!*end)
                        break;
                s = end + 1;
        }
        *ret_n = n;
        return true;
}

struct calib_set {
        char **texts, **pairs;
        size_t n;
        bool any_pair;
};

static void calib_set_clear(struct calib_set *c) {
        for (size_t i = 0; i < c->n; i++) {
                free(c->texts[i]);
                free(c->pairs[i]);
        }
        free(c->texts);
        free(c->pairs);
}

/* Reads at most max texts from path and hashes them into hex. */
static int read_calib(const char *path, size_t max, struct calib_set *c, char hex[65]) {
        _cleanup_(cli_text_source_freep) struct cli_text_source *src = NULL;
        struct dsa_sha256 h;
        const char *t, *p;
        int r;

        dsa_sha256_init(&h);
        r = cli_text_source_open(path, &src);
        if (r < 0)
                return r;
        c->texts = calloc(max, sizeof(char *));
        c->pairs = calloc(max, sizeof(char *));
        if (!c->texts || !c->pairs)
                return -ENOMEM;
        while (c->n < max && (r = cli_text_source_next(src, &t, &p)) > 0) {
                c->texts[c->n] = strdup(t);
                c->pairs[c->n] = p ? strdup(p) : NULL;
                if (!c->texts[c->n] || (p && !c->pairs[c->n]))
                        return -ENOMEM;
                dsa_sha256_update(&h, t, strlen(t));
                if (p) {
                        dsa_sha256_update(&h, "\t", 1);
                        dsa_sha256_update(&h, p, strlen(p));
                        c->any_pair = true;
                }
                dsa_sha256_update(&h, "\n", 1);
                c->n++;
        }
        if (r < 0)
                return r;
        if (c->n == 0)
                return dsa__error(-ENODATA, "%s: no texts", path);
        dsa_sha256_final_hex(&h, hex);
        return 0;
}

static void log_line(void *userdata, const char *line) {
        (void) userdata;
        fprintf(stderr, "dsactl optimize: %s\n", line);
}

int verb_optimize(int argc, char **argv) {
        enum {
                OPT_ATTENTION = 0x100, OPT_ATT_BLOCK, OPT_ATT_WINDOW, OPT_ATT_GLOBAL, OPT_ATT_RANDOM, OPT_ATT_MASS,
                OPT_ATT_CAP, OPT_ATT_BLOCKS, OPT_ATT_SPARSITY, OPT_ATT_HEURISTIC, OPT_ATT_ORACLE, OPT_ATT_SUMMARY, OPT_ATT_SUMMARY_WINDOW, OPT_ATT_SCORER, OPT_ATT_STRIDE, OPT_SCORER_RANK,
                OPT_HEAD_IMPORTANCE, OPT_RECOVER, OPT_RECOVER_TASK, OPT_RECOVER_STEPS, OPT_RECOVER_LR,
                OPT_TOKEN_SCORE,
        };
        static const struct option opts[] = {
                { "model", required_argument, NULL, 'm' },
                { "output", required_argument, NULL, 'o' },
                { "quant", required_argument, NULL, 'q' },
                { "act", required_argument, NULL, 'a' },
                { "percentile", required_argument, NULL, 'P' },
                { "mixed-target", required_argument, NULL, 'X' },
                { "prune-heads", required_argument, NULL, 'H' },
                { "prune-ffn", required_argument, NULL, 'F' },
                { "sparsity", required_argument, NULL, 's' },
                { "sparsity-method", required_argument, NULL, 'S' },
                { "sparsity-pattern", required_argument, NULL, 'p' },
                { "token-keep", required_argument, NULL, 'k' },
                { "token-target", required_argument, NULL, 'K' },
                { "token-score", required_argument, NULL, OPT_TOKEN_SCORE },
                { "calib", required_argument, NULL, 'c' },
                { "calib-max", required_argument, NULL, 'C' },
                { "threads", required_argument, NULL, 't' },
                { "quiet", no_argument, NULL, 'Q' },
                { "attention", required_argument, NULL, OPT_ATTENTION },
                { "att-block", required_argument, NULL, OPT_ATT_BLOCK },
                { "att-window", required_argument, NULL, OPT_ATT_WINDOW },
                { "att-global", required_argument, NULL, OPT_ATT_GLOBAL },
                { "att-random", required_argument, NULL, OPT_ATT_RANDOM },
                { "att-mass", required_argument, NULL, OPT_ATT_MASS },
                { "att-cap", required_argument, NULL, OPT_ATT_CAP },
                { "att-blocks", required_argument, NULL, OPT_ATT_BLOCKS },
                { "att-sparsity", required_argument, NULL, OPT_ATT_SPARSITY },
                { "att-heuristic", no_argument, NULL, OPT_ATT_HEURISTIC },
                { "att-oracle", no_argument, NULL, OPT_ATT_ORACLE },
                { "att-summary", no_argument, NULL, OPT_ATT_SUMMARY },
                { "att-summary-window", required_argument, NULL, OPT_ATT_SUMMARY_WINDOW },
                { "att-scorer", required_argument, NULL, OPT_ATT_SCORER },
                { "att-stride", required_argument, NULL, OPT_ATT_STRIDE },
                { "scorer-rank", required_argument, NULL, OPT_SCORER_RANK },
                { "head-importance", required_argument, NULL, OPT_HEAD_IMPORTANCE },
                { "recover", required_argument, NULL, OPT_RECOVER },
                { "recover-task", required_argument, NULL, OPT_RECOVER_TASK },
                { "recover-steps", required_argument, NULL, OPT_RECOVER_STEPS },
                { "recover-lr", required_argument, NULL, OPT_RECOVER_LR },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        struct dsa_optimize_opts o = {
                .quant = DSA_WFORMAT_F32, .mixed_target = 0.995, .act = DSA_ACT_DYNAMIC, .act_percentile = 99.99,
                .token_keep = -1, .token_target = 0.995, .log = log_line,
        };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        _cleanup_(calib_set_clear) struct calib_set cs = { 0 };
        _cleanup_(cli_labelled_clear) struct cli_labelled rec = { 0 };
        const struct cli_task *rec_task = NULL;
        const char *model = NULL, *out = NULL, *calib = NULL, *rec_path = NULL;
        unsigned long calib_max = 512, threads = 0, v;
        struct dsa__att att;
        bool att_set = false, att_param = false;
        double f;
        float keep_layers[64];
        char hex[65];
        int c, r;

        dsa__att_init(&att);
        att.stride = 0; /* unset: a kept token scorer keeps its own, a new one gets DSA_ATT_STRIDE */

        while ((c = getopt_long(argc, argv, "m:o:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'm':
                        model = optarg;
                        break;
                case 'o':
                        out = optarg;
                        break;
                case 'q':
                        if (!strcmp(optarg, "mixed"))
                                o.mixed = true;
                        else if (dsa_wformat_from_name(optarg, &o.quant) < 0 || o.quant == DSA_WFORMAT_SPARSE)
                                return usage_error("--quant is one of f32, f16, bf16, int8, mixed");
                        break;
                case 'a':
                        if (!strcmp(optarg, "dynamic"))
                                o.act = DSA_ACT_DYNAMIC;
                        else if (!strcmp(optarg, "minmax"))
                                o.act = DSA_ACT_MINMAX;
                        else if (!strcmp(optarg, "percentile"))
                                o.act = DSA_ACT_PERCENTILE;
                        else
                                return usage_error("--act is one of dynamic, minmax, percentile");
                        break;
                case 'P':
                        if (!parse_fraction(optarg, 50, 100, &o.act_percentile))
                                return usage_error("--percentile is a number in [50, 100]");
                        break;
                case 'X':
                        if (!parse_fraction(optarg, 0, 1, &o.mixed_target))
                                return usage_error("--mixed-target is a fraction in [0, 1]");
                        break;
                case 'H':
                        if (!parse_fraction(optarg, 0, 0.99, &o.prune_heads))
                                return usage_error("--prune-heads is a fraction in [0, 0.99]");
                        break;
                case 'F':
                        if (!parse_fraction(optarg, 0, 0.99, &o.prune_ffn))
                                return usage_error("--prune-ffn is a fraction in [0, 0.99]");
                        break;
                case 's':
                        if (!parse_fraction(optarg, 0, 0.99, &o.sparsity))
                                return usage_error("--sparsity is a fraction in [0, 0.99]");
                        break;
                case 'S':
                        if (!strcmp(optarg, "magnitude"))
                                o.sparsity_method = DSA_PRUNE_MAGNITUDE;
                        else if (!strcmp(optarg, "wanda"))
                                o.sparsity_method = DSA_PRUNE_WANDA;
                        else if (!strcmp(optarg, "sparsegpt"))
                                o.sparsity_method = DSA_PRUNE_SPARSEGPT;
                        else
                                return usage_error("--sparsity-method is one of magnitude, wanda, sparsegpt");
                        break;
                case 'p':
                        if (!strcmp(optarg, "unstructured"))
                                o.sparsity_pattern = DSA_SPARSE_UNSTRUCTURED;
                        else if (!strcmp(optarg, "2:4"))
                                o.sparsity_pattern = DSA_SPARSE_2_4;
                        else if (!strcmp(optarg, "block16"))
                                o.sparsity_pattern = DSA_SPARSE_BLOCK16;
                        else
                                return usage_error("--sparsity-pattern is one of unstructured, 2:4, block16");
                        break;
                case 'k':
                        if (!strcmp(optarg, "auto"))
                                o.token_keep = 0;
                        else if (!parse_keep_list(optarg, keep_layers, sizeof(keep_layers) / sizeof(keep_layers[0]),
                                                  &o.n_token_layers))
                                return usage_error("--token-keep is 'auto', a fraction in [0.01, 1] or one such "
                                                   "fraction per layer but the last, comma-separated");
                        else
                                o.token_keep = keep_layers[0], o.token_layers = keep_layers;
                        if (o.n_token_layers == 1)
                                o.n_token_layers = 0, o.token_layers = NULL;
                        break;
                case 'K':
                        if (!parse_fraction(optarg, 0, 1, &o.token_target))
                                return usage_error("--token-target is a fraction in [0, 1]");
                        break;
                case OPT_TOKEN_SCORE:
                        if (!strcmp(optarg, "attention") || !strcmp(optarg, "learned"))
                                o.token_learned = !strcmp(optarg, "learned");
                        else
                                return usage_error("--token-score is attention or learned");
                        break;
                case 'c':
                        calib = optarg;
                        break;
                case 'C':
                        if (cli_parse_uint(optarg, 1000000, &calib_max) < 0)
                                return usage_error("--calib-max is a positive integer");
                        break;
                case 't':
                        if (cli_parse_uint(optarg, 4096, &threads) < 0)
                                return usage_error("--threads is a positive integer");
                        break;
                case 'Q':
                        o.log = NULL;
                        break;
                case OPT_ATTENTION:
                        if (dsa_att_kind_from_name(optarg, &att.kind) < 0)
                                return usage_error("--attention is one of dense, local, fixed, linear, dsa");
                        att_set = true;
                        break;
                case OPT_ATT_BLOCK:
                case OPT_ATT_WINDOW:
                case OPT_ATT_GLOBAL:
                case OPT_ATT_RANDOM:
                case OPT_ATT_CAP:
                case OPT_ATT_BLOCKS:
                case OPT_SCORER_RANK:
                        if (cli_parse_uint(optarg, c == OPT_ATT_BLOCK ? DSA_ATT_MAX_BLOCK : c == OPT_SCORER_RANK ?
                                                   DSA_ATT_MAX_RANK : 1u << 20, &v) < 0)
                                return usage_error("--att-block/window/global/random/cap/blocks and --scorer-rank "
                                                   "take a positive integer (block <= 256, rank <= 64)");
                        if (c == OPT_ATT_BLOCK)
                                att.block = (uint32_t) v;
                        else if (c == OPT_ATT_WINDOW)
                                att.window = (uint32_t) v;
                        else if (c == OPT_ATT_GLOBAL)
                                att.global = (uint32_t) v;
                        else if (c == OPT_ATT_RANDOM)
                                att.random = (uint32_t) v;
                        else if (c == OPT_ATT_CAP)
                                att.count = (uint32_t) v;
                        else if (c == OPT_ATT_BLOCKS)
                                att.count = (uint32_t) v, att.select = DSA_ATT_SELECT_COUNT;
                        else
                                o.scorer_rank = (uint32_t) v;
                        att_param = true;
                        break;
                case OPT_ATT_MASS:
                        if (!parse_fraction(optarg, 0.01, 1, &f))
                                return usage_error("--att-mass is a fraction in [0.01, 1]");
                        att.mass = (float) f, att_param = true;
                        break;
                case OPT_ATT_SPARSITY:
                        if (!parse_fraction(optarg, 0, 0.99, &f))
                                return usage_error("--att-sparsity is a fraction in [0, 0.99]");
                        att.fraction = (float) (1 - f), att.select = DSA_ATT_SELECT_FRACTION, att_param = true;
                        break;
                case OPT_ATT_HEURISTIC:
                        att.heuristic = true, att_param = true;
                        break;
                case OPT_ATT_ORACLE:
                        att.oracle = true, att_param = true;
                        break;
                case OPT_ATT_SUMMARY:
                        att.summary = true, att_param = true;
                        break;
                case OPT_ATT_SUMMARY_WINDOW: /* implies --att-summary */
                        if (cli_parse_uint(optarg, 1u << 20, &v) < 0)
                                return usage_error("--att-summary-window takes a positive number of blocks <= 2^20");
                        att.summary = true, att.sum_window = (uint32_t) v, att_param = true;
                        break;
                case OPT_ATT_SCORER:
                        if (strcmp(optarg, "pooled") && strcmp(optarg, "token"))
                                return usage_error("--att-scorer is pooled or token");
                        att.token = !strcmp(optarg, "token"), att_param = true;
                        break;
                case OPT_ATT_STRIDE:
                        if (cli_parse_uint(optarg, DSA_ATT_MAX_BLOCK, &v) < 0)
                                return usage_error("--att-stride takes a positive integer <= 256");
                        att.stride = (uint32_t) v, att_param = true;
                        break;
                case OPT_HEAD_IMPORTANCE:
                        if (strcmp(optarg, "grad") && strcmp(optarg, "output"))
                                return usage_error("--head-importance is output or grad");
                        o.head_grad = !strcmp(optarg, "grad");
                        break;
                case OPT_RECOVER:
                        rec_path = optarg;
                        break;
                case OPT_RECOVER_TASK:
                        rec_task = cli_task_find(optarg);
                        if (!rec_task || rec_task->lm)
                                return usage_error("--recover-task is sst2, mrpc or rte");
                        break;
                case OPT_RECOVER_STEPS:
                        if (cli_parse_uint(optarg, 1000000, &v) < 0)
                                return usage_error("--recover-steps takes a positive number");
                        o.recover_steps = v;
                        break;
                case OPT_RECOVER_LR:
                        if (!parse_fraction(optarg, 1e-9, 1, &f))
                                return usage_error("--recover-lr takes a number in (0, 1]");
                        o.recover_lr = (float) f;
                        break;
                case 'h':
                        optimize_usage(stdout);
                        return 0;
                default:
                        optimize_usage(stderr);
                        return 2;
                }
        }
        if (optind < argc)
                return usage_error("takes no positional arguments");
        if (!model || !out)
                return usage_error("-m MODEL and -o OUT.gguf are required");
        if (o.sparsity_pattern == DSA_SPARSE_2_4 && o.sparsity > 0 && o.sparsity != 0.5)
                return usage_error("the 2:4 pattern prunes exactly --sparsity 0.5");
        if (att_param && !att_set)
                return usage_error("the --att-* options need --attention");
        if (att_set)
                o.attention = &att;
        if (!rec_path != !rec_task || !rec_path != !o.recover_steps || (!rec_path && o.recover_lr > 0))
                return usage_error("--recover TRAIN.tsv, --recover-task and --recover-steps go together");
        if (o.token_learned && o.token_keep < 0)
                return usage_error("--token-score needs --token-keep");

        if (calib) {
                dsa_error_clear();
                r = read_calib(calib, calib_max, &cs, hex);
                if (r < 0) {
                        fprintf(stderr, "dsactl: %s\n", dsa_error_message(r));
                        return 1;
                }
                o.calib = (const char *const *) cs.texts;
                o.calib_pairs = cs.any_pair ? (const char *const *) cs.pairs : NULL;
                o.n_calib = cs.n;
                o.calib_hash = hex;
        }
        o.parent = model;
        if (cli_open_model(model, &m) < 0)
                return 1;
        if (cli_set_threads(m, (int) threads) < 0)
                return 1;
        if (rec_path) {
                if (cli_labelled_load(rec_task, m, rec_path, (size_t) -1, &rec) < 0)
                        return 1;
                o.recover_texts = (const char *const *) rec.texts;
                o.recover_pairs = (const char *const *) rec.pairs;
                o.recover_labels = rec.labels;
                o.n_recover = rec.n;
        }
        dsa_error_clear();
        r = dsa_model_optimize(m, &o);
        if (r < 0)
                return cli_error(r, model), 1;
        r = dsa_model_save_variant(m, out);
        if (r < 0)
                return cli_error(r, out), 1;
        if (o.log)
                fprintf(stderr, "dsactl optimize: wrote %s (%s, weights %.1f MB)\n", out,
                        dsa_model_info(m, "method"), (double) dsa_model_weight_bytes(m) / 1e6);
        return 0;
}
