/*
 * staged-loadgen: drive a deployment with many concurrent streaming
 * requests over the raw client protocol (docs/protocol.md) and record what
 * came back. Used by the pipeline and fault-injection tests and for
 * measuring recovery time.
 *
 *   staged-loadgen --endpoint E [--n N] [--prompt TEXT] [--max-tokens M]
 *                  [--seed S] [--temperature T] [--out DIR] [--timeout-ms MS]
 *                  [--stagger-ms MS]
 *
 * Request i uses seed S+i. With --out, writes DIR/i.txt (the completion, as
 * concatenated stream chunks), DIR/i.final (the final message) and
 * DIR/arrivals (one line per chunk: epoch-ms request seq). Checks that chunk
 * seq numbers and byte offsets are contiguous and that the streamed text
 * equals the final text. Prints one summary line; exit 0 if every request
 * ended with stop or length and every check held.
 */
#include "common/proto.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zmq.h>

struct rq {
    char *text;
    size_t len, cap;
    int seq;
    bool done;
    char reason[32];
    bool bad;
    char why[200];
};

static int64_t epoch_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void append(struct rq *r, const char *s, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        r->cap = (r->len + n + 1) * 2;
        r->text = realloc(r->text, r->cap);
    }
    memcpy(r->text + r->len, s, n);
    r->len += n;
    r->text[r->len] = 0;
}

static void write_file(const char *dir, int i, const char *ext, const char *s, size_t n)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%d.%s", dir, i, ext);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fwrite(s, 1, n, f);
    fclose(f);
}

int main(int argc, char **argv)
{
    const char *endpoint = NULL, *prompt = "Once upon a time", *out = NULL;
    int n = 8, max_tokens = 64, stagger = 0;
    long long seed = 1, timeout = 60000;
    double temperature = 0.8;
    static struct option opts[] = {{"endpoint", 1, 0, 'e'}, {"n", 1, 0, 'n'},
                                   {"prompt", 1, 0, 'p'},   {"max-tokens", 1, 0, 'm'},
                                   {"seed", 1, 0, 's'},     {"temperature", 1, 0, 't'},
                                   {"out", 1, 0, 'o'},      {"timeout-ms", 1, 0, 'T'},
                                   {"stagger-ms", 1, 0, 'g'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'e': endpoint = optarg; break;
        case 'n': n = atoi(optarg); break;
        case 'p': prompt = optarg; break;
        case 'm': max_tokens = atoi(optarg); break;
        case 's': seed = atoll(optarg); break;
        case 't': temperature = atof(optarg); break;
        case 'o': out = optarg; break;
        case 'T': timeout = atoll(optarg); break;
        case 'g': stagger = atoi(optarg); break;
        default: return 2;
        }
    }
    if (!endpoint || n < 1) {
        fprintf(stderr, "usage: staged-loadgen --endpoint E [--n N] [options]\n");
        return 2;
    }
    FILE *arrivals = NULL;
    if (out) {
        mkdir(out, 0755);
        char path[1024];
        snprintf(path, sizeof(path), "%s/arrivals", out);
        arrivals = fopen(path, "w");
    }
    void *z = zmq_ctx_new();
    void *s = proto_connect(z, endpoint);
    struct rq *rs = calloc((size_t)n, sizeof(*rs));
    int64_t t0 = epoch_ms();
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof(id), "%d", i);
        json_t *req = json_pack("{s:i,s:s,s:s,s:s,s:i,s:b,s:I,s:f,s:I}", "proto", 1, "op",
                                "generate", "id", id, "prompt", prompt, "max_tokens", max_tokens,
                                "stream", 1, "seed", (json_int_t)(seed + i), "temperature",
                                temperature, "timeout_ms", (json_int_t)timeout);
        char *txt = json_dumps(req, JSON_COMPACT);
        zmq_send(s, txt, strlen(txt), 0);
        free(txt);
        json_decref(req);
        if (stagger) {
            struct timespec d = {stagger / 1000, (stagger % 1000) * 1000000L};
            nanosleep(&d, NULL);
        }
    }
    int n_done = 0, n_ok = 0, n_bad = 0;
    int64_t max_gap = 0;
    int64_t last = epoch_ms();
    while (n_done < n && epoch_ms() - t0 < timeout + 5000) {
        zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 200) <= 0) continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
        zmq_msg_close(&m);
        int64_t now = epoch_ms();
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *type = json_string_value(json_object_get(j, "type"));
        int i = id ? atoi(id) : -1;
        if (!j || i < 0 || i >= n || !type || rs[i].done) {
            json_decref(j);
            continue;
        }
        struct rq *r = &rs[i];
        if (!strcmp(type, "chunk")) {
            if (now - last > max_gap) max_gap = now - last;
            last = now;
            int seq = (int)json_integer_value(json_object_get(j, "seq"));
            size_t off = (size_t)json_integer_value(json_object_get(j, "offset"));
            json_t *t = json_object_get(j, "text");
            if (seq != r->seq || off != r->len) {
                r->bad = true;
                snprintf(r->why, sizeof(r->why), "chunk seq %d offset %zu, expected %d / %zu", seq,
                         off, r->seq, r->len);
            }
            r->seq++;
            append(r, json_string_value(t), json_string_length(t));
            if (arrivals) fprintf(arrivals, "%" PRId64 " %d %d\n", now, i, seq);
        } else {
            r->done = true;
            n_done++;
            const char *reason = json_string_value(json_object_get(j, "finish_reason"));
            snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : type);
            json_t *ft = json_object_get(j, "text");
            if (!strcmp(type, "final") &&
                (json_string_length(ft) != r->len || memcmp(json_string_value(ft), r->text ? r->text : "", r->len))) {
                r->bad = true;
                snprintf(r->why, sizeof(r->why), "streamed text differs from the final text");
            }
            if (!r->bad && (!strcmp(r->reason, "stop") || !strcmp(r->reason, "length"))) n_ok++;
            else {
                n_bad++;
                char *dump = json_dumps(j, JSON_COMPACT);
                fprintf(stderr, "request %d: %s %s\n", i, r->why, dump);
                free(dump);
            }
            if (out) {
                char *dump = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
                write_file(out, i, "final", dump, strlen(dump));
                free(dump);
                write_file(out, i, "txt", r->text ? r->text : "", r->len);
            }
        }
        json_decref(j);
    }
    int64_t total = epoch_ms() - t0;
    printf("loadgen: %d requests, %d ok, %d failed, %d unfinished, %.2f s, max gap between "
           "chunks %" PRId64 " ms\n",
           n, n_ok, n_bad, n - n_done, total / 1000.0, max_gap);
    if (arrivals) fclose(arrivals);
    for (int i = 0; i < n; i++) free(rs[i].text);
    free(rs);
    zmq_close(s);
    zmq_ctx_term(z);
    return n_ok == n ? 0 : 1;
}
