/*
 * staged-loadgen: drive a deployment with many concurrent streaming
 * requests over the raw client protocol (docs/protocol.md) and record what
 * came back. Used by the pipeline and fault-injection tests and for
 * measuring recovery time.
 *
 *   staged-loadgen [--config FILE] [--endpoint E] [--n N] [--prompt TEXT] [--max-tokens M]
 *                  [--seed S] [--temperature T] [--out DIR] [--timeout-ms MS]
 *                  [--stagger-ms MS] [--cancel-after-ms MS] [--idle-ms MS] [--stop S]
 *   staged-loadgen --endpoint E --garbage
 *
 * Request i uses seed S+i. With --out, writes DIR/i.txt (the completion, as
 * concatenated stream chunks), DIR/i.final (the final message) and
 * DIR/arrivals (one line per chunk that delivered new bytes: epoch-ms request). Checks that chunk
 * seq numbers and byte offsets are contiguous and that the streamed text
 * equals the final text. Like the C client library, it survives a frontend
 * restart: a request silent for --idle-ms (default 1500) is resubmitted with
 * the same seed, and chunks whose bytes were already received are skipped by
 * offset. --cancel-after-ms cancels every request after that time.
 * Prints one summary line with the count of each finish reason; exit 0 if
 * every request ended with stop or length (cancelled too with
 * --cancel-after-ms) and every check held.
 *
 * --garbage sends malformed messages of every kind (wrong frame counts, bad
 * JSON, invalid UTF-8, unknown fields, absurd parameters, oversize prompts)
 * and checks that each gets an error reply naming the problem.
 */
#include "common/proto.h"
#include "conf/config.h"

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
    char id[16];
    char *req;              /* the generate message, for resubmission */
    int64_t last_heard;
    int resubmits;
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

static void send_str(void *s, const char *txt, size_t len, int flags)
{
    zmq_send(s, txt, len, flags);
}

static void send_req(void *s, struct rq *r)
{
    send_str(s, r->req, strlen(r->req), 0);
    r->last_heard = epoch_ms();
}

/* Malformed messages: each must get an error reply with the expected code. */
static int garbage(void *s)
{
    static char big[300000];
    memset(big, 'a', sizeof(big) - 1);
    char oversize[310000];
    snprintf(oversize, sizeof(oversize),
             "{\"op\":\"generate\",\"id\":\"g-big\",\"prompt\":\"%s\"}", big);
    struct {
        const char *frames[3];
        int n_frames;
        const char *want;
    } cases[] = {
        {{"{\"op\":\"generate\",\"id\":\"g1\",\"prompt\":\"x\"}", "extra"}, 2, "bad_request"},
        {{""}, 1, "bad_request"},
        {{"{not json"}, 1, "bad_request"},
        {{"[1,2,3]"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g2\",\"prompt\":\"\xff\xfe\"}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g3\",\"prompt\":\"x\",\"bogus\":1}"}, 1, "unknown_field"},
        {{"{\"op\":\"generate\",\"id\":\"g4\",\"prompt\":\"x\",\"max_tokens\":-5}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g5\",\"prompt\":\"x\",\"temperature\":1e300}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g6\",\"prompt\":\"x\",\"top_p\":\"high\"}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g7\"}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g8\",\"prompt\":\"x\",\"messages\":[]}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g9\",\"messages\":[{\"role\":\"god\",\"content\":\"x\"}]}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g10\",\"prompt\":\"x\",\"stop\":[1]}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g11\",\"prompt\":\"x\",\"max_tokens\":99999999}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"\",\"prompt\":\"x\"}"}, 1, "bad_request"},
        {{"{\"op\":\"launch\",\"id\":\"g12\"}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g13\",\"prompt\":\"x\",\"proto\":2}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g14\",\"prompt\":\"x\",\"seed\":-1}"}, 1, "bad_request"},
        {{"{\"op\":\"generate\",\"id\":\"g15\",\"prompt\":\"a\\u0000b\"}"}, 1, "bad_request"},
        {{oversize}, 1, "too_large"},
    };
    int n = (int)(sizeof(cases) / sizeof(cases[0])), ok = 0;
    for (int i = 0; i < n; i++) {
        for (int f = 0; f < cases[i].n_frames; f++)
            send_str(s, cases[i].frames[f], strlen(cases[i].frames[f]),
                     f + 1 < cases[i].n_frames ? ZMQ_SNDMORE : 0);
        zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 3000) <= 0) {
            printf("garbage case %d: no reply\n", i);
            continue;
        }
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, s, 0);
        json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
        zmq_msg_close(&m);
        const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        if (code && !strcmp(code, cases[i].want)) ok++;
        else printf("garbage case %d: want %s, got %s\n", i, cases[i].want, code ? code : "(none)");
        printf("  case %2d -> %s: %s\n", i, code ? code : "-", msg ? msg : "-");
        json_decref(j);
    }
    printf("garbage: %d of %d malformed messages answered with the expected error\n", ok, n);
    return ok == n ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct staged_config cfg;
    bool use_config;
    int crc = config_from_args_opt(&argc, argv, &cfg, &use_config);
    if (crc) return crc > 0 ? 0 : 2;
    const char *endpoint = use_config ? cfg.frontend.endpoint : NULL, *prompt = "Once upon a time", *out = NULL, *stop = NULL;
    int n = 8, max_tokens = 64, stagger = 0, cancel_after = -1, idle_ms = 1500;
    long long seed = 1, timeout = 60000;
    double temperature = 0.8;
    bool do_garbage = false;
    static struct option opts[] = {{"endpoint", 1, 0, 'e'},   {"n", 1, 0, 'n'},
                                   {"prompt", 1, 0, 'p'},     {"max-tokens", 1, 0, 'm'},
                                   {"seed", 1, 0, 's'},       {"temperature", 1, 0, 't'},
                                   {"out", 1, 0, 'o'},        {"timeout-ms", 1, 0, 'T'},
                                   {"stagger-ms", 1, 0, 'g'}, {"cancel-after-ms", 1, 0, 'c'},
                                   {"idle-ms", 1, 0, 'i'},    {"garbage", 0, 0, 'G'},
                                   {"stop", 1, 0, 'S'},
                                   {0, 0, 0, 0}};
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
        case 'c': cancel_after = atoi(optarg); break;
        case 'i': idle_ms = atoi(optarg); break;
        case 'G': do_garbage = true; break;
        case 'S': stop = optarg; break;
        default: return 2;
        }
    }
    if (!endpoint || n < 1) {
        fprintf(stderr, "usage: staged-loadgen --endpoint E [--n N] [options]\n");
        return 2;
    }
    void *z = zmq_ctx_new();
    void *s = proto_connect(z, endpoint);
    if (do_garbage) {
        int rc = garbage(s);
        zmq_close(s);
        zmq_ctx_term(z);
        return rc;
    }
    FILE *arrivals = NULL;
    if (out) {
        mkdir(out, 0755);
        char path[1024];
        snprintf(path, sizeof(path), "%s/arrivals", out);
        arrivals = fopen(path, "w");
    }
    struct rq *rs = calloc((size_t)n, sizeof(*rs));
    int64_t t0 = epoch_ms();
    for (int i = 0; i < n; i++) {
        snprintf(rs[i].id, sizeof(rs[i].id), "%d", i);
        json_t *req = json_pack("{s:i,s:s,s:s,s:s,s:i,s:b,s:I,s:f,s:I}", "proto", 1, "op",
                                "generate", "id", rs[i].id, "prompt", prompt, "max_tokens",
                                max_tokens, "stream", 1, "seed", (json_int_t)(seed + i),
                                "temperature", temperature, "timeout_ms", (json_int_t)timeout);
        if (stop) json_object_set_new(req, "stop", json_pack("[s]", stop));
        rs[i].req = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        send_req(s, &rs[i]);
        if (stagger) {
            struct timespec d = {stagger / 1000, (stagger % 1000) * 1000000L};
            nanosleep(&d, NULL);
        }
    }
    int n_done = 0, n_ok = 0, n_bad = 0, n_resub = 0;
    int counts[5] = {0}; /* stop length cancelled error other */
    int64_t max_gap = 0, last = epoch_ms();
    bool cancelled = false;
    while (n_done < n && epoch_ms() - t0 < timeout + 10000) {
        int64_t now = epoch_ms();
        if (cancel_after >= 0 && !cancelled && now - t0 >= cancel_after) {
            for (int i = 0; i < n; i++) {
                char m[64];
                snprintf(m, sizeof(m), "{\"op\":\"cancel\",\"id\":\"%s\"}", rs[i].id);
                if (!rs[i].done) send_str(s, m, strlen(m), 0);
            }
            cancelled = true;
        }
        for (int i = 0; i < n; i++) {
            struct rq *r = &rs[i];
            if (r->done || now - r->last_heard < idle_ms) continue;
            /* silent: the frontend may have restarted; resubmit (a duplicate
             * is answered duplicate_id and ignored) */
            send_req(s, r);
            r->resubmits++;
            n_resub++;
        }
        zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 100) <= 0) continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
        zmq_msg_close(&m);
        now = epoch_ms();
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *type = json_string_value(json_object_get(j, "type"));
        int i = id ? atoi(id) : -1;
        if (!j || i < 0 || i >= n || !type || rs[i].done) {
            json_decref(j);
            continue;
        }
        struct rq *r = &rs[i];
        r->last_heard = now;
        const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
        if (!strcmp(type, "error") && code && !strcmp(code, "duplicate_id")) {
            json_decref(j); /* our resubmission raced the original: it is alive */
            continue;
        }
        if (!strcmp(type, "chunk")) {
            if (now - last > max_gap) max_gap = now - last;
            last = now;
            size_t off = (size_t)json_integer_value(json_object_get(j, "offset"));
            json_t *t = json_object_get(j, "text");
            size_t tl = json_string_length(t);
            if (off > r->len) {
                r->bad = true;
                snprintf(r->why, sizeof(r->why), "gap: chunk at offset %zu, have %zu bytes", off,
                         r->len);
            } else if (off + tl > r->len) {
                /* skip bytes already received (a resubmission replays them) */
                if (memcmp(json_string_value(t), r->text ? r->text + off : "", r->len - off)) {
                    r->bad = true;
                    snprintf(r->why, sizeof(r->why), "replayed bytes differ at offset %zu", off);
                }
                append(r, json_string_value(t) + (r->len - off), off + tl - r->len);
                if (arrivals) fprintf(arrivals, "%" PRId64 " %d\n", now, i); /* new bytes */
            }
            r->seq++;
        } else if (!strcmp(type, "status")) {
            /* informational */
        } else {
            r->done = true;
            n_done++;
            const char *reason = json_string_value(json_object_get(j, "finish_reason"));
            snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : code ? code : type);
            int k = !strcmp(r->reason, "stop") ? 0 : !strcmp(r->reason, "length") ? 1
                    : !strcmp(r->reason, "cancelled") ? 2 : !strcmp(r->reason, "error") ? 3 : 4;
            counts[k]++;
            json_t *ft = json_object_get(j, "text");
            if (!strcmp(type, "final") && (json_string_length(ft) != r->len ||
                                           memcmp(json_string_value(ft), r->text ? r->text : "", r->len))) {
                r->bad = true;
                snprintf(r->why, sizeof(r->why), "streamed text differs from the final text");
            }
            bool good = k <= 1 || (k == 2 && cancel_after >= 0);
            if (!r->bad && good) n_ok++;
            else {
                n_bad++;
                char *dump = json_dumps(j, JSON_COMPACT);
                fprintf(stderr, "request %d: %s %.300s\n", i, r->why, dump);
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
    printf("loadgen: %d requests, %d ok, %d failed, %d unfinished, %.2f s, resubmitted %d; "
           "stop=%d length=%d cancelled=%d error=%d other=%d; max gap between chunks %" PRId64
           " ms\n",
           n, n_ok, n_bad, n - n_done, total / 1000.0, n_resub, counts[0], counts[1], counts[2],
           counts[3], counts[4], max_gap);
    if (arrivals) fclose(arrivals);
    for (int i = 0; i < n; i++) {
        free(rs[i].text);
        free(rs[i].req);
    }
    free(rs);
    zmq_close(s);
    zmq_ctx_term(z);
    return n_ok == n ? 0 : 1;
}
