#include "tokenizer/server.h"

#include "common/log.h"
#include "common/proto.h"
#include "tokenizer/chat.h"
#include "tokenizer/detok.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_IDENT 256

struct tok_server {
    void *zctx;
    void *front; /* ROUTER, clients */
    void *back;  /* ROUTER, inproc to the workers */
    char inproc[64];
    const struct vocab *v;
    enum chat_family family;
    char *bos_text, *eos_text;
    size_t max_bytes;
    char model[128];
    long long hang_at; /* fault injection (0 = off) */
    /* routing ids of the workers waiting for a request (a FIFO ring) */
    struct {
        uint8_t id[MAX_IDENT];
        size_t len;
    } * idle;
    int idle_head, n_idle;
    long long n_requests;
    int n_threads;
    pthread_t *threads;
    int n_started;
    atomic_int stopping;
};

/* ---- replies ---- */

/* An error reply as a string; id may be NULL. */
static char *error_reply(const json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static char *error_reply(const json_t *id, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = proto_error_jsonv(id, code, fmt, ap);
    va_end(ap);
    if (!r) return NULL;
    char *s = json_dumps(r, JSON_COMPACT);
    json_decref(r);
    return s;
}

/* A request-handling failure: code + message, filled by the op handlers. */
struct req_err {
    const char *code;
    char msg[400];
};

static int fail(struct req_err *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct req_err *e, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    e->code = code;
    return -1;
}

/* ---- field helpers ---- */

static int check_fields(const json_t *req, const char *const *allowed, struct req_err *e)
{
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)req, key, val)
    {
        bool ok = false;
        for (int i = 0; allowed[i] && !ok; i++)
            ok = !strcmp(key, allowed[i]);
        if (!ok) return fail(e, "unknown_field", "unknown field \"%.64s\"", key);
    }
    return 0;
}

static int get_bool(const json_t *req, const char *key, bool dflt, bool *out, struct req_err *e)
{
    json_t *j = json_object_get(req, key);
    *out = dflt;
    if (!j) return 0;
    if (!json_is_boolean(j)) return fail(e, "bad_request", "field \"%s\" must be a boolean", key);
    *out = json_is_true(j);
    return 0;
}

/* tokens: array of integer ids within the vocab */
static int get_tokens(const struct tok_server *s, const json_t *req, struct tok_ids *t,
                      struct req_err *e)
{
    json_t *a = json_object_get(req, "tokens");
    if (!a) return fail(e, "bad_request", "field \"tokens\" is required");
    if (!json_is_array(a)) return fail(e, "bad_request", "field \"tokens\" must be an array");
    uint32_t nv = vocab_n_tokens(s->v);
    size_t i;
    json_t *x;
    json_array_foreach(a, i, x)
    {
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= nv)
            return fail(e, "bad_request", "tokens[%zu]: must be an integer token id in 0..%u", i,
                        nv - 1);
        if (tok_ids_push(t, (int32_t)json_integer_value(x)))
            return fail(e, "internal", "out of memory");
    }
    return 0;
}

static json_t *ids_json(const int32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(ids[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* ---- ops ---- */

static json_t *op_encode(const struct tok_server *s, const json_t *req, struct req_err *e)
{
    static const char *const allowed[] = {"id",          "proto",         "op", "text",
                                          "add_special", "parse_special", NULL};
    bool add_special, parse_special;
    if (check_fields(req, allowed, e) || get_bool(req, "add_special", true, &add_special, e) ||
        get_bool(req, "parse_special", false, &parse_special, e))
        return NULL;
    json_t *t = json_object_get(req, "text");
    if (!json_is_string(t))
        return fail(e, "bad_request", "field \"text\" (string) is required"), NULL;
    int32_t *ids;
    size_t n;
    if (tok_encode(s->v, json_string_value(t), json_string_length(t), add_special, parse_special,
                   &ids, &n))
        return fail(e, "internal", "out of memory"), NULL;
    json_t *r = json_pack("{s:o}", "tokens", ids_json(ids, n));
    free(ids);
    return r;
}

static json_t *op_chat(const struct tok_server *s, const json_t *req, struct req_err *e)
{
    static const char *const allowed[] = {
        "id", "proto", "op", "messages", "add_generation_prompt", "parse_special", NULL};
    static const char *const msg_allowed[] = {"role", "content", NULL};
    bool gen, parse_special;
    if (check_fields(req, allowed, e) || get_bool(req, "add_generation_prompt", true, &gen, e) ||
        get_bool(req, "parse_special", false, &parse_special, e))
        return NULL;
    json_t *ms = json_object_get(req, "messages");
    if (!json_is_array(ms) || json_array_size(ms) == 0)
        return fail(e, "bad_request", "field \"messages\" must be a non-empty array"), NULL;
    size_t n = json_array_size(ms);
    struct chat_msg *m = calloc(n, sizeof(*m));
    if (!m) return fail(e, "internal", "out of memory"), NULL;
    json_t *r = NULL;
    struct chat_out out = {0};
    struct tok_ids ids = {0};
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(ms, i);
        if (!json_is_object(x)) {
            fail(e, "bad_request", "messages[%zu] must be an object", i);
            goto done;
        }
        if (check_fields(x, msg_allowed, e)) {
            snprintf(e->msg + strlen(e->msg), sizeof(e->msg) - strlen(e->msg), " in messages[%zu]",
                     i);
            goto done;
        }
        json_t *role = json_object_get(x, "role"), *content = json_object_get(x, "content");
        if (!json_is_string(role) || !json_is_string(content)) {
            fail(e, "bad_request", "messages[%zu]: \"role\" and \"content\" must be strings", i);
            goto done;
        }
        m[i] = (struct chat_msg){json_string_value(role), json_string_value(content),
                                 json_string_length(content)};
    }
    struct st_errbuf eb = {{0}};
    int rc = chat_render(s->family, s->bos_text, s->eos_text, m, n, gen, &out, &eb);
    if (rc) {
        fail(e, rc == ST_ENOMEM ? "internal" : "bad_request", "%s", eb.msg);
        goto done;
    }
    struct tok_span all = {0, out.text.len};
    rc = tok_encode_spans(s->v, out.text.p, out.text.len, false, parse_special ? &all : out.tmpl,
                          parse_special ? 1 : out.n_tmpl, &ids);
    int32_t bos = vocab_bos(s->v);
    if (!rc && vocab_add_bos(s->v) && (ids.n == 0 || ids.p[0] != bos)) {
        rc = tok_ids_push(&ids, bos);
        if (!rc) {
            memmove(ids.p + 1, ids.p, (ids.n - 1) * sizeof(*ids.p));
            ids.p[0] = bos;
        }
    }
    if (rc) {
        fail(e, "internal", "out of memory");
        goto done;
    }
    r = json_pack("{s:o,s:s%}", "tokens", ids_json(ids.p, ids.n), "text", out.text.p, out.text.len);
done:
    free(m);
    chat_out_free(&out);
    tok_ids_free(&ids);
    return r;
}

static json_t *op_decode(const struct tok_server *s, const json_t *req, struct req_err *e)
{
    static const char *const allowed[] = {"id", "proto", "op", "tokens", "skip_special", NULL};
    bool skip;
    struct tok_ids t = {0};
    struct tok_buf out = {0};
    json_t *r = NULL;
    if (check_fields(req, allowed, e) || get_bool(req, "skip_special", true, &skip, e) ||
        get_tokens(s, req, &t, e))
        goto done;
    if (detok_decode(s->v, t.p, t.n, skip, &out)) {
        fail(e, "internal", "out of memory");
        goto done;
    }
    r = json_pack("{s:s%}", "text", out.p, out.len);
done:
    tok_ids_free(&t);
    tok_buf_free(&out);
    return r;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static json_t *op_detok(const struct tok_server *s, const json_t *req, struct req_err *e)
{
    static const char *const allowed[] = {"id",      "proto", "op",           "tokens",
                                          "pending", "first", "skip_special", NULL};
    bool skip, first;
    struct tok_ids t = {0};
    struct tok_buf out = {0};
    struct detok d = {{0}, 0};
    json_t *r = NULL;
    if (check_fields(req, allowed, e) || get_bool(req, "skip_special", true, &skip, e) ||
        get_bool(req, "first", false, &first, e) || get_tokens(s, req, &t, e))
        goto done;
    json_t *p = json_object_get(req, "pending");
    if (p) {
        const char *h = json_string_value(p);
        size_t hl = h ? json_string_length(p) : 0;
        if (!h || hl % 2 || hl > 2 * (sizeof(d.pend) - 1)) {
            fail(e, "bad_request", "field \"pending\" must be a hex string of 0..3 bytes");
            goto done;
        }
        for (size_t i = 0; i < hl; i += 2) {
            int a = hexval(h[i]), b = hexval(h[i + 1]);
            if (a < 0 || b < 0) {
                fail(e, "bad_request", "field \"pending\": not hex at offset %zu", i);
                goto done;
            }
            d.pend[d.n_pend++] = (uint8_t)(a * 16 + b);
        }
    }
    /* streamed text keeps every space: the SPM leading-space strip applies only
     * to whole-text decodes starting at BOS, so "first" changes nothing here */
    (void)first;
    if (detok_feed(s->v, &d, t.p, t.n, !skip, &out)) {
        fail(e, "internal", "out of memory");
        goto done;
    }
    char hex[8] = {0};
    for (size_t i = 0; i < d.n_pend; i++)
        snprintf(hex + 2 * i, 3, "%02x", d.pend[i]);
    r = json_pack("{s:s%,s:s}", "text", out.p, out.len, "pending", hex);
done:
    tok_ids_free(&t);
    tok_buf_free(&out);
    return r;
}

static json_t *op_health(const struct tok_server *s, const json_t *req, struct req_err *e)
{
    static const char *const allowed[] = {"id", "proto", "op", NULL};
    if (check_fields(req, allowed, e)) return NULL;
    return json_pack("{s:b,s:i,s:s,s:i}", "ok", 1, "vocab", (json_int_t)vocab_n_tokens(s->v),
                     "model", s->model, "pid", (json_int_t)getpid());
}

static json_t *op_info(const struct tok_server *s, const json_t *req, struct req_err *e)
{
    static const char *const allowed[] = {"id", "proto", "op", NULL};
    if (check_fields(req, allowed, e)) return NULL;
    size_t ne;
    const int32_t *eog = vocab_eog_ids(s->v, &ne);
    return json_pack("{s:i,s:s,s:s,s:i,s:i,s:i,s:o,s:b,s:b,s:s,s:s}", "vocab",
                     (json_int_t)vocab_n_tokens(s->v), "tokenizer",
                     vocab_kind(s->v) == VOCAB_SPM ? "spm" : "bpe", "pre", vocab_pre_name(s->v),
                     "bos", (json_int_t)vocab_bos(s->v), "eos", (json_int_t)vocab_eos(s->v), "eot",
                     (json_int_t)vocab_eot(s->v), "eog", ids_json(eog, ne), "add_bos",
                     vocab_add_bos(s->v), "add_eos", vocab_add_eos(s->v), "chat_template",
                     chat_family_name(s->family), "model", s->model);
}

char *tok_server_handle(const struct tok_server *s, const char *body, size_t len)
{
    if (len > s->max_bytes)
        return error_reply(NULL, "too_large", "request of %zu bytes exceeds the limit of %zu", len,
                           s->max_bytes);
    size_t good = utf8_valid_prefix((const uint8_t *)body, len);
    if (good != len)
        return error_reply(NULL, "invalid_utf8", "request is not valid UTF-8 (byte %zu)", good);
    json_error_t jerr;
    json_t *req = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req)
        return error_reply(NULL, "bad_request", "invalid JSON at line %d column %d: %s", jerr.line,
                           jerr.column, jerr.text);
    char *out = NULL;
    struct req_err e = {NULL, ""};
    json_t *id = json_object_get(req, "id"), *reply = NULL;
    if (!json_is_object(req)) {
        out = error_reply(NULL, "bad_request", "request must be a JSON object");
        goto done;
    }
    if (id && !json_is_string(id) && !json_is_number(id)) {
        out = error_reply(NULL, "bad_request", "field \"id\" must be a number or a string");
        goto done;
    }
    json_t *proto = json_object_get(req, "proto");
    if (proto && !(json_is_integer(proto) && json_integer_value(proto) == 1)) {
        out = error_reply(id, "bad_request", "field \"proto\": only version 1 is served");
        goto done;
    }
    json_t *op = json_object_get(req, "op");
    const char *o = json_string_value(op);
    if (!o) {
        out = error_reply(id, "bad_request", "field \"op\" (string) is required");
        goto done;
    }
    if (!strcmp(o, "encode"))
        reply = op_encode(s, req, &e);
    else if (!strcmp(o, "chat"))
        reply = op_chat(s, req, &e);
    else if (!strcmp(o, "decode"))
        reply = op_decode(s, req, &e);
    else if (!strcmp(o, "detok"))
        reply = op_detok(s, req, &e);
    else if (!strcmp(o, "health"))
        reply = op_health(s, req, &e);
    else if (!strcmp(o, "info"))
        reply = op_info(s, req, &e);
    else {
        out = error_reply(id, "unknown_op", "unknown op \"%.64s\"", o);
        goto done;
    }
    if (!reply) {
        out = error_reply(id, e.code ? e.code : "internal", "%s", e.code ? e.msg : "out of memory");
        goto done;
    }
    if (json_object_set(reply, "id", id ? id : json_null()) == 0)
        out = json_dumps(reply, JSON_COMPACT);
    json_decref(reply);
done:
    json_decref(req);
    return out;
}

/* ---- sockets and threads ---- */

static bool more(void *sock)
{
    int m = 0;
    size_t sz = sizeof(m);
    zmq_getsockopt(sock, ZMQ_RCVMORE, &m, &sz);
    return m != 0;
}

/* One request from the back socket: [ident][body...]. */
static void serve_one(struct tok_server *s, void *sock)
{
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    if (zmq_msg_recv(&id, sock, 0) < 0) {
        zmq_msg_close(&id);
        return;
    }
    char *reply = NULL;
    int frames = 0;
    zmq_msg_init(&body);
    while (more(sock)) {
        zmq_msg_t x;
        zmq_msg_init(&x);
        if (zmq_msg_recv(&x, sock, 0) < 0) {
            zmq_msg_close(&x);
            break;
        }
        if (frames++ == 0) zmq_msg_move(&body, &x);
        zmq_msg_close(&x);
    }
    if (frames != 1)
        reply =
            error_reply(NULL, "bad_request", "expected exactly one frame of JSON, got %d", frames);
    else
        reply = tok_server_handle(s, zmq_msg_data(&body), zmq_msg_size(&body));
    zmq_msg_close(&body);
    if (!reply) reply = error_reply(NULL, "internal", "out of memory");
    if (reply) {
        if (zmq_send(sock, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE) >= 0)
            zmq_send(sock, reply, strlen(reply), 0);
        free(reply);
    }
    zmq_msg_close(&id);
}

static void *worker_main(void *arg)
{
    struct tok_server *s = arg;
    void *sock = zmq_socket(s->zctx, ZMQ_DEALER);
    if (!sock) return NULL;
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
    if (zmq_connect(sock, s->inproc) < 0 || zmq_send(sock, "", 0, 0) < 0) {
        log_error("worker: connect %s: %s", s->inproc, zmq_strerror(zmq_errno()));
        zmq_close(sock);
        return NULL;
    }
    while (!atomic_load(&s->stopping)) {
        zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
        int n = zmq_poll(&it, 1, 100);
        if (n < 0 && zmq_errno() == ETERM) break;
        if (n > 0) serve_one(s, sock);
    }
    zmq_close(sock);
    return NULL;
}

/* Move the rest of a multipart message from a to b. */
static int forward(void *a, void *b)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return zmq_errno() == EAGAIN ? 0 : ST_EIO;
        }
        bool last = !more(a);
        if (zmq_msg_send(&m, b, last ? 0 : ZMQ_SNDMORE) < 0) zmq_msg_close(&m);
        if (last) return 0;
    }
}

int tok_server_new(void *zctx, const struct tok_server_opts *o, const struct vocab *v,
                   struct tok_server **out, struct st_errbuf *eb)
{
    *out = NULL;
    struct tok_server *s = calloc(1, sizeof(*s));
    if (!s) return st_errf(eb, ST_ENOMEM, "out of memory");
    s->zctx = zctx;
    s->v = v;
    s->max_bytes = o->max_request_bytes;
    s->hang_at = o->hang_at_request;
    s->family = chat_detect(vocab_chat_template(v));
    snprintf(s->model, sizeof(s->model), "%s", o->model_name ? o->model_name : "");
    size_t l;
    const char *t;
    if ((t = vocab_token_text(v, vocab_bos(v), &l))) s->bos_text = strndup(t, l);
    if ((t = vocab_token_text(v, vocab_eos(v), &l))) s->eos_text = strndup(t, l);
    snprintf(s->inproc, sizeof(s->inproc), "inproc://tokenizer-workers-%p", (void *)s);
    int linger = 0, rc = ST_EIO;
    s->front = zmq_socket(zctx, ZMQ_ROUTER);
    s->back = zmq_socket(zctx, ZMQ_ROUTER);
    if (!s->front || !s->back) {
        st_errf(eb, ST_EIO, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        goto err;
    }
    zmq_setsockopt(s->front, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s->back, ZMQ_LINGER, &linger, sizeof(linger));
    /* a message somewhat over the limit gets a "too_large" reply; one far over
     * it makes ZeroMQ drop the connection before buffering it all */
    int64_t maxmsg = (int64_t)s->max_bytes * 4 + 65536;
    zmq_setsockopt(s->front, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    if (zmq_bind(s->front, o->endpoint) < 0) {
        st_errf(eb, ST_EIO, "[tokenizer] endpoint %s: bind: %s", o->endpoint,
                zmq_strerror(zmq_errno()));
        goto err;
    }
    if (zmq_bind(s->back, s->inproc) < 0) {
        st_errf(eb, ST_EIO, "bind %s: %s", s->inproc, zmq_strerror(zmq_errno()));
        goto err;
    }
    s->n_threads = o->threads > 0 ? o->threads : 1;
    s->threads = calloc((size_t)s->n_threads, sizeof(*s->threads));
    s->idle = calloc((size_t)s->n_threads, sizeof(*s->idle));
    if (!s->threads || !s->idle) {
        rc = st_errf(eb, ST_ENOMEM, "out of memory");
        goto err;
    }
    for (int i = 0; i < s->n_threads; i++) {
        if (pthread_create(&s->threads[i], NULL, worker_main, s)) {
            st_errf(eb, ST_EIO, "cannot start worker thread %d", i);
            goto err;
        }
        s->n_started++;
    }
    *out = s;
    return 0;
err:
    tok_server_destroy(&s);
    return rc;
}

/* A worker's message on the back socket: [worker][client][reply] (or
 * [worker][""] when it starts). Either way the worker is idle again. */
static int from_worker(struct tok_server *s)
{
    zmq_msg_t wid;
    zmq_msg_init(&wid);
    if (zmq_msg_recv(&wid, s->back, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&wid);
        return zmq_errno() == EAGAIN ? 0 : ST_EIO;
    }
    int slot = (s->idle_head + s->n_idle) % s->n_threads;
    size_t wl = zmq_msg_size(&wid) < MAX_IDENT ? zmq_msg_size(&wid) : MAX_IDENT;
    memcpy(s->idle[slot].id, zmq_msg_data(&wid), wl);
    s->idle[slot].len = wl;
    s->n_idle++;
    zmq_msg_close(&wid);
    if (!more(s->back)) return 0;
    zmq_msg_t first;
    zmq_msg_init(&first);
    if (zmq_msg_recv(&first, s->back, 0) < 0) {
        zmq_msg_close(&first);
        return ST_EIO;
    }
    if (!more(s->back)) { /* the start-up "ready" frame */
        zmq_msg_close(&first);
        return 0;
    }
    if (zmq_msg_send(&first, s->front, ZMQ_SNDMORE) < 0) zmq_msg_close(&first);
    return forward(s->back, s->front);
}

/* A client's request goes to the longest-idle worker: [worker][client][frames...]. */
static int to_worker(struct tok_server *s)
{
    int slot = s->idle_head;
    if (zmq_send(s->back, s->idle[slot].id, s->idle[slot].len, ZMQ_SNDMORE) < 0) return ST_EIO;
    s->idle_head = (s->idle_head + 1) % s->n_threads;
    s->n_idle--;
    return forward(s->front, s->back);
}

int tok_server_run(struct tok_server *s, volatile sig_atomic_t *stop)
{
    while (!*stop) {
        /* requests wait in the front socket's queue while every worker is busy */
        zmq_pollitem_t it[2] = {{.socket = s->back, .events = ZMQ_POLLIN},
                                {.socket = s->front, .events = ZMQ_POLLIN}};
        int n = zmq_poll(it, s->n_idle > 0 ? 2 : 1, 100);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            return ST_EIO;
        }
        if ((it[0].revents & ZMQ_POLLIN) && from_worker(s)) return ST_EIO;
        if (s->n_idle == 0 || !(it[1].revents & ZMQ_POLLIN)) continue;
        if (s->hang_at > 0 && ++s->n_requests >= s->hang_at) {
            log_warn("fault injection: request %lld, no longer answering", s->n_requests);
            while (!*stop) {
                struct timespec ts = {0, 100 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            break;
        }
        if (to_worker(s)) return ST_EIO;
    }
    return 0;
}

void tok_server_destroy(struct tok_server **sp)
{
    struct tok_server *s = *sp;
    if (!s) return;
    atomic_store(&s->stopping, 1);
    for (int i = 0; i < s->n_started; i++)
        pthread_join(s->threads[i], NULL);
    free(s->threads);
    free(s->idle);
    if (s->front) zmq_close(s->front);
    if (s->back) zmq_close(s->back);
    free(s->bos_text);
    free(s->eos_text);
    free(s);
    *sp = NULL;
}
