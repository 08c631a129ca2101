/*
 * quantize.h - staged's own weight quantizer: float rows to the block types
 * of quant.h (whose dequantize is the read-back).
 *
 * Types: F32 (copy), F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K,
 * Q4_K, Q5_K, Q6_K. Layouts are documented in gpu_worker/quant.h.
 *
 * Method (written for staged, no code from other quantizers):
 *   - symmetric types (Q4_0, Q5_0, Q8_0, the sub-blocks of Q3_K and Q6_K):
 *     the scale maps the element of largest magnitude to the most negative
 *     quant; a few nearby scales and the least-squares scale for the chosen
 *     quants are tried and the one with the smallest squared error kept;
 *   - affine types (Q4_1, Q5_1, the sub-blocks of Q2_K, Q4_K, Q5_K):
 *     scale and offset start from the block's min and max and are refined by
 *     alternating quant assignment and a least-squares fit (k-quants keep
 *     the offset <= 0, as their layout stores a non-negative min);
 *   - k-quant sub-block scales (and mins) are then quantized against the
 *     super-block's largest one (6 bits for Q3_K/Q4_K/Q5_K, 4 bits for Q2_K,
 *     8 signed bits for Q6_K) and the quants recomputed with the scales as
 *     stored, so the rounding of the scales is not added to the error twice.
 *
 * Typical RMS error relative to the RMS of Gaussian data (measured by
 * tests/test_quantize.c): see that test's bounds.
 */
#ifndef STAGED_QUANTIZE_H
#define STAGED_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>

/* True for the types quantize_row can produce. */
bool quantize_supported(uint32_t type);

/*
 * Quantize n floats into dst (ggml_row_bytes(type, n) bytes).
 * Returns 0, or ST_EINVAL if the type is not supported or n is not a
 * multiple of its block size (nothing written then).
 */
int quantize_row(uint32_t type, const float *x, void *dst, int64_t n);

/*
 * Quantize n_rows rows of n_per_row floats (row-major) into dst with
 * n_threads threads (1 = this thread only; rows of a thread that cannot be
 * started are done on this thread). The bytes do not depend on n_threads.
 * 0 or ST_EINVAL.
 */
int quantize_rows(uint32_t type, const float *x, void *dst, int64_t n_rows, int64_t n_per_row,
                  int n_threads);

#endif
