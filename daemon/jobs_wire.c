/* jobs_wire.c: a job on the wire and in the store. job.submit's hyper map parsed and
 * checked, the job record (the same table writes it for clients and for the store, and
 * reads the store's back at start), and the events a job's watchers get. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "jobs.h"

/* ---- hyper-parameters on the wire ---- */

/* The names of train.h's vocabularies, by value. */
#define TRAIN_NAME(e, name) [e] = name,
static const char *const method_names[] = {TRAIN_METHODS(TRAIN_NAME)};
static const char *const schedule_names[] = {TRAIN_SCHEDULES(TRAIN_NAME)};
static const char *const init_names[] = {TRAIN_INITS(TRAIN_NAME)};
static const char *const chat_names[] = {TRAIN_CHAT_TEMPLATES(TRAIN_NAME)};
#undef TRAIN_NAME
#define N_NAMES(names) (int)(sizeof names / sizeof names[0])

/* The hyper-parameters that are words, after those of train_hyper_fields. */
static const schema_field hyper_word_fields[] = {
    S_BITS(train_hyper, "targets", targets, lora_target_names, LIN_COUNT),
    S_NAME(train_hyper, "schedule", schedule, schedule_names, N_NAMES(schedule_names), 0),
    S_NAME(train_hyper, "init", init, init_names, N_NAMES(init_names), 0),
    S_NAME(train_hyper, "chat_template", chat_template, chat_names, N_NAMES(chat_names), 0),
};
static const schema hyper_words = SCHEMA(hyper_word_fields);

static void pack_hyper(msgpack_packer *pk, const void *value)
{
    const train_hyper *h = value;
    msgpack_pack_map(pk, train_hyper_n_fields + schema_count(&hyper_words, SCHEMA_WIRE));
    for (size_t i = 0; i < train_hyper_n_fields; i++) {
        const train_hyper_field *f = &train_hyper_fields[i];
        const char *p = (const char *)h + f->offset;
        if (f->kind == HYPER_INT)
            mp_kv_i64(pk, f->name, *(const int *)p);
        else if (f->kind == HYPER_U64)
            mp_kv_u64(pk, f->name, *(const uint64_t *)p);
        else if (f->kind == HYPER_BOOL)
            mp_kv_bool(pk, f->name, *(const int *)p);
        else
            mp_kv_f64(pk, f->name, *(const float *)p);
    }
    schema_pack_entries(pk, &hyper_words, h, SCHEMA_WIRE);
}

/* The hyper map of job.submit over the defaults. ERR_NONE, or the error code with a message
 * naming the field. */
qd_error job_parse_hyper(const msgpack_object *m, const llama_config *c, train_hyper *h, char *err,
                            size_t errlen)
{
    train_hyper_default(h, c);
    for (uint32_t i = 0; m && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        char key[40] = "?";
        if (k->type == MSGPACK_OBJECT_STR)
            snprintf(key, sizeof key, "%.*s", (int)(k->via.str.size < 32 ? k->via.str.size : 32), k->via.str.ptr);
        const train_hyper_field *f = NULL;
        for (size_t n = 0; n < train_hyper_n_fields && !f; n++)
            if (mp_is_str(k, train_hyper_fields[n].name))
                f = &train_hyper_fields[n];
        double x;
        if (f && f->kind == HYPER_BOOL) {
            if (v->type != MSGPACK_OBJECT_BOOLEAN) {
                snprintf(err, errlen, "hyper.%s: must be a boolean", key);
                return ERR_BAD_REQUEST;
            }
            *(int *)((char *)h + f->offset) = v->via.boolean;
        } else if (f) {
            char *p = (char *)h + f->offset;
            if (!mp_number(v, &x)) {
                snprintf(err, errlen, "hyper.%s: must be a number", key);
                return ERR_BAD_REQUEST;
            }
            if (f->kind != HYPER_FLOAT && (x != floor(x) || x < (f->kind == HYPER_U64 ? 0 : -2147483648.0) ||
                                           x > (f->kind == HYPER_U64 ? 1.8e19 : 2147483647.0))) {
                snprintf(err, errlen, "hyper.%s: %g is not an integer in range", key, x);
                return ERR_INVALID_ARGUMENT;
            }
            if (f->kind == HYPER_INT)
                *(int *)p = (int)x;
            else if (f->kind == HYPER_U64)
                *(uint64_t *)p = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : (uint64_t)x;
            else
                *(float *)p = (float)x;
        } else if (mp_is_str(k, "targets")) {
            char list[512] = "";
            size_t used = 0;
            if (v->type == MSGPACK_OBJECT_STR) {
                snprintf(list, sizeof list, "%.*s", (int)(v->via.str.size < 500 ? v->via.str.size : 500), v->via.str.ptr);
            } else if (v->type == MSGPACK_OBJECT_ARRAY) {
                for (uint32_t j = 0; j < v->via.array.size; j++) {
                    const msgpack_object *t = &v->via.array.ptr[j];
                    if (t->type != MSGPACK_OBJECT_STR) {
                        snprintf(err, errlen, "hyper.targets[%u]: must be a string", j);
                        return ERR_BAD_REQUEST;
                    }
                    used += (size_t)snprintf(list + used, used < sizeof list ? sizeof list - used : 0, "%s%.*s",
                                             j ? "," : "", (int)(t->via.str.size < 40 ? t->via.str.size : 40),
                                             t->via.str.ptr);
                }
            } else {
                snprintf(err, errlen, "hyper.targets: must be \"all-linear\" or a list of names");
                return ERR_BAD_REQUEST;
            }
            if (train_parse_targets(list, &h->targets, err, errlen) < 0) {
                char tmp[512];
                snprintf(tmp, sizeof tmp, "hyper.%s", err);
                snprintf(err, errlen, "%s", tmp);
                return ERR_INVALID_ARGUMENT;
            }
        } else if (mp_is_str(k, "schedule") || mp_is_str(k, "init") ||
                   mp_is_str(k, "chat_template")) { /* method is job.submit's own */
            const train_vocab *vocab = train_vocab_of(k->via.str.ptr, k->via.str.size);
            if (v->type != MSGPACK_OBJECT_STR) {
                snprintf(err, errlen, "hyper.%s: must be a string", key);
                return ERR_BAD_REQUEST;
            }
            if (train_vocab_set(vocab, h, v->via.str.ptr, v->via.str.size) < 0) {
                char choices[128];
                train_vocab_choices(vocab, choices, sizeof choices);
                snprintf(err, errlen, "hyper.%s: must be %s", key, choices);
                return ERR_INVALID_ARGUMENT;
            }
        } else {
            snprintf(err, errlen, "hyper.%s: no such hyper-parameter", key);
            return ERR_BAD_REQUEST;
        }
    }
    train_hyper_fill(h, mp_get(m, "steps") != NULL, mp_get(m, "warmup") != NULL);
    char why[400];
    if (train_hyper_check(h, c, why, sizeof why) < 0) {
        snprintf(err, errlen, "hyper.%s", why);
        return ERR_INVALID_ARGUMENT;
    }
    return ERR_NONE;
}

/* ---- records ---- */

/* The stored hyper map, checked as job.submit checks it. The method is a field of the
 * record of its own, read before. */
static int unpack_hyper(const msgpack_object *o, void *value, const void *cfg, char *err, size_t errlen)
{
    train_hyper *h = value;
    train_method method = h->method;
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, errlen, "not a map");
        return -1;
    }
    qd_error code = job_parse_hyper(o, cfg, h, err, errlen);
    h->method = method;
    return code ? -1 : 0;
}

/* {file_id, bytes, format} of a job's data; nil when there is none. */
#define DATA_NAME_(e, name) [e] = name,
static const char *const data_formats[] = {JOB_DATA_FORMATS(DATA_NAME_)};
#undef DATA_NAME_
static const schema_field data_fields[] = {
    S_FIELD(job_data, "file_id", SK_CHARS, file_id, SF_REQUIRED),
    S_FIELD(job_data, "bytes", SK_UINT, bytes, SF_REQUIRED),
    S_NAME(job_data, "format", format, data_formats, N_NAMES(data_formats), 0),
};
static const schema data_record = SCHEMA(data_fields);

#define J(key, kind, member, flags) S_FIELD(job, key, kind, member, flags)
static const schema_field job_metrics_fields[] = {
    J("ppl_base", SK_REAL, ppl_base, 0),
    J("ppl_adapter", SK_REAL, ppl_adapter, 0),
};
static const schema job_metrics = SCHEMA(job_metrics_fields);
static const schema_field job_base_fields[] = {
    J("fingerprint", SK_UINT, base_fp, 0),
    J("quant", SK_CHARS, base_quant, 0),
    J("model", SK_STR, base_model, 0),
};
static const schema job_base = SCHEMA(job_base_fields);

/* The job record of the protocol, also as stored (with clean_stop). Pack it under the jobs
 * lock. A record keeps these keys and types: the stores of earlier versions load. */
static const schema_field job_fields[] = {
    J("job_id", SK_UINT, id, SF_REQUIRED),
    J("adapter", SK_CHARS, adapter, 0),
    J("adapter_version", SK_UINT, adapter_version, SF_NIL_IF_ZERO), /* none before success */
    S_NAME(job, "method", hyper.method, method_names, N_NAMES(method_names), SF_REQUIRED),
    S_NAME(job, "state", state, job_state_names, JOB_N_STATES, 0),
    J("created_at", SK_REAL, created_at, 0),
    J("started_at", SK_REAL, started_at, 0),
    J("finished_at", SK_REAL, finished_at, 0),
    J("step", SK_INT, step, 0),
    J("total_steps", SK_INT, hyper.steps, SF_DERIVED),
    J("loss", SK_REAL, loss, 0),
    J("eval_loss", SK_REAL, eval_loss, 0),
    J("tokens_per_s", SK_REAL, tokens_per_s, 0),
    J("best_step", SK_INT, best_step, SF_NIL_IF_ZERO),
    J("stopped_early", SK_BOOL, stopped_early, 0),
    J("error", SK_STR, error, 0),
    S_CUSTOM(job, "hyper", hyper, pack_hyper, unpack_hyper, SF_REQUIRED),
    J("resumed", SK_INT, resumed, 0),
    S_GROUP("metrics", &job_metrics),
    J("starts", SK_INT, starts, 0),
    J("crashes", SK_INT, crashes, 0),
    S_GROUP("base", &job_base),
    S_MAP(job, "data", data, &data_record, SF_NIL_IF_ZERO | SF_REQUIRED),
    S_MAP(job, "eval_data", eval, &data_record, SF_NIL_IF_ZERO),
    J("clean_stop", SK_BOOL, clean_stop, SF_STORED),
    S_CUSTOM(job, "history", history, job_history_pack, job_history_unpack, SF_STORED),
};
const schema job_record = SCHEMA(job_fields);

/* The event {type: "state", ...} of a job as it stands. Under the jobs lock. */
static const schema_field state_event_fields[] = {
    S_CONST("type", "state"),
    J("job_id", SK_UINT, id, 0),
    S_NAME(job, "state", state, job_state_names, JOB_N_STATES, 0),
    J("step", SK_INT, step, 0),
    J("total_steps", SK_INT, hyper.steps, 0),
    J("error", SK_STR, error, 0),
};
const schema state_event = SCHEMA(state_event_fields);

/* job.submit's answer. */
static const schema_field submitted_fields[] = {
    J("job_id", SK_UINT, id, 0),
    S_NAME(job, "state", state, job_state_names, JOB_N_STATES, 0),
};
const schema submitted = SCHEMA(submitted_fields);
#undef J

/* A stored record back into a job (at start). */
job *job_unpack(qd *d, const void *rec, size_t len, char *err, size_t errlen)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    job *j = calloc(1, sizeof *j);
    snprintf(err, errlen, "out of memory");
    if (!j || mp_check(rec, len, err, errlen) < 0 ||
        msgpack_unpack_next(&u, rec, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        free(j);
        msgpack_unpacked_destroy(&u);
        return NULL;
    }
    schema_clear(&job_record, j);
    j->state = JOB_FAILED; /* unless the record names one it knows */
    int rc = schema_unpack(&job_record, &u.data, j, &d->model.cfg, err, errlen);
    msgpack_unpacked_destroy(&u);
    if (rc == 0 && (j->id == 0 || !store_file_id_valid(j->data.file_id) ||
                    (j->eval.file_id[0] && !store_file_id_valid(j->eval.file_id)))) {
        snprintf(err, errlen, "record lacks its id or a valid data file id");
        rc = -1;
    }
    if (rc < 0) {
        free(j->error), free(j->base_model), job_history_free(&j->history), free(j);
        return NULL;
    }
    return j;
}

#define N(key, kind, member) S_FIELD(job_news, key, kind, member, 0)
/* what every one of these events begins with */
#define EVENT_HEAD(type) S_CONST("type", type), N("job_id", SK_UINT, job_id), N("step", SK_INT, pr.step)
static const schema_field progress_event_fields[] = {
    EVENT_HEAD("progress"),
    N("total_steps", SK_INT, pr.total_steps),
    N("loss", SK_REAL, pr.loss),
    N("lr", SK_REAL, pr.lr),
    N("grad_norm", SK_REAL, pr.grad_norm),
    N("tokens_per_s", SK_REAL, pr.tokens_per_s),
    N("eta_s", SK_REAL, eta_s),
};
const schema progress_event = SCHEMA(progress_event_fields);
static const schema_field eval_event_fields[] = {
    EVENT_HEAD("eval"),
    N("eval_loss", SK_REAL, pr.eval_loss),
    N("ppl", SK_REAL, ppl),
};
const schema eval_event = SCHEMA(eval_event_fields);
static const schema_field checkpoint_event_fields[] = {
    EVENT_HEAD("checkpoint"),
};
const schema checkpoint_event = SCHEMA(checkpoint_event_fields);
static const schema_field warning_event_fields[] = {
    EVENT_HEAD("warning"),
    N("message", SK_STR, message),
};
const schema warning_event = SCHEMA(warning_event_fields);
#undef EVENT_HEAD
#undef N
