/*
 * client.h - the C client library of the staged frontend (docs/protocol.md).
 *
 * One struct client holds one ZeroMQ DEALER connected to the frontend's
 * client endpoint and a background I/O thread that owns it. Any number of
 * generate requests may be in flight at once; each gets its events through a
 * callback. Every function here is thread-safe; callbacks run on the I/O
 * thread, one at a time, and must not block for long (copy the text, signal,
 * return). A callback may call client_cancel, but not client_destroy or
 * client_call.
 *
 * Wire ids. The library chooses the protocol `id` of every message it sends:
 *   generate/status/cancel:   "g<N>.<A>"  N = request number, A = attempt
 *   health/models/stats:      "q<N>"
 * A reply for an attempt that is no longer current is ignored, so a status
 * answer or a chunk from a superseded attempt can never be delivered twice.
 *
 * Seeds. The library always sends an explicit "seed": the caller's, or a
 * random one in 0 .. 2^63-1 it picked; resubmissions reuse it, so a
 * resubmitted request produces the same tokens (protocol: sampling depends
 * only on seed and position).
 *
 * Faults and restarts. A request that hears nothing for idle_timeout_ms gets
 * a `status` query. "queued"/"running" count as a sign of life. "unknown"
 * (the frontend restarted and lost it) makes the library resubmit it as a new
 * attempt with the same parameters, the same seed and the time left until the
 * request's deadline as `timeout_ms`. A status with no answer is repeated
 * every idle_timeout_ms (the DEALER reconnects by itself when the frontend
 * comes back). A resubmission answered "busy" or "unavailable" (the new
 * frontend is not ready for everyone yet) is tried again after
 * idle_timeout_ms, until the deadline. Chunks carry byte `offset`s; the library delivers only bytes
 * past what it already delivered, so callers see one continuous stream with
 * no gap and no duplicate. A request with no final by its deadline (plus one
 * idle timeout of grace for the frontend's own "cancelled" final) ends with a
 * library-made event whose code is "unavailable".
 */
#ifndef STAGED_CLIENT_H
#define STAGED_CLIENT_H

#include "common/err.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLIENT_IDLE_TIMEOUT_MS 5000       /* default idle timeout */
#define CLIENT_DEFAULT_DEADLINE_MS 300000 /* deadline when the params give no timeout_ms */

struct client_opts {
    const char *endpoint;       /* frontend client endpoint (tcp:// or ipc://), required */
    int idle_timeout_ms;        /* silence before a status query; 0 = CLIENT_IDLE_TIMEOUT_MS */
    int64_t default_timeout_ms; /* deadline of requests without timeout_ms; 0 = default */
};

enum client_event_type {
    CLIENT_CHUNK, /* new streamed text (stream: true only) */
    CLIENT_FINAL, /* the request ended (terminal) */
    CLIENT_ERROR, /* the request was not accepted (terminal) */
};

/*
 * One event. Everything it points to is valid only during the callback.
 * Exactly one terminal event (CLIENT_FINAL or CLIENT_ERROR) is delivered per
 * submitted request, after which its number is forgotten.
 */
struct client_event {
    enum client_event_type type;
    uint64_t req;              /* request number from client_submit */
    void *user;                /* the caller's pointer from client_submit */
    const char *text;          /* CHUNK: bytes not delivered before; FINAL: whole completion */
    size_t len;                /* bytes at text (text is NUL-terminated too) */
    size_t offset;             /* CHUNK: byte offset of text in the completion */
    int seq;                   /* CHUNK: the library's chunk counter, from 0, no gaps */
    const char *finish_reason; /* FINAL: stop | length | cancelled | error */
    const char *code;          /* ERROR, or FINAL with finish "error": error code, else NULL */
    const char *message;       /* with code: human-readable reason */
    const json_t *msg;         /* the frontend's message (borrowed), NULL if library-made */
    int64_t seed;              /* the seed sent with the request */
    int attempts;              /* submissions so far (1 + resubmissions) */
};

typedef void (*client_cb)(const struct client_event *ev);

struct client;

/*
 * Connect (ZeroMQ connects lazily: this succeeds while the frontend is down)
 * and start the I/O thread. Returns 0, ST_EINVAL (no endpoint), ST_ENOMEM or
 * ST_EIO (socket/thread creation failed) with eb filled.
 */
int client_new(const struct client_opts *opts, struct client **out, struct st_errbuf *eb);

/*
 * Stop the I/O thread, send a cancel for every request still in flight (best
 * effort, no callbacks are run for them) and free everything. Safe on NULL and
 * twice: *c is set to NULL.
 */
void client_destroy(struct client **c);

/*
 * Submit a generate request. params is a JSON object with the protocol's
 * generate fields (prompt or messages, max_tokens, stream, seed, temperature,
 * top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty,
 * frequency_penalty, stop, logprobs, top_logprobs, timeout_ms); it is copied,
 * not consumed. "op", "id" and "proto" are set by the library and must not be
 * in params. Field values are checked by the frontend (errors come back as a
 * CLIENT_ERROR event), except what the library needs: seed and timeout_ms
 * must be integers in range if present.
 * *req_out gets the request number. Returns 0, ST_EINVAL (params not an
 * object, reserved key, bad seed/timeout_ms; eb says which), ST_ENOMEM, or
 * ST_ESTATE (client being destroyed).
 */
int client_submit(struct client *c, const json_t *params, client_cb cb, void *user,
                  uint64_t *req_out, struct st_errbuf *eb);

/*
 * Ask the frontend to cancel request req; its final (finish "cancelled", or
 * whatever it had reached) still arrives through the callback. Returns 0, or
 * ST_ENOTFOUND if req is not in flight.
 */
int client_cancel(struct client *c, uint64_t req);

/*
 * A synchronous health / models / stats query (op is one of those). Returns
 * the reply (caller json_decref's it), or NULL if none came within
 * timeout_ms (frontend down) or op is not one of the three.
 */
json_t *client_call(struct client *c, const char *op, int timeout_ms);

/* Counters since client_new, for logs and tests. */
struct client_counters {
    uint64_t submitted;   /* client_submit calls accepted */
    uint64_t resubmitted; /* resubmissions after a status "unknown" */
    uint64_t status_sent; /* status queries sent */
    uint64_t in_flight;   /* requests without a terminal event yet */
};
void client_get_counters(struct client *c, struct client_counters *out);

#endif
