#include "proto.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

int64_t proto_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void proto_msg_clear(struct proto_msg *msg)
{
    if (msg->body) json_decref(msg->body);
    msg->body = NULL;
    msg->ident_len = 0;
}

static bool more_frames(void *sock)
{
    int more = 0;
    size_t sz = sizeof(more);
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    return more != 0;
}

static void drain(void *sock)
{
    while (more_frames(sock)) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
        zmq_msg_close(&m);
    }
}

int proto_recv(void *router, size_t max_bytes, struct proto_msg *msg)
{
    msg->body = NULL;
    msg->ident_len = 0;
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    if (zmq_msg_recv(&id, router, 0) < 0) {
        zmq_msg_close(&id);
        return ST_EIO;
    }
    size_t il = zmq_msg_size(&id);
    if (il > PROTO_MAX_ID) il = PROTO_MAX_ID;
    memcpy(msg->ident, zmq_msg_data(&id), il);
    msg->ident_len = il;
    zmq_msg_close(&id);
    if (!more_frames(router)) {
        proto_send_error(router, msg->ident, msg->ident_len, NULL, "bad_request",
                         "message has no body frame");
        return 0;
    }
    zmq_msg_init(&body);
    if (zmq_msg_recv(&body, router, 0) < 0) {
        zmq_msg_close(&body);
        return ST_EIO;
    }
    if (more_frames(router)) {
        drain(router);
        zmq_msg_close(&body);
        proto_send_error(router, msg->ident, msg->ident_len, NULL, "bad_request",
                         "expected exactly one frame of JSON, got more");
        return 0;
    }
    size_t len = zmq_msg_size(&body);
    if (len > max_bytes) {
        zmq_msg_close(&body);
        proto_send_error(router, msg->ident, msg->ident_len, NULL, "too_large",
                         "message of %zu bytes exceeds the limit of %zu", len, max_bytes);
        return 0;
    }
    json_error_t jerr;
    /* jansson rejects invalid UTF-8 and NUL bytes in strings */
    json_t *j = json_loadb(zmq_msg_data(&body), len, JSON_REJECT_DUPLICATES, &jerr);
    zmq_msg_close(&body);
    if (!j) {
        proto_send_error(router, msg->ident, msg->ident_len, NULL, "bad_request",
                         "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return 0;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        proto_send_error(router, msg->ident, msg->ident_len, NULL, "bad_request",
                         "message must be a JSON object");
        return 0;
    }
    msg->body = j;
    return 0;
}

int proto_send(void *router, const uint8_t *ident, size_t ident_len, const json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    if (!s) return ST_ENOMEM;
    int rc = 0;
    if (zmq_send(router, ident, ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(router, s, strlen(s), ZMQ_DONTWAIT) < 0)
        rc = ST_EIO;
    free(s);
    return rc;
}

json_t *proto_error_jsonv(const json_t *id, const char *code, const char *fmt, va_list ap)
{
    char text[512];
    vsnprintf(text, sizeof(text), fmt, ap);
    return json_pack("{s:O?,s:{s:s,s:s}}", "id", id, "error", "code", code, "message", text);
}

json_t *proto_error_json(const json_t *id, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = proto_error_jsonv(id, code, fmt, ap);
    va_end(ap);
    return r;
}

int proto_send_error(void *router, const uint8_t *ident, size_t ident_len, const json_t *id,
                     const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = proto_error_jsonv(id, code, fmt, ap);
    va_end(ap);
    if (!r) return ST_ENOMEM;
    int rc = proto_send(router, ident, ident_len, r);
    json_decref(r);
    return rc;
}

void *proto_connect(void *zctx, const char *endpoint)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    if (!s) return NULL;
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    if (zmq_connect(s, endpoint) < 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

json_t *proto_call(void *dealer, const json_t *req, int timeout_ms)
{
    char *s = json_dumps(req, JSON_COMPACT);
    if (!s) return NULL;
    int rc = zmq_send(dealer, s, strlen(s), 0);
    free(s);
    if (rc < 0) return NULL;
    zmq_pollitem_t it = {.socket = dealer, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, dealer, 0) < 0) {
        zmq_msg_close(&m);
        return NULL;
    }
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
    zmq_msg_close(&m);
    drain(dealer);
    return j;
}

json_t *proto_request(void *zctx, const char *endpoint, const json_t *req, int timeout_ms)
{
    void *s = proto_connect(zctx, endpoint);
    if (!s) return NULL;
    json_t *r = proto_call(s, req, timeout_ms);
    zmq_close(s);
    return r;
}

const char *proto_unknown_key(const json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, key)) ok = true;
        if (!ok) return key;
    }
    return NULL;
}
