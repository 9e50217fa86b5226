/* protocol.h: the vocabulary of the wire protocol, each list declared once as an X-macro
 * from which the enums and name tables are generated: a misspelt code does not compile.
 * docs/protocol.md shows the same lists in the same order (tests/test_protocol_doc.py
 * compares them). */
#ifndef QLORAD_PROTOCOL_H
#define QLORAD_PROTOCOL_H

#include <msgpack.h>

/* The error codes, XX(enum suffix, name on the wire), as docs/protocol.md's table has them. */
#define QD_ERRORS(XX)                        \
    XX(BAD_FRAME, "bad_frame")               \
    XX(BAD_REQUEST, "bad_request")           \
    XX(UNKNOWN_OP, "unknown_op")             \
    XX(INVALID_ARGUMENT, "invalid_argument") \
    XX(NOT_FOUND, "not_found")               \
    XX(CONFLICT, "conflict")                 \
    XX(UNAUTHORIZED, "unauthorized")         \
    XX(BUSY, "busy")                         \
    XX(INTERNAL, "internal")

typedef enum {
    ERR_NONE, /* what the functions that return a code return when there is no error */
#define QD_ERROR_ENUM(e, name) ERR_##e,
    QD_ERRORS(QD_ERROR_ENUM)
#undef QD_ERROR_ENUM
} qd_error;

/* The code's name on the wire ("none" for ERR_NONE). */
const char *qd_error_name(qd_error e);
/* The code of a failed store write: a full store ("store full": it has reached its cap,
 * --db-max-mb) is the client's limit, busy; anything else is the daemon's, internal. */
qd_error store_error(const char *err);

/* The states of a job, X(enum suffix, name on the wire), in the order of its life: queued,
 * running, then one of the three final states. */
#define JOB_STATES(X)              \
    X(QUEUED, "queued")            \
    X(RUNNING, "running")          \
    X(SUCCEEDED, "succeeded")      \
    X(FAILED, "failed")            \
    X(CANCELLED, "cancelled")

typedef enum {
#define JOB_STATE_ENUM(e, name) JOB_##e,
    JOB_STATES(JOB_STATE_ENUM)
#undef JOB_STATE_ENUM
    JOB_N_STATES
} job_state;

extern const char *const job_state_names[JOB_N_STATES];
/* The state a str object names, or -1. */
int job_state_parse(const msgpack_object *o);
/* Succeeded, failed or cancelled: nothing changes the job any more but job.delete. */
static inline int job_state_final(job_state s)
{
    return s >= JOB_SUCCEEDED;
}

/* ---- ops and their arguments ---- */

/* The types an argument may have, one bit each: T(enum suffix, name, phrase for messages). */
#define ARG_TYPES(T)                          \
    T(STR, "str", "a string")                 \
    T(UINT, "uint", "a non-negative integer") \
    T(NUM, "number", "a number")              \
    T(BOOL, "bool", "a boolean")              \
    T(MAP, "map", "a map")                    \
    T(ARRAY, "array", "an array")             \
    T(NIL, "nil", "nil")                      \
    T(BIN, "bin", "binary")

enum {
#define ARG_TYPE_BIT(e, name, phrase) T_BIT_##e,
    ARG_TYPES(ARG_TYPE_BIT)
#undef ARG_TYPE_BIT
    T_N_BITS
};
enum {
#define ARG_TYPE_FLAG(e, name, phrase) T_##e = 1u << T_BIT_##e,
    ARG_TYPES(ARG_TYPE_FLAG)
#undef ARG_TYPE_FLAG
};
enum { OPTIONAL, REQUIRED };

/* Each op's arguments: A(OP, enum suffix, name, types, REQUIRED or OPTIONAL), one line each.
 * The dispatcher checks a request against them (ops.c); each op gets an enum of its
 * arguments' positions, OP_SUFFIX, by which its handler reads r->arg (GEN_STREAM). */
#define NO_ARGS(A, OP)
#define AUTH_ARGS(A, OP) A(OP, TOKEN, "token", T_STR, REQUIRED)
/* special (default true): special tokens written in the text are their ids; false reads
 * them as plain text (for untrusted text) */
#define TOKENIZE_ARGS(A, OP)                           \
    A(OP, TEXT, "text", T_STR, REQUIRED)               \
    A(OP, SPECIAL, "special", T_BOOL, OPTIONAL)
#define EVAL_ARGS(A, OP)                               \
    A(OP, TOKENS, "tokens", T_ARRAY, OPTIONAL)         \
    A(OP, TEXT, "text", T_STR, OPTIONAL)               \
    A(OP, ADAPTER, "adapter", T_STR | T_NIL, OPTIONAL) \
    A(OP, SPECIAL, "special", T_BOOL, OPTIONAL)
/* what generate and chat share: how to sample, with which adapter, streamed or not */
#define SAMPLING_ARGS(A, OP)                           \
    A(OP, MAX_TOKENS, "max_tokens", T_UINT, OPTIONAL)  \
    A(OP, TEMPERATURE, "temperature", T_NUM, OPTIONAL) \
    A(OP, TOP_P, "top_p", T_NUM, OPTIONAL)             \
    A(OP, SEED, "seed", T_UINT, OPTIONAL)              \
    A(OP, ADAPTER, "adapter", T_STR | T_NIL, OPTIONAL) \
    A(OP, STREAM, "stream", T_BOOL, OPTIONAL)
#define GENERATE_ARGS(A, OP)                   \
    A(OP, PROMPT, "prompt", T_STR, OPTIONAL)   \
    A(OP, TOKENS, "tokens", T_ARRAY, OPTIONAL) \
    SAMPLING_ARGS(A, OP)                       \
    A(OP, SPECIAL, "special", T_BOOL, OPTIONAL)
#define CHAT_ARGS(A, OP)                               \
    A(OP, MESSAGES, "messages", T_ARRAY, REQUIRED)     \
    SAMPLING_ARGS(A, OP)                               \
    A(OP, TEMPLATE, "template", T_STR, OPTIONAL)
#define SUBMIT_ARGS(A, OP)                                 \
    A(OP, ADAPTER, "adapter", T_STR, REQUIRED)             \
    A(OP, DATA, "data", T_MAP, REQUIRED)                   \
    A(OP, EVAL_DATA, "eval_data", T_MAP | T_NIL, OPTIONAL) \
    A(OP, METHOD, "method", T_STR, OPTIONAL)               \
    A(OP, HYPER, "hyper", T_MAP | T_NIL, OPTIONAL)
#define JOB_ARGS(A, OP) A(OP, ID, "job_id", T_UINT, REQUIRED)
#define JOB_LIST_ARGS(A, OP)                        \
    A(OP, STATE, "state", T_STR | T_NIL, OPTIONAL)  \
    A(OP, LIMIT, "limit", T_UINT | T_NIL, OPTIONAL) \
    A(OP, AFTER, "after", T_UINT | T_NIL, OPTIONAL)
#define UPLOAD_ARGS(A, OP)                             \
    A(OP, DATA, "data", T_BIN | T_STR, REQUIRED)       \
    A(OP, FILENAME, "filename", T_STR, OPTIONAL)       \
    A(OP, PURPOSE, "purpose", T_STR, OPTIONAL)
#define FILE_ARGS(A, OP) A(OP, ID, "file_id", T_STR, REQUIRED)
#define ADAPTER_ARGS(A, OP)                            \
    A(OP, NAME, "name", T_STR, REQUIRED)               \
    A(OP, VERSION, "version", T_UINT | T_NIL, OPTIONAL)
#define ACTIVATE_ARGS(A, OP)                           \
    A(OP, NAME, "name", T_STR | T_NIL, REQUIRED)       \
    A(OP, VERSION, "version", T_UINT | T_NIL, OPTIONAL)
#define EXPORT_ARGS(A, OP)                             \
    ADAPTER_ARGS(A, OP)                                \
    A(OP, FORMAT, "format", T_STR, OPTIONAL)
#define IMPORT_ARGS(A, OP)                             \
    A(OP, NAME, "name", T_STR, REQUIRED)               \
    A(OP, FILES, "files", T_MAP, REQUIRED)

/* The ops, X(enum prefix of its arguments, name, handler, where it runs, arguments), in the
 * order of docs/protocol.md. ON_LOOP for bookkeeping; ON_POOL (libuv's thread pool) for
 * anything that computes or copies megabytes. Each handler is declared from this list
 * (qlorad.h). */
enum { ON_LOOP, ON_POOL };
#define QD_OPS(X)                                                                       \
    X(AUTH, "auth", op_auth, ON_LOOP, AUTH_ARGS)                                        \
    X(PING, "ping", op_ping, ON_LOOP, NO_ARGS)                                          \
    X(STATUS, "status", op_status, ON_LOOP, NO_ARGS)                                    \
    X(OP_LIST, "op.list", op_op_list, ON_LOOP, NO_ARGS)                                 \
    X(TOKENIZE, "tokenize", op_tokenize, ON_POOL, TOKENIZE_ARGS)                        \
    X(EVAL, "eval", op_eval, ON_POOL, EVAL_ARGS)                                        \
    X(GEN, "generate", op_generate, ON_POOL, GENERATE_ARGS)                             \
    X(CHAT, "chat", op_chat, ON_POOL, CHAT_ARGS)                                        \
    /* job.submit is pooled: it hashes and stores its data as files */                  \
    X(SUBMIT, "job.submit", op_job_submit, ON_POOL, SUBMIT_ARGS)                        \
    X(JOB_GET, "job.get", op_job_get, ON_LOOP, JOB_ARGS)                                \
    X(JOB_LIST, "job.list", op_job_list, ON_LOOP, JOB_LIST_ARGS)                        \
    X(JOB_CANCEL, "job.cancel", op_job_cancel, ON_LOOP, JOB_ARGS)                       \
    X(JOB_WATCH, "job.watch", op_job_watch, ON_LOOP, JOB_ARGS)                          \
    X(JOB_HISTORY, "job.history", op_job_history, ON_LOOP, JOB_ARGS)                    \
    X(JOB_DELETE, "job.delete", op_job_delete, ON_LOOP, JOB_ARGS)                       \
    X(UPLOAD, "file.upload", op_file_upload, ON_POOL, UPLOAD_ARGS)                      \
    X(FILE_LIST, "file.list", op_file_list, ON_LOOP, NO_ARGS)                           \
    X(FILE_GET, "file.get", op_file_get, ON_LOOP, FILE_ARGS)                            \
    X(FILE_DELETE, "file.delete", op_file_delete, ON_LOOP, FILE_ARGS)                   \
    X(ADAPTER_LIST, "adapter.list", op_adapter_list, ON_LOOP, NO_ARGS)                  \
    X(ADAPTER_GET, "adapter.get", op_adapter_get, ON_LOOP, ADAPTER_ARGS)                \
    X(ADAPTER_DELETE, "adapter.delete", op_adapter_delete, ON_LOOP, ADAPTER_ARGS)       \
    X(ACTIVATE, "adapter.activate", op_adapter_activate, ON_LOOP, ACTIVATE_ARGS)        \
    X(EXPORT, "adapter.export", op_adapter_export, ON_POOL, EXPORT_ARGS)                \
    X(IMPORT, "adapter.import", op_adapter_import, ON_POOL, IMPORT_ARGS)

/* The argument positions of each op, and how many it has (GEN_N_ARGS). */
#define OP_ARG_ENUM(op, e, name, types, required) op##_##e,
#define OP_ARGS_ENUM(op, name, fn, where, ARGS) enum { ARGS(OP_ARG_ENUM, op) op##_N_ARGS };
QD_OPS(OP_ARGS_ENUM)
#undef OP_ARGS_ENUM
#undef OP_ARG_ENUM

#endif
