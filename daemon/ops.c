/* ops.c: the command table, generated from QD_OPS and the ops' argument lists
 * (protocol.h): one row per op with its handler, where it runs and its argument schema,
 * checked here so that handlers see arguments of the right types, each at the position
 * its enum names. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "procmem.h"
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

static const char *const error_names[] = {
    [ERR_NONE] = "none",
#define QD_ERROR_NAME(e, name) [ERR_##e] = name,
    QD_ERRORS(QD_ERROR_NAME)
#undef QD_ERROR_NAME
};
#define N_ERRORS (int)(sizeof error_names / sizeof error_names[0])

const char *qd_error_name(qd_error e)
{
    return (int)e >= 0 && (int)e < N_ERRORS ? error_names[e] : "internal";
}

/* {id, ok: false, error: {code, message}} */
typedef struct {
    uint64_t id;
    int ok;
    qd_error code;
    char message[1024];
} error_reply;
static const schema_field error_fields[] = {
    S_NAME(error_reply, "code", code, error_names, N_ERRORS, 0),
    S_FIELD(error_reply, "message", SK_CHARS, message, 0),
};
static const schema error_body = SCHEMA(error_fields);
static const schema_field error_reply_fields[] = {
    S_FIELD(error_reply, "id", SK_UINT, id, 0),
    S_FIELD(error_reply, "ok", SK_BOOL, ok, 0),
    S_GROUP("error", &error_body),
};
static const schema error_reply_record = SCHEMA(error_reply_fields);

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

void reply_records(req *r, const char *key, const schema *s, const void *items, size_t n, size_t stride)
{
    mp_out o;
    reply_begin(r, &o);
    msgpack_pack_map(&o.pk, 1);
    mp_str(&o.pk, key);
    msgpack_pack_array(&o.pk, n);
    for (size_t i = 0; i < n; i++)
        schema_pack(&o.pk, s, (const char *)items + i * stride, SCHEMA_WIRE);
    reply_end(r, &o);
}

void reply_deleted(req *r, int n)
{
    mp_out o;
    reply_begin(r, &o);
    msgpack_pack_map(&o.pk, 1);
    mp_kv_i64(&o.pk, "deleted", n);
    reply_end(r, &o);
}

static void vsend_error(qd *d, uint64_t conn_id, uint64_t id, qd_error code, const char *fmt, va_list ap)
{
    error_reply e = {.id = id, .code = code};
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    mp_out o;
    mp_out_init(&o);
    schema_pack(&o.pk, &error_reply_record, &e, SCHEMA_WIRE);
    qd_send(d, conn_id, &o);
    qd_log(LOG_DEBUG, "connection %llu request %llu: %s: %s", (unsigned long long)conn_id,
           (unsigned long long)id, qd_error_name(code), e.message);
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

typedef struct {
    uint64_t protocol;
    double uptime_s;
} ping_result;
static const schema_field ping_fields[] = {
    S_CONST("version", QLORAD_VERSION),
    S_FIELD(ping_result, "protocol", SK_UINT, protocol, 0),
    S_FIELD(ping_result, "uptime_s", SK_REAL, uptime_s, 0),
};
static const schema ping_record = SCHEMA(ping_fields);

void op_ping(req *r)
{
    ping_result p = {QLORAD_PROTOCOL, now_s() - r->d->started};
    mp_out o;
    reply_begin(r, &o);
    schema_pack(&o.pk, &ping_record, &p, SCHEMA_WIRE);
    reply_end(r, &o);
}

static const schema_field arg_fields[] = {
    S_FIELD(arg_spec, "name", SK_STR, name, 0),
    S_BITS(arg_spec, "types", types, type_names, T_N_BITS),
    S_FIELD(arg_spec, "required", SK_BOOL, required, 0), /* REQUIRED is 1 */
};
static const schema arg_record = SCHEMA(arg_fields);

/* An op's args: its schema up to the NULL name. */
static void pack_args(msgpack_packer *pk, const void *value)
{
    const arg_spec *args = value;
    size_t n = 0;
    while (n < MAX_ARGS && args[n].name)
        n++;
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++)
        schema_pack(pk, &arg_record, &args[i], SCHEMA_WIRE);
}
static const schema_field op_fields[] = {
    S_FIELD(op_row, "name", SK_STR, name, 0),
    S_CUSTOM(op_row, "args", args, pack_args, NULL, 0),
};
static const schema op_record = SCHEMA(op_fields);

/* Every op with its arguments as the dispatcher checks them, so that a client can learn
 * what this daemon offers before it asks. */
void op_op_list(req *r)
{
    reply_records(r, "ops", &op_record, op_table, sizeof op_table / sizeof op_table[0], sizeof op_table[0]);
}

/* What status tells, gathered first: the table below packs it. */
typedef struct {
    int connections, requests_in_flight;
    const char *name, *path, *arch;
    size_t n_params;
    int dim, n_layers, vocab_size, seq_len;
    const char *format;
    int block_size, double_quant;
    double bits_per_param;
    size_t base_bytes, adapters_bytes, rss_bytes;
    int jobs[JOB_N_STATES];
    size_t stored, loaded;
    char active[80]; /* NAME@VERSION, "": none */
} status_view;

#define S(key, kind, member) S_FIELD(status_view, key, kind, member, 0)
static const schema_field server_fields[] = {
    S("connections", SK_INT, connections),
    S("requests_in_flight", SK_INT, requests_in_flight),
};
static const schema_field model_fields[] = {
    S("name", SK_STR, name),
    S("path", SK_STR, path),
    S("arch", SK_STR, arch),
    S("n_params", SK_UINT, n_params),
    S("dim", SK_INT, dim),
    S("n_layers", SK_INT, n_layers),
    S("vocab_size", SK_INT, vocab_size),
    S("seq_len", SK_INT, seq_len),
};
static const schema_field quant_fields[] = {
    S("format", SK_STR, format),
    S("block_size", SK_INT, block_size),
    S("double_quant", SK_BOOL, double_quant),
    S("bits_per_param", SK_REAL, bits_per_param),
};
static const schema_field memory_fields[] = {
    S("base_bytes", SK_UINT, base_bytes),
    S("adapters_bytes", SK_UINT, adapters_bytes),
    S("rss_bytes", SK_UINT, rss_bytes),
};
static const schema_field job_count_fields[] = {
#define JOB_COUNT(e, name) S(name, SK_INT, jobs[JOB_##e]),
    JOB_STATES(JOB_COUNT)
#undef JOB_COUNT
};
static const schema_field adapters_fields[] = {
    S("stored", SK_UINT, stored),
    S("loaded", SK_UINT, loaded),
    S_FIELD(status_view, "active", SK_CHARS, active, SF_NIL_IF_ZERO),
};
#undef S
static const schema server_part = SCHEMA(server_fields), model_part = SCHEMA(model_fields),
                    quant_part = SCHEMA(quant_fields), memory_part = SCHEMA(memory_fields),
                    jobs_part = SCHEMA(job_count_fields), adapters_part = SCHEMA(adapters_fields);
static const schema_field status_fields[] = {
    S_GROUP("server", &server_part), S_GROUP("model", &model_part),   S_GROUP("quant", &quant_part),
    S_GROUP("memory", &memory_part), S_GROUP("jobs", &jobs_part),     S_GROUP("adapters", &adapters_part),
};
static const schema status_record = SCHEMA(status_fields);

void op_status(req *r)
{
    qd *d = r->d;
    const llama_model *m = &d->model;
    const llama_config *c = &m->cfg;
    size_t quantized, used;
    char err[256];
    status_view s = {
        .connections = d->n_conns,
        .requests_in_flight = d->inflight,
        .path = d->model_dir,
        .arch = llama_arch_type(c->arch),
        .n_params = llama_n_params(c, m->tied, &quantized),
        .dim = c->dim,
        .n_layers = c->n_layers,
        .vocab_size = c->vocab_size,
        .seq_len = c->seq_len,
        .format = llama_quant_name(m),
        .block_size = m->spec.block,
        .double_quant = m->spec.double_quant,
        .bits_per_param = llama_linear_bits(m),
        .base_bytes = llama_weight_bytes(m),
        .rss_bytes = rt_rss_bytes(),
    };
    const char *name = strrchr(d->model_dir, '/');
    s.name = name && name[1] ? name + 1 : d->model_dir;
    jobs_counts(d, s.jobs);
    cache_stats(d, &s.loaded, &s.adapters_bytes);
    if (store_stat(d->db, &used, &s.stored, err, sizeof err) < 0)
        qd_log(LOG_WARN, "status: %s", err);
    pthread_mutex_lock(&d->active_lock);
    if (d->active_name[0])
        snprintf(s.active, sizeof s.active, "%s@%u", d->active_name, d->active_version);
    pthread_mutex_unlock(&d->active_lock);
    mp_out o;
    reply_begin(r, &o);
    schema_pack(&o.pk, &status_record, &s, SCHEMA_WIRE);
    reply_end(r, &o);
}
