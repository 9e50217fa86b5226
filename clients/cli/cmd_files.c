/* cmd_files.c: qlora upload, files, file-rm; and the upload that submit --data does. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* file.upload of a local file; its result in *r (to be freed in every case). */
static int upload(cli *x, const char *path, qlora_reply *r)
{
    size_t len;
    char *body = cli_read_file(x, path, &len);
    memset(r, 0, sizeof *r);
    if (!body)
        return EXIT_USAGE;
    const char *base = strrchr(path, '/');
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, 2);
    qlora_pack_str(&a.pk, "data");
    msgpack_pack_bin(&a.pk, len);
    msgpack_pack_bin_body(&a.pk, body, len);
    free(body);
    qlora_pack_str(&a.pk, "filename");
    qlora_pack_str(&a.pk, base ? base + 1 : path);
    int rc = cli_request(x, "file.upload", &a, NULL, NULL, r);
    qlora_args_free(&a);
    return rc;
}

int cli_upload(cli *x, const char *path, char *file_id, size_t cap)
{
    qlora_reply r;
    int rc = upload(x, path, &r);
    if (rc == EXIT_OK)
        qlora_str(qlora_get(&r.result, "file_id"), "", file_id, cap);
    qlora_reply_free(&r);
    if (rc == EXIT_OK && !file_id[0]) {
        fprintf(stderr, "qlora %s: the server's file.upload result has no file_id\n", x->cmd->name);
        rc = EXIT_SERVER;
    }
    return rc;
}

static void print_file(cli *x, const msgpack_object *r)
{
    (void)x;
    char id[80], name[160];
    printf("%s %.0f bytes %s\n", cli_format(qlora_get(r, "file_id"), id, sizeof id),
           qlora_num(qlora_get(r, "bytes"), 0), cli_format(qlora_get(r, "filename"), name, sizeof name));
}

int cmd_upload(cli *x, int argc, char **argv)
{
    const char *path = NULL;
    int rc = cli_parse(x, argc, argv, NULL, 0, &path, 1, 1, NULL);
    if (rc)
        return rc;
    qlora_reply r;
    rc = upload(x, path, &r);
    if (rc == EXIT_OK && x->json)
        cli_print_json(&r.result);
    else if (rc == EXIT_OK)
        print_file(x, &r.result);
    qlora_reply_free(&r);
    return rc;
}

static void print_files(cli *x, const msgpack_object *r)
{
    (void)x;
    static const char *const head[] = {"FILE_ID", "BYTES", "FILENAME", "PURPOSE", "CREATED"};
    static const char *const keys[] = {"file_id", "bytes", "filename", "purpose"};
    cli_table t;
    cli_table_init(&t, 5, head);
    const msgpack_object *list = qlora_get(r, "files");
    for (uint32_t i = 0; list && list->type == MSGPACK_OBJECT_ARRAY && i < list->via.array.size; i++) {
        char c[5][CLI_CELL];
        for (int k = 0; k < 4; k++)
            cli_format(qlora_get(&list->via.array.ptr[i], keys[k]), c[k], sizeof c[k]);
        snprintf(c[1], sizeof c[1], "%.0f", qlora_num(qlora_get(&list->via.array.ptr[i], "bytes"), 0));
        cli_format_time(qlora_get(&list->via.array.ptr[i], "created_at"), c[4], sizeof c[4]);
        cli_table_row(&t, c);
    }
    cli_table_finish(&t, "no files");
}

int cmd_files(cli *x, int argc, char **argv)
{
    int rc = cli_parse(x, argc, argv, NULL, 0, NULL, 0, 0, NULL);
    return rc ? rc : cli_run(x, "file.list", NULL, print_files);
}

static void print_deleted(cli *x, const msgpack_object *r)
{
    (void)x;
    printf("deleted %.0f file(s)\n", qlora_num(qlora_get(r, "deleted"), 0));
}

int cmd_file_rm(cli *x, int argc, char **argv)
{
    const char *id = NULL;
    int rc = cli_parse(x, argc, argv, NULL, 0, &id, 1, 1, NULL);
    if (rc)
        return rc;
    qlora_args a;
    qlora_args_init(&a);
    msgpack_pack_map(&a.pk, 1);
    qlora_pack_str(&a.pk, "file_id");
    qlora_pack_str(&a.pk, id);
    rc = cli_run(x, "file.delete", &a, print_deleted);
    qlora_args_free(&a);
    return rc;
}
