/* forward.h: the Llama forward pass over quantized weights.
 *
 * One function serves training, evaluation, prefill and decoding: it runs T new tokens of
 * each of B sequences, at positions pos0 .. pos0+T-1, through every layer as one batch of
 * M = B*T rows (so the linear layers are matrix-matrix products), appending each layer's
 * keys and values to a cache of S positions per sequence and attending over the cache.
 * Training and evaluation use pos0 = 0 and S = T; generation prefills the prompt and
 * then decodes with T = 1, both on the same cache.
 *
 * Every intermediate that the backward pass needs is kept per layer in llama_acts
 * (see llama_acts_bytes for the size); nothing is recomputed. */
#ifndef QLORA_FORWARD_H
#define QLORA_FORWARD_H

#include "lora.h"
#include "model.h"

/* Keys and values of every layer: [L][B][S][kv_dim] each. */
typedef struct {
    int B, S;
    float *k, *v;
} llama_cache;

/* Activations of one forward call for up to B x T rows (M = B*T). Per layer l:
 * x[l] [M x dim] the layer input (x[L] the final residual), xn1/rstd1 the attention norm,
 * q [M x dim] (after RoPE), att [B x H x T x S] attention probabilities, ao [M x dim] the
 * attention output before wo, x2 [M x dim] the residual after attention, xn2/rstd2 the
 * feed-forward norm, h1 (gate) h3 (up) [M x hidden], g = silu(h1) * h3. Then the final
 * norm xf/rstdf and logits [M x vocab]. With an adapter of rank r: u [L][LIN_COUNT][M x r],
 * the adapters' inner activations, and scratch [M x max(dim, hidden)] for dropout. */
typedef struct {
    int B, T, S, rank;
    float *x, *xn1, *rstd1, *q, *att, *ao, *x2, *xn2, *rstd2, *h1, *h3, *g;
    float *xf, *rstdf, *logits, *u, *scratch;
} llama_acts;

int llama_cache_alloc(llama_cache *c, const llama_config *cfg, int B, int S);
void llama_cache_free(llama_cache *c);
/* rank: of the adapter the calls will run with (0 for none). */
size_t llama_acts_bytes(const llama_config *cfg, int B, int T, int S, int rank);
int llama_acts_alloc(llama_acts *a, const llama_config *cfg, int B, int T, int S, int rank);
void llama_acts_free(llama_acts *a);

/* Runs tokens [B x T] (B and T up to the sizes of acts; S of acts equals the cache's) at
 * positions pos0.. (pos0 + T <= S), with adapter ad (NULL: the base alone; its rank at
 * most the rank acts were made for). Logits land in acts->logits [B*T x vocab].
 * Returns 0, or -1 when a kernel cannot get scratch memory. Token ids must be valid
 * (callers check them: llama_check_tokens). */
int llama_forward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                  const int *tokens, int B, int T, int pos0);

/* The gradients of the adapter's parameters, added into grads (ad's layout), given
 * dlogits [B*T x vocab] of the loss, after llama_forward(m, ad, a, cache, tokens, B, T, 0)
 * with cache->S == T. dlogits is overwritten (used as scratch). Returns 0 or -1 (memory). */
int llama_backward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                   int B, int T, float *dlogits, float *grads);

/* 0, or -1 with a message naming the first bad id or length. */
int llama_check_tokens(const llama_config *c, const int *tokens, size_t n, char *err, size_t errlen);

#endif
