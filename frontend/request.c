/* Validation of client generate requests (docs/protocol.md). */
#include "fe.h"

#include "common/proto.h"
#include "gpu_worker/sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const gen_fields[] = {
    "proto", "op", "id", "prompt", "messages", "max_tokens", "stream", "seed", "temperature",
    "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
    "frequency_penalty", "stop", "logprobs", "top_logprobs", "timeout_ms", NULL};

#define BAD(code, ...)                                                                             \
    do {                                                                                           \
        snprintf(msg, cap, __VA_ARGS__);                                                           \
        return code;                                                                               \
    } while (0)

/* Number field with range; absent -> dflt. */
static const char *get_num(const json_t *m, const char *key, double lo, double hi, double dflt,
                           double *out, char *msg, size_t cap)
{
    json_t *v = json_object_get(m, key);
    if (!v) {
        *out = dflt;
        return NULL;
    }
    if (!json_is_number(v)) BAD("bad_request", "field '%s' must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        BAD("bad_request", "field '%s' = %g is out of range [%g, %g]", key, x, lo, hi);
    *out = x;
    return NULL;
}

static const char *get_int(const json_t *m, const char *key, int64_t lo, int64_t hi, int64_t dflt,
                           int64_t *out, char *msg, size_t cap)
{
    json_t *v = json_object_get(m, key);
    if (!v) {
        *out = dflt;
        return NULL;
    }
    if (!json_is_integer(v)) BAD("bad_request", "field '%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        BAD("bad_request", "field '%s' = %lld is out of range [%lld, %lld]", key, (long long)x,
            (long long)lo, (long long)hi);
    *out = x;
    return NULL;
}

static const char *get_bool(const json_t *m, const char *key, bool dflt, bool *out, char *msg,
                            size_t cap)
{
    json_t *v = json_object_get(m, key);
    if (!v) {
        *out = dflt;
        return NULL;
    }
    if (!json_is_boolean(v)) BAD("bad_request", "field '%s' must be true or false", key);
    *out = json_is_true(v);
    return NULL;
}

static const char *parse_messages(const json_t *arr, size_t limit, json_t **out, char *msg,
                                  size_t cap)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > 1024)
        BAD("bad_request", "field 'messages' must be an array of 1 to 1024 messages");
    size_t total = 0, i;
    json_t *m;
    json_t *copy = json_array();
    json_array_foreach(arr, i, m)
    {
        static const char *const allowed[] = {"role", "content", NULL};
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        const char *unk = json_is_object(m) ? proto_unknown_key(m, allowed) : NULL;
        if (unk) {
            json_decref(copy);
            BAD("unknown_field", "messages[%zu]: unknown field '%s'", i, unk);
        }
        if (!json_is_string(role) || !json_is_string(content)) {
            json_decref(copy);
            BAD("bad_request", "messages[%zu] must have string fields 'role' and 'content'", i);
        }
        const char *r = json_string_value(role);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            json_decref(copy);
            BAD("bad_request", "messages[%zu]: role '%.32s' is not system, user or assistant", i, r);
        }
        total += json_string_length(content);
        json_array_append_new(copy, json_pack("{s:O,s:O}", "role", role, "content", content));
    }
    if (total > limit) {
        json_decref(copy);
        BAD("too_large", "messages hold %zu bytes, the limit is %zu", total, limit);
    }
    *out = copy;
    return NULL;
}

const char *req_parse(const struct staged_config *cfg, const json_t *m, struct req *r, char *msg,
                      size_t cap)
{
    const char *e;
    const char *unk = proto_unknown_key(m, gen_fields);
    if (unk) BAD("unknown_field", "unknown field '%s'", unk);
    int64_t proto, max_tokens, top_k, last_n, seed, top_lp, timeout;
    double temp, top_p, min_p, rep, pres, freq;
    bool lp;
    if ((e = get_int(m, "proto", 1, 1, 1, &proto, msg, cap)) ||
        (e = get_int(m, "max_tokens", 1, cfg->frontend.max_tokens_limit,
                     cfg->frontend.default_max_tokens, &max_tokens, msg, cap)) ||
        (e = get_bool(m, "stream", true, &r->stream, msg, cap)) ||
        (e = get_int(m, "seed", 0, INT64_MAX, 0, &seed, msg, cap)) ||
        (e = get_num(m, "temperature", 0, 5, 0.8, &temp, msg, cap)) ||
        (e = get_int(m, "top_k", 0, 1 << 20, 40, &top_k, msg, cap)) ||
        (e = get_num(m, "top_p", 1e-6, 1, 0.95, &top_p, msg, cap)) ||
        (e = get_num(m, "min_p", 0, 0.999999, 0.05, &min_p, msg, cap)) ||
        (e = get_num(m, "repeat_penalty", 1e-3, 10, 1.0, &rep, msg, cap)) ||
        (e = get_int(m, "repeat_last_n", 0, 4096, 64, &last_n, msg, cap)) ||
        (e = get_num(m, "presence_penalty", -2, 2, 0, &pres, msg, cap)) ||
        (e = get_num(m, "frequency_penalty", -2, 2, 0, &freq, msg, cap)) ||
        (e = get_bool(m, "logprobs", false, &lp, msg, cap)) ||
        (e = get_int(m, "top_logprobs", 0, 20, 0, &top_lp, msg, cap)) ||
        (e = get_int(m, "timeout_ms", 1, INT64_MAX / 4, cfg->frontend.request_timeout_ms
                     ? cfg->frontend.request_timeout_ms : INT64_MAX / 4, &timeout, msg, cap)))
        return e;
    if (top_lp && !lp) BAD("bad_request", "field 'top_logprobs' needs 'logprobs': true");
    r->max_tokens = max_tokens;
    r->logprobs = lp ? (int)top_lp : -1;
    r->deadline = timeout; /* relative; the caller adds the arrival time */

    json_t *stop = json_object_get(m, "stop");
    if (stop) {
        if (!json_is_array(stop) || json_array_size(stop) > REQ_MAX_STOP)
            BAD("bad_request", "field 'stop' must be an array of at most %d strings", REQ_MAX_STOP);
        size_t i;
        json_t *s;
        json_array_foreach(stop, i, s)
        {
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) > REQ_MAX_STOP_LEN)
                BAD("bad_request", "stop[%zu] must be a string of 1 to %d bytes", i,
                    REQ_MAX_STOP_LEN);
            memcpy(r->stop[i], json_string_value(s), json_string_length(s) + 1);
        }
        r->n_stop = (int)json_array_size(stop);
    }

    json_t *prompt = json_object_get(m, "prompt"), *messages = json_object_get(m, "messages");
    if (!!prompt == !!messages) BAD("bad_request", "exactly one of 'prompt' and 'messages' is required");
    size_t limit = (size_t)cfg->frontend.max_prompt_bytes;
    if (prompt) {
        if (!json_is_string(prompt)) BAD("bad_request", "field 'prompt' must be a string");
        if (json_string_length(prompt) > limit)
            BAD("too_large", "prompt of %zu bytes, the limit is %zu", json_string_length(prompt),
                limit);
        if (memchr(json_string_value(prompt), 0, json_string_length(prompt)))
            BAD("bad_request", "prompt contains a NUL character");
        r->tok_req = json_pack("{s:s,s:O,s:b,s:b}", "op", "encode", "text", prompt, "add_special", 1,
                               "parse_special", 0);
    } else {
        json_t *copy;
        if ((e = parse_messages(messages, limit, &copy, msg, cap))) return e;
        r->tok_req = json_pack("{s:s,s:o,s:b}", "op", "chat", "messages", copy,
                               "add_generation_prompt", 1);
    }
    r->sampling = json_pack("{s:f,s:I,s:f,s:f,s:f,s:I,s:f,s:f,s:I}", "temperature", temp, "top_k",
                            (json_int_t)top_k, "top_p", top_p, "min_p", min_p, "repeat_penalty",
                            rep, "repeat_last_n", (json_int_t)last_n, "presence_penalty", pres,
                            "frequency_penalty", freq, "seed", (json_int_t)seed);
    if (!r->tok_req || !r->sampling) BAD("internal", "out of memory");
    return NULL;
}

void req_free(struct req *r)
{
    if (r->tok_req) json_decref(r->tok_req);
    if (r->sampling) json_decref(r->sampling);
    if (r->lp) json_decref(r->lp);
    free(r->prompt);
    free(r->gen);
    free(r->text);
    free(r);
}

int req_append_text(struct req *r, const char *s, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = (r->text_cap ? r->text_cap * 2 : 256);
        while (cap < r->text_len + n + 1) cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t) return ST_ENOMEM;
        r->text = t;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
    return 0;
}

long req_find_stop(const struct req *r)
{
    const char *stops[REQ_MAX_STOP];
    for (int i = 0; i < r->n_stop; i++) stops[i] = r->stop[i];
    size_t at;
    return sample_stop_find(r->text, r->text_len, stops, r->n_stop, &at) < 0 ? -1 : (long)at;
}

size_t req_stop_holdback(const struct req *r)
{
    const char *stops[REQ_MAX_STOP];
    for (int i = 0; i < r->n_stop; i++) stops[i] = r->stop[i];
    return sample_stop_holdback(r->text, r->text_len, stops, r->n_stop);
}
