/* Tests of gpu_worker/quantize.c, read back with gpu_worker/quant.c's
 * dequantization (written separately from the layout documentation):
 *   - Gaussian rows: RMS error relative to the data's RMS below a bound per
 *     type (the bounds are the measured values with some margin);
 *   - the same weights llama.cpp quantized in ../shared/models/ref: staged's
 *     quantizer must come close to llama.cpp's error on each type;
 *   - zeros, constants, outliers, scales; thread count does not change bytes. */
#include "common/gguf.h"
#include "common/model.h"
#include "gpu_worker/quant.h"
#include "gpu_worker/quantize.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float gauss(void)
{
    return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()));
}

/* quantize, dequantize, relative RMS error */
static double round_trip(uint32_t type, const float *x, float *y, int64_t n)
{
    void *q = malloc(ggml_row_bytes(type, (uint64_t)n));
    assert_non_null(q);
    assert_int_equal(quantize_row(type, x, q, n), 0);
    quant_dequantize_row(type, q, y, n);
    free(q);
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        e += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        s += (double)x[i] * x[i];
    }
    return s > 0 ? sqrt(e / s) : sqrt(e);
}

struct bound {
    uint32_t type;
    double max_rel_rms;
};

/* Gaussian data, 64 rows of 4096. */
static const struct bound gauss_bounds[] = {
    {GGML_TYPE_F32, 0.0},    {GGML_TYPE_F16, 0.00025}, {GGML_TYPE_BF16, 0.003},
    {GGML_TYPE_Q8_0, 0.010}, {GGML_TYPE_Q6_K, 0.020},  {GGML_TYPE_Q5_0, 0.046},
    {GGML_TYPE_Q5_1, 0.040}, {GGML_TYPE_Q5_K, 0.040},  {GGML_TYPE_Q4_0, 0.090},
    {GGML_TYPE_Q4_1, 0.080}, {GGML_TYPE_Q4_K, 0.080},  {GGML_TYPE_Q3_K, 0.165},
    {GGML_TYPE_Q2_K, 0.310},
};

static void test_gaussian_error_bounds(void **state)
{
    const int64_t n = 4096, rows = 64;
    float *x = malloc(n * rows * sizeof(float)), *y = malloc(n * sizeof(float));
    assert_non_null(x);
    assert_non_null(y);
    for (int64_t i = 0; i < n * rows; i++)
        x[i] = 0.02f * gauss();
    for (size_t k = 0; k < sizeof(gauss_bounds) / sizeof(gauss_bounds[0]); k++) {
        uint32_t t = gauss_bounds[k].type;
        double worst = 0, sum = 0;
        for (int64_t r = 0; r < rows; r++) {
            double e = round_trip(t, x + r * n, y, n);
            sum += e;
            if (e > worst) worst = e;
        }
        print_message("%-5s relative RMS error: mean %.5f, worst row %.5f (bound %.4f)\n",
                      ggml_type_name(t), sum / rows, worst, gauss_bounds[k].max_rel_rms);
        if (worst > gauss_bounds[k].max_rel_rms)
            fail_msg("%s: error %.5f over the bound %.3f", ggml_type_name(t), worst,
                     gauss_bounds[k].max_rel_rms);
    }
    free(x);
    free(y);
}

static void test_special_rows(void **state)
{
    const int64_t n = 512;
    float x[512], y[512];
    for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++) {
        if (!quantize_supported(t)) continue;
        /* zeros come back as zeros */
        memset(x, 0, sizeof(x));
        round_trip(t, x, y, n);
        for (int i = 0; i < n; i++)
            if (y[i] != 0) fail_msg("%s: zero row gives %g at %d", ggml_type_name(t), y[i], i);
        /* a constant row (all elements equal) */
        for (int i = 0; i < n; i++)
            x[i] = 0.75f;
        double e = round_trip(t, x, y, n);
        if (e > 0.01) fail_msg("%s: constant row error %g", ggml_type_name(t), e);
        /* one outlier per block: the others may lose precision, the outlier not */
        for (int i = 0; i < n; i++)
            x[i] = 0.01f * gauss();
        for (int i = 0; i < n; i += 256)
            x[i] = 5.0f;
        round_trip(t, x, y, n);
        for (int i = 0; i < n; i += 256)
            if (fabsf(y[i] - 5.0f) > 0.05f)
                fail_msg("%s: outlier 5.0 comes back as %g", ggml_type_name(t), y[i]);
        /* scaled data: the relative error does not depend on the scale */
        for (int i = 0; i < n; i++)
            x[i] = gauss();
        double e1 = round_trip(t, x, y, n);
        for (int i = 0; i < n; i++)
            x[i] *= 1e-3f;
        double e2 = round_trip(t, x, y, n);
        if (fabs(e1 - e2) > 0.02 + 0.2 * e1)
            fail_msg("%s: error %g at scale 1, %g at scale 1e-3", ggml_type_name(t), e1, e2);
    }
    /* bad arguments */
    assert_int_equal(quantize_row(GGML_TYPE_Q4_K, x, y, 100), ST_EINVAL);
    assert_int_equal(quantize_row(GGML_TYPE_Q8_K, x, y, 256), ST_EINVAL);
    assert_int_equal(quantize_row(99, x, y, 256), ST_EINVAL);
}

static void test_threads_same_bytes(void **state)
{
    const int64_t n = 1024, rows = 37;
    float *x = malloc(n * rows * sizeof(float));
    assert_non_null(x);
    for (int64_t i = 0; i < n * rows; i++)
        x[i] = gauss();
    uint32_t types[3] = {GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_Q5_0};
    for (int k = 0; k < 3; k++) {
        uint64_t bytes = ggml_row_bytes(types[k], n) * rows;
        uint8_t *a = malloc(bytes), *b = malloc(bytes);
        assert_int_equal(quantize_rows(types[k], x, a, rows, n, 1), 0);
        assert_int_equal(quantize_rows(types[k], x, b, rows, n, 3), 0);
        assert_memory_equal(a, b, bytes);
        /* row r alone gives the same bytes as inside the batch */
        uint8_t *c = malloc(ggml_row_bytes(types[k], n));
        assert_int_equal(quantize_row(types[k], x + 5 * n, c, n), 0);
        assert_memory_equal(c, a + 5 * ggml_row_bytes(types[k], n), ggml_row_bytes(types[k], n));
        free(a);
        free(b);
        free(c);
    }
    free(x);
}

/* ---- against llama.cpp's quantization of the same weights ---- */

static const char *ref_path(const char *name)
{
    static char path[4096];
    const char *d = getenv("STAGED_MODELS");
    snprintf(path, sizeof(path), "%s/ref/%s", d && *d ? d : "/work/shared/models", name);
    struct stat st;
    return stat(path, &st) == 0 ? path : NULL;
}

static float *dequant_tensor(const struct st_model *m, const char *name, uint64_t *n_out)
{
    struct model_tensor t;
    assert_true(model_tensor(m, name, &t));
    uint64_t n = t.ne[0] * t.ne[1];
    float *y = malloc(n * sizeof(float));
    assert_non_null(y);
    uint64_t rb = ggml_row_bytes(t.type, t.ne[0]);
    for (uint64_t r = 0; r < t.ne[1]; r++)
        quant_dequantize_row(t.type, (const uint8_t *)t.data + r * rb, y + r * t.ne[0],
                             (int64_t)t.ne[0]);
    *n_out = n;
    return y;
}

static double rel_rms(const float *a, const float *ref, uint64_t n)
{
    double e = 0, s = 0;
    for (uint64_t i = 0; i < n; i++) {
        e += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        s += (double)ref[i] * ref[i];
    }
    return sqrt(e / s);
}

static void test_against_llama_cpp(void **state)
{
    const char *f32 = ref_path("ref-qwen2.F32.gguf");
    if (!f32) skip();
    struct st_model *mf;
    struct st_errbuf eb = {{0}};
    assert_int_equal(model_open_file(f32, &mf, &eb), 0);
    struct {
        const char *file;
        uint32_t type;
        double factor; /* ours may be at most this much worse than llama.cpp's */
    } cases[] = {
        {"ref-qwen2.Q8_0.gguf", GGML_TYPE_Q8_0, 1.05},
        {"ref-qwen2.Q6_K.gguf", GGML_TYPE_Q6_K, 1.10},
        {"ref-qwen2.Q5_0.gguf", GGML_TYPE_Q5_0, 1.10},
        {"ref-qwen2.Q5_1.gguf", GGML_TYPE_Q5_1, 1.10},
        {"ref-qwen2.Q5_K_S.gguf", GGML_TYPE_Q5_K, 1.10},
        {"ref-qwen2.Q4_0.gguf", GGML_TYPE_Q4_0, 1.10},
        {"ref-qwen2.Q4_1.gguf", GGML_TYPE_Q4_1, 1.10},
        {"ref-qwen2.Q4_K_S.gguf", GGML_TYPE_Q4_K, 1.10},
        {"ref-qwen2.Q3_K_S.gguf", GGML_TYPE_Q3_K, 1.15},
        {"ref-qwen2.Q2_K.gguf", GGML_TYPE_Q2_K, 1.15},
    };
    const char *tensors[3] = {"blk.0.ffn_up.weight", "blk.1.attn_q.weight",
                              "blk.3.ffn_down.weight"};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const char *path = ref_path(cases[c].file);
        if (!path) skip();
        struct st_model *mq;
        assert_int_equal(model_open_file(path, &mq, &eb), 0);
        for (int k = 0; k < 3; k++) {
            uint64_t n, nq;
            float *x = dequant_tensor(mf, tensors[k], &n);
            float *theirs = dequant_tensor(mq, tensors[k], &nq);
            assert_int_equal(n, nq);
            struct model_tensor t;
            assert_true(model_tensor(mq, tensors[k], &t));
            assert_int_equal(t.type, cases[c].type);
            /* ours, row by row */
            float *ours = malloc(n * sizeof(float));
            uint8_t *qrow = malloc(ggml_row_bytes(t.type, t.ne[0]));
            for (uint64_t r = 0; r < t.ne[1]; r++) {
                assert_int_equal(quantize_row(t.type, x + r * t.ne[0], qrow, (int64_t)t.ne[0]), 0);
                quant_dequantize_row(t.type, qrow, ours + r * t.ne[0], (int64_t)t.ne[0]);
            }
            double e_ours = rel_rms(ours, x, n), e_theirs = rel_rms(theirs, x, n);
            if (k == 0)
                print_message("%-5s %s: staged %.5f, llama.cpp %.5f (ratio %.3f)\n",
                              ggml_type_name(t.type), tensors[k], e_ours, e_theirs,
                              e_ours / e_theirs);
            if (e_ours > cases[c].factor * e_theirs)
                fail_msg("%s %s: staged's error %.5f vs llama.cpp's %.5f", ggml_type_name(t.type),
                         tensors[k], e_ours, e_theirs);
            free(qrow);
            free(ours);
            free(theirs);
            free(x);
        }
        model_close(&mq);
    }
    model_close(&mf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gaussian_error_bounds),
        cmocka_unit_test(test_special_rows),
        cmocka_unit_test(test_threads_same_bytes),
        cmocka_unit_test(test_against_llama_cpp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
