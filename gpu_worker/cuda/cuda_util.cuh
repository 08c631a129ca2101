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

/* expf correctly rounded (through double), as glibc's expf gives it in all
 * but about 1e-4 of cases; CUDA's expf may be 2 ulp off. */
static __device__ __forceinline__ float exp_ref(float x)
{
    return (float)exp((double)x);
}

/* Propagate a negative st_err from a helper. */
#define ST_TRY(call)                                                                               \
    do {                                                                                           \
        int r_ = (call);                                                                           \
        if (r_ < 0) return r_;                                                                     \
    } while (0)

#endif
