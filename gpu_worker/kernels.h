/*
 * kernels.h - CPU dot-product kernels for weight rows of every served type.
 *
 * A kernel computes the dot product of one weight row (n elements of type
 * w, read in place from the model) with one activation row already
 * quantized to quant_vec_dot_type(w) by quant_quantize_row. The fast
 * kernels use AVX2/FMA/F16C (the build baseline); where the CPU has
 * AVX-VNNI the 32-block kernels use vpdpbusd (chosen at run time with
 * __builtin_cpu_supports; the environment variable STAGED_CPU_ISA=avx2
 * forces the AVX2 kernels). Both give bit-identical results.
 * kernels_dot(w, true) returns the scalar reference (quant_vec_dot_ref)
 * so tests can compare the two.
 *
 * kernels_dot4: the same dot of one weight row with 4 activation rows
 * (stride act_stride bytes apart), writing out[0..3]; used by batched
 * prompt processing so the weight row is decoded once per 4 tokens.
 */
#ifndef STAGED_KERNELS_H
#define STAGED_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef float (*kernels_dot_fn)(int64_t n, const void *w, const void *act);
typedef void (*kernels_dot4_fn)(int64_t n, const void *w, const void *act, size_t act_stride,
                                float *out);

/* kernels_dot2: one activation row with two weight rows (w and w + wstride
 * bytes), writing out[0..1], each bit-identical to kernels_dot; the two
 * accumulations overlap. Pass rows far apart (e.g. the two halves of a
 * block of rows): adjacent rows interleave two streams so closely that the
 * hardware prefetchers lose them (measured 4x slower), while rows half a
 * matrix apart run ~20% faster than one row at a time. */
typedef void (*kernels_dot2_fn)(int64_t n, const void *w, size_t wstride, const void *act,
                                float *out);

/* The kernel for weight type w; reference = the scalar path. Never NULL for
 * a served type. */
kernels_dot_fn kernels_dot(uint32_t w, bool reference);
/* A 2-weight-row kernel for w, or NULL when w has none. */
kernels_dot2_fn kernels_dot2(uint32_t w);
/* A 4-row kernel for w, or NULL when w has none (callers loop kernels_dot). */
kernels_dot4_fn kernels_dot4(uint32_t w);

/* quant_quantize_row with AVX2 for Q8_0 / Q8_1 / Q8_K (same results;
 * reference = the scalar code). */
void kernels_quantize_row(uint32_t act_type, const float *x, void *dst, int64_t n, bool reference);

/* binary16 dot product in the order of the F16 weight kernel (attention
 * scores use it). */
float kernels_dot_f16(int64_t n, const uint16_t *x, const uint16_t *y);

/* Name of the instruction set the fast kernels use ("avx2", "avx512vnni"). */
const char *kernels_isa(void);

#endif
