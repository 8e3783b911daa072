/* libFuzzer target for the GGUF reader: any input must give a handle or -EBADMSG, and every key,
 * array element and tensor of a handle must be readable through the public getters (touch.c).
 * A handle whose tokenizer.ggml.* keys load must encode and decode a text.
 * Built with -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "touch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_gguf *g = NULL;
        struct dsa_tokenizer *t = NULL;

        if (dsa_gguf_open_memory(data, size, &g) < 0)
                return 0;
        sink += dsa_test_touch_gguf(g);
        if (dsa_tokenizer_from_gguf(g, &t) >= 0) {
                static const char text[] = "<|begin_of_text|>[CLS] hello world it's 12345\n\n caf\xc3\xa9";
                struct dsa_encoding e = {};
                char *s = NULL;
                size_t len;
                if (dsa_tokenizer_encode(t, text, strlen(text), "x", 1, DSA_ENCODE_SPECIAL, 0, &e) >= 0) {
                        if (dsa_tokenizer_decode(t, e.ids, e.n, &s, &len) >= 0)
                                free(s);
                        dsa_encoding_clear(&e);
                }
                dsa_tokenizer_free(t);
        }
        dsa_gguf_free(g);
        return 0;
}
