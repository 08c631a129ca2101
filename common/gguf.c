#include "gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tensor type table ---- */

struct type_info {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
};

static const struct type_info type_table[GGML_TYPE_COUNT] = {
    [GGML_TYPE_F32] = {"F32", 1, 4},
    [GGML_TYPE_F16] = {"F16", 1, 2},
    [GGML_TYPE_BF16] = {"BF16", 1, 2},
    [GGML_TYPE_Q4_0] = {"Q4_0", 32, 18},
    [GGML_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [GGML_TYPE_Q5_0] = {"Q5_0", 32, 22},
    [GGML_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [GGML_TYPE_Q8_0] = {"Q8_0", 32, 34},
    [GGML_TYPE_Q2_K] = {"Q2_K", 256, 84},
    [GGML_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [GGML_TYPE_Q4_K] = {"Q4_K", 256, 144},
    [GGML_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [GGML_TYPE_Q6_K] = {"Q6_K", 256, 210},
};

/* Names of ggml types staged knows of but does not serve, for messages. */
static const char *type_name_any(uint32_t t)
{
    static const char *other[] = {[4] = "Q4_2", [5] = "Q4_3", [9] = "Q8_1", [15] = "Q8_K",
                                  [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS",
                                  [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S",
                                  [22] = "IQ2_S", [23] = "IQ4_XS", [24] = "I8", [25] = "I16",
                                  [26] = "I32", [27] = "I64", [28] = "F64", [29] = "IQ1_M",
                                  [31] = "Q4_0_4_4", [32] = "Q4_0_4_8", [33] = "Q4_0_8_8",
                                  [34] = "TQ1_0", [35] = "TQ2_0", [36] = "IQ4_NL_4_4",
                                  [37] = "IQ4_NL_4_8", [38] = "IQ4_NL_8_8", [39] = "MXFP4"};
    if (ggml_type_supported(t)) return type_table[t].name;
    if (t < sizeof(other) / sizeof(other[0]) && other[t]) return other[t];
    return NULL;
}

bool ggml_type_supported(uint32_t type)
{
    return type < GGML_TYPE_COUNT && type_table[type].name != NULL;
}

const char *ggml_type_name(uint32_t type)
{
    return ggml_type_supported(type) ? type_table[type].name : NULL;
}

uint32_t ggml_type_block_elems(uint32_t type)
{
    return ggml_type_supported(type) ? type_table[type].block_elems : 0;
}

uint32_t ggml_type_block_bytes(uint32_t type)
{
    return ggml_type_supported(type) ? type_table[type].block_bytes : 0;
}

uint64_t ggml_row_bytes(uint32_t type, uint64_t n)
{
    if (!ggml_type_supported(type)) return 0;
    uint32_t be = type_table[type].block_elems;
    if (n % be) return 0;
    return n / be * type_table[type].block_bytes;
}

const char *gguf_vtype_name(uint32_t vt)
{
    static const char *names[GGUF_VTYPE_COUNT] = {"u8",  "i8",     "u16",   "i16", "u32",
                                                  "i32", "f32",    "bool",  "string",
                                                  "array", "u64",  "i64",   "f64"};
    return vt < GGUF_VTYPE_COUNT ? names[vt] : "invalid";
}

static uint32_t vtype_size(uint32_t vt)
{
    switch (vt) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    }
    return 0;
}

/* ---- bounded cursor ---- */

struct cursor {
    const uint8_t *buf;
    uint64_t len;
    uint64_t pos;
    struct st_errbuf *eb;
    char what[160]; /* what is being read, for messages */
};

static int cur_fail(struct cursor *c, const char *why)
{
    return st_errf(c->eb, ST_EFORMAT, "%s at byte %" PRIu64 ": %s", c->what, c->pos, why);
}

static bool cur_has(const struct cursor *c, uint64_t n)
{
    return c->pos <= c->len && n <= c->len - c->pos;
}

static int cur_u32(struct cursor *c, uint32_t *v)
{
    if (!cur_has(c, 4)) return cur_fail(c, "file ends inside a 4-byte integer");
    memcpy(v, c->buf + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int cur_u64(struct cursor *c, uint64_t *v)
{
    if (!cur_has(c, 8)) return cur_fail(c, "file ends inside an 8-byte integer");
    memcpy(v, c->buf + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int cur_str(struct cursor *c, struct gguf_str *s)
{
    uint64_t len = 0;
    int rc = cur_u64(c, &len);
    if (rc) return rc;
    if (!cur_has(c, len)) {
        c->pos -= 8;
        char why[96];
        snprintf(why, sizeof(why), "string length %" PRIu64 " runs past the end of the file", len);
        return cur_fail(c, why);
    }
    s->p = (const char *)c->buf + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

#define MAX_ARRAY_DEPTH 8

/* Skip one value of type vt (validating it); depth bounds nesting. */
static int skip_value(struct cursor *c, uint32_t vt, int depth)
{
    if (vt == GGUF_STRING) {
        struct gguf_str s;
        return cur_str(c, &s);
    }
    if (vt == GGUF_ARRAY) {
        if (depth >= MAX_ARRAY_DEPTH) return cur_fail(c, "arrays nested too deeply");
        uint32_t et;
        uint64_t n;
        int rc = cur_u32(c, &et);
        if (rc || (rc = cur_u64(c, &n))) return rc;
        if (et >= GGUF_VTYPE_COUNT) {
            char why[64];
            snprintf(why, sizeof(why), "unknown array element type %u", et);
            return cur_fail(c, why);
        }
        uint32_t es = vtype_size(et);
        if (es) {
            if (n > (c->len - c->pos) / es) return cur_fail(c, "array runs past the end of the file");
            if (et == GGUF_BOOL) {
                for (uint64_t i = 0; i < n; i++)
                    if (c->buf[c->pos + i] > 1) return cur_fail(c, "bool array element not 0 or 1");
            }
            c->pos += n * es;
            return 0;
        }
        /* strings take >= 8 bytes, arrays >= 12: bound the count first */
        uint64_t min = et == GGUF_STRING ? 8 : 12;
        if (n > (c->len - c->pos) / min) return cur_fail(c, "array count larger than the file");
        for (uint64_t i = 0; i < n; i++) {
            rc = skip_value(c, et, depth + 1);
            if (rc) return rc;
        }
        return 0;
    }
    uint32_t es = vtype_size(vt);
    if (!es) {
        char why[64];
        snprintf(why, sizeof(why), "unknown value type %u", vt);
        return cur_fail(c, why);
    }
    if (!cur_has(c, es)) return cur_fail(c, "file ends inside a value");
    if (vt == GGUF_BOOL && c->buf[c->pos] > 1) return cur_fail(c, "bool value not 0 or 1");
    c->pos += es;
    return 0;
}

static void set_what_key(struct cursor *c, uint64_t i, const struct gguf_str *key)
{
    if (key)
        snprintf(c->what, sizeof(c->what), "metadata key '%.*s'", (int)(key->len > 96 ? 96 : key->len),
                 key->p);
    else
        snprintf(c->what, sizeof(c->what), "metadata entry %" PRIu64, i);
}

static void set_what_tensor(struct cursor *c, uint64_t i, const struct gguf_str *name)
{
    if (name)
        snprintf(c->what, sizeof(c->what), "tensor '%.*s'", (int)(name->len > 96 ? 96 : name->len),
                 name->p);
    else
        snprintf(c->what, sizeof(c->what), "tensor info %" PRIu64, i);
}

/* Keys and tensor names are text: a NUL or other control byte in one is a
 * corrupt or crafted file (and would cut it short in messages and C APIs). */
static int check_name(struct cursor *c, const struct gguf_str *s, const char *what)
{
    for (uint64_t i = 0; i < s->len; i++) {
        unsigned char ch = (unsigned char)s->p[i];
        if (ch < 0x20 || ch == 0x7f) {
            char why[80];
            snprintf(why, sizeof(why), "%s contains control byte 0x%02x at index %" PRIu64, what,
                     ch, i);
            return cur_fail(c, why);
        }
    }
    return 0;
}

/* ---- hashing for duplicate detection ---- */

static uint64_t str_hash(const char *p, uint64_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < len; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

/* Open-addressing set of indices into an array of gguf_str; returns true if
 * an equal string was already present. */
struct strset {
    uint64_t *slots; /* index+1, 0 = empty */
    uint64_t cap;
};

static int strset_init(struct strset *s, uint64_t n)
{
    s->cap = 16;
    while (s->cap < n * 2) s->cap <<= 1;
    s->slots = calloc(s->cap, sizeof(uint64_t));
    return s->slots ? 0 : ST_ENOMEM;
}

static bool strset_insert(struct strset *s, const struct gguf_str *all, size_t stride, uint64_t idx)
{
    const struct gguf_str *me = (const struct gguf_str *)((const char *)all + stride * idx);
    uint64_t h = str_hash(me->p, me->len) & (s->cap - 1);
    while (s->slots[h]) {
        const struct gguf_str *o =
            (const struct gguf_str *)((const char *)all + stride * (s->slots[h] - 1));
        if (o->len == me->len && memcmp(o->p, me->p, me->len) == 0) return true;
        h = (h + 1) & (s->cap - 1);
    }
    s->slots[h] = idx + 1;
    return false;
}

/* Index of the string p/len in a set built by strset_insert, or -1. */
static int64_t strset_find(const uint64_t *slots, uint64_t cap, const struct gguf_str *all,
                           size_t stride, const char *p, uint64_t len)
{
    uint64_t h = str_hash(p, len) & (cap - 1);
    while (slots[h]) {
        const struct gguf_str *o =
            (const struct gguf_str *)((const char *)all + stride * (slots[h] - 1));
        if (o->len == len && memcmp(o->p, p, len) == 0) return (int64_t)(slots[h] - 1);
        h = (h + 1) & (cap - 1);
    }
    return -1;
}

/* ---- parsing ---- */

static int parse_kv(struct gguf *g, struct cursor *c, uint64_t i)
{
    struct gguf_kv *kv = &g->kv[i];
    set_what_key(c, i, NULL);
    int rc = cur_str(c, &kv->key);
    if (rc) return rc;
    if ((rc = check_name(c, &kv->key, "key"))) return rc;
    set_what_key(c, i, &kv->key);
    if (kv->key.len == 0) return cur_fail(c, "empty key");
    rc = cur_u32(c, &kv->type);
    if (rc) return rc;
    if (kv->type >= GGUF_VTYPE_COUNT) {
        c->pos -= 4;
        char why[64];
        snprintf(why, sizeof(why), "unknown value type %u", kv->type);
        return cur_fail(c, why);
    }
    kv->value_off = c->pos;
    if (kv->type != GGUF_ARRAY) return skip_value(c, kv->type, 0);

    uint64_t start = c->pos;
    rc = cur_u32(c, &kv->arr_type);
    if (rc || (rc = cur_u64(c, &kv->arr_n))) return rc;
    kv->arr_data_off = c->pos;
    c->pos = start;
    rc = skip_value(c, GGUF_ARRAY, 0);
    if (rc) return rc;
    if (kv->arr_type == GGUF_STRING && kv->arr_n > 0) {
        kv->str_offs = malloc(kv->arr_n * sizeof(uint64_t)); /* n bounded by skip_value */
        if (!kv->str_offs) return st_errf(c->eb, ST_ENOMEM, "out of memory for %s", c->what);
        uint64_t p = kv->arr_data_off;
        for (uint64_t j = 0; j < kv->arr_n; j++) {
            uint64_t len;
            kv->str_offs[j] = p;
            memcpy(&len, c->buf + p, 8);
            p += 8 + len;
        }
    }
    return 0;
}

static int parse_tensor_info(struct gguf *g, struct cursor *c, uint64_t i)
{
    struct gguf_tensor *t = &g->tensors[i];
    set_what_tensor(c, i, NULL);
    t->info_off = c->pos;
    int rc = cur_str(c, &t->name);
    if (rc) return rc;
    if (t->name.len == 0 || t->name.len >= 64) return cur_fail(c, "name empty or 64 bytes or longer");
    if ((rc = check_name(c, &t->name, "name"))) return rc;
    set_what_tensor(c, i, &t->name);
    rc = cur_u32(c, &t->n_dims);
    if (rc) return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
        c->pos -= 4;
        char why[64];
        snprintf(why, sizeof(why), "n_dims %u not in 1..4", t->n_dims);
        return cur_fail(c, why);
    }
    uint64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        rc = cur_u64(c, &t->ne[d]);
        if (rc) return rc;
        if (t->ne[d] == 0 || t->ne[d] > (1ull << 40)) {
            c->pos -= 8;
            char why[80];
            snprintf(why, sizeof(why), "dimension %u is %" PRIu64 " (must be 1..2^40)", d, t->ne[d]);
            return cur_fail(c, why);
        }
        if (n > UINT64_MAX / t->ne[d] || n * t->ne[d] > (1ull << 48)) {
            c->pos -= 8;
            return cur_fail(c, "product of dimensions overflows");
        }
        n *= t->ne[d];
    }
    t->n_elems = n;
    uint64_t type_pos = c->pos;
    rc = cur_u32(c, &t->type);
    if (rc) return rc;
    if (!ggml_type_supported(t->type)) {
        const char *nm = type_name_any(t->type);
        char tn[32];
        if (!nm) {
            snprintf(tn, sizeof(tn), "%u (unknown)", t->type);
            nm = tn;
        }
        return st_errf(c->eb, ST_EUNSUPPORTED,
                       "tensor %.*s has type %s, which staged does not support (at byte %" PRIu64 ")",
                       (int)t->name.len, t->name.p, nm, type_pos);
    }
    uint32_t be = ggml_type_block_elems(t->type);
    if (t->ne[0] % be) {
        c->pos = type_pos;
        char why[96];
        snprintf(why, sizeof(why), "row length %" PRIu64 " not a multiple of the %s block size %u",
                 t->ne[0], ggml_type_name(t->type), be);
        return cur_fail(c, why);
    }
    t->size = n / be * ggml_type_block_bytes(t->type);
    return cur_u64(c, &t->offset);
}

static int cmp_tensor_off(const void *a, const void *b, void *ctx)
{
    const struct gguf_tensor *ts = ctx;
    uint64_t oa = ts[*(const uint64_t *)a].offset, ob = ts[*(const uint64_t *)b].offset;
    return oa < ob ? -1 : oa > ob;
}

static int check_tensor_layout(struct gguf *g, struct st_errbuf *eb)
{
    if (g->n_tensors == 0) return 0;
    if (g->data_offset > g->file_size)
        return st_errf(eb, ST_EFORMAT, "tensor data section starts at byte %" PRIu64
                                       " but the file has %" PRIu64 " bytes",
                       g->data_offset, g->file_size);
    uint64_t avail = g->file_size - g->data_offset;
    uint64_t *order = malloc(g->n_tensors * sizeof(uint64_t));
    if (!order) return st_errf(eb, ST_ENOMEM, "out of memory sorting tensors");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        order[i] = i;
        if (t->offset % g->alignment) {
            free(order);
            return st_errf(eb, ST_EFORMAT,
                           "tensor %.*s (info at byte %" PRIu64 "): data offset %" PRIu64
                           " not a multiple of the alignment %u",
                           (int)t->name.len, t->name.p, t->info_off, t->offset, g->alignment);
        }
        if (t->offset > avail || t->size > avail - t->offset) {
            free(order);
            return st_errf(eb, ST_EFORMAT,
                           "tensor %.*s (info at byte %" PRIu64 "): data [%" PRIu64 ", +%" PRIu64
                           ") runs past the end of the file (%" PRIu64 " bytes of data)",
                           (int)t->name.len, t->name.p, t->info_off, g->data_offset + t->offset,
                           t->size, avail);
        }
    }
    qsort_r(order, g->n_tensors, sizeof(uint64_t), cmp_tensor_off, g->tensors);
    for (uint64_t i = 1; i < g->n_tensors; i++) {
        const struct gguf_tensor *a = &g->tensors[order[i - 1]], *b = &g->tensors[order[i]];
        if (a->offset + a->size > b->offset) {
            free(order);
            return st_errf(eb, ST_EFORMAT,
                           "tensor %.*s (info at byte %" PRIu64 "): data at offset %" PRIu64
                           " overlaps tensor %.*s",
                           (int)b->name.len, b->name.p, b->info_off, b->offset, (int)a->name.len,
                           a->name.p);
        }
    }
    free(order);
    return 0;
}

int gguf_parse(const uint8_t *buf, uint64_t buf_len, uint64_t file_size, struct gguf **out,
               struct st_errbuf *eb)
{
    *out = NULL;
    struct cursor c = {.buf = buf, .len = buf_len, .pos = 0, .eb = eb};
    snprintf(c.what, sizeof(c.what), "header");
    if (buf_len < 4 || memcmp(buf, "GGUF", 4) != 0)
        return st_errf(eb, ST_EFORMAT, "header at byte 0: not a GGUF file (magic is not \"GGUF\")");
    c.pos = 4;
    uint32_t version;
    int rc = cur_u32(&c, &version);
    if (rc) return rc;
    if (version == 1)
        return st_errf(eb, ST_EUNSUPPORTED,
                       "header at byte 4: GGUF version 1 is not supported (staged reads versions 2 "
                       "and 3; convert the file with a current tool)");
    if (version != 2 && version != 3) {
        uint32_t swapped = __builtin_bswap32(version);
        if (swapped >= 1 && swapped <= 3)
            return st_errf(eb, ST_EUNSUPPORTED,
                           "header at byte 4: GGUF version %u in big-endian byte order; staged "
                           "reads little-endian files only",
                           swapped);
        return st_errf(eb, ST_EUNSUPPORTED, "header at byte 4: unknown GGUF version %u", version);
    }

    struct gguf *g = calloc(1, sizeof(*g));
    if (!g) return st_errf(eb, ST_ENOMEM, "out of memory");
    g->buf = buf;
    g->buf_len = buf_len;
    g->file_size = file_size;
    g->version = version;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;

    if ((rc = cur_u64(&c, &g->n_tensors)) || (rc = cur_u64(&c, &g->n_kv))) goto err;
    /* every kv takes >= 8+1+4+1 bytes, every tensor info >= 8+1+4+8+4+8 */
    if (g->n_kv > (buf_len - c.pos) / 14 || g->n_kv > GGUF_MAX_KV) {
        c.pos = 16;
        rc = cur_fail(&c, "metadata count larger than the file could hold");
        goto err;
    }
    if (g->n_tensors > (buf_len - c.pos) / 33 || g->n_tensors > GGUF_MAX_TENSORS) {
        c.pos = 8;
        rc = cur_fail(&c, "tensor count larger than the file could hold");
        goto err;
    }
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*g->tensors));
    if (!g->kv || !g->tensors) {
        rc = st_errf(eb, ST_ENOMEM, "out of memory for %" PRIu64 " keys / %" PRIu64 " tensors",
                     g->n_kv, g->n_tensors);
        goto err;
    }
    for (uint64_t i = 0; i < g->n_kv; i++)
        if ((rc = parse_kv(g, &c, i))) goto err;

    struct strset set;
    if ((rc = strset_init(&set, g->n_kv))) goto err_nomem;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (strset_insert(&set, &g->kv[0].key, sizeof(struct gguf_kv), i)) {
            const struct gguf_kv *kv = &g->kv[i];
            rc = st_errf(eb, ST_EFORMAT, "metadata key '%.*s' at byte %" PRIu64 ": duplicate key",
                         (int)(kv->key.len > 96 ? 96 : kv->key.len), kv->key.p,
                         (uint64_t)(kv->key.p - (const char *)buf) - 8);
            free(set.slots);
            goto err;
        }
    }
    g->key_slots = set.slots; /* kept for gguf_find_key */
    g->key_cap = set.cap;

    int64_t ai = gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        uint64_t a;
        const struct gguf_kv *kv = &g->kv[ai];
        if (!gguf_get_u64(g, "general.alignment", &a) || a == 0 || a > 65536 || (a & (a - 1))) {
            rc = st_errf(eb, ST_EFORMAT,
                         "metadata key 'general.alignment' at byte %" PRIu64
                         ": must be an integer power of two in 1..65536",
                         kv->value_off);
            goto err;
        }
        g->alignment = (uint32_t)a;
    }

    for (uint64_t i = 0; i < g->n_tensors; i++)
        if ((rc = parse_tensor_info(g, &c, i))) goto err;
    g->header_end = c.pos;
    g->data_offset = (c.pos + g->alignment - 1) / g->alignment * g->alignment;

    if ((rc = strset_init(&set, g->n_tensors))) goto err_nomem;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (strset_insert(&set, &g->tensors[0].name, sizeof(struct gguf_tensor), i)) {
            const struct gguf_tensor *t = &g->tensors[i];
            rc = st_errf(eb, ST_EFORMAT, "tensor %.*s at byte %" PRIu64 ": duplicate tensor name",
                         (int)t->name.len, t->name.p, t->info_off);
            free(set.slots);
            goto err;
        }
    }
    g->tensor_slots = set.slots; /* kept for gguf_find_tensor */
    g->tensor_cap = set.cap;
    if ((rc = check_tensor_layout(g, eb))) goto err;
    *out = g;
    return 0;

err_nomem:
    rc = st_errf(eb, ST_ENOMEM, "out of memory");
err:
    gguf_destroy(&g);
    return rc;
}

void gguf_destroy(struct gguf **gp)
{
    struct gguf *g = *gp;
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].str_offs);
    free(g->kv);
    free(g->tensors);
    free(g->key_slots);
    free(g->tensor_slots);
    free(g);
    *gp = NULL;
}

bool gguf_str_eq(struct gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && memcmp(s.p, c, n) == 0;
}

int64_t gguf_find_key(const struct gguf *g, const char *key)
{
    if (g->key_slots)
        return strset_find(g->key_slots, g->key_cap, &g->kv[0].key, sizeof(struct gguf_kv), key,
                           strlen(key));
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (gguf_str_eq(g->kv[i].key, key)) return (int64_t)i;
    return -1;
}

int64_t gguf_find_tensor(const struct gguf *g, const char *name)
{
    if (g->tensor_slots)
        return strset_find(g->tensor_slots, g->tensor_cap, &g->tensors[0].name,
                           sizeof(struct gguf_tensor), name, strlen(name));
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (gguf_str_eq(g->tensors[i].name, name)) return (int64_t)i;
    return -1;
}

bool gguf_is_vocab_only(const struct gguf *g)
{
    return g->n_tensors == 0;
}

/* Read scalar integer value as signed 128-ish: returns false for non-ints. */
static bool read_int(const struct gguf *g, const struct gguf_kv *kv, int64_t *s, uint64_t *u,
                     bool *is_unsigned)
{
    const uint8_t *p = g->buf + kv->value_off;
    *is_unsigned = false;
    switch (kv->type) {
    case GGUF_U8: *u = p[0]; *is_unsigned = true; return true;
    case GGUF_I8: *s = (int8_t)p[0]; return true;
    case GGUF_BOOL: *u = p[0]; *is_unsigned = true; return true;
    case GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *u = v; *is_unsigned = true; return true; }
    case GGUF_I16: { int16_t v; memcpy(&v, p, 2); *s = v; return true; }
    case GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *u = v; *is_unsigned = true; return true; }
    case GGUF_I32: { int32_t v; memcpy(&v, p, 4); *s = v; return true; }
    case GGUF_U64: { uint64_t v; memcpy(&v, p, 8); *u = v; *is_unsigned = true; return true; }
    case GGUF_I64: { int64_t v; memcpy(&v, p, 8); *s = v; return true; }
    }
    return false;
}

static const struct gguf_kv *kv_of(const struct gguf *g, const char *key)
{
    int64_t i = gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i];
}

bool gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out)
{
    const struct gguf_kv *kv = kv_of(g, key);
    int64_t s;
    uint64_t u;
    bool uns;
    if (!kv || kv->type == GGUF_BOOL || !read_int(g, kv, &s, &u, &uns)) return false;
    if (uns) {
        *out = u;
        return true;
    }
    if (s < 0) return false;
    *out = (uint64_t)s;
    return true;
}

bool gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out)
{
    uint64_t v;
    if (!gguf_get_u64(g, key, &v) || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

bool gguf_get_i64(const struct gguf *g, const char *key, int64_t *out)
{
    const struct gguf_kv *kv = kv_of(g, key);
    int64_t s;
    uint64_t u;
    bool uns;
    if (!kv || kv->type == GGUF_BOOL || !read_int(g, kv, &s, &u, &uns)) return false;
    if (uns) {
        if (u > INT64_MAX) return false;
        *out = (int64_t)u;
        return true;
    }
    *out = s;
    return true;
}

bool gguf_get_f64(const struct gguf *g, const char *key, double *out)
{
    const struct gguf_kv *kv = kv_of(g, key);
    if (!kv) return false;
    const uint8_t *p = g->buf + kv->value_off;
    if (kv->type == GGUF_F32) {
        float f;
        memcpy(&f, p, 4);
        *out = f;
        return true;
    }
    if (kv->type == GGUF_F64) {
        memcpy(out, p, 8);
        return true;
    }
    return false;
}

bool gguf_get_bool(const struct gguf *g, const char *key, bool *out)
{
    const struct gguf_kv *kv = kv_of(g, key);
    if (!kv || kv->type != GGUF_BOOL) return false;
    *out = g->buf[kv->value_off] != 0;
    return true;
}

bool gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out)
{
    const struct gguf_kv *kv = kv_of(g, key);
    if (!kv || kv->type != GGUF_STRING) return false;
    uint64_t len;
    memcpy(&len, g->buf + kv->value_off, 8);
    out->p = (const char *)g->buf + kv->value_off + 8;
    out->len = len;
    return true;
}

bool gguf_get_arr(const struct gguf *g, const char *key, uint32_t *elem_type, uint64_t *n)
{
    const struct gguf_kv *kv = kv_of(g, key);
    if (!kv || kv->type != GGUF_ARRAY) return false;
    *elem_type = kv->arr_type;
    *n = kv->arr_n;
    return true;
}

struct gguf_str gguf_arr_str(const struct gguf *g, int64_t kv_idx, uint64_t i)
{
    const struct gguf_kv *kv = &g->kv[kv_idx];
    struct gguf_str s = {"", 0};
    if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING || i >= kv->arr_n) return s;
    uint64_t len;
    memcpy(&len, g->buf + kv->str_offs[i], 8);
    s.p = (const char *)g->buf + kv->str_offs[i] + 8;
    s.len = len;
    return s;
}

const void *gguf_arr_data(const struct gguf *g, int64_t kv_idx)
{
    const struct gguf_kv *kv = &g->kv[kv_idx];
    if (kv->type != GGUF_ARRAY || !vtype_size(kv->arr_type)) return NULL;
    return g->buf + kv->arr_data_off;
}

static void format_scalar(const uint8_t *p, uint32_t t, char *buf, size_t cap)
{
    switch (t) {
    case GGUF_U8: snprintf(buf, cap, "%u", p[0]); break;
    case GGUF_I8: snprintf(buf, cap, "%d", (int8_t)p[0]); break;
    case GGUF_BOOL: snprintf(buf, cap, "%s", p[0] ? "true" : "false"); break;
    case GGUF_U16: { uint16_t v; memcpy(&v, p, 2); snprintf(buf, cap, "%u", v); break; }
    case GGUF_I16: { int16_t v; memcpy(&v, p, 2); snprintf(buf, cap, "%d", v); break; }
    case GGUF_U32: { uint32_t v; memcpy(&v, p, 4); snprintf(buf, cap, "%u", v); break; }
    case GGUF_I32: { int32_t v; memcpy(&v, p, 4); snprintf(buf, cap, "%d", v); break; }
    case GGUF_F32: { float v; memcpy(&v, p, 4); snprintf(buf, cap, "%g", v); break; }
    case GGUF_U64: { uint64_t v; memcpy(&v, p, 8); snprintf(buf, cap, "%" PRIu64, v); break; }
    case GGUF_I64: { int64_t v; memcpy(&v, p, 8); snprintf(buf, cap, "%" PRId64, v); break; }
    case GGUF_F64: { double v; memcpy(&v, p, 8); snprintf(buf, cap, "%g", v); break; }
    default: snprintf(buf, cap, "?");
    }
}

static void format_str(const char *p, uint64_t len, char *buf, size_t cap, size_t max)
{
    size_t o = 0;
    if (cap < 8) return;
    buf[o++] = '"';
    for (uint64_t i = 0; i < len && o + 6 < cap; i++) {
        if (i == max) {
            o += (size_t)snprintf(buf + o, cap - o, "...");
            break;
        }
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else if (ch < 0x20 || ch == '"' || ch == '\\') {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
        } else {
            buf[o++] = (char)ch;
        }
    }
    buf[o++] = '"';
    buf[o] = 0;
}

void gguf_format_value(const struct gguf *g, int64_t kv_idx, char *buf, size_t cap)
{
    const struct gguf_kv *kv = &g->kv[kv_idx];
    const uint8_t *p = g->buf + kv->value_off;
    if (kv->type == GGUF_STRING) {
        uint64_t len;
        memcpy(&len, p, 8);
        format_str((const char *)p + 8, len, buf, cap, 120);
        return;
    }
    if (kv->type != GGUF_ARRAY) {
        format_scalar(p, kv->type, buf, cap);
        return;
    }
    size_t o = (size_t)snprintf(buf, cap, "[%s x %" PRIu64 "]", gguf_vtype_name(kv->arr_type),
                                kv->arr_n);
    uint64_t show = kv->arr_n < 4 ? kv->arr_n : 4;
    for (uint64_t i = 0; i < show && o + 40 < cap; i++) {
        char item[160];
        if (kv->arr_type == GGUF_STRING) {
            struct gguf_str s = gguf_arr_str(g, kv_idx, i);
            format_str(s.p, s.len, item, sizeof(item), 24);
        } else if (vtype_size(kv->arr_type)) {
            format_scalar(g->buf + kv->arr_data_off + i * vtype_size(kv->arr_type), kv->arr_type,
                          item, sizeof(item));
        } else {
            snprintf(item, sizeof(item), "[...]");
        }
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : " ", item);
    }
    if (show < kv->arr_n && o + 8 < cap) snprintf(buf + o, cap - o, ", ...");
}
