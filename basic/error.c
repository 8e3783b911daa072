/* Thread-local storage of the last error reason; see error.h. */
#include <stdarg.h>
#include <string.h>

#include "error.h"

static _Thread_local char error_buf[512];

int dsa__error(int r, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(error_buf, sizeof(error_buf), fmt, ap);
        va_end(ap);
        return r;
}

const char *dsa_error_message(int r) {
        if (error_buf[0])
                return error_buf;
        return strerror(r < 0 ? -r : r);
}

void dsa_error_clear(void) {
        error_buf[0] = 0;
}
