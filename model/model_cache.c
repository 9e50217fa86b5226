/* model_cache.c: the quantized model in a file (see model_cache.h).
 *
 * The file, all integers little-endian (the build's own: x86-64):
 *   [0, 128)        header: magic, the two checksums, versions, sizes, fingerprint, where
 *                   the key, the table and the payload are
 *   key             the mcache_key bytes it was built for, compared whole at load
 *   table           one entry per array: offset, bytes, aux (the float bits of double
 *                   quantization's offset on a matrix's data entry)
 *   payload         from a 64-byte boundary: every array at a 64-byte offset, zero-padded
 *                   to the next, in the order of slots_of
 * meta_sum covers [32, payload), payload_sum [payload, end): every byte after the sums is
 * checked, so a flipped byte or a truncation is refused, never read as weights. */
#include "model_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MCACHE_MAGIC "QLORAMC\n"
#define MCACHE_VERSION 1u
#define HEADER_BYTES 128
#define SUMMED_FROM 32 /* magic and the two sums are not under meta_sum */

typedef struct {
    char magic[8];
    uint64_t meta_sum, payload_sum, reserved;
    uint32_t version, layout;
    uint64_t file_bytes, fingerprint;
    uint64_t key_off, key_len;
    uint64_t table_off, n_entries;
    uint64_t payload_off;
} header;
_Static_assert(sizeof(header) <= HEADER_BYTES, "the header fits its bytes");
_Static_assert(sizeof(llama_config) % 4 == 0, "the config is 32-bit fields");

typedef struct {
    uint64_t offset, bytes, aux;
} entry;

/* ---- checksum ---- */

typedef struct {
    uint64_t a[4], b[4];
} sum_state;

static void sum_feed(sum_state *s, const void *p, size_t n) /* n: a multiple of 32 */
{
    const unsigned char *c = p;
    uint64_t a0 = s->a[0], a1 = s->a[1], a2 = s->a[2], a3 = s->a[3];
    uint64_t b0 = s->b[0], b1 = s->b[1], b2 = s->b[2], b3 = s->b[3];
    for (size_t i = 0; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, c + i, 32);
        a0 += w[0], a1 += w[1], a2 += w[2], a3 += w[3];
        b0 += a0, b1 += a1, b2 += a2, b3 += a3;
    }
    s->a[0] = a0, s->a[1] = a1, s->a[2] = a2, s->a[3] = a3;
    s->b[0] = b0, s->b[1] = b1, s->b[2] = b2, s->b[3] = b3;
}

static uint64_t sum_final(const sum_state *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int j = 0; j < 4; j++) {
        h = (h ^ s->a[j]) * 0x100000001b3ull;
        h = (h ^ s->b[j]) * 0x100000001b3ull;
    }
    return h;
}

uint64_t mcache_checksum(const void *p, size_t n)
{
    sum_state s = {{0}, {0}};
    sum_feed(&s, p, n);
    return sum_final(&s);
}

static size_t pad64(size_t n)
{
    return (n + 63) / 64 * 64;
}

/* n bytes at p as the file holds them: then zeros to the next 64-byte boundary. */
static void sum_padded(sum_state *s, const void *p, size_t n)
{
    size_t whole = n / 32 * 32;
    unsigned char tail[64] = {0};
    sum_feed(s, p, whole);
    memcpy(tail, (const unsigned char *)p + whole, n - whole);
    sum_feed(s, tail, pad64(n) - whole);
}

/* ---- key ---- */

static int key_add(mcache_key *k, const void *p, size_t n)
{
    if (k->len + n > k->cap) {
        size_t cap = (k->len + n) * 2 + 256;
        uint8_t *b = realloc(k->bytes, cap);
        if (!b)
            return -1;
        k->bytes = b, k->cap = cap;
    }
    memcpy(k->bytes + k->len, p, n);
    k->len += n;
    return 0;
}

static int key_u64(mcache_key *k, uint64_t v)
{
    return key_add(k, &v, sizeof v);
}

int mcache_key_init(mcache_key *k, const llama_model *m)
{
    memset(k, 0, sizeof *k);
    const uint64_t words[] = {MCACHE_VERSION, QT_LAYOUT_VERSION, (uint64_t)m->spec.format, (uint64_t)m->spec.block,
                              (uint64_t)m->spec.double_quant, (uint64_t)m->tied, (uint64_t)m->hf_layout,
                              (uint64_t)m->gguf, sizeof m->cfg};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (key_u64(k, words[i]) < 0)
            return -1;
    return key_add(k, &m->cfg, sizeof m->cfg);
}

int mcache_key_file(mcache_key *k, const char *path, char *err, size_t errlen)
{
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(path, real) || stat(real, &st) < 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        return -1;
    }
    uint64_t n = strlen(real);
    const uint64_t id[] = {(uint64_t)st.st_size, (uint64_t)st.st_mtim.tv_sec, (uint64_t)st.st_mtim.tv_nsec,
                           (uint64_t)st.st_ctim.tv_sec, (uint64_t)st.st_ctim.tv_nsec, (uint64_t)st.st_ino,
                           (uint64_t)st.st_dev, n};
    for (size_t i = 0; i < sizeof id / sizeof id[0]; i++)
        if (key_u64(k, id[i]) < 0)
            goto oom;
    if (key_add(k, real, n) == 0)
        return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

void mcache_key_free(mcache_key *k)
{
    free(k->bytes);
    memset(k, 0, sizeof *k);
}

int mcache_key_equal(const mcache_key *a, const mcache_key *b)
{
    return a->len == b->len && !memcmp(a->bytes, b->bytes, a->len);
}

int mcache_path(char *out, size_t n, const char *cache_dir, const char *model_dir, qt_spec spec, char *err,
                size_t errlen)
{
    char real[PATH_MAX], name[65];
    if (!realpath(model_dir, real)) {
        snprintf(err, errlen, "%s: %s", model_dir, strerror(errno));
        return -1;
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *c = real; *c; c++)
        h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    const uint32_t tag[] = {(uint32_t)spec.format, (uint32_t)spec.block, (uint32_t)spec.double_quant};
    for (size_t i = 0; i < sizeof tag / sizeof tag[0]; i++)
        h = (h ^ tag[i]) * 0x100000001b3ull;
    const char *base = strrchr(real, '/');
    base = base && base[1] ? base + 1 : "model";
    size_t i = 0;
    for (; base[i] && i < sizeof name - 1; i++) /* the name only helps a reader of the directory */
        name[i] = (base[i] == '.' || base[i] == '-' || base[i] == '_' || (base[i] >= '0' && base[i] <= '9') ||
                   ((base[i] | 32) >= 'a' && (base[i] | 32) <= 'z'))
                      ? base[i]
                      : '_';
    name[i] = 0;
    int len = snprintf(out, n, "%s/%s-%s-b%d%s-%016llx.qlc", cache_dir, name, qt_format_name(spec.format),
                       spec.block, spec.double_quant ? "-dq" : "", (unsigned long long)h);
    if (len < 0 || (size_t)len >= n) {
        snprintf(err, errlen, "--cache-dir %s: the path is too long", cache_dir);
        return -1;
    }
    return 0;
}

/* ---- what the file holds, in order ---- */

typedef struct {
    qt_matrix *mat; /* a matrix of spec, rows x cols; or */
    float **vec;    /* a vector of n floats */
    qt_spec spec;
    int rows, cols;
    size_t n;
} slot;

/* The model's arrays in the file's order, into s (NULL: only counted). */
static size_t slots_of(llama_model *m, slot *s)
{
    const llama_config *c = &m->cfg;
    size_t n = 0;
    qt_spec f32 = qt_spec_default(QT_F32);
#define MAT(p, sp, r, k) (s ? (void)(s[n] = (slot){.mat = (p), .spec = (sp), .rows = (r), .cols = (k)}) : (void)0, n++)
#define VEC(p, len) (s ? (void)(s[n] = (slot){.vec = (p), .n = (size_t)(len)}) : (void)0, n++)
    MAT(&m->embed, f32, c->vocab_size, c->dim);
    if (!m->tied)
        MAT(&m->head, f32, c->vocab_size, c->dim);
    for (int l = 0; l < c->n_layers; l++) {
        llama_layer *L = &m->layers[l];
        VEC(&L->rms_att, c->dim);
        VEC(&L->rms_ffn, c->dim);
        if (c->qk_norm) {
            VEC(&L->q_norm, c->head_size);
            VEC(&L->k_norm, c->head_size);
        }
        for (int k = 0; k < LIN_COUNT; k++) {
            int rows, cols;
            llama_linear_shape(c, (llama_linear)k, &rows, &cols);
            MAT(&L->lin[k], m->spec, rows, cols);
            if (c->biases >> k & 1)
                VEC(&L->bias[k], rows);
        }
    }
    VEC(&m->rms_final, c->dim);
    if (c->rope.type == LLAMA_ROPE_FACTORS)
        VEC(&m->rope_factors, c->head_size / 2);
#undef MAT
#undef VEC
    return n;
}

static size_t entries_of(const slot *s)
{
    return s->mat ? QT_NARRAYS : 1;
}

/* The bytes of array a of slot s (a vector has one array) and where they are. */
static size_t slot_array(const slot *s, int a, const void **p)
{
    if (s->vec) {
        *p = *s->vec;
        return s->n * sizeof(float);
    }
    size_t bytes[QT_NARRAYS];
    char err[256];
    if (qt_array_sizes(s->mat->spec, s->mat->rows, s->mat->cols, bytes, err, sizeof err) < 0)
        return *p = NULL, 0;
    *p = qt_array_of(s->mat, (qt_array)a);
    return *p ? bytes[a] : 0;
}

/* ---- load ---- */

#define REFUSE(...) return snprintf(why, whylen, __VA_ARGS__), -1

/* An entry's bytes lie inside the payload, 64-byte aligned (an absent array: none, at 0). */
static int entry_ok(const entry *e, const header *h)
{
    if (e->bytes == 0)
        return e->offset == 0;
    return e->offset % 64 == 0 && e->offset >= h->payload_off && e->offset <= h->file_bytes &&
           e->bytes <= h->file_bytes - e->offset;
}

static int load_slot(const slot *s, const entry *e, const header *h, const uint8_t *map, size_t i, char *why,
                     size_t whylen)
{
    for (size_t a = 0; a < entries_of(s); a++)
        if (!entry_ok(&e[a], h))
            REFUSE("table entry %zu: %llu bytes at %llu lie outside the payload [%llu, %llu) or unaligned", i + a,
                   (unsigned long long)e[a].bytes, (unsigned long long)e[a].offset,
                   (unsigned long long)h->payload_off, (unsigned long long)h->file_bytes);
    if (s->vec) {
        if (e->bytes != s->n * sizeof(float))
            REFUSE("table entry %zu: %llu bytes, the config wants a vector of %zu floats", i,
                   (unsigned long long)e->bytes, s->n);
        if (!(*s->vec = malloc(s->n * sizeof(float))))
            REFUSE("out of memory");
        memcpy(*s->vec, map + e->offset, s->n * sizeof(float));
        return 0;
    }
    const void *arrays[QT_NARRAYS];
    size_t bytes[QT_NARRAYS];
    for (int a = 0; a < QT_NARRAYS; a++) {
        bytes[a] = (size_t)e[a].bytes;
        arrays[a] = e[a].bytes ? map + e[a].offset : NULL;
    }
    float offset;
    uint32_t bits = (uint32_t)e[QT_ARRAY_DATA].aux;
    memcpy(&offset, &bits, sizeof offset);
    char qerr[512];
    if (qt_view(s->mat, s->spec, s->rows, s->cols, offset, arrays, bytes, qerr, sizeof qerr) < 0)
        REFUSE("table entry %zu: %s", i, qerr);
    return 0;
}

int mcache_load(llama_model *m, const char *path, const mcache_key *key, char *why, size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        REFUSE("cannot open: %s", strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        REFUSE("cannot stat: %s", strerror(e));
    }
    size_t size = (size_t)st.st_size;
    if (size < HEADER_BYTES) {
        close(fd);
        REFUSE("truncated: %zu bytes, less than a header", size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        REFUSE("cannot map: %s", strerror(e));
    m->cache_map = map, m->cache_size = size; /* llama_free unmaps it, on failure too */
    const uint8_t *b = map;
    header h;
    memcpy(&h, b, sizeof h);
    if (memcmp(h.magic, MCACHE_MAGIC, sizeof h.magic))
        REFUSE("not a qlorad model cache (bad magic)");
    if (h.version != MCACHE_VERSION || h.layout != QT_LAYOUT_VERSION)
        REFUSE("cache format %u, quant layout %u: this build writes %u, %u", h.version, h.layout, MCACHE_VERSION,
               QT_LAYOUT_VERSION);
    if (h.file_bytes != size)
        REFUSE("truncated or extended: %zu bytes, its header says %llu", size, (unsigned long long)h.file_bytes);
    if (h.payload_off % 64 || h.payload_off < HEADER_BYTES || h.payload_off > size || (size - h.payload_off) % 64 ||
        h.key_off < HEADER_BYTES || h.key_off > h.payload_off || h.key_len > h.payload_off - h.key_off ||
        h.table_off < HEADER_BYTES || h.table_off % 8 || h.table_off > h.payload_off ||
        h.n_entries > (h.payload_off - h.table_off) / sizeof(entry))
        REFUSE("header: key, table or payload outside the file or out of order");
    if (mcache_checksum(b + SUMMED_FROM, (size_t)h.payload_off - SUMMED_FROM) != h.meta_sum)
        REFUSE("header checksum mismatch (the file is corrupt)");
    if (h.key_len != key->len || memcmp(b + h.key_off, key->bytes, key->len))
        REFUSE("stale: built from other source files (size, mtime, ctime, inode), spec or config");
    if (!(m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers)))
        REFUSE("out of memory");
    size_t n = slots_of(m, NULL), n_entries = 0;
    slot *s = calloc(n, sizeof *s);
    if (!s)
        REFUSE("out of memory");
    slots_of(m, s);
    for (size_t i = 0; i < n; i++)
        n_entries += entries_of(&s[i]);
    int rc = 0;
    if (h.n_entries != n_entries) {
        snprintf(why, whylen, "table: %llu entries, the config has %zu arrays", (unsigned long long)h.n_entries,
                 n_entries);
        rc = -1;
    } else if (mcache_checksum(b + h.payload_off, size - (size_t)h.payload_off) != h.payload_sum) {
        snprintf(why, whylen, "payload checksum mismatch (the file is corrupt)");
        rc = -1;
    }
    const entry *table = (const entry *)(b + h.table_off); /* 8-byte aligned in a page-aligned map */
    for (size_t i = 0, at = 0; i < n && rc == 0; at += entries_of(&s[i]), i++)
        rc = load_slot(&s[i], table + at, &h, b, at, why, whylen);
    free(s);
    if (rc == 0)
        m->fingerprint = h.fingerprint;
    return rc;
}

#undef REFUSE

/* ---- store ---- */

static int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n > (1u << 30) ? 1u << 30 : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w, n -= (size_t)w;
    }
    return 0;
}

/* Creates dir and its parents (mode 0755), as mkdir -p. */
static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return snprintf(err, errlen, "%s: path too long", dir), -1;
    for (char *c = p + 1;; c++)
        if (*c == '/' || !*c) {
            char was = *c;
            *c = 0;
            if (mkdir(p, 0755) < 0 && errno != EEXIST)
                return snprintf(err, errlen, "%s: cannot create: %s", p, strerror(errno)), -1;
            if (!(*c = was))
                return 0;
        }
}

int mcache_store(const llama_model *m, const char *path, const mcache_key *key, char *err, size_t errlen)
{
    llama_model *mm = (llama_model *)m; /* slots_of points at the arrays; nothing is written */
    size_t n = slots_of(mm, NULL), n_entries = 0;
    slot *s = calloc(n, sizeof *s);
    if (!s)
        return snprintf(err, errlen, "out of memory"), -1;
    slots_of(mm, s);
    for (size_t i = 0; i < n; i++)
        n_entries += entries_of(&s[i]);
    header h = {.version = MCACHE_VERSION, .layout = QT_LAYOUT_VERSION, .fingerprint = m->fingerprint,
                .key_off = HEADER_BYTES, .key_len = key->len, .n_entries = n_entries};
    memcpy(h.magic, MCACHE_MAGIC, sizeof h.magic);
    h.table_off = (h.key_off + h.key_len + 7) / 8 * 8;
    h.payload_off = pad64(h.table_off + n_entries * sizeof(entry));
    uint8_t *meta = calloc(1, h.payload_off);
    char tmp[PATH_MAX + 64] = "";
    int fd = -1, rc = -1;
    if (!meta) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    entry *table = (entry *)(meta + h.table_off);
    sum_state ps = {{0}, {0}};
    uint64_t off = h.payload_off;
    for (size_t i = 0, at = 0; i < n; i++)
        for (size_t a = 0; a < entries_of(&s[i]); a++, at++) {
            const void *p;
            size_t bytes = slot_array(&s[i], (int)a, &p);
            if (s[i].mat && a == QT_ARRAY_DATA) {
                uint32_t bits;
                memcpy(&bits, &s[i].mat->offset, sizeof bits);
                table[at].aux = bits;
            }
            if (!bytes)
                continue;
            table[at].offset = off, table[at].bytes = bytes;
            sum_padded(&ps, p, bytes);
            off += pad64(bytes);
        }
    h.file_bytes = off;
    h.payload_sum = sum_final(&ps);
    memcpy(meta + h.key_off, key->bytes, key->len);
    memcpy(meta, &h, sizeof h);
    h.meta_sum = mcache_checksum(meta + SUMMED_FROM, (size_t)h.payload_off - SUMMED_FROM);
    memcpy(meta, &h, sizeof h);

    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    if (slash && make_dirs(dir, err, errlen) < 0)
        goto done;
    static int counter; /* several threads of one process: each its own temporary file */
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%d", path, (long)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        tmp[0] = 0;
        goto done;
    }
    static const unsigned char zeros[64];
    int ok = write_all(fd, meta, h.payload_off) == 0;
    for (size_t i = 0; i < n && ok; i++)
        for (size_t a = 0; a < entries_of(&s[i]) && ok; a++) {
            const void *p;
            size_t bytes = slot_array(&s[i], (int)a, &p);
            ok = !bytes || (write_all(fd, p, bytes) == 0 && write_all(fd, zeros, pad64(bytes) - bytes) == 0);
        }
    if (!ok || fsync(fd) < 0) {
        snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(errno));
        goto done;
    }
    int c = close(fd);
    fd = -1;
    if (c < 0 || rename(tmp, path) < 0) {
        snprintf(err, errlen, "%s: cannot %s: %s", c < 0 ? tmp : path, c < 0 ? "close" : "rename into place",
                 strerror(errno));
        goto done;
    }
    tmp[0] = 0;
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* the rename itself durable; a failure here costs a rebuild, not data */
        (void)fsync(dfd);
        close(dfd);
    }
    rc = 0;
done:
    if (fd >= 0)
        close(fd);
    if (tmp[0])
        unlink(tmp);
    free(meta);
    free(s);
    return rc;
}
