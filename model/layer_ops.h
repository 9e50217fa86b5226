/* layer_ops.h: the ops of a layer, private to model/. Each op's forward and backward sit
 * side by side in one file with mirrored names (X_forward in X.c beside X_backward), and
 * each pair below carries its math once: the forward formula over the gradient formula,
 * so a gradient can be checked by reading the pair. forward.c's llama_layer_forward runs
 * the forwards; backward.c's llama_layer_backward runs the backwards in reverse. Each
 * entry point sets up its own context for the kernels' pool: callers pass plain arguments.
 *
 * Shapes: M rows (M = B*T), D = dim; a backward's dy is the gradient of the forward's
 * output, dx that of its input. */
#ifndef QLORA_LAYER_OPS_H
#define QLORA_LAYER_OPS_H

#include "forward.h"

/* rmsnorm.c, over each row of D (a layer's norms: rows of dim; Qwen3's q and k norms:
 * each head of each row, M x heads rows of head_size):
 *   forward:  y = w . x * rstd,  rstd = 1 / sqrt(sum(x^2) / D + eps)   (rstd [M] kept)
 *   backward: dx += rstd * (w . dy) - rstd^3 / D * x * sum(w . dy . x) */
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int M, int D, float eps);
void rmsnorm_backward(float *dx, const float *dy, const float *x, const float *w, const float *rstd, int M, int D);

/* swiglu.c, elementwise over n (M x hidden), with sig = 1 / (1 + e^-h1):
 *   forward:  g = silu(h1) * h3,  silu(h1) = h1 * sig
 *   backward: dh3 = dg * h1 * sig,  dh1 = dg * h3 * sig * (1 + h1 * (1 - sig))  (written) */
void swiglu_forward(float *g, const float *h1, const float *h3, size_t n);
void swiglu_backward(float *dh1, float *dh3, const float *dg, const float *h1, const float *h3, size_t n);

/* rope.c, in place over rows of width floats (row r at position pos = pos0 + r % T, less
 * start[r] when packed: forward.h): each
 * consecutive pair (x0, x1) of a head, j-th of its head_size / 2, turns by the angle
 * a = pos * freq_j (m->rope_cos, m->rope_sin):
 *   forward:  (x0, x1) = (x0 cos a - x1 sin a,  x0 sin a + x1 cos a)
 *   backward: (d0, d1) = (d0 cos a + d1 sin a, -d0 sin a + d1 cos a)   (the transpose) */
void rope_forward(const llama_model *m, float *x, int width, size_t rows, int T, int pos0, const int *start);
void rope_backward(const llama_model *m, float *dx, int width, size_t rows, int T, int pos0, const int *start);

/* attention.c, per sequence and head, causal, with Q [T x hs] the head's queries (after
 * RoPE), K and V [S x hs] its kv head's keys and values in the cache, and P [T x S]:
 *   forward:  P = softmax(Q K^T / sqrt(hs)), row t over keys lo .. pos0 + t, lo = 0 or,
 *             packed, start[t] (its example's first token; P is 0 elsewhere);   O = P V
 *   backward: dP = dO V^T,  dS = P . (dP - rowsum(P . dP)) / sqrt(hs),  dQ = dS K,
 *             dK = sum of dS^T Q,  dV = sum of P^T dO  (sums over the heads of a kv head)
 * q, out, dout, dq [M x q_dim]; kt [B x kv_dim x S] and v [B x S x kv_dim] (this layer's
 * cache); att [B x H x T x S] holds P; dk, dv [M x kv_dim]. The backward follows a training
 * forward (pos0 = 0, S = T) and writes dq, dk, dv; scratch [threads x T x T]. mode:
 * LLAMA_INFER sums in run.c's order, LLAMA_TRAIN by blocked sgemm (forward.h). */
void attention_forward(const llama_config *cfg, float *out, float *att, const float *q, const float *kt,
                       const float *v, int B, int T, int S, int pos0, llama_mode mode, const int *start);
void attention_backward(const llama_config *cfg, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *kt, const float *v, const float *att, float *scratch, int B,
                        int T);

/* linear.c, linear k of a layer: W [out x in] the frozen quantized weight, b [out] its
 * frozen bias if it has one (else 0), and where (layer, k) has an adapter, its A [r x in],
 * B [out x r], scale s and dropout mask d (elementwise, so its own transpose; training
 * only), with u [M x r] kept in acts:
 *   forward:  u = d(x) A^T,  y (+)= x W^T + b + s u B^T
 *   backward: dB += s dy^T u,  du = s dy B,  dA += du^T d(x),  dx (+)= dy W + d(du A)
 * accumulate: add into y (dx) rather than write it; grads: the adapter's gradients (ad's
 * layout), added into; du [M x r] scratch; dx NULL: only the adapter's gradients. */
int linear_forward(const llama_model *m, const llama_lora *ad, const llama_acts *a, const llama_layer_acts *la,
                   int layer, llama_linear k, const float *x, int M, float *y, int accumulate);
int linear_backward(const llama_model *m, const llama_lora *ad, const llama_acts *a, const llama_layer_acts *la,
                    int layer, llama_linear k, const float *x, const float *dy, int M, float *dx, int accumulate,
                    float *grads, float *du);

#endif
