/*
 * pool.h - a persistent pthreads pool for the CPU backend.
 *
 * pool_new starts n - 1 worker threads once; pool_run runs fn(arg, ith, n)
 * on all n threads (the caller is thread 0) and returns when every thread
 * has finished. Idle workers spin briefly (so back-to-back kernels of a
 * decode step don't pay a wake-up) and then sleep on a condition variable.
 * A pool is used from one thread at a time.
 */
#ifndef STAGED_POOL_H
#define STAGED_POOL_H

struct pool;

typedef void (*pool_fn)(void *arg, int ith, int nth);

/* n >= 1 threads in all (including the caller). NULL on failure. */
struct pool *pool_new(int n);
int pool_size(const struct pool *p);
void pool_run(struct pool *p, pool_fn fn, void *arg);
/* Stops and joins the workers; *p = NULL. Safe on NULL. */
void pool_destroy(struct pool **p);

#endif
