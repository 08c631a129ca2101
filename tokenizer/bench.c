/*
 * bench-tokenizer: tokenizer figures on the vocabs in $STAGED_MODELS
 * (default ../shared/models): vocab build time, encode of a 4,096-token
 * prompt (English prose + markdown: the models README, repeated as needed),
 * whole decode, and streaming detok one token per call.
 *
 * Then the server (in-process, ipc:// endpoint, 2 worker threads): requests
 * per second for pipelined encodes of a short chat-sized prompt and of the
 * 4,096-token prompt, and the round-trip latency of one small request.
 *
 *   bench-tokenizer [REPEATS]     (default 50; the median is reported)
 */
#include "common/model.h"
#include "tokenizer/detok.h"
#include "tokenizer/server.h"
#include "tokenizer/vocab.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(*t), cmp_d);
    return t[n / 2];
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) p[n] = 0;
    *len = (size_t)n;
    return p;
}

/* A prefix of the corpus (repeated) that encodes to about `target` tokens. */
static char *make_prompt(const struct vocab *v, const char *corpus, size_t clen, size_t target,
                         size_t *plen)
{
    size_t cap = clen * 8, len = 0;
    char *p = malloc(cap + 1);
    if (!p) return NULL;
    for (;;) {
        while (len + clen <= cap && len < cap / 2) {
            memcpy(p + len, corpus, clen);
            len += clen;
        }
        p[len] = 0;
        int32_t *ids;
        size_t n;
        if (tok_encode(v, p, len, false, false, &ids, &n)) break;
        free(ids);
        if (n >= target) {
            /* shrink to about target tokens by bytes */
            size_t want = (size_t)((double)len * target / n);
            while (want > 0 && ((unsigned char)p[want] & 0xC0) == 0x80)
                want--;
            p[want] = 0;
            *plen = want;
            return p;
        }
        if (len >= cap / 2) {
            char *q = realloc(p, cap * 2 + 1);
            if (!q) break;
            p = q;
            cap *= 2;
        }
    }
    free(p);
    return NULL;
}

static void bench_vocab(const char *dir, const char *rel, const char *corpus, size_t clen, int reps)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    struct st_errbuf eb = {{0}};
    struct st_model *m = NULL;
    if (model_open_file(path, &m, &eb)) {
        printf("%-32s skipped: %s\n", rel, eb.msg);
        return;
    }
    double *t = malloc((size_t)reps * sizeof(*t));
    struct vocab *v = NULL;
    int build_reps = reps < 10 ? reps : 10;
    for (int i = 0; i < build_reps; i++) {
        double t0 = now_ms();
        if (vocab_build(m->gguf, &v, &eb)) {
            printf("%-32s vocab_build failed: %s\n", rel, eb.msg);
            model_close(&m);
            free(t);
            return;
        }
        t[i] = now_ms() - t0;
        if (i + 1 < build_reps) vocab_destroy(&v);
    }
    double build = median(t, build_reps);
    size_t plen = 0;
    char *prompt = make_prompt(v, corpus, clen, 4096, &plen);
    int32_t *ids = NULL;
    size_t n = 0;
    for (int i = 0; i < reps; i++) {
        free(ids);
        double t0 = now_ms();
        tok_encode(v, prompt, plen, true, false, &ids, &n);
        t[i] = now_ms() - t0;
    }
    double enc = median(t, reps);
    for (int i = 0; i < reps; i++) {
        struct tok_buf b = {0};
        double t0 = now_ms();
        detok_decode(v, ids, n, true, &b);
        t[i] = now_ms() - t0;
        tok_buf_free(&b);
    }
    double dec = median(t, reps);
    for (int i = 0; i < reps; i++) {
        struct detok d = {{0}, 0};
        struct tok_buf b = {0};
        double t0 = now_ms();
        for (size_t k = 0; k < n; k++) {
            b.len = 0;
            detok_feed(v, &d, ids + k, 1, false, &b);
        }
        t[i] = now_ms() - t0;
        tok_buf_free(&b);
    }
    double stream = median(t, reps);
    printf("%-32s %6u tokens  build %6.1f ms | encode %zu tokens (%zu bytes) %6.3f ms = %5.2f M "
           "tok/s, %6.1f MB/s | decode %6.3f ms | stream %5.0f ns/token\n",
           rel, vocab_n_tokens(v), build, n, plen, enc, n / enc / 1e3, plen / enc / 1e3, dec,
           stream * 1e6 / n);
    free(ids);
    free(prompt);
    free(t);
    vocab_destroy(&v);
    model_close(&m);
}

struct srv_ctx {
    struct tok_server *srv;
    volatile sig_atomic_t stop;
};

static void *srv_main(void *arg)
{
    struct srv_ctx *c = arg;
    tok_server_run(c->srv, &c->stop);
    return NULL;
}

/* Send n copies of req pipelined (at most 64 in flight), wait for all replies. */
static double pipelined(void *sock, const char *req, int n)
{
    size_t len = strlen(req);
    char buf[64];
    int sent = 0, got = 0;
    double t0 = now_ms();
    while (got < n) {
        while (sent < n && sent - got < 64) {
            zmq_send(sock, req, len, 0);
            sent++;
        }
        if (zmq_recv(sock, buf, sizeof(buf), 0) < 0) break;
        got++;
    }
    return now_ms() - t0;
}

static void bench_server(const char *dir, const char *rel, const char *prompt, int reps)
{
    char path[1024], ep[128], tmp[] = "/tmp/bench-tok.XXXXXX";
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    struct st_errbuf eb = {{0}};
    struct st_model *m = NULL;
    struct vocab *v = NULL;
    if (model_open_file(path, &m, &eb) || vocab_build(m->gguf, &v, &eb) || !mkdtemp(tmp)) {
        printf("server: skipped (%s)\n", eb.msg);
        model_close(&m);
        return;
    }
    snprintf(ep, sizeof(ep), "ipc://%s/tok.sock", tmp);
    void *z = zmq_ctx_new();
    struct srv_ctx c = {NULL, 0};
    struct tok_server_opts o = {ep, 2, 4 << 20, rel, 0};
    pthread_t thr;
    if (tok_server_new(z, &o, v, &c.srv, &eb) || pthread_create(&thr, NULL, srv_main, &c)) {
        printf("server: %s\n", eb.msg);
        goto out;
    }
    void *sock = zmq_socket(z, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_connect(sock, ep);
    json_t *big = json_pack("{s:s,s:s}", "op", "encode", "text", prompt);
    char *big_req = json_dumps(big, JSON_COMPACT);
    const char *small_req = "{\"op\":\"encode\",\"text\":\"Write a short poem about the sea, "
                            "in the style of a sailor who misses home.\"}";
    pipelined(sock, small_req, 200); /* warm up */
    int n_small = reps * 100, n_big = reps * 4;
    double ts = pipelined(sock, small_req, n_small);
    double tb = pipelined(sock, big_req, n_big);
    double *lat = malloc((size_t)reps * 10 * sizeof(*lat));
    for (int i = 0; i < reps * 10; i++)
        lat[i] = pipelined(sock, small_req, 1);
    double l50 = median(lat, reps * 10);
    printf("server %-25s 2 threads: short encode %7.0f req/s | 4096-token encode %6.0f req/s "
           "(%5.2f ms each) | round trip %5.0f us\n",
           rel, n_small / ts * 1e3, n_big / tb * 1e3, tb / n_big, l50 * 1e3);
    free(lat);
    free(big_req);
    json_decref(big);
    zmq_close(sock);
    c.stop = 1;
    pthread_join(thr, NULL);
out:
    tok_server_destroy(&c.srv);
    zmq_ctx_term(z);
    snprintf(path, sizeof(path), "%s/tok.sock", tmp);
    unlink(path);
    rmdir(tmp);
    vocab_destroy(&v);
    model_close(&m);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    if (reps < 1) reps = 1;
    const char *dir = getenv("STAGED_MODELS");
    if (!dir || !*dir) dir = "../shared/models";
    char path[1024];
    snprintf(path, sizeof(path), "%s/README.md", dir);
    size_t clen;
    char *corpus = read_file(path, &clen);
    if (!corpus) {
        fprintf(stderr, "bench-tokenizer: cannot read %s (set STAGED_MODELS)\n", path);
        return 1;
    }
    printf("bench-tokenizer: median of %d runs, prompt = %s repeated/cut to ~4096 tokens\n", reps,
           path);
    static const char *const vocabs[] = {
        "stories260K.gguf",
        "vocab/ggml-vocab-llama-spm.gguf",
        "vocab/ggml-vocab-gpt-2.gguf",
        "vocab/ggml-vocab-qwen2.gguf",
        "vocab/ggml-vocab-llama-bpe.gguf",
    };
    for (size_t i = 0; i < sizeof(vocabs) / sizeof(vocabs[0]); i++)
        bench_vocab(dir, vocabs[i], corpus, clen, reps);
    {
        /* the server bench uses the Qwen2.5 vocab and its 4096-token prompt */
        snprintf(path, sizeof(path), "%s/vocab/ggml-vocab-qwen2.gguf", dir);
        struct st_errbuf eb;
        struct st_model *m = NULL;
        struct vocab *v = NULL;
        if (!model_open_file(path, &m, &eb) && !vocab_build(m->gguf, &v, &eb)) {
            size_t plen;
            char *prompt = make_prompt(v, corpus, clen, 4096, &plen);
            vocab_destroy(&v);
            model_close(&m);
            if (prompt) bench_server(dir, "vocab/ggml-vocab-qwen2.gguf", prompt, reps);
            free(prompt);
        } else {
            model_close(&m);
        }
    }
    free(corpus);
    return 0;
}
