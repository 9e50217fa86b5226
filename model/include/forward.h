/* forward.h: the Llama forward pass over quantized weights.
 *
 * One function serves training, evaluation, prefill and decoding: it runs T new tokens of
 * each of B sequences, at positions pos0 .. pos0+T-1, through every layer as one batch of
 * M = B*T rows (so the linear layers are matrix-matrix products), appending each layer's
 * keys and values to a cache of S positions per sequence and attending over the cache.
 * Training and evaluation use pos0 = 0 and S = T; generation prefills the prompt and
 * then decodes with T = 1, both on the same cache.
 *
 * The intermediates the backward pass needs live in llama_acts, for every layer or for
 * one layer slot reused by each layer in turn (llama_acts_bytes gives the size). With one
 * slot, llama_backward recomputes each layer's intermediates from its kept input before
 * undoing it: about half again the forward's work for an L-fold smaller buffer.
 * Inference keeps one slot, since nothing reads a layer's intermediates afterwards. */
#ifndef QLORA_FORWARD_H
#define QLORA_FORWARD_H

#include "lora.h"
#include "model.h"

/* Keys and values of every layer. v: [L][B][S][kv_dim]; k: [L][B][kv_dim][S], keys
 * transposed as they arrive, because the attention reads a head's keys as columns (all
 * positions' scores build up together, each summed in run.c's order): transposing every
 * past key again at each decoding step cost as much as the scores themselves. */
typedef struct {
    int B, S;
    float *k, *v;
} llama_cache;

/* Activations of one forward call for up to B x T rows (M = B*T). x[l] [M x dim] is the
 * input of layer l (x[L] the final residual), kept for every layer. Per layer slot:
 * xn1/rstd1 the attention norm, q [M x q_dim] (after RoPE), att [B x H x T x S] attention
 * probabilities, ao [M x q_dim] the attention output before wo, x2 [M x dim] the residual
 * after attention, xn2/rstd2 the feed-forward norm, h1 (gate) h3 (up) [M x hidden],
 * g = silu(h1) * h3, and with an adapter of rank r u [LIN_COUNT][M x r], the adapters'
 * inner activations; with Qwen3's q/k norms, qr [M x q_dim] and kr [M x kv_dim] the
 * projections before them and rstdq [M x H], rstdk [M x kv heads] their rstd (else
 * empty). Then the final norm xf/rstdf, logits [M x vocab], and scratch [M x widest]
 * (llama_config_widest) for dropout. */
/* What a forward call is for. LLAMA_TRAIN: a backward pass follows; dropout applies to
 * the adapter's inputs, and the attention runs as blocked single-threaded sgemm (another
 * order of summation, at sgemm's speed). LLAMA_INFER: no dropout, and the attention sums
 * in run.c's order, so that logits match llama2.c's. The two agree to rounding. */
typedef enum { LLAMA_INFER, LLAMA_TRAIN } llama_mode;

typedef struct {
    int B, T, S, rank;
    llama_mode mode; /* of the forward call that filled it: llama_backward follows it */
    int slots;  /* n_layers (every layer kept) or 1 (reused) */
    int held;   /* the layer whose intermediates the single slot holds */
    float *x, *xn1, *rstd1, *q, *att, *ao, *x2, *xn2, *rstd2, *h1, *h3, *g;
    float *xf, *rstdf, *logits, *u, *scratch;
    float *qr, *kr, *rstdq, *rstdk;
    /* Packing (NULL: none): start[r] for each of the B*T rows is the index within its
     * sequence where its example begins. A token attends only to the tokens of its own
     * example, and its position counts from that start, so that a packed row computes
     * exactly what its examples would one by one. Set by the caller before llama_forward
     * (training: pos0 = 0, S = T); llama_backward follows it. */
    const int *start;
} llama_acts;

/* One layer's intermediates within acts, for a call of M = B*T rows. */
typedef struct {
    float *x, *xn1, *rstd1, *q, *att, *ao, *x2, *xn2, *rstd2, *h1, *h3, *g, *u, *next;
    float *qr, *kr, *rstdq, *rstdk;
} llama_layer_acts;
llama_layer_acts llama_layer_acts_of(const llama_acts *a, const llama_config *c, int layer, int B, int T);
/* The adapter's inner activations [M x rank] of linear k within a layer's. */
float *llama_layer_u(const llama_layer_acts *la, const llama_acts *a, llama_linear k, size_t M);

int llama_cache_alloc(llama_cache *c, const llama_config *cfg, int B, int S);
void llama_cache_free(llama_cache *c);
/* rank: of the adapter the calls will run with (0 for none); all_layers: keep every
 * layer's intermediates (training without recomputation), else one slot. */
size_t llama_acts_bytes(const llama_config *cfg, int B, int T, int S, int rank, int all_layers);
int llama_acts_alloc(llama_acts *a, const llama_config *cfg, int B, int T, int S, int rank, int all_layers);
void llama_acts_free(llama_acts *a);

/* Runs tokens [B x T] (B and T up to the sizes of acts; S of acts equals the cache's) at
 * positions pos0.. (pos0 + T <= S), with adapter ad (NULL: the base alone; its rank at
 * most the rank acts were made for), in mode. Logits land in acts->logits [B*T x vocab].
 * Returns 0, or -1 when a kernel cannot get scratch memory. Token ids must be valid
 * (callers check them: llama_check_tokens). */
int llama_forward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                  const int *tokens, int B, int T, int pos0, llama_mode mode);

/* Rows (or columns) per sgemm in training's attention, forward and backward: the products
 * cover the causal triangle in blocks of this many rows, not the whole square. */
#define LLAMA_ATT_BLOCK 64

/* dst[0..n) = src[0..n) on the kernels' pool, split as the row-wise work is (each thread
 * copies the part it produced and will read next). */
void llama_copy(float *dst, const float *src, size_t n);

/* Runs layer l alone (x[l] of acts in, x[l+1] out, its keys and values into the cache)
 * in acts->mode: llama_forward's step, and llama_backward's recomputation. */
int llama_layer_forward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache, int l, int B,
                        int T, int pos0);

/* The gradients of the adapter's parameters, added into grads (ad's layout), given
 * dlogits [B*T x vocab] of the loss, after llama_forward(m, ad, a, cache, tokens, B, T, 0,
 * LLAMA_TRAIN) with cache->S == T and cache->B == B. With one slot in a, each layer is recomputed
 * first. dlogits is overwritten (used as scratch). Returns 0, or -1 out of memory or for
 * a cache of another shape (it is read as [B][..][T]). */
int llama_backward(const llama_model *m, const llama_lora *ad, llama_acts *a, llama_cache *cache,
                   int B, int T, float *dlogits, float *grads);

/* 0, or -1 with a message naming the first bad id or length. */
int llama_check_tokens(const llama_config *c, const int *tokens, size_t n, char *err, size_t errlen);

#endif
