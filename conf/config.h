/*
 * config.h - the deployment configuration: one INI file, parsed with inih.
 *
 * Every key is declared in a table in config.c (section, key, type, range,
 * default, required). Unknown sections or keys, values of the wrong type or
 * out of range and missing required keys are errors that name file:line,
 * the section and the key; config_load then fails and the program exits
 * non-zero before doing anything. conf/default.ini documents every key.
 *
 * Relative paths in the file ([model] path, [log] dir) are resolved against
 * the directory of the INI file.
 */
#ifndef STAGED_CONFIG_H
#define STAGED_CONFIG_H

#include "common/err.h"

#include <stdbool.h>
#include <stdint.h>

#define CONF_STR 256

struct conf_faults {
    int64_t abort_at_step;     /* worker: abort() at decode step N (0 = off) */
    int64_t fail_alloc_at;     /* fail the N-th allocation (malloc / cudaMalloc) (0 = off) */
    int64_t hang_at_request;   /* stop answering (hang) at the N-th request (0 = off) */
    bool bad_kernel;           /* cuda worker: launch a kernel that writes to an invalid address */
    bool flip_weight_byte;     /* loader: flip one byte of a device weight after upload */
    bool allow_control;        /* accept fault switches through the control message */
};

struct staged_config {
    char path[CONF_STR]; /* the INI file this came from ("" = defaults) */
    struct {
        char path[CONF_STR]; /* GGUF file (required) */
        char name[128];      /* model name reported to clients ("" = file name) */
    } model;
    struct {
        char name[128];      /* POSIX shm name, starts with '/' */
    } shm;
    struct {
        char level[16];      /* debug | info | warn | error */
        char dir[CONF_STR];  /* per-stage log files (scripts/staged); "" = stderr */
    } log;
    struct {
        char endpoint[CONF_STR];
        char upload[8];      /* none | cuda: upload weights to the GPU and export IPC handles */
        int64_t device;
        bool verify_on_attach; /* re-hash every tensor when attaching to an existing segment */
        struct conf_faults faults;
    } loader;
    struct {
        char endpoint[CONF_STR];
        int64_t threads;
        int64_t max_request_bytes;
        struct conf_faults faults;
    } tokenizer;
    struct {
        char endpoint[CONF_STR];
        char backend[8];     /* cpu | cuda */
        int64_t threads;     /* 0 = all cores */
        int64_t max_seqs;    /* sequences decoding together */
        int64_t max_ctx;     /* positions per sequence */
        int64_t max_batch;   /* tokens per forward pass */
        int64_t device;
        bool deterministic;  /* batches split so that results never depend on batch mates */
        bool standby;        /* the supervisor keeps a started spare worker to take over */
        struct conf_faults faults;
    } worker;
    struct {
        char endpoint[CONF_STR];       /* client-facing ROUTER */
        int64_t queue_limit;           /* requests waiting or running before BUSY */
        int64_t max_prompt_bytes;
        int64_t max_tokens_limit;      /* upper bound on a request's max_tokens */
        int64_t default_max_tokens;
        int64_t request_timeout_ms;    /* default deadline (0 = none) */
        int64_t heartbeat_ms;          /* stage heartbeat period */
        int64_t stage_timeout_ms;      /* a stage silent this long is dead */
        struct conf_faults faults;
    } frontend;
    struct {
        char listen[64];               /* address:port of the HTTP gateway */
        char api_keys[CONF_STR];       /* comma-separated Bearer keys ("" = none) */
        int64_t max_body_bytes;
        int64_t threads;
        bool enabled;                  /* scripts/staged starts the gateway */
    } http;
    struct {
        int64_t max_restarts;          /* quick failures before a stage is marked failed */
        int64_t backoff_ms;            /* first restart delay, doubled up to backoff_max_ms */
        int64_t backoff_max_ms;
        int64_t stop_timeout_ms;       /* drain time before SIGKILL */
    } supervisor;
};

/* Fill cfg with the defaults of every key (model.path stays empty). */
void config_defaults(struct staged_config *cfg);

/*
 * Load path over the defaults. Returns 0, or ST_EIO / ST_EFORMAT / ST_ERANGE /
 * ST_ENOTFOUND with eb = "FILE:LINE: [section] key: what is wrong".
 */
int config_load(const char *path, struct staged_config *cfg, struct st_errbuf *eb);

/*
 * The common command-line handling of every program: scans argv for
 * `--config FILE` and `--check-config` (removing them from argv), loads the
 * file (default: $STAGED_CONFIG, else conf/default.ini), and for
 * --check-config prints "config OK: FILE" and returns 1 (caller exits 0).
 * `--print-config` prints the effective configuration as INI and returns 1.
 * Returns 0 to go on, 1 to exit 0, or a negative error after printing it to
 * stderr (caller exits non-zero).
 */
int config_from_args(int *argc, char **argv, struct staged_config *cfg);

/*
 * For tools that work without a config: like config_from_args, but only when
 * argv names --config, --check-config or --print-config; *loaded says whether
 * cfg was filled. Same return values.
 */
int config_from_args_opt(int *argc, char **argv, struct staged_config *cfg, bool *loaded);

/* Print the effective configuration as INI (for --check-config -v and logs). */
void config_print(const struct staged_config *cfg, void *file /* FILE * */);

#endif
