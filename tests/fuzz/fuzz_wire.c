/* fuzz_wire.c: libFuzzer over everything a client reaches: the frame scanner, the
 * msgpack bounds check and decode, the dispatcher with its argument binding, and the ops
 * behind it (eval, generate, jobs, adapter import of fuzzed PEFT files...), on a real
 * qlorad state: stories260K nf4, a temporary store, no job runner (jobs stay queued).
 *
 * An input is one connection: byte 0 chooses a Unix client (even) or a "TCP" client that
 * must authenticate first (odd, token "fuzz-token-0123456789"); the rest is what the
 * client sends, then it half-closes. The connection goes through server_adopt on one end
 * of a socketpair, exactly as an accepted one; the loop runs until it is gone and every
 * pooled request has ended, the other end drained meanwhile.
 *
 * QLORA_FUZZ_MODEL overrides the model directory (default: the shared stories260K). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "parallel.h"
#include "qlorad.h"

static qd d;

/* main.c's: ends the loop at shutdown. The fuzzer's loop never shuts down. */
void qd_maybe_finish(qd *dd)
{
    (void)dd;
}
static char db_dir[] = "/tmp/qlora-fuzz-XXXXXX";
static uv_poll_t peer_poll;
static int peer_fd = -1;

static void rm_db(void)
{
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", db_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_wire: could not remove %s\n", db_dir);
}

static void fatal(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_wire: %s: %s\n", what, err);
    exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[1024];
    const char *model = getenv("QLORA_FUZZ_MODEL");
    d.model_dir = model ? model : QLORA_FUZZ_MODEL_DIR;
    d.socket_path = "";
    d.max_frame = 1 << 20;
    d.max_out = 4 << 20;
    d.max_queued = 4;
    d.max_running = 0; /* jobs are queued, never trained: the fuzzer tests the wire */
    d.max_conns = 8;
    d.max_requests = 4;
    d.max_inflight = 16;
    d.max_watches = 8;
    d.auth_timeout_ms = 10000;
    d.idle_timeout_ms = 0;
    d.data_dir_fd = -1; /* no --data-dir: {path} is refused */
    d.token = strdup("fuzz-token-0123456789");
    d.started = now_s();
    rt_set_threads(1);
    pthread_mutex_init(&d.mail_lock, NULL);
    pthread_mutex_init(&d.active_lock, NULL);
    if (!d.token)
        fatal("token", "out of memory");
    if (llama_load(&d.model, d.model_dir, qt_spec_default(QT_NF4), err, sizeof err) < 0)
        fatal(d.model_dir, err);
    if (tok_load_dir(&d.tok, d.model_dir, d.model.cfg.vocab_size, err, sizeof err) < 0)
        fatal(d.model_dir, err);
    if (!mkdtemp(db_dir))
        fatal("mkdtemp", db_dir);
    atexit(rm_db);
    if (store_open(&d.db, db_dir, 256u << 20, err, sizeof err) < 0)
        fatal(db_dir, err);
    d.cache = cache_new(16u << 20);
    d.loop = uv_default_loop();
    d.loop_thread = pthread_self();
    if (!d.cache || server_init(&d, err, sizeof err) < 0 || jobs_start(&d, err, sizeof err) < 0)
        fatal("start", d.cache ? err : "out of memory");
    return 0;
}

/* What the daemon writes back is read and dropped, so it never blocks on a full buffer. */
static void on_peer(uv_poll_t *p, int status, int events)
{
    (void)p, (void)status, (void)events;
    char buf[65536];
    while (read(peer_fd, buf, sizeof buf) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 0;
    int sndbuf = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    peer_fd = sv[1];
    /* the input fits the socket's buffer (libFuzzer's -max_len is far below a MiB) */
    size_t off = 1;
    while (off < size) {
        ssize_t n = write(sv[1], data + off, size - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    shutdown(sv[1], SHUT_WR);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    if (server_adopt(&d, sv[0], data[0] & 1) < 0) {
        close(sv[0]);
        close(sv[1]);
        return 0;
    }
    uv_poll_init(d.loop, &peer_poll, sv[1]);
    uv_poll_start(&peer_poll, UV_READABLE, on_peer);
    while (d.n_conns > 0 || d.inflight > 0)
        uv_run(d.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&peer_poll, NULL);
    uv_run(d.loop, UV_RUN_NOWAIT);
    close(sv[1]);
    return 0;
}
