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
#include "common/stage.h"
#include "conf/config.h"
#include "frontend/fe.h"

#include <stdio.h>

int main(int argc, char **argv)
{
    struct staged_config cfg;
    int rc = stage_init("frontend", &argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    if (argc > 1) {
        fprintf(stderr, "usage: staged-frontend [--config FILE] [--check-config]\n");
        return 2;
    }

    struct fe *fe;
    struct st_errbuf eb = {{0}};
    if (fe_new(&cfg, &fe, &eb)) {
        log_error("%s", eb.msg);
        return 1;
    }
    log_info("serving clients on %s; workers connect on %s", cfg.frontend.endpoint,
             cfg.worker.endpoint);
    bool ready = false;
    while (!stage_stop) {
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
