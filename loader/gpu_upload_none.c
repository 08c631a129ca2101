/* Builds without CUDA: the loader cannot upload (see gpu_upload.h). */
#include "loader/gpu_upload.h"

#ifndef STAGED_CUDA
int gpu_upload_init(int device, struct st_errbuf *eb)
{
    return st_errf(eb, ST_EUNSUPPORTED,
                   "[loader] upload = cuda, but this staged was built without CUDA (no nvcc)");
}

void gpu_upload_shutdown(void) {}

int gpu_upload_create(const void *host, size_t len, int device, struct gpu_weights **out,
                      struct st_errbuf *eb)
{
    *out = NULL;
    return st_errf(eb, ST_EUNSUPPORTED,
                   "[loader] upload = cuda, but this staged was built without CUDA (no nvcc)");
}

int gpu_upload_group(struct gpu_weights *w, const struct seg *seg, struct st_errbuf *eb)
{
    return st_errf(eb, ST_EUNSUPPORTED, "this staged was built without CUDA (no nvcc)");
}

int gpu_upload_group_tensors(struct gpu_weights *w, const struct gpu_layout_tensor *t, size_t n,
                             struct st_errbuf *eb)
{
    return st_errf(eb, ST_EUNSUPPORTED, "this staged was built without CUDA (no nvcc)");
}

void gpu_upload_ipc_handle(const struct gpu_weights *w, char *hex_out)
{
    hex_out[0] = 0;
}

int gpu_upload_verify_repair(struct gpu_weights *w, const struct seg *seg, uint32_t *bad,
                             int max_bad, int *repaired)
{
    *repaired = 0;
    return ST_EUNSUPPORTED;
}

int gpu_upload_flip_byte(struct gpu_weights *w, size_t offset)
{
    return ST_EUNSUPPORTED;
}

void gpu_upload_destroy(struct gpu_weights **w)
{
    *w = NULL;
}
#endif
