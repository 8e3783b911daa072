/* libFuzzer target for the safetensors reader: any input must give a handle or -EBADMSG, and
 * every tensor of a handle must be readable and convertible. Built with -fsanitize=fuzzer under
 * DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <stdlib.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static uint64_t touch(const void *p, uint64_t n) {
        const uint8_t *b = p;
        uint64_t h = 0;

        for (uint64_t i = 0; i < n; i++)
                h += b[i];
        return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_safetensors *s = NULL;

        if (dsa_safetensors_open_memory(data, size, &s) < 0)
                return 0;
        for (size_t i = 0; i < dsa_safetensors_n_tensors(s); i++) {
                const struct dsa_tensor_view *t = dsa_safetensors_tensor(s, i);
                uint64_t n = dsa_tensor_nelems(t);

                if (dsa_safetensors_find(s, t->name) != t)
                        abort();
                sink += touch(t->data, t->nbytes);
                if (n > 0 && n <= (1u << 16)) {
                        float *out = malloc(n * sizeof(float));

                        if (out && dsa_tensor_to_f32(t, out) == 0)
                                sink += touch(out, n * sizeof(float));
                        free(out);
                }
        }
        dsa_safetensors_free(s);
        return 0;
}
