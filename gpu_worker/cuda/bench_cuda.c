/*
 * bench-cuda - speed of the CUDA backend and of the loader's upload.
 *
 *   bench-cuda MODEL.gguf [--prompt N] [--decode-steps N] [--sweep N,N,..] [--ctx N]
 *                         [--logits rows|summary] [--profile-n N]
 *
 * Prints a table and one JSON line with:
 *   upload_gbs       gpu_upload_create + gpu_upload_group_tensors of the model's
 *                    data region (pageable source, like the loader's shm
 *                    mapping; the device layout as the loader makes it), GB/s, after the
 *                    CUDA context exists (the log line splits registration
 *                    and copy)
 *   worker_mib       device memory the backend allocates at start beyond the
 *                    weights (scratch, cuBLAS workspace; the KV cache is
 *                    mapped on demand), MiB
 *   worker_peak_mib  the same at the end of the busiest sweep point (KV cache
 *                    of its sequences included), MiB
 *   prompt_tps       one sequence's prompt of N tokens (default 512) in one
 *                    batch, tokens/s (best of 3)
 *   decode1_tps      one sequence decoding after a 64-token prompt, tokens/s
 *   sweep            for each N (default 1,8,32,64,128): N sequences, each a
 *                    128-token prompt (prefilled in batches of up to 512
 *                    tokens) then 128 tokens decoded together; aggregate
 *                    decode tokens/s (N * 128 / decode time) and prefill tokens/s
 * Every token that ends a prompt or decodes gets its logits as serving asks
 * for them: by default a summary (the best LOGITS_TOP tokens and the
 * softmax normalizer, computed on the GPU: what greedy and top-k requests
 * need), with --logits rows the full rows copied to the host (what requests
 * with penalties or untruncated temperature sampling need).
 * --profile-n N: the 64th decode step of the sweep point with N sequences is
 * the profiler's range (cuda_profile_range; ncu --profile-from-start off).
 */
#include "common/log.h"
#include "common/model.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/cuda/cuda_backend.h"
#include "loader/gpu_layout.h"
#include "loader/gpu_upload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* how logits rows come back (LOGITS_ROW / LOGITS_SUMMARY), and the summaries */
static int8_t g_want = LOGITS_SUMMARY;
static struct logits_top *g_top;
static int g_profile_n; /* sweep point whose decode step 64 is profiled */

static int run_batch(const struct backend_ops *ops, struct backend *be, int n, const int32_t *tok,
                     const int32_t *pos, const int32_t *seq, const int8_t *lg, float *out)
{
    struct batch bt = {n, tok, pos, seq, lg, g_top};
    int rc = ops->forward(be, &bt, out);
    if (rc) fprintf(stderr, "bench-cuda: forward: %s\n", st_strerror(rc));
    return rc;
}

/* Aggregate decode of nseq sequences: 128-token prompts, then 128 steps. */
static int sweep_point(const struct backend_ops *ops, struct backend *be, int nseq, int V,
                       int max_batch, float *out, double *prefill_tps, double *decode_tps)
{
    const int np = 128, ng = 128;
    int total = nseq * np;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)total), *pos = malloc(sizeof(int32_t) * total);
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)total);
    int8_t *lg = malloc((size_t)total);
    int rc = 1;
    if (!tok || !pos || !seq || !lg) goto out;
    for (int q = 0; q < nseq; q++)
        ops->seq_truncate(be, q, 0);
    /* prompts position-major, so every batch holds the same positions of many sequences */
    for (int i = 0; i < total; i++) {
        int q = i % nseq, p = i / nseq;
        tok[i] = (int32_t)((q * 7919 + p * 104729 + 13) % V);
        pos[i] = p;
        seq[i] = q;
        lg[i] = p == np - 1 ? g_want : LOGITS_NONE;
    }
    double t = now_s();
    for (int off = 0; off < total; off += max_batch) {
        int n = total - off < max_batch ? total - off : max_batch;
        if (run_batch(ops, be, n, tok + off, pos + off, seq + off, lg + off, out)) goto out;
    }
    *prefill_tps = total / (now_s() - t);
    t = now_s();
    for (int s = 0; s < ng; s++) {
        for (int q = 0; q < nseq; q++) {
            tok[q] = (int32_t)((q * 31 + s * 17) % V);
            pos[q] = np + s;
            seq[q] = q;
            lg[q] = g_want;
        }
        if (nseq == g_profile_n && s == 64) cuda_profile_range(true);
        int bad = run_batch(ops, be, nseq, tok, pos, seq, lg, out);
        if (nseq == g_profile_n && s == 64) cuda_profile_range(false);
        if (bad) goto out;
    }
    *decode_tps = (double)nseq * ng / (now_s() - t);
    rc = 0;
out:
    free(tok);
    free(pos);
    free(seq);
    free(lg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench-cuda MODEL.gguf [--prompt N] [--decode-steps N] "
                        "[--sweep N,N,..] [--ctx N] [--logits rows|summary] [--profile-n N]\n");
        return 2;
    }
    int n_prompt = 512, steps = 128, ctx = 1024;
    int sweep[16] = {1, 8, 32, 64, 128}, n_sweep = 5, nseq = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--prompt"))
            n_prompt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode-steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ctx"))
            ctx = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--profile-n"))
            g_profile_n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--logits"))
            g_want = strcmp(argv[i + 1], "rows") ? LOGITS_SUMMARY : LOGITS_ROW;
        else if (!strcmp(argv[i], "--sweep")) {
            n_sweep = 0;
            for (char *p = argv[i + 1]; *p && n_sweep < 16; p++) {
                sweep[n_sweep++] = (int)strtol(p, &p, 10);
                if (*p != ',') break;
            }
        }
    }
    for (int i = 0; i < n_sweep; i++) {
        if (sweep[i] < 1 || sweep[i] > 1024) {
            fprintf(stderr, "bench-cuda: --sweep: %d sequences out of range\n", sweep[i]);
            return 2;
        }
        if (sweep[i] > nseq) nseq = sweep[i];
    }
    if (n_prompt < 1 || n_prompt > 4096 || steps < 1 || ctx < 64 + steps + 8 || ctx < 256) {
        fprintf(stderr, "bench-cuda: --prompt 1..4096, --ctx >= 256 and >= 72 + steps\n");
        return 2;
    }
    log_set_name("bench-cuda");
    const struct backend_ops *ops = cuda_backend_ops();
    if (!ops) {
        fprintf(stderr, "bench-cuda: built without CUDA\n");
        return 77;
    }
    struct st_errbuf eb = {{0}};
    struct st_model *m = NULL;
    if (model_open_file(argv[1], &m, &eb)) {
        fprintf(stderr, "bench-cuda: %s\n", eb.msg);
        return 1;
    }
    uint64_t region = 0;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        uint64_t end = m->gguf->tensors[i].offset + m->gguf->tensors[i].size;
        if (end > region) region = end;
    }
    /* upload from a private pageable copy (the file mapping would measure disk reads) */
    uint8_t *host = malloc(region);
    if (!host) return 1;
    memcpy(host, m->data, region);
    struct gpu_weights *w = NULL;
    /* the CUDA context and the staging ring are start-up costs, not upload time */
    if (gpu_upload_init(0, &eb)) {
        fprintf(stderr, "bench-cuda: %s\n", eb.msg);
        return 1;
    }
    /* upload, then the device layout (loader/gpu_layout.h), as the loader does */
    struct gpu_layout_tensor *lt = malloc(sizeof(*lt) * (m->gguf->n_tensors + 1));
    if (!lt) return 1;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++)
        lt[i] = (struct gpu_layout_tensor){m->gguf->tensors[i].type, m->gguf->tensors[i].offset,
                                           m->gguf->tensors[i].size};
    double t0 = now_s();
    if (gpu_upload_create(host, region, 0, &w, &eb) ||
        gpu_upload_group_tensors(w, lt, m->gguf->n_tensors, &eb)) {
        fprintf(stderr, "bench-cuda: %s\n", eb.msg);
        return 1;
    }
    free(lt);
    double upload_gbs = region / (now_s() - t0) / 1e9;
    free(host);
    int max_batch = n_prompt > 512 ? n_prompt : 512;
    if (max_batch < nseq) max_batch = nseq;
    struct backend_config cfg = {.max_seqs = nseq, .max_ctx = ctx, .max_batch = max_batch};
    struct backend *be = NULL;
    size_t used0 = cuda_device_used();
    if (ops->create(m, &cfg, &be, &eb)) {
        fprintf(stderr, "bench-cuda: %s\n", eb.msg);
        return 1;
    }
    double worker_mib = (double)(cuda_device_used() - used0) / (1 << 20);
    int V = (int)m->hp.n_vocab;
    /* logits in page-locked memory, as a serving worker allocates them */
    float *out = cuda_host_alloc(sizeof(float) * (size_t)V * (nseq > 1 ? nseq : 1));
    g_top = malloc(sizeof(*g_top) * (size_t)max_batch);
    if (!out || !g_top) return 1;
    int nb = n_prompt > nseq ? n_prompt : nseq;
    if (nb < 64) nb = 64; /* the decode run's 64-token prompt */
    int32_t *tok = malloc(sizeof(int32_t) * nb), *pos = malloc(sizeof(int32_t) * nb),
            *seq = malloc(sizeof(int32_t) * nb);
    int8_t *lg = malloc((size_t)nb);
    for (int i = 0; i < nb; i++)
        tok[i] = (int32_t)((i * 7919 + 13) % V);

    /* prompt: best of 3 (after a warm-up) */
    double best = 1e9;
    for (int rep = 0; rep < 4; rep++) {
        ops->seq_truncate(be, 0, 0);
        double t = now_s();
        for (int off = 0; off < n_prompt; off += max_batch) {
            int n = n_prompt - off < max_batch ? n_prompt - off : max_batch;
            for (int i = 0; i < n; i++) {
                pos[i] = off + i;
                seq[i] = 0;
                lg[i] = off + i == n_prompt - 1 ? g_want : LOGITS_NONE;
            }
            if (run_batch(ops, be, n, tok + off, pos, seq, lg, out)) return 1;
        }
        t = now_s() - t;
        if (rep > 0 && t < best) best = t;
    }
    double prompt_tps = n_prompt / best;

    /* decode, one sequence, after a 64-token prompt */
    ops->seq_truncate(be, 0, 0);
    for (int i = 0; i < 64; i++) {
        pos[i] = i;
        seq[i] = 0;
        lg[i] = i == 63 ? g_want : LOGITS_NONE;
    }
    if (run_batch(ops, be, 64, tok, pos, seq, lg, out)) return 1;
    int8_t one = g_want;
    double t = 0;
    for (int s = 0; s < steps + 8; s++) {
        if (s == 8) t = now_s(); /* warm-up steps excluded */
        int32_t p = 64 + s, sq = 0, tk = tok[s % nb];
        if (run_batch(ops, be, 1, &tk, &p, &sq, &one, out)) return 1;
    }
    double decode1_tps = steps / (now_s() - t);

    double pre[16], agg[16], peak_mib = worker_mib;
    for (int i = 0; i < n_sweep; i++) {
        if (sweep_point(ops, be, sweep[i], V, max_batch, out, &pre[i], &agg[i])) return 1;
        double mib = (double)(cuda_device_used() - used0) / (1 << 20);
        if (mib > peak_mib) peak_mib = mib;
    }

    printf("%-30s %12s\n", "measure", "value");
    printf("%-30s %12s\n", "logits back as", g_want == LOGITS_ROW ? "rows" : "summary");
    printf("%-30s %12.2f\n", "upload GB/s (shm-like src)", upload_gbs);
    printf("%-30s %12.0f\n", "worker device MiB (no weights)", worker_mib);
    printf("%-30s %12.0f\n", "  at the busiest sweep point", peak_mib);
    printf("%-22s %7d %12.0f\n", "prompt tok/s, tokens", n_prompt, prompt_tps);
    printf("%-30s %12.0f\n", "decode batch 1 tok/s", decode1_tps);
    for (int i = 0; i < n_sweep; i++)
        printf("decode N=%-4d 128+128 tok/s %12.0f   (prefill %.0f tok/s)\n", sweep[i], agg[i],
               pre[i]);
    printf("{\"model\":\"%s\",\"logits\":\"%s\",\"data_bytes\":%llu,\"upload_gbs\":%.2f,\"worker_mib\":%.0f,"
           "\"worker_peak_mib\":%.0f,"
           "\"max_seqs\":%d,\"ctx\":%d,\"prompt_tokens\":%d,\"prompt_tps\":%.0f,"
           "\"decode1_tps\":%.0f,\"sweep\":[",
           argv[1], g_want == LOGITS_ROW ? "rows" : "summary", (unsigned long long)region, upload_gbs, worker_mib, peak_mib, nseq, ctx,
           n_prompt, prompt_tps, decode1_tps);
    for (int i = 0; i < n_sweep; i++)
        printf("%s{\"n\":%d,\"decode_tps\":%.0f,\"prefill_tps\":%.0f}", i ? "," : "", sweep[i],
               agg[i], pre[i]);
    printf("]}\n");
    cuda_host_free(out);
    free(g_top);
    ops->destroy(&be);
    gpu_upload_destroy(&w);
    model_close(&m);
    return 0;
}
