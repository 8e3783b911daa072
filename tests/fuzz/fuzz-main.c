/* A main() for the fuzz targets without libFuzzer: feeds each file named on the command line
 * (folders: each file inside) to LLVMFuzzerTestOneInput once, so the unit suite replays the
 * seed corpus under any compiler and sanitizer. Fails when it found nothing to replay. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
        char *data = NULL;
        size_t size;
        int r;

        r = dsa_test_read_file(path, &data, &size);
        if (r < 0) {
                fprintf(stderr, "%s: cannot read (%d)\n", path, r);
                return r;
        }
        /* An exact-size copy, so ASan sees a read past the end as one. */
        uint8_t *copy = malloc(size ? size : 1);
        if (!copy) {
                free(data);
                return -1;
        }
        memcpy(copy, data, size);
        free(data);
        LLVMFuzzerTestOneInput(copy, size);
        free(copy);
        return 0;
}

int main(int argc, char **argv) {
        size_t n = 0;

        for (int i = 1; i < argc; i++) {
                struct stat st;
                DIR *d;
                struct dirent *e;

                if (stat(argv[i], &st) < 0) {
                        fprintf(stderr, "%s: not found\n", argv[i]);
                        return 1;
                }
                if (!S_ISDIR(st.st_mode)) {
                        if (replay_file(argv[i]) < 0)
                                return 1;
                        n++;
                        continue;
                }
                d = opendir(argv[i]);
                if (!d)
                        return 1;
                while ((e = readdir(d))) {
                        if (e->d_name[0] == '.')
                                continue;
                        if (replay_file(dsa_test_path(argv[i], e->d_name)) < 0) {
                                closedir(d);
                                return 1;
                        }
                        n++;
                }
                closedir(d);
        }
        printf("replayed %zu inputs\n", n);
        return n > 0 ? 0 : 1;
}
