/* lora.h: LoRA adapters as the forward and backward passes see them.
 *
 * For a linear W [out x in] with an adapter: y = x W^T + scale * (d(x) A^T) B^T, where
 * A [rank x in], B [out x rank] are fp32, scale is alpha / rank (or alpha / sqrt(rank)
 * with rsLoRA) and d is dropout on the adapter input while training. The base W is never
 * written and gets no gradient. Every A and B lives in one buffer (params), in the order
 * layer 0 q, k, v, o, gate, up, down (targets only), layer 1 ...; gradients and optimizer
 * moments use buffers of the same layout. Rows of q and k are in llama2.c order. */
#ifndef QLORA_LORA_H
#define QLORA_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define LORA_NONE ((size_t)-1)

typedef struct {
    int rank;
    float alpha;
    float scale;
    int rslora;
    unsigned targets;      /* bit k set: linear k of every layer carries an adapter */
    float dropout;         /* probability, applied in LLAMA_TRAIN forward calls only */
    uint64_t dropout_seed; /* masks are a hash of (seed, layer, linear, row, column) */
    int n_layers;
    size_t *offset;        /* [n_layers * LIN_COUNT]: A's offset in params, or LORA_NONE */
    size_t n_params;
    float *params;
} llama_lora;

/* Lays out an adapter for model config c (params zeroed); -1 when out of memory. */
int llama_lora_alloc(llama_lora *ad, const llama_config *c, int rank, float alpha, int rslora,
                     unsigned targets, float dropout);
void llama_lora_free(llama_lora *ad);
static inline int llama_lora_has(const llama_lora *ad, int layer, llama_linear k)
{
    return ad && ad->offset[layer * LIN_COUNT + k] != LORA_NONE;
}
/* A and B of (layer, k) inside buf (params, gradients or moments). */
static inline float *llama_lora_a(const llama_lora *ad, float *buf, int layer, llama_linear k)
{
    return buf + ad->offset[layer * LIN_COUNT + k];
}
float *llama_lora_b(const llama_lora *ad, const llama_config *c, float *buf, int layer, llama_linear k);

/* The dropout keep-mask multiplier of element (row, col) of the input of (layer, k):
 * 0 or 1 / (1 - p), the same in forward and backward. */
float llama_lora_keep(const llama_lora *ad, int layer, llama_linear k, size_t row, size_t col);

#endif
