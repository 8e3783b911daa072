/* Damaged GGUF and safetensors files (llama.cpp test-gguf style): a valid file of each format is
 * built in memory, every field's position recorded, then cut at every length, flipped at random
 * (seeded, reproducible), and lied about field by field. Every variant must either fail with
 * -EBADMSG or open, consistently, into a handle whose every key and tensor can be read; the
 * deliberate lies must fail with the reason they deserve. Run under ASan+UBSan in CI. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "testutil.h"
#include "touch.h"

#define SEED 20240611u
#define N_FLIPS 4000

/* Reading everything a handle offers is touch.c's job, shared with the fuzz targets. */

/* Opens p; a success must read fully and give the same result twice. Returns the code. */
static int try_gguf(const uint8_t *p, size_t size) {
        struct dsa_gguf *g = NULL, *g2 = NULL;
        int r, r2;

        dsa_error_clear();
        r = dsa_gguf_open_memory(p, size, &g);
        if (r < 0) {
                assert_null(g);
                assert_int_equal(r, -EBADMSG);
                assert_true(strlen(dsa_error_message(r)) > 0);
                return r;
        }
        r2 = dsa_gguf_open_memory(p, size, &g2);
        assert_int_equal(r2, 0);
        assert_true(dsa_test_touch_gguf(g) == dsa_test_touch_gguf(g2));
        dsa_gguf_free(g);
        dsa_gguf_free(g2);
        return 0;
}

static int try_st(const uint8_t *p, size_t size) {
        struct dsa_safetensors *s = NULL, *s2 = NULL;
        int r;

        dsa_error_clear();
        r = dsa_safetensors_open_memory(p, size, &s);
        if (r < 0) {
                assert_null(s);
                assert_int_equal(r, -EBADMSG);
                return r;
        }
        assert_int_equal(dsa_safetensors_open_memory(p, size, &s2), 0);
        assert_true(dsa_test_touch_safetensors(s) == dsa_test_touch_safetensors(s2));
        dsa_safetensors_free(s);
        dsa_safetensors_free(s2);
        return 0;
}

/* ---- a valid GGUF with every value type, a string array and four tensors, and where each
 * field sits */

struct gguf_marks {
        size_t version, n_tensors, n_kv;
        size_t key_len[16], kv_type[16], n_keys;
        size_t align_type, align_value;
        size_t str_len;                /* the string value's length */
        size_t arr_type, arr_count;    /* the u32 array */
        size_t sarr_count, sarr_elem[4];
        size_t t_name[4], t_ndims[4], t_ne0[4], t_ne1[4], t_type[4], t_off[4];
        size_t header_end, data_start;
};

struct gb {
        uint8_t p[4096];
        size_t n;
};

static size_t put(struct gb *b, const void *v, size_t n) {
        size_t at = b->n;

        assert_true(b->n + n <= sizeof(b->p));
        memcpy(b->p + b->n, v, n);
        b->n += n;
        return at;
}

static size_t put_u32(struct gb *b, uint32_t v) {
        return put(b, &v, 4);
}

static size_t put_u64(struct gb *b, uint64_t v) {
        return put(b, &v, 8);
}

static size_t put_str(struct gb *b, const char *s) {
        size_t at = put_u64(b, strlen(s));

        put(b, s, strlen(s));
        return at;
}

/* Every key is "key.NN", so one can be renamed to another in place. */
static size_t put_key(struct gb *b, struct gguf_marks *m, uint32_t type) {
        char k[8];

        snprintf(k, sizeof(k), "key.%02zu", m->n_keys);
        m->key_len[m->n_keys] = put_str(b, k);
        m->kv_type[m->n_keys] = put_u32(b, type);
        m->n_keys++;
        return b->n;
}

static void build_gguf(struct gb *b, struct gguf_marks *m) {
        static const struct {
                uint32_t type;
                uint64_t ne0, ne1;
                uint32_t n_dims;
                uint64_t nbytes;
        } ts[4] = {
                { DSA_TYPE_F32, 8, 4, 2, 128 },
                { DSA_TYPE_F16, 16, 1, 1, 32 },
                { DSA_TYPE_Q8_0, 64, 1, 1, 68 },
                { DSA_TYPE_I32, 3, 1, 1, 12 },
        };
        uint64_t off = 0, offs[4];
        uint64_t u64 = 0x1122334455667788ull;
        double f64 = 2.5;
        float f32 = -1.5f;

        memset(b, 0, sizeof(*b));
        memset(m, 0, sizeof(*m));
        put(b, "GGUF", 4);
        m->version = put_u32(b, 3);
        m->n_tensors = put_u64(b, 4);
        m->n_kv = put_u64(b, 16);

        put_key(b, m, DSA_GGUF_UINT8), put(b, "\xfe", 1);
        put_key(b, m, DSA_GGUF_INT8), put(b, "\xfe", 1);
        put_key(b, m, DSA_GGUF_UINT16), put(b, "\x01\x02", 2);
        put_key(b, m, DSA_GGUF_INT16), put(b, "\xff\xff", 2);
        put_key(b, m, DSA_GGUF_UINT32), put_u32(b, 70000);
        put_key(b, m, DSA_GGUF_INT32), put_u32(b, (uint32_t) -3);
        put_key(b, m, DSA_GGUF_FLOAT32), put(b, &f32, 4);
        put_key(b, m, DSA_GGUF_BOOL), put(b, "\1", 1);
        put_key(b, m, DSA_GGUF_STRING), m->str_len = put_str(b, "hello");
        put_key(b, m, DSA_GGUF_UINT64), put_u64(b, u64);
        put_key(b, m, DSA_GGUF_INT64), put_u64(b, (uint64_t) -u64);
        put_key(b, m, DSA_GGUF_FLOAT64), put(b, &f64, 8);
        put_key(b, m, DSA_GGUF_ARRAY);
        m->arr_type = put_u32(b, DSA_GGUF_UINT32);
        m->arr_count = put_u64(b, 3);
        put_u32(b, 1), put_u32(b, 2), put_u32(b, 3);
        put_key(b, m, DSA_GGUF_ARRAY);
        put_u32(b, DSA_GGUF_STRING);
        m->sarr_count = put_u64(b, 4);
        m->sarr_elem[0] = put_str(b, "a");
        m->sarr_elem[1] = put_str(b, "bb");
        m->sarr_elem[2] = put_str(b, "");
        m->sarr_elem[3] = put_str(b, "dddd");
        put_key(b, m, DSA_GGUF_ARRAY), put_u32(b, DSA_GGUF_FLOAT64), put_u64(b, 0);
        m->key_len[m->n_keys++] = put_str(b, "general.alignment");
        m->align_type = put_u32(b, DSA_GGUF_UINT32);
        m->align_value = put_u32(b, 32);

        for (int i = 0; i < 4; i++) {
                char name[4] = { 't', '.', (char) ('0' + i), 0 };

                offs[i] = off;
                off = ALIGN_TO(off + ts[i].nbytes, 32);
                m->t_name[i] = put_str(b, name);
                m->t_ndims[i] = put_u32(b, ts[i].n_dims);
                m->t_ne0[i] = put_u64(b, ts[i].ne0);
                m->t_ne1[i] = ts[i].n_dims > 1 ? put_u64(b, ts[i].ne1) : 0;
                m->t_type[i] = put_u32(b, ts[i].type);
                m->t_off[i] = put_u64(b, offs[i]);
        }
        m->header_end = b->n;
        while (b->n % 32)
                put(b, "", 1);
        m->data_start = b->n;
        /* Data: F32 small integers, F16 ones, Q8_0 with scale 1.0, I32 counting; the last
         * tensor ends exactly at the end of the file. */
        for (int i = 0; i < 32; i++) {
                float v = (float) i;

                memcpy(b->p + m->data_start + offs[0] + 4 * i, &v, 4);
        }
        for (int i = 0; i < 16; i++)
                memcpy(b->p + m->data_start + offs[1] + 2 * i, "\x00\x3c", 2);
        for (int bl = 0; bl < 2; bl++) {
                memcpy(b->p + m->data_start + offs[2] + 34 * bl, "\x00\x3c", 2);
                for (int j = 0; j < 32; j++)
                        b->p[m->data_start + offs[2] + 34 * bl + 2 + j] = (uint8_t) (j * 7);
        }
        for (int i = 0; i < 3; i++)
                memcpy(b->p + m->data_start + offs[3] + 4 * i, &i, 4);
        b->n = m->data_start + offs[3] + 12;
}

static void set_u32(uint8_t *p, size_t at, uint32_t v) {
        memcpy(p + at, &v, 4);
}

static void set_u64(uint8_t *p, size_t at, uint64_t v) {
        memcpy(p + at, &v, 8);
}

/* A copy of the valid file with one u32/u64 field replaced must fail with a reason
 * containing want (or any reason when want is NULL). */
static void expect_lie(const struct gb *good, size_t at, int width, uint64_t v, const char *want) {
        struct gb b = *good;
        int r;

        if (width == 4)
                set_u32(b.p, at, (uint32_t) v);
        else
                set_u64(b.p, at, v);
        r = try_gguf(b.p, b.n);
        if (r != -EBADMSG)
                fail_msg("field at %zu set to %llu: opened (want error '%s')", at, (unsigned long long) v,
                         want ? want : "");
        if (want && !strstr(dsa_error_message(r), want))
                fail_msg("field at %zu set to %llu: reason '%s' lacks '%s'", at, (unsigned long long) v,
                         dsa_error_message(r), want);
}

static void test_gguf_valid(void **state) {
        struct dsa_gguf *g = NULL;
        struct gguf_marks m;
        struct gb b;
        float out[64];
        const char *s;
        size_t len;
        int64_t v;
        int r;

        build_gguf(&b, &m);
        r = dsa_gguf_open_memory(b.p, b.n, &g);
        if (r < 0)
                fail_msg("valid file: %s", dsa_error_message(r));
        assert_int_equal(dsa_gguf_n_kv(g), 16);
        assert_int_equal(dsa_gguf_n_tensors(g), 4);
        assert_int_equal(dsa_gguf_get_i64(g, "key.01", &v), 0);
        assert_int_equal(v, -2);
        assert_int_equal(dsa_gguf_get_arr_str(g, "key.13", 3, &s, &len), 0);
        assert_true(len == 4 && memcmp(s, "dddd", 4) == 0);
        assert_int_equal(dsa_tensor_to_f32(dsa_gguf_find_tensor(g, "t.2"), out), 0);
        assert_true(out[33] == 7.0f);
        dsa_test_touch_gguf(g);
        dsa_gguf_free(g);

        /* Version 2 has the same layout and is accepted. */
        set_u32(b.p, m.version, 2);
        assert_int_equal(try_gguf(b.p, b.n), 0);
}

static void test_gguf_truncated(void **state) {
        struct gguf_marks m;
        struct gb b;

        build_gguf(&b, &m);
        for (size_t n = 0; n < b.n; n++)
                if (try_gguf(b.p, n) != -EBADMSG)
                        fail_msg("file cut at %zu of %zu bytes opened", n, b.n);
}

static void test_gguf_lies(void **state) {
        struct gguf_marks m;
        struct gb b, c;
        const uint64_t huge[] = { 1ull << 63, 1ull << 32, UINT64_MAX, 1ull << 61 };

        build_gguf(&b, &m);

        c = b, memcpy(c.p, "GGUX", 4);
        assert_int_equal(try_gguf(c.p, c.n), -EBADMSG);
        expect_lie(&b, m.version, 4, 1, "version 1");
        expect_lie(&b, m.version, 4, 4, "version 4");
        expect_lie(&b, m.version, 4, 3u << 24, "big-endian");

        for (size_t i = 0; i < ELEMENTSOF(huge); i++) {
                expect_lie(&b, m.n_kv, 8, huge[i], "key/value pairs");
                expect_lie(&b, m.n_tensors, 8, huge[i], "tensors");
                expect_lie(&b, m.key_len[0], 8, huge[i], "allowed");
                expect_lie(&b, m.str_len, 8, huge[i], "allowed");
                expect_lie(&b, m.arr_count, 8, huge[i], "elements");
                expect_lie(&b, m.sarr_count, 8, huge[i], "strings");
                expect_lie(&b, m.sarr_elem[1], 8, huge[i], "allowed");
                expect_lie(&b, m.t_name[0], 8, huge[i], "allowed");
                expect_lie(&b, m.t_off[1], 8, huge[i], NULL);
        }
        expect_lie(&b, m.n_kv, 8, 17, NULL);
        expect_lie(&b, m.n_tensors, 8, 5, NULL);
        expect_lie(&b, m.key_len[0], 8, DSA_GGUF_MAX_KEY + 1, "allowed");
        expect_lie(&b, m.key_len[0], 8, b.n, "file ends");
        expect_lie(&b, m.key_len[0], 8, 0, "empty");
        expect_lie(&b, m.str_len, 8, DSA_GGUF_MAX_STR + 1, "allowed");
        expect_lie(&b, m.str_len, 8, b.n - m.str_len - 8 + 1, "file ends");
        expect_lie(&b, m.sarr_elem[3], 8, DSA_GGUF_MAX_STR + 1, "allowed");
        expect_lie(&b, m.sarr_count, 8, 1000, NULL);
        expect_lie(&b, m.arr_count, 8, (b.n - m.arr_count) / 4, NULL);

        /* Types: unknown value type, nested array, unknown element type. */
        expect_lie(&b, m.kv_type[0], 4, 13, "unknown value type 13");
        expect_lie(&b, m.kv_type[0], 4, UINT32_MAX, "unknown value type");
        expect_lie(&b, m.arr_type, 4, DSA_GGUF_ARRAY, "nested");
        expect_lie(&b, m.arr_type, 4, 77, "unknown type 77");

        /* Alignment: zero, not a power of two, a wrong type, so large no offset fits. */
        expect_lie(&b, m.align_value, 4, 0, "power of two");
        expect_lie(&b, m.align_value, 4, 48, "power of two");
        expect_lie(&b, m.align_type, 4, DSA_GGUF_INT32, "not uint32");
        expect_lie(&b, m.align_value, 4, 1u << 31, NULL);

        /* Tensor infos. */
        expect_lie(&b, m.t_ndims[0], 4, 0, "0 dimensions");
        expect_lie(&b, m.t_ndims[0], 4, 5, "5 dimensions");
        expect_lie(&b, m.t_ne0[1], 8, 1ull << 63, "negative");
        c = b;
        set_u64(c.p, m.t_ne0[0], 1ull << 40);
        set_u64(c.p, m.t_ne1[0], 1ull << 30);
        assert_int_equal(try_gguf(c.p, c.n), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "overflows"));
        expect_lie(&b, m.t_ne0[2], 8, 48, "whole number");
        expect_lie(&b, m.t_type[0], 4, 99, "unknown ggml type 99");
        expect_lie(&b, m.t_type[0], 4, 2, "unknown ggml type 2");
        expect_lie(&b, m.t_type[1], 4, DSA_TYPE_F32, "overlaps"); /* t.1 doubles, into t.2 */
        expect_lie(&b, m.t_off[3], 8, 1ull << 40, "runs past the end of the file");
        expect_lie(&b, m.t_off[3], 8, UINT64_MAX - 31, "runs past the end of the file");
        expect_lie(&b, m.t_off[3], 8, 288, "runs past the end of the file");
        expect_lie(&b, m.t_off[1], 8, 129, "not a multiple");
        expect_lie(&b, m.t_off[1], 8, 0, "overlaps");
        expect_lie(&b, m.t_off[3], 8, 160, "overlaps");

        /* Duplicates: a key renamed to another's name, a tensor to another's. */
        c = b, memcpy(c.p + m.key_len[1] + 8, "key.00", 6);
        assert_int_equal(try_gguf(c.p, c.n), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "duplicate key 'key.00'"));
        c = b, memcpy(c.p + m.t_name[2] + 8, "t.0", 3);
        assert_int_equal(try_gguf(c.p, c.n), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "duplicate tensor 't.0'"));
        c = b, c.p[m.key_len[2] + 8 + 3] = 0;
        assert_int_equal(try_gguf(c.p, c.n), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "NUL"));
}

static uint64_t interesting(struct dsa_test_rng *rng, uint64_t size) {
        const uint64_t v[] = { 0, 1, 2, 3, 4, 5, 31, 32, 33, 1ull << 31, 1ull << 32, 1ull << 63,
                               UINT64_MAX, UINT64_MAX - 31, size, size - 1, size + 1 };

        if (dsa_test_rng_u64(rng) % 4 == 0)
                return dsa_test_rng_u64(rng);
        return v[dsa_test_rng_u64(rng) % ELEMENTSOF(v)];
}

static void test_gguf_random(void **state) {
        struct dsa_test_rng rng = { SEED };
        struct gguf_marks m;
        struct gb b, c;
        size_t fields[64], n_fields = 0, ok = 0, bad = 0;

        build_gguf(&b, &m);
        /* Every u64 count/length/offset field of the header. */
        fields[n_fields++] = m.n_tensors;
        fields[n_fields++] = m.n_kv;
        for (size_t i = 0; i < m.n_keys; i++)
                fields[n_fields++] = m.key_len[i];
        fields[n_fields++] = m.str_len;
        fields[n_fields++] = m.arr_count;
        fields[n_fields++] = m.sarr_count;
        for (int i = 0; i < 4; i++) {
                fields[n_fields++] = m.sarr_elem[i];
                fields[n_fields++] = m.t_name[i];
                fields[n_fields++] = m.t_ne0[i];
                fields[n_fields++] = m.t_off[i];
        }

        for (int it = 0; it < N_FLIPS; it++) {
                int k = 1 + (int) (dsa_test_rng_u64(&rng) % 8);

                c = b;
                for (int j = 0; j < k; j++)
                        c.p[dsa_test_rng_u64(&rng) % m.header_end] ^= (uint8_t) (1 + dsa_test_rng_u64(&rng) % 255);
                if (dsa_test_rng_u64(&rng) % 4 == 0)
                        c.n = dsa_test_rng_u64(&rng) % (b.n + 1);
                try_gguf(c.p, c.n) == 0 ? ok++ : bad++;
        }
        for (int it = 0; it < N_FLIPS; it++) {
                size_t f = fields[dsa_test_rng_u64(&rng) % n_fields];

                c = b;
                set_u64(c.p, f, interesting(&rng, b.n));
                try_gguf(c.p, c.n) == 0 ? ok++ : bad++;
        }
        /* Damage inside tensor data is harmless: it must still open. */
        for (int it = 0; it < 500; it++) {
                c = b;
                c.p[m.data_start + dsa_test_rng_u64(&rng) % (b.n - m.data_start)] ^= 0xff;
                assert_int_equal(try_gguf(c.p, c.n), 0);
        }
        print_message("gguf: %zu damaged variants opened, %zu rejected\n", ok, bad);
        assert_true(bad > ok);
}

/* ---- safetensors */

#define ST_JSON                                                                                     \
        "{\"__metadata__\":{\"format\":\"pt\"},"                                                    \
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,4],\"data_offsets\":[0,32]},"                        \
        "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[32,38]},"                         \
        "\"c\":{\"dtype\":\"I64\",\"shape\":[1,1],\"data_offsets\":[40,48]},"                       \
        "\"d\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[48,56]}}"
#define ST_DATA 56

static size_t build_st(uint8_t *p, size_t cap, const char *json, size_t data) {
        uint64_t n = strlen(json);

        assert_true(8 + n + data <= cap);
        memcpy(p, &n, 8);
        memcpy(p + 8, json, n);
        for (size_t i = 0; i < data; i++)
                p[8 + n + i] = (uint8_t) (i * 13);
        return 8 + n + data;
}

/* A file with this header and data must fail with a reason containing want. */
static void expect_st_lie(const char *json, size_t data, const char *want) {
        uint8_t p[2048];
        size_t n = build_st(p, sizeof(p), json, data);
        int r = try_st(p, n);

        if (r != -EBADMSG)
                fail_msg("header %s opened", json);
        if (want && !strstr(dsa_error_message(r), want))
                fail_msg("header %s: reason '%s' lacks '%s'", json, dsa_error_message(r), want);
}

#define ONE(dtype, shape, offs) "{\"x\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static void test_st_lies(void **state) {
        uint8_t p[2048];
        uint64_t v;
        size_t n;

        n = build_st(p, sizeof(p), ST_JSON, ST_DATA);
        assert_int_equal(try_st(p, n), 0);
        for (size_t i = 0; i < n; i++)
                if (try_st(p, i) != -EBADMSG)
                        fail_msg("safetensors cut at %zu of %zu opened", i, n);

        /* The header length. */
        const uint64_t lens[] = { 0, 1ull << 63, UINT64_MAX, n - 7, 100u * 1024 * 1024 + 1 };
        for (size_t i = 0; i < ELEMENTSOF(lens); i++) {
                uint8_t q[2048];

                memcpy(q, p, n);
                memcpy(q, &lens[i], 8);
                assert_int_equal(try_st(q, n), -EBADMSG);
        }
        v = strlen(ST_JSON) - 1; /* cuts the JSON's closing brace */
        memcpy(p, &v, 8);
        assert_int_equal(try_st(p, n), -EBADMSG);

        expect_st_lie(ONE("U8", "[1]", "[0,1]"), 1, "'U8'");
        expect_st_lie(ONE("Q4", "[1]", "[0,1]"), 1, "'Q4'");
        expect_st_lie(ONE("F32", "[2]", "[0,8]"), 4, "outside the data section");
        expect_st_lie(ONE("F32", "[2]", "[8,0]"), 8, "outside the data section");
        expect_st_lie(ONE("F32", "[2]", "[0,4]"), 8, "need 8");
        expect_st_lie(ONE("F32", "[-2]", "[0,8]"), 8, "non-negative");
        expect_st_lie(ONE("F32", "[2.0]", "[0,8]"), 8, "non-negative");
        expect_st_lie(ONE("F32", "[\"2\"]", "[0,8]"), 8, "non-negative");
        expect_st_lie(ONE("F32", "[4294967296,4294967296,2]", "[0,8]"), 8, "overflows");
        expect_st_lie(ONE("F32", "[99999999999999999999]", "[0,8]"), 8, NULL);
        expect_st_lie(ONE("F32", "[1,1,1,1,1]", "[0,4]"), 4, "5 dimensions");
        expect_st_lie(ONE("F32", "[1]", "[0,-4]"), 4, "[begin, end]");
        expect_st_lie(ONE("F32", "[1]", "[0,4,8]"), 8, "[begin, end]");
        expect_st_lie(ONE("F32", "[1]", "[0,18446744073709551616]"), 4, NULL);
        expect_st_lie("{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "needs dtype");
        expect_st_lie("{\"x\":5}", 4, "needs dtype");
        expect_st_lie("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, "overlaps");
        expect_st_lie("{\"__metadata__\":{\"a\":1}}", 0, "not a string");
        expect_st_lie("{\"__metadata__\":[]}", 0, "not an object");
        expect_st_lie("[1,2]", 0, "not a JSON object");
        expect_st_lie("{} x", 0, "trailing");
        expect_st_lie("{\"a\":", 0, "not valid JSON");
        expect_st_lie("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty name");
        {
                /* A NUL inside the header would end json-c's view of it early. */
                char json[] = "{}    ";

                json[3] = 0;
                n = 8 + 6;
                v = 6;
                memcpy(p, &v, 8);
                memcpy(p + 8, json, 6);
                assert_int_equal(try_st(p, n), -EBADMSG);
                assert_non_null(strstr(dsa_error_message(-EBADMSG), "NUL"));
        }
        /* Deeply nested JSON is refused by json-c's depth limit, not by the stack. */
        {
                static char deep[2100];

                for (int i = 0; i < 1000; i++)
                        deep[i] = '[';
                for (int i = 0; i < 1000; i++)
                        deep[1000 + i] = ']';
                expect_st_lie(deep, 0, NULL);
        }
}

static void test_st_random(void **state) {
        struct dsa_test_rng rng = { SEED + 1 };
        uint8_t p[2048], q[2048];
        size_t n, hdr, ok = 0, bad = 0;

        n = build_st(p, sizeof(p), ST_JSON, ST_DATA);
        hdr = n - ST_DATA;
        for (int it = 0; it < N_FLIPS; it++) {
                int k = 1 + (int) (dsa_test_rng_u64(&rng) % 4);
                size_t m = n;

                memcpy(q, p, n);
                for (int j = 0; j < k; j++) {
                        size_t at = dsa_test_rng_u64(&rng) % hdr;

                        /* Half the time a printable byte, so the JSON often stays JSON. */
                        if (dsa_test_rng_u64(&rng) % 2)
                                q[at] = (uint8_t) (' ' + dsa_test_rng_u64(&rng) % 95);
                        else
                                q[at] ^= (uint8_t) (1 + dsa_test_rng_u64(&rng) % 255);
                }
                if (dsa_test_rng_u64(&rng) % 8 == 0)
                        m = dsa_test_rng_u64(&rng) % (n + 1);
                try_st(q, m) == 0 ? ok++ : bad++;
        }
        for (int it = 0; it < 500; it++) {
                memcpy(q, p, n);
                q[hdr + dsa_test_rng_u64(&rng) % ST_DATA] ^= 0xff;
                assert_int_equal(try_st(q, n), 0);
        }
        print_message("safetensors: %zu damaged variants opened, %zu rejected\n", ok, bad);
        assert_true(bad > 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_gguf_valid),
                cmocka_unit_test(test_gguf_truncated),
                cmocka_unit_test(test_gguf_lies),
                cmocka_unit_test(test_gguf_random),
                cmocka_unit_test(test_st_lies),
                cmocka_unit_test(test_st_random),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
