/* See print.h. */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "print.h"
#include "util.h"

static void print_vector(const float *v, size_t C) {
        for (size_t j = 0; j < C; j++)
                printf("%s%.7g", j ? " " : "", v[j]);
        putchar('\n');
}

static struct json_object *json_vector(const float *v, size_t C) {
        struct json_object *a = json_object_new_array_ext((int) C);

        for (size_t j = 0; j < C; j++)
                json_object_array_add(a, cli_json_float(v[j]));
        return a;
}

void cli_print_tokens(const char *text, const int32_t *ids, const char *const *tokens, size_t n, bool json) {
        if (json) {
                struct json_object *obj = json_object_new_object();
                struct json_object *jids = json_object_new_array_ext((int) n);
                struct json_object *jtoks = json_object_new_array_ext((int) n);

                for (size_t j = 0; j < n; j++) {
                        json_object_array_add(jids, json_object_new_int(ids[j]));
                        json_object_array_add(jtoks, json_object_new_string(tokens[j] ? tokens[j] : ""));
                }
                json_object_object_add(obj, "text", json_object_new_string(text));
                json_object_object_add(obj, "ids", jids);
                json_object_object_add(obj, "tokens", jtoks);
                cli_json_print(obj);
                return;
        }
        for (size_t j = 0; j < n; j++)
                printf("%s%s", j ? " " : "", tokens[j] ? tokens[j] : "");
        putchar('\n');
        for (size_t j = 0; j < n; j++)
                printf("%s%d", j ? " " : "", ids[j]);
        putchar('\n');
}

static void softmax(const float *logits, size_t L, double *probs) {
        double mx = -INFINITY, sum = 0;

        for (size_t j = 0; j < L; j++)
                mx = fmax(mx, logits[j]);
        for (size_t j = 0; j < L; j++)
                sum += probs[j] = exp((double) logits[j] - mx);
        for (size_t j = 0; j < L; j++)
                probs[j] /= sum;
}

void cli_print_classify(const char *text, const float *logits, size_t L, const char *const *labels,
                        const char *variant, bool json) {
        double probs_small[16], *probs = L <= 16 ? probs_small : malloc(L * sizeof(double));
        char fallback[32];
        const char *label;
        size_t best = 0;

        if (!probs) {
                fprintf(stderr, "dsactl: out of memory\n");
                exit(1);
        }
        softmax(logits, L, probs);
        for (size_t j = 1; j < L; j++)
                if (logits[j] > logits[best])
                        best = j;
        if (labels && labels[best])
                label = labels[best];
        else {
                snprintf(fallback, sizeof(fallback), "LABEL_%zu", best);
                label = fallback;
        }
        if (json) {
                struct json_object *obj = json_object_new_object();
                struct json_object *jl = json_object_new_array_ext((int) L);
                struct json_object *jp = json_object_new_array_ext((int) L);

                for (size_t j = 0; j < L; j++) {
                        json_object_array_add(jl, cli_json_float(logits[j]));
                        json_object_array_add(jp, cli_json_float(probs[j]));
                }
                json_object_object_add(obj, "text", json_object_new_string(text));
                json_object_object_add(obj, "label", json_object_new_string(label));
                json_object_object_add(obj, "label_id", json_object_new_int((int) best));
                json_object_object_add(obj, "logits", jl);
                json_object_object_add(obj, "probs", jp);
                if (variant)
                        json_object_object_add(obj, "variant", json_object_new_string(variant));
                cli_json_print(obj);
        } else
                printf("%s\t%.4f\t%s\n", label, probs[best], text);
        if (probs != probs_small)
                free(probs);
}

void cli_print_embedding(const char *text, const float *v, size_t C, bool json) {
        if (json) {
                struct json_object *obj = json_object_new_object();

                json_object_object_add(obj, "text", json_object_new_string(text));
                json_object_object_add(obj, "embedding", json_vector(v, C));
                cli_json_print(obj);
        } else
                print_vector(v, C);
}

void cli_print_hidden(const char *text, const float *hidden, size_t T, size_t C, bool json) {
        if (json) {
                struct json_object *obj = json_object_new_object();
                struct json_object *rows = json_object_new_array_ext((int) T);

                for (size_t t = 0; t < T; t++)
                        json_object_array_add(rows, json_vector(hidden + t * C, C));
                json_object_object_add(obj, "text", json_object_new_string(text));
                json_object_object_add(obj, "hidden", rows);
                cli_json_print(obj);
        } else
                for (size_t t = 0; t < T; t++)
                        print_vector(hidden + t * C, C);
}
