/*
 * `staged-worker serve [--config FILE]`: the served worker. Attaches the
 * loader's segment read-only (never the model file), maps the loader's GPU
 * copy when the backend is cuda and the loader exported one, builds the
 * backend and runs the serving loop (server.h). Waits for the loader's
 * segment if it is not there yet.
 */
#include "gpu_worker/serve_main.h"

#include "common/log.h"
#include "common/proto.h"
#include "common/ready.h"
#include "conf/config.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/cuda/cuda_backend.h"
#include "gpu_worker/server.h"
#include "shm/seg.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* The loader's device copy, if it exported one: the IPC handle from its
 * manifest. Returns true and fills hex when present. */
static bool loader_gpu_handle(const struct staged_config *cfg, char *hex, size_t cap)
{
    void *z = zmq_ctx_new();
    json_t *req = json_pack("{s:s}", "op", "manifest");
    json_t *r = proto_request(z, cfg->loader.endpoint, req, 2000);
    json_decref(req);
    bool ok = false;
    const char *h = json_string_value(json_object_get(json_object_get(r, "gpu"), "ipc_handle"));
    if (h && strlen(h) < cap) {
        snprintf(hex, cap, "%s", h);
        ok = true;
    }
    if (r) json_decref(r);
    zmq_ctx_term(z);
    return ok;
}

int worker_serve_main(int argc, char **argv)
{
    struct staged_config cfg;
    log_set_name("worker");
    int rc = config_from_args(&argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    if (argc > 1) {
        fprintf(stderr, "usage: staged-worker serve [--config FILE] [--check-config]\n");
        return 2;
    }
    enum log_level lvl;
    if (log_parse_level(cfg.log.level, &lvl)) log_min_level = lvl;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    const struct backend_ops *ops = !strcmp(cfg.worker.backend, "cuda") ? cuda_backend_ops()
                                                                        : &cpu_backend_ops;
    if (!ops) {
        log_error("[worker] backend = cuda, but this staged was built without CUDA");
        return 1;
    }
    struct seg *seg = NULL;
    struct st_errbuf eb = {{0}};
    for (int tries = 0; !stop_flag; tries++) {
        rc = seg_attach(cfg.shm.name, false, &seg, &eb);
        if (rc == 0) break;
        if (rc != ST_ENOTFOUND && rc != ST_ESTATE) {
            log_error("cannot attach the model segment: %s", eb.msg);
            return 1;
        }
        if (tries % 50 == 0) log_info("waiting for the loader's segment %s", cfg.shm.name);
        usleep(20000);
    }
    if (!seg) return 0;
    struct backend_config bc = {
        .n_threads = (int)cfg.worker.threads,
        .max_seqs = (int)cfg.worker.max_seqs,
        .max_ctx = (int)cfg.worker.max_ctx,
        .max_batch = (int)cfg.worker.max_batch,
        .device = (int)cfg.worker.device,
    };
    void *dev_map = NULL;
    char hex[256];
    if (!strcmp(cfg.worker.backend, "cuda") && loader_gpu_handle(&cfg, hex, sizeof(hex))) {
        rc = cuda_ipc_open(hex, bc.device, &dev_map, &eb);
        if (rc) {
            log_error("cannot map the loader's device weights: %s", eb.msg);
            seg_detach(&seg);
            return 1;
        }
        bc.dev_weights = dev_map;
        log_info("mapped the loader's device copy of the weights (0 bytes copied)");
    }
    struct backend *b = NULL;
    rc = ops->create(seg_model(seg), &bc, &b, &eb);
    if (rc) {
        log_error("backend %s: %s", ops->name, eb.msg);
        seg_detach(&seg);
        return 1;
    }
    ready_signal();
    rc = server_run(&cfg, seg_model(seg), ops, b, &stop_flag);
    ops->destroy(&b);
    if (dev_map) cuda_ipc_close(dev_map);
    seg_detach(&seg);
    if (rc) log_error("worker stops on error: %s", st_strerror(rc));
    return rc ? 1 : 0;
}
