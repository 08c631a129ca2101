/*
 * gateway.h - the OpenAI-compatible HTTP gateway (bin/staged-http).
 *
 * A libmicrohttpd daemon ([http] listen, a pool of [http] threads) in front
 * of the frontend, which it reaches through one frontend client
 * (frontend/client.h): every HTTP request becomes one client request, and
 * the client's I/O thread feeds each HTTP request's state; connections wait
 * suspended (no thread is held) until there is something to send.
 *
 *   POST /v1/completions, /v1/chat/completions   OpenAI shapes (http/openai.h);
 *        "stream": true answers text/event-stream, one `data: {chunk}` per
 *        piece of text and `data: [DONE]` at the end
 *   GET  /v1/models     the served model (frontend `models`)
 *   GET  /health        200 only when every stage is ready, else 503 + reason
 *   GET  /metrics       Prometheus text (http/metrics.h)
 *
 * Errors are OpenAI error objects: 400 invalid requests (bad JSON, wrong
 * types, missing fields, bodies over [http] max_body_bytes), 401 missing or
 * unknown API key when [http] api_keys is set (for /v1/ paths; /health and
 * /metrics stay open), 404/405 unknown path or method, 429 + Retry-After when
 * the frontend is busy, 503 when it is unavailable. A client that
 * disconnects has its request cancelled: suspended connections are checked
 * for a closed socket every GW_CHECK_MS.
 */
#ifndef STAGED_GATEWAY_H
#define STAGED_GATEWAY_H

#include "common/err.h"
#include "conf/config.h"

#include <stdbool.h>
#include <stdint.h>

#define GW_CHECK_MS 200 /* period of the disconnect check of waiting connections */

struct gw;

/*
 * Connect to the frontend ([frontend] endpoint) and start listening on
 * [http] listen. cfg must outlive the gateway. Returns 0, or ST_EINVAL (bad
 * listen address or api_keys), ST_EIO (cannot listen), ST_ENOMEM, with eb.
 */
int gw_new(const struct staged_config *cfg, struct gw **out, struct st_errbuf *eb);

/* The TCP port listened on (useful with port 0). */
uint16_t gw_port(const struct gw *g);

/*
 * Stop listening and answer new requests on open connections with 503, then
 * wait up to timeout_ms for the requests in flight to finish. Returns true if
 * they all did. Call gw_destroy afterwards.
 */
bool gw_drain(struct gw *g, int64_t timeout_ms);

/* Stop listening, end every connection, cancel requests in flight, free. NULL-safe. */
void gw_destroy(struct gw **g);

#endif
