/* chat_template_lib.c: the filters, tests, methods and globals chat templates use, each as
 * jinja2 (3.1) or Python defines it, and transformers' tojson (json.dumps, ensure_ascii
 * False). A name outside these lists is an error naming it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template_eval.h"

static const ct_val UNDEF = {.t = V_UNDEF};

/* ---- tojson: Python's json.dumps(x, ensure_ascii=False, indent, separators, sort_keys) ---- */

typedef struct {
    const char *indent; /* NULL: no newlines */
    size_t indent_n;
    const char *item_sep, *key_sep;
    int sort_keys;
} json_fmt;

static int json_str(ct_ctx *c, const ct_node *at, sbuf *b, const char *s, size_t n)
{
    if (sb_putc(c, at, b, '"') < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        const char *e = NULL;
        switch (ch) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default:
            if (ch < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", ch);
                e = esc;
            }
        }
        if (e ? sb_put(c, at, b, e, strlen(e)) < 0 : sb_putc(c, at, b, (char)ch) < 0)
            return -1;
    }
    return sb_putc(c, at, b, '"');
}

static int json_nl(ct_ctx *c, const ct_node *at, sbuf *b, const json_fmt *f, int level)
{
    if (!f->indent)
        return 0;
    if (sb_putc(c, at, b, '\n') < 0)
        return -1;
    for (int i = 0; i < level; i++)
        if (sb_put(c, at, b, f->indent, f->indent_n) < 0)
            return -1;
    return 0;
}

static int key_cmp(const void *x, const void *y)
{
    const ct_val *a = x, *b = y;
    size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
    int m = memcmp(a->u.s.p, b->u.s.p, n);
    return m ? m : (a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n);
}

static int json_dump(ct_ctx *c, const ct_node *at, sbuf *b, const json_fmt *f, ct_val v, int level)
{
    char num[64];
    if (level > 64)
        return ct_fail(c, at, "tojson: value nested too deeply");
    switch (v.t) {
    case V_NONE: return sb_put(c, at, b, "null", 4);
    case V_BOOL: return v.u.b ? sb_put(c, at, b, "true", 4) : sb_put(c, at, b, "false", 5);
    case V_INT: snprintf(num, sizeof num, "%lld", v.u.i); return sb_put(c, at, b, num, strlen(num));
    case V_FLOAT:
        if (isnan(v.u.f))
            snprintf(num, sizeof num, "NaN");
        else if (isinf(v.u.f))
            snprintf(num, sizeof num, v.u.f < 0 ? "-Infinity" : "Infinity");
        else
            ct_fmt_float(v.u.f, num, sizeof num);
        return sb_put(c, at, b, num, strlen(num));
    case V_STR: return json_str(c, at, b, v.u.s.p, v.u.s.n);
    case V_LIST:
        if (v.u.l->n == 0)
            return sb_put(c, at, b, "[]", 2);
        if (sb_putc(c, at, b, '[') < 0)
            return -1;
        for (size_t i = 0; i < v.u.l->n; i++) {
            if ((i && sb_put(c, at, b, f->item_sep, strlen(f->item_sep)) < 0) ||
                json_nl(c, at, b, f, level + 1) < 0 || json_dump(c, at, b, f, v.u.l->v[i], level + 1) < 0)
                return -1;
        }
        if (json_nl(c, at, b, f, level) < 0)
            return -1;
        return sb_putc(c, at, b, ']');
    case V_DICT: {
        ct_dict *d = v.u.d;
        if (d->n == 0)
            return sb_put(c, at, b, "{}", 2);
        ct_val *keys = ct_new(c, at, d->n * sizeof *keys);
        if (!keys)
            return -1;
        for (size_t i = 0; i < d->n; i++)
            keys[i] = ct_str(d->k[i], d->kn[i]);
        if (f->sort_keys)
            qsort(keys, d->n, sizeof *keys, key_cmp);
        if (sb_putc(c, at, b, '{') < 0)
            return -1;
        for (size_t i = 0; i < d->n; i++) {
            if ((i && sb_put(c, at, b, f->item_sep, strlen(f->item_sep)) < 0) ||
                json_nl(c, at, b, f, level + 1) < 0 ||
                json_str(c, at, b, keys[i].u.s.p, keys[i].u.s.n) < 0 ||
                sb_put(c, at, b, f->key_sep, strlen(f->key_sep)) < 0 ||
                json_dump(c, at, b, f, *ct_dict_get(d, keys[i].u.s.p, keys[i].u.s.n), level + 1) < 0)
                return -1;
        }
        if (json_nl(c, at, b, f, level) < 0)
            return -1;
        return sb_putc(c, at, b, '}');
    }
    default:
        return ct_fail(c, at, "tojson: Object of type %s is not JSON serializable", ct_type_name(v));
    }
}

/* Binds positional and keyword arguments to names[]; vals[i] UNDEF (t V_UNDEF, p NULL) if absent. */
static int bind(ct_ctx *c, const ct_node *at, const char *fn, const char *const *names,
                const ct_val *args, const char *const *kw, size_t n, ct_val *vals)
{
    size_t np = 0;
    while (names[np])
        np++;
    for (size_t i = 0; i < np; i++)
        vals[i] = UNDEF;
    for (size_t i = 0; i < n; i++) {
        if (!kw || !kw[i]) {
            if (i >= np)
                return ct_fail(c, at, "%s: too many arguments", fn);
            vals[i] = args[i];
            continue;
        }
        size_t k = 0;
        while (k < np && strcmp(names[k], kw[i]))
            k++;
        if (k == np)
            return ct_fail(c, at, "%s: unexpected keyword argument '%s'", fn, kw[i]);
        vals[k] = args[i];
    }
    return 0;
}

static int given(ct_val v)
{
    return !(v.t == V_UNDEF && v.u.s.p == NULL);
}

static int tojson(ct_ctx *c, const ct_node *at, ct_val v, const ct_val *args, const char *const *kw,
                  size_t n, ct_val *out)
{
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
    ct_val a[4];
    if (bind(c, at, "tojson", names, args, kw, n, a) < 0)
        return -1;
    if (given(a[0]) && ct_truthy(a[0]))
        return ct_fail(c, at, "tojson: ensure_ascii=True is not supported");
    json_fmt f = {.item_sep = ", ", .key_sep = ": "};
    char spaces[64];
    if (given(a[1]) && a[1].t != V_NONE) {
        if (a[1].t == V_INT) {
            long long k = a[1].u.i < 0 ? 0 : a[1].u.i;
            if (k >= (long long)sizeof spaces)
                return ct_fail(c, at, "tojson: indent %lld too large", k);
            memset(spaces, ' ', (size_t)k);
            f.indent = spaces;
            f.indent_n = (size_t)k;
        } else if (a[1].t == V_STR) {
            f.indent = a[1].u.s.p;
            f.indent_n = a[1].u.s.n;
        } else {
            return ct_fail(c, at, "tojson: indent must be an int or a string");
        }
        f.item_sep = ",";
    }
    if (given(a[2]) && a[2].t != V_NONE) {
        if (a[2].t != V_LIST || a[2].u.l->n != 2 || a[2].u.l->v[0].t != V_STR ||
            a[2].u.l->v[1].t != V_STR)
            return ct_fail(c, at, "tojson: separators must be a list of two strings");
        ct_val s0, s1;
        if (ct_to_str(c, at, a[2].u.l->v[0], &s0) < 0 || ct_to_str(c, at, a[2].u.l->v[1], &s1) < 0)
            return -1;
        char *x = ct_new(c, at, s0.u.s.n + 1), *y = ct_new(c, at, s1.u.s.n + 1);
        if (!x || !y)
            return -1;
        memcpy(x, s0.u.s.p, s0.u.s.n);
        memcpy(y, s1.u.s.p, s1.u.s.n);
        f.item_sep = x;
        f.key_sep = y;
    }
    f.sort_keys = given(a[3]) && ct_truthy(a[3]);
    sbuf b = {0};
    if (json_dump(c, at, &b, &f, v, 0) < 0) {
        free(b.p);
        return -1;
    }
    return sb_take(c, at, &b, out);
}

/* ---- tests ---- */

int ct_test(ct_ctx *c, const ct_node *at, const char *name, ct_val v, const ct_val *args,
            size_t n, int *r)
{
    ct_type t = v.t;
    if (!strcmp(name, "defined")) *r = t != V_UNDEF;
    else if (!strcmp(name, "undefined")) *r = t == V_UNDEF;
    else if (!strcmp(name, "none")) *r = t == V_NONE;
    else if (!strcmp(name, "string")) *r = t == V_STR;
    else if (!strcmp(name, "number")) *r = t == V_INT || t == V_FLOAT || t == V_BOOL;
    else if (!strcmp(name, "integer")) *r = t == V_INT;
    else if (!strcmp(name, "float")) *r = t == V_FLOAT;
    else if (!strcmp(name, "boolean")) *r = t == V_BOOL;
    else if (!strcmp(name, "true")) *r = t == V_BOOL && v.u.b;
    else if (!strcmp(name, "false")) *r = t == V_BOOL && !v.u.b;
    else if (!strcmp(name, "mapping")) *r = t == V_DICT;
    else if (!strcmp(name, "iterable")) *r = t == V_UNDEF || t == V_STR || t == V_LIST || t == V_DICT;
    else if (!strcmp(name, "sequence")) *r = t == V_UNDEF || t == V_STR || t == V_LIST || t == V_DICT;
    else if (!strcmp(name, "callable")) *r = t == V_FUNC;
    else if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        if (t != V_INT && t != V_BOOL)
            return t == V_UNDEF ? ct_undefined(c, at, v)
                                : ct_fail(c, at, "test '%s' needs an integer, got %s", name, ct_type_name(v));
        long long x = t == V_INT ? v.u.i : v.u.b, d = 2;
        if (name[0] == 'd') {
            if (n != 1 || args[0].t != V_INT || args[0].u.i == 0)
                return ct_fail(c, at, "test 'divisibleby' needs a nonzero integer argument");
            d = args[0].u.i;
        }
        *r = name[0] == 'o' ? x % 2 != 0 : x % d == 0;
    } else {
        static const char *const cmp[] = {"eq", "equalto", "==", "ne", "!=", "lt", "<", "le", "<=",
                                          "gt", ">", "ge", ">=", "in", "sameas", NULL};
        int k = 0;
        while (cmp[k] && strcmp(cmp[k], name))
            k++;
        if (!cmp[k])
            return ct_fail(c, at, "test '%s' is not supported", name);
        if (n != 1)
            return ct_fail(c, at, "test '%s' needs one argument", name);
        if (k <= 2 || k == 14) {
            *r = ct_equal(v, args[0]);
        } else if (k <= 4) {
            *r = !ct_equal(v, args[0]);
        } else if (k == 13) {
            return ct_contains(c, at, v, args[0], r);
        } else {
            if (!((t == V_INT || t == V_FLOAT || t == V_BOOL) &&
                  (args[0].t == V_INT || args[0].t == V_FLOAT || args[0].t == V_BOOL)))
                return ct_fail(c, at, "test '%s' needs numbers", name);
            double x = t == V_FLOAT ? v.u.f : t == V_INT ? (double)v.u.i : v.u.b;
            double y = args[0].t == V_FLOAT ? args[0].u.f : args[0].t == V_INT ? (double)args[0].u.i : args[0].u.b;
            *r = k <= 6 ? x < y : k <= 8 ? x <= y : k <= 10 ? x > y : x >= y;
        }
    }
    return 0;
}

/* ---- filters ---- */

static int items_of(ct_ctx *c, const ct_node *at, ct_val v, ct_val *out)
{
    if (v.t == V_UNDEF) {
        ct_list *l = ct_list_new(c, at, 0);
        if (!l)
            return -1;
        *out = ct_list_val(l);
        return 0;
    }
    if (v.t != V_DICT && v.t != V_NS)
        return ct_fail(c, at, "items: can only get item pairs from a mapping, not %s", ct_type_name(v));
    ct_list *l = ct_list_new(c, at, v.u.d->n);
    if (!l)
        return -1;
    for (size_t i = 0; i < v.u.d->n; i++) {
        ct_list *pair = ct_list_new(c, at, 2);
        if (!pair)
            return -1;
        pair->v[0] = ct_str(v.u.d->k[i], v.u.d->kn[i]);
        pair->v[1] = v.u.d->v[i];
        l->v[i] = ct_list_val(pair);
    }
    *out = ct_list_val(l);
    return 0;
}

static int length_of(ct_ctx *c, const ct_node *at, ct_val v, ct_val *out)
{
    switch (v.t) {
    case V_UNDEF: *out = ct_int(0); return 0;
    case V_STR: *out = ct_int((long long)ct_utf8_len(v.u.s.p, v.u.s.n)); return 0;
    case V_LIST: *out = ct_int((long long)v.u.l->n); return 0;
    case V_DICT: *out = ct_int((long long)v.u.d->n); return 0;
    default: return ct_fail(c, at, "object of type '%s' has no len()", ct_type_name(v));
    }
}

/* select / reject / selectattr / rejectattr */
static int select_items(ct_ctx *c, const ct_node *at, const char *name, ct_val v, const ct_val *args,
                        size_t n, ct_val *out)
{
    int attr = strstr(name, "attr") != NULL, keep = name[0] == 's';
    ct_list *items;
    if (ct_iterate(c, at, v, &items) < 0)
        return -1;
    if (attr && (n < 1 || args[0].t != V_STR))
        return ct_fail(c, at, "%s: needs an attribute name", name);
    size_t ti = attr ? 1 : 0;
    if (n > ti && args[ti].t != V_STR)
        return ct_fail(c, at, "%s: the test must be named by a string", name);
    char tname[64] = "";
    if (n > ti) {
        if (args[ti].u.s.n >= sizeof tname)
            return ct_fail(c, at, "%s: unknown test", name);
        memcpy(tname, args[ti].u.s.p, args[ti].u.s.n);
        tname[args[ti].u.s.n] = 0;
    }
    ct_list *l = ct_list_new(c, at, items->n);
    if (!l)
        return -1;
    l->n = 0;
    for (size_t i = 0; i < items->n; i++) {
        ct_val x = items->v[i];
        if (attr) {
            char *k = ct_new(c, at, args[0].u.s.n + 1);
            if (!k)
                return -1;
            memcpy(k, args[0].u.s.p, args[0].u.s.n);
            if (ct_getattr(c, at, x, k, args[0].u.s.n, &x) < 0)
                return -1;
        }
        int r;
        if (n > ti) {
            if (ct_test(c, at, tname, x, args + ti + 1, n - ti - 1, &r) < 0)
                return -1;
        } else {
            r = ct_truthy(x);
        }
        if (r == keep)
            l->v[l->n++] = items->v[i];
    }
    *out = ct_list_val(l);
    return 0;
}

int ct_filter(ct_ctx *c, const ct_node *at, const char *name, ct_val v, const ct_val *args,
              const char *const *kw, size_t n, ct_val *out)
{
    ct_val s;
    if (!strcmp(name, "trim")) {
        if (ct_to_str(c, at, v, &s) < 0)
            return -1;
        if (n && ct_need_str(c, at, "trim", args[0]) < 0)
            return -1;
        *out = ct_strip(s, n ? &args[0] : NULL, 1, 1);
        return 0;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count"))
        return length_of(c, at, v, out);
    if (!strcmp(name, "tojson"))
        return tojson(c, at, v, args, kw, n, out);
    if (!strcmp(name, "items"))
        return items_of(c, at, v, out);
    if (!strcmp(name, "string"))
        return ct_to_str(c, at, v, out);
    if (!strcmp(name, "safe")) {
        *out = v;
        return 0;
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
        !strcmp(name, "title")) {
        if (ct_to_str(c, at, v, &s) < 0)
            return -1;
        return ct_case(c, at, s, name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : name[0] == 'c' ? 2 : 3, out);
    }
    if (!strcmp(name, "replace")) {
        if (n < 2 || n > 3 || args[0].t != V_STR || args[1].t != V_STR)
            return ct_fail(c, at, "replace: needs two strings (and a count)");
        if (ct_to_str(c, at, v, &s) < 0)
            return -1;
        return ct_replace(c, at, s, args[0], args[1], n == 3 && args[2].t == V_INT ? args[2].u.i : -1, out);
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        ct_list *items;
        if (ct_iterate(c, at, v, &items) < 0)
            return -1;
        *out = items->n ? items->v[name[0] == 'f' ? 0 : items->n - 1] : UNDEF;
        return 0;
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        static const char *const names[] = {"default_value", "boolean", NULL};
        ct_val a[2];
        if (bind(c, at, name, names, args, kw, n, a) < 0)
            return -1;
        int use = v.t == V_UNDEF || (given(a[1]) && ct_truthy(a[1]) && !ct_truthy(v));
        *out = use ? (given(a[0]) ? a[0] : ct_str("", 0)) : v;
        return 0;
    }
    if (!strcmp(name, "join")) {
        static const char *const names[] = {"d", "attribute", NULL};
        ct_val a[2];
        ct_list *items;
        if (bind(c, at, name, names, args, kw, n, a) < 0 || ct_iterate(c, at, v, &items) < 0)
            return -1;
        if (given(a[1]))
            return ct_fail(c, at, "join: attribute= is not supported");
        sbuf b = {0};
        for (size_t i = 0; i < items->n; i++)
            if ((i && given(a[0]) && ct_put_str(c, at, &b, a[0]) < 0) ||
                ct_put_str(c, at, &b, items->v[i]) < 0) {
                free(b.p);
                return -1;
            }
        return sb_take(c, at, &b, out);
    }
    if (!strcmp(name, "list")) {
        ct_list *items;
        if (ct_iterate(c, at, v, &items) < 0)
            return -1;
        *out = ct_list_val(items);
        return 0;
    }
    if (!strcmp(name, "int") || !strcmp(name, "float") || !strcmp(name, "abs")) {
        if (v.t == V_STR && name[0] != 'a') {
            char buf[64];
            size_t k = v.u.s.n < sizeof buf - 1 ? v.u.s.n : sizeof buf - 1;
            memcpy(buf, v.u.s.p, k);
            buf[k] = 0;
            char *end;
            double d = strtod(buf, &end);
            v = *end || end == buf ? ct_int(0) : (ct_val){.t = V_FLOAT, .u.f = d};
        }
        if (v.t == V_BOOL)
            v = ct_int(v.u.b);
        if (v.t != V_INT && v.t != V_FLOAT) {
            if (name[0] == 'a')
                return ct_fail(c, at, "abs: bad operand type '%s'", ct_type_name(v));
            v = ct_int(0);
        }
        if (name[0] == 'i') {
            *out = v.t == V_INT ? v : ct_int((long long)v.u.f);
        } else if (name[0] == 'f') {
            *out = (ct_val){.t = V_FLOAT, .u.f = v.t == V_INT ? (double)v.u.i : v.u.f};
        } else {
            *out = v.t == V_INT ? ct_int(v.u.i < 0 ? -v.u.i : v.u.i) : (ct_val){.t = V_FLOAT, .u.f = fabs(v.u.f)};
        }
        return 0;
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") ||
        !strcmp(name, "rejectattr")) {
        for (size_t i = 0; i < n; i++)
            if (kw && kw[i])
                return ct_fail(c, at, "%s: keyword arguments are not supported", name);
        return select_items(c, at, name, v, args, n, out);
    }
    if (!strcmp(name, "map")) {
        ct_list *items;
        if (ct_iterate(c, at, v, &items) < 0)
            return -1;
        ct_list *l = ct_list_new(c, at, items->n);
        if (!l)
            return -1;
        if (n == 1 && kw && kw[0] && !strcmp(kw[0], "attribute") && args[0].t == V_STR) {
            char *k = ct_new(c, at, args[0].u.s.n + 1);
            if (!k)
                return -1;
            memcpy(k, args[0].u.s.p, args[0].u.s.n);
            for (size_t i = 0; i < items->n; i++)
                if (ct_getattr(c, at, items->v[i], k, args[0].u.s.n, &l->v[i]) < 0)
                    return -1;
        } else if (n >= 1 && (!kw || !kw[0]) && args[0].t == V_STR && args[0].u.s.n < 32) {
            char f[32];
            memcpy(f, args[0].u.s.p, args[0].u.s.n);
            f[args[0].u.s.n] = 0;
            if (!strcmp(f, "map"))
                return ct_fail(c, at, "map: map of map is not supported");
            for (size_t i = 0; i < items->n; i++)
                if (ct_filter(c, at, f, items->v[i], args + 1, kw ? kw + 1 : NULL, n - 1, &l->v[i]) < 0)
                    return -1;
        } else {
            return ct_fail(c, at, "map: needs a filter name or attribute=");
        }
        *out = ct_list_val(l);
        return 0;
    }
    return ct_fail(c, at, "filter '%s' is not supported", name);
}

/* ---- methods: str and dict, as Python has them ---- */

int ct_method(ct_ctx *c, const ct_node *at, ct_val obj, const char *name, const ct_val *args,
              const char *const *kw, size_t n, ct_val *out)
{
    if (obj.t == V_UNDEF)
        return ct_undefined(c, at, obj);
    for (size_t i = 0; i < n; i++)
        if (kw && kw[i])
            return ct_fail(c, at, "%s(): keyword arguments are not supported", name);
    if (obj.t == V_STR) {
        if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
            if (n != 1 || ct_need_str(c, at, name, args[0]) < 0)
                return c->failed ? -1 : ct_fail(c, at, "%s() takes one string", name);
            size_t k = args[0].u.s.n;
            int r = k <= obj.u.s.n &&
                    memcmp(name[0] == 's' ? obj.u.s.p : obj.u.s.p + obj.u.s.n - k, args[0].u.s.p, k) == 0;
            *out = ct_bool(r);
            return 0;
        }
        if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
            if (n > 1 || (n == 1 && args[0].t != V_STR && args[0].t != V_NONE))
                return ct_fail(c, at, "%s() takes an optional string", name);
            *out = ct_strip(obj, n == 1 && args[0].t == V_STR ? &args[0] : NULL, name[0] != 'r', name[0] != 'l');
            return 0;
        }
        if (!strcmp(name, "split")) {
            if (n > 2 || (n >= 1 && args[0].t != V_STR && args[0].t != V_NONE) ||
                (n == 2 && args[1].t != V_INT))
                return ct_fail(c, at, "split() takes an optional separator and count");
            return ct_split(c, at, obj, n >= 1 && args[0].t == V_STR ? &args[0] : NULL,
                         n == 2 ? args[1].u.i : -1, out);
        }
        if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
            !strcmp(name, "title")) {
            if (n)
                return ct_fail(c, at, "%s() takes no arguments", name);
            return ct_case(c, at, obj, name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : name[0] == 'c' ? 2 : 3, out);
        }
        if (!strcmp(name, "replace")) {
            if (n < 2 || n > 3 || args[0].t != V_STR || args[1].t != V_STR || (n == 3 && args[2].t != V_INT))
                return ct_fail(c, at, "replace() takes two strings and an optional count");
            return ct_replace(c, at, obj, args[0], args[1], n == 3 ? args[2].u.i : -1, out);
        }
        return ct_fail(c, at, "string method '%s' is not supported", name);
    }
    if (obj.t == V_DICT) {
        if (!strcmp(name, "items") && n == 0)
            return items_of(c, at, obj, out);
        if ((!strcmp(name, "keys") || !strcmp(name, "values")) && n == 0) {
            ct_list *l = ct_list_new(c, at, obj.u.d->n);
            if (!l)
                return -1;
            for (size_t i = 0; i < obj.u.d->n; i++)
                l->v[i] = name[0] == 'k' ? ct_str(obj.u.d->k[i], obj.u.d->kn[i]) : obj.u.d->v[i];
            *out = ct_list_val(l);
            return 0;
        }
        if (!strcmp(name, "get") && (n == 1 || n == 2)) {
            const ct_val *v = args[0].t == V_STR ? ct_dict_get(obj.u.d, args[0].u.s.p, args[0].u.s.n) : NULL;
            *out = v ? *v : n == 2 ? args[1] : (ct_val){.t = V_NONE};
            return 0;
        }
        return ct_fail(c, at, "dict method '%s' (with %zu arguments) is not supported", name, n);
    }
    return ct_fail(c, at, "%s method '%s' is not supported", ct_type_name(obj), name);
}

/* ---- globals ---- */

int ct_call_func(ct_ctx *c, const ct_node *at, ct_func f, const ct_val *args,
                 const char *const *kw, size_t n, ct_val *out)
{
    switch (f) {
    case F_RAISE: {
        ct_val m = n ? args[0] : ct_str("", 0);
        if (ct_to_str(c, at, m, &m) < 0)
            return -1;
        return ct_fail(c, at, "raise_exception: %.*s", (int)(m.u.s.n > 4000 ? 4000 : m.u.s.n), m.u.s.p);
    }
    case F_STRFTIME: {
        if (n != 1 || args[0].t != V_STR || (kw && kw[0]))
            return ct_fail(c, at, "strftime_now() takes one format string");
        char fmt[256], buf[512];
        if (args[0].u.s.n >= sizeof fmt)
            return ct_fail(c, at, "strftime_now: format too long");
        memcpy(fmt, args[0].u.s.p, args[0].u.s.n);
        fmt[args[0].u.s.n] = 0;
        time_t now = c->opt->now >= 0 ? (time_t)c->opt->now : time(NULL);
        struct tm tm;
        if (!localtime_r(&now, &tm))
            return ct_fail(c, at, "strftime_now: no local time");
        size_t k = strftime(buf, sizeof buf, fmt, &tm);
        if (k == 0 && fmt[0])
            return ct_fail(c, at, "strftime_now: bad or too long format");
        char *d = ct_new(c, at, k + 1);
        if (!d)
            return -1;
        memcpy(d, buf, k);
        *out = ct_str(d, k);
        return 0;
    }
    case F_NAMESPACE:
    case F_DICT: {
        ct_dict *d = ct_new(c, at, sizeof *d);
        if (!d)
            return -1;
        for (size_t i = 0; i < n; i++) {
            if (!kw || !kw[i]) {
                if (args[i].t != V_DICT)
                    return ct_fail(c, at, "%s(): positional arguments must be dicts",
                                   f == F_DICT ? "dict" : "namespace");
                for (size_t j = 0; j < args[i].u.d->n; j++)
                    if (ct_dict_set(c, at, d, args[i].u.d->k[j], args[i].u.d->kn[j], args[i].u.d->v[j]) < 0)
                        return -1;
            } else if (ct_dict_set(c, at, d, kw[i], strlen(kw[i]), args[i]) < 0) {
                return -1;
            }
        }
        out->t = f == F_DICT ? V_DICT : V_NS;
        out->u.d = d;
        return 0;
    }
    case F_RANGE: {
        long long a[3] = {0, 0, 1};
        if (n < 1 || n > 3)
            return ct_fail(c, at, "range() takes 1 to 3 integers");
        for (size_t i = 0; i < n; i++) {
            if ((kw && kw[i]) || (args[i].t != V_INT && args[i].t != V_BOOL))
                return ct_fail(c, at, "range() takes integers");
            long long x = args[i].t == V_INT ? args[i].u.i : args[i].u.b;
            a[n == 1 ? 1 : i] = x;
        }
        if (a[2] == 0)
            return ct_fail(c, at, "range() step must not be zero");
        long long cnt = 0;
        if (a[2] > 0 && a[1] > a[0])
            cnt = (a[1] - a[0] + a[2] - 1) / a[2];
        else if (a[2] < 0 && a[1] < a[0])
            cnt = (a[0] - a[1] - a[2] - 1) / -a[2];
        if (cnt > 1000000) /* jinja2's sandbox: MAX_RANGE = 100000 */
            return ct_fail(c, at, "range() of %lld items is too big", cnt);
        if (cnt > 100000)
            return ct_fail(c, at, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        ct_list *l = ct_list_new(c, at, (size_t)cnt);
        if (!l)
            return -1;
        for (long long i = 0; i < cnt; i++)
            l->v[i] = ct_int(a[0] + i * a[2]);
        *out = ct_list_val(l);
        return 0;
    }
    }
    return ct_fail(c, at, "unknown function");
}
