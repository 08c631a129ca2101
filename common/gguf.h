/*
 * gguf.h - a hostile-input reader for GGUF files (versions 2 and 3).
 *
 * Byte layout (all integers little-endian):
 *
 *   offset  size  field
 *   0       4     magic "GGUF" (0x47 0x47 0x55 0x46)
 *   4       4     u32 version (1 is rejected; 2 and 3 are read)
 *   8       8     u64 n_tensors
 *   16      8     u64 n_kv
 *   24      ...   n_kv metadata entries:
 *                   string key; u32 value_type; value
 *                 then n_tensors tensor infos:
 *                   string name; u32 n_dims (1..4); u64 ne[n_dims];
 *                   u32 ggml_type; u64 offset (relative to the data section)
 *   ...     pad   zero padding up to a multiple of general.alignment (default 32)
 *   data    ...   tensor data; each tensor at data + offset, offset % alignment == 0
 *
 *   string = u64 length, then length bytes of UTF-8 (no NUL)
 *   value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (1 byte, 0|1),
 *                8 string, 9 array (u32 elem_type, u64 count, count elements; arrays
 *                may nest), 10 u64, 11 i64, 12 f64
 *
 * The reader parses from a memory buffer holding at least the header region
 * (magic through the last tensor info). Every count is bounded by the bytes
 * left before it is used to allocate; every length and offset is checked with
 * overflow-safe arithmetic against the buffer and against the file size; keys
 * and tensor names must be unique, non-empty and free of control bytes (names
 * under 64 bytes); counts are also capped (GGUF_MAX_KV, GGUF_MAX_TENSORS);
 * arrays nest at most 8 deep; bools are 0 or 1; general.alignment is an
 * integer power of two up to 65536; tensor data must be aligned, inside the
 * file and non-overlapping; each dimension is 1..2^40 and their product at
 * most 2^48; a row must be a whole number of blocks. Each error names the
 * key or tensor and the byte offset where it was found. Version 1 and
 * big-endian files are rejected with messages saying so.
 *
 * Values are not copied: strings and arrays point into the buffer, which must
 * outlive the struct gguf.
 */
#ifndef STAGED_GGUF_H
#define STAGED_GGUF_H

#include "err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- tensor types (ggml numbering) ---- */
enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_BF16 = 30,
    GGML_TYPE_COUNT = 40,
};

/* True for the 13 types staged serves (F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1
 * Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K). */
bool ggml_type_supported(uint32_t type);
/* "F32", "Q4_K", ...; "type#N" style names are never returned: unknown
 * types give NULL. */
const char *ggml_type_name(uint32_t type);
/* Elements per block (1 for float types, 32 or 256) and bytes per block;
 * 0 for unsupported types. */
uint32_t ggml_type_block_elems(uint32_t type);
uint32_t ggml_type_block_bytes(uint32_t type);
/* Bytes of a row of n elements (n must be a multiple of the block size);
 * 0 if not a multiple or unsupported. */
uint64_t ggml_row_bytes(uint32_t type, uint64_t n);

/* ---- metadata value types ---- */
enum gguf_vtype {
    GGUF_U8 = 0,
    GGUF_I8 = 1,
    GGUF_U16 = 2,
    GGUF_I16 = 3,
    GGUF_U32 = 4,
    GGUF_I32 = 5,
    GGUF_F32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_U64 = 10,
    GGUF_I64 = 11,
    GGUF_F64 = 12,
    GGUF_VTYPE_COUNT = 13,
};
const char *gguf_vtype_name(uint32_t vt);

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
/* Hard limits on the header counts, beyond the bound the file size gives
 * (real models have a few hundred tensors and a few dozen keys). */
#define GGUF_MAX_KV 65536
#define GGUF_MAX_TENSORS 65536

struct gguf_str {
    const char *p; /* points into the buffer; NOT NUL-terminated */
    uint64_t len;
};

struct gguf_kv {
    struct gguf_str key;
    uint32_t type;        /* enum gguf_vtype */
    uint64_t value_off;   /* byte offset of the value in the buffer */
    /* for arrays: */
    uint32_t arr_type;    /* element type */
    uint64_t arr_n;       /* element count */
    uint64_t arr_data_off;/* offset of the first element */
    uint64_t *str_offs;   /* arrays of strings: offset of each string (owned) */
};

struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* unused dims are 1; ne[0] is the row length */
    uint32_t type;              /* enum ggml_type */
    uint64_t offset;            /* relative to the data section */
    uint64_t size;              /* bytes */
    uint64_t n_elems;
    uint64_t info_off;          /* where the tensor info starts, for messages */
};

struct gguf {
    const uint8_t *buf;
    uint64_t buf_len;
    uint64_t file_size;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    uint64_t n_tensors;
    uint64_t header_end;  /* offset just past the last tensor info */
    uint64_t data_offset; /* start of the tensor data section */
    struct gguf_kv *kv;
    struct gguf_tensor *tensors;
    /* private: hash indexes (open addressing, index + 1, 0 = empty) of the
     * keys and tensor names, for gguf_find_key / gguf_find_tensor */
    uint64_t *key_slots, *tensor_slots;
    uint64_t key_cap, tensor_cap;
};

/*
 * Parse a GGUF header region.
 *   buf/buf_len: the bytes (a whole file mapping, or a staged copy of at
 *                least the header region)
 *   file_size:   size of the whole file, for tensor bound checks
 * On success *out owns a new struct gguf (free with gguf_destroy) and 0 is
 * returned. On failure returns ST_EFORMAT / ST_EUNSUPPORTED / ST_ENOMEM and
 * eb names the problem ("tensor blk.0.attn_q.weight at byte 1234: ...").
 * Unsupported tensor types are rejected here.
 */
int gguf_parse(const uint8_t *buf, uint64_t buf_len, uint64_t file_size, struct gguf **out,
               struct st_errbuf *eb);
void gguf_destroy(struct gguf **g);

/* Index of key or -1. */
int64_t gguf_find_key(const struct gguf *g, const char *key);
/* Index of tensor or -1. */
int64_t gguf_find_tensor(const struct gguf *g, const char *name);
/* True if the file holds no tensors (a vocab-only file). */
bool gguf_is_vocab_only(const struct gguf *g);

/*
 * Typed getters. Each returns false if the key is absent or its type does not
 * fit. Integers are accepted from any integer type whose value fits; floats
 * from F32 or F64.
 */
bool gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out);
bool gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out);
bool gguf_get_i64(const struct gguf *g, const char *key, int64_t *out);
bool gguf_get_f64(const struct gguf *g, const char *key, double *out);
bool gguf_get_bool(const struct gguf *g, const char *key, bool *out);
bool gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out);
/* Array access: element type and count; false if absent or not an array. */
bool gguf_get_arr(const struct gguf *g, const char *key, uint32_t *elem_type, uint64_t *n);
/* Element i of a string array. */
struct gguf_str gguf_arr_str(const struct gguf *g, int64_t kv_idx, uint64_t i);
/* Pointer to the raw little-endian elements of a numeric array (unaligned:
 * read with memcpy), or NULL. */
const void *gguf_arr_data(const struct gguf *g, int64_t kv_idx);

/* Scalar value of entry kv_idx as text (for printing); writes into buf. */
void gguf_format_value(const struct gguf *g, int64_t kv_idx, char *buf, size_t cap);

/* Compare a gguf_str with a C string. */
bool gguf_str_eq(struct gguf_str s, const char *c);

#endif
