/* parallel.h: the process's fork-join thread pool (kernels, norms, AdamW, the loss, the daemon).
 *
 * One process-wide pool of QLORA_THREADS threads (default: all cores), the caller
 * being one of them. Thread t first runs its share, the t-th of T contiguous ranges of the
 * task numbers (the same ranges at every call of as many tasks, so that work split by rows
 * stays on one thread), then takes what remains of the others'. The pool serves one parallel call at
 * a time: a call that finds it busy (another thread of the process is inside a kernel)
 * runs its tasks itself, so concurrent callers never wait on each other or deadlock. */
#ifndef QLORA_PARALLEL_H
#define QLORA_PARALLEL_H

#include <stddef.h>

/* fn(ctx, task, thread): thread is in [0, rt_threads()) and unique among concurrent
 * calls of one rt_parallel, so it can index per-thread scratch space. */
typedef void (*rt_task_fn)(void *ctx, int task, int thread);

void rt_parallel(int ntasks, rt_task_fn fn, void *ctx);
/* fn(ctx, i0, i1) over ranges covering [0, n), for element- and row-wise work beside the
 * kernels (norms, activations, rotations). item_work: rough operations per item; each
 * range gets at least 2^14 of them, so that it outweighs handing it to another thread,
 * and small n runs on the caller alone. */
typedef void (*rt_range_fn)(void *ctx, size_t i0, size_t i1);
void rt_parallel_for(size_t n, size_t item_work, rt_range_fn fn, void *ctx);
/* Threads a parallel call may use (QLORA_THREADS, else the online cores). */
int rt_threads(void);
/* Changes the pool size (1 = everything on the caller). Not while kernels run. */
void rt_set_threads(int n);

#endif
