#include "gguf_write.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* growable byte buffer */
struct bytes {
    uint8_t *p;
    uint64_t len, cap;
};

static int bytes_put(struct bytes *b, const void *src, uint64_t n)
{
    if (n > b->cap - b->len) {
        uint64_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) return ST_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static int bytes_u32(struct bytes *b, uint32_t v)
{
    return bytes_put(b, &v, 4);
}

static int bytes_u64(struct bytes *b, uint64_t v)
{
    return bytes_put(b, &v, 8);
}

static int bytes_str(struct bytes *b, const char *s, uint64_t len)
{
    int rc = bytes_u64(b, len);
    return rc ? rc : bytes_put(b, s, len);
}

struct wtensor {
    char *name;
    uint64_t info_rel; /* where its info starts in ti */
    uint64_t offset;
    uint64_t size;
    const void *data;
};

struct gguf_writer {
    uint32_t version;
    uint32_t alignment;
    struct bytes kv; /* serialized metadata entries */
    uint64_t n_kv;
    char **keys;       /* for the duplicate check */
    uint64_t *key_rel; /* where each entry starts in kv */
    uint64_t keys_cap;
    struct bytes ti; /* serialized tensor infos */
    struct wtensor *t;
    uint64_t n_t, t_cap;
    uint64_t data_size; /* end of the last tensor's data, relative */
};

struct gguf_writer *gguf_writer_new(uint32_t version, uint32_t alignment)
{
    if ((version != 2 && version != 3) || alignment == 0 || (alignment & (alignment - 1)))
        return NULL;
    struct gguf_writer *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->version = version;
    w->alignment = alignment;
    if (alignment != GGUF_DEFAULT_ALIGNMENT &&
        gguf_writer_add_u32(w, "general.alignment", alignment)) {
        gguf_writer_destroy(&w);
        return NULL;
    }
    return w;
}

void gguf_writer_destroy(struct gguf_writer **wp)
{
    struct gguf_writer *w = *wp;
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    free(w->key_rel);
    for (uint64_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->kv.p);
    free(w->ti.p);
    free(w);
    *wp = NULL;
}

/* Check the key, remember it and write it with its type. */
static int put_key(struct gguf_writer *w, const char *key, uint32_t type)
{
    if (!key || !key[0]) return ST_EINVAL;
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return ST_EEXIST;
    if (w->n_kv == w->keys_cap) {
        uint64_t cap = w->keys_cap ? w->keys_cap * 2 : 32;
        char **k = realloc(w->keys, cap * sizeof(*k));
        if (!k) return ST_ENOMEM;
        w->keys = k;
        uint64_t *r = realloc(w->key_rel, cap * sizeof(*r));
        if (!r) return ST_ENOMEM;
        w->key_rel = r;
        w->keys_cap = cap;
    }
    char *copy = strdup(key);
    if (!copy) return ST_ENOMEM;
    w->key_rel[w->n_kv] = w->kv.len;
    int rc = bytes_str(&w->kv, key, strlen(key));
    if (!rc) rc = bytes_u32(&w->kv, type);
    if (rc) {
        free(copy);
        return rc;
    }
    w->keys[w->n_kv++] = copy;
    return 0;
}

static int add_scalar(struct gguf_writer *w, const char *key, uint32_t type, const void *v,
                      uint64_t size)
{
    uint64_t mark = w->kv.len;
    int rc = put_key(w, key, type);
    if (rc) return rc;
    rc = bytes_put(&w->kv, v, size);
    if (rc) { /* undo the key */
        w->kv.len = mark;
        free(w->keys[--w->n_kv]);
    }
    return rc;
}

int gguf_writer_add_u8(struct gguf_writer *w, const char *key, uint8_t v)
{
    return add_scalar(w, key, GGUF_U8, &v, 1);
}

int gguf_writer_add_i8(struct gguf_writer *w, const char *key, int8_t v)
{
    return add_scalar(w, key, GGUF_I8, &v, 1);
}

int gguf_writer_add_u16(struct gguf_writer *w, const char *key, uint16_t v)
{
    return add_scalar(w, key, GGUF_U16, &v, 2);
}

int gguf_writer_add_i16(struct gguf_writer *w, const char *key, int16_t v)
{
    return add_scalar(w, key, GGUF_I16, &v, 2);
}

int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    return add_scalar(w, key, GGUF_U32, &v, 4);
}

int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v)
{
    return add_scalar(w, key, GGUF_I32, &v, 4);
}

int gguf_writer_add_u64(struct gguf_writer *w, const char *key, uint64_t v)
{
    return add_scalar(w, key, GGUF_U64, &v, 8);
}

int gguf_writer_add_i64(struct gguf_writer *w, const char *key, int64_t v)
{
    return add_scalar(w, key, GGUF_I64, &v, 8);
}

int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v)
{
    return add_scalar(w, key, GGUF_F32, &v, 4);
}

int gguf_writer_add_f64(struct gguf_writer *w, const char *key, double v)
{
    return add_scalar(w, key, GGUF_F64, &v, 8);
}

int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, GGUF_BOOL, &b, 1);
}

int gguf_writer_add_strn(struct gguf_writer *w, const char *key, const char *v, uint64_t len)
{
    uint64_t mark = w->kv.len;
    int rc = put_key(w, key, GGUF_STRING);
    if (rc) return rc;
    if ((rc = bytes_str(&w->kv, v, len))) {
        w->kv.len = mark;
        free(w->keys[--w->n_kv]);
    }
    return rc;
}

int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v)
{
    return gguf_writer_add_strn(w, key, v, strlen(v));
}

static uint32_t elem_size(uint32_t vt)
{
    switch (vt) {
    case GGUF_U8:
    case GGUF_I8:
    case GGUF_BOOL:
        return 1;
    case GGUF_U16:
    case GGUF_I16:
        return 2;
    case GGUF_U32:
    case GGUF_I32:
    case GGUF_F32:
        return 4;
    case GGUF_U64:
    case GGUF_I64:
    case GGUF_F64:
        return 8;
    }
    return 0;
}

int gguf_writer_add_arr(struct gguf_writer *w, const char *key, uint32_t elem_type,
                        const void *data, uint64_t n)
{
    uint32_t es = elem_size(elem_type);
    if (!es || (n && !data) || n > UINT64_MAX / es) return ST_EINVAL;
    uint64_t mark = w->kv.len;
    int rc = put_key(w, key, GGUF_ARRAY);
    if (rc) return rc;
    if ((rc = bytes_u32(&w->kv, elem_type)) || (rc = bytes_u64(&w->kv, n)) ||
        (rc = bytes_put(&w->kv, data, n * es))) {
        w->kv.len = mark;
        free(w->keys[--w->n_kv]);
    }
    return rc;
}

int gguf_writer_add_arr_str(struct gguf_writer *w, const char *key, const char *const *strs,
                            uint64_t n)
{
    uint64_t mark = w->kv.len;
    int rc = put_key(w, key, GGUF_ARRAY);
    if (rc) return rc;
    if ((rc = bytes_u32(&w->kv, GGUF_STRING)) || (rc = bytes_u64(&w->kv, n))) goto undo;
    for (uint64_t i = 0; i < n; i++)
        if ((rc = bytes_str(&w->kv, strs[i], strlen(strs[i])))) goto undo;
    return 0;
undo:
    w->kv.len = mark;
    free(w->keys[--w->n_kv]);
    return rc;
}

int gguf_writer_add_raw(struct gguf_writer *w, const char *key, uint32_t type, const void *value,
                        uint64_t len)
{
    uint64_t mark = w->kv.len;
    int rc = put_key(w, key, type);
    if (rc) return rc;
    if ((rc = bytes_put(&w->kv, value, len))) {
        w->kv.len = mark;
        free(w->keys[--w->n_kv]);
    }
    return rc;
}

/* Length of a value of type vt at off in a buffer gguf_parse has validated. */
static uint64_t value_len(const uint8_t *buf, uint64_t off, uint32_t vt)
{
    if (vt == GGUF_STRING) {
        uint64_t len;
        memcpy(&len, buf + off, 8);
        return 8 + len;
    }
    if (vt != GGUF_ARRAY) return elem_size(vt);
    uint32_t et;
    uint64_t n, p = off + 12;
    memcpy(&et, buf + off, 4);
    memcpy(&n, buf + off + 4, 8);
    if (elem_size(et)) return 12 + n * elem_size(et);
    for (uint64_t i = 0; i < n; i++)
        p += value_len(buf, p, et);
    return p - off;
}

int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf *g, int64_t kv_idx)
{
    if (kv_idx < 0 || (uint64_t)kv_idx >= g->n_kv) return ST_EINVAL;
    const struct gguf_kv *kv = &g->kv[kv_idx];
    char *key = strndup(kv->key.p, kv->key.len);
    if (!key) return ST_ENOMEM;
    int rc = gguf_writer_add_raw(w, key, kv->type, g->buf + kv->value_off,
                                 value_len(g->buf, kv->value_off, kv->type));
    free(key);
    return rc;
}

static int64_t add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                          const uint64_t *ne, bool explicit_off, uint64_t offset, const void *data)
{
    if (!name || !name[0] || strlen(name) >= 64 || n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return ST_EINVAL;
    uint32_t be = ggml_type_block_elems(type);
    if (!be || ne[0] % be) return ST_EINVAL;
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || n > UINT64_MAX / ne[d]) return ST_EINVAL;
        n *= ne[d];
    }
    for (uint64_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return ST_EEXIST;
    if (w->n_t == w->t_cap) {
        uint64_t cap = w->t_cap ? w->t_cap * 2 : 64;
        struct wtensor *t = realloc(w->t, cap * sizeof(*t));
        if (!t) return ST_ENOMEM;
        w->t = t;
        w->t_cap = cap;
    }
    struct wtensor *t = &w->t[w->n_t];
    t->size = n / be * ggml_type_block_bytes(type);
    t->offset =
        explicit_off ? offset : (w->data_size + w->alignment - 1) / w->alignment * w->alignment;
    t->data = data;
    if (!(t->name = strdup(name))) return ST_ENOMEM;
    uint64_t mark = w->ti.len;
    t->info_rel = mark;
    int rc = bytes_str(&w->ti, name, strlen(name));
    if (!rc) rc = bytes_u32(&w->ti, n_dims);
    for (uint32_t d = 0; d < n_dims && !rc; d++)
        rc = bytes_u64(&w->ti, ne[d]);
    if (!rc) rc = bytes_u32(&w->ti, type);
    if (!rc) rc = bytes_u64(&w->ti, t->offset);
    if (rc) {
        w->ti.len = mark;
        free(t->name);
        return rc;
    }
    if (t->offset + t->size > w->data_size) w->data_size = t->offset + t->size;
    return (int64_t)w->n_t++;
}

int64_t gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t type,
                               uint32_t n_dims, const uint64_t *ne, const void *data)
{
    return add_tensor(w, name, type, n_dims, ne, false, 0, data);
}

int64_t gguf_writer_add_tensor_at(struct gguf_writer *w, const char *name, uint32_t type,
                                  uint32_t n_dims, const uint64_t *ne, uint64_t offset,
                                  const void *data)
{
    return add_tensor(w, name, type, n_dims, ne, true, offset, data);
}

uint64_t gguf_writer_n_kv(const struct gguf_writer *w)
{
    return w->n_kv;
}

uint64_t gguf_writer_n_tensors(const struct gguf_writer *w)
{
    return w->n_t;
}

uint64_t gguf_writer_tensor_offset(const struct gguf_writer *w, int64_t i)
{
    return w->t[i].offset;
}

uint64_t gguf_writer_tensor_size(const struct gguf_writer *w, int64_t i)
{
    return w->t[i].size;
}

uint64_t gguf_writer_kv_pos(const struct gguf_writer *w, int64_t i)
{
    return 24 + w->key_rel[i];
}

uint64_t gguf_writer_tensor_info_pos(const struct gguf_writer *w, int64_t i)
{
    return 24 + w->kv.len + w->t[i].info_rel;
}

uint64_t gguf_writer_data_offset(const struct gguf_writer *w)
{
    uint64_t hdr = 24 + w->kv.len + w->ti.len;
    return (hdr + w->alignment - 1) / w->alignment * w->alignment;
}

uint64_t gguf_writer_file_size(const struct gguf_writer *w)
{
    return gguf_writer_data_offset(w) + w->data_size;
}

static void write_header(const struct gguf_writer *w, uint8_t *p)
{
    uint64_t o = 0;
    memcpy(p, "GGUF", 4);
    memcpy(p + 4, &w->version, 4);
    memcpy(p + 8, &w->n_t, 8);
    memcpy(p + 16, &w->n_kv, 8);
    o = 24;
    if (w->kv.len) memcpy(p + o, w->kv.p, w->kv.len);
    o += w->kv.len;
    if (w->ti.len) memcpy(p + o, w->ti.p, w->ti.len);
    o += w->ti.len;
    memset(p + o, 0, gguf_writer_data_offset(w) - o);
}

int gguf_writer_header(const struct gguf_writer *w, uint8_t **out, uint64_t *len)
{
    *len = gguf_writer_data_offset(w);
    *out = malloc(*len);
    if (!*out) return ST_ENOMEM;
    write_header(w, *out);
    return 0;
}

int gguf_writer_to_mem(const struct gguf_writer *w, uint8_t **out, uint64_t *len)
{
    uint64_t doff = gguf_writer_data_offset(w);
    *len = doff + w->data_size;
    *out = calloc(1, *len ? *len : 1);
    if (!*out) return ST_ENOMEM;
    write_header(w, *out);
    for (uint64_t i = 0; i < w->n_t; i++)
        if (w->t[i].data) memcpy(*out + doff + w->t[i].offset, w->t[i].data, w->t[i].size);
    return 0;
}

int gguf_writer_to_file(const struct gguf_writer *w, const char *path, struct st_errbuf *eb)
{
    uint8_t *buf;
    uint64_t len;
    if (gguf_writer_to_mem(w, &buf, &len)) return st_errf(eb, ST_ENOMEM, "out of memory");
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(buf);
        return st_errf(eb, ST_EIO, "%s: %s", path, strerror(errno));
    }
    size_t wr = fwrite(buf, 1, len, f);
    int cl = fclose(f);
    free(buf);
    if (wr != len || cl) return st_errf(eb, ST_EIO, "%s: write failed: %s", path, strerror(errno));
    return 0;
}
