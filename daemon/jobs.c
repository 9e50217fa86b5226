/* jobs.c: fine-tune jobs, the table. A FIFO of jobs persisted in the store, which the
 * runner threads (jobs_runner.c) train and the job.* ops (jobs_ops.c) change; a job's
 * record and events are in jobs_wire.c.
 *
 * Life of a job: queued -> running -> succeeded | failed | cancelled. A job the daemon
 * was running when it died (or was stopped) is still `running` in the store: at start it
 * is resumed from its last checkpoint, which holds the adapter, the AdamW moments, the
 * step and the data sampler, so it ends as an uninterrupted run would. On success the
 * adapter is published as a new version, the record updated and the checkpoint dropped in
 * one transaction.
 *
 * Every change of state goes through job_move under the jobs lock, which checks the state
 * it moves from: a cancel and a runner's claim of the same queued job cannot both win. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"

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

void job_free(job *j)
{
    free(j->error);
    free(j->base_model);
    job_history_free(&j->history);
    free(j);
}

job *job_find(jobs *J, uint64_t id)
{
    for (job *j = J->head; j; j = j->next)
        if (j->id == id)
            return j;
    return NULL;
}

void job_append(jobs *J, job *j)
{
    if (J->tail)
        J->tail->next = j;
    else
        J->head = j;
    J->tail = j;
}

int job_move(job *j, unsigned from, job_state to, const char *error)
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

int job_finish(qd *d, job *j, unsigned from, job_state state, const char *error)
{
    pthread_mutex_lock(&d->jobs->lock);
    int moved = job_move(j, from, state, error);
    pthread_mutex_unlock(&d->jobs->lock);
    if (!moved)
        return 0;
    job_persist(d, j);
    job_post_state(d, j);
    qd_log(state == JOB_FAILED ? LOG_WARN : LOG_INFO, "job %llu %s%s%s", (unsigned long long)j->id,
           job_state_names[state], error ? ": " : "", error ? error : "");
    return 1;
}

char *job_stored_record(jobs *J, const job *j, size_t *len)
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

int job_persist(qd *d, const job *j)
{
    size_t len;
    char *rec = job_stored_record(d->jobs, j, &len), err[512];
    int rc = rec ? store_job_put(d->db, j->id, rec, len, err, sizeof err) : -1;
    if (rc < 0)
        qd_log(LOG_ERROR, "job %llu: cannot store its record: %s", (unsigned long long)j->id, rec ? err : "out of memory");
    free(rec);
    return rc;
}

void job_base_quant(const llama_model *m, char *out, size_t len)
{
    snprintf(out, len, "%s block %d%s", llama_quant_name(m), m->spec.block,
             m->spec.double_quant ? " double-quant" : "");
}

void jobs_counts(qd *d, int counts[JOB_N_STATES])
{
    memset(counts, 0, JOB_N_STATES * sizeof *counts);
    pthread_mutex_lock(&d->jobs->lock);
    for (job *j = d->jobs->head; j; j = j->next)
        counts[j->state]++;
    pthread_mutex_unlock(&d->jobs->lock);
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