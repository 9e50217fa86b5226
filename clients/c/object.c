/* object.c: reading msgpack results (map lookup, numbers, strings) and writing them as
 * JSON, for libqloraclient's users and the qlora CLI's --json. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qloraclient.h"

const msgpack_object *qlora_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && !memcmp(k->via.str.ptr, key, n))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

double qlora_num(const msgpack_object *o, double dflt)
{
    if (!o)
        return dflt;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return o->via.f64;
    default: return dflt;
    }
}

const char *qlora_str(const msgpack_object *o, const char *dflt, char *buf, size_t n)
{
    if (n == 0)
        return buf;
    const char *p = dflt;
    size_t len = strlen(dflt);
    if (o && o->type == MSGPACK_OBJECT_STR)
        p = o->via.str.ptr, len = o->via.str.size;
    if (len >= n)
        len = n - 1;
    memmove(buf, p, len);
    buf[len] = 0;
    return buf;
}

int qlora_is_nil(const msgpack_object *o)
{
    return !o || o->type == MSGPACK_OBJECT_NIL;
}

static void json_string(FILE *f, const char *p, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", f);
        else if (ch == '\t')
            fputs("\\t", f);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_base64(FILE *f, const unsigned char *p, size_t n)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    fputc('"', f);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        fputc(digits[v >> 18 & 63], f);
        fputc(digits[v >> 12 & 63], f);
        fputc(i + 1 < n ? digits[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? digits[v & 63] : '=', f);
    }
    fputc('"', f);
}

static void json_value(FILE *f, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: fputs("null", f); break;
    case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "true" : "false", f); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: fprintf(f, "%llu", (unsigned long long)o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(f, "%lld", (long long)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (isfinite(o->via.f64))
            fprintf(f, "%.17g", o->via.f64);
        else
            fputs("null", f); /* JSON has no NaN or infinity */
        break;
    case MSGPACK_OBJECT_STR: json_string(f, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN:
        json_base64(f, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
        break;
    case MSGPACK_OBJECT_EXT:
        json_base64(f, (const unsigned char *)o->via.ext.ptr, o->via.ext.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', f);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                fputs(", ", f);
            json_value(f, &o->via.array.ptr[i]);
        }
        fputc(']', f);
        break;
    case MSGPACK_OBJECT_MAP:
        fputc('{', f);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (i)
                fputs(", ", f);
            if (k->type == MSGPACK_OBJECT_STR) {
                json_string(f, k->via.str.ptr, k->via.str.size);
            } else { /* JSON keys are strings: quote the key's own JSON text */
                char *text = NULL;
                size_t len = 0;
                FILE *m = open_memstream(&text, &len);
                if (m) {
                    json_value(m, k);
                    fclose(m);
                }
                json_string(f, text ? text : "", text ? len : 0);
                free(text);
            }
            fputs(": ", f);
            json_value(f, &o->via.map.ptr[i].val);
        }
        fputc('}', f);
        break;
    }
}

int qlora_write_json(FILE *f, const msgpack_object *o)
{
    json_value(f, o);
    return ferror(f) ? -1 : 0;
}
