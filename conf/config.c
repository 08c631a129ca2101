#include "config.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum key_type { K_STR, K_INT, K_BOOL, K_ENUM };

struct key_desc {
    const char *section;
    const char *key;
    enum key_type type;
    size_t off;   /* offset in struct staged_config */
    size_t size;  /* for strings: capacity */
    int64_t min, max;
    const char *dflt;
    const char *choices; /* K_ENUM: "a|b|c" */
    bool required;
};

#define OFF(f) offsetof(struct staged_config, f)
#define SZ(f) sizeof(((struct staged_config *)0)->f)
#define STR(s, k, f, d) {s, k, K_STR, OFF(f), SZ(f), 0, 0, d, NULL, false}
#define REQSTR(s, k, f) {s, k, K_STR, OFF(f), SZ(f), 0, 0, "", NULL, true}
#define INT(s, k, f, lo, hi, d) {s, k, K_INT, OFF(f), SZ(f), lo, hi, d, NULL, false}
#define BOOL(s, k, f, d) {s, k, K_BOOL, OFF(f), SZ(f), 0, 1, d, NULL, false}
#define ENUM(s, k, f, ch, d) {s, k, K_ENUM, OFF(f), SZ(f), 0, 0, d, ch, false}
#define FAULTS(s, f)                                                                               \
    INT(s, "fault_abort_at_step", f.abort_at_step, 0, INT64_MAX, "0"),                             \
        INT(s, "fault_fail_alloc_at", f.fail_alloc_at, 0, INT64_MAX, "0"),                         \
        INT(s, "fault_hang_at_request", f.hang_at_request, 0, INT64_MAX, "0"),                     \
        BOOL(s, "fault_bad_kernel", f.bad_kernel, "false"),                                        \
        BOOL(s, "fault_flip_weight_byte", f.flip_weight_byte, "false"),                            \
        BOOL(s, "fault_allow_control", f.allow_control, "false")

static const struct key_desc keys[] = {
    REQSTR("model", "path", model.path),
    STR("model", "name", model.name, ""),
    STR("shm", "name", shm.name, "/staged-model"),
    ENUM("log", "level", log.level, "debug|info|warn|error", "info"),
    STR("log", "dir", log.dir, ""),
    STR("loader", "endpoint", loader.endpoint, "ipc:///tmp/staged-loader.sock"),
    ENUM("loader", "upload", loader.upload, "none|cuda", "none"),
    INT("loader", "device", loader.device, 0, 64, "0"),
    BOOL("loader", "verify_on_attach", loader.verify_on_attach, "true"),
    FAULTS("loader", loader.faults),
    STR("tokenizer", "endpoint", tokenizer.endpoint, "ipc:///tmp/staged-tokenizer.sock"),
    INT("tokenizer", "threads", tokenizer.threads, 1, 64, "2"),
    INT("tokenizer", "max_request_bytes", tokenizer.max_request_bytes, 1024, 1 << 30, "1048576"),
    FAULTS("tokenizer", tokenizer.faults),
    STR("worker", "endpoint", worker.endpoint, "ipc:///tmp/staged-worker.sock"),
    ENUM("worker", "backend", worker.backend, "cpu|cuda", "cpu"),
    INT("worker", "threads", worker.threads, 0, 1024, "0"),
    INT("worker", "max_seqs", worker.max_seqs, 1, 4096, "64"),
    INT("worker", "max_ctx", worker.max_ctx, 16, 1 << 20, "2048"),
    INT("worker", "max_batch", worker.max_batch, 1, 65536, "512"),
    INT("worker", "device", worker.device, 0, 64, "0"),
    BOOL("worker", "deterministic", worker.deterministic, "true"),
    BOOL("worker", "standby", worker.standby, "false"),
    FAULTS("worker", worker.faults),
    STR("frontend", "endpoint", frontend.endpoint, "tcp://127.0.0.1:5555"),
    INT("frontend", "queue_limit", frontend.queue_limit, 1, 1 << 20, "256"),
    INT("frontend", "max_prompt_bytes", frontend.max_prompt_bytes, 16, 1 << 30, "262144"),
    INT("frontend", "max_tokens_limit", frontend.max_tokens_limit, 1, 1 << 20, "4096"),
    INT("frontend", "default_max_tokens", frontend.default_max_tokens, 1, 1 << 20, "256"),
    INT("frontend", "request_timeout_ms", frontend.request_timeout_ms, 0, INT64_MAX, "300000"),
    INT("frontend", "heartbeat_ms", frontend.heartbeat_ms, 10, 60000, "250"),
    INT("frontend", "stage_timeout_ms", frontend.stage_timeout_ms, 50, 600000, "1500"),
    FAULTS("frontend", frontend.faults),
    STR("http", "listen", http.listen, "127.0.0.1:8080"),
    STR("http", "api_keys", http.api_keys, ""),
    INT("http", "max_body_bytes", http.max_body_bytes, 1024, 1 << 30, "1048576"),
    INT("http", "threads", http.threads, 1, 256, "4"),
    BOOL("http", "enabled", http.enabled, "true"),
    INT("supervisor", "max_restarts", supervisor.max_restarts, 1, 1000, "5"),
    INT("supervisor", "backoff_ms", supervisor.backoff_ms, 1, 600000, "100"),
    INT("supervisor", "backoff_max_ms", supervisor.backoff_max_ms, 1, 3600000, "5000"),
    INT("supervisor", "stop_timeout_ms", supervisor.stop_timeout_ms, 1, 3600000, "10000"),
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

struct parse_state {
    struct staged_config *cfg;
    struct st_errbuf *eb;
    const char *file;
    int line;
    int rc;
    bool seen[N_KEYS];
    int seen_line[N_KEYS];
};

static int set_value(struct staged_config *cfg, const struct key_desc *k, const char *v,
                     char *why, size_t whylen)
{
    char *field = (char *)cfg + k->off;
    switch (k->type) {
    case K_STR:
    case K_ENUM:
        if (strlen(v) >= k->size) {
            snprintf(why, whylen, "value longer than %zu bytes", k->size - 1);
            return ST_ERANGE;
        }
        if (k->type == K_ENUM) {
            size_t n = strlen(v);
            const char *c = k->choices;
            bool ok = false;
            while (*c) {
                const char *e = strchr(c, '|');
                size_t len = e ? (size_t)(e - c) : strlen(c);
                if (len == n && strncmp(c, v, n) == 0) ok = true;
                c += len + (e ? 1 : 0);
            }
            if (!ok) {
                snprintf(why, whylen, "'%s' is not one of %s", v, k->choices);
                return ST_ERANGE;
            }
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case K_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 0);
        if (!*v || *end || errno == ERANGE) {
            snprintf(why, whylen, "'%s' is not an integer", v);
            return ST_EFORMAT;
        }
        if (x < k->min || x > k->max) {
            snprintf(why, whylen, "%lld is out of range [%" PRId64 ", %" PRId64 "]", x, k->min,
                     k->max);
            return ST_ERANGE;
        }
        int64_t xi = x;
        memcpy(field, &xi, sizeof(xi));
        return 0;
    }
    case K_BOOL: {
        bool b;
        if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "1"))
            b = true;
        else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "0"))
            b = false;
        else {
            snprintf(why, whylen, "'%s' is not a boolean (true/false)", v);
            return ST_EFORMAT;
        }
        memcpy(field, &b, sizeof(b));
        return 0;
    }
    }
    return ST_EINVAL;
}

void config_defaults(struct staged_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    char why[128];
    for (size_t i = 0; i < N_KEYS; i++) {
        int rc = set_value(cfg, &keys[i], keys[i].dflt, why, sizeof(why));
        (void)rc;
    }
}

static bool section_known(const char *s)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].section, s)) return true;
    return false;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *ps = user;
    if (ps->rc) return 0;
    if (!section_known(section)) {
        ps->rc = st_errf(ps->eb, ST_EFORMAT, "%s:%d: [%s] unknown section", ps->file, ps->line,
                         section);
        return 0;
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(keys[i].section, section) || strcmp(keys[i].key, name)) continue;
        if (ps->seen[i]) {
            ps->rc = st_errf(ps->eb, ST_EFORMAT, "%s:%d: [%s] %s: set twice (first on line %d)",
                             ps->file, ps->line, section, name, ps->seen_line[i]);
            return 0;
        }
        char why[200];
        int rc = set_value(ps->cfg, &keys[i], value, why, sizeof(why));
        if (rc) {
            ps->rc = st_errf(ps->eb, rc, "%s:%d: [%s] %s: %s", ps->file, ps->line, section, name, why);
            return 0;
        }
        ps->seen[i] = true;
        ps->seen_line[i] = ps->line;
        return 1;
    }
    ps->rc = st_errf(ps->eb, ST_EFORMAT, "%s:%d: [%s] %s: unknown key", ps->file, ps->line, section,
                     name);
    return 0;
}

struct line_reader {
    FILE *f;
    int *line;
};

/* fgets-like reader that counts lines so the handler can name them. */
static char *read_line(char *str, int num, void *stream)
{
    struct line_reader *lr = stream;
    char *r = fgets(str, num, lr->f);
    if (r) (*lr->line)++;
    return r;
}

static void resolve_relative(char *path, size_t cap, const char *ini_path)
{
    if (!path[0] || path[0] == '/') return;
    char dir[PATH_MAX], buf[PATH_MAX + CONF_STR];
    const char *slash = strrchr(ini_path, '/');
    int dl = slash ? (int)(slash - ini_path) : 1;
    snprintf(buf, sizeof(buf), "%.*s", dl, slash ? ini_path : ".");
    if (!realpath(buf, dir)) return;
    int n = snprintf(buf, sizeof(buf), "%s/%s", dir, path);
    if (n > 0 && (size_t)n < cap) memcpy(path, buf, (size_t)n + 1);
}

int config_load(const char *path, struct staged_config *cfg, struct st_errbuf *eb)
{
    config_defaults(cfg);
    FILE *f = fopen(path, "r");
    if (!f) return st_errf(eb, ST_EIO, "%s: %s", path, strerror(errno));
    struct parse_state ps = {.cfg = cfg, .eb = eb, .file = path};
    struct line_reader lr = {.f = f, .line = &ps.line};
    int r = ini_parse_stream(read_line, &lr, handler, &ps);
    fclose(f);
    if (ps.rc) return ps.rc;
    if (r > 0)
        return st_errf(eb, ST_EFORMAT, "%s:%d: syntax error (expected [section] or key = value)",
                       path, r);
    if (r < 0) return st_errf(eb, ST_EIO, "%s: could not be read", path);
    for (size_t i = 0; i < N_KEYS; i++)
        if (keys[i].required && !ps.seen[i])
            return st_errf(eb, ST_ENOTFOUND, "%s: [%s] %s: required key missing", path,
                           keys[i].section, keys[i].key);
    if (cfg->shm.name[0] != '/' || strchr(cfg->shm.name + 1, '/'))
        return st_errf(eb, ST_EFORMAT, "%s: [shm] name: '%s' must start with '/' and contain no "
                                       "other '/'", path, cfg->shm.name);
    if (cfg->supervisor.backoff_max_ms < cfg->supervisor.backoff_ms)
        return st_errf(eb, ST_ERANGE, "%s: [supervisor] backoff_max_ms: smaller than backoff_ms",
                       path);
    snprintf(cfg->path, sizeof(cfg->path), "%s", path);
    resolve_relative(cfg->model.path, sizeof(cfg->model.path), path);
    resolve_relative(cfg->log.dir, sizeof(cfg->log.dir), path);
    return 0;
}

int config_from_args(int *argc, char **argv, struct staged_config *cfg)
{
    const char *file = NULL;
    bool check = false, print = false;
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "--config needs a FILE argument\n");
                return ST_EINVAL;
            }
            file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            file = argv[i] + 9;
        } else if (!strcmp(argv[i], "--check-config")) {
            check = true;
        } else if (!strcmp(argv[i], "--print-config")) {
            print = true;
        } else {
            argv[out++] = argv[i];
        }
    }
    *argc = out;
    argv[out] = NULL;
    if (!file) file = getenv("STAGED_CONFIG");
    if (!file) file = "conf/default.ini";
    struct st_errbuf eb = {{0}};
    int rc = config_load(file, cfg, &eb);
    if (rc) {
        fprintf(stderr, "config error: %s\n", eb.msg);
        return rc;
    }
    if (print) {
        config_print(cfg, stdout);
        return 1;
    }
    if (check) {
        printf("config OK: %s\n", file);
        return 1;
    }
    return 0;
}

int config_from_args_opt(int *argc, char **argv, struct staged_config *cfg, bool *loaded)
{
    *loaded = false;
    for (int i = 1; i < *argc; i++)
        if (!strncmp(argv[i], "--config", 8) || !strcmp(argv[i], "--check-config") ||
            !strcmp(argv[i], "--print-config"))
            *loaded = true;
    if (!*loaded) {
        config_defaults(cfg);
        return 0;
    }
    return config_from_args(argc, argv, cfg);
}

void config_print(const struct staged_config *cfg, void *file)
{
    FILE *f = file;
    const char *sec = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key_desc *k = &keys[i];
        if (strcmp(sec, k->section)) {
            fprintf(f, "%s[%s]\n", i ? "\n" : "", k->section);
            sec = k->section;
        }
        const char *field = (const char *)cfg + k->off;
        switch (k->type) {
        case K_STR:
        case K_ENUM: fprintf(f, "%s = %s\n", k->key, field); break;
        case K_INT: {
            int64_t v;
            memcpy(&v, field, sizeof(v));
            fprintf(f, "%s = %" PRId64 "\n", k->key, v);
            break;
        }
        case K_BOOL: fprintf(f, "%s = %s\n", k->key, *(const bool *)field ? "true" : "false"); break;
        }
    }
}
