/* Private to engine/: what the GGUF and safetensors readers both check at open. The sorted
 * name index over their tensors (and GGUF's keys), so that duplicates are found in
 * O(n log n) and lookups are binary searches, and the tensors' byte ranges, which must not
 * overlap. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"

/* n elements of stride bytes at elems, each holding its NUL-terminated name as a
 * const char * at name_offset. Passed by value: it only describes a caller's array. */
struct dsa__name_table {
        const void *elems;
        size_t stride, name_offset, n;
};

/* The table of count elements of array arr, whose elements have a member called name. */
#define DSA__NAME_TABLE(arr, count)                                                     \
        ((struct dsa__name_table) { (arr), sizeof(*(arr)), offsetof(__typeof__(*(arr)), name), \
                                    (count) })

/* Sorts the names of t and fills *ret_sorted with n element indices in name order (malloc'd,
 * at least one slot). Two equal names are -EBADMSG with the reason dup_fmt, whose one %s is
 * the name: each reader words its own. */
int dsa__name_index_new(struct dsa__name_table t, const char *dup_fmt, size_t **ret_sorted)
        _printf_(2, 0);

/* The element of t called name, by binary search over sorted (as made above), or NULL. */
const void *dsa__name_index_find(struct dsa__name_table t, const size_t *sorted, const char *name);

/* The bytes [begin, end) that tensor i's data takes. */
struct dsa__byte_range {
        uint64_t begin, end;
        size_t i;
};

/* Sorts the n ranges by begin and looks for a non-empty one that starts inside an earlier one
 * (empty tensors overlap nothing): true, with that range's tensor in *ret_i, when there is. */
bool dsa__byte_ranges_overlap(struct dsa__byte_range *r, size_t n, size_t *ret_i);

/* Opens path (relative to dirfd, or AT_FDCWD) and maps the whole regular file read-only.
 * A file shorter than min_size fails with "'path' is N bytes, smaller than <what>". The caller
 * munmaps *ret (ret_size bytes) when done. */
int dsa__map_file(int dirfd, const char *path, size_t min_size, const char *what, const uint8_t **ret,
                  size_t *ret_size);
