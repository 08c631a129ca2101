/*
 * bench-ceilings - the two limits decode at batch 1 runs into, measured on
 * this GPU in the same run as scripts/gpu-bench's figures:
 *
 *  - read bandwidth: a kernel that only reads (16-byte loads, four in flight
 *    per thread, a grid-stride loop) over 76 MB (one 7B gate + up) and 400 MB
 *    (a 0.5B model), rotating over 1 GiB so that nothing is served from L2.
 *    A decode step reads every weight once, so weight bytes / this is the
 *    floor of a step.
 *  - kernel boundary: a CUDA graph of 216 kernels (24 layers x 9), each
 *    reading what the one before wrote, with and without programmatic
 *    dependent launch, for grids of 132 and 1,216 blocks: the time one
 *    kernel of the decode step costs however little it does.
 *
 * Prints a table, then one JSON line {"ceilings": {...}} for gpu-bench.json.
 * Exit status: 0, 1 on a CUDA error (printed), 77 without a GPU.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "bench-ceilings: %s: %s\n", #call, cudaGetErrorString(e_));            \
            return -1.f;                                                                           \
        }                                                                                          \
    } while (0)

/* Reads n16 16-byte words; writes only if their xor is a value it never is. */
static __global__ void read_kernel(const uint4 *w, size_t n16, unsigned *sink)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, nt = (size_t)gridDim.x * blockDim.x;
    uint32_t acc = 0;
    for (; i < n16; i += 4 * nt) {
        uint4 v[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            v[k] = i + k * nt < n16 ? __ldg(w + i + k * nt) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int k = 0; k < 4; k++)
            acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;
}

/* One link of the chain: waits for its predecessor (programmatic launch),
 * then each thread reads one value the predecessor wrote and writes one. */
static __global__ void link_kernel(const float *in, float *out, int n)
{
    asm volatile("griddepcontrol.launch_dependents;" :::);
    asm volatile("griddepcontrol.wait;" ::: "memory");
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float x = in[(threadIdx.x * 7 + blockIdx.x) % n];
    if (i < n) out[i] = x * 0.5f + 1.f;
}

/* Best of 10 timings (after a warm-up) of the work f queues on stream s
 * (the events go on s too: a non-blocking stream does not wait for the
 * legacy default stream's events). */
template <typename F> static float best_ms(cudaStream_t s, F f)
{
    cudaEvent_t a, b;
    if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) return -1.f;
    float best = 1e30f;
    for (int r = 0; r < 11; r++) {
        CK(cudaEventRecord(a, s));
        if (!f()) return -1.f;
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (r > 0 && ms < best) best = ms;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return best;
}

/* TB/s reading `bytes`, a different part of the buffer each time. */
static float read_tbs(uint8_t *buf, size_t buf_bytes, size_t bytes, int sms, unsigned *sink)
{
    size_t slots = buf_bytes / bytes, next = 0;
    float ms = best_ms(0, [&] {
        const uint4 *w = (const uint4 *)(buf + (next++ % slots) * bytes);
        read_kernel<<<sms * 8, 256>>>(w, bytes / 16, sink);
        return cudaGetLastError() == cudaSuccess;
    });
    return ms > 0 ? (float)(bytes / (ms * 1e-3) / 1e12) : -1.f;
}

/* us per kernel of a 216-kernel graph of `blocks` x 128 threads. */
static float boundary_us(int blocks, bool pdl)
{
    const int len = 216, n = blocks * 128;
    float *a = NULL, *b = NULL;
    CK(cudaMalloc(&a, n * sizeof(float)));
    CK(cudaMalloc(&b, n * sizeof(float)));
    CK(cudaMemset(a, 0, n * sizeof(float)));
    CK(cudaMemset(b, 0, n * sizeof(float)));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < len; i++) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = blocks;
        cfg.blockDim = 128;
        cfg.stream = st;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = pdl;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        CK(cudaLaunchKernelEx(&cfg, link_kernel, (const float *)(i & 1 ? b : a), i & 1 ? a : b, n));
    }
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    float ms = best_ms(st, [&] { return cudaGraphLaunch(ge, st) == cudaSuccess; });
    CK(cudaStreamSynchronize(st));
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
    cudaFree(a);
    cudaFree(b);
    return ms > 0 ? ms * 1000.f / len : -1.f;
}

int main(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        fprintf(stderr, "bench-ceilings: no CUDA device\n");
        return 77;
    }
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const size_t buf_bytes = (size_t)1 << 30;
    uint8_t *buf = NULL;
    unsigned *sink = NULL;
    if (cudaMalloc(&buf, buf_bytes) != cudaSuccess || cudaMalloc(&sink, 4) != cudaSuccess ||
        cudaMemset(buf, 0x5a, buf_bytes) != cudaSuccess) {
        fprintf(stderr, "bench-ceilings: cannot allocate 1 GiB on the device\n");
        return 1;
    }
    float r76 = read_tbs(buf, buf_bytes, (size_t)76 << 20, sms, sink);
    float r400 = read_tbs(buf, buf_bytes, (size_t)400 << 20, sms, sink);
    float p132 = boundary_us(132, true), p1216 = boundary_us(1216, true);
    float s132 = boundary_us(132, false);
    cudaFree(buf);
    cudaFree(sink);
    if (r76 < 0 || r400 < 0 || p132 < 0 || p1216 < 0 || s132 < 0) return 1;
    printf("%-44s %8s\n", "ceiling", "value");
    printf("%-44s %8.2f\n", "read TB/s, 76 MB", r76);
    printf("%-44s %8.2f\n", "read TB/s, 400 MB", r400);
    printf("%-44s %8.2f\n", "kernel boundary us, 132 blocks, programmatic", p132);
    printf("%-44s %8.2f\n", "kernel boundary us, 1216 blocks, programmatic", p1216);
    printf("%-44s %8.2f\n", "kernel boundary us, 132 blocks, plain", s132);
    printf("{\"ceilings\":{\"read_tbs_76mb\":%.3f,\"read_tbs_400mb\":%.3f,\"boundary_us_132\":%.3f,"
           "\"boundary_us_1216\":%.3f,\"boundary_plain_us_132\":%.3f}}\n",
           r76, r400, p132, p1216, s132);
    return 0;
}
