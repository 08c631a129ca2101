/*
 * staged-worker - runs the model.
 *
 *   staged-worker eval MODEL.gguf ...       logits of a prompt + greedy steps (cli.h)
 *   staged-worker generate MODEL.gguf ...   sample a continuation (cli.h)
 *   staged-worker serve ...                 the ZeroMQ serving loop (serve_main.h)
 */
#include "gpu_worker/cli.h"
#include "gpu_worker/serve_main.h"

#include <stdio.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr,
            "usage: staged-worker eval|generate|serve ...  (--help after the subcommand)\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage();
    const char *cmd = argv[1];
    if (!strcmp(cmd, "eval")) return cli_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cli_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "serve")) return worker_serve_main(argc - 1, argv + 1);
    /* bare config options: serving is the worker's default mode */
    if (!strncmp(cmd, "--config", 8) || !strcmp(cmd, "--check-config") ||
        !strcmp(cmd, "--print-config"))
        return worker_serve_main(argc, argv);
    return usage();
}
