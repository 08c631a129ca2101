/*
 * mmq.cuh - products of quantized weights with batches of activations
 * (more than MATVEC_MAX_N tokens) on the tensor cores, in integers.
 *
 * The reference engine quantizes activations to 8 bits (Q8_0 / Q8_1 blocks
 * of 32 for Q4_0..Q8_0 weights, Q8_K super-blocks of 256 for the k-quants)
 * and sums integer products per block, scaled in float. These kernels do the
 * same arithmetic: the weight blocks are decoded to their int8 quants in
 * shared memory (never into a copy of the matrix), multiplied with the int8
 * activations by mma.sync (s8 x s8 -> s32, exact), and the block sums scaled
 * and accumulated in float in the order of K. A token's result therefore
 * depends on neither the batch size nor its place in the batch, and differs
 * from the reference's dot product by float rounding only (a half-precision
 * GEMM of dequantized values would add a 2^-11 rounding to every weight and
 * activation: about 1.6% relative error in the logits of a Q8_0 model).
 *
 * Products with few row tiles are split along K into partial sums (over two
 * waves of blocks in all), added in a fixed order by a second kernel; the
 * split depends on the matrix shape only.
 *
 * Use: k_mmq_quantize once per input (it serves every weight of the same
 * activation class), then k_mmq per weight matrix.
 */
#ifndef STAGED_CUDA_MMQ_CUH
#define STAGED_CUDA_MMQ_CUH

#include <cuda_runtime.h>
#include <stdint.h>

/* Quantized activations of n tokens of K elements (K % 32 == 0; K % 256 == 0
 * for the k-quant class). q is [n][K]; per 32-block (class 3): d = the
 * block's half scale as float, s = half(d * sum(q)) as float (Q8_1's s);
 * per 256-block (class 4): d = Q8_K's float scale, bsum[n][K/16] = sums of
 * 16 quants. Buffers sized by the caller for the largest n * K. */
struct mmq_act {
    int8_t *q;
    float *d, *s;
    int32_t *bsum;
    float *part; /* partial sums of K-split products, mmq_part_elems(max n) */
    size_t part_elems;
    int n, K, cls; /* set by k_mmq_quantize */
};

/* Size of mmq_act.part for batches of up to max_n tokens. */
size_t mmq_part_elems(int max_n);

/* True for the weight types k_mmq multiplies (the quantized ones). */
bool mmq_supported(int type);
/* Activation class of a weight type: 3 (Q8_0 blocks) or 4 (Q8_K). */
int mmq_class(int type);
/* x [n][K] floats -> a, for weights of activation class cls. */
int k_mmq_quantize(cudaStream_t st, int cls, const float *x, int n, int K, struct mmq_act *a);
/* y[t][r] = W_r . x[t] for the n tokens of a (y is [n][N], row stride N). */
int k_mmq(cudaStream_t st, const void *w, int type, int N, int K, const struct mmq_act *a,
          float *y);

#endif
