/* Reading datasets as they ship: tab-separated files with a header (GLUE's dev.tsv and most
 * NLP data), and plain text, one text per line. Two layers, both streaming (one line in memory
 * at a time, so a file of any size works):
 *
 *   cli_tsv          one TSV file with a header; columns are found by name, rows come back as
 *                    fields. dsactl eval reads labelled sets with it.
 *   cli_text_source  a file or every file of a folder, yielding texts (and the second text of
 *                    a pair when the file has one). For passes over raw text that need no
 *                    labels, such as calibrating a quantized model (dsactl optimize --calib).
 *
 * Fields are taken literally, as Python's csv module reads them with quoting=QUOTE_NONE (what
 * the GLUE loaders do): a double quote is an ordinary character, and there is no escaping, so a
 * field cannot hold a tab or a newline. A UTF-8 BOM at the start of a file and a \r before each
 * \n are dropped; blank lines are skipped. A line may not exceed CLI_TSV_LINE_MAX bytes or hold a
 * NUL byte.
 *
 * Errors are -errno with a one-line reason stored for dsa_error_message() that names the file
 * and, where there is one, the line: "dev.tsv:12: 1 field, the header has 2". */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/macro.h"

#define CLI_TSV_LINE_MAX (16u << 20)

struct cli_tsv;

/* Opens path and reads its header (the first non-blank line). -ENODATA when the file holds no
 * header (empty or blank). */
int cli_tsv_open(const char *path, struct cli_tsv **ret);
struct cli_tsv *cli_tsv_free(struct cli_tsv *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct cli_tsv *, cli_tsv_free);

/* Index of the column named by the first of names (a NULL-terminated list of alternatives:
 * { "#1 String", "sentence1", NULL }) that the header has; -ENOENT, no reason stored, when it
 * has none of them. */
int cli_tsv_column(const struct cli_tsv *t, const char *const *names);
size_t cli_tsv_n_columns(const struct cli_tsv *t);
/* The header's column names joined by ", " into buf (truncated to size), for messages. */
const char *cli_tsv_header_string(const struct cli_tsv *t, char *buf, size_t size);

/* Reads the next row. Returns 1 with *ret_fields pointing to cli_tsv_n_columns() fields, valid
 * until the next call; 0 at the end of the file; -EBADMSG for a row with another number of
 * fields than the header has, -EIO, -ENOMEM. */
int cli_tsv_next(struct cli_tsv *t, char ***ret_fields);

const char *cli_tsv_path(const struct cli_tsv *t);
/* The 1-based line number of the row last returned (or of the header before any row). */
size_t cli_tsv_line(const struct cli_tsv *t);

struct cli_text_source;

/* path: a file, or a folder whose regular files are read one after the other in name order
 * (not recursing; names starting with '.' skipped). A file whose first line is a TSV header
 * naming a text column (sentence, sentence1, #1 String, question1, question, premise, text)
 * yields that column, and the matching second column of a pair (sentence2, #2 String,
 * question2, hypothesis) when it has one; any other file yields each non-blank line whole.
 * Empty files in a folder are skipped; an empty single file is -ENODATA. -errno (reason
 * stored) when path cannot be read. */
int cli_text_source_open(const char *path, struct cli_text_source **ret);
struct cli_text_source *cli_text_source_free(struct cli_text_source *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct cli_text_source *, cli_text_source_free);

/* Returns 1 with *ret_text and *ret_pair (NULL for a file without pairs) valid until the next
 * call, 0 after the last text of the last file, or -errno (reason stored, naming file and line). */
int cli_text_source_next(struct cli_text_source *s, const char **ret_text, const char **ret_pair);
