/*
 * test_quant.c - block codecs of gpu_worker/quant.c against llama.cpp's
 * quantizer output: every quantized reference model in
 * $STAGED_MODELS/ref was made by llama.cpp from the F32 file, so each
 * dequantized matrix must be close to the F32 original (a wrong layout
 * lands near relative error 1), and the integer dot product with quantized
 * activations must agree with the float dot product of the dequantized row.
 */
#include "common/model.h"
#include "gpu_worker/kernels.h"
#include "gpu_worker/quant.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const char *models_dir(void)
{
    const char *d = getenv("STAGED_MODELS");
    return d && *d ? d : "/work/shared/models";
}

static struct st_model *open_ref(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/ref/%s.gguf", models_dir(), name);
    struct st_model *m = NULL;
    struct st_errbuf eb = {{0}};
    if (model_open_file(path, &m, &eb) != 0) {
        print_message("cannot open %s: %s\n", path, eb.msg);
        return NULL;
    }
    return m;
}

/* Relative RMS error of a (test) against b (reference). */
static double rel_rms(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

struct qcase {
    const char *file;   /* quantized model */
    const char *f32;    /* its F32 source */
    uint32_t type;      /* expected type of blk.0.attn_q.weight */
    double max_deq_err; /* bound on dequantized vs F32 relative RMS */
};

static const struct qcase cases[] = {
    {"ref-qwen2.F16", "ref-qwen2.F32", GGML_TYPE_F16, 1e-3},
    {"ref-qwen2.BF16", "ref-qwen2.F32", GGML_TYPE_BF16, 5e-3},
    {"ref-qwen2.Q8_0", "ref-qwen2.F32", GGML_TYPE_Q8_0, 0.01},
    {"ref-qwen2.Q4_0", "ref-qwen2.F32", GGML_TYPE_Q4_0, 0.15},
    {"ref-qwen2.Q4_1", "ref-qwen2.F32", GGML_TYPE_Q4_1, 0.15},
    {"ref-qwen2.Q5_0", "ref-qwen2.F32", GGML_TYPE_Q5_0, 0.08},
    {"ref-qwen2.Q5_1", "ref-qwen2.F32", GGML_TYPE_Q5_1, 0.08},
    {"ref-qwen2.Q2_K", "ref-qwen2.F32", GGML_TYPE_Q2_K, 0.5},
    {"ref-qwen2.Q3_K_S", "ref-qwen2.F32", GGML_TYPE_Q3_K, 0.3},
    {"ref-qwen2.Q4_K_S", "ref-qwen2.F32", GGML_TYPE_Q4_K, 0.15},
    {"ref-qwen2.Q5_K_S", "ref-qwen2.F32", GGML_TYPE_Q5_K, 0.08},
    {"ref-qwen2.Q6_K", "ref-qwen2.F32", GGML_TYPE_Q6_K, 0.04},
    {"ref-llama.Q8_0", "ref-llama.F32", GGML_TYPE_Q8_0, 0.01},
};

static const char *const mats[] = {"attn_q.weight", "attn_k.weight", "attn_output.weight",
                                   "ffn_gate.weight", "ffn_down.weight"};

static void check_case(const struct qcase *c)
{
    struct st_model *mq = open_ref(c->file), *mf = open_ref(c->f32);
    if (!mq || !mf) {
        model_close(&mq);
        model_close(&mf);
        skip();
    }
    struct model_tensor tq;
    assert_true(model_tensor_l(mq, 0, "attn_q.weight", &tq));
    assert_int_equal(tq.type, c->type);
    for (size_t k = 0; k < sizeof(mats) / sizeof(mats[0]); k++) {
        struct model_tensor a, b;
        for (uint32_t layer = 0; layer < 2; layer++) {
            assert_true(model_tensor_l(mq, layer, mats[k], &a));
            assert_true(model_tensor_l(mf, layer, mats[k], &b));
            assert_int_equal(b.type, GGML_TYPE_F32);
            assert_int_equal(a.ne[0], b.ne[0]);
            int64_t n = (int64_t)a.ne[0], rows = (int64_t)a.ne[1];
            size_t rb = quant_row_size(a.type, n);
            assert_int_equal(rb * rows, a.size);
            float *deq = malloc(sizeof(float) * n * rows);
            for (int64_t r = 0; r < rows; r++)
                quant_dequantize_row(a.type, (const uint8_t *)a.data + r * rb, deq + r * n, n);
            double e = rel_rms(deq, b.data, (size_t)(n * rows));
            if (e > c->max_deq_err)
                print_message("%s blk.%u.%s: dequantized rel err %.4f > %.4f\n", c->file, layer,
                              mats[k], e, c->max_deq_err);
            assert_true(e <= c->max_deq_err);
            assert_true(e > 0 || c->type == GGML_TYPE_F32);

            /* integer dot products against float dots of the dequantized rows,
             * activations = the F32 row 0 of the same matrix (realistic scale) */
            uint32_t at = quant_vec_dot_type(a.type);
            const float *x = b.data;
            void *xq = malloc(quant_row_size(at, n));
            quant_quantize_row(at, x, xq, n);
            /* the AVX2 activation quantizer writes the same bytes */
            void *xq2 = malloc(quant_row_size(at, n));
            kernels_quantize_row(at, x, xq2, n, false);
            assert_memory_equal(xq, xq2, quant_row_size(at, n));
            free(xq2);
            double num = 0, den = 0;
            for (int64_t r = 0; r < rows; r++) {
                float got = quant_vec_dot_ref(a.type, n, (const uint8_t *)a.data + r * rb, xq);
                double want = 0;
                for (int64_t i = 0; i < n; i++)
                    want += (double)deq[r * n + i] * x[i];
                num += (got - want) * (got - want);
                den += want * want;
            }
            double de = sqrt(num / den);
            /* the SIMD kernel agrees with the scalar reference to rounding */
            kernels_dot_fn fast = kernels_dot(a.type, false);
            for (int64_t r = 0; r < rows; r++) {
                const uint8_t *wr = (const uint8_t *)a.data + r * rb;
                float want = quant_vec_dot_ref(a.type, n, wr, xq), got = fast(n, wr, xq);
                if (fabsf(got - want) > 1e-4f * (fabsf(want) + 1.f))
                    print_message("%s row %ld: SIMD %g, reference %g\n", c->file, (long)r, got,
                                  want);
                assert_true(fabsf(got - want) <= 1e-4f * (fabsf(want) + 1.f));
            }
            /* the 2-weight-row kernel gives exactly the one-row results */
            kernels_dot2_fn two = kernels_dot2(a.type);
            for (int64_t r = 0; two && r < rows / 2; r++) {
                const uint8_t *wr = (const uint8_t *)a.data + r * rb;
                size_t ws = (size_t)(rows / 2) * rb;
                float o2[2];
                two(n, wr, ws, xq, o2);
                assert_true(o2[0] == fast(n, wr, xq));
                assert_true(o2[1] == fast(n, wr + ws, xq));
            }
            /* the 4-row kernel gives exactly the one-row kernel's results for
             * quantized weights; for F32/F16/BF16 it sums in another order
             * (as llama.cpp's batched path does) */
            kernels_dot4_fn four = kernels_dot4(a.type);
            if (four) {
                size_t ab = quant_row_size(at, n);
                uint8_t *x4 = malloc(4 * ab);
                for (int k = 0; k < 4; k++)
                    quant_quantize_row(at, (const float *)b.data + (size_t)(k + 1) * n, x4 + k * ab,
                                       n);
                for (int64_t r = 0; r < rows; r++) {
                    const uint8_t *wr = (const uint8_t *)a.data + r * rb;
                    float o4[4];
                    four(n, wr, x4, ab, o4);
                    for (int k = 0; k < 4; k++) {
                        float one = fast(n, wr, x4 + k * ab);
                        if (a.type == GGML_TYPE_F32 || a.type == GGML_TYPE_F16 ||
                            a.type == GGML_TYPE_BF16) {
                            /* summation-order error bound: n eps sum |w x| */
                            const float *xk = (const float *)b.data + (size_t)(k + 1) * n;
                            double mag = 0;
                            for (int64_t i = 0; i < n; i++)
                                mag += fabs((double)deq[r * n + i] * xk[i]);
                            assert_true(fabs((double)o4[k] - one) <= n * 1.2e-7 * mag + 1e-30);
                        } else {
                            assert_true(o4[k] == one);
                        }
                    }
                }
                free(x4);
            }
            /* 8-bit activations: ~0.5% relative error on random data */
            double bound = at == GGML_TYPE_F16 ? 1e-3 : at == GGML_TYPE_BF16 ? 8e-3 : 0.02;
            if (de > bound)
                print_message("%s blk.%u.%s: dot rel err %.5f > %.5f\n", c->file, layer, mats[k],
                              de, bound);
            assert_true(de <= bound);
            if (layer == 0 && k == 0)
                print_message("%-18s %-5s dequant rel err %.5f, dot rel err %.5f\n", c->file,
                              ggml_type_name(a.type), e, de);
            free(xq);
            free(deq);
        }
    }
    model_close(&mq);
    model_close(&mf);
}

static void test_all_types(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_case(&cases[i]);
}

/* Q8 activation quantizers: the block scale and bsums. */
static void test_q8_activations(void **state)
{
    (void)state;
    float x[QK_K];
    for (int i = 0; i < QK_K; i++)
        x[i] = sinf((float)i * 0.37f) * (i == 77 ? 5.f : 1.f);
    struct block_q8_K k;
    quant_quantize_row(GGML_TYPE_Q8_K, x, &k, QK_K);
    /* the element of largest magnitude maps to -127 (the scale carries its sign) */
    assert_int_equal(k.qs[77], -127);
    for (int s = 0; s < 16; s++) {
        int sum = 0;
        for (int i = 0; i < 16; i++)
            sum += k.qs[16 * s + i];
        assert_int_equal(sum, k.bsums[s]);
    }
    float back[QK_K];
    quant_dequantize_row(GGML_TYPE_Q8_K, &k, back, QK_K);
    assert_true(rel_rms(back, x, QK_K) < 0.01);
    struct block_q8_1 b1[QK_K / QK];
    quant_quantize_row(GGML_TYPE_Q8_1, x, b1, QK_K);
    for (int b = 0; b < QK_K / QK; b++) {
        int sum = 0;
        for (int j = 0; j < QK; j++)
            sum += b1[b].qs[j];
        float d = quant_f16_to_f32(b1[b].d);
        assert_float_equal(quant_f16_to_f32(b1[b].s), d * sum, fabsf(d * sum) * 1e-3 + 1e-6);
    }
    /* binary16 round trip of exactly representable values; bf16 rounding */
    assert_float_equal(quant_f16_to_f32(quant_f32_to_f16(1.5f)), 1.5f, 0);
    assert_int_equal(quant_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(quant_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(quant_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
    assert_int_equal(quant_f32_to_bf16(1.01171875f), 0x3f82); /* tie to even (up) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q8_activations),
        cmocka_unit_test(test_all_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
