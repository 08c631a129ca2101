/*
 * backend.h - the interface every compute backend of the worker implements
 * (CPU in cpu_backend.c, CUDA in cuda/ behind cuda_backend.h).
 *
 * A backend owns the per-sequence KV cache and scratch memory; the weights
 * belong to the struct st_model (shared memory or a file mapping) or, for
 * CUDA, to the loader's device allocation. One forward call processes a
 * batch of tokens that may mix sequences and positions (llama.cpp calls this
 * a ubatch): prompt chunks of new sequences and single decode tokens of
 * running ones go through the same call.
 *
 * Threading: a backend is used from one thread at a time; it may use worker
 * threads of its own inside forward.
 */
#ifndef STAGED_BACKEND_H
#define STAGED_BACKEND_H

#include "common/err.h"
#include "common/model.h"
#include "gpu_worker/sample.h"

#include <stdint.h>

struct backend_config {
    int n_threads;   /* CPU threads (0 = number of cores) */
    int max_seqs;    /* KV-cache sequence slots, seq ids are 0..max_seqs-1 */
    int max_ctx;     /* maximum positions per sequence */
    int max_batch;   /* maximum tokens per forward call */
    int device;      /* CUDA device ordinal */
    /* CUDA: device address of the loader's copy of the tensor data region
     * (tensor i at dev_weights + gguf->tensors[i].offset, in the device
     * layout of loader/gpu_layout.h), mapped from its IPC handle; NULL means
     * upload a private copy (and group it the same way). */
    void *dev_weights;
};

/* What a token's logits row is wanted as (struct batch.logits). */
enum {
    LOGITS_NONE = 0,
    LOGITS_ROW = 1,     /* the full row */
    LOGITS_SUMMARY = 2, /* only its summary (struct logits_top); the row stays
                         * with the backend until the next forward call */
};

/* One batch of tokens. Token i is at position pos[i] of sequence seq[i];
 * within a sequence, positions must be contiguous after what the KV cache
 * already holds (pos == current length), and ascending within the batch. */
struct batch {
    int n_tokens;
    const int32_t *token;  /* [n_tokens] token ids, < n_vocab */
    const int32_t *pos;    /* [n_tokens] */
    const int32_t *seq;    /* [n_tokens] */
    const int8_t *logits;  /* [n_tokens] LOGITS_*; NULL = none */
    /* [logits rows] the summary of every row with logits != LOGITS_NONE, in
     * batch order; may be NULL when no token asks for LOGITS_SUMMARY */
    struct logits_top *top;
};

struct backend;

/* 0 if bt's logits entries are LOGITS_* values and the outputs they need
 * are given (logits for LOGITS_ROW, bt->top for LOGITS_SUMMARY), else
 * ST_EINVAL; every backend's forward checks it. */
static inline int batch_outputs_ok(const struct batch *bt, const float *logits)
{
    for (int i = 0; bt->logits && i < bt->n_tokens; i++) {
        int f = bt->logits[i];
        if (f < LOGITS_NONE || f > LOGITS_SUMMARY || (f == LOGITS_ROW && !logits) ||
            (f == LOGITS_SUMMARY && !bt->top))
            return ST_EINVAL;
    }
    return 0;
}

struct backend_ops {
    const char *name; /* "cpu", "cuda" */
    /* Build a backend for model m. Returns 0 or a negative st_err with eb set. */
    int (*create)(const struct st_model *m, const struct backend_config *cfg,
                  struct backend **out, struct st_errbuf *eb);
    /* Run the batch. logits has room for n_vocab floats per logits row
     * (tokens with logits != LOGITS_NONE, in batch order); rows asked as
     * LOGITS_ROW are written, LOGITS_SUMMARY rows may be left as they are
     * (logits may be NULL if there are none of the first kind); bt->top
     * receives every row's summary. Returns 0, ST_EINVAL for a batch that
     * breaks the rules above (nothing is changed), or ST_EDEVICE / ST_ENOMEM. */
    int (*forward)(struct backend *b, const struct batch *bt, float *logits);
    /* Copy logits row `row` (0-based among the last forward call's logits
     * rows) into out (n_vocab floats): for a LOGITS_SUMMARY row whose summary
     * did not decide the sampling. Valid until the next forward call. */
    int (*logits_row)(struct backend *b, int row, float *out);
    /* Forget sequence seq's KV cache from position keep onwards (0 = all). */
    int (*seq_truncate)(struct backend *b, int seq, int keep);
    /* Current length (positions held) of sequence seq. */
    int (*seq_len)(struct backend *b, int seq);
    void (*destroy)(struct backend **b);
    /* 0 if a token's results never depend on what else its batch holds;
     * else the largest batch for which they do not (the serving loop splits
     * batches to that size when [worker] deterministic is on, so that a
     * request re-run after a restart produces the same tokens). */
    int invariant_max_batch;
};

extern const struct backend_ops cpu_backend_ops;
/* NULL when staged was built without CUDA. */
const struct backend_ops *cuda_backend_ops(void);

#endif
