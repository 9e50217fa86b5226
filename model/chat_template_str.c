/* chat_template_str.c: Python's str methods as templates use them: strip (whitespace as
 * str.isspace has it), split, replace, and ASCII case changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_eval.h"

/* Python's str.isspace for the code point at s (its length into *len), 0 if not a space. */
int ct_space_at(const char *s, size_t n, size_t *len)
{
    unsigned char c = (unsigned char)s[0];
    *len = 1;
    if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f))
        return 1;
    if (c < 0x80)
        return 0;
    unsigned long cp = 0;
    size_t k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (k > n)
        return 0;
    cp = c & (0x3F >> (k - 1));
    for (size_t i = 1; i < k; i++)
        cp = cp << 6 | ((unsigned char)s[i] & 0x3F);
    *len = k;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Python's strip/lstrip/rstrip: chars NULL = whitespace, else any of those code points. */
ct_val ct_strip(ct_val s, const ct_val *chars, int left, int right)
{
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n, len;
    if (!chars) {
        while (left && a < b && ct_space_at(p + a, b - a, &len))
            a += len;
        while (right && b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80)
                st--;
            if (!ct_space_at(p + st, b - st, &len) || st + len != b)
                break;
            b = st;
        }
    } else {
        const char *cs = chars->u.s.p;
        size_t cn = chars->u.s.n;
        while (left && a < b) {
            size_t l = 1;
            while (a + l < b && ((unsigned char)p[a + l] & 0xC0) == 0x80)
                l++;
            int hit = 0;
            for (size_t i = 0; i + l <= cn; i++)
                if (memcmp(cs + i, p + a, l) == 0)
                    hit = 1;
            if (!hit)
                break;
            a += l;
        }
        while (right && b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80)
                st--;
            int hit = 0;
            for (size_t i = 0; i + (b - st) <= cn; i++)
                if (memcmp(cs + i, p + st, b - st) == 0)
                    hit = 1;
            if (!hit)
                break;
            b = st;
        }
    }
    return ct_str(p + a, b - a);
}

int ct_need_str(ct_ctx *c, const ct_node *at, const char *what, ct_val v)
{
    if (v.t == V_STR)
        return 0;
    if (v.t == V_UNDEF)
        return ct_undefined(c, at, v);
    return ct_fail(c, at, "%s: expected a string, got %s", what, ct_type_name(v));
}

int ct_case(ct_ctx *c, const ct_node *at, ct_val s, int mode, ct_val *out)
{
    /* mode 0 lower, 1 upper, 2 capitalize, 3 title (ASCII letters only) */
    char *d = ct_new(c, at, s.u.s.n + 1);
    if (!d)
        return -1;
    int prev_alpha = 0;
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.p[i];
        int up = mode == 1 || (mode == 2 && i == 0) || (mode == 3 && !prev_alpha);
        if (up && ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 32);
        else if (!up && ch >= 'A' && ch <= 'Z')
            ch = (char)(ch + 32);
        d[i] = ch;
        prev_alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                     ((unsigned char)ch >= 0x80);
    }
    *out = ct_str(d, s.u.s.n);
    return 0;
}

int ct_replace(ct_ctx *c, const ct_node *at, ct_val s, ct_val old, ct_val new_, long long count,
                   ct_val *out)
{
    sbuf b = {0};
    size_t i = 0;
    long long done = 0;
    int rc = 0;
    if (old.u.s.n == 0) { /* Python: between every code point */
        size_t k = 0;
        while (rc == 0 && (count < 0 || done < count) && k <= s.u.s.n) {
            rc = sb_put(c, at, &b, new_.u.s.p, new_.u.s.n);
            done++;
            if (k == s.u.s.n) {
                k++;
                break;
            }
            size_t l = 1;
            while (k + l < s.u.s.n && ((unsigned char)s.u.s.p[k + l] & 0xC0) == 0x80)
                l++;
            if (rc == 0)
                rc = sb_put(c, at, &b, s.u.s.p + k, l);
            k += l;
        }
        if (rc == 0 && k < s.u.s.n)
            rc = sb_put(c, at, &b, s.u.s.p + k, s.u.s.n - k);
    } else {
        while (rc == 0 && i < s.u.s.n) {
            if ((count < 0 || done < count) && i + old.u.s.n <= s.u.s.n &&
                memcmp(s.u.s.p + i, old.u.s.p, old.u.s.n) == 0) {
                rc = sb_put(c, at, &b, new_.u.s.p, new_.u.s.n);
                i += old.u.s.n;
                done++;
            } else {
                rc = sb_putc(c, at, &b, s.u.s.p[i++]);
            }
        }
    }
    if (rc < 0) {
        free(b.p);
        return -1;
    }
    return sb_take(c, at, &b, out);
}

/* Python's str.split(sep, maxsplit) */
int ct_split(ct_ctx *c, const ct_node *at, ct_val s, const ct_val *sep, long long maxsplit,
                 ct_val *out)
{
    size_t cap = 8, n = 0;
    ct_val *parts = ct_new(c, at, cap * sizeof *parts);
    if (!parts)
        return -1;
    const char *p = s.u.s.p;
    size_t len = s.u.s.n, i = 0, l;
#define PUSH(a, b)                                                        \
    do {                                                                  \
        if (n == cap) {                                                   \
            ct_val *np = ct_new(c, at, 2 * cap * sizeof *np);             \
            if (!np)                                                      \
                return -1;                                                \
            memcpy(np, parts, n * sizeof *np);                            \
            parts = np;                                                   \
            cap *= 2;                                                     \
        }                                                                 \
        parts[n++] = ct_str(p + (a), (b) - (a));                          \
    } while (0)
    if (!sep) {
        while (i < len) {
            while (i < len && ct_space_at(p + i, len - i, &l))
                i += l;
            if (i >= len)
                break;
            if (maxsplit >= 0 && (long long)n >= maxsplit) {
                size_t e = len;
                while (e > i) { /* the rest, right-stripped */
                    size_t st = e - 1;
                    while (st > i && ((unsigned char)p[st] & 0xC0) == 0x80)
                        st--;
                    if (!ct_space_at(p + st, e - st, &l))
                        break;
                    e = st;
                }
                PUSH(i, e);
                break;
            }
            size_t st = i;
            while (i < len && !ct_space_at(p + i, len - i, &l))
                i += l;
            PUSH(st, i);
        }
    } else {
        if (sep->u.s.n == 0)
            return ct_fail(c, at, "split: empty separator");
        size_t st = 0;
        while (i + sep->u.s.n <= len) {
            if ((maxsplit < 0 || (long long)n < maxsplit) &&
                memcmp(p + i, sep->u.s.p, sep->u.s.n) == 0) {
                PUSH(st, i);
                i += sep->u.s.n;
                st = i;
            } else {
                i++;
            }
        }
        PUSH(st, len);
    }
#undef PUSH
    ct_list *lst = ct_new(c, at, sizeof *lst);
    if (!lst)
        return -1;
    lst->n = n;
    lst->v = parts;
    *out = ct_list_val(lst);
    return 0;
}
