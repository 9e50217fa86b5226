/* chat_template_eval.h: the render state, and what the renderer's files share:
 * chat_template_value.c (values: memory, str/repr, truth, equality, order),
 * chat_template_ops.c (items, slices, arithmetic, in, iteration), chat_template_eval.c
 * (expressions, statements), chat_template_str.c (str methods) and chat_template_lib.c
 * (filters, tests, methods, globals, tojson). */
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

/* chat_template_value.c */
int ct_from_json(ct_ctx *c, const json_value *j, ct_val *out);
int ct_is_num(ct_val v);
double ct_num_f(ct_val v);
long long ct_num_i(ct_val v);
/* <0, 0, >0 into *r; an error where Python refuses to order the two */
int ct_compare(ct_ctx *c, const ct_node *at, ct_val a, ct_val b, int *r);

/* chat_template_ops.c */
int ct_getitem(ct_ctx *c, const ct_node *at, ct_val obj, ct_val key, ct_val *out);
/* obj[a:b:c]: has[k] says whether sv[k] (an int) was given */
int ct_slice(ct_ctx *c, const ct_node *at, ct_val obj, ct_val sv[3], int has[3], ct_val *out);
int ct_arith(ct_ctx *c, const ct_node *at, ct_op op, ct_val a, ct_val b, ct_val *out);

/* chat_template_str.c */
int ct_space_at(const char *s, size_t n, size_t *len); /* str.isspace of the code point at s */
/* strip / lstrip / rstrip: chars NULL = whitespace, else any of chars' code points */
ct_val ct_strip(ct_val s, const ct_val *chars, int left, int right);
int ct_need_str(ct_ctx *c, const ct_node *at, const char *what, ct_val v);
/* mode 0 lower, 1 upper, 2 capitalize, 3 title (ASCII letters only) */
int ct_case(ct_ctx *c, const ct_node *at, ct_val s, int mode, ct_val *out);
int ct_replace(ct_ctx *c, const ct_node *at, ct_val s, ct_val old, ct_val new_, long long count,
               ct_val *out);
int ct_split(ct_ctx *c, const ct_node *at, ct_val s, const ct_val *sep, long long maxsplit,
             ct_val *out);

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
