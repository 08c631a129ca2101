/*
 * serve_main.h - entry of `staged-worker serve` (serve_main.c), called by
 * the worker's main.c. Returns the process exit status.
 */
#ifndef STAGED_SERVE_MAIN_H
#define STAGED_SERVE_MAIN_H

/* The exit status of a worker that stopped because the loader restarted
 * (the device copy of the weights it mapped is gone): no failure, start it
 * again (scripts/staged does, without counting it; sysexits' EX_TEMPFAIL). */
#define WORKER_EXIT_REMAP 75

int worker_serve_main(int argc, char **argv);

#endif
