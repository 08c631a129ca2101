/*
 * gpu_layout.h - the byte layout of the weights' device copy (loader and
 * worker agree on it through GPU_LAYOUT_VERSION).
 *
 * The device copy is the segment's data region with the same offsets, except
 * that tensors of the types below are "grouped": the blocks of a 2-byte
 * aligned type (Q6_K: 210 bytes, Q8_0: 34, Q5_0: 22) are rearranged within
 * groups of 8 consecutive blocks so that the quants of every block start on
 * a 16-byte boundary and the f16 scales of the group lie together:
 *
 *   Q8_0  group of 272 bytes: qs[32] of blocks 0..7, then d of blocks 0..7
 *   Q5_0  group of 176 bytes: qs[16] of 0..7, qh (4 bytes) of 0..7, d of 0..7
 *   Q6_K  group of 1,680 bytes: an A-block of 208 bytes for each of blocks
 *         0..7, then d of 0..7. A-block (unit s = 0..7 of the block: elements
 *         128h + 32j + l0 + [0, 8), j < 4, h = s / 4, l0 = 8 (s % 4), as
 *         gpu_worker/cuda/mvq.cu takes them):
 *           16s + [0, 8)        ql[64h + l0 + k]         k < 8
 *           16s + 8 + [0, 8)    ql[64h + 32 + l0 + k]
 *           128 + 8s + [0, 8)   qh[32h + l0 + k]
 *           192 + 4p + j        scales[8 (p / 2) + p % 2 + 2j]   p < 4, j < 4
 *
 * Groups keep the data region's size and every block's group, so row r of a
 * tensor still starts at r * (row bytes). A tensor is grouped when its type
 * is one of these and its block count is a multiple of 8 (real models' row
 * counts are); tensors start 16-byte aligned (cuda_check_alignment), so a
 * block's slot in its group is in its original address: for a block of B
 * bytes at original address b, (b mod 16) = (B * slot) mod 16, and
 * gpu_layout_slot() inverts that.
 *
 * Checksums (common/wsum.h) stay those of the original bytes: the loader
 * verifies a grouped tensor by reading it through gpu_layout_dst().
 */
#ifndef STAGED_GPU_LAYOUT_H
#define STAGED_GPU_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define GPU_LAYOUT_FN static __host__ __device__ inline
#else
#define GPU_LAYOUT_FN static inline
#endif

/* Bumped whenever the layout above changes: a worker refuses a loader's copy
 * of another version. */
#define GPU_LAYOUT_VERSION 1

#define GPU_LAYOUT_GROUP 8 /* blocks per group */

/* Block bytes of a groupable ggml type (Q5_0 = 6, Q8_0 = 8, Q6_K = 14), else 0. */
GPU_LAYOUT_FN unsigned gpu_layout_block_bytes(uint32_t type)
{
    return type == 6 ? 22u : type == 8 ? 34u : type == 14 ? 210u : 0u;
}

/* Whether a tensor of this type and size is grouped on the device. */
GPU_LAYOUT_FN int gpu_layout_grouped(uint32_t type, uint64_t size)
{
    unsigned bs = gpu_layout_block_bytes(type);
    return bs && size % bs == 0 && (size / bs) % GPU_LAYOUT_GROUP == 0;
}

/* The slot (0..7) of the block whose original address is b, for a grouped
 * type of bs bytes per block (b - slot * bs is 16-byte aligned). */
GPU_LAYOUT_FN unsigned gpu_layout_slot(unsigned bs, uintptr_t b)
{
    unsigned h = (unsigned)(b & 15u) >> 1; /* (bs / 2) * slot mod 8 */
    /* bs / 2 is odd (11, 17, 105): its inverse mod 8 is itself */
    return (h * ((bs >> 1) & 7u)) & 7u;
}

/* Original offset (within a group of 8 blocks) of the byte at offset x of the
 * grouped layout. */
GPU_LAYOUT_FN unsigned gpu_layout_src(uint32_t type, unsigned x)
{
    if (type == 8) { /* Q8_0 */
        if (x < 256) return 34 * (x / 32) + 2 + x % 32;
        x -= 256;
        return 34 * (x / 2) + x % 2;
    }
    if (type == 6) { /* Q5_0: d, qh[4], qs[16] */
        if (x < 128) return 22 * (x / 16) + 6 + x % 16;
        if (x < 160) return 22 * ((x - 128) / 4) + 2 + (x - 128) % 4;
        x -= 160;
        return 22 * (x / 2) + x % 2;
    }
    /* Q6_K */
    if (x >= 1664) return 210 * ((x - 1664) / 2) + 208 + (x - 1664) % 2;
    unsigned slot = x / 208, a = x % 208, o;
    if (a < 128) {
        unsigned s = a / 16, half = a % 16 / 8, k = a % 8;
        o = 64 * (s / 4) + 32 * half + 8 * (s % 4) + k;
    } else if (a < 192) {
        unsigned s = (a - 128) / 8, k = (a - 128) % 8;
        o = 128 + 32 * (s / 4) + 8 * (s % 4) + k;
    } else {
        unsigned p = (a - 192) / 4, j = (a - 192) % 4;
        o = 192 + 8 * (p / 2) + p % 2 + 2 * j;
    }
    return 210 * slot + o;
}

/* Offset in the grouped layout of the byte at original offset o (within a
 * group): the inverse of gpu_layout_src. */
GPU_LAYOUT_FN unsigned gpu_layout_dst(uint32_t type, unsigned o)
{
    if (type == 8) { /* Q8_0 */
        unsigned slot = o / 34, k = o % 34;
        return k < 2 ? 256 + 2 * slot + k : 32 * slot + k - 2;
    }
    if (type == 6) { /* Q5_0 */
        unsigned slot = o / 22, k = o % 22;
        return k < 2 ? 160 + 2 * slot + k : k < 6 ? 128 + 4 * slot + k - 2 : 16 * slot + k - 6;
    }
    /* Q6_K */
    unsigned slot = o / 210, k = o % 210, a;
    if (k >= 208) return 1664 + 2 * slot + k - 208;
    if (k < 128) { /* ql[64h + 32 half + l0 + kk] */
        unsigned h = k / 64, half = k % 64 / 32, l = k % 32;
        a = 16 * (4 * h + l / 8) + 8 * half + l % 8;
    } else if (k < 192) { /* qh[32h + l] */
        unsigned h = (k - 128) / 32, l = (k - 128) % 32;
        a = 128 + 8 * (4 * h + l / 8) + l % 8;
    } else { /* scales[8h + r]: pair p = 2h + r % 2, j = r / 2 */
        unsigned h = (k - 192) / 8, r = (k - 192) % 8;
        a = 192 + 4 * (2 * h + r % 2) + r / 2;
    }
    return 208 * slot + a;
}

/* ---- grouping a device copy (loader/gpu_layout.cu; CUDA builds only) ---- */

struct st_errbuf;

/* A tensor of the device copy: ggml type, offset from the region's start, bytes. */
struct gpu_layout_tensor {
    uint32_t type;
    uint64_t offset, size;
};

/* Group, in place, every tensor of t[0..n) that gpu_layout_grouped() selects,
 * in the device region at dev (16-byte aligned; the tensors hold their
 * original bytes). Synchronous. Returns the number of tensors grouped, or
 * ST_EDEVICE with eb naming the failed call. */
#ifdef __cplusplus
extern "C"
#endif
    int
    gpu_layout_apply(void *dev, const struct gpu_layout_tensor *t, size_t n,
                     struct st_errbuf *eb);

#endif
