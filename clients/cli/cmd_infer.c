/* cmd_infer.c: qlora ping, status, generate, eval. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void print_ping(cli *x, const msgpack_object *r)
{
    (void)x;
    char v[64];
    printf("qlorad %s, up %.0f s\n", cli_format(qlora_get(r, "version"), v, sizeof v),
           qlora_num(qlora_get(r, "uptime_s"), 0));
}

int cmd_ping(cli *x, int argc, char **argv)
{
    int rc = cli_parse(x, argc, argv, NULL, 0, NULL, 0, 0, NULL);
    return rc ? rc : cli_run(x, "ping", NULL, print_ping);
}

static void print_status(cli *x, const msgpack_object *r)
{
    (void)x;
    const msgpack_object *m = qlora_get(r, "model"), *q = qlora_get(r, "quant"),
                         *mem = qlora_get(r, "memory");
    char name[256], fmt[64];
    printf("model      %s: %.2fM params, dim %.0f, %.0f layers, vocab %.0f, seq_len %.0f\n",
           cli_format(qlora_get(m, "name"), name, sizeof name),
           qlora_num(qlora_get(m, "n_params"), 0) / 1e6, qlora_num(qlora_get(m, "dim"), 0),
           qlora_num(qlora_get(m, "n_layers"), 0), qlora_num(qlora_get(m, "vocab_size"), 0),
           qlora_num(qlora_get(m, "seq_len"), 0));
    const msgpack_object *dq = qlora_get(q, "double_quant");
    printf("quant      %s, block %.0f%s, %.3f bits/param\n",
           cli_format(qlora_get(q, "format"), fmt, sizeof fmt), qlora_num(qlora_get(q, "block_size"), 0),
           dq && dq->type == MSGPACK_OBJECT_BOOLEAN && dq->via.boolean ? ", double quant" : "",
           qlora_num(qlora_get(q, "bits_per_param"), 0));
    printf("memory     base %.1f MiB, adapters %.1f MiB, rss %.1f MiB\n",
           qlora_num(qlora_get(mem, "base_bytes"), 0) / 1048576,
           qlora_num(qlora_get(mem, "adapters_bytes"), 0) / 1048576,
           qlora_num(qlora_get(mem, "rss_bytes"), 0) / 1048576);
    printf("jobs      ");
    const msgpack_object *jobs = qlora_get(r, "jobs");
    for (uint32_t i = 0; jobs && jobs->type == MSGPACK_OBJECT_MAP && i < jobs->via.map.size; i++) {
        char k[64], v[64];
        printf(" %s %s", cli_format(&jobs->via.map.ptr[i].key, k, sizeof k),
               cli_format(&jobs->via.map.ptr[i].val, v, sizeof v));
    }
    const msgpack_object *ad = qlora_get(r, "adapters");
    char active[256];
    printf("\nadapters   %.0f stored, %.0f loaded, active: %s\n", qlora_num(qlora_get(ad, "stored"), 0),
           qlora_num(qlora_get(ad, "loaded"), 0),
           qlora_is_nil(qlora_get(ad, "active")) ? "none (base)"
                                                 : cli_format(qlora_get(ad, "active"), active, sizeof active));
}

int cmd_status(cli *x, int argc, char **argv)
{
    int rc = cli_parse(x, argc, argv, NULL, 0, NULL, 0, 0, NULL);
    return rc ? rc : cli_run(x, "status", NULL, print_status);
}

static const cli_arg_spec generate_spec[] = {
    {"--adapter", "adapter", 's', 0, 0},
    {"-n", "max_tokens", 'i', 1, 1e6},
    {"--temperature", "temperature", 'f', 0, 100},
    {"--top-p", "top_p", 'f', 0, 1},
    {"--seed", "seed", 'i', 0, 1.8e19},
};
#define NGEN (int)(sizeof generate_spec / sizeof generate_spec[0])

static int on_token(const msgpack_object *ev, void *userdata)
{
    cli *x = userdata;
    if (x->json) {
        cli_print_json(ev);
        return 0;
    }
    const msgpack_object *t = qlora_get(ev, "text");
    if (t && t->type == MSGPACK_OBJECT_STR)
        fwrite(t->via.str.ptr, 1, t->via.str.size, stdout);
    fflush(stdout);
    return 0;
}

int cmd_generate(cli *x, int argc, char **argv)
{
    cli_opt opts[] = {{"--adapter", 1, NULL}, {"-n", 1, NULL},       {"--temperature", 1, NULL},
                      {"--top-p", 1, NULL},   {"--seed", 1, NULL},   {"--stream", 0, NULL}};
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    const char *prompt = NULL;
    int rc = cli_parse(x, argc, argv, opts, nopts, &prompt, 1, 1, NULL);
    if (rc)
        return rc;
    int stream = cli_opt_value(opts, nopts, "--stream") != NULL;
    int given = cli_count_args(opts, nopts, generate_spec, NGEN);
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, (size_t)(given + 2 + !cli_opt_value(opts, nopts, "-n")));
    qlora_pack_str(&a.pk, "prompt");
    qlora_pack_str(&a.pk, prompt);
    qlora_pack_str(&a.pk, "stream");
    if (stream)
        msgpack_pack_true(&a.pk);
    else
        msgpack_pack_false(&a.pk);
    if (!cli_opt_value(opts, nopts, "-n")) { /* the CLI's default length, said in --help */
        qlora_pack_str(&a.pk, "max_tokens");
        msgpack_pack_int(&a.pk, 64);
    }
    rc = cli_pack_args(x, &a.pk, opts, nopts, generate_spec, NGEN);
    qlora_reply r = {0};
    if (rc == EXIT_OK)
        rc = cli_request(x, "generate", &a, stream ? on_token : NULL, x, &r);
    if (rc == EXIT_OK && x->json) {
        cli_print_json(&r.result);
    } else if (rc == EXIT_OK && !stream) {
        const msgpack_object *t = qlora_get(&r.result, "text");
        if (t && t->type == MSGPACK_OBJECT_STR)
            fwrite(t->via.str.ptr, 1, t->via.str.size, stdout);
        putchar('\n');
    } else if (rc == EXIT_OK) {
        putchar('\n'); /* the text came with the events */
    }
    qlora_reply_free(&r);
    qlora_args_free(&a);
    return rc;
}

/* A conversation kept by `chat`: roles and contents, malloc'd. */
typedef struct {
    char **role, **content;
    size_t n, cap;
} conversation;

static int say(conversation *c, const char *role, const char *content, size_t len)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        char **r = realloc(c->role, cap * sizeof *r), **t = r ? realloc(c->content, cap * sizeof *t) : NULL;
        if (r)
            c->role = r;
        if (!t)
            return -1;
        c->content = t, c->cap = cap;
    }
    char *text = malloc(len + 1);
    if (!text)
        return -1;
    memcpy(text, content, len);
    text[len] = 0;
    c->role[c->n] = (char *)role, c->content[c->n++] = text;
    return 0;
}

static void forget(conversation *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->content[i]);
    free(c->role);
    free(c->content);
}

/* One turn: the conversation so far to `chat`, the reply streamed to stdout and kept. */
static int chat_turn(cli *x, conversation *c, cli_opt *opts, int nopts)
{
    const char *template = cli_opt_value(opts, nopts, "--template");
    int given = cli_count_args(opts, nopts, generate_spec, NGEN);
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, (size_t)(given + 2 + !cli_opt_value(opts, nopts, "-n") + (template != NULL)));
    qlora_pack_str(&a.pk, "messages");
    msgpack_pack_array(&a.pk, c->n);
    for (size_t i = 0; i < c->n; i++) {
        msgpack_pack_map(&a.pk, 2);
        qlora_pack_str(&a.pk, "role");
        qlora_pack_str(&a.pk, c->role[i]);
        qlora_pack_str(&a.pk, "content");
        qlora_pack_str(&a.pk, c->content[i]);
    }
    qlora_pack_str(&a.pk, "stream");
    msgpack_pack_true(&a.pk);
    if (!cli_opt_value(opts, nopts, "-n")) { /* the CLI's default reply length, said in --help */
        qlora_pack_str(&a.pk, "max_tokens");
        msgpack_pack_int(&a.pk, 256);
    }
    if (template) {
        qlora_pack_str(&a.pk, "template");
        qlora_pack_str(&a.pk, template);
    }
    int rc = cli_pack_args(x, &a.pk, opts, nopts, generate_spec, NGEN);
    qlora_reply r = {0};
    if (rc == EXIT_OK)
        rc = cli_request(x, "chat", &a, on_token, x, &r);
    const msgpack_object *t = rc == EXIT_OK ? qlora_get(&r.result, "text") : NULL;
    if (rc == EXIT_OK && x->json)
        cli_print_json(&r.result);
    else if (rc == EXIT_OK)
        putchar('\n');
    if (rc == EXIT_OK && t && t->type == MSGPACK_OBJECT_STR && say(c, "assistant", t->via.str.ptr, t->via.str.size) < 0) {
        fprintf(stderr, "qlora chat: out of memory\n");
        rc = EXIT_SERVER;
    }
    qlora_reply_free(&r);
    qlora_args_free(&a);
    return rc;
}

int cmd_chat(cli *x, int argc, char **argv)
{
    cli_opt opts[] = {{"--adapter", 1, NULL}, {"-n", 1, NULL},        {"--temperature", 1, NULL},
                      {"--top-p", 1, NULL},   {"--seed", 1, NULL},    {"--system", 1, NULL},
                      {"--template", 1, NULL}};
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    const char *message = NULL;
    int npos = 0, rc = cli_parse(x, argc, argv, opts, nopts, &message, 0, 1, &npos);
    if (rc)
        return rc;
    conversation c = {0};
    const char *system = cli_opt_value(opts, nopts, "--system");
    if (system && say(&c, "system", system, strlen(system)) < 0)
        rc = EXIT_SERVER;
    /* MESSAGE: one turn; else a line of stdin a turn, until its end */
    char *line = NULL;
    size_t cap = 0;
    while (rc == EXIT_OK) {
        if (npos) {
            if (c.n > (system != NULL))
                break;
            rc = say(&c, "user", message, strlen(message)) < 0 ? EXIT_SERVER : EXIT_OK;
        } else {
            if (x->tty)
                fputs("> ", stdout), fflush(stdout);
            ssize_t len = getline(&line, &cap, stdin);
            if (len < 0)
                break;
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = 0;
            if (len == 0)
                continue;
            rc = say(&c, "user", line, (size_t)len) < 0 ? EXIT_SERVER : EXIT_OK;
        }
        if (rc == EXIT_OK)
            rc = chat_turn(x, &c, opts, nopts);
    }
    if (rc == EXIT_SERVER && !c.n)
        fprintf(stderr, "qlora chat: out of memory\n");
    free(line);
    forget(&c);
    return rc;
}

static void print_eval(cli *x, const msgpack_object *r)
{
    (void)x;
    printf("ppl %.4f  (nll %.4f nats over %.0f predicted tokens)\n", qlora_num(qlora_get(r, "ppl"), 0),
           qlora_num(qlora_get(r, "nll_sum"), 0), qlora_num(qlora_get(r, "n_predicted"), 0));
}

int cmd_eval(cli *x, int argc, char **argv)
{
    cli_opt opts[] = {{"--adapter", 1, NULL}};
    const char *file = NULL;
    int rc = cli_parse(x, argc, argv, opts, 1, &file, 1, 1, NULL);
    if (rc)
        return rc;
    size_t len;
    char *text = cli_read_file(x, file, &len);
    if (!text)
        return EXIT_USAGE;
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, opts[0].value ? 2 : 1);
    qlora_pack_str(&a.pk, "text");
    msgpack_pack_str(&a.pk, len);
    msgpack_pack_str_body(&a.pk, text, len);
    if (opts[0].value) {
        qlora_pack_str(&a.pk, "adapter");
        qlora_pack_str(&a.pk, opts[0].value);
    }
    free(text);
    rc = cli_run(x, "eval", &a, print_eval);
    qlora_args_free(&a);
    return rc;
}
