/* The monotonic clock: microseconds, the unit every timestamp of the daemon is kept in
 * (enqueue times, idle-unload, uptime), nanoseconds and seconds for timing runs; after systemd's
 * src/basic/time-util.h. Header-only;
 * never installed. */
#pragma once

#include <stdint.h>
#include <time.h>

static inline uint64_t now_nsec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Seconds, for timing whole runs (dsactl's eval and bench). */
static inline double now_sec(void) {
        return (double) now_nsec() / 1e9;
}

static inline uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}
