/* libFuzzer target: any bytes as a Hugging Face config.json. A config that parses must hold
 * positive sizes (what the parser promises), and must then pass or fail the loader's own
 * check, dsa__bert_config_check(), cleanly; the document handed back must be releasable.
 * Built with -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/bert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_bert_config c;
        struct json_object *j = NULL;
        bool wants_head;

        if (dsa__hf_parse_config((const char *) data, size, "config.json", &c, &wants_head, &j) < 0)
                return 0;
        if (!j || c.n_embd == 0 || c.n_head == 0 || c.n_layer == 0 || c.n_ff == 0 || c.n_ctx == 0 ||
            c.n_vocab == 0 || c.n_type == 0)
                abort();
        (void) dsa__bert_config_check(&c);
        json_object_put(j);
        return 0;
}
