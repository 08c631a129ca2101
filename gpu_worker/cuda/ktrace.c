/*
 * ktrace.c - a CUPTI injection library for scripts/gpu-timeline: the start
 * and end (ns, GPU clock) of every kernel and copy a process runs, one line
 * each, to $KTRACE_OUT (default /tmp/ktrace.txt):
 *
 *   K start end grid_blocks mangled_kernel_name
 *   M start end bytes memcpyKIND
 *
 * Unlike ncu, which runs kernels one by one, this sees them as they overlap
 * under programmatic dependent launch, so the time from one kernel's end to
 * the next one's is what each adds to a decode step. Loaded by the CUDA
 * driver through CUDA_INJECTION64_PATH (no change to the traced program);
 * CUPTI's timestamps add a few microseconds per kernel, so compare traces
 * with each other, not with untraced tok/s.
 */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *g_out;

static void CUPTIAPI buf_request(uint8_t **buf, size_t *size, size_t *max_records)
{
    *size = 8u << 20;
    *buf = aligned_alloc(8, *size);
    *max_records = 0;
}

static void CUPTIAPI buf_complete(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size,
                                  size_t valid)
{
    CUpti_Activity *r = NULL;
    (void)ctx;
    (void)stream;
    (void)size;
    while (g_out && cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
        if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)r;
            fprintf(g_out, "K %llu %llu %u %s\n", (unsigned long long)k->start,
                    (unsigned long long)k->end, k->gridX * k->gridY * k->gridZ, k->name);
        } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)r;
            fprintf(g_out, "M %llu %llu %llu memcpy%d\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, (unsigned long long)m->bytes, (int)m->copyKind);
        }
    }
    free(buf);
}

static void flush_at_exit(void)
{
    cuptiActivityFlushAll(1);
    if (g_out) fclose(g_out);
    g_out = NULL;
}

/* Called by the CUDA driver when it loads this library. */
int InitializeInjection(void)
{
    const char *path = getenv("KTRACE_OUT");
    g_out = fopen(path ? path : "/tmp/ktrace.txt", "w");
    if (!g_out) {
        perror("ktrace: KTRACE_OUT");
        return 0;
    }
    if (cuptiActivityRegisterCallbacks(buf_request, buf_complete) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS) {
        fprintf(stderr, "ktrace: CUPTI activity tracing unavailable\n");
        return 0;
    }
    atexit(flush_at_exit);
    return 1;
}
