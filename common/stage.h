/*
 * stage.h - the start of every stage process (loader, tokenizer, worker,
 * frontend, http): name the log, load the configuration from the command
 * line (conf/config.h), apply [log] level, stop on SIGTERM/SIGINT, ignore
 * SIGPIPE.
 */
#ifndef STAGED_STAGE_H
#define STAGED_STAGE_H

#include "conf/config.h"

#include <signal.h>

/* Set to 1 by SIGTERM or SIGINT; the stage's loop checks it. */
extern volatile sig_atomic_t stage_stop;

/*
 * Returns like config_from_args: 0 to go on, 1 to exit 0 (--check-config,
 * --print-config), or a negative error already printed (exit non-zero).
 * name must be a static string.
 */
int stage_init(const char *name, int *argc, char **argv, struct staged_config *cfg);

#endif
