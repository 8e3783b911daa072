/* Small I/O helpers. */
#pragma once

#include <errno.h>
#include <stddef.h>
#include <sys/types.h>
#include <unistd.h>

/* Reads from fd until size bytes, end of file or an error, retrying on EINTR: the number of
 * bytes read (less than size only at end of file), or -errno. */
static inline ssize_t dsa_read_full(int fd, void *buf, size_t size) {
        size_t n = 0;

        while (n < size) {
                ssize_t k = read(fd, (char *) buf + n, size - n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        return (ssize_t) n;
}
