#include "tokenizer/bpe.h"

#include "tokenizer/merge_heap.h"

#include <stdlib.h>
#include <string.h>

uint32_t bpe_byte_to_cp(uint8_t b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    /* the 68 others, in byte order, from U+0100 */
    uint32_t k = b <= 32 ? b : b <= 160 ? 33u + (b - 127u) : 67u;
    return 256 + k;
}

int bpe_cp_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    uint32_t k = cp - 256;
    if (k <= 32) return (int)k;
    if (k <= 66) return (int)(127 + (k - 33));
    return 173;
}

struct bpe_sym {
    int32_t id;
    int32_t prev, next;
};

static int try_pair(const struct vocab *v, const struct bpe_sym *sym, int32_t l,
                    struct merge_heap *h)
{
    if (l < 0 || sym[l].next < 0) return 0;
    int32_t r = sym[l].next;
    uint32_t rank;
    int32_t res;
    if (!vocab_merge(v, sym[l].id, sym[r].id, &rank, &res)) return 0;
    struct merge_cand c = {rank, (uint32_t)l, sym[l].id, sym[r].id};
    return merge_heap_push(h, c);
}

/* A word as its byte-level text (for the ignore_merges whole-word lookup). */
static int32_t whole_word(const struct vocab *v, const char *w, size_t len)
{
    char tmp[256];
    if (len * 2 > sizeof(tmp)) return -1; /* longer than any token */
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t cp = bpe_byte_to_cp((uint8_t)w[i]);
        if (cp < 0x80) {
            tmp[o++] = (char)cp;
        } else {
            tmp[o++] = (char)(0xC0 | (cp >> 6));
            tmp[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return vocab_find(v, tmp, o);
}

int bpe_encode_word(const struct vocab *v, const char *word, size_t len, struct tok_ids *out)
{
    if (len == 0) return 0;
    if (len == 1) {
        int32_t id = vocab_byte_token(v, (uint8_t)word[0]);
        if (id < 0) id = vocab_unk(v);
        return id >= 0 ? tok_ids_push(out, id) : 0;
    }
    if (vocab_ignore_merges(v)) {
        int32_t id = whole_word(v, word, len);
        if (id >= 0) return tok_ids_push(out, id);
    }
    struct bpe_sym stack_sym[64];
    struct merge_cand stack_cand[64];
    struct bpe_sym *sym = len <= 64 ? stack_sym : malloc(len * sizeof(*sym));
    struct merge_heap h;
    merge_heap_init(&h, stack_cand, 64);
    int rc = ST_ENOMEM;
    if (!sym) return rc;
    for (size_t i = 0; i < len; i++)
        sym[i] = (struct bpe_sym){vocab_byte_token(v, (uint8_t)word[i]), (int32_t)i - 1,
                                  i + 1 < len ? (int32_t)i + 1 : -1};
    for (size_t i = 0; i + 1 < len; i++)
        if ((rc = try_pair(v, sym, (int32_t)i, &h))) goto out;
    while (h.n) {
        struct merge_cand c = merge_heap_pop(&h);
        struct bpe_sym *l = &sym[c.left];
        if (l->id != c.a || l->next < 0 || sym[l->next].id != c.b) continue;
        struct bpe_sym *r = &sym[l->next];
        uint32_t rank;
        int32_t res;
        vocab_merge(v, c.a, c.b, &rank, &res);
        l->id = res;
        r->id = -2; /* dead */
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = (int32_t)c.left;
        if ((rc = try_pair(v, sym, l->prev, &h)) || (rc = try_pair(v, sym, (int32_t)c.left, &h)))
            goto out;
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        int32_t id = sym[i].id >= 0 ? sym[i].id : vocab_unk(v);
        if (id >= 0 && (rc = tok_ids_push(out, id))) goto out;
    }
    rc = 0;
out:
    if (sym != stack_sym) free(sym);
    merge_heap_free(&h);
    return rc;
}
