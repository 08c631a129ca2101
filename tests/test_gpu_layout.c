/* Tests of loader/gpu_layout.h (needs no GPU): the grouped device layout is
 * a permutation of each group's bytes with gpu_layout_dst its inverse, a
 * block's slot is recovered from its original address, and every weight
 * read at the documented grouped positions equals the CPU decoder's value of
 * the original block. */
#include "gpu_worker/quant.h"
#include "loader/gpu_layout.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

enum { T_Q5_0 = 6, T_Q8_0 = 8, T_Q6_K = 14 };
static const uint32_t types[] = {T_Q5_0, T_Q8_0, T_Q6_K};

static void test_permutation(void **state)
{
    for (size_t ti = 0; ti < 3; ti++) {
        uint32_t t = types[ti];
        unsigned bs = gpu_layout_block_bytes(t), g = GPU_LAYOUT_GROUP * bs;
        assert_true(bs > 0 && g % 16 == 0);
        unsigned char *seen = calloc(g, 1);
        assert_non_null(seen);
        for (unsigned x = 0; x < g; x++) {
            unsigned o = gpu_layout_src(t, x);
            assert_true(o < g);
            assert_int_equal(seen[o], 0);
            seen[o] = 1;
            assert_int_equal(gpu_layout_dst(t, o), x);
        }
        free(seen);
    }
}

static void test_slot_and_selection(void **state)
{
    for (size_t ti = 0; ti < 3; ti++) {
        unsigned bs = gpu_layout_block_bytes(types[ti]);
        for (uintptr_t base = 0x10000; base < 0x10000 + 64 * 16; base += 16)
            for (unsigned slot = 0; slot < GPU_LAYOUT_GROUP; slot++)
                assert_int_equal(gpu_layout_slot(bs, base + bs * slot), slot);
        assert_true(gpu_layout_grouped(types[ti], 8 * bs));
        assert_true(gpu_layout_grouped(types[ti], 1024 * bs));
        assert_false(gpu_layout_grouped(types[ti], 12 * bs)); /* not a multiple of 8 blocks */
        assert_false(gpu_layout_grouped(types[ti], 8 * bs + 2));
    }
    assert_int_equal(gpu_layout_block_bytes(12 /* Q4_K: 16-byte blocks already */), 0);
    assert_false(gpu_layout_grouped(12, 144 * 8));
    assert_false(gpu_layout_grouped(0 /* F32 */, 4096));
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* Element e of block `slot` of a grouped group, read where gpu_layout.h's
 * table puts its bytes. */
static float grouped_value(uint32_t t, const uint8_t *G, unsigned slot, unsigned e)
{
    if (t == T_Q8_0) {
        float d = quant_f16_to_f32(rd16(G + 256 + 2 * slot));
        return (float)(int8_t)G[32 * slot + e] * d;
    }
    if (t == T_Q5_0) {
        float d = quant_f16_to_f32(rd16(G + 160 + 2 * slot));
        const uint8_t *qh = G + 128 + 4 * slot, *qs = G + 16 * slot;
        uint32_t h = qh[0] | qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
        int q = (e < 16 ? qs[e] & 15 : qs[e - 16] >> 4) | (int)(h >> e & 1) << 4;
        return (float)(q - 16) * d;
    }
    /* Q6_K: element 128h + 32j + l is unit s = 4h + l / 8, byte k = l % 8 */
    const uint8_t *A = G + 208 * slot;
    unsigned h = e / 128, j = e % 128 / 32, l = e % 32, s = 4 * h + l / 8, k = l % 8;
    unsigned ql = A[16 * s + 8 * (j % 2) + k], qh = A[128 + 8 * s + k];
    int8_t sc = (int8_t)A[192 + 4 * (s / 2) + j]; /* scales[8h + l / 16 + 2j] */
    int q = (int)((j < 2 ? ql & 15 : ql >> 4) | (qh >> 2 * j & 3) << 4) - 32;
    return quant_f16_to_f32(rd16(G + 1664 + 2 * slot)) * (float)sc * (float)q;
}

static void test_values(void **state)
{
    uint64_t seed = 0x853c49e6748fea9bull;
    for (size_t ti = 0; ti < 3; ti++) {
        uint32_t t = types[ti];
        unsigned bs = gpu_layout_block_bytes(t), g = GPU_LAYOUT_GROUP * bs;
        unsigned qk = t == T_Q6_K ? 256 : 32;
        uint8_t *orig = malloc(g), *grp = malloc(g);
        float *ref = malloc(sizeof(float) * qk * GPU_LAYOUT_GROUP);
        assert_non_null(orig);
        assert_non_null(grp);
        assert_non_null(ref);
        for (int rep = 0; rep < 4; rep++) {
            for (unsigned i = 0; i < g; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                orig[i] = (uint8_t)(seed >> 56);
            }
            for (unsigned b = 0; b < GPU_LAYOUT_GROUP; b++) { /* finite scales: f16 1/64..2 */
                unsigned d = b * bs + (t == T_Q6_K ? 208 : 0);
                orig[d] = (uint8_t)(seed >> (8 * b));
                orig[d + 1] = (uint8_t)(0x24 + (orig[d + 1] & 0x1f));
            }
            for (unsigned x = 0; x < g; x++)
                grp[x] = orig[gpu_layout_src(t, x)];
            quant_dequantize_row(t, orig, ref, (int64_t)qk * GPU_LAYOUT_GROUP);
            for (unsigned b = 0; b < GPU_LAYOUT_GROUP; b++)
                for (unsigned e = 0; e < qk; e++)
                    assert_float_equal(grouped_value(t, grp, b, e), ref[b * qk + e], 0.0);
        }
        free(orig);
        free(grp);
        free(ref);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_permutation),
        cmocka_unit_test(test_slot_and_selection),
        cmocka_unit_test(test_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
