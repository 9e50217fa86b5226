/* test_model_cache.c: the model cache (llama_load_cached, model/model_cache.c). A cached
 * load gives the uncached load's fingerprint, arrays and logits bit for bit, in every kind
 * of format; a stale source, a truncated or corrupt file, another version are refused with
 * a log line naming the file, and rebuilt; an unwritable cache dir costs only the cache.
 * argv[1] is the shared directory, argv[2] a scratch directory (created if missing). */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "forward.h"
#include "model.h"
#include "tap.h"

static char shared[4096], scratch[4096];
static char logbuf[16384];

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", line);
}

static llama_model_cache cache_in(const char *dir)
{
    llama_model_cache c;
    memset(&c, 0, sizeof c);
    c.dir = dir;
    c.log = log_line;
    return c;
}

static int load_cached(llama_model *m, const char *model, qt_spec spec, llama_model_cache *c)
{
    char err[1024];
    logbuf[0] = 0;
    if (llama_load_cached(m, model, spec, c, err, sizeof err) < 0) {
        printf("# %s: %s\n", model, err);
        return -1;
    }
    return 0;
}

static int same_matrix(const qt_matrix *a, const qt_matrix *b)
{
    size_t bytes[QT_NARRAYS];
    char err[256];
    if (memcmp(&a->spec, &b->spec, sizeof a->spec) || a->rows != b->rows || a->cols != b->cols ||
        a->row_bytes != b->row_bytes || a->blocks_per_row != b->blocks_per_row ||
        memcmp(&a->offset, &b->offset, sizeof a->offset) ||
        qt_array_sizes(a->spec, a->rows, a->cols, bytes, err, sizeof err) < 0)
        return 0;
    for (int k = 0; k < QT_NARRAYS; k++) {
        const void *x = qt_array_of(a, (qt_array)k), *y = qt_array_of(b, (qt_array)k);
        if (!x != !y || (bytes[k] && (!x || memcmp(x, y, bytes[k]))))
            return 0;
    }
    return 1;
}

static int same_vector(const float *a, const float *b, size_t n)
{
    return !a == !b && (!a || !memcmp(a, b, n * sizeof(float)));
}

/* Every array of a and b, bit for bit, and the fingerprint. */
static int same_model(const llama_model *a, const llama_model *b)
{
    const llama_config *c = &a->cfg;
    int ok = a->fingerprint == b->fingerprint && !memcmp(&a->cfg, &b->cfg, sizeof a->cfg) && a->tied == b->tied &&
             same_matrix(&a->embed, &b->embed) && (a->tied || same_matrix(&a->head, &b->head)) &&
             same_vector(a->rms_final, b->rms_final, c->dim) &&
             same_vector(a->rope_cos, b->rope_cos, (size_t)c->seq_len * c->head_size / 2) &&
             same_vector(a->rope_sin, b->rope_sin, (size_t)c->seq_len * c->head_size / 2);
    for (int l = 0; l < c->n_layers && ok; l++) {
        const llama_layer *x = &a->layers[l], *y = &b->layers[l];
        ok = same_vector(x->rms_att, y->rms_att, c->dim) && same_vector(x->rms_ffn, y->rms_ffn, c->dim) &&
             same_vector(x->q_norm, y->q_norm, c->head_size) && same_vector(x->k_norm, y->k_norm, c->head_size);
        for (int k = 0; k < LIN_COUNT && ok; k++) {
            int rows, cols;
            llama_linear_shape(c, (llama_linear)k, &rows, &cols);
            ok = same_matrix(&x->lin[k], &y->lin[k]) && same_vector(x->bias[k], y->bias[k], (size_t)rows);
        }
    }
    return ok;
}

/* The logits of a forward pass over 8 tokens, into out (8 x vocab). */
static int logits(const llama_model *m, float *out)
{
    const int tokens[8] = {1, 403, 407, 261, 378, 432, 383, 286};
    llama_acts a;
    llama_cache kv;
    if (llama_cache_alloc(&kv, &m->cfg, 1, 8) < 0)
        return -1;
    if (llama_acts_alloc(&a, &m->cfg, 1, 8, 8, 0, 0) < 0) {
        llama_cache_free(&kv);
        return -1;
    }
    int rc = llama_forward(m, NULL, &a, &kv, tokens, 1, 8, 0, LLAMA_INFER);
    if (rc == 0)
        memcpy(out, a.logits, (size_t)8 * m->cfg.vocab_size * sizeof(float));
    llama_acts_free(&a);
    llama_cache_free(&kv);
    return rc;
}

/* Uncached, then built, then from the cache: identical throughout. */
static void test_roundtrip(const char *name, qt_spec spec, const char *cache_dir)
{
    char dir[4300], err[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", shared, name);
    llama_model plain, built, cached;
    int ok = llama_load(&plain, dir, spec, err, sizeof err) == 0;
    CHECK(ok, "%s", err);
    llama_model_cache c = cache_in(cache_dir);
    if (ok) {
        ok = load_cached(&built, dir, spec, &c) == 0;
        CHECK(ok && c.state == LLAMA_CACHE_BUILT, "first cached load built the file (state %d): %s", c.state, logbuf);
        if (ok) {
            CHECK(same_model(&plain, &built), "the model that built the cache is the uncached one");
            llama_free(&built);
        }
    }
    if (ok) {
        ok = load_cached(&cached, dir, spec, &c) == 0;
        CHECK(ok && c.state == LLAMA_CACHE_HIT, "second load mapped the cache (state %d): %s", c.state, logbuf);
    }
    if (ok) {
        CHECK(cached.cache_map != NULL && cached.embed.borrowed && cached.layers[0].lin[LIN_Q].borrowed,
              "the matrices borrow from the mapping");
        CHECK((uintptr_t)cached.layers[0].lin[LIN_DOWN].data % 64 == 0, "data 64-byte aligned");
        CHECK(same_model(&plain, &cached), "fingerprint %016llx / %016llx and every array bit for bit",
              (unsigned long long)plain.fingerprint, (unsigned long long)cached.fingerprint);
        size_t n = (size_t)8 * plain.cfg.vocab_size;
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        CHECK(x && y && logits(&plain, x) == 0 && logits(&cached, y) == 0 && !memcmp(x, y, n * sizeof(float)),
              "identical logits");
        free(x);
        free(y);
        llama_free(&cached);
    }
    if (plain.layers)
        llama_free(&plain);
    test_case("%s %s (block %d%s): cached load = uncached load (fingerprint, arrays, logits)", name,
              qt_format_name(spec.format), spec.block, spec.double_quant ? ", double quant" : "");
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int ok = a && b;
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a)
        fclose(a);
    if (b && fclose(b) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = len > 0 ? malloc((size_t)len) : NULL;
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int write_file(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f && fclose(f) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

/* A load after the cache file was replaced by bad: refused with a line naming the file,
 * rebuilt, and the model still the uncached one. */
static void expect_refused(const char *model, qt_spec spec, const char *cache_dir, const llama_model *plain,
                           const char *what, const char *needle)
{
    llama_model m;
    llama_model_cache c = cache_in(cache_dir);
    int ok = load_cached(&m, model, spec, &c) == 0;
    CHECK(ok, "the load succeeds");
    if (ok) {
        CHECK(c.state == LLAMA_CACHE_BUILT, "rebuilt (state %d)", c.state);
        CHECK(strstr(logbuf, c.path) && strstr(logbuf, "refused") && strstr(logbuf, needle),
              "log names the file and '%s': %s", needle, logbuf);
        CHECK(same_model(plain, &m), "the model is the uncached one");
        llama_free(&m);
    }
    test_case("%s: refused (%s) and rebuilt", what, needle);
}

static void test_damage(const char *cache_dir)
{
    char model[4300], err[1024];
    snprintf(model, sizeof model, "%s/models/stories260K-hf", shared);
    qt_spec spec = qt_spec_default(QT_NF4);
    llama_model plain, m;
    if (llama_load(&plain, model, spec, err, sizeof err) < 0) {
        CHECK(0, "%s", err);
        test_case("damaged cache files");
        return;
    }
    llama_model_cache c = cache_in(cache_dir);
    int ok = load_cached(&m, model, spec, &c) == 0;
    if (ok)
        llama_free(&m);
    size_t n = 0;
    unsigned char *good = ok ? read_file(c.path, &n) : NULL;
    CHECK(good && n > 256, "the cache file %s was written", c.path);
    if (!good) {
        llama_free(&plain);
        test_case("damaged cache files");
        return;
    }
    uint64_t payload;
    memcpy(&payload, good + 88, sizeof payload); /* header.payload_off */
    const size_t cuts[] = {0, 7, 64, 127, 128, 200, (size_t)payload - 1, (size_t)payload, n / 2, n - 64, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "truncated at byte %zu of %zu", cuts[i], n);
        CHECK(write_file(c.path, good, cuts[i]) == 0, "write");
        expect_refused(model, spec, cache_dir, &plain, what, cuts[i] < 128 ? "truncated" : "truncated or extended");
    }
    unsigned char *bad = malloc(n);
    const struct {
        size_t at;
        unsigned char xor;
        const char *what, *needle;
    } flips[] = {
        {0, 0x20, "magic", "bad magic"},
        {32, 0x01, "cache format version", "cache format 0, quant layout"},
        {40, 0x01, "file size in the header", "truncated or extended"},
        {130, 0x10, "a key byte", "header checksum"},
        {(size_t)payload, 0x01, "the first payload byte", "payload checksum"},
        {(size_t)payload + (n - (size_t)payload) / 2, 0x80, "a payload byte in the middle", "payload checksum"},
        {n - 1, 0x04, "the last (padding) byte", "payload checksum"},
    };
    for (size_t i = 0; bad && i < sizeof flips / sizeof flips[0]; i++) {
        memcpy(bad, good, n);
        bad[flips[i].at] ^= flips[i].xor;
        CHECK(write_file(c.path, bad, n) == 0, "write");
        expect_refused(model, spec, cache_dir, &plain, flips[i].what, flips[i].needle);
    }
    free(bad);
    free(good);
    llama_free(&plain);
}

/* A source changed after the cache was built: stale, rebuilt, the new weights. */
static void test_stale(const char *cache_dir)
{
    char src[4300], dst[4400], dir[4300], st[4400], err[1024];
    snprintf(dir, sizeof dir, "%s/src260K", scratch);
    mkdir(dir, 0755);
    int ok = 1;
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/models/stories260K-hf/%s", shared, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        ok = ok && copy_file(src, dst) == 0;
    }
    CHECK(ok, "copy stories260K-hf");
    qt_spec spec = qt_spec_default(QT_INT8);
    llama_model m, plain;
    llama_model_cache c = cache_in(cache_dir);
    ok = ok && load_cached(&m, dir, spec, &c) == 0 && c.state == LLAMA_CACHE_BUILT;
    if (ok)
        llama_free(&m);
    ok = ok && load_cached(&m, dir, spec, &c) == 0 && c.state == LLAMA_CACHE_HIT;
    CHECK(ok, "built, then a hit");
    uint64_t before = ok ? m.fingerprint : 0;
    if (ok)
        llama_free(&m);
    /* touched: the same bytes, another mtime */
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    struct timespec t[2] = {{0, UTIME_OMIT}, {1234567890, 5}};
    CHECK(utimensat(AT_FDCWD, st, t, 0) == 0, "utimensat");
    ok = load_cached(&m, dir, spec, &c) == 0;
    CHECK(ok && c.state == LLAMA_CACHE_BUILT && strstr(logbuf, "stale"), "touched: stale, rebuilt (state %d): %s",
          c.state, logbuf);
    CHECK(ok && m.fingerprint == before, "the same weights");
    if (ok)
        llama_free(&m);
    test_case("a touched source file makes the cache stale: rebuilt");
    /* modified: the last weight of the file changed (the final norm's, in safetensors'
     * sorted order), at the same size */
    size_t n;
    unsigned char *b = read_file(st, &n);
    ok = b != NULL;
    if (ok) {
        float v;
        memcpy(&v, b + n - 4, 4);
        v += 0.5f;
        memcpy(b + n - 4, &v, 4);
        ok = write_file(st, b, n) == 0;
    }
    free(b);
    ok = ok && load_cached(&m, dir, spec, &c) == 0;
    CHECK(ok && c.state == LLAMA_CACHE_BUILT && strstr(logbuf, "stale"), "modified: stale, rebuilt (state %d): %s",
          c.state, logbuf);
    if (ok) {
        CHECK(m.fingerprint != before, "new weights, new fingerprint");
        CHECK(llama_load(&plain, dir, spec, err, sizeof err) == 0, "%s", err);
        CHECK(same_model(&plain, &m), "the rebuilt model is the uncached load of the new file");
        llama_free(&plain);
        llama_free(&m);
    }
    test_case("a modified source file makes the cache stale: rebuilt with the new weights");
}

static void test_unwritable(void)
{
    char model[4300], file[4300], dir[4400];
    snprintf(model, sizeof model, "%s/models/stories260K", shared);
    snprintf(file, sizeof file, "%s/a-file", scratch);
    snprintf(dir, sizeof dir, "%s/cache", file); /* under a regular file: never creatable */
    FILE *f = fopen(file, "w");
    CHECK(f != NULL, "create %s", file);
    if (f)
        fclose(f);
    llama_model m;
    llama_model_cache c = cache_in(dir);
    int ok = load_cached(&m, model, qt_spec_default(QT_NF4), &c) == 0;
    CHECK(ok && c.state == LLAMA_CACHE_UNWRITTEN && strstr(logbuf, "not written"), "state %d: %s", c.state, logbuf);
    if (ok)
        llama_free(&m);
    c = cache_in(NULL);
    ok = load_cached(&m, model, qt_spec_default(QT_NF4), &c) == 0;
    CHECK(ok && c.state == LLAMA_CACHE_OFF && !c.path[0] && !logbuf[0], "no dir: no cache (state %d)", c.state);
    if (ok)
        llama_free(&m);
    test_case("a cache dir that cannot be created: the load succeeds, with a warning; none: no cache");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test_model_cache SHARED_DIR SCRATCH_DIR\n");
        return 2;
    }
    snprintf(shared, sizeof shared, "%s", argv[1]);
    snprintf(scratch, sizeof scratch, "%s/run-XXXXXX", argv[2]);
    mkdir(argv[2], 0755);
    if (!mkdtemp(scratch)) {
        perror(scratch);
        return 1;
    }
    char cache_dir[4200];
    snprintf(cache_dir, sizeof cache_dir, "%s/cache/deeper", scratch);

    qt_spec nf4_plain = qt_spec_default(QT_NF4);
    nf4_plain.double_quant = 0;
    qt_spec int4_b32 = qt_spec_default(QT_INT4);
    int4_b32.block = 32;
    const struct {
        const char *model;
        qt_spec spec;
    } cases[] = {
        {"tinystories6M", qt_spec_default(QT_NF4)},
        {"tinystories6M", nf4_plain},
        {"tinystories6M", qt_spec_default(QT_INT8)},
        {"tinystories6M", int4_b32},
        {"tinystories6M", qt_spec_default(QT_TERNARY)},
        {"tinystories6M", qt_spec_default(QT_BITNET1)},
        {"tinystories6M", qt_spec_default(QT_Q4_0)}, /* ggml's: dim 288 takes 32-blocks, not q4_k's 256 */
        {"tinystories6M", qt_spec_default(QT_Q8_0)},
        {"tinystories6M-hf", qt_spec_default(QT_FP4)},
        {"stories260K-hf", qt_spec_default(QT_F32)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_roundtrip(cases[i].model, cases[i].spec, cache_dir);
    test_damage(cache_dir);
    test_stale(cache_dir);
    test_unwritable();
    int rc = tap_done();
    if (rc == 0) /* a failed run leaves its files to look at */
        nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
