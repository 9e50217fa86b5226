/* main.c: the qlora CLI: global options, the command table, option parsing and the
 * request wrapper that turns outcomes into exit statuses. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define DEFAULT_SOCKET "/tmp/qlorad.sock"

static const cli_cmd commands[] = {
    {"ping", cmd_ping, "", "Checks that the daemon answers; prints its version and uptime."},
    {"status", cmd_status, "",
     "The loaded model, its quantization (format, bits/param), memory, jobs by state, adapters."},
    {"submit", cmd_submit,
     "--adapter NAME --data FILE [--eval-data FILE] [--method lora|recovery] [--rank R] "
     "[--alpha A] [--lr LR] [--steps N] [--batch B] [--seq-len T] [--targets all-linear|q,k,...] "
     "[--init default|loftq] [--dropout P] [--warmup N] [--schedule cosine|constant] "
     "[--grad-accum N] [--weight-decay WD] [--max-grad-norm N] [--seed S] [--eval-every N] "
     "[--checkpoint-every N] [--rslora] [--recompute] [--watch]",
     "Queues a training job that produces a new version of adapter NAME. The files are read "
     "here and uploaded (as `upload` does); the job names them by file id. With --watch, follows "
     "the job like `watch` until it ends."},
    {"jobs", cmd_jobs, "[--state queued|running|succeeded|failed|cancelled]",
     "A table of the jobs, optionally only those in one state."},
    {"job", cmd_job, "ID", "One job's full record."},
    {"watch", cmd_watch, "ID",
     "Follows a job until it ends: a live progress bar (step/total, loss, eval loss, tokens/s, "
     "ETA) on a terminal, one line per event otherwise. Exits 1 if the job fails or is cancelled."},
    {"cancel", cmd_cancel, "ID",
     "Cancels a job: a queued one at once, a running one at its next step (its last "
     "checkpoint is kept)."},
    {"job-rm", cmd_job_rm, "ID",
     "Deletes a finished job's record and checkpoint. Its data files stay (see file-rm)."},
    {"upload", cmd_upload, "FILE",
     "Stores a local file in the daemon and prints its file id. The same bytes always get the same id."},
    {"files", cmd_files, "", "A table of the stored data files."},
    {"file-rm", cmd_file_rm, "FILE_ID",
     "Deletes a stored file. Refused while a queued or running job uses it."},
    {"plot", cmd_plot, "ID -o FILE.svg",
     "Draws the job's training and eval loss against step as an SVG line chart, from the history "
     "its record keeps (job.history), whichever client submitted or watched it. An unfinished "
     "job is watched to its end first."},
    {"adapters", cmd_adapters, "", "A table of the stored adapters, every version."},
    {"adapter", cmd_adapter, "NAME[@VERSION]", "One adapter's record (latest version by default)."},
    {"rm", cmd_rm, "NAME[@VERSION]", "Deletes one version of an adapter, or all of them."},
    {"activate", cmd_activate, "NAME[@VERSION] | --none",
     "Sets the adapter that generate and eval use when they name none (--none: the base)."},
    {"export", cmd_export, "NAME[@VERSION] DIR",
     "Writes the adapter in Hugging Face PEFT format: DIR/adapter_config.json and "
     "DIR/adapter_model.safetensors."},
    {"import", cmd_import, "NAME DIR", "Stores a PEFT adapter from DIR as a new version of NAME."},
    {"generate", cmd_generate,
     "[--adapter NAME] [-n N] [--temperature T] [--top-p P] [--seed S] [--stream] PROMPT",
     "Generates up to N tokens (default 64) after PROMPT; temperature 0 (the default) is greedy. "
     "--stream prints the text as it comes."},
    {"chat", cmd_chat,
     "[--adapter NAME] [--system TEXT] [--template NAME] [-n N] [--temperature T] [--top-p P] [--seed S] [MESSAGE]",
     "A conversation in the model's chat template (or the built-in NAME: chatml, llama3, ...): MESSAGE "
     "gets one reply; without it every line of stdin is the next user turn. Replies stream, up to N "
     "tokens each (default 256), ending at the template's end-of-turn token."},
    {"eval", cmd_eval, "[--adapter NAME] FILE",
     "Perplexity of the model (with the adapter, if named) on a text file."},
};
#define NCOMMANDS (int)(sizeof commands / sizeof commands[0])

static void print_usage(FILE *f)
{
    fprintf(f, "usage: qlora [--socket PATH | --host HOST:PORT --token-file FILE] [--json] "
               "COMMAND [ARGS]\n\ncommands:\n");
    for (int i = 0; i < NCOMMANDS; i++) { /* the first sentence of each help */
        const char *h = commands[i].help, *end = strstr(h, ". ");
        fprintf(f, "  %-9s %.*s\n", commands[i].name, end ? (int)(end - h + 1) : (int)strlen(h), h);
    }
    fprintf(f, "\nThe socket defaults to $QLORA_SOCKET, else " DEFAULT_SOCKET ". `qlora COMMAND "
               "--help` explains one command.\nExit status: 0 success, 1 the server answered with "
               "an error, 2 usage, 3 cannot connect.\n");
}

void cli_command_help(const cli_cmd *c)
{
    printf("usage: qlora [global options] %s %s\n\n%s\n\n--json prints the result as JSON "
           "(streams: one JSON object per line, the result last).\n",
           c->name, c->usage, c->help);
}

int cli_connect(cli *x)
{
    char err[600];
    if (x->host) {
        size_t len;
        char *token = cli_read_file(x, x->token_file, &len);
        if (!token)
            return EXIT_USAGE;
        while (len > 0 && (token[len - 1] == '\n' || token[len - 1] == '\r'))
            token[--len] = 0; /* token files usually end in a newline */
        x->client = qlora_connect_tcp(x->host, token, err, sizeof err);
        free(token);
    } else {
        x->client = qlora_connect_unix(x->socket, err, sizeof err);
    }
    if (!x->client) {
        fprintf(stderr, "qlora: %s\n", err);
        return EXIT_CONNECT;
    }
    return EXIT_OK;
}

int cli_request(cli *x, const char *op, const qlora_args *args, qlora_event_fn on_event,
                void *userdata, qlora_reply *reply)
{
    int rc = x->client ? EXIT_OK : cli_connect(x);
    if (rc != EXIT_OK) {
        memset(reply, 0, sizeof *reply); /* a zeroed reply is a valid empty one */
        return rc;
    }
    switch (qlora_stream(x->client, op, args, on_event, userdata, reply)) {
    case QLORA_OK: return EXIT_OK;
    case QLORA_SERVER_ERROR:
        fprintf(stderr, "qlora %s: %s: %s\n", x->cmd->name, reply->code, reply->message);
        return EXIT_SERVER;
    default:
        fprintf(stderr, "qlora %s: %s\n", x->cmd->name, qlora_last_error(x->client));
        return EXIT_CONNECT;
    }
}

int cli_run(cli *x, const char *op, const qlora_args *args, cli_print_fn human)
{
    qlora_reply r;
    int rc = cli_request(x, op, args, NULL, NULL, &r);
    if (rc == EXIT_OK && x->json)
        cli_print_json(&r.result);
    else if (rc == EXIT_OK && human)
        human(x, &r.result);
    else if (rc == EXIT_OK)
        cli_print_fields(&r.result, 0);
    qlora_reply_free(&r);
    return rc;
}

char *cli_read_file(cli *x, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)size + 1)) && fread(buf, 1, (size_t)size, f) == (size_t)size) {
        buf[size] = 0;
        *len = (size_t)size;
        fclose(f);
        return buf;
    }
    fprintf(stderr, "qlora %s: cannot read '%s': %s\n", x->cmd->name, path,
            f && buf ? "short read" : strerror(errno));
    free(buf);
    if (f)
        fclose(f);
    return NULL;
}

int main(int argc, char **argv)
{
    cli x = {.socket = getenv("QLORA_SOCKET"), .tty = isatty(STDOUT_FILENO)};
    if (!x.socket || !x.socket[0])
        x.socket = DEFAULT_SOCKET;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            x.json = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_usage(stdout);
            return EXIT_OK;
        } else if ((!strcmp(a, "--socket") || !strcmp(a, "--host") || !strcmp(a, "--token-file")) &&
                   i + 1 < argc) {
            const char *v = argv[++i];
            *(a[2] == 's' ? &x.socket : a[2] == 'h' ? &x.host : &x.token_file) = v;
        } else {
            fprintf(stderr, "qlora: unknown or incomplete option '%s'\n", a);
            print_usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (x.host && !x.token_file) {
        fprintf(stderr, "qlora: --host needs --token-file (TCP connections authenticate)\n");
        return EXIT_USAGE;
    }
    if (i == argc) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    int help = !strcmp(argv[i], "help"); /* "qlora help CMD" is "qlora CMD --help" */
    if (help && ++i == argc) {
        print_usage(stdout);
        return EXIT_OK;
    }
    for (int k = 0; k < NCOMMANDS; k++) {
        if (strcmp(commands[k].name, argv[i]))
            continue;
        x.cmd = &commands[k];
        if (help) {
            cli_command_help(x.cmd);
            return EXIT_OK;
        }
        int rc = commands[k].fn(&x, argc - i, argv + i);
        qlora_close(x.client);
        return rc < 0 ? EXIT_OK : rc;
    }
    fprintf(stderr, "qlora: unknown command '%s'\n", argv[i]);
    print_usage(stderr);
    return EXIT_USAGE;
}
