/*
 * test_client: the frontend client library (frontend/client.h) against a
 * frontend played by the test on a ROUTER socket, message by message as
 * docs/protocol.md describes them, including a frontend restart in the
 * middle of a stream (the "Faults and restarts" contract).
 */
#include "frontend/client.h"

#include "common/proto.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

/* ---- the scripted frontend ---- */

struct fake {
    void *zctx;
    void *router;
    char endpoint[128];
    char dir[64];
    uint8_t ident[256];
    size_t ident_len;
};

static void fake_bind(struct fake *f)
{
    f->router = zmq_socket(f->zctx, ZMQ_ROUTER);
    assert_non_null(f->router);
    int linger = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_bind(f->router, f->endpoint), 0);
}

static int fake_setup(void **state)
{
    struct fake *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/staged-tc.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->endpoint, sizeof(f->endpoint), "ipc://%s/fe.sock", f->dir);
    f->zctx = zmq_ctx_new();
    fake_bind(f);
    *state = f;
    return 0;
}

static int fake_teardown(void **state)
{
    struct fake *f = *state;
    if (f->router) zmq_close(f->router);
    zmq_ctx_term(f->zctx);
    char sock[128];
    snprintf(sock, sizeof(sock), "%s/fe.sock", f->dir);
    unlink(sock);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Receive one client message within timeout_ms (NULL on timeout). */
static json_t *fake_recv(struct fake *f, int timeout_ms)
{
    zmq_pollitem_t it = {.socket = f->router, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return NULL;
    struct proto_msg m;
    assert_int_equal(proto_recv(f->router, 1 << 20, &m), 0);
    assert_non_null(m.body);
    memcpy(f->ident, m.ident, m.ident_len);
    f->ident_len = m.ident_len;
    json_t *b = m.body;
    m.body = NULL;
    return b;
}

/* Send a reply built with json_pack's format (stolen). */
static void fake_send(struct fake *f, json_t *m)
{
    assert_non_null(m);
    assert_int_equal(proto_send(f->router, f->ident, f->ident_len, m), 0);
    json_decref(m);
}

static void fake_restart(struct fake *f)
{
    zmq_close(f->router);
    f->router = NULL;
    usleep(50 * 1000);
    fake_bind(f);
}

/* ---- what the caller sees ---- */

struct seen {
    pthread_mutex_t mu;
    char text[4096];
    size_t len;
    int chunks;
    int last_seq;
    bool seq_ok;
    int terminal;
    enum client_event_type type;
    char finish[32], code[32];
    char final_text[4096];
    int64_t seed;
    int attempts;
};

static void seen_init(struct seen *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    s->last_seq = -1;
    s->seq_ok = true;
}

static void on_ev(const struct client_event *ev)
{
    struct seen *s = ev->user;
    pthread_mutex_lock(&s->mu);
    if (ev->type == CLIENT_CHUNK) {
        /* no cmocka asserts here: this runs on the library's I/O thread */
        if (ev->offset != s->len) s->seq_ok = false; /* continuous: no gap, no overlap */
        if (s->len + ev->len >= sizeof(s->text))
            s->seq_ok = false;
        else
            memcpy(s->text + s->len, ev->text, ev->len);
        if (s->seq_ok) s->len += ev->len;
        s->text[s->len] = 0;
        if (ev->seq != s->last_seq + 1) s->seq_ok = false;
        s->last_seq = ev->seq;
        s->chunks++;
    } else {
        s->terminal++;
        s->type = ev->type;
        snprintf(s->finish, sizeof(s->finish), "%s", ev->finish_reason ? ev->finish_reason : "");
        snprintf(s->code, sizeof(s->code), "%s", ev->code ? ev->code : "");
        snprintf(s->final_text, sizeof(s->final_text), "%.*s", (int)ev->len, ev->text);
    }
    s->seed = ev->seed;
    s->attempts = ev->attempts;
    pthread_mutex_unlock(&s->mu);
}

static bool wait_terminal(struct seen *s, int timeout_ms)
{
    int64_t until = proto_now_ms() + timeout_ms;
    while (proto_now_ms() < until) {
        pthread_mutex_lock(&s->mu);
        int t = s->terminal;
        pthread_mutex_unlock(&s->mu);
        if (t) return true;
        usleep(5000);
    }
    return false;
}

static struct client *new_client(const char *ep, int idle_ms)
{
    struct client_opts o = {.endpoint = ep, .idle_timeout_ms = idle_ms};
    struct client *c = NULL;
    struct st_errbuf eb = {{0}};
    assert_int_equal(client_new(&o, &c, &eb), 0);
    return c;
}

static json_t *chunk(const char *id, int seq, int off, const char *text)
{
    return json_pack("{s:s,s:s,s:i,s:i,s:s,s:[]}", "type", "chunk", "id", id, "seq", seq, "offset",
                     off, "text", text, "tokens");
}

static json_t *final_msg(const char *id, const char *reason, const char *text)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:{s:i,s:i}}", "type", "final", "id", id, "finish_reason",
                     reason, "text", text, "usage", "prompt_tokens", 3, "completion_tokens", 4);
}

/* ---- tests ---- */

static void test_bad_arguments(void **state)
{
    (void)state;
    struct client *c = NULL;
    struct st_errbuf eb = {{0}};
    struct client_opts none = {0};
    assert_int_equal(client_new(&none, &c, &eb), ST_EINVAL);
    assert_null(c);
    assert_non_null(strstr(eb.msg, "endpoint"));

    c = new_client("ipc:///tmp/staged-tc-nobody.sock", 0);
    struct seen s;
    seen_init(&s);
    uint64_t n;
    json_t *p = json_pack("{s:s,s:s}", "prompt", "x", "id", "mine");
    assert_int_equal(client_submit(c, p, on_ev, &s, &n, &eb), ST_EINVAL);
    assert_non_null(strstr(eb.msg, "'id'"));
    json_decref(p);
    p = json_pack("{s:s,s:i}", "prompt", "x", "seed", -1);
    assert_int_equal(client_submit(c, p, on_ev, &s, &n, &eb), ST_EINVAL);
    assert_non_null(strstr(eb.msg, "'seed'"));
    json_decref(p);
    p = json_pack("{s:s,s:s}", "prompt", "x", "timeout_ms", "soon");
    assert_int_equal(client_submit(c, p, on_ev, &s, &n, &eb), ST_EINVAL);
    json_decref(p);
    p = json_pack("[s]", "x");
    assert_int_equal(client_submit(c, p, on_ev, &s, &n, &eb), ST_EINVAL);
    json_decref(p);
    assert_int_equal(client_cancel(c, 12345), ST_ENOTFOUND);
    assert_null(client_call(c, "generate", 10));
    client_destroy(&c);
    assert_null(c);
    client_destroy(&c); /* safe twice */
}

/* A plain stream: protocol fields reach the frontend, events come in order. */
static void test_stream(void **state)
{
    struct fake *f = *state;
    struct client *c = new_client(f->endpoint, 0);
    struct seen s;
    seen_init(&s);
    json_t *p = json_pack("{s:s,s:i,s:f,s:[s]}", "prompt", "Once", "max_tokens", 8, "temperature",
                          0.5, "stop", "\n");
    uint64_t n;
    assert_int_equal(client_submit(c, p, on_ev, &s, &n, NULL), 0);
    json_decref(p);
    json_t *g = fake_recv(f, 2000);
    assert_non_null(g);
    assert_string_equal(json_string_value(json_object_get(g, "op")), "generate");
    assert_int_equal(json_integer_value(json_object_get(g, "proto")), 1);
    assert_string_equal(json_string_value(json_object_get(g, "prompt")), "Once");
    assert_int_equal(json_integer_value(json_object_get(g, "max_tokens")), 8);
    assert_string_equal(json_string_value(json_array_get(json_object_get(g, "stop"), 0)), "\n");
    json_t *seed = json_object_get(g, "seed"); /* always explicit, even if not given */
    assert_true(json_is_integer(seed) && json_integer_value(seed) >= 0);
    const char *id = json_string_value(json_object_get(g, "id"));
    assert_true(id && strlen(id) >= 1 && strlen(id) <= 64);
    fake_send(f, chunk(id, 0, 0, " upon"));
    fake_send(f, chunk(id, 1, 5, " a tim\xc3\xa9"));
    fake_send(f, final_msg(id, "length", " upon a tim\xc3\xa9"));
    assert_true(wait_terminal(&s, 2000));
    assert_string_equal(s.text, " upon a tim\xc3\xa9");
    assert_int_equal(s.chunks, 2);
    assert_true(s.seq_ok);
    assert_int_equal(s.type, CLIENT_FINAL);
    assert_string_equal(s.finish, "length");
    assert_string_equal(s.final_text, " upon a tim\xc3\xa9");
    assert_int_equal(s.seed, json_integer_value(seed));
    json_decref(g);
    usleep(20000);
    assert_int_equal(s.terminal, 1);
    struct client_counters k;
    client_get_counters(c, &k);
    assert_int_equal(k.in_flight, 0);
    assert_int_equal(k.resubmitted, 0);
    client_destroy(&c);
}

/*
 * The frontend restarts mid-stream: the client asks status after its idle
 * timeout, hears "unknown", resubmits with the same seed and delivers only
 * the bytes past what it had delivered, as one continuous stream.
 */
static void test_resubmit_after_restart(void **state)
{
    struct fake *f = *state;
    struct client *c = new_client(f->endpoint, 200);
    struct seen s;
    seen_init(&s);
    json_t *p = json_pack("{s:s,s:i,s:i}", "prompt", "Once", "seed", 42, "timeout_ms", 20000);
    assert_int_equal(client_submit(c, p, on_ev, &s, NULL, NULL), 0);
    json_decref(p);
    json_t *g1 = fake_recv(f, 2000);
    assert_non_null(g1);
    char id1[80];
    snprintf(id1, sizeof(id1), "%s", json_string_value(json_object_get(g1, "id")));
    fake_send(f, chunk(id1, 0, 0, "Once "));
    fake_send(f, chunk(id1, 1, 5, "upon"));
    usleep(50000);
    fake_restart(f); /* the old frontend and its requests are gone */

    /* the client notices the silence and asks; the new frontend knows nothing */
    int64_t t0 = proto_now_ms();
    json_t *st = fake_recv(f, 3000);
    assert_non_null(st);
    assert_string_equal(json_string_value(json_object_get(st, "op")), "status");
    assert_string_equal(json_string_value(json_object_get(st, "id")), id1);
    fake_send(f, json_pack("{s:s,s:s,s:s}", "type", "status", "id", id1, "state", "unknown"));
    json_t *g2 = NULL;
    while ((g2 = fake_recv(f, 2000)) &&
           strcmp(json_string_value(json_object_get(g2, "op")), "generate")) {
        json_decref(g2); /* more status queries may have queued meanwhile */
    }
    assert_non_null(g2);
    assert_true(proto_now_ms() - t0 < 3000);
    const char *id2 = json_string_value(json_object_get(g2, "id"));
    assert_string_not_equal(id2, id1);
    assert_int_equal(json_integer_value(json_object_get(g2, "seed")), 42);
    assert_string_equal(json_string_value(json_object_get(g2, "prompt")), "Once");
    json_int_t left = json_integer_value(json_object_get(g2, "timeout_ms"));
    assert_true(left > 15000 && left <= 20000); /* the time left, not a fresh deadline */

    /* the restarted frontend is too busy at first: the client tries again */
    int64_t t1 = proto_now_ms();
    fake_send(f, json_pack("{s:s,s:s,s:{s:s,s:s}}", "type", "error", "id", id2, "error", "code",
                           "busy", "message", "queue full"));
    json_t *g3 = fake_recv(f, 2000);
    assert_non_null(g3);
    assert_string_equal(json_string_value(json_object_get(g3, "op")), "generate");
    assert_true(proto_now_ms() - t1 >= 150); /* after the idle timeout, not at once */
    assert_int_equal(json_integer_value(json_object_get(g3, "seed")), 42);
    char id3[80];
    snprintf(id3, sizeof(id3), "%s", json_string_value(json_object_get(g3, "id")));
    assert_string_not_equal(id3, id2);
    json_decref(g2);
    g2 = g3;
    id2 = id3;

    /* the same seed gives the same text again; the client skips what it has */
    fake_send(f, chunk(id2, 0, 0, "Once up"));
    fake_send(f, chunk(id2, 1, 7, "on a"));
    fake_send(f, chunk(id2, 2, 11, " time"));
    /* a late reply for the old attempt must be ignored */
    fake_send(f, chunk(id1, 2, 9, " XXX"));
    fake_send(f, final_msg(id2, "stop", "Once upon a time"));
    assert_true(wait_terminal(&s, 2000));
    assert_string_equal(s.text, "Once upon a time");
    assert_true(s.seq_ok);
    assert_int_equal(s.chunks, 4); /* "Once ", "upon", " a", " time" */
    assert_string_equal(s.finish, "stop");
    assert_int_equal(s.attempts, 3);
    struct client_counters k;
    client_get_counters(c, &k);
    assert_int_equal(k.resubmitted, 2);
    assert_true(k.status_sent >= 1);
    json_decref(g1);
    json_decref(st);
    json_decref(g2);
    client_destroy(&c);
}

/* A slow request that answers status "running" is left alone. */
static void test_status_running_keeps_request(void **state)
{
    struct fake *f = *state;
    struct client *c = new_client(f->endpoint, 100);
    struct seen s;
    seen_init(&s);
    json_t *p = json_pack("{s:s,s:b}", "prompt", "x", "stream", 0);
    assert_int_equal(client_submit(c, p, on_ev, &s, NULL, NULL), 0);
    json_decref(p);
    json_t *g = fake_recv(f, 2000);
    const char *id = json_string_value(json_object_get(g, "id"));
    for (int i = 0; i < 3; i++) {
        json_t *st = fake_recv(f, 1000);
        assert_non_null(st);
        assert_string_equal(json_string_value(json_object_get(st, "op")), "status");
        fake_send(f, json_pack("{s:s,s:s,s:s}", "type", "status", "id", id, "state", "running"));
        json_decref(st);
    }
    fake_send(f, final_msg(id, "stop", "done"));
    assert_true(wait_terminal(&s, 2000));
    assert_int_equal(s.chunks, 0);
    assert_string_equal(s.final_text, "done");
    struct client_counters k;
    client_get_counters(c, &k);
    assert_int_equal(k.resubmitted, 0);
    json_decref(g);
    client_destroy(&c);
}

/* Errors: a rejected request is one CLIENT_ERROR with the frontend's code. */
static void test_error_and_cancel(void **state)
{
    struct fake *f = *state;
    struct client *c = new_client(f->endpoint, 0);
    struct seen s;
    seen_init(&s);
    json_t *p = json_pack("{s:s}", "prompt", "x");
    assert_int_equal(client_submit(c, p, on_ev, &s, NULL, NULL), 0);
    json_t *g = fake_recv(f, 2000);
    const char *id = json_string_value(json_object_get(g, "id"));
    fake_send(f, json_pack("{s:s,s:s,s:{s:s,s:s}}", "type", "error", "id", id, "error", "code",
                           "busy", "message", "queue full"));
    assert_true(wait_terminal(&s, 2000));
    assert_int_equal(s.type, CLIENT_ERROR);
    assert_string_equal(s.code, "busy");
    json_decref(g);

    struct seen s2;
    seen_init(&s2);
    uint64_t n;
    assert_int_equal(client_submit(c, p, on_ev, &s2, &n, NULL), 0);
    g = fake_recv(f, 2000);
    id = json_string_value(json_object_get(g, "id"));
    assert_int_equal(client_cancel(c, n), 0);
    json_t *cm = fake_recv(f, 2000);
    assert_string_equal(json_string_value(json_object_get(cm, "op")), "cancel");
    assert_string_equal(json_string_value(json_object_get(cm, "id")), id);
    fake_send(f, final_msg(id, "cancelled", ""));
    assert_true(wait_terminal(&s2, 2000));
    assert_string_equal(s2.finish, "cancelled");
    json_decref(cm);
    json_decref(g);
    json_decref(p);
    client_destroy(&c);
}

/* No frontend at all: the request ends "unavailable" shortly after its deadline. */
static void test_deadline_without_frontend(void **state)
{
    (void)state;
    struct client *c = new_client("ipc:///tmp/staged-tc-nobody.sock", 100);
    struct seen s;
    seen_init(&s);
    json_t *p = json_pack("{s:s,s:i}", "prompt", "x", "timeout_ms", 300);
    int64_t t0 = proto_now_ms();
    assert_int_equal(client_submit(c, p, on_ev, &s, NULL, NULL), 0);
    json_decref(p);
    assert_true(wait_terminal(&s, 3000));
    int64_t dt = proto_now_ms() - t0;
    assert_true(dt >= 300 && dt < 1500);
    assert_int_equal(s.type, CLIENT_ERROR);
    assert_string_equal(s.code, "unavailable");
    assert_null(client_call(c, "health", 100)); /* nobody answers */
    client_destroy(&c);
}

/* health/models/stats: the reply is matched to its query. */
static void *answer_queries(void *arg)
{
    struct fake *f = arg;
    for (int i = 0; i < 2; i++) {
        json_t *q = fake_recv(f, 3000);
        if (!q) return NULL;
        json_t *r = json_pack("{s:s,s:O}", "type", json_string_value(json_object_get(q, "op")),
                              "id", json_object_get(q, "id"));
        if (!strcmp(json_string_value(json_object_get(q, "op")), "health"))
            json_object_set_new(r, "ok", json_true());
        fake_send(f, r);
        json_decref(q);
    }
    return NULL;
}

static void test_calls(void **state)
{
    struct fake *f = *state;
    struct client *c = new_client(f->endpoint, 0);
    pthread_t t;
    pthread_create(&t, NULL, answer_queries, f);
    json_t *h = client_call(c, "health", 3000);
    assert_non_null(h);
    assert_string_equal(json_string_value(json_object_get(h, "type")), "health");
    assert_true(json_is_true(json_object_get(h, "ok")));
    json_t *m = client_call(c, "models", 3000);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "models");
    pthread_join(t, NULL);
    json_decref(h);
    json_decref(m);
    client_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test_setup_teardown(test_stream, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_resubmit_after_restart, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_status_running_keeps_request, fake_setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_error_and_cancel, fake_setup, fake_teardown),
        cmocka_unit_test(test_deadline_without_frontend),
        cmocka_unit_test_setup_teardown(test_calls, fake_setup, fake_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
