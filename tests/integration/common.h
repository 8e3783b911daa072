/* Small helpers shared by the C integration tests: float comparison that prints the worst
 * element, and a deterministic text generator. */
#pragma once

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

/* Under ASan the engine runs ~10x slower: tests scale their load down to stay within ctest's
 * timeout, keeping every kind of check. */
#if defined(__SANITIZE_ADDRESS__)
#define ITEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ITEST_ASAN 1
#endif
#endif
#ifndef ITEST_ASAN
#define ITEST_ASAN 0
#endif

/* Passes when every |got - want| <= atol + rtol * |want|; prints the worst element on failure
 * (and its max error when verbose). */
static inline bool itest_close(const char *what, const float *got, const float *want, size_t n, float atol,
                               float rtol, bool verbose) {
        double worst = 0, worst_excess = -1;
        size_t wi = 0;

        for (size_t i = 0; i < n; i++) {
                double d = fabs((double) got[i] - (double) want[i]);
                double excess = d - (atol + rtol * fabs((double) want[i]));
                if (isnan(got[i]) != isnan(want[i]))
                        excess = INFINITY;
                if (d > worst)
                        worst = d;
                if (excess > worst_excess) {
                        worst_excess = excess;
                        wi = i;
                }
        }
        if (worst_excess > 0 || verbose)
                fprintf(stderr, "%s %s: %zu values, max |diff| %.3g; worst [%zu] got %.9g want %.9g\n",
                        worst_excess > 0 ? "FAIL" : "ok  ", what, n, worst, wi, n ? got[wi] : 0.0,
                        n ? want[wi] : 0.0);
        return worst_excess <= 0;
}

static const char *const itest_words[] = {
        "the", "movie", "was", "great", "terrible", "boring", "a", "masterpiece", "of", "acting",
        "plot", "never", "ever", "again", "funny", "sad", "and", "but", "not", "really", "truly",
        "awful", "wonderful", "script", "music", "café", "naïve", "über", "日本", "😀",
};

/* A unique text for (a, b): words picked from a seeded generator, with the pair's numbers in it. */
static inline void itest_text(char *buf, size_t size, uint32_t a, uint32_t b) {
        uint64_t s = (uint64_t) a * 0x9E3779B97F4A7C15ull ^ ((uint64_t) b + 1) * 0xD1B54A32D192ED03ull;
        size_t n = 0, words = 3 + (size_t) ((s >> 7) % 14);

        n += (size_t) snprintf(buf, size, "t%u-%u", a, b);
        for (size_t i = 0; i < words && n + 32 < size; i++) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                n += (size_t) snprintf(buf + n, size - n, " %s",
                                       itest_words[s % (sizeof(itest_words) / sizeof(itest_words[0]))]);
        }
}
