/*
 * Tests of the CUDA backend (gpu_worker/cuda/) and the loader's GPU upload
 * (loader/gpu_upload.cu). They need a CUDA device: without one (or in builds
 * without CUDA) every test is skipped with the reason, except the host-side
 * half of the alignment check below.
 *
 *  - every reference model of $STAGED_MODELS/ref: the logits at all 16 prompt
 *    positions (one batch), the prompt run for two more sequences interleaved
 *    in one batch, and 16 decode steps of three sequences (together and one
 *    at a time, alternately), each
 *    within the type's bound (relative RMS error) of llama.cpp's logits
 *    NAME.TYPE.logits;
 *  - stories260K: 60 greedy tokens after BOS + "Once upon a time" equal the
 *    reference, and the top-5 logits after the prompt match it;
 *  - upload + device checksums: the device wsum of every tensor equals the
 *    CPU's, a flipped byte is found and repaired;
 *  - integer products of every quantized type, batched (mmq) and for decode
 *    batches of 1-8 tokens (mvq), equal the CPU's reference dot products
 *    (llama.cpp's arithmetic) to float rounding, and a token's result does
 *    not depend on the batch it is in;
 *  - a GGUF whose quantized tensors start off 16-byte boundaries (alignment
 *    8) is refused with the tensor and the alignment named, not faulted on;
 *  - logits summaries (topk.cuh) equal the CPU's (logits_summarize) on rows
 *    with ties, NaN, -inf and every chunking of the vocabulary; a forward
 *    pass that asks some rows only as summaries gives the same summaries
 *    and rows (logits_row) as one that copies every row;
 *  - IPC + fault: a child process maps the upload through its IPC handle and
 *    computes the reference logits; a child whose kernel faults exits
 *    non-zero, and the parent then verifies its copy intact.
 * Model files absent from $STAGED_MODELS skip their test (the GPU machine
 * gets the models in parts).
 */
#include "common/gguf_write.h"
#include "common/model.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/cuda/cuda_backend.h"
#include "gpu_worker/quant.h"
#include "gpu_worker/quantize.h"
#include "loader/gpu_layout.h"
#include "loader/gpu_upload.h"
#include "shm/seg.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static const int32_t k_prompt[16] __attribute__((unused)) = {
    5, 17, 300, 1000, 42, 7, 2048, 99, 123, 4000, 8, 64, 1, 511, 777, 3333};

struct ref_case {
    const char *name;
    double bound;     /* reference mode (STAGED_CUDA_REF=1), relative RMS */
    double gen_bound; /* reference mode, the one-token steps, if not bound (0) */
    double fast;      /* the serving kernels */
};

/* Reference mode: the CPU backend's bounds (tests/test_cpu_backend.c): a
 * quarter of the quantization error of each type, at least 1e-3, and for
 * BF16's one-token steps 0.006 (llama.cpp sums float weights of one token in
 * another order than batches; we keep the batched one for every token).
 *
 * The serving kernels sum in other orders (tensor-core tiles, split rows,
 * float attention accumulators). On these random-weight models a last-bit
 * difference flips the 8-bit rounding of some activation and the model
 * amplifies it to 1-3% of the logits (measured: the CPU backend itself on a
 * machine with another libm lands at 0.014-0.025 on Q2_K and Q4_K_M), so
 * for types rounded to 8 bits (and BF16) their bound is that level, 0.04,
 * or twice the reference bound where that is larger. F32 keeps twice the
 * reference bound; F16 gets 0.003: the reference accumulates attention
 * outputs in half precision, whose rounding (about 1e-3 per output) the
 * float accumulators of the serving kernels do not repeat (measured 2.05e-3
 * on ref-llama.F16's one-token steps). */
static const struct ref_case k_cases[] = {
    {"ref-qwen2.F32", 1e-3, 0, 2e-3},       {"ref-qwen2.F16", 1e-3, 0, 3e-3},
    {"ref-qwen2.BF16", 0.002, 0.006, 0.04}, {"ref-qwen2.Q8_0", 0.0075, 0, 0.04},
    {"ref-qwen2.Q6_K", 0.0175, 0, 0.04},    {"ref-qwen2.Q5_1", 0.0375, 0, 0.075},
    {"ref-qwen2.Q5_0", 0.0375, 0, 0.075},   {"ref-qwen2.Q4_1", 0.0375, 0, 0.075},
    {"ref-qwen2.Q4_0", 0.0375, 0, 0.075},   {"ref-qwen2.Q5_K_S", 0.0375, 0, 0.075},
    {"ref-qwen2.Q4_K_S", 0.0375, 0, 0.075}, {"ref-qwen2.Q4_K_M", 0.0375, 0, 0.075},
    {"ref-qwen2.Q3_K_S", 0.15, 0, 0.3},     {"ref-qwen2.Q2_K", 0.15, 0, 0.3},
    {"ref-llama.F32", 1e-3, 0, 2e-3},       {"ref-llama.F16", 1e-3, 0, 3e-3},
    {"ref-llama.Q8_0", 0.0075, 0, 0.04},    {"ref-llama.Q6_K", 0.0175, 0, 0.04},
    {"ref-llama.Q4_K_M", 0.0375, 0, 0.075},
};

__attribute__((unused)) static const char *models_dir(void)
{
    const char *m = getenv("STAGED_MODELS");
    return m && *m ? m : "../shared/models";
}

static bool file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

#ifdef STAGED_CUDA

static bool gpu_or_skip(void)
{
    struct st_errbuf eb = {{0}};
    if (cuda_device_count(&eb) > 0) return true;
    print_message("skipped: %s\n", eb.msg);
    return false;
}

/* Deterministic Gaussian-ish values (sum of uniforms), xorshift state. */
static float rnd(uint64_t *s)
{
    float a = 0;
    for (int i = 0; i < 4; i++) {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        a += (float)(*s >> 40) / (float)(1 << 24) - 0.5f;
    }
    return a;
}

/* The CPU reference's dot products of W (N rows of type t, K elements)
 * with x (ntok rows) quantized as the reference quantizes activations:
 * ntok rows of N (the caller frees them). */
static double *ref_products(uint32_t t, int K, int N, int ntok, const uint8_t *w, const float *x)
{
    size_t rb = quant_row_size(t, K);
    uint8_t *act = malloc(quant_row_size(quant_vec_dot_type(t), K));
    double *ref = malloc(sizeof(double) * N * ntok);
    assert_true(act && ref);
    for (int tok = 0; tok < ntok; tok++) {
        quant_quantize_row(quant_vec_dot_type(t), x + (size_t)tok * K, act, K);
        for (int r = 0; r < N; r++)
            ref[(size_t)tok * N + r] = quant_vec_dot_ref(t, K, w + rb * r, act);
    }
    free(act);
    return ref;
}

/* Relative RMS difference of the n values y from ref. */
static double rel_err(const float *y, const double *ref, size_t n)
{
    double err = 0, ref2 = 0;
    for (size_t i = 0; i < n; i++) {
        double d = y[i] - ref[i];
        err += d * d;
        ref2 += ref[i] * ref[i];
    }
    return sqrt(err / ref2);
}

/* Relative RMS difference of y (ntok rows of N) from ref_products. */
static double rel_to_ref(uint32_t t, int K, int N, int ntok, const uint8_t *w, const float *x,
                         const float *y)
{
    double *ref = ref_products(t, K, N, ntok, w, x);
    double e = rel_err(y, ref, (size_t)N * ntok);
    free(ref);
    return e;
}

/* N random rows of K elements quantized as type t (values offset by `bias`,
 * which k-quants' mins need), and n tokens of activations with a spread of
 * block magnitudes. */
static uint8_t *random_rows(uint32_t t, int N, int K, float bias, uint64_t *seed)
{
    size_t rb = quant_row_size(t, K);
    uint8_t *w = malloc(rb * N);
    float *row = malloc(sizeof(float) * K);
    assert_non_null(w);
    assert_non_null(row);
    for (int r = 0; r < N; r++) {
        for (int k = 0; k < K; k++)
            row[k] = rnd(seed) + bias;
        assert_int_equal(quantize_row(t, row, w + rb * r, K), 0);
    }
    free(row);
    return w;
}

static float *random_acts(int K, int n, uint64_t *seed)
{
    float *x = malloc(sizeof(float) * K * n);
    assert_non_null(x);
    for (int i = 0; i < K * n; i++)
        x[i] = rnd(seed) * (1.f + (float)(i / 32 % 7));
    return x;
}

/* The same product with the rows grouped on the device (loader/gpu_layout.h,
 * type + 100) gives the same bits as with the file's layout in y. */
static void check_grouped(uint32_t t, int N, int K, int n, const uint8_t *w, const float *x,
                          const float *y, bool small)
{
    if (!gpu_layout_block_bytes(t)) return;
    float *yg = malloc(sizeof(float) * N * n);
    assert_non_null(yg);
    assert_int_equal(cuda_mmq_product((int)t + 100, N, K, n, w, x, yg, small), 0);
    print_message("%s type %2u grouped, %d tokens: %s\n", small ? "mvq" : "mmq", t, n,
                  memcmp(y, yg, sizeof(float) * N * n) ? "DIFFERS" : "identical");
    assert_memory_equal(y, yg, sizeof(float) * N * n);
    free(yg);
}

/* The decode kernels (mvq) on N rows of type t and the first 8 tokens of x:
 * the batch of 8 against the CPU reference, each token's bits the same in
 * batches of 3 and 1, and the grouped device layout the same bits at every
 * batch size. */
static void check_decode(uint32_t t, int N, int K, const uint8_t *w, const float *x)
{
    float *y8 = malloc(sizeof(float) * N * 8), *y = malloc(sizeof(float) * N * 8);
    assert_non_null(y8);
    assert_non_null(y);
    static const int nd[] = {8, 3, 1};
    for (size_t b = 0; b < sizeof(nd) / sizeof(nd[0]); b++) {
        float *out = b == 0 ? y8 : y;
        assert_int_equal(cuda_mmq_product((int)t, N, K, nd[b], w, x, out, true), 0);
        if (b == 0) {
            double rel = rel_to_ref(t, K, N, 8, w, x, y8);
            print_message("mvq type %2u K %5d N %5d: relative RMS error vs the CPU reference "
                          "%.2e\n", t, K, N, rel);
            assert_true(rel < 1e-6);
        } else {
            assert_memory_equal(y8, y, sizeof(float) * N * nd[b]);
        }
        check_grouped(t, N, K, nd[b], w, x, out, true);
    }
    free(y8);
    free(y);
}

/* The batched integer product of each quantized type against the CPU
 * reference (quant_vec_dot_ref on quant_quantize_row'd activations): N rows
 * not a multiple of the tile, a legacy K that ends in a partial chunk, 75
 * tokens (a partial token tile); then the first 9 tokens alone give the same
 * bits as in the batch of 75, and the grouped device layout the same bits as
 * the file's (N * blocks per row a multiple of 8). */
static void test_mmq_types(void **state)
{
    if (!gpu_or_skip()) skip();
    static const uint32_t types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                     GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,
                                     GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
    const int N = 72, n = 75, n_small = 9;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        uint32_t t = types[ti];
        bool kq = t >= GGML_TYPE_Q2_K;
        int K = kq ? 768 : 288;
        uint8_t *w = random_rows(t, N, K, kq ? 0.3f : 0.f, &seed);
        float *x = random_acts(K, n, &seed);
        float *y = malloc(sizeof(float) * N * n), *y9 = malloc(sizeof(float) * N * n_small);
        assert_int_equal(cuda_mmq_product((int)t, N, K, n, w, x, y, false), 0);
        double rel = rel_to_ref(t, K, N, n, w, x, y);
        assert_int_equal(cuda_mmq_product((int)t, N, K, n_small, w, x, y9, false), 0);
        bool same = memcmp(y, y9, sizeof(float) * N * n_small) == 0;
        print_message(
            "mmq type %2u: relative RMS error vs the CPU reference %.2e, batch of %d %s\n", t, rel,
            n_small, same ? "identical" : "DIFFERS");
        assert_true(rel < 1e-6);
        assert_true(same);
        check_grouped(t, N, K, n, w, x, y, false);
        check_decode(t, N, K, w, x);
        free(w);
        free(x);
        free(y);
        free(y9);
    }
}

/* The decode kernels on rows long enough to be split over 2 and 4 warps
 * (mvq.cu's mvq_wpr; test_mmq_types' rows take one warp each), up to 7B's
 * down rows (a lane's 5 units loaded at once for one token), and
 * vocabulary-sized products (mvq_rows_kernel for one token): against the
 * reference, and each token's bits the same in batches of 8, 3 and 1. */
static void test_mvq_split_rows(void **state)
{
    if (!gpu_or_skip()) skip();
    static const struct {
        uint32_t t;
        int K, N;
    } cases[] = {
        {GGML_TYPE_Q4_K, 2048, 70}, /* 64 units per row: 2 warps */
        {GGML_TYPE_Q6_K, 4864, 40}, /* 152 units (the 0.5B down shape's rows): 4 warps */
        {GGML_TYPE_Q5_0, 4864, 8},  /* 2-byte aligned blocks, 4 warps */
        {GGML_TYPE_Q6_K, 18944, 24}, /* 592 units (7B down's rows): 4 warps */
        {GGML_TYPE_Q6_K, 8960, 16},  /* 280 units (1.5B down's rows): lanes with 3 and 2 */
        {GGML_TYPE_Q8_0, 16416, 16}, /* 513 units: lanes with 4 and 5 */
        {GGML_TYPE_Q4_1, 4096, 8},  /* 128 units, 4 warps: each lane one, alone */
        {GGML_TYPE_Q6_K, 8960, 1536}, /* 1.5B's down itself: 2 warps, lanes with 5 and 4 */
        {GGML_TYPE_Q8_0, 896, 32768}, /* vocabulary-sized: one token takes two rows a warp */
        {GGML_TYPE_Q6_K, 1536, 32768}, /* the same, 48 units: a lane's pair in each row */
    };
    uint64_t seed = 0x2545f4914f6cdd1dull;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        uint32_t t = cases[c].t;
        int K = cases[c].K, N = cases[c].N;
        uint8_t *w = random_rows(t, N, K, 0.3f, &seed);
        float *x = random_acts(K, 8, &seed);
        check_decode(t, N, K, w, x);
        free(w);
        free(x);
    }
}

/* The decode kernel of gate/up with SwiGLU (k_swiglu_q) against the CPU
 * reference's dot products (silu in double), and each token's bits the same
 * in batches of 8, 3 and 1: short rows (a unit per lane, 0.5B), 1.5B's,
 * Llama-1B's and 7B's rows (a lane's units in masked pairs) and rows split
 * over 4 warps. */
static void test_swiglu_rows(void **state)
{
    if (!gpu_or_skip()) skip();
    static const struct {
        uint32_t t;
        int K, N;
    } cases[] = {
        {GGML_TYPE_Q5_0, 896, 72},  {GGML_TYPE_Q8_0, 896, 40},  {GGML_TYPE_Q4_K, 1536, 40},
        {GGML_TYPE_Q4_K, 2048, 36}, {GGML_TYPE_Q4_K, 3584, 24}, {GGML_TYPE_Q6_K, 3584, 24},
        {GGML_TYPE_Q4_K, 8192, 16},
    };
    uint64_t seed = 0x3c6ef372fe94f82bull;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        uint32_t t = cases[c].t;
        int K = cases[c].K, N = cases[c].N;
        uint8_t *w = random_rows(t, 2 * N, K, 0.3f, &seed);
        float *x = random_acts(K, 8, &seed);
        float *y8 = malloc(sizeof(float) * N * 8), *y = malloc(sizeof(float) * N * 8);
        assert_true(y8 && y);
        assert_int_equal(cuda_swiglu_product((int)t, N, K, 8, w, x, y8), 0);
        double *g = ref_products(t, K, N, 8, w, x);
        double *u = ref_products(t, K, N, 8, w + quant_row_size(t, K) * N, x);
        for (int i = 0; i < 8 * N; i++)
            g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        double rel = rel_err(y8, g, (size_t)8 * N);
        free(g);
        free(u);
        static const int nd[] = {3, 1};
        bool same = true;
        for (int b = 0; b < 2; b++) {
            assert_int_equal(cuda_swiglu_product((int)t, N, K, nd[b], w, x, y), 0);
            same = same && memcmp(y, y8, sizeof(float) * N * nd[b]) == 0;
        }
        print_message("swiglu type %2u K %4d: relative RMS error vs the CPU reference %.2e, "
                      "batches of 3 and 1 %s\n",
                      t, K, rel, same ? "identical" : "DIFFER");
        assert_true(rel < 1e-5);
        assert_true(same);
        free(w);
        free(x);
        free(y8);
        free(y);
    }
}

/* The decode path's rmsnorm + 8-bit quantization (k_norm_quant) against a
 * double-precision norm, for rows of the bench shapes and longer ones (6 to
 * 32 warps, 1 to 16 blocks per warp): each dequantized value within half a
 * step (plus the rounding of the scale) of the exact one, the block scale
 * amax/127 (class 3, kept as half) or 1/iscale (class 4) within rounding, the
 * sums exact; and a token's bits the same alone as in a batch of 8. */
static void test_norm_quant(void **state)
{
    if (!gpu_or_skip()) skip();
    static const struct {
        int cls, D;
    } cases[] = {{3, 896},  {3, 1536}, {3, 3584}, {3, 16384},
                 {4, 1536}, {4, 3584}, {4, 8192}, {4, 20480}};
    const int n = 8;
    const float eps = 1e-6f;
    uint64_t seed = 0x7f4a7c159e3779b9ull;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int cls = cases[c].cls, D = cases[c].D, BS = cls == 3 ? 32 : 256;
        float *x = random_acts(D, n, &seed), *w = random_acts(D, 1, &seed);
        int8_t *q = malloc((size_t)n * D), *q1 = malloc((size_t)D);
        float *d = malloc(sizeof(float) * n * D / 32), *s = malloc(sizeof(float) * n * D / 32);
        float *d1 = malloc(sizeof(float) * D / 32);
        int32_t *bs = malloc(sizeof(int32_t) * n * D / 16);
        assert_true(q && q1 && d && s && d1 && bs);
        assert_int_equal(cuda_norm_quant_check(cls, n, D, x, w, eps, q, d, s, bs), 0);
        double worst = 0;
        for (int t = 0; t < n; t++) {
            double ss = 0;
            for (int i = 0; i < D; i++)
                ss += (double)x[t * D + i] * x[t * D + i];
            double sc = 1.0 / sqrt(ss / D + eps);
            for (int b = 0; b < D / BS; b++) {
                size_t blk = (size_t)t * (D / BS) + b;
                double amax = 0;
                long sum = 0;
                for (int i = 0; i < BS; i++)
                    amax = fmax(amax, fabs(x[t * D + b * BS + i] * sc * w[b * BS + i]));
                double step = d[blk];
                /* class 4's scale has the sign of the largest-magnitude element */
                assert_true(fabs(fabs(step) - amax / 127) <= amax / 127 * (cls == 3 ? 1e-3 : 1e-6));
                for (int i = 0; i < BS; i++) {
                    double v = x[t * D + b * BS + i] * sc * w[b * BS + i];
                    int qi = q[blk * BS + i];
                    double e = fabs(qi * step - v) / (amax / 127);
                    if (e > worst) worst = e;
                    sum += qi;
                    if (cls == 4 && i % 16 == 15) {
                        long s16 = 0;
                        for (int j = i - 15; j <= i; j++)
                            s16 += q[blk * BS + j];
                        assert_int_equal(bs[blk * 16 + i / 16], s16);
                    }
                }
                if (cls == 3) assert_true(fabs(s[blk] - step * sum) <= fabs(step * sum) * 2e-3);
            }
        }
        /* half a step, plus the half rounding of the class 3 scale (127 steps x
         * 2^-11) or float rounding */
        print_message("norm_quant class %d, D %5d: worst error %.4f steps\n", cls, D, worst);
        assert_true(worst <= 0.5 + (cls == 3 ? 0.13 : 1e-4));
        assert_int_equal(cuda_norm_quant_check(cls, 1, D, x + (size_t)3 * D, w, eps, q1, d1, s, bs),
                         0);
        assert_memory_equal(q1, q + (size_t)3 * D, D);
        assert_memory_equal(d1, d + (size_t)3 * (D / BS), sizeof(float) * (D / BS));
        free(x);
        free(w);
        free(q);
        free(q1);
        free(d);
        free(s);
        free(d1);
        free(bs);
    }
}

/* The serving attention kernel for one decoding token against a double
 * precision softmax over half K/V rows: head_dim 64 and 128 (the warp-chunk
 * decode kernel: one to three chunks per warp), 96 (the decode tiles that
 * load V with K: one to three tiles of 256 positions), grouped heads. Float
 * accumulation of half inputs: within 1e-5 of the largest output. Its own
 * quantization of the output for o: k_mmq_quantize's bytes. */
static void test_attention_decode(void **state)
{
    if (!gpu_or_skip()) skip();
    static const int hds[] = {64, 128, 96}, nps[] = {1, 7, 256, 257, 700};
    const int n_heads = 16, n_kv = 2;
    uint64_t seed = 0x51ed270b27b1f1a5ull;
    for (size_t a = 0; a < sizeof(hds) / sizeof(hds[0]); a++)
        for (size_t b = 0; b < sizeof(nps) / sizeof(nps[0]); b++) {
            int hd = hds[a], np = nps[b];
            size_t kvd = (size_t)n_kv * hd;
            float *q = malloc(sizeof(float) * n_heads * hd),
                  *out = malloc(sizeof(float) * n_heads * hd);
            uint16_t *k = malloc(2 * kvd * np), *v = malloc(2 * kvd * np);
            double *s = malloc(sizeof(double) * np);
            assert_true(q && out && k && v && s);
            for (int i = 0; i < n_heads * hd; i++)
                q[i] = 2.f * rnd(&seed);
            for (size_t i = 0; i < kvd * np; i++) {
                k[i] = quant_f32_to_f16(rnd(&seed));
                v[i] = quant_f32_to_f16(rnd(&seed) + 0.1f * (float)(i / kvd % 5));
            }
            /* the output quantized for o by the kernel itself, byte for byte
             * k_mmq_quantize's: class 3 (each warp's 32 values), class 4 (a
             * cluster of the 256 / hd heads of a Q8_K block; not hd 96) */
            for (int cls = 3; cls <= 4; cls++)
                assert_int_equal(cuda_attention_check(n_heads, n_kv, hd, np, q, k, v, cls, out),
                                 cls == 4 && hd == 96 ? ST_EINVAL : 0);
            assert_int_equal(cuda_attention_check(n_heads, n_kv, hd, np, q, k, v, 0, out), 0);
            double err = 0, top = 0;
            for (int h = 0; h < n_heads; h++) {
                int kvh = h / (n_heads / n_kv);
                double mx = -1e300, sum = 0;
                for (int p = 0; p < np; p++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++)
                        d += (double)q[h * hd + e] *
                             quant_f16_to_f32(k[(size_t)p * kvd + (size_t)kvh * hd + e]);
                    s[p] = d / sqrt((double)hd);
                    if (s[p] > mx) mx = s[p];
                }
                for (int p = 0; p < np; p++)
                    sum += s[p] = exp(s[p] - mx);
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int p = 0; p < np; p++)
                        o += s[p] * quant_f16_to_f32(v[(size_t)p * kvd + (size_t)kvh * hd + e]);
                    o /= sum;
                    if (fabs(o) > top) top = fabs(o);
                    if (fabs(o - out[h * hd + e]) > err) err = fabs(o - out[h * hd + e]);
                }
            }
            print_message("attention hd %3d, %3d positions: max error %.2e of max %.2f\n", hd, np,
                          err, top);
            assert_true(err < 1e-5 * top);
            free(q);
            free(out);
            free(k);
            free(v);
            free(s);
        }
    /* class 4 where a Q8_K block is not whole heads (head_dim 32) or not
     * whole blocks (2 heads of 64): refused */
    float q1[4 * 64] = {0};
    uint16_t kv1[64] = {0};
    assert_int_equal(cuda_attention_check(4, 1, 32, 1, q1, kv1, kv1, 4, q1), ST_EINVAL);
    assert_int_equal(cuda_attention_check(2, 1, 64, 1, q1, kv1, kv1, 4, q1), ST_EINVAL);
}

/* ref-qwen2.Q4_K_M rewritten with general.alignment 8 and an 8-byte tensor
 * first, so that its quantized tensors start off 16-byte boundaries: the
 * check refuses it, naming the tensor and the alignment (the kernels would
 * fault), without a GPU; with one, create refuses it too. */
static void test_misaligned_refused(void **state)
{
    char gpath[512], tmp[] = "/tmp/staged-misaligned-XXXXXX";
    snprintf(gpath, sizeof(gpath), "%s/ref/ref-qwen2.Q4_K_M.gguf", models_dir());
    if (!file_exists(gpath)) {
        print_message("skipped: %s absent\n", gpath);
        skip();
    }
    struct st_errbuf eb = {{0}};
    struct st_model *m = NULL;
    assert_int_equal(model_open_file(gpath, &m, &eb), 0);
    assert_int_equal(cuda_check_alignment(m, &eb), 0); /* as published: 32-byte aligned */
    struct gguf_writer *w = gguf_writer_new(3, 8);
    assert_non_null(w);
    for (uint64_t i = 0; i < m->gguf->n_kv; i++) {
        const struct gguf_str *k = &m->gguf->kv[i].key;
        if (k->len == 17 && !memcmp(k->p, "general.alignment", 17)) continue;
        assert_int_equal(gguf_writer_copy_kv(w, m->gguf, (int64_t)i), 0);
    }
    const float pad[2] = {0.f, 0.f};
    const uint64_t ne_pad[1] = {2};
    assert_true(gguf_writer_add_tensor(w, "pad.weight", GGML_TYPE_F32, 1, ne_pad, pad) >= 0);
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const struct gguf_tensor *t = &m->gguf->tensors[i];
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.p);
        assert_true(
            gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, m->data + t->offset) >= 0);
    }
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(gguf_writer_to_file(w, tmp, &eb), 0);
    gguf_writer_destroy(&w);
    model_close(&m);
    assert_int_equal(model_open_file(tmp, &m, &eb), 0);
    assert_int_equal(cuda_check_alignment(m, &eb), ST_EUNSUPPORTED);
    print_message("check: %s\n", eb.msg);
    assert_non_null(strstr(eb.msg, "general.alignment is 8"));
    if (gpu_or_skip()) {
        struct backend_config cfg = {.max_seqs = 1, .max_ctx = 64, .max_batch = 8, .device = 0};
        struct backend *be = NULL;
        eb.msg[0] = 0;
        assert_int_equal(cuda_backend_ops()->create(m, &cfg, &be, &eb), ST_EUNSUPPORTED);
        assert_non_null(strstr(eb.msg, "general.alignment is 8"));
    }
    model_close(&m);
    unlink(tmp);
}

/* The reference logits file (see shared/models/README.md). */
struct ref_logits {
    int32_t n_vocab, n_prompt, n_gen;
    float *logits; /* (n_prompt + n_gen) * n_vocab */
    int32_t *gen;  /* n_gen greedy tokens */
};

static int ref_read(const char *path, struct ref_logits *r)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int32_t h[3];
    int rc = -1;
    if (fread(h, 4, 3, f) == 3 && h[0] > 0 && h[1] > 0 && h[2] >= 0 && h[0] < (1 << 20) &&
        h[1] <= 64 && h[2] <= 64) {
        r->n_vocab = h[0];
        r->n_prompt = h[1];
        r->n_gen = h[2];
        size_t nl = (size_t)(h[1] + h[2]) * h[0];
        r->logits = malloc(nl * 4);
        r->gen = malloc((size_t)(h[2] + 1) * 4);
        if (r->logits && r->gen && fread(r->logits, 4, nl, f) == nl &&
            fread(r->gen, 4, (size_t)h[2], f) == (size_t)h[2])
            rc = 0;
    }
    fclose(f);
    return rc;
}

static void ref_free(struct ref_logits *r)
{
    free(r->logits);
    free(r->gen);
}

static double rel_rms(const float *a, const float *ref, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Runs the 16-token prompt on seq 0 and returns the worst relative error. */
static double prompt_error(const struct backend_ops *ops, struct backend *be,
                           const struct ref_logits *r, int seq, float *out)
{
    int32_t pos[16], sq[16];
    int8_t lg[16];
    for (int i = 0; i < 16; i++) {
        pos[i] = i;
        sq[i] = seq;
        lg[i] = 1;
    }
    struct batch bt = {16, k_prompt, pos, sq, lg, NULL};
    assert_int_equal(ops->forward(be, &bt, out), 0);
    double worst = 0;
    char line[512];
    int len = 0;
    for (int i = 0; i < 16; i++) {
        double e =
            rel_rms(out + (size_t)i * r->n_vocab, r->logits + (size_t)i * r->n_vocab, r->n_vocab);
        if (e > worst) worst = e;
        len += snprintf(line + len, sizeof(line) - (size_t)len, " %.1e", e);
    }
    if (getenv("STAGED_TEST_VERBOSE")) print_message("  per position:%s\n", line);
    return worst;
}

/* Errors of one model in one attention mode: [prompt, 2-seq batch, 3-seq decode]. */
static void ref_model_errors(const struct ref_case *c, const char *gpath,
                             const struct ref_logits *rp, bool ref_mode, double err[3])
{
    const struct ref_logits r = *rp;
    struct st_model *m = NULL;
    struct st_errbuf eb = {{0}};
    assert_int_equal(model_open_file(gpath, &m, &eb), 0);
    assert_int_equal((int)m->hp.n_vocab, r.n_vocab);
    const struct backend_ops *ops = cuda_backend_ops();
    assert_non_null(ops);
    struct backend_config cfg = {.max_seqs = 3, .max_ctx = 64, .max_batch = 48, .device = 0};
    struct backend *be = NULL;
    if (ref_mode)
        setenv("STAGED_CUDA_REF", "1", 1);
    else
        unsetenv("STAGED_CUDA_REF");
    int rc = ops->create(m, &cfg, &be, &eb);
    unsetenv("STAGED_CUDA_REF");
    if (rc) print_message("create: %s\n", eb.msg);
    assert_int_equal(rc, 0);
    const int V = r.n_vocab;
    float *out = malloc(sizeof(float) * 48 * (size_t)V);
    assert_non_null(out);

    /* 1. prompt on seq 0, logits at every position */
    double e_prompt = prompt_error(ops, be, &r, 0, out);

    /* 2. the prompt for seqs 1 and 2 interleaved in one batch, last logits */
    int32_t tok[32], pos[32], sq[32];
    int8_t lg[32];
    for (int i = 0; i < 32; i++) {
        tok[i] = k_prompt[i / 2];
        pos[i] = i / 2;
        sq[i] = 1 + (i & 1);
        lg[i] = i >= 30;
    }
    struct batch bt2 = {32, tok, pos, sq, lg, NULL};
    assert_int_equal(ops->forward(be, &bt2, out), 0);
    double e_multi = 0;
    for (int s = 0; s < 2; s++) {
        double e = rel_rms(out + (size_t)s * V, r.logits + (size_t)15 * V, V);
        if (e > e_multi) e_multi = e;
    }
    assert_int_equal(ops->seq_len(be, 1), 16);

    /* 3. decode: the reference's greedy tokens fed to all three sequences,
     * in one batch of 3 on even steps and in three batches of 1 on odd ones
     * (the one-token kernels differ from the small-batch ones) */
    double e_dec = 0;
    int agree = 0;
    int prev_pick = argmax(out, V);
    for (int s = 0; s < r.n_gen; s++) {
        if (prev_pick == r.gen[s]) agree++;
        for (int q = 0; q < 3; q++) {
            tok[q] = r.gen[s];
            pos[q] = 16 + s;
            sq[q] = q;
            lg[q] = 1;
        }
        if (s % 2 == 0) {
            struct batch bt3 = {3, tok, pos, sq, lg, NULL};
            assert_int_equal(ops->forward(be, &bt3, out), 0);
        } else {
            for (int q = 0; q < 3; q++) {
                struct batch bt1 = {1, tok + q, pos + q, sq + q, lg + q, NULL};
                assert_int_equal(ops->forward(be, &bt1, out + (size_t)q * V), 0);
            }
        }
        const float *ref = r.logits + (size_t)(16 + s) * V;
        for (int q = 0; q < 3; q++) {
            double e = rel_rms(out + (size_t)q * V, ref, V);
            if (e > e_dec) e_dec = e;
        }
        prev_pick = argmax(out, V);
    }
    print_message("%-18s %-4s prompt %.2e  2-seq batch %.2e  3-seq decode %.2e  (bound %.2e)  "
                  "greedy picks equal %d/%d\n",
                  c->name, ref_mode ? "ref" : "fast", e_prompt, e_multi, e_dec,
                  ref_mode ? c->bound : c->fast, agree, r.n_gen);

    /* a batch that breaks the rules is refused without changing anything */
    pos[0] = 5;
    struct batch bad = {1, tok, pos, sq, lg, NULL};
    assert_int_equal(ops->forward(be, &bad, out), ST_EINVAL);
    assert_int_equal(ops->seq_len(be, 0), 16 + r.n_gen);
    /* truncate + re-run the prompt reproduces the first result */
    assert_int_equal(ops->seq_truncate(be, 0, 0), 0);
    double e_again = prompt_error(ops, be, &r, 0, out);
    assert_true(fabs(e_again - e_prompt) < 1e-6);

    free(out);
    ops->destroy(&be);
    assert_null(be);
    model_close(&m);
    err[0] = e_prompt;
    err[1] = e_multi;
    err[2] = e_dec;
}

/* Both modes, each within its bound (see k_cases). */
static void test_ref_model(void **state)
{
    const struct ref_case *c = *state;
    if (!gpu_or_skip()) skip();
    char gpath[512], lpath[512];
    snprintf(gpath, sizeof(gpath), "%s/ref/%s.gguf", models_dir(), c->name);
    snprintf(lpath, sizeof(lpath), "%s/ref/%s.logits", models_dir(), c->name);
    if (!file_exists(gpath) || !file_exists(lpath)) {
        print_message("skipped: %s not in %s/ref\n", c->name, models_dir());
        skip();
    }
    struct ref_logits r = {0};
    assert_int_equal(ref_read(lpath, &r), 0);
    assert_int_equal(r.n_prompt, 16);
    double ef[3], er[3];
    ref_model_errors(c, gpath, &r, false, ef);
    ref_model_errors(c, gpath, &r, true, er);
    ref_free(&r);
    for (int i = 0; i < 3; i++) {
        assert_true(er[i] <= (i == 2 && c->gen_bound ? c->gen_bound : c->bound));
        assert_true(ef[i] <= c->fast);
    }
}

/* Parses "tokens: [1, 403, ...]" and "top5 logits after prompt: [(17.7994, 432), ...]". */
static int read_greedy_ref(const char *path, int32_t *toks, int *n, float top_l[5], int top_id[5])
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[8192];
    *n = 0;
    int got_top = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "tokens: [", 9) == 0) {
            char *p = line + 9;
            while (*p && *p != ']' && *n < 128) {
                toks[(*n)++] = (int32_t)strtol(p, &p, 10);
                while (*p == ',' || *p == ' ')
                    p++;
            }
        } else if (strncmp(line, "top5 logits after prompt: [", 27) == 0) {
            char *p = line + 27;
            for (int i = 0; i < 5; i++) {
                if (sscanf(p, " (%f, %d)", &top_l[i], &top_id[i]) != 2) break;
                got_top++;
                p = strchr(p, ')');
                if (!p) break;
                p++;
                if (*p == ',') p++;
            }
        }
    }
    fclose(f);
    return *n > 5 && got_top == 5 ? 0 : -1;
}

static void test_stories_greedy(void **state)
{
    if (!gpu_or_skip()) skip();
    char gpath[512], rpath[512];
    snprintf(gpath, sizeof(gpath), "%s/stories260K.gguf", models_dir());
    snprintf(rpath, sizeof(rpath), "%s/stories260K.reference-greedy.txt", models_dir());
    if (!file_exists(gpath) || !file_exists(rpath)) {
        print_message("skipped: stories260K not in %s\n", models_dir());
        skip();
    }
    int32_t ref[128];
    int n_ref;
    float top_l[5];
    int top_id[5];
    assert_int_equal(read_greedy_ref(rpath, ref, &n_ref, top_l, top_id), 0);
    assert_int_equal(n_ref, 65);
    struct st_model *m = NULL;
    struct st_errbuf eb = {{0}};
    assert_int_equal(model_open_file(gpath, &m, &eb), 0);
    const struct backend_ops *ops = cuda_backend_ops();
    struct backend_config cfg = {.max_seqs = 1, .max_ctx = 128, .max_batch = 16, .device = 0};
    struct backend *be = NULL;
    assert_int_equal(ops->create(m, &cfg, &be, &eb), 0);
    int V = (int)m->hp.n_vocab;
    float *out = malloc(sizeof(float) * V);
    int32_t pos[5], sq[5] = {0};
    int8_t lg[5] = {0, 0, 0, 0, 1};
    for (int i = 0; i < 5; i++)
        pos[i] = i;
    struct batch bt = {5, ref, pos, sq, lg, NULL};
    assert_int_equal(ops->forward(be, &bt, out), 0);
    double worst_top = 0;
    for (int i = 0; i < 5; i++) {
        double d = fabs(out[top_id[i]] - top_l[i]);
        if (d > worst_top) worst_top = d;
    }
    int32_t gen[60];
    for (int s = 0; s < 60; s++) {
        gen[s] = argmax(out, V);
        int32_t p = 5 + s;
        int8_t one = 1;
        struct batch b1 = {1, &gen[s], &p, sq, &one, NULL};
        assert_int_equal(ops->forward(be, &b1, out), 0);
    }
    int same = 0;
    while (same < 60 && gen[same] == ref[5 + same])
        same++;
    print_message("stories260K: %d/60 greedy tokens equal the reference; top-5 logits after the "
                  "prompt within %.1e\n",
                  same, worst_top);
    assert_int_equal(same, 60);
    assert_true(worst_top < 2e-3); /* the reference prints 4 decimals */
    free(out);
    ops->destroy(&be);
    model_close(&m);
}

/* The GPU summary t of row equals the CPU's: candidates bit for bit, the
 * sum to float rounding (topk.cuh). */
static void summary_equal(const float *row, int V, const struct logits_top *t)
{
    struct logits_top c;
    logits_summarize(row, V, &c);
    assert_int_equal(t->n, c.n);
    assert_int_equal(t->n_vocab, V);
    assert_true(t->max == c.max);
    for (int i = 0; i < c.n; i++) {
        if (t->id[i] != c.id[i] || t->logit[i] != c.logit[i])
            fail_msg("candidate %d: GPU id %d logit %g, CPU id %d logit %g", i, t->id[i],
                     t->logit[i], c.id[i], c.logit[i]);
    }
    assert_true(fabs(t->sum - c.sum) <= 1e-5 * c.sum);
}

static void test_logits_summary_kernel(void **state)
{
    if (!gpu_or_skip()) skip();
    /* vocabulary sizes: inside one chunk, exact chunks, one past, the most */
    const int sizes[] = {40, 100, 4096, 4097, 151936, 262144};
    uint64_t rs = 99;
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        int V = sizes[k], n = 5;
        float *rows = malloc(sizeof(float) * (size_t)V * n);
        struct logits_top top[5];
        for (int r = 0; r < n; r++) {
            float *x = rows + (size_t)r * V;
            for (int i = 0; i < V; i++) {
                float g = rnd(&rs);
                /* row 0 smooth, 1 three values (ties), 2 all equal, 3 NaN and
                 * -inf sprinkled, 4 a few outliers */
                x[i] = r == 0 ? 4 * g : r == 1 ? floorf(3 * (g + 1)) : r == 2 ? 1.5f : 2 * g;
                if (r == 3 && i % 7 == 3) x[i] = NAN;
                if (r == 3 && i % 11 == 5) x[i] = -INFINITY;
            }
            if (r == 4)
                for (int j = 0; j < 5; j++)
                    x[(j * 7919) % V] = 30.f - j;
        }
        assert_int_equal(cuda_logits_summary(rows, n, V, top), 0);
        for (int r = 0; r < n; r++)
            summary_equal(rows + (size_t)r * V, V, &top[r]);
        free(rows);
    }
    float one = 1.f;
    struct logits_top t1;
    assert_int_equal(cuda_logits_summary(&one, 1, 1, &t1), 0);
    assert_int_equal(t1.n, 1);
    float *big = calloc(262145, sizeof(float));
    assert_int_equal(cuda_logits_summary(big, 1, 262145, &t1), ST_EINVAL);
    free(big);
}

/* A forward pass asking rows as LOGITS_SUMMARY gives the summaries and rows
 * (logits_row) of the same pass with every row copied, for a prompt (the
 * batched path) and for decode steps of three sequences (the fused path). */
static void summary_pass(const char *gpath)
{
    struct st_model *m = NULL;
    struct st_errbuf eb = {{0}};
    assert_int_equal(model_open_file(gpath, &m, &eb), 0);
    const struct backend_ops *ops = cuda_backend_ops();
    struct backend_config cfg = {.max_seqs = 3, .max_ctx = 64, .max_batch = 16, .device = 0};
    struct backend *be = NULL;
    assert_int_equal(ops->create(m, &cfg, &be, &eb), 0);
    int V = (int)m->hp.n_vocab;
    float *full = malloc(sizeof(float) * V * 16), *part = malloc(sizeof(float) * V * 16);
    float *row = malloc(sizeof(float) * V);
    struct logits_top top[16];
    int32_t tok[16], pos[16], sq[16];
    int8_t all[16], mixed[16], none[16] = {0};
    for (int step = 0; step < 3; step++) {
        /* step 0: sequence 0's prompt; steps 1, 2: one token of each sequence */
        int n = step == 0 ? 16 : 3;
        if (step == 1) { /* sequences 1 and 2 get the prompt first, without logits */
            for (int q = 1; q < 3; q++) {
                for (int i = 0; i < 16; i++) {
                    tok[i] = k_prompt[i] % V;
                    pos[i] = i;
                    sq[i] = q;
                }
                struct batch p = {16, tok, pos, sq, none, NULL};
                assert_int_equal(ops->forward(be, &p, NULL), 0);
            }
        }
        for (int i = 0; i < n; i++) {
            tok[i] = step == 0 ? k_prompt[i] % V : (int32_t)((i * 31 + step * 7) % V);
            pos[i] = step == 0 ? i : 15 + step;
            sq[i] = step == 0 ? 0 : i;
            all[i] = LOGITS_ROW;
            mixed[i] = i % 3 == 1 ? LOGITS_ROW : LOGITS_SUMMARY;
        }
        struct batch bf = {n, tok, pos, sq, all, top};
        assert_int_equal(ops->forward(be, &bf, full), 0);
        for (int i = 0; i < n; i++)
            summary_equal(full + (size_t)i * V, V, &top[i]);
        /* the same pass again, some rows as summaries only */
        for (int q = 0; q < (step == 0 ? 1 : 3); q++)
            assert_int_equal(ops->seq_truncate(be, q, step == 0 ? 0 : 15 + step), 0);
        memset(part, 0, sizeof(float) * V * 16);
        memset(top, 0, sizeof(top));
        struct batch bm = {n, tok, pos, sq, mixed, top};
        assert_int_equal(ops->forward(be, &bm, part), 0);
        for (int i = 0; i < n; i++) {
            summary_equal(full + (size_t)i * V, V, &top[i]);
            const float *got = part + (size_t)i * V;
            if (mixed[i] == LOGITS_SUMMARY) {
                assert_int_equal(ops->logits_row(be, i, row), 0);
                got = row;
            }
            assert_memory_equal(got, full + (size_t)i * V, sizeof(float) * V);
        }
        assert_int_equal(ops->logits_row(be, n, row), ST_EINVAL);
    }
    free(full);
    free(part);
    free(row);
    ops->destroy(&be);
    model_close(&m);
}

static void test_logits_summary_backend(void **state)
{
    if (!gpu_or_skip()) skip();
    const char *names[] = {"stories260K.gguf", "ref/ref-qwen2.Q4_K_M.gguf"};
    int ran = 0;
    for (int i = 0; i < 2; i++) {
        char gpath[512];
        snprintf(gpath, sizeof(gpath), "%s/%s", models_dir(), names[i]);
        if (!file_exists(gpath)) continue;
        summary_pass(gpath);
        ran++;
    }
    if (!ran) {
        print_message("skipped: neither stories260K nor ref-qwen2.Q4_K_M in %s\n", models_dir());
        skip();
    }
}

static char g_seg_name[64];

static struct seg *stage(const char *path)
{
    snprintf(g_seg_name, sizeof(g_seg_name), "/staged-test-cuda-%d", (int)getpid());
    seg_unlink(g_seg_name);
    struct seg *s = NULL;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    int rc = seg_stage(g_seg_name, path, false, NULL, NULL, &s, &stats, &eb);
    if (rc) print_message("seg_stage: %s\n", eb.msg);
    assert_int_equal(rc, 0);
    return s;
}

static void test_upload_verify_repair(void **state)
{
    if (!gpu_or_skip()) skip();
    char gpath[512];
    snprintf(gpath, sizeof(gpath), "%s/ref/ref-qwen2.Q4_K_M.gguf", models_dir());
    if (!file_exists(gpath)) skip();
    struct seg *s = stage(gpath);
    const struct seg_header *h = seg_header(s);
    struct gpu_weights *w = NULL;
    struct st_errbuf eb = {{0}};
    assert_int_equal(gpu_upload_create(seg_data(s), h->data_size, 0, &w, &eb), 0);
    uint32_t bad[8];
    int repaired = -1;
    /* device checksums equal the CPU's (the directory's) for every tensor */
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 0);
    assert_int_equal(repaired, 0);
    /* a flipped byte in tensor 3 is found and repaired */
    const struct seg_tensor *dir = seg_dir(s);
    assert_int_equal(gpu_upload_flip_byte(w, dir[3].offset + dir[3].size / 2), 0);
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 1);
    assert_int_equal(bad[0], 3);
    assert_int_equal(repaired, 1);
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 0);
    /* the last byte of the last tensor too (tail words) */
    uint64_t last = h->n_tensors - 1;
    assert_int_equal(gpu_upload_flip_byte(w, dir[last].offset + dir[last].size - 1), 0);
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 1);
    assert_int_equal(bad[0], (uint32_t)last);
    /* grouped into the device layout: the checksums through the layout are
     * the file's; a flip in a grouped tensor is found, and the repair groups
     * the re-copied tensor again */
    assert_int_equal(gpu_upload_group(w, s, &eb), 0);
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 0);
    uint64_t g = 0, ngrouped = 0;
    for (uint64_t i = 0; i < h->n_tensors; i++)
        if (gpu_layout_grouped(dir[i].type, dir[i].size)) g = i, ngrouped++;
    assert_true(ngrouped > 0);
    assert_int_equal(gpu_upload_flip_byte(w, dir[g].offset + dir[g].size / 3), 0);
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 1);
    assert_int_equal(bad[0], (uint32_t)g);
    assert_int_equal(repaired, 1);
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 8, &repaired), 0);
    print_message("upload/verify: %llu tensors (%llu grouped), device wsum == CPU wsum, flips "
                  "found and repaired\n",
                  (unsigned long long)h->n_tensors, (unsigned long long)ngrouped);
    gpu_upload_destroy(&w);
    seg_detach(&s);
    seg_unlink(g_seg_name);
}

/* Child process: map the handle, run the prompt, compare with the reference;
 * with fault = 1 inject a faulting kernel first. Exit status: 0 ok, 3 device
 * error from forward (expected with fault), other = failure. */
static int child_main(const char *mode, const char *hex, const char *gpath, const char *lpath)
{
    struct st_errbuf eb = {{0}};
    void *dev = NULL;
    if (cuda_ipc_open(hex, 0, &dev, &eb)) {
        fprintf(stderr, "child: %s\n", eb.msg);
        return 10;
    }
    struct st_model *m = NULL;
    if (model_open_file(gpath, &m, &eb)) return 11;
    struct ref_logits r = {0};
    if (ref_read(lpath, &r)) return 12;
    const struct backend_ops *ops = cuda_backend_ops();
    struct backend_config cfg = {.max_seqs = 1, .max_ctx = 32, .max_batch = 16, .dev_weights = dev};
    struct backend *be = NULL;
    if (ops->create(m, &cfg, &be, &eb)) {
        fprintf(stderr, "child: %s\n", eb.msg);
        return 13;
    }
    if (strcmp(mode, "fault") == 0) cuda_backend_inject_bad_kernel();
    float *out = malloc(sizeof(float) * 16 * (size_t)r.n_vocab);
    int32_t pos[16], sq[16] = {0};
    int8_t lg[16];
    for (int i = 0; i < 16; i++) {
        pos[i] = i;
        lg[i] = 1;
    }
    struct batch bt = {16, k_prompt, pos, sq, lg, NULL};
    int rc = ops->forward(be, &bt, out);
    if (rc == ST_EDEVICE) {
        fprintf(stderr, "child: forward: %s, exiting\n", st_strerror(rc));
        return 3;
    }
    if (rc) return 14;
    double worst = 0;
    for (int i = 0; i < 16; i++) {
        double e =
            rel_rms(out + (size_t)i * r.n_vocab, r.logits + (size_t)i * r.n_vocab, r.n_vocab);
        if (e > worst) worst = e;
    }
    fprintf(stderr, "child: logits through the IPC mapping: worst rel error %.2e\n", worst);
    ops->destroy(&be);
    cuda_ipc_close(dev);
    return worst <= 0.0375 ? 0 : 15;
}

static int run_child(const char *mode, const char *hex, const char *gpath, const char *lpath)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "test_cuda", "--child", mode, hex, gpath, lpath, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_ipc_fault(void **state)
{
    if (!gpu_or_skip()) skip();
    char gpath[512], lpath[512];
    snprintf(gpath, sizeof(gpath), "%s/ref/ref-qwen2.Q4_K_M.gguf", models_dir());
    snprintf(lpath, sizeof(lpath), "%s/ref/ref-qwen2.Q4_K_M.logits", models_dir());
    if (!file_exists(gpath) || !file_exists(lpath)) skip();
    struct seg *s = stage(gpath);
    struct gpu_weights *w = NULL;
    struct st_errbuf eb = {{0}};
    assert_int_equal(gpu_upload_create(seg_data(s), seg_header(s)->data_size, 0, &w, &eb), 0);
    assert_int_equal(gpu_upload_group(w, s, &eb), 0); /* as the loader does */
    char hex[GPU_IPC_HEX_LEN + 1];
    gpu_upload_ipc_handle(w, hex);
    assert_int_equal(strlen(hex), GPU_IPC_HEX_LEN);
    /* a worker on the loader's copy computes the reference logits */
    assert_int_equal(run_child("ok", hex, gpath, lpath), 0);
    /* a worker whose kernel faults ends with a non-zero status... */
    int st = run_child("fault", hex, gpath, lpath);
    print_message("faulting worker exited with status %d\n", st);
    assert_int_equal(st, 3);
    /* ...and the loader's copy is intact: checksums, then a new worker */
    uint32_t bad[4];
    int repaired = -1;
    assert_int_equal(gpu_upload_verify_repair(w, s, bad, 4, &repaired), 0);
    assert_int_equal(run_child("ok", hex, gpath, lpath), 0);
    gpu_upload_destroy(&w);
    seg_detach(&s);
    seg_unlink(g_seg_name);
}

#else /* !STAGED_CUDA */

static void test_ref_model(void **state)
{
    print_message("skipped: staged was built without CUDA\n");
    skip();
}
#define test_stories_greedy test_ref_model
#define test_upload_verify_repair test_ref_model
#define test_ipc_fault test_ref_model
#define test_mmq_types test_ref_model
#define test_misaligned_refused test_ref_model
#define test_mvq_split_rows test_ref_model
#define test_norm_quant test_ref_model
#define test_swiglu_rows test_ref_model
#define test_attention_decode test_ref_model
#define test_logits_summary_kernel test_ref_model
#define test_logits_summary_backend test_ref_model
static int child_main(const char *mode, const char *hex, const char *gpath, const char *lpath)
{
    return 1;
}
#endif

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2], argv[3], argv[4], argv[5]);
    struct CMUnitTest tests[sizeof(k_cases) / sizeof(k_cases[0]) + 12];
    size_t n = 0;
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_mmq_types);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_mvq_split_rows);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_swiglu_rows);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_norm_quant);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_attention_decode);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_upload_verify_repair);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stories_greedy);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_ipc_fault);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_misaligned_refused);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_logits_summary_kernel);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_logits_summary_backend);
    for (size_t i = 0; i < sizeof(k_cases) / sizeof(k_cases[0]); i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(test_ref_model, (void *)&k_cases[i]);
        t.name = k_cases[i].name;
        tests[n++] = t;
    }
    (void)file_exists;
    /* STAGED_TEST_FILTER=pattern runs only matching tests (cmocka glob). */
    if (getenv("STAGED_TEST_FILTER")) cmocka_set_test_filter(getenv("STAGED_TEST_FILTER"));
    return _cmocka_run_group_tests("test_cuda", tests, n, NULL, NULL);
}
