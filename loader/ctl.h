/*
 * ctl.h - the loader's ZeroMQ control endpoint (common/proto.h conventions).
 *
 * Requests ({"op": ..., "id": ...}):
 *   health    -> {"ok":true,"stage":"loader","state":"ready","pid":N,"uptime_ms":N,
 *                 "segment":NAME,"generation":"HEX","reattached":B,"file_bytes_read":N}
 *   manifest  -> health fields plus "model" (architecture and hyperparameters),
 *                "source" (path, size, content_hash), "tensors" ([{name,type,ne,
 *                offset,size,wsum}]) and "gpu" (null, or {device, ipc_handle, size,
 *                layout}: layout is the GPU_LAYOUT_VERSION of loader/gpu_layout.h)
 *   verify    -> re-hash every tensor of the segment (and of the device copy when
 *                uploaded; bad device tensors are repaired from the segment):
 *                {"ok":true,"bad_segment":[..],"bad_device":[..],"repaired":N};
 *                with "segment":false only the device copy is checked (what a
 *                starting worker asks: workers map the segment read-only)
 *   fault     -> only with fault_allow_control: {"op":"fault","hang":true} makes
 *                the loader stop answering (to test heartbeat detection)
 * Unknown ops, unknown fields and malformed messages get error replies.
 */
#ifndef STAGED_LOADER_CTL_H
#define STAGED_LOADER_CTL_H

#include "common/err.h"
#include "conf/config.h"
#include "shm/seg.h"

struct loader_ctl;

/* Bind the control endpoint. cfg and seg must outlive the ctl. */
int loader_ctl_new(const struct staged_config *cfg, struct seg *seg, const struct seg_stats *stats,
                   struct loader_ctl **out, struct st_errbuf *eb);
/* Serve requests for up to timeout_ms. */
void loader_ctl_poll(struct loader_ctl *ctl, int timeout_ms);
void loader_ctl_destroy(struct loader_ctl **ctl);

#endif
