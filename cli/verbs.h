/* dsactl's verbs. Each takes the arguments after the verb name (argv[0] is the verb) and
 * returns the process exit code: 0 success, 1 failure (one line on stderr), 2 usage error. */
#pragma once

#include <stdio.h>

/* Prints dsactl --help to f. */
void dsactl_help(FILE *f);

int verb_tokenize(int argc, char **argv);
int verb_classify(int argc, char **argv);
int verb_embed(int argc, char **argv);
int verb_import(int argc, char **argv);
int verb_bench(int argc, char **argv);
/* dsactl bench --attention M1,M2,... (bench-attention.c), called by verb_bench. */
int bench_attention(int argc, char **argv);
/* eval.c: accuracy on a GLUE dev set. */
int verb_eval(int argc, char **argv);
/* optimize.c: make a variant; show.c: describe a model and its variants. */
int verb_optimize(int argc, char **argv);
int verb_show(int argc, char **argv);
/* train.c: fine-tuning (and QAT) and distillation of a BERT classifier. */
int verb_train(int argc, char **argv);
int verb_distill(int argc, char **argv);
/* online.c: dsad's control verbs. */
int verb_list(int argc, char **argv);
int verb_ps(int argc, char **argv);
int verb_status(int argc, char **argv);
int verb_load(int argc, char **argv);
int verb_unload(int argc, char **argv);
/* policy.c: dsad's adaptive policy (policy show, policy set). */
int verb_policy(int argc, char **argv);
