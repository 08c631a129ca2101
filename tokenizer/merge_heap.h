/*
 * merge_heap.h - the queue of merge candidates shared by the SentencePiece
 * (spm.c) and byte-level BPE (bpe.c) encoders: a binary min-heap ordered by
 * (prio, left), so equal priorities merge leftmost first. SPM uses
 * prio = -score (highest score first), BPE prio = merge rank.
 *
 * A heap may start in a caller's buffer (on the stack, for short words) and
 * moves to allocated memory when it outgrows it; merge_heap_free releases
 * only what it allocated.
 */
#ifndef STAGED_MERGE_HEAP_H
#define STAGED_MERGE_HEAP_H

#include "common/err.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct merge_cand {
    double prio;   /* lower pops first */
    uint32_t left; /* index of the left symbol */
    int32_t a, b;  /* encoder's check that the pair is unchanged when popped */
};

struct merge_heap {
    struct merge_cand *a;
    size_t n, cap;
    bool owned; /* a was allocated here */
};

/* Start empty in buf[0..cap) (buf may be NULL with cap 0). */
static inline void merge_heap_init(struct merge_heap *h, struct merge_cand *buf, size_t cap)
{
    *h = (struct merge_heap){buf, 0, cap, false};
}

static inline bool merge_cand_before(const struct merge_cand *x, const struct merge_cand *y)
{
    if (x->prio != y->prio) return x->prio < y->prio;
    return x->left < y->left;
}

/* 0 or ST_ENOMEM (the heap is unchanged then). */
static inline int merge_heap_push(struct merge_heap *h, struct merge_cand c)
{
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        struct merge_cand *p = h->owned ? realloc(h->a, nc * sizeof(*p)) : malloc(nc * sizeof(*p));
        if (!p) return ST_ENOMEM;
        if (!h->owned && h->n) memcpy(p, h->a, h->n * sizeof(*p));
        h->a = p;
        h->cap = nc;
        h->owned = true;
    }
    size_t i = h->n++;
    while (i > 0 && merge_cand_before(&c, &h->a[(i - 1) / 2])) {
        h->a[i] = h->a[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->a[i] = c;
    return 0;
}

/* The first candidate; the heap must not be empty. */
static inline struct merge_cand merge_heap_pop(struct merge_heap *h)
{
    struct merge_cand top = h->a[0], last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && merge_cand_before(&h->a[c + 1], &h->a[c])) c++;
        if (!merge_cand_before(&h->a[c], &last)) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n) h->a[i] = last;
    return top;
}

static inline void merge_heap_free(struct merge_heap *h)
{
    if (h->owned) free(h->a);
    merge_heap_init(h, NULL, 0);
}

#endif
