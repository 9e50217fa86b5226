/* qloraclient.h: a C client for qlorad, the LoRA training and inference daemon.
 *
 * The wire protocol (docs/protocol.md) is length-prefixed msgpack: every request is
 * {"id", "op", "args"}; the server answers {"id", "ok": true, "result"} or
 * {"id", "ok": false, "error": {"code", "message"}}, and streaming ops (job.watch,
 * generate with stream) send {"id", "event"} frames before that final answer. This
 * library does the framing, the ids and the matching; values are msgpack-c objects.
 *
 * Connecting
 *   char err[256];
 *   qlora_client *c = qlora_connect_unix("/tmp/qlorad.sock", err, sizeof err);
 *   qlora_client *c = qlora_connect_tcp("127.0.0.1:7070", "secret", err, sizeof err);
 *   if (!c) fprintf(stderr, "%s\n", err);           // says which socket or address
 * A TCP connection sends `auth` with the token first; a refused token fails the connect.
 *
 * Arguments: pack ONE msgpack map into a qlora_args with msgpack-c's packer.
 *   qlora_args a;
 *   qlora_args_init(&a);
 *   msgpack_pack_map(&a.pk, 2);
 *   qlora_pack_str(&a.pk, "text");       qlora_pack_str(&a.pk, "hello world");
 *   qlora_pack_str(&a.pk, "adapter");    msgpack_pack_nil(&a.pk);
 * An allocation failure while packing is remembered and reported by the call, so the
 * msgpack_pack_* return values need no checking. Pass NULL for an op without args.
 *
 * A synchronous call
 *   qlora_reply r;
 *   int rc = qlora_call(c, "eval", &a, &r);
 *   if (rc == QLORA_OK)
 *       printf("ppl %g\n", qlora_num(qlora_get(&r.result, "ppl"), NAN));
 *   else if (rc == QLORA_SERVER_ERROR)
 *       printf("%s: %s\n", r.code, r.message);      // e.g. "not_found: no adapter 'x'"
 *   else
 *       printf("%s\n", qlora_last_error(c));         // the connection failed
 *   qlora_reply_free(&r);                            // always, whatever rc was
 *   qlora_args_free(&a);
 *
 * Streaming: qlora_stream() is qlora_call() plus a callback that sees every event (a
 * msgpack map, valid only during the callback) before the final reply arrives:
 *   static int on_event(const msgpack_object *ev, void *ud) { ...; return 0; }
 *   rc = qlora_stream(c, "job.watch", &a, on_event, NULL, &r);
 * A callback returning nonzero stops the wait early (rc QLORA_STOPPED); the rest of
 * that request's frames stay queued, and qlora_wait() on its id picks them up later.
 *
 * Pipelining: qlora_send() writes a request and returns its id; qlora_wait() reads until
 * that id's final reply, keeping frames for other ids queued for their own waits, so
 * several requests may be in flight on one connection in any order.
 *
 * Threads: a qlora_client is not thread-safe; use one per thread (connections are cheap).
 * Errors and memory: every function that can fail says so in its return value; a reply
 * owns the memory its objects point into until qlora_reply_free(). */
#ifndef QLORACLIENT_H
#define QLORACLIENT_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qlora_client qlora_client;

/* Return values of the calls. */
enum {
    QLORA_OK = 0,            /* reply.result holds the result */
    QLORA_SERVER_ERROR = 1,  /* the server answered with an error: reply.code, reply.message */
    QLORA_TRANSPORT = -1,    /* connection, framing or memory failure: qlora_last_error() */
    QLORA_STOPPED = -2,      /* the event callback asked to stop */
};

/* Request arguments under construction: pack one map with `pk`. */
typedef struct {
    msgpack_sbuffer buf;
    msgpack_packer pk;
    int failed; /* a write ran out of memory; the call will refuse the args */
} qlora_args;

/* A final reply. `result` is nil unless the call returned QLORA_OK; `code` and `message`
 * are "" unless it returned QLORA_SERVER_ERROR. Every pointer inside lives until
 * qlora_reply_free(). A zeroed qlora_reply is a valid empty one (safe to free). */
typedef struct {
    msgpack_object result;
    const char *code;
    const char *message;
    msgpack_unpacked frame; /* owns the memory; internal */
} qlora_reply;

/* Called for each event frame of a streaming request; nonzero return stops the wait. */
typedef int (*qlora_event_fn)(const msgpack_object *event, void *userdata);

/* Connect to the daemon's Unix socket, or to HOST:PORT over TCP ("[::1]:7070" for IPv6)
 * and authenticate with `token`. NULL on failure with the reason in err. */
qlora_client *qlora_connect_unix(const char *path, char *err, size_t errlen);
qlora_client *qlora_connect_tcp(const char *host_port, const char *token, char *err, size_t errlen);
void qlora_close(qlora_client *c);

/* The last transport failure of this client, as one sentence. */
const char *qlora_last_error(const qlora_client *c);

void qlora_args_init(qlora_args *a);
void qlora_args_free(qlora_args *a);
/* Packs a NUL-terminated string as msgpack str. */
void qlora_pack_str(msgpack_packer *pk, const char *s);

/* Synchronous call: send op with args (NULL = none) and wait for its final reply; events,
 * if the op streams, go to on_event (NULL ignores them). Initializes *reply in every case. */
int qlora_call(qlora_client *c, const char *op, const qlora_args *args, qlora_reply *reply);
int qlora_stream(qlora_client *c, const char *op, const qlora_args *args,
                 qlora_event_fn on_event, void *userdata, qlora_reply *reply);

/* Pipelining: send without waiting (the id comes back in *id), then wait for that id. */
int qlora_send(qlora_client *c, const char *op, const qlora_args *args, uint64_t *id);
int qlora_wait(qlora_client *c, uint64_t id, qlora_event_fn on_event, void *userdata,
               qlora_reply *reply);

void qlora_reply_free(qlora_reply *reply);

/* Reading results. */
/* The value under `key` in a map, or NULL (absent, or `map` is NULL or not a map). */
const msgpack_object *qlora_get(const msgpack_object *map, const char *key);
/* A number (int, uint or float) as double; `dflt` for NULL, nil or a non-number. */
double qlora_num(const msgpack_object *o, double dflt);
/* A str copied into buf (NUL-terminated, truncated to fit); `dflt` for anything else.
 * Returns buf. */
const char *qlora_str(const msgpack_object *o, const char *dflt, char *buf, size_t n);
/* 1 if o is NULL or nil. */
int qlora_is_nil(const msgpack_object *o);
/* Writes o as JSON (bin as a base64 string, non-string map keys as their JSON text in a
 * string). Returns 0, or -1 on a write error. */
int qlora_write_json(FILE *f, const msgpack_object *o);

#ifdef __cplusplus
}
#endif
#endif
