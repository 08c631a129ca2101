/* bench-quantize [MELEMS]: quantization throughput of gpu_worker/quantize.c
 * per type on one thread (million elements per second), on normal(0, 1)
 * rows of 4096. Not a test: prints figures only. */
#include "common/gguf.h"
#include "gpu_worker/quantize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    const int64_t n = 4096;
    int64_t rows = (argc > 1 ? atoll(argv[1]) : 16) * 1000000 / n;
    if (rows < 1) rows = 1;
    float *x = malloc((size_t)(n * rows) * sizeof(float));
    void *q = malloc((size_t)(n * rows) * 4);
    if (!x || !q) return 1;
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < n * rows; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        double u1 = ((s >> 11) + 0.5) / 9007199254740992.0;
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        double u2 = ((s >> 11) + 0.5) / 9007199254740992.0;
        x[i] = (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
    }
    for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++) {
        if (!quantize_supported(t)) continue;
        double t0 = now();
        quantize_rows(t, x, q, rows, n, 1);
        double dt = now() - t0;
        printf("%-5s %8.1f Melem/s\n", ggml_type_name(t), (double)(n * rows) / dt / 1e6);
    }
    free(x);
    free(q);
    return 0;
}
