/* Parsing numbers from outside text (command lines, configuration files). */
#pragma once

#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* A finite decimal number in [lo, hi], nothing before or after it: -EINVAL for anything that
 * is not a number, -ERANGE for one out of range (or out of double's). */
static inline int dsa_parse_double(const char *s, double lo, double hi, double *ret) {
        char *end;
        double v;

        if (!s || !*s)
                return -EINVAL;
        errno = 0;
        v = strtod(s, &end);
        if (end == s || *end)
                return -EINVAL;
        if (errno == ERANGE || !isfinite(v) || !(v >= lo && v <= hi))
                return -ERANGE;
        *ret = v;
        return 0;
}
