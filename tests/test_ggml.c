/* test_ggml.c: ggml's tensor types against ggml itself: libggml-base.so of the llama.cpp
 * build in .deps/llama (scripts/setup.sh), loaded at run time so that the suite builds
 * without it but fails, by name, when it is missing. Decoding is compared bit for bit
 * with ggml's dequantize_row_* on every instruction set, quantization byte for byte with
 * ggml_quantize_chunk; then borrowed memory and the refusals.
 *
 * usage: test_ggml LIBDIR (the folder of libggml-base.so) */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quant.h"
#include "tap.h"

/* ---- ggml's functions (ggml.h, ggml-quants.h; enum ggml_type passed as int) ---- */

typedef void (*dequantize_fn)(const void *x, float *y, int64_t k);
static struct {
    size_t (*quantize_chunk)(int type, const float *src, void *dst, int64_t start, int64_t nrows,
                             int64_t n_per_row, const float *imatrix);
    size_t (*row_size)(int type, int64_t ne);
    int64_t (*blck_size)(int type);
    const char *(*type_name)(int type);
    dequantize_fn dequantize[31]; /* by type; F16 and BF16 through their _row converters */
} gg;

static const char *const dequantize_names[31] = {
    [QT_GGML_F16] = "ggml_fp16_to_fp32_row", [QT_GGML_BF16] = "ggml_bf16_to_fp32_row",
    [QT_GGML_Q8_0] = "dequantize_row_q8_0", [QT_GGML_Q4_0] = "dequantize_row_q4_0",
    [QT_GGML_Q4_1] = "dequantize_row_q4_1", [QT_GGML_Q5_0] = "dequantize_row_q5_0",
    [QT_GGML_Q5_1] = "dequantize_row_q5_1", [QT_GGML_Q4_K] = "dequantize_row_q4_K",
    [QT_GGML_Q5_K] = "dequantize_row_q5_K", [QT_GGML_Q6_K] = "dequantize_row_q6_K",
};

/* The types under test besides F32, in a fixed order. */
static const int types[] = {QT_GGML_F16, QT_GGML_BF16, QT_GGML_Q8_0, QT_GGML_Q4_0, QT_GGML_Q4_1,
                            QT_GGML_Q5_0, QT_GGML_Q5_1, QT_GGML_Q4_K, QT_GGML_Q5_K, QT_GGML_Q6_K};
#define NTYPES (int)(sizeof types / sizeof types[0])

static int load_ggml(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/libggml-base.so", dir);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("# %s\n", dlerror());
        return -1;
    }
    int ok = 1;
#define SYM(field, name) ok &= (*(void **)&gg.field = dlsym(h, name)) != NULL
    SYM(quantize_chunk, "ggml_quantize_chunk");
    SYM(row_size, "ggml_row_size");
    SYM(blck_size, "ggml_blck_size");
    SYM(type_name, "ggml_type_name");
    for (int i = 0; i < NTYPES; i++)
        SYM(dequantize[types[i]], dequantize_names[types[i]]);
#undef SYM
    return ok ? 0 : -1;
}

/* ---- data ---- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

static double uniform(void) { return ((next() >> 11) + 0.5) / 9007199254740992.0; }

static float gaussian(void)
{
    return (float)(sqrt(-2 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

static int bytes_of(int type) /* of a block */
{
    return (int)qt_ggml_row_bytes(type, (int)gg.blck_size(type));
}

/* fp16 values a block's scale fields take in the random blocks: zeros, the smallest and
 * largest subnormals and normals of both signs, one, else random finite; or with
 * `special` infinities and NaNs. Only one field of a block is made special: where two
 * NaNs meet in an addition, which one's payload comes out is the compiler's choice
 * (IEEE 754 leaves it open), and ggml's build and ours choose differently. */
static uint16_t scale_field(int special)
{
    static const uint16_t extreme[] = {0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff,
                                       0x3c00, 0xbc00, 0x1000, 0x5800};
    static const uint16_t specials[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xfe3f};
    uint64_t r = next();
    if (special)
        return specials[r % 5];
    if (r % 3 == 0)
        return extreme[(r >> 8) % (sizeof extreme / sizeof extreme[0])];
    uint16_t h = (uint16_t)(r >> 16);
    return (h & 0x7c00) == 0x7c00 ? (uint16_t)(h & 0xbfff) : h; /* finite */
}

/* Random blocks of a type, with its fp16 fields from scale_field. */
static void random_blocks(int type, int rows, int cols, uint8_t *data)
{
    const int values = (int)gg.blck_size(type), bytes = bytes_of(type);
    const size_t row_bytes = qt_ggml_row_bytes(type, cols);
    for (size_t i = 0; i < rows * row_bytes; i++)
        data[i] = (uint8_t)(next() >> 24);
    /* where each block keeps fp16 fields: offsets, and how many */
    int at = 0, n = 0;
    switch (type) {
    case QT_GGML_Q8_0: case QT_GGML_Q4_0: case QT_GGML_Q5_0: n = 1; break;
    case QT_GGML_Q4_1: case QT_GGML_Q5_1: case QT_GGML_Q4_K: case QT_GGML_Q5_K: n = 2; break;
    case QT_GGML_Q6_K: at = 208, n = 1; break;
    default: /* F16: every value; BF16: the random bits stand */
        n = type == QT_GGML_F16 ? 1 : 0;
        break;
    }
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < cols / values; b++)
            for (int i = 0; i < n; i++) {
                uint16_t h = scale_field(r >= rows - 2 && i == r % n); /* the last rows */
                memcpy(data + r * row_bytes + (size_t)b * bytes + at + 2 * i, &h, 2);
            }
}

/* Values to quantize: case 0 Gaussian, 1 outlier-heavy (1 in 50 values 100 times larger),
 * 2 blocks of mixed magnitudes 1e-6..1e3 (with all-zero, constant and tiny blocks), 3
 * integers -8..8 (ties of every rounding). */
static void quant_input(int which, int rows, int cols, float *x)
{
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) {
            float *v = x + (size_t)r * cols + k;
            int blk = (r * cols + k) / 32;
            switch (which) {
            case 0: *v = gaussian(); break;
            case 1: *v = next() % 50 == 0 ? 100 * gaussian() : gaussian(); break;
            case 2:
                switch (blk % 8) {
                case 0: *v = 0; break;
                case 1: *v = 0.37f; break;
                case 2: *v = 1e-20f * gaussian(); break; /* under GROUP_MAX_EPS */
                default: *v = (float)pow(10, blk % 10 - 6) * gaussian(); break;
                }
                break;
            default: *v = (float)((int)(next() % 17) - 8) * (blk % 2 ? 0.5f : 1.0f); break;
            }
        }
}

/* ---- tests ---- */

static void test_type_table(void)
{
    for (int i = 0; i < NTYPES; i++) {
        int t = types[i];
        int64_t values = gg.blck_size(t);
        CHECK(qt_ggml_row_bytes(t, (int)values * 3) == gg.row_size(t, values * 3),
              "%s: row bytes %zu, ggml %zu", qt_ggml_type_name(t), qt_ggml_row_bytes(t, (int)values * 3),
              gg.row_size(t, values * 3));
        CHECK(qt_ggml_type_name(t) && strcasecmp(qt_ggml_type_name(t), gg.type_name(t)) == 0,
              "type %d: name %s, ggml's %s", t, qt_ggml_type_name(t), gg.type_name(t));
        if (values > 1)
            CHECK(qt_ggml_row_bytes(t, (int)values + 16) == 0, "%s: a partial block has bytes",
                  qt_ggml_type_name(t));
        qt_format f;
        CHECK(qt_format_parse(qt_format_name((qt_format)qt_ggml_format(t)), &f) == 0 &&
                  (int)f == qt_ggml_format(t), "type %d: format name", t);
    }
    CHECK(qt_ggml_row_bytes(QT_GGML_F32, 7) == 28 && qt_ggml_format(QT_GGML_F32) == QT_F32, "F32");
    CHECK(qt_ggml_type_name(10) == NULL && qt_ggml_row_bytes(10, 256) == 0, "Q2_K is not run");
    CHECK(qt_ggml_type_name(4) == NULL && qt_ggml_type_name(-1) == NULL && qt_ggml_type_name(43) == NULL,
          "unknown types have names");
    test_case("type table: ids, names and row sizes as ggml has them");
}

/* Decodes data (a rows x cols tensor of type) with qt_from_ggml on every instruction set
 * and compares the bits with ggml's; returns the values that differ. */
static long decode_against_ggml(int type, int rows, int cols, const uint8_t *data, const char *what)
{
    size_t n = (size_t)rows * cols, row_bytes = qt_ggml_row_bytes(type, cols);
    float *want = malloc(n * 4), *got = malloc(n * 4);
    long bad = 0;
    for (int r = 0; r < rows; r++)
        gg.dequantize[type](data + r * row_bytes, want + (size_t)r * cols, cols);
    qt_matrix m;
    char err[256];
    CHECK(qt_from_ggml(&m, type, rows, cols, data, rows * row_bytes, 1, err, sizeof err) == 0, "%s", err);
    for (int isa = QT_ISA_SCALAR; isa <= (int)qt_isa_best(); isa++) {
        qt_isa_set((qt_isa)isa);
        memset(got, 0xAB, n * 4);
        qt_dequantize_rows(&m, 0, rows, got);
        for (size_t i = 0; i < n; i++)
            if (memcmp(got + i, want + i, 4) != 0 && bad++ < 3) {
                uint32_t a, b;
                memcpy(&a, got + i, 4), memcpy(&b, want + i, 4);
                printf("# %s %s %s: row %zu value %zu: %.9g (%08x), ggml %.9g (%08x)\n",
                       qt_ggml_type_name(type), what, qt_isa_name(isa), i / cols, i % cols, got[i], a,
                       want[i], b);
            }
    }
    qt_isa_set(qt_isa_best());
    qt_free(&m);
    free(want), free(got);
    return bad;
}

static void test_decode_random(void)
{
    for (int i = 0; i < NTYPES; i++) {
        int t = types[i];
        const int values = (int)gg.blck_size(t);
        const int rows = 24, cols = values == 1 ? 1000 : values * (values == 32 ? 20 : 3);
        uint8_t *data = malloc(rows * qt_ggml_row_bytes(t, cols));
        random_blocks(t, rows, cols, data);
        long bad = decode_against_ggml(t, rows, cols, data, "random blocks");
        CHECK(bad == 0, "%ld values differ", bad);
        free(data);
        test_case("%s: random blocks (extreme, infinite and NaN scales) decode as ggml's, bit for "
                  "bit, scalar..%s", qt_ggml_type_name(t), qt_isa_name(qt_isa_best()));
    }
    /* every fp16 and every bf16 bit pattern */
    uint16_t *all = malloc(65536 * 2);
    for (int v = 0; v < 65536; v++)
        all[v] = (uint16_t)v;
    long bad = decode_against_ggml(QT_GGML_F16, 256, 256, (const uint8_t *)all, "every value");
    bad += decode_against_ggml(QT_GGML_BF16, 256, 256, (const uint8_t *)all, "every value");
    CHECK(bad == 0, "%ld values differ", bad);
    free(all);
    test_case("F16, BF16: all 65536 bit patterns decode as ggml's");
}

static void test_quantize_as_ggml(void)
{
    static const char *const inputs[] = {"Gaussian", "outliers", "mixed magnitudes", "integers"};
    for (int i = 0; i < NTYPES; i++) {
        int t = types[i];
        const int values = (int)gg.blck_size(t), rows = 12, cols = values == 1 ? 480 : values == 32 ? 640 : 768;
        const size_t row_bytes = qt_ggml_row_bytes(t, cols), n = (size_t)rows * cols;
        float *x = malloc(n * 4);
        uint8_t *want = malloc(rows * row_bytes);
        long bad_bytes = 0, bad_values = 0;
        for (int which = 0; which < 4; which++) {
            quant_input(which, rows, cols, x);
            if (t == QT_GGML_F16 || t == QT_GGML_BF16) /* every magnitude, halfway cases */
                for (size_t j = 0; j < n; j++)
                    x[j] = ldexpf(1.0f + (float)(next() % 4096) / 2048.0f, (int)(next() % 180) - 150) *
                           (next() & 1 ? -1.0f : 1.0f);
            size_t got_bytes = gg.quantize_chunk(t, x, want, 0, rows, cols, NULL);
            qt_matrix m;
            char err[256];
            CHECK(qt_quantize(&m, x, rows, cols, qt_spec_default((qt_format)qt_ggml_format(t)), err,
                              sizeof err) == 0, "%s", err);
            CHECK(got_bytes == rows * row_bytes && m.row_bytes == row_bytes, "sizes");
            for (size_t j = 0; j < rows * row_bytes; j++)
                if (m.data[j] != want[j] && bad_bytes++ < 3)
                    printf("# %s %s: byte %zu of block %zu: %02x, ggml %02x\n", qt_ggml_type_name(t),
                           inputs[which], j % bytes_of(t), j / bytes_of(t), m.data[j], want[j]);
            qt_free(&m);
            bad_values += decode_against_ggml(t, rows, cols, want, inputs[which]);
        }
        CHECK(bad_bytes == 0 && bad_values == 0, "%ld bytes, %ld decoded values differ", bad_bytes,
              bad_values);
        free(x), free(want);
        test_case("%s: qt_quantize writes ggml_quantize_chunk's bytes (Gaussian, outliers, "
                  "mixed magnitudes, integers), and decodes them as ggml", qt_ggml_type_name(t));
    }
}

static void test_borrowed(void)
{
    const int rows = 5, cols = 512, t = QT_GGML_Q4_K;
    const size_t len = rows * qt_ggml_row_bytes(t, cols);
    uint8_t *data = malloc(len), *copy = malloc(len);
    random_blocks(t, rows, cols, data);
    memcpy(copy, data, len);
    qt_matrix m;
    char err[256];
    CHECK(qt_from_ggml(&m, t, rows, cols, data, len, 1, err, sizeof err) == 0, "%s", err);
    CHECK(m.data == data && m.borrowed && m.spec.format == QT_Q4_K && m.spec.block == 256 &&
              m.blocks_per_row == 2 && qt_bytes(&m) == len, "borrowed matrix");
    CHECK(fabs(qt_bits_per_param(&m) - 4.5) < 1e-12, "Q4_K: %.4f bits/param", qt_bits_per_param(&m));
    qt_free(&m);
    CHECK(m.data == NULL && memcmp(data, copy, len) == 0, "qt_free touched borrowed data");
    CHECK(qt_from_ggml(&m, t, rows, cols, data, len, 0, err, sizeof err) == 0, "%s", err);
    CHECK(m.data != data && !m.borrowed && memcmp(m.data, data, len) == 0, "copied matrix");
    qt_free(&m); /* LeakSanitizer checks that the copy is freed */
    free(data); /* and ASan that qt_free did not free it first */
    free(copy);
    test_case("qt_from_ggml: borrowed data is used in place and left by qt_free; copies are owned");
}

static void test_refusals(void)
{
    static uint8_t buf[176 * 4];
    qt_matrix m;
    char err[256] = "";
    CHECK(qt_from_ggml(&m, QT_GGML_Q4_K, 2, 300, buf, sizeof buf, 1, err, sizeof err) < 0 &&
              strstr(err, "Q4_K") && strstr(err, "300") && strstr(err, "256"), "partial block: %s", err);
    CHECK(qt_from_ggml(&m, 10, 2, 256, buf, sizeof buf, 1, err, sizeof err) < 0 && strstr(err, "10"),
          "Q2_K: %s", err);
    CHECK(qt_from_ggml(&m, QT_GGML_Q5_K, 2, 256, buf, 100, 1, err, sizeof err) < 0 &&
              strstr(err, "Q5_K") && strstr(err, "352"), "short data: %s", err);
    CHECK(qt_from_ggml(&m, QT_GGML_Q8_0, 0, 32, buf, 0, 1, err, sizeof err) < 0, "no rows accepted");
    CHECK(qt_from_ggml(&m, QT_GGML_F32, 1, 4, buf + 1, 16, 1, err, sizeof err) < 0 && strstr(err, "aligned"),
          "unaligned F32: %s", err);
    float x[300] = {0};
    CHECK(qt_quantize(&m, x, 1, 300, qt_spec_default(QT_Q6_K), err, sizeof err) < 0 && strstr(err, "q6_k") &&
              strstr(err, "256"), "qt_quantize q6_k 300: %s", err);
    qt_spec s = {QT_Q8_0, 64, 0};
    CHECK(qt_spec_check(s, err, sizeof err) < 0 && strstr(err, "32"), "q8_0 block 64: %s", err);
    test_case("refused: partial blocks, types not run, short data, unaligned F32, other blocks");
}

int main(int argc, char **argv)
{
    if (argc != 2 || load_ggml(argv[1]) < 0) {
        printf("not ok 1 - ggml's libggml-base.so not loadable from %s: run `make setup` "
               "(scripts/setup.sh installs llama.cpp into .deps/llama)\n1..1\n", argc > 1 ? argv[1] : "?");
        return 1;
    }
    test_type_table();
    test_decode_random();
    test_quantize_as_ggml();
    test_borrowed();
    test_refusals();
    return tap_done();
}
