/*
 * exact.cuh - matrix products in the reference engine's floating-point order
 * (the reference mode of the CUDA backend, STAGED_CUDA_REF=1).
 *
 * The reference logits come from llama.cpp's CPU kernels, and the CPU
 * backend (gpu_worker/kernels.c) reproduces their order of float operations
 * bit for bit. On the random-weight reference models a last-bit difference
 * flips the 8-bit rounding of some activation downstream and the model
 * amplifies it to 1-2% of the logits, more than the bound of the
 * high-precision types (0.1% F16, 0.2% BF16, 0.75% Q8_0). These kernels
 * follow kernels.c's orders so that the GPU lands on the same bits:
 *
 *   F32, F16   16 lanes; lane L: fma over elements i + L, steps of 16; the
 *              lanes summed pairwise (8, 4, 2, 1 apart); the tail (K % 16)
 *              added product by product in double
 *   BF16       AVX512-BF16's dot product: 16 lanes over steps of 32, lane L
 *              adds the product of element 2L+1, then of 2L (each rounded);
 *              summed as above, tail in double
 *   Q4_0 Q5_0  8 lanes; lane L: per block, fma(d_w * d_x, 4-element integer
 *   Q8_0       sum of elements 4L..4L+3); lanes summed 4, 2, 1 apart
 *   Q6_K       8 lanes; per super-block, lane L's integer: the scaled 4-element
 *              sums of elements 32g + 4L (+128) minus 32 * the scaled bsums
 *              of sub-blocks 2L, 2L+1; fma(d_x * d_w, lane, acc)
 *
 * One output (row, token) per 16 threads; meant for verification, not speed.
 */
#ifndef STAGED_CUDA_EXACT_CUH
#define STAGED_CUDA_EXACT_CUH

#include "gpu_worker/cuda/mmq.cuh"

#include <cuda_runtime.h>

/* True when k_mm_exact has the reference's order for this weight type. */
bool mm_exact_supported(int type);
/* y[t][r] = W_r . x[t] for n tokens. The input, by weight type: F32 xf
 * (floats [n][K]); F16 / BF16 xh (x rounded to the type, [n][K]); quantized
 * a (k_mmq_quantize'd). */
int k_mm_exact(cudaStream_t st, const void *w, int type, int N, int K, const float *xf,
               const void *xh, const struct mmq_act *a, int n, float *y);

#endif
