/* jobs_ops.c: the job.* ops and the watchers of job.watch, on the loop (job.submit on
 * the thread pool: it stores its data). A runner reaches the watchers through qd_call. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs.h"

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

void job_post_event(qd *d, uint64_t job_id, int final, int state, mp_out *o)
{
    size_t len = o->sb.size - 4;
    job_event *e = o->sb.data ? malloc(sizeof *e + len) : NULL;
    if (e) {
        e->job_id = job_id, e->final = final, e->state = state, e->len = len;
        memcpy(e->packed, o->sb.data + 4, len);
        qd_call(d, deliver_event, e);
    }
    mp_out_free(o);
}

void job_post_state(qd *d, job *j)
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
    job_post_event(d, j->id, 0, state, &o);
    if (ended)
        job_post_event(d, j->id, 1, -1, &rec);
    else
        mp_out_free(&rec);
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
    if ((code = job_parse_hyper(hyper, &d->model.cfg, &j->hyper, err, sizeof err))) {
        reply_error(r, code, "%s", err);
        goto fail;
    }
    j->hyper.method = (train_method)m;
    if (train_hyper_check_eval(&j->hyper, eval != NULL, err, sizeof err) < 0) {
        reply_error(r, ERR_INVALID_ARGUMENT, "hyper.%s", err);
        goto fail;
    }
    double need = (double)trainer_memory_bytes(&d->model, &j->hyper), avail = mem_available();
    if (need > avail) {
        reply_error(r, ERR_BUSY, "hyper: batch_size %d x seq_len %d%s%s needs ~%.2f GiB, %.2f GiB available",
                    j->hyper.batch, j->hyper.seq_len, j->hyper.recompute ? " (recompute)" : "",
                    j->hyper.method == TRAIN_RECOVERY ? " with the recovery teacher" : "", need / 1073741824.0,
                    avail / 1073741824.0);
        goto fail;
    }
    if ((code = files_resolve(d, r->arg[SUBMIT_DATA], "data", &j->data, err, sizeof err)) ||
        (eval && (code = files_resolve(d, eval, "eval_data", &j->eval, err, sizeof err))) ||
        (code = files_check_data(d, &j->data, "data", &j->hyper, err, sizeof err)) ||
        (eval && (code = files_check_data(d, &j->eval, "eval_data", &j->hyper, err, sizeof err)))) {
        reply_error(r, code, "%s", err);
        goto fail;
    }
    int examples = j->data.format >= DATA_PROMPT_COMPLETION;
    if (eval && examples != (j->eval.format >= DATA_PROMPT_COMPLETION)) {
        reply_error(r, ERR_INVALID_ARGUMENT, "%s", examples ? "eval_data: plain text, while data holds examples (JSONL)"
                                                            : "eval_data: examples (JSONL), while data is plain text");
        goto fail;
    }
    if (examples && j->hyper.method != TRAIN_LORA) {
        reply_error(r, ERR_INVALID_ARGUMENT, "method: %s trains on plain text, not on examples",
                    train_vocab_name(&train_methods, j->hyper.method));
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
    job_base_quant(&d->model, j->base_quant, sizeof j->base_quant);
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
    if (job_persist(d, j) < 0) {
        files_release();
        reply_error(r, ERR_BUSY, "cannot store the job (see the daemon's log)");
        goto fail;
    }
    mp_out o; /* packed while the job is queued: once listed, a runner may claim it */
    reply_begin(r, &o);
    schema_pack(&o.pk, &submitted, j, SCHEMA_WIRE);
    pthread_mutex_lock(&J->lock);
    job_append(J, j);
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
    job *j = job_find(r->d->jobs, job_id->via.u64);
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

/* {job_id, max_points, gap, eval_gap, step, loss, lr, grad_norm, tokens_per_s, eval_step,
 * eval_loss}: the job's metric history, as its record keeps it. */
void op_job_history(req *r)
{
    job *j = job_arg(r, r->arg[JOB_HISTORY_ID]);
    if (!j)
        return;
    mp_out o;
    reply_begin(r, &o);
    pthread_mutex_lock(&r->d->jobs->lock);
    msgpack_pack_map(&o.pk, 1 + job_history_entries());
    mp_str(&o.pk, "job_id");
    msgpack_pack_uint64(&o.pk, j->id);
    job_history_pack_entries(&o.pk, &j->history);
    pthread_mutex_unlock(&r->d->jobs->lock);
    reply_end(r, &o);
}

/* Whether job.list's page may hold j: its state passes the filter (-1: any) and its id is
 * above the cursor. */
static int listed(const job *j, int filter, uint64_t after)
{
    return (filter < 0 || (int)j->state == filter) && j->id > after;
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
    /* a page: the first limit jobs (all without one) with an id above after, so that a
     * list larger than a frame can still be read, a page at a time */
    const msgpack_object *lim = r->arg[JOB_LIST_LIMIT], *aft = r->arg[JOB_LIST_AFTER];
    uint64_t limit = lim && lim->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? lim->via.u64 : UINT64_MAX;
    uint64_t after = aft && aft->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? aft->via.u64 : 0;
    if (limit == 0) {
        reply_error(r, ERR_INVALID_ARGUMENT, "limit: must be at least 1");
        return;
    }
    mp_out o;
    reply_begin(r, &o);
    msgpack_pack_map(&o.pk, 2); /* jobs, has_more */
    mp_str(&o.pk, "jobs");
    pthread_mutex_lock(&J->lock);
    size_t n = 0, more = 0;
    for (job *j = J->head; j; j = j->next)
        if (listed(j, filter, after)) {
            if (n < limit)
                n++;
            else
                more++;
        }
    msgpack_pack_array(&o.pk, n);
    size_t packed = 0;
    for (job *j = J->head; j && packed < n; j = j->next)
        if (listed(j, filter, after))
            schema_pack(&o.pk, &job_record, j, SCHEMA_WIRE), packed++;
    pthread_mutex_unlock(&J->lock);
    mp_kv_bool(&o.pk, "has_more", more > 0);
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
    if (job_finish(d, j, FROM(JOB_QUEUED), JOB_CANCELLED, NULL)) {
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

