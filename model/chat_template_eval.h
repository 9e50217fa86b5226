/* chat_template_eval.h: the render state, and what chat_template_eval.c (expressions and
 * statements) and chat_template_lib.c (filters, tests, methods, globals, tojson) share. */
#ifndef QLORA_CHAT_TEMPLATE_EVAL_H
#define QLORA_CHAT_TEMPLATE_EVAL_H

#include "chat_template_impl.h"

#define CT_MAX_DEPTH 512 /* eval recursion: left-nested chains (a + b + ...) parse flat */

typedef struct {
    char *p;
    size_t n, cap;
    size_t max; /* 0: the arena's limit */
} sbuf;

struct ct_loop {
    ct_list *items;
    size_t index0;
};

typedef struct ct_scope {
    struct ct_scope *up;
    ct_dict vars;
} ct_scope;

typedef struct {
    const chat_template *t;
    const chat_options *opt;
    ct_arena arena;
    sbuf out;
    ct_scope *scope;
    long steps;
    int depth;
    int failed;
    char *err;
    size_t errlen;
} ct_ctx;

int ct_fail(ct_ctx *c, const ct_node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int ct_undefined(ct_ctx *c, const ct_node *at, ct_val u);
void *ct_new(ct_ctx *c, const ct_node *at, size_t n);

int sb_put(ct_ctx *c, const ct_node *at, sbuf *b, const char *s, size_t n);
int sb_putc(ct_ctx *c, const ct_node *at, sbuf *b, char ch);
int sb_take(ct_ctx *c, const ct_node *at, sbuf *b, ct_val *out);

ct_val ct_str(const char *p, size_t n);
ct_val ct_int(long long i);
ct_val ct_bool(int b);
ct_val ct_list_val(ct_list *l);
ct_list *ct_list_new(ct_ctx *c, const ct_node *at, size_t n);
const ct_val *ct_dict_get(const ct_dict *d, const char *k, size_t kn);
int ct_dict_set(ct_ctx *c, const ct_node *at, ct_dict *d, const char *k, size_t kn, ct_val v);

void ct_fmt_float(double f, char *buf, size_t n);
int ct_put_str(ct_ctx *c, const ct_node *at, sbuf *b, ct_val v);
int ct_to_str(ct_ctx *c, const ct_node *at, ct_val v, ct_val *out);
const char *ct_type_name(ct_val v);
int ct_truthy(ct_val v);
int ct_equal(ct_val a, ct_val b);
int ct_contains(ct_ctx *c, const ct_node *at, ct_val x, ct_val y, int *r);
int ct_iterate(ct_ctx *c, const ct_node *at, ct_val v, ct_list **out);
int ct_getattr(ct_ctx *c, const ct_node *at, ct_val obj, const char *name, size_t n, ct_val *out);
size_t ct_utf8_len(const char *s, size_t n);
int ct_eval(ct_ctx *c, const ct_node *nd, ct_val *out);

/* chat_template_lib.c; kw[i] names argument i or is NULL (kw itself may be NULL) */
int ct_filter(ct_ctx *c, const ct_node *at, const char *name, ct_val v, const ct_val *args,
              const char *const *kw, size_t n, ct_val *out);
int ct_test(ct_ctx *c, const ct_node *at, const char *name, ct_val v, const ct_val *args,
            size_t n, int *r);
int ct_method(ct_ctx *c, const ct_node *at, ct_val obj, const char *name, const ct_val *args,
              const char *const *kw, size_t n, ct_val *out);
int ct_call_func(ct_ctx *c, const ct_node *at, ct_func f, const ct_val *args,
                 const char *const *kw, size_t n, ct_val *out);

#endif
