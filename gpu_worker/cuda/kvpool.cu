/* The KV cache's on-demand device memory (see kvpool.cuh). */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/kvpool.cuh"

#include <cuda.h>
#include <stdlib.h>

/* The driver functions, looked up at runtime. */
struct vmm_api {
    CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*free_va)(CUdeviceptr, size_t);
    CUresult (*create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                       unsigned long long);
    CUresult (*release)(CUmemGenericAllocationHandle);
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
    CUresult (*unmap)(CUdeviceptr, size_t);
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
    CUresult (*granularity)(size_t *, const CUmemAllocationProp *,
                            CUmemAllocationGranularity_flags);
};

struct kvpool {
    struct vmm_api api;
    CUmemAllocationProp prop;
    CUmemAccessDesc access;
    CUdeviceptr base;
    size_t gran, stride, reserved;
    int n_seqs;
    int *n_mapped;                   /* chunks mapped per sequence (always a prefix) */
    CUmemGenericAllocationHandle *h; /* [seq][chunk] */
    int chunks_per_seq;
    size_t mapped, peak;
};

static int lookup(const char *sym, void **fn, struct st_errbuf *eb)
{
    cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion(sym, fn, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !*fn)
        return st_errf(eb, ST_EDEVICE, "cuda: driver function %s unavailable", sym);
    return 0;
}

int kvpool_create(int device, int n_seqs, size_t seq_bytes, struct kvpool **out,
                  struct st_errbuf *eb)
{
    *out = NULL;
    struct kvpool *p = (struct kvpool *)calloc(1, sizeof(*p));
    if (!p) return st_errf(eb, ST_ENOMEM, "cuda: out of memory");
    int rc = 0;
    CUresult r;
    size_t seq_chunks;
    void **fns[] = {(void **)&p->api.reserve,    (void **)&p->api.free_va,
                    (void **)&p->api.create,     (void **)&p->api.release,
                    (void **)&p->api.map,        (void **)&p->api.unmap,
                    (void **)&p->api.set_access, (void **)&p->api.granularity};
    const char *syms[] = {"cuMemAddressReserve",
                          "cuMemAddressFree",
                          "cuMemCreate",
                          "cuMemRelease",
                          "cuMemMap",
                          "cuMemUnmap",
                          "cuMemSetAccess",
                          "cuMemGetAllocationGranularity"};
    for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++)
        if ((rc = lookup(syms[i], fns[i], eb))) goto fail;
    p->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p->prop.location.id = device;
    p->access.location = p->prop.location;
    p->access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if ((r = p->api.granularity(&p->gran, &p->prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)) ||
        !p->gran) {
        rc = st_errf(eb, ST_EDEVICE, "cuda: cuMemGetAllocationGranularity: error %d", (int)r);
        goto fail;
    }
    seq_chunks = (seq_bytes + p->gran - 1) / p->gran;
    if (seq_chunks == 0) seq_chunks = 1;
    p->chunks_per_seq = (int)seq_chunks;
    p->stride = seq_chunks * p->gran;
    p->n_seqs = n_seqs;
    p->reserved = p->stride * (size_t)n_seqs;
    p->n_mapped = (int *)calloc((size_t)n_seqs, sizeof(int));
    p->h = (CUmemGenericAllocationHandle *)calloc((size_t)n_seqs * seq_chunks, sizeof(*p->h));
    if (!p->n_mapped || !p->h) {
        rc = st_errf(eb, ST_ENOMEM, "cuda: out of memory");
        goto fail;
    }
    if ((r = p->api.reserve(&p->base, p->reserved, p->gran, 0, 0))) {
        rc = st_errf(eb, ST_EDEVICE, "cuda: cuMemAddressReserve of %zu bytes: error %d",
                     p->reserved, (int)r);
        goto fail;
    }
    *out = p;
    return 0;
fail:
    kvpool_destroy(&p);
    return rc;
}

int kvpool_trim(struct kvpool *p, int s, size_t keep)
{
    int want = (int)((keep + p->gran - 1) / p->gran);
    while (p->n_mapped[s] > want) {
        int c = --p->n_mapped[s];
        CUdeviceptr a = p->base + (size_t)s * p->stride + (size_t)c * p->gran;
        CUresult r = p->api.unmap(a, p->gran);
        if (!r) r = p->api.release(p->h[(size_t)s * p->chunks_per_seq + c]);
        if (r) {
            log_error("cuda: kv pool: unmapping chunk %d of sequence %d: error %d", c, s, (int)r);
            return ST_EDEVICE;
        }
        p->mapped -= p->gran;
    }
    return 0;
}

int kvpool_ensure(struct kvpool *p, int s, size_t bytes)
{
    int want = (int)((bytes + p->gran - 1) / p->gran);
    if (want > p->chunks_per_seq) {
        log_error("cuda: kv pool: %zu bytes for sequence %d exceed its slot of %zu", bytes, s,
                  p->stride);
        return ST_EINVAL;
    }
    while (p->n_mapped[s] < want) {
        int c = p->n_mapped[s];
        CUdeviceptr a = p->base + (size_t)s * p->stride + (size_t)c * p->gran;
        CUmemGenericAllocationHandle h;
        CUresult r = p->api.create(&h, p->gran, &p->prop, 0);
        if (r) {
            log_error("cuda: kv pool: cuMemCreate of %zu bytes: error %d", p->gran, (int)r);
            return r == CUDA_ERROR_OUT_OF_MEMORY ? ST_ENOMEM : ST_EDEVICE;
        }
        r = p->api.map(a, p->gran, 0, h, 0);
        if (!r) r = p->api.set_access(a, p->gran, &p->access, 1);
        if (r) {
            log_error("cuda: kv pool: mapping chunk %d of sequence %d: error %d", c, s, (int)r);
            p->api.unmap(a, p->gran);
            p->api.release(h);
            return ST_EDEVICE;
        }
        p->h[(size_t)s * p->chunks_per_seq + c] = h;
        p->n_mapped[s]++;
        p->mapped += p->gran;
        if (p->mapped > p->peak) p->peak = p->mapped;
    }
    return 0;
}

void kvpool_destroy(struct kvpool **pp)
{
    struct kvpool *p = *pp;
    if (!p) return;
    if (p->n_mapped)
        for (int s = 0; s < p->n_seqs; s++)
            kvpool_trim(p, s, 0);
    if (p->base) p->api.free_va(p->base, p->reserved);
    free(p->n_mapped);
    free(p->h);
    free(p);
    *pp = NULL;
}

uint8_t *kvpool_base(const struct kvpool *p)
{
    return (uint8_t *)p->base;
}

size_t kvpool_stride(const struct kvpool *p)
{
    return p->stride;
}

size_t kvpool_mapped(const struct kvpool *p)
{
    return p->mapped;
}

size_t kvpool_peak(const struct kvpool *p)
{
    return p->peak;
}
