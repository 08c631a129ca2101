/*
 * mvq.cuh - products of quantized weights with up to MATVEC_MAX_N tokens
 * (decode) in integers: the weights' quants against the activations'
 * 8-bit quants (struct mmq_act, the reference's Q8_0 / Q8_1 / Q8_K blocks)
 * with 4-way byte dot products (dp4a), the block scales applied in float.
 *
 * The arithmetic is the reference's (mmq.cuh): an integer sum per weight
 * block or sub-block, scaled; only the order of the float additions differs.
 * A warp takes a row (or part of a long one; two rows of a vocabulary-sized
 * product for one token). Each lane takes 32 elements of it at a time: a whole
 * 32-element block of the legacy types, or one eighth of a 256-element
 * super-block (the 8 lanes of a super-block read adjacent bytes), loading its
 * quants with few wide loads and dotting them with every token's activation
 * bytes. A token's result does not depend on the batch it is in.
 *
 * Use: the inputs quantized by k_norm_quant (kernels.cuh), k_mmq_quantize
 * (mmq.cuh) or the attention kernel; then k_mvq / k_swiglu_q.
 */
#ifndef STAGED_CUDA_MVQ_CUH
#define STAGED_CUDA_MVQ_CUH

#include "gpu_worker/cuda/kernels.cuh"
#include "gpu_worker/cuda/mmq.cuh"

/* y[t][r] = (add ? y : 0) + W_r . x[t] + bias[r] for the segments of a (all
 * quantized, of x's activation class; a->x is not read), x->n <= MATVEC_MAX_N
 * tokens of a->K elements. One launch per weight type among the segments.
 * With a->rope set, q/k/v with rope and the cache store (kernels.cuh). */
int k_mvq(cudaStream_t st, const struct mv_args *a, const struct mmq_act *x);
/* h[t][r] = silu(Wg_r . xg[t]) * (Wu_r . xu[t]); gate and up of one
 * quantized type (xg and xu may be the same). */
int k_swiglu_q(cudaStream_t st, const void *wg, const void *wu, int type, int N, int K,
               const struct mmq_act *xg, const struct mmq_act *xu, float *h);

#endif
