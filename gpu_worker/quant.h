/*
 * quant.h - block layouts of the ggml tensor types staged serves, scalar
 * dequantization, activation quantization and scalar (reference) dot
 * products.
 *
 * A row of n elements of a block type is n / QK consecutive blocks, no
 * padding. Every multi-byte field is little-endian; "half" is an IEEE
 * binary16 stored as uint16_t. The layouts below are those of the GGUF /
 * ggml format (written from the format's documentation; this file shares
 * no code with ggml).
 *
 * 32-element blocks (QK = 32). Element j of the block is x[j]:
 *
 *   Q4_0  18 B  { half d; u8 qs[16]; }
 *               x[j] = d * ((qs[j] & 15) - 8),  x[j+16] = d * ((qs[j] >> 4) - 8),  j < 16
 *   Q4_1  20 B  { half d; half m; u8 qs[16]; }
 *               x[j] = d * (qs[j] & 15) + m,    x[j+16] = d * (qs[j] >> 4) + m
 *   Q5_0  22 B  { half d; u8 qh[4]; u8 qs[16]; }   h = qh as u32 (LE), bit j = 5th bit of x[j]
 *               x[j] = d * (((qs[j] & 15) | ((h >> j) & 1) << 4) - 16)
 *               x[j+16] = d * (((qs[j] >> 4) | ((h >> (j+16)) & 1) << 4) - 16)
 *   Q5_1  24 B  { half d; half m; u8 qh[4]; u8 qs[16]; }  as Q5_0 without -16, plus m
 *   Q8_0  34 B  { half d; i8 qs[32]; }                    x[j] = d * qs[j]
 *   Q8_1  36 B  { half d; half s; i8 qs[32]; }            s = d * sum(qs)  (activations only)
 *
 * 256-element super-blocks (QK_K = 256):
 *
 *   Q2_K  84 B  { u8 scales[16]; u8 qs[64]; half d; half dmin; }
 *         16 sub-blocks of 16. Sub-block s: scale = d * (scales[s] & 15),
 *         min = dmin * (scales[s] >> 4). The 2-bit quant of element e:
 *         with h = e / 128, r = e % 128, shift = 2 * (r / 32), l = r % 32:
 *         q = (qs[32*h + l] >> shift) & 3. x[e] = scale * q - min, s = e / 16.
 *   Q3_K 110 B  { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; }
 *         16 sub-blocks of 16 with 6-bit scales (bias 32): scale s has its low
 *         4 bits in scales[s] & 15 (s < 8) or scales[s-8] >> 4 (s >= 8), and its
 *         high 2 bits in (scales[8 + s%4] >> (2 * (s/4))) & 3.
 *         Low 2 bits of element e as in Q2_K; the third bit is
 *         hmask[e % 32] bit (e / 32); q = low | (bit ? 0 : -4) i.e. q = low - 4*(1-bit).
 *         x[e] = d * (scale_s - 32) * q.
 *   Q4_K 144 B  { half d; half dmin; u8 scales[12]; u8 qs[128]; }
 *         8 sub-blocks of 32 with 6-bit scale sc and 6-bit min mn packed in
 *         scales[12]: for j < 4: sc = s[j] & 63, mn = s[j+4] & 63; for j >= 4:
 *         sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4, mn = (s[j+4] >> 4) | (s[j] >> 6) << 4.
 *         Element e: g = e / 64, l = e % 32, q = e % 64 < 32 ? qs[32g+l] & 15 : qs[32g+l] >> 4.
 *         x[e] = d * sc_j * q - dmin * mn_j, j = e / 32.
 *   Q5_K 176 B  { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
 *         as Q4_K, plus fifth bit of element e = qh[e % 32] bit (e / 32).
 *   Q6_K 210 B  { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }
 *         Element e: h = e / 128, r = e % 128, k = r / 32, l = r % 32:
 *         low4 = ql[64h + l + 32*(k & 1)] >> (4 * (k >> 1)) & 15,
 *         high2 = qh[32h + l] >> (2k) & 3; q = (low4 | high2 << 4) - 32;
 *         x[e] = d * scales[e / 16] * q.
 *   Q8_K 292 B  { float d; i8 qs[256]; i16 bsums[16]; }   bsums[i] = sum qs[16i..16i+15]
 *               (activations only)
 *
 * Float types: F32, F16 (binary16), BF16 (upper half of a binary32).
 *
 * Dot products: each weight type has an activation type (quant_vec_dot_type):
 * Q4_0 Q5_0 Q8_0 -> Q8_0, Q4_1 Q5_1 -> Q8_1, k-quants -> Q8_K, F16 -> F16,
 * BF16 -> BF16, F32 -> F32. Activations are quantized once per row of x
 * (quant_quantize_row) and dotted with integer arithmetic per block.
 */
#ifndef STAGED_QUANT_H
#define STAGED_QUANT_H

#include "common/gguf.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define QK 32
#define QK_K 256
#define K_SCALE_SIZE 12

struct block_q4_0 {
    uint16_t d;
    uint8_t qs[QK / 2];
};
_Static_assert(sizeof(struct block_q4_0) == 18, "Q4_0 block");

struct block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[QK / 2];
};
_Static_assert(sizeof(struct block_q4_1) == 20, "Q4_1 block");

struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
};
_Static_assert(sizeof(struct block_q5_0) == 22, "Q5_0 block");

struct block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
};
_Static_assert(sizeof(struct block_q5_1) == 24, "Q5_1 block");

struct block_q8_0 {
    uint16_t d;
    int8_t qs[QK];
};
_Static_assert(sizeof(struct block_q8_0) == 34, "Q8_0 block");

struct block_q8_1 {
    uint16_t d;
    uint16_t s;
    int8_t qs[QK];
};
_Static_assert(sizeof(struct block_q8_1) == 36, "Q8_1 block");

struct block_q2_K {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d;
    uint16_t dmin;
};
_Static_assert(sizeof(struct block_q2_K) == 84, "Q2_K block");

struct block_q3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[K_SCALE_SIZE];
    uint16_t d;
};
_Static_assert(sizeof(struct block_q3_K) == 110, "Q3_K block");

struct block_q4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
};
_Static_assert(sizeof(struct block_q4_K) == 144, "Q4_K block");

struct block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
_Static_assert(sizeof(struct block_q5_K) == 176, "Q5_K block");

struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};
_Static_assert(sizeof(struct block_q6_K) == 210, "Q6_K block");

struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};
_Static_assert(sizeof(struct block_q8_K) == 292, "Q8_K block");

/* binary16 / bfloat16 <-> float (round to nearest even). The binary16
 * conversions are single F16C instructions (part of the build baseline). */
static inline float quant_f16_to_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}
static inline uint16_t quant_f32_to_f16(float f)
{
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
float quant_bf16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);

/* Dequantize n elements (a multiple of the block size) of a row of type
 * into dst. type must be one of the 13 served types (or Q8_0/Q8_1/Q8_K). */
void quant_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);

/* The activation type used with weight type w in dot products. */
uint32_t quant_vec_dot_type(uint32_t w);

/* Bytes of n elements of type (any of the above types). */
size_t quant_row_size(uint32_t type, int64_t n);

/* Quantize a float row of n elements into act_type (Q8_0, Q8_1, Q8_K, F16,
 * BF16 or F32). n must be a multiple of act_type's block size. */
void quant_quantize_row(uint32_t act_type, const float *x, void *dst, int64_t n);

/* Scalar reference dot product of a weight row of type w with an activation
 * row already quantized to quant_vec_dot_type(w); n elements. */
float quant_vec_dot_ref(uint32_t w, int64_t n, const void *wrow, const void *act);

#endif
