/* cmd_store.c: qlora-tool export and import, between a store and PEFT directories
 * (adapter_config.json + adapter_model.safetensors). The formats are peft.h's; this file
 * only moves the bytes to and from the directory. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "peft.h"
#include "store.h"
#include "tool.h"

static const char *const config_file = "adapter_config.json", *const tensors_file = "adapter_model.safetensors";

/* "NAME" or "NAME@VERSION" (version 0: the latest). */
static int parse_ref(const char *cmd, const char *ref, char *name, uint32_t *version)
{
    const char *at = strchr(ref, '@');
    size_t n = at ? (size_t)(at - ref) : strlen(ref);
    int v = 0;
    if (n > STORE_NAME_MAX || (at && tool_parse_int(at + 1, 1, 2147483647, &v) < 0))
        return tool_fail(cmd, "'%s' is not NAME or NAME@VERSION", ref);
    memcpy(name, ref, n);
    name[n] = 0;
    if (!store_name_valid(name))
        return tool_fail(cmd, "name '%s' is invalid: " STORE_NAME_RULE, name);
    *version = (uint32_t)v;
    return 0;
}

/* --db DIR must hold a store already: export never creates one by a typo. A command that
 * writes (lock != NULL) holds the store's lock, as qlorad does for its whole life: the
 * daemon's job table and adapter cache are its own picture of the store, and a write
 * behind its back would not be in it (write through the daemon instead: adapter.import).
 * Reads need no lock; LMDB gives them a consistent snapshot beside a running daemon. */
static int open_store(const char *cmd, const char *db, store **s, int *lock)
{
    char path[4200], err[1024], who[64];
    struct stat st;
    snprintf(path, sizeof path, "%s/data.mdb", db);
    if (stat(path, &st) < 0 && errno == ENOENT && !strcmp(cmd, "export"))
        return tool_fail(cmd, "--db %s: no store there", db);
    snprintf(who, sizeof who, "qlora-tool %s", cmd);
    if (lock && (*lock = store_lock(db, who, err, sizeof err)) < 0) {
        fprintf(stderr, "qlora-tool %s: %s; stop it first, or write through it (qlora import)\n", cmd, err);
        return 1;
    }
    if (store_open(s, db, 0, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
        if (lock)
            store_unlock(*lock);
        return 1;
    }
    return 0;
}

static int write_file(const char *cmd, const char *dir, const char *file, const void *data, size_t len)
{
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) { /* whole file or nothing */
        remove(tmp);
        fprintf(stderr, "qlora-tool %s: %s: cannot write\n", cmd, path);
        return 1;
    }
    return 0;
}

static int read_file(const char *cmd, const char *dir, const char *file, unsigned char **data, size_t *len)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "qlora-tool %s: %s: cannot open: %s\n", cmd, path, strerror(errno));
        return 1;
    }
    int rc = tool_read_all(f, data, len);
    fclose(f);
    if (rc < 0) {
        fprintf(stderr, "qlora-tool %s: %s: cannot read\n", cmd, path);
        return 1;
    }
    return 0;
}

int cmd_export(int argc, char **argv)
{
    const char *cmd = "export", *db = NULL, *pos[2];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc)
            db = argv[++i];
        else if (argv[i][0] == '-' || npos == 2)
            return tool_fail(cmd, "unexpected argument '%s'", argv[i]);
        else
            pos[npos++] = argv[i];
    }
    if (!db || npos != 2)
        return tool_fail(cmd, "usage: export --db DIR NAME[@VERSION] OUTDIR");
    char name[STORE_NAME_MAX + 1], err[1024];
    uint32_t version = 0;
    int rc = parse_ref(cmd, pos[0], name, &version), not_found;
    store *s;
    if (rc || (rc = open_store(cmd, db, &s, NULL)))
        return rc;
    store_adapter_info info;
    llama_lora ad;
    void *st = NULL;
    char *config = NULL;
    size_t st_len;
    rc = 1;
    if (store_adapter_get(s, name, version, &info, &not_found, err, sizeof err) < 0 ||
        store_adapter_load(s, name, info.version, &info.base, &info, &ad, &not_found, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
        goto done;
    }
    if (peft_config_encode(&ad, NULL, &config, err, sizeof err) < 0 ||
        peft_encode(&ad, &info.base, info.base_fingerprint, &st, &st_len, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
    } else if (mkdir(pos[1], 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "qlora-tool %s: %s: cannot create: %s\n", cmd, pos[1], strerror(errno));
    } else if (!write_file(cmd, pos[1], tensors_file, st, st_len) &&
               !write_file(cmd, pos[1], config_file, config, strlen(config))) {
        printf("%s@%u -> %s\n", name, info.version, pos[1]);
        rc = 0;
    }
    free(config);
    free(st);
    llama_lora_free(&ad);
done:
    store_close(s);
    return rc;
}

int cmd_import(int argc, char **argv)
{
    const char *cmd = "import", *db = NULL, *pos[2];
    tool_model_opts o = {.spec = qt_spec_default(QT_NF4)};
    int npos = 0, e;
    for (int i = 1; i < argc; i++) {
        if (tool_model_option(cmd, argc, argv, &i, &o, &e)) {
            if (e)
                return e;
        } else if (!strcmp(argv[i], "--db") && i + 1 < argc) {
            db = argv[++i];
        } else if (argv[i][0] == '-' || npos == 2) {
            return tool_fail(cmd, "unexpected argument '%s'", argv[i]);
        } else {
            pos[npos++] = argv[i];
        }
    }
    if (!db || npos != 2)
        return tool_fail(cmd, "usage: import --db DIR --model DIR [--quant F ...] NAME INDIR");
    if (!store_name_valid(pos[0]))
        return tool_fail(cmd, "name '%s' is invalid: " STORE_NAME_RULE, pos[0]);
    unsigned char *config = NULL, *st = NULL;
    size_t config_len, st_len;
    int rc = read_file(cmd, pos[1], config_file, &config, &config_len);
    if (rc || (rc = read_file(cmd, pos[1], tensors_file, &st, &st_len))) {
        free(config);
        return rc;
    }
    llama_model m;
    if ((rc = tool_load_model(cmd, &o, &m, NULL))) {
        free(config);
        free(st);
        return rc;
    }
    char err[1024];
    llama_lora ad;
    uint64_t fp;
    store *s = NULL;
    int lock = -1;
    rc = 1;
    if (peft_import((const char *)config, config_len, st, st_len, &m.cfg, &ad, &fp, err, sizeof err) < 0) {
        fprintf(stderr, "qlora-tool %s: %s: %s\n", cmd, pos[1], err);
        goto done;
    }
    if (fp && fp != m.fingerprint) {
        fprintf(stderr, "qlora-tool %s: %s: trained on base %016" PRIx64 ", but this base (model and "
                        "quantization) is %016" PRIx64 "\n", cmd, pos[1], fp, m.fingerprint);
    } else if (!(rc = open_store(cmd, db, &s, &lock))) {
        store_adapter_info info = {.base_fingerprint = m.fingerprint, .base = m.cfg, .eval_loss = NAN,
                                   .ppl_base = NAN, .ppl_adapter = NAN};
        snprintf(info.name, sizeof info.name, "%s", pos[0]);
        rc = store_adapter_put(s, &info, &ad, NULL, NULL, err, sizeof err) < 0;
        if (rc)
            fprintf(stderr, "qlora-tool %s: %s\n", cmd, err);
        else
            printf("%s@%u\n", info.name, info.version);
        store_close(s);
        store_unlock(lock);
    }
    llama_lora_free(&ad);
done:
    llama_free(&m);
    free(config);
    free(st);
    return rc;
}
