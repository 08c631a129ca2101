/* OpenAI request/response shapes: see openai.h. */
#include "openai.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int oai_error_set(struct oai_error *err, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...)
{
    err->status = status;
    err->type = type;
    snprintf(err->code, sizeof(err->code), "%s", code ? code : "");
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return ST_EFORMAT;
}

#define BAD(param, ...) oai_error_set(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

void oai_req_clear(struct oai_req *r)
{
    json_decref(r->params);
    r->params = NULL;
}

/* Present and not null. */
static json_t *field(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int copy_number(const json_t *o, const char *key, const char *to, json_t *params,
                       struct oai_error *err)
{
    json_t *v = field(o, key);
    if (!v) return 0;
    if (!json_is_number(v)) return BAD(key, "'%s' must be a number", key);
    json_object_set_new(params, to, json_real(json_number_value(v)));
    return 0;
}

static int copy_int(const json_t *o, const char *key, const char *to, json_t *params,
                    struct oai_error *err)
{
    json_t *v = field(o, key);
    if (!v) return 0;
    if (!json_is_integer(v)) return BAD(key, "'%s' must be an integer", key);
    json_object_set(params, to, v);
    return 0;
}

static int check_type(const json_t *o, const char *key, json_type t, const char *what,
                      struct oai_error *err)
{
    json_t *v = field(o, key);
    if (v && json_typeof(v) != t && !(t == JSON_TRUE && json_is_boolean(v)))
        return BAD(key, "'%s' must be %s", key, what);
    return 0;
}

static int parse_stop(const json_t *o, json_t *params, struct oai_error *err)
{
    json_t *v = field(o, "stop");
    if (!v) return 0;
    json_t *arr = json_array();
    if (json_is_string(v)) {
        json_array_append(arr, v);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *s;
        json_array_foreach(v, i, s)
        {
            if (!json_is_string(s)) {
                json_decref(arr);
                return BAD("stop", "'stop' must be a string or an array of strings");
            }
            json_array_append(arr, s);
        }
    } else {
        json_decref(arr);
        return BAD("stop", "'stop' must be a string or an array of strings");
    }
    json_object_set_new(params, "stop", arr);
    return 0;
}

static int parse_messages(const json_t *o, json_t *params, struct oai_error *err)
{
    json_t *msgs = field(o, "messages");
    if (!msgs) return BAD("messages", "'messages' is a required property");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return BAD("messages", "'messages' must be a non-empty array");
    json_t *out = json_array();
    size_t i;
    json_t *m;
    char p[64];
    json_array_foreach(msgs, i, m)
    {
        snprintf(p, sizeof(p), "messages[%zu]", i);
        if (!json_is_object(m)) goto bad_msg;
        const char *key;
        json_t *v;
        json_object_foreach(m, key, v)
        {
            if (strcmp(key, "role") && strcmp(key, "content") && strcmp(key, "name")) {
                json_decref(out);
                return BAD(p, "unrecognized field '%.48s' in %s", key, p);
            }
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role) {
            json_decref(out);
            return BAD(p, "%s: 'role' is a required string", p);
        }
        if (!strcmp(role, "developer")) role = "system";
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
            json_decref(out);
            return BAD(p, "%s: role '%.32s' is not one of system, developer, user, assistant", p,
                       role);
        }
        if (json_object_get(m, "name") && !json_is_string(json_object_get(m, "name"))) {
            json_decref(out);
            return BAD(p, "%s: 'name' must be a string", p);
        }
        json_t *content = json_object_get(m, "content");
        json_t *text;
        if (json_is_string(content)) {
            text = json_incref(content);
        } else if (json_is_array(content)) {
            /* content parts: only text parts, concatenated */
            size_t k;
            json_t *part;
            size_t total = 0;
            json_array_foreach(content, k, part)
            {
                json_t *t = json_object_get(part, "text");
                if (!json_is_object(part) || !json_is_string(json_object_get(part, "type")) ||
                    strcmp(json_string_value(json_object_get(part, "type")), "text") ||
                    !json_is_string(t)) {
                    json_decref(out);
                    return BAD(p, "%s: content parts must be {\"type\": \"text\", \"text\": ...}",
                               p);
                }
                total += json_string_length(t);
            }
            char *buf = malloc(total + 1);
            if (!buf) {
                json_decref(out);
                return oai_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            }
            size_t at = 0;
            json_array_foreach(content, k, part)
            {
                json_t *t = json_object_get(part, "text");
                memcpy(buf + at, json_string_value(t), json_string_length(t));
                at += json_string_length(t);
            }
            text = json_stringn_nocheck(buf, at);
            free(buf);
        } else {
            json_decref(out);
            return BAD(p, "%s: 'content' must be a string or an array of text parts", p);
        }
        json_array_append_new(out, json_pack("{s:s,s:o}", "role", role, "content", text));
        continue;
    bad_msg:
        json_decref(out);
        return BAD(p, "%s must be an object", p);
    }
    json_object_set_new(params, "messages", out);
    return 0;
}

int oai_parse(enum oai_kind kind, const char *body, size_t len, struct oai_req *out,
              struct oai_error *err)
{
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    out->logprobs = -1;
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return BAD(NULL, "invalid JSON body at line %d column %d: %s", je.line, je.column, je.text);
    if (!json_is_object(o)) {
        json_decref(o);
        return BAD(NULL, "the request body must be a JSON object");
    }
    static const char *const common[] = {"model",
                                         "max_tokens",
                                         "temperature",
                                         "top_p",
                                         "seed",
                                         "stop",
                                         "stream",
                                         "stream_options",
                                         "n",
                                         "presence_penalty",
                                         "frequency_penalty",
                                         "user",
                                         "logit_bias",
                                         "top_k",
                                         "min_p",
                                         "repeat_penalty",
                                         "repeat_last_n",
                                         "logprobs",
                                         NULL};
    static const char *const compl_only[] = {"prompt", "echo", "best_of", "suffix", NULL};
    static const char *const chat_only[] = {"messages", "top_logprobs", "max_completion_tokens",
                                            NULL};
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        bool ok = false;
        for (const char *const *a = common; *a && !ok; a++)
            ok = !strcmp(*a, key);
        for (const char *const *a = kind == OAI_CHAT ? chat_only : compl_only; *a && !ok; a++)
            ok = !strcmp(*a, key);
        if (!ok) {
            BAD(key, "Unrecognized request argument supplied: %.64s", key);
            json_decref(o); /* key lives in o */
            return ST_EFORMAT;
        }
    }
    json_t *params = json_object();
    out->params = params;
    int rc = 0;
    json_t *model = json_object_get(o, "model");
    if (!model)
        rc = BAD("model", "'model' is a required property");
    else if (!json_is_string(model) || json_string_length(model) == 0 ||
             json_string_length(model) >= sizeof(out->model))
        rc = BAD("model", "'model' must be a string of 1 to %zu bytes", sizeof(out->model) - 1);
    else
        snprintf(out->model, sizeof(out->model), "%s", json_string_value(model));
    if (!rc) rc = check_type(o, "stream", JSON_TRUE, "a boolean", err);
    if (!rc) rc = check_type(o, "user", JSON_STRING, "a string", err);
    if (!rc) rc = check_type(o, "stream_options", JSON_OBJECT, "an object", err);
    if (!rc) rc = check_type(o, "logit_bias", JSON_OBJECT, "an object", err);
    if (!rc && field(o, "logit_bias") && json_object_size(field(o, "logit_bias")))
        rc = BAD("logit_bias", "'logit_bias' is not supported");
    if (!rc) {
        json_t *so = field(o, "stream_options");
        const char *k2;
        json_t *v2;
        json_object_foreach(so, k2, v2)
        {
            if (strcmp(k2, "include_usage") || !json_is_boolean(v2)) {
                rc = BAD("stream_options", "stream_options accepts only include_usage (boolean)");
                break;
            }
            out->include_usage = json_is_true(v2);
        }
    }
    if (!rc) {
        json_t *n = field(o, "n");
        if (n && (!json_is_integer(n) || json_integer_value(n) != 1))
            rc = BAD("n", "only n = 1 is supported");
    }
    out->stream = json_is_true(field(o, "stream"));
    json_object_set_new(params, "stream", json_boolean(out->stream));
    if (!rc) rc = copy_int(o, "max_tokens", "max_tokens", params, err);
    if (!rc) rc = copy_number(o, "temperature", "temperature", params, err);
    if (!rc) rc = copy_number(o, "top_p", "top_p", params, err);
    if (!rc) rc = copy_number(o, "min_p", "min_p", params, err);
    if (!rc) rc = copy_number(o, "repeat_penalty", "repeat_penalty", params, err);
    if (!rc) rc = copy_number(o, "presence_penalty", "presence_penalty", params, err);
    if (!rc) rc = copy_number(o, "frequency_penalty", "frequency_penalty", params, err);
    if (!rc) rc = copy_int(o, "top_k", "top_k", params, err);
    if (!rc) rc = copy_int(o, "repeat_last_n", "repeat_last_n", params, err);
    if (!rc) {
        json_t *seed = field(o, "seed");
        if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0))
            rc = BAD("seed", "'seed' must be an integer >= 0");
        else if (seed)
            json_object_set(params, "seed", seed);
    }
    if (!rc) rc = parse_stop(o, params, err);
    if (!rc && kind == OAI_COMPLETIONS) {
        json_t *p = field(o, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (!field(o, "prompt"))
            rc = BAD("prompt", "'prompt' is a required property");
        else if (!json_is_string(p))
            rc = BAD("prompt", "'prompt' must be a string or an array of one string");
        else
            json_object_set(params, "prompt", p);
        json_t *lp = field(o, "logprobs");
        if (!rc && lp) {
            if (!json_is_integer(lp) || json_integer_value(lp) < 0 || json_integer_value(lp) > 20)
                rc = BAD("logprobs", "'logprobs' must be an integer 0 to 20");
            else
                out->logprobs = (int)json_integer_value(lp);
        }
        json_t *echo = field(o, "echo"), *best = field(o, "best_of"), *suf = field(o, "suffix");
        if (!rc && echo && (!json_is_boolean(echo) || json_is_true(echo)))
            rc = BAD("echo", "'echo' is not supported");
        if (!rc && best && (!json_is_integer(best) || json_integer_value(best) != 1))
            rc = BAD("best_of", "only best_of = 1 is supported");
        if (!rc && suf && (!json_is_string(suf) || json_string_length(suf)))
            rc = BAD("suffix", "'suffix' is not supported");
    }
    if (!rc && kind == OAI_CHAT) {
        rc = parse_messages(o, params, err);
        json_t *lp = field(o, "logprobs"), *tlp = field(o, "top_logprobs");
        if (!rc && lp && !json_is_boolean(lp)) rc = BAD("logprobs", "'logprobs' must be a boolean");
        if (!rc && tlp &&
            (!json_is_integer(tlp) || json_integer_value(tlp) < 0 || json_integer_value(tlp) > 20))
            rc = BAD("top_logprobs", "'top_logprobs' must be an integer 0 to 20");
        if (!rc && tlp && !json_is_true(lp))
            rc = BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
        if (!rc && json_is_true(lp)) out->logprobs = tlp ? (int)json_integer_value(tlp) : 0;
        if (!rc && field(o, "max_completion_tokens") && !field(o, "max_tokens"))
            rc = copy_int(o, "max_completion_tokens", "max_tokens", params, err);
        else if (!rc)
            rc = check_type(o, "max_completion_tokens", JSON_INTEGER, "an integer", err);
    }
    if (!rc && out->logprobs >= 0) {
        json_object_set_new(params, "logprobs", json_true());
        json_object_set_new(params, "top_logprobs", json_integer(out->logprobs));
    }
    json_decref(o);
    if (rc) oai_req_clear(out);
    return rc;
}

void oai_error_from_frontend(const char *code, const char *message, struct oai_error *err)
{
    if (!code) code = "internal";
    if (!message) message = code;
    if (!strcmp(code, "busy"))
        oai_error_set(err, 429, "rate_limit_error", code, NULL, "%s", message);
    else if (!strcmp(code, "bad_request") || !strcmp(code, "unknown_field") ||
             !strcmp(code, "too_large") || !strcmp(code, "invalid_utf8"))
        oai_error_set(err, 400, "invalid_request_error", code, NULL, "%s", message);
    else if (!strcmp(code, "unavailable"))
        oai_error_set(err, 503, "server_error", code, NULL, "%s", message);
    else if (!strcmp(code, "timeout"))
        oai_error_set(err, 504, "server_error", code, NULL, "%s", message);
    else
        oai_error_set(err, 500, "server_error", code, NULL, "%s", message);
}

json_t *oai_error_json(const struct oai_error *e)
{
    json_t *code = e->code[0] ? json_string(e->code) : json_null();
    json_t *param = e->param[0] ? json_string(e->param) : json_null();
    return json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", e->message, "type", e->type,
                     "param", param, "code", code);
}

const char *oai_finish_reason(const char *f)
{
    if (f && (!strcmp(f, "stop") || !strcmp(f, "length"))) return f;
    return NULL;
}

/*
 * Token text is not part of the frontend's logprob entries (they carry token
 * ids); a chunk of one token gives its text, other tokens are written "#ID".
 */
static json_t *tok_name(json_int_t id, const char *text, size_t len, bool known)
{
    if (known) return json_stringn_nocheck(text, len);
    char buf[32];
    snprintf(buf, sizeof(buf), "#%lld", (long long)id);
    return json_string(buf);
}

static json_t *logprobs_json(const struct oai_req *r, const json_t *lp, const char *text,
                             size_t len, size_t text_offset)
{
    if (r->logprobs < 0) return json_null();
    size_t n = json_array_size(lp), i;
    bool one = n == 1 && text;
    json_t *e;
    if (r->kind == OAI_CHAT) {
        json_t *content = json_array();
        json_array_foreach(lp, i, e)
        {
            json_int_t id = json_integer_value(json_object_get(e, "token"));
            json_t *top = json_array(), *t;
            size_t k;
            json_array_foreach(json_object_get(e, "top"), k, t)
            {
                json_int_t tid = json_integer_value(json_object_get(t, "token"));
                json_array_append_new(top, json_pack("{s:o,s:O,s:I,s:n}", "token",
                                                     tok_name(tid, text, len, one && tid == id),
                                                     "logprob", json_object_get(t, "logprob"),
                                                     "token_id", tid, "bytes"));
            }
            json_array_append_new(content, json_pack("{s:o,s:O,s:I,s:n,s:o}", "token",
                                                     tok_name(id, text, len, one), "logprob",
                                                     json_object_get(e, "logprob"), "token_id", id,
                                                     "bytes", "top_logprobs", top));
        }
        return json_pack("{s:o}", "content", content);
    }
    json_t *tokens = json_array(), *tlp = json_array(), *top = json_array(), *off = json_array();
    json_array_foreach(lp, i, e)
    {
        json_int_t id = json_integer_value(json_object_get(e, "token"));
        json_array_append_new(tokens, tok_name(id, text, len, one));
        json_array_append(tlp, json_object_get(e, "logprob"));
        json_array_append_new(off, json_integer((json_int_t)text_offset));
        json_t *d = json_object(), *t;
        size_t k;
        json_array_foreach(json_object_get(e, "top"), k, t)
        {
            json_int_t tid = json_integer_value(json_object_get(t, "token"));
            json_t *name = tok_name(tid, text, len, one && tid == id);
            json_object_set(d, json_string_value(name), json_object_get(t, "logprob"));
            json_decref(name);
        }
        json_array_append_new(top, d);
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", tlp, "top_logprobs",
                     top, "text_offset", off);
}

json_t *oai_chunk(const struct oai_req *r, const char *oid, int64_t created, const char *text,
                  size_t len, bool first, const json_t *frontend_lp, size_t text_offset,
                  const char *finish)
{
    json_t *fr = finish ? json_string(finish) : json_null();
    json_t *lp = frontend_lp ? logprobs_json(r, frontend_lp, text, len, text_offset) : json_null();
    json_t *choice;
    if (r->kind == OAI_CHAT) {
        json_t *delta = json_object();
        if (first) json_object_set_new(delta, "role", json_string("assistant"));
        if (!finish || len) json_object_set_new(delta, "content", json_stringn_nocheck(text, len));
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "delta", delta, "logprobs", lp,
                           "finish_reason", fr);
    } else {
        choice = json_pack("{s:i,s:s%,s:o,s:o}", "index", 0, "text", text ? text : "", len,
                           "logprobs", lp, "finish_reason", fr);
    }
    return json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", oid, "object",
                     r->kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)created, "model", r->model, "choices", choice);
}

json_t *oai_usage(const json_t *final_msg)
{
    json_t *u = json_object_get(final_msg, "usage");
    json_int_t p = json_integer_value(json_object_get(u, "prompt_tokens"));
    json_int_t c = json_integer_value(json_object_get(u, "completion_tokens"));
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", p, "completion_tokens", c, "total_tokens",
                     p + c);
}

json_t *oai_usage_chunk(const struct oai_req *r, const char *oid, int64_t created,
                        const json_t *final_msg)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", oid, "object",
                     r->kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)created, "model", r->model, "choices", "usage",
                     oai_usage(final_msg));
}

json_t *oai_response(const struct oai_req *r, const char *oid, int64_t created,
                     const json_t *final_msg)
{
    json_t *jt = json_object_get(final_msg, "text");
    const char *text = json_is_string(jt) ? json_string_value(jt) : "";
    size_t len = json_is_string(jt) ? json_string_length(jt) : 0;
    const char *f =
        oai_finish_reason(json_string_value(json_object_get(final_msg, "finish_reason")));
    json_t *lp = json_object_get(final_msg, "logprobs");
    json_t *lpj = r->logprobs >= 0 && lp ? logprobs_json(r, lp, NULL, 0, 0) : json_null();
    json_t *choice;
    if (r->kind == OAI_CHAT)
        choice = json_pack("{s:i,s:{s:s,s:s%},s:o,s:s?}", "index", 0, "message", "role",
                           "assistant", "content", text, len, "logprobs", lpj, "finish_reason", f);
    else
        choice = json_pack("{s:i,s:s%,s:o,s:s?}", "index", 0, "text", text, len, "logprobs", lpj,
                           "finish_reason", f);
    return json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", oid, "object",
                     r->kind == OAI_CHAT ? "chat.completion" : "text_completion", "created",
                     (json_int_t)created, "model", r->model, "choices", choice, "usage",
                     oai_usage(final_msg));
}
