/* Hugging Face BERT folder import: config.json (json-c) gives the architecture, the safetensors
 * weights (one file or a sharded set) are mapped onto llama.cpp's tensor names for the shared
 * loader in bert.c, with or without the "bert." prefix and with TF-era gamma/beta LayerNorm
 * names, and the tokenizer comes from tokenizer.json, else vocab.txt with tokenizer_config.json's
 * options. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "bert.h"
#include "llama.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "json-util.h"

#define HF_MAX_JSON_BYTES (UINT64_C(1) << 30) /* tokenizer.json of big vocabularies is ~10 MB */


static int path_join(char *buf, size_t n, const char *dir, const char *name) {
        int k = snprintf(buf, n, "%s/%s", dir, name);
        if (k < 0 || (size_t) k >= n)
                return dsa__error(-ENAMETOOLONG, "path '%s/%s' is too long", dir, name);
        return 0;
}

/* Reads a whole (small) file; -ENOENT when absent, so callers can fall back. */
static int read_file(const char *path, char **ret, size_t *ret_len) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        struct stat st;

        if (!f)
                return -errno;
        if (fstat(fileno(f), &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size > HF_MAX_JSON_BYTES)
                return dsa__error(-EFBIG, "'%s' is not a regular file of sane size", path);
        size_t n = (size_t) st.st_size;
        _cleanup_free_ char *buf = malloc(n + 1);
        if (!buf)
                return -ENOMEM;
        if (fread(buf, 1, n, f) != n)
                return dsa__error(-EIO, "short read on '%s'", path);
        buf[n] = 0;
        *ret = TAKE_PTR(buf);
        *ret_len = n;
        return 0;
}

/* JSON text of len bytes; label names it in reasons. */
static int parse_json(const char *text, size_t len, const char *label, struct json_object **ret) {
        _cleanup_(json_object_putp) struct json_object *tokener_out = NULL;
        struct json_tokener *tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        tokener_out = json_tokener_parse_ex(tok, text, (int) MIN(len, (size_t) INT32_MAX));
        enum json_tokener_error jerr = json_tokener_get_error(tok);
        json_tokener_free(tok);
        if (!tokener_out || jerr != json_tokener_success)
                return dsa__error(-EBADMSG, "'%s' is not valid JSON: %s", label,
                                  json_tokener_error_desc(jerr));
        *ret = TAKE_PTR(tokener_out);
        return 0;
}

static int parse_json_file(const char *path, struct json_object **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t len;
        int r;

        r = read_file(path, &buf, &len);
        if (r < 0)
                return r;
        return parse_json(buf, len, path, ret);
}

/* A positive integer that fits uint32_t; -ENOENT when absent and not required. */
static int cfg_u32(struct json_object *cfg, const char *key, bool required, uint32_t *ret) {
        struct json_object *v;

        if (!json_object_object_get_ex(cfg, key, &v) || json_object_is_type(v, json_type_null)) {
                if (required)
                        return dsa__error(-EBADMSG, "config.json has no '%s'", key);
                return -ENOENT;
        }
        if (!json_object_is_type(v, json_type_int))
                return dsa__error(-EBADMSG, "config.json: '%s' is not an integer", key);
        int64_t x = json_object_get_int64(v);
        if (x <= 0 || x > UINT32_MAX)
                return dsa__error(-EBADMSG, "config.json: '%s' = %lld is out of range", key, (long long) x);
        *ret = (uint32_t) x;
        return 0;
}

static const char *cfg_str(struct json_object *cfg, const char *key) {
        struct json_object *v;
        if (!json_object_object_get_ex(cfg, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

static int parse_config(struct json_object *j, struct dsa_bert_config *c, bool *ret_wants_head) {
        const char *s;
        struct json_object *v;
        int r;

        if (!json_object_is_type(j, json_type_object))
                return dsa__error(-EBADMSG, "config.json is not a JSON object");
        s = cfg_str(j, "model_type");
        if (!s || strcmp(s, "bert") != 0)
                return dsa__error(-EOPNOTSUPP, "config.json: model_type '%s' is not supported (only 'bert')",
                                  s ? s : "(none)");

        if ((r = cfg_u32(j, "hidden_size", true, &c->n_embd)) < 0 ||
            (r = cfg_u32(j, "num_attention_heads", true, &c->n_head)) < 0 ||
            (r = cfg_u32(j, "num_hidden_layers", true, &c->n_layer)) < 0 ||
            (r = cfg_u32(j, "intermediate_size", true, &c->n_ff)) < 0 ||
            (r = cfg_u32(j, "max_position_embeddings", true, &c->n_ctx)) < 0 ||
            (r = cfg_u32(j, "vocab_size", true, &c->n_vocab)) < 0)
                return r;
        c->n_type = 2;
        r = cfg_u32(j, "type_vocab_size", false, &c->n_type);
        if (r < 0 && r != -ENOENT)
                return r;

        c->eps = 1e-12f;
        if (json_object_object_get_ex(j, "layer_norm_eps", &v)) {
                if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
                        return dsa__error(-EBADMSG, "config.json: 'layer_norm_eps' is not a number");
                c->eps = (float) json_object_get_double(v);
        }

        s = cfg_str(j, "hidden_act");
        if (!s || strcmp(s, "gelu") == 0)
                c->act = DSA_ACT_GELU_ERF;
        else if (strcmp(s, "gelu_new") == 0 || strcmp(s, "gelu_pytorch_tanh") == 0)
                c->act = DSA_ACT_GELU_TANH;
        else
                return dsa__error(-EOPNOTSUPP, "config.json: hidden_act '%s' is not supported "
                                  "(gelu, gelu_new, gelu_pytorch_tanh)", s);

        s = cfg_str(j, "position_embedding_type");
        if (s && strcmp(s, "absolute") != 0)
                return dsa__error(-EOPNOTSUPP, "config.json: position_embedding_type '%s' is not supported "
                                  "(only 'absolute')", s);
        if (json_object_object_get_ex(j, "is_decoder", &v) && json_object_get_boolean(v))
                return dsa__error(-EOPNOTSUPP, "config.json: decoder BERT (is_decoder) is not supported");

        *ret_wants_head = false;
        if (json_object_object_get_ex(j, "architectures", &v) && json_object_is_type(v, json_type_array))
                for (size_t i = 0; i < json_object_array_length(v); i++) {
                        const char *a = json_object_get_string(json_object_array_get_idx(v, i));
                        if (a && strstr(a, "ForSequenceClassification"))
                                *ret_wants_head = true;
                }
        return 0;
}

int dsa__hf_parse_config(const char *json, size_t len, const char *label,
                         struct dsa_bert_config *ret_cfg, bool *ret_wants_head,
                         struct json_object **ret_json) {
        _cleanup_(json_object_putp) struct json_object *j = NULL;
        struct dsa_bert_config c = { 0 };
        bool wants_head = false;
        int r;

        if (!json || !label || !ret_cfg || !ret_wants_head)
                return -EINVAL;
        r = parse_json(json, len, label, &j);
        if (r < 0)
                return r;
        r = parse_config(j, &c, &wants_head);
        if (r < 0)
                return r;
        *ret_cfg = c;
        *ret_wants_head = wants_head;
        if (ret_json)
                *ret_json = TAKE_PTR(j);
        return 0;
}

struct name_map {
        const char *ll, *hf;
};

/* ll (a llama.cpp tensor name) -> out through the prefix tables: top-level names, then
 * "blk.N.<rest>" as layer_fmt (with N) followed by the mapped rest. -ENOENT when none fits. */
static int map_name(const struct name_map *top, size_t n_top, const struct name_map *blk, size_t n_blk,
                    const char *layer_fmt, const char *ll, char *out, size_t n) {
        char layer[48];
        int k = -1;

        for (size_t i = 0; i < n_top; i++) {
                size_t p = strlen(top[i].ll);
                if (strncmp(ll, top[i].ll, p) == 0) {
                        k = snprintf(out, n, "%s%s", top[i].hf, ll + p);
                        break;
                }
        }
        if (k < 0 && strncmp(ll, "blk.", 4) == 0) {
                char *end;
                unsigned long L = strtoul(ll + 4, &end, 10);
                snprintf(layer, sizeof(layer), layer_fmt, L);
                if (*end == '.')
                        for (size_t i = 0; i < n_blk; i++) {
                                size_t p = strlen(blk[i].ll);
                                if (strncmp(end + 1, blk[i].ll, p) == 0) {
                                        k = snprintf(out, n, "%s%s%s", layer, blk[i].hf, end + 1 + p);
                                        break;
                                }
                        }
        }
        return k >= 0 && (size_t) k < n ? 0 : -ENOENT;
}

/* Maps a llama.cpp BERT tensor name onto Hugging Face's, without the "bert." prefix. */
static int hf_name(const char *ll, char *out, size_t n) {
        static const struct name_map top[] = {
                { "token_embd_norm.", "embeddings.LayerNorm." },
                { "token_embd.", "embeddings.word_embeddings." },
                { "position_embd.", "embeddings.position_embeddings." },
                { "token_types.", "embeddings.token_type_embeddings." },
                { "cls.output.", "classifier." },
                { "cls.", "pooler.dense." },
        }, blk[] = {
                { "attn_q.", "attention.self.query." },
                { "attn_k.", "attention.self.key." },
                { "attn_v.", "attention.self.value." },
                { "attn_output_norm.", "attention.output.LayerNorm." },
                { "attn_output.", "attention.output.dense." },
                { "ffn_up.", "intermediate.dense." },
                { "ffn_down.", "output.dense." },
                { "layer_output_norm.", "output.LayerNorm." },
        };
        return map_name(top, ELEMENTSOF(top), blk, ELEMENTSOF(blk), "encoder.layer.%lu.", ll, out, n);
}

static const struct dsa_tensor_view *hf_find(const struct dsa_safetensors *st, const char *hf) {
        char buf[192];
        const struct dsa_tensor_view *v = dsa_safetensors_find(st, hf);

        if (v || strncmp(hf, "classifier.", 11) == 0)
                return v;
        snprintf(buf, sizeof(buf), "bert.%s", hf);
        return dsa_safetensors_find(st, buf);
}

struct hf_source {
        const struct dsa_safetensors *st;
        char missed[160]; /* HF name of the last tensor not found, for the error message */
};

static const struct dsa_tensor_view *hf_lookup(void *userdata, const char *ll) {
        struct hf_source *src = userdata;
        const struct dsa_safetensors *st = src->st;
        const struct dsa_tensor_view *v;
        char hf[160], alt[160];
        size_t n;

        if (hf_name(ll, hf, sizeof(hf)) < 0)
                return NULL;
        v = hf_find(st, hf);
        if (v)
                return v;
        snprintf(src->missed, sizeof(src->missed), "%s", hf);
        /* Checkpoints converted from TensorFlow call LayerNorm's weight/bias gamma/beta. */
        n = strlen(hf);
        if (strstr(hf, "LayerNorm.") && n < sizeof(alt) - 8) {
                const char *suffix = NULL;
                if (n > 7 && strcmp(hf + n - 7, ".weight") == 0)
                        suffix = "gamma", n -= 6;
                else if (n > 5 && strcmp(hf + n - 5, ".bias") == 0)
                        suffix = "beta", n -= 4;
                if (suffix) {
                        snprintf(alt, sizeof(alt), "%.*s%s", (int) n, hf, suffix);
                        return hf_find(st, alt);
                }
        }
        return NULL;
}

static int load_labels(struct json_object *j, struct dsa_bert *b) {
        const uint32_t NL = b->cfg.n_labels;
        struct json_object *id2label = NULL;
        char buf[32];

        if (NL == 0)
                return 0;
        b->labels = calloc(NL, sizeof(char *));
        if (!b->labels)
                return -ENOMEM;
        if (json_object_object_get_ex(j, "id2label", &id2label) &&
            (!json_object_is_type(id2label, json_type_object) || json_object_object_length(id2label) != (int) NL))
                id2label = NULL; /* a default 2-label id2label next to another head size: ignore it */
        for (uint32_t i = 0; i < NL; i++) {
                struct json_object *v = NULL;
                const char *name = NULL;
                snprintf(buf, sizeof(buf), "%u", i);
                if (id2label && json_object_object_get_ex(id2label, buf, &v) &&
                    json_object_is_type(v, json_type_string))
                        name = json_object_get_string(v);
                if (!name) {
                        snprintf(buf, sizeof(buf), "LABEL_%u", i);
                        name = buf;
                }
                b->labels[i] = strdup(name);
                if (!b->labels[i])
                        return -ENOMEM;
        }
        return 0;
}

static int load_tokenizer(const char *dir, struct dsa_tokenizer **ret) {
        char path[4096];
        _cleanup_free_ char *buf = NULL;
        size_t len;
        int r;

        if ((r = path_join(path, sizeof(path), dir, "tokenizer.json")) < 0)
                return r;
        r = read_file(path, &buf, &len);
        if (r >= 0)
                return dsa_tokenizer_from_hf_json(buf, len, ret);
        if (r != -ENOENT)
                return r;

        struct dsa_tokenizer_options o = DSA_TOKENIZER_OPTIONS_BERT;
        _cleanup_(json_object_putp) struct json_object *tc = NULL;
        if ((r = path_join(path, sizeof(path), dir, "tokenizer_config.json")) < 0)
                return r;
        r = parse_json_file(path, &tc);
        if (r < 0 && r != -ENOENT)
                return r;
        if (tc) {
                struct json_object *v;
                if (json_object_object_get_ex(tc, "do_lower_case", &v) && json_object_is_type(v, json_type_boolean))
                        o.lowercase = json_object_get_boolean(v);
                if (json_object_object_get_ex(tc, "strip_accents", &v) && json_object_is_type(v, json_type_boolean))
                        o.strip_accents = json_object_get_boolean(v) ? 1 : 0;
                if (json_object_object_get_ex(tc, "tokenize_chinese_chars", &v) &&
                    json_object_is_type(v, json_type_boolean))
                        o.handle_chinese_chars = json_object_get_boolean(v);
        }
        if ((r = path_join(path, sizeof(path), dir, "vocab.txt")) < 0)
                return r;
        if (access(path, F_OK) < 0) {
                *ret = NULL; /* no tokenizer: the model still runs on token ids */
                return 0;
        }
        return dsa_tokenizer_from_vocab_txt(path, &o, ret);
}

/* The folder's tokenizer (NULL when it has none), no larger than the model's vocabulary. */
static int load_tokenizer_for(const char *dir, uint32_t n_vocab, struct dsa_tokenizer **ret) {
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *tok = NULL;
        int r = load_tokenizer(dir, &tok);

        if (r < 0)
                return r;
        if (tok && dsa_tokenizer_n_vocab(tok) > n_vocab)
                return dsa__error(-EBADMSG, "tokenizer has %zu tokens, more than the model's vocab_size %u",
                                  dsa_tokenizer_n_vocab(tok), n_vocab);
        *ret = TAKE_PTR(tok);
        return 0;
}

int dsa__hf_import(const char *dir, struct dsa_bert **ret_bert, struct dsa_tokenizer **ret_tok) {
        _cleanup_(json_object_putp) struct json_object *j = NULL;
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *st = NULL;
        _cleanup_(dsa__bert_freep) struct dsa_bert *b = NULL;
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *tok = NULL;
        _cleanup_free_ char *text = NULL;
        struct dsa_bert_config c = { 0 };
        const struct dsa_tensor_view *v;
        char path[4096];
        bool wants_head = false;
        size_t len;
        int r;

        if ((r = path_join(path, sizeof(path), dir, "config.json")) < 0)
                return r;
        r = read_file(path, &text, &len);
        if (r == -ENOENT)
                return dsa__error(r, "'%s' has no config.json", dir);
        if (r < 0)
                return r;
        r = dsa__hf_parse_config(text, len, path, &c, &wants_head, &j);
        if (r < 0)
                return r;

        r = dsa_safetensors_open_dir(dir, &st);
        if (r < 0)
                return r;

        struct hf_source src = { .st = st };
        c.has_pooler = hf_lookup(&src, "cls.weight") != NULL;
        v = hf_lookup(&src, "cls.output.weight");
        if (v) {
                if (v->n_dims != 2 || v->ne[1] == 0 || v->ne[1] > UINT32_MAX)
                        return dsa__error(-EBADMSG, "tensor '%s' is not a (labels, hidden) matrix", v->name);
                c.n_labels = (uint32_t) v->ne[1];
        } else if (wants_head)
                return dsa__error(-ENOENT, "config.json names a sequence classifier but 'classifier.weight' "
                                  "is missing");

        src.missed[0] = 0;
        r = dsa__bert_load(&c, NULL, hf_lookup, &src, &b);
        if (r == -ENOENT && src.missed[0])
                return dsa__error(r, "tensor '%s' (or 'bert.%s') is missing", src.missed, src.missed);
        if (r < 0)
                return r;
        r = load_labels(j, b);
        if (r < 0)
                return r;
        r = load_tokenizer_for(dir, c.n_vocab, &tok);
        if (r < 0)
                return r;

        *ret_bert = TAKE_PTR(b);
        *ret_tok = TAKE_PTR(tok);
        return 0;
}

/* ---- Llama (LlamaForCausalLM) */

int dsa__hf_llama_config(const struct json_object *jc, struct dsa_llama_config *ret) {
        struct json_object *j = (struct json_object *) jc, *v, *rp;
        struct dsa_llama_config c = { .eps = 1e-6f, .rope_theta = 10000.0f };
        const char *s;
        int r;

        if ((r = cfg_u32(j, "hidden_size", true, &c.n_embd)) < 0 ||
            (r = cfg_u32(j, "num_attention_heads", true, &c.n_head)) < 0 ||
            (r = cfg_u32(j, "num_hidden_layers", true, &c.n_layer)) < 0 ||
            (r = cfg_u32(j, "intermediate_size", true, &c.n_ff)) < 0 ||
            (r = cfg_u32(j, "max_position_embeddings", true, &c.n_ctx)) < 0 ||
            (r = cfg_u32(j, "vocab_size", true, &c.n_vocab)) < 0)
                return r;
        c.n_head_kv = c.n_head;
        if ((r = cfg_u32(j, "num_key_value_heads", false, &c.n_head_kv)) < 0 && r != -ENOENT)
                return r;
        c.head_dim = c.n_head ? c.n_embd / c.n_head : 0;
        if ((r = cfg_u32(j, "head_dim", false, &c.head_dim)) < 0 && r != -ENOENT)
                return r;
        if (json_object_object_get_ex(j, "rms_norm_eps", &v)) {
                if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
                        return dsa__error(-EBADMSG, "config.json: 'rms_norm_eps' is not a number");
                c.eps = (float) json_object_get_double(v);
        }
        /* rope_theta at the top (transformers < 5) or in rope_parameters (>= 5) */
        rp = NULL;
        if (json_object_object_get_ex(j, "rope_parameters", &rp) && json_object_is_type(rp, json_type_object)) {
                s = cfg_str(rp, "rope_type");
                if (s && strcmp(s, "default") != 0)
                        return dsa__error(-EOPNOTSUPP, "config.json: rope_type '%s' is not supported (only "
                                          "'default')", s);
        } else
                rp = j;
        if (json_object_object_get_ex(rp, "rope_theta", &v)) {
                if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
                        return dsa__error(-EBADMSG, "config.json: 'rope_theta' is not a number");
                c.rope_theta = (float) json_object_get_double(v);
        }
        if (json_object_object_get_ex(j, "rope_scaling", &v) && !json_object_is_type(v, json_type_null))
                return dsa__error(-EOPNOTSUPP, "config.json: rope_scaling is not supported");
        s = cfg_str(j, "hidden_act");
        if (s && strcmp(s, "silu") != 0)
                return dsa__error(-EOPNOTSUPP, "config.json: hidden_act '%s' is not supported (only 'silu')", s);
        if ((json_object_object_get_ex(j, "attention_bias", &v) && json_object_get_boolean(v)) ||
            (json_object_object_get_ex(j, "mlp_bias", &v) && json_object_get_boolean(v)))
                return dsa__error(-EOPNOTSUPP, "config.json: attention_bias / mlp_bias are not supported");
        *ret = c;
        return 0;
}

int dsa__hf_llama_name(const char *ll, char *out, size_t n) {
        static const struct name_map top[] = {
                { "token_embd.", "model.embed_tokens." },
                { "output_norm.", "model.norm." },
                { "output.", "lm_head." },
        }, blk[] = {
                { "attn_norm.", "input_layernorm." },   { "attn_q.", "self_attn.q_proj." },
                { "attn_k.", "self_attn.k_proj." },      { "attn_v.", "self_attn.v_proj." },
                { "attn_output.", "self_attn.o_proj." }, { "ffn_norm.", "post_attention_layernorm." },
                { "ffn_gate.", "mlp.gate_proj." },       { "ffn_up.", "mlp.up_proj." },
                { "ffn_down.", "mlp.down_proj." },
        };
        return map_name(top, ELEMENTSOF(top), blk, ELEMENTSOF(blk), "model.layers.%lu.", ll, out, n);
}

static const struct dsa_tensor_view *hf_llama_lookup(void *userdata, const char *ll) {
        struct hf_source *src = userdata;
        const struct dsa_tensor_view *v;
        char hf[160];

        if (dsa__hf_llama_name(ll, hf, sizeof(hf)) < 0)
                return NULL;
        v = dsa_safetensors_find(src->st, hf);
        if (!v && strcmp(ll, "output.weight") != 0) /* lm_head may be tied */
                snprintf(src->missed, sizeof(src->missed), "%s", hf);
        return v;
}

bool dsa__hf_is_llama(const char *dir) {
        _cleanup_(json_object_putp) struct json_object *j = NULL;
        char path[4096];

        if (path_join(path, sizeof(path), dir, "config.json") < 0)
                return false;
        if (parse_json_file(path, &j) < 0 || !json_object_is_type(j, json_type_object))
                return false;
        const char *s = cfg_str(j, "model_type");
        return s && strcmp(s, "llama") == 0;
}

int dsa__hf_import_llama(const char *dir, struct dsa_llama **ret_llama, struct dsa_tokenizer **ret_tok) {
        _cleanup_(json_object_putp) struct json_object *j = NULL;
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *st = NULL;
        _cleanup_(dsa__llama_freep) struct dsa_llama *l = NULL;
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *tok = NULL;
        struct dsa_llama_config c;
        char path[4096];
        int r;

        if ((r = path_join(path, sizeof(path), dir, "config.json")) < 0)
                return r;
        r = parse_json_file(path, &j);
        if (r < 0)
                return r;
        if (!json_object_is_type(j, json_type_object))
                return dsa__error(-EBADMSG, "config.json is not a JSON object");
        r = dsa__hf_llama_config(j, &c);
        if (r < 0)
                return r;
        r = dsa_safetensors_open_dir(dir, &st);
        if (r < 0)
                return r;
        struct hf_source src = { .st = st };
        r = dsa__llama_load(&c, hf_llama_lookup, &src, true, &l);
        if (r == -ENOENT && src.missed[0])
                return dsa__error(r, "tensor '%s' is missing", src.missed);
        if (r < 0)
                return r;
        r = load_tokenizer_for(dir, c.n_vocab, &tok);
        if (r < 0)
                return r;
        *ret_llama = TAKE_PTR(l);
        *ret_tok = TAKE_PTR(tok);
        return 0;
}
