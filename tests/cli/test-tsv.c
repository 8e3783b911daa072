/* dsactl's dataset reader (cli/tsv.c) on files written here: cli_tsv finds columns by name, drops
 * a BOM, \r and blank lines, keeps quotes literally and names file and line for a row of the
 * wrong width; cli_text_source yields the text column (and the pair) of a TSV, every line of a
 * plain file, and the files of a folder in name order, skipping hidden and empty ones. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/error.h"
#include "cli/tsv.h"

static char dir[] = "/tmp/dsa-test-tsv-XXXXXX";

static const char *put_n(const char *name, const char *text, size_t n) {
        static char path[8][512];
        static int k;
        char *p = path[k++ % 8];
        FILE *f;

        snprintf(p, 512, "%s/%s", dir, name);
        f = fopen(p, "we");
        assert_non_null(f);
        assert_int_equal(fwrite(text, 1, n, f), n);
        fclose(f);
        return p;
}

static const char *put(const char *name, const char *text) {
        return put_n(name, text, strlen(text));
}

static void test_tsv(void **state) {
        const char *p = put("a.tsv", "\xef\xbb\xbfQuality\t#1 String\t#2 String\r\n"
                                     "1\t\"He said\tit's \"\"fine\r\n\n"
                                     "0\ta\tb\n");
        _cleanup_(cli_tsv_freep) struct cli_tsv *t = NULL;
        char **f;

        assert_int_equal(cli_tsv_open(p, &t), 0);
        assert_int_equal(cli_tsv_n_columns(t), 3);
        assert_int_equal(cli_tsv_column(t, (const char *const[]) { "sentence1", "#1 String", NULL }), 1);
        assert_int_equal(cli_tsv_column(t, (const char *const[]) { "Quality", NULL }), 0);
        assert_int_equal(cli_tsv_column(t, (const char *const[]) { "label", NULL }), -ENOENT);
        assert_int_equal(cli_tsv_next(t, &f), 1);
        assert_string_equal(f[0], "1");
        assert_string_equal(f[1], "\"He said");
        assert_string_equal(f[2], "it's \"\"fine");
        assert_int_equal(cli_tsv_line(t), 2);
        assert_int_equal(cli_tsv_next(t, &f), 1);
        assert_string_equal(f[2], "b");
        assert_int_equal(cli_tsv_line(t), 4);
        assert_int_equal(cli_tsv_next(t, &f), 0);
}

static void test_tsv_errors(void **state) {
        _cleanup_(cli_tsv_freep) struct cli_tsv *t = NULL;
        char want[600], **f;
        const char *p;

        p = put("short.tsv", "sentence\tlabel\nok\t1\nshort\n");
        assert_int_equal(cli_tsv_open(p, &t), 0);
        assert_int_equal(cli_tsv_next(t, &f), 1);
        dsa_error_clear();
        assert_int_equal(cli_tsv_next(t, &f), -EBADMSG);
        snprintf(want, sizeof(want), "%s:3: 1 field, the header has 2", p);
        assert_string_equal(dsa_error_message(-EBADMSG), want);
        t = cli_tsv_free(t);

        assert_int_equal(cli_tsv_open(put("empty.tsv", "\n\n"), &t), -ENODATA);
        assert_int_equal(cli_tsv_open(put_n("nul.tsv", "a\0b\n", 4), &t), -EBADMSG);
        snprintf(want, sizeof(want), "%s/missing.tsv", dir);
        assert_int_equal(cli_tsv_open(want, &t), -ENOENT);
        assert_null(t);
}

static void expect_texts(const char *path, const char *const *want) {
        _cleanup_(cli_text_source_freep) struct cli_text_source *s = NULL;
        const char *text, *pair;
        size_t i = 0;
        int r;

        assert_int_equal(cli_text_source_open(path, &s), 0);
        while ((r = cli_text_source_next(s, &text, &pair)) == 1) {
                char got[256];

                snprintf(got, sizeof(got), "%s|%s", text, pair ? pair : "-");
                assert_non_null(want[i]);
                assert_string_equal(got, want[i]);
                i++;
        }
        assert_int_equal(r, 0);
        assert_null(want[i]);
}

static void test_text_source(void **state) {
        char sub[512];

        expect_texts(put("p.tsv", "sentence1\tsentence2\tlabel\tidx\nA\tB\t0\t0\nC\tD\t1\t1\n"),
                     (const char *const[]) { "A|B", "C|D", NULL });
        expect_texts(put("s.tsv", "sentence\tlabel\nx y\t1\n"), (const char *const[]) { "x y|-", NULL });
        expect_texts(put("plain.txt", "first line\twith a tab\n\nsecond\r\n"),
                     (const char *const[]) { "first line\twith a tab|-", "second|-", NULL });

        snprintf(sub, sizeof(sub), "%s/folder", dir);
        assert_int_equal(mkdir(sub, 0700), 0);
        put("folder/b.txt", "from b\n");
        put("folder/a.tsv", "#1 String\t#2 String\tQuality\none\ttwo\t1\n");
        put("folder/.hidden", "never\n");
        put("folder/c-empty.txt", "");
        expect_texts(sub, (const char *const[]) { "one|two", "from b|-", NULL });
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_tsv),
                cmocka_unit_test(test_tsv_errors),
                cmocka_unit_test(test_text_source),
        };
        char cmd[600];
        int r;

        if (!mkdtemp(dir))
                return 1;
        r = cmocka_run_group_tests(tests, NULL, NULL);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
                fprintf(stderr, "could not remove %s, ignoring\n", dir);
        return r;
}
