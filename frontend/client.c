/* The frontend client library: see client.h. */
#include "client.h"

#include "common/log.h"
#include "common/proto.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_WIRE_MSG (64u << 20) /* largest reply accepted from the frontend */

/* One generate request in flight. Linked into client.reqs; freed by the I/O thread. */
struct creq {
    struct creq *next;
    uint64_t n;  /* request number */
    int attempt; /* current attempt, from 1 */
    client_cb cb;
    void *user;
    json_t *body; /* the generate message without "id" (owned) */
    int64_t seed;
    bool stream;
    bool caller_timeout; /* the caller gave timeout_ms: resubmissions send the time left */
    int64_t deadline;    /* absolute, proto_now_ms() clock */
    int64_t last_heard;  /* last message for the current attempt (or its submission) */
    int64_t status_sent; /* when the pending status query went out; 0 = none pending */
    bool need_send;      /* the current attempt's generate is still to be sent */
    int64_t retry_at;    /* ... not before this time (0 = at once) */
    bool need_cancel;    /* a cancel is to be sent */
    bool cancelled;      /* the caller cancelled it */
    size_t delivered;    /* completion bytes delivered to the caller */
    int seq;             /* next chunk number for the caller */
};

/* One synchronous health/models/stats query. Owned by the calling thread. */
struct ccall {
    struct ccall *next;
    uint64_t n;
    const char *op;
    bool need_send;
    bool done;
    json_t *reply;
};

struct client {
    char endpoint[256];
    int idle_ms;
    int64_t default_timeout_ms;
    void *zctx;
    void *dealer; /* used only by the I/O thread (and by destroy after the join) */
    int wake_fd;  /* eventfd: API threads poke the I/O thread */
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t call_cv;
    bool stopping;
    struct creq *reqs;
    struct ccall *calls;
    uint64_t next_req, next_call;
    struct client_counters counters;
};

static void *client_io_main(void *arg);

/* ---- helpers ---- */

static void wake(struct client *c)
{
    uint64_t one = 1;
    ssize_t r = write(c->wake_fd, &one, sizeof(one));
    (void)r; /* a full eventfd counter still wakes the poller */
}

static int64_t random_seed(void)
{
    uint64_t u = 0;
    if (getrandom(&u, sizeof(u), 0) != (ssize_t)sizeof(u)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        u = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    }
    return (int64_t)(u & (uint64_t)INT64_MAX);
}

/* Send one JSON message (not consumed). Returns 0 or ST_EIO (e.g. queue full). */
static int send_json(struct client *c, const json_t *m)
{
    char *s = json_dumps(m, JSON_COMPACT);
    if (!s) return ST_ENOMEM;
    int rc = zmq_send(c->dealer, s, strlen(s), ZMQ_DONTWAIT) < 0 ? ST_EIO : 0;
    free(s);
    return rc;
}

static void wire_id(const struct creq *r, char *buf, size_t cap)
{
    snprintf(buf, cap, "g%" PRIu64 ".%d", r->n, r->attempt);
}

static int send_simple(struct client *c, const char *op, const char *id)
{
    json_t *m = json_pack("{s:i,s:s,s:s}", "proto", PROTO_VERSION, "op", op, "id", id);
    if (!m) return ST_ENOMEM;
    int rc = send_json(c, m);
    json_decref(m);
    return rc;
}

static int send_generate(struct client *c, struct creq *r, int64_t now)
{
    char id[48];
    wire_id(r, id, sizeof(id));
    json_t *m = json_copy(r->body); /* shallow: only top-level keys change */
    if (!m) return ST_ENOMEM;
    json_object_set_new(m, "id", json_string(id));
    if (r->caller_timeout) {
        int64_t left = r->deadline - now;
        json_object_set_new(m, "timeout_ms", json_integer(left > 1 ? left : 1));
    }
    int rc = send_json(c, m);
    json_decref(m);
    return rc;
}

static void unlink_req(struct client *c, struct creq *r)
{
    for (struct creq **p = &c->reqs; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            c->counters.in_flight--;
            return;
        }
    }
}

static void free_req(struct creq *r)
{
    if (!r) return;
    json_decref(r->body);
    free(r);
}

static struct creq *find_req(struct client *c, uint64_t n)
{
    for (struct creq *r = c->reqs; r; r = r->next)
        if (r->n == n) return r;
    return NULL;
}

static void event_init(struct client_event *ev, enum client_event_type type, const struct creq *r)
{
    memset(ev, 0, sizeof(*ev));
    ev->type = type;
    ev->req = r->n;
    ev->user = r->user;
    ev->seed = r->seed;
    ev->attempts = r->attempt;
    ev->text = "";
}

/* ---- public API ---- */

int client_new(const struct client_opts *opts, struct client **out, struct st_errbuf *eb)
{
    *out = NULL;
    if (!opts || !opts->endpoint || !opts->endpoint[0])
        return st_errf(eb, ST_EINVAL, "client_new: no frontend endpoint given");
    if (strlen(opts->endpoint) >= sizeof(((struct client *)0)->endpoint))
        return st_errf(eb, ST_EINVAL, "client_new: endpoint '%.64s...' is too long",
                       opts->endpoint);
    struct client *c = calloc(1, sizeof(*c));
    if (!c) return st_errf(eb, ST_ENOMEM, "client_new: out of memory");
    snprintf(c->endpoint, sizeof(c->endpoint), "%s", opts->endpoint);
    c->idle_ms = opts->idle_timeout_ms > 0 ? opts->idle_timeout_ms : CLIENT_IDLE_TIMEOUT_MS;
    c->default_timeout_ms =
        opts->default_timeout_ms > 0 ? opts->default_timeout_ms : CLIENT_DEFAULT_DEADLINE_MS;
    c->next_req = 1;
    c->next_call = 1;
    c->wake_fd = -1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->call_cv, NULL);
    int rc;
    c->zctx = zmq_ctx_new();
    if (!c->zctx) {
        rc = st_errf(eb, ST_EIO, "client_new: zmq_ctx_new: %s", zmq_strerror(errno));
        goto err;
    }
    c->dealer = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->dealer) {
        rc = st_errf(eb, ST_EIO, "client_new: zmq_socket: %s", zmq_strerror(errno));
        goto err;
    }
    int linger = 0, hwm = 100000;
    int64_t maxmsg = MAX_WIRE_MSG;
    zmq_setsockopt(c->dealer, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(c->dealer, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(c->dealer, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(c->dealer, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    if (zmq_connect(c->dealer, c->endpoint) < 0) {
        rc = st_errf(eb, ST_EIO, "client_new: cannot connect to '%s': %s", c->endpoint,
                     zmq_strerror(errno));
        goto err;
    }
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->wake_fd < 0) {
        rc = st_errf(eb, ST_EIO, "client_new: eventfd: %s", strerror(errno));
        goto err;
    }
    if (pthread_create(&c->thread, NULL, client_io_main, c) != 0) {
        rc = st_errf(eb, ST_EIO, "client_new: cannot start the I/O thread");
        goto err;
    }
    c->thread_started = true;
    *out = c;
    return 0;
err:
    client_destroy(&c);
    return rc;
}

void client_destroy(struct client **cp)
{
    struct client *c = cp ? *cp : NULL;
    if (!c) return;
    *cp = NULL;
    if (c->thread_started) {
        pthread_mutex_lock(&c->mu);
        c->stopping = true;
        pthread_mutex_unlock(&c->mu);
        wake(c);
        pthread_join(c->thread, NULL);
    }
    /* the I/O thread is gone: this thread owns the socket now */
    bool sent_any = false;
    while (c->reqs) {
        struct creq *r = c->reqs;
        c->reqs = r->next;
        if (c->dealer && !r->need_send) {
            char id[48];
            wire_id(r, id, sizeof(id));
            sent_any |= send_simple(c, "cancel", id) == 0;
        }
        free_req(r);
    }
    if (c->dealer) {
        int linger = sent_any ? 200 : 0;
        zmq_setsockopt(c->dealer, ZMQ_LINGER, &linger, sizeof(linger));
        zmq_close(c->dealer);
    }
    if (c->zctx) zmq_ctx_term(c->zctx);
    if (c->wake_fd >= 0) close(c->wake_fd);
    /* calls still waiting would be a caller bug (client_call during destroy) */
    pthread_cond_destroy(&c->call_cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int check_int_field(const json_t *p, const char *key, int64_t lo, int64_t hi,
                           struct st_errbuf *eb)
{
    json_t *v = json_object_get(p, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return st_errf(eb, ST_EINVAL,
                       "client_submit: field '%s' must be an integer in [%lld, %lld]", key,
                       (long long)lo, (long long)hi);
    return 0;
}

int client_submit(struct client *c, const json_t *params, client_cb cb, void *user,
                  uint64_t *req_out, struct st_errbuf *eb)
{
    if (!cb) return st_errf(eb, ST_EINVAL, "client_submit: no callback");
    if (!json_is_object(params))
        return st_errf(eb, ST_EINVAL, "client_submit: params must be a JSON object");
    static const char *const reserved[] = {"op", "id", "proto"};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
        if (json_object_get(params, reserved[i]))
            return st_errf(eb, ST_EINVAL, "client_submit: field '%s' is set by the library",
                           reserved[i]);
    int rc = check_int_field(params, "seed", 0, INT64_MAX, eb);
    if (!rc) rc = check_int_field(params, "timeout_ms", 1, INT64_MAX / 4, eb);
    if (rc) return rc;
    json_t *stream = json_object_get(params, "stream");

    struct creq *r = calloc(1, sizeof(*r));
    json_t *body = json_deep_copy(params);
    if (!r || !body) {
        free(r);
        json_decref(body);
        return st_errf(eb, ST_ENOMEM, "client_submit: out of memory");
    }
    r->body = body;
    r->cb = cb;
    r->user = user;
    r->attempt = 1;
    r->stream = !stream || json_is_true(stream);
    json_t *seed = json_object_get(params, "seed");
    r->seed = seed ? json_integer_value(seed) : random_seed();
    json_t *tmo = json_object_get(params, "timeout_ms");
    r->caller_timeout = tmo != NULL;
    int64_t now = proto_now_ms();
    r->deadline = now + (tmo ? json_integer_value(tmo) : c->default_timeout_ms);
    r->last_heard = now;
    r->need_send = true;
    if (json_object_set_new(body, "seed", json_integer(r->seed)) ||
        json_object_set_new(body, "op", json_string("generate")) ||
        json_object_set_new(body, "proto", json_integer(PROTO_VERSION))) {
        free_req(r);
        return st_errf(eb, ST_ENOMEM, "client_submit: out of memory");
    }

    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        free_req(r);
        return st_errf(eb, ST_ESTATE, "client_submit: the client is being destroyed");
    }
    r->n = c->next_req++;
    r->next = c->reqs;
    c->reqs = r;
    c->counters.submitted++;
    c->counters.in_flight++;
    if (req_out) *req_out = r->n;
    pthread_mutex_unlock(&c->mu);
    wake(c);
    return 0;
}

int client_cancel(struct client *c, uint64_t req)
{
    pthread_mutex_lock(&c->mu);
    struct creq *r = find_req(c, req);
    if (r && !r->cancelled) {
        r->cancelled = true;
        r->need_cancel = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (!r) return ST_ENOTFOUND;
    wake(c);
    return 0;
}

json_t *client_call(struct client *c, const char *op, int timeout_ms)
{
    if (!op || (strcmp(op, "health") && strcmp(op, "models") && strcmp(op, "stats"))) return NULL;
    struct ccall call = {.op = op, .need_send = true};
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        return NULL;
    }
    call.n = c->next_call++;
    call.next = c->calls;
    c->calls = &call;
    pthread_mutex_unlock(&c->mu);
    wake(c);

    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    while (!call.done && !c->stopping)
        if (pthread_cond_timedwait(&c->call_cv, &c->mu, &until) == ETIMEDOUT) break;
    for (struct ccall **p = &c->calls; *p; p = &(*p)->next) {
        if (*p == &call) {
            *p = call.next;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return call.reply;
}

void client_get_counters(struct client *c, struct client_counters *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->counters;
    pthread_mutex_unlock(&c->mu);
}

/* ---- the I/O thread ---- */

/*
 * A terminal or chunk event prepared under the lock and delivered after it is
 * released (callbacks may call client_cancel). If done, r is already unlinked
 * and is freed after the callback.
 */
struct pending {
    struct client_event ev;
    struct creq *r;
    client_cb cb;
    bool done;
    char msgbuf[192];
};

static void deliver(struct pending *p)
{
    p->cb(&p->ev);
    if (p->done) free_req(p->r);
}

/* Library-made end of a request: "unavailable" (deadline) or "cancelled". */
static void make_local_end(struct client *c, struct creq *r, const char *finish, struct pending *p)
{
    bool started = r->delivered > 0 || r->seq > 0;
    bool cancel = !strcmp(finish, "cancelled");
    event_init(&p->ev, (started || cancel) ? CLIENT_FINAL : CLIENT_ERROR, r);
    if (!cancel) {
        snprintf(p->msgbuf, sizeof(p->msgbuf),
                 "no answer from the frontend at %.100s before the request's deadline",
                 c->endpoint);
        p->ev.code = "unavailable";
        p->ev.message = p->msgbuf;
    }
    p->ev.finish_reason = p->ev.type == CLIENT_FINAL ? finish : NULL;
    p->r = r;
    p->cb = r->cb;
    p->done = true;
    unlink_req(c, r);
}

/* Handle one message for request r (attempt already matched). Under the lock. */
static bool on_req_msg(struct client *c, struct creq *r, const json_t *m, const char *type,
                       int64_t now, struct pending *p)
{
    r->last_heard = now;
    r->status_sent = 0;
    if (!strcmp(type, "status")) {
        const char *state = json_string_value(json_object_get(m, "state"));
        if (!state || strcmp(state, "unknown")) return false; /* queued / running: alive */
        if (r->cancelled) {
            make_local_end(c, r, "cancelled", p);
            return true;
        }
        if (now >= r->deadline) {
            make_local_end(c, r, "error", p);
            return true;
        }
        log_info("client: request %" PRIu64 " unknown to the frontend (restarted?): resubmitting "
                 "attempt %d with seed %lld, %zu bytes already delivered",
                 r->n, r->attempt + 1, (long long)r->seed, r->delivered);
        r->attempt++;
        r->need_send = true;
        c->counters.resubmitted++;
        return false;
    }
    if (!strcmp(type, "chunk")) {
        if (!r->stream) return false;
        json_t *jt = json_object_get(m, "text"), *jo = json_object_get(m, "offset");
        if (!json_is_string(jt) || !json_is_integer(jo) || json_integer_value(jo) < 0) {
            log_warn("client: malformed chunk for request %" PRIu64 " ignored", r->n);
            return false;
        }
        const char *text = json_string_value(jt);
        size_t len = json_string_length(jt), off = (size_t)json_integer_value(jo);
        if (off + len <= r->delivered) return false; /* already delivered (resubmission) */
        size_t skip = 0;
        if (off < r->delivered)
            skip = r->delivered - off;
        else if (off > r->delivered)
            log_warn("client: request %" PRIu64 ": chunk at offset %zu after %zu delivered bytes",
                     r->n, off, r->delivered);
        event_init(&p->ev, CLIENT_CHUNK, r);
        p->ev.text = text + skip;
        p->ev.len = len - skip;
        p->ev.offset = off + skip;
        p->ev.seq = r->seq++;
        p->ev.msg = m;
        r->delivered = off + len;
        p->r = r;
        p->cb = r->cb;
        p->done = false;
        return true;
    }
    if (!strcmp(type, "final") || !strcmp(type, "error")) {
        bool final = !strcmp(type, "final");
        const char *code = json_string_value(json_object_get(json_object_get(m, "error"), "code"));
        if (!final && r->attempt > 1 && code &&
            (!strcmp(code, "busy") || !strcmp(code, "unavailable")) &&
            now + c->idle_ms < r->deadline && !r->cancelled) {
            /* a resubmission the restarted frontend cannot take yet: try again */
            log_info("client: resubmission of request %" PRIu64 " answered %s: retrying in %d ms",
                     r->n, code, c->idle_ms);
            r->attempt++;
            r->need_send = true;
            r->retry_at = now + c->idle_ms;
            c->counters.resubmitted++;
            return false;
        }
        bool started = r->delivered > 0 || r->seq > 0;
        event_init(&p->ev, (final || started) ? CLIENT_FINAL : CLIENT_ERROR, r);
        json_t *err = json_object_get(m, "error");
        p->ev.code = json_string_value(json_object_get(err, "code"));
        p->ev.message = json_string_value(json_object_get(err, "message"));
        if (err && !p->ev.code) p->ev.code = "internal";
        if (p->ev.code && !p->ev.message) p->ev.message = p->ev.code;
        if (p->ev.type == CLIENT_FINAL) {
            const char *fr = final ? json_string_value(json_object_get(m, "finish_reason")) : NULL;
            p->ev.finish_reason = fr ? fr : "error";
        }
        json_t *jt = json_object_get(m, "text");
        if (final && json_is_string(jt)) {
            p->ev.text = json_string_value(jt);
            p->ev.len = json_string_length(jt);
        }
        p->ev.msg = m;
        p->r = r;
        p->cb = r->cb;
        p->done = true;
        unlink_req(c, r);
        return true;
    }
    log_warn("client: message of type '%.32s' for request %" PRIu64 " ignored", type, r->n);
    return false;
}

static void on_message(struct client *c, const char *data, size_t len)
{
    json_t *m = json_loadb(data, len, 0, NULL);
    if (!json_is_object(m)) {
        log_warn("client: invalid JSON from the frontend ignored");
        json_decref(m);
        return;
    }
    const char *id = json_string_value(json_object_get(m, "id"));
    const char *type = json_string_value(json_object_get(m, "type"));
    if (!id || !type) {
        json_t *err = json_object_get(m, "error");
        log_warn("client: frontend message without id/type ignored%s%s", err ? ": " : "",
                 err ? json_string_value(json_object_get(err, "message")) : "");
        json_decref(m);
        return;
    }
    uint64_t n;
    int attempt, used = 0;
    struct pending p;
    bool have = false;
    pthread_mutex_lock(&c->mu);
    if (id[0] == 'q' && sscanf(id + 1, "%" SCNu64 "%n", &n, &used) == 1 && !id[1 + used]) {
        for (struct ccall *k = c->calls; k; k = k->next) {
            if (k->n == n && !k->done) {
                k->reply = json_incref(m);
                k->done = true;
                pthread_cond_broadcast(&c->call_cv);
            }
        }
    } else if (id[0] == 'g' && sscanf(id + 1, "%" SCNu64 ".%d%n", &n, &attempt, &used) == 2 &&
               !id[1 + used]) {
        struct creq *r = find_req(c, n);
        if (r && r->attempt == attempt && !r->need_send)
            have = on_req_msg(c, r, m, type, proto_now_ms(), &p);
    }
    pthread_mutex_unlock(&c->mu);
    if (have) deliver(&p);
    json_decref(m);
}

/* Send what API threads queued and run the timers. Returns the next timer delay. */
static int do_sends_and_timers(struct client *c)
{
    int64_t now = proto_now_ms();
    int64_t next = now + 1000;
    for (;;) {
        struct pending p;
        bool have = false;
        pthread_mutex_lock(&c->mu);
        for (struct ccall *k = c->calls; k; k = k->next) {
            if (!k->need_send) continue;
            char id[32];
            snprintf(id, sizeof(id), "q%" PRIu64, k->n);
            if (send_simple(c, k->op, id) == 0) k->need_send = false;
        }
        for (struct creq *r = c->reqs; r && !have; r = r->next) {
            if (r->need_send && !r->cancelled) {
                if (now >= r->retry_at && send_generate(c, r, now) == 0) {
                    r->need_send = false;
                    r->last_heard = now;
                    r->status_sent = 0;
                }
            } else if (r->need_send && r->cancelled) {
                make_local_end(c, r, "cancelled", &p); /* never sent: nothing to cancel */
                have = true;
                break;
            }
            char id[48];
            wire_id(r, id, sizeof(id));
            if (r->need_cancel && !r->need_send) {
                if (send_simple(c, "cancel", id) == 0) r->need_cancel = false;
            }
            if (now >= r->deadline + c->idle_ms) {
                make_local_end(c, r, "error", &p);
                have = true;
                break;
            }
            if (r->cancelled && r->status_sent && now - r->status_sent >= c->idle_ms) {
                make_local_end(c, r, "cancelled", &p); /* frontend gone: end it here */
                have = true;
                break;
            }
            if (!r->need_send && now - r->last_heard >= c->idle_ms &&
                (!r->status_sent || now - r->status_sent >= c->idle_ms)) {
                if (send_simple(c, "status", id) == 0) {
                    r->status_sent = now;
                    c->counters.status_sent++;
                }
            }
            int64_t t = r->status_sent ? r->status_sent + c->idle_ms : r->last_heard + c->idle_ms;
            if (t < next) next = t;
            if (r->deadline + c->idle_ms < next) next = r->deadline + c->idle_ms;
            if (r->need_send && r->retry_at > now && r->retry_at < next) next = r->retry_at;
        }
        pthread_mutex_unlock(&c->mu);
        if (!have) break;
        deliver(&p);
    }
    int64_t d = next - proto_now_ms();
    return d < 1 ? 1 : d > 1000 ? 1000 : (int)d;
}

static void *client_io_main(void *arg)
{
    struct client *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        bool stop = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (stop) break;
        int timeout = do_sends_and_timers(c);
        zmq_pollitem_t items[2] = {{.socket = c->dealer, .events = ZMQ_POLLIN},
                                   {.socket = NULL, .fd = c->wake_fd, .events = ZMQ_POLLIN}};
        if (zmq_poll(items, 2, timeout) < 0) {
            if (errno == EINTR) continue;
            log_error("client: zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            uint64_t v;
            ssize_t r = read(c->wake_fd, &v, sizeof(v));
            (void)r;
        }
        for (int i = 0; i < 256; i++) { /* bounded so sends and timers keep running */
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, c->dealer, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msg);
                break;
            }
            bool more = zmq_msg_more(&msg);
            if (!more)
                on_message(c, zmq_msg_data(&msg), zmq_msg_size(&msg));
            else
                log_warn("client: multi-frame message from the frontend ignored");
            zmq_msg_close(&msg);
            while (more) { /* drain the rest of a multi-frame message */
                zmq_msg_init(&msg);
                if (zmq_msg_recv(&msg, c->dealer, ZMQ_DONTWAIT) < 0)
                    more = false;
                else
                    more = zmq_msg_more(&msg);
                zmq_msg_close(&msg);
            }
        }
    }
    return NULL;
}
