/* See touch.h. Compiled into the fuzz targets with their sanitizer flags, so a view whose bytes
 * lie outside the input is caught here, where its bytes are read. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "touch.h"

/* Tensors up to this many elements are also converted to fp32 (larger ones only hashed). */
#define TOUCH_MAX_CONVERT (1u << 16)

#define CHECK(x)                                                                        \
        do {                                                                            \
                if (!(x)) {                                                             \
                        fprintf(stderr, "%s:%d: %s does not hold\n", __FILE__, __LINE__, #x); \
                        abort();                                                        \
                }                                                                       \
        } while (0)

static uint64_t touch_bytes(const void *p, uint64_t n) {
        const uint8_t *b = p;
        uint64_t h = 0;

        for (uint64_t i = 0; i < n; i++)
                h = h * 31 + b[i];
        return h;
}

uint64_t dsa_test_touch_tensor(const struct dsa_tensor_view *t) {
        uint64_t h = touch_bytes(t->data, t->nbytes);
        uint64_t n = dsa_tensor_nelems(t);

        if (n > 0 && n <= TOUCH_MAX_CONVERT) {
                float *out = malloc(n * sizeof(float));

                CHECK(out);
                if (dsa_tensor_to_f32(t, out) == 0)
                        h += touch_bytes(out, n * sizeof(float));
                free(out);
        }
        return h;
}

uint64_t dsa_test_touch_gguf(const struct dsa_gguf *g) {
        uint64_t h = dsa_gguf_version(g);

        for (size_t i = 0; i < dsa_gguf_n_kv(g); i++) {
                const char *key = dsa_gguf_kv_name(g, i), *s;
                enum dsa_gguf_vtype t;
                const void *data;
                size_t n, len;
                uint64_t u;
                int64_t v;
                uint32_t u32;
                float f;
                bool b;

                CHECK(key);
                CHECK(dsa_gguf_find(g, key) == (int) i);
                h += dsa_gguf_kv_type(g, i);
                if (dsa_gguf_get_u64(g, key, &u) == 0)
                        h += u;
                if (dsa_gguf_get_i64(g, key, &v) == 0)
                        h += (uint64_t) v;
                if (dsa_gguf_get_u32(g, key, &u32) == 0)
                        h += u32;
                if (dsa_gguf_get_f32(g, key, &f) == 0)
                        h += f == f;
                if (dsa_gguf_get_bool(g, key, &b) == 0)
                        h += b;
                if (dsa_gguf_get_str(g, key, &s, &len) == 0)
                        h += touch_bytes(s, len);
                if (dsa_gguf_get_arr(g, key, &t, &n) != 0)
                        continue;
                if (t == DSA_GGUF_STRING) {
                        for (size_t j = 0; j < n; j++) {
                                CHECK(dsa_gguf_get_arr_str(g, key, j, &s, &len) == 0);
                                h += touch_bytes(s, len);
                        }
                        CHECK(dsa_gguf_get_arr_str(g, key, n, &s, &len) == -ERANGE);
                } else {
                        CHECK(dsa_gguf_get_arr_data(g, key, &data) == 0);
                        h += touch_bytes(data, n * dsa_gguf_vtype_size(t));
                }
        }
        for (size_t i = 0; i < dsa_gguf_n_tensors(g); i++) {
                const struct dsa_tensor_view *t = dsa_gguf_tensor(g, i);

                CHECK(dsa_gguf_find_tensor(g, t->name) == t);
                h += dsa_test_touch_tensor(t);
        }
        return h;
}

uint64_t dsa_test_touch_safetensors(const struct dsa_safetensors *s) {
        uint64_t h = 0;

        for (size_t i = 0; i < dsa_safetensors_n_tensors(s); i++) {
                const struct dsa_tensor_view *t = dsa_safetensors_tensor(s, i);

                CHECK(dsa_safetensors_find(s, t->name) == t);
                h += dsa_test_touch_tensor(t);
        }
        return h;
}
