/* layer_ops.h: the ops of a layer, private to model/. Each op's forward and backward sit
 * side by side in one file with mirrored names (X_forward in X.c beside X_backward), and
 * each pair below carries its math once: the forward formula over the gradient formula,
 * so a gradient can be checked by reading the pair. forward.c's llama_layer_forward runs
 * the forwards; backward.c's llama_layer_backward runs the backwards in reverse. Every
 * entry point runs its work on the kernels' pool; callers pass plain arguments.
 *
 * Shapes: M rows (M = B*T), D = dim; a backward's dy is the gradient of the forward's
 * output, dx that of its input. */
#ifndef QLORA_LAYER_OPS_H
#define QLORA_LAYER_OPS_H

#include "forward.h"

/* rmsnorm.c, over each row of D:
 *   forward:  y = w . x * rstd,  rstd = 1 / sqrt(sum(x^2) / D + eps)   (rstd [M] kept)
 *   backward: dx += rstd * (w . dy) - rstd^3 / D * x * sum(w . dy . x) */
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int M, int D, float eps);
void rmsnorm_backward(float *dx, const float *dy, const float *x, const float *w, const float *rstd, int M,
                      int D);

/* swiglu.c, elementwise over n (M x hidden), with sig = 1 / (1 + e^-h1):
 *   forward:  g = silu(h1) * h3,  silu(h1) = h1 * sig
 *   backward: dh3 = dg * h1 * sig,  dh1 = dg * h3 * sig * (1 + h1 * (1 - sig))  (written) */
void swiglu_forward(float *g, const float *h1, const float *h3, size_t n);
void swiglu_backward(float *dh1, float *dh3, const float *dg, const float *h1, const float *h3, size_t n);

#endif
