/* kernels.h: what the instruction-set variants of the kernels share (internal to quant/). */
#ifndef QLORA_KERNELS_H
#define QLORA_KERNELS_H

#include "quant.h"

/* bitnet1 and ternary keep their bits in panels of QT_PANEL rows: panel p holds, for
 * each 32-column word c in turn, word c of its 16 rows' "+1" plane (bit j = column
 * 32c + j) and then, for ternary, of their "-1" plane. One 64-byte load gives the codes
 * of 16 rows for the same 32 columns, which is what the lookup-table kernel of small M
 * wants; a single row's words are read just as cheaply, one per 32 columns. The rows are
 * padded with zero bits to a whole panel. */
#define QT_PANEL 16

static inline int qt_is_bits(qt_format f)
{
    return f == QT_BITNET1 || f == QT_TERNARY;
}

/* Bit planes per word (1 or 2), and 32-column words per row. */
static inline int qt_bits_planes(const qt_matrix *m)
{
    return m->spec.format == QT_TERNARY ? 2 : 1;
}

static inline int qt_bits_words(const qt_matrix *m)
{
    return (m->cols + 31) / 32;
}

/* Word 0 of row r's "+1" plane; its word c is c * QT_PANEL * planes words further on, and
 * the "-1" word QT_PANEL words after the "+1" word. */
static inline uint32_t *qt_bits_row(const qt_matrix *m, int r)
{
    size_t panel = (size_t)(r / QT_PANEL) * qt_bits_words(m) * qt_bits_planes(m) * QT_PANEL;
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

/* Aligned scratch for one parallel call: `per_thread` floats for each pool thread. */
float *qt_scratch_alloc(size_t per_thread);

#endif
