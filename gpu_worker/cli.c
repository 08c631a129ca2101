/* cli.c - eval / generate subcommands of staged-worker; see cli.h. */
#include "cli.h"

#include "common/model.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/cpu_backend.h"
#include "gpu_worker/registry.h"
#include "gpu_worker/sample.h"
#include "tokenizer/vocab.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parse "5,17,300" into a new array; returns the count or -1. */
static int parse_ids(const char *s, int32_t **out)
{
    int cap = 16, n = 0;
    int32_t *v = malloc(sizeof(int32_t) * cap);
    if (!v) return -1;
    while (*s) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (n == cap) {
            int32_t *nv = realloc(v, sizeof(int32_t) * (cap *= 2));
            if (!nv) {
                free(v);
                return -1;
            }
            v = nv;
        }
        v[n++] = (int32_t)x;
        s = *end ? end + 1 : end;
    }
    *out = v;
    return n;
}

struct run {
    struct st_model *m;
    const struct backend_ops *ops;
    struct backend *b;
};

static int run_open(struct run *r, const char *path, const char *backend, int threads, int max_ctx,
                    int max_batch)
{
    struct st_errbuf eb = {{0}};
    if (model_open_file(path, &r->m, &eb)) {
        fprintf(stderr, "staged-worker: %s: %s\n", path, eb.msg);
        return 1;
    }
    r->ops = registry_find(backend, &eb);
    if (!r->ops) {
        fprintf(stderr, "staged-worker: %s\n", eb.msg);
        return 1;
    }
    struct backend_config cfg = {
        .n_threads = threads, .max_seqs = 1, .max_ctx = max_ctx, .max_batch = max_batch};
    if (r->ops->create(r->m, &cfg, &r->b, &eb)) {
        fprintf(stderr, "staged-worker: backend %s: %s\n", r->ops->name, eb.msg);
        return 1;
    }
    return 0;
}

static void run_close(struct run *r)
{
    if (r->b) r->ops->destroy(&r->b);
    model_close(&r->m);
}

/* Feed tokens[0..n) at positions pos0.. of sequence 0; logits of every
 * token (all = true) or of the last only. */
static int feed(struct run *r, const int32_t *tokens, int n, int pos0, bool all, float *logits)
{
    int32_t *pos = malloc(sizeof(int32_t) * n), *seq = calloc((size_t)n, sizeof(int32_t));
    int8_t *lg = calloc((size_t)n, 1);
    int rc = ST_ENOMEM;
    if (pos && seq && lg) {
        for (int i = 0; i < n; i++) {
            pos[i] = pos0 + i;
            lg[i] = all || i == n - 1;
        }
        struct batch bt = {.n_tokens = n, .token = tokens, .pos = pos, .seq = seq, .logits = lg};
        rc = r->ops->forward(r->b, &bt, logits);
    }
    free(pos);
    free(seq);
    free(lg);
    if (rc) fprintf(stderr, "staged-worker: forward failed: %s\n", st_strerror(rc));
    return rc;
}

static int usage_eval(void)
{
    fprintf(stderr, "usage: staged-worker eval MODEL.gguf --tokens 5,17,300 --gen N --logits "
                    "OUT.bin [--threads N] [--backend cpu|cuda] [--reference]\n");
    return 2;
}

int cli_eval(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *backend = "cpu", *toks = NULL;
    int n_gen = 0, threads = 0;
    bool reference = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--tokens") && has)
            toks = argv[++i];
        else if (!strcmp(a, "--gen") && has)
            n_gen = atoi(argv[++i]);
        else if (!strcmp(a, "--logits") && has)
            out = argv[++i];
        else if (!strcmp(a, "--threads") && has)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--backend") && has)
            backend = argv[++i];
        else if (!strcmp(a, "--reference"))
            reference = true;
        else if (a[0] != '-' && !model)
            model = a;
        else
            return usage_eval();
    }
    int32_t *prompt = NULL;
    int n_prompt = toks ? parse_ids(toks, &prompt) : -1;
    if (!model || !out || n_prompt < 1 || n_gen < 0) {
        if (toks && n_prompt < 1)
            fprintf(stderr, "staged-worker: --tokens: expected comma-separated ids\n");
        free(prompt);
        return usage_eval();
    }
    struct run r = {0};
    int status = 1;
    float *logits = NULL;
    FILE *f = NULL;
    int32_t *gen = calloc((size_t)n_gen + 1, sizeof(int32_t));
    if (run_open(&r, model, backend, threads, n_prompt + n_gen + 1, n_prompt)) goto out;
    if (reference && !strcmp(r.ops->name, "cpu")) cpu_backend_set_reference(r.b, true);
    int nv = (int)r.m->hp.n_vocab;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] >= nv) {
            fprintf(stderr, "staged-worker: --tokens: id %d >= n_vocab %d\n", prompt[i], nv);
            goto out;
        }
    logits = malloc(sizeof(float) * (size_t)nv * (n_prompt + n_gen));
    if (!logits || !gen) goto out;
    if (feed(&r, prompt, n_prompt, 0, true, logits)) goto out;
    const float *last = logits + (size_t)(n_prompt - 1) * nv;
    for (int s = 0; s < n_gen; s++) {
        gen[s] = sample_argmax(last, nv);
        float *dst = logits + (size_t)(n_prompt + s) * nv;
        if (feed(&r, &gen[s], 1, n_prompt + s, false, dst)) goto out;
        last = dst;
    }
    f = fopen(out, "wb");
    if (!f) {
        fprintf(stderr, "staged-worker: %s: %s\n", out, strerror(errno));
        goto out;
    }
    int32_t hdr[3] = {nv, n_prompt, n_gen};
    if (fwrite(hdr, 4, 3, f) != 3 ||
        fwrite(logits, sizeof(float) * nv, (size_t)(n_prompt + n_gen), f) !=
            (size_t)(n_prompt + n_gen) ||
        fwrite(gen, 4, (size_t)n_gen, f) != (size_t)n_gen) {
        fprintf(stderr, "staged-worker: %s: write failed\n", out);
        goto out;
    }
    status = 0;
out:
    if (f && fclose(f) && status == 0) {
        fprintf(stderr, "staged-worker: %s: %s\n", out, strerror(errno));
        status = 1;
    }
    free(logits);
    free(gen);
    free(prompt);
    run_close(&r);
    return status;
}

static int usage_generate(void)
{
    fprintf(stderr,
            "usage: staged-worker generate MODEL.gguf --prompt TEXT | --prompt-tokens 1,2,3 "
            "[--max-tokens N] [--stop STR]... [--ids] "
            "[--seed N] [--temperature X] [--top-k N] [--top-p X] [--min-p X] "
            "[--repeat-penalty X] [--repeat-last-n N] [--presence-penalty X] "
            "[--frequency-penalty X] [--stop-id N]... [--threads N] [--backend cpu|cuda]\n");
    return 2;
}

int cli_generate(int argc, char **argv)
{
    const char *model = NULL, *backend = "cpu", *toks = NULL, *text = NULL;
    int max_tokens = 64, threads = 0, n_stop = 0, n_stop_str = 0;
    int32_t stop_ids[64];
    const char *stop_str[16];
    bool print_ids = false;
    struct sample_params sp;
    sample_params_default(&sp);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        const char *v = has ? argv[i + 1] : NULL;
        if (!strcmp(a, "--prompt-tokens") && has)
            toks = v;
        else if (!strcmp(a, "--prompt") && has)
            text = v;
        else if (!strcmp(a, "--stop") && has && n_stop_str < 16)
            stop_str[n_stop_str++] = v;
        else if (!strcmp(a, "--ids")) {
            print_ids = true;
            continue;
        } else if (!strcmp(a, "--max-tokens") && has)
            max_tokens = atoi(v);
        else if (!strcmp(a, "--seed") && has)
            sp.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--temperature") && has)
            sp.temperature = strtof(v, NULL);
        else if (!strcmp(a, "--top-k") && has)
            sp.top_k = atoi(v);
        else if (!strcmp(a, "--top-p") && has)
            sp.top_p = strtof(v, NULL);
        else if (!strcmp(a, "--min-p") && has)
            sp.min_p = strtof(v, NULL);
        else if (!strcmp(a, "--repeat-penalty") && has)
            sp.repeat_penalty = strtof(v, NULL);
        else if (!strcmp(a, "--repeat-last-n") && has)
            sp.repeat_last_n = atoi(v);
        else if (!strcmp(a, "--presence-penalty") && has)
            sp.presence_penalty = strtof(v, NULL);
        else if (!strcmp(a, "--frequency-penalty") && has)
            sp.frequency_penalty = strtof(v, NULL);
        else if (!strcmp(a, "--stop-id") && has && n_stop < 64)
            stop_ids[n_stop++] = atoi(v);
        else if (!strcmp(a, "--threads") && has)
            threads = atoi(v);
        else if (!strcmp(a, "--backend") && has)
            backend = v;
        else if (a[0] != '-' && !model) {
            model = a;
            continue;
        } else
            return usage_generate();
        i++;
    }
    int32_t *prompt = NULL;
    int n_prompt = toks ? parse_ids(toks, &prompt) : -1;
    if (!model || (toks && n_prompt < 1) || (!toks && !text) || (toks && text) || max_tokens < 0) {
        free(prompt);
        return usage_generate();
    }
    struct run r = {0};
    struct vocab *voc = NULL;
    struct tok_buf out = {0};
    int status = 1;
    int32_t *hist = NULL;
    float *logits = NULL;
    struct st_errbuf eb = {{0}};
    if (model_open_file(model, &r.m, &eb)) {
        fprintf(stderr, "staged-worker: %s: %s\n", model, eb.msg);
        goto out;
    }
    if (vocab_build(r.m->gguf, &voc, &eb)) {
        if (text) {
            fprintf(stderr, "staged-worker: %s: no usable tokenizer: %s\n", model, eb.msg);
            goto out;
        }
        print_ids = true;
    }
    if (text) {
        size_t n = 0;
        if (tok_encode(voc, text, strlen(text), true, false, &prompt, &n) || n == 0) {
            fprintf(stderr, "staged-worker: --prompt: encoding failed or empty\n");
            goto out;
        }
        n_prompt = (int)n;
    }
    model_close(&r.m);
    hist = malloc(sizeof(int32_t) * (size_t)(n_prompt + max_tokens + 1));
    if (!hist || run_open(&r, model, backend, threads, n_prompt + max_tokens + 1, n_prompt))
        goto out;
    int nv = (int)r.m->hp.n_vocab;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= nv) {
            fprintf(stderr, "staged-worker: prompt token %d out of range\n", prompt[i]);
            goto out;
        }
    uint32_t eos_u = UINT32_MAX;
    gguf_get_u32(r.m->gguf, "tokenizer.ggml.eos_token_id", &eos_u);
    int32_t eos = eos_u < (uint32_t)nv ? (int32_t)eos_u : -1;
    logits = malloc(sizeof(float) * nv);
    if (!logits) goto out;
    memcpy(hist, prompt, sizeof(int32_t) * n_prompt);
    int n = n_prompt;
    if (feed(&r, prompt, n_prompt, 0, false, logits)) goto out;
    size_t printed = 0;
    for (int s = 0; s < max_tokens; s++) {
        int32_t t = sample_next(&sp, logits, nv, hist, n, n, 0, NULL);
        if (sample_is_stop_token(t, eos, stop_ids, n_stop) || (voc && vocab_is_eog(voc, t))) break;
        hist[n++] = t;
        if (print_ids) {
            printf("%s%d", s ? " " : "", t);
        } else {
            char piece[256];
            int pl = tok_token_piece(voc, t, false, piece, sizeof(piece));
            if (pl > 0 &&
                tok_buf_add(&out, piece, (size_t)pl < sizeof(piece) ? (size_t)pl : sizeof(piece)))
                goto out;
            size_t at;
            bool stopped =
                out.p && sample_stop_find(out.p, out.len, stop_str, n_stop_str, &at) >= 0;
            size_t upto = stopped ? at
                                  : out.len - sample_stop_holdback(out.p ? out.p : "", out.len,
                                                                   stop_str, n_stop_str);
            if (upto > printed) {
                fwrite(out.p + printed, 1, upto - printed, stdout);
                printed = upto;
            }
            if (stopped) break;
        }
        fflush(stdout);
        if (s + 1 < max_tokens && feed(&r, &t, 1, n - 1, false, logits)) goto out;
    }
    if (!print_ids && out.p && printed < out.len &&
        sample_stop_find(out.p, out.len, stop_str, n_stop_str, NULL) < 0)
        fwrite(out.p + printed, 1, out.len - printed, stdout);
    printf("\n");
    status = 0;
out:
    tok_buf_free(&out);
    vocab_destroy(&voc);
    free(logits);
    free(hist);
    free(prompt);
    run_close(&r);
    return status;
}
