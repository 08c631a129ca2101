#include "ctl.h"

#include "common/gguf.h"
#include "common/log.h"
#include "common/proto.h"
#include "loader/gpu_layout.h"
#include "loader/gpu_upload.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

struct loader_ctl {
    const struct staged_config *cfg;
    struct seg *seg;
    struct seg_stats stats;
    void *zctx;
    void *router;
    int64_t start_ms;
    uint64_t n_requests;
    bool hang;
    struct gpu_weights *gpu; /* NULL unless [loader] upload = cuda */
};

static void hex64(uint64_t v, char out[17])
{
    snprintf(out, 17, "%016" PRIx64, v);
}

static json_t *health_json(struct loader_ctl *c)
{
    const struct seg_header *h = seg_header(c->seg);
    char gen[17];
    hex64(h->generation, gen);
    return json_pack("{s:b,s:s,s:s,s:i,s:I,s:s,s:s,s:b,s:I,s:f,s:b}", "ok", 1, "stage", "loader",
                     "state", "ready", "pid", (int)getpid(),
                     "uptime_ms", (json_int_t)(proto_now_ms() - c->start_ms), "segment",
                     c->cfg->shm.name, "generation", gen, "reattached", c->stats.reattached,
                     "file_bytes_read", (json_int_t)c->stats.file_bytes_read, "staging_seconds",
                     c->stats.seconds, "gpu_uploaded", c->gpu != NULL);
}

static json_t *manifest_json(struct loader_ctl *c)
{
    const struct seg_header *h = seg_header(c->seg);
    const struct model_hparams *hp = &h->hp;
    json_t *r = health_json(c);
    char hash[17];
    hex64(h->content_hash, hash);
    const char *name = c->cfg->model.name;
    if (!name[0]) {
        const char *slash = strrchr(h->source_path, '/');
        name = slash ? slash + 1 : h->source_path;
    }
    json_object_set_new(r, "model", json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b}",
        "name", name, "arch", model_arch_name(hp->arch), "n_vocab", hp->n_vocab,
        "n_ctx_train", hp->n_ctx_train, "dim", hp->dim, "n_layers", hp->n_layers,
        "n_heads", hp->n_heads, "n_kv_heads", hp->n_kv_heads, "head_dim", hp->head_dim,
        "ffn_dim", hp->ffn_dim, "rope_dim", hp->rope_dim, "rms_eps", (double)hp->rms_eps,
        "rope_base", (double)hp->rope_base, "tied_output", hp->tied_output != 0));
    json_object_set_new(r, "source", json_pack("{s:s,s:I,s:s}", "path", h->source_path, "size",
                                               (json_int_t)h->source.size, "content_hash", hash));
    json_t *arr = json_array();
    const struct seg_tensor *dir = seg_dir(c->seg);
    for (uint64_t i = 0; i < h->n_tensors; i++) {
        char ws[17];
        hex64(dir[i].wsum, ws);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:[I,I,I,I],s:I,s:I,s:s}", "name",
            dir[i].name, "type", ggml_type_name(dir[i].type), "ne", (json_int_t)dir[i].ne[0],
            (json_int_t)dir[i].ne[1], (json_int_t)dir[i].ne[2], (json_int_t)dir[i].ne[3], "offset",
            (json_int_t)dir[i].offset, "size", (json_int_t)dir[i].size, "wsum", ws));
    }
    json_object_set_new(r, "tensors", arr);
    if (c->gpu) {
        char handle[GPU_IPC_HEX_LEN + 1];
        gpu_upload_ipc_handle(c->gpu, handle);
        json_object_set_new(r, "gpu", json_pack("{s:i,s:s,s:I,s:i}", "device",
                                                (int)c->cfg->loader.device, "ipc_handle", handle,
                                                "size", (json_int_t)h->data_size, "layout",
                                                GPU_LAYOUT_VERSION));
    } else {
        json_object_set_new(r, "gpu", json_null());
    }
    return r;
}

/* Device copy against the segment's checksums (repairing it), and with
 * segment the segment's tensors against their checksums too. */
static json_t *verify_json(struct loader_ctl *c, bool segment)
{
    uint32_t bad[64];
    int n = segment ? seg_verify_tensors(c->seg, bad, 64) : 0;
    const struct seg_tensor *dir = seg_dir(c->seg);
    json_t *bs = json_array();
    for (int i = 0; i < n && i < 64; i++) json_array_append_new(bs, json_string(dir[bad[i]].name));
    json_t *bd = json_array();
    int repaired = 0;
    if (c->gpu) {
        int nb = gpu_upload_verify_repair(c->gpu, c->seg, bad, 64, &repaired);
        for (int i = 0; i < nb && i < 64; i++)
            json_array_append_new(bd, json_string(dir[bad[i]].name));
        if (nb) log_warn("verify: %d device tensors differed from the segment, %d repaired", nb,
                         repaired);
    }
    if (n) log_error("verify: %d tensors of the segment fail their checksum", n);
    return json_pack("{s:b,s:o,s:o,s:i}", "ok", n == 0, "bad_segment", bs, "bad_device", bd,
                     "repaired", repaired);
}

static void handle(struct loader_ctl *c, struct proto_msg *m)
{
    json_t *id = json_object_get(m->body, "id");
    json_t *op = json_object_get(m->body, "op");
    static const char *const allowed[] = {"id", "op", "proto", "hang", "segment", NULL};
    const char *unk = proto_unknown_key(m->body, allowed);
    if (unk) {
        proto_send_error(c->router, m->ident, m->ident_len, id, "unknown_field",
                         "unknown field '%s'", unk);
        return;
    }
    if (!json_is_string(op)) {
        proto_send_error(c->router, m->ident, m->ident_len, id, "bad_request",
                         "missing string field 'op'");
        return;
    }
    const char *o = json_string_value(op);
    json_t *r = NULL;
    if (!strcmp(o, "health")) r = health_json(c);
    else if (!strcmp(o, "manifest")) r = manifest_json(c);
    else if (!strcmp(o, "verify"))
        r = verify_json(c, !json_is_false(json_object_get(m->body, "segment")));
    else if (!strcmp(o, "fault")) {
        if (!c->cfg->loader.faults.allow_control) {
            proto_send_error(c->router, m->ident, m->ident_len, id, "forbidden",
                             "fault injection is not enabled on this loader");
            return;
        }
        c->hang = json_is_true(json_object_get(m->body, "hang"));
        r = json_pack("{s:b}", "ok", 1);
    } else {
        proto_send_error(c->router, m->ident, m->ident_len, id, "unknown_op", "unknown op '%s'", o);
        return;
    }
    if (id) json_object_set(r, "id", id);
    proto_send(c->router, m->ident, m->ident_len, r);
    json_decref(r);
}

int loader_ctl_new(const struct staged_config *cfg, struct seg *seg, const struct seg_stats *stats,
                   struct loader_ctl **out, struct st_errbuf *eb)
{
    struct loader_ctl *c = calloc(1, sizeof(*c));
    if (!c) return st_errf(eb, ST_ENOMEM, "out of memory");
    c->cfg = cfg;
    c->seg = seg;
    c->stats = *stats;
    c->start_ms = proto_now_ms();
    if (!strcmp(cfg->loader.upload, "cuda")) {
        const struct seg_header *h = seg_header(seg);
        /* through the staging ring main.c made at start-up (gpu_upload_init) */
        int rc = gpu_upload_create(seg_data(seg), h->data_size, (int)cfg->loader.device,
                                   &c->gpu, eb);
        if (!rc) rc = gpu_upload_group(c->gpu, seg, eb);
        if (rc) {
            gpu_upload_destroy(&c->gpu);
            free(c);
            return rc;
        }
        if (cfg->loader.faults.flip_weight_byte) gpu_upload_flip_byte(c->gpu, h->data_size / 2);
    }
    c->zctx = zmq_ctx_new();
    c->router = zmq_socket(c->zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(c->router, ZMQ_LINGER, &linger, sizeof(linger));
    if (zmq_bind(c->router, cfg->loader.endpoint) < 0) {
        int rc = st_errf(eb, ST_EIO, "[loader] endpoint %s: bind: %s", cfg->loader.endpoint,
                         zmq_strerror(zmq_errno()));
        loader_ctl_destroy(&c);
        return rc;
    }
    *out = c;
    return 0;
}

void loader_ctl_poll(struct loader_ctl *c, int timeout_ms)
{
    zmq_pollitem_t it = {.socket = c->router, .events = ZMQ_POLLIN};
    if (c->hang) {
        usleep((useconds_t)timeout_ms * 1000);
        return;
    }
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return;
    struct proto_msg m;
    while (proto_recv(c->router, 1 << 16, &m) == 0) {
        c->n_requests++;
        if (c->cfg->loader.faults.hang_at_request &&
            c->n_requests >= (uint64_t)c->cfg->loader.faults.hang_at_request)
            c->hang = true;
        if (m.body && !c->hang) handle(c, &m);
        proto_msg_clear(&m);
        if (zmq_poll(&it, 1, 0) <= 0) break;
    }
}

void loader_ctl_destroy(struct loader_ctl **cp)
{
    struct loader_ctl *c = *cp;
    if (!c) return;
    if (c->router) zmq_close(c->router);
    if (c->zctx) zmq_ctx_term(c->zctx);
    gpu_upload_destroy(&c->gpu);
    free(c);
    *cp = NULL;
}
