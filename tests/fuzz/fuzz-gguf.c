/* libFuzzer target for the GGUF reader: any input must give a handle or -EBADMSG, and every key,
 * array element and tensor of a handle must be readable through the public getters. Built with
 * -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static uint64_t touch(const void *p, uint64_t n) {
        const uint8_t *b = p;
        uint64_t h = 0;

        for (uint64_t i = 0; i < n; i++)
                h += b[i];
        return h;
}

static void touch_tensor(const struct dsa_tensor_view *t) {
        uint64_t n = dsa_tensor_nelems(t);
        float *out;

        sink += touch(t->data, t->nbytes);
        if (n == 0 || n > (1u << 16))
                return;
        out = malloc(n * sizeof(float));
        if (out && dsa_tensor_to_f32(t, out) == 0)
                sink += touch(out, n * sizeof(float));
        free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_gguf *g = NULL;

        if (dsa_gguf_open_memory(data, size, &g) < 0)
                return 0;
        sink += dsa_gguf_version(g);
        for (size_t i = 0; i < dsa_gguf_n_kv(g); i++) {
                const char *key = dsa_gguf_kv_name(g, i), *s;
                enum dsa_gguf_vtype t;
                const void *p;
                size_t n, len;
                uint64_t u;
                int64_t v;
                uint32_t u32;
                float f;
                bool b;

                if (dsa_gguf_find(g, key) != (int) i)
                        abort();
                sink += dsa_gguf_kv_type(g, i);
                if (dsa_gguf_get_u64(g, key, &u) == 0)
                        sink += u;
                if (dsa_gguf_get_i64(g, key, &v) == 0)
                        sink += (uint64_t) v;
                if (dsa_gguf_get_u32(g, key, &u32) == 0)
                        sink += u32;
                if (dsa_gguf_get_f32(g, key, &f) == 0)
                        sink += f == f;
                if (dsa_gguf_get_bool(g, key, &b) == 0)
                        sink += b;
                if (dsa_gguf_get_str(g, key, &s, &len) == 0)
                        sink += touch(s, len);
                if (dsa_gguf_get_arr(g, key, &t, &n) < 0)
                        continue;
                if (t == DSA_GGUF_STRING) {
                        for (size_t j = 0; j < n; j++)
                                if (dsa_gguf_get_arr_str(g, key, j, &s, &len) == 0)
                                        sink += touch(s, len);
                                else
                                        abort();
                } else if (dsa_gguf_get_arr_data(g, key, &p) == 0)
                        sink += touch(p, n * dsa_gguf_vtype_size(t));
                else
                        abort();
        }
        for (size_t i = 0; i < dsa_gguf_n_tensors(g); i++) {
                const struct dsa_tensor_view *t = dsa_gguf_tensor(g, i);

                if (dsa_gguf_find_tensor(g, t->name) != t)
                        abort();
                touch_tensor(t);
        }
        dsa_gguf_free(g);
        return 0;
}
