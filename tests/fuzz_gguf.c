/* libFuzzer target for the GGUF reader: `make fuzz` (clang -fsanitize=fuzzer,
 * address,undefined), seeded with the bad-GGUF corpus (tests/bad-gguf/).
 *
 * For every input: parse; on success format every value, walk every string
 * array, read the hyperparameters and validate the tensors (as staged-gguf
 * does), then copy every metadata entry into a new file with the GGUF writer
 * and parse that: a file the reader accepted must round-trip. A crash, a
 * sanitizer report or a failed round trip is a finding. */
#include "common/gguf.h"
#include "common/gguf_write.h"
#include "common/model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void exercise(const struct gguf *g)
{
    char text[512];
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_format_value(g, (int64_t)i, text, sizeof(text));
        const struct gguf_kv *kv = &g->kv[i];
        if (kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING) {
            volatile uint64_t sum = 0;
            for (uint64_t j = 0; j < kv->arr_n; j++) {
                struct gguf_str s = gguf_arr_str(g, (int64_t)i, j);
                if (s.len) sum += (uint8_t)s.p[s.len - 1];
            }
        }
    }
    if (!gguf_is_vocab_only(g)) {
        struct model_hparams hp;
        struct st_errbuf eb;
        if (model_hparams_read(g, &hp, &eb) == 0) model_validate(g, &hp, &eb);
    }
}

static void round_trip(const struct gguf *g)
{
    struct gguf_writer *w = gguf_writer_new(3, 32);
    if (!w) return;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (gguf_writer_copy_kv(w, g, (int64_t)i)) __builtin_trap();
    uint8_t *buf;
    uint64_t len;
    if (gguf_writer_to_mem(w, &buf, &len) == 0) {
        struct gguf *g2;
        struct st_errbuf eb;
        if (gguf_parse(buf, len, len, &g2, &eb)) __builtin_trap();
        if (g2->n_kv != g->n_kv) __builtin_trap();
        gguf_destroy(&g2);
        free(buf);
    }
    gguf_writer_destroy(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exact-size copy so reads past the end are caught */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    struct gguf *g;
    struct st_errbuf eb;
    if (gguf_parse(buf, size, size, &g, &eb) == 0) {
        exercise(g);
        round_trip(g);
        gguf_destroy(&g);
    }
    free(buf);
    return 0;
}
