#include "tokenizer/detok.h"

#include <stdlib.h>
#include <string.h>

static const char replacement[3] = {'\xEF', '\xBF', '\xBD'};

/*
 * Classify the character at s[0..n): returns 1 (valid, *len bytes), 0 (a
 * valid but incomplete prefix: more bytes needed) or -1 (invalid; *len bytes
 * form the maximal invalid subpart).
 */
static int utf8_char(const uint8_t *s, size_t n, size_t *len)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) {
        *len = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *len = 1;
        return -1;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) return 0;
        uint8_t b = s[i];
        if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) {
            *len = i;
            return -1;
        }
    }
    *len = need;
    return 1;
}

size_t utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0, l;
    while (i < n && utf8_char(s + i, n - i, &l) == 1)
        i += l;
    return i;
}

bool utf8_valid(const uint8_t *s, size_t n)
{
    return utf8_valid_prefix(s, n) == n;
}

/* Filter buf[0..n) into out; keep an incomplete tail in d. */
static int filter(struct detok *d, const uint8_t *buf, size_t n, struct tok_buf *out)
{
    size_t run = 0, i = 0, l = 0;
    int rc;
    d->n_pend = 0;
    while (i < n) {
        int k = utf8_char(buf + i, n - i, &l);
        if (k == 1) {
            i += l;
            continue;
        }
        if ((rc = tok_buf_add(out, buf + run, i - run))) return rc;
        if (k == 0) { /* incomplete: only at the end */
            memcpy(d->pend, buf + i, n - i);
            d->n_pend = n - i;
            return 0;
        }
        if ((rc = tok_buf_add(out, replacement, 3))) return rc;
        i += l;
        run = i;
    }
    return tok_buf_add(out, buf + run, n - run);
}

int detok_bytes(struct detok *d, const void *bytes, size_t n, struct tok_buf *out)
{
    if (d->n_pend == 0) return filter(d, bytes, n, out);
    uint8_t small[64];
    size_t tot = d->n_pend + n;
    uint8_t *tmp = tot <= sizeof(small) ? small : malloc(tot);
    if (!tmp) return ST_ENOMEM;
    memcpy(tmp, d->pend, d->n_pend);
    if (n) memcpy(tmp + d->n_pend, bytes, n);
    int rc = filter(d, tmp, tot, out);
    if (tmp != small) free(tmp);
    return rc;
}

int detok_flush(struct detok *d, struct tok_buf *out)
{
    int rc = 0;
    if (d->n_pend) rc = tok_buf_add(out, replacement, 3);
    d->n_pend = 0;
    if (!rc && !out->p) rc = tok_buf_add(out, "", 0);
    return rc;
}

int detok_feed(const struct vocab *v, struct detok *d, const int32_t *ids, size_t n, bool special,
               struct tok_buf *out)
{
    char small[256];
    struct tok_buf raw = {0};
    int rc = 0;
    if (d->n_pend && (rc = tok_buf_add(&raw, d->pend, d->n_pend))) goto out;
    for (size_t i = 0; i < n; i++) {
        int l = tok_token_piece(v, ids[i], special, small, sizeof(small));
        if (l < 0) {
            rc = l;
            break;
        }
        if ((size_t)l <= sizeof(small)) {
            rc = tok_buf_add(&raw, small, (size_t)l);
        } else {
            char *big = malloc((size_t)l);
            if (!big) {
                rc = ST_ENOMEM;
                goto out;
            }
            tok_token_piece(v, ids[i], special, big, (size_t)l);
            rc = tok_buf_add(&raw, big, (size_t)l);
            free(big);
        }
        if (rc) goto out;
    }
    {
        /* on ST_ERANGE the tokens before the bad one still go through */
        int rc2 = filter(d, (const uint8_t *)raw.p, raw.len, out);
        if (!rc) rc = rc2;
        if (!rc && !out->p) rc = tok_buf_add(out, "", 0);
    }
out:
    tok_buf_free(&raw);
    return rc;
}

int detok_decode(const struct vocab *v, const int32_t *ids, size_t n, bool skip_special,
                 struct tok_buf *out)
{
    struct detok d = {{0}, 0};
    int rc;
    size_t start = out->len;
    bool strip =
        vocab_kind(v) == VOCAB_SPM && vocab_add_space_prefix(v) && n > 0 && ids[0] == vocab_bos(v);
    if ((rc = detok_feed(v, &d, ids, n, !skip_special, out))) return rc;
    if ((rc = detok_flush(&d, out))) return rc;
    if (strip) {
        /* the space the encoder added sits right after BOS's text */
        size_t at = start;
        if (!skip_special) {
            size_t bl;
            const char *bt = vocab_token_text(v, ids[0], &bl);
            if (out->len - start >= bl && !memcmp(out->p + start, bt, bl)) at += bl;
        }
        if (at < out->len && out->p[at] == ' ') {
            memmove(out->p + at, out->p + at + 1, out->len - at - 1);
            out->len--;
            out->p[out->len] = 0;
        }
    }
    return 0;
}
