/*
 * ready.h - readiness reporting to the supervisor (scripts/staged).
 *
 * A stage calls ready_signal() once it can serve. If the environment has
 * STAGED_READY_FILE, the stage's pid is written there (atomically, via a
 * rename); the supervisor marks the stage ready when the file names the pid it
 * started. Without the variable nothing happens.
 */
#ifndef STAGED_READY_H
#define STAGED_READY_H

/* Returns 0, or ST_EIO if the file could not be written. */
int ready_signal(void);

#endif
