/* Builds without CUDA (NO_CUDA=1, SAN=1 or no nvcc): no CUDA backend. */
#include "gpu_worker/backend.h"
#include "gpu_worker/cuda/cuda_backend.h"

#ifndef STAGED_CUDA
const struct backend_ops *cuda_backend_ops(void)
{
    return NULL;
}

int cuda_ipc_open(const char *hex, int device, void **dev_ptr, struct st_errbuf *eb)
{
    *dev_ptr = NULL;
    return st_errf(eb, ST_EUNSUPPORTED, "this staged was built without CUDA");
}

void cuda_ipc_close(void *dev_ptr) {}

int cuda_device_count(struct st_errbuf *eb)
{
    st_errf(eb, ST_EUNSUPPORTED, "this staged was built without CUDA");
    return 0;
}

void cuda_backend_inject_bad_kernel(void) {}

size_t cuda_device_used(void)
{
    return 0;
}

void *cuda_host_alloc(size_t bytes)
{
    return NULL;
}

void cuda_host_free(void *p) {}

int cuda_mmq_product(int type, int N, int K, int n, const void *w, const float *x, float *y,
                     bool small)
{
    return ST_EUNSUPPORTED;
}

int cuda_swiglu_product(int type, int N, int K, int n, const void *w, const float *x, float *y)
{
    return ST_EUNSUPPORTED;
}

int cuda_attention_check(int n_heads, int n_kv, int hd, int np, const float *q, const uint16_t *k,
                         const uint16_t *v, int qcls, float *out)
{
    return ST_EUNSUPPORTED;
}

int cuda_norm_quant_check(int cls, int n, int D, const float *x, const float *w, float eps,
                          int8_t *q, float *d, float *s, int32_t *bsum)
{
    return ST_EUNSUPPORTED;
}

void cuda_profile_range(bool on) {}

int cuda_logits_summary(const float *rows, int n, int V, struct logits_top *out)
{
    return ST_EUNSUPPORTED;
}

int cuda_check_alignment(const struct st_model *m, struct st_errbuf *eb)
{
    return st_errf(eb, ST_EUNSUPPORTED, "cuda: built without CUDA");
}
#endif
