/* splitmix64 (Steele, Lea & Flood 2014), the one small PRNG the project uses where a seed must
 * fix a run: the fixed attention pattern's random blocks, the scorer fit's and the trainer's
 * initial values, dropout masks, the training order. Header-only, so kernels/ and engine/ share
 * it without an arrow the wrong way. */
#pragma once

#include <stdint.h>

#define DSA_SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull

/* The output for state x (x advanced by the constant first): a hash of x. */
static inline uint64_t dsa_splitmix64(uint64_t x) {
        x += DSA_SPLITMIX64_GAMMA;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

/* The next draw of the sequence whose state is *s, advancing it. */
static inline uint64_t dsa_rng_next(uint64_t *s) {
        uint64_t x = dsa_splitmix64(*s);
        *s += DSA_SPLITMIX64_GAMMA;
        return x;
}
