/* test_client_c.c: libqloraclient against a real qlorad (stories260K, nf4, Unix socket and
 * TCP): synchronous calls, error codes, streaming, pipelining, stopping and resuming a
 * stream, token authentication, and the JSON writer. TAP output.
 * usage: test_client_c QLORAD SHARED_DIR */
#include <arpa/inet.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qloraclient.h"
#include "tap.h"

static char dir[] = "/tmp/qlora-client-c-XXXXXX";
static char sock_path[128], host[64], token[] = "qlora-client-c-test-token";

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Starts qlorad and waits until its socket accepts; the pid, or -1. */
static pid_t start_daemon(const char *qlorad, const char *shared)
{
    char model[4096], db[160], token_file[160], log[160];
    snprintf(model, sizeof model, "%s/models/stories260K", shared);
    snprintf(db, sizeof db, "%s/db", dir);
    snprintf(token_file, sizeof token_file, "%s/token", dir);
    snprintf(log, sizeof log, "%s/qlorad.log", dir);
    snprintf(sock_path, sizeof sock_path, "%s/qlorad.sock", dir);
    snprintf(host, sizeof host, "127.0.0.1:%d", free_port());
    FILE *f = fopen(token_file, "w");
    if (!f || fprintf(f, "%s\n", token) < 0 || fclose(f) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(qlorad, qlorad, "--model", model, "--quant", "nf4", "--db", db, "--socket", sock_path,
              "--listen", host, "--token-file", token_file, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1200 && pid > 0; i++) { /* up to a minute */
        char err[256];
        qlora_client *c = qlora_connect_unix(sock_path, err, sizeof err);
        if (c) {
            qlora_close(c);
            return pid;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    return -1;
}

/* {text: s} */
static void args_text(qlora_args *a, const char *key, const char *s)
{
    qlora_args_init(a);
    msgpack_pack_map(&a->pk, 1);
    qlora_pack_str(&a->pk, key);
    qlora_pack_str(&a->pk, s);
}

static void args_generate(qlora_args *a, int max_tokens)
{
    qlora_args_init(a);
    msgpack_pack_map(&a->pk, 4);
    qlora_pack_str(&a->pk, "prompt");
    qlora_pack_str(&a->pk, "Once upon a time");
    qlora_pack_str(&a->pk, "max_tokens");
    msgpack_pack_int(&a->pk, max_tokens);
    qlora_pack_str(&a->pk, "temperature");
    msgpack_pack_double(&a->pk, 0);
    qlora_pack_str(&a->pk, "stream");
    msgpack_pack_true(&a->pk);
}

/* What the stream callbacks collect. */
typedef struct {
    int n, stop_at;
    long tokens[256];
    char text[4096];
} collected;

static int collect(const msgpack_object *ev, void *userdata)
{
    collected *c = userdata;
    const msgpack_object *t = qlora_get(ev, "text");
    if (c->n < 256)
        c->tokens[c->n] = (long)qlora_num(qlora_get(ev, "token"), -1);
    c->n++;
    if (t && t->type == MSGPACK_OBJECT_STR)
        strncat(c->text, t->via.str.ptr, t->via.str.size < 100 ? t->via.str.size : 100);
    return c->n == c->stop_at;
}

/* Checks that the collected events match the final generate result. */
static void check_stream_result(const collected *got, const msgpack_object *result)
{
    const msgpack_object *tokens = qlora_get(result, "tokens");
    CHECK(tokens && tokens->type == MSGPACK_OBJECT_ARRAY, "result has tokens");
    if (!tokens || tokens->type != MSGPACK_OBJECT_ARRAY)
        return;
    CHECK(got->n == (int)tokens->via.array.size && got->n > 0, "%d events for %u tokens", got->n,
          tokens->via.array.size);
    for (int i = 0; i < got->n && i < (int)tokens->via.array.size; i++)
        CHECK(got->tokens[i] == (long)tokens->via.array.ptr[i].via.u64, "token %d", i);
    char text[4096];
    CHECK(!strcmp(got->text, qlora_str(qlora_get(result, "text"), "", text, sizeof text)),
          "events' text '%s' vs result '%s'", got->text, text);
}

static void test_calls(qlora_client *c)
{
    qlora_reply r;
    CHECK(qlora_call(c, "ping", NULL, &r) == QLORA_OK, "ping: %s", qlora_last_error(c));
    char version[32];
    CHECK(strlen(qlora_str(qlora_get(&r.result, "version"), "", version, sizeof version)) > 0, "version");
    CHECK(qlora_num(qlora_get(&r.result, "uptime_s"), -1) >= 0, "uptime");
    CHECK(!strcmp(r.code, "") && !strcmp(r.message, ""), "no error on success");
    qlora_reply_free(&r);
    test_case("a synchronous call returns the decoded result");

    qlora_args a;
    args_text(&a, "text", "hello world");
    static const long want[] = {1, 281, 306, 414, 263, 304, 341};
    CHECK(qlora_call(c, "tokenize", &a, &r) == QLORA_OK, "tokenize");
    const msgpack_object *t = qlora_get(&r.result, "tokens");
    CHECK(t && t->type == MSGPACK_OBJECT_ARRAY && t->via.array.size == 7, "7 tokens");
    for (uint32_t i = 0; t && t->type == MSGPACK_OBJECT_ARRAY && i < t->via.array.size && i < 7; i++)
        CHECK((long)t->via.array.ptr[i].via.u64 == want[i], "token %u", i);
    qlora_reply_free(&r);
    qlora_args_free(&a);
    test_case("tokenize gives the reference ids of 'hello world'");
}

static void test_errors(qlora_client *c)
{
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, 1);
    qlora_pack_str(&a.pk, "job_id");
    msgpack_pack_uint64(&a.pk, 999999);
    qlora_reply r;
    CHECK(qlora_call(c, "job.get", &a, &r) == QLORA_SERVER_ERROR, "job.get of a missing job");
    CHECK(!strcmp(r.code, "not_found") && strlen(r.message) > 0, "%s: %s", r.code, r.message);
    CHECK(r.result.type == MSGPACK_OBJECT_NIL, "no result with an error");
    qlora_reply_free(&r);
    qlora_args_free(&a);
    CHECK(qlora_call(c, "no.such.op", NULL, &r) == QLORA_SERVER_ERROR && !strcmp(r.code, "unknown_op"),
          "%s", r.code);
    qlora_reply_free(&r);
    CHECK(qlora_call(c, "job.get", NULL, &r) == QLORA_SERVER_ERROR && !strcmp(r.code, "bad_request"),
          "%s", r.code);
    qlora_reply_free(&r);
    CHECK(qlora_call(c, "ping", NULL, &r) == QLORA_OK, "the connection still serves");
    qlora_reply_free(&r);
    test_case("server errors come back with their code and message");

    qlora_args_init(&a); /* nothing packed */
    CHECK(qlora_call(c, "ping", &a, &r) == QLORA_TRANSPORT, "empty args refused");
    CHECK(strstr(qlora_last_error(c), "empty") != NULL, "%s", qlora_last_error(c));
    qlora_reply_free(&r);
    qlora_args_free(&a);
    test_case("arguments with nothing packed are refused before sending");
}

static void test_streams(qlora_client *c)
{
    qlora_args a;
    qlora_reply r;
    collected got = {0};
    args_generate(&a, 16);
    CHECK(qlora_stream(c, "generate", &a, collect, &got, &r) == QLORA_OK, "%s", qlora_last_error(c));
    check_stream_result(&got, &r.result);
    qlora_reply_free(&r);
    test_case("a streaming call passes every event to the callback, then returns the result");

    uint64_t gen_id, ping_id;
    collected piped = {0};
    CHECK(qlora_send(c, "generate", &a, &gen_id) == QLORA_OK, "send generate");
    CHECK(qlora_send(c, "ping", NULL, &ping_id) == QLORA_OK, "send ping");
    CHECK(gen_id != ping_id, "distinct ids");
    CHECK(qlora_wait(c, ping_id, NULL, NULL, &r) == QLORA_OK && qlora_get(&r.result, "uptime_s"), "ping first");
    qlora_reply_free(&r);
    CHECK(qlora_wait(c, gen_id, collect, &piped, &r) == QLORA_OK, "then generate");
    check_stream_result(&piped, &r.result);
    CHECK(piped.n == got.n && !strcmp(piped.text, got.text), "same stream when pipelined");
    qlora_reply_free(&r);
    test_case("pipelined requests: each reply found by id, events kept in order");

    collected stopped = {.stop_at = 3};
    uint64_t stop_id;
    CHECK(qlora_send(c, "generate", &a, &stop_id) == QLORA_OK, "send");
    CHECK(qlora_wait(c, stop_id, collect, &stopped, &r) == QLORA_STOPPED, "stopped");
    qlora_reply_free(&r);
    CHECK(stopped.n == 3, "three events before the stop");
    CHECK(qlora_send(c, "ping", NULL, &ping_id) == QLORA_OK, "another request meanwhile");
    CHECK(qlora_wait(c, ping_id, NULL, NULL, &r) == QLORA_OK, "answered");
    qlora_reply_free(&r);
    CHECK(qlora_wait(c, stop_id, collect, &stopped, &r) == QLORA_OK, "resumed: %s", qlora_last_error(c));
    check_stream_result(&stopped, &r.result);
    qlora_reply_free(&r);
    qlora_args_free(&a);
    test_case("a callback can stop a stream; waiting on its id again resumes it");
}

static void test_connect(void)
{
    char err[512];
    qlora_client *c = qlora_connect_unix("/nonexistent/qlorad.sock", err, sizeof err);
    CHECK(!c && strstr(err, "/nonexistent/qlorad.sock"), "%s", err);
    test_case("connecting to a missing socket fails naming it");

    c = qlora_connect_tcp(host, token, err, sizeof err);
    CHECK(c != NULL, "%s", err);
    qlora_reply r;
    CHECK(c && qlora_call(c, "ping", NULL, &r) == QLORA_OK, "ping over TCP");
    if (c)
        qlora_reply_free(&r);
    qlora_close(c);
    c = qlora_connect_tcp(host, "not-the-token-at-all", err, sizeof err);
    CHECK(!c && strstr(err, "unauthorized") && strstr(err, host), "%s", err);
    qlora_close(c);
    c = qlora_connect_tcp("127.0.0.1", token, err, sizeof err);
    CHECK(!c && strstr(err, "HOST:PORT"), "%s", err);
    test_case("TCP authenticates with the token first; a wrong token cannot connect");
}

static void test_json(void)
{
    /* {"a": [1, -2, 0.5, nil, true], "s": "q\"\n\x01", 7: bin(0xff 0x00 0x10), "e": {}} */
    static const unsigned char mp[] = {0x84, 0xa1, 'a', 0x95, 0x01, 0xfe, 0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0,
                                       0xc0, 0xc3, 0xa1, 's', 0xa4, 'q', '"', '\n', 0x01, 0x07, 0xc4, 0x03,
                                       0xff, 0x00, 0x10, 0xa1, 'e', 0x80};
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&u, (const char *)mp, sizeof mp, &off) == MSGPACK_UNPACK_SUCCESS, "unpack");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f && qlora_write_json(f, &u.data) == 0, "write");
    if (f)
        fclose(f);
    const char *want = "{\"a\": [1, -2, 0.5, null, true], \"s\": \"q\\\"\\n\\u0001\", \"7\": \"/wAQ\", \"e\": {}}";
    CHECK(text && !strcmp(text, want), "got  %s\n# want %s", text ? text : "", want);
    char buf[8];
    CHECK(!strcmp(qlora_str(qlora_get(&u.data, "s"), "", buf, 3), "q\""), "truncated copy");
    CHECK(qlora_num(qlora_get(&u.data, "missing"), 42) == 42 && qlora_is_nil(qlora_get(&u.data, "x")), "defaults");
    free(text);
    msgpack_unpacked_destroy(&u);
    test_case("JSON: escapes, base64 for bin, quoted non-string keys; lookups with defaults");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_client_c QLORAD SHARED_DIR\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    test_json();
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    pid_t pid = start_daemon(argv[1], argv[2]);
    CHECK(pid > 0, "qlorad started (log in %s)", dir);
    test_case("qlorad starts");
    if (pid > 0) {
        char err[512];
        qlora_client *c = qlora_connect_unix(sock_path, err, sizeof err);
        CHECK(c != NULL, "%s", err);
        if (c) {
            test_calls(c);
            test_errors(c);
            test_streams(c);
            qlora_close(c);
        }
        test_connect();
        int status = -1;
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
        test_case("qlorad stops cleanly on SIGTERM");
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return tap_done();
}
