/* pool_sgemm.c: see pool_sgemm.h. */
#include "pool_sgemm.h"

#include "parallel.h"

/* Slices are whole multiples of this many rows or columns (OpenBLAS's register tiles on
 * AVX-512 are 16 or 32 wide), and hold at least MIN_FLOPS of work each: handing a slice to
 * another thread costs a few microseconds, and each call packs its operands again. */
#define SLICE_ALIGN 32
#define MIN_FLOPS (1L << 21)

typedef struct {
    CBLAS_TRANSPOSE ta, tb;
    int M, N, K, lda, ldb, ldc, split_rows, slice;
    float alpha, beta;
    const float *A, *B;
    float *C;
} sgemm_ctx;

/* Called on the thread about to call OpenBLAS. With OpenBLAS's pthreads build (Debian's
 * default) the thread count is process-wide: set once, and again only if a program (a
 * benchmark timing OpenBLAS itself) gave it threads in between. An OpenMP build keeps it
 * per calling thread (and resets it from that thread's OpenMP setting), hence once per
 * thread as well. */
static void single_threaded_blas(void)
{
    static _Thread_local int set_here;
    if (!set_here || openblas_get_num_threads() != 1) {
        openblas_set_num_threads(1);
        set_here = 1;
    }
}

void task_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    single_threaded_blas();
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void sgemm_task(void *p, int t, int thread)
{
    (void)thread;
    const sgemm_ctx *c = p;
    int s0 = t * c->slice;
    if (c->split_rows) { /* rows s0.. of C and of op(A) */
        int m = c->M - s0 < c->slice ? c->M - s0 : c->slice;
        const float *A = c->A + (c->ta == CblasNoTrans ? (size_t)s0 * c->lda : (size_t)s0);
        task_sgemm(c->ta, c->tb, m, c->N, c->K, c->alpha, A, c->lda, c->B, c->ldb, c->beta,
                   c->C + (size_t)s0 * c->ldc, c->ldc);
    } else { /* columns s0.. of C and of op(B) */
        int n = c->N - s0 < c->slice ? c->N - s0 : c->slice;
        const float *B = c->B + (c->tb == CblasNoTrans ? (size_t)s0 : (size_t)s0 * c->ldb);
        task_sgemm(c->ta, c->tb, c->M, n, c->K, c->alpha, c->A, c->lda, B, c->ldb, c->beta, c->C + s0, c->ldc);
    }
}

void pool_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    sgemm_ctx c = {ta, tb, M, N, K, lda, ldb, ldc, M >= N, 0, alpha, beta, A, B, C};
    int len = c.split_rows ? M : N;
    long flops = 2L * M * N * K, most = 4L * rt_threads();
    long tasks = flops / MIN_FLOPS < most ? flops / MIN_FLOPS : most;
    long slices = (len + SLICE_ALIGN - 1) / SLICE_ALIGN;
    tasks = tasks < 1 ? 1 : tasks < slices ? tasks : slices;
    c.slice = (int)((slices + tasks - 1) / tasks) * SLICE_ALIGN;
    rt_parallel((len + c.slice - 1) / c.slice, sgemm_task, &c);
}
