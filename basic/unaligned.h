/* Host-order 32-bit loads and stores at any alignment, for the ring's payloads (include/dsa/ring.h:
 * little-endian, which is the host order on every target dsad builds for), after systemd's
 * src/basic/unaligned.h. Header-only; never installed. */
#pragma once

#include <stdint.h>
#include <string.h>

static inline uint32_t unaligned_read_ne32(const void *p) {
        uint32_t v;

        memcpy(&v, p, sizeof(v));
        return v;
}

static inline void unaligned_write_ne32(void *p, uint32_t v) {
        memcpy(p, &v, sizeof(v));
}
