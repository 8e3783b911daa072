/* The inference verbs: tokenize, classify, embed, and import. Each reads texts from its
 * arguments or from standard input (one per line, processed in chunks so a long stream never
 * sits in memory), runs the engine in-process on the file or folder named by -m (or hands over
 * to online.c when -m names a model of dsad's), and prints plain text or JSON Lines through
 * print.c. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "online.h"
#include "print.h"
#include "basic/parse-util.h"
#include "util.h"
#include "verbs.h"



enum {
        ARG_JSON = 0x100,
        ARG_NO_SPECIAL,
        ARG_POOL,
        ARG_THREADS,
        ARG_TYPE,
        ARG_BUS,
        ARG_MIN_ACCURACY,
        ARG_MAX_LATENCY,
        ARG_PRIORITY,
};

struct common_opts {
        const char *model;
        bool json;
        bool no_special;
        int threads;
        enum dsa_pool pool;
        const char *pool_name;
        const char *output;
        enum dsa_type type;
        /* online classify and embed: hints for dsad's adaptive policy (see online.h) */
        double min_accuracy;
        unsigned long max_latency_ms;
        const char *priority;
        bool has_hints;
};

/* Parses the options every inference verb shares; returns optind, -1 after printing --help, or
 * -2 for usage errors. */
static int parse_common(int argc, char **argv, struct common_opts *o) {
        static const struct option options[] = {
                { "model", required_argument, NULL, 'm' },
                { "json", no_argument, NULL, ARG_JSON },
                { "no-special", no_argument, NULL, ARG_NO_SPECIAL },
                { "pool", required_argument, NULL, ARG_POOL },
                { "threads", required_argument, NULL, ARG_THREADS },
                { "output", required_argument, NULL, 'o' },
                { "type", required_argument, NULL, ARG_TYPE },
                { "bus", required_argument, NULL, ARG_BUS },
                { "min-accuracy", required_argument, NULL, ARG_MIN_ACCURACY },
                { "max-latency", required_argument, NULL, ARG_MAX_LATENCY },
                { "priority", required_argument, NULL, ARG_PRIORITY },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        const char *verb = argv[0];
        bool hint_verb = !strcmp(verb, "classify") || !strcmp(verb, "embed");
        unsigned long v;
        int c;

        opterr = 0; /* our own one-line message instead */
        while ((c = getopt_long(argc, argv, "m:o:h", options, NULL)) >= 0) {
                switch (c) {
                case 'm':
                        o->model = optarg;
                        break;
                case 'o':
                        if (strcmp(verb, "import"))
                                return cli_usage(verb, "-o is an option of import"), -2;
                        o->output = optarg;
                        break;
                case ARG_JSON:
                        o->json = true;
                        break;
                case ARG_NO_SPECIAL:
                        if (strcmp(verb, "tokenize"))
                                return cli_usage(verb, "--no-special is an option of tokenize"), -2;
                        o->no_special = true;
                        break;
                case ARG_POOL:
                        if (strcmp(verb, "embed"))
                                return cli_usage(verb, "--pool is an option of embed"), -2;
                        if (!strcmp(optarg, "cls"))
                                o->pool = DSA_POOL_CLS;
                        else if (!strcmp(optarg, "mean"))
                                o->pool = DSA_POOL_MEAN;
                        else if (!strcmp(optarg, "pooler"))
                                o->pool = DSA_POOL_POOLER;
                        else if (!strcmp(optarg, "none"))
                                o->pool = DSA_POOL_NONE;
                        else
                                return cli_usage(verb, "--pool takes cls, mean, pooler or none"), -2;
                        o->pool_name = optarg;
                        break;
                case ARG_BUS:
                        if (!strcmp(verb, "import"))
                                return cli_usage(verb, "--bus is not an option of import"), -2;
                        cli_bus = optarg;
                        break;
                case ARG_THREADS:
                        if (cli_parse_uint(optarg, 1024, &v) < 0)
                                return cli_usage(verb, "--threads takes a positive number"), -2;
                        o->threads = (int) v;
                        break;
                case ARG_TYPE:
                        if (strcmp(verb, "import"))
                                return cli_usage(verb, "--type is an option of import"), -2;
                        if (!strcmp(optarg, "f32"))
                                o->type = DSA_TYPE_F32;
                        else if (!strcmp(optarg, "f16"))
                                o->type = DSA_TYPE_F16;
                        else if (!strcmp(optarg, "bf16"))
                                o->type = DSA_TYPE_BF16;
                        else
                                return cli_usage(verb, "--type takes f32, f16 or bf16"), -2;
                        break;
                case ARG_MIN_ACCURACY:
                case ARG_MAX_LATENCY:
                case ARG_PRIORITY:
                        if (!hint_verb)
                                return cli_usage(verb, "--min-accuracy, --max-latency and --priority are options of "
                                                       "classify and embed"), -2;
                        if (c == ARG_MIN_ACCURACY && dsa_parse_double(optarg, 0, 1, &o->min_accuracy) < 0)
                                return cli_usage(verb, "--min-accuracy takes a fraction 0..1 of the base's"), -2;
                        if (c == ARG_MAX_LATENCY && cli_parse_uint(optarg, UINT32_MAX, &o->max_latency_ms) < 0)
                                return cli_usage(verb, "--max-latency takes milliseconds > 0"), -2;
                        if (c == ARG_PRIORITY && strcmp(optarg, "high") && strcmp(optarg, "normal") &&
                            strcmp(optarg, "low"))
                                return cli_usage(verb, "--priority takes high, normal or low"), -2;
                        if (c == ARG_PRIORITY)
                                o->priority = optarg;
                        o->has_hints = true;
                        break;
                case 'h':
                        dsactl_help(stdout);
                        return -1;
                default:
                        return cli_usage(verb, "unknown option or missing value"), -2;
                }
        }
        return optind;
}

/* Runs fn on each chunk of input texts until the input ends or fn fails. */
static int for_each_chunk(int argc, char **argv, const struct dsa_model *m, const struct common_opts *o,
                          int (*fn)(const struct dsa_model *m, const struct common_opts *o,
                                    char **texts, size_t n)) {
        struct cli_input in;
        int r;

        cli_input_init(&in, argc, argv);
        for (;;) {
                char **texts = NULL;
                int n = cli_input_next(&in, CLI_CHUNK, &texts);
                if (n < 0)
                        return cli_error(n, "reading input");
                if (n == 0)
                        return 0;
                r = fn(m, o, texts, (size_t) n);
                cli_texts_free(texts, (size_t) n);
                if (r < 0)
                        return r;
                fflush(stdout);
        }
}

static int tokenize_chunk(const struct dsa_model *m, const struct common_opts *o, char **texts, size_t n) {
        const struct dsa_tokenizer *tok = dsa_model_tokenizer(m);

        for (size_t i = 0; i < n; i++) {
                struct dsa_encoding e = {};
                const char **strs;
                int r = dsa_tokenizer_encode(tok, texts[i], strlen(texts[i]), NULL, 0,
                                             o->no_special ? 0 : DSA_ENCODE_SPECIAL, 0, &e);
                if (r < 0)
                        return cli_error(r, "tokenizing");
                strs = malloc((e.n ? e.n : 1) * sizeof(*strs));
                if (!strs) {
                        dsa_encoding_clear(&e);
                        return cli_error(-ENOMEM, "tokenizing");
                }
                for (size_t j = 0; j < e.n; j++)
                        strs[j] = dsa_tokenizer_token(tok, e.ids[j]);
                cli_print_tokens(texts[i], e.ids, strs, e.n, o->json);
                free(strs);
                dsa_encoding_clear(&e);
        }
        return 0;
}

static int classify_chunk(const struct dsa_model *m, const struct common_opts *o, char **texts, size_t n) {
        size_t L = dsa_model_bert_config(m)->n_labels;
        _cleanup_free_ float *logits = malloc(n * L * sizeof(float));
        _cleanup_free_ const char **labels = malloc(L * sizeof(*labels));
        int r;

        if (!logits || !labels)
                return cli_error(-ENOMEM, "classify");
        for (size_t j = 0; j < L; j++)
                labels[j] = dsa_model_label(m, j);
        r = dsa_model_classify_texts(m, (const char *const *) texts, NULL, n, logits);
        if (r < 0)
                return cli_error(r, "classify");
        for (size_t i = 0; i < n; i++)
                cli_print_classify(texts[i], logits + i * L, L, labels, NULL, o->json);
        return 0;
}

/* --pool none: every token's last hidden state, one text per forward. */
static int embed_tokens(const struct dsa_model *m, const struct common_opts *o, const char *text) {
        const struct dsa_bert_config *cfg = dsa_model_bert_config(m);
        struct dsa_encoding e = {};
        _cleanup_free_ float *hidden = NULL;
        _cleanup_free_ uint8_t *mask = NULL;
        int r;

        r = dsa_tokenizer_encode(dsa_model_tokenizer(m), text, strlen(text), NULL, 0, DSA_ENCODE_SPECIAL,
                                 cfg->n_ctx, &e);
        if (r < 0)
                return cli_error(r, "tokenizing");
        hidden = malloc(e.n * cfg->n_embd * sizeof(float));
        mask = malloc(e.n);
        if (!hidden || !mask) {
                dsa_encoding_clear(&e);
                return cli_error(-ENOMEM, "embed");
        }
        memset(mask, 1, e.n);
        struct dsa_batch b = { .B = 1, .T = e.n, .ids = e.ids, .type_ids = e.type_ids, .mask = mask };
        r = dsa_model_forward(m, &b, hidden, NULL);
        if (r < 0) {
                dsa_encoding_clear(&e);
                return cli_error(r, "embed");
        }
        cli_print_hidden(text, hidden, e.n, cfg->n_embd, o->json);
        dsa_encoding_clear(&e);
        return 0;
}

static int embed_chunk(const struct dsa_model *m, const struct common_opts *o, char **texts, size_t n) {
        size_t C = dsa_model_bert_config(m)->n_embd;
        _cleanup_free_ float *emb = NULL;
        int r;

        if (o->pool == DSA_POOL_NONE) {
                for (size_t i = 0; i < n; i++) {
                        r = embed_tokens(m, o, texts[i]);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        emb = malloc(n * C * sizeof(float));
        if (!emb)
                return cli_error(-ENOMEM, "embed");
        r = dsa_model_embed_texts(m, (const char *const *) texts, n, o->pool, emb);
        if (r < 0)
                return cli_error(r, "embed");
        for (size_t i = 0; i < n; i++)
                cli_print_embedding(texts[i], emb + i * C, C, o->json);
        return 0;
}

static int run_inference(int argc, char **argv,
                         int (*fn)(const struct dsa_model *m, const struct common_opts *o, char **texts,
                                   size_t n),
                         struct common_opts *o) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        int idx, r;

        idx = parse_common(argc, argv, o);
        if (idx < 0)
                return idx == -1 ? 0 : 2;
        if (!o->model)
                return cli_usage(argv[0], "-m MODEL is required (a GGUF file, a Hugging Face folder, or a model of dsad's)");
        if (!cli_model_is_local(o->model)) {
                struct cli_online_opts oo = {
                        .verb = argv[0], .model = o->model, .json = o->json,
                        .no_special = o->no_special, .pool = o->pool_name,
                        .min_accuracy = o->min_accuracy, .max_latency_ms = o->max_latency_ms,
                        .priority = o->priority,
                };
                return cli_online_infer(&oo, argc - idx, argv + idx);
        }
        if (o->has_hints)
                return cli_usage(argv[0], "--min-accuracy, --max-latency and --priority need a model dsad serves");
        if (cli_open_model(o->model, &m) < 0)
                return 1;
        if (cli_set_threads(m, o->threads) < 0)
                return 1;
        if (fn != tokenize_chunk && !dsa_model_bert_config(m)) {
                fprintf(stderr, "dsactl: %s: %s needs a BERT encoder; this is a decoder (see eval --task ppl)\n",
                        o->model, argv[0]);
                return 1;
        }
        if (fn == classify_chunk && dsa_model_bert_config(m)->n_labels == 0) {
                fprintf(stderr, "dsactl: %s: model has no classification head\n", o->model);
                return 1;
        }
        r = for_each_chunk(argc - idx, argv + idx, m, o, fn);
        return r < 0 ? 1 : 0;
}

int verb_tokenize(int argc, char **argv) {
        struct common_opts o = {};
        return run_inference(argc, argv, tokenize_chunk, &o);
}

int verb_classify(int argc, char **argv) {
        struct common_opts o = {};
        return run_inference(argc, argv, classify_chunk, &o);
}

int verb_embed(int argc, char **argv) {
        struct common_opts o = { .pool = DSA_POOL_MEAN };
        return run_inference(argc, argv, embed_chunk, &o);
}

int verb_import(int argc, char **argv) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        struct common_opts o = { .type = DSA_TYPE_F32 };
        int idx, r;

        idx = parse_common(argc, argv, &o);
        if (idx < 0)
                return idx == -1 ? 0 : 2;
        if (o.model || argc - idx != 1)
                return cli_usage("import", "takes exactly one SRC (a Hugging Face folder or a GGUF file)");
        if (!o.output)
                return cli_usage("import", "-o OUT.gguf is required");
        if (cli_open_model(argv[idx], &m) < 0)
                return 1;
        dsa_error_clear();
        r = dsa_model_save(m, o.output, o.type);
        if (r < 0) {
                cli_error(r, o.output);
                return 1;
        }
        return 0;
}
