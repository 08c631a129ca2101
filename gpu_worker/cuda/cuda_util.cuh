/*
 * cuda_util.cuh - what every .cu file of staged shares: the checked-call
 * macros and the way C headers are included from CUDA C++.
 *
 * Every CUDA runtime and cuBLAS call, and every kernel launch (through
 * cudaGetLastError right after it), goes through CUDA_TRY / CUBLAS_TRY. On
 * failure the macro logs the statement, file and line with the CUDA error
 * string and returns ST_EDEVICE from the enclosing function (which must
 * return int). Errors such as an illegal address are sticky: the context is
 * unusable afterwards, so callers propagate ST_EDEVICE up and the process
 * exits non-zero (the worker never goes on serving after one). It also holds
 * the warp reductions the kernels share.
 */
#ifndef STAGED_CUDA_UTIL_CUH
#define STAGED_CUDA_UTIL_CUH

#include <cuda_runtime.h>

/* The project's C headers use C11 spellings. */
#ifndef _Static_assert
#define _Static_assert static_assert
#endif
extern "C" {
#include "common/err.h"
#include "common/log.h"
}

#define CUDA_TRY(call)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            log_error("cuda: %s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__,              \
                      cudaGetErrorString(e_), cudaGetErrorName(e_));                               \
            return ST_EDEVICE;                                                                     \
        }                                                                                          \
    } while (0)

/* After a kernel launch: launch-configuration errors and (asynchronously
 * reported) sticky faults of earlier kernels. */
#define CUDA_LAUNCHED(what) CUDA_TRY(cudaGetLastError())

#define CUBLAS_TRY(call)                                                                           \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            log_error("cublas: %s failed at %s:%d: status %d", #call, __FILE__, __LINE__,          \
                      (int)s_);                                                                    \
            return ST_EDEVICE;                                                                     \
        }                                                                                          \
    } while (0)

/* Sum and maximum over the 32 lanes of a warp; every lane gets the result. */
static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Max (MAX) or sum over the block (red: a float per
 * warp in shared memory), the same value and order in every thread. */
template <bool MAX> static __device__ __forceinline__ float block_reduce(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < nw; i++)
        r = MAX ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

/* Sum of acc[t] over the wpr warps (1, 2 or 4) that share a row in a block of
 * 4 warps: complete in the row's first warp (warp % wpr == 0); every thread
 * of the block must call it. */
template <int NT> static __device__ __forceinline__ void rows_reduce(float (&acc)[NT], int wpr)
{
    __shared__ float part[4][NT];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = warp_sum(acc[t]);
    if (wpr == 1) return;
    __syncthreads(); /* part may still be read by a previous call */
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < NT; t++)
            part[warp][t] = acc[t];
    __syncthreads();
    if (warp % wpr == 0)
#pragma unroll
        for (int t = 0; t < NT; t++)
            for (int k = 1; k < wpr; k++)
                acc[t] += part[warp + k][t];
}

/* expf correctly rounded (through double), as glibc's expf gives it in all
 * but about 1e-4 of cases; CUDA's expf may be 2 ulp off. */
static __device__ __forceinline__ float exp_ref(float x)
{
    return (float)exp((double)x);
}

/* SwiGLU's silu(g) * u as serving computes it: every serving kernel that
 * applies SwiGLU calls this, so batches of any size get the same bits. */
static __device__ __forceinline__ float silu_mul(float g, float u)
{
    return g / (1.f + expf(-g)) * u;
}

/* Programmatic dependent launch (sm_90). A kernel started by launch_pdl may
 * begin while its predecessor in the stream still runs: it must call
 * griddep_wait() before it reads anything an earlier kernel wrote and before
 * it writes anything; before that it may only read what no kernel writes
 * (weights). Such kernels call griddep_launch() first, so that their own
 * successor may start early too. In graphs these become programmatic edges.
 * g_cuda_pdl (kernels.cu, default on; STAGED_CUDA_PDL=0 at create turns it
 * off) makes launch_pdl an ordinary launch. */
static __device__ __forceinline__ void griddep_wait()
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

static __device__ __forceinline__ void griddep_launch()
{
    asm volatile("griddepcontrol.launch_dependents;" :::);
}

extern bool g_cuda_pdl;

/* launch_pdl of a grid in clusters of cluster_x blocks along x (1: none; the
 * kernel then may use distributed shared memory and cluster barriers). */
template <typename... KArgs, typename... Args>
static cudaError_t launch_pdl_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                      size_t smem, cudaStream_t st, unsigned cluster_x,
                                      Args &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[2];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = g_cuda_pdl ? 1 : 0;
    at[1].id = cudaLaunchAttributeClusterDimension;
    at[1].val.clusterDim.x = cluster_x;
    at[1].val.clusterDim.y = 1;
    at[1].val.clusterDim.z = 1;
    cfg.attrs = at;
    cfg.numAttrs = cluster_x > 1 ? 2 : 1;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
}

template <typename... KArgs, typename... Args>
static cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                              cudaStream_t st, Args &&...args)
{
    return launch_pdl_cluster(kernel, grid, block, smem, st, 1u, static_cast<Args &&>(args)...);
}

/* Propagate a negative st_err from a helper. */
#define ST_TRY(call)                                                                               \
    do {                                                                                           \
        int r_ = (call);                                                                           \
        if (r_ < 0) return r_;                                                                     \
    } while (0)

#endif
