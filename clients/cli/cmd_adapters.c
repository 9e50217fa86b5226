/* cmd_adapters.c: qlora adapters, adapter, rm, activate, export, import. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char *const peft_files[] = {"adapter_config.json", "adapter_model.safetensors"};

static void print_adapters(cli *x, const msgpack_object *r)
{
    (void)x;
    static const char *const head[] = {"NAME",     "VERSION",     "RANK", "ALPHA", "TARGETS", "EVAL_LOSS",
                                       "PPL_BASE", "PPL_ADAPTER", "SIZE", "JOB",   "CREATED"};
    static const char *const keys[] = {"name", "version", "rank", "alpha", "targets", NULL,
                                       NULL,   NULL,      NULL,   "job_id"};
    cli_table t;
    cli_table_init(&t, 11, head);
    const msgpack_object *list = qlora_get(r, "adapters");
    for (uint32_t i = 0; list && list->type == MSGPACK_OBJECT_ARRAY && i < list->via.array.size; i++) {
        const msgpack_object *ad = &list->via.array.ptr[i], *m = qlora_get(ad, "metrics");
        char c[11][CLI_CELL];
        for (int k = 0; k < 10; k++)
            if (keys[k])
                cli_format(qlora_get(ad, keys[k]), c[k], sizeof c[k]);
        const char *metric[] = {"eval_loss", "ppl_base", "ppl_adapter"};
        for (int k = 0; k < 3; k++)
            cli_format_fixed(qlora_get(m, metric[k]), 4, c[5 + k], sizeof c[5 + k]);
        snprintf(c[8], sizeof c[8], "%.1f KiB", qlora_num(qlora_get(ad, "size_bytes"), 0) / 1024);
        cli_format_time(qlora_get(ad, "created_at"), c[10], sizeof c[10]);
        cli_table_row(&t, c);
    }
    cli_table_finish(&t, "no adapters");
}

int cmd_adapters(cli *x, int argc, char **argv)
{
    int rc = cli_parse(x, argc, argv, NULL, 0, NULL, 0, 0, NULL);
    return rc ? rc : cli_run(x, "adapter.list", NULL, print_adapters);
}

/* Starts args as a map of `extra` + name (+ version when given) entries. */
static void pack_name_version(qlora_args *a, const char *name, long version, int extra)
{
    msgpack_pack_map(&a->pk, (size_t)(1 + (version > 0) + extra));
    qlora_pack_str(&a->pk, "name");
    qlora_pack_str(&a->pk, name);
    if (version > 0) {
        qlora_pack_str(&a->pk, "version");
        msgpack_pack_int64(&a->pk, version);
    }
}

/* The commands whose one argument is NAME[@VERSION]. */
static int named_command(cli *x, int argc, char **argv, const char *op, cli_print_fn human)
{
    const char *arg = NULL;
    int rc = cli_parse(x, argc, argv, NULL, 0, &arg, 1, 1, NULL);
    if (rc)
        return rc;
    char name[256];
    long version;
    snprintf(name, sizeof name, "%s", arg);
    if ((rc = cli_name_version(x, name, &version)))
        return rc;
    qlora_args a;
    qlora_args_init(&a);
    pack_name_version(&a, name, version, 0);
    rc = cli_run(x, op, &a, human);
    qlora_args_free(&a);
    return rc;
}

int cmd_adapter(cli *x, int argc, char **argv)
{
    return named_command(x, argc, argv, "adapter.get", NULL);
}

static void print_deleted(cli *x, const msgpack_object *r)
{
    (void)x;
    printf("deleted %.0f adapter version(s)\n", qlora_num(qlora_get(r, "deleted"), 0));
}

int cmd_rm(cli *x, int argc, char **argv)
{
    return named_command(x, argc, argv, "adapter.delete", print_deleted);
}

static void print_active(cli *x, const msgpack_object *r)
{
    (void)x;
    char name[128], version[32];
    if (qlora_is_nil(qlora_get(r, "active")))
        printf("active: none (the base model)\n");
    else
        printf("active: %s@%s\n", cli_format(qlora_get(r, "active"), name, sizeof name),
               cli_format(qlora_get(r, "version"), version, sizeof version));
}

int cmd_activate(cli *x, int argc, char **argv)
{
    cli_opt opts[] = {{"--none", 0, NULL}};
    const char *arg = NULL;
    int npos;
    int rc = cli_parse(x, argc, argv, opts, 1, &arg, 0, 1, &npos);
    if (rc)
        return rc;
    if ((npos == 1) == (opts[0].value != NULL))
        return cli_usage(x, "give either NAME[@VERSION] or --none");
    if (npos == 1)
        return named_command(x, argc, argv, "adapter.activate", print_active);
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, 1);
    qlora_pack_str(&a.pk, "name");
    msgpack_pack_nil(&a.pk);
    rc = cli_run(x, "adapter.activate", &a, print_active);
    qlora_args_free(&a);
    return rc;
}

/* Writes one exported file into dir; the name must be one PEFT file name, so that a
 * server cannot make the client write anywhere else. */
static int write_export(cli *x, const char *dir, const msgpack_object *name, const msgpack_object *body)
{
    char file[64], path[4200];
    qlora_str(name, "", file, sizeof file);
    if (strcmp(file, peft_files[0]) && strcmp(file, peft_files[1])) {
        fprintf(stderr, "qlora export: the server sent an unexpected file '%s'; not written\n", file);
        return EXIT_SERVER;
    }
    if (body->type != MSGPACK_OBJECT_STR && body->type != MSGPACK_OBJECT_BIN) {
        fprintf(stderr, "qlora export: the server sent '%s' as neither str nor bin\n", file);
        return EXIT_SERVER;
    }
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    size_t n = body->type == MSGPACK_OBJECT_STR ? body->via.str.size : body->via.bin.size;
    const char *p = body->type == MSGPACK_OBJECT_STR ? body->via.str.ptr : body->via.bin.ptr;
    int bad = !f || fwrite(p, 1, n, f) != n;
    if ((f && fclose(f) != 0) || bad) {
        fprintf(stderr, "qlora export: cannot write '%s': %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    if (!x->json)
        printf("wrote %s (%zu bytes)\n", path, n);
    return EXIT_OK;
}

int cmd_export(cli *x, int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    int rc = cli_parse(x, argc, argv, NULL, 0, pos, 2, 2, NULL);
    if (rc)
        return rc;
    char name[256];
    long version;
    snprintf(name, sizeof name, "%s", pos[0]);
    if ((rc = cli_name_version(x, name, &version)))
        return rc;
    const char *dir = pos[1];
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "qlora export: cannot create '%s': %s\n", dir, strerror(errno));
        return EXIT_USAGE;
    }
    qlora_args a;
    qlora_args_init(&a);
    qlora_reply r;
    if (version == 0) { /* the protocol's export wants a version: the latest, as get says */
        pack_name_version(&a, name, 0, 0);
        rc = cli_request(x, "adapter.get", &a, NULL, NULL, &r);
        version = (long)qlora_num(qlora_get(&r.result, "version"), 0);
        qlora_reply_free(&r);
        qlora_args_free(&a);
        qlora_args_init(&a);
        if (rc)
            return rc;
    }
    pack_name_version(&a, name, version, 1);
    qlora_pack_str(&a.pk, "format");
    qlora_pack_str(&a.pk, "peft");
    rc = cli_request(x, "adapter.export", &a, NULL, NULL, &r);
    qlora_args_free(&a);
    const msgpack_object *files = qlora_get(&r.result, "files");
    if (rc == EXIT_OK && (!files || files->type != MSGPACK_OBJECT_MAP)) {
        fprintf(stderr, "qlora export: the result has no 'files' map\n");
        rc = EXIT_SERVER;
    }
    for (uint32_t i = 0; rc == EXIT_OK && i < files->via.map.size; i++)
        rc = write_export(x, dir, &files->via.map.ptr[i].key, &files->via.map.ptr[i].val);
    if (rc == EXIT_OK && x->json)
        cli_print_json(&r.result);
    qlora_reply_free(&r);
    return rc;
}

int cmd_import(cli *x, int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    int rc = cli_parse(x, argc, argv, NULL, 0, pos, 2, 2, NULL);
    if (rc)
        return rc;
    char *body[2] = {NULL, NULL};
    size_t len[2];
    for (int i = 0; i < 2 && rc == EXIT_OK; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", pos[1], peft_files[i]);
        body[i] = cli_read_file(x, path, &len[i]);
        rc = body[i] ? EXIT_OK : EXIT_USAGE;
    }
    if (rc == EXIT_OK) {
        qlora_args a;
        qlora_args_init(&a);
        msgpack_pack_map(&a.pk, 2);
        qlora_pack_str(&a.pk, "name");
        qlora_pack_str(&a.pk, pos[0]);
        qlora_pack_str(&a.pk, "files");
        msgpack_pack_map(&a.pk, 2);
        qlora_pack_str(&a.pk, peft_files[0]);
        msgpack_pack_str(&a.pk, len[0]); /* the JSON config is text, the tensors binary */
        msgpack_pack_str_body(&a.pk, body[0], len[0]);
        qlora_pack_str(&a.pk, peft_files[1]);
        msgpack_pack_bin(&a.pk, len[1]);
        msgpack_pack_bin_body(&a.pk, body[1], len[1]);
        rc = cli_run(x, "adapter.import", &a, NULL);
        qlora_args_free(&a);
    }
    free(body[0]);
    free(body[1]);
    return rc;
}
