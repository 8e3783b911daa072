/* dsa_model_lm_*: the decoder half of the model API (DSA_ARCH_LLAMA): forward, per-token NLL for
 * perplexity, greedy decoding. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "model-internal.h"
#include "model.h"
#include "tokenizer.h"

static int need_lm(const struct dsa_model *m) {
        if (!m)
                return -EINVAL;
        if (!m->llama)
                return dsa__error(-EOPNOTSUPP, "'%s' is not a decoder (language model)", m->source ? m->source : "model");
        return 0;
}

int dsa_model_lm_forward(const struct dsa_model *m, const int32_t *ids, size_t T, float *ret_logits,
                         float *ret_hidden, struct dsa_lm_stats *stats) {
        int r = need_lm(m);
        if (r < 0)
                return r;
        return dsa__llama_forward(m->llama, ids, T, NULL, ret_hidden, ret_logits, NULL, stats, NULL);
}

int dsa_model_lm_nll(const struct dsa_model *m, const int32_t *ids, size_t T, double *ret_nll,
                     struct dsa_lm_stats *stats) {
        int r = need_lm(m);
        if (r < 0)
                return r;
        if (T < 2 || !ret_nll)
                return dsa__error(-EINVAL, "perplexity needs at least two tokens");
        return dsa__llama_forward(m->llama, ids, T, NULL, NULL, NULL, ret_nll, stats, NULL);
}

int dsa_model_lm_generate(const struct dsa_model *m, const int32_t *ids, size_t T, size_t n, bool stop_at_eos,
                          int32_t *ret) {
        const size_t V = m && m->llama ? m->llama->cfg.n_vocab : 0;
        const int32_t eos = m && m->tok ? dsa_tokenizer_eos_id(m->tok) : -1;
        size_t len = T;
        int r = need_lm(m);

        if (r < 0)
                return r;
        if (!ids || !ret || T == 0 || T + n > m->llama->cfg.n_ctx)
                return dsa__error(-EINVAL, "prompt of %zu tokens plus %zu new ones: the model takes 1 to %u", T, n,
                                  m->llama->cfg.n_ctx);
        _cleanup_free_ float *logits = malloc((T + n) * V * sizeof(float));
        if (!logits)
                return -ENOMEM;
        memmove(ret, ids, T * sizeof(int32_t));
        /* Every step reruns the whole prefix: exact, and cheap at the lengths tests use; a key/value
         * cache would make it linear. */
        while (len < T + n) {
                r = dsa__llama_forward(m->llama, ret, len, NULL, NULL, logits, NULL, NULL, NULL);
                if (r < 0)
                        return r;
                const float *z = logits + (len - 1) * V;
                size_t best = 0;
                for (size_t j = 1; j < V; j++)
                        if (z[j] > z[best])
                                best = j;
                ret[len++] = (int32_t) best;
                if (stop_at_eos && (int32_t) best == eos)
                        break;
        }
        return (int) len;
}

int dsa_model_lm_allow_long(struct dsa_model *m, bool allow) {
        int r = need_lm(m);
        if (r < 0)
                return r;
        m->llama->allow_long = allow;
        return 0;
}
