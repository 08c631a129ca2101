/*
 * test_openai: the gateway's OpenAI request validation and response shapes
 * (http/openai.h): field mapping to the staged protocol, a table of
 * handcrafted bad bodies (each must be a 400 naming the field), mutated
 * bodies that must never crash or leak, and the response/chunk/error objects
 * built from the frontend messages of docs/protocol.md.
 */
#include "http/openai.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static json_t *parse_ok(enum oai_kind kind, const char *body, struct oai_req *r)
{
    struct oai_error e = {0};
    int rc = oai_parse(kind, body, strlen(body), r, &e);
    if (rc) fail_msg("rejected %s: %s", body, e.message);
    return r->params;
}

static void test_completions_mapping(void **state)
{
    (void)state;
    struct oai_req r;
    json_t *p =
        parse_ok(OAI_COMPLETIONS,
                 "{\"model\":\"m\",\"prompt\":[\"Once\"],\"max_tokens\":12,\"temperature\":0,"
                 "\"top_p\":0.9,\"seed\":7,\"stop\":\"\\n\",\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true},\"n\":1,\"top_k\":5,"
                 "\"min_p\":0.1,\"repeat_penalty\":1.2,\"repeat_last_n\":32,"
                 "\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,\"user\":\"u\","
                 "\"logit_bias\":{},\"logprobs\":3,\"echo\":false,\"best_of\":1,"
                 "\"suffix\":null}",
                 &r);
    assert_string_equal(r.model, "m");
    assert_true(r.stream && r.include_usage);
    assert_int_equal(r.logprobs, 3);
    assert_string_equal(json_string_value(json_object_get(p, "prompt")), "Once");
    assert_int_equal(json_integer_value(json_object_get(p, "max_tokens")), 12);
    assert_int_equal(json_integer_value(json_object_get(p, "seed")), 7);
    assert_int_equal(json_integer_value(json_object_get(p, "top_k")), 5);
    assert_int_equal(json_integer_value(json_object_get(p, "repeat_last_n")), 32);
    assert_true(json_number_value(json_object_get(p, "temperature")) == 0.0);
    assert_true(json_number_value(json_object_get(p, "frequency_penalty")) == -0.5);
    json_t *stop = json_object_get(p, "stop");
    assert_int_equal(json_array_size(stop), 1);
    assert_string_equal(json_string_value(json_array_get(stop, 0)), "\n");
    assert_true(json_is_true(json_object_get(p, "stream")));
    assert_true(json_is_true(json_object_get(p, "logprobs")));
    assert_int_equal(json_integer_value(json_object_get(p, "top_logprobs")), 3);
    /* nothing the protocol does not know reaches the frontend */
    const char *key;
    json_t *v;
    static const char *const proto[] = {"prompt",
                                        "messages",
                                        "max_tokens",
                                        "stream",
                                        "seed",
                                        "temperature",
                                        "top_k",
                                        "top_p",
                                        "min_p",
                                        "repeat_penalty",
                                        "repeat_last_n",
                                        "presence_penalty",
                                        "frequency_penalty",
                                        "stop",
                                        "logprobs",
                                        "top_logprobs",
                                        NULL};
    json_object_foreach(p, key, v)
    {
        bool known = false;
        for (const char *const *k = proto; *k; k++)
            known |= !strcmp(*k, key);
        if (!known) fail_msg("field '%s' is not a protocol field", key);
    }
    oai_req_clear(&r);
    assert_null(r.params);
}

static void test_chat_mapping(void **state)
{
    (void)state;
    struct oai_req r;
    json_t *p = parse_ok(
        OAI_CHAT,
        "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"name\":\"ann\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},"
        "{\"type\":\"text\",\"text\":\"there\"}]},{\"role\":\"assistant\",\"content\":\"Yo\"}],"
        "\"max_completion_tokens\":9,\"logprobs\":true,\"top_logprobs\":2,\"stop\":[\"a\",\"b\"]}",
        &r);
    assert_false(r.stream);
    assert_int_equal(r.logprobs, 2);
    json_t *m = json_object_get(p, "messages");
    assert_int_equal(json_array_size(m), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(m, 0), "role")), "system");
    assert_string_equal(json_string_value(json_object_get(json_array_get(m, 1), "content")),
                        "Hi there");
    assert_null(json_object_get(json_array_get(m, 1), "name"));
    assert_int_equal(json_integer_value(json_object_get(p, "max_tokens")), 9);
    assert_int_equal(json_array_size(json_object_get(p, "stop")), 2);
    assert_null(json_object_get(p, "prompt"));
    oai_req_clear(&r);

    /* logprobs false and nulls are like absent */
    p = parse_ok(OAI_CHAT,
                 "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                 "\"logprobs\":false,\"seed\":null,\"stop\":null,\"stream\":null}",
                 &r);
    assert_int_equal(r.logprobs, -1);
    assert_null(json_object_get(p, "seed"));
    assert_null(json_object_get(p, "logprobs"));
    oai_req_clear(&r);
}

/* Handcrafted bad bodies: each is a 400 naming the field (NULL = no field). */
static void test_bad_bodies(void **state)
{
    (void)state;
    static const struct {
        enum oai_kind kind;
        const char *body, *param;
    } cases[] = {
        {OAI_COMPLETIONS, "", NULL},
        {OAI_COMPLETIONS, "{", NULL},
        {OAI_COMPLETIONS, "null", NULL},
        {OAI_COMPLETIONS, "[]", NULL},
        {OAI_COMPLETIONS, "\"x\"", NULL},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\"} trailing", NULL},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"model\":\"n\",\"prompt\":\"x\"}", NULL},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"\xff\xfe\"}", NULL},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"a\\u0000b\"}", NULL},
        {OAI_COMPLETIONS, "{\"prompt\":\"x\"}", "model"},
        {OAI_COMPLETIONS, "{\"model\":5,\"prompt\":\"x\"}", "model"},
        {OAI_COMPLETIONS, "{\"model\":\"\",\"prompt\":\"x\"}", "model"},
        {OAI_COMPLETIONS, "{\"model\":\"m\"}", "prompt"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[1,2,3]}", "prompt"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", "prompt"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":{}}", "prompt"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":\"9\"}", "max_tokens"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":true}", "temperature"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":[]}", "top_p"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"seed\":-1}", "seed"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"seed\":1.0}", "seed"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":5}", "stop"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[\"a\",null]}", "stop"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":1}", "stream"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"stream_options\":[]}",
         "stream_options"},
        {OAI_COMPLETIONS,
         "{\"model\":\"m\",\"prompt\":\"x\",\"stream_options\":{\"include_usage\":1}}",
         "stream_options"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"n\":2}", "n"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"logit_bias\":{\"5\":1}}",
         "logit_bias"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":21}", "logprobs"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":true}", "logprobs"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"echo\":true}", "echo"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"best_of\":2}", "best_of"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"suffix\":\"s\"}", "suffix"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"messages\":[]}", "messages"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"tools\":[]}", "tools"},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"user\":3}", "user"},
        {OAI_CHAT, "{\"model\":\"m\"}", "messages"},
        {OAI_CHAT, "{\"model\":\"m\",\"messages\":[]}", "messages"},
        {OAI_CHAT, "{\"model\":\"m\",\"messages\":{}}", "messages"},
        {OAI_CHAT, "{\"model\":\"m\",\"messages\":[5]}", "messages[0]"},
        {OAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", "messages[0]"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
         "{\"role\":\"tool\",\"content\":\"x\"}]}",
         "messages[1]"},
        {OAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "messages[0]"},
        {OAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":7}]}",
         "messages[0]"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}"
         "]}",
         "messages[0]"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}",
         "messages[0]"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"name\":1}]}",
         "messages[0]"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"top_logprobs\":2}",
         "top_logprobs"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"logprobs\":3}",
         "logprobs"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"max_completion_tokens\":\"a\"}",
         "max_completion_tokens"},
        {OAI_CHAT,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"prompt\":\"x\"}",
         "prompt"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct oai_req r;
        struct oai_error e;
        memset(&e, 0, sizeof(e));
        int rc = oai_parse(cases[i].kind, cases[i].body, strlen(cases[i].body), &r, &e);
        if (rc != ST_EFORMAT) fail_msg("case %zu accepted: %s", i, cases[i].body);
        assert_null(r.params);
        assert_int_equal(e.status, 400);
        assert_string_equal(e.type, "invalid_request_error");
        assert_true(strlen(e.message) > 0);
        if (strcmp(e.param, cases[i].param ? cases[i].param : ""))
            fail_msg("case %zu (%s): param '%s', want '%s' (%s)", i, cases[i].body, e.param,
                     cases[i].param ? cases[i].param : "", e.message);
    }
}

/* Deep nesting and byte-level mutations of a valid body: never a crash or a leak. */
static void test_mutations(void **state)
{
    (void)state;
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = 0;
    struct oai_req r;
    struct oai_error e;
    assert_int_equal(oai_parse(OAI_CHAT, deep, 2 * depth, &r, &e), ST_EFORMAT);
    free(deep);

    const char *base = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                       "\"text\",\"text\":\"hi\"}]}],\"stop\":[\"x\"],\"max_tokens\":5,"
                       "\"stream\":true,\"logprobs\":true,\"top_logprobs\":1}";
    size_t n = strlen(base);
    char buf[512];
    uint32_t x = 12345;
    int accepted = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, base, n);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            x = x * 1103515245u + 12345u;
            size_t pos = (x >> 8) % n;
            x = x * 1103515245u + 12345u;
            /* half the time printable ASCII, else any byte */
            buf[pos] = it % 2 ? (char)(32 + (x >> 16) % 95) : (char)(x >> 16);
        }
        size_t len = it % 7 == 0 ? (x >> 4) % n : n; /* sometimes truncated too */
        int rc = oai_parse(it % 4 < 2 ? OAI_CHAT : OAI_COMPLETIONS, buf, len, &r, &e);
        if (rc == 0) {
            accepted++;
            assert_non_null(r.params);
            oai_req_clear(&r);
        } else {
            assert_int_equal(rc, ST_EFORMAT);
            assert_true(e.message[0] != 0);
        }
    }
    assert_true(accepted > 0); /* some flips land in string contents */
}

/* The frontend's final message as docs/protocol.md shows it. */
static json_t *final_example(void)
{
    return json_loads("{\"type\": \"final\", \"id\": \"r1\", \"finish_reason\": \"stop\", "
                      "\"text\": \"Once upon...\", \"usage\": {\"prompt_tokens\": 5, "
                      "\"completion_tokens\": 60}, \"timings\": {\"queued_ms\": 1, \"ttft_ms\": "
                      "12, \"total_ms\": 140, \"decode_tok_s\": 430.0}}",
                      0, NULL);
}

static void test_responses(void **state)
{
    (void)state;
    struct oai_req r;
    parse_ok(OAI_CHAT, "{\"model\":\"mm\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             &r);
    json_t *fin = final_example();
    json_t *resp = oai_response(&r, "chatcmpl-1", 1700000000, fin);
    assert_string_equal(json_string_value(json_object_get(resp, "object")), "chat.completion");
    assert_string_equal(json_string_value(json_object_get(resp, "model")), "mm");
    assert_int_equal(json_integer_value(json_object_get(resp, "created")), 1700000000);
    json_t *c = json_array_get(json_object_get(resp, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c, "message"), "content")),
        "Once upon...");
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "message"), "role")),
                        "assistant");
    assert_true(json_is_null(json_object_get(c, "logprobs")));
    json_t *u = json_object_get(resp, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 65);
    json_decref(resp);

    /* chunks: the first chat delta carries the role, the finishing one an empty delta */
    json_t *ch = oai_chunk(&r, "chatcmpl-1", 1, "Once", 4, true, NULL, 0, NULL);
    c = json_array_get(json_object_get(ch, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "object")), "chat.completion.chunk");
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "delta"), "role")),
                        "assistant");
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "delta"), "content")),
                        "Once");
    assert_true(json_is_null(json_object_get(c, "finish_reason")));
    json_decref(ch);
    ch = oai_chunk(&r, "chatcmpl-1", 1, "", 0, false, NULL, 0, "length");
    c = json_array_get(json_object_get(ch, "choices"), 0);
    assert_int_equal(json_object_size(json_object_get(c, "delta")), 0);
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_decref(ch);
    ch = oai_usage_chunk(&r, "chatcmpl-1", 1, fin);
    assert_int_equal(json_array_size(json_object_get(ch, "choices")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(ch, "usage"), "prompt_tokens")), 5);
    json_decref(ch);
    oai_req_clear(&r);

    /* completions with logprobs: the protocol's entries (token ids) */
    parse_ok(OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":1}", &r);
    json_t *lp = json_loads("[{\"token\": 403, \"logprob\": -0.12, \"top\": [{\"token\": 403, "
                            "\"logprob\": -0.12}]}]",
                            0, NULL);
    ch = oai_chunk(&r, "cmpl-1", 1, "Once", 4, true, lp, 10, NULL);
    c = json_array_get(json_object_get(ch, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(ch, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(c, "text")), "Once");
    json_t *l = json_object_get(c, "logprobs");
    assert_string_equal(json_string_value(json_array_get(json_object_get(l, "tokens"), 0)),
                        "Once"); /* one token: its text is the chunk's */
    assert_true(json_real_value(json_array_get(json_object_get(l, "token_logprobs"), 0)) == -0.12);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(l, "text_offset"), 0)), 10);
    json_t *top = json_array_get(json_object_get(l, "top_logprobs"), 0);
    assert_true(json_real_value(json_object_get(top, "Once")) == -0.12);
    json_decref(ch);
    json_object_set_new(fin, "logprobs", lp);
    resp = oai_response(&r, "cmpl-1", 1, fin);
    l = json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "logprobs");
    assert_string_equal(json_string_value(json_array_get(json_object_get(l, "tokens"), 0)),
                        "#403"); /* no per-token text without a chunk */
    json_decref(resp);
    json_decref(fin);
    oai_req_clear(&r);
}

static void test_errors(void **state)
{
    (void)state;
    struct oai_error e;
    static const struct {
        const char *code;
        int status;
    } map[] = {{"busy", 429},      {"bad_request", 400},  {"unknown_field", 400},
               {"too_large", 400}, {"invalid_utf8", 400}, {"unavailable", 503},
               {"internal", 500},  {"duplicate_id", 500}, {NULL, 500}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        oai_error_from_frontend(map[i].code, "why", &e);
        assert_int_equal(e.status, map[i].status);
        json_t *j = oai_error_json(&e);
        json_t *o = json_object_get(j, "error");
        assert_int_equal(json_object_size(o), 4);
        assert_string_equal(json_string_value(json_object_get(o, "message")),
                            map[i].code ? "why" : "why");
        assert_true(json_is_null(json_object_get(o, "param")));
        assert_string_equal(json_string_value(json_object_get(o, "code")),
                            map[i].code ? map[i].code : "internal");
        json_decref(j);
    }
    assert_string_equal(oai_finish_reason("stop"), "stop");
    assert_string_equal(oai_finish_reason("length"), "length");
    assert_null(oai_finish_reason("cancelled"));
    assert_null(oai_finish_reason(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completions_mapping), cmocka_unit_test(test_chat_mapping),
        cmocka_unit_test(test_bad_bodies),          cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_responses),           cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
