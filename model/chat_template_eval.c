/* chat_template_eval.c: renders a compiled chat template (chat_template_parse.c's tree).
 * Values follow Python's and jinja2's rules: truth, str() and repr(), ==, ordering, +,
 * %, slices by code point, jinja2's default Undefined (prints as "", is false, iterates
 * as empty; an attribute or item of it, or arithmetic on it, is an error), dict lookups
 * through either .name or ['name'] (missing -> Undefined). Everything a render makes
 * lives in one arena freed at the end; output, memory, steps and depth are bounded. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template_eval.h"

static const ct_val UNDEF = {.t = V_UNDEF};
static const ct_val NONE = {.t = V_NONE};

int ct_fail(ct_ctx *c, const ct_node *at, const char *fmt, ...)
{
    if (c->failed)
        return -1;
    c->failed = 1;
    char where[256] = "";
    if (at)
        ct_where(c->t, at->pos, where, sizeof where);
    else
        snprintf(where, sizeof where, "%s: ", c->t->name);
    size_t w = strlen(where);
    snprintf(c->err, c->errlen, "%s", where);
    if (w < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + w, c->errlen - w, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void *ct_new(ct_ctx *c, const ct_node *at, size_t n)
{
    void *p = ct_alloc(&c->arena, n);
    if (!p)
        ct_fail(c, at, "rendering needs more than %zu MiB (out of memory or a runaway template)",
                c->arena.limit >> 20);
    return p;
}

ct_val ct_str(const char *p, size_t n)
{
    ct_val v = {.t = V_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

ct_val ct_int(long long i)
{
    ct_val v = {.t = V_INT};
    v.u.i = i;
    return v;
}

ct_val ct_bool(int b)
{
    ct_val v = {.t = V_BOOL};
    v.u.b = !!b;
    return v;
}

/* ---- growing byte buffers ---- */

int sb_put(ct_ctx *c, const ct_node *at, sbuf *b, const char *s, size_t n)
{
    size_t limit = b->max ? b->max : c->arena.limit;
    if (n > limit || b->n > limit - n)
        return ct_fail(c, at, "%s longer than %zu bytes", b->max ? "output" : "a string", limit);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return ct_fail(c, at, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int sb_putc(ct_ctx *c, const ct_node *at, sbuf *b, char ch)
{
    return sb_put(c, at, b, &ch, 1);
}

/* The buffer's bytes as a string value in the arena; frees the buffer. */
int sb_take(ct_ctx *c, const ct_node *at, sbuf *b, ct_val *out)
{
    char *p = ct_new(c, at, b->n + 1);
    if (p && b->n)
        memcpy(p, b->p, b->n);
    *out = ct_str(p, b->n);
    free(b->p);
    memset(b, 0, sizeof *b);
    return p ? 0 : -1;
}

/* ---- dicts ---- */

const ct_val *ct_dict_get(const ct_dict *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->kn[i] == kn && memcmp(d->k[i], k, kn) == 0)
            return &d->v[i];
    return NULL;
}

int ct_dict_set(ct_ctx *c, const ct_node *at, ct_dict *d, const char *k, size_t kn, ct_val v)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->kn[i] == kn && memcmp(d->k[i], k, kn) == 0) {
            d->v[i] = v;
            return 0;
        }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        const char **nk = ct_new(c, at, cap * sizeof *nk);
        size_t *nkn = ct_new(c, at, cap * sizeof *nkn);
        ct_val *nv = ct_new(c, at, cap * sizeof *nv);
        if (!nk || !nkn || !nv)
            return -1;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nkn, d->kn, d->n * sizeof *nkn);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->kn = nkn;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->kn[d->n] = kn;
    d->v[d->n++] = v;
    return 0;
}

ct_list *ct_list_new(ct_ctx *c, const ct_node *at, size_t n)
{
    ct_list *l = ct_new(c, at, sizeof *l);
    if (!l || (n && !(l->v = ct_new(c, at, n * sizeof *l->v))))
        return NULL;
    l->n = n;
    return l;
}

ct_val ct_list_val(ct_list *l)
{
    ct_val v = {.t = V_LIST};
    v.u.l = l;
    return v;
}

/* ---- JSON input ---- */

static int from_json(ct_ctx *c, const json_value *j, ct_val *out)
{
    switch (j->type) {
    case JSON_NULL:
        *out = NONE;
        return 0;
    case JSON_BOOL:
        *out = ct_bool(j->boolean);
        return 0;
    case JSON_NUMBER:
        if (j->number == floor(j->number) && fabs(j->number) < 9.007199254740992e15) {
            *out = ct_int((long long)j->number);
        } else {
            out->t = V_FLOAT;
            out->u.f = j->number;
        }
        return 0;
    case JSON_STRING:
        *out = ct_str(j->string, j->len);
        return 0;
    case JSON_ARRAY: {
        ct_list *l = ct_list_new(c, NULL, j->count);
        if (!l)
            return -1;
        for (size_t i = 0; i < j->count; i++)
            if (from_json(c, &j->items[i], &l->v[i]) < 0)
                return -1;
        *out = ct_list_val(l);
        return 0;
    }
    case JSON_OBJECT: {
        ct_dict *d = ct_new(c, NULL, sizeof *d);
        if (!d)
            return -1;
        for (size_t i = 0; i < j->count; i++) {
            ct_val v;
            if (from_json(c, &j->items[i], &v) < 0 ||
                ct_dict_set(c, NULL, d, j->keys[i], strlen(j->keys[i]), v) < 0)
                return -1;
        }
        out->t = V_DICT;
        out->u.d = d;
        return 0;
    }
    }
    return ct_fail(c, NULL, "bad JSON value");
}

/* ---- str() and repr() ---- */

/* Python's repr of a float: the shortest digits that read back, in its layout. */
void ct_fmt_float(double f, char *buf, size_t n)
{
    if (isnan(f)) {
        snprintf(buf, n, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, n, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    /* e: [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    size_t o = 0;
    char out[64];
    if (neg)
        out[o++] = '-';
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -exp - 1; i++)
                out[o++] = '0';
            for (int i = 0; i < nd; i++)
                out[o++] = digits[i];
        } else {
            for (int i = 0; i <= exp; i++)
                out[o++] = i < nd ? digits[i] : '0';
            out[o++] = '.';
            if (nd > exp + 1)
                for (int i = exp + 1; i < nd; i++)
                    out[o++] = digits[i];
            else
                out[o++] = '0';
        }
        out[o] = 0;
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (int i = 1; i < nd; i++)
                out[o++] = digits[i];
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
    }
    snprintf(buf, n, "%s", out);
}

static int put_repr(ct_ctx *c, const ct_node *at, sbuf *b, ct_val v);

static int put_str_repr(ct_ctx *c, const ct_node *at, sbuf *b, const char *s, size_t n)
{
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    if (sb_putc(c, at, b, q) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == '\\' || ch == (unsigned char)q) {
            snprintf(esc, sizeof esc, "\\%c", ch);
        } else if (ch == '\n') {
            snprintf(esc, sizeof esc, "\\n");
        } else if (ch == '\r') {
            snprintf(esc, sizeof esc, "\\r");
        } else if (ch == '\t') {
            snprintf(esc, sizeof esc, "\\t");
        } else if (ch < 0x20 || ch == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
        } else {
            esc[0] = (char)ch;
            esc[1] = 0;
        }
        if (sb_put(c, at, b, esc, strlen(esc)) < 0)
            return -1;
    }
    return sb_putc(c, at, b, q);
}

/* str(v) appended to b */
int ct_put_str(ct_ctx *c, const ct_node *at, sbuf *b, ct_val v)
{
    char num[64];
    switch (v.t) {
    case V_UNDEF:
        return 0;
    case V_STR:
        return sb_put(c, at, b, v.u.s.p, v.u.s.n);
    case V_NONE:
        return sb_put(c, at, b, "None", 4);
    case V_BOOL:
        return v.u.b ? sb_put(c, at, b, "True", 4) : sb_put(c, at, b, "False", 5);
    case V_INT:
        snprintf(num, sizeof num, "%lld", v.u.i);
        return sb_put(c, at, b, num, strlen(num));
    case V_FLOAT:
        ct_fmt_float(v.u.f, num, sizeof num);
        return sb_put(c, at, b, num, strlen(num));
    default:
        return put_repr(c, at, b, v);
    }
}

static int put_repr(ct_ctx *c, const ct_node *at, sbuf *b, ct_val v)
{
    if (++c->depth > CT_MAX_DEPTH) {
        c->depth--;
        return ct_fail(c, at, "value nested too deeply to print");
    }
    int rc = 0;
    switch (v.t) {
    case V_STR:
        rc = put_str_repr(c, at, b, v.u.s.p, v.u.s.n);
        break;
    case V_LIST:
        rc = sb_putc(c, at, b, '[');
        for (size_t i = 0; rc == 0 && i < v.u.l->n; i++)
            rc = (i ? sb_put(c, at, b, ", ", 2) : 0) || put_repr(c, at, b, v.u.l->v[i]) ? -1 : 0;
        if (rc == 0)
            rc = sb_putc(c, at, b, ']');
        break;
    case V_DICT:
    case V_NS:
        rc = v.t == V_NS ? sb_put(c, at, b, "<Namespace {", 12) : sb_putc(c, at, b, '{');
        for (size_t i = 0; rc == 0 && i < v.u.d->n; i++)
            rc = (i ? sb_put(c, at, b, ", ", 2) : 0) ||
                         put_str_repr(c, at, b, v.u.d->k[i], v.u.d->kn[i]) ||
                         sb_put(c, at, b, ": ", 2) || put_repr(c, at, b, v.u.d->v[i])
                     ? -1 : 0;
        if (rc == 0)
            rc = v.t == V_NS ? sb_put(c, at, b, "}>", 2) : sb_putc(c, at, b, '}');
        break;
    case V_UNDEF:
        rc = sb_put(c, at, b, "Undefined", 9);
        break;
    case V_LOOP:
        rc = sb_put(c, at, b, "<LoopContext>", 13);
        break;
    case V_FUNC:
        rc = sb_put(c, at, b, "<function>", 10);
        break;
    default:
        rc = ct_put_str(c, at, b, v);
    }
    c->depth--;
    return rc;
}

int ct_to_str(ct_ctx *c, const ct_node *at, ct_val v, ct_val *out)
{
    if (v.t == V_STR) {
        *out = v;
        return 0;
    }
    sbuf b = {0};
    if (ct_put_str(c, at, &b, v) < 0) {
        free(b.p);
        return -1;
    }
    return sb_take(c, at, &b, out);
}

const char *ct_type_name(ct_val v)
{
    static const char *const names[] = {"Undefined", "NoneType", "bool", "int", "float", "str",
                                        "list", "dict", "Namespace", "LoopContext", "function"};
    return names[v.t];
}

/* ---- truth, equality, order ---- */

int ct_truthy(ct_val v)
{
    switch (v.t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0;
    case V_STR: return v.u.s.n != 0;
    case V_LIST: return v.u.l->n != 0;
    case V_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

static int is_num(ct_val v)
{
    return v.t == V_BOOL || v.t == V_INT || v.t == V_FLOAT;
}
static double num_f(ct_val v)
{
    return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : v.u.b;
}
static long long num_i(ct_val v)
{
    return v.t == V_INT ? v.u.i : v.u.b;
}

int ct_equal(ct_val a, ct_val b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t == V_FLOAT || b.t == V_FLOAT)
            return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a.t != b.t)
        return 0;
    switch (a.t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->n != b.u.l->n)
            return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!ct_equal(a.u.l->v[i], b.u.l->v[i]))
                return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            const ct_val *o = ct_dict_get(b.u.d, a.u.d->k[i], a.u.d->kn[i]);
            if (!o || !ct_equal(a.u.d->v[i], *o))
                return 0;
        }
        return 1;
    default:
        return a.u.d == b.u.d;
    }
}

/* <0, 0, >0 into *r, or -1 (error) when Python refuses to order the two */
static int compare(ct_ctx *c, const ct_node *at, ct_val a, ct_val b, int *r)
{
    if (is_num(a) && is_num(b)) {
        double x = num_f(a), y = num_f(b);
        if (a.t != V_FLOAT && b.t != V_FLOAT) {
            long long i = num_i(a), j = num_i(b);
            *r = (i > j) - (i < j);
        } else {
            *r = (x > y) - (x < y);
        }
        return 0;
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int m = memcmp(a.u.s.p, b.u.s.p, n);
        *r = m ? m : (a.u.s.n > b.u.s.n) - (a.u.s.n < b.u.s.n);
        return 0;
    }
    if (a.t == V_LIST && b.t == V_LIST) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            if (ct_equal(a.u.l->v[i], b.u.l->v[i]))
                continue;
            return compare(c, at, a.u.l->v[i], b.u.l->v[i], r);
        }
        *r = (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
        return 0;
    }
    if (a.t == V_UNDEF || b.t == V_UNDEF)
        return ct_undefined(c, at, a.t == V_UNDEF ? a : b);
    return ct_fail(c, at, "'<' not supported between instances of '%s' and '%s'",
                   ct_type_name(a), ct_type_name(b));
}

int ct_undefined(ct_ctx *c, const ct_node *at, ct_val u)
{
    if (u.u.s.p)
        return ct_fail(c, at, "'%s' is undefined", u.u.s.p);
    return ct_fail(c, at, "an undefined value was used");
}

/* ---- UTF-8 code points (Python indexes strings by code point) ---- */

size_t ct_utf8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Byte offsets of each code point of s, plus n at the end: k + 1 entries. */
static size_t *cp_offsets(ct_ctx *c, const ct_node *at, const char *s, size_t n, size_t *k)
{
    *k = ct_utf8_len(s, n);
    size_t *o = ct_new(c, at, (*k + 1) * sizeof *o);
    if (!o)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            o[j++] = i;
    o[*k] = n;
    return o;
}

/* ---- attributes, items, slices ---- */

static int loop_attr(ct_ctx *c, const ct_node *at, const ct_loop *l, const char *name, ct_val *out)
{
    if (!strcmp(name, "index0")) *out = ct_int((long long)l->index0);
    else if (!strcmp(name, "index")) *out = ct_int((long long)l->index0 + 1);
    else if (!strcmp(name, "revindex")) *out = ct_int((long long)(l->items->n - l->index0));
    else if (!strcmp(name, "revindex0")) *out = ct_int((long long)(l->items->n - l->index0 - 1));
    else if (!strcmp(name, "first")) *out = ct_bool(l->index0 == 0);
    else if (!strcmp(name, "last")) *out = ct_bool(l->index0 + 1 == l->items->n);
    else if (!strcmp(name, "length")) *out = ct_int((long long)l->items->n);
    else if (!strcmp(name, "depth")) *out = ct_int(1);
    else if (!strcmp(name, "depth0")) *out = ct_int(0);
    else if (!strcmp(name, "previtem")) *out = l->index0 ? l->items->v[l->index0 - 1] : UNDEF;
    else if (!strcmp(name, "nextitem"))
        *out = l->index0 + 1 < l->items->n ? l->items->v[l->index0 + 1] : UNDEF;
    else
        return ct_fail(c, at, "loop.%s is not supported", name);
    return 0;
}

/* obj.name / obj['name'] for a string key; missing -> Undefined; Undefined obj -> error */
int ct_getattr(ct_ctx *c, const ct_node *at, ct_val obj, const char *name, size_t n, ct_val *out)
{
    *out = UNDEF;
    switch (obj.t) {
    case V_UNDEF:
        return ct_undefined(c, at, obj);
    case V_DICT:
    case V_NS: {
        const ct_val *v = ct_dict_get(obj.u.d, name, n);
        if (v)
            *out = *v;
        return 0;
    }
    case V_LOOP:
        return loop_attr(c, at, obj.u.loop, name, out);
    default:
        return 0;
    }
}

static int getitem(ct_ctx *c, const ct_node *at, ct_val obj, ct_val key, ct_val *out)
{
    *out = UNDEF;
    if (obj.t == V_UNDEF)
        return ct_undefined(c, at, obj);
    if (key.t == V_STR) {
        if (obj.t == V_DICT || obj.t == V_NS || obj.t == V_LOOP) {
            char *k = ct_new(c, at, key.u.s.n + 1); /* NUL-terminated for loop attributes */
            if (!k)
                return -1;
            memcpy(k, key.u.s.p, key.u.s.n);
            return ct_getattr(c, at, obj, k, key.u.s.n, out);
        }
        return 0;
    }
    if (key.t == V_INT || key.t == V_BOOL) {
        long long i = num_i(key);
        if (obj.t == V_LIST) {
            long long n = (long long)obj.u.l->n;
            if (i < 0)
                i += n;
            if (i >= 0 && i < n)
                *out = obj.u.l->v[i];
        } else if (obj.t == V_STR) {
            size_t k;
            size_t *o = cp_offsets(c, at, obj.u.s.p, obj.u.s.n, &k);
            if (!o)
                return -1;
            if (i < 0)
                i += (long long)k;
            if (i >= 0 && i < (long long)k)
                *out = ct_str(obj.u.s.p + o[i], o[i + 1] - o[i]);
        }
        return 0;
    }
    return 0;
}

/* Python's slice.indices */
static void slice_indices(long long len, const ct_val *sv, int has[3], long long *start,
                          long long *stop, long long step)
{
    long long lo = step < 0 ? -1 : 0, hi = step < 0 ? len - 1 : len;
    long long v[2];
    for (int k = 0; k < 2; k++) {
        if (!has[k]) {
            v[k] = (step < 0) == (k == 0) ? hi : lo;
            continue;
        }
        long long x = sv[k].u.i;
        if (x < 0) {
            x += len;
            if (x < lo)
                x = lo;
        } else if (x > hi) {
            x = hi;
        }
        v[k] = x;
    }
    *start = v[0];
    *stop = v[1];
}

static int do_slice(ct_ctx *c, const ct_node *at, ct_val obj, ct_val sv[3], int has[3], ct_val *out)
{
    long long step = has[2] ? sv[2].u.i : 1;
    if (step == 0)
        return ct_fail(c, at, "slice step cannot be zero");
    size_t k = 0, *off = NULL;
    if (obj.t == V_STR) {
        if (!(off = cp_offsets(c, at, obj.u.s.p, obj.u.s.n, &k)))
            return -1;
    } else if (obj.t == V_LIST) {
        k = obj.u.l->n;
    } else if (obj.t == V_UNDEF) {
        return ct_undefined(c, at, obj);
    } else {
        return ct_fail(c, at, "cannot slice a %s", ct_type_name(obj));
    }
    long long start, stop;
    slice_indices((long long)k, sv, has, &start, &stop, step);
    size_t cnt = 0;
    for (long long i = start; step > 0 ? i < stop : i > stop; i += step)
        cnt++;
    if (obj.t == V_LIST) {
        ct_list *l = ct_list_new(c, at, cnt);
        if (!l)
            return -1;
        size_t j = 0;
        for (long long i = start; step > 0 ? i < stop : i > stop; i += step)
            l->v[j++] = obj.u.l->v[i];
        *out = ct_list_val(l);
        return 0;
    }
    sbuf b = {0};
    for (long long i = start; step > 0 ? i < stop : i > stop; i += step)
        if (sb_put(c, at, &b, obj.u.s.p + off[i], off[i + 1] - off[i]) < 0) {
            free(b.p);
            return -1;
        }
    return sb_take(c, at, &b, out);
}

/* ---- arithmetic ---- */

static int arith(ct_ctx *c, const ct_node *at, ct_op op, ct_val a, ct_val b, ct_val *out)
{
    if (op == OP_CONCAT) {
        sbuf s = {0};
        if (ct_put_str(c, at, &s, a) < 0 || ct_put_str(c, at, &s, b) < 0) {
            free(s.p);
            return -1;
        }
        return sb_take(c, at, &s, out);
    }
    if (a.t == V_UNDEF || b.t == V_UNDEF)
        return ct_undefined(c, at, a.t == V_UNDEF ? a : b);
    static const char *const sym[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (op == OP_ADD && a.t == V_STR && b.t == V_STR) {
        sbuf s = {0};
        if (sb_put(c, at, &s, a.u.s.p, a.u.s.n) < 0 || sb_put(c, at, &s, b.u.s.p, b.u.s.n) < 0) {
            free(s.p);
            return -1;
        }
        return sb_take(c, at, &s, out);
    }
    if (op == OP_ADD && a.t == V_LIST && b.t == V_LIST) {
        ct_list *l = ct_list_new(c, at, a.u.l->n + b.u.l->n);
        if (!l)
            return -1;
        if (a.u.l->n)
            memcpy(l->v, a.u.l->v, a.u.l->n * sizeof *l->v);
        if (b.u.l->n)
            memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof *l->v);
        *out = ct_list_val(l);
        return 0;
    }
    if (op == OP_MUL && ((a.t == V_STR && (b.t == V_INT || b.t == V_BOOL)) ||
                         (b.t == V_STR && (a.t == V_INT || a.t == V_BOOL)))) {
        ct_val s = a.t == V_STR ? a : b;
        long long times = num_i(a.t == V_STR ? b : a);
        sbuf o = {0};
        for (long long i = 0; i < times; i++)
            if (sb_put(c, at, &o, s.u.s.p, s.u.s.n) < 0) {
                free(o.p);
                return -1;
            }
        return sb_take(c, at, &o, out);
    }
    if (op == OP_MOD && a.t == V_STR)
        return ct_fail(c, at, "string formatting with '%%' is not supported");
    if (!is_num(a) || !is_num(b))
        return ct_fail(c, at, "unsupported operand types for %s: '%s' and '%s'", sym[op],
                       ct_type_name(a), ct_type_name(b));
    int flt = a.t == V_FLOAT || b.t == V_FLOAT || op == OP_DIV;
    if (op == OP_POW && !flt && num_i(b) < 0)
        flt = 1;
    if (flt) {
        double x = num_f(a), y = num_f(b), r;
        if ((op == OP_DIV || op == OP_FLOORDIV || op == OP_MOD) && y == 0)
            return ct_fail(c, at, "division by zero");
        switch (op) {
        case OP_ADD: r = x + y; break;
        case OP_SUB: r = x - y; break;
        case OP_MUL: r = x * y; break;
        case OP_DIV: r = x / y; break;
        case OP_FLOORDIV: r = floor(x / y); break;
        case OP_MOD: r = fmod(x, y); if (r != 0 && (r < 0) != (y < 0)) r += y; break;
        default: r = pow(x, y); break;
        }
        out->t = V_FLOAT;
        out->u.f = r;
        return 0;
    }
    long long x = num_i(a), y = num_i(b), r = 0;
    int ovf = 0;
    switch (op) {
    case OP_ADD: ovf = __builtin_add_overflow(x, y, &r); break;
    case OP_SUB: ovf = __builtin_sub_overflow(x, y, &r); break;
    case OP_MUL: ovf = __builtin_mul_overflow(x, y, &r); break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (y == 0)
            return ct_fail(c, at, "integer division or modulo by zero");
        if (x == -9223372036854775807LL - 1 && y == -1) {
            ovf = 1;
            break;
        }
        r = op == OP_MOD ? x % y : x / y;
        if (op == OP_MOD && r != 0 && (r < 0) != (y < 0))
            r += y;
        if (op == OP_FLOORDIV && (x % y != 0) && ((x < 0) != (y < 0)))
            r--;
        break;
    default:
        r = 1;
        for (long long k = 0; k < y && !ovf; k++)
            ovf = __builtin_mul_overflow(r, x, &r);
        break;
    }
    if (ovf)
        return ct_fail(c, at, "integer overflow in '%s'", sym[op]);
    *out = ct_int(r);
    return 0;
}

/* x in y */
int ct_contains(ct_ctx *c, const ct_node *at, ct_val x, ct_val y, int *r)
{
    *r = 0;
    switch (y.t) {
    case V_UNDEF:
        return 0;
    case V_STR:
        if (x.t != V_STR)
            return ct_fail(c, at, "'in <string>' requires string as left operand, not %s",
                           ct_type_name(x));
        if (x.u.s.n == 0) {
            *r = 1;
            return 0;
        }
        for (size_t i = 0; i + x.u.s.n <= y.u.s.n; i++)
            if (memcmp(y.u.s.p + i, x.u.s.p, x.u.s.n) == 0) {
                *r = 1;
                break;
            }
        return 0;
    case V_LIST:
        for (size_t i = 0; i < y.u.l->n; i++)
            if (ct_equal(x, y.u.l->v[i])) {
                *r = 1;
                break;
            }
        return 0;
    case V_DICT:
    case V_NS:
        *r = x.t == V_STR && ct_dict_get(y.u.d, x.u.s.p, x.u.s.n) != NULL;
        return 0;
    default:
        return ct_fail(c, at, "argument of type '%s' is not iterable", ct_type_name(y));
    }
}

/* The items a for loop or a filter walks: list items, dict keys, string characters. */
int ct_iterate(ct_ctx *c, const ct_node *at, ct_val v, ct_list **out)
{
    static ct_list empty;
    switch (v.t) {
    case V_UNDEF:
        *out = &empty;
        return 0;
    case V_LIST:
        *out = v.u.l;
        return 0;
    case V_DICT: {
        ct_list *l = ct_list_new(c, at, v.u.d->n);
        if (!l)
            return -1;
        for (size_t i = 0; i < v.u.d->n; i++)
            l->v[i] = ct_str(v.u.d->k[i], v.u.d->kn[i]);
        *out = l;
        return 0;
    }
    case V_STR: {
        size_t k, *o = cp_offsets(c, at, v.u.s.p, v.u.s.n, &k);
        ct_list *l = o ? ct_list_new(c, at, k) : NULL;
        if (!l)
            return -1;
        for (size_t i = 0; i < k; i++)
            l->v[i] = ct_str(v.u.s.p + o[i], o[i + 1] - o[i]);
        *out = l;
        return 0;
    }
    default:
        return ct_fail(c, at, "'%s' object is not iterable", ct_type_name(v));
    }
}

/* ---- expressions ---- */

static int lookup(ct_ctx *c, const char *name, ct_val *out)
{
    size_t n = strlen(name);
    for (ct_scope *s = c->scope; s; s = s->up) {
        const ct_val *v = ct_dict_get(&s->vars, name, n);
        if (v) {
            *out = *v;
            return 1;
        }
    }
    static const char *const funcs[] = {"raise_exception", "strftime_now", "namespace", "range",
                                        "dict", NULL};
    for (int i = 0; funcs[i]; i++)
        if (!strcmp(name, funcs[i])) {
            out->t = V_FUNC;
            out->u.fn = i;
            return 1;
        }
    return 0;
}

int ct_eval(ct_ctx *c, const ct_node *nd, ct_val *out);

static int eval_args(ct_ctx *c, const ct_node *nd, ct_val *args)
{
    for (size_t i = 0; i < nd->n_kids; i++)
        if (ct_eval(c, nd->kids[i], &args[i]) < 0)
            return -1;
    return 0;
}

static int eval_call(ct_ctx *c, const ct_node *nd, ct_val *out)
{
    ct_val *args = nd->n_kids ? ct_new(c, nd, nd->n_kids * sizeof *args) : NULL;
    if (nd->n_kids && !args)
        return -1;
    const ct_node *callee = nd->a;
    if (callee->kind == N_ATTR) {
        ct_val obj;
        if (ct_eval(c, callee->a, &obj) < 0 || eval_args(c, nd, args) < 0)
            return -1;
        if (obj.t != V_LOOP && obj.t != V_NS)
            return ct_method(c, nd, obj, callee->name, args, nd->kw, nd->n_kids, out);
        ct_val f;
        if (ct_getattr(c, callee, obj, callee->name, strlen(callee->name), &f) < 0)
            return -1;
        if (f.t != V_FUNC)
            return ct_fail(c, nd, "'%s' is not callable", callee->name);
        return ct_call_func(c, nd, (ct_func)f.u.fn, args, nd->kw, nd->n_kids, out);
    }
    ct_val f;
    if (ct_eval(c, callee, &f) < 0)
        return -1;
    if (f.t == V_UNDEF)
        return ct_undefined(c, callee, f);
    if (f.t != V_FUNC)
        return ct_fail(c, nd, "'%s' object is not callable", ct_type_name(f));
    if (eval_args(c, nd, args) < 0)
        return -1;
    return ct_call_func(c, nd, (ct_func)f.u.fn, args, nd->kw, nd->n_kids, out);
}

int ct_eval(ct_ctx *c, const ct_node *nd, ct_val *out)
{
    if (++c->steps > CHAT_MAX_STEPS)
        return ct_fail(c, nd, "more than %ld steps: the template runs away", CHAT_MAX_STEPS);
    if (++c->depth > CT_MAX_DEPTH)
        return ct_fail(c, nd, "expression nested more than %d deep", CT_MAX_DEPTH);
    int rc = 0;
    ct_val a, b;
    switch (nd->kind) {
    case N_LIT:
        *out = nd->lit;
        break;
    case N_NAME:
        if (!lookup(c, nd->name, out)) {
            *out = UNDEF;
            out->u.s.p = nd->name;
        }
        break;
    case N_ATTR:
        rc = ct_eval(c, nd->a, &a) < 0 ? -1 : ct_getattr(c, nd, a, nd->name, strlen(nd->name), out);
        if (rc == 0 && out->t == V_UNDEF)
            out->u.s.p = nd->name;
        break;
    case N_ITEM:
        rc = ct_eval(c, nd->a, &a) < 0 || ct_eval(c, nd->b, &b) < 0 ? -1 : getitem(c, nd, a, b, out);
        break;
    case N_SLICE: {
        ct_val sv[3];
        int has[3];
        if (ct_eval(c, nd->a, &a) < 0) {
            rc = -1;
            break;
        }
        for (int k = 0; k < 3 && rc == 0; k++) {
            has[k] = 0;
            if (!nd->kids[k])
                continue;
            if (ct_eval(c, nd->kids[k], &sv[k]) < 0) {
                rc = -1;
            } else if (sv[k].t == V_NONE) {
                /* [None:] is [:] */
            } else if (sv[k].t != V_INT && sv[k].t != V_BOOL) {
                rc = ct_fail(c, nd->kids[k], "slice indices must be integers, not %s",
                             ct_type_name(sv[k]));
            } else {
                sv[k] = ct_int(num_i(sv[k]));
                has[k] = 1;
            }
        }
        if (rc == 0)
            rc = do_slice(c, nd, a, sv, has, out);
        break;
    }
    case N_CALL:
        rc = eval_call(c, nd, out);
        break;
    case N_FILTER: {
        ct_val *args = nd->n_kids ? ct_new(c, nd, nd->n_kids * sizeof *args) : NULL;
        if ((nd->n_kids && !args) || ct_eval(c, nd->a, &a) < 0 || eval_args(c, nd, args) < 0)
            rc = -1;
        else
            rc = ct_filter(c, nd, nd->name, a, args, nd->kw, nd->n_kids, out);
        break;
    }
    case N_TEST: {
        ct_val *args = nd->n_kids ? ct_new(c, nd, nd->n_kids * sizeof *args) : NULL;
        int r;
        if ((nd->n_kids && !args) || ct_eval(c, nd->a, &a) < 0 || eval_args(c, nd, args) < 0 ||
            ct_test(c, nd, nd->name, a, args, nd->n_kids, &r) < 0)
            rc = -1;
        else
            *out = ct_bool(nd->op ? !r : r);
        break;
    }
    case N_NEG:
    case N_POS:
        if (ct_eval(c, nd->a, &a) < 0) {
            rc = -1;
        } else if (!is_num(a)) {
            rc = a.t == V_UNDEF ? ct_undefined(c, nd, a)
                                : ct_fail(c, nd, "bad operand type for unary %c: '%s'",
                                          nd->kind == N_NEG ? '-' : '+', ct_type_name(a));
        } else if (nd->kind == N_POS) {
            *out = a.t == V_BOOL ? ct_int(a.u.b) : a;
        } else {
            rc = arith(c, nd, OP_SUB, ct_int(0), a, out);
        }
        break;
    case N_NOT:
        rc = ct_eval(c, nd->a, &a);
        *out = ct_bool(!ct_truthy(a));
        break;
    case N_AND:
    case N_OR:
        if (ct_eval(c, nd->a, &a) < 0) {
            rc = -1;
        } else if (ct_truthy(a) == (nd->kind == N_OR)) {
            *out = a;
        } else {
            rc = ct_eval(c, nd->b, out);
        }
        break;
    case N_COND:
        if (ct_eval(c, nd->c, &a) < 0)
            rc = -1;
        else if (ct_truthy(a))
            rc = ct_eval(c, nd->a, out);
        else if (nd->b)
            rc = ct_eval(c, nd->b, out);
        else
            *out = UNDEF;
        break;
    case N_BINOP: {
        if (ct_eval(c, nd->a, &a) < 0 || ct_eval(c, nd->b, &b) < 0) {
            rc = -1;
            break;
        }
        int r;
        switch ((ct_op)nd->op) {
        case OP_EQ: *out = ct_bool(ct_equal(a, b)); break;
        case OP_NE: *out = ct_bool(!ct_equal(a, b)); break;
        case OP_LT: case OP_LE: case OP_GT: case OP_GE:
            if (compare(c, nd, a, b, &r) < 0) {
                rc = -1;
                break;
            }
            *out = ct_bool(nd->op == OP_LT ? r < 0 : nd->op == OP_LE ? r <= 0 : nd->op == OP_GT ? r > 0 : r >= 0);
            break;
        case OP_IN: case OP_NOTIN:
            if (ct_contains(c, nd, a, b, &r) < 0) {
                rc = -1;
                break;
            }
            *out = ct_bool(nd->op == OP_IN ? r : !r);
            break;
        default:
            rc = arith(c, nd, (ct_op)nd->op, a, b, out);
        }
        break;
    }
    case N_LIST: {
        ct_list *l = ct_list_new(c, nd, nd->n_kids);
        if (!l || eval_args(c, nd, l->v) < 0)
            rc = -1;
        else
            *out = ct_list_val(l);
        break;
    }
    case N_DICT: {
        ct_dict *d = ct_new(c, nd, sizeof *d);
        if (!d) {
            rc = -1;
            break;
        }
        for (size_t i = 0; rc == 0 && i + 1 < nd->n_kids; i += 2) {
            if (ct_eval(c, nd->kids[i], &a) < 0 || ct_eval(c, nd->kids[i + 1], &b) < 0)
                rc = -1;
            else if (a.t != V_STR)
                rc = ct_fail(c, nd->kids[i], "dict keys other than strings are not supported");
            else
                rc = ct_dict_set(c, nd, d, a.u.s.p, a.u.s.n, b);
        }
        out->t = V_DICT;
        out->u.d = d;
        break;
    }
    default:
        rc = ct_fail(c, nd, "not an expression");
    }
    c->depth--;
    return rc < 0 || c->failed ? -1 : 0;
}

/* ---- statements ---- */

enum { EXEC_OK = 0, EXEC_BREAK = 1, EXEC_CONTINUE = 2 };

static int exec_list(ct_ctx *c, const ct_node *nd);

static int exec_for(ct_ctx *c, const ct_node *nd)
{
    ct_val seq;
    ct_list *items;
    if (ct_eval(c, nd->c, &seq) < 0 || ct_iterate(c, nd->c, seq, &items) < 0)
        return -1;
    if (items->n == 0)
        return nd->b ? exec_list(c, nd->b) : 0;
    ct_loop loop = {.items = items};
    ct_scope s = {.up = c->scope}; /* each iteration starts empty; its arrays are reused */
    for (size_t i = 0; i < items->n; i++) {
        if (++c->steps > CHAT_MAX_STEPS)
            return ct_fail(c, nd, "more than %ld steps: the template runs away", CHAT_MAX_STEPS);
        loop.index0 = i;
        s.vars.n = 0;
        ct_val lv = {.t = V_LOOP};
        lv.u.loop = &loop;
        ct_val it = items->v[i];
        int rc = ct_dict_set(c, nd, &s.vars, "loop", 4, lv);
        if (rc == 0 && nd->name2) {
            if (it.t != V_LIST || it.u.l->n != 2)
                return ct_fail(c, nd, "cannot unpack a %s into %s, %s", ct_type_name(it), nd->name,
                               nd->name2);
            rc = ct_dict_set(c, nd, &s.vars, nd->name, strlen(nd->name), it.u.l->v[0]);
            if (rc == 0)
                rc = ct_dict_set(c, nd, &s.vars, nd->name2, strlen(nd->name2), it.u.l->v[1]);
        } else if (rc == 0) {
            rc = ct_dict_set(c, nd, &s.vars, nd->name, strlen(nd->name), it);
        }
        if (rc < 0)
            return -1;
        c->scope = &s;
        rc = exec_list(c, nd->a);
        c->scope = s.up;
        if (rc < 0)
            return -1;
        if (rc == EXEC_BREAK)
            break;
    }
    return 0;
}

static int exec_one(ct_ctx *c, const ct_node *nd)
{
    ct_val v;
    switch (nd->kind) {
    case N_TEXT:
        return sb_put(c, nd, &c->out, nd->lit.u.s.p, nd->lit.u.s.n);
    case N_OUTPUT:
        if (ct_eval(c, nd->a, &v) < 0)
            return -1;
        if (v.t == V_LOOP || v.t == V_FUNC)
            return ct_fail(c, nd, "cannot print a %s", ct_type_name(v));
        return ct_put_str(c, nd, &c->out, v);
    case N_IF:
        if (ct_eval(c, nd->c, &v) < 0)
            return -1;
        return ct_truthy(v) ? exec_list(c, nd->a) : nd->b ? exec_list(c, nd->b) : 0;
    case N_FOR:
        return exec_for(c, nd);
    case N_SET:
        if (ct_eval(c, nd->a, &v) < 0)
            return -1;
        return ct_dict_set(c, nd, &c->scope->vars, nd->name, strlen(nd->name), v);
    case N_SET_ATTR: {
        ct_val ns;
        if (!lookup(c, nd->name2, &ns) || ns.t != V_NS)
            return ct_fail(c, nd, "cannot assign attribute on non-namespace object '%s'", nd->name2);
        if (ct_eval(c, nd->a, &v) < 0)
            return -1;
        return ct_dict_set(c, nd, ns.u.d, nd->name, strlen(nd->name), v);
    }
    case N_BREAK:
    case N_CONTINUE:
        return nd->kind == N_BREAK ? EXEC_BREAK : EXEC_CONTINUE;
    default:
        return ct_fail(c, nd, "not a statement");
    }
}

static int exec_list(ct_ctx *c, const ct_node *nd)
{
    if (++c->depth > CT_MAX_DEPTH)
        return ct_fail(c, nd, "blocks nested more than %d deep", CT_MAX_DEPTH);
    int rc = 0;
    for (; nd && rc == 0; nd = nd->next)
        rc = exec_one(c, nd);
    c->depth--;
    return rc;
}

int chat_render(const chat_template *t, const json_value *messages, const chat_options *opt,
                char **out, size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    chat_options none = {.now = -1};
    if (!opt)
        opt = &none;
    ct_scope root = {0};
    ct_ctx c = {.t = t, .err = err, .errlen = errlen, .opt = opt, .scope = &root};
    c.arena.limit = CHAT_MAX_MEMORY;
    c.out.max = opt->max_output ? opt->max_output : CHAT_MAX_OUTPUT;
    int rc = -1;
    ct_val v;
    if (!messages || messages->type != JSON_ARRAY) {
        ct_fail(&c, NULL, "messages: not a JSON array");
        goto done;
    }
    for (size_t i = 0; i < messages->count; i++)
        if (messages->items[i].type != JSON_OBJECT) {
            ct_fail(&c, NULL, "messages[%zu]: not a JSON object", i);
            goto done;
        }
    if (opt->extra && opt->extra->type != JSON_OBJECT) {
        ct_fail(&c, NULL, "extra variables: not a JSON object");
        goto done;
    }
    if (ct_dict_set(&c, NULL, &root.vars, "tools", 5, NONE) < 0 ||
        ct_dict_set(&c, NULL, &root.vars, "documents", 9, NONE) < 0)
        goto done;
    for (size_t i = 0; opt->extra && i < opt->extra->count; i++)
        if (from_json(&c, &opt->extra->items[i], &v) < 0 ||
            ct_dict_set(&c, NULL, &root.vars, opt->extra->keys[i], strlen(opt->extra->keys[i]), v) < 0)
            goto done;
    if (from_json(&c, messages, &v) < 0 || ct_dict_set(&c, NULL, &root.vars, "messages", 8, v) < 0 ||
        ct_dict_set(&c, NULL, &root.vars, "add_generation_prompt", 21,
                    ct_bool(opt->add_generation_prompt)) < 0)
        goto done;
    if (opt->bos_token &&
        ct_dict_set(&c, NULL, &root.vars, "bos_token", 9, ct_str(opt->bos_token, strlen(opt->bos_token))) < 0)
        goto done;
    if (opt->eos_token &&
        ct_dict_set(&c, NULL, &root.vars, "eos_token", 9, ct_str(opt->eos_token, strlen(opt->eos_token))) < 0)
        goto done;
    if (exec_list(&c, t->body) < 0 || c.failed)
        goto done;
    if (!c.out.p && sb_put(&c, NULL, &c.out, "", 0) < 0)
        goto done;
    *out = c.out.p;
    *out_len = c.out.n;
    c.out.p = NULL;
    rc = 0;
done:
    free(c.out.p);
    ct_arena_free(&c.arena);
    return rc;
}
