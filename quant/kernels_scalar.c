/* kernels_scalar.c: the reference kernels. Deliberately naive: decode a row with the
 * scalar definition of its format, then plain loops, so that the vectorized paths have
 * an independent answer to be compared with. Single-threaded. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static int matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    const int N = w->rows, K = w->cols;
    float *row = malloc((size_t)K * sizeof(float));
    if (!row)
        return -1;
    for (int n = 0; n < N; n++) {
        qt_decode_range(w, n, 0, K, row);
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * K;
            float s = 0;
            for (int k = 0; k < K; k++)
                s += xm[k] * row[k];
            float *out = y + (size_t)m * N + n;
            *out = accumulate ? *out + s : s;
        }
    }
    free(row);
    return 0;
}

static int matmul_t(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate)
{
    const int N = w->rows, K = w->cols;
    float *row = malloc((size_t)K * sizeof(float));
    if (!row)
        return -1;
    if (!accumulate)
        memset(dx, 0, (size_t)M * K * sizeof(float));
    for (int n = 0; n < N; n++) {
        qt_decode_range(w, n, 0, K, row);
        for (int m = 0; m < M; m++) {
            float a = dy[(size_t)m * N + n];
            float *out = dx + (size_t)m * K;
            for (int k = 0; k < K; k++)
                out[k] += a * row[k];
        }
    }
    free(row);
    return 0;
}

static void dequantize(const qt_matrix *w, int r0, int r1, float *out)
{
    for (int r = r0; r < r1; r++)
        qt_decode_range(w, r, 0, w->cols, out + (size_t)(r - r0) * w->cols);
}

const qt_kernel_set qt_kernels_scalar = {matmul, matmul_t, dequantize};
