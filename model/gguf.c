/* gguf.c: see gguf.h. The parser reads through one cursor that knows the bytes left, so
 * that every length and count is compared with what the file still holds before anything
 * is allocated or read: a hostile file costs at most a few times its own size in memory
 * and never reads outside its mapping. */
#include "gguf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapfile.h"

#define MAX_NESTING 8     /* arrays of arrays: far deeper than any writer makes */
#define MAX_NAME 64       /* ggml's GGML_MAX_NAME, terminator included */

/* ggml's types: X(number, name, elements per block, bytes per block), as ggml_blck_size
 * and ggml_type_size give them for the llama.cpp of .deps/llama. */
#define GGML_TYPES(X)                                                                     \
    X(0, "f32", 1, 4) X(1, "f16", 1, 2) X(2, "q4_0", 32, 18) X(3, "q4_1", 32, 20)           \
    X(6, "q5_0", 32, 22) X(7, "q5_1", 32, 24) X(8, "q8_0", 32, 34) X(9, "q8_1", 32, 36)     \
    X(10, "q2_K", 256, 84) X(11, "q3_K", 256, 110) X(12, "q4_K", 256, 144)                  \
    X(13, "q5_K", 256, 176) X(14, "q6_K", 256, 210) X(15, "q8_K", 256, 292)                 \
    X(16, "iq2_xxs", 256, 66) X(17, "iq2_xs", 256, 74) X(18, "iq3_xxs", 256, 98)            \
    X(19, "iq1_s", 256, 50) X(20, "iq4_nl", 32, 18) X(21, "iq3_s", 256, 110)                \
    X(22, "iq2_s", 256, 82) X(23, "iq4_xs", 256, 136) X(24, "i8", 1, 1) X(25, "i16", 1, 2)  \
    X(26, "i32", 1, 4) X(27, "i64", 1, 8) X(28, "f64", 1, 8) X(29, "iq1_m", 256, 56)        \
    X(30, "bf16", 1, 2) X(34, "tq1_0", 256, 54) X(35, "tq2_0", 256, 66)                     \
    X(39, "mxfp4", 32, 17) X(40, "nvfp4", 64, 36) X(41, "q1_0", 128, 18) X(42, "q2_0", 64, 18)

static const struct {
    const char *name;
    uint32_t block, bytes;
} ggml_types[] = {
#define GGML_TYPE_ROW(n, name, block, bytes) [n] = {name, block, bytes},
    GGML_TYPES(GGML_TYPE_ROW)
#undef GGML_TYPE_ROW
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

const char *gguf_ggml_type_name(uint32_t type)
{
    return type < N_GGML_TYPES ? ggml_types[type].name : NULL;
}

/* bytes of one element of a scalar type; 0 for strings and arrays */
static const uint8_t scalar_size[GGUF_NTYPES] = {
    [GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2, [GGUF_U32] = 4, [GGUF_I32] = 4,
    [GGUF_F32] = 4, [GGUF_BOOL] = 1, [GGUF_U64] = 8, [GGUF_I64] = 8, [GGUF_F64] = 8,
};

const char *gguf_type_name(gguf_type t)
{
    static const char *const names[GGUF_NTYPES] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                   "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < GGUF_NTYPES ? names[t] : "?";
}

/* ---- the cursor ---- */

typedef struct {
    gguf_file *f;
    size_t pos;
    char *err;
    size_t errlen;
} cursor;

/* "PATH: at byte POS: " and the message; returns -1. */
static int fail_at(const cursor *c, size_t pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_at(const cursor *c, size_t pos, const char *fmt, ...)
{
    int n = snprintf(c->err, c->errlen, "%s: at byte %zu: ", c->f->path, pos);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static size_t left(const cursor *c)
{
    return c->f->size - c->pos;
}

/* n bytes from the cursor into out (which may be NULL: skip); what names what is read. */
static int take(cursor *c, void *out, size_t n, const char *what, const char *whose)
{
    if (left(c) < n)
        return fail_at(c, c->pos, "%s%s%s%s: truncated (%zu bytes needed, %zu left)", what, whose ? " of '" : "",
                       whose ? whose : "", whose ? "'" : "", n, left(c));
    if (out)
        memcpy(out, c->f->map + c->pos, n);
    c->pos += n;
    return 0;
}

static int take_u32(cursor *c, uint32_t *v, const char *what, const char *whose)
{
    return take(c, v, 4, what, whose);
}

static int take_u64(cursor *c, uint64_t *v, const char *what, const char *whose)
{
    return take(c, v, 8, what, whose);
}

/* A string's length and bytes (left in the mapping). */
static int take_str(cursor *c, gguf_str *s, const char *what, const char *whose)
{
    uint64_t n = 0;
    size_t at = c->pos;
    if (take_u64(c, &n, what, whose) < 0)
        return -1;
    if (n > left(c))
        return fail_at(c, at, "%s%s%s%s: length %llu runs past the end of the file (%zu bytes left)", what,
                       whose ? " of '" : "", whose ? whose : "", whose ? "'" : "", (unsigned long long)n, left(c));
    s->s = (const char *)c->f->map + c->pos;
    s->n = (size_t)n;
    c->pos += (size_t)n;
    return 0;
}

/* ---- values ---- */

/* Skips over one value of type t (checked), for key; depth counts nested arrays. */
static int skip_value(cursor *c, uint32_t t, const char *key, int depth);

static int skip_array(cursor *c, const char *key, int depth, uint32_t *elem, uint64_t *count)
{
    size_t at = c->pos;
    if (depth >= MAX_NESTING)
        return fail_at(c, at, "key '%s': arrays nested more than %d deep", key, MAX_NESTING);
    if (take_u32(c, elem, "array type", key) < 0 || take_u64(c, count, "array count", key) < 0)
        return -1;
    if (*elem >= GGUF_NTYPES)
        return fail_at(c, at, "key '%s': array of unknown type %u", key, *elem);
    if (scalar_size[*elem]) {
        if (*count > left(c) / scalar_size[*elem])
            return fail_at(c, at, "key '%s': %llu elements of %s run past the end of the file", key,
                           (unsigned long long)*count, gguf_type_name((gguf_type)*elem));
        c->pos += (size_t)*count * scalar_size[*elem];
        return 0;
    }
    /* strings take at least 8 bytes each, arrays 12: the count is bounded before the loop */
    if (*count > left(c) / 8)
        return fail_at(c, at, "key '%s': %llu elements of %s cannot fit in the %zu bytes left", key,
                       (unsigned long long)*count, gguf_type_name((gguf_type)*elem), left(c));
    for (uint64_t i = 0; i < *count; i++)
        if (skip_value(c, *elem, key, depth + 1) < 0)
            return -1;
    return 0;
}

static int skip_value(cursor *c, uint32_t t, const char *key, int depth)
{
    if (t == GGUF_STRING) {
        gguf_str s = {0};
        return take_str(c, &s, "string value", key);
    }
    if (t == GGUF_ARRAY) {
        uint32_t elem = 0;
        uint64_t count = 0;
        return skip_array(c, key, depth, &elem, &count);
    }
    if (t == GGUF_BOOL) {
        uint8_t b = 0;
        if (take(c, &b, 1, "value", key) < 0)
            return -1;
        if (b > 1)
            return fail_at(c, c->pos - 1, "key '%s': bool value %u is neither 0 nor 1", key, b);
        return 0;
    }
    return take(c, NULL, scalar_size[t], "value", key);
}

/* ---- names ---- */

/* Copies s into the names arena (NUL-terminated) at *used; refuses NUL bytes inside. */
static const char *keep_name(cursor *c, gguf_str s, size_t at, size_t *used, const char *what)
{
    if (memchr(s.s, 0, s.n)) {
        fail_at(c, at, "%s '%.*s...' holds a NUL byte", what, (int)strnlen(s.s, s.n), s.s);
        return NULL;
    }
    char *p = c->f->names + *used;
    memcpy(p, s.s, s.n);
    p[s.n] = 0;
    *used += s.n + 1;
    return p;
}

static const char *kv_name(const gguf_file *f, uint32_t i)
{
    return f->kv[i].key;
}

static const char *tensor_name(const gguf_file *f, uint32_t i)
{
    return f->tensors[i].name;
}

/* qsort has no context argument: the file being sorted, for the comparisons below. */
static _Thread_local const gguf_file *sorting;
static _Thread_local const char *(*sorting_name)(const gguf_file *, uint32_t);

static int by_name(const void *a, const void *b)
{
    return strcmp(sorting_name(sorting, *(const uint32_t *)a), sorting_name(sorting, *(const uint32_t *)b));
}

/* Sorts n indices by name into *out and refuses a name given twice. */
static int sort_unique(cursor *c, size_t n, const char *(*name)(const gguf_file *, uint32_t), uint32_t **out,
                       const char *what, size_t (*offset_of)(const gguf_file *, uint32_t))
{
    uint32_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx)
        return fail_at(c, 0, "out of memory for %zu %ss", n, what);
    for (size_t i = 0; i < n; i++)
        idx[i] = (uint32_t)i;
    sorting = c->f, sorting_name = name;
    qsort(idx, n, sizeof *idx, by_name);
    *out = idx;
    for (size_t i = 1; i < n; i++)
        if (!strcmp(name(c->f, idx[i - 1]), name(c->f, idx[i]))) {
            uint32_t later = idx[i - 1] > idx[i] ? idx[i - 1] : idx[i];
            return fail_at(c, offset_of(c->f, later), "%s '%s' is given twice", what, name(c->f, later));
        }
    return 0;
}

static size_t kv_offset(const gguf_file *f, uint32_t i)
{
    return f->kv[i].offset;
}

static size_t tensor_offset(const gguf_file *f, uint32_t i)
{
    return f->tensors[i].info_offset;
}

/* ---- sections ---- */

static int read_header(cursor *c, uint64_t *n_tensors, uint64_t *n_kv)
{
    char magic[4];
    if (take(c, magic, 4, "magic", NULL) < 0)
        return -1;
    if (memcmp(magic, "GGUF", 4))
        return fail_at(c, 0, "not a GGUF file (magic %02x %02x %02x %02x, not \"GGUF\")", (unsigned char)magic[0],
                       (unsigned char)magic[1], (unsigned char)magic[2], (unsigned char)magic[3]);
    if (take_u32(c, &c->f->version, "version", NULL) < 0)
        return -1;
    uint32_t v = c->f->version;
    if (v != 2 && v != 3) {
        if ((v & 0xffff) == 0 && v)
            return fail_at(c, 4, "version 0x%08x: a big-endian GGUF file (only little-endian ones are read)", v);
        return fail_at(c, 4, "version %u is not supported (2 and 3 are; version 1 counted in 32 bits)", v);
    }
    if (take_u64(c, n_tensors, "tensor count", NULL) < 0 || take_u64(c, n_kv, "key count", NULL) < 0)
        return -1;
    /* a key takes at least 13 bytes (length, type, a byte); a tensor info 32 */
    if (*n_kv > left(c) / 13)
        return fail_at(c, 16, "key count %llu cannot fit in the %zu bytes left", (unsigned long long)*n_kv, left(c));
    if (*n_tensors > left(c) / 32)
        return fail_at(c, 8, "tensor count %llu cannot fit in the %zu bytes left", (unsigned long long)*n_tensors,
                       left(c));
    return 0;
}

static int read_kvs(cursor *c, size_t *used)
{
    gguf_file *f = c->f;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        gguf_str key = {0};
        uint32_t type = 0;
        kv->offset = c->pos;
        if (take_str(c, &key, "key", NULL) < 0 || !(kv->key = keep_name(c, key, kv->offset, used, "key")))
            return -1;
        if (take_u32(c, &type, "value type", kv->key) < 0)
            return -1;
        if (type >= GGUF_NTYPES)
            return fail_at(c, c->pos - 4, "key '%s': unknown value type %u", kv->key, type);
        kv->type = (gguf_type)type;
        kv->count = 1;
        if (type == GGUF_ARRAY) {
            uint32_t elem = 0;
            size_t at = c->pos;
            if (skip_array(c, kv->key, 0, &elem, &kv->count) < 0)
                return -1;
            kv->elem = (gguf_type)elem;
            kv->data = f->map + at + 12;
        } else {
            kv->data = f->map + c->pos;
            if (skip_value(c, type, kv->key, 0) < 0)
                return -1;
        }
        if (!strcmp(kv->key, "general.alignment")) {
            int64_t a;
            if (gguf_kv_int(kv, 1, UINT32_MAX, &a) < 0 || kv->type != GGUF_U32 || (a & (a - 1)))
                return fail_at(c, kv->offset, "key 'general.alignment' must be a u32 power of two");
            f->alignment = (uint32_t)a;
        }
    }
    return 0;
}

static int read_tensor_infos(cursor *c, size_t *used)
{
    gguf_file *f = c->f;
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        gguf_str name = {0};
        uint32_t n_dims = 0;
        uint64_t off = 0;
        t->info_offset = c->pos;
        if (take_str(c, &name, "tensor name", NULL) < 0)
            return -1;
        if (name.n >= MAX_NAME)
            return fail_at(c, t->info_offset, "tensor name '%.*s...' is longer than %d bytes", 40, name.s,
                           MAX_NAME - 1);
        if (!(t->name = keep_name(c, name, t->info_offset, used, "tensor name")))
            return -1;
        if (take_u32(c, &n_dims, "n_dims", t->name) < 0)
            return -1;
        if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
            return fail_at(c, c->pos - 4, "tensor '%s': %u dims, not 1..%d", t->name, n_dims, GGUF_MAX_DIMS);
        t->n_dims = (int)n_dims;
        t->nelem = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d < t->n_dims && take_u64(c, &t->ne[d], "dim", t->name) < 0)
                return -1;
            /* ggml keeps sizes in int64_t: the product must stay below 2^63, bytes too */
            if (t->ne[d] > INT64_MAX || (t->ne[d] && t->nelem > (uint64_t)INT64_MAX / t->ne[d]))
                return fail_at(c, c->pos - 8, "tensor '%s': dims overflow (the product passes 2^63)", t->name);
            t->nelem *= t->ne[d];
        }
        if (take_u32(c, &t->type, "type", t->name) < 0 || take_u64(c, &off, "offset", t->name) < 0)
            return -1;
        if (t->type >= N_GGML_TYPES || !ggml_types[t->type].name)
            return fail_at(c, c->pos - 12, "tensor '%s': unknown ggml type %u", t->name, t->type);
        uint32_t block = ggml_types[t->type].block, bytes = ggml_types[t->type].bytes;
        if (t->ne[0] % block)
            return fail_at(c, t->info_offset, "tensor '%s': %llu columns are not a whole number of %s blocks of %u",
                           t->name, (unsigned long long)t->ne[0], ggml_types[t->type].name, block);
        if (t->nelem / block > (uint64_t)INT64_MAX / bytes || t->nelem / block * bytes > SIZE_MAX)
            return fail_at(c, t->info_offset, "tensor '%s': its byte size overflows", t->name);
        t->nbytes = (size_t)(t->nelem / block * bytes);
        if (off % f->alignment)
            return fail_at(c, c->pos - 8, "tensor '%s': data offset %llu is not a multiple of the alignment %u",
                           t->name, (unsigned long long)off, f->alignment);
        t->offset = off > SIZE_MAX ? SIZE_MAX : (size_t)off; /* checked against the file below */
    }
    return 0;
}

typedef struct {
    size_t begin, end;
    uint32_t i;
} span;

static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Places the data section and each tensor in it: inside the file, none overlapping. */
static int place_data(cursor *c)
{
    gguf_file *f = c->f;
    size_t pad = (f->alignment - c->pos % f->alignment) % f->alignment;
    if (f->n_tensors && pad > left(c))
        return fail_at(c, c->pos, "the data section (aligned to %u) starts past the end of the file", f->alignment);
    f->data_offset = c->pos + (pad > left(c) ? left(c) : pad);
    size_t room = f->size - f->data_offset;
    span *s = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *s);
    if (!s)
        return fail_at(c, c->pos, "out of memory for %zu tensors", f->n_tensors);
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > room || t->nbytes > room - t->offset) {
            free(s);
            return fail_at(c, t->info_offset, "tensor '%s': data [%zu, +%zu) runs past the end of the file (%zu bytes "
                           "of data)", t->name, t->offset, t->nbytes, room);
        }
        t->offset += f->data_offset;
        t->data = f->map + t->offset;
        s[i] = (span){t->offset, t->offset + t->nbytes, (uint32_t)i};
    }
    qsort(s, f->n_tensors, sizeof *s, by_begin);
    size_t reach = 0; /* the furthest end so far, and whose it is */
    uint32_t owner = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        if (s[i].begin < reach && s[i].end > s[i].begin) {
            const gguf_tensor *a = &f->tensors[owner], *b = &f->tensors[s[i].i];
            free(s);
            return fail_at(c, b->info_offset, "tensor '%s': its data overlaps tensor '%s''s", b->name, a->name);
        }
        if (s[i].end > reach)
            reach = s[i].end, owner = s[i].i;
    }
    free(s);
    return 0;
}

int gguf_parse(gguf_file *f, const char *name, const void *data, size_t size, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name);
    f->map = data;
    f->size = size;
    cursor c = {f, 0, err, errlen};
    uint64_t n_tensors = 0, n_kv = 0;
    if (read_header(&c, &n_tensors, &n_kv) < 0)
        goto fail;
    f->n_kv = (size_t)n_kv;
    f->n_tensors = (size_t)n_tensors;
    /* keys and names copied with terminators take at most the file's size plus one byte each */
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    f->names = malloc(size + f->n_kv + f->n_tensors + 1);
    if (!f->kv || !f->tensors || !f->names) {
        fail_at(&c, 0, "out of memory for %zu keys and %zu tensors", f->n_kv, f->n_tensors);
        goto fail;
    }
    size_t used = 0;
    if (read_kvs(&c, &used) < 0 || read_tensor_infos(&c, &used) < 0 || place_data(&c) < 0 ||
        sort_unique(&c, f->n_kv, kv_name, &f->kv_sorted, "key", kv_offset) < 0 ||
        sort_unique(&c, f->n_tensors, tensor_name, &f->tensor_sorted, "tensor", tensor_offset) < 0)
        goto fail;
    return 0;
fail:
    f->map = NULL; /* the caller's */
    gguf_close(f);
    return -1;
}

int gguf_open(gguf_file *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    const void *map;
    size_t size;
    if (map_file(path, &map, &size, err, errlen) < 0)
        return -1;
    if (gguf_parse(f, path, map, size, err, errlen) < 0) {
        unmap_file(map, size);
        return -1;
    }
    f->owned = 1;
    return 0;
}

void gguf_close(gguf_file *f)
{
    if (f->owned && f->map)
        unmap_file(f->map, f->size);
    free(f->kv);
    free(f->tensors);
    free(f->kv_sorted);
    free(f->tensor_sorted);
    free(f->names);
    memset(f, 0, sizeof *f);
}

int gguf_is_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    char magic[4];
    int is = fp && fread(magic, 1, 4, fp) == 4 && !memcmp(magic, "GGUF", 4);
    if (fp)
        fclose(fp);
    return is;
}

/* ---- lookups ---- */

static long find_sorted(const uint32_t *idx, size_t n, const gguf_file *f,
                        const char *(*name)(const gguf_file *, uint32_t), const char *want)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(name(f, idx[mid]), want);
        if (!cmp)
            return idx[mid];
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    long i = find_sorted(f->kv_sorted, f->n_kv, f, kv_name, key);
    return i < 0 ? NULL : &f->kv[i];
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    long i = find_sorted(f->tensor_sorted, f->n_tensors, f, tensor_name, name);
    return i < 0 ? NULL : &f->tensors[i];
}

/* ---- typed reads ---- */

/* The integer of type t at p; a u64 above INT64_MAX is flagged in *is_unsigned_big. */
static int read_int(gguf_type t, const uint8_t *p, int64_t *out, int *is_unsigned_big)
{
    *is_unsigned_big = 0;
    switch (t) {
    case GGUF_U8: *out = p[0]; return 0;
    case GGUF_I8: *out = (int8_t)p[0]; return 0;
    case GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return 0; }
    case GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return 0; }
    case GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        *is_unsigned_big = v > INT64_MAX;
        *out = (int64_t)(v > INT64_MAX ? INT64_MAX : v);
        return 0;
    }
    case GGUF_I64: memcpy(out, p, 8); return 0;
    default: return -1;
    }
}

static int read_num(gguf_type t, const uint8_t *p, double *out)
{
    int64_t i;
    int big;
    if (t == GGUF_F32) {
        float v;
        memcpy(&v, p, 4);
        *out = v;
        return 0;
    }
    if (t == GGUF_F64) {
        memcpy(out, p, 8);
        return 0;
    }
    if (t == GGUF_BOOL) {
        *out = p[0];
        return 0;
    }
    if (read_int(t, p, &i, &big) < 0)
        return -1;
    *out = big ? 18446744073709551615.0 : (double)i;
    return 0;
}

int gguf_kv_int(const gguf_kv *kv, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t v;
    int big;
    if (!kv || kv->type == GGUF_ARRAY || read_int(kv->type, kv->data, &v, &big) < 0 || big || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int gguf_kv_float(const gguf_kv *kv, double *out)
{
    if (!kv || (kv->type != GGUF_F32 && kv->type != GGUF_F64))
        return -1;
    return read_num(kv->type, kv->data, out);
}

int gguf_kv_bool(const gguf_kv *kv, int *out)
{
    if (!kv || kv->type != GGUF_BOOL)
        return -1;
    *out = kv->data[0];
    return 0;
}

int gguf_kv_str(const gguf_kv *kv, gguf_str *out)
{
    uint64_t n;
    if (!kv || kv->type != GGUF_STRING)
        return -1;
    memcpy(&n, kv->data, 8); /* checked at open */
    out->s = (const char *)kv->data + 8;
    out->n = (size_t)n;
    return 0;
}

int gguf_arr_strs(const gguf_kv *kv, gguf_str *out)
{
    if (!kv || kv->type != GGUF_ARRAY || kv->elem != GGUF_STRING)
        return -1;
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->count; i++) {
        uint64_t n;
        memcpy(&n, p, 8);
        out[i] = (gguf_str){(const char *)p + 8, (size_t)n};
        p += 8 + n;
    }
    return 0;
}

int gguf_arr_num(const gguf_kv *kv, uint64_t i, double *out)
{
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->count || !scalar_size[kv->elem])
        return -1;
    return read_num(kv->elem, kv->data + i * scalar_size[kv->elem], out);
}
