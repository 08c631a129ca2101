/*
 * test_metrics: the gateway's Prometheus exposition (http/metrics.h) against
 * the text format's rules (cumulative buckets, +Inf = _count, one sample per
 * line) and the frontend's stats reply as docs/protocol.md shows it.
 */
#include "http/metrics.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The value of the sample line starting with `series ` (must exist). */
static double sample(const char *text, const char *series)
{
    char pat[256];
    snprintf(pat, sizeof(pat), "\n%s ", series);
    const char *p = strstr(text, pat);
    if (!p) fail_msg("no sample %s in:\n%s", series, text);
    return strtod(p + strlen(pat), NULL);
}

static void test_render(void **state)
{
    (void)state;
    struct metrics m;
    metrics_init(&m);
    metrics_request(&m, "chat_completions", "stop");
    metrics_request(&m, "chat_completions", "stop");
    metrics_request(&m, "completions", "busy");
    metrics_tokens(&m, 5, 60);
    metrics_tokens(&m, 3, 4);
    metrics_ttft(&m, 0.004);        /* bucket le=0.005 */
    metrics_ttft(&m, 0.3);          /* le=0.5 */
    metrics_ttft(&m, 99.0);         /* +Inf only */
    metrics_per_token(&m, 0.01, 4); /* 4 x 0.0025: le=0.0025 */
    metrics_streams(&m, 1);
    json_t *stats = json_loads(
        "{\"type\": \"stats\", \"requests\": {\"stop\": 7, \"length\": 2, \"cancelled\": 1, "
        "\"error\": 0, \"busy\": 3}, \"tokens_in\": 40, \"tokens_out\": 400, \"queued\": 2, "
        "\"running\": 1, \"restarts\": {\"worker\": 4, \"tokenizer\": 0, \"loader\": 1}}",
        0, NULL);
    char *t = metrics_render(&m, stats);
    assert_non_null(t);
    assert_true(
        sample(t, "staged_http_requests_total{endpoint=\"chat_completions\",outcome=\"stop\"}") ==
        2);
    assert_true(
        sample(t, "staged_http_requests_total{endpoint=\"completions\",outcome=\"busy\"}") == 1);
    assert_true(sample(t, "staged_http_prompt_tokens_total") == 8);
    assert_true(sample(t, "staged_http_completion_tokens_total") == 64);
    assert_true(sample(t, "staged_http_open_responses") == 1);
    const char *h = "staged_http_time_to_first_token_seconds";
    char s[160];
    snprintf(s, sizeof(s), "%s_bucket{le=\"0.0025\"}", h);
    assert_true(sample(t, s) == 0);
    snprintf(s, sizeof(s), "%s_bucket{le=\"0.005\"}", h);
    assert_true(sample(t, s) == 1);
    snprintf(s, sizeof(s), "%s_bucket{le=\"0.5\"}", h);
    assert_true(sample(t, s) == 2);
    snprintf(s, sizeof(s), "%s_bucket{le=\"10\"}", h);
    assert_true(sample(t, s) == 2);
    snprintf(s, sizeof(s), "%s_bucket{le=\"+Inf\"}", h);
    assert_true(sample(t, s) == 3);
    snprintf(s, sizeof(s), "%s_count", h);
    assert_true(sample(t, s) == 3);
    snprintf(s, sizeof(s), "%s_sum", h);
    assert_true(sample(t, s) > 99.30 && sample(t, s) < 99.31);
    assert_true(sample(t, "staged_http_time_per_token_seconds_bucket{le=\"0.0025\"}") == 4);
    assert_true(sample(t, "staged_http_time_per_token_seconds_count") == 4);
    assert_true(sample(t, "staged_frontend_up") == 1);
    assert_true(sample(t, "staged_queue_depth") == 2);
    assert_true(sample(t, "staged_running_requests") == 1);
    assert_true(sample(t, "staged_frontend_requests_total{outcome=\"busy\"}") == 3);
    assert_true(sample(t, "staged_stage_restarts_total{stage=\"worker\"}") == 4);
    assert_true(sample(t, "staged_frontend_tokens_total{direction=\"out\"}") == 400);
    /* every line: a comment or NAME[{labels}] VALUE; every family has HELP and TYPE */
    for (char *line = t; *line;) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl); /* ends with a newline */
        if (line[0] == '#') {
            assert_true(!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7));
        } else {
            char *sp = memchr(line, ' ', (size_t)(nl - line));
            assert_non_null(sp);
            char *end;
            strtod(sp + 1, &end);
            assert_ptr_equal(end, nl);
            char fam[96], type[128];
            size_t k = strcspn(line, "{ ");
            snprintf(fam, sizeof(fam), "%.*s", (int)k, line);
            static const char *const sufs[] = {"_bucket", "_sum", "_count"};
            snprintf(type, sizeof(type), "\n# TYPE %s ", fam);
            for (size_t i = 0; i < 3 && !strstr(t, type); i++) {
                size_t fl = strlen(fam), sl = strlen(sufs[i]);
                if (fl > sl && !strcmp(fam + fl - sl, sufs[i]))
                    snprintf(type, sizeof(type), "\n# TYPE %.*s histogram", (int)(fl - sl), fam);
            }
            if (!strstr(t, type) && strncmp(t, type + 1, strlen(type) - 1))
                fail_msg("no TYPE line for %s", fam);
        }
        line = nl + 1;
    }
    free(t);
    t = metrics_render(&m, NULL);
    assert_true(sample(t, "staged_frontend_up") == 0);
    assert_null(strstr(t, "staged_queue_depth"));
    free(t);
    json_decref(stats);
    metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_render)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
