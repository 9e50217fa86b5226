/* ops.c: the command table, generated from QD_OPS and the ops' argument lists
 * (protocol.h): one row per op with its handler, where it runs and its argument schema,
 * checked here so that handlers see arguments of the right types, each at the position
 * its enum names. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qlorad.h"
#include "workspace.h"

typedef struct {
    const char *name;
    unsigned types;
    int required;
} arg_spec;

typedef struct op_row {
    const char *name;
    void (*fn)(req *r);
    int where;           /* ON_LOOP or ON_POOL */
    arg_spec args[MAX_ARGS];
} op_row;

/* One row per op of QD_OPS, its arguments in the order of their enum, then a NULL name. */
#define ARG_SPEC(op, e, name, types, required) {name, types, required},
#define OP_ROW(op, name, fn, where, ARGS) {name, fn, where, {ARGS(ARG_SPEC, op){0}}},
static const op_row op_table[] = {QD_OPS(OP_ROW)};
#undef OP_ROW
#undef ARG_SPEC
/* room for the NULL name after the last */
#define OP_FITS(op, name, fn, where, ARGS) _Static_assert(op##_N_ARGS < MAX_ARGS, name ": over MAX_ARGS arguments");
QD_OPS(OP_FITS)
#undef OP_FITS

static const char *const type_names[T_N_BITS] = {
#define ARG_TYPE_NAME(e, name, phrase) [T_BIT_##e] = name,
    ARG_TYPES(ARG_TYPE_NAME)
#undef ARG_TYPE_NAME
};

/* The first of the types as messages say it ("a string"); nil is told apart ("or nil"). */
static const char *type_phrase(unsigned types)
{
    static const char *const phrases[T_N_BITS] = {
#define ARG_TYPE_PHRASE(e, name, phrase) [T_BIT_##e] = phrase,
        ARG_TYPES(ARG_TYPE_PHRASE)
#undef ARG_TYPE_PHRASE
    };
    for (int b = 0; b < T_N_BITS; b++)
        if (b != T_BIT_NIL && types >> b & 1)
            return phrases[b];
    return phrases[T_BIT_NIL];
}

static unsigned type_of(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_STR: return T_STR;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return T_UINT | T_NUM;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return T_NUM;
    case MSGPACK_OBJECT_BOOLEAN: return T_BOOL;
    case MSGPACK_OBJECT_MAP: return T_MAP;
    case MSGPACK_OBJECT_ARRAY: return T_ARRAY;
    case MSGPACK_OBJECT_NIL: return T_NIL;
    case MSGPACK_OBJECT_BIN: return T_BIN;
    default: return 0;
    }
}

/* ---- replies ---- */

const char *qd_error_name(qd_error e)
{
    static const char *const names[] = {
        [ERR_NONE] = "none",
#define QD_ERROR_NAME(e, name) [ERR_##e] = name,
        QD_ERRORS(QD_ERROR_NAME)
#undef QD_ERROR_NAME
    };
    return (unsigned)e < sizeof names / sizeof names[0] ? names[e] : "internal";
}

qd_error store_error(const char *err)
{
    return strstr(err, "store full") ? ERR_BUSY : ERR_INTERNAL;
}

void reply_begin(req *r, mp_out *o)
{
    mp_out_init(o);
    msgpack_pack_map(&o->pk, 3);
    mp_kv_u64(&o->pk, "id", r->id);
    mp_kv_bool(&o->pk, "ok", 1);
    mp_str(&o->pk, "result");
}

void reply_end(req *r, mp_out *o)
{
    size_t len = o->sb.size - 4;
    if (o->sb.data && len > r->d->max_frame) {
        /* the client could not read it (its limit is the same): say so instead */
        mp_out_free(o);
        reply_error(r, ERR_BUSY, "the result is %zu bytes, more than max_frame (%zu): ask for less at a time", len,
                    r->d->max_frame);
        return;
    }
    qd_send(r->d, r->conn_id, o);
}

static void vsend_error(qd *d, uint64_t conn_id, uint64_t id, qd_error code, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    mp_out o;
    mp_out_init(&o);
    msgpack_pack_map(&o.pk, 3);
    mp_kv_u64(&o.pk, "id", id);
    mp_kv_bool(&o.pk, "ok", 0);
    mp_str(&o.pk, "error");
    msgpack_pack_map(&o.pk, 2);
    mp_kv_str(&o.pk, "code", qd_error_name(code));
    mp_kv_str(&o.pk, "message", msg);
    qd_send(d, conn_id, &o);
    qd_log(LOG_DEBUG, "connection %llu request %llu: %s: %s", (unsigned long long)conn_id,
           (unsigned long long)id, qd_error_name(code), msg);
}

void send_error(qd *d, uint64_t conn_id, uint64_t id, qd_error code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsend_error(d, conn_id, id, code, fmt, ap);
    va_end(ap);
}

void reply_error(req *r, qd_error code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsend_error(r->d, r->conn_id, r->id, code, fmt, ap);
    va_end(ap);
}

void reply_event(qd *d, uint64_t conn_id, uint64_t id, const char *packed, size_t len)
{
    mp_out o;
    mp_out_init(&o);
    msgpack_pack_map(&o.pk, 2);
    mp_kv_u64(&o.pk, "id", id);
    mp_str(&o.pk, "event");
    msgpack_sbuffer_write(&o.sb, packed, len); /* an already packed map */
    qd_send(d, conn_id, &o);
}

/* ---- dispatch ---- */

int req_abandoned(const req *r)
{
    return r->life && atomic_load(&r->life->gone);
}

static void req_free(req *r)
{
    conn_life_put(r->life);
    msgpack_unpacked_destroy(&r->frame);
    free(r->bytes);
    free(r);
}

static void work(uv_work_t *w)
{
    req *r = w->data;
    r->op->fn(r);
    /* libuv's threads live as long as the daemon: a prompt's packed rows (up to seq_len x
     * hidden floats) are not kept between requests */
    rt_workspace_release();
}

static void work_done(uv_work_t *w, int status)
{
    req *r = w->data;
    qd *d = r->d;
    (void)status;
    d->inflight--;
    conn *c = qd_conn(d, r->conn_id);
    if (c)
        c->requests--;
    conn_resume(d);
    req_free(r);
    qd_maybe_finish(d);
}

/* Checks args against the op's schema; fills r->arg. 0, or -1 after replying. */
static int bind_args(req *r)
{
    const op_row *op = r->op;
    const msgpack_object *args = r->args;
    if (args) {
        for (uint32_t i = 0; i < args->via.map.size; i++) {
            const msgpack_object *k = &args->via.map.ptr[i].key, *v = &args->via.map.ptr[i].val;
            int j = 0;
            for (; j < MAX_ARGS && op->args[j].name && !mp_is_str(k, op->args[j].name); j++)
                ;
            if (j == MAX_ARGS || !op->args[j].name) {
                if (k->type == MSGPACK_OBJECT_STR)
                    reply_error(r, ERR_BAD_REQUEST, "args.%.*s: %s takes no such argument", (int)k->via.str.size,
                                k->via.str.ptr, op->name);
                else
                    reply_error(r, ERR_BAD_REQUEST, "args: keys must be strings");
                return -1;
            }
            if (!(type_of(v) & op->args[j].types)) {
                reply_error(r, ERR_BAD_REQUEST, "args.%s: must be %s%s", op->args[j].name, type_phrase(op->args[j].types),
                            op->args[j].types & T_NIL ? " or nil" : "");
                return -1;
            }
            r->arg[j] = v;
        }
    }
    for (int j = 0; j < MAX_ARGS && op->args[j].name; j++)
        if (op->args[j].required && !r->arg[j]) {
            reply_error(r, ERR_BAD_REQUEST, "args.%s: missing (%s needs it)", op->args[j].name, op->name);
            return -1;
        }
    return 0;
}

void ops_dispatch(qd *d, conn *c, const char *frame, size_t len)
{
    char err[256];
    if (mp_check(frame, len, err, sizeof err) < 0) {
        send_error(d, c->id, 0, ERR_BAD_FRAME, "%s", err);
        if (c->authed)
            conn_close(c);
        else
            conn_abort(c);
        return;
    }
    req *r = calloc(1, sizeof *r);
    if (!r) {
        send_error(d, c->id, 0, ERR_BUSY, "out of memory");
        return;
    }
    r->d = d, r->conn_id = c->id;
    msgpack_unpacked_init(&r->frame);
    /* decoded strings and bins point into the bytes they came from, and the connection's
     * buffer moves on: the request keeps its own copy for as long as it runs */
    r->bytes = malloc(len);
    if (r->bytes)
        memcpy(r->bytes, frame, len);
    size_t off = 0;
    if (!r->bytes || msgpack_unpack_next(&r->frame, r->bytes, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        send_error(d, c->id, 0, ERR_BUSY, "out of memory decoding a frame of %zu bytes", len);
        req_free(r);
        if (!c->authed)
            conn_abort(c);
        return;
    }
    const msgpack_object *o = &r->frame.data, *id = mp_get(o, "id"), *op = mp_get(o, "op");
    if (id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        r->id = id->via.u64;
    r->args = mp_get(o, "args");
    if (r->args && r->args->type == MSGPACK_OBJECT_NIL)
        r->args = NULL;
    if (!c->authed && !(op && mp_is_str(op, "auth"))) {
        /* before auth nothing is answered but that: no shape errors to keep a stranger talking */
        reply_error(r, ERR_UNAUTHORIZED, "a TCP connection must begin with auth");
        req_free(r);
        conn_abort(c);
        return;
    }
    const char *bad = o->type != MSGPACK_OBJECT_MAP ? "a request is a map {id, op, args}"
                      : !id || id->type != MSGPACK_OBJECT_POSITIVE_INTEGER ? "id: missing or not a non-negative integer"
                      : !op || op->type != MSGPACK_OBJECT_STR ? "op: missing or not a string"
                      : r->args && r->args->type != MSGPACK_OBJECT_MAP ? "args: must be a map"
                      : NULL;
    if (bad) {
        reply_error(r, ERR_BAD_REQUEST, "%s", bad);
        req_free(r);
        if (!c->authed)
            conn_abort(c);
        return;
    }
    for (size_t i = 0; i < sizeof op_table / sizeof op_table[0]; i++)
        if (mp_is_str(op, op_table[i].name))
            r->op = &op_table[i];
    if (!r->op) {
        reply_error(r, ERR_UNKNOWN_OP, "op '%.*s' does not exist", (int)op->via.str.size, op->via.str.ptr);
        req_free(r);
        return;
    }
    if (bind_args(r) < 0) {
        req_free(r);
        if (!c->authed)
            conn_abort(c);
        return;
    }
    if (r->op->where == ON_LOOP) {
        r->op->fn(r);
        req_free(r);
        return;
    }
    r->pooled = 1;
    r->life = c->life;
    atomic_fetch_add(&c->life->refs, 1);
    r->work.data = r;
    if (uv_queue_work(d->loop, &r->work, work, work_done) < 0) {
        reply_error(r, ERR_INTERNAL, "cannot queue the request");
        req_free(r);
        return;
    }
    d->inflight++;
    c->requests++;
}

/* ---- the small ops ---- */

/* On the loop, so the connection is at hand. The Unix socket needs no token. */
void op_auth(req *r)
{
    qd *d = r->d;
    conn *c = qd_conn(d, r->conn_id);
    const msgpack_object *t = r->arg[AUTH_TOKEN];
    size_t n = d->token ? strlen(d->token) : 0;
    unsigned diff = !d->token || t->via.str.size != n;
    for (size_t i = 0; i < t->via.str.size && i < n; i++) /* constant time in the token's bytes */
        diff |= (unsigned)(d->token[i] ^ t->via.str.ptr[i]);
    if (c && c->tcp && diff) {
        qd_log(LOG_INFO, "connection %llu: wrong token; closing it", (unsigned long long)c->id);
        reply_error(r, ERR_UNAUTHORIZED, "token: does not match");
        conn_abort(c);
        return;
    }
    if (c && !c->authed)
        conn_authed(c);
    mp_out o;
    reply_begin(r, &o);
    msgpack_pack_map(&o.pk, 0);
    reply_end(r, &o);
}

void op_ping(req *r)
{
    mp_out o;
    reply_begin(r, &o);
    msgpack_pack_map(&o.pk, 3);
    mp_kv_str(&o.pk, "version", QLORAD_VERSION);
    mp_kv_u64(&o.pk, "protocol", QLORAD_PROTOCOL);
    mp_kv_f64(&o.pk, "uptime_s", now_s() - r->d->started);
    reply_end(r, &o);
}

/* Every op with its arguments as the dispatcher checks them, so that a client can learn
 * what this daemon offers before it asks. */
void op_op_list(req *r)
{
    const size_t n_ops = sizeof op_table / sizeof op_table[0];
    mp_out o;
    reply_begin(r, &o);
    msgpack_packer *pk = &o.pk;
    msgpack_pack_map(pk, 1);
    mp_str(pk, "ops");
    msgpack_pack_array(pk, n_ops);
    for (size_t i = 0; i < n_ops; i++) {
        const op_row *op = &op_table[i];
        size_t n_args = 0;
        while (n_args < MAX_ARGS && op->args[n_args].name)
            n_args++;
        msgpack_pack_map(pk, 2);
        mp_kv_str(pk, "name", op->name);
        mp_str(pk, "args");
        msgpack_pack_array(pk, n_args);
        for (size_t j = 0; j < n_args; j++) {
            const arg_spec *a = &op->args[j];
            msgpack_pack_map(pk, 3);
            mp_kv_str(pk, "name", a->name);
            mp_str(pk, "types");
            msgpack_pack_array(pk, (size_t)__builtin_popcount(a->types));
            for (int b = 0; b < T_N_BITS; b++)
                if (a->types >> b & 1)
                    mp_str(pk, type_names[b]);
            mp_kv_bool(pk, "required", a->required == REQUIRED);
        }
    }
    reply_end(r, &o);
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * 4096;
}

void op_status(req *r)
{
    qd *d = r->d;
    const llama_model *m = &d->model;
    const llama_config *c = &m->cfg;
    size_t quantized, n_params = llama_n_params(c, m->tied, &quantized), cached, cached_bytes, used, stored = 0;
    char err[256];
    int counts[JOB_N_STATES];
    jobs_counts(d, counts);
    cache_stats(d, &cached, &cached_bytes);
    if (store_stat(d->db, &used, &stored, err, sizeof err) < 0)
        qd_log(LOG_WARN, "status: %s", err);
    const char *name = strrchr(d->model_dir, '/');
    name = name && name[1] ? name + 1 : d->model_dir;
    mp_out o;
    reply_begin(r, &o);
    msgpack_packer *pk = &o.pk;
    msgpack_pack_map(pk, 6);
    mp_str(pk, "server");
    msgpack_pack_map(pk, 2);
    mp_kv_u64(pk, "connections", (uint64_t)d->n_conns);
    mp_kv_u64(pk, "requests_in_flight", (uint64_t)d->inflight);
    mp_str(pk, "model");
    msgpack_pack_map(pk, 8);
    mp_kv_str(pk, "name", name);
    mp_kv_str(pk, "path", d->model_dir);
    mp_kv_str(pk, "arch", "llama");
    mp_kv_u64(pk, "n_params", n_params);
    mp_kv_u64(pk, "dim", (uint64_t)c->dim);
    mp_kv_u64(pk, "n_layers", (uint64_t)c->n_layers);
    mp_kv_u64(pk, "vocab_size", (uint64_t)c->vocab_size);
    mp_kv_u64(pk, "seq_len", (uint64_t)c->seq_len);
    mp_str(pk, "quant");
    msgpack_pack_map(pk, 4);
    mp_kv_str(pk, "format", qt_format_name(m->spec.format));
    mp_kv_u64(pk, "block_size", (uint64_t)m->spec.block);
    mp_kv_bool(pk, "double_quant", m->spec.double_quant);
    mp_kv_f64(pk, "bits_per_param", llama_linear_bits(m));
    mp_str(pk, "memory");
    msgpack_pack_map(pk, 3);
    mp_kv_u64(pk, "base_bytes", llama_weight_bytes(m));
    mp_kv_u64(pk, "adapters_bytes", cached_bytes);
    mp_kv_u64(pk, "rss_bytes", rss_bytes());
    mp_str(pk, "jobs");
    msgpack_pack_map(pk, JOB_N_STATES);
    for (int i = 0; i < JOB_N_STATES; i++)
        mp_kv_u64(pk, job_state_names[i], (uint64_t)counts[i]);
    mp_str(pk, "adapters");
    msgpack_pack_map(pk, 3);
    mp_kv_u64(pk, "stored", stored);
    mp_kv_u64(pk, "loaded", cached);
    pthread_mutex_lock(&d->active_lock);
    if (d->active_name[0]) {
        char active[80];
        snprintf(active, sizeof active, "%s@%u", d->active_name, d->active_version);
        mp_kv_str(pk, "active", active);
    } else {
        mp_kv_nil(pk, "active");
    }
    pthread_mutex_unlock(&d->active_lock);
    reply_end(r, &o);
}
