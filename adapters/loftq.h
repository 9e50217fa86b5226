/* loftq.h: LoftQ initialisation. The adapter starts as the best rank-r approximation of
 * the quantization error, scale * B A = W - deq(Q(W)), so the adapted model starts closer
 * to the full-precision one. LoftQ proper alternates Q = quantize(W - scale B A) with the
 * SVD; here the base is shared by every adapter of the daemon and stays as loaded, so one
 * alternation is done (the first, which takes most of the gain). */
#ifndef QLORA_LOFTQ_H
#define QLORA_LOFTQ_H

#include <stdint.h>

#include "lora.h"

/* Reads the fp32 weights again from m->dir (mmap, not kept) and sets A and B of every
 * target. -1 with a message on error. */
int loftq_init(llama_lora *ad, const llama_model *m, uint64_t seed, char *err, size_t errlen);

#endif
