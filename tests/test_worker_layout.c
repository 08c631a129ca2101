/* A CUDA worker started against a loader whose device copy of the weights is
 * in another layout (loader/gpu_layout.h: GPU_LAYOUT_VERSION differs, or a
 * loader too old to say) refuses it: `staged-worker serve` exits 1 with an
 * error naming both versions, instead of mapping weights its kernels would
 * misread. The loader here is a fake on the config's endpoint that answers
 * the manifest request; the segment is staged by the test. Needs no GPU (the
 * worker stops before its first CUDA call); skips in builds without CUDA. */
#include "common/proto.h"
#include "loader/gpu_layout.h"
#include "loader/gpu_upload.h"
#include "shm/seg.h"

#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

static char g_dir[64], g_seg[64], g_endpoint[128];

struct fake_loader {
    void *zctx, *router;
    json_t *layout; /* the manifest's gpu.layout (NULL: left out) */
    volatile int stop;
    int manifests; /* manifest requests answered */
};

static void *fake_loader_main(void *arg)
{
    struct fake_loader *f = arg;
    char zeros[GPU_IPC_HEX_LEN + 1];
    memset(zeros, '0', GPU_IPC_HEX_LEN);
    zeros[GPU_IPC_HEX_LEN] = 0;
    while (!f->stop) {
        zmq_pollitem_t it = {f->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0) continue;
        struct proto_msg m;
        if (proto_recv(f->router, 1 << 20, &m) || !m.body) continue;
        const char *op = json_string_value(json_object_get(m.body, "op"));
        json_t *r;
        if (op && !strcmp(op, "manifest")) {
            json_t *gpu = json_pack("{s:i,s:s,s:I}", "device", 0, "ipc_handle", zeros, "size",
                                    (json_int_t)4096);
            if (f->layout) json_object_set(gpu, "layout", f->layout);
            r = json_pack("{s:b,s:i,s:o}", "ok", 1, "pid", (int)getpid(), "gpu", gpu);
            f->manifests++;
        } else {
            r = json_pack("{s:b}", "ok", 1);
        }
        proto_send(f->router, m.ident, m.ident_len, r);
        json_decref(r);
        proto_msg_clear(&m);
    }
    return NULL;
}

/* Run the worker against a fake loader whose manifest says `layout`; its exit
 * status and stderr (into err, cap bytes). */
static int run_worker(json_t *layout, char *err, size_t cap, int *manifests)
{
    struct fake_loader f = {.zctx = zmq_ctx_new(), .layout = layout};
    f.router = zmq_socket(f.zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(f.router, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_bind(f.router, g_endpoint), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fake_loader_main, &f), 0);

    char cfg[128], errpath[128], worker[256];
    snprintf(cfg, sizeof(cfg), "%s/staged.ini", g_dir);
    snprintf(errpath, sizeof(errpath), "%s/worker.err", g_dir);
    const char *bin = getenv("BIN");
    snprintf(worker, sizeof(worker), "%s/staged-worker", bin && *bin ? bin : "bin");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) dup2(fd, 2);
        execl(worker, worker, "serve", "--config", cfg, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    for (int i = 0; i < 400 && waitpid(pid, &st, WNOHANG) == 0; i++) /* up to 20 s */
        usleep(50000);
    if (waitpid(pid, &st, WNOHANG) == 0) { /* still waiting: the check did not fire */
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    f.stop = 1;
    pthread_join(th, NULL);
    zmq_close(f.router);
    zmq_ctx_term(f.zctx);
    *manifests = f.manifests;

    FILE *e = fopen(errpath, "r");
    size_t n = e ? fread(err, 1, cap - 1, e) : 0;
    err[n] = 0;
    if (e) fclose(e);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int setup(void **state)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/staged-layout-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_seg, sizeof(g_seg), "/staged-test-layout-%d", (int)getpid());
    snprintf(g_endpoint, sizeof(g_endpoint), "ipc://%s/loader.sock", g_dir);
    const char *m = getenv("STAGED_MODELS");
    char model[512];
    snprintf(model, sizeof(model), "%s/stories260K.gguf", m && *m ? m : "../shared/models");
    struct seg *s = NULL;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    seg_unlink(g_seg);
    if (seg_stage(g_seg, model, false, NULL, NULL, &s, &stats, &eb)) {
        fprintf(stderr, "seg_stage: %s\n", eb.msg);
        return -1;
    }
    seg_detach(&s);
    char cfg[128];
    snprintf(cfg, sizeof(cfg), "%s/staged.ini", g_dir);
    FILE *f = fopen(cfg, "w");
    if (!f) return -1;
    fprintf(f,
            "[model]\npath = %s\n[shm]\nname = %s\n[loader]\nendpoint = %s\nupload = cuda\n"
            "[worker]\nendpoint = ipc://%s/worker.sock\nbackend = cuda\nmax_ctx = 64\n"
            "max_seqs = 1\nmax_batch = 16\n",
            model, g_seg, g_endpoint, g_dir);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    seg_unlink(g_seg);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_other_layout_refused(void **state)
{
#ifndef STAGED_CUDA
    print_message("skipped: staged was built without CUDA\n");
    skip();
#endif
    char err[8192];
    int manifests = 0;
    json_t *older = json_integer(GPU_LAYOUT_VERSION - 1), *newer = json_integer(GPU_LAYOUT_VERSION + 1);
    json_t *cases[] = {older, newer, NULL}; /* NULL: a loader that does not report a layout */
    for (size_t c = 0; c < 3; c++) {
        int rc = run_worker(cases[c], err, sizeof(err), &manifests);
        print_message("layout %s: worker exit %d after %d manifest(s)\n",
                      cases[c] ? "reported" : "absent", rc, manifests);
        assert_int_equal(rc, 1);
        assert_true(manifests >= 1);
        char want[96];
        if (cases[c])
            snprintf(want, sizeof(want), "has layout %lld; this worker reads layout %d",
                     (long long)json_integer_value(cases[c]), GPU_LAYOUT_VERSION);
        else
            snprintf(want, sizeof(want), "does not say its layout; this worker reads layout %d",
                     GPU_LAYOUT_VERSION);
        if (!strstr(err, want)) print_message("stderr:\n%s\n", err);
        assert_non_null(strstr(err, want));
    }
    json_decref(older);
    json_decref(newer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_other_layout_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
