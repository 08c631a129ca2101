/* quantize.c - float rows to ggml block types; see quantize.h. */
#include "quantize.h"

#include "common/err.h"
#include "common/gguf.h"
#include "gpu_worker/quant.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The float a half will hold once stored. */
static float as_half(float f)
{
    return quant_f16_to_f32(quant_f32_to_f16(f));
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static int round_q(float v, int lo, int hi)
{
    return clampi((int)lrintf(v), lo, hi);
}

/* round_q in float arithmetic, so the error loops vectorize */
static inline float round_qf(float v, float lo, float hi)
{
    return fminf(fmaxf(rintf(v), lo), hi);
}

/* ---- symmetric fit: x[i] ~ d * q[i], q in [lo, hi] (lo < 0 < hi) ---- */

/* Horizontal sum of 8 floats. */
static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

#define ROUND_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* Squared error of x ~ d * clamp(round((x - m) / d)) + m, n % 8 == 0 (AVX2;
 * the arithmetic of the scalar loops, summed in another order). */
static float sse_avx(const float *x, int n, float d, float m, float lo, float hi)
{
    __m256 vd = _mm256_set1_ps(d), vid = _mm256_set1_ps(1.0f / d), vm = _mm256_set1_ps(m),
           vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), acc = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(v, vm), vid), ROUND_NEAREST);
        q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
        __m256 r = _mm256_sub_ps(v, _mm256_fmadd_ps(vd, q, vm));
        acc = _mm256_fmadd_ps(r, r, acc);
    }
    return hsum8(acc);
}

static float sse_sym(const float *x, int n, float d, int lo, int hi)
{
    if (d != 0 && n % 8 == 0) return sse_avx(x, n, d, 0.0f, (float)lo, (float)hi);
    if (d == 0) {
        float e = 0;
        for (int i = 0; i < n; i++)
            e += x[i] * x[i];
        return e;
    }
    float id = 1.0f / d, e = 0, flo = (float)lo, fhi = (float)hi;
    for (int i = 0; i < n; i++) {
        float r = x[i] - d * round_qf(x[i] * id, flo, fhi);
        e += r * r;
    }
    return e;
}

/* Least-squares scale for the quants that d assigns. */
/* Sums over the quants q = clamp(round((x - m) / d), lo, hi) of x:
 * out[0] = sum q, out[1] = sum q^2, out[2] = sum x, out[3] = sum x q. */
static void quant_sums(const float *x, int n, float d, float m, float lo, float hi, float *out)
{
    float id = 1.0f / d, sq = 0, sqq = 0, sx = 0, sxq = 0;
    int i = 0;
    if (n % 8 == 0) {
        __m256 vid = _mm256_set1_ps(id), vm = _mm256_set1_ps(m), vlo = _mm256_set1_ps(lo),
               vhi = _mm256_set1_ps(hi), a = _mm256_setzero_ps(), b = a, c = a, e = a;
        for (; i < n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(v, vm), vid), ROUND_NEAREST);
            q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
            a = _mm256_add_ps(a, q);
            b = _mm256_fmadd_ps(q, q, b);
            c = _mm256_add_ps(c, v);
            e = _mm256_fmadd_ps(v, q, e);
        }
        sq = hsum8(a), sqq = hsum8(b), sx = hsum8(c), sxq = hsum8(e);
    }
    for (; i < n; i++) {
        float q = round_qf((x[i] - m) * id, lo, hi);
        sq += q;
        sqq += q * q;
        sx += x[i];
        sxq += x[i] * q;
    }
    out[0] = sq, out[1] = sqq, out[2] = sx, out[3] = sxq;
}

static float ls_sym(const float *x, int n, float d, int lo, int hi)
{
    float sums[4];
    quant_sums(x, n, d, 0.0f, (float)lo, (float)hi, sums);
    return sums[1] > 0 ? sums[3] / sums[1] : d;
}

/* Best scale for x with quants in [lo, hi]; `search` tries nearby scales. */
static float fit_sym(const float *x, int n, int lo, int hi, bool search)
{
    float amax = 0, m = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            m = x[i];
        }
    }
    if (amax == 0) return 0;
    float d = m / (float)lo; /* the largest magnitude lands on lo */
    if (!search) return d;
    float best = d, best_e = sse_sym(x, n, d, lo, hi);
    static const float steps[] = {-0.5f, -0.25f, 0.25f, 0.5f, 0.75f, 1.0f, 1.5f};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        float c = m / ((float)lo - steps[k]);
        float e = sse_sym(x, n, c, lo, hi);
        if (e < best_e) {
            best_e = e;
            best = c;
        }
    }
    float c = ls_sym(x, n, best, lo, hi);
    if (sse_sym(x, n, c, lo, hi) < best_e) best = c;
    return best;
}

/* ---- affine fit: x[i] ~ s * q[i] + m, q in [0, nmax] ---- */

static float sse_aff(const float *x, int n, float s, float m, int nmax)
{
    float e = 0;
    if (s <= 0) {
        for (int i = 0; i < n; i++)
            e += (x[i] - m) * (x[i] - m);
        return e;
    }
    if (n % 8 == 0) return sse_avx(x, n, s, m, 0.0f, (float)nmax);
    float is = 1.0f / s, fmax = (float)nmax;
    for (int i = 0; i < n; i++) {
        float r = x[i] - (s * round_qf((x[i] - m) * is, 0.0f, fmax) + m);
        e += r * r;
    }
    return e;
}

/* Fit scale *s >= 0 and offset *m; with nonpos_min the offset stays <= 0. */
static void fit_aff(const float *x, int n, int nmax, bool nonpos_min, float *s_out, float *m_out)
{
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    if (nonpos_min && lo > 0) lo = 0;
    if (hi == lo) {
        *s_out = 0;
        *m_out = lo;
        return;
    }
    float s = (hi - lo) / (float)nmax, m = lo;
    float best_s = s, best_m = m, best_e = sse_aff(x, n, s, m, nmax);
    for (int it = 0; it < 3; it++) {
        /* assign, then least squares for (s, m) */
        float sums[4];
        quant_sums(x, n, s, m, 0.0f, (float)nmax, sums);
        float sq = sums[0], sqq = sums[1], sx = sums[2], sxq = sums[3];
        float det = (float)n * sqq - sq * sq;
        if (det <= 0) break;
        float ns = ((float)n * sxq - sq * sx) / det;
        float nm = (sx - ns * sq) / (float)n;
        if (nonpos_min && nm > 0) {
            nm = 0;
            ns = sqq > 0 ? sxq / sqq : ns;
        }
        if (!(ns > 0)) break;
        s = ns;
        m = nm;
        float e = sse_aff(x, n, s, m, nmax);
        if (e < best_e) {
            best_e = e;
            best_s = s;
            best_m = m;
        }
    }
    *s_out = best_s;
    *m_out = best_m;
}

/* ---- 32-element block types ---- */

static void q8_0(const float *x, struct block_q8_0 *y, int64_t nb)
{
    for (int64_t b = 0; b < nb; b++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = as_half(amax / 127.0f), id = d ? 1.0f / d : 0;
        y[b].d = quant_f32_to_f16(d);
        for (int j = 0; j < QK; j++)
            y[b].qs[j] = (int8_t)round_q(x[j] * id, -127, 127);
    }
}

/* Q4_0 (bits 4, bias 8) and Q5_0 (bits 5, bias 16): quants q - bias. */
static void sym_32(const float *x, int bits, uint16_t *d_out, uint8_t *q)
{
    int bias = 1 << (bits - 1);
    float d = as_half(fit_sym(x, QK, -bias, bias - 1, true));
    *d_out = quant_f32_to_f16(d);
    float id = d ? 1.0f / d : 0;
    for (int j = 0; j < QK; j++)
        q[j] = (uint8_t)(round_q(x[j] * id, -bias, bias - 1) + bias);
}

/* Q4_1 / Q5_1: x = d * q + m. */
static void aff_32(const float *x, int bits, uint16_t *d_out, uint16_t *m_out, uint8_t *q)
{
    int nmax = (1 << bits) - 1;
    float s, m;
    fit_aff(x, QK, nmax, false, &s, &m);
    float d = as_half(s), mh = as_half(m);
    *d_out = quant_f32_to_f16(d);
    *m_out = quant_f32_to_f16(mh);
    float id = d ? 1.0f / d : 0;
    for (int j = 0; j < QK; j++)
        q[j] = (uint8_t)round_q((x[j] - mh) * id, 0, nmax);
}

static void pack_nibbles_32(const uint8_t *q, uint8_t *qs)
{
    for (int j = 0; j < QK / 2; j++)
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

static void pack_high_32(const uint8_t *q, uint8_t *qh)
{
    uint32_t h = 0;
    for (int j = 0; j < QK; j++)
        h |= (uint32_t)((q[j] >> 4) & 1) << j;
    memcpy(qh, &h, 4);
}

static void q4_0(const float *x, struct block_q4_0 *y, int64_t nb)
{
    uint8_t q[QK];
    for (int64_t b = 0; b < nb; b++, x += QK) {
        sym_32(x, 4, &y[b].d, q);
        pack_nibbles_32(q, y[b].qs);
    }
}

static void q5_0(const float *x, struct block_q5_0 *y, int64_t nb)
{
    uint8_t q[QK];
    for (int64_t b = 0; b < nb; b++, x += QK) {
        sym_32(x, 5, &y[b].d, q);
        pack_nibbles_32(q, y[b].qs);
        pack_high_32(q, y[b].qh);
    }
}

static void q4_1(const float *x, struct block_q4_1 *y, int64_t nb)
{
    uint8_t q[QK];
    for (int64_t b = 0; b < nb; b++, x += QK) {
        aff_32(x, 4, &y[b].d, &y[b].m, q);
        pack_nibbles_32(q, y[b].qs);
    }
}

static void q5_1(const float *x, struct block_q5_1 *y, int64_t nb)
{
    uint8_t q[QK];
    for (int64_t b = 0; b < nb; b++, x += QK) {
        aff_32(x, 5, &y[b].d, &y[b].m, q);
        pack_nibbles_32(q, y[b].qs);
        pack_high_32(q, y[b].qh);
    }
}

/* ---- k-quants ---- */

/* Affine super-block: n_sub sub-blocks of sub elements, quants 0..nmax,
 * integer scales/mins 0..smax. Returns d, dmin; q[256], sc[], mn[]. */
static void kquant_aff(const float *x, int n_sub, int sub, int nmax, int smax, float *d_out,
                       float *dmin_out, uint8_t *q, int *sc, int *mn)
{
    float s[16], m[16], max_s = 0, max_m = 0;
    for (int j = 0; j < n_sub; j++) {
        float off;
        fit_aff(x + j * sub, sub, nmax, true, &s[j], &off);
        m[j] = -off; /* stored as a non-negative min */
        if (s[j] > max_s) max_s = s[j];
        if (m[j] > max_m) max_m = m[j];
    }
    float d = as_half(max_s / (float)smax), dmin = as_half(max_m / (float)smax);
    float id = d ? 1.0f / d : 0, idm = dmin ? 1.0f / dmin : 0;
    for (int j = 0; j < n_sub; j++) {
        sc[j] = round_q(s[j] * id, 0, smax);
        mn[j] = round_q(m[j] * idm, 0, smax);
        float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
        float ids = ds ? 1.0f / ds : 0;
        for (int i = 0; i < sub; i++)
            q[j * sub + i] = (uint8_t)(ds ? round_q((x[j * sub + i] + dm) * ids, 0, nmax) : 0);
    }
    *d_out = d;
    *dmin_out = dmin;
}

/* Symmetric super-block of 16 sub-blocks of 16: quants lo..hi, integer
 * scales -smax..smax. Returns d; q[256] (signed), sc[16]. */
static float kquant_sym(const float *x, int lo, int hi, int smax, int8_t *q, int *sc)
{
    float s[16], amax = 0;
    for (int j = 0; j < 16; j++) {
        s[j] = fit_sym(x + 16 * j, 16, lo, hi, true);
        if (fabsf(s[j]) > amax) amax = fabsf(s[j]);
    }
    float d = as_half(amax / (float)smax), id = d ? 1.0f / d : 0;
    for (int j = 0; j < 16; j++) {
        sc[j] = round_q(s[j] * id, -smax, smax);
        float ds = d * (float)sc[j], ids = ds ? 1.0f / ds : 0;
        for (int i = 0; i < 16; i++)
            q[16 * j + i] = (int8_t)(ds ? round_q(x[16 * j + i] * ids, lo, hi) : 0);
    }
    return d;
}

/* Q4_K / Q5_K scale packing (see quant.h). */
static void pack_scales_k4(const int *sc, const int *mn, uint8_t *s)
{
    for (int k = 0; k < 4; k++) {
        s[k] = (uint8_t)((sc[k] & 63) | (sc[k + 4] >> 4) << 6);
        s[k + 4] = (uint8_t)((mn[k] & 63) | (mn[k + 4] >> 4) << 6);
        s[k + 8] = (uint8_t)((sc[k + 4] & 15) | (mn[k + 4] & 15) << 4);
    }
}

/* Element e's low 4 bits: qs[32g + l], low nibble if e % 64 < 32. */
static void pack_qs_k4(const uint8_t *q, uint8_t *qs)
{
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++)
            qs[32 * g + l] = (uint8_t)((q[64 * g + l] & 15) | (q[64 * g + 32 + l] & 15) << 4);
}

static void q4_K(const float *x, struct block_q4_K *y, int64_t nb)
{
    uint8_t q[QK_K];
    int sc[8], mn[8];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float d, dmin;
        kquant_aff(x, 8, 32, 15, 63, &d, &dmin, q, sc, mn);
        y[b].d = quant_f32_to_f16(d);
        y[b].dmin = quant_f32_to_f16(dmin);
        pack_scales_k4(sc, mn, y[b].scales);
        pack_qs_k4(q, y[b].qs);
    }
}

static void q5_K(const float *x, struct block_q5_K *y, int64_t nb)
{
    uint8_t q[QK_K];
    int sc[8], mn[8];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float d, dmin;
        kquant_aff(x, 8, 32, 31, 63, &d, &dmin, q, sc, mn);
        y[b].d = quant_f32_to_f16(d);
        y[b].dmin = quant_f32_to_f16(dmin);
        pack_scales_k4(sc, mn, y[b].scales);
        pack_qs_k4(q, y[b].qs);
        memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int e = 0; e < QK_K; e++)
            y[b].qh[e % 32] |= (uint8_t)(((q[e] >> 4) & 1) << (e / 32));
    }
}

static void q2_K(const float *x, struct block_q2_K *y, int64_t nb)
{
    uint8_t q[QK_K];
    int sc[16], mn[16];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float d, dmin;
        kquant_aff(x, 16, 16, 3, 15, &d, &dmin, q, sc, mn);
        y[b].d = quant_f32_to_f16(d);
        y[b].dmin = quant_f32_to_f16(dmin);
        for (int s = 0; s < 16; s++)
            y[b].scales[s] = (uint8_t)(sc[s] | mn[s] << 4);
        memset(y[b].qs, 0, sizeof(y[b].qs));
        for (int e = 0; e < QK_K; e++) {
            int h = e / 128, r = e % 128;
            y[b].qs[32 * h + r % 32] |= (uint8_t)(q[e] << (2 * (r / 32)));
        }
    }
}

static void q3_K(const float *x, struct block_q3_K *y, int64_t nb)
{
    int8_t q[QK_K];
    int sc[16];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float d = kquant_sym(x, -4, 3, 31, q, sc);
        y[b].d = quant_f32_to_f16(d);
        memset(y[b].hmask, 0, sizeof(y[b].hmask));
        memset(y[b].qs, 0, sizeof(y[b].qs));
        memset(y[b].scales, 0, sizeof(y[b].scales));
        for (int e = 0; e < QK_K; e++) {
            int u = q[e] + 4; /* 0..7: low 2 bits + the "not negative" bit */
            int h = e / 128, r = e % 128;
            y[b].qs[32 * h + r % 32] |= (uint8_t)((u & 3) << (2 * (r / 32)));
            if (u & 4) y[b].hmask[e % 32] |= (uint8_t)(1 << (e / 32));
        }
        for (int s = 0; s < 16; s++) {
            int v = sc[s] + 32; /* 1..63 */
            y[b].scales[s % 8] |= (uint8_t)((v & 15) << (4 * (s / 8)));
            y[b].scales[8 + s % 4] |= (uint8_t)((v >> 4) << (2 * (s / 4)));
        }
    }
}

static void q6_K(const float *x, struct block_q6_K *y, int64_t nb)
{
    int8_t q[QK_K];
    int sc[16];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float d = kquant_sym(x, -32, 31, 127, q, sc);
        y[b].d = quant_f32_to_f16(d);
        for (int s = 0; s < 16; s++)
            y[b].scales[s] = (int8_t)sc[s];
        memset(y[b].ql, 0, sizeof(y[b].ql));
        memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int e = 0; e < QK_K; e++) {
            int u = q[e] + 32; /* 0..63 */
            int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
            y[b].ql[64 * h + l + 32 * (k & 1)] |= (uint8_t)((u & 15) << (4 * (k >> 1)));
            y[b].qh[32 * h + l] |= (uint8_t)((u >> 4) << (2 * k));
        }
    }
}

/* ---- float types ---- */

static void to_f16(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(y + i), h);
    }
    for (; i < n; i++)
        y[i] = quant_f32_to_f16(x[i]);
}

static void to_bf16(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = quant_f32_to_bf16(x[i]);
}

bool quantize_supported(uint32_t type)
{
    return ggml_type_supported(type);
}

int quantize_row(uint32_t type, const float *x, void *dst, int64_t n)
{
    uint32_t be = ggml_type_block_elems(type);
    if (!quantize_supported(type) || n < 0 || n % be) return ST_EINVAL;
    int64_t nb = n / be;
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(dst, x, (size_t)n * 4);
        break;
    case GGML_TYPE_F16:
        to_f16(x, dst, n);
        break;
    case GGML_TYPE_BF16:
        to_bf16(x, dst, n);
        break;
    case GGML_TYPE_Q8_0:
        q8_0(x, dst, nb);
        break;
    case GGML_TYPE_Q4_0:
        q4_0(x, dst, nb);
        break;
    case GGML_TYPE_Q4_1:
        q4_1(x, dst, nb);
        break;
    case GGML_TYPE_Q5_0:
        q5_0(x, dst, nb);
        break;
    case GGML_TYPE_Q5_1:
        q5_1(x, dst, nb);
        break;
    case GGML_TYPE_Q2_K:
        q2_K(x, dst, nb);
        break;
    case GGML_TYPE_Q3_K:
        q3_K(x, dst, nb);
        break;
    case GGML_TYPE_Q4_K:
        q4_K(x, dst, nb);
        break;
    case GGML_TYPE_Q5_K:
        q5_K(x, dst, nb);
        break;
    case GGML_TYPE_Q6_K:
        q6_K(x, dst, nb);
        break;
    default:
        return ST_EINVAL;
    }
    return 0;
}

struct rows_job {
    uint32_t type;
    const float *x;
    uint8_t *dst;
    int64_t r0, r1, n;
    uint64_t row_bytes;
};

static void *rows_thread(void *arg)
{
    struct rows_job *j = arg;
    for (int64_t r = j->r0; r < j->r1; r++)
        quantize_row(j->type, j->x + r * j->n, j->dst + (uint64_t)r * j->row_bytes, j->n);
    return NULL;
}

int quantize_rows(uint32_t type, const float *x, void *dst, int64_t n_rows, int64_t n_per_row,
                  int n_threads)
{
    uint64_t rb = ggml_row_bytes(type, (uint64_t)n_per_row);
    if (!quantize_supported(type) || n_rows < 0 || n_per_row <= 0 || !rb) return ST_EINVAL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    if (n_threads > n_rows) n_threads = n_rows ? (int)n_rows : 1;
    struct rows_job jobs[64];
    pthread_t tids[64];
    bool started[64] = {false};
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = (struct rows_job){
            type, x, dst, n_rows * t / n_threads, n_rows * (t + 1) / n_threads, n_per_row, rb};
        if (t > 0) {
            started[t] = pthread_create(&tids[t], NULL, rows_thread, &jobs[t]) == 0;
        }
    }
    rows_thread(&jobs[0]);
    for (int t = 1; t < n_threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            rows_thread(&jobs[t]); /* no thread: do its share here */
    }
    return 0;
}
