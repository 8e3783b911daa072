/* SHA-256 (FIPS 180-4), for recording which data a variant was calibrated on. Streaming:
 * init, update any number of times, final. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct dsa_sha256 {
        uint32_t h[8];
        uint64_t len; /* bytes so far */
        uint8_t buf[64];
        size_t n; /* bytes in buf */
};

void dsa_sha256_init(struct dsa_sha256 *s);
void dsa_sha256_update(struct dsa_sha256 *s, const void *data, size_t len);
/* The digest as 64 lowercase hex digits + NUL. */
void dsa_sha256_final_hex(struct dsa_sha256 *s, char hex[65]);
