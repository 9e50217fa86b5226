/* json.c: see json.h. Recursive descent over the text with an explicit depth bound. */
#include "json.h"
#include "mapfile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t n, i;
    char *err;
    size_t errlen;
    int failed;
} parser;

static void fail(parser *p, const char *what)
{
    if (!p->failed)
        snprintf(p->err, p->errlen, "JSON: %s at byte %zu", what, p->i);
    p->failed = 1;
}

static void skip_ws(parser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static int literal(parser *p, const char *word)
{
    size_t len = strlen(word);
    if (p->n - p->i < len || memcmp(p->s + p->i, word, len) != 0)
        return 0;
    p->i += len;
    return 1;
}

static int hex4(parser *p, unsigned *out)
{
    if (p->n - p->i < 4)
        return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 63));
    o[2] = (char)(0x80 | (cp >> 6 & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* A string starting at the opening quote; the result is malloc'd. Escapes shrink, and
 * \u escapes (up to 6 bytes of input) never produce more than 4 bytes. */
static char *parse_string(parser *p, size_t *len)
{
    p->i++; /* opening quote */
    size_t start = p->i, end = start;
    while (end < p->n && p->s[end] != '"')
        end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n) {
        fail(p, "unterminated string");
        return NULL;
    }
    char *out = malloc(end - start + 1), *o = out;
    if (!out) {
        fail(p, "out of memory");
        return NULL;
    }
    while (p->i < end) {
        unsigned char c = (unsigned char)p->s[p->i++];
        if (c < 0x20) {
            fail(p, "control character in string");
            free(out);
            return NULL;
        }
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        char e = p->s[p->i++];
        unsigned cp;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (hex4(p, &cp) < 0) {
                fail(p, "bad \\u escape");
                free(out);
                return NULL;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && p->i + 6 <= end && p->s[p->i] == '\\' &&
                p->s[p->i + 1] == 'u') {
                unsigned lo;
                size_t save = p->i;
                p->i += 2;
                if (hex4(p, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000)
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                else
                    p->i = save;
            }
            o += put_utf8(o, cp);
            break;
        default:
            fail(p, "bad escape");
            free(out);
            return NULL;
        }
    }
    p->i = end + 1;
    *o = 0;
    *len = (size_t)(o - out);
    return out;
}

static int parse_value(parser *p, json_value *v, int depth);

/* Arrays and objects: items grow by doubling. */
static int parse_container(parser *p, json_value *v, int depth, int object)
{
    char close = object ? '}' : ']';
    size_t cap = 0;
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) {
        p->i++;
        return 0;
    }
    for (;;) {
        if (v->count == cap) {
            cap = cap ? cap * 2 : 4;
            json_value *items = realloc(v->items, cap * sizeof *items);
            char **keys = object ? realloc(v->keys, cap * sizeof *keys) : NULL;
            if (items)
                v->items = items;
            if (keys)
                v->keys = keys;
            if (!items || (object && !keys)) {
                fail(p, "out of memory");
                return -1;
            }
        }
        skip_ws(p);
        if (object) {
            if (p->i >= p->n || p->s[p->i] != '"') {
                fail(p, "expected a string key");
                return -1;
            }
            size_t klen;
            char *key = parse_string(p, &klen);
            if (!key)
                return -1;
            v->keys[v->count] = key;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                free(key);
                fail(p, "expected ':'");
                return -1;
            }
            p->i++;
        }
        memset(&v->items[v->count], 0, sizeof v->items[0]);
        v->count++;
        if (parse_value(p, &v->items[v->count - 1], depth + 1) < 0)
            return -1;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            continue;
        }
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            return 0;
        }
        fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
        return -1;
    }
}

static int parse_value(parser *p, json_value *v, int depth)
{
    if (depth > JSON_MAX_DEPTH) {
        fail(p, "nesting too deep");
        return -1;
    }
    skip_ws(p);
    if (p->i >= p->n) {
        fail(p, "unexpected end");
        return -1;
    }
    char c = p->s[p->i];
    if (c == '{' || c == '[') {
        v->type = c == '{' ? JSON_OBJECT : JSON_ARRAY;
        return parse_container(p, v, depth, c == '{');
    }
    if (c == '"') {
        v->type = JSON_STRING;
        v->string = parse_string(p, &v->len);
        return v->string ? 0 : -1;
    }
    if (literal(p, "true") || literal(p, "false")) {
        v->type = JSON_BOOL;
        v->boolean = c == 't';
        return 0;
    }
    if (literal(p, "null")) {
        v->type = JSON_NULL;
        return 0;
    }
    /* number: JSON grammar checked by hand, value by strtod on a bounded copy */
    size_t j = p->i;
    if (j < p->n && p->s[j] == '-') j++;
    size_t digits = j;
    while (j < p->n && p->s[j] >= '0' && p->s[j] <= '9') j++;
    if (j == digits) {
        fail(p, "unexpected character");
        return -1;
    }
    if (j < p->n && p->s[j] == '.') {
        size_t f = ++j;
        while (j < p->n && p->s[j] >= '0' && p->s[j] <= '9') j++;
        if (j == f) { fail(p, "bad number"); return -1; }
    }
    if (j < p->n && (p->s[j] == 'e' || p->s[j] == 'E')) {
        j++;
        if (j < p->n && (p->s[j] == '+' || p->s[j] == '-')) j++;
        size_t e = j;
        while (j < p->n && p->s[j] >= '0' && p->s[j] <= '9') j++;
        if (j == e) { fail(p, "bad number"); return -1; }
    }
    char buf[64];
    if (j - p->i >= sizeof buf) {
        fail(p, "number too long");
        return -1;
    }
    memcpy(buf, p->s + p->i, j - p->i);
    buf[j - p->i] = 0;
    v->type = JSON_NUMBER;
    v->number = strtod(buf, NULL);
    p->i = j;
    return 0;
}

static void free_value(json_value *v)
{
    free(v->string);
    for (size_t i = 0; i < v->count; i++) {
        free_value(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

json_value *json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    parser p = {text, len, 0, err, errlen, 0};
    json_value *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, errlen, "JSON: out of memory");
        return NULL;
    }
    if (parse_value(&p, v, 0) == 0) {
        skip_ws(&p);
        if (p.i != p.n)
            fail(&p, "trailing characters");
    }
    if (p.failed) {
        json_free(v);
        return NULL;
    }
    return v;
}

json_value *json_parse_file(const char *path, size_t max_size, char *err, size_t errlen)
{
    const void *text;
    size_t len;
    if (map_file(path, &text, &len, err, errlen) < 0)
        return NULL;
    json_value *v = NULL;
    char jerr[256];
    if (len > max_size)
        snprintf(err, errlen, "%s: larger than %zu MiB", path, max_size >> 20);
    else if (!(v = json_parse(text, len, jerr, sizeof jerr)))
        snprintf(err, errlen, "%s: %s", path, jerr);
    unmap_file(text, len);
    return v;
}

void json_free(json_value *v)
{
    if (!v)
        return;
    free_value(v);
    free(v);
}

const json_value *json_get(const json_value *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

int json_get_int(const json_value *obj, const char *key, long lo, long hi, long *out)
{
    const json_value *v = json_get(obj, key);
    if (!v || v->type != JSON_NUMBER || v->number != floor(v->number) || v->number < lo ||
        v->number > hi)
        return -1;
    *out = (long)v->number;
    return 0;
}

int json_get_token(const json_value *obj, const char *key, const json_value **out)
{
    const json_value *v = json_get(obj, key);
    if (v && v->type == JSON_OBJECT)
        v = json_get(v, "content");
    *out = v && v->type == JSON_STRING ? v : NULL;
    return !v || v->type == JSON_NULL || *out ? 0 : -1;
}
