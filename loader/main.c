/*
 * staged-loader: validate the GGUF file, stage it into the shared-memory
 * segment (or re-attach to an intact one without reading the file), upload
 * it to the GPU when configured, then serve the control endpoint until
 * SIGTERM/SIGINT. A clean shutdown unlinks the segment; a crash leaves it for
 * the next loader.
 *
 *   staged-loader [--config FILE] [--check-config] [--keep-segment]
 */
#include "common/log.h"
#include "common/ready.h"
#include "common/stage.h"
#include "conf/config.h"
#include "loader/ctl.h"
#include "loader/gpu_upload.h"
#include "shm/seg.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct progress {
    bool tty;
    int last_pct;
};

static void show_progress(uint64_t done, uint64_t total, void *ctx)
{
    struct progress *p = ctx;
    int pct = total ? (int)(done * 100 / total) : 100;
    if (p->tty) {
        fprintf(stderr, "\rstaging: %3d%% (%llu / %llu MiB)", pct,
                (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
        if (done == total) fputc('\n', stderr);
    } else if (pct / 25 != p->last_pct / 25 || done == total) {
        log_info("staging: %d%% (%llu of %llu bytes)", pct, (unsigned long long)done,
                 (unsigned long long)total);
    }
    p->last_pct = pct;
}

int main(int argc, char **argv)
{
    struct staged_config cfg;
    int rc = stage_init("loader", &argc, argv, &cfg);
    if (rc) return rc > 0 ? 0 : 1;
    bool keep_segment = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--keep-segment")) {
            keep_segment = true;
        } else {
            fprintf(stderr, "usage: staged-loader [--config FILE] [--check-config] [--keep-segment]\n");
            return 2;
        }
    }
    struct progress prog = {.tty = isatty(2), .last_pct = -1};
    struct seg *seg = NULL;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    /* The CUDA context and the staging ring are start-up costs, not upload
     * time: made before the model file is read. A failure is only logged
     * here; the upload (loader_ctl_new) tries again and reports it. */
    if (!strcmp(cfg.loader.upload, "cuda") && gpu_upload_init((int)cfg.loader.device, &eb))
        log_warn("%s; the upload will try again", eb.msg);
    rc = seg_stage(cfg.shm.name, cfg.model.path, cfg.loader.verify_on_attach, show_progress, &prog,
                   &seg, &stats, &eb);
    if (rc) {
        log_error("cannot stage %s: %s", cfg.model.path, eb.msg);
        gpu_upload_shutdown();
        return 1;
    }
    const struct seg_header *h = seg_header(seg);
    if (stats.reattached)
        log_info("re-attached segment %s (generation %llx) in %.3f s; model file bytes read: %llu",
                 cfg.shm.name, (unsigned long long)h->generation, stats.seconds,
                 (unsigned long long)stats.file_bytes_read);
    else
        log_info("staged %s into %s: %llu tensors, %.1f MiB in %.3f s (%.2f GB/s); file bytes "
                 "read: %llu",
                 cfg.model.path, cfg.shm.name, (unsigned long long)h->n_tensors,
                 h->data_size / 1048576.0, stats.seconds,
                 stats.seconds > 0 ? h->data_size / stats.seconds / 1e9 : 0.0,
                 (unsigned long long)stats.file_bytes_read);

    struct loader_ctl *ctl = NULL;
    rc = loader_ctl_new(&cfg, seg, &stats, &ctl, &eb);
    if (rc) {
        log_error("%s", eb.msg);
        seg_detach(&seg);
        gpu_upload_shutdown();
        return 1;
    }
    log_info("ready: serving control on %s", cfg.loader.endpoint);
    ready_signal();
    while (!stage_stop) loader_ctl_poll(ctl, 200);

    log_info("shutting down%s", keep_segment ? " (segment kept)" : ", unlinking the segment");
    loader_ctl_destroy(&ctl);
    seg_detach(&seg);
    if (!keep_segment) seg_unlink(cfg.shm.name);
    gpu_upload_shutdown();
    return 0;
}
