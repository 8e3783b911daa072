/* dsad.conf: the [daemon], [limits], [policy], [battery] and [power] sections of an INI file
 * read with inih. Unknown keys and sections are warned about and ignored, so an older dsad reads
 * a newer file; a bad value is an error that names file:line, so a typo never silently runs
 * with a default. inih does not hand the line
 * number to the handler (Debian builds it without INI_HANDLER_LINENO), so the reader below
 * counts lines itself. */
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "basic/parse-util.h"
#include "daemon.h"

#define DEFAULT_STORE "/var/lib/dsa/models"
#define DEFAULT_QUEUE_MAX 256u
#define DEFAULT_SESSIONS_PER_UID 32u
#define DEFAULT_SHM_BYTES_PER_UID (1ull << 30)
#define DEFAULT_QUEUE_SHARE 0.5

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

/* Bytes, optionally with a binary suffix K, M, G or T (1024-based). */
static int parse_bytes(const char *s, uint64_t *ret) {
        static const char suffixes[] = "KMGT";
        unsigned long long v;
        char *end;
        unsigned shift = 0;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (*end) {
                const char *x = strchr(suffixes, *end);
                if (!x || end[1])
                        return -EINVAL;
                shift = 10u * (unsigned) (x - suffixes + 1);
        }
        if (v > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = (uint64_t) v << shift;
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

static int set_string(char **field, const char *value) {
        char *s = strdup(value);
        if (!s)
                return -ENOMEM;
        free(*field);
        *field = s;
        return 0;
}

/* [policy], [battery] and [power]: man/dsad.conf.5. */
static int handle_policy(struct parse_state *p, const char *section, const char *name, const char *value) {
        static const struct {
                const char *section, *name;
                size_t offset; /* into struct dsad_policy_settings */
                double lo, hi;
        } keys[] = {
                { "policy", "latency_target_ms", offsetof(struct dsad_policy_settings, latency_target_ms), 0.001, 3.6e6 },
                { "policy", "power_budget_watts", offsetof(struct dsad_policy_settings, power_budget_w), 0, 1e5 },
                { "policy", "min_accuracy", offsetof(struct dsad_policy_settings, min_accuracy), 0, 1 },
                { "policy", "hysteresis_seconds", offsetof(struct dsad_policy_settings, hysteresis_s), 0, 3600 },
                { "policy", "core_watts", offsetof(struct dsad_policy_settings, core_watts), 0.01, 1000 },
                { "policy", "idle_watts", offsetof(struct dsad_policy_settings, idle_watts), 0, 10000 },
                { "battery", "power_budget_watts", offsetof(struct dsad_policy_settings, battery_power_budget_w), 0, 1e5 },
                { "battery", "min_accuracy", offsetof(struct dsad_policy_settings, battery_min_accuracy), 0, 1 },
                { "battery", "low_percent", offsetof(struct dsad_policy_settings, battery_low_percent), 0, 100 },
        };
        double v;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (strcmp(section, keys[i].section) == 0 && strcmp(name, keys[i].name) == 0) {
                        r = dsa_parse_double(value, keys[i].lo, keys[i].hi, &v);
                        if (r < 0)
                                dsad_log(LOG_ERR, "%s:%u: %s= wants a number from %g to %g: '%s'", p->path, p->lineno,
                                         name, keys[i].lo, keys[i].hi, value);
                        else
                                *(double *) (void *) ((char *) &p->c.policy + keys[i].offset) = v;
                        return r;
                }
        if (strcmp(section, "policy") == 0 && strcmp(name, "mode") == 0) {
                r = dsad_policy_parse_mode(value, &p->c.policy);
                if (r < 0)
                        dsad_log(LOG_ERR, "%s:%u: mode= wants adaptive or fixed:VARIANT: '%s'", p->path, p->lineno,
                                 value);
                return r;
        }
        if (strcmp(section, "policy") == 0 && strcmp(name, "tick_seconds") == 0) {
                r = dsa_parse_double(value, 0.01, 60, &p->c.tick_s);
                if (r < 0)
                        dsad_log(LOG_ERR, "%s:%u: tick_seconds= wants 0.01 to 60: '%s'", p->path, p->lineno, value);
                return r;
        }
        if (strcmp(section, "power") == 0 && strcmp(name, "bus") == 0)
                return set_string(&p->c.power_bus, value);
        if (strcmp(section, "power") == 0 && strcmp(name, "root") == 0) {
                if (value[0] != '/') {
                        dsad_log(LOG_ERR, "%s:%u: root= must be an absolute path: '%s'", p->path, p->lineno, value);
                        return -EINVAL;
                }
                return set_string(&p->c.sysfs_root, value);
        }
        dsad_log(LOG_WARNING, "%s:%u: unknown key '%s' in [%s], ignoring.", p->path, p->lineno, name, section);
        return 0;
}

/* [limits]: man/dsad.conf.5. */
static int handle_limits(struct parse_state *p, const char *name, const char *value) {
        unsigned long v;
        int r;

        if (strcmp(name, "sessions_per_uid") == 0) {
                r = parse_uint(value, 1u << 20, &v);
                if (r >= 0)
                        p->c.limits.sessions_per_uid = (unsigned) v;
                else
                        dsad_log(LOG_ERR, "%s:%u: sessions_per_uid= wants 0 (no limit) to 1048576: '%s'", p->path,
                                 p->lineno, value);
                return r;
        }
        if (strcmp(name, "shm_bytes_per_uid") == 0) {
                r = parse_bytes(value, &p->c.limits.shm_bytes_per_uid);
                if (r < 0)
                        dsad_log(LOG_ERR, "%s:%u: shm_bytes_per_uid= wants bytes, with K, M, G or T after them if "
                                 "you like (0 = no limit): '%s'", p->path, p->lineno, value);
                return r;
        }
        if (strcmp(name, "queue_share") == 0) {
                double x;
                r = dsa_parse_double(value, 0, 1, &x);
                if (r >= 0 && x == 0)
                        r = -ERANGE;
                if (r >= 0)
                        p->c.limits.queue_share = x;
                else
                        dsad_log(LOG_ERR, "%s:%u: queue_share= wants a fraction above 0, at most 1: '%s'", p->path,
                                 p->lineno, value);
                return r;
        }
        dsad_log(LOG_WARNING, "%s:%u: unknown key '%s' in [limits], ignoring.", p->path, p->lineno, name);
        return 0;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
        struct parse_state *p = user;
        unsigned long v;
        int r = 0;

        if (!name) /* a section header on its own */
                return 1;
        if (strcmp(section, "policy") == 0 || strcmp(section, "battery") == 0 || strcmp(section, "power") == 0)
                r = handle_policy(p, section, name, value);
        else if (strcmp(section, "limits") == 0)
                r = handle_limits(p, name, value);
        else if (strcmp(section, "daemon") != 0) {
                dsad_log(LOG_WARNING, "%s:%u: unknown section [%s], ignoring.", p->path, p->lineno, section);
                return 1;
        }

        else if (strcmp(name, "store") == 0) {
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
        char *s = strdup(DEFAULT_STORE), *bus = strdup("system");

        if (!s || !bus) {
                free(s);
                free(bus);
                return -ENOMEM;
        }
        dsad_config_clear(c);
        *c = (struct dsad_config){
                .store = s,
                .workers = 0,
                .idle_unload_seconds = 0,
                .queue_max = DEFAULT_QUEUE_MAX,
                .batch_max = DSAD_BATCH_MAX,
                .power_bus = bus,
                .tick_s = 0.25,
                .limits = {
                        .sessions_per_uid = DEFAULT_SESSIONS_PER_UID,
                        .shm_bytes_per_uid = DEFAULT_SHM_BYTES_PER_UID,
                        .queue_share = DEFAULT_QUEUE_SHARE,
                },
        };
        dsad_policy_settings_defaults(&c->policy);
        return 0;
}

void dsad_config_clear(struct dsad_config *c) {
        if (!c)
                return;
        free(c->store);
        free(c->power_bus);
        free(c->sysfs_root);
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
        p.c.power_bus = c->power_bus ? strdup(c->power_bus) : NULL;
        p.c.sysfs_root = c->sysfs_root ? strdup(c->sysfs_root) : NULL;
        if ((c->store && !p.c.store) || (c->power_bus && !p.c.power_bus) || (c->sysfs_root && !p.c.sysfs_root)) {
                fclose(p.f);
                dsad_config_clear(&p.c);
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
