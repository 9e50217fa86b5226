/* chat_template_lex.c: the arena, line:column, and the tokens inside a template's tags
 * (names, numbers, strings with Python's escapes, operators, the tag's end), as jinja2's
 * lexer reads them. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_lex.h"
struct ct_block {
    ct_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *ct_alloc(ct_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0)
        n = 16;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit)
            return NULL;
        ct_block *b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

void ct_arena_free(ct_arena *a)
{
    for (ct_block *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
    a->total = 0;
}

void ct_where(const chat_template *t, size_t pos, char *buf, size_t n)
{
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < t->len; i++) {
        if (t->src[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)t->src[i] & 0xC0) != 0x80) {
            col++;
        }
    }
    snprintf(buf, n, "%s:%d:%d: ", t->name, line, col);
}


int ct_pfail(parser *p, size_t pos, const char *fmt, ...)
{
    char where[256];
    ct_where(p->t, pos, where, sizeof where);
    size_t w = strlen(where);
    snprintf(p->err, p->errlen, "%s", where);
    if (w < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + w, p->errlen - w, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int ct_poom(parser *p)
{
    return ct_pfail(p, p->tk.start, "out of memory compiling the template");
}

char *ct_dup_n(parser *p, const char *s, size_t n)
{
    char *d = ct_alloc(&p->t->arena, n + 1);
    if (d)
        memcpy(d, s, n);
    return d;
}

int ct_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
static int is_name0(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static void put_utf8(char *d, size_t *o, unsigned long c)
{
    if (c < 0x80) {
        d[(*o)++] = (char)c;
    } else if (c < 0x800) {
        d[(*o)++] = (char)(0xC0 | (c >> 6));
        d[(*o)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        d[(*o)++] = (char)(0xE0 | (c >> 12));
        d[(*o)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        d[(*o)++] = (char)(0x80 | (c & 0x3F));
    } else {
        d[(*o)++] = (char)(0xF0 | (c >> 18));
        d[(*o)++] = (char)(0x80 | ((c >> 12) & 0x3F));
        d[(*o)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        d[(*o)++] = (char)(0x80 | (c & 0x3F));
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string literal from s[i] (the quote): Python's unicode-escape rules, as jinja2 decodes. */
static int lex_string(parser *p, size_t i)
{
    char q = p->s[i];
    size_t j = i + 1;
    while (j < p->n && p->s[j] != q) {
        if (p->s[j] == '\\' && j + 1 < p->n)
            j++;
        j++;
    }
    if (j >= p->n)
        return ct_pfail(p, i, "unterminated string literal");
    char *d = ct_alloc(&p->t->arena, j - i + 1);
    if (!d)
        return ct_poom(p);
    size_t o = 0;
    for (size_t k = i + 1; k < j; k++) {
        char c = p->s[k];
        if (c != '\\') {
            d[o++] = c;
            continue;
        }
        char e = p->s[++k];
        const char *simple = "\\\\''\"\"a\ab\bf\fn\nr\rt\tv\v";
        const char *m = NULL;
        for (const char *x = simple; *x; x += 2)
            if (*x == e) {
                m = x;
                break;
            }
        if (m) {
            d[o++] = m[1];
        } else if (e == '\n') {
            /* a backslash-newline continues the line */
        } else if (e >= '0' && e <= '7') {
            unsigned v = 0;
            int nd = 0;
            while (nd < 3 && k < j && p->s[k] >= '0' && p->s[k] <= '7') {
                v = v * 8 + (unsigned)(p->s[k++] - '0');
                nd++;
            }
            k--;
            put_utf8(d, &o, v);
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            unsigned long v = 0;
            for (int h = 0; h < nd; h++) {
                int hv = k + 1 + (size_t)h < j ? hexval(p->s[k + 1 + h]) : -1;
                if (hv < 0)
                    return ct_pfail(p, k - 1, "truncated \\%c escape in a string literal", e);
                v = v * 16 + (unsigned long)hv;
            }
            if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
                return ct_pfail(p, k - 1, "\\%c escape outside Unicode scalar values", e);
            k += (size_t)nd;
            if (o + 4 > j - i) /* "\x41" is 4 bytes for 1: only \U00xxxxxx could outgrow */
                return ct_pfail(p, k, "escape too long");
            put_utf8(d, &o, v);
        } else if (e == 'N') {
            return ct_pfail(p, k - 1, "\\N{...} escapes are not supported");
        } else {
            d[o++] = '\\';
            d[o++] = e;
        }
    }
    p->tk.kind = T_STR;
    p->tk.str = d;
    p->tk.len = o;
    p->pos = j + 1;
    return 0;
}

static const char *const ops2[] = {"**", "//", "==", "!=", "<=", ">=", NULL};
static const char ops1[] = "+-*/%~<>()[]{},.:|=";

/* Reads the token at p->pos into p->tk. */
int ct_lex(parser *p)
{
    size_t i = p->pos;
    while (i < p->n && ct_is_space(p->s[i]))
        i++;
    memset(&p->tk, 0, sizeof p->tk);
    p->tk.start = i;
    if (i >= p->n) {
        p->tk.kind = T_EOF;
        p->pos = i;
        return 0;
    }
    const char *s = p->s + i;
    size_t left = p->n - i;
    char close = p->tag == '%' ? '%' : '}';
    for (int sign = 0; sign < 3 && p->brackets == 0; sign++) {
        size_t o = sign ? 1 : 0;
        if (sign && s[0] != (sign == 1 ? '-' : '+'))
            continue;
        if (sign == 2 && p->tag != '%')
            continue;
        if (left >= o + 2 && s[o] == close && s[o + 1] == '}') {
            p->tk.kind = T_END_TAG;
            p->tk.sign = sign == 1 ? '-' : sign == 2 ? '+' : 0;
            p->pos = i + o + 2;
            p->tk.end = p->pos;
            return 0;
        }
    }
    if (is_name0(s[0])) {
        size_t j = 1;
        while (j < left && (is_name0(s[j]) || is_digit(s[j])))
            j++;
        p->tk.kind = T_NAME;
        if (!(p->tk.str = ct_dup_n(p, s, j)))
            return ct_poom(p);
        p->tk.len = j;
        p->pos = i + j;
    } else if (is_digit(s[0])) {
        size_t j = 0;
        int flt = 0;
        while (j < left && (is_digit(s[j]) || s[j] == '_'))
            j++;
        if (j + 1 < left && s[j] == '.' && is_digit(s[j + 1])) {
            flt = 1;
            j++;
            while (j < left && is_digit(s[j]))
                j++;
        }
        if (j < left && (s[j] == 'e' || s[j] == 'E')) {
            size_t k = j + 1;
            if (k < left && (s[k] == '+' || s[k] == '-'))
                k++;
            if (k < left && is_digit(s[k])) {
                flt = 1;
                j = k;
                while (j < left && is_digit(s[j]))
                    j++;
            }
        }
        char buf[64];
        size_t b = 0;
        for (size_t k = 0; k < j && b + 1 < sizeof buf; k++)
            if (s[k] != '_')
                buf[b++] = s[k];
        buf[b] = 0;
        if (j >= sizeof buf)
            return ct_pfail(p, i, "number literal too long");
        char *end;
        if (flt) {
            p->tk.kind = T_FLOAT;
            p->tk.f = strtod(buf, &end);
        } else {
            p->tk.kind = T_INT;
            p->tk.i = strtoll(buf, &end, 10);
            if (b > 18)
                return ct_pfail(p, i, "integer literal out of range");
        }
        p->pos = i + j;
    } else if (s[0] == '\'' || s[0] == '"') {
        if (lex_string(p, i) < 0)
            return -1;
    } else {
        p->tk.kind = T_OP;
        for (int k = 0; ops2[k]; k++)
            if (left >= 2 && memcmp(s, ops2[k], 2) == 0) {
                p->tk.str = ops2[k];
                p->tk.len = 2;
            }
        if (!p->tk.str) {
            const char *m = strchr(ops1, s[0]);
            if (!m || !s[0]) {
                if (s[0] == '!')
                    return ct_pfail(p, i, "unexpected '!'");
                return ct_pfail(p, i, "unexpected character '%c' in a tag", s[0]);
            }
            static const char *const one[] = {"+", "-", "*", "/", "%", "~", "<", ">", "(", ")",
                                              "[", "]", "{", "}", ",", ".", ":", "|", "="};
            p->tk.str = one[m - ops1];
            p->tk.len = 1;
            if (strchr("([{", s[0]))
                p->brackets++;
            else if (strchr(")]}", s[0]) && p->brackets > 0)
                p->brackets--;
        }
        p->pos = i + p->tk.len;
    }
    p->tk.end = p->pos;
    return 0;
}

int ct_is_op(const parser *p, const char *op)
{
    return p->tk.kind == T_OP && strcmp(p->tk.str, op) == 0;
}
int ct_is_name(const parser *p, const char *name)
{
    return p->tk.kind == T_NAME && strcmp(p->tk.str, name) == 0;
}
const char *ct_tok_desc(const parser *p)
{
    switch (p->tk.kind) {
    case T_END_TAG: return "end of tag";
    case T_EOF: return "end of template";
    case T_NAME: return p->tk.str;
    case T_STR: return "string";
    case T_INT: case T_FLOAT: return "number";
    default: return p->tk.str;
    }
}
int ct_expect_op(parser *p, const char *op)
{
    if (!ct_is_op(p, op))
        return ct_pfail(p, p->tk.start, "expected '%s', found '%s'", op, ct_tok_desc(p));
    return ct_lex(p);
}

ct_node *ct_mk(parser *p, ct_kind kind, size_t pos)
{
    ct_node *nd = ct_alloc(&p->t->arena, sizeof *nd);
    if (!nd) {
        ct_poom(p);
        return NULL;
    }
    nd->kind = kind;
    nd->pos = pos;
    return nd;
}
