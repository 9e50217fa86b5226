/* jobs_runner.c: the runner threads (--max-running, one by default), each training one
 * job at a time through adapters/train.c, checkpointing as it goes; and the table's start
 * and stop. Jobs share the frozen base read-only; each has its own trainer, so two runners
 * never touch the same memory.
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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "jobs.h"
#include "workspace.h"

/* ---- the runner ---- */

typedef struct {
    qd *d;
    job *j;
    double last_progress;
} run_ctx;

/* The runner's failures: a job it runs is running. */
static void fail(qd *d, job *j, const char *error)
{
    job_finish(d, j, FROM(JOB_RUNNING), JOB_FAILED, error);
}

static void post_news(qd *d, const schema *event, const job_news *news)
{
    mp_out o;
    mp_out_init(&o);
    schema_pack(&o.pk, event, news, SCHEMA_WIRE);
    job_post_event(d, news->job_id, 0, -1, &o);
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
    char *rec = job_stored_record(J, &snap, &rec_len);
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
        job_history_step(&j->history, pr);
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
        job_history_eval(&j->history, pr->step, pr->eval_loss);
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
    return job_stored_record(c->J, &done, len);
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
        job_persist(d, j);
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
            job_post_state(d, j);
            return;
        }
        char msg[1200];
        snprintf(msg, sizeof msg, "trained, but the adapter could not be published (%s); the job stays running and "
                 "tries again in %d s", err, wait_s);
        pthread_mutex_lock(&J->lock);
        job_move(j, FROM(JOB_RUNNING), JOB_RUNNING, msg);
        pthread_mutex_unlock(&J->lock);
        job_persist(d, j); /* the message, if the store takes that much; the state is running either way */
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
            job_finish(d, j, FROM(JOB_RUNNING), JOB_CANCELLED, NULL);
            return;
        }
    }
}

static void run_job(qd *d, job *j)
{
    jobs *J = d->jobs;
    char err[1024];
    int *ids = NULL, *eval_ids = NULL, have_teacher = 0, is_sft = 0, eval_is_sft = 0;
    size_t n = 0, n_eval = 0;
    sft_data sft = {0}, eval_sft = {0};
    llama_model teacher;
    trainer t;
    memset(&t, 0, sizeof t);
    /* the bytes come from the store at every (re)start, checked against their id */
    if (files_load_data(d, &j->data, "data", &j->hyper, &ids, &n, &sft, &is_sft, err, sizeof err) < 0 ||
        (j->eval.file_id[0] && files_load_data(d, &j->eval, "eval_data", &j->hyper, &eval_ids, &n_eval, &eval_sft,
                                               &eval_is_sft, err, sizeof err) < 0)) {
        fail(d, j, err);
        goto done;
    }
    if (j->eval.file_id[0] && is_sft != eval_is_sft) {
        fail(d, j, is_sft ? "eval_data: plain text, while data holds examples (JSONL)"
                          : "eval_data: examples (JSONL), while data is plain text");
        goto done;
    }
    if (j->hyper.method == TRAIN_RECOVERY) {
        if (qd_load_model(d, qt_spec_default(QT_F32), &teacher, err, sizeof err) < 0) {
            fail(d, j, err);
            goto done;
        }
        have_teacher = 1;
    }
    if ((is_sft ? trainer_init_sft(&t, &d->model, &sft, eval_is_sft ? &eval_sft : NULL, &j->hyper, err, sizeof err)
                : trainer_init(&t, &d->model, have_teacher ? &teacher : NULL, ids, n, eval_ids, n_eval, &j->hyper, err,
                               sizeof err)) < 0) {
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
        job_persist(d, j);
    } else if (!nf) {
        fail(d, j, err);
        goto done;
    }
    pthread_mutex_lock(&J->lock);
    j->hyper.steps = t.hyper.steps, j->hyper.warmup = t.hyper.warmup; /* what epochs made of them */
    job_history_truncate(&j->history, t.step); /* what the run redoes after its checkpoint, or all */
    pthread_mutex_unlock(&J->lock);
    if (t.n_eval && isnan(j->ppl_base)) {
        double base_loss;
        if (trainer_eval_base(&t, &base_loss, err, sizeof err) < 0) {
            fail(d, j, err);
            goto done;
        }
        pthread_mutex_lock(&J->lock);
        j->ppl_base = exp(base_loss);
        pthread_mutex_unlock(&J->lock);
    }
    run_ctx ctx = {d, j, 0};
    int rc = train_run(&t, on_train_event, &ctx, &j->cancel, err, sizeof err);
    if (rc < 0) {
        fail(d, j, err);
    } else if (rc == 1 && J->stop) {
        clean_stop(d, j, &t);
    } else if (rc == 1) {
        job_finish(d, j, FROM(JOB_RUNNING), JOB_CANCELLED, NULL);
    } else {
        store_adapter_info info;
        memset(&info, 0, sizeof info);
        snprintf(info.name, sizeof info.name, "%s", j->adapter);
        info.rank = t.adapter.rank, info.alpha = t.adapter.alpha, info.rslora = t.adapter.rslora;
        info.targets = t.adapter.targets;
        info.base_fingerprint = d->model.fingerprint;
        info.base = d->model.cfg;
        info.job_id = j->id;
        if (t.best && t.best_loss < INFINITY) { /* patience: the best-evaluated adapter is published */
            pthread_mutex_lock(&J->lock);
            j->eval_loss = t.best_loss, j->best_step = t.best_step, j->stopped_early = t.stopped_early;
            pthread_mutex_unlock(&J->lock);
        }
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
    sft_free(&sft);
    sft_free(&eval_sft);
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

/* Whether the job about to be claimed must fail instead (under the lock), and why: it
 * was submitted on another base, or it was running each of the last --max-job-crashes
 * times the daemon died. Counts this start's predecessor as an unclean end when it was. */
static int refuse_start(qd *d, job *j, int resuming, char *why, size_t len)
{
    if (j->base_fp && j->base_fp != d->model.fingerprint) {
        char was[600], now[600], q[48];
        job_base_quant(&d->model, q, sizeof q);
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
            job_persist(d, next);
            job_post_state(d, next);
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
        job_persist(d, next);
        if (!resuming)
            job_post_state(d, next);
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

/* ---- start and stop ---- */

/* A stored record at start: a record it cannot read stays in the store as it is. */
static int load_one(void *p, uint64_t id, const void *rec, size_t len)
{
    qd *d = p;
    char err[512];
    job *j = job_unpack(d, rec, len, err, sizeof err);
    if (!j) {
        qd_log(LOG_ERROR, "job %llu: unreadable record (%s); left as it is", (unsigned long long)id, err);
        return 0;
    }
    job_append(d->jobs, j); /* at start: no runner yet */
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
    if (store_job_each(d->db, load_one, d, err, errlen) < 0)
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
