/*
 * The loader's device copy of the weights (see gpu_upload.h).
 *
 * Upload: one cudaMalloc for the whole data region (a CUDA IPC handle covers
 * one allocation), GPU_UPLOAD_PAD bytes longer (kernels read rows with
 * 16-byte loads). The host side is a POSIX shm mapping (pageable memory,
 * about 4.6 GB/s when handed to cudaMemcpy directly). First choice: page-lock
 * it in place with cudaHostRegister and copy it with one DMA (measured 54 GB/s
 * on the H100, registration of 400 MB 27 ms). If registering fails (or with
 * STAGED_UPLOAD=staged), UPLOAD_THREADS host threads each copy their chunks
 * into two pinned staging buffers in turn and issue cudaMemcpyAsync on their
 * own stream (measured only ~4-5 GB/s in the VM: the host memcpy is slow).
 *
 * Verify: one reduction kernel per tensor computes common/wsum.h's two sums
 * with atomicAdd on 32-bit unsigned accumulators (both sums are
 * order-independent mod 2^32, so this equals the CPU's wsum64 exactly).
 */
#include "gpu_worker/cuda/cuda_util.cuh"

extern "C" {
#include "loader/gpu_upload.h"
}

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define UPLOAD_THREADS 8
#define UPLOAD_CHUNK ((size_t)8 << 20)
#define GPU_UPLOAD_PAD 256

struct gpu_weights {
    int device;
    uint8_t *dev;
    size_t len;
};

struct up_thread {
    const uint8_t *host;
    uint8_t *dev;
    size_t len, chunk;
    int device, idx, nthreads;
    int rc;
    double t_copy0, t_copy1; /* after the staging buffers exist, after the last DMA */
    char what[160];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define UP_TRY(call)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            snprintf(t->what, sizeof(t->what), "%s: %s (%s:%d)", #call, cudaGetErrorString(e_),    \
                     __FILE__, __LINE__);                                                          \
            log_error("gpu_upload: %s", t->what);                                                 \
            t->rc = ST_EDEVICE;                                                                    \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

static void *upload_thread(void *arg)
{
    struct up_thread *t = (struct up_thread *)arg;
    cudaStream_t st = NULL;
    uint8_t *buf[2] = {NULL, NULL};
    cudaEvent_t ev[2] = {NULL, NULL};
    int j = 0;
    UP_TRY(cudaSetDevice(t->device));
    UP_TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int i = 0; i < 2; i++) {
        UP_TRY(cudaHostAlloc((void **)&buf[i], t->chunk, cudaHostAllocDefault));
        UP_TRY(cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming));
    }
    t->t_copy0 = now_s();
    for (size_t off = (size_t)t->idx * t->chunk; off < t->len;
         off += (size_t)t->nthreads * t->chunk, j++) {
        size_t n = t->len - off < t->chunk ? t->len - off : t->chunk;
        int k = j & 1;
        UP_TRY(cudaEventSynchronize(ev[k])); /* buffer k's previous DMA is done */
        memcpy(buf[k], t->host + off, n);
        UP_TRY(cudaMemcpyAsync(t->dev + off, buf[k], n, cudaMemcpyHostToDevice, st));
        UP_TRY(cudaEventRecord(ev[k], st));
    }
    UP_TRY(cudaStreamSynchronize(st));
    t->t_copy1 = now_s();
out:
    for (int i = 0; i < 2; i++) {
        if (ev[i]) cudaEventDestroy(ev[i]);
        if (buf[i]) cudaFreeHost(buf[i]);
    }
    if (st) cudaStreamDestroy(st);
    return NULL;
}

extern "C" int gpu_upload_create(const void *host, size_t len, int device,
                                 struct gpu_weights **out, struct st_errbuf *eb)
{
    *out = NULL;
    if (len == 0) return st_errf(eb, ST_EINVAL, "gpu_upload: empty data region");
    struct gpu_weights *w = (struct gpu_weights *)calloc(1, sizeof(*w));
    if (!w) return st_errf(eb, ST_ENOMEM, "gpu_upload: out of memory");
    w->device = device;
    w->len = len;
    cudaError_t e = cudaSetDevice(device);
    /* + GPU_UPLOAD_PAD: kernels read weight rows with 16-byte loads rounded up */
    if (e == cudaSuccess) e = cudaMalloc((void **)&w->dev, len + GPU_UPLOAD_PAD);
    if (e != cudaSuccess) {
        free(w);
        return st_errf(eb, e == cudaErrorMemoryAllocation ? ST_ENOMEM : ST_EDEVICE,
                       "gpu_upload: device %d, %zu bytes: %s", device, len,
                       cudaGetErrorString(e));
    }
    double t0 = now_s();
    if (!(getenv("STAGED_UPLOAD") && strcmp(getenv("STAGED_UPLOAD"), "staged") == 0)) {
        /* page-lock the source in place, then one DMA at full speed */
        e = cudaHostRegister((void *)host, len, cudaHostRegisterReadOnly);
        double t1 = now_s();
        if (e == cudaSuccess) {
            e = cudaMemcpy(w->dev, host, len, cudaMemcpyHostToDevice);
            double t2 = now_s();
            cudaHostUnregister((void *)host);
            if (e != cudaSuccess) {
                cudaFree(w->dev);
                free(w);
                return st_errf(eb, ST_EDEVICE, "gpu_upload: copy to device %d: %s", device,
                               cudaGetErrorString(e));
            }
            log_info("gpu_upload: %.1f MB to device %d in %.3f s: %.2f GB/s overall, %.2f GB/s "
                     "copy (cudaHostRegister of the source %.3f s; pinned H2D reference ~49 GB/s)",
                     len / 1e6, device, now_s() - t0, len / (now_s() - t0) / 1e9,
                     len / (t2 - t1) / 1e9, t1 - t0);
            *out = w;
            return 0;
        }
        log_warn("gpu_upload: cudaHostRegister: %s; copying through pinned buffers",
                 cudaGetErrorString(e));
        (void)cudaGetLastError();
        t0 = now_s();
    }
    int nt = UPLOAD_THREADS;
    size_t chunk = UPLOAD_CHUNK;
    if (len < chunk * nt) {
        chunk = (len + nt - 1) / nt;
        chunk = (chunk + 4095) & ~(size_t)4095;
    }
    struct up_thread th[UPLOAD_THREADS];
    pthread_t tid[UPLOAD_THREADS];
    int started = 0, rc = 0;
    for (int i = 0; i < nt; i++) {
        th[i] = up_thread{(const uint8_t *)host, w->dev, len, chunk, device, i, nt, 0, 0, 0, {0}};
        if (pthread_create(&tid[i], NULL, upload_thread, &th[i]) != 0) {
            rc = st_errf(eb, ST_ENOMEM, "gpu_upload: cannot start upload thread");
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        if (th[i].rc < 0 && rc == 0) rc = st_errf(eb, th[i].rc, "gpu_upload: %s", th[i].what);
    }
    if (rc < 0) {
        cudaFree(w->dev);
        free(w);
        return rc;
    }
    double dt = now_s() - t0, c0 = th[0].t_copy0, c1 = th[0].t_copy1;
    for (int i = 1; i < nt; i++) {
        if (th[i].t_copy0 < c0) c0 = th[i].t_copy0;
        if (th[i].t_copy1 > c1) c1 = th[i].t_copy1;
    }
    log_info("gpu_upload: %.1f MB to device %d in %.3f s: %.2f GB/s overall, %.2f GB/s copy "
             "phase (%d threads, %zu MB pinned chunks; pinned H2D reference ~49 GB/s)",
             len / 1e6, device, dt, len / dt / 1e9, len / (c1 - c0) / 1e9, nt, chunk >> 20);
    *out = w;
    return 0;
}

extern "C" void gpu_upload_ipc_handle(const struct gpu_weights *w, char *hex_out)
{
    cudaIpcMemHandle_t h;
    hex_out[0] = 0;
    cudaError_t e = cudaIpcGetMemHandle(&h, w->dev);
    if (e != cudaSuccess) {
        log_error("gpu_upload: cudaIpcGetMemHandle: %s", cudaGetErrorString(e));
        return;
    }
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)&h;
    for (size_t i = 0; i < sizeof(h); i++) {
        hex_out[2 * i] = digits[p[i] >> 4];
        hex_out[2 * i + 1] = digits[p[i] & 15];
    }
    hex_out[2 * sizeof(h)] = 0;
}

static __device__ __forceinline__ uint32_t fmix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

static __global__ void wsum_kernel(const uint8_t *p, size_t len, uint32_t *acc)
{
    size_t nw = len / 4;
    const uint32_t *w = (const uint32_t *)p;
    uint32_t hi = 0, lo = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nw;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t v = w[i], idx = (uint32_t)i;
        hi += v * (2u * idx + 1u);
        lo += fmix32(v + idx * 0x9e3779b9u);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0 && (len & 3)) {
        uint32_t v = 0;
        for (size_t k = 0; k < (len & 3); k++) v |= (uint32_t)p[nw * 4 + k] << (8 * k);
        uint32_t idx = (uint32_t)nw;
        hi += v * (2u * idx + 1u);
        lo += fmix32(v + idx * 0x9e3779b9u);
    }
    for (int o = 16; o > 0; o >>= 1) {
        hi += __shfl_xor_sync(0xffffffffu, hi, o);
        lo += __shfl_xor_sync(0xffffffffu, lo, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&acc[0], hi);
        atomicAdd(&acc[1], lo);
    }
}

static int wsum_all(struct gpu_weights *w, const struct seg_tensor *dir, uint64_t n,
                    uint64_t *out)
{
    uint32_t *d_acc = NULL;
    uint32_t *h_acc = (uint32_t *)malloc(n * 2 * sizeof(uint32_t));
    int rc = ST_EDEVICE;
    if (!h_acc) return ST_ENOMEM;
    cudaError_t e = cudaMalloc((void **)&d_acc, n * 2 * sizeof(uint32_t));
    if (e == cudaSuccess) e = cudaMemset(d_acc, 0, n * 2 * sizeof(uint32_t));
    for (uint64_t i = 0; e == cudaSuccess && i < n; i++) {
        size_t words = dir[i].size / 4 + 1;
        unsigned blocks = (unsigned)((words + 2047) / 2048);
        if (blocks > 4096) blocks = 4096;
        wsum_kernel<<<blocks, 256>>>(w->dev + dir[i].offset, dir[i].size, d_acc + 2 * i);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess)
        e = cudaMemcpy(h_acc, d_acc, n * 2 * sizeof(uint32_t), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) {
        for (uint64_t i = 0; i < n; i++) out[i] = (uint64_t)h_acc[2 * i] << 32 | h_acc[2 * i + 1];
        rc = 0;
    } else {
        log_error("gpu_upload: wsum on device: %s", cudaGetErrorString(e));
    }
    if (d_acc) cudaFree(d_acc);
    free(h_acc);
    return rc;
}

extern "C" int gpu_upload_verify_repair(struct gpu_weights *w, const struct seg *seg,
                                        uint32_t *bad, int max_bad, int *repaired)
{
    *repaired = 0;
    const struct seg_header *hdr = seg_header(seg);
    const struct seg_tensor *dir = seg_dir(seg);
    const uint8_t *host = seg_data(seg);
    uint64_t n = hdr->n_tensors;
    if (hdr->data_size > w->len) {
        log_error("gpu_upload: segment data %llu bytes > device copy %zu",
                  (unsigned long long)hdr->data_size, w->len);
        return ST_ESTATE;
    }
    for (uint64_t i = 0; i < n; i++)
        if (dir[i].offset > w->len || dir[i].size > w->len - dir[i].offset) return ST_EFORMAT;
    if (cudaSetDevice(w->device) != cudaSuccess) return ST_EDEVICE;
    uint64_t *sums = (uint64_t *)malloc((n ? n : 1) * sizeof(uint64_t));
    if (!sums) return ST_ENOMEM;
    int rc = wsum_all(w, dir, n, sums);
    int mism = 0;
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        if (sums[i] == dir[i].wsum) continue;
        log_warn("gpu_upload: tensor %s: device wsum %016llx != %016llx, re-copying", dir[i].name,
                 (unsigned long long)sums[i], (unsigned long long)dir[i].wsum);
        if (mism < max_bad) bad[mism] = (uint32_t)i;
        mism++;
        cudaError_t e = cudaMemcpy(w->dev + dir[i].offset, host + dir[i].offset, dir[i].size,
                                   cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            log_error("gpu_upload: repair copy of %s: %s", dir[i].name, cudaGetErrorString(e));
            rc = ST_EDEVICE;
        }
    }
    if (rc == 0 && mism > 0) {
        /* count what the re-copy really fixed */
        rc = wsum_all(w, dir, n, sums);
        for (uint64_t i = 0; rc == 0 && i < n; i++) {
            bool was_bad = false;
            for (int k = 0; k < mism && k < max_bad; k++) was_bad |= bad[k] == i;
            if (was_bad && sums[i] == dir[i].wsum) (*repaired)++;
        }
    }
    free(sums);
    return rc < 0 ? rc : mism;
}

extern "C" int gpu_upload_flip_byte(struct gpu_weights *w, size_t offset)
{
    if (offset >= w->len) return ST_ERANGE;
    uint8_t v;
    CUDA_TRY(cudaSetDevice(w->device));
    CUDA_TRY(cudaMemcpy(&v, w->dev + offset, 1, cudaMemcpyDeviceToHost));
    v ^= 0xff;
    CUDA_TRY(cudaMemcpy(w->dev + offset, &v, 1, cudaMemcpyHostToDevice));
    return 0;
}

extern "C" void gpu_upload_destroy(struct gpu_weights **pw)
{
    struct gpu_weights *w = *pw;
    if (!w) return;
    cudaSetDevice(w->device);
    cudaError_t e = cudaFree(w->dev);
    if (e != cudaSuccess) log_warn("gpu_upload: cudaFree: %s", cudaGetErrorString(e));
    free(w);
    *pw = NULL;
}
