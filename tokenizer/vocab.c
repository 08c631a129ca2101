#include "tokenizer/vocab.h"

#include "tokenizer/bpe.h"
#include "tokenizer/pretok.h"
#include "tokenizer/spm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define VOCAB_MAX_TOKENS (1u << 24)

struct str_slot {
    uint32_t hash; /* low 32 bits of the string's hash */
    int32_t id;    /* -1: empty */
};

struct merge_slot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX: empty */
    uint32_t rank;
    int32_t result;
};

struct vocab {
    enum vocab_kind kind;
    uint32_t n;
    char *arena;          /* all token texts, back to back */
    uint32_t *off;        /* [n] start of token i in arena */
    uint32_t *len;        /* [n] bytes of token i */
    float *score;         /* [n] */
    uint8_t *type;        /* [n] enum vocab_token_type */
    struct str_slot *tab; /* string -> id, open addressing */
    uint32_t tab_mask;
    struct merge_slot *merges; /* (left, right) -> rank, result */
    uint32_t merge_mask;
    uint32_t n_merges;
    int32_t byte_tok[256];
    int32_t bos, eos, eot, unk, pad;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;
    char pre[32];
    char *chat_template;
    struct pretok *pretok;
    /* special tokens grouped by first byte, longest first within a group */
    int32_t *spec;
    uint32_t spec_start[257];
    int32_t *eog;
    size_t n_eog;
};

/* ---- small buffers ---- */

int tok_ids_push(struct tok_ids *t, int32_t id)
{
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 64;
        int32_t *p = realloc(t->p, nc * sizeof(*p));
        if (!p) return ST_ENOMEM;
        t->p = p;
        t->cap = nc;
    }
    t->p[t->n++] = id;
    return 0;
}

void tok_ids_free(struct tok_ids *t)
{
    free(t->p);
    t->p = NULL;
    t->n = t->cap = 0;
}

int tok_buf_add(struct tok_buf *b, const void *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *p = realloc(b->p, nc);
        if (!p) return ST_ENOMEM;
        b->p = p;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void tok_buf_free(struct tok_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- lookups ---- */

static uint64_t hash_str(const char *s, size_t len)
{
    return XXH3_64bits(s, len);
}

int32_t vocab_find(const struct vocab *v, const char *s, size_t len)
{
    uint64_t h = hash_str(s, len);
    uint32_t h32 = (uint32_t)h;
    for (uint32_t i = (uint32_t)(h >> 32) & v->tab_mask;; i = (i + 1) & v->tab_mask) {
        const struct str_slot *sl = &v->tab[i];
        if (sl->id < 0) return -1;
        if (sl->hash == h32 && v->len[sl->id] == len && !memcmp(v->arena + v->off[sl->id], s, len))
            return sl->id;
    }
}

static uint32_t merge_hash(uint64_t key)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32);
}

bool vocab_merge(const struct vocab *v, int32_t left, int32_t right, uint32_t *rank,
                 int32_t *result)
{
    if (!v->merges) return false;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    for (uint32_t i = merge_hash(key) & v->merge_mask;; i = (i + 1) & v->merge_mask) {
        const struct merge_slot *m = &v->merges[i];
        if (m->key == UINT64_MAX) return false;
        if (m->key == key) {
            *rank = m->rank;
            *result = m->result;
            return true;
        }
    }
}

enum vocab_kind vocab_kind(const struct vocab *v)
{
    return v->kind;
}
uint32_t vocab_n_tokens(const struct vocab *v)
{
    return v->n;
}
int32_t vocab_bos(const struct vocab *v)
{
    return v->bos;
}
int32_t vocab_eos(const struct vocab *v)
{
    return v->eos;
}
int32_t vocab_eot(const struct vocab *v)
{
    return v->eot;
}
int32_t vocab_unk(const struct vocab *v)
{
    return v->unk;
}
int32_t vocab_pad(const struct vocab *v)
{
    return v->pad;
}
bool vocab_add_bos(const struct vocab *v)
{
    return v->add_bos;
}
bool vocab_add_eos(const struct vocab *v)
{
    return v->add_eos;
}
bool vocab_add_space_prefix(const struct vocab *v)
{
    return v->add_space_prefix;
}
bool vocab_ignore_merges(const struct vocab *v)
{
    return v->ignore_merges;
}
const char *vocab_pre_name(const struct vocab *v)
{
    return v->pre;
}
const char *vocab_chat_template(const struct vocab *v)
{
    return v->chat_template;
}
int32_t vocab_byte_token(const struct vocab *v, uint8_t b)
{
    return v->byte_tok[b];
}

bool vocab_is_eog(const struct vocab *v, int32_t id)
{
    for (size_t i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return true;
    return false;
}

const int32_t *vocab_eog_ids(const struct vocab *v, size_t *n)
{
    *n = v->n_eog;
    return v->eog;
}

int vocab_token_type(const struct vocab *v, int32_t id)
{
    if (id < 0 || (uint32_t)id >= v->n) return TOKTYPE_UNDEFINED;
    return v->type[id];
}

const char *vocab_token_text(const struct vocab *v, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= v->n) return NULL;
    *len = v->len[id];
    return v->arena + v->off[id];
}

float vocab_token_score(const struct vocab *v, int32_t id)
{
    if (id < 0 || (uint32_t)id >= v->n) return 0.0f;
    return v->score[id];
}

/* ---- building ---- */

void vocab_destroy(struct vocab **vp)
{
    struct vocab *v = *vp;
    if (!v) return;
    free(v->arena);
    free(v->off);
    free(v->len);
    free(v->score);
    free(v->type);
    free(v->tab);
    free(v->merges);
    free(v->chat_template);
    free(v->spec);
    free(v->eog);
    pretok_destroy(&v->pretok);
    free(v);
    *vp = NULL;
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

static int read_tokens(struct vocab *v, const struct gguf *g, struct st_errbuf *eb)
{
    const char *key = "tokenizer.ggml.tokens";
    int64_t ki = gguf_find_key(g, key);
    uint32_t et;
    uint64_t n;
    if (ki < 0 || !gguf_get_arr(g, key, &et, &n))
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': missing or not an array", key);
    if (et != GGUF_STRING)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': array of %s, expected strings", key,
                       gguf_vtype_name(et));
    if (n == 0 || n > VOCAB_MAX_TOKENS)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': %" PRIu64 " tokens (1..%u allowed)", key,
                       n, VOCAB_MAX_TOKENS);
    v->n = (uint32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++)
        total += gguf_arr_str(g, ki, i).len;
    if (total > UINT32_MAX - 1)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': token texts too large", key);
    v->arena = malloc(total + 1);
    v->off = malloc(n * sizeof(*v->off));
    v->len = malloc(n * sizeof(*v->len));
    v->score = calloc(n, sizeof(*v->score));
    v->type = malloc(n);
    v->tab_mask = pow2_at_least(n * 2) - 1;
    v->tab = malloc(((size_t)v->tab_mask + 1) * sizeof(*v->tab));
    if (!v->arena || !v->off || !v->len || !v->score || !v->type || !v->tab)
        return st_errf(eb, ST_ENOMEM, "out of memory for %" PRIu64 " tokens", n);
    memset(v->tab, 0xff, ((size_t)v->tab_mask + 1) * sizeof(*v->tab));
    uint32_t pos = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        struct gguf_str s = gguf_arr_str(g, ki, i);
        memcpy(v->arena + pos, s.p, s.len);
        v->off[i] = pos;
        v->len[i] = (uint32_t)s.len;
        v->type[i] = TOKTYPE_NORMAL;
        pos += (uint32_t)s.len;
        uint64_t h = hash_str(s.p, s.len);
        uint32_t j = (uint32_t)(h >> 32) & v->tab_mask;
        bool dup = false;
        for (; v->tab[j].id >= 0; j = (j + 1) & v->tab_mask) {
            int32_t o = v->tab[j].id;
            if (v->tab[j].hash == (uint32_t)h && v->len[o] == s.len &&
                !memcmp(v->arena + v->off[o], s.p, s.len)) {
                dup = true; /* keep the first id for a repeated text */
                break;
            }
        }
        if (!dup) {
            v->tab[j].hash = (uint32_t)h;
            v->tab[j].id = (int32_t)i;
        }
    }
    v->arena[pos] = 0;
    return 0;
}

static int read_numeric_arr(const struct gguf *g, const char *key, uint32_t want_type, uint32_t n,
                            void *dst, struct st_errbuf *eb)
{
    int64_t ki = gguf_find_key(g, key);
    if (ki < 0) return 1; /* absent */
    uint32_t et;
    uint64_t cnt;
    if (!gguf_get_arr(g, key, &et, &cnt) || et != want_type)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': expected an array of %s", key,
                       gguf_vtype_name(want_type));
    if (cnt != n)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': %" PRIu64 " entries for %u tokens", key,
                       cnt, n);
    memcpy(dst, gguf_arr_data(g, ki), (size_t)n * 4);
    return 0;
}

static int read_types(struct vocab *v, const struct gguf *g, struct st_errbuf *eb)
{
    float *tmp = NULL;
    int rc = 0;
    if (!(tmp = malloc((size_t)v->n * 4))) return st_errf(eb, ST_ENOMEM, "out of memory");
    rc = read_numeric_arr(g, "tokenizer.ggml.scores", GGUF_F32, v->n, v->score, eb);
    if (rc < 0) goto out;
    rc = read_numeric_arr(g, "tokenizer.ggml.token_type", GGUF_I32, v->n, tmp, eb);
    if (rc < 0) goto out;
    if (rc == 0) {
        const int32_t *t = (const int32_t *)(void *)tmp;
        for (uint32_t i = 0; i < v->n; i++) {
            if (t[i] < 0 || t[i] > TOKTYPE_BYTE) {
                rc = st_errf(eb, ST_EFORMAT,
                             "metadata key 'tokenizer.ggml.token_type': token %u has type %d "
                             "(0..6 allowed)",
                             i, t[i]);
                goto out;
            }
            v->type[i] = (uint8_t)t[i];
        }
    }
    rc = 0;
out:
    free(tmp);
    return rc;
}

static int read_id(const struct gguf *g, const char *key, uint32_t n, int32_t dflt, int32_t *out,
                   struct st_errbuf *eb)
{
    *out = dflt;
    int64_t ki = gguf_find_key(g, key);
    if (ki < 0) return 0;
    uint64_t x;
    if (!gguf_get_u64(g, key, &x))
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': not an unsigned integer", key);
    if (x == UINT32_MAX || x == UINT64_MAX) { /* -1 written as unsigned: none */
        *out = -1;
        return 0;
    }
    if (x >= n)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': token id %" PRIu64 " >= %u tokens", key,
                       x, n);
    *out = (int32_t)x;
    return 0;
}

static int read_flag(const struct gguf *g, const char *key, bool dflt, bool *out,
                     struct st_errbuf *eb)
{
    *out = dflt;
    if (gguf_find_key(g, key) < 0) return 0;
    if (!gguf_get_bool(g, key, out))
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': not a bool", key);
    return 0;
}

static int read_merges(struct vocab *v, const struct gguf *g, struct st_errbuf *eb)
{
    const char *key = "tokenizer.ggml.merges";
    int64_t ki = gguf_find_key(g, key);
    uint32_t et;
    uint64_t n;
    if (ki < 0 || !gguf_get_arr(g, key, &et, &n))
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s': missing or not an array (required by "
                       "BPE tokenizers)",
                       key);
    if (et != GGUF_STRING || n > VOCAB_MAX_TOKENS * 4ull)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s': expected up to %u strings", key,
                       VOCAB_MAX_TOKENS * 4);
    v->merge_mask = pow2_at_least(n * 2 + 1) - 1;
    v->merges = malloc(((size_t)v->merge_mask + 1) * sizeof(*v->merges));
    if (!v->merges) return st_errf(eb, ST_ENOMEM, "out of memory for %" PRIu64 " merges", n);
    memset(v->merges, 0xff, ((size_t)v->merge_mask + 1) * sizeof(*v->merges));
    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint64_t r = 0; r < n; r++) {
        struct gguf_str s = gguf_arr_str(g, ki, r);
        /* token texts never start with a space in byte-level vocabs; split at the
         * first space after the first byte */
        const char *sp = s.len > 1 ? memchr(s.p + 1, ' ', s.len - 1) : NULL;
        if (!sp) {
            free(cat);
            return st_errf(eb, ST_EFORMAT,
                           "metadata key '%s': merge %" PRIu64 " is not of the form \"left right\"",
                           key, r);
        }
        size_t ll = (size_t)(sp - s.p), rl = s.len - ll - 1;
        int32_t l = vocab_find(v, s.p, ll), rt = vocab_find(v, sp + 1, rl);
        if (l < 0 || rt < 0) continue; /* can never apply: symbols are always tokens */
        if (ll + rl > cat_cap) {
            cat_cap = (ll + rl) * 2;
            char *c = realloc(cat, cat_cap);
            if (!c) {
                free(cat);
                return st_errf(eb, ST_ENOMEM, "out of memory");
            }
            cat = c;
        }
        memcpy(cat, s.p, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t res = vocab_find(v, cat, ll + rl);
        if (res < 0) continue;
        uint64_t k = ((uint64_t)(uint32_t)l << 32) | (uint32_t)rt;
        uint32_t i = merge_hash(k) & v->merge_mask;
        while (v->merges[i].key != UINT64_MAX && v->merges[i].key != k)
            i = (i + 1) & v->merge_mask;
        if (v->merges[i].key == k) continue; /* a repeated pair keeps its first rank */
        v->merges[i].key = k;
        v->merges[i].rank = (uint32_t)r;
        v->merges[i].result = res;
        v->n_merges++;
    }
    free(cat);
    return 0;
}

static int cmp_spec_len_desc(const void *a, const void *b, void *ctx)
{
    const struct vocab *v = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint8_t fx = (uint8_t)v->arena[v->off[x]], fy = (uint8_t)v->arena[v->off[y]];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (v->len[x] != v->len[y]) return v->len[x] > v->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static bool is_special_type(int t)
{
    return t == TOKTYPE_CONTROL || t == TOKTYPE_USER_DEFINED || t == TOKTYPE_UNKNOWN;
}

static int build_specials(struct vocab *v, struct st_errbuf *eb)
{
    size_t cnt = 0;
    for (uint32_t i = 0; i < v->n; i++)
        if (is_special_type(v->type[i]) && v->len[i] > 0) cnt++;
    v->spec = malloc((cnt + 1) * sizeof(*v->spec));
    if (!v->spec) return st_errf(eb, ST_ENOMEM, "out of memory");
    size_t k = 0;
    for (uint32_t i = 0; i < v->n; i++)
        if (is_special_type(v->type[i]) && v->len[i] > 0) v->spec[k++] = (int32_t)i;
    qsort_r(v->spec, cnt, sizeof(*v->spec), cmp_spec_len_desc, v);
    size_t j = 0;
    for (int b = 0; b < 256; b++) {
        v->spec_start[b] = (uint32_t)j;
        while (j < cnt && (uint8_t)v->arena[v->off[v->spec[j]]] == b)
            j++;
    }
    v->spec_start[256] = (uint32_t)cnt;
    return 0;
}

static const char *const eog_names[] = {
    "<|endoftext|>", "<|im_end|>",    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
    "<|end|>",       "<end_of_turn>", "<EOT>",      NULL,
};

static int build_eog(struct vocab *v, struct st_errbuf *eb)
{
    v->eog = malloc(16 * sizeof(*v->eog));
    if (!v->eog) return st_errf(eb, ST_ENOMEM, "out of memory");
    int32_t cand[16];
    size_t nc = 0;
    if (v->eos >= 0) cand[nc++] = v->eos;
    if (v->eot >= 0) cand[nc++] = v->eot;
    for (int i = 0; eog_names[i]; i++) {
        int32_t id = vocab_find(v, eog_names[i], strlen(eog_names[i]));
        if (id >= 0 && v->type[id] == TOKTYPE_CONTROL) cand[nc++] = id;
    }
    /* sort + dedup */
    for (size_t i = 1; i < nc; i++)
        for (size_t j = i; j > 0 && cand[j - 1] > cand[j]; j--) {
            int32_t t = cand[j];
            cand[j] = cand[j - 1];
            cand[j - 1] = t;
        }
    for (size_t i = 0; i < nc; i++)
        if (v->n_eog == 0 || v->eog[v->n_eog - 1] != cand[i]) v->eog[v->n_eog++] = cand[i];
    return 0;
}

static int find_named(struct vocab *v, const char *const *names)
{
    for (int i = 0; names[i]; i++) {
        int32_t id = vocab_find(v, names[i], strlen(names[i]));
        if (id >= 0) return id;
    }
    return -1;
}

static int build_byte_tokens(struct vocab *v)
{
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t n;
        if (v->kind == VOCAB_SPM) {
            static const char hex[] = "0123456789ABCDEF";
            s[0] = '<', s[1] = '0', s[2] = 'x', s[3] = hex[b >> 4], s[4] = hex[b & 15], s[5] = '>';
            n = 6;
        } else {
            uint32_t cp = bpe_byte_to_cp((uint8_t)b);
            if (cp < 0x80) {
                s[0] = (char)cp;
                n = 1;
            } else {
                s[0] = (char)(0xC0 | (cp >> 6));
                s[1] = (char)(0x80 | (cp & 0x3F));
                n = 2;
            }
        }
        v->byte_tok[b] = vocab_find(v, s, n);
    }
    return 0;
}

int vocab_build(const struct gguf *g, struct vocab **out, struct st_errbuf *eb)
{
    *out = NULL;
    struct vocab *v = calloc(1, sizeof(*v));
    if (!v) return st_errf(eb, ST_ENOMEM, "out of memory");
    int rc;
    struct gguf_str s;
    if (!gguf_get_str(g, "tokenizer.ggml.model", &s)) {
        rc =
            st_errf(eb, ST_EFORMAT, "metadata key 'tokenizer.ggml.model': missing or not a string");
        goto err;
    }
    if (gguf_str_eq(s, "llama")) {
        v->kind = VOCAB_SPM;
    } else if (gguf_str_eq(s, "gpt2")) {
        v->kind = VOCAB_BPE;
    } else {
        rc = st_errf(eb, ST_EUNSUPPORTED,
                     "metadata key 'tokenizer.ggml.model': \"%.*s\" is not supported (llama, gpt2)",
                     (int)(s.len > 40 ? 40 : s.len), s.p);
        goto err;
    }
    snprintf(v->pre, sizeof(v->pre), "default");
    if (gguf_get_str(g, "tokenizer.ggml.pre", &s)) {
        if (s.len >= sizeof(v->pre)) {
            rc = st_errf(eb, ST_EUNSUPPORTED, "metadata key 'tokenizer.ggml.pre': too long");
            goto err;
        }
        memcpy(v->pre, s.p, s.len);
        v->pre[s.len] = 0;
    }
    if ((rc = read_tokens(v, g, eb)) || (rc = read_types(v, g, eb))) goto err;
    int32_t dflt_bos = v->kind == VOCAB_SPM ? 1 : -1, dflt_eos = v->kind == VOCAB_SPM ? 2 : -1;
    if ((uint32_t)dflt_eos >= v->n) dflt_bos = dflt_eos = -1;
    if ((rc = read_id(g, "tokenizer.ggml.bos_token_id", v->n, dflt_bos, &v->bos, eb)) ||
        (rc = read_id(g, "tokenizer.ggml.eos_token_id", v->n, dflt_eos, &v->eos, eb)) ||
        (rc = read_id(g, "tokenizer.ggml.unknown_token_id", v->n, v->kind == VOCAB_SPM ? 0 : -1,
                      &v->unk, eb)) ||
        (rc = read_id(g, "tokenizer.ggml.padding_token_id", v->n, -1, &v->pad, eb)) ||
        (rc = read_id(g, "tokenizer.ggml.eot_token_id", v->n, -1, &v->eot, eb)))
        goto err;
    if ((rc =
             read_flag(g, "tokenizer.ggml.add_bos_token", v->kind == VOCAB_SPM, &v->add_bos, eb)) ||
        (rc = read_flag(g, "tokenizer.ggml.add_eos_token", false, &v->add_eos, eb)) ||
        (rc = read_flag(g, "tokenizer.ggml.add_space_prefix", v->kind == VOCAB_SPM,
                        &v->add_space_prefix, eb)))
        goto err;
    if (v->add_bos && v->bos < 0) v->add_bos = false;
    if (v->add_eos && v->eos < 0) v->add_eos = false;
    if (v->eot < 0) {
        static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                                "<end_of_turn>", NULL};
        v->eot = find_named(v, eot_names);
    }
    if (gguf_get_str(g, "tokenizer.chat_template", &s)) {
        if (!(v->chat_template = malloc(s.len + 1))) {
            rc = st_errf(eb, ST_ENOMEM, "out of memory");
            goto err;
        }
        memcpy(v->chat_template, s.p, s.len);
        v->chat_template[s.len] = 0;
    }
    if (v->kind == VOCAB_BPE) {
        if ((rc = read_merges(v, g, eb))) goto err;
        if ((rc = pretok_new(v->pre, &v->pretok, eb))) goto err;
        v->ignore_merges = !strcmp(v->pre, "llama-bpe") || !strcmp(v->pre, "llama3");
    }
    build_byte_tokens(v);
    if ((rc = build_specials(v, eb)) || (rc = build_eog(v, eb))) goto err;
    *out = v;
    return 0;
err:
    vocab_destroy(&v);
    return rc;
}

/* ---- encoding ---- */

struct bpe_ctx {
    const struct vocab *v;
    struct tok_ids *out;
};

static int bpe_word_cb(const char *w, size_t n, void *ctx)
{
    struct bpe_ctx *c = ctx;
    return bpe_encode_word(c->v, w, n, c->out);
}

static int encode_raw(const struct vocab *v, const char *text, size_t len, bool prev_special,
                      struct tok_ids *out)
{
    if (v->kind == VOCAB_SPM)
        return spm_encode(v, text, len, v->add_space_prefix && prev_special, out);
    struct bpe_ctx c = {v, out};
    return pretok_split(v->pretok, text, len, bpe_word_cb, &c);
}

/* Longest special token at text[pos..len) that may match there, or -1. */
static int32_t special_at(const struct vocab *v, const char *text, size_t len, size_t pos,
                          bool allow_control)
{
    uint8_t b = (uint8_t)text[pos];
    for (uint32_t k = v->spec_start[b]; k < v->spec_start[b + 1]; k++) {
        int32_t id = v->spec[k];
        if (!allow_control && v->type[id] != TOKTYPE_USER_DEFINED) continue;
        uint32_t l = v->len[id];
        if (l <= len - pos && !memcmp(text + pos, v->arena + v->off[id], l)) return id;
    }
    return -1;
}

int tok_encode_spans(const struct vocab *v, const char *text, size_t len, bool add_special,
                     const struct tok_span *special, size_t n_special, struct tok_ids *out)
{
    int rc;
    bool prev_special = true; /* SPM: the first fragment gets the space prefix */
    if (add_special && v->add_bos && (rc = tok_ids_push(out, v->bos))) return rc;
    size_t frag = 0, sp = 0;
    for (size_t pos = 0; pos < len; pos++) {
        if (v->spec_start[(uint8_t)text[pos]] == v->spec_start[(uint8_t)text[pos] + 1]) continue;
        while (sp < n_special && special[sp].off + special[sp].len <= pos)
            sp++;
        bool allow = sp < n_special && special[sp].off <= pos;
        size_t end = allow && special[sp].off + special[sp].len < len
                         ? special[sp].off + special[sp].len
                         : len;
        int32_t id = special_at(v, text, end, pos, allow);
        if (id < 0 && allow) id = special_at(v, text, len, pos, false);
        if (id < 0) continue;
        if (pos > frag && (rc = encode_raw(v, text + frag, pos - frag, prev_special, out)))
            return rc;
        if ((rc = tok_ids_push(out, id))) return rc;
        prev_special = true;
        pos += v->len[id] - 1;
        frag = pos + 1;
    }
    if (len > frag && (rc = encode_raw(v, text + frag, len - frag, prev_special, out))) return rc;
    if (add_special && v->add_eos && (rc = tok_ids_push(out, v->eos))) return rc;
    return 0;
}

int tok_encode(const struct vocab *v, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t **ids, size_t *n)
{
    struct tok_ids t = {0};
    struct tok_span all = {0, len};
    int rc = tok_encode_spans(v, text, len, add_special, parse_special ? &all : NULL,
                              parse_special ? 1 : 0, &t);
    if (rc) {
        tok_ids_free(&t);
        *ids = NULL;
        *n = 0;
        return rc;
    }
    *ids = t.p;
    *n = t.n;
    return 0;
}

/* ---- pieces ---- */

static size_t put(char *buf, size_t cap, size_t at, const void *s, size_t n)
{
    if (at < cap) memcpy(buf + at, s, at + n <= cap ? n : cap - at);
    return at + n;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int tok_token_piece(const struct vocab *v, int32_t id, bool special, char *buf, size_t cap)
{
    if (id < 0 || (uint32_t)id >= v->n) return ST_ERANGE;
    const char *t = v->arena + v->off[id];
    size_t tl = v->len[id], o = 0;
    switch (v->type[id]) {
    case TOKTYPE_CONTROL:
        return special ? (int)put(buf, cap, 0, t, tl) : 0;
    case TOKTYPE_USER_DEFINED:
        return (int)put(buf, cap, 0, t, tl);
    case TOKTYPE_UNKNOWN:
        return (int)put(buf, cap, 0, "\xe2\x96\x85", 3);
    case TOKTYPE_UNUSED:
        return 0;
    case TOKTYPE_BYTE:
        if (tl == 6 && t[0] == '<' && t[1] == '0' && t[2] == 'x' && t[5] == '>' &&
            hexval(t[3]) >= 0 && hexval(t[4]) >= 0) {
            char c = (char)(hexval(t[3]) * 16 + hexval(t[4]));
            return (int)put(buf, cap, 0, &c, 1);
        }
        break;
    }
    if (v->kind == VOCAB_SPM) {
        for (size_t i = 0; i < tl;) {
            if (i + 3 <= tl && !memcmp(t + i, "\xe2\x96\x81", 3)) {
                o = put(buf, cap, o, " ", 1);
                i += 3;
            } else {
                o = put(buf, cap, o, t + i, 1);
                i++;
            }
        }
        return (int)o;
    }
    /* byte-level: each code point stands for one byte */
    for (size_t i = 0; i < tl;) {
        uint8_t c = (uint8_t)t[i];
        uint32_t cp = c;
        size_t k = 1;
        if (c >= 0xC0 && c < 0xE0 && i + 1 < tl) {
            cp = ((uint32_t)(c & 0x1F) << 6) | ((uint8_t)t[i + 1] & 0x3F);
            k = 2;
        }
        int b = bpe_cp_to_byte(cp);
        if (b >= 0) {
            char ch = (char)b;
            o = put(buf, cap, o, &ch, 1);
            i += k;
        } else { /* not a byte-level character: copy it through */
            size_t m = 1;
            while (i + m < tl && ((uint8_t)t[i + m] & 0xC0) == 0x80)
                m++;
            o = put(buf, cap, o, t + i, m);
            i += m;
        }
    }
    return (int)o;
}
