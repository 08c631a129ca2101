/* Prometheus metrics of the HTTP gateway: see metrics.h. */
#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Histogram bucket upper bounds, seconds (shared by both histograms). */
static const double bounds[METRICS_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                               0.1,   0.25,   0.5,   1.0,  2.5,   10.0};

void metrics_init(struct metrics *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
}

void metrics_destroy(struct metrics *m)
{
    pthread_mutex_destroy(&m->mu);
}

void metrics_request(struct metrics *m, const char *endpoint, const char *outcome)
{
    pthread_mutex_lock(&m->mu);
    int i;
    for (i = 0; i < m->n_series; i++)
        if (!strcmp(m->series[i].endpoint, endpoint) && !strcmp(m->series[i].outcome, outcome))
            break;
    if (i == m->n_series && m->n_series < METRICS_MAX_SERIES) {
        snprintf(m->series[i].endpoint, sizeof(m->series[i].endpoint), "%s", endpoint);
        snprintf(m->series[i].outcome, sizeof(m->series[i].outcome), "%s", outcome);
        m->n_series++;
    }
    if (i < m->n_series) m->series[i].n++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_tokens(struct metrics *m, int64_t in, int64_t out)
{
    pthread_mutex_lock(&m->mu);
    m->tokens_in += (uint64_t)(in > 0 ? in : 0);
    m->tokens_out += (uint64_t)(out > 0 ? out : 0);
    pthread_mutex_unlock(&m->mu);
}

static void observe(struct metrics_hist *h, double v, uint64_t times)
{
    int b = 0;
    while (b < METRICS_BUCKETS && v > bounds[b])
        b++;
    h->counts[b] += times;
    h->sum += v * (double)times;
    h->n += times;
}

void metrics_ttft(struct metrics *m, double seconds)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->ttft, seconds, 1);
    pthread_mutex_unlock(&m->mu);
}

void metrics_per_token(struct metrics *m, double seconds, int64_t n)
{
    if (n <= 0) return;
    pthread_mutex_lock(&m->mu);
    observe(&m->per_token, seconds / (double)n, (uint64_t)n);
    pthread_mutex_unlock(&m->mu);
}

void metrics_streams(struct metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->streams_open += delta;
    pthread_mutex_unlock(&m->mu);
}

/* A growing string buffer. */
struct sbuf {
    char *s;
    size_t len, cap;
    bool failed;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->failed = true;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
}

static void render_hist(struct sbuf *b, const char *name, const char *help,
                        const struct metrics_hist *h)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[METRICS_BUCKETS];
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
              (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->n);
}

static long long jint(const json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

char *metrics_render(struct metrics *m, const json_t *stats)
{
    struct sbuf b = {0};
    pthread_mutex_lock(&m->mu);
    sb_printf(&b, "# HELP staged_http_requests_total HTTP requests by endpoint and outcome.\n"
                  "# TYPE staged_http_requests_total counter\n");
    for (int i = 0; i < m->n_series; i++)
        sb_printf(&b, "staged_http_requests_total{endpoint=\"%s\",outcome=\"%s\"} %llu\n",
                  m->series[i].endpoint, m->series[i].outcome, (unsigned long long)m->series[i].n);
    sb_printf(&b,
              "# HELP staged_http_prompt_tokens_total Prompt tokens of finished requests.\n"
              "# TYPE staged_http_prompt_tokens_total counter\n"
              "staged_http_prompt_tokens_total %llu\n"
              "# HELP staged_http_completion_tokens_total Generated tokens of finished requests.\n"
              "# TYPE staged_http_completion_tokens_total counter\n"
              "staged_http_completion_tokens_total %llu\n"
              "# HELP staged_http_open_responses Requests being answered now.\n"
              "# TYPE staged_http_open_responses gauge\n"
              "staged_http_open_responses %lld\n",
              (unsigned long long)m->tokens_in, (unsigned long long)m->tokens_out,
              (long long)m->streams_open);
    render_hist(&b, "staged_http_time_to_first_token_seconds",
                "Time from the request's arrival at the gateway to its first text.", &m->ttft);
    render_hist(&b, "staged_http_time_per_token_seconds",
                "Time per generated token between streamed chunks.", &m->per_token);
    pthread_mutex_unlock(&m->mu);

    sb_printf(&b,
              "# HELP staged_frontend_up Whether the frontend answered the stats query.\n"
              "# TYPE staged_frontend_up gauge\nstaged_frontend_up %d\n",
              stats ? 1 : 0);
    if (stats) {
        sb_printf(&b,
                  "# HELP staged_queue_depth Requests waiting in the frontend.\n"
                  "# TYPE staged_queue_depth gauge\nstaged_queue_depth %lld\n"
                  "# HELP staged_running_requests Requests being generated.\n"
                  "# TYPE staged_running_requests gauge\nstaged_running_requests %lld\n"
                  "# HELP staged_frontend_tokens_total Tokens counted by the frontend.\n"
                  "# TYPE staged_frontend_tokens_total counter\n"
                  "staged_frontend_tokens_total{direction=\"in\"} %lld\n"
                  "staged_frontend_tokens_total{direction=\"out\"} %lld\n",
                  jint(stats, "queued"), jint(stats, "running"), jint(stats, "tokens_in"),
                  jint(stats, "tokens_out"));
        sb_printf(&b, "# HELP staged_frontend_requests_total Requests by outcome, as the "
                      "frontend counts them.\n# TYPE staged_frontend_requests_total counter\n");
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)json_object_get(stats, "requests"), key, v)
            sb_printf(&b, "staged_frontend_requests_total{outcome=\"%.32s\"} %lld\n", key,
                      (long long)json_integer_value(v));
        sb_printf(&b, "# HELP staged_stage_restarts_total Restarts of each stage seen by the "
                      "frontend.\n# TYPE staged_stage_restarts_total counter\n");
        json_object_foreach((json_t *)json_object_get(stats, "restarts"), key, v)
            sb_printf(&b, "staged_stage_restarts_total{stage=\"%.32s\"} %lld\n", key,
                      (long long)json_integer_value(v));
    }
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
