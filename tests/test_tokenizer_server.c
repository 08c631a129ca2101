/*
 * test_tokenizer_server: the tokenizer stage's request handling over real
 * ZeroMQ sockets. A server runs in a thread on an ipc:// endpoint in a temp
 * dir; a DEALER client sends good and malformed requests (raw frames: bad
 * JSON, invalid UTF-8, oversize, two frames, unknown ops and fields) and
 * checks each error code and that the next good request is still answered.
 * Models come from $STAGED_MODELS (default ../shared/models).
 */
#include "common/model.h"
#include "tokenizer/server.h"
#include "tokenizer/vocab.h"

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

struct fixture {
    char dir[64];
    char endpoint[128];
    void *zctx;
    struct st_model *m;
    struct vocab *v;
    struct tok_server *srv;
    pthread_t thr;
    volatile sig_atomic_t stop;
    void *client;
};

static void *run_server(void *arg)
{
    struct fixture *f = arg;
    tok_server_run(f->srv, &f->stop);
    return NULL;
}

static int start(struct fixture *f, const char *rel, size_t max_bytes)
{
    const char *d = getenv("STAGED_MODELS");
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", d && *d ? d : "../shared/models", rel);
    if (access(path, R_OK)) return 1;
    struct st_errbuf eb = {{0}};
    assert_int_equal(model_open_file(path, &f->m, &eb), 0);
    assert_int_equal(vocab_build(f->m->gguf, &f->v, &eb), 0);
    snprintf(f->dir, sizeof(f->dir), "/tmp/staged-toktest.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->endpoint, sizeof(f->endpoint), "ipc://%s/tok.sock", f->dir);
    f->zctx = zmq_ctx_new();
    struct tok_server_opts o = {f->endpoint, 3, max_bytes, rel, 0};
    int rc = tok_server_new(f->zctx, &o, f->v, &f->srv, &eb);
    if (rc) fprintf(stderr, "%s\n", eb.msg);
    assert_int_equal(rc, 0);
    f->stop = 0;
    assert_int_equal(pthread_create(&f->thr, NULL, run_server, f), 0);
    f->client = zmq_socket(f->zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(f->client, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_connect(f->client, f->endpoint), 0);
    return 0;
}

static void stop(struct fixture *f)
{
    zmq_close(f->client);
    f->stop = 1;
    pthread_join(f->thr, NULL);
    tok_server_destroy(&f->srv);
    zmq_ctx_term(f->zctx);
    vocab_destroy(&f->v);
    model_close(&f->m);
    char sock[128];
    snprintf(sock, sizeof(sock), "%s/tok.sock", f->dir);
    unlink(sock);
    rmdir(f->dir);
}

#define START_OR_SKIP(f, rel, max)                                                                 \
    do {                                                                                           \
        if (start(f, rel, max)) {                                                                  \
            skip();                                                                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* Receive one reply frame (5 s timeout) and parse it. */
static json_t *recv_reply(struct fixture *f)
{
    zmq_pollitem_t it = {.socket = f->client, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, f->client, 0) >= 0);
    int more = 0;
    size_t sz = sizeof(more);
    zmq_getsockopt(f->client, ZMQ_RCVMORE, &more, &sz);
    assert_int_equal(more, 0); /* exactly one frame */
    json_error_t err;
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, &err);
    zmq_msg_close(&m);
    assert_non_null(j);
    return j;
}

static json_t *call_raw(struct fixture *f, const void *body, size_t len)
{
    assert_int_equal(zmq_send(f->client, body, len, 0), (int)len);
    return recv_reply(f);
}

static json_t *call(struct fixture *f, const char *json)
{
    return call_raw(f, json, strlen(json));
}

static const char *err_code(const json_t *r)
{
    return json_string_value(json_object_get(json_object_get(r, "error"), "code"));
}

static void expect_error(struct fixture *f, const void *body, size_t len, const char *code)
{
    json_t *r = call_raw(f, body, len);
    const char *c = err_code(r);
    if (!c || strcmp(c, code)) {
        char *s = json_dumps(r, 0);
        fprintf(stderr, "request %.60s: expected %s, got %s\n", (const char *)body, code, s);
        free(s);
    }
    assert_non_null(c);
    assert_string_equal(c, code);
    json_decref(r);
}

static void expect_ids(const json_t *r, const int32_t *want, size_t n)
{
    json_t *t = json_object_get(r, "tokens");
    assert_true(json_is_array(t));
    assert_int_equal(json_array_size(t), n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(json_integer_value(json_array_get(t, i)), want[i]);
}

/* stories260K reference prompt over the wire; then every kind of bad request
 * gets its error and the server keeps answering. */
static void test_encode_and_bad_requests(void **st)
{
    (void)st;
    struct fixture f = {0};
    START_OR_SKIP(&f, "stories260K.gguf", 4096);
    int32_t want[] = {1, 403, 407, 261, 378};
    json_t *r = call(&f, "{\"id\":1,\"op\":\"encode\",\"text\":\"Once upon a time\"}");
    expect_ids(r, want, 5);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    json_decref(r);

    char big[5000];
    memset(big, ' ', sizeof(big));
    memcpy(big, "{\"op\":\"health\"", 14);
    big[sizeof(big) - 1] = '}';
    struct {
        const char *body;
        size_t len;
        const char *code;
    } bad[] = {
        {"{\"op\":\"encode\",\"text\":", 0, "bad_request"}, /* truncated JSON */
        {"[1,2,3]", 0, "bad_request"},                      /* not an object */
        {"", 0, "bad_request"},                             /* empty frame */
        {"{\"op\":\"encode\",\"text\":\"\xff\xfe\"}", 0, "invalid_utf8"},
        {"{\"op\":\"encode\",\"text\":\"\xc0\xaf\"}", 0, "invalid_utf8"}, /* overlong */
        {big, sizeof(big), "too_large"},
        {"{\"id\":2,\"op\":\"fly\"}", 0, "unknown_op"},
        {"{\"id\":3,\"op\":\"encode\",\"text\":\"x\",\"colour\":1}", 0, "unknown_field"},
        {"{\"id\":4,\"op\":\"encode\"}", 0, "bad_request"}, /* no text */
        {"{\"id\":5,\"op\":\"encode\",\"text\":7}", 0, "bad_request"},
        {"{\"id\":6,\"op\":\"encode\",\"text\":\"x\",\"add_special\":\"yes\"}", 0, "bad_request"},
        {"{\"id\":7,\"op\":\"decode\",\"tokens\":[1,512]}", 0, "bad_request"}, /* out of vocab */
        {"{\"id\":8,\"op\":\"decode\",\"tokens\":[1.5]}", 0, "bad_request"},
        {"{\"id\":9,\"op\":\"detok\",\"tokens\":[1],\"pending\":\"zz\"}", 0, "bad_request"},
        {"{\"id\":10,\"op\":\"detok\",\"tokens\":[1],\"pending\":\"f09f9f9f\"}", 0, "bad_request"},
        {"{\"id\":11,\"op\":\"chat\",\"messages\":[]}", 0, "bad_request"},
        {"{\"id\":12,\"op\":\"chat\",\"messages\":[{\"role\":\"user\"}]}", 0, "bad_request"},
        {"{\"id\":13,\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"n\":1}]}",
         0, "unknown_field"},
        {"{\"id\":14,\"op\":\"chat\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 0,
         "bad_request"},
        {"{\"id\":15,\"proto\":2,\"op\":\"health\"}", 0, "bad_request"},
        {"{\"id\":{\"a\":1},\"op\":\"health\"}", 0, "bad_request"},
        {"{\"id\":16}", 0, "bad_request"},                         /* no op */
        {"{\"op\":\"health\",\"op\":\"info\"}", 0, "bad_request"}, /* duplicate key */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = bad[i].len ? bad[i].len : strlen(bad[i].body);
        expect_error(&f, bad[i].body, len, bad[i].code);
        /* the next good request is answered */
        r = call(&f, "{\"id\":\"ok\",\"op\":\"health\"}");
        assert_true(json_is_true(json_object_get(r, "ok")));
        assert_string_equal(json_string_value(json_object_get(r, "id")), "ok");
        json_decref(r);
    }
    r = call(&f, "{\"op\":\"health\"}");
    assert_int_equal(json_integer_value(json_object_get(r, "pid")), getpid());
    assert_int_equal(json_integer_value(json_object_get(r, "vocab")), 512);
    assert_true(json_is_null(json_object_get(r, "id")));
    json_decref(r);
    /* an error echoes the request's id */
    r = call(&f, "{\"id\":\"abc\",\"op\":\"nope\"}");
    assert_string_equal(json_string_value(json_object_get(r, "id")), "abc");
    json_decref(r);
    /* two frames in one message */
    assert_int_equal(zmq_send(f.client, "{\"op\":\"health\"}", 15, ZMQ_SNDMORE), 15);
    r = call(&f, "{\"op\":\"health\"}");
    assert_string_equal(err_code(r), "bad_request");
    json_decref(r);
    r = call(&f, "{\"id\":99,\"op\":\"decode\",\"tokens\":[1,403,407,261,378]}");
    assert_string_equal(json_string_value(json_object_get(r, "text")), "Once upon a time");
    json_decref(r);
    stop(&f);
}

/* Many requests in flight on one socket: every one is answered, with its id. */
static void test_many_in_flight(void **st)
{
    (void)st;
    struct fixture f = {0};
    START_OR_SKIP(&f, "stories260K.gguf", 1 << 20);
    enum { N = 200 };
    for (int i = 0; i < N; i++) {
        char req[128];
        int l = snprintf(req, sizeof(req),
                         "{\"id\":%d,\"op\":\"encode\",\"text\":\"Once upon a time\"}", i);
        assert_int_equal(zmq_send(f.client, req, (size_t)l, 0), l);
    }
    char seen[N] = {0};
    int32_t want[] = {1, 403, 407, 261, 378};
    for (int i = 0; i < N; i++) {
        json_t *r = recv_reply(&f);
        json_int_t id = json_integer_value(json_object_get(r, "id"));
        assert_true(id >= 0 && id < N && !seen[id]);
        seen[id] = 1;
        expect_ids(r, want, 5);
        json_decref(r);
    }
    stop(&f);
}

/* A slow request (1 MB of spaces: one pre-token word, ~1M BPE merges, about
 * a second) does not hold up a small one sent after it from another client:
 * the small reply arrives first. With one worker thread this fails. */
static void test_slow_request_does_not_block(void **st)
{
    (void)st;
    struct fixture f = {0};
    START_OR_SKIP(&f, "vocab/ggml-vocab-qwen2.gguf", 2 << 20);
    size_t n = 1000000;
    char *big = malloc(n + 64);
    int l = sprintf(big, "{\"id\":\"big\",\"op\":\"encode\",\"text\":\"");
    memset(big + l, ' ', n);
    strcpy(big + l + n, "\"}");
    assert_int_equal(zmq_send(f.client, big, strlen(big), 0), (int)strlen(big));
    free(big);
    void *c2 = zmq_socket(f.zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(c2, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_connect(c2, f.endpoint), 0);
    usleep(20000); /* let the big one reach a worker first */
    const char *small = "{\"id\":\"small\",\"op\":\"encode\",\"text\":\"Hello\"}";
    assert_int_equal(zmq_send(c2, small, strlen(small), 0), (int)strlen(small));
    zmq_pollitem_t it[2] = {{.socket = f.client, .events = ZMQ_POLLIN},
                            {.socket = c2, .events = ZMQ_POLLIN}};
    assert_true(zmq_poll(it, 2, 10000) >= 1);
    assert_true(it[1].revents & ZMQ_POLLIN);     /* the small reply is there ... */
    bool big_first = it[0].revents & ZMQ_POLLIN; /* ... and came before the big one */
    assert_false(big_first);
    char buf[256];
    int r = zmq_recv(c2, buf, sizeof(buf) - 1, 0);
    assert_true(r > 0);
    buf[r] = 0;
    assert_non_null(strstr(buf, "\"small\""));
    json_t *j = recv_reply(&f); /* the big one completes too */
    assert_string_equal(json_string_value(json_object_get(j, "id")), "big");
    assert_true(json_array_size(json_object_get(j, "tokens")) > 1000);
    json_decref(j);
    zmq_close(c2);
    stop(&f);
}

/* Stateless streaming: the caller carries "pending" between calls. */
static void test_detok_pending(void **st)
{
    (void)st;
    struct fixture f = {0};
    START_OR_SKIP(&f, "vocab/ggml-vocab-qwen2.gguf", 1 << 20);
    /* encode over the wire, then stream the ids back one call per token */
    json_t *r = call(&f, "{\"id\":1,\"op\":\"encode\",\"text\":\"A \xf0\x9f\xa6\x99!\"}");
    json_t *toks = json_object_get(r, "tokens");
    assert_true(json_array_size(toks) >= 3);
    char pending[16] = "";
    char text[64] = "";
    int whole = 0;
    for (size_t i = 0; i < json_array_size(toks); i++) {
        char req[160];
        snprintf(req, sizeof(req),
                 "{\"op\":\"detok\",\"tokens\":[%lld],\"pending\":\"%s\",\"first\":%s}",
                 (long long)json_integer_value(json_array_get(toks, i)), pending,
                 i == 0 ? "true" : "false");
        json_t *d = call(&f, req);
        const char *t = json_string_value(json_object_get(d, "text"));
        const char *p = json_string_value(json_object_get(d, "pending"));
        assert_non_null(t);
        assert_non_null(p);
        if (strstr(t, "\xf0\x9f\xa6\x99")) whole++;
        strcat(text, t);
        snprintf(pending, sizeof(pending), "%s", p);
        json_decref(d);
    }
    assert_int_equal(whole, 1);
    assert_string_equal(pending, "");
    assert_string_equal(text, "A \xf0\x9f\xa6\x99!");
    json_decref(r);
    /* chat: rendered text and its tokens, specials parsed in the template part */
    r = call(&f,
             "{\"id\":2,\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    assert_string_equal(
        json_string_value(json_object_get(r, "text")),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    toks = json_object_get(r, "tokens");
    assert_int_equal(json_integer_value(json_array_get(toks, 0)), 151644);
    json_decref(r);
    r = call(&f, "{\"id\":3,\"op\":\"info\"}");
    assert_string_equal(json_string_value(json_object_get(r, "chat_template")), "qwen2.5");
    assert_int_equal(json_integer_value(json_object_get(r, "eos")), 151645);
    assert_false(json_is_true(json_object_get(r, "add_bos")));
    json_decref(r);
    stop(&f);
}

/* Llama 3.1: the template writes <|begin_of_text|> and add_bos is true: BOS once. */
static void test_chat_bos_once(void **st)
{
    (void)st;
    struct fixture f = {0};
    START_OR_SKIP(&f, "vocab/ggml-vocab-llama-bpe.gguf", 1 << 20);
    json_t *r = call(&f, "{\"id\":1,\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":"
                         "\"hi\"}],\"add_generation_prompt\":true}");
    json_t *toks = json_object_get(r, "tokens");
    assert_int_equal(json_integer_value(json_array_get(toks, 0)), 128000);
    assert_int_not_equal(json_integer_value(json_array_get(toks, 1)), 128000);
    json_decref(r);
    /* encode with add_special adds BOS (add_bos_token = true) */
    r = call(&f, "{\"id\":2,\"op\":\"encode\",\"text\":\"hi\",\"add_special\":true}");
    toks = json_object_get(r, "tokens");
    assert_int_equal(json_integer_value(json_array_get(toks, 0)), 128000);
    json_decref(r);
    stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_and_bad_requests),
        cmocka_unit_test(test_many_in_flight),
        cmocka_unit_test(test_slow_request_does_not_block),
        cmocka_unit_test(test_detok_pending),
        cmocka_unit_test(test_chat_bos_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
