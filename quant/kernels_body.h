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

/* Formats stored row after row, whose small-M product decodes rows; the panel formats
 * have kernels of their own. */
#define ROW_CASES(CALL)                                                                   \
    case QT_F32: CALL(QT_F32); break;                                                     \
    case QT_INT8: CALL(QT_INT8); break;                                                   \
    case QT_INT4: CALL(QT_INT4); break;
#define ROW_SWITCH(fmt, CALL)                                                             \
    switch (fmt) {                                                                        \
    ROW_CASES(CALL)                                                                       \
    default: break;                                                                       \
    }
#define FORMAT_SWITCH(fmt, CALL)                                                          \
    switch (fmt) {                                                                        \
    ROW_CASES(CALL)                                                                       \
    case QT_NF4: CALL(QT_NF4); break;                                                     \
    case QT_FP4: CALL(QT_FP4); break;                                                     \
    case QT_BITNET1: CALL(QT_BITNET1); break;                                             \
    case QT_TERNARY: CALL(QT_TERNARY); break;                                             \
    default: break;                                                                       \
    }

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
    d->words = qt_is_panel((qt_format)fmt) ? qt_panel_row(m, r) : NULL;
    d->table = qt_code_table((qt_format)fmt);
    d->b0 = b0;
    d->slot0 = qt_is_nibble_panel((qt_format)fmt) ? qt_block_slot(m, b0) : b0;
    d->slot_step = qt_is_nibble_panel((qt_format)fmt) ? QT_PANEL : 1;
    d->scale = m->scale;
    d->zero = m->zero;
    d->qabsmax = m->qabsmax;
    d->absmax2 = m->absmax2;
    d->offset = m->offset;
    d->cols = m->cols;
    d->shift = __builtin_ctz((unsigned)m->spec.block);
    memset(&d->lut, 0, sizeof d->lut); /* set by rowdec_seek; quiets -Wmaybe-uninitialized */
    d->s = qt_is_bits((qt_format)fmt) ? m->scale[r] : 0.0f;
}

/* int4's codes decode fastest in "split" order: vector v holds elements
 * (v / 2) * 2 * VLEN + 2 * lane + v % 2 of the chunk (high nibbles, then low nibbles, of
 * each VLEN bytes). Its matrix-vector product uses it with x permuted the same way. */
static inline int split_element(int p)
{
    int v = p / VLEN, lane = p % VLEN;
    return v / 2 * 2 * VLEN + 2 * lane + v % 2;
}

static inline int has_blocks(int fmt)
{
    return fmt != QT_F32 && fmt != QT_BITNET1 && fmt != QT_TERNARY;
}

/* Loads the constants of block j of the row. */
ALWAYS_INLINE void rowdec_block(rowdec *d, int fmt, size_t j)
{
    size_t slot = d->slot0 + j * d->slot_step;
    if (fmt == QT_INT8) {
        d->s = d->scale[slot];
    } else if (fmt == QT_INT4) {
        d->lut = lut_affine(d->scale[slot], d->zero[slot]);
    } else if (qt_is_nibble_panel((qt_format)fmt)) {
        float absmax = d->qabsmax ? qt_dq_absmax(d->qabsmax[slot], d->absmax2[(d->b0 + j) / QT_DQ_GROUP],
                                                 d->offset)
                                  : d->scale[slot];
        d->lut = lut_scaled(d->table, absmax);
    }
}

/* Loads the constants of the block holding column k and returns the column where that
 * block ends (the row's end for per-row formats). Blocks are multiples of 32, so chunks
 * never straddle them. */
ALWAYS_INLINE int rowdec_seek(rowdec *d, int fmt, int k)
{
    if (!has_blocks(fmt))
        return d->cols;
    int j = k >> d->shift;
    rowdec_block(d, fmt, (size_t)j);
    return imin((j + 1) << d->shift, d->cols);
}

/* Bytes of a row in `data` per 32 columns, for the formats stored row after row (f32,
 * int8, int4). */
static inline size_t chunk_bytes(int fmt)
{
    return fmt == QT_F32 ? 128 : fmt == QT_INT8 ? 32 : 16;
}

/* rowdec_chunk of those formats, from the chunk's address p in the row (loops that walk a
 * row keep a pointer rather than recomputing it from k); int4 in split order when
 * `split`. */
ALWAYS_INLINE void rowdec_chunk_at(const rowdec *d, int fmt, int split, const uint8_t *p, vf *out)
{
    switch (fmt) {
    case QT_F32:
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            out[v] = vload((const float *)p + v * VLEN);
        break;
    case QT_INT4:
        if (split)
            decode_nibbles32_split(p, d->lut, out);
        else
            decode_nibbles32(_mm_loadu_si128((const __m128i *)p), 1, d->lut, out);
        break;
    case QT_INT8:
        decode_int8_32((const int8_t *)p, d->s, out);
        break;
    default: break;
    }
}

/* Weights [k, k+32) of the row, in natural order; k is a multiple of 32, k + 32 <= cols,
 * and rowdec_seek has loaded the block holding k. */
ALWAYS_INLINE void rowdec_chunk(const rowdec *d, int fmt, size_t k, vf *out)
{
    const uint32_t *w;
    switch (fmt) {
    case QT_F32: case QT_INT4: case QT_INT8:
        rowdec_chunk_at(d, fmt, 0, d->row + k / 32 * chunk_bytes(fmt), out);
        break;
    case QT_NF4: case QT_FP4: /* 4 words of 8 codes, a panel word (16 words) apart */
        w = d->words + k / 8 * QT_PANEL;
        decode_nibbles32(_mm_setr_epi32((int)w[0], (int)w[QT_PANEL], (int)w[2 * QT_PANEL],
                                        (int)w[3 * QT_PANEL]), 0, d->lut, out);
        break;
    case QT_BITNET1:
        w = d->words + k / 32 * QT_PANEL;
        decode_bits32(w[0], ~w[0], d->s, out);
        break;
    case QT_TERNARY:
        w = d->words + k / 32 * 2 * QT_PANEL;
        decode_bits32(w[0], w[QT_PANEL], d->s, out);
        break;
    default: break;
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

static void decode_tile(const qt_matrix *m, int r0, int nrows, int k0, int kc, int ld, float *t)
{
#define DECODE_TILE(F) decode_tile_fmt(m, F, r0, nrows, k0, kc, ld, t)
    FORMAT_SWITCH(m->spec.format, DECODE_TILE)
#undef DECODE_TILE
}

/* ---- Y = X W^T, small M, formats stored row after row: decode into registers ---- */

typedef struct {
    const qt_matrix *w;
    const float *x;  /* for int4, each 32-chunk permuted to split order */
    float *y;
    int M, accumulate, rows_per_task;
} gemv_ctx;

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
    rowdec_chunk_at(d, fmt, fmt == QT_INT4, p, wv);
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][u][v] = vfma(wv[v], vload(x + i * K + v * VLEN), acc[i][u][v]);
}

ALWAYS_INLINE void gemv_rows_fmt(const gemv_ctx *c, int fmt, int bs, int MG, int m0, int n0, int n1)
{
    const qt_matrix *w = c->w;
    const int K = w->cols, N = w->rows, U = GEMV_UNROLL(MG);
    const size_t kv = (size_t)K / 32 * 32;
    const float *x = c->x + (size_t)m0 * K;
    /* Columns that share block constants, bs where the caller knows it: a block, or the
     * whole row. Whole spans first, then what is left of the row's last block. */
    const size_t span = !has_blocks(fmt) ? kv : bs ? (size_t)bs : (size_t)w->spec.block;
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

ALWAYS_INLINE void gemv_task_fmt(const gemv_ctx *c, int fmt, int n0, int n1)
{
    for (int m0 = 0; m0 < c->M; m0 += 4) {
        switch (imin(4, c->M - m0)) {
        case 1: /* the default block as a constant: a block is then two straight chunks */
            if (c->w->spec.block == 64 && has_blocks(fmt))
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

/* name_F(c, a, b) = body(c, F, a, b) as a function of its own per format: in a single
 * function holding every format's loops, the register allocator spills the pointers of
 * the hot loops. */
#define PER_FORMAT(name, ctx_type, body, F)                                               \
    static __attribute__((noinline)) void name##_##F(const ctx_type *c, int a, int b)    \
    {                                                                                     \
        body(c, F, a, b);                                                                 \
    }
PER_FORMAT(gemv, gemv_ctx, gemv_task_fmt, QT_F32)
PER_FORMAT(gemv, gemv_ctx, gemv_task_fmt, QT_INT8)
PER_FORMAT(gemv, gemv_ctx, gemv_task_fmt, QT_INT4)

static void gemv_task(void *ctx, int t, int thread)
{
    (void)thread;
    const gemv_ctx *c = ctx;
    int n0 = t * c->rows_per_task, n1 = imin(n0 + c->rows_per_task, c->w->rows);
#define GEMV_TASK(F) gemv_##F(c, n0, n1)
    ROW_SWITCH(c->w->spec.format, GEMV_TASK)
#undef GEMV_TASK
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

typedef struct {
    const qt_matrix *w;
    const float *x; /* bitnet1, ternary: per row of X, its tables ([words * LUT_GROUPS][16]);
                       nf4, fp4: the rows of X, padded with zeros to whole words */
    float *y;
    int M, accumulate, panels_per_task;
} panel_ctx;

/* The tables of one row of x (columns past K count as zero). */
static void lut_tables(const float *x, int K, int words, int fmt, float *t)
{
    float sel[4][16]; /* the factor of column i of a group in entry e */
    for (int i = 0; i < 4; i++)
        for (int e = 0; e < 16; e++)
            sel[i][e] = e >> i & 1 ? 1.0f : fmt == QT_BITNET1 ? -1.0f : 0.0f;
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

/* acc[i] += row m0 + i of X times the panel's rows, bitnet1 or ternary. */
ALWAYS_INLINE void lut_rows_fmt(const panel_ctx *c, int fmt, int MG, int m0, int p,
                                vf acc[PANEL_ROWS][QT_PANEL / VLEN])
{
    const qt_matrix *w = c->w;
    const int words = qt_panel_words(w), planes = fmt == QT_TERNARY ? 2 : 1;
    const size_t tstride = (size_t)words * LUT_GROUPS * 16; /* floats per row of x */
    const uint32_t *q = qt_panel_row(w, p * QT_PANEL);
    const float *t = c->x + (size_t)m0 * tstride;
    for (int cw = 0; cw < words; cw++, q += planes * QT_PANEL, t += LUT_GROUPS * 16) {
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++) {
            vi plus = vload_i(q + h * VLEN);
            vi minus = fmt == QT_TERNARY ? vload_i(q + QT_PANEL + h * VLEN) : plus;
#pragma GCC unroll 4
            for (int i = 0; i < MG; i++) {
                vf s[LUT_GROUPS];
#pragma GCC unroll 8
                for (int g = 0; g < LUT_GROUPS; g++) {
                    lut16 tg = lut_load(t + i * tstride + g * 16);
                    s[g] = vlookup16(vsrli(plus, 4 * g), tg);
                    if (fmt == QT_TERNARY)
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

/* acc[i] += row m0 + i of X times the panel's rows, nf4 or fp4. */
ALWAYS_INLINE void nib_rows_fmt(const panel_ctx *c, int fmt, int dq, int MG, int m0, int p,
                                vf acc[PANEL_ROWS][QT_PANEL / VLEN])
{
    const qt_matrix *w = c->w;
    const int words = qt_panel_words(w), bpr = w->blocks_per_row, bw = w->spec.block / 8;
    const int NP = MG == 1 ? 4 : MG == 2 ? 2 : 1; /* partial sums per row of X, for the FMA latency */
    const size_t xstride = (size_t)words * 8;
    const uint32_t *q = qt_panel_row(w, p * QT_PANEL);
    const float *x = c->x + (size_t)m0 * xstride;
    const lut16 table = lut_load(qt_code_table((qt_format)fmt));
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
ALWAYS_INLINE void panel_rows(const panel_ctx *c, int fmt, int dq, int MG, int m0, int p)
{
    const qt_matrix *w = c->w;
    vf acc[PANEL_ROWS][QT_PANEL / VLEN];
#pragma GCC unroll 4
    for (int i = 0; i < MG; i++)
#pragma GCC unroll 2
        for (int h = 0; h < QT_PANEL / VLEN; h++)
            acc[i][h] = vzero();
    if (qt_is_bits((qt_format)fmt))
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
            float v = qt_is_bits((qt_format)fmt) ? w->scale[n0 + r] * sum[r] : sum[r];
            yr[r] = c->accumulate ? yr[r] + v : v;
        }
    }
}

ALWAYS_INLINE void panel_task_dq(const panel_ctx *c, int fmt, int dq, int p0, int p1)
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

/* double_quant as a constant in the hot loop */
ALWAYS_INLINE void panel_task_fmt(const panel_ctx *c, int fmt, int p0, int p1)
{
    if (qt_is_nibble_panel((qt_format)fmt) && c->w->spec.double_quant)
        panel_task_dq(c, fmt, 1, p0, p1);
    else
        panel_task_dq(c, fmt, 0, p0, p1);
}

PER_FORMAT(panel, panel_ctx, panel_task_fmt, QT_NF4)
PER_FORMAT(panel, panel_ctx, panel_task_fmt, QT_FP4)
PER_FORMAT(panel, panel_ctx, panel_task_fmt, QT_BITNET1)
PER_FORMAT(panel, panel_ctx, panel_task_fmt, QT_TERNARY)

static void panel_task(void *ctx, int t, int thread)
{
    (void)thread;
    const panel_ctx *c = ctx;
    int panels = (c->w->rows + QT_PANEL - 1) / QT_PANEL;
    int p0 = t * c->panels_per_task, p1 = imin(p0 + c->panels_per_task, panels);
    switch (c->w->spec.format) {
    case QT_NF4: panel_QT_NF4(c, p0, p1); break;
    case QT_FP4: panel_QT_FP4(c, p0, p1); break;
    case QT_BITNET1: panel_QT_BITNET1(c, p0, p1); break;
    case QT_TERNARY: panel_QT_TERNARY(c, p0, p1); break;
    default: break;
    }
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

/* Y = X W^T for M < SMALL_M in a panel format: x is what panel_ctx.x holds, `work` the
 * vector lanes of the product (small_m_tasks). */
static void panel_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate,
                         long work)
{
    int panels = (w->rows + QT_PANEL - 1) / QT_PANEL, tasks = small_m_tasks(work);
    panel_ctx c = {w, x, y, M, accumulate, (panels + tasks - 1) / tasks};
    rt_parallel((panels + c.panels_per_task - 1) / c.panels_per_task, panel_task, &c);
}

static int lut_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    const int K = w->cols, words = qt_panel_words(w);
    const size_t tstride = (size_t)words * LUT_GROUPS * 16;
    float *tables = rt_workspace(RT_WS_PACK, (size_t)M * tstride * sizeof(float));
    if (!tables)
        return -1;
    for (int m = 0; m < M; m++)
        lut_tables(x + (size_t)m * K, K, words, w->spec.format, tables + (size_t)m * tstride);
    panel_matmul(w, tables, M, y, accumulate, (long)M * w->rows * words * LUT_GROUPS * qt_panel_planes(w));
    return 0;
}

static int nib_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    const int K = w->cols;
    const size_t xstride = (size_t)qt_panel_words(w) * 8;
    float *xp = rt_workspace(RT_WS_PACK, (size_t)M * xstride * sizeof(float));
    if (!xp)
        return -1;
    for (int m = 0; m < M; m++) { /* rows padded with zeros to whole panel words */
        memcpy(xp + m * xstride, x + (size_t)m * K, (size_t)K * sizeof(float));
        memset(xp + m * xstride + K, 0, (xstride - K) * sizeof(float));
    }
    panel_matmul(w, xp, M, y, accumulate, (long)M * w->rows * K);
    return 0;
}

static int matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    if (M < SMALL_M && qt_is_bits(w->spec.format))
        return lut_matmul(w, x, M, y, accumulate);
    if (M < SMALL_M && qt_is_nibble_panel(w->spec.format))
        return nib_matmul(w, x, M, y, accumulate);
    if (M < SMALL_M) {
        int tasks = small_m_tasks((long)M * w->rows * w->cols);
        float *xs = NULL;
        if (w->spec.format == QT_INT4 && !(xs = split_x(x, M, w->cols)))
            return -1;
        gemv_ctx c = {w, xs ? xs : x, y, M, accumulate, (w->rows + tasks - 1) / tasks};
        rt_parallel((w->rows + c.rows_per_task - 1) / c.rows_per_task, gemv_task, &c);
        return 0;
    }
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
