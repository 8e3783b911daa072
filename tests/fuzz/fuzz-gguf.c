/* libFuzzer target for the GGUF reader: any input must give a handle or -EBADMSG, and every key,
 * array element and tensor of a handle must be readable through the public getters (touch.c).
 * Built with -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <stddef.h>
#include <stdint.h>

#include "touch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_gguf *g = NULL;

        if (dsa_gguf_open_memory(data, size, &g) < 0)
                return 0;
        sink += dsa_test_touch_gguf(g);
        dsa_gguf_free(g);
        return 0;
}
