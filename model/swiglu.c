/* swiglu.c: the feed-forward's gate, forward (run.c's arithmetic) and backward (the math:
 * layer_ops.h). */
#include <math.h>

#include "layer_ops.h"
#include "parallel.h"

typedef struct {
    float *g;
    const float *h1, *h3;
} swiglu_ctx;

static void swiglu_range(void *p, size_t i0, size_t i1)
{
    const swiglu_ctx *c = p;
    for (size_t i = i0; i < i1; i++) {
        float val = c->h1[i];
        val *= 1.0f / (1.0f + expf(-val));
        c->g[i] = val * c->h3[i];
    }
}

void swiglu_forward(float *g, const float *h1, const float *h3, size_t n)
{
    swiglu_ctx c = {g, h1, h3};
    rt_parallel_for(n, 16, swiglu_range, &c);
}

typedef struct {
    float *dh1, *dh3;
    const float *dg, *h1, *h3;
} swiglu_bwd_ctx;

static void swiglu_backward_range(void *p, size_t i0, size_t i1)
{
    const swiglu_bwd_ctx *c = p;
    for (size_t i = i0; i < i1; i++) {
        float h1 = c->h1[i], sig = 1.0f / (1.0f + expf(-h1));
        c->dh3[i] = c->dg[i] * h1 * sig;
        c->dh1[i] = c->dg[i] * c->h3[i] * sig * (1.0f + h1 * (1.0f - sig));
    }
}

void swiglu_backward(float *dh1, float *dh3, const float *dg, const float *h1, const float *h3, size_t n)
{
    swiglu_bwd_ctx c = {dh1, dh3, dg, h1, h3};
    rt_parallel_for(n, 20, swiglu_backward_range, &c);
}
