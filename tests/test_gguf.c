/* Tests of the GGUF reader (common/gguf.c), the model view's validation
 * (common/model.c) and the GGUF writer (common/gguf_write.c):
 *   - the bad-GGUF corpus (tests/bad-gguf/corpus.c): every file rejected with
 *     its own message, positions computed from where the writer put the field;
 *   - every truncation of a good file rejected;
 *   - writer round trips of every value type, v2 and v3, other alignments;
 *   - the real files under $STAGED_MODELS against the facts in its README. */
#include "common/gguf.h"
#include "common/gguf_write.h"
#include "common/model.h"
#include "tests/bad-gguf/corpus.h"

#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static const char *models_dir(void)
{
    const char *d = getenv("STAGED_MODELS");
    return d && *d ? d : "/work/shared/models";
}

/* Path under the models folder, or skip the test if it is not there. */
static const char *model_path(const char *rel)
{
    static char path[4096];
    snprintf(path, sizeof(path), "%s/%s", models_dir(), rel);
    struct stat st;
    if (stat(path, &st) != 0) {
        print_message("missing %s: skipped\n", path);
        return NULL;
    }
    return path;
}

/* ---- corpus ---- */

static void test_corpus_rejected(void **state)
{
    assert_true(corpus_n_cases >= 30);
    for (size_t i = 0; i < corpus_n_cases; i++) {
        struct corpus_file f;
        assert_int_equal(corpus_cases[i].build(&f), 0);
        assert_true(f.expect[0] != 0);
        char msg[512];
        int rc = corpus_check(f.buf, f.len, msg, sizeof(msg));
        if (rc == 0 || !strstr(msg, f.expect))
            fail_msg("%s: rc %d, message '%s', expected it to contain '%s'", corpus_cases[i].name,
                     rc, msg, f.expect);
        corpus_file_free(&f);
    }
    print_message("%zu bad files rejected with their expected messages\n", corpus_n_cases);
}

/* Expectations differ between cases (each case checks its own fault). */
static void test_corpus_expectations_distinct(void **state)
{
    for (size_t i = 0; i < corpus_n_cases; i++) {
        struct corpus_file a;
        assert_int_equal(corpus_cases[i].build(&a), 0);
        for (size_t j = i + 1; j < corpus_n_cases; j++) {
            struct corpus_file b;
            assert_int_equal(corpus_cases[j].build(&b), 0);
            /* identical text is allowed only where the fault is the same
             * check reached by a different route (the two count cases, the
             * three general.alignment cases, the two magic cases) */
            if (strcmp(a.expect, b.expect) == 0 && !strstr(a.expect, "count larger") &&
                !strstr(a.expect, "general.alignment") && !strstr(a.expect, "not a GGUF"))
                fail_msg("%s and %s expect the same message '%s'", corpus_cases[i].name,
                         corpus_cases[j].name, a.expect);
            corpus_file_free(&b);
        }
        corpus_file_free(&a);
    }
}

static void test_good_models_accepted(void **state)
{
    const char *archs[3] = {"llama", "qwen2", "qwen3"};
    for (int a = 0; a < 3; a++) {
        for (uint32_t v = 2; v <= 3; v++) {
            struct corpus_file f;
            assert_int_equal(corpus_good_model(archs[a], v, &f), 0);
            char msg[512];
            int rc = corpus_check(f.buf, f.len, msg, sizeof(msg));
            if (rc) fail_msg("good %s v%u rejected: %s", archs[a], v, msg);
            struct st_errbuf eb = {{0}};
            struct gguf *g;
            assert_int_equal(gguf_parse(f.buf, f.len, f.len, &g, &eb), 0);
            assert_int_equal(g->version, v);
            struct model_hparams hp;
            assert_int_equal(model_hparams_read(g, &hp, &eb), 0);
            assert_int_equal(hp.arch, a + 1);
            assert_int_equal(hp.dim, 16);
            assert_int_equal(hp.n_heads, 4);
            assert_int_equal(hp.n_kv_heads, 2);
            assert_int_equal(hp.head_dim, 4);
            assert_int_equal(hp.n_vocab, 8);
            assert_int_equal(hp.tied_output, 1);
            assert_int_equal(hp.has_qkv_bias, a == 1);
            assert_int_equal(hp.has_qk_norm, a == 2);
            assert_int_equal(hp.rope_kind, a == 0 ? ROPE_NORMAL : ROPE_NEOX);
            gguf_destroy(&g);
            corpus_file_free(&f);
        }
    }
}

/* Every proper prefix of a good file is rejected (and nothing reads past
 * the prefix: ASan builds check that). */
static void test_every_truncation_rejected(void **state)
{
    struct corpus_file f;
    assert_int_equal(corpus_good_model("qwen2", 3, &f), 0);
    for (uint64_t len = 0; len < f.len; len++) {
        uint8_t *copy = malloc(len ? len : 1); /* exact size: overreads trap */
        assert_non_null(copy);
        memcpy(copy, f.buf, len);
        char msg[512];
        if (corpus_check(copy, len, msg, sizeof(msg)) == 0)
            fail_msg("file cut to %llu of %llu bytes was accepted", (unsigned long long)len,
                     (unsigned long long)f.len);
        free(copy);
    }
    corpus_file_free(&f);
}

/* ---- writer round trips ---- */

static void test_writer_all_value_types(void **state)
{
    for (uint32_t version = 2; version <= 3; version++) {
        struct gguf_writer *w = gguf_writer_new(version, 32);
        assert_non_null(w);
        assert_int_equal(gguf_writer_add_u8(w, "t.u8", 200), 0);
        assert_int_equal(gguf_writer_add_i8(w, "t.i8", -100), 0);
        assert_int_equal(gguf_writer_add_u16(w, "t.u16", 65000), 0);
        assert_int_equal(gguf_writer_add_i16(w, "t.i16", -32000), 0);
        assert_int_equal(gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
        assert_int_equal(gguf_writer_add_i32(w, "t.i32", -2000000000), 0);
        assert_int_equal(gguf_writer_add_u64(w, "t.u64", 1ull << 63), 0);
        assert_int_equal(gguf_writer_add_i64(w, "t.i64", -(1ll << 62)), 0);
        assert_int_equal(gguf_writer_add_f32(w, "t.f32", 1e-6f), 0);
        assert_int_equal(gguf_writer_add_f64(w, "t.f64", 1e300), 0);
        assert_int_equal(gguf_writer_add_bool(w, "t.bool", true), 0);
        assert_int_equal(gguf_writer_add_str(w, "t.str", "h\xc3\xa9llo"), 0);
        assert_int_equal(gguf_writer_add_strn(w, "t.bin", "a\0b", 3), 0);
        assert_int_equal(gguf_writer_add_str(w, "t.empty", ""), 0);
        int32_t ints[5] = {1, -2, 3, -4, 5};
        assert_int_equal(gguf_writer_add_arr(w, "t.arr_i32", GGUF_I32, ints, 5), 0);
        double dbl[2] = {0.5, -0.25};
        assert_int_equal(gguf_writer_add_arr(w, "t.arr_f64", GGUF_F64, dbl, 2), 0);
        assert_int_equal(gguf_writer_add_arr(w, "t.arr_empty", GGUF_U8, NULL, 0), 0);
        const char *strs[3] = {"x", "", "zzz"};
        assert_int_equal(gguf_writer_add_arr_str(w, "t.arr_str", strs, 3), 0);
        /* array of 2 arrays of u16: [[7], [8, 9]] */
        uint8_t nested[12 + 12 + 2 + 12 + 4];
        uint32_t et = GGUF_ARRAY, et2 = GGUF_U16;
        uint64_t n = 2, n1 = 1, n2 = 2;
        uint16_t v7 = 7, v8 = 8, v9 = 9;
        uint8_t *p = nested;
        memcpy(p, &et, 4), memcpy(p + 4, &n, 8), p += 12;
        memcpy(p, &et2, 4), memcpy(p + 4, &n1, 8), memcpy(p + 12, &v7, 2), p += 14;
        memcpy(p, &et2, 4), memcpy(p + 4, &n2, 8), memcpy(p + 12, &v8, 2), memcpy(p + 14, &v9, 2);
        assert_int_equal(gguf_writer_add_raw(w, "t.nested", GGUF_ARRAY, nested, sizeof(nested)), 0);
        /* writer refuses duplicates and bad input */
        assert_int_equal(gguf_writer_add_u8(w, "t.u8", 1), ST_EEXIST);
        assert_int_equal(gguf_writer_add_u8(w, "", 1), ST_EINVAL);
        assert_int_equal(gguf_writer_add_arr(w, "t.bad", GGUF_STRING, strs, 1), ST_EINVAL);
        uint64_t ne[2] = {48, 2};
        assert_true(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q4_0, 2, ne, NULL) < 0);
        assert_int_equal(gguf_writer_n_kv(w), 19);

        uint8_t *buf;
        uint64_t len;
        assert_int_equal(gguf_writer_to_mem(w, &buf, &len), 0);
        gguf_writer_destroy(&w);
        gguf_writer_destroy(&w); /* safe twice */
        struct st_errbuf eb = {{0}};
        struct gguf *g;
        if (gguf_parse(buf, len, len, &g, &eb)) fail_msg("%s", eb.msg);
        assert_int_equal(g->version, version);
        assert_int_equal(g->n_kv, 19);
        assert_true(gguf_is_vocab_only(g));
        uint64_t u;
        int64_t s;
        double d;
        bool b;
        struct gguf_str str;
        assert_true(gguf_get_u64(g, "t.u8", &u) && u == 200);
        assert_false(gguf_get_u64(g, "t.i8", &u)); /* negative */
        assert_true(gguf_get_i64(g, "t.i8", &s) && s == -100);
        assert_true(gguf_get_u64(g, "t.u16", &u) && u == 65000);
        assert_true(gguf_get_i64(g, "t.i16", &s) && s == -32000);
        uint32_t u32;
        assert_true(gguf_get_u32(g, "t.u32", &u32) && u32 == 4000000000u);
        assert_true(gguf_get_i64(g, "t.i32", &s) && s == -2000000000);
        assert_true(gguf_get_u64(g, "t.u64", &u) && u == 1ull << 63);
        assert_false(gguf_get_u32(g, "t.u64", &u32)); /* does not fit */
        assert_false(gguf_get_i64(g, "t.u64", &s));
        assert_true(gguf_get_i64(g, "t.i64", &s) && s == -(1ll << 62));
        assert_true(gguf_get_f64(g, "t.f32", &d) && (float)d == 1e-6f);
        assert_true(gguf_get_f64(g, "t.f64", &d) && d == 1e300);
        assert_false(gguf_get_f64(g, "t.u8", &d));
        assert_true(gguf_get_bool(g, "t.bool", &b) && b);
        assert_false(gguf_get_u64(g, "t.bool", &u));
        assert_true(gguf_get_str(g, "t.str", &str) && gguf_str_eq(str, "h\xc3\xa9llo"));
        assert_true(gguf_get_str(g, "t.bin", &str) && str.len == 3 &&
                    memcmp(str.p, "a\0b", 3) == 0);
        assert_true(gguf_get_str(g, "t.empty", &str) && str.len == 0);
        assert_false(gguf_get_str(g, "t.u8", &str));
        assert_false(gguf_get_str(g, "absent", &str));
        uint32_t at;
        uint64_t an;
        assert_true(gguf_get_arr(g, "t.arr_i32", &at, &an) && at == GGUF_I32 && an == 5);
        const int32_t *ai = gguf_arr_data(g, gguf_find_key(g, "t.arr_i32"));
        assert_non_null(ai);
        int32_t i3;
        memcpy(&i3, (const uint8_t *)ai + 12, 4);
        assert_int_equal(i3, -4);
        assert_true(gguf_get_arr(g, "t.arr_f64", &at, &an) && at == GGUF_F64 && an == 2);
        assert_true(gguf_get_arr(g, "t.arr_empty", &at, &an) && at == GGUF_U8 && an == 0);
        assert_true(gguf_get_arr(g, "t.arr_str", &at, &an) && at == GGUF_STRING && an == 3);
        int64_t ks = gguf_find_key(g, "t.arr_str");
        assert_true(gguf_str_eq(gguf_arr_str(g, ks, 0), "x"));
        assert_true(gguf_str_eq(gguf_arr_str(g, ks, 1), ""));
        assert_true(gguf_str_eq(gguf_arr_str(g, ks, 2), "zzz"));
        assert_int_equal(gguf_arr_str(g, ks, 3).len, 0); /* out of range: empty */
        assert_null(gguf_arr_data(g, ks));
        assert_true(gguf_get_arr(g, "t.nested", &at, &an) && at == GGUF_ARRAY && an == 2);
        char text[512];
        gguf_format_value(g, gguf_find_key(g, "t.arr_str"), text, sizeof(text));
        assert_string_equal(text, "[string x 3] \"x\", \"\", \"zzz\"");
        gguf_format_value(g, gguf_find_key(g, "t.i8"), text, sizeof(text));
        assert_string_equal(text, "-100");
        gguf_destroy(&g);
        free(buf);
    }
}

static void test_writer_alignment_and_copy(void **state)
{
    struct gguf_writer *w = gguf_writer_new(3, 64);
    assert_non_null(w);
    float a[40], b[64];
    for (int i = 0; i < 40; i++)
        a[i] = (float)i;
    for (int i = 0; i < 64; i++)
        b[i] = -(float)i;
    uint64_t ne_a[1] = {40}, ne_b[2] = {32, 2};
    assert_int_equal(gguf_writer_add_tensor(w, "a", GGML_TYPE_F32, 1, ne_a, a), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "b", GGML_TYPE_F32, 2, ne_b, b), 1);
    assert_true(gguf_writer_add_tensor(w, "a", GGML_TYPE_F32, 1, ne_a, a) == ST_EEXIST);
    assert_int_equal(gguf_writer_tensor_offset(w, 1), 192); /* 160 rounded up to 64 */
    uint8_t *buf;
    uint64_t len;
    assert_int_equal(gguf_writer_to_mem(w, &buf, &len), 0);
    assert_int_equal(len, gguf_writer_file_size(w));
    struct st_errbuf eb = {{0}};
    struct gguf *g;
    if (gguf_parse(buf, len, len, &g, &eb)) fail_msg("%s", eb.msg);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->data_offset % 64, 0);
    assert_int_equal(g->data_offset, gguf_writer_data_offset(w));
    assert_int_equal(g->n_tensors, 2);
    assert_int_equal(g->tensors[1].offset, 192);
    assert_int_equal(g->tensors[1].size, 256);
    float got;
    memcpy(&got, buf + g->data_offset + 192 + 4 * 33, 4);
    assert_true(got == -33.0f);

    /* copy every entry into a second file: the values are byte-identical */
    struct gguf_writer *w2 = gguf_writer_new(3, 32);
    for (uint64_t i = 0; i < g->n_kv; i++)
        assert_int_equal(gguf_writer_copy_kv(w2, g, i), 0);
    uint8_t *buf2;
    uint64_t len2;
    assert_int_equal(gguf_writer_to_mem(w2, &buf2, &len2), 0);
    struct gguf *g2;
    assert_int_equal(gguf_parse(buf2, len2, len2, &g2, &eb), 0);
    uint64_t al;
    assert_true(gguf_get_u64(g2, "general.alignment", &al) && al == 64);
    gguf_destroy(&g2);
    gguf_destroy(&g);
    gguf_writer_destroy(&w2);
    gguf_writer_destroy(&w);
    free(buf2);
    free(buf);
}

/* Served mode: the reader gets only the header region and the file's size
 * (the loader's segment); tensor bounds are checked against the size. */
static void test_header_region_only(void **state)
{
    struct corpus_file f;
    assert_int_equal(corpus_good_model("llama", 3, &f), 0);
    struct st_errbuf eb = {{0}};
    struct gguf *g;
    if (gguf_parse(f.buf, f.len, f.len, &g, &eb)) fail_msg("%s", eb.msg);
    uint64_t hdr = g->data_offset;
    gguf_destroy(&g);
    uint8_t *copy = malloc(hdr); /* exactly the header region */
    memcpy(copy, f.buf, hdr);
    assert_int_equal(gguf_parse(copy, hdr, f.len, &g, &eb), 0);
    assert_int_equal(g->data_offset, hdr);
    gguf_destroy(&g);
    /* the same header, but a file too short for the last tensor */
    assert_int_equal(gguf_parse(copy, hdr, f.len - 1, &g, &eb), ST_EFORMAT);
    assert_non_null(strstr(eb.msg, "runs past the end of the file"));
    /* a model over separate header and data memory */
    struct st_model *m;
    assert_int_equal(model_open_mem(copy, hdr, f.len, f.buf + hdr, &m, &eb), 0);
    struct model_tensor t;
    assert_true(model_tensor(m, "blk.0.ffn_down.weight", &t));
    assert_ptr_equal(
        t.data,
        f.buf + hdr + m->gguf->tensors[gguf_find_tensor(m->gguf, "blk.0.ffn_down.weight")].offset);
    model_close(&m);
    free(copy);
    corpus_file_free(&f);
}

static void test_writer_to_file(void **state)
{
    struct gguf_writer *w = gguf_writer_new(3, 32);
    assert_non_null(w);
    assert_int_equal(gguf_writer_add_str(w, "general.architecture", "llama"), 0);
    struct st_errbuf eb = {{0}};
    assert_int_equal(gguf_writer_to_file(w, "/nonexistent-dir/x.gguf", &eb), ST_EIO);
    assert_non_null(strstr(eb.msg, "/nonexistent-dir/x.gguf"));
    char path[] = "/tmp/staged-test-writer-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(gguf_writer_to_file(w, path, &eb), 0);
    struct st_model *m;
    assert_int_equal(model_open_file(path, &m, &eb), 0); /* vocab-only: accepted */
    assert_true(gguf_is_vocab_only(m->gguf));
    model_close(&m);
    unlink(path);
    gguf_writer_destroy(&w);
    assert_null(gguf_writer_new(1, 32));
    assert_null(gguf_writer_new(3, 48));
}

/* ---- tensor type table (block sizes from the GGUF/ggml documentation) ---- */

static void test_type_table(void **state)
{
    struct {
        uint32_t t;
        const char *name;
        uint32_t elems, bytes;
    } want[] = {{GGML_TYPE_F32, "F32", 1, 4},       {GGML_TYPE_F16, "F16", 1, 2},
                {GGML_TYPE_BF16, "BF16", 1, 2},     {GGML_TYPE_Q4_0, "Q4_0", 32, 18},
                {GGML_TYPE_Q4_1, "Q4_1", 32, 20},   {GGML_TYPE_Q5_0, "Q5_0", 32, 22},
                {GGML_TYPE_Q5_1, "Q5_1", 32, 24},   {GGML_TYPE_Q8_0, "Q8_0", 32, 34},
                {GGML_TYPE_Q2_K, "Q2_K", 256, 84},  {GGML_TYPE_Q3_K, "Q3_K", 256, 110},
                {GGML_TYPE_Q4_K, "Q4_K", 256, 144}, {GGML_TYPE_Q5_K, "Q5_K", 256, 176},
                {GGML_TYPE_Q6_K, "Q6_K", 256, 210}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_true(ggml_type_supported(want[i].t));
        assert_string_equal(ggml_type_name(want[i].t), want[i].name);
        assert_int_equal(ggml_type_block_elems(want[i].t), want[i].elems);
        assert_int_equal(ggml_type_block_bytes(want[i].t), want[i].bytes);
    }
    assert_false(ggml_type_supported(GGML_TYPE_Q8_K));
    assert_false(ggml_type_supported(16));
    assert_false(ggml_type_supported(UINT32_MAX));
    assert_null(ggml_type_name(99));
    assert_int_equal(ggml_row_bytes(GGML_TYPE_Q4_K, 4864), 19 * 144);
    assert_int_equal(ggml_row_bytes(GGML_TYPE_Q4_K, 896), 0); /* not a multiple of 256 */
}

/* ---- real files ---- */

static struct st_model *open_ok(const char *path)
{
    struct st_model *m;
    struct st_errbuf eb = {{0}};
    if (model_open_file(path, &m, &eb)) fail_msg("%s: %s", path, eb.msg);
    return m;
}

static void test_stories260k(void **state)
{
    const char *path = model_path("stories260K.gguf");
    if (!path) skip();
    struct st_model *m = open_ok(path);
    const struct gguf *g = m->gguf;
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_tensors, 48);
    assert_int_equal(g->n_kv, 19);
    assert_int_equal(g->alignment, 32);
    assert_int_equal(gguf_find_key(g, "general.alignment"), -1);
    assert_int_equal(g->data_offset, 14176);
    const struct model_hparams *hp = &m->hp;
    assert_int_equal(hp->arch, ARCH_LLAMA);
    assert_int_equal(hp->dim, 64);
    assert_int_equal(hp->n_layers, 5);
    assert_int_equal(hp->ffn_dim, 172);
    assert_int_equal(hp->n_heads, 8);
    assert_int_equal(hp->n_kv_heads, 4);
    assert_int_equal(hp->head_dim, 8);
    assert_int_equal(hp->rope_dim, 8);
    assert_int_equal(hp->n_vocab, 512);
    assert_int_equal(hp->n_ctx_train, 2048);
    assert_int_equal(hp->tied_output, 0);
    assert_int_equal(hp->has_qkv_bias, 0);
    assert_true(hp->rope_base == 10000.0f);
    assert_true(fabsf(hp->rms_eps - 1e-5f) < 1e-10f);
    struct model_tensor t;
    assert_true(model_tensor(m, "token_embd.weight", &t));
    assert_int_equal(t.type, GGML_TYPE_F32);
    assert_int_equal(t.ne[0], 64);
    assert_int_equal(t.ne[1], 512);
    assert_true(model_tensor_l(m, 4, "ffn_down.weight", &t));
    assert_int_equal(t.ne[0], 172);
    assert_int_equal(t.ne[1], 64);
    assert_true(model_tensor_l(m, 0, "attn_k.weight", &t));
    assert_int_equal(t.ne[1], 32);
    assert_false(model_tensor_l(m, 5, "attn_k.weight", &t));
    uint64_t total = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        total += g->tensors[i].size;
    assert_int_equal(total, 292800 * 4); /* 292,800 F32 parameters */
    /* tokenizer facts from the README */
    uint32_t et;
    uint64_t n;
    assert_true(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n));
    assert_int_equal(et, GGUF_STRING);
    assert_int_equal(n, 512);
    int64_t k = gguf_find_key(g, "tokenizer.ggml.tokens");
    assert_true(gguf_str_eq(gguf_arr_str(g, k, 0), "<unk>"));
    assert_true(gguf_str_eq(gguf_arr_str(g, k, 1), "<s>"));
    assert_true(gguf_str_eq(gguf_arr_str(g, k, 2), "</s>"));
    assert_true(gguf_str_eq(gguf_arr_str(g, k, 3), "<0x00>"));
    assert_true(gguf_str_eq(gguf_arr_str(g, k, 258), "<0xFF>"));
    uint32_t id;
    assert_true(gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) && id == 1);
    assert_true(gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &id) && id == 4294967295u);
    struct gguf_str s;
    assert_true(gguf_get_str(g, "tokenizer.ggml.model", &s) && gguf_str_eq(s, "llama"));
    model_close(&m);
    model_close(&m);
}

static void test_legacy_v1_rejected(void **state)
{
    const char *path = model_path("legacy/tinyllamas-stories-260k-f32.gguf");
    if (!path) skip();
    struct st_model *m;
    struct st_errbuf eb = {{0}};
    assert_int_equal(model_open_file(path, &m, &eb), ST_EUNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(eb.msg, "GGUF version 1 is not supported"));
}

static void test_tiny_random(void **state)
{
    const char *path = model_path("random/llama-2-tiny-random.gguf");
    if (!path) skip();
    struct st_model *m = open_ok(path);
    assert_int_equal(m->gguf->n_tensors, 12);
    assert_int_equal(m->gguf->n_kv, 18);
    assert_int_equal(m->gguf->data_offset, 724416);
    assert_int_equal(m->hp.dim, 8);
    assert_int_equal(m->hp.n_layers, 1);
    assert_int_equal(m->hp.ffn_dim, 32);
    assert_int_equal(m->hp.n_heads, 2);
    assert_int_equal(m->hp.n_kv_heads, 2);
    assert_int_equal(m->hp.rope_dim, 4);
    assert_int_equal(m->hp.n_vocab, 32000);
    assert_int_equal(m->hp.n_ctx_train, 4096);
    struct model_tensor t;
    assert_true(model_tensor(m, "output.weight", &t) && t.type == GGML_TYPE_F16);
    assert_true(model_tensor(m, "blk.0.ffn_down.weight", &t) && t.type == GGML_TYPE_F16);
    assert_true(model_tensor(m, "output_norm.weight", &t) && t.type == GGML_TYPE_F32);
    model_close(&m);
}

static void test_vocab_only(void **state)
{
    struct {
        const char *file, *pre;
        uint64_t n_tokens;
    } v[] = {{"vocab/ggml-vocab-qwen2.gguf", "qwen2", 151936},
             {"vocab/ggml-vocab-llama-bpe.gguf", "llama-bpe", 128256},
             {"vocab/ggml-vocab-llama-spm.gguf", "default", 32000},
             {"vocab/ggml-vocab-gpt-2.gguf", "gpt-2", 50257}};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        const char *path = model_path(v[i].file);
        if (!path) skip();
        struct st_model *m = open_ok(path);
        assert_true(gguf_is_vocab_only(m->gguf));
        assert_int_equal(m->hp.arch, ARCH_NONE);
        uint32_t et;
        uint64_t n;
        assert_true(gguf_get_arr(m->gguf, "tokenizer.ggml.tokens", &et, &n));
        assert_int_equal(n, v[i].n_tokens);
        struct gguf_str s;
        assert_true(gguf_get_str(m->gguf, "tokenizer.ggml.pre", &s));
        if (!gguf_str_eq(s, v[i].pre)) fail_msg("%s: pre '%.*s'", v[i].file, (int)s.len, s.p);
        /* model_hparams_read says what is wrong with it as a model */
        struct model_hparams hp;
        struct st_errbuf eb = {{0}};
        assert_int_equal(model_hparams_read(m->gguf, &hp, &eb), ST_ENOTFOUND);
        assert_non_null(strstr(eb.msg, "vocab-only"));
        model_close(&m);
    }
}

static void test_ref_models(void **state)
{
    const char *types_q[] = {"F32",  "F16",  "BF16",   "Q8_0",   "Q4_0",   "Q4_1", "Q5_0",
                             "Q5_1", "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K", "Q4_K_M"};
    const char *types_l[] = {"F32", "F16", "Q8_0", "Q6_K", "Q4_K_M"};
    for (int a = 0; a < 2; a++) {
        size_t nt = a ? 5 : 14;
        for (size_t i = 0; i < nt; i++) {
            char rel[128];
            snprintf(rel, sizeof(rel), "ref/ref-%s.%s.gguf", a ? "llama" : "qwen2",
                     a ? types_l[i] : types_q[i]);
            const char *path = model_path(rel);
            if (!path) skip();
            struct st_model *m = open_ok(path);
            const struct model_hparams *hp = &m->hp;
            assert_int_equal(hp->dim, 256);
            assert_int_equal(hp->n_vocab, 4096);
            if (a == 0) {
                assert_int_equal(hp->arch, ARCH_QWEN2);
                assert_int_equal(hp->n_layers, 4);
                assert_int_equal(hp->n_heads, 4);
                assert_int_equal(hp->n_kv_heads, 2);
                assert_int_equal(hp->head_dim, 64);
                assert_int_equal(hp->ffn_dim, 768);
                assert_int_equal(hp->has_qkv_bias, 1);
                assert_int_equal(hp->tied_output, 1);
                assert_int_equal(hp->rope_kind, ROPE_NEOX);
                assert_true(hp->rope_base == 1e6f);
                assert_true(fabsf(hp->rms_eps - 1e-6f) < 1e-12f);
                assert_int_equal(m->gguf->n_tensors, 2 + 4 * 12);
            } else {
                assert_int_equal(hp->arch, ARCH_LLAMA);
                assert_int_equal(hp->n_layers, 3);
                assert_int_equal(hp->n_heads, 8);
                assert_int_equal(hp->n_kv_heads, 2);
                assert_int_equal(hp->head_dim, 32);
                assert_int_equal(hp->ffn_dim, 512);
                assert_int_equal(hp->tied_output, 0);
                assert_int_equal(hp->rope_kind, ROPE_NORMAL);
                assert_true(hp->rope_base == 1e4f);
                assert_int_equal(m->gguf->n_tensors, 3 + 3 * 9);
            }
            /* a --pure file holds its type in the matrices */
            struct model_tensor t;
            assert_true(model_tensor_l(m, 0, "ffn_up.weight", &t));
            const char *tn = a ? types_l[i] : types_q[i];
            if (strcmp(tn, "Q4_K_M") != 0) {
                char want[8];
                snprintf(want, sizeof(want), "%s", tn);
                char *u = strstr(want, "_K_");
                if (u) u[2] = 0; /* Q3_K_S -> Q3_K */
                assert_string_equal(ggml_type_name(t.type), want);
            }
            model_close(&m);
        }
    }
}

/* Every .gguf under the models folder: servable, vocab-only, or the v1
 * legacy file rejected for its version. */
static int walk(const char *dir, int *n_ok, int *n_vocab, int *n_v1)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            walk(path, n_ok, n_vocab, n_v1);
            continue;
        }
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 5, ".gguf")) continue;
        struct st_model *m;
        struct st_errbuf eb = {{0}};
        int rc = model_open_file(path, &m, &eb);
        if (rc) {
            if (!strstr(eb.msg, "GGUF version 1 is not supported"))
                fail_msg("%s rejected: %s", path, eb.msg);
            (*n_v1)++;
            continue;
        }
        if (gguf_is_vocab_only(m->gguf))
            (*n_vocab)++;
        else
            (*n_ok)++;
        model_close(&m);
    }
    closedir(d);
    return 0;
}

static void test_all_shared_models(void **state)
{
    int ok = 0, vocab = 0, v1 = 0;
    if (walk(models_dir(), &ok, &vocab, &v1)) skip();
    print_message("models: %d servable, %d vocab-only, %d v1 rejected\n", ok, vocab, v1);
    assert_true(ok >= 21);
    assert_int_equal(vocab, 4);
    assert_int_equal(v1, 1);
}

/* ---- allocation failures ----
 * The test links with -Wl,--wrap=malloc,calloc,realloc: allocations made by
 * staged's code (not by libc or cmocka) go through these, and the
 * fail_at-th one returns NULL. */

static long fail_at = -1, n_allocs;
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);

static bool fail_now(void)
{
    return fail_at >= 0 && n_allocs++ == fail_at;
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

/* Fail each allocation of the reader in turn: ST_ENOMEM, a message, nothing
 * leaked (ASan builds check), and success once every allocation is past. */
static void test_parse_allocation_failures(void **state)
{
    struct corpus_file f;
    assert_int_equal(corpus_good_model("qwen3", 3, &f), 0);
    long k;
    for (k = 0;; k++) {
        struct st_errbuf eb = {{0}};
        struct st_model *m = NULL;
        fail_at = k;
        n_allocs = 0;
        int rc = model_open_mem(f.buf, f.len, f.len, f.buf, &m, &eb);
        fail_at = -1;
        if (n_allocs <= k) { /* no allocation was failed: done */
            assert_int_equal(rc, 0);
            model_close(&m);
            break;
        }
        if (rc != ST_ENOMEM || !strstr(eb.msg, "out of memory"))
            fail_msg("allocation %ld failed: rc %d, '%s'", k, rc, eb.msg);
        assert_null(m);
    }
    print_message("model_open_mem: %ld allocations, each failure handled\n", k);
    assert_true(k >= 4);
    corpus_file_free(&f);
}

static void test_writer_allocation_failures(void **state)
{
    const char *strs[2] = {"a", "bc"};
    float data[64] = {0};
    uint64_t ne[2] = {32, 2};
    long k;
    for (k = 0;; k++) {
        fail_at = k;
        n_allocs = 0;
        struct gguf_writer *w = gguf_writer_new(3, 64);
        int rc = w ? 0 : ST_ENOMEM;
        if (!rc) rc = gguf_writer_add_str(w, "general.architecture", "llama");
        if (!rc) rc = gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", strs, 2);
        for (int i = 0; i < 40 && !rc; i++) { /* enough keys to grow the arrays */
            char key[32];
            snprintf(key, sizeof(key), "k.%d", i);
            rc = gguf_writer_add_u32(w, key, (uint32_t)i);
        }
        if (!rc) {
            int64_t t = gguf_writer_add_tensor(w, "t", GGML_TYPE_F32, 2, ne, data);
            rc = t < 0 ? (int)t : 0;
        }
        uint8_t *buf = NULL;
        uint64_t len;
        if (!rc) rc = gguf_writer_to_mem(w, &buf, &len);
        fail_at = -1;
        gguf_writer_destroy(&w);
        if (n_allocs <= k) {
            assert_int_equal(rc, 0);
            struct gguf *g;
            struct st_errbuf eb = {{0}};
            assert_int_equal(gguf_parse(buf, len, len, &g, &eb), 0);
            assert_int_equal(g->n_kv, 43);
            gguf_destroy(&g);
            free(buf);
            break;
        }
        assert_int_equal(rc, ST_ENOMEM);
        free(buf);
    }
    print_message("writer: %ld allocations, each failure handled\n", k);
}

/* ---- the staged-gguf command ---- */

/* Run $BIN/staged-gguf on path; its exit status, the verdict line in
 * verdict (cap bytes) and whether a tensor table was printed. */
static int run_staged_gguf(const char *path, char *verdict, size_t cap, bool *table)
{
    const char *bin = getenv("BIN");
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "'%s/staged-gguf' '%s' 2>&1", bin && *bin ? bin : "bin", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096];
    verdict[0] = 0;
    *table = false;
    while (fgets(line, sizeof(line), p)) {
        if (strncmp(line, "verdict: ", 9) == 0) {
            size_t n = strlen(line) < cap ? strlen(line) : cap - 1;
            memcpy(verdict, line, n);
            verdict[n] = 0;
        }
        if (strncmp(line, "tensors: ", 9) == 0) *table = true;
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_staged_gguf_command(void **state)
{
    const char *bin = getenv("BIN");
    char exe[4096];
    snprintf(exe, sizeof(exe), "%s/staged-gguf", bin && *bin ? bin : "bin");
    if (access(exe, X_OK) != 0) {
        print_message("no %s: skipped\n", exe);
        skip();
    }
    char dir[] = "/tmp/staged-test-gguf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[4096], verdict[1024];
    bool table;
    for (size_t i = 0; i < corpus_n_cases; i++) {
        struct corpus_file f;
        assert_int_equal(corpus_cases[i].build(&f), 0);
        snprintf(path, sizeof(path), "%s/%s.gguf", dir, corpus_cases[i].name);
        FILE *o = fopen(path, "wb");
        assert_non_null(o);
        assert_int_equal(fwrite(f.buf, 1, f.len, o), f.len);
        assert_int_equal(fclose(o), 0);
        int rc = run_staged_gguf(path, verdict, sizeof(verdict), &table);
        if (rc != 1 || strncmp(verdict, "verdict: REJECTED: ", 19) || !strstr(verdict, f.expect))
            fail_msg("%s: exit %d, '%s', expected REJECTED with '%s'", corpus_cases[i].name, rc,
                     verdict, f.expect);
        unlink(path);
        corpus_file_free(&f);
    }
    /* a file that parses but fails validation still shows its table */
    struct corpus_file f;
    assert_int_equal(corpus_good_model("qwen2", 3, &f), 0);
    snprintf(path, sizeof(path), "%s/good.gguf", dir);
    FILE *o = fopen(path, "wb");
    assert_non_null(o);
    assert_int_equal(fwrite(f.buf, 1, f.len, o), f.len);
    assert_int_equal(fclose(o), 0);
    assert_int_equal(run_staged_gguf(path, verdict, sizeof(verdict), &table), 0);
    assert_non_null(strstr(verdict, "verdict: OK"));
    assert_true(table);
    unlink(path);
    corpus_file_free(&f);
    rmdir(dir);

    const char *p;
    if ((p = model_path("stories260K.gguf"))) {
        assert_int_equal(run_staged_gguf(p, verdict, sizeof(verdict), &table), 0);
        assert_non_null(strstr(verdict, "verdict: OK"));
    }
    if ((p = model_path("vocab/ggml-vocab-qwen2.gguf"))) {
        assert_int_equal(run_staged_gguf(p, verdict, sizeof(verdict), &table), 1);
        assert_non_null(strstr(verdict, "verdict: VOCAB-ONLY"));
    }
    if ((p = model_path("legacy/tinyllamas-stories-260k-f32.gguf"))) {
        assert_int_equal(run_staged_gguf(p, verdict, sizeof(verdict), &table), 1);
        assert_non_null(strstr(verdict, "GGUF version 1 is not supported"));
    }
    assert_int_equal(run_staged_gguf("/nonexistent.gguf", verdict, sizeof(verdict), &table), 1);
    assert_non_null(strstr(verdict, "REJECTED"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus_rejected),
        cmocka_unit_test(test_corpus_expectations_distinct),
        cmocka_unit_test(test_good_models_accepted),
        cmocka_unit_test(test_every_truncation_rejected),
        cmocka_unit_test(test_writer_all_value_types),
        cmocka_unit_test(test_writer_alignment_and_copy),
        cmocka_unit_test(test_header_region_only),
        cmocka_unit_test(test_writer_to_file),
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_legacy_v1_rejected),
        cmocka_unit_test(test_tiny_random),
        cmocka_unit_test(test_vocab_only),
        cmocka_unit_test(test_ref_models),
        cmocka_unit_test(test_all_shared_models),
        cmocka_unit_test(test_staged_gguf_command),
        cmocka_unit_test(test_parse_allocation_failures),
        cmocka_unit_test(test_writer_allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
