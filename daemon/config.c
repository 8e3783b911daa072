/* dsad.conf: the [daemon] section of an INI file read with inih. Unknown keys and sections are
 * warned about and ignored, so an older dsad reads a newer file; a bad value is an error that
 * names file:line, so a typo never silently runs with a default. inih does not hand the line
 * number to the handler (Debian builds it without INI_HANDLER_LINENO), so the reader below
 * counts lines itself. */
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "daemon.h"

#define DEFAULT_STORE "/var/lib/dsa/models"
#define DEFAULT_QUEUE_MAX 256u

struct parse_state {
        const char *path;
        FILE *f;
        unsigned lineno, next_lineno;
        int error; /* first error, 0 when none */
        struct dsad_config c;
};

/* ---- helpers */

static int parse_uint(const char *s, unsigned long max, unsigned long *ret) {
        char *end;
        unsigned long v;

        if (!s || *s < '0' || *s > '9') /* no sign, no blanks */
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno == ERANGE || v > max)
                return -ERANGE;
        if (*end)
                return -EINVAL;
        *ret = v;
        return 0;
}

static char *reader(char *buf, int size, void *stream) {
        struct parse_state *p = stream;
        char *r = fgets(buf, size, p->f);

        if (!r)
                return NULL;
        /* A line longer than inih's buffer comes in several pieces with one number. */
        p->lineno = p->next_lineno;
        if (strchr(buf, '\n'))
                p->next_lineno++;
        return r;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
        struct parse_state *p = user;
        unsigned long v;
        int r = 0;

        if (!name) /* a section header on its own */
                return 1;
        if (strcmp(section, "daemon") != 0) {
                dsad_log(LOG_WARNING, "%s:%u: unknown section [%s], ignoring.", p->path, p->lineno, section);
                return 1;
        }

        if (strcmp(name, "store") == 0) {
                if (value[0] != '/') {
                        dsad_log(LOG_ERR, "%s:%u: store= must be an absolute path: '%s'", p->path, p->lineno, value);
                        r = -EINVAL;
                } else {
                        char *s = strdup(value);
                        if (!s)
                                r = -ENOMEM;
                        else {
                                free(p->c.store);
                                p->c.store = s;
                        }
                }
        } else if (strcmp(name, "workers") == 0) {
                r = parse_uint(value, 4096, &v);
                if (r >= 0)
                        p->c.workers = (unsigned) v;
                else
                        dsad_log(LOG_ERR, "%s:%u: workers= wants 0 (one per core) to 4096: '%s'", p->path, p->lineno, value);
        } else if (strcmp(name, "idle_unload_seconds") == 0) {
                r = parse_uint(value, UINT_MAX, &v);
                if (r >= 0)
                        p->c.idle_unload_seconds = (unsigned) v;
                else
                        dsad_log(LOG_ERR, "%s:%u: idle_unload_seconds= wants seconds (0 = never): '%s'", p->path,
                                 p->lineno, value);
        } else if (strcmp(name, "queue_max") == 0) {
                r = parse_uint(value, 1u << 20, &v);
                if (r >= 0 && v == 0)
                        r = -ERANGE;
                if (r >= 0)
                        p->c.queue_max = (unsigned) v;
                else
                        dsad_log(LOG_ERR, "%s:%u: queue_max= wants 1 to 1048576: '%s'", p->path, p->lineno, value);
        } else if (strcmp(name, "batch_max") == 0) {
                r = parse_uint(value, DSAD_BATCH_MAX, &v);
                if (r >= 0 && v == 0)
                        r = -ERANGE;
                if (r >= 0)
                        p->c.batch_max = (unsigned) v;
                else
                        dsad_log(LOG_ERR, "%s:%u: batch_max= wants 1 to %u: '%s'", p->path, p->lineno,
                                 DSAD_BATCH_MAX, value);
        } else
                dsad_log(LOG_WARNING, "%s:%u: unknown key '%s' in [daemon], ignoring.", p->path, p->lineno, name);

        if (r < 0 && p->error == 0)
                p->error = r == -ENOMEM ? r : -EINVAL;
        return 1; /* keep going: report every bad line at once */
}

/* ---- API */

int dsad_config_defaults(struct dsad_config *c) {
        char *s = strdup(DEFAULT_STORE);

        if (!s)
                return -ENOMEM;
        free(c->store);
        *c = (struct dsad_config){
                .store = s,
                .workers = 0,
                .idle_unload_seconds = 0,
                .queue_max = DEFAULT_QUEUE_MAX,
                .batch_max = DSAD_BATCH_MAX,
        };
        return 0;
}

void dsad_config_clear(struct dsad_config *c) {
        if (!c)
                return;
        free(c->store);
        *c = (struct dsad_config){};
}

int dsad_config_load(const char *path, struct dsad_config *c) {
        struct parse_state p = { .path = path, .next_lineno = 1 };
        int r;

        if (!path || !c)
                return -EINVAL;
        p.f = fopen(path, "re");
        if (!p.f)
                return -errno;

        /* Parse into a copy so a bad file leaves the running configuration alone. */
        p.c = *c;
        p.c.store = c->store ? strdup(c->store) : NULL;
        if (c->store && !p.c.store) {
                fclose(p.f);
                return -ENOMEM;
        }

        r = ini_parse_stream(reader, &p, handler, &p);
        fclose(p.f);
        if (r > 0 && p.error == 0) {
                dsad_log(LOG_ERR, "%s:%d: syntax error (expected [section] or key = value)", path, r);
                p.error = -EINVAL;
        } else if (r < 0 && p.error == 0)
                p.error = -ENOMEM;
        if (p.error < 0) {
                dsad_config_clear(&p.c);
                return p.error;
        }

        dsad_config_clear(c);
        *c = p.c;
        return 0;
}
