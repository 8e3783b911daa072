/* dsactl eval --task ppl: a decoder's perplexity over documents, in-process, with the attention
 * variant the model file carries. Documents come from --data:
 *   - a .safetensors file of 1-D I32 token-id tensors (e.g. fixtures' eval_docs.safetensors,
 *     "doc.0" .. "doc.160"), taken in the numeric order of their names' last field;
 *   - a text file (one document) or a folder of them (each file one document, in name order),
 *     tokenized with the model's tokenizer;
 * each cut into windows of the model's context length (a window of fewer than 2 tokens is
 * dropped). Each window's NLL is the mean of -log p(x[t+1] | x[..t]); the corpus perplexity is
 * exp of the token-weighted mean. For sparse attention the share of (query block, key block)
 * pairs computed is reported per document, the DSA's dynamic allocation at a glance. */
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "basic/macro.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "engine/variant.h"
#include "eval-lm.h"
#include "util.h"

void cli_lm_docs_clear(struct cli_lm_docs *x) {
        for (size_t i = 0; i < x->n; i++) {
                free(x->d[i].name);
                free(x->d[i].ids);
        }
        free(x->d);
}

static int docs_add(struct cli_lm_docs *x, const char *name, const int32_t *ids, size_t n) {
        struct cli_lm_doc *d = realloc(x->d, (x->n + 1) * sizeof(*d));
        if (!d)
                return -ENOMEM;
        x->d = d;
        d = &x->d[x->n];
        d->name = strdup(name);
        d->ids = malloc(MAX(n, (size_t) 1) * sizeof(int32_t));
        if (!d->name || !d->ids) {
                free(d->name);
                free(d->ids);
                return -ENOMEM;
        }
        memcpy(d->ids, ids, n * sizeof(int32_t));
        d->n = n;
        x->n++;
        return 0;
}

/* The number after the last '.' or '_' of a tensor name, for ordering doc.2 before doc.10. */
static long name_index(const char *s) {
        const char *p = strrchr(s, '.');
        const char *q = strrchr(s, '_');
        char *end;
        if (q && (!p || q > p))
                p = q;
        if (!p)
                return -1;
        long v = strtol(p + 1, &end, 10);
        return *end ? -1 : v;
}

static int cmp_doc(const void *a, const void *b) {
        const struct cli_lm_doc *x = a, *y = b;
        long i = name_index(x->name), j = name_index(y->name);
        if (i >= 0 && j >= 0 && i != j)
                return i < j ? -1 : 1;
        return strcmp(x->name, y->name);
}

static int load_safetensors(const char *path, struct cli_lm_docs *x) {
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *st = NULL;
        int r = dsa_safetensors_open(path, &st);

        if (r < 0)
                return r;
        for (size_t i = 0; i < dsa_safetensors_n_tensors(st); i++) {
                const struct dsa_tensor_view *v = dsa_safetensors_tensor(st, i);
                if (v->type != DSA_TYPE_I32 || v->n_dims != 1)
                        continue;
                if ((r = docs_add(x, v->name, v->data, v->ne[0])) < 0)
                        return r;
        }
        if (x->n == 0)
                return dsa__error(-ENODATA, "%s has no 1-D I32 token tensors", path);
        qsort(x->d, x->n, sizeof(*x->d), cmp_doc);
        return 0;
}

static int load_text(const struct dsa_model *m, const char *path, const char *name, struct cli_lm_docs *x) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        FILE *f = fopen(path, "re");
        int r;

        if (!f)
                return dsa__error(-errno, "%s: %m", path);
        struct stat st;
        if (fstat(fileno(f), &st) < 0 || st.st_size > (1 << 30)) {
                fclose(f);
                return dsa__error(-EFBIG, "%s: not a regular file under 1 GiB", path);
        }
        buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                fclose(f);
                return -ENOMEM;
        }
        len = fread(buf, 1, (size_t) st.st_size, f);
        fclose(f);
        struct dsa_encoding e = { 0 };
        r = dsa_tokenizer_encode(dsa_model_tokenizer(m), buf, len, NULL, 0, 0, 0, &e);
        if (r < 0)
                return dsa__error(r, "%s: cannot tokenize", path);
        r = docs_add(x, name, e.ids, e.n);
        dsa_encoding_clear(&e);
        return r;
}

static int filter_name(const struct dirent *d) {
        return d->d_name[0] != '.';
}

int cli_lm_docs_load(const struct dsa_model *m, const char *path, struct cli_lm_docs *x) {
        struct stat st;
        size_t n = strlen(path);
        int r = 0;

        if (stat(path, &st) < 0)
                return dsa__error(-errno, "%s: %m", path);
        if (S_ISREG(st.st_mode) && n > 12 && strcmp(path + n - 12, ".safetensors") == 0)
                return load_safetensors(path, x);
        if (!dsa_model_tokenizer(m))
                return dsa__error(-EINVAL, "the model has no tokenizer: give token ids (.safetensors)");
        if (S_ISREG(st.st_mode))
                return load_text(m, path, path, x);
        if (!S_ISDIR(st.st_mode))
                return dsa__error(-EINVAL, "%s is neither a file nor a folder", path);
        struct dirent **list = NULL;
        int k = scandir(path, &list, filter_name, alphasort);
        if (k < 0)
                return dsa__error(-errno, "%s: %m", path);
        for (int i = 0; i < k; i++) {
                char p[4096];
                if (r >= 0 && snprintf(p, sizeof(p), "%s/%s", path, list[i]->d_name) < (int) sizeof(p) &&
                    stat(p, &st) == 0 && S_ISREG(st.st_mode))
                        r = load_text(m, p, list[i]->d_name, x);
                free(list[i]);
        }
        free(list);
        if (r >= 0 && x->n == 0)
                r = dsa__error(-ENODATA, "%s has no files", path);
        return r;
}

int eval_ppl(struct dsa_model *m, const char *model, const char *data, unsigned long limit, bool json, bool rec,
             int threads) {
        _cleanup_(cli_lm_docs_clear) struct cli_lm_docs docs = { 0 };
        const struct dsa_llama_config *c = dsa_model_llama_config(m);
        struct dsa_lm_stats total = { 0 };
        double sum = 0, t0;
        size_t tokens = 0, n_docs;
        int r;

        if (!c) {
                fprintf(stderr, "dsactl: %s: --task ppl needs a decoder (language model); this is a BERT encoder\n",
                        model);
                return 1;
        }
        dsa_error_clear();
        r = cli_lm_docs_load(m, data, &docs);
        if (r < 0)
                return cli_error(r, data), 1;
        n_docs = MIN(docs.n, (size_t) limit);
        _cleanup_free_ double *doc_nll = calloc(n_docs, sizeof(double)), *kept = calloc(n_docs, sizeof(double));
        _cleanup_free_ double *sorted = calloc(n_docs, sizeof(double));
        _cleanup_free_ size_t *doc_tok = calloc(n_docs, sizeof(size_t));
        _cleanup_free_ double *nll = malloc(c->n_ctx * sizeof(double));
        if (!doc_nll || !kept || !sorted || !doc_tok || !nll)
                return cli_error(-ENOMEM, "eval"), 1;

        t0 = now_sec();
        for (size_t i = 0; i < n_docs; i++) {
                struct dsa_lm_stats st = { 0 };
                double ds = 0;
                size_t dn = 0;
                for (size_t at = 0; at + 1 < docs.d[i].n; at += c->n_ctx) {
                        const size_t T = MIN((size_t) c->n_ctx, docs.d[i].n - at);
                        if (T < 2)
                                break;
                        r = dsa_model_lm_nll(m, docs.d[i].ids + at, T, nll, &st);
                        if (r < 0)
                                return cli_error(r, docs.d[i].name), 1;
                        for (size_t t = 0; t + 1 < T; t++)
                                ds += nll[t];
                        dn += T - 1;
                }
                doc_nll[i] = dn ? ds / (double) dn : 0;
                doc_tok[i] = dn;
                kept[i] = st.blocks_visible ? (double) st.blocks_kept / (double) st.blocks_visible : 1.0;
                sum += ds, tokens += dn;
                total.attention_ns += st.attention_ns, total.forward_ns += st.forward_ns, total.head_ns += st.head_ns;
                total.blocks_kept += st.blocks_kept, total.blocks_visible += st.blocks_visible;
                if (!json && isatty(fileno(stderr)))
                        fprintf(stderr, "\r%zu/%zu documents", i + 1, n_docs);
        }
        if (!json && isatty(fileno(stderr)))
                fputc('\n', stderr);
        const double secs = now_sec() - t0, mean_nll = tokens ? sum / (double) tokens : 0, ppl = exp(mean_nll);
        double doc_mean = 0;
        for (size_t i = 0; i < n_docs; i++)
                doc_mean += doc_nll[i] / (double) n_docs;
        memcpy(sorted, kept, n_docs * sizeof(double));
        qsort(sorted, n_docs, sizeof(double), cli_cmp_double);
        const double frac = total.blocks_visible ? (double) total.blocks_kept / (double) total.blocks_visible : 1.0;
        const char *att = dsa_model_info(m, "attention");

        if (json) {
                json_object *o = json_object_new_object(), *arr = json_object_new_array();
                json_object_object_add(o, "task", json_object_new_string("ppl"));
                json_object_object_add(o, "model", json_object_new_string(model));
                json_object_object_add(o, "data", json_object_new_string(data));
                json_object_object_add(o, "attention", json_object_new_string(att ? att : "dense"));
                json_object_object_add(o, "documents", json_object_new_int64((int64_t) n_docs));
                json_object_object_add(o, "tokens", json_object_new_int64((int64_t) tokens));
                json_object_object_add(o, "ppl", json_object_new_double(ppl));
                json_object_object_add(o, "nll", json_object_new_double(mean_nll));
                json_object_object_add(o, "doc_mean_nll", json_object_new_double(doc_mean));
                json_object_object_add(o, "blocks_kept", json_object_new_double(frac));
                json_object_object_add(o, "seconds", json_object_new_double(secs));
                json_object_object_add(o, "attention_seconds", json_object_new_double(total.attention_ns / 1e9));
                json_object_object_add(o, "forward_seconds", json_object_new_double(total.forward_ns / 1e9));
                json_object_object_add(o, "threads", json_object_new_int(threads));
                for (size_t i = 0; i < n_docs; i++) {
                        json_object *d = json_object_new_object();
                        json_object_object_add(d, "name", json_object_new_string(docs.d[i].name));
                        json_object_object_add(d, "tokens", json_object_new_int64((int64_t) doc_tok[i] + 1));
                        json_object_object_add(d, "nll", json_object_new_double(doc_nll[i]));
                        json_object_object_add(d, "blocks_kept", json_object_new_double(kept[i]));
                        json_object_array_add(arr, d);
                }
                json_object_object_add(o, "docs", arr);
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
        } else {
                printf("model:       %s\n", model);
                printf("task:        ppl, %zu documents, %zu predicted tokens of %s\n", n_docs, tokens, data);
                printf("perplexity:  %.4f (mean NLL %.6f per token; mean of per-document NLLs %.6f)\n", ppl, mean_nll,
                       doc_mean);
                printf("attention:   %s; blocks computed %.1f%% of the causal ones", att ? att : "dense", 100 * frac);
                if (n_docs > 0 && frac < 1)
                        printf(" (per document: min %.1f%%, median %.1f%%, max %.1f%%)", 100 * sorted[0],
                               100 * sorted[n_docs / 2], 100 * sorted[n_docs - 1]);
                printf("\ntime:        %.1f s, %.0f tokens/s, %d threads (forward %.1f s, of which attention %.1f s)\n",
                       secs, secs > 0 ? tokens / secs : 0, threads, total.forward_ns / 1e9, total.attention_ns / 1e9);
        }
        if (rec) {
                char v[64];
#define SET(k, ...)                                                                                    \
        do {                                                                                           \
                snprintf(v, sizeof(v), __VA_ARGS__);                                                   \
                if (dsa_model_set_info(m, "eval.ppl." k, v) < 0)                                       \
                        return cli_error(-ENOMEM, "eval"), 1;                                          \
        } while (0)
                SET("ppl", "%.6f", ppl);
                SET("nll", "%.6f", mean_nll);
                SET("documents", "%zu", n_docs);
                SET("tokens", "%zu", tokens);
                SET("blocks_kept", "%.4f", frac);
#undef SET
                if (cli_record(m, model) < 0)
                        return 1;
        }
        return 0;
}
