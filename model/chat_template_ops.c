/* chat_template_ops.c: what expressions do to values, with Python's rules: items by key or
 * index, slices by code point, + - * / // % ** ~, in, and what a for loop walks. jinja2's
 * default Undefined: an item or arithmetic of it is an error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_eval.h"

static const ct_val UNDEF = {.t = V_UNDEF};

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

int ct_getitem(ct_ctx *c, const ct_node *at, ct_val obj, ct_val key, ct_val *out)
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
        long long i = ct_num_i(key);
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

int ct_slice(ct_ctx *c, const ct_node *at, ct_val obj, ct_val sv[3], int has[3], ct_val *out)
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

int ct_arith(ct_ctx *c, const ct_node *at, ct_op op, ct_val a, ct_val b, ct_val *out)
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
        long long times = ct_num_i(a.t == V_STR ? b : a);
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
    if (!ct_is_num(a) || !ct_is_num(b))
        return ct_fail(c, at, "unsupported operand types for %s: '%s' and '%s'", sym[op],
                       ct_type_name(a), ct_type_name(b));
    int flt = a.t == V_FLOAT || b.t == V_FLOAT || op == OP_DIV;
    if (op == OP_POW && !flt && ct_num_i(b) < 0)
        flt = 1;
    if (flt) {
        double x = ct_num_f(a), y = ct_num_f(b), r;
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
    long long x = ct_num_i(a), y = ct_num_i(b), r = 0;
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
