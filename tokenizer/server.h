/*
 * server.h - the tokenizer stage's request handling: encode, chat, decode,
 * streaming detok, health and info over ZeroMQ (protocol: docs/tokenizer-protocol.md).
 *
 * A ROUTER socket is bound at the endpoint; clients connect DEALER sockets and
 * send ONE frame holding a JSON object; each reply is ONE JSON frame. The
 * thread calling tok_server_run hands each request to an idle worker thread
 * (`threads` of them, over an inproc ROUTER; a worker announces itself with
 * an empty frame, then each reply marks it idle again) and passes the replies
 * back. Requests are handled in parallel; while every worker is busy new ones
 * wait in the socket queue, so a slow request (a 1 MiB text takes ~1-2 s)
 * holds up only its own worker, never requests queued behind it elsewhere.
 *
 * Every malformed request (frame count, size over max_request_bytes, invalid
 * UTF-8, bad JSON, unknown op or field, values of the wrong type or range)
 * gets an error reply {"id": ID|null, "error": {"code", "message"}} and the
 * server keeps serving.
 */
#ifndef STAGED_TOK_SERVER_H
#define STAGED_TOK_SERVER_H

#include "common/err.h"
#include "tokenizer/vocab.h"

#include <signal.h>
#include <stddef.h>

struct tok_server_opts {
    const char *endpoint;      /* e.g. "ipc:///tmp/staged-tokenizer.sock" */
    int threads;               /* worker threads, >= 1 */
    size_t max_request_bytes;  /* larger messages are answered "too_large" */
    const char *model_name;    /* reported by health */
    long long hang_at_request; /* fault injection: stop answering from the N-th request on
                                  (0 = off; [tokenizer] fault_hang_at_request) */
};

struct tok_server;

/* Bind the endpoint and start the workers. zctx: a ZeroMQ context the caller
 * owns (outlives the server). v must outlive the server. Returns 0, ST_EIO
 * (bind failed, eb names the endpoint) or ST_ENOMEM. */
int tok_server_new(void *zctx, const struct tok_server_opts *o, const struct vocab *v,
                   struct tok_server **out, struct st_errbuf *eb);

/* Serve until *stop becomes non-zero (checked every 100 ms). Returns 0 or ST_EIO. */
int tok_server_run(struct tok_server *s, volatile sig_atomic_t *stop);

/* Stop and join the workers, close the sockets. Safe on NULL. */
void tok_server_destroy(struct tok_server **s);

/* Handle one request body (the JSON frame's bytes) and return the reply as a
 * NUL-terminated JSON string (free()), or NULL when out of memory. Used by
 * the workers; exposed for tests. */
char *tok_server_handle(const struct tok_server *s, const char *body, size_t len);

#endif
