/* kernels_body.h: the vectorized kernels, written once over the primitives of a
 * simd_*.h header and compiled once per instruction set (kernels_avx2.c,
 * kernels_avx512.c). Include it after that header.
 *
 * Decoding: a row cursor (rowdec) turns 32 consecutive weights of a row into NV vector
 * registers, with the same arithmetic as the scalar qt_decode_range, so every path gives
 * bit-identical weights. 4-bit formats look codes up in a 16-entry table that already
 * holds the block's scale (table * absmax, or S * (q - Z) for int4).
 *
 * Y = X W^T:
 * - small M (decode): the formats stored row after row decode each weight chunk into
 *   registers and use it at once against up to 4 rows of X; nothing is written but Y.
 *   The panel formats work on 16 rows of W per vector: nf4 and fp4 look codes up
 *   unscaled and scale each block's sums, bitnet1 and ternary look 4 weights at a time up
 *   in tables of partial sums of x.
 * - large M (prefill, training): X is packed transposed in panels of MR_FWD rows; each
 *   thread decodes a tile of NT_FWD weight rows x KC columns into a cache-resident buffer
 *   and runs an outer-product micro-kernel: 2 vectors of X^T times NR_FWD broadcast
 *   weights per step.
 * dX = dY W: dY is packed transposed in panels of MR_BWD rows; each thread owns a strip
 * of KT_BWD columns of dX, decodes NC_BWD x KT_BWD weight tiles, and runs a micro-kernel
 * of MR_BWD broadcast dY values times 2 vectors of a weight row. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "parallel.h"
#include "workspace.h"

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define ALWAYS_INLINE static inline __attribute__((always_inline))

#define NV (32 / VLEN)        /* vectors per 32-weight chunk */
#define MR_FWD (2 * VLEN)     /* rows of X per forward micro-tile */
#define NT_FWD (4 * NR_FWD)   /* weight rows per forward task */
#define KC_FWD 256            /* columns per forward tile (a multiple of 32) */
#define NW_BWD (2 * VLEN)     /* columns of dX per backward micro-tile */
#define KT_BWD (4 * NW_BWD)   /* columns of dX per backward task */
#define NC_BWD 256            /* weight rows per backward tile */
#define SMALL_M 8             /* below this many rows of X, the register-fused path */

/* The shapes of code the decoders and small-M kernels below know: a row of QT_FORMATS of
 * another shape fails to compile here until rowdec_block, rowdec_chunk and a small-M kernel
 * learn it (docs/quantization.md, Adding a format). */
#define KNOWN_SHAPE_(id, name, bits, planes, layout, block, scale, ...)                      \
    _Static_assert((QT_LAYOUT_##layout == QT_LAYOUT_ROWS && (planes) == 1 &&                  \
                    (((bits) == 32 && QT_SCALE_##scale == QT_SCALE_NONE) ||                   \
                     ((bits) == 8 && QT_SCALE_##scale == QT_SCALE_STEP) ||                    \
                     ((bits) == 4 && QT_SCALE_##scale == QT_SCALE_AFFINE))) ||                \
                   (QT_LAYOUT_##layout == QT_LAYOUT_PANEL &&                                  \
                    (((bits) == 4 && (planes) == 1 && QT_SCALE_##scale == QT_SCALE_ABSMAX) || \
                     ((bits) == 1 && QT_SCALE_##scale == QT_SCALE_ROW))),                     \
                   #name ": the vector kernels have no decoder for this shape of code");
QT_FORMATS(KNOWN_SHAPE_)
#undef KNOWN_SHAPE_

static inline int imin(int a, int b) { return a < b ? a : b; }

/* ---- decoding ---- */

typedef struct {
    const qt_matrix *m;
    const uint8_t *row;
    const uint32_t *words; /* panel formats: the row's first word (kernels.h) */
    const float *table;
    size_t b0;  /* index of the row's first block */
    size_t slot0, slot_step; /* where its block constants are: slot0 + j * slot_step */
    /* the block constants, copied out of m so that loops keep them in registers */
    const float *scale;
    const int32_t *zero;
    const uint8_t *qabsmax;
    const float *absmax2;
    float offset;
    int cols;
    int shift;  /* log2(block) */
    lut16 lut;
    float s;
} rowdec;

ALWAYS_INLINE void rowdec_start(rowdec *d, const qt_matrix *m, int r, int fmt)
{
    size_t b0 = (size_t)r * m->blocks_per_row;
    d->m = m;
    d->row = m->data + (size_t)r * m->row_bytes;
    d->words = qt_traits[fmt].layout == QT_LAYOUT_PANEL ? qt_panel_row(m, fmt, r) : NULL;
    d->table = qt_traits[fmt].table;
    d->b0 = b0;
    d->slot0 = qt_block_slot(m, fmt, b0);
    d->slot_step = qt_slot_step(fmt);
    d->scale = m->scale;
    d->zero = m->zero;
    d->qabsmax = m->qabsmax;
    d->absmax2 = m->absmax2;
    d->offset = m->offset;
    d->cols = m->cols;
    d->shift = __builtin_ctz((unsigned)m->spec.block);
    memset(&d->lut, 0, sizeof d->lut); /* set by rowdec_seek; quiets -Wmaybe-uninitialized */
    d->s = qt_traits[fmt].scale == QT_SCALE_ROW ? m->scale[r] : 0.0f;
}

/* Nibble codes stored row after row (int4) decode fastest in "split" order: vector v
 * holds elements (v / 2) * 2 * VLEN + 2 * lane + v % 2 of the chunk (high nibbles, then low
 * nibbles, of each VLEN bytes). Their matrix-vector product uses it with x permuted the
 * same way. */
static inline int split_order(int fmt)
{
    return qt_traits[fmt].layout == QT_LAYOUT_ROWS && qt_traits[fmt].bits == 4;
}

static inline int split_element(int p)
{
    int v = p / VLEN, lane = p % VLEN;
    return v / 2 * 2 * VLEN + 2 * lane + v % 2;
}

/* Loads the constants of block j of the row: the step, or the 16 weights of a nibble. */
ALWAYS_INLINE void rowdec_block(rowdec *d, int fmt, size_t j)
{
    size_t slot = d->slot0 + j * d->slot_step;
    switch (qt_traits[fmt].scale) {
    case QT_SCALE_STEP:
        d->s = d->scale[slot];
        break;
    case QT_SCALE_AFFINE:
        d->lut = lut_affine(d->scale[slot], d->zero[slot]);
        break;
    case QT_SCALE_ABSMAX: {
        float absmax = d->qabsmax ? qt_dq_absmax(d->qabsmax[slot], d->absmax2[(d->b0 + j) / QT_DQ_GROUP],
                                                 d->offset)
                                  : d->scale[slot];
        d->lut = lut_scaled(d->table, absmax);
        break;
    }
    default: /* nothing per block */
        break;
    }
}

/* Loads the constants of the block holding column k and returns the column where that
 * block ends (the row's end for per-row formats). Blocks are multiples of 32, so chunks
 * never straddle them. */
ALWAYS_INLINE int rowdec_seek(rowdec *d, int fmt, int k)
{
    if (!qt_traits[fmt].blockwise)
        return d->cols;
    int j = k >> d->shift;
    rowdec_block(d, fmt, (size_t)j);
    return imin((j + 1) << d->shift, d->cols);
}

/* The bytes of 32 columns of a row stored row after row. */
static inline size_t chunk_bytes(int fmt)
{
    return qt_row_bytes(fmt, 32);
}

/* rowdec_chunk of the formats stored row after row, from the chunk's address p in the row
 * (loops that walk a row keep a pointer rather than recomputing it from k); nibbles in
 * split order when `split`. */
ALWAYS_INLINE void rowdec_chunk_at(const rowdec *d, int fmt, int split, const uint8_t *p, vf *out)
{
    if (qt_traits[fmt].bits == 32) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            out[v] = vload((const float *)p + v * VLEN);
    } else if (qt_traits[fmt].bits == 8) {
        decode_int8_32((const int8_t *)p, d->s, out);
    } else if (split) {
        decode_nibbles32_split(p, d->lut, out);
    } else { /* the first element of each byte in its high nibble */
        decode_nibbles32(_mm_loadu_si128((const __m128i *)p), 1, d->lut, out);
    }
}

/* Weights [k, k+32) of the row, in natural order; k is a multiple of 32, k + 32 <= cols,
 * and rowdec_seek has loaded the block holding k. */
ALWAYS_INLINE void rowdec_chunk(const rowdec *d, int fmt, size_t k, vf *out)
{
    const int planes = qt_traits[fmt].planes;
    const uint32_t *w;
    if (qt_traits[fmt].layout == QT_LAYOUT_ROWS) {
        rowdec_chunk_at(d, fmt, 0, d->row + k / 32 * chunk_bytes(fmt), out);
    } else if (qt_traits[fmt].bits == 4) { /* 4 words of 8 codes, a panel word (16 words) apart */
        w = d->words + k / 8 * QT_PANEL;
        decode_nibbles32(_mm_setr_epi32((int)w[0], (int)w[QT_PANEL], (int)w[2 * QT_PANEL],
                                        (int)w[3 * QT_PANEL]), 0, d->lut, out);
    } else { /* a word of 32 bits per plane; one plane: the bits not set are -s */
        w = d->words + k / 32 * planes * QT_PANEL;
        decode_bits32(w[0], planes == 2 ? w[QT_PANEL] : ~w[0], d->s, out);
    }
}

/* Rows [r0, r0 + nrows) x columns [k0, k0 + kc) into t (row stride ld); rows past the
 * matrix and columns up to ld are zero, so micro-kernels can run on whole tiles. */
ALWAYS_INLINE void decode_tile_fmt(const qt_matrix *m, int fmt, int r0, int nrows, int k0,
                                   int kc, int ld, float *t)
{
    int kv = k0 + kc / 32 * 32;
    for (int i = 0; i < nrows; i++) {
        float *o = t + (size_t)i * ld;
        int r = r0 + i;
        if (r >= m->rows) {
            memset(o, 0, (size_t)ld * sizeof(float));
            continue;
        }
        rowdec d;
        rowdec_start(&d, m, r, fmt);
        for (int k = k0; k < kv;) {
            int kb = imin(rowdec_seek(&d, fmt, k), kv);
            for (; k < kb; k += 32) {
                vf c[NV];
                rowdec_chunk(&d, fmt, k, c);
                for (int v = 0; v < NV; v++)
                    vstore(o + (k - k0) + v * VLEN, c[v]);
            }
        }
        if (kv < k0 + kc)
            qt_decode_range(m, r, kv, k0 + kc, o + (kv - k0));
        if (kc < ld)
            memset(o + kc, 0, (size_t)(ld - kc) * sizeof(float));
    }
}

/* decode_tile_fmt with the format a constant: one instance per row of QT_FORMATS. */
static void decode_tile(const qt_matrix *m, int r0, int nrows, int k0, int kc, int ld, float *t)
{
    switch (m->spec.format) {
#define DECODE_TILE_(F, ...)                                                              \
    case F: decode_tile_fmt(m, F, r0, nrows, k0, kc, ld, t); break;
        QT_FORMATS(DECODE_TILE_)
#undef DECODE_TILE_
    default: break;
    }
}

/* ---- Y = X W^T, small M ---- */

/* Tasks of a small-M product of `work` vector lanes (a lane of a decoded format's FMA
 * is one multiply-add, a lane of a lookup four): each task of at least ~256K, so that
 * handing it to another thread costs little beside it (a small layer runs on the caller
 * alone), and up to 8 per thread, so that a thread the machine takes away leaves little
 * behind. */
static int small_m_tasks(long work)
{
    long most = 8L * rt_threads();
    return (int)((work >> 18) < 1 ? 1 : (work >> 18) < most ? work >> 18 : most);
}

typedef struct {
    const qt_matrix *w;
    const float *x;  /* rows of X as the kernel wants them (gemv_prepare, panel_prepare) */
    float *y;
    int M, accumulate;
    int per_task;    /* rows of W (stored row after row) or panels per task */
} small_ctx;

/* ---- small M, formats stored row after row: decode into registers ---- */

/* x in split order chunk by chunk (the ragged tail stays in natural order). */
static float *split_x(const float *x, int M, int K)
{
    float *xs = rt_workspace(RT_WS_PACK, (size_t)M * K * sizeof(float));
    if (!xs)
        return NULL;
    for (int m = 0; m < M; m++) {
        const float *src = x + (size_t)m * K;
        float *dst = xs + (size_t)m * K;
        int kv = K / 32 * 32;
        for (int k = 0; k < kv; k += 32)
            for (int p = 0; p < 32; p++)
                dst[k + p] = src[k + split_element(p)];
        memcpy(dst + kv, src + kv, (size_t)(K - kv) * sizeof(float));
    }
    return xs;
}

/* One row of X needs two chunks in flight to hide the FMA latency; more rows bring their
 * own independent accumulators. */
#define GEMV_UNROLL(MG) ((MG) == 1 ? 2 : 1)

/* acc[i][u] += the weights [k, k + 32) of the row times those of row i of x. */
ALWAYS_INLINE void gemv_chunk(const rowdec *d, int fmt, int MG, size_t K, const uint8_t *p,
                              const float *x, vf acc[4][2][NV], int u)
{
    vf wv[NV];
    rowdec_chunk_at(d, fmt, split_order(fmt), p, wv);
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][u][v] = vfma(wv[v], vload(x + i * K + v * VLEN), acc[i][u][v]);
}

ALWAYS_INLINE void gemv_rows_fmt(const small_ctx *c, int fmt, int bs, int MG, int m0, int n0, int n1)
{
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, U = GEMV_UNROLL(MG);
    const size_t kv = (size_t)K / 32 * 32;
    const float *x = c->x + (size_t)m0 * K;
    /* Columns that share block constants, bs where the caller knows it: a block, or the
     * whole row. Whole spans first, then what is left of the row's last block. */
    const size_t span = !qt_traits[fmt].blockwise ? kv : bs ? (size_t)bs : (size_t)w->spec.block;
    const size_t spans = span ? kv / span : 0;
    for (int n = n0; n < n1; n++) {
        rowdec d;
        rowdec_start(&d, w, n, fmt);
        vf acc[4][2][NV]; /* [row][unroll][vector] */
#pragma GCC unroll 4
        for (int i = 0; i < MG; i++)
#pragma GCC unroll 2
            for (int u = 0; u < U; u++)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[i][u][v] = vzero();
        /* p and xk walk the row's codes and x chunk by chunk */
        const size_t step = chunk_bytes(fmt);
        const uint8_t *p = d.row;
        const float *xk = x;
        for (size_t j = 0; j < spans; j++) {
            rowdec_block(&d, fmt, j);
            size_t left = span;
            for (; left >= 32 * (size_t)U; left -= 32 * U, p += U * step, xk += 32 * U)
#pragma GCC unroll 2
                for (int u = 0; u < U; u++)
                    gemv_chunk(&d, fmt, MG, K, p + u * step, xk + 32 * u, acc, u);
            if (left) { /* 32-column blocks */
                gemv_chunk(&d, fmt, MG, K, p, xk, acc, 0);
                p += step, xk += 32;
            }
        }
        if (xk < x + kv)
            rowdec_block(&d, fmt, spans);
        for (; xk < x + kv; p += step, xk += 32)
            gemv_chunk(&d, fmt, MG, K, p, xk, acc, 0);
        float tail[32];
        if (kv < (size_t)K)
            qt_decode_range(w, n, (int)kv, K, tail);
#pragma GCC unroll 4
        for (int i = 0; i < MG; i++) {
            vf sum = acc[i][0][0];
#pragma GCC unroll 2
            for (int u = 0; u < U; u++)
#pragma GCC unroll 4
                for (int v = u == 0; v < NV; v++)
                    sum = vadd(sum, acc[i][u][v]);
            float s = vhsum(sum);
            for (size_t t = kv; t < (size_t)K; t++)
                s += tail[t - kv] * x[(size_t)i * K + t];
            float *out = c->y + (size_t)(m0 + i) * N + n;
            *out = c->accumulate ? *out + s : s;
        }
    }
}

/* Task t of a small-M product: rows [t * per_task, (t + 1) * per_task) of W. */
ALWAYS_INLINE void gemv_task_fmt(const small_ctx *c, int fmt, int t)
{
    const int n0 = t * c->per_task, n1 = imin(n0 + c->per_task, c->w->rows);
    for (int m0 = 0; m0 < c->M; m0 += 4) {
        switch (imin(4, c->M - m0)) {
        case 1: /* the default block as a constant: a block is then two straight chunks */
            if (c->w->spec.block == 64 && qt_traits[fmt].blockwise)
                gemv_rows_fmt(c, fmt, 64, 1, m0, n0, n1);
            else
                gemv_rows_fmt(c, fmt, 0, 1, m0, n0, n1);
            break;
        case 2: gemv_rows_fmt(c, fmt, 0, 2, m0, n0, n1); break;
        case 3: gemv_rows_fmt(c, fmt, 0, 3, m0, n0, n1); break;
        default: gemv_rows_fmt(c, fmt, 0, 4, m0, n0, n1); break;
        }
    }
}

/* What the kernels take for x: the rows in split order for nibble codes, else x itself;
 * *work: the vector lanes of the product (small_m_tasks). NULL when out of memory. */
static const float *gemv_prepare(const qt_matrix *w, const float *x, int M, long *work)
{
    *work = (long)M * w->rows * w->cols;
    return split_order(w->spec.format) ? split_x(x, M, w->cols) : x;
}

/* ---- Y = X W^T, small M, panel formats: 16 rows of W at a time ----
 * Both kernels load a panel word (kernels.h) as 16 lanes, one row of W each, and shift it
 * by 4g so that nibble g of every lane indexes a 16-entry table (vpermps):
 * - bitnet1, ternary: the lookup-table idea of T-MAC and of bitnet.cpp's TL kernels, in
 *   fp32 on bit planes. For every 4 consecutive columns of a row of x, a table holds what
 *   each pattern of 4 weight bits contributes (bitnet1: the sum of bit ? x : -x over the 4
 *   columns; ternary, for either plane: the sum of x over the set bits), built once per
 *   call and shared by all N rows. Nibble g of word c indexes table 8c + g, so one lookup
 *   and one add do 4 multiply-adds for 16 rows. The row scale (beta, or ternary's step)
 *   multiplies the finished sum.
 * - nf4, fp4: nibble g of word c is the code of column 8c + g; its lookup in the code
 *   table gives the 16 rows' unscaled weights, and one FMA with that element of x
 *   broadcast adds them in. Each block's sums are then scaled at once by the 16 rows'
 *   absmax, stored side by side (qt_block_slot). Decoding row by row instead costs an
 *   index vector per 16 weights and, per block, a scalar absmax decode and a scaled table. */

#define PANEL_ROWS 4 /* rows of X per pass over a panel, sharing its loads and lookups */
#define LUT_GROUPS 8 /* 4-column groups per 32-column word */

/* small_ctx.x of the panel kernels: bit codes (bitnet1, ternary), per row of X its tables
 * ([words * LUT_GROUPS][16]); nibble codes (nf4, fp4), the rows of X padded with zeros to
 * whole words. */

/* The tables of one row of x (columns past K count as zero); with one plane a bit not set
 * stands for -x. */
static void lut_tables(const float *x, int K, int words, int planes, float *t)
{
    float sel[4][16]; /* the factor of column i of a group in entry e */
    for (int i = 0; i < 4; i++)
        for (int e = 0; e < 16; e++)
            sel[i][e] = e >> i & 1 ? 1.0f : planes == 1 ? -1.0f : 0.0f;
    for (int g = 0; g < words * LUT_GROUPS; g++, t += 16) {
        float xg[4];
        for (int i = 0; i < 4; i++)
            xg[i] = 4 * g + i < K ? x[4 * g + i] : 0.0f;
#pragma GCC unroll 2
        for (int h = 0; h < 16; h += VLEN) {
            vf v = vzero();
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) /* exact products by +-1 or 0: one rounding per add */
                v = vfma(vset1(xg[i]), vload(sel[i] + h), v);
            vstore(t + h, v);
        }
    }
}

/* acc[i] += row m0 + i of X times the panel's rows, bit codes. */
ALWAYS_INLINE void lut_rows_fmt(const small_ctx *c, int fmt, int MG, int m0, int p,
                                vf acc[PANEL_ROWS][QT_PANEL / VLEN])
{
    const qt_matrix *w = c->w;
    const int words = qt_panel_words(w, fmt), planes = qt_traits[fmt].planes;
    const size_t tstride = (size_t)words * LUT_GROUPS * 16; /* floats per row of x */
    const uint32_t *q = qt_panel_row(w, fmt, p * QT_PANEL);
    const float *t = c->x + (size_t)m0 * tstride;
    for (int cw = 0; cw < words; cw++, q += planes * QT_PANEL, t += LUT_GROUPS * 16) {
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++) {
            vi plus = vload_i(q + h * VLEN);
            vi minus = planes == 2 ? vload_i(q + QT_PANEL + h * VLEN) : plus;
#pragma GCC unroll 4
            for (int i = 0; i < MG; i++) {
                vf s[LUT_GROUPS];
#pragma GCC unroll 8
                for (int g = 0; g < LUT_GROUPS; g++) {
                    lut16 tg = lut_load(t + i * tstride + g * 16);
                    s[g] = vlookup16(vsrli(plus, 4 * g), tg);
                    if (planes == 2)
                        s[g] = vsub(s[g], vlookup16(vsrli(minus, 4 * g), tg));
                }
                /* a tree, so that only one add per word waits on the accumulator */
#pragma GCC unroll 3
                for (int step = 1; step < LUT_GROUPS; step *= 2)
#pragma GCC unroll 4
                    for (int g = 0; g < LUT_GROUPS; g += 2 * step)
                        s[g] = vadd(s[g], s[g + step]);
                acc[i][h] = vadd(acc[i][h], s[0]);
            }
        }
    }
}

/* The absmax of a block of the panel's rows at `slot`: qt_block_absmax, 16 at a time;
 * a2 holds their double-quant groups' absmax2. */
ALWAYS_INLINE vf nib_absmax(const qt_matrix *w, int dq, size_t slot, vf a2)
{
    if (!dq)
        return vload(w->scale + slot);
    return vadd(vmul(vlookup256(vload_u8(w->qabsmax + slot), qt_dynamic_map_table), a2),
                vset1(w->offset));
}

/* The first block after j at which one of the panel's rows (rowb: the row-major index of
 * each row's first block) enters another double-quant group. */
static int nib_next_group(const int32_t *rowb, int j)
{
    int next = j + QT_DQ_GROUP;
    for (int r = 0; r < QT_PANEL; r++)
        next = imin(next, j + QT_DQ_GROUP - (rowb[r] + j) % QT_DQ_GROUP);
    return next;
}

/* acc[i] += row m0 + i of X times the panel's rows, nibble codes. */
ALWAYS_INLINE void nib_rows_fmt(const small_ctx *c, int fmt, int dq, int MG, int m0, int p,
                                vf acc[PANEL_ROWS][QT_PANEL / VLEN])
{
    const qt_matrix *w = c->w;
    const int words = qt_panel_words(w, fmt), bpr = w->blocks_per_row, bw = w->spec.block / 8;
    const int NP = MG == 1 ? 4 : MG == 2 ? 2 : 1; /* partial sums per row of X, for the FMA latency */
    const size_t xstride = (size_t)words * 8;
    const uint32_t *q = qt_panel_row(w, fmt, p * QT_PANEL);
    const float *x = c->x + (size_t)m0 * xstride;
    const lut16 table = lut_load(qt_traits[fmt].table);
    int32_t rowb[QT_PANEL]; /* the padding rows of the last panel borrow the last row's */
    for (int r = 0; r < QT_PANEL; r++)
        rowb[r] = imin(p * QT_PANEL + r, w->rows - 1) * bpr;
    /* dq: the rows' absmax2, gathered again only where a row enters another group (never
     * within a row when its blocks divide 256) */
    vf a2[QT_PANEL / VLEN] = {vzero()}; /* (set at j = 0; the initializer quiets GCC) */
    int regroup = 0;
    for (int j = 0; j < bpr; j++) {
        if (dq && j == regroup) {
            _Static_assert(QT_DQ_GROUP == 256, "the group is found by a shift");
#pragma GCC unroll 2
            for (int h = 0; h < QT_PANEL / VLEN; h++)
                a2[h] = vgather(w->absmax2, vsrli(vadd_i(vload_i((const uint32_t *)rowb + h * VLEN),
                                                         vset1_i(j)), 8));
            regroup = nib_next_group(rowb, j);
        }
        vf part[PANEL_ROWS][4][QT_PANEL / VLEN];
#pragma GCC unroll 4
        for (int i = 0; i < MG; i++)
#pragma GCC unroll 4
            for (int u = 0; u < NP; u++)
#pragma GCC unroll 2
                for (int h = 0; h < QT_PANEL / VLEN; h++)
                    part[i][u][h] = vzero();
        for (int cw = j * bw, c1 = imin(cw + bw, words); cw < c1; cw++) {
#pragma GCC unroll 2
            for (int h = 0; h < QT_PANEL / VLEN; h++) {
                vi v = vload_i(q + (size_t)cw * QT_PANEL + h * VLEN);
#pragma GCC unroll 8
                for (int g = 0; g < 8; g++) {
                    vf wt = vlookup16(g ? vsrli(v, 4 * g) : v, table);
#pragma GCC unroll 4
                    for (int i = 0; i < MG; i++)
                        part[i][g % NP][h] = vfma(wt, vset1(x[i * xstride + (size_t)cw * 8 + g]),
                                                  part[i][g % NP][h]);
                }
            }
        }
        const size_t slot = ((size_t)p * bpr + j) * QT_PANEL;
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++) {
            vf a = nib_absmax(w, dq, slot + h * VLEN, a2[h]);
#pragma GCC unroll 4
            for (int i = 0; i < MG; i++) {
                vf sum = part[i][0][h];
#pragma GCC unroll 4
                for (int u = 1; u < NP; u++)
                    sum = vadd(sum, part[i][u][h]);
                acc[i][h] = vfma(sum, a, acc[i][h]);
            }
        }
    }
}

/* Y's entries of rows m0 .. m0 + MG - 1 of X for the panel's rows. */
ALWAYS_INLINE void panel_rows(const small_ctx *c, int fmt, int dq, int MG, int m0, int p)
{
    const qt_matrix *w = c->w;
    vf acc[PANEL_ROWS][QT_PANEL / VLEN];
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++)
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++)
            acc[i][h] = vzero();
    if (qt_traits[fmt].bits == 1)
        lut_rows_fmt(c, fmt, MG, m0, p, acc);
    else
        nib_rows_fmt(c, fmt, dq, MG, m0, p, acc);
    const int n0 = p * QT_PANEL, nr = imin(QT_PANEL, w->rows - n0);
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++) {
        float sum[QT_PANEL];
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++)
            vstore(sum + h * VLEN, acc[i][h]);
        float *yr = c->y + (size_t)(m0 + i) * w->rows + n0;
        for (int r = 0; r < nr; r++) {
            float v = qt_traits[fmt].scale == QT_SCALE_ROW ? w->scale[n0 + r] * sum[r] : sum[r];
            yr[r] = c->accumulate ? yr[r] + v : v;
        }
    }
}

ALWAYS_INLINE void panel_task_dq(const small_ctx *c, int fmt, int dq, int p0, int p1)
{
    for (int p = p0; p < p1; p++)
        for (int m0 = 0; m0 < c->M; m0 += PANEL_ROWS) {
            switch (imin(PANEL_ROWS, c->M - m0)) {
            case 1: panel_rows(c, fmt, dq, 1, m0, p); break;
            case 2: panel_rows(c, fmt, dq, 2, m0, p); break;
            case 3: panel_rows(c, fmt, dq, 3, m0, p); break;
            default: panel_rows(c, fmt, dq, 4, m0, p); break;
            }
        }
}

/* Task t of a small-M product: panels [t * per_task, (t + 1) * per_task) of W, with
 * double_quant as a constant in the hot loop. */
ALWAYS_INLINE void panel_task_fmt(const small_ctx *c, int fmt, int t)
{
    const int panels = (c->w->rows + QT_PANEL - 1) / QT_PANEL;
    const int p0 = t * c->per_task, p1 = imin(p0 + c->per_task, panels);
    if (qt_traits[fmt].dq && c->w->spec.double_quant)
        panel_task_dq(c, fmt, 1, p0, p1);
    else
        panel_task_dq(c, fmt, 0, p0, p1);
}

/* What the panel kernels take for x (small_ctx.x above), and *work the vector lanes of the
 * product (small_m_tasks). NULL when out of memory. */
static const float *panel_prepare(const qt_matrix *w, const float *x, int M, long *work)
{
    const qt_format f = w->spec.format;
    const int K = w->cols, words = qt_panel_words(w, f);
    if (qt_traits[f].bits == 1) {
        const size_t tstride = (size_t)words * LUT_GROUPS * 16;
        float *tables = rt_workspace(RT_WS_PACK, (size_t)M * tstride * sizeof(float));
        if (!tables)
            return NULL;
        for (int m = 0; m < M; m++)
            lut_tables(x + (size_t)m * K, K, words, qt_traits[f].planes, tables + (size_t)m * tstride);
        *work = (long)M * w->rows * words * LUT_GROUPS * qt_traits[f].planes;
        return tables;
    }
    const size_t xstride = (size_t)words * 8;
    float *xp = rt_workspace(RT_WS_PACK, (size_t)M * xstride * sizeof(float));
    if (!xp)
        return NULL;
    for (int m = 0; m < M; m++) { /* rows padded with zeros to whole panel words */
        memcpy(xp + m * xstride, x + (size_t)m * K, (size_t)K * sizeof(float));
        memset(xp + m * xstride + K, 0, (xstride - K) * sizeof(float));
    }
    *work = (long)M * w->rows * K;
    return xp;
}

/* ---- small M: one task function per format ----
 * Each a function of its own: in a single function holding every format's loops, the
 * register allocator spills the pointers of the hot loops. */
#define SMALL_M_TASK_(F, ...)                                                             \
    static void small_m_task_##F(void *ctx, int t, int thread)                           \
    {                                                                                     \
        (void)thread;                                                                     \
        if (qt_traits[F].layout == QT_LAYOUT_ROWS)                                        \
            gemv_task_fmt(ctx, F, t);                                                     \
        else                                                                              \
            panel_task_fmt(ctx, F, t);                                                    \
    }
QT_FORMATS(SMALL_M_TASK_)
#undef SMALL_M_TASK_

#define SMALL_M_TASK_NAME_(F, ...) [F] = small_m_task_##F,
static const rt_task_fn small_m_task[QT_NFORMATS] = {QT_FORMATS(SMALL_M_TASK_NAME_)};
#undef SMALL_M_TASK_NAME_

/* Y = X W^T for M < SMALL_M: rows (or panels) of W split among the tasks. */
static int small_m_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    const qt_format f = w->spec.format;
    const int rows_layout = qt_traits[f].layout == QT_LAYOUT_ROWS;
    long work = 0;
    small_ctx c = {w, NULL, y, M, accumulate, 0};
    c.x = rows_layout ? gemv_prepare(w, x, M, &work) : panel_prepare(w, x, M, &work);
    if (!c.x)
        return -1;
    int items = rows_layout ? w->rows : (w->rows + QT_PANEL - 1) / QT_PANEL;
    int tasks = small_m_tasks(work);
    c.per_task = (items + tasks - 1) / tasks;
    rt_parallel((items + c.per_task - 1) / c.per_task, small_m_task[f], &c);
    return 0;
}

/* ---- Y = X W^T, large M: decoded tiles and an outer-product micro-kernel ---- */

/* Rows of the large-M products are split in rt_threads() chunks of panels, chunk c being
 * [c * panels / chunks, (c + 1) * panels / chunks): the same split as rt_parallel's shares
 * of the pack tasks (one per panel), and tasks numbered chunk-major, so that each thread
 * gets its own chunk first and multiplies the rows it packed and produced in the step
 * before, still in its cache (docs/quantization.md, Kernels). A chunk may be empty (fewer
 * panels than threads). When the pool is busy and the caller runs every task itself, it
 * decodes each weight tile once per chunk, against a chunk's rows of FMAs per decode. */
static inline int chunk_panel(int c, int panels)
{
    return (int)((long)c * panels / rt_threads());
}

typedef struct {
    const qt_matrix *w;
    const float *x;
    float *xt;    /* X^T in panels: xt[(p * K + k) * MR_FWD + i] = X[p * MR_FWD + i][k] */
    float *y;
    float *scratch;
    int M, accumulate;
    int panels, blocks; /* task t: chunk t / blocks (chunk_panel), weight block t % blocks */
} gemm_ctx;

/* dst[k * mr + i] = row i of src (len floats, rows `len` apart) at k, for i < mr and
 * k < len; rows from `valid` on are zeros: a panel of X (forward) or dY (backward). */
static void pack_transposed(float *restrict dst, const float *restrict src, int valid, int mr, int len)
{
    /* in blocks of 64 columns, so that the block of dst being filled stays in L1 */
    for (int k0 = 0; k0 < len; k0 += 64) {
        int kn = imin(64, len - k0);
        for (int i = 0; i < mr; i++) {
            float *d = dst + (size_t)k0 * mr + i;
            const float *s = src + (size_t)i * len + k0;
            if (i < valid)
                for (int k = 0; k < kn; k++)
                    d[(size_t)k * mr] = s[k];
            else
                for (int k = 0; k < kn; k++)
                    d[(size_t)k * mr] = 0.0f;
        }
    }
}

static void pack_x_task(void *ctx, int p, int thread)
{
    (void)thread;
    const gemm_ctx *c = ctx;
    const int K = c->w->cols;
    pack_transposed(c->xt + (size_t)p * K * MR_FWD, c->x + (size_t)p * MR_FWD * K, c->M - p * MR_FWD, MR_FWD, K);
}

/* c[j][i] = sum over k of xp[k][i] * wd[j][k], for a whole MR_FWD x NR_FWD tile. */
static inline void micro_fwd(int kc, const float *xp, const float *wd, int ldw, float *c)
{
    vf acc[NR_FWD][2];
#pragma GCC unroll 16
    for (int j = 0; j < NR_FWD; j++)
        acc[j][0] = acc[j][1] = vzero();
    for (int k = 0; k < kc; k++) {
        vf a0 = vload(xp + (size_t)k * MR_FWD), a1 = vload(xp + (size_t)k * MR_FWD + VLEN);
#pragma GCC unroll 16
        for (int j = 0; j < NR_FWD; j++) {
            vf b = vset1(wd[(size_t)j * ldw + k]);
            acc[j][0] = vfma(a0, b, acc[j][0]);
            acc[j][1] = vfma(a1, b, acc[j][1]);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < NR_FWD; j++) {
        vstore(c + j * MR_FWD, acc[j][0]);
        vstore(c + j * MR_FWD + VLEN, acc[j][1]);
    }
}

static void gemm_task(void *ctx, int t, int thread)
{
    const gemm_ctx *c = ctx;
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, n0 = t % c->blocks * NT_FWD, nr = imin(NT_FWD, N - n0);
    const int p0 = chunk_panel(t / c->blocks, c->panels), p1 = chunk_panel(t / c->blocks + 1, c->panels);
    float *wd = c->scratch + (size_t)thread * NT_FWD * KC_FWD;
    float tile[NR_FWD * MR_FWD];
    if (p0 == p1)
        return;
    for (int k0 = 0; k0 < K; k0 += KC_FWD) {
        int kc = imin(KC_FWD, K - k0);
        int fresh = k0 == 0 && !c->accumulate;
        decode_tile(w, n0, NT_FWD, k0, kc, KC_FWD, wd);
        for (int p = p0; p < p1; p++) {
            const float *xp = c->xt + ((size_t)p * K + k0) * MR_FWD;
            int mr = imin(MR_FWD, c->M - p * MR_FWD);
            for (int j = 0; j < nr; j += NR_FWD) {
                micro_fwd(kc, xp, wd + (size_t)j * KC_FWD, KC_FWD, tile);
                int nj = imin(NR_FWD, nr - j);
                for (int i = 0; i < mr; i++) {
                    float *yr = c->y + (size_t)(p * MR_FWD + i) * N + n0 + j;
                    for (int jj = 0; jj < nj; jj++)
                        yr[jj] = (fresh ? 0.0f : yr[jj]) + tile[jj * MR_FWD + i];
                }
            }
        }
    }
}

static int matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    if (M < SMALL_M)
        return small_m_matmul(w, x, M, y, accumulate);
    int panels = (M + MR_FWD - 1) / MR_FWD;
    gemm_ctx c = {w, x, NULL, y, NULL, M, accumulate, panels, (w->rows + NT_FWD - 1) / NT_FWD};
    c.xt = rt_workspace(RT_WS_PACK, (size_t)panels * w->cols * MR_FWD * sizeof(float));
    c.scratch = qt_scratch((size_t)NT_FWD * KC_FWD);
    if (!c.xt || !c.scratch)
        return -1;
    rt_parallel(panels, pack_x_task, &c);
    rt_parallel(rt_threads() * c.blocks, gemm_task, &c);
    return 0;
}

/* ---- dX = dY W ---- */

typedef struct {
    const qt_matrix *w;
    const float *dy;
    float *dyt;   /* dY^T in panels: dyt[(p * N + n) * MR_BWD + i] = dY[p * MR_BWD + i][n] */
    float *dx;
    float *scratch;
    int M, accumulate;
    int panels, blocks; /* task t: chunk t / blocks (chunk_panel), column block t % blocks */
} gemm_t_ctx;

static void pack_dy_task(void *ctx, int p, int thread)
{
    (void)thread;
    const gemm_t_ctx *c = ctx;
    const int N = c->w->rows;
    pack_transposed(c->dyt + (size_t)p * N * MR_BWD, c->dy + (size_t)p * MR_BWD * N, c->M - p * MR_BWD, MR_BWD, N);
}

/* c[i][k] = sum over n of dyp[n][i] * wd[n][k], for MR_BWD rows x NW_BWD columns. */
static inline void micro_bwd(int nc, const float *dyp, const float *wd, int ldw, float *c)
{
    vf acc[MR_BWD][2];
#pragma GCC unroll 16
    for (int i = 0; i < MR_BWD; i++)
        acc[i][0] = acc[i][1] = vzero();
    for (int n = 0; n < nc; n++) {
        vf w0 = vload(wd + (size_t)n * ldw), w1 = vload(wd + (size_t)n * ldw + VLEN);
#pragma GCC unroll 16
        for (int i = 0; i < MR_BWD; i++) {
            vf b = vset1(dyp[(size_t)n * MR_BWD + i]);
            acc[i][0] = vfma(b, w0, acc[i][0]);
            acc[i][1] = vfma(b, w1, acc[i][1]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR_BWD; i++) {
        vstore(c + i * NW_BWD, acc[i][0]);
        vstore(c + i * NW_BWD + VLEN, acc[i][1]);
    }
}

static void gemm_t_task(void *ctx, int t, int thread)
{
    const gemm_t_ctx *c = ctx;
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, k0 = t % c->blocks * KT_BWD, kt = imin(KT_BWD, K - k0);
    const int p0 = chunk_panel(t / c->blocks, c->panels), p1 = chunk_panel(t / c->blocks + 1, c->panels);
    float *wd = c->scratch + (size_t)thread * NC_BWD * KT_BWD;
    float tile[MR_BWD * NW_BWD];
    if (p0 == p1)
        return;
    for (int n0 = 0; n0 < N; n0 += NC_BWD) {
        int nc = imin(NC_BWD, N - n0);
        int fresh = n0 == 0 && !c->accumulate;
        decode_tile(w, n0, nc, k0, kt, KT_BWD, wd);
        for (int p = p0; p < p1; p++) {
            const float *dyp = c->dyt + ((size_t)p * N + n0) * MR_BWD;
            int mr = imin(MR_BWD, c->M - p * MR_BWD);
            for (int kk = 0; kk < kt; kk += NW_BWD) {
                micro_bwd(nc, dyp, wd + kk, KT_BWD, tile);
                int nk = imin(NW_BWD, kt - kk);
                for (int i = 0; i < mr; i++) {
                    float *out = c->dx + (size_t)(p * MR_BWD + i) * K + k0 + kk;
                    for (int q = 0; q < nk; q++)
                        out[q] = (fresh ? 0.0f : out[q]) + tile[i * NW_BWD + q];
                }
            }
        }
    }
}

static int matmul_t(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate)
{
    if (M <= 0)
        return 0;
    int panels = (M + MR_BWD - 1) / MR_BWD;
    gemm_t_ctx c = {w, dy, NULL, dx, NULL, M, accumulate, panels, (w->cols + KT_BWD - 1) / KT_BWD};
    c.dyt = rt_workspace(RT_WS_PACK, (size_t)panels * w->rows * MR_BWD * sizeof(float));
    c.scratch = qt_scratch((size_t)NC_BWD * KT_BWD);
    if (!c.dyt || !c.scratch)
        return -1;
    rt_parallel(panels, pack_dy_task, &c);
    rt_parallel(rt_threads() * c.blocks, gemm_t_task, &c);
    return 0;
}

static void dequantize(const qt_matrix *w, int r0, int r1, float *out)
{
    decode_tile(w, r0, r1 - r0, 0, w->cols, w->cols, out);
}

const qt_kernel_set CAT(qt_kernels, ISA_SUFFIX) = {matmul, matmul_t, dequantize};
