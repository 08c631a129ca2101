/*
 * test_sample.c - gpu_worker/sample.c: determinism, the distributions of
 * temperature / top-k / top-p / min-p sampling against the softmax they
 * must follow (chi-square over many draws at different positions),
 * penalties, logprobs, stop tokens and stop strings.
 */
#include "gpu_worker/sample.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NV 6
/* probabilities 0.4 0.25 0.15 0.1 0.06 0.04 (as logits: their logs + 3) */
static const double probs[NV] = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};

static void fill(float *lg)
{
    for (int i = 0; i < NV; i++)
        lg[i] = (float)(log(probs[i]) + 3.0);
}

/* Chi-square statistic of counts against expected probabilities exp[]
 * (0 = token must never be drawn: any draw fails). */
static double chi2(const int *count, const double *expect, int n, int draws)
{
    double x = 0;
    for (int i = 0; i < n; i++) {
        if (expect[i] == 0) {
            assert_int_equal(count[i], 0);
            continue;
        }
        double e = expect[i] * draws;
        x += (count[i] - e) * (count[i] - e) / e;
    }
    return x;
}

static void draw_counts(const struct sample_params *p, int draws, int *count)
{
    memset(count, 0, sizeof(int) * NV);
    float lg[NV];
    for (int i = 0; i < draws; i++) {
        fill(lg);
        int32_t t = sample_next(p, lg, NV, NULL, 0, i, 0, NULL);
        assert_true(t >= 0 && t < NV);
        count[t]++;
    }
}

/* critical values of chi-square at p = 0.001 by degrees of freedom */
static const double crit[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52};

static void test_temperature_one(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 42;
    int c[NV];
    draw_counts(&p, 20000, c);
    assert_true(chi2(c, probs, NV, 20000) < crit[NV - 1]);
}

static void test_temperature_half(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 7;
    p.temperature = 0.5f;
    double e[NV], z = 0;
    for (int i = 0; i < NV; i++)
        z += e[i] = probs[i] * probs[i];
    for (int i = 0; i < NV; i++)
        e[i] /= z;
    int c[NV];
    draw_counts(&p, 20000, c);
    assert_true(chi2(c, e, NV, 20000) < crit[NV - 1]);
}

static void test_top_k(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 1;
    p.top_k = 2;
    double e[NV] = {0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0};
    int c[NV];
    draw_counts(&p, 10000, c);
    assert_true(chi2(c, e, NV, 10000) < crit[1]);
}

static void test_top_p(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 2;
    p.top_p = 0.7f; /* 0.4 + 0.25 = 0.65 < 0.7 <= 0.8: keep three */
    double e[NV] = {0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0};
    int c[NV];
    draw_counts(&p, 10000, c);
    assert_true(chi2(c, e, NV, 10000) < crit[2]);
}

static void test_min_p(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 3;
    p.min_p = 0.2f; /* keep p >= 0.08: four tokens */
    double e[NV] = {0.4 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.1 / 0.9, 0, 0};
    int c[NV];
    draw_counts(&p, 10000, c);
    assert_true(chi2(c, e, NV, 10000) < crit[3]);
}

static void test_greedy_and_determinism(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    float lg[NV];
    fill(lg);
    p.temperature = 0;
    assert_int_equal(sample_next(&p, lg, NV, NULL, 0, 0, 0, NULL), 0);
    float tie[4] = {1, 3, 3, 2};
    assert_int_equal(sample_argmax(tie, 4), 1);
    /* the same (seed, position) draws the same token, whatever came before */
    p.temperature = 1;
    p.seed = 12345;
    int32_t first[64];
    for (int i = 0; i < 64; i++) {
        fill(lg);
        first[i] = sample_next(&p, lg, NV, NULL, 0, i, 0, NULL);
    }
    for (int i = 63; i >= 0; i--) {
        fill(lg);
        assert_int_equal(sample_next(&p, lg, NV, NULL, 0, i, 0, NULL), first[i]);
    }
    assert_true(sample_uniform(1, 5) == sample_uniform(1, 5));
    assert_true(sample_uniform(1, 5) != sample_uniform(2, 5));
    assert_true(sample_uniform(1, 5) != sample_uniform(1, 6));
    /* uniform: mean and range over many positions */
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = sample_uniform(99, i);
        assert_true(u >= 0 && u < 1);
        sum += u;
    }
    assert_true(fabs(sum / 100000 - 0.5) < 0.005);
}

static void test_penalties(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    float lg[NV] = {2.0f, -1.0f, 0.5f, 3.0f, 1.0f, -2.0f};
    float orig[NV];
    memcpy(orig, lg, sizeof(lg));
    int32_t hist[] = {0, 1, 1, 3, 3, 3, 9999, -1};
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = -1;
    sample_apply_penalties(&p, lg, NV, hist, 8);
    assert_float_equal(lg[0], 1.0f, 0);  /* positive: divided */
    assert_float_equal(lg[1], -2.0f, 0); /* negative: multiplied */
    assert_float_equal(lg[3], 1.5f, 0);  /* once, despite 3 occurrences */
    assert_float_equal(lg[2], orig[2], 0);
    assert_float_equal(lg[4], orig[4], 0);
    assert_float_equal(lg[5], orig[5], 0);
    /* frequency and presence */
    memcpy(lg, orig, sizeof(lg));
    sample_params_default(&p);
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.repeat_last_n = -1;
    sample_apply_penalties(&p, lg, NV, hist, 8);
    assert_float_equal(lg[0], 2.0f - 0.5f - 0.25f, 1e-6);
    assert_float_equal(lg[1], -1.0f - 1.0f - 0.25f, 1e-6);
    assert_float_equal(lg[3], 3.0f - 1.5f - 0.25f, 1e-6);
    assert_float_equal(lg[2], orig[2], 0);
    /* window: only the last 2 tokens (3, 3) count */
    memcpy(lg, orig, sizeof(lg));
    p.repeat_last_n = 2;
    sample_apply_penalties(&p, lg, NV, hist, 6);
    assert_float_equal(lg[3], 3.0f - 1.0f - 0.25f, 1e-6);
    assert_float_equal(lg[0], orig[0], 0);
    assert_float_equal(lg[1], orig[1], 0);
    /* window 0: nothing */
    memcpy(lg, orig, sizeof(lg));
    p.repeat_last_n = 0;
    sample_apply_penalties(&p, lg, NV, hist, 6);
    assert_memory_equal(lg, orig, sizeof(lg));
}

static void test_logprobs(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 0;
    float lg[NV];
    fill(lg);
    struct sample_result r;
    assert_int_equal(sample_next(&p, lg, NV, NULL, 0, 0, 3, &r), 0);
    assert_int_equal(r.token, 0);
    assert_float_equal(r.logprob, log(0.4), 1e-5);
    assert_int_equal(r.n_top, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r.top_ids[i], i);
        assert_float_equal(r.top_logprobs[i], log(probs[i]), 1e-5);
    }
    assert_int_equal(sample_next(&p, lg, NV, NULL, 0, 0, 100, &r), 0);
    assert_int_equal(r.n_top, NV);
    assert_int_equal(sample_next(&p, lg, NV, NULL, 0, 0, -1, &r), 0);
    assert_int_equal(r.n_top, 0);
    assert_float_equal(r.logprob, 0, 0); /* not computed */
    assert_int_equal(sample_next(&p, lg, NV, NULL, 0, 0, 0, &r), 0);
    assert_int_equal(r.n_top, 0);
    assert_float_equal(r.logprob, log(0.4), 1e-5);
}

static void test_stops(void **state)
{
    (void)state;
    int32_t ids[] = {7, 9};
    assert_true(sample_is_stop_token(2, 2, ids, 2));
    assert_true(sample_is_stop_token(9, 2, ids, 2));
    assert_false(sample_is_stop_token(8, 2, ids, 2));
    const char *stops[] = {"\n\nUser:", "END", "ND!"};
    const char *t = "hello END and ND! \n\nUser: x";
    size_t at = 0;
    assert_int_equal(sample_stop_find(t, strlen(t), stops, 3, &at), 1);
    assert_int_equal(at, 6);
    /* "ND!" at 14 comes before "\n\nUser:" at 18 in the tail */
    assert_int_equal(sample_stop_find(t + 9, strlen(t) - 9, stops, 3, &at), 2);
    assert_int_equal(at, 5);
    assert_int_equal(sample_stop_find("nothing", 7, stops, 3, &at), -1);
    /* holdback: the tail could start a stop string */
    assert_int_equal(sample_stop_holdback("abc\n\nUs", 7, stops, 3), 4);
    assert_int_equal(sample_stop_holdback("abcE", 4, stops, 3), 1);
    assert_int_equal(sample_stop_holdback("abcEN", 5, stops, 3), 2);
    assert_int_equal(sample_stop_holdback("abcN", 4, stops, 3), 1);
    assert_int_equal(sample_stop_holdback("abc", 3, stops, 3), 0);
}

/* A large vocabulary (sorted prefixes grown by quickselect): every draw
 * falls in the truncated set computed here by a full sort, and the most
 * likely token comes up about as often as its probability says. */
#define BIG 50000

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void big_logits(float *lg)
{
    uint64_t st = 12345;
    for (int i = 0; i < BIG; i++) {
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(st >> 11) / 9007199254740992.0;
        lg[i] = (float)(-4.0 * log(-log(u + 1e-12) + 1e-12)); /* peaked, long tail */
    }
}

static void test_large_vocab(void **state)
{
    (void)state;
    float *lg = malloc(sizeof(float) * BIG), *sorted = malloc(sizeof(float) * BIG);
    big_logits(lg);
    memcpy(sorted, lg, sizeof(float) * BIG);
    qsort(sorted, BIG, sizeof(float), cmp_desc);
    double mx = sorted[0], sum = 0;
    for (int i = 0; i < BIG; i++)
        sum += exp(sorted[i] - mx);
    /* top-p 0.9 threshold logit: the smallest prefix reaching 0.9 */
    double cum = 0;
    int np = 0;
    while (np < BIG && cum < 0.9)
        cum += exp(sorted[np++] - mx) / sum;
    float thr_p = sorted[np - 1];
    float thr_k = sorted[99];
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 77;
    int hits_top = 0, draws = 400;
    int32_t best = sample_argmax(lg, BIG);
    float *w = malloc(sizeof(float) * BIG);
    for (int i = 0; i < draws; i++) {
        memcpy(w, lg, sizeof(float) * BIG);
        p.top_p = 0.9f;
        p.top_k = 0;
        int32_t t = sample_next(&p, w, BIG, NULL, 0, i, 0, NULL);
        assert_true(lg[t] >= thr_p);
        memcpy(w, lg, sizeof(float) * BIG);
        p.top_p = 1.0f;
        p.top_k = 100;
        t = sample_next(&p, w, BIG, NULL, 0, i, 0, NULL);
        assert_true(lg[t] >= thr_k);
        memcpy(w, lg, sizeof(float) * BIG);
        p.top_k = 0;
        p.min_p = 0.05f;
        t = sample_next(&p, w, BIG, NULL, 0, i, 0, NULL);
        assert_true(exp(lg[t] - mx) >= 0.05);
        p.min_p = 0;
        memcpy(w, lg, sizeof(float) * BIG);
        t = sample_next(&p, w, BIG, NULL, 0, i, 0, NULL);
        hits_top += t == best;
    }
    /* untruncated: frequency of the best token within 5 sigma of p_best */
    double pb = 1.0 / sum, sd = sqrt(pb * (1 - pb) / draws);
    assert_true(fabs((double)hits_top / draws - pb) < 5 * sd + 1e-3);
    free(w);
    free(lg);
    free(sorted);
}

/* Logits for the summary tests: kind 0 peaked (a few large values over
 * noise), 1 flat, 2 few distinct values (ties everywhere), 3 a vocabulary
 * smaller than a summary. */
static int summary_logits(int kind, float *lg, unsigned seed)
{
    int V = kind == 3 ? 40 : 3000;
    srand(seed);
    for (int i = 0; i < V; i++) {
        double u = (double)rand() / RAND_MAX;
        lg[i] = kind == 0 ? (float)(3 * u) : kind == 1 ? (float)(0.01 * u)
              : kind == 2 ? (float)floor(4 * u) : (float)(2 * u);
    }
    if (kind == 0)
        for (int i = 0; i < 6; i++)
            lg[(i * 997 + seed) % V] = 12.0f - (float)i;
    return V;
}

/* sample_from_top on a row's summary picks what sample_next picks on the
 * row, with the same logprobs, whenever it decides; it decides greedy and
 * top-k <= LOGITS_TOP always, and declines penalties and untruncated
 * temperature sampling. */
static void test_summary_matches_full(void **state)
{
    (void)state;
    float lg[3000], w[3000];
    struct params_case {
        float temp;
        int top_k;
        float top_p, min_p, rep;
        int must; /* 1: must decide, -1: must decline, 0: depends on the row */
    } cases[] = {
        {0, 0, 1, 0, 1, 1},      {0.8f, 40, 1, 0, 1, 1},    {1, 64, 0.9f, 0, 1, 1},
        {1, 5, 1, 0.1f, 1, 1},   {0.7f, 0, 0.9f, 0, 1, 0},  {1, 0, 1, 0.2f, 1, 0},
        {1, 0, 0.5f, 0.05f, 1, 0}, {1, 0, 1, 0, 1, -1},     {0, 0, 1, 0, 1.1f, -1},
        {1, 100, 1, 0, 1, -1},
    };
    int32_t hist[3] = {5, 9, 5};
    int decided = 0, total = 0;
    for (int kind = 0; kind < 4; kind++) {
        for (unsigned seed = 1; seed <= 6; seed++) {
            int V = summary_logits(kind, lg, seed);
            struct logits_top t;
            logits_summarize(lg, V, &t);
            assert_int_equal(t.n, V < LOGITS_TOP ? V : LOGITS_TOP);
            assert_int_equal(t.id[0], sample_argmax(lg, V));
            for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
                struct sample_params p;
                sample_params_default(&p);
                p.temperature = cases[c].temp;
                p.top_k = cases[c].top_k;
                p.top_p = cases[c].top_p;
                p.min_p = cases[c].min_p;
                p.repeat_penalty = cases[c].rep;
                p.seed = seed * 31 + c;
                for (int pos = 0; pos < 20; pos++) {
                    struct sample_result rs, rf;
                    int32_t ts = sample_from_top(&p, &t, 3, pos, 5, &rs);
                    memcpy(w, lg, sizeof(float) * V);
                    int32_t tf = sample_next(&p, w, V, hist, 3, pos, 5, &rf);
                    total++;
                    /* (a vocabulary of 40 turns top_k 40 off: untruncated) */
                    if (cases[c].must != 0 && kind != 3)
                        assert_int_equal(ts >= 0, cases[c].must == 1);
                    if (sample_top_decides(&p, 3, V)) assert_true(ts >= 0);
                    if (ts < 0) continue;
                    decided++;
                    assert_int_equal(ts, tf);
                    assert_true(rs.logprob == rf.logprob);
                    assert_int_equal(rs.n_top, rf.n_top);
                    for (int k = 0; k < rs.n_top; k++) {
                        assert_int_equal(rs.top_ids[k], rf.top_ids[k]);
                        assert_true(rs.top_logprobs[k] == rf.top_logprobs[k]);
                    }
                }
                assert_int_equal(sample_top_may_decide(&p, 3), cases[c].must != -1);
            }
        }
    }
    /* the row-dependent cases decide on the peaked rows, not on the flat ones */
    assert_true(decided > total / 2 && decided < total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_determinism),
        cmocka_unit_test(test_temperature_one),
        cmocka_unit_test(test_temperature_half),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_stops),
        cmocka_unit_test(test_large_vocab),
        cmocka_unit_test(test_summary_matches_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
