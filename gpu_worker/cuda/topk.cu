/* topk.cu - logits summaries on the GPU; see topk.cuh. */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/topk.cuh"

#include <math.h>

#define TOPK_THREADS 256
#define TOPK_PER (TOPK_CHUNK / TOPK_THREADS) /* keys per thread, both passes */

_Static_assert(TOPK_MAX_CHUNKS * LOGITS_TOP == TOPK_THREADS * TOPK_PER,
               "pass 2 holds every chunk's candidates in registers");

struct chunk_stat {
    double max, sum;
};

/* The order-preserving key of logit v of token id (0 for NaN). */
static __device__ __forceinline__ uint64_t top_key(float v, int id)
{
    if (isnan(v)) return 0;
    uint32_t b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((uint64_t)b << 32) | (uint32_t)~(uint32_t)id;
}

static __device__ __forceinline__ float key_logit(uint64_t k)
{
    uint32_t h = (uint32_t)(k >> 32);
    return __uint_as_float((h & 0x80000000u) ? (h & 0x7fffffffu) : ~h);
}

static __device__ __forceinline__ int32_t key_id(uint64_t k)
{
    return (int32_t)~(uint32_t)k;
}

/* The (max, sum of exp(v - max)) of the block's parts s: the largest max,
 * then each part's sum scaled to it (one exp per part, all in parallel) and
 * summed, the same in every thread. */
static __device__ struct chunk_stat block_stat(struct chunk_stat s, double *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double m = s.max;
    for (int o = 16; o > 0; o >>= 1)
        m = fmax(m, __shfl_xor_sync(~0u, m, o));
    if (lane == 0) sh[warp] = m;
    __syncthreads();
    m = sh[0];
    for (int w = 1; w < TOPK_THREADS / 32; w++)
        m = fmax(m, sh[w]);
    double v = s.max == -INFINITY ? 0. : s.sum * exp(s.max - m);
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(~0u, v, o);
    __syncthreads(); /* every thread has read sh */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = sh[0];
    for (int w = 1; w < TOPK_THREADS / 32; w++)
        v += sh[w];
    struct chunk_stat r = {m, m == -INFINITY ? 0. : v};
    return r;
}

struct select_smem {
    unsigned hist[256];
    uint64_t prefix, mask;
    int need, done, cnt;
};

/*
 * The LOGITS_TOP largest nonzero keys among every thread's key[] into
 * out[0..*n) (unordered). Radix selection: each pass counts, among the keys
 * that match the boundary prefix so far, the next 8 bits; warp 0 finds the
 * bin that holds the LOGITS_TOP-th key and extends the prefix; it stops when
 * that bin holds exactly the keys still wanted (keys are unique, except the
 * 0s of NaNs and padding, which are neither counted nor taken; with fewer
 * nonzero keys than wanted no bin is chosen and all of them are taken).
 */
static __device__ int select_top(const uint64_t (&key)[TOPK_PER], struct select_smem &sm,
                                 uint64_t *out)
{
    int tid = threadIdx.x, lane = tid & 31;
    if (tid == 0) {
        sm.prefix = 0;
        sm.mask = 0;
        sm.need = LOGITS_TOP;
        sm.done = 0;
        sm.cnt = 0;
    }
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += TOPK_THREADS)
            sm.hist[i] = 0;
        __syncthreads();
        if (sm.done) break;
        uint64_t prefix = sm.prefix, mask = sm.mask;
#pragma unroll
        for (int j = 0; j < TOPK_PER; j++)
            if (key[j] && (key[j] & mask) == prefix) /* 0s (NaN, padding) are never taken */
                atomicAdd(&sm.hist[(key[j] >> shift) & 255], 1u);
        __syncthreads();
        if (tid < 32) {
            /* lane l holds bins 255 - 8l .. 248 - 8l, highest first */
            unsigned c[8], s = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                c[j] = sm.hist[255 - 8 * lane - j];
                s += c[j];
            }
            unsigned need = (unsigned)sm.need, incl = s;
            for (int o = 1; o < 32; o <<= 1) {
                unsigned t = __shfl_up_sync(~0u, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned above = incl - s; /* keys in higher bins */
            if (above < need && need <= incl) {
                for (int j = 0; j < 8; j++) {
                    if (above + c[j] >= need) {
                        sm.need = (int)(need - above);
                        sm.prefix = prefix | ((uint64_t)(255 - 8 * lane - j) << shift);
                        sm.mask = mask | (0xffull << shift);
                        sm.done = c[j] == need - above;
                        break;
                    }
                    above += c[j];
                }
            }
        }
        __syncthreads();
    }
    uint64_t prefix = sm.prefix, mask = sm.mask;
#pragma unroll
    for (int j = 0; j < TOPK_PER; j++) {
        if (key[j] && (key[j] & mask) >= prefix) {
            int s = atomicAdd(&sm.cnt, 1);
            if (s < LOGITS_TOP) out[s] = key[j];
        }
    }
    __syncthreads();
    return sm.cnt < LOGITS_TOP ? sm.cnt : LOGITS_TOP;
}

/* Pass 1: block (c, r) takes logits [c * TOPK_CHUNK, +TOPK_CHUNK) of row r. */
static __global__ void __launch_bounds__(TOPK_THREADS)
    topk_chunks(const float *__restrict__ lg, int V, int nchunk, uint64_t *cand,
                struct chunk_stat *stats)
{
    __shared__ struct select_smem sm;
    __shared__ float sh[TOPK_THREADS / 32];
    griddep_launch();
    griddep_wait();
    int c = blockIdx.x, r = blockIdx.y;
    const float *row = lg + (size_t)r * V;
    uint64_t key[TOPK_PER];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < TOPK_PER; j++) {
        int i = c * TOPK_CHUNK + j * TOPK_THREADS + threadIdx.x;
        float v = i < V ? row[i] : NAN;
        key[j] = top_key(v, i);
        if (!isnan(v)) m = fmaxf(m, v);
    }
    /* the chunk's max and sum in float (double exps here cost as much as
     * the selection, ncu); the rows' merge of the chunks is in double */
    m = block_reduce<true>(m, sh);
    float part = 0.f;
#pragma unroll
    for (int j = 0; j < TOPK_PER; j++)
        if (key[j] && m != -INFINITY) part += expf(key_logit(key[j]) - m);
    struct chunk_stat s = {m, block_reduce<false>(part, sh)};
    uint64_t *out = cand + ((size_t)r * nchunk + c) * LOGITS_TOP;
    int n = select_top(key, sm, out);
    for (int i = n + (int)threadIdx.x; i < LOGITS_TOP; i += TOPK_THREADS)
        out[i] = 0;
    if (threadIdx.x == 0) stats[(size_t)r * nchunk + c] = s;
}

/* Pass 2: block r merges row r's chunks. */
static __global__ void __launch_bounds__(TOPK_THREADS)
    topk_rows(const uint64_t *__restrict__ cand, const struct chunk_stat *__restrict__ stats,
              int V, int nchunk, struct logits_top *top)
{
    __shared__ struct select_smem sm;
    __shared__ double sh[TOPK_THREADS / 32];
    __shared__ uint64_t best[LOGITS_TOP];
    griddep_launch();
    griddep_wait();
    int r = blockIdx.x;
    const uint64_t *rc = cand + (size_t)r * nchunk * LOGITS_TOP;
    uint64_t key[TOPK_PER];
#pragma unroll
    for (int j = 0; j < TOPK_PER; j++) {
        int i = j * TOPK_THREADS + threadIdx.x;
        key[j] = i < nchunk * LOGITS_TOP ? rc[i] : 0;
    }
    struct chunk_stat s = {-INFINITY, 0};
    if ((int)threadIdx.x < nchunk) s = stats[(size_t)r * nchunk + threadIdx.x];
    s = block_stat(s, sh);
    int n = select_top(key, sm, best);
    struct logits_top *t = top + r;
    /* candidate c's rank: 4 adjacent threads count a quarter of the others each */
    const int c = threadIdx.x / 4, q = threadIdx.x % 4, QN = LOGITS_TOP / 4;
    _Static_assert(LOGITS_TOP * 4 <= TOPK_THREADS, "four threads per candidate");
    const uint64_t k = c < n ? best[c] : 0;
    int rank = 0;
    for (int i = q * QN; i < q * QN + QN && i < n; i++)
        rank += best[i] > k;
    rank += __shfl_xor_sync(~0u, rank, 1);
    rank += __shfl_xor_sync(~0u, rank, 2);
    if (c < n && q == 0) {
        t->id[rank] = key_id(k);
        t->logit[rank] = key_logit(k);
        if (rank == 0) t->max = key_logit(k);
    }
    if (threadIdx.x == 0) {
        t->n = n;
        t->n_vocab = V;
        t->sum = s.sum;
        if (n == 0) t->max = 0.f;
    }
}

bool topk_supported(int V)
{
    return V >= 1 && (V + TOPK_CHUNK - 1) / TOPK_CHUNK <= TOPK_MAX_CHUNKS;
}

size_t topk_scratch_bytes(int rows, int V)
{
    size_t nchunk = (size_t)(V + TOPK_CHUNK - 1) / TOPK_CHUNK;
    return (size_t)rows * nchunk * (LOGITS_TOP * sizeof(uint64_t) + sizeof(struct chunk_stat));
}

int k_logits_top(cudaStream_t st, const float *lg, int rows, int V, void *scratch,
                 struct logits_top *out)
{
    if (!topk_supported(V) || rows < 1 || rows > 65535) return ST_EINVAL;
    int nchunk = (V + TOPK_CHUNK - 1) / TOPK_CHUNK;
    uint64_t *cand = (uint64_t *)scratch;
    struct chunk_stat *stats = (struct chunk_stat *)(cand + (size_t)rows * nchunk * LOGITS_TOP);
    CUDA_TRY(launch_pdl(topk_chunks, dim3((unsigned)nchunk, (unsigned)rows), TOPK_THREADS, 0, st,
                        lg, V, nchunk, cand, stats));
    CUDA_TRY(
        launch_pdl(topk_rows, (unsigned)rows, TOPK_THREADS, 0, st, cand, stats, V, nchunk, out));
    return 0;
}

extern "C" int cuda_logits_summary(const float *rows, int n, int V, struct logits_top *out)
{
    if (!topk_supported(V) || n < 1) return ST_EINVAL;
    float *d_rows = NULL;
    void *scratch = NULL;
    struct logits_top *d_top = NULL;
    int rc = ST_EDEVICE;
    size_t bytes = sizeof(float) * (size_t)n * V;
    if (cudaMalloc((void **)&d_rows, bytes) == cudaSuccess &&
        cudaMalloc(&scratch, topk_scratch_bytes(n, V)) == cudaSuccess &&
        cudaMalloc((void **)&d_top, sizeof(*d_top) * n) == cudaSuccess &&
        cudaMemcpy(d_rows, rows, bytes, cudaMemcpyHostToDevice) == cudaSuccess) {
        rc = k_logits_top(0, d_rows, n, V, scratch, d_top);
        if (rc == 0 && cudaMemcpy(out, d_top, sizeof(*d_top) * n, cudaMemcpyDeviceToHost) !=
                           cudaSuccess)
            rc = ST_EDEVICE;
    }
    if (rc == ST_EDEVICE) log_error("cuda: logits summary: %s", cudaGetErrorString(cudaGetLastError()));
    cudaFree(d_rows);
    cudaFree(scratch);
    cudaFree(d_top);
    return rc;
}
