/* See tiny-gguf.h. */
#include <errno.h>
#include <stdlib.h>

#include "engine/gguf.h"
#include "tiny-gguf.h"

int dsa_test_tiny_gguf_write(const char *path, uint32_t seed,
                             int (*fill)(struct dsa_test_tiny_gguf *g, const void *userdata), const void *userdata) {
        struct dsa_test_tiny_gguf g = { .rng = seed };
        int r;

        if (!path || !fill)
                return -EINVAL;
        g.w = dsa_gguf_writer_new();
        if (!g.w)
                return -ENOMEM;
        r = fill(&g, userdata);
        if (r >= 0)
                r = dsa_gguf_writer_write(g.w, path);
        dsa_gguf_writer_free(g.w);
        for (size_t i = 0; i < g.n_bufs; i++)
                free(g.bufs[i]);
        free(g.bufs);
        return r;
}

void *dsa_test_tiny_gguf_alloc(struct dsa_test_tiny_gguf *g, size_t n) {
        void **b = realloc(g->bufs, (g->n_bufs + 1) * sizeof(void *));

        if (!b)
                return NULL;
        g->bufs = b;
        b[g->n_bufs] = calloc(1, n ? n : 1);
        return b[g->n_bufs] ? b[g->n_bufs++] : NULL;
}

float dsa_test_tiny_gguf_rand(struct dsa_test_tiny_gguf *g) {
        g->rng = g->rng * 1664525u + 1013904223u;
        return (float) (g->rng >> 8) / (float) (1u << 24) - 0.5f;
}
