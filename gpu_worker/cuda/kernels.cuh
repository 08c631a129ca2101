/*
 * kernels.cuh - the CUDA kernels of the worker's forward pass, behind
 * launchers (C++ linkage, used only inside gpu_worker/cuda/).
 *
 * Activations are float32, row-major [n_tokens][width]. Weight matrices are
 * GGUF tensors read in place: ne[0] = K (row length, contiguous), ne[1] = N
 * rows; y[t][r] = sum_k W[r][k] * x[t][k]. The KV cache is half precision;
 * where a (sequence, position) of one layer lies is a struct kv_layout.
 *
 * Every launcher returns 0 or ST_EDEVICE (launch errors are checked with
 * cudaGetLastError right after the launch and logged with file and line).
 */
#ifndef STAGED_CUDA_KERNELS_CUH
#define STAGED_CUDA_KERNELS_CUH

#include "gpu_worker/cuda/mmq.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* The KV cache of one layer: the n_kv_heads * head_dim values of (seq, pos)
 * start at element seq * sstride + pos * pstride of the layer's pointer. */
struct kv_layout {
    size_t sstride, pstride;
};

/* Token-embedding rows: x[t] = row tok[t] of w (any supported type). */
int k_embed(cudaStream_t st, const void *w, int type, int dim, const int32_t *tok, int n, float *x);
/* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, rows of dim (y may equal x). */
int k_rmsnorm(cudaStream_t st, const float *x, const float *w, float *y, int n, int dim, float eps);
/* Round activations the way the reference engine does before a dot product
 * with weights of type wtype: F16/BF16 rounding, or 8-bit quantization
 * (32-element blocks with a half scale for Q4_0..Q8_0, 256-element blocks
 * with a float scale for K-quants), written back as float in xq.
 * F32 weights: plain copy is skipped, returns xq unchanged = not written;
 * *used is set to xq when written, else to x. */
int k_act_round(cudaStream_t st, int wtype, const float *x, float *xq, int n, int K,
                const float **used);
/* The input of a cuBLAS product with weights of type wtype (F16 or a
 * quantized type): k_act_round's rounding, written as half. */
int k_act_f16(cudaStream_t st, int wtype, const float *x, __half *out, int n, int K);
/* k_rmsnorm into y, and y rounded as the input of quantized weights of type
 * wtype (k_act_f16) into h in the same kernel. */
int k_rmsnorm_f16(cudaStream_t st, const float *x, const float *w, float *y, __half *h, int wtype,
                  int n, int dim, float eps);
/* Largest batch the matrix-vector kernels take (bigger ones: mmq.cuh, cuBLAS). */
#define MATVEC_MAX_N 8
/* Decode N rows of K of a quantized matrix into half precision. */
int k_dequant_f16(cudaStream_t st, const void *w, int type, int N, int K, __half *out);
/* Convert n floats to half / bfloat16. */
int k_to_f16(cudaStream_t st, const float *x, __half *out, size_t n);
int k_to_bf16(cudaStream_t st, const float *x, void *out, size_t n);
/* y[t][i] += b[i]. */
int k_add_bias(cudaStream_t st, float *y, const float *b, int n, int N);
/* x += y, n floats. */
int k_add(cudaStream_t st, float *x, const float *y, size_t n);
/* h = silu(g) * u, n floats; ref: exp correctly rounded, as the reference. */
int k_swiglu(cudaStream_t st, const float *g, const float *u, float *h, size_t n, bool ref);
/* k_swiglu (serving's exp) of n tokens' rows of F, and h rounded as the input
 * of quantized weights of type wtype (k_act_f16) into o in the same kernel. */
int k_swiglu_f16(cudaStream_t st, const float *g, const float *u, float *h, __half *o, int wtype,
                 int n, int F);
/* Causal attention of each token over its sequence's positions 0..pos[t]:
 * out[t][h*hd..] = softmax(q.K^T * scale) V, with GQA (kv head = h / (n_heads/n_kv)).
 * head_dim: a multiple of 8, at most 256 (else ST_EUNSUPPORTED).
 * ref = false: float accumulation (fast): for batches of up to
 * MATVEC_MAX_N tokens with head_dim 64 or 128, warps over chunks of 32
 * positions; else positions in tiles of 128-256;
 * ref = true: the reference engine's operations in its order (q and the
 * running sum of V in half precision, positions in order, its dot-product
 * order and correctly rounded expf), one warp per head and token.
 * qo (fast mode, where k_attention_quantizes(qcls, ..); else NULL): the
 * output goes there as activations of class qcls (3: Q8_0 / Q8_1 blocks, what
 * a product with Q4_0..Q8_0 weights reads; 4: Q8_K, k-quant weights) instead
 * of into out, with the bits k_mmq_quantize gives. */
int k_attention(cudaStream_t st, const float *q, const __half *kc, const __half *vc, float *out,
                int n, int n_heads, int n_kv, int hd, struct kv_layout kl, float scale,
                const int32_t *pos, const int32_t *seq, bool ref, int qcls, struct mmq_act *qo);
/* Whether k_attention can quantize its output as class cls: 3 for head_dim
 * % 32 == 0; 4 (a Q8_K block is 256 / head_dim heads, whose blocks form a
 * cluster) for one token with head_dim 64 or 128 and n_heads * head_dim a
 * multiple of 256 (at 8 tokens the clusters cost Llama-1B 3%). */
bool k_attention_quantizes(int cls, int n, int hd, int n_heads);
/* out[i] = x[idx[i]] rows of dim. */
int k_gather_rows(cudaStream_t st, const float *x, const int32_t *idx, float *out, int n_out,
                  int dim);
/* ---- fused decode kernels (n <= MATVEC_MAX_N tokens) ---- */

/* xr[t] = rmsnorm(x[t]) * w rounded as class cls (0 none, 1 F16, 2 BF16): the
 * input of float weights. */
int k_norm_round(cudaStream_t st, const float *x, const float *w, float eps, int n, int D, int cls,
                 float *xr);
/* q = rmsnorm(x[t]) * w quantized as activations of class cls (3: Q8_0 /
 * Q8_1 blocks, 4: Q8_K; see mmq.cuh), n tokens of D. */
int k_norm_quant(cudaStream_t st, const float *x, const float *w, float eps, int n, int D, int cls,
                 struct mmq_act *q);
/* Up to 3 matrices with the same K in one launch per weight type: rows of
 * seg 0, then seg 1... y[t][r] = (add ? y[t][r] : 0) + W_r . x[t] + (bias ?
 * bias[r] : 0). Float weights: k_matvec_fast; quantized: k_mvq (mvq.cuh).
 *
 * With rope.tab set (k_mvq only), the q/k/v product does k_rope_store's work
 * in its epilogue, with the same arithmetic: a MV_ROPE_Q segment's rows
 * (heads of rope.hd) are rotated into y, a MV_ROPE_K segment's rotated into
 * the cache rope.kc and a MV_CACHE_V segment's stored into rope.vc, at each
 * token's (seq, pos). */
enum mv_role { MV_PLAIN = 0, MV_ROPE_Q, MV_ROPE_K, MV_CACHE_V };
struct mv_seg {
    const void *w;
    int type, N;
    size_t rb;         /* filled by the launchers */
    float *y;          /* [n][N] */
    const float *bias; /* [N] or NULL */
    int role;          /* enum mv_role */
};
struct mv_rope {
    const float2 *tab; /* (cos, sin) [pos][rope_dim / 2]; NULL: no rope epilogue */
    __half *kc, *vc;   /* this layer's cache */
    struct kv_layout kl;
    const int32_t *pos, *seq;
    int hd, rope_dim, kind; /* kind: enum rope_kind */
};
struct mv_args {
    struct mv_seg seg[3];
    int nseg, K, n, add;
    int wpr;        /* warps per row, filled by k_matvec_fast */
    const float *x; /* [n][K], already rounded for the weights' class (k_matvec_fast) */
    struct mv_rope rope;
};
#ifdef __CUDACC__
/* Row `row` of the concatenated segments: its matrix, output and bias. */
struct seg_row {
    const uint8_t *w;
    float *y;
    const float *bias;
    int N, r, type, role;
};

static __device__ __forceinline__ struct seg_row find_row(const struct mv_args &a, int row)
{
    struct seg_row o;
    int s = 0;
    if (row >= a.seg[0].N && a.nseg > 1) {
        row -= a.seg[0].N;
        s = 1;
        if (row >= a.seg[1].N && a.nseg > 2) {
            row -= a.seg[1].N;
            s = 2;
        }
    }
    const struct mv_seg &g = s == 0 ? a.seg[0] : s == 1 ? a.seg[1] : a.seg[2];
    o.w = row < g.N ? (const uint8_t *)g.w + (size_t)row * g.rb : NULL;
    o.y = g.y;
    o.bias = g.bias;
    o.N = g.N;
    o.r = row;
    o.type = g.type;
    o.role = g.role;
    if (a.rope.tab && a.rope.kind == 1 /* NEOX */ && (g.role == MV_ROPE_Q || g.role == MV_ROPE_K) &&
        row < g.N) {
        /* NEOX pairs (i, i + rope_dim / 2) of a head on adjacent rows of the block */
        int j = row % a.rope.hd;
        if (j < a.rope.rope_dim) o.r = row - j + (j >> 1) + (j & 1) * (a.rope.rope_dim / 2);
        o.w = (const uint8_t *)g.w + (size_t)o.r * g.rb;
    }
    return o;
}
#endif
/* The products for float weights (F32, F16, BF16; else ST_EINVAL), kernels
 * specialised per type, one launch per type among the segments. */
int k_matvec_fast(cudaStream_t st, const struct mv_args *a);
/* h[t][r] = silu(Wg_r . xg[t]) * (Wu_r . xu[t]), gate and up of one float type. */
int k_swiglu_fast(cudaStream_t st, const void *wg, const void *wu, int type, int N, int K,
                  const float *xg, const float *xu, int n, float *h);
/* Biases of q, k, v (NULL: none), added by k_rope_store before it rotates. */
struct qkv_bias {
    const float *q, *k, *v;
};
/* The inputs of k_rope_store: token t's q at q + t * ldq, its k and v at
 * k + t * ldkv and v + t * ldkv (one product's [n][q | k | v] output, or
 * the three buffers: ldq = q_dim, ldkv = kv_dim). */
struct qkv_in {
    const float *q, *k, *v;
    int ldq, ldkv;
};
/* Rotary embedding of in.q into q ([n][q_dim]; q may be in.q) and of in.k into the cache, in.v
 * into the cache (rope kind 0 = adjacent pairs, 1 = halves (NEOX); the first rope_dim elements of
 * each head rotate; the cache is kl), each with its bias first. Angles from tab
 * ([pos][rope_dim / 2] of (cos, sin), computed on the host as the reference
 * does) when given, else computed here (sinf/cosf may differ in the last bit). */
int k_rope_store(cudaStream_t st, struct qkv_in in, float *q, __half *kc, __half *vc,
                 struct qkv_bias bias, int n, int n_heads, int n_kv, int hd, int rope_dim, int kind,
                 float base, const float2 *tab, struct kv_layout kl, const int32_t *pos,
                 const int32_t *seq);

/* Fault injection: a kernel that writes through an invalid address. */
int k_fault(cudaStream_t st);
#endif
