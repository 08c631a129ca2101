/*
 * sample.h - choosing the next token from a logits vector (pure C, shared
 * by every backend).
 *
 * Order of operations in sample_next (the llama.cpp order):
 *   1. penalties over the last repeat_last_n tokens of the history
 *      (prompt + generated; -1 = all, 0 = none), each distinct token once:
 *        repeat:    logit > 0 ? logit / repeat_penalty : logit * repeat_penalty
 *        frequency: logit -= frequency_penalty * count
 *        presence:  logit -= presence_penalty * (count > 0)
 *   2. temperature <= 0: greedy argmax (lowest id on ties). Otherwise
 *   3. top_k (0 = off): keep the k highest logits;
 *   4. top_p (1 = off): keep the smallest prefix (by descending probability at
 *      temperature 1) whose mass reaches top_p;
 *   5. min_p (0 = off): keep tokens with p >= min_p * p_max;
 *   6. divide by temperature, softmax over the kept tokens, draw one with a
 *      uniform number from sample_uniform(seed, position).
 *
 * Determinism: the random number of a draw depends only on (seed, position)
 * (a counter-based generator: splitmix64 mixing), never on earlier draws, so
 * a request re-run from position p draws the same numbers.
 *
 * Logprobs: sample_result.logprob is the chosen token's log-probability
 * under the penalized logits at temperature 1 over the whole vocabulary; the
 * n_top alternatives are the most probable tokens under the same
 * distribution, best first.
 */
#ifndef STAGED_SAMPLE_H
#define STAGED_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAMPLE_MAX_TOP 20 /* most alternatives a result carries */

struct sample_params {
    float temperature;       /* <= 0: greedy; default 1 */
    int top_k;               /* 0 = off */
    float top_p;             /* 1 = off */
    float min_p;             /* 0 = off */
    float repeat_penalty;    /* 1 = off */
    int repeat_last_n;       /* penalty window; -1 = whole history; default 64 */
    float presence_penalty;  /* 0 = off */
    float frequency_penalty; /* 0 = off */
    uint64_t seed;
};

struct sample_result {
    int32_t token;
    float logprob;                   /* of token */
    int n_top;                       /* alternatives filled */
    int32_t top_ids[SAMPLE_MAX_TOP]; /* best first */
    float top_logprobs[SAMPLE_MAX_TOP];
};

/*
 * A logits row summarized where it was computed (the GPU), so that the
 * common requests are sampled without copying the row: its LOGITS_TOP best
 * tokens (logit descending, lowest id first on ties: the order sample_next
 * ranks candidates in) and the normalizer of its softmax at temperature 1.
 * NaN logits are never candidates.
 */
#define LOGITS_TOP 64
struct logits_top {
    float max;   /* largest logit (== logit[0]) */
    int n;       /* candidates held: min(LOGITS_TOP, non-NaN logits) */
    int n_vocab; /* length of the row */
    double sum; /* sum over the row of exp(logit - max) */
    int32_t id[LOGITS_TOP];
    float logit[LOGITS_TOP];
};

/* The summary of logits[0..n_vocab) (the CPU's: the sum in index order, as
 * sample_next computes it). */
void logits_summarize(const float *logits, int n_vocab, struct logits_top *t);

/*
 * sample_next from a summary alone, when the summary decides it: no
 * penalties apply (none set, or an empty window), and either greedy, or
 * top_k in 1..t->n, or the top_p mass / the min_p cut falls inside the
 * candidates. Then returns the token sample_next returns for the full row
 * (logprobs: the same up to the rounding of the row's sum) and fills out;
 * else returns -1 and the caller samples the full row with sample_next.
 */
int32_t sample_from_top(const struct sample_params *p, const struct logits_top *t,
                        int n_history, int64_t position, int n_top, struct sample_result *out);

/* True when sample_from_top decides p on every row of n_vocab logits that
 * has at least min(LOGITS_TOP, top_k) non-NaN ones: no penalties apply, and
 * greedy or top_k in 1..LOGITS_TOP (below n_vocab). */
bool sample_top_decides(const struct sample_params *p, int n_history, int n_vocab);

/* False when p needs the full row whatever the values (penalties that
 * apply, or temperature sampling without truncation): the caller should
 * ask for the row itself rather than only a summary. */
bool sample_top_may_decide(const struct sample_params *p, int n_history);

/* Neutral defaults: temperature 1, no truncation, no penalties, seed 0. */
void sample_params_default(struct sample_params *p);

/* Uniform double in [0, 1) for draw (seed, position). */
double sample_uniform(uint64_t seed, int64_t position);

/* Apply the penalties of p to logits in place (step 1 above). */
void sample_apply_penalties(const struct sample_params *p, float *logits, int n_vocab,
                            const int32_t *history, int n_history);

/*
 * Choose the next token. logits (n_vocab floats) is modified (penalties are
 * applied in place). history: the n_history tokens so far (ids outside
 * 0..n_vocab-1 are ignored). position: the position of the token being
 * chosen (selects the random number). n_top: alternatives wanted (capped at
 * SAMPLE_MAX_TOP; 0: only the chosen token's logprob; < 0: no logprobs at
 * all, out->logprob = 0, which saves a pass over the vocabulary). out may be
 * NULL. Returns the token id (also in out->token).
 */
int32_t sample_next(const struct sample_params *p, float *logits, int n_vocab,
                    const int32_t *history, int n_history, int64_t position, int n_top,
                    struct sample_result *out);

/* Greedy pick: index of the largest logit, lowest index on ties. */
int32_t sample_argmax(const float *logits, int n_vocab);

/* True if token is eos or one of the n stop ids. */
bool sample_is_stop_token(int32_t token, int32_t eos, const int32_t *stop_ids, int n);

/*
 * Stop strings. text[0..len) is the generated text so far (not
 * NUL-terminated). Returns the index of the stop string that occurs
 * earliest in text (on equal start, the first in the list) and sets *at to
 * the byte where it starts; -1 if none occurs.
 */
int sample_stop_find(const char *text, size_t len, const char *const *stops, int n_stops,
                     size_t *at);
/* Bytes at the end of text that are a proper prefix of some stop string,
 * i.e. that a streaming client must hold back until more text arrives. */
size_t sample_stop_holdback(const char *text, size_t len, const char *const *stops, int n_stops);

#ifdef __cplusplus
}
#endif

#endif
