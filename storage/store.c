/* store.c: see store.h and docs/storage.md.
 *
 * Every write goes through write_txn, which runs a function inside one LMDB write
 * transaction and, when the map is full, aborts it (so nothing of it remains), grows the
 * map and runs the function again from scratch. Growing remaps the file, which LMDB allows
 * only while no transaction of this process is open: every transaction holds map_lock
 * shared, growing holds it exclusive. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <math.h>
#include <msgpack.h>
#include <nettle/sha2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "record.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensors are stored as the host's f32: little-endian hosts only"
#endif

#define SCHEMA_VERSION 1u
#define DEFAULT_CAP ((size_t)64 << 30)
#define INITIAL_MAP ((size_t)1 << 20) /* small stores stay small; growth doubles */
#define PAGE 4096u

struct store {
    MDB_env *env;
    MDB_dbi adapters, jobs, checkpoints, files, meta;
    size_t cap;
    pthread_mutex_t write_lock;  /* one writer of this process at a time */
    pthread_rwlock_t map_lock;   /* shared: a transaction is open; exclusive: remapping */
    char dir[4096];
};

static int mdb_fail(store *s, int rc, char *err, size_t errlen)
{
    snprintf(err, errlen, "store %s: %s", s->dir, mdb_strerror(rc));
    return -1;
}

/* ---- transactions ---- */

/* Another process grew the map: adopt its size (no transaction of ours may be open). */
static void adopt_map_size(store *s)
{
    pthread_rwlock_wrlock(&s->map_lock);
    mdb_env_set_mapsize(s->env, 0);
    pthread_rwlock_unlock(&s->map_lock);
}

static int read_begin(store *s, MDB_txn **txn, char *err, size_t errlen)
{
    for (;;) {
        pthread_rwlock_rdlock(&s->map_lock);
        int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&s->map_lock);
        if (rc != MDB_MAP_RESIZED)
            return mdb_fail(s, rc, err, errlen);
        adopt_map_size(s);
    }
}

static void read_end(store *s, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->map_lock);
}

/* Doubles the map up to the cap; -1 with "store full" once there. */
static int grow_map(store *s, char *err, size_t errlen)
{
    MDB_envinfo info;
    int rc = 0;
    pthread_rwlock_wrlock(&s->map_lock);
    mdb_env_info(s->env, &info);
    if (info.me_mapsize >= s->cap) {
        snprintf(err, errlen, "store full: %s has reached its cap of %zu bytes", s->dir, s->cap);
        rc = -1;
    } else {
        size_t size = info.me_mapsize * 2 < s->cap ? info.me_mapsize * 2 : s->cap;
        if ((rc = mdb_env_set_mapsize(s->env, size)) != 0)
            rc = mdb_fail(s, rc, err, errlen);
    }
    pthread_rwlock_unlock(&s->map_lock);
    return rc;
}

/* The body of a write: 0, an LMDB error code, or -1 with err set. */
typedef int (*write_fn)(store *s, MDB_txn *txn, void *ctx, char *err, size_t errlen);

static int write_txn(store *s, write_fn fn, void *ctx, char *err, size_t errlen)
{
    int rc;
    pthread_mutex_lock(&s->write_lock);
    for (;;) {
        MDB_txn *txn;
        pthread_rwlock_rdlock(&s->map_lock);
        rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc == 0) {
            rc = fn(s, txn, ctx, err, errlen);
            if (rc == 0)
                rc = mdb_txn_commit(txn); /* frees txn, also on failure */
            else
                mdb_txn_abort(txn);
        }
        pthread_rwlock_unlock(&s->map_lock);
        if (rc == MDB_MAP_FULL && grow_map(s, err, errlen) == 0)
            continue;
        if (rc == MDB_MAP_RESIZED) {
            adopt_map_size(s);
            continue;
        }
        break;
    }
    pthread_mutex_unlock(&s->write_lock);
    if (rc == MDB_MAP_FULL)
        return -1; /* grow_map said why */
    return rc == 0 ? 0 : rc == -1 ? -1 : mdb_fail(s, rc, err, errlen);
}

/* ---- keys ---- */

static void be32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (24 - 8 * i));
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void be64(unsigned char *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

/* adapters key: name, NUL, big-endian version. The NUL (never in a name) makes byte order
 * sort by name first, then by version. */
typedef struct {
    unsigned char b[64 + 1 + 4];
    MDB_val v;
} adapter_key;

static void make_adapter_key(adapter_key *k, const char *name, uint32_t version)
{
    size_t n = strlen(name);
    memcpy(k->b, name, n + 1);
    be32(k->b + n + 1, version);
    k->v.mv_size = n + 5;
    k->v.mv_data = k->b;
}

/* The key belongs to name (any version). */
static int key_is_name(const MDB_val *k, const char *name)
{
    size_t n = strlen(name);
    return k->mv_size == n + 5 && !memcmp(k->mv_data, name, n + 1);
}

/* meta key of a name's last assigned version */
static MDB_val version_key(char *buf, size_t len, const char *name)
{
    int n = snprintf(buf, len, "last_version:%s", name);
    return (MDB_val){(size_t)n, buf};
}

static MDB_val str_val(const char *s)
{
    return (MDB_val){strlen(s), (void *)s};
}

/* ---- open ---- */

int store_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > STORE_NAME_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static int open_dbs(store *s, MDB_txn *txn, void *ctx, char *err, size_t errlen)
{
    (void)ctx;
    struct { const char *name; MDB_dbi *dbi; } dbs[] = {
        {"adapters", &s->adapters}, {"jobs", &s->jobs}, {"checkpoints", &s->checkpoints},
        {"files", &s->files}, {"meta", &s->meta},
    };
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        int rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
        if (rc)
            return rc;
    }
    MDB_val k = str_val("schema"), v;
    uint32_t schema = SCHEMA_VERSION;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        v = (MDB_val){sizeof schema, &schema};
        return mdb_put(txn, s->meta, &k, &v, 0);
    }
    if (rc)
        return rc;
    if (v.mv_size != sizeof schema || (memcpy(&schema, v.mv_data, sizeof schema), schema != SCHEMA_VERSION)) {
        snprintf(err, errlen, "store %s: schema version %u, this build reads %u", s->dir,
                 v.mv_size == sizeof schema ? schema : 0u, SCHEMA_VERSION);
        return -1;
    }
    return 0;
}

/* The store holds training text and adapters: the owner's alone. A mode passed to
 * mkdir/open is only ever narrowed by the umask; a directory made by an older qlorad
 * (0755) is narrowed here. */
static int private_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "store %s: cannot create: %s", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "store %s: %s", dir, S_ISDIR(st.st_mode) ? strerror(errno) : "not a directory");
        return -1;
    }
    if ((st.st_mode & 077) && st.st_uid == geteuid() && chmod(dir, st.st_mode & 0700) < 0) {
        snprintf(err, errlen, "store %s: cannot make it private: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static void private_file(const char *dir, const char *name)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (stat(path, &st) == 0 && (st.st_mode & 077) && st.st_uid == geteuid())
        chmod(path, st.st_mode & 0600);
}

int store_lock(const char *dir, const char *who, char *err, size_t errlen)
{
    char path[4200], held[128] = "";
    if (private_dir(dir, err, errlen) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/" STORE_LOCK_FILE, dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "store %s: cannot open its lock file: %s", dir, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t n = pread(fd, held, sizeof held - 1, 0);
        held[n > 0 ? n : 0] = 0;
        held[strcspn(held, "\n")] = 0;
        close(fd);
        if (e == EWOULDBLOCK)
            snprintf(err, errlen, "store %s is in use by %s (the holder of %s)", dir, *held ? held : "another process",
                     STORE_LOCK_FILE);
        else
            snprintf(err, errlen, "store %s: cannot lock: %s", dir, strerror(e));
        return -1;
    }
    /* who holds it, for the message of the next one that tries */
    int n = snprintf(held, sizeof held, "%s (pid %ld)\n", who, (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, held, (size_t)n, 0) != n) {
        snprintf(err, errlen, "store %s: cannot write its lock file: %s", dir, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

void store_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* the lock goes with the last descriptor; the file stays, empty of meaning */
}

int store_open(store **out, const char *dir, size_t map_cap, char *err, size_t errlen)
{
    *out = NULL;
    if (private_dir(dir, err, errlen) < 0)
        return -1;
    store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    s->cap = (map_cap ? map_cap : DEFAULT_CAP) / PAGE * PAGE;
    if (s->cap < 16 * PAGE)
        s->cap = 16 * PAGE;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* a grow waiting for the lock goes before new readers (no thread holds it twice) */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&s->map_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc || pthread_mutex_init(&s->write_lock, NULL)) {
        if (!rc)
            pthread_rwlock_destroy(&s->map_lock);
        free(s);
        snprintf(err, errlen, "out of resources");
        return -1;
    }
    int dead;
    /* an existing environment keeps its own (larger) map size */
    if ((rc = mdb_env_create(&s->env)) || (rc = mdb_env_set_maxdbs(s->env, 5)) ||
        (rc = mdb_env_set_mapsize(s->env, s->cap < INITIAL_MAP ? s->cap : INITIAL_MAP)) ||
        (rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600)) || (rc = mdb_reader_check(s->env, &dead))) {
        mdb_fail(s, rc, err, errlen);
        store_close(s);
        return -1;
    }
    private_file(dir, "data.mdb"); /* made before 0600 was the rule */
    private_file(dir, "lock.mdb");
    if (write_txn(s, open_dbs, NULL, err, errlen) < 0) {
        store_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void store_close(store *s)
{
    if (!s)
        return;
    if (s->env)
        mdb_env_close(s->env);
    pthread_mutex_destroy(&s->write_lock);
    pthread_rwlock_destroy(&s->map_lock);
    free(s);
}

/* ---- adapters ---- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    store_adapter_info *info;
    const llama_lora *ad;
    store_job_update_fn job_fn;
    void *job_ctx;
} put_ctx;

static int put_adapter(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    put_ctx *c = p;
    store_adapter_info *info = c->info;
    char vk[96];
    MDB_val key = version_key(vk, sizeof vk, info->name), val;
    uint32_t last = 0;
    int rc = mdb_get(txn, s->meta, &key, &val);
    if (rc == 0 && val.mv_size == sizeof last)
        memcpy(&last, val.mv_data, sizeof last);
    else if (rc != MDB_NOTFOUND)
        return rc ? rc : (snprintf(err, errlen, "store %s: meta %s is corrupt", s->dir, vk), -1);
    if (last == UINT32_MAX) {
        snprintf(err, errlen, "adapter '%s': no versions left", info->name);
        return -1;
    }
    info->version = last + 1;
    info->created_at = now();
    val = (MDB_val){sizeof info->version, &info->version};
    if ((rc = mdb_put(txn, s->meta, &key, &val, 0)))
        return rc;

    record_buf rec;
    if (record_pack(&rec, info, c->ad) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    adapter_key ak;
    make_adapter_key(&ak, info->name, info->version);
    size_t tensors = record_tensor_offset(rec.len);
    val = (MDB_val){tensors + info->size_bytes, NULL};
    /* MDB_RESERVE: the tensors go straight into the map, not through a copy */
    rc = mdb_put(txn, s->adapters, &ak.v, &val, MDB_RESERVE | MDB_NOOVERWRITE);
    if (rc == 0)
        record_write_value(val.mv_data, &rec, c->ad);
    record_free(&rec);
    if (rc || !c->job_fn)
        return rc;

    size_t len;
    void *job = c->job_fn(c->job_ctx, info->version, &len);
    if (job) {
        unsigned char id[8];
        be64(id, info->job_id);
        MDB_val k = {8, id}, v = {len, job};
        rc = mdb_put(txn, s->jobs, &k, &v, 0);
        free(job);
        if (rc == 0 && (rc = mdb_del(txn, s->checkpoints, &k, NULL)) == MDB_NOTFOUND)
            rc = 0;
    }
    return rc;
}

int store_adapter_put(store *s, store_adapter_info *info, const llama_lora *ad, store_job_update_fn job_fn,
                      void *job_ctx, char *err, size_t errlen)
{
    if (store_name_check(info->name, err, errlen) < 0)
        return -1;
    /* the layout ad has is the one base gives: same layers, same parameter count */
    llama_lora probe;
    const llama_config *b = &info->base;
    llama_config derived = *b;
    char why[160];
    if (b->n_layers != ad->n_layers || b->head_size < 1 || llama_config_derive(&derived, "base", why, sizeof why) < 0 ||
        derived.q_dim != b->q_dim || derived.kv_dim != b->kv_dim) {
        snprintf(err, errlen, "adapter '%s': info.base is not the shape of the base the adapter was made for",
                 info->name);
        return -1;
    }
    if (llama_lora_alloc(&probe, b, ad->rank, ad->alpha, ad->rslora, ad->targets, 0) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int fits = probe.n_params == ad->n_params && !memcmp(probe.offset, ad->offset, (size_t)b->n_layers * LIN_COUNT * sizeof(size_t));
    llama_lora_free(&probe);
    if (!fits) {
        snprintf(err, errlen, "adapter '%s': its tensors are not laid out for info.base", info->name);
        return -1;
    }
    info->rank = ad->rank;
    info->alpha = ad->alpha;
    info->rslora = ad->rslora;
    info->targets = ad->targets;
    info->dropout = ad->dropout;
    info->size_bytes = (uint64_t)ad->n_params * sizeof(float);
    put_ctx c = {info, ad, job_fn, job_ctx};
    return write_txn(s, put_adapter, &c, err, errlen);
}

/* The value at the cursor's key of name, version (0: latest); MDB_NOTFOUND when absent. */
static int find_adapter(store *s, MDB_txn *txn, const char *name, uint32_t version, MDB_val *val)
{
    adapter_key ak;
    MDB_val k;
    if (version)
        return make_adapter_key(&ak, name, version), mdb_get(txn, s->adapters, &ak.v, val);
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->adapters, &cur);
    if (rc)
        return rc;
    make_adapter_key(&ak, name, UINT32_MAX);
    k = ak.v;
    rc = mdb_cursor_get(cur, &k, val, MDB_SET_RANGE); /* the first key past name's versions... */
    if (rc == 0 && key_is_name(&k, name)) {
        mdb_cursor_close(cur);
        return 0; /* version UINT32_MAX itself */
    }
    rc = mdb_cursor_get(cur, &k, val, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV); /* ...and the one before */
    if (rc == 0 && !key_is_name(&k, name))
        rc = MDB_NOTFOUND;
    mdb_cursor_close(cur);
    return rc;
}

int store_name_check(const char *name, char *err, size_t errlen)
{
    if (store_name_valid(name))
        return 0;
    snprintf(err, errlen, "name '%.80s' is invalid: " STORE_NAME_RULE, name);
    return -1;
}

int store_adapter_load(store *s, const char *name, uint32_t version, const llama_config *c,
                       store_adapter_info *info, llama_lora *ad, int *not_found, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_val val;
    store_adapter_info tmp;
    if (!info)
        info = &tmp;
    if (ad)
        memset(ad, 0, sizeof *ad);
    *not_found = 0;
    if (store_name_check(name, err, errlen) < 0 || read_begin(s, &txn, err, errlen) < 0)
        return -1;
    int rc = find_adapter(s, txn, name, version, &val);
    if (rc) {
        *not_found = rc == MDB_NOTFOUND;
        if (!*not_found)
            mdb_fail(s, rc, err, errlen);
        else if (version)
            snprintf(err, errlen, "adapter '%s@%u' not found", name, version);
        else
            snprintf(err, errlen, "adapter '%s' not found", name);
        read_end(s, txn);
        return -1;
    }
    rc = record_read_value(val.mv_data, val.mv_size, c, info, ad, err, errlen);
    read_end(s, txn);
    return rc;
}

int store_adapter_get(store *s, const char *name, uint32_t version, store_adapter_info *info, int *not_found,
                      char *err, size_t errlen)
{
    return store_adapter_load(s, name, version, NULL, info, NULL, not_found, err, errlen);
}

int store_adapter_list(store *s, store_adapter_info **out, size_t *n, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    MDB_stat st;
    *out = NULL;
    *n = 0;
    if (read_begin(s, &txn, err, errlen) < 0)
        return -1;
    int rc = mdb_stat(txn, s->adapters, &st);
    if (rc == 0 && !(*out = malloc((st.ms_entries ? st.ms_entries : 1) * sizeof **out)))
        rc = ENOMEM;
    if (rc == 0)
        rc = mdb_cursor_open(txn, s->adapters, &cur);
    if (rc) {
        free(*out);
        *out = NULL;
        read_end(s, txn);
        return mdb_fail(s, rc, err, errlen);
    }
    int failed = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && !failed && *n < st.ms_entries;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        failed = record_read_value(v.mv_data, v.mv_size, NULL, &(*out)[(*n)++], NULL, err, errlen) < 0;
    mdb_cursor_close(cur);
    read_end(s, txn);
    if (failed || (rc && rc != MDB_NOTFOUND)) {
        free(*out);
        *out = NULL;
        *n = 0;
        return failed ? -1 : mdb_fail(s, rc, err, errlen);
    }
    return 0;
}

typedef struct {
    const char *name;
    uint32_t version;
    int deleted;
} delete_ctx;

static int delete_adapter(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    delete_ctx *d = p;
    adapter_key ak;
    MDB_cursor *cur;
    MDB_val k, v;
    d->deleted = 0;
    make_adapter_key(&ak, d->name, d->version);
    if (d->version) {
        int rc = mdb_del(txn, s->adapters, &ak.v, NULL);
        d->deleted = rc == 0;
        return rc == MDB_NOTFOUND ? 0 : rc;
    }
    int rc = mdb_cursor_open(txn, s->adapters, &cur);
    if (rc)
        return rc;
    /* from the first version of name on, each time: a cursor is not positioned after a delete */
    for (;;) {
        make_adapter_key(&ak, d->name, 0);
        k = ak.v;
        if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)) || !key_is_name(&k, d->name) ||
            (rc = mdb_cursor_del(cur, 0)))
            break;
        d->deleted++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_adapter_delete(store *s, const char *name, uint32_t version, int *deleted, char *err, size_t errlen)
{
    delete_ctx d = {name, version, 0};
    *deleted = 0;
    if (store_name_check(name, err, errlen) < 0 || write_txn(s, delete_adapter, &d, err, errlen) < 0)
        return -1;
    *deleted = d.deleted;
    return 0;
}

/* ---- jobs and checkpoints ---- */

typedef struct {
    MDB_dbi *dbi;
    uint64_t id;
    const void *data;
    size_t len;
    const void *job;     /* checkpoints: the job record to write alongside, or NULL */
    size_t job_len;
} put_bytes_ctx;

static int put_bytes(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    put_bytes_ctx *c = p;
    unsigned char id[8];
    be64(id, c->id);
    MDB_val k = {8, id}, v = {c->len, (void *)c->data};
    int rc = mdb_put(txn, *c->dbi, &k, &v, 0);
    if (rc == 0 && c->job) {
        v = (MDB_val){c->job_len, (void *)c->job};
        rc = mdb_put(txn, s->jobs, &k, &v, 0);
    }
    return rc;
}

static int get_bytes(store *s, MDB_dbi dbi, uint64_t id, void **out, size_t *len, int *not_found, char *err,
                     size_t errlen)
{
    MDB_txn *txn;
    unsigned char key[8];
    *out = NULL;
    *len = 0;
    *not_found = 0;
    if (read_begin(s, &txn, err, errlen) < 0)
        return -1;
    be64(key, id);
    MDB_val k = {8, key}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == 0 && !(*out = malloc(v.mv_size ? v.mv_size : 1)))
        rc = ENOMEM;
    if (rc == 0) {
        memcpy(*out, v.mv_data, v.mv_size);
        *len = v.mv_size;
    }
    read_end(s, txn);
    if (rc == MDB_NOTFOUND) {
        *not_found = 1;
        snprintf(err, errlen, "%s %llu not found", dbi == s->jobs ? "job" : "checkpoint of job",
                 (unsigned long long)id);
        return -1;
    }
    return rc ? mdb_fail(s, rc, err, errlen) : 0;
}

static int next_job_id(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    uint64_t *id = p;
    MDB_val k = str_val("next_job"), v;
    *id = 1;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == 0 && v.mv_size == sizeof *id)
        memcpy(id, v.mv_data, sizeof *id);
    else if (rc != MDB_NOTFOUND)
        return rc ? rc : MDB_CORRUPTED;
    uint64_t next = *id + 1;
    v = (MDB_val){sizeof next, &next};
    return mdb_put(txn, s->meta, &k, &v, 0);
}

int store_job_next_id(store *s, uint64_t *id, char *err, size_t errlen)
{
    return write_txn(s, next_job_id, id, err, errlen);
}

int store_job_put(store *s, uint64_t id, const void *rec, size_t len, char *err, size_t errlen)
{
    put_bytes_ctx c = {&s->jobs, id, rec, len, NULL, 0};
    return write_txn(s, put_bytes, &c, err, errlen);
}

int store_job_get(store *s, uint64_t id, void **rec, size_t *len, int *not_found, char *err, size_t errlen)
{
    return get_bytes(s, s->jobs, id, rec, len, not_found, err, errlen);
}

int store_job_each(store *s, int (*fn)(void *ctx, uint64_t id, const void *rec, size_t len), void *ctx,
                   char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    if (read_begin(s, &txn, err, errlen) < 0)
        return -1;
    int rc = mdb_cursor_open(txn, s->jobs, &cur), stop = 0;
    if (rc) {
        read_end(s, txn);
        return mdb_fail(s, rc, err, errlen);
    }
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && !stop; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if (k.mv_size == 8)
            stop = fn(ctx, (uint64_t)get_be32(k.mv_data) << 32 | get_be32((unsigned char *)k.mv_data + 4),
                      v.mv_data, v.mv_size);
    mdb_cursor_close(cur);
    read_end(s, txn);
    if (stop)
        return stop;
    return rc == MDB_NOTFOUND ? 0 : mdb_fail(s, rc, err, errlen);
}

int store_checkpoint_put(store *s, uint64_t job_id, const void *state, size_t len, const void *job_rec,
                         size_t job_len, char *err, size_t errlen)
{
    put_bytes_ctx c = {&s->checkpoints, job_id, state, len, job_rec, job_len};
    return write_txn(s, put_bytes, &c, err, errlen);
}

int store_checkpoint_get(store *s, uint64_t job_id, void **state, size_t *len, int *not_found, char *err,
                         size_t errlen)
{
    return get_bytes(s, s->checkpoints, job_id, state, len, not_found, err, errlen);
}

typedef struct {
    uint64_t id;
    int not_found;
} job_delete_ctx;

static int delete_job(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    job_delete_ctx *c = p;
    unsigned char id[8];
    be64(id, c->id);
    MDB_val k = {8, id};
    int rc = mdb_del(txn, s->jobs, &k, NULL);
    c->not_found = rc == MDB_NOTFOUND;
    if (rc == 0 && (rc = mdb_del(txn, s->checkpoints, &k, NULL)) == MDB_NOTFOUND)
        rc = 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_job_delete(store *s, uint64_t id, int *not_found, char *err, size_t errlen)
{
    job_delete_ctx c = {id, 0};
    *not_found = 0;
    if (write_txn(s, delete_job, &c, err, errlen) < 0)
        return -1;
    if (c.not_found) {
        *not_found = 1;
        snprintf(err, errlen, "job %llu not found", (unsigned long long)id);
        return -1;
    }
    return 0;
}

/* ---- files ----
 * Key: the 32 bytes of the SHA-256. Value: u32 LE n, n bytes of msgpack record {bytes,
 * filename, purpose, created_at}, then the bytes. */

static const char hexdigits[] = "0123456789abcdef";

void store_file_id(const void *data, size_t len, char id[STORE_FILE_ID_LEN + 1])
{
    struct sha256_ctx ctx;
    uint8_t h[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    sha256_update(&ctx, len, data);
    sha256_digest(&ctx, sizeof h, h);
    memcpy(id, "file-", 5);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) {
        id[5 + 2 * i] = hexdigits[h[i] >> 4];
        id[6 + 2 * i] = hexdigits[h[i] & 15];
    }
    id[STORE_FILE_ID_LEN] = 0;
}

int store_file_id_valid(const char *id)
{
    if (strlen(id) != STORE_FILE_ID_LEN || memcmp(id, "file-", 5))
        return 0;
    for (const char *p = id + 5; *p; p++)
        if (!strchr(hexdigits, *p))
            return 0;
    return 1;
}

static void file_key(const char *id, unsigned char key[32])
{
    for (int i = 0; i < 32; i++)
        key[i] = (unsigned char)((strchr(hexdigits, id[5 + 2 * i]) - hexdigits) << 4 |
                                 (strchr(hexdigits, id[6 + 2 * i]) - hexdigits));
}

static void key_to_id(const MDB_val *k, char *id)
{
    const unsigned char *b = k->mv_data;
    memcpy(id, "file-", 5);
    for (int i = 0; i < 32; i++) {
        id[5 + 2 * i] = hexdigits[b[i] >> 4];
        id[6 + 2 * i] = hexdigits[b[i] & 15];
    }
    id[STORE_FILE_ID_LEN] = 0;
}

static void copy_str(const msgpack_object *o, char *out, size_t cap)
{
    size_t n = o && o->type == MSGPACK_OBJECT_STR ? o->via.str.size : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(out, o->via.str.ptr, n);
    out[n] = 0;
}

/* The record of a value into info (its id from the key); -1 when it is malformed. The
 * bytes start at *body. */
static int read_file_value(const MDB_val *k, const MDB_val *v, store_file_info *info, const void **body)
{
    memset(info, 0, sizeof *info);
    if (k->mv_size != 32 || v->mv_size < 4)
        return -1;
    key_to_id(k, info->id);
    const unsigned char *p = v->mv_data;
    uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    if (n > v->mv_size - 4)
        return -1;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int rc = -1;
    if (msgpack_unpack_next(&u, (const char *)p + 4, n, &off) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        const msgpack_object *m = &u.data;
        for (uint32_t i = 0; i < m->via.map.size; i++) {
            const msgpack_object *key = &m->via.map.ptr[i].key, *val = &m->via.map.ptr[i].val;
            if (key->type != MSGPACK_OBJECT_STR)
                continue;
            const char *ks = key->via.str.ptr;
            size_t kn = key->via.str.size;
            if (kn == 5 && !memcmp(ks, "bytes", 5) && val->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                info->bytes = val->via.u64;
            else if (kn == 8 && !memcmp(ks, "filename", 8))
                copy_str(val, info->filename, sizeof info->filename);
            else if (kn == 7 && !memcmp(ks, "purpose", 7))
                copy_str(val, info->purpose, sizeof info->purpose);
            else if (kn == 10 && !memcmp(ks, "created_at", 10) &&
                     (val->type == MSGPACK_OBJECT_FLOAT64 || val->type == MSGPACK_OBJECT_FLOAT32))
                info->created_at = val->via.f64;
        }
        rc = info->bytes == v->mv_size - 4 - n ? 0 : -1;
    }
    msgpack_unpacked_destroy(&u);
    *body = p + 4 + n;
    return rc;
}

typedef struct {
    const void *data;
    size_t len;
    store_file_info *info;
    int existed;
} file_put_ctx;

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static int put_file(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    file_put_ctx *c = p;
    unsigned char key[32];
    file_key(c->info->id, key);
    MDB_val k = {32, key}, v;
    int rc = mdb_get(txn, s->files, &k, &v);
    c->existed = 0;
    if (rc == 0) {
        const void *body;
        char id[STORE_FILE_ID_LEN + 1];
        memcpy(id, c->info->id, sizeof id);
        if (read_file_value(&k, &v, c->info, &body) < 0) {
            snprintf(err, errlen, "store %s: the record of %s is corrupt", s->dir, id);
            return -1;
        }
        c->existed = 1;
        return 0;
    }
    if (rc != MDB_NOTFOUND)
        return rc;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    pack_cstr(&pk, "bytes");
    msgpack_pack_uint64(&pk, c->len);
    pack_cstr(&pk, "filename");
    pack_cstr(&pk, c->info->filename);
    pack_cstr(&pk, "purpose");
    pack_cstr(&pk, c->info->purpose);
    pack_cstr(&pk, "created_at");
    msgpack_pack_double(&pk, c->info->created_at);
    if (!sb.data) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    v = (MDB_val){4 + sb.size + c->len, NULL};
    /* MDB_RESERVE: the bytes go straight into the map */
    rc = mdb_put(txn, s->files, &k, &v, MDB_RESERVE | MDB_NOOVERWRITE);
    if (rc == 0) {
        unsigned char *out = v.mv_data;
        for (int i = 0; i < 4; i++)
            out[i] = (unsigned char)(sb.size >> (8 * i));
        memcpy(out + 4, sb.data, sb.size);
        if (c->len)
            memcpy(out + 4 + sb.size, c->data, c->len);
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int store_file_put(store *s, const void *data, size_t len, const char *filename, const char *purpose,
                   store_file_info *info, int *existed, char *err, size_t errlen)
{
    memset(info, 0, sizeof *info);
    store_file_id(data, len, info->id);
    snprintf(info->filename, sizeof info->filename, "%s", filename ? filename : "");
    snprintf(info->purpose, sizeof info->purpose, "%s", purpose ? purpose : "");
    info->bytes = len;
    info->created_at = now();
    file_put_ctx c = {data, len, info, 0};
    int rc = write_txn(s, put_file, &c, err, errlen);
    *existed = c.existed;
    return rc;
}

int store_file_get(store *s, const char *id, store_file_info *info, void **data, size_t *len, int *not_found,
                   char *err, size_t errlen)
{
    MDB_txn *txn;
    unsigned char key[32];
    *not_found = 0;
    if (data)
        *data = NULL, *len = 0;
    if (!store_file_id_valid(id)) {
        snprintf(err, errlen, "'%.80s' is not a file id (file- and 64 hex digits)", id);
        return -1;
    }
    if (read_begin(s, &txn, err, errlen) < 0)
        return -1;
    file_key(id, key);
    MDB_val k = {32, key}, v;
    const void *body = NULL;
    int rc = mdb_get(txn, s->files, &k, &v), bad = 0;
    if (rc == 0 && read_file_value(&k, &v, info, &body) < 0)
        bad = 1;
    if (rc == 0 && !bad && data) {
        char got[STORE_FILE_ID_LEN + 1];
        store_file_id(body, info->bytes, got);
        if (strcmp(got, id))
            bad = 1;
        else if (!(*data = malloc(info->bytes ? info->bytes : 1)))
            rc = ENOMEM;
        else
            memcpy(*data, body, info->bytes), *len = info->bytes;
    }
    read_end(s, txn);
    if (rc == MDB_NOTFOUND) {
        *not_found = 1;
        snprintf(err, errlen, "file %s not found", id);
        return -1;
    }
    if (bad) {
        snprintf(err, errlen, "file %s is corrupt: its stored bytes do not hash to its id", id);
        return -1;
    }
    return rc ? mdb_fail(s, rc, err, errlen) : 0;
}

int store_file_list(store *s, store_file_info **out, size_t *n, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    MDB_stat st;
    *out = NULL;
    *n = 0;
    if (read_begin(s, &txn, err, errlen) < 0)
        return -1;
    int rc = mdb_stat(txn, s->files, &st);
    if (rc == 0 && !(*out = malloc((st.ms_entries ? st.ms_entries : 1) * sizeof **out)))
        rc = ENOMEM;
    if (rc == 0)
        rc = mdb_cursor_open(txn, s->files, &cur);
    if (rc) {
        free(*out);
        *out = NULL;
        read_end(s, txn);
        return mdb_fail(s, rc, err, errlen);
    }
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && *n < st.ms_entries;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const void *body;
        if (read_file_value(&k, &v, &(*out)[*n], &body) == 0) /* a corrupt one is left out */
            (*n)++;
    }
    mdb_cursor_close(cur);
    read_end(s, txn);
    if (rc && rc != MDB_NOTFOUND) {
        free(*out);
        *out = NULL;
        *n = 0;
        return mdb_fail(s, rc, err, errlen);
    }
    return 0;
}

typedef struct {
    unsigned char key[32];
    int deleted;
} file_delete_ctx;

static int delete_file(store *s, MDB_txn *txn, void *p, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    file_delete_ctx *c = p;
    MDB_val k = {32, c->key};
    int rc = mdb_del(txn, s->files, &k, NULL);
    c->deleted = rc == 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_file_delete(store *s, const char *id, int *deleted, char *err, size_t errlen)
{
    file_delete_ctx c = {{0}, 0};
    *deleted = 0;
    if (!store_file_id_valid(id)) {
        snprintf(err, errlen, "'%.80s' is not a file id (file- and 64 hex digits)", id);
        return -1;
    }
    file_key(id, c.key);
    if (write_txn(s, delete_file, &c, err, errlen) < 0)
        return -1;
    *deleted = c.deleted;
    return 0;
}

int store_stat(store *s, size_t *used_bytes, size_t *n_adapters, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_envinfo info;
    MDB_stat env, st;
    if (read_begin(s, &txn, err, errlen) < 0)
        return -1;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &env);
    int rc = mdb_stat(txn, s->adapters, &st);
    read_end(s, txn);
    if (rc)
        return mdb_fail(s, rc, err, errlen);
    *used_bytes = (info.me_last_pgno + 1) * (size_t)env.ms_psize;
    *n_adapters = st.ms_entries;
    return 0;
}
