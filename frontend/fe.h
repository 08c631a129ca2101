/*
 * fe.h - the frontend's state: client requests and the stages they pass.
 *
 * A request goes
 *   TOKENIZE  -> the tokenizer encodes the prompt (or renders the chat)
 *   QUEUED    -> waiting for a live worker
 *   RUNNING   -> the worker streams tokens; each batch of new tokens goes to
 *                the tokenizer's stateless streaming decode ("detok"), one
 *                call in flight per request, in order
 *   DRAINING  -> the worker is done; the last tokens are being decoded
 * and then gets exactly one final message. The frontend holds everything a
 * request needs to be carried on (prompt tokens, tokens generated so far, the
 * detokenizer's held-back bytes), so a worker or tokenizer restart only
 * causes a resubmission: the worker gets prompt + generated tokens and, since
 * sampling depends only on (seed, position), continues the same stream.
 *
 * Stages: the worker connects to the frontend's ROUTER at [worker] endpoint
 * and announces itself (hello, then heartbeats); the tokenizer and loader are
 * polled with health requests every heartbeat_ms. A stage silent for
 * stage_timeout_ms is dead; a wedged worker (alive but silent) is killed so
 * its supervisor restarts it.
 */
#ifndef STAGED_FE_H
#define STAGED_FE_H

#include "common/err.h"
#include "conf/config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum req_state { REQ_TOKENIZE, REQ_QUEUED, REQ_RUNNING, REQ_DRAINING, REQ_DONE };

#define REQ_MAX_STOP 8
#define REQ_MAX_STOP_LEN 64

struct req {
    char rid[24];                 /* internal id, unique per frontend run */
    char cid[65];                 /* client's id */
    uint8_t ident[256];           /* client's routing identity */
    size_t ident_len;
    enum req_state state;
    bool stream;
    int64_t max_tokens;
    json_t *tok_req;              /* tokenizer request (encode / chat), for resends */
    json_t *sampling;             /* object forwarded to the worker */
    int logprobs;                 /* -1 off, else number of alternatives */
    char stop[REQ_MAX_STOP][REQ_MAX_STOP_LEN + 1];
    int n_stop;

    int32_t *prompt;              /* prompt token ids */
    int n_prompt;
    int32_t *gen;                 /* generated token ids, in order */
    int n_gen, cap_gen;
    json_t *lp;                   /* logprob entries not yet sent with a chunk */

    int n_detok;                  /* tokens of gen already decoded */
    int detok_inflight;           /* tokens in the call in flight (0 = none) */
    int64_t detok_sent_ms;
    char pending[64];             /* detok held-back bytes, hex */
    char *text;                   /* decoded completion */
    size_t text_len, text_cap;
    size_t emitted;               /* bytes of text sent to the client */
    int seq;                      /* next chunk number */
    int n_chunked;                /* tokens of gen reported in chunks */

    const char *finish;           /* set once the outcome is known */
    const char *err_code;
    char err_msg[160];

    int64_t t_arrive, t_first, t_sent_worker, tok_sent_ms, deadline;
};

struct fe;

int fe_new(const struct staged_config *cfg, struct fe **out, struct st_errbuf *eb);
/* One turn of the event loop: waits up to timeout_ms for messages. */
void fe_poll(struct fe *fe, int timeout_ms);
/* Stop accepting requests; true once nothing is in flight. */
bool fe_drain(struct fe *fe);
/* True once every stage has answered and the tokenizer's info is known. */
bool fe_ready(const struct fe *fe);
void fe_destroy(struct fe **fe);

/* ---- request parsing (request.c) ---- */

/*
 * Validate a client "generate" message into r (zeroed by the caller).
 * Returns 0, or an error code string ("bad_request", "unknown_field",
 * "too_large", "invalid_utf8") with msg filled.
 */
const char *req_parse(const struct staged_config *cfg, const json_t *m, struct req *r, char *msg,
                      size_t cap);
void req_free(struct req *r);
/* Append decoded text; returns 0 or ST_ENOMEM. */
int req_append_text(struct req *r, const char *s, size_t n);
/* Where the earliest stop string starts in the text so far, or -1. */
long req_find_stop(const struct req *r);
/* Bytes at the end of the text that could begin a stop string: held back
 * from the client until more text decides. */
size_t req_stop_holdback(const struct req *r);

#endif
