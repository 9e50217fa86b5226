/* formats.h: each format's traits, one row of QT_FORMATS (quant.h) each, and where a
 * matrix keeps its codes and scales (internal to quant/).
 *
 * qt_traits[] is a static const table in this header so that wherever the format is a
 * compile-time constant (the kernels pass it down into always-inlined bodies) a lookup
 * folds into a constant and the untaken branches disappear. */
#ifndef QLORA_FORMATS_H
#define QLORA_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* How a row's codes are stored in `data`. */
typedef enum {
    QT_LAYOUT_ROWS,  /* row after row, row_bytes apart */
    QT_LAYOUT_PANEL, /* 16-row panels, word by word (below) */
} qt_layout;

/* What `scale` holds, and so how codes become weights. */
typedef enum {
    QT_SCALE_NONE,   /* nothing: the codes are the weights */
    QT_SCALE_ABSMAX, /* per block: w = table[q] * absmax (with dq, coded in qabsmax) */
    QT_SCALE_STEP,   /* per block: w = q * step, q a signed integer */
    QT_SCALE_AFFINE, /* per block: w = S * (q - Z), Z in `zero` */
    QT_SCALE_ROW,    /* per row: w = s where the "+1" bit is set, -s where the "-1" bit is
                        (one plane: where it is not), else 0 */
    QT_SCALE_GGML,   /* per block, inside it: ggml's blocks carry their fp16 scales (and
                        K-quants their 6- or 8-bit sub-block scales); ggml_blocks.h */
} qt_scale_kind;

typedef struct {
    const char *name;
    int bits;            /* per code and plane */
    int planes;
    qt_layout layout;
    int blockwise;       /* the scale (and zero) per block of spec.block columns */
    qt_scale_kind scale;
    int dq;              /* double quantization allowed, and on by default */
    const float *table;  /* 16 values, for 4-bit codes with an ABSMAX scale */
} qt_format_traits;

extern const float qt_nf4_table[16], qt_fp4_table[16];

#define QT_TRAITS_ROW_(id, name, bits, planes, layout, block, scale, dq, table, codec)      \
    [id] = {#name, bits, planes, QT_LAYOUT_##layout, block, QT_SCALE_##scale, dq, table},
static const qt_format_traits qt_traits[QT_NFORMATS] = {QT_FORMATS(QT_TRAITS_ROW_)};
#undef QT_TRAITS_ROW_

/* ggml's block of each format that has one (QT_GGML_TYPES): its type, values and bytes;
 * zeros for the others. */
typedef struct {
    int type;
    int values, bytes;
    const char *name;
} qt_ggml_traits_t;

#define QT_GGML_ROW_(format, name, id, values, bytes) [format] = {id, values, bytes, #name},
static const qt_ggml_traits_t qt_ggml_traits[QT_NFORMATS] = {QT_GGML_TYPES(QT_GGML_ROW_)};
#undef QT_GGML_ROW_

/* What every row must satisfy; kernels_decode.h adds which shapes of code it decodes. */
#define QT_CHECK_ROW_(id, name, bits, planes, layout, block, scale, dq, table, codec)       \
    _Static_assert(QT_SCALE_##scale == QT_SCALE_GGML || ((bits) > 0 && 32 % (bits) == 0),   \
                   #name ": codes must fill 32-bit words");                               \
    _Static_assert(QT_SCALE_##scale != QT_SCALE_GGML || QT_LAYOUT_##layout == QT_LAYOUT_ROWS, \
                   #name ": ggml's blocks are kept row after row, as GGUF has them");      \
    _Static_assert((planes) == 1 || QT_LAYOUT_##layout == QT_LAYOUT_PANEL,                   \
                   #name ": several bit planes are kept only in panels");                  \
    _Static_assert((block) == (QT_SCALE_##scale == QT_SCALE_ABSMAX ||                       \
                               QT_SCALE_##scale == QT_SCALE_STEP ||                         \
                               QT_SCALE_##scale == QT_SCALE_AFFINE ||                       \
                               QT_SCALE_##scale == QT_SCALE_GGML),                          \
                   #name ": block-wise exactly when its scale is kept per block");         \
    _Static_assert(!(dq) || QT_SCALE_##scale == QT_SCALE_ABSMAX,                            \
                   #name ": double quantization codes block absmax values");
QT_FORMATS(QT_CHECK_ROW_)
#undef QT_CHECK_ROW_

/* ---- layout ----
 * PANEL formats keep their codes in panels of QT_PANEL rows, as 32-bit words: panel p
 * holds word c of its 16 rows, then word c + 1, and so on, so that one 64-byte load gives
 * 16 rows' codes for the same columns, which the small-M kernels want; a single row's
 * word is still one 32-bit load for the decoders. A word holds 32 / bits codes (code j,
 * bits j * bits and up: column (32 / bits) c + j); a format of two planes follows each
 * panel word of its "+1" plane with the same word of its "-1" plane. The last word of a
 * row and the last panel are padded with zeros. */

/* Bytes of a row's codes in `data` (rows x this, in panels for PANEL formats); for 32
 * columns of a ROWS format, the bytes its vector decoders take at once. ggml's formats:
 * whole blocks (the columns a multiple of the block). */
static inline size_t qt_row_bytes(qt_format f, int cols)
{
    const qt_format_traits *t = &qt_traits[f];
    if (t->scale == QT_SCALE_GGML)
        return (size_t)cols / (size_t)qt_ggml_traits[f].values * (size_t)qt_ggml_traits[f].bytes;
    if (t->layout == QT_LAYOUT_ROWS)
        return ((size_t)cols * (size_t)t->bits + 7) / 8;
    size_t per_word = (size_t)(32 / t->bits);
    return ((size_t)cols + per_word - 1) / per_word * 4 * (size_t)t->planes;
}

/* Words per row and plane of a PANEL format. */
static inline int qt_panel_words(const qt_matrix *m, qt_format f)
{
    int per_word = 32 / qt_traits[f].bits;
    return (m->cols + per_word - 1) / per_word;
}

/* Word 0 of row r (its "+1" plane); its word c is c * QT_PANEL * planes words further on,
 * and a "-1" word QT_PANEL words after its "+1" word. */
static inline uint32_t *qt_panel_row(const qt_matrix *m, qt_format f, int r)
{
    size_t panel = (size_t)(r / QT_PANEL) * qt_panel_words(m, f) * qt_traits[f].planes * QT_PANEL;
    return (uint32_t *)m->data + panel + r % QT_PANEL;
}

/* Rows held in `data`: PANEL formats fill their last panel with zero rows. */
static inline size_t qt_stored_rows(const qt_matrix *m)
{
    size_t rows = (size_t)m->rows;
    return qt_traits[m->spec.format].layout == QT_LAYOUT_PANEL
               ? (rows + QT_PANEL - 1) / QT_PANEL * QT_PANEL
               : rows;
}

/* Block-wise PANEL formats keep their block constants as they keep codes: the 16 rows of
 * a panel side by side, block after block. */
static inline int qt_slots_in_panels(qt_format f)
{
    return qt_traits[f].blockwise && qt_traits[f].layout == QT_LAYOUT_PANEL;
}

/* Where block b (row-major block index, r * blocks_per_row + j, which also orders double
 * quantization's groups) keeps its scale, zero or qabsmax: slot b, or in panels
 * ((r / 16) * blocks_per_row + j) * 16 + r % 16. Per-row scales: slot r. */
static inline size_t qt_block_slot(const qt_matrix *m, qt_format f, size_t b)
{
    if (!qt_slots_in_panels(f))
        return b;
    size_t r = b / (size_t)m->blocks_per_row, j = b % (size_t)m->blocks_per_row;
    return ((r / QT_PANEL) * (size_t)m->blocks_per_row + j) * QT_PANEL + r % QT_PANEL;
}

/* The distance between the slots of two consecutive blocks of a row. */
static inline size_t qt_slot_step(qt_format f)
{
    return qt_slots_in_panels(f) ? QT_PANEL : 1;
}

/* Entries of `scale`, `zero` or `qabsmax`: one per block (per row where there are no
 * blocks), for whole panels where they are kept in panels. */
static inline size_t qt_block_slots(const qt_matrix *m)
{
    size_t rows = qt_slots_in_panels(m->spec.format) ? qt_stored_rows(m) : (size_t)m->rows;
    return rows * (size_t)m->blocks_per_row;
}

/* Double quantization's decode of one absmax: its 8-bit code, its group's absmax2 and
 * the matrix offset. */
static inline float qt_dq_absmax(uint8_t q, float absmax2, float offset)
{
    return qt_dynamic_map_table[q] * absmax2 + offset;
}

/* The decoded absmax of block b (row-major block index) of an ABSMAX format. */
static inline float qt_block_absmax(const qt_matrix *m, size_t b)
{
    size_t slot = qt_block_slot(m, m->spec.format, b);
    if (!m->spec.double_quant)
        return m->scale[slot];
    return qt_dq_absmax(m->qabsmax[slot], m->absmax2[b / QT_DQ_GROUP], m->offset);
}

#endif
