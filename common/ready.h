/*
 * ready.h - readiness reporting to the supervisor (scripts/staged).
 *
 * A stage calls ready_signal() once it can serve. If the environment has
 * STAGED_READY_FILE, the stage's pid is written there (atomically, via a
 * rename); the supervisor marks the stage ready when the file names the pid it
 * started. Without the variable nothing happens.
 *
 * A standby worker (STAGED_STANDBY=1, see [worker] standby) reports that it
 * is started and waiting with ready_signal_env("STAGED_STANDBY_READY_FILE"),
 * and ready_signal() once it has taken over.
 */
#ifndef STAGED_READY_H
#define STAGED_READY_H

/* Returns 0, or ST_EIO if the file could not be written. */
int ready_signal(void);
/* The same into the file named by environment variable var. */
int ready_signal_env(const char *var);

#endif
