/* What the tiny model writers (tiny-bert.c, tiny-llama.c) share: a GGUF file written with the
 * engine's own writer, the buffers it reads the tensors from (the writer keeps pointers to them,
 * so they live until the file is written), and a seeded pseudo-random generator for the
 * weights, the same on every machine. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct dsa_gguf_writer;

struct dsa_test_tiny_gguf {
        struct dsa_gguf_writer *w;
        void **bufs;
        size_t n_bufs;
        uint32_t rng;
};

/* Makes a writer and the generator at seed, calls fill (which adds keys and tensors to g->w)
 * and writes the file to path when fill succeeds; then frees the writer and every buffer.
 * Returns 0 or -errno (fill's own code when it fails). */
int dsa_test_tiny_gguf_write(const char *path, uint32_t seed,
                             int (*fill)(struct dsa_test_tiny_gguf *g, const void *userdata), const void *userdata);

/* n zeroed bytes (at least one) that live until the file is written, or NULL. */
void *dsa_test_tiny_gguf_alloc(struct dsa_test_tiny_gguf *g, size_t n);

/* The next value in [-0.5, 0.5) of a 32-bit linear congruential generator. */
float dsa_test_tiny_gguf_rand(struct dsa_test_tiny_gguf *g);
