/* dsactl: the command line of dsa. Parses the global options and the verb and hands over to its
 * implementation; with -m naming a file or folder the inference verbs run the engine
 * in-process, otherwise they and the control verbs ask dsad through libdsa. Exit codes: 0
 * success, 1 failure with a one-line reason on stderr, 2 usage error. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "basic/malloc-util.h"
#include "online.h"
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
        { "eval", verb_eval },
        { "optimize", verb_optimize },
        { "show", verb_show },
        { "train", verb_train },
        { "distill", verb_distill },
        { "list", verb_list },
        { "ps", verb_ps },
        { "status", verb_status },
        { "load", verb_load },
        { "unload", verb_unload },
        { "policy", verb_policy },
};

void dsactl_help(FILE *f) {
        fputs("Usage: dsactl [--help] [--version] [--bus BUS] VERB [OPTIONS] [ARGS...]\n"
              "\n"
              "Run transformer models on this machine's CPU, in-process or through dsad.\n"
              "\n"
              "MODEL is a GGUF file or a Hugging Face folder (run in-process: anything that\n"
              "contains '/', ends in .gguf or exists), or else the name of a model dsad serves\n"
              "(asked over D-Bus; 'dsactl list' shows them).\n"
              "\n"
              "Inference verbs:\n"
              "  tokenize -m MODEL [--no-special] [--json] [TEXT...]\n"
              "                         Print token ids and tokens of each text\n"
              "  classify -m MODEL [--json] [--threads N] [HINTS] [TEXT...]\n"
              "                         Print the predicted label of each text\n"
              "  embed -m MODEL [--pool cls|mean|pooler|none] [--json] [--threads N] [HINTS]\n"
              "        [TEXT...]\n"
              "                         Print an embedding of each text (default --pool mean)\n"
              "  HINTS (a model of dsad's only): [--min-accuracy F] [--max-latency MS]\n"
              "        [--priority high|normal|low]\n"
              "                         Ask dsad's adaptive policy for a variant that keeps at\n"
              "                         least F of the base's accuracy, for an answer within MS,\n"
              "                         and to queue ahead of or behind other requests\n"
              "\n"
              "Offline verbs (in-process only):\n"
              "  import SRC -o OUT.gguf [--type f32|f16|bf16]\n"
              "                         Convert a Hugging Face folder (or GGUF) into our GGUF\n"
              "  bench -m MODEL [--seq N] [--batch B] [--threads N] [--runs R] [--warmup W] [--json]\n"
              "        [--dump FILE] [--record]\n"
              "                         Time the forward pass on synthetic input\n"
              "  bench --attention M1,M2,... [--lengths N,...] [--data FILE] [--runs R]\n"
              "        [--threads N] [--json]\n"
              "                         Attention scaling sweep of decoder variants (M1 baseline)\n"
              "  eval -m MODEL --task sst2|mrpc|rte|ppl --data FILE [--json] [--threads N]\n"
              "       [--limit N] [--predictions FILE] [--record]\n"
              "                         Accuracy (and F1) of a classifier on a GLUE dev set;\n"
              "                         ppl: perplexity of a decoder over documents\n"
              "  optimize -m MODEL -o OUT.gguf [--quant f32|f16|bf16|int8|mixed]\n"
              "       [--act dynamic|minmax|percentile] [--percentile P] [--mixed-target F]\n"
              "       [--prune-heads F] [--prune-ffn F] [--sparsity F]\n"
              "       [--sparsity-method magnitude|wanda|sparsegpt]\n"
              "       [--sparsity-pattern unstructured|2:4|block16] [--token-keep F[,F...]|auto]\n"
              "       [--token-target F] [--token-score attention|learned]\n"
              "       [--attention dense|local|fixed|linear|dsa]\n"
              "       [--att-block N] [--att-window N] [--att-global N] [--att-random N]\n"
              "       [--att-mass F] [--att-cap N] [--att-blocks N] [--att-sparsity F]\n"
              "       [--att-heuristic] [--att-oracle] [--att-scorer pooled|token]\n"
              "       [--att-stride N] [--att-summary] [--att-summary-window N]\n"
              "       [--scorer-rank N]\n"
              "       [--head-importance output|grad] [--recover TRAIN.tsv --recover-task T\n"
              "       --recover-steps N [--recover-lr F]]\n"
              "       [--calib PATH] [--calib-max N] [--threads N] [--quiet]\n"
              "                         Write a pruned / quantized / sparse-attention variant\n"
              "  show -m MODEL [--json]  Describe MODEL and list its variants in the same folder\n"
              "\n"
              "Training verbs (BERT classifiers; TRAIN.tsv and DEV.tsv as GLUE ships them):\n"
              "  train -m MODEL --task sst2|mrpc|rte --data TRAIN.tsv [--eval DEV.tsv] -o OUT.gguf\n"
              "       [--epochs N] [--batch N] [--lr F] [--warmup F] [--weight-decay F] [--clip F]\n"
              "       [--dropout F] [--seed N] [--max-len N] [--max-steps N] [--limit N]\n"
              "       [--qat int8] [--checkpoint FILE] [--checkpoint-every N] [--resume FILE]\n"
              "       [--fresh] [--reinit-head] [--threads N] [--json]\n"
              "                         Fine-tune MODEL (AdamW, warmup + linear decay); --qat int8\n"
              "                         trains through int8 and writes the int8 variant\n"
              "  distill --teacher MODEL (--student-config SPEC | --student MODEL) --task T\n"
              "       --data TRAIN.tsv [--eval DEV.tsv] -o OUT.gguf\n"
              "       [--loss response,feature,relation] [--temperature F] [--w-soft F]\n"
              "       [--w-hard F] [--w-feature F] [--w-relation F] [--fresh]\n"
              "       [the options of train but --fresh and --reinit-head]\n"
              "                         Train a smaller student from the teacher; SPEC is\n"
              "                         \"layers=2,hidden=128,heads=4,ffn=512\"\n"
              "\n"
              "dsad verbs:\n"
              "  list [--json]          Models in dsad's store: name, loaded, arch, hidden, labels\n"
              "  ps [--json]            Open sessions: id, owner, uid, requests, failures, shm bytes\n"
              "  status [--json]        dsad's version, models, sessions, queue, counters, and its\n"
              "                         policy, power and each loaded model's variant\n"
              "  load NAME              Map a model in dsad (root, or polkit's org.dsa.manage-models)\n"
              "  unload NAME            Unmap a model in dsad (as load)\n"
              "  policy show [--json]   dsad's adaptive policy, power and load, and every loaded\n"
              "                         model's variants: accuracy, latency, energy, served\n"
              "  policy set [--latency-target MS] [--power-budget W] [--min-accuracy F]\n"
              "       [--mode adaptive|fixed:VARIANT]\n"
              "                         Change dsad's policy (root, or polkit's org.dsa.policy)\n"
              "\n"
              "Options:\n"
              "  -m, --model MODEL      GGUF file, Hugging Face folder, or name of dsad's model\n"
              "  -o, --output FILE      Where import, optimize, train and distill write their GGUF\n"
              "                         file\n"
              "  --threads N            Threads for an in-process forward pass (default: every\n"
              "                         online core; ignored when dsad runs the model)\n"
              "  --bus BUS              The bus dsad is on: system, session or a D-Bus address\n"
              "                         (default: $DSA_BUS_ADDRESS, else system); before the verb\n"
              "                         or among its options\n"
              "\n"
              "Without TEXT arguments, texts are read from standard input, one per line.\n"
              "--json prints one JSON object per input (JSON Lines).\n"
              "Exit status: 0 success, 1 failure, 2 usage error.\n"
              "See dsactl(1).\n",
              f);
}

int main(int argc, char **argv) {
        int i = 1;

        dsa_malloc_keep_buffers();

        /* Global options, before the verb. */
        while (i < argc && argv[i][0] == '-') {
                if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                        dsactl_help(stdout);
                        return 0;
                }
                if (!strcmp(argv[i], "--version")) {
                        printf("dsactl %s\n", DSA_VERSION);
                        return 0;
                }
                if (!strcmp(argv[i], "--bus")) {
                        if (i + 1 >= argc) {
                                fprintf(stderr, "dsactl: --bus needs a value (see dsactl --help)\n");
                                return 2;
                        }
                        cli_bus = argv[i + 1];
                        i += 2;
                        continue;
                }
                if (!strncmp(argv[i], "--bus=", 6)) {
                        cli_bus = argv[i] + 6;
                        i++;
                        continue;
                }
                fprintf(stderr, "dsactl: unknown option '%s' (see dsactl --help)\n", argv[i]);
                return 2;
        }
        if (i >= argc) {
                dsactl_help(stderr);
                return 2;
        }
        if (!strcmp(argv[i], "help")) {
                dsactl_help(stdout);
                return 0;
        }
        for (size_t v = 0; v < sizeof(verbs) / sizeof(verbs[0]); v++)
                if (!strcmp(argv[i], verbs[v].name)) {
                        optind = 0; /* each verb parses its own options */
                        return verbs[v].run(argc - i, argv + i);
                }
        fprintf(stderr, "dsactl: unknown verb '%s' (see dsactl --help)\n", argv[i]);
        return 2;
}
