/*
 * test_pool.c - gpu_worker/pool.c: every chunk of every call runs exactly
 * once and has finished when pool_for returns, across many back-to-back
 * calls with changing chunk counts (the pattern of a forward pass), with
 * more threads than cores so that workers get descheduled mid-call.
 */
#include "gpu_worker/pool.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

struct job {
    atomic_int *hits; /* [n] */
    int n;
    atomic_int in_flight;
};

static void work(void *arg, int chunk, int ith)
{
    struct job *j = arg;
    assert_true(chunk >= 0 && chunk < j->n);
    atomic_fetch_add(&j->in_flight, 1);
    volatile int spin = 0;
    for (int i = 0; i < (chunk % 7) * 50; i++)
        spin += i;
    atomic_fetch_add(&j->hits[chunk], 1);
    atomic_fetch_sub(&j->in_flight, 1);
}

static void run_many(int threads)
{
    struct pool *p = pool_new(threads);
    assert_non_null(p);
    assert_int_equal(pool_size(p), threads);
    atomic_int *hits = calloc(4096, sizeof(atomic_int));
    for (int call = 0; call < 20000; call++) {
        /* counts go up and down, as tokens, rows and heads do */
        int n = 1 + (call * 7919) % (call % 3 == 0 ? 5 : 300);
        struct job j = {.hits = hits, .n = n};
        for (int i = 0; i < n; i++)
            atomic_store(&hits[i], 0);
        pool_for(p, n, work, &j);
        /* every chunk finished, exactly once, nothing still running */
        assert_int_equal(atomic_load(&j.in_flight), 0);
        for (int i = 0; i < n; i++)
            if (atomic_load(&hits[i]) != 1)
                fail_msg("call %d: chunk %d of %d ran %d times", call, i, n, atomic_load(&hits[i]));
    }
    free(hits);
    pool_destroy(&p);
    assert_null(p);
    pool_destroy(&p); /* safe twice */
}

static void test_pool_two(void **state)
{
    (void)state;
    run_many(2);
}

static void test_pool_oversubscribed(void **state)
{
    (void)state;
    run_many(5);
}

static void test_pool_single(void **state)
{
    (void)state;
    run_many(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_single),
        cmocka_unit_test(test_pool_two),
        cmocka_unit_test(test_pool_oversubscribed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
