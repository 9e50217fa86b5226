/* kernels_decode.h: the vector decoders, the first part of kernels_body.h (compiled once
 * per instruction set, after a simd_*.h header).
 *
 * A row cursor (rowdec) turns 32 consecutive weights of a row into NV vector registers,
 * with the same arithmetic as the scalar qt_decode_range, so every path gives
 * bit-identical weights. 4-bit formats look codes up in a 16-entry table that already
 * holds the block's scale (table * absmax, or S * (q - Z) for int4). decode_tile turns a
 * tile of rows and columns into floats, for the large-M products and dequantization. */
#include <stdlib.h>
#include <string.h>

#include "ggml_blocks.h"
#include "kernels.h"
#include "parallel.h"
#include "workspace.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#define NV (32 / VLEN) /* vectors per 32-weight chunk */

/* The shapes of code the decoders and small-M kernels below know: a row of QT_FORMATS of
 * another shape fails to compile here until rowdec_block, rowdec_chunk and a small-M kernel
 * learn it (docs/quantization.md, Adding a format). */
#define KNOWN_SHAPE_(id, name, bits, planes, layout, block, scale, ...)                      \
    _Static_assert((QT_LAYOUT_##layout == QT_LAYOUT_ROWS && (planes) == 1 &&                  \
                    (((bits) == 32 && QT_SCALE_##scale == QT_SCALE_NONE) ||                   \
                     ((bits) == 16 && QT_SCALE_##scale == QT_SCALE_NONE) ||                   \
                     ((bits) == 8 && QT_SCALE_##scale == QT_SCALE_STEP) ||                    \
                     ((bits) == 4 && QT_SCALE_##scale == QT_SCALE_AFFINE) ||                  \
                     QT_SCALE_##scale == QT_SCALE_GGML)) ||                                   \
                   (QT_LAYOUT_##layout == QT_LAYOUT_PANEL &&                                  \
                    (((bits) == 4 && (planes) == 1 && QT_SCALE_##scale == QT_SCALE_ABSMAX) || \
                     ((bits) == 1 && QT_SCALE_##scale == QT_SCALE_ROW))),                     \
                   #name ": the vector kernels have no decoder for this shape of code");
QT_FORMATS(KNOWN_SHAPE_)
#undef KNOWN_SHAPE_

static inline int imin(int a, int b) { return a < b ? a : b; }

typedef struct {
    const qt_matrix *m;
    const uint8_t *row;
    const uint32_t *words; /* panel formats: the row's first word (formats.h) */
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
    /* ggml's formats: the block rowdec_block loaded, and its groups' constants */
    const uint8_t *blk;
    float gs[QT_GGML_MAX_GROUPS], gb[QT_GGML_MAX_GROUPS];
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
    d->blk = d->row;
}

/* Nibble codes stored row after row (int4) decode fastest in "split" order: vector v
 * holds elements (v / 2) * 2 * VLEN + 2 * lane + v % 2 of the chunk (high nibbles, then low
 * nibbles, of each VLEN bytes). Their matrix-vector product uses it with x permuted the
 * same way. */
static inline int split_order(int fmt)
{
    return qt_traits[fmt].layout == QT_LAYOUT_ROWS && qt_traits[fmt].scale == QT_SCALE_AFFINE;
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
    case QT_SCALE_GGML: /* the block's header, once: a K-quant's 8 or 16 sub-block scales */
        d->blk = d->row + j * (size_t)qt_ggml_traits[fmt].bytes;
        ggml_block_consts(fmt, d->blk, d->gs, d->gb);
        break;
    default: /* nothing per block */
        break;
    }
}

/* ---- ggml's blocks: 32 values of a block, by the definition in ggml_blocks.h ---- */

/* Codes q (offset as there) to weights: q s, q s + b or q s - b, in ggml's roundings. */
ALWAYS_INLINE vf ggml_vweight(int fmt, vi q, float s, float b)
{
    vf w = vmul(vcvt_i(q), vset1(s));
    int sign = ggml_bias_sign(fmt);
    return sign > 0 ? vadd(w, vset1(b)) : sign < 0 ? vsub(w, vset1(b)) : w;
}

/* Values [32 c, 32 c + 32) of the block rowdec_block loaded. Vector v holds values
 * 32 c + v VLEN + lane; every 32 values have one scale (q6_k: every 16, so one per vector
 * up to 16 lanes). */
ALWAYS_INLINE void ggml_chunk(const rowdec *d, int fmt, int c, vf *out)
{
    const uint8_t *b = d->blk;
    const vi low4 = vset1_i(15);
    if (fmt == QT_Q8_0) {
        decode_int8_32((const int8_t *)(b + 2), d->gs[0], out);
        return;
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const int e = v * VLEN; /* the vector's first value in the chunk */
        vi q;
        switch (fmt) {
        case QT_Q4_0: case QT_Q4_1: case QT_Q5_0: case QT_Q5_1: { /* 32-value blocks: c = 0 */
            const int five = fmt == QT_Q5_0 || fmt == QT_Q5_1, min = fmt == QT_Q4_1 || fmt == QT_Q5_1;
            const uint8_t *qs = b + 2 + 2 * min + 4 * five;
            q = vand_i(vsrli(vload_u8(qs + e % 16), e >= 16 ? 4 : 0), low4);
            if (five)
                q = vor_i(q, vslli(vbits_at(qt_load_u32(b + 2 + 2 * min), e), 4));
            if (!min)
                q = vsub_i(q, vset1_i(five ? 16 : 8));
            break;
        }
        case QT_Q4_K:
            q = vand_i(vsrli(vload_u8(b + 16 + c / 2 * 32 + e), 4 * (c & 1)), low4);
            break;
        case QT_Q5_K:
            q = vor_i(vand_i(vsrli(vload_u8(b + 48 + c / 2 * 32 + e), 4 * (c & 1)), low4),
                      vslli(vand_i(vsrli(vload_u8(b + 16 + e), c), vset1_i(1)), 4));
            break;
        default: { /* QT_Q6_K: value 32 c + l = 128 h + 32 sub + l */
            const int h = c / 4, sub = c % 4;
            vi lo = vand_i(vsrli(vload_u8(b + 64 * h + 32 * (sub & 1) + e), 4 * (sub >> 1)), low4);
            vi hi = vand_i(vsrli(vload_u8(b + 128 + 32 * h + e), 2 * sub), vset1_i(3));
            q = vsub_i(vor_i(lo, vslli(hi, 4)), vset1_i(32));
            break;
        }
        }
        const int g = (32 * c + e) / ggml_group(fmt);
        out[v] = ggml_vweight(fmt, q, d->gs[g], d->gb[g]);
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
 * (loops that walk a row keep a pointer rather than recomputing it from k; ggml's formats
 * find the chunk from k in the block rowdec_block loaded); nibbles in split order when
 * `split`. */
ALWAYS_INLINE void rowdec_chunk_at(const rowdec *d, int fmt, int split, const uint8_t *p, size_t k,
                                   vf *out)
{
    if (qt_traits[fmt].scale == QT_SCALE_GGML) {
        ggml_chunk(d, fmt, (int)(k % (size_t)qt_ggml_traits[fmt].values / 32), out);
    } else if (qt_traits[fmt].bits == 16) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            out[v] = fmt == QT_BF16 ? vload_bf16(p + 2 * v * VLEN) : vload_f16(p + 2 * v * VLEN);
    } else if (qt_traits[fmt].bits == 32) {
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
        rowdec_chunk_at(d, fmt, 0, d->row + k / 32 * chunk_bytes(fmt), k, out);
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
