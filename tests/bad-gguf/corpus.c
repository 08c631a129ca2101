#include "corpus.h"

#include "common/err.h"
#include "common/gguf.h"
#include "common/gguf_write.h"
#include "common/model.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the valid base model ---- */

/* What to build and what to break while building. */
struct spec {
    const char *arch;   /* "llama", "qwen2", "qwen3" */
    uint32_t version;   /* 2 or 3 */
    uint32_t alignment; /* 32 unless testing general.alignment */
    uint32_t dim, layers, heads, kv_heads, ffn, vocab;
    const char *omit_key; /* hyperparameter key left out ("embedding_length") */
    const char *u32_key;  /* hyperparameter key given u32_val instead */
    uint32_t u32_val;
    const char *omit_tensor; /* tensor left out */
    const char *reshape;     /* tensor whose last dimension is doubled */
    const char *f16_tensor;  /* tensor stored as F16 instead of F32 */
};

/* The writer plus where it put things, to patch and to name positions. */
struct built {
    struct gguf_writer *w;
    const char *keys[48]; /* in the order written */
    int n_keys;
    char key_store[48][64];
    const char *tensors[64];
    int n_tensors;
    char tensor_store[64][64];
};

/* Remember a key (copied) in the order it is written; returns the copy. */
static const char *note_key(struct built *b, const char *key)
{
    if (b->n_keys == 48) abort();
    snprintf(b->key_store[b->n_keys], 64, "%s", key);
    b->keys[b->n_keys] = b->key_store[b->n_keys];
    return b->keys[b->n_keys++];
}

static int64_t key_index(const struct built *b, const char *key)
{
    for (int i = 0; i < b->n_keys; i++)
        if (strcmp(b->keys[i], key) == 0) return i;
    abort(); /* a case asked for a key the base model does not write */
}

static int64_t tensor_index(const struct built *b, const char *name)
{
    for (int i = 0; i < b->n_tensors; i++)
        if (strcmp(b->tensors[i], name) == 0) return i;
    abort();
}

static void default_spec(struct spec *s, const char *arch)
{
    memset(s, 0, sizeof(*s));
    s->arch = arch;
    s->version = 3;
    s->alignment = 32;
    s->dim = 16;
    s->layers = 1;
    s->heads = 4;
    s->kv_heads = 2;
    s->ffn = 32;
    s->vocab = 8;
}

static const char *const tokens[8] = {"<unk>", "<s>", "</s>", "a", "b", "c", "ab", "abc"};
static const float scores[8] = {0, 0, 0, -1, -2, -3, -4, -5};

/* Hyperparameter key arch.suffix, unless the spec omits or overrides it. */
static int hp_u32(struct built *b, const struct spec *s, const char *suffix, uint32_t v)
{
    if (s->omit_key && strcmp(s->omit_key, suffix) == 0) return 0;
    if (s->u32_key && strcmp(s->u32_key, suffix) == 0) v = s->u32_val;
    char key[64];
    snprintf(key, sizeof(key), "%s.%s", s->arch, suffix);
    return gguf_writer_add_u32(b->w, note_key(b, key), v);
}

static int hp_f32(struct built *b, const struct spec *s, const char *suffix, float v)
{
    if (s->omit_key && strcmp(s->omit_key, suffix) == 0) return 0;
    char key[64];
    snprintf(key, sizeof(key), "%s.%s", s->arch, suffix);
    return gguf_writer_add_f32(b->w, note_key(b, key), v);
}

static int add_t(struct built *b, const struct spec *s, const char *name, uint64_t ne0,
                 uint64_t ne1)
{
    if (s->omit_tensor && strcmp(s->omit_tensor, name) == 0) return 0;
    uint64_t ne[2] = {ne0, ne1};
    uint32_t nd = ne1 ? 2 : 1;
    if (s->reshape && strcmp(s->reshape, name) == 0) ne[nd - 1] *= 2;
    uint32_t type =
        s->f16_tensor && strcmp(s->f16_tensor, name) == 0 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    if (b->n_tensors == 64) abort();
    snprintf(b->tensor_store[b->n_tensors], 64, "%s", name);
    b->tensors[b->n_tensors] = b->tensor_store[b->n_tensors];
    b->n_tensors++;
    int64_t i = gguf_writer_add_tensor(b->w, name, type, nd, ne, NULL);
    return i < 0 ? (int)i : 0;
}

static int build_base(const struct spec *s, struct built *b)
{
    memset(b, 0, sizeof(*b));
    b->w = gguf_writer_new(s->version, s->alignment);
    if (!b->w) return ST_ENOMEM;
    int rc = 0;
    if (s->alignment != 32) note_key(b, "general.alignment");
    if (!(s->omit_key && strcmp(s->omit_key, "general.architecture") == 0)) {
        note_key(b, "general.architecture");
        rc = gguf_writer_add_str(b->w, "general.architecture", s->arch);
    }
    note_key(b, "general.name");
    if (!rc) rc = gguf_writer_add_str(b->w, "general.name", "bad-gguf corpus base");
    note_key(b, "general.file_type");
    if (!rc) rc = gguf_writer_add_u32(b->w, "general.file_type", 0);
    uint32_t hd = s->dim / s->heads;
    if (!rc) rc = hp_u32(b, s, "context_length", 256);
    if (!rc) rc = hp_u32(b, s, "embedding_length", s->dim);
    if (!rc) rc = hp_u32(b, s, "block_count", s->layers);
    if (!rc) rc = hp_u32(b, s, "feed_forward_length", s->ffn);
    if (!rc) rc = hp_u32(b, s, "attention.head_count", s->heads);
    if (!rc) rc = hp_u32(b, s, "attention.head_count_kv", s->kv_heads);
    if (!rc) rc = hp_u32(b, s, "rope.dimension_count", hd);
    if (!rc) rc = hp_f32(b, s, "attention.layer_norm_rms_epsilon", 1e-5f);
    if (!rc) rc = hp_f32(b, s, "rope.freq_base", 10000.0f);
    note_key(b, "tokenizer.ggml.model");
    if (!rc) rc = gguf_writer_add_str(b->w, "tokenizer.ggml.model", "llama");
    note_key(b, "tokenizer.ggml.tokens");
    if (!rc) rc = gguf_writer_add_arr_str(b->w, "tokenizer.ggml.tokens", tokens, 8);
    note_key(b, "tokenizer.ggml.scores");
    if (!rc) rc = gguf_writer_add_arr(b->w, "tokenizer.ggml.scores", GGUF_F32, scores, 8);
    note_key(b, "tokenizer.ggml.add_bos_token");
    if (!rc) rc = gguf_writer_add_bool(b->w, "tokenizer.ggml.add_bos_token", true);
    note_key(b, "tokenizer.ggml.bos_token_id");
    if (!rc) rc = gguf_writer_add_u32(b->w, "tokenizer.ggml.bos_token_id", 1);
    if (rc) goto err;

    uint64_t d = s->dim, q = (uint64_t)s->heads * hd, kv = (uint64_t)s->kv_heads * hd;
    if ((rc = add_t(b, s, "token_embd.weight", d, s->vocab)) ||
        (rc = add_t(b, s, "output_norm.weight", d, 0)))
        goto err;
    for (uint32_t l = 0; l < s->layers; l++) {
        char n[14][48];
        const char *suf[14] = {"attn_norm.weight",   "attn_q.weight",      "attn_k.weight",
                               "attn_v.weight",      "attn_output.weight", "ffn_norm.weight",
                               "ffn_gate.weight",    "ffn_up.weight",      "ffn_down.weight",
                               "attn_q.bias",        "attn_k.bias",        "attn_v.bias",
                               "attn_q_norm.weight", "attn_k_norm.weight"};
        uint64_t shp[14][2] = {{d, 0},  {d, q},      {d, kv},     {d, kv},     {q, d},
                               {d, 0},  {d, s->ffn}, {d, s->ffn}, {s->ffn, d}, {q, 0},
                               {kv, 0}, {kv, 0},     {hd, 0},     {hd, 0}};
        bool qwen2 = strcmp(s->arch, "qwen2") == 0, qwen3 = strcmp(s->arch, "qwen3") == 0;
        for (int k = 0; k < 14; k++) {
            if (k >= 9 && k < 12 && !qwen2) continue;
            if (k >= 12 && !qwen3) continue;
            snprintf(n[k], sizeof(n[k]), "blk.%u.%s", l, suf[k]);
            if ((rc = add_t(b, s, n[k], shp[k][0], shp[k][1]))) goto err;
        }
    }
    return 0;
err:
    gguf_writer_destroy(&b->w);
    return rc;
}

static int finish(struct built *b, struct corpus_file *f)
{
    int rc = gguf_writer_to_mem(b->w, &f->buf, &f->len);
    return rc;
}

int corpus_good_model(const char *arch, uint32_t version, struct corpus_file *f)
{
    struct spec s;
    struct built b;
    default_spec(&s, arch);
    s.version = version;
    memset(f, 0, sizeof(*f));
    int rc = build_base(&s, &b);
    if (!rc) rc = finish(&b, f);
    gguf_writer_destroy(&b.w);
    return rc;
}

void corpus_file_free(struct corpus_file *f)
{
    free(f->buf);
    f->buf = NULL;
    f->len = 0;
}

int corpus_check(const uint8_t *buf, uint64_t len, char *msg, size_t cap)
{
    struct st_errbuf eb = {{0}};
    struct gguf *g = NULL;
    int rc = gguf_parse(buf, len, len, &g, &eb);
    if (!rc && !gguf_is_vocab_only(g)) {
        struct model_hparams hp;
        rc = model_hparams_read(g, &hp, &eb);
        if (!rc) rc = model_validate(g, &hp, &eb);
    }
    gguf_destroy(&g);
    snprintf(msg, cap, "%s", rc ? eb.msg : "");
    return rc;
}

/* ---- helpers for the cases ---- */

static void put_u32(struct corpus_file *f, uint64_t off, uint32_t v)
{
    if (off + 4 > f->len) abort();
    memcpy(f->buf + off, &v, 4);
}

static void put_u64(struct corpus_file *f, uint64_t off, uint64_t v)
{
    if (off + 8 > f->len) abort();
    memcpy(f->buf + off, &v, 8);
}

static void expect(struct corpus_file *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void expect(struct corpus_file *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->expect, sizeof(f->expect), fmt, ap);
    va_end(ap);
}

/* Build the default llama base (after `tweak` on its spec) into f and keep
 * the writer in b for positions. */
static int base(struct built *b, struct corpus_file *f, const char *arch,
                void (*tweak)(struct spec *))
{
    struct spec s;
    default_spec(&s, arch);
    if (tweak) tweak(&s);
    memset(f, 0, sizeof(*f));
    int rc = build_base(&s, b);
    if (!rc && (rc = finish(b, f))) gguf_writer_destroy(&b->w);
    return rc;
}

/* Position of entry i's value type field and value. */
static uint64_t kv_type_pos(const struct built *b, const struct corpus_file *f, int64_t i)
{
    uint64_t p = gguf_writer_kv_pos(b->w, i), klen;
    memcpy(&klen, f->buf + p, 8);
    return p + 8 + klen;
}

/* Position of tensor i's dims, type and offset fields. */
static uint64_t ti_ndims_pos(const struct built *b, const struct corpus_file *f, int64_t i)
{
    uint64_t p = gguf_writer_tensor_info_pos(b->w, i), nlen;
    memcpy(&nlen, f->buf + p, 8);
    return p + 8 + nlen;
}

static uint64_t ti_type_pos(const struct built *b, const struct corpus_file *f, int64_t i)
{
    uint64_t p = ti_ndims_pos(b, f, i);
    uint32_t nd;
    memcpy(&nd, f->buf + p, 4);
    return p + 4 + 8ull * nd;
}

/* Cases that only need the file and the writer, patched after building. */
#define CASE(fn)                                                                                   \
    static int fn##_patch(struct built *b, struct corpus_file *f);                                 \
    static int fn(struct corpus_file *f)                                                           \
    {                                                                                              \
        struct built b;                                                                            \
        int rc = base(&b, f, "llama", NULL);                                                       \
        if (rc) return rc;                                                                         \
        rc = fn##_patch(&b, f);                                                                    \
        gguf_writer_destroy(&b.w);                                                                 \
        return rc;                                                                                 \
    }                                                                                              \
    static int fn##_patch(struct built *b, struct corpus_file *f)

/* Cases that change the spec of the base model. */
#define SPEC_CASE(fn, arch, msg_fmt, ...)                                                          \
    static void fn##_tweak(struct spec *s);                                                        \
    static int fn(struct corpus_file *f)                                                           \
    {                                                                                              \
        struct built b;                                                                            \
        int rc = base(&b, f, arch, fn##_tweak);                                                    \
        if (rc) return rc;                                                                         \
        expect(f, msg_fmt, __VA_ARGS__);                                                           \
        gguf_writer_destroy(&b.w);                                                                 \
        return 0;                                                                                  \
    }                                                                                              \
    static void fn##_tweak(struct spec *s)

/* ---- header ---- */

CASE(bad_magic)
{
    memcpy(f->buf, "GGML", 4);
    expect(f, "header at byte 0: not a GGUF file");
    return 0;
}

CASE(tiny_file)
{
    f->len = 3;
    expect(f, "header at byte 0: not a GGUF file");
    return 0;
}

CASE(version1)
{
    put_u32(f, 4, 1);
    expect(f, "GGUF version 1 is not supported");
    return 0;
}

CASE(version99)
{
    put_u32(f, 4, 99);
    expect(f, "header at byte 4: unknown GGUF version 99");
    return 0;
}

CASE(version_big_endian)
{
    put_u32(f, 4, 0x03000000u);
    expect(f, "GGUF version 3 in big-endian byte order");
    return 0;
}

CASE(trunc_version)
{
    f->len = 6;
    expect(f, "header at byte 4: file ends inside a 4-byte integer");
    return 0;
}

CASE(trunc_counts)
{
    f->len = 20;
    expect(f, "header at byte 16: file ends inside an 8-byte integer");
    return 0;
}

CASE(huge_kv_count)
{
    put_u64(f, 16, UINT64_MAX / 2);
    expect(f, "header at byte 16: metadata count larger than the file could hold");
    return 0;
}

CASE(huge_tensor_count)
{
    put_u64(f, 8, 1ull << 40);
    expect(f, "header at byte 8: tensor count larger than the file could hold");
    return 0;
}

CASE(too_many_tensors_for_limit)
{
    /* pad the file so the size bound alone would allow the count */
    uint64_t n = GGUF_MAX_TENSORS + 1, need = 24 + n * 33 + 64;
    uint8_t *p = realloc(f->buf, need);
    if (!p) return ST_ENOMEM;
    memset(p + f->len, 0, need - f->len);
    f->buf = p;
    f->len = need;
    put_u64(f, 8, n);
    expect(f, "header at byte 8: tensor count larger than the file could hold");
    return 0;
}

/* ---- metadata ---- */

CASE(trunc_in_key_length)
{
    /* the last entry: cut earlier and the count bound fails first */
    int64_t i = key_index(b, "tokenizer.ggml.bos_token_id");
    uint64_t p = gguf_writer_kv_pos(b->w, i);
    f->len = p + 5;
    expect(f, "metadata entry %" PRId64 " at byte %" PRIu64 ": file ends inside an 8-byte integer",
           i, p);
    return 0;
}

CASE(key_length_past_end)
{
    put_u64(f, 24, 1000000000ull);
    expect(f, "metadata entry 0 at byte 24: string length 1000000000 runs past the end");
    return 0;
}

CASE(key_length_overflow)
{
    uint64_t p = gguf_writer_kv_pos(b->w, key_index(b, "general.name"));
    put_u64(f, p, UINT64_MAX - 3);
    expect(f, "metadata entry 1 at byte %" PRIu64 ": string length %" PRIu64 " runs past the end",
           p, UINT64_MAX - 3);
    return 0;
}

CASE(empty_key)
{
    /* shrink general.name's key length to 0: its bytes become the type */
    uint64_t p = gguf_writer_kv_pos(b->w, key_index(b, "general.name"));
    put_u64(f, p, 0);
    expect(f, "metadata key '' at byte %" PRIu64 ": empty key", p + 8);
    return 0;
}

CASE(key_with_nul)
{
    uint64_t p = gguf_writer_kv_pos(b->w, key_index(b, "general.file_type"));
    f->buf[p + 8 + 7] = 0; /* "general\0file_type" */
    expect(f,
           "metadata entry %" PRId64 " at byte %" PRIu64
           ": key contains control byte 0x00 at index 7",
           key_index(b, "general.file_type"), p + 8 + 17);
    return 0;
}

CASE(tensor_name_with_newline)
{
    int64_t i = tensor_index(b, "blk.0.ffn_gate.weight");
    uint64_t p = gguf_writer_tensor_info_pos(b->w, i);
    f->buf[p + 8 + 5] = '\n';
    expect(f,
           "tensor info %" PRId64 " at byte %" PRIu64
           ": name contains control byte 0x0a at index 5",
           i, p + 8 + 21);
    return 0;
}

CASE(trunc_in_value_type)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.add_bos_token"));
    f->len = p + 2;
    expect(f,
           "metadata key 'tokenizer.ggml.add_bos_token' at byte %" PRIu64
           ": file ends inside a 4-byte integer",
           p);
    return 0;
}

CASE(trunc_in_u32_value)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.bos_token_id")) + 4;
    f->len = p + 3;
    expect(f,
           "metadata key 'tokenizer.ggml.bos_token_id' at byte %" PRIu64
           ": file ends inside a value",
           p);
    return 0;
}

CASE(unknown_value_type)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "general.file_type"));
    put_u32(f, p, 13);
    expect(f, "metadata key 'general.file_type' at byte %" PRIu64 ": unknown value type 13", p);
    return 0;
}

CASE(string_value_past_end)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "general.name")) + 4;
    put_u64(f, p, f->len);
    expect(f,
           "metadata key 'general.name' at byte %" PRIu64 ": string length %" PRIu64
           " runs past the end",
           p, f->len);
    return 0;
}

CASE(trunc_in_string_array)
{
    /* cut inside the last token string, so the count bound still passes */
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.tokens")) + 4 + 12;
    for (int i = 0; i < 7; i++) {
        uint64_t l;
        memcpy(&l, f->buf + p, 8);
        p += 8 + l;
    }
    f->len = p + 9; /* length 3 read, one byte of "abc" left */
    expect(f,
           "metadata key 'tokenizer.ggml.tokens' at byte %" PRIu64 ": string length 3 runs "
           "past the end",
           p);
    return 0;
}

CASE(unknown_array_elem_type)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.scores")) + 4;
    put_u32(f, p, 42);
    expect(f,
           "metadata key 'tokenizer.ggml.scores' at byte %" PRIu64
           ": unknown array element type 42",
           p + 12);
    return 0;
}

CASE(numeric_array_past_end)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.scores")) + 4;
    put_u64(f, p + 4, 1ull << 61);
    expect(f,
           "metadata key 'tokenizer.ggml.scores' at byte %" PRIu64
           ": array runs past the end of the file",
           p + 12);
    return 0;
}

CASE(string_array_huge_count)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.tokens")) + 4;
    put_u64(f, p + 4, UINT64_MAX);
    expect(f,
           "metadata key 'tokenizer.ggml.tokens' at byte %" PRIu64
           ": array count larger than the file",
           p + 12);
    return 0;
}

CASE(bool_not_0_1)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "tokenizer.ggml.add_bos_token")) + 4;
    f->buf[p] = 2;
    expect(f,
           "metadata key 'tokenizer.ggml.add_bos_token' at byte %" PRIu64 ": bool value not 0 or 1",
           p);
    return 0;
}

/* Keys built with a placeholder, then patched to be equal. */
static int duplicate_key_built(struct corpus_file *f)
{
    struct gguf_writer *w = gguf_writer_new(3, 32);
    if (!w) return ST_ENOMEM;
    int rc = gguf_writer_add_str(w, "general.architecture", "llama");
    if (!rc) rc = gguf_writer_add_u32(w, "general.aaaa", 1);
    if (!rc) rc = gguf_writer_add_u32(w, "general.bbbb", 2);
    uint64_t p = gguf_writer_kv_pos(w, 2);
    memset(f, 0, sizeof(*f));
    if (!rc) rc = gguf_writer_to_mem(w, &f->buf, &f->len);
    gguf_writer_destroy(&w);
    if (rc) return rc;
    memcpy(f->buf + p + 8, "general.aaaa", 12);
    expect(f, "metadata key 'general.aaaa' at byte %" PRIu64 ": duplicate key", p);
    return 0;
}

/* Nested arrays: [[[...]]] deeper than the reader allows. */
static int nested_too_deep(struct corpus_file *f)
{
    uint8_t val[12 * 12];
    uint64_t o = 0;
    for (int d = 0; d < 11; d++) {
        uint32_t et = d < 10 ? GGUF_ARRAY : GGUF_U8;
        uint64_t n = d < 10 ? 1 : 0;
        memcpy(val + o, &et, 4);
        memcpy(val + o + 4, &n, 8);
        o += 12;
    }
    struct gguf_writer *w = gguf_writer_new(3, 32);
    if (!w) return ST_ENOMEM;
    int rc = gguf_writer_add_str(w, "general.architecture", "llama");
    if (!rc) rc = gguf_writer_add_raw(w, "deep", GGUF_ARRAY, val, o);
    uint64_t p = gguf_writer_kv_pos(w, 1) + 8 + 4 + 4;
    memset(f, 0, sizeof(*f));
    if (!rc) rc = gguf_writer_to_mem(w, &f->buf, &f->len);
    gguf_writer_destroy(&w);
    /* depth 0 is the entry's own array; the 9th nested header fails */
    expect(f, "metadata key 'deep' at byte %" PRIu64 ": arrays nested too deeply", p + 12 * 8);
    return rc;
}

static int bool_array_bad(struct corpus_file *f)
{
    uint8_t v[4] = {0, 1, 1, 7};
    struct gguf_writer *w = gguf_writer_new(3, 32);
    if (!w) return ST_ENOMEM;
    int rc = gguf_writer_add_arr(w, "flags", GGUF_BOOL, v, 4);
    uint64_t p = gguf_writer_kv_pos(w, 0) + 8 + 5 + 4 + 12;
    memset(f, 0, sizeof(*f));
    if (!rc) rc = gguf_writer_to_mem(w, &f->buf, &f->len);
    gguf_writer_destroy(&w);
    expect(f, "metadata key 'flags' at byte %" PRIu64 ": bool array element not 0 or 1", p);
    return rc;
}

static int alignment_case(struct corpus_file *f, uint32_t type, const void *v, uint64_t len)
{
    struct gguf_writer *w = gguf_writer_new(3, 32);
    if (!w) return ST_ENOMEM;
    int rc = gguf_writer_add_raw(w, "general.alignment", type, v, len);
    uint64_t p = gguf_writer_kv_pos(w, 0) + 8 + 17 + 4;
    memset(f, 0, sizeof(*f));
    if (!rc) rc = gguf_writer_to_mem(w, &f->buf, &f->len);
    gguf_writer_destroy(&w);
    expect(f,
           "metadata key 'general.alignment' at byte %" PRIu64 ": must be an integer power of two",
           p);
    return rc;
}

static int alignment_not_pow2(struct corpus_file *f)
{
    uint32_t a = 48;
    return alignment_case(f, GGUF_U32, &a, 4);
}

static int alignment_zero(struct corpus_file *f)
{
    uint64_t a = 0;
    return alignment_case(f, GGUF_U64, &a, 8);
}

static int alignment_string(struct corpus_file *f)
{
    uint8_t v[10] = {2, 0, 0, 0, 0, 0, 0, 0, '3', '2'};
    return alignment_case(f, GGUF_STRING, v, 10);
}

/* ---- tensor infos ---- */

CASE(trunc_in_tensor_name)
{
    uint64_t p = gguf_writer_tensor_info_pos(b->w, 0);
    f->len = p + 8 + 4;
    expect(f, "tensor info 0 at byte %" PRIu64 ": string length 17 runs past the end", p);
    return 0;
}

CASE(tensor_name_too_long)
{
    uint64_t p = gguf_writer_tensor_info_pos(b->w, 0);
    /* make the name swallow the following bytes: 17 -> 70 */
    put_u64(f, p, 70);
    expect(f, "tensor info 0 at byte %" PRIu64 ": name empty or 64 bytes or longer", p + 8 + 70);
    return 0;
}

CASE(n_dims_5)
{
    uint64_t p = ti_ndims_pos(b, f, 0);
    put_u32(f, p, 5);
    expect(f, "tensor 'token_embd.weight' at byte %" PRIu64 ": n_dims 5 not in 1..4", p);
    return 0;
}

CASE(dim_zero)
{
    uint64_t p = ti_ndims_pos(b, f, 0) + 4 + 8;
    put_u64(f, p, 0);
    expect(f, "tensor 'token_embd.weight' at byte %" PRIu64 ": dimension 1 is 0", p);
    return 0;
}

CASE(dims_overflow)
{
    /* 2^40 x 2^40: each allowed alone, the product is not */
    uint64_t p = ti_ndims_pos(b, f, 0) + 4;
    put_u64(f, p, 1ull << 40);
    put_u64(f, p + 8, 1ull << 40);
    expect(f, "tensor 'token_embd.weight' at byte %" PRIu64 ": product of dimensions overflows",
           p + 8);
    return 0;
}

CASE(unsupported_type)
{
    int64_t i = tensor_index(b, "blk.0.attn_q.weight");
    uint64_t p = ti_type_pos(b, f, i);
    put_u32(f, p, 16); /* IQ2_XXS */
    expect(f,
           "tensor blk.0.attn_q.weight has type IQ2_XXS, which staged does not support (at "
           "byte %" PRIu64 ")",
           p);
    return 0;
}

CASE(unknown_type)
{
    int64_t i = tensor_index(b, "blk.0.ffn_up.weight");
    uint64_t p = ti_type_pos(b, f, i);
    put_u32(f, p, 1234);
    expect(f, "tensor blk.0.ffn_up.weight has type 1234 (unknown), which staged does not support");
    return 0;
}

CASE(row_not_block_multiple)
{
    /* token_embd rows are 16 long: as Q8_0 (blocks of 32) they cannot be */
    uint64_t p = ti_type_pos(b, f, 0);
    put_u32(f, p, GGML_TYPE_Q8_0);
    expect(f,
           "tensor 'token_embd.weight' at byte %" PRIu64 ": row length 16 not a multiple of "
           "the Q8_0 block size 32",
           p);
    return 0;
}

CASE(trunc_in_tensor_offset)
{
    int64_t i = tensor_index(b, "blk.0.attn_k.weight");
    uint64_t p = ti_type_pos(b, f, i) + 4;
    f->len = p + 5;
    expect(f,
           "tensor 'blk.0.attn_k.weight' at byte %" PRIu64 ": file ends inside an 8-byte integer",
           p);
    return 0;
}

CASE(duplicate_tensor)
{
    /* blk.0.attn_k.weight -> blk.0.attn_q.weight (same length) */
    int64_t i = tensor_index(b, "blk.0.attn_k.weight");
    uint64_t p = gguf_writer_tensor_info_pos(b->w, i);
    memcpy(f->buf + p + 8, "blk.0.attn_q.weight", 19);
    expect(f, "tensor blk.0.attn_q.weight at byte %" PRIu64 ": duplicate tensor name", p);
    return 0;
}

/* ---- tensor data layout ---- */

CASE(misaligned_offset)
{
    int64_t i = tensor_index(b, "blk.0.attn_v.weight");
    uint64_t p = ti_type_pos(b, f, i) + 4;
    uint64_t off = gguf_writer_tensor_offset(b->w, i) + 4;
    put_u64(f, p, off);
    expect(f,
           "tensor blk.0.attn_v.weight (info at byte %" PRIu64 "): data offset %" PRIu64
           " not a multiple of the alignment 32",
           gguf_writer_tensor_info_pos(b->w, i), off);
    return 0;
}

CASE(overlapping_tensors)
{
    /* ffn_up's data placed where ffn_gate's is */
    int64_t g = tensor_index(b, "blk.0.ffn_gate.weight"),
            u = tensor_index(b, "blk.0.ffn_up.weight");
    uint64_t p = ti_type_pos(b, f, u) + 4;
    put_u64(f, p, gguf_writer_tensor_offset(b->w, g) + 32);
    expect(f,
           "tensor blk.0.ffn_up.weight (info at byte %" PRIu64 "): data at offset %" PRIu64
           " overlaps tensor blk.0.ffn_gate.weight",
           gguf_writer_tensor_info_pos(b->w, u), gguf_writer_tensor_offset(b->w, g) + 32);
    return 0;
}

CASE(data_truncated)
{
    int64_t last = b->n_tensors - 1;
    f->len -= 4; /* the last tensor loses its last float */
    expect(f, "tensor %s (info at byte %" PRIu64 "): data [", b->tensors[last],
           gguf_writer_tensor_info_pos(b->w, last));
    return 0;
}

CASE(offset_near_u64_max)
{
    int64_t i = tensor_index(b, "output_norm.weight");
    put_u64(f, ti_type_pos(b, f, i) + 4, UINT64_MAX - 31); /* aligned, wraps when added */
    expect(f,
           "tensor output_norm.weight (info at byte %" PRIu64 "): data [%" PRIu64
           ", +64) runs past the end of the file",
           gguf_writer_tensor_info_pos(b->w, i),
           gguf_writer_data_offset(b->w) + (UINT64_MAX - 31)); /* wraps as the reader prints */
    return 0;
}

CASE(data_section_missing)
{
    /* the file ends right after the last tensor info: no data at all */
    uint64_t end = ti_type_pos(b, f, b->n_tensors - 1) + 4 + 8;
    if (end % 32 == 0) abort(); /* the base model would need another padding case */
    f->len = end;
    expect(f, "tensor data section starts at byte %" PRIu64 " but the file has %" PRIu64 " bytes",
           gguf_writer_data_offset(b->w), end);
    return 0;
}

/* ---- architecture ---- */

SPEC_CASE(no_architecture, "llama", "%s", "metadata key 'general.architecture': missing")
{
    s->omit_key = "general.architecture";
}

CASE(arch_unsupported)
{
    int64_t i = key_index(b, "general.architecture");
    memcpy(f->buf + kv_type_pos(b, f, i) + 4 + 8, "gpt2j", 5);
    expect(f, "architecture 'gpt2j' is not supported");
    return 0;
}

CASE(arch_with_nul)
{
    /* "llama" -> "lla\0a": must not pass as llama */
    int64_t i = key_index(b, "general.architecture");
    f->buf[kv_type_pos(b, f, i) + 4 + 8 + 3] = 0;
    expect(f, "architecture 'lla");
    return 0;
}

SPEC_CASE(missing_embedding_length, "llama", "%s",
          "metadata key 'llama.embedding_length': required by architecture llama but missing")
{
    s->omit_key = "embedding_length";
}

SPEC_CASE(missing_rms_eps, "qwen2", "%s",
          "metadata key 'qwen2.attention.layer_norm_rms_epsilon': required by architecture qwen2")
{
    s->omit_key = "attention.layer_norm_rms_epsilon";
}

SPEC_CASE(missing_head_count, "qwen3", "%s",
          "metadata key 'qwen3.attention.head_count': required by architecture qwen3")
{
    s->omit_key = "attention.head_count";
}

SPEC_CASE(block_count_zero, "llama",
          "metadata key 'llama.block_count' at byte %" PRIu64 ": must be an integer in 1..16777216",
          kv_type_pos(&b, f, key_index(&b, "llama.block_count")) + 4)
{
    s->u32_key = "block_count";
    s->u32_val = 0;
}

SPEC_CASE(kv_heads_not_dividing, "llama", "%s",
          "metadata key 'llama.attention.head_count_kv': 3 does not divide head_count 4")
{
    s->u32_key = "attention.head_count_kv";
    s->u32_val = 3;
}

SPEC_CASE(heads_more_than_dim, "qwen2", "%s",
          "metadata key 'qwen2.attention.head_count': 64 heads for embedding_length 16")
{
    s->u32_key = "attention.head_count";
    s->u32_val = 64;
}

SPEC_CASE(rope_dim_odd, "llama", "%s", "metadata key 'llama.rope.dimension_count': 3 must be even")
{
    s->u32_key = "rope.dimension_count";
    s->u32_val = 3;
}

CASE(rms_eps_out_of_range)
{
    uint64_t p = kv_type_pos(b, f, key_index(b, "llama.attention.layer_norm_rms_epsilon")) + 4;
    float v = -1.0f;
    memcpy(f->buf + p, &v, 4);
    expect(f,
           "metadata key 'llama.attention.layer_norm_rms_epsilon' at byte %" PRIu64
           ": must be a float in",
           p);
    return 0;
}

SPEC_CASE(missing_ffn_down, "llama", "%s",
          "tensor blk.0.ffn_down.weight: required by the architecture but missing")
{
    s->omit_tensor = "blk.0.ffn_down.weight";
}

SPEC_CASE(missing_token_embd, "llama", "%s", "tensor token_embd.weight: required but missing")
{
    s->omit_tensor = "token_embd.weight";
}

SPEC_CASE(qwen2_missing_v_bias, "qwen2", "%s",
          "tensor blk.0.attn_v.bias: required by the architecture but missing")
{
    s->omit_tensor = "blk.0.attn_v.bias";
}

SPEC_CASE(qwen3_missing_k_norm, "qwen3", "%s",
          "tensor blk.0.attn_k_norm.weight: required by the architecture but missing")
{
    s->omit_tensor = "blk.0.attn_k_norm.weight";
}

SPEC_CASE(layers_missing, "llama", "%s",
          "tensor blk.1.attn_norm.weight: required by the architecture but missing")
{
    /* block_count says 2, the tensors hold 1 layer */
    s->u32_key = "block_count";
    s->u32_val = 2;
}

CASE(extra_layer_tensor)
{
    /* blk.0.ffn_up.weight renamed blk.7.ffn_up.weight: block_count is 1 */
    int64_t i = tensor_index(b, "blk.0.ffn_up.weight");
    uint64_t p = gguf_writer_tensor_info_pos(b->w, i);
    f->buf[p + 8 + 4] = '7';
    expect(f,
           "tensor blk.7.ffn_up.weight (info at byte %" PRIu64
           "): layer 7 but llama.block_count is 1",
           p);
    return 0;
}

SPEC_CASE(more_tokens_than_rows, "qwen2",
          "metadata key 'tokenizer.ggml.tokens' at byte %" PRIu64
          ": 8 tokens but token_embd.weight has 4 rows",
          kv_type_pos(&b, f, key_index(&b, "tokenizer.ggml.tokens")) + 4)
{
    s->vocab = 4; /* embedding rows; the tokenizer keeps its 8 tokens */
}

static int wrong_shape_case(struct corpus_file *f, const char *arch, const char *tensor,
                            const char *want)
{
    struct spec s;
    struct built b;
    default_spec(&s, arch);
    s.reshape = tensor;
    memset(f, 0, sizeof(*f));
    int rc = build_base(&s, &b);
    if (!rc) rc = finish(&b, f);
    if (rc) {
        gguf_writer_destroy(&b.w);
        return rc;
    }
    expect(f, "tensor %s (info at byte %" PRIu64 "): shape %s", tensor,
           gguf_writer_tensor_info_pos(b.w, tensor_index(&b, tensor)), want);
    gguf_writer_destroy(&b.w);
    return 0;
}

static int wrong_shape_attn_k(struct corpus_file *f)
{
    /* kv = 2 heads x 4 = 8 rows, doubled to 16 */
    return wrong_shape_case(f, "llama", "blk.0.attn_k.weight",
                            "[16, 16, 1, 1] but the hyperparameters need [16, 8]");
}

static int wrong_shape_ffn_down(struct corpus_file *f)
{
    return wrong_shape_case(f, "qwen2", "blk.0.ffn_down.weight",
                            "[32, 32, 1, 1] but the hyperparameters need [32, 16]");
}

static int wrong_shape_q_bias(struct corpus_file *f)
{
    return wrong_shape_case(f, "qwen2", "blk.0.attn_q.bias",
                            "[32, 1, 1, 1] but the hyperparameters need [16, 1]");
}

static int wrong_shape_output_norm(struct corpus_file *f)
{
    return wrong_shape_case(f, "qwen3", "output_norm.weight",
                            "[32, 1, 1, 1] but the hyperparameters need [16, 1]");
}

SPEC_CASE(norm_not_f32, "llama",
          "tensor blk.0.ffn_norm.weight (info at byte %" PRIu64
          "): a vector must be F32, found F16",
          gguf_writer_tensor_info_pos(b.w, tensor_index(&b, "blk.0.ffn_norm.weight")))
{
    s->f16_tensor = "blk.0.ffn_norm.weight";
}

const struct corpus_case corpus_cases[] = {
    {"bad-magic", bad_magic},
    {"tiny-file", tiny_file},
    {"version1", version1},
    {"version99", version99},
    {"version-big-endian", version_big_endian},
    {"trunc-version", trunc_version},
    {"trunc-counts", trunc_counts},
    {"huge-kv-count", huge_kv_count},
    {"huge-tensor-count", huge_tensor_count},
    {"tensor-count-over-limit", too_many_tensors_for_limit},
    {"trunc-in-key-length", trunc_in_key_length},
    {"key-length-past-end", key_length_past_end},
    {"key-length-overflow", key_length_overflow},
    {"empty-key", empty_key},
    {"key-with-nul", key_with_nul},
    {"tensor-name-with-newline", tensor_name_with_newline},
    {"trunc-in-value-type", trunc_in_value_type},
    {"trunc-in-u32-value", trunc_in_u32_value},
    {"unknown-value-type", unknown_value_type},
    {"string-value-past-end", string_value_past_end},
    {"trunc-in-string-array", trunc_in_string_array},
    {"unknown-array-elem-type", unknown_array_elem_type},
    {"numeric-array-past-end", numeric_array_past_end},
    {"string-array-huge-count", string_array_huge_count},
    {"bool-not-0-1", bool_not_0_1},
    {"bool-array-bad", bool_array_bad},
    {"duplicate-key", duplicate_key_built},
    {"nested-too-deep", nested_too_deep},
    {"alignment-not-pow2", alignment_not_pow2},
    {"alignment-zero", alignment_zero},
    {"alignment-string", alignment_string},
    {"trunc-in-tensor-name", trunc_in_tensor_name},
    {"tensor-name-too-long", tensor_name_too_long},
    {"n-dims-5", n_dims_5},
    {"dim-zero", dim_zero},
    {"dims-overflow", dims_overflow},
    {"unsupported-type", unsupported_type},
    {"unknown-type", unknown_type},
    {"row-not-block-multiple", row_not_block_multiple},
    {"trunc-in-tensor-offset", trunc_in_tensor_offset},
    {"duplicate-tensor", duplicate_tensor},
    {"misaligned-offset", misaligned_offset},
    {"overlapping-tensors", overlapping_tensors},
    {"data-truncated", data_truncated},
    {"offset-near-u64-max", offset_near_u64_max},
    {"data-section-missing", data_section_missing},
    {"no-architecture", no_architecture},
    {"arch-unsupported", arch_unsupported},
    {"arch-with-nul", arch_with_nul},
    {"missing-embedding-length", missing_embedding_length},
    {"missing-rms-eps", missing_rms_eps},
    {"missing-head-count", missing_head_count},
    {"block-count-zero", block_count_zero},
    {"kv-heads-not-dividing", kv_heads_not_dividing},
    {"heads-more-than-dim", heads_more_than_dim},
    {"rope-dim-odd", rope_dim_odd},
    {"rms-eps-out-of-range", rms_eps_out_of_range},
    {"missing-ffn-down", missing_ffn_down},
    {"missing-token-embd", missing_token_embd},
    {"qwen2-missing-v-bias", qwen2_missing_v_bias},
    {"qwen3-missing-k-norm", qwen3_missing_k_norm},
    {"layers-missing", layers_missing},
    {"extra-layer-tensor", extra_layer_tensor},
    {"more-tokens-than-rows", more_tokens_than_rows},
    {"wrong-shape-attn-k", wrong_shape_attn_k},
    {"wrong-shape-ffn-down", wrong_shape_ffn_down},
    {"wrong-shape-q-bias", wrong_shape_q_bias},
    {"wrong-shape-output-norm", wrong_shape_output_norm},
    {"norm-not-f32", norm_not_f32},
};
const size_t corpus_n_cases = sizeof(corpus_cases) / sizeof(corpus_cases[0]);
