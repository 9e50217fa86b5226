/* qlorad.h: the daemon's shared state and the pieces its files call on each other.
 *
 * Threads: the libuv loop owns every socket and the job table's watchers; it never
 * computes. Inference requests (eval, generate, tokenize, adapter import/export) run on
 * libuv's thread pool; training runs on the job runner threads. Other threads never touch a
 * socket: they post frames (and callbacks) to a mailbox that the loop drains in order,
 * so a request's events always reach the client before its final response. */
#ifndef QLORAD_H
#define QLORAD_H

#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "model.h"
#include "mp.h"
#include "protocol.h"
#include "schema.h"
#include "store.h"
#include "tokenizer.h"
#include "sft.h"
#include "train.h"

#define QLORAD_VERSION "0.1.0"
#define QLORAD_PROTOCOL 1
#define MAX_ARGS 24

typedef struct qd qd;
typedef struct conn conn;
typedef struct jobs jobs;
typedef struct adapter_cache adapter_cache;

/* ---- log.c ---- */
typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;
void qd_log(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Debug lines are shown only when verbose. */
void qd_log_verbose(int on);

/* ---- server.c: sockets, framing, the mailbox ---- */
/* Whether a connection still wants what its requests compute: shared by the connection
 * and its pooled requests (reference counted), so that a pool thread can stop work for a
 * client that has gone without touching the connection itself. */
typedef struct conn_life {
    atomic_int refs;
    atomic_int gone;
} conn_life;

/* A connection's memory is freed only in the close callback of its last handle, which
 * libuv runs in its own phase of the loop: closing a connection from inside a walk over
 * its watchers or requests (an overflow found while sending) can never free what the
 * walk holds. Everything else names a connection by id and finds it with qd_conn. */
struct conn {
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    uv_timer_t timer;    /* the auth deadline, the idle timeout, then the close linger */
    qd *d;
    uint64_t id;
    int tcp, authed, closing;
    int open_handles;    /* of h and timer: the last close callback frees the connection */
    int requests;        /* pooled requests in flight */
    int paused;          /* not reading: at --max-requests or --max-inflight */
    conn_life *life;
    uint64_t last_active;/* uv_now of the last byte received */
    char *in;            /* bytes received, not yet a whole frame */
    size_t in_len, in_cap;
    size_t out_pending;  /* bytes allocated for output handed to uv_write and not yet written */
    conn *prev, *next;
};

/* Before auth a TCP connection may send one frame of at most this many bytes. */
#define PREAUTH_MAX_FRAME 4096

typedef struct mail mail;

struct qd {
    uv_loop_t *loop;
    pthread_t loop_thread;
    llama_model model;
    tok_tokenizer *tok;
    sft_chat chat;            /* the model's own chat template (chat.chat NULL: none) */
    char chat_error[600];     /* why there is none, for chat's message */
    store *db;
    const char *model_dir, *socket_path;
    char cache_dir[4096];     /* the model cache (--cache-dir, default, "" with --no-cache) */
    size_t max_frame, max_out;
    int max_queued, max_running;
    int max_conns, n_conns;   /* n_conns: accepted and not yet freed (each holds an fd) */
    int max_requests;         /* pooled requests in flight per connection */
    int max_inflight;         /* pooled requests in flight in all */
    int max_watches;          /* job.watch open per connection */
    uint64_t auth_timeout_ms, idle_timeout_ms; /* idle 0: never */
    int max_crashes;     /* unclean ends of a job before it is failed (--max-job-crashes) */
    int data_dir_fd;     /* --data-dir, or -1: job.submit refuses {path} */
    char *token;         /* TCP only */
    double started;
    int stopping, runner_done, finished;
    int inflight;        /* requests on the thread pool */

    uv_pipe_t unix_srv;
    uv_tcp_t tcp_srv;
    int have_tcp, listening;
    conn *conns;
    uint64_t next_conn_id;
    uv_signal_t sigterm, sigint, sighup;

    uv_async_t wake;     /* the mailbox */
    pthread_mutex_t mail_lock;
    mail *mail_head, *mail_tail;

    jobs *jobs;
    adapter_cache *cache;
    pthread_mutex_t active_lock;
    char active_name[STORE_NAME_MAX + 1];/* "" = none */
    uint32_t active_version;
};

/* Sets up the mailbox. */
int server_init(qd *d, char *err, size_t errlen);
/* server_init, then listens on the Unix socket (and TCP). */
int server_listen(qd *d, const char *listen_addr, char *err, size_t errlen);
/* Serves a connected stream socket fd as if accepted (tcp: as a TCP client, which must
 * authenticate first). For the fuzzer, which feeds it through a socketpair. */
int server_adopt(qd *d, int fd, int tcp);
/* Delivers what is in the mailbox now (at shutdown). */
void server_drain(qd *d);
/* main.c: loads the base model in spec through the model cache of d (the served model,
 * a recovery job's f32 teacher); -1 with a message. */
int qd_load_model(const qd *d, qt_spec spec, llama_model *m, char *err, size_t errlen);
/* main.c: ends the loop once stopping and nothing can post any more. */
void qd_maybe_finish(qd *d);
/* Sends a finished frame to connection id (from any thread: directly on the loop, through
 * the mailbox elsewhere); o is consumed. */
void qd_send(qd *d, uint64_t conn_id, mp_out *o);
/* Runs fn(d, arg) on the loop thread, after every frame posted before it. */
void qd_call(qd *d, void (*fn)(qd *d, void *arg), void *arg);
conn *qd_conn(qd *d, uint64_t id);
/* Frames already sent still go out (for a few seconds at most); then the connection
 * closes. Nothing more is read from it. */
void conn_close(conn *c);
/* Closes at once: what was not yet written is dropped (a client that does not read, or
 * one refused before auth, holds no memory and no fd for longer than this call). */
void conn_abort(conn *c);
/* A pooled request ended: connections that stopped reading at a limit take frames again. */
void conn_resume(qd *d);
/* The connection has passed auth (or needs none): its idle timeout starts. */
void conn_authed(conn *c);
/* Stop accepting and close every connection (shutdown). */
void server_close(qd *d);

/* ---- ops.c: the command table ---- */
typedef struct req {
    qd *d;
    uint64_t conn_id, id;
    int pooled;          /* running on the thread pool */
    const struct op_row *op;
    const msgpack_object *args;           /* the args map, or NULL */
    const msgpack_object *arg[MAX_ARGS];  /* by position in the op's schema; NULL = absent */
    msgpack_unpacked frame;               /* owns every object above */
    conn_life *life;                      /* pooled requests: the connection's, referenced */
    char *bytes;                          /* the frame, which strings and bins point into */
    uv_work_t work;
} req;

/* The handler of every op in QD_OPS (protocol.h): void op_x(req *r). */
#define OP_HANDLER(op, name, fn, where, ARGS) void fn(req *r);
QD_OPS(OP_HANDLER)
#undef OP_HANDLER

void ops_dispatch(qd *d, conn *c, const char *frame, size_t len);
/* The client of a pooled request has gone (its connection closed): stop computing. */
int req_abandoned(const req *r);
void conn_life_put(conn_life *l);

/* Replies (from any thread). reply_begin packs {id, ok: true, result: ...} up to the
 * result, which the caller packs before reply_end. */
void reply_begin(req *r, mp_out *o);
void reply_end(req *r, mp_out *o);
void reply_error(req *r, qd_error code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* An error with no request to answer (bad frames: id 0). */
void send_error(qd *d, uint64_t conn_id, uint64_t id, qd_error code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The result {key: [records]}: the n items at items, stride bytes apart, through s. */
void reply_records(req *r, const char *key, const schema *s, const void *items, size_t n, size_t stride);
/* The result {deleted: n} of the delete ops. */
void reply_deleted(req *r, int n);
/* A stream event {id, event: <packed map>}. */
void reply_event(qd *d, uint64_t conn_id, uint64_t id, const char *packed, size_t len);

/* ---- adapter_ops.c: adapter.* and the names of adapters ---- */
/* The adapter a str object names, "NAME" or (versioned) also "NAME@VERSION", into name and
 * version (0: none given). 0, or -1 when it names none. */
int adapter_ref_parse(const msgpack_object *o, int versioned, char name[STORE_NAME_MAX + 1], uint32_t *version);
/* The adapter name of argument field (a str object) into name; -1 after replying
 * invalid_argument when it is not one. */
int adapter_name_arg(req *r, const char *field, const msgpack_object *o, char name[STORE_NAME_MAX + 1]);
/* The short names of LoRA targets (q, k, v, o, gate, up, down) by llama_linear. */
extern const char *const lora_target_names[LIN_COUNT];

/* ---- cache.c: adapters loaded from the store, LRU within a byte budget ---- */
typedef struct cached_adapter {
    char name[STORE_NAME_MAX + 1];
    uint32_t version;
    store_adapter_info info;
    llama_lora lora;
    size_t bytes;
    int refs, stale;
    uint64_t last_used;
    struct cached_adapter *next;
} cached_adapter;

adapter_cache *cache_new(size_t budget_bytes);
void cache_free(adapter_cache *c);
/* The adapter name@version (0: latest) held for use, loading it when missing. ERR_NONE,
 * or the error (ERR_NOT_FOUND, ERR_CONFLICT, ERR_INTERNAL, ERR_BUSY) with a message. */
qd_error cache_acquire(qd *d, const char *name, uint32_t version, cached_adapter **out, char *err,
                       size_t errlen);
void cache_release(qd *d, cached_adapter *a);
/* A version (0: all) was deleted: drop it once nobody uses it. */
void cache_forget(qd *d, const char *name, uint32_t version);
void cache_stats(qd *d, size_t *count, size_t *bytes);

/* ---- jobs*.c: the persistent queue (jobs.c), its runner threads (jobs_runner.c), the
 * job.* ops and their watchers (jobs_ops.c) ---- */
int jobs_start(qd *d, char *err, size_t errlen);
/* Stops the runners at the next step boundary (running jobs checkpoint and stay
 * `running`, to resume at the next start); done(d) runs on the loop once they have. */
void jobs_stop(qd *d, void (*done)(qd *d));
void jobs_free(qd *d);
void jobs_counts(qd *d, int counts[JOB_N_STATES]);
/* A connection went away: forget its watchers. */
void jobs_conn_closed(qd *d, uint64_t conn_id);
/* How many job.watch a connection has open. */
int jobs_conn_watches(qd *d, uint64_t conn_id);

/* With files_hold(): the id of a queued or running job whose data or eval_data is the file,
 * else 0. */
uint64_t jobs_file_user(qd *d, const char *file_id);

/* ---- files.c: stored data files ---- */
/* What a job's data file holds, as its record says: plain text, inline tokens (stored as
 * little-endian u32 ids), or JSONL examples of one of sft.h's formats. X(enum, name). */
#define JOB_DATA_FORMATS(X)                                                                \
    X(DATA_TEXT, "text") X(DATA_TOKENS, "tokens") X(DATA_PROMPT_COMPLETION, "prompt_completion") \
    X(DATA_TEXT_EXAMPLES, "text_examples") X(DATA_MESSAGES, "messages")
#define JOB_DATA_ENUM_(e, name) e,
typedef enum { JOB_DATA_FORMATS(JOB_DATA_ENUM_) } job_data_format;
#undef JOB_DATA_ENUM_

/* What a job trains on: a stored file and what it holds. file_id "" : none. */
typedef struct {
    char file_id[STORE_FILE_ID_LEN + 1];
    uint64_t bytes;
    job_data_format format;
} job_data;

/* Held around "the job's files exist, queue it" and "no job uses the file, delete it". */
void files_hold(void);
void files_release(void);
/* A data spec of job.submit ({file_id}, {text}, {tokens} or, with --data-dir, {path}) as a
 * stored file; field names it in messages. ERR_NONE, or the error code with err. Off the loop:
 * it hashes and stores up to max_frame bytes. */
qd_error files_resolve(qd *d, const msgpack_object *spec, const char *field, job_data *out, char *err,
                       size_t errlen);
/* What data's file holds, into data->format, checked as the runner will read it: JSONL
 * examples are parsed and encoded whole (with h's template choice), so that a malformed
 * line is refused at submit, naming the line and field; plain text and tokens are taken
 * as they are. ERR_NONE, or the error code with err. Off the loop. */
qd_error files_check_data(qd *d, job_data *data, const char *field, const train_hyper *h, char *err, size_t errlen);
/* 0 when the files of a and b (each may be NULL or "") are stored, else -1 with err. */
int files_exist(qd *d, const job_data *a, const job_data *b, char *err, size_t errlen);
/* A job's data, its bytes verified against the file id (runner): JSONL examples into
 * *sft (sft.h: parsed, cut to h's seq_len + 1; *is_sft 1), else the token stream into
 * *ids, *n (a token file, or text tokenized; *is_sft 0). */
int files_load_data(qd *d, const job_data *data, const char *field, const train_hyper *h, int **ids, size_t *n,
                    sft_data *sft, int *is_sft, char *err,
                      size_t errlen);

double now_s(void);

#endif
