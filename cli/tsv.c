/* See tsv.h. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "tsv.h"

struct cli_tsv {
        FILE *f;
        char *path;
        size_t line;       /* number of the line in buf */
        char *buf;         /* the current line, split in place for a row */
        size_t cap;
        bool unread;       /* buf holds the first line, not yet returned (plain text) */
        char *header;      /* copy of the header line, split into names */
        char **names;
        size_t n_columns;  /* 0: plain text */
        char **fields;     /* n_columns pointers into buf */
};

static const char *const text_columns[] = { "sentence", "sentence1", "#1 String", "question1", "question",
                                            "premise", "text", NULL };
static const char *const pair_columns[] = { "sentence2", "#2 String", "question2", "hypothesis", NULL };

struct cli_tsv *cli_tsv_free(struct cli_tsv *t) {
        if (!t)
                return NULL;
        if (t->f)
                fclose(t->f);
        free(t->path);
        free(t->buf);
        free(t->header);
        free(t->names);
        free(t->fields);
        free(t);
        return NULL;
}

/* Reads the next non-blank line into t->buf without its line end. 1, 0 at the end, or -errno. */
static int read_line(struct cli_tsv *t) {
        for (;;) {
                ssize_t len;

                errno = 0;
                len = getline(&t->buf, &t->cap, t->f);
                if (len < 0) {
                        if (ferror(t->f))
                                return dsa__error(errno > 0 ? -errno : -EIO, "%s:%zu: %s", t->path, t->line + 1,
                                                  strerror(errno > 0 ? errno : EIO));
                        return 0;
                }
                t->line++;
                if ((size_t) len > CLI_TSV_LINE_MAX)
                        return dsa__error(-EBADMSG, "%s:%zu: line longer than %u bytes", t->path, t->line,
                                          CLI_TSV_LINE_MAX);
                if (strlen(t->buf) != (size_t) len)
                        return dsa__error(-EBADMSG, "%s:%zu: NUL byte in line", t->path, t->line);
                while (len > 0 && (t->buf[len - 1] == '\n' || t->buf[len - 1] == '\r'))
                        t->buf[--len] = 0;
                if (t->line == 1 && len >= 3 && !memcmp(t->buf, "\xef\xbb\xbf", 3)) {
                        len -= 3;
                        memmove(t->buf, t->buf + 3, (size_t) len + 1);
                }
                if (len > 0)
                        return 1;
        }
}

/* Splits s at tabs into at most max pointers of out (when out is not NULL); returns the number
 * of fields. */
static size_t split(char *s, char **out, size_t max) {
        size_t n = 1;

        if (out && max > 0)
                out[0] = s;
        for (char *p = strchr(s, '\t'); p; p = strchr(p + 1, '\t')) {
                if (out && n < max) {
                        *p = 0;
                        out[n] = p + 1;
                }
                n++;
        }
        return n;
}

/* Opens path and reads its first non-blank line into t->buf (-ENODATA when there is none). */
static int open_file(const char *path, struct cli_tsv **ret) {
        _cleanup_(cli_tsv_freep) struct cli_tsv *t = calloc(1, sizeof(*t));
        int r;

        if (!t || !(t->path = strdup(path)))
                return -ENOMEM;
        t->f = fopen(path, "re");
        if (!t->f)
                return dsa__error(-errno, "%s: %s", path, strerror(errno));
        r = read_line(t);
        if (r < 0)
                return r;
        if (r == 0)
                return dsa__error(-ENODATA, "%s: empty file", path);
        *ret = TAKE_PTR(t);
        return 0;
}

/* Takes the line in t->buf as the header. */
static int set_header(struct cli_tsv *t) {
        t->header = strdup(t->buf);
        if (!t->header)
                return -ENOMEM;
        t->n_columns = split(t->header, NULL, 0);
        t->names = calloc(t->n_columns, sizeof(char *));
        t->fields = calloc(t->n_columns, sizeof(char *));
        if (!t->names || !t->fields)
                return -ENOMEM;
        split(t->header, t->names, t->n_columns);
        return 0;
}

int cli_tsv_open(const char *path, struct cli_tsv **ret) {
        _cleanup_(cli_tsv_freep) struct cli_tsv *t = NULL;
        int r;

        if (!path || !ret)
                return -EINVAL;
        r = open_file(path, &t);
        if (r < 0)
                return r;
        r = set_header(t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

int cli_tsv_column(const struct cli_tsv *t, const char *const *names) {
        for (; *names; names++)
                for (size_t i = 0; i < t->n_columns; i++)
                        if (!strcmp(t->names[i], *names))
                                return (int) i;
        return -ENOENT;
}

size_t cli_tsv_n_columns(const struct cli_tsv *t) {
        return t->n_columns;
}

const char *cli_tsv_header_string(const struct cli_tsv *t, char *buf, size_t size) {
        size_t at = 0;

        buf[0] = 0;
        for (size_t i = 0; i < t->n_columns && at < size; i++) {
                int n = snprintf(buf + at, size - at, "%s%s", i ? ", " : "", t->names[i]);
                if (n < 0)
                        break;
                at += (size_t) n;
        }
        return buf;
}

int cli_tsv_next(struct cli_tsv *t, char ***ret_fields) {
        size_t n;
        int r;

        r = read_line(t);
        if (r <= 0)
                return r;
        n = split(t->buf, t->fields, t->n_columns);
        if (n != t->n_columns)
                return dsa__error(-EBADMSG, "%s:%zu: %zu field%s, the header has %zu", t->path, t->line, n,
                                  n == 1 ? "" : "s", t->n_columns);
        *ret_fields = t->fields;
        return 1;
}

const char *cli_tsv_path(const struct cli_tsv *t) {
        return t->path;
}

size_t cli_tsv_line(const struct cli_tsv *t) {
        return t->line;
}

struct cli_text_source {
        char *dir;             /* NULL: a single file */
        struct dirent **files; /* in a folder: its entries, in name order */
        int n_files, next_file;
        char *single;          /* the single file, until opened */
        struct cli_tsv *t;     /* the open file */
        int text_col, pair_col; /* -1 with n_columns == 0: plain text */
};

struct cli_text_source *cli_text_source_free(struct cli_text_source *s) {
        if (!s)
                return NULL;
        for (int i = 0; i < s->n_files; i++)
                free(s->files[i]);
        free(s->files);
        free(s->dir);
        free(s->single);
        cli_tsv_free(s->t);
        free(s);
        return NULL;
}

static int skip_hidden(const struct dirent *d) {
        return d->d_name[0] != '.';
}

int cli_text_source_open(const char *path, struct cli_text_source **ret) {
        _cleanup_(cli_text_source_freep) struct cli_text_source *s = calloc(1, sizeof(*s));
        struct stat st;

        if (!path || !ret)
                return -EINVAL;
        if (!s)
                return -ENOMEM;
        if (stat(path, &st) < 0)
                return dsa__error(-errno, "%s: %s", path, strerror(errno));
        if (!S_ISDIR(st.st_mode)) {
                s->single = strdup(path);
                if (!s->single)
                        return -ENOMEM;
                *ret = TAKE_PTR(s);
                return 0;
        }
        s->dir = strdup(path);
        if (!s->dir)
                return -ENOMEM;
        s->n_files = scandir(path, &s->files, skip_hidden, alphasort);
        if (s->n_files < 0) {
                s->n_files = 0;
                return dsa__error(-errno, "%s: %s", path, strerror(errno));
        }
        *ret = TAKE_PTR(s);
        return 0;
}

/* Opens the next file that has a line; 1, 0 when there is none left, or -errno. */
static int open_next_file(struct cli_text_source *s) {
        for (;;) {
                _cleanup_free_ char *p = NULL;
                struct stat st;
                int r;

                s->t = cli_tsv_free(s->t);
                if (s->single)
                        p = TAKE_PTR(s->single);
                else if (s->dir && s->next_file < s->n_files) {
                        const char *name = s->files[s->next_file++]->d_name;
                        size_t len = strlen(s->dir) + strlen(name) + 2;
                        p = malloc(len);
                        if (!p)
                                return -ENOMEM;
                        snprintf(p, len, "%s/%s", s->dir, name);
                        if (stat(p, &st) < 0 || !S_ISREG(st.st_mode))
                                continue;
                } else
                        return 0;
                r = open_file(p, &s->t);
                if (r == -ENODATA && s->dir)
                        continue;
                if (r < 0)
                        return r;
                /* A header names a known text column; anything else is a text. */
                char *copy = strdup(s->t->buf), *names[64];
                size_t n;
                if (!copy)
                        return -ENOMEM;
                n = MIN(split(copy, names, ELEMENTSOF(names)), ELEMENTSOF(names));
                s->text_col = s->pair_col = -1;
                for (size_t k = 0; text_columns[k] && s->text_col < 0; k++)
                        for (size_t i = 0; i < n; i++)
                                if (!strcmp(names[i], text_columns[k]))
                                        s->text_col = (int) i;
                free(copy);
                if (s->text_col < 0) {
                        s->t->unread = true;
                        return 1;
                }
                r = set_header(s->t);
                if (r < 0)
                        return r;
                s->pair_col = cli_tsv_column(s->t, pair_columns);
                return 1;
        }
}

int cli_text_source_next(struct cli_text_source *s, const char **ret_text, const char **ret_pair) {
        int r;

        if (!s || !ret_text || !ret_pair)
                return -EINVAL;
        for (;;) {
                if (!s->t) {
                        r = open_next_file(s);
                        if (r <= 0)
                                return r;
                }
                if (s->t->n_columns == 0) {
                        if (s->t->unread)
                                r = 1, s->t->unread = false;
                        else
                                r = read_line(s->t);
                        if (r == 1) {
                                *ret_text = s->t->buf;
                                *ret_pair = NULL;
                        }
                } else {
                        char **f;
                        r = cli_tsv_next(s->t, &f);
                        if (r == 1) {
                                *ret_text = f[s->text_col];
                                *ret_pair = s->pair_col >= 0 ? f[s->pair_col] : NULL;
                        }
                }
                if (r != 0)
                        return r;
                s->t = cli_tsv_free(s->t);
                if (!s->dir)
                        return 0;
        }
}
