/* kernels.c - AVX2 dot-product kernels; see kernels.h. */
#include "kernels.h"

#include "quant.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static inline float hsum_ps(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

static inline __m256i load32(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* ---- float types ---- */

/*
 * F32 / F16 dot products in summation orders of llama.cpp's AVX-512 build
 * (the reference logits were computed by one), written with AVX2: a
 * 16-lane register is two 8-lane halves (lo, hi).
 *
 *   weights (tinyBLAS, its batched path): one 16-lane accumulator over
 *            steps of 16 elements, fused multiply-adds, the 16 lanes
 *            reduced as a 512-bit reduce-add (halves, quarters, pairs); the
 *            tail (n % 16) added one product at a time in double.
 *   attention scores (ggml_vec_dot_f16): 4 accumulators of 16 lanes over
 *            steps of 64; a0 += a2, a1 += a3, a0 += a1, reduced the same
 *            way; the tail (n % 64) in double.
 *
 * llama.cpp sums one-token products of float weights in the second order;
 * we keep one order for weights so that a token's logits never depend on
 * the batch it is in (a request gives the same tokens alone, batched, or
 * re-run after a restart).
 */
struct v16 {
    __m256 lo, hi;
};

static inline float reduce16(struct v16 v)
{
    __m256 t = _mm256_add_ps(v.hi, v.lo);
    __m128 q = _mm_add_ps(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));
    q = _mm_add_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(q) + _mm_cvtss_f32(_mm_shuffle_ps(q, q, 1));
}

static inline __m256 ld_f32(const void *p, int64_t i)
{
    return _mm256_loadu_ps((const float *)p + i);
}

static inline __m256 ld_f16(const void *p, int64_t i)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}

#define DOT_FLOAT(NAME, LD, SCALAR)                                                                \
    static float NAME(int64_t n, const void *w, const void *act)                                   \
    {                                                                                              \
        struct v16 acc;                                                                            \
        acc.lo = acc.hi = _mm256_setzero_ps();                                                     \
        int64_t np = n & ~(int64_t)15;                                                             \
        for (int64_t i = 0; i < np; i += 16) {                                                     \
            acc.lo = _mm256_fmadd_ps(LD(w, i), LD(act, i), acc.lo);                                \
            acc.hi = _mm256_fmadd_ps(LD(w, i + 8), LD(act, i + 8), acc.hi);                        \
        }                                                                                          \
        double sum = reduce16(acc);                                                                \
        for (int64_t i = np; i < n; i++)                                                           \
            sum += (double)SCALAR(w, act, i);                                                      \
        return (float)sum;                                                                         \
    }

#define DOT_FLOAT_4X16(NAME, LD, SCALAR)                                                           \
    static float NAME(int64_t n, const void *w, const void *act)                                   \
    {                                                                                              \
        struct v16 acc[4];                                                                         \
        for (int j = 0; j < 4; j++)                                                                \
            acc[j].lo = acc[j].hi = _mm256_setzero_ps();                                           \
        int64_t np = n & ~(int64_t)63;                                                             \
        for (int64_t i = 0; i < np; i += 64)                                                       \
            for (int j = 0; j < 4; j++) {                                                          \
                acc[j].lo = _mm256_fmadd_ps(LD(w, i + 16 * j), LD(act, i + 16 * j), acc[j].lo);    \
                acc[j].hi =                                                                        \
                    _mm256_fmadd_ps(LD(w, i + 16 * j + 8), LD(act, i + 16 * j + 8), acc[j].hi);    \
            }                                                                                      \
        for (int j = 0; j < 2; j++) {                                                              \
            acc[j].lo = _mm256_add_ps(acc[j].lo, acc[j + 2].lo);                                   \
            acc[j].hi = _mm256_add_ps(acc[j].hi, acc[j + 2].hi);                                   \
        }                                                                                          \
        acc[0].lo = _mm256_add_ps(acc[0].lo, acc[1].lo);                                           \
        acc[0].hi = _mm256_add_ps(acc[0].hi, acc[1].hi);                                           \
        double sum = reduce16(acc[0]);                                                             \
        for (int64_t i = np; i < n; i++)                                                           \
            sum += (double)SCALAR(w, act, i);                                                      \
        return (float)sum;                                                                         \
    }

#define SCALAR_F32(w, a, i) (((const float *)(w))[i] * ((const float *)(a))[i])
#define SCALAR_F16(w, a, i)                                                                        \
    (quant_f16_to_f32(((const uint16_t *)(w))[i]) * quant_f16_to_f32(((const uint16_t *)(a))[i]))

DOT_FLOAT(dot_f32, ld_f32, SCALAR_F32)
DOT_FLOAT(dot_f16, ld_f16, SCALAR_F16)
DOT_FLOAT_4X16(att_dot_f16, ld_f16, SCALAR_F16)

float kernels_dot_f16(int64_t n, const uint16_t *x, const uint16_t *y)
{
    if (n < 64) { /* all tail: the same double sum, without the vector setup */
        double sum = 0;
        for (int64_t i = 0; i < n; i++)
            sum += (double)(quant_f16_to_f32(x[i]) * quant_f16_to_f32(y[i]));
        return (float)sum;
    }
    return att_dot_f16(n, x, y);
}

static inline __m256 bf16x8(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static float dot_bf16(int64_t n, const void *w, const void *act)
{
    const uint16_t *a = w, *b = act;
    __m256 s0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(bf16x8(a + i), bf16x8(b + i), s0);
    float s = hsum_ps(s0);
    for (; i < n; i++)
        s = fmaf(quant_bf16_to_f32(a[i]), quant_bf16_to_f32(b[i]), s);
    return s;
}

/* BF16 with the AVX512-BF16 dot-product instruction, whose rounding only
 * the instruction itself gives, in llama.cpp's batched order (one
 * accumulator over steps of 32, reduced, the tail in double). */
#define AVX512BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")))

AVX512BF16 static float dot_bf16_512(int64_t n, const void *w, const void *act)
{
    const uint16_t *x = w, *y = act;
    __m512 c = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        c = _mm512_dpbf16_ps(c, (__m512bh)_mm512_loadu_si512(x + i),
                             (__m512bh)_mm512_loadu_si512(y + i));
    double sum = _mm512_reduce_add_ps(c);
    for (; i < n; i++)
        sum += (double)(quant_bf16_to_f32(x[i]) * quant_bf16_to_f32(y[i]));
    return (float)sum;
}

static bool have_bf16(void)
{
    static int v = -1;
    if (v < 0) {
        const char *isa = getenv("STAGED_CPU_ISA");
        v = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                    !(isa && !strcmp(isa, "avx2"))
                ? 1
                : 0;
    }
    return v == 1;
}

/* ---- 8-bit helpers ---- */

/* signed int8 x signed int8 -> 8 int32 partial sums */
static inline __m256i mul_s8(__m256i x, __m256i y)
{
    __m256i ax = _mm256_sign_epi8(x, x);
    __m256i sy = _mm256_sign_epi8(y, x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}

static inline __m256i unpack_nib(const uint8_t *qs)
{
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* 32 bits -> 32 bytes: 0xFF where the bit is set */
static inline __m256i bits_to_bytes(const uint8_t *qh)
{
    uint32_t x;
    memcpy(&x, qh, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i sel = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}

static inline __m256i q5_0_quants(const struct block_q5_0 *x)
{
    /* (nib | bit << 4) - 16 == nib | 0xF0 (as int8) when the bit is clear, nib when set */
    return _mm256_or_si256(unpack_nib(x->qs),
                           _mm256_andnot_si256(bits_to_bytes(x->qh), _mm256_set1_epi8((char)0xF0)));
}

/* unsigned quants (0..31) x int8 -> 8 int32 */
static inline __m256i mul_u8s8(__m256i q, __m256i y)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1));
}

static float dot_q4_1(int64_t n, const void *w, const void *act)
{
    const struct block_q4_1 *x = w;
    const struct block_q8_1 *y = act;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t b = 0; b < n / QK; b++) {
        __m256 d = _mm256_set1_ps(quant_f16_to_f32(x[b].d) * quant_f16_to_f32(y[b].d));
        summ = fmaf(quant_f16_to_f32(x[b].m), quant_f16_to_f32(y[b].s), summ);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(mul_u8s8(unpack_nib(x[b].qs), load32(y[b].qs))),
                              acc);
    }
    return hsum_ps(acc) + summ;
}

static float dot_q5_1(int64_t n, const void *w, const void *act)
{
    const struct block_q5_1 *x = w;
    const struct block_q8_1 *y = act;
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t b = 0; b < n / QK; b++) {
        __m256 d = _mm256_set1_ps(quant_f16_to_f32(x[b].d) * quant_f16_to_f32(y[b].d));
        summ = fmaf(quant_f16_to_f32(x[b].m), quant_f16_to_f32(y[b].s), summ);
        __m256i q =
            _mm256_or_si256(unpack_nib(x[b].qs), _mm256_and_si256(bits_to_bytes(x[b].qh), b4));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(mul_u8s8(q, load32(y[b].qs))), acc);
    }
    return hsum_ps(acc) + summ;
}

/* ---- k-quants ---- */

/* The 8 six-bit scales and mins of a Q4_K / Q5_K super-block (quant.h),
 * unpacked with 32-bit word operations. */
static inline void scales_k4(const uint8_t *s, uint8_t *sc, uint8_t *mn)
{
    uint32_t w0, w1, w2;
    memcpy(&w0, s, 4);
    memcpy(&w1, s + 4, 4);
    memcpy(&w2, s + 8, 4);
    uint32_t a = w0 & 0x3f3f3f3fu, m = w1 & 0x3f3f3f3fu;
    uint32_t a2 = (w2 & 0x0f0f0f0fu) | (((w0 >> 6) & 0x03030303u) << 4);
    uint32_t m2 = ((w2 >> 4) & 0x0f0f0f0fu) | (((w1 >> 6) & 0x03030303u) << 4);
    memcpy(sc, &a, 4);
    memcpy(sc + 4, &a2, 4);
    memcpy(mn, &m, 4);
    memcpy(mn + 4, &m2, 4);
}

/* sum over j < 8 of mn[j] * (bsums[2j] + bsums[2j+1]) */
static inline int mins_dot(const uint8_t *mn, const int16_t *bsums)
{
    __m128i b0 = _mm_loadu_si128((const __m128i *)bsums);
    __m128i b1 = _mm_loadu_si128((const __m128i *)(bsums + 8));
    __m128i pairs = _mm_hadd_epi16(b0, b1); /* |pair sums| <= 2 * 16 * 127: no overflow */
    __m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
    __m128i p = _mm_madd_epi16(m, pairs);
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4e));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xb1));
    return _mm_cvtsi128_si32(p);
}

/* One Q4_K super-block into the accumulators (acc, summ) of one row. */
static inline void q4_K_step(const struct block_q4_K *x, const struct block_q8_K *y, __m256 *acc,
                             float *summ)
{
    const __m256i m4 = _mm256_set1_epi8(15);
    uint8_t sc[8], mn[8];
    scales_k4(x->scales, sc, mn);
    int msum = mins_dot(mn, y->bsums);
    *summ = fmaf(y->d * quant_f16_to_f32(x->dmin), (float)msum, *summ);
    __m256i sumi = _mm256_setzero_si256();
    for (int g = 0; g < 4; g++) {
        __m256i q4 = load32(x->qs + 32 * g);
        __m256i lo = _mm256_and_si256(q4, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
        __m256i plo = _mm256_maddubs_epi16(lo, load32(y->qs + 64 * g));
        __m256i phi = _mm256_maddubs_epi16(hi, load32(y->qs + 64 * g + 32));
        plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * g]));
        phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * g + 1]));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
    }
    __m256 d = _mm256_set1_ps(y->d * quant_f16_to_f32(x->d));
    *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), *acc);
}

static float dot_q4_K(int64_t n, const void *w, const void *act)
{
    const struct block_q4_K *x = w;
    const struct block_q8_K *y = act;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t b = 0; b < n / QK_K; b++)
        q4_K_step(&x[b], &y[b], &acc, &summ);
    return hsum_ps(acc) - summ;
}

static void dot2_q4_K(int64_t n, const void *w, size_t wstride, const void *act, float *out)
{
    const struct block_q4_K *x0 = w, *x1 = (const void *)((const uint8_t *)w + wstride);
    const struct block_q8_K *y = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    float s0 = 0, s1 = 0;
    for (int64_t b = 0; b < n / QK_K; b++) {
        q4_K_step(&x0[b], &y[b], &a0, &s0);
        q4_K_step(&x1[b], &y[b], &a1, &s1);
    }
    out[0] = hsum_ps(a0) - s0;
    out[1] = hsum_ps(a1) - s1;
}

static float dot_q5_K(int64_t n, const void *w, const void *act)
{
    const struct block_q5_K *x = w;
    const struct block_q8_K *y = act;
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i bit = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    float summ = 0;
    for (int64_t b = 0; b < n / QK_K; b++) {
        uint8_t sc[8], mn[8];
        scales_k4(x[b].scales, sc, mn);
        int msum = mins_dot(mn, y[b].bsums);
        summ = fmaf(y[b].d * quant_f16_to_f32(x[b].dmin), (float)msum, summ);
        __m256i qh = load32(x[b].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            __m256i q4 = load32(x[b].qs + 32 * g);
            /* bit 2g of qh -> 16 for the low half, bit 2g+1 for the high half */
            __m256i hl = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * g), 4), bit);
            __m256i hh =
                _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * g + 1), 4), bit);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q4, m4), hl);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
            __m256i plo = _mm256_maddubs_epi16(lo, load32(y[b].qs + 64 * g));
            __m256i phi = _mm256_maddubs_epi16(hi, load32(y[b].qs + 64 * g + 32));
            plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * g]));
            phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * g + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        __m256 d = _mm256_set1_ps(y[b].d * quant_f16_to_f32(x[b].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc) - summ;
}

/* sum over the 16 sub-blocks of scale * bsum (exact integer) */
static inline int scales_bsums(const int8_t *sc, const int16_t *bsums)
{
    __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
    __m256i p = _mm256_madd_epi16(s16, _mm256_loadu_si256((const __m256i *)bsums));
    __m128i q = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4e));
    q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1));
    return _mm_cvtsi128_si32(q);
}

static inline __m256i scale_pair(int a, int b)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
}

/* One Q6_K super-block into the accumulator of one row. */
static inline void q6_K_step(const struct block_q6_K *x, const struct block_q8_K *y, __m256 *acc)
{
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i m3 = _mm256_set1_epi8(3);
    const int8_t *sc = x->scales;
    float d = y->d * quant_f16_to_f32(x->d);
    /* the -32 offset: subtract 32 * scale * bsum lane by lane (pairs of
     * sub-blocks per lane), the order of llama.cpp's one-token kernel */
    __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
    __m256i sumi = _mm256_sub_epi32(
        _mm256_setzero_si256(),
        _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), s16),
                          5));
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = x->ql + 64 * h;
        const int8_t *qa = y->qs + 128 * h;
        __m256i l0 = load32(ql), l1 = load32(ql + 32), qh = load32(x->qh + 32 * h);
        __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                     _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
        __m256i q1 =
            _mm256_or_si256(_mm256_and_si256(l1, m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
        __m256i q2 =
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
        __m256i q3 =
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
        const int8_t *s = sc + 8 * h;
        __m256i p0 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(q0, load32(qa)), scale_pair(s[0], s[1]));
        __m256i p1 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load32(qa + 32)), scale_pair(s[2], s[3]));
        __m256i p2 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(q2, load32(qa + 64)), scale_pair(s[4], s[5]));
        __m256i p3 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(q3, load32(qa + 96)), scale_pair(s[6], s[7]));
        sumi = _mm256_add_epi32(
            sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
}

static float dot_q6_K(int64_t n, const void *w, const void *act)
{
    const struct block_q6_K *x = w;
    const struct block_q8_K *y = act;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++)
        q6_K_step(&x[b], &y[b], &acc);
    return hsum_ps(acc);
}

static void dot2_q6_K(int64_t n, const void *w, size_t wstride, const void *act, float *out)
{
    const struct block_q6_K *x0 = w, *x1 = (const void *)((const uint8_t *)w + wstride);
    const struct block_q8_K *y = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        q6_K_step(&x0[b], &y[b], &a0);
        q6_K_step(&x1[b], &y[b], &a1);
    }
    out[0] = hsum_ps(a0);
    out[1] = hsum_ps(a1);
}

/* Q2_K: the mins go into the accumulator first (8 lanes of pairs of
 * sub-blocks), then the scaled quants; Q3_K: the -4 of a clear high bit is
 * subtracted per 16-bit pair sum. Integer sums as llama.cpp's AVX2 kernels
 * form them, so the float steps round the same way. */
static float dot_q2_K(int64_t n, const void *w, const void *act)
{
    const struct block_q2_K *x = w;
    const struct block_q8_K *y = act;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        __m128i ms = _mm_loadu_si128((const __m128i *)x[b].scales);
        __m128i sc = _mm_and_si128(ms, _mm_set1_epi8(15));
        __m128i mn = _mm_and_si128(_mm_srli_epi16(ms, 4), _mm_set1_epi8(15));
        __m256i prod = _mm256_madd_epi16(_mm256_cvtepi8_epi16(mn),
                                         _mm256_loadu_si256((const __m256i *)y[b].bsums));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(-y[b].d * quant_f16_to_f32(x[b].dmin)),
                              _mm256_cvtepi32_ps(prod), acc);
        uint8_t s8[16];
        _mm_storeu_si128((__m128i *)s8, sc);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i bits = load32(x[b].qs + 32 * h);
            const int8_t *qa = y[b].qs + 128 * h;
            for (int k = 0; k < 4; k++) {
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                __m256i p = _mm256_maddubs_epi16(q, load32(qa + 32 * k));
                p = _mm256_madd_epi16(p, scale_pair(s8[8 * h + 2 * k], s8[8 * h + 2 * k + 1]));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * quant_f16_to_f32(x[b].d)),
                              _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

static float dot_q3_K(int64_t n, const void *w, const void *act)
{
    const struct block_q3_K *x = w;
    const struct block_q8_K *y = act;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        /* 6-bit scales, bias 32 (quant.h) */
        int sc[16];
        for (int s = 0; s < 16; s++) {
            int low = s < 8 ? x[b].scales[s] & 15 : x[b].scales[s - 8] >> 4;
            int high = (x[b].scales[8 + s % 4] >> (2 * (s / 4))) & 3;
            sc[s] = (low | high << 4) - 32;
        }
        __m256i hbits = load32(x[b].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i bits = load32(x[b].qs + 32 * h);
            const int8_t *qa = y[b].qs + 128 * h;
            for (int k = 0; k < 4; k++) {
                int bit = 4 * h + k;
                __m256i ql = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                /* 4 where the high bit is clear */
                __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hbits, bit), _mm256_set1_epi8(1));
                __m256i q4 = _mm256_slli_epi16(_mm256_xor_si256(hb, _mm256_set1_epi8(1)), 2);
                __m256i ya = load32(qa + 32 * k);
                __m256i p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(ql, ya), _mm256_maddubs_epi16(q4, ya));
                p = _mm256_madd_epi16(p, scale_pair(sc[8 * h + 2 * k], sc[8 * h + 2 * k + 1]));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * quant_f16_to_f32(x[b].d)),
                              _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

/* ---- 4 activation rows per weight row (batched prompts) ----
 * The weight block is decoded once and dotted with the same block of 4
 * activation rows (act + k * stride). */

#define ACT(k, T, b) ((const T *)((const uint8_t *)act + (size_t)(k)*stride) + (b))

/* 32-blocks with Q8_0 activations: QUANTS(x) gives the signed quants of a
 * block. One accumulator in the block order (llama.cpp's order, which keeps
 * our logits on its rounding path), in the one-row and the 4-row kernel
 * alike, so both give bit-identical results. */
#define DOT_32(NAME, NAME4, NAME2, WT, QUANTS, MULS, ATTR)                                         \
    ATTR static float NAME(int64_t n, const void *w, const void *act)                              \
    {                                                                                              \
        const WT *x = w;                                                                           \
        const struct block_q8_0 *y = act;                                                          \
        __m256 acc[1] = {_mm256_setzero_ps()};                                                     \
        for (int64_t b = 0; b < n / QK; b++) {                                                     \
            __m256 d = _mm256_set1_ps(quant_f16_to_f32(x[b].d) * quant_f16_to_f32(y[b].d));        \
            __m256i q = QUANTS(&x[b]);                                                             \
            __m256i p = MULS(_mm256_sign_epi8(q, q), _mm256_sign_epi8(load32(y[b].qs), q));        \
            acc[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[0]);                            \
        }                                                                                          \
        return hsum_ps(acc[0]);                                                                    \
    }                                                                                              \
    ATTR static void NAME4(int64_t n, const void *w, const void *act, size_t stride, float *out)   \
    {                                                                                              \
        const WT *x = w;                                                                           \
        __m256 acc[1][4];                                                                          \
        for (int k = 0; k < 4; k++)                                                                \
            acc[0][k] = _mm256_setzero_ps();                                                       \
        for (int64_t b = 0; b < n / QK; b++) {                                                     \
            __m256i q = QUANTS(&x[b]);                                                             \
            __m256i ax = _mm256_sign_epi8(q, q);                                                   \
            float dw = quant_f16_to_f32(x[b].d);                                                   \
            for (int k = 0; k < 4; k++) {                                                          \
                const struct block_q8_0 *y = ACT(k, struct block_q8_0, b);                         \
                __m256i sy = _mm256_sign_epi8(load32(y->qs), q);                                   \
                __m256i p = MULS(ax, sy);                                                          \
                acc[0][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * quant_f16_to_f32(y->d)),           \
                                            _mm256_cvtepi32_ps(p), acc[0][k]);                     \
            }                                                                                      \
        }                                                                                          \
        for (int k = 0; k < 4; k++)                                                                \
            out[k] = hsum_ps(acc[0][k]);                                                           \
    }                                                                                              \
    ATTR static void NAME2(int64_t n, const void *w, size_t wstride, const void *act, float *out)  \
    {                                                                                              \
        const WT *x0 = w, *x1 = (const WT *)((const uint8_t *)w + wstride);                        \
        const struct block_q8_0 *y = act;                                                          \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                                 \
        for (int64_t b = 0; b < n / QK; b++) {                                                     \
            __m256i yq = load32(y[b].qs);                                                          \
            float dy = quant_f16_to_f32(y[b].d);                                                   \
            __m256i q0 = QUANTS(&x0[b]), q1 = QUANTS(&x1[b]);                                      \
            __m256i p0 = MULS(_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(yq, q0));                 \
            __m256i p1 = MULS(_mm256_sign_epi8(q1, q1), _mm256_sign_epi8(yq, q1));                 \
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(quant_f16_to_f32(x0[b].d) * dy),                   \
                                 _mm256_cvtepi32_ps(p0), a0);                                      \
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(quant_f16_to_f32(x1[b].d) * dy),                   \
                                 _mm256_cvtepi32_ps(p1), a1);                                      \
        }                                                                                          \
        out[0] = hsum_ps(a0);                                                                      \
        out[1] = hsum_ps(a1);                                                                      \
    }

/* |x| (unsigned) times sign-adjusted y (signed), summed in groups of 4 into
 * 8 int32: maddubs + madd (AVX2), or one vpdpbusd (AVX-VNNI). No int16
 * saturation is possible: |x| <= 127 for every 32-block type. */
static inline __m256i muls_avx2(__m256i ax, __m256i sy)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}

#define VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
VNNI static inline __m256i muls_vnni(__m256i ax, __m256i sy)
{
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sy);
}

static inline __m256i q8_0_quants(const struct block_q8_0 *x)
{
    return load32(x->qs);
}

static inline __m256i q4_0_quants(const struct block_q4_0 *x)
{
    return _mm256_sub_epi8(unpack_nib(x->qs), _mm256_set1_epi8(8));
}

DOT_32(dot_q8_0, dot4_q8_0, dot2_q8_0, struct block_q8_0, q8_0_quants, muls_avx2, )
DOT_32(dot_q5_0, dot4_q5_0, dot2_q5_0, struct block_q5_0, q5_0_quants, muls_avx2, )
DOT_32(dot_q4_0, dot4_q4_0, dot2_q4_0, struct block_q4_0, q4_0_quants, muls_avx2, )
DOT_32(dotv_q8_0, dot4v_q8_0, dot2v_q8_0, struct block_q8_0, q8_0_quants, muls_vnni, VNNI)
DOT_32(dotv_q5_0, dot4v_q5_0, dot2v_q5_0, struct block_q5_0, q5_0_quants, muls_vnni, VNNI)
DOT_32(dotv_q4_0, dot4v_q4_0, dot2v_q4_0, struct block_q4_0, q4_0_quants, muls_vnni, VNNI)

static bool have_vnni(void)
{
    static int v = -1;
    if (v < 0) {
        const char *isa = getenv("STAGED_CPU_ISA");
        v = __builtin_cpu_supports("avxvnni") && !(isa && !strcmp(isa, "avx2")) ? 1 : 0;
    }
    return v == 1;
}

static void dot4_q4_K(int64_t n, const void *w, const void *act, size_t stride, float *out)
{
    const struct block_q4_K *x = w;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float summ[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < n / QK_K; b++) {
        uint8_t sc[8], mn[8];
        scales_k4(x[b].scales, sc, mn);
        __m256i lo[4], hi[4];
        for (int g = 0; g < 4; g++) {
            __m256i q4 = load32(x[b].qs + 32 * g);
            lo[g] = _mm256_and_si256(q4, m4);
            hi[g] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
        }
        float dw = quant_f16_to_f32(x[b].d), dmw = quant_f16_to_f32(x[b].dmin);
        for (int k = 0; k < 4; k++) {
            const struct block_q8_K *y = ACT(k, struct block_q8_K, b);
            int msum = mins_dot(mn, y->bsums);
            summ[k] = fmaf(y->d * dmw, (float)msum, summ[k]);
            __m256i sumi = _mm256_setzero_si256();
            for (int g = 0; g < 4; g++) {
                __m256i plo = _mm256_maddubs_epi16(lo[g], load32(y->qs + 64 * g));
                __m256i phi = _mm256_maddubs_epi16(hi[g], load32(y->qs + 64 * g + 32));
                plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * g]));
                phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * g + 1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
            }
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * dw), _mm256_cvtepi32_ps(sumi), acc[k]);
        }
    }
    for (int k = 0; k < 4; k++)
        out[k] = hsum_ps(acc[k]) - summ[k];
}

static void dot4_q6_K(int64_t n, const void *w, const void *act, size_t stride, float *out)
{
    const struct block_q6_K *x = w;
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t b = 0; b < n / QK_K; b++) {
        const int8_t *sc = x[b].scales;
        __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        __m256i q[8], sv[8];
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h;
            __m256i l0 = load32(ql), l1 = load32(ql + 32), qh = load32(x[b].qh + 32 * h);
            q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                           _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            q[4 * h + 1] = _mm256_or_si256(
                _mm256_and_si256(l1, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            q[4 * h + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            q[4 * h + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int k = 0; k < 4; k++)
                sv[4 * h + k] = scale_pair(sc[8 * h + 2 * k], sc[8 * h + 2 * k + 1]);
        }
        float dw = quant_f16_to_f32(x[b].d);
        for (int k = 0; k < 4; k++) {
            const struct block_q8_K *y = ACT(k, struct block_q8_K, b);
            __m256i sumi = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32(
                    _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), s16), 5));
            for (int i = 0; i < 8; i++)
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_madd_epi16(_mm256_maddubs_epi16(q[i], load32(y->qs + 32 * i)), sv[i]));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * dw), _mm256_cvtepi32_ps(sumi), acc[k]);
        }
    }
    for (int k = 0; k < 4; k++)
        out[k] = hsum_ps(acc[k]);
}

/* ---- activation quantization ---- */

/* 32 floats times scale, rounded to nearest even, to 32 int8 in order */
static inline __m256i round_pack32(const float *x, __m256 scale)
{
    const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256i i0 =
        _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), scale), mode));
    __m256i i1 =
        _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8), scale), mode));
    __m256i i2 =
        _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16), scale), mode));
    __m256i i3 =
        _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 24), scale), mode));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* sum of 16 int8 */
static inline int sum16_s8(__m128i v)
{
    __m128i u = _mm_xor_si128(v, _mm_set1_epi8((char)0x80));
    __m128i sad = _mm_sad_epu8(u, _mm_setzero_si128());
    return _mm_cvtsi128_si32(sad) + _mm_extract_epi16(sad, 4) - 16 * 128;
}

static void quantize_q8_0_avx2(const float *x, struct block_q8_0 *y, struct block_q8_1 *y1,
                               int64_t n)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        __m256 m = _mm256_and_ps(_mm256_loadu_ps(x), absmask);
        for (int i = 8; i < QK; i += 8)
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), absmask));
        float amax = hmax_ps(m);
        float d = amax / 127.f;
        float id = amax != 0 ? 127.f / amax : 0.f;
        __m256i q = round_pack32(x, _mm256_set1_ps(id));
        if (y1) {
            _mm256_storeu_si256((__m256i *)y1[b].qs, q);
            int sum =
                sum16_s8(_mm256_castsi256_si128(q)) + sum16_s8(_mm256_extracti128_si256(q, 1));
            y1[b].d = quant_f32_to_f16(d);
            y1[b].s = quant_f32_to_f16(d * (float)sum);
        } else {
            _mm256_storeu_si256((__m256i *)y[b].qs, q);
            y[b].d = quant_f32_to_f16(d);
        }
    }
}

static void quantize_q8_K_avx2(const float *x, struct block_q8_K *y, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 mx = _mm256_loadu_ps(x), mn = mx;
        for (int i = 8; i < QK_K; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            mx = _mm256_max_ps(mx, v);
            mn = _mm256_min_ps(mn, v);
        }
        float hi = hmax_ps(mx), lo = -hmax_ps(_mm256_sub_ps(_mm256_setzero_ps(), mn));
        /* the element of largest magnitude; when +a and -a both occur the
         * choice only flips the signs of d and every quant: same products */
        float max = hi >= -lo ? hi : lo;
        if (max == 0) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        float iscale = -127.f / max;
        __m256 vs = _mm256_set1_ps(iscale);
        for (int i = 0; i < QK_K; i += 32) {
            __m256i q = round_pack32(x + i, vs);
            _mm256_storeu_si256((__m256i *)(y[b].qs + i), q);
            y[b].bsums[i / 16] = (int16_t)sum16_s8(_mm256_castsi256_si128(q));
            y[b].bsums[i / 16 + 1] = (int16_t)sum16_s8(_mm256_extracti128_si256(q, 1));
        }
        y[b].d = 1 / iscale;
    }
}

void kernels_quantize_row(uint32_t act_type, const float *x, void *dst, int64_t n, bool reference)
{
    if (!reference) {
        switch (act_type) {
        case GGML_TYPE_Q8_0:
            quantize_q8_0_avx2(x, dst, NULL, n);
            return;
        case GGML_TYPE_Q8_1:
            quantize_q8_0_avx2(x, NULL, dst, n);
            return;
        case GGML_TYPE_Q8_K:
            quantize_q8_K_avx2(x, dst, n);
            return;
        }
    }
    quant_quantize_row(act_type, x, dst, n);
}

/* ---- reference wrappers ---- */

#define REF(T, NAME)                                                                               \
    static float NAME(int64_t n, const void *w, const void *act)                                   \
    {                                                                                              \
        return quant_vec_dot_ref(T, n, w, act);                                                    \
    }
REF(GGML_TYPE_F32, ref_f32)
REF(GGML_TYPE_F16, ref_f16)
REF(GGML_TYPE_BF16, ref_bf16)
REF(GGML_TYPE_Q4_0, ref_q4_0)
REF(GGML_TYPE_Q4_1, ref_q4_1)
REF(GGML_TYPE_Q5_0, ref_q5_0)
REF(GGML_TYPE_Q5_1, ref_q5_1)
REF(GGML_TYPE_Q8_0, ref_q8_0)
REF(GGML_TYPE_Q2_K, ref_q2_K)
REF(GGML_TYPE_Q3_K, ref_q3_K)
REF(GGML_TYPE_Q4_K, ref_q4_K)
REF(GGML_TYPE_Q5_K, ref_q5_K)
REF(GGML_TYPE_Q6_K, ref_q6_K)

kernels_dot_fn kernels_dot(uint32_t w, bool reference)
{
    switch (w) {
    case GGML_TYPE_F32:
        return reference ? ref_f32 : dot_f32;
    case GGML_TYPE_F16:
        return reference ? ref_f16 : dot_f16;
    case GGML_TYPE_BF16:
        return reference ? ref_bf16 : have_bf16() ? dot_bf16_512 : dot_bf16;
    case GGML_TYPE_Q4_0:
        return reference ? ref_q4_0 : have_vnni() ? dotv_q4_0 : dot_q4_0;
    case GGML_TYPE_Q4_1:
        return reference ? ref_q4_1 : dot_q4_1;
    case GGML_TYPE_Q5_0:
        return reference ? ref_q5_0 : have_vnni() ? dotv_q5_0 : dot_q5_0;
    case GGML_TYPE_Q5_1:
        return reference ? ref_q5_1 : dot_q5_1;
    case GGML_TYPE_Q8_0:
        return reference ? ref_q8_0 : have_vnni() ? dotv_q8_0 : dot_q8_0;
    case GGML_TYPE_Q2_K:
        return reference ? ref_q2_K : dot_q2_K;
    case GGML_TYPE_Q3_K:
        return reference ? ref_q3_K : dot_q3_K;
    case GGML_TYPE_Q4_K:
        return reference ? ref_q4_K : dot_q4_K;
    case GGML_TYPE_Q5_K:
        return reference ? ref_q5_K : dot_q5_K;
    case GGML_TYPE_Q6_K:
        return reference ? ref_q6_K : dot_q6_K;
    }
    return NULL;
}

kernels_dot2_fn kernels_dot2(uint32_t w)
{
    switch (w) {
    case GGML_TYPE_Q8_0:
        return have_vnni() ? dot2v_q8_0 : dot2_q8_0;
    case GGML_TYPE_Q5_0:
        return have_vnni() ? dot2v_q5_0 : dot2_q5_0;
    case GGML_TYPE_Q4_0:
        return have_vnni() ? dot2v_q4_0 : dot2_q4_0;
    case GGML_TYPE_Q4_K:
        return dot2_q4_K;
    case GGML_TYPE_Q6_K:
        return dot2_q6_K;
    }
    return NULL;
}

kernels_dot4_fn kernels_dot4(uint32_t w)
{
    /* Float weights have none: their batched order (tinyBLAS's) would make a
     * token's logits depend on the batch it came in, and serving needs a
     * request's logits to be the same alone or batched. */
    switch (w) {
    case GGML_TYPE_Q8_0:
        return have_vnni() ? dot4v_q8_0 : dot4_q8_0;
    case GGML_TYPE_Q5_0:
        return have_vnni() ? dot4v_q5_0 : dot4_q5_0;
    case GGML_TYPE_Q4_0:
        return have_vnni() ? dot4v_q4_0 : dot4_q4_0;
    case GGML_TYPE_Q4_K:
        return dot4_q4_K;
    case GGML_TYPE_Q6_K:
        return dot4_q6_K;
    }
    return NULL;
}

const char *kernels_isa(void)
{
    return have_vnni() ? "avx2+avx-vnni" : "avx2";
}
