/* The allocator's policy for the programs that run forwards (dsactl, dsad). Header-only; never
 * installed. */
#pragma once

#include <malloc.h>

/* A forward allocates its activations afresh, megabytes of them at long inputs (about 25 MiB
 * for a 4,096-token decoder forward of longlm-4l256). glibc serves blocks past its mmap threshold
 * from fresh mappings, whose pages fault in one by one on every call, and returns freed heap
 * past its trim threshold to the kernel. Its dynamic thresholds usually climb to 32 MiB and 64
 * MiB after a model's load frees its packing buffers, but not after every load: an int8
 * decoder's left them low, and each 4,096-token forward then faulted about 4,500 pages (18 MiB),
 * 8 ms of dense-int8's 235. Fixing them at those values keeps the buffers on the heap between
 * forwards: a program's freed memory stays mapped up to 64 MiB past its live use. Call once,
 * before any allocation of size. */
static inline void dsa_malloc_keep_buffers(void) {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 64 << 20);
}
