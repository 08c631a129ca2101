/*
 * cuda_backend.h - the CUDA compute backend of the worker (C API; the CUDA
 * code sits in the .cu files of gpu_worker/cuda/, and no CUDA header is visible here).
 *
 * cuda_backend_ops() (declared in gpu_worker/backend.h) returns the backend's
 * struct backend_ops, or NULL in builds without CUDA. create() uses
 * cfg->dev_weights (the loader's device copy, mapped with cuda_ipc_open; kernels
 * read up to 256 bytes past the last tensor, which gpu_upload allocates) when
 * set, else uploads a private copy of the model's tensor-data region (tensor
 * i at base + gguf->tensors[i].offset; the region ends with the last
 * tensor) and groups it. Either copy is in the device layout of
 * loader/gpu_layout.h: Q5_0, Q8_0 and Q6_K tensors carry the device-only
 * type ids of quant.cuh (QT_Q5_0G..) in their struct cmat. The backend allocates its own KV cache (half precision,
 * [layer][seq][pos][n_kv_heads * head_dim] for K and for V) and scratch.
 *
 * Numerics: activations stay float32; before a product with weights of type
 * T they are rounded the way llama.cpp's CPU backend rounds them (F16 or BF16
 * for those weight types, 8-bit blocks for quantized ones), so logits follow
 * the reference closely. Batches of up to 8 tokens use matrix-vector kernels
 * that read the quantized blocks in place (integer dot products with the
 * 8-bit activations, mvq.cuh); larger ones decode each quantized
 * matrix to half precision in row chunks and call cuBLAS (float
 * accumulation). The reference mode (STAGED_CUDA_REF=1) instead multiplies in
 * the reference's own order (exact.cuh) or in integers with its block
 * arithmetic (mmq.cuh, tensor cores, batch-invariant), for every batch size.
 *
 * Execution: batches of up to 8 tokens run a fused path (8 kernels per
 * layer of a quantized model: norm + quantization, q/k/v in one launch with
 * biases, rope and the cache store in its epilogue, attention (quantizing its
 * output), o with the residual add, norm + quantization, gate/up with
 * SwiGLU, quantization, down with the residual add). Forward passes of up
 * to 128 tokens are captured once per (tokens, logits rows, summaries) shape
 * as CUDA graphs and replayed (with the logits summaries and their copy to
 * the host); the kernels of the fused path start while their predecessor
 * ends (programmatic dependent launch: the products load their first
 * weights before they wait).
 * Attention keeps float accumulators over tiles of 128-256 positions.
 *
 * Logits: every logits row is summarized on the GPU when the caller asks
 * for summaries (topk.cuh: the best LOGITS_TOP tokens and the softmax
 * normalizer, ~500 bytes instead of 4 x n_vocab); only LOGITS_ROW rows are
 * copied, and logits_row() fetches another row of the last pass on demand.
 *
 * Environment switches (read at create(); for tests and measurements):
 *   STAGED_CUDA_REF=1       reference mode: every operation in the order of
 *                           the reference engine's CPU kernels (exact.cuh;
 *                           attention with half accumulators, libm's rope
 *                           angles, correctly rounded exp), so that logits
 *                           land on llama.cpp's bits; slow, for verification
 *   STAGED_CUDA_GRAPHS=0    no CUDA graphs
 *   STAGED_CUDA_GEMM_MIN_N=N quantized products of N or more tokens decode the
 *                           matrix to half for cuBLAS, fewer use mmq
 *   STAGED_CUDA_UNFUSED=1   small batches take the unfused (large-batch) path
 *   STAGED_CUDA_PDL=0       no programmatic dependent launch
 *   STAGED_CUDA_FAULT=1     fault injection, see cuda_backend_inject_bad_kernel
 *
 * Errors: every CUDA call is checked and logged with statement, file and
 * line. After any device error the backend is dead: forward returns
 * ST_EDEVICE from then on; the worker must exit non-zero (a sticky CUDA error
 * leaves the context unusable).
 */
#ifndef STAGED_CUDA_BACKEND_H
#define STAGED_CUDA_BACKEND_H

#include "common/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct st_model;

#ifdef __cplusplus
extern "C" {
#endif

/* Map a device allocation exported by another process (128 hex digits of a
 * cudaIpcMemHandle_t, as gpu_upload_ipc_handle writes them) on device
 * `device`. Returns 0 with *dev_ptr set, ST_EFORMAT for a malformed string,
 * ST_EDEVICE if CUDA refuses (message in eb). */
int cuda_ipc_open(const char *hex, int device, void **dev_ptr, struct st_errbuf *eb);
/* Unmap what cuda_ipc_open mapped (NULL is ignored). */
void cuda_ipc_close(void *dev_ptr);

/* Number of usable CUDA devices (0 when none or no driver); the reason for 0
 * goes into eb. */
int cuda_device_count(struct st_errbuf *eb);

/* Bytes of device memory in use on the current device (all processes), 0
 * without CUDA; for memory reports. */
size_t cuda_device_used(void);

/* Page-locked host memory for logits buffers: forward() copies logits into
 * such a buffer by DMA directly (into pageable memory it goes through a
 * staging buffer and a memcpy). NULL on failure or without CUDA. */
void *cuda_host_alloc(size_t bytes);
void cuda_host_free(void *p);

/* Fault injection: the next forward call of every CUDA backend of this
 * process first launches a kernel that writes through an invalid address
 * (the environment variable STAGED_CUDA_FAULT=1 at create() does the same).
 * Used to check that a device fault ends the worker and leaves the loader's
 * copy of the weights intact. */
void cuda_backend_inject_bad_kernel(void);

/* 0, or ST_EUNSUPPORTED (eb says which tensor) when a quantized tensor of m
 * starts off a 16-byte boundary (a GGUF whose general.alignment is below 16):
 * the kernels read such blocks in 16-byte words. create() checks it first;
 * needs no GPU. */
int cuda_check_alignment(const struct st_model *m, struct st_errbuf *eb);

/* For tests: y[t][r] = W_r . x[t] by the batched integer product (mmq.cuh),
 * or with small the decode kernels (mvq.cuh, n <= 8), for n tokens (x: n rows
 * of K floats; W: N rows of K elements of a quantized ggml type, host
 * memory, in the file's layout; type + 100 for Q5_0, Q8_0, Q6_K: the same
 * rows grouped on the device as loader/gpu_layout.h, which needs N * K a
 * multiple of 8 blocks); y is n rows of N floats. Returns 0, ST_EINVAL for a
 * type or batch the kernels do not take, ST_EDEVICE (logged) for CUDA errors. */
int cuda_mmq_product(int type, int N, int K, int n, const void *w, const float *x, float *y,
                     bool small);

/* For tests: h = silu(Wg x) * (Wu x) by the decode kernel (k_swiglu_q) for
 * n <= 8 tokens; w is N gate rows then N up rows of K elements of a
 * quantized ggml type (host memory, the file's layout), x n rows of K
 * floats, y n rows of N. Returns 0, ST_EINVAL, ST_EDEVICE (logged). */
int cuda_swiglu_product(int type, int N, int K, int n, const void *w, const float *x, float *y);

/* For tests: the serving attention kernel for one token at position np - 1
 * of one sequence (q: n_heads * hd floats, scaled by 1/sqrt(hd) inside; k, v:
 * np rows of n_kv * hd half bits, host memory) into out (n_heads * hd).
 * With qcls 3 or 4, also the kernel's own quantization of its output for o
 * (k_attention_quantizes), compared byte for byte with k_mmq_quantize of out:
 * 1 where they differ. Returns 0, 1, ST_EINVAL (also a qcls the kernel does
 * not take), ST_EUNSUPPORTED (head_dim) or ST_EDEVICE (logged). */
int cuda_attention_check(int n_heads, int n_kv, int hd, int np, const float *q, const uint16_t *k,
                         const uint16_t *v, int qcls, float *out);

/* For tests: k_norm_quant, the decode path's rmsnorm of n rows of D floats
 * x (weights w) quantized to activation class cls: 3 (Q8_0 blocks: q, d, s
 * per 32) or 4 (Q8_K: q, d per 256, bsum per 16). Host memory. Returns 0,
 * ST_EINVAL for a row the kernel does not take, ST_EDEVICE (logged). */
int cuda_norm_quant_check(int cls, int n, int D, const float *x, const float *w, float eps,
                          int8_t *q, float *d, float *s, int32_t *bsum);

/* For benchmarks: start (on) or stop the range a profiler started with
 * "--profile-from-start off" (ncu, nsys) records. */
void cuda_profile_range(bool on);

/* For tests: out[r] = the GPU's summary (topk.cuh) of rows[r] (n rows of V
 * floats, host memory). Returns 0, ST_EINVAL for a V the kernels do not
 * take, ST_EDEVICE (logged) for CUDA errors. */
struct logits_top;
int cuda_logits_summary(const float *rows, int n, int V, struct logits_top *out);

#ifdef __cplusplus
}
#endif

#endif
