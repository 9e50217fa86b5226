/* cmd_jobs.c: qlora submit, jobs, job, watch, cancel. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The server owns the ranges (out of range is its invalid_argument); here only the
 * syntax of a number is checked. */
#define ANY -1e300, 1e300
static const cli_arg_spec hyper_spec[] = {
    {"--rank", "rank", 'i', ANY},
    {"--alpha", "alpha", 'f', ANY},
    {"--lr", "lr", 'f', ANY},
    {"--steps", "steps", 'i', ANY},
    {"--batch", "batch_size", 'i', ANY},
    {"--seq-len", "seq_len", 'i', ANY},
    {"--dropout", "dropout", 'f', ANY},
    {"--warmup", "warmup", 'i', ANY},
    {"--schedule", "schedule", 's', ANY},
    {"--grad-accum", "grad_accum", 'i', ANY},
    {"--weight-decay", "weight_decay", 'f', ANY},
    {"--max-grad-norm", "max_grad_norm", 'f', ANY},
    {"--seed", "seed", 'i', ANY},
    {"--eval-every", "eval_every", 'i', ANY},
    {"--checkpoint-every", "checkpoint_every", 'i', ANY},
    {"--init", "init", 's', ANY},
    {"--rslora", "rslora", 'b', ANY},
    {"--recompute", "recompute", 'b', ANY},
};
#define NHYPER (int)(sizeof hyper_spec / sizeof hyper_spec[0])

int cli_job_id(cli *x, const char *s, unsigned long long *id)
{
    double v;
    if (cli_number(x, "job id", s, 1, 9e15, &v) != EXIT_OK)
        return EXIT_USAGE;
    if (v != (double)(unsigned long long)v)
        return cli_usage(x, "job id '%s' is not a whole number", s);
    *id = (unsigned long long)v;
    return EXIT_OK;
}

void cli_args_job(qlora_args *a, unsigned long long id)
{
    msgpack_pack_map(&a->pk, 1);
    qlora_pack_str(&a->pk, "job_id");
    msgpack_pack_uint64(&a->pk, id);
}

/* {file_id} of the local file, uploaded first (file.upload), so that the daemon need not
 * be able to read it and the job holds only the id. */
static int pack_data(cli *x, msgpack_packer *pk, const char *key, const char *path)
{
    char id[128] = "";
    int rc = cli_upload(x, path, id, sizeof id);
    if (rc != EXIT_OK)
        return rc;
    qlora_pack_str(pk, key);
    msgpack_pack_map(pk, 1);
    qlora_pack_str(pk, "file_id");
    qlora_pack_str(pk, id);
    return EXIT_OK;
}

/* "all-linear" stays a string; "q,k,v" becomes a list. */
static void pack_targets(msgpack_packer *pk, const char *s)
{
    qlora_pack_str(pk, "targets");
    if (!strchr(s, ',') && !strcmp(s, "all-linear")) {
        qlora_pack_str(pk, s);
        return;
    }
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    msgpack_pack_array(pk, n);
    for (const char *p = s;; p++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        msgpack_pack_str(pk, len);
        msgpack_pack_str_body(pk, p, len);
        if (!end)
            break;
        p = end;
    }
}

int cmd_submit(cli *x, int argc, char **argv)
{
    cli_opt opts[NHYPER + 6] = {{"--adapter", 1, NULL}, {"--data", 1, NULL},    {"--eval-data", 1, NULL},
                                {"--method", 1, NULL},  {"--targets", 1, NULL}, {"--watch", 0, NULL}};
    for (int i = 0; i < NHYPER; i++)
        opts[6 + i] = (cli_opt){hyper_spec[i].opt, hyper_spec[i].type != 'b', NULL};
    int nopts = NHYPER + 6;
    int rc = cli_parse(x, argc, argv, opts, nopts, NULL, 0, 0, NULL);
    if (rc)
        return rc;
    const char *adapter = opts[0].value, *data = opts[1].value, *eval_data = opts[2].value,
               *method = opts[3].value, *targets = opts[4].value;
    if (!adapter || !data)
        return cli_usage(x, "%s is required", adapter ? "--data FILE" : "--adapter NAME");
    int nhyper = cli_count_args(opts, nopts, hyper_spec, NHYPER) + (targets != NULL);

    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, (size_t)(2 + (eval_data != NULL) + (method != NULL) + (nhyper > 0)));
    qlora_pack_str(&a.pk, "adapter");
    qlora_pack_str(&a.pk, adapter);
    rc = pack_data(x, &a.pk, "data", data);
    if (rc == EXIT_OK && eval_data)
        rc = pack_data(x, &a.pk, "eval_data", eval_data);
    if (method) {
        qlora_pack_str(&a.pk, "method");
        qlora_pack_str(&a.pk, method);
    }
    if (rc == EXIT_OK && nhyper > 0) {
        qlora_pack_str(&a.pk, "hyper");
        msgpack_pack_map(&a.pk, (size_t)nhyper);
        if (targets)
            pack_targets(&a.pk, targets);
        rc = cli_pack_args(x, &a.pk, opts, nopts, hyper_spec, NHYPER);
    }
    qlora_reply r = {0};
    if (rc == EXIT_OK)
        rc = cli_request(x, "job.submit", &a, NULL, NULL, &r);
    qlora_args_free(&a);
    unsigned long long id = (unsigned long long)qlora_num(qlora_get(&r.result, "job_id"), 0);
    if (rc == EXIT_OK && x->json) {
        cli_print_json(&r.result);
    } else if (rc == EXIT_OK) {
        char state[32];
        printf("job %llu %s: adapter '%s', %s\n", id,
               cli_format(qlora_get(&r.result, "state"), state, sizeof state), adapter,
               method ? method : "lora");
        fflush(stdout);
    }
    qlora_reply_free(&r);
    if (rc == EXIT_OK && opts[5].value)
        rc = cli_watch_job(x, id);
    return rc;
}

static void print_jobs(cli *x, const msgpack_object *r)
{
    (void)x;
    static const char *const head[] = {"ID",   "STATE",     "ADAPTER", "METHOD", "STEP",
                                       "LOSS", "EVAL_LOSS", "TOK/S",   "CREATED"};
    cli_table t;
    cli_table_init(&t, 9, head);
    const msgpack_object *jobs = qlora_get(r, "jobs");
    for (uint32_t i = 0; jobs && jobs->type == MSGPACK_OBJECT_ARRAY && i < jobs->via.array.size; i++) {
        const msgpack_object *j = &jobs->via.array.ptr[i];
        char c[9][CLI_CELL];
        cli_format(qlora_get(j, "job_id"), c[0], sizeof c[0]);
        cli_format(qlora_get(j, "state"), c[1], sizeof c[1]);
        char name[100], ver[24];
        snprintf(c[2], sizeof c[2], "%s@%s", cli_format(qlora_get(j, "adapter"), name, sizeof name),
                 cli_format(qlora_get(j, "adapter_version"), ver, sizeof ver));
        cli_format(qlora_get(j, "method"), c[3], sizeof c[3]);
        snprintf(c[4], sizeof c[4], "%.0f/%.0f", qlora_num(qlora_get(j, "step"), 0),
                 qlora_num(qlora_get(j, "total_steps"), 0));
        const char *keys[] = {"loss", "eval_loss", "tokens_per_s"};
        for (int k = 0; k < 3; k++)
            cli_format_fixed(qlora_get(j, keys[k]), k < 2 ? 4 : 0, c[5 + k], sizeof c[5 + k]);
        cli_format_time(qlora_get(j, "created_at"), c[8], sizeof c[8]);
        cli_table_row(&t, c);
    }
    cli_table_finish(&t, "no jobs");
}

int cmd_jobs(cli *x, int argc, char **argv)
{
    cli_opt opts[] = {{"--state", 1, NULL}};
    int rc = cli_parse(x, argc, argv, opts, 1, NULL, 0, 0, NULL);
    if (rc)
        return rc;
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, opts[0].value ? 1 : 0);
    if (opts[0].value) {
        qlora_pack_str(&a.pk, "state");
        qlora_pack_str(&a.pk, opts[0].value);
    }
    rc = cli_run(x, "job.list", &a, print_jobs);
    qlora_args_free(&a);
    return rc;
}

/* The commands whose one argument is a job id. */
static int job_command(cli *x, int argc, char **argv, const char *op, cli_print_fn human)
{
    const char *arg = NULL;
    unsigned long long id = 0;
    int rc = cli_parse(x, argc, argv, NULL, 0, &arg, 1, 1, NULL);
    if (rc || (rc = cli_job_id(x, arg, &id)))
        return rc;
    if (!op)
        return cli_watch_job(x, id);
    qlora_args a;
    qlora_args_init(&a);
    cli_args_job(&a, id);
    rc = cli_run(x, op, &a, human);
    qlora_args_free(&a);
    return rc;
}

int cmd_job(cli *x, int argc, char **argv)
{
    return job_command(x, argc, argv, "job.get", NULL);
}

int cmd_watch(cli *x, int argc, char **argv)
{
    return job_command(x, argc, argv, NULL, NULL);
}

static void print_cancelled(cli *x, const msgpack_object *r)
{
    (void)x;
    char state[32];
    printf("job %.0f: %s\n", qlora_num(qlora_get(r, "job_id"), 0),
           cli_format(qlora_get(r, "state"), state, sizeof state));
}

int cmd_cancel(cli *x, int argc, char **argv)
{
    return job_command(x, argc, argv, "job.cancel", print_cancelled);
}

static void print_job_deleted(cli *x, const msgpack_object *r)
{
    (void)x, (void)r;
    printf("deleted\n");
}

int cmd_job_rm(cli *x, int argc, char **argv)
{
    return job_command(x, argc, argv, "job.delete", print_job_deleted);
}
