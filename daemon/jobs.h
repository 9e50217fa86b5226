/* jobs.h: what the job files share (jobs.c: the table and its changes of state,
 * jobs_wire.c: a job on the wire and in the store, jobs_runner.c: the runner threads,
 * jobs_ops.c: the job.* ops and their watchers). Private to them. */
#ifndef QLORAD_JOBS_H
#define QLORAD_JOBS_H

#include "qlorad.h"
#include "train.h"

/* A metric series of a job's history (jobs_history.c): steps and up to four values each.
 * All zero is an empty one. */
#define HISTORY_MAX 512 /* points a series keeps; past it, thinned evenly */
typedef struct {
    int *step;
    float *value[4];
    size_t n, cap;
    int gap;  /* the step distance a point needs from the last kept one (0: any) */
    int tail; /* the last point is only the latest: the next one replaces it */
} job_series;
typedef struct {
    job_series steps; /* loss, lr, grad_norm, tokens_per_s */
    job_series evals; /* eval_loss */
} job_history;

typedef struct job {
    uint64_t id;
    char adapter[STORE_NAME_MAX + 1];
    uint32_t adapter_version;
    train_hyper hyper;
    job_state state;
    double created_at, started_at, finished_at; /* NAN: not yet */
    int step, resumed;
    int best_step, stopped_early; /* patience: the step of the published adapter; whether it stopped early */
    double loss, eval_loss, tokens_per_s, ppl_base, ppl_adapter;
    char *error;
    job_history history;     /* under the lock */
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

/* ---- jobs.c: the table ---- */

/* A set of states for job_move and job_finish. */
#define FROM(s) (1u << (s))

void job_free(job *j);
/* Under the lock. */
job *job_find(jobs *J, uint64_t id);
/* Appends j to the table (under the lock, once runners run), which stays in id order. */
void job_append(jobs *J, job *j);
/* The one place a job's state changes (under the jobs lock): to `to` if the job is in one
 * of the states of `from` (FROM bits), with error as its message (NULL: none). 1 if it
 * moved, 0 if another thread moved it first. */
int job_move(job *j, unsigned from, job_state to, const char *error);
/* Ends a job in state (from one of `from`), stores and tells it. 1 if it ended it. */
int job_finish(qd *d, job *j, unsigned from, job_state state, const char *error);
/* The stored record of j, packed under the lock (malloc'd; NULL when out of memory). */
char *job_stored_record(jobs *J, const job *j, size_t *len);
/* Stores j's record; -1 (logged) when the store cannot take it. */
int job_persist(qd *d, const job *j);
/* The base's quantization in words ("nf4 block 64 double-quant"), as records keep it. */
void job_base_quant(const llama_model *m, char *out, size_t len);

/* ---- jobs_wire.c: records and events ---- */

/* The hyper map of job.submit (NULL: none) over the defaults. ERR_NONE, or the error code
 * with a message naming the field. */
qd_error job_parse_hyper(const msgpack_object *m, const llama_config *c, train_hyper *h, char *err, size_t errlen);
/* A stored record back into a job (at start); NULL with err. */
job *job_unpack(qd *d, const void *rec, size_t len, char *err, size_t errlen);
/* The job record (the protocol's; SCHEMA_STORED adds clean_stop), the event {type:
 * "state", ...} and job.submit's answer, all over a job. Pack them under the jobs lock. */
extern const schema job_record, state_event, submitted;

/* What the other events of a running job tell, each event some of it. */
typedef struct {
    uint64_t job_id;
    train_progress pr;
    double eta_s, ppl;
    const char *message;
} job_news;
extern const schema progress_event, eval_event, checkpoint_event, warning_event;

/* ---- jobs_history.c: the metric history (under the jobs lock) ---- */

void job_history_step(job_history *h, const train_progress *p);
void job_history_eval(job_history *h, int step, double eval_loss);
/* Drops what comes after step (a run resumed from its checkpoint redoes it). */
void job_history_truncate(job_history *h, int step);
void job_history_free(job_history *h);
/* {max_points, gap, eval_gap, step, loss, lr, grad_norm, tokens_per_s, eval_step,
 * eval_loss}: the entries, and their count, for job.history's reply; as a map for the
 * stored record (and its reader, which drops a history it cannot read). */
size_t job_history_entries(void);
void job_history_pack_entries(msgpack_packer *pk, const job_history *h);
void job_history_pack(msgpack_packer *pk, const void *value);
int job_history_unpack(const msgpack_object *o, void *value, const void *ctx, char *err, size_t errlen);

/* ---- jobs_ops.c: watchers ---- */

/* Posts an event map (or, final, the job record that ends the watch) to the job's
 * watchers; state: the job state a state event tells, else -1. o is consumed. */
void job_post_event(qd *d, uint64_t job_id, int final, int state, mp_out *o);
/* Tells the watchers the job's state (and its record, when it has ended). */
void job_post_state(qd *d, job *j);

#endif
