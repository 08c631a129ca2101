/* make-corpus DIR: write every bad GGUF case of corpus.c into DIR as
 * NAME.gguf, the good base models as good-ARCH-vN.gguf, and DIR/EXPECT
 * (one line per bad file: NAME<TAB>expected message substring). The
 * fuzzer uses DIR as its seed corpus. Exit 0 on success. */
#include "corpus.h"

#include "common/err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int write_file(const char *dir, const char *name, const struct corpus_file *f)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.gguf", dir, name);
    FILE *o = fopen(path, "wb");
    if (!o) {
        fprintf(stderr, "make-corpus: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = fwrite(f->buf, 1, f->len, o);
    if (fclose(o) || n != f->len) {
        fprintf(stderr, "make-corpus: %s: write failed\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make-corpus DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    if (mkdir(dir, 0777) && errno != EEXIST) {
        fprintf(stderr, "make-corpus: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/EXPECT", dir);
    FILE *ex = fopen(path, "w");
    if (!ex) {
        fprintf(stderr, "make-corpus: %s: %s\n", path, strerror(errno));
        return 1;
    }
    int bad = 0;
    for (size_t i = 0; i < corpus_n_cases; i++) {
        struct corpus_file f;
        int rc = corpus_cases[i].build(&f);
        if (rc) {
            fprintf(stderr, "make-corpus: %s: %s\n", corpus_cases[i].name, st_strerror(rc));
            bad = 1;
            continue;
        }
        if (write_file(dir, corpus_cases[i].name, &f)) bad = 1;
        fprintf(ex, "%s\t%s\n", corpus_cases[i].name, f.expect);
        corpus_file_free(&f);
    }
    const char *archs[3] = {"llama", "qwen2", "qwen3"};
    for (int a = 0; a < 3; a++) {
        for (uint32_t v = 2; v <= 3; v++) {
            struct corpus_file f;
            char name[64];
            snprintf(name, sizeof(name), "good-%s-v%u", archs[a], v);
            if (corpus_good_model(archs[a], v, &f) || write_file(dir, name, &f)) bad = 1;
            corpus_file_free(&f);
        }
    }
    if (fclose(ex)) bad = 1;
    printf("make-corpus: %zu bad files and 6 good ones in %s\n", corpus_n_cases, dir);
    return bad;
}
