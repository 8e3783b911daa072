/* dsactl bench --attention M1,M2,...: the attention scaling sweep of decoder variants. Every
 * variant file (the first is the baseline, normally dense) runs one forward per sequence length
 * on the same tokens (--data: the documents eval --task ppl reads, back to back and repeated to
 * the length; without it a fixed pseudo-random sequence), and the best of --runs gives the time spent in attention and in the
 * whole forward (up to the final hidden states; the output head is not timed), with the share of
 * (query block, key block) pairs computed. Lengths past a model's context run with extrapolated
 * rotary positions: timing only. Speed-ups are against the baseline in the same run; the runs go
 * round-robin over the variants. Each ratio is given twice: the best runs' ratio, and the median
 * over the rounds of each round's ratio (the baseline's run and the variant's in the same round),
 * which a slow spell of a shared host moves less, since it falls on both sides of a round's
 * ratio alike. The best run's attention is also given by phase: the pass over the rows (rotary,
 * packing, block means, the token scorer's bytes), the block choice, and the streaming kernel
 * over the chosen blocks, the last two as each thread's share. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "eval-lm.h"
#include "util.h"
#include "verbs.h"

#define MAX_VARIANTS 32
#define MAX_LENGTHS 16

/* The run with the least attention time, and the phases of that run (ms; rows wall time, select
 * and attend CPU time over the threads divided by the threads); the medians of the rounds' ratios
 * against the baseline. */
struct result {
        double att_ms, fwd_ms, kept;
        double rows_ms, select_ms, attend_ms;
        double att_xmed, fwd_xmed;
};

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

/* The median of base[k] / t[k] over k < n (n >= 1); sorts into tmp (n). */
static double median_ratio(const double *base, const double *t, size_t n, double *tmp) {
        for (size_t k = 0; k < n; k++)
                tmp[k] = base[k] / t[k];
        qsort(tmp, n, sizeof(double), cmp_double);
        return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

/* The first n tokens of data's documents (repeated) into ids. */
static int load_tokens(const struct dsa_model *m, const char *data, size_t n, int32_t *ids) {
        size_t have = 0;
        int r;

        if (!data) {
                uint64_t s = 12345;
                const size_t V = dsa_model_llama_config(m)->n_vocab;
                for (size_t i = 0; i < n; i++) {
                        s = s * 6364136223846793005ull + 1442695040888963407ull;
                        ids[i] = (int32_t) ((s >> 33) % V);
                }
                return 0;
        }
        /* the documents eval --task ppl reads, back to back */
        _cleanup_(cli_lm_docs_clear) struct cli_lm_docs docs = { 0 };
        if ((r = cli_lm_docs_load(m, data, &docs)) < 0)
                return r;
        for (size_t i = 0; i < docs.n && have < n; i++) {
                size_t k = MIN(docs.d[i].n, n - have);
                memcpy(ids + have, docs.d[i].ids, k * sizeof(int32_t));
                have += k;
        }
        if (have == 0)
                return dsa__error(-ENODATA, "%s has no tokens", data);
        for (size_t i = have; i < n; i++)
                ids[i] = ids[i % have];
        return 0;
}

static int parse_list(char *s, char **items, size_t max, size_t *ret_n) {
        size_t n = 0;
        for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
                if (n == max)
                        return -E2BIG;
                items[n++] = tok;
        }
        *ret_n = n;
        return n ? 0 : -EINVAL;
}

int bench_attention(int argc, char **argv) {
        enum { OPT_ATTENTION = 0x100, OPT_DATA, OPT_LENGTHS, OPT_RUNS, OPT_THREADS, OPT_JSON };
        static const struct option options[] = {
                { "attention", required_argument, NULL, OPT_ATTENTION },
                { "data", required_argument, NULL, OPT_DATA },
                { "lengths", required_argument, NULL, OPT_LENGTHS },
                { "runs", required_argument, NULL, OPT_RUNS },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "json", no_argument, NULL, OPT_JSON },
                {}
        };
        _cleanup_free_ char *vlist = NULL, *llist = strdup("256,512,1024,2048,4096,8192");
        _cleanup_free_ int32_t *ids = NULL;
        _cleanup_free_ double *times = NULL; /* (nv, 2, runs): each run's attention and forward ms */
        char *vname[MAX_VARIANTS], *lname[MAX_LENGTHS];
        size_t nv = 0, nl = 0, lens[MAX_LENGTHS], maxT = 0;
        struct dsa_model *models[MAX_VARIANTS] = { 0 };
        struct result res[MAX_VARIANTS][MAX_LENGTHS];
        const char *data = NULL;
        unsigned long runs = 1, threads = 0, v;
        bool json = false;
        int c, r, ret = 1;

        optind = 1;
        opterr = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case OPT_ATTENTION:
                        free(vlist);
                        vlist = strdup(optarg);
                        break;
                case OPT_DATA:
                        data = optarg;
                        break;
                case OPT_LENGTHS:
                        free(llist);
                        llist = strdup(optarg);
                        break;
                case OPT_RUNS:
                case OPT_THREADS:
                        if (cli_parse_uint(optarg, 1000, &v) < 0) {
                                fprintf(stderr, "dsactl: bench: --runs and --threads take a positive number\n");
                                return 2;
                        }
                        *(c == OPT_RUNS ? &runs : &threads) = v;
                        break;
                case OPT_JSON:
                        json = true;
                        break;
                default:
                        fprintf(stderr, "dsactl: bench --attention: unknown option or missing value '%s' "
                                        "(takes --attention M1,M2,... --data --lengths --runs --threads --json)\n",
                                argv[optind - 1]);
                        return 2;
                }
        }
        if (!vlist || !llist || parse_list(vlist, vname, MAX_VARIANTS, &nv) < 0 ||
            parse_list(llist, lname, MAX_LENGTHS, &nl) < 0) {
                fprintf(stderr, "dsactl: bench: --attention takes 1 to %d comma-separated model files, --lengths up "
                                "to %d lengths\n", MAX_VARIANTS, MAX_LENGTHS);
                return 2;
        }
        for (size_t i = 0; i < nl; i++) {
                if (cli_parse_uint(lname[i], 1 << 20, &v) < 0 || v < 2) {
                        fprintf(stderr, "dsactl: bench: length '%s' is not a number >= 2\n", lname[i]);
                        return 2;
                }
                lens[i] = v, maxT = MAX(maxT, (size_t) v);
        }
        int nthr = 0; /* the threads the forwards run on (the first model's; all are set alike) */
        for (size_t i = 0; i < nv; i++) {
                if (cli_open_model(vname[i], &models[i]) < 0)
                        goto out;
                if (!dsa_model_llama_config(models[i])) {
                        fprintf(stderr, "dsactl: %s: bench --attention needs a decoder\n", vname[i]);
                        goto out;
                }
                const int n = cli_set_threads(models[i], (int) threads);
                if (n <= 0)
                        goto out;
                if (i == 0)
                        nthr = n;
                dsa_model_lm_allow_long(models[i], true);
        }
        ids = malloc(maxT * sizeof(int32_t));
        times = malloc((2 * nv + 1) * runs * sizeof(double));
        if (!ids || !times || (r = load_tokens(models[0], data, maxT, ids)) < 0) {
                cli_error(ids && times ? r : -ENOMEM, data ? data : "tokens");
                goto out;
        }
        for (size_t i = 0; i < nv; i++)
                for (size_t t = 0; t < maxT; t++)
                        if ((uint32_t) ids[t] >= dsa_model_llama_config(models[i])->n_vocab) {
                                fprintf(stderr, "dsactl: %s: token %d of the data is past the vocabulary\n", vname[i],
                                        ids[t]);
                                goto out;
                        }
        if (!json)
                printf("%6s  %-44s %12s %12s %8s %9s %9s %9s %9s %8s %8s %8s\n", "tokens", "variant", "attention ms",
                       "forward ms", "blocks", "att. x", "fwd. x", "att. med", "fwd. med", "rows", "select",
                       "attend");
        for (size_t j = 0; j < nl; j++) {
                for (size_t i = 0; i < nv; i++)
                        res[i][j] = (struct result) { .att_ms = 1e300, .fwd_ms = 1e300 };
                /* the runs round-robin over the variants, so that a slower spell of a shared machine
                 * falls on all of them alike */
                for (unsigned long k = 0; k < runs; k++)
                        for (size_t i = 0; i < nv; i++) {
                                struct dsa_lm_stats st = { 0 };
                                struct result *b = &res[i][j];
                                if ((r = dsa_model_lm_forward(models[i], ids, lens[j], NULL, NULL, &st)) < 0) {
                                        cli_error(r, vname[i]);
                                        goto out;
                                }
                                if (st.attention_ns / 1e6 < b->att_ms) {
                                        b->att_ms = st.attention_ns / 1e6;
                                        b->rows_ms = st.rows_ns / 1e6;
                                        b->select_ms = st.select_ns / 1e6 / nthr;
                                        b->attend_ms = st.attend_ns / 1e6 / nthr;
                                }
                                b->fwd_ms = MIN(b->fwd_ms, st.forward_ns / 1e6);
                                b->kept = st.blocks_visible ? (double) st.blocks_kept / (double) st.blocks_visible : 0;
                                times[(2 * i) * runs + k] = st.attention_ns / 1e6;
                                times[(2 * i + 1) * runs + k] = st.forward_ns / 1e6;
                        }
                for (size_t i = 0; i < nv; i++) {
                        struct result *b = &res[i][j];
                        double *tmp = times + 2 * nv * runs;
                        b->att_xmed = median_ratio(times, times + 2 * i * runs, runs, tmp);
                        b->fwd_xmed = median_ratio(times + runs, times + (2 * i + 1) * runs, runs, tmp);
                        if (json)
                                continue;
                        const char *a = dsa_model_info(models[i], "attention");
                        printf("%6zu  %-44.44s %12.1f %12.1f %7.1f%% %8.2fx %8.2fx %8.2fx %8.2fx %8.1f %8.1f %8.1f\n",
                               lens[j], a ? a : "dense", b->att_ms, b->fwd_ms, 100 * b->kept,
                               res[0][j].att_ms / b->att_ms, res[0][j].fwd_ms / b->fwd_ms, b->att_xmed, b->fwd_xmed,
                               b->rows_ms, b->select_ms, b->attend_ms);
                        fflush(stdout);
                }
        }
        if (json) {
                json_object *o = json_object_new_object(), *va = json_object_new_array();
                json_object_object_add(o, "threads", json_object_new_int(nthr));
                json_object_object_add(o, "runs", json_object_new_int((int) runs));
                for (size_t i = 0; i < nv; i++) {
                        json_object *vo = json_object_new_object(), *ra = json_object_new_array();
                        const char *a = dsa_model_info(models[i], "attention");
                        json_object_object_add(vo, "model", json_object_new_string(vname[i]));
                        json_object_object_add(vo, "attention", json_object_new_string(a ? a : "dense"));
                        for (size_t j = 0; j < nl; j++) {
                                json_object *x = json_object_new_object();
                                json_object_object_add(x, "tokens", json_object_new_int64((int64_t) lens[j]));
                                json_object_object_add(x, "attention_ms", json_object_new_double(res[i][j].att_ms));
                                json_object_object_add(x, "forward_ms", json_object_new_double(res[i][j].fwd_ms));
                                json_object_object_add(x, "attention_x_median",
                                                       json_object_new_double(res[i][j].att_xmed));
                                json_object_object_add(x, "forward_x_median",
                                                       json_object_new_double(res[i][j].fwd_xmed));
                                json_object_object_add(x, "blocks_kept", json_object_new_double(res[i][j].kept));
                                json_object_object_add(x, "rows_ms", json_object_new_double(res[i][j].rows_ms));
                                json_object_object_add(x, "select_ms", json_object_new_double(res[i][j].select_ms));
                                json_object_object_add(x, "attend_ms", json_object_new_double(res[i][j].attend_ms));
                                json_object_array_add(ra, x);
                        }
                        json_object_object_add(vo, "results", ra);
                        json_object_array_add(va, vo);
                }
                json_object_object_add(o, "variants", va);
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
        }
        ret = 0;
out:
        for (size_t i = 0; i < nv; i++)
                dsa_model_free(models[i]);
        return ret;
}
