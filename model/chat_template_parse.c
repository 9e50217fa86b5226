/* chat_template_parse.c: Jinja source -> tree, with jinja2's lexer rules for whitespace as
 * transformers configures it (trim_blocks, lstrip_blocks, no keep_trailing_newline).
 *
 * The grammar is jinja2's (parser.py), precedence from loose to tight: "x if c else y",
 * or, and, not, comparisons and in / not in, + -, ~, * / // %, **, unary - +, then
 * postfix .attr [item] [a:b:c] (call) with filters |f and tests "is [not] t". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_impl.h"

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

typedef enum { T_END_TAG, T_NAME, T_INT, T_FLOAT, T_STR, T_OP, T_EOF } tok_kind;

typedef struct {
    tok_kind kind;
    size_t start, end;   /* source bytes of the token */
    const char *str;     /* T_NAME, T_STR (decoded, in the arena), T_OP (static) */
    size_t len;
    long long i;
    double f;
    char sign;           /* T_END_TAG: '-', '+' or 0 */
} tok;

typedef struct {
    chat_template *t;
    const char *s;
    size_t n, pos;       /* pos: just after the current token */
    int tag;             /* '%' or '{': the kind of tag being read */
    tok tk;              /* the current token */
    int depth;
    int brackets;        /* open ( [ {: a tag's end is not recognised inside them, as in jinja2 */
    int strip_next;      /* the last tag ended in '-': strip the whitespace that follows */
    int line_starting;   /* the last tag ended in a newline (lstrip_blocks' rule) */
    char *err;
    size_t errlen;
} parser;

static int fail(parser *p, size_t pos, const char *fmt, ...)
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

static int oom(parser *p)
{
    return fail(p, p->tk.start, "out of memory compiling the template");
}

static char *dup_n(parser *p, const char *s, size_t n)
{
    char *d = ct_alloc(&p->t->arena, n + 1);
    if (d)
        memcpy(d, s, n);
    return d;
}

static int is_space(char c)
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
        return fail(p, i, "unterminated string literal");
    char *d = ct_alloc(&p->t->arena, j - i + 1);
    if (!d)
        return oom(p);
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
                    return fail(p, k - 1, "truncated \\%c escape in a string literal", e);
                v = v * 16 + (unsigned long)hv;
            }
            if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
                return fail(p, k - 1, "\\%c escape outside Unicode scalar values", e);
            k += (size_t)nd;
            if (o + 4 > j - i) /* "\x41" is 4 bytes for 1: only \U00xxxxxx could outgrow */
                return fail(p, k, "escape too long");
            put_utf8(d, &o, v);
        } else if (e == 'N') {
            return fail(p, k - 1, "\\N{...} escapes are not supported");
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
static int lex(parser *p)
{
    size_t i = p->pos;
    while (i < p->n && is_space(p->s[i]))
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
        if (!(p->tk.str = dup_n(p, s, j)))
            return oom(p);
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
            return fail(p, i, "number literal too long");
        char *end;
        if (flt) {
            p->tk.kind = T_FLOAT;
            p->tk.f = strtod(buf, &end);
        } else {
            p->tk.kind = T_INT;
            p->tk.i = strtoll(buf, &end, 10);
            if (b > 18)
                return fail(p, i, "integer literal out of range");
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
                    return fail(p, i, "unexpected '!'");
                return fail(p, i, "unexpected character '%c' in a tag", s[0]);
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

static int is_op(const parser *p, const char *op)
{
    return p->tk.kind == T_OP && strcmp(p->tk.str, op) == 0;
}
static int is_name(const parser *p, const char *name)
{
    return p->tk.kind == T_NAME && strcmp(p->tk.str, name) == 0;
}
static const char *tok_desc(const parser *p)
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
static int expect_op(parser *p, const char *op)
{
    if (!is_op(p, op))
        return fail(p, p->tk.start, "expected '%s', found '%s'", op, tok_desc(p));
    return lex(p);
}

static ct_node *mk(parser *p, ct_kind kind, size_t pos)
{
    ct_node *nd = ct_alloc(&p->t->arena, sizeof *nd);
    if (!nd) {
        oom(p);
        return NULL;
    }
    nd->kind = kind;
    nd->pos = pos;
    return nd;
}

static ct_node *parse_expr(parser *p);

/* Grows an argument or item array by one. */
static int push_kid(parser *p, ct_node *nd, ct_node *kid, const char *kw, size_t *cap)
{
    if (nd->n_kids == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        ct_node **k = ct_alloc(&p->t->arena, nc * sizeof *k);
        const char **w = ct_alloc(&p->t->arena, nc * sizeof *w);
        if (!k || !w)
            return oom(p);
        if (nd->n_kids) {
            memcpy(k, nd->kids, nd->n_kids * sizeof *k);
            memcpy(w, nd->kw, nd->n_kids * sizeof *w);
        }
        nd->kids = k;
        nd->kw = w;
        *cap = nc;
    }
    nd->kids[nd->n_kids] = kid;
    nd->kw[nd->n_kids++] = kw;
    return 0;
}

/* "(" args ")" with p->tk on "(": positional, then name=value. */
static int parse_args(parser *p, ct_node *nd)
{
    size_t cap = 0;
    if (lex(p) < 0)
        return -1;
    while (!is_op(p, ")")) {
        if (nd->n_kids && expect_op(p, ",") < 0)
            return -1;
        if (is_op(p, ")"))
            break;
        const char *kw = NULL;
        if (p->tk.kind == T_NAME) {
            size_t save = p->pos;
            tok t0 = p->tk;
            if (lex(p) < 0)
                return -1;
            if (is_op(p, "=")) {
                kw = t0.str;
                if (lex(p) < 0)
                    return -1;
            } else {
                p->pos = save;
                p->tk = t0;
            }
        }
        if (!kw && nd->n_kids && nd->kw[nd->n_kids - 1])
            return fail(p, p->tk.start, "positional argument after a keyword argument");
        ct_node *a = parse_expr(p);
        if (!a || push_kid(p, nd, a, kw, &cap) < 0)
            return -1;
    }
    return lex(p);
}

static ct_node *parse_primary(parser *p)
{
    size_t at = p->tk.start;
    ct_node *nd;
    switch (p->tk.kind) {
    case T_NAME: {
        const char *s = p->tk.str;
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "false") || !strcmp(s, "False")) {
            if (!(nd = mk(p, N_LIT, at)))
                return NULL;
            nd->lit.t = V_BOOL;
            nd->lit.u.b = s[0] == 't' || s[0] == 'T';
        } else if (!strcmp(s, "none") || !strcmp(s, "None")) {
            if (!(nd = mk(p, N_LIT, at)))
                return NULL;
            nd->lit.t = V_NONE;
        } else {
            if (!(nd = mk(p, N_NAME, at)))
                return NULL;
            nd->name = s;
        }
        return lex(p) < 0 ? NULL : nd;
    }
    case T_STR: {
        if (!(nd = mk(p, N_LIT, at)))
            return NULL;
        nd->lit.t = V_STR;
        nd->lit.u.s.p = p->tk.str;
        nd->lit.u.s.n = p->tk.len;
        if (lex(p) < 0)
            return NULL;
        while (p->tk.kind == T_STR) { /* adjacent literals join, as in Python */
            char *j = ct_alloc(&p->t->arena, nd->lit.u.s.n + p->tk.len + 1);
            if (!j) {
                oom(p);
                return NULL;
            }
            memcpy(j, nd->lit.u.s.p, nd->lit.u.s.n);
            memcpy(j + nd->lit.u.s.n, p->tk.str, p->tk.len);
            nd->lit.u.s.p = j;
            nd->lit.u.s.n += p->tk.len;
            if (lex(p) < 0)
                return NULL;
        }
        return nd;
    }
    case T_INT:
    case T_FLOAT:
        if (!(nd = mk(p, N_LIT, at)))
            return NULL;
        if (p->tk.kind == T_INT) {
            nd->lit.t = V_INT;
            nd->lit.u.i = p->tk.i;
        } else {
            nd->lit.t = V_FLOAT;
            nd->lit.u.f = p->tk.f;
        }
        return lex(p) < 0 ? NULL : nd;
    case T_OP:
        if (is_op(p, "(")) {
            if (lex(p) < 0 || !(nd = parse_expr(p)))
                return NULL;
            if (is_op(p, ","))
                return fail(p, p->tk.start, "tuples are not supported"), NULL;
            return expect_op(p, ")") < 0 ? NULL : nd;
        }
        if (is_op(p, "[") || is_op(p, "{")) {
            int dict = is_op(p, "{");
            size_t cap = 0;
            if (!(nd = mk(p, dict ? N_DICT : N_LIST, at)) || lex(p) < 0)
                return NULL;
            const char *close = dict ? "}" : "]";
            while (!is_op(p, close)) {
                if (nd->n_kids && expect_op(p, ",") < 0)
                    return NULL;
                if (is_op(p, close))
                    break;
                ct_node *k = parse_expr(p);
                if (!k || push_kid(p, nd, k, NULL, &cap) < 0)
                    return NULL;
                if (dict) {
                    if (expect_op(p, ":") < 0 || !(k = parse_expr(p)) ||
                        push_kid(p, nd, k, NULL, &cap) < 0)
                        return NULL;
                }
            }
            return lex(p) < 0 ? NULL : nd;
        }
        break;
    default:
        break;
    }
    fail(p, at, "unexpected '%s' where a value was expected", tok_desc(p));
    return NULL;
}

static ct_node *parse_unary(parser *p);

/* filters and tests after a value: |name(args) and is [not] name [arg] */
static ct_node *parse_filters(parser *p, ct_node *nd)
{
    for (;;) {
        if (is_op(p, "|")) {
            if (lex(p) < 0)
                return NULL;
            if (p->tk.kind != T_NAME)
                return fail(p, p->tk.start, "expected a filter name after '|'"), NULL;
            ct_node *f = mk(p, N_FILTER, p->tk.start);
            if (!f)
                return NULL;
            f->name = p->tk.str;
            f->a = nd;
            if (lex(p) < 0 || (is_op(p, "(") && parse_args(p, f) < 0))
                return NULL;
            nd = f;
        } else if (is_name(p, "is")) {
            ct_node *t = mk(p, N_TEST, p->tk.start);
            if (!t || lex(p) < 0)
                return NULL;
            if (is_name(p, "not")) {
                t->op = 1;
                if (lex(p) < 0)
                    return NULL;
            }
            if (p->tk.kind != T_NAME)
                return fail(p, p->tk.start, "expected a test name after 'is'"), NULL;
            t->name = p->tk.str;
            t->a = nd;
            if (lex(p) < 0)
                return NULL;
            if (is_op(p, "(")) {
                if (parse_args(p, t) < 0)
                    return NULL;
            } else if (p->tk.kind == T_STR || p->tk.kind == T_INT || p->tk.kind == T_FLOAT ||
                       (p->tk.kind == T_NAME && !is_name(p, "and") && !is_name(p, "or") &&
                        !is_name(p, "else") && !is_name(p, "if") && !is_name(p, "is") &&
                        !is_name(p, "in") && !is_name(p, "not"))) {
                /* one argument without parentheses: "is divisibleby 3", "is sameas x" */
                size_t cap = 0;
                ct_node *a = parse_primary(p);
                if (!a || push_kid(p, t, a, NULL, &cap) < 0)
                    return NULL;
            }
            nd = t;
        } else {
            return nd;
        }
    }
}

static ct_node *parse_postfix(parser *p, ct_node *nd)
{
    for (;;) {
        size_t at = p->tk.start;
        if (is_op(p, ".")) {
            if (lex(p) < 0)
                return NULL;
            ct_node *a;
            if (p->tk.kind == T_NAME) {
                if (!(a = mk(p, N_ATTR, at)))
                    return NULL;
                a->name = p->tk.str;
            } else if (p->tk.kind == T_INT) {
                ct_node *k = mk(p, N_LIT, p->tk.start);
                if (!k || !(a = mk(p, N_ITEM, at)))
                    return NULL;
                k->lit.t = V_INT;
                k->lit.u.i = p->tk.i;
                a->b = k;
            } else {
                return fail(p, p->tk.start, "expected an attribute name after '.'"), NULL;
            }
            a->a = nd;
            nd = a;
            if (lex(p) < 0)
                return NULL;
        } else if (is_op(p, "[")) {
            ct_node *parts[3] = {NULL, NULL, NULL};
            int colons = 0;
            if (lex(p) < 0)
                return NULL;
            for (;;) {
                if (is_op(p, ":")) {
                    if (++colons > 2)
                        return fail(p, p->tk.start, "too many ':' in a slice"), NULL;
                    if (lex(p) < 0)
                        return NULL;
                } else if (is_op(p, "]")) {
                    break;
                } else {
                    if (parts[colons])
                        return fail(p, p->tk.start, "expected ']'"), NULL;
                    if (!(parts[colons] = parse_expr(p)))
                        return NULL;
                }
            }
            if (lex(p) < 0)
                return NULL;
            ct_node *s;
            if (colons == 0) {
                if (!parts[0])
                    return fail(p, at, "empty subscript"), NULL;
                if (!(s = mk(p, N_ITEM, at)))
                    return NULL;
                s->b = parts[0];
            } else {
                if (!(s = mk(p, N_SLICE, at)) ||
                    !(s->kids = ct_alloc(&p->t->arena, 3 * sizeof *s->kids)))
                    return oom(p), NULL;
                memcpy(s->kids, parts, sizeof parts);
                s->n_kids = 3;
            }
            s->a = nd;
            nd = s;
        } else if (is_op(p, "(")) {
            ct_node *c = mk(p, N_CALL, at);
            if (!c)
                return NULL;
            c->a = nd;
            if (parse_args(p, c) < 0)
                return NULL;
            nd = c;
        } else {
            return nd;
        }
    }
}

static ct_node *parse_unary(parser *p)
{
    if (++p->depth > CHAT_MAX_NESTING)
        return fail(p, p->tk.start, "expression nested more than %d deep", CHAT_MAX_NESTING), NULL;
    ct_node *nd;
    size_t at = p->tk.start;
    if (is_op(p, "-") || is_op(p, "+")) {
        int neg = is_op(p, "-");
        if (lex(p) < 0)
            return NULL;
        ct_node *x = parse_unary(p);
        if (!x || !(nd = mk(p, neg ? N_NEG : N_POS, at)))
            return NULL;
        nd->a = x;
    } else {
        if (!(nd = parse_primary(p)) || !(nd = parse_postfix(p, nd)))
            return NULL;
    }
    p->depth--;
    return parse_filters(p, nd);
}

static ct_node *binop(parser *p, ct_op op, ct_node *a, ct_node *b, size_t at)
{
    ct_node *nd = mk(p, N_BINOP, at);
    if (nd) {
        nd->op = (int)op;
        nd->a = a;
        nd->b = b;
    }
    return nd;
}

static ct_node *parse_pow(parser *p)
{
    ct_node *a = parse_unary(p);
    while (a && is_op(p, "**")) {
        size_t at = p->tk.start;
        ct_node *b;
        if (lex(p) < 0 || !(b = parse_unary(p)))
            return NULL;
        a = binop(p, OP_POW, a, b, at);
    }
    return a;
}

static ct_node *parse_mul(parser *p)
{
    ct_node *a = parse_pow(p);
    while (a && (is_op(p, "*") || is_op(p, "/") || is_op(p, "//") || is_op(p, "%"))) {
        size_t at = p->tk.start;
        ct_op op = is_op(p, "*") ? OP_MUL : is_op(p, "/") ? OP_DIV : is_op(p, "//") ? OP_FLOORDIV : OP_MOD;
        ct_node *b;
        if (lex(p) < 0 || !(b = parse_pow(p)))
            return NULL;
        a = binop(p, op, a, b, at);
    }
    return a;
}

static ct_node *parse_concat(parser *p)
{
    ct_node *a = parse_mul(p);
    while (a && is_op(p, "~")) {
        size_t at = p->tk.start;
        ct_node *b;
        if (lex(p) < 0 || !(b = parse_mul(p)))
            return NULL;
        a = binop(p, OP_CONCAT, a, b, at);
    }
    return a;
}

static ct_node *parse_add(parser *p)
{
    ct_node *a = parse_concat(p);
    while (a && (is_op(p, "+") || is_op(p, "-"))) {
        size_t at = p->tk.start;
        ct_op op = is_op(p, "+") ? OP_ADD : OP_SUB;
        ct_node *b;
        if (lex(p) < 0 || !(b = parse_concat(p)))
            return NULL;
        a = binop(p, op, a, b, at);
    }
    return a;
}

static ct_node *parse_compare(parser *p)
{
    int chained = 0;
    ct_node *a = parse_add(p);
    while (a) {
        size_t at = p->tk.start;
        ct_op op;
        if (is_op(p, "==")) op = OP_EQ;
        else if (is_op(p, "!=")) op = OP_NE;
        else if (is_op(p, "<")) op = OP_LT;
        else if (is_op(p, "<=")) op = OP_LE;
        else if (is_op(p, ">")) op = OP_GT;
        else if (is_op(p, ">=")) op = OP_GE;
        else if (is_name(p, "in")) op = OP_IN;
        else if (is_name(p, "not")) {
            size_t save = p->pos;
            tok t0 = p->tk;
            if (lex(p) < 0)
                return NULL;
            if (!is_name(p, "in")) {
                p->pos = save;
                p->tk = t0;
                return a;
            }
            op = OP_NOTIN;
        } else
            return a;
        ct_node *b;
        if (lex(p) < 0 || !(b = parse_add(p)))
            return NULL;
        if (chained++)
            return fail(p, at, "chained comparisons (a < b < c) are not supported"), NULL;
        a = binop(p, op, a, b, at);
    }
    return a;
}

static ct_node *parse_not(parser *p)
{
    if (is_name(p, "not")) {
        size_t at = p->tk.start;
        if (++p->depth > CHAT_MAX_NESTING)
            return fail(p, at, "expression nested more than %d deep", CHAT_MAX_NESTING), NULL;
        ct_node *x, *nd;
        if (lex(p) < 0 || !(x = parse_not(p)) || !(nd = mk(p, N_NOT, at)))
            return NULL;
        p->depth--;
        nd->a = x;
        return nd;
    }
    return parse_compare(p);
}

static ct_node *parse_and(parser *p)
{
    ct_node *a = parse_not(p);
    while (a && is_name(p, "and")) {
        size_t at = p->tk.start;
        ct_node *b, *nd;
        if (lex(p) < 0 || !(b = parse_not(p)) || !(nd = mk(p, N_AND, at)))
            return NULL;
        nd->a = a;
        nd->b = b;
        a = nd;
    }
    return a;
}

static ct_node *parse_or(parser *p)
{
    ct_node *a = parse_and(p);
    while (a && is_name(p, "or")) {
        size_t at = p->tk.start;
        ct_node *b, *nd;
        if (lex(p) < 0 || !(b = parse_and(p)) || !(nd = mk(p, N_OR, at)))
            return NULL;
        nd->a = a;
        nd->b = b;
        a = nd;
    }
    return a;
}

static ct_node *parse_expr(parser *p)
{
    if (++p->depth > CHAT_MAX_NESTING)
        return fail(p, p->tk.start, "expression nested more than %d deep", CHAT_MAX_NESTING), NULL;
    ct_node *a = parse_or(p);
    while (a && is_name(p, "if")) {
        ct_node *nd = mk(p, N_COND, p->tk.start);
        if (!nd || lex(p) < 0 || !(nd->c = parse_or(p)))
            return NULL;
        nd->a = a;
        if (is_name(p, "else")) {
            if (lex(p) < 0 || !(nd->b = parse_expr(p)))
                return NULL;
        }
        a = nd;
    }
    p->depth--;
    return a;
}

/* Ends a tag: p->tk must be its end. Applies '-' and trim_blocks. */
static int close_tag(parser *p)
{
    if (p->tk.kind != T_END_TAG)
        return fail(p, p->tk.start, "expected end of tag, found '%s'", tok_desc(p));
    p->strip_next = p->tk.sign == '-';
    if (p->tag == '%' && !p->tk.sign && p->pos < p->n && p->s[p->pos] == '\n')
        p->pos++;
    p->line_starting = p->s[p->pos - 1] == '\n';
    return 0;
}

static const char *const refused_tags[] = {
    "macro", "call", "filter", "raw", "include", "import", "from", "extends", "block",
    "with", "autoescape", "do", "generation", NULL};

static int parse_body(parser *p, const char *const *ends, const char **found, ct_node **out);

/* Appends a statement to a list being built. */
static void append(ct_node ***tail, ct_node *nd)
{
    **tail = nd;
    *tail = &nd->next;
}

static int parse_if(parser *p, size_t at, ct_node **out)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    ct_node *nd = mk(p, N_IF, at);
    const char *found;
    if (!nd || lex(p) < 0 || !(nd->c = parse_expr(p)) || close_tag(p) < 0 ||
        parse_body(p, ends, &found, &nd->a) < 0)
        return -1;
    *out = nd;
    if (!strcmp(found, "elif"))
        return parse_if(p, p->tk.start, &nd->b);
    if (!strcmp(found, "else")) {
        static const char *const end[] = {"endif", NULL};
        if (lex(p) < 0 || close_tag(p) < 0 || parse_body(p, end, &found, &nd->b) < 0)
            return -1;
    }
    return lex(p) < 0 ? -1 : close_tag(p);
}

static int parse_for(parser *p, size_t at, ct_node **out)
{
    static const char *const ends[] = {"else", "endfor", NULL};
    ct_node *nd = mk(p, N_FOR, at);
    const char *found;
    if (!nd || lex(p) < 0)
        return -1;
    if (p->tk.kind != T_NAME)
        return fail(p, p->tk.start, "expected a loop variable after 'for'");
    nd->name = p->tk.str;
    if (lex(p) < 0)
        return -1;
    if (is_op(p, ",")) {
        if (lex(p) < 0)
            return -1;
        if (p->tk.kind != T_NAME)
            return fail(p, p->tk.start, "expected a second loop variable after ','");
        nd->name2 = p->tk.str;
        if (lex(p) < 0)
            return -1;
        if (is_op(p, ","))
            return fail(p, p->tk.start, "more than two loop variables are not supported");
    }
    if (!is_name(p, "in"))
        return fail(p, p->tk.start, "expected 'in' in a for loop");
    if (lex(p) < 0 || !(nd->c = parse_or(p)))
        return -1;
    if (is_name(p, "if"))
        return fail(p, p->tk.start, "loop filters (for x in y if c) are not supported");
    if (is_name(p, "recursive"))
        return fail(p, p->tk.start, "recursive loops are not supported");
    if (close_tag(p) < 0 || parse_body(p, ends, &found, &nd->a) < 0)
        return -1;
    *out = nd;
    if (!strcmp(found, "else")) {
        static const char *const end[] = {"endfor", NULL};
        if (lex(p) < 0 || close_tag(p) < 0 || parse_body(p, end, &found, &nd->b) < 0)
            return -1;
    }
    return lex(p) < 0 ? -1 : close_tag(p);
}

static int parse_set(parser *p, size_t at, ct_node **out)
{
    if (lex(p) < 0)
        return -1;
    if (p->tk.kind != T_NAME)
        return fail(p, p->tk.start, "expected a name after 'set'");
    ct_node *nd = mk(p, N_SET, at);
    if (!nd)
        return -1;
    nd->name = p->tk.str;
    if (lex(p) < 0)
        return -1;
    if (is_op(p, ".")) {
        nd->kind = N_SET_ATTR;
        nd->name2 = nd->name;
        if (lex(p) < 0)
            return -1;
        if (p->tk.kind != T_NAME)
            return fail(p, p->tk.start, "expected an attribute name after '.'");
        nd->name = p->tk.str;
        if (lex(p) < 0)
            return -1;
    }
    if (is_op(p, ","))
        return fail(p, p->tk.start, "set with several targets (set a, b = ...) is not supported");
    if (p->tk.kind == T_END_TAG)
        return fail(p, p->tk.start, "block set ({%% set x %%}...{%% endset %%}) is not supported");
    if (expect_op(p, "=") < 0 || !(nd->a = parse_expr(p)))
        return -1;
    *out = nd;
    return close_tag(p);
}

/* Statements until a {% X %} with X in ends (then *found = X, p->tk on X, the tag open). */
static int parse_body(parser *p, const char *const *ends, const char **found, ct_node **out)
{
    ct_node **tail = out;
    *out = NULL;
    if (++p->depth > CHAT_MAX_NESTING)
        return fail(p, p->pos, "blocks nested more than %d deep", CHAT_MAX_NESTING);
    for (;;) {
        size_t q = p->pos;
        while (q + 1 < p->n && !(p->s[q] == '{' && (p->s[q + 1] == '{' || p->s[q + 1] == '%' ||
                                                  p->s[q + 1] == '#')))
            q++;
        if (q + 1 >= p->n)
            q = p->n;
        size_t a = p->pos, b = q;
        if (p->strip_next)
            while (a < b && is_space(p->s[a]))
                a++;
        p->strip_next = 0;
        char kind = q < p->n ? p->s[q + 1] : 0;
        char sign = q + 2 < p->n && (p->s[q + 2] == '-' || p->s[q + 2] == '+') ? p->s[q + 2] : 0;
        if (kind && sign == '-') {
            while (b > a && is_space(p->s[b - 1]))
                b--;
        } else if ((kind == '%' || kind == '#') && sign != '+') {
            size_t l = b;
            while (l > a && p->s[l - 1] != '\n')
                l--;
            int blank = 1;
            for (size_t k = l; k < b; k++)
                if (!is_space(p->s[k]))
                    blank = 0;
            if (blank && (l > a || p->line_starting))
                b = l;
        }
        if (b > a) {
            ct_node *t = mk(p, N_TEXT, a);
            if (!t)
                return -1;
            t->lit.t = V_STR;
            t->lit.u.s.p = p->s + a;
            t->lit.u.s.n = b - a;
            append(&tail, t);
        }
        if (!kind) {
            if (ends) {
                int last = 0;
                while (ends[last + 1])
                    last++;
                return fail(p, p->n, "missing {%% %s %%}", ends[last]);
            }
            p->depth--;
            return 0;
        }
        p->pos = q + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            const char *e = NULL;
            for (size_t k = p->pos; k + 1 < p->n; k++)
                if (p->s[k] == '#' && p->s[k + 1] == '}') {
                    e = p->s + k;
                    break;
                }
            if (!e)
                return fail(p, q, "unterminated comment");
            size_t end = (size_t)(e - p->s) + 2;
            int minus = e > p->s + p->pos && e[-1] == '-';
            p->strip_next = minus;
            if (!minus && !(e > p->s + p->pos && e[-1] == '+') && end < p->n && p->s[end] == '\n')
                end++;
            p->pos = end;
            p->line_starting = p->s[end - 1] == '\n';
            continue;
        }
        p->tag = kind;
        if (lex(p) < 0)
            return -1;
        if (kind == '{') {
            ct_node *o = mk(p, N_OUTPUT, q);
            if (!o || !(o->a = parse_expr(p)) || close_tag(p) < 0)
                return -1;
            append(&tail, o);
            continue;
        }
        if (p->tk.kind != T_NAME)
            return fail(p, p->tk.start, "expected a tag name after '{%%'");
        const char *kw = p->tk.str;
        size_t at = p->tk.start;
        for (int i = 0; ends && ends[i]; i++)
            if (!strcmp(kw, ends[i])) {
                *found = ends[i];
                p->depth--;
                return 0;
            }
        ct_node *st = NULL;
        if (!strcmp(kw, "if")) {
            if (parse_if(p, at, &st) < 0)
                return -1;
        } else if (!strcmp(kw, "for")) {
            if (parse_for(p, at, &st) < 0)
                return -1;
        } else if (!strcmp(kw, "set")) {
            if (parse_set(p, at, &st) < 0)
                return -1;
        } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
            if (!(st = mk(p, kw[0] == 'b' ? N_BREAK : N_CONTINUE, at)) || lex(p) < 0 ||
                close_tag(p) < 0)
                return -1;
        } else {
            for (int i = 0; refused_tags[i]; i++)
                if (!strcmp(kw, refused_tags[i]))
                    return fail(p, at, "the '%s' tag is not supported", kw);
            if (ends)
                return fail(p, at, "unexpected '%s' tag, expected '%s'", kw, ends[0]);
            return fail(p, at, "unknown tag '%s'", kw);
        }
        append(&tail, st);
    }
}

int chat_template_compile(chat_template **out, const char *src, size_t len, const char *name,
                          char *err, size_t errlen)
{
    *out = NULL;
    if (len > CHAT_MAX_SOURCE) {
        snprintf(err, errlen, "%s: template of %zu bytes, more than %zu", name, len, CHAT_MAX_SOURCE);
        return -1;
    }
    if (memchr(src, 0, len)) {
        snprintf(err, errlen, "%s: template holds a NUL byte", name);
        return -1;
    }
    chat_template *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name)) || !(t->src = malloc(len + 1))) {
        if (t)
            free(t->name);
        free(t);
        snprintf(err, errlen, "%s: out of memory", name);
        return -1;
    }
    t->arena.limit = CHAT_MAX_MEMORY;
    /* jinja2 turns \r\n and \r into \n and drops one trailing newline */
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            t->src[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            t->src[n++] = src[i];
        }
    }
    if (n && t->src[n - 1] == '\n')
        n--;
    t->src[n] = 0;
    t->len = n;
    parser p = {.t = t, .s = t->src, .n = n, .line_starting = 1, .err = err, .errlen = errlen};
    if (parse_body(&p, NULL, NULL, &t->body) < 0) {
        chat_template_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void chat_template_free(chat_template *t)
{
    if (!t)
        return;
    ct_arena_free(&t->arena);
    free(t->name);
    free(t->src);
    free(t);
}
