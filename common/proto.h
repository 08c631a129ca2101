/*
 * proto.h - the message convention between staged processes, and helpers.
 *
 * Every stage serves a ZeroMQ ROUTER socket. A peer connects a DEALER socket
 * and sends ONE frame holding a JSON object; the stage replies with ONE JSON
 * frame (the ROUTER prefixes the peer's identity frame, which these helpers
 * handle). Requests carry "op" and optionally "id" (echoed in the reply).
 * Errors are replies of the form
 *   {"id": ..., "error": {"code": "bad_request", "message": "..."}}
 * A message with a wrong frame count, invalid UTF-8 or JSON, or over the size
 * limit is answered with such an error; the stage keeps serving.
 */
#ifndef STAGED_PROTO_H
#define STAGED_PROTO_H

#include "common/err.h"

#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define PROTO_MAX_ID 256

/* A received request: the peer's routing identity and the parsed JSON. */
struct proto_msg {
    uint8_t ident[PROTO_MAX_ID];
    size_t ident_len;
    json_t *body; /* owned; NULL if the message was rejected (error already sent) */
};

/*
 * Receive one request from a ROUTER socket (blocking per the socket's
 * options). Malformed messages get an error reply here and *msg->body is
 * NULL. Returns 0, or ST_EIO if the socket failed / was interrupted.
 */
int proto_recv(void *router, size_t max_bytes, struct proto_msg *msg);

/* Send body (not consumed) to the peer. Returns 0 or ST_EIO. */
int proto_send(void *router, const uint8_t *ident, size_t ident_len, const json_t *body);

/* An error object {"id": id, "error": {"code", "message"}} (id may be NULL);
 * NULL if out of memory. Caller frees. */
json_t *proto_error_json(const json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
json_t *proto_error_jsonv(const json_t *id, const char *code, const char *fmt, va_list ap);

/* Send an error reply echoing id (may be NULL). */
int proto_send_error(void *router, const uint8_t *ident, size_t ident_len, const json_t *id,
                     const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

void proto_msg_clear(struct proto_msg *msg);

/*
 * Client side: a DEALER connected to endpoint. proto_call sends req and waits
 * up to timeout_ms for a reply; returns the reply (caller frees) or NULL on
 * timeout / error (then the socket should be recreated).
 */
void *proto_connect(void *zctx, const char *endpoint);
json_t *proto_call(void *dealer, const json_t *req, int timeout_ms);

/* One-shot: connect, call, close. */
json_t *proto_request(void *zctx, const char *endpoint, const json_t *req, int timeout_ms);

/*
 * Check that obj has only keys from the NULL-terminated list `allowed`;
 * returns NULL or the first unknown key.
 */
const char *proto_unknown_key(const json_t *obj, const char *const *allowed);

/* Monotonic milliseconds. */
int64_t proto_now_ms(void);

#endif
