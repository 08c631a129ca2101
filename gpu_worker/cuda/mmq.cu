/* Integer tensor-core products of quantized weights and batches (see mmq.cuh). */
#include "gpu_worker/cuda/cuda_backend.h"
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/mmq.cuh"
#include "gpu_worker/cuda/mvq.cuh"
#include "gpu_worker/cuda/quant.cuh"

/* A block computes MMQ_BM weight rows x MMQ_BN tokens, stepping through K in
 * chunks of MMQ_KC elements (one k-quant super-block, or 8 legacy blocks).
 * Its 4 warps each take 16 tokens of the tile: 2 x 2 mma tiles of 16 rows x
 * 8 tokens. Shared rows are padded to MMQ_LD bytes so that the 8 rows a
 * fragment load touches fall in different banks. */
#define MMQ_BM 32
#define MMQ_BN 64
#define MMQ_KC 256
#define MMQ_LD (MMQ_KC + 16)
#define MMQ_THREADS 128

template <int T> static bool supported_type()
{
    return true;
}

/* The types DISPATCH_QUANT takes: one list. */
bool mmq_supported(int type)
{
    switch (type) {
        DISPATCH_QUANT_CASES(supported_type);
    default:
        return false;
    }
}

int mmq_class(int type)
{
    return type == QT_Q2_K || type == QT_Q3_K || type == QT_Q4_K || type == QT_Q5_K ||
                   type == QT_Q6_K || type == QT_Q6_KG
               ? 4
               : 3;
}

/* ---- activations ---- */

/* A warp per block (quant.cuh: q8_0_store, q8_k_store). */
static __global__ void quant_q8_0_kernel(const float *x, size_t nblk, struct mmq_act a)
{
    griddep_launch();
    griddep_wait();
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    int lane = threadIdx.x & 31;
    q8_0_store(x[blk * 32 + lane], lane, blk, a.q, a.d, a.s);
}

static __global__ void quant_q8_k_kernel(const float *x, size_t nblk, struct mmq_act a)
{
    griddep_launch();
    griddep_wait();
    size_t blk = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblk) return;
    q8_k_store(x + blk * 256, threadIdx.x & 31, blk, a.q, a.d, a.bsum);
}

int k_mmq_quantize(cudaStream_t st, int cls, const float *x, int n, int K, struct mmq_act *a)
{
    a->n = n;
    a->K = K;
    a->cls = cls;
    size_t nblk = (size_t)n * K / (cls == 4 ? 256 : 32);
    unsigned grid = (unsigned)((nblk + 7) / 8);
    if (cls == 4)
        CUDA_TRY(launch_pdl(quant_q8_k_kernel, grid, 256, 0, st, x, nblk, *a));
    else
        CUDA_TRY(launch_pdl(quant_q8_0_kernel, grid, 256, 0, st, x, nblk, *a));
    return 0;
}

/* ---- the product ---- */

struct __align__(16) mmq_smem
{
    int8_t w[MMQ_BM][MMQ_LD];
    int8_t x[MMQ_BN][MMQ_LD];
    float wd[MMQ_BM][8], wm[MMQ_BM][8]; /* per legacy block; k-quants: [0] = d, dmin */
    float xd[MMQ_BN][8], xs[MMQ_BN][8]; /* per legacy block (d, s); k-quants: [0] = d */
    int8_t wsc[MMQ_BM][16], wmn[MMQ_BM][16];
    int32_t xb[MMQ_BN][16];
};

static __device__ __forceinline__ void mma_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 "
                 "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

/* Fragments of k16 step s: A (weights, rows 16i + g and + 8) and B (tokens). */
static __device__ __forceinline__ void load_frags(const struct mmq_smem &sm, int s, int tb, int g,
                                                  int tig, uint32_t (&a)[2][2], uint32_t (&bf)[2])
{
    int col = 16 * s + 4 * tig;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        a[i][0] = *(const uint32_t *)&sm.w[16 * i + g][col];
        a[i][1] = *(const uint32_t *)&sm.w[16 * i + g + 8][col];
    }
#pragma unroll
    for (int j = 0; j < 2; j++)
        bf[j] = *(const uint32_t *)&sm.x[tb + 8 * j + g][col];
}

template <int T>
static __global__ void __launch_bounds__(MMQ_THREADS)
    mmq_kernel(const uint8_t *__restrict__ w, size_t rb, int N, int K, struct mmq_act a, int cps,
               float *__restrict__ y)
{
    constexpr bool KQ = qtraits<T>::QK == 256;
    constexpr bool HAS_M = T == QT_Q4_1 || T == QT_Q5_1;
    constexpr bool KMIN = T == QT_Q2_K || T == QT_Q4_K || T == QT_Q5_K;
    constexpr int BS = qtraits<T>::BS;
    __shared__ struct mmq_smem sm;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, tig = lane & 3, tb = warp * 16;
    const int r0 = blockIdx.x * MMQ_BM, t0 = blockIdx.y * MMQ_BN;
    const int n = a.n;
    float acc[2][2][4] = {};

    /* split z takes chunks [z * cps, (z + 1) * cps) and writes its partial sums
     * to a.part[z] (gridDim.z > 1), else the block writes y */
    const int kend = min(K, (int)(blockIdx.z + 1) * cps * MMQ_KC);
    if (gridDim.z > 1) y = a.part + (size_t)blockIdx.z * n * N;
    for (int k0 = blockIdx.z * cps * MMQ_KC; k0 < kend; k0 += MMQ_KC) {
        /* elements of this chunk: MMQ_KC, or the legacy tail */
        const int kc = K - k0 < MMQ_KC ? K - k0 : MMQ_KC;
        const int nb = kc / 32; /* legacy blocks in the chunk */
        /* weights -> shared int8 quants and scales */
        if (KQ) {
            int row = tid / 4, part = tid % 4;
            const uint8_t *b =
                r0 + row < N ? w + (size_t)(r0 + row) * rb + (size_t)(k0 / 256) * BS : nullptr;
#pragma unroll 4
            for (int i = 0; i < 16; i++) {
                int e = 64 * part + 4 * i;
                *(uint32_t *)&sm.w[row][e] = b ? quants4<T>(b, e) : 0u;
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int s = 4 * part + i, sc = 0, mn = 0;
                if (b) kscale<T>(b, s, sc, mn);
                sm.wsc[row][s] = (int8_t)sc;
                sm.wmn[row][s] = (int8_t)mn;
            }
            if (part == 0) {
                float d = 0.f, dm = 0.f;
                if (b) kdmin<T>(b, d, dm);
                sm.wd[row][0] = d;
                sm.wm[row][0] = dm;
            }
        } else {
            for (int p = tid; p < MMQ_BM * 8; p += MMQ_THREADS) {
                int row = p / 8, blk = p % 8;
                const uint8_t *b = r0 + row < N && blk < nb
                                       ? w + (size_t)(r0 + row) * rb + (size_t)(k0 / 32 + blk) * BS
                                       : nullptr;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    *(uint32_t *)&sm.w[row][32 * blk + 4 * i] = b ? quants4<T>(b, 4 * i) : 0u;
                sm.wd[row][blk] = b ? block_d<T>(b) : 0.f;
                sm.wm[row][blk] = b && HAS_M ? ld_f16(b + 2) : 0.f;
            }
        }
        /* activations -> shared (16-byte copies) */
        const int c16 = kc / 16;
        for (int i = tid; i < MMQ_BN * c16; i += MMQ_THREADS) {
            int t = i / c16, c = i % c16;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (t0 + t < n) v = *(const uint4 *)(a.q + (size_t)(t0 + t) * K + k0 + 16 * c);
            *(uint4 *)&sm.x[t][16 * c] = v;
        }
        if (KQ) {
            for (int i = tid; i < MMQ_BN * 16; i += MMQ_THREADS) {
                int t = i / 16, s = i % 16;
                bool ok = t0 + t < n;
                sm.xb[t][s] = ok ? a.bsum[(size_t)(t0 + t) * (K / 16) + k0 / 16 + s] : 0;
                if (s == 0) sm.xd[t][0] = ok ? a.d[(size_t)(t0 + t) * (K / 256) + k0 / 256] : 0.f;
            }
        } else {
            for (int i = tid; i < MMQ_BN * nb; i += MMQ_THREADS) {
                int t = i / nb, blk = i % nb;
                bool ok = t0 + t < n;
                size_t at = (size_t)(t0 + t) * (K / 32) + k0 / 32 + blk;
                sm.xd[t][blk] = ok ? a.d[at] : 0.f;
                sm.xs[t][blk] = ok ? a.s[at] : 0.f;
            }
        }
        __syncthreads();

        if (KQ) {
            int isum[2][2][4] = {};
#pragma unroll 4
            for (int s = 0; s < 16; s++) {
                uint32_t af[2][2], bf[2];
                load_frags(sm, s, tb, g, tig, af, bf);
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    int sc_lo = sm.wsc[16 * i + g][s], sc_hi = sm.wsc[16 * i + g + 8][s];
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        int c[4] = {0, 0, 0, 0};
                        mma_s8(c, af[i][0], af[i][1], bf[j]);
                        isum[i][j][0] += c[0] * sc_lo;
                        isum[i][j][1] += c[1] * sc_lo;
                        isum[i][j][2] += c[2] * sc_hi;
                        isum[i][j][3] += c[3] * sc_hi;
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int r = 16 * i + g + (e >= 2 ? 8 : 0), t = tb + 8 * j + 2 * tig + (e & 1);
                        int msum = 0;
                        if (KMIN)
#pragma unroll
                            for (int s = 0; s < 16; s++)
                                msum += sm.wmn[r][s] * sm.xb[t][s];
                        acc[i][j][e] += sm.xd[t][0] * (sm.wd[r][0] * (float)isum[i][j][e] -
                                                       sm.wm[r][0] * (float)msum);
                    }
        } else {
            for (int blk = 0; blk < nb; blk++) {
                int c[2][2][4] = {};
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    uint32_t af[2][2], bf[2];
                    load_frags(sm, 2 * blk + h, tb, g, tig, af, bf);
#pragma unroll
                    for (int i = 0; i < 2; i++)
#pragma unroll
                        for (int j = 0; j < 2; j++)
                            mma_s8(c[i][j], af[i][0], af[i][1], bf[j]);
                }
                /* this thread's rows 16i + g (+8) and tokens tb + 8j + 2tig (+1) */
                float wd[2][2], wm[2][2], xd[2][2], xs[2][2];
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int u = 0; u < 2; u++) {
                        wd[i][u] = sm.wd[16 * i + g + 8 * u][blk];
                        wm[i][u] = HAS_M ? sm.wm[16 * i + g + 8 * u][blk] : 0.f;
                        xd[i][u] = sm.xd[tb + 8 * i + 2 * tig + u][blk];
                        xs[i][u] = HAS_M ? sm.xs[tb + 8 * i + 2 * tig + u][blk] : 0.f;
                    }
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            int u = e >= 2, v = e & 1;
                            acc[i][j][e] += wd[i][u] * xd[j][v] * (float)c[i][j][e];
                            if (HAS_M) acc[i][j][e] += wm[i][u] * xs[j][v];
                        }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = r0 + 16 * i + g + (e >= 2 ? 8 : 0);
                int t = t0 + tb + 8 * j + 2 * tig + (e & 1);
                if (r < N && t < n) y[(size_t)t * N + r] = acc[i][j][e];
            }
}

/* y = sum of the split partials, in split order (a fixed order per shape). */
static __global__ void mmq_reduce_kernel(const float *part, int splits, size_t total, float *y)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    float v = part[i];
    for (int z = 1; z < splits; z++)
        v += part[(size_t)z * total + i];
    y[i] = v;
}

static int g_sms;

/* K splits of an N x K product: enough blocks for two waves of the GPU when
 * the rows alone give fewer. Depends on (N, K) only, so a token's result
 * does not depend on its batch. */
static int mmq_splits(int N, int K, int *cps)
{
    if (!g_sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            g_sms = 132;
    }
    int gx = (N + MMQ_BM - 1) / MMQ_BM, chunks = (K + MMQ_KC - 1) / MMQ_KC;
    int want = gx >= 2 * g_sms ? 1 : (2 * g_sms + gx - 1) / gx;
    if (want > chunks) want = chunks;
    *cps = (chunks + want - 1) / want;
    return (chunks + *cps - 1) / *cps;
}

template <int T>
static int mmq_launch(cudaStream_t st, const void *w, int N, int K, const struct mmq_act *a,
                      float *y)
{
    size_t rb = qt_row_bytes(T, K);
    int cps, splits = mmq_splits(N, K, &cps);
    size_t total = (size_t)a->n * N;
    if (splits > 1 && (size_t)splits * total > a->part_elems) {
        log_error("cuda: mmq: %d splits of %zu outputs exceed the partials buffer (%zu)", splits,
                  total, a->part_elems);
        return ST_EINVAL;
    }
    dim3 grid((unsigned)((N + MMQ_BM - 1) / MMQ_BM), (unsigned)((a->n + MMQ_BN - 1) / MMQ_BN),
              (unsigned)splits);
    mmq_kernel<T><<<grid, MMQ_THREADS, 0, st>>>((const uint8_t *)w, rb, N, K, *a, cps, y);
    CUDA_LAUNCHED("mmq");
    if (splits > 1) {
        mmq_reduce_kernel<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(a->part, splits, total,
                                                                           y);
        CUDA_LAUNCHED("mmq_reduce");
    }
    return 0;
}

size_t mmq_part_elems(int max_n)
{
    /* a split product has fewer than 2 * SMs row blocks, so splits * N <
     * (2 * SMs / gx + 1) * gx * MMQ_BM <= 4 * SMs * MMQ_BM; 160 SMs of margin */
    return (size_t)4 * 160 * MMQ_BM * max_n;
}

int k_mmq(cudaStream_t st, const void *w, int type, int N, int K, const struct mmq_act *a, float *y)
{
    if (a->K != K || a->cls != mmq_class(type)) {
        log_error("cuda: mmq: activations of class %d, K %d for a type-%d matrix of K %d", a->cls,
                  a->K, type, K);
        return ST_EINVAL;
    }
    DISPATCH_QUANT(type, mmq_launch, st, w, N, K, a, y);
}

/* ---- test entry (cuda_backend.h) ---- */

/* The products the tests ask for: k_mmq, k_mvq (small) or k_swiglu_q
 * (swiglu: w is N gate rows then N up rows, file layout only). */
static int product_check(int type, int N, int K, int n, const void *w, const float *x, float *y,
                         bool small, bool swiglu)
{
    if ((small || swiglu) && (n < 1 || n > MATVEC_MAX_N)) return ST_EINVAL;
    if (!mmq_supported(type) || (swiglu && type != qbase(type))) return ST_EINVAL;
    const size_t rb = qt_row_bytes(type, K), wb = rb * N * (swiglu ? 2 : 1);
    uint8_t *dw = nullptr;
    float *dx = nullptr, *dy = nullptr;
    struct mmq_act a = {};
    a.part_elems = mmq_part_elems(n);
    int rc = ST_EDEVICE;
    size_t nk = (size_t)n * K;
    /* + 256: the kernels may read a 16-byte word past a row's last block */
    if (cudaMalloc(&dw, wb + 256) == cudaSuccess && cudaMalloc(&dx, nk * 4) == cudaSuccess &&
        cudaMalloc(&dy, (size_t)n * N * 4) == cudaSuccess && cudaMalloc(&a.q, nk) == cudaSuccess &&
        cudaMalloc(&a.d, nk / 32 * 4) == cudaSuccess &&
        cudaMalloc(&a.s, nk / 32 * 4) == cudaSuccess &&
        cudaMalloc(&a.bsum, nk / 16 * 4) == cudaSuccess &&
        cudaMalloc(&a.part, mmq_part_elems(n) * 4) == cudaSuccess &&
        cudaMemcpy(dw, w, wb, cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(dx, x, nk * 4, cudaMemcpyHostToDevice) == cudaSuccess) {
        rc = 0;
        if (type != qbase(type)) { /* a grouped type: the rows into the device layout */
            struct gpu_layout_tensor lt = {(uint32_t)qbase(type), 0, rb * N};
            rc = gpu_layout_grouped(lt.type, lt.size) && gpu_layout_apply(dw, &lt, 1, NULL) == 1
                     ? 0
                     : ST_EINVAL;
        }
        if (rc == 0) rc = k_mmq_quantize(0, mmq_class(type), dx, n, K, &a);
        if (rc == 0 && swiglu) {
            rc = k_swiglu_q(0, dw, dw + rb * N, type, N, K, &a, &a, dy);
        } else if (rc == 0 && small) {
            struct mv_args m = {};
            m.nseg = 1;
            m.K = K;
            m.n = n;
            m.seg[0].w = dw;
            m.seg[0].type = type;
            m.seg[0].N = N;
            m.seg[0].y = dy;
            rc = k_mvq(0, &m, &a);
        } else if (rc == 0) {
            rc = k_mmq(0, dw, type, N, K, &a, dy);
        }
        if (rc == 0 && cudaMemcpy(y, dy, (size_t)n * N * 4, cudaMemcpyDeviceToHost) != cudaSuccess)
            rc = ST_EDEVICE;
    }
    if (rc == ST_EDEVICE)
        log_error("cuda: mmq product: %s", cudaGetErrorString(cudaGetLastError()));
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(a.q);
    cudaFree(a.d);
    cudaFree(a.s);
    cudaFree(a.bsum);
    cudaFree(a.part);
    return rc;
}

extern "C" int cuda_mmq_product(int type, int N, int K, int n, const void *w, const float *x,
                                float *y, bool small)
{
    return product_check(type, N, K, n, w, x, y, small, false);
}

extern "C" int cuda_swiglu_product(int type, int N, int K, int n, const void *w, const float *x,
                                   float *y)
{
    return product_check(type, N, K, n, w, x, y, true, true);
}
