/* mp.c: see mp.h. */
#include "mp.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* msgpack-c spends about 24 bytes per object however small its encoding; this cap keeps a
 * full 64 MiB frame of one-byte objects from costing gigabytes. */
#define MP_MAX_OBJECTS (1u << 22)

typedef struct {
    const unsigned char *start, *p, *end;
    size_t objects;
    char *err;
    size_t errlen;
} scan;

static int fail(scan *s, const char *what)
{
    snprintf(s->err, s->errlen, "%s at byte %zu", what, (size_t)(s->p - s->start));
    return -1;
}

static int take(scan *s, size_t n, uint64_t *value)
{
    if ((size_t)(s->end - s->p) < n)
        return fail(s, "truncated msgpack");
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | s->p[i];
    s->p += n;
    if (value)
        *value = v;
    return 0;
}

static int skip(scan *s, uint64_t n)
{
    if ((uint64_t)(s->end - s->p) < n)
        return fail(s, "a str, bin or ext longer than the frame");
    s->p += n;
    return 0;
}

static int object(scan *s, int depth);

static int items(scan *s, uint64_t n, int depth)
{
    if (n > (uint64_t)(s->end - s->p) || n > MP_MAX_OBJECTS)
        return fail(s, "an array or map longer than the frame");
    if (depth >= MP_MAX_DEPTH)
        return fail(s, "msgpack nested too deep");
    for (uint64_t i = 0; i < n; i++)
        if (object(s, depth + 1) < 0)
            return -1;
    return 0;
}

static int object(scan *s, int depth)
{
    uint64_t n;
    if (++s->objects > MP_MAX_OBJECTS)
        return fail(s, "too many msgpack objects");
    if (s->p == s->end)
        return fail(s, "truncated msgpack");
    unsigned b = *s->p++;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return 0;
    if (b <= 0x8f)
        return items(s, 2u * (b & 0x0f), depth);
    if (b <= 0x9f)
        return items(s, b & 0x0f, depth);
    if (b <= 0xbf)
        return skip(s, b & 0x1f);
    switch (b) {
    case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
    case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
        return take(s, b >= 0xd9 ? 1u << (b - 0xd9) : 1u << (b - 0xc4), &n) < 0 ? -1 : skip(s, n);
    case 0xc7: case 0xc8: case 0xc9: /* ext 8/16/32: length, type, data */
        return take(s, 1u << (b - 0xc7), &n) < 0 ? -1 : skip(s, n + 1);
    case 0xca: return take(s, 4, NULL);
    case 0xcb: return take(s, 8, NULL);
    case 0xcc: case 0xcd: case 0xce: case 0xcf: return take(s, 1u << (b - 0xcc), NULL);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: return take(s, 1u << (b - 0xd0), NULL);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return skip(s, 1 + (1u << (b - 0xd4)));
    case 0xdc: case 0xdd: /* array 16/32 */
        return take(s, b == 0xdc ? 2 : 4, &n) < 0 ? -1 : items(s, n, depth);
    case 0xde: case 0xdf: /* map 16/32 */
        return take(s, b == 0xde ? 2 : 4, &n) < 0 ? -1 : items(s, 2 * n, depth);
    default:
        return fail(s, "byte 0xc1, which msgpack never uses");
    }
}

int mp_check(const char *buf, size_t len, char *err, size_t errlen)
{
    scan s = {(const unsigned char *)buf, (const unsigned char *)buf, (const unsigned char *)buf + len, 0, err, errlen};
    if (object(&s, 0) < 0)
        return -1;
    if (s.p != s.end) {
        snprintf(err, errlen, "%zu trailing bytes after the msgpack object", (size_t)(s.end - s.p));
        return -1;
    }
    return 0;
}

const msgpack_object *mp_get(const msgpack_object *o, const char *key)
{
    if (!o || o->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < o->via.map.size; i++)
        if (mp_is_str(&o->via.map.ptr[i].key, key))
            return &o->via.map.ptr[i].val;
    return NULL;
}

int mp_is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && !memcmp(o->via.str.ptr, s, n);
}

char *mp_strdup(const msgpack_object *o)
{
    char *s = malloc(o->via.str.size + 1);
    if (s) {
        memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = 0;
    }
    return s;
}

int mp_number(const msgpack_object *o, double *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return 1;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return 1;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return 1;
    default: *out = 0; return 0;
    }
}

void mp_out_init(mp_out *o)
{
    msgpack_sbuffer_init(&o->sb);
    msgpack_packer_init(&o->pk, &o->sb, msgpack_sbuffer_write);
    msgpack_sbuffer_write(&o->sb, "\0\0\0\0", 4);
}

void mp_out_finish(mp_out *o)
{
    /* sbuffer_write aborts on out of memory inside msgpack-c; a NULL data means it failed */
    if (!o->sb.data)
        return;
    size_t n = o->sb.size - 4;
    unsigned char *p = (unsigned char *)o->sb.data;
    p[0] = (unsigned char)(n >> 24), p[1] = (unsigned char)(n >> 16), p[2] = (unsigned char)(n >> 8),
    p[3] = (unsigned char)n;
}

void mp_out_free(mp_out *o)
{
    msgpack_sbuffer_destroy(&o->sb);
}

void mp_str_n(msgpack_packer *pk, const char *s, size_t n)
{
    static const char fffd[3] = "\xEF\xBF\xBD";
    const unsigned char *p = (const unsigned char *)s;
    size_t out = 0, bad = 0;
    for (size_t i = 0; i < n;) {
        int len = utf8_char(p + i, n - i, NULL);
        out += len > 0 ? (size_t)len : sizeof fffd;
        i += len > 0 ? (size_t)len : (size_t)-len;
        bad += len < 0;
    }
    msgpack_pack_str(pk, out);
    if (!bad) { /* valid: the usual case, in one piece */
        msgpack_pack_str_body(pk, s, n);
        return;
    }
    size_t start = 0; /* of the valid run not yet written */
    for (size_t i = 0; i < n;) {
        int len = utf8_char(p + i, n - i, NULL);
        if (len > 0) {
            i += (size_t)len;
            continue;
        }
        msgpack_pack_str_body(pk, s + start, i - start);
        msgpack_pack_str_body(pk, fffd, sizeof fffd);
        i += (size_t)-len;
        start = i;
    }
    msgpack_pack_str_body(pk, s + start, n - start);
}

void mp_str(msgpack_packer *pk, const char *s)
{
    mp_str_n(pk, s, strlen(s));
}

void mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t v)
{
    mp_str(pk, key);
    msgpack_pack_uint64(pk, v);
}

void mp_kv_i64(msgpack_packer *pk, const char *key, int64_t v)
{
    mp_str(pk, key);
    msgpack_pack_int64(pk, v);
}

void mp_f64(msgpack_packer *pk, double v)
{
    if (isnan(v))
        msgpack_pack_nil(pk);
    else
        msgpack_pack_double(pk, v);
}

void mp_bool(msgpack_packer *pk, int v)
{
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

void mp_kv_f64(msgpack_packer *pk, const char *key, double v)
{
    mp_str(pk, key);
    mp_f64(pk, v);
}

void mp_kv_bool(msgpack_packer *pk, const char *key, int v)
{
    mp_str(pk, key);
    mp_bool(pk, v);
}

/* One value of mp_to_json into v (all of it freed by json_free of the root). */
static int to_json(const msgpack_object *o, json_value *v, int depth)
{
    memset(v, 0, sizeof *v);
    if (depth > JSON_MAX_DEPTH)
        return -1;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: v->type = JSON_NULL; return 0;
    case MSGPACK_OBJECT_BOOLEAN: v->type = JSON_BOOL, v->boolean = o->via.boolean; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: v->type = JSON_NUMBER; mp_number(o, &v->number); return 0;
    case MSGPACK_OBJECT_STR:
        v->type = JSON_STRING, v->len = o->via.str.size;
        return (v->string = mp_strdup(o)) ? 0 : -1;
    case MSGPACK_OBJECT_ARRAY:
    case MSGPACK_OBJECT_MAP: {
        const int map = o->type == MSGPACK_OBJECT_MAP;
        v->type = map ? JSON_OBJECT : JSON_ARRAY;
        size_t n = map ? o->via.map.size : o->via.array.size;
        v->items = calloc(n ? n : 1, sizeof *v->items);
        v->keys = map ? calloc(n ? n : 1, sizeof *v->keys) : NULL;
        if (!v->items || (map && !v->keys))
            return -1;
        for (size_t i = 0; i < n; i++) {
            const msgpack_object *item = map ? &o->via.map.ptr[i].val : &o->via.array.ptr[i];
            if (map && (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR ||
                        !(v->keys[i] = mp_strdup(&o->via.map.ptr[i].key))))
                return -1;
            v->count = i + 1; /* what json_free must free, this item included */
            if (to_json(item, &v->items[i], depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    default: return -1; /* bin and ext have no JSON counterpart */
    }
}

json_value *mp_to_json(const msgpack_object *o)
{
    json_value *v = calloc(1, sizeof *v);
    if (v && to_json(o, v, 0) < 0) {
        json_free(v);
        return NULL;
    }
    return v;
}
