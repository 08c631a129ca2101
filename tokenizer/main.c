/*
 * staged-tokenizer: the tokenizer stage, and two command-line tools.
 *
 *   staged-tokenizer [serve] [--config FILE] [--check-config] [--model FILE]
 *       Serve encode / chat / decode / detok on [tokenizer] endpoint
 *       (docs/tokenizer-protocol.md). The vocab comes from the loader's
 *       shared-memory segment ([shm] name); the model file is never read.
 *       --model FILE builds it from a GGUF file instead (tests, development).
 *   staged-tokenizer tokenize MODEL.gguf [--bos] [--special]
 *       Read UTF-8 text from stdin (all of it, verbatim) and print the token
 *       ids, space separated, on one line. --bos adds BOS / EOS as the model
 *       says; --special recognises control tokens in the text.
 *   staged-tokenizer detokenize MODEL.gguf [--special]
 *       Read whitespace-separated ids from stdin and print their text (no
 *       newline added); --special renders control tokens.
 */
#include "common/log.h"
#include "common/stage.h"
#include "common/model.h"
#include "common/ready.h"
#include "conf/config.h"
#include "shm/seg.h"
#include "tokenizer/chat.h"
#include "tokenizer/detok.h"
#include "tokenizer/server.h"
#include "tokenizer/vocab.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static void usage(void)
{
    fprintf(stderr,
            "usage: staged-tokenizer [serve] [--config FILE] [--check-config] [--model FILE]\n"
            "       staged-tokenizer tokenize MODEL.gguf [--bos] [--special] < text\n"
            "       staged-tokenizer detokenize MODEL.gguf [--special] < ids\n");
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *p = malloc(cap);
    while (p) {
        size_t r = fread(p + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
        if (n == cap) {
            char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                return NULL;
            }
            p = q;
            cap *= 2;
        }
    }
    if (p) {
        p[n < cap ? n : cap - 1] = 0;
        *len = n;
    }
    return p;
}

static int cli(int argc, char **argv)
{
    bool tokenize = !strcmp(argv[1], "tokenize"), bos = false, special = false;
    if (argc < 3) {
        usage();
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--bos") && tokenize)
            bos = true;
        else if (!strcmp(argv[i], "--special"))
            special = true;
        else {
            usage();
            return 2;
        }
    }
    struct st_errbuf eb = {{0}};
    struct st_model *m = NULL;
    struct vocab *v = NULL;
    if (model_open_file(argv[2], &m, &eb) || vocab_build(m->gguf, &v, &eb)) {
        fprintf(stderr, "staged-tokenizer: %s\n", eb.msg);
        model_close(&m);
        return 1;
    }
    size_t len = 0;
    char *in = read_all(stdin, &len);
    int rc = 1;
    if (!in) {
        fprintf(stderr, "staged-tokenizer: cannot read stdin\n");
        goto out;
    }
    if (tokenize) {
        int32_t *ids;
        size_t n;
        if (tok_encode(v, in, len, bos, special, &ids, &n)) {
            fprintf(stderr, "staged-tokenizer: out of memory\n");
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
    } else {
        struct tok_ids t = {0};
        char *p = in, *end;
        for (;;) {
            while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
                p++;
            if (!*p) break;
            errno = 0;
            long x = strtol(p, &end, 10);
            if (end == p || errno || x < 0 || x >= (long)vocab_n_tokens(v)) {
                fprintf(stderr, "staged-tokenizer: input byte %zu: not a token id in 0..%u\n",
                        (size_t)(p - in), vocab_n_tokens(v) - 1);
                tok_ids_free(&t);
                goto out;
            }
            tok_ids_push(&t, (int32_t)x);
            p = end;
        }
        struct tok_buf text = {0};
        detok_decode(v, t.p, t.n, !special, &text);
        fwrite(text.p, 1, text.len, stdout);
        tok_buf_free(&text);
        tok_ids_free(&t);
    }
    rc = 0;
out:
    free(in);
    vocab_destroy(&v);
    model_close(&m);
    return rc;
}

/* Attach the loader's segment, waiting up to 30 s for it to become ready. */
static int attach(const char *name, struct seg **seg)
{
    struct st_errbuf eb = {{0}};
    for (int i = 0; i < 300 && !stage_stop; i++) {
        int rc = seg_attach(name, false, seg, &eb);
        if (rc == 0) return 0;
        if (rc != ST_ENOTFOUND && rc != ST_ESTATE) break;
        if (i == 0) log_info("waiting for segment %s: %s", name, eb.msg);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    log_error("cannot attach segment %s: %s", name, eb.msg);
    return 1;
}

int main(int argc, char **argv)
{
    log_set_name("tokenizer");
    if (argc >= 2 && (!strcmp(argv[1], "tokenize") || !strcmp(argv[1], "detokenize")))
        return cli(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "serve")) {
        memmove(argv + 1, argv + 2, (size_t)(argc - 2) * sizeof(*argv));
        argc--;
    }
    struct staged_config cfg;
    int rc = stage_init("tokenizer", &argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    const char *model_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model_file = argv[++i];
        } else {
            usage();
            return 2;
        }
    }

    struct st_errbuf eb = {{0}};
    struct st_model *file_model = NULL;
    struct seg *seg = NULL;
    const struct st_model *m;
    if (model_file) {
        if (model_open_file(model_file, &file_model, &eb)) {
            log_error("%s", eb.msg);
            return 1;
        }
        m = file_model;
    } else {
        if (attach(cfg.shm.name, &seg)) return 1;
        m = seg_model(seg);
    }
    const char *path = model_file ? model_file : cfg.model.path;
    const char *base = strrchr(path, '/');
    const char *name = cfg.model.name[0] ? cfg.model.name : base ? base + 1 : path;

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct vocab *v = NULL;
    rc = vocab_build(m->gguf, &v, &eb);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) {
        log_error("vocab: %s", eb.msg);
        goto out;
    }
    /* the vocab holds its own copy of everything: let go of the segment so a
     * loader that rebuilds it is not kept from freeing the old one */
    seg_detach(&seg);
    model_close(&file_model);
    const char *tmpl = vocab_chat_template(v);
    if (tmpl && *tmpl && chat_detect(tmpl) == CHAT_PLAIN)
        log_warn("chat template not recognised (supported: Qwen2.5/ChatML, Llama 3/3.1, Llama 2); "
                 "chat requests use the plain fallback");
    log_info("vocab: %u tokens (%s, pre %s, chat template %s) built in %.1f ms", vocab_n_tokens(v),
             vocab_kind(v) == VOCAB_SPM ? "spm" : "bpe", vocab_pre_name(v),
             chat_family_name(chat_detect(vocab_chat_template(v))),
             (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);

    void *zctx = zmq_ctx_new();
    struct tok_server *srv = NULL;
    struct tok_server_opts o = {cfg.tokenizer.endpoint, (int)cfg.tokenizer.threads,
                                (size_t)cfg.tokenizer.max_request_bytes, name,
                                (long long)cfg.tokenizer.faults.hang_at_request};
    rc = tok_server_new(zctx, &o, v, &srv, &eb);
    if (rc) {
        log_error("%s", eb.msg);
    } else {
        log_info("ready: serving %s on %s with %d threads", name, o.endpoint, o.threads);
        ready_signal();
        rc = tok_server_run(srv, &stage_stop);
        if (rc)
            log_error("socket failure, exiting");
        else
            log_info("shutting down");
    }
    tok_server_destroy(&srv);
    zmq_ctx_term(zctx);
out:
    vocab_destroy(&v);
    model_close(&file_model);
    seg_detach(&seg);
    return rc ? 1 : 0;
}
