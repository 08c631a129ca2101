/*
 * bench-worker - CPU backend speed: prompt processing (one batch of P
 * tokens) and generation (G steps of one token through the KV cache).
 *
 *   bench-worker MODEL.gguf [--prompt P] [--gen G] [--threads N] [--reps R]
 *
 * Like llama-bench's pp and tg tests, both start from an empty KV cache.
 * --seqs S: S sequences decode together; tg is then their total tok/s.
 * Prints one line: "MODEL pp P: X tok/s  tg G: Y tok/s" (best of R runs), then
 * the same per CPU-second of the process (with N threads, N x that is what
 * an idle machine would give at best).
 * Token ids are deterministic pseudo-random ids below n_vocab.
 */
#include "common/model.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process: on a shared machine, tok/s per CPU-second
 * shows the kernels' speed when wall time is dominated by other load */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int n_prompt = 128, n_gen = 32, threads = 0, reps = 2, n_seqs = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            n_prompt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            n_gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seqs") && i + 1 < argc)
            n_seqs = atoi(argv[++i]);
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "usage: bench-worker MODEL.gguf [--prompt P] [--gen G] [--threads N] "
                            "[--reps R] [--seqs S]\n");
            return 2;
        }
    }
    if (!path || n_prompt < 1 || n_gen < 1 || reps < 1 || n_seqs < 1 || n_seqs > 64) {
        fprintf(stderr, "bench-worker: need MODEL.gguf, P >= 1, G >= 1, 1 <= S <= 64\n");
        return 2;
    }
    struct st_model *m = NULL;
    struct st_errbuf eb = {{0}};
    if (model_open_file(path, &m, &eb)) {
        fprintf(stderr, "bench-worker: %s\n", eb.msg);
        return 1;
    }
    struct backend_config cfg = {.n_threads = threads,
                                 .max_seqs = n_seqs,
                                 .max_ctx = (n_prompt > n_gen ? n_prompt : n_gen) + 1,
                                 .max_batch = n_prompt > n_seqs ? n_prompt : n_seqs};
    struct backend *b = NULL;
    if (cpu_backend_ops.create(m, &cfg, &b, &eb)) {
        fprintf(stderr, "bench-worker: %s\n", eb.msg);
        model_close(&m);
        return 1;
    }
    int nv = (int)m->hp.n_vocab;
    int32_t *tok = malloc(sizeof(int32_t) * (n_prompt + n_gen)),
            *pos = malloc(sizeof(int32_t) * n_prompt), *seq = calloc(n_prompt, sizeof(int32_t));
    int8_t *lg = calloc(n_prompt, 1);
    float *logits = malloc(sizeof(float) * nv * n_seqs);
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < n_prompt + n_gen; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)nv);
    }
    for (int i = 0; i < n_prompt; i++)
        pos[i] = i;
    lg[n_prompt - 1] = 1;
    double best_pp = 0, best_tg = 0, cpu_pp = 0, cpu_tg = 0;
    int rc = 0;
    for (int r = 0; r < reps && rc == 0; r++) {
        cpu_backend_ops.seq_truncate(b, 0, 0);
        struct batch bt = {
            .n_tokens = n_prompt, .token = tok, .pos = pos, .seq = seq, .logits = lg};
        double c0 = cpu_now(), t0 = now();
        rc = cpu_backend_ops.forward(b, &bt, logits);
        /* generation starts from an empty cache, as llama-bench's tg test;
         * with --seqs S, S sequences decode together (one token each per
         * step) and tg counts all their tokens */
        cpu_backend_ops.seq_truncate(b, 0, 0);
        double c1 = cpu_now(), t1 = now();
        for (int g = 0; g < n_gen && rc == 0; g++) {
            int32_t t[64], p[64], sq[64];
            int8_t one[64];
            for (int k = 0; k < n_seqs; k++) {
                t[k] = tok[n_prompt + (g + k) % n_gen];
                p[k] = g;
                sq[k] = k;
                one[k] = 1;
            }
            struct batch b1 = {.n_tokens = n_seqs, .token = t, .pos = p, .seq = sq, .logits = one};
            rc = cpu_backend_ops.forward(b, &b1, logits);
        }
        for (int k = 0; k < n_seqs; k++)
            cpu_backend_ops.seq_truncate(b, k, 0);
        double c2 = cpu_now(), t2 = now();
        if (n_prompt / (c1 - c0) > cpu_pp) cpu_pp = n_prompt / (c1 - c0);
        if ((double)n_gen * n_seqs / (c2 - c1) > cpu_tg)
            cpu_tg = (double)n_gen * n_seqs / (c2 - c1);
        if (n_prompt / (t1 - t0) > best_pp) best_pp = n_prompt / (t1 - t0);
        if ((double)n_gen * n_seqs / (t2 - t1) > best_tg)
            best_tg = (double)n_gen * n_seqs / (t2 - t1);
    }
    if (rc)
        fprintf(stderr, "bench-worker: forward failed: %s\n", st_strerror(rc));
    else
        printf("%s pp %d: %.1f tok/s  tg %d x %d seqs: %.1f tok/s  (%s; per CPU-second: pp %.1f tg "
               "%.1f)\n",
               path, n_prompt, best_pp, n_gen, n_seqs, best_tg, kernels_isa(), cpu_pp, cpu_tg);
    free(tok);
    free(pos);
    free(seq);
    free(lg);
    free(logits);
    cpu_backend_ops.destroy(&b);
    model_close(&m);
    return rc ? 1 : 0;
}
