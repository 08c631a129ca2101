/*
 * gpu_upload.h - the loader's device copy of the weights (C API; CUDA inside
 * loader/gpu_upload.cu, or loader/gpu_upload_none.c in builds without CUDA,
 * where gpu_upload_init and gpu_upload_create return ST_EUNSUPPORTED with a
 * message).
 *
 * This is the API contract loader/ctl.c calls. The loader uploads the
 * segment's tensor-data region once into one device allocation, exports a
 * CUDA IPC handle for it, and keeps the allocation alive for as long as it
 * runs, across any number of worker restarts. Offsets inside the device region
 * equal offsets inside the segment's data region (seg_data()).
 *
 * The source is pageable memory. By default it goes through a small ring of
 * pinned staging buffers: several host threads memcpy consecutive pieces into
 * free buffers while the DMA of the filled ones runs (rate: min(parallel
 * memcpy, pinned host-to-device copy)). STAGED_UPLOAD=register page-locks the
 * source in place with cudaHostRegister and copies it in one DMA instead
 * (registration is the slow part). STAGED_UPLOAD_THREADS and
 * STAGED_UPLOAD_PIECE_MIB tune the ring; gpu_upload.cu has the details.
 *
 * The CUDA context and the staging ring are start-up costs of the process,
 * not of an upload: gpu_upload_init makes both once (the loader calls it
 * first thing when it will upload), every gpu_upload_create reuses them, and
 * gpu_upload_shutdown frees the ring at exit. One upload uses the ring at a
 * time: init, create and shutdown take one process-wide lock.
 */
#ifndef STAGED_GPU_UPLOAD_H
#define STAGED_GPU_UPLOAD_H

#include "common/err.h"
#include "shm/seg.h"

#include <stddef.h>
#include <stdint.h>

/* cudaIpcMemHandle_t is 64 bytes: 128 hex digits. */
#define GPU_IPC_HEX_LEN 128

struct gpu_weights;

/* Select device `device`, create its CUDA context and the process's staging
 * ring at full size (STAGED_UPLOAD_THREADS threads x 2 slots of
 * STAGED_UPLOAD_PIECE_MIB MiB, read now; 32 MiB page-locked by default, plus
 * a stream and one event per slot), kept for the process. Logs its time once.
 * A second call for the same device does nothing; for another device the
 * ring is freed and made again there (only one device's ring exists).
 * Optional: gpu_upload_create calls it when nobody did. Returns 0 or
 * ST_EDEVICE / ST_ENOMEM (ST_EUNSUPPORTED in builds without CUDA) with eb set
 * naming the failing call; on failure no ring exists. */
int gpu_upload_init(int device, struct st_errbuf *eb);

/* Free the staging ring (no-op when there is none; safe twice). Device
 * copies made before stay valid; a later gpu_upload_create makes a new ring.
 * Call it at exit, after the last upload (process exit frees it too). */
void gpu_upload_shutdown(void);

/* Upload len bytes at host (the segment's data region) to device `device`
 * through the process's staging ring (gpu_upload_init for `device` first if
 * it has not run). *out owns the device copy (gpu_upload_destroy). Logs the
 * method and the achieved GB/s. Returns 0 or ST_EDEVICE / ST_ENOMEM /
 * ST_EINVAL / ST_EUNSUPPORTED with eb set (naming the failing call); on
 * failure nothing stays allocated and no thread keeps running (the ring is
 * freed when the copy failed; the next upload makes a new one). */
int gpu_upload_create(const void *host, size_t len, int device, struct gpu_weights **out,
                      struct st_errbuf *eb);

/* Rearrange the device copy's tensors into the device layout of
 * loader/gpu_layout.h (version GPU_LAYOUT_VERSION), in place, as the worker's
 * kernels read them; verify_repair then checks grouped tensors through the
 * layout. Call once, after gpu_upload_create. Returns 0 or ST_EFORMAT (a
 * tensor of the directory outside the copy, or one to group not 16-byte
 * aligned) / ST_EDEVICE / ST_ESTATE (grouped already) with eb set. */
int gpu_upload_group(struct gpu_weights *w, const struct seg *seg, struct st_errbuf *eb);

/* The same for a tensor list (offsets from the region's start) instead of a
 * segment's directory (bench-cuda's upload from a model file). */
struct gpu_layout_tensor;
int gpu_upload_group_tensors(struct gpu_weights *w, const struct gpu_layout_tensor *t, size_t n,
                             struct st_errbuf *eb);

/* Write the IPC handle of the device region as GPU_IPC_HEX_LEN hex digits + NUL. */
void gpu_upload_ipc_handle(const struct gpu_weights *w, char *hex_out);

/* Recompute every tensor's wsum (common/wsum.h) on the device, compare with
 * the segment directory, and re-copy mismatching tensors from the segment.
 * Writes up to max_bad directory indices of mismatches into bad, stores the
 * number repaired in *repaired, returns the number of mismatches found
 * (or a negative st_err). Repairs copy with cudaMemcpy, not through the ring. */
int gpu_upload_verify_repair(struct gpu_weights *w, const struct seg *seg, uint32_t *bad,
                             int max_bad, int *repaired);

/* Fault injection: flip one byte of the device copy at offset. */
int gpu_upload_flip_byte(struct gpu_weights *w, size_t offset);

/* Free the device copy and *w, set *w = NULL (safe twice). The ring stays. */
void gpu_upload_destroy(struct gpu_weights **w);

#endif
