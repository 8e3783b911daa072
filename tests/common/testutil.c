/* See testutil.h. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "basic/error.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "testutil.h"

const char *dsa_test_shared_dir(void) {
        static char buf[4096];
        struct stat st;
        const char *e = getenv("DSA_SHARED");

        if (e && *e)
                snprintf(buf, sizeof(buf), "%s", e);
        else {
                const char *src = getenv("DSA_SOURCE_DIR");
                snprintf(buf, sizeof(buf), "%s/../shared", src && *src ? src : ".");
        }
        if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
                return NULL;
        return buf;
}

const char *dsa_test_require_shared(const char *why) {
        const char *d = dsa_test_shared_dir();

        if (!d) {
                printf("SKIP: %s: ../shared not found (set DSA_SHARED)\n", why);
                exit(77);
        }
        return d;
}

const char *dsa_test_path(const char *a, const char *b) {
        static char bufs[8][4096];
        static unsigned i;
        char *p = bufs[i++ % 8];

        snprintf(p, sizeof(bufs[0]), "%s/%s", a, b);
        return p;
}

uint64_t dsa_test_rng_u64(struct dsa_test_rng *r) {
        if (!r->s)
                r->s = 0x9E3779B97F4A7C15ull;
        r->s ^= r->s >> 12;
        r->s ^= r->s << 25;
        r->s ^= r->s >> 27;
        return r->s * 0x2545F4914F6CDD1Dull;
}

float dsa_test_rng_uniform(struct dsa_test_rng *r, float lo, float hi) {
        return lo + (hi - lo) * (float) ((dsa_test_rng_u64(r) >> 40) / (double) (1ull << 24));
}

void dsa_test_rng_fill(struct dsa_test_rng *r, float *x, size_t n, float lo, float hi) {
        for (size_t i = 0; i < n; i++)
                x[i] = dsa_test_rng_uniform(r, lo, hi);
}

bool dsa_test_check_tensor(const char *name, const float *got, const float *want, size_t n,
                           float atol, float rtol) {
        double maxerr = 0;
        size_t worst = 0, bad = 0;

        for (size_t i = 0; i < n; i++) {
                double err = fabs((double) got[i] - (double) want[i]);
                if (isnan(got[i]) != isnan(want[i]))
                        err = INFINITY;
                if (err > maxerr) {
                        maxerr = err;
                        worst = i;
                }
                if (err > atol + rtol * fabs((double) want[i]))
                        bad++;
        }
        printf("%s %-40s n=%zu maxerr=%.3g at %zu (got %.7g want %.7g)\n", bad ? "FAIL" : "ok  ",
               name, n, maxerr, worst, n ? got[worst] : 0.f, n ? want[worst] : 0.f);
        return bad == 0;
}

const struct dsa_tensor_view *dsa_test_st_need(const struct dsa_safetensors *st, const char *name) {
        const struct dsa_tensor_view *v = dsa_safetensors_find(st, name);

        if (!v)
                fprintf(stderr, "reference tensor '%s' is missing\n", name);
        assert_non_null(v);
        return v;
}

void dsa_test_expect_encode(const struct dsa_tokenizer *t, const char *text, size_t len, const char *pair,
                            unsigned flags, size_t max_len, const int32_t *want, const int32_t *want_types) {
        struct dsa_encoding e = {};
        size_t n = 0;
        int r;

        r = dsa_tokenizer_encode(t, text, len, pair, pair ? strlen(pair) : 0, flags, max_len, &e);
        if (r < 0)
                fail_msg("encode '%s': %s", text, dsa_error_message(r));
        while (want[n] >= 0)
                n++;
        if (e.n != n || memcmp(e.ids, want, n * sizeof(int32_t)) != 0) {
                for (size_t i = 0; i < e.n; i++)
                        print_message(" %d", e.ids[i]);
                print_message("\n");
                fail_msg("'%s': %zu ids, want %zu", text, e.n, n);
        }
        if (want_types)
                assert_memory_equal(e.type_ids, want_types, n * sizeof(int32_t));
        dsa_encoding_clear(&e);
}

size_t dsa_test_parse_ids(const char *s, int32_t *ids, size_t cap) {
        size_t n = 0;

        while (*s && n < cap) {
                char *next;
                long v = strtol(s, &next, 10);
                if (next == s)
                        break;
                ids[n++] = (int32_t) v;
                s = next;
        }
        return n;
}

int dsa_test_read_file(const char *path, char **ret, size_t *ret_size) {
        FILE *f = fopen(path, "rb");
        char *buf;
        long sz;

        if (!f)
                return -errno;
        if (fseek(f, 0, SEEK_END) < 0 || (sz = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
                fclose(f);
                return -EIO;
        }
        buf = malloc((size_t) sz + 1);
        if (!buf) {
                fclose(f);
                return -ENOMEM;
        }
        if (fread(buf, 1, (size_t) sz, f) != (size_t) sz) {
                free(buf);
                fclose(f);
                return -EIO;
        }
        fclose(f);
        buf[sz] = 0;
        *ret = buf;
        if (ret_size)
                *ret_size = (size_t) sz;
        return 0;
}

struct dsa_model *dsa_test_model_open(const char *path) {
        struct dsa_model *m = NULL;
        int r;

        dsa_error_clear();
        r = dsa_model_open(path, &m);
        if (r < 0)
                fprintf(stderr, "dsa_model_open(%s): %s\n", path, dsa_error_message(r));
        assert_int_equal(r, 0);
        assert_non_null(m);
        return m;
}
