/* dsad: options, context, run, clean up. Everything else lives in the daemon's modules. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/malloc-util.h"
#include "daemon.h"

#define DEFAULT_CONFIG "/etc/dsa/dsad.conf"

static void help(void) {
        printf("Usage: dsad [OPTION]...\n"
               "Serve transformer models to local apps over D-Bus (org.dsa.Daemon1).\n\n"
               "  -b, --bus=BUS              system, session or a D-Bus address (default: $DSA_BUS_ADDRESS,\n"
               "                             else system)\n"
               "  -s, --store=DIR            model store (default /var/lib/dsa/models)\n"
               "  -c, --config=FILE          configuration file (default " DEFAULT_CONFIG ")\n"
               "  -f, --foreground           log to stderr\n"
               "  -w, --workers=N            worker threads (0: one per core)\n"
               "  -i, --idle-unload=SECONDS  unload models unused this long (0: never)\n"
               "  -h, --help                 show this help\n"
               "  -V, --version              show the version\n\n"
               "See dsad(8) and dsad.conf(5).\n");
}

static int parse_number(const char *s, long max, long *ret) {
        char *end;
        long v;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || *end || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "bus", required_argument, NULL, 'b' },
                { "store", required_argument, NULL, 's' },
                { "config", required_argument, NULL, 'c' },
                { "foreground", no_argument, NULL, 'f' },
                { "workers", required_argument, NULL, 'w' },
                { "idle-unload", required_argument, NULL, 'i' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct dsad_options o = {
                .bus = getenv("DSA_BUS_ADDRESS"),
                .config_path = DEFAULT_CONFIG,
                .workers = -1,
                .idle_unload_seconds = -1,
        };
        bool foreground = false;
        struct dsad *d = NULL;
        long v;
        int c, r;

        dsa_malloc_keep_buffers();

        while ((c = getopt_long(argc, argv, "b:s:c:fw:i:hV", options, NULL)) >= 0)
                switch (c) {
                case 'b':
                        o.bus = optarg;
                        break;
                case 's':
                        o.store = optarg;
                        break;
                case 'c':
                        o.config_path = optarg;
                        o.config_explicit = true;
                        break;
                case 'f':
                        foreground = true;
                        break;
                case 'w':
                        if (parse_number(optarg, 4096, &v) < 0) {
                                fprintf(stderr, "dsad: --workers wants 0 to 4096, not '%s'\n", optarg);
                                return 2;
                        }
                        o.workers = (int) v;
                        break;
                case 'i':
                        if (parse_number(optarg, UINT_MAX, &v) < 0) {
                                fprintf(stderr, "dsad: --idle-unload wants seconds, not '%s'\n", optarg);
                                return 2;
                        }
                        o.idle_unload_seconds = v;
                        break;
                case 'h':
                        help();
                        return 0;
                case 'V':
                        printf("dsad %s\n", DSA_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'dsad --help'.\n");
                        return 2;
                }
        if (optind < argc) {
                fprintf(stderr, "dsad: unexpected argument '%s'; try 'dsad --help'.\n", argv[optind]);
                return 2;
        }
        if (!o.bus || !*o.bus)
                o.bus = "system";

        dsad_log_setup(foreground);
        r = dsad_new(&o, &d);
        if (r >= 0)
                r = dsad_run(d);
        dsad_free(d);
        return r < 0 ? 1 : 0;
}
