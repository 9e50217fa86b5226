/* chat_template_expr.c: expressions, with jinja2's grammar (parser.py); precedence from
 * loose to tight: "x if c else y", or, and, not, comparisons and in / not in, + -, ~,
 * * / // %, **, unary - +, then postfix .attr [item] [a:b:c] (call) with filters |f and
 * tests "is [not] t". */
#include <string.h>

#include "chat_template_lex.h"

/* Grows an argument or item array by one. */
static int push_kid(parser *p, ct_node *nd, ct_node *kid, const char *kw, size_t *cap)
{
    if (nd->n_kids == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        ct_node **k = ct_alloc(&p->t->arena, nc * sizeof *k);
        const char **w = ct_alloc(&p->t->arena, nc * sizeof *w);
        if (!k || !w)
            return ct_poom(p);
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
    if (ct_lex(p) < 0)
        return -1;
    while (!ct_is_op(p, ")")) {
        if (nd->n_kids && ct_expect_op(p, ",") < 0)
            return -1;
        if (ct_is_op(p, ")"))
            break;
        const char *kw = NULL;
        if (p->tk.kind == T_NAME) {
            size_t save = p->pos;
            tok t0 = p->tk;
            if (ct_lex(p) < 0)
                return -1;
            if (ct_is_op(p, "=")) {
                kw = t0.str;
                if (ct_lex(p) < 0)
                    return -1;
            } else {
                p->pos = save;
                p->tk = t0;
            }
        }
        if (!kw && nd->n_kids && nd->kw[nd->n_kids - 1])
            return ct_pfail(p, p->tk.start, "positional argument after a keyword argument");
        ct_node *a = ct_parse_expr(p);
        if (!a || push_kid(p, nd, a, kw, &cap) < 0)
            return -1;
    }
    return ct_lex(p);
}

static ct_node *parse_primary(parser *p)
{
    size_t at = p->tk.start;
    ct_node *nd;
    switch (p->tk.kind) {
    case T_NAME: {
        const char *s = p->tk.str;
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "false") || !strcmp(s, "False")) {
            if (!(nd = ct_mk(p, N_LIT, at)))
                return NULL;
            nd->lit.t = V_BOOL;
            nd->lit.u.b = s[0] == 't' || s[0] == 'T';
        } else if (!strcmp(s, "none") || !strcmp(s, "None")) {
            if (!(nd = ct_mk(p, N_LIT, at)))
                return NULL;
            nd->lit.t = V_NONE;
        } else {
            if (!(nd = ct_mk(p, N_NAME, at)))
                return NULL;
            nd->name = s;
        }
        return ct_lex(p) < 0 ? NULL : nd;
    }
    case T_STR: {
        if (!(nd = ct_mk(p, N_LIT, at)))
            return NULL;
        nd->lit.t = V_STR;
        nd->lit.u.s.p = p->tk.str;
        nd->lit.u.s.n = p->tk.len;
        if (ct_lex(p) < 0)
            return NULL;
        while (p->tk.kind == T_STR) { /* adjacent literals join, as in Python */
            char *j = ct_alloc(&p->t->arena, nd->lit.u.s.n + p->tk.len + 1);
            if (!j) {
                ct_poom(p);
                return NULL;
            }
            memcpy(j, nd->lit.u.s.p, nd->lit.u.s.n);
            memcpy(j + nd->lit.u.s.n, p->tk.str, p->tk.len);
            nd->lit.u.s.p = j;
            nd->lit.u.s.n += p->tk.len;
            if (ct_lex(p) < 0)
                return NULL;
        }
        return nd;
    }
    case T_INT:
    case T_FLOAT:
        if (!(nd = ct_mk(p, N_LIT, at)))
            return NULL;
        if (p->tk.kind == T_INT) {
            nd->lit.t = V_INT;
            nd->lit.u.i = p->tk.i;
        } else {
            nd->lit.t = V_FLOAT;
            nd->lit.u.f = p->tk.f;
        }
        return ct_lex(p) < 0 ? NULL : nd;
    case T_OP:
        if (ct_is_op(p, "(")) {
            if (ct_lex(p) < 0 || !(nd = ct_parse_expr(p)))
                return NULL;
            if (ct_is_op(p, ","))
                return ct_pfail(p, p->tk.start, "tuples are not supported"), NULL;
            return ct_expect_op(p, ")") < 0 ? NULL : nd;
        }
        if (ct_is_op(p, "[") || ct_is_op(p, "{")) {
            int dict = ct_is_op(p, "{");
            size_t cap = 0;
            if (!(nd = ct_mk(p, dict ? N_DICT : N_LIST, at)) || ct_lex(p) < 0)
                return NULL;
            const char *close = dict ? "}" : "]";
            while (!ct_is_op(p, close)) {
                if (nd->n_kids && ct_expect_op(p, ",") < 0)
                    return NULL;
                if (ct_is_op(p, close))
                    break;
                ct_node *k = ct_parse_expr(p);
                if (!k || push_kid(p, nd, k, NULL, &cap) < 0)
                    return NULL;
                if (dict) {
                    if (ct_expect_op(p, ":") < 0 || !(k = ct_parse_expr(p)) ||
                        push_kid(p, nd, k, NULL, &cap) < 0)
                        return NULL;
                }
            }
            return ct_lex(p) < 0 ? NULL : nd;
        }
        break;
    default:
        break;
    }
    ct_pfail(p, at, "unexpected '%s' where a value was expected", ct_tok_desc(p));
    return NULL;
}

static ct_node *parse_unary(parser *p);

/* filters and tests after a value: |name(args) and is [not] name [arg] */
static ct_node *parse_filters(parser *p, ct_node *nd)
{
    for (;;) {
        if (ct_is_op(p, "|")) {
            if (ct_lex(p) < 0)
                return NULL;
            if (p->tk.kind != T_NAME)
                return ct_pfail(p, p->tk.start, "expected a filter name after '|'"), NULL;
            ct_node *f = ct_mk(p, N_FILTER, p->tk.start);
            if (!f)
                return NULL;
            f->name = p->tk.str;
            f->a = nd;
            if (ct_lex(p) < 0 || (ct_is_op(p, "(") && parse_args(p, f) < 0))
                return NULL;
            nd = f;
        } else if (ct_is_name(p, "is")) {
            ct_node *t = ct_mk(p, N_TEST, p->tk.start);
            if (!t || ct_lex(p) < 0)
                return NULL;
            if (ct_is_name(p, "not")) {
                t->op = 1;
                if (ct_lex(p) < 0)
                    return NULL;
            }
            if (p->tk.kind != T_NAME)
                return ct_pfail(p, p->tk.start, "expected a test name after 'is'"), NULL;
            t->name = p->tk.str;
            t->a = nd;
            if (ct_lex(p) < 0)
                return NULL;
            if (ct_is_op(p, "(")) {
                if (parse_args(p, t) < 0)
                    return NULL;
            } else if (p->tk.kind == T_STR || p->tk.kind == T_INT || p->tk.kind == T_FLOAT ||
                       (p->tk.kind == T_NAME && !ct_is_name(p, "and") && !ct_is_name(p, "or") &&
                        !ct_is_name(p, "else") && !ct_is_name(p, "if") && !ct_is_name(p, "is") &&
                        !ct_is_name(p, "in") && !ct_is_name(p, "not"))) {
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
        if (ct_is_op(p, ".")) {
            if (ct_lex(p) < 0)
                return NULL;
            ct_node *a;
            if (p->tk.kind == T_NAME) {
                if (!(a = ct_mk(p, N_ATTR, at)))
                    return NULL;
                a->name = p->tk.str;
            } else if (p->tk.kind == T_INT) {
                ct_node *k = ct_mk(p, N_LIT, p->tk.start);
                if (!k || !(a = ct_mk(p, N_ITEM, at)))
                    return NULL;
                k->lit.t = V_INT;
                k->lit.u.i = p->tk.i;
                a->b = k;
            } else {
                return ct_pfail(p, p->tk.start, "expected an attribute name after '.'"), NULL;
            }
            a->a = nd;
            nd = a;
            if (ct_lex(p) < 0)
                return NULL;
        } else if (ct_is_op(p, "[")) {
            ct_node *parts[3] = {NULL, NULL, NULL};
            int colons = 0;
            if (ct_lex(p) < 0)
                return NULL;
            for (;;) {
                if (ct_is_op(p, ":")) {
                    if (++colons > 2)
                        return ct_pfail(p, p->tk.start, "too many ':' in a slice"), NULL;
                    if (ct_lex(p) < 0)
                        return NULL;
                } else if (ct_is_op(p, "]")) {
                    break;
                } else {
                    if (parts[colons])
                        return ct_pfail(p, p->tk.start, "expected ']'"), NULL;
                    if (!(parts[colons] = ct_parse_expr(p)))
                        return NULL;
                }
            }
            if (ct_lex(p) < 0)
                return NULL;
            ct_node *s;
            if (colons == 0) {
                if (!parts[0])
                    return ct_pfail(p, at, "empty subscript"), NULL;
                if (!(s = ct_mk(p, N_ITEM, at)))
                    return NULL;
                s->b = parts[0];
            } else {
                if (!(s = ct_mk(p, N_SLICE, at)) ||
                    !(s->kids = ct_alloc(&p->t->arena, 3 * sizeof *s->kids)))
                    return ct_poom(p), NULL;
                memcpy(s->kids, parts, sizeof parts);
                s->n_kids = 3;
            }
            s->a = nd;
            nd = s;
        } else if (ct_is_op(p, "(")) {
            ct_node *c = ct_mk(p, N_CALL, at);
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
        return ct_pfail(p, p->tk.start, "expression nested more than %d deep", CHAT_MAX_NESTING), NULL;
    ct_node *nd;
    size_t at = p->tk.start;
    if (ct_is_op(p, "-") || ct_is_op(p, "+")) {
        int neg = ct_is_op(p, "-");
        if (ct_lex(p) < 0)
            return NULL;
        ct_node *x = parse_unary(p);
        if (!x || !(nd = ct_mk(p, neg ? N_NEG : N_POS, at)))
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
    ct_node *nd = ct_mk(p, N_BINOP, at);
    if (nd) {
        nd->op = (int)op;
        nd->a = a;
        nd->b = b;
    }
    return nd;
}

/* The arithmetic levels, loosest first; each operand is the next level (the last: unary).
 * All are left-associative, ** included, as in jinja2. */
static const struct {
    const char *sym[4];
    ct_op op[4];
} levels[] = {
    {{"+", "-"}, {OP_ADD, OP_SUB}},
    {{"~"}, {OP_CONCAT}},
    {{"*", "/", "//", "%"}, {OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD}},
    {{"**"}, {OP_POW}},
};
#define N_LEVELS (int)(sizeof levels / sizeof levels[0])

static ct_node *parse_arith(parser *p, int level)
{
    if (level == N_LEVELS)
        return parse_unary(p);
    ct_node *a = parse_arith(p, level + 1);
    while (a) {
        int k = 0;
        while (k < 4 && levels[level].sym[k] && !ct_is_op(p, levels[level].sym[k]))
            k++;
        if (k == 4 || !levels[level].sym[k])
            return a;
        size_t at = p->tk.start;
        ct_node *b;
        if (ct_lex(p) < 0 || !(b = parse_arith(p, level + 1)))
            return NULL;
        a = binop(p, levels[level].op[k], a, b, at);
    }
    return a;
}

static ct_node *parse_compare(parser *p)
{
    int chained = 0;
    ct_node *a = parse_arith(p, 0);
    while (a) {
        size_t at = p->tk.start;
        ct_op op;
        if (ct_is_op(p, "==")) op = OP_EQ;
        else if (ct_is_op(p, "!=")) op = OP_NE;
        else if (ct_is_op(p, "<")) op = OP_LT;
        else if (ct_is_op(p, "<=")) op = OP_LE;
        else if (ct_is_op(p, ">")) op = OP_GT;
        else if (ct_is_op(p, ">=")) op = OP_GE;
        else if (ct_is_name(p, "in")) op = OP_IN;
        else if (ct_is_name(p, "not")) {
            size_t save = p->pos;
            tok t0 = p->tk;
            if (ct_lex(p) < 0)
                return NULL;
            if (!ct_is_name(p, "in")) {
                p->pos = save;
                p->tk = t0;
                return a;
            }
            op = OP_NOTIN;
        } else
            return a;
        ct_node *b;
        if (ct_lex(p) < 0 || !(b = parse_arith(p, 0)))
            return NULL;
        if (chained++)
            return ct_pfail(p, at, "chained comparisons (a < b < c) are not supported"), NULL;
        a = binop(p, op, a, b, at);
    }
    return a;
}

static ct_node *parse_not(parser *p)
{
    if (ct_is_name(p, "not")) {
        size_t at = p->tk.start;
        if (++p->depth > CHAT_MAX_NESTING)
            return ct_pfail(p, at, "expression nested more than %d deep", CHAT_MAX_NESTING), NULL;
        ct_node *x, *nd;
        if (ct_lex(p) < 0 || !(x = parse_not(p)) || !(nd = ct_mk(p, N_NOT, at)))
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
    while (a && ct_is_name(p, "and")) {
        size_t at = p->tk.start;
        ct_node *b, *nd;
        if (ct_lex(p) < 0 || !(b = parse_not(p)) || !(nd = ct_mk(p, N_AND, at)))
            return NULL;
        nd->a = a;
        nd->b = b;
        a = nd;
    }
    return a;
}

ct_node *ct_parse_or(parser *p)
{
    ct_node *a = parse_and(p);
    while (a && ct_is_name(p, "or")) {
        size_t at = p->tk.start;
        ct_node *b, *nd;
        if (ct_lex(p) < 0 || !(b = parse_and(p)) || !(nd = ct_mk(p, N_OR, at)))
            return NULL;
        nd->a = a;
        nd->b = b;
        a = nd;
    }
    return a;
}

ct_node *ct_parse_expr(parser *p)
{
    if (++p->depth > CHAT_MAX_NESTING)
        return ct_pfail(p, p->tk.start, "expression nested more than %d deep", CHAT_MAX_NESTING), NULL;
    ct_node *a = ct_parse_or(p);
    while (a && ct_is_name(p, "if")) {
        ct_node *nd = ct_mk(p, N_COND, p->tk.start);
        if (!nd || ct_lex(p) < 0 || !(nd->c = ct_parse_or(p)))
            return NULL;
        nd->a = a;
        if (ct_is_name(p, "else")) {
            if (ct_lex(p) < 0 || !(nd->b = ct_parse_expr(p)))
                return NULL;
        }
        a = nd;
    }
    p->depth--;
    return a;
}
