/*
 * make_model.h - GGUF test models of real size with random weights.
 *
 * A shape is the architecture and hyperparameters of a real model
 * (qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, llama-3.2-1b, qwen3-0.6b) or a
 * tiny one for tests (tiny-qwen2, tiny-llama, tiny-qwen3). make_model_write
 * writes a GGUF v3 file with:
 *   - general.* and <arch>.* metadata as converters write them, plus
 *     staged.make_model.seed (u64) and staged.make_model.shape (string);
 *   - every tokenizer.* key copied from the shape's vocab-only GGUF
 *     (vocab/ggml-vocab-qwen2.gguf or vocab/ggml-vocab-llama-bpe.gguf),
 *     tokens / token_type / scores padded with "[PADn]" (type 5, unused) up
 *     to the embedding's row count where the model's vocabulary is larger;
 *   - the tensors of the architecture, weights drawn from a seeded
 *     approximately normal(0, 0.02) distribution (a sum of four uniforms),
 *     norm weights 1. Row r of tensor NAME depends only on (seed, NAME, r),
 *     so the file is the same for any thread count and make_model_check can
 *     regenerate what any tensor should hold.
 *
 * Tensor types (the "mix"):
 *   f16      matrices F16
 *   q4_k_m   Q6_K for token_embd, output, attn_v and ffn_down, Q4_K for the
 *            other matrices (a Q4_K_M-like recipe)
 *   TYPE     every matrix in one type ("q8_0", "q6_k", "bf16", "f32", ...)
 * Vectors (norms, biases) are always F32. A k-quant whose 256-element
 * blocks do not divide a row (qwen2.5-0.5b's 896) falls back to a 32-block
 * type of similar size: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1,
 * Q6_K -> Q8_0.
 */
#ifndef STAGED_MAKE_MODEL_H
#define STAGED_MAKE_MODEL_H

#include "common/err.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct mm_shape {
    const char *name;
    const char *arch;       /* "qwen2", "llama", "qwen3" */
    const char *vocab_file; /* under the vocab folder */
    uint32_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, n_ctx;
    float rope_base, rms_eps;
    bool tied;     /* no output.weight */
    bool qkv_bias; /* attn_{q,k,v}.bias (qwen2) */
    bool qk_norm;  /* attn_{q,k}_norm (qwen3) */
};

/* The shape called name, or NULL. */
const struct mm_shape *make_model_shape(const char *name);
/* Print the shape names, one per line with a summary. */
void make_model_list_shapes(FILE *out);

struct make_model_opts {
    const struct mm_shape *shape;
    const char *mix; /* "f16", "q4_k_m" or a type name */
    uint64_t seed;
    int n_threads;         /* >= 1 */
    const char *vocab_dir; /* folder holding the shape's vocab file */
    const char *out;       /* output path (written as OUT.tmp, then renamed) */
};

/* Write the model. 0, or ST_EINVAL (unknown mix), ST_EIO, ST_ENOMEM,
 * ST_EFORMAT (vocab file unusable) with eb naming the problem. */
int make_model_write(const struct make_model_opts *o, struct st_errbuf *eb);

/* Print what make_model_write would write, without tokenizer keys and
 * data: "kv KEY VALUE" lines, "tensor NAME TYPE NE0 [NE1]" lines and
 * "size BYTES" (of the file without tokenizer keys), then, if the header
 * passes model_hparams_read and model_validate, "valid ARCH dim ...".
 * 0 or an error (eb says which check failed). */
int make_model_plan(const struct make_model_opts *o, FILE *out, struct st_errbuf *eb);

/*
 * Re-read a file made by make_model_write: regenerate every tensor's source
 * values from the seed in its metadata, dequantize what the file holds
 * (gpu_worker/quant.c) and compare. Prints one line per tensor type (count,
 * relative RMS error, bound) to out. 0 if every type is within its bound,
 * ST_EINTEGRITY if not, other codes if the file cannot be read.
 */
int make_model_check(const char *path, FILE *out, struct st_errbuf *eb);

#endif
