/*
 * serve_main.h - entry of `staged-worker serve` (serve_main.c), called by
 * the worker's main.c. Returns the process exit status.
 */
#ifndef STAGED_SERVE_MAIN_H
#define STAGED_SERVE_MAIN_H

int worker_serve_main(int argc, char **argv);

#endif
