/* server.c: the sockets. Accepts on the Unix socket (mode 0600) and optionally TCP, cuts
 * the byte stream into frames (4-byte big-endian length, then one msgpack object), hands
 * each frame to the command table, and writes responses, bounding what a slow client can
 * make the daemon hold. Other threads reach a connection only through the mailbox. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "qlorad.h"

struct mail {
    uint64_t conn_id;
    char *frame;         /* a frame to send, or NULL */
    size_t len;
    void (*fn)(qd *d, void *arg);
    void *arg;
    mail *next;
};

conn *qd_conn(qd *d, uint64_t id)
{
    for (conn *c = d->conns; c; c = c->next)
        if (c->id == id && !c->closing)
            return c;
    return NULL;
}

/* The last of a connection's two handles is closed: nothing can refer to it any more. */
static void on_handle_closed(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    jobs_conn_closed(c->d, c->id);
    c->d->n_conns--;
    conn_life_put(c->life);
    free(c->in);
    free(c);
}

static void conn_release(conn *c)
{
    if (!uv_is_closing(&c->h.handle))
        uv_close(&c->h.handle, on_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* Out of the list (qd_conn no longer finds it, so nothing more is sent) and deaf. */
static int conn_unlink(conn *c)
{
    if (c->closing)
        return -1;
    c->closing = 1;
    atomic_store(&c->life->gone, 1);
    qd *d = c->d;
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_read_stop(&c->h.stream);
    return 0;
}

void conn_abort(conn *c)
{
    conn_unlink(c);
    conn_release(c);
}

static void on_shutdown(uv_shutdown_t *sh, int status)
{
    (void)status;
    conn_release(sh->handle->data);
    free(sh);
}

static void on_linger_over(uv_timer_t *t)
{
    conn_release(t->data);
}

/* How long written frames may take to leave once a connection is closing. */
#define CLOSE_LINGER_MS 5000

void conn_close(conn *c)
{
    if (conn_unlink(c) < 0)
        return;
    uv_timer_start(&c->timer, on_linger_over, CLOSE_LINGER_MS, 0);
    uv_shutdown_t *sh = malloc(sizeof *sh);
    if (!sh || uv_shutdown(sh, &c->h.stream, on_shutdown) < 0) {
        free(sh);
        conn_release(c);
    }
}

typedef struct {
    uv_write_t w;
    conn *c;
    size_t cost;
    char *data;
} write_req;

static void conn_take_frames(conn *c);

static void on_written(uv_write_t *w, int status)
{
    write_req *wr = (write_req *)w;
    conn *c = wr->c;
    c->out_pending -= wr->cost;
    free(wr->data);
    free(wr);
    if (status < 0) {
        /* the peer has gone (EPIPE, ECONNRESET). A connection paused at a limit reads
         * nothing, so no read error would ever tell: close it here */
        if (status != UV_ECANCELED)
            conn_abort(c);
        return;
    }
    c->last_active = uv_now(c->d->loop);
    if (c->paused && !c->closing)
        conn_take_frames(c);
}

/* Takes ownership of data. What a frame costs is what it holds allocated, not its
 * length alone: a client that does not read is bounded by the memory it makes us keep. */
static void conn_write(conn *c, char *data, size_t len)
{
    if (c->closing) {
        free(data);
        return;
    }
    size_t cost = len + sizeof(write_req);
    if (c->out_pending + cost > c->d->max_out) {
        qd_log(LOG_WARN, "connection %llu: %zu bytes waiting for a client that does not read; closing it",
               (unsigned long long)c->id, c->out_pending);
        free(data);
        conn_abort(c);
        return;
    }
    write_req *wr = malloc(sizeof *wr);
    if (!wr) {
        free(data);
        conn_abort(c);
        return;
    }
    wr->c = c, wr->cost = cost, wr->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int rc = uv_write(&wr->w, &c->h.stream, &b, 1, on_written);
    if (rc < 0) {
        free(data);
        free(wr);
        conn_abort(c);
        return;
    }
    c->out_pending += cost;
}

/* The frame of a finished packer, its buffer cut to its length (msgpack-c grows buffers
 * by doubling from 8 KiB: a 60-byte error would otherwise hold 8 KiB). */
static char *take_frame(mp_out *o, size_t *len)
{
    size_t alloc = o->sb.alloc;
    *len = o->sb.size;
    char *frame = msgpack_sbuffer_release(&o->sb);
    if (frame && alloc > *len + 64) {
        char *cut = realloc(frame, *len);
        if (cut)
            frame = cut;
    }
    return frame;
}

static void deliver(qd *d, mail *m)
{
    if (m->fn) {
        m->fn(d, m->arg);
        return;
    }
    conn *c = qd_conn(d, m->conn_id);
    if (c)
        conn_write(c, m->frame, m->len);
    else
        free(m->frame);
}

static void on_wake(uv_async_t *a)
{
    qd *d = a->data;
    pthread_mutex_lock(&d->mail_lock);
    mail *m = d->mail_head;
    d->mail_head = d->mail_tail = NULL;
    pthread_mutex_unlock(&d->mail_lock);
    while (m) {
        mail *next = m->next;
        deliver(d, m);
        free(m);
        m = next;
    }
}

static void post(qd *d, mail *m)
{
    pthread_mutex_lock(&d->mail_lock);
    if (d->mail_tail)
        d->mail_tail->next = m;
    else
        d->mail_head = m;
    d->mail_tail = m;
    pthread_mutex_unlock(&d->mail_lock);
    uv_async_send(&d->wake);
}

void qd_send(qd *d, uint64_t conn_id, mp_out *o)
{
    mp_out_finish(o);
    if (pthread_equal(pthread_self(), d->loop_thread)) {
        conn *c = qd_conn(d, conn_id);
        size_t len;
        char *frame = take_frame(o, &len);
        if (c && frame)
            conn_write(c, frame, len);
        else
            free(frame);
        return;
    }
    mail *m = calloc(1, sizeof *m);
    if (!m || !o->sb.data) {
        free(m);
        mp_out_free(o);
        return;
    }
    m->conn_id = conn_id;
    m->frame = take_frame(o, &m->len);
    post(d, m);
}

void qd_call(qd *d, void (*fn)(qd *d, void *arg), void *arg)
{
    mail *m = calloc(1, sizeof *m);
    if (!m) {
        /* a call cannot be dropped (a runner's stop that never arrives hangs the shutdown, a
         * final event lost leaves its watch open forever) and nothing else can carry it:
         * out of memory for these few bytes, the daemon aborts, saying so */
        qd_log(LOG_ERROR, "out of memory posting to the loop");
        abort();
    }
    m->fn = fn, m->arg = arg;
    post(d, m);
}

/* ---- reading frames ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn *c = h->data;
    (void)suggested;
    /* before auth one small frame is all a connection may send: a small buffer */
    size_t room = c->authed ? 65536 : PREAUTH_MAX_FRAME + 4;
    if (c->in_cap - c->in_len < room) {
        size_t cap = c->in_cap ? c->in_cap * 2 : c->authed ? 131072 : room;
        if (cap < c->in_len + room)
            cap = c->in_len + room;
        char *p = realloc(c->in, cap);
        if (!p) {
            *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
            return;
        }
        c->in = p, c->in_cap = cap;
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static size_t frame_length(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (size_t)u[0] << 24 | (size_t)u[1] << 16 | (size_t)u[2] << 8 | u[3];
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* Dispatches the whole frames buffered, as long as the connection may have more requests
 * in flight; past that it stops reading (the client's writes then block in its kernel
 * buffer) until conn_resume. Pipelining thus never costs more than --max-requests
 * frames per connection and --max-inflight in all. */
static void conn_take_frames(conn *c)
{
    qd *d = c->d;
    size_t used = 0;
    int full = 0;
    while (!c->closing && c->in_len - used >= 4) {
        /* nor while half its output budget waits for it to read: a pipelining client is
         * paced by its own reading, and only output that comes anyway (events) can reach
         * the limit that closes the connection */
        if (c->requests >= d->max_requests || d->inflight >= d->max_inflight || c->out_pending >= d->max_out / 2) {
            full = 1;
            break;
        }
        size_t len = frame_length(c->in + used);
        if (!c->authed && len > PREAUTH_MAX_FRAME) {
            send_error(d, c->id, 0, ERR_UNAUTHORIZED, "a frame of %zu bytes before auth (at most %d)", len,
                       PREAUTH_MAX_FRAME);
            conn_abort(c);
            return;
        }
        if (len == 0 || len > d->max_frame) {
            send_error(d, c->id, 0, ERR_BAD_FRAME, "frame length %zu is not in 1..%zu (max_frame)", len, d->max_frame);
            conn_close(c);
            return;
        }
        if (c->in_len - used - 4 < len)
            break;
        ops_dispatch(d, c, c->in + used + 4, len);
        used += 4 + len;
    }
    if (c->closing)
        return;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    if (full != c->paused) {
        c->paused = full;
        if (full)
            uv_read_stop(&c->h.stream);
        else
            uv_read_start(&c->h.stream, on_alloc, on_read);
    }
    /* The buffer grows by doubling as bytes arrive (on_alloc), never to the length a frame
     * declares: four bytes claiming 64 MiB must not cost 64 MiB. */
}

void conn_life_put(conn_life *l)
{
    if (l && atomic_fetch_sub(&l->refs, 1) == 1)
        free(l);
}

/* Paused connections take frames again, those with the fewest requests in flight first:
 * when the daemon-wide limit is what stopped them, a client that pipelines does not keep
 * the freed places from one that waits for its single answer. */
void conn_resume(qd *d)
{
    for (;;) {
        conn *next = NULL;
        for (conn *c = d->conns; c; c = c->next)
            if (c->paused && c->requests < d->max_requests && c->out_pending < d->max_out / 2 &&
                (!next || c->requests < next->requests))
                next = c;
        if (!next || d->inflight >= d->max_inflight)
            return;
        int before = d->inflight;
        conn_take_frames(next);
        if (d->inflight == before && next->paused && !next->closing)
            return; /* it could take nothing: nobody else can either */
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn *c = s->data;
    (void)buf;
    if (n < 0) {
        if (n != UV_EOF)
            qd_log(LOG_DEBUG, "connection %llu: %s", (unsigned long long)c->id, uv_strerror((int)n));
        conn_close(c);
        return;
    }
    c->in_len += (size_t)n;
    c->last_active = uv_now(c->d->loop);
    conn_take_frames(c);
}

/* Before auth: the deadline. After: closes a connection that neither sent nor took any
 * bytes for the idle timeout and waits for nothing (no request in flight, no watch);
 * output it does not read does not keep it open. */
static void on_timer(uv_timer_t *t)
{
    conn *c = t->data;
    qd *d = c->d;
    if (!c->authed) {
        qd_log(LOG_INFO, "connection %llu: no auth within %llu ms; closing it", (unsigned long long)c->id,
               (unsigned long long)d->auth_timeout_ms);
        send_error(d, c->id, 0, ERR_UNAUTHORIZED, "no auth within %llu ms", (unsigned long long)d->auth_timeout_ms);
        conn_abort(c);
        return;
    }
    uint64_t idle = uv_now(d->loop) - c->last_active;
    if (idle >= d->idle_timeout_ms && c->requests == 0 && jobs_conn_watches(d, c->id) == 0) {
        qd_log(LOG_DEBUG, "connection %llu: idle for %llu ms; closing it", (unsigned long long)c->id,
               (unsigned long long)idle);
        if (c->out_pending)
            conn_abort(c);
        else
            conn_close(c);
        return;
    }
    uv_timer_start(t, on_timer, idle < d->idle_timeout_ms ? d->idle_timeout_ms - idle : d->idle_timeout_ms, 0);
}

/* After auth the timer watches for idleness (when there is an idle timeout). */
void conn_authed(conn *c)
{
    c->authed = 1;
    uv_timer_stop(&c->timer);
    if (c->d->idle_timeout_ms)
        uv_timer_start(&c->timer, on_timer, c->d->idle_timeout_ms, 0);
}

/* A connection on a stream handle that h's init made: into the list, its timer running,
 * reading. Refused (told busy, closed) past --max-connections. */
static void conn_start(qd *d, conn *c)
{
    c->id = ++d->next_conn_id;
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    c->last_active = uv_now(d->loop);
    if (d->n_conns > d->max_conns) {
        /* accepted, told and closed at once, so that the backlog does not fill */
        qd_log(LOG_WARN, "connection %llu refused: %d connections open (--max-connections)",
               (unsigned long long)c->id, d->n_conns - 1);
        send_error(d, c->id, 0, ERR_BUSY, "%d connections are open already (--max-connections)", d->n_conns - 1);
        conn_abort(c);
        return;
    }
    if (c->tcp)
        uv_timer_start(&c->timer, on_timer, d->auth_timeout_ms, 0);
    else
        conn_authed(c); /* the socket's mode is the Unix socket's guard */
    uv_read_start(&c->h.stream, on_alloc, on_read);
}

/* A new connection whose handles are initialised but not yet in the list: a TCP or a
 * pipe handle (a pipe may carry a "TCP" client, which must authenticate). */
static conn *conn_new(qd *d, int tcp, int pipe)
{
    conn *c = calloc(1, sizeof *c);
    conn_life *life = calloc(1, sizeof *life);
    if (!c || !life) {
        free(c);
        free(life);
        return NULL;
    }
    atomic_init(&life->refs, 1);
    atomic_init(&life->gone, 0);
    c->life = life;
    c->d = d;
    c->tcp = tcp;
    int rc = !pipe ? uv_tcp_init(d->loop, &c->h.tcp) : uv_pipe_init(d->loop, &c->h.pipe, 0);
    if (rc < 0) {
        free(c->life);
        free(c);
        return NULL;
    }
    uv_timer_init(d->loop, &c->timer);
    c->h.handle.data = c->timer.data = c;
    c->open_handles = 2;
    c->closing = 1; /* not in the list yet */
    d->n_conns++;
    return c;
}

static void on_connection(uv_stream_t *srv, int status)
{
    qd *d = srv->data;
    if (status < 0 || d->stopping)
        return;
    int tcp = srv == (uv_stream_t *)&d->tcp_srv;
    conn *c = conn_new(d, tcp, !tcp);
    if (!c)
        return;
    if (uv_accept(srv, &c->h.stream) < 0) {
        conn_release(c);
        return;
    }
    c->closing = 0;
    conn_start(d, c);
}

int server_adopt(qd *d, int fd, int tcp)
{
    conn *c = conn_new(d, tcp, 1);
    if (!c)
        return -1;
    if (uv_pipe_open(&c->h.pipe, fd) < 0) {
        conn_release(c);
        return -1;
    }
    c->closing = 0;
    conn_start(d, c);
    return 0;
}

/* A socket file left by a dead daemon is replaced; a live daemon's is not stolen. */
static int claim_socket_path(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return 0;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "--socket %s: exists and is not a socket", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    int live = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    if (live) {
        snprintf(err, errlen, "--socket %s: another daemon is serving on it", path);
        return -1;
    }
    if (unlink(path) < 0) {
        snprintf(err, errlen, "--socket %s: cannot remove the stale socket: %s", path, strerror(errno));
        return -1;
    }
    qd_log(LOG_INFO, "replaced the stale socket %s", path);
    return 0;
}

void server_drain(qd *d)
{
    on_wake(&d->wake);
}

int server_init(qd *d, char *err, size_t errlen)
{
    if (uv_async_init(d->loop, &d->wake, on_wake) < 0) {
        snprintf(err, errlen, "cannot create the mailbox");
        return -1;
    }
    d->wake.data = d;
    return 0;
}

int server_listen(qd *d, const char *listen_addr, char *err, size_t errlen)
{
    if (server_init(d, err, errlen) < 0)
        return -1;
    if (strlen(d->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "--socket %s: path too long for a Unix socket", d->socket_path);
        return -1;
    }
    if (claim_socket_path(d->socket_path, err, errlen) < 0)
        return -1;
    uv_pipe_init(d->loop, &d->unix_srv, 0);
    d->unix_srv.data = d;
    mode_t old = umask(0177); /* the socket is born 0600: no window where others may connect */
    int rc = uv_pipe_bind(&d->unix_srv, d->socket_path);
    umask(old);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->unix_srv, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "--socket %s: %s", d->socket_path, uv_strerror(rc));
        return -1;
    }
    chmod(d->socket_path, 0600);
    d->listening = 1;
    if (!listen_addr)
        return 0;
    char host[256];
    const char *colon = strrchr(listen_addr, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || *end || port < 0 || port > 65535 || (size_t)(colon - listen_addr) >= sizeof host) {
        snprintf(err, errlen, "--listen %s: expected HOST:PORT", listen_addr);
        return -1;
    }
    memcpy(host, listen_addr, (size_t)(colon - listen_addr));
    host[colon - listen_addr] = 0;
    struct sockaddr_storage sa;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&sa) < 0 &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&sa) < 0) {
        snprintf(err, errlen, "--listen %s: '%s' is not an IP address", listen_addr, host);
        return -1;
    }
    uv_tcp_init(d->loop, &d->tcp_srv);
    d->tcp_srv.data = d;
    d->have_tcp = 1;
    rc = uv_tcp_bind(&d->tcp_srv, (struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->tcp_srv, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "--listen %s: %s", listen_addr, uv_strerror(rc));
        return -1;
    }
    return 0;
}

void server_close(qd *d)
{
    uv_close((uv_handle_t *)&d->unix_srv, NULL);
    unlink(d->socket_path);
    if (d->have_tcp)
        uv_close((uv_handle_t *)&d->tcp_srv, NULL);
    while (d->conns)
        conn_close(d->conns);
}
