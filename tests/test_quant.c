/* test_quant.c: formats against brute-force references, and every vectorized kernel
 * against the scalar path and a double-precision product, on ragged shapes. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "procmem.h"
#include "parallel.h"
#include "quant.h"
#include "tap.h"
#include "workspace.h"

static uint64_t rng = 88172645463325252ull;

static double uniform(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}

static float gaussian(void)
{
    return (float)(sqrt(-2 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

static float *gaussian_matrix(size_t n, float sd)
{
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = sd * gaussian();
    return x;
}

/* ---- ggml's formats: defined by ggml, whose own code is their reference (test_ggml.c);
 * here they take part in every test of the kernels, on shapes of whole blocks ---- */

typedef struct {
    qt_format f;
    int values, bytes;
} ggml_row;

#define GGML_ROW_(format, name, id, values, bytes) {format, values, bytes},
static const ggml_row ggml_rows[] = {QT_GGML_TYPES(GGML_ROW_)};
#undef GGML_ROW_

/* ggml's block of a format (32 or 256) where it has one that spec.block must be, else 0. */
static int ggml_block(qt_format f)
{
    for (size_t i = 0; i < sizeof ggml_rows / sizeof ggml_rows[0]; i++)
        if (ggml_rows[i].f == f && ggml_rows[i].values > 1)
            return ggml_rows[i].values;
    return 0;
}

/* Columns for a test that wants about `cols`: whole blocks where the format needs them. */
static int fit_cols(qt_format f, int cols)
{
    int b = ggml_block(f);
    return b ? (cols + b - 1) / b * b : cols;
}

/* Whether the format is one of ggml's (QT_GGML_TYPES; not f32, which is qlorad's own). */
static int is_ggml(qt_format f)
{
    for (size_t i = 0; i < sizeof ggml_rows / sizeof ggml_rows[0]; i++)
        if (ggml_rows[i].f == f && f != QT_F32)
            return 1;
    return 0;
}

/* ---- brute-force references: argmin over whole tables, formulas written out ---- */

static int argmin_first(const float *table, int n, float x)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (fabsf(x - table[i]) < fabsf(x - table[best]))
            best = i;
    return best;
}

/* Returns -1 for a format it has no reference for: a new row of QT_FORMATS fails the round
 * trips until its definition is written out here too. */
static int ref_roundtrip(const float *w, int rows, int cols, qt_spec spec, float *out)
{
    switch (spec.format) {
    case QT_F32: case QT_NF4: case QT_FP4: case QT_INT8: case QT_INT4: case QT_BITNET1:
    case QT_TERNARY:
        break;
    default:
        return -1;
    }
    const int B = spec.block, bpr = (cols + B - 1) / B;
    const float *t = qt_code_table(spec.format);
    float *absmax = malloc((size_t)rows * bpr * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const float *x = w + (size_t)r * cols;
        float *o = out + (size_t)r * cols;
        double mean = 0, mean_abs = 0;
        for (int k = 0; k < cols; k++)
            mean += x[k], mean_abs += fabs(x[k]);
        float alpha = (float)(mean / cols), beta = (float)(mean_abs / cols);
        for (int j = 0; j < bpr; j++) {
            int k0 = j * B, k1 = k0 + B < cols ? k0 + B : cols;
            float amax = 0, mn = x[k0], mx = x[k0];
            for (int k = k0; k < k1; k++)
                amax = fmaxf(amax, fabsf(x[k])), mn = fminf(mn, x[k]), mx = fmaxf(mx, x[k]);
            absmax[(size_t)r * bpr + j] = amax;
            for (int k = k0; k < k1; k++) {
                if (spec.format == QT_INT8) {
                    float s = amax / 127;
                    o[k] = s > 0 ? rintf(x[k] / s) * s : 0;
                } else if (spec.format == QT_INT4) {
                    float S = mx > mn ? (mx - mn) / 15 : fabsf(mx);
                    float Z = S > 0 ? rintf(-mn / S) : 0;
                    float q = S > 0 ? fminf(fmaxf(rintf(x[k] / S) + Z, 0), 15) : 0;
                    o[k] = S * (q - Z);
                } else if (t) { /* nf4 / fp4: the code now, the scale below */
                    float s = amax > 0 ? fminf(fmaxf(x[k] * (1 / amax), -1), 1) : 0;
                    o[k] = (float)argmin_first(t, 16, s);
                }
            }
        }
        if (spec.format == QT_BITNET1)
            for (int k = 0; k < cols; k++)
                o[k] = x[k] - alpha > 0 ? beta : -beta;
        if (spec.format == QT_TERNARY) {
            float s = 1 / fmaxf(beta, 1e-5f);
            for (int k = 0; k < cols; k++)
                o[k] = fminf(fmaxf(rintf(x[k] * s), -1), 1) / s;
        }
        if (spec.format == QT_F32)
            memcpy(o, x, (size_t)cols * sizeof(float));
    }
    if (t) {
        size_t nb = (size_t)rows * bpr;
        if (spec.double_quant) { /* absmax - mean, 8-bit dynamic map per 256 */
            const float *map = qt_dynamic_map();
            double sum = 0;
            for (size_t b = 0; b < nb; b++)
                sum += absmax[b];
            float offset = (float)(sum / nb);
            for (size_t g = 0; g < nb; g += 256) {
                size_t ge = g + 256 < nb ? g + 256 : nb;
                float a2 = 0;
                for (size_t b = g; b < ge; b++)
                    a2 = fmaxf(a2, fabsf(absmax[b] - offset));
                for (size_t b = g; b < ge; b++) {
                    int q = a2 > 0 ? argmin_first(map, 256, (absmax[b] - offset) / a2) : 127;
                    absmax[b] = map[q] * a2 + offset;
                }
            }
        }
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < cols; k++) {
                float *o = out + (size_t)r * cols + k;
                *o = t[(int)*o] * absmax[(size_t)r * bpr + k / B];
            }
    }
    free(absmax);
    return 0;
}

static void test_tables(void)
{
    const float *nf4 = qt_code_table(QT_NF4), *fp4 = qt_code_table(QT_FP4);
    CHECK(nf4[0] == -1.0f && nf4[7] == 0.0f && nf4[15] == 1.0f, "nf4 ends");
    CHECK(nf4[8] == 0.07958029955625534f && nf4[1] == -0.6961928009986877f, "nf4 values");
    for (int i = 1; i < 16; i++)
        CHECK(nf4[i - 1] < nf4[i], "nf4 ascending at %d", i);
    const float fp4_raw[8] = {0, 0.0625f, 8, 12, 4, 6, 2, 3};
    for (int i = 0; i < 8; i++) {
        CHECK(fp4[i] == fp4_raw[i] / 12, "fp4[%d] = %g", i, fp4[i]);
        CHECK(fp4[i + 8] == -fp4_raw[i] / 12, "fp4[%d] = %g", i + 8, fp4[i + 8]);
    }
    test_case("nf4 and fp4 code tables");

    const float *map = qt_dynamic_map();
    CHECK(map[0] == -1.0f && map[127] == 0.0f && map[255] == 1.0f, "map ends %g %g %g", map[0],
          map[127], map[255]);
    for (int i = 1; i < 256; i++)
        CHECK(map[i - 1] < map[i], "map ascending at %d", i);
    /* Largest exponent band: 64 means of linspace(0.1, 1, 65), the last (0.9859375+1)/2. */
    CHECK(fabsf(map[254] - 0.99296875f) < 1e-6f, "map[254] = %.9g", map[254]);
    CHECK(fabsf(map[128] - 5.5e-7f) < 1e-12f, "smallest positive %.9g", map[128]);
    test_case("double-quant dynamic map");
}

static void test_nf4_codes(void)
{
    /* One block per row: absmax 2 sets the scale; ties halfway between codes go to the
     * lower. Codes are 8 to a 32-bit word, column 8c + j in nibble j of word c, and the
     * words of 16 rows side by side (row 1's word 0 follows row 0's). */
    const float *t = qt_code_table(QT_NF4);
    float x[128] = {0};
    x[0] = 2.0f;
    x[1] = -2.0f;
    x[2] = 2.0f * t[9];                        /* exact code 9 */
    x[3] = (t[8] + t[9]);                      /* 2 * midpoint of codes 8, 9: a tie */
    x[4] = 0.001f;                              /* nearest 0 */
    x[64] = -2.0f, x[65] = 2.0f;               /* row 1 */
    qt_matrix m;
    char err[128];
    qt_spec spec = {QT_NF4, 64, 0};
    CHECK(qt_quantize(&m, x, 2, 64, spec, err, sizeof err) == 0, "%s", err);
    uint32_t w[QT_PANEL + 1];
    memcpy(w, m.data, sizeof w);
    CHECK((w[0] & 0xFF) == 0x0F, "word 0 = %#x (codes 15, 0 in nibbles 0, 1)", w[0]);
    float s = fminf(fmaxf(x[3] * (1 / 2.0f), -1), 1);
    int tie = fabsf(s - t[8]) == fabsf(s - t[9]);
    CHECK((w[0] >> 8 & 15) == 9, "code of x[2] = %u", w[0] >> 8 & 15);
    CHECK((w[0] >> 12 & 15) == (tie ? 8u : (uint32_t)argmin_first(t, 16, s)), "tie to lower code");
    CHECK((w[0] >> 16 & 15) == 7, "small value to the zero code");
    CHECK((w[1] & 0xFF) == 0xF0, "row 1's word 0 = %#x (codes 0, 15)", w[1]);
    CHECK(w[QT_PANEL] == 0x77777777u, "row 0's word 1 = %#x (zeros: code 7)", w[QT_PANEL]);
    CHECK(m.scale[0] == 2.0f && m.scale[1] == 2.0f, "absmax %g %g (rows side by side)",
          m.scale[0], m.scale[1]);
    qt_free(&m);
    test_case("nf4 codes, nibble order, panel layout, ties");
}

static void test_roundtrips(void)
{
    const int shapes[][2] = {{3, 64}, {5, 100}, {2, 33}, {17, 1000}, {1, 4097}, {300, 64}};
    const int blocks[] = {32, 64, 256};
    for (int f = 0; f < QT_NFORMATS; f++)
        for (int dq = 0; dq < 2; dq++) {
            if (is_ggml(f)) { /* test_ggml.c: against ggml_quantize_chunk, byte for byte */
                if (!dq)
                    test_case("%s round trip: its reference is ggml's own code (test ggml)",
                              qt_format_name(f));
                continue;
            }
            if (dq && !qt_spec_default(f).double_quant)
                continue;
            int bad = 0, total = 0;
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (size_t b = 0; b < 3; b++) {
                    int rows = shapes[s][0], cols = shapes[s][1];
                    qt_spec spec = {(qt_format)f, blocks[b], dq};
                    float *w = gaussian_matrix((size_t)rows * cols, 0.02f);
                    w[0] = 0.5f; /* an outlier */
                    float *got = malloc((size_t)rows * cols * 4), *want = malloc((size_t)rows * cols * 4);
                    qt_matrix m;
                    char err[128];
                    CHECK(qt_quantize(&m, w, rows, cols, spec, err, sizeof err) == 0, "%s", err);
                    qt_dequantize_rows(&m, 0, rows, got);
                    int have_ref = ref_roundtrip(w, rows, cols, spec, want) == 0;
                    CHECK(have_ref, "%s: no brute-force reference in ref_roundtrip", qt_format_name(f));
                    /* The reference's offset is a float64 mean, the library's PyTorch's
                     * float32 summation (compared bit for bit in test_bnb_reference.py):
                     * with double quant, values may differ by an ulp of the offset. */
                    float tol = dq ? 1e-5f : 1e-6f;
                    for (size_t i = 0; have_ref && i < (size_t)rows * cols; i++, total++)
                        if (!(got[i] == want[i] || fabsf(got[i] - want[i]) <= tol * fabsf(want[i]))) {
                            if (bad++ < 3)
                                printf("# %s dq%d %dx%d b%d [%zu]: %.9g vs %.9g\n",
                                       qt_format_name(f), dq, rows, cols, blocks[b], i, got[i], want[i]);
                        }
                    qt_free(&m);
                    free(w), free(got), free(want);
                }
            CHECK(bad == 0, "%d of %d values differ", bad, total);
            test_case("%s%s round trip equals the brute-force reference", qt_format_name(f),
                      dq ? " (double quant)" : "");
        }
}

static void test_special_blocks(void)
{
    float c[3 * 256]; /* rows of 256: whole blocks of every format */
    for (int i = 0; i < 256; i++)
        c[i] = 0.37f, c[256 + i] = -2.5f, c[512 + i] = 0.0f;
    for (int f = 0; f < QT_NFORMATS; f++) {
        qt_matrix m;
        char err[128];
        float out[3 * 256];
        CHECK(qt_quantize(&m, c, 3, 256, qt_spec_default(f), err, sizeof err) == 0, "%s", err);
        qt_dequantize_rows(&m, 0, 3, out);
        for (int i = 0; i < 3 * 256; i++)
            CHECK(isfinite(out[i]), "%s: non-finite output", qt_format_name(f));
        if (f == QT_INT4 || f == QT_F32 || f == QT_INT8)
            for (int i = 0; i < 3 * 256; i++)
                CHECK(out[i] == c[i], "%s: constant block value %d: %.9g vs %.9g",
                      qt_format_name(f), i, out[i], c[i]);
        qt_free(&m);
    }
    test_case("constant and all-zero blocks: finite; int4 and int8 reconstruct them exactly");

    float bad[4] = {1, NAN, 2, 3};
    qt_matrix m;
    char err[128] = "";
    CHECK(qt_quantize(&m, bad, 2, 2, qt_spec_default(QT_NF4), err, sizeof err) < 0, "NaN accepted");
    CHECK(strstr(err, "row 0, column 1") != NULL, "message: %s", err);
    qt_spec odd = {QT_NF4, 48, 1};
    CHECK(qt_quantize(&m, c, 1, 64, odd, err, sizeof err) < 0 && strstr(err, "block"), "block 48: %s", err);
    qt_spec dq8 = {QT_INT8, 64, 1};
    CHECK(qt_quantize(&m, c, 1, 64, dq8, err, sizeof err) < 0, "int8 with double quant accepted");
    CHECK(qt_quantize(&m, c, 0, 64, qt_spec_default(QT_NF4), err, sizeof err) < 0, "0 rows accepted");
    test_case("bad input: non-finite weight, bad block, bad double quant, empty shape");
}

static void test_bits_per_param(void)
{
    const int rows = 256, cols = 4096;
    float *w = gaussian_matrix((size_t)rows * cols, 1);
    const struct {
        qt_spec spec;
        double bits;
    } want[] = {
        {{QT_F32, 64, 0}, 32},
        {{QT_NF4, 64, 1}, 4 + 8.0 / 64 + 32.0 / (64 * 256)},
        {{QT_NF4, 64, 0}, 4.5},
        {{QT_FP4, 64, 1}, 4 + 8.0 / 64 + 32.0 / (64 * 256)},
        {{QT_INT8, 64, 0}, 8.5},
        {{QT_INT4, 64, 0}, 5.0},
        {{QT_BITNET1, 64, 0}, 1 + 32.0 / cols},
        {{QT_TERNARY, 64, 0}, 2 + 32.0 / cols},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        qt_matrix m;
        char err[128];
        CHECK(qt_quantize(&m, w, rows, cols, want[i].spec, err, sizeof err) == 0, "%s", err);
        double got = qt_bits_per_param(&m);
        CHECK(fabs(got - want[i].bits) < 1e-4, "%s dq%d: %.5f bits/param, expected %.5f",
              qt_format_name(want[i].spec.format), want[i].spec.double_quant, got, want[i].bits);
        qt_free(&m);
    }
    /* The panel formats store whole panels of 16 rows: 17 rows hold 32 rows of codes (and
     * for nf4 of block codes), but only 17 rows' worth of double-quant groups. */
    const int b17 = 17 * cols / 64; /* blocks of the 17 rows */
    const struct {
        qt_format f;
        double bits; /* stored, for 17 x cols */
    } padded[] = {
        {QT_BITNET1, 32.0 * cols + 17 * 32},
        {QT_TERNARY, 32.0 * cols * 2 + 17 * 32},
        {QT_NF4, 32.0 * cols * 4 + 32 * (cols / 64) * 8 + (b17 + 255) / 256 * 32 + 32},
    };
    for (size_t i = 0; i < sizeof padded / sizeof padded[0]; i++) {
        qt_matrix m;
        char err[128];
        CHECK(qt_quantize(&m, w, 17, cols, qt_spec_default(padded[i].f), err, sizeof err) == 0, "%s", err);
        double want = padded[i].bits / (17.0 * cols);
        CHECK(fabs(qt_bits_per_param(&m) - want) < 1e-9, "%s 17 rows: %.5f bits/param, expected %.5f",
              qt_format_name(padded[i].f), qt_bits_per_param(&m), want);
        qt_free(&m);
    }
    free(w);
    test_case("bits per parameter (nf4 with double quant: 4.127; panels padded to 16 rows)");
}

/* The rows of QT_FORMATS, read here as the public header states them: names, double
 * quantization and the bytes stored must follow from the columns alone, for every row,
 * including one added later. */
typedef struct {
    qt_format id;
    const char *name, *layout, *scale;
    int bits, planes, block, dq;
} format_row;

#define FORMAT_ROW_(id, name, bits, planes, layout, block, scale, dq, ...)                 \
    {id, #name, #layout, #scale, bits, planes, block, dq},
static const format_row format_rows[] = {QT_FORMATS(FORMAT_ROW_)};
#undef FORMAT_ROW_

static void test_format_rows(void)
{
    const int n = (int)(sizeof format_rows / sizeof format_rows[0]);
    CHECK(n == QT_NFORMATS, "%d rows, %d formats", n, QT_NFORMATS);
    const int rows = 32, cols = 1024, B = 64; /* whole panels, words and blocks */
    float *w = gaussian_matrix((size_t)rows * cols, 1);
    for (int i = 0; i < n; i++) {
        const format_row *r = &format_rows[i];
        qt_format parsed = QT_NFORMATS;
        CHECK(r->id == (qt_format)i, "%s: row %d has number %d", r->name, i, (int)r->id);
        CHECK(strcmp(qt_format_name(r->id), r->name) == 0 && qt_format_parse(r->name, &parsed) == 0 &&
                  parsed == r->id, "%s: name and parse disagree", r->name);
        CHECK(qt_spec_default(r->id).double_quant == r->dq, "%s: default double_quant", r->name);
        char err[128];
        const int block = ggml_block(r->id) ? ggml_block(r->id) : B;
        qt_spec dq = {r->id, block, 1};
        CHECK((qt_spec_check(dq, err, sizeof err) == 0) == r->dq, "%s: double_quant check", r->name);
        CHECK(qt_spec_default(r->id).block == (ggml_block(r->id) ? ggml_block(r->id) : QT_BLOCK_DEFAULT),
              "%s: default block", r->name);
        CHECK((qt_code_table(r->id) != NULL) == (r->bits == 4 && !strcmp(r->scale, "ABSMAX")),
              "%s: code table", r->name);
        /* bits per parameter from the columns: the codes, then what `scale` holds */
        for (int d = 0; d <= r->dq; d++) {
            double blocks = (double)rows * cols / block, want = (double)r->bits * r->planes * rows * cols;
            if (!strcmp(r->scale, "GGML")) /* ggml's blocks, their constants inside */
                for (size_t g = 0; g < sizeof ggml_rows / sizeof ggml_rows[0]; g++)
                    if (ggml_rows[g].f == r->id)
                        want = 8.0 * ggml_rows[g].bytes * blocks;
            if (!strcmp(r->scale, "ROW"))
                want += 32.0 * rows;
            else if (!strcmp(r->scale, "GGML"))
                ;
            else if (r->block && d) /* an 8-bit code per block, an fp32 per 256, the offset */
                want += 8 * blocks + 32 * ceil(blocks / 256) + 32;
            else if (r->block)
                want += (!strcmp(r->scale, "AFFINE") ? 64.0 : 32.0) * blocks;
            qt_matrix m;
            qt_spec spec = {r->id, block, d};
            CHECK(qt_quantize(&m, w, rows, cols, spec, err, sizeof err) == 0, "%s", err);
            CHECK(fabs(qt_bits_per_param(&m) - want / ((double)rows * cols)) < 1e-9,
                  "%s dq%d (%s, %s): %.5f bits/param, the columns say %.5f", r->name, d, r->layout,
                  r->scale, qt_bits_per_param(&m), want / ((double)rows * cols));
            qt_free(&m);
        }
    }
    free(w);
    test_case("each row of QT_FORMATS: name, double quant, code table and bytes follow from its columns");
}

/* ---- kernels ---- */

static double max_rel_err(const float *got, const float *want, const double *mag, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]) / (mag[i] + 1e-30);
        if (!(e <= worst))
            worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

/* Y = X W^T and dX = dY W in double precision from the decoded weights; mag is the sum
 * of |terms|, the scale that float rounding errors are relative to. */
static void ref_products(const qt_matrix *m, const float *x, const float *dy, int M, double *y,
                         double *ymag, double *dx, double *dxmag)
{
    int N = m->rows, K = m->cols;
    float *w = malloc((size_t)N * K * sizeof(float));
    qt_dequantize_rows(m, 0, N, w);
    for (int i = 0; i < M; i++)
        for (int n = 0; n < N; n++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                s += (double)x[(size_t)i * K + k] * w[(size_t)n * K + k];
                a += fabs((double)x[(size_t)i * K + k] * w[(size_t)n * K + k]);
            }
            y[(size_t)i * N + n] = s, ymag[(size_t)i * N + n] = a;
        }
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            double s = 0, a = 0;
            for (int n = 0; n < N; n++) {
                s += (double)dy[(size_t)i * N + n] * w[(size_t)n * K + k];
                a += fabs((double)dy[(size_t)i * N + n] * w[(size_t)n * K + k]);
            }
            dx[(size_t)i * K + k] = s, dxmag[(size_t)i * K + k] = a;
        }
    free(w);
}

static void test_kernels(void)
{
    const int Ms[] = {1, 2, 3, 5, 7, 8, 13, 33, 70};
    const int Ns[] = {1, 5, 13, 50, 97};
    const int Ks[] = {17, 32, 63, 100, 257, 300};
    qt_isa best = qt_isa_best();
    for (int f = 0; f < QT_NFORMATS; f++) {
        int worst_case = 0;
        double worst = 0;
        for (size_t a = 0; a < sizeof Ns / sizeof Ns[0]; a++)
            for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++) {
                int N = Ns[a], K = fit_cols(f, Ks[b]);
                qt_spec spec = qt_spec_default(f);
                if (!ggml_block(f))
                    spec.block = (a + b) % 2 ? 32 : 64;
                spec.double_quant = spec.double_quant && a % 2 == 0; /* nf4, fp4: both ways */
                float *w = gaussian_matrix((size_t)N * K, 0.05f);
                qt_matrix m;
                char err[128];
                CHECK(qt_quantize(&m, w, N, K, spec, err, sizeof err) == 0, "%s", err);
                for (size_t c = 0; c < sizeof Ms / sizeof Ms[0]; c++) {
                    int M = Ms[c];
                    size_t ny = (size_t)M * N, nx = (size_t)M * K;
                    float *x = gaussian_matrix(nx, 1), *dy = gaussian_matrix(ny, 1);
                    double *ry = malloc(ny * 8), *rym = malloc(ny * 8), *rdx = malloc(nx * 8),
                           *rdxm = malloc(nx * 8);
                    ref_products(&m, x, dy, M, ry, rym, rdx, rdxm);
                    float *ryf = malloc(ny * 4), *rdxf = malloc(nx * 4);
                    for (size_t i = 0; i < ny; i++)
                        ryf[i] = (float)ry[i];
                    for (size_t i = 0; i < nx; i++)
                        rdxf[i] = (float)rdx[i];
                    float *y = malloc(ny * 4), *dx = malloc(nx * 4);
                    for (int isa = QT_ISA_SCALAR; isa <= (int)best; isa++) {
                        qt_isa_set((qt_isa)isa);
                        for (int acc = 0; acc < 2; acc++) {
                            /* accumulate: start from -ref, so a correct kernel lands on 0 */
                            for (size_t i = 0; i < ny; i++)
                                y[i] = acc ? -ryf[i] : NAN;
                            for (size_t i = 0; i < nx; i++)
                                dx[i] = acc ? -rdxf[i] : NAN;
                            CHECK(qt_matmul(&m, x, M, y, acc) == 0, "matmul failed");
                            CHECK(qt_matmul_t(&m, dy, M, dx, acc) == 0, "matmul_t failed");
                            if (acc) {
                                for (size_t i = 0; i < ny; i++)
                                    y[i] += ryf[i];
                                for (size_t i = 0; i < nx; i++)
                                    dx[i] += rdxf[i];
                            }
                            double e1 = max_rel_err(y, ryf, rym, ny), e2 = max_rel_err(dx, rdxf, rdxm, nx);
                            if (!(e1 < 1e-5) || !(e2 < 1e-5)) {
                                if (worst_case++ < 4)
                                    printf("# %s %s M=%d N=%d K=%d acc=%d: rel err y %.3g dx %.3g\n",
                                           qt_format_name(f), qt_isa_name(isa), M, N, K, acc, e1, e2);
                            }
                            worst = fmax(worst, fmax(e1, e2));
                        }
                    }
                    qt_isa_set(best);
                    free(x), free(dy), free(ry), free(rym), free(rdx), free(rdxm), free(ryf),
                        free(rdxf), free(y), free(dx);
                }
                qt_free(&m);
                free(w);
            }
        CHECK(worst_case == 0, "%d kernel results off (worst relative error %.3g)", worst_case, worst);
        test_case("%s kernels (scalar..%s, Y = X W^T and dX = dY W, odd shapes) match a "
                  "double-precision product; worst rel. err %.2g",
                  qt_format_name(f), qt_isa_name(best), worst);
    }
}

static void test_vector_decode(void)
{
    /* Every instruction set decodes to the same bits as the scalar definition. */
    int rows = 7, most = 512; /* 333 columns, or whole blocks: 352 or 512 */
    float *w = gaussian_matrix((size_t)rows * most, 1);
    float *ref = malloc((size_t)rows * most * 4), *got = malloc((size_t)rows * most * 4);
    qt_isa best = qt_isa_best();
    for (int f = 0; f < QT_NFORMATS; f++) {
        int cols = fit_cols(f, 333);
        qt_matrix m;
        char err[128];
        CHECK(qt_quantize(&m, w, rows, cols, qt_spec_default(f), err, sizeof err) == 0, "%s", err);
        qt_isa_set(QT_ISA_SCALAR);
        qt_dequantize_rows(&m, 0, rows, ref);
        for (int isa = QT_ISA_AVX2; isa <= (int)best; isa++) {
            qt_isa_set((qt_isa)isa);
            qt_dequantize_rows(&m, 2, rows, got);
            CHECK(memcmp(got, ref + 2 * cols, (size_t)(rows - 2) * cols * 4) == 0,
                  "%s decode on %s differs from scalar", qt_format_name(f), qt_isa_name(isa));
        }
        qt_isa_set(best);
        qt_free(&m);
    }
    free(w), free(ref), free(got);
    test_case("vectorized decode is bit-identical to the scalar definition");
}

static void test_threads_agree(void)
{
    /* The same product on 1 and on all threads: every element is computed by one thread
     * in a fixed order, so results must be bitwise equal. The small-M cases are large
     * enough to be split into several tasks. */
    const struct {
        qt_format f;
        int M;
    } cases[] = {{QT_NF4, 40}, {QT_NF4, 70}, {QT_F32, 70}, {QT_NF4, 1}, {QT_TERNARY, 1}, {QT_BITNET1, 3},
                 {QT_Q4_K, 1}, {QT_Q6_K, 40}, {QT_Q8_0, 3}, {QT_F16, 70}};
    int N = 301;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int M = cases[i].M, K = fit_cols(cases[i].f, 2055);
        float *w = gaussian_matrix((size_t)N * K, 0.05f), *x = gaussian_matrix((size_t)M * K, 1);
        qt_matrix m;
        char err[128];
        CHECK(qt_quantize(&m, w, N, K, qt_spec_default(cases[i].f), err, sizeof err) == 0, "%s", err);
        float *dy = gaussian_matrix((size_t)M * N, 1);
        float *y1 = malloc((size_t)M * N * 4), *y2 = malloc((size_t)M * N * 4);
        float *dx1 = malloc((size_t)M * K * 4), *dx2 = malloc((size_t)M * K * 4);
        int threads = rt_threads();
        rt_set_threads(1);
        qt_matmul(&m, x, M, y1, 0);
        qt_matmul_t(&m, dy, M, dx1, 0);
        /* 2 threads, and 3 and 5: chunks of rows that do not divide the panels evenly, and
         * (5, at M = 40) more threads than forward panels */
        for (int th = 2; th <= 5; th += th == 2 ? 1 : 2) {
            rt_set_threads(th);
            qt_matmul(&m, x, M, y2, 0);
            qt_matmul_t(&m, dy, M, dx2, 0);
            CHECK(memcmp(y1, y2, (size_t)M * N * 4) == 0, "%s M=%d: Y on 1 thread and on %d differ",
                  qt_format_name(cases[i].f), M, rt_threads());
            CHECK(memcmp(dx1, dx2, (size_t)M * K * 4) == 0, "%s M=%d: dX on 1 thread and on %d differ",
                  qt_format_name(cases[i].f), M, rt_threads());
        }
        rt_set_threads(threads);
        qt_free(&m);
        free(w), free(x), free(dy), free(y1), free(y2), free(dx1), free(dx2);
    }
    test_case("results do not depend on the thread count");
}

typedef struct {
    _Atomic int *seen;
    size_t n;
    _Atomic int bad;
} cover_ctx;

static void cover_range(void *p, size_t i0, size_t i1)
{
    cover_ctx *c = p;
    if (i0 >= i1 || i1 > c->n)
        c->bad = 1;
    for (size_t i = i0; i < i1 && i < c->n; i++)
        c->seen[i]++;
}

/* rt_parallel_for hands out every item exactly once, for sizes around its split points,
 * on one thread and on two or more. */
static void test_parallel_for(void)
{
    const size_t sizes[] = {0, 1, 2, 7, 64, 1000, 16385, 100003};
    const size_t works[] = {0, 1, 288, 100000};
    int threads = rt_threads();
    for (int th = 1; th <= 2; th++) {
        rt_set_threads(th == 1 ? 1 : threads < 2 ? 2 : threads);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            for (size_t j = 0; j < sizeof works / sizeof works[0]; j++) {
                size_t n = sizes[i];
                cover_ctx c = {calloc(n + 1, sizeof(int)), n, 0};
                rt_parallel_for(n, works[j], cover_range, &c);
                size_t wrong = 0;
                for (size_t k = 0; k < n; k++)
                    wrong += c.seen[k] != 1;
                CHECK(!c.bad && wrong == 0, "n %zu, work %zu, %d threads: %zu items not seen once%s", n,
                      works[j], rt_threads(), wrong, c.bad ? ", an empty or out-of-range range" : "");
                free((void *)c.seen);
            }
    }
    rt_set_threads(threads);
    test_case("parallel_for covers every item once");
}

/* Large enough that glibc maps it (above its largest mmap threshold, 32 MB) and unmaps it
 * when it is freed, so that the resident size shows whether it is held. */
#define WS_BIG ((size_t)48 << 20)

/* Under AddressSanitizer freed memory stays resident in its quarantine: there the release
 * at thread exit is checked by LeakSanitizer instead of the resident size. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static void *use_workspace(void *unused)
{
    (void)unused;
    char *p = rt_workspace(RT_WS_PACK, WS_BIG);
    if (p)
        memset(p, 1, WS_BIG);
    return p;
}

/* Workspaces: aligned, kept while big enough, one per slot, freed by release and by the
 * exit of the thread that made them. */
static void test_workspace(void)
{
    char *a = rt_workspace(RT_WS_PACK, 100), *b = rt_workspace(RT_WS_DECODE, 100);
    CHECK(a && b && a != b, "two slots share a buffer");
    CHECK((uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0, "not 64-byte aligned");
    CHECK(rt_workspace(RT_WS_PACK, 64) == a, "a smaller request moved the buffer");
    char *c = rt_workspace(RT_WS_PACK, 1 << 20);
    CHECK(c && (uintptr_t)c % 64 == 0, "growing failed");
    memset(c, 0, 1 << 20); /* all of it is ours (ASan checks the bound) */
    rt_workspace_release();
#ifndef UNDER_ASAN
    size_t before = rt_rss_bytes();
#endif
    pthread_t t;
    void *theirs = NULL;
    CHECK(pthread_create(&t, NULL, use_workspace, NULL) == 0 && pthread_join(t, &theirs) == 0 && theirs,
          "thread's workspace");
#ifdef UNDER_ASAN
    printf("# the exiting thread's release is checked by LeakSanitizer in this build\n");
#else
    /* a margin of half the buffer for the thread's stack and whatever else moves */
    CHECK(rt_rss_bytes() < before + WS_BIG / 2, "the exited thread still holds %zu MB",
          (rt_rss_bytes() - before) >> 20);
    CHECK(use_workspace(NULL) && rt_rss_bytes() >= before + WS_BIG, "the buffer is not resident");
    rt_workspace_release();
    CHECK(rt_rss_bytes() < before + WS_BIG / 2, "release left %zu MB", (rt_rss_bytes() - before) >> 20);
#endif
    test_case("workspace: aligned, per slot, freed at release and thread exit");
}

int main(void)
{
    test_tables();
    test_nf4_codes();
    test_roundtrips();
    test_special_blocks();
    test_bits_per_param();
    test_format_rows();
    test_kernels();
    test_vector_decode();
    test_threads_agree();
    test_parallel_for();
    test_workspace();
    return tap_done();
}
