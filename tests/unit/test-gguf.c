/* GGUF reader and writer: llama.cpp's own vocab files, a write/read round trip of every value
 * type and several tensor types, getter conversions, tensor-to-fp32 conversion, and the
 * writer's atomicity when the disk refuses a write. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "testutil.h"


static bool str_eq(const char *p, size_t n, const char *want) {
        return n == strlen(want) && memcmp(p, want, n) == 0;
}

static struct dsa_gguf *open_vocab(const char *file) {
        const char *dir = dsa_test_shared_dir();
        struct dsa_gguf *g = NULL;
        int r;

        if (!dir) {
                print_message("SKIP: llama.cpp vocab GGUFs: ../shared not found\n");
                skip();
        }
        dir = dsa_test_path(dir, "data/llamacpp_vocab_tests");
        r = dsa_gguf_open(dsa_test_path(dir, file), &g);
        if (r < 0)
                fail_msg("open %s: %s", file, dsa_error_message(r));
        return g;
}

static void test_vocab_bert(void **state) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = open_vocab("ggml-vocab-bert-bge.gguf");
        enum dsa_gguf_vtype t;
        const char *s;
        size_t n, len;

        assert_int_equal(dsa_gguf_version(g), 3);
        assert_int_equal(dsa_gguf_n_tensors(g), 0);
        assert_int_equal(dsa_gguf_get_str(g, "tokenizer.ggml.model", &s, &len), 0);
        assert_true(str_eq(s, len, "bert"));
        assert_int_equal(dsa_gguf_get_arr(g, "tokenizer.ggml.tokens", &t, &n), 0);
        assert_int_equal(t, DSA_GGUF_STRING);
        assert_int_equal(n, 30522);
        assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 101, &s, &len), 0);
        assert_true(str_eq(s, len, "[CLS]"));
        assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 0, &s, &len), 0);
        assert_true(str_eq(s, len, "[PAD]"));
        assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 30522, &s, &len), -ERANGE);
        assert_int_equal(dsa_gguf_get_str(g, "no.such.key", &s, &len), -ENOENT);
        assert_int_equal(dsa_gguf_get_str(g, "tokenizer.ggml.tokens", &s, &len), -EMEDIUMTYPE);
        /* Every key is found under its own name, at its own index. */
        for (size_t i = 0; i < dsa_gguf_n_kv(g); i++)
                assert_int_equal(dsa_gguf_find(g, dsa_gguf_kv_name(g, i)), (int) i);
        assert_null(dsa_gguf_kv_name(g, dsa_gguf_n_kv(g)));
}

static void test_vocab_gpt2(void **state) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = open_vocab("ggml-vocab-gpt-2.gguf");
        enum dsa_gguf_vtype t;
        const char *s;
        size_t n, len, total = 0;

        assert_int_equal(dsa_gguf_get_str(g, "tokenizer.ggml.model", &s, &len), 0);
        assert_true(str_eq(s, len, "gpt2"));
        assert_int_equal(dsa_gguf_get_arr(g, "tokenizer.ggml.tokens", &t, &n), 0);
        assert_int_equal(n, 50257);
        assert_int_equal(dsa_gguf_get_arr(g, "tokenizer.ggml.merges", &t, &n), 0);
        assert_int_equal(t, DSA_GGUF_STRING);
        assert_int_equal(n, 50000);
        /* O(1) per element: walking all 50k merges is instant. */
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &len), 0);
                total += len;
        }
        assert_true(total > 50000);
        assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 0, &s, &len), 0);
        assert_true(str_eq(s, len, "!"));
}

static void test_vocab_llama(void **state) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = open_vocab("ggml-vocab-llama-spm.gguf");
        enum dsa_gguf_vtype t;
        const void *data;
        const char *s;
        size_t n, len;
        bool b;

        assert_int_equal(dsa_gguf_get_str(g, "tokenizer.ggml.model", &s, &len), 0);
        assert_true(str_eq(s, len, "llama"));
        assert_int_equal(dsa_gguf_get_arr(g, "tokenizer.ggml.tokens", &t, &n), 0);
        assert_int_equal(n, 32000);
        assert_int_equal(dsa_gguf_get_arr(g, "tokenizer.ggml.scores", &t, &n), 0);
        assert_int_equal(t, DSA_GGUF_FLOAT32);
        assert_int_equal(n, 32000);
        assert_int_equal(dsa_gguf_get_arr_data(g, "tokenizer.ggml.scores", &data), 0);
        assert_int_equal(dsa_gguf_get_arr_data(g, "tokenizer.ggml.tokens", &data), -EMEDIUMTYPE);
        assert_int_equal(dsa_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
        assert_true(b);
        assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s, &len), 0);
        assert_true(str_eq(s, len, "<s>"));
}

/* fp32 -> IEEE half for exactly representable test values (small integers and halves). */
static uint16_t f16_of(float f) {
        uint32_t x;
        int e;

        if (f == 0)
                return 0;
        memcpy(&x, &f, 4);
        e = (int) ((x >> 23) & 0xff) - 127 + 15;
        return (uint16_t) (((x >> 16) & 0x8000) | (e << 10) | ((x >> 13) & 0x3ff));
}

static const char *const vocab[] = { "[PAD]", "", "hello", "wörld", "[CLS]" };

static void fill_writer(struct dsa_gguf_writer *w, float *f32, uint16_t *f16, uint16_t *bf16,
                        uint8_t *q8, int32_t *i32) {
        static const uint64_t ne_a[] = { 8, 4 }, ne_b[] = { 16 }, ne_c[] = { 64, 2 }, ne_d[] = { 3 },
                              ne_e[] = { 5, 1, 1, 2 }, ne_z[] = { 0, 7 };
        static const uint16_t u16s[] = { 1, 2, 65535 };

        for (int i = 0; i < 32; i++)
                f32[i] = (float) i - 7.5f;
        for (int i = 0; i < 16; i++)
                f16[i] = f16_of((float) i - 8);
        for (int i = 0; i < 10; i++) {
                float v = (float) i * 0.5f - 2;
                uint32_t x;

                memcpy(&x, &v, 4);
                bf16[i] = (uint16_t) (x >> 16);
        }
        for (int b = 0; b < 4; b++) {
                uint16_t d = f16_of(0.5f * (float) (b + 1));

                memcpy(q8 + b * 34, &d, 2);
                for (int j = 0; j < 32; j++)
                        q8[b * 34 + 2 + j] = (uint8_t) (int8_t) (j - 16);
        }
        i32[0] = -1, i32[1] = 0, i32[2] = 2147483647;

        assert_int_equal(dsa_gguf_writer_set_u32(w, "general.alignment", 64), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "test.u32", 4000000000u), 0);
        assert_int_equal(dsa_gguf_writer_set_i32(w, "test.i32", -5), 0);
        assert_int_equal(dsa_gguf_writer_set_u64(w, "test.u64", UINT64_MAX), 0);
        assert_int_equal(dsa_gguf_writer_set_f32(w, "test.f32", 0.125f), 0);
        assert_int_equal(dsa_gguf_writer_set_bool(w, "test.bool", true), 0);
        assert_int_equal(dsa_gguf_writer_set_str(w, "test.str", "bert"), 0);
        assert_int_equal(dsa_gguf_writer_set_str(w, "test.empty", ""), 0);
        assert_int_equal(dsa_gguf_writer_set_arr_str(w, "test.vocab", vocab, ELEMENTSOF(vocab)), 0);
        assert_int_equal(dsa_gguf_writer_set_arr(w, "test.u16s", DSA_GGUF_UINT16, u16s, 3), 0);
        assert_int_equal(dsa_gguf_writer_set_arr(w, "test.none", DSA_GGUF_FLOAT64, NULL, 0), 0);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "a", DSA_TYPE_F32, 2, ne_a, f32), 0);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "b", DSA_TYPE_F16, 1, ne_b, f16), 0);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "c", DSA_TYPE_Q8_0, 2, ne_c, q8), 0);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "d", DSA_TYPE_I32, 1, ne_d, i32), 0);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "e", DSA_TYPE_BF16, 4, ne_e, bf16), 0);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "z", DSA_TYPE_F32, 2, ne_z, NULL), 0);

        /* Refusals: duplicates, bad shapes, partial Q8_0 blocks, unknown types. */
        assert_int_equal(dsa_gguf_writer_set_u32(w, "test.u32", 1), -EEXIST);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "a", DSA_TYPE_F32, 2, ne_a, f32), -EEXIST);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "x", DSA_TYPE_F32, 0, ne_a, f32), -EINVAL);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "x", DSA_TYPE_F32, 5, ne_e, f32), -EINVAL);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "x", DSA_TYPE_Q8_0, 1, ne_b, q8), -EINVAL);
        assert_int_equal(dsa_gguf_writer_add_tensor(w, "x", (enum dsa_type) 2, 1, ne_b, q8), -EINVAL);
        assert_int_equal(dsa_gguf_writer_set_str(w, "", "x"), -EINVAL);
}

static void make_tmpdir(char *buf, size_t n) {
        snprintf(buf, n, "/tmp/dsa-test-gguf.XXXXXX");
        assert_non_null(mkdtemp(buf));
}

static void rm_rf(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *e;

        if (!d)
                return;
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                        unlink(dsa_test_path(dir, e->d_name));
        closedir(d);
        rmdir(dir);
}

static size_t count_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *e;
        size_t n = 0;

        assert_non_null(d);
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                        n++;
        closedir(d);
        return n;
}

static void test_roundtrip(void **state) {
        _cleanup_(dsa_gguf_writer_freep) struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        float f32[32], out[256];
        uint16_t f16[16], bf16[10];
        uint8_t q8[4 * 34];
        int32_t i32[3];
        char dir[64];
        const char *path, *s;
        const struct dsa_tensor_view *t;
        const void *data;
        enum dsa_gguf_vtype vt;
        uint64_t u64;
        int64_t i64;
        uint32_t u32;
        size_t n, len;
        float f;
        bool b;
        int r;

        assert_non_null(w);
        fill_writer(w, f32, f16, bf16, q8, i32);
        make_tmpdir(dir, sizeof(dir));
        path = dsa_test_path(dir, "model.gguf");
        r = dsa_gguf_writer_write(w, path);
        if (r < 0)
                fail_msg("write: %s", dsa_error_message(r));
        assert_int_equal(count_entries(dir), 1);
        r = dsa_gguf_open(path, &g);
        if (r < 0)
                fail_msg("open: %s", dsa_error_message(r));

        assert_int_equal(dsa_gguf_version(g), 3);
        assert_int_equal(dsa_gguf_n_kv(g), 11);
        assert_string_equal(dsa_gguf_kv_name(g, 1), "test.u32");
        assert_int_equal(dsa_gguf_kv_type(g, 1), DSA_GGUF_UINT32);
        assert_int_equal(dsa_gguf_get_u32(g, "general.alignment", &u32), 0);
        assert_int_equal(u32, 64);
        assert_int_equal(dsa_gguf_get_u32(g, "test.u32", &u32), 0);
        assert_int_equal(u32, 4000000000u);
        assert_int_equal(dsa_gguf_get_i64(g, "test.u32", &i64), 0);
        assert_int_equal(i64, 4000000000);
        assert_int_equal(dsa_gguf_get_i64(g, "test.i32", &i64), 0);
        assert_int_equal(i64, -5);
        assert_int_equal(dsa_gguf_get_u64(g, "test.i32", &u64), -ERANGE);
        assert_int_equal(dsa_gguf_get_u64(g, "test.u64", &u64), 0);
        assert_true(u64 == UINT64_MAX);
        assert_int_equal(dsa_gguf_get_u32(g, "test.u64", &u32), -ERANGE);
        assert_int_equal(dsa_gguf_get_i64(g, "test.u64", &i64), -ERANGE);
        assert_int_equal(dsa_gguf_get_f32(g, "test.f32", &f), 0);
        assert_true(f == 0.125f);
        assert_int_equal(dsa_gguf_get_f32(g, "test.u32", &f), -EMEDIUMTYPE);
        assert_int_equal(dsa_gguf_get_u64(g, "test.f32", &u64), -EMEDIUMTYPE);
        assert_int_equal(dsa_gguf_get_bool(g, "test.bool", &b), 0);
        assert_true(b);
        assert_int_equal(dsa_gguf_get_u64(g, "test.bool", &u64), -EMEDIUMTYPE);
        assert_int_equal(dsa_gguf_get_str(g, "test.str", &s, &len), 0);
        assert_true(str_eq(s, len, "bert"));
        assert_int_equal(dsa_gguf_get_str(g, "test.empty", &s, &len), 0);
        assert_int_equal(len, 0);
        assert_int_equal(dsa_gguf_get_arr(g, "test.vocab", &vt, &n), 0);
        assert_int_equal(vt, DSA_GGUF_STRING);
        assert_int_equal(n, ELEMENTSOF(vocab));
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(dsa_gguf_get_arr_str(g, "test.vocab", i, &s, &len), 0);
                assert_true(str_eq(s, len, vocab[i]));
        }
        assert_int_equal(dsa_gguf_get_arr(g, "test.u16s", &vt, &n), 0);
        assert_int_equal(vt, DSA_GGUF_UINT16);
        assert_int_equal(n, 3);
        assert_int_equal(dsa_gguf_get_arr_data(g, "test.u16s", &data), 0);
        assert_memory_equal(data, ((uint16_t[]) { 1, 2, 65535 }), 6);
        assert_int_equal(dsa_gguf_get_arr_str(g, "test.u16s", 0, &s, &len), -EMEDIUMTYPE);
        assert_int_equal(dsa_gguf_get_arr(g, "test.none", &vt, &n), 0);
        assert_int_equal(n, 0);

        assert_int_equal(dsa_gguf_n_tensors(g), 6);
        for (size_t i = 0; i < dsa_gguf_n_tensors(g); i++) {
                t = dsa_gguf_tensor(g, i);
                assert_ptr_equal(dsa_gguf_find_tensor(g, t->name), t);
                /* Each tensor starts on the file's 64-byte alignment. */
                assert_true(t->nbytes == 0 || (uintptr_t) t->data % 64 == 0);
        }
        assert_null(dsa_gguf_find_tensor(g, "nope"));

        t = dsa_gguf_find_tensor(g, "a");
        assert_int_equal(t->type, DSA_TYPE_F32);
        assert_int_equal(t->n_dims, 2);
        assert_true(t->ne[0] == 8 && t->ne[1] == 4 && t->ne[2] == 1 && t->ne[3] == 1);
        assert_int_equal(t->nbytes, sizeof(f32));
        assert_memory_equal(t->data, f32, sizeof(f32));
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        assert_memory_equal(out, f32, sizeof(f32));

        t = dsa_gguf_find_tensor(g, "b");
        assert_memory_equal(t->data, f16, sizeof(f16));
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        for (int i = 0; i < 16; i++)
                assert_true(out[i] == (float) i - 8);

        t = dsa_gguf_find_tensor(g, "c");
        assert_int_equal(t->type, DSA_TYPE_Q8_0);
        assert_int_equal(dsa_tensor_nelems(t), 128);
        assert_int_equal(t->nbytes, 4 * 34);
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        for (int bl = 0; bl < 4; bl++)
                for (int j = 0; j < 32; j++)
                        assert_true(out[bl * 32 + j] == 0.5f * (float) (bl + 1) * (float) (j - 16));

        t = dsa_gguf_find_tensor(g, "d");
        assert_memory_equal(t->data, i32, sizeof(i32));
        assert_int_equal(dsa_tensor_to_f32(t, out), -EOPNOTSUPP);

        t = dsa_gguf_find_tensor(g, "e");
        assert_int_equal(t->n_dims, 4);
        assert_true(t->ne[0] == 5 && t->ne[3] == 2);
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        for (int i = 0; i < 10; i++)
                assert_true(out[i] == (float) i * 0.5f - 2);

        t = dsa_gguf_find_tensor(g, "z");
        assert_int_equal(t->nbytes, 0);
        assert_int_equal(dsa_tensor_nelems(t), 0);

        /* Rewriting over an existing file replaces it. */
        assert_int_equal(dsa_gguf_writer_set_str(w, "test.second", "yes"), 0);
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        dsa_gguf_free(TAKE_PTR(g));
        assert_int_equal(dsa_gguf_open(path, &g), 0);
        assert_int_equal(dsa_gguf_n_kv(g), 12);
        assert_int_equal(count_entries(dir), 1);
        rm_rf(dir);
}

static void test_type_helpers(void **state) {
        uint64_t n;

        assert_string_equal(dsa_type_name(DSA_TYPE_Q8_0), "Q8_0");
        assert_string_equal(dsa_type_name(DSA_TYPE_BF16), "BF16");
        assert_null(dsa_type_name((enum dsa_type) 2));
        assert_null(dsa_type_name((enum dsa_type) -1));
        assert_int_equal(dsa_type_block_bytes(DSA_TYPE_Q8_0), 34);
        assert_int_equal(dsa_type_block_elems(DSA_TYPE_Q8_0), 32);
        assert_int_equal(dsa_type_block_bytes((enum dsa_type) 99), 0);
        assert_int_equal(dsa_type_nbytes(DSA_TYPE_Q8_0, 64, &n), 0);
        assert_int_equal(n, 68);
        assert_int_equal(dsa_type_nbytes(DSA_TYPE_Q8_0, 33, &n), -EINVAL);
        assert_int_equal(dsa_type_nbytes(DSA_TYPE_F64, UINT64_MAX / 4, &n), -EOVERFLOW);
        assert_int_equal(dsa_type_nbytes((enum dsa_type) 99, 1, &n), -EINVAL);
        {
                struct dsa_tensor_view v = { .n_dims = 3, .ne = { 1ull << 32, 1ull << 32, 2, 1 } };

                assert_int_equal(dsa_tensor_nelems(&v), 0);
                v.ne[2] = 1;
                v.ne[1] = 1ull << 31;
                assert_true(dsa_tensor_nelems(&v) == 1ull << 63);
        }
}

static void test_open_errors(void **state) {
        struct dsa_gguf *g = NULL;
        char dir[64];
        const char *path;
        FILE *f;

        assert_int_equal(dsa_gguf_open("/nonexistent/x.gguf", &g), -ENOENT);
        assert_int_equal(dsa_gguf_open_memory("GGUF", 4, &g), -EBADMSG);
        assert_int_equal(dsa_gguf_open_memory(NULL, 0, &g), -EBADMSG);
        assert_int_equal(dsa_gguf_open_memory("x", 1, NULL), -EINVAL);
        assert_null(g);

        make_tmpdir(dir, sizeof(dir));
        path = dsa_test_path(dir, "short.gguf");
        f = fopen(path, "w");
        fputs("GGUF\3\0\0\0", f);
        fclose(f);
        dsa_error_clear();
        assert_int_equal(dsa_gguf_open(path, &g), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "smaller than a GGUF header"));
        assert_int_equal(dsa_gguf_open(dir, &g), -EBADMSG); /* a folder */
        assert_null(g);
        rm_rf(dir);

        assert_null(dsa_gguf_free(NULL));
        assert_null(dsa_gguf_writer_free(NULL));
        assert_int_equal(dsa_gguf_n_kv(NULL), 0);
        assert_null(dsa_gguf_tensor(NULL, 0));
}

static void test_writer_no_folder(void **state) {
        _cleanup_(dsa_gguf_writer_freep) struct dsa_gguf_writer *w = dsa_gguf_writer_new();

        assert_int_equal(dsa_gguf_writer_set_u32(w, "x", 1), 0);
        assert_int_equal(dsa_gguf_writer_write(w, "/nonexistent-dsa-dir/m.gguf"), -ENOENT);
}

/* A write that fails half-way (the file-size limit stands in for a full disk: write() fails
 * with EFBIG exactly as it would with ENOSPC) must leave no temp file and the old target. */
static void test_writer_disk_full(void **state) {
        _cleanup_(dsa_gguf_writer_freep) struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        _cleanup_free_ float *big = calloc(1 << 16, sizeof(float));
        _cleanup_free_ char *before = NULL, *after = NULL;
        size_t n_before, n_after;
        struct rlimit old, lim;
        char dir[64];
        const char *path;
        uint64_t ne = 1 << 16;
        int r;

        assert_non_null(big);
        make_tmpdir(dir, sizeof(dir));
        path = dsa_test_path(dir, "model.gguf");
        assert_int_equal(dsa_gguf_writer_set_str(w, "old", "yes"), 0);
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        assert_int_equal(dsa_test_read_file(path, &before, &n_before), 0);

        assert_int_equal(dsa_gguf_writer_add_tensor(w, "big", DSA_TYPE_F32, 1, &ne, big), 0);
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
        lim = old;
        lim.rlim_cur = 64 * 1024;
        signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
        dsa_error_clear();
        r = dsa_gguf_writer_write(w, path);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
        signal(SIGXFSZ, SIG_DFL);
        assert_int_equal(r, -EFBIG);
        assert_non_null(strstr(dsa_error_message(r), "cannot write"));

        assert_int_equal(count_entries(dir), 1);
        assert_int_equal(dsa_test_read_file(path, &after, &n_after), 0);
        assert_int_equal(n_after, n_before);
        assert_memory_equal(after, before, n_before);

        /* With room again the same writer succeeds. */
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        assert_int_equal(count_entries(dir), 1);
        rm_rf(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_type_helpers),
                cmocka_unit_test(test_open_errors),
                cmocka_unit_test(test_roundtrip),
                cmocka_unit_test(test_writer_no_folder),
                cmocka_unit_test(test_writer_disk_full),
                cmocka_unit_test(test_vocab_bert),
                cmocka_unit_test(test_vocab_gpt2),
                cmocka_unit_test(test_vocab_llama),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
