/* Matrix products in the reference's float order (see exact.cuh). */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/exact.cuh"
#include "gpu_worker/cuda/quant.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

/* The types with a reference-order kernel. */
#define EXACT_TYPES(X)                                                                             \
    X(QT_F32) X(QT_F16) X(QT_BF16) X(QT_Q4_0) X(QT_Q5_0) X(QT_Q8_0) X(QT_Q6_K) X(QT_Q5_0G)          \
        X(QT_Q8_0G) X(QT_Q6_KG)
#define EXACT_CASE(T) case T:

bool mm_exact_supported(int type)
{
    switch (type) {
        EXACT_TYPES(EXACT_CASE)
        return true;
    default:
        return false;
    }
}

/* Sum of the 16 lanes of each half-warp, in the pairing of a 512-bit
 * reduce-add (the result in every lane of the half). */
static __device__ __forceinline__ float sum16(float v)
{
#pragma unroll
    for (int o = 8; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum of lanes 0..7 of each 8-lane group, as a 256-bit horizontal add. */
static __device__ __forceinline__ float sum8(float v)
{
#pragma unroll
    for (int o = 4; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int T> static __device__ __forceinline__ float fval(const void *p, int i)
{
    if (T == QT_F32) return ((const float *)p)[i];
    if (T == QT_F16) return __half2float(((const __half *)p)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

/* Float weights: lane L of 16 (all 32 lanes of the warp take part in the
 * shuffles; lanes of an out-of-range output compute and discard). */
template <int T> static __device__ float dot_float(const void *wr, const void *xr, int K, int L)
{
    float acc = 0.f;
    int np;
    if (T == QT_BF16) {
        np = K & ~31;
        for (int i = 0; i < np; i += 32) {
            acc = __fadd_rn(acc, __fmul_rn(fval<T>(wr, i + 2 * L + 1), fval<T>(xr, i + 2 * L + 1)));
            acc = __fadd_rn(acc, __fmul_rn(fval<T>(wr, i + 2 * L), fval<T>(xr, i + 2 * L)));
        }
    } else {
        np = K & ~15;
        for (int i = 0; i < np; i += 16)
            acc = __fmaf_rn(fval<T>(wr, i + L), fval<T>(xr, i + L), acc);
    }
    double s = sum16(acc);
    for (int i = np; i < K; i++)
        s += (double)__fmul_rn(fval<T>(wr, i), fval<T>(xr, i));
    return (float)s;
}

/* Q4_0 / Q5_0 / Q8_0 with Q8_0 activations: lane L < 8 of 16. */
template <int T>
static __device__ float dot_32(const uint8_t *wr, const int8_t *xq, const float *xd, int K, int L)
{
    float acc = 0.f;
    if (L < 8)
        for (int b = 0; b < K / 32; b++) {
            const uint8_t *blk = wr + (size_t)b * qtraits<T>::BS;
            float d = __fmul_rn(block_d<T>(blk), xd[b]);
            int p = __dp4a((int)quants4<T>(blk, 4 * L), *(const int *)(xq + 32 * b + 4 * L), 0);
            acc = __fmaf_rn(d, (float)p, acc);
        }
    return sum8(acc);
}

/* Q6_K (T: QT_Q6_K or QT_Q6_KG) with Q8_K activations: lane L < 8 of 16. */
template <int T>
static __device__ float dot_q6_k(const uint8_t *wr, const int8_t *xq, const float *xd,
                                 const int32_t *xb, int K, int L)
{
    float acc = 0.f;
    if (L < 8)
        for (int b = 0; b < K / 256; b++) {
            const uint8_t *blk = wr + (size_t)b * qtraits<T>::BS;
            int sc[16];
            for (int s = 0; s < 16; s++) {
                int mn;
                kscale<T>(blk, s, sc[s], mn);
            }
            const int8_t *x = xq + 256 * b;
            const int32_t *bs = xb + 16 * b;
            int sumi = -32 * (sc[2 * L] * bs[2 * L] + sc[2 * L + 1] * bs[2 * L + 1]);
            for (int h = 0; h < 2; h++)
                for (int g = 0; g < 4; g++) {
                    int e = 128 * h + 32 * g + 4 * L;
                    uint32_t q = __vadd4(quants4<T>(blk, e), 0x20202020u); /* 0..63 */
                    sumi += sc[8 * h + 2 * g + L / 4] * __dp4a((int)q, *(const int *)(x + e), 0);
                }
            float d, dm;
            kdmin<T>(blk, d, dm);
            d = __fmul_rn(xd[b], d);
            acc = __fmaf_rn(d, (float)sumi, acc);
        }
    return sum8(acc);
}

template <int T>
static __global__ void __launch_bounds__(128)
    mm_exact_kernel(const uint8_t *__restrict__ w, size_t rb, int N, int K, const float *xf,
                    const void *xh, struct mmq_act a, int n, float *__restrict__ y)
{
    size_t o = (size_t)blockIdx.x * 8 + threadIdx.x / 16;
    int L = threadIdx.x & 15;
    bool ok = o < (size_t)N * n;
    int t = ok ? (int)(o / N) : 0, r = ok ? (int)(o % N) : 0;
    const uint8_t *wr = w + (size_t)r * rb;
    float v;
    if (T == QT_F32) {
        v = dot_float<T>(wr, xf + (size_t)t * K, K, L);
    } else if (T == QT_F16 || T == QT_BF16) {
        v = dot_float<T>(wr, (const uint16_t *)xh + (size_t)t * K, K, L);
    } else if (qbase(T) == QT_Q6_K) {
        v = dot_q6_k<T>(wr, a.q + (size_t)t * K, a.d + (size_t)t * (K / 256),
                     a.bsum + (size_t)t * (K / 16), K, L);
    } else {
        v = dot_32<T>(wr, a.q + (size_t)t * K, a.d + (size_t)t * (K / 32), K, L);
    }
    if (ok && L == 0) y[(size_t)t * N + r] = v;
}

template <int T>
static int exact_launch(cudaStream_t st, const void *w, int N, int K, const float *xf,
                        const void *xh, const struct mmq_act *a, int n, float *y)
{
    size_t outs = (size_t)N * n;
    mm_exact_kernel<T><<<(unsigned)((outs + 7) / 8), 128, 0, st>>>(
        (const uint8_t *)w, qt_row_bytes(T, K), N, K, xf, xh, *a, n, y);
    CUDA_LAUNCHED("mm_exact");
    return 0;
}

int k_mm_exact(cudaStream_t st, const void *w, int type, int N, int K, const float *xf,
               const void *xh, const struct mmq_act *a, int n, float *y)
{
#define EXACT_LAUNCH(T)                                                                            \
    case T:                                                                                        \
        return exact_launch<T>(st, w, N, K, xf, xh, a, n, y);
    switch (type) {
        EXACT_TYPES(EXACT_LAUNCH)
    default:
        log_error("cuda: no reference-order product for type %d", type);
        return ST_EUNSUPPORTED;
    }
#undef EXACT_LAUNCH
}
