/* make_model.c - random-weight GGUF models of real shapes; see make_model.h. */
#include "make_model.h"

#include "common/gguf.h"
#include "common/gguf_write.h"
#include "common/model.h"
#include "gpu_worker/quant.h"
#include "gpu_worker/quantize.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char QWEN_VOCAB[] = "ggml-vocab-qwen2.gguf";
static const char LLAMA_VOCAB[] = "ggml-vocab-llama-bpe.gguf";

static const struct mm_shape shapes[] = {
    /* name           arch     vocab        dim   L   H   KV  hd   ffn    vocab   ctx */
    {"qwen2.5-0.5b", "qwen2", QWEN_VOCAB, 896, 24, 14, 2, 64, 4864, 151936, 32768, 1e6f, 1e-6f,
     true, true, false},
    {"qwen2.5-1.5b", "qwen2", QWEN_VOCAB, 1536, 28, 12, 2, 128, 8960, 151936, 32768, 1e6f, 1e-6f,
     true, true, false},
    {"qwen2.5-7b", "qwen2", QWEN_VOCAB, 3584, 28, 28, 4, 128, 18944, 152064, 32768, 1e6f, 1e-6f,
     false, true, false},
    {"llama-3.2-1b", "llama", LLAMA_VOCAB, 2048, 16, 32, 8, 64, 8192, 128256, 131072, 500000.0f,
     1e-5f, true, false, false},
    {"qwen3-0.6b", "qwen3", QWEN_VOCAB, 1024, 28, 16, 8, 128, 3072, 151936, 40960, 1e6f, 1e-6f,
     true, false, true},
    /* small dims, real vocabularies: for tests */
    {"tiny-qwen2", "qwen2", QWEN_VOCAB, 256, 2, 4, 2, 64, 512, 151936, 4096, 1e6f, 1e-6f, true,
     true, false},
    {"tiny-llama", "llama", LLAMA_VOCAB, 256, 2, 8, 2, 32, 512, 128256, 4096, 500000.0f, 1e-5f,
     false, false, false},
    {"tiny-qwen3", "qwen3", QWEN_VOCAB, 256, 2, 4, 2, 128, 512, 151936, 4096, 1e6f, 1e-6f, true,
     false, true},
};

const struct mm_shape *make_model_shape(const char *name)
{
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        if (strcmp(shapes[i].name, name) == 0) return &shapes[i];
    return NULL;
}

void make_model_list_shapes(FILE *out)
{
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        const struct mm_shape *s = &shapes[i];
        fprintf(out, "%-14s %-5s dim %u, %u layers, %u/%u heads (head %u), ffn %u, vocab %u, %s\n",
                s->name, s->arch, s->dim, s->n_layers, s->n_heads, s->n_kv_heads, s->head_dim,
                s->ffn_dim, s->n_vocab, s->tied ? "tied output" : "untied output");
    }
}

/* ---- the tensors of a shape ---- */

enum role { R_NORM, R_BIAS, R_EMBD, R_OUTPUT, R_ATTN_V, R_FFN_DOWN, R_MATRIX };

struct plan_tensor {
    char name[64];
    uint64_t ne0, ne1; /* ne1 = 0: a vector */
    enum role role;
    uint32_t type;
};

static int plan_tensors(const struct mm_shape *s, struct plan_tensor **out, int *n_out)
{
    int cap = 3 + (int)s->n_layers * 14, n = 0;
    struct plan_tensor *t = calloc((size_t)cap, sizeof(*t));
    if (!t) return ST_ENOMEM;
    uint64_t d = s->dim, q = (uint64_t)s->n_heads * s->head_dim,
             kv = (uint64_t)s->n_kv_heads * s->head_dim, f = s->ffn_dim;
#define ADD(nm, a, b, r)                                                                           \
    do {                                                                                           \
        snprintf(t[n].name, sizeof(t[n].name), "%s", nm);                                          \
        t[n].ne0 = (a), t[n].ne1 = (b), t[n].role = (r);                                           \
        n++;                                                                                       \
    } while (0)
    ADD("token_embd.weight", d, s->n_vocab, R_EMBD);
    for (uint32_t l = 0; l < s->n_layers; l++) {
        char nm[64];
#define ADDL(suffix, a, b, r)                                                                      \
    do {                                                                                           \
        snprintf(nm, sizeof(nm), "blk.%u.%s", l, suffix);                                          \
        ADD(nm, a, b, r);                                                                          \
    } while (0)
        ADDL("attn_norm.weight", d, 0, R_NORM);
        ADDL("attn_q.weight", d, q, R_MATRIX);
        ADDL("attn_k.weight", d, kv, R_MATRIX);
        ADDL("attn_v.weight", d, kv, R_ATTN_V);
        if (s->qkv_bias) {
            ADDL("attn_q.bias", q, 0, R_BIAS);
            ADDL("attn_k.bias", kv, 0, R_BIAS);
            ADDL("attn_v.bias", kv, 0, R_BIAS);
        }
        if (s->qk_norm) {
            ADDL("attn_q_norm.weight", s->head_dim, 0, R_NORM);
            ADDL("attn_k_norm.weight", s->head_dim, 0, R_NORM);
        }
        ADDL("attn_output.weight", q, d, R_MATRIX);
        ADDL("ffn_norm.weight", d, 0, R_NORM);
        ADDL("ffn_gate.weight", d, f, R_MATRIX);
        ADDL("ffn_up.weight", d, f, R_MATRIX);
        ADDL("ffn_down.weight", f, d, R_FFN_DOWN);
#undef ADDL
    }
    ADD("output_norm.weight", d, 0, R_NORM);
    if (!s->tied) ADD("output.weight", d, s->n_vocab, R_OUTPUT);
#undef ADD
    *out = t;
    *n_out = n;
    return 0;
}

/* Type name (case-insensitive) to type, or UINT32_MAX. */
static uint32_t type_by_name(const char *name)
{
    for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++)
        if (ggml_type_supported(t) && strcasecmp(ggml_type_name(t), name) == 0) return t;
    return UINT32_MAX;
}

static uint32_t fallback(uint32_t type)
{
    switch (type) {
    case GGML_TYPE_Q2_K:
    case GGML_TYPE_Q3_K:
        return GGML_TYPE_Q4_0;
    case GGML_TYPE_Q4_K:
        return GGML_TYPE_Q5_0;
    case GGML_TYPE_Q5_K:
        return GGML_TYPE_Q5_1;
    case GGML_TYPE_Q6_K:
        return GGML_TYPE_Q8_0;
    }
    return GGML_TYPE_F16;
}

/* Choose each tensor's type; also the general.file_type value. */
static int assign_types(const char *mix, struct plan_tensor *t, int n, uint32_t *file_type)
{
    bool kmix = strcasecmp(mix, "q4_k_m") == 0;
    uint32_t pure = kmix ? GGML_TYPE_Q4_K : type_by_name(mix);
    if (pure == UINT32_MAX) return ST_EINVAL;
    /* llama.cpp's file type numbers, for tools that show them */
    static const struct {
        uint32_t type, ftype;
    } ft[] = {{GGML_TYPE_F32, 0},   {GGML_TYPE_F16, 1},   {GGML_TYPE_Q4_0, 2},
              {GGML_TYPE_Q4_1, 3},  {GGML_TYPE_Q8_0, 7},  {GGML_TYPE_Q5_0, 8},
              {GGML_TYPE_Q5_1, 9},  {GGML_TYPE_Q2_K, 10}, {GGML_TYPE_Q3_K, 11},
              {GGML_TYPE_Q4_K, 14}, {GGML_TYPE_Q5_K, 16}, {GGML_TYPE_Q6_K, 18},
              {GGML_TYPE_BF16, 32}};
    *file_type = 0;
    for (size_t i = 0; i < sizeof(ft) / sizeof(ft[0]); i++)
        if (ft[i].type == pure) *file_type = ft[i].ftype;
    if (kmix) *file_type = 15; /* Q4_K_M */
    for (int i = 0; i < n; i++) {
        if (t[i].role == R_NORM || t[i].role == R_BIAS) {
            t[i].type = GGML_TYPE_F32;
            continue;
        }
        uint32_t ty = pure;
        if (kmix && t[i].role != R_MATRIX) ty = GGML_TYPE_Q6_K;
        if (t[i].ne0 % ggml_type_block_elems(ty)) ty = fallback(ty);
        if (t[i].ne0 % ggml_type_block_elems(ty)) ty = GGML_TYPE_F16;
        t[i].type = ty;
    }
    return 0;
}

/* ---- deterministic random rows ---- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Row `row` of a tensor: norms 1, everything else ~normal(0, 0.02) as the
 * sum of four 16-bit uniforms (mean 0, variance 1 after scaling). */
static void gen_row(uint64_t seed, uint64_t name_h, enum role role, uint64_t row, float *x,
                    uint64_t n)
{
    if (role == R_NORM) {
        for (uint64_t i = 0; i < n; i++)
            x[i] = 1.0f;
        return;
    }
    uint64_t s = splitmix64(seed ^ splitmix64(name_h ^ splitmix64(row)));
    /* sd of a sum of four U{0..65535}: 65536 * sqrt(4/12) */
    const float scale = 0.02f / (65536.0f * 0.57735027f);
    for (uint64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t r = s * 0x2545f4914f6cdd1dull;
        int32_t sum = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) +
                      (int32_t)((r >> 32) & 0xffff) + (int32_t)(r >> 48) - 131070;
        x[i] = (float)sum * scale;
    }
}

/* ---- tokenizer copy ---- */

/* End offset of array entry kv (whose elements were validated). */
static uint64_t arr_end(const struct gguf *g, const struct gguf_kv *kv)
{
    if (kv->arr_type == GGUF_STRING) {
        if (kv->arr_n == 0) return kv->arr_data_off;
        uint64_t p = kv->str_offs[kv->arr_n - 1], len;
        memcpy(&len, g->buf + p, 8);
        return p + 8 + len;
    }
    uint32_t es =
        kv->arr_type == GGUF_F32 || kv->arr_type == GGUF_I32 || kv->arr_type == GGUF_U32 ? 4 : 0;
    return kv->arr_data_off + kv->arr_n * es;
}

/* Copy tokens / token_type / scores, padded to n_vocab entries. */
static int copy_padded(struct gguf_writer *w, const struct gguf *g, const struct gguf_kv *kv,
                       const char *key, uint64_t n_vocab)
{
    uint64_t have = kv->arr_n, body = arr_end(g, kv) - kv->arr_data_off, extra = 0;
    for (uint64_t i = have; i < n_vocab; i++) {
        char pad[32];
        extra += kv->arr_type == GGUF_STRING
                     ? 8 + (uint64_t)snprintf(pad, sizeof(pad), "[PAD%" PRIu64 "]", i)
                     : 4;
    }
    uint8_t *v = malloc(12 + body + extra);
    if (!v) return ST_ENOMEM;
    memcpy(v, &kv->arr_type, 4);
    memcpy(v + 4, &n_vocab, 8);
    memcpy(v + 12, g->buf + kv->arr_data_off, body);
    uint64_t o = 12 + body;
    for (uint64_t i = have; i < n_vocab; i++) {
        if (kv->arr_type == GGUF_STRING) {
            char pad[32];
            uint64_t len = (uint64_t)snprintf(pad, sizeof(pad), "[PAD%" PRIu64 "]", i);
            memcpy(v + o, &len, 8);
            memcpy(v + o + 8, pad, len);
            o += 8 + len;
        } else if (kv->arr_type == GGUF_I32) {
            int32_t type = 5; /* unused */
            memcpy(v + o, &type, 4);
            o += 4;
        } else {
            float score = 0;
            memcpy(v + o, &score, 4);
            o += 4;
        }
    }
    int rc = gguf_writer_add_raw(w, key, GGUF_ARRAY, v, o);
    free(v);
    return rc;
}

static int copy_tokenizer(struct gguf_writer *w, const struct gguf *g, uint64_t n_vocab,
                          struct st_errbuf *eb)
{
    uint32_t et;
    uint64_t n_tok;
    if (!gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok) || et != GGUF_STRING)
        return st_errf(eb, ST_EFORMAT, "vocab file: tokenizer.ggml.tokens missing");
    if (n_tok > n_vocab)
        return st_errf(eb, ST_EFORMAT,
                       "vocab file has %" PRIu64 " tokens, more than the model's %" PRIu64, n_tok,
                       n_vocab);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const struct gguf_kv *kv = &g->kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.p, "tokenizer.", 10) != 0) continue;
        char key[128];
        snprintf(key, sizeof(key), "%.*s", (int)(kv->key.len > 127 ? 127 : kv->key.len), kv->key.p);
        bool pad = n_tok < n_vocab && kv->type == GGUF_ARRAY && kv->arr_n == n_tok &&
                   (strcmp(key, "tokenizer.ggml.tokens") == 0 ||
                    (strcmp(key, "tokenizer.ggml.token_type") == 0 && kv->arr_type == GGUF_I32) ||
                    (strcmp(key, "tokenizer.ggml.scores") == 0 && kv->arr_type == GGUF_F32));
        int rc = pad ? copy_padded(w, g, kv, key, n_vocab) : gguf_writer_copy_kv(w, g, (int64_t)i);
        if (rc) return st_errf(eb, rc, "copying %s: %s", key, st_strerror(rc));
    }
    return 0;
}

/* ---- writing ---- */

struct fill_job {
    uint64_t seed, name_h;
    const struct plan_tensor *t;
    uint64_t r0, r1; /* rows of this job, relative to the chunk base */
    uint64_t base;   /* first row of the chunk */
    uint8_t *out;    /* the chunk's bytes */
    uint64_t row_bytes;
    int rc;
};

static void *fill_rows(void *arg)
{
    struct fill_job *j = arg;
    uint64_t n = j->t->ne0;
    float *x = malloc(n * sizeof(float));
    if (!x) {
        j->rc = ST_ENOMEM;
        return NULL;
    }
    for (uint64_t r = j->r0; r < j->r1; r++) {
        gen_row(j->seed, j->name_h, j->t->role, j->base + r, x, n);
        quantize_row(j->t->type, x, j->out + r * j->row_bytes, (int64_t)n);
    }
    free(x);
    return NULL;
}

/* Fill rows [base, base + rows) of t into out with n_threads threads. */
static int fill_chunk(uint64_t seed, const struct plan_tensor *t, uint64_t base, uint64_t rows,
                      uint8_t *out, int n_threads)
{
    struct fill_job jobs[16];
    pthread_t tid[16];
    bool started[16] = {false};
    if (n_threads > 16) n_threads = 16;
    uint64_t rb = ggml_row_bytes(t->type, t->ne0), name_h = name_hash(t->name);
    for (int i = 0; i < n_threads; i++) {
        jobs[i] = (struct fill_job){seed,
                                    name_h,
                                    t,
                                    rows * (uint64_t)i / (uint64_t)n_threads,
                                    rows * (uint64_t)(i + 1) / (uint64_t)n_threads,
                                    base,
                                    out,
                                    rb,
                                    0};
        if (i > 0) started[i] = pthread_create(&tid[i], NULL, fill_rows, &jobs[i]) == 0;
    }
    fill_rows(&jobs[0]);
    int rc = jobs[0].rc;
    for (int i = 1; i < n_threads; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            fill_rows(&jobs[i]);
        if (jobs[i].rc) rc = jobs[i].rc;
    }
    return rc;
}

static int write_zeros(FILE *f, uint64_t n)
{
    static const uint8_t z[4096];
    while (n) {
        size_t k = n < sizeof(z) ? (size_t)n : sizeof(z);
        if (fwrite(z, 1, k, f) != k) return ST_EIO;
        n -= k;
    }
    return 0;
}

static int add_metadata(struct gguf_writer *w, const struct make_model_opts *o, uint32_t ftype,
                        uint64_t n_params)
{
    const struct mm_shape *s = o->shape;
    char name[96], key[96];
    snprintf(name, sizeof(name), "staged random %s %s", s->name, o->mix);
    int rc = gguf_writer_add_str(w, "general.architecture", s->arch);
    if (!rc) rc = gguf_writer_add_str(w, "general.name", name);
    if (!rc) rc = gguf_writer_add_u32(w, "general.file_type", ftype);
    if (!rc) rc = gguf_writer_add_u32(w, "general.quantization_version", 2);
    if (!rc) rc = gguf_writer_add_u64(w, "general.parameter_count", n_params);
    if (!rc) rc = gguf_writer_add_u64(w, "staged.make_model.seed", o->seed);
    if (!rc) rc = gguf_writer_add_str(w, "staged.make_model.shape", s->name);
#define KEY(suffix) (snprintf(key, sizeof(key), "%s.%s", s->arch, suffix), key)
    if (!rc) rc = gguf_writer_add_u32(w, KEY("context_length"), s->n_ctx);
    if (!rc) rc = gguf_writer_add_u32(w, KEY("embedding_length"), s->dim);
    if (!rc) rc = gguf_writer_add_u32(w, KEY("block_count"), s->n_layers);
    if (!rc) rc = gguf_writer_add_u32(w, KEY("feed_forward_length"), s->ffn_dim);
    if (!rc) rc = gguf_writer_add_u32(w, KEY("attention.head_count"), s->n_heads);
    if (!rc) rc = gguf_writer_add_u32(w, KEY("attention.head_count_kv"), s->n_kv_heads);
    if (!rc) rc = gguf_writer_add_f32(w, KEY("rope.freq_base"), s->rope_base);
    if (!rc) rc = gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), s->rms_eps);
    if (!rc && s->head_dim * s->n_heads != s->dim) {
        rc = gguf_writer_add_u32(w, KEY("attention.key_length"), s->head_dim);
        if (!rc) rc = gguf_writer_add_u32(w, KEY("attention.value_length"), s->head_dim);
    }
    if (!rc && strcmp(s->arch, "llama") == 0) {
        rc = gguf_writer_add_u32(w, KEY("rope.dimension_count"), s->head_dim);
        if (!rc) rc = gguf_writer_add_u32(w, KEY("vocab_size"), s->n_vocab);
    }
#undef KEY
    return rc;
}

/* The writer with all metadata (tokenizer keys from vocab, if not NULL)
 * and tensor infos of plan t. */
static int build_writer(const struct make_model_opts *o, const struct plan_tensor *t, int n_t,
                        uint32_t ftype, const struct gguf *vocab, struct gguf_writer **out,
                        struct st_errbuf *eb)
{
    uint64_t n_params = 0;
    for (int i = 0; i < n_t; i++)
        n_params += t[i].ne0 * (t[i].ne1 ? t[i].ne1 : 1);
    struct gguf_writer *w = gguf_writer_new(3, 32);
    if (!w) return st_errf(eb, ST_ENOMEM, "out of memory");
    int rc = add_metadata(w, o, ftype, n_params);
    if (rc) {
        st_errf(eb, rc, "metadata: %s", st_strerror(rc));
        goto err;
    }
    if (vocab && (rc = copy_tokenizer(w, vocab, o->shape->n_vocab, eb))) goto err;
    for (int i = 0; i < n_t; i++) {
        uint64_t ne[2] = {t[i].ne0, t[i].ne1};
        int64_t idx = gguf_writer_add_tensor(w, t[i].name, t[i].type, t[i].ne1 ? 2 : 1, ne, NULL);
        if (idx < 0) {
            rc = st_errf(eb, (int)idx, "tensor %s: %s", t[i].name, st_strerror((int)idx));
            goto err;
        }
    }
    *out = w;
    return 0;
err:
    gguf_writer_destroy(&w);
    return rc;
}

int make_model_plan(const struct make_model_opts *o, FILE *out, struct st_errbuf *eb)
{
    struct plan_tensor *t = NULL;
    int n_t = 0, rc;
    uint32_t ftype;
    struct gguf_writer *w = NULL;
    uint8_t *hdr = NULL;
    uint64_t hdr_len;
    struct gguf *g = NULL;
    if ((rc = plan_tensors(o->shape, &t, &n_t))) return st_errf(eb, rc, "out of memory");
    if ((rc = assign_types(o->mix, t, n_t, &ftype))) {
        st_errf(eb, ST_EINVAL, "unknown --type '%s' (f16, q4_k_m or a tensor type name)", o->mix);
        goto out;
    }
    if ((rc = build_writer(o, t, n_t, ftype, NULL, &w, eb))) goto out;
    if ((rc = gguf_writer_header(w, &hdr, &hdr_len))) {
        st_errf(eb, rc, "out of memory");
        goto out;
    }
    /* read back what the header says, with the reader */
    if ((rc = gguf_parse(hdr, hdr_len, gguf_writer_file_size(w), &g, eb))) goto out;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        char v[512];
        gguf_format_value(g, (int64_t)i, v, sizeof(v));
        fprintf(out, "kv %.*s %s\n", (int)g->kv[i].key.len, g->kv[i].key.p, v);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *gt = &g->tensors[i];
        fprintf(out, "tensor %.*s %s", (int)gt->name.len, gt->name.p, ggml_type_name(gt->type));
        for (uint32_t d = 0; d < gt->n_dims; d++)
            fprintf(out, " %" PRIu64, gt->ne[d]);
        fprintf(out, "\n");
    }
    fprintf(out, "size %" PRIu64 "\n", gguf_writer_file_size(w));
    /* the hyperparameters and tensor shapes pass staged's own checks */
    struct model_hparams hp;
    if ((rc = model_hparams_read(g, &hp, eb)) || (rc = model_validate(g, &hp, eb))) goto out;
    fprintf(out, "valid %s dim %u layers %u heads %u/%u head %u ffn %u vocab %u\n",
            model_arch_name(hp.arch), hp.dim, hp.n_layers, hp.n_heads, hp.n_kv_heads, hp.head_dim,
            hp.ffn_dim, hp.n_vocab);
out:
    gguf_destroy(&g);
    free(hdr);
    gguf_writer_destroy(&w);
    free(t);
    return rc;
}

int make_model_write(const struct make_model_opts *o, struct st_errbuf *eb)
{
    const struct mm_shape *s = o->shape;
    struct plan_tensor *t = NULL;
    int n_t = 0, rc;
    struct st_model *vocab = NULL;
    struct gguf_writer *w = NULL;
    uint8_t *hdr = NULL, *chunk = NULL;
    FILE *f = NULL;
    bool made_tmp = false;
    char tmp[4096];
    uint32_t ftype;

    if ((rc = plan_tensors(s, &t, &n_t))) return st_errf(eb, rc, "out of memory");
    if ((rc = assign_types(o->mix, t, n_t, &ftype))) {
        st_errf(eb, ST_EINVAL, "unknown --type '%s' (f16, q4_k_m or a tensor type name)", o->mix);
        goto out;
    }
    char vpath[4096];
    snprintf(vpath, sizeof(vpath), "%s/%s", o->vocab_dir, s->vocab_file);
    if ((rc = model_open_file(vpath, &vocab, eb))) goto out;
    if ((rc = build_writer(o, t, n_t, ftype, vocab->gguf, &w, eb))) goto out;
    uint64_t hdr_len;
    if ((rc = gguf_writer_header(w, &hdr, &hdr_len))) {
        st_errf(eb, rc, "out of memory");
        goto out;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", o->out);
    if (!(f = fopen(tmp, "wb"))) {
        rc = st_errf(eb, ST_EIO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    made_tmp = true;
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    if (fwrite(hdr, 1, hdr_len, f) != hdr_len) goto io_err;
    const uint64_t chunk_cap = 32ull << 20;
    if (!(chunk = malloc(chunk_cap))) {
        rc = st_errf(eb, ST_ENOMEM, "out of memory");
        goto out;
    }
    uint64_t pos = 0; /* within the data section */
    for (int i = 0; i < n_t; i++) {
        uint64_t off = gguf_writer_tensor_offset(w, i);
        if (write_zeros(f, off - pos)) goto io_err;
        uint64_t rb = ggml_row_bytes(t[i].type, t[i].ne0), rows = t[i].ne1 ? t[i].ne1 : 1;
        uint64_t per = chunk_cap / rb ? chunk_cap / rb : 1;
        for (uint64_t r = 0; r < rows; r += per) {
            uint64_t k = rows - r < per ? rows - r : per;
            if ((rc = fill_chunk(o->seed, &t[i], r, k, chunk, o->n_threads))) {
                st_errf(eb, rc, "out of memory");
                goto out;
            }
            if (fwrite(chunk, 1, k * rb, f) != k * rb) goto io_err;
        }
        pos = off + rows * rb;
    }
    if (fclose(f)) {
        f = NULL;
        goto io_err;
    }
    f = NULL;
    if (rename(tmp, o->out)) {
        rc = st_errf(eb, ST_EIO, "rename %s -> %s: %s", tmp, o->out, strerror(errno));
        goto out;
    }
    rc = 0;
    goto out;
io_err:
    rc = st_errf(eb, ST_EIO, "%s: write failed: %s", tmp, strerror(errno));
out:
    if (f) fclose(f);
    if (rc && made_tmp) remove(tmp);
    free(chunk);
    free(hdr);
    gguf_writer_destroy(&w);
    model_close(&vocab);
    free(t);
    return rc;
}

/* ---- check ---- */

/* Relative RMS error expected of each type on this data (the measured
 * values of tests/test_quantize.c with a margin). */
static double type_bound(uint32_t type)
{
    switch (type) {
    case GGML_TYPE_F32:
        return 0;
    case GGML_TYPE_F16:
        return 3e-4;
    case GGML_TYPE_BF16:
        return 3e-3;
    case GGML_TYPE_Q8_0:
        return 0.010;
    case GGML_TYPE_Q6_K:
        return 0.020;
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q5_K:
        return 0.046;
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q4_K:
        return 0.090;
    case GGML_TYPE_Q3_K:
        return 0.165;
    case GGML_TYPE_Q2_K:
        return 0.310;
    }
    return 0;
}

int make_model_check(const char *path, FILE *out, struct st_errbuf *eb)
{
    struct st_model *m;
    int rc = model_open_file(path, &m, eb);
    if (rc) return rc;
    const struct gguf *g = m->gguf;
    uint64_t seed;
    struct gguf_str sh;
    if (!gguf_get_u64(g, "staged.make_model.seed", &seed) ||
        !gguf_get_str(g, "staged.make_model.shape", &sh)) {
        model_close(&m);
        return st_errf(eb, ST_ENOTFOUND, "%s: not made by staged-make-model (no seed)", path);
    }
    double err[GGML_TYPE_COUNT] = {0}, sig[GGML_TYPE_COUNT] = {0};
    uint64_t count[GGML_TYPE_COUNT] = {0};
    float *x = NULL, *y = NULL;
    uint64_t cap = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *gt = &g->tensors[i];
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)gt->name.len, gt->name.p);
        enum role role = gt->n_dims == 1 && strstr(name, "norm") ? R_NORM : R_MATRIX;
        if (gt->ne[0] > cap) {
            cap = gt->ne[0];
            free(x);
            free(y);
            x = malloc(cap * sizeof(float));
            y = malloc(cap * sizeof(float));
            if (!x || !y) {
                rc = st_errf(eb, ST_ENOMEM, "out of memory");
                goto out;
            }
        }
        uint64_t rb = ggml_row_bytes(gt->type, gt->ne[0]), h = name_hash(name);
        uint64_t rows = gt->n_elems / gt->ne[0];
        for (uint64_t r = 0; r < rows; r++) {
            gen_row(seed, h, role, r, x, gt->ne[0]);
            quant_dequantize_row(gt->type, m->data + gt->offset + r * rb, y, (int64_t)gt->ne[0]);
            for (uint64_t k = 0; k < gt->ne[0]; k++) {
                double e = (double)y[k] - x[k];
                err[gt->type] += e * e;
                sig[gt->type] += (double)x[k] * x[k];
            }
        }
        count[gt->type]++;
    }
    rc = 0;
    for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++) {
        if (!count[t]) continue;
        double rel = sig[t] > 0 ? sqrt(err[t] / sig[t]) : sqrt(err[t]);
        bool ok = rel <= type_bound(t);
        fprintf(out, "check: %-5s %4" PRIu64 " tensors, relative RMS error %.5f (bound %.5f) %s\n",
                ggml_type_name(t), count[t], rel, type_bound(t), ok ? "ok" : "OVER");
        if (!ok) rc = ST_EINTEGRITY;
    }
    if (rc) st_errf(eb, rc, "%s: dequantized weights differ from the seeded values", path);
out:
    free(x);
    free(y);
    model_close(&m);
    return rc;
}
