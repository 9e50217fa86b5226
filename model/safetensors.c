/* safetensors.c: see safetensors.h. */
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapfile.h"

#define ST_MAX_HEADER (100u << 20) /* the format's own limit on the JSON header */

static int dtype_of(const char *s, st_dtype *d, size_t *size)
{
    if (!strcmp(s, "F32")) { *d = ST_F32; *size = 4; return 0; }
    if (!strcmp(s, "F16")) { *d = ST_F16; *size = 2; return 0; }
    if (!strcmp(s, "BF16")) { *d = ST_BF16; *size = 2; return 0; }
    return -1;
}

typedef struct {
    size_t begin, end;
} span;

static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int fail(st_file *f, char *err, size_t errlen, const char *name, const char *what)
{
    if (name)
        snprintf(err, errlen, "%s: tensor '%s': %s", f->path, name, what);
    else
        snprintf(err, errlen, "%s: %s", f->path, what);
    st_close(f);
    return -1;
}

int st_open(st_file *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    const void *map;
    size_t size;
    if (map_file(path, &map, &size, err, errlen) < 0)
        return -1;
    if (st_parse(f, path, map, size, err, errlen) < 0) {
        unmap_file(map, size);
        return -1;
    }
    f->map = (void *)map; /* owned from here: st_close unmaps it */
    return 0;
}

int st_parse(st_file *f, const char *name, const void *data, size_t size, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name);
    f->size = size;
    if (size < 8) {
        snprintf(err, errlen, "%s: %zu bytes is too short for a safetensors header", name, size);
        return -1;
    }
    const unsigned char *b = data;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | b[i];
    if (hlen == 0 || hlen > ST_MAX_HEADER || hlen > f->size - 8)
        return fail(f, err, errlen, NULL, "header length out of range (truncated or not safetensors)");
    char jerr[256];
    f->header = json_parse((const char *)b + 8, (size_t)hlen, jerr, sizeof jerr);
    if (!f->header)
        return fail(f, err, errlen, NULL, jerr);
    if (f->header->type != JSON_OBJECT)
        return fail(f, err, errlen, NULL, "header is not a JSON object");
    const size_t data0 = 8 + (size_t)hlen, data_size = f->size - data0;
    f->tensors = calloc(f->header->count ? f->header->count : 1, sizeof *f->tensors);
    span *spans = calloc(f->header->count ? f->header->count : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        free(spans);
        return fail(f, err, errlen, NULL, "out of memory");
    }
    for (size_t i = 0; i < f->header->count; i++) {
        const char *name = f->header->keys[i];
        const json_value *v = &f->header->items[i];
        if (!strcmp(name, "__metadata__")) {
            f->metadata = v;
            continue;
        }
        const json_value *dt = json_get(v, "dtype"), *shape = json_get(v, "shape"),
                         *off = json_get(v, "data_offsets");
        st_tensor *t = &f->tensors[f->count];
        size_t esize;
        const char *problem = NULL;
        if (!dt || dt->type != JSON_STRING || !shape || shape->type != JSON_ARRAY || !off ||
            off->type != JSON_ARRAY || off->count != 2)
            problem = "needs dtype, shape and data_offsets [begin, end]";
        else if (dtype_of(dt->string, &t->dtype, &esize) < 0)
            problem = "unsupported dtype (F32, F16 and BF16 are read)";
        else if (shape->count > ST_MAX_DIMS)
            problem = "too many dimensions";
        if (problem) {
            free(spans);
            return fail(f, err, errlen, name, problem);
        }
        t->name = name;
        t->ndim = (int)shape->count;
        t->nelem = 1;
        for (int d = 0; d < t->ndim; d++) {
            const json_value *s = &shape->items[d];
            if (s->type != JSON_NUMBER || s->number < 0 || s->number > 1e12 ||
                s->number != (double)(int64_t)s->number) {
                free(spans);
                return fail(f, err, errlen, name, "bad shape");
            }
            t->shape[d] = (int64_t)s->number;
            t->nelem *= (size_t)t->shape[d];
        }
        double ob = off->items[0].number, oe = off->items[1].number;
        if (off->items[0].type != JSON_NUMBER || off->items[1].type != JSON_NUMBER || ob < 0 ||
            oe < ob || oe > (double)data_size || ob != (double)(size_t)ob || oe != (double)(size_t)oe) {
            free(spans);
            return fail(f, err, errlen, name, "data_offsets outside the file");
        }
        spans[f->count].begin = (size_t)ob;
        spans[f->count].end = (size_t)oe;
        if ((size_t)oe - (size_t)ob != t->nelem * esize) {
            free(spans);
            return fail(f, err, errlen, name, "data_offsets disagree with shape x dtype size");
        }
        t->data = b + data0 + (size_t)ob;
        t->nbytes = (size_t)(oe - ob);
        f->count++;
    }
    qsort(spans, f->count, sizeof *spans, by_begin);
    for (size_t i = 1; i < f->count; i++)
        if (spans[i].begin < spans[i - 1].end) {
            free(spans);
            return fail(f, err, errlen, NULL, "two tensors overlap");
        }
    free(spans);
    return 0;
}

void st_close(st_file *f)
{
    unmap_file(f->map, f->size);
    json_free(f->header);
    free(f->tensors);
    f->map = NULL;
    f->header = NULL;
    f->tensors = NULL;
    f->count = 0;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (size_t i = 0; i < f->count; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = h >> 10 & 31, mant = h & 1023, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 1024)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | exp << 23 | (mant & 1023) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0xFFu << 23 | mant << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void st_to_f32(const st_tensor *t, float *out)
{
    const unsigned char *p = t->data;
    for (size_t i = 0; i < t->nelem; i++) {
        uint32_t bits;
        uint16_t h;
        switch (t->dtype) {
        case ST_F32: memcpy(&out[i], p + 4 * i, 4); break;
        case ST_F16: memcpy(&h, p + 2 * i, 2); out[i] = half_to_float(h); break;
        case ST_BF16:
            memcpy(&h, p + 2 * i, 2);
            bits = (uint32_t)h << 16;
            memcpy(&out[i], &bits, 4);
            break;
        }
    }
}

void st_release(const st_file *f, const st_tensor *t)
{
    if (f->map)
        map_release(t->data, t->nbytes);
}
