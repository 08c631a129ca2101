/*
 * server.h - the worker's serving loop (bin/staged-worker serve).
 *
 * The worker connects a DEALER socket to the frontend's ROUTER at [worker]
 * endpoint, with its instance id as routing id, and announces itself. It
 * runs continuous batching: every step builds one batch from the decode
 * tokens of running sequences and chunks of new prompts (up to max_batch
 * tokens), runs the backend, samples, and streams the new tokens. New
 * requests join between steps, so a long generation never blocks a short one.
 *
 * Messages (one JSON frame each, common/proto.h conventions):
 *   worker -> frontend
 *     {"ev":"hello","instance":S,"pid":N,"backend":"cpu","max_seqs":N,"max_ctx":N}
 *     {"ev":"hb","instance":S,"active":N,"queued":N,"steps":N,"pid":N,"max_ctx":N}
 *          every heartbeat_ms (a frontend that restarted adopts the worker from it)
 *     {"ev":"toks","instance":S,"items":[{"rid":S,"n":N,"tok":T,"lp":{...}?}]}
 *          one message per step; n is the index of the token among the
 *          request's generated tokens (so resubmissions never duplicate)
 *     {"ev":"done","instance":S,"rid":S,"reason":"stop"|"length"|"cancelled","n_gen":N}
 *     {"ev":"error","instance":S,"rid":S,"message":S}           request rejected
 *   frontend -> worker
 *     {"op":"gen","rid":S,"tokens":[...],"n_prompt":N,"max_new":N,
 *      "sampling":{temperature,top_k,top_p,min_p,repeat_penalty,repeat_last_n,
 *                  presence_penalty,frequency_penalty,seed},
 *      "stop_ids":[...],"logprobs":N}    tokens = prompt + tokens generated so
 *          far (a resubmission after a restart); generation continues at
 *          position len(tokens); logprobs -1 = off, else alternatives wanted
 *     {"op":"cancel","rid":S}   {"op":"ping"}
 *
 * Sampling depends only on (seed, position) and the tokens so far, so a
 * resubmitted request continues exactly as it would have.
 */
#ifndef STAGED_SERVER_H
#define STAGED_SERVER_H

#include "common/model.h"
#include "conf/config.h"
#include "gpu_worker/backend.h"

#include <signal.h>

/* Called about once a second; returning false ends the loop with ST_ESTATE
 * (the worker exits so that it is restarted, e.g. to re-map a restarted
 * loader's device copy of the weights). */
typedef bool (*server_check_fn)(void *ctx);

/* Serve until *stop becomes non-zero. Returns 0 on a clean stop, or a
 * negative st_err (a backend failure: the process must exit non-zero). */
int server_run(const struct staged_config *cfg, const struct st_model *m,
               const struct backend_ops *ops, struct backend *b, server_check_fn check,
               void *check_ctx, volatile sig_atomic_t *stop);

#endif
