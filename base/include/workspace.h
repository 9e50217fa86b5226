/* workspace.h: scratch memory a thread keeps between calls.
 *
 * A training step packs operands of tens to hundreds of MB (the head's dY^T at vocab
 * 32000 and 1024 tokens: 131 MB). Allocated per call, glibc maps such blocks fresh and
 * the kernel faults every page in again: on this project's VM that cost 10-20% of a step.
 * A workspace is allocated once per thread and slot, grows to the largest request and is
 * kept, so steady-state calls touch no new page. Its contents are not preserved when it
 * grows. Each thread's buffers are freed when it exits, or by rt_workspace_release (a
 * long-lived thread that has finished a large job, e.g. the daemon's job runner). */
#ifndef QLORA_WORKSPACE_H
#define QLORA_WORKSPACE_H

#include <stddef.h>

typedef enum {
    RT_WS_PACK,   /* the kernels' packed or reordered operand */
    RT_WS_DECODE, /* the kernels' per-thread decoded weight tiles */
    RT_WS_CALLER, /* for a caller of the kernels, held across its kernel calls */
    RT_WS_SLOTS
} rt_ws_slot;

/* At least `bytes`, 64-byte aligned, owned by the calling thread; NULL if out of memory. */
void *rt_workspace(rt_ws_slot slot, size_t bytes);
/* Frees the calling thread's buffers. */
void rt_workspace_release(void);

#endif
