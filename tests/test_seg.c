/* Tests of shm/seg.c: staging stories260K into a segment, attaching
 * read-only, re-attaching with 0 file bytes read, and rejecting or
 * rebuilding damaged / stale segments. */
#include "common/wsum.h"
#include "shm/seg.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char seg_name[64];
static char model_path[512];

static int setup(void **state)
{
    snprintf(seg_name, sizeof(seg_name), "/staged-test-seg-%d", (int)getpid());
    const char *m = getenv("STAGED_MODELS");
    snprintf(model_path, sizeof(model_path), "%s/stories260K.gguf", m ? m : "../shared/models");
    seg_unlink(seg_name);
    return 0;
}

static int teardown(void **state)
{
    seg_unlink(seg_name);
    return 0;
}

static void corrupt_byte(uint64_t off)
{
    int fd = shm_open(seg_name, O_RDWR, 0);
    assert_true(fd >= 0);
    struct stat st;
    fstat(fd, &st);
    uint8_t *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(p != MAP_FAILED);
    p[off] ^= 0x40;
    munmap(p, (size_t)st.st_size);
}

static void test_stage_and_attach(void **state)
{
    struct seg *w, *r;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    assert_int_equal(seg_stage(seg_name, model_path, true, NULL, NULL, &w, &stats, &eb), 0);
    assert_false(stats.reattached);
    struct stat st;
    assert_int_equal(stat(model_path, &st), 0);
    assert_int_equal(stats.file_bytes_read, (uint64_t)st.st_size); /* each byte read once */
    const struct seg_header *h = seg_header(w);
    assert_int_equal(h->n_tensors, 48);
    assert_int_equal(h->data_off % SEG_DATA_ALIGN, 0);
    assert_int_equal(h->hp.dim, 64);

    /* mode 0600 */
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm%s", seg_name);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    assert_int_equal(seg_attach(seg_name, true, &r, &eb), 0);
    struct st_model *m = seg_model(r);
    struct model_tensor t;
    assert_true(model_tensor(m, "blk.4.ffn_down.weight", &t));
    assert_int_equal(t.ne[0], 172);
    /* the tensor bytes equal the file's */
    struct st_model *fm;
    assert_int_equal(model_open_file(model_path, &fm, &eb), 0);
    struct model_tensor ft;
    assert_true(model_tensor(fm, "blk.4.ffn_down.weight", &ft));
    assert_memory_equal(t.data, ft.data, t.size);
    assert_int_equal(seg_dir(r)[0].wsum, wsum64(seg_data(r) + seg_dir(r)[0].offset, seg_dir(r)[0].size));
    model_close(&fm);
    seg_detach(&r);
    seg_detach(&w);

    /* a second staging re-attaches without reading the file */
    assert_int_equal(seg_stage(seg_name, model_path, true, NULL, NULL, &w, &stats, &eb), 0);
    assert_true(stats.reattached);
    assert_int_equal(stats.file_bytes_read, 0);
    seg_detach(&w);
}

static void test_damaged_segment_rebuilt(void **state)
{
    struct seg *w, *r;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    assert_int_equal(seg_stage(seg_name, model_path, true, NULL, NULL, &w, &stats, &eb), 0);
    uint64_t data_off = seg_header(w)->data_off;
    seg_detach(&w);

    corrupt_byte(data_off + 1000); /* a weight byte */
    assert_int_equal(seg_attach(seg_name, true, &r, &eb), ST_EINTEGRITY);
    assert_non_null(strstr(eb.msg, "checksum mismatch"));
    assert_int_equal(seg_stage(seg_name, model_path, true, NULL, NULL, &w, &stats, &eb), 0);
    assert_false(stats.reattached);
    assert_true(stats.file_bytes_read > 0);
    seg_detach(&w);

    corrupt_byte(70); /* inside the header */
    assert_int_equal(seg_attach(seg_name, false, &r, &eb), ST_EINTEGRITY);
    assert_non_null(strstr(eb.msg, "header checksum"));
    corrupt_byte(0); /* magic */
    assert_int_equal(seg_attach(seg_name, false, &r, &eb), ST_EFORMAT);
    assert_non_null(strstr(eb.msg, "bad magic"));
}

static void test_other_file_rebuilt(void **state)
{
    struct seg *w;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    assert_int_equal(seg_stage(seg_name, model_path, true, NULL, NULL, &w, &stats, &eb), 0);
    seg_detach(&w);
    /* same bytes, another file: identity differs, so the segment is rebuilt */
    char copy[] = "/tmp/staged-test-seg-model-XXXXXX";
    int fd = mkstemp(copy);
    assert_true(fd >= 0);
    int in = open(model_path, O_RDONLY);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0) assert_int_equal(write(fd, buf, (size_t)n), n);
    close(in);
    close(fd);
    assert_int_equal(seg_stage(seg_name, copy, true, NULL, NULL, &w, &stats, &eb), 0);
    assert_false(stats.reattached);
    seg_detach(&w);
    unlink(copy);
}

static void test_missing_and_bad_file(void **state)
{
    struct seg *r;
    struct seg_stats stats;
    struct st_errbuf eb = {{0}};
    assert_int_equal(seg_attach("/staged-test-does-not-exist", false, &r, &eb), ST_ENOTFOUND);
    char bad[] = "/tmp/staged-test-seg-bad-XXXXXX";
    int fd = mkstemp(bad);
    assert_int_equal(write(fd, "GGUF\x03\0\0\0", 8), 8);
    close(fd);
    assert_int_equal(seg_stage(seg_name, bad, true, NULL, NULL, &r, &stats, &eb), ST_EFORMAT);
    assert_non_null(strstr(eb.msg, "file ends"));
    unlink(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stage_and_attach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_segment_rebuilt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_file_rebuilt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_bad_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
