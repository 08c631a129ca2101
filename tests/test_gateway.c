/*
 * test_gateway: the HTTP gateway (http/gateway.h) over real sockets, with the
 * frontend played by the test on a ROUTER socket as docs/protocol.md
 * describes it: OpenAI fields reach the frontend as protocol fields, chunks
 * become server-sent events ending in [DONE], busy becomes 429 with
 * Retry-After, a client that hangs up gets its request cancelled, /health
 * follows the frontend's stage states, API keys are enforced. Runs without a
 * model or a deployment (tests/http*.test.sh cover the real pipeline).
 */
#include "http/gateway.h"

#include "common/proto.h"
#include "conf/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

struct fix {
    struct staged_config cfg;
    struct gw *gw;
    void *zctx, *router;
    char dir[64];
    uint8_t ident[256];
    size_t ident_len;
};

static int setup(void **state)
{
    struct fix *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/staged-tg.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    config_defaults(&f->cfg);
    snprintf(f->cfg.frontend.endpoint, sizeof(f->cfg.frontend.endpoint), "ipc://%s/fe.sock",
             f->dir);
    snprintf(f->cfg.http.listen, sizeof(f->cfg.http.listen), "127.0.0.1:0");
    snprintf(f->cfg.http.api_keys, sizeof(f->cfg.http.api_keys), "k1,k2");
    f->cfg.http.max_body_bytes = 4096;
    f->cfg.http.threads = 2;
    f->zctx = zmq_ctx_new();
    f->router = zmq_socket(f->zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_bind(f->router, f->cfg.frontend.endpoint), 0);
    struct st_errbuf eb = {{0}};
    if (gw_new(&f->cfg, &f->gw, &eb)) fail_msg("gw_new: %s", eb.msg);
    assert_true(gw_port(f->gw) > 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fix *f = *state;
    gw_destroy(&f->gw);
    zmq_close(f->router);
    zmq_ctx_term(f->zctx);
    char p[128];
    snprintf(p, sizeof(p), "%s/fe.sock", f->dir);
    unlink(p);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* The frontend side: one client message within timeout_ms, or NULL. */
static json_t *fe_recv(struct fix *f, int timeout_ms)
{
    zmq_pollitem_t it = {.socket = f->router, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return NULL;
    struct proto_msg m;
    assert_int_equal(proto_recv(f->router, 1 << 20, &m), 0);
    assert_non_null(m.body);
    memcpy(f->ident, m.ident, m.ident_len);
    f->ident_len = m.ident_len;
    return m.body;
}

/* Receive until a message with this op arrives (answering nothing else). */
static json_t *fe_expect(struct fix *f, const char *op, int timeout_ms)
{
    int64_t until = proto_now_ms() + timeout_ms;
    while (proto_now_ms() < until) {
        json_t *m = fe_recv(f, (int)(until - proto_now_ms()));
        if (!m) break;
        if (!strcmp(json_string_value(json_object_get(m, "op")), op)) return m;
        json_decref(m);
    }
    return NULL;
}

static void fe_send(struct fix *f, json_t *m)
{
    assert_non_null(m);
    assert_int_equal(proto_send(f->router, f->ident, f->ident_len, m), 0);
    json_decref(m);
}

/* The HTTP side: a connected socket with the request written. */
static int http_send(struct fix *f, const char *method, const char *path, const char *auth,
                     const char *body)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(gw_port(f->gw))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%s%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     method, path, auth ? "Authorization: Bearer " : "", auth ? auth : "",
                     auth ? "\r\n" : "", body ? strlen(body) : 0);
    assert_int_equal(write(s, head, (size_t)n), n);
    if (body) assert_int_equal(write(s, body, strlen(body)), (ssize_t)strlen(body));
    return s;
}

/* Read the whole response (the gateway closes: Connection: close). Caller frees. */
static char *http_read_all(int s, int timeout_ms)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int64_t until = proto_now_ms() + timeout_ms;
    for (;;) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        int left = (int)(until - proto_now_ms());
        if (left <= 0 || poll(&p, 1, left) <= 0) break;
        ssize_t n = read(s, buf + len, cap - len - 1);
        if (n <= 0) break;
        len += (size_t)n;
        if (len + 1 >= cap) break;
    }
    buf[len] = 0;
    close(s);
    return buf;
}

static int status_of(const char *resp)
{
    int st = 0;
    sscanf(resp, "HTTP/1.1 %d", &st);
    return st;
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

static json_t *chunk(const char *id, int seq, int off, const char *text)
{
    return json_pack("{s:s,s:s,s:i,s:i,s:s,s:[i]}", "type", "chunk", "id", id, "seq", seq, "offset",
                     off, "text", text, "tokens", 7);
}

static void test_stream(void **state)
{
    struct fix *f = *state;
    int s =
        http_send(f, "POST", "/v1/chat/completions", "k2",
                  "{\"model\":\"mm\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                  "\"stream\":true,\"temperature\":0.5,\"top_k\":3,\"seed\":9,"
                  "\"stop\":\"END\",\"max_tokens\":5,\"stream_options\":{\"include_usage\":true}}");
    json_t *g = fe_expect(f, "generate", 3000);
    assert_non_null(g);
    assert_true(json_number_value(json_object_get(g, "temperature")) == 0.5);
    assert_int_equal(json_integer_value(json_object_get(g, "top_k")), 3);
    assert_int_equal(json_integer_value(json_object_get(g, "seed")), 9);
    assert_int_equal(json_integer_value(json_object_get(g, "max_tokens")), 5);
    assert_string_equal(json_string_value(json_array_get(json_object_get(g, "stop"), 0)), "END");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(g, "messages"), 0), "content")),
                        "hi");
    assert_true(json_is_true(json_object_get(g, "stream")));
    const char *id = json_string_value(json_object_get(g, "id"));
    fe_send(f, chunk(id, 0, 0, "Hel"));
    fe_send(f, chunk(id, 1, 3, "lo \"you\"\n"));
    fe_send(f, json_pack("{s:s,s:s,s:s,s:s,s:{s:i,s:i}}", "type", "final", "id", id,
                         "finish_reason", "stop", "text", "Hello \"you\"\n", "usage",
                         "prompt_tokens", 4, "completion_tokens", 2));
    char *r = http_read_all(s, 3000);
    assert_int_equal(status_of(r), 200);
    assert_non_null(strstr(r, "Content-Type: text/event-stream"));
    /* the body is chunked transfer encoding around the events; pick the data lines */
    json_t *events = json_array();
    for (const char *p = strstr(r, "data: "); p; p = strstr(p + 1, "\ndata: ")) {
        if (*p == '\n') p++;
        const char *e = strchr(p, '\n');
        char *line = strndup(p + 6, (size_t)(e - p - 6));
        json_array_append_new(events, json_string(line));
        free(line);
    }
    size_t n = json_array_size(events);
    assert_true(n == 5); /* 2 text chunks, the finish chunk, usage, [DONE] */
    assert_string_equal(json_string_value(json_array_get(events, n - 1)), "[DONE]");
    char text[64] = "";
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_loads(json_string_value(json_array_get(events, i)), 0, NULL);
        assert_non_null(c);
        assert_string_equal(json_string_value(json_object_get(c, "object")),
                            "chat.completion.chunk");
        assert_string_equal(json_string_value(json_object_get(c, "model")), "mm");
        json_t *d = json_object_get(json_array_get(json_object_get(c, "choices"), 0), "delta");
        if (i == 0) assert_string_equal(json_string_value(json_object_get(d, "role")), "assistant");
        strcat(text, json_string_value(json_object_get(d, "content")));
        json_decref(c);
    }
    assert_string_equal(text, "Hello \"you\"\n");
    json_t *fin = json_loads(json_string_value(json_array_get(events, 2)), 0, NULL);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(fin, "choices"), 0), "finish_reason")),
                        "stop");
    json_t *u = json_loads(json_string_value(json_array_get(events, 3)), 0, NULL);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(u, "usage"), "total_tokens")), 6);
    json_decref(fin);
    json_decref(u);
    json_decref(events);
    json_decref(g);
    free(r);
}

static void test_busy_is_429(void **state)
{
    struct fix *f = *state;
    int s = http_send(f, "POST", "/v1/completions", "k1", "{\"model\":\"m\",\"prompt\":\"x\"}");
    json_t *g = fe_expect(f, "generate", 3000);
    assert_non_null(g);
    assert_false(json_is_true(json_object_get(g, "stream")));
    fe_send(f, json_pack("{s:s,s:O,s:{s:s,s:s}}", "type", "error", "id", json_object_get(g, "id"),
                         "error", "code", "busy", "message", "queue full (256 requests)"));
    char *r = http_read_all(s, 3000);
    assert_int_equal(status_of(r), 429);
    assert_non_null(strcasestr(r, "Retry-After: 1"));
    json_t *e = json_loads(body_of(r), 0, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "type")),
                        "rate_limit_error");
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "message")),
                        "queue full (256 requests)");
    json_decref(e);
    json_decref(g);
    free(r);
}

static void test_disconnect_cancels(void **state)
{
    struct fix *f = *state;
    int s = http_send(f, "POST", "/v1/completions", "k1",
                      "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":true}");
    json_t *g = fe_expect(f, "generate", 3000);
    assert_non_null(g);
    const char *id = json_string_value(json_object_get(g, "id"));
    close(s); /* the client hangs up before any text */
    int64_t t0 = proto_now_ms();
    json_t *c = fe_expect(f, "cancel", 3000);
    assert_non_null(c);
    assert_string_equal(json_string_value(json_object_get(c, "id")), id);
    assert_true(proto_now_ms() - t0 < 2000);
    fe_send(f, json_pack("{s:s,s:s,s:s,s:s,s:{s:i,s:i}}", "type", "final", "id", id,
                         "finish_reason", "cancelled", "text", "", "usage", "prompt_tokens", 1,
                         "completion_tokens", 0));
    json_decref(c);
    json_decref(g);
}

/* The frontend's health reply with the worker in state `wstate`. */
static void answer_health(struct fix *f, const char *wstate)
{
    json_t *q = fe_expect(f, "health", 3000);
    assert_non_null(q);
    bool ok = !strcmp(wstate, "ready");
    fe_send(f, json_pack("{s:s,s:O,s:b,s:s,s:{s:{s:s},s:{s:s},s:{s:s}},s:i,s:i}", "type", "health",
                         "id", json_object_get(q, "id"), "ok", ok, "model", "m", "stages", "loader",
                         "state", "ready", "tokenizer", "state", "ready", "worker", "state", wstate,
                         "queued", 0, "running", 0));
    json_decref(q);
}

static void test_health(void **state)
{
    struct fix *f = *state;
    int s = http_send(f, "GET", "/health", NULL, NULL);
    answer_health(f, "down");
    char *r = http_read_all(s, 3000);
    assert_int_equal(status_of(r), 503);
    assert_non_null(strstr(body_of(r), "worker is down"));
    free(r);
    usleep(250 * 1000); /* past the reply cache */
    s = http_send(f, "GET", "/health", NULL, NULL);
    answer_health(f, "ready");
    r = http_read_all(s, 3000);
    assert_int_equal(status_of(r), 200);
    free(r);
    usleep(250 * 1000);
    s = http_send(f, "GET", "/health", NULL, NULL); /* the frontend does not answer */
    r = http_read_all(s, 3000);
    assert_int_equal(status_of(r), 503);
    assert_non_null(strstr(body_of(r), "does not answer"));
    free(r);
}

static void test_auth_and_limits(void **state)
{
    struct fix *f = *state;
    static const struct {
        const char *method, *path, *key, *body;
        int status;
    } cases[] = {
        {"POST", "/v1/completions", NULL, "{\"model\":\"m\",\"prompt\":\"x\"}", 401},
        {"POST", "/v1/completions", "k3", "{\"model\":\"m\",\"prompt\":\"x\"}", 401},
        {"GET", "/v1/models", "k", NULL, 401},
        {"POST", "/v1/completions", "k1", "{\"model\":\"m\",\"prompt\":5}", 400},
        {"POST", "/v1/completions", "k1", "not json", 400},
        {"GET", "/v1/completions", "k1", NULL, 405},
        {"POST", "/v2/x", "k1", "{}", 404},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int s = http_send(f, cases[i].method, cases[i].path, cases[i].key, cases[i].body);
        char *r = http_read_all(s, 3000);
        if (status_of(r) != cases[i].status)
            fail_msg("case %zu: %s %s: want %d, got %.200s", i, cases[i].method, cases[i].path,
                     cases[i].status, r);
        json_t *e = json_loads(body_of(r), 0, NULL);
        assert_int_equal(json_object_size(json_object_get(e, "error")), 4);
        json_decref(e);
        free(r);
    }
    /* over max_body_bytes (4096): 400 before the frontend hears of it */
    char *big = malloc(6000);
    memset(big, ' ', 5999);
    big[5999] = 0;
    memcpy(big, "{\"model\":\"m\",\"prompt\":\"x\"}", 26);
    int s = http_send(f, "POST", "/v1/completions", "k1", big);
    char *r = http_read_all(s, 3000);
    assert_int_equal(status_of(r), 400);
    assert_non_null(strstr(r, "too_large"));
    free(r);
    free(big);
    assert_null(fe_recv(f, 200)); /* nothing reached the frontend */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_is_429, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_and_limits, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
