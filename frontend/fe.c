/* The frontend's event loop: clients, tokenizer, worker, loader (fe.h). */
#include "fe.h"

#include "common/log.h"
#include "common/proto.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

struct stage {
    const char *name;
    bool alive;
    bool ever;          /* has answered at least once */
    int64_t last_ok;    /* last message from it */
    int64_t last_ping;
    int pid;
    int restarts;       /* times it came back after being seen dead or replaced */
};

struct fe {
    const struct staged_config *cfg;
    void *zctx;
    void *client;   /* ROUTER, clients */
    void *wrk;      /* ROUTER, the worker connects */
    void *tok;      /* DEALER -> tokenizer */
    void *ldr;      /* DEALER -> loader */
    char instance[17];
    uint64_t next_rid;
    uint64_t ping_no;

    struct req **reqs;
    int n_reqs, cap_reqs;
    bool draining;

    struct stage s_tok, s_ldr, s_wrk;
    uint8_t wrk_ident[64];
    size_t wrk_ident_len;
    char wrk_instance[40];
    int wrk_max_ctx;
    json_t *eog;    /* end-of-generation token ids, from the tokenizer's info */
    json_t *model;  /* the loader's model description */

    struct {
        uint64_t stop, length, cancelled, error, busy, tokens_in, tokens_out;
    } stats;
};

static int64_t tok_retry_ms(const struct fe *fe)
{
    return fe->cfg->frontend.heartbeat_ms * 2;
}

/* ---- request table ---- */

static struct req *find_rid(struct fe *fe, const char *rid)
{
    for (int i = 0; i < fe->n_reqs; i++)
        if (!strcmp(fe->reqs[i]->rid, rid)) return fe->reqs[i];
    return NULL;
}

static struct req *find_client(struct fe *fe, const uint8_t *ident, size_t il, const char *cid)
{
    for (int i = 0; i < fe->n_reqs; i++) {
        struct req *r = fe->reqs[i];
        if (r->ident_len == il && !memcmp(r->ident, ident, il) && !strcmp(r->cid, cid)) return r;
    }
    return NULL;
}

static void remove_req(struct fe *fe, struct req *r)
{
    for (int i = 0; i < fe->n_reqs; i++) {
        if (fe->reqs[i] == r) {
            fe->reqs[i] = fe->reqs[--fe->n_reqs];
            break;
        }
    }
    req_free(r);
}

/* ---- sending ---- */

static void send_client(struct fe *fe, const struct req *r, json_t *msg)
{
    json_object_set_new(msg, "id", json_string(r->cid));
    proto_send(fe->client, r->ident, r->ident_len, msg);
    json_decref(msg);
}

static void send_json(void *sock, json_t *msg)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    if (s) zmq_send(sock, s, strlen(s), ZMQ_DONTWAIT);
    free(s);
    json_decref(msg);
}

static void send_worker(struct fe *fe, json_t *msg)
{
    if (!fe->wrk_ident_len) {
        json_decref(msg);
        return;
    }
    proto_send(fe->wrk, fe->wrk_ident, fe->wrk_ident_len, msg);
    json_decref(msg);
}

static void send_tok_encode(struct fe *fe, struct req *r)
{
    json_t *m = json_deep_copy(r->tok_req);
    char id[48];
    snprintf(id, sizeof(id), "%s/e/0", r->rid);
    json_object_set_new(m, "id", json_string(id));
    send_json(fe->tok, m);
    r->tok_sent_ms = proto_now_ms();
}

static void send_tok_detok(struct fe *fe, struct req *r)
{
    if (r->detok_inflight == 0) {
        if (r->n_detok >= r->n_gen) return;
        r->detok_inflight = r->n_gen - r->n_detok;
    }
    json_t *toks = json_array();
    for (int i = 0; i < r->detok_inflight; i++)
        json_array_append_new(toks, json_integer(r->gen[r->n_detok + i]));
    char id[48];
    snprintf(id, sizeof(id), "%s/d/%d", r->rid, r->n_detok);
    send_json(fe->tok, json_pack("{s:s,s:s,s:o,s:s,s:b}", "id", id, "op", "detok", "tokens", toks,
                                 "pending", r->pending, "first", r->n_detok == 0));
    r->detok_sent_ms = proto_now_ms();
}

static void send_gen(struct fe *fe, struct req *r)
{
    json_t *toks = json_array();
    for (int i = 0; i < r->n_prompt; i++) json_array_append_new(toks, json_integer(r->prompt[i]));
    for (int i = 0; i < r->n_gen; i++) json_array_append_new(toks, json_integer(r->gen[i]));
    json_t *m = json_pack("{s:s,s:s,s:o,s:i,s:I,s:O,s:O,s:i}", "op", "gen", "rid", r->rid,
                          "tokens", toks, "n_prompt", r->n_prompt, "max_new",
                          (json_int_t)(r->max_tokens - r->n_gen), "sampling", r->sampling,
                          "stop_ids", fe->eog, "logprobs", r->logprobs);
    send_worker(fe, m);
    r->state = REQ_RUNNING;
    r->t_sent_worker = proto_now_ms();
}

static void cancel_worker(struct fe *fe, const char *rid)
{
    send_worker(fe, json_pack("{s:s,s:s}", "op", "cancel", "rid", rid));
}

/* ---- finishing and streaming text ---- */

static json_t *chunk_tokens(struct req *r, int from, int to)
{
    json_t *a = json_array();
    for (int i = from; i < to; i++) json_array_append_new(a, json_integer(r->gen[i]));
    return a;
}

/* Send text[emitted, upto) as a chunk (stream mode only), with the tokens
 * decoded since the previous chunk. */
static void emit(struct fe *fe, struct req *r, size_t upto)
{
    if (!r->stream || upto <= r->emitted) return;
    json_t *c = json_pack("{s:s,s:i,s:I,s:s%,s:o}", "type", "chunk", "seq", r->seq++, "offset",
                          (json_int_t)r->emitted, "text", r->text + r->emitted, upto - r->emitted,
                          "tokens", chunk_tokens(r, r->n_chunked, r->n_detok));
    r->n_chunked = r->n_detok;
    if (r->lp && json_array_size(r->lp)) {
        json_object_set_new(c, "logprobs", r->lp);
        r->lp = json_array();
    }
    r->emitted = upto;
    send_client(fe, r, c);
}

static void finish(struct fe *fe, struct req *r)
{
    int64_t now = proto_now_ms();
    emit(fe, r, r->text_len);
    const char *reason = r->finish ? r->finish : "error";
    json_t *m = json_pack("{s:s,s:s,s:s%,s:{s:i,s:i},s:{s:I,s:I,s:I,s:f}}", "type", "final",
                          "finish_reason", reason, "text", r->text ? r->text : "", r->text_len,
                          "usage", "prompt_tokens", r->n_prompt, "completion_tokens", r->n_gen,
                          "timings", "queued_ms",
                          (json_int_t)(r->t_sent_worker ? r->t_sent_worker - r->t_arrive : 0),
                          "ttft_ms", (json_int_t)(r->t_first ? r->t_first - r->t_arrive : -1),
                          "total_ms", (json_int_t)(now - r->t_arrive), "decode_tok_s",
                          r->t_first && now > r->t_first && r->n_gen > 1
                              ? (r->n_gen - 1) * 1000.0 / (double)(now - r->t_first)
                              : 0.0);
    if (!r->stream && r->lp) json_object_set(m, "logprobs", r->lp);
    if (!strcmp(reason, "error"))
        json_object_set_new(m, "error", json_pack("{s:s,s:s}", "code",
                                                  r->err_code ? r->err_code : "internal",
                                                  "message", r->err_msg));
    send_client(fe, r, m);
    if (!strcmp(reason, "stop")) fe->stats.stop++;
    else if (!strcmp(reason, "length")) fe->stats.length++;
    else if (!strcmp(reason, "cancelled")) fe->stats.cancelled++;
    else fe->stats.error++;
    fe->stats.tokens_in += (uint64_t)r->n_prompt;
    fe->stats.tokens_out += (uint64_t)r->n_gen;
    log_debug("request %s (%s) finished: %s, %d+%d tokens", r->rid, r->cid, reason, r->n_prompt,
              r->n_gen);
    remove_req(fe, r);
}

static void fail(struct fe *fe, struct req *r, const char *code, const char *fmt, const char *arg)
{
    r->finish = "error";
    r->err_code = code;
    snprintf(r->err_msg, sizeof(r->err_msg), fmt, arg);
    if (r->state == REQ_RUNNING) cancel_worker(fe, r->rid);
    finish(fe, r);
}

/* New decoded text arrived: check stop strings, stream what is safe. */
static void on_text(struct fe *fe, struct req *r)
{
    long stop = r->n_stop ? req_find_stop(r) : -1;
    if (stop >= 0) {
        r->text_len = (size_t)stop;
        r->text[stop] = 0;
        if (r->emitted > r->text_len) r->emitted = r->text_len; /* cannot happen: held back */
        r->finish = "stop";
        if (r->state == REQ_RUNNING) cancel_worker(fe, r->rid);
        finish(fe, r);
        return;
    }
    size_t safe = r->text_len - (r->n_stop ? req_stop_holdback(r) : 0);
    while (safe > r->emitted && safe < r->text_len && (r->text[safe] & 0xC0) == 0x80) safe--;
    emit(fe, r, safe);
}

/* ---- tokenizer replies ---- */

static void on_tok_reply(struct fe *fe, json_t *m)
{
    fe->s_tok.last_ok = proto_now_ms();
    if (!fe->s_tok.alive) {
        fe->s_tok.alive = true;
        if (fe->s_tok.ever) {
            fe->s_tok.restarts++;
            log_warn("tokenizer is back; resending calls in flight");
            for (int i = 0; i < fe->n_reqs; i++) {
                struct req *r = fe->reqs[i];
                if (r->state == REQ_TOKENIZE) send_tok_encode(fe, r);
                else if (r->detok_inflight) send_tok_detok(fe, r);
            }
        }
        fe->s_tok.ever = true;
    }
    const char *id = json_string_value(json_object_get(m, "id"));
    if (!id) return;
    if (!strncmp(id, "-/h/", 4)) {
        json_t *pid = json_object_get(m, "pid");
        if (json_is_integer(pid)) fe->s_tok.pid = (int)json_integer_value(pid);
        return;
    }
    if (!strcmp(id, "-/i")) {
        json_t *eog = json_object_get(m, "eog");
        if (json_is_array(eog)) {
            if (fe->eog) json_decref(fe->eog);
            fe->eog = json_incref(eog);
            log_info("tokenizer info: %zu end-of-generation ids", json_array_size(eog));
        }
        return;
    }
    char rid[24];
    char kind;
    int n;
    if (sscanf(id, "%23[^/]/%c/%d", rid, &kind, &n) != 3) return;
    struct req *r = find_rid(fe, rid);
    if (!r) return;
    json_t *err = json_object_get(m, "error");
    if (kind == 'e' && r->state == REQ_TOKENIZE) {
        if (err) {
            const char *code = json_string_value(json_object_get(err, "code"));
            const char *msg = json_string_value(json_object_get(err, "message"));
            fail(fe, r, code && !strcmp(code, "invalid_utf8") ? "invalid_utf8" : "bad_request",
                 "tokenizer: %s", msg ? msg : "error");
            return;
        }
        json_t *toks = json_object_get(m, "tokens");
        size_t nt = json_array_size(toks);
        if (nt == 0) {
            fail(fe, r, "bad_request", "%s", "the prompt encodes to no tokens");
            return;
        }
        if (fe->wrk_max_ctx && (int64_t)nt >= fe->wrk_max_ctx) {
            char why[64];
            snprintf(why, sizeof(why), "%zu", nt);
            fail(fe, r, "too_large", "prompt of %s tokens does not fit the context", why);
            return;
        }
        r->prompt = malloc(nt * sizeof(int32_t));
        if (!r->prompt) {
            fail(fe, r, "internal", "%s", "out of memory");
            return;
        }
        for (size_t i = 0; i < nt; i++)
            r->prompt[i] = (int32_t)json_integer_value(json_array_get(toks, i));
        r->n_prompt = (int)nt;
        r->state = REQ_QUEUED;
        if (fe->s_wrk.alive && fe->eog) send_gen(fe, r);
        return;
    }
    if (kind == 'd' && r->detok_inflight && n == r->n_detok &&
        (r->state == REQ_RUNNING || r->state == REQ_DRAINING)) {
        if (err) {
            fail(fe, r, "internal", "tokenizer decode failed: %s",
                 json_string_value(json_object_get(err, "message")));
            return;
        }
        const char *text = json_string_value(json_object_get(m, "text"));
        const char *pend = json_string_value(json_object_get(m, "pending"));
        if (!text || !pend || strlen(pend) >= sizeof(r->pending)) {
            fail(fe, r, "internal", "%s", "bad detok reply from the tokenizer");
            return;
        }
        snprintf(r->pending, sizeof(r->pending), "%s", pend);
        r->n_detok += r->detok_inflight;
        r->detok_inflight = 0;
        if (req_append_text(r, text, strlen(text))) {
            fail(fe, r, "internal", "%s", "out of memory");
            return;
        }
        if (!r->t_first) r->t_first = proto_now_ms();
        on_text(fe, r);
        if (!find_rid(fe, rid)) return; /* finished by a stop string */
        if (r->n_detok < r->n_gen) send_tok_detok(fe, r);
        else if (r->state == REQ_DRAINING) finish(fe, r);
    }
}

/* ---- worker messages ---- */

static void resubmit_running(struct fe *fe)
{
    for (int i = 0; i < fe->n_reqs; i++) {
        struct req *r = fe->reqs[i];
        if (r->state == REQ_RUNNING || (r->state == REQ_QUEUED && fe->eog)) send_gen(fe, r);
    }
}

static void on_worker_msg(struct fe *fe, struct proto_msg *pm)
{
    json_t *m = pm->body;
    const char *ev = json_string_value(json_object_get(m, "ev"));
    const char *inst = json_string_value(json_object_get(m, "instance"));
    if (!ev) return;
    int64_t now = proto_now_ms();
    bool current = inst && !strcmp(inst, fe->wrk_instance);
    if ((!strcmp(ev, "hello") || !strcmp(ev, "hb")) && inst && !current) {
        bool replaced = fe->wrk_instance[0] != 0;
        snprintf(fe->wrk_instance, sizeof(fe->wrk_instance), "%s", inst);
        memcpy(fe->wrk_ident, pm->ident, pm->ident_len);
        fe->wrk_ident_len = pm->ident_len;
        json_t *pid = json_object_get(m, "pid"), *mc = json_object_get(m, "max_ctx");
        fe->s_wrk.pid = json_is_integer(pid) ? (int)json_integer_value(pid) : 0;
        fe->wrk_max_ctx = json_is_integer(mc) ? (int)json_integer_value(mc) : 0;
        if (replaced) fe->s_wrk.restarts++;
        fe->s_wrk.alive = fe->s_wrk.ever = true;
        fe->s_wrk.last_ok = now;
        int n_run = 0;
        for (int i = 0; i < fe->n_reqs; i++) n_run += fe->reqs[i]->state == REQ_RUNNING;
        log_info("worker %s (pid %d) connected%s; resubmitting %d running requests", inst,
                 fe->s_wrk.pid, replaced ? " (replaces the previous one)" : "", n_run);
        resubmit_running(fe);
        return;
    }
    if (!current) {
        /* a worker we do not use: tell it to drop what it runs for us */
        const char *rid = json_string_value(json_object_get(m, "rid"));
        if (rid) proto_send(fe->wrk, pm->ident, pm->ident_len,
                            json_pack("{s:s,s:s}", "op", "cancel", "rid", rid));
        return;
    }
    fe->s_wrk.last_ok = now;
    if (!fe->s_wrk.alive) {
        fe->s_wrk.alive = true;
        log_info("worker %s answers again", inst);
        resubmit_running(fe);
    }
    if (!strcmp(ev, "hb")) return;
    if (!strcmp(ev, "toks")) {
        size_t i;
        json_t *it;
        json_array_foreach(json_object_get(m, "items"), i, it)
        {
            const char *rid = json_string_value(json_object_get(it, "rid"));
            struct req *r = rid ? find_rid(fe, rid) : NULL;
            if (rid && !r) {
                /* a request this frontend does not hold (it finished, or it was
                 * taken by a frontend that died): stop the worker's work on it */
                cancel_worker(fe, rid);
                continue;
            }
            if (!r || r->state != REQ_RUNNING) continue;
            json_t *n = json_object_get(it, "n");
            if (!json_is_integer(n) || json_integer_value(n) != r->n_gen) continue; /* dup/stale */
            if (r->n_gen == r->cap_gen) {
                int cap = r->cap_gen ? r->cap_gen * 2 : 64;
                int32_t *g = realloc(r->gen, (size_t)cap * sizeof(int32_t));
                if (!g) {
                    fail(fe, r, "internal", "%s", "out of memory");
                    continue;
                }
                r->gen = g;
                r->cap_gen = cap;
            }
            r->gen[r->n_gen++] = (int32_t)json_integer_value(json_object_get(it, "tok"));
            json_t *lp = json_object_get(it, "lp");
            if (lp && r->logprobs >= 0) {
                if (!r->lp) r->lp = json_array();
                json_array_append(r->lp, lp);
            }
            if (!r->detok_inflight) send_tok_detok(fe, r);
        }
        return;
    }
    if (!strcmp(ev, "done") || !strcmp(ev, "error")) {
        const char *rid = json_string_value(json_object_get(m, "rid"));
        struct req *r = rid ? find_rid(fe, rid) : NULL;
        if (!r || r->state != REQ_RUNNING) return;
        json_t *n_gen = json_object_get(m, "n_gen");
        if (json_is_integer(n_gen) && json_integer_value(n_gen) != r->n_gen) {
            log_warn("request %s: worker says %lld tokens, frontend has %d; resubmitting", rid,
                     (long long)json_integer_value(n_gen), r->n_gen);
            send_gen(fe, r);
            return;
        }
        if (!strcmp(ev, "error")) {
            fail(fe, r, "internal", "worker: %s",
                 json_string_value(json_object_get(m, "message")));
            return;
        }
        const char *reason = json_string_value(json_object_get(m, "reason"));
        r->finish = reason && !strcmp(reason, "length") ? "length"
                    : reason && !strcmp(reason, "cancelled") ? "cancelled"
                                                              : "stop";
        r->state = REQ_DRAINING;
        if (r->n_detok == r->n_gen && !r->detok_inflight) finish(fe, r);
        else if (!r->detok_inflight) send_tok_detok(fe, r);
    }
}

/* ---- client messages ---- */

static void client_error(struct fe *fe, const struct proto_msg *pm, json_t *id, const char *code,
                         const char *msg)
{
    json_t *m = json_pack("{s:s,s:O?,s:{s:s,s:s}}", "type", "error", "id", id, "error", "code",
                          code, "message", msg);
    proto_send(fe->client, pm->ident, pm->ident_len, m);
    json_decref(m);
}

static json_t *stage_json(const struct stage *s, int64_t now)
{
    return json_pack("{s:s,s:I,s:i,s:i}", "state", s->alive ? "ready" : (s->ever ? "down" : "starting"),
                     "last_seen_ms", (json_int_t)(s->ever ? now - s->last_ok : -1), "pid", s->pid,
                     "restarts", s->restarts);
}

static void count_states(const struct fe *fe, int *queued, int *running)
{
    *queued = *running = 0;
    for (int i = 0; i < fe->n_reqs; i++) {
        if (fe->reqs[i]->state == REQ_RUNNING || fe->reqs[i]->state == REQ_DRAINING) (*running)++;
        else (*queued)++;
    }
}

static const char *model_name(const struct fe *fe)
{
    if (fe->cfg->model.name[0]) return fe->cfg->model.name;
    const char *n = json_string_value(json_object_get(fe->model, "name"));
    if (n) return n;
    const char *slash = strrchr(fe->cfg->model.path, '/');
    return slash ? slash + 1 : fe->cfg->model.path;
}

static void on_generate(struct fe *fe, struct proto_msg *pm, json_t *id)
{
    if (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > 64) {
        client_error(fe, pm, id, "bad_request", "field 'id' must be a string of 1 to 64 bytes");
        return;
    }
    const char *cid = json_string_value(id);
    if (fe->draining) {
        client_error(fe, pm, id, "unavailable", "the frontend is shutting down");
        return;
    }
    if (find_client(fe, pm->ident, pm->ident_len, cid)) {
        client_error(fe, pm, id, "duplicate_id", "a request with this id is in flight");
        return;
    }
    if (fe->n_reqs >= fe->cfg->frontend.queue_limit) {
        fe->stats.busy++;
        char msg[96];
        snprintf(msg, sizeof(msg), "queue full (%d requests); retry later", fe->n_reqs);
        client_error(fe, pm, id, "busy", msg);
        return;
    }
    struct req *r = calloc(1, sizeof(*r));
    if (!r) {
        client_error(fe, pm, id, "internal", "out of memory");
        return;
    }
    char msg[256];
    const char *code = req_parse(fe->cfg, pm->body, r, msg, sizeof(msg));
    if (code) {
        client_error(fe, pm, id, code, msg);
        req_free(r);
        return;
    }
    if (fe->n_reqs == fe->cap_reqs) {
        int cap = fe->cap_reqs ? fe->cap_reqs * 2 : 64;
        struct req **nr = realloc(fe->reqs, (size_t)cap * sizeof(*nr));
        if (!nr) {
            client_error(fe, pm, id, "internal", "out of memory");
            req_free(r);
            return;
        }
        fe->reqs = nr;
        fe->cap_reqs = cap;
    }
    fe->reqs[fe->n_reqs++] = r;
    snprintf(r->cid, sizeof(r->cid), "%s", cid);
    snprintf(r->rid, sizeof(r->rid), "%.8s-%" PRIu64, fe->instance, fe->next_rid++);
    memcpy(r->ident, pm->ident, pm->ident_len);
    r->ident_len = pm->ident_len;
    r->t_arrive = proto_now_ms();
    r->deadline += r->t_arrive;
    r->state = REQ_TOKENIZE;
    send_tok_encode(fe, r);
}

static void on_client_msg(struct fe *fe, struct proto_msg *pm)
{
    json_t *m = pm->body;
    json_t *id = json_object_get(m, "id");
    const char *op = json_string_value(json_object_get(m, "op"));
    if (!op) {
        client_error(fe, pm, id, "bad_request", "missing string field 'op'");
        return;
    }
    if (!strcmp(op, "generate")) {
        on_generate(fe, pm, id);
        return;
    }
    static const char *const simple[] = {"proto", "op", "id", NULL};
    const char *unk = proto_unknown_key(m, simple);
    if (unk) {
        char msg[128];
        snprintf(msg, sizeof(msg), "unknown field '%.64s'", unk);
        client_error(fe, pm, id, "unknown_field", msg);
        return;
    }
    int64_t now = proto_now_ms();
    json_t *reply = NULL;
    if (!strcmp(op, "cancel") || !strcmp(op, "status")) {
        if (!json_is_string(id)) {
            client_error(fe, pm, id, "bad_request", "field 'id' must be a string");
            return;
        }
        struct req *r = find_client(fe, pm->ident, pm->ident_len, json_string_value(id));
        if (!strcmp(op, "status")) {
            reply = json_pack("{s:s,s:s}", "type", "status", "state",
                              !r ? "unknown" : r->state >= REQ_RUNNING ? "running" : "queued");
        } else if (r) {
            if (r->state == REQ_RUNNING) cancel_worker(fe, r->rid);
            r->finish = "cancelled";
            finish(fe, r);
            return;
        } else {
            client_error(fe, pm, id, "bad_request", "no request with this id is in flight");
            return;
        }
    } else if (!strcmp(op, "health")) {
        int q, run;
        count_states(fe, &q, &run);
        bool ok = fe->s_ldr.alive && fe->s_tok.alive && fe->s_wrk.alive && !fe->draining;
        reply = json_pack("{s:s,s:b,s:s,s:{s:o,s:o,s:o},s:i,s:i}", "type", "health", "ok", ok,
                          "model", model_name(fe), "stages", "loader", stage_json(&fe->s_ldr, now),
                          "tokenizer", stage_json(&fe->s_tok, now), "worker",
                          stage_json(&fe->s_wrk, now), "queued", q, "running", run);
    } else if (!strcmp(op, "models")) {
        /* n_ctx: what the worker serves (its max_ctx), at most the trained context */
        json_t *mdl = fe->model;
        json_int_t n_ctx = json_integer_value(json_object_get(mdl, "n_ctx_train"));
        if (fe->wrk_max_ctx && (!n_ctx || fe->wrk_max_ctx < n_ctx)) n_ctx = fe->wrk_max_ctx;
        reply = json_pack("{s:s,s:[{s:s,s:s?,s:I,s:I,s:O?}]}", "type", "models", "models", "id",
                          model_name(fe), "arch",
                          json_string_value(json_object_get(mdl, "arch")), "n_ctx", n_ctx,
                          "n_ctx_train", json_integer_value(json_object_get(mdl, "n_ctx_train")),
                          "n_vocab", json_object_get(mdl, "n_vocab"));
    } else if (!strcmp(op, "stats")) {
        int q, run;
        count_states(fe, &q, &run);
        reply = json_pack("{s:s,s:{s:I,s:I,s:I,s:I,s:I},s:I,s:I,s:i,s:i,s:{s:i,s:i,s:i}}", "type",
                          "stats", "requests", "stop", (json_int_t)fe->stats.stop, "length",
                          (json_int_t)fe->stats.length, "cancelled", (json_int_t)fe->stats.cancelled,
                          "error", (json_int_t)fe->stats.error, "busy", (json_int_t)fe->stats.busy,
                          "tokens_in", (json_int_t)fe->stats.tokens_in, "tokens_out",
                          (json_int_t)fe->stats.tokens_out, "queued", q, "running", run,
                          "restarts", "worker", fe->s_wrk.restarts, "tokenizer",
                          fe->s_tok.restarts, "loader", fe->s_ldr.restarts);
    } else {
        char msg[96];
        snprintf(msg, sizeof(msg), "unknown op '%.32s'", op);
        client_error(fe, pm, id, "bad_request", msg);
        return;
    }
    if (id) json_object_set(reply, "id", id);
    proto_send(fe->client, pm->ident, pm->ident_len, reply);
    json_decref(reply);
}

/* ---- timers ---- */

/* A stage silent for stage_timeout_ms is dead (requests wait for it to come
 * back); silent for twice that, it is wedged, not just slow under load, and
 * is killed so that the supervisor restarts it. */
static void check_stage(struct fe *fe, struct stage *s, int64_t now)
{
    int64_t silent = now - s->last_ok, limit = fe->cfg->frontend.stage_timeout_ms;
    if (s->alive && silent > limit) {
        s->alive = false;
        log_warn("%s silent for %lld ms: treating it as dead", s->name, (long long)silent);
    }
    if (!s->alive && s->pid > 0 && silent > 2 * limit) {
        log_warn("%s (pid %d) silent for %lld ms: killing it so that it restarts", s->name, s->pid,
                 (long long)silent);
        kill(s->pid, SIGKILL);
        s->pid = 0;
    }
}

static void on_loader_reply(struct fe *fe, json_t *m)
{
    fe->s_ldr.last_ok = proto_now_ms();
    if (!fe->s_ldr.alive) {
        if (fe->s_ldr.ever) fe->s_ldr.restarts++;
        fe->s_ldr.alive = fe->s_ldr.ever = true;
    }
    json_t *pid = json_object_get(m, "pid");
    if (json_is_integer(pid)) fe->s_ldr.pid = (int)json_integer_value(pid);
    json_t *model = json_object_get(m, "model");
    if (json_is_object(model)) {
        if (fe->model) json_decref(fe->model);
        fe->model = json_incref(model);
    }
}

static void timers(struct fe *fe)
{
    int64_t now = proto_now_ms();
    int64_t hb = fe->cfg->frontend.heartbeat_ms;
    if (now - fe->s_tok.last_ping >= hb) {
        char id[32];
        snprintf(id, sizeof(id), "-/h/%" PRIu64, fe->ping_no++);
        send_json(fe->tok, json_pack("{s:s,s:s}", "op", "health", "id", id));
        if (!fe->eog) send_json(fe->tok, json_pack("{s:s,s:s}", "op", "info", "id", "-/i"));
        fe->s_tok.last_ping = now;
    }
    if (now - fe->s_ldr.last_ping >= hb) {
        send_json(fe->ldr, json_pack("{s:s}", "op", fe->model ? "health" : "manifest"));
        fe->s_ldr.last_ping = now;
    }
    if (fe->s_wrk.alive && now - fe->s_wrk.last_ping >= hb) {
        send_worker(fe, json_pack("{s:s}", "op", "ping"));
        fe->s_wrk.last_ping = now;
    }
    check_stage(fe, &fe->s_tok, now);
    check_stage(fe, &fe->s_ldr, now);
    check_stage(fe, &fe->s_wrk, now);
    for (int i = 0; i < fe->n_reqs; i++) {
        struct req *r = fe->reqs[i];
        if (now > r->deadline) {
            log_info("request %s (%s) passed its deadline", r->rid, r->cid);
            if (r->state == REQ_RUNNING) cancel_worker(fe, r->rid);
            r->finish = "cancelled";
            finish(fe, r);
            i--;
            continue;
        }
        if (r->state == REQ_TOKENIZE && now - r->tok_sent_ms > tok_retry_ms(fe))
            send_tok_encode(fe, r);
        else if (r->detok_inflight && now - r->detok_sent_ms > tok_retry_ms(fe))
            send_tok_detok(fe, r);
        else if (r->state == REQ_QUEUED && fe->s_wrk.alive && fe->eog)
            send_gen(fe, r);
    }
}

/* ---- loop ---- */

void fe_poll(struct fe *fe, int timeout_ms)
{
    zmq_pollitem_t items[4] = {{.socket = fe->client, .events = ZMQ_POLLIN},
                               {.socket = fe->wrk, .events = ZMQ_POLLIN},
                               {.socket = fe->tok, .events = ZMQ_POLLIN},
                               {.socket = fe->ldr, .events = ZMQ_POLLIN}};
    int n = zmq_poll(items, 4, timeout_ms);
    if (n > 0) {
        for (int k = 0; k < 256; k++) {
            int got = 0;
            struct proto_msg pm;
            if (zmq_poll(items, 4, 0) <= 0) break;
            if (items[1].revents & ZMQ_POLLIN) {
                if (proto_recv(fe->wrk, 64u << 20, &pm) == 0 && pm.body) on_worker_msg(fe, &pm);
                proto_msg_clear(&pm);
                got++;
            }
            if (items[2].revents & ZMQ_POLLIN) {
                zmq_msg_t zm;
                zmq_msg_init(&zm);
                if (zmq_msg_recv(&zm, fe->tok, ZMQ_DONTWAIT) >= 0) {
                    json_t *j = json_loadb(zmq_msg_data(&zm), zmq_msg_size(&zm), 0, NULL);
                    if (j) on_tok_reply(fe, j);
                    if (j) json_decref(j);
                }
                zmq_msg_close(&zm);
                got++;
            }
            if (items[3].revents & ZMQ_POLLIN) {
                zmq_msg_t zm;
                zmq_msg_init(&zm);
                if (zmq_msg_recv(&zm, fe->ldr, ZMQ_DONTWAIT) >= 0) {
                    json_t *j = json_loadb(zmq_msg_data(&zm), zmq_msg_size(&zm), 0, NULL);
                    if (j) on_loader_reply(fe, j);
                    if (j) json_decref(j);
                }
                zmq_msg_close(&zm);
                got++;
            }
            if (items[0].revents & ZMQ_POLLIN) {
                if (proto_recv(fe->client, (size_t)fe->cfg->frontend.max_prompt_bytes * 2 + 65536,
                               &pm) == 0 && pm.body)
                    on_client_msg(fe, &pm);
                proto_msg_clear(&pm);
                got++;
            }
            if (!got) break;
        }
    }
    timers(fe);
}

static void *bind_router(void *zctx, const char *ep, struct st_errbuf *eb, const char *what)
{
    void *s = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    if (zmq_bind(s, ep) < 0) {
        st_errf(eb, ST_EIO, "%s endpoint %s: bind: %s", what, ep, zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

int fe_new(const struct staged_config *cfg, struct fe **out, struct st_errbuf *eb)
{
    struct fe *fe = calloc(1, sizeof(*fe));
    if (!fe) return st_errf(eb, ST_ENOMEM, "out of memory");
    fe->cfg = cfg;
    fe->s_tok.name = "tokenizer";
    fe->s_ldr.name = "loader";
    fe->s_wrk.name = "worker";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(fe->instance, sizeof(fe->instance), "%08" PRIx64,
             ((uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16)) & 0xffffffffu);
    fe->zctx = zmq_ctx_new();
    if (!(fe->client = bind_router(fe->zctx, cfg->frontend.endpoint, eb, "[frontend]")) ||
        !(fe->wrk = bind_router(fe->zctx, cfg->worker.endpoint, eb, "[worker]"))) {
        fe_destroy(&fe);
        return ST_EIO;
    }
    fe->tok = proto_connect(fe->zctx, cfg->tokenizer.endpoint);
    fe->ldr = proto_connect(fe->zctx, cfg->loader.endpoint);
    if (!fe->tok || !fe->ldr) {
        fe_destroy(&fe);
        return st_errf(eb, ST_EIO, "cannot connect to the tokenizer or loader endpoint");
    }
    *out = fe;
    return 0;
}

bool fe_drain(struct fe *fe)
{
    fe->draining = true;
    return fe->n_reqs == 0;
}

bool fe_ready(const struct fe *fe)
{
    return fe->s_tok.alive && fe->s_ldr.alive && fe->s_wrk.alive && fe->eog;
}

void fe_destroy(struct fe **fp)
{
    struct fe *fe = *fp;
    if (!fe) return;
    while (fe->n_reqs) {
        struct req *r = fe->reqs[0];
        r->finish = "error";
        r->err_code = "unavailable";
        snprintf(r->err_msg, sizeof(r->err_msg), "the frontend is shutting down");
        if (r->state == REQ_RUNNING) cancel_worker(fe, r->rid);
        finish(fe, r);
    }
    free(fe->reqs);
    if (fe->eog) json_decref(fe->eog);
    if (fe->model) json_decref(fe->model);
    if (fe->client) zmq_close(fe->client);
    if (fe->wrk) zmq_close(fe->wrk);
    if (fe->tok) zmq_close(fe->tok);
    if (fe->ldr) zmq_close(fe->ldr);
    if (fe->zctx) zmq_ctx_term(fe->zctx);
    free(fe);
    *fp = NULL;
}
