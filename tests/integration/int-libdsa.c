/* libdsa against the real dsad on a private bus: every result of dsa_classify(), dsa_embed()
 * (each pool) and dsa_tokenize() (with and without specials), synchronous and asynchronous,
 * equals what the in-process engine computes for the same texts: the same code on the same
 * batch, so bit for bit (a text batched alone differs from the same text padded in a batch by
 * ~5e-7; that comparison gets 1e-4). ListModels, GetStatus, ListSessions say what they should;
 * documented errors come back as their errnos; unload under an open session gives -ENOENT. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dsa/dsa.h>

#include "common.h"
#include "expect.h"
#include "itest.h"

static struct itest T;

#define CHECK(cond, ...) ITEST_CHECK(&T, cond, __VA_ARGS__)

static const char *const texts[] = {
        "a gripping, beautifully acted film",
        "the worst movie I have seen this year",
        "",
        "Café déjà vu: naïve über-coöperation, 日本語のテキスト and emoji 😀👍",
        "it's not bad , not bad at all !",
        "UPPER case and MiXeD CaSe words",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines",
        "numbers 12345 and 3.14159 and -7",
        "an extraordinarily long sentence that goes on and on about nothing in particular, "
        "repeating itself, meandering through clauses, and refusing to end until it has used "
        "a great many tokens so that the padding of the shorter texts in its batch matters",
};
#define N (sizeof(texts) / sizeof(texts[0]))

/* The same code on the same batch: bit for bit. */
static const float TOL = 0.0f;

struct async_state {
        int done;
        int status[4];
        struct dsa_result res[4];
        struct dsa_classify_result *classify;
        float *emb;
        struct dsa_tokens *tokens;
};

static void on_done(struct dsa_session *s, uint64_t id, int status, struct dsa_result *r, void *userdata) {
        struct async_state *a = userdata;
        int k = a->done++;

        if (k >= 4)
                return;
        a->status[k] = status;
        if (status < 0 || !r)
                return;
        a->res[k] = *r;
        /* Take the arrays: they outlive the callback. */
        if (r->classify) {
                a->classify = r->classify;
                r->classify = NULL;
        }
        if (r->embeddings) {
                a->emb = r->embeddings;
                r->embeddings = NULL;
        }
        if (r->tokens) {
                a->tokens = r->tokens;
                r->tokens = NULL;
        }
}

int main(void) {
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        struct dsa_model_info *models = NULL;
        struct dsa_session_info *sessions = NULL;
        struct dsa_status *st = NULL;
        size_t n_models = 0, n_sessions = 0, L, C, dim = 0;
        float *want, *want_single, *got;
        struct dsa_classify_result *cr = NULL;
        int r;
        bool ok = true;

        itest_init(&T, NULL);
        CHECK(expect_open(itest_model_path()) >= 0, "engine opens the bundled model");
        L = expect_n_labels();
        C = expect_dim();
        itest_dsad_start(&T, NULL);

        r = dsa_client_new(NULL, &c); /* $DSA_BUS_ADDRESS */
        CHECK(r >= 0, "dsa_client_new: %s", strerror(-r));

        /* ListModels before anything is loaded. */
        r = dsa_client_list_models(c, &models, &n_models);
        CHECK(r >= 0 && n_models == 1, "ListModels: r=%d n=%zu", r, n_models);
        CHECK(!strcmp(models[0].name, "sst2") && !models[0].loaded && !strcmp(models[0].architecture, "bert") &&
                      models[0].hidden_size == C && models[0].n_labels == L,
              "ListModels entry: %s loaded=%d %s %u %u", models[0].name, models[0].loaded, models[0].architecture,
              models[0].hidden_size, models[0].n_labels);
        models = dsa_model_info_free(models, n_models);

        /* Documented errors. */
        r = dsa_session_open(c, "nosuch", 0, 0, &s);
        CHECK(r == -ENOENT, "open on a missing model: %d (want -ENOENT)", r);
        CHECK(dsa_client_error_message(c) != NULL, "missing model has a reason");
        r = dsa_session_open(c, "../etc/passwd", 0, 0, &s);
        CHECK(r == -EINVAL, "open with a bad name: %d (want -EINVAL)", r);
        r = dsa_session_open(c, "sst2", 257, 0, &s);
        CHECK(r == -EINVAL, "open with 257 slots: %d (want -EINVAL)", r);
        r = dsa_session_open(c, "sst2", 1, 100, &s);
        CHECK(r == -EINVAL, "open with slot size 100: %d (want -EINVAL)", r);
        r = dsa_client_unload_model(c, "sst2");
        CHECK(r == -EALREADY, "unload of a model not loaded: %d (want -EALREADY)", r);
        r = dsa_client_load_model(c, "nosuch");
        CHECK(r == -ENOENT, "load of a missing model: %d (want -ENOENT)", r);

        r = dsa_session_open(c, "sst2", 4, 0, &s);
        CHECK(r >= 0, "dsa_session_open: %s (%s)", strerror(-r), dsa_client_error_message(c));
        {
                const char *const *labels;
                int nl = dsa_session_get_labels(s, &labels);
                CHECK(nl == (int) L, "labels: %d (want %zu)", nl, L);
        }

        /* Classify: all texts in one request, against the engine's batch of the same texts. */
        want = calloc(N * (L > C ? L : C), sizeof(float));
        want_single = calloc(N * (L > C ? L : C), sizeof(float));
        got = calloc(N * (L > C ? L : C), sizeof(float));
        CHECK(want && want_single && got, "oom");
        CHECK(expect_classify(texts, N, 0, want) >= 0, "engine classify");
        CHECK(expect_classify(texts, N, 1, want_single) >= 0, "engine classify (one by one)");
        r = dsa_classify(s, texts, N, &cr);
        CHECK(r >= 0, "dsa_classify: %s (%s)", strerror(-r), dsa_client_error_message(c) ?: "");
        for (size_t i = 0; i < N; i++) {
                size_t best = 0;
                double sum = 0;
                CHECK(cr[i].n_labels == L, "n_labels %zu", cr[i].n_labels);
                memcpy(got + i * L, cr[i].logits, L * sizeof(float));
                for (size_t j = 0; j < L; j++) {
                        if (want[i * L + j] > want[i * L + best])
                                best = j;
                        sum += cr[i].probs[j];
                }
                CHECK(cr[i].label_id == best, "text %zu: label %u, engine says %zu", i, cr[i].label_id, best);
                CHECK(cr[i].label != NULL, "text %zu has a label name", i);
                CHECK(fabs(sum - 1) < 1e-5, "text %zu: probs sum to %.9g", i, sum);
        }
        ok &= itest_close("classify logits vs engine (same batch)", got, want, N * L, TOL, TOL, true);
        ok &= itest_close("classify logits vs engine (one text per batch)", got, want_single, N * L, 1e-4f, 1e-4f,
                          true);
        cr = dsa_classify_result_free(cr);

        /* Embed: every pool. */
        for (int pool = 0; pool <= 3; pool++) {
                float *emb = NULL;
                char what[80];
                CHECK(expect_embed(texts, N, pool, 0, want) >= 0, "engine embed pool %d", pool);
                r = dsa_embed(s, texts, N, (enum dsa_pool) pool, &emb, &dim);
                CHECK(r >= 0, "dsa_embed pool %d: %s", pool, strerror(-r));
                CHECK(dim == C, "dim %zu (want %zu)", dim, C);
                snprintf(what, sizeof(what), "embed pool %d vs engine", pool);
                ok &= itest_close(what, emb, want, N * C, TOL, TOL, true);
                free(emb);
        }

        /* Tokenize: ids identical. */
        for (int special = 0; special <= 1; special++) {
                struct dsa_tokens *tk = NULL;
                r = dsa_tokenize(s, texts, N, special ? 0 : DSA_TOKENIZE_NO_SPECIAL, &tk);
                CHECK(r >= 0, "dsa_tokenize: %s", strerror(-r));
                for (size_t i = 0; i < N; i++) {
                        int32_t *ids;
                        size_t n;
                        CHECK(expect_tokenize(texts[i], special, &ids, &n) >= 0, "engine tokenize");
                        CHECK(tk[i].n_ids == n && (n == 0 || !memcmp(tk[i].ids, ids, n * sizeof(int32_t))),
                              "tokenize text %zu special=%d: %zu ids, engine %zu", i, special, tk[i].n_ids, n);
                        free(ids);
                }
                tk = dsa_tokens_free(tk);
        }
        CHECK(dsa_nop(s) >= 0, "dsa_nop");

        /* Asynchronous: four requests at once, dispatched from a poll loop. */
        {
                struct async_state a = { 0 };
                int fd = dsa_session_get_fd(s);
                CHECK(fd >= 0, "get_fd");
                CHECK(dsa_session_submit_classify(s, texts, N, on_done, &a, NULL) >= 0, "submit classify");
                CHECK(dsa_session_submit_embed(s, texts, N, DSA_POOL_MEAN, on_done, &a, NULL) >= 0, "submit embed");
                CHECK(dsa_session_submit_tokenize(s, texts, N, 0, on_done, &a, NULL) >= 0, "submit tokenize");
                CHECK(dsa_session_submit_nop(s, on_done, &a, NULL) >= 0, "submit nop");
                /* 4 slots, all busy: the fifth must not fit. */
                r = dsa_session_submit_nop(s, on_done, &a, NULL);
                CHECK(r == -EAGAIN, "fifth submit on 4 slots: %d (want -EAGAIN)", r);
                for (uint64_t end = itest_now_ms() + 30000; a.done < 4 && itest_now_ms() < end;) {
                        struct pollfd p = { .fd = fd, .events = POLLIN };
                        if (poll(&p, 1, 1000) > 0)
                                CHECK(dsa_session_dispatch(s) >= 0, "dispatch");
                }
                CHECK(a.done == 4, "async: %d of 4 callbacks", a.done);
                for (int k = 0; k < 4; k++)
                        CHECK(a.status[k] == 0, "async request %d: status %d", k, a.status[k]);
                CHECK(a.classify && a.emb && a.tokens, "async results present");
                CHECK(expect_classify(texts, N, 0, want) >= 0, "engine classify");
                for (size_t i = 0; i < N; i++)
                        memcpy(got + i * L, a.classify[i].logits, L * sizeof(float));
                ok &= itest_close("async classify vs engine", got, want, N * L, TOL, TOL, true);
                CHECK(expect_embed(texts, N, 2, 0, want) >= 0, "engine embed");
                ok &= itest_close("async embed mean vs engine", a.emb, want, N * C, TOL, TOL, true);
                for (size_t i = 0; i < N; i++) {
                        int32_t *ids;
                        size_t n;
                        CHECK(expect_tokenize(texts[i], 1, &ids, &n) >= 0, "engine tokenize");
                        CHECK(a.tokens[i].n_ids == n && !memcmp(a.tokens[i].ids, ids, n * sizeof(int32_t)),
                              "async tokenize text %zu", i);
                        free(ids);
                }
                dsa_classify_result_free(a.classify);
                free(a.emb);
                dsa_tokens_free(a.tokens);
                CHECK(dsa_session_get_n_pending(s) == 0, "nothing pending");
        }

        /* Too many texts and a text with invalid UTF-8 are refused. */
        {
                const char **many = calloc(1025, sizeof(*many));
                for (int i = 0; i < 1025; i++)
                        many[i] = "x";
                r = dsa_classify(s, many, 1025, &cr);
                CHECK(r < 0, "1025 texts accepted");
                free(many);
                const char *bad[] = { "ok", "bad \xff\xfe utf8" };
                r = dsa_classify(s, bad, 2, &cr);
                CHECK(r == -EINVAL, "invalid UTF-8 through the ring: %d (want -EINVAL)", r);
                CHECK(dsa_nop(s) >= 0, "session still works after refused requests");
        }

        /* Status and sessions. */
        r = dsa_client_status(c, &st);
        CHECK(r >= 0, "status: %s", strerror(-r));
        CHECK(st->version && st->models == 1 && st->loaded_models == 1 && st->sessions == 1 && st->workers >= 1,
              "status: version %s models %u loaded %u sessions %u workers %u", st->version ?: "(null)", st->models,
              st->loaded_models, st->sessions, st->workers);
        CHECK(st->requests_completed >= 10, "requests completed %llu", (unsigned long long) st->requests_completed);
        CHECK(st->requests_failed >= 1, "requests failed %llu (the invalid UTF-8 one)",
              (unsigned long long) st->requests_failed);
        st = dsa_status_free(st);
        r = dsa_client_list_sessions(c, &sessions, &n_sessions);
        CHECK(r >= 0 && n_sessions == 1 && !strcmp(sessions[0].id, dsa_session_get_id(s)) &&
                      sessions[0].uid == getuid() && sessions[0].shm_bytes > 4u * (1u << 20) &&
                      sessions[0].requests_completed >= 10,
              "ListSessions: r=%d n=%zu", r, n_sessions);
        sessions = dsa_session_info_free(sessions, n_sessions);
        r = dsa_client_list_models(c, &models, &n_models);
        CHECK(r >= 0 && n_models == 1 && models[0].loaded, "model loaded after use");
        models = dsa_model_info_free(models, n_models);

        /* Unload under an open session: its requests fail with -ENOENT, the load brings it back. */
        r = dsa_client_unload_model(c, "sst2");
        CHECK(r >= 0, "unload: %s", strerror(-r));
        r = dsa_classify(s, texts, 1, &cr);
        CHECK(r == -ENOENT, "classify after unload: %d (want -ENOENT)", r);
        r = dsa_client_load_model(c, "sst2");
        CHECK(r >= 0, "load: %s", strerror(-r));
        r = dsa_client_load_model(c, "sst2");
        CHECK(r >= 0, "load is idempotent: %s", strerror(-r));

        s = dsa_session_free(s);
        for (uint64_t end = itest_now_ms() + 3000;;) {
                r = dsa_client_list_sessions(c, &sessions, &n_sessions);
                CHECK(r >= 0, "ListSessions");
                sessions = dsa_session_info_free(sessions, n_sessions);
                if (n_sessions == 0 || itest_now_ms() > end)
                        break;
                usleep(20000);
        }
        CHECK(n_sessions == 0, "session closed by dsa_session_free: %zu left", n_sessions);
        c = dsa_client_free(c);
        free(want);
        free(want_single);
        free(got);
        expect_close();
        CHECK(ok, "some results differ from the engine's (see above)");
        return itest_teardown(&T) ? 0 : 1;
}
