/*
 * wsum.h - the per-tensor checksum of staged, computed alike on the CPU
 * (when staging into shared memory) and on the GPU (to verify the device copy
 * of the weights).
 *
 * The data is read as little-endian 32-bit words w[i] (a tail of 1-3 bytes is
 * zero-padded to a last word). With
 *   fmix(x) = x ^= x >> 16; x *= 0x85ebca6b; x ^= x >> 13; x *= 0xc2b2ae35; x ^= x >> 16
 * the checksum is the 64-bit value
 *   hi = sum over i of w[i] * (2*i + 1)             (mod 2^32)
 *   lo = sum over i of fmix(w[i] + i * 0x9e3779b9)  (mod 2^32)
 *   wsum = hi << 32 | lo
 * Both sums are order-independent, so a GPU computes them with a parallel
 * reduction. A change to any single word always changes hi (2i+1 is odd, so
 * invertible mod 2^32); lo catches most multi-word changes.
 */
#ifndef STAGED_WSUM_H
#define STAGED_WSUM_H

#include <stddef.h>
#include <stdint.h>

uint64_t wsum64(const void *data, size_t len);

/*
 * The same checksum accumulated piece by piece: both sums are sums over
 * words, so disjoint pieces add up. A piece starts at word index
 * first_word of the checksummed region; only the region's last piece may end
 * inside a word (its tail is zero-padded).
 */
struct wsum_acc {
    uint32_t hi, lo;
};
void wsum_add(struct wsum_acc *acc, const void *data, size_t len, uint64_t first_word);
static inline uint64_t wsum_value(const struct wsum_acc *acc)
{
    return (uint64_t)acc->hi << 32 | acc->lo;
}

#endif
