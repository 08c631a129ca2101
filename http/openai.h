/*
 * openai.h - the OpenAI API shapes of the HTTP gateway: request validation
 * and translation into staged generate parameters (docs/protocol.md), and
 * the response, stream chunk and error objects built from frontend messages.
 * No I/O here; http/gateway.c does the HTTP side. docs/http.md lists every
 * field accepted.
 *
 * Requests (JSON bodies of POST /v1/completions and /v1/chat/completions):
 *   common:      model (string, required), max_tokens, temperature, top_p,
 *                seed (>= 0), stop (string or array of strings), stream,
 *                stream_options {include_usage}, n (only 1), presence_penalty,
 *                frequency_penalty, user, logit_bias (only empty), and the
 *                extensions top_k, min_p, repeat_penalty, repeat_last_n
 *   completions: prompt (string, or an array of one string), logprobs (int
 *                0..20: alternatives per token), echo (false), best_of (1),
 *                suffix (null or "")
 *   chat:        messages [{role: system|developer|user|assistant, content:
 *                string or [{type: "text", text}]}], logprobs (bool),
 *                top_logprobs (0..20), max_completion_tokens
 * null counts as absent. Anything else, a wrong type, or a missing required
 * field is a 400 "invalid_request_error" naming the field in "param".
 * Value ranges are checked by the frontend (its bad_request also maps to 400).
 */
#ifndef STAGED_OPENAI_H
#define STAGED_OPENAI_H

#include "common/err.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum oai_kind { OAI_COMPLETIONS, OAI_CHAT };

/* A validated request. */
struct oai_req {
    enum oai_kind kind;
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    int logprobs;       /* -1 = off, else alternatives per token (0..20) */
    char model[128];    /* as the client named it (echoed in responses) */
    json_t *params;     /* generate parameters for client_submit (owned) */
};

/* An error answer: HTTP status and the OpenAI error object's fields. */
struct oai_error {
    int status;       /* 400, 401, 404, 405, 429, 500, 503, 504 */
    const char *type; /* invalid_request_error | rate_limit_error | server_error | ... */
    char code[32];    /* "" = null */
    char param[64];   /* "" = null */
    char message[384];
};

/*
 * Parse and validate body. Returns 0 with *out filled (release with
 * oai_req_clear), or ST_EFORMAT with err filled (status 400).
 */
int oai_parse(enum oai_kind kind, const char *body, size_t len, struct oai_req *out,
              struct oai_error *err);
void oai_req_clear(struct oai_req *r);

/* Fill err. param and code may be NULL. Returns ST_EFORMAT for convenience. */
int oai_error_set(struct oai_error *err, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Map a frontend error code ("busy", "bad_request", ...) and message to an answer. */
void oai_error_from_frontend(const char *code, const char *message, struct oai_error *err);

/* {"error": {"message", "type", "param", "code"}} (new reference). */
json_t *oai_error_json(const struct oai_error *err);

/* The OpenAI finish_reason for a frontend one (stop, length; others -> NULL). */
const char *oai_finish_reason(const char *frontend_finish);

/*
 * One stream chunk object (new reference):
 *   completions: {"id","object":"text_completion","created","model",
 *                 "choices":[{"index":0,"text","logprobs","finish_reason"}]}
 *   chat:        {"id","object":"chat.completion.chunk","created","model",
 *                 "choices":[{"index":0,"delta":{["role":"assistant",]"content"},
 *                             "logprobs","finish_reason"}]}
 * finish may be NULL (more to come); with a finish the delta is empty (chat)
 * or the text "" (completions). frontend_lp is the chunk's "logprobs" array
 * (may be NULL); text_offset is the byte offset of text in the completion.
 */
json_t *oai_chunk(const struct oai_req *r, const char *oid, int64_t created, const char *text,
                  size_t len, bool first, const json_t *frontend_lp, size_t text_offset,
                  const char *finish);

/* The usage-only chunk of stream_options.include_usage (choices: []). */
json_t *oai_usage_chunk(const struct oai_req *r, const char *oid, int64_t created,
                        const json_t *final_msg);

/* The non-streaming response for the frontend's final message (new reference). */
json_t *oai_response(const struct oai_req *r, const char *oid, int64_t created,
                     const json_t *final_msg);

/* {"prompt_tokens","completion_tokens","total_tokens"} from a final message. */
json_t *oai_usage(const json_t *final_msg);

#endif
