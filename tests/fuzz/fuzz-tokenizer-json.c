/* libFuzzer target: any bytes as a tokenizer.json (WordPiece or byte-level BPE). A file that
 * loads must then encode fixed texts, a pair with truncation, and the input bytes themselves as
 * text, and decode what it encoded, without crashing. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void encode(const struct dsa_tokenizer *t, const char *a, size_t a_len, const char *b,
                   size_t b_len, unsigned flags, size_t max_len) {
        struct dsa_encoding e = {};
        char *s = NULL;
        size_t len;

        if (dsa_tokenizer_encode(t, a, a_len, b, b_len, flags, max_len, &e) < 0)
                return;
        if (dsa_tokenizer_decode(t, e.ids, e.n, &s, &len) >= 0)
                free(s);
        dsa_encoding_clear(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const char *const texts[] = {
                "Hello, World! [CLS] [MASK] caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xc4\xb0 e\xcc\x81",
                "unaffable\t\n\x01 \xef\xbf\xbd runs!!",
                "<|begin_of_text|>it's 12345\r\n\n  hello world<|end_of_text|> \xe1\xa0\x8e!",
        };
        struct dsa_tokenizer *t = NULL;

        if (dsa_tokenizer_from_hf_json((const char *) data, size, &t) < 0)
                return 0;
        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
                encode(t, texts[i], strlen(texts[i]), NULL, 0, DSA_ENCODE_SPECIAL, 0);
        encode(t, texts[0], strlen(texts[0]), texts[1], strlen(texts[1]), DSA_ENCODE_SPECIAL, 7);
        encode(t, (const char *) data, size, NULL, 0, 0, 0);
        encode(t, (const char *) data, size, texts[0], strlen(texts[0]), DSA_ENCODE_SPECIAL, 16);
        for (int32_t id = -1; id < 3; id++)
                (void) dsa_tokenizer_token(t, id);
        (void) dsa_tokenizer_bos_id(t);
        (void) dsa_tokenizer_eos_id(t);
        dsa_tokenizer_free(t);
        return 0;
}
