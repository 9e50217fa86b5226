/* jobs.c: fine-tune jobs. A FIFO of jobs persisted in the store, and runner threads
 * (--max-running, one by default) that each train one job at a time through
 * adapters/train.c, checkpointing as they go. Jobs share the frozen base read-only; each
 * has its own trainer, so two runners never touch the same memory.
 * Watchers (job.watch) live on the loop; the runner reaches them through qd_call.
 *
 * Life of a job: queued -> running -> succeeded | failed | cancelled. A job the daemon
 * was running when it died (or was stopped) is still `running` in the store: at start it
 * is resumed from its last checkpoint, which holds the adapter, the AdamW moments, the
 * step and the data sampler, so it ends as an uninterrupted run would. On success the
 * adapter is published as a new version, the record updated and the checkpoint dropped in
 * one transaction.
 *
 * Every change of state goes through job_move under the jobs lock, which checks the state
 * it moves from: a cancel and a runner's claim of the same queued job cannot both win.
 *
 * What a start trusts: the record counts the unclean ends of a running job (written
 * before training begins, so a crash leaves the count behind); past --max-job-crashes the
 * job is failed instead of resumed, so a job that kills the daemon cannot loop it. A
 * checkpoint written since the last start resets the count (a job that progresses is
 * not a crash loop). The base's fingerprint is in the record from submit on: a job never
 * resumes on another base. A checkpoint or a publish the store cannot take (disk full, the
 * --db-max-mb cap) loses nothing: the previous checkpoint stands and training goes on; a
 * publish is retried with backoff while the job stays running, and at the next start if
 * the daemon stops first. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "generate.h"
#include "mapfile.h"
#include "qlorad.h"
#include "train.h"
#include "workspace.h"

const char *const job_state_names[JOB_N_STATES] = {
#define JOB_STATE_NAME(e, name) [JOB_##e] = name,
    JOB_STATES(JOB_STATE_NAME)
#undef JOB_STATE_NAME
};

int job_state_parse(const msgpack_object *o)
{
    for (int s = 0; s < JOB_N_STATES; s++)
        if (mp_is_str(o, job_state_names[s]))
            return s;
    return -1;
}

typedef struct job {
    uint64_t id;
    char adapter[STORE_NAME_MAX + 1];
    uint32_t adapter_version;
    train_hyper hyper;
    job_state state;
    double created_at, started_at, finished_at; /* NAN: not yet */
    int step, resumed;
    double loss, eval_loss, tokens_per_s, ppl_base, ppl_adapter;
    char *error;
    int starts;              /* times a runner began it */
    int crashes;             /* unclean ends since its last checkpoint */
    int clean_stop;          /* its last run ended with a checkpoint at shutdown */
    uint64_t base_fp;        /* the base it was submitted on: fingerprint, quantization, model */
    char base_quant[48];
    char *base_model;
    job_data data, eval;     /* stored files (eval.file_id "": none); the bytes stay in the store */
    volatile int cancel;
    int claimed;             /* a runner has it (under the lock) */
    struct job *next;
} job;

typedef struct watcher {
    uint64_t conn_id, req_id, job_id;
    int sent_state;          /* the last state event it got: a change is told once */
    struct watcher *next;
} watcher;

struct jobs {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    job *head, *tail;        /* in id order */
    job *deleted;            /* deleted while a runner still held them (job.delete) */
    int stop, n_threads, n_exited;
    pthread_t *threads;
    void (*stopped)(qd *d);
    watcher *watchers;       /* loop thread only */
};

/* ---- hyper-parameters on the wire ---- */

/* The names of train.h's vocabularies, by value. */
#define TRAIN_NAME(e, name) [e] = name,
static const char *const method_names[] = {TRAIN_METHODS(TRAIN_NAME)};
static const char *const schedule_names[] = {TRAIN_SCHEDULES(TRAIN_NAME)};
static const char *const init_names[] = {TRAIN_INITS(TRAIN_NAME)};
#undef TRAIN_NAME
#define N_NAMES(names) (int)(sizeof names / sizeof names[0])

/* The hyper-parameters that are words, after those of train_hyper_fields. */
static const schema_field hyper_word_fields[] = {
    S_BITS(train_hyper, "targets", targets, lora_target_names, LIN_COUNT),
    S_NAME(train_hyper, "schedule", schedule, schedule_names, N_NAMES(schedule_names), 0),
    S_NAME(train_hyper, "init", init, init_names, N_NAMES(init_names), 0),
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
static qd_error parse_hyper(const msgpack_object *m, const llama_config *c, train_hyper *h, char *err,
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
        } else if (mp_is_str(k, "schedule") || mp_is_str(k, "init")) {
            int sched = mp_is_str(k, "schedule");
            if (v->type != MSGPACK_OBJECT_STR) {
                snprintf(err, errlen, "hyper.%s: must be a string", key);
                return ERR_BAD_REQUEST;
            }
            const train_vocab *vocab = sched ? &train_schedules : &train_inits;
            int value = train_vocab_parse(vocab, v->via.str.ptr, v->via.str.size);
            if (value < 0) {
                char choices[128];
                train_vocab_choices(vocab, choices, sizeof choices);
                snprintf(err, errlen, "hyper.%s: must be %s", key, choices);
                return ERR_INVALID_ARGUMENT;
            }
            if (sched)
                h->schedule = (train_schedule)value;
            else
                h->init = (train_init)value;
        } else {
            snprintf(err, errlen, "hyper.%s: no such hyper-parameter", key);
            return ERR_BAD_REQUEST;
        }
    }
    if (!mp_get(m, "warmup") && h->warmup > h->steps) /* the default warmup fits short runs */
        h->warmup = h->steps;
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
    qd_error code = parse_hyper(o, cfg, h, err, errlen);
    h->method = method;
    return code ? -1 : 0;
}

/* {file_id, bytes, format} of a job's data; nil when there is none. */
static const char *const data_formats[] = {"text", "tokens"}; /* by job_data.tokens */
static const schema_field data_fields[] = {
    S_FIELD(job_data, "file_id", SK_CHARS, file_id, SF_REQUIRED),
    S_FIELD(job_data, "bytes", SK_UINT, bytes, SF_REQUIRED),
    S_NAME(job_data, "format", tokens, data_formats, N_NAMES(data_formats), 0),
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
};
static const schema job_record = SCHEMA(job_fields);

/* The event {type: "state", ...} of a job as it stands. Under the jobs lock. */
static const schema_field state_event_fields[] = {
    S_CONST("type", "state"),
    J("job_id", SK_UINT, id, 0),
    S_NAME(job, "state", state, job_state_names, JOB_N_STATES, 0),
    J("step", SK_INT, step, 0),
    J("total_steps", SK_INT, hyper.steps, 0),
    J("error", SK_STR, error, 0),
};
static const schema state_event = SCHEMA(state_event_fields);

/* job.submit's answer. */
static const schema_field submitted_fields[] = {
    J("job_id", SK_UINT, id, 0),
    S_NAME(job, "state", state, job_state_names, JOB_N_STATES, 0),
};
static const schema submitted = SCHEMA(submitted_fields);
#undef J

/* A stored record back into a job (at start). */
static job *unpack_job(qd *d, const void *rec, size_t len, char *err, size_t errlen)
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
        free(j->error), free(j->base_model), free(j);
        return NULL;
    }
    return j;
}

static void job_free(job *j)
{
    free(j->error);
    free(j->base_model);
    free(j);
}

/* Packs the stored record (under the lock) into *rec. */
static char *stored_record(jobs *J, const job *j, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pthread_mutex_lock(&J->lock);
    schema_pack(&pk, &job_record, j, SCHEMA_STORED);
    pthread_mutex_unlock(&J->lock);
    *len = sb.size;
    return msgpack_sbuffer_release(&sb);
}

static int persist(qd *d, const job *j)
{
    size_t len;
    char *rec = stored_record(d->jobs, j, &len), err[512];
    int rc = rec ? store_job_put(d->db, j->id, rec, len, err, sizeof err) : -1;
    if (rc < 0)
        qd_log(LOG_ERROR, "job %llu: cannot store its record: %s", (unsigned long long)j->id, rec ? err : "out of memory");
    free(rec);
    return rc;
}

static job *find_job(jobs *J, uint64_t id)
{
    for (job *j = J->head; j; j = j->next)
        if (j->id == id)
            return j;
    return NULL;
}

/* ---- events to watchers (loop thread) ---- */

typedef struct {
    uint64_t job_id;
    int final, state; /* state: of a state event, else -1 */
    size_t len;
    char packed[];
} job_event;

static void deliver_event(qd *d, void *arg)
{
    job_event *e = arg;
    jobs *J = d->jobs;
    for (watcher **w = &J->watchers; *w;) {
        watcher *x = *w;
        if (x->job_id != e->job_id) {
            w = &x->next;
            continue;
        }
        if (!e->final) {
            /* a watch that began between a change and its event has seen the state already */
            if (e->state < 0 || e->state != x->sent_state)
                reply_event(d, x->conn_id, x->req_id, e->packed, e->len);
            if (e->state >= 0)
                x->sent_state = e->state;
            w = &x->next;
            continue;
        }
        req r = {.d = d, .conn_id = x->conn_id, .id = x->req_id};
        mp_out o;
        reply_begin(&r, &o);
        msgpack_sbuffer_write(&o.sb, e->packed, e->len);
        reply_end(&r, &o);
        *w = x->next;
        free(x);
    }
    free(e);
}

/* Posts an event map (or, final, the job record that ends the watch); state: the job
 * state a state event tells, else -1. */
static void post_event(qd *d, uint64_t job_id, int final, int state, mp_out *o)
{
    size_t len = o->sb.size - 4;
    job_event *e = malloc(sizeof *e + len);
    if (e) {
        e->job_id = job_id, e->final = final, e->state = state, e->len = len;
        memcpy(e->packed, o->sb.data + 4, len);
        qd_call(d, deliver_event, e);
    }
    mp_out_free(o);
}

static void post_state(qd *d, job *j)
{
    mp_out o;
    mp_out_init(&o);
    pthread_mutex_lock(&d->jobs->lock);
    schema_pack(&o.pk, &state_event, j, SCHEMA_WIRE);
    int ended = job_state_final(j->state), state = (int)j->state;
    mp_out rec;
    mp_out_init(&rec);
    if (ended)
        schema_pack(&rec.pk, &job_record, j, SCHEMA_WIRE);
    pthread_mutex_unlock(&d->jobs->lock);
    post_event(d, j->id, 0, state, &o);
    if (ended)
        post_event(d, j->id, 1, -1, &rec);
    else
        mp_out_free(&rec);
}

/* ---- the runner ---- */

typedef struct {
    qd *d;
    job *j;
    double last_progress;
} run_ctx;

#define FROM(s) (1u << (s))

/* The one place a job's state changes (under the jobs lock): to `to` if the job is in one
 * of the states of `from` (FROM bits), with error as its message (NULL: none). 1 if it
 * moved, 0 if another thread moved it first. */
static int job_move(job *j, unsigned from, job_state to, const char *error)
{
    if (!(FROM(j->state) & from))
        return 0;
    char *e = error ? strdup(error) : NULL;
    j->state = to;
    if (job_state_final(to))
        j->finished_at = now_s();
    free(j->error);
    j->error = e;
    return 1;
}

/* Ends a job in state (from one of `from`), stores and tells it. 1 if it ended it. */
static int finish(qd *d, job *j, unsigned from, job_state state, const char *error)
{
    pthread_mutex_lock(&d->jobs->lock);
    int moved = job_move(j, from, state, error);
    pthread_mutex_unlock(&d->jobs->lock);
    if (!moved)
        return 0;
    persist(d, j);
    post_state(d, j);
    qd_log(state == JOB_FAILED ? LOG_WARN : LOG_INFO, "job %llu %s%s%s", (unsigned long long)j->id,
           job_state_names[state], error ? ": " : "", error ? error : "");
    return 1;
}

/* The runner's failures: a job it runs is running. */
static void fail(qd *d, job *j, const char *error)
{
    finish(d, j, FROM(JOB_RUNNING), JOB_FAILED, error);
}

/* What the other events of a running job tell, each event some of it. */
typedef struct {
    uint64_t job_id;
    train_progress pr;
    double eta_s, ppl;
    const char *message;
} job_news;

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
static const schema progress_event = SCHEMA(progress_event_fields);
static const schema_field eval_event_fields[] = {
    EVENT_HEAD("eval"),
    N("eval_loss", SK_REAL, pr.eval_loss),
    N("ppl", SK_REAL, ppl),
};
static const schema eval_event = SCHEMA(eval_event_fields);
static const schema_field checkpoint_event_fields[] = {
    EVENT_HEAD("checkpoint"),
};
static const schema checkpoint_event = SCHEMA(checkpoint_event_fields);
static const schema_field warning_event_fields[] = {
    EVENT_HEAD("warning"),
    N("message", SK_STR, message),
};
static const schema warning_event = SCHEMA(warning_event_fields);
#undef EVENT_HEAD
#undef N

static void post_news(qd *d, const schema *event, const job_news *news)
{
    mp_out o;
    mp_out_init(&o);
    schema_pack(&o.pk, event, news, SCHEMA_WIRE);
    post_event(d, news->job_id, 0, -1, &o);
}

/* A warning the job's watchers get as an event {type: "warning", job_id, step, message};
 * the log gets it too. */
static void post_warning(qd *d, job *j, int step, const char *msg)
{
    job_news news = {.job_id = j->id, .pr.step = step, .message = msg};
    qd_log(LOG_WARN, "job %llu: %s", (unsigned long long)j->id, msg);
    post_news(d, &warning_event, &news);
}

/* The trainer's state and the job's record in one transaction. When the store cannot take
 * them nothing of it is written: the previous checkpoint and record stand, the job's
 * watchers and the log get a warning, and the next checkpoint tries again. */
static int save_checkpoint(qd *d, job *j, const trainer *t)
{
    jobs *J = d->jobs;
    /* progress since the last start: whatever killed the daemon before did not kill it at
     * once, so the count of unclean ends starts again (in memory once stored) */
    pthread_mutex_lock(&J->lock);
    job snap = *j;
    pthread_mutex_unlock(&J->lock);
    snap.crashes = 0;
    size_t len = trainer_state_bytes(t), rec_len;
    char *state = malloc(len), err[512] = "out of memory";
    char *rec = stored_record(J, &snap, &rec_len);
    int rc = -1;
    if (state && rec) {
        trainer_state_save(t, state);
        rc = store_checkpoint_put(d->db, j->id, state, len, rec, rec_len, err, sizeof err);
    }
    free(state);
    free(rec);
    if (rc < 0) {
        char msg[700];
        snprintf(msg, sizeof msg, "checkpoint at step %d not saved (%s); the previous one stands, the next "
                 "checkpoint tries again", t->step, err);
        post_warning(d, j, t->step, msg);
        return -1;
    }
    pthread_mutex_lock(&J->lock);
    j->crashes = 0;
    pthread_mutex_unlock(&J->lock);
    return 0;
}

static int on_train_event(void *p, trainer *t, train_event ev, const train_progress *pr)
{
    run_ctx *c = p;
    qd *d = c->d;
    job *j = c->j;
    jobs *J = d->jobs;
    job_news news = {.job_id = j->id, .pr = *pr};
    if (ev == TRAIN_EV_STEP) {
        pthread_mutex_lock(&J->lock);
        j->step = pr->step, j->loss = pr->loss, j->tokens_per_s = pr->tokens_per_s;
        pthread_mutex_unlock(&J->lock);
        double now = now_s();
        /* every step when steps are slow; ten a second at most when they are fast */
        if (now - c->last_progress < 0.1 && pr->step != pr->total_steps)
            return 0;
        c->last_progress = now;
        double per_step = (double)j->hyper.batch * j->hyper.seq_len * j->hyper.grad_accum / pr->tokens_per_s;
        news.eta_s = per_step * (pr->total_steps - pr->step);
        post_news(d, &progress_event, &news);
    } else if (ev == TRAIN_EV_EVAL) {
        pthread_mutex_lock(&J->lock);
        j->eval_loss = pr->eval_loss;
        pthread_mutex_unlock(&J->lock);
        news.ppl = exp(pr->eval_loss);
        post_news(d, &eval_event, &news);
    } else if (save_checkpoint(d, j, t) == 0) { /* else training goes on */
        news.pr.step = t->step;
        post_news(d, &checkpoint_event, &news);
    }
    return 0;
}

typedef struct {
    jobs *J;
    job *j;
    uint32_t version;
    double finished_at;
} publish_ctx;

/* Inside the publishing transaction: the record as succeeded with its version. The job
 * itself changes only once the transaction has committed. */
static void *succeeded_record(void *p, uint32_t version, size_t *len)
{
    publish_ctx *c = p;
    pthread_mutex_lock(&c->J->lock);
    job done = *c->j;
    pthread_mutex_unlock(&c->J->lock);
    done.state = JOB_SUCCEEDED, done.adapter_version = version, done.finished_at = now_s(), done.error = NULL;
    c->version = version;
    c->finished_at = done.finished_at;
    return stored_record(c->J, &done, len);
}

/* Shutdown: the progress kept for the next start, which then knows the run ended cleanly.
 * Without a checkpoint (none written, or the store refused it) the record still says so. */
static void clean_stop(qd *d, job *j, trainer *t)
{
    jobs *J = d->jobs;
    pthread_mutex_lock(&J->lock);
    j->clean_stop = 1;
    pthread_mutex_unlock(&J->lock);
    if (t->step == 0 || save_checkpoint(d, j, t) < 0)
        persist(d, j);
    qd_log(LOG_INFO, "job %llu: stopped at step %d; it resumes at the next start", (unsigned long long)j->id, t->step);
}

/* Publishes the trained adapter, with the record as succeeded, in one transaction. When
 * the store cannot take it (disk full, the cap) nothing of it is written: the job stays
 * running with a message saying why and tries again with backoff (1 s doubling to a
 * minute), until it succeeds, is cancelled, or the daemon stops (then the next start
 * resumes from the last checkpoint and publishes). */
static void publish(qd *d, job *j, trainer *t, store_adapter_info *info)
{
    jobs *J = d->jobs;
    char err[1024];
    for (int wait_s = 1;; wait_s = wait_s < 32 ? wait_s * 2 : 60) {
        publish_ctx pc = {J, j, 0, NAN};
        if (store_adapter_put(d->db, info, &t->adapter, succeeded_record, &pc, err, sizeof err) == 0) {
            pthread_mutex_lock(&J->lock);
            job_move(j, FROM(JOB_RUNNING), JOB_SUCCEEDED, NULL);
            j->adapter_version = pc.version, j->finished_at = pc.finished_at;
            pthread_mutex_unlock(&J->lock);
            qd_log(LOG_INFO, "job %llu succeeded: adapter %s@%u, eval ppl %.4f (base %.4f)", (unsigned long long)j->id,
                   j->adapter, pc.version, j->ppl_adapter, j->ppl_base);
            post_state(d, j);
            return;
        }
        char msg[1200];
        snprintf(msg, sizeof msg, "trained, but the adapter could not be published (%s); the job stays running and "
                 "tries again in %d s", err, wait_s);
        pthread_mutex_lock(&J->lock);
        job_move(j, FROM(JOB_RUNNING), JOB_RUNNING, msg);
        pthread_mutex_unlock(&J->lock);
        persist(d, j); /* the message, if the store takes that much; the state is running either way */
        post_warning(d, j, t->step, msg);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait_s;
        pthread_mutex_lock(&J->lock);
        while (!j->cancel && pthread_cond_timedwait(&J->wake, &J->lock, &until) == 0)
            ;
        int cancel = j->cancel;
        pthread_mutex_unlock(&J->lock);
        if (cancel && J->stop) {
            clean_stop(d, j, t);
            return;
        }
        if (cancel) {
            finish(d, j, FROM(JOB_RUNNING), JOB_CANCELLED, NULL);
            return;
        }
    }
}

static void run_job(qd *d, job *j)
{
    jobs *J = d->jobs;
    char err[1024];
    int *ids = NULL, *eval_ids = NULL, have_teacher = 0;
    size_t n = 0, n_eval = 0;
    llama_model teacher;
    trainer t;
    memset(&t, 0, sizeof t);
    /* the bytes come from the store at every (re)start, checked against their id */
    if (files_load_tokens(d, &j->data, "data", &ids, &n, err, sizeof err) < 0 ||
        (j->eval.file_id[0] && files_load_tokens(d, &j->eval, "eval_data", &eval_ids, &n_eval, err, sizeof err) < 0)) {
        fail(d, j, err);
        goto done;
    }
    if (j->hyper.method == TRAIN_RECOVERY) {
        if (llama_load(&teacher, d->model_dir, qt_spec_default(QT_F32), err, sizeof err) < 0) {
            fail(d, j, err);
            goto done;
        }
        have_teacher = 1;
    }
    if (trainer_init(&t, &d->model, have_teacher ? &teacher : NULL, ids, n, eval_ids, n_eval, &j->hyper, err,
                     sizeof err) < 0) {
        fail(d, j, err);
        goto done;
    }
    void *state = NULL;
    size_t state_len;
    int nf = 0;
    if (store_checkpoint_get(d->db, j->id, &state, &state_len, &nf, err, sizeof err) == 0) {
        int rc = trainer_state_load(&t, state, state_len, err, sizeof err);
        free(state);
        if (rc < 0) {
            fail(d, j, err);
            goto done;
        }
        pthread_mutex_lock(&J->lock);
        j->resumed++;
        j->step = t.step;
        pthread_mutex_unlock(&J->lock);
        qd_log(LOG_INFO, "job %llu: resumed from its checkpoint at step %d", (unsigned long long)j->id, t.step);
        persist(d, j);
    } else if (!nf) {
        fail(d, j, err);
        goto done;
    }
    if (eval_ids && isnan(j->ppl_base)) {
        double nll;
        size_t np;
        if (llama_eval_stream(&d->model, NULL, eval_ids, n_eval, j->hyper.seq_len, &nll, &np, err, sizeof err) < 0) {
            fail(d, j, err);
            goto done;
        }
        pthread_mutex_lock(&J->lock);
        j->ppl_base = exp(nll / (double)np);
        pthread_mutex_unlock(&J->lock);
    }
    run_ctx ctx = {d, j, 0};
    int rc = train_run(&t, on_train_event, &ctx, &j->cancel, err, sizeof err);
    if (rc < 0) {
        fail(d, j, err);
    } else if (rc == 1 && J->stop) {
        clean_stop(d, j, &t);
    } else if (rc == 1) {
        finish(d, j, FROM(JOB_RUNNING), JOB_CANCELLED, NULL);
    } else {
        store_adapter_info info;
        memset(&info, 0, sizeof info);
        snprintf(info.name, sizeof info.name, "%s", j->adapter);
        info.rank = t.adapter.rank, info.alpha = t.adapter.alpha, info.rslora = t.adapter.rslora;
        info.targets = t.adapter.targets;
        info.base_fingerprint = d->model.fingerprint;
        info.base = d->model.cfg;
        info.job_id = j->id;
        info.eval_loss = j->eval_loss;
        info.ppl_base = j->ppl_base;
        info.ppl_adapter = exp(j->eval_loss);
        pthread_mutex_lock(&J->lock);
        j->ppl_adapter = info.ppl_adapter;
        pthread_mutex_unlock(&J->lock);
        publish(d, j, &t, &info);
    }
done:
    trainer_free(&t);
    if (have_teacher)
        llama_free(&teacher);
    free(ids);
    free(eval_ids);
}

static void runner_stopped(qd *d, void *arg)
{
    (void)arg;
    if (d->jobs->stopped)
        d->jobs->stopped(d);
}

/* The base as a phrase for messages: "fingerprint F (nf4 block 64, model DIR)". */
static void base_phrase(uint64_t fp, const char *quant, const char *model, char *out, size_t len)
{
    snprintf(out, len, "%016llx (%s, model %s)", (unsigned long long)fp, quant && *quant ? quant : "?",
             model && *model ? model : "?");
}

static void base_quant(const llama_model *m, char *out, size_t len)
{
    snprintf(out, len, "%s block %d%s", qt_format_name(m->spec.format), m->spec.block,
             m->spec.double_quant ? " double-quant" : "");
}

/* Whether the job about to be claimed must fail instead (under the lock), and why: it
 * was submitted on another base, or it was running each of the last --max-job-crashes
 * times the daemon died. Counts this start's predecessor as an unclean end when it was. */
static int refuse_start(qd *d, job *j, int resuming, char *why, size_t len)
{
    if (j->base_fp && j->base_fp != d->model.fingerprint) {
        char was[600], now[600], q[48];
        base_quant(&d->model, q, sizeof q);
        base_phrase(j->base_fp, j->base_quant, j->base_model, was, sizeof was);
        base_phrase(d->model.fingerprint, q, d->model_dir, now, sizeof now);
        snprintf(why, len, "the base changed since the job was submitted: it was %s, it is now %s; the job "
                 "does not resume on another base", was, now);
        return 1;
    }
    if (resuming && !j->clean_stop && ++j->crashes >= d->max_crashes) {
        snprintf(why, len, "the daemon died %d times while running this job (at step %d); not resumed again",
                 j->crashes, j->step);
        return 1;
    }
    return 0;
}

static void *runner(void *p)
{
    qd *d = p;
    jobs *J = d->jobs;
    pthread_mutex_lock(&J->lock);
    for (;;) {
        job *next = NULL;
        while (!J->stop) {
            for (job *j = J->head; j && !next; j = j->next) /* interrupted runs first, then FIFO */
                if (j->state == JOB_RUNNING && !j->claimed)
                    next = j;
            for (job *j = J->head; j && !next; j = j->next)
                if (j->state == JOB_QUEUED)
                    next = j;
            if (next)
                break;
            pthread_cond_wait(&J->wake, &J->lock);
        }
        if (J->stop)
            break;
        int resuming = next->state == JOB_RUNNING;
        char why[1400];
        if (refuse_start(d, next, resuming, why, sizeof why)) {
            job_move(next, FROM(JOB_QUEUED) | FROM(JOB_RUNNING), JOB_FAILED, why);
            pthread_mutex_unlock(&J->lock);
            persist(d, next);
            post_state(d, next);
            qd_log(LOG_WARN, "job %llu failed: %s", (unsigned long long)next->id, why);
            pthread_mutex_lock(&J->lock);
            continue;
        }
        job_move(next, FROM(JOB_QUEUED) | FROM(JOB_RUNNING), JOB_RUNNING, NULL); /* an old message is stale */
        if (isnan(next->started_at))
            next->started_at = now_s();
        next->claimed = 1;
        next->starts++;
        next->clean_stop = 0; /* until this run ends cleanly */
        pthread_mutex_unlock(&J->lock);
        qd_log(LOG_INFO, "job %llu %s: %s -> %s", (unsigned long long)next->id, resuming ? "resuming" : "started",
               train_vocab_name(&train_methods, next->hyper.method), next->adapter);
        /* stored before any work: if this run kills the daemon, the next start counts it */
        persist(d, next);
        if (!resuming)
            post_state(d, next);
        run_job(d, next);
        rt_workspace_release(); /* a step's scratch (hundreds of MB on large models) */
        pthread_mutex_lock(&J->lock);
        next->claimed = 0;
    }
    /* the last runner out tells the loop */
    int tell = ++J->n_exited == J->n_threads && J->stopped != NULL;
    pthread_mutex_unlock(&J->lock);
    if (tell)
        qd_call(d, runner_stopped, NULL);
    return NULL;
}

typedef struct {
    qd *d;
    char *err;
    size_t errlen;
} load_ctx;

static int load_one(void *p, uint64_t id, const void *rec, size_t len)
{
    load_ctx *c = p;
    jobs *J = c->d->jobs;
    char err[512];
    job *j = unpack_job(c->d, rec, len, err, sizeof err);
    if (!j) {
        qd_log(LOG_ERROR, "job %llu: unreadable record (%s); left as it is", (unsigned long long)id, err);
        return 0;
    }
    if (J->tail)
        J->tail->next = j;
    else
        J->head = j;
    J->tail = j;
    if (j->state == JOB_RUNNING)
        qd_log(LOG_INFO, "job %llu was running when the daemon stopped: it will resume", (unsigned long long)id);
    return 0;
}

int jobs_start(qd *d, char *err, size_t errlen)
{
    jobs *J = calloc(1, sizeof *J);
    if (!J) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&J->lock, NULL);
    pthread_cond_init(&J->wake, NULL);
    d->jobs = J;
    load_ctx c = {d, err, errlen};
    if (store_job_each(d->db, load_one, &c, err, errlen) < 0)
        return -1;
    J->threads = calloc((size_t)d->max_running, sizeof *J->threads);
    if (!J->threads) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (; J->n_threads < d->max_running; J->n_threads++)
        if (pthread_create(&J->threads[J->n_threads], NULL, runner, d) != 0) {
            snprintf(err, errlen, "cannot start job runner thread %d", J->n_threads + 1);
            jobs_stop(d, NULL);
            return -1;
        }
    return 0;
}

void jobs_stop(qd *d, void (*done)(qd *d))
{
    jobs *J = d->jobs;
    pthread_mutex_lock(&J->lock);
    J->stop = 1;
    J->stopped = done;
    for (job *j = J->head; j; j = j->next)
        if (j->claimed)
            j->cancel = 1;
    pthread_cond_broadcast(&J->wake);
    pthread_mutex_unlock(&J->lock);
}

void jobs_free(qd *d)
{
    jobs *J = d->jobs;
    if (!J)
        return;
    for (int i = 0; i < J->n_threads; i++)
        pthread_join(J->threads[i], NULL);
    free(J->threads);
    while (J->head) {
        job *j = J->head;
        J->head = j->next;
        job_free(j);
    }
    while (J->deleted) {
        job *j = J->deleted;
        J->deleted = j->next;
        job_free(j);
    }
    while (J->watchers) {
        watcher *w = J->watchers;
        J->watchers = w->next;
        free(w);
    }
    pthread_mutex_destroy(&J->lock);
    pthread_cond_destroy(&J->wake);
    free(J);
    d->jobs = NULL;
}

void jobs_counts(qd *d, int counts[JOB_N_STATES])
{
    memset(counts, 0, JOB_N_STATES * sizeof *counts);
    pthread_mutex_lock(&d->jobs->lock);
    for (job *j = d->jobs->head; j; j = j->next)
        counts[j->state]++;
    pthread_mutex_unlock(&d->jobs->lock);
}

void jobs_conn_closed(qd *d, uint64_t conn_id)
{
    if (!d->jobs)
        return;
    for (watcher **w = &d->jobs->watchers; *w;) {
        if ((*w)->conn_id == conn_id) {
            watcher *x = *w;
            *w = x->next;
            free(x);
        } else {
            w = &(*w)->next;
        }
    }
}

int jobs_conn_watches(qd *d, uint64_t conn_id)
{
    int n = 0;
    for (watcher *w = d->jobs ? d->jobs->watchers : NULL; w; w = w->next)
        n += w->conn_id == conn_id;
    return n;
}

/* ---- ops (loop thread) ---- */

/* A number from the first line of path that starts with key (key "" : the first line). */
static double read_number(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[256];
    double x = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) {
            char *end;
            x = strtod(line + n, &end);
            if (end == line + n)
                x = -1; /* "max": no limit */
            break;
        }
    if (f)
        fclose(f);
    return x;
}

/* Bytes the machine can give without swapping: MemAvailable (else free pages), and no
 * more than the room left under this process's cgroup limit. */
static double mem_available(void)
{
    double avail = read_number("/proc/meminfo", "MemAvailable:") * 1024.0;
    if (avail < 0) {
        long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        avail = pages > 0 && size > 0 ? (double)pages * (double)size : 1e18; /* unknown: no refusal */
    }
    /* cgroup v2: "0::/PATH" in /proc/self/cgroup, the limit in /sys/fs/cgroup/PATH */
    char line[1024] = "", path[1200];
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f && fgets(line, sizeof line, f))
        line[strcspn(line, "\n")] = 0;
    if (f)
        fclose(f);
    const char *dir = strncmp(line, "0::", 3) ? NULL : line + 3;
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", dir ? dir : "/-");
    double max = read_number(path, "");
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.current", dir ? dir : "/-");
    double used = read_number(path, "");
    if (max >= 0 && used >= 0 && max - used < avail)
        avail = max > used ? max - used : 0;
    return avail;
}

static void reply_job(req *r, job *j)
{
    mp_out o;
    reply_begin(r, &o);
    pthread_mutex_lock(&r->d->jobs->lock);
    schema_pack(&o.pk, &job_record, j, SCHEMA_WIRE);
    pthread_mutex_unlock(&r->d->jobs->lock);
    reply_end(r, &o);
}

void op_job_submit(req *r)
{
    qd *d = r->d;
    jobs *J = d->jobs;
    char err[600];
    qd_error code;
    job *j = calloc(1, sizeof *j);
    if (!j) {
        reply_error(r, ERR_BUSY, "out of memory");
        return;
    }
    const msgpack_object *name = r->arg[SUBMIT_ADAPTER], *method = r->arg[SUBMIT_METHOD];
    const msgpack_object *hyper = r->arg[SUBMIT_HYPER], *eval = r->arg[SUBMIT_EVAL_DATA]; /* both may be nil */
    if (hyper && hyper->type != MSGPACK_OBJECT_MAP)
        hyper = NULL;
    if (eval && eval->type != MSGPACK_OBJECT_MAP)
        eval = NULL;
    if (adapter_name_arg(r, "adapter", name, j->adapter) < 0)
        goto fail;
    int m = method ? train_vocab_parse(&train_methods, method->via.str.ptr, method->via.str.size) : TRAIN_LORA;
    if (m < 0) {
        train_vocab_choices(&train_methods, err, sizeof err);
        reply_error(r, ERR_INVALID_ARGUMENT, "method: must be %s", err);
        goto fail;
    }
    if ((code = parse_hyper(hyper, &d->model.cfg, &j->hyper, err, sizeof err))) {
        reply_error(r, code, "%s", err);
        goto fail;
    }
    j->hyper.method = (train_method)m;
    double need = (double)trainer_memory_bytes(&d->model, &j->hyper), avail = mem_available();
    if (need > avail) {
        reply_error(r, ERR_BUSY, "hyper: batch_size %d x seq_len %d%s%s needs ~%.2f GiB, %.2f GiB available",
                    j->hyper.batch, j->hyper.seq_len, j->hyper.recompute ? " (recompute)" : "",
                    j->hyper.method == TRAIN_RECOVERY ? " with the recovery teacher" : "", need / 1073741824.0,
                    avail / 1073741824.0);
        goto fail;
    }
    if ((code = files_resolve(d, r->arg[SUBMIT_DATA], "data", &j->data, err, sizeof err)) ||
        (eval && (code = files_resolve(d, eval, "eval_data", &j->eval, err, sizeof err)))) {
        reply_error(r, code, "%s", err);
        goto fail;
    }
    int queued = 0;
    pthread_mutex_lock(&J->lock);
    for (job *q = J->head; q; q = q->next)
        queued += q->state == JOB_QUEUED;
    pthread_mutex_unlock(&J->lock);
    if (queued >= d->max_queued) {
        reply_error(r, ERR_BUSY, "the queue holds %d jobs already (--max-queued)", queued);
        goto fail;
    }
    if (store_job_next_id(d->db, &j->id, err, sizeof err) < 0) {
        reply_error(r, ERR_INTERNAL, "%s", err);
        goto fail;
    }
    j->state = JOB_QUEUED;
    j->base_fp = d->model.fingerprint;
    base_quant(&d->model, j->base_quant, sizeof j->base_quant);
    if (!(j->base_model = strdup(d->model_dir))) {
        reply_error(r, ERR_BUSY, "out of memory");
        goto fail;
    }
    j->created_at = now_s();
    j->started_at = j->finished_at = NAN;
    j->loss = j->eval_loss = j->tokens_per_s = j->ppl_base = j->ppl_adapter = NAN;
    /* a file.delete cannot come between the check that the files are there and the job
     * that holds them being queued */
    files_hold();
    if (files_exist(d, &j->data, &j->eval, err, sizeof err) < 0) {
        files_release();
        reply_error(r, ERR_NOT_FOUND, "data: %s (deleted meanwhile)", err);
        goto fail;
    }
    if (persist(d, j) < 0) {
        files_release();
        reply_error(r, ERR_BUSY, "cannot store the job (see the daemon's log)");
        goto fail;
    }
    mp_out o; /* packed while the job is queued: once listed, a runner may claim it */
    reply_begin(r, &o);
    schema_pack(&o.pk, &submitted, j, SCHEMA_WIRE);
    pthread_mutex_lock(&J->lock);
    if (J->tail)
        J->tail->next = j;
    else
        J->head = j;
    J->tail = j;
    pthread_cond_broadcast(&J->wake); /* a runner waiting to retry a publish waits on it too */
    pthread_mutex_unlock(&J->lock);
    files_release();
    qd_log(LOG_INFO, "job %llu queued: %s -> %s, %d steps", (unsigned long long)j->id,
           train_vocab_name(&train_methods, j->hyper.method), j->adapter, j->hyper.steps);
    reply_end(r, &o);
    return;
fail:
    job_free(j);
}

/* The job the argument job_id names; NULL after replying. */
static job *job_arg(req *r, const msgpack_object *job_id)
{
    /* under the lock: job.submit appends from the thread pool */
    pthread_mutex_lock(&r->d->jobs->lock);
    job *j = find_job(r->d->jobs, job_id->via.u64);
    pthread_mutex_unlock(&r->d->jobs->lock);
    if (!j)
        reply_error(r, ERR_NOT_FOUND, "job_id: no job %llu", (unsigned long long)job_id->via.u64);
    return j;
}

void op_job_get(req *r)
{
    job *j = job_arg(r, r->arg[JOB_GET_ID]);
    if (j)
        reply_job(r, j);
}

void op_job_list(req *r)
{
    jobs *J = r->d->jobs;
    int filter = -1;
    const msgpack_object *state = r->arg[JOB_LIST_STATE];
    if (state && state->type == MSGPACK_OBJECT_STR && (filter = job_state_parse(state)) < 0) {
        char choices[80];
        size_t used = 0;
        for (int s = 0; s < JOB_N_STATES; s++) /* "queued, running, ... or cancelled" */
            used += (size_t)snprintf(choices + used, used < sizeof choices ? sizeof choices - used : 0, "%s%s",
                                     s == 0 ? "" : s + 1 == JOB_N_STATES ? " or " : ", ", job_state_names[s]);
        reply_error(r, ERR_INVALID_ARGUMENT, "state: must be %s", choices);
        return;
    }
    mp_out o;
    reply_begin(r, &o);
    msgpack_pack_map(&o.pk, 1);
    mp_str(&o.pk, "jobs");
    pthread_mutex_lock(&J->lock);
    size_t n = 0;
    for (job *j = J->head; j; j = j->next)
        n += filter < 0 || (int)j->state == filter;
    msgpack_pack_array(&o.pk, n);
    for (job *j = J->head; j; j = j->next)
        if (filter < 0 || (int)j->state == filter)
            schema_pack(&o.pk, &job_record, j, SCHEMA_WIRE);
    pthread_mutex_unlock(&J->lock);
    reply_end(r, &o);
}

void op_job_cancel(req *r)
{
    qd *d = r->d;
    job *j = job_arg(r, r->arg[JOB_CANCEL_ID]);
    if (!j)
        return;
    /* a queued job is cancelled here, or a runner has claimed it first and it is running:
     * job_move decides under the lock, so the two cannot both happen */
    if (finish(d, j, FROM(JOB_QUEUED), JOB_CANCELLED, NULL)) {
        reply_job(r, j);
        return;
    }
    pthread_mutex_lock(&d->jobs->lock);
    job_state s = j->state;
    if (s == JOB_RUNNING) {
        j->cancel = 1;
        pthread_cond_broadcast(&d->jobs->wake); /* a runner waiting to retry a publish */
    }
    pthread_mutex_unlock(&d->jobs->lock);
    if (job_state_final(s)) {
        reply_error(r, ERR_CONFLICT, "job %llu already %s", (unsigned long long)j->id, job_state_names[s]);
        return;
    }
    qd_log(LOG_INFO, "job %llu: cancel requested; it stops at the next step", (unsigned long long)j->id);
    reply_job(r, j);
}

uint64_t jobs_file_user(qd *d, const char *file_id)
{
    uint64_t user = 0;
    pthread_mutex_lock(&d->jobs->lock);
    for (job *j = d->jobs->head; j && !user; j = j->next)
        if (!job_state_final(j->state) && (!strcmp(j->data.file_id, file_id) || !strcmp(j->eval.file_id, file_id)))
            user = j->id;
    pthread_mutex_unlock(&d->jobs->lock);
    return user;
}

void op_job_delete(req *r)
{
    qd *d = r->d;
    jobs *J = d->jobs;
    job *j = job_arg(r, r->arg[JOB_DELETE_ID]);
    char err[600];
    int nf;
    if (!j)
        return;
    pthread_mutex_lock(&J->lock);
    job_state s = j->state;
    pthread_mutex_unlock(&J->lock);
    if (!job_state_final(s)) {
        reply_error(r, ERR_CONFLICT, "job %llu is %s: cancel it first", (unsigned long long)j->id, job_state_names[s]);
        return;
    }
    /* only the loop changes a finished job, so nothing rewrites the record after this */
    if (store_job_delete(d->db, j->id, &nf, err, sizeof err) < 0 && !nf) {
        reply_error(r, store_error(err), "%s", err);
        return;
    }
    pthread_mutex_lock(&J->lock);
    job **p = &J->head, *prev = NULL;
    while (*p != j)
        prev = *p, p = &(*p)->next;
    *p = j->next;
    if (J->tail == j)
        J->tail = prev;
    /* a runner that has just finished it may still hold it: freed at jobs_free then */
    int held = j->claimed;
    if (held) {
        j->next = J->deleted;
        J->deleted = j;
    }
    pthread_mutex_unlock(&J->lock);
    qd_log(LOG_INFO, "job %llu deleted", (unsigned long long)j->id);
    if (!held)
        job_free(j);
    reply_deleted(r, 1);
}

void op_job_watch(req *r)
{
    qd *d = r->d;
    job *j = job_arg(r, r->arg[JOB_WATCH_ID]);
    if (!j)
        return;
    pthread_mutex_lock(&d->jobs->lock);
    int ended = job_state_final(j->state);
    pthread_mutex_unlock(&d->jobs->lock);
    if (ended) {
        reply_job(r, j);
        return;
    }
    if (jobs_conn_watches(d, r->conn_id) >= d->max_watches) {
        reply_error(r, ERR_BUSY, "this connection watches %d jobs already (--max-watches)", d->max_watches);
        return;
    }
    watcher *w = malloc(sizeof *w);
    if (!w) {
        reply_error(r, ERR_BUSY, "out of memory");
        return;
    }
    w->conn_id = r->conn_id, w->req_id = r->id, w->job_id = j->id;
    w->next = d->jobs->watchers;
    d->jobs->watchers = w;
    /* the current state first, so a watcher knows where the job stands */
    mp_out o;
    mp_out_init(&o);
    pthread_mutex_lock(&d->jobs->lock);
    schema_pack(&o.pk, &state_event, j, SCHEMA_WIRE);
    w->sent_state = (int)j->state;
    pthread_mutex_unlock(&d->jobs->lock);
    reply_event(d, r->conn_id, r->id, o.sb.data + 4, o.sb.size - 4);
    mp_out_free(&o);
}
