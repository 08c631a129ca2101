/*
 * staged-frontend: the client-facing stage (docs/protocol.md). Routes each
 * request through the tokenizer, the worker and the tokenizer's streaming
 * decode, and carries requests across worker and tokenizer restarts.
 *
 *   staged-frontend [--config FILE] [--check-config]
 * SIGTERM/SIGINT: stop accepting, drain in-flight requests for up to
 * [supervisor] stop_timeout_ms, then exit 0.
 */
#include "common/log.h"
#include "common/proto.h"
#include "common/ready.h"
#include "conf/config.h"
#include "frontend/fe.h"

#include <signal.h>
#include <stdio.h>

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

int main(int argc, char **argv)
{
    struct staged_config cfg;
    log_set_name("frontend");
    int rc = config_from_args(&argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    if (argc > 1) {
        fprintf(stderr, "usage: staged-frontend [--config FILE] [--check-config]\n");
        return 2;
    }
    enum log_level lvl;
    if (log_parse_level(cfg.log.level, &lvl)) log_min_level = lvl;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct fe *fe;
    struct st_errbuf eb = {{0}};
    if (fe_new(&cfg, &fe, &eb)) {
        log_error("%s", eb.msg);
        return 1;
    }
    log_info("serving clients on %s; workers connect on %s", cfg.frontend.endpoint,
             cfg.worker.endpoint);
    bool ready = false;
    while (!stop_flag) {
        fe_poll(fe, 20);
        if (!ready && fe_ready(fe)) {
            ready = true;
            log_info("ready: every stage answers");
            ready_signal();
        }
    }
    log_info("draining");
    int64_t until = proto_now_ms() + cfg.supervisor.stop_timeout_ms;
    while (!fe_drain(fe) && proto_now_ms() < until) fe_poll(fe, 20);
    fe_destroy(&fe);
    log_info("stopped");
    return 0;
}
