/*
 * seg.h - the shared-memory segment a loader stages a model into.
 *
 * One POSIX shm object (name from [shm] name, mode 0600) holds a whole model:
 *
 *   offset          size            what
 *   0               4096            struct seg_header (rest zero)
 *   dir_off         n * 128         tensor directory: struct seg_tensor[n_tensors]
 *   meta_off        meta_size       the GGUF file's bytes [0, header_end): magic,
 *                                   metadata and tensor infos, verbatim, so every
 *                                   stage reads metadata (tokenizer arrays, chat
 *                                   template) with the same GGUF reader
 *   data_off        data_size       the file's tensor-data section, verbatim;
 *                                   data_off is a multiple of 4096, tensor i is at
 *                                   data_off + dir[i].offset (aligned as in the file)
 *
 * The header says which file the segment holds (device, inode, size, mtime
 * and a content hash), so a restarted loader can tell whether the segment is
 * still the staged copy of its file and re-attach without reading the file.
 * A writer fills everything, then sets state = SEG_READY and the header
 * checksum last. Readers map the object read-only and verify the header
 * (magic, version, state, checksum, every region inside the object, the
 * directory consistent with the GGUF metadata) before trusting anything.
 */
#ifndef STAGED_SEG_H
#define STAGED_SEG_H

#include "common/err.h"
#include "common/model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEG_MAGIC "STAGEDSG"
#define SEG_FORMAT_VERSION 1
#define SEG_HEADER_SIZE 4096
#define SEG_DATA_ALIGN 4096

enum seg_state { SEG_BUILDING = 0, SEG_READY = 1 };

struct seg_source {
    uint64_t dev;        /* st_dev of the GGUF file */
    uint64_t ino;        /* st_ino */
    uint64_t size;       /* st_size */
    int64_t mtime_sec;   /* st_mtim */
    int64_t mtime_nsec;
};

struct seg_header {
    char magic[8];            /* "STAGEDSG" */
    uint32_t format_version;  /* SEG_FORMAT_VERSION */
    uint32_t state;           /* enum seg_state */
    uint64_t generation;      /* distinct for every build of a segment */
    struct seg_source source; /* 40 bytes */
    uint64_t content_hash;    /* XXH3-64 over the GGUF header bytes and every tensor's wsum */
    uint64_t n_tensors;
    uint64_t dir_off;
    uint64_t meta_off;
    uint64_t meta_size;
    uint64_t data_off;
    uint64_t data_size;
    uint64_t total_size;      /* size of the shm object */
    struct model_hparams hp;  /* 64 bytes */
    uint64_t build_ns;        /* CLOCK_REALTIME when the build finished */
    uint64_t header_sum;      /* wsum64 of this struct with header_sum = 0 */
    char source_path[256];
};
_Static_assert(offsetof(struct seg_header, generation) == 16, "segment format");
_Static_assert(offsetof(struct seg_header, source) == 24, "segment format");
_Static_assert(offsetof(struct seg_header, content_hash) == 64, "segment format");
_Static_assert(offsetof(struct seg_header, hp) == 128, "segment format");
_Static_assert(offsetof(struct seg_header, header_sum) == 200, "segment format");
_Static_assert(sizeof(struct seg_header) == 464, "segment format");

struct seg_tensor {
    char name[64];       /* NUL-terminated */
    uint32_t type;       /* enum ggml_type */
    uint32_t n_dims;
    uint64_t ne[4];
    uint64_t offset;     /* from data_off */
    uint64_t size;       /* bytes */
    uint64_t wsum;       /* common/wsum.h checksum of the bytes */
};
_Static_assert(sizeof(struct seg_tensor) == 128, "segment format");
_Static_assert(offsetof(struct seg_tensor, offset) == 104, "segment format");

struct seg;

/*
 * Attach read-only to segment `name` and verify its header and directory.
 * With verify_data, every tensor's checksum is recomputed too. Returns 0,
 * ST_ENOTFOUND (no such segment), ST_ESTATE (still building) or
 * ST_EINTEGRITY / ST_EFORMAT with eb naming the failed check.
 */
int seg_attach(const char *name, bool verify_data, struct seg **out, struct st_errbuf *eb);
/* The model view over the segment (owned by the seg). */
struct st_model *seg_model(struct seg *s);
const struct seg_header *seg_header(const struct seg *s);
const struct seg_tensor *seg_dir(const struct seg *s);
const uint8_t *seg_data(const struct seg *s);
void seg_detach(struct seg **s);

/* ---- writer side (the loader) ---- */

/* Counts of what staging did; file_bytes_read is every byte read from the model file. */
struct seg_stats {
    uint64_t file_bytes_read;
    double seconds;
    bool reattached;         /* true: an intact segment was found, file not read */
};

/* Progress callback: done / total bytes of tensor data staged. */
typedef void (*seg_progress_fn)(uint64_t done, uint64_t total, void *ctx);

/*
 * Make `name` hold the model of GGUF file `path`: re-attach to an intact
 * segment of the same file (identity + checksums; verify_data re-hashes the
 * tensors), else validate the file and build the segment from it. The result
 * is attached read-write in *out. Returns 0 or an error with eb set.
 */
int seg_stage(const char *name, const char *path, bool verify_data, seg_progress_fn progress,
              void *progress_ctx, struct seg **out, struct seg_stats *stats, struct st_errbuf *eb);

/* Recompute every tensor's checksum; returns the number of mismatches and
 * writes up to max_bad directory indices into bad. */
int seg_verify_tensors(const struct seg *s, uint32_t *bad, int max_bad);

/* Remove the shm name (the clean-shutdown path). */
int seg_unlink(const char *name);

#endif
