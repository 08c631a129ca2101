/* staged-gguf FILE: print a GGUF file's metadata, tensor table and verdict.
 * Exit 0 only for a file staged can serve. */
#include "common/gguf.h"
#include "common/model.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: staged-gguf FILE.gguf\n");
        return 2;
    }
    struct st_errbuf eb = {{0}};
    struct st_model *m;
    int rc = model_open_file(argv[1], &m, &eb);
    if (rc) {
        printf("verdict: REJECTED: %s: %s\n", argv[1], eb.msg);
        return 1;
    }
    const struct gguf *g = m->gguf;
    printf("file: %s\nversion: %u\nalignment: %u\nmetadata: %" PRIu64 " keys\n", argv[1],
           g->version, g->alignment, g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        char val[512];
        gguf_format_value(g, (int64_t)i, val, sizeof(val));
        printf("  %-48.*s %-8s %s\n", (int)g->kv[i].key.len, g->kv[i].key.p,
               gguf_vtype_name(g->kv[i].type), val);
    }
    printf("tensors: %" PRIu64 " (data at byte %" PRIu64 ")\n", g->n_tensors, g->data_offset);
    uint64_t total = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        char shape[96];
        int o = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            o += snprintf(shape + o, sizeof(shape) - (size_t)o, "%s%" PRIu64, d ? " x " : "", t->ne[d]);
        printf("  %-40.*s %-5s %-24s offset %-12" PRIu64 " %" PRIu64 " bytes\n", (int)t->name.len,
               t->name.p, ggml_type_name(t->type), shape, t->offset, t->size);
        total += t->size;
    }
    if (gguf_is_vocab_only(g)) {
        printf("verdict: VOCAB-ONLY: tokenizer data only, no tensors (not servable as a model)\n");
        model_close(&m);
        return 1;
    }
    const struct model_hparams *hp = &m->hp;
    printf("model: %s, dim %u, %u layers, %u/%u heads (head %u), ffn %u, vocab %u, rope %s base %g, "
           "eps %g, %s output%s%s\n",
           model_arch_name(hp->arch), hp->dim, hp->n_layers, hp->n_heads, hp->n_kv_heads,
           hp->head_dim, hp->ffn_dim, hp->n_vocab, hp->rope_kind == ROPE_NEOX ? "neox" : "normal",
           hp->rope_base, hp->rms_eps, hp->tied_output ? "tied" : "untied",
           hp->has_qkv_bias ? ", qkv bias" : "", hp->has_qk_norm ? ", qk norm" : "");
    printf("verdict: OK: %" PRIu64 " tensor bytes, servable\n", total);
    model_close(&m);
    return 0;
}
