/*
 * registry.h - backends by name ("cpu", "cuda") for the worker's command
 * line and config.
 */
#ifndef STAGED_REGISTRY_H
#define STAGED_REGISTRY_H

#include "common/err.h"
#include "gpu_worker/backend.h"

/* The backend called name. NULL with eb set when the name is unknown
 * (ST_ENOTFOUND) or the backend is not built in (cuda without CUDA). */
const struct backend_ops *registry_find(const char *name, struct st_errbuf *eb);

#endif
