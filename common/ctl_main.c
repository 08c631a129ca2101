/*
 * staged-ctl ENDPOINT JSON [--timeout MS]: send one request to a stage and
 * print its reply. Exit 0 if the reply has no "error", 1 if it has, 2 on no
 * reply within the timeout (default 2000 ms). Used by scripts/staged and tests.
 */
#include "common/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

int main(int argc, char **argv)
{
    int timeout = 2000;
    if (argc == 5 && !strcmp(argv[3], "--timeout")) timeout = atoi(argv[4]);
    else if (argc != 3) {
        fprintf(stderr, "usage: staged-ctl ENDPOINT JSON [--timeout MS]\n");
        return 2;
    }
    json_error_t err;
    json_t *req = json_loads(argv[2], 0, &err);
    if (!req) {
        fprintf(stderr, "staged-ctl: bad JSON: %s\n", err.text);
        return 2;
    }
    void *z = zmq_ctx_new();
    json_t *r = proto_request(z, argv[1], req, timeout);
    json_decref(req);
    int rc = 2;
    if (r) {
        char *s = json_dumps(r, JSON_COMPACT);
        puts(s);
        free(s);
        rc = json_object_get(r, "error") ? 1 : 0;
        json_decref(r);
    } else {
        fprintf(stderr, "staged-ctl: no reply from %s within %d ms\n", argv[1], timeout);
    }
    zmq_ctx_term(z);
    return rc;
}
