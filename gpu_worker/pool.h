/*
 * pool.h - a persistent pthreads pool for the CPU backend.
 *
 * pool_new starts n - 1 worker threads once. pool_for(p, n_chunks, fn, arg)
 * runs fn(arg, chunk, ith) exactly once for every chunk in 0..n_chunks-1
 * (n_chunks < 2^20), spread over the caller (ith 0) and the workers, and
 * returns when every chunk has finished.
 *
 * Chunks are claimed one at a time from a shared counter that also carries
 * a generation number, so a worker that is not running (the machine is
 * shared, threads get descheduled) never delays a call: the caller and the
 * threads that are awake take all the chunks, and a late worker finds the
 * generation gone and goes back to waiting. Idle workers spin briefly (so
 * the back-to-back kernels of a decode step pay no wake-up) and then sleep
 * on a condition variable. A pool is used from one thread at a time.
 */
#ifndef STAGED_POOL_H
#define STAGED_POOL_H

struct pool;

typedef void (*pool_fn)(void *arg, int chunk, int ith);

/* n >= 1 threads in all (including the caller). NULL on failure. */
struct pool *pool_new(int n);
int pool_size(const struct pool *p);
void pool_for(struct pool *p, int n_chunks, pool_fn fn, void *arg);
/* Stops and joins the workers; *p = NULL. Safe on NULL. */
void pool_destroy(struct pool **p);

#endif
