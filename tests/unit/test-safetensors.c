/* safetensors reader: the bert-tiny and sharded bert-mini fixtures, in-memory files of every
 * dtype (ggml dimension order, conversion to fp32), and sharded folders whose index lies. */
#include <dirent.h>
#include <errno.h>
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
#include "engine/safetensors.h"
#include "testutil.h"


/* A file: u64 header length, the JSON, then data_size bytes of data (byte i = i & 0xff). */
static uint8_t *build(const char *json, size_t data_size, size_t *ret_size) {
        uint64_t n = strlen(json);
        uint8_t *p = malloc(8 + n + data_size + 1);

        assert_non_null(p);
        memcpy(p, &n, 8);
        memcpy(p + 8, json, n);
        for (size_t i = 0; i < data_size; i++)
                p[8 + n + i] = (uint8_t) i;
        *ret_size = 8 + n + data_size;
        return p;
}

static int open_json(const char *json, size_t data_size) {
        _cleanup_free_ uint8_t *p = NULL;
        struct dsa_safetensors *s = NULL;
        size_t size;
        int r;

        p = build(json, data_size, &size);
        dsa_error_clear();
        r = dsa_safetensors_open_memory(p, size, &s);
        assert_true((r < 0) == (s == NULL));
        dsa_safetensors_free(s);
        return r;
}

static void write_file(const char *path, const void *p, size_t n) {
        FILE *f = fopen(path, "w");

        assert_non_null(f);
        assert_int_equal(fwrite(p, 1, n, f), n);
        assert_int_equal(fclose(f), 0);
}

static void test_memory_dtypes(void **state) {
        static const char json[] =
                "{\"__metadata__\":{\"format\":\"pt\"},"
                "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2,2],\"data_offsets\":[32,40]},"
                "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[40,48]},"
                "\"s\":{\"dtype\":\"I8\",\"shape\":[],\"data_offsets\":[48,49]},"
                "\"e\":{\"dtype\":\"F64\",\"shape\":[0,5],\"data_offsets\":[49,49]}}  ";
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *s = NULL;
        _cleanup_free_ uint8_t *p = NULL;
        const struct dsa_tensor_view *t;
        const float w[6] = { 1, 2, 3, 4, 5, 6 };
        const uint16_t h[4] = { 0x3c00, 0xc000, 0x3800, 0 }; /* 1, -2, 0.5, 0 */
        const uint16_t b[4] = { 0x3f80, 0x4040, 0xbf00, 0x4120 }; /* 1, 3, -0.5, 10 */
        size_t size, off;
        float out[8];
        int r;

        p = build(json, 49, &size);
        off = size - 49;
        memcpy(p + off, w, 24);
        memcpy(p + off + 24, h, 8);
        memcpy(p + off + 32, b, 8);
        r = dsa_safetensors_open_memory(p, size, &s);
        if (r < 0)
                fail_msg("open: %s", dsa_error_message(r));
        assert_int_equal(dsa_safetensors_n_tensors(s), 6);
        for (size_t i = 0; i < 6; i++) {
                t = dsa_safetensors_tensor(s, i);
                assert_ptr_equal(dsa_safetensors_find(s, t->name), t);
        }
        assert_null(dsa_safetensors_tensor(s, 6));
        assert_null(dsa_safetensors_find(s, "__metadata__"));

        t = dsa_safetensors_find(s, "w");
        assert_int_equal(t->type, DSA_TYPE_F32);
        assert_int_equal(t->n_dims, 2);
        assert_true(t->ne[0] == 3 && t->ne[1] == 2 && t->ne[2] == 1); /* ggml order */
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        assert_memory_equal(out, w, sizeof(w));

        t = dsa_safetensors_find(s, "h");
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        assert_true(out[0] == 1 && out[1] == -2 && out[2] == 0.5f && out[3] == 0);

        t = dsa_safetensors_find(s, "b");
        assert_int_equal(t->n_dims, 3);
        assert_true(t->ne[0] == 2 && t->ne[1] == 2 && t->ne[2] == 1);
        assert_int_equal(dsa_tensor_to_f32(t, out), 0);
        assert_true(out[0] == 1 && out[1] == 3 && out[2] == -0.5f && out[3] == 10);

        t = dsa_safetensors_find(s, "i");
        assert_int_equal(t->type, DSA_TYPE_I64);
        assert_int_equal(t->nbytes, 8);
        assert_int_equal(dsa_tensor_to_f32(t, out), -EOPNOTSUPP);

        t = dsa_safetensors_find(s, "s"); /* a scalar is one element */
        assert_int_equal(t->n_dims, 1);
        assert_int_equal(dsa_tensor_nelems(t), 1);

        t = dsa_safetensors_find(s, "e");
        assert_int_equal(t->nbytes, 0);
        assert_true(t->ne[0] == 5 && t->ne[1] == 0);
}

static void test_memory_errors(void **state) {
        struct dsa_safetensors *s = NULL;

        assert_int_equal(open_json("{}", 0), 0);
        assert_int_equal(open_json("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1),
                         -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "'U8'"));
        assert_int_equal(open_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8),
                         -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "need 8"));
        assert_int_equal(open_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7),
                         -EBADMSG);
        assert_int_equal(open_json("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4),
                         -EBADMSG);
        assert_int_equal(open_json("[]", 0), -EBADMSG);
        assert_int_equal(dsa_safetensors_open_memory("\1\0\0\0", 4, &s), -EBADMSG);
        assert_int_equal(dsa_safetensors_open_memory(NULL, 0, &s), -EBADMSG);
        assert_null(s);
        assert_int_equal(dsa_safetensors_open("/nonexistent.safetensors", &s), -ENOENT);
        assert_int_equal(dsa_safetensors_open_dir("/nonexistent", &s), -ENOENT);
        assert_null(dsa_safetensors_free(NULL));
}

static void test_bert_tiny(void **state) {
        const char *shared = dsa_test_shared_dir();
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *s = NULL, *d = NULL, *ref = NULL;
        const struct dsa_tensor_view *t;
        const char *dir;
        float out[4];
        int32_t id;
        int r;

        if (!shared)
                skip();
        dir = dsa_test_path(shared, "fixtures/hf/bert-tiny");
        r = dsa_safetensors_open(dsa_test_path(dir, "model.safetensors"), &s);
        if (r < 0)
                fail_msg("open: %s", dsa_error_message(r));
        assert_int_equal(dsa_safetensors_n_tensors(s), 41);
        t = dsa_safetensors_find(s, "bert.embeddings.word_embeddings.weight");
        assert_non_null(t);
        assert_int_equal(t->type, DSA_TYPE_F32);
        assert_true(t->ne[0] == 64 && t->ne[1] == 3000);
        assert_int_equal(t->nbytes, 3000 * 64 * 4);
        t = dsa_safetensors_find(s, "bert.embeddings.LayerNorm.weight");
        assert_non_null(t);
        assert_int_equal(dsa_tensor_to_f32(t, (float[64]) {}), 0);
        memcpy(out, t->data, sizeof(out));
        assert_true(out[0] == 1.0f);

        /* The folder has no index: open_dir falls back to model.safetensors. */
        r = dsa_safetensors_open_dir(dir, &d);
        if (r < 0)
                fail_msg("open_dir: %s", dsa_error_message(r));
        assert_int_equal(dsa_safetensors_n_tensors(d), 41);

        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "reference.safetensors"), &ref), 0);
        t = dsa_safetensors_find(ref, "input_ids");
        assert_non_null(t);
        assert_int_equal(t->type, DSA_TYPE_I32);
        assert_true(t->ne[0] == 42 && t->ne[1] == 12);
        memcpy(&id, t->data, 4);
        assert_int_equal(id, 2); /* [CLS] in this vocab.txt */
}

static void test_bert_mini_sharded(void **state) {
        const char *shared = dsa_test_shared_dir();
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *s = NULL;
        const struct dsa_tensor_view *t;
        int r;

        if (!shared)
                skip();
        r = dsa_safetensors_open_dir(dsa_test_path(shared, "fixtures/hf/bert-mini-sharded"), &s);
        if (r < 0)
                fail_msg("open_dir: %s", dsa_error_message(r));
        assert_int_equal(dsa_safetensors_n_tensors(s), 73);
        t = dsa_safetensors_find(s, "bert.embeddings.word_embeddings.weight");
        assert_non_null(t);
        assert_true(t->ne[0] == 128 && t->ne[1] == 5000);
        assert_non_null(dsa_safetensors_find(s, "bert.encoder.layer.0.attention.output.LayerNorm.bias"));
}

struct shard_dir {
        char path[64];
};

static void shard_dir_make(struct shard_dir *d) {
        snprintf(d->path, sizeof(d->path), "/tmp/dsa-test-st.XXXXXX");
        assert_non_null(mkdtemp(d->path));
}

static void shard_dir_put(struct shard_dir *d, const char *name, const char *json, size_t data) {
        _cleanup_free_ uint8_t *p = NULL;
        size_t size;

        p = build(json, data, &size);
        write_file(dsa_test_path(d->path, name), p, size);
}

static void shard_dir_put_index(struct shard_dir *d, const char *map) {
        char buf[1024];

        snprintf(buf, sizeof(buf), "{\"metadata\":{},\"weight_map\":%s}", map);
        write_file(dsa_test_path(d->path, "model.safetensors.index.json"), buf, strlen(buf));
}

static void shard_dir_remove(struct shard_dir *d) {
        DIR *dir = opendir(d->path);
        struct dirent *e;

        while ((e = readdir(dir)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                        unlink(dsa_test_path(d->path, e->d_name));
        closedir(dir);
        rmdir(d->path);
}

static int open_dir(struct shard_dir *d) {
        struct dsa_safetensors *s = NULL;
        int r;

        dsa_error_clear();
        r = dsa_safetensors_open_dir(d->path, &s);
        dsa_safetensors_free(s);
        return r;
}

#define T1 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
#define T2 "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"
#define T2A "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"

static void test_sharded_lies(void **state) {
        struct shard_dir d;

        shard_dir_make(&d);
        shard_dir_put(&d, "s1.safetensors", T1, 8);
        shard_dir_put(&d, "s2.safetensors", T2, 4);

        shard_dir_put_index(&d, "{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}");
        assert_int_equal(open_dir(&d), 0);

        /* Listed in the index but in another shard. */
        shard_dir_put_index(&d, "{\"a\":\"s2.safetensors\",\"b\":\"s2.safetensors\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "missing from shard"));

        /* Listed but nowhere. */
        shard_dir_put_index(&d, "{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\",\"c\":\"s2.safetensors\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);

        /* Shard names that leave the folder. */
        shard_dir_put_index(&d, "{\"a\":\"../s1.safetensors\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);
        shard_dir_put_index(&d, "{\"a\":\"/etc/passwd\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);
        shard_dir_put_index(&d, "{\"a\":\"..\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);
        shard_dir_put_index(&d, "{\"a\":\"\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);
        shard_dir_put_index(&d, "{\"a\":1}");
        assert_int_equal(open_dir(&d), -EBADMSG);

        /* A shard that does not exist. */
        shard_dir_put_index(&d, "{\"a\":\"s1.safetensors\",\"b\":\"s9.safetensors\"}");
        assert_int_equal(open_dir(&d), -ENOENT);

        /* The same tensor in two shards. */
        shard_dir_put(&d, "s2.safetensors", T2A, 4);
        shard_dir_put_index(&d, "{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}");
        assert_int_equal(open_dir(&d), -EBADMSG);
        assert_non_null(strstr(dsa_error_message(-EBADMSG), "appears twice"));

        /* No weight_map; not JSON. */
        write_file(dsa_test_path(d.path, "model.safetensors.index.json"), "{}", 2);
        assert_int_equal(open_dir(&d), -EBADMSG);
        write_file(dsa_test_path(d.path, "model.safetensors.index.json"), "{\"weight_map\":", 14);
        assert_int_equal(open_dir(&d), -EBADMSG);

        /* No index and no model.safetensors. */
        unlink(dsa_test_path(d.path, "model.safetensors.index.json"));
        assert_int_equal(open_dir(&d), -ENOENT);
        shard_dir_put(&d, "model.safetensors", T1, 8);
        assert_int_equal(open_dir(&d), 0);
        shard_dir_remove(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_memory_dtypes),
                cmocka_unit_test(test_memory_errors),
                cmocka_unit_test(test_sharded_lies),
                cmocka_unit_test(test_bert_tiny),
                cmocka_unit_test(test_bert_mini_sharded),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
