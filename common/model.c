#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *model_arch_name(uint32_t arch)
{
    switch (arch) {
    case ARCH_LLAMA: return "llama";
    case ARCH_QWEN2: return "qwen2";
    case ARCH_QWEN3: return "qwen3";
    }
    return "none";
}

static int need_u32(const struct gguf *g, const char *arch, const char *suffix, uint32_t *out,
                    bool required, uint32_t dflt, struct st_errbuf *eb)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int64_t i = gguf_find_key(g, key);
    if (i < 0) {
        if (required)
            return st_errf(eb, ST_EFORMAT, "metadata key '%s': required by architecture %s but missing",
                           key, arch);
        *out = dflt;
        return 0;
    }
    if (!gguf_get_u32(g, key, out) || *out == 0 || *out > (1u << 24))
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s' at byte %" PRIu64 ": must be an integer in 1..16777216",
                       key, g->kv[i].value_off);
    return 0;
}

static int need_f32(const struct gguf *g, const char *arch, const char *suffix, float *out,
                    bool required, float dflt, double lo, double hi, struct st_errbuf *eb)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int64_t i = gguf_find_key(g, key);
    double v;
    if (i < 0) {
        if (required)
            return st_errf(eb, ST_EFORMAT, "metadata key '%s': required by architecture %s but missing",
                           key, arch);
        *out = dflt;
        return 0;
    }
    if (!gguf_get_f64(g, key, &v) || !(v >= lo && v <= hi))
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s' at byte %" PRIu64 ": must be a float in [%g, %g]", key,
                       g->kv[i].value_off, lo, hi);
    *out = (float)v;
    return 0;
}

int model_hparams_read(const struct gguf *g, struct model_hparams *hp, struct st_errbuf *eb)
{
    memset(hp, 0, sizeof(*hp));
    if (gguf_is_vocab_only(g))
        return st_errf(eb, ST_ENOTFOUND, "vocab-only file: no tensors, nothing to serve");
    struct gguf_str a;
    if (!gguf_get_str(g, "general.architecture", &a))
        return st_errf(eb, ST_EFORMAT, "metadata key 'general.architecture': missing or not a string");
    /* compare the whole string: a name with an embedded NUL or a long tail
     * must not pass as "llama" */
    if (gguf_str_eq(a, "llama")) hp->arch = ARCH_LLAMA;
    else if (gguf_str_eq(a, "qwen2")) hp->arch = ARCH_QWEN2;
    else if (gguf_str_eq(a, "qwen3")) hp->arch = ARCH_QWEN3;
    else
        return st_errf(eb, ST_EUNSUPPORTED,
                       "metadata key 'general.architecture': architecture '%.*s' is not supported "
                       "(staged serves llama, qwen2, qwen3)",
                       (int)(a.len > 32 ? 32 : a.len), a.p);
    const char *arch = model_arch_name(hp->arch);

    int rc;
    if ((rc = need_u32(g, arch, "embedding_length", &hp->dim, true, 0, eb)) ||
        (rc = need_u32(g, arch, "block_count", &hp->n_layers, true, 0, eb)) ||
        (rc = need_u32(g, arch, "feed_forward_length", &hp->ffn_dim, true, 0, eb)) ||
        (rc = need_u32(g, arch, "attention.head_count", &hp->n_heads, true, 0, eb)) ||
        (rc = need_u32(g, arch, "attention.head_count_kv", &hp->n_kv_heads, false, hp->n_heads, eb)) ||
        (rc = need_u32(g, arch, "context_length", &hp->n_ctx_train, false, 2048, eb)) ||
        (rc = need_f32(g, arch, "attention.layer_norm_rms_epsilon", &hp->rms_eps, true, 0, 1e-12, 1e-1, eb)) ||
        (rc = need_f32(g, arch, "rope.freq_base", &hp->rope_base, false, 10000.0f, 1.0, 1e12, eb)))
        return rc;
    if (hp->n_layers > 1024)
        return st_errf(eb, ST_EFORMAT, "metadata key '%s.block_count': %u layers is more than 1024",
                       arch, hp->n_layers);
    if (hp->n_heads > hp->dim)
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s.attention.head_count': %u heads for embedding_length %u",
                       arch, hp->n_heads, hp->dim);
    uint32_t dflt_hd = hp->dim / hp->n_heads;
    if ((rc = need_u32(g, arch, "attention.key_length", &hp->head_dim, false, dflt_hd, eb)))
        return rc;
    if ((rc = need_u32(g, arch, "rope.dimension_count", &hp->rope_dim, false, hp->head_dim, eb)))
        return rc;
    if (hp->n_kv_heads > hp->n_heads || hp->n_heads % hp->n_kv_heads)
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s.attention.head_count_kv': %u does not divide head_count %u",
                       arch, hp->n_kv_heads, hp->n_heads);
    if (hp->head_dim % 2 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2)
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s.rope.dimension_count': %u must be even and at most the "
                       "head size %u", arch, hp->rope_dim, hp->head_dim);
    if (hp->arch == ARCH_LLAMA && hp->head_dim * hp->n_heads != hp->dim)
        return st_errf(eb, ST_EFORMAT,
                       "metadata key '%s.attention.head_count': %u heads do not divide "
                       "embedding_length %u", arch, hp->n_heads, hp->dim);
    hp->rope_kind = hp->arch == ARCH_LLAMA ? ROPE_NORMAL : ROPE_NEOX;

    int64_t te = gguf_find_tensor(g, "token_embd.weight");
    if (te < 0) return st_errf(eb, ST_EFORMAT, "tensor token_embd.weight: required but missing");
    if (g->tensors[te].ne[1] > UINT32_MAX / 2)
        return st_errf(eb, ST_EFORMAT, "tensor token_embd.weight: vocabulary too large");
    hp->n_vocab = (uint32_t)g->tensors[te].ne[1];
    hp->tied_output = gguf_find_tensor(g, "output.weight") < 0;
    hp->has_qkv_bias = gguf_find_tensor(g, "blk.0.attn_q.bias") >= 0;
    hp->has_qk_norm = gguf_find_tensor(g, "blk.0.attn_q_norm.weight") >= 0;
    if (hp->arch == ARCH_QWEN2) hp->has_qkv_bias = 1;
    if (hp->arch == ARCH_QWEN3) hp->has_qk_norm = 1;
    return 0;
}

/* Check one tensor: present (unless optional), shape ne0 x ne1 (ne1 = 0
 * for a vector), and vectors in F32. */
static int check_tensor(const struct gguf *g, const char *name, uint64_t ne0, uint64_t ne1,
                        bool optional, struct st_errbuf *eb)
{
    int64_t i = gguf_find_tensor(g, name);
    if (i < 0) {
        if (optional) return 0;
        return st_errf(eb, ST_EFORMAT, "tensor %s: required by the architecture but missing", name);
    }
    const struct gguf_tensor *t = &g->tensors[i];
    uint32_t want_dims = ne1 ? 2 : 1;
    bool ok = t->ne[0] == ne0 && t->ne[2] == 1 && t->ne[3] == 1 &&
              (ne1 ? t->ne[1] == ne1 : t->ne[1] == 1);
    if (!ok)
        return st_errf(eb, ST_EFORMAT,
                       "tensor %s (info at byte %" PRIu64 "): shape [%" PRIu64 ", %" PRIu64
                       ", %" PRIu64 ", %" PRIu64 "] but the hyperparameters need [%" PRIu64
                       ", %" PRIu64 "]",
                       name, t->info_off, t->ne[0], t->ne[1], t->ne[2], t->ne[3], ne0,
                       ne1 ? ne1 : 1);
    if (want_dims == 1 && t->type != GGML_TYPE_F32)
        return st_errf(eb, ST_EUNSUPPORTED,
                       "tensor %s (info at byte %" PRIu64 "): a vector must be F32, found %s", name,
                       t->info_off, ggml_type_name(t->type));
    return 0;
}

/* A tensor of a layer the hyperparameters do not have (blk.N with N >=
 * block_count) means block_count and the tensors disagree. */
static int check_layer_numbers(const struct gguf *g, const struct model_hparams *hp,
                               struct st_errbuf *eb)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        if (t->name.len < 5 || memcmp(t->name.p, "blk.", 4) != 0) continue;
        uint64_t layer = 0, k = 4;
        while (k < t->name.len && k < 12 && t->name.p[k] >= '0' && t->name.p[k] <= '9')
            layer = layer * 10 + (uint64_t)(t->name.p[k++] - '0');
        if (k == 4) continue;
        if (layer >= hp->n_layers)
            return st_errf(eb, ST_EFORMAT,
                           "tensor %.*s (info at byte %" PRIu64 "): layer %" PRIu64
                           " but %s.block_count is %u",
                           (int)t->name.len, t->name.p, t->info_off, layer,
                           model_arch_name(hp->arch), hp->n_layers);
    }
    return 0;
}

int model_validate(const struct gguf *g, const struct model_hparams *hp, struct st_errbuf *eb)
{
    uint64_t d = hp->dim, q = (uint64_t)hp->n_heads * hp->head_dim,
             kv = (uint64_t)hp->n_kv_heads * hp->head_dim, f = hp->ffn_dim, v = hp->n_vocab;
    int rc;
    if ((rc = check_tensor(g, "token_embd.weight", d, v, false, eb)) ||
        (rc = check_tensor(g, "output_norm.weight", d, 0, false, eb)) ||
        (rc = check_tensor(g, "output.weight", d, v, true, eb)))
        return rc;
    if ((rc = check_layer_numbers(g, hp, eb))) return rc;
    /* a token id the tokenizer can produce must have an embedding row */
    uint32_t et;
    uint64_t n_tok;
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok) && n_tok > hp->n_vocab)
        return st_errf(eb, ST_EFORMAT,
                       "metadata key 'tokenizer.ggml.tokens' at byte %" PRIu64 ": %" PRIu64
                       " tokens but token_embd.weight has %u rows",
                       g->kv[gguf_find_key(g, "tokenizer.ggml.tokens")].value_off, n_tok,
                       hp->n_vocab);
    for (uint32_t l = 0; l < hp->n_layers; l++) {
        struct {
            const char *suffix;
            uint64_t ne0, ne1;
            bool optional;
        } want[] = {
            {"attn_norm.weight", d, 0, false},  {"attn_q.weight", d, q, false},
            {"attn_k.weight", d, kv, false},    {"attn_v.weight", d, kv, false},
            {"attn_output.weight", q, d, false}, {"ffn_norm.weight", d, 0, false},
            {"ffn_gate.weight", d, f, false},   {"ffn_up.weight", d, f, false},
            {"ffn_down.weight", f, d, false},   {"attn_q.bias", q, 0, !hp->has_qkv_bias},
            {"attn_k.bias", kv, 0, !hp->has_qkv_bias}, {"attn_v.bias", kv, 0, !hp->has_qkv_bias},
            {"attn_q_norm.weight", hp->head_dim, 0, !hp->has_qk_norm},
            {"attn_k_norm.weight", hp->head_dim, 0, !hp->has_qk_norm},
        };
        for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
            char name[96];
            snprintf(name, sizeof(name), "blk.%u.%s", l, want[k].suffix);
            if ((rc = check_tensor(g, name, want[k].ne0, want[k].ne1, want[k].optional, eb)))
                return rc;
        }
    }
    return 0;
}

static int model_build(struct st_model *m, struct st_errbuf *eb)
{
    int rc = model_hparams_read(m->gguf, &m->hp, eb);
    if (rc == ST_ENOTFOUND && gguf_is_vocab_only(m->gguf)) {
        memset(&m->hp, 0, sizeof(m->hp));
        return 0;
    }
    if (rc) return rc;
    return model_validate(m->gguf, &m->hp, eb);
}

int model_open_mem(const uint8_t *hdr, uint64_t hdr_len, uint64_t file_size, const uint8_t *data,
                   struct st_model **out, struct st_errbuf *eb)
{
    *out = NULL;
    struct st_model *m = calloc(1, sizeof(*m));
    if (!m) return st_errf(eb, ST_ENOMEM, "out of memory");
    int rc = gguf_parse(hdr, hdr_len, file_size, &m->gguf, eb);
    if (rc) goto err;
    m->data = data;
    if ((rc = model_build(m, eb))) goto err;
    *out = m;
    return 0;
err:
    model_close(&m);
    return rc;
}

int model_open_file(const char *path, struct st_model **out, struct st_errbuf *eb)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return st_errf(eb, ST_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return st_errf(eb, ST_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return st_errf(eb, ST_EFORMAT, "%s: empty file", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return st_errf(eb, ST_EIO, "%s: mmap: %s", path, strerror(errno));
    struct st_model *m = calloc(1, sizeof(*m));
    if (!m) {
        munmap(map, (size_t)st.st_size);
        return st_errf(eb, ST_ENOMEM, "out of memory");
    }
    m->map = map;
    m->map_len = (uint64_t)st.st_size;
    int rc = gguf_parse(map, m->map_len, m->map_len, &m->gguf, eb);
    if (rc) goto err;
    m->data = (const uint8_t *)map + m->gguf->data_offset;
    if ((rc = model_build(m, eb))) goto err;
    *out = m;
    return 0;
err:
    model_close(&m);
    return rc;
}

void model_close(struct st_model **mp)
{
    struct st_model *m = *mp;
    if (!m) return;
    gguf_destroy(&m->gguf);
    if (m->map) munmap(m->map, m->map_len);
    free(m);
    *mp = NULL;
}

bool model_tensor(const struct st_model *m, const char *name, struct model_tensor *t)
{
    int64_t i = gguf_find_tensor(m->gguf, name);
    if (i < 0) return false;
    const struct gguf_tensor *gt = &m->gguf->tensors[i];
    t->data = m->data + gt->offset;
    t->type = gt->type;
    t->n_dims = gt->n_dims;
    memcpy(t->ne, gt->ne, sizeof(t->ne));
    t->size = gt->size;
    return true;
}

bool model_tensor_l(const struct st_model *m, uint32_t layer, const char *suffix,
                    struct model_tensor *t)
{
    char name[96];
    snprintf(name, sizeof(name), "blk.%u.%s", layer, suffix);
    return model_tensor(m, name, t);
}
