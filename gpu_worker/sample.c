/* sample.c - token sampling; see sample.h. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sample_params_default(struct sample_params *p)
{
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->seed = 0;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sample_uniform(uint64_t seed, int64_t position)
{
    uint64_t z = mix64(seed + 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)position * 0xd1b54a32d192ed69ULL);
    z = mix64(z + 0x9e3779b97f4a7c15ULL);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

int32_t sample_argmax(const float *logits, int n_vocab)
{
    int32_t best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

bool sample_is_stop_token(int32_t token, int32_t eos, const int32_t *stop_ids, int n)
{
    if (token == eos) return true;
    for (int i = 0; i < n; i++)
        if (stop_ids[i] == token) return true;
    return false;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The tokens at the end of a history of n_history that p's penalties apply
 * to; 0 when they change nothing. */
static int penalty_window(const struct sample_params *p, int n_history)
{
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return 0;
    int n = p->repeat_last_n < 0 ? n_history : p->repeat_last_n;
    return n > n_history ? n_history : n < 0 ? 0 : n;
}

void sample_apply_penalties(const struct sample_params *p, float *logits, int n_vocab,
                            const int32_t *history, int n_history)
{
    int n = penalty_window(p, n_history);
    if (n <= 0) return;
    int32_t *w = malloc(sizeof(int32_t) * (size_t)n);
    if (!w) return; /* penalties are best effort under memory exhaustion */
    memcpy(w, history + (n_history - n), sizeof(int32_t) * (size_t)n);
    qsort(w, (size_t)n, sizeof(int32_t), cmp_i32);
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && w[j] == w[i])
            j++;
        int32_t t = w[i];
        int count = j - i;
        i = j;
        if (t < 0 || t >= n_vocab) continue;
        float l = logits[t];
        if (p->repeat_penalty != 1.0f) l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= p->frequency_penalty * (float)count + p->presence_penalty;
        logits[t] = l;
    }
    free(w);
}

struct cand {
    float logit;
    int32_t id;
};

static int cmp_cand(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The k best candidates (sorted, best first) of logits; returns the count.
 * NaN logits are never candidates. */
static int best_k(const float *logits, int n_vocab, int k, struct cand *c)
{
    if (k <= 0 || k > n_vocab) k = n_vocab;
    if (k == n_vocab) {
        int n = 0;
        for (int i = 0; i < n_vocab; i++)
            if (!isnan(logits[i])) c[n++] = (struct cand){logits[i], i};
        qsort(c, (size_t)n, sizeof(*c), cmp_cand);
        return n;
    }
    /* keep a sorted buffer of k: insertion with a threshold (k is small) */
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        if (isnan(logits[i])) continue; /* never a candidate */
        struct cand x = {logits[i], i};
        if (n == k && cmp_cand(&x, &c[k - 1]) >= 0) continue;
        int j = n < k ? n++ : k - 1;
        while (j > 0 && cmp_cand(&x, &c[j - 1]) < 0) {
            c[j] = c[j - 1];
            j--;
        }
        c[j] = x;
    }
    return n;
}

/* out's alternatives: the candidates c[0..n) (best first) with log-probabilities
 * logit - lse. */
static void put_top(struct sample_result *out, const struct cand *c, int n, double lse)
{
    for (int i = 0; i < n; i++) {
        out->top_ids[i] = c[i].id;
        out->top_logprobs[i] = (float)(c[i].logit - lse);
    }
    out->n_top = n;
}

static void fill_logprobs(const float *logits, int n_vocab, int32_t token, int n_top,
                          struct sample_result *out)
{
    float mx = logits[sample_argmax(logits, n_vocab)];
    double sum = 0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    out->logprob = (float)(logits[token] - lse);
    out->n_top = 0;
    if (n_top > SAMPLE_MAX_TOP) n_top = SAMPLE_MAX_TOP;
    if (n_top <= 0) return;
    struct cand c[SAMPLE_MAX_TOP];
    put_top(out, c, best_k(logits, n_vocab, n_top < n_vocab ? n_top : n_vocab, c), lse);
}

/* Move the k best of c[0..n) to the front (unordered): quickselect. */
static void select_k(struct cand *c, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        struct cand pivot = c[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (cmp_cand(&c[i], &pivot) < 0)
                i++;
            while (cmp_cand(&c[j], &pivot) > 0)
                j--;
            if (i <= j) {
                struct cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* The k best candidates of logits, sorted best first, into c (room for
 * n_vocab). Small k: insertion; large k: quickselect, then sort k. */
static int sorted_prefix(const float *logits, int n_vocab, int k, struct cand *c)
{
    if (k <= 64) return best_k(logits, n_vocab, k, c);
    int n = 0;
    for (int i = 0; i < n_vocab; i++)
        if (!isnan(logits[i])) c[n++] = (struct cand){logits[i], i};
    if (k > n) k = n;
    if (k < n) select_k(c, n, k);
    qsort(c, (size_t)k, sizeof(*c), cmp_cand);
    return k;
}

/* Draw from candidates c[0..n) (or all of logits in index order when c is
 * NULL) with probabilities softmax(logit / temperature). */
static int32_t draw(const struct cand *c, int n, const float *logits, float mx, float temp,
                    double u01)
{
    double tsum = 0;
    for (int i = 0; i < n; i++)
        tsum += exp(((double)(c ? c[i].logit : logits[i]) - mx) / temp);
    double u = u01 * tsum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += exp(((double)(c ? c[i].logit : logits[i]) - mx) / temp);
        if (u < acc) return c ? c[i].id : i;
    }
    return c ? c[n - 1].id : n - 1;
}

/* The top_p cut (by the temperature-1 mass with normalizer sum) and the
 * min_p cut of the sorted candidates c[0..n), then the draw. */
static int32_t cut_and_draw(const struct sample_params *p, const struct cand *c, int n, double sum,
                            float mx, double u01)
{
    if (p->top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += exp((double)c[i].logit - mx) / sum;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        /* p_i / p_max = exp(l_i - l_max) */
        int keep = 1;
        while (keep < n && exp((double)c[keep].logit - mx) >= p->min_p)
            keep++;
        n = keep;
    }
    return draw(c, n, NULL, mx, p->temperature, u01);
}

int32_t sample_next(const struct sample_params *p, float *logits, int n_vocab,
                    const int32_t *history, int n_history, int64_t position, int n_top,
                    struct sample_result *out)
{
    struct sample_result tmp;
    if (!out) out = &tmp;
    sample_apply_penalties(p, logits, n_vocab, history, n_history);
    int32_t tok = sample_argmax(logits, n_vocab);
    if (p->temperature <= 0.0f) goto done;
    float mx = logits[tok];
    double u01 = sample_uniform(p->seed, position);
    bool top_k = p->top_k > 0 && p->top_k < n_vocab;
    if (!top_k && p->top_p >= 1.0f && p->min_p <= 0.0f) {
        /* no truncation: no sorting either */
        tok = draw(NULL, n_vocab, logits, mx, p->temperature, u01);
        goto done;
    }
    struct cand *c = malloc(sizeof(*c) * (size_t)n_vocab);
    if (!c) goto done; /* greedy under memory exhaustion */
    int n;
    double sum = 0; /* normalization of the temperature-1 probabilities */
    if (top_k) {
        n = sorted_prefix(logits, n_vocab, p->top_k, c);
        for (int i = 0; i < n; i++)
            sum += exp((double)c[i].logit - mx);
    } else {
        for (int i = 0; i < n_vocab; i++)
            sum += exp((double)logits[i] - mx);
        /* grow a sorted prefix until it holds the top-p mass / the min-p cut */
        for (int k = 256;; k *= 4) {
            n = sorted_prefix(logits, n_vocab, k < n_vocab ? k : n_vocab, c);
            if (k >= n_vocab) break; /* every candidate */
            if (p->top_p < 1.0f) {
                double cum = 0;
                for (int i = 0; i < n; i++)
                    cum += exp((double)c[i].logit - mx) / sum;
                if (cum >= p->top_p) break;
            } else if (exp((double)c[n - 1].logit - mx) < p->min_p) {
                break;
            }
        }
    }
    tok = cut_and_draw(p, c, n, sum, mx, u01);
    free(c);
done:
    out->token = tok;
    if (n_top >= 0) {
        fill_logprobs(logits, n_vocab, tok, n_top, out);
    } else {
        out->logprob = 0;
        out->n_top = 0;
    }
    return tok;
}

void logits_summarize(const float *logits, int n_vocab, struct logits_top *t)
{
    struct cand c[LOGITS_TOP];
    t->n = best_k(logits, n_vocab, LOGITS_TOP < n_vocab ? LOGITS_TOP : n_vocab, c);
    t->n_vocab = n_vocab;
    for (int i = 0; i < t->n; i++) {
        t->id[i] = c[i].id;
        t->logit[i] = c[i].logit;
    }
    /* as fill_logprobs: the sum in index order */
    t->max = t->n ? c[0].logit : 0.f;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++)
        if (!isnan(logits[i])) sum += exp((double)logits[i] - t->max);
    t->sum = sum;
}

bool sample_top_decides(const struct sample_params *p, int n_history, int n_vocab)
{
    if (penalty_window(p, n_history) > 0) return false;
    return p->temperature <= 0.0f ||
           (p->top_k > 0 && p->top_k <= LOGITS_TOP && p->top_k < n_vocab);
}

bool sample_top_may_decide(const struct sample_params *p, int n_history)
{
    if (penalty_window(p, n_history) > 0) return false;
    return p->temperature <= 0.0f || (p->top_k > 0 && p->top_k <= LOGITS_TOP) ||
           p->top_p < 1.0f || p->min_p > 0.0f;
}

int32_t sample_from_top(const struct sample_params *p, const struct logits_top *t,
                        int n_history, int64_t position, int n_top, struct sample_result *out)
{
    if (t->n < 1 || penalty_window(p, n_history) > 0) return -1;
    struct cand c[LOGITS_TOP];
    for (int i = 0; i < t->n; i++)
        c[i] = (struct cand){t->logit[i], t->id[i]};
    int32_t tok = c[0].id;
    float mx = c[0].logit;
    bool whole = t->n == t->n_vocab; /* the candidates are the whole row */
    if (p->temperature > 0.0f) {
        bool top_k = p->top_k > 0 && p->top_k < t->n_vocab;
        if (!top_k && p->top_p >= 1.0f && p->min_p <= 0.0f) return -1; /* draws in index order */
        int n = t->n;
        double sum = 0;
        if (top_k) {
            if (p->top_k > t->n) return -1;
            n = p->top_k;
            for (int i = 0; i < n; i++)
                sum += exp((double)c[i].logit - mx);
        } else {
            sum = t->sum;
            /* the cut that sample_next's growing prefix stops at must be here */
            if (!whole) {
                bool inside = false;
                double cum = 0;
                for (int i = 0; i < n && !inside; i++) {
                    cum += exp((double)c[i].logit - mx) / sum;
                    inside = p->top_p < 1.0f ? cum >= p->top_p
                                             : exp((double)c[i].logit - mx) < p->min_p;
                }
                if (!inside) return -1;
            }
        }
        tok = cut_and_draw(p, c, n, sum, mx, sample_uniform(p->seed, position));
    }
    if (!out) return tok;
    out->token = tok;
    out->logprob = 0;
    out->n_top = 0;
    if (n_top < 0) return tok;
    double lse = mx + log(t->sum);
    for (int i = 0; i < t->n; i++)
        if (c[i].id == tok) out->logprob = (float)(c[i].logit - lse);
    if (n_top > SAMPLE_MAX_TOP) n_top = SAMPLE_MAX_TOP;
    put_top(out, c, n_top < t->n ? n_top : t->n, lse);
    return tok;
}

int sample_stop_find(const char *text, size_t len, const char *const *stops, int n_stops,
                     size_t *at)
{
    int best = -1;
    size_t best_at = 0;
    for (int s = 0; s < n_stops; s++) {
        size_t sl = strlen(stops[s]);
        if (sl == 0 || sl > len) continue;
        const char *hit = memmem(text, len, stops[s], sl);
        if (hit && (best < 0 || (size_t)(hit - text) < best_at)) {
            best = s;
            best_at = (size_t)(hit - text);
        }
    }
    if (best >= 0 && at) *at = best_at;
    return best;
}

size_t sample_stop_holdback(const char *text, size_t len, const char *const *stops, int n_stops)
{
    size_t hold = 0;
    for (int s = 0; s < n_stops; s++) {
        size_t sl = strlen(stops[s]);
        /* longest k < sl with text's last k bytes == stop's first k bytes */
        for (size_t k = sl - (sl > 0); k > hold; k--) {
            if (k <= len && memcmp(text + len - k, stops[s], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}
