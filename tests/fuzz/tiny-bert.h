/* A tiny BERT sequence classifier as a GGUF file, written with the engine's own GGUF writer in
 * any of the variant formats the model loader reads: F32, F16 or BF16 matrices, I8 matrices
 * with their per-row ".scale" and optional ".input_scale", I8 token embeddings with
 * "token_embd.scale", per-layer head and FFN counts (tensors of the matching shapes), a token
 * pruning schedule with or without learned scores and the sparse-kernel flag. The fuzz seeds (gen-seeds.c) and the loader's
 * corrupt-file test (tests/unit/test-model-corrupt.c) share it. V=16, C=8, 2 heads, FFN 16,
 * 2 layers, context 8, 2 token types, pooler and 2 labels. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/tensor.h"

#define DSA_TEST_TINY_V 16u
#define DSA_TEST_TINY_C 8u
#define DSA_TEST_TINY_H 2u
#define DSA_TEST_TINY_F 16u
#define DSA_TEST_TINY_L 2u
#define DSA_TEST_TINY_CTX 8u
#define DSA_TEST_TINY_LABELS 2u

struct dsa_test_tiny_bert {
        enum dsa_type wtype; /* layer matrices: F32 (0), F16, BF16 or I8 */
        enum dsa_type etype; /* token_embd: F32 (0), F16, BF16 or I8 */
        bool input_scale;    /* I8 matrices: also a one-element ".input_scale" each */
        bool sparse;         /* dsa.prune.sparse_kernel = true (and half of each matrix zeroed) */
        bool tokenizer;      /* tokenizer.ggml.* keys for a 16-token WordPiece vocabulary */
        /* Per-layer keys, written when the pointer is set, with n elements (a lie when
         * n != DSA_TEST_TINY_L; the tensors then keep the config's shapes). */
        const uint32_t *heads;
        size_t n_heads;
        const uint32_t *ffs;
        size_t n_ffs;
        const float *token_keep;
        size_t n_token_keep;
        /* A learned token score "blk.N.token_score.weight" (C + 1) on every layer whose
         * token_keep is below 1. */
        bool token_score;
};

/* Writes the model o describes to path. Returns 0 or -errno. */
int dsa_test_tiny_bert_write(const struct dsa_test_tiny_bert *o, const char *path);
