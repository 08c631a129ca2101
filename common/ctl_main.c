/*
 * staged-ctl [--config FILE] [--check-config] TARGET JSON [--timeout MS]:
 * send one request to a stage and print its reply. TARGET is an endpoint, or
 * a stage name (loader, tokenizer, frontend) looked up in the config. Exit 0
 * if the reply has no "error", 1 if it has, 2 on no reply within the timeout
 * (default 2000 ms). Used by scripts/staged and tests.
 */
#include "common/proto.h"
#include "conf/config.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

int main(int argc, char **argv)
{
    struct staged_config cfg;
    bool use_config;
    int crc = config_from_args_opt(&argc, argv, &cfg, &use_config);
    if (crc) return crc > 0 ? 0 : 2;
    int timeout = 2000;
    if (argc == 5 && !strcmp(argv[3], "--timeout")) timeout = atoi(argv[4]);
    else if (argc != 3) {
        fprintf(stderr, "usage: staged-ctl [--config FILE] ENDPOINT|STAGE JSON [--timeout MS]\n");
        return 2;
    }
    json_error_t err;
    json_t *req = json_loads(argv[2], 0, &err);
    if (!req) {
        fprintf(stderr, "staged-ctl: bad JSON: %s\n", err.text);
        return 2;
    }
    const char *ep = argv[1];
    if (!strchr(ep, ':')) {
        if (!use_config) {
            fprintf(stderr, "staged-ctl: stage name '%s' needs --config\n", ep);
            return 2;
        }
        ep = !strcmp(ep, "loader") ? cfg.loader.endpoint
             : !strcmp(ep, "tokenizer") ? cfg.tokenizer.endpoint
             : !strcmp(ep, "frontend") ? cfg.frontend.endpoint : NULL;
        if (!ep) {
            fprintf(stderr, "staged-ctl: unknown stage '%s' (loader, tokenizer, frontend)\n", argv[1]);
            return 2;
        }
    }
    void *z = zmq_ctx_new();
    json_t *r = proto_request(z, ep, req, timeout);
    json_decref(req);
    int rc = 2;
    if (r) {
        char *s = json_dumps(r, JSON_COMPACT);
        puts(s);
        free(s);
        rc = json_object_get(r, "error") ? 1 : 0;
        json_decref(r);
    } else {
        fprintf(stderr, "staged-ctl: no reply from %s within %d ms\n", ep, timeout);
    }
    zmq_ctx_term(z);
    return rc;
}
