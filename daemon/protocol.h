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

/* The states of a job, X(enum suffix, name on the wire), in the order of its life: queued,
 * running, then one of the three final states. */
#define JOB_STATES(X)                                                                              \
    X(QUEUED, "queued") X(RUNNING, "running") X(SUCCEEDED, "succeeded") X(FAILED, "failed")        \
    X(CANCELLED, "cancelled")

typedef enum {
#define JOB_STATE_ENUM(e, name) JOB_##e,
    JOB_STATES(JOB_STATE_ENUM)
#undef JOB_STATE_ENUM
    JOB_N_STATES
} job_state;

/* Succeeded, failed or cancelled: nothing changes the job any more but job.delete. */
static inline int job_state_final(job_state s)
{
    return s >= JOB_SUCCEEDED;
}

/* The code's name on the wire ("none" for ERR_NONE). */
const char *qd_error_name(qd_error e);
/* The code of a failed store write: a full store ("store full": the --db-max-mb cap, or
 * the disk) is the client's limit, busy; anything else is the daemon's, internal. */
qd_error store_error(const char *err);

extern const char *const job_state_names[JOB_N_STATES];
/* The state a str object names, or -1. */
int job_state_parse(const msgpack_object *o);

#endif
