/* chat_template_eval.c: renders a compiled chat template (chat_template_parse.c's tree).
 * Values follow Python's and jinja2's rules: truth, str() and repr(), ==, ordering, +,
 * %, slices by code point, jinja2's default Undefined (prints as "", is false, iterates
 * as empty; an attribute or item of it, or arithmetic on it, is an error), dict lookups
 * through either .name or ['name'] (missing -> Undefined). Everything a render makes
 * lives in one arena freed at the end; output, memory, steps and depth are bounded. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template_eval.h"

static const ct_val UNDEF = {.t = V_UNDEF};
static const ct_val NONE = {.t = V_NONE};

/* ---- expressions ---- */

static int lookup(ct_ctx *c, const char *name, ct_val *out)
{
    size_t n = strlen(name);
    for (ct_scope *s = c->scope; s; s = s->up) {
        const ct_val *v = ct_dict_get(&s->vars, name, n);
        if (v) {
            *out = *v;
            return 1;
        }
    }
    static const char *const funcs[] = {"raise_exception", "strftime_now", "namespace", "range",
                                        "dict", NULL};
    for (int i = 0; funcs[i]; i++)
        if (!strcmp(name, funcs[i])) {
            out->t = V_FUNC;
            out->u.fn = i;
            return 1;
        }
    return 0;
}

int ct_eval(ct_ctx *c, const ct_node *nd, ct_val *out);

static int eval_args(ct_ctx *c, const ct_node *nd, ct_val *args)
{
    for (size_t i = 0; i < nd->n_kids; i++)
        if (ct_eval(c, nd->kids[i], &args[i]) < 0)
            return -1;
    return 0;
}

static int eval_call(ct_ctx *c, const ct_node *nd, ct_val *out)
{
    ct_val *args = nd->n_kids ? ct_new(c, nd, nd->n_kids * sizeof *args) : NULL;
    if (nd->n_kids && !args)
        return -1;
    const ct_node *callee = nd->a;
    if (callee->kind == N_ATTR) {
        ct_val obj;
        if (ct_eval(c, callee->a, &obj) < 0 || eval_args(c, nd, args) < 0)
            return -1;
        if (obj.t != V_LOOP && obj.t != V_NS)
            return ct_method(c, nd, obj, callee->name, args, nd->kw, nd->n_kids, out);
        ct_val f;
        if (ct_getattr(c, callee, obj, callee->name, strlen(callee->name), &f) < 0)
            return -1;
        if (f.t != V_FUNC)
            return ct_fail(c, nd, "'%s' is not callable", callee->name);
        return ct_call_func(c, nd, (ct_func)f.u.fn, args, nd->kw, nd->n_kids, out);
    }
    ct_val f;
    if (ct_eval(c, callee, &f) < 0)
        return -1;
    if (f.t == V_UNDEF)
        return ct_undefined(c, callee, f);
    if (f.t != V_FUNC)
        return ct_fail(c, nd, "'%s' object is not callable", ct_type_name(f));
    if (eval_args(c, nd, args) < 0)
        return -1;
    return ct_call_func(c, nd, (ct_func)f.u.fn, args, nd->kw, nd->n_kids, out);
}

int ct_eval(ct_ctx *c, const ct_node *nd, ct_val *out)
{
    if (++c->steps > CHAT_MAX_STEPS)
        return ct_fail(c, nd, "more than %ld steps: the template runs away", CHAT_MAX_STEPS);
    if (++c->depth > CT_MAX_DEPTH)
        return ct_fail(c, nd, "expression nested more than %d deep", CT_MAX_DEPTH);
    int rc = 0;
    ct_val a, b;
    switch (nd->kind) {
    case N_LIT:
        *out = nd->lit;
        break;
    case N_NAME:
        if (!lookup(c, nd->name, out)) {
            *out = UNDEF;
            out->u.s.p = nd->name;
        }
        break;
    case N_ATTR:
        rc = ct_eval(c, nd->a, &a) < 0 ? -1 : ct_getattr(c, nd, a, nd->name, strlen(nd->name), out);
        if (rc == 0 && out->t == V_UNDEF)
            out->u.s.p = nd->name;
        break;
    case N_ITEM:
        rc = ct_eval(c, nd->a, &a) < 0 || ct_eval(c, nd->b, &b) < 0 ? -1 : ct_getitem(c, nd, a, b, out);
        break;
    case N_SLICE: {
        ct_val sv[3];
        int has[3];
        if (ct_eval(c, nd->a, &a) < 0) {
            rc = -1;
            break;
        }
        for (int k = 0; k < 3 && rc == 0; k++) {
            has[k] = 0;
            if (!nd->kids[k])
                continue;
            if (ct_eval(c, nd->kids[k], &sv[k]) < 0) {
                rc = -1;
            } else if (sv[k].t == V_NONE) {
                /* [None:] is [:] */
            } else if (sv[k].t != V_INT && sv[k].t != V_BOOL) {
                rc = ct_fail(c, nd->kids[k], "slice indices must be integers, not %s",
                             ct_type_name(sv[k]));
            } else {
                sv[k] = ct_int(ct_num_i(sv[k]));
                has[k] = 1;
            }
        }
        if (rc == 0)
            rc = ct_slice(c, nd, a, sv, has, out);
        break;
    }
    case N_CALL:
        rc = eval_call(c, nd, out);
        break;
    case N_FILTER: {
        ct_val *args = nd->n_kids ? ct_new(c, nd, nd->n_kids * sizeof *args) : NULL;
        if ((nd->n_kids && !args) || ct_eval(c, nd->a, &a) < 0 || eval_args(c, nd, args) < 0)
            rc = -1;
        else
            rc = ct_filter(c, nd, nd->name, a, args, nd->kw, nd->n_kids, out);
        break;
    }
    case N_TEST: {
        ct_val *args = nd->n_kids ? ct_new(c, nd, nd->n_kids * sizeof *args) : NULL;
        int r;
        if ((nd->n_kids && !args) || ct_eval(c, nd->a, &a) < 0 || eval_args(c, nd, args) < 0 ||
            ct_test(c, nd, nd->name, a, args, nd->n_kids, &r) < 0)
            rc = -1;
        else
            *out = ct_bool(nd->op ? !r : r);
        break;
    }
    case N_NEG:
    case N_POS:
        if (ct_eval(c, nd->a, &a) < 0) {
            rc = -1;
        } else if (!ct_is_num(a)) {
            rc = a.t == V_UNDEF ? ct_undefined(c, nd, a)
                                : ct_fail(c, nd, "bad operand type for unary %c: '%s'",
                                          nd->kind == N_NEG ? '-' : '+', ct_type_name(a));
        } else if (nd->kind == N_POS) {
            *out = a.t == V_BOOL ? ct_int(a.u.b) : a;
        } else {
            rc = ct_arith(c, nd, OP_SUB, ct_int(0), a, out);
        }
        break;
    case N_NOT:
        rc = ct_eval(c, nd->a, &a);
        *out = ct_bool(!ct_truthy(a));
        break;
    case N_AND:
    case N_OR:
        if (ct_eval(c, nd->a, &a) < 0) {
            rc = -1;
        } else if (ct_truthy(a) == (nd->kind == N_OR)) {
            *out = a;
        } else {
            rc = ct_eval(c, nd->b, out);
        }
        break;
    case N_COND:
        if (ct_eval(c, nd->c, &a) < 0)
            rc = -1;
        else if (ct_truthy(a))
            rc = ct_eval(c, nd->a, out);
        else if (nd->b)
            rc = ct_eval(c, nd->b, out);
        else
            *out = UNDEF;
        break;
    case N_BINOP: {
        if (ct_eval(c, nd->a, &a) < 0 || ct_eval(c, nd->b, &b) < 0) {
            rc = -1;
            break;
        }
        int r;
        switch ((ct_op)nd->op) {
        case OP_EQ: *out = ct_bool(ct_equal(a, b)); break;
        case OP_NE: *out = ct_bool(!ct_equal(a, b)); break;
        case OP_LT: case OP_LE: case OP_GT: case OP_GE:
            if (ct_compare(c, nd, a, b, &r) < 0) {
                rc = -1;
                break;
            }
            *out = ct_bool(nd->op == OP_LT ? r < 0 : nd->op == OP_LE ? r <= 0 : nd->op == OP_GT ? r > 0 : r >= 0);
            break;
        case OP_IN: case OP_NOTIN:
            if (ct_contains(c, nd, a, b, &r) < 0) {
                rc = -1;
                break;
            }
            *out = ct_bool(nd->op == OP_IN ? r : !r);
            break;
        default:
            rc = ct_arith(c, nd, (ct_op)nd->op, a, b, out);
        }
        break;
    }
    case N_LIST: {
        ct_list *l = ct_list_new(c, nd, nd->n_kids);
        if (!l || eval_args(c, nd, l->v) < 0)
            rc = -1;
        else
            *out = ct_list_val(l);
        break;
    }
    case N_DICT: {
        ct_dict *d = ct_new(c, nd, sizeof *d);
        if (!d) {
            rc = -1;
            break;
        }
        for (size_t i = 0; rc == 0 && i + 1 < nd->n_kids; i += 2) {
            if (ct_eval(c, nd->kids[i], &a) < 0 || ct_eval(c, nd->kids[i + 1], &b) < 0)
                rc = -1;
            else if (a.t != V_STR)
                rc = ct_fail(c, nd->kids[i], "dict keys other than strings are not supported");
            else
                rc = ct_dict_set(c, nd, d, a.u.s.p, a.u.s.n, b);
        }
        out->t = V_DICT;
        out->u.d = d;
        break;
    }
    default:
        rc = ct_fail(c, nd, "not an expression");
    }
    c->depth--;
    return rc < 0 || c->failed ? -1 : 0;
}

/* ---- statements ---- */

enum { EXEC_OK = 0, EXEC_BREAK = 1, EXEC_CONTINUE = 2 };

static int exec_list(ct_ctx *c, const ct_node *nd);

static int exec_for(ct_ctx *c, const ct_node *nd)
{
    ct_val seq;
    ct_list *items;
    if (ct_eval(c, nd->c, &seq) < 0 || ct_iterate(c, nd->c, seq, &items) < 0)
        return -1;
    if (items->n == 0)
        return nd->b ? exec_list(c, nd->b) : 0;
    /* in the arena, not on the stack: "set ns.l = loop" may keep it past the loop */
    ct_loop *loop = ct_new(c, nd, sizeof *loop);
    if (!loop)
        return -1;
    loop->items = items;
    ct_scope s = {.up = c->scope}; /* each iteration starts empty; its arrays are reused */
    for (size_t i = 0; i < items->n; i++) {
        if (++c->steps > CHAT_MAX_STEPS)
            return ct_fail(c, nd, "more than %ld steps: the template runs away", CHAT_MAX_STEPS);
        loop->index0 = i;
        s.vars.n = 0;
        ct_val lv = {.t = V_LOOP};
        lv.u.loop = loop;
        ct_val it = items->v[i];
        int rc = ct_dict_set(c, nd, &s.vars, "loop", 4, lv);
        if (rc == 0 && nd->name2) {
            if (it.t != V_LIST || it.u.l->n != 2)
                return ct_fail(c, nd, "cannot unpack a %s into %s, %s", ct_type_name(it), nd->name,
                               nd->name2);
            rc = ct_dict_set(c, nd, &s.vars, nd->name, strlen(nd->name), it.u.l->v[0]);
            if (rc == 0)
                rc = ct_dict_set(c, nd, &s.vars, nd->name2, strlen(nd->name2), it.u.l->v[1]);
        } else if (rc == 0) {
            rc = ct_dict_set(c, nd, &s.vars, nd->name, strlen(nd->name), it);
        }
        if (rc < 0)
            return -1;
        c->scope = &s;
        rc = exec_list(c, nd->a);
        c->scope = s.up;
        if (rc < 0)
            return -1;
        if (rc == EXEC_BREAK)
            break;
    }
    return 0;
}

static int exec_one(ct_ctx *c, const ct_node *nd)
{
    ct_val v;
    switch (nd->kind) {
    case N_TEXT:
        return sb_put(c, nd, &c->out, nd->lit.u.s.p, nd->lit.u.s.n);
    case N_OUTPUT:
        if (ct_eval(c, nd->a, &v) < 0)
            return -1;
        if (v.t == V_LOOP || v.t == V_FUNC)
            return ct_fail(c, nd, "cannot print a %s", ct_type_name(v));
        return ct_put_str(c, nd, &c->out, v);
    case N_IF:
        if (ct_eval(c, nd->c, &v) < 0)
            return -1;
        return ct_truthy(v) ? exec_list(c, nd->a) : nd->b ? exec_list(c, nd->b) : 0;
    case N_FOR:
        return exec_for(c, nd);
    case N_SET:
        if (ct_eval(c, nd->a, &v) < 0)
            return -1;
        return ct_dict_set(c, nd, &c->scope->vars, nd->name, strlen(nd->name), v);
    case N_SET_ATTR: {
        ct_val ns;
        if (!lookup(c, nd->name2, &ns) || ns.t != V_NS)
            return ct_fail(c, nd, "cannot assign attribute on non-namespace object '%s'", nd->name2);
        if (ct_eval(c, nd->a, &v) < 0)
            return -1;
        return ct_dict_set(c, nd, ns.u.d, nd->name, strlen(nd->name), v);
    }
    case N_BREAK:
    case N_CONTINUE:
        return nd->kind == N_BREAK ? EXEC_BREAK : EXEC_CONTINUE;
    default:
        return ct_fail(c, nd, "not a statement");
    }
}

static int exec_list(ct_ctx *c, const ct_node *nd)
{
    if (++c->depth > CT_MAX_DEPTH)
        return ct_fail(c, nd, "blocks nested more than %d deep", CT_MAX_DEPTH);
    int rc = 0;
    for (; nd && rc == 0; nd = nd->next)
        rc = exec_one(c, nd);
    c->depth--;
    return rc;
}

int chat_render(const chat_template *t, const json_value *messages, const chat_options *opt,
                char **out, size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    chat_options none = {.now = -1};
    if (!opt)
        opt = &none;
    ct_scope root = {0};
    ct_ctx c = {.t = t, .err = err, .errlen = errlen, .opt = opt, .scope = &root};
    c.arena.limit = CHAT_MAX_MEMORY;
    c.out.max = opt->max_output ? opt->max_output : CHAT_MAX_OUTPUT;
    int rc = -1;
    ct_val v;
    if (!messages || messages->type != JSON_ARRAY) {
        ct_fail(&c, NULL, "messages: not a JSON array");
        goto done;
    }
    for (size_t i = 0; i < messages->count; i++)
        if (messages->items[i].type != JSON_OBJECT) {
            ct_fail(&c, NULL, "messages[%zu]: not a JSON object", i);
            goto done;
        }
    if (opt->extra && opt->extra->type != JSON_OBJECT) {
        ct_fail(&c, NULL, "extra variables: not a JSON object");
        goto done;
    }
    if (ct_dict_set(&c, NULL, &root.vars, "tools", 5, NONE) < 0 ||
        ct_dict_set(&c, NULL, &root.vars, "documents", 9, NONE) < 0)
        goto done;
    for (size_t i = 0; opt->extra && i < opt->extra->count; i++)
        if (ct_from_json(&c, &opt->extra->items[i], &v) < 0 ||
            ct_dict_set(&c, NULL, &root.vars, opt->extra->keys[i], strlen(opt->extra->keys[i]), v) < 0)
            goto done;
    if (ct_from_json(&c, messages, &v) < 0 || ct_dict_set(&c, NULL, &root.vars, "messages", 8, v) < 0 ||
        ct_dict_set(&c, NULL, &root.vars, "add_generation_prompt", 21,
                    ct_bool(opt->add_generation_prompt)) < 0)
        goto done;
    if (opt->bos_token &&
        ct_dict_set(&c, NULL, &root.vars, "bos_token", 9, ct_str(opt->bos_token, strlen(opt->bos_token))) < 0)
        goto done;
    if (opt->eos_token &&
        ct_dict_set(&c, NULL, &root.vars, "eos_token", 9, ct_str(opt->eos_token, strlen(opt->eos_token))) < 0)
        goto done;
    if (exec_list(&c, t->body) < 0 || c.failed)
        goto done;
    if (!c.out.p && sb_put(&c, NULL, &c.out, "", 0) < 0)
        goto done;
    *out = c.out.p;
    *out_len = c.out.n;
    c.out.p = NULL;
    rc = 0;
done:
    free(c.out.p);
    ct_arena_free(&c.arena);
    return rc;
}
