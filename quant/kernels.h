/* kernels.h: what the instruction-set variants of the kernels share (internal to quant/). */
#ifndef QLORA_KERNELS_H
#define QLORA_KERNELS_H

#include "formats.h"

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
