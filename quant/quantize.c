/* quantize.c: quantization of fp32 matrices into every format, and the scalar
 * reference decode that the vectorized kernels are tested against.
 * Plain C on purpose: this runs once at load, and it is the definition of each format:
 * the functions quantize_<codec>_row and decode_<codec> that the codec column of
 * QT_FORMATS names. */
#include "ggml_blocks.h"
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- 4-bit codes: nearest table value, ties to the lower code ---- */

/* A table sorted by value (ties by code) so that the nearest code is found by binary
 * search; the result equals an argmin over the table in code order, as bitsandbytes'
 * torch.argmin, which returns the first (lowest) code among equal distances. */
typedef struct {
    float value[16];
    uint8_t code[16];
} sorted_table;

static void sort_table(const float *t, sorted_table *s)
{
    for (int i = 0; i < 16; i++) {
        int j = i;
        for (; j > 0 && (s->value[j - 1] > t[i] ||
                         (s->value[j - 1] == t[i] && s->code[j - 1] > i));
             j--) {
            s->value[j] = s->value[j - 1];
            s->code[j] = s->code[j - 1];
        }
        s->value[j] = t[i];
        s->code[j] = (uint8_t)i;
    }
}

static uint8_t nearest_code(const sorted_table *s, float x)
{
    int lo = 0, hi = 16; /* first index with value >= x */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (s->value[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* The nearest value is next to the boundary; a window of four also covers the
     * pair -0/+0 of fp4, whose equal distances are settled by the lower code. */
    int best = -1;
    float best_d = 0;
    for (int j = lo - 2; j <= lo + 1; j++) {
        if (j < 0 || j > 15)
            continue;
        float d = fabsf(x - s->value[j]);
        if (best < 0 || d < best_d || (d == best_d && s->code[j] < s->code[best])) {
            best = j;
            best_d = d;
        }
    }
    return s->code[best];
}

/* bitsandbytes' CPU quantize_block for the 8-bit dynamic map: binary search for the
 * largest map value <= x, then step right only if strictly closer. */
static uint8_t dynamic_code(float x)
{
    const float *map = qt_dynamic_map();
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (map[mid] <= x)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo < 255 && fabsf(x - map[lo + 1]) < fabsf(x - map[lo]))
        lo++;
    return (uint8_t)lo;
}

/* ---- codes ---- */

/* int4 codes: two per byte, the first element in the high nibble. */
static void set_nibble(uint8_t *row, int k, unsigned q)
{
    if (k & 1)
        row[k / 2] |= (uint8_t)q;
    else
        row[k / 2] |= (uint8_t)(q << 4);
}

static unsigned get_nibble(const uint8_t *row, int k)
{
    return k & 1 ? row[k / 2] & 15u : row[k / 2] >> 4;
}

/* nf4 and fp4 codes: nibble k % 8 of row r's word k / 8 (formats.h). */
static void set_code(qt_matrix *m, int r, int k, unsigned q)
{
    qt_panel_row(m, m->spec.format, r)[(size_t)(k / 8) * QT_PANEL] |= q << 4 * (k % 8);
}

static unsigned get_code(const qt_matrix *m, int r, int k)
{
    return qt_panel_row(m, m->spec.format, r)[(size_t)(k / 8) * QT_PANEL] >> 4 * (k % 8) & 15u;
}

/* ---- quantize ---- */

/* What the row quantizers share beside the matrix. */
typedef struct {
    sorted_table st; /* ABSMAX: the code table, sorted for the nearest-code search */
    float *absmax;   /* ABSMAX: every block's absmax, row-major (double quantization's
                        order), placed or coded once all rows are done */
    float *scratch;  /* ROW: cols floats */
} quant_work;

static void quantize_f32_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    (void)q;
    memcpy(m->data + (size_t)r * m->row_bytes, x, (size_t)m->cols * sizeof(float));
}

static void quantize_bnb4_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    const int cols = m->cols, block = m->spec.block;
    const sorted_table *st = &q->st;
    float *absmax = q->absmax + (size_t)r * m->blocks_per_row;
    for (int b0 = 0, j = 0; b0 < cols; b0 += block, j++) {
        int b1 = b0 + block < cols ? b0 + block : cols;
        float amax = 0;
        for (int k = b0; k < b1; k++)
            amax = fmaxf(amax, fabsf(x[k]));
        absmax[j] = amax;
        float inv = 1.0f / amax; /* bitsandbytes multiplies by the reciprocal */
        for (int k = b0; k < b1; k++) {
            float s = amax > 0 ? fminf(fmaxf(x[k] * inv, -1.0f), 1.0f) : 0.0f;
            set_code(m, r, k, nearest_code(st, s));
        }
    }
}

static void quantize_int8_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    (void)q;
    const int cols = m->cols, block = m->spec.block;
    int8_t *row = (int8_t *)(m->data + (size_t)r * m->row_bytes);
    float *scale = m->scale + (size_t)r * m->blocks_per_row;
    for (int b0 = 0, j = 0; b0 < cols; b0 += block, j++) {
        int b1 = b0 + block < cols ? b0 + block : cols;
        float amax = 0;
        for (int k = b0; k < b1; k++)
            amax = fmaxf(amax, fabsf(x[k]));
        float s = amax / 127.0f;
        scale[j] = s;
        for (int k = b0; k < b1; k++)
            row[k] = s > 0 ? (int8_t)fminf(fmaxf(rintf(x[k] / s), -127.0f), 127.0f) : 0;
    }
}

static void quantize_int4_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    (void)q;
    const int cols = m->cols, block = m->spec.block;
    uint8_t *row = m->data + (size_t)r * m->row_bytes;
    float *scale = m->scale + (size_t)r * m->blocks_per_row;
    int32_t *zero = m->zero + (size_t)r * m->blocks_per_row;
    for (int b0 = 0, j = 0; b0 < cols; b0 += block, j++) {
        int b1 = b0 + block < cols ? b0 + block : cols;
        float mn = x[b0], mx = x[b0];
        for (int k = b0; k < b1; k++) {
            mn = fminf(mn, x[k]);
            mx = fmaxf(mx, x[k]);
        }
        float s = (mx - mn) / 15.0f;
        /* A constant block has no range: with S = |c| it is coded exactly as q - Z = +-1. */
        if (s == 0)
            s = fabsf(mx);
        int32_t z = s > 0 ? (int32_t)rintf(-mn / s) : 0;
        scale[j] = s;
        zero[j] = z;
        for (int k = b0; k < b1; k++) {
            float c = s > 0 ? rintf(x[k] / s) + (float)z : 0.0f;
            set_nibble(row, k, (unsigned)fminf(fmaxf(c, 0.0f), 15.0f));
        }
    }
}

/* ggml's types: ggml's reference quantizers (ggml.c), row by row into the row's blocks. */
static void quantize_ggml_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    (void)q;
    qt_ggml_quantize_row(m->spec.format, x, m->cols, m->data + (size_t)r * m->row_bytes);
}

/* f16 and bf16: row r's values, each by `convert`. */
static void store_halves(qt_matrix *m, int r, const float *x, uint16_t (*convert)(float))
{
    uint8_t *row = m->data + (size_t)r * m->row_bytes;
    for (int k = 0; k < m->cols; k++) {
        uint16_t h = convert(x[k]);
        memcpy(row + 2 * (size_t)k, &h, sizeof h);
    }
}

static void quantize_f16_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    (void)q;
    store_halves(m, r, x, qt_f32_to_f16);
}

static void quantize_bf16_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    (void)q;
    store_halves(m, r, x, qt_f32_to_bf16);
}

/* ---- PyTorch's float32 sum, for the double-quant offset ----
 * bitsandbytes takes the offset as absmax.mean() in float32, and PyTorch's CPU sum adds in
 * a particular order (8-lane vectors, 4 interleaved partial sums, a cascade of 4
 * accumulator levels). A different order moves the offset by an ulp and with it nearly
 * every dequantized value, so this reproduces that order (PyTorch 1.13, AVX2 kernels,
 * one thread) to give bitsandbytes' values bit for bit. */

#define SUM_ILP 4
#define SUM_LEVELS 4

/* at::native multi_row_sum over `rows` rows of SUM_ILP x width floats. */
static void cascade_sum(const float *x, size_t rows, int width, float *out)
{
    float acc[SUM_LEVELS][SUM_ILP * 8] = {{0}};
    const int cols = SUM_ILP * width;
    int log2 = 0;
    while (rows > 1 && ((size_t)1 << log2) < rows)
        log2++;
    const int power = log2 / SUM_LEVELS > 4 ? log2 / SUM_LEVELS : 4;
    const size_t step = (size_t)1 << power, mask = step - 1;
    size_t i = 0;
    for (; i + step <= rows;) {
        for (size_t r = 0; r < step; r++, i++)
            for (int c = 0; c < cols; c++)
                acc[0][c] += x[i * cols + c];
        for (int j = 1; j < SUM_LEVELS; j++) {
            for (int c = 0; c < cols; c++) {
                acc[j][c] += acc[j - 1][c];
                acc[j - 1][c] = 0;
            }
            if (i & (mask << (j * power)))
                break;
        }
    }
    for (; i < rows; i++)
        for (int c = 0; c < cols; c++)
            acc[0][c] += x[i * cols + c];
    for (int j = 1; j < SUM_LEVELS; j++)
        for (int c = 0; c < cols; c++)
            acc[0][c] += acc[j][c];
    memcpy(out, acc[0], (size_t)cols * sizeof(float));
}

/* at::native row_sum over `rows` rows of width floats: result in out[width]. */
static void row_sum(const float *x, size_t rows, int width, float *out)
{
    float ps[SUM_ILP * 8];
    size_t n_ilp = rows / SUM_ILP;
    cascade_sum(x, n_ilp, width, ps);
    for (size_t i = n_ilp * SUM_ILP; i < rows; i++)
        for (int c = 0; c < width; c++)
            ps[c] += x[i * width + c];
    for (int k = 1; k < SUM_ILP; k++)
        for (int c = 0; c < width; c++)
            ps[c] += ps[k * width + c];
    memcpy(out, ps, (size_t)width * sizeof(float));
}

static float torch_mean_f32(const float *x, size_t n)
{
    float sum;
    if (n < 8) {
        row_sum(x, n, 1, &sum);
    } else {
        float lanes[8];
        size_t nv = n / 8;
        row_sum(x, nv, 8, lanes);
        sum = 0;
        for (size_t i = nv * 8; i < n; i++)
            sum += x[i];
        for (int l = 0; l < 8; l++)
            sum += lanes[l];
    }
    return sum / (float)n;
}

/* Row means as PyTorch computes them (float32, its summation order), so that bitnet1 and
 * ternary equal a PyTorch reference bit for bit. scratch holds cols floats. */
static float mean_abs(const float *x, int cols, float *scratch)
{
    for (int k = 0; k < cols; k++)
        scratch[k] = fabsf(x[k]);
    return torch_mean_f32(scratch, (size_t)cols);
}

/* Sets bit k of row r's "+1" plane (minus = 0) or "-1" plane (minus = 1). */
static void set_bit(qt_matrix *m, int r, int k, int minus)
{
    qt_format f = m->spec.format;
    qt_panel_row(m, f, r)[((size_t)(k / 32) * qt_traits[f].planes + minus) * QT_PANEL] |= 1u << (k % 32);
}

static int get_bit(const qt_matrix *m, int r, int k, int minus)
{
    qt_format f = m->spec.format;
    return qt_panel_row(m, f, r)[((size_t)(k / 32) * qt_traits[f].planes + minus) * QT_PANEL] >> (k % 32) & 1;
}

static void quantize_bitnet1_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    const int cols = m->cols;
    float alpha = torch_mean_f32(x, (size_t)cols);
    m->scale[r] = mean_abs(x, cols, q->scratch); /* beta */
    for (int k = 0; k < cols; k++)
        if (x[k] - alpha > 0)
            set_bit(m, r, k, 0);
}

static void quantize_ternary_row(qt_matrix *m, int r, const float *x, quant_work *q)
{
    const int cols = m->cols;
    float s = 1.0f / fmaxf(mean_abs(x, cols, q->scratch), 1e-5f);
    m->scale[r] = 1.0f / s; /* c / s for c = +-1 is exactly +-(1 / s) */
    for (int k = 0; k < cols; k++) {
        float c = fminf(fmaxf(rintf(x[k] * s), -1.0f), 1.0f);
        if (c != 0)
            set_bit(m, r, k, c < 0);
    }
}

/* Double quantization, as bitsandbytes' quantize_4bit(compress_statistics=True):
 * absmax minus its mean, in groups of 256 with one fp32 absmax each, coded with the
 * dynamic map by the CPU backend's rule (a division, then nearest map value). */
static void double_quantize(qt_matrix *m, const float *absmax, size_t nblocks)
{
    m->offset = torch_mean_f32(absmax, nblocks);
    for (size_t g0 = 0; g0 < nblocks; g0 += QT_DQ_GROUP) {
        size_t g1 = g0 + QT_DQ_GROUP < nblocks ? g0 + QT_DQ_GROUP : nblocks;
        float amax = 0;
        for (size_t b = g0; b < g1; b++)
            amax = fmaxf(amax, fabsf(absmax[b] - m->offset));
        m->absmax2[g0 / QT_DQ_GROUP] = amax;
        for (size_t b = g0; b < g1; b++)
            m->qabsmax[qt_block_slot(m, m->spec.format, b)] = amax > 0 ? dynamic_code((absmax[b] - m->offset) / amax) : 127;
    }
}

/* ---- reference decode: columns [k0, k1) of row r into out[k0 .. k1) ---- */

static void decode_f32(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const float *row = (const float *)(m->data + (size_t)r * m->row_bytes);
    memcpy(out + k0, row + k0, (size_t)(k1 - k0) * sizeof(float));
}

static void decode_bnb4(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const float *t = qt_traits[m->spec.format].table;
    const size_t b0 = (size_t)r * m->blocks_per_row;
    for (int k = k0; k < k1; k++)
        out[k] = t[get_code(m, r, k)] * qt_block_absmax(m, b0 + k / m->spec.block);
}

static void decode_int8(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const int8_t *row = (const int8_t *)(m->data + (size_t)r * m->row_bytes);
    const size_t b0 = (size_t)r * m->blocks_per_row;
    for (int k = k0; k < k1; k++)
        out[k] = (float)row[k] * m->scale[b0 + k / m->spec.block];
}

static void decode_int4(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const uint8_t *row = m->data + (size_t)r * m->row_bytes;
    const size_t b0 = (size_t)r * m->blocks_per_row;
    for (int k = k0; k < k1; k++) {
        size_t b = b0 + k / m->spec.block;
        out[k] = m->scale[b] * (float)((int32_t)get_nibble(row, k) - m->zero[b]);
    }
}

static void decode_bitnet1(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    for (int k = k0; k < k1; k++)
        out[k] = get_bit(m, r, k, 0) ? m->scale[r] : -m->scale[r];
}

static void decode_ternary(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    for (int k = k0; k < k1; k++)
        out[k] = get_bit(m, r, k, 0) ? m->scale[r] : get_bit(m, r, k, 1) ? -m->scale[r] : 0.0f;
}

/* ggml's types: block by block, the block's constants once (ggml_blocks.h). */
static void decode_ggml(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const int fmt = m->spec.format, values = qt_ggml_traits[fmt].values, G = ggml_group(fmt);
    const uint8_t *row = m->data + (size_t)r * m->row_bytes;
    for (int b0 = k0 / values * values; b0 < k1; b0 += values) {
        const uint8_t *blk = row + (size_t)(b0 / values) * qt_ggml_traits[fmt].bytes;
        float s[QT_GGML_MAX_GROUPS], b[QT_GGML_MAX_GROUPS];
        ggml_block_consts(fmt, blk, s, b);
        for (int k = b0 > k0 ? b0 : k0, k2 = b0 + values < k1 ? b0 + values : k1; k < k2; k++) {
            int e = k - b0;
            out[k] = ggml_weight(fmt, ggml_code(fmt, blk, e), s[e / G], b[e / G]);
        }
    }
}

static void decode_f16(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const uint8_t *row = m->data + (size_t)r * m->row_bytes;
    for (int k = k0; k < k1; k++)
        out[k] = qt_f16_to_f32(qt_load_u16(row + 2 * (size_t)k));
}

static void decode_bf16(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    const uint8_t *row = m->data + (size_t)r * m->row_bytes;
    for (int k = k0; k < k1; k++)
        out[k] = qt_bf16_to_f32(qt_load_u16(row + 2 * (size_t)k));
}

/* ---- the codecs: each format's functions, generated from QT_FORMATS ---- */

typedef struct {
    void (*quantize_row)(qt_matrix *m, int r, const float *x, quant_work *q);
    void (*decode)(const qt_matrix *m, int r, int k0, int k1, float *out);
} format_codec;

#define CODEC_(id, name, bits, planes, layout, block, scale, dq, table, codec)                \
    [id] = {quantize_##codec##_row, decode_##codec},
static const format_codec codecs[QT_NFORMATS] = {QT_FORMATS(CODEC_)};
#undef CODEC_

/* ---- matrices ---- */

/* What array a of m (rows, cols, spec set) holds, in bytes: 0 where the format has none. */
static size_t array_bytes(const qt_matrix *m, qt_array a)
{
    const qt_format_traits *t = &qt_traits[m->spec.format];
    size_t nblocks = (size_t)m->rows * (size_t)m->blocks_per_row, slots = qt_block_slots(m);
    int dq = m->spec.double_quant;
    switch (a) {
    case QT_ARRAY_DATA: return qt_stored_rows(m) * m->row_bytes;
    case QT_ARRAY_SCALE:
        return t->scale != QT_SCALE_NONE && t->scale != QT_SCALE_GGML && !dq ? slots * sizeof(float) : 0;
    case QT_ARRAY_ZERO: return t->scale == QT_SCALE_AFFINE ? slots * sizeof(int32_t) : 0;
    case QT_ARRAY_QABSMAX: return dq ? slots : 0;
    case QT_ARRAY_ABSMAX2: return dq ? (nblocks + QT_DQ_GROUP - 1) / QT_DQ_GROUP * sizeof(float) : 0;
    default: return 0;
    }
}

static void **array_slot(qt_matrix *m, qt_array a)
{
    switch (a) {
#define SLOT_(e, field) case QT_ARRAY_##e: return (void **)&m->field;
        QT_ARRAYS(SLOT_)
#undef SLOT_
    default: return NULL;
    }
}

const void *qt_array_of(const qt_matrix *m, qt_array a)
{
    void **p = array_slot((qt_matrix *)m, a);
    return p ? *p : NULL;
}

static int alloc_matrix(qt_matrix *m, char *err, size_t errlen)
{
    int ok = 1;
    for (int a = 0; a < QT_NARRAYS && ok; a++) {
        size_t bytes = array_bytes(m, (qt_array)a);
        if (!bytes)
            continue;
        /* 64-byte aligned, so that the kernels' vector loads of 16 rows' words stay within a
         * cache line; zeros in the padding, which the decoders may read */
        size_t padded = (bytes + 63) / 64 * 64;
        void *p = aligned_alloc(64, padded);
        if ((ok = p != NULL))
            memset(p, 0, padded);
        *array_slot(m, (qt_array)a) = p;
    }
    if (!ok) {
        snprintf(err, errlen, "out of memory quantizing a %d x %d matrix", m->rows, m->cols);
        qt_free(m);
        return -1;
    }
    return 0;
}

/* ggml's types take whole blocks only, as ggml does. */
static int check_cols(qt_spec spec, int rows, int cols, char *err, size_t errlen)
{
    if (qt_traits[spec.format].scale == QT_SCALE_GGML && cols % spec.block) {
        snprintf(err, errlen, "shape: %s takes rows of whole %d-value blocks, not %d x %d",
                 qt_traits[spec.format].name, spec.block, rows, cols);
        return -1;
    }
    return 0;
}

/* m's spec and shape, and what follows from them (the arrays unset): -1 with a message
 * for a bad spec or shape. */
static int set_shape(qt_matrix *m, qt_spec spec, int rows, int cols, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (qt_spec_check(spec, err, errlen) < 0)
        return -1;
    if (rows <= 0 || cols <= 0) {
        snprintf(err, errlen, "shape: %d x %d has no elements", rows, cols);
        return -1;
    }
    if (check_cols(spec, rows, cols, err, errlen) < 0)
        return -1;
    m->spec = spec;
    m->rows = rows;
    m->cols = cols;
    m->blocks_per_row = qt_traits[spec.format].blockwise ? (cols + spec.block - 1) / spec.block : 1;
    m->row_bytes = qt_row_bytes(spec.format, cols);
    return 0;
}

int qt_array_sizes(qt_spec spec, int rows, int cols, size_t bytes[QT_NARRAYS], char *err, size_t errlen)
{
    qt_matrix m;
    if (set_shape(&m, spec, rows, cols, err, errlen) < 0)
        return -1;
    for (int a = 0; a < QT_NARRAYS; a++)
        bytes[a] = array_bytes(&m, (qt_array)a);
    return 0;
}

int qt_view(qt_matrix *m, qt_spec spec, int rows, int cols, float offset, const void *const arrays[QT_NARRAYS],
            const size_t bytes[QT_NARRAYS], char *err, size_t errlen)
{
    if (set_shape(m, spec, rows, cols, err, errlen) < 0)
        return -1;
    for (int a = 0; a < QT_NARRAYS; a++) {
        size_t want = array_bytes(m, (qt_array)a);
        if (bytes[a] != want || (want && (!arrays[a] || (uintptr_t)arrays[a] % 64))) {
            snprintf(err, errlen, "%s %d x %d: array %d has %zu bytes at %p, its layout wants %zu, 64-byte aligned",
                     qt_format_name(spec.format), rows, cols, a, bytes[a], arrays[a], want);
            memset(m, 0, sizeof *m);
            return -1;
        }
        *array_slot(m, (qt_array)a) = want ? (void *)(uintptr_t)arrays[a] : NULL; /* read only */
    }
    m->offset = offset;
    m->borrowed = 1;
    return 0;
}

int qt_quantize(qt_matrix *m, const float *w, int rows, int cols, qt_spec spec, char *err,
                size_t errlen)
{
    if (set_shape(m, spec, rows, cols, err, errlen) < 0)
        return -1;
    for (size_t i = 0, n = (size_t)rows * cols; i < n; i++)
        if (!isfinite(w[i])) {
            snprintf(err, errlen, "weights: non-finite value %g at row %zu, column %zu",
                     w[i], i / cols, i % cols);
            memset(m, 0, sizeof *m);
            return -1;
        }
    if (alloc_matrix(m, err, errlen) < 0)
        return -1;

    const qt_format_traits *t = &qt_traits[spec.format];
    size_t nblocks = (size_t)rows * m->blocks_per_row;
    quant_work q = {.absmax = NULL, .scratch = NULL};
    int absmax = t->scale == QT_SCALE_ABSMAX, per_row = t->scale == QT_SCALE_ROW;
    if (absmax)
        q.absmax = malloc(nblocks * sizeof(float));
    if (per_row)
        q.scratch = malloc((size_t)cols * sizeof(float));
    if ((absmax && !q.absmax) || (per_row && !q.scratch)) {
        snprintf(err, errlen, "out of memory quantizing a %d x %d matrix", rows, cols);
        qt_free(m);
        return -1;
    }
    if (absmax)
        sort_table(t->table, &q.st);

    for (int r = 0; r < rows; r++)
        codecs[spec.format].quantize_row(m, r, w + (size_t)r * cols, &q);
    if (spec.double_quant)
        double_quantize(m, q.absmax, nblocks);
    else if (absmax)
        for (size_t b = 0; b < nblocks; b++)
            m->scale[qt_block_slot(m, spec.format, b)] = q.absmax[b];
    free(q.absmax);
    free(q.scratch);
    return 0;
}

void qt_free(qt_matrix *m)
{
    if (!m->borrowed) {
        free(m->data);
        free(m->scale);
        free(m->zero);
        free(m->qabsmax);
        free(m->absmax2);
    }
    memset(m, 0, sizeof *m);
}

void qt_decode_range(const qt_matrix *m, int r, int k0, int k1, float *out)
{
    codecs[m->spec.format].decode(m, r, k0, k1, out - k0); /* out indexed by column */
}

size_t qt_bytes(const qt_matrix *m)
{
    size_t nblocks = (size_t)m->rows * (size_t)m->blocks_per_row;
    size_t bytes = qt_stored_rows(m) * m->row_bytes;
    if (m->scale)
        bytes += qt_block_slots(m) * sizeof(float);
    if (m->zero)
        bytes += qt_block_slots(m) * sizeof(int32_t);
    if (m->qabsmax)
        bytes += qt_block_slots(m) + (nblocks + QT_DQ_GROUP - 1) / QT_DQ_GROUP * sizeof(float) +
                 sizeof(float);
    return bytes;
}

double qt_bits_per_param(const qt_matrix *m)
{
    return 8.0 * (double)qt_bytes(m) / ((double)m->rows * m->cols);
}
