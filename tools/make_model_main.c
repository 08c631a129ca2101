/* staged-make-model: write a GGUF with random weights in the shape of a real
 * model (see tools/make_model.h), or check one it wrote.
 *
 *   staged-make-model --shape NAME [--type f16|q4_k_m|TYPE] [--seed N]
 *                     [--threads N] [--vocab N] [--vocab-dir DIR] -o OUT.gguf
 *   staged-make-model --plan --shape NAME [--type T]   (metadata and tensor table only)
 *   staged-make-model --check FILE.gguf
 *   staged-make-model --list
 *
 * The vocab folder defaults to $STAGED_MODELS/vocab (STAGED_MODELS defaults
 * to ../shared/models). --vocab N changes the embedding's row count (the
 * tokenizer arrays are padded to it; N below the vocab file's token count is
 * an error). Exit 0 on success, 1 on failure, 2 on bad usage. */
#include "conf/config.h"
#include "tools/make_model.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(void)
{
    fprintf(stderr,
            "usage: staged-make-model --shape NAME [--type f16|q4_k_m|TYPE] [--seed N]\n"
            "                         [--threads N] [--vocab N] [--vocab-dir DIR] -o OUT.gguf\n"
            "       staged-make-model --plan --shape NAME [--type T]\n"
            "       staged-make-model --check FILE.gguf\n"
            "       staged-make-model --list\n");
}

int main(int argc, char **argv)
{
    /* the config plays no part here; --config/--check-config are accepted
     * like every staged program does */
    struct staged_config cfg;
    bool loaded;
    int crc = config_from_args_opt(&argc, argv, &cfg, &loaded);
    if (crc) return crc > 0 ? 0 : 2;
    if (loaded && argc == 1) return 0;
    struct make_model_opts o = {.mix = "q4_k_m", .seed = 1, .n_threads = 2};
    const char *shape = NULL, *check = NULL;
    unsigned long long vocab_rows = 0;
    bool plan = false;
    char vocab_dir[4096];
    const char *models = getenv("STAGED_MODELS");
    snprintf(vocab_dir, sizeof(vocab_dir), "%s/vocab",
             models && *models ? models : "../shared/models");
    o.vocab_dir = vocab_dir;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--list") == 0) {
            make_model_list_shapes(stdout);
            return 0;
        }
        if (strcmp(a, "--plan") == 0) {
            plan = true;
            continue;
        }
        if (!v) {
            usage();
            return 2;
        }
        char *end = NULL;
        if (strcmp(a, "--shape") == 0)
            shape = v;
        else if (strcmp(a, "--type") == 0)
            o.mix = v;
        else if (strcmp(a, "--seed") == 0)
            o.seed = strtoull(v, &end, 0);
        else if (strcmp(a, "--threads") == 0)
            o.n_threads = (int)strtol(v, &end, 10);
        else if (strcmp(a, "--vocab") == 0)
            vocab_rows = strtoull(v, &end, 0);
        else if (strcmp(a, "--vocab-dir") == 0)
            o.vocab_dir = v;
        else if (strcmp(a, "-o") == 0)
            o.out = v;
        else if (strcmp(a, "--check") == 0)
            check = v;
        else {
            usage();
            return 2;
        }
        if (end && (*end || end == v)) {
            fprintf(stderr, "staged-make-model: %s: not a number: %s\n", a, v);
            return 2;
        }
        i++;
    }
    struct st_errbuf eb = {{0}};
    if (check) {
        if (make_model_check(check, stdout, &eb)) {
            fprintf(stderr, "staged-make-model: %s\n", eb.msg);
            return 1;
        }
        return 0;
    }
    if (!shape || (!o.out && !plan) || o.n_threads < 1 || o.n_threads > 16) {
        usage();
        return 2;
    }
    if (!(o.shape = make_model_shape(shape))) {
        fprintf(stderr, "staged-make-model: unknown shape '%s'; shapes:\n", shape);
        make_model_list_shapes(stderr);
        return 2;
    }
    struct mm_shape custom;
    if (vocab_rows) { /* the shape with another embedding row count */
        if (vocab_rows > (1u << 24)) {
            fprintf(stderr, "staged-make-model: --vocab %llu: at most 16777216\n", vocab_rows);
            return 2;
        }
        custom = *o.shape;
        custom.n_vocab = (uint32_t)vocab_rows;
        o.shape = &custom;
    }
    if (plan) {
        if (make_model_plan(&o, stdout, &eb)) {
            fprintf(stderr, "staged-make-model: %s\n", eb.msg);
            return 1;
        }
        return 0;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (make_model_write(&o, &eb)) {
        fprintf(stderr, "staged-make-model: %s\n", eb.msg);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("staged-make-model: wrote %s (%s, %s, seed %llu) in %.1f s\n", o.out, shape, o.mix,
           (unsigned long long)o.seed,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    return 0;
}
