/* The HTTP gateway: see gateway.h. */
#include "gateway.h"

#include "common/log.h"
#include "frontend/client.h"
#include "http/metrics.h"
#include "http/openai.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GW_MAX_KEYS 16
#define GW_QUERY_MS 1000 /* health/models/stats query timeout */
#define GW_FRESH_MS 200  /* a query reply younger than this is reused */
#define GW_STALE_MS 1000 /* ... and one younger than this while another thread asks */

enum route { R_NONE, R_COMPLETIONS, R_CHAT, R_MODELS, R_HEALTH, R_METRICS };

/*
 * One HTTP request. References: the MHD request (until its completion
 * notice), the client request (until its terminal event) and the streaming
 * response (until MHD frees it); freed at zero. Linked in gw.all while
 * allocated, so the checker thread can look at waiting connections.
 */
struct hreq {
    struct hreq *next, *prev;
    struct gw *gw;
    struct MHD_Connection *conn;
    pthread_mutex_t mu;
    int refs;
    enum route route;
    bool post;

    char *body; /* request body (at most max_body_bytes) */
    size_t len, cap;
    bool too_big;
    bool handled; /* the request was looked at (answered or submitted) */

    struct oai_req oai;
    char oid[48];
    int64_t created;
    uint64_t creq;
    bool submitted, terminal;
    bool suspended, responded, conn_done, gone;

    char *out; /* event-stream bytes not yet sent */
    size_t out_len, out_pos, out_cap;
    bool out_end;
    bool first_chunk_done;

    json_t *final;        /* non-stream: the final message */
    struct oai_error err; /* the answer when has_err */
    bool has_err;
    const char *outcome;     /* metrics label */
    int64_t t_start, t_last; /* ms */
    bool got_first;
};

/*
 * The last reply of one frontend query. At most one pool thread waits for
 * the frontend per query; the others answer from the cache (or with "no
 * answer"), so a flood of /health while the frontend is down cannot tie up
 * every thread.
 */
struct qcache {
    const char *op;
    pthread_mutex_t mu;
    json_t *val; /* NULL = the last query got no answer */
    int64_t at;  /* when val was stored (0 = never) */
    bool asking; /* a thread is querying the frontend */
};

struct gw {
    const struct staged_config *cfg;
    struct qcache q_health, q_models, q_stats;
    struct client *cl;
    struct MHD_Daemon *d;
    struct metrics metrics;
    char keys[GW_MAX_KEYS][CONF_STR];
    int n_keys;
    uint16_t port;

    pthread_mutex_t all_mu;
    struct hreq *all;
    pthread_t checker;
    bool checker_started;
    bool stopping; /* under all_mu */
    bool draining; /* new requests are answered 503 */
    bool quiesced; /* no longer listening */
    pthread_cond_t stop_cv;
};

/* ---- request objects ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct hreq *hreq_new(struct gw *g, struct MHD_Connection *conn)
{
    struct hreq *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->gw = g;
    h->conn = conn;
    h->refs = 1;
    h->oai.logprobs = -1;
    h->t_start = now_ms();
    h->outcome = "unknown";
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_lock(&g->all_mu);
    h->next = g->all;
    if (g->all) g->all->prev = h;
    g->all = h;
    pthread_mutex_unlock(&g->all_mu);
    return h;
}

static void hreq_free(struct hreq *h)
{
    oai_req_clear(&h->oai);
    json_decref(h->final);
    free(h->body);
    free(h->out);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

/* Drop one reference; call without h->mu held. */
static void hreq_release(struct hreq *h)
{
    pthread_mutex_lock(&h->mu);
    int left = --h->refs;
    pthread_mutex_unlock(&h->mu);
    if (left) return;
    struct gw *g = h->gw;
    pthread_mutex_lock(&g->all_mu);
    if (h->prev)
        h->prev->next = h->next;
    else
        g->all = h->next;
    if (h->next) h->next->prev = h->prev;
    pthread_cond_broadcast(&g->stop_cv);
    pthread_mutex_unlock(&g->all_mu);
    hreq_free(h);
}

/* Resume h's connection if it waits. Under h->mu. */
static void wake_conn(struct hreq *h)
{
    if (h->suspended && !h->conn_done) {
        h->suspended = false;
        MHD_resume_connection(h->conn);
    }
}

/* Suspend h's connection until wake_conn. Under h->mu, from an MHD callback. */
static void park_conn(struct hreq *h)
{
    h->suspended = true;
    MHD_suspend_connection(h->conn);
}

static int out_append(struct hreq *h, const char *s, size_t n)
{
    if (h->out_len + n > h->out_cap) {
        size_t cap = h->out_cap ? h->out_cap * 2 : 4096;
        while (cap < h->out_len + n)
            cap *= 2;
        char *p = realloc(h->out, cap);
        if (!p) return ST_ENOMEM;
        h->out = p;
        h->out_cap = cap;
    }
    memcpy(h->out + h->out_len, s, n);
    h->out_len += n;
    return 0;
}

/* Append `data: JSON\n\n` (j consumed). */
static void out_event(struct hreq *h, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) return;
    out_append(h, "data: ", 6);
    out_append(h, s, strlen(s));
    out_append(h, "\n\n", 2);
    free(s);
}

/* ---- responses ---- */

static enum MHD_Result answer_text(struct MHD_Connection *c, unsigned status, const char *ctype,
                                   const char *body, const char *retry_after)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Queue j (consumed) as a JSON answer. */
static enum MHD_Result answer_json(struct MHD_Connection *c, unsigned status, json_t *j,
                                   const char *retry_after)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) return MHD_NO;
    enum MHD_Result ret = answer_text(c, status, "application/json", s, retry_after);
    free(s);
    return ret;
}

static const char *outcome_of(const struct oai_error *e)
{
    switch (e->status) {
    case 400:
        return "bad_request";
    case 401:
        return "unauthorized";
    case 404:
        return "not_found";
    case 405:
        return "bad_method";
    case 429:
        return "busy";
    case 503:
        return "unavailable";
    case 504:
        return "timeout";
    default:
        return "error";
    }
}

static const char *endpoint_label(enum route r)
{
    switch (r) {
    case R_COMPLETIONS:
        return "completions";
    case R_CHAT:
        return "chat_completions";
    case R_MODELS:
        return "models";
    case R_HEALTH:
        return "health";
    case R_METRICS:
        return "metrics";
    default:
        return "other";
    }
}

static enum MHD_Result answer_error(struct hreq *h, const struct oai_error *e)
{
    h->outcome = outcome_of(e);
    return answer_json(h->conn, (unsigned)e->status, oai_error_json(e),
                       e->status == 429 ? "1" : NULL);
}

/* ---- events from the client library (its I/O thread) ---- */

static void on_event(const struct client_event *ev)
{
    struct hreq *h = ev->user;
    struct gw *g = h->gw;
    int64_t now = now_ms();
    pthread_mutex_lock(&h->mu);
    if (ev->type == CLIENT_CHUNK) {
        json_t *toks = json_object_get(ev->msg, "tokens");
        int64_t ntok = json_is_array(toks) ? (int64_t)json_array_size(toks) : 1;
        if (!h->got_first)
            metrics_ttft(&g->metrics, (double)(now - h->t_start) / 1000.0);
        else
            metrics_per_token(&g->metrics, (double)(now - h->t_last) / 1000.0, ntok);
        h->got_first = true;
        h->t_last = now;
        if (!h->gone && ev->len)
            out_event(h, oai_chunk(&h->oai, h->oid, h->created, ev->text, ev->len,
                                   !h->first_chunk_done, json_object_get(ev->msg, "logprobs"),
                                   ev->offset, NULL));
        if (ev->len) h->first_chunk_done = true;
        wake_conn(h);
        pthread_mutex_unlock(&h->mu);
        return;
    }
    h->terminal = true;
    const char *fin = ev->type == CLIENT_FINAL ? ev->finish_reason : NULL;
    if (fin && (!strcmp(fin, "stop") || !strcmp(fin, "length"))) {
        h->outcome = !strcmp(fin, "stop") ? "stop" : "length"; /* static: fin dies with ev */
        json_t *u = json_object_get(ev->msg, "usage");
        metrics_tokens(&g->metrics, json_integer_value(json_object_get(u, "prompt_tokens")),
                       json_integer_value(json_object_get(u, "completion_tokens")));
        if (h->oai.stream) {
            out_event(h, oai_chunk(&h->oai, h->oid, h->created, "", 0, !h->first_chunk_done, NULL,
                                   0, fin));
            if (h->oai.include_usage)
                out_event(h, oai_usage_chunk(&h->oai, h->oid, h->created, ev->msg));
            out_append(h, "data: [DONE]\n\n", 14);
        } else {
            h->final = json_incref((json_t *)ev->msg);
        }
    } else {
        /* rejected, failed or cancelled (deadline, or our own cancel) */
        if (fin && !strcmp(fin, "cancelled"))
            oai_error_set(&h->err, 504, "server_error", "timeout", NULL,
                          "the request was cancelled before it completed (deadline %s)",
                          h->gone ? "or client disconnect" : "reached");
        else
            oai_error_from_frontend(ev->code, ev->message, &h->err);
        h->has_err = true;
        h->outcome = h->gone ? "disconnected" : outcome_of(&h->err);
        if (h->responded && h->oai.stream) out_event(h, oai_error_json(&h->err));
    }
    h->out_end = true;
    wake_conn(h);
    pthread_mutex_unlock(&h->mu);
    hreq_release(h); /* the client's reference */
}

/* ---- streaming body ---- */

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct hreq *h = cls;
    pthread_mutex_lock(&h->mu);
    ssize_t n;
    if (h->gone) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (h->out_pos < h->out_len) {
        size_t k = h->out_len - h->out_pos;
        if (k > max) k = max;
        memcpy(buf, h->out + h->out_pos, k);
        h->out_pos += k;
        if (h->out_pos == h->out_len) h->out_pos = h->out_len = 0;
        n = (ssize_t)k;
    } else if (h->out_end) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        park_conn(h);
        n = 0;
    }
    pthread_mutex_unlock(&h->mu);
    return n;
}

static void stream_free(void *cls)
{
    struct hreq *h = cls;
    metrics_streams(&h->gw->metrics, -1);
    hreq_release(h);
}

/*
 * A submitted request whose connection was resumed (or that got its first
 * event at once): answer if there is something to answer with. Under h->mu.
 */
static enum MHD_Result answer_ready(struct hreq *h)
{
    if (h->gone) return MHD_NO; /* the client left: just close */
    if (h->has_err) return answer_error(h, &h->err);
    if (h->oai.stream && (h->out_len > h->out_pos || h->out_end)) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, h, stream_free);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        h->refs++; /* the response's, released by stream_free */
        h->responded = true;
        metrics_streams(&h->gw->metrics, 1);
        enum MHD_Result ret = MHD_queue_response(h->conn, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (!h->oai.stream && h->final) {
        h->responded = true;
        return answer_json(h->conn, MHD_HTTP_OK,
                           oai_response(&h->oai, h->oid, h->created, h->final), NULL);
    }
    park_conn(h);
    return MHD_YES;
}

/* ---- frontend queries ---- */

static void qcache_init(struct qcache *q, const char *op)
{
    q->op = op;
    pthread_mutex_init(&q->mu, NULL);
}

static void qcache_destroy(struct qcache *q)
{
    json_decref(q->val);
    pthread_mutex_destroy(&q->mu);
}

/* The frontend's reply to q->op (new reference), or NULL if it does not answer. */
static json_t *query(struct gw *g, struct qcache *q)
{
    int64_t now = now_ms();
    pthread_mutex_lock(&q->mu);
    if (q->at && now - q->at < GW_FRESH_MS) {
        json_t *r = json_incref(q->val);
        pthread_mutex_unlock(&q->mu);
        return r;
    }
    if (q->asking) {
        json_t *r = q->at && now - q->at < GW_STALE_MS ? json_incref(q->val) : NULL;
        pthread_mutex_unlock(&q->mu);
        return r;
    }
    q->asking = true;
    pthread_mutex_unlock(&q->mu);
    json_t *r = client_call(g->cl, q->op, GW_QUERY_MS);
    if (r && json_object_get(r, "error")) {
        json_decref(r);
        r = NULL;
    }
    pthread_mutex_lock(&q->mu);
    json_decref(q->val);
    q->val = json_incref(r);
    q->at = now_ms();
    q->asking = false;
    pthread_mutex_unlock(&q->mu);
    return r;
}

/* ---- routes ---- */

static bool authorized(struct gw *g, struct MHD_Connection *c)
{
    if (!g->n_keys) return true;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!a || strncasecmp(a, "Bearer ", 7)) return false;
    a += 7;
    while (*a == ' ')
        a++;
    bool ok = false;
    size_t la = strlen(a);
    for (int i = 0; i < g->n_keys; i++) {
        size_t lk = strlen(g->keys[i]);
        unsigned diff = (unsigned)(la ^ lk);
        for (size_t k = 0; k < lk; k++)
            diff |= (unsigned)(g->keys[i][k] ^ (k < la ? a[k] : 0));
        ok |= diff == 0;
    }
    return ok;
}

static void make_oid(struct hreq *h)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r)) r = (uint64_t)now_ms() ^ (uintptr_t)h;
    snprintf(h->oid, sizeof(h->oid), "%s-%016" PRIx64, h->route == R_CHAT ? "chatcmpl" : "cmpl", r);
    h->created = (int64_t)time(NULL);
}

static enum MHD_Result do_generate(struct hreq *h)
{
    struct gw *g = h->gw;
    struct oai_error err;
    if (h->too_big) {
        oai_error_set(&err, 400, "invalid_request_error", "too_large", NULL,
                      "request body exceeds the limit of %lld bytes",
                      (long long)g->cfg->http.max_body_bytes);
        return answer_error(h, &err);
    }
    if (oai_parse(h->route == R_CHAT ? OAI_CHAT : OAI_COMPLETIONS, h->body ? h->body : "", h->len,
                  &h->oai, &err))
        return answer_error(h, &err);
    make_oid(h);
    struct st_errbuf eb = {{0}};
    pthread_mutex_lock(&h->mu);
    h->refs++; /* the client's, released at the terminal event */
    h->submitted = true;
    int rc = client_submit(g->cl, h->oai.params, on_event, h, &h->creq, &eb);
    if (rc) {
        h->refs--;
        h->submitted = false;
        pthread_mutex_unlock(&h->mu);
        oai_error_set(&err, rc == ST_EINVAL ? 400 : 503,
                      rc == ST_EINVAL ? "invalid_request_error" : "server_error", NULL, NULL, "%s",
                      eb.msg);
        return answer_error(h, &err);
    }
    enum MHD_Result ret = answer_ready(h);
    pthread_mutex_unlock(&h->mu);
    return ret;
}

static enum MHD_Result do_models(struct hreq *h)
{
    json_t *r = query(h->gw, &h->gw->q_models);
    json_t *ms = json_object_get(r, "models");
    if (!json_is_array(ms)) {
        json_decref(r);
        struct oai_error e;
        oai_error_set(&e, 503, "server_error", "unavailable", NULL,
                      "the frontend did not answer the models query");
        return answer_error(h, &e);
    }
    json_t *data = json_array(), *m;
    size_t i;
    json_array_foreach(ms, i, m)
    {
        json_t *o = json_pack("{s:O,s:s,s:i,s:s}", "id", json_object_get(m, "id"), "object",
                              "model", "created", 0, "owned_by", "staged");
        const char *k;
        json_t *v;
        json_object_foreach(m, k, v) if (strcmp(k, "id")) json_object_set(o, k, v);
        json_array_append_new(data, o);
    }
    json_decref(r);
    h->outcome = "ok";
    return answer_json(h->conn, MHD_HTTP_OK, json_pack("{s:s,s:o}", "object", "list", "data", data),
                       NULL);
}

static enum MHD_Result do_health(struct hreq *h)
{
    json_t *r = query(h->gw, &h->gw->q_health);
    if (!r || !json_is_object(json_object_get(r, "stages"))) {
        json_decref(r);
        h->outcome = "unavailable";
        return answer_json(h->conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                           json_pack("{s:s,s:s}", "status", "unavailable", "reason",
                                     "the frontend does not answer"),
                           "1");
    }
    bool ok = json_is_true(json_object_get(r, "ok"));
    char reason[256] = "";
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(r, "stages"), k, v)
    {
        const char *st = json_string_value(json_object_get(v, "state"));
        if (st && !strcmp(st, "ready")) continue;
        ok = false;
        size_t at = strlen(reason);
        snprintf(reason + at, sizeof(reason) - at, "%s%s is %s", at ? ", " : "", k,
                 st ? st : "in an unknown state");
    }
    if (!ok && !reason[0]) snprintf(reason, sizeof(reason), "the frontend reports not ready");
    json_t *body = json_pack("{s:s,s:O}", "status", ok ? "ok" : "unavailable", "frontend", r);
    if (!ok) json_object_set_new(body, "reason", json_string(reason));
    json_decref(r);
    h->outcome = ok ? "ok" : "unavailable";
    return answer_json(h->conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, body,
                       ok ? NULL : "1");
}

static enum MHD_Result do_metrics(struct hreq *h)
{
    json_t *stats = query(h->gw, &h->gw->q_stats);
    h->outcome = "ok";
    metrics_request(&h->gw->metrics, "metrics", "ok"); /* count this scrape in itself */
    h->outcome = NULL;
    char *text = metrics_render(&h->gw->metrics, stats);
    json_decref(stats);
    if (!text) return MHD_NO;
    enum MHD_Result ret =
        answer_text(h->conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, NULL);
    free(text);
    return ret;
}

static enum route route_of(const char *url, bool *post_expected)
{
    static const struct {
        const char *path;
        enum route r;
        bool post;
    } routes[] = {
        {"/v1/completions", R_COMPLETIONS, true}, {"/v1/chat/completions", R_CHAT, true},
        {"/v1/models", R_MODELS, false},          {"/health", R_HEALTH, false},
        {"/metrics", R_METRICS, false},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (!strcmp(url, routes[i].path)) {
            *post_expected = routes[i].post;
            return routes[i].r;
        }
    }
    return R_NONE;
}

static enum MHD_Result handle(struct hreq *h, const char *url, const char *method)
{
    struct gw *g = h->gw;
    struct oai_error e;
    bool want_post = false;
    h->route = route_of(url, &want_post);
    if (h->route == R_NONE) {
        oai_error_set(&e, 404, "invalid_request_error", "not_found", NULL,
                      "no such endpoint: %.64s %.128s", method, url);
        return answer_error(h, &e);
    }
    if (strcmp(method, want_post ? "POST" : "GET") && !(!want_post && !strcmp(method, "HEAD"))) {
        oai_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                      "%s needs %s, not %.16s", url, want_post ? "POST" : "GET", method);
        return answer_error(h, &e);
    }
    if (!strncmp(url, "/v1/", 4) && !authorized(g, h->conn)) {
        oai_error_set(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                      "missing or incorrect API key (send Authorization: Bearer KEY)");
        return answer_error(h, &e);
    }
    if (__atomic_load_n(&g->draining, __ATOMIC_ACQUIRE)) {
        oai_error_set(&e, 503, "server_error", "unavailable", NULL, "the gateway is shutting down");
        return answer_error(h, &e);
    }
    switch (h->route) {
    case R_COMPLETIONS:
    case R_CHAT:
        return do_generate(h);
    case R_MODELS:
        return do_models(h);
    case R_HEALTH:
        return do_health(h);
    case R_METRICS:
        return do_metrics(h);
    default:
        return MHD_NO;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct gw *g = cls;
    struct hreq *h = *con_cls;
    if (!h) {
        h = hreq_new(g, conn);
        if (!h) return MHD_NO;
        *con_cls = h;
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)g->cfg->http.max_body_bytes) {
            /* answer at once; MHD then discards the body and closes */
            struct oai_error e;
            h->handled = true;
            h->route = route_of(url, &(bool){false});
            oai_error_set(&e, 400, "invalid_request_error", "too_large", NULL,
                          "request body of %s bytes exceeds the limit of %lld bytes", cl,
                          (long long)g->cfg->http.max_body_bytes);
            return answer_error(h, &e);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (h->handled) return MHD_YES; /* already answered: discard */
        if (h->too_big || h->len + n > (size_t)g->cfg->http.max_body_bytes) {
            h->too_big = true;
            return MHD_YES;
        }
        if (h->len + n + 1 > h->cap) {
            size_t cap = h->cap ? h->cap * 2 : 4096;
            while (cap < h->len + n + 1)
                cap *= 2;
            char *p = realloc(h->body, cap);
            if (!p) return MHD_NO;
            h->body = p;
            h->cap = cap;
        }
        memcpy(h->body + h->len, upload_data, n);
        h->len += n;
        h->body[h->len] = 0;
        return MHD_YES;
    }
    if (!h->handled) {
        h->handled = true;
        return handle(h, url, method);
    }
    /* resumed after a suspension: a submitted request with news */
    pthread_mutex_lock(&h->mu);
    enum MHD_Result ret = h->responded ? MHD_YES : answer_ready(h);
    pthread_mutex_unlock(&h->mu);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct gw *g = cls;
    struct hreq *h = *con_cls;
    if (!h) return;
    *con_cls = NULL;
    pthread_mutex_lock(&h->mu);
    h->conn_done = true;
    bool cancel = h->submitted && !h->terminal;
    if (cancel || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) h->gone = true;
    if (cancel) client_cancel(g->cl, h->creq);
    const char *outcome = cancel ? "disconnected" : h->outcome;
    if (h->submitted && !h->terminal) h->outcome = "disconnected";
    pthread_mutex_unlock(&h->mu);
    if (outcome) metrics_request(&g->metrics, endpoint_label(h->route), outcome);
    if (cancel) log_info("client of %s went away: request cancelled", endpoint_label(h->route));
    hreq_release(h);
}

/* ---- disconnect checks ---- */

static bool peer_closed(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void *checker_main(void *arg)
{
    struct gw *g = arg;
    pthread_mutex_lock(&g->all_mu);
    while (!g->stopping) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += GW_CHECK_MS * 1000000L;
        while (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->stop_cv, &g->all_mu, &t);
        for (struct hreq *h = g->all; h; h = h->next) {
            pthread_mutex_lock(&h->mu);
            if (h->suspended && !h->conn_done) {
                if (peer_closed(h->conn)) {
                    h->gone = true;
                    if (h->submitted && !h->terminal) client_cancel(g->cl, h->creq);
                    wake_conn(h);
                } else if (h->out_len > h->out_pos || h->out_end || h->has_err) {
                    wake_conn(h); /* belt and braces: never leave news waiting */
                }
            }
            pthread_mutex_unlock(&h->mu);
        }
    }
    pthread_mutex_unlock(&g->all_mu);
    return NULL;
}

/* ---- setup ---- */

static int parse_listen(const char *s, struct sockaddr_storage *ss, struct st_errbuf *eb)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host))
        return st_errf(eb, ST_EINVAL, "[http] listen: '%s' is not ADDRESS:PORT", s);
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return st_errf(eb, ST_EINVAL, "[http] listen: port in '%s' is not 0..65535", s);
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        host[strlen(host) - 1] = 0;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1)
            return st_errf(eb, ST_EINVAL, "[http] listen: '%s' is not an IPv6 address", host + 1);
        return 0;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
        return st_errf(eb, ST_EINVAL, "[http] listen: '%s' is not an IPv4 address", host);
    return 0;
}

static int parse_keys(struct gw *g, const char *s, struct st_errbuf *eb)
{
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p) break;
        size_t n = strcspn(p, ", ");
        if (g->n_keys == GW_MAX_KEYS)
            return st_errf(eb, ST_EINVAL, "[http] api_keys: more than %d keys", GW_MAX_KEYS);
        if (n >= CONF_STR) return st_errf(eb, ST_EINVAL, "[http] api_keys: key too long");
        memcpy(g->keys[g->n_keys], p, n);
        g->keys[g->n_keys++][n] = 0;
        p += n;
    }
    return 0;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    size_t n = strlen(buf);
    while (n && buf[n - 1] == '\n')
        buf[--n] = 0;
    log_warn("libmicrohttpd: %s", buf);
}

int gw_new(const struct staged_config *cfg, struct gw **out, struct st_errbuf *eb)
{
    *out = NULL;
    struct gw *g = calloc(1, sizeof(*g));
    if (!g) return st_errf(eb, ST_ENOMEM, "gateway: out of memory");
    g->cfg = cfg;
    metrics_init(&g->metrics);
    qcache_init(&g->q_health, "health");
    qcache_init(&g->q_models, "models");
    qcache_init(&g->q_stats, "stats");
    pthread_mutex_init(&g->all_mu, NULL);
    pthread_cond_init(&g->stop_cv, NULL);
    struct sockaddr_storage ss;
    int rc = parse_listen(cfg->http.listen, &ss, eb);
    if (!rc) rc = parse_keys(g, cfg->http.api_keys, eb);
    if (rc) goto err;
    struct client_opts co = {.endpoint = cfg->frontend.endpoint,
                             .default_timeout_ms = cfg->frontend.request_timeout_ms};
    rc = client_new(&co, &g->cl, eb);
    if (rc) goto err;
    unsigned threads = cfg->http.threads > 0 ? (unsigned)cfg->http.threads : 1;
    unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    g->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, g, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, g, MHD_OPTION_CONNECTION_LIMIT, 4096u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
    if (!g->d) {
        rc = st_errf(eb, ST_EIO, "gateway: cannot listen on %s: %s", cfg->http.listen,
                     strerror(errno));
        goto err;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(g->d, MHD_DAEMON_INFO_BIND_PORT);
    g->port = di ? di->port : 0;
    if (pthread_create(&g->checker, NULL, checker_main, g)) {
        rc = st_errf(eb, ST_EIO, "gateway: cannot start the checker thread");
        goto err;
    }
    g->checker_started = true;
    *out = g;
    return 0;
err:
    gw_destroy(&g);
    return rc;
}

bool gw_drain(struct gw *g, int64_t timeout_ms)
{
    __atomic_store_n(&g->draining, true, __ATOMIC_RELEASE);
    if (!g->quiesced) {
        MHD_socket fd = MHD_quiesce_daemon(g->d);
        if (fd != MHD_INVALID_SOCKET) close(fd); /* refuse new connections at once */
        g->quiesced = true;
    }
    int64_t until = now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&g->all_mu);
        bool idle = g->all == NULL;
        pthread_mutex_unlock(&g->all_mu);
        if (idle) return true;
        if (now_ms() >= until) return false;
        usleep(20 * 1000);
    }
}

uint16_t gw_port(const struct gw *g)
{
    return g->port;
}

void gw_destroy(struct gw **gp)
{
    struct gw *g = gp ? *gp : NULL;
    if (!g) return;
    *gp = NULL;
    if (g->d && !g->quiesced) {
        MHD_socket fd = MHD_quiesce_daemon(g->d);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
    if (g->checker_started) {
        pthread_mutex_lock(&g->all_mu);
        g->stopping = true;
        pthread_cond_broadcast(&g->stop_cv);
        pthread_mutex_unlock(&g->all_mu);
        pthread_join(g->checker, NULL);
    }
    /* end every waiting connection: MHD must not be stopped with suspended ones */
    for (int round = 0; g->d && round < 100; round++) {
        bool any = false;
        pthread_mutex_lock(&g->all_mu);
        for (struct hreq *h = g->all; h; h = h->next) {
            pthread_mutex_lock(&h->mu);
            if (!h->conn_done) {
                h->gone = true;
                any |= h->suspended;
                wake_conn(h);
            }
            pthread_mutex_unlock(&h->mu);
        }
        pthread_mutex_unlock(&g->all_mu);
        if (!any) break;
        usleep(10000);
    }
    if (g->d) MHD_stop_daemon(g->d);
    client_destroy(&g->cl); /* no more events; requests in flight are cancelled */
    while (g->all) {        /* what only the client still referenced */
        struct hreq *h = g->all;
        g->all = h->next;
        hreq_free(h);
    }
    metrics_destroy(&g->metrics);
    qcache_destroy(&g->q_health);
    qcache_destroy(&g->q_models);
    qcache_destroy(&g->q_stats);
    pthread_cond_destroy(&g->stop_cv);
    pthread_mutex_destroy(&g->all_mu);
    free(g);
}
