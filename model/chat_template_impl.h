/* chat_template_impl.h: what chat_template_parse.c (source -> tree) and
 * chat_template_eval.c (tree -> text) share: the arena, values and tree nodes. */
#ifndef QLORA_CHAT_TEMPLATE_IMPL_H
#define QLORA_CHAT_TEMPLATE_IMPL_H

#include <stddef.h>

#include "chat_template.h"

/* Blocks of memory freed all at once: a compiled tree, or everything one render makes. */
typedef struct ct_block ct_block;
typedef struct {
    ct_block *head;
    size_t total;   /* bytes taken so far */
    size_t limit;   /* ct_alloc fails beyond it */
} ct_arena;

void *ct_alloc(ct_arena *a, size_t n); /* zeroed; NULL if out of memory or over the limit */
void ct_arena_free(ct_arena *a);

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_LOOP, V_FUNC } ct_type;

typedef struct ct_list ct_list;
typedef struct ct_dict ct_dict;
typedef struct ct_loop ct_loop;

typedef struct {
    ct_type t;
    union {
        int b;
        long long i;
        double f;
        struct {
            const char *p; /* V_STR: the bytes; V_UNDEF: the name that was undefined, or NULL */
            size_t n;
        } s;
        ct_list *l;
        ct_dict *d;        /* V_DICT, V_NS (namespace(): the only mutable value) */
        ct_loop *loop;
        int fn;            /* V_FUNC: a ct_func */
    } u;
} ct_val;

struct ct_list {
    size_t n;
    ct_val *v;
};
struct ct_dict {
    size_t n, cap;
    const char **k;  /* NUL-terminated keys */
    size_t *kn;
    ct_val *v;
};

typedef enum { F_RAISE, F_STRFTIME, F_NAMESPACE, F_RANGE, F_DICT } ct_func;

typedef enum {
    /* statements */
    N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_ATTR, N_BREAK, N_CONTINUE,
    /* expressions */
    N_LIT, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT,
    N_BINOP, N_AND, N_OR, N_COND, N_LIST, N_DICT
} ct_kind;

typedef enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
               OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN } ct_op;

typedef struct ct_node ct_node;
struct ct_node {
    ct_kind kind;
    int op;            /* N_BINOP: ct_op; N_TEST: 1 if negated ("is not") */
    size_t pos;        /* source offset, for line:column */
    const char *name;  /* N_NAME, N_ATTR, N_FILTER, N_TEST, N_SET, N_SET_ATTR (attr), N_FOR */
    const char *name2; /* N_FOR: the second target (k, v); N_SET_ATTR: the namespace */
    ct_val lit;        /* N_LIT, N_TEXT */
    ct_node *a, *b, *c;      /* operands; N_IF/N_FOR: a body, b else, c condition/iterable;
                                N_SLICE: a object, then kids[0..2] start stop step (NULL) */
    ct_node **kids;    /* N_CALL/N_FILTER/N_TEST arguments, N_LIST items, N_DICT key, value... */
    const char **kw;   /* keyword of each argument, or NULL for a positional one */
    size_t n_kids;
    ct_node *next;     /* the next statement */
};

struct chat_template {
    ct_arena arena;
    char *name;
    char *src;         /* the source after newline normalisation, for line:column */
    size_t len;
    ct_node *body;
};

/* "NAME:LINE:COL: " for offset pos of t's source, into buf. */
void ct_where(const chat_template *t, size_t pos, char *buf, size_t n);

#endif
