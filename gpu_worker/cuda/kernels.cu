/* The worker's CUDA kernels (see kernels.cuh). */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/kernels.cuh"
#include "gpu_worker/cuda/mmq.cuh"
#include "gpu_worker/cuda/quant.cuh"

#include <cooperative_groups.h>
#include <cuda_bf16.h>

bool g_cuda_pdl = true;

/* Sum over a block of up to 1024 threads; every thread gets the result. */
static __device__ double block_sum(double v)
{
    __shared__ double part[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) part[wid] = v;
    __syncthreads();
    double r = 0.;
    for (int i = 0; i < nw; i++)
        r += part[i];
    return r;
}

/* The reference's RMS scale: squares summed in double, 1/sqrt in float. */
static __device__ __forceinline__ float rms_scale(double ss, int dim, float eps)
{
    return 1.f / sqrtf((float)(ss / dim) + eps);
}

/* Decode one row (dim elements) of type T into out. */
template <int T> static __device__ void deq_row(const uint8_t *row, int dim, float *out)
{
    if (T == QT_F32 || T == QT_F16 || T == QT_BF16) {
        for (int e = threadIdx.x; e < dim; e += blockDim.x)
            out[e] = deq1<T>(row, e);
    } else {
        for (int g = threadIdx.x; g < dim / 8; g += blockDim.x) {
            float v[8];
            deq8<T>(row, g * 8, v);
#pragma unroll
            for (int k = 0; k < 8; k++)
                out[g * 8 + k] = v[k];
        }
    }
}

/* ---- embedding ---- */

template <int T>
static __global__ void embed_kernel(const uint8_t *w, size_t rb, int dim, const int32_t *tok,
                                    float *x)
{
    griddep_launch();
    griddep_wait();
    int t = blockIdx.x;
    deq_row<T>(w + (size_t)tok[t] * rb, dim, x + (size_t)t * dim);
}

template <int T>
static int embed_launch(cudaStream_t st, const void *w, int dim, const int32_t *tok, int n,
                        float *x)
{
    CUDA_TRY(launch_pdl(embed_kernel<T>, n, 256, 0, st, (const uint8_t *)w, qt_row_bytes(T, dim),
                        dim, tok, x));
    return 0;
}

int k_embed(cudaStream_t st, const void *w, int type, int dim, const int32_t *tok, int n, float *x)
{
    DISPATCH_TYPE(type, embed_launch, st, w, dim, tok, n, x);
}

/* ---- RMS norm ---- */

/* Block per row: y = x * rms scale * w, rounded to half (cls 1), bfloat16 (2)
 * or not (0); y may equal x. */
/* yr = rmsnorm(xr) * w, rounded as cls (0 none, 1 F16, 2 BF16); the
 * block's threads stride over the row. */
static __device__ __forceinline__ void rmsnorm_row(const float *xr, const float *w, float *yr,
                                                   int dim, float eps, int cls)
{
    double ss = 0.;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += (double)(xr[i] * xr[i]);
    float sc = rms_scale(block_sum(ss), dim, eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i] * sc * w[i];
        if (cls == 1)
            v = __half2float(__float2half_rn(v));
        else if (cls == 2)
            v = __bfloat162float(__float2bfloat16_rn(v));
        yr[i] = v;
    }
}

static __global__ void rmsnorm_kernel(const float *x, const float *w, float *y, int dim, float eps,
                                      int cls)
{
    griddep_launch();
    griddep_wait();
    rmsnorm_row(x + (size_t)blockIdx.x * dim, w, y + (size_t)blockIdx.x * dim, dim, eps, cls);
}

/* Threads of a block that takes one row of dim: one per element, at most 1024. */
static int row_threads(int dim)
{
    return dim >= 1024 ? 1024 : (dim + 31) / 32 * 32;
}

static int rmsnorm_launch(cudaStream_t st, const float *x, const float *w, float *y, int n, int dim,
                          float eps, int cls)
{
    int th = row_threads(dim);
    CUDA_TRY(launch_pdl(rmsnorm_kernel, n, th, 0, st, x, w, y, dim, eps, cls));
    return 0;
}

int k_rmsnorm(cudaStream_t st, const float *x, const float *w, float *y, int n, int dim, float eps)
{
    return rmsnorm_launch(st, x, w, y, n, dim, eps, 0);
}

/* ---- activation rounding ---- */

static __global__ void round_f16_kernel(const float *x, float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __half2float(__float2half_rn(x[i]));
}

static __global__ void round_bf16_kernel(const float *x, float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}

/* A warp rounds one 32-element block like llama.cpp's Q8_0 activations:
 * q = rint(x * 127/amax), scale half(amax/127). src may equal dst. */
static __device__ __forceinline__ float round_q8_0_reg(float v)
{
    float d;
    int q = q8_0_quant(v, d);
    return (float)q * __half2float(__float2half_rn(d));
}

/* The rounded activations as float (k_act_round) or straight as half for
 * cuBLAS (k_act_f16). */
template <typename O> static __device__ __forceinline__ O act_out(float v);
template <> __device__ __forceinline__ float act_out<float>(float v)
{
    return v;
}
template <> __device__ __forceinline__ __half act_out<__half>(float v)
{
    return __float2half_rn(v);
}

template <typename O>
static __device__ __forceinline__ void round_q8_0_warp(const float *src, O *dst, int lane)
{
    dst[lane] = act_out<O>(round_q8_0_reg(src[lane]));
}

/* A warp rounds one 256-element block like Q8_K: the element of largest
 * magnitude m (first one on ties), iscale = -127/m,
 * q = min(127, rint(iscale*x)), x' = q / iscale. */
template <typename O>
static __device__ __forceinline__ void round_q8_k_regs(const float (&xv)[8], O *dst, int lane)
{
    float iscale = q8_k_iscale(xv, lane, false);
    if (iscale == 0.f) {
#pragma unroll
        for (int k = 0; k < 8; k++)
            dst[k * 32 + lane] = act_out<O>(0.f);
        return;
    }
    float d = 1.f / iscale;
#pragma unroll
    for (int k = 0; k < 8; k++)
        dst[k * 32 + lane] = act_out<O>(fminf(127.f, rintf(iscale * xv[k])) * d);
}

/* The same, the block read from src (xv[k] = src[k * 32 + lane]). */
template <typename O>
static __device__ __forceinline__ void round_q8_k_warp(const float *src, O *dst, int lane)
{
    float xv[8];
#pragma unroll
    for (int k = 0; k < 8; k++)
        xv[k] = src[k * 32 + lane];
    round_q8_k_regs(xv, dst, lane);
}

template <typename O> static __global__ void q8_0_round_kernel(const float *x, O *y, size_t nblk)
{
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    round_q8_0_warp(x + blk * 32, y + blk * 32, threadIdx.x & 31);
}

template <typename O> static __global__ void q8_k_round_kernel(const float *x, O *y, size_t nblk)
{
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    round_q8_k_warp(x + blk * 256, y + blk * 256, threadIdx.x & 31);
}

/* Quantized weights' rounding (Q8_0 blocks for Q4_0..Q8_0, else Q8_K) into y. */
template <typename O>
static void q8_round_launch(cudaStream_t st, int wtype, const float *x, O *y, size_t total)
{
    if (mmq_class(wtype) == 3)
        q8_0_round_kernel<O><<<(unsigned)((total / 32 + 7) / 8), 256, 0, st>>>(x, y, total / 32);
    else
        q8_k_round_kernel<O><<<(unsigned)((total / 256 + 7) / 8), 256, 0, st>>>(x, y, total / 256);
}

int k_act_round(cudaStream_t st, int wtype, const float *x, float *xq, int n, int K,
                const float **used)
{
    size_t total = (size_t)n * K;
    *used = xq;
    switch (wtype) {
    case QT_F32:
        *used = x;
        return 0;
    case QT_F16:
        round_f16_kernel<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(x, xq, total);
        break;
    case QT_BF16:
        round_bf16_kernel<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(x, xq, total);
        break;
    default:
        q8_round_launch(st, wtype, x, xq, total);
        break;
    }
    CUDA_LAUNCHED("act_round");
    return 0;
}

/* rmsnorm_kernel, then the block rounds its row as the input of a product
 * with quantized weights (32-element Q8_0 blocks, else 256-element Q8_K
 * blocks, one warp per block) into h as half. */
static __global__ void rmsnorm_f16_kernel(const float *x, const float *w, float *y, __half *h,
                                          int dim, float eps, bool q8_0)
{
    griddep_launch();
    griddep_wait();
    float *yr = y + (size_t)blockIdx.x * dim;
    __half *hr = h + (size_t)blockIdx.x * dim;
    rmsnorm_row(x + (size_t)blockIdx.x * dim, w, yr, dim, eps, 0);
    __syncthreads(); /* the row's global writes are visible to the block */
    int warp = threadIdx.x >> 5, nw = blockDim.x >> 5, lane = threadIdx.x & 31;
    if (q8_0)
        for (int blk = warp; blk < dim / 32; blk += nw)
            round_q8_0_warp(yr + blk * 32, hr + blk * 32, lane);
    else
        for (int blk = warp; blk < dim / 256; blk += nw)
            round_q8_k_warp(yr + blk * 256, hr + blk * 256, lane);
}

int k_rmsnorm_f16(cudaStream_t st, const float *x, const float *w, float *y, __half *h, int wtype,
                  int n, int dim, float eps)
{
    bool q8_0 = mmq_class(wtype) == 3;
    if (dim % (q8_0 ? 32 : 256) != 0) return ST_EINVAL;
    int th = row_threads(dim);
    CUDA_TRY(launch_pdl(rmsnorm_f16_kernel, n, th, 0, st, x, w, y, h, dim, eps, q8_0));
    return 0;
}

int k_act_f16(cudaStream_t st, int wtype, const float *x, __half *out, int n, int K)
{
    size_t total = (size_t)n * K;
    if (wtype == QT_F16) return k_to_f16(st, x, out, total);
    q8_round_launch(st, wtype, x, out, total);
    CUDA_LAUNCHED("act_f16");
    return 0;
}

/* ---- conversions for cuBLAS ---- */

static __global__ void f32_to_f16_kernel(const float *x, __half *out, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2half_rn(x[i]);
}

/* Rows r0.. of a quantized matrix to half, 8 elements per thread. */
template <int T>
static __global__ void dequant_kernel(const uint8_t *w, size_t rb, int K, size_t groups,
                                      __half *out)
{
    size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    size_t per_row = (size_t)K / 8, row = g / per_row;
    int e = (int)(g % per_row) * 8;
    float v[8];
    deq8<T>(w + row * rb, e, v);
    __half2 *o = (__half2 *)(out + row * K + e);
#pragma unroll
    for (int k = 0; k < 4; k++)
        o[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
}

template <int T>
static int dequant_launch(cudaStream_t st, const void *w, int N, int K, __half *out)
{
    size_t groups = (size_t)N * K / 8;
    dequant_kernel<T><<<(unsigned)((groups + 255) / 256), 256, 0, st>>>(
        (const uint8_t *)w, qt_row_bytes(T, K), K, groups, out);
    CUDA_LAUNCHED("dequant");
    return 0;
}

int k_dequant_f16(cudaStream_t st, const void *w, int type, int N, int K, __half *out)
{
    DISPATCH_QUANT(type, dequant_launch, st, w, N, K, out);
}

int k_to_f16(cudaStream_t st, const float *x, __half *out, size_t n)
{
    f32_to_f16_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(x, out, n);
    CUDA_LAUNCHED("to_f16");
    return 0;
}

static __global__ void f32_to_bf16_kernel(const float *x, __nv_bfloat16 *out, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

int k_to_bf16(cudaStream_t st, const float *x, void *out, size_t n)
{
    f32_to_bf16_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(x, (__nv_bfloat16 *)out, n);
    CUDA_LAUNCHED("to_bf16");
    return 0;
}

/* ---- elementwise ---- */

static __global__ void add_bias_kernel(float *y, const float *b, size_t total, int N)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] += b[i % N];
}

int k_add_bias(cudaStream_t st, float *y, const float *b, int n, int N)
{
    size_t total = (size_t)n * N;
    add_bias_kernel<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(y, b, total, N);
    CUDA_LAUNCHED("add_bias");
    return 0;
}

static __global__ void add_kernel(float *x, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

int k_add(cudaStream_t st, float *x, const float *y, size_t n)
{
    add_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(x, y, n);
    CUDA_LAUNCHED("add");
    return 0;
}

static __global__ void swiglu_kernel(const float *g, const float *u, float *h, size_t n, bool ref)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float a = g[i];
        h[i] = ref ? a / (1.f + exp_ref(-a)) * u[i] : silu_mul(a, u[i]);
    }
}

int k_swiglu(cudaStream_t st, const float *g, const float *u, float *h, size_t n, bool ref)
{
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(g, u, h, n, ref);
    CUDA_LAUNCHED("swiglu");
    return 0;
}

/* A warp per BS-element block of h (BS = 32: Q8_0 rounding, 256: Q8_K):
 * swiglu_kernel's values, then the rounding of round_q8_*_warp. h may be g:
 * every load comes before the first store. */
template <int BS>
static __global__ void swiglu_f16_kernel(const float *g, const float *u, float *h, __half *o,
                                         size_t nblk)
{
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    const int lane = threadIdx.x & 31;
    const size_t b0 = blk * BS + lane;
    constexpr int NV = BS / 32;
    float gv[NV], uv[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        gv[k] = g[b0 + 32 * k];
        uv[k] = u[b0 + 32 * k];
    }
    float hv[NV == 8 ? 8 : 1];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        hv[k] = silu_mul(gv[k], uv[k]);
        h[b0 + 32 * k] = hv[k];
    }
    if constexpr (BS == 32)
        o[b0] = __float2half_rn(round_q8_0_reg(hv[0]));
    else
        round_q8_k_regs(hv, o + blk * BS, lane);
}

int k_swiglu_f16(cudaStream_t st, const float *g, const float *u, float *h, __half *o, int wtype,
                 int n, int F)
{
    size_t total = (size_t)n * F;
    if (mmq_class(wtype) == 3) {
        if (F % 32 != 0) return ST_EINVAL;
        swiglu_f16_kernel<32>
            <<<(unsigned)((total / 32 + 7) / 8), 256, 0, st>>>(g, u, h, o, total / 32);
    } else {
        if (F % 256 != 0) return ST_EINVAL;
        swiglu_f16_kernel<256>
            <<<(unsigned)((total / 256 + 7) / 8), 256, 0, st>>>(g, u, h, o, total / 256);
    }
    CUDA_LAUNCHED("swiglu_f16");
    return 0;
}

/* ---- attention ---- */

#define ATT_MAXD 256               /* head_dim */
#define ATT_REF_ND (ATT_MAXD / 32) /* values per lane in the reference kernel */

/* acc[0..8) += wp * the 8 half values in u (a V row's 8 elements). */
static __device__ __forceinline__ void v_accum(const uint4 &u, float wp, float (&acc)[8])
{
    const __half2 *h2 = (const __half2 *)&u;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 f = __half22float2(h2[j]);
        acc[2 * j] += wp * f.x;
        acc[2 * j + 1] += wp * f.y;
    }
}

/* Fast attention (head_dim % 8 == 0; batches of up to MATVEC_MAX_N tokens
 * with head_dim 64 or 128 take attention_dec_kernel): block = (head, token),
 * TP threads, positions in tiles of TP (256 for batches of up to
 * MATVEC_MAX_N tokens, 128 for larger ones, whose many blocks fill the GPU
 * anyway). Per tile: thread j scores position j
 * (its K row in 16-byte loads, all in flight together; q from shared memory); the tile joins the
 * block's online softmax; then thread (g, r) adds the V values 8g..8g+7 of positions r, r + TP / G,
 * .. (G = head_dim / 8) and the partial sums meet in shared memory, where thread e < head_dim keeps
 * output element e. So a tile costs about two memory round trips, whatever
 * its length. GMAX >= G bounds the registers of a K row. */
template <int GMAX, int TP>
static __global__ void __launch_bounds__(TP)
    attention_tile_kernel(const float *q, const __half *kc, const __half *vc, float *out,
                          int n_heads, int n_kv, int hd, struct kv_layout kl, float scale,
                          const int32_t *pos, const int32_t *seq, struct mmq_act qo)
{
    __shared__ __align__(16) float qs[ATT_MAXD];
    __shared__ float ws[TP];
    __shared__ float red[TP / 32];
    __shared__ float vpart[8 * TP]; /* [TP / G][head_dim] */
    griddep_launch();
    /* pos and seq are the batch's (copied before the step's first kernel),
     * so they load while the previous kernel ends */
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int np = pos[t] + 1;
    const size_t sq = (size_t)seq[t] * kl.sstride;
    const int kvh = h / (n_heads / n_kv), G = hd / 8, PG = TP / G;
    const int g = tid % G, pg = tid / G;
    const __half *kb = kc + sq + (size_t)kvh * hd;
    const __half *vb = vc + sq + (size_t)kvh * hd + 8 * g;
    /* decode tiles (TP 256, a few blocks) of head_dim <= 128: every V row a
     * thread adds (at most NV; NV * PG >= TP for every G <= GMAX <= 16) is
     * loaded at the tile's start, together with its K row, so the tile costs
     * one memory round trip; prompt tiles (many blocks) keep fewer registers
     * and load V after the softmax */
    constexpr bool DEC = TP == 256, PRE = DEC && GMAX <= 16;
    constexpr int NV = GMAX <= 16 ? GMAX : 4;
    /* Decode tiles load the first tile's rows that earlier steps wrote
     * (positions below fresh, the first this batch writes for the sequence:
     * its positions are contiguous) before the wait, so that only q and the
     * batch's own rows load after it. */
    int fresh = np - 1;
    if (DEC)
        for (int i = 0; i < t; i++)
            fresh -= seq[i] == seq[t];
    const int cnt0 = np < TP ? np : TP;
    uint4 kv[GMAX]; /* the K row of position p0 + tid */
    uint4 vpre[PRE ? NV : 1];
    if (DEC && tid < cnt0 && tid < fresh)
#pragma unroll
        for (int j = 0; j < GMAX; j++)
            if (j < G) kv[j] = ((const uint4 *)(kb + (size_t)tid * kl.pstride))[j];
    if (PRE && pg < PG && np <= TP) /* the only tile's rows */
#pragma unroll
        for (int k = 0; k < NV; k++)
            if (pg + k * PG < fresh)
                vpre[k] = *(const uint4 *)(vb + (size_t)(pg + k * PG) * kl.pstride);
    griddep_wait();
    const float *qh = q + ((size_t)t * n_heads + h) * hd;
    for (int e = tid; e < hd; e += TP)
        qs[e] = qh[e] * scale;
    if (PRE && pg < PG && np <= TP)
#pragma unroll
        for (int k = 0; k < NV; k++)
            if (pg + k * PG >= fresh && pg + k * PG < np)
                vpre[k] = *(const uint4 *)(vb + (size_t)(pg + k * PG) * kl.pstride);
    __syncthreads();
    float m = -INFINITY, l = 0.f, o = 0.f; /* o: element tid of the output (tid < hd) */
    for (int p0 = 0; p0 < np; p0 += TP) {
        const int cnt = np - p0 < TP ? np - p0 : TP;
        float s = -INFINITY;
        if (PRE && pg < PG && np > TP)
#pragma unroll
            for (int k = 0; k < NV; k++)
                if (pg + k * PG < cnt)
                    vpre[k] = *(const uint4 *)(vb + (size_t)(p0 + pg + k * PG) * kl.pstride);
        if (tid < cnt) {
            const uint4 *kr = (const uint4 *)(kb + (size_t)(p0 + tid) * kl.pstride);
            if (!DEC || p0 > 0 || tid >= fresh)
#pragma unroll
                for (int j = 0; j < GMAX; j++)
                    if (j < G) kv[j] = kr[j];
            float d = 0.f;
#pragma unroll
            for (int j = 0; j < GMAX; j++) {
                if (j >= G) break;
                const __half2 *h2 = (const __half2 *)&kv[j];
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 f = __half22float2(h2[k]);
                    d += qs[8 * j + 2 * k] * f.x + qs[8 * j + 2 * k + 1] * f.y;
                }
            }
            s = d;
        }
        const float mn = fmaxf(m, block_reduce<true>(s, red));
        const float corr = __expf(m - mn); /* 0 on the first tile */
        const float w = tid < cnt ? __expf(s - mn) : 0.f;
        ws[tid] = w;
        l = l * corr + block_reduce<false>(w, red); /* its barriers publish ws */
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        /* decode tiles: the partial sums added in two steps, to shorten the
         * chain of dependent steps */
        if (pg < PG && !DEC) {
#pragma unroll 4
            for (int p = pg; p < cnt; p += PG) {
                uint4 u = *(const uint4 *)(vb + (size_t)(p0 + p) * kl.pstride);
                v_accum(u, ws[p], acc);
            }
        } else if (pg < PG && PRE) { /* vpre holds all of the thread's rows */
#pragma unroll
            for (int k = 0; k < NV; k++) {
                if (pg + k * PG >= cnt) break;
                v_accum(vpre[k], ws[pg + k * PG], acc);
            }
        } else if (pg < PG) { /* head_dim > 128: NV rows in flight at a time */
            for (int p = pg; p < cnt; p += NV * PG) {
                uint4 u[NV];
#pragma unroll
                for (int k = 0; k < NV; k++)
                    if (p + k * PG < cnt)
                        u[k] = *(const uint4 *)(vb + (size_t)(p0 + p + k * PG) * kl.pstride);
#pragma unroll
                for (int k = 0; k < NV; k++) {
                    if (p + k * PG >= cnt) break;
                    v_accum(u[k], ws[p + k * PG], acc);
                }
            }
        }
        if (pg < PG)
#pragma unroll
            for (int k = 0; k < 8; k++)
                vpart[pg * hd + 8 * g + k] = acc[k];
        __syncthreads();
        /* the PG partial sums of each element: nparts threads per element
         * take every nparts-th, then one thread adds theirs (in ws) */
        const int nparts = DEC ? TP / hd : 1, part = tid / hd, e = tid - part * hd;
        if (DEC && part < nparts) {
            float sum = 0.f;
            for (int r = part; r < PG; r += nparts)
                sum += vpart[r * hd + e];
            ws[tid] = sum;
        }
        if (DEC) __syncthreads();
        if (tid < hd) {
            float sum = 0.f;
            if (DEC)
                for (int k = 0; k < nparts; k++)
                    sum += ws[k * hd + tid];
            else
                for (int r = 0; r < PG; r++)
                    sum += vpart[r * hd + tid];
            o = o * corr + sum;
        }
        __syncthreads(); /* vpart and ws are rewritten by the next tile */
        m = mn;
    }
    const float r = o / l;
    if (qo.q) { /* hd % 32 == 0: warps below hd / 32 hold one 32-block each */
        if (tid < hd)
            q8_0_store(r, tid & 31, (((size_t)t * n_heads + h) * hd + tid) / 32, qo.q, qo.d, qo.s);
    } else if (tid < hd) {
        out[((size_t)t * n_heads + h) * hd + tid] = r;
    }
}

/* The V elements e0..e0+E-1 of a row: E halves as E / 2 words. */
template <int E> struct vpart_t {
    uint32_t w[E / 2];
};

template <int E> static __device__ __forceinline__ vpart_t<E> v_load(const __half *p)
{
    vpart_t<E> r;
    if (E == 2) {
        r.w[0] = *(const uint32_t *)p;
    } else {
        const uint2 u = *(const uint2 *)p;
        r.w[0] = u.x;
        r.w[1] = u.y;
    }
    return r;
}

/* Decode attention for batches of up to MATVEC_MAX_N tokens, head_dim HD = 64
 * or 128: block = (head, token), NW warps, one barrier. Warp w takes the
 * chunks of 32 positions w, w + NW, ..: lane j scores position 32 c + j (its
 * K row in registers, q from the warp's copy in shared memory), the warp
 * keeps its own online softmax (shuffles), and lane l adds elements E l ..
 * E l + E - 1 of the chunk's 32 V rows. The warps' (max, sum, output) then
 * meet in shared memory. The K and V rows of a warp's first chunk that
 * earlier steps wrote (positions below fresh, as in attention_tile_kernel)
 * load before the grid-dependency wait, so a context of up to 32 NW
 * positions costs one memory round trip after it. Against the tiles' 8
 * barriers: 0.5B b=1 1,864 -> 1,887 tok/s, 1.5B 1,009 -> 1,049, 7B 472 ->
 * 477 (one call, interleaved). KQ: the output as Q8_K for a k-quant o,
 * launched in clusters of the 256 / HD heads of a Q8_K block (no kernel of
 * its own: 1.5B b=1 1,191 / 1,193 -> 1,206 / 1,197 tok/s, Llama-1B 1,861 /
 * 1,882 -> 1,899 / 1,888). */
template <int HD, bool KQ>
static __global__ void __launch_bounds__(256)
    attention_dec_kernel(const float *q, const __half *kc, const __half *vc, float *out,
                         int n_heads, int n_kv, struct kv_layout kl, float scale,
                         const int32_t *pos, const int32_t *seq, struct mmq_act qo)
{
    constexpr int NW = 8, G = HD / 8, E = HD / 32;
    __shared__ float wm[NW], wl[NW];
    __shared__ __align__(16) float wo[NW][HD];
    __shared__ __align__(16) float kq_row[KQ ? 256 : 4]; /* rank 0's: the cluster's outputs */
    griddep_launch();
    if (KQ) __cluster_barrier_arrive_relaxed(); /* phase 1: this block has started */
    const int h = blockIdx.x, t = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int np = pos[t] + 1;
    const size_t sq = (size_t)seq[t] * kl.sstride;
    const int kvh = h / (n_heads / n_kv);
    const __half *kb = kc + sq + (size_t)kvh * HD, *vb = vc + sq + (size_t)kvh * HD + E * lane;
    int fresh = np - 1;
    for (int i = 0; i < t; i++)
        fresh -= seq[i] == seq[t];
    uint4 kr[G];
    vpart_t<E> vr[32];
    const int pk = 32 * warp + lane; /* this lane's position in the first chunk */
    if (pk < np && pk < fresh)
#pragma unroll
        for (int j = 0; j < G; j++)
            kr[j] = ((const uint4 *)(kb + (size_t)pk * kl.pstride))[j];
#pragma unroll
    for (int j = 0; j < 32; j++)
        if (32 * warp + j < np && 32 * warp + j < fresh)
            vr[j] = v_load<E>(vb + (size_t)(32 * warp + j) * kl.pstride);
    griddep_wait();
    /* q (scaled) in the warp's own slice of wo until its output goes there */
    float *qs = wo[warp];
    const float *qh = q + ((size_t)t * n_heads + h) * HD;
#pragma unroll
    for (int e = 0; e < E; e++)
        qs[lane + 32 * e] = qh[lane + 32 * e] * scale;
    __syncwarp();
    float m = -INFINITY, l = 0.f, o[E];
#pragma unroll
    for (int e = 0; e < E; e++)
        o[e] = 0.f;
    for (int c = warp; 32 * c < np; c += NW) {
        const int p0 = 32 * c, p = p0 + lane;
        const bool first = c == warp;
        if (p < np && (!first || p >= fresh))
#pragma unroll
            for (int j = 0; j < G; j++)
                kr[j] = ((const uint4 *)(kb + (size_t)p * kl.pstride))[j];
#pragma unroll
        for (int j = 0; j < 32; j++)
            if (p0 + j < np && (!first || p0 + j >= fresh))
                vr[j] = v_load<E>(vb + (size_t)(p0 + j) * kl.pstride);
        float s = -INFINITY;
        if (p < np) {
            float d = 0.f;
#pragma unroll
            for (int j = 0; j < G; j++) {
                const float4 qa = ((const float4 *)qs)[2 * j], qb = ((const float4 *)qs)[2 * j + 1];
                const __half2 *h2 = (const __half2 *)&kr[j];
                const float2 f0 = __half22float2(h2[0]), f1 = __half22float2(h2[1]);
                const float2 f2 = __half22float2(h2[2]), f3 = __half22float2(h2[3]);
                d += qa.x * f0.x + qa.y * f0.y + qa.z * f1.x + qa.w * f1.y;
                d += qb.x * f2.x + qb.y * f2.y + qb.z * f3.x + qb.w * f3.y;
            }
            s = d;
        }
        const float mn = fmaxf(m, warp_max(s)); /* finite: the chunk has a position */
        const float corr = __expf(m - mn);       /* 0 on the warp's first chunk */
        const float w = p < np ? __expf(s - mn) : 0.f;
        l = l * corr + warp_sum(w);
#pragma unroll
        for (int e = 0; e < E; e++)
            o[e] *= corr;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const float wj = __shfl_sync(0xffffffffu, w, j);
            if (p0 + j >= np) break;
            const __half2 *h2 = (const __half2 *)vr[j].w;
#pragma unroll
            for (int k = 0; k < E / 2; k++) {
                const float2 f = __half22float2(h2[k]);
                o[2 * k] += wj * f.x;
                o[2 * k + 1] += wj * f.y;
            }
        }
        m = mn;
    }
    __syncwarp(); /* every lane is done with qs */
#pragma unroll
    for (int e = 0; e < E; e++)
        wo[warp][E * lane + e] = o[e];
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
    __syncthreads();
    const int e = threadIdx.x;
    if (!KQ && e >= HD) return;
    float r = 0.f;
    if (e < HD) {
        float M = wm[0];
#pragma unroll
        for (int i = 1; i < NW; i++)
            M = fmaxf(M, wm[i]);
        float L = 0.f, O = 0.f;
#pragma unroll
        for (int i = 0; i < NW; i++) { /* a warp without positions: exp(-inf) = 0 */
            const float f = __expf(wm[i] - M);
            L += wl[i] * f;
            O += wo[i][e] * f;
        }
        r = O / L;
    }
    if (KQ) {
        /* Q8_K blocks of 256 elements = the 256 / HD heads of this block's
         * cluster: each block puts its values into rank 0's row, whose first
         * warp quantizes them as quant_q8_k_kernel does (the same bits) */
        namespace cg = cooperative_groups;
        cg::cluster_group cl = cg::this_cluster();
        const unsigned rank = cl.block_rank();
        __cluster_barrier_wait(); /* phase 1: every block of the cluster has started */
        if (e < HD) *cl.map_shared_rank(&kq_row[rank * HD + e], 0) = r;
        __cluster_barrier_arrive(); /* phase 2 (release): the values are in rank 0's row */
        if (rank != 0 || warp != 0) return;
        __cluster_barrier_wait();
        const float4 a = ((const float4 *)kq_row)[2 * lane],
                     b = ((const float4 *)kq_row)[2 * lane + 1];
        const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        q8_k_store_regs(xv, lane, ((size_t)t * n_heads + h - rank) * HD / 256, qo.q, qo.d, qo.bsum);
        return;
    }
    if (qo.q) /* warps below HD / 32 hold one 32-block each */
        q8_0_store(r, lane, (((size_t)t * n_heads + h) * HD + e) / 32, qo.q, qo.d, qo.s);
    else
        out[((size_t)t * n_heads + h) * HD + e] = r;
}

/* The reference's attention, operation for operation (the CPU backend's
 * att_run): q rounded to half; each score the half dot product in the order
 * of kernels_dot_f16 (16 lanes x 4 accumulators over steps of 64, summed
 * pairwise, the tail in double) times scale; online softmax with expf
 * correctly rounded; the output accumulated in half, rescaled only when
 * the maximum grows. One warp per (head, token); lanes 16-31 mirror 0-15. */
static __global__ void attention_ref_kernel(const float *q, const __half *kc, const __half *vc,
                                            float *out, int n_heads, int n_kv, int hd,
                                            struct kv_layout kl, float scale, const int32_t *pos,
                                            const int32_t *seq)
{
    __shared__ float qs[ATT_MAXD];
    int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x, L = lane & 15;
    int kvh = h / (n_heads / n_kv);
    int nd = (hd + 31) / 32;
    const float *qh = q + ((size_t)t * n_heads + h) * hd;
    for (int e = lane; e < hd; e += 32)
        qs[e] = __half2float(__float2half_rn(qh[e]));
    __syncwarp();
    __half acc[ATT_REF_ND];
#pragma unroll
    for (int i = 0; i < ATT_REF_ND; i++)
        acc[i] = __float2half_rn(0.f);
    const __half *kb = kc + (size_t)seq[t] * kl.sstride + (size_t)kvh * hd;
    const __half *vb = vc + (size_t)seq[t] * kl.sstride + (size_t)kvh * hd;
    float M = -INFINITY, S = 0.f;
    int np = pos[t] + 1, n64 = hd & ~63;
    for (int p = 0; p < np; p++) {
        const __half *kp = kb + (size_t)p * kl.pstride;
        float a[4] = {0.f, 0.f, 0.f, 0.f};
        for (int i = 0; i < n64; i += 64)
#pragma unroll
            for (int j = 0; j < 4; j++)
                a[j] = __fmaf_rn(__half2float(kp[i + 16 * j + L]), qs[i + 16 * j + L], a[j]);
        float r = __fadd_rn(__fadd_rn(a[0], a[2]), __fadd_rn(a[1], a[3]));
#pragma unroll
        for (int o = 8; o > 0; o >>= 1)
            r = __fadd_rn(r, __shfl_xor_sync(0xffffffffu, r, o));
        double sd = n64 ? (double)r : 0.0;
        for (int i = n64; i < hd; i++)
            sd += (double)__fmul_rn(__half2float(kp[i]), qs[i]);
        float s = __fmul_rn((float)sd, scale);
        float ms = 1.f, vs = 1.f;
        if (s > M) {
            float mold = M;
            M = s;
            ms = exp_ref(mold - M);
#pragma unroll
            for (int i = 0; i < ATT_REF_ND; i++)
                if (i < nd) acc[i] = __float2half_rn(__fmul_rn(__half2float(acc[i]), ms));
        } else {
            vs = exp_ref(s - M);
        }
        const __half *vp = vb + (size_t)p * kl.pstride;
#pragma unroll
        for (int i = 0; i < ATT_REF_ND; i++) {
            int e = lane + 32 * i;
            if (i < nd && e < hd)
                acc[i] = __float2half_rn(__fmaf_rn(__half2float(vp[e]), vs, __half2float(acc[i])));
        }
        S = __fmaf_rn(S, ms, vs);
    }
    float inv = 1.f / S;
    float *oh = out + ((size_t)t * n_heads + h) * hd;
#pragma unroll
    for (int i = 0; i < ATT_REF_ND; i++) {
        int e = lane + 32 * i;
        if (i < nd && e < hd) oh[e] = __fmul_rn(__half2float(acc[i]), inv);
    }
}

bool k_attention_quantizes(int cls, int n, int hd, int n_heads)
{
    if (cls == 3) return hd % 32 == 0;
    return cls == 4 && n == 1 && (hd == 64 || hd == 128) && n_heads * hd % 256 == 0;
}

int k_attention(cudaStream_t st, const float *q, const __half *kc, const __half *vc, float *out,
                int n, int n_heads, int n_kv, int hd, struct kv_layout kl, float scale,
                const int32_t *pos, const int32_t *seq, bool ref, int qcls, struct mmq_act *qo)
{
    if (hd > ATT_MAXD || hd % 8 != 0) {
        log_error("cuda: attention: head_dim %d unsupported (a multiple of 8 up to %d)", hd,
                  ATT_MAXD);
        return ST_EUNSUPPORTED;
    }
    dim3 grid(n_heads, n);
    if (ref) {
        attention_ref_kernel<<<grid, 32, 0, st>>>(q, kc, vc, out, n_heads, n_kv, hd, kl, scale, pos,
                                                  seq);
        CUDA_LAUNCHED("attention_ref");
        return 0;
    }
    struct mmq_act oq = {};
    if (qo) {
        if (!k_attention_quantizes(qcls, n, hd, n_heads)) {
            log_error("cuda: attention: no quantized output of class %d for head_dim %d, %d heads, "
                      "%d tokens",
                      qcls, hd, n_heads, n);
            return ST_EINVAL;
        }
        qo->n = n;
        qo->K = n_heads * hd;
        qo->cls = qcls;
        oq = *qo;
    }
    if (qo && qcls == 4) { /* a cluster of the 256 / hd heads of each Q8_K block */
        if (hd == 64)
            CUDA_TRY(launch_pdl_cluster(attention_dec_kernel<64, true>, grid, 256, 0, st, 4u, q, kc,
                                        vc, out, n_heads, n_kv, kl, scale, pos, seq, oq));
        else
            CUDA_TRY(launch_pdl_cluster(attention_dec_kernel<128, true>, grid, 256, 0, st, 2u, q,
                                        kc, vc, out, n_heads, n_kv, kl, scale, pos, seq, oq));
        return 0;
    }
#define ATT_TILE(GM, TP)                                                                           \
    CUDA_TRY(launch_pdl(attention_tile_kernel<GM, TP>, grid, TP, 0, st, q, kc, vc, out, n_heads,   \
                        n_kv, hd, kl, scale, pos, seq, oq))
    bool small = n <= MATVEC_MAX_N;
    if (small && (hd == 64 || hd == 128)) {
        if (hd == 64)
            CUDA_TRY(launch_pdl(attention_dec_kernel<64, false>, grid, 256, 0, st, q, kc, vc, out,
                                n_heads, n_kv, kl, scale, pos, seq, oq));
        else
            CUDA_TRY(launch_pdl(attention_dec_kernel<128, false>, grid, 256, 0, st, q, kc, vc, out,
                                n_heads, n_kv, kl, scale, pos, seq, oq));
        return 0;
    }
    if (hd <= 64 && small)
        ATT_TILE(8, 256);
    else if (hd <= 64)
        ATT_TILE(8, 128);
    else if (hd <= 128 && small)
        ATT_TILE(16, 256);
    else if (hd <= 128)
        ATT_TILE(16, 128);
    else
        ATT_TILE(32, 256);
#undef ATT_TILE
    return 0;
}

/* ---- misc ---- */

static __global__ void gather_kernel(const float *x, const int32_t *idx, float *out, int dim)
{
    griddep_launch();
    griddep_wait();
    const float *src = x + (size_t)idx[blockIdx.x] * dim;
    float *dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dst[i] = src[i];
}

int k_gather_rows(cudaStream_t st, const float *x, const int32_t *idx, float *out, int n_out,
                  int dim)
{
    CUDA_TRY(launch_pdl(gather_kernel, n_out, 256, 0, st, x, idx, out, dim));
    return 0;
}

static __global__ void fault_kernel(int *p)
{
    p[threadIdx.x * 1024] = 1;
}

int k_fault(cudaStream_t st)
{
    fault_kernel<<<1, 32, 0, st>>>((int *)(uintptr_t)0x10);
    CUDA_LAUNCHED("fault");
    return 0;
}

/* ---- fused decode kernels (batches of up to MATVEC_MAX_N tokens) ---- */

int k_norm_round(cudaStream_t st, const float *x, const float *w, float eps, int n, int D, int cls,
                 float *xr)
{
    if (cls < 0 || cls > 2) {
        log_error("cuda: norm_round: class %d (quantized inputs: k_norm_quant)", cls);
        return ST_EINVAL;
    }
    return rmsnorm_launch(st, x, w, xr, n, D, eps, cls);
}

/* Sum of v over the block, the same in every thread: warp sums, then every
 * warp sums the partials in the same order. */
static __device__ __forceinline__ double block_sum_all(double v)
{
    __shared__ double part[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) part[wid] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0.;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* This lane's elements of activation block b of row p (norm_quant_kernel's
 * layout): element 32 b + lane (E = 1), or 256 b + 8 lane + [0, 8) (E = 8). */
template <int E>
static __device__ __forceinline__ void lane_block(const float *p, int b, int lane, float (&v)[E])
{
    if (E == 1) {
        v[0] = p[32 * b + lane];
    } else {
        const float4 *q = (const float4 *)(p + 256 * b + 8 * lane);
        const float4 u = q[0], t = q[1];
        const float f[8] = {u.x, u.y, u.z, u.w, t.x, t.y, t.z, t.w};
#pragma unroll
        for (int e = 0; e < E; e++)
            v[e] = f[e % 8];
    }
}

/* Block per token of nw warps (one per activation block, at most 32), the
 * row in registers (the weights load before the wait for the previous
 * kernel), one barrier (the sum of squares). Warp w holds activation blocks
 * k nw + w, k < NK: of class 3 (32-blocks) lane l element 32 b + l, of class
 * 4 (256-blocks) the 8 consecutive elements 256 b + 8 l + [0, 8); each warp
 * quantizes its blocks from its registers (quant.cuh). With late, the next
 * kernel may start once this one has waited for its predecessor. */
template <int NK, int CLS>
static __global__ void __launch_bounds__(1024)
    norm_quant_kernel(const float *x, const float *w, float eps, int D, struct mmq_act a, int late)
{
    if (!late) griddep_launch();
    constexpr int E = CLS == 3 ? 1 : 8, BS = 32 * E; /* elements per lane, per block */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nblk = D / BS;
    float wv[NK][E], xv[NK][E];
#pragma unroll
    for (int k = 0; k < NK; k++) {
        const int b = k * nw + warp;
        if (b < nblk) lane_block<E>(w, b, lane, wv[k]);
    }
    griddep_wait();
    if (late) griddep_launch();
    const float *xt = x + (size_t)blockIdx.x * D;
    double ss = 0.;
#pragma unroll
    for (int k = 0; k < NK; k++) {
        const int b = k * nw + warp;
        if (b >= nblk) continue;
        lane_block<E>(xt, b, lane, xv[k]);
#pragma unroll
        for (int e = 0; e < E; e++)
            ss += (double)(xv[k][e] * xv[k][e]);
    }
    const float sc = rms_scale(block_sum_all(ss), D, eps);
#pragma unroll
    for (int k = 0; k < NK; k++) {
        const int b = k * nw + warp;
        if (b >= nblk) continue;
        const size_t blk = (size_t)blockIdx.x * nblk + b;
        float v[8];
#pragma unroll
        for (int e = 0; e < E; e++)
            v[e] = xv[k][e] * sc * wv[k][e];
        if (CLS == 3)
            q8_0_store(v[0], lane, blk, a.q, a.d, a.s);
        else
            q8_k_store_regs(v, lane, blk, a.q, a.d, a.bsum);
    }
}

template <int CLS>
static int norm_quant_launch(cudaStream_t st, const float *x, const float *w, float eps, int n,
                             int D, const struct mmq_act &q)
{
    /* a warp per activation block up to 32 (the blocks' quantizations run
     * side by side), then NK blocks per warp */
    const int nblk = D / (CLS == 3 ? 32 : 256), nw = nblk < 32 ? nblk : 32;
    const int nk = (nblk + nw - 1) / nw;
    /* batches of several tokens let the next product start only once the
     * norm runs (0.5B N=8 5,904 -> 6,047 tok/s, 1.5B 2,485 -> 2,529: an early
     * start took resources the previous product still needed); one token's
     * step is faster with the early start (7B b=1 449 vs 446) */
    const int late = n > 1;
#define NORM_QUANT(K)                                                                              \
    if (nk <= K) {                                                                                 \
        CUDA_TRY(launch_pdl(norm_quant_kernel<K, CLS>, n, 32 * nw, 0, st, x, w, eps, D, q, late)); \
        return 0;                                                                                  \
    }
    NORM_QUANT(1);
    NORM_QUANT(2);
    NORM_QUANT(4);
    if constexpr (CLS == 3) {
        NORM_QUANT(8);
        NORM_QUANT(16);
    }
#undef NORM_QUANT
    log_error("cuda: norm_quant: a row of %d elements is too long for class %d", D, CLS);
    return ST_EINVAL;
}

int k_norm_quant(cudaStream_t st, const float *x, const float *w, float eps, int n, int D, int cls,
                 struct mmq_act *q)
{
    if ((cls != 3 && cls != 4) || D % (cls == 4 ? 256 : 32) != 0) {
        log_error("cuda: norm_quant: class %d with a row of %d", cls, D);
        return ST_EINVAL;
    }
    q->n = n;
    q->K = D;
    q->cls = cls;
    return cls == 3 ? norm_quant_launch<3>(st, x, w, eps, n, D, *q)
                    : norm_quant_launch<4>(st, x, w, eps, n, D, *q);
}

/* Block (head, token) of q's and k's heads; thread i < rope_dim / 2 rotates
 * pair i (q back into q, k straight into the cache as half); a k head's
 * block also stores its v and the unrotated tail of k. One memory round
 * trip per thread. */
static __global__ void rope_store_kernel(struct qkv_in in, float *q, __half *kc, __half *vc,
                                         struct qkv_bias bias, int n_heads, int n_kv, int hd,
                                         int rope_dim, int kind, float theta_scale,
                                         const float2 *tab, struct kv_layout kl, const int32_t *pos,
                                         const int32_t *seq)
{
    griddep_launch();
    griddep_wait();
    const int h = blockIdx.x, t = blockIdx.y, i = threadIdx.x;
    const int half_rd = rope_dim / 2, P = pos[t];
    const size_t dst = (size_t)seq[t] * kl.sstride + (size_t)P * kl.pstride;
    const float *kt = in.k + (size_t)t * in.ldkv, *qin = in.q + (size_t)t * in.ldq;
    float *qt = q + (size_t)t * n_heads * hd;
    const size_t ko = dst + (size_t)(h - n_heads) * hd;
    if (i < half_rd) {
        float sn, cs;
        if (tab) {
            float2 c = tab[(size_t)P * half_rd + i];
            cs = c.x;
            sn = c.y;
        } else { /* the reference's angles: pos * theta_scale^i by repeated products */
            float theta = (float)P;
            for (int j = 0; j < i; j++)
                theta *= theta_scale;
            sn = sinf(theta);
            cs = cosf(theta);
        }
        int i0 = kind == 0 ? 2 * i : i;
        int i1 = kind == 0 ? 2 * i + 1 : i + half_rd;
        float *qh = qt + (size_t)h * hd;
        const float *xh = h < n_heads ? qin + (size_t)h * hd : kt + (size_t)(h - n_heads) * hd;
        const float *bh = h < n_heads ? (bias.q ? bias.q + (size_t)h * hd : NULL)
                                      : (bias.k ? bias.k + (size_t)(h - n_heads) * hd : NULL);
        float a = xh[i0], b = xh[i1];
        if (bh) {
            a += bh[i0];
            b += bh[i1];
        }
        float r0 = __fmaf_rn(a, cs, -__fmul_rn(b, sn)); /* fused as the reference */
        float r1 = __fmaf_rn(a, sn, __fmul_rn(b, cs));
        if (h < n_heads) {
            qh[i0] = r0;
            qh[i1] = r1;
        } else {
            kc[ko + i0] = __float2half_rn(r0);
            kc[ko + i1] = __float2half_rn(r1);
        }
    }
    if (h < n_heads && (bias.q || qin != qt)) /* the unrotated rest of q, with its bias */
        for (int j = rope_dim + i; j < hd; j += blockDim.x) {
            size_t e = (size_t)h * hd + j;
            qt[e] = bias.q ? qin[e] + bias.q[e] : qin[e];
        }
    if (h >= n_heads)
        for (int j = i; j < hd; j += blockDim.x) {
            size_t e = (size_t)(h - n_heads) * hd + j;
            float vv = in.v[(size_t)t * in.ldkv + e];
            vc[dst + e] = __float2half_rn(bias.v ? vv + bias.v[e] : vv);
            if (j >= rope_dim) kc[dst + e] = __float2half_rn(bias.k ? kt[e] + bias.k[e] : kt[e]);
        }
}

int k_rope_store(cudaStream_t st, struct qkv_in in, float *q, __half *kc, __half *vc,
                 struct qkv_bias bias, int n, int n_heads, int n_kv, int hd, int rope_dim, int kind,
                 float base, const float2 *tab, struct kv_layout kl, const int32_t *pos,
                 const int32_t *seq)
{
    float theta_scale = powf(base, -2.0f / (float)rope_dim); /* on the host, as the reference */
    dim3 grid(n_heads + n_kv, n);
    CUDA_TRY(launch_pdl(rope_store_kernel, grid, (hd + 31) / 32 * 32, 0, st, in, q, kc, vc, bias,
                        n_heads, n_kv, hd, rope_dim, kind, theta_scale, tab, kl, pos, seq));
    return 0;
}

/* ---- float weights, batches of up to MATVEC_MAX_N tokens (accumulators in registers) ---- */

/* Warps per row: enough blocks to fill the GPU (>= ~4 per SM) with long rows split. */
static int pick_wpr(int rows, int K)
{
    if (K >= 2048 && rows < 8192) return 4;
    if (K >= 1024 && rows < 4096) return 2;
    if (K >= 512 && rows < 2048) return 2;
    return 1;
}

/* acc[t] += this thread's share (elements lane, lane + step..) of row wr . x[t]. */
template <int T, int NT>
static __device__ __forceinline__ void row_dot_t(const uint8_t *wr, int K,
                                                 const float *__restrict__ x, int n,
                                                 float (&acc)[NT], int lane, int step)
{
    for (int e = lane; e < K; e += step) {
        float wv = deq1<T>(wr, e);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (NT == 1 || t < n) acc[t] += wv * x[(size_t)t * K + e];
    }
}

/* Block = 4 / wpr rows, wpr warps per row. */
template <int T, int NT>
static __global__ void __launch_bounds__(128) mv_fast_kernel(struct mv_args a)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wpr = a.wpr, sub = warp % wpr, rpb = 4 / wpr;
    struct seg_row me = find_row(a, blockIdx.x * rpb + warp / wpr);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.f;
    if (me.w) row_dot_t<T, NT>(me.w, a.K, a.x, a.n, acc, sub * 32 + lane, 32 * wpr);
    rows_reduce<NT>(acc, wpr);
    if (!me.w || sub != 0 || lane != 0) return;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (NT == 1 || t < a.n) {
            float v = acc[t];
            if (me.bias) v += me.bias[me.r];
            float *yp = me.y + (size_t)t * me.N + me.r;
            *yp = a.add ? *yp + v : v;
        }
    }
}

template <int T> static int mv_fast_launch(cudaStream_t st, struct mv_args *a, int rows)
{
    int rpb = 4 / a->wpr;
    if (a->n == 1)
        mv_fast_kernel<T, 1><<<(rows + rpb - 1) / rpb, 128, 0, st>>>(*a);
    else
        mv_fast_kernel<T, MATVEC_MAX_N><<<(rows + rpb - 1) / rpb, 128, 0, st>>>(*a);
    CUDA_LAUNCHED("mv_fast");
    return 0;
}

static int mv_fast_group(cudaStream_t st, int type, struct mv_args *a, int rows)
{
    DISPATCH_FLOAT(type, mv_fast_launch, st, a, rows);
}

int k_matvec_fast(cudaStream_t st, const struct mv_args *in)
{
    bool done[3] = {false, false, false};
    for (int i = 0; i < in->nseg; i++) {
        if (done[i]) continue;
        struct mv_args a = *in;
        a.nseg = 0;
        int rows = 0;
        for (int j = i; j < in->nseg; j++) {
            if (done[j] || in->seg[j].type != in->seg[i].type) continue;
            a.seg[a.nseg] = in->seg[j];
            a.seg[a.nseg].rb = qt_row_bytes(in->seg[j].type, in->K);
            rows += in->seg[j].N;
            a.nseg++;
            done[j] = true;
        }
        a.wpr = pick_wpr(rows, a.K);
        ST_TRY(mv_fast_group(st, in->seg[i].type, &a, rows));
    }
    return 0;
}

template <int T, int NT>
static __global__ void __launch_bounds__(128)
    swiglu_fast_kernel(const uint8_t *wg, const uint8_t *wu, size_t rb, int N, int K,
                       const float *xg, const float *xu, int n, float *h, int wpr)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int sub = warp % wpr, row = blockIdx.x * (4 / wpr) + warp / wpr;
    bool live = row < N;
    float ag[NT], au[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        ag[t] = au[t] = 0.f;
    if (live) {
        row_dot_t<T, NT>(wg + (size_t)row * rb, K, xg, n, ag, sub * 32 + lane, 32 * wpr);
        row_dot_t<T, NT>(wu + (size_t)row * rb, K, xu, n, au, sub * 32 + lane, 32 * wpr);
    }
    rows_reduce<NT>(ag, wpr);
    rows_reduce<NT>(au, wpr);
    if (!live || sub != 0 || lane != 0) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (NT == 1 || t < n) h[(size_t)t * N + row] = silu_mul(ag[t], au[t]);
}

template <int T>
static int swiglu_fast_launch(cudaStream_t st, const void *wg, const void *wu, int N, int K,
                              const float *xg, const float *xu, int n, float *h)
{
    int wpr = pick_wpr(N, K), rpb = 4 / wpr;
    size_t rb = qt_row_bytes(T, K);
    if (n == 1)
        swiglu_fast_kernel<T, 1><<<(N + rpb - 1) / rpb, 128, 0, st>>>(
            (const uint8_t *)wg, (const uint8_t *)wu, rb, N, K, xg, xu, n, h, wpr);
    else
        swiglu_fast_kernel<T, MATVEC_MAX_N><<<(N + rpb - 1) / rpb, 128, 0, st>>>(
            (const uint8_t *)wg, (const uint8_t *)wu, rb, N, K, xg, xu, n, h, wpr);
    CUDA_LAUNCHED("swiglu_fast");
    return 0;
}

int k_swiglu_fast(cudaStream_t st, const void *wg, const void *wu, int type, int N, int K,
                  const float *xg, const float *xu, int n, float *h)
{
    DISPATCH_FLOAT(type, swiglu_fast_launch, st, wg, wu, N, K, xg, xu, n, h);
}

/* ---- test entries (cuda_backend.h) ---- */

/* Device copies of a class-cls activation for n tokens of K (the checks below). */
struct act_buf {
    struct mmq_act a;
    size_t nq, nd, nb;
};

static bool act_buf_alloc(struct act_buf *b, int cls, int n, int K)
{
    memset(b, 0, sizeof(*b));
    b->nq = (size_t)n * K;
    b->nd = b->nq / (cls == 4 ? 256 : 32);
    b->nb = cls == 4 ? b->nq / 16 : b->nd; /* bsum, or s */
    return cudaMalloc(&b->a.q, b->nq) == cudaSuccess &&
           cudaMalloc(&b->a.d, sizeof(float) * b->nd) == cudaSuccess &&
           cudaMalloc(&b->a.s, sizeof(float) * b->nb) == cudaSuccess &&
           cudaMalloc(&b->a.bsum, sizeof(int32_t) * b->nb) == cudaSuccess;
}

static void act_buf_free(struct act_buf *b)
{
    cudaFree(b->a.q);
    cudaFree(b->a.d);
    cudaFree(b->a.s);
    cudaFree(b->a.bsum);
}

/* Its q, d and (class 3) s or (class 4) bsum into host memory; false on a
 * CUDA error. */
static bool act_buf_download(const struct act_buf *b, int cls, int8_t *q, float *d, void *sb)
{
    const void *src = cls == 4 ? (const void *)b->a.bsum : (const void *)b->a.s;
    return cudaMemcpy(q, b->a.q, b->nq, cudaMemcpyDeviceToHost) == cudaSuccess &&
           cudaMemcpy(d, b->a.d, sizeof(float) * b->nd, cudaMemcpyDeviceToHost) == cudaSuccess &&
           cudaMemcpy(sb, src, 4 * b->nb, cudaMemcpyDeviceToHost) == cudaSuccess;
}

/* 1 where the two activations' bytes differ, 0 where equal, ST_ENOMEM, ST_EDEVICE. */
static int act_buf_cmp(const struct act_buf *x, const struct act_buf *y, int cls)
{
    const size_t n = x->nq + sizeof(float) * x->nd + 4 * x->nb;
    uint8_t *h = (uint8_t *)malloc(2 * n);
    if (!h) return ST_ENOMEM;
    const struct act_buf *b[2] = {x, y};
    bool ok = true;
    for (int i = 0; i < 2 && ok; i++) {
        uint8_t *p = h + i * n;
        ok = act_buf_download(b[i], cls, (int8_t *)p, (float *)(p + x->nq),
                              p + x->nq + sizeof(float) * x->nd);
    }
    const int rc = ok ? (int)(memcmp(h, h + n, n) != 0) : (int)ST_EDEVICE;
    free(h);
    return rc;
}

extern "C" int cuda_norm_quant_check(int cls, int n, int D, const float *x, const float *w,
                                     float eps, int8_t *q, float *d, float *s, int32_t *bsum)
{
    if ((cls != 3 && cls != 4) || n < 1 || D < 1) return ST_EINVAL;
    float *dx = nullptr, *dw = nullptr;
    struct act_buf a = {};
    int rc = ST_EDEVICE;
    if (cudaMalloc(&dx, sizeof(float) * n * D) == cudaSuccess &&
        cudaMalloc(&dw, sizeof(float) * D) == cudaSuccess && act_buf_alloc(&a, cls, n, D) &&
        cudaMemcpy(dx, x, sizeof(float) * n * D, cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(dw, w, sizeof(float) * D, cudaMemcpyHostToDevice) == cudaSuccess) {
        rc = k_norm_quant(0, dx, dw, eps, n, D, cls, &a.a);
        if (rc == 0 && (cudaDeviceSynchronize() != cudaSuccess ||
                        !act_buf_download(&a, cls, q, d, cls == 3 ? (void *)s : (void *)bsum)))
            rc = ST_EDEVICE;
    }
    if (rc == ST_EDEVICE)
        log_error("cuda: norm_quant check: %s", cudaGetErrorString(cudaGetLastError()));
    cudaFree(dx);
    cudaFree(dw);
    act_buf_free(&a);
    return rc;
}

extern "C" int cuda_attention_check(int n_heads, int n_kv, int hd, int np, const float *q,
                                    const uint16_t *k, const uint16_t *v, int qcls, float *out)
{
    if (n_heads < 1 || n_kv < 1 || n_heads % n_kv || np < 1) return ST_EINVAL;
    if (qcls && !k_attention_quantizes(qcls, 1, hd, n_heads)) return ST_EINVAL;
    const size_t kvd = (size_t)n_kv * hd, cache = kvd * np;
    float *dq = nullptr, *dout = nullptr;
    __half *dk = nullptr, *dv = nullptr;
    int32_t *dps = nullptr;
    struct act_buf ref = {}, own = {};
    const int32_t ps[2] = {np - 1, 0}; /* pos, seq */
    int rc = ST_EDEVICE;
    if (cudaMalloc(&dq, sizeof(float) * n_heads * hd) == cudaSuccess &&
        cudaMalloc(&dout, sizeof(float) * n_heads * hd) == cudaSuccess &&
        cudaMalloc(&dk, 2 * cache) == cudaSuccess && cudaMalloc(&dv, 2 * cache) == cudaSuccess &&
        cudaMalloc(&dps, sizeof(ps)) == cudaSuccess &&
        (!qcls || (act_buf_alloc(&ref, qcls, 1, n_heads * hd) &&
                   act_buf_alloc(&own, qcls, 1, n_heads * hd))) &&
        cudaMemcpy(dq, q, sizeof(float) * n_heads * hd, cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(dk, k, 2 * cache, cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(dv, v, 2 * cache, cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(dps, ps, sizeof(ps), cudaMemcpyHostToDevice) == cudaSuccess) {
        struct kv_layout kl = {cache, kvd};
        const float scale = 1.f / sqrtf((float)hd);
        rc = k_attention(0, dq, dk, dv, dout, 1, n_heads, n_kv, hd, kl, scale, dps, dps + 1, false,
                         0, NULL);
        if (rc == 0 && qcls) {
            rc = k_mmq_quantize(0, qcls, dout, 1, n_heads * hd, &ref.a);
            if (rc == 0)
                rc = k_attention(0, dq, dk, dv, dout, 1, n_heads, n_kv, hd, kl, scale, dps,
                                 dps + 1, false, qcls, &own.a);
        }
        if (rc == 0 && (cudaDeviceSynchronize() != cudaSuccess ||
                        cudaMemcpy(out, dout, sizeof(float) * n_heads * hd,
                                   cudaMemcpyDeviceToHost) != cudaSuccess))
            rc = ST_EDEVICE;
        if (rc == 0 && qcls) rc = act_buf_cmp(&ref, &own, qcls);
    }
    if (rc == ST_EDEVICE)
        log_error("cuda: attention check: %s", cudaGetErrorString(cudaGetLastError()));
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dps);
    act_buf_free(&ref);
    act_buf_free(&own);
    return rc;
}
