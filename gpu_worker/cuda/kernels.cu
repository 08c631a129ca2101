/* The worker's CUDA kernels (see kernels.cuh). */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/kernels.cuh"
#include "gpu_worker/cuda/quant.cuh"

#include <cuda_bf16.h>

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
    int t = blockIdx.x;
    deq_row<T>(w + (size_t)tok[t] * rb, dim, x + (size_t)t * dim);
}

template <int T>
static int embed_launch(cudaStream_t st, const void *w, int dim, const int32_t *tok, int n,
                        float *x)
{
    embed_kernel<T><<<n, 256, 0, st>>>((const uint8_t *)w, qt_row_bytes(T, dim), dim, tok, x);
    CUDA_LAUNCHED("embed");
    return 0;
}

int k_embed(cudaStream_t st, const void *w, int type, int dim, const int32_t *tok, int n, float *x)
{
    DISPATCH_TYPE(type, embed_launch, st, w, dim, tok, n, x);
}

/* ---- RMS norm ---- */

static __global__ void rmsnorm_kernel(const float *x, const float *w, float *y, int dim, float eps)
{
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = y + (size_t)blockIdx.x * dim;
    double ss = 0.;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += (double)(xr[i] * xr[i]);
    float sc = rms_scale(block_sum(ss), dim, eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = xr[i] * sc * w[i];
}

int k_rmsnorm(cudaStream_t st, const float *x, const float *w, float *y, int n, int dim, float eps)
{
    int th = dim >= 1024 ? 1024 : (dim + 31) / 32 * 32;
    rmsnorm_kernel<<<n, th, 0, st>>>(x, w, y, dim, eps);
    CUDA_LAUNCHED("rmsnorm");
    return 0;
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

static __device__ __forceinline__ void round_q8_0_warp(const float *src, float *dst, int lane)
{
    dst[lane] = round_q8_0_reg(src[lane]);
}

/* A warp rounds one 256-element block like Q8_K: the element of largest
 * magnitude m (first one on ties), iscale = -127/m,
 * q = min(127, rint(iscale*x)), x' = q / iscale. */
static __device__ __forceinline__ void round_q8_k_warp(const float *src, float *dst, int lane)
{
    float xv[8];
    float iscale = q8_k_iscale(src, lane, xv);
    if (iscale == 0.f) {
#pragma unroll
        for (int k = 0; k < 8; k++)
            dst[k * 32 + lane] = 0.f;
        return;
    }
    float d = 1.f / iscale;
#pragma unroll
    for (int k = 0; k < 8; k++)
        dst[k * 32 + lane] = fminf(127.f, rintf(iscale * xv[k])) * d;
}

static __global__ void q8_0_round_kernel(const float *x, float *y, size_t nblk)
{
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    round_q8_0_warp(x + blk * 32, y + blk * 32, threadIdx.x & 31);
}

static __global__ void q8_k_round_kernel(const float *x, float *y, size_t nblk)
{
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    round_q8_k_warp(x + blk * 256, y + blk * 256, threadIdx.x & 31);
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
    case QT_Q4_0:
    case QT_Q4_1:
    case QT_Q5_0:
    case QT_Q5_1:
    case QT_Q8_0:
        q8_0_round_kernel<<<(unsigned)((total / 32 + 7) / 8), 256, 0, st>>>(x, xq, total / 32);
        break;
    default:
        q8_k_round_kernel<<<(unsigned)((total / 256 + 7) / 8), 256, 0, st>>>(x, xq, total / 256);
        break;
    }
    CUDA_LAUNCHED("act_round");
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
        h[i] = a / (1.f + (ref ? exp_ref(-a) : expf(-a))) * u[i];
    }
}

int k_swiglu(cudaStream_t st, const float *g, const float *u, float *h, size_t n, bool ref)
{
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(g, u, h, n, ref);
    CUDA_LAUNCHED("swiglu");
    return 0;
}

/* ---- attention ---- */

#define ATT_WARPS 4
#define ATT_MAXD 8 /* head_dim <= 256 */

/* Fast attention (head_dim % 8 == 0): block = (head, token), 4 warps. Each
 * warp takes chunks of 32 positions: lane j scores position j of the chunk
 * (16-byte loads of its K row, q from shared memory), the chunk joins the
 * warp's online softmax, then the lanes (over head elements) add the 32 V
 * rows. Loads of a chunk are independent, so memory latency overlaps. */
template <int ND>
static __global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_chunk_kernel(const float *q, const __half *kc, const __half *vc, float *out,
                           int n_heads, int n_kv, int hd, struct kv_layout kl, float scale,
                           const int32_t *pos, const int32_t *seq, bool round_q8_0)
{
    int h = blockIdx.x, t = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kvh = h / (n_heads / n_kv);
    __shared__ float qs[32 * ATT_MAXD];
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][ATT_MAXD * 32];
    const float *qh = q + ((size_t)t * n_heads + h) * hd;
    for (int e = threadIdx.x; e < hd; e += blockDim.x)
        qs[e] = qh[e] * scale;
    __syncthreads();
    const __half *kb = kc + (size_t)seq[t] * kl.sstride + (size_t)kvh * hd;
    const __half *vb = vc + (size_t)seq[t] * kl.sstride + (size_t)kvh * hd;
    float m = -INFINITY, l = 0.f, acc[ND];
#pragma unroll
    for (int i = 0; i < ND; i++)
        acc[i] = 0.f;
    int np = pos[t] + 1;
    for (int c0 = warp * 32; c0 < np; c0 += ATT_WARPS * 32) {
        int p = c0 + lane;
        float s = -INFINITY;
        if (p < np) {
            const uint4 *kr = (const uint4 *)(kb + (size_t)p * kl.pstride);
            float d = 0.f;
            for (int j = 0; j < hd / 8; j++) {
                uint4 u = kr[j];
                const __half2 *h2 = (const __half2 *)&u;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 f = __half22float2(h2[k]);
                    d += qs[8 * j + 2 * k] * f.x + qs[8 * j + 2 * k + 1] * f.y;
                }
            }
            s = d;
        }
        float cm = warp_max(s);
        float mn = fmaxf(m, cm);
        float corr = __expf(m - mn);
        float w = p < np ? __expf(s - mn) : 0.f;
        l = l * corr + warp_sum(w);
#pragma unroll
        for (int i = 0; i < ND; i++)
            acc[i] *= corr;
        int cnt = np - c0 < 32 ? np - c0 : 32;
        for (int j0 = 0; j0 < cnt; j0 += 8) {
            float vv[8][ND]; /* 8 V rows loaded before use: their latencies overlap */
#pragma unroll
            for (int jj = 0; jj < 8; jj++) {
                const __half *vr = vb + (size_t)(c0 + j0 + jj) * kl.pstride;
#pragma unroll
                for (int i = 0; i < ND; i++) {
                    int e = lane + 32 * i;
                    vv[jj][i] = (j0 + jj < cnt && e < hd) ? __half2float(vr[e]) : 0.f;
                }
            }
#pragma unroll
            for (int jj = 0; jj < 8; jj++) {
                float wj = __shfl_sync(0xffffffffu, w, (j0 + jj) & 31);
#pragma unroll
                for (int i = 0; i < ND; i++)
                    acc[i] += wj * vv[jj][i];
            }
        }
        m = mn;
    }
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ND; i++)
        sacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++)
        M = fmaxf(M, sm[w]);
    float L = 0.f, f[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = sl[w] > 0.f ? __expf(sm[w] - M) : 0.f;
        L += sl[w] * f[w];
    }
    float *oh = out + ((size_t)t * n_heads + h) * hd;
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float r = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (f[w] > 0.f) r += sacc[w][e] * f[w];
        if (round_q8_0) { /* hd % 32 == 0: whole warps, one 32-block each */
            oh[e] = round_q8_0_reg(r / L);
        } else {
            oh[e] = r / L;
        }
    }
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
    __shared__ float qs[32 * ATT_MAXD];
    int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x, L = lane & 15;
    int kvh = h / (n_heads / n_kv);
    int nd = (hd + 31) / 32;
    const float *qh = q + ((size_t)t * n_heads + h) * hd;
    for (int e = lane; e < hd; e += 32)
        qs[e] = __half2float(__float2half_rn(qh[e]));
    __syncwarp();
    __half acc[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++)
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
            for (int i = 0; i < ATT_MAXD; i++)
                if (i < nd) acc[i] = __float2half_rn(__fmul_rn(__half2float(acc[i]), ms));
        } else {
            vs = exp_ref(s - M);
        }
        const __half *vp = vb + (size_t)p * kl.pstride;
#pragma unroll
        for (int i = 0; i < ATT_MAXD; i++) {
            int e = lane + 32 * i;
            if (i < nd && e < hd)
                acc[i] = __float2half_rn(__fmaf_rn(__half2float(vp[e]), vs, __half2float(acc[i])));
        }
        S = __fmaf_rn(S, ms, vs);
    }
    float inv = 1.f / S;
    float *oh = out + ((size_t)t * n_heads + h) * hd;
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int e = lane + 32 * i;
        if (i < nd && e < hd) oh[e] = __fmul_rn(__half2float(acc[i]), inv);
    }
}

int k_attention(cudaStream_t st, const float *q, const __half *kc, const __half *vc, float *out,
                int n, int n_heads, int n_kv, int hd, struct kv_layout kl, float scale,
                const int32_t *pos, const int32_t *seq, bool ref, bool round)
{
    if (hd > 32 * ATT_MAXD || hd % 8 != 0) {
        log_error("cuda: attention: head_dim %d unsupported (a multiple of 8 up to %d)", hd,
                  32 * ATT_MAXD);
        return ST_EUNSUPPORTED;
    }
    dim3 grid(n_heads, n);
    if (ref) {
        attention_ref_kernel<<<grid, 32, 0, st>>>(q, kc, vc, out, n_heads, n_kv, hd, kl, scale, pos,
                                                  seq);
        CUDA_LAUNCHED("attention_ref");
        return 0;
    }
    int nd = (hd + 31) / 32;
#define ATT_CHUNK(NDV)                                                                             \
    attention_chunk_kernel<NDV><<<grid, ATT_WARPS * 32, 0, st>>>(q, kc, vc, out, n_heads, n_kv,    \
                                                                 hd, kl, scale, pos, seq, round)
    if (nd == 1)
        ATT_CHUNK(1);
    else if (nd == 2)
        ATT_CHUNK(2);
    else if (nd <= 4)
        ATT_CHUNK(4);
    else
        ATT_CHUNK(8);
#undef ATT_CHUNK
    CUDA_LAUNCHED("attention");
    return 0;
}

/* ---- misc ---- */

static __global__ void gather_kernel(const float *x, const int32_t *idx, float *out, int dim)
{
    const float *src = x + (size_t)idx[blockIdx.x] * dim;
    float *dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dst[i] = src[i];
}

int k_gather_rows(cudaStream_t st, const float *x, const int32_t *idx, float *out, int n_out,
                  int dim)
{
    gather_kernel<<<n_out, 256, 0, st>>>(x, idx, out, dim);
    CUDA_LAUNCHED("gather");
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

/* Rounding of a whole row of D values in place (D a multiple of the block). */
static __device__ void round_row(float *v, int D, int cls)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (cls == 1) {
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            v[i] = __half2float(__float2half_rn(v[i]));
    } else if (cls == 2) {
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            v[i] = __bfloat162float(__float2bfloat16_rn(v[i]));
    } else if (cls == 3) {
        for (int b = warp; b < D / 32; b += nw)
            round_q8_0_warp(v + b * 32, v + b * 32, lane);
    } else if (cls == 4) {
        for (int b = warp; b < D / 256; b += nw)
            round_q8_k_warp(v + b * 256, v + b * 256, lane);
    }
}

/* Block per token: xr = round_cls(rmsnorm(x) * w). */
static __global__ void norm_round_kernel(const float *x, const float *w, float eps, int D, int cls,
                                         float *xr)
{
    extern __shared__ float row[];
    const float *xt = x + (size_t)blockIdx.x * D;
    double ss = 0.;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        ss += (double)(xt[i] * xt[i]);
    float sc = rms_scale(block_sum(ss), D, eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        row[i] = xt[i] * sc * w[i];
    __syncthreads();
    round_row(row, D, cls);
    __syncthreads();
    float *o = xr + (size_t)blockIdx.x * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        o[i] = row[i];
}

/* One thread per element (D <= 1024, D % 32 == 0, class != 4): the rounding
 * of a 32-block is one warp's shuffles, no shared row. */
static __global__ void norm_round_small_kernel(const float *x, const float *w, float eps, int D,
                                               int cls, float *xr)
{
    int i = threadIdx.x;
    float v = x[(size_t)blockIdx.x * D + i];
    float sc = rms_scale(block_sum((double)(v * v)), D, eps);
    v = v * sc * w[i];
    if (cls == 1)
        v = __half2float(__float2half_rn(v));
    else if (cls == 2)
        v = __bfloat162float(__float2bfloat16_rn(v));
    else if (cls == 3)
        v = round_q8_0_reg(v);
    xr[(size_t)blockIdx.x * D + i] = v;
}

int k_norm_round(cudaStream_t st, const float *x, const float *w, float eps, int n, int D, int cls,
                 float *xr)
{
    if (D <= 1024 && D % 32 == 0 && cls != 4) {
        norm_round_small_kernel<<<n, D, 0, st>>>(x, w, eps, D, cls, xr);
        CUDA_LAUNCHED("norm_round_small");
        return 0;
    }
    /* one block per token: as many threads as the row can use (a 256-thread
     * block took 15 us for one 3584-wide row on the H200) */
    int th = D >= 4096 ? 1024 : D >= 2048 ? 512 : 256;
    norm_round_kernel<<<n, th, D * sizeof(float), st>>>(x, w, eps, D, cls, xr);
    CUDA_LAUNCHED("norm_round");
    return 0;
}

/* acc[t] += row . x[t] over lanes (not reduced). */
template <int T>
static __device__ __forceinline__ void row_dot(const uint8_t *wr, int K, const float *x, int n,
                                               float *acc, int lane, int wpr)
{
    /* lane = thread index among the threads sharing the row (32 * warps per row) */
    const int step = 32 * wpr;
    if (T == QT_F32 || T == QT_F16 || T == QT_BF16) {
        for (int e = lane; e < K; e += step) {
            float wv = deq1<T>(wr, e);
#pragma unroll
            for (int t = 0; t < MATVEC_MAX_N; t++)
                if (t < n) acc[t] += wv * x[(size_t)t * K + e];
        }
    } else {
        for (int g = lane; g < K / 8; g += step) {
            float wv[8];
            deq8<T>(wr, g * 8, wv);
#pragma unroll
            for (int t = 0; t < MATVEC_MAX_N; t++) {
                if (t < n) {
                    const float4 *xp = (const float4 *)(x + (size_t)t * K + g * 8);
                    float4 a = xp[0], b = xp[1];
                    acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                              wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
                }
            }
        }
    }
}

static __device__ __forceinline__ void row_dot_any(int type, const uint8_t *wr, int K,
                                                   const float *x, int n, float *acc, int lane,
                                                   int wpr)
{
    switch (type) {
    case QT_F32:
        row_dot<QT_F32>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_F16:
        row_dot<QT_F16>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_BF16:
        row_dot<QT_BF16>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q4_0:
        row_dot<QT_Q4_0>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q4_1:
        row_dot<QT_Q4_1>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q5_0:
        row_dot<QT_Q5_0>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q5_1:
        row_dot<QT_Q5_1>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q8_0:
        row_dot<QT_Q8_0>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q2_K:
        row_dot<QT_Q2_K>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q3_K:
        row_dot<QT_Q3_K>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q4_K:
        row_dot<QT_Q4_K>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q5_K:
        row_dot<QT_Q5_K>(wr, K, x, n, acc, lane, wpr);
        break;
    case QT_Q6_K:
        row_dot<QT_Q6_K>(wr, K, x, n, acc, lane, wpr);
        break;
    }
}

/* Sum acc[t] over the wpr warps of a row (warps w*wpr .. w*wpr+wpr-1 of the
 * block); the row's first warp gets the sums in acc. Block-wide barrier. */
static __device__ __forceinline__ void rows_reduce(float *acc, int n, int wpr)
{
    __shared__ float part[4][MATVEC_MAX_N];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < MATVEC_MAX_N; t++)
        if (t < n) acc[t] = warp_sum(acc[t]);
    if (wpr == 1) return;
    __syncthreads(); /* part may still be read by an earlier call */
    if (lane == 0)
        for (int t = 0; t < n; t++)
            part[warp][t] = acc[t];
    __syncthreads();
    if (warp % wpr == 0)
        for (int t = 0; t < n; t++)
            for (int w = 1; w < wpr; w++)
                acc[t] += part[warp + w][t];
}

/* Copy a row's bytes (global, 2-byte aligned) into this warp's 16-byte aligned
 * shared buffer with 16-byte loads, many in flight; returns the row's start
 * inside buf. */
static __device__ __forceinline__ const uint8_t *stage_row(const uint8_t *row, size_t rb,
                                                           uint4 *buf, int lane)
{
    uintptr_t a = (uintptr_t)row, a0 = a & ~(uintptr_t)15;
    int n16 = (int)((a + rb - a0 + 15) / 16);
    const uint4 *src = (const uint4 *)a0;
#pragma unroll 4
    for (int i = lane; i < n16; i += 32)
        buf[i] = __ldg(src + i);
    __syncwarp();
    return (const uint8_t *)buf + (a - a0);
}

static __global__ void __launch_bounds__(128) matvec_multi_kernel(struct mv_args a)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wpr = a.wpr, sub = warp % wpr;
    int row = blockIdx.x * (4 / wpr) + warp / wpr, s = 0;
    while (s < a.nseg && row >= a.seg[s].N)
        row -= a.seg[s].N, s++;
    bool live = s < a.nseg;
    float acc[MATVEC_MAX_N];
#pragma unroll
    for (int t = 0; t < MATVEC_MAX_N; t++)
        acc[t] = 0.f;
    if (live) {
        const struct mv_seg &g0 = a.seg[s];
        const uint8_t *wr = (const uint8_t *)g0.w + (size_t)row * g0.rb;
        if (a.stage_u4) { /* wpr == 1 */
            extern __shared__ uint4 stage[];
            wr = stage_row(wr, g0.rb, stage + warp * a.stage_u4, lane);
        }
        row_dot_any(g0.type, wr, a.K, a.x, a.n, acc, sub * 32 + lane, wpr);
    }
    rows_reduce(acc, a.n, wpr);
    if (!live || sub != 0) return;
    const struct mv_seg &g = a.seg[s];
#pragma unroll
    for (int t = 0; t < MATVEC_MAX_N; t++) {
        if (t < a.n) {
            float v = acc[t];
            if (lane == 0) {
                if (g.bias) v += g.bias[row];
                float *y = g.y + (size_t)t * g.N + row;
                *y = a.add ? *y + v : v;
            }
        }
    }
}

/* Shared-memory staging of weight rows: off by default (on the H200 reading
 * rows straight from global memory decodes faster: 0.5B 739 vs 639 tok/s,
 * 7B 133 vs 122); STAGED_CUDA_STAGE=1 turns it on. */
static bool g_stage = false;
static int g_xstage = 1; /* 0: never, 1: when it fits, 2: only when x is smaller than the rows */

void k_set_x_staging(int mode)
{
    g_xstage = mode;
}

void k_set_staging(bool on)
{
    g_stage = on;
}

/* Warps per row: enough blocks to fill the GPU (>= ~4 per SM) with long rows split. */
static int pick_wpr(int rows, int K)
{
    if (K >= 2048 && rows < 8192) return 4;
    if (K >= 1024 && rows < 4096) return 2;
    if (K >= 512 && rows < 2048) return 2;
    return 1;
}

int k_matvec_multi(cudaStream_t st, struct mv_args *a)
{
    int rows = 0;
    for (int s = 0; s < a->nseg; s++) {
        a->seg[s].rb = qt_row_bytes(a->seg[s].type, a->K);
        rows += a->seg[s].N;
    }
    a->wpr = pick_wpr(rows, a->K);
    /* stage rows through shared memory (one row per warp) when they fit */
    size_t rbmax = 0;
    for (int s = 0; s < a->nseg; s++)
        if (a->seg[s].rb > rbmax) rbmax = a->seg[s].rb;
    size_t u4 = (rbmax + 31) / 16 + 1;
    a->stage_u4 = 0;
    if (g_stage && 4 * u4 * 16 <= 40 * 1024) {
        a->wpr = 1;
        a->stage_u4 = (int)u4;
    }
    int rpb = 4 / a->wpr;
    matvec_multi_kernel<<<(rows + rpb - 1) / rpb, 128, a->stage_u4 * 16 * 4, st>>>(*a);
    CUDA_LAUNCHED("matvec_multi");
    return 0;
}

/* h[t][r] = silu(gate_r . xg[t]) * (up_r . xu[t]). */
static __global__ void __launch_bounds__(128)
    matvec_swiglu_kernel(const uint8_t *wg, int tg, size_t rbg, const uint8_t *wu, int tu,
                         size_t rbu, int N, int K, const float *xg, const float *xu, int n,
                         float *h, int wpr, int stage_u4)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int sub = warp % wpr;
    int row = blockIdx.x * (4 / wpr) + warp / wpr;
    bool live = row < N;
    float ag[MATVEC_MAX_N], au[MATVEC_MAX_N];
#pragma unroll
    for (int t = 0; t < MATVEC_MAX_N; t++)
        ag[t] = au[t] = 0.f;
    if (live) {
        const uint8_t *rg = wg + (size_t)row * rbg, *ru = wu + (size_t)row * rbu;
        if (stage_u4) { /* wpr == 1: gate row and up row side by side */
            extern __shared__ uint4 stage[];
            rg = stage_row(rg, rbg, stage + warp * 2 * stage_u4, lane);
            ru = stage_row(ru, rbu, stage + (warp * 2 + 1) * stage_u4, lane);
        }
        row_dot_any(tg, rg, K, xg, n, ag, sub * 32 + lane, wpr);
        row_dot_any(tu, ru, K, xu, n, au, sub * 32 + lane, wpr);
    }
    rows_reduce(ag, n, wpr);
    rows_reduce(au, n, wpr);
    if (!live || sub != 0) return;
#pragma unroll
    for (int t = 0; t < MATVEC_MAX_N; t++) {
        if (t < n) {
            float g = ag[t], u = au[t];
            if (lane == 0) h[(size_t)t * N + row] = g / (1.f + expf(-g)) * u;
        }
    }
}

int k_matvec_swiglu(cudaStream_t st, const void *wg, int tg, const void *wu, int tu, int N, int K,
                    const float *xg, const float *xu, int n, float *h)
{
    int wpr = pick_wpr(N, K);
    size_t rbmax =
        qt_row_bytes(tg, K) > qt_row_bytes(tu, K) ? qt_row_bytes(tg, K) : qt_row_bytes(tu, K);
    int u4 = (int)((rbmax + 31) / 16 + 1), stage_u4 = 0;
    if (g_stage && 8 * (size_t)u4 * 16 <= 40 * 1024) {
        wpr = 1;
        stage_u4 = u4;
    }
    int rpb = 4 / wpr;
    matvec_swiglu_kernel<<<(N + rpb - 1) / rpb, 128, (size_t)stage_u4 * 16 * 8, st>>>(
        (const uint8_t *)wg, tg, qt_row_bytes(tg, K), (const uint8_t *)wu, tu, qt_row_bytes(tu, K),
        N, K, xg, xu, n, h, wpr, stage_u4);
    CUDA_LAUNCHED("matvec_swiglu");
    return 0;
}

/* Block per token: rotate q and k in place, store k and v in the cache. */
static __global__ void rope_store_kernel(float *q, float *k, const float *v, __half *kc, __half *vc,
                                         int n_heads, int n_kv, int hd, int rope_dim, int kind,
                                         float theta_scale, const float2 *tab, struct kv_layout kl,
                                         const int32_t *pos, const int32_t *seq)
{
    int t = blockIdx.x;
    int half_rd = rope_dim / 2;
    float p = (float)pos[t];
    int kv_dim = n_kv * hd;
    float *qt = q + (size_t)t * n_heads * hd;
    float *kt = k + (size_t)t * kv_dim;
    for (int idx = threadIdx.x; idx < (n_heads + n_kv) * half_rd; idx += blockDim.x) {
        int h = idx / half_rd, i = idx % half_rd;
        float sn, cs;
        if (tab) {
            float2 c = tab[(size_t)pos[t] * half_rd + i];
            cs = c.x;
            sn = c.y;
        } else { /* the reference's angles: pos * theta_scale^i by repeated products */
            float theta = p;
            for (int j = 0; j < i; j++)
                theta *= theta_scale;
            sn = sinf(theta);
            cs = cosf(theta);
        }
        float *xh = h < n_heads ? qt + (size_t)h * hd : kt + (size_t)(h - n_heads) * hd;
        int i0 = kind == 0 ? 2 * i : i;
        int i1 = kind == 0 ? 2 * i + 1 : i + half_rd;
        float a = xh[i0], b = xh[i1];
        xh[i0] = __fmaf_rn(a, cs, -__fmul_rn(b, sn)); /* fused as the reference */
        xh[i1] = __fmaf_rn(a, sn, __fmul_rn(b, cs));
    }
    __syncthreads();
    size_t dst = (size_t)seq[t] * kl.sstride + (size_t)pos[t] * kl.pstride;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        kc[dst + j] = __float2half_rn(kt[j]);
        vc[dst + j] = __float2half_rn(v[(size_t)t * kv_dim + j]);
    }
}

int k_rope_store(cudaStream_t st, float *q, float *k, const float *v, __half *kc, __half *vc, int n,
                 int n_heads, int n_kv, int hd, int rope_dim, int kind, float base,
                 const float2 *tab, struct kv_layout kl, const int32_t *pos, const int32_t *seq)
{
    float theta_scale = powf(base, -2.0f / (float)rope_dim); /* on the host, as the reference */
    rope_store_kernel<<<n, 256, 0, st>>>(q, k, v, kc, vc, n_heads, n_kv, hd, rope_dim, kind,
                                         theta_scale, tab, kl, pos, seq);
    CUDA_LAUNCHED("rope_store");
    return 0;
}

/* ---- type-specialised decode kernels (accumulators in registers) ---- */

template <int T, int NT>
static __device__ __forceinline__ void row_dot_t(const uint8_t *wr, int K,
                                                 const float *__restrict__ x, int n,
                                                 float (&acc)[NT], int lane, int step)
{
    if (T == QT_F32 || T == QT_F16 || T == QT_BF16) {
        for (int e = lane; e < K; e += step) {
            float wv = deq1<T>(wr, e);
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (NT == 1 || t < n) acc[t] += wv * x[(size_t)t * K + e];
        }
    } else {
#pragma unroll 2
        for (int g = lane; g < K / 8; g += step) {
            float wv[8];
            deq8<T>(wr, g * 8, wv);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (NT == 1 || t < n) {
                    const float4 *xp = (const float4 *)(x + (size_t)t * K + g * 8);
                    float4 a = xp[0], b = xp[1];
                    acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                              wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
                }
            }
        }
    }
}

template <int NT>
static __device__ __forceinline__ void rows_reduce_t(float (&acc)[NT], int n, int wpr)
{
    __shared__ float part[4][NT];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = warp_sum(acc[t]);
    if (wpr == 1) return;
    __syncthreads();
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < NT; t++)
            part[warp][t] = acc[t];
    __syncthreads();
    if (warp % wpr == 0)
#pragma unroll
        for (int t = 0; t < NT; t++)
            for (int w = 1; w < wpr; w++)
                acc[t] += part[warp + w][t];
}

/* Block-cooperative copy of n16 16-byte units from global (16-byte aligned
 * source) into shared memory. */
static __device__ __forceinline__ void block_copy16(uint4 *dst, const uint4 *src, int n16)
{
#pragma unroll 4
    for (int i = threadIdx.x; i < n16; i += blockDim.x)
        dst[i] = __ldg(src + i);
}

/* Rows of a block staged by all its threads: returns the row start in buf. */
static __device__ __forceinline__ const uint8_t *block_stage_row(const uint8_t *row, size_t rb,
                                                                 uint4 *buf)
{
    uintptr_t a = (uintptr_t)row, a0 = a & ~(uintptr_t)15;
    block_copy16(buf, (const uint4 *)a0, (int)((a + rb - a0 + 15) / 16));
    return (const uint8_t *)buf + (a - a0);
}

/* Row `row` of the concatenated segments: its matrix, output and bias. */
struct seg_row {
    const uint8_t *w;
    float *y;
    const float *bias;
    int N, r;
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
    return o;
}

/* Block = 4 / wpr rows, wpr warps per row. With a.stage_u4 the block first
 * copies its weight rows (and, with a.x_smem, the inputs) into shared memory
 * with 16-byte loads, all issued before any is used; then every warp reads
 * shared memory only. */
template <int T, int NT>
static __global__ void __launch_bounds__(128) mv_fast_kernel(struct mv_args a)
{
    extern __shared__ uint4 dyn[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wpr = a.wpr, sub = warp % wpr, rpb = 4 / wpr;
    int row0 = blockIdx.x * rpb;
    struct seg_row me = find_row(a, row0 + warp / wpr);
    const float *xin = a.x;
    const uint8_t *wr = me.w;
    if (a.stage_u4) {
        uint4 *xs = dyn + (size_t)rpb * a.stage_u4;
        for (int j = 0; j < rpb; j++) {
            struct seg_row o = find_row(a, row0 + j);
            if (o.w) {
                const uint8_t *p = block_stage_row(o.w, a.seg[0].rb, dyn + (size_t)j * a.stage_u4);
                if (j == warp / wpr) wr = p;
            }
        }
        if (a.x_smem) {
            block_copy16(xs, (const uint4 *)a.x, a.n * a.K / 4);
            xin = (const float *)xs;
        }
        __syncthreads();
    }
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.f;
    if (me.w) row_dot_t<T, NT>(wr, a.K, xin, a.n, acc, sub * 32 + lane, 32 * wpr);
    rows_reduce_t<NT>(acc, a.n, wpr);
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
    size_t smem = (size_t)a->stage_u4 * 16 * rpb + (a->x_smem ? (size_t)a->n * a->K * 4 : 0);
    if (a->n == 1)
        mv_fast_kernel<T, 1><<<(rows + rpb - 1) / rpb, 128, smem, st>>>(*a);
    else
        mv_fast_kernel<T, MATVEC_MAX_N><<<(rows + rpb - 1) / rpb, 128, smem, st>>>(*a);
    CUDA_LAUNCHED("mv_fast");
    return 0;
}

/* ---- one token, k-quants: wide loads ----
 * A warp per row; 8 lanes per 256-element super-block, each lane one 32-byte
 * (Q4_K: 16 bytes of quants = 32 elements in one load) share of it, 4
 * super-blocks per warp step. The generic decoders read a byte per element;
 * these move the row with few, wide loads (decode of 7B-sized matrices was
 * load-instruction bound at ~0.9 TB/s). */

/* 16 bytes from a 2-byte aligned address. */
static __device__ __forceinline__ void ld8_a2(const uint8_t *p, uint32_t &lo, uint32_t &hi)
{
    const uint16_t *h = (const uint16_t *)p;
    lo = (uint32_t)h[0] | (uint32_t)h[1] << 16;
    hi = (uint32_t)h[2] | (uint32_t)h[3] << 16;
}

template <int T>
static __device__ __forceinline__ float row_dot1(const uint8_t *__restrict__ wr, int K,
                                                 const float *__restrict__ x, int lane)
{
    float acc = 0.f;
    const int u = lane & 7, nsb = K / 256;
    for (int sb = lane >> 3; sb < nsb; sb += 4) {
        const float *xs = x + (size_t)sb * 256;
        if (T == QT_Q4_K) {
            const uint8_t *b = wr + (size_t)sb * 144; /* rows and blocks 16-byte aligned */
            int c = u >> 1, l0 = (u & 1) * 16;
            uint32_t dd = *(const uint32_t *)b;
            float d = __half2float(__ushort_as_half((unsigned short)(dd & 0xffff)));
            float dm = __half2float(__ushort_as_half((unsigned short)(dd >> 16)));
            int sc0, m0, sc1, m1;
            k4_scale_min(b + 4, 2 * c, sc0, m0);
            k4_scale_min(b + 4, 2 * c + 1, sc1, m1);
            uint4 q = *(const uint4 *)(b + 16 + 32 * c + l0);
            const float4 *xl = (const float4 *)(xs + 64 * c + l0), *xh = xl + 8;
            uint32_t qw[4] = {q.x, q.y, q.z, q.w};
            float slo = 0.f, shi = 0.f, xlo = 0.f, xhi = 0.f;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float4 a = xl[k], h = xh[k];
                uint32_t v = qw[k];
                slo += (float)(v & 15) * a.x + (float)(v >> 8 & 15) * a.y +
                       (float)(v >> 16 & 15) * a.z + (float)(v >> 24 & 15) * a.w;
                shi += (float)(v >> 4 & 15) * h.x + (float)(v >> 12 & 15) * h.y +
                       (float)(v >> 20 & 15) * h.z + (float)(v >> 28) * h.w;
                xlo += a.x + a.y + a.z + a.w;
                xhi += h.x + h.y + h.z + h.w;
            }
            acc += d * ((float)sc0 * slo + (float)sc1 * shi) -
                   dm * ((float)m0 * xlo + (float)m1 * xhi);
        } else { /* Q6_K: 210-byte blocks, 2-byte aligned */
            const uint8_t *b = wr + (size_t)sb * 210;
            int h = u >> 2, l0 = (u & 3) * 8;
            uint32_t a0, a1, b0, b1, h0, h1;
            ld8_a2(b + 64 * h + l0, a0, a1);      /* j = 0 (low), 2 (high nibbles) */
            ld8_a2(b + 64 * h + 32 + l0, b0, b1); /* j = 1, 3 */
            ld8_a2(b + 128 + 32 * h + l0, h0, h1);
            float d = ld_f16(b + 208);
            const int8_t *sc = (const int8_t *)(b + 192 + 8 * h + (l0 >> 4));
            uint32_t ql[2][2] = {{a0, a1}, {b0, b1}}, qh[2] = {h0, h1};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float4 *xp = (const float4 *)(xs + 128 * h + 32 * j + l0);
                float s = 0.f;
#pragma unroll
                for (int w = 0; w < 2; w++) {
                    uint32_t lo = ql[j & 1][w] >> (4 * (j >> 1)), hi = qh[w] >> (2 * j);
                    float4 xv = xp[w];
                    s += (float)((int)((lo & 15) | (hi & 3) << 4) - 32) * xv.x +
                         (float)((int)((lo >> 8 & 15) | (hi >> 8 & 3) << 4) - 32) * xv.y +
                         (float)((int)((lo >> 16 & 15) | (hi >> 16 & 3) << 4) - 32) * xv.z +
                         (float)((int)((lo >> 24 & 15) | (hi >> 24 & 3) << 4) - 32) * xv.w;
                }
                acc += d * (float)sc[2 * j] * s;
            }
        }
    }
    return warp_sum(acc);
}

/* 4 rows per block, a warp each, over the segments of a. */
template <int T> static __global__ void __launch_bounds__(128) mv1_kernel(struct mv_args a)
{
    int lane = threadIdx.x & 31;
    struct seg_row me = find_row(a, blockIdx.x * 4 + (threadIdx.x >> 5));
    if (!me.w) return;
    float v = row_dot1<T>(me.w, a.K, a.x, lane);
    if (lane != 0) return;
    if (me.bias) v += me.bias[me.r];
    float *yp = me.y + me.r;
    *yp = a.add ? *yp + v : v;
}

/* h[row] = silu(Wg_row . xg) * (Wu_row . xu), one token. */
template <int T>
static __global__ void __launch_bounds__(128)
    swiglu1_kernel(const uint8_t *wg, const uint8_t *wu, size_t rb, int N, int K, const float *xg,
                   const float *xu, float *h)
{
    int lane = threadIdx.x & 31, row = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= N) return;
    float g = row_dot1<T>(wg + (size_t)row * rb, K, xg, lane);
    float u = row_dot1<T>(wu + (size_t)row * rb, K, xu, lane);
    if (lane == 0) h[row] = g / (1.f + expf(-g)) * u;
}

/* The one-token k-quant kernels take these. */
static bool wide1(int type, int n, int K)
{
    return n == 1 && (type == QT_Q4_K || type == QT_Q6_K) && K % 256 == 0;
}

/* Staging plan: rows of the block (and the inputs when they fit) in shared
 * memory, within 44 KB. Sets a->stage_u4 / a->x_smem, or leaves them 0. */
static void plan_staging(struct mv_args *a, size_t rb, int rows_per_slot)
{
    int rpb = 4 / a->wpr;
    size_t u4 = (rb + 31) / 16 + 1;
    size_t wbytes = (size_t)rpb * rows_per_slot * u4 * 16;
    size_t xbytes = (size_t)a->n * a->K * 4;
    a->stage_u4 = 0;
    a->x_smem = 0;
    if (!g_stage || wbytes > 40 * 1024) return;
    a->stage_u4 = (int)u4;
    if (a->K % 4 == 0 && wbytes + xbytes <= 44 * 1024 && g_xstage &&
        (g_xstage == 1 || xbytes <= wbytes))
        a->x_smem = 1;
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
        int rc;
        if (wide1(in->seg[i].type, a.n, a.K)) {
            if (in->seg[i].type == QT_Q4_K)
                mv1_kernel<QT_Q4_K><<<(rows + 3) / 4, 128, 0, st>>>(a);
            else
                mv1_kernel<QT_Q6_K><<<(rows + 3) / 4, 128, 0, st>>>(a);
            CUDA_LAUNCHED("mv1");
            continue;
        }
        a.wpr = pick_wpr(rows, a.K);
        plan_staging(&a, a.seg[0].rb, 1);
        switch (in->seg[i].type) {
        case QT_F32:
            rc = mv_fast_launch<QT_F32>(st, &a, rows);
            break;
        case QT_F16:
            rc = mv_fast_launch<QT_F16>(st, &a, rows);
            break;
        case QT_BF16:
            rc = mv_fast_launch<QT_BF16>(st, &a, rows);
            break;
        case QT_Q4_0:
            rc = mv_fast_launch<QT_Q4_0>(st, &a, rows);
            break;
        case QT_Q4_1:
            rc = mv_fast_launch<QT_Q4_1>(st, &a, rows);
            break;
        case QT_Q5_0:
            rc = mv_fast_launch<QT_Q5_0>(st, &a, rows);
            break;
        case QT_Q5_1:
            rc = mv_fast_launch<QT_Q5_1>(st, &a, rows);
            break;
        case QT_Q8_0:
            rc = mv_fast_launch<QT_Q8_0>(st, &a, rows);
            break;
        case QT_Q2_K:
            rc = mv_fast_launch<QT_Q2_K>(st, &a, rows);
            break;
        case QT_Q3_K:
            rc = mv_fast_launch<QT_Q3_K>(st, &a, rows);
            break;
        case QT_Q4_K:
            rc = mv_fast_launch<QT_Q4_K>(st, &a, rows);
            break;
        case QT_Q5_K:
            rc = mv_fast_launch<QT_Q5_K>(st, &a, rows);
            break;
        case QT_Q6_K:
            rc = mv_fast_launch<QT_Q6_K>(st, &a, rows);
            break;
        default:
            rc = k_matvec_multi(st, &a);
            break;
        }
        if (rc < 0) return rc;
    }
    return 0;
}

template <int T, int NT>
static __global__ void __launch_bounds__(128)
    swiglu_fast_kernel(const uint8_t *wg, const uint8_t *wu, size_t rb, int N, int K,
                       const float *xg, const float *xu, int n, float *h, int wpr, int stage_u4,
                       int x_smem)
{
    extern __shared__ uint4 dyn[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int sub = warp % wpr, rpb = 4 / wpr;
    int row0 = blockIdx.x * rpb, row = row0 + warp / wpr;
    bool live = row < N;
    const uint8_t *rg = wg + (size_t)row * rb, *ru = wu + (size_t)row * rb;
    if (stage_u4) {
        for (int j = 0; j < rpb && row0 + j < N; j++) {
            const uint8_t *pg =
                block_stage_row(wg + (size_t)(row0 + j) * rb, rb, dyn + (size_t)(2 * j) * stage_u4);
            const uint8_t *pu = block_stage_row(wu + (size_t)(row0 + j) * rb, rb,
                                                dyn + (size_t)(2 * j + 1) * stage_u4);
            if (j == warp / wpr) rg = pg, ru = pu;
        }
        if (x_smem) {
            uint4 *xs = dyn + (size_t)2 * rpb * stage_u4;
            block_copy16(xs, (const uint4 *)xg, n * K / 4);
            if (xu != xg) {
                block_copy16(xs + n * K / 4, (const uint4 *)xu, n * K / 4);
                xu = (const float *)(xs + n * K / 4);
            } else {
                xu = (const float *)xs;
            }
            xg = (const float *)xs;
        }
        __syncthreads();
    }
    float ag[NT], au[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        ag[t] = au[t] = 0.f;
    if (live) {
        row_dot_t<T, NT>(rg, K, xg, n, ag, sub * 32 + lane, 32 * wpr);
        row_dot_t<T, NT>(ru, K, xu, n, au, sub * 32 + lane, 32 * wpr);
    }
    rows_reduce_t<NT>(ag, n, wpr);
    rows_reduce_t<NT>(au, n, wpr);
    if (!live || sub != 0 || lane != 0) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (NT == 1 || t < n) h[(size_t)t * N + row] = ag[t] / (1.f + expf(-ag[t])) * au[t];
}

template <int T>
static int swiglu_fast_launch(cudaStream_t st, const void *wg, const void *wu, int N, int K,
                              const float *xg, const float *xu, int n, float *h)
{
    struct mv_args a;
    memset(&a, 0, sizeof(a));
    a.K = K;
    a.n = xg == xu ? n : 2 * n; /* inputs to copy */
    a.wpr = pick_wpr(N, K);
    size_t rb = qt_row_bytes(T, K);
    plan_staging(&a, rb, 2);
    int rpb = 4 / a.wpr;
    size_t smem = (size_t)a.stage_u4 * 16 * 2 * rpb + (a.x_smem ? (size_t)a.n * K * 4 : 0);
    if (n == 1)
        swiglu_fast_kernel<T, 1><<<(N + rpb - 1) / rpb, 128, smem, st>>>(
            (const uint8_t *)wg, (const uint8_t *)wu, rb, N, K, xg, xu, n, h, a.wpr, a.stage_u4,
            a.x_smem);
    else
        swiglu_fast_kernel<T, MATVEC_MAX_N><<<(N + rpb - 1) / rpb, 128, smem, st>>>(
            (const uint8_t *)wg, (const uint8_t *)wu, rb, N, K, xg, xu, n, h, a.wpr, a.stage_u4,
            a.x_smem);
    CUDA_LAUNCHED("swiglu_fast");
    return 0;
}

int k_swiglu_fast(cudaStream_t st, const void *wg, int tg, const void *wu, int tu, int N, int K,
                  const float *xg, const float *xu, int n, float *h)
{
    if (tg != tu) return k_matvec_swiglu(st, wg, tg, wu, tu, N, K, xg, xu, n, h);
    if (wide1(tg, n, K)) {
        size_t rb = qt_row_bytes(tg, K);
        if (tg == QT_Q4_K)
            swiglu1_kernel<QT_Q4_K><<<(N + 3) / 4, 128, 0, st>>>(
                (const uint8_t *)wg, (const uint8_t *)wu, rb, N, K, xg, xu, h);
        else
            swiglu1_kernel<QT_Q6_K><<<(N + 3) / 4, 128, 0, st>>>(
                (const uint8_t *)wg, (const uint8_t *)wu, rb, N, K, xg, xu, h);
        CUDA_LAUNCHED("swiglu1");
        return 0;
    }
    DISPATCH_TYPE(tg, swiglu_fast_launch, st, wg, wu, N, K, xg, xu, n, h);
}
