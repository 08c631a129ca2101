/*
 * topk.cuh - summaries of logits rows on the GPU (struct logits_top,
 * gpu_worker/sample.h): each row's LOGITS_TOP best tokens, sorted by logit
 * descending and id ascending on ties, its largest logit and the sum of
 * exp(logit - max) over the row, so that sampling needs a few hundred bytes
 * per row instead of the row (600 KB for a 152k vocabulary).
 *
 * Method: every logit becomes a 64-bit key (the float's bits in an order-
 * preserving form above, the complement of its id below; NaN: key 0, never
 * a candidate), so that keys are unique and their order is the sampler's.
 * Pass 1: one block per chunk of TOPK_CHUNK logits finds the chunk's
 * LOGITS_TOP largest keys by radix selection (8-bit digits from the top,
 * until the boundary digit's bin holds exactly the keys still wanted) and
 * the chunk's max and sum (double). Pass 2: one block per row selects the
 * row's best among the chunks' candidates the same way, ranks them, and
 * merges the chunks' sums. A chunk's sum is taken in float, the chunks'
 * merge in double: the row's sum agrees with the CPU's (double, index
 * order) to ~1e-6 relative.
 */
#ifndef STAGED_CUDA_TOPK_CUH
#define STAGED_CUDA_TOPK_CUH

#include "gpu_worker/sample.h"

#include <cuda_runtime.h>
#include <stdint.h>

#define TOPK_CHUNK 4096
#define TOPK_MAX_CHUNKS 64 /* rows of up to 64 x 4096 = 262,144 logits */

/* Device scratch for up to rows logits rows of V: bytes. */
size_t topk_scratch_bytes(int rows, int V);
/* Whether rows of V logits can be summarized here (else the host does it). */
bool topk_supported(int V);
/* out[r] = summary of lg[r][0..V) for r < rows; scratch of
 * topk_scratch_bytes(rows, V) bytes. */
int k_logits_top(cudaStream_t st, const float *lg, int rows, int V, void *scratch,
                 struct logits_top *out);

#endif
