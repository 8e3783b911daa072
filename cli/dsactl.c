/* dsactl: the command line of dsa. Parses the verb and hands over to its implementation; the
 * offline verbs (-m FILE) run the engine in-process. Exit codes: 0 success, 1 failure with a
 * one-line reason on stderr, 2 usage error. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "verbs.h"

static const struct verb {
        const char *name;
        int (*run)(int argc, char **argv);
} verbs[] = {
        { "tokenize", verb_tokenize },
        { "classify", verb_classify },
        { "embed", verb_embed },
        { "import", verb_import },
        { "bench", verb_bench },
};

void dsactl_help(FILE *f) {
        fputs("Usage: dsactl [--help] [--version] VERB [OPTIONS] [ARGS...]\n"
              "\n"
              "Run transformer models on this machine's CPU.\n"
              "\n"
              "Verbs (offline: -m names a GGUF file or a Hugging Face folder):\n"
              "  tokenize -m MODEL [--no-special] [--json] [TEXT...]\n"
              "                         Print token ids and tokens of each text\n"
              "  classify -m MODEL [--json] [--threads N] [TEXT...]\n"
              "                         Print the predicted label of each text\n"
              "  embed -m MODEL [--pool cls|mean|pooler|none] [--json] [--threads N] [TEXT...]\n"
              "                         Print an embedding of each text\n"
              "  import SRC -o OUT.gguf [--type f32|f16|bf16]\n"
              "                         Convert a Hugging Face folder (or GGUF) into our GGUF\n"
              "  bench -m MODEL [--seq N] [--batch B] [--threads N] [--runs R] [--warmup W] [--json]\n"
              "        [--dump FILE]    Time the forward pass on synthetic input\n"
              "\n"
              "Options:\n"
              "  -m, --model MODEL      GGUF file or Hugging Face folder to run\n"
              "  -o, --output FILE      Where import writes its GGUF file\n"
              "  --threads N            Threads for the forward pass (default: every online core)\n"
              "\n"
              "Without TEXT arguments, texts are read from standard input, one per line.\n"
              "--json prints one JSON object per input (JSON Lines).\n"
              "Exit status: 0 success, 1 failure, 2 usage error.\n"
              "See dsactl(1).\n",
              f);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                dsactl_help(stderr);
                return 2;
        }
        if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
                dsactl_help(stdout);
                return 0;
        }
        if (!strcmp(argv[1], "--version")) {
                printf("dsactl %s\n", DSA_VERSION);
                return 0;
        }
        for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
                if (!strcmp(argv[1], verbs[i].name)) {
                        optind = 0; /* each verb parses its own options */
                        return verbs[i].run(argc - 1, argv + 1);
                }
        fprintf(stderr, "dsactl: unknown verb '%s' (see dsactl --help)\n", argv[1]);
        return 2;
}
