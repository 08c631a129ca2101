/*
 * metrics.h - the HTTP gateway's Prometheus metrics (GET /metrics).
 *
 * Counted in the gateway: requests by endpoint and outcome, tokens in and out
 * (from the usage of each final), time to first token and per-token latency
 * histograms (measured here, from the request's arrival at the gateway to the
 * first streamed text, and between streamed chunks per token). Added at render
 * time from the frontend's `stats` reply: queue depth, running requests, the
 * frontend's own request counters and the stage restarts. All functions are
 * thread-safe.
 */
#ifndef STAGED_METRICS_H
#define STAGED_METRICS_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#define METRICS_MAX_SERIES 64
#define METRICS_BUCKETS 12

struct metrics_hist {
    uint64_t counts[METRICS_BUCKETS + 1]; /* per bucket; the last is +Inf */
    double sum;                           /* seconds */
    uint64_t n;
};

struct metrics {
    pthread_mutex_t mu;
    struct {
        char endpoint[24];
        char outcome[24];
        uint64_t n;
    } series[METRICS_MAX_SERIES]; /* requests_total{endpoint, outcome} */
    int n_series;
    uint64_t tokens_in, tokens_out;
    int64_t streams_open;          /* responses in progress */
    struct metrics_hist ttft;      /* seconds to the first text */
    struct metrics_hist per_token; /* seconds per generated token */
};

void metrics_init(struct metrics *m);
void metrics_destroy(struct metrics *m);
/* Count one request to endpoint ("completions", "chat", "models", ...) ending with outcome. */
void metrics_request(struct metrics *m, const char *endpoint, const char *outcome);
void metrics_tokens(struct metrics *m, int64_t in, int64_t out);
void metrics_ttft(struct metrics *m, double seconds);
/* n tokens took `seconds` together: n observations of seconds / n. */
void metrics_per_token(struct metrics *m, double seconds, int64_t n);
void metrics_streams(struct metrics *m, int delta);
/*
 * Render the Prometheus text exposition (version 0.0.4). stats is the
 * frontend's stats reply or NULL (then staged_frontend_up is 0). Returns a
 * malloc'ed string or NULL on allocation failure.
 */
char *metrics_render(struct metrics *m, const json_t *stats);

#endif
