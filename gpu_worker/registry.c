/* registry.c - backend lookup by name; see registry.h. */
#include "registry.h"

#include <string.h>

const struct backend_ops *registry_find(const char *name, struct st_errbuf *eb)
{
    if (!strcmp(name, "cpu")) return &cpu_backend_ops;
    if (!strcmp(name, "cuda")) {
        const struct backend_ops *ops = cuda_backend_ops();
        if (!ops)
            st_errf(eb, ST_EUNSUPPORTED,
                    "backend 'cuda': this staged-worker was built without CUDA (rebuild with "
                    "nvcc on PATH, without NO_CUDA=1)");
        return ops;
    }
    st_errf(eb, ST_ENOTFOUND, "backend '%s': unknown (known: cpu, cuda)", name);
    return NULL;
}
