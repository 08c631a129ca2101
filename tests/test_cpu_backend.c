/*
 * test_cpu_backend.c - the CPU backend against logits computed by
 * llama.cpp ($STAGED_MODELS/ref/\*.logits, see shared/models/README.md) and
 * against the independent greedy reference of stories260K.
 *
 * - every ref model: logits at all 16 prompt positions (one batch) within a
 *   per-type relative RMS bound; greedy picks agree while the reference's
 *   pick is well separated; generated-step logits while the picks agree;
 * - one token at a time == the batched prompt;
 * - several sequences in one batch == each alone;
 * - the scalar reference kernels == the SIMD kernels;
 * - stories260K: 60 greedy tokens after BOS "Once upon a time".
 */
#include "common/model.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/cpu_backend.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const int32_t ref_prompt[16] = {5,   17,   300, 1000, 42, 7,   2048, 99,
                                       123, 4000, 8,   64,   1,  511, 777,  3333};

static const char *models_dir(void)
{
    const char *d = getenv("STAGED_MODELS");
    return d && *d ? d : "/work/shared/models";
}

struct reflog {
    int n_vocab, n_prompt, n_gen;
    float *logits; /* [(n_prompt + n_gen) * n_vocab] */
    int32_t *tokens;
};

static bool reflog_load(const char *path, struct reflog *r)
{
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    int32_t h[3];
    bool ok = fread(h, 4, 3, f) == 3 && h[0] > 0 && h[1] > 0 && h[2] >= 0;
    if (ok) {
        r->n_vocab = h[0];
        r->n_prompt = h[1];
        r->n_gen = h[2];
        size_t n = (size_t)(h[1] + h[2]) * h[0];
        r->logits = malloc(n * 4);
        r->tokens = malloc((size_t)h[2] * 4 + 4);
        ok = r->logits && r->tokens && fread(r->logits, 4, n, f) == n &&
             fread(r->tokens, 4, (size_t)h[2], f) == (size_t)h[2];
    }
    fclose(f);
    return ok;
}

static void reflog_free(struct reflog *r)
{
    free(r->logits);
    free(r->tokens);
}

static double rel_rms(const float *a, const float *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* top-1 minus top-2, and the RMS of the row */
static void margin(const float *x, int n, double *m, double *rms)
{
    float a = -INFINITY, b = -INFINITY;
    double ss = 0;
    for (int i = 0; i < n; i++) {
        ss += (double)x[i] * x[i];
        if (x[i] > a) {
            b = a;
            a = x[i];
        } else if (x[i] > b) {
            b = x[i];
        }
    }
    *m = a - b;
    *rms = sqrt(ss / n);
}

static struct backend *make(const struct st_model *m, int seqs, int ctx, int batch, int threads)
{
    struct backend_config cfg = {
        .n_threads = threads, .max_seqs = seqs, .max_ctx = ctx, .max_batch = batch};
    struct backend *b = NULL;
    struct st_errbuf eb = {{0}};
    int rc = cpu_backend_ops.create(m, &cfg, &b, &eb);
    if (rc) print_message("create: %s\n", eb.msg);
    assert_int_equal(rc, 0);
    return b;
}

/* Run n tokens of sequence seq at positions pos0.. in one batch. */
static void run(struct backend *b, int seq, const int32_t *tok, int n, int pos0, bool all,
                float *logits)
{
    int32_t pos[64], sq[64];
    int8_t lg[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
        sq[i] = seq;
        lg[i] = all || i == n - 1;
    }
    struct batch bt = {.n_tokens = n, .token = tok, .pos = pos, .seq = sq, .logits = lg};
    assert_int_equal(cpu_backend_ops.forward(b, &bt, logits), 0);
}

static struct st_model *open_model(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", models_dir(), rel);
    struct st_model *m = NULL;
    struct st_errbuf eb = {{0}};
    if (model_open_file(path, &m, &eb)) {
        print_message("skip: %s: %s\n", path, eb.msg);
        return NULL;
    }
    return m;
}

/* bound: max(1e-3, a quarter of the relative RMS error that quantization
 * itself causes for the type, lower end of the README's range). Kernels
 * follow the summation order of llama.cpp's CPU kernels (see kernels.h):
 * with 8-bit or bf16 activations a last-bit difference flips the rounding
 * of an activation downstream and these random-weight models amplify it,
 * so many files agree to the last bit or nearly.
 *
 * One exception, by choice: llama.cpp sums products of float weights in one
 * order for batches and in another for single tokens. We use its batched
 * order for every token (a token's logits must not depend on its batch), so
 * BF16, whose 8-bit-mantissa activations amplify last-bit differences like
 * 8-bit quantization does, matches the prompt logits exactly and the
 * one-token steps to 0.004 instead of the 0.002 bound. */
struct refcase {
    const char *name;
    double bound;     /* relative RMS bound */
    double gen_bound; /* for the generated steps, if not bound (0) */
};

static const struct refcase refcases[] = {
    {"ref-qwen2.F32", 1e-3, 0},       {"ref-qwen2.F16", 1e-3, 0},
    {"ref-qwen2.BF16", 0.002, 0.006}, {"ref-qwen2.Q8_0", 0.0075, 0},
    {"ref-qwen2.Q6_K", 0.0175, 0},    {"ref-qwen2.Q4_0", 0.0375, 0},
    {"ref-qwen2.Q4_1", 0.0375, 0},    {"ref-qwen2.Q5_0", 0.0375, 0},
    {"ref-qwen2.Q5_1", 0.0375, 0},    {"ref-qwen2.Q4_K_S", 0.0375, 0},
    {"ref-qwen2.Q5_K_S", 0.0375, 0},  {"ref-qwen2.Q4_K_M", 0.0375, 0},
    {"ref-qwen2.Q2_K", 0.15, 0},      {"ref-qwen2.Q3_K_S", 0.15, 0},
    {"ref-llama.F32", 1e-3, 0},       {"ref-llama.F16", 1e-3, 0},
    {"ref-llama.Q8_0", 0.0075, 0},    {"ref-llama.Q6_K", 0.0175, 0},
    {"ref-llama.Q4_K_M", 0.0375, 0},
};

static int n_checked, n_failed;

static void check_ref(const struct refcase *c)
{
    char rel[256], lpath[1024];
    snprintf(rel, sizeof(rel), "ref/%s.gguf", c->name);
    snprintf(lpath, sizeof(lpath), "%s/ref/%s.logits", models_dir(), c->name);
    struct st_model *m = open_model(rel);
    struct reflog r = {0};
    if (!m || !reflog_load(lpath, &r)) {
        model_close(&m);
        reflog_free(&r);
        return;
    }
    int nv = r.n_vocab, np = r.n_prompt;
    assert_int_equal(nv, (int)m->hp.n_vocab);
    assert_int_equal(np, 16);
    struct backend *b = make(m, 1, np + r.n_gen + 1, np, 2);
    float *lg = malloc(sizeof(float) * nv * np);
    run(b, 0, ref_prompt, np, 0, true, lg);
    double worst = 0;
    for (int p = 0; p < np; p++) {
        double e = rel_rms(lg + (size_t)p * nv, r.logits + (size_t)p * nv, nv);
        if (e > worst) worst = e;
    }
    /* greedy continuation while the reference's picks are well separated */
    float *cur = malloc(sizeof(float) * nv);
    memcpy(cur, lg + (size_t)(np - 1) * nv, sizeof(float) * nv);
    const float *refrow = r.logits + (size_t)(np - 1) * nv;
    int agreed = 0;
    double gen_worst = 0;
    for (int s = 0; s < r.n_gen; s++) {
        double mg, rms;
        margin(refrow, nv, &mg, &rms);
        int mine = argmax(cur, nv);
        if (mine != r.tokens[s]) {
            if (mg > 2 * c->bound * rms)
                print_message("%s step %d: picked %d, reference %d (margin %.3f)\n", c->name, s,
                              mine, r.tokens[s], mg);
            assert_false(mg > 2 * c->bound * rms);
            break;
        }
        agreed++;
        run(b, 0, &r.tokens[s], 1, np + s, false, cur);
        refrow = r.logits + (size_t)(np + s) * nv;
        double e = rel_rms(cur, refrow, nv);
        if (e > gen_worst) gen_worst = e;
    }
    double gen_bound = c->gen_bound > 0 ? c->gen_bound : c->bound;
    print_message("%-18s prompt rel err max %.5f (bound %.4f), greedy agree %2d/%d, "
                  "generated rel err max %.5f (bound %.4f)\n",
                  c->name, worst, c->bound, agreed, r.n_gen, gen_worst, gen_bound);
    if (worst > c->bound || gen_worst > gen_bound) {
        print_message("%s: FAILED bound %.4f\n", c->name, c->bound);
        n_failed++;
    }
    n_checked++;
    free(cur);
    free(lg);
    cpu_backend_ops.destroy(&b);
    assert_null(b);
    reflog_free(&r);
    model_close(&m);
}

static void test_ref_models(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(refcases) / sizeof(refcases[0]); i++)
        check_ref(&refcases[i]);
    if (n_checked == 0) skip();
    assert_int_equal(n_failed, 0);
}

/* one token at a time through the cache == the prompt as one batch */
static void check_incremental(const char *rel, double tol)
{
    struct st_model *m = open_model(rel);
    if (!m) skip();
    int nv = (int)m->hp.n_vocab;
    struct backend *b1 = make(m, 1, 32, 16, 2), *b2 = make(m, 1, 32, 16, 1);
    float *all = malloc(sizeof(float) * nv * 16), *one = malloc(sizeof(float) * nv);
    run(b1, 0, ref_prompt, 16, 0, true, all);
    for (int p = 0; p < 16; p++) {
        run(b2, 0, &ref_prompt[p], 1, p, true, one);
        double e = rel_rms(one, all + (size_t)p * nv, nv);
        if (e > tol) print_message("%s pos %d: incremental vs batched rel err %g\n", rel, p, e);
        assert_true(e <= tol);
    }
    assert_int_equal(cpu_backend_ops.seq_len(b2, 0), 16);
    free(all);
    free(one);
    cpu_backend_ops.destroy(&b1);
    cpu_backend_ops.destroy(&b2);
    model_close(&m);
}

static void test_incremental(void **state)
{
    (void)state;
    /* quantized weights: the 4-token kernels are bit-identical to the
     * one-token ones, so the paths agree to rounding of the float ops */
    check_incremental("ref/ref-qwen2.Q4_K_M.gguf", 1e-5);
    check_incremental("ref/ref-qwen2.Q8_0.gguf", 1e-5);
    /* F16 weights: batched and one-token products sum in different orders
     * (llama.cpp's two paths, which we follow); binary16 rounding in
     * attention turns last-bit differences into ~3e-4 */
    check_incremental("ref/ref-llama.F16.gguf", 1e-3);
}

/* three sequences interleaved in one batch == each alone; truncate + redo */
static void check_multi_seq(const char *rel)
{
    struct st_model *m = open_model(rel);
    if (!m) skip();
    int nv = (int)m->hp.n_vocab;
    struct backend *b = make(m, 3, 32, 24, 2);
    /* seq s gets prompt tokens [4s .. 4s+6) */
    int32_t tok[18], pos[18], seq[18];
    int8_t lg[18];
    int n = 0;
    for (int i = 0; i < 6; i++)
        for (int s = 0; s < 3; s++) {
            tok[n] = ref_prompt[4 * s + i];
            pos[n] = i;
            seq[n] = s;
            lg[n] = 1;
            n++;
        }
    float *mixed = malloc(sizeof(float) * nv * 18), *alone = malloc(sizeof(float) * nv * 6);
    struct batch bt = {.n_tokens = 18, .token = tok, .pos = pos, .seq = seq, .logits = lg};
    assert_int_equal(cpu_backend_ops.forward(b, &bt, mixed), 0);
    for (int s = 0; s < 3; s++) {
        struct backend *one = make(m, 1, 32, 8, 1);
        run(one, 0, &ref_prompt[4 * s], 6, 0, true, alone);
        for (int i = 0; i < 6; i++) {
            double e = rel_rms(mixed + (size_t)(3 * i + s) * nv, alone + (size_t)i * nv, nv);
            assert_true(e <= 1e-5);
        }
        cpu_backend_ops.destroy(&one);
        assert_int_equal(cpu_backend_ops.seq_len(b, s), 6);
    }
    /* a bad batch changes nothing: wrong position */
    int32_t t1 = 5, p1 = 9, s1 = 1;
    int8_t l1 = 1;
    struct batch bad = {.n_tokens = 1, .token = &t1, .pos = &p1, .seq = &s1, .logits = &l1};
    assert_int_equal(cpu_backend_ops.forward(b, &bad, alone), ST_EINVAL);
    s1 = 3;
    p1 = 0;
    assert_int_equal(cpu_backend_ops.forward(b, &bad, alone), ST_EINVAL);
    s1 = 1;
    p1 = 6;
    t1 = nv;
    assert_int_equal(cpu_backend_ops.forward(b, &bad, alone), ST_EINVAL);
    assert_int_equal(cpu_backend_ops.seq_len(b, 1), 6);
    /* truncate sequence 1 to 3 positions and re-feed: same logits as before */
    assert_int_equal(cpu_backend_ops.seq_truncate(b, 1, 3), 0);
    assert_int_equal(cpu_backend_ops.seq_len(b, 1), 3);
    run(b, 1, &ref_prompt[4 + 3], 3, 3, true, alone);
    for (int i = 0; i < 3; i++)
        assert_true(rel_rms(alone + (size_t)i * nv, mixed + (size_t)(3 * (3 + i) + 1) * nv, nv) <=
                    1e-5);
    free(mixed);
    free(alone);
    cpu_backend_ops.destroy(&b);
    model_close(&m);
}

/* the batch a token comes in never changes its logits: quantized and float
 * weights alike */
static void test_multi_seq(void **state)
{
    (void)state;
    check_multi_seq("ref/ref-qwen2.Q6_K.gguf");
    check_multi_seq("ref/ref-qwen2.Q5_0.gguf");
    check_multi_seq("ref/ref-qwen2.BF16.gguf");
    check_multi_seq("ref/ref-llama.F16.gguf");
    check_multi_seq("ref/ref-llama.F32.gguf");
}

/* SIMD kernels vs the scalar reference kernels (which sum in another
 * order), whole forward pass. A last-bit difference in one dot product can
 * flip a binary16 rounding in attention or, with 8-bit activations, the
 * rounding of an activation in the next layer, and these random-weight
 * models amplify such flips: bounds of the size that gives (printed). */
static void test_reference_path(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        double tol;
    } files[] = {{"ref/ref-qwen2.F32.gguf", 1e-3},    {"ref/ref-llama.F16.gguf", 1e-3},
                 {"ref/ref-qwen2.BF16.gguf", 0.01},   {"ref/ref-qwen2.Q4_K_M.gguf", 0.03},
                 {"ref/ref-qwen2.Q5_K_S.gguf", 0.03}, {"ref/ref-qwen2.Q4_0.gguf", 0.03},
                 {"ref/ref-llama.Q8_0.gguf", 0.03}};
    for (size_t k = 0; k < sizeof(files) / sizeof(files[0]); k++) {
        struct st_model *m = open_model(files[k].file);
        if (!m) skip();
        int nv = (int)m->hp.n_vocab;
        struct backend *fast = make(m, 1, 32, 16, 2), *ref = make(m, 1, 32, 16, 2);
        cpu_backend_set_reference(ref, true);
        float *a = malloc(sizeof(float) * nv * 16), *r = malloc(sizeof(float) * nv * 16);
        run(fast, 0, ref_prompt, 16, 0, true, a);
        run(ref, 0, ref_prompt, 16, 0, true, r);
        double e = rel_rms(a, r, nv * 16);
        print_message("%-28s SIMD vs scalar reference rel err %.2g (bound %g)\n", files[k].file, e,
                      files[k].tol);
        assert_true(e <= files[k].tol);
        free(a);
        free(r);
        cpu_backend_ops.destroy(&fast);
        cpu_backend_ops.destroy(&ref);
        model_close(&m);
    }
}

/* stories260K: greedy decode reproduces the reference's 60 tokens */
static void test_stories_greedy(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof(path), "%s/stories260K.reference-greedy.txt", models_dir());
    FILE *f = fopen(path, "r");
    struct st_model *m = open_model("stories260K.gguf");
    if (!f || !m) {
        if (f) fclose(f);
        model_close(&m);
        skip();
    }
    char line[8192];
    int32_t want[128];
    int n_want = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "tokens: [", 9)) continue;
        char *p = line + 9;
        while (*p && *p != ']' && n_want < 128) {
            want[n_want++] = (int32_t)strtol(p, &p, 10);
            while (*p == ',' || *p == ' ')
                p++;
        }
    }
    fclose(f);
    assert_int_equal(n_want, 65);
    static const int32_t prompt[5] = {1, 403, 407, 261, 378};
    assert_memory_equal(want, prompt, sizeof(prompt));
    int nv = (int)m->hp.n_vocab;
    struct backend *b = make(m, 1, 128, 8, 2);
    float *lg = malloc(sizeof(float) * nv);
    run(b, 0, prompt, 5, 0, false, lg);
    /* top-1 logit after the prompt: id 432 "," = 17.7994 */
    assert_int_equal(argmax(lg, nv), 432);
    assert_float_equal(lg[432], 17.7994f, 2e-3);
    for (int s = 5; s < n_want; s++) {
        int32_t t = argmax(lg, nv);
        assert_int_equal(t, want[s]);
        run(b, 0, &t, 1, s, false, lg);
    }
    free(lg);
    cpu_backend_ops.destroy(&b);
    model_close(&m);
}

/* creation and batch errors: a vocab-only file, bad limits, oversize batch */
static void test_errors(void **state)
{
    (void)state;
    struct st_model *v = open_model("vocab/ggml-vocab-qwen2.gguf");
    struct st_model *m = open_model("stories260K.gguf");
    if (!v || !m) {
        model_close(&v);
        model_close(&m);
        skip();
    }
    struct backend *b = NULL;
    struct st_errbuf eb = {{0}};
    struct backend_config cfg = {.n_threads = 1, .max_seqs = 1, .max_ctx = 8, .max_batch = 2};
    assert_int_equal(cpu_backend_ops.create(v, &cfg, &b, &eb), ST_EUNSUPPORTED);
    assert_null(b);
    assert_non_null(strstr(eb.msg, "vocab-only"));
    cfg.max_batch = 0;
    assert_int_equal(cpu_backend_ops.create(m, &cfg, &b, &eb), ST_EINVAL);
    assert_null(b);
    cfg.max_batch = 2;
    assert_int_equal(cpu_backend_ops.create(m, &cfg, &b, &eb), 0);
    int32_t tok[3] = {1, 2, 3}, pos[3] = {0, 1, 2}, seq[3] = {0, 0, 0};
    int8_t lg[3] = {1, 1, 1};
    float *out = malloc(sizeof(float) * 3 * m->hp.n_vocab);
    struct batch bt = {.n_tokens = 3, .token = tok, .pos = pos, .seq = seq, .logits = lg};
    assert_int_equal(cpu_backend_ops.forward(b, &bt, out), ST_EINVAL); /* > max_batch */
    bt.n_tokens = 0;
    assert_int_equal(cpu_backend_ops.forward(b, &bt, out), ST_EINVAL);
    bt.n_tokens = 2;
    pos[1] = 2; /* gap */
    assert_int_equal(cpu_backend_ops.forward(b, &bt, out), ST_EINVAL);
    assert_int_equal(cpu_backend_ops.seq_len(b, 0), 0);
    pos[1] = 1;
    assert_int_equal(cpu_backend_ops.forward(b, &bt, out), 0);
    assert_int_equal(cpu_backend_ops.seq_len(b, 0), 2);
    /* positions past max_ctx */
    for (int p = 2; p < 8; p++) {
        int32_t t = 5, pp = p, s0 = 0;
        int8_t l0 = 0;
        struct batch one = {.n_tokens = 1, .token = &t, .pos = &pp, .seq = &s0, .logits = &l0};
        assert_int_equal(cpu_backend_ops.forward(b, &one, out), 0);
    }
    int32_t t = 5, pp = 8, s0 = 0;
    struct batch one = {.n_tokens = 1, .token = &t, .pos = &pp, .seq = &s0, .logits = NULL};
    assert_int_equal(cpu_backend_ops.forward(b, &one, out), ST_EINVAL);
    assert_int_equal(cpu_backend_ops.seq_truncate(b, 1, 0), ST_EINVAL);
    assert_int_equal(cpu_backend_ops.seq_len(b, -1), ST_EINVAL);
    free(out);
    cpu_backend_ops.destroy(&b);
    cpu_backend_ops.destroy(&b); /* safe twice */
    model_close(&v);
    model_close(&m);
}

/* Rows asked as LOGITS_SUMMARY: without a logits buffer the backend keeps
 * them (logits_row gives the row of a LOGITS_ROW pass bit for bit) and each
 * summary is the row's; outputs the batch asks for but lacks are refused
 * before anything changes. */
static void test_summaries(void **state)
{
    (void)state;
    struct st_model *m = open_model("stories260K.gguf");
    if (!m) skip();
    struct backend *b = NULL;
    struct st_errbuf eb = {{0}};
    struct backend_config cfg = {.n_threads = 1, .max_seqs = 1, .max_ctx = 16, .max_batch = 4};
    assert_int_equal(cpu_backend_ops.create(m, &cfg, &b, &eb), 0);
    int V = (int)m->hp.n_vocab;
    int32_t tok[4] = {1, 400, 300, 7}, pos[4] = {0, 1, 2, 3}, seq[4] = {0};
    int8_t rows[4] = {0, LOGITS_ROW, 0, LOGITS_ROW}, sums[4] = {0, LOGITS_SUMMARY, 0, LOGITS_SUMMARY};
    float *full = malloc(sizeof(float) * 2 * V), *row = malloc(sizeof(float) * V);
    struct logits_top top[2], want;
    struct batch bt = {.n_tokens = 4, .token = tok, .pos = pos, .seq = seq, .logits = rows};
    assert_int_equal(cpu_backend_ops.forward(b, &bt, full), 0);
    assert_int_equal(cpu_backend_ops.seq_truncate(b, 0, 0), 0);
    bt.logits = sums; /* no top: refused, nothing changed */
    assert_int_equal(cpu_backend_ops.forward(b, &bt, NULL), ST_EINVAL);
    assert_int_equal(cpu_backend_ops.seq_len(b, 0), 0);
    bt.top = top;
    assert_int_equal(cpu_backend_ops.forward(b, &bt, NULL), 0);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(cpu_backend_ops.logits_row(b, r, row), 0);
        assert_memory_equal(row, full + (size_t)r * V, sizeof(float) * V);
        logits_summarize(row, V, &want);
        assert_int_equal(top[r].n, want.n);
        assert_memory_equal(top[r].id, want.id, sizeof(want.id[0]) * want.n);
        assert_true(top[r].sum == want.sum && top[r].max == want.max);
    }
    assert_int_equal(cpu_backend_ops.logits_row(b, 2, row), ST_EINVAL);
    bt.logits = rows; /* LOGITS_ROW without a buffer */
    assert_int_equal(cpu_backend_ops.forward(b, &bt, NULL), ST_EINVAL);
    free(full);
    free(row);
    cpu_backend_ops.destroy(&b);
    model_close(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_greedy), cmocka_unit_test(test_ref_models),
        cmocka_unit_test(test_incremental),    cmocka_unit_test(test_multi_seq),
        cmocka_unit_test(test_reference_path), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_summaries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
