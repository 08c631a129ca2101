/*
 * gguf_write.h - a small GGUF writer (version 3 by default, 2 on request).
 *
 * Builds the byte layout described in gguf.h: header, metadata entries in the
 * order they were added, tensor infos in the order they were added, zero
 * padding up to the alignment, then the tensor data, each tensor at an
 * aligned offset. Used by staged-make-model (random test models of real
 * size), the bad-GGUF corpus generator and the tests.
 *
 * Two ways to get the bytes out:
 *   - gguf_writer_to_mem: the whole file in one malloc'd buffer, tensor data
 *     copied from the pointers given to gguf_writer_add_tensor (NULL data is
 *     written as zeros). For small files (tests, corpus).
 *   - gguf_writer_header + the caller streaming each tensor's bytes itself,
 *     in the order added, to data_offset + gguf_writer_tensor_offset(i). For
 *     large files (staged-make-model).
 *
 * Validation: keys and tensor names must be non-empty and unique (ST_EEXIST
 * otherwise), tensor types supported by ggml_type_block_bytes and row lengths
 * a multiple of the block size (ST_EINVAL). gguf_writer_add_raw and
 * gguf_writer_add_tensor_at write what they are given without checking the
 * value bytes or the offset: they exist to craft invalid files for tests.
 *
 * Strings are copied; the writer owns everything it holds except tensor data
 * pointers, which must stay valid until the bytes are produced.
 */
#ifndef STAGED_GGUF_WRITE_H
#define STAGED_GGUF_WRITE_H

#include "err.h"
#include "gguf.h"

#include <stdint.h>
#include <stdio.h>

struct gguf_writer;

/* New writer for GGUF `version` (2 or 3) with tensor data alignment
 * `alignment` (a power of two). If alignment is not 32 the key
 * general.alignment (u32) is added as the first entry. NULL if out of memory
 * or the arguments are invalid. */
struct gguf_writer *gguf_writer_new(uint32_t version, uint32_t alignment);
/* Free and set *w to NULL; safe on NULL and twice. */
void gguf_writer_destroy(struct gguf_writer **w);

/* Scalar metadata. Return 0, ST_EEXIST (duplicate key), ST_EINVAL (empty
 * key) or ST_ENOMEM. */
int gguf_writer_add_u8(struct gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_add_i8(struct gguf_writer *w, const char *key, int8_t v);
int gguf_writer_add_u16(struct gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_add_i16(struct gguf_writer *w, const char *key, int16_t v);
int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_add_i64(struct gguf_writer *w, const char *key, int64_t v);
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_add_f64(struct gguf_writer *w, const char *key, double v);
int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v);
/* A string of len bytes (may contain any byte). */
int gguf_writer_add_strn(struct gguf_writer *w, const char *key, const char *v, uint64_t len);

/* Array of n numeric elements of type elem_type (a fixed-size gguf_vtype:
 * not string, not array); data holds n little-endian elements. */
int gguf_writer_add_arr(struct gguf_writer *w, const char *key, uint32_t elem_type,
                        const void *data, uint64_t n);
/* Array of n NUL-terminated strings. */
int gguf_writer_add_arr_str(struct gguf_writer *w, const char *key, const char *const *strs,
                            uint64_t n);

/* Raw entry: the key, the u32 type as given (any number), then `len` value
 * bytes verbatim. Used to copy an entry from a parsed file (value bytes from
 * gguf_kv.value_off to the end of the value) and to craft bad files. The
 * key is still checked for duplicates. */
int gguf_writer_add_raw(struct gguf_writer *w, const char *key, uint32_t type, const void *value,
                        uint64_t len);

/* Copy entry kv_idx of a parsed file, value and type unchanged. */
int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf *g, int64_t kv_idx);

/* Tensor info: name, ggml type, n_dims (1..4) dims ne[] (ne[0] the row
 * length). The data offset is the next aligned offset after the previous
 * tensor. data (may be NULL) is used by gguf_writer_to_mem only. Returns
 * the tensor's index (>= 0) or a negative error. */
int64_t gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t type,
                               uint32_t n_dims, const uint64_t *ne, const void *data);
/* Same with an explicit data offset, written as given (test crafting). The
 * data section grows to cover it. */
int64_t gguf_writer_add_tensor_at(struct gguf_writer *w, const char *name, uint32_t type,
                                  uint32_t n_dims, const uint64_t *ne, uint64_t offset,
                                  const void *data);

/* Counts so far, offset of tensor i in the data section, its size in bytes,
 * byte offset where the data section will start, total file size. */
uint64_t gguf_writer_n_kv(const struct gguf_writer *w);
uint64_t gguf_writer_n_tensors(const struct gguf_writer *w);
uint64_t gguf_writer_tensor_offset(const struct gguf_writer *w, int64_t i);
uint64_t gguf_writer_tensor_size(const struct gguf_writer *w, int64_t i);
uint64_t gguf_writer_data_offset(const struct gguf_writer *w);
/* Byte position in the file of metadata entry i (its key length) and of
 * tensor info i (its name length): for tests that patch bytes. */
uint64_t gguf_writer_kv_pos(const struct gguf_writer *w, int64_t i);
uint64_t gguf_writer_tensor_info_pos(const struct gguf_writer *w, int64_t i);
uint64_t gguf_writer_file_size(const struct gguf_writer *w);

/* The header region (magic .. tensor infos + zero padding to the data
 * offset) in a new malloc'd buffer the caller frees. 0 or ST_ENOMEM. */
int gguf_writer_header(const struct gguf_writer *w, uint8_t **out, uint64_t *len);
/* The whole file in a new malloc'd buffer the caller frees. */
int gguf_writer_to_mem(const struct gguf_writer *w, uint8_t **out, uint64_t *len);
/* Write the whole file (gguf_writer_to_mem) to path. 0, ST_EIO, ST_ENOMEM. */
int gguf_writer_to_file(const struct gguf_writer *w, const char *path, struct st_errbuf *eb);

#endif
