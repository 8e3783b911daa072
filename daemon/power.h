/* dsad's power and load signals, read from the kernel's text files; the adaptive policy samples
 * them on a timer. Pure readers: no libuv, no D-Bus, no logging. Every path lives under a
 * replaceable root folder, so tests run on fake trees; a root of NULL, "" or "/" is the real
 * system. Nothing here is thread-safe: a handle belongs to one thread (the loop thread in dsad).
 *
 *   dsad_rapl_*            package energy from powercap RAPL (/sys/class/powercap/intel-rapl:N)
 *   dsad_psi_cpu_read      CPU pressure stall information (/proc/pressure/cpu)
 *   dsad_proc_stat_read    the machine's busy and total CPU time (first line of /proc/stat)
 *   dsad_process_cpu_usec  this process's CPU time
 *   dsad_power_meter_*     the above combined into watts per interval: measured package power
 *                          when RAPL is readable, and dsad's share from a CPU-time model
 *                          (idle + core * busy cores) whose slope is fitted once from RAPL
 *
 * Values from sysfs and procfs are parsed strictly: anything but what the kernel writes is
 * -EBADMSG, never a guess. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* ---- RAPL energy */
struct dsad_rapl;

/* Opens every top-level powercap package zone under <root>/sys/class/powercap: folders named
 * intel-rapl:N (any N, not necessarily contiguous; AMD Zen exposes the same names) whose `name`
 * starts with "package". Subzones (intel-rapl:N:M: core, uncore, dram), the platform zone
 * ("psys", which already contains the packages) and intel-rapl-mmio:N (a second view of the
 * same package) are skipped, so nothing is counted twice. Reads every zone's
 * max_energy_range_uj and a first energy_uj, the zero point of dsad_rapl_read().
 * Returns 0 and *ret; -ENOENT: no powercap folder or no package zone; -EACCES: zones exist but
 * energy_uj is not readable (root-only since Linux 5.10, CVE-2020-8694) -- callers then fall
 * back to the CPU-time model; -EBADMSG: a value that is not a decimal number, or a
 * max_energy_range_uj of 0; -ENOMEM; other -errno from reading. */
int dsad_rapl_open(const char *root, struct dsad_rapl **ret);
/* Accepts NULL; returns NULL. */
struct dsad_rapl *dsad_rapl_free(struct dsad_rapl *r);
/* Micro-joules used by all package zones together since dsad_rapl_open(), monotonic: a zone
 * whose counter reads below its previous reading wrapped once in between, and adds
 * max_energy_range_uj + 1 - previous + now. Call more often than the counter wraps (about every
 * minute at full load on large packages is plenty). Errors (-EBADMSG for garbage or a reading
 * above max_energy_range_uj, -EOVERFLOW, -errno from reading) leave the state unchanged: no
 * zone is advanced, so the next good read accounts for the whole gap. */
int dsad_rapl_read(struct dsad_rapl *r, uint64_t *ret_uj);
/* Number of package zones summed (>= 1 for an open handle); 0 for NULL. */
unsigned dsad_rapl_n_zones(const struct dsad_rapl *r);

/* ---- Load */

/* The `some` line of <root>/proc/pressure/cpu: the share of the last 10 s in which at least one
 * runnable task waited for a CPU (percent, 0..100), and the cumulative stall time in µs. The
 * `full` line is optional (kernels before 5.13 lack it for cpu) but checked when present.
 * Returns 0; -ENOENT: the kernel has no PSI (CONFIG_PSI off); -EOPNOTSUPP: PSI compiled in but
 * disabled (psi=0); -EBADMSG: text that is not what the kernel writes (averages with exactly
 * two decimals). Either out-parameter may be NULL. */
int dsad_psi_cpu_read(const char *root, double *ret_some_avg10, uint64_t *ret_some_total_usec);

/* The aggregate `cpu` line of <root>/proc/stat, converted from USER_HZ ticks to µs:
 * busy = user + nice + system + irq + softirq + steal (guest time is already inside user;
 * idle and iowait are not busy), total = busy + idle + iowait. Needs at least the eight fields
 * up to steal (Linux >= 2.6.11); guest, guest_nice and any later field must be numbers and are
 * not added. Returns 0; -ENOENT; -EBADMSG for a malformed line; -EOVERFLOW. Either
 * out-parameter may be NULL. */
int dsad_proc_stat_read(const char *root, uint64_t *ret_busy_usec, uint64_t *ret_total_usec);

/* CPU time used by this process (all its threads) in µs, from CLOCK_PROCESS_CPUTIME_ID.
 * Returns 0 or -errno from clock_gettime(). */
int dsad_process_cpu_usec(uint64_t *ret);

/* ---- Power meter */
struct dsad_power_meter;

/* What one interval looked like. Values that could not be known are NAN, never 0. */
struct dsad_power_sample {
        double dsad_watts;    /* power attributed to dsad: core_watts * dsad_cores; NAN if dsad_cores is */
        double package_watts; /* RAPL package power over the interval; NAN without RAPL */
        double dsad_cores;    /* dsad's CPU-seconds per second over the interval; NAN if unreadable */
        double busy_cores;    /* the whole machine's busy cores (/proc/stat) over the interval; NAN if unreadable */
        bool measured;        /* package_watts came from RAPL */
        bool calibrated;      /* core_watts was fitted from RAPL (else the configured value) */
        double core_watts, idle_watts; /* the model in use */
};

/* Makes a meter over the sources under root. core_watts and idle_watts are the CPU-time power
 * model's configured coefficients: watts per busy core and package watts at idle, both finite
 * and >= 0 (anything else is -EINVAL). When RAPL opens, the meter fits
 * package = idle + core * busy_cores by least squares over its samples, once: as soon as it
 * holds >= 20 samples with both values whose busy_cores spread (max - min) is >= 0.5 core,
 * the fit's core is > 0 and the line explains at least half the watts' variance (r^2 >= 0.5),
 * it adopts both fitted coefficients and never refits. When RAPL does
 * not open (any error but -ENOMEM: see dsad_power_meter_rapl_status()), the configured values
 * stay. Returns 0 and *ret, -EINVAL, or -ENOMEM. */
int dsad_power_meter_new(const char *root, double core_watts, double idle_watts, struct dsad_power_meter **ret);
/* Accepts NULL; returns NULL. */
struct dsad_power_meter *dsad_power_meter_free(struct dsad_power_meter *m);
/* Reads every source and fills *ret for the interval since the previous call; meant for a timer
 * of about 250 ms. now_usec is CLOCK_MONOTONIC in µs, from the caller (tests pass their own
 * clock). The first call only primes the meter and returns -EAGAIN; an interval <= 0 (now_usec
 * not after the previous call's) is -EINVAL and changes nothing. A source that fails is absent
 * (NAN, measured false) for that sample and the next one, which primes it again; never zero
 * power, and never part of the fit. Returns 0 and *ret, -EAGAIN, or -EINVAL. */
int dsad_power_meter_sample(struct dsad_power_meter *m, uint64_t now_usec, struct dsad_power_sample *ret);
/* For tests: replaces the process-CPU-time source (default dsad_process_cpu_usec; fn NULL
 * restores it). fn returns 0 and *ret_usec, or -errno. The next sample re-primes dsad_cores,
 * since the new source's clock has another origin. */
void dsad_power_meter_set_cpu_source(struct dsad_power_meter *m, int (*fn)(uint64_t *ret_usec, void *userdata),
                                     void *userdata);
/* Whether RAPL is used: 0, or why not: -ENOENT (no zones), -EACCES (not readable), or the
 * error dsad_rapl_open() gave otherwise (-EBADMSG, ...). -EINVAL for NULL. */
int dsad_power_meter_rapl_status(const struct dsad_power_meter *m);
