/* chat_template_value.c: a render's values as Python and jinja2 have them: errors and
 * memory, strings and buffers, dicts and lists, values from JSON, str() and repr() (floats
 * as Python's repr), truth, ==, and ordering. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_eval.h"

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

int ct_from_json(ct_ctx *c, const json_value *j, ct_val *out)
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
            if (ct_from_json(c, &j->items[i], &l->v[i]) < 0)
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
            if (ct_from_json(c, &j->items[i], &v) < 0 ||
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

int ct_is_num(ct_val v)
{
    return v.t == V_BOOL || v.t == V_INT || v.t == V_FLOAT;
}
double ct_num_f(ct_val v)
{
    return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : v.u.b;
}
long long ct_num_i(ct_val v)
{
    return v.t == V_INT ? v.u.i : v.u.b;
}

int ct_equal(ct_val a, ct_val b)
{
    if (ct_is_num(a) && ct_is_num(b)) {
        if (a.t == V_FLOAT || b.t == V_FLOAT)
            return ct_num_f(a) == ct_num_f(b);
        return ct_num_i(a) == ct_num_i(b);
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
int ct_compare(ct_ctx *c, const ct_node *at, ct_val a, ct_val b, int *r)
{
    if (ct_is_num(a) && ct_is_num(b)) {
        double x = ct_num_f(a), y = ct_num_f(b);
        if (a.t != V_FLOAT && b.t != V_FLOAT) {
            long long i = ct_num_i(a), j = ct_num_i(b);
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
            return ct_compare(c, at, a.u.l->v[i], b.u.l->v[i], r);
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
