#include "wsum.h"

#include <string.h>

static inline uint32_t fmix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

/* Plain loop; gcc vectorizes it with AVX2 (vpmulld) at -O2 -mavx2. */
__attribute__((optimize("O3"))) void wsum_add(struct wsum_acc *acc, const void *data, size_t len,
                                              uint64_t first_word)
{
    const uint8_t *p = data;
    size_t n = len / 4;
    uint32_t hi = 0, lo = 0, base = (uint32_t)first_word;
    for (size_t i = 0; i < n; i++) {
        uint32_t w;
        memcpy(&w, p + 4 * i, 4);
        uint32_t idx = base + (uint32_t)i;
        hi += w * (2u * idx + 1u);
        lo += fmix32(w + idx * 0x9e3779b9u);
    }
    if (len % 4) {
        uint32_t w = 0;
        memcpy(&w, p + 4 * n, len % 4);
        uint32_t idx = base + (uint32_t)n;
        hi += w * (2u * idx + 1u);
        lo += fmix32(w + idx * 0x9e3779b9u);
    }
    acc->hi += hi;
    acc->lo += lo;
}

uint64_t wsum64(const void *data, size_t len)
{
    struct wsum_acc acc = {0, 0};
    wsum_add(&acc, data, len, 0);
    return wsum_value(&acc);
}
