/* A tiny Llama decoder as a GGUF file with llama.cpp's names and keys (architecture "llama"),
 * written with the engine's own GGUF writer: F32, F16 or I8 matrices, the output head tied to
 * token_embd or an output.weight of its own, an attention variant under dsa.attention.* (local,
 * fixed, linear, or DSA with a fitted rank-2 scorer in blk.N.dsa_scorer_* or the heuristic one)
 * and an optional byte-level BPE tokenizer under tokenizer.ggml.* (gpt2 / llama-bpe: the 256 byte
 * symbols, a few merges, BOS, EOS and reserved tokens; the vocabulary is then 300). The fuzz seeds
 * (gen-seeds.c) and the decoder loader's corrupt-file test (tests/unit/test-llama-corrupt.c)
 * share it. C=16, 4 heads, 2 key/value heads, head size 4, SwiGLU 24, 2 layers, context 64,
 * vocabulary 40 without a tokenizer. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "engine/attention-variant.h"
#include "engine/tensor.h"

#define DSA_TEST_LLAMA_V 40u      /* vocabulary without a tokenizer */
#define DSA_TEST_LLAMA_V_TOK 300u /* with one */
#define DSA_TEST_LLAMA_C 16u
#define DSA_TEST_LLAMA_H 4u
#define DSA_TEST_LLAMA_KV 2u
#define DSA_TEST_LLAMA_HS 4u
#define DSA_TEST_LLAMA_F 24u
#define DSA_TEST_LLAMA_L 2u
#define DSA_TEST_LLAMA_CTX 64u
#define DSA_TEST_LLAMA_RANK 2u  /* of the fitted DSA scorer */
#define DSA_TEST_LLAMA_BLOCK 4u /* dsa.attention.block: a 64-token context has 16 blocks */

/* Token ids of the tokenizer's special tokens. */
#define DSA_TEST_LLAMA_BOS 265
#define DSA_TEST_LLAMA_EOS 266

struct dsa_test_tiny_llama {
        enum dsa_type wtype;     /* every matrix, token_embd and output too: F32 (0), F16 or I8
                                  * (with "X.scale" per row, as dsactl optimize --quant int8) */
        bool untied;             /* write output.weight (otherwise the head is tied to token_embd) */
        enum dsa_att_kind att;   /* DENSE (0) writes no dsa.attention.* key */
        bool heuristic;          /* DSA: the heuristic scorer, no scorer tensors */
        bool token;              /* DSA: the fitted scorer is the token one (stride 2) */
        bool summary;            /* block summaries (local, fixed, DSA) */
        bool tokenizer;          /* the byte-level BPE tokenizer, vocabulary DSA_TEST_LLAMA_V_TOK */
};

/* The vocabulary o gives the model (token_embd's rows). */
uint32_t dsa_test_tiny_llama_n_vocab(const struct dsa_test_tiny_llama *o);
/* Writes the model o describes to path. Returns 0 or -errno. */
int dsa_test_tiny_llama_write(const struct dsa_test_tiny_llama *o, const char *path);
