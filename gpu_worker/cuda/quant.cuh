/*
 * quant.cuh - device-side decoding of the GGUF tensor types staged serves.
 *
 * deq8<T>(row, e, out) writes the 8 values of elements e..e+7 (e a multiple
 * of 8) of a row stored in ggml type T. Blocks are read in place: nothing is
 * ever dequantized into a copy of the whole model. Byte layouts of one block
 * (f16 = IEEE half, little-endian; qs/ql/qh/scales are byte arrays):
 *
 *   type  elems bytes  layout (byte offset: field)
 *   Q4_0   32    18    0:d f16, 2:qs[16]            x = (nibble - 8) * d
 *   Q4_1   32    20    0:d, 2:m, 4:qs[16]           x = nibble * d + m
 *   Q5_0   32    22    0:d, 2:qh u32, 6:qs[16]      x = (nibble | bit<<4 - 16) * d
 *   Q5_1   32    24    0:d, 2:m, 4:qh u32, 8:qs[16] x = (nibble | bit<<4) * d + m
 *   Q8_0   32    34    0:d, 2:qs[32] int8           x = q * d
 *       (32-element blocks: element i < 16 is the low nibble of qs[i], element
 *        i + 16 the high nibble; its 5th bit is bit i / i + 16 of qh)
 *   Q2_K  256    84    0:scales[16] (lo4 scale, hi4 min), 16:qs[64], 80:d, 82:dmin
 *   Q3_K  256   110    0:hmask[32], 32:qs[64], 96:scales[12] (16 x 6 bit), 108:d
 *   Q4_K  256   144    0:d, 2:dmin, 4:scales[12] (8 x 6-bit scale + min), 16:qs[128]
 *   Q5_K  256   176    0:d, 2:dmin, 4:scales[12], 16:qh[32], 48:qs[128]
 *   Q6_K  256   210    0:ql[128], 128:qh[64], 192:scales[16] int8, 208:d
 *
 * Element e of a K-quant super-block (256 elements):
 *   Q2_K: n = e/128, j = e%128/32, l = e%32: q = qs[32n+l] >> 2j & 3,
 *         s = scales[8n+2j+l/16]: x = d*(s&15)*q - dmin*(s>>4)
 *   Q3_K: as Q2_K for the low 2 bits; 3rd bit hmask[l] bit 4n+j (clear: -4);
 *         6-bit signed scale k = 8n+2j+l/16 (low 4 bits: scales[k%8] nibble
 *         k/8, high 2 bits: scales[8+k%4] >> 2(k/4)) minus 32
 *   Q4_K: c = e/64, h = e%64/32, l = e%32: nibble h of qs[32c+l],
 *         scale/min pair 2c+h (6-bit, packed as below)
 *   Q5_K: as Q4_K plus 5th bit qh[l] bit 2c+h
 *   Q6_K: n = e/128, g = e%128/32, l = e%32: 4 low bits = nibble (g/2) of
 *         ql[64n+l+32(g%2)], 2 high bits = qh[32n+l] >> 2g & 3, minus 32;
 *         scale scales[8n+l/16+2g]
 * Q4_K/Q5_K scale j (0..7): j < 4: sc = s[j] & 63, m = s[j+4] & 63;
 *   else sc = s[j+4] & 15 | (s[j-4] >> 6) << 4, m = s[j+4] >> 4 | (s[j] >> 6) << 4.
 *
 * On the device, Q5_0, Q8_0 and Q6_K tensors are usually grouped
 * (loader/gpu_layout.h): their types are then QT_Q5_0G, QT_Q8_0G, QT_Q6_KG,
 * blocks are still addressed at their original offsets, and gblock() finds
 * the fields.
 */
#ifndef STAGED_QUANT_CUH
#define STAGED_QUANT_CUH

#include "gpu_worker/cuda/cuda_util.cuh"
#include "loader/gpu_layout.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

/* ggml type numbers (common/gguf.h). */
enum {
    QT_F32 = 0,
    QT_F16 = 1,
    QT_Q4_0 = 2,
    QT_Q4_1 = 3,
    QT_Q5_0 = 6,
    QT_Q5_1 = 7,
    QT_Q8_0 = 8,
    QT_Q2_K = 10,
    QT_Q3_K = 11,
    QT_Q4_K = 12,
    QT_Q5_K = 13,
    QT_Q6_K = 14,
    QT_BF16 = 30,
    /* device-only ids: a tensor of ggml type t - 100 whose blocks the upload
     * grouped (loader/gpu_layout.h); cmat.type carries them */
    QT_Q5_0G = 106,
    QT_Q8_0G = 108,
    QT_Q6_KG = 114
};

/* The ggml type whose values a (possibly grouped) type T encodes. */
static constexpr __host__ __device__ int qbase(int T)
{
    return T >= 100 ? T - 100 : T;
}

template <int T> struct qtraits;
template <> struct qtraits<QT_F32> {
    enum { QK = 1, BS = 4 };
};
template <> struct qtraits<QT_F16> {
    enum { QK = 1, BS = 2 };
};
template <> struct qtraits<QT_BF16> {
    enum { QK = 1, BS = 2 };
};
template <> struct qtraits<QT_Q4_0> {
    enum { QK = 32, BS = 18 };
};
template <> struct qtraits<QT_Q4_1> {
    enum { QK = 32, BS = 20 };
};
template <> struct qtraits<QT_Q5_0> {
    enum { QK = 32, BS = 22 };
};
template <> struct qtraits<QT_Q5_1> {
    enum { QK = 32, BS = 24 };
};
template <> struct qtraits<QT_Q8_0> {
    enum { QK = 32, BS = 34 };
};
template <> struct qtraits<QT_Q2_K> {
    enum { QK = 256, BS = 84 };
};
template <> struct qtraits<QT_Q3_K> {
    enum { QK = 256, BS = 110 };
};
template <> struct qtraits<QT_Q4_K> {
    enum { QK = 256, BS = 144 };
};
template <> struct qtraits<QT_Q5_K> {
    enum { QK = 256, BS = 176 };
};
template <> struct qtraits<QT_Q6_K> {
    enum { QK = 256, BS = 210 };
};
template <> struct qtraits<QT_Q5_0G> : qtraits<QT_Q5_0> {};
template <> struct qtraits<QT_Q8_0G> : qtraits<QT_Q8_0> {};
template <> struct qtraits<QT_Q6_KG> : qtraits<QT_Q6_K> {};

/* Where the fields of a block of a grouped type T lie (gpu_layout.h), from
 * the block's original address b: q = the quants (Q6_K: the A-block), 16-byte
 * aligned; h = Q5_0's qh; d = the f16 scale. */
struct gfields {
    const uint8_t *q, *h, *d;
};
template <int T> static __device__ __forceinline__ gfields gblock(const uint8_t *b)
{
    constexpr unsigned BS = qtraits<T>::BS;
    const unsigned slot = gpu_layout_slot(BS, (uintptr_t)b);
    const uint8_t *G = b - BS * slot;
    gfields f;
    if (T == QT_Q8_0G) {
        f.q = G + 32 * slot, f.h = nullptr, f.d = G + 256 + 2 * slot;
    } else if (T == QT_Q5_0G) {
        f.q = G + 16 * slot, f.h = G + 128 + 4 * slot, f.d = G + 160 + 2 * slot;
    } else {
        f.q = G + 208 * slot, f.h = nullptr, f.d = G + 1664 + 2 * slot;
    }
    return f;
}

/* A Q6_K A-block (gpu_layout.h) for element l (0..31, a multiple of 4) of
 * 32-group j of half h: its low-nibble byte, high-bits byte and scale. */
static __device__ __forceinline__ int q6g_ql(int h, int j, int l)
{
    return 16 * (4 * h + l / 8) + 8 * (j & 1) + l % 8;
}
static __device__ __forceinline__ int q6g_qh(int h, int l)
{
    return 128 + 8 * (4 * h + l / 8) + l % 8;
}
static __device__ __forceinline__ int q6g_sc(int h, int j, int l)
{
    return 192 + 4 * (2 * h + l / 16) + j;
}

/* Size of a row of K elements in bytes. */
static __host__ __device__ inline size_t qt_row_bytes(int t, int K)
{
    switch (t) {
    case QT_F32:
        return (size_t)K * 4;
    case QT_F16:
    case QT_BF16:
        return (size_t)K * 2;
    case QT_Q4_0:
        return (size_t)K / 32 * 18;
    case QT_Q4_1:
        return (size_t)K / 32 * 20;
    case QT_Q5_0:
    case QT_Q5_0G:
        return (size_t)K / 32 * 22;
    case QT_Q5_1:
        return (size_t)K / 32 * 24;
    case QT_Q8_0:
    case QT_Q8_0G:
        return (size_t)K / 32 * 34;
    case QT_Q2_K:
        return (size_t)K / 256 * 84;
    case QT_Q3_K:
        return (size_t)K / 256 * 110;
    case QT_Q4_K:
        return (size_t)K / 256 * 144;
    case QT_Q5_K:
        return (size_t)K / 256 * 176;
    case QT_Q6_K:
    case QT_Q6_KG:
        return (size_t)K / 256 * 210;
    }
    return 0;
}

static __host__ __device__ __forceinline__ float ld_f16(const uint8_t *p)
{
    return __half2float(*(const __half *)p);
}

static __host__ __device__ __forceinline__ uint32_t ld_u32_unaligned(const uint8_t *p)
{
    /* 2-byte aligned at least (all block sizes and offsets are even). */
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | (uint32_t)h[1] << 16;
}

static __host__ __device__ __forceinline__ void k4_scale_min(const uint8_t *s, int j, int &sc,
                                                             int &m)
{
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Decode elements e..e+7 of a quantized row. */
template <int T>
static __host__ __device__ __forceinline__ void deq8(const uint8_t *row, int e, float *o)
{
    const int QK = qtraits<T>::QK, BS = qtraits<T>::BS;
    const uint8_t *b = row + (size_t)(e / QK) * BS;
    const int i = e % QK;
#ifdef __CUDA_ARCH__
    /* grouped types: the 8 quant bytes are one aligned 8-byte word */
    if (T == QT_Q8_0G || T == QT_Q5_0G) {
        const gfields f = gblock<T>(b);
        const float d = ld_f16(f.d);
        const uint32_t qh = T == QT_Q5_0G ? *(const uint32_t *)f.h : 0u;
        const uint2 w = *(const uint2 *)(f.q + (T == QT_Q8_0G ? i : (i & 15)));
        const int hi = i >= 16;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int byte = (int)((k < 4 ? w.x : w.y) >> 8 * (k % 4) & 255u);
            if (T == QT_Q8_0G) {
                o[k] = (int8_t)byte * d;
            } else {
                int q = (hi ? byte >> 4 : byte & 15) | ((qh >> (i + k)) & 1) << 4;
                o[k] = (q - 16) * d;
            }
        }
        return;
    }
    if (T == QT_Q6_KG) {
        const gfields f = gblock<T>(b);
        const int n = i / 128, g = (i % 128) / 32, l = i % 32;
        const uint2 ql = *(const uint2 *)(f.q + q6g_ql(n, g, l)),
                    qh = *(const uint2 *)(f.q + q6g_qh(n, l));
        const float d = ld_f16(f.d) * (float)(int8_t)f.q[q6g_sc(n, g, l)];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t lw = k < 4 ? ql.x : ql.y, hw = k < 4 ? qh.x : qh.y;
            const int lb = (int)(lw >> 8 * (k % 4) & 255u), hb = (int)(hw >> 8 * (k % 4) & 255u);
            int lo = g >= 2 ? lb >> 4 : lb & 15;
            o[k] = d * (float)((lo | (((hb >> (2 * g)) & 3) << 4)) - 32);
        }
        return;
    }
#endif
    if (T == QT_Q4_0 || T == QT_Q4_1 || T == QT_Q5_0 || T == QT_Q5_1) {
        const bool has_m = (T == QT_Q4_1 || T == QT_Q5_1);
        const bool has_h = (T == QT_Q5_0 || T == QT_Q5_1);
        float d = ld_f16(b), m = has_m ? ld_f16(b + 2) : 0.f;
        int qs_off = 2 + (has_m ? 2 : 0) + (has_h ? 4 : 0);
        uint32_t qh = has_h ? ld_u32_unaligned(b + 2 + (has_m ? 2 : 0)) : 0;
        const uint8_t *qs = b + qs_off;
        int hi = i >= 16, base = i & 15;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int q = hi ? qs[base + k] >> 4 : qs[base + k] & 15;
            if (has_h) q |= ((qh >> (i + k)) & 1) << 4;
            if (T == QT_Q4_0)
                o[k] = (q - 8) * d;
            else if (T == QT_Q5_0)
                o[k] = (q - 16) * d;
            else
                o[k] = q * d + m;
        }
    } else if (T == QT_Q8_0) {
        float d = ld_f16(b);
        const int8_t *qs = (const int8_t *)(b + 2);
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = qs[i + k] * d;
    } else if (T == QT_Q2_K) {
        int n = i / 128, j = (i % 128) / 32, l = i % 32;
        int s = b[8 * n + 2 * j + l / 16];
        float dl = ld_f16(b + 80) * (s & 15), ml = ld_f16(b + 82) * (s >> 4);
        const uint8_t *q = b + 16 + 32 * n + l;
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = dl * ((q[k] >> (2 * j)) & 3) - ml;
    } else if (T == QT_Q3_K) {
        int n = i / 128, j = (i % 128) / 32, l = i % 32;
        int si = 8 * n + 2 * j + l / 16;
        const uint8_t *sc = b + 96;
        int lo = (si < 8) ? (sc[si] & 15) : (sc[si - 8] >> 4);
        int hi = (sc[8 + si % 4] >> (2 * (si / 4))) & 3;
        float dl = ld_f16(b + 108) * (float)((lo | hi << 4) - 32);
        const uint8_t *q = b + 32 + 32 * n + l;
        const uint8_t *hm = b + l;
        int mask = 1 << (4 * n + j);
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = dl * (float)(((q[k] >> (2 * j)) & 3) - ((hm[k] & mask) ? 0 : 4));
    } else if (T == QT_Q4_K || T == QT_Q5_K) {
        int c = i / 64, h = (i % 64) / 32, l = i % 32;
        int sc, mn;
        k4_scale_min(b + 4, 2 * c + h, sc, mn);
        float d = ld_f16(b) * sc, m = ld_f16(b + 2) * mn;
        const uint8_t *q = b + (T == QT_Q4_K ? 16 : 48) + 32 * c + l;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int v = h ? q[k] >> 4 : q[k] & 15;
            if (T == QT_Q5_K) v += ((b[16 + l + k] >> (2 * c + h)) & 1) << 4;
            o[k] = d * v - m;
        }
    } else if (T == QT_Q6_K) {
        int n = i / 128, g = (i % 128) / 32, l = i % 32;
        const uint8_t *ql = b + 64 * n + l + 32 * (g & 1);
        const uint8_t *qh = b + 128 + 32 * n + l;
        float d = ld_f16(b + 208) * (float)(int8_t)b[192 + 8 * n + l / 16 + 2 * g];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int lo = g >= 2 ? ql[k] >> 4 : ql[k] & 15;
            int v = (lo | (((qh[k] >> (2 * g)) & 3) << 4)) - 32;
            o[k] = d * v;
        }
    }
}

/* One element of a float-type row (F32, F16, BF16). */
template <int T> static __host__ __device__ __forceinline__ float deq1(const void *row, int e)
{
    if (T == QT_F32) return ((const float *)row)[e];
    if (T == QT_F16) return __half2float(((const __half *)row)[e]);
    return __bfloat162float(((const __nv_bfloat16 *)row)[e]);
}

/* Elements e..e+3 (e % 4 == 0) of the block at b, as 4 signed bytes in the
 * block's integer domain (Q4_0 and Q5_0 centred, Q6_K minus 32, Q3_K with
 * its high bit applied; Q4_1, Q5_1, Q2_K, Q4_K, Q5_K unsigned, their minimum
 * handled by the scaled sums). */
template <int T> static __device__ __forceinline__ uint32_t quants4(const uint8_t *b, int e)
{
    if (T == QT_Q8_0G || T == QT_Q5_0G || T == QT_Q6_KG) {
        const gfields f = gblock<T>(b);
        if (T == QT_Q8_0G) return *(const uint32_t *)(f.q + e);
        if (T == QT_Q5_0G) {
            uint32_t v = *(const uint32_t *)(f.q + (e & 15));
            uint32_t q = e < 16 ? v & 0x0F0F0F0Fu : (v >> 4) & 0x0F0F0F0Fu;
            uint32_t h = *(const uint32_t *)f.h >> e;
            q |= (h & 1u) << 4 | (h >> 1 & 1u) << 12 | (h >> 2 & 1u) << 20 | (h >> 3 & 1u) << 28;
            return __vsub4(q, 0x10101010u);
        }
        const int h = e / 128, j = e % 128 / 32, l = e % 32;
        uint32_t lo = (*(const uint32_t *)(f.q + q6g_ql(h, j, l)) >> (4 * (j >> 1))) & 0x0F0F0F0Fu;
        uint32_t hi = (*(const uint32_t *)(f.q + q6g_qh(h, l)) >> (2 * j)) & 0x03030303u;
        return __vsub4(lo | hi << 4, 0x20202020u);
    }
    if (T == QT_Q4_0 || T == QT_Q4_1 || T == QT_Q5_0 || T == QT_Q5_1) {
        const bool has_m = T == QT_Q4_1 || T == QT_Q5_1, has_h = T == QT_Q5_0 || T == QT_Q5_1;
        const int qs = 2 + (has_m ? 2 : 0) + (has_h ? 4 : 0);
        uint32_t v = ld_u32_unaligned(b + qs + (e & 15));
        uint32_t q = e < 16 ? v & 0x0F0F0F0Fu : (v >> 4) & 0x0F0F0F0Fu;
        if (has_h) {
            uint32_t h = ld_u32_unaligned(b + 2 + (has_m ? 2 : 0)) >> e;
            q |= (h & 1u) << 4 | (h >> 1 & 1u) << 12 | (h >> 2 & 1u) << 20 | (h >> 3 & 1u) << 28;
        }
        if (T == QT_Q4_0) q = __vsub4(q, 0x08080808u);
        if (T == QT_Q5_0) q = __vsub4(q, 0x10101010u);
        return q;
    }
    if (T == QT_Q8_0) return ld_u32_unaligned(b + 2 + e);
    const int h = e / 128, r = e % 128, j = r / 32, l = r % 32;
    if (T == QT_Q2_K) return (ld_u32_unaligned(b + 16 + 32 * h + l) >> (2 * j)) & 0x03030303u;
    if (T == QT_Q3_K) {
        uint32_t lo = (ld_u32_unaligned(b + 32 + 32 * h + l) >> (2 * j)) & 0x03030303u;
        uint32_t hb = (ld_u32_unaligned(b + l) >> (4 * h + j)) & 0x01010101u;
        return __vsub4(lo | hb << 2, 0x04040404u);
    }
    if (T == QT_Q4_K || T == QT_Q5_K) {
        const int g = e / 64;
        uint32_t v = ld_u32_unaligned(b + (T == QT_Q4_K ? 16 : 48) + 32 * g + l);
        uint32_t q = (e % 64) < 32 ? v & 0x0F0F0F0Fu : (v >> 4) & 0x0F0F0F0Fu;
        if (T == QT_Q5_K) q |= ((ld_u32_unaligned(b + 16 + l) >> (e / 32)) & 0x01010101u) << 4;
        return q;
    }
    /* Q6_K */
    uint32_t lo = (ld_u32_unaligned(b + 64 * h + l + 32 * (j & 1)) >> (4 * (j >> 1))) & 0x0F0F0F0Fu;
    uint32_t hi = (ld_u32_unaligned(b + 128 + 32 * h + l) >> (2 * j)) & 0x03030303u;
    return __vsub4(lo | hi << 4, 0x20202020u);
}

/* d of a 32-element block (the legacy types) at b. */
template <int T> static __device__ __forceinline__ float block_d(const uint8_t *b)
{
    if (T == QT_Q8_0G || T == QT_Q5_0G) return ld_f16(gblock<T>(b).d);
    return ld_f16(b);
}

/* Scale (and min) of 16-element sub-block s of a k-quant super-block, and
 * the super-block's d and dmin. */
template <int T>
static __device__ __forceinline__ void kscale(const uint8_t *b, int s, int &sc, int &mn)
{
    mn = 0;
    if (T == QT_Q2_K) {
        sc = b[s] & 15;
        mn = b[s] >> 4;
    } else if (T == QT_Q3_K) {
        const uint8_t *x = b + 96;
        int lo = s < 8 ? x[s] & 15 : x[s - 8] >> 4;
        int hi = (x[8 + s % 4] >> (2 * (s / 4))) & 3;
        sc = (lo | hi << 4) - 32;
    } else if (T == QT_Q4_K || T == QT_Q5_K) {
        k4_scale_min(b + 4, s / 2, sc, mn);
    } else if (T == QT_Q6_KG) { /* scales[8h + r]: 32-group r / 2, 16-half r % 2 */
        sc = (int8_t)gblock<T>(b).q[q6g_sc(s / 8, s % 8 / 2, 16 * (s % 2))];
    } else {
        sc = (int8_t)b[192 + s];
    }
}

template <int T> static __device__ __forceinline__ void kdmin(const uint8_t *b, float &d, float &dm)
{
    dm = 0.f;
    if (T == QT_Q2_K) {
        d = ld_f16(b + 80);
        dm = ld_f16(b + 82);
    } else if (T == QT_Q3_K) {
        d = ld_f16(b + 108);
    } else if (T == QT_Q4_K || T == QT_Q5_K) {
        d = ld_f16(b);
        dm = ld_f16(b + 2);
    } else if (T == QT_Q6_KG) {
        d = ld_f16(gblock<T>(b).d);
    } else {
        d = ld_f16(b + 208);
    }
}

/* ---- the reference's 8-bit activation blocks, one warp per block ---- */

/* Q8_0 (and Q8_1): this lane's value v of a 32-block; returns its quant
 * rint(v * 127/amax) and sets d = amax/127 (unrounded; stored as half). */
static __device__ __forceinline__ int q8_0_quant(float v, float &d)
{
    float amax = warp_max(fabsf(v));
    d = amax / 127.f;
    float id = amax != 0.f ? 127.f / amax : 0.f;
    return (int)rintf(v * id);
}

/* Q8_K: iscale = -127/m for the element m of largest magnitude of a 256-block
 * (first one on ties), 0 for an all-zero block. This lane holds xv[k] =
 * element k * 32 + lane, or with `consecutive` element 8 * lane + k.
 * Quants: min(127, rint(iscale * x)), scale 1/iscale. */
static __device__ __forceinline__ float q8_k_iscale(const float (&xv)[8], int lane,
                                                    bool consecutive)
{
    float best = -1.f;
    int bi = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int e = consecutive ? 8 * lane + k : k * 32 + lane;
        float a = fabsf(xv[k]);
        if (a > best) { /* e grows with k: the first on ties */
            best = a;
            bi = e;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) {
            best = ob;
            bi = oi;
        }
    }
    /* the value at bi, from the lane that holds it */
    int slot = consecutive ? bi % 8 : bi / 32;
    float mine = xv[0];
#pragma unroll
    for (int k = 1; k < 8; k++)
        if (k == slot) mine = xv[k];
    float mval = __shfl_sync(0xffffffffu, mine, consecutive ? bi / 8 : bi % 32);
    return best == 0.f ? 0.f : -127.f / mval;
}

/* Store of one activation block in the layout of struct mmq_act (mmq.cuh),
 * one warp per block (blk = the block's index in the flat [n][K] array).
 * Q8_0 / Q8_1: the lane's value v; q = rint(v * 127/amax), d = half(amax/127),
 * s = half(d * sum q) (both kept as float). */
static __device__ __forceinline__ void q8_0_store(float v, int lane, size_t blk, int8_t *q,
                                                  float *dd, float *ss)
{
    float d;
    int qi = q8_0_quant(v, d);
    q[blk * 32 + lane] = (int8_t)qi;
    float sum = warp_sum((float)qi); /* |sum| <= 32 * 127: exact in float */
    if (lane == 0) {
        dd[blk] = __half2float(__float2half_rn(d));
        ss[blk] = __half2float(__float2half_rn(d * sum));
    }
}

/* Q8_K of the 256-block whose elements 8 * lane + k this lane holds in xv;
 * q = min(127, rint(iscale * x)), d = 1/iscale, and bsum = the sums of each
 * 16 quants (a 16-sum is two lanes'). */
static __device__ __forceinline__ void q8_k_store_regs(const float (&xv)[8], int lane, size_t blk,
                                                       int8_t *q, float *dd, int32_t *bsum)
{
    float iscale = q8_k_iscale(xv, lane, true);
    uint32_t w[2] = {0u, 0u};
    int sum = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int qi = min(127, (int)rintf(iscale * xv[k]));
        sum += qi;
        w[k / 4] |= (uint32_t)(qi & 255) << 8 * (k % 4);
    }
    *(uint2 *)(q + blk * 256 + 8 * lane) = make_uint2(w[0], w[1]);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0) bsum[blk * 16 + lane / 2] = sum;
    if (lane == 0) dd[blk] = iscale == 0.f ? 0.f : 1.f / iscale;
}

/* The same from the 256 values at src (16-byte aligned). */
static __device__ __forceinline__ void q8_k_store(const float *src, int lane, size_t blk, int8_t *q,
                                                  float *dd, int32_t *bsum)
{
    float4 a = ((const float4 *)src)[2 * lane], b = ((const float4 *)src)[2 * lane + 1];
    const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    q8_k_store_regs(xv, lane, blk, q, dd, bsum);
}

/* Call F<T>(args...) for the runtime type t: DISPATCH_QUANT over the
 * quantized types, DISPATCH_FLOAT over F32/F16/BF16, DISPATCH_TYPE over
 * every type (in a function returning int; other types log and return
 * ST_EINVAL / ST_EUNSUPPORTED). */
#define DISPATCH_QUANT_CASES(F, ...)                                                               \
    case QT_Q4_0:                                                                                  \
        return F<QT_Q4_0>(__VA_ARGS__);                                                            \
    case QT_Q4_1:                                                                                  \
        return F<QT_Q4_1>(__VA_ARGS__);                                                            \
    case QT_Q5_0:                                                                                  \
        return F<QT_Q5_0>(__VA_ARGS__);                                                            \
    case QT_Q5_1:                                                                                  \
        return F<QT_Q5_1>(__VA_ARGS__);                                                            \
    case QT_Q8_0:                                                                                  \
        return F<QT_Q8_0>(__VA_ARGS__);                                                            \
    case QT_Q2_K:                                                                                  \
        return F<QT_Q2_K>(__VA_ARGS__);                                                            \
    case QT_Q3_K:                                                                                  \
        return F<QT_Q3_K>(__VA_ARGS__);                                                            \
    case QT_Q4_K:                                                                                  \
        return F<QT_Q4_K>(__VA_ARGS__);                                                            \
    case QT_Q5_K:                                                                                  \
        return F<QT_Q5_K>(__VA_ARGS__);                                                            \
    case QT_Q6_K:                                                                                  \
        return F<QT_Q6_K>(__VA_ARGS__);                                                            \
    case QT_Q5_0G:                                                                                 \
        return F<QT_Q5_0G>(__VA_ARGS__);                                                           \
    case QT_Q8_0G:                                                                                 \
        return F<QT_Q8_0G>(__VA_ARGS__);                                                           \
    case QT_Q6_KG:                                                                                 \
        return F<QT_Q6_KG>(__VA_ARGS__);

#define DISPATCH_QUANT(t, F, ...)                                                                  \
    switch (t) {                                                                                   \
        DISPATCH_QUANT_CASES(F, __VA_ARGS__)                                                       \
    default:                                                                                       \
        log_error("cuda: %s: type %d is not a quantized type", #F, (int)(t));                      \
        return ST_EINVAL;                                                                          \
    }

#define DISPATCH_FLOAT_CASES(F, ...)                                                               \
    case QT_F32:                                                                                   \
        return F<QT_F32>(__VA_ARGS__);                                                             \
    case QT_F16:                                                                                   \
        return F<QT_F16>(__VA_ARGS__);                                                             \
    case QT_BF16:                                                                                  \
        return F<QT_BF16>(__VA_ARGS__);

#define DISPATCH_FLOAT(t, F, ...)                                                                  \
    switch (t) {                                                                                   \
        DISPATCH_FLOAT_CASES(F, __VA_ARGS__)                                                       \
    default:                                                                                       \
        log_error("cuda: %s: type %d is not a float type", #F, (int)(t));                          \
        return ST_EINVAL;                                                                          \
    }

#define DISPATCH_TYPE(t, F, ...)                                                                   \
    switch (t) {                                                                                   \
        DISPATCH_FLOAT_CASES(F, __VA_ARGS__)                                                       \
        DISPATCH_QUANT_CASES(F, __VA_ARGS__)                                                       \
    default:                                                                                       \
        log_error("cuda: %s: tensor type %d has no kernel", #F, (int)(t));                         \
        return ST_EUNSUPPORTED;                                                                    \
    }

#endif
