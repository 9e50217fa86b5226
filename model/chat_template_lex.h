/* chat_template_lex.h: what the template's lexer (chat_template_lex.c), expression parser
 * (chat_template_expr.c) and statement parser (chat_template_parse.c) share. */
#ifndef QLORA_CHAT_TEMPLATE_LEX_H
#define QLORA_CHAT_TEMPLATE_LEX_H

#include "chat_template_impl.h"

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

int ct_pfail(parser *p, size_t pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int ct_poom(parser *p);
char *ct_dup_n(parser *p, const char *s, size_t n);
int ct_is_space(char c);
/* Reads the token at p->pos into p->tk. */
int ct_lex(parser *p);
int ct_is_op(const parser *p, const char *op);
int ct_is_name(const parser *p, const char *name);
const char *ct_tok_desc(const parser *p);
int ct_expect_op(parser *p, const char *op);
ct_node *ct_mk(parser *p, ct_kind kind, size_t pos);

/* chat_template_expr.c: an expression from p->tk; ct_parse_or without "x if c else y" */
ct_node *ct_parse_expr(parser *p);
ct_node *ct_parse_or(parser *p);

#endif
