/* staged-gguf FILE: print a GGUF file's metadata (long arrays summarized),
 * tensor table and verdict. The verdict line is one of
 *   verdict: OK: ...            servable (exit 0)
 *   verdict: VOCAB-ONLY: ...    tokenizer data only (exit 1)
 *   verdict: REJECTED: FILE: why (exit 1)
 * A file that parses but fails the architecture checks still gets its
 * metadata and tensor table printed before the verdict. Exit 2: bad usage. */
#include "common/gguf.h"
#include "common/model.h"
#include "conf/config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void print_header(const char *path, const struct gguf *g)
{
    printf("file: %s\nversion: %u\nalignment: %u\nmetadata: %" PRIu64 " keys\n", path, g->version,
           g->alignment, g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        char val[512];
        gguf_format_value(g, (int64_t)i, val, sizeof(val));
        printf("  %-48.*s %-8s %s\n", (int)g->kv[i].key.len, g->kv[i].key.p,
               gguf_vtype_name(g->kv[i].type), val);
    }
    printf("tensors: %" PRIu64 " (data at byte %" PRIu64 ")\n", g->n_tensors, g->data_offset);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        char shape[96];
        int o = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            o += snprintf(shape + o, sizeof(shape) - (size_t)o, "%s%" PRIu64, d ? " x " : "",
                          t->ne[d]);
        printf("  %-40.*s %-5s %-24s offset %-12" PRIu64 " %" PRIu64 " bytes\n", (int)t->name.len,
               t->name.p, ggml_type_name(t->type), shape, t->offset, t->size);
    }
}

int main(int argc, char **argv)
{
    struct staged_config cfg;
    bool use_config;
    int crc = config_from_args_opt(&argc, argv, &cfg, &use_config);
    if (crc) return crc > 0 ? 0 : 2;
    if (argc > 2 || (argc == 2 && argv[1][0] == '-') || (argc == 1 && !use_config)) {
        fprintf(stderr, "usage: staged-gguf [--config FILE] [--check-config] [MODEL.gguf]\n");
        return 2;
    }
    const char *path = argc == 2 ? argv[1] : cfg.model.path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        printf("verdict: REJECTED: %s: %s\n", path,
               fd < 0 ? strerror(errno) : "not a regular, non-empty file");
        if (fd >= 0) close(fd);
        return 1;
    }
    uint64_t size = (uint64_t)st.st_size;
    const uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        printf("verdict: REJECTED: %s: mmap: %s\n", path, strerror(errno));
        return 1;
    }
    struct st_errbuf eb = {{0}};
    struct gguf *g;
    int rc = gguf_parse(map, size, size, &g, &eb);
    if (rc) {
        printf("verdict: REJECTED: %s: %s\n", path, eb.msg);
        munmap((void *)map, size);
        return 1;
    }
    print_header(path, g);
    uint64_t total = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) total += g->tensors[i].size;
    int status = 1;
    struct model_hparams hp;
    if (gguf_is_vocab_only(g)) {
        printf("verdict: VOCAB-ONLY: tokenizer data only, no tensors (not servable as a model)\n");
    } else if ((rc = model_hparams_read(g, &hp, &eb)) || (rc = model_validate(g, &hp, &eb))) {
        printf("verdict: REJECTED: %s: %s\n", path, eb.msg);
    } else {
        printf("model: %s, dim %u, %u layers, %u/%u heads (head %u), ffn %u, vocab %u, rope %s "
               "base %g, eps %g, %s output%s%s\n",
               model_arch_name(hp.arch), hp.dim, hp.n_layers, hp.n_heads, hp.n_kv_heads,
               hp.head_dim, hp.ffn_dim, hp.n_vocab, hp.rope_kind == ROPE_NEOX ? "neox" : "normal",
               hp.rope_base, hp.rms_eps, hp.tied_output ? "tied" : "untied",
               hp.has_qkv_bias ? ", qkv bias" : "", hp.has_qk_norm ? ", qk norm" : "");
        printf("verdict: OK: %" PRIu64 " tensor bytes, servable\n", total);
        status = 0;
    }
    gguf_destroy(&g);
    munmap((void *)map, size);
    return status;
}
