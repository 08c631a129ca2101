/* Tests of frontend/request.c: client request validation and stop strings. */
#include "conf/config.h"
#include "frontend/fe.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static struct staged_config cfg;

static const char *parse(const char *text, struct req **out, char *msg)
{
    json_t *m = json_loads(text, 0, NULL);
    assert_non_null(m);
    struct req *r = calloc(1, sizeof(*r));
    const char *code = req_parse(&cfg, m, r, msg, 256);
    json_decref(m);
    if (out && !code) *out = r;
    else req_free(r);
    return code;
}

static void expect(const char *text, const char *code, const char *sub)
{
    char msg[256] = "";
    const char *got = parse(text, NULL, msg);
    if (!got || strcmp(got, code) || !strstr(msg, sub))
        fail_msg("%s: got %s '%s', want %s containing '%s'", text, got ? got : "ok", msg, code, sub);
}

static void test_valid(void **state)
{
    struct req *r = NULL;
    char msg[256];
    assert_null(parse("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"hi\",\"max_tokens\":7,"
                      "\"temperature\":0,\"stop\":[\"x\",\"yz\"],\"seed\":5,\"logprobs\":true,"
                      "\"top_logprobs\":3}", &r, msg));
    assert_int_equal(r->max_tokens, 7);
    assert_int_equal(r->n_stop, 2);
    assert_int_equal(r->logprobs, 3);
    assert_true(r->stream);
    assert_string_equal(json_string_value(json_object_get(r->tok_req, "op")), "encode");
    assert_int_equal(json_integer_value(json_object_get(r->sampling, "seed")), 5);
    assert_true(json_number_value(json_object_get(r->sampling, "temperature")) == 0.0);
    req_free(r);
    assert_null(parse("{\"op\":\"generate\",\"id\":\"b\",\"messages\":[{\"role\":\"user\","
                      "\"content\":\"hi\"}],\"stream\":false}", &r, msg));
    assert_string_equal(json_string_value(json_object_get(r->tok_req, "op")), "chat");
    assert_false(r->stream);
    assert_int_equal(r->max_tokens, cfg.frontend.default_max_tokens);
    assert_int_equal(r->logprobs, -1);
    req_free(r);
}

static void test_invalid(void **state)
{
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"foo\":1}", "unknown_field", "'foo'");
    expect("{\"op\":\"generate\",\"id\":\"a\"}", "bad_request", "exactly one of");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"messages\":[]}", "bad_request",
           "exactly one of");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":1}", "bad_request", "must be a string");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"max_tokens\":0}", "bad_request",
           "max_tokens");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"max_tokens\":1.5}", "bad_request",
           "must be an integer");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"temperature\":-1}", "bad_request",
           "temperature");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"top_p\":0}", "bad_request", "top_p");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"stream\":1}", "bad_request",
           "true or false");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"stop\":\"s\"}", "bad_request",
           "'stop'");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"stop\":[\"\"]}", "bad_request",
           "stop[0]");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"top_logprobs\":2}", "bad_request",
           "needs 'logprobs'");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"messages\":[{\"role\":\"user\"}]}", "bad_request",
           "messages[0]");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\","
           "\"name\":\"n\"}]}", "unknown_field", "'name'");
    expect("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"proto\":2}", "bad_request", "proto");
    char *big = malloc(300000);
    memset(big, 'a', 299999);
    big[299999] = 0;
    char *txt = malloc(300100);
    snprintf(txt, 300100, "{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"%s\"}", big);
    expect(txt, "too_large", "limit");
    free(big);
    free(txt);
}

static void test_stop_strings(void **state)
{
    struct req *r = NULL;
    char msg[256];
    assert_null(parse("{\"op\":\"generate\",\"id\":\"a\",\"prompt\":\"x\",\"stop\":[\"END\",\"\\n\\n\"]}",
                      &r, msg));
    assert_int_equal(req_append_text(r, "hello EN", 8), 0);
    assert_int_equal(req_find_stop(r), -1);
    assert_int_equal(req_stop_holdback(r), 2); /* "EN" may begin "END" */
    assert_int_equal(req_append_text(r, "D more", 6), 0);
    /* the match spans the boundary of the new text */
    assert_int_equal(req_find_stop(r), 6);
    assert_int_equal(req_stop_holdback(r), 0);
    assert_int_equal(req_append_text(r, "\n", 1), 0);
    assert_int_equal(req_stop_holdback(r), 1);
    req_free(r);
}

int main(void)
{
    config_defaults(&cfg);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_valid), cmocka_unit_test(test_invalid),
                                       cmocka_unit_test(test_stop_strings)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
