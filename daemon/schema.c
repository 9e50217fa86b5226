/* schema.c: see schema.h. Values go out through mp.h's packers, so a table writes the
 * same bytes as the hand-written packing it replaced (every str valid UTF-8, NaN as nil). */
#include "schema.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp.h"

/* Integer fields are 4 or 8 bytes: their value as 64 bits (sign-extended when signed). */
static uint64_t get_bits(const char *p, size_t size, int is_signed)
{
    if (size == sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        return is_signed ? (uint64_t)(int64_t)(int32_t)v : v;
    }
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
#define get_uint(p, size) get_bits(p, size, 0)
#define get_int(p, size) ((int64_t)get_bits(p, size, 1))

static double get_real(const char *p, size_t size)
{
    if (size == sizeof(float)) {
        float v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    double v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- packing ---- */

static int included(const schema_field *f, schema_mode mode)
{
    return !(f->flags & SF_STORED) || mode == SCHEMA_STORED;
}

static int is_zero(const schema_field *f, const char *p)
{
    switch (f->kind) {
    case SK_UINT: return get_uint(p, f->size) == 0;
    case SK_INT: return get_int(p, f->size) == 0;
    case SK_CHARS: return p[0] == 0;
    case SK_MAP: return f->sub->n > 0 && is_zero(&f->sub->fields[0], p + f->sub->fields[0].off);
    default: return 0;
    }
}

size_t schema_count(const schema *s, schema_mode mode)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += included(&s->fields[i], mode);
    return n;
}

static void pack_value(msgpack_packer *pk, const schema_field *f, const char *p, schema_mode mode)
{
    if ((f->flags & SF_NIL_IF_ZERO) && is_zero(f, p)) {
        msgpack_pack_nil(pk);
        return;
    }
    switch (f->kind) {
    case SK_UINT: msgpack_pack_uint64(pk, get_uint(p, f->size)); break;
    case SK_INT: msgpack_pack_int64(pk, get_int(p, f->size)); break;
    case SK_REAL: mp_f64(pk, get_real(p, f->size)); break;
    case SK_BOOL: mp_bool(pk, (int)get_int(p, sizeof(int))); break;
    case SK_CHARS: mp_str(pk, p); break;
    case SK_STR: {
        const char *s;
        memcpy(&s, p, sizeof s);
        if (s)
            mp_str(pk, s);
        else
            msgpack_pack_nil(pk);
        break;
    }
    case SK_STRN:
    case SK_BIN: {
        schema_bytes b;
        memcpy(&b, p, sizeof b);
        if (f->kind == SK_STRN) {
            mp_str_n(pk, b.p, b.n);
        } else {
            msgpack_pack_bin(pk, b.n);
            msgpack_pack_bin_body(pk, b.p, b.n);
        }
        break;
    }
    case SK_INTS: {
        schema_ints a;
        memcpy(&a, p, sizeof a);
        msgpack_pack_array(pk, a.n);
        for (size_t i = 0; i < a.n; i++)
            msgpack_pack_int(pk, a.p[i]);
        break;
    }
    case SK_HEX64: {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, get_uint(p, f->size));
        mp_str(pk, hex);
        break;
    }
    case SK_NAME: {
        int64_t v = get_int(p, f->size);
        mp_str(pk, v >= 0 && v < f->n_names ? f->names[v] : "?");
        break;
    }
    case SK_BITS: {
        uint64_t bits = get_uint(p, f->size);
        size_t n = 0;
        for (int b = 0; b < f->n_names; b++)
            n += bits >> b & 1;
        msgpack_pack_array(pk, n);
        for (int b = 0; b < f->n_names; b++)
            if (bits >> b & 1)
                mp_str(pk, f->names[b]);
        break;
    }
    case SK_CONST: mp_str(pk, f->text); break;
    case SK_MAP: schema_pack(pk, f->sub, p, mode); break;
    case SK_CUSTOM: f->pack(pk, p); break;
    }
}

void schema_pack_entries(msgpack_packer *pk, const schema *s, const void *base, schema_mode mode)
{
    for (size_t i = 0; i < s->n; i++) {
        const schema_field *f = &s->fields[i];
        if (!included(f, mode))
            continue;
        mp_str(pk, f->key);
        pack_value(pk, f, (const char *)base + f->off, mode);
    }
}

void schema_pack(msgpack_packer *pk, const schema *s, const void *base, schema_mode mode)
{
    msgpack_pack_map(pk, schema_count(s, mode));
    schema_pack_entries(pk, s, base, mode);
}

/* ---- reading back ---- */

void schema_clear(const schema *s, void *base)
{
    for (size_t i = 0; i < s->n; i++) {
        const schema_field *f = &s->fields[i];
        char *p = (char *)base + f->off;
        if (f->kind == SK_MAP) {
            schema_clear(f->sub, p); /* a group's p is base itself */
        } else if (f->kind == SK_REAL && f->size == sizeof(float)) {
            float nan = NAN;
            memcpy(p, &nan, sizeof nan);
        } else if (f->kind == SK_REAL) {
            double nan = NAN;
            memcpy(p, &nan, sizeof nan);
        } else if (f->kind != SK_CONST) {
            memset(p, 0, f->size); /* NULL pointers too: all bits zero where qlorad builds */
        }
    }
}

/* Stores v in an integer field of 4 or 8 bytes (the caller checked that it fits). */
static void put_bits(char *p, size_t size, uint64_t v)
{
    if (size == sizeof(uint32_t)) {
        uint32_t x = (uint32_t)v;
        memcpy(p, &x, sizeof x);
    } else {
        memcpy(p, &v, sizeof v);
    }
}

static int fail(char *err, size_t errlen, const char *prefix, const char *key, const char *why)
{
    snprintf(err, errlen, "%s%s: %s", prefix, key, why);
    return -1;
}

static int unpack_in(const schema *s, const msgpack_object *o, char *base, const void *ctx, const char *prefix,
                     char *err, size_t errlen);

/* One field from v (not nil). */
static int unpack_value(const schema_field *f, const msgpack_object *v, char *p, const void *ctx, const char *prefix,
                        char *err, size_t errlen)
{
    const char *k = f->key;
    switch (f->kind) {
    case SK_UINT:
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || (f->size == sizeof(uint32_t) && v->via.u64 > UINT32_MAX))
            return fail(err, errlen, prefix, k, "not an unsigned integer in range");
        put_bits(p, f->size, v->via.u64);
        return 0;
    case SK_INT: {
        int64_t x = v->via.i64;
        int ok = v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
                 (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX);
        if (!ok || (f->size == sizeof(int32_t) && (x < INT32_MIN || x > INT32_MAX)))
            return fail(err, errlen, prefix, k, "not an integer in range");
        put_bits(p, f->size, (uint64_t)x);
        return 0;
    }
    case SK_REAL: {
        double x;
        if (!mp_number(v, &x))
            return fail(err, errlen, prefix, k, "not a number");
        if (f->size == sizeof(float)) {
            float y = (float)x;
            memcpy(p, &y, sizeof y);
        } else {
            memcpy(p, &x, sizeof x);
        }
        return 0;
    }
    case SK_BOOL:
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return fail(err, errlen, prefix, k, "not a boolean");
        *(int *)p = v->via.boolean;
        return 0;
    case SK_CHARS:
        if (v->type != MSGPACK_OBJECT_STR || v->via.str.size >= f->size || memchr(v->via.str.ptr, 0, v->via.str.size))
            return fail(err, errlen, prefix, k, "not a string that fits");
        memcpy(p, v->via.str.ptr, v->via.str.size);
        p[v->via.str.size] = 0;
        return 0;
    case SK_STR: {
        char *s = v->type == MSGPACK_OBJECT_STR ? mp_strdup(v) : NULL;
        if (!s)
            return fail(err, errlen, prefix, k, v->type == MSGPACK_OBJECT_STR ? "out of memory" : "not a string");
        memcpy(p, &s, sizeof s);
        return 0;
    }
    case SK_NAME:
        for (int i = 0; v->type == MSGPACK_OBJECT_STR && i < f->n_names; i++)
            if (mp_is_str(v, f->names[i])) {
                put_bits(p, f->size, (uint64_t)i);
                return 0;
            }
        if (f->flags & SF_REQUIRED)
            return fail(err, errlen, prefix, k, "not a name it knows");
        return 0;
    case SK_MAP: {
        if (v->type != MSGPACK_OBJECT_MAP)
            return fail(err, errlen, prefix, k, "not a map");
        char sub[128];
        snprintf(sub, sizeof sub, "%s%s.", prefix, k);
        return unpack_in(f->sub, v, p, ctx, sub, err, errlen);
    }
    case SK_CUSTOM: {
        char why[512];
        if (f->unpack(v, p, ctx, why, sizeof why) < 0)
            return fail(err, errlen, prefix, k, why);
        return 0;
    }
    default: /* written for readers only */
        return 0;
    }
}

static int unpack_in(const schema *s, const msgpack_object *o, char *base, const void *ctx, const char *prefix,
                     char *err, size_t errlen)
{
    for (size_t i = 0; i < s->n; i++) {
        const schema_field *f = &s->fields[i];
        if (f->kind == SK_CONST || (f->flags & SF_DERIVED))
            continue;
        const msgpack_object *v = mp_get(o, f->key);
        if (!v || v->type == MSGPACK_OBJECT_NIL) {
            if (f->flags & SF_REQUIRED)
                return fail(err, errlen, prefix, f->key, "missing");
            continue;
        }
        if (unpack_value(f, v, base + f->off, ctx, prefix, err, errlen) < 0)
            return -1;
    }
    return 0;
}

int schema_unpack(const schema *s, const msgpack_object *o, void *base, const void *ctx, char *err, size_t errlen)
{
    if (!o || o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, errlen, "not a map");
        return -1;
    }
    return unpack_in(s, o, base, ctx, "", err, errlen);
}
