/* pool_sgemm.h: OpenBLAS sgemm run on the kernels' thread pool (parallel.h).
 *
 * OpenBLAS's own threads and the pool would share the cores: after every threaded call
 * OpenBLAS's workers spin (sched_yield) for 2^28 cycles, 0.13 s on the reference machine,
 * on the cores the pool's next kernel needs. A LoRA product between two fused kernels, or
 * the head's sgemv before the next decode step, then slowed everything after it (a
 * tinystories6M nf4 decode ran 1.6x slower). So every fp32 product of the library goes
 * through here: OpenBLAS runs single-threaded inside pool tasks, each on a slice of C's
 * rows or columns, and no other thread ever spins. Each element of C is computed by one
 * call over the whole of K; the slices depend on the thread count only, so results are
 * reproducible for a given thread count (OpenBLAS may sum a slice of another size in
 * another order, so across thread counts they agree to rounding). */
#ifndef QLORA_POOL_SGEMM_H
#define QLORA_POOL_SGEMM_H

#include <cblas.h>

/* C = alpha op(A) op(B) + beta C, row-major, as cblas_sgemm(CblasRowMajor, ...);
 * op(A) is M x K, op(B) is K x N. */
void pool_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* The same product on the calling thread only: for use inside a pool task. */
void task_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
