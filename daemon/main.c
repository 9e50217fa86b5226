/* main.c: qlorad. Loads the base once, opens the store, resumes interrupted jobs and
 * serves the wire protocol until SIGTERM or SIGINT, then stops cleanly: no new
 * connections, the running job checkpoints at its next step, the store is closed. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "parallel.h"
#include "qlorad.h"

static const char usage[] =
    "usage: qlorad --model DIR --db DIR --socket PATH [--quant F] [--block B] [--no-double-quant]\n"
    "              [--listen HOST:PORT --token-file FILE] [--max-frame BYTES] [--threads N]\n"
    "              [--adapter-cache-mb N] [--max-queued N] [--max-running N] [--max-output BYTES]\n"
    "              [--db-max-mb N] [--max-connections N] [--max-requests N] [--max-inflight N]\n"
    "              [--max-watches N] [--auth-timeout S] [--idle-timeout S] [--max-job-crashes N]\n"
    "              [--data-dir DIR] [--cache-dir DIR | --no-cache] [--verbose]\n"
    "  --cache-dir: where the quantized model is kept between starts (default\n"
    "  $XDG_CACHE_HOME/qlorad, else ~/.cache/qlorad)\n";

/* ---- shutdown ---- */

/* The loop ends once every handle is closed: the mailbox and signal handles go last,
 * when the runner has stopped and no pool request can post any more. */
void qd_maybe_finish(qd *d)
{
    if (!d->stopping || !d->runner_done || d->inflight > 0 || d->finished)
        return;
    d->finished = 1;
    server_drain(d);
    uv_close((uv_handle_t *)&d->wake, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
}

static void on_runner_stopped(qd *d)
{
    d->runner_done = 1;
    qd_maybe_finish(d);
}

/* SIGTERM, SIGINT and SIGHUP (a closed terminal) stop cleanly; a second one, from
 * someone who will not wait for the checkpoint, exits at once. The store stays whole
 * either way (every write is one LMDB transaction); a job then resumes from its last
 * checkpoint. */
static void on_signal(uv_signal_t *s, int signum)
{
    qd *d = s->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : signum == SIGINT ? "SIGINT" : "SIGHUP";
    if (d->stopping) {
        qd_log(LOG_WARN, "%s again: exiting now (running jobs resume from their last checkpoint)", name);
        _exit(1);
    }
    d->stopping = 1;
    qd_log(LOG_INFO, "%s: stopping (a running job checkpoints at its next step; a second signal exits at once)", name);
    server_close(d);
    jobs_stop(d, on_runner_stopped);
}

/* ---- options ---- */

static int read_token(const char *path, char **token)
{
    FILE *f = fopen(path, "r");
    char buf[4096];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    if (!f) {
        fprintf(stderr, "qlorad: --token-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = 0;
    if (n < 16) {
        fprintf(stderr, "qlorad: --token-file %s: the token must have at least 16 characters\n", path);
        return -1;
    }
    *token = strdup(buf);
    return *token ? 0 : -1;
}

static int parse_size(const char *flag, const char *v, double min, double max, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (!*v || *end || !(x >= min && x <= max) || x != (double)(long long)x) {
        fprintf(stderr, "qlorad: %s: '%s' is not an integer in %.0f..%.0f\n", flag, v, min, max);
        return -1;
    }
    *out = x;
    return 0;
}

int main(int argc, char **argv)
{
    qd d;
    memset(&d, 0, sizeof d);
    const char *db_dir = NULL, *listen_addr = NULL, *token_file = NULL, *data_dir = NULL;
    qt_spec spec = qt_spec_default(QT_NF4);
    double max_frame = 64 << 20, threads = 0, cache_mb = 256, max_queued = 64, max_running = 1, max_output = 0,
           db_max_mb = 65536, max_conns = 256, max_requests = 16, max_inflight = 64, max_watches = 64,
           auth_timeout = 10, idle_timeout = 600, max_crashes = 3;
    int verbose = 0, quant_set = 0, no_cache = 0;
    const char *cache_dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!strcmp(a, "--no-double-quant")) {
            spec.double_quant = 0;
            continue;
        }
        if (!strcmp(a, "--verbose")) {
            verbose = 1;
            continue;
        }
        if (!strcmp(a, "--no-cache")) {
            no_cache = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "qlorad: unexpected argument '%s' (or it lacks its value)\n%s", a, usage);
            return 2;
        }
        i++;
        double block;
        int bad = 0;
        if (!strcmp(a, "--model")) d.model_dir = v;
        else if (!strcmp(a, "--db")) db_dir = v;
        else if (!strcmp(a, "--socket")) d.socket_path = v;
        else if (!strcmp(a, "--listen")) listen_addr = v;
        else if (!strcmp(a, "--token-file")) token_file = v;
        else if (!strcmp(a, "--data-dir")) data_dir = v;
        else if (!strcmp(a, "--cache-dir")) cache_dir = v;
        else if (!strcmp(a, "--quant")) {
            qt_format f;
            if (llama_quant_parse(v, &f) < 0) {
                fprintf(stderr, "qlorad: --quant: '%s' is not one of native %s\n", v, qt_format_list());
                return 2;
            }
            quant_set = 1;
            int dq = spec.double_quant;
            spec = llama_quant_spec(f);
            spec.double_quant = spec.double_quant && dq;
        } else if (!strcmp(a, "--block")) {
            bad = parse_size(a, v, QT_BLOCK_MIN, QT_BLOCK_MAX, &block);
            spec.block = (int)block;
        } else if (!strcmp(a, "--max-frame")) bad = parse_size(a, v, 4096, 1 << 30, &max_frame);
        else if (!strcmp(a, "--threads")) bad = parse_size(a, v, 1, 1024, &threads);
        else if (!strcmp(a, "--adapter-cache-mb")) bad = parse_size(a, v, 0, 1 << 20, &cache_mb);
        else if (!strcmp(a, "--max-queued")) bad = parse_size(a, v, 0, 1 << 20, &max_queued);
        else if (!strcmp(a, "--max-running")) bad = parse_size(a, v, 1, 64, &max_running);
        else if (!strcmp(a, "--max-output")) bad = parse_size(a, v, 65536, 1ull << 40, &max_output);
        else if (!strcmp(a, "--db-max-mb")) bad = parse_size(a, v, 1, 1 << 24, &db_max_mb);
        else if (!strcmp(a, "--max-connections")) bad = parse_size(a, v, 1, 1 << 20, &max_conns);
        else if (!strcmp(a, "--max-requests")) bad = parse_size(a, v, 1, 1 << 20, &max_requests);
        else if (!strcmp(a, "--max-inflight")) bad = parse_size(a, v, 1, 1 << 20, &max_inflight);
        else if (!strcmp(a, "--max-watches")) bad = parse_size(a, v, 1, 1 << 20, &max_watches);
        else if (!strcmp(a, "--auth-timeout")) bad = parse_size(a, v, 1, 86400, &auth_timeout);
        else if (!strcmp(a, "--idle-timeout")) bad = parse_size(a, v, 0, 1 << 30, &idle_timeout);
        else if (!strcmp(a, "--max-job-crashes")) bad = parse_size(a, v, 1, 1 << 20, &max_crashes);
        else {
            fprintf(stderr, "qlorad: unknown option '%s'\n%s", a, usage);
            return 2;
        }
        if (bad)
            return 2;
    }
    if (!d.model_dir || !db_dir || !d.socket_path) {
        fprintf(stderr, "qlorad: --model, --db and --socket are required\n%s", usage);
        return 2;
    }
    if (listen_addr && !token_file) {
        fprintf(stderr, "qlorad: --listen needs --token-file (TCP never runs without a token)\n");
        return 2;
    }
    if (max_output > 0 && max_output < max_frame) {
        /* an answer of max_frame bytes to a client that reads could never be sent */
        fprintf(stderr, "qlorad: --max-output %.0f is less than --max-frame %.0f\n", max_output, max_frame);
        return 2;
    }
    char err[1024];
    if (qt_spec_check(spec, err, sizeof err) < 0) {
        fprintf(stderr, "qlorad: %s\n", err);
        return 2;
    }
    if (token_file && read_token(token_file, &d.token) < 0)
        return 2;
    /* job.submit's {path} resolves below this descriptor only (daemon/files.c) */
    d.data_dir_fd = data_dir ? open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (data_dir && d.data_dir_fd < 0) {
        fprintf(stderr, "qlorad: --data-dir %s: %s\n", data_dir, strerror(errno));
        free(d.token);
        return 2;
    }
    qd_log_verbose(verbose);
    if (threads > 0)
        rt_set_threads((int)threads);
    if (!getenv("UV_THREADPOOL_SIZE")) /* inference requests run side by side on the pool */
        setenv("UV_THREADPOOL_SIZE", "4", 0);
    d.max_frame = (size_t)max_frame;
    /* by default room for one whole frame more than a client may send */
    d.max_out = max_output > 0 ? (size_t)max_output : d.max_frame + (16u << 20);
    d.max_queued = (int)max_queued;
    d.max_running = (int)max_running;
    d.max_conns = (int)max_conns;
    d.max_requests = (int)max_requests;
    d.max_inflight = (int)max_inflight;
    d.max_watches = (int)max_watches;
    d.auth_timeout_ms = (uint64_t)auth_timeout * 1000;
    d.idle_timeout_ms = (uint64_t)idle_timeout * 1000;
    d.max_crashes = (int)max_crashes;
    d.started = now_s();
    pthread_mutex_init(&d.mail_lock, NULL);
    pthread_mutex_init(&d.active_lock, NULL);

    int rc = 1;
    if (!quant_set && gguf_is_file(d.model_dir)) /* a GGUF file keeps its types unless told */
        spec = llama_quant_spec(LLAMA_QUANT_NATIVE);
    qd_log(LOG_INFO, "qlorad %s: loading %s as %s", QLORAD_VERSION, d.model_dir,
           spec.format == LLAMA_QUANT_NATIVE ? "native" : qt_format_name(spec.format));
    if (no_cache)
        d.cache_dir[0] = 0;
    else if (cache_dir)
        snprintf(d.cache_dir, sizeof d.cache_dir, "%s", cache_dir);
    else if (llama_cache_default_dir(d.cache_dir, sizeof d.cache_dir) < 0)
        qd_log(LOG_WARN, "no model cache: neither XDG_CACHE_HOME nor HOME is set (--cache-dir DIR)");
    if (qd_load_model(&d, spec, &d.model, err, sizeof err) < 0) {
        qd_log(LOG_ERROR, "%s", err);
        free(d.token);
        return 1;
    }
    if (tok_load_dir(&d.tok, d.model_dir, d.model.cfg.vocab_size, err, sizeof err) < 0) {
        qd_log(LOG_ERROR, "%s", err);
        goto out_model;
    }
    /* the model's chat template, for chat: one that does not compile is told per request */
    int ct = sft_chat_load(&d.chat, d.model_dir, NULL, d.chat_error, sizeof d.chat_error);
    if (ct == 1)
        snprintf(d.chat_error, sizeof d.chat_error, "the model has no chat template");
    else if (ct < 0)
        qd_log(LOG_WARN, "chat template: %s (chat needs a named built-in template)", d.chat_error);
    /* before the store is touched: a second daemon on it would run the same jobs */
    int db_lock = store_lock(db_dir, "qlorad", err, sizeof err);
    if (db_lock < 0) {
        qd_log(LOG_ERROR, "--db %s: %s", db_dir, err);
        goto out_tok;
    }
    if (store_open(&d.db, db_dir, (size_t)db_max_mb << 20, err, sizeof err) < 0) {
        qd_log(LOG_ERROR, "--db %s: %s", db_dir, err);
        store_unlock(db_lock);
        goto out_tok;
    }
    d.cache = cache_new((size_t)cache_mb << 20);
    d.loop = uv_default_loop();
    d.loop_thread = pthread_self();
    /* listening first: the mailbox must exist before the runner can post to it, and no
     * connection is accepted before uv_run */
    if (!d.cache || server_listen(&d, listen_addr, err, sizeof err) < 0 || jobs_start(&d, err, sizeof err) < 0) {
        qd_log(LOG_ERROR, "%s", d.cache ? err : "out of memory");
        if (d.listening)
            unlink(d.socket_path);
        goto out_jobs;
    }
    uv_signal_init(d.loop, &d.sigterm);
    uv_signal_init(d.loop, &d.sigint);
    uv_signal_init(d.loop, &d.sighup);
    d.sigterm.data = d.sigint.data = d.sighup.data = &d;
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sighup, on_signal, SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    qd_log(LOG_INFO, "serving on %s%s%s (%s, %d layers, dim %d, %.3f bits/param; base %016llx)", d.socket_path,
           listen_addr ? " and " : "", listen_addr ? listen_addr : "", qt_format_name(spec.format), d.model.cfg.n_layers,
           d.model.cfg.dim, llama_linear_bits(&d.model), (unsigned long long)d.model.fingerprint);
    uv_run(d.loop, UV_RUN_DEFAULT);
    rc = 0;
    qd_log(LOG_INFO, "stopped");
out_jobs:
    jobs_free(&d);
    if (d.loop)
        uv_loop_close(d.loop);
    cache_free(d.cache);
    store_close(d.db);
    store_unlock(db_lock);
out_tok:
    sft_chat_free(&d.chat);
    tok_free(d.tok);
out_model:
    llama_free(&d.model);
    free(d.token);
    if (d.data_dir_fd >= 0)
        close(d.data_dir_fd);
    return rc;
}
