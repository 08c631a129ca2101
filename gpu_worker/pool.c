/* pool.c - persistent worker threads with chunk claiming; see pool.h. */
#include "pool.h"

#include <assert.h>
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#define SPIN_ITERS 4000 /* pauses before a worker sleeps (some tens of us) */

struct pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* one word, so a claim is checked against its own generation's count:
     * generation << 40 | n_chunks << 20 | next chunk to claim */
    _Atomic uint64_t claim;
    atomic_int done; /* chunks finished in this generation */
    atomic_bool stop;
    pool_fn fn;
    void *arg;
};

struct worker_arg {
    struct pool *p;
    int ith;
};

#define GEN_OF(c) ((uint32_t)((c) >> 40))
#define COUNT_OF(c) ((uint32_t)((c) >> 20) & 0xfffffu)
#define NEXT_OF(c) ((uint32_t)(c)&0xfffffu)
#define MAX_CHUNKS 0xfffff

/* Claim and run chunks of generation gen until none is left. */
static void run_chunks(struct pool *p, uint32_t gen, int ith)
{
    for (;;) {
        uint64_t c = atomic_load(&p->claim);
        if (GEN_OF(c) != gen || NEXT_OF(c) >= COUNT_OF(c)) return;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1)) continue;
        /* a claimed chunk keeps its generation, and so fn and arg, alive */
        p->fn(p->arg, (int)NEXT_OF(c), ith);
        atomic_fetch_add(&p->done, 1);
    }
}

static void *worker_main(void *a)
{
    struct worker_arg *wa = a;
    struct pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    uint32_t seen = 0;
    for (;;) {
        int spins = 0;
        uint32_t gen;
        while ((gen = GEN_OF(atomic_load(&p->claim))) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_ITERS) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (GEN_OF(atomic_load(&p->claim)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = gen;
        run_chunks(p, gen, ith);
    }
    return NULL;
}

struct pool *pool_new(int n)
{
    if (n < 1) n = 1;
    struct pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->th = calloc((size_t)n, sizeof(pthread_t));
    if (!p->th) {
        free(p);
        return NULL;
    }
    p->n = 1;
    for (int i = 1; i < n; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        if (!wa) goto err;
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            goto err;
        }
        p->n = i + 1; /* threads started so far, for cleanup */
    }
    return p;
err:
    pool_destroy(&p);
    return NULL;
}

int pool_size(const struct pool *p)
{
    return p->n;
}

void pool_for(struct pool *p, int n_chunks, pool_fn fn, void *arg)
{
    if (n_chunks <= 0) return;
    if (p->n == 1 || n_chunks == 1) {
        for (int c = 0; c < n_chunks; c++)
            fn(arg, c, 0);
        return;
    }
    assert(n_chunks <= MAX_CHUNKS);
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->done, 0);
    uint32_t gen = (GEN_OF(atomic_load(&p->claim)) + 1) & 0xffffffu;
    if (gen == 0) /* workers start with seen = 0 */
        gen = 1;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->claim, (uint64_t)gen << 40 | (uint64_t)n_chunks << 20);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, gen, 0);
    int spins = 0;
    while (atomic_load(&p->done) < n_chunks) {
        if (++spins < SPIN_ITERS)
            _mm_pause();
        else
            sched_yield();
    }
}

void pool_destroy(struct pool **pp)
{
    struct pool *p = pp ? *pp : NULL;
    if (!p) return;
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
