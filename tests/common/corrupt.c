/* See corrupt.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "corrupt.h"
#include "engine/gguf.h"
#include "engine/model-internal.h"
#include "testutil.h"

void dsa_test_file_write(const struct dsa_test_file_kind *kind, const void *o, const char *path) {
        int r = kind->write(o, path);

        if (r < 0)
                fail_msg("cannot write a tiny %s: %s", kind->name, dsa_error_message(r));
}

struct dsa_test_file dsa_test_file_build(const struct dsa_test_file_kind *kind, const void *o) {
        char path[] = "/tmp/dsa-test-corrupt-XXXXXX";
        struct dsa_test_file f = { .kind = kind };
        char *data = NULL;
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        close(fd);
        dsa_test_file_write(kind, o, path);
        assert_int_equal(dsa_test_read_file(path, &data, &f.n), 0);
        unlink(path);
        f.p = (uint8_t *) data;
        return f;
}

struct dsa_test_file dsa_test_file_copy(const struct dsa_test_file *f) {
        struct dsa_test_file c = { malloc(f->n), f->n, f->kind };

        assert_non_null(c.p);
        memcpy(c.p, f->p, c.n);
        return c;
}

int dsa_test_file_try(const struct dsa_test_file *f, const uint8_t *p, size_t n, bool want_finite,
                      const char *what, bool *ret_finite) {
        struct dsa_model *m = NULL;
        bool finite = true;
        int r;

        /* An exact-size copy, so ASan sees a read past the end as one. */
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, p, n);
        dsa_error_clear();
        r = dsa__model_open_gguf_memory(copy, n, &m);
        if (r < 0) {
                assert_null(m);
                assert_true(r > -4096);
                if (strlen(dsa_error_message(r)) == 0)
                        fail_msg("%s: refused (%d) without a reason", what, r);
        } else {
                assert_int_equal(r, 0);
                assert_non_null(m);
                finite = f->kind->run(m);
                if (!finite && want_finite)
                        fail_msg("%s: loaded, but the forward gives a NaN or infinity", what);
                dsa_model_free(m);
        }
        free(copy);
        if (ret_finite)
                *ret_finite = finite;
        return r;
}

void dsa_test_file_expect_ok(const struct dsa_test_file *f, const char *what) {
        int r = dsa_test_file_try(f, f->p, f->n, true, what, NULL);

        if (r < 0)
                fail_msg("%s: refused: %s", what, dsa_error_message(r));
}

void dsa_test_file_expect_fail(const struct dsa_test_file *f, const char *what, const char *want) {
        int r = dsa_test_file_try(f, f->p, f->n, true, what, NULL);

        if (r >= 0)
                fail_msg("%s: opened (want error '%s')", what, want);
        if (!strstr(dsa_error_message(r), want))
                fail_msg("%s: reason '%s' lacks '%s'", what, dsa_error_message(r), want);
}

void dsa_test_file_expect_patch(struct dsa_test_file *f, size_t at, const void *v, size_t size, const char *what,
                                const char *want) {
        uint8_t old[64];

        assert_true(size <= sizeof(old) && at <= f->n && size <= f->n - at);
        memcpy(old, f->p + at, size);
        memcpy(f->p + at, v, size);
        if (want)
                dsa_test_file_expect_fail(f, what, want);
        else
                dsa_test_file_expect_ok(f, what);
        memcpy(f->p + at, old, size);
}

void dsa_test_file_expect_f32_patches(struct dsa_test_file *f, const struct dsa_test_f32_patch *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char what[112];

                snprintf(what, sizeof(what), "%s[%zu] = %g", p[i].tensor, p[i].index, (double) p[i].v);
                dsa_test_file_expect_patch(f, dsa_test_file_tensor_at(f, p[i].tensor) + 4 * p[i].index, &p[i].v, 4,
                                           what, p[i].want);
        }
}

void dsa_test_file_expect_renamed(struct dsa_test_file *f, const char *name, size_t i, const char *what,
                                  const char *want) {
        const size_t at = dsa_test_file_name_at(f, name) + i;
        const uint8_t c = f->p[at] ^ 0x20;

        dsa_test_file_expect_patch(f, at, &c, 1, what, want);
}

size_t dsa_test_file_name_at(const struct dsa_test_file *f, const char *name) {
        const size_t len = strlen(name);

        for (size_t i = 8; i + len <= f->n; i++) {
                uint64_t n;

                memcpy(&n, f->p + i - 8, 8);
                if (n == len && !memcmp(f->p + i, name, len))
                        return i;
        }
        fail_msg("no key or tensor '%s'", name);
        return 0;
}

size_t dsa_test_file_tensor_at(const struct dsa_test_file *f, const char *name) {
        struct dsa_gguf *g = NULL;
        const struct dsa_tensor_view *v;
        size_t at;

        assert_int_equal(dsa_gguf_open_memory(f->p, f->n, &g), 0);
        v = dsa_gguf_find_tensor(g, name);
        if (!v)
                fail_msg("no tensor '%s'", name);
        at = (size_t) ((const uint8_t *) v->data - f->p);
        dsa_gguf_free(g);
        return at;
}

void dsa_test_file_data_range(const struct dsa_test_file *f, size_t *ret_start, size_t *ret_end) {
        struct dsa_gguf *g = NULL;
        size_t start = f->n, end = 0;

        assert_int_equal(dsa_gguf_open_memory(f->p, f->n, &g), 0);
        for (size_t i = 0; i < dsa_gguf_n_tensors(g); i++) {
                const struct dsa_tensor_view *v = dsa_gguf_tensor(g, i);
                const size_t at = (size_t) ((const uint8_t *) v->data - f->p);
                start = MIN(start, at);
                end = MAX(end, at + v->nbytes);
        }
        dsa_gguf_free(g);
        *ret_start = start;
        *ret_end = end;
}

void dsa_test_file_check_truncated(const struct dsa_test_file *f, const char *what) {
        size_t start, end;

        dsa_test_file_data_range(f, &start, &end);
        for (size_t n = 0; n < end; n += n < start ? 1 : 7)
                if (dsa_test_file_try(f, f->p, n, false, what, NULL) >= 0)
                        fail_msg("%s cut at %zu of %zu bytes opened", what, n, f->n);
}

void dsa_test_file_check_flips(const struct dsa_test_file *f, struct dsa_test_rng *rng, int n_flips, bool bits,
                               const char *what, struct dsa_test_flips *counts) {
        uint8_t *q = malloc(f->n);
        size_t start, end;

        assert_non_null(q);
        dsa_test_file_data_range(f, &start, &end);
        for (int it = 0; it < n_flips; it++) {
                const int k = 1 + (int) (dsa_test_rng_u64(rng) % 8);
                const bool bit = bits && it % 2;
                size_t n = f->n;
                bool finite;
                int r;

                memcpy(q, f->p, f->n);
                for (int j = 0; j < k; j++) {
                        const size_t at = dsa_test_rng_u64(rng) % (j % 2 ? f->n : start);
                        if (bit)
                                q[at] ^= (uint8_t) (1u << (dsa_test_rng_u64(rng) % 8));
                        else
                                q[at] ^= (uint8_t) (1 + dsa_test_rng_u64(rng) % 255);
                }
                if (dsa_test_rng_u64(rng) % 8 == 0)
                        n = dsa_test_rng_u64(rng) % (f->n + 1);
                r = dsa_test_file_try(f, q, n, false, what, &finite);
                if (r < 0) {
                        counts->bad++;
                        /* A reason the engine did not write: only strerror() of the code. */
                        if (!strcmp(dsa_error_message(r), strerror(-r)))
                                counts->generic++;
                        continue;
                }
                counts->ok++;
                counts->nonfinite += !finite;
        }
        free(q);
}
