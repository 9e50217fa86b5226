/* store_peek.c: what the daemon tests need to see or break in a store that no daemon has
 * open: the size of a job's stored record, the record itself, a record as an earlier
 * daemon wrote it, a file deleted or corrupted behind the daemon's back (to check that a
 * resumed job verifies its data).
 *
 * usage: store_peek DB job-bytes ID | job-get ID (the record to stdout) | job-put ID (the
 *        record from stdin) | file-rm FILE_ID | file-corrupt FILE_ID */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

/* Flips the last byte of a file's stored bytes, in place, with LMDB itself: the store's
 * API never writes bytes that do not hash to their id. */
static int corrupt(const char *dir, const char *id)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    unsigned char key[32];
    for (int i = 0; i < 32; i++)
        sscanf(id + 5 + 2 * i, "%2hhx", &key[i]);
    MDB_val k = {32, key}, v;
    int rc;
    if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_maxdbs(env, 8)) || (rc = mdb_env_open(env, dir, 0, 0600)) ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, "files", 0, &dbi)) ||
        (rc = mdb_get(txn, dbi, &k, &v))) {
        fprintf(stderr, "store_peek: %s\n", mdb_strerror(rc));
        return 1;
    }
    unsigned char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size - 1] ^= 0x5a;
    v.mv_data = copy;
    rc = mdb_put(txn, dbi, &k, &v, 0);
    if (!rc)
        rc = mdb_txn_commit(txn);
    free(copy);
    mdb_env_close(env);
    if (rc)
        fprintf(stderr, "store_peek: %s\n", mdb_strerror(rc));
    return rc != 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: store_peek DB job-bytes ID | job-get ID | job-put ID | file-rm FILE_ID | "
                        "file-corrupt FILE_ID\n");
        return 2;
    }
    if (!strcmp(argv[2], "file-corrupt"))
        return corrupt(argv[1], argv[3]);
    store *s;
    char err[600];
    int rc = 1, nf;
    if (store_open(&s, argv[1], 0, err, sizeof err) < 0) {
        fprintf(stderr, "store_peek: %s\n", err);
        return 1;
    }
    if (!strcmp(argv[2], "job-bytes") || !strcmp(argv[2], "job-get")) {
        void *rec;
        size_t len;
        if (store_job_get(s, strtoull(argv[3], NULL, 10), &rec, &len, &nf, err, sizeof err) == 0) {
            if (!strcmp(argv[2], "job-bytes"))
                printf("%zu\n", len);
            else
                fwrite(rec, 1, len, stdout);
            free(rec);
            rc = 0;
        }
    } else if (!strcmp(argv[2], "job-put")) {
        static char rec[1 << 20];
        size_t len = fread(rec, 1, sizeof rec, stdin);
        rc = store_job_put(s, strtoull(argv[3], NULL, 10), rec, len, err, sizeof err) < 0;
    } else if (!strcmp(argv[2], "file-rm")) {
        int deleted;
        rc = store_file_delete(s, argv[3], &deleted, err, sizeof err) < 0 || !deleted;
        if (!deleted)
            snprintf(err, sizeof err, "no such file");
    } else {
        snprintf(err, sizeof err, "unknown command %s", argv[2]);
    }
    if (rc)
        fprintf(stderr, "store_peek: %s\n", err);
    store_close(s);
    return rc;
}
