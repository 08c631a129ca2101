/* cpu_backend.c - CPU forward pass; see cpu_backend.h. */
#include "cpu_backend.h"

#include "common/log.h"
#include "gpu_worker/kernels.h"
#include "gpu_worker/pool.h"
#include "gpu_worker/quant.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct layer_w {
    struct model_tensor attn_norm;      /* (dim) F32 */
    struct model_tensor wq;             /* (dim -> n_heads*head_dim) */
    struct model_tensor wk;             /* (dim -> n_kv_heads*head_dim) */
    struct model_tensor wv;             /* (dim -> n_kv_heads*head_dim) */
    struct model_tensor bq, bk, bv;     /* biases (qwen2), F32 */
    struct model_tensor q_norm, k_norm; /* (head_dim) F32 (qwen3) */
    struct model_tensor wo;             /* (n_heads*head_dim -> dim) */
    struct model_tensor ffn_norm;       /* (dim) F32 */
    struct model_tensor wg, wu;         /* (dim -> ffn_dim) */
    struct model_tensor wd;             /* (ffn_dim -> dim) */
};

struct backend {
    const struct st_model *m;
    struct model_hparams hp;
    struct backend_config cfg;
    struct layer_w *layers;       /* [n_layers] */
    struct model_tensor embd;     /* (dim, n_vocab) */
    struct model_tensor out_norm; /* (dim) */
    struct model_tensor out;      /* (dim -> n_vocab); token_embd when tied */
    struct pool *pool;
    bool reference;
    int q_dim, kv_dim;
    uint16_t *kc, *vc; /* [n_layers][max_seqs][max_ctx][kv_dim] binary16 */
    int *len;          /* [max_seqs] positions held */
    /* scratch, [max_batch] rows each */
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2;
    float *xo;                  /* rows that produce logits */
    uint8_t *act;               /* quantized activation rows */
    size_t act_row_cap;         /* bytes per activation row */
    float *scores;              /* [n_threads][max_ctx] */
    float *rope_cos, *rope_sin; /* [max_batch][rope_dim/2] */
    int *tok_seq, *tok_pos;     /* copies of the batch */
    /* the last forward call's logits rows (the caller's buffer, or lbuf when
     * it passed none), for logits_row */
    float *last_rows, *lbuf;
    int last_n, lbuf_rows;
};

/* ---------------- matrix products ---------------- */

struct mm_job {
    struct backend *b;
    const struct model_tensor *w;
    const float *in; /* [n_tok][n_in] */
    int n_tok, n_in, n_out;
    float *out; /* [n_tok][out_stride] */
    int out_stride;
    const float *bias; /* [n_out] or NULL */
    uint32_t at;
    size_t arow; /* bytes of one quantized activation row */
    kernels_dot_fn dot;
    kernels_dot4_fn dot4; /* NULL: one row at a time */
    kernels_dot2_fn dot2; /* NULL: one weight row at a time */
    int rows_per_chunk;
};

static void mm_quantize(void *arg, int t, int ith)
{
    struct mm_job *j = arg;
    kernels_quantize_row(j->at, j->in + (size_t)t * j->n_in, j->b->act + (size_t)t * j->arow,
                         j->n_in, j->b->reference);
}

static void mm_rows(void *arg, int chunk, int ith)
{
    struct mm_job *j = arg;
    int r0 = chunk * j->rows_per_chunk;
    int r1 = r0 + j->rows_per_chunk < j->n_out ? r0 + j->rows_per_chunk : j->n_out;
    size_t rb = quant_row_size(j->w->type, j->n_in);
    const uint8_t *wd = j->w->data;
    const uint8_t *act = j->b->act;
    /* groups of 4 tokens outside, the chunk's rows inside: the 4
     * activation rows stay in L1 while the chunk's weights come from L2 */
    int t = 0;
    if (j->dot4) {
        float o4[4];
        for (; t + 4 <= j->n_tok; t += 4)
            for (int r = r0; r < r1; r++) {
                j->dot4(j->n_in, wd + (size_t)r * rb, act + (size_t)t * j->arow, j->arow, o4);
                float bias = j->bias ? j->bias[r] : 0.f;
                for (int k = 0; k < 4; k++)
                    j->out[(size_t)(t + k) * j->out_stride + r] = o4[k] + bias;
            }
    }
    for (; t < j->n_tok; t++) {
        int r = r0;
        if (j->dot2) { /* rows r and r + half together (kernels.h says why apart) */
            int half = (r1 - r0) / 2;
            size_t ws = (size_t)half * rb;
            const uint8_t *at = act + (size_t)t * j->arow;
            float *o = j->out + (size_t)t * j->out_stride;
            for (; r < r0 + half; r++) {
                float o2[2];
                j->dot2(j->n_in, wd + (size_t)r * rb, ws, at, o2);
                o[r] = o2[0] + (j->bias ? j->bias[r] : 0.f);
                o[r + half] = o2[1] + (j->bias ? j->bias[r + half] : 0.f);
            }
            r = r0 + 2 * half;
        }
        for (; r < r1; r++)
            j->out[(size_t)t * j->out_stride + r] =
                j->dot(j->n_in, wd + (size_t)r * rb, act + (size_t)t * j->arow) +
                (j->bias ? j->bias[r] : 0.f);
    }
}

/* out[t][0..n_out) = W in[t] (+ bias) for t < n_tok. */
static void matmul(struct backend *b, const struct model_tensor *w, const float *in, int n_tok,
                   float *out, int out_stride, const struct model_tensor *bias)
{
    struct mm_job j = {
        .b = b,
        .w = w,
        .in = in,
        .n_tok = n_tok,
        .n_in = (int)w->ne[0],
        .n_out = (int)w->ne[1],
        .out = out,
        .out_stride = out_stride,
        .bias = bias && bias->data ? bias->data : NULL,
        .at = quant_vec_dot_type(w->type),
    };
    j.arow = quant_row_size(j.at, j.n_in);
    j.dot = kernels_dot(w->type, b->reference);
    j.dot4 = b->reference || n_tok < 4 ? NULL : kernels_dot4(w->type);
    j.dot2 = b->reference ? NULL : kernels_dot2(w->type);
    pool_for(b->pool, n_tok, mm_quantize, &j);
    /* chunks of rows: about 16 per thread, each at least ~64k weights x
     * tokens; products under ~256k multiply-adds run on the calling thread
     * (a dispatch costs more than it saves) */
    int nth = pool_size(b->pool);
    long work = (long)j.n_in * n_tok;
    int min_rows = (int)(65536 / (work > 0 ? work : 1)) + 1;
    int rpc = j.n_out / (nth * 16) + 1;
    if (rpc < min_rows) rpc = min_rows;
    if (nth == 1 || work * j.n_out < 262144) rpc = j.n_out;
    j.rows_per_chunk = rpc;
    pool_for(b->pool, (j.n_out + rpc - 1) / rpc, mm_rows, &j);
}

/* ---------------- elementwise ---------------- */

static void rmsnorm(float *o, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)(x[i] * x[i]);
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        o[i] = x[i] * scale * w[i];
}

/* Rotate one head of hd values at the token's angles. */
static void rope_head(float *h, const float *c, const float *s, int rope_dim, int kind)
{
    int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        int a = kind == ROPE_NEOX ? i : 2 * i;
        int bb = kind == ROPE_NEOX ? i + half : 2 * i + 1;
        float x0 = h[a], x1 = h[bb];
        /* fused as GCC fuses llama.cpp's x0*c - x1*s and x0*s + x1*c, so
         * the rounding does not depend on our compiler flags */
        h[a] = fmaf(x0, c[i], -(x1 * s[i]));
        h[bb] = fmaf(x0, s[i], x1 * c[i]);
    }
}

/* ---------------- attention ----------------
 * binary16 accumulator helpers: every element is rounded to binary16 after
 * each operation, as llama.cpp's CPU flash attention does. */

static inline void scale_f16(uint16_t *acc, float s, int n)
{
    int i = 0;
    __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(acc + i)));
        _mm_storeu_si128((__m128i *)(acc + i),
                         _mm256_cvtps_ph(_mm256_mul_ps(a, vs), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++)
        acc[i] = quant_f32_to_f16(quant_f16_to_f32(acc[i]) * s);
}

/* acc = round16(v * s + acc) */
static inline void mad_f16(uint16_t *acc, const uint16_t *v, float s, int n)
{
    int i = 0;
    __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(acc + i)));
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
        _mm_storeu_si128((__m128i *)(acc + i),
                         _mm256_cvtps_ph(_mm256_fmadd_ps(x, vs, a), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++)
        acc[i] = quant_f32_to_f16(fmaf(quant_f16_to_f32(v[i]), s, quant_f16_to_f32(acc[i])));
}

struct att_job {
    struct backend *b;
    int layer, n_tok;
};

static void att_run(void *arg, int task, int ith)
{
    struct att_job *j = arg;
    struct backend *b = j->b;
    const struct model_hparams *hp = &b->hp;
    int hd = (int)hp->head_dim, nh = (int)hp->n_heads, group = nh / (int)hp->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    size_t seq_stride = (size_t)b->cfg.max_ctx * b->kv_dim;
    size_t layer_stride = (size_t)b->cfg.max_seqs * seq_stride;
    {
        int t = task / nh, h = task % nh, kvh = h / group;
        int s = b->tok_seq[t], p = b->tok_pos[t];
        const float *qh = b->q + (size_t)t * b->q_dim + (size_t)h * hd;
        size_t base = (size_t)j->layer * layer_stride + (size_t)s * seq_stride + (size_t)kvh * hd;
        const uint16_t *kb = b->kc + base, *vb = b->vc + base;
        /* llama.cpp's CPU flash attention, whose rounding we follow so that
         * logits track the reference: q rounded to binary16, online softmax,
         * the output accumulated in binary16 */
        uint16_t q16[512];
        for (int d = 0; d < hd; d++)
            q16[d] = quant_f32_to_f16(qh[d]);
        float *o = b->att + (size_t)t * b->q_dim + (size_t)h * hd;
        uint16_t acc[512];
        memset(acc, 0, sizeof(uint16_t) * hd);
        float M = -INFINITY, S = 0;
        for (int i = 0; i <= p; i++) {
            float sv = kernels_dot_f16(hd, kb + (size_t)i * b->kv_dim, q16) * scale;
            float ms = 1.0f, vs = 1.0f;
            if (sv > M) {
                float Mold = M;
                M = sv;
                ms = expf(Mold - M);
                scale_f16(acc, ms, hd);
            } else {
                vs = expf(sv - M);
            }
            mad_f16(acc, vb + (size_t)i * b->kv_dim, vs, hd);
            S = fmaf(S, ms, vs);
        }
        float inv = 1.0f / S;
        for (int d = 0; d < hd; d++)
            o[d] = quant_f16_to_f32(acc[d]) * inv;
    }
}

/* ---------------- forward ---------------- */

static int check_batch(struct backend *b, const struct batch *bt, const float *logits)
{
    if (bt->n_tokens < 1 || bt->n_tokens > b->cfg.max_batch || batch_outputs_ok(bt, logits))
        return ST_EINVAL;
    int ns = b->cfg.max_seqs;
    int *exp = calloc((size_t)ns, sizeof(int));
    if (!exp) return ST_ENOMEM;
    for (int s = 0; s < ns; s++)
        exp[s] = b->len[s];
    int rc = 0;
    for (int i = 0; i < bt->n_tokens && rc == 0; i++) {
        int s = bt->seq[i];
        if (s < 0 || s >= ns || bt->token[i] < 0 || (uint32_t)bt->token[i] >= b->hp.n_vocab ||
            bt->pos[i] != exp[s] || bt->pos[i] >= b->cfg.max_ctx)
            rc = ST_EINVAL;
        else
            exp[s]++;
    }
    free(exp);
    return rc;
}

static void embed(struct backend *b, const struct batch *bt)
{
    int dim = (int)b->hp.dim;
    size_t rb = quant_row_size(b->embd.type, dim);
    for (int t = 0; t < bt->n_tokens; t++)
        quant_dequantize_row(b->embd.type, (const uint8_t *)b->embd.data + rb * bt->token[t],
                             b->x + (size_t)t * dim, dim);
}

static void rope_tables(struct backend *b, int n_tok)
{
    int half = (int)b->hp.rope_dim / 2;
    float theta_scale = powf(b->hp.rope_base, -2.0f / (float)b->hp.rope_dim);
    for (int t = 0; t < n_tok; t++) {
        float theta = (float)b->tok_pos[t];
        for (int i = 0; i < half; i++) {
            b->rope_cos[(size_t)t * half + i] = cosf(theta);
            b->rope_sin[(size_t)t * half + i] = sinf(theta);
            theta *= theta_scale;
        }
    }
}

/* Per-token elementwise steps of a layer, run over the pool for batches. */
enum ew_op {
    EW_ATTN_NORM, /* xb = rmsnorm(x) * attn_norm */
    EW_ROPE_KV,   /* q, k: head norms (qwen3), RoPE; k, v into the cache */
    EW_ADD_NORM,  /* x += xb; xb = rmsnorm(x) * ffn_norm */
    EW_SWIGLU,    /* hb = silu(hb) * hb2 */
    EW_ADD,       /* x += xb */
};

struct ew_job {
    struct backend *b;
    int layer;
    enum ew_op op;
};

static void ew_rope_kv(struct backend *b, int l, int t)
{
    const struct model_hparams *hp = &b->hp;
    const struct layer_w *L = &b->layers[l];
    int hd = (int)hp->head_dim, half = (int)hp->rope_dim / 2;
    size_t seq_stride = (size_t)b->cfg.max_ctx * b->kv_dim;
    size_t layer_stride = (size_t)b->cfg.max_seqs * seq_stride;
    const float *c = b->rope_cos + (size_t)t * half, *s = b->rope_sin + (size_t)t * half;
    float *q = b->q + (size_t)t * b->q_dim, *k = b->k + (size_t)t * b->kv_dim;
    for (int h = 0; h < (int)hp->n_heads; h++) {
        if (L->q_norm.data) rmsnorm(q + h * hd, q + h * hd, L->q_norm.data, hd, hp->rms_eps);
        rope_head(q + h * hd, c, s, (int)hp->rope_dim, (int)hp->rope_kind);
    }
    for (int h = 0; h < (int)hp->n_kv_heads; h++) {
        if (L->k_norm.data) rmsnorm(k + h * hd, k + h * hd, L->k_norm.data, hd, hp->rms_eps);
        rope_head(k + h * hd, c, s, (int)hp->rope_dim, (int)hp->rope_kind);
    }
    size_t off = (size_t)l * layer_stride + (size_t)b->tok_seq[t] * seq_stride +
                 (size_t)b->tok_pos[t] * b->kv_dim;
    const float *v = b->v + (size_t)t * b->kv_dim;
    for (int i = 0; i < b->kv_dim; i++) {
        b->kc[off + i] = quant_f32_to_f16(k[i]);
        b->vc[off + i] = quant_f32_to_f16(v[i]);
    }
}

static void ew_run(void *arg, int t, int ith)
{
    struct ew_job *j = arg;
    struct backend *b = j->b;
    const struct layer_w *L = &b->layers[j->layer];
    size_t dim = b->hp.dim, ffn = b->hp.ffn_dim;
    float *x = b->x + t * dim, *xb = b->xb + t * dim;
    switch (j->op) {
    case EW_ATTN_NORM:
        rmsnorm(xb, x, L->attn_norm.data, (int)dim, b->hp.rms_eps);
        break;
    case EW_ROPE_KV:
        ew_rope_kv(b, j->layer, t);
        break;
    case EW_ADD_NORM:
        for (size_t i = 0; i < dim; i++)
            x[i] += xb[i];
        rmsnorm(xb, x, L->ffn_norm.data, (int)dim, b->hp.rms_eps);
        break;
    case EW_SWIGLU: {
        float *g = b->hb + t * ffn, *u = b->hb2 + t * ffn;
        for (size_t i = 0; i < ffn; i++)
            g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        break;
    }
    case EW_ADD:
        for (size_t i = 0; i < dim; i++)
            x[i] += xb[i];
        break;
    }
}

static void elementwise(struct backend *b, int l, enum ew_op op, int n_tok)
{
    struct ew_job j = {.b = b, .layer = l, .op = op};
    if (n_tok < 4) { /* a dispatch costs more than it saves */
        for (int t = 0; t < n_tok; t++)
            ew_run(&j, t, 0);
        return;
    }
    pool_for(b->pool, n_tok, ew_run, &j);
}

static void layer_forward(struct backend *b, int l, int n_tok)
{
    const struct model_hparams *hp = &b->hp;
    const struct layer_w *L = &b->layers[l];
    int dim = (int)hp->dim, ffn = (int)hp->ffn_dim;

    elementwise(b, l, EW_ATTN_NORM, n_tok);
    matmul(b, &L->wq, b->xb, n_tok, b->q, b->q_dim, &L->bq);
    matmul(b, &L->wk, b->xb, n_tok, b->k, b->kv_dim, &L->bk);
    matmul(b, &L->wv, b->xb, n_tok, b->v, b->kv_dim, &L->bv);
    elementwise(b, l, EW_ROPE_KV, n_tok);

    struct att_job aj = {.b = b, .layer = l, .n_tok = n_tok};
    /* short contexts: attention is cheaper than a dispatch */
    long att_work = 0;
    for (int t = 0; t < n_tok; t++)
        att_work += (long)(b->tok_pos[t] + 1) * b->q_dim;
    if (att_work < 65536) {
        for (int task = 0; task < n_tok * (int)hp->n_heads; task++)
            att_run(&aj, task, 0);
    } else {
        pool_for(b->pool, n_tok * (int)hp->n_heads, att_run, &aj);
    }
    matmul(b, &L->wo, b->att, n_tok, b->xb, dim, NULL);
    elementwise(b, l, EW_ADD_NORM, n_tok);
    matmul(b, &L->wg, b->xb, n_tok, b->hb, ffn, NULL);
    matmul(b, &L->wu, b->xb, n_tok, b->hb2, ffn, NULL);
    elementwise(b, l, EW_SWIGLU, n_tok);
    matmul(b, &L->wd, b->hb, n_tok, b->xb, dim, NULL);
    elementwise(b, l, EW_ADD, n_tok);
}

static int cpu_forward(struct backend *b, const struct batch *bt, float *logits)
{
    int rc = check_batch(b, bt, logits);
    if (rc) return rc;
    int n = bt->n_tokens, dim = (int)b->hp.dim, nv = (int)b->hp.n_vocab, n_rows = 0;
    for (int t = 0; bt->logits && t < n; t++)
        n_rows += bt->logits[t] != LOGITS_NONE;
    /* every row is computed here, LOGITS_SUMMARY rows too: into the caller's
     * buffer when it gave one, else into lbuf (grown before anything changes) */
    if (n_rows > 0 && !logits && n_rows > b->lbuf_rows) {
        float *nb = realloc(b->lbuf, sizeof(float) * (size_t)nv * (size_t)n_rows);
        if (!nb) return ST_ENOMEM;
        b->lbuf = nb;
        b->lbuf_rows = n_rows;
    }
    for (int t = 0; t < n; t++) {
        b->tok_seq[t] = bt->seq[t];
        b->tok_pos[t] = bt->pos[t];
    }
    embed(b, bt);
    rope_tables(b, n);
    for (int l = 0; l < (int)b->hp.n_layers; l++)
        layer_forward(b, l, n);
    for (int t = 0; t < n; t++)
        b->len[bt->seq[t]] = bt->pos[t] + 1;
    int n_out = 0;
    for (int t = 0; t < n; t++) {
        if (!bt->logits || !bt->logits[t]) continue;
        rmsnorm(b->xo + (size_t)n_out * dim, b->x + (size_t)t * dim, b->out_norm.data, dim,
                b->hp.rms_eps);
        n_out++;
    }
    float *rows = logits ? logits : b->lbuf;
    if (n_out > 0) matmul(b, &b->out, b->xo, n_out, rows, nv, NULL);
    for (int r = 0; r < n_out && bt->top; r++)
        logits_summarize(rows + (size_t)r * nv, nv, &bt->top[r]);
    b->last_rows = rows;
    b->last_n = n_out;
    return 0;
}

static int cpu_logits_row(struct backend *b, int row, float *out)
{
    if (row < 0 || row >= b->last_n) return ST_EINVAL;
    size_t nv = b->hp.n_vocab;
    memmove(out, b->last_rows + (size_t)row * nv, sizeof(float) * nv);
    return 0;
}

/* ---------------- create / destroy ---------------- */

static int need(const struct st_model *m, int layer, const char *name, struct model_tensor *t,
                bool f32, struct st_errbuf *eb)
{
    char full[128];
    if (layer < 0)
        snprintf(full, sizeof(full), "%s", name);
    else
        snprintf(full, sizeof(full), "blk.%d.%s", layer, name);
    if (!model_tensor(m, full, t))
        return st_errf(eb, ST_EFORMAT, "cpu backend: tensor %s missing", full);
    if (f32 && t->type != GGML_TYPE_F32)
        return st_errf(eb, ST_EUNSUPPORTED, "cpu backend: tensor %s must be F32, is %s", full,
                       ggml_type_name(t->type));
    if (!f32 && !kernels_dot(t->type, false))
        return st_errf(eb, ST_EUNSUPPORTED, "cpu backend: tensor %s has unsupported type %s", full,
                       ggml_type_name(t->type));
    return 0;
}

static void cpu_destroy(struct backend **pb)
{
    struct backend *b = pb ? *pb : NULL;
    if (!b) return;
    pool_destroy(&b->pool);
    free(b->layers);
    free(b->kc);
    free(b->vc);
    free(b->len);
    free(b->x);
    free(b->xb);
    free(b->q);
    free(b->k);
    free(b->v);
    free(b->att);
    free(b->hb);
    free(b->hb2);
    free(b->xo);
    free(b->act);
    free(b->scores);
    free(b->rope_cos);
    free(b->rope_sin);
    free(b->tok_seq);
    free(b->tok_pos);
    free(b->lbuf);
    free(b);
    *pb = NULL;
}

static int cpu_create(const struct st_model *m, const struct backend_config *cfg,
                      struct backend **out, struct st_errbuf *eb)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (hp->arch == ARCH_NONE)
        return st_errf(eb, ST_EUNSUPPORTED, "cpu backend: model has no tensors (vocab-only file)");
    if (cfg->max_seqs < 1 || cfg->max_ctx < 1 || cfg->max_batch < 1)
        return st_errf(eb, ST_EINVAL, "cpu backend: max_seqs, max_ctx, max_batch must be >= 1");
    if (hp->n_heads % hp->n_kv_heads != 0 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2 ||
        hp->head_dim > 512)
        return st_errf(eb, ST_EUNSUPPORTED,
                       "cpu backend: heads %u / kv heads %u / head dim %u (max 512) / rope dim %u",
                       hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->rope_dim);
    struct backend *b = calloc(1, sizeof(*b));
    if (!b) return st_errf(eb, ST_ENOMEM, "cpu backend: out of memory");
    b->m = m;
    b->hp = *hp;
    b->cfg = *cfg;
    b->q_dim = (int)(hp->n_heads * hp->head_dim);
    b->kv_dim = (int)(hp->n_kv_heads * hp->head_dim);
    size_t cache = (size_t)hp->n_layers * cfg->max_seqs * cfg->max_ctx * b->kv_dim;
    int rc;
    b->layers = calloc(hp->n_layers, sizeof(*b->layers));
    if (!b->layers) goto oom;
    if ((rc = need(m, -1, "token_embd.weight", &b->embd, false, eb)) ||
        (rc = need(m, -1, "output_norm.weight", &b->out_norm, true, eb)))
        goto err;
    if (!model_tensor(m, "output.weight", &b->out))
        b->out = b->embd;
    else if ((rc = need(m, -1, "output.weight", &b->out, false, eb)))
        goto err;
    for (int l = 0; l < (int)hp->n_layers; l++) {
        struct layer_w *L = &b->layers[l];
        if ((rc = need(m, l, "attn_norm.weight", &L->attn_norm, true, eb)) ||
            (rc = need(m, l, "attn_q.weight", &L->wq, false, eb)) ||
            (rc = need(m, l, "attn_k.weight", &L->wk, false, eb)) ||
            (rc = need(m, l, "attn_v.weight", &L->wv, false, eb)) ||
            (rc = need(m, l, "attn_output.weight", &L->wo, false, eb)) ||
            (rc = need(m, l, "ffn_norm.weight", &L->ffn_norm, true, eb)) ||
            (rc = need(m, l, "ffn_gate.weight", &L->wg, false, eb)) ||
            (rc = need(m, l, "ffn_up.weight", &L->wu, false, eb)) ||
            (rc = need(m, l, "ffn_down.weight", &L->wd, false, eb)))
            goto err;
        if (hp->has_qkv_bias && ((rc = need(m, l, "attn_q.bias", &L->bq, true, eb)) ||
                                 (rc = need(m, l, "attn_k.bias", &L->bk, true, eb)) ||
                                 (rc = need(m, l, "attn_v.bias", &L->bv, true, eb))))
            goto err;
        if (hp->has_qk_norm && ((rc = need(m, l, "attn_q_norm.weight", &L->q_norm, true, eb)) ||
                                (rc = need(m, l, "attn_k_norm.weight", &L->k_norm, true, eb))))
            goto err;
    }
    size_t B = (size_t)cfg->max_batch;
    int maxd = (int)hp->dim;
    if ((int)hp->ffn_dim > maxd) maxd = (int)hp->ffn_dim;
    if (b->q_dim > maxd) maxd = b->q_dim;
    b->act_row_cap = (size_t)maxd * 4;
    int nth = cfg->n_threads > 0 ? cfg->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nth < 1) nth = 1;
    b->kc = malloc(cache * 2);
    b->vc = malloc(cache * 2);
    b->len = calloc((size_t)cfg->max_seqs, sizeof(int));
    b->x = malloc(B * hp->dim * 4);
    b->xb = malloc(B * hp->dim * 4);
    b->xo = malloc(B * hp->dim * 4);
    b->q = malloc(B * b->q_dim * 4);
    b->att = malloc(B * b->q_dim * 4);
    b->k = malloc(B * b->kv_dim * 4);
    b->v = malloc(B * b->kv_dim * 4);
    b->hb = malloc(B * hp->ffn_dim * 4);
    b->hb2 = malloc(B * hp->ffn_dim * 4);
    b->act = malloc(B * b->act_row_cap);
    b->scores = malloc((size_t)nth * cfg->max_ctx * 4);
    b->rope_cos = malloc(B * (hp->rope_dim / 2 + 1) * 4);
    b->rope_sin = malloc(B * (hp->rope_dim / 2 + 1) * 4);
    b->tok_seq = malloc(B * sizeof(int));
    b->tok_pos = malloc(B * sizeof(int));
    if (!b->kc || !b->vc || !b->len || !b->x || !b->xb || !b->xo || !b->q || !b->att || !b->k ||
        !b->v || !b->hb || !b->hb2 || !b->act || !b->scores || !b->rope_cos || !b->rope_sin ||
        !b->tok_seq || !b->tok_pos)
        goto oom;
    b->pool = pool_new(nth);
    if (!b->pool) goto oom;
    *out = b;
    return 0;
oom:
    rc = st_errf(eb, ST_ENOMEM, "cpu backend: out of memory (KV cache %zu MiB)", (cache * 4) >> 20);
err:
    cpu_destroy(&b);
    return rc;
}

static int cpu_seq_truncate(struct backend *b, int seq, int keep)
{
    if (seq < 0 || seq >= b->cfg.max_seqs || keep < 0) return ST_EINVAL;
    if (keep < b->len[seq]) b->len[seq] = keep;
    return 0;
}

static int cpu_seq_len(struct backend *b, int seq)
{
    if (seq < 0 || seq >= b->cfg.max_seqs) return ST_EINVAL;
    return b->len[seq];
}

void cpu_backend_set_reference(struct backend *b, bool reference)
{
    b->reference = reference;
}

const struct backend_ops cpu_backend_ops = {
    .name = "cpu",
    .create = cpu_create,
    .forward = cpu_forward,
    .logits_row = cpu_logits_row,
    .seq_truncate = cpu_seq_truncate,
    .seq_len = cpu_seq_len,
    .destroy = cpu_destroy,
};
