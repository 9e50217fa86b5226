/* cli.h: what the qlora CLI's files share: the session (connection, output mode), option
 * parsing, requests with the exit-status rules, and output formatting. */
#ifndef QLORA_CLI_H
#define QLORA_CLI_H

#include <stdio.h>

#include "qloraclient.h"

/* Exit statuses (the CLI's contract, see docs/cli.md). */
enum { EXIT_OK = 0, EXIT_SERVER = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

typedef struct cli_cmd cli_cmd;

typedef struct {
    const char *socket, *host, *token_file; /* where to connect */
    int json;                               /* --json: results as JSON */
    int tty;                                /* stdout is a terminal */
    const cli_cmd *cmd;                     /* the command being run */
    qlora_client *client;                   /* NULL until cli_connect() */
} cli;

typedef int (*cli_cmd_fn)(cli *x, int argc, char **argv);

struct cli_cmd {
    const char *name;
    cli_cmd_fn fn;
    const char *usage; /* arguments after the name */
    const char *help;  /* one paragraph */
};

/* One command-line option of a command. `value` is NULL unless given; a flag without a
 * value reads as "". */
typedef struct {
    const char *name; /* "--rank", "-n" */
    int takes_value;
    const char *value;
} cli_opt;

/* Parses argv[1..] (argv[0] is the command name) into opts and up to max_pos positional
 * arguments; "--name=value" and "--name value" both work and "--" ends options. Returns
 * EXIT_OK, EXIT_USAGE (message printed), or -1 when --help was printed. */
int cli_parse(cli *x, int argc, char **argv, cli_opt *opts, int nopts, const char **pos,
              int min_pos, int max_pos, int *npos);
/* Prints "qlora CMD: message" and the command's usage on stderr; returns EXIT_USAGE. */
int cli_usage(cli *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The named option's value, or NULL. */
const char *cli_opt_value(const cli_opt *opts, int nopts, const char *name);
/* A number in [lo, hi]; EXIT_USAGE (message printed) if s is not one. */
int cli_number(cli *x, const char *what, const char *s, double lo, double hi, double *out);
/* "NAME" or "NAME@VERSION" into name (in place) and version (0 = none). */
int cli_name_version(cli *x, char *spec, long *version);

/* Prints a command's usage and help on stdout. */
void cli_command_help(const cli_cmd *c);

/* An option that becomes one request argument: type 'i' (whole number), 'f', 's', or 'b'
 * (a flag without a value: true when given). */
typedef struct {
    const char *opt, *key;
    char type;
    double lo, hi;
} cli_arg_spec;
/* How many of spec's options were given. */
int cli_count_args(const cli_opt *opts, int nopts, const cli_arg_spec *spec, int nspec);
/* Packs key and value of each given option of spec, checking numbers against their
 * range; EXIT_USAGE (message printed) at the first bad one. */
int cli_pack_args(cli *x, msgpack_packer *pk, const cli_opt *opts, int nopts,
                  const cli_arg_spec *spec, int nspec);

/* Connects as the global options say; EXIT_CONNECT (message printed) on failure. */
int cli_connect(cli *x);
/* A request with the exit-status rules: EXIT_OK with *reply holding the result,
 * EXIT_SERVER (code and message printed), or EXIT_CONNECT (transport failure printed).
 * The reply must be freed in every case. */
int cli_request(cli *x, const char *op, const qlora_args *args, qlora_event_fn on_event,
                void *userdata, qlora_reply *reply);
/* A non-streaming request whose result is printed as JSON with --json, else by `human`
 * (NULL: as key: value fields). Returns the exit status. */
typedef void (*cli_print_fn)(cli *x, const msgpack_object *result);
int cli_run(cli *x, const char *op, const qlora_args *args, cli_print_fn human);
/* Reads a whole file; NULL with a message printed on failure. */
char *cli_read_file(cli *x, const char *path, size_t *len);

/* A job id argument; EXIT_USAGE (message printed) if s is not one. */
int cli_job_id(cli *x, const char *s, unsigned long long *id);
/* Uploads a local file (file.upload); its id into file_id. Returns the exit status. */
int cli_upload(cli *x, const char *path, char *file_id, size_t cap);
/* Packs {job_id: id} into empty args. */
void cli_args_job(qlora_args *a, unsigned long long id);

/* Output. */
/* A value as short text: nil "-", numbers %.6g, strings as they are, arrays joined by ",". */
const char *cli_format(const msgpack_object *o, char *buf, size_t n);
/* A number with `decimals` digits after the point, "-" for nil, NaN or a non-number. */
const char *cli_format_fixed(const msgpack_object *o, int decimals, char *buf, size_t n);
/* A Unix time as "YYYY-MM-DD HH:MM:SS" local time, "-" for nil. */
const char *cli_format_time(const msgpack_object *o, char *buf, size_t n);
/* One JSON value per line on stdout. */
void cli_print_json(const msgpack_object *o);
/* A map as "key: value" lines, nested maps indented. */
void cli_print_fields(const msgpack_object *map, int indent);

/* A table printed with columns as wide as their widest cell. */
typedef struct {
    int ncols;
    const char *const *head;
    char **cells; /* row-major, ncols per row */
    size_t nrows, cap;
    int failed; /* out of memory: rows were lost */
} cli_table;
#define CLI_CELL 160 /* bytes of one cell as the commands format it */
void cli_table_init(cli_table *t, int ncols, const char *const *head);
void cli_table_row(cli_table *t, char row[][CLI_CELL]);
/* Prints the table, or `empty` if it has no rows, and frees it. */
void cli_table_finish(cli_table *t, const char *empty);

/* Commands. */
int cmd_ping(cli *x, int argc, char **argv);
int cmd_status(cli *x, int argc, char **argv);
int cmd_generate(cli *x, int argc, char **argv);
int cmd_chat(cli *x, int argc, char **argv);
int cmd_eval(cli *x, int argc, char **argv);
int cmd_submit(cli *x, int argc, char **argv);
int cmd_jobs(cli *x, int argc, char **argv);
int cmd_job(cli *x, int argc, char **argv);
int cmd_watch(cli *x, int argc, char **argv);
int cmd_cancel(cli *x, int argc, char **argv);
int cmd_job_rm(cli *x, int argc, char **argv);
int cmd_upload(cli *x, int argc, char **argv);
int cmd_files(cli *x, int argc, char **argv);
int cmd_file_rm(cli *x, int argc, char **argv);
int cmd_plot(cli *x, int argc, char **argv);
int cmd_adapters(cli *x, int argc, char **argv);
int cmd_adapter(cli *x, int argc, char **argv);
int cmd_rm(cli *x, int argc, char **argv);
int cmd_activate(cli *x, int argc, char **argv);
int cmd_export(cli *x, int argc, char **argv);
int cmd_import(cli *x, int argc, char **argv);

/* Job watching (watch.c), shared by watch, submit --watch and plot. */
typedef struct {
    double step, loss, eval_loss;
} cli_point;
/* Streams job.watch for job_id with a progress display (a bar on a terminal, one line per
 * event otherwise, JSON lines with --json). Returns EXIT_OK if the job succeeded,
 * EXIT_SERVER if it failed or was cancelled. */
int cli_watch_job(cli *x, unsigned long long job_id);
/* A job's loss history from the daemon (job.history), one point per step in step order
 * (eval_loss NAN where the step had no evaluation); *n = 0 if none. */
int cli_history_load(cli *x, unsigned long long job_id, cli_point **points, size_t *n);

#endif
