/* libFuzzer target: the first 64 bytes as a ring SQE, the rest as the payload the client left in
 * its slot, through dsad_request_decode() exactly as the session's drain hands them over. A
 * request that decodes must be self-consistent (NUL-terminated texts of the stated lengths that
 * add up to the payload) and must free cleanly. Unless the SQE's top bit of len is set, len is
 * made to match the payload, so most inputs get past that first check.
 * Built with -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer.
 * The decoder's objects refer to the registry and logging, stubbed here so that this target
 * links the data plane alone. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

struct dsad_model {
        int unused;
};
const struct dsa_model *dsad_model_engine(const struct dsad_model *m) {
        return NULL;
}
struct dsad_model *dsad_model_ref(struct dsad_model *m) {
        return m;
}
void dsad_model_unref(struct dsad_model *m) {
}
bool dsad_model_loaded(const struct dsad_model *m) {
        return false;
}
int dsad_registry_load(struct dsad *d, const char *name, struct dsad_model **ret) {
        return -ENOENT;
}
struct dsad_ladder *dsad_model_ladder(const struct dsad_model *m) {
        return NULL;
}
void dsad_adaptive_wake(struct dsad *d) {
}
void dsad_api_sessions_changed(struct dsad *d) {
}
void dsad_log(int priority, const char *fmt, ...) {
}
int dsad_log_errno(int priority, int r, const char *fmt, ...) {
        return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_ring_sqe sqe;
        struct dsad_request *r = NULL;
        uint8_t *payload;
        size_t len;

        if (size < sizeof(sqe))
                return 0;
        memcpy(&sqe, data, sizeof(sqe));
        len = size - sizeof(sqe);
        if (len > (16u << 20))
                return 0;
        if (!(sqe.len & 0x80000000u))
                sqe.len = (uint32_t) len;
        /* An exact-size private copy, as the session makes. */
        payload = malloc(len ? len : 1);
        if (!payload)
                return 0;
        memcpy(payload, data + sizeof(sqe), len);
        if (dsad_request_decode(&sqe, payload, len, 16, &r) >= 0) {
                size_t sum = r->n_texts ? 4 : 0;
                if (!r || r->op != sqe.op || r->slot >= 16 || r->n_texts > 1024)
                        abort();
                for (size_t i = 0; i < r->n_texts; i++) {
                        if (strlen(r->texts[i]) != r->lens[i])
                                abort();
                        sum += 4 + r->lens[i];
                }
                if (sum != len)
                        abort();
                dsad_request_free(r);
        } else if (r)
                abort();
        free(payload);
        return 0;
}
