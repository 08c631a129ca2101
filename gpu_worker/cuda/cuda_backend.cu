/* The CUDA backend of the worker (see cuda_backend.h and gpu_worker/backend.h). */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/exact.cuh"
#include "gpu_worker/cuda/kernels.cuh"
#include "gpu_worker/cuda/kvpool.cuh"
#include "gpu_worker/cuda/mmq.cuh"
#include "gpu_worker/cuda/mvq.cuh"
#include "gpu_worker/cuda/quant.cuh"
#include "gpu_worker/cuda/topk.cuh"

#include <cublas_v2.h>
#include <cuda_profiler_api.h>

extern "C" {
#include "common/model.h"
#include "gpu_worker/backend.h"
}
#include "gpu_worker/cuda/cuda_backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A weight matrix on the device: N rows of K elements in ggml type `type`. */
struct cmat {
    const void *w;
    int type;
    int N, K;
};

/* Forward passes of up to GRAPH_MAX_TOKENS tokens run as CUDA graphs, one
 * instantiated graph per (n_tokens, n_out, summaries) shape, CUDA_MAX_GRAPHS
 * kept (LRU). 128: a step of 128 sequences launched kernel by kernel is
 * bound by the host's launches (0.5B N=128 34,786-45,228 tok/s, as a graph
 * 49,740-51,918; 7B 7,156 -> 7,500). */
#define CUDA_MAX_GRAPHS 24
#define GRAPH_MAX_TOKENS 128
#define LG_STAGE_ROWS 64
#define CUBLAS_WS_BYTES (32u << 20)
/* Quantized products of at least this many tokens decode W to half for cuBLAS
 * (fewer: mmq). Measured on the H200 (docs/perf-notes.md), cuBLAS wins from
 * 9 tokens on, so mmq serves the reference mode only unless
 * STAGED_CUDA_GEMM_MIN_N raises this. */
#define GEMM_MIN_N (MATVEC_MAX_N + 1)
/* The half copies of quantized W for cuBLAS rotate through DEQ_SLOTS buffers
 * (larger matrices go in row chunks, see deq_rows): a second stream decodes
 * the next chunks while cuBLAS multiplies the current one, so the decoding is
 * off the step's critical path. */
#define DEQ_SLOTS 4
#define DEQ_SLOT_MAX_ELEMS ((size_t)32 << 20)

struct fgraph {
    int n, n_out;
    bool top; /* ends with the summaries copied to h_top */
    unsigned long long used;
    cudaGraphExec_t exec;
};

struct clayer {
    struct cmat q, k, v, o, gate, up, down;
    const float *attn_norm, *ffn_norm; /* [dim] */
    const float *bq, *bk, *bv;         /* [q_dim], [kv_dim] or NULL */
    const float *qn, *kn;              /* [head_dim] (qwen3) or NULL */
};

struct backend {
    struct model_hparams hp;
    struct backend_config cfg;
    int q_dim, kv_dim;
    uint8_t *base; /* device tensor-data region */
    bool own_base;
    cudaStream_t st;
    cublasHandle_t cb;
    struct cmat embd, out;
    const float *out_norm;
    struct clayer *L;
    /* KV cache: [seq][pos][layer][kv_dim] halves in address ranges mapped on
     * demand (kvpool.cuh); a sequence's slot is kl.sstride elements */
    struct kvpool *kpool, *vpool;
    __half *kc, *vc;
    struct kv_layout kl;
    /* scratch, [max_batch][...] floats */
    float *x, *xn, *q, *k, *v, *att, *g, *u, *tmp, *xr, *xr2, *xo, *lg;
    float *qkv;               /* [max_batch][q_dim + 2 kv_dim]: q/k/v as one product's output */
    void *a16;                /* activations as half / bfloat16 for cuBLAS (F16/BF16 weights) */
    struct mmq_act mq;        /* activations as 8-bit blocks for the integer products */
    struct mmq_act sq;        /* a second input's (up's class differs from gate's) */
    int32_t *d_meta, *h_meta; /* tok | pos | seq | out rows */
    int *seq_len, *seq_cnt;
    bool dead;
    bool fault;
    /* memo of the converted input of the last product: q/k/v (and gate/up)
     * share one; memo_reset() forgets it when the input buffer is rewritten */
    const float *memo_src; /* rounded floats in xr (batches up to MATVEC_MAX_N) */
    int memo_cls, memo_n;
    const float *mq_src;  /* quantized in mq */
    const float *a16_src; /* half / bfloat16 in a16 (of the rounded input for class 3/4) */
    int a16_cls, a16_n;
    /* quantized products of at least gemm_min_n tokens: W decoded to half
     * on stream dst into slot deq_next % DEQ_SLOTS of wdeq (DEQ_SLOTS chunks
     * of wdeq_elems elements; deq_target: see deq_rows), cuBLAS on st. ev_deq[s]: slot s written;
     * ev_use[s]: its product done (deq_used[s]: recorded in this pass);
     * ev_fork / ev_join bracket a pass's use of dst (deq_forked) */
    __half *wdeq;
    size_t wdeq_elems, deq_target;
    int gemm_min_n;
    cudaStream_t dst;
    cudaEvent_t ev_deq[DEQ_SLOTS], ev_use[DEQ_SLOTS], ev_fork, ev_join;
    bool deq_used[DEQ_SLOTS];
    unsigned deq_next;
    bool deq_forked;
    /* CUDA graphs of whole forward passes, keyed by (n_tokens, n_out) */
    struct fgraph graphs[CUDA_MAX_GRAPHS];
    unsigned long long graph_clock;
    bool use_graphs;
    void *cublas_ws;
    float *h_lg; /* pinned staging for logits, LG_STAGE_ROWS rows */
    /* logits summaries (topk.cuh): [max_batch] on the device and pinned */
    struct logits_top *d_top, *h_top;
    void *top_scratch;
    int last_n_out;   /* logits rows of the last forward call, in lg */
    bool unfused;     /* STAGED_CUDA_UNFUSED=1: small batches take the unfused path too */
    bool ref;         /* STAGED_CUDA_REF=1: the reference's operations in its order */
    float2 *rope_tab; /* (cos, sin) [max_ctx][rope_dim / 2] (see backend create) */
};

static volatile int g_inject_fault;

extern "C" void cuda_backend_inject_bad_kernel(void)
{
    g_inject_fault = 1;
}

extern "C" int cuda_device_count(struct st_errbuf *eb)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        st_errf(eb, ST_EDEVICE, "no CUDA device: %s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) st_errf(eb, ST_EDEVICE, "no CUDA device");
    return n;
}

extern "C" size_t cuda_device_used(void)
{
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
    return total - free_b;
}

extern "C" void *cuda_host_alloc(size_t bytes)
{
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) {
        log_error("cuda: cudaMallocHost(%zu): %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

extern "C" void cuda_host_free(void *p)
{
    if (p) cudaFreeHost(p);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

extern "C" int cuda_ipc_open(const char *hex, int device, void **dev_ptr, struct st_errbuf *eb)
{
    cudaIpcMemHandle_t h;
    static_assert(sizeof(h) == 64, "IPC handle is 64 bytes");
    *dev_ptr = NULL;
    if (!hex || strlen(hex) != 2 * sizeof(h))
        return st_errf(eb, ST_EFORMAT, "cuda_ipc_open: handle must be %d hex digits, got %zu",
                       (int)(2 * sizeof(h)), hex ? strlen(hex) : (size_t)0);
    unsigned char *p = (unsigned char *)&h;
    for (size_t i = 0; i < sizeof(h); i++) {
        int a = hexval(hex[2 * i]), b = hexval(hex[2 * i + 1]);
        if (a < 0 || b < 0)
            return st_errf(eb, ST_EFORMAT, "cuda_ipc_open: bad hex digit at position %zu",
                           2 * i + (a < 0 ? 0 : 1));
        p[i] = (unsigned char)(a << 4 | b);
    }
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaIpcOpenMemHandle(dev_ptr, h, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
        *dev_ptr = NULL;
        return st_errf(eb, ST_EDEVICE, "cuda_ipc_open on device %d: %s", device,
                       cudaGetErrorString(e));
    }
    return 0;
}

extern "C" void cuda_ipc_close(void *dev_ptr)
{
    if (dev_ptr) {
        cudaError_t e = cudaIpcCloseMemHandle(dev_ptr);
        if (e != cudaSuccess) log_warn("cuda: cudaIpcCloseMemHandle: %s", cudaGetErrorString(e));
    }
}

/* The rope table's entry (p, i) with rope_store_kernel's arithmetic: the
 * angle p * theta_scale^i by repeated products, the device's cosf/sinf. */
static __global__ void rope_table_kernel(float2 *tab, int max_ctx, int half, float theta_scale)
{
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)max_ctx * half) return;
    int p = (int)(e / half), i = (int)(e % half);
    float theta = (float)p;
    for (int j = 0; j < i; j++)
        theta *= theta_scale;
    tab[e] = make_float2(cosf(theta), sinf(theta));
}

/* ---- model setup ---- */

extern "C" int cuda_check_alignment(const struct st_model *m, struct st_errbuf *eb)
{
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const struct gguf_tensor *t = &m->gguf->tensors[i];
        bool is_float =
            t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16;
        if (!is_float && t->offset % 16 != 0)
            return st_errf(eb, ST_EUNSUPPORTED,
                           "cuda: tensor %.*s starts at data offset %llu, not a multiple of 16 "
                           "bytes (the file's general.alignment is %u); the CUDA kernels read "
                           "quantized blocks in 16-byte words",
                           (int)t->name.len, t->name.p, (unsigned long long)t->offset,
                           (unsigned)m->gguf->alignment);
    }
    return 0;
}

static int bind_mat(const struct st_model *m, const struct backend *b, const char *name, int layer,
                    struct cmat *out, struct st_errbuf *eb)
{
    struct model_tensor t;
    bool ok = layer < 0 ? model_tensor(m, name, &t) : model_tensor_l(m, (uint32_t)layer, name, &t);
    if (!ok) return st_errf(eb, ST_EFORMAT, "cuda: tensor %s (layer %d) missing", name, layer);
    out->w = b->base + ((const uint8_t *)t.data - m->data);
    /* the device copy groups these tensors' blocks (loader/gpu_layout.h) */
    out->type = (int)t.type + (gpu_layout_grouped(t.type, t.size) ? 100 : 0);
    out->K = (int)t.ne[0];
    out->N = (int)t.ne[1];
    if (!ggml_type_supported(t.type))
        return st_errf(eb, ST_EUNSUPPORTED, "cuda: tensor %s has unsupported type %u", name,
                       t.type);
    bool is_float = t.type == GGML_TYPE_F32 || t.type == GGML_TYPE_F16 || t.type == GGML_TYPE_BF16;
    if (!is_float && out->K % 8 != 0)
        return st_errf(eb, ST_EFORMAT, "cuda: tensor %s row length %d", name, out->K);
    return 0;
}

static int bind_vec(const struct st_model *m, const struct backend *b, const char *name, int layer,
                    uint64_t n, bool required, const float **out, struct st_errbuf *eb)
{
    struct model_tensor t;
    bool ok = layer < 0 ? model_tensor(m, name, &t) : model_tensor_l(m, (uint32_t)layer, name, &t);
    *out = NULL;
    if (!ok) {
        if (required)
            return st_errf(eb, ST_EFORMAT, "cuda: tensor %s (layer %d) missing", name, layer);
        return 0;
    }
    if (t.type != GGML_TYPE_F32 || t.ne[0] != n)
        return st_errf(eb, ST_EUNSUPPORTED,
                       "cuda: tensor %s (layer %d) must be F32 of %llu elements", name, layer,
                       (unsigned long long)n);
    *out = (const float *)(b->base + ((const uint8_t *)t.data - m->data));
    return 0;
}

/* cudaMalloc with the injectable failure: STAGED_CUDA_FAIL_ALLOC=N makes the
 * N-th device allocation of this process fail (the worker sets it from
 * [worker] fault_fail_alloc_at). */
static long dev_allocs;

static cudaError_t dev_malloc(void **p, size_t n)
{
    const char *env = getenv("STAGED_CUDA_FAIL_ALLOC");
    if (env && ++dev_allocs == atol(env)) {
        log_error("fault injection: cudaMalloc #%ld of %zu bytes fails", dev_allocs, n);
        return cudaErrorMemoryAllocation;
    }
    return cudaMalloc(p, n);
}

#define CREATE_CUDA(call)                                                                          \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            log_error("cuda: %s failed at %s:%d: %s", #call, __FILE__, __LINE__,                   \
                      cudaGetErrorString(e_));                                                     \
            rc = st_errf(eb, ST_EDEVICE, "cuda: %s: %s", #call, cudaGetErrorString(e_));           \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

#define CREATE_TRY(call)                                                                           \
    do {                                                                                           \
        rc = (call);                                                                               \
        if (rc < 0) goto fail;                                                                     \
    } while (0)

static void cuda_destroy(struct backend **pb);

/* The rows of W decoded at a time for cuBLAS: all of them when W has at
 * most deq_target elements, else equal chunks of about deq_target elements
 * rounded up to 128 rows (each chunk's output then starts 512-byte aligned:
 * an unaligned one costs cuBLAS its fast kernels, 7B's prompt 14.5k -> 5.1k
 * tokens/s). */
static int deq_rows(const struct backend *b, const struct cmat *W)
{
    size_t elems = (size_t)W->N * W->K;
    if (elems <= b->deq_target) return W->N;
    size_t chunks = (elems + b->deq_target - 1) / b->deq_target;
    size_t rows = ((W->N + chunks - 1) / chunks + 127) & ~(size_t)127;
    return rows < (size_t)W->N ? (int)rows : W->N;
}

/* Buffers of quantized activations for up to `tokens` rows of wmax
 * elements (mmq's K-split partial sums too when part). */
static cudaError_t act_alloc(struct mmq_act *a, size_t tokens, size_t wmax, bool part)
{
    cudaError_t e = dev_malloc((void **)&a->q, tokens * wmax);
    if (e == cudaSuccess) e = dev_malloc((void **)&a->d, tokens * wmax / 32 * 4);
    if (e == cudaSuccess) e = dev_malloc((void **)&a->s, tokens * wmax / 32 * 4);
    if (e == cudaSuccess) e = dev_malloc((void **)&a->bsum, tokens * wmax / 16 * 4);
    if (e == cudaSuccess && part) {
        a->part_elems = mmq_part_elems((int)tokens);
        e = dev_malloc((void **)&a->part, a->part_elems * 4);
    }
    return e;
}

static int cuda_create(const struct st_model *m, const struct backend_config *cfg,
                       struct backend **out, struct st_errbuf *eb)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (hp->arch != ARCH_LLAMA && hp->arch != ARCH_QWEN2 && hp->arch != ARCH_QWEN3)
        return st_errf(eb, ST_EUNSUPPORTED, "cuda: architecture %s not supported",
                       model_arch_name(hp->arch));
    if (cfg->max_seqs < 1 || cfg->max_ctx < 1 || cfg->max_batch < 1)
        return st_errf(eb, ST_ERANGE, "cuda: max_seqs %d, max_ctx %d, max_batch %d must be >= 1",
                       cfg->max_seqs, cfg->max_ctx, cfg->max_batch);
    if (hp->n_kv_heads == 0 || hp->n_heads % hp->n_kv_heads != 0 || hp->head_dim > 256 ||
        hp->head_dim % 8 != 0 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2 != 0)
        return st_errf(eb, ST_EUNSUPPORTED,
                       "cuda: heads %u/%u, head_dim %u, rope_dim %u (head_dim: a multiple of 8 up "
                       "to 256; kv heads dividing heads; rope_dim even, at most head_dim)",
                       hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->rope_dim);
    int rc = cuda_check_alignment(m, eb);
    if (rc) return rc;

    struct backend *b = (struct backend *)calloc(1, sizeof(*b));
    if (!b) return st_errf(eb, ST_ENOMEM, "cuda: out of memory");
    b->hp = *hp;
    b->cfg = *cfg;
    b->q_dim = (int)(hp->n_heads * hp->head_dim);
    b->kv_dim = (int)(hp->n_kv_heads * hp->head_dim);
    b->fault = getenv("STAGED_CUDA_FAULT") && strcmp(getenv("STAGED_CUDA_FAULT"), "1") == 0;
    b->ref = getenv("STAGED_CUDA_REF") && strcmp(getenv("STAGED_CUDA_REF"), "1") == 0;
    b->gemm_min_n = GEMM_MIN_N;
    if (getenv("STAGED_CUDA_GEMM_MIN_N")) b->gemm_min_n = atoi(getenv("STAGED_CUDA_GEMM_MIN_N"));
    if (b->gemm_min_n <= MATVEC_MAX_N) b->gemm_min_n = MATVEC_MAX_N + 1;
    b->unfused = getenv("STAGED_CUDA_UNFUSED") && strcmp(getenv("STAGED_CUDA_UNFUSED"), "1") == 0;
    if (getenv("STAGED_CUDA_PDL")) g_cuda_pdl = strcmp(getenv("STAGED_CUDA_PDL"), "0") != 0;
    b->use_graphs =
        !(getenv("STAGED_CUDA_GRAPHS") && strcmp(getenv("STAGED_CUDA_GRAPHS"), "0") == 0);
    b->L = (struct clayer *)calloc(hp->n_layers, sizeof(*b->L));
    b->seq_len = (int *)calloc((size_t)cfg->max_seqs, sizeof(int));
    b->seq_cnt = (int *)calloc((size_t)cfg->max_seqs, sizeof(int));
    if (!b->L || !b->seq_len || !b->seq_cnt) {
        rc = st_errf(eb, ST_ENOMEM, "cuda: out of memory");
        goto fail;
    }

    CREATE_CUDA(cudaSetDevice(cfg->device));
    CREATE_CUDA(cudaStreamCreateWithFlags(&b->st, cudaStreamNonBlocking));

    /* weights: the loader's copy, or a private upload of the data region */
    if (cfg->dev_weights) {
        b->base = (uint8_t *)cfg->dev_weights;
    } else {
        uint64_t region = 0;
        for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
            uint64_t end = m->gguf->tensors[i].offset + m->gguf->tensors[i].size;
            if (end > region) region = end;
        }
        /* + 256: kernels read weight rows with 16-byte loads rounded up */
        CREATE_CUDA(dev_malloc((void **)&b->base, region + 256));
        b->own_base = true;
        const size_t chunk = 64u << 20;
        for (uint64_t off = 0; off < region; off += chunk) {
            size_t len = region - off < chunk ? (size_t)(region - off) : chunk;
            CREATE_CUDA(cudaMemcpy(b->base + off, m->data + off, len, cudaMemcpyHostToDevice));
        }
        /* into the loader's device layout */
        struct gpu_layout_tensor *lt = (struct gpu_layout_tensor *)malloc(
            (m->gguf->n_tensors ? m->gguf->n_tensors : 1) * sizeof(*lt));
        if (!lt) {
            rc = st_errf(eb, ST_ENOMEM, "cuda: out of memory");
            goto fail;
        }
        for (uint64_t i = 0; i < m->gguf->n_tensors; i++)
            lt[i] = {m->gguf->tensors[i].type, m->gguf->tensors[i].offset,
                     m->gguf->tensors[i].size};
        rc = gpu_layout_apply(b->base, lt, m->gguf->n_tensors, eb);
        free(lt);
        if (rc < 0) goto fail;
        rc = 0;
    }

    /* tensors */
    {
        CREATE_TRY(bind_mat(m, b, "token_embd.weight", -1, &b->embd, eb));
        if (hp->tied_output)
            b->out = b->embd;
        else
            CREATE_TRY(bind_mat(m, b, "output.weight", -1, &b->out, eb));
        CREATE_TRY(bind_vec(m, b, "output_norm.weight", -1, hp->dim, true, &b->out_norm, eb));
        for (int l = 0; l < (int)hp->n_layers; l++) {
            struct clayer *L = &b->L[l];
            CREATE_TRY(bind_mat(m, b, "attn_q.weight", l, &L->q, eb));
            CREATE_TRY(bind_mat(m, b, "attn_k.weight", l, &L->k, eb));
            CREATE_TRY(bind_mat(m, b, "attn_v.weight", l, &L->v, eb));
            CREATE_TRY(bind_mat(m, b, "attn_output.weight", l, &L->o, eb));
            CREATE_TRY(bind_mat(m, b, "ffn_gate.weight", l, &L->gate, eb));
            CREATE_TRY(bind_mat(m, b, "ffn_up.weight", l, &L->up, eb));
            CREATE_TRY(bind_mat(m, b, "ffn_down.weight", l, &L->down, eb));
            CREATE_TRY(bind_vec(m, b, "attn_norm.weight", l, hp->dim, true, &L->attn_norm, eb));
            CREATE_TRY(bind_vec(m, b, "ffn_norm.weight", l, hp->dim, true, &L->ffn_norm, eb));
            CREATE_TRY(bind_vec(m, b, "attn_q.bias", l, b->q_dim, false, &L->bq, eb));
            CREATE_TRY(bind_vec(m, b, "attn_k.bias", l, b->kv_dim, false, &L->bk, eb));
            CREATE_TRY(bind_vec(m, b, "attn_v.bias", l, b->kv_dim, false, &L->bv, eb));
            CREATE_TRY(bind_vec(m, b, "attn_q_norm.weight", l, hp->head_dim, hp->has_qk_norm != 0,
                                &L->qn, eb));
            CREATE_TRY(bind_vec(m, b, "attn_k_norm.weight", l, hp->head_dim, hp->has_qk_norm != 0,
                                &L->kn, eb));
            const struct cmat *ms[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
            for (int i = 0; i < 7; i++)
                if (mmq_supported(ms[i]->type) && (size_t)ms[i]->N * ms[i]->K > b->deq_target)
                    b->deq_target = (size_t)ms[i]->N * ms[i]->K;
        }
        /* chunks of about the largest layer matrix (the output matrix in at
         * least 256 rows), DEQ_SLOT_MAX_ELEMS at most; a slot holds the
         * largest chunk */
        if (mmq_supported(b->out.type) && b->deq_target < (size_t)b->out.K * 256)
            b->deq_target = (size_t)b->out.K * 256;
        if (b->deq_target > DEQ_SLOT_MAX_ELEMS) b->deq_target = DEQ_SLOT_MAX_ELEMS;
        for (int l = 0; l < (int)hp->n_layers; l++) {
            const struct clayer *L = &b->L[l];
            const struct cmat *ms[8] = {&L->q,    &L->k,  &L->v,    &L->o,
                                        &L->gate, &L->up, &L->down, &b->out};
            for (int i = 0; i < 8; i++) {
                if (!mmq_supported(ms[i]->type)) continue; /* (deq_target is 0 without one) */
                size_t chunk = (size_t)deq_rows(b, ms[i]) * ms[i]->K;
                if (chunk > b->wdeq_elems) b->wdeq_elems = chunk;
            }
        }
        if (b->wdeq_elems && cfg->max_batch >= b->gemm_min_n && !b->ref) {
            CREATE_CUDA(dev_malloc((void **)&b->wdeq, DEQ_SLOTS * b->wdeq_elems * sizeof(__half)));
            CREATE_CUDA(cudaStreamCreateWithFlags(&b->dst, cudaStreamNonBlocking));
            for (int i = 0; i < DEQ_SLOTS; i++) {
                CREATE_CUDA(cudaEventCreateWithFlags(&b->ev_deq[i], cudaEventDisableTiming));
                CREATE_CUDA(cudaEventCreateWithFlags(&b->ev_use[i], cudaEventDisableTiming));
            }
            CREATE_CUDA(cudaEventCreateWithFlags(&b->ev_fork, cudaEventDisableTiming));
            CREATE_CUDA(cudaEventCreateWithFlags(&b->ev_join, cudaEventDisableTiming));
        }
    }

    /* KV cache and scratch */
    {
        size_t B = (size_t)cfg->max_batch, D = hp->dim, F = hp->ffn_dim, V = hp->n_vocab;
        b->kl.pstride = (size_t)hp->n_layers * b->kv_dim;
        size_t seq_bytes = (size_t)cfg->max_ctx * b->kl.pstride * sizeof(__half);
        CREATE_TRY(kvpool_create(cfg->device, cfg->max_seqs, seq_bytes, &b->kpool, eb));
        CREATE_TRY(kvpool_create(cfg->device, cfg->max_seqs, seq_bytes, &b->vpool, eb));
        b->kc = (__half *)kvpool_base(b->kpool);
        b->vc = (__half *)kvpool_base(b->vpool);
        b->kl.sstride = kvpool_stride(b->kpool) / sizeof(__half);
        size_t wmax = D;
        if ((size_t)b->q_dim > wmax) wmax = b->q_dim;
        if (F > wmax) wmax = F;
        CREATE_CUDA(dev_malloc((void **)&b->x, B * D * 4));
        CREATE_CUDA(dev_malloc((void **)&b->xn, B * D * 4));
        CREATE_CUDA(dev_malloc((void **)&b->xo, B * D * 4));
        CREATE_CUDA(dev_malloc((void **)&b->q, B * b->q_dim * 4));
        CREATE_CUDA(dev_malloc((void **)&b->att, B * b->q_dim * 4));
        CREATE_CUDA(dev_malloc((void **)&b->k, B * b->kv_dim * 4));
        CREATE_CUDA(dev_malloc((void **)&b->v, B * b->kv_dim * 4));
        CREATE_CUDA(dev_malloc((void **)&b->qkv, B * (b->q_dim + 2 * b->kv_dim) * 4));
        /* g and u in one allocation: gate/up as one strided product */
        CREATE_CUDA(dev_malloc((void **)&b->g, 2 * B * F * 4));
        b->u = b->g + B * F;
        CREATE_CUDA(dev_malloc((void **)&b->tmp, B * wmax * 4));
        CREATE_CUDA(dev_malloc((void **)&b->xr, B * wmax * 4));
        CREATE_CUDA(dev_malloc((void **)&b->xr2, B * wmax * 4));
        CREATE_CUDA(dev_malloc((void **)&b->a16, B * wmax * 2));
        /* quantized activations: mq for every product with quantized
         * weights (batches up to MATVEC_MAX_N; any batch in the reference
         * mode or with STAGED_CUDA_GEMM_MIN_N raised, where mmq multiplies),
         * sq for a second input class of gate and up */
        bool mmq_used = b->ref || (B > MATVEC_MAX_N && b->gemm_min_n > MATVEC_MAX_N + 1);
        size_t AB = mmq_used ? B : B < MATVEC_MAX_N ? B : MATVEC_MAX_N;
        CREATE_CUDA(act_alloc(&b->mq, AB, wmax, mmq_used));
        CREATE_CUDA(act_alloc(&b->sq, AB < MATVEC_MAX_N ? AB : MATVEC_MAX_N, wmax, false));
        CREATE_CUDA(dev_malloc((void **)&b->lg, B * V * 4));
        CREATE_CUDA(dev_malloc((void **)&b->d_meta, B * 4 * sizeof(int32_t)));
        CREATE_CUDA(cudaMallocHost((void **)&b->h_meta, B * 4 * sizeof(int32_t)));
    }
    {
        /* (cos, sin) of every position's rope angles. The reference mode takes
         * the CPU backend's (libm cos/sin); otherwise the device's, the values
         * rope_store_kernel computed per call before: the table lets the
         * q/k/v product rotate in its epilogue (struct mv_rope). */
        int half = (int)hp->rope_dim / 2;
        size_t nt = (size_t)cfg->max_ctx * half;
        float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->rope_dim);
        CREATE_CUDA(dev_malloc((void **)&b->rope_tab, (nt ? nt : 1) * sizeof(float2)));
        if (b->ref) {
            float2 *tab = (float2 *)malloc((nt ? nt : 1) * sizeof(float2));
            if (!tab) {
                rc = st_errf(eb, ST_ENOMEM, "cuda: out of memory");
                goto fail;
            }
            for (int p = 0; p < cfg->max_ctx; p++) {
                float theta = (float)p;
                for (int i = 0; i < half; i++) {
                    tab[(size_t)p * half + i] = make_float2(cosf(theta), sinf(theta));
                    theta *= theta_scale;
                }
            }
            cudaError_t e =
                cudaMemcpy(b->rope_tab, tab, nt * sizeof(float2), cudaMemcpyHostToDevice);
            free(tab);
            CREATE_CUDA(e);
        } else if (nt) {
            rope_table_kernel<<<(unsigned)((nt + 255) / 256), 256, 0, b->st>>>(
                b->rope_tab, cfg->max_ctx, half, theta_scale);
            CREATE_CUDA(cudaGetLastError());
        }
    }
    CREATE_CUDA(cudaMallocHost((void **)&b->h_lg, (size_t)LG_STAGE_ROWS * hp->n_vocab * 4));
    if (topk_supported((int)hp->n_vocab)) {
        size_t B = (size_t)cfg->max_batch;
        CREATE_CUDA(dev_malloc((void **)&b->d_top, B * sizeof(struct logits_top)));
        CREATE_CUDA(cudaMallocHost((void **)&b->h_top, B * sizeof(struct logits_top)));
        CREATE_CUDA(
            dev_malloc(&b->top_scratch, topk_scratch_bytes(cfg->max_batch, (int)hp->n_vocab)));
    }
    CREATE_CUDA(dev_malloc(&b->cublas_ws, CUBLAS_WS_BYTES));
    if (cublasCreate(&b->cb) != CUBLAS_STATUS_SUCCESS || cublasSetStream(b->cb, b->st) != 0 ||
        cublasSetWorkspace(b->cb, b->cublas_ws, CUBLAS_WS_BYTES) != 0) {
        rc = st_errf(eb, ST_EDEVICE, "cuda: cublasCreate failed");
        goto fail;
    }
    CREATE_CUDA(cudaStreamSynchronize(b->st));
    *out = b;
    return 0;
fail:
    cuda_destroy(&b);
    return rc;
}

static void cuda_destroy(struct backend **pb)
{
    struct backend *b = *pb;
    if (!b) return;
    if (b->cb) cublasDestroy(b->cb);
    for (int i = 0; i < CUDA_MAX_GRAPHS; i++)
        if (b->graphs[i].exec) cudaGraphExecDestroy(b->graphs[i].exec);
    if (b->cublas_ws) cudaFree(b->cublas_ws);
    if (b->h_lg) cudaFreeHost(b->h_lg);
    if (b->h_top) cudaFreeHost(b->h_top);
    kvpool_destroy(&b->kpool);
    kvpool_destroy(&b->vpool);
    void *dev[] = {b->x,        b->xn,   b->xo,   b->q,    b->att,     b->k,       b->v,
                   b->g,        b->qkv,  b->tmp,  b->xr,   b->xr2,     b->a16,     b->lg,
                   b->d_meta,   b->mq.q, b->mq.d, b->mq.s, b->mq.bsum, b->mq.part, b->wdeq,
                   b->rope_tab, b->sq.q, b->sq.d, b->sq.s, b->sq.bsum, b->d_top,   b->top_scratch};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
        if (dev[i]) cudaFree(dev[i]);
    if (b->h_meta) cudaFreeHost(b->h_meta);
    if (b->own_base && b->base) cudaFree(b->base);
    for (int i = 0; i < DEQ_SLOTS; i++) {
        if (b->ev_deq[i]) cudaEventDestroy(b->ev_deq[i]);
        if (b->ev_use[i]) cudaEventDestroy(b->ev_use[i]);
    }
    if (b->ev_fork) cudaEventDestroy(b->ev_fork);
    if (b->ev_join) cudaEventDestroy(b->ev_join);
    if (b->dst) cudaStreamDestroy(b->dst);
    if (b->st) cudaStreamDestroy(b->st);
    free(b->L);
    free(b->seq_len);
    free(b->seq_cnt);
    free(b);
    *pb = NULL;
}

/* ---- forward ---- */

/* Which rounding a weight type asks of its input (see k_act_round). */
static int act_class(int t)
{
    switch (t) {
    case QT_F32:
        return 0;
    case QT_F16:
        return 1;
    case QT_BF16:
        return 2;
    default:
        return mmq_class(t); /* 3: Q8_0 blocks, 4: Q8_K */
    }
}

/* The next mm() reads a new input. */
static void memo_reset(struct backend *b)
{
    b->memo_src = NULL;
    b->mq_src = NULL;
    b->a16_src = NULL;
}

/* The input of W quantized into mq (8-bit blocks), memoized. */
static int quantize_input(struct backend *b, const struct cmat *W, const float *x, int n)
{
    int cls = mmq_class(W->type);
    if (x != b->mq_src || cls != b->mq.cls || n != b->mq.n || W->K != b->mq.K) {
        ST_TRY(k_mmq_quantize(b->st, cls, x, n, W->K, &b->mq));
        b->mq_src = x;
    }
    return 0;
}

/* The input of W in a16 as half (F16 and quantized W; for quantized W first
 * rounded to 8-bit blocks as the reference does) or bfloat16, memoized. */
static int half_input(struct backend *b, const struct cmat *W, const float *x, int n)
{
    int cls = act_class(W->type);
    if (x != b->a16_src || cls != b->a16_cls || n != b->a16_n) {
        if (W->type == QT_BF16)
            ST_TRY(k_to_bf16(b->st, x, b->a16, (size_t)n * W->K));
        else /* quantized W: the reference's 8-bit rounding, written as half */
            ST_TRY(k_act_f16(b->st, W->type, x, (__half *)b->a16, n, W->K));
        b->a16_src = x;
        b->a16_cls = cls;
        b->a16_n = n;
    }
    return 0;
}

/* The dequantization ring (DEQ_SLOTS): the next slot, once the product that
 * last read it is done; the first use in a pass forks dst from st (deq_join
 * ends the pass's use). */
static int deq_slot(struct backend *b, int *s)
{
    if (!b->deq_forked) {
        CUDA_TRY(cudaEventRecord(b->ev_fork, b->st));
        CUDA_TRY(cudaStreamWaitEvent(b->dst, b->ev_fork, 0));
        b->deq_forked = true;
        b->deq_next = 0;
        memset(b->deq_used, 0, sizeof(b->deq_used));
    }
    *s = (int)(b->deq_next++ % DEQ_SLOTS);
    if (b->deq_used[*s]) CUDA_TRY(cudaStreamWaitEvent(b->dst, b->ev_use[*s], 0));
    return 0;
}

static __half *slot_ptr(const struct backend *b, int s)
{
    return b->wdeq + (size_t)s * b->wdeq_elems;
}

/* Rows [r0, r0 + nr) of W decoded to half at out, on dst. */
static int deq_decode(struct backend *b, const struct cmat *W, int r0, int nr, __half *out)
{
    size_t rb = qt_row_bytes(W->type, W->K);
    return k_dequant_f16(b->dst, (const uint8_t *)W->w + (size_t)r0 * rb, W->type, nr, W->K, out);
}

/* st waits for what dst wrote up to now (into slot s). */
static int deq_ready(struct backend *b, int s)
{
    CUDA_TRY(cudaEventRecord(b->ev_deq[s], b->dst));
    CUDA_TRY(cudaStreamWaitEvent(b->st, b->ev_deq[s], 0));
    return 0;
}

/* Slot s is free once st's work up to now is done. */
static int deq_done(struct backend *b, int s)
{
    CUDA_TRY(cudaEventRecord(b->ev_use[s], b->st));
    b->deq_used[s] = true;
    return 0;
}

/* y[n][N] = x W^T for a cuBLAS product of half a16 and slot A (nr rows),
 * beta * y added; ldc: y's row stride. */
static int gemm_half(struct backend *b, const __half *A, int nr, int K, int n, float beta, float *y,
                     int ldc)
{
    const float one = 1.f;
    CUBLAS_TRY(cublasGemmEx(b->cb, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, K, &one, A, CUDA_R_16F, K,
                            b->a16, CUDA_R_16F, K, &beta, y, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* A quantized W times a large batch: the input rounded as the reference
 * rounds it, then to half; W decoded to half in row chunks (deq_rows) on dst
 * into the ring's slots; cuBLAS with float accumulation on st. Faster than
 * mmq for large batches, but each weight and input is rounded to half
 * (2^-11 relative) on the way. */
static int mm_dequant(struct backend *b, const struct cmat *W, const float *x, float *y, int n,
                      float beta)
{
    ST_TRY(half_input(b, W, x, n));
    int rows = deq_rows(b, W), s;
    for (int r0 = 0; r0 < W->N; r0 += rows) {
        int nr = W->N - r0 < rows ? W->N - r0 : rows;
        ST_TRY(deq_slot(b, &s));
        ST_TRY(deq_decode(b, W, r0, nr, slot_ptr(b, s)));
        ST_TRY(deq_ready(b, s));
        ST_TRY(gemm_half(b, slot_ptr(b, s), nr, W->K, n, beta, y + r0, W->N));
        ST_TRY(deq_done(b, s));
    }
    return 0;
}

/* Whether mm_stack / mm_pair take these matrices for n tokens: quantized,
 * one input rounding, the same K, and (stack) all rows in one slot. */
static bool dequant_together(const struct backend *b, const struct cmat *const *W, int nw, int n,
                             bool stack)
{
    if (b->ref || n < b->gemm_min_n || !b->wdeq) return false;
    size_t rows = 0;
    for (int i = 0; i < nw; i++) {
        if (!mmq_supported(W[i]->type) || act_class(W[i]->type) != act_class(W[0]->type) ||
            W[i]->K != W[0]->K)
            return false;
        rows += (size_t)W[i]->N;
    }
    return !stack || rows * W[0]->K <= b->wdeq_elems;
}

/* y[n][sum N] = x [W0; W1; ..]^T: the matrices decoded one after the other
 * into one slot, one cuBLAS product (q, k and v; see dequant_together). */
static int mm_stack(struct backend *b, const struct cmat *const *W, int nw, const float *x,
                    float *y, int n)
{
    ST_TRY(half_input(b, W[0], x, n));
    int s, rows = 0;
    ST_TRY(deq_slot(b, &s));
    for (int i = 0; i < nw; i++) {
        ST_TRY(deq_decode(b, W[i], 0, W[i]->N, slot_ptr(b, s) + (size_t)rows * W[0]->K));
        rows += W[i]->N;
    }
    ST_TRY(deq_ready(b, s));
    ST_TRY(gemm_half(b, slot_ptr(b, s), rows, W[0]->K, n, 0.f, y, rows));
    return deq_done(b, s);
}

/* ya = x Wa^T and yb = x Wb^T (same shape; yb = ya + ystride) as one
 * strided-batched cuBLAS product per row chunk: Wa's chunk in an even slot,
 * Wb's in the next (gate and up; see dequant_together). */
static int mm_pair(struct backend *b, const struct cmat *Wa, const struct cmat *Wb, const float *x,
                   float *ya, long long ystride, int n)
{
    const float one = 1.f, zero = 0.f;
    ST_TRY(half_input(b, Wa, x, n));
    int rows = deq_rows(b, Wa), K = Wa->K, sa, sb;
    for (int r0 = 0; r0 < Wa->N; r0 += rows) {
        int nr = Wa->N - r0 < rows ? Wa->N - r0 : rows;
        if (b->deq_forked && b->deq_next % 2) b->deq_next++; /* the pair in slots 2i, 2i + 1 */
        ST_TRY(deq_slot(b, &sa));
        ST_TRY(deq_slot(b, &sb));
        ST_TRY(deq_decode(b, Wa, r0, nr, slot_ptr(b, sa)));
        ST_TRY(deq_decode(b, Wb, r0, nr, slot_ptr(b, sb)));
        ST_TRY(deq_ready(b, sb));
        CUBLAS_TRY(cublasGemmStridedBatchedEx(
            b->cb, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, K, &one, slot_ptr(b, sa), CUDA_R_16F, K,
            (long long)b->wdeq_elems, b->a16, CUDA_R_16F, K, 0, &zero, ya + r0, CUDA_R_32F, Wa->N,
            ystride, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        ST_TRY(deq_done(b, sa));
        ST_TRY(deq_done(b, sb));
    }
    return 0;
}

/* The end of a pass's products: st waits for everything dst was given. */
static int deq_join(struct backend *b)
{
    if (!b->deq_forked) return 0;
    b->deq_forked = false;
    CUDA_TRY(cudaEventRecord(b->ev_join, b->dst));
    CUDA_TRY(cudaStreamWaitEvent(b->st, b->ev_join, 0));
    return 0;
}

/* The arguments of one product y = W x for a batch of at most MATVEC_MAX_N
 * tokens (one segment; x: the input as the float kernels read it). */
static struct mv_args mv_one(const struct cmat *W, int n, const float *x, float *y)
{
    struct mv_args a;
    memset(&a, 0, sizeof(a));
    a.nseg = 1;
    a.K = W->K;
    a.n = n;
    a.x = x;
    a.seg[0].w = W->w;
    a.seg[0].type = W->type;
    a.seg[0].N = W->N;
    a.seg[0].y = y;
    return a;
}

/* y[n][W.N] = x[n][W.K] W^T with the reference's activation rounding. Serving:
 * matrix-vector kernels up to MATVEC_MAX_N tokens; larger batches decode a
 * quantized W to half for cuBLAS (below gemm_min_n, when
 * STAGED_CUDA_GEMM_MIN_N raises it, mmq), float W straight to cuBLAS. Reference mode: exact.cuh's
 * orders, else mmq. */
static int mm(struct backend *b, const struct cmat *W, const float *x, float *y, int n)
{
    if (b->ref) { /* the reference's order where we have it, else its block arithmetic */
        if (mm_exact_supported(W->type)) {
            if (W->type == QT_F16 || W->type == QT_BF16)
                ST_TRY(half_input(b, W, x, n));
            else if (W->type != QT_F32)
                ST_TRY(quantize_input(b, W, x, n));
            return k_mm_exact(b->st, W->w, W->type, W->N, W->K, x, b->a16, &b->mq, n, y);
        }
        ST_TRY(quantize_input(b, W, x, n));
        return k_mmq(b->st, W->w, W->type, W->N, W->K, &b->mq, y);
    }
    if (n <= MATVEC_MAX_N) {
        struct mv_args a = mv_one(W, n, x, y);
        if (mmq_supported(W->type)) {
            ST_TRY(quantize_input(b, W, x, n));
            return k_mvq(b->st, &a, &b->mq);
        }
        int cls = act_class(W->type);
        if (cls != 0 && x == b->memo_src && cls == b->memo_cls && n == b->memo_n) {
            a.x = b->xr;
        } else if (cls != 0) {
            ST_TRY(k_act_round(b->st, W->type, x, b->xr, n, W->K, &a.x));
            b->memo_src = x;
            b->memo_cls = cls;
            b->memo_n = n;
        }
        return k_matvec_fast(b->st, &a);
    }
    if (mmq_supported(W->type) && n >= b->gemm_min_n) return mm_dequant(b, W, x, y, n, 0.f);
    if (mmq_supported(W->type)) {
        ST_TRY(quantize_input(b, W, x, n));
        return k_mmq(b->st, W->w, W->type, W->N, W->K, &b->mq, y);
    }
    const float one = 1.f, zero = 0.f;
    if (W->type == QT_F32) {
        CUBLAS_TRY(cublasSgemm(b->cb, CUBLAS_OP_T, CUBLAS_OP_N, W->N, n, W->K, &one,
                               (const float *)W->w, W->K, x, W->K, &zero, y, W->N));
        return 0;
    }
    /* F16 / BF16: the input rounded to the weights' type, products exact in
     * float, float accumulation (as the reference) */
    cudaDataType_t ty = W->type == QT_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    ST_TRY(half_input(b, W, x, n));
    CUBLAS_TRY(cublasGemmEx(b->cb, CUBLAS_OP_T, CUBLAS_OP_N, W->N, n, W->K, &one, W->w, ty, W->K,
                            b->a16, ty, W->K, &zero, y, CUDA_R_32F, W->N, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* y = rmsnorm(x) * w for n rows, the input of W next. When cuBLAS will
 * multiply a quantized W, the same kernel leaves y's half input in a16 (the
 * memo half_input would make). Forgets the memo first. */
static int norm_rows(struct backend *b, const float *x, const float *w, float *y,
                     const struct cmat *W, int n)
{
    const struct model_hparams *hp = &b->hp;
    memo_reset(b);
    if (b->ref || n < b->gemm_min_n || !mmq_supported(W->type))
        return k_rmsnorm(b->st, x, w, y, n, (int)hp->dim, hp->rms_eps);
    ST_TRY(k_rmsnorm_f16(b->st, x, w, y, (__half *)b->a16, W->type, n, (int)hp->dim, hp->rms_eps));
    b->a16_src = y;
    b->a16_cls = act_class(W->type);
    b->a16_n = n;
    return 0;
}

/* x += W y for a batch of any size: cuBLAS adds the product to x itself
 * (beta = 1) where it multiplies a quantized W; else the product goes
 * through tmp and an add. */
static int mm_residual(struct backend *b, const struct cmat *W, const float *y, int n)
{
    if (!b->ref && n >= b->gemm_min_n && mmq_supported(W->type))
        return mm_dequant(b, W, y, b->x, n, 1.f);
    ST_TRY(mm(b, W, y, b->tmp, n));
    return k_add(b->st, b->x, b->tmp, (size_t)n * W->N);
}

/* The input of products with weights of activation class cls for n <=
 * MATVEC_MAX_N rows x (dim floats each): rmsnorm(x) * w quantized into q
 * (quantized weights), else rounded into xr. */
static int norm_input(struct backend *b, const float *x, const float *w, int n, int cls,
                      float *xr, struct mmq_act *q)
{
    const struct model_hparams *hp = &b->hp;
    if (cls >= 3) {
        if (q == &b->mq) b->mq_src = NULL; /* no longer quantize_input's memo */
        return k_norm_quant(b->st, x, w, hp->rms_eps, n, (int)hp->dim, cls, q);
    }
    return k_norm_round(b->st, x, w, hp->rms_eps, n, (int)hp->dim, cls, xr);
}

/* Products for a batch of at most MATVEC_MAX_N tokens: integer products on
 * the quantized input q, or the float kernels on a->x. */
static int mv_small(struct backend *b, const struct mv_args *a, const struct mmq_act *q)
{
    if (mmq_supported(a->seg[0].type)) return k_mvq(b->st, a, q);
    return k_matvec_fast(b->st, a);
}

/* x += W y (W = o or down) for a batch of at most MATVEC_MAX_N tokens; y
 * already quantized into mq when `quantized`. */
static int mv_residual(struct backend *b, const struct cmat *W, const float *y, int n,
                       bool quantized)
{
    struct mv_args a = mv_one(W, n, y, b->x);
    a.add = 1;
    if (mmq_supported(W->type)) {
        if (!quantized) {
            ST_TRY(k_mmq_quantize(b->st, mmq_class(W->type), y, n, W->K, &b->mq));
            b->mq_src = NULL;
        }
    } else {
        ST_TRY(k_act_round(b->st, W->type, y, b->xr, n, W->K, &a.x));
    }
    return mv_small(b, &a, &b->mq);
}

/* One layer for a batch of at most MATVEC_MAX_N tokens, 8 kernels for a
 * quantized model: norm with the input's quantization, q/k/v in one launch
 * (with their biases; two types in one launch for the pairs k_mvq knows)
 * whose epilogue does rope and the cache store, attention (quantizing its
 * output for o: k_attention_quantizes; else a quantization kernel), o
 * (residual add in the product), norm, gate/up with SwiGLU, quantization of
 * its output, down. */
static int layer_small(struct backend *b, const struct clayer *L, int l, int n,
                       const int32_t *d_pos, const int32_t *d_seq)
{
    const struct model_hparams *hp = &b->hp;
    cudaStream_t st = b->st;
    int D = (int)hp->dim, hd = (int)hp->head_dim;
    const struct cmat *qkv[3] = {&L->q, &L->k, &L->v};
    float *ys[3] = {b->q, b->k, b->v};
    const float *bs[3] = {L->bq, L->bk, L->bv};
    bool done[3] = {false, false, false};
    __half *kc = b->kc + (size_t)l * b->kv_dim, *vc = b->vc + (size_t)l * b->kv_dim;
    /* the products rotate q and k and store k and v in the cache themselves
     * (struct mv_rope) unless q/k norms come between or a product is float */
    struct mv_rope rope = {};
    if (!L->qn && b->rope_tab && hp->rope_dim % 2 == 0 && mmq_supported(L->q.type) &&
        mmq_supported(L->k.type) && mmq_supported(L->v.type)) {
        rope.tab = b->rope_tab;
        rope.kc = kc;
        rope.vc = vc;
        rope.kl = b->kl;
        rope.pos = d_pos;
        rope.seq = d_seq;
        rope.hd = hd;
        rope.rope_dim = (int)hp->rope_dim;
        rope.kind = (int)hp->rope_kind;
    }
    static const int roles[3] = {MV_ROPE_Q, MV_ROPE_K, MV_CACHE_V};
    for (int i = 0; i < 3; i++) {
        if (done[i]) continue;
        int c = act_class(qkv[i]->type);
        ST_TRY(norm_input(b, b->x, L->attn_norm, n, c, b->xr, &b->mq));
        struct mv_args a;
        memset(&a, 0, sizeof(a));
        a.K = D;
        a.n = n;
        a.x = b->xr;
        a.rope = rope;
        for (int j = i; j < 3; j++) {
            if (done[j] || act_class(qkv[j]->type) != c) continue;
            a.seg[a.nseg].w = qkv[j]->w;
            a.seg[a.nseg].type = qkv[j]->type;
            a.seg[a.nseg].N = qkv[j]->N;
            a.seg[a.nseg].y = ys[j];
            a.seg[a.nseg].bias = bs[j];
            a.seg[a.nseg].role = rope.tab ? roles[j] : MV_PLAIN;
            a.nseg++;
            done[j] = true;
        }
        ST_TRY(mv_small(b, &a, &b->mq));
    }
    if (L->qn) {
        ST_TRY(k_rmsnorm(st, b->q, L->qn, b->q, n * (int)hp->n_heads, hd, hp->rms_eps));
        ST_TRY(k_rmsnorm(st, b->k, L->kn, b->k, n * (int)hp->n_kv_heads, hd, hp->rms_eps));
    }
    if (!rope.tab)
        ST_TRY(k_rope_store(st, qkv_in{b->q, b->k, b->v, b->q_dim, b->kv_dim}, b->q, kc, vc,
                            qkv_bias{}, n, (int)hp->n_heads, (int)hp->n_kv_heads, hd,
                            (int)hp->rope_dim, (int)hp->rope_kind, hp->rope_base, b->rope_tab,
                            b->kl, d_pos, d_seq));
    /* the attention kernel quantizes its output for o when it can */
    const int oc = act_class(L->o.type);
    bool att_q = oc >= 3 && k_attention_quantizes(oc, n, hd, (int)hp->n_heads);
    if (att_q) b->mq_src = NULL;
    ST_TRY(k_attention(st, b->q, kc, vc, b->att, n, (int)hp->n_heads, (int)hp->n_kv_heads, hd,
                       b->kl, 1.f / sqrtf((float)hd), d_pos, d_seq, false, oc,
                       att_q ? &b->mq : NULL));
    ST_TRY(mv_residual(b, &L->o, b->att, n, att_q));
    /* g = silu(Wg xn) * (Wu xn) */
    int cg = act_class(L->gate.type), cu = act_class(L->up.type);
    ST_TRY(norm_input(b, b->x, L->ffn_norm, n, cg, b->xr, &b->mq));
    if (cu != cg) ST_TRY(norm_input(b, b->x, L->ffn_norm, n, cu, b->xr2, &b->sq));
    const struct mmq_act *qu = cu != cg ? &b->sq : &b->mq;
    if (L->gate.type == L->up.type && cg >= 3) {
        ST_TRY(k_swiglu_q(st, L->gate.w, L->up.w, L->gate.type, L->gate.N, D, &b->mq, qu, b->g));
    } else if (L->gate.type == L->up.type) {
        ST_TRY(k_swiglu_fast(st, L->gate.w, L->up.w, L->gate.type, L->gate.N, D, b->xr, b->xr, n,
                             b->g));
    } else { /* mixed types: the two products, then SwiGLU */
        const struct cmat *W[2] = {&L->gate, &L->up};
        float *out[2] = {b->g, b->u};
        const float *xin[2] = {b->xr, cu != cg ? b->xr2 : b->xr};
        const struct mmq_act *qin[2] = {&b->mq, qu};
        for (int i = 0; i < 2; i++) {
            struct mv_args a = mv_one(W[i], n, xin[i], out[i]);
            ST_TRY(mv_small(b, &a, qin[i]));
        }
        ST_TRY(k_swiglu(st, b->g, b->u, b->g, (size_t)n * L->gate.N, false));
    }
    /* x += Wd g */
    return mv_residual(b, &L->down, b->g, n, false);
}

/* One forward pass as the stream runs it (a graph's shape): n tokens, the
 * rows d_out[0..n_out) to logits, and with top their summaries computed and
 * copied to h_top. The device pointers are the batch's metadata. */
struct pass {
    int n, n_out;
    bool top;
    const int32_t *tok, *pos, *seq, *out;
};

static int run_layers(struct backend *b, const struct pass *ps)
{
    const int n = ps->n, n_out = ps->n_out;
    const int32_t *d_tok = ps->tok, *d_pos = ps->pos, *d_seq = ps->seq, *d_out = ps->out;
    const struct model_hparams *hp = &b->hp;
    cudaStream_t st = b->st;
    int D = (int)hp->dim, hd = (int)hp->head_dim, F = (int)hp->ffn_dim;
    memo_reset(b);
    b->deq_forked = false; /* a failed pass may have left it set */
    ST_TRY(k_embed(st, b->embd.w, b->embd.type, D, d_tok, n, b->x));
    for (int l = 0; l < (int)hp->n_layers; l++) {
        const struct clayer *L = &b->L[l];
        if (n <= MATVEC_MAX_N && !b->unfused && !b->ref) {
            ST_TRY(layer_small(b, L, l, n, d_pos, d_seq));
            continue;
        }
        ST_TRY(norm_rows(b, b->x, L->attn_norm, b->xn, &L->q, n));
        const struct cmat *qkv[3] = {&L->q, &L->k, &L->v};
        struct qkv_in in = {b->q, b->k, b->v, b->q_dim, b->kv_dim};
        if (!L->qn && dequant_together(b, qkv, 3, n, true)) { /* one product, [n][q | k | v] */
            int ld = b->q_dim + 2 * b->kv_dim;
            ST_TRY(mm_stack(b, qkv, 3, b->xn, b->qkv, n));
            in = qkv_in{b->qkv, b->qkv + b->q_dim, b->qkv + b->q_dim + b->kv_dim, ld, ld};
        } else {
            ST_TRY(mm(b, &L->q, b->xn, b->q, n));
            ST_TRY(mm(b, &L->k, b->xn, b->k, n));
            ST_TRY(mm(b, &L->v, b->xn, b->v, n));
        }
        /* the biases are added by rope_store, unless q/k norms come between */
        struct qkv_bias bias = {L->bq, L->bk, L->bv};
        if (L->qn) {
            if (L->bq) ST_TRY(k_add_bias(st, b->q, L->bq, n, b->q_dim));
            if (L->bk) ST_TRY(k_add_bias(st, b->k, L->bk, n, b->kv_dim));
            if (L->bv) ST_TRY(k_add_bias(st, b->v, L->bv, n, b->kv_dim));
            bias = qkv_bias{};
            ST_TRY(k_rmsnorm(st, b->q, L->qn, b->q, n * (int)hp->n_heads, hd, hp->rms_eps));
            ST_TRY(k_rmsnorm(st, b->k, L->kn, b->k, n * (int)hp->n_kv_heads, hd, hp->rms_eps));
        }
        __half *kc = b->kc + (size_t)l * b->kv_dim, *vc = b->vc + (size_t)l * b->kv_dim;
        ST_TRY(k_rope_store(st, in, b->q, kc, vc, bias, n, (int)hp->n_heads, (int)hp->n_kv_heads,
                            hd, (int)hp->rope_dim, (int)hp->rope_kind, hp->rope_base, b->rope_tab,
                            b->kl, d_pos, d_seq));
        ST_TRY(k_attention(st, b->q, kc, vc, b->att, n, (int)hp->n_heads, (int)hp->n_kv_heads, hd,
                           b->kl, 1.f / sqrtf((float)hd), d_pos, d_seq, b->ref, 0, NULL));
        memo_reset(b);
        ST_TRY(mm_residual(b, &L->o, b->att, n));
        ST_TRY(norm_rows(b, b->x, L->ffn_norm, b->xn, &L->gate, n));
        const struct cmat *gu[2] = {&L->gate, &L->up};
        if (dequant_together(b, gu, 2, n, false)) {
            ST_TRY(mm_pair(b, &L->gate, &L->up, b->xn, b->g, b->u - b->g, n));
        } else {
            ST_TRY(mm(b, &L->gate, b->xn, b->g, n));
            ST_TRY(mm(b, &L->up, b->xn, b->u, n));
        }
        memo_reset(b);
        if (!b->ref && n >= b->gemm_min_n && mmq_supported(L->down.type)) {
            /* SwiGLU leaves down's half input in a16 (the memo half_input would make) */
            ST_TRY(k_swiglu_f16(st, b->g, b->u, b->g, (__half *)b->a16, L->down.type, n, F));
            b->a16_src = b->g;
            b->a16_cls = act_class(L->down.type);
            b->a16_n = n;
        } else {
            ST_TRY(k_swiglu(st, b->g, b->u, b->g, (size_t)n * F, b->ref));
        }
        ST_TRY(mm_residual(b, &L->down, b->g, n));
    }
    if (n_out > 0 && n <= MATVEC_MAX_N && !b->unfused && !b->ref && mmq_supported(b->out.type)) {
        /* decode: the output rows' norm quantizes them for the product in one
         * kernel (x itself when every row is one, else gathered first), as
         * the layers' norms do: two kernels less (0.5B b=1 +0.5%) */
        const float *xs = b->x;
        if (n_out < n) {
            ST_TRY(k_gather_rows(st, b->x, d_out, b->xo, n_out, D));
            xs = b->xo;
        }
        ST_TRY(norm_input(b, xs, b->out_norm, n_out, mmq_class(b->out.type), NULL, &b->mq));
        struct mv_args a = mv_one(&b->out, n_out, xs, b->lg);
        ST_TRY(mv_small(b, &a, &b->mq));
    } else if (n_out > 0) {
        ST_TRY(k_gather_rows(st, b->x, d_out, b->xo, n_out, D));
        ST_TRY(norm_rows(b, b->xo, b->out_norm, b->xo, &b->out, n_out));
        ST_TRY(mm(b, &b->out, b->xo, b->lg, n_out));
    }
    ST_TRY(deq_join(b));
    if (ps->top) {
        ST_TRY(k_logits_top(st, b->lg, n_out, (int)hp->n_vocab, b->top_scratch, b->d_top));
        CUDA_TRY(cudaMemcpyAsync(b->h_top, b->d_top, sizeof(struct logits_top) * n_out,
                                 cudaMemcpyDeviceToHost, st));
    }
    return 0;
}

/* Run the forward pass through a cached CUDA graph of its shape (captured on
 * first use), or directly for large batches. */
static int run_forward(struct backend *b, const struct pass *ps)
{
    const int n = ps->n, n_out = ps->n_out;
    if (!b->use_graphs || n > GRAPH_MAX_TOKENS) return run_layers(b, ps);
    struct fgraph *g = NULL, *victim = &b->graphs[0];
    for (int i = 0; i < CUDA_MAX_GRAPHS; i++) {
        struct fgraph *c = &b->graphs[i];
        if (c->exec && c->n == n && c->n_out == n_out && c->top == ps->top) g = c;
        if (!c->exec || c->used < victim->used) victim = c;
    }
    if (!g) {
        if (victim->exec) {
            CUDA_TRY(cudaGraphExecDestroy(victim->exec));
            victim->exec = NULL;
        }
        cudaGraph_t graph;
        CUDA_TRY(cudaStreamBeginCapture(b->st, cudaStreamCaptureModeThreadLocal));
        int rc = run_layers(b, ps);
        cudaError_t e = cudaStreamEndCapture(b->st, &graph);
        if (rc < 0) return rc;
        CUDA_TRY(e);
        e = cudaGraphInstantiate(&victim->exec, graph, 0);
        cudaGraphDestroy(graph);
        CUDA_TRY(e);
        victim->n = n;
        victim->n_out = n_out;
        victim->top = ps->top;
        g = victim;
    }
    g->used = ++b->graph_clock;
    CUDA_TRY(cudaGraphLaunch(g->exec, b->st));
    return 0;
}

/* Logits rows [r0, r0 + nr) to logits + r0 rows: into pinned memory
 * straight (queued; the caller synchronizes), else through the pinned
 * staging buffer. */
static int copy_rows(struct backend *b, float *logits, bool pinned, int r0, int nr)
{
    size_t row = (size_t)b->hp.n_vocab;
    if (pinned) {
        CUDA_TRY(cudaMemcpyAsync(logits + row * r0, b->lg + row * r0, sizeof(float) * row * nr,
                                 cudaMemcpyDeviceToHost, b->st));
        return 0;
    }
    for (int r = r0; r < r0 + nr; r += LG_STAGE_ROWS) {
        int n = r0 + nr - r < LG_STAGE_ROWS ? r0 + nr - r : LG_STAGE_ROWS;
        CUDA_TRY(cudaMemcpyAsync(b->h_lg, b->lg + row * r, sizeof(float) * row * n,
                                 cudaMemcpyDeviceToHost, b->st));
        CUDA_TRY(cudaStreamSynchronize(b->st));
        memcpy(logits + row * r, b->h_lg, sizeof(float) * row * n);
    }
    return 0;
}

/* Whether logits is page-locked host memory (copies into it are queued). */
static bool host_pinned(const float *logits)
{
    cudaPointerAttributes pa;
    if (!logits) return false;
    if (cudaPointerGetAttributes(&pa, logits) == cudaSuccess && pa.type == cudaMemoryTypeHost)
        return true;
    (void)cudaGetLastError(); /* a pageable pointer is not an error */
    return false;
}

/* The rows the caller asked as LOGITS_ROW (every row when the summaries are
 * made on the host), copied in runs: queued into pinned memory, or staged. */
static int copy_wanted(struct backend *b, const struct batch *bt, const int32_t *orow, int n_out,
                       float *logits, bool pinned)
{
    bool every_row = bt->top && !b->d_top;
    for (int r = 0; r < n_out;) { /* runs of rows copied / not copied */
        bool want = every_row || bt->logits[orow[r]] == LOGITS_ROW;
        int e = r + 1;
        while (e < n_out && (every_row || bt->logits[orow[e]] == LOGITS_ROW) == want)
            e++;
        if (want) ST_TRY(copy_rows(b, logits, pinned, r, e - r));
        r = e;
    }
    return 0;
}

static int cuda_forward(struct backend *b, const struct batch *bt, float *logits)
{
    if (b->dead) return ST_EDEVICE;
    int n = bt->n_tokens;
    if (n < 1 || n > b->cfg.max_batch) {
        log_warn("cuda: batch of %d tokens (max %d)", n, b->cfg.max_batch);
        return ST_EINVAL;
    }
    if (batch_outputs_ok(bt, logits)) {
        log_warn("cuda: batch asks for logits in a form it gives no buffer for");
        return ST_EINVAL;
    }
    if (!b->d_top && bt->top && !logits) {
        log_warn("cuda: summaries of a %u-token vocabulary need the logits buffer", b->hp.n_vocab);
        return ST_EINVAL;
    }
    memset(b->seq_cnt, 0, sizeof(int) * (size_t)b->cfg.max_seqs);
    int n_out = 0;
    int32_t *tok = b->h_meta, *pos = tok + n, *seq = pos + n, *orow = seq + n;
    for (int i = 0; i < n; i++) {
        int s = bt->seq[i];
        if (bt->token[i] < 0 || (uint32_t)bt->token[i] >= b->hp.n_vocab || s < 0 ||
            s >= b->cfg.max_seqs || bt->pos[i] != b->seq_len[s] + b->seq_cnt[s] ||
            bt->pos[i] >= b->cfg.max_ctx) {
            log_warn("cuda: batch token %d (id %d, seq %d, pos %d) breaks the batch rules", i,
                     bt->token[i], s, bt->pos[i]);
            return ST_EINVAL;
        }
        b->seq_cnt[s]++;
        tok[i] = bt->token[i];
        pos[i] = bt->pos[i];
        seq[i] = s;
        if (bt->logits && bt->logits[i]) orow[n_out++] = i;
    }
    int32_t *d_tok = b->d_meta, *d_pos = d_tok + n, *d_seq = d_pos + n, *d_out = d_seq + n;
    int rc = 0;
    /* back the cache positions this batch writes (memory mapped on demand) */
    for (int s = 0; s < b->cfg.max_seqs && rc == 0; s++) {
        if (!b->seq_cnt[s]) continue;
        size_t bytes = (size_t)(b->seq_len[s] + b->seq_cnt[s]) * b->kl.pstride * sizeof(__half);
        rc = kvpool_ensure(b->kpool, s, bytes);
        if (rc == 0) rc = kvpool_ensure(b->vpool, s, bytes);
    }
    if (rc == ST_ENOMEM) {
        log_error("cuda: out of device memory for the KV cache");
        return rc;
    }
    cudaError_t e = cudaMemcpyAsync(b->d_meta, b->h_meta, sizeof(int32_t) * (size_t)(3 * n + n_out),
                                    cudaMemcpyHostToDevice, b->st);
    if (e != cudaSuccess) {
        log_error("cuda: metadata copy: %s", cudaGetErrorString(e));
        rc = ST_EDEVICE;
    }
    if (rc == 0 && (b->fault || g_inject_fault)) rc = k_fault(b->st);
    /* the step's graph makes the summaries and copies them to h_top; rows
     * into pinned memory are queued behind it, so that one wait ends the step */
    struct pass ps = {n, n_out, n_out > 0 && bt->top && b->d_top, d_tok, d_pos, d_seq, d_out};
    bool pinned = n_out > 0 && host_pinned(logits);
    if (rc == 0) rc = run_forward(b, &ps);
    if (rc == 0 && pinned) rc = copy_wanted(b, bt, orow, n_out, logits, true);
    if (rc == 0) {
        e = cudaStreamSynchronize(b->st);
        if (e != cudaSuccess) {
            log_error("cuda: forward: cudaStreamSynchronize at %s:%d: %s (%s)", __FILE__, __LINE__,
                      cudaGetErrorString(e), cudaGetErrorName(e));
            rc = ST_EDEVICE;
        }
    }
    b->last_n_out = 0;
    if (rc == 0 && n_out > 0 && logits && !pinned)
        rc = copy_wanted(b, bt, orow, n_out, logits, false);
    if (rc == 0 && ps.top) {
        memcpy(bt->top, b->h_top, sizeof(struct logits_top) * n_out);
    } else if (rc == 0 && bt->top) { /* a vocabulary topk.cuh does not take */
        for (int r = 0; r < n_out; r++)
            logits_summarize(logits + (size_t)r * b->hp.n_vocab, (int)b->hp.n_vocab, &bt->top[r]);
    }
    if (rc < 0) {
        b->dead = true;
        return rc == ST_EUNSUPPORTED ? rc : ST_EDEVICE;
    }
    for (int s = 0; s < b->cfg.max_seqs; s++)
        b->seq_len[s] += b->seq_cnt[s];
    b->last_n_out = n_out;
    return 0;
}

static int cuda_logits_row(struct backend *b, int row, float *out)
{
    if (b->dead) return ST_EDEVICE;
    if (row < 0 || row >= b->last_n_out) return ST_EINVAL;
    size_t V = b->hp.n_vocab;
    cudaError_t e = cudaMemcpy(out, b->lg + V * row, sizeof(float) * V, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        log_error("cuda: logits row copy: %s", cudaGetErrorString(e));
        b->dead = true;
        return ST_EDEVICE;
    }
    return 0;
}

static int cuda_seq_truncate(struct backend *b, int seq, int keep)
{
    if (seq < 0 || seq >= b->cfg.max_seqs || keep < 0) return ST_EINVAL;
    if (keep < b->seq_len[seq]) b->seq_len[seq] = keep;
    /* give back the cache memory past the kept positions */
    size_t bytes = (size_t)b->seq_len[seq] * b->kl.pstride * sizeof(__half);
    int rc = kvpool_trim(b->kpool, seq, bytes);
    if (!rc) rc = kvpool_trim(b->vpool, seq, bytes);
    if (rc) b->dead = true;
    return rc;
}

static int cuda_seq_len(struct backend *b, int seq)
{
    if (seq < 0 || seq >= b->cfg.max_seqs) return ST_EINVAL;
    return b->seq_len[seq];
}

static const struct backend_ops g_cuda_ops = {
    "cuda",
    cuda_create,
    cuda_forward,
    cuda_logits_row,
    cuda_seq_truncate,
    cuda_seq_len,
    cuda_destroy,
    /* up to MATVEC_MAX_N tokens every token takes the fused per-token path;
     * larger batches take cuBLAS, whose rounding depends on the batch */
    MATVEC_MAX_N,
};

extern "C" void cuda_profile_range(bool on)
{
    (void)(on ? cudaProfilerStart() : cudaProfilerStop());
}

extern "C" const struct backend_ops *cuda_backend_ops(void)
{
    return &g_cuda_ops;
}
