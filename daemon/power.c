/* Power and load readers (power.h): RAPL package energy from powercap, CPU pressure, the
 * machine's CPU time from /proc/stat and this process's CPU time, each read from text the kernel
 * writes under a replaceable root; and the power meter that turns successive readings into
 * watts per interval. The files are outside bytes: every number is parsed by hand (no strtoull,
 * which skips spaces, accepts signs and saturates; no strtod, which follows the locale) and
 * anything else is -EBADMSG. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/io-util.h"
#include "basic/macro.h"
#include "power.h"

/* "18446744073709551615\n" is 21 bytes; a file that fills the buffer is not a kernel number. */
#define NUMBER_FILE_MAX 32u
/* /proc/pressure/cpu is about 110 bytes; /proc/stat is read only as far as its first line. */
#define TEXT_FILE_MAX 4096u

#define FIT_MIN_SAMPLES 20u
#define FIT_MIN_SPREAD_CORES 0.5
/* The share of the watts' variance the line must explain: busy cores drive a real package's
 * power, so a fit that explains less is noise (another load's power, a counter that does not
 * follow the CPU) and its slope, however small, would price every request near zero. */
#define FIT_MIN_R2 0.5

/* Reads path (relative to dirfd) into buf, NUL-terminated. A file that fills the buffer is
 * -EBADMSG, unless prefix is set: then its first size - 1 bytes are all the caller wants.
 * Embedded NULs are -EBADMSG: nothing the kernel writes here has them. */
static int read_text_at(int dirfd, const char *path, char *buf, size_t size, bool prefix) {
        _cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
        ssize_t k;
        size_t n;

        if (fd < 0)
                return -errno;
        k = dsa_read_full(fd, buf, size - 1);
        if (k < 0)
                return (int) k;
        n = (size_t) k;
        if (n == size - 1 && !prefix)
                return -EBADMSG;
        buf[n] = 0;
        return strlen(buf) == n ? 0 : -EBADMSG;
}

/* rel (starting with '/') under root; NULL, "" and "/" are the real system ("//proc" is "/proc"). */
static int read_text_under(const char *root, const char *rel, char *buf, size_t size, bool prefix) {
        char path[PATH_MAX];

        if (snprintf(path, sizeof path, "%s%s", root ?: "", rel) >= (int) sizeof path)
                return -ENAMETOOLONG;
        return read_text_at(AT_FDCWD, path, buf, size, prefix);
}

/* Decimal digits at p; returns the first byte after them, or NULL for no digit or overflow. */
static const char *parse_u64(const char *p, uint64_t *ret) {
        const char *s = p;
        uint64_t v = 0;

        for (; *p >= '0' && *p <= '9'; p++)
                if (__builtin_mul_overflow(v, 10u, &v) || __builtin_add_overflow(v, (uint64_t) (*p - '0'), &v))
                        return NULL;
        if (p == s)
                return NULL;
        *ret = v;
        return p;
}

/* "19.75": the kernel's fixed point with two decimals (LOAD_INT "." LOAD_FRAC "%02lu"). */
static const char *parse_centi(const char *p, double *ret) {
        uint64_t ip;

        p = parse_u64(p, &ip);
        if (!p || p[0] != '.' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9')
                return NULL;
        *ret = (double) ip + (p[1] - '0') / 10.0 + (p[2] - '0') / 100.0;
        return p + 3;
}

static const char *skip_prefix(const char *p, const char *prefix) {
        size_t n = strlen(prefix);

        return p && strncmp(p, prefix, n) == 0 ? p + n : NULL;
}

/* A sysfs attribute holding one decimal number <= max and a newline. */
static int read_u64_at(int dirfd, const char *path, uint64_t max, uint64_t *ret) {
        char buf[NUMBER_FILE_MAX];
        const char *end;
        uint64_t v;
        int r;

        r = read_text_at(dirfd, path, buf, sizeof buf, false);
        if (r < 0)
                return r;
        end = parse_u64(buf, &v);
        if (!end || (*end != 0 && strcmp(end, "\n") != 0) || v > max)
                return -EBADMSG;
        *ret = v;
        return 0;
}

/* ---- RAPL */
struct rapl_zone {
        int fd;           /* the zone's folder */
        uint64_t max_uj;  /* the counter runs 0..max_uj, then wraps to 0 */
        uint64_t last_uj; /* the reading accounted for so far */
        uint64_t next_uj; /* dsad_rapl_read()'s reading before it commits them all */
};

struct dsad_rapl {
        struct rapl_zone *zones;
        unsigned n_zones;
        uint64_t total_uj;
};

struct dsad_rapl *dsad_rapl_free(struct dsad_rapl *rapl) {
        if (!rapl)
                return NULL;
        for (unsigned i = 0; i < rapl->n_zones; i++)
                close(rapl->zones[i].fd);
        free(rapl->zones);
        free(rapl);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsad_rapl *, dsad_rapl_free);

static inline void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

/* "intel-rapl:N" exactly: not the control type folder "intel-rapl", not a subzone
 * "intel-rapl:N:M", not "intel-rapl-mmio:N" (a second view of the same package). */
static bool rapl_zone_dir(const char *name) {
        uint64_t n;
        const char *p = parse_u64(skip_prefix(name, "intel-rapl:") ?: "", &n);

        return p && *p == 0;
}

/* Adds the zone in folder name of dir when it is a package; psys (the whole platform,
 * packages included) and zones without a name are skipped. */
static int rapl_zone_add(struct dsad_rapl *rapl, DIR *dir, const char *name) {
        struct rapl_zone z = { .fd = -EBADF }, *zones;
        _cleanup_close_ int fd = openat(dirfd(dir), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        char kind[64];
        int r;

        if (fd < 0)
                return -errno;
        r = read_text_at(fd, "name", kind, sizeof kind, true);
        if (r == -ENOENT || (r >= 0 && !skip_prefix(kind, "package")))
                return 0;
        if (r < 0)
                return r;
        r = read_u64_at(fd, "max_energy_range_uj", UINT64_MAX, &z.max_uj);
        if (r >= 0 && z.max_uj == 0)
                r = -EBADMSG;
        if (r >= 0)
                r = read_u64_at(fd, "energy_uj", z.max_uj, &z.last_uj);
        if (r < 0)
                return r;
        zones = reallocarray(rapl->zones, rapl->n_zones + 1, sizeof *zones);
        if (!zones)
                return -ENOMEM;
        rapl->zones = zones;
        z.fd = TAKE_FD(fd);
        rapl->zones[rapl->n_zones++] = z;
        return 0;
}

int dsad_rapl_open(const char *root, struct dsad_rapl **ret) {
        _cleanup_(dsad_rapl_freep) struct dsad_rapl *rapl = NULL;
        _cleanup_(closedirp) DIR *dir = NULL;
        char path[PATH_MAX];
        struct dirent *de;
        int r;

        if (!ret)
                return -EINVAL;
        if (snprintf(path, sizeof path, "%s/sys/class/powercap", root ?: "") >= (int) sizeof path)
                return -ENAMETOOLONG;
        dir = opendir(path);
        if (!dir)
                return -errno;
        rapl = calloc(1, sizeof *rapl);
        if (!rapl)
                return -ENOMEM;
        while ((errno = 0, de = readdir(dir))) {
                if (!rapl_zone_dir(de->d_name))
                        continue;
                r = rapl_zone_add(rapl, dir, de->d_name);
                if (r < 0)
                        return r;
        }
        if (errno != 0)
                return -errno;
        if (rapl->n_zones == 0)
                return -ENOENT;
        *ret = TAKE_PTR(rapl);
        return 0;
}

int dsad_rapl_read(struct dsad_rapl *rapl, uint64_t *ret_uj) {
        uint64_t total;
        int r;

        if (!rapl || !ret_uj)
                return -EINVAL;
        total = rapl->total_uj;
        for (unsigned i = 0; i < rapl->n_zones; i++) {
                struct rapl_zone *z = &rapl->zones[i];
                uint64_t now, delta;

                r = read_u64_at(z->fd, "energy_uj", z->max_uj, &now);
                if (r < 0)
                        return r;
                /* Both readings are <= max_uj, so max_uj - last_uj cannot wrap. */
                if (now >= z->last_uj)
                        delta = now - z->last_uj;
                else if (__builtin_add_overflow(z->max_uj - z->last_uj, now, &delta) ||
                         __builtin_add_overflow(delta, 1u, &delta))
                        return -EOVERFLOW;
                if (__builtin_add_overflow(total, delta, &total))
                        return -EOVERFLOW;
                z->next_uj = now;
        }
        for (unsigned i = 0; i < rapl->n_zones; i++)
                rapl->zones[i].last_uj = rapl->zones[i].next_uj;
        rapl->total_uj = total;
        *ret_uj = total;
        return 0;
}

unsigned dsad_rapl_n_zones(const struct dsad_rapl *rapl) {
        return rapl ? rapl->n_zones : 0;
}

/* ---- Load */

/* "some avg10=0.00 avg60=5.31 avg300=19.75 total=10919042869" with kind "some". */
static int psi_line(const char *line, const char *kind, double *ret_avg10, uint64_t *ret_total) {
        static const char *const avgs[] = { " avg10=", " avg60=", " avg300=" };
        const char *p = skip_prefix(line, kind);
        double avg[ELEMENTSOF(avgs)];
        uint64_t total;

        for (size_t i = 0; i < ELEMENTSOF(avgs); i++) {
                p = skip_prefix(p, avgs[i]);
                p = p ? parse_centi(p, &avg[i]) : NULL;
        }
        p = skip_prefix(p, " total=");
        p = p ? parse_u64(p, &total) : NULL;
        if (!p || *p != 0)
                return -EBADMSG;
        *ret_avg10 = avg[0];
        *ret_total = total;
        return 0;
}

int dsad_psi_cpu_read(const char *root, double *ret_some_avg10, uint64_t *ret_some_total_usec) {
        char buf[TEXT_FILE_MAX], *full, *end;
        double avg10, full_avg10;
        uint64_t total, full_total;
        int r;

        r = read_text_under(root, "/proc/pressure/cpu", buf, sizeof buf, false);
        if (r < 0)
                return r;
        /* "some", then "full" (Linux >= 5.13), each ending in a newline; nothing else. */
        full = strchr(buf, '\n');
        if (!full)
                return -EBADMSG;
        *full++ = 0;
        r = psi_line(buf, "some", &avg10, &total);
        if (r < 0)
                return r;
        if (*full) {
                end = strchr(full, '\n');
                if (!end || end[1] != 0)
                        return -EBADMSG;
                *end = 0;
                r = psi_line(full, "full", &full_avg10, &full_total);
                if (r < 0)
                        return r;
        }
        if (ret_some_avg10)
                *ret_some_avg10 = avg10;
        if (ret_some_total_usec)
                *ret_some_total_usec = total;
        return 0;
}

static int ticks_to_usec(uint64_t ticks, uint64_t hz, uint64_t *ret) {
        uint64_t whole;

        if (__builtin_mul_overflow(ticks / hz, 1000000u, &whole) ||
            __builtin_add_overflow(whole, ticks % hz * 1000000u / hz, ret))
                return -EOVERFLOW;
        return 0;
}

int dsad_proc_stat_read(const char *root, uint64_t *ret_busy_usec, uint64_t *ret_total_usec) {
        enum { USER, NICE, SYSTEM, IDLE, IOWAIT, IRQ, SOFTIRQ, STEAL, N_NEEDED };
        uint64_t busy = 0, idle = 0, total, busy_usec, total_usec;
        long hz = sysconf(_SC_CLK_TCK);
        char buf[TEXT_FILE_MAX], *nl;
        const char *p;
        unsigned n = 0;
        int r;

        if (hz <= 0)
                return -EINVAL;
        r = read_text_under(root, "/proc/stat", buf, sizeof buf, true);
        if (r < 0)
                return r;
        nl = strchr(buf, '\n');
        if (!nl)
                return -EBADMSG;
        *nl = 0;
        /* "cpu  user nice system idle iowait irq softirq steal guest guest_nice": guest and
         * guest_nice, and any field a later kernel adds, must be numbers but are not added. */
        for (p = skip_prefix(buf, "cpu "); p && *p; n++) {
                uint64_t v, *sum = n == IDLE || n == IOWAIT ? &idle : &busy;

                while (*p == ' ')
                        p++;
                p = parse_u64(p, &v);
                if (!p || (*p != ' ' && *p != 0))
                        return -EBADMSG;
                if (n < N_NEEDED && __builtin_add_overflow(*sum, v, sum))
                        return -EOVERFLOW;
        }
        if (!p || n < N_NEEDED)
                return -EBADMSG;
        if (__builtin_add_overflow(busy, idle, &total))
                return -EOVERFLOW;
        r = ticks_to_usec(busy, (uint64_t) hz, &busy_usec);
        if (r >= 0)
                r = ticks_to_usec(total, (uint64_t) hz, &total_usec);
        if (r < 0)
                return r;
        if (ret_busy_usec)
                *ret_busy_usec = busy_usec;
        if (ret_total_usec)
                *ret_total_usec = total_usec;
        return 0;
}

int dsad_process_cpu_usec(uint64_t *ret) {
        struct timespec ts;

        if (!ret)
                return -EINVAL;
        if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) < 0)
                return -errno;
        *ret = (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
        return 0;
}

/* ---- Power meter */

/* A cumulative counter's previous reading; ok is false where that read failed (or before the
 * first), and the next interval leaves the counter out. */
struct counter {
        bool ok;
        uint64_t value;
};

struct dsad_power_meter {
        char *root;
        struct dsad_rapl *rapl;
        int rapl_status;
        int (*cpu_fn)(uint64_t *ret_usec, void *userdata);
        void *cpu_userdata;

        double core_watts, idle_watts;
        bool calibrated;
        /* Least squares of package watts (y) on busy cores (x) as running means and centred
         * sums (Welford), which stay accurate where raw sums of squares would cancel. */
        unsigned n;
        double mean_x, mean_y, sxx, sxy, syy, min_x, max_x;

        bool primed;
        uint64_t last_usec;
        struct counter cpu, busy, energy;
};

static int process_cpu_source(uint64_t *ret_usec, void *userdata) {
        return dsad_process_cpu_usec(ret_usec);
}

struct dsad_power_meter *dsad_power_meter_free(struct dsad_power_meter *m) {
        if (!m)
                return NULL;
        dsad_rapl_free(m->rapl);
        free(m->root);
        free(m);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsad_power_meter *, dsad_power_meter_free);

int dsad_power_meter_new(const char *root, double core_watts, double idle_watts, struct dsad_power_meter **ret) {
        _cleanup_(dsad_power_meter_freep) struct dsad_power_meter *m = NULL;

        if (!ret || !isfinite(core_watts) || !isfinite(idle_watts) || core_watts < 0 || idle_watts < 0)
                return -EINVAL;
        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->root = strdup(root ?: "");
        if (!m->root)
                return -ENOMEM;
        m->rapl_status = dsad_rapl_open(m->root, &m->rapl);
        if (m->rapl_status == -ENOMEM)
                return -ENOMEM;
        m->cpu_fn = process_cpu_source;
        m->core_watts = core_watts;
        m->idle_watts = idle_watts;
        *ret = TAKE_PTR(m);
        return 0;
}

void dsad_power_meter_set_cpu_source(struct dsad_power_meter *m, int (*fn)(uint64_t *ret_usec, void *userdata),
                                     void *userdata) {
        if (!m)
                return;
        m->cpu_fn = fn ?: process_cpu_source;
        m->cpu_userdata = fn ? userdata : NULL;
        m->cpu.ok = false;
}

int dsad_power_meter_rapl_status(const struct dsad_power_meter *m) {
        return m ? m->rapl_status : -EINVAL;
}

/* The counter's rate (µs or µJ per second -> cores or watts) since its previous reading, then
 * keeps this one. NAN when either read failed (r < 0) or the counter went back (a CPU taken
 * offline drops its share of /proc/stat). */
static double counter_rate(struct counter *c, int r, uint64_t now, double dt) {
        double v = c->ok && r >= 0 && now >= c->value ? (double) (now - c->value) / 1e6 / dt : NAN;

        c->ok = r >= 0;
        c->value = now;
        return v;
}

static void fit_add(struct dsad_power_meter *m, double x, double y) {
        double dx = x - m->mean_x, dy = y - m->mean_y, core;

        m->n++;
        m->mean_x += dx / m->n;
        m->mean_y += dy / m->n;
        m->sxx += dx * (x - m->mean_x);
        m->sxy += dx * (y - m->mean_y);
        m->syy += dy * (y - m->mean_y);
        m->min_x = m->n == 1 ? x : MIN(m->min_x, x);
        m->max_x = m->n == 1 ? x : MAX(m->max_x, x);
        if (m->n < FIT_MIN_SAMPLES || m->max_x - m->min_x < FIT_MIN_SPREAD_CORES)
                return;
        core = m->sxy / m->sxx; /* sxx > 0: the x values spread */
        /* r^2 = sxy^2 / (sxx syy) >= FIT_MIN_R2, without the division (syy may be 0) */
        if (core > 0 && isfinite(core) && m->sxy * m->sxy >= FIT_MIN_R2 * m->sxx * m->syy) {
                m->core_watts = core;
                m->idle_watts = m->mean_y - core * m->mean_x;
                m->calibrated = true;
        }
}

int dsad_power_meter_sample(struct dsad_power_meter *m, uint64_t now_usec, struct dsad_power_sample *ret) {
        uint64_t cpu = 0, busy = 0, energy = 0;
        struct dsad_power_sample s = {};
        double dt;
        int r;

        if (!m || !ret || (m->primed && now_usec <= m->last_usec))
                return -EINVAL;
        dt = (double) (now_usec - m->last_usec) / 1e6;
        r = m->cpu_fn(&cpu, m->cpu_userdata);
        s.dsad_cores = counter_rate(&m->cpu, r, cpu, dt);
        r = dsad_proc_stat_read(m->root, &busy, NULL);
        s.busy_cores = counter_rate(&m->busy, r, busy, dt);
        r = m->rapl ? dsad_rapl_read(m->rapl, &energy) : m->rapl_status;
        s.package_watts = counter_rate(&m->energy, r, energy, dt);
        s.measured = isfinite(s.package_watts);
        m->last_usec = now_usec;
        if (!m->primed) {
                m->primed = true;
                return -EAGAIN;
        }

        if (!m->calibrated && s.measured && isfinite(s.busy_cores))
                fit_add(m, s.busy_cores, s.package_watts);
        s.calibrated = m->calibrated;
        s.core_watts = m->core_watts;
        s.idle_watts = m->idle_watts;
        s.dsad_watts = m->core_watts * s.dsad_cores;
        *ret = s;
        return 0;
}
