/* The worker's serving loop: continuous batching over ZeroMQ (server.h). */
#include "server.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/proto.h"
#include "gpu_worker/cuda/cuda_backend.h"
#include "gpu_worker/sample.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_STOP_IDS 64

struct job {
    char rid[32];
    int32_t *tokens;          /* prompt + generated; capacity max_ctx */
    int n_tokens;
    int n_prompt;
    int max_new;              /* tokens this submission may still generate */
    int n_new;
    int n_fed;                /* tokens already in the KV cache */
    struct sample_params sp;
    int32_t stop_ids[MAX_STOP_IDS];
    int n_stop_ids;
    int logprobs;
    struct job *next;         /* queue link */
};

struct server {
    const struct staged_config *cfg;
    const struct st_model *m;
    const struct backend_ops *ops;
    struct backend *b;
    void *zctx, *sock;
    char instance[40];
    int n_vocab, max_seqs, max_ctx, max_batch;
    double tok_per_ms;        /* measured speed of recent steps (tokens / ms) */
    struct job **slots;       /* [max_seqs] */
    struct job *queue_head, *queue_tail;
    int n_queued;
    uint64_t steps, n_gen_requests, n_allocs;
    int64_t last_hb;
    bool hung;
    /* batch scratch */
    int32_t *bt_tok, *bt_pos, *bt_seq;
    int8_t *bt_logits;
    int *bt_slot;             /* slot of each logits row */
    int8_t *row_want;         /* how each logits row came back (LOGITS_*) */
    bool rows_gone;           /* the last step ran in pieces: logits_row cannot fetch */
    struct logits_top *tops;  /* each logits row's summary */
    float *logits;
    json_t *items;
};

static void send(struct server *s, json_t *m)
{
    json_object_set_new(m, "instance", json_string(s->instance));
    char *txt = json_dumps(m, JSON_COMPACT);
    if (txt) zmq_send(s->sock, txt, strlen(txt), ZMQ_DONTWAIT);
    free(txt);
    json_decref(m);
}

static void send_hb(struct server *s)
{
    int active = 0;
    for (int i = 0; i < s->max_seqs; i++) active += s->slots[i] != NULL;
    send(s, json_pack("{s:s,s:i,s:i,s:I,s:i,s:i}", "ev", "hb", "active", active, "queued",
                      s->n_queued, "steps", (json_int_t)s->steps, "pid", (int)getpid(), "max_ctx",
                      s->max_ctx));
    s->last_hb = proto_now_ms();
}

/* The allocation path of requests, with the injectable failure. */
static void *job_alloc(struct server *s, size_t n)
{
    s->n_allocs++;
    int64_t at = s->cfg->worker.faults.fail_alloc_at;
    if (at > 0 && strcmp(s->ops->name, "cuda") != 0 /* cuda: the N-th cudaMalloc fails */ && s->n_allocs == (uint64_t)at && fault_fire("this allocation fails"))
        return NULL;
    return calloc(1, n);
}

static void job_free(struct job *j)
{
    if (!j) return;
    free(j->tokens);
    free(j);
}

static void reject(struct server *s, const char *rid, const char *msg)
{
    send(s, json_pack("{s:s,s:s,s:s}", "ev", "error", "rid", rid ? rid : "", "message", msg));
}

static double num(const json_t *o, const char *k, double dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* Parse a gen op. Returns the job, or NULL (rejected or out of memory:
 * *fatal set for the latter). */
static struct job *parse_gen(struct server *s, const json_t *m, bool *fatal)
{
    const char *rid = json_string_value(json_object_get(m, "rid"));
    json_t *toks = json_object_get(m, "tokens"), *sp = json_object_get(m, "sampling");
    json_t *np = json_object_get(m, "n_prompt"), *mx = json_object_get(m, "max_new");
    if (!rid || strlen(rid) >= 32 || !json_is_array(toks) || !json_is_integer(np) ||
        !json_is_integer(mx) || !json_is_object(sp)) {
        reject(s, rid, "malformed gen request");
        return NULL;
    }
    size_t n = json_array_size(toks);
    if (n == 0 || n >= (size_t)s->max_ctx) {
        reject(s, rid, "token count out of range for the context");
        return NULL;
    }
    json_int_t n_prompt = json_integer_value(np), max_new = json_integer_value(mx);
    if (n_prompt < 1 || (size_t)n_prompt > n || max_new < 0) {
        reject(s, rid, "n_prompt / max_new out of range");
        return NULL;
    }
    struct job *j = job_alloc(s, sizeof(*j));
    if (j) j->tokens = job_alloc(s, (size_t)s->max_ctx * sizeof(int32_t));
    if (!j || !j->tokens) {
        job_free(j);
        *fatal = true;
        return NULL;
    }
    snprintf(j->rid, sizeof(j->rid), "%s", rid);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(toks, i);
        json_int_t v = json_is_integer(t) ? json_integer_value(t) : -1;
        if (v < 0 || v >= s->n_vocab) {
            reject(s, rid, "token id out of range");
            job_free(j);
            return NULL;
        }
        j->tokens[i] = (int32_t)v;
    }
    j->n_tokens = (int)n;
    j->n_prompt = (int)n_prompt;
    j->max_new = (int)max_new;
    sample_params_default(&j->sp);
    j->sp.temperature = (float)num(sp, "temperature", j->sp.temperature);
    j->sp.top_k = (int)num(sp, "top_k", j->sp.top_k);
    j->sp.top_p = (float)num(sp, "top_p", j->sp.top_p);
    j->sp.min_p = (float)num(sp, "min_p", j->sp.min_p);
    j->sp.repeat_penalty = (float)num(sp, "repeat_penalty", j->sp.repeat_penalty);
    j->sp.repeat_last_n = (int)num(sp, "repeat_last_n", j->sp.repeat_last_n);
    j->sp.presence_penalty = (float)num(sp, "presence_penalty", j->sp.presence_penalty);
    j->sp.frequency_penalty = (float)num(sp, "frequency_penalty", j->sp.frequency_penalty);
    json_t *seed = json_object_get(sp, "seed");
    if (json_is_integer(seed)) j->sp.seed = (uint64_t)json_integer_value(seed);
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(m, "stop_ids"), i, t)
    {
        if (j->n_stop_ids < MAX_STOP_IDS && json_is_integer(t))
            j->stop_ids[j->n_stop_ids++] = (int32_t)json_integer_value(t);
    }
    json_t *lp = json_object_get(m, "logprobs");
    j->logprobs = json_is_integer(lp) ? (int)json_integer_value(lp) : -1;
    if (j->logprobs > SAMPLE_MAX_TOP) j->logprobs = SAMPLE_MAX_TOP;
    return j;
}

static void done(struct server *s, int slot, const char *reason)
{
    struct job *j = s->slots[slot];
    send(s, json_pack("{s:s,s:s,s:s,s:i}", "ev", "done", "rid", j->rid, "reason", reason, "n_gen",
                      j->n_tokens - j->n_prompt));
    job_free(j);
    s->slots[slot] = NULL;
    /* the sequence's cache is free (the CUDA backend unmaps its memory) */
    if (s->ops->seq_truncate(s->b, slot, 0)) log_warn("could not free sequence %d", slot);
}

static void cancel(struct server *s, const char *rid)
{
    for (int i = 0; i < s->max_seqs; i++)
        if (s->slots[i] && !strcmp(s->slots[i]->rid, rid)) done(s, i, "cancelled");
    for (struct job **pp = &s->queue_head; *pp;) {
        struct job *j = *pp;
        if (!strcmp(j->rid, rid)) {
            *pp = j->next;
            if (s->queue_tail == j) {
                s->queue_tail = NULL;
                for (struct job *q = s->queue_head; q; q = q->next) s->queue_tail = q;
            }
            s->n_queued--;
            job_free(j);
        } else {
            pp = &j->next;
        }
    }
}

/* Returns ST_ENOMEM on an allocation failure (fatal), else 0. */
static int on_message(struct server *s, json_t *m)
{
    const char *op = json_string_value(json_object_get(m, "op"));
    if (!op) return 0;
    if (!strcmp(op, "ping")) {
        send_hb(s);
    } else if (!strcmp(op, "cancel")) {
        const char *rid = json_string_value(json_object_get(m, "rid"));
        if (rid) cancel(s, rid);
    } else if (!strcmp(op, "gen")) {
        s->n_gen_requests++;
        int64_t hang = s->cfg->worker.faults.hang_at_request;
        if (hang > 0 && s->n_gen_requests == (uint64_t)hang && fault_fire("hanging")) {
            s->hung = true;
            return 0;
        }
        const char *rid = json_string_value(json_object_get(m, "rid"));
        if (rid) cancel(s, rid); /* a resubmission replaces the old run */
        bool fatal = false;
        struct job *j = parse_gen(s, m, &fatal);
        if (fatal) return ST_ENOMEM;
        if (!j) return 0;
        if (s->queue_tail) s->queue_tail->next = j;
        else s->queue_head = j;
        s->queue_tail = j;
        s->n_queued++;
    }
    return 0;
}

static int admit(struct server *s)
{
    for (int i = 0; i < s->max_seqs && s->queue_head; i++) {
        if (s->slots[i]) continue;
        struct job *j = s->queue_head;
        s->queue_head = j->next;
        if (!s->queue_head) s->queue_tail = NULL;
        s->n_queued--;
        j->next = NULL;
        int rc = s->ops->seq_truncate(s->b, i, 0);
        if (rc) return rc;
        s->slots[i] = j;
        if (j->max_new == 0) done(s, i, "length");
    }
    return 0;
}

static bool is_stop(const struct job *j, int32_t tok)
{
    for (int i = 0; i < j->n_stop_ids; i++)
        if (j->stop_ids[i] == tok) return true;
    return false;
}

static json_t *logprob_json(const struct sample_result *r, int n_top)
{
    json_t *top = json_array();
    for (int k = 0; k < n_top && k < r->n_top; k++)
        json_array_append_new(top, json_pack("{s:i,s:f}", "token", r->top_ids[k], "logprob",
                                             (double)r->top_logprobs[k]));
    return json_pack("{s:i,s:f,s:o}", "token", r->token, "logprob", (double)r->logprob, "top", top);
}

/*
 * Run the batch, in pieces of at most `group` tokens when the backend's
 * results are batch-invariant only up to that size (deterministic mode).
 * Logits rows and summaries keep batch order; every row's way back is left
 * in s->row_want.
 */
static int forward_grouped(struct server *s, struct batch *bt, int group)
{
    int rc = 0;
    s->rows_gone = group > 0 && bt->n_tokens > group;
    if (!s->rows_gone) {
        rc = s->ops->forward(s->b, bt, s->logits);
    } else {
        /* rows of earlier pieces cannot be fetched afterwards (logits_row):
         * rows whose summary might not decide come back whole */
        for (int i = 0; i < bt->n_tokens; i++) {
            const struct job *j = s->slots[bt->seq[i]];
            if (s->bt_logits[i] == LOGITS_SUMMARY &&
                !sample_top_decides(&j->sp, j->n_tokens, s->n_vocab))
                s->bt_logits[i] = LOGITS_ROW;
        }
        float *out = s->logits;
        struct logits_top *top = s->tops;
        for (int i = 0; i < bt->n_tokens && rc == 0; i += group) {
            int n = bt->n_tokens - i < group ? bt->n_tokens - i : group;
            struct batch sub = {n, bt->token + i, bt->pos + i, bt->seq + i, bt->logits + i, top};
            rc = s->ops->forward(s->b, &sub, out);
            for (int k = 0; k < n; k++) {
                if (!bt->logits[i + k]) continue;
                out += s->n_vocab;
                top++;
            }
        }
    }
    for (int i = 0, r = 0; i < bt->n_tokens; i++)
        if (bt->logits[i]) s->row_want[r++] = bt->logits[i];
    return rc;
}

/* A logits row as a summary when the job's sampling may be decided by one. */
static int8_t row_want(const struct server *s, const struct job *j)
{
    return sample_top_may_decide(&j->sp, j->n_tokens) ? LOGITS_SUMMARY : LOGITS_ROW;
}

/* The next token of job j from logits row r: from the row's summary when it
 * decides, else from the full row (fetched from the backend if it stayed
 * there). Returns the token, or a negative st_err. */
static int32_t sample_row(struct server *s, int r, struct job *j, struct sample_result *res)
{
    int n_top = j->logprobs >= 0 ? j->logprobs : -1;
    int32_t tok = sample_from_top(&j->sp, &s->tops[r], j->n_tokens, j->n_tokens, n_top, res);
    if (tok >= 0) return tok;
    float *lg = s->logits + (size_t)r * (size_t)s->n_vocab;
    if (s->row_want[r] == LOGITS_SUMMARY) {
        if (s->rows_gone) { /* sample_top_decides said it would decide */
            log_error("request %s: the logits summary did not decide (no finite logits?)",
                      j->rid);
            return ST_EINVAL;
        }
        int rc = s->ops->logits_row(s->b, r, lg);
        if (rc) return rc;
    }
    return sample_next(&j->sp, lg, s->n_vocab, j->tokens, j->n_tokens, j->n_tokens, n_top, res);
}

/*
 * Tokens the next step may take: max_batch, but no more than the measured
 * speed processes in about one heartbeat period, so that a long prompt is
 * processed in chunks between decode steps (decodes are never stalled for
 * long, and heartbeats stay on time).
 */
static int step_budget(const struct server *s)
{
    if (s->tok_per_ms <= 0) return s->max_batch;
    double b = s->tok_per_ms * (double)s->cfg->frontend.heartbeat_ms;
    int budget = b > s->max_batch ? s->max_batch : (int)b;
    return budget < 16 ? (s->max_batch < 16 ? s->max_batch : 16) : budget;
}

/* One scheduler step: build a batch, forward, sample, stream. */
static int step(struct server *s)
{
    int n = 0, n_rows = 0, budget = step_budget(s);
    /* decode tokens first: one per running sequence */
    for (int i = 0; i < s->max_seqs && n < s->max_batch; i++) {
        struct job *j = s->slots[i];
        if (!j || j->n_fed != j->n_tokens - 1) continue;
        s->bt_tok[n] = j->tokens[j->n_fed];
        s->bt_pos[n] = j->n_fed;
        s->bt_seq[n] = i;
        s->bt_logits[n] = row_want(s, j);
        s->bt_slot[n_rows++] = i;
        n++;
    }
    /* then prompt chunks */
    for (int i = 0; i < s->max_seqs && n < budget; i++) {
        struct job *j = s->slots[i];
        if (!j || j->n_fed >= j->n_tokens - 1) continue;
        int take = j->n_tokens - j->n_fed;
        if (take > budget - n) take = budget - n;
        for (int k = 0; k < take; k++) {
            s->bt_tok[n] = j->tokens[j->n_fed + k];
            s->bt_pos[n] = j->n_fed + k;
            s->bt_seq[n] = i;
            s->bt_logits[n] = 0;
            n++;
        }
        if (j->n_fed + take == j->n_tokens) {
            s->bt_logits[n - 1] = row_want(s, j);
            s->bt_slot[n_rows++] = i;
        }
    }
    if (n == 0) return 0;
    struct batch bt = {n, s->bt_tok, s->bt_pos, s->bt_seq, s->bt_logits, s->tops};
    int64_t t0 = proto_now_ms();
    int rc = forward_grouped(s, &bt,
                             s->cfg->worker.deterministic ? s->ops->invariant_max_batch : 0);
    int64_t dt = proto_now_ms() - t0;
    if (n >= 8) { /* speed estimate from steps large enough to mean something */
        double v = (double)n / (double)(dt > 0 ? dt : 1);
        s->tok_per_ms = s->tok_per_ms > 0 ? 0.7 * s->tok_per_ms + 0.3 * v : v;
    }
    if (rc) {
        log_error("backend %s: forward failed: %s", s->ops->name, st_strerror(rc));
        return rc;
    }
    s->steps++;
    int64_t abort_at = s->cfg->worker.faults.abort_at_step;
    if (abort_at > 0 && s->steps == (uint64_t)abort_at && fault_fire("abort at this decode step"))
        abort();
    if (s->cfg->worker.faults.bad_kernel && s->steps == 8 &&
        fault_fire("the next kernel writes to an invalid address"))
        cuda_backend_inject_bad_kernel();
    /* account fed tokens */
    for (int k = 0; k < n; k++) s->slots[s->bt_seq[k]]->n_fed++;
    json_array_clear(s->items);
    for (int r = 0; r < n_rows; r++) {
        int i = s->bt_slot[r];
        struct job *j = s->slots[i];
        struct sample_result res;
        int32_t tok = sample_row(s, r, j, &res);
        if (tok == ST_EINVAL) { /* this request cannot go on; the others can */
            reject(s, j->rid, "the logits had no finite value to sample from");
            job_free(j);
            s->slots[i] = NULL;
            if (s->ops->seq_truncate(s->b, i, 0)) log_warn("could not free sequence %d", i);
            continue;
        }
        if (tok < 0) {
            log_error("backend %s: logits row: %s", s->ops->name, st_strerror(tok));
            return tok;
        }
        if (is_stop(j, res.token)) {
            done(s, i, "stop");
            continue;
        }
        json_t *it = json_pack("{s:s,s:i,s:i}", "rid", j->rid, "n", j->n_tokens - j->n_prompt,
                               "tok", res.token);
        if (j->logprobs >= 0) json_object_set_new(it, "lp", logprob_json(&res, j->logprobs));
        json_array_append_new(s->items, it);
        j->tokens[j->n_tokens++] = res.token;
        j->n_new++;
    }
    if (json_array_size(s->items)) send(s, json_pack("{s:s,s:O}", "ev", "toks", "items", s->items));
    for (int i = 0; i < s->max_seqs; i++) {
        struct job *j = s->slots[i];
        if (!j || j->n_fed != j->n_tokens - 1) continue;
        if (j->n_new >= j->max_new || j->n_tokens >= s->max_ctx) done(s, i, "length");
    }
    return 0;
}

int server_run(const struct staged_config *cfg, const struct st_model *m,
               const struct backend_ops *ops, struct backend *b, server_check_fn check,
               void *check_ctx, volatile sig_atomic_t *stop)
{
    int64_t last_check = proto_now_ms();
    struct server s = {.cfg = cfg, .m = m, .ops = ops, .b = b};
    s.n_vocab = (int)m->hp.n_vocab;
    s.max_seqs = (int)cfg->worker.max_seqs;
    s.max_ctx = (int)cfg->worker.max_ctx;
    s.max_batch = (int)cfg->worker.max_batch;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(s.instance, sizeof(s.instance), "w%d-%" PRIx64, (int)getpid(),
             (uint64_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec));
    s.slots = calloc((size_t)s.max_seqs, sizeof(*s.slots));
    s.bt_tok = calloc((size_t)s.max_batch, sizeof(int32_t));
    s.bt_pos = calloc((size_t)s.max_batch, sizeof(int32_t));
    s.bt_seq = calloc((size_t)s.max_batch, sizeof(int32_t));
    s.bt_logits = calloc((size_t)s.max_batch, 1);
    s.bt_slot = calloc((size_t)s.max_batch, sizeof(int));
    s.row_want = calloc((size_t)s.max_batch, 1);
    s.tops = calloc((size_t)s.max_batch, sizeof(*s.tops));
    int max_rows = s.max_seqs < s.max_batch ? s.max_seqs : s.max_batch;
    size_t logits_bytes = (size_t)max_rows * (size_t)s.n_vocab * sizeof(float);
    bool pinned = !strcmp(ops->name, "cuda") && (s.logits = cuda_host_alloc(logits_bytes));
    if (!pinned) s.logits = malloc(logits_bytes);
    s.items = json_array();
    int rc = 0;
    if (!s.slots || !s.bt_tok || !s.bt_pos || !s.bt_seq || !s.bt_logits || !s.bt_slot ||
        !s.row_want || !s.tops ||
        !s.logits || !s.items) {
        log_error("out of memory for %d sequences x %d vocab", s.max_seqs, s.n_vocab);
        rc = ST_ENOMEM;
        goto out;
    }
    s.zctx = zmq_ctx_new();
    s.sock = zmq_socket(s.zctx, ZMQ_DEALER);
    int linger = 0, hwm = 100000;
    zmq_setsockopt(s.sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s.sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s.sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(s.sock, ZMQ_ROUTING_ID, s.instance, strlen(s.instance));
    if (zmq_connect(s.sock, cfg->worker.endpoint) < 0) {
        log_error("[worker] endpoint %s: connect: %s", cfg->worker.endpoint,
                  zmq_strerror(zmq_errno()));
        rc = ST_EIO;
        goto out;
    }
    send(&s, json_pack("{s:s,s:i,s:s,s:i,s:i}", "ev", "hello", "pid", (int)getpid(), "backend",
                       ops->name, "max_seqs", s.max_seqs, "max_ctx", s.max_ctx));
    s.last_hb = proto_now_ms();
    log_info("ready: instance %s serving via %s (%s backend, %d sequences, ctx %d)", s.instance,
             cfg->worker.endpoint, ops->name, s.max_seqs, s.max_ctx);

    while (!*stop) {
        bool busy = s.n_queued > 0;
        for (int i = 0; i < s.max_seqs && !busy; i++) busy = s.slots[i] != NULL;
        zmq_pollitem_t it = {.socket = s.sock, .events = ZMQ_POLLIN};
        int64_t hb = cfg->frontend.heartbeat_ms;
        if (s.hung) {
            usleep(100000); /* fault injection: wedged, never answers again */
            continue;
        }
        if (zmq_poll(&it, 1, busy ? 0 : (long)hb) > 0) {
            for (int k = 0; k < 1024; k++) {
                zmq_msg_t msg;
                zmq_msg_init(&msg);
                if (zmq_msg_recv(&msg, s.sock, ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close(&msg);
                    break;
                }
                json_t *j = json_loadb(zmq_msg_data(&msg), zmq_msg_size(&msg), 0, NULL);
                zmq_msg_close(&msg);
                if (!json_is_object(j)) {
                    json_decref(j);
                    continue;
                }
                rc = on_message(&s, j);
                json_decref(j);
                if (rc) {
                    log_error("out of memory taking a request; exiting so the worker restarts");
                    goto out;
                }
            }
        }
        if ((rc = admit(&s)) || (rc = step(&s))) goto out;
        if (proto_now_ms() - s.last_hb >= hb) send_hb(&s);
        if (check && proto_now_ms() - last_check >= 1000) {
            last_check = proto_now_ms();
            if (!check(check_ctx)) {
                rc = ST_ESTATE;
                goto out;
            }
        }
    }
out:
    if (s.slots)
        for (int i = 0; i < s.max_seqs; i++) job_free(s.slots[i]);
    while (s.queue_head) {
        struct job *j = s.queue_head;
        s.queue_head = j->next;
        job_free(j);
    }
    free(s.slots);
    free(s.bt_tok);
    free(s.bt_pos);
    free(s.bt_seq);
    free(s.bt_logits);
    free(s.bt_slot);
    free(s.row_want);
    free(s.tops);
    if (pinned) cuda_host_free(s.logits);
    else free(s.logits);
    if (s.items) json_decref(s.items);
    if (s.sock) zmq_close(s.sock);
    if (s.zctx) zmq_ctx_term(s.zctx);
    return rc;
}
