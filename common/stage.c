#include "stage.h"

#include "common/log.h"

volatile sig_atomic_t stage_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    stage_stop = 1;
}

int stage_init(const char *name, int *argc, char **argv, struct staged_config *cfg)
{
    log_set_name(name);
    int rc = config_from_args(argc, argv, cfg);
    if (rc) return rc;
    enum log_level lvl;
    if (log_parse_level(cfg->log.level, &lvl)) log_min_level = lvl;
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}
