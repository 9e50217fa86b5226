/* chat_template_parse.c: Jinja source -> tree: text and tags with jinja2's whitespace rules
 * as transformers configures it (trim_blocks, lstrip_blocks, no keep_trailing_newline),
 * and the statements if / for / set / break / continue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_lex.h"

/* Ends a tag: p->tk must be its end. Applies '-' and trim_blocks. */
static int close_tag(parser *p)
{
    if (p->tk.kind != T_END_TAG)
        return ct_pfail(p, p->tk.start, "expected end of tag, found '%s'", ct_tok_desc(p));
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
    ct_node *nd = ct_mk(p, N_IF, at);
    const char *found;
    if (!nd || ct_lex(p) < 0 || !(nd->c = ct_parse_expr(p)) || close_tag(p) < 0 ||
        parse_body(p, ends, &found, &nd->a) < 0)
        return -1;
    *out = nd;
    if (!strcmp(found, "elif"))
        return parse_if(p, p->tk.start, &nd->b);
    if (!strcmp(found, "else")) {
        static const char *const end[] = {"endif", NULL};
        if (ct_lex(p) < 0 || close_tag(p) < 0 || parse_body(p, end, &found, &nd->b) < 0)
            return -1;
    }
    return ct_lex(p) < 0 ? -1 : close_tag(p);
}

static int parse_for(parser *p, size_t at, ct_node **out)
{
    static const char *const ends[] = {"else", "endfor", NULL};
    ct_node *nd = ct_mk(p, N_FOR, at);
    const char *found;
    if (!nd || ct_lex(p) < 0)
        return -1;
    if (p->tk.kind != T_NAME)
        return ct_pfail(p, p->tk.start, "expected a loop variable after 'for'");
    nd->name = p->tk.str;
    if (ct_lex(p) < 0)
        return -1;
    if (ct_is_op(p, ",")) {
        if (ct_lex(p) < 0)
            return -1;
        if (p->tk.kind != T_NAME)
            return ct_pfail(p, p->tk.start, "expected a second loop variable after ','");
        nd->name2 = p->tk.str;
        if (ct_lex(p) < 0)
            return -1;
        if (ct_is_op(p, ","))
            return ct_pfail(p, p->tk.start, "more than two loop variables are not supported");
    }
    if (!ct_is_name(p, "in"))
        return ct_pfail(p, p->tk.start, "expected 'in' in a for loop");
    if (ct_lex(p) < 0 || !(nd->c = ct_parse_or(p)))
        return -1;
    if (ct_is_name(p, "if"))
        return ct_pfail(p, p->tk.start, "loop filters (for x in y if c) are not supported");
    if (ct_is_name(p, "recursive"))
        return ct_pfail(p, p->tk.start, "recursive loops are not supported");
    if (close_tag(p) < 0 || parse_body(p, ends, &found, &nd->a) < 0)
        return -1;
    *out = nd;
    if (!strcmp(found, "else")) {
        static const char *const end[] = {"endfor", NULL};
        if (ct_lex(p) < 0 || close_tag(p) < 0 || parse_body(p, end, &found, &nd->b) < 0)
            return -1;
    }
    return ct_lex(p) < 0 ? -1 : close_tag(p);
}

static int parse_set(parser *p, size_t at, ct_node **out)
{
    if (ct_lex(p) < 0)
        return -1;
    if (p->tk.kind != T_NAME)
        return ct_pfail(p, p->tk.start, "expected a name after 'set'");
    ct_node *nd = ct_mk(p, N_SET, at);
    if (!nd)
        return -1;
    nd->name = p->tk.str;
    if (ct_lex(p) < 0)
        return -1;
    if (ct_is_op(p, ".")) {
        nd->kind = N_SET_ATTR;
        nd->name2 = nd->name;
        if (ct_lex(p) < 0)
            return -1;
        if (p->tk.kind != T_NAME)
            return ct_pfail(p, p->tk.start, "expected an attribute name after '.'");
        nd->name = p->tk.str;
        if (ct_lex(p) < 0)
            return -1;
    }
    if (ct_is_op(p, ","))
        return ct_pfail(p, p->tk.start, "set with several targets (set a, b = ...) is not supported");
    if (p->tk.kind == T_END_TAG)
        return ct_pfail(p, p->tk.start, "block set ({%% set x %%}...{%% endset %%}) is not supported");
    if (ct_expect_op(p, "=") < 0 || !(nd->a = ct_parse_expr(p)))
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
        return ct_pfail(p, p->pos, "blocks nested more than %d deep", CHAT_MAX_NESTING);
    for (;;) {
        size_t q = p->pos;
        while (q + 1 < p->n && !(p->s[q] == '{' && (p->s[q + 1] == '{' || p->s[q + 1] == '%' ||
                                                  p->s[q + 1] == '#')))
            q++;
        if (q + 1 >= p->n)
            q = p->n;
        size_t a = p->pos, b = q;
        if (p->strip_next)
            while (a < b && ct_is_space(p->s[a]))
                a++;
        p->strip_next = 0;
        char kind = q < p->n ? p->s[q + 1] : 0;
        char sign = q + 2 < p->n && (p->s[q + 2] == '-' || p->s[q + 2] == '+') ? p->s[q + 2] : 0;
        if (kind && sign == '-') {
            while (b > a && ct_is_space(p->s[b - 1]))
                b--;
        } else if ((kind == '%' || kind == '#') && sign != '+') {
            size_t l = b;
            while (l > a && p->s[l - 1] != '\n')
                l--;
            int blank = 1;
            for (size_t k = l; k < b; k++)
                if (!ct_is_space(p->s[k]))
                    blank = 0;
            if (blank && (l > a || p->line_starting))
                b = l;
        }
        if (b > a) {
            ct_node *t = ct_mk(p, N_TEXT, a);
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
                return ct_pfail(p, p->n, "missing {%% %s %%}", ends[last]);
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
                return ct_pfail(p, q, "unterminated comment");
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
        if (ct_lex(p) < 0)
            return -1;
        if (kind == '{') {
            ct_node *o = ct_mk(p, N_OUTPUT, q);
            if (!o || !(o->a = ct_parse_expr(p)) || close_tag(p) < 0)
                return -1;
            append(&tail, o);
            continue;
        }
        if (p->tk.kind != T_NAME)
            return ct_pfail(p, p->tk.start, "expected a tag name after '{%%'");
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
            if (!(st = ct_mk(p, kw[0] == 'b' ? N_BREAK : N_CONTINUE, at)) || ct_lex(p) < 0 ||
                close_tag(p) < 0)
                return -1;
        } else {
            for (int i = 0; refused_tags[i]; i++)
                if (!strcmp(kw, refused_tags[i]))
                    return ct_pfail(p, at, "the '%s' tag is not supported", kw);
            if (ends)
                return ct_pfail(p, at, "unexpected '%s' tag, expected '%s'", kw, ends[0]);
            return ct_pfail(p, at, "unknown tag '%s'", kw);
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
