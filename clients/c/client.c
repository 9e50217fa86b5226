/* client.c: connections, framing, request ids and reply matching for libqloraclient. */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "qloraclient.h"

/* Larger than the daemon's default 64 MiB limit on purpose: the server may be configured
 * higher (--max-frame), and an exported adapter is the biggest thing it sends. */
#define MAX_FRAME (1u << 30)

/* A frame read for another request id, kept until someone waits for that id. */
typedef struct pending {
    struct pending *next;
    uint64_t id;
    msgpack_unpacked frame;
} pending;

struct qlora_client {
    int fd;
    uint64_t next_id;
    pending *head, *tail; /* arrival order, so each id's frames stay in order */
    char err[512];
};

static int fail(qlora_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return QLORA_TRANSPORT;
}

const char *qlora_last_error(const qlora_client *c)
{
    return c->err;
}

/* A client on a connected fd; on failure the fd is closed and err says why. */
static qlora_client *client_new(int fd, char *err, size_t errlen)
{
    qlora_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->next_id = 1; /* id 0 is the server's "this connection" (bad_frame) */
    return c;
}

qlora_client *qlora_connect_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path '%s' is too long (at most %zu bytes)", path,
                 sizeof sa.sun_path - 1);
        return NULL;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(err, errlen, "cannot connect to qlorad at socket '%s': %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    return client_new(fd, err, errlen);
}

/* HOST:PORT or [HOST]:PORT into host and port buffers. */
static int split_host_port(const char *s, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon = strrchr(s, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= pn)
        return -1;
    const char *h = s;
    size_t len = (size_t)(colon - s);
    if (len >= 2 && h[0] == '[' && h[len - 1] == ']') {
        h++;
        len -= 2;
    }
    if (len == 0 || len >= hn)
        return -1;
    memcpy(host, h, len);
    host[len] = 0;
    strcpy(port, colon + 1);
    return 0;
}

static int tcp_open(const char *host_port, char *err, size_t errlen)
{
    char host[256], port[16];
    if (split_host_port(host_port, host, sizeof host, port, sizeof port) < 0) {
        snprintf(err, errlen, "address '%s' is not HOST:PORT", host_port);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *list;
    int rc = getaddrinfo(host, port, &hints, &list);
    if (rc) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host_port, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = list; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(list);
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to qlorad at %s: %s", host_port, strerror(saved));
    return fd;
}

qlora_client *qlora_connect_tcp(const char *host_port, const char *token, char *err, size_t errlen)
{
    int fd = tcp_open(host_port, err, errlen);
    if (fd < 0)
        return NULL;
    qlora_client *c = client_new(fd, err, errlen);
    if (!c)
        return NULL;
    /* The protocol wants auth before anything else on TCP. */
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, 1);
    qlora_pack_str(&a.pk, "token");
    qlora_pack_str(&a.pk, token);
    qlora_reply r;
    int rc = qlora_call(c, "auth", &a, &r);
    if (rc == QLORA_SERVER_ERROR)
        snprintf(err, errlen, "qlorad at %s refused the token: %s: %s", host_port, r.code, r.message);
    else if (rc != QLORA_OK)
        snprintf(err, errlen, "authenticating with qlorad at %s: %s", host_port, c->err);
    qlora_reply_free(&r);
    qlora_args_free(&a);
    if (rc != QLORA_OK) {
        qlora_close(c);
        return NULL;
    }
    return c;
}

void qlora_close(qlora_client *c)
{
    if (!c)
        return;
    while (c->head) {
        pending *p = c->head;
        c->head = p->next;
        msgpack_unpacked_destroy(&p->frame);
        free(p);
    }
    close(c->fd);
    free(c);
}

/* The packer writes through this so that an allocation failure is remembered once
 * instead of being checked after every msgpack_pack_* call. */
static int args_write(void *data, const char *buf, size_t len)
{
    qlora_args *a = data;
    if (a->failed || msgpack_sbuffer_write(&a->buf, buf, len) < 0) {
        a->failed = 1;
        return -1;
    }
    return 0;
}

void qlora_args_init(qlora_args *a)
{
    msgpack_sbuffer_init(&a->buf);
    msgpack_packer_init(&a->pk, a, args_write);
    a->failed = 0;
}

void qlora_args_free(qlora_args *a)
{
    msgpack_sbuffer_destroy(&a->buf);
}

void qlora_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static int write_all(qlora_client *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return fail(c, "sending to qlorad: %s", w < 0 ? strerror(errno) : "connection closed");
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Returns 1 when all n bytes arrived, 0 on a clean end of stream before any, -1 otherwise. */
static int read_all(qlora_client *c, char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(c->fd, p + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return fail(c, "reading from qlorad: %s", strerror(errno));
        if (r == 0)
            return got == 0 ? 0 : fail(c, "qlorad closed the connection in the middle of a frame");
        got += (size_t)r;
    }
    return 1;
}

int qlora_send(qlora_client *c, const char *op, const qlora_args *args, uint64_t *id)
{
    if (args && (args->failed || args->buf.size == 0))
        return fail(c, args->failed ? "out of memory packing the arguments of '%s'"
                                    : "the arguments of '%s' are empty (pack one map)", op);
    qlora_args req;
    qlora_args_init(&req);
    args_write(&req, "\0\0\0\0", 4); /* the length prefix, filled in below */
    msgpack_pack_map(&req.pk, args ? 3 : 2);
    qlora_pack_str(&req.pk, "id");
    msgpack_pack_uint64(&req.pk, c->next_id);
    qlora_pack_str(&req.pk, "op");
    qlora_pack_str(&req.pk, op);
    if (args) {
        qlora_pack_str(&req.pk, "args");
        args_write(&req, args->buf.data, args->buf.size);
    }
    int rc = QLORA_OK;
    if (req.failed) {
        rc = fail(c, "out of memory building the request '%s'", op);
    } else {
        size_t n = req.buf.size - 4;
        unsigned char *h = (unsigned char *)req.buf.data;
        h[0] = (unsigned char)(n >> 24), h[1] = (unsigned char)(n >> 16);
        h[2] = (unsigned char)(n >> 8), h[3] = (unsigned char)n;
        rc = write_all(c, req.buf.data, req.buf.size);
    }
    qlora_args_free(&req);
    if (rc == QLORA_OK)
        *id = c->next_id++;
    return rc;
}

/* Reads one frame from the socket into *f and its id into *id. */
static int read_frame(qlora_client *c, msgpack_unpacked *f, uint64_t *id)
{
    unsigned char h[4];
    int r = read_all(c, (char *)h, 4);
    if (r == 0)
        return fail(c, "qlorad closed the connection");
    if (r < 0)
        return r;
    uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (n == 0 || n > MAX_FRAME)
        return fail(c, "qlorad sent a frame of %u bytes (allowed: 1 to %u)", n, MAX_FRAME);
    char *buf = malloc(n);
    if (!buf)
        return fail(c, "out of memory for a frame of %u bytes", n);
    r = read_all(c, buf, n);
    if (r != 1) {
        free(buf);
        return r == 0 ? fail(c, "qlorad closed the connection in the middle of a frame") : r;
    }
    size_t off = 0;
    msgpack_unpacked_init(f);
    msgpack_unpack_return ur = msgpack_unpack_next(f, buf, n, &off);
    /* Unpacked strings point into buf, so the zone frees it with everything else. */
    if (ur != MSGPACK_UNPACK_SUCCESS || !f->zone || !msgpack_zone_push_finalizer(f->zone, free, buf)) {
        free(buf);
        msgpack_unpacked_destroy(f);
        return fail(c, "qlorad sent a frame that is not valid msgpack");
    }
    const msgpack_object *o = qlora_get(&f->data, "id");
    if (off != n || !o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        msgpack_unpacked_destroy(f);
        return fail(c, off != n ? "qlorad sent a frame with trailing bytes"
                                : "qlorad sent a frame without an integer id");
    }
    *id = o->via.u64;
    return QLORA_OK;
}

/* The next frame for `id`: queued first, then from the socket (queueing others). */
static int next_frame(qlora_client *c, uint64_t id, msgpack_unpacked *f)
{
    for (pending **pp = &c->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        pending *p = *pp;
        if (p->id != id)
            continue;
        *f = p->frame;
        *pp = p->next;
        if (c->tail == p)
            c->tail = prev;
        free(p);
        return QLORA_OK;
    }
    for (;;) {
        uint64_t got = 0;
        int rc = read_frame(c, f, &got);
        if (rc != QLORA_OK || got == id)
            return rc;
        if (got == 0) { /* about the connection itself (bad_frame): nothing more will come */
            const msgpack_object *e = qlora_get(&f->data, "error");
            char code[64], msg[400];
            fail(c, "qlorad closed the connection: %s: %s",
                 qlora_str(qlora_get(e, "code"), "?", code, sizeof code),
                 qlora_str(qlora_get(e, "message"), "", msg, sizeof msg));
            msgpack_unpacked_destroy(f);
            return QLORA_TRANSPORT;
        }
        pending *p = malloc(sizeof *p);
        if (!p) {
            msgpack_unpacked_destroy(f);
            return fail(c, "out of memory queueing a reply");
        }
        *p = (pending){.id = got, .frame = *f};
        if (c->tail)
            c->tail->next = p;
        else
            c->head = p;
        c->tail = p;
    }
}

/* A NUL-terminated copy of a str object in the reply's zone. */
static const char *zone_str(msgpack_zone *z, const msgpack_object *o)
{
    if (!o || o->type != MSGPACK_OBJECT_STR)
        return "";
    char *s = msgpack_zone_malloc(z, o->via.str.size + 1);
    if (!s)
        return "";
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = 0;
    return s;
}

static void reply_init(qlora_reply *r)
{
    r->result.type = MSGPACK_OBJECT_NIL;
    r->code = r->message = "";
    msgpack_unpacked_init(&r->frame);
}

int qlora_wait(qlora_client *c, uint64_t id, qlora_event_fn on_event, void *userdata,
               qlora_reply *reply)
{
    reply_init(reply);
    for (;;) {
        msgpack_unpacked f;
        int rc = next_frame(c, id, &f);
        if (rc != QLORA_OK)
            return rc;
        const msgpack_object *ev = qlora_get(&f.data, "event");
        if (ev) {
            int stop = on_event ? on_event(ev, userdata) : 0;
            msgpack_unpacked_destroy(&f);
            if (stop)
                return QLORA_STOPPED;
            continue;
        }
        const msgpack_object *ok = qlora_get(&f.data, "ok");
        if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN) {
            msgpack_unpacked_destroy(&f);
            return fail(c, "qlorad sent a reply to request %llu with neither 'event' nor 'ok'",
                        (unsigned long long)id);
        }
        reply->frame = f;
        if (ok->via.boolean) {
            const msgpack_object *res = qlora_get(&f.data, "result");
            if (res)
                reply->result = *res;
            return QLORA_OK;
        }
        const msgpack_object *e = qlora_get(&f.data, "error");
        reply->code = zone_str(f.zone, qlora_get(e, "code"));
        reply->message = zone_str(f.zone, qlora_get(e, "message"));
        return QLORA_SERVER_ERROR;
    }
}

int qlora_stream(qlora_client *c, const char *op, const qlora_args *args,
                 qlora_event_fn on_event, void *userdata, qlora_reply *reply)
{
    uint64_t id;
    int rc = qlora_send(c, op, args, &id);
    if (rc != QLORA_OK) {
        reply_init(reply);
        return rc;
    }
    return qlora_wait(c, id, on_event, userdata, reply);
}

int qlora_call(qlora_client *c, const char *op, const qlora_args *args, qlora_reply *reply)
{
    return qlora_stream(c, op, args, NULL, NULL, reply);
}

void qlora_reply_free(qlora_reply *reply)
{
    msgpack_unpacked_destroy(&reply->frame);
    reply_init(reply);
}
