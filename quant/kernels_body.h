/* kernels_body.h: the vectorized kernels, written once over the primitives of a
 * simd_*.h header and compiled once per instruction set (kernels_avx2.c,
 * kernels_avx512.c). Include it after that header. Its parts, each with one job:
 * - kernels_decode.h: a row's weights into vector registers, tiles into floats;
 * - kernels_gemv.h: Y = X W^T for small M, formats stored row after row;
 * - kernels_panel.h: Y = X W^T for small M, formats stored in 16-row panels;
 * - kernels_gemm.h: the large-M products Y = X W^T and dX = dY W;
 * and here, generated from QT_FORMATS, one small-M task per format, and the kernel set. */
#include "kernels_decode.h"
#include "kernels_gemv.h"
#include "kernels_panel.h"
#include "kernels_gemm.h"

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#define SMALL_M 8 /* below this many rows of X, the register-fused kernels */

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

static int matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    if (M < SMALL_M)
        return small_m_matmul(w, x, M, y, accumulate);
    return gemm(w, GEMM_FWD, x, M, y, accumulate);
}

static int matmul_t(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate)
{
    return gemm(w, GEMM_BWD, dy, M, dx, accumulate);
}

static void dequantize(const qt_matrix *w, int r0, int r1, float *out)
{
    decode_tile(w, r0, r1 - r0, 0, w->cols, w->cols, out);
}

const qt_kernel_set CAT(qt_kernels, ISA_SUFFIX) = {matmul, matmul_t, dequantize};
