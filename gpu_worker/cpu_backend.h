/*
 * cpu_backend.h - the CPU implementation of backend.h (cpu_backend_ops).
 *
 * Forward pass of llama / qwen2 / qwen3 decoders: RMSNorm (file epsilon),
 * q/k/v projections (+ biases for qwen2, per-head q/k RMSNorm for qwen3),
 * RoPE (adjacent pairs for llama, halves for qwen2/3; base from the file),
 * grouped-query causal attention over a per-sequence KV cache (stored as
 * binary16), SwiGLU FFN, final norm and output projection (token_embd when
 * the output is tied).
 *
 * Weights are read in place from the struct st_model; every matrix product
 * quantizes its activation rows once to the weight type's activation type
 * (quant.h) and uses the dot kernels of kernels.h, split by output rows over
 * a persistent thread pool (pool.h).
 *
 * KV cache layout: k[layer][seq][pos][kv_heads * head_dim] (same for v),
 * binary16, max_seqs * max_ctx positions per layer, allocated at create.
 *
 * Numerics follow llama.cpp's CPU backend (the reference logits come from
 * it): activations are rounded to the weight type's activation type
 * (binary16, bfloat16, 8-bit blocks), attention works as its flash
 * attention (q rounded to binary16, online softmax, output accumulated in
 * binary16), and dot products sum in its kernels' orders (kernels.h).
 * Batch invariance: a token's logits depend only on its sequence's tokens,
 * never on the other tokens or sequences in the batch, so a request gives
 * the same output alone, batched, or re-run after a restart.
 *
 * Threads: matrix products are split by output rows, attention by
 * (token, head), elementwise steps by token; small steps run on the calling
 * thread.
 *
 * cpu_backend_set_reference(b, true) switches every dot product to the
 * scalar reference kernels (tests compare the two paths).
 */
#ifndef STAGED_CPU_BACKEND_H
#define STAGED_CPU_BACKEND_H

#include "gpu_worker/backend.h"

#include <stdbool.h>

void cpu_backend_set_reference(struct backend *b, bool reference);

#endif
