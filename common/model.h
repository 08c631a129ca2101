/*
 * model.h - a served model as every stage sees it: GGUF metadata, the
 * architecture's hyperparameters, and tensor data in memory.
 *
 * A struct st_model is built either straight from a file (model_open_file:
 * the file is mapped read-only; used by the command-line modes) or from the
 * loader's shared-memory segment (seg_model in shm/seg.h). Both give the same
 * view: tensor i's bytes are at data + gguf->tensors[i].offset, because the
 * segment keeps the file's data-section layout.
 *
 * model_validate checks an architecture's required keys and tensors and that
 * every tensor's shape matches the hyperparameters. Architectures: llama,
 * qwen2, qwen3.
 */
#ifndef STAGED_MODEL_H
#define STAGED_MODEL_H

#include "err.h"
#include "gguf.h"

#include <stdbool.h>
#include <stdint.h>

enum model_arch { ARCH_NONE = 0, ARCH_LLAMA = 1, ARCH_QWEN2 = 2, ARCH_QWEN3 = 3 };

enum rope_kind {
    ROPE_NORMAL = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): llama */
    ROPE_NEOX = 1,   /* rotate halves (x[i], x[i+d/2]): qwen2, qwen3 */
};

/* Hyperparameters, fixed-size so the segment can carry them verbatim. */
struct model_hparams {
    uint32_t arch;         /* enum model_arch */
    uint32_t n_vocab;      /* rows of token_embd */
    uint32_t n_ctx_train;  /* <arch>.context_length */
    uint32_t dim;          /* <arch>.embedding_length */
    uint32_t n_layers;     /* <arch>.block_count */
    uint32_t n_heads;      /* <arch>.attention.head_count */
    uint32_t n_kv_heads;   /* <arch>.attention.head_count_kv (default n_heads) */
    uint32_t head_dim;     /* <arch>.attention.key_length or dim / n_heads */
    uint32_t ffn_dim;      /* <arch>.feed_forward_length */
    uint32_t rope_dim;     /* <arch>.rope.dimension_count (default head_dim) */
    uint32_t rope_kind;    /* enum rope_kind */
    uint32_t tied_output;  /* 1 if output.weight is absent (use token_embd) */
    uint32_t has_qkv_bias; /* 1 if attn_{q,k,v}.bias present */
    uint32_t has_qk_norm;  /* 1 if attn_{q,k}_norm present (qwen3) */
    float rms_eps;         /* <arch>.attention.layer_norm_rms_epsilon */
    float rope_base;       /* <arch>.rope.freq_base (default 10000) */
};
_Static_assert(sizeof(struct model_hparams) == 64, "hparams size is part of the segment format");

const char *model_arch_name(uint32_t arch);

/* Read the hyperparameters of the file's architecture. A vocab-only file
 * (no tensors) gives ST_ENOTFOUND with a message saying so. */
int model_hparams_read(const struct gguf *g, struct model_hparams *hp, struct st_errbuf *eb);

/* Check required tensors and their shapes against hp. 0 or ST_EFORMAT. */
int model_validate(const struct gguf *g, const struct model_hparams *hp, struct st_errbuf *eb);

struct st_model {
    struct gguf *gguf;         /* metadata; owned */
    struct model_hparams hp;
    const uint8_t *data;       /* base of tensor data */
    /* private: */
    void *map;                 /* file mapping (model_open_file) */
    uint64_t map_len;
};

/* A tensor's view: data points into the model's memory. */
struct model_tensor {
    const void *data;
    uint32_t type;    /* enum ggml_type */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t size;    /* bytes */
};

/* Map a GGUF file, parse and validate it. A vocab-only file is accepted
 * (hp.arch = ARCH_NONE) so tokenizer tools can use it. */
int model_open_file(const char *path, struct st_model **out, struct st_errbuf *eb);
/* Build a model over memory the caller owns (header bytes + data base). */
int model_open_mem(const uint8_t *hdr, uint64_t hdr_len, uint64_t file_size, const uint8_t *data,
                   struct st_model **out, struct st_errbuf *eb);
void model_close(struct st_model **m);

/* Find a tensor; false if absent. */
bool model_tensor(const struct st_model *m, const char *name, struct model_tensor *t);
/* Per-layer tensor: model_tensor_l(m, 3, "attn_q.weight") looks up
 * "blk.3.attn_q.weight". */
bool model_tensor_l(const struct st_model *m, uint32_t layer, const char *suffix,
                    struct model_tensor *t);

#endif
