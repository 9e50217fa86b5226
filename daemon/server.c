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

static void on_closed(uv_handle_t *h)
{
    conn *c = h->data;
    free(c->in);
    free(c);
}

static void on_shutdown(uv_shutdown_t *sh, int status)
{
    (void)status;
    uv_close((uv_handle_t *)sh->handle, on_closed);
    free(sh);
}

/* Written frames still go out (uv_shutdown waits for them); nothing more is read. */
void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    qd *d = c->d;
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    jobs_conn_closed(d, c->id);
    uv_read_stop(&c->h.stream);
    uv_shutdown_t *sh = malloc(sizeof *sh);
    if (!sh || uv_shutdown(sh, &c->h.stream, on_shutdown) < 0) {
        free(sh);
        uv_close(&c->h.handle, on_closed);
    }
}

typedef struct {
    uv_write_t w;
    conn *c;
    size_t len;
    char *data;
} write_req;

static void on_written(uv_write_t *w, int status)
{
    write_req *wr = (write_req *)w;
    wr->c->out_pending -= wr->len;
    free(wr->data);
    free(wr);
    (void)status; /* a failed write shows up as a read error and closes the connection */
}

/* Takes ownership of data. */
static void conn_write(conn *c, char *data, size_t len)
{
    if (c->closing) {
        free(data);
        return;
    }
    if (c->out_pending + len > c->d->max_out) {
        qd_log(LOG_WARN, "connection %llu: %zu bytes waiting for a client that does not read; closing it",
               (unsigned long long)c->id, c->out_pending);
        free(data);
        conn_close(c);
        return;
    }
    write_req *wr = malloc(sizeof *wr);
    if (!wr) {
        free(data);
        conn_close(c);
        return;
    }
    wr->c = c, wr->len = len, wr->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int rc = uv_write(&wr->w, &c->h.stream, &b, 1, on_written);
    if (rc < 0) {
        free(data);
        free(wr);
        conn_close(c);
        return;
    }
    c->out_pending += len;
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
        size_t len = o->sb.size;
        char *frame = msgpack_sbuffer_release(&o->sb);
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
    m->len = o->sb.size;
    m->frame = msgpack_sbuffer_release(&o->sb);
    post(d, m);
}

void qd_call(qd *d, void (*fn)(qd *d, void *arg), void *arg)
{
    mail *m = calloc(1, sizeof *m);
    if (!m) { /* nothing else can carry it: run it late rather than lose it */
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
    if (c->in_cap - c->in_len < 65536) {
        size_t cap = c->in_cap ? c->in_cap * 2 : 131072;
        char *p = realloc(c->in, cap);
        if (!p) {
            *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
            return;
        }
        c->in = p, c->in_cap = cap;
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
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
    size_t used = 0;
    while (!c->closing && c->in_len - used >= 4) {
        const unsigned char *p = (const unsigned char *)c->in + used;
        size_t len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (len == 0 || len > c->d->max_frame) {
            send_error(c->d, c->id, 0, "bad_frame", "frame length %zu is not in 1..%zu (max_frame)", len,
                       c->d->max_frame);
            conn_close(c);
            return;
        }
        if (c->in_len - used - 4 < len)
            break;
        ops_dispatch(c->d, c, c->in + used + 4, len);
        used += 4 + len;
    }
    if (c->closing)
        return;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    /* a big frame needs its whole length buffered: grow now rather than in small steps */
    if (c->in_len >= 4) {
        const unsigned char *p = (const unsigned char *)c->in;
        size_t need = 4 + ((size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3]) + 65536;
        if (need > c->in_cap) {
            char *q = realloc(c->in, need);
            if (!q) {
                send_error(c->d, c->id, 0, "busy", "out of memory for a frame of %zu bytes", need);
                conn_close(c);
                return;
            }
            c->in = q, c->in_cap = need;
        }
    }
}

static void on_connection(uv_stream_t *srv, int status)
{
    qd *d = srv->data;
    if (status < 0 || d->stopping)
        return;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->d = d;
    c->tcp = srv == (uv_stream_t *)&d->tcp_srv;
    c->authed = !c->tcp;
    int rc = c->tcp ? uv_tcp_init(d->loop, &c->h.tcp) : uv_pipe_init(d->loop, &c->h.pipe, 0);
    if (rc < 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    if (uv_accept(srv, &c->h.stream) < 0) {
        uv_close(&c->h.handle, on_closed);
        return;
    }
    c->id = ++d->next_conn_id;
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    uv_read_start(&c->h.stream, on_alloc, on_read);
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

int server_listen(qd *d, const char *listen_addr, char *err, size_t errlen)
{
    if (uv_async_init(d->loop, &d->wake, on_wake) < 0) {
        snprintf(err, errlen, "cannot create the mailbox");
        return -1;
    }
    d->wake.data = d;
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
