/* pool.c - persistent worker threads; see pool.h. */
#include "pool.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define SPIN_ITERS 20000 /* ~50 us of pause before sleeping */

struct pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_ulong gen;  /* bumped once per pool_run */
    atomic_int done;   /* workers finished in this generation */
    atomic_bool stop;
    pool_fn fn;
    void *arg;
};

struct worker_arg {
    struct pool *p;
    int ith;
};

static void *worker_main(void *a)
{
    struct worker_arg *wa = a;
    struct pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned long seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_ITERS) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = atomic_load(&p->gen);
        p->fn(p->arg, ith, p->n);
        atomic_fetch_add(&p->done, 1);
    }
    return NULL;
}

struct pool *pool_new(int n)
{
    if (n < 1)
        n = 1;
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->th = calloc((size_t)n, sizeof(pthread_t));
    if (!p->th)
        goto err;
    p->n = 1;
    for (int i = 1; i < n; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        if (!wa)
            goto err_threads;
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            goto err_threads;
        }
        p->n = i + 1; /* threads actually started, for cleanup */
    }
    p->n = n;
    return p;
err_threads:
    pool_destroy(&p);
    return NULL;
err:
    free(p->th);
    free(p);
    return NULL;
}

int pool_size(const struct pool *p)
{
    return p->n;
}

void pool_run(struct pool *p, pool_fn fn, void *arg)
{
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->done, 0);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    int spins = 0;
    while (atomic_load(&p->done) < p->n - 1) {
        if (++spins < SPIN_ITERS)
            _mm_pause();
        else
            sched_yield();
    }
}

void pool_destroy(struct pool **pp)
{
    struct pool *p = pp ? *pp : NULL;
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->th);
    free(p);
    *pp = NULL;
}
