/*
 * staged-http: the OpenAI-compatible HTTP gateway stage (http/gateway.h).
 *
 *   staged-http [--config FILE] [--check-config]
 * Listens on [http] listen and talks to the frontend at [frontend] endpoint.
 * Writes its pid to $STAGED_READY_FILE once listening (common/ready.h).
 * SIGTERM/SIGINT: stop listening, let requests in flight finish (up to
 * [supervisor] stop_timeout_ms, then they are cancelled), exit 0.
 */
#include "common/log.h"
#include "common/stage.h"
#include "common/ready.h"
#include "conf/config.h"
#include "http/gateway.h"

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct staged_config cfg;
    int rc = stage_init("http", &argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    if (argc > 1) {
        fprintf(stderr, "usage: staged-http [--config FILE] [--check-config]\n");
        return 2;
    }

    struct gw *g;
    struct st_errbuf eb = {{0}};
    if (gw_new(&cfg, &g, &eb)) {
        log_error("%s", eb.msg);
        return 1;
    }
    log_info("listening on %s (port %u), frontend %s", cfg.http.listen, (unsigned)gw_port(g),
             cfg.frontend.endpoint);
    if (ready_signal()) log_warn("could not write the readiness file");
    while (!stage_stop)
        usleep(50 * 1000);
    log_info("stopping: draining requests in flight (up to %lld ms)",
             (long long)cfg.supervisor.stop_timeout_ms);
    if (!gw_drain(g, cfg.supervisor.stop_timeout_ms))
        log_warn("requests still in flight after %lld ms: cancelling them",
                 (long long)cfg.supervisor.stop_timeout_ms);
    gw_destroy(&g);
    log_info("stopped");
    return 0;
}
