/*
 * The loader's device copy of the weights (see gpu_upload.h).
 *
 * Upload: one cudaMalloc for the whole data region (a CUDA IPC handle covers
 * one allocation), GPU_UPLOAD_PAD bytes longer (kernels read rows with
 * 16-byte loads). The host side is pageable memory (the segment's POSIX shm
 * mapping); cudaMemcpy straight from it runs at about 4.6 GB/s, so the bytes
 * go through pinned memory in one of two ways (STAGED_UPLOAD selects):
 *
 * staged (the default): a ring of pinned staging slots (2 slots per thread
 * of RING_PIECE_MIB MiB: 32 MiB for 8 threads), made by allocating ordinary
 * memory and page-locking it with cudaHostRegister: measured on the H200,
 * cudaHostAlloc of 32 MiB took 17.5 ms (a third of a 0.4 GB upload),
 * registering runs at ~23 GB/s (1.4 ms). The ring with its stream and events
 * is made once per process, by gpu_upload_init next to the CUDA context, and
 * kept until gpu_upload_shutdown (made per upload, its 12-16 ms of set-up
 * held a 0.4 GB upload to 12-15 GB/s against a 28-38 GB/s copy phase); an
 * upload resets only its own state (next piece, queued counts, error). After
 * a failed upload the ring is freed and the next upload makes a new one.
 * Copy threads take the pieces of the source in order; piece k goes through
 * slot k % nslots. A thread waits until the slot's previous piece has been queued
 * and its DMA has finished (one cudaEvent per slot, recorded after each DMA
 * out of the slot), memcpys the piece into the slot, queues cudaMemcpyAsync
 * on the one shared stream and records the slot's event. The memcpys of
 * several threads and the DMA overlap, so the upload runs at
 * min(parallel memcpy, pinned H2D ~55 GB/s on the H200). Small pieces keep
 * the ring inside the last-level cache (the memcpy writes it, the DMA reads
 * it) and make the pipeline's fill and drain short. STAGED_UPLOAD_THREADS
 * (1..RING_MAX_THREADS; default min(RING_DEFAULT_THREADS, online CPUs)) and
 * STAGED_UPLOAD_PIECE_MIB (1..64), read at init, override the two sizes.
 *
 * register (STAGED_UPLOAD=register): page-lock the source in place with
 * cudaHostRegister and copy it with one DMA. The copy runs at 55 GB/s on the
 * H200 but registration at ~23 GB/s (it serializes in the driver, threads do
 * not help): 12-16 GB/s overall. Falls back to staged if registering fails.
 *
 * Either way one log line names the method and its GB/s.
 *
 * Verify: one reduction kernel per tensor computes common/wsum.h's two sums
 * with atomicAdd on 32-bit unsigned accumulators (both sums are
 * order-independent mod 2^32, so this equals the CPU's wsum64 exactly).
 */
#include "gpu_worker/cuda/cuda_util.cuh"

extern "C" {
#include "loader/gpu_upload.h"
#include "loader/gpu_layout.h"
}

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define GPU_UPLOAD_PAD 256
#define RING_PIECE_MIB 2 /* bytes per piece and per staging slot, default */
#define RING_MAX_PIECE_MIB 64
#define RING_DEFAULT_THREADS 8 /* copy threads, default (capped by online CPUs) */
#define RING_MAX_THREADS 16
#define RING_SLOTS_PER_THREAD 2 /* one being filled, one queued for or in its DMA */
#define RING_MAX_SLOTS (RING_MAX_THREADS * RING_SLOTS_PER_THREAD)

struct gpu_weights {
    int device;
    uint8_t *dev; /* len + GPU_UPLOAD_PAD bytes, one cudaMalloc */
    size_t len;
    bool grouped; /* gpu_upload_group ran: tensors in the layout of gpu_layout.h */
};

/* The process's staging ring (made by gpu_upload_init, kept until
 * gpu_upload_shutdown) and the state of the one staged upload using it. */
struct ring {
    /* made once, sizes independent of any upload */
    int device;                       /* the stream and events belong to it */
    int nthreads;                     /* copy threads */
    int nslots;                       /* nthreads * RING_SLOTS_PER_THREAD <= RING_MAX_SLOTS */
    size_t piece;                     /* bytes per piece and per slot */
    uint8_t *pinned;                  /* nslots * piece bytes, page-locked */
    bool locked;                      /* pinned is registered with CUDA */
    cudaStream_t stream;              /* every DMA of an upload */
    cudaEvent_t done[RING_MAX_SLOTS]; /* recorded after each DMA out of the slot */
    pthread_mutex_t mu;               /* guards next, queued, rc and what */
    pthread_cond_t cv;                /* broadcast when queued[] grows or rc is set */
    /* one upload's state, set by ring_start */
    const uint8_t *host; /* pageable source, len bytes */
    uint8_t *dev;        /* destination, same offsets */
    size_t len;
    size_t npieces;                /* ceil(len / piece) */
    int nrun;                      /* copy threads started: min(nthreads, npieces) */
    size_t next;                   /* next piece to take */
    size_t queued[RING_MAX_SLOTS]; /* pieces of each slot whose DMA and event are queued */
    int rc;                        /* first error (0: none); stops every thread */
    char what[256];                /* its message, naming the call */
};

/* One gpu_upload_init, gpu_upload_create or gpu_upload_shutdown at a time:
 * the ring serves one upload at a time. (The loader is single-threaded here
 * anyway: it uploads once, in loader_ctl_new, before serving requests.) */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ring *g_ring; /* NULL until gpu_upload_init, and after a failed upload */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Integer environment variable in [lo, hi]; def when unset or invalid. */
static int env_int(const char *name, int lo, int hi, int def)
{
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        log_warn("gpu_upload: %s=%s is not an integer in %d..%d; using %d", name, s, lo, hi, def);
        return def;
    }
    return (int)v;
}

/* Record the first failure and wake every waiting thread. Returns rc. */
static int ring_fail(struct ring *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int ring_fail(struct ring *r, int rc, const char *fmt, ...)
{
    char msg[sizeof(r->what)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_error("gpu_upload: %s", msg);
    pthread_mutex_lock(&r->mu);
    if (r->rc == 0) {
        r->rc = rc;
        memcpy(r->what, msg, sizeof(msg));
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

#define RING_TRY(r, call)                                                                          \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return ring_fail((r), e_ == cudaErrorMemoryAllocation ? ST_ENOMEM : ST_EDEVICE,        \
                             "%s: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

/* Piece k through slot (use-th time the slot is used in this upload): wait
 * for the slot's last DMA, fill it, queue its DMA and record the slot's
 * event. (At use 0 the slot is idle: the previous upload ended with a
 * synchronized stream.) */
static int ring_piece(struct ring *r, size_t k, int slot, size_t use)
{
    size_t off = k * r->piece;
    size_t n = r->len - off < r->piece ? r->len - off : r->piece;
    uint8_t *buf = r->pinned + (size_t)slot * r->piece;
    if (use > 0) RING_TRY(r, cudaEventSynchronize(r->done[slot]));
    memcpy(buf, r->host + off, n);
    RING_TRY(r, cudaMemcpyAsync(r->dev + off, buf, n, cudaMemcpyHostToDevice, r->stream));
    RING_TRY(r, cudaEventRecord(r->done[slot], r->stream));
    return 0;
}

/* Copy thread: take the next piece; wait until its slot's previous piece is
 * queued (that piece was taken earlier, so the wait ends); send it. */
static void *ring_thread(void *arg)
{
    struct ring *r = (struct ring *)arg;
    cudaError_t e = cudaSetDevice(r->device);
    if (e != cudaSuccess) {
        ring_fail(r, ST_EDEVICE, "cudaSetDevice(%d) in a copy thread: %s", r->device,
                  cudaGetErrorString(e));
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&r->mu);
        if (r->rc != 0 || r->next >= r->npieces) {
            pthread_mutex_unlock(&r->mu);
            return NULL;
        }
        size_t k = r->next++;
        int slot = (int)(k % (size_t)r->nslots);
        size_t use = k / (size_t)r->nslots;
        while (r->rc == 0 && r->queued[slot] < use)
            pthread_cond_wait(&r->cv, &r->mu);
        bool stop = r->rc != 0;
        pthread_mutex_unlock(&r->mu);
        if (stop || ring_piece(r, k, slot, use) < 0) return NULL;
        pthread_mutex_lock(&r->mu);
        r->queued[slot]++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
}

/* The ring's stream, pinned slots and events, on the current device (r->device).
 * 0 or a negative st_err (r->what set). */
static int ring_setup(struct ring *r)
{
    RING_TRY(r, cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
    size_t bytes = (size_t)r->nslots * r->piece;
    r->pinned = (uint8_t *)aligned_alloc(4096, bytes);
    if (!r->pinned) return ring_fail(r, ST_ENOMEM, "staging ring of %zu bytes: out of memory", bytes);
    RING_TRY(r, cudaHostRegister(r->pinned, bytes, cudaHostRegisterDefault));
    r->locked = true;
    for (int i = 0; i < r->nslots; i++)
        /* blocking sync: a waiting thread sleeps instead of spinning on a core
         * the other threads' memcpy needs */
        RING_TRY(r, cudaEventCreateWithFlags(&r->done[i],
                                             cudaEventDisableTiming | cudaEventBlockingSync));
    return 0;
}

/* Free what ring_setup made (any part of it); a failing call is logged and
 * recorded. */
static void ring_teardown(struct ring *r)
{
    cudaError_t e;
    for (int i = 0; i < r->nslots; i++) {
        if (r->done[i] && (e = cudaEventDestroy(r->done[i])) != cudaSuccess)
            ring_fail(r, ST_EDEVICE, "cudaEventDestroy: %s", cudaGetErrorString(e));
        r->done[i] = NULL;
    }
    if (r->locked && (e = cudaHostUnregister(r->pinned)) != cudaSuccess)
        ring_fail(r, ST_EDEVICE, "cudaHostUnregister of the staging ring: %s",
                  cudaGetErrorString(e));
    r->locked = false;
    free(r->pinned);
    r->pinned = NULL;
    if (r->stream && (e = cudaStreamDestroy(r->stream)) != cudaSuccess)
        ring_fail(r, ST_EDEVICE, "cudaStreamDestroy: %s", cudaGetErrorString(e));
    r->stream = NULL;
}

/* Free the ring and everything in it (its device is made current first). */
static void ring_free(struct ring *r)
{
    if (!r) return;
    cudaSetDevice(r->device);
    ring_teardown(r);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Make the ring for `device` (the current device) at its full size:
 * STAGED_UPLOAD_THREADS copy threads, RING_SLOTS_PER_THREAD slots of
 * STAGED_UPLOAD_PIECE_MIB MiB each. 0 or a negative st_err with eb set. */
static int ring_new(int device, struct ring **out, struct st_errbuf *eb)
{
    *out = NULL;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int def_threads = ncpu > 0 && ncpu < RING_DEFAULT_THREADS ? (int)ncpu : RING_DEFAULT_THREADS;
    struct ring *r = (struct ring *)calloc(1, sizeof(*r));
    if (!r) return st_errf(eb, ST_ENOMEM, "gpu_upload: out of memory");
    r->device = device;
    r->nthreads = env_int("STAGED_UPLOAD_THREADS", 1, RING_MAX_THREADS, def_threads);
    r->nslots = r->nthreads * RING_SLOTS_PER_THREAD;
    r->piece = (size_t)env_int("STAGED_UPLOAD_PIECE_MIB", 1, RING_MAX_PIECE_MIB, RING_PIECE_MIB)
               << 20;
    int err = pthread_mutex_init(&r->mu, NULL);
    if (err != 0) {
        free(r);
        return st_errf(eb, ST_ENOMEM, "gpu_upload: pthread_mutex_init: %s", strerror(err));
    }
    if ((err = pthread_cond_init(&r->cv, NULL)) != 0) {
        pthread_mutex_destroy(&r->mu);
        free(r);
        return st_errf(eb, ST_ENOMEM, "gpu_upload: pthread_cond_init: %s", strerror(err));
    }
    int rc = ring_setup(r);
    if (rc < 0) {
        st_errf(eb, rc, "gpu_upload: staging ring on device %d: %s", device, r->what);
        ring_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* gpu_upload_init with g_lock held. */
static int init_locked(int device, struct st_errbuf *eb)
{
    if (g_ring && g_ring->device == device) return 0;
    if (g_ring) {
        log_info("gpu_upload: staging ring moves from device %d to device %d", g_ring->device,
                 device);
        ring_free(g_ring);
        g_ring = NULL;
    }
    double t0 = now_s();
    const char *call = "cudaSetDevice";
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) {
        call = "cudaFree(0), creating the context,"; /* if cudaSetDevice did not */
        e = cudaFree(0);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return st_errf(eb, ST_EDEVICE, "gpu_upload: %s on device %d: %s", call, device,
                       cudaGetErrorString(e));
    }
    double t1 = now_s();
    int rc = ring_new(device, &g_ring, eb);
    if (rc < 0) return rc;
    double t2 = now_s();
    log_info("gpu_upload: init: device %d in %.1f ms: CUDA context %.1f ms, staging ring "
             "%.1f ms (%d copy threads, %d x %.2f MiB pinned, a stream, %d events); every "
             "upload of this process reuses them",
             device, (t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3, g_ring->nthreads,
             g_ring->nslots, g_ring->piece / 1048576.0, g_ring->nslots);
    return 0;
}

extern "C" int gpu_upload_init(int device, struct st_errbuf *eb)
{
    pthread_mutex_lock(&g_lock);
    int rc = init_locked(device, eb);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

extern "C" void gpu_upload_shutdown(void)
{
    pthread_mutex_lock(&g_lock);
    ring_free(g_ring);
    g_ring = NULL;
    pthread_mutex_unlock(&g_lock);
}

/* Reset the upload state of r for len bytes at host to dev. */
static void ring_start(struct ring *r, const uint8_t *host, uint8_t *dev, size_t len)
{
    r->host = host;
    r->dev = dev;
    r->len = len;
    r->npieces = (len + r->piece - 1) / r->piece;
    r->nrun = (size_t)r->nthreads < r->npieces ? r->nthreads : (int)r->npieces;
    r->next = 0;
    memset(r->queued, 0, sizeof(r->queued));
    r->rc = 0;
    r->what[0] = 0;
}

/* Start the copy threads, join every one that started, wait for the last
 * DMA. 0 or a negative st_err (r->what set). */
static int ring_run(struct ring *r)
{
    pthread_t tid[RING_MAX_THREADS];
    int started = 0;
    for (; started < r->nrun; started++) {
        int err = pthread_create(&tid[started], NULL, ring_thread, r);
        if (err != 0) {
            ring_fail(r, ST_ENOMEM, "pthread_create of copy thread %d: %s", started, strerror(err));
            break;
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    /* after a failure too: no DMA out of the slots may outlive the upload */
    cudaError_t e = cudaStreamSynchronize(r->stream);
    if (e != cudaSuccess)
        ring_fail(r, ST_EDEVICE, "cudaStreamSynchronize of the upload stream: %s",
                  cudaGetErrorString(e));
    return r->rc;
}

/* Staged method: len bytes at host to w->dev through the process's ring
 * (g_lock held, g_ring made for w->device). t_start: when the upload began
 * (gpu_upload_create, after init), for the overall rate. */
static int upload_staged(const uint8_t *host, size_t len, struct gpu_weights *w, double t_start,
                         struct st_errbuf *eb)
{
    struct ring *r = g_ring;
    ring_start(r, host, w->dev, len);
    double t1 = now_s();
    int rc = ring_run(r);
    double t2 = now_s();
    if (rc < 0) {
        st_errf(eb, rc, "gpu_upload: staged upload of %zu bytes to device %d: %s", len, w->device,
                r->what);
        /* its stream or events may be broken: the next upload makes a new ring */
        ring_free(r);
        g_ring = NULL;
        return rc;
    }
    log_info("gpu_upload: method=staged: %.1f MB to device %d in %.3f s: %.2f GB/s overall, "
             "%.2f GB/s copy phase (%d threads, %d x %.2f MiB pinned ring set up at init; "
             "pinned H2D reference ~55 GB/s)",
             len / 1e6, w->device, t2 - t_start, len / (t2 - t_start) / 1e9, len / (t2 - t1) / 1e9,
             r->nrun, r->nslots, r->piece / 1048576.0);
    return 0;
}

/* Register method: page-lock the source in place, one DMA, unlock.
 * 1 when registering failed (the caller falls back to staged). */
static int upload_register(const uint8_t *host, size_t len, struct gpu_weights *w,
                           struct st_errbuf *eb)
{
    double t0 = now_s();
    cudaError_t e = cudaHostRegister((void *)host, len, cudaHostRegisterReadOnly);
    if (e != cudaSuccess) {
        log_warn("gpu_upload: cudaHostRegister: %s; copying through the pinned ring instead",
                 cudaGetErrorString(e));
        (void)cudaGetLastError();
        return 1;
    }
    double t1 = now_s();
    e = cudaMemcpy(w->dev, host, len, cudaMemcpyHostToDevice);
    double t2 = now_s();
    cudaError_t eu = cudaHostUnregister((void *)host);
    double t3 = now_s();
    if (e != cudaSuccess)
        return st_errf(eb, ST_EDEVICE, "gpu_upload: cudaMemcpy of %zu bytes to device %d: %s", len,
                       w->device, cudaGetErrorString(e));
    if (eu != cudaSuccess)
        return st_errf(eb, ST_EDEVICE, "gpu_upload: cudaHostUnregister: %s",
                       cudaGetErrorString(eu));
    log_info("gpu_upload: method=register: %.1f MB to device %d in %.3f s: %.2f GB/s overall, "
             "%.2f GB/s copy (cudaHostRegister of the source %.3f s; pinned H2D reference "
             "~55 GB/s)",
             len / 1e6, w->device, t3 - t0, len / (t3 - t0) / 1e9, len / (t2 - t1) / 1e9, t1 - t0);
    return 0;
}

/* The upload into w (device and len set), with g_lock held: the ring first
 * when nobody called gpu_upload_init (or it was for another device), then
 * the device allocation and the copy. On failure nothing stays allocated. */
static int create_locked(const uint8_t *host, size_t len, bool use_register, struct gpu_weights *w,
                         struct st_errbuf *eb)
{
    int rc = init_locked(w->device, eb);
    if (rc < 0) return rc;
    double t0 = now_s();
    /* this thread's device: init may have run in another thread */
    cudaError_t e = cudaSetDevice(w->device);
    if (e != cudaSuccess)
        return st_errf(eb, ST_EDEVICE, "gpu_upload: cudaSetDevice(%d): %s", w->device,
                       cudaGetErrorString(e));
    /* + GPU_UPLOAD_PAD: kernels read weight rows with 16-byte loads rounded up */
    e = cudaMalloc((void **)&w->dev, len + GPU_UPLOAD_PAD);
    if (e != cudaSuccess)
        return st_errf(eb, e == cudaErrorMemoryAllocation ? ST_ENOMEM : ST_EDEVICE,
                       "gpu_upload: cudaMalloc of %zu bytes on device %d: %s", len + GPU_UPLOAD_PAD,
                       w->device, cudaGetErrorString(e));
    rc = use_register ? upload_register(host, len, w, eb) : 1;
    if (rc == 1) rc = upload_staged(host, len, w, t0, eb);
    if (rc < 0) {
        e = cudaFree(w->dev);
        if (e != cudaSuccess) log_warn("gpu_upload: cudaFree: %s", cudaGetErrorString(e));
        w->dev = NULL;
    }
    return rc;
}

extern "C" int gpu_upload_create(const void *host, size_t len, int device, struct gpu_weights **out,
                                 struct st_errbuf *eb)
{
    *out = NULL;
    if (len == 0) return st_errf(eb, ST_EINVAL, "gpu_upload: empty data region");
    const char *method = getenv("STAGED_UPLOAD");
    bool use_register = method && strcmp(method, "register") == 0;
    if (method && *method && !use_register && strcmp(method, "staged") != 0)
        log_warn("gpu_upload: STAGED_UPLOAD=%s is neither staged nor register; using staged",
                 method);
    struct gpu_weights *w = (struct gpu_weights *)calloc(1, sizeof(*w));
    if (!w) return st_errf(eb, ST_ENOMEM, "gpu_upload: out of memory");
    w->device = device;
    w->len = len;
    pthread_mutex_lock(&g_lock);
    int rc = create_locked((const uint8_t *)host, len, use_register, w, eb);
    pthread_mutex_unlock(&g_lock);
    if (rc < 0) {
        free(w);
        return rc;
    }
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

/* Word i (bytes 4i..4i+3) of the original bytes of a grouped tensor at p
 * (gpu_layout.h; gbytes, the group's size, is a multiple of 4, so the word's
 * bytes lie in one group). */
static __device__ __forceinline__ uint32_t orig_word(const uint8_t *p, uint32_t type,
                                                     unsigned gbytes, size_t i)
{
    const size_t o = 4 * i, g0 = o / gbytes * gbytes;
    const unsigned in = (unsigned)(o - g0);
    uint32_t v = 0;
    for (unsigned k = 0; k < 4; k++)
        v |= (uint32_t)p[g0 + gpu_layout_dst(type, in + k)] << 8 * k;
    return v;
}

static __global__ void wsum_kernel(const uint8_t *p, size_t len, uint32_t type, unsigned gbytes,
                                   uint32_t *acc)
{
    size_t nw = len / 4;
    const uint32_t *w = (const uint32_t *)p;
    uint32_t hi = 0, lo = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nw;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t v = gbytes ? orig_word(p, type, gbytes, i) : w[i], idx = (uint32_t)i;
        hi += v * (2u * idx + 1u);
        lo += fmix32(v + idx * 0x9e3779b9u);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0 && (len & 3)) { /* never grouped: 16-byte groups */
        uint32_t v = 0;
        for (size_t k = 0; k < (len & 3); k++)
            v |= (uint32_t)p[nw * 4 + k] << (8 * k);
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

/* The group size of tensor t in w's copy (0: not grouped). */
static unsigned group_bytes(const struct gpu_weights *w, const struct seg_tensor *t)
{
    return w->grouped && gpu_layout_grouped(t->type, t->size)
               ? GPU_LAYOUT_GROUP * gpu_layout_block_bytes(t->type)
               : 0u;
}

static int wsum_all(struct gpu_weights *w, const struct seg_tensor *dir, uint64_t n, uint64_t *out)
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
        wsum_kernel<<<blocks, 256>>>(w->dev + dir[i].offset, dir[i].size, dir[i].type,
                                     group_bytes(w, &dir[i]), d_acc + 2 * i);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess)
        e = cudaMemcpy(h_acc, d_acc, n * 2 * sizeof(uint32_t), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) {
        for (uint64_t i = 0; i < n; i++)
            out[i] = (uint64_t)h_acc[2 * i] << 32 | h_acc[2 * i + 1];
        rc = 0;
    } else {
        log_error("gpu_upload: wsum on device: %s", cudaGetErrorString(e));
    }
    if (d_acc) cudaFree(d_acc);
    free(h_acc);
    return rc;
}

extern "C" int gpu_upload_group_tensors(struct gpu_weights *w, const struct gpu_layout_tensor *t,
                                        size_t n, struct st_errbuf *eb)
{
    if (w->grouped) return st_errf(eb, ST_ESTATE, "gpu_upload: the device copy is grouped already");
    for (size_t i = 0; i < n; i++) {
        if (t[i].offset > w->len || t[i].size > w->len - t[i].offset)
            return st_errf(eb, ST_EFORMAT, "gpu_upload: tensor %zu (offset %llu, %llu bytes) "
                           "is not inside the device copy", i, (unsigned long long)t[i].offset,
                           (unsigned long long)t[i].size);
        if (gpu_layout_grouped(t[i].type, t[i].size) && t[i].offset % 16)
            return st_errf(eb, ST_EFORMAT, "gpu_upload: tensor %zu (type %u) starts at data "
                           "offset %llu, not a multiple of 16 bytes: the CUDA kernels read its "
                           "blocks in 16-byte words", i, t[i].type,
                           (unsigned long long)t[i].offset);
    }
    if (cudaSetDevice(w->device) != cudaSuccess)
        return st_errf(eb, ST_EDEVICE, "gpu_upload: cudaSetDevice(%d) failed", w->device);
    int rc = gpu_layout_apply(w->dev, t, n, eb);
    if (rc < 0) return rc;
    w->grouped = true;
    return 0;
}

extern "C" int gpu_upload_group(struct gpu_weights *w, const struct seg *seg,
                                struct st_errbuf *eb)
{
    const struct seg_header *hdr = seg_header(seg);
    const struct seg_tensor *dir = seg_dir(seg);
    struct gpu_layout_tensor *t =
        (struct gpu_layout_tensor *)malloc((hdr->n_tensors ? hdr->n_tensors : 1) * sizeof(*t));
    if (!t) return st_errf(eb, ST_ENOMEM, "gpu_upload: out of memory");
    for (uint64_t i = 0; i < hdr->n_tensors; i++)
        t[i] = {dir[i].type, dir[i].offset, dir[i].size};
    int rc = gpu_upload_group_tensors(w, t, hdr->n_tensors, eb);
    free(t);
    return rc;
}

extern "C" int gpu_upload_verify_repair(struct gpu_weights *w, const struct seg *seg, uint32_t *bad,
                                        int max_bad, int *repaired)
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
        } else if (group_bytes(w, &dir[i])) { /* back into the device layout */
            struct gpu_layout_tensor lt = {dir[i].type, dir[i].offset, dir[i].size};
            struct st_errbuf eb;
            if (gpu_layout_apply(w->dev, &lt, 1, &eb) < 0) {
                log_error("gpu_upload: repair of %s: %s", dir[i].name, eb.msg);
                rc = ST_EDEVICE;
            }
        }
    }
    if (rc == 0 && mism > 0) {
        /* count what the re-copy really fixed */
        rc = wsum_all(w, dir, n, sums);
        for (uint64_t i = 0; rc == 0 && i < n; i++) {
            bool was_bad = false;
            for (int k = 0; k < mism && k < max_bad; k++)
                was_bad |= bad[k] == i;
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
