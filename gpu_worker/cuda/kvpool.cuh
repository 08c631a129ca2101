/*
 * kvpool.cuh - device memory for the KV cache, mapped on demand.
 *
 * The pool reserves one range of device virtual addresses for n_seqs
 * sequences of at most seq_bytes each (each sequence's slot rounded up to the
 * allocation granularity, 2 MiB on current GPUs) and backs a sequence's slot
 * with physical memory only as far as it is used: kvpool_ensure maps the
 * chunks that cover its first `bytes`, kvpool_trim unmaps the chunks past
 * `keep` (a finished sequence gives all of its memory back). Addresses never
 * move, so kernels and captured CUDA graphs keep their pointers.
 *
 * Uses the driver's virtual memory management (cuMemAddressReserve,
 * cuMemCreate, cuMemMap, cuMemSetAccess) through cudaGetDriverEntryPoint-
 * ByVersion, so binaries do not link libcuda (they run where there is no
 * driver). Not thread-safe; calls must not overlap kernels that use the
 * chunks being unmapped (the backend synchronizes its stream first).
 */
#ifndef STAGED_CUDA_KVPOOL_CUH
#define STAGED_CUDA_KVPOOL_CUH

#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "common/err.h"
}

struct kvpool;

/* Reserve the addresses; nothing is mapped yet. ST_EDEVICE (message in eb)
 * if the driver lacks virtual memory management or refuses. */
int kvpool_create(int device, int n_seqs, size_t seq_bytes, struct kvpool **out,
                  struct st_errbuf *eb);
void kvpool_destroy(struct kvpool **pp);
/* Start of the range; sequence s starts at base + s * kvpool_stride(). */
uint8_t *kvpool_base(const struct kvpool *p);
size_t kvpool_stride(const struct kvpool *p);
/* Back the first `bytes` of sequence s (0 or ST_EDEVICE / ST_ENOMEM, logged). */
int kvpool_ensure(struct kvpool *p, int s, size_t bytes);
/* Give back the chunks of sequence s past its first `keep` bytes. */
int kvpool_trim(struct kvpool *p, int s, size_t keep);
/* Bytes of physical memory mapped now, and at most so far. */
size_t kvpool_mapped(const struct kvpool *p);
size_t kvpool_peak(const struct kvpool *p);

#endif
