/* quant.c - scalar block codecs; see quant.h for the layouts. */
#include "quant.h"

#include <assert.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

float quant_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t quant_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

/* ---- unpacking of one k-quant super-block into integer quants ----
 * q[256]: the integer quant of each element; sc[16]/mn[16]: the integer
 * scale and min of each 16-element sub-block (mins 0 for types without). */

static void unpack_q2_K(const struct block_q2_K *b, int8_t *q, int *sc, int *mn)
{
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, r = e % 128, j = r / 32, l = r % 32;
        q[e] = (int8_t)((b->qs[32 * h + l] >> (2 * j)) & 3);
    }
    for (int s = 0; s < 16; s++) {
        sc[s] = b->scales[s] & 15;
        mn[s] = b->scales[s] >> 4;
    }
}

static void unpack_q3_K(const struct block_q3_K *b, int8_t *q, int *sc)
{
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, r = e % 128, j = r / 32, l = r % 32;
        int low = (b->qs[32 * h + l] >> (2 * j)) & 3;
        int hi = (b->hmask[e % 32] >> (e / 32)) & 1;
        q[e] = (int8_t)(low - (hi ? 0 : 4));
    }
    for (int s = 0; s < 16; s++) {
        int low = s < 8 ? b->scales[s] & 15 : b->scales[s - 8] >> 4;
        int high = (b->scales[8 + s % 4] >> (2 * (s / 4))) & 3;
        sc[s] = (low | high << 4) - 32;
    }
}

/* 6-bit scale and min of 32-element sub-block j of Q4_K / Q5_K. */
static void scale_min_k4(int j, const uint8_t *s, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void unpack_q4_K(const struct block_q4_K *b, int8_t *q, int *sc, int *mn)
{
    for (int e = 0; e < QK_K; e++) {
        int g = e / 64, l = e % 32;
        uint8_t v = b->qs[32 * g + l];
        q[e] = (int8_t)(e % 64 < 32 ? v & 15 : v >> 4);
    }
    for (int j = 0; j < 8; j++) {
        int a, m;
        scale_min_k4(j, b->scales, &a, &m);
        sc[2 * j] = sc[2 * j + 1] = a;
        mn[2 * j] = mn[2 * j + 1] = m;
    }
}

static void unpack_q5_K(const struct block_q5_K *b, int8_t *q, int *sc, int *mn)
{
    for (int e = 0; e < QK_K; e++) {
        int g = e / 64, l = e % 32;
        uint8_t v = b->qs[32 * g + l];
        int low = e % 64 < 32 ? v & 15 : v >> 4;
        int hi = (b->qh[l] >> (e / 32)) & 1;
        q[e] = (int8_t)(low | hi << 4);
    }
    for (int j = 0; j < 8; j++) {
        int a, m;
        scale_min_k4(j, b->scales, &a, &m);
        sc[2 * j] = sc[2 * j + 1] = a;
        mn[2 * j] = mn[2 * j + 1] = m;
    }
}

static void unpack_q6_K(const struct block_q6_K *b, int8_t *q, int *sc)
{
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
        int low = (b->ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 15;
        int high = (b->qh[32 * h + l] >> (2 * k)) & 3;
        q[e] = (int8_t)((low | high << 4) - 32);
    }
    for (int s = 0; s < 16; s++)
        sc[s] = b->scales[s];
}

/* Unpack one 32-block of the legacy types: integer quants q[32] (Q4_0/Q5_0
 * already centred), d and m (m = 0 for the symmetric types). */
static void unpack_32(uint32_t type, const void *blk, int8_t *q, float *d, float *m)
{
    switch (type) {
    case GGML_TYPE_Q4_0: {
        const struct block_q4_0 *b = blk;
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)((b->qs[j] & 15) - 8);
            q[j + 16] = (int8_t)((b->qs[j] >> 4) - 8);
        }
        *d = quant_f16_to_f32(b->d);
        *m = 0;
        break;
    }
    case GGML_TYPE_Q4_1: {
        const struct block_q4_1 *b = blk;
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)(b->qs[j] & 15);
            q[j + 16] = (int8_t)(b->qs[j] >> 4);
        }
        *d = quant_f16_to_f32(b->d);
        *m = quant_f16_to_f32(b->m);
        break;
    }
    case GGML_TYPE_Q5_0: {
        const struct block_q5_0 *b = blk;
        uint32_t h;
        memcpy(&h, b->qh, 4);
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)(((b->qs[j] & 15) | ((h >> j) & 1) << 4) - 16);
            q[j + 16] = (int8_t)(((b->qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4) - 16);
        }
        *d = quant_f16_to_f32(b->d);
        *m = 0;
        break;
    }
    case GGML_TYPE_Q5_1: {
        const struct block_q5_1 *b = blk;
        uint32_t h;
        memcpy(&h, b->qh, 4);
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)((b->qs[j] & 15) | ((h >> j) & 1) << 4);
            q[j + 16] = (int8_t)((b->qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4);
        }
        *d = quant_f16_to_f32(b->d);
        *m = quant_f16_to_f32(b->m);
        break;
    }
    case GGML_TYPE_Q8_0: {
        const struct block_q8_0 *b = blk;
        memcpy(q, b->qs, 32);
        *d = quant_f16_to_f32(b->d);
        *m = 0;
        break;
    }
    case GGML_TYPE_Q8_1: {
        const struct block_q8_1 *b = blk;
        memcpy(q, b->qs, 32);
        *d = quant_f16_to_f32(b->d);
        *m = 0;
        break;
    }
    default:
        assert(!"not a 32-block type");
    }
}

/* Unpack one super-block of a k-quant: q[256], sc[16], mn[16], d, dmin. */
static void unpack_k(uint32_t type, const void *blk, int8_t *q, int *sc, int *mn, float *d,
                     float *dmin)
{
    memset(mn, 0, 16 * sizeof(int));
    *dmin = 0;
    switch (type) {
    case GGML_TYPE_Q2_K: {
        const struct block_q2_K *b = blk;
        unpack_q2_K(b, q, sc, mn);
        *d = quant_f16_to_f32(b->d);
        *dmin = quant_f16_to_f32(b->dmin);
        break;
    }
    case GGML_TYPE_Q3_K: {
        const struct block_q3_K *b = blk;
        unpack_q3_K(b, q, sc);
        *d = quant_f16_to_f32(b->d);
        break;
    }
    case GGML_TYPE_Q4_K: {
        const struct block_q4_K *b = blk;
        unpack_q4_K(b, q, sc, mn);
        *d = quant_f16_to_f32(b->d);
        *dmin = quant_f16_to_f32(b->dmin);
        break;
    }
    case GGML_TYPE_Q5_K: {
        const struct block_q5_K *b = blk;
        unpack_q5_K(b, q, sc, mn);
        *d = quant_f16_to_f32(b->d);
        *dmin = quant_f16_to_f32(b->dmin);
        break;
    }
    case GGML_TYPE_Q6_K: {
        const struct block_q6_K *b = blk;
        unpack_q6_K(b, q, sc);
        *d = quant_f16_to_f32(b->d);
        break;
    }
    case GGML_TYPE_Q8_K: {
        const struct block_q8_K *b = blk;
        memcpy(q, b->qs, QK_K);
        for (int s = 0; s < 16; s++)
            sc[s] = 1;
        *d = b->d;
        break;
    }
    default:
        assert(!"not a k-quant type");
    }
}

static bool is_k(uint32_t type)
{
    return type == GGML_TYPE_Q2_K || type == GGML_TYPE_Q3_K || type == GGML_TYPE_Q4_K ||
           type == GGML_TYPE_Q5_K || type == GGML_TYPE_Q6_K || type == GGML_TYPE_Q8_K;
}

static uint32_t block_elems(uint32_t type)
{
    switch (type) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
        return 1;
    default:
        return is_k(type) ? QK_K : QK;
    }
}

static size_t block_bytes(uint32_t type)
{
    switch (type) {
    case GGML_TYPE_F32:
        return 4;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
        return 2;
    case GGML_TYPE_Q4_0:
        return sizeof(struct block_q4_0);
    case GGML_TYPE_Q4_1:
        return sizeof(struct block_q4_1);
    case GGML_TYPE_Q5_0:
        return sizeof(struct block_q5_0);
    case GGML_TYPE_Q5_1:
        return sizeof(struct block_q5_1);
    case GGML_TYPE_Q8_0:
        return sizeof(struct block_q8_0);
    case GGML_TYPE_Q8_1:
        return sizeof(struct block_q8_1);
    case GGML_TYPE_Q2_K:
        return sizeof(struct block_q2_K);
    case GGML_TYPE_Q3_K:
        return sizeof(struct block_q3_K);
    case GGML_TYPE_Q4_K:
        return sizeof(struct block_q4_K);
    case GGML_TYPE_Q5_K:
        return sizeof(struct block_q5_K);
    case GGML_TYPE_Q6_K:
        return sizeof(struct block_q6_K);
    case GGML_TYPE_Q8_K:
        return sizeof(struct block_q8_K);
    }
    assert(!"unknown type");
    return 0;
}

size_t quant_row_size(uint32_t type, int64_t n)
{
    return (size_t)(n / block_elems(type)) * block_bytes(type);
}

void quant_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    const uint8_t *p = src;
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        return;
    case GGML_TYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = quant_f16_to_f32(h);
        }
        return;
    case GGML_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = quant_bf16_to_f32(h);
        }
        return;
    }
    size_t bb = block_bytes(type);
    if (is_k(type)) {
        assert(n % QK_K == 0);
        int8_t q[QK_K];
        int sc[16], mn[16];
        float d, dmin;
        for (int64_t b = 0; b < n / QK_K; b++) {
            unpack_k(type, p + b * bb, q, sc, mn, &d, &dmin);
            for (int e = 0; e < QK_K; e++)
                dst[b * QK_K + e] = d * (float)sc[e / 16] * q[e] - dmin * (float)mn[e / 16];
        }
    } else {
        assert(n % QK == 0);
        int8_t q[QK];
        float d, m;
        for (int64_t b = 0; b < n / QK; b++) {
            unpack_32(type, p + b * bb, q, &d, &m);
            for (int e = 0; e < QK; e++)
                dst[b * QK + e] = d * q[e] + m;
        }
    }
}

uint32_t quant_vec_dot_type(uint32_t w)
{
    switch (w) {
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q8_0:
        return GGML_TYPE_Q8_0;
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_1:
        return GGML_TYPE_Q8_1;
    case GGML_TYPE_Q2_K:
    case GGML_TYPE_Q3_K:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K:
        return GGML_TYPE_Q8_K;
    default:
        return w; /* F32, F16, BF16 */
    }
}

static void quantize_q8_0(const float *x, struct block_q8_0 *y, int64_t n, struct block_q8_1 *y1)
{
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.f;
        float id = amax != 0 ? 127.f / amax : 0.f;
        int8_t *qs = y1 ? y1[b].qs : y[b].qs;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            qs[j] = (int8_t)lrintf(x[j] * id);
            sum += qs[j];
        }
        if (y1) {
            y1[b].d = quant_f32_to_f16(d);
            y1[b].s = quant_f32_to_f16(d * (float)sum);
        } else {
            y[b].d = quant_f32_to_f16(d);
        }
    }
}

static void quantize_q8_K(const float *x, struct block_q8_K *y, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = (int)lrintf(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int s = 0; s < 16; s++) {
            int sum = 0;
            for (int i = 0; i < 16; i++)
                sum += y[b].qs[16 * s + i];
            y[b].bsums[s] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}

void quant_quantize_row(uint32_t act_type, const float *x, void *dst, int64_t n)
{
    switch (act_type) {
    case GGML_TYPE_F32:
        memcpy(dst, x, (size_t)n * 4);
        return;
    case GGML_TYPE_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = quant_f32_to_f16(x[i]);
        return;
    }
    case GGML_TYPE_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = quant_f32_to_bf16(x[i]);
        return;
    }
    case GGML_TYPE_Q8_0:
        quantize_q8_0(x, dst, n, NULL);
        return;
    case GGML_TYPE_Q8_1:
        quantize_q8_0(x, NULL, n, dst);
        return;
    case GGML_TYPE_Q8_K:
        quantize_q8_K(x, dst, n);
        return;
    }
    assert(!"not an activation type");
}

float quant_vec_dot_ref(uint32_t w, int64_t n, const void *wrow, const void *act)
{
    const uint8_t *pw = wrow;
    const uint8_t *pa = act;
    switch (w) {
    case GGML_TYPE_F32: {
        double s = 0;
        const float *a = act, *b = wrow;
        for (int64_t i = 0; i < n; i++)
            s += (double)a[i] * b[i];
        return (float)s;
    }
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: {
        double s = 0;
        for (int64_t i = 0; i < n; i++) {
            uint16_t hw, ha;
            memcpy(&hw, pw + 2 * i, 2);
            memcpy(&ha, pa + 2 * i, 2);
            if (w == GGML_TYPE_F16)
                s += (double)quant_f16_to_f32(hw) * quant_f16_to_f32(ha);
            else
                s += (double)quant_bf16_to_f32(hw) * quant_bf16_to_f32(ha);
        }
        return (float)s;
    }
    }
    uint32_t at = quant_vec_dot_type(w);
    size_t wb = block_bytes(w), ab = block_bytes(at);
    float sum = 0;
    if (is_k(w)) {
        int8_t qw[QK_K], qa[QK_K];
        int sc[16], mn[16], asc[16], amn[16];
        float d, dmin, ad, adm;
        for (int64_t b = 0; b < n / QK_K; b++) {
            unpack_k(w, pw + b * wb, qw, sc, mn, &d, &dmin);
            unpack_k(at, pa + b * ab, qa, asc, amn, &ad, &adm);
            const struct block_q8_K *y = (const void *)(pa + b * ab);
            int isum = 0, msum = 0;
            for (int s = 0; s < 16; s++) {
                int dot = 0;
                for (int i = 0; i < 16; i++)
                    dot += qw[16 * s + i] * qa[16 * s + i];
                isum += sc[s] * dot;
                msum += mn[s] * y->bsums[s];
            }
            sum += ad * (d * (float)isum - dmin * (float)msum);
        }
    } else {
        int8_t qw[QK], qa[QK];
        float d, m, ad, am;
        for (int64_t b = 0; b < n / QK; b++) {
            unpack_32(w, pw + b * wb, qw, &d, &m);
            unpack_32(at, pa + b * ab, qa, &ad, &am);
            int dot = 0;
            for (int j = 0; j < QK; j++)
                dot += qw[j] * qa[j];
            sum += d * ad * (float)dot;
            if (at == GGML_TYPE_Q8_1) {
                const struct block_q8_1 *y = (const void *)(pa + b * ab);
                sum += m * quant_f16_to_f32(y->s);
            }
        }
    }
    return sum;
}
