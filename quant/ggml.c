/* ggml.c: ggml's tensor types: their reference quantizers, and matrices over ggml blocks
 * (a GGUF tensor in place, or a copy of it).
 *
 * The quantizers produce the bytes of ggml's quantize_row_*_ref (ggml-quants.c), which
 * ggml_quantize_chunk runs without an importance matrix: the same float operations in the
 * same order (this file is built, as all of qlorad, without contraction into FMAs and
 * without reassociation), the same searches over candidate scales, the same rounding
 * helpers. tests/test_ggml.c compares the bytes with ggml's own. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml_blocks.h"

/* ggml's nearest_int: round to nearest even by the magic number 1.5 * 2^23 (valid for
 * |x| < 2^22, which every caller's bounds keep). */
static int nearest_int(float x)
{
    float v = x + 12582912.f;
    return (int)(qt_f32_to_bits(v) & 0x007fffff) - 0x00400000;
}

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

/* ---- 32-value blocks ---- */

static void put_f16(uint8_t *p, float f)
{
    uint16_t h = qt_f32_to_f16(f);
    memcpy(p, &h, sizeof h);
}

/* The value of largest magnitude (the first of equal magnitudes) of x[0 .. n). */
static float signed_absmax(const float *x, int n, float *amax_out)
{
    float amax = 0, max = 0;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    if (amax_out)
        *amax_out = amax;
    return max;
}

static void min_max(const float *x, int n, float *mn, float *mx)
{
    *mn = FLT_MAX;
    *mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn)
            *mn = x[j];
        if (x[j] > *mx)
            *mx = x[j];
    }
}

static void quantize_q8_0(const float *x, uint8_t *y)
{
    float amax = 0;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    put_f16(y, d);
    for (int j = 0; j < 32; j++)
        y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

/* q4_0, q5_0 (bits 4 or 5): d = the largest-magnitude value / -2^(bits-1); codes
 * truncate x / d + 2^(bits-1) + 0.5. */
static void quantize_q_0(const float *x, uint8_t *y, int bits)
{
    const int half = 1 << (bits - 1), top = (1 << bits) - 1;
    const float d = signed_absmax(x, 32, NULL) / (float)-half, id = d ? 1.0f / d : 0.0f;
    put_f16(y, d);
    uint8_t *qs = y + (bits == 4 ? 2 : 6);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const int q0 = imin(top, (int8_t)(x[j] * id + ((float)half + 0.5f)));
        const int q1 = imin(top, (int8_t)(x[j + 16] * id + ((float)half + 0.5f)));
        qs[j] = (uint8_t)((q0 & 15) | (q1 & 15) << 4);
        qh |= (uint32_t)(q0 >> 4 & 1) << j | (uint32_t)(q1 >> 4 & 1) << (j + 16);
    }
    if (bits == 5)
        memcpy(y + 2, &qh, sizeof qh);
}

/* q4_1, q5_1: d = (max - min) / (2^bits - 1), m = min; codes truncate (x - min) / d + 0.5. */
static void quantize_q_1(const float *x, uint8_t *y, int bits)
{
    const int top = (1 << bits) - 1;
    float mn, mx;
    min_max(x, 32, &mn, &mx);
    const float d = (mx - mn) / (float)top, id = d ? 1.0f / d : 0.0f;
    put_f16(y, d);
    put_f16(y + 2, mn);
    uint8_t *qs = y + (bits == 4 ? 4 : 8);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        /* as ggml: q4_1 truncates to int8 and clamps at 15, q5_1 truncates to uint8 (its
         * codes are at most 31 anyway) */
        const float v0 = (x[j] - mn) * id + 0.5f, v1 = (x[j + 16] - mn) * id + 0.5f;
        const int q0 = bits == 4 ? imin(top, (int8_t)v0) : (uint8_t)v0;
        const int q1 = bits == 4 ? imin(top, (int8_t)v1) : (uint8_t)v1;
        qs[j] = (uint8_t)((q0 & 15) | (q1 & 15) << 4);
        qh |= (uint32_t)(q0 >> 4 & 1) << j | (uint32_t)(q1 >> 4 & 1) << (j + 16);
    }
    if (bits == 5)
        memcpy(y + 4, &qh, sizeof qh);
}

/* ---- K-quants ---- */

/* ggml's make_qkx2_quants: codes L[0 .. n) in 0..nmax and a scale and min (returned, and
 * *the_min = -min) for w = scale L + min, minimising the weighted squared error over the
 * first guess and nstep + 1 candidate scales (rmin + rdelta is + nmax) / (max - min). */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * (float)L[i] + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * (float)l;
            sum_l2 += w * (float)l * (float)l;
            sum_xl += w * (float)l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * (float)Laux[i] + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* q4_k (bits 4) and q5_k (bits 5): per 32 values a scale and min by make_qkx2_quants on
 * weights sqrt(mean x^2) + |x|, both coded in 6 bits against the largest of each; then the
 * codes again against the coded scales. */
static void quantize_qk_1(const float *x, uint8_t *y, int bits)
{
    const int nmax = (1 << bits) - 1;
    uint8_t L[256], Laux[32];
    float weights[32], mins[8], scales[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(xs[l]);
        scales[j] = make_qkx2_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux,
                                     bits == 4 ? -1.f : -0.5f, 0.1f, bits == 4 ? 20 : 15);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    uint8_t *sc = y + 4;
    memset(sc, 0, 12);
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; j++) {
        int ls = imin(63, (uint8_t)nearest_int(inv_scale * scales[j]));
        int lm = imin(63, (uint8_t)nearest_int(inv_min * mins[j]));
        if (j < 4) {
            sc[j] = (uint8_t)ls;
            sc[j + 4] = (uint8_t)lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | (lm & 0xF) << 4);
            sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    put_f16(y, max_scale / 63.f);
    put_f16(y + 2, max_min / 63.f);
    for (int j = 0; j < 8; j++) {
        int s, m;
        ggml_scale_min_k4(j, sc, &s, &m);
        const float d = qt_load_f16(y) * (float)s;
        if (!d)
            continue;
        const float dm = qt_load_f16(y + 2) * (float)m;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + i] + dm) / d)));
    }
    uint8_t *qh = y + 16, *qs = y + (bits == 4 ? 16 : 48);
    if (bits == 5)
        memset(qh, 0, 32);
    for (int e = 0; e < 256; e++) { /* value e: nibble e / 32 % 2 of qs[e / 64 * 32 + e % 32] */
        int q = L[e];
        if (e / 32 % 2 == 0)
            qs[e / 64 * 32 + e % 32] = (uint8_t)(q & 15);
        else
            qs[e / 64 * 32 + e % 32] |= (uint8_t)((q & 15) << 4);
        if (bits == 5)
            qh[e % 32] |= (uint8_t)((q >> 4) << (e / 32));
    }
}

/* ggml's make_qx_quants with rmse_type 1 and no importance weights: signed codes
 * L[0 .. n) + nmax, and the scale, over 19 candidate scales -(nmax + 0.1 is) / max
 * weighted by x^2. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L)
{
    float amax;
    const float max = signed_absmax(x, n, &amax);
    if (amax < 1e-15f) { /* ggml's GROUP_MAX_EPS: all zero */
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* q6_k: a scale per 16 values by make_qx_quants, coded in 8 bits against the largest in
 * magnitude; then the codes again against the coded scales. */
static void quantize_q6_k(const float *x, uint8_t *y)
{
    int8_t L[256];
    float scales[16], max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ib++) {
        scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
        if (fabsf(scales[ib]) > max_abs_scale) {
            max_abs_scale = fabsf(scales[ib]);
            max_scale = scales[ib];
        }
    }
    memset(y, 0, 210);
    if (max_abs_scale < 1e-15f) { /* an all-zero block, d = +0 */
        put_f16(y + 208, 0.f);
        return;
    }
    const float iscale = -128.f / max_scale;
    put_f16(y + 208, 1 / iscale);
    int8_t *sc = (int8_t *)(y + 192);
    for (int ib = 0; ib < 16; ib++)
        sc[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
    for (int j = 0; j < 16; j++) {
        const float d = qt_load_f16(y + 208) * (float)sc[j];
        if (!d)
            continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(imax(-32, imin(31, nearest_int(x[16 * j + i] / d))) + 32);
    }
    for (int e = 0; e < 256; e++) { /* the layout of ggml_blocks.h */
        int h = e / 128, sub = e / 32 % 4, l = e % 32, q = (uint8_t)L[e];
        y[64 * h + 32 * (sub & 1) + l] |= (uint8_t)((q & 15) << (4 * (sub >> 1)));
        y[128 + 32 * h + l] |= (uint8_t)((q >> 4) << (2 * sub));
    }
}

void qt_ggml_quantize_row(int fmt, const float *x, int cols, uint8_t *out)
{
    const int values = qt_ggml_traits[fmt].values, bytes = qt_ggml_traits[fmt].bytes;
    for (int b = 0; b < cols / values; b++, x += values, out += bytes) {
        switch (fmt) {
        case QT_Q8_0: quantize_q8_0(x, out); break;
        case QT_Q4_0: quantize_q_0(x, out, 4); break;
        case QT_Q5_0: quantize_q_0(x, out, 5); break;
        case QT_Q4_1: quantize_q_1(x, out, 4); break;
        case QT_Q5_1: quantize_q_1(x, out, 5); break;
        case QT_Q4_K: quantize_qk_1(x, out, 4); break;
        case QT_Q5_K: quantize_qk_1(x, out, 5); break;
        case QT_Q6_K: quantize_q6_k(x, out); break;
        default: break;
        }
    }
}

/* ---- ggml's tensors ---- */

int qt_ggml_format(int type)
{
    for (int f = 0; f < QT_NFORMATS; f++)
        if (qt_ggml_traits[f].name && qt_ggml_traits[f].type == type)
            return f;
    return -1;
}

int qt_format_ggml_type(qt_format f)
{
    return (unsigned)f < QT_NFORMATS && qt_ggml_traits[f].name ? qt_ggml_traits[f].type : -1;
}

const char *qt_ggml_type_name(int type)
{
    int f = qt_ggml_format(type);
    return f < 0 ? NULL : qt_ggml_traits[f].name;
}

size_t qt_ggml_row_bytes(int type, int cols)
{
    int f = qt_ggml_format(type);
    if (f < 0 || cols <= 0 || cols % qt_ggml_traits[f].values)
        return 0;
    return (size_t)cols / (size_t)qt_ggml_traits[f].values * (size_t)qt_ggml_traits[f].bytes;
}

int qt_from_ggml(qt_matrix *m, int type, int rows, int cols, const void *data, size_t len,
                 int borrow, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    const int f = qt_ggml_format(type);
    if (f < 0) {
        snprintf(err, errlen, "ggml type %d is not one qlorad runs (F32, F16, BF16, Q8_0, Q4_0, "
                 "Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)", type);
        return -1;
    }
    const char *name = qt_ggml_traits[f].name;
    const int values = qt_ggml_traits[f].values;
    if (rows <= 0 || cols <= 0) {
        snprintf(err, errlen, "%s tensor of %d x %d has no elements", name, rows, cols);
        return -1;
    }
    if (cols % values) {
        snprintf(err, errlen, "%s tensor of %d x %d: %d columns are not a multiple of its "
                 "%d-value blocks", name, rows, cols, cols, values);
        return -1;
    }
    const size_t row_bytes = qt_row_bytes((qt_format)f, cols);
    if ((size_t)rows > SIZE_MAX / row_bytes || len != (size_t)rows * row_bytes) {
        snprintf(err, errlen, "%s tensor of %d x %d: %zu bytes given, its blocks take %zu",
                 name, rows, cols, len, (size_t)rows * row_bytes);
        return -1;
    }
    if (!data || (f == QT_F32 && (uintptr_t)data % sizeof(float))) {
        snprintf(err, errlen, "%s tensor of %d x %d: data %p is not %s", name, rows, cols, data,
                 data ? "4-byte aligned" : "there");
        return -1;
    }
    m->spec = qt_spec_default((qt_format)f);
    m->rows = rows;
    m->cols = cols;
    m->blocks_per_row = qt_traits[f].blockwise ? cols / m->spec.block : 1;
    m->row_bytes = row_bytes;
    if (borrow) {
        m->data = (uint8_t *)(uintptr_t)data; /* only read: the kernels take const matrices */
        m->borrowed = 1;
        return 0;
    }
    m->data = aligned_alloc(64, (len + 63) / 64 * 64);
    if (!m->data) {
        snprintf(err, errlen, "out of memory copying a %s tensor of %d x %d", name, rows, cols);
        return -1;
    }
    memcpy(m->data, data, len);
    return 0;
}
