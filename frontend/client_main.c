/*
 * staged-client: command-line client of the staged frontend (frontend/client.h).
 *
 *   staged-client generate [options] PROMPT   stream the completion to stdout
 *   staged-client chat [options]              interactive chat on stdin/stdout
 *   staged-client health|models|stats         print the frontend's reply (JSON)
 *
 * Exit status: 0 when the request ended with stop or length, 1 on an error
 * (the reason on stderr) or a cancelled request, 2 on bad usage or config.
 */
#include "common/log.h"
#include "conf/config.h"
#include "frontend/client.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: staged-client generate [options] PROMPT\n"
               "       staged-client chat [options]\n"
               "       staged-client health|models|stats [--endpoint E] [--config FILE]\n"
               "options:\n"
               "  --seed N --max-tokens N --temperature X (0 = greedy) --top-k N --top-p X\n"
               "  --min-p X --repeat-penalty X --repeat-last-n N --presence-penalty X\n"
               "  --frequency-penalty X --stop S (repeatable) --logprobs N --no-stream\n"
               "  --timeout MS (request deadline) --json (print the raw final message)\n"
               "  --system TEXT (chat: system message) --idle-timeout MS (library idle timeout)\n"
               "  --verbose (log the library's status queries and resubmissions to stderr)\n"
               "  --endpoint E | --config FILE (default: [frontend] endpoint of the config)\n");
}

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* What the main thread waits for: the request's terminal event. */
struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    bool ok; /* finished with stop or length */
    bool print_chunks;
    bool json;
    char *text; /* final text (owned) */
    char err[512];
};

static void on_event(const struct client_event *ev)
{
    struct waiter *w = ev->user;
    if (ev->type == CLIENT_CHUNK) {
        if (w->print_chunks) {
            fwrite(ev->text, 1, ev->len, stdout);
            fflush(stdout);
        }
        return;
    }
    pthread_mutex_lock(&w->mu);
    if (ev->type == CLIENT_FINAL) {
        w->ok = !strcmp(ev->finish_reason, "stop") || !strcmp(ev->finish_reason, "length");
        w->text = strndup(ev->text, ev->len);
        if (!w->ok)
            snprintf(w->err, sizeof(w->err), "request ended: %s%s%s%s", ev->finish_reason,
                     ev->code ? " (" : "", ev->code ? ev->code : "", ev->code ? ")" : "");
        if (ev->message)
            snprintf(w->err + strlen(w->err), sizeof(w->err) - strlen(w->err), ": %s", ev->message);
    } else {
        w->ok = false;
        snprintf(w->err, sizeof(w->err), "request rejected: %s: %s", ev->code, ev->message);
    }
    if (w->json) {
        if (ev->msg) {
            char *s = json_dumps(ev->msg, JSON_COMPACT);
            if (s) puts(s);
            free(s);
        } else {
            json_t *j =
                json_pack("{s:s,s:s?,s:{s:s,s:s}}", "type", "error", "finish_reason",
                          ev->finish_reason, "error", "code", ev->code, "message", ev->message);
            char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
            if (s) puts(s);
            free(s);
            json_decref(j);
        }
    }
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Submit params and wait for the end. Returns 0 if it ended with stop/length. */
static int run_request(struct client *c, json_t *params, struct waiter *w)
{
    struct st_errbuf eb = {{0}};
    uint64_t req;
    w->done = false;
    w->ok = false;
    free(w->text);
    w->text = NULL;
    w->err[0] = 0;
    if (client_submit(c, params, on_event, w, &req, &eb)) {
        fprintf(stderr, "staged-client: %s\n", eb.msg);
        return -1;
    }
    bool cancel_sent = false;
    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 100000000L;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cv, &w->mu, &t);
        if (interrupted && !cancel_sent) {
            cancel_sent = true;
            client_cancel(c, req);
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (!w->ok) fprintf(stderr, "staged-client: %s\n", w->err);
    return w->ok ? 0 : -1;
}

static bool parse_num(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool parse_int(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

/* Read one line of any length; returns NULL at EOF. Caller frees. */
static char *read_line(FILE *f)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    return line;
}

static int do_chat(struct client *c, json_t *params, const char *system, bool stream,
                   struct waiter *w)
{
    json_t *history = json_array();
    if (system)
        json_array_append_new(history, json_pack("{s:s,s:s}", "role", "system", "content", system));
    bool tty = isatty(0);
    int rc = 0;
    for (;;) {
        if (tty) fprintf(stderr, "> ");
        char *line = read_line(stdin);
        if (!line) break;
        if (!line[0]) {
            free(line);
            continue;
        }
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) {
            free(line);
            break;
        }
        json_array_append_new(history, json_pack("{s:s,s:s}", "role", "user", "content", line));
        free(line);
        json_object_set(params, "messages", history);
        interrupted = 0;
        if (run_request(c, params, w)) {
            rc = -1;
            json_array_remove(history, json_array_size(history) - 1);
            if (!tty) break; /* scripted chats stop at the first failure */
            continue;
        }
        if (!stream && !w->json) fputs(w->text, stdout);
        if (!w->json) fputc('\n', stdout); /* --json: one final message per line already */
        fflush(stdout);
        json_array_append_new(history,
                              json_pack("{s:s,s:s}", "role", "assistant", "content", w->text));
    }
    json_decref(history);
    return rc;
}

int main(int argc, char **argv)
{
    log_set_name("client");
    log_min_level = LOG_WARN;
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--check-config") || !strcmp(cmd, "--print-config") ||
        !strncmp(cmd, "--config", 8)) {
        /* only the configuration: check it (or print it) and stop */
        struct staged_config cfg;
        bool loaded;
        int rc = config_from_args_opt(&argc, argv, &cfg, &loaded);
        if (rc) return rc > 0 ? 0 : 2;
        fprintf(stderr, "staged-client: a command is needed (generate, chat, health, models, stats)\n");
        return 2;
    }
    bool is_gen = !strcmp(cmd, "generate"), is_chat = !strcmp(cmd, "chat");
    bool is_query = !strcmp(cmd, "health") || !strcmp(cmd, "models") || !strcmp(cmd, "stats");
    if (!is_gen && !is_chat && !is_query) {
        fprintf(stderr, "staged-client: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }

    /* --endpoint and --config first: a given endpoint needs no config file */
    const char *endpoint = NULL;
    bool have_config = getenv("STAGED_CONFIG") != NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--endpoint") && i + 1 < argc) endpoint = argv[i + 1];
        if (!strcmp(argv[i], "--config") || !strncmp(argv[i], "--config=", 9)) have_config = true;
    }
    struct staged_config cfg;
    int cargc = argc - 1;
    char **cargv = argv + 1; /* config_from_args skips [0]: the command name */
    if (!endpoint || have_config) {
        int rc = config_from_args(&cargc, cargv, &cfg);
        if (rc) return rc > 0 ? 0 : 2;
        if (!endpoint) endpoint = cfg.frontend.endpoint;
    }

    json_t *params = json_object();
    json_t *stop = json_array();
    const char *prompt = NULL, *system = NULL;
    bool stream = true, json_out = false;
    long long idle = 0;
    for (int i = 1; i < cargc; i++) {
        const char *a = cargv[i];
        const char *v = i + 1 < cargc ? cargv[i + 1] : NULL;
        double x;
        long long n;
        static const struct {
            const char *opt, *key;
            bool is_int;
        } opts[] = {
            {"--seed", "seed", true},
            {"--max-tokens", "max_tokens", true},
            {"--temperature", "temperature", false},
            {"--top-k", "top_k", true},
            {"--top-p", "top_p", false},
            {"--min-p", "min_p", false},
            {"--repeat-penalty", "repeat_penalty", false},
            {"--repeat-last-n", "repeat_last_n", true},
            {"--presence-penalty", "presence_penalty", false},
            {"--frequency-penalty", "frequency_penalty", false},
            {"--timeout", "timeout_ms", true},
            {"--logprobs", "top_logprobs", true},
        };
        bool matched = false;
        for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]); k++) {
            if (strcmp(a, opts[k].opt)) continue;
            matched = true;
            if (!v) {
                fprintf(stderr, "staged-client: %s needs a value\n", a);
                goto usage_error;
            }
            if (opts[k].is_int ? !parse_int(v, &n) : !parse_num(v, &x)) {
                fprintf(stderr, "staged-client: %s: '%s' is not %s\n", a, v,
                        opts[k].is_int ? "an integer" : "a number");
                goto usage_error;
            }
            json_object_set_new(params, opts[k].key,
                                opts[k].is_int ? json_integer(n) : json_real(x));
            if (!strcmp(opts[k].key, "top_logprobs"))
                json_object_set_new(params, "logprobs", json_true());
            i++;
        }
        if (matched) continue;
        if (!strcmp(a, "--stop") && v) {
            json_array_append_new(stop, json_string(v));
            i++;
        } else if (!strcmp(a, "--endpoint") && v) {
            i++;
        } else if (!strcmp(a, "--system") && v) {
            system = v;
            i++;
        } else if (!strcmp(a, "--idle-timeout") && v) {
            if (!parse_int(v, &idle) || idle < 1 || idle > 3600000) {
                fprintf(stderr, "staged-client: --idle-timeout: '%s' is not 1..3600000\n", v);
                goto usage_error;
            }
            i++;
        } else if (!strcmp(a, "--no-stream")) {
            stream = false;
        } else if (!strcmp(a, "--json")) {
            json_out = true;
        } else if (!strcmp(a, "--verbose")) {
            log_min_level = LOG_INFO; /* e.g. the library's resubmission notices */
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "staged-client: unknown option '%s'\n", a);
            usage(stderr);
            goto usage_error;
        } else if (is_gen && !prompt) {
            prompt = a;
        } else {
            fprintf(stderr, "staged-client: unexpected argument '%s'\n", a);
            goto usage_error;
        }
    }
    if (is_gen && !prompt) {
        fprintf(stderr, "staged-client: generate needs a PROMPT\n");
        goto usage_error;
    }
    if (json_array_size(stop)) json_object_set(params, "stop", stop);
    json_decref(stop);
    json_object_set_new(params, "stream", json_boolean(stream));
    if (is_gen) json_object_set_new(params, "prompt", json_string(prompt));

    struct client_opts co = {.endpoint = endpoint, .idle_timeout_ms = (int)idle};
    struct client *c;
    struct st_errbuf eb = {{0}};
    if (client_new(&co, &c, &eb)) {
        fprintf(stderr, "staged-client: %s\n", eb.msg);
        json_decref(params);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 0;
    if (is_query) {
        json_t *r = client_call(c, cmd, 5000);
        if (!r) {
            fprintf(stderr, "staged-client: no answer from %s within 5000 ms\n", endpoint);
            rc = 1;
        } else {
            char *s = json_dumps(r, JSON_COMPACT);
            puts(s);
            free(s);
            rc = json_object_get(r, "error") ? 1 : 0;
            json_decref(r);
        }
    } else {
        struct waiter w = {.print_chunks = stream && !json_out, .json = json_out};
        pthread_mutex_init(&w.mu, NULL);
        pthread_cond_init(&w.cv, NULL);
        if (is_gen) {
            rc = run_request(c, params, &w) ? 1 : 0;
            if (!rc && !stream && !json_out) fputs(w.text, stdout);
            if (!rc && !json_out && isatty(1)) fputc('\n', stdout);
        } else {
            rc = do_chat(c, params, system, stream, &w) ? 1 : 0;
        }
        fflush(stdout);
        free(w.text);
        pthread_cond_destroy(&w.cv);
        pthread_mutex_destroy(&w.mu);
    }
    client_destroy(&c);
    json_decref(params);
    return rc;

usage_error:
    json_decref(params);
    json_decref(stop);
    return 2;
}
