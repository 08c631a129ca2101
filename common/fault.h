/*
 * fault.h - injected faults fire once per deployment.
 *
 * When the supervisor sets STAGED_FAULT_MARK, a fault fires only if that file
 * does not exist yet, and creates it first, so the restarted stage runs
 * clean. Without the variable a fault fires in every run (a persistent
 * fault: the supervisor eventually marks the stage failed).
 */
#ifndef STAGED_FAULT_H
#define STAGED_FAULT_H

#include <stdbool.h>

/* True if the fault described by `what` fires now (logged as an error). */
bool fault_fire(const char *what);

#endif
