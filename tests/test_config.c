/* Tests of conf/config.c: defaults, conf/default.ini, and every kind of bad
 * INI input rejected with file:line, section and key. */
#include "conf/config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char tmp_path[64];

static int load_text(const char *text, struct staged_config *cfg, struct st_errbuf *eb)
{
    strcpy(tmp_path, "/tmp/staged-test-config-XXXXXX");
    int fd = mkstemp(tmp_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = config_load(tmp_path, cfg, eb);
    unlink(tmp_path);
    return rc;
}

static void expect_error(const char *text, int want_rc, const char *want_msg)
{
    struct staged_config cfg;
    struct st_errbuf eb = {{0}};
    int rc = load_text(text, &cfg, &eb);
    if (rc != want_rc || !strstr(eb.msg, want_msg))
        fail_msg("got rc %d msg '%s', want rc %d containing '%s'", rc, eb.msg, want_rc, want_msg);
}

static void test_default_ini(void **state)
{
    struct staged_config cfg;
    struct st_errbuf eb = {{0}};
    assert_int_equal(config_load("conf/default.ini", &cfg, &eb), 0);
    assert_string_equal(cfg.worker.backend, "cpu");
    assert_string_equal(cfg.shm.name, "/staged-model");
    assert_non_null(strstr(cfg.model.path, "/conf/../../shared/models/stories260K.gguf"));
    assert_true(cfg.model.path[0] == '/');
    assert_int_equal(cfg.worker.max_seqs, 64);
    assert_true(cfg.loader.verify_on_attach);
    assert_false(cfg.worker.faults.bad_kernel);
}

static void test_minimal(void **state)
{
    struct staged_config cfg;
    struct st_errbuf eb = {{0}};
    assert_int_equal(load_text("[model]\npath = /m.gguf\n[worker]\nthreads = 3\nbackend=cuda\n"
                               "[worker]\nfault_abort_at_step = 7\n", &cfg, &eb), 0);
    assert_string_equal(cfg.model.path, "/m.gguf");
    assert_int_equal(cfg.worker.threads, 3);
    assert_string_equal(cfg.worker.backend, "cuda");
    assert_int_equal(cfg.worker.faults.abort_at_step, 7);
    assert_int_equal(cfg.frontend.queue_limit, 256);
}

static void test_relative_path(void **state)
{
    struct staged_config cfg;
    struct st_errbuf eb = {{0}};
    assert_int_equal(load_text("[model]\npath = models/x.gguf\n", &cfg, &eb), 0);
    assert_string_equal(cfg.model.path, "/tmp/models/x.gguf");
}

static void test_errors(void **state)
{
    expect_error("[model]\npath=/m\n[bogus]\nx = 1\n", ST_EFORMAT, ":4: [bogus] unknown section");
    expect_error("[model]\npath=/m\n[worker]\nthreadz = 1\n", ST_EFORMAT,
                 ":4: [worker] threadz: unknown key");
    expect_error("[model]\npath=/m\n[worker]\nthreads = many\n", ST_EFORMAT,
                 ":4: [worker] threads: 'many' is not an integer");
    expect_error("[model]\npath=/m\n\n[worker]\nmax_seqs = 0\n", ST_ERANGE,
                 ":5: [worker] max_seqs: 0 is out of range [1, 4096]");
    expect_error("[model]\npath=/m\n[worker]\nbackend = tpu\n", ST_ERANGE,
                 ":4: [worker] backend: 'tpu' is not one of cpu|cuda");
    expect_error("[model]\npath=/m\n[loader]\nverify_on_attach = maybe\n", ST_EFORMAT,
                 ":4: [loader] verify_on_attach: 'maybe' is not a boolean");
    expect_error("[worker]\nthreads = 1\n", ST_ENOTFOUND, "[model] path: required key missing");
    expect_error("[model]\npath=/m\npath=/n\n", ST_EFORMAT, ":3: [model] path: set twice");
    expect_error("[model]\npath=/m\nthis line is not ini\n", ST_EFORMAT, ":3: syntax error");
    expect_error("[model]\npath=/m\n[shm]\nname = nope\n", ST_EFORMAT, "[shm] name");
    expect_error("[model]\npath=/m\n[worker]\nmax_ctx = 99999999999999999999999\n", ST_EFORMAT,
                 "[worker] max_ctx: '99999999999999999999999' is not an integer");
}

static void test_missing_file(void **state)
{
    struct staged_config cfg;
    struct st_errbuf eb = {{0}};
    assert_int_equal(config_load("/nonexistent/x.ini", &cfg, &eb), ST_EIO);
    assert_non_null(strstr(eb.msg, "/nonexistent/x.ini"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_ini), cmocka_unit_test(test_minimal),
        cmocka_unit_test(test_relative_path), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
