/* dsad's power and load readers (daemon/power.c) on fake sysfs/procfs trees in a temp folder:
 * RAPL package zones summed (subzones, psys, intel-rapl-mmio and the control type folder
 * skipped), counter wraps, garbage refused without moving the state, absent and unreadable
 * zones; PSI and /proc/stat parsing; and the power meter with an injected CPU-time source: the
 * modelled watts, absent sources as NAN, and the once-only least-squares fit of package power
 * on busy cores, which must land on the true line and then never move. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "power.h"

#define PC "sys/class/powercap/"

/* ---- fake trees */
static char root[256];

static const char *at(const char *rel) {
        static char buf[4][512];
        static unsigned k;
        char *p = buf[k++ % 4];

        snprintf(p, sizeof buf[0], "%s/%s", root, rel);
        return p;
}

static void put_bytes(const char *rel, const char *data, size_t n) {
        char path[512];
        int fd;

        snprintf(path, sizeof path, "%s", at(rel));
        for (char *s = strchr(path + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = 0;
                assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
                *s = '/';
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, n), (ssize_t) n);
        close(fd);
}

static void put(const char *rel, const char *fmt, ...) {
        char buf[8192];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        put_bytes(rel, buf, strlen(buf));
}

static void zone(const char *dir, const char *name, uint64_t max, uint64_t uj) {
        char rel[256];

        snprintf(rel, sizeof rel, PC "%s/name", dir);
        put(rel, "%s\n", name);
        snprintf(rel, sizeof rel, PC "%s/max_energy_range_uj", dir);
        put(rel, "%llu\n", (unsigned long long) max);
        snprintf(rel, sizeof rel, PC "%s/energy_uj", dir);
        put(rel, "%llu\n", (unsigned long long) uj);
}

static void energy(const char *dir, uint64_t uj) {
        char rel[256];

        snprintf(rel, sizeof rel, PC "%s/energy_uj", dir);
        put(rel, "%llu\n", (unsigned long long) uj);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int setup(void **state) {
        const char *tmp = getenv("TMPDIR");

        snprintf(root, sizeof root, "%s/test-power-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
        return nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static uint64_t hz(void) {
        return (uint64_t) sysconf(_SC_CLK_TCK);
}

/* ---- RAPL */
static void test_rapl_sum_and_wrap(void **state) {
        struct dsad_rapl *r = NULL;
        uint64_t uj = 1;

        zone("intel-rapl:0", "package-0", 1000000, 990000);
        zone("intel-rapl:5", "package-1", 262143328850, 100); /* N need not be contiguous */
        zone("intel-rapl:0:0", "core", 5000, 100);            /* subzones are inside the package, */
        zone("intel-rapl:5:0", "package-1", 5000, 100);       /* whatever they are named */
        zone("intel-rapl:1", "psys", 262143328850, 7);        /* the platform, packages included */
        zone("intel-rapl-mmio:0", "package-0", 262143328850, 7);
        put(PC "intel-rapl/enabled", "1\n");                  /* the control type folder */

        assert_int_equal(dsad_rapl_open(root, &r), 0);
        assert_int_equal(dsad_rapl_n_zones(r), 2);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 0);

        energy("intel-rapl:0", 995000);
        energy("intel-rapl:5", 1100);
        energy("intel-rapl:0:0", 4000);
        energy("intel-rapl:5:0", 4000);
        energy("intel-rapl:1", 9999999);
        energy("intel-rapl-mmio:0", 9999999);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 6000);

        /* package-0 wraps: 1000000 + 1 - 995000 + 500 */
        energy("intel-rapl:0", 500);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 6000 + 5501);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 11501);
        /* a wrap that lands on 0, and a reading at exactly the maximum */
        energy("intel-rapl:0", 1000000);
        energy("intel-rapl:5", 262143328850);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 11501 + 999500 + 262143327750);
        energy("intel-rapl:0", 0);
        energy("intel-rapl:5", 0);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 11501 + 999500 + 262143327750 + 2);
        assert_null(dsad_rapl_free(r));
}

static void test_rapl_garbage(void **state) {
        static const struct {
                const char *text;
                size_t len;
        } bad[] = {
#define T(s) { s, sizeof(s) - 1 }
                T(""), T("\n"), T("12x\n"), T("-5\n"), T(" 5\n"), T("+5\n"), T("5\n\n"), T("5 \n"),
                T("0x10\n"), T("18446744073709551616\n"), T("1\0002\n"), T("5\r\n"),
                T("1000001\n"), /* above max_energy_range_uj */
                T("1111111111111111111111111111111111111111\n"),
#undef T
        };
        struct dsad_rapl *r = NULL, *r2 = (struct dsad_rapl *) 0x1;
        uint64_t uj = 0;

        zone("intel-rapl:0", "package-0", 1000000, 1000);
        zone("intel-rapl:1", "package-1", 1000000, 2000);
        assert_int_equal(dsad_rapl_open(root, &r), 0);

        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                uint64_t got = 12345;

                /* package-0 moved on, package-1 is garbage: neither may be taken. */
                energy("intel-rapl:0", 1000 + 100 * (i + 1));
                put_bytes(PC "intel-rapl:1/energy_uj", bad[i].text, bad[i].len);
                if (dsad_rapl_read(r, &got) != -EBADMSG || got != 12345)
                        fail_msg("bad text #%zu accepted (got %llu)", i, (unsigned long long) got);
        }
        /* the whole gap is accounted for once, at the next good read */
        energy("intel-rapl:1", 2007);
        assert_int_equal(dsad_rapl_read(r, &uj), 0);
        assert_int_equal(uj, 100 * (sizeof bad / sizeof bad[0]) + 7);
        dsad_rapl_free(r);

        /* garbage at open, and a counter range of 0 */
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                put_bytes(PC "intel-rapl:1/energy_uj", bad[i].text, bad[i].len);
                assert_int_equal(dsad_rapl_open(root, &r2), -EBADMSG);
        }
        energy("intel-rapl:1", 0);
        put(PC "intel-rapl:1/max_energy_range_uj", "0\n");
        assert_int_equal(dsad_rapl_open(root, &r2), -EBADMSG);
        put(PC "intel-rapl:1/max_energy_range_uj", "lots\n");
        assert_int_equal(dsad_rapl_open(root, &r2), -EBADMSG);
        assert_ptr_equal(r2, (struct dsad_rapl *) 0x1);
}

static void test_rapl_absent(void **state) {
        struct dsad_rapl *r = (struct dsad_rapl *) 0x1;
        uint64_t uj = 1;

        assert_int_equal(dsad_rapl_open(root, &r), -ENOENT);
        /* only what must not be counted */
        zone("intel-rapl:0:0", "core", 5000, 1);
        zone("intel-rapl:1", "psys", 5000, 1);
        zone("intel-rapl-mmio:0", "package-0", 5000, 1);
        zone("intel-rapl:x", "package-0", 5000, 1);
        zone("intel-rapl:", "package-0", 5000, 1);
        assert_int_equal(dsad_rapl_open(root, &r), -ENOENT);
        assert_ptr_equal(r, (struct dsad_rapl *) 0x1);
        assert_int_equal(dsad_rapl_open(root, NULL), -EINVAL);
        assert_int_equal(dsad_rapl_read(NULL, &uj), -EINVAL);
        assert_int_equal(dsad_rapl_n_zones(NULL), 0);
        assert_null(dsad_rapl_free(NULL));
}

/* Runs in a child without the right to read energy_uj (as root: uid/gid 65534). */
static int eacces_child(void) {
        struct dsad_rapl *r = NULL;
        struct dsad_power_meter *m = NULL;
        int k;

        if (access(at(PC "intel-rapl:0/max_energy_range_uj"), R_OK) < 0) {
                fprintf(stderr, "the temp folder is not readable after dropping privileges\n");
                return 77;
        }
        k = dsad_rapl_open(root, &r);
        if (k != -EACCES) {
                fprintf(stderr, "dsad_rapl_open: %d, expected -EACCES\n", k);
                return 1;
        }
        if (dsad_power_meter_new(root, 10, 5, &m) < 0 || dsad_power_meter_rapl_status(m) != -EACCES) {
                fprintf(stderr, "meter's RAPL status: %d\n", dsad_power_meter_rapl_status(m));
                return 1;
        }
        dsad_power_meter_free(m);
        return 0;
}

static void test_rapl_eacces(void **state) {
        int status, fd;
        pid_t pid;

        zone("intel-rapl:0", "package-0", 1000000, 1000);
        assert_int_equal(chmod(root, 0755), 0);
        assert_int_equal(chmod(at(PC "intel-rapl:0/energy_uj"), 0400), 0);
        if (geteuid() != 0) {
                assert_int_equal(chmod(at(PC "intel-rapl:0/energy_uj"), 0), 0);
                fd = open(at(PC "intel-rapl:0/energy_uj"), O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                        close(fd);
                        print_message("SKIP: neither root nor denied by a file mode (capabilities?)\n");
                        skip();
                }
                assert_int_equal(eacces_child(), 0);
                return;
        }
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
                    setresuid(65534, 65534, 65534) < 0) {
                        fprintf(stderr, "cannot drop to uid/gid 65534: %m\n");
                        _exit(77);
                }
                _exit(eacces_child());
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77) {
                print_message("SKIP: the -EACCES check could not drop privileges\n");
                skip();
        }
        assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- PSI, /proc/stat, process CPU time */
static void test_psi(void **state) {
        static const char *const bad[] = {
                "", "\n", "some avg10=1.25 avg60=5.31 avg300=19.75\n",
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\nsome avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                "some avg10=1.25 avg60=5.31 avg300=19.75 total=1\nfull avg10=x avg60=0.00 avg300=0.00 total=0\n",
                "some avg10=1,25 avg60=5.31 avg300=19.75 total=1\n",
                "some  avg10=1.25 avg60=5.31 avg300=19.75 total=1\n",
                "some avg10=1.25 avg60=5.31 avg300=19.75 total=1",
                "some avg10=1.25 avg60=5.31 avg300=19.75 total=1 \n",
                "some avg10=1.25 avg60=5.31 avg300=19.75 total=-1\n",
                "some avg10=.5 avg60=5.31 avg300=19.75 total=1\n",
                "some avg10=1. avg60=5.31 avg300=19.75 total=1\n",
                "some avg60=5.31 avg10=1.25 avg300=19.75 total=1\n",
                "some avg10=1.25 avg60=5.31 avg300=19.75 total=1\n\n",
                "some avg10=1.25 avg60=5.31 avg300=19.75 total=99999999999999999999\n",
                ("some avg10=1.25 avg60=5.31 avg300=19.75 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                 "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"), /* two full lines, one string */
        };
        double avg = -1;
        uint64_t total = 1;

        assert_int_equal(dsad_psi_cpu_read(root, &avg, &total), -ENOENT);
        put("proc/pressure/cpu", "some avg10=1.25 avg60=5.31 avg300=19.75 total=10919042869\n"
                                 "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        assert_int_equal(dsad_psi_cpu_read(root, &avg, &total), 0);
        assert_true(avg == 1.25);
        assert_int_equal(total, 10919042869u);
        put("proc/pressure/cpu", "some avg10=100.00 avg60=5.31 avg300=19.75 total=42\n");
        assert_int_equal(dsad_psi_cpu_read(root, &avg, NULL), 0);
        assert_int_equal(dsad_psi_cpu_read(root, NULL, &total), 0);
        assert_true(avg == 100.0);
        assert_int_equal(total, 42);
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                put("proc/pressure/cpu", "%s", bad[i]);
                if (dsad_psi_cpu_read(root, &avg, &total) != -EBADMSG || avg != 100.0 || total != 42)
                        fail_msg("malformed PSI #%zu accepted: %s", i, bad[i]);
        }
}

static void test_proc_stat(void **state) {
        static const char *const bad[] = {
                "", "cpu0 1 2 3 4 5 6 7 8\n", "cpu  1 2 3 4 5 6 7\n", "cpu  1 2 x 4 5 6 7 8\n",
                "cpu  1 2 3 4 5 6 7 8", "cpu  1 2 3 4 5 6 7 8 \n", "cpu  1 2 -3 4 5 6 7 8\n",
                "cpu\n", "cpu 99999999999999999999 2 3 4 5 6 7 8\n", "intr 1 2 3\ncpu  1 2 3 4 5 6 7 8\n",
        };
        uint64_t busy = 1, total = 1, h = hz();
        char line[5000];

        assert_int_equal(dsad_proc_stat_read(root, &busy, &total), -ENOENT);
        /* guest (40) and guest_nice (3) are already inside user and nice */
        put("proc/stat", "cpu  100 20 30 1000 50 5 5 2 40 3\ncpu0 100 20 30 1000 50 5 5 2 40 3\nintr 7\n");
        assert_int_equal(dsad_proc_stat_read(root, &busy, &total), 0);
        assert_int_equal(busy, 162 * 1000000 / h);
        assert_int_equal(total, 1212 * 1000000 / h);
        put("proc/stat", "cpu  1 2 3 4 5 6 7 8\n");
        assert_int_equal(dsad_proc_stat_read(root, &busy, NULL), 0);
        assert_int_equal(busy, 27 * 1000000 / h);
        assert_int_equal(dsad_proc_stat_read(root, NULL, &total), 0);
        assert_int_equal(total, 36 * 1000000 / h);
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                put("proc/stat", "%s", bad[i]);
                if (dsad_proc_stat_read(root, &busy, &total) != -EBADMSG || busy != 27 * 1000000 / h)
                        fail_msg("malformed /proc/stat #%zu accepted: %s", i, bad[i]);
        }
        put("proc/stat", "cpu  18446744073709551615 1 0 0 0 0 0 0\n");
        assert_int_equal(dsad_proc_stat_read(root, &busy, &total), -EOVERFLOW);
        memset(line, '1', sizeof line - 1);
        line[sizeof line - 1] = 0;
        memcpy(line, "cpu  ", 5);
        put("proc/stat", "%s\n", line); /* no newline in the first 4 KiB */
        assert_int_equal(dsad_proc_stat_read(root, &busy, &total), -EBADMSG);
        assert_int_equal(busy, 27 * 1000000 / h);

        /* the real one, where there is one */
        if (dsad_proc_stat_read(NULL, &busy, &total) == 0)
                assert_true(busy > 0 && busy <= total);
}

static uint64_t rusage_usec(void) {
        struct rusage ru;

        assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
        return (uint64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
               (uint64_t) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void test_process_cpu(void **state) {
        uint64_t a, b, ra, rb, now;
        volatile double x = 1;

        assert_int_equal(dsad_process_cpu_usec(NULL), -EINVAL);
        ra = rusage_usec();
        assert_int_equal(dsad_process_cpu_usec(&a), 0);
        do {
                for (int i = 0; i < 100000; i++)
                        x = x * 1.0000001 + 1e-9;
                assert_int_equal(dsad_process_cpu_usec(&now), 0);
        } while (now - a < 50000);
        assert_int_equal(dsad_process_cpu_usec(&b), 0);
        rb = rusage_usec();
        assert_true(b - a >= 50000);
        /* getrusage counts the same time; allow a scheduler tick either way */
        if (llabs((long long) (b - a) - (long long) (rb - ra)) > 20000)
                fail_msg("process CPU %llu us, getrusage %llu us", (unsigned long long) (b - a),
                         (unsigned long long) (rb - ra));
}

/* ---- power meter */
struct fake_cpu {
        uint64_t usec;
        int error;
};

static int fake_cpu_source(uint64_t *ret_usec, void *userdata) {
        struct fake_cpu *c = userdata;

        if (c->error < 0)
                return c->error;
        *ret_usec = c->usec;
        return 0;
}

#define DT_USEC 250000u

static void put_stat(uint64_t busy_ticks) {
        put("proc/stat", "cpu  %llu 0 0 100000 0 0 0 0 0 0\n", (unsigned long long) busy_ticks);
}

/* busy cores over DT_USEC for a tick delta, as dsad_proc_stat_read() converts ticks */
static double cores_of_ticks(uint64_t ticks) {
        return (double) (ticks * 1000000 / hz()) / 1e6 / (DT_USEC / 1e6);
}

static void test_meter_model(void **state) {
        struct dsad_power_meter *m = NULL;
        struct dsad_power_sample s, untouched;
        struct fake_cpu cpu = { .usec = 1000000 }, other = { .usec = 1000000000000 };
        uint64_t t = 5000000, ticks = 1000, h = hz();

        assert_int_equal(dsad_power_meter_new(root, NAN, 5, &m), -EINVAL);
        assert_int_equal(dsad_power_meter_new(root, 10, -1, &m), -EINVAL);
        assert_int_equal(dsad_power_meter_new(root, INFINITY, 5, &m), -EINVAL);
        assert_int_equal(dsad_power_meter_new(root, 10, 5, NULL), -EINVAL);
        assert_null(m);
        put_stat(ticks);
        assert_int_equal(dsad_power_meter_new(root, 10.0, 5.0, &m), 0);
        assert_int_equal(dsad_power_meter_rapl_status(m), -ENOENT);
        dsad_power_meter_set_cpu_source(m, fake_cpu_source, &cpu);

        memset(&s, 0x5a, sizeof s);
        untouched = s;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), -EAGAIN);
        assert_memory_equal(&s, &untouched, sizeof s);

        /* 0.5 CPU-seconds in 0.25 s: 2 cores, 20 W; the machine 3 cores busy */
        t += DT_USEC, cpu.usec += 500000, ticks += 3 * h / 4;
        put_stat(ticks);
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(fabs(s.dsad_cores - 2.0) < 1e-12);
        assert_true(fabs(s.dsad_watts - 20.0) < 1e-9);
        assert_true(fabs(s.busy_cores - cores_of_ticks(3 * h / 4)) < 1e-12);
        assert_true(fabs(s.busy_cores - 3.0) < 0.05);
        assert_true(isnan(s.package_watts));
        assert_false(s.measured);
        assert_false(s.calibrated);
        assert_true(s.core_watts == 10.0 && s.idle_watts == 5.0);

        /* the interval must be positive; nothing changes */
        untouched = s;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), -EINVAL);
        assert_int_equal(dsad_power_meter_sample(m, t - 1, &s), -EINVAL);
        assert_memory_equal(&s, &untouched, sizeof s);

        /* 0.1 CPU-seconds in 0.5 s */
        t += 2 * DT_USEC, cpu.usec += 100000;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(fabs(s.dsad_cores - 0.2) < 1e-12 && fabs(s.dsad_watts - 2.0) < 1e-9);
        assert_true(s.busy_cores == 0.0);

        /* a failing CPU source is absent, not zero, now and for the sample that primes it again */
        cpu.error = -EIO;
        t += DT_USEC, cpu.usec += 100000;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(isnan(s.dsad_cores) && isnan(s.dsad_watts));
        cpu.error = 0;
        t += DT_USEC, cpu.usec += 100000;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(isnan(s.dsad_cores) && isnan(s.dsad_watts));
        t += DT_USEC, cpu.usec += 250000;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(fabs(s.dsad_watts - 10.0) < 1e-9);

        /* /proc/stat gone: busy cores unknown, dsad's share still there */
        assert_int_equal(unlink(at("proc/stat")), 0);
        t += DT_USEC, cpu.usec += 250000;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(isnan(s.busy_cores));
        assert_true(fabs(s.dsad_watts - 10.0) < 1e-9);

        /* another source has another origin: its first reading only primes it */
        dsad_power_meter_set_cpu_source(m, fake_cpu_source, &other);
        t += DT_USEC;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(isnan(s.dsad_cores));
        t += DT_USEC, other.usec += 25000;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(fabs(s.dsad_cores - 0.1) < 1e-12);

        /* the default source, this process */
        dsad_power_meter_set_cpu_source(m, NULL, NULL);
        t += DT_USEC;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(isnan(s.dsad_cores));
        t += DT_USEC;
        assert_int_equal(dsad_power_meter_sample(m, t, &s), 0);
        assert_true(s.dsad_cores >= 0 && isfinite(s.dsad_cores));
        assert_null(dsad_power_meter_free(m));
        assert_null(dsad_power_meter_free(NULL));
        assert_int_equal(dsad_power_meter_rapl_status(NULL), -EINVAL);
}

/* A machine whose two packages draw idle + core * busy cores between them (3/5 and 2/5),
 * package-0 with a small counter range so it wraps during the run. */
struct sim {
        struct dsad_power_meter *m;
        struct fake_cpu cpu;
        uint64_t t, ticks, e0, e1;
        unsigned wraps;
};
#define SIM_MAX0 20000000u

static void sim_start(struct sim *x, double core_watts, double idle_watts) {
        struct dsad_power_sample s;

        *x = (struct sim) { .t = 1000000, .ticks = 5000, .e0 = 19000000, .e1 = 123 };
        zone("intel-rapl:0", "package-0", SIM_MAX0, x->e0);
        zone("intel-rapl:1", "package-1", 262143328850, x->e1);
        put_stat(x->ticks);
        assert_int_equal(dsad_power_meter_new(root, core_watts, idle_watts, &x->m), 0);
        assert_int_equal(dsad_power_meter_rapl_status(x->m), 0);
        dsad_power_meter_set_cpu_source(x->m, fake_cpu_source, &x->cpu);
        assert_int_equal(dsad_power_meter_sample(x->m, x->t, &s), -EAGAIN);
}

/* One interval of DT_USEC with k ticks of machine busy time, the packages drawing
 * idle + core * busy (+ noise watts), dsad using half a core. */
static void sim_step(struct sim *x, uint64_t k, double idle, double core, double noise,
                     struct dsad_power_sample *ret) {
        double watts = idle + core * cores_of_ticks(k) + noise;
        uint64_t uj = (uint64_t) llround(watts * DT_USEC), d0 = uj * 3 / 5;

        x->t += DT_USEC, x->ticks += k, x->cpu.usec += DT_USEC / 2;
        x->wraps += (x->e0 % (SIM_MAX0 + 1)) + d0 > SIM_MAX0;
        x->e0 += d0, x->e1 += uj - d0;
        put_stat(x->ticks);
        energy("intel-rapl:0", x->e0 % (SIM_MAX0 + 1));
        energy("intel-rapl:1", x->e1);
        assert_int_equal(dsad_power_meter_sample(x->m, x->t, ret), 0);
        assert_true(ret->measured);
        if (fabs(ret->package_watts - (double) uj / DT_USEC) > 1e-6)
                fail_msg("package %.6f W, drew %.6f W", ret->package_watts, (double) uj / DT_USEC);
}

static void test_meter_fit(void **state) {
        const double idle = 7.5, core = 11.25, noise = 1.0;
        const uint64_t h = hz(), k_one = h / 4; /* ticks of one busy core in DT_USEC */
        unsigned sign[8] = {};
        struct dsad_power_sample s;
        struct sim x;
        double fitted_core, fitted_idle;

        sim_start(&x, 10.0, 5.0);
        /* One level only, 24 samples: enough samples, no spread. Noise of +-1 W alternates per
         * level, so least squares lands on the line exactly and anything cruder does not. */
        for (unsigned i = 0; i < 24; i++) {
                sim_step(&x, k_one, idle, core, sign[0]++ % 2 ? -noise : noise, &s);
                assert_false(s.calibrated);
                assert_true(s.core_watts == 10.0 && s.idle_watts == 5.0);
                assert_true(fabs(s.dsad_watts - 5.0) < 1e-9);
        }
        /* 1.0, 1.2, 1.4 cores: a spread of 0.4 is not enough */
        for (unsigned i = 0; i < 12; i++) {
                unsigned l = i % 3;

                sim_step(&x, k_one + l * h / 20, idle, core, sign[l]++ % 2 ? -noise : noise, &s);
                assert_false(s.calibrated);
        }
        /* 1.6 cores: the spread reaches 0.6 and the fit is adopted on this very sample */
        sim_step(&x, k_one + 3 * h / 20, idle, core, 0, &s);
        assert_true(s.calibrated);
        if (fabs(s.core_watts - core) > 0.01 * core || fabs(s.idle_watts - idle) > 0.01 * idle)
                fail_msg("fit core %.4f idle %.4f, true %.4f %.4f", s.core_watts, s.idle_watts, core, idle);
        assert_true(fabs(s.dsad_watts - 0.5 * s.core_watts) < 1e-9);
        fitted_core = s.core_watts, fitted_idle = s.idle_watts;

        /* Once fitted, never refitted: a machine on another line changes nothing. */
        for (unsigned i = 0; i < 40; i++) {
                sim_step(&x, (i % 4) * h / 4, 3.0, 30.0, 0, &s);
                assert_true(s.calibrated);
                assert_true(s.core_watts == fitted_core && s.idle_watts == fitted_idle);
        }
        assert_true(x.wraps > 0);
        dsad_power_meter_free(x.m);
}

static void test_meter_fit_rules(void **state) {
        const uint64_t h = hz();
        struct dsad_power_sample s;
        unsigned measured = 0, sign[4] = {};
        struct sim x;

        /* Power falling with load: spread and samples enough, but a slope <= 0 is not adopted. */
        sim_start(&x, 10.0, 5.0);
        for (unsigned i = 0; i < 30; i++) {
                sim_step(&x, (i % 3) * h / 4, 40.0, -5.0, 0, &s);
                assert_false(s.calibrated);
                assert_true(s.core_watts == 10.0);
        }
        dsad_power_meter_free(x.m);
        teardown(state);
        setup(state);

        /* A counter that hardly follows the load: 20 W +- 3 W whatever runs, with a slope of
         * 0.5 W per core under the noise. Samples, spread and a positive slope are all there,
         * but the line explains about 0.2% of the variance: the configured model stays (a fit
         * would price a busy core at 0.5 W). */
        sim_start(&x, 10.0, 5.0);
        for (unsigned i = 0; i < 80; i++) {
                unsigned l = i % 4;

                sim_step(&x, l * h / 16, 20.0, 0.5, sign[l]++ % 2 ? -3.0 : 3.0, &s);
                assert_false(s.calibrated);
                assert_true(s.core_watts == 10.0 && s.idle_watts == 5.0);
        }
        dsad_power_meter_free(x.m);
        teardown(state);
        setup(state);

        /* Samples without RAPL are not part of the fit: the fit comes at the 20th measured one. */
        sim_start(&x, 10.0, 5.0);
        for (unsigned i = 0; measured < 20; i++) {
                if (i % 4 == 3) {
                        x.t += DT_USEC;
                        put(PC "intel-rapl:1/energy_uj", "garbage\n");
                        assert_int_equal(dsad_power_meter_sample(x.m, x.t, &s), 0);
                        assert_false(s.measured);
                        assert_true(isnan(s.package_watts));
                        assert_false(s.calibrated);
                        energy("intel-rapl:1", x.e1);
                        /* the next sample primes RAPL again */
                        x.t += DT_USEC;
                        assert_int_equal(dsad_power_meter_sample(x.m, x.t, &s), 0);
                        assert_false(s.measured);
                        continue;
                }
                sim_step(&x, (i % 3) * h / 4, 6.0, 9.0, 0, &s);
                measured++;
                assert_true(s.calibrated == (measured >= 20));
        }
        assert_true(fabs(s.core_watts - 9.0) < 0.09 && fabs(s.idle_watts - 6.0) < 0.06);
        dsad_power_meter_free(x.m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_rapl_sum_and_wrap, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rapl_garbage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rapl_absent, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rapl_eacces, setup, teardown),
                cmocka_unit_test_setup_teardown(test_psi, setup, teardown),
                cmocka_unit_test_setup_teardown(test_proc_stat, setup, teardown),
                cmocka_unit_test(test_process_cpu),
                cmocka_unit_test_setup_teardown(test_meter_model, setup, teardown),
                cmocka_unit_test_setup_teardown(test_meter_fit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_meter_fit_rules, setup, teardown),
        };

        umask(022); /* the -EACCES check reads the tree as another user */
        return cmocka_run_group_tests(tests, NULL, NULL);
}
