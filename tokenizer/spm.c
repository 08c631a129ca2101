#include "tokenizer/spm.h"

#include "tokenizer/merge_heap.h"

#include <stdlib.h>
#include <string.h>

struct spm_sym {
    uint32_t start, len; /* bytes of the escaped text */
    int32_t prev, next;  /* -1 at the ends */
};

static size_t utf8_len(uint8_t c)
{
    static const uint8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[c >> 4];
}

static int try_pair(const struct vocab *v, const char *s, const struct spm_sym *sym, int32_t l,
                    struct merge_heap *h)
{
    if (l < 0 || sym[l].next < 0) return 0;
    uint32_t len = sym[l].len + sym[sym[l].next].len;
    int32_t id = vocab_find(v, s + sym[l].start, len);
    if (id < 0) return 0;
    /* highest score first; b keeps the pair's length to spot stale candidates */
    struct merge_cand c = {-(double)vocab_token_score(v, id), (uint32_t)l, 0, (int32_t)len};
    return merge_heap_push(h, c);
}

static int emit_symbol(const struct vocab *v, const char *s, const struct spm_sym *sym,
                       struct tok_ids *out)
{
    int32_t id = vocab_find(v, s + sym->start, sym->len);
    if (id >= 0) return tok_ids_push(out, id);
    int rc;
    for (uint32_t i = 0; i < sym->len; i++) {
        int32_t b = vocab_byte_token(v, (uint8_t)s[sym->start + i]);
        if (b < 0) b = vocab_unk(v);
        if (b >= 0 && (rc = tok_ids_push(out, b))) return rc;
        if (b < 0) break;
    }
    return 0;
}

int spm_encode(const struct vocab *v, const char *text, size_t len, bool prefix_space,
               struct tok_ids *out)
{
    static const char ws[3] = {'\xe2', '\x96', '\x81'};
    /* escape: ' ' -> U+2581 */
    size_t nsp = 0;
    for (size_t i = 0; i < len; i++)
        nsp += text[i] == ' ';
    size_t elen = len + 2 * nsp + (prefix_space ? 3 : 0);
    if (elen == 0) return 0;
    char *s = malloc(elen);
    struct spm_sym *sym = malloc(elen * sizeof(*sym));
    struct merge_heap h;
    merge_heap_init(&h, NULL, 0);
    int rc = ST_ENOMEM;
    if (!s || !sym) goto out;
    size_t o = 0;
    if (prefix_space) memcpy(s, ws, 3), o = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s + o, ws, 3);
            o += 3;
        } else {
            s[o++] = text[i];
        }
    }
    int32_t n = 0;
    for (size_t i = 0; i < elen;) {
        size_t l = utf8_len((uint8_t)s[i]);
        if (l > elen - i) l = elen - i;
        sym[n] = (struct spm_sym){(uint32_t)i, (uint32_t)l, n - 1, -1};
        if (n > 0) sym[n - 1].next = n;
        n++;
        i += l;
    }
    for (int32_t i = 0; i + 1 < n; i++)
        if ((rc = try_pair(v, s, sym, i, &h))) goto out;
    while (h.n) {
        struct merge_cand c = merge_heap_pop(&h);
        struct spm_sym *l = &sym[c.left];
        if (l->len == 0 || l->next < 0) continue;
        struct spm_sym *r = &sym[l->next];
        if (l->len + r->len != (uint32_t)c.b) continue; /* one side changed since */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = (int32_t)c.left;
        if ((rc = try_pair(v, s, sym, l->prev, &h)) || (rc = try_pair(v, s, sym, c.left, &h)))
            goto out;
    }
    for (int32_t i = 0; i >= 0 && i < n; i = sym[i].next)
        if ((rc = emit_symbol(v, s, &sym[i], out))) goto out;
    rc = 0;
out:
    free(s);
    free(sym);
    merge_heap_free(&h);
    return rc;
}
