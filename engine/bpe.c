/* Byte-level BPE: the merge table, HF's merge_all() over one word, and GPT-2's byte-to-unicode
 * mapping. Merges are resolved to ids once, at load; a word is merged with a binary heap of
 * candidate pairs ordered by (rank, position), and an entry whose pair has changed since it was
 * queued is skipped when popped, exactly as HF's Word::merge_all does. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "bpe.h"

struct dsa__bpe_slot {
        int32_t left, right; /* left < 0: empty */
        int32_t rank, id;
};

struct sym {
        int32_t id;          /* < 0: merged into its left neighbour */
        int32_t prev, next;  /* -1 at the ends */
};

struct cand {
        int32_t rank, pos, id;
};

static uint64_t hash_pair(int32_t left, int32_t right) {
        uint64_t h = ((uint64_t) (uint32_t) left << 32 | (uint32_t) right) * 0x9e3779b97f4a7c15ULL;
        return h ^ (h >> 31);
}

int dsa__bpe_init(struct dsa__bpe *b, const struct dsa__vocab *vocab, size_t max_merges) {
        size_t n_slots = 16;

        *b = (struct dsa__bpe) { .vocab = vocab, .unk_id = -1 };
        memset(b->byte_id, 0xff, sizeof(b->byte_id));
        if (max_merges > INT32_MAX / 4)
                return -E2BIG;
        while (n_slots < 2 * max_merges)
                n_slots *= 2;
        b->slots = malloc(n_slots * sizeof(*b->slots));
        b->merges = malloc((max_merges ? max_merges : 1) * 2 * sizeof(int32_t));
        if (!b->slots || !b->merges) {
                dsa__bpe_done(b);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n_slots; i++)
                b->slots[i].left = -1;
        b->n_slots = n_slots;
        b->max_merges = max_merges;
        return 0;
}

void dsa__bpe_done(struct dsa__bpe *b) {
        free(b->slots);
        free(b->merges);
        *b = (struct dsa__bpe) {};
}

static const struct dsa__bpe_slot *find_merge(const struct dsa__bpe *b, int32_t left, int32_t right) {
        size_t mask = b->n_slots - 1;

        for (size_t i = hash_pair(left, right) & mask;; i = (i + 1) & mask) {
                const struct dsa__bpe_slot *s = &b->slots[i];
                if (s->left < 0)
                        return NULL;
                if (s->left == left && s->right == right)
                        return s;
        }
}

int dsa__bpe_add_merge(struct dsa__bpe *b, int32_t left, int32_t right) {
        const struct dsa__vocab *v = b->vocab;
        size_t mask = b->n_slots - 1, ll, rl, i;
        _cleanup_free_ char *s = NULL;
        int32_t id;

        if (b->n_merges >= b->max_merges || left < 0 || right < 0 || (size_t) left >= v->n ||
            (size_t) right >= v->n)
                return -EINVAL;
        ll = v->lens[left];
        rl = v->lens[right];
        s = malloc(ll + rl + 1);
        if (!s)
                return -ENOMEM;
        memcpy(s, v->tokens[left], ll);
        memcpy(s + ll, v->tokens[right], rl);
        id = dsa__vocab_find(v, s, ll + rl);
        if (id < 0)
                return -ENOENT;
        for (i = hash_pair(left, right) & mask; b->slots[i].left >= 0; i = (i + 1) & mask)
                if (b->slots[i].left == left && b->slots[i].right == right)
                        break;
        b->slots[i] = (struct dsa__bpe_slot) { left, right, (int32_t) b->n_merges, id };
        b->merges[2 * b->n_merges] = left;
        b->merges[2 * b->n_merges + 1] = right;
        b->n_merges++;
        return 0;
}

/* ---- GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
 * become U+0100.. in byte order. */

static bool byte_is_printable(uint8_t c) {
        return (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae;
}

static uint32_t byte_to_cp(uint8_t c) {
        if (byte_is_printable(c))
                return c;
        if (c <= 0x20)
                return 0x100 + c;
        if (c <= 0xa0)
                return 0x100 + 0x21 + (c - 0x7f);
        return 0x143; /* 0xad */
}

static int cp_to_byte(uint32_t cp) {
        if (cp < 0x100)
                return byte_is_printable((uint8_t) cp) ? (int) cp : -1;
        if (cp <= 0x120)
                return (int) (cp - 0x100);
        if (cp <= 0x142)
                return (int) (cp - 0x121 + 0x7f);
        return cp == 0x143 ? 0xad : -1;
}

size_t dsa__bytelevel_encode(const char *s, size_t len, char *out) {
        size_t n = 0;

        for (size_t i = 0; i < len; i++) {
                uint32_t cp = byte_to_cp((uint8_t) s[i]);
                if (cp < 0x80)
                        out[n++] = (char) cp;
                else {
                        out[n++] = (char) (0xc0 | (cp >> 6));
                        out[n++] = (char) (0x80 | (cp & 0x3f));
                }
        }
        return n;
}

int dsa__bytelevel_decode(const char *s, size_t len, char *out, size_t *ret_len) {
        size_t n = 0;

        /* Every character of the mapping is one or two bytes of UTF-8. */
        for (size_t i = 0; i < len;) {
                uint8_t c = (uint8_t) s[i];
                uint32_t cp;
                int b;
                if (c < 0x80) {
                        cp = c;
                        i++;
                } else if ((c & 0xe0) == 0xc0 && i + 1 < len && ((uint8_t) s[i + 1] & 0xc0) == 0x80) {
                        cp = (uint32_t) (c & 0x1f) << 6 | ((uint8_t) s[i + 1] & 0x3f);
                        i += 2;
                } else
                        return -EILSEQ;
                b = cp_to_byte(cp);
                if (b < 0)
                        return -EILSEQ;
                out[n++] = (char) b;
        }
        *ret_len = n;
        return 0;
}

void dsa__bpe_finish(struct dsa__bpe *b) {
        for (int c = 0; c < 256; c++) {
                char s[2], byte = (char) c;
                size_t n = dsa__bytelevel_encode(&byte, 1, s);
                b->byte_id[c] = dsa__vocab_find(b->vocab, s, n);
                if (b->byte_id[c] < 0)
                        b->byte_id[c] = -1;
        }
}

/* ---- one word */

void dsa__bpe_scratch_done(struct dsa__bpe_scratch *sc) {
        free(sc->syms);
        free(sc->heap);
        free(sc->str);
        *sc = (struct dsa__bpe_scratch) {};
}

static int reserve(void **p, size_t *cap, size_t n, size_t size) {
        void *q;

        if (n <= *cap)
                return 0;
        n = MAX(n, 2 * *cap);
        if (n > SIZE_MAX / size)
                return -ENOMEM;
        q = realloc(*p, n * size);
        if (!q)
                return -ENOMEM;
        *p = q;
        *cap = n;
        return 0;
}

static bool cand_before(const struct cand *a, const struct cand *b) {
        return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct cand *h, size_t *n, struct cand c) {
        size_t i = (*n)++;

        while (i > 0 && cand_before(&c, &h[(i - 1) / 2])) {
                h[i] = h[(i - 1) / 2];
                i = (i - 1) / 2;
        }
        h[i] = c;
}

static struct cand heap_pop(struct cand *h, size_t *n) {
        struct cand top = h[0], last = h[--*n];
        size_t i = 0;

        for (;;) {
                size_t k = 2 * i + 1;
                if (k >= *n)
                        break;
                if (k + 1 < *n && cand_before(&h[k + 1], &h[k]))
                        k++;
                if (!cand_before(&h[k], &last))
                        break;
                h[i] = h[k];
                i = k;
        }
        if (*n > 0)
                h[i] = last;
        return top;
}

/* Queues the pair starting at symbol pos, when it is a merge. Each merge queues at most two
 * pairs, so the heap never holds more than 3n entries (n - 1 at the start). */
static void queue_pair(const struct dsa__bpe *b, const struct sym *syms, int32_t pos, struct cand *h,
                       size_t *n) {
        const struct dsa__bpe_slot *m;

        if (pos < 0 || syms[pos].next < 0)
                return;
        m = find_merge(b, syms[pos].id, syms[syms[pos].next].id);
        if (m)
                heap_push(h, n, (struct cand) { m->rank, pos, m->id });
}

int dsa__bpe_encode(const struct dsa__bpe *b, const char *s, size_t len, struct dsa__bpe_scratch *sc,
                    struct dsa__ids *out) {
        struct sym *syms;
        struct cand *heap;
        size_t n = 0, n_heap = 0;
        bool pending_unk = false;
        int r;

        if (len == 0)
                return 0;
        if (len > INT32_MAX / 4)
                return -E2BIG;
        if (b->ignore_merges) {
                size_t n_str;
                int32_t id;
                if ((r = reserve((void **) &sc->str, &sc->cap_str, 2 * len, 1)) < 0)
                        return r;
                n_str = dsa__bytelevel_encode(s, len, sc->str);
                id = dsa__vocab_find(b->vocab, sc->str, n_str);
                if (id >= 0)
                        return dsa__ids_push(out, id);
        }
        if ((r = reserve(&sc->syms, &sc->cap_syms, len, sizeof(struct sym))) < 0 ||
            (r = reserve(&sc->heap, &sc->cap_heap, 3 * len, sizeof(struct cand))) < 0)
                return r;
        syms = sc->syms;
        heap = sc->heap;

        /* HF's merge_word(): one symbol per character (here per byte); without a token a byte
         * becomes unk, fused with the unk before it when fuse_unk, or is dropped without unk. */
        for (size_t i = 0; i < len; i++) {
                int32_t id = b->byte_id[(uint8_t) s[i]];
                if (id < 0) {
                        if (b->unk_id < 0 || (pending_unk && b->fuse_unk))
                                continue;
                        id = b->unk_id;
                        pending_unk = true;
                } else
                        pending_unk = false;
                syms[n] = (struct sym) { id, (int32_t) n - 1, (int32_t) n + 1 };
                n++;
        }
        if (n == 0)
                return 0;
        syms[n - 1].next = -1;
        for (size_t i = 0; i + 1 < n; i++)
                queue_pair(b, syms, (int32_t) i, heap, &n_heap);

        while (n_heap > 0) {
                struct cand top = heap_pop(heap, &n_heap);
                struct sym *left = &syms[top.pos];
                const struct dsa__bpe_slot *m;
                int32_t right;
                if (left->id < 0 || left->next < 0)
                        continue;
                right = left->next;
                /* Stale: the pair at pos is no longer the one queued. */
                m = find_merge(b, left->id, syms[right].id);
                if (!m || m->id != top.id)
                        continue;
                left->id = top.id;
                left->next = syms[right].next;
                syms[right].id = -1;
                if (left->next >= 0)
                        syms[left->next].prev = top.pos;
                queue_pair(b, syms, left->prev, heap, &n_heap);
                queue_pair(b, syms, top.pos, heap, &n_heap);
        }
        for (int32_t i = 0; i >= 0; i = syms[i].next)
                if ((r = dsa__ids_push(out, syms[i].id)) < 0)
                        return r;
        return 0;
}
