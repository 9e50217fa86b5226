/* kernels.h: what the instruction-set variants of the kernels share (internal to quant/). */
#ifndef QLORA_KERNELS_H
#define QLORA_KERNELS_H

#include "quant.h"

/* nf4, fp4, bitnet1 and ternary keep their codes in panels of QT_PANEL rows, as 32-bit
 * words: panel p holds word c of its 16 rows, then word c + 1, and so on, so that one
 * 64-byte load gives 16 rows' codes for the same columns, which the small-M kernels want;
 * a single row's word is still one 32-bit load for the decoders. A word holds 8 nibble
 * codes (nibble j, bits 4j..4j+3: column 8c + j) or 32 bits (bit j: column 32c + j);
 * ternary follows each panel word of its "+1" plane with the same word of its "-1" plane.
 * The last word of a row and the last panel are padded with zeros. */
static inline int qt_is_bits(qt_format f)
{
    return f == QT_BITNET1 || f == QT_TERNARY;
}

static inline int qt_is_nibble_panel(qt_format f)
{
    return f == QT_NF4 || f == QT_FP4;
}

static inline int qt_is_panel(qt_format f)
{
    return qt_is_bits(f) || qt_is_nibble_panel(f);
}

/* Planes per word (ternary 2, else 1), and words per row. */
static inline int qt_panel_planes(const qt_matrix *m)
{
    return m->spec.format == QT_TERNARY ? 2 : 1;
}

static inline int qt_panel_words(const qt_matrix *m)
{
    return qt_is_bits(m->spec.format) ? (m->cols + 31) / 32 : (m->cols + 7) / 8;
}

/* Word 0 of row r (its "+1" plane); its word c is c * QT_PANEL * planes words further on,
 * and a "-1" word QT_PANEL words after its "+1" word. */
static inline uint32_t *qt_panel_row(const qt_matrix *m, int r)
{
    size_t panel = (size_t)(r / QT_PANEL) * qt_panel_words(m) * qt_panel_planes(m) * QT_PANEL;
    return (uint32_t *)m->data + panel + r % QT_PANEL;
}

/* Scalar decode of columns [k0, k1) of row r into out[0 .. k1-k0): the definition of
 * every format, used by the reference path and for the ragged ends of vector loops. */
void qt_decode_range(const qt_matrix *m, int r, int k0, int k1, float *out);

typedef struct {
    int (*matmul)(const qt_matrix *w, const float *x, int M, float *y, int accumulate);
    int (*matmul_t)(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate);
    void (*dequantize)(const qt_matrix *w, int r0, int r1, float *out);
} qt_kernel_set;

extern const qt_kernel_set qt_kernels_scalar, qt_kernels_avx2, qt_kernels_avx512;

/* The calling thread's scratch for one parallel call (workspace.h, RT_WS_DECODE):
 * `per_thread` floats for each pool thread. Not freed by the caller. */
float *qt_scratch(size_t per_thread);

#endif
