/*
 * `staged-worker serve [--config FILE]`: the served worker. Attaches the
 * loader's segment read-only (never the model file), maps the loader's GPU
 * copy when the backend is cuda and the loader exported one, builds the
 * backend and runs the serving loop (server.h). Waits for the loader's
 * segment if it is not there yet.
 *
 * With STAGED_STANDBY=1 (the supervisor's spare, [worker] standby) it gets
 * everything ready, runs one token through the backend (kernels loaded, the
 * one-token CUDA graph captured), reports STAGED_STANDBY_READY_FILE and waits
 * for SIGUSR1; then it checks that the loader is the one whose weights it
 * mapped, has the device copy verified, and serves.
 *
 * A worker whose loader restarted (its device copy is gone) exits with
 * WORKER_EXIT_REMAP (serve_main.h), which the supervisor does not count as
 * a failure.
 */
#include "gpu_worker/serve_main.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/ready.h"
#include "common/stage.h"
#include "conf/config.h"
#include "gpu_worker/backend.h"
#include "gpu_worker/cuda/cuda_backend.h"
#include "gpu_worker/registry.h"
#include "gpu_worker/server.h"
#include "loader/gpu_layout.h"
#include "shm/seg.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

/* The loader's device copy: its IPC handle and the loader's pid, from the
 * manifest. Returns 1 when the loader answered with a handle, 0 when it did
 * not (yet), ST_EUNSUPPORTED when its copy is in another device layout than
 * this worker's kernels read (a loader of another version). */
static int loader_gpu_handle(void *z, const struct staged_config *cfg, char *hex, size_t cap,
                             int *pid)
{
    json_t *req = json_pack("{s:s}", "op", "manifest");
    json_t *r = proto_request(z, cfg->loader.endpoint, req, 1000);
    json_decref(req);
    int ok = 0;
    json_t *gpu = json_object_get(r, "gpu");
    const char *h = json_string_value(json_object_get(gpu, "ipc_handle"));
    json_t *layout = json_object_get(gpu, "layout");
    if (h && !json_is_integer(layout)) {
        log_error("the loader's device copy of the weights does not say its layout; this worker "
                  "reads layout %d (restart the loader with this version of staged)",
                  GPU_LAYOUT_VERSION);
        ok = ST_EUNSUPPORTED;
    } else if (h && json_integer_value(layout) != GPU_LAYOUT_VERSION) {
        log_error("the loader's device copy of the weights has layout %lld; this worker reads "
                  "layout %d (restart the loader with this version of staged)",
                  (long long)json_integer_value(layout), GPU_LAYOUT_VERSION);
        ok = ST_EUNSUPPORTED;
    } else if (h && strlen(h) < cap) {
        snprintf(hex, cap, "%s", h);
        *pid = (int)json_integer_value(json_object_get(r, "pid"));
        ok = 1;
    }
    if (r) json_decref(r);
    return ok;
}

/* Ask the loader to verify its device copy against the segment's checksums
 * (and repair it from the segment): a crashed kernel may have written into
 * the weights. The segment itself is mapped read-only by every worker, so
 * its own re-hash (seconds for a 7B model) is skipped. */
static void loader_verify(void *z, const struct staged_config *cfg)
{
    json_t *req = json_pack("{s:s,s:b}", "op", "verify", "segment", 0);
    json_t *r = proto_request(z, cfg->loader.endpoint, req, 60000);
    json_decref(req);
    if (!r) {
        log_warn("the loader did not answer the weight verification");
        return;
    }
    json_t *err = json_object_get(r, "error");
    if (err) {
        log_warn("the loader refused the weight verification: %s",
                 json_string_value(json_object_get(err, "message")));
        json_decref(r);
        return;
    }
    log_info("weights verified by the loader: %zu bad in the segment, %zu bad on the device, "
             "%d repaired from the segment",
             json_array_size(json_object_get(r, "bad_segment")),
             json_array_size(json_object_get(r, "bad_device")),
             (int)json_integer_value(json_object_get(r, "repaired")));
    json_decref(r);
}

struct loader_watch {
    void *zctx;
    const struct staged_config *cfg;
    int pid; /* the loader whose device memory is mapped */
};

/* False once a different loader answers: its device copy is a new
 * allocation, so this worker must restart and map it. */
static bool loader_same(void *ctx)
{
    struct loader_watch *w = ctx;
    json_t *req = json_pack("{s:s}", "op", "health");
    json_t *r = proto_request(w->zctx, w->cfg->loader.endpoint, req, 200);
    json_decref(req);
    int pid = r ? (int)json_integer_value(json_object_get(r, "pid")) : 0;
    if (r) json_decref(r);
    if (pid && pid != w->pid) {
        log_warn("the loader restarted (pid %d -> %d): restarting to map its device copy", w->pid,
                 pid);
        return false;
    }
    return true;
}

static volatile sig_atomic_t g_take_over;

static void on_take_over(int sig)
{
    (void)sig;
    g_take_over = 1;
}

/* A standby's wait: one token through the backend first (lazy kernel loads,
 * graph capture), then the readiness report and SIGUSR1. Returns 0 to take
 * over, 1 when stopped first, or the warm-up's error. */
static int standby_wait(const struct backend_ops *ops, struct backend *b, int n_vocab)
{
    float *lg = malloc(sizeof(float) * (size_t)n_vocab);
    int32_t tok = 0, pos = 0, seq = 0;
    int8_t want = LOGITS_SUMMARY; /* as serving asks: the summary kernels load too */
    struct logits_top top;
    struct batch bt = {1, &tok, &pos, &seq, &want, &top};
    int rc = lg ? ops->forward(b, &bt, lg) : ST_ENOMEM;
    if (rc == 0) rc = ops->logits_row(b, 0, lg);
    free(lg);
    if (rc == 0) rc = ops->seq_truncate(b, 0, 0);
    if (rc) {
        log_error("standby: warm-up forward pass failed: %s", st_strerror(rc));
        return rc;
    }
    ready_signal_env("STAGED_STANDBY_READY_FILE");
    log_info("standby: ready to take over");
    while (!g_take_over && !stage_stop)
        usleep(500);
    if (stage_stop) return 1;
    log_info("standby: taking over");
    return 0;
}

int worker_serve_main(int argc, char **argv)
{
    const char *sb = getenv("STAGED_STANDBY");
    bool standby = sb && !strcmp(sb, "1");
    if (standby) signal(SIGUSR1, on_take_over); /* before anything: the default action kills */
    struct staged_config cfg;
    int rc = stage_init("worker", &argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    if (argc > 1) {
        fprintf(stderr, "usage: staged-worker serve [--config FILE] [--check-config]\n");
        return 2;
    }

    struct st_errbuf eb = {{0}};
    const struct backend_ops *ops = registry_find(cfg.worker.backend, &eb);
    if (!ops) {
        log_error("[worker] backend: %s", eb.msg);
        return 1;
    }
    if (!strcmp(cfg.worker.backend, "cuda") && cfg.worker.faults.fail_alloc_at > 0 &&
        fault_fire("a cudaMalloc of the worker fails")) {
        char n[32];
        snprintf(n, sizeof(n), "%lld", (long long)cfg.worker.faults.fail_alloc_at);
        setenv("STAGED_CUDA_FAIL_ALLOC", n, 1);
    }
    struct seg *seg = NULL;
    for (int tries = 0; !stage_stop; tries++) {
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
    bool remap = false; /* stopping because the loader restarted */
    struct loader_watch watch = {.zctx = zmq_ctx_new(), .cfg = &cfg};
    bool shared_gpu = !strcmp(cfg.worker.backend, "cuda") && !strcmp(cfg.loader.upload, "cuda");
    if (shared_gpu) {
        char hex[256];
        int got = 0;
        for (int tries = 0; !stage_stop && !(got = loader_gpu_handle(watch.zctx, &cfg, hex,
                                                                     sizeof(hex), &watch.pid));
             tries++)
            if (tries % 10 == 0) log_info("waiting for the loader's device copy of the weights");
        if (got < 0) rc = got;
        if (stage_stop || got < 0) goto out_seg;
        if (!standby) loader_verify(watch.zctx, &cfg);
        rc = cuda_ipc_open(hex, bc.device, &dev_map, &eb);
        if (rc) {
            log_error("cannot map the loader's device weights: %s", eb.msg);
            goto out_seg;
        }
        bc.dev_weights = dev_map;
        log_info("mapped the loader's device copy of the weights (0 bytes copied)");
    }
    struct backend *b = NULL;
    rc = ops->create(seg_model(seg), &bc, &b, &eb);
    if (rc) {
        log_error("backend %s: %s", ops->name, eb.msg);
        goto out_map;
    }
    if (standby) {
        rc = standby_wait(ops, b, (int)seg_model(seg)->hp.n_vocab);
        if (rc) {
            if (rc > 0) rc = 0; /* stopped while waiting */
            goto out_backend;
        }
        if (shared_gpu) {
            /* weights mapped from a loader that has since restarted are gone:
             * exit, the supervisor starts a fresh worker */
            if (!loader_same(&watch)) {
                remap = true;
                goto out_backend;
            }
            loader_verify(watch.zctx, &cfg);
        }
    }
    ready_signal();
    rc = server_run(&cfg, seg_model(seg), ops, b, shared_gpu ? loader_same : NULL, &watch,
                    &stage_stop);
    if (rc == ST_ESTATE) /* the loader restarted (loader_same) */
        remap = true;
    else if (rc)
        log_error("worker stops: %s", st_strerror(rc));
out_backend:
    ops->destroy(&b);
out_map:
    if (dev_map) cuda_ipc_close(dev_map);
out_seg:
    seg_detach(&seg);
    zmq_ctx_term(watch.zctx);
    return remap ? WORKER_EXIT_REMAP : rc ? 1 : 0;
}
