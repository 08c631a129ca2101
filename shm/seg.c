#include "seg.h"

#include "common/log.h"
#include "common/wsum.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

struct seg {
    uint8_t *base;
    uint64_t size;
    bool writable;
    struct st_model *model;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t header_checksum(const struct seg_header *h)
{
    struct seg_header copy;
    memcpy(&copy, h, sizeof(copy));
    copy.header_sum = 0;
    return wsum64(&copy, sizeof(copy));
}

static bool region_ok(uint64_t off, uint64_t len, uint64_t total)
{
    return off <= total && len <= total - off;
}

/* Everything a reader checks before trusting the segment. */
static int seg_check(struct seg *s, bool verify_data, struct st_errbuf *eb)
{
    const struct seg_header *h = (const struct seg_header *)s->base;
    if (s->size < SEG_HEADER_SIZE || memcmp(h->magic, SEG_MAGIC, 8) != 0)
        return st_errf(eb, ST_EFORMAT, "segment: bad magic (not a staged segment)");
    if (h->format_version != SEG_FORMAT_VERSION)
        return st_errf(eb, ST_EFORMAT, "segment: format version %u, this build reads %u",
                       h->format_version, SEG_FORMAT_VERSION);
    if (h->state != SEG_READY) return st_errf(eb, ST_ESTATE, "segment: still being built");
    if (header_checksum(h) != h->header_sum)
        return st_errf(eb, ST_EINTEGRITY, "segment: header checksum mismatch");
    if (h->total_size != s->size || h->n_tensors > (s->size / sizeof(struct seg_tensor)) ||
        !region_ok(h->dir_off, h->n_tensors * sizeof(struct seg_tensor), s->size) ||
        !region_ok(h->meta_off, h->meta_size, s->size) ||
        !region_ok(h->data_off, h->data_size, s->size) || h->data_off % SEG_DATA_ALIGN)
        return st_errf(eb, ST_EFORMAT, "segment: regions do not fit the %" PRIu64 "-byte object",
                       s->size);
    int rc = model_open_mem(s->base + h->meta_off, h->meta_size, h->source.size,
                            s->base + h->data_off, &s->model, eb);
    if (rc) return rc;
    const struct gguf *g = s->model->gguf;
    const struct seg_tensor *dir = (const struct seg_tensor *)(s->base + h->dir_off);
    if (g->n_tensors != h->n_tensors)
        return st_errf(eb, ST_EFORMAT, "segment: directory has %" PRIu64 " tensors, metadata %" PRIu64,
                       h->n_tensors, g->n_tensors);
    if (memcmp(&s->model->hp, &h->hp, sizeof(h->hp)) != 0)
        return st_errf(eb, ST_EFORMAT, "segment: hyperparameters differ from the metadata");
    for (uint64_t i = 0; i < h->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        const struct seg_tensor *d = &dir[i];
        if (!gguf_str_eq(t->name, d->name) || t->type != d->type || t->offset != d->offset ||
            t->size != d->size || !region_ok(d->offset, d->size, h->data_size))
            return st_errf(eb, ST_EFORMAT, "segment: directory entry %" PRIu64 " (%.64s) differs "
                                           "from the metadata", i, d->name);
        if (verify_data && wsum64(s->base + h->data_off + d->offset, d->size) != d->wsum)
            return st_errf(eb, ST_EINTEGRITY, "segment: tensor %s checksum mismatch", d->name);
    }
    return 0;
}

static int map_existing(const char *name, bool writable, struct seg **out, struct st_errbuf *eb)
{
    *out = NULL;
    int fd = shm_open(name, writable ? O_RDWR : O_RDONLY, 0);
    if (fd < 0) {
        if (errno == ENOENT) return st_errf(eb, ST_ENOTFOUND, "segment %s: does not exist", name);
        return st_errf(eb, ST_EIO, "segment %s: shm_open: %s", name, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < SEG_HEADER_SIZE) {
        close(fd);
        return st_errf(eb, ST_EFORMAT, "segment %s: too small to hold a header", name);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED,
                   fd, 0);
    close(fd);
    if (p == MAP_FAILED) return st_errf(eb, ST_EIO, "segment %s: mmap: %s", name, strerror(errno));
    struct seg *s = calloc(1, sizeof(*s));
    if (!s) {
        munmap(p, (size_t)st.st_size);
        return st_errf(eb, ST_ENOMEM, "out of memory");
    }
    s->base = p;
    s->size = (uint64_t)st.st_size;
    s->writable = writable;
    *out = s;
    return 0;
}

int seg_attach(const char *name, bool verify_data, struct seg **out, struct st_errbuf *eb)
{
    int rc = map_existing(name, false, out, eb);
    if (rc) return rc;
    if ((rc = seg_check(*out, verify_data, eb))) seg_detach(out);
    return rc;
}

struct st_model *seg_model(struct seg *s)
{
    return s->model;
}

const struct seg_header *seg_header(const struct seg *s)
{
    return (const struct seg_header *)s->base;
}

const struct seg_tensor *seg_dir(const struct seg *s)
{
    return (const struct seg_tensor *)(s->base + seg_header(s)->dir_off);
}

const uint8_t *seg_data(const struct seg *s)
{
    return s->base + seg_header(s)->data_off;
}

void seg_detach(struct seg **sp)
{
    struct seg *s = *sp;
    if (!s) return;
    model_close(&s->model);
    munmap(s->base, s->size);
    free(s);
    *sp = NULL;
}

int seg_unlink(const char *name)
{
    if (shm_unlink(name) < 0 && errno != ENOENT) return ST_EIO;
    return 0;
}

int seg_verify_tensors(const struct seg *s, uint32_t *bad, int max_bad)
{
    const struct seg_header *h = seg_header(s);
    const struct seg_tensor *dir = seg_dir(s);
    int n_bad = 0;
    for (uint64_t i = 0; i < h->n_tensors; i++) {
        if (wsum64(s->base + h->data_off + dir[i].offset, dir[i].size) == dir[i].wsum) continue;
        if (n_bad < max_bad) bad[n_bad] = (uint32_t)i;
        n_bad++;
    }
    return n_bad;
}

/* ---- building ---- */

struct src_file {
    int fd;
    const char *path;
    uint64_t bytes_read;
};

/* pread exactly len bytes (the only place the model file is read). */
static int src_read(struct src_file *f, void *buf, uint64_t len, uint64_t off, struct st_errbuf *eb)
{
    uint8_t *p = buf;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t n = pread(f->fd, p, chunk, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return st_errf(eb, ST_EIO, "%s: read at byte %" PRIu64 ": %s", f->path, off,
                           n < 0 ? strerror(errno) : "unexpected end of file");
        f->bytes_read += (uint64_t)n;
        p += n;
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

/* Read the GGUF header region: grow the buffer until the parse no longer
 * runs out of bytes. */
static int read_header(struct src_file *f, uint64_t file_size, uint8_t **buf_out,
                       uint64_t *have_out, struct gguf **g_out, struct st_errbuf *eb)
{
    uint64_t have = 0, want = file_size < (1u << 20) ? file_size : (1u << 20);
    uint8_t *buf = NULL;
    for (;;) {
        uint8_t *nb = realloc(buf, want ? want : 1);
        if (!nb) {
            free(buf);
            return st_errf(eb, ST_ENOMEM, "out of memory reading the GGUF header");
        }
        buf = nb;
        int rc = src_read(f, buf + have, want - have, have, eb);
        if (rc) {
            free(buf);
            return rc;
        }
        have = want;
        rc = gguf_parse(buf, have, file_size, g_out, eb);
        if (rc == 0 || have == file_size) {
            if (rc) free(buf);
            else *buf_out = buf;
            *have_out = have;
            return rc;
        }
        want = have * 4 < file_size ? have * 4 : file_size;
    }
}

static int cmp_dir_off(const void *a, const void *b, void *ctx)
{
    const struct seg_tensor *dir = ctx;
    uint64_t oa = dir[*(const uint32_t *)a].offset, ob = dir[*(const uint32_t *)b].offset;
    return oa < ob ? -1 : oa > ob;
}

/*
 * Copy the file's tensor-data section into the segment object through
 * buffers: the calling thread reads chunks (pread; bytes already read with
 * the header are not read again) and accumulates every tensor's checksum
 * from them, while a writer thread writes the previous chunks into the shm
 * fd (pwrite: the pages are allocated without faults through a mapping).
 */
#define COPY_CHUNK (8u << 20)
#define COPY_BUFS 3

struct copy_pipe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *buf[COPY_BUFS];
    uint64_t len[COPY_BUFS], at[COPY_BUFS]; /* bytes, segment offset */
    uint64_t produced, consumed;            /* chunk counters */
    bool eof;
    int fd;
    int err;                                /* errno of a failed write */
};

static void *copy_writer(void *arg)
{
    struct copy_pipe *cp = arg;
    for (;;) {
        pthread_mutex_lock(&cp->mu);
        while (cp->consumed == cp->produced && !cp->eof) pthread_cond_wait(&cp->cv, &cp->mu);
        if (cp->consumed == cp->produced) {
            pthread_mutex_unlock(&cp->mu);
            return NULL;
        }
        int k = (int)(cp->consumed % COPY_BUFS);
        pthread_mutex_unlock(&cp->mu);
        for (uint64_t w = 0; w < cp->len[k] && !cp->err;) {
            ssize_t m = pwrite(cp->fd, cp->buf[k] + w, cp->len[k] - w, (off_t)(cp->at[k] + w));
            if (m < 0 && errno == EINTR) continue;
            if (m <= 0) cp->err = m < 0 ? errno : EIO;
            else w += (uint64_t)m;
        }
        pthread_mutex_lock(&cp->mu);
        cp->consumed++;
        pthread_cond_broadcast(&cp->cv);
        pthread_mutex_unlock(&cp->mu);
    }
}

static int copy_data(struct src_file *f, int fd, const struct gguf *g, const uint8_t *hdr,
                     uint64_t hdr_have, uint64_t data_off, uint64_t data_size,
                     struct seg_tensor *dir, seg_progress_fn progress, void *pctx,
                     struct st_errbuf *eb)
{
    struct copy_pipe cp = {.fd = fd};
    uint32_t *order = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof(uint32_t));
    struct wsum_acc *acc = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*acc));
    bool ok = order && acc;
    for (int k = 0; k < COPY_BUFS; k++) ok = ok && (cp.buf[k] = malloc(COPY_CHUNK));
    pthread_t writer;
    if (!ok || pthread_mutex_init(&cp.mu, NULL) || pthread_cond_init(&cp.cv, NULL) ||
        pthread_create(&writer, NULL, copy_writer, &cp)) {
        for (int k = 0; k < COPY_BUFS; k++) free(cp.buf[k]);
        free(order);
        free(acc);
        return st_errf(eb, ST_ENOMEM, "out of memory for the staging buffers");
    }
    for (uint32_t i = 0; i < g->n_tensors; i++) order[i] = i;
    qsort_r(order, g->n_tensors, sizeof(uint32_t), cmp_dir_off, dir);
    uint64_t first = 0; /* first tensor (in offset order) not yet complete */
    int rc = 0;
    for (uint64_t done = 0; done < data_size && !rc;) {
        pthread_mutex_lock(&cp.mu);
        while (cp.produced - cp.consumed == COPY_BUFS) pthread_cond_wait(&cp.cv, &cp.mu);
        pthread_mutex_unlock(&cp.mu);
        int slot = (int)(cp.produced % COPY_BUFS);
        uint8_t *buf = cp.buf[slot];
        uint64_t n = data_size - done < COPY_CHUNK ? data_size - done : COPY_CHUNK;
        uint64_t from_hdr = 0;
        if (hdr_have > g->data_offset + done) {
            from_hdr = hdr_have - g->data_offset - done;
            if (from_hdr > n) from_hdr = n;
            memcpy(buf, hdr + g->data_offset + done, from_hdr);
        }
        if (from_hdr < n &&
            (rc = src_read(f, buf + from_hdr, n - from_hdr, g->data_offset + done + from_hdr, eb)))
            break;
        for (uint64_t k = first; k < g->n_tensors; k++) {
            struct seg_tensor *d = &dir[order[k]];
            if (d->offset >= done + n) break;
            uint64_t a = d->offset > done ? d->offset : done;
            uint64_t b = d->offset + d->size < done + n ? d->offset + d->size : done + n;
            if (a < b) wsum_add(&acc[order[k]], buf + (a - done), b - a, (a - d->offset) / 4);
            if (d->offset + d->size <= done + n && k == first) first++;
        }
        pthread_mutex_lock(&cp.mu);
        cp.len[slot] = n;
        cp.at[slot] = data_off + done;
        cp.produced++;
        pthread_cond_broadcast(&cp.cv);
        pthread_mutex_unlock(&cp.mu);
        done += n;
        if (progress) progress(done, data_size, pctx);
    }
    pthread_mutex_lock(&cp.mu);
    cp.eof = true;
    pthread_cond_broadcast(&cp.cv);
    pthread_mutex_unlock(&cp.mu);
    pthread_join(writer, NULL);
    if (!rc && cp.err) rc = st_errf(eb, ST_EIO, "segment: write: %s", strerror(cp.err));
    if (!rc)
        for (uint64_t i = 0; i < g->n_tensors; i++) dir[i].wsum = wsum_value(&acc[i]);
    pthread_mutex_destroy(&cp.mu);
    pthread_cond_destroy(&cp.cv);
    for (int k = 0; k < COPY_BUFS; k++) free(cp.buf[k]);
    free(order);
    free(acc);
    return rc;
}

static uint64_t new_generation(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 44);
}

static int build(const char *name, const char *path, const struct stat *st, seg_progress_fn progress,
                 void *pctx, struct seg **out, struct seg_stats *stats, struct st_errbuf *eb)
{
    struct src_file f = {.fd = -1, .path = path};
    uint8_t *hdr = NULL;
    struct gguf *g = NULL;
    struct seg *s = NULL;
    int rc;

    f.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) return st_errf(eb, ST_EIO, "%s: %s", path, strerror(errno));
    uint64_t file_size = (uint64_t)st->st_size;
    uint64_t hdr_have = 0;
    if ((rc = read_header(&f, file_size, &hdr, &hdr_have, &g, eb))) goto out;
    struct model_hparams hp;
    if ((rc = model_hparams_read(g, &hp, eb)) || (rc = model_validate(g, &hp, eb))) goto out;

    uint64_t data_size = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].offset + g->tensors[i].size > data_size)
            data_size = g->tensors[i].offset + g->tensors[i].size;
    uint64_t dir_off = SEG_HEADER_SIZE;
    uint64_t meta_off = dir_off + g->n_tensors * sizeof(struct seg_tensor);
    uint64_t data_off = (meta_off + g->header_end + SEG_DATA_ALIGN - 1) / SEG_DATA_ALIGN *
                        SEG_DATA_ALIGN;
    uint64_t total = data_off + (data_size + SEG_DATA_ALIGN - 1) / SEG_DATA_ALIGN * SEG_DATA_ALIGN;

    shm_unlink(name);
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        rc = st_errf(eb, ST_EIO, "segment %s: shm_open: %s", name, strerror(errno));
        goto out;
    }
    /* Allocate the pages up front (tmpfs: much cheaper than faulting them in
     * through a mapping); ftruncate alone where fallocate is not supported. */
    if (fallocate(fd, 0, 0, (off_t)total) < 0 && ftruncate(fd, (off_t)total) < 0) {
        rc = st_errf(eb, ST_EIO, "segment %s: allocating %" PRIu64 " bytes: %s", name, total,
                     strerror(errno));
        close(fd);
        goto out_unlink;
    }
    void *p = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = st_errf(eb, ST_EIO, "segment %s: mmap: %s", name, strerror(errno));
        close(fd);
        goto out_unlink;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        munmap(p, (size_t)total);
        close(fd);
        rc = st_errf(eb, ST_ENOMEM, "out of memory");
        goto out_unlink;
    }
    s->base = p;
    s->size = total;
    s->writable = true;

    struct seg_header *h = (struct seg_header *)s->base;
    memcpy(h->magic, SEG_MAGIC, 8);
    h->format_version = SEG_FORMAT_VERSION;
    h->state = SEG_BUILDING;
    h->generation = new_generation();
    h->source = (struct seg_source){(uint64_t)st->st_dev, (uint64_t)st->st_ino, file_size,
                                    st->st_mtim.tv_sec, st->st_mtim.tv_nsec};
    h->n_tensors = g->n_tensors;
    h->dir_off = dir_off;
    h->meta_off = meta_off;
    h->meta_size = g->header_end;
    h->data_off = data_off;
    h->data_size = data_size;
    h->total_size = total;
    h->hp = hp;
    snprintf(h->source_path, sizeof(h->source_path), "%s", path);
    memcpy(s->base + meta_off, hdr, g->header_end);

    struct seg_tensor *dir = (struct seg_tensor *)(s->base + dir_off);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        struct seg_tensor *d = &dir[i];
        memset(d, 0, sizeof(*d));
        memcpy(d->name, t->name.p, t->name.len);
        d->type = t->type;
        d->n_dims = t->n_dims;
        memcpy(d->ne, t->ne, sizeof(d->ne));
        d->offset = t->offset;
        d->size = t->size;
    }
    rc = copy_data(&f, fd, g, hdr, hdr_have, data_off, data_size, dir, progress, pctx, eb);
    close(fd);
    if (rc) goto out_unlink;
    XXH3_state_t *xs = XXH3_createState();
    if (!xs) {
        rc = st_errf(eb, ST_ENOMEM, "out of memory");
        goto out_unlink;
    }
    XXH3_64bits_reset(xs);
    XXH3_64bits_update(xs, hdr, g->header_end);
    for (uint64_t i = 0; i < g->n_tensors; i++) XXH3_64bits_update(xs, &dir[i].wsum, sizeof(dir[i].wsum));
    h->content_hash = XXH3_64bits_digest(xs);
    XXH3_freeState(xs);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->build_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    if ((rc = model_open_mem(s->base + meta_off, g->header_end, file_size, s->base + data_off,
                             &s->model, eb)))
        goto out_unlink;
    __atomic_store_n(&h->state, SEG_READY, __ATOMIC_RELEASE);
    h->header_sum = header_checksum(h);
    *out = s;
    s = NULL;
    rc = 0;
    goto out;

out_unlink:
    shm_unlink(name);
out:
    if (s) seg_detach(&s);
    stats->file_bytes_read += f.bytes_read;
    gguf_destroy(&g);
    free(hdr);
    if (f.fd >= 0) close(f.fd);
    return rc;
}

int seg_stage(const char *name, const char *path, bool verify_data, seg_progress_fn progress,
              void *progress_ctx, struct seg **out, struct seg_stats *stats, struct st_errbuf *eb)
{
    *out = NULL;
    memset(stats, 0, sizeof(*stats));
    double t0 = now_s();
    struct stat st;
    if (stat(path, &st) < 0) return st_errf(eb, ST_EIO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return st_errf(eb, ST_EIO, "%s: not a regular file", path);

    struct seg *s;
    struct st_errbuf why = {{0}};
    int rc = map_existing(name, true, &s, &why);
    if (rc == 0) {
        const struct seg_header *h = seg_header(s);
        rc = seg_check(s, verify_data, &why);
        if (rc == 0 && (h->source.dev != (uint64_t)st.st_dev || h->source.ino != (uint64_t)st.st_ino ||
                        h->source.size != (uint64_t)st.st_size ||
                        h->source.mtime_sec != st.st_mtim.tv_sec ||
                        h->source.mtime_nsec != st.st_mtim.tv_nsec))
            rc = st_errf(&why, ST_EINTEGRITY, "segment holds another file (%s)", h->source_path);
        if (rc == 0) {
            stats->reattached = true;
            stats->seconds = now_s() - t0;
            *out = s;
            return 0;
        }
        log_warn("segment %s not reusable, rebuilding from the file: %s", name, why.msg);
        seg_detach(&s);
    }
    rc = build(name, path, &st, progress, progress_ctx, out, stats, eb);
    stats->seconds = now_s() - t0;
    return rc;
}
