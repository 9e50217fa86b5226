/* test_storage.c: the LMDB store and PEFT import, against adapters whose every value is a
 * known function of (seed, index): round trips bit-exact, names, versions never reused,
 * the map growing up to its cap and "store full" past it with nothing left behind, a
 * writer killed with SIGKILL at random moments, readers in threads while a writer
 * publishes, a second process on the same directory, and every malformed PEFT input
 * refused with the store unchanged. TAP output. */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "peft.h"
#include "store.h"
#include "tap.h"

/* A small Llama shape: q, o [64 x 64], k, v [32 x 64], gate, up [160 x 64], down [64 x 160]. */
static const llama_config cfg = {.dim = 64, .hidden_dim = 160, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                 .vocab_size = 32, .seq_len = 16, .head_size = 16, .kv_dim = 32,
                                 .q_dim = 64};

static float value_of(uint64_t seed, size_t i)
{
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 9007199254740992.0 - 0.5);
}

/* The adapter of seed: every parameter value_of(seed, i). */
static void make_adapter(llama_lora *ad, int rank, unsigned targets, uint64_t seed)
{
    if (llama_lora_alloc(ad, &cfg, rank, 2.0f * rank, 0, targets, 0.05f) < 0) {
        printf("Bail out! out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < ad->n_params; i++)
        ad->params[i] = value_of(seed, i);
}

static int matches_seed(const llama_lora *ad, uint64_t seed)
{
    for (size_t i = 0; i < ad->n_params; i++)
        if (memcmp(&ad->params[i], &(float){value_of(seed, i)}, sizeof(float)))
            return 0;
    return 1;
}

static store_adapter_info info_for(const char *name, uint64_t job_id)
{
    store_adapter_info info = {.base_fingerprint = 0x1234abcd5678ef00ull, .base = cfg, .job_id = job_id,
                               .eval_loss = 1.5, .ppl_base = NAN, .ppl_adapter = 4.25};
    snprintf(info.name, sizeof info.name, "%s", name);
    return info;
}

/* Publishes the adapter of seed under name; returns its version (0 on failure, err set). */
static uint32_t publish(store *s, const char *name, int rank, uint64_t seed, char *err, size_t errlen)
{
    llama_lora ad;
    make_adapter(&ad, rank, (1u << LIN_COUNT) - 1, seed);
    store_adapter_info info = info_for(name, seed);
    int rc = store_adapter_put(s, &info, &ad, NULL, NULL, err, errlen);
    llama_lora_free(&ad);
    return rc < 0 ? 0 : info.version;
}

static void tmp_dir(char *out, size_t len, const char *what)
{
    snprintf(out, len, "/tmp/qlora-test-storage-%s-XXXXXX", what);
    if (!mkdtemp(out)) {
        printf("Bail out! mkdtemp\n");
        exit(1);
    }
}

static void remove_dir(const char *dir)
{
    char path[512];
    const char *files[] = {"data.mdb", "lock.mdb", STORE_LOCK_FILE};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Everything a reader can see: each version's name, version and tensor checksum. */
typedef struct {
    size_t n;
    char line[256][96];
} snapshot;

static uint64_t params_hash(const llama_lora *ad)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)ad->params;
    for (size_t i = 0; i < ad->n_params * sizeof(float); i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static int take_snapshot(store *s, snapshot *snap)
{
    store_adapter_info *list;
    size_t n;
    char err[512];
    int nf;
    if (store_adapter_list(s, &list, &n, err, sizeof err) < 0 || n > 256)
        return -1;
    snap->n = n;
    for (size_t i = 0; i < n; i++) {
        llama_lora ad;
        if (store_adapter_load(s, list[i].name, list[i].version, &cfg, NULL, &ad, &nf, err, sizeof err) < 0) {
            free(list);
            return -1;
        }
        snprintf(snap->line[i], sizeof snap->line[i], "%s@%u %016llx", list[i].name, list[i].version,
                 (unsigned long long)params_hash(&ad));
        llama_lora_free(&ad);
    }
    free(list);
    return 0;
}

static int same_snapshot(const snapshot *a, const snapshot *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->line[i], b->line[i]))
            return 0;
    return 1;
}

static store *open_or_bail(const char *dir, size_t cap)
{
    store *s;
    char err[512];
    if (store_open(&s, dir, cap, err, sizeof err) < 0) {
        printf("Bail out! %s\n", err);
        exit(1);
    }
    return s;
}

/* ---- names ---- */

static void test_names(void)
{
    char long64[65], long65[66];
    memset(long64, 'a', 64);
    long64[64] = 0;
    memset(long65, 'b', 65);
    long65[65] = 0;
    const char *good[] = {"a", "A-z_0.9", "..a", "a..", long64};
    const char *bad[] = {"", ".", "..", "a/b", "../x", "/", long65, "caf\xc3\xa9", "a b", "a\n", "a@1", "a\\b"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(store_name_valid(good[i]), "'%s' refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!store_name_valid(bad[i]), "'%s' accepted", bad[i]);

    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "names");
    store *s = open_or_bail(dir, 0);
    snapshot before, after;
    CHECK(publish(s, "kept", 4, 1, err, sizeof err) == 1, "%s", err);
    CHECK(take_snapshot(s, &before) == 0, "snapshot");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (strlen(bad[i]) >= sizeof(((store_adapter_info *)0)->name))
            continue; /* cannot be put in info.name: get and delete below take it */
        CHECK(publish(s, bad[i], 4, 2, err, sizeof err) == 0, "put '%s' accepted", bad[i]);
        CHECK(strstr(err, "invalid") != NULL, "message: %s", err);
    }
    int deleted, nf;
    store_adapter_info info;
    CHECK(store_adapter_delete(s, "..", 0, &deleted, err, sizeof err) < 0, "delete '..' accepted");
    CHECK(store_adapter_delete(s, long65, 0, &deleted, err, sizeof err) < 0, "delete of 65 chars accepted");
    CHECK(store_adapter_get(s, long65, 0, &info, &nf, err, sizeof err) < 0 && !nf, "get of 65 chars accepted");
    CHECK(store_adapter_get(s, "a/b", 0, &info, &nf, err, sizeof err) < 0 && !nf, "get 'a/b' accepted");
    CHECK(take_snapshot(s, &after) == 0 && same_snapshot(&before, &after), "store changed");
    store_close(s);
    remove_dir(dir);
    test_case("names: [A-Za-z0-9._-]{1,64} accepted; '', '.', '..', '/', 65 chars, unicode, space refused, "
              "store unchanged");
}

/* ---- round trip, list order, versions ---- */

static void test_round_trip(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "rt");
    store *s = open_or_bail(dir, 0);
    llama_lora ad, back;
    make_adapter(&ad, 8, 1u << LIN_Q | 1u << LIN_V | 1u << LIN_DOWN, 42);
    ad.rslora = 1;
    store_adapter_info info = info_for("model.v1", 7), got;
    int nf;
    CHECK(store_adapter_put(s, &info, &ad, NULL, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(info.version == 1 && info.created_at > 1.6e9 && info.size_bytes == ad.n_params * 4, "put fills info");
    store_close(s);
    s = open_or_bail(dir, 0); /* through the file, not a cache */
    CHECK(store_adapter_load(s, "model.v1", 0, &cfg, &got, &back, &nf, err, sizeof err) == 0, "%s", err);
    CHECK(back.n_params == ad.n_params && !memcmp(back.params, ad.params, ad.n_params * sizeof(float)),
          "tensors differ");
    CHECK(back.rank == 8 && back.alpha == 16 && back.rslora == 1 && back.targets == ad.targets &&
              back.dropout == 0.05f, "adapter parameters");
    CHECK(!strcmp(got.name, "model.v1") && got.version == 1 && got.rank == 8 && got.alpha == 16 && got.rslora &&
              got.targets == ad.targets && got.dropout == 0.05f && got.base_fingerprint == info.base_fingerprint &&
              got.job_id == 7 && got.eval_loss == 1.5 && isnan(got.ppl_base) && got.ppl_adapter == 4.25 &&
              got.created_at == info.created_at && got.size_bytes == info.size_bytes,
          "record fields");
    CHECK(got.base.dim == cfg.dim && got.base.hidden_dim == cfg.hidden_dim && got.base.n_layers == cfg.n_layers &&
              got.base.n_heads == cfg.n_heads && got.base.n_kv_heads == cfg.n_kv_heads &&
              got.base.head_size == cfg.head_size && got.base.kv_dim == cfg.kv_dim,
          "base shape");
    llama_lora_free(&back);

    /* another shape is refused, naming the adapter */
    llama_config other = cfg;
    other.hidden_dim = 128;
    CHECK(store_adapter_load(s, "model.v1", 1, &other, NULL, &back, &nf, err, sizeof err) < 0 && !nf,
          "loaded onto another shape");
    CHECK(strstr(err, "model.v1@1") && strstr(err, "shape"), "message: %s", err);
    /* a put whose info.base does not match the adapter's layout is refused */
    info = info_for("model.v1", 0);
    info.base.hidden_dim = 128;
    CHECK(store_adapter_put(s, &info, &ad, NULL, NULL, err, sizeof err) < 0 && strstr(err, "info.base"),
          "mismatched base accepted: %s", err);
    llama_lora_free(&ad);

    /* list order: name then version, although "a" + a version byte would sort after "a-" */
    const char *names[] = {"ab", "a", "a-", "a", "ab", "a"};
    for (size_t i = 0; i < 6; i++)
        publish(s, names[i], 2, 100 + i, err, sizeof err);
    store_adapter_info *list;
    size_t n;
    CHECK(store_adapter_list(s, &list, &n, err, sizeof err) == 0 && n == 7, "list: %zu", n);
    const char *order[] = {"a@1", "a@2", "a@3", "a-@1", "ab@1", "ab@2", "model.v1@1"};
    for (size_t i = 0; i < n && i < 7; i++) {
        char got_name[96];
        snprintf(got_name, sizeof got_name, "%s@%u", list[i].name, list[i].version);
        CHECK(!strcmp(got_name, order[i]), "list[%zu] %s, expected %s", i, got_name, order[i]);
    }
    free(list);
    CHECK(store_adapter_get(s, "a", 0, &got, &nf, err, sizeof err) == 0 && got.version == 3 && got.job_id == 105,
          "latest of a");
    CHECK(store_adapter_get(s, "a", 2, &got, &nf, err, sizeof err) == 0 && got.version == 2 && got.job_id == 103,
          "a@2");
    CHECK(store_adapter_get(s, "a", 4, &got, &nf, err, sizeof err) < 0 && nf && strstr(err, "a@4"), "a@4: %s", err);
    CHECK(store_adapter_get(s, "zz", 0, &got, &nf, err, sizeof err) < 0 && nf, "zz");
    size_t used, count;
    CHECK(store_stat(s, &used, &count, err, sizeof err) == 0 && count == 7 && used > 7 * 4096, "stat %zu %zu",
          used, count);
    store_close(s);
    remove_dir(dir);
    test_case("store -> load bit-exact with every record field; list sorted by name then version; "
              "latest and exact get; another shape refused");
}

static void test_versions(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "ver");
    store *s = open_or_bail(dir, 0);
    int deleted, nf;
    store_adapter_info got;
    for (uint32_t v = 1; v <= 3; v++)
        CHECK(publish(s, "x", 2, v, err, sizeof err) == v, "version %u", v);
    CHECK(store_adapter_delete(s, "x", 3, &deleted, err, sizeof err) == 0 && deleted == 1, "delete x@3");
    CHECK(publish(s, "x", 2, 4, err, sizeof err) == 4, "after deleting the latest: 4, not 3");
    CHECK(store_adapter_delete(s, "x", 3, &deleted, err, sizeof err) == 0 && deleted == 0, "x@3 twice");
    CHECK(store_adapter_delete(s, "x", 0, &deleted, err, sizeof err) == 0 && deleted == 3, "delete all: %d",
          deleted);
    CHECK(store_adapter_get(s, "x", 0, &got, &nf, err, sizeof err) < 0 && nf, "x gone");
    CHECK(publish(s, "x", 2, 5, err, sizeof err) == 5, "after deleting all: 5");
    store_close(s);
    s = open_or_bail(dir, 0);
    CHECK(publish(s, "x", 2, 6, err, sizeof err) == 6, "after reopening: 6");
    CHECK(publish(s, "y", 2, 1, err, sizeof err) == 1, "another name counts from 1");
    store_close(s);
    remove_dir(dir);
    test_case("versions increase per name and are never reused: not after deleting the latest, all, or reopening");
}

/* ---- jobs and checkpoints ---- */

typedef struct {
    int calls;
    uint32_t version;
} job_ctx;

static void *job_update(void *p, uint32_t version, size_t *len)
{
    job_ctx *c = p;
    c->calls++;
    c->version = version;
    char *rec = malloc(32);
    if (rec)
        *len = (size_t)snprintf(rec, 32, "done v%u", version);
    return rec;
}

static int count_jobs(void *ctx, uint64_t id, const void *rec, size_t len)
{
    (void)rec, (void)len;
    uint64_t *ids = ctx;
    ids[ids[0]++ + 1] = id;
    return 0;
}

static void test_jobs(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "jobs");
    store *s = open_or_bail(dir, 0);
    uint64_t a, b, ids[8] = {0};
    void *rec;
    size_t len;
    int nf;
    CHECK(store_job_next_id(s, &a, err, sizeof err) == 0 && store_job_next_id(s, &b, err, sizeof err) == 0 &&
              a == 1 && b == 2, "ids %llu %llu", (unsigned long long)a, (unsigned long long)b);
    CHECK(store_job_put(s, b, "queued", 6, err, sizeof err) == 0 && store_job_put(s, a, "running", 7, err,
                                                                                  sizeof err) == 0, "%s", err);
    CHECK(store_checkpoint_put(s, a, "state-1", 7, "running 10", 10, err, sizeof err) == 0, "%s", err);
    CHECK(store_checkpoint_get(s, a, &rec, &len, &nf, err, sizeof err) == 0 && len == 7 && !memcmp(rec, "state-1", 7),
          "checkpoint");
    free(rec);
    CHECK(store_job_get(s, a, &rec, &len, &nf, err, sizeof err) == 0 && len == 10 && !memcmp(rec, "running 10", 10),
          "job record written with the checkpoint");
    free(rec);
    CHECK(store_job_each(s, count_jobs, ids, err, sizeof err) == 0 && ids[0] == 2 && ids[1] == 1 && ids[2] == 2,
          "each in id order");

    /* publishing with a job update: job rewritten and checkpoint gone, in the same transaction */
    llama_lora ad;
    make_adapter(&ad, 2, 1u << LIN_Q, 9);
    store_adapter_info info = info_for("from-job", a);
    job_ctx jc = {0, 0};
    CHECK(store_adapter_put(s, &info, &ad, job_update, &jc, err, sizeof err) == 0, "%s", err);
    llama_lora_free(&ad);
    CHECK(jc.calls >= 1 && jc.version == 1, "job_fn called with the version");
    CHECK(store_job_get(s, a, &rec, &len, &nf, err, sizeof err) == 0 && len == 7 && !memcmp(rec, "done v1", 7),
          "job rewritten");
    free(rec);
    CHECK(store_checkpoint_get(s, a, &rec, &len, &nf, err, sizeof err) < 0 && nf, "checkpoint deleted");
    CHECK(store_job_get(s, 99, &rec, &len, &nf, err, sizeof err) < 0 && nf, "job 99");
    store_close(s);
    s = open_or_bail(dir, 0);
    CHECK(store_job_next_id(s, &a, err, sizeof err) == 0 && a == 3, "ids survive reopening");
    store_close(s);
    remove_dir(dir);
    test_case("jobs: ids from 1, records, checkpoints with their job record, publish rewrites the job and drops "
              "its checkpoint");
}

/* ---- growth and the cap ---- */

static void test_store_full(void)
{
    char dir[128], err[512] = "";
    tmp_dir(dir, sizeof dir, "full");
    const size_t cap = 4u << 20; /* starts at 1 MiB, doubles twice, then full */
    store *s = open_or_bail(dir, cap);
    snapshot before, after;
    uint32_t v = 0, last = 0;
    size_t used = 0, count;
    /* rank 32, every target: 286,720 bytes of tensors per version */
    while ((v = publish(s, "big", 32, last + 1, err, sizeof err)) != 0) {
        last = v;
        CHECK(store_stat(s, &used, &count, err, sizeof err) == 0, "%s", err);
    }
    CHECK(strstr(err, "store full") != NULL, "message: %s", err);
    CHECK(last >= 8 && used > (2u << 20), "grew past the initial map: %u versions, %zu bytes used", last, used);
    CHECK(take_snapshot(s, &before) == 0 && before.n == last, "snapshot");
    /* a job update in a failing publish is not written either */
    llama_lora ad;
    make_adapter(&ad, 32, (1u << LIN_COUNT) - 1, 999);
    store_adapter_info info = info_for("big", 5);
    job_ctx jc = {0, 0};
    CHECK(store_adapter_put(s, &info, &ad, job_update, &jc, err, sizeof err) < 0 && strstr(err, "store full"),
          "second put past the cap: %s", err);
    llama_lora_free(&ad);
    void *rec;
    size_t len;
    int nf;
    CHECK(store_job_get(s, 5, &rec, &len, &nf, err, sizeof err) < 0 && nf, "job record of a failed publish");
    store_close(s);
    s = open_or_bail(dir, cap);
    CHECK(take_snapshot(s, &after) == 0 && same_snapshot(&before, &after), "store changed by failed puts");
    /* room made by deleting is used again, and the failed versions left no gap or reuse */
    int deleted;
    for (uint32_t v = 1; v <= 4; v++)
        CHECK(store_adapter_delete(s, "big", v, &deleted, err, sizeof err) == 0 && deleted == 1, "%s", err);
    CHECK(publish(s, "big", 32, 77, err, sizeof err) == last + 1, "next version after full: %s", err);
    store_close(s);
    remove_dir(dir);
    test_case("map grows from 1 MiB to its cap (%u versions), then 'store full' with nothing written", last);
}

/* ---- crash safety ---- */

/* Publishes versions of "crash" forever; each version's tensors are those of the seed
 * recorded as its job_id, so a reader can check any version alone. Writes a byte to
 * `ready` after its first commit. */
static void crash_writer(const char *dir, uint64_t seed, int ready)
{
    char err[512];
    store *s;
    if (store_open(&s, dir, 0, err, sizeof err) < 0)
        _exit(3);
    for (int first = 1;; seed++, first = 0) {
        if (!publish(s, "crash", 32, seed, err, sizeof err))
            _exit(4);
        if (first && write(ready, "x", 1) != 1)
            _exit(5);
    }
}

static void test_crash(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "crash");
    srand((unsigned)time(NULL));
    int kills = 0, bad_exit = 0, bad_versions = 0;
    uint32_t max_seen = 0, total = 0, mid_kills = 0;
    for (int round = 0; round < 25; round++) {
        int ready[2];
        if (pipe(ready) < 0)
            break;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(ready[0]);
            crash_writer(dir, (uint64_t)(round + 1) * 1000000, ready[1]);
        }
        close(ready[1]);
        if (pid < 0)
            break;
        /* every fifth round the kill may land during open or the first write; the others
         * wait for a first commit (the machine may be slow) and kill among later writes */
        char byte;
        if (round % 5 && read(ready[0], &byte, 1) != 1)
            printf("# round %d: the writer died before its first commit\n", round);
        usleep((useconds_t)(rand() % 30000));
        kill(pid, SIGKILL);
        close(ready[0]);
        int status;
        waitpid(pid, &status, 0);
        kills += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        bad_exit += !WIFSIGNALED(status);

        store *s = open_or_bail(dir, 0); /* clears the dead writer's reader slot */
        store_adapter_info *list;
        size_t n;
        CHECK(store_adapter_list(s, &list, &n, err, sizeof err) == 0, "%s", err);
        uint32_t prev = max_seen;
        for (size_t i = 0; i < n; i++) {
            llama_lora ad;
            int nf;
            if (store_adapter_load(s, "crash", list[i].version, &cfg, NULL, &ad, &nf, err, sizeof err) < 0 ||
                !matches_seed(&ad, list[i].job_id) || list[i].version <= prev) {
                bad_versions++;
                printf("# round %d: version %u: %s\n", round, list[i].version, err);
            } else {
                llama_lora_free(&ad);
            }
            prev = list[i].version;
        }
        if (n)
            max_seen = list[n - 1].version;
        total += (uint32_t)n;
        mid_kills += n > 0;
        free(list);
        int deleted;
        CHECK(store_adapter_delete(s, "crash", 0, &deleted, err, sizeof err) == 0, "%s", err);
        store_close(s);
    }
    CHECK(kills == 25 && bad_exit == 0, "%d of 25 writers killed, %d exited by themselves", kills, bad_exit);
    CHECK(bad_versions == 0, "%d versions partial, corrupt or reused", bad_versions);
    CHECK(mid_kills >= 20, "only %u rounds committed anything before the kill", mid_kills);
    remove_dir(dir);
    test_case("crash: writer killed by SIGKILL 25 times at random moments; %u committed versions all whole, "
              "versions never reused across restarts", total);
}

/* ---- threads and processes ---- */

typedef struct {
    store *s;
    volatile int *stop;
    int loads, errors;
} reader_ctx;

static void *reader(void *p)
{
    reader_ctx *r = p;
    char err[512];
    while (!*r->stop) {
        store_adapter_info *list;
        size_t n;
        if (store_adapter_list(r->s, &list, &n, err, sizeof err) < 0) {
            r->errors++;
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            llama_lora ad;
            int nf;
            /* a version seen in the list stays readable: nothing deletes in this test */
            if (store_adapter_load(r->s, list[i].name, list[i].version, &cfg, NULL, &ad, &nf, err, sizeof err) < 0 ||
                !matches_seed(&ad, list[i].job_id) || (i && list[i].version != list[i - 1].version + 1)) {
                r->errors++;
                printf("# reader: %s@%u: %s\n", list[i].name, list[i].version, err);
                continue;
            }
            r->loads++;
            llama_lora_free(&ad);
        }
        free(list);
    }
    return NULL;
}

static void test_threads(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "threads");
    store *s = open_or_bail(dir, 256u << 20);
    volatile int stop = 0;
    reader_ctx r[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (reader_ctx){s, &stop, 0, 0};
        pthread_create(&th[i], NULL, reader, &r[i]);
    }
    int published = 0;
    for (int v = 1; v <= 30; v++) /* 30 x 280 KiB: the map grows under the readers */
        published += publish(s, "shared", 32, (uint64_t)v * 7, err, sizeof err) == (uint32_t)v;
    stop = 1;
    int loads = 0, errors = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        loads += r[i].loads;
        errors += r[i].errors;
    }
    size_t used, n;
    CHECK(store_stat(s, &used, &n, err, sizeof err) == 0 && used > (4u << 20), "the map grew: %zu", used);
    CHECK(published == 30 && errors == 0 && loads > 0, "%d published, %d loads, %d errors", published, loads, errors);
    store_close(s);
    remove_dir(dir);
    test_case("4 reader threads (%d checked loads) while one writer publishes 30 versions and the map grows", loads);
}

static void test_two_processes(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "procs");
    store *s = open_or_bail(dir, 0);
    CHECK(publish(s, "p", 2, 1, err, sizeof err) == 1, "%s", err);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        /* the same directory, open in the parent too: read, then publish enough to grow the map */
        store *c;
        store_adapter_info got;
        int nf;
        if (store_open(&c, dir, 0, err, sizeof err) < 0 || store_adapter_get(c, "p", 0, &got, &nf, err, sizeof err) < 0)
            _exit(1);
        for (int i = 0; i < 12; i++)
            if (!publish(c, "q", 32, 50 + (uint64_t)i, err, sizeof err))
                _exit(2);
        store_close(c);
        _exit(0);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    /* the parent's map is now smaller than the file's: it adopts the new size */
    snapshot snap;
    CHECK(take_snapshot(s, &snap) == 0 && snap.n == 13, "parent sees %zu versions", snap.n);
    CHECK(publish(s, "p", 2, 2, err, sizeof err) == 2, "%s", err);
    store_close(s);
    remove_dir(dir);
    test_case("a second process opens the same store while the first has it open; its versions (and map "
              "growth) are seen by the first");
}

/* ---- privacy and the one-writer lock ---- */

static unsigned mode_of(const char *dir, const char *file)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s%s%s", dir, file ? "/" : "", file ? file : "");
    return stat(path, &st) == 0 ? (unsigned)(st.st_mode & 07777) : 07777;
}

static void test_private(void)
{
    char dir[128], err[512];
    /* a new store under umask 0, so nothing narrows a mode asked for */
    mode_t old = umask(0);
    tmp_dir(dir, sizeof dir, "private");
    rmdir(dir);
    store *s = open_or_bail(dir, 0);
    CHECK(publish(s, "p", 2, 1, err, sizeof err) == 1, "%s", err);
    int fd = store_lock(dir, "test", err, sizeof err);
    CHECK(fd >= 0, "%s", err);
    CHECK(mode_of(dir, NULL) == 0700, "directory mode %o", mode_of(dir, NULL));
    CHECK(mode_of(dir, "data.mdb") == 0600, "data.mdb mode %o", mode_of(dir, "data.mdb"));
    CHECK(mode_of(dir, "lock.mdb") == 0600, "lock.mdb mode %o", mode_of(dir, "lock.mdb"));
    CHECK(mode_of(dir, STORE_LOCK_FILE) == 0600, "lock file mode %o", mode_of(dir, STORE_LOCK_FILE));
    store_unlock(fd);
    store_close(s);
    /* a store an older version left world-readable is narrowed when opened */
    char path[256];
    chmod(dir, 0755);
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    chmod(path, 0644);
    s = open_or_bail(dir, 0);
    CHECK(mode_of(dir, NULL) == 0700 && mode_of(dir, "data.mdb") == 0600, "reopened: %o %o", mode_of(dir, NULL),
          mode_of(dir, "data.mdb"));
    store_close(s);
    umask(old);
    remove_dir(dir);
    test_case("the store is the owner's alone (0700 directory, 0600 files) under umask 0, and an old 0755/0644 "
              "store is narrowed at open");
}

static void test_lock(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "lock");
    int fd = store_lock(dir, "first", err, sizeof err);
    CHECK(fd >= 0, "%s", err);
    char want[64];
    snprintf(want, sizeof want, "first (pid %ld)", (long)getpid());
    fflush(stdout);
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        /* another process: refused while the first holds it, with the holder's pid */
        char e[512] = "";
        int got = store_lock(dir, "second", e, sizeof e);
        if (write(pipefd[1], e, strlen(e)) < 0)
            _exit(3);
        _exit(got < 0 ? 0 : 1);
    }
    close(pipefd[1]);
    char msg[512] = "";
    ssize_t n = read(pipefd[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = 0;
    close(pipefd[0]);
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a second process took the lock too");
    CHECK(strstr(msg, want) != NULL, "message '%s' lacks '%s'", msg, want);
    store_unlock(fd);
    /* released: the next one gets it */
    fd = store_lock(dir, "third", err, sizeof err);
    CHECK(fd >= 0, "after release: %s", err);
    store_unlock(fd);
    remove_dir(dir);
    test_case("one process holds a store's lock; another is refused with the holder's name and pid, and gets it "
              "once released");
}

/* ---- PEFT import: malformed inputs ---- */

/* img with the first `from` in its JSON header replaced by `to` (header length redone). */
static unsigned char *edit_header(const unsigned char *img, size_t len, const char *from, const char *to,
                                  size_t *out_len)
{
    uint64_t hl;
    memcpy(&hl, img, 8);
    char *h = strndup((const char *)img + 8, hl), *at = h ? strstr(h, from) : NULL;
    if (!at) {
        printf("Bail out! '%s' not in the header\n", from);
        exit(1);
    }
    size_t nh = hl - strlen(from) + strlen(to), body = len - 8 - hl;
    unsigned char *out = malloc(8 + nh + body);
    uint64_t nh64 = nh;
    memcpy(out, &nh64, 8);
    size_t pre = (size_t)(at - h);
    memcpy(out + 8, h, pre);
    memcpy(out + 8 + pre, to, strlen(to));
    memcpy(out + 8 + pre + strlen(to), at + strlen(from), hl - pre - strlen(from));
    memcpy(out + 8 + nh, img + 8 + hl, body);
    *out_len = 8 + nh + body;
    free(h);
    return out;
}

static void test_peft_import(void)
{
    char dir[128], err[1024];
    tmp_dir(dir, sizeof dir, "peft");
    store *s = open_or_bail(dir, 0);
    CHECK(publish(s, "existing", 4, 3, err, sizeof err) == 1, "%s", err);
    llama_lora ad, back;
    make_adapter(&ad, 4, 1u << LIN_Q | 1u << LIN_K | 1u << LIN_UP, 11);
    void *st;
    size_t st_len;
    char *config;
    uint64_t fp;
    CHECK(peft_encode(&ad, &cfg, 0xfeedull, &st, &st_len, err, sizeof err) == 0, "%s", err);
    CHECK(peft_config_encode(&ad, "some/base", &config, err, sizeof err) == 0, "%s", err);
    CHECK(strstr(config, "\"r\": 4") && strstr(config, "\"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]") &&
              strstr(config, "\"base_model_name_or_path\": \"some/base\"") && strstr(config, "\"bias\": \"none\""),
          "config: %s", config);

    /* the export imports back bit-exact (q and k rows go through HF's order and back) */
    CHECK(peft_import(config, strlen(config), st, st_len, &cfg, &back, &fp, err, sizeof err) == 0, "%s", err);
    CHECK(fp == 0xfeed && back.n_params == ad.n_params && back.rank == 4 && back.alpha == 8 &&
              back.targets == ad.targets && back.dropout == 0.05f &&
              !memcmp(back.params, ad.params, ad.n_params * sizeof(float)), "round trip differs");
    llama_lora_free(&back);
    test_case("PEFT export -> import bit-exact, config fields");

    snapshot before, after;
    CHECK(take_snapshot(s, &before) == 0, "snapshot");
    const unsigned char *img = st;
    const char *q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    char q_a_offsets[64], q_b_offsets[64], q_a_same[64];
    size_t a_bytes = 4 * 64 * 4;
    snprintf(q_a_offsets, sizeof q_a_offsets, "\"data_offsets\":[0,%zu]", a_bytes);
    snprintf(q_b_offsets, sizeof q_b_offsets, "\"data_offsets\":[%zu,%zu]", a_bytes, 2 * a_bytes);
    snprintf(q_a_same, sizeof q_a_same, "\"data_offsets\":[0,%zu]", a_bytes);
    uint64_t hl;
    memcpy(&hl, img, 8);
    const char *good = config;
    struct {
        const char *what, *cfg, *from, *to, *expect;
        int cut, poison, huge_header;
    } cases[] = {
        {"config not JSON", "{\"r\": 4,", NULL, NULL, "adapter_config.json", 0, 0, 0},
        {"config without r", "{\"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}", NULL, NULL, "r must be", 0, 0, 0},
        {"config r a string", "{\"r\": \"4\", \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}", NULL, NULL,
         "r must be", 0, 0, 0},
        {"config unknown target", "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", \"lm_head\"]}",
         NULL, NULL, "lm_head", 0, 0, 0},
        {"config peft_type", "{\"peft_type\": \"IA3\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q\"]}",
         NULL, NULL, "peft_type", 0, 0, 0},
        {"config bias", "{\"bias\": \"all\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q\"]}", NULL,
         NULL, "bias", 0, 0, 0},
        {"config rank disagrees with metadata",
         "{\"r\": 2, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", NULL, NULL,
         "__metadata__ r", 0, 0, 0},
        {"config lora_dropout 1", "{\"r\": 4, \"lora_alpha\": 8, \"lora_dropout\": 1, \"target_modules\": [\"q\"]}",
         NULL, NULL, "lora_dropout", 0, 0, 0},
        {"header length past the end", NULL, NULL, NULL, "header length", 0, 0, 1},
        {"truncated data", NULL, NULL, NULL, "outside the file", 4, 0, 0},
        {"unknown dtype", NULL, "\"dtype\":\"F32\"", "\"dtype\":\"I8\"", "unsupported dtype", 0, 0, 0},
        {"offsets disagree with shape", NULL, q_a_offsets, "\"data_offsets\":[0,12]", "disagree", 0, 0, 0},
        {"overlapping tensors", NULL, q_b_offsets, q_a_same, "overlap", 0, 0, 0},
        {"missing tensor", NULL, "q_proj.lora_A", "q_proj.lora_X", q_a, 0, 0, 0},
        /* without our __metadata__ (as PEFT writes them), the config alone says what to expect */
        {"extra tensor", "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", \"k_proj\"]}",
         "\"r\":\"4\",", "", "unexpected tensor", 0, 0, 0},
        {"NaN value", NULL, NULL, NULL, "non-finite", 0, 1, 0},
        {"Inf value", NULL, NULL, NULL, "non-finite", 0, 2, 0},
    };
    int refused = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char *bad = NULL;
        size_t bad_len = st_len;
        if (cases[i].from) {
            bad = edit_header(img, st_len, cases[i].from, cases[i].to, &bad_len);
        } else {
            bad = malloc(st_len);
            memcpy(bad, img, st_len);
            bad_len -= (size_t)cases[i].cut;
            if (cases[i].huge_header) {
                uint64_t h = st_len;
                memcpy(bad, &h, 8);
            }
            if (cases[i].poison) /* the last value of the last tensor */
                memcpy(bad + st_len - 4, &(float){cases[i].poison == 1 ? NAN : INFINITY}, 4);
        }
        const char *c = cases[i].cfg ? cases[i].cfg : good;
        err[0] = 0;
        int rc = peft_import(c, strlen(c), bad, bad_len, &cfg, &back, &fp, err, sizeof err);
        if (rc == 0) {
            /* what a daemon would do next: publish it. It must not get here. */
            store_adapter_info info = info_for("imported", 0);
            store_adapter_put(s, &info, &back, NULL, NULL, err, sizeof err);
            llama_lora_free(&back);
        }
        int names_file = strstr(err, "adapter_config.json") || strstr(err, "adapter_model.safetensors");
        CHECK(rc < 0 && strstr(err, cases[i].expect) && names_file, "%s: rc %d, message '%s'", cases[i].what, rc, err);
        CHECK(back.params == NULL, "%s: adapter left allocated", cases[i].what);
        refused += rc < 0;
        printf("# %s: %s\n", cases[i].what, err);
        free(bad);
    }
    CHECK(take_snapshot(s, &after) == 0 && same_snapshot(&before, &after), "store changed");
    /* another model shape */
    llama_config other = cfg;
    other.dim = 128;
    other.head_size = 32;
    other.kv_dim = 64;
    other.q_dim = 128;
    CHECK(peft_import(config, strlen(config), st, st_len, &other, &back, &fp, err, sizeof err) < 0 &&
              strstr(err, q_a) && strstr(err, "shape"), "other shape: %s", err);
    test_case("PEFT import refuses %d malformed inputs, naming the file (and tensor); store unchanged", refused);
    free(st);
    free(config);
    llama_lora_free(&ad);
    store_close(s);
    remove_dir(dir);
}

/* ---- files ---- */

static void test_files(void)
{
    char dir[128], err[512], id[STORE_FILE_ID_LEN + 1];
    tmp_dir(dir, sizeof dir, "files");
    store *s = open_or_bail(dir, 0);
    /* SHA-256("abc"), FIPS 180-2 appendix B.1 */
    store_file_id("abc", 3, id);
    CHECK(!strcmp(id, "file-ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "%s", id);
    CHECK(store_file_id_valid(id) && !store_file_id_valid("file-BA78") && !store_file_id_valid("../x") &&
              !store_file_id_valid("file-ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015aZ"),
          "id syntax");
    size_t big_len = (size_t)3 << 20; /* overflow pages, and the map grows for it */
    char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)(value_of(9, i) * 1000);
    store_file_info a, b, got;
    int existed, nf, deleted;
    CHECK(store_file_put(s, big, big_len, "train.txt", "fine-tune", &a, &existed, err, sizeof err) == 0 && !existed,
          "%s", err);
    CHECK(store_file_put(s, big, big_len, "again.txt", "other", &b, &existed, err, sizeof err) == 0 && existed,
          "a second put of the same bytes stored them again");
    CHECK(!strcmp(a.id, b.id) && !strcmp(b.filename, "train.txt") && b.created_at == a.created_at,
          "the first put's record stays");
    CHECK(store_file_put(s, "abc", 3, "", "tokens", &b, &existed, err, sizeof err) == 0 && !strcmp(b.id, id), "%s", err);
    store_close(s);
    s = open_or_bail(dir, 0);
    void *data;
    size_t len;
    CHECK(store_file_get(s, a.id, &got, &data, &len, &nf, err, sizeof err) == 0, "%s", err);
    CHECK(len == big_len && !memcmp(data, big, len) && got.bytes == big_len && !strcmp(got.purpose, "fine-tune") &&
              !strcmp(got.filename, "train.txt"), "bytes or record differ");
    free(data);
    store_file_info *list;
    size_t n;
    CHECK(store_file_list(s, &list, &n, err, sizeof err) == 0 && n == 2, "list: %zu", n);
    CHECK(n == 2 && strcmp(list[0].id, list[1].id) < 0, "list in id order");
    free(list);
    CHECK(store_file_delete(s, id, &deleted, err, sizeof err) == 0 && deleted == 1, "%s", err);
    CHECK(store_file_delete(s, id, &deleted, err, sizeof err) == 0 && deleted == 0, "deleted twice");
    CHECK(store_file_get(s, id, &got, NULL, NULL, &nf, err, sizeof err) < 0 && nf, "get after delete");
    CHECK(store_file_get(s, "../etc", &got, NULL, NULL, &nf, err, sizeof err) < 0 && !nf, "bad id accepted");
    store_close(s);
    free(big);
    remove_dir(dir);
    test_case("files: content-addressed by SHA-256, stored once, 3 MiB round trip, list in id order, delete");
}

static void test_job_delete(void)
{
    char dir[128], err[512];
    tmp_dir(dir, sizeof dir, "jobdel");
    store *s = open_or_bail(dir, 0);
    int nf;
    void *p;
    size_t len;
    CHECK(store_job_put(s, 5, "rec", 3, err, sizeof err) == 0, "%s", err);
    CHECK(store_checkpoint_put(s, 5, "state", 5, NULL, 0, err, sizeof err) == 0, "%s", err);
    CHECK(store_job_put(s, 6, "other", 5, err, sizeof err) == 0, "%s", err);
    CHECK(store_job_delete(s, 5, &nf, err, sizeof err) == 0, "%s", err);
    CHECK(store_job_get(s, 5, &p, &len, &nf, err, sizeof err) < 0 && nf, "record left");
    CHECK(store_checkpoint_get(s, 5, &p, &len, &nf, err, sizeof err) < 0 && nf, "checkpoint left");
    CHECK(store_job_get(s, 6, &p, &len, &nf, err, sizeof err) == 0 && len == 5, "another job went too");
    free(p);
    CHECK(store_job_delete(s, 5, &nf, err, sizeof err) < 0 && nf, "deleted twice");
    store_close(s);
    remove_dir(dir);
    test_case("job delete: the record and its checkpoint in one transaction, other jobs untouched");
}

int main(void)
{
    test_names();
    test_round_trip();
    test_versions();
    test_jobs();
    test_store_full();
    test_crash();
    test_threads();
    test_two_processes();
    test_private();
    test_lock();
    test_peft_import();
    test_files();
    test_job_delete();
    return tap_done();
}
