/* libFuzzer target for the safetensors reader: any input must give a handle or -EBADMSG, and
 * every tensor of a handle must be readable and convertible (touch.c). Built with
 * -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <stddef.h>
#include <stdint.h>

#include "touch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_safetensors *s = NULL;

        if (dsa_safetensors_open_memory(data, size, &s) < 0)
                return 0;
        sink += dsa_test_touch_safetensors(s);
        dsa_safetensors_free(s);
        return 0;
}
