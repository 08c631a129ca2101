/* Grouping the device copy's tensors in place (gpu_layout.h). */
extern "C" {
#include "common/err.h"
}
#include "loader/gpu_layout.h"

#include <cuda_runtime.h>

#define LAYOUT_WARPS 4
#define LAYOUT_MAX_WORDS (1680 / 4) /* the largest group: Q6_K */

/* One warp per group of 8 blocks: the group's words into shared memory, then
 * each grouped word gathered from its 4 original bytes. Groups are disjoint,
 * so the rewrite is in place. */
static __global__ void group_kernel(uint8_t *t, uint32_t type, unsigned gbytes, size_t ngroups)
{
    __shared__ uint32_t buf[LAYOUT_WARPS][LAYOUT_MAX_WORDS];
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = gbytes / 4;
    size_t g = (size_t)blockIdx.x * LAYOUT_WARPS + warp;
    if (g >= ngroups) return;
    uint32_t *gw = (uint32_t *)(t + g * gbytes), *b = buf[warp];
    for (unsigned i = lane; i < nw; i += 32)
        b[i] = gw[i];
    __syncwarp();
    for (unsigned i = lane; i < nw; i += 32) {
        uint32_t v = 0;
        for (unsigned k = 0; k < 4; k++) {
            unsigned o = gpu_layout_src(type, 4 * i + k);
            v |= (b[o / 4] >> 8 * (o % 4) & 255u) << 8 * k;
        }
        gw[i] = v;
    }
}

extern "C" int gpu_layout_apply(void *dev, const struct gpu_layout_tensor *t, size_t n,
                                struct st_errbuf *eb)
{
    int grouped = 0;
    for (size_t i = 0; i < n; i++) {
        if (!gpu_layout_grouped(t[i].type, t[i].size)) continue;
        unsigned gbytes = GPU_LAYOUT_GROUP * gpu_layout_block_bytes(t[i].type);
        size_t ngroups = t[i].size / gbytes;
        unsigned blocks = (unsigned)((ngroups + LAYOUT_WARPS - 1) / LAYOUT_WARPS);
        group_kernel<<<blocks, LAYOUT_WARPS * 32>>>((uint8_t *)dev + t[i].offset, t[i].type,
                                                    gbytes, ngroups);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return st_errf(eb, ST_EDEVICE, "gpu_layout: grouping tensor %zu: %s", i,
                           cudaGetErrorString(e));
        grouped++;
    }
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
        return st_errf(eb, ST_EDEVICE, "gpu_layout: grouping: %s", cudaGetErrorString(e));
    return grouped;
}
