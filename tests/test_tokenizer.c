/*
 * test_tokenizer: the tokenizer library against references nobody here wrote:
 * llama.cpp's tokenizer test vectors (vocab/ggml-vocab-*.gguf.inp/.out), the
 * stories260K prompt ids, the chat templates in models/templates (and inside
 * the vocab GGUFs), plus round trips and streaming decode.
 * Models come from $STAGED_MODELS (default ../shared/models).
 */
#include "common/gguf_write.h"
#include "common/model.h"
#include "tokenizer/chat.h"
#include "tokenizer/detok.h"
#include "tokenizer/vocab.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

/*
 * Allocation fault injection: the test links with -Wl,--wrap=malloc,calloc,
 * realloc, so every allocation made by staged code goes through these. When
 * fail_at is N > 0, the N-th allocation from then on returns NULL.
 */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
static long fail_at, n_allocs;

static bool fail_now(void)
{
    return fail_at > 0 && ++n_allocs == fail_at;
}
void *__wrap_malloc(size_t n)
{
    return fail_now() ? NULL : __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m)
{
    return fail_now() ? NULL : __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n)
{
    return fail_now() ? NULL : __real_realloc(p, n);
}
static void fail_alloc(long n)
{
    fail_at = n;
    n_allocs = 0;
}

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
        for (char *t = strtok(line, " "); t; t = strtok(NULL, " "))
            want[nw++] = atoi(t);
        int32_t *ids;
        size_t ni;
        assert_int_equal(tok_encode(l.v, str[i], len[i], false, false, &ids, &ni), 0);
        bool same = ni == nw && (ni == 0 || !memcmp(ids, want, ni * 4));
        if (!same) {
            bad++;
            fprintf(stderr, "%s case %zu \"%.*s\": got", name, i, (int)len[i], str[i]);
            for (size_t k = 0; k < ni; k++)
                fprintf(stderr, " %d", ids[k]);
            fprintf(stderr, "\n  want");
            for (size_t k = 0; k < nw; k++)
                fprintf(stderr, " %d", want[k]);
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

/* stories260K: the reference ids for BOS + "Once upon a time". */
static void test_stories_prompt(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("stories260K.gguf", &l);
    const char *text = "Once upon a time";
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(l.v, text, strlen(text), true, false, &ids, &n), 0);
    int32_t want[] = {1, 403, 407, 261, 378};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof(want));
    /* whole-text decode from BOS removes the space the encoder put in front */
    struct tok_buf t = {0};
    assert_int_equal(detok_decode(l.v, ids, n, true, &t), 0);
    assert_string_equal(t.p, text);
    tok_buf_free(&t);
    /* generated continuation keeps its leading space (streaming) */
    struct detok d = {{0}, 0};
    assert_int_equal(detok_feed(l.v, &d, ids + 2, 1, false, &t), 0);
    assert_string_equal(t.p, " upon");
    tok_buf_free(&t);
    free(ids);
    assert_true(vocab_is_eog(l.v, 2));
    assert_false(vocab_is_eog(l.v, 1));
    unload(&l);
}

/* SPM flags: add_bos puts BOS first and the rest equals the no-BOS encoding;
 * the space marker ▁ and the leading space; byte fallback for a character
 * without a token; pieces decode ▁ and <0xXX>. */
static void test_spm_details(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-llama-spm.gguf", &l);
    assert_true(vocab_add_bos(l.v));
    assert_false(vocab_add_eos(l.v));
    const char *text = "Hello world";
    int32_t *a, *b;
    size_t na, nb;
    assert_int_equal(tok_encode(l.v, text, strlen(text), true, false, &a, &na), 0);
    assert_int_equal(tok_encode(l.v, text, strlen(text), false, false, &b, &nb), 0);
    assert_int_equal(na, nb + 1);
    assert_int_equal(a[0], vocab_bos(l.v));
    assert_memory_equal(a + 1, b, nb * sizeof(*b));
    /* the first token carries the ▁ of the added leading space */
    size_t tl;
    const char *tt = vocab_token_text(l.v, b[0], &tl);
    assert_true(tl >= 3 && !memcmp(tt, "\xe2\x96\x81", 3));
    char piece[64];
    int pl = tok_token_piece(l.v, b[0], false, piece, sizeof(piece));
    assert_true(pl > 0 && piece[0] == ' ');
    free(a);
    free(b);
    /* U+10348 has no token in the Llama 2 vocab: four byte tokens <0xF0><0x90><0x8D><0x88> */
    const char *goth = "\xf0\x90\x8d\x88";
    assert_int_equal(tok_encode(l.v, goth, 4, false, false, &a, &na), 0);
    assert_int_equal(na, 5); /* "▁" then 4 bytes */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(vocab_token_type(l.v, a[1 + i]), TOKTYPE_BYTE);
        assert_int_equal(tok_token_piece(l.v, a[1 + i], false, piece, sizeof(piece)), 1);
        assert_int_equal((uint8_t)piece[0], (uint8_t)goth[i]);
    }
    free(a);
    /* control tokens: "<s>" in user text is text, with parse_special it is BOS */
    assert_int_equal(tok_encode(l.v, "<s>x", 4, false, false, &a, &na), 0);
    for (size_t i = 0; i < na; i++)
        assert_int_not_equal(a[i], vocab_bos(l.v));
    free(a);
    assert_int_equal(tok_encode(l.v, "<s>x", 4, false, true, &a, &na), 0);
    assert_int_equal(a[0], vocab_bos(l.v));
    free(a);
    unload(&l);
}

/* A handcrafted SPM vocab with no byte tokens: unknown characters become
 * <unk>, add_eos appends EOS, add_space_prefix=false drops the leading ▁. */
static int craft_spm(bool add_eos, bool space_prefix, struct gguf **g, uint8_t **buf)
{
    static const char *const toks[] = {"<unk>",
                                       "<s>",
                                       "</s>",
                                       "\xe2\x96\x81",
                                       "a",
                                       "b",
                                       "\xe2\x96\x81"
                                       "a",
                                       "ab",
                                       "\xe2\x96\x81"
                                       "ab"};
    float scores[] = {0, 0, 0, -5, -3, -3, -2, -1, -0.5f};
    int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1};
    struct gguf_writer *w = gguf_writer_new(3, 32);
    assert_non_null(w);
    assert_int_equal(gguf_writer_add_str(w, "tokenizer.ggml.model", "llama"), 0);
    assert_int_equal(gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 9), 0);
    assert_int_equal(gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_F32, scores, 9), 0);
    assert_int_equal(gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types, 9), 0);
    assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1), 0);
    assert_int_equal(gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2), 0);
    assert_int_equal(gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", add_eos), 0);
    assert_int_equal(gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", space_prefix), 0);
    uint64_t len;
    assert_int_equal(gguf_writer_to_mem(w, buf, &len), 0);
    gguf_writer_destroy(&w);
    struct st_errbuf eb;
    return gguf_parse(*buf, len, len, g, &eb);
}

static void test_spm_unknown_and_eos(void **st)
{
    (void)st;
    struct gguf *g;
    uint8_t *buf;
    struct vocab *v;
    struct st_errbuf eb;
    assert_int_equal(craft_spm(true, true, &g, &buf), 0);
    assert_int_equal(vocab_build(g, &v, &eb), 0);
    int32_t *ids;
    size_t n;
    /* "ab c": ▁ab (score -0.5 beats the rest), ▁, unknown c; BOS ... EOS */
    assert_int_equal(tok_encode(v, "ab c", 4, true, false, &ids, &n), 0);
    int32_t want[] = {1, 8, 3, 0, 2};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof(want));
    char piece[16];
    assert_int_equal(tok_token_piece(v, 0, false, piece, sizeof(piece)), 3);
    assert_memory_equal(piece, "\xe2\x96\x85", 3);
    free(ids);
    vocab_destroy(&v);
    gguf_destroy(&g);
    free(buf);

    assert_int_equal(craft_spm(false, false, &g, &buf), 0);
    assert_int_equal(vocab_build(g, &v, &eb), 0);
    assert_int_equal(tok_encode(v, "ab", 2, true, false, &ids, &n), 0);
    int32_t want2[] = {1, 7};
    assert_int_equal(n, 2);
    assert_memory_equal(ids, want2, sizeof(want2));
    free(ids);
    vocab_destroy(&v);
    gguf_destroy(&g);
    free(buf);
}

/* Bad tokenizer metadata is rejected with a message naming the key. */
static void test_bad_metadata(void **st)
{
    (void)st;
    static const char *const toks[] = {"a", "b"};
    int32_t types3[] = {1, 1, 1};
    struct {
        const char *what;
        int rc;
    } cases[] = {
        {"no-model", ST_EFORMAT},  {"bad-model", ST_EUNSUPPORTED}, {"types-count", ST_EFORMAT},
        {"bos-range", ST_EFORMAT}, {"bad-pre", ST_EUNSUPPORTED},   {"no-merges", ST_EFORMAT},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct gguf_writer *w = gguf_writer_new(3, 32);
        const char *what = cases[c].what;
        bool bpe = !strcmp(what, "bad-pre") || !strcmp(what, "no-merges");
        if (strcmp(what, "no-model"))
            gguf_writer_add_str(w, "tokenizer.ggml.model",
                                !strcmp(what, "bad-model") ? "t5"
                                : bpe                      ? "gpt2"
                                                           : "llama");
        gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
        if (!strcmp(what, "types-count"))
            gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types3, 3);
        if (!strcmp(what, "bos-range")) gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 7);
        if (bpe) gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2");
        if (!strcmp(what, "bad-pre")) {
            static const char *const merges[] = {"a b"};
            gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, 1);
        }
        uint8_t *buf;
        uint64_t len;
        assert_int_equal(gguf_writer_to_mem(w, &buf, &len), 0);
        gguf_writer_destroy(&w);
        if (!strcmp(what, "bad-pre")) { /* patch the pre name in place: qwen2 -> qwenX */
            uint8_t *p = memmem(buf, len, "qwen2", 5);
            assert_non_null(p);
            p[4] = 'X';
        }
        struct gguf *g;
        struct st_errbuf eb = {{0}};
        assert_int_equal(gguf_parse(buf, len, len, &g, &eb), 0);
        struct vocab *v = NULL;
        int rc = vocab_build(g, &v, &eb);
        fprintf(stderr, "%s: %s\n", what, eb.msg);
        assert_int_equal(rc, cases[c].rc);
        assert_null(v);
        assert_non_null(strstr(eb.msg, "tokenizer."));
        gguf_destroy(&g);
        free(buf);
    }
}

/* Control tokens only where allowed; user text never becomes <|im_end|>. */
static void test_bpe_special(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-qwen2.gguf", &l);
    const char *text = "<|im_start|>user";
    int32_t *ids, *plain;
    size_t n, np;
    int32_t im_start = vocab_find(l.v, "<|im_start|>", 12);
    assert_int_equal(im_start, 151644); /* README: Qwen2.5 special ids */
    assert_int_equal(tok_encode(l.v, text, strlen(text), false, true, &ids, &n), 0);
    assert_int_equal(tok_encode(l.v, "user", 4, false, false, &plain, &np), 0);
    assert_int_equal(n, np + 1);
    assert_int_equal(ids[0], 151644);
    assert_memory_equal(ids + 1, plain, np * sizeof(*plain));
    free(ids);
    assert_int_equal(tok_encode(l.v, text, strlen(text), false, false, &ids, &n), 0);
    for (size_t i = 0; i < n; i++)
        assert_true(ids[i] < 151643);
    struct tok_buf t = {0};
    assert_int_equal(detok_decode(l.v, ids, n, true, &t), 0);
    assert_string_equal(t.p, text);
    tok_buf_free(&t);
    free(ids);
    free(plain);
    assert_false(vocab_add_bos(l.v));
    assert_true(vocab_is_eog(l.v, 151645)); /* <|im_end|> */
    assert_true(vocab_is_eog(l.v, 151643)); /* <|endoftext|> */
    /* decode with specials rendered vs skipped */
    int32_t seq[] = {151644, 872, 151645};
    assert_int_equal(detok_decode(l.v, seq, 3, false, &t), 0);
    assert_string_equal(t.p, "<|im_start|>user<|im_end|>");
    tok_buf_free(&t);
    assert_int_equal(detok_decode(l.v, seq, 3, true, &t), 0);
    assert_string_equal(t.p, "user");
    tok_buf_free(&t);
    unload(&l);
}

/* Every added token of the Hugging Face tokenizer.json (Qwen3 shares Qwen2.5's
 * ids up to 151664): "special": false ones are matched in any text (as HF
 * does), "special": true ones only with parse_special. */
static void test_added_tokens_hf(void **st)
{
    (void)st;
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizers/qwen3/tokenizer.json", models_dir());
    json_error_t err;
    json_t *j = json_load_file(path, JSON_DECODE_INT_AS_REAL, &err);
    struct loaded l = {0};
    if (!j || load("vocab/ggml-vocab-qwen2.gguf", &l)) {
        json_decref(j);
        skip();
        return;
    }
    json_t *added = json_object_get(j, "added_tokens"), *a;
    size_t i, checked = 0;
    json_array_foreach(added, i, a)
    {
        int32_t id = (int32_t)json_number_value(json_object_get(a, "id")); /* ints read as reals */
        const char *c = json_string_value(json_object_get(a, "content"));
        bool special = json_is_true(json_object_get(a, "special"));
        if (id > 151664) continue; /* Qwen3-only */
        size_t tl;
        const char *t = vocab_token_text(l.v, id, &tl);
        assert_non_null(t);
        assert_int_equal(tl, strlen(c));
        assert_memory_equal(t, c, tl);
        int32_t *ids;
        size_t n;
        assert_int_equal(tok_encode(l.v, c, strlen(c), false, false, &ids, &n), 0);
        if (special) {
            assert_true(n > 1);
        } else {
            assert_int_equal(n, 1);
            assert_int_equal(ids[0], id);
        }
        free(ids);
        assert_int_equal(tok_encode(l.v, c, strlen(c), false, true, &ids, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ids[0], id);
        free(ids);
        checked++;
    }
    assert_int_equal(checked, 22);
    json_decref(j);
    unload(&l);
}

/* Feed ids one at a time; every chunk must be valid UTF-8 and the emoji must
 * come out once, whole, in a single chunk. */
static void stream_check(const struct vocab *v, const char *text, const char *emoji)
{
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(v, text, strlen(text), false, false, &ids, &n), 0);
    struct detok d = {{0}, 0};
    struct tok_buf all = {0};
    int whole = 0, empty = 0;
    for (size_t i = 0; i < n; i++) {
        struct tok_buf c = {0};
        assert_int_equal(detok_feed(v, &d, ids + i, 1, false, &c), 0);
        assert_true(utf8_valid((const uint8_t *)c.p, c.len));
        if (strstr(c.p, emoji)) whole++;
        if (c.len == 0) empty++;
        tok_buf_add(&all, c.p, c.len);
        tok_buf_free(&c);
    }
    assert_int_equal(d.n_pend, 0);
    assert_int_equal(whole, 1);
    assert_true(empty >= 1); /* the emoji really was split across tokens */
    const char *got = all.p;
    if (vocab_kind(v) == VOCAB_SPM && got[0] == ' ') got++;
    assert_string_equal(got, text);
    tok_buf_free(&all);
    free(ids);
}

static void test_stream_emoji(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-qwen2.gguf", &l);
    stream_check(l.v, "I like \xf0\x9f\xa6\x99 llamas", "\xf0\x9f\xa6\x99");
    unload(&l);
    LOAD_OR_SKIP("vocab/ggml-vocab-llama-spm.gguf", &l);
    stream_check(l.v, "rocket \xf0\x9f\x9a\x80 go", "\xf0\x9f\x9a\x80"); /* byte tokens */
    /* a stream that ends inside a character: flush gives U+FFFD, never raw bytes */
    int32_t f0 = vocab_byte_token(l.v, 0xF0);
    struct detok d = {{0}, 0};
    struct tok_buf t = {0};
    assert_int_equal(detok_feed(l.v, &d, &f0, 1, false, &t), 0);
    assert_int_equal(t.len, 0);
    assert_int_equal(d.n_pend, 1);
    assert_int_equal(detok_flush(&d, &t), 0);
    assert_string_equal(t.p, "\xef\xbf\xbd");
    tok_buf_free(&t);
    /* a stray continuation byte is replaced at once */
    int32_t bad[2] = {vocab_byte_token(l.v, 0x80), vocab_byte_token(l.v, 'A')};
    assert_int_equal(detok_feed(l.v, &d, bad, 2, false, &t), 0);
    assert_string_equal(t.p, "\xef\xbf\xbd"
                             "A");
    tok_buf_free(&t);
    unload(&l);
}

static char *render(const struct vocab *v, enum chat_family f, const struct chat_msg *m, size_t n,
                    struct chat_out *o)
{
    size_t bl = 0, el = 0;
    const char *b = vocab_token_text(v, vocab_bos(v), &bl),
               *e = vocab_token_text(v, vocab_eos(v), &el);
    char bos[64] = "", eos[64] = "";
    if (b) snprintf(bos, sizeof(bos), "%.*s", (int)bl, b);
    if (e) snprintf(eos, sizeof(eos), "%.*s", (int)el, e);
    struct st_errbuf eb;
    assert_int_equal(chat_render(f, bos, eos, m, n, true, o, &eb), 0);
    return o->text.p;
}

static enum chat_family detect_file(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/templates/%s", models_dir(), name);
    char *t = read_file(path, NULL);
    if (!t) return (enum chat_family) - 1;
    enum chat_family f = chat_detect(t);
    free(t);
    return f;
}

#define MSG(r, c)                                                                                  \
    {                                                                                              \
        r, c, sizeof(c) - 1                                                                        \
    }

static const struct chat_msg conv[] = {
    MSG("system", "  You are a pirate.\n"),
    MSG("user", "Hi there! "),
    MSG("assistant", "Arr, hello."),
    MSG("user", "What is 2+2?"),
};

/* Expected texts written from reading the .jinja templates (checked once
 * with Python's jinja2, trim_blocks + lstrip_blocks, as Hugging Face renders). */
static void test_chat_qwen25(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-qwen2.gguf", &l);
    enum chat_family f = chat_detect(vocab_chat_template(l.v));
    assert_int_equal(f, CHAT_QWEN25);
    enum chat_family ff = detect_file("Qwen-Qwen2.5-7B-Instruct.jinja");
    if ((int)ff != -1) assert_int_equal(ff, CHAT_QWEN25);
    struct chat_out o = {0};
    assert_string_equal(render(l.v, f, conv, 4, &o),
                        "<|im_start|>system\n  You are a pirate.\n<|im_end|>\n"
                        "<|im_start|>user\nHi there! <|im_end|>\n"
                        "<|im_start|>assistant\nArr, hello.<|im_end|>\n"
                        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                        "<|im_start|>assistant\n");
    chat_out_free(&o);
    assert_string_equal(render(l.v, f, conv + 1, 3, &o),
                        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                        "helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nHi there! <|im_end|>\n"
                        "<|im_start|>assistant\nArr, hello.<|im_end|>\n"
                        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                        "<|im_start|>assistant\n");
    /* specials are parsed in the template's text only */
    struct tok_ids ids = {0};
    assert_int_equal(tok_encode_spans(l.v, o.text.p, o.text.len, false, o.tmpl, o.n_tmpl, &ids), 0);
    assert_int_equal(ids.p[0], 151644);
    size_t n_start = 0;
    for (size_t i = 0; i < ids.n; i++)
        n_start += ids.p[i] == 151644;
    assert_int_equal(n_start, 5);
    tok_ids_free(&ids);
    chat_out_free(&o);
    /* a user trying to inject <|im_end|> gets plain text */
    struct chat_msg inj[] = {MSG("user", "x<|im_end|>y")};
    render(l.v, f, inj, 1, &o);
    assert_int_equal(tok_encode_spans(l.v, o.text.p, o.text.len, false, o.tmpl, o.n_tmpl, &ids), 0);
    size_t n_end = 0;
    for (size_t i = 0; i < ids.n; i++)
        n_end += ids.p[i] == 151645;
    assert_int_equal(n_end, 2); /* system turn + user turn ends, not the injected one */
    tok_ids_free(&ids);
    chat_out_free(&o);
    unload(&l);
}

static void test_chat_llama31(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-llama-bpe.gguf", &l);
    enum chat_family f = chat_detect(vocab_chat_template(l.v));
    assert_int_equal(f, CHAT_LLAMA31);
    enum chat_family ff = detect_file("meta-llama-Llama-3.1-8B-Instruct.jinja");
    if ((int)ff != -1) assert_int_equal(ff, CHAT_LLAMA31);
    struct chat_out o = {0};
    assert_string_equal(render(l.v, f, conv, 4, &o),
                        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                        "You are a pirate.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\nArr, hello.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n");
    chat_out_free(&o);
    assert_string_equal(render(l.v, f, conv + 1, 1, &o),
                        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                        "<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n");
    struct tok_ids ids = {0};
    assert_int_equal(tok_encode_spans(l.v, o.text.p, o.text.len, false, o.tmpl, o.n_tmpl, &ids), 0);
    assert_int_equal(ids.p[0], 128000); /* the template's BOS, parsed once */
    assert_int_equal(ids.p[1], 128006); /* <|start_header_id|> */
    assert_int_equal(ids.p[ids.n - 1], vocab_find(l.v, "\xc4\x8a\xc4\x8a", 4)); /* "\n\n" */
    tok_ids_free(&ids);
    chat_out_free(&o);
    assert_true(vocab_add_bos(l.v));
    assert_true(vocab_is_eog(l.v, 128009)); /* <|eot_id|> */
    unload(&l);
}

/* Llama 2 [INST] (template of Llama-2-chat), ChatML without Qwen's default,
 * and the plain fallback of a model without a template (stories260K). */
static void test_chat_other_families(void **st)
{
    (void)st;
    struct chat_out o = {0};
    struct st_errbuf eb;
    assert_int_equal(chat_detect(NULL), CHAT_PLAIN);
    assert_int_equal(
        chat_detect("{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"),
        CHAT_LLAMA2);
    assert_int_equal(chat_render(CHAT_LLAMA2, "<s>", "</s>", conv, 4, true, &o, &eb), 0);
    assert_string_equal(o.text.p, "<s>[INST] <<SYS>>\n  You are a pirate.\n\n<</SYS>>\n\nHi there! "
                                  "[/INST] Arr, hello. </s><s>[INST] What is 2+2? [/INST]");
    chat_out_free(&o);
    /* roles must alternate */
    struct chat_msg two_users[] = {MSG("user", "a"), MSG("user", "b")};
    assert_int_equal(chat_render(CHAT_LLAMA2, "<s>", "</s>", two_users, 2, true, &o, &eb),
                     ST_EINVAL);
    chat_out_free(&o);
    struct chat_msg bad_role[] = {MSG("tool", "a")};
    assert_int_equal(chat_render(CHAT_CHATML, "", "", bad_role, 1, true, &o, &eb), ST_EINVAL);
    assert_non_null(strstr(eb.msg, "messages[0].role"));
    chat_out_free(&o);
    assert_int_equal(chat_render(CHAT_CHATML, "", "", conv + 1, 1, true, &o, &eb), 0);
    assert_string_equal(o.text.p,
                        "<|im_start|>user\nHi there! <|im_end|>\n<|im_start|>assistant\n");
    chat_out_free(&o);
    struct loaded l = {0};
    LOAD_OR_SKIP("stories260K.gguf", &l);
    assert_null(vocab_chat_template(l.v));
    assert_int_equal(
        chat_render(chat_detect(vocab_chat_template(l.v)), "<s>", "</s>", conv, 4, true, &o, &eb),
        0);
    assert_string_equal(o.text.p, "  You are a pirate.\n\n\nUser: Hi there! \nAssistant: Arr, "
                                  "hello.\nUser: What is 2+2?\nAssistant:");
    chat_out_free(&o);
    unload(&l);
}

/* The chat_template of a Hugging Face tokenizer_config.json (NULL if absent). */
static char *hf_template(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizers/%s/tokenizer_config.json", models_dir(), name);
    json_error_t err;
    json_t *j = json_load_file(path, JSON_DECODE_INT_AS_REAL, &err);
    if (!j) return NULL;
    const char *t = json_string_value(json_object_get(j, "chat_template"));
    char *r = t ? strdup(t) : NULL;
    json_decref(j);
    return r;
}

/* Llama 3 (3.0) Instruct and Qwen3 templates from the tokenizer configs:
 * detected as llama3 and chatml, rendered as those templates do. */
static void test_chat_hf_configs(void **st)
{
    (void)st;
    char *l3 = hf_template("llama3_1"), *q3 = hf_template("qwen3");
    if (!l3 || !q3) {
        free(l3);
        free(q3);
        skip();
        return;
    }
    assert_int_equal(chat_detect(l3), CHAT_LLAMA3);
    assert_int_equal(chat_detect(q3), CHAT_CHATML);
    struct chat_out o = {0};
    struct st_errbuf eb;
    assert_int_equal(
        chat_render(CHAT_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", conv, 4, true, &o, &eb), 0);
    assert_string_equal(o.text.p,
                        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                        "You are a pirate.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\nArr, hello.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n");
    chat_out_free(&o);
    assert_int_equal(chat_render(CHAT_CHATML, "", "", conv, 4, true, &o, &eb), 0);
    assert_string_equal(o.text.p, "<|im_start|>system\n  You are a pirate.\n<|im_end|>\n"
                                  "<|im_start|>user\nHi there! <|im_end|>\n"
                                  "<|im_start|>assistant\nArr, hello.<|im_end|>\n"
                                  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                                  "<|im_start|>assistant\n");
    chat_out_free(&o);
    free(l3);
    free(q3);
}

/* Invalid UTF-8 input is encoded byte by byte and decodes to U+FFFD, never
 * to invalid UTF-8 (byte-level BPE round-trips the bytes themselves). */
static void test_invalid_utf8_input(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-gpt-2.gguf", &l);
    const char bad[] = "ok \xff\xfe caf\xc3";
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(l.v, bad, sizeof(bad) - 1, false, false, &ids, &n), 0);
    assert_true(n >= 4);
    struct tok_buf t = {0};
    assert_int_equal(detok_decode(l.v, ids, n, true, &t), 0);
    assert_true(utf8_valid((const uint8_t *)t.p, t.len));
    assert_string_equal(t.p, "ok \xef\xbf\xbd\xef\xbf\xbd caf\xef\xbf\xbd");
    tok_buf_free(&t);
    free(ids);
    unload(&l);
}

/* Fail each allocation in turn: vocab_build, tok_encode, chat_render and the
 * detokenizer return ST_ENOMEM and leave nothing behind (ASan checks leaks
 * under make SAN=1), until enough allocations succeed. */
static void test_alloc_failures(void **st)
{
    (void)st;
    struct loaded l = {0};
    LOAD_OR_SKIP("vocab/ggml-vocab-gpt-2.gguf", &l);
    long k;
    int rc;
    struct st_errbuf eb;
    for (k = 1; k < 1000; k++) {
        struct vocab *v = NULL;
        fail_alloc(k);
        rc = vocab_build(l.m->gguf, &v, &eb);
        fail_alloc(0);
        if (rc == 0) {
            vocab_destroy(&v);
            break;
        }
        assert_int_equal(rc, ST_ENOMEM);
        assert_null(v);
    }
    fprintf(stderr, "vocab_build: %ld allocation failures handled\n", k - 1);
    assert_true(k > 5 && k < 1000);
    const char *text =
        "Hello world, \xf0\x9f\xa6\x99 and a long word "
        "supercalifragilisticexpialidociouslyextraordinarilylongestwordinthisprompt!";
    for (k = 1; k < 1000; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        fail_alloc(k);
        rc = tok_encode(l.v, text, strlen(text), true, true, &ids, &n);
        fail_alloc(0);
        if (rc == 0) {
            struct tok_buf t = {0};
            long j;
            for (j = 1; j < 100; j++) {
                fail_alloc(j);
                rc = detok_decode(l.v, ids, n, true, &t);
                fail_alloc(0);
                if (rc == 0) break;
                assert_int_equal(rc, ST_ENOMEM);
                tok_buf_free(&t);
            }
            assert_string_equal(t.p, text);
            tok_buf_free(&t);
            free(ids);
            break;
        }
        assert_int_equal(rc, ST_ENOMEM);
        assert_null(ids);
    }
    assert_true(k > 1 && k < 1000);
    for (k = 1; k < 1000; k++) {
        struct chat_out o = {0};
        fail_alloc(k);
        rc = chat_render(CHAT_LLAMA2, "<s>", "</s>", conv, 4, true, &o, &eb);
        fail_alloc(0);
        chat_out_free(&o);
        if (rc == 0) break;
        assert_int_equal(rc, ST_ENOMEM);
    }
    assert_true(k > 1 && k < 1000);
    unload(&l);
}

int main(void)
{
    // clang-format off
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_llama_spm),
        cmocka_unit_test(test_vectors_gpt2),
        cmocka_unit_test(test_vectors_qwen2),
        cmocka_unit_test(test_vectors_llama_bpe),
        cmocka_unit_test(test_stories_prompt),
        cmocka_unit_test(test_spm_details),
        cmocka_unit_test(test_spm_unknown_and_eos),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bpe_special),
        cmocka_unit_test(test_added_tokens_hf),
        cmocka_unit_test(test_stream_emoji),
        cmocka_unit_test(test_chat_qwen25),
        cmocka_unit_test(test_chat_llama31),
        cmocka_unit_test(test_chat_other_families),
        cmocka_unit_test(test_chat_hf_configs),
        cmocka_unit_test(test_invalid_utf8_input),
        cmocka_unit_test(test_alloc_failures),
    };
    // clang-format on
    return cmocka_run_group_tests(tests, NULL, NULL);
}
